//! Counters: what the server has done, readable live from a
//! [`ServerHandle`](crate::ServerHandle) and printed on shutdown.

use crate::datagram_filter::Refusal;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// A snapshot of a server's counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Stats {
    /// Connections accepted since the server started, including those
    /// closed at once (refused at the per-source cap, for lack of a thread
    /// or of a file descriptor).
    pub accepted: u64,
    /// Connections closed (by either side, or refused) since the server
    /// started. Whenever no connection is being opened or closed,
    /// `accepted = closed + active`.
    pub closed: u64,
    /// Connections being served right now.
    pub active: u64,
    /// Of the active connections, those served by a thread of their own.
    pub active_threads: u64,
    /// Of the active connections, those served by an event loop.
    pub active_events: u64,
    /// Of the active connections, those served by an io_uring loop.
    pub active_uring: u64,
    /// Bytes read from stream clients (TCP, Unix). For every connection
    /// that ended normally, all of them were echoed.
    pub bytes_received: u64,
    /// Bytes written back to clients, over every transport.
    pub bytes_echoed: u64,
    /// Connections closed because the client sent nothing for the idle timeout.
    pub idle_timeouts: u64,
    /// Connections closed because the client read nothing for the write
    /// timeout while the server had data for it.
    pub write_timeouts: u64,
    /// Idle connections closed to free a slot for a waiting client.
    pub reclaimed: u64,
    /// Connections closed because the peer stopped answering TCP keepalive
    /// probes (it vanished without a FIN or reset).
    pub keepalive_closed: u64,
    /// Times the accept loop stopped at the connection limit (clients then
    /// wait in the backlog; none is refused).
    pub limit_reached: u64,
    /// Connections closed at once because their address had as many
    /// connections as the per-source cap allows.
    pub refused_per_source: u64,
    /// Connections closed because no thread could be started for them.
    pub thread_refused: u64,
    /// Connections reset at once because the process was out of file
    /// descriptors (the spare descriptor was used to accept and close them).
    pub fd_exhausted: u64,
    /// Other errors from `accept`, such as running out of memory.
    pub accept_errors: u64,
    /// UDP datagrams answered.
    pub datagrams_echoed: u64,
    /// UDP datagrams not answered because they came from a privileged port.
    pub refused_privileged_port: u64,
    /// UDP datagrams not answered because their source address was
    /// broadcast, multicast or unspecified.
    pub refused_invalid_source: u64,
    /// UDP datagrams not answered because their source's network exceeded
    /// its rate.
    pub rate_limited: u64,
    /// UDP datagrams not answered because the server as a whole was at its
    /// reply rate ceiling.
    pub udp_total_rate_limited: u64,
    /// UDP datagrams dropped because they were larger than the maximum.
    pub truncated: u64,
    /// UDP datagrams the kernel dropped before the server saw them, for want
    /// of receive buffer space (where the OS reports it: Linux).
    pub udp_kernel_drops: u64,
}

impl fmt::Display for Stats {
    /// One line for people: what the server did first, then only the
    /// reasons a connection was closed early or refused, or a datagram not
    /// answered, that happened at all. For example `12 connections
    /// accepted, 12 closed, 0 active; 3400 bytes received, 3400 echoed;
    /// closed early: 2 idle timeouts`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} connections accepted, {} closed, {} active",
            self.accepted, self.closed, self.active
        )?;
        if self.active > 0 {
            write!(
                f,
                " ({} on threads, {} on event loops",
                self.active_threads, self.active_events
            )?;
            // Only when there are some: the line reads as before elsewhere.
            if self.active_uring > 0 {
                write!(f, ", {} on io_uring loops", self.active_uring)?;
            }
            f.write_str(")")?;
        }
        write!(
            f,
            "; {} bytes received, {} echoed",
            self.bytes_received, self.bytes_echoed
        )?;
        if self.datagrams_echoed > 0 {
            write!(f, "; {} datagrams echoed", self.datagrams_echoed)?;
        }
        let groups: [(&str, [(u64, &str); 6]); 3] = [
            (
                "closed early",
                [
                    (self.idle_timeouts, "idle timeouts"),
                    (self.write_timeouts, "write timeouts"),
                    (self.reclaimed, "idle reclaimed for waiting clients"),
                    (self.keepalive_closed, "vanished (keepalive)"),
                    (0, ""),
                    (0, ""),
                ],
            ),
            (
                "refused",
                [
                    (self.refused_per_source, "at the per-source cap"),
                    (self.thread_refused, "for lack of threads"),
                    (self.fd_exhausted, "reset for lack of file descriptors"),
                    (self.accept_errors, "accept errors"),
                    (0, ""),
                    (0, ""),
                ],
            ),
            (
                "datagrams not answered",
                [
                    (self.refused_privileged_port, "from privileged ports"),
                    (self.refused_invalid_source, "from invalid sources"),
                    (self.rate_limited, "rate limited"),
                    (self.udp_total_rate_limited, "over the server-wide rate"),
                    (self.truncated, "too large"),
                    (self.udp_kernel_drops, "dropped by the kernel"),
                ],
            ),
        ];
        if self.limit_reached > 0 {
            write!(
                f,
                "; the connection limit was reached {} times (clients waited)",
                self.limit_reached
            )?;
        }
        for (name, counters) in groups {
            let mut first = true;
            for (n, what) in counters {
                if n == 0 {
                    continue;
                }
                f.write_str(if first { "; " } else { ", " })?;
                if first {
                    write!(f, "{name}: ")?;
                    first = false;
                }
                write!(f, "{n} {what}")?;
            }
        }
        Ok(())
    }
}

/// The live counters behind [`Stats`]. Relaxed atomics: each counter is
/// independent and only ever read as a statistic.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) accepted: AtomicU64,
    pub(crate) closed: AtomicU64,
    pub(crate) active: AtomicU64,
    pub(crate) active_threads: AtomicU64,
    pub(crate) active_events: AtomicU64,
    pub(crate) active_uring: AtomicU64,
    pub(crate) bytes_received: AtomicU64,
    pub(crate) bytes_echoed: AtomicU64,
    pub(crate) idle_timeouts: AtomicU64,
    pub(crate) write_timeouts: AtomicU64,
    pub(crate) limit_reached: AtomicU64,
    pub(crate) reclaimed: AtomicU64,
    pub(crate) keepalive_closed: AtomicU64,
    pub(crate) refused_per_source: AtomicU64,
    pub(crate) thread_refused: AtomicU64,
    pub(crate) fd_exhausted: AtomicU64,
    pub(crate) accept_errors: AtomicU64,
    pub(crate) datagrams_echoed: AtomicU64,
    pub(crate) refused_privileged_port: AtomicU64,
    pub(crate) refused_invalid_source: AtomicU64,
    pub(crate) rate_limited: AtomicU64,
    pub(crate) udp_total_rate_limited: AtomicU64,
    pub(crate) truncated: AtomicU64,
    pub(crate) udp_kernel_drops: AtomicU64,
}

impl Counters {
    pub(crate) fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Relaxed);
    }

    pub(crate) fn sub(counter: &AtomicU64, n: u64) {
        counter.fetch_sub(n, Relaxed);
    }

    pub(crate) fn refused(&self, refusal: Refusal) {
        let counter = match refusal {
            Refusal::PrivilegedPort => &self.refused_privileged_port,
            Refusal::InvalidSource => &self.refused_invalid_source,
            Refusal::RateLimited => &self.rate_limited,
            Refusal::TotalRateLimited => &self.udp_total_rate_limited,
            Refusal::Truncated => &self.truncated,
        };
        Counters::add(counter, 1);
    }

    pub(crate) fn snapshot(&self) -> Stats {
        Stats {
            accepted: self.accepted.load(Relaxed),
            closed: self.closed.load(Relaxed),
            active: self.active.load(Relaxed),
            active_threads: self.active_threads.load(Relaxed),
            active_events: self.active_events.load(Relaxed),
            active_uring: self.active_uring.load(Relaxed),
            bytes_received: self.bytes_received.load(Relaxed),
            bytes_echoed: self.bytes_echoed.load(Relaxed),
            idle_timeouts: self.idle_timeouts.load(Relaxed),
            write_timeouts: self.write_timeouts.load(Relaxed),
            limit_reached: self.limit_reached.load(Relaxed),
            reclaimed: self.reclaimed.load(Relaxed),
            keepalive_closed: self.keepalive_closed.load(Relaxed),
            refused_per_source: self.refused_per_source.load(Relaxed),
            thread_refused: self.thread_refused.load(Relaxed),
            fd_exhausted: self.fd_exhausted.load(Relaxed),
            accept_errors: self.accept_errors.load(Relaxed),
            datagrams_echoed: self.datagrams_echoed.load(Relaxed),
            refused_privileged_port: self.refused_privileged_port.load(Relaxed),
            refused_invalid_source: self.refused_invalid_source.load(Relaxed),
            rate_limited: self.rate_limited.load(Relaxed),
            udp_total_rate_limited: self.udp_total_rate_limited.load(Relaxed),
            truncated: self.truncated.load(Relaxed),
            udp_kernel_drops: self.udp_kernel_drops.load(Relaxed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_summary_leaves_out_what_did_not_happen() {
        let quiet = Stats {
            accepted: 3,
            closed: 3,
            bytes_received: 10,
            bytes_echoed: 10,
            ..Stats::default()
        };
        let on_uring = Stats {
            accepted: 2,
            active: 2,
            active_events: 1,
            active_uring: 1,
            ..Stats::default()
        };
        assert_eq!(
            on_uring.to_string(),
            "2 connections accepted, 0 closed, 2 active (0 on threads, 1 on event loops, \
             1 on io_uring loops); 0 bytes received, 0 echoed"
        );
        assert_eq!(
            quiet.to_string(),
            "3 connections accepted, 3 closed, 0 active; 10 bytes received, 10 echoed"
        );
        let busy = Stats {
            accepted: 5,
            closed: 2,
            active: 3,
            active_threads: 1,
            active_events: 2,
            datagrams_echoed: 7,
            idle_timeouts: 1,
            reclaimed: 2,
            fd_exhausted: 4,
            truncated: 1,
            udp_total_rate_limited: 8,
            limit_reached: 6,
            ..Stats::default()
        };
        assert_eq!(
            busy.to_string(),
            "5 connections accepted, 2 closed, 3 active (1 on threads, 2 on event loops); \
             0 bytes received, 0 echoed; 7 datagrams echoed; the connection limit was \
             reached 6 times (clients waited); closed early: 1 idle timeouts, \
             2 idle reclaimed for waiting clients; refused: 4 reset for lack of file \
             descriptors; datagrams not answered: 8 over the server-wide rate, 1 too large"
        );
    }
}
