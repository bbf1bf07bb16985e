//! The thread engine: each connection gets a thread of its own, which
//! blocks in `read` and runs the blocking echo (and, on Linux, `splice(2)`
//! once the client sends in bulk). Socket timeouts are the idle and write
//! timeouts.

use crate::connection::{Connection, Outcome};
use crate::context::Context;
use crate::echo::{self, Echo, Progress};
use crate::impairment::{Ending, Impaired, Plan};
use crate::stats::Counters;
use crate::stream::{is_timeout, Metered, Op};
use std::io::{self, ErrorKind};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

/// Stack size of connection threads. `echo` keeps 1 KiB on the stack and its
/// bulk buffer on the heap, so a connection needs little: the TCP, Unix and
/// CLI suites (debug build, `--log-data` included) pass with 16 KiB, the
/// glibc minimum. 64 KiB leaves room for panic messages and log formatting;
/// untouched pages cost no memory.
pub(crate) const STACK_SIZE: usize = 64 * 1024;

/// How every connection thread is made: named, on a small stack.
fn connection_thread() -> std::thread::Builder {
    std::thread::Builder::new()
        .name("echo-conn".to_owned())
        .stack_size(STACK_SIZE)
}

/// Starts a thread that serves `conn` until the client is done. If the OS
/// refuses a thread, the connection is handed back untouched, so that the
/// caller can serve it another way or close it.
// The connection comes back by value only when the OS refuses a thread, a
// rare path: not worth a box on every spawn.
#[allow(clippy::result_large_err)]
pub(crate) fn spawn(conn: Connection) -> Result<(), (Connection, io::Error)> {
    let id = conn.id();
    let ctx = Arc::clone(conn.ctx());
    if let Some(injected) = ctx.faults.take(crate::fault::Point::Spawn) {
        return Err((conn, injected));
    }
    // Passed through a cell rather than moved into the closure: if the
    // spawn fails, the closure is dropped and the connection is still ours.
    let cell = Arc::new(Mutex::new(Some(conn)));
    let theirs = Arc::clone(&cell);
    let spawned = connection_thread().spawn(move || {
        let conn = theirs.lock().unwrap_or_else(PoisonError::into_inner).take();
        drop(theirs);
        if let Some(conn) = conn {
            serve(conn);
        }
    });
    match spawned {
        Ok(thread) => {
            ctx.table.attach(id, thread);
            Ok(())
        }
        Err(e) => {
            let conn = cell.lock().unwrap_or_else(PoisonError::into_inner).take();
            match conn {
                Some(conn) => Err((conn, e)),
                // Unreachable: a thread that never started took nothing.
                None => Ok(()),
            }
        }
    }
}

fn serve(mut conn: Connection) {
    let state = match read_preface(&mut conn).and_then(|state| {
        handshake(&mut conn)?;
        Ok(state)
    }) {
        Ok(state) => state,
        Err(outcome) => return conn.close(outcome),
    };
    let ctx = Arc::clone(conn.ctx());
    let timeouts = conn
        .stream
        .socket
        .set_read_timeout(ctx.settings.idle_timeout)
        .and_then(|()| {
            conn.stream
                .socket
                .set_write_timeout(ctx.settings.write_timeout)
        });
    if let Err(e) = timeouts {
        log::warn!("{}: cannot set timeouts: {e}", conn.peer);
        return;
    }
    log::debug!("{}: connected", conn.peer);
    // Looked at once per connection: an unimpaired one runs exactly as
    // before (and may splice); an impaired one never splices.
    let impair = conn.impair.take();
    let mut metered = conn.metered();
    let mut state = state;
    let result = match impair {
        Some(mut plan) => impaired(&mut state, &mut metered, &mut plan, &ctx),
        None => match echo::echo_until_bulk(&mut state, &mut metered) {
            Ok(Progress::Done) => Ok(state.echoed()),
            Ok(Progress::Bulk) => bulk(&mut metered, &ctx).map(|m| state.echoed() + m),
            Err(e) => Err(e),
        },
    };
    let outcome = match result {
        Ok(n) => Outcome::Finished(n),
        Err(e) if is_timeout(&e) => Outcome::TimedOut(metered.last_op),
        Err(e) => Outcome::Failed(e),
    };
    conn.close(outcome);
}

/// An impaired connection's echo: the blocking echo over a stream that
/// sleeps until each piece's time. A stall holds the connection, reading
/// and writing nothing, until its idle (else write) timeout or shutdown.
fn impaired(
    state: &mut Echo,
    metered: &mut Metered<'_>,
    plan: &mut Plan,
    ctx: &Context,
) -> io::Result<u64> {
    let mut stream = Impaired {
        inner: &mut *metered,
        plan,
        pieces: &ctx.counters.impaired_pieces,
        stalls: &ctx.counters.impaired_stalls,
        blocking: Some(&ctx.shutdown),
        wake_at: None,
    };
    let result = match echo::echo_until_bulk(state, &mut stream) {
        Ok(Progress::Done) => Ok(state.echoed()),
        Ok(Progress::Bulk) => {
            echo::echo_with_buffer(&mut stream, &mut vec![0u8; echo::DEFAULT_BUFFER_SIZE])
                .map(|m| state.echoed() + m)
        }
        Err(e) => Err(e),
    };
    match result {
        Err(e) if crate::impairment::ending(&e) == Some(Ending::Stall) => {
            log::debug!("{}: stalled (--stall-after)", metered.peer);
            let hold = ctx.settings.idle_timeout.or(ctx.settings.write_timeout);
            let until = hold.map(crate::shutdown::deadline);
            while !ctx.shutdown.is_requested() && until.is_none_or(|u| Instant::now() < u) {
                std::thread::sleep(STALL_POLL);
            }
            metered.last_op = Op::Read;
            Err(ErrorKind::TimedOut.into())
        }
        other => other,
    }
}

/// How often a stalled connection's thread looks at the shutdown flag.
const STALL_POLL: std::time::Duration = std::time::Duration::from_millis(50);

/// The PROXY protocol header a balancer's connection owes, read before
/// the echo within its deadline. Returns the echo to start with.
fn read_preface(conn: &mut Connection) -> Result<Echo, Outcome> {
    match conn.preface_deadline() {
        Some(deadline) => within(
            conn,
            deadline,
            Connection::read_preface,
            Connection::preface_timed_out,
        ),
        None => Ok(Echo::new()),
    }
}

/// The TLS handshake a TLS listener's connection owes, within its
/// deadline.
fn handshake(conn: &mut Connection) -> Result<(), Outcome> {
    match conn.handshake_deadline() {
        Some(deadline) => within(
            conn,
            deadline,
            |conn| Ok(conn.handshake()?.then_some(())),
            Connection::handshake_timed_out,
        ),
        None => Ok(()),
    }
}

/// Runs `step` until it gives a value or `deadline` passes (then
/// `timed_out` says how to close). The socket is non-blocking meanwhile and
/// each wait is for what is left of the deadline: with blocking reads, a
/// client dripping a byte at a time would get a whole wait per byte and the
/// deadline would never be looked at.
fn within<T>(
    conn: &mut Connection,
    deadline: std::time::Instant,
    mut step: impl FnMut(&mut Connection) -> Result<Option<T>, Outcome>,
    timed_out: impl FnOnce(&mut Connection) -> Outcome,
) -> Result<T, Outcome> {
    let blocking = |conn: &Connection, on: bool| {
        conn.stream
            .socket
            .set_nonblocking(!on)
            .map_err(Outcome::Failed)
    };
    blocking(conn, false)?;
    let value = loop {
        if let Some(value) = step(conn)? {
            break value;
        }
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        if left.is_zero() {
            return Err(timed_out(conn));
        }
        wait_readable(&conn.stream.socket, left);
    };
    blocking(conn, true)?;
    Ok(value)
}

/// Waits until `socket` has bytes (or its end) or `wait` has passed.
#[cfg(unix)]
fn wait_readable(socket: &socket2::Socket, wait: std::time::Duration) {
    use std::os::fd::AsFd;
    crate::sys::poll::readable_within(socket.as_fd(), wait);
}

#[cfg(not(unix))]
fn wait_readable(_: &socket2::Socket, wait: std::time::Duration) {
    std::thread::sleep(wait.min(std::time::Duration::from_millis(10)));
}

/// `splice` (opt-in, `--splice`) is used only while at most this many
/// connections are open: with many busy ones it loses more to the copy loop
/// (more pipes, more page references in flight) than with one. README,
/// Performance, has the measured figures.
#[cfg(target_os = "linux")]
const SPLICE_MAX_ACTIVE: u64 = 8;

/// The rest of a connection that sends in bulk: `splice` on Linux when few
/// connections are open, unless disabled or data is being logged (logging
/// needs the bytes in user space); else the portable loop, large buffer.
fn bulk(metered: &mut Metered<'_>, ctx: &Context) -> io::Result<u64> {
    #[cfg(target_os = "linux")]
    if ctx.settings.splice
        && !ctx.settings.log_data
        && !metered.is_tls()
        && ctx
            .counters
            .active
            .load(std::sync::atomic::Ordering::Relaxed)
            <= SPLICE_MAX_ACTIVE
    {
        let (counters, activity) = (&ctx.counters, &metered.stream.activity);
        // What was received and is not yet written back, so that a spliced
        // connection is never reclaimed in mid-echo.
        let pending = std::cell::Cell::new(0usize);
        let spliced = crate::splice::echo(
            &metered.stream.socket,
            |n| {
                Counters::add(&counters.bytes_received, n as u64);
                activity.received();
                pending.set(pending.get() + n);
            },
            |n| {
                Counters::add(&counters.bytes_echoed, n as u64);
                activity.wrote();
                pending.set(pending.get() - n);
                if pending.get() == 0 {
                    activity.caught_up();
                }
            },
        );
        match spliced {
            Ok(crate::splice::Spliced::Finished(n)) => return Ok(n),
            // Plain reads take the urgent byte, and the rest.
            Ok(crate::splice::Spliced::AtUrgentMark(n)) => {
                let rest =
                    echo::echo_with_buffer(metered, &mut vec![0u8; echo::DEFAULT_BUFFER_SIZE])?;
                return Ok(n + rest);
            }
            // Nothing consumed yet: the portable loop takes over.
            Err((_, e)) if e.kind() == ErrorKind::Unsupported => {}
            Err((side, e)) => {
                metered.last_op = match side {
                    crate::splice::Side::Read => Op::Read,
                    crate::splice::Side::Write => Op::Write,
                };
                return Err(e);
            }
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = (ctx, ErrorKind::Unsupported, Op::Read);
    echo::echo_with_buffer(metered, &mut vec![0u8; echo::DEFAULT_BUFFER_SIZE])
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    /// Connection threads get the 64 KiB stack they are designed for (the
    /// headroom above the 16 KiB minimum is for panics and log formatting),
    /// as the thread itself sees it.
    #[test]
    fn connection_threads_have_a_64_kib_stack() {
        let size = super::connection_thread()
            .spawn(|| crate::sys::thread::current_stack_size().unwrap())
            .unwrap()
            .join()
            .unwrap();
        assert!(
            (64 << 10..=68 << 10).contains(&size),
            "stack of {size} bytes"
        );
    }
}
