//! Signals: SIGINT/SIGTERM stop the server (a second one exits at once),
//! SIGUSR1 logs the counters. SIGHUP re-reads the TLS certificates when the
//! server has TLS listeners (the convention of servers with files to
//! reload), and stops it like SIGTERM otherwise (what a hang-up meant
//! before TLS, and still means for a server started from a terminal).
//!
//! ctrlc takes SIGINT; SIGTERM, SIGHUP and SIGUSR1 are read by one
//! signal-hook thread, so that the handlers only write to a pipe and
//! SIGHUP can mean something else than stop.

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

    /// A SIGHUP with TLS listeners: the certificate files are read again;
    /// one that fails to load leaves the certificate in force, and says why.
    pub(super) fn reload(&self) {
        #[cfg(feature = "tls")]
        match self.server() {
            Some(handle) => match handle.reload_tls() {
                Ok(()) => log::info!("SIGHUP: TLS certificates reloaded"),
                Err(e) => log::error!("SIGHUP: {e}; the TLS certificates in force stay"),
            },
            None => log::info!("SIGHUP: nothing to reload before the server is running"),
        }
    }

    /// `reload_on_hup`: the server has TLS listeners, whose certificates
    /// SIGHUP re-reads; else it stops the server.
    pub(super) fn install(self: &Arc<Self>, reload_on_hup: bool) -> std::io::Result<()> {
        let target = Arc::clone(self);
        ctrlc::set_handler(move || {
            if !target.stop() {
                log::warn!("second signal: exiting at once");
                std::process::exit(130);
            }
        })
        .map_err(|e| std::io::Error::other(format!("cannot install signal handler: {e}")))?;
        read_other_signals(self, reload_on_hup);
        Ok(())
    }
}

/// SIGUSR1 logs the counters and changes nothing else (xinetd's
/// convention); SIGTERM stops; SIGHUP reloads or stops (`reload_on_hup`).
/// The signal handler only wakes a thread, which acts.
#[cfg(unix)]
fn read_other_signals(target: &Arc<SignalTarget>, reload_on_hup: bool) {
    use signal_hook::consts::{SIGHUP, SIGTERM, SIGUSR1};
    let signals = signal_hook::iterator::Signals::new([SIGUSR1, SIGTERM, SIGHUP]);
    let target = Arc::clone(target);
    let started = signals.and_then(|mut signals| {
        std::thread::Builder::new()
            .name("echo-signals".to_owned())
            .spawn(move || {
                for signal in signals.forever() {
                    match signal {
                        SIGHUP if reload_on_hup => target.reload(),
                        SIGHUP | SIGTERM => {
                            if !target.stop() {
                                log::warn!("second signal: exiting at once");
                                std::process::exit(130);
                            }
                        }
                        // Before the server exists there is nothing to log.
                        _ => {
                            if let Some(handle) = target.server() {
                                log::info!("stats: {}", handle.stats());
                            }
                        }
                    }
                }
            })
    });
    if let Err(e) = started {
        // Without the thread, SIGTERM and SIGHUP keep their default action
        // (the process ends): not a clean stop, but a stop.
        log::warn!("SIGTERM, SIGHUP and SIGUSR1 will not be handled: {e}");
    }
}

#[cfg(not(unix))]
fn read_other_signals(_: &Arc<SignalTarget>, _: bool) {}

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
