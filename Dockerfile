# syntax=docker/dockerfile:1
#
# The echo server in a small image: TCP and UDP echo on 7007, the metrics
# and the /healthz and /readyz probes on 9707, run as an unprivileged user.
#
#   docker build -t echo-server .
#   docker run --rm -p 7007:7007/tcp -p 7007:7007/udp -p 9707:9707 echo-server
#
# The command line after the image name replaces the default options (the
# entrypoint is the binary), e.g. `docker run echo-server --bind :: -v 7007`;
# `docker run --network host echo-server probe 127.0.0.1:7007` checks a server.

# Build: the release binary, with exactly the dependencies of Cargo.lock.
FROM rust:1-slim-bookworm AS build
WORKDIR /src
# Only what the build reads (.dockerignore admits nothing else). The tests
# come along because Cargo.toml names them as targets, and cargo checks that
# every target exists before it builds any.
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY tests ./tests
# The registry and target directory are caches, not layers: a rebuild after
# a source change recompiles only the crate. The binary is copied out of the
# cache in the same step, or it would not be in the image.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin echo-server \
    && cp target/release/echo-server /usr/local/bin/echo-server

# Run: distroless "cc" is glibc and libgcc (what the binary links) and
# nothing else: no shell, no package manager. The HEALTHCHECK needs neither,
# since the probe is the server's own binary. Debian 12, like the builder, so
# the glibc the binary was linked against is the one it runs on.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /usr/local/bin/echo-server /usr/local/bin/echo-server
# distroless's "nonroot" user, by number: Kubernetes' runAsNonRoot can only
# verify a numeric user.
USER 65532:65532
# The echo port over TCP and UDP, and the metrics and probes (HTTP).
EXPOSE 7007/tcp 7007/udp 9707/tcp
# A docker stop sends SIGTERM: the server stops accepting, lets connections
# finish echoing for --shutdown-grace (2 s), and exits 0, well within
# docker's 10 s before SIGKILL.
STOPSIGNAL SIGTERM
# One real round trip on the echo port (random bytes, checked on return),
# not just "the process is up". Change the port here if the command changes it.
HEALTHCHECK --interval=30s --timeout=5s --start-period=5s --retries=3 \
    CMD ["/usr/local/bin/echo-server", "probe", "--timeout", "2", "127.0.0.1:7007"]
ENTRYPOINT ["/usr/local/bin/echo-server"]
# Every interface, IPv4 and IPv6 (a container's loopback is its own, so the
# default 127.0.0.1 would reach nobody); UDP on the same port; the metrics
# endpoint on every IPv4 interface, for the kubelet's probes and Prometheus.
CMD ["--bind", "::", "--udp", "--metrics", "0.0.0.0:9707", "7007"]
