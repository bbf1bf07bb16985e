//! The engines: three ways to wait for a connection's next bytes, one echo
//! core. [`Engines::serve`] places each admitted connection on a thread of
//! its own, on an event loop or on an io_uring loop, by the
//! configured [`Engine`], and never moves it afterwards.

#[cfg(unix)]
mod events;
#[cfg(unix)]
mod loops;
pub(crate) mod threads;
#[cfg(all(target_os = "linux", feature = "uring"))]
mod uring;

use crate::connection::Connection;
use crate::context::Context;
use crate::limit::ThreadSeats;
use crate::settings::Engine;
use crate::stats::Counters;
use std::io;
use std::sync::Arc;

/// The engines of one server.
#[derive(Debug)]
pub(crate) struct Engines {
    engine: Engine,
    /// Connections allowed on threads: every one under `Threads` (the
    /// connection limit is clamped to the thread budget), the first ones
    /// under `Auto`, none under `Events`.
    seats: Arc<ThreadSeats>,
    #[cfg(unix)]
    loops: Option<events::EventLoops>,
    /// The io_uring loops: under `Uring`, and under `Auto` where the
    /// kernel lets this process use io_uring.
    #[cfg(all(target_os = "linux", feature = "uring"))]
    uring: Option<uring::UringLoops>,
}

/// Why a connection could not be served; it has been closed.
#[derive(Debug)]
pub(crate) struct Refused(pub(crate) io::Error);

impl Engines {
    /// Starts the loops the engine needs. `thread_seats` is how many
    /// connections may have their own thread.
    pub(crate) fn start(ctx: &Arc<Context>, thread_seats: usize) -> io::Result<Engines> {
        let engine = ctx.settings.engine;
        #[cfg(unix)]
        // TLS connections are never put on uring loops (they receive into
        // the ring's buffers, with no `read` for rustls to decrypt through):
        // under `Uring` and `Auto`, event loops serve the TLS listeners'
        // connections.
        #[cfg(feature = "tls")]
        let tls = ctx.settings.tls.is_some();
        #[cfg(not(feature = "tls"))]
        let tls = false;
        // Impaired connections are not put on uring loops either (their
        // pieces and deadlines are the event loops'): under `Uring`, event
        // loops serve them.
        let impaired = ctx
            .settings
            .impair
            .as_ref()
            .is_some_and(|imp| imp.affects_streams());
        // `--event-loops` counts the uring loops too. (The builder refused
        // `Uring` where this module is not compiled.)
        #[cfg(all(target_os = "linux", feature = "uring"))]
        let uring = match engine {
            Engine::Uring => Some(
                uring::UringLoops::start(crate::settings::per_core(ctx.settings.event_loops), ctx)
                    .map_err(|e| {
                        let why = crate::sys::uring::refusal(&e);
                        io::Error::new(
                            e.kind(),
                            format!("the uring engine cannot run: {why} ({e})"),
                        )
                    })?,
            ),
            Engine::Auto => auto_uring(ctx),
            _ => None,
        };
        #[cfg(all(target_os = "linux", feature = "uring"))]
        let on_uring = uring.is_some();
        #[cfg(not(all(target_os = "linux", feature = "uring")))]
        let on_uring = false;
        let loops = match engine {
            Engine::Threads => None,
            _ if on_uring && !tls && !impaired => None,
            _ => Some(events::EventLoops::start(
                crate::settings::per_core(ctx.settings.event_loops),
                ctx,
            )?),
        };
        Ok(Engines {
            engine,
            seats: ThreadSeats::new(thread_seats),
            #[cfg(unix)]
            loops,
            #[cfg(all(target_os = "linux", feature = "uring"))]
            uring,
        })
    }

    /// Serves `conn` on a thread if it may have one, else on the least busy
    /// loop. Under `Auto`, a connection the OS refuses a thread goes to a
    /// loop; under `Threads` it is closed.
    pub(crate) fn serve(&self, mut conn: Connection) -> Result<(), Refused> {
        if let Some(seat) = self.seats.try_take() {
            conn.place_on_thread(seat);
            match threads::spawn(conn) {
                Ok(()) => return Ok(()),
                Err((back, e)) => {
                    if self.engine == Engine::Threads {
                        return spawn_retried(back, e);
                    }
                    log::debug!("{}: no thread ({e}), serving it on a loop", back.peer);
                    conn = back.unplaced();
                }
            }
        }
        self.serve_on_event_loop(conn)
    }

    #[cfg(unix)]
    fn serve_on_event_loop(&self, conn: Connection) -> Result<(), Refused> {
        #[cfg(all(target_os = "linux", feature = "uring"))]
        if let (Some(uring), false) = (&self.uring, conn.is_tls() || conn.impair.is_some()) {
            return uring
                .serve(conn)
                .map_err(|conn| refuse(conn, io::Error::other("no uring loop is running")));
        }
        match &self.loops {
            Some(loops) => loops
                .serve(conn)
                .map_err(|conn| refuse(conn, io::Error::other("no event loop is running"))),
            None => Err(refuse(conn, io::Error::other("no thread seat is free"))),
        }
    }

    #[cfg(not(unix))]
    fn serve_on_event_loop(&self, conn: Connection) -> Result<(), Refused> {
        Err(refuse(conn, io::Error::other("no thread seat is free")))
    }

    /// After shutdown has shut down every connection's read side: makes the
    /// event loops look at each of their connections at once.
    pub(crate) fn nudge(&self) {
        #[cfg(unix)]
        if let Some(loops) = &self.loops {
            loops.nudge();
        }
        #[cfg(all(target_os = "linux", feature = "uring"))]
        if let Some(uring) = &self.uring {
            uring.nudge();
        }
    }
}

/// Under `Auto`, the uring loops that serve what threads do not, where
/// this process may use io_uring; else `None`, and one line says why the
/// event loops serve them instead (io_uring disabled by the sysctl or a
/// container's seccomp profile, or a kernel without it or without the
/// buffer rings the engine needs).
#[cfg(all(target_os = "linux", feature = "uring"))]
fn auto_uring(ctx: &Arc<Context>) -> Option<uring::UringLoops> {
    match uring::UringLoops::start(crate::settings::per_core(ctx.settings.event_loops), ctx) {
        Ok(loops) => Some(loops),
        Err(e) => {
            log::info!(
                "engine auto: event loops instead of io_uring: {} ({e})",
                crate::sys::uring::refusal(&e)
            );
            None
        }
    }
}

/// Under `threads`, a refused spawn is tried again a few times before the
/// connection is refused: a connection frees its slot just before its
/// thread has quite exited, so at the OS's thread limit the next spawn can
/// fail for a few microseconds. (Under `auto` the event loops take it.)
fn spawn_retried(mut conn: Connection, mut error: io::Error) -> Result<(), Refused> {
    for delay_ms in SPAWN_RETRIES_MS {
        std::thread::sleep(std::time::Duration::from_millis(delay_ms));
        match threads::spawn(conn) {
            Ok(()) => return Ok(()),
            Err((back, e)) => (conn, error) = (back, e),
        }
    }
    Err(refuse(conn, error))
}

/// Waits between spawn attempts: 31 ms in all at most.
const SPAWN_RETRIES_MS: [u64; SPAWN_RETRIES] = [1, 2, 4, 8, 16];

/// Spawn attempts after the first, under `threads`.
pub(crate) const SPAWN_RETRIES: usize = 5;

/// Closes `conn` (dropping it frees its slots) and counts it.
fn refuse(conn: Connection, e: io::Error) -> Refused {
    Counters::add(&conn.ctx().counters.thread_refused, 1);
    drop(conn);
    Refused(e)
}

/// How often a loop (events or uring) checks its deadlines: the idle and
/// write timeouts, a PROXY protocol header's and a TLS handshake's.
pub(crate) fn sweep_tick(settings: &crate::settings::Settings) -> Option<std::time::Duration> {
    let header = settings.proxy.is_on().then_some(settings.proxy.timeout);
    #[cfg(feature = "tls")]
    let header = match (header, settings.tls.is_some()) {
        (Some(h), true) => Some(h.min(settings.tls_handshake_timeout)),
        (None, true) => Some(settings.tls_handshake_timeout),
        (h, false) => h,
    };
    let idle = match (settings.idle_timeout, header) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    };
    sweep_period(idle, settings.write_timeout)
}

/// How often an event loop checks its timeouts: often enough that a timeout
/// fires within a quarter of itself (or 1 s) late, at most once per 10 ms;
/// never without a timeout.
fn sweep_period(
    idle: Option<std::time::Duration>,
    write: Option<std::time::Duration>,
) -> Option<std::time::Duration> {
    let shortest = match (idle, write) {
        (Some(a), Some(b)) => a.min(b),
        (a, b) => a.or(b)?,
    };
    Some((shortest / 4).clamp(
        std::time::Duration::from_millis(10),
        std::time::Duration::from_secs(1),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn timeouts_are_checked_at_a_quarter_of_the_shortest() {
        let ms = Duration::from_millis;
        assert_eq!(sweep_period(None, None), None);
        assert_eq!(sweep_period(Some(ms(2000)), None), Some(ms(500)));
        assert_eq!(sweep_period(None, Some(ms(400))), Some(ms(100)));
        assert_eq!(sweep_period(Some(ms(800)), Some(ms(2000))), Some(ms(200)));
        assert_eq!(sweep_period(Some(ms(2000)), Some(ms(800))), Some(ms(200)));
        // Bounded both ways.
        assert_eq!(sweep_period(Some(ms(20)), None), Some(ms(10)));
        assert_eq!(sweep_period(Some(ms(60_000)), None), Some(ms(1000)));
    }
}
