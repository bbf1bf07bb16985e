//! Signals: SIGINT/SIGTERM stop the server (a second one exits at once),
//! SIGUSR1 logs the counters.

use crate::server::ServerHandle;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// The server the signal handlers act on, once it is built. The handlers
/// are installed before anything is bound, so that a signal during
/// start-up is a clean stop (exit 0, nothing left behind) rather than the
/// default action; one that comes before the server exists stops it as
/// soon as it does.
#[derive(Debug, Default)]
pub(super) struct SignalTarget {
    server: std::sync::Mutex<Option<ServerHandle>>,
    /// SIGINT/SIGTERM/SIGHUP received so far.
    stops: AtomicUsize,
}

impl SignalTarget {
    pub(super) fn server(&self) -> Option<ServerHandle> {
        self.server
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// The server is built: from now on a stop signal stops it, and one
    /// that came already does.
    pub(super) fn attach(&self, handle: ServerHandle) {
        *self
            .server
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(handle.clone());
        if self.stops.load(Ordering::SeqCst) > 0 {
            handle.shutdown();
        }
    }

    /// A stop signal: the first stops the server (now, or once it is
    /// built); returns `false` for a second one, which means exit at once.
    pub(super) fn stop(&self) -> bool {
        if self.stops.fetch_add(1, Ordering::SeqCst) > 0 {
            return false;
        }
        log::info!("shutting down: finishing open connections (signal again to force)");
        if let Some(handle) = self.server() {
            handle.shutdown();
        }
        true
    }

    pub(super) fn install(self: &Arc<Self>) -> std::io::Result<()> {
        let target = Arc::clone(self);
        ctrlc::set_handler(move || {
            if !target.stop() {
                log::warn!("second signal: exiting at once");
                std::process::exit(130);
            }
        })
        .map_err(|e| std::io::Error::other(format!("cannot install signal handler: {e}")))?;
        log_stats_on_sigusr1(self);
        Ok(())
    }
}

/// SIGUSR1 logs the counters and changes nothing else (xinetd's
/// convention). The signal handler only wakes a thread, which logs.
#[cfg(unix)]
fn log_stats_on_sigusr1(target: &Arc<SignalTarget>) {
    let signals = signal_hook::iterator::Signals::new([signal_hook::consts::SIGUSR1]);
    let target = Arc::clone(target);
    let started = signals.and_then(|mut signals| {
        std::thread::Builder::new()
            .name("echo-sigusr1".to_owned())
            .spawn(move || {
                for _ in signals.forever() {
                    // Before the server exists there is nothing to log.
                    if let Some(handle) = target.server() {
                        log::info!("stats: {}", handle.stats());
                    }
                }
            })
    });
    if let Err(e) = started {
        log::warn!("SIGUSR1 will not log the counters: {e}");
    }
}

#[cfg(not(unix))]
fn log_stats_on_sigusr1(_: &Arc<SignalTarget>) {}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::server::Server;

    /// A stop signal before the server exists stops it as soon as it is
    /// attached; one after stops it at once; a second asks to exit.
    #[test]
    fn a_stop_signal_reaches_the_server_whenever_it_comes() {
        let built = || Server::builder().tcp(([127, 0, 0, 1], 0)).build().unwrap();
        let early = SignalTarget::default();
        assert!(early.stop(), "the first signal stops");
        let server = built();
        early.attach(server.handle());
        assert!(server.handle().is_shutdown(), "a signal before start-up");
        assert!(!early.stop(), "a second signal exits");
        let late = SignalTarget::default();
        let server = built();
        late.attach(server.handle());
        assert!(!server.handle().is_shutdown());
        assert!(late.stop());
        assert!(server.handle().is_shutdown(), "a signal while serving");
    }
}
