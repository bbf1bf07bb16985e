//! The counters in the Prometheus text exposition format, served over HTTP
//! at `/metrics` on a listener of its own: never behind the echo listeners'
//! connection limit, never taking one of their slots.

use crate::server::ServerHandle;
use crate::stats::Stats;
use std::fmt::Write as _;
use std::io;
use std::net::SocketAddr;
use std::thread::{self, JoinHandle};

/// A running metrics endpoint; stops when dropped.
pub struct MetricsServer {
    addr: SocketAddr,
    http: std::sync::Arc<tiny_http::Server>,
    thread: Option<JoinHandle<()>>,
}

impl MetricsServer {
    /// Serves `handle`'s counters at `http://addr/metrics` on a thread of
    /// its own. Port 0 lets the OS pick (see [`local_addr`](Self::local_addr)).
    ///
    /// # Errors
    ///
    /// The address cannot be bound, or no thread can be started.
    pub fn start(addr: SocketAddr, handle: ServerHandle) -> io::Result<MetricsServer> {
        let http = tiny_http::Server::http(addr).map_err(|e| {
            io::Error::new(
                io::ErrorKind::AddrInUse,
                format!("cannot serve metrics on {addr}: {e}"),
            )
        })?;
        let http = std::sync::Arc::new(http);
        let addr = http
            .server_addr()
            .to_ip()
            .ok_or_else(|| io::Error::other("metrics listener has no IP address"))?;
        let server = std::sync::Arc::clone(&http);
        let thread = thread::Builder::new()
            .name("echo-metrics".to_owned())
            .spawn(move || serve(&server, &handle))?;
        Ok(MetricsServer {
            addr,
            http,
            thread: Some(thread),
        })
    }

    /// Where the endpoint listens.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }
}

impl std::fmt::Debug for MetricsServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MetricsServer")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl Drop for MetricsServer {
    fn drop(&mut self) {
        self.http.unblock();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn serve(http: &tiny_http::Server, handle: &ServerHandle) {
    for request in http.incoming_requests() {
        let response = match (request.method(), request.url()) {
            (tiny_http::Method::Get | tiny_http::Method::Head, "/metrics") => {
                let header = tiny_http::Header::from_bytes(
                    &b"Content-Type"[..],
                    &b"text/plain; version=0.0.4; charset=utf-8"[..],
                );
                let mut r = tiny_http::Response::from_string(render(&handle.stats()));
                if let Ok(h) = header {
                    r = r.with_header(h);
                }
                r
            }
            (tiny_http::Method::Get | tiny_http::Method::Head, _) => {
                tiny_http::Response::from_string("not found: the counters are at /metrics\n")
                    .with_status_code(404)
            }
            _ => tiny_http::Response::from_string("only GET and HEAD\n").with_status_code(405),
        };
        // A client that went away mid-answer is its own business.
        let _ = request.respond(response);
    }
}

/// The counters in the Prometheus text format (version 0.0.4).
pub fn render(s: &Stats) -> String {
    let mut out = String::new();
    let mut metric = |name: &str, kind: &str, help: &str, samples: &[(&str, u64)]| {
        let _ = writeln!(out, "# HELP echo_server_{name} {help}");
        let _ = writeln!(out, "# TYPE echo_server_{name} {kind}");
        for (labels, value) in samples {
            let _ = writeln!(out, "echo_server_{name}{labels} {value}");
        }
    };
    metric(
        "connections_accepted_total",
        "counter",
        "Stream connections accepted.",
        &[("", s.accepted)],
    );
    metric(
        "connections_closed_total",
        "counter",
        "Stream connections closed, by either side.",
        &[("", s.closed)],
    );
    metric(
        "active_connections",
        "gauge",
        "Stream connections being served, by engine.",
        &[
            ("{engine=\"threads\"}", s.active_threads),
            ("{engine=\"events\"}", s.active_events),
        ],
    );
    metric(
        "bytes_received_total",
        "counter",
        "Bytes read from stream clients.",
        &[("", s.bytes_received)],
    );
    metric(
        "bytes_echoed_total",
        "counter",
        "Bytes written back to clients, every transport.",
        &[("", s.bytes_echoed)],
    );
    metric(
        "datagrams_echoed_total",
        "counter",
        "UDP datagrams answered.",
        &[("", s.datagrams_echoed)],
    );
    metric(
        "closed_early_total",
        "counter",
        "Connections the server closed before the client was done, by reason.",
        &[
            ("{reason=\"idle_timeout\"}", s.idle_timeouts),
            ("{reason=\"write_timeout\"}", s.write_timeouts),
            ("{reason=\"reclaimed\"}", s.reclaimed),
            ("{reason=\"keepalive\"}", s.keepalive_closed),
        ],
    );
    metric(
        "refused_total",
        "counter",
        "Connections and datagrams refused, by reason.",
        &[
            ("{reason=\"per_source_cap\"}", s.refused_per_source),
            ("{reason=\"no_thread\"}", s.thread_refused),
            ("{reason=\"no_file_descriptor\"}", s.fd_exhausted),
            ("{reason=\"accept_error\"}", s.accept_errors),
            ("{reason=\"privileged_port\"}", s.refused_privileged_port),
            ("{reason=\"invalid_source\"}", s.refused_invalid_source),
            ("{reason=\"rate_limited\"}", s.rate_limited),
            ("{reason=\"total_rate_limited\"}", s.udp_total_rate_limited),
            ("{reason=\"too_large\"}", s.truncated),
        ],
    );
    metric(
        "connection_limit_reached_total",
        "counter",
        "Times the accept loops waited at the connection limit.",
        &[("", s.limit_reached)],
    );
    metric(
        "udp_kernel_drops_total",
        "counter",
        "UDP datagrams the kernel dropped for want of receive buffer.",
        &[("", s.udp_kernel_drops)],
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_sample_line_is_well_formed_and_named_by_convention() {
        let text = render(&Stats {
            accepted: 7,
            active_events: 2,
            rate_limited: 3,
            udp_total_rate_limited: 4,
            ..Stats::default()
        });
        assert!(text.contains("echo_server_connections_accepted_total 7\n"));
        assert!(text.contains("echo_server_active_connections{engine=\"events\"} 2\n"));
        assert!(text.contains("echo_server_refused_total{reason=\"rate_limited\"} 3\n"));
        assert!(text.contains("echo_server_refused_total{reason=\"total_rate_limited\"} 4\n"));
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let (name, value) = line.rsplit_once(' ').unwrap();
            assert!(name.starts_with("echo_server_"), "{line}");
            assert!(value.parse::<u64>().is_ok(), "{line}");
            let base = name.split('{').next().unwrap();
            assert!(
                text.contains(&format!("# TYPE {base} ")),
                "no TYPE for {line}"
            );
            if text.contains(&format!("# TYPE {base} counter")) {
                assert!(base.ends_with("_total"), "a counter ends in _total: {line}");
            }
        }
    }
}
