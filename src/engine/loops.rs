//! What every kind of loop (event loops, io_uring loops) shares: how the
//! server reaches its loops. Each loop is a thread with an inbox of
//! [`Command`]s and a way to wake it ([`Wake`]: a mio `Waker`, or the
//! eventfd a ring keeps a read on); a new connection goes to the loop with
//! the fewest; shutdown nudges them all; dropping [`Loops`] stops and joins
//! every one. How a loop waits and serves is its engine's own business.

use crate::connection::Connection;
use std::io;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::Arc;
use std::thread::JoinHandle;

/// What a loop is asked to do.
pub(super) enum Command {
    /// Serve this connection from now on.
    Serve(Connection),
    /// Shutdown has shut down every connection's read side: each must see
    /// its end of file now (an event loop tries every connection once; a
    /// uring loop gives each that waits for a buffer its receive).
    Nudge,
    /// Close every connection left and end.
    Stop,
}

/// Wakes a loop from another thread.
pub(super) trait Wake {
    fn wake(&self) -> io::Result<()>;
}

/// The running loops of one kind and how to reach them.
#[derive(Debug)]
pub(super) struct Loops<W: Wake> {
    /// For the log line of a loop that panicked.
    kind: &'static str,
    loops: Vec<LoopHandle<W>>,
}

#[derive(Debug)]
struct LoopHandle<W> {
    inbox: Sender<Command>,
    waker: W,
    /// Connections this loop serves (or has been handed), to balance.
    load: Arc<AtomicUsize>,
    thread: Option<JoinHandle<()>>,
}

/// What a loop's thread keeps of its handle: its inbox and its load (which
/// it lowers as its connections close).
pub(super) struct LoopEnd {
    pub(super) commands: Receiver<Command>,
    pub(super) load: Arc<AtomicUsize>,
}

impl<W: Wake> Loops<W> {
    /// No loops yet; `kind` names them in the log ("an event loop").
    pub(super) fn new(kind: &'static str) -> Loops<W> {
        Loops {
            kind,
            loops: Vec::new(),
        }
    }

    /// Adds a loop: `start` is given the loop's end of its inbox and load
    /// and returns how to wake it and its thread. An error from `start`
    /// leaves the loops added so far, which dropping `self` stops.
    pub(super) fn add(
        &mut self,
        start: impl FnOnce(LoopEnd) -> io::Result<(W, JoinHandle<()>)>,
    ) -> io::Result<()> {
        let (inbox, commands) = mpsc::channel();
        let load = Arc::new(AtomicUsize::new(0));
        let (waker, thread) = start(LoopEnd {
            commands,
            load: Arc::clone(&load),
        })?;
        self.loops.push(LoopHandle {
            inbox,
            waker,
            load,
            thread: Some(thread),
        });
        Ok(())
    }

    /// Hands `conn` to the loop with the fewest connections. Gives it back
    /// if no loop can take it.
    // The connection comes back by value only when no loop can take it, a
    // rare path (the TLS session pointer took `Connection` past the lint's
    // size): not worth a box on every hand-over.
    #[allow(clippy::result_large_err)]
    pub(super) fn serve(&self, conn: Connection) -> Result<(), Connection> {
        let Some(target) = self.loops.iter().min_by_key(|l| l.load.load(Relaxed)) else {
            return Err(conn);
        };
        target.load.fetch_add(1, Relaxed);
        match target.inbox.send(Command::Serve(conn)) {
            Ok(()) => {
                // A failed wake-up leaves the connection waiting for the
                // loop's next event or tick, which bounds the wait.
                let _ = target.waker.wake();
                Ok(())
            }
            Err(mpsc::SendError(command)) => {
                target.load.fetch_sub(1, Relaxed);
                match command {
                    Command::Serve(conn) => Err(conn),
                    _ => Ok(()),
                }
            }
        }
    }

    /// Sends every loop `Nudge`.
    pub(super) fn nudge(&self) {
        self.tell_all(|| Command::Nudge);
    }

    fn tell_all(&self, command: impl Fn() -> Command) {
        for l in &self.loops {
            if l.inbox.send(command()).is_ok() {
                let _ = l.waker.wake();
            }
        }
    }

    /// Stops every loop and waits for its thread to end.
    pub(super) fn stop(&mut self) {
        self.tell_all(|| Command::Stop);
        for l in &mut self.loops {
            if let Some(thread) = l.thread.take() {
                if thread.join().is_err() {
                    log::error!("{} panicked", self.kind);
                }
            }
        }
    }

    /// The loads of the loops, in order (for tests).
    #[cfg(test)]
    pub(super) fn loads(&self) -> Vec<usize> {
        self.loops.iter().map(|l| l.load.load(Relaxed)).collect()
    }
}

impl<W: Wake> Drop for Loops<W> {
    /// Stops every loop (closing what connections are left) and joins it.
    fn drop(&mut self) {
        self.stop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicBool;
    use std::time::Duration;

    /// A loop that only counts its wake-ups and ends on `Stop`.
    #[derive(Debug, Clone)]
    struct Counted(Arc<AtomicUsize>);

    impl Wake for Counted {
        fn wake(&self) -> io::Result<()> {
            self.0.fetch_add(1, Relaxed);
            Ok(())
        }
    }

    fn start(loops: &mut Loops<Counted>, stopped: &Arc<AtomicBool>) -> Counted {
        let wakes = Counted(Arc::new(AtomicUsize::new(0)));
        let waker = wakes.clone();
        let stopped = Arc::clone(stopped);
        loops
            .add(move |end| {
                let thread = std::thread::spawn(move || {
                    while let Ok(command) = end.commands.recv_timeout(Duration::from_secs(10)) {
                        if let Command::Stop = command {
                            stopped.store(true, Relaxed);
                            return;
                        }
                    }
                });
                Ok((waker, thread))
            })
            .unwrap();
        wakes
    }

    /// Nudges reach every loop and wake it; dropping stops and joins each.
    #[test]
    fn nudges_reach_every_loop_and_dropping_stops_them() {
        let stopped = Arc::new(AtomicBool::new(false));
        let mut loops = Loops::new("a test loop");
        let a = start(&mut loops, &stopped);
        let b = start(&mut loops, &stopped);
        loops.nudge();
        assert_eq!((a.0.load(Relaxed), b.0.load(Relaxed)), (1, 1));
        drop(loops);
        assert!(stopped.load(Relaxed), "joined after Stop");
        assert_eq!((a.0.load(Relaxed), b.0.load(Relaxed)), (2, 2));
    }

    /// A loop that failed to start leaves the ones before it, stopped when
    /// the loops are dropped.
    #[test]
    fn a_loop_that_fails_to_start_is_not_added() {
        let stopped = Arc::new(AtomicBool::new(false));
        let mut loops = Loops::new("a test loop");
        start(&mut loops, &stopped);
        let failed = loops.add(|_| Err(io::Error::other("no")));
        assert!(failed.is_err());
        assert_eq!(loops.loads(), vec![0]);
        drop(loops);
        assert!(stopped.load(Relaxed));
    }
}
