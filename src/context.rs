//! The state every accept loop, engine and connection shares: settings,
//! counters, the shutdown flag, the limits and the connection table.

use crate::fault::Faults;
use crate::limit::{ConnectionLimit, SourceCap};
use crate::rate_limit::UdpLimiter;
use crate::settings::Settings;
use crate::shutdown::Shutdown;
use crate::stats::Counters;
use crate::table::ConnectionTable;
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
            settings,
            counters: Counters::default(),
            shutdown,
            limit,
            table: ConnectionTable::default(),
            faults: Faults::default(),
        }
    }
}
