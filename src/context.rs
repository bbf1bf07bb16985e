//! The state every accept loop, engine and connection shares: settings,
//! counters, the shutdown flag, the limits and the connection table.

use crate::fault::Faults;
use crate::impairment::SourcePlans;
use crate::limit::{ConnectionLimit, SourceCap};
use crate::rate_limit::UdpLimiter;
use crate::settings::Settings;
use crate::shutdown::Shutdown;
use crate::stats::Counters;
use crate::table::ConnectionTable;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};

/// State shared by the accept loops, the engines and every connection.
#[derive(Debug)]
pub(crate) struct Context {
    pub(crate) settings: Settings,
    pub(crate) counters: Counters,
    pub(crate) shutdown: Shutdown,
    pub(crate) limit: Arc<ConnectionLimit>,
    pub(crate) per_source: Option<Arc<SourceCap>>,
    pub(crate) table: ConnectionTable,
    /// The UDP rate limit: one set of buckets for every UDP socket and
    /// thread, so a source spraying several of them gets one budget.
    pub(crate) udp_limiter: Option<Mutex<UdpLimiter>>,
    /// Errors injected by unit tests (nothing in other builds).
    pub(crate) faults: Faults,
    /// The index of the next impaired connection (each draws from the seed
    /// and its index).
    pub(crate) impair_next: AtomicU64,
    /// The impaired UDP sources, indexed in first-seen order over every
    /// UDP socket and thread of the server.
    pub(crate) udp_impair: Option<Mutex<SourcePlans>>,
}

impl Context {
    /// Shared state for a server allowing `max_connections` at once.
    pub(crate) fn new(settings: Settings, max_connections: usize) -> Context {
        let shutdown = Shutdown::default();
        let limit = ConnectionLimit::new(max_connections, &shutdown);
        Context {
            per_source: settings.max_per_source.map(SourceCap::new),
            udp_limiter: UdpLimiter::new(
                settings.udp.rate_limit,
                settings.udp.total_rate_limit,
                settings.udp.prefix,
                std::time::Instant::now(),
            )
            .map(Mutex::new),
            udp_impair: settings
                .impair
                .as_deref()
                .filter(|imp| imp.affects_datagrams())
                .map(|imp| Mutex::new(SourcePlans::new(imp))),
            impair_next: AtomicU64::new(0),
            settings,
            counters: Counters::default(),
            shutdown,
            limit,
            table: ConnectionTable::default(),
            faults: Faults::default(),
        }
    }
}
