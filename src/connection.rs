//! One connection's life, whatever engine serves it: admitted by an accept
//! loop (holding a slot of the connection limit, maybe one of its source's,
//! and listed in the connection table), served by an engine, and closed in
//! an order that keeps the limits exact.

use crate::address::Peer;
use crate::context::Context;
use crate::limit::{Permit, Seat, SourceSlot};
use crate::stats::Counters;
use crate::stream::{Metered, Op, Stream};
use socket2::Socket;
use std::io;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;

/// An accepted stream connection and everything it holds.
///
/// Dropping it closes the socket and only then frees its slots, so the
/// connection limit also bounds open file descriptors (and threads).
pub(crate) struct Connection {
    // Field order is drop order: our reference to the socket first, then
    // the slot, which removes the table's (last) reference, closing the
    // socket, before it frees the permits.
    pub(crate) stream: Arc<Stream>,
    pub(crate) peer: Peer,
    slot: Slot,
}

struct Slot {
    id: u64,
    ctx: Arc<Context>,
    /// The engine serving it, once placed (counted per engine).
    placement: Option<Placement>,
    seat: Option<Seat>,
    _source_slot: Option<SourceSlot>,
    _permit: Permit,
}

/// How a connection ended.
#[derive(Debug)]
pub(crate) enum Outcome {
    /// The client shut down its side and got everything back.
    Finished(u64),
    /// A blocking operation timed out: idle when reading, a stalled reader
    /// when writing.
    TimedOut(Op),
    /// Reset, broken pipe, or another error of the stream.
    Failed(io::Error),
}

impl Connection {
    /// Lists a freshly accepted socket in the connection table.
    pub(crate) fn admit(
        socket: Socket,
        peer: Peer,
        ctx: &Arc<Context>,
        permit: Permit,
        source_slot: Option<SourceSlot>,
    ) -> Connection {
        let stream = Arc::new(Stream::new(socket));
        let id = ctx.table.insert(Arc::clone(&stream), &ctx.counters);
        Connection {
            stream,
            peer,
            slot: Slot {
                id,
                ctx: Arc::clone(ctx),
                placement: None,
                seat: None,
                _source_slot: source_slot,
                _permit: permit,
            },
        }
    }

    pub(crate) fn ctx(&self) -> &Arc<Context> {
        &self.slot.ctx
    }

    /// Its key in the connection table.
    pub(crate) fn id(&self) -> u64 {
        self.slot.id
    }

    /// Served by its own thread, on `seat`.
    pub(crate) fn place_on_thread(&mut self, seat: Seat) {
        self.slot.seat = Some(seat);
        self.slot.place(Placement::Thread);
    }

    /// Not on the thread it was placed on after all (the OS refused one).
    pub(crate) fn unplaced(mut self) -> Connection {
        if let Some(placement) = self.slot.placement.take() {
            Counters::sub(self.slot.gauge(placement), 1);
        }
        self.slot.seat = None;
        self
    }

    /// Served by an event loop.
    pub(crate) fn place_on_event_loop(&mut self) {
        self.slot.place(Placement::EventLoop);
    }

    /// Served by an io_uring loop.
    #[cfg(all(target_os = "linux", feature = "uring"))]
    pub(crate) fn place_on_uring(&mut self) {
        self.slot.place(Placement::Uring);
    }

    /// The stream as the echo core sees it.
    pub(crate) fn metered(&self) -> Metered<'_> {
        let ctx = &self.slot.ctx;
        Metered {
            stream: &self.stream,
            counters: &ctx.counters,
            faults: &ctx.faults,
            log_data: ctx.settings.log_data,
            peer: &self.peer,
            last_op: Op::Read,
        }
    }

    /// Ends the connection: counts and logs how, and closes it.
    pub(crate) fn close(self, outcome: Outcome) {
        let ctx = &self.slot.ctx;
        let peer = &self.peer;
        match outcome {
            // Everything read has been written back: closing (which
            // follows, when `self` is dropped) sends the client our FIN. No
            // `shutdown(Write)` first: the receive queue is empty after end
            // of file, so the close cannot turn into a reset, and the call
            // would cost a system call per connection.
            Outcome::Finished(n) => {
                log::debug!(peer:% = peer, bytes = n, reason = "done"; "{peer}: closed after echoing {n} bytes")
            }
            Outcome::TimedOut(Op::Read) => {
                Counters::add(&ctx.counters.idle_timeouts, 1);
                log::debug!(peer:% = peer, reason = "idle_timeout"; "{peer}: idle timeout, closing");
            }
            Outcome::TimedOut(Op::Write) => {
                Counters::add(&ctx.counters.write_timeouts, 1);
                log::debug!(
                    peer:% = peer, reason = "write_timeout";
                    "{peer}: not reading its echo (write timeout), closing"
                );
            }
            Outcome::Failed(e) if crate::stream::is_vanished(&e) => {
                Counters::add(&ctx.counters.keepalive_closed, 1);
                log::debug!(
                    peer:% = peer, reason = "keepalive";
                    "{peer}: vanished (no answer to keepalive), closing"
                );
            }
            // Resets and broken pipes are the client's business; not worth
            // more than a debug line.
            Outcome::Failed(e) => log::debug!(peer:% = peer, reason:% = e; "{peer}: {e}"),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Placement {
    Thread,
    EventLoop,
    /// (Never constructed without the uring engine; the gauge is kept.)
    #[cfg_attr(not(all(target_os = "linux", feature = "uring")), allow(dead_code))]
    Uring,
}

impl Slot {
    fn place(&mut self, placement: Placement) {
        debug_assert!(self.placement.is_none(), "a connection never moves");
        self.placement = Some(placement);
        Counters::add(self.gauge(placement), 1);
    }

    /// The live count of connections on `placement`'s engine.
    fn gauge(&self, placement: Placement) -> &AtomicU64 {
        let counters = &self.ctx.counters;
        match placement {
            Placement::Thread => &counters.active_threads,
            Placement::EventLoop => &counters.active_events,
            Placement::Uring => &counters.active_uring,
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        // The connection's own reference to the socket is gone by now; this
        // drops the table's, closing it.
        self.ctx.table.remove(self.id, &self.ctx.counters);
        if let Some(placement) = self.placement {
            Counters::sub(self.gauge(placement), 1);
        }
        // `seat`, `_source_slot` and `_permit` are dropped after this,
        // freeing the slots last.
    }
}
