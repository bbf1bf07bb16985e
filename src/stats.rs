//! Counters: what the server has done, readable live from a
//! [`ServerHandle`](crate::ServerHandle) and printed on shutdown.
//!
//! Each counter is defined once, in the table below: its [`Stats`] field
//! and that field's doc, its live atomic in [`Counters`], its place in the
//! summary line ([`Display for Stats`](Stats#impl-Display-for-Stats)) and
//! its Prometheus sample (`metrics::render`, when built). Adding
//! one is a line in the table, and a call where it is counted.

use crate::datagram_filter::Refusal;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// Generates, from the table of counters, [`Stats`], [`Counters`] and its
/// snapshot, the definitions the summary line and /metrics are written
/// from ([`COUNTERS`]) and the Prometheus metrics ([`Metric`]).
///
/// `metrics { name: "HELP text", ... }` lists the Prometheus metrics in
/// the order rendered. Then each counter, in `Stats` field order (which is
/// also its order within its summary group and its metric):
///
/// ```text
/// /// Its doc: the field's rustdoc.
/// field: counter|gauge, SummaryGroup "its part of the summary, {} its value", metric{label="value"};
/// ```
///
/// The metric part is left out for a counter that has no sample of its own.
macro_rules! counters {
    (
        metrics { $( $metric:ident: $metric_help:literal, )* }
        counters { $(
            $(#[doc = $doc:literal])*
            $field:ident: $kind:ident, $group:ident $summary:literal
                $(, $family:ident $({ $label:ident = $value:literal })?)?;
        )* }
    ) => {
        /// A snapshot of a server's counters.
        #[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
        #[non_exhaustive]
        pub struct Stats {
            $( $(#[doc = $doc])* pub $field: u64, )*
        }

        /// The live counters behind [`Stats`]. Relaxed atomics: each counter
        /// is independent and only ever read as a statistic.
        #[derive(Debug, Default)]
        pub(crate) struct Counters {
            $( pub(crate) $field: AtomicU64, )*
        }

        impl Counters {
            pub(crate) fn snapshot(&self) -> Stats {
                Stats { $( $field: self.$field.load(Relaxed), )* }
            }
        }

        impl Stats {
            /// Every counter's value, in table order (as [`COUNTERS`]).
            fn values(&self) -> [u64; COUNTED] {
                [ $( self.$field, )* ]
            }
        }

        /// How many counters the table has.
        const COUNTED: usize = [ $( stringify!($field), )* ].len();

        /// Every counter's definition, in table order.
        const COUNTERS: [Counter; COUNTED] = [ $(
            Counter {
                kind: counters!(@kind $kind),
                told_at_zero: counters!(@told_at_zero $kind),
                sampled_at_zero: counters!(@sampled_at_zero $kind),
                group: Group::$group,
                summary: $summary,
                sample: counters!(@sample $( $family $( $label $value )? )?),
            },
        )* ];

        /// The Prometheus metrics: a counter's sample, or the samples of
        /// several told apart by a label. Named as exposed, after the
        /// `echo_server_` prefix.
        #[allow(non_camel_case_types)]
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        #[cfg_attr(not(feature = "metrics"), allow(dead_code))]
        pub(crate) enum Metric { $( $metric, )* }

        #[cfg_attr(not(feature = "metrics"), allow(dead_code))]
        impl Metric {
            /// Every metric, in the order rendered.
            pub(crate) const ALL: [Metric; [ $( stringify!($metric), )* ].len()] =
                [ $( Metric::$metric, )* ];

            /// Its name, after the `echo_server_` prefix.
            pub(crate) fn name(self) -> &'static str {
                match self { $( Metric::$metric => stringify!($metric), )* }
            }

            /// Its `HELP` text.
            pub(crate) fn help(self) -> &'static str {
                match self { $( Metric::$metric => $metric_help, )* }
            }
        }
    };
    (@kind counter) => { Kind::Counter };
    (@kind gauge) => { Kind::Gauge };
    (@kind gauge_if_used) => { Kind::Gauge };
    (@kind counter_if_used) => { Kind::Counter };
    (@told_at_zero gauge_if_used) => { false };
    (@told_at_zero counter_if_used) => { false };
    (@sampled_at_zero counter_if_used) => { false };
    (@sampled_at_zero $kind:ident) => { true };
    (@told_at_zero $kind:ident) => { true };
    (@sample) => { None };
    (@sample $family:ident) => { Some((Metric::$family, "")) };
    (@sample $family:ident $label:ident $value:literal) => {
        Some((Metric::$family, concat!("{", stringify!($label), "=\"", $value, "\"}")))
    };
}

counters! {
    metrics {
        connections_accepted_total: "Stream connections accepted.",
        connections_closed_total: "Stream connections closed, by either side.",
        active_connections: "Stream connections being served, by engine.",
        bytes_received_total: "Bytes read from stream clients.",
        bytes_echoed_total: "Bytes written back to clients, every transport.",
        datagrams_echoed_total: "UDP datagrams answered.",
        closed_early_total: "Connections the server closed before the client was done, by reason.",
        refused_total: "Connections and datagrams refused, by reason.",
        connection_limit_reached_total: "Times the accept loops waited at the connection limit.",
        udp_kernel_drops_total: "UDP datagrams the kernel dropped for want of receive buffer.",
        impaired_total: "What the impairments (--chunk, --reset-after, --drop, ...) did, by what.",
    }
    counters {
        /// Connections accepted since the server started, including those
        /// closed at once (refused at the per-source cap, for lack of a thread
        /// or of a file descriptor).
        accepted: counter, Connections "{} connections accepted", connections_accepted_total;
        /// Connections closed (by either side, or refused) since the server
        /// started. Whenever no connection is being opened or closed,
        /// `accepted = closed + active`.
        closed: counter, Connections "{} closed", connections_closed_total;
        /// Connections being served right now.
        // No sample: /metrics has them by engine, which add up to it.
        active: gauge, Connections "{} active";
        /// Of the active connections, those served by a thread of their own.
        active_threads: gauge, Engines "{} on threads", active_connections{engine="threads"};
        /// Of the active connections, those served by an event loop.
        active_events: gauge, Engines "{} on event loops", active_connections{engine="events"};
        /// Of the active connections, those served by an io_uring loop
        /// (Linux, `--engine uring`). Told in the summary only when some are.
        active_uring: gauge_if_used, Engines "{} on io_uring loops", active_connections{engine="uring"};
        /// Bytes read from stream clients (TCP, Unix). For every connection
        /// that ended normally, all of them were echoed.
        bytes_received: counter, Bytes "{} bytes received", bytes_received_total;
        /// Bytes written back to clients, over every transport.
        bytes_echoed: counter, Bytes "{} echoed", bytes_echoed_total;
        /// Connections closed because the client sent nothing for the idle timeout.
        idle_timeouts: counter, ClosedEarly "{} idle timeouts", closed_early_total{reason="idle_timeout"};
        /// Connections closed because the client read nothing for the write
        /// timeout while the server had data for it.
        write_timeouts: counter, ClosedEarly "{} write timeouts", closed_early_total{reason="write_timeout"};
        /// Idle connections closed to free a slot for a waiting client.
        reclaimed: counter, ClosedEarly "{} idle reclaimed for waiting clients", closed_early_total{reason="reclaimed"};
        /// Connections closed because the peer stopped answering TCP keepalive
        /// probes (it vanished without a FIN or reset).
        keepalive_closed: counter, ClosedEarly "{} vanished (keepalive)", closed_early_total{reason="keepalive"};
        /// Times the accept loop stopped at the connection limit (clients then
        /// wait in the backlog; none is refused).
        limit_reached: counter, Limit "the connection limit was reached {} times (clients waited)", connection_limit_reached_total;
        /// Connections closed at once because their address had as many
        /// connections as the per-source cap allows.
        refused_per_source: counter, Refused "{} at the per-source cap", refused_total{reason="per_source_cap"};
        /// Connections closed because no thread could be started for them.
        thread_refused: counter, Refused "{} for lack of threads", refused_total{reason="no_thread"};
        /// Connections from a PROXY protocol network (`--proxy-protocol`)
        /// closed without an echo: their header was malformed, too long, or
        /// not complete in time.
        proxy_refused: counter, Refused "{} without a valid PROXY header", refused_total{reason="proxy_header"};
        /// Connections to a TLS listener closed without an echo because their
        /// handshake failed: a plaintext client, or (mutual TLS) no or a bad
        /// client certificate.
        tls_handshake_failed: counter, Refused "{} failed TLS handshakes", refused_total{reason="tls_handshake"};
        /// Connections to a TLS listener closed without an echo because their
        /// handshake was not done within `--tls-handshake-timeout`.
        tls_handshake_timeouts: counter, Refused "{} TLS handshakes timed out", refused_total{reason="tls_handshake_timeout"};
        /// Connections reset at once because the process was out of file
        /// descriptors (the spare descriptor was used to accept and close them).
        fd_exhausted: counter, Refused "{} reset for lack of file descriptors", refused_total{reason="no_file_descriptor"};
        /// Other errors from `accept`, such as running out of memory.
        accept_errors: counter, Refused "{} accept errors", refused_total{reason="accept_error"};
        /// UDP datagrams answered.
        datagrams_echoed: counter, Datagrams "{} datagrams echoed", datagrams_echoed_total;
        /// UDP datagrams not answered because they came from a privileged port.
        refused_privileged_port: counter, NotAnswered "{} from privileged ports", refused_total{reason="privileged_port"};
        /// UDP datagrams not answered because their source address was
        /// broadcast, multicast or unspecified.
        refused_invalid_source: counter, NotAnswered "{} from invalid sources", refused_total{reason="invalid_source"};
        /// UDP datagrams not answered because their source's network exceeded
        /// its rate.
        rate_limited: counter, NotAnswered "{} rate limited", refused_total{reason="rate_limited"};
        /// UDP datagrams not answered because the server as a whole was at its
        /// reply rate ceiling.
        udp_total_rate_limited: counter, NotAnswered "{} over the server-wide rate", refused_total{reason="total_rate_limited"};
        /// UDP datagrams not answered because they were larger than the
        /// maximum ([`udp_max_datagram`](crate::ServerBuilder::udp_max_datagram)):
        /// dropped whole, never echoed in part.
        too_large: counter, NotAnswered "{} too large", refused_total{reason="too_large"};
        /// UDP datagrams the kernel dropped before the server saw them, for want
        /// of receive buffer space (where the OS reports it: Linux).
        udp_kernel_drops: counter, NotAnswered "{} dropped by the kernel", udp_kernel_drops_total;
        /// Impaired echo: pieces written (each a write of its own, after its
        /// delay and pacing). Told only when impairments are on.
        impaired_pieces: counter_if_used, Impaired "{} pieces sent", impaired_total{what="pieces"};
        /// Impaired connections reset (`--reset-after`).
        impaired_resets: counter_if_used, Impaired "{} resets", impaired_total{what="resets"};
        /// Impaired connections closed cleanly (`--close-after`).
        impaired_closes: counter_if_used, Impaired "{} closes", impaired_total{what="closes"};
        /// Impaired connections stalled (`--stall-after`).
        impaired_stalls: counter_if_used, Impaired "{} stalls", impaired_total{what="stalls"};
        /// Impaired UDP replies dropped (`--drop`).
        impaired_dropped: counter_if_used, Impaired "{} datagrams dropped", impaired_total{what="datagrams_dropped"};
        /// Impaired UDP replies sent twice (`--duplicate`).
        impaired_duplicated: counter_if_used, Impaired "{} duplicated", impaired_total{what="datagrams_duplicated"};
        /// Impaired UDP replies held back behind the next (`--reorder`).
        impaired_reordered: counter_if_used, Impaired "{} reordered", impaired_total{what="datagrams_reordered"};
    }
}

/// Whether a counter only grows or also falls: its Prometheus `TYPE`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(not(feature = "metrics"), allow(dead_code))]
pub(crate) enum Kind {
    /// Only grows.
    Counter,
    /// Rises and falls: a count of what is open now.
    Gauge,
}

impl Kind {
    /// The Prometheus `TYPE`.
    #[cfg_attr(not(feature = "metrics"), allow(dead_code))]
    pub(crate) fn name(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
        }
    }
}

/// One counter, as the table defines it.
#[derive(Debug)]
pub(crate) struct Counter {
    #[cfg_attr(not(feature = "metrics"), allow(dead_code))]
    pub(crate) kind: Kind,
    /// Whether the summary tells it at 0 (when its group is told at all):
    /// not an engine few servers run (`gauge_if_used` in the table).
    told_at_zero: bool,
    /// Whether /metrics has its sample at 0: not for what only an option
    /// that is off by default does (`counter_if_used`), so that a server
    /// without it serves the same page as before.
    #[cfg_attr(not(feature = "metrics"), allow(dead_code))]
    pub(crate) sampled_at_zero: bool,
    group: Group,
    /// Its part of the summary line, `{}` standing for its value.
    summary: &'static str,
    /// The metric its sample belongs to and its labels (`{reason="x"}`, or
    /// empty), if it has a sample of its own.
    #[cfg_attr(not(feature = "metrics"), allow(dead_code))]
    pub(crate) sample: Option<(Metric, &'static str)>,
}

/// The parts of the summary line, in the order printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Group {
    /// Accepted, closed and active: always told.
    Connections,
    /// The active connections by engine, in parentheses, while any is active.
    Engines,
    /// Bytes received and echoed: always told.
    Bytes,
    /// Datagrams echoed, if any.
    Datagrams,
    /// Waits at the connection limit, if any.
    Limit,
    /// Why connections were closed early, the reasons that happened.
    ClosedEarly,
    /// Why connections were refused, the reasons that happened.
    Refused,
    /// Why datagrams were not answered, the reasons that happened.
    NotAnswered,
    /// What the impairments did, if anything.
    Impaired,
}

impl Group {
    const ALL: [Group; 9] = [
        Group::Connections,
        Group::Engines,
        Group::Bytes,
        Group::Datagrams,
        Group::Limit,
        Group::ClosedEarly,
        Group::Refused,
        Group::NotAnswered,
        Group::Impaired,
    ];

    /// What comes before its first counter, and after its last.
    fn frame(self) -> (&'static str, &'static str) {
        match self {
            Group::Connections => ("", ""),
            Group::Engines => (" (", ")"),
            Group::Bytes | Group::Datagrams | Group::Limit => ("; ", ""),
            Group::ClosedEarly => ("; closed early: ", ""),
            Group::Refused => ("; refused: ", ""),
            Group::NotAnswered => ("; datagrams not answered: ", ""),
            Group::Impaired => ("; impaired: ", ""),
        }
    }

    /// Whether one of its counters, at `n`, is told in the summary of
    /// `stats`. The engines go with `active` (even at 0 each: a connection
    /// listed, not placed yet), not with their own values, which a
    /// snapshot may catch lagging the total.
    fn shows(self, counter: &Counter, n: u64, stats: &Stats) -> bool {
        match self {
            Group::Connections | Group::Bytes => true,
            Group::Engines => stats.active > 0 && (n > 0 || counter.told_at_zero),
            _ => n > 0,
        }
    }
}

impl Stats {
    /// Every counter's definition and value, in table order.
    pub(crate) fn counters(&self) -> impl Iterator<Item = (&'static Counter, u64)> {
        COUNTERS.iter().zip(self.values())
    }
}

impl fmt::Display for Stats {
    /// One line for people: what the server did first, then only the
    /// reasons a connection was closed early or refused, or a datagram not
    /// answered, that happened at all. For example `12 connections
    /// accepted, 12 closed, 0 active; 3400 bytes received, 3400 echoed;
    /// closed early: 2 idle timeouts`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for group in Group::ALL {
            let (open, close) = group.frame();
            let mut told = false;
            for (counter, n) in self.counters() {
                if counter.group != group || !group.shows(counter, n, self) {
                    continue;
                }
                f.write_str(if told { ", " } else { open })?;
                told = true;
                // Every summary has one `{}` (a test checks).
                let (before, after) = counter.summary.split_once("{}").unwrap_or(("", ""));
                write!(f, "{before}{n}{after}")?;
            }
            if told {
                f.write_str(close)?;
            }
        }
        Ok(())
    }
}

/// Why a connection was closed as soon as it was accepted, before the
/// connection table listed it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TurnedAway {
    /// Its address had as many connections as the per-source cap allows.
    PerSourceCap,
    /// The process was out of file descriptors: accepted on the spare one
    /// and reset.
    NoFileDescriptor,
}

impl Counters {
    pub(crate) fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Relaxed);
    }

    pub(crate) fn sub(counter: &AtomicU64, n: u64) {
        counter.fetch_sub(n, Relaxed);
    }

    /// A connection accepted, whatever becomes of it.
    pub(crate) fn count_accepted(&self) {
        Counters::add(&self.accepted, 1);
    }

    /// A connection listed in the connection table: active until
    /// [`count_closed`](Counters::count_closed).
    pub(crate) fn count_listed(&self) {
        Counters::add(&self.active, 1);
    }

    /// A connection closed: one the table listed (`None`: it was active),
    /// or one turned away at once. The one place `closed` grows, so that
    /// whenever no connection is opening or closing, `accepted = closed +
    /// active`.
    pub(crate) fn count_closed(&self, turned_away: Option<TurnedAway>) {
        match turned_away {
            None => Counters::sub(&self.active, 1),
            Some(reason) => self.count_refused(reason),
        }
        Counters::add(&self.closed, 1);
    }

    /// Why a connection was turned away: at once, by the accept loop
    /// (through [`count_closed`](Counters::count_closed)), or once its
    /// PROXY protocol header named a client at the per-source cap (then its
    /// close is counted as any listed connection's).
    pub(crate) fn count_refused(&self, reason: TurnedAway) {
        match reason {
            TurnedAway::PerSourceCap => Counters::add(&self.refused_per_source, 1),
            TurnedAway::NoFileDescriptor => Counters::add(&self.fd_exhausted, 1),
        }
    }

    /// A datagram not answered, and why.
    pub(crate) fn count_refusal(&self, refusal: Refusal) {
        let counter = match refusal {
            Refusal::PrivilegedPort => &self.refused_privileged_port,
            Refusal::InvalidSource => &self.refused_invalid_source,
            Refusal::RateLimited => &self.rate_limited,
            Refusal::TotalRateLimited => &self.udp_total_rate_limited,
            Refusal::TooLarge => &self.too_large,
        };
        Counters::add(counter, 1);
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Every counter with a value of its own: 1 to 23 in field order.
    pub(crate) fn every_counter() -> Stats {
        Stats {
            accepted: 1,
            closed: 2,
            active: 3,
            active_threads: 4,
            active_events: 5,
            active_uring: 25,
            bytes_received: 6,
            bytes_echoed: 7,
            idle_timeouts: 8,
            write_timeouts: 9,
            reclaimed: 10,
            keepalive_closed: 11,
            limit_reached: 12,
            refused_per_source: 13,
            thread_refused: 14,
            proxy_refused: 24,
            tls_handshake_failed: 27,
            tls_handshake_timeouts: 28,
            fd_exhausted: 15,
            accept_errors: 16,
            datagrams_echoed: 17,
            refused_privileged_port: 18,
            refused_invalid_source: 19,
            rate_limited: 20,
            udp_total_rate_limited: 21,
            too_large: 22,
            udp_kernel_drops: 23,
            // The golden lines below predate impairments: theirs are
            // checked on their own.
            ..Stats::default()
        }
    }

    /// Every close is counted once, with its reason if it was turned away,
    /// and the connection counters add up.
    #[test]
    fn closes_and_refusals_are_counted_where_they_belong() {
        let counters = Counters::default();
        for _ in 0..4 {
            counters.count_accepted();
        }
        counters.count_listed();
        counters.count_listed();
        counters.count_closed(None);
        counters.count_closed(Some(TurnedAway::PerSourceCap));
        counters.count_closed(Some(TurnedAway::NoFileDescriptor));
        for refusal in [
            Refusal::PrivilegedPort,
            Refusal::InvalidSource,
            Refusal::RateLimited,
            Refusal::TotalRateLimited,
            Refusal::TooLarge,
        ] {
            counters.count_refusal(refusal);
        }
        let s = counters.snapshot();
        assert_eq!((s.accepted, s.closed, s.active), (4, 3, 1));
        let expected = Stats {
            accepted: 4,
            closed: 3,
            active: 1,
            refused_per_source: 1,
            fd_exhausted: 1,
            refused_privileged_port: 1,
            refused_invalid_source: 1,
            rate_limited: 1,
            udp_total_rate_limited: 1,
            too_large: 1,
            ..Stats::default()
        };
        assert_eq!(s, expected);
    }

    /// What the table must hold for the summary and /metrics to be well
    /// formed: one `{}` per summary, every metric with a sample, and a
    /// metric's samples all of one kind (its `TYPE`).
    #[test]
    fn the_table_is_consistent() {
        for counter in &COUNTERS {
            assert_eq!(counter.summary.matches("{}").count(), 1, "{counter:?}");
        }
        for metric in Metric::ALL {
            let kinds: Vec<Kind> = COUNTERS
                .iter()
                .filter_map(|c| c.sample.filter(|(m, _)| *m == metric).map(|_| c.kind))
                .collect();
            assert!(!kinds.is_empty(), "{metric:?} has no sample");
            assert!(
                kinds.iter().all(|k| *k == kinds[0]),
                "{metric:?} mixes kinds"
            );
        }
    }

    /// The summary line as it was written out by hand, before the counter
    /// table generated it: scripts read it, so it stays this, byte for byte.
    #[test]
    fn the_summary_line_is_what_it_always_was() {
        assert_eq!(
            every_counter().to_string(),
            "1 connections accepted, 2 closed, 3 active (4 on threads, 5 on event loops, 25 on io_uring \
             loops); \
             6 bytes received, 7 echoed; 17 datagrams echoed; the connection limit was \
             reached 12 times (clients waited); closed early: 8 idle timeouts, 9 write \
             timeouts, 10 idle reclaimed for waiting clients, 11 vanished (keepalive); \
             refused: 13 at the per-source cap, 14 for lack of threads, 24 without a valid \
             PROXY header, 27 failed TLS handshakes, 28 TLS handshakes timed out, 15 reset for lack \
             of file descriptors, 16 accept errors; datagrams not answered: 18 from \
             privileged ports, 19 from invalid sources, 20 rate limited, 21 over the \
             server-wide rate, 22 too large, 23 dropped by the kernel"
        );
        assert_eq!(
            Stats::default().to_string(),
            "0 connections accepted, 0 closed, 0 active; 0 bytes received, 0 echoed"
        );
        // The engines are told only while connections are active, even at 0
        // (a connection listed, not placed yet), and never otherwise (a
        // snapshot is not atomic: a gauge may lag the total).
        let listed = Stats {
            active: 1,
            ..Stats::default()
        };
        assert_eq!(
            listed.to_string(),
            "0 connections accepted, 0 closed, 1 active (0 on threads, 0 on event loops); \
             0 bytes received, 0 echoed"
        );
        let lagging = Stats {
            active_threads: 2,
            active_events: 1,
            ..Stats::default()
        };
        assert_eq!(lagging.to_string(), Stats::default().to_string());
    }

    /// The impairments' counters are told only once they count something
    /// (the summary of a server without impairments is as before).
    #[test]
    fn impairments_are_told_when_they_happened() {
        let impaired = Stats {
            impaired_pieces: 5,
            impaired_resets: 1,
            impaired_dropped: 2,
            ..Stats::default()
        };
        assert_eq!(
            impaired.to_string(),
            "0 connections accepted, 0 closed, 0 active; 0 bytes received, 0 echoed; \
             impaired: 5 pieces sent, 1 resets, 2 datagrams dropped"
        );
    }

    #[test]
    fn the_summary_leaves_out_what_did_not_happen() {
        let quiet = Stats {
            accepted: 3,
            closed: 3,
            bytes_received: 10,
            bytes_echoed: 10,
            ..Stats::default()
        };
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
            too_large: 1,
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
