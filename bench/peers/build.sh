#!/bin/sh
# Builds the comparison's peer servers (the sources beside this script) into
# OUTDIR; scripts/compare.py calls it, and anyone can run it by hand:
#
#   sh bench/peers/build.sh OUTDIR
#
#   OUTDIR/seed-c      thread per connection, 1 KiB buffer (the exercise's design)
#   OUTDIR/epoll-c     edge-triggered epoll loop, 64 KiB buffer   [--threads N]
#   OUTDIR/uring-c     io_uring: multishot accept and recv, 256 x 64 KiB
#                      provided buffers                          [--threads N]
#   OUTDIR/tokio-echo  tokio, multi-thread runtime   [--buf BYTES] [--udp | --tls CERT KEY]
#   OUTDIR/go-echo     goroutine per connection, 32 KiB  [--buf BYTES | --splice]
#
# Each takes the port as its last argument and listens on 127.0.0.1 only.
#
# Toolchains: gcc, cargo, liburing-dev (uring-c) and go (go-echo). The last
# two are installed with apt-get when missing and this runs as root; a peer
# whose toolchain is still missing is skipped with one line, not an error:
# the comparison leaves it out. A peer that fails to COMPILE is an error
# (exit 1, after the others are built), since that is a bug to fix here.
# CC, CARGO_BUILD_JOBS and GOCACHE are honoured.
set -u
HERE="$(cd "$(dirname "$0")" && pwd)"
if [ $# -ne 1 ]; then
  echo "usage: $0 OUTDIR" >&2
  exit 2
fi
mkdir -p "$1" || exit 1
OUT="$(cd "$1" && pwd)"
CC="${CC:-gcc}"
CFLAGS="-O2 -Wall -Wextra -pthread"
built=""
skipped=""
failed=""

skip() { # peer reason
  echo "build.sh: skipping $1: $2" >&2
  skipped="$skipped $1"
}
compiled() { # peer status
  if [ "$2" -eq 0 ]; then built="$built $1"; else failed="$failed $1"; fi
}

# Installs a Debian package if `check` fails and we may (root, apt-get);
# returns whether `check` holds afterwards. The package index is refreshed
# only when the first try fails (a fresh machine has none).
ensure() { # package check...
  pkg="$1"
  shift
  "$@" && return 0
  [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 || return 1
  echo "build.sh: installing $pkg with apt-get" >&2
  { apt-get install -y -q "$pkg" || { apt-get update -q && apt-get install -y -q "$pkg"; }; } \
    >/dev/null 2>&1
  "$@"
}
have() { command -v "$1" >/dev/null 2>&1; }
have_liburing() { printf '#include <liburing.h>\n' | "$CC" -E -x c - >/dev/null 2>&1; }

if have "$CC"; then
  for p in seed-c epoll-c; do
    $CC $CFLAGS -o "$OUT/$p" "$HERE/$p.c"
    compiled $p $?
  done
  if ensure liburing-dev have_liburing; then
    $CC $CFLAGS -o "$OUT/uring-c" "$HERE/uring-c.c" -luring
    compiled uring-c $?
  else
    skip uring-c "liburing-dev (liburing.h) is not installed and could not be"
  fi
else
  skip "seed-c epoll-c uring-c" "no C compiler ($CC)"
fi

if have cargo; then
  # Its own target directory under OUTDIR: the peer never shares a build
  # with echo-server, and --locked builds exactly the committed Cargo.lock.
  cargo build --quiet --release --locked \
    --manifest-path "$HERE/tokio-echo/Cargo.toml" --target-dir "$OUT/cargo-target" &&
    cp "$OUT/cargo-target/release/tokio-echo" "$OUT/tokio-echo"
  compiled tokio-echo $?
else
  skip tokio-echo "no cargo"
fi

# Debian's golang-go puts `go` in /usr/lib/go/bin with a link in /usr/bin.
if ensure golang-go have go; then
  # The module has no dependencies: GOPROXY=off guarantees nothing is
  # fetched, GOTOOLCHAIN=local that no newer Go is; -buildvcs=false because
  # a git worktree or an unpacked tarball has no VCS data go could stamp;
  # CGO_ENABLED=0 because cgo (net's resolver) would need a C compiler for a
  # server that never resolves a name.
  (cd "$HERE/go-echo" && GOPROXY=off GOTOOLCHAIN=local GOFLAGS=-buildvcs=false CGO_ENABLED=0 \
    GOCACHE="${GOCACHE:-$OUT/go-cache}" go build -o "$OUT/go-echo" .)
  compiled go-echo $?
else
  skip go-echo "go (golang-go) is not installed and could not be"
fi

echo "peers built in $OUT:${built:- none}${skipped:+ (skipped:$skipped)}"
if [ -n "$failed" ]; then
  echo "build.sh: FAILED to build:$failed" >&2
  exit 1
fi
