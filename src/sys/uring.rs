//! io_uring for the uring engine, as safe types: [`Ring`] (one ring, its
//! ring of provided buffers, its wake-up eventfd) and the few operations
//! the engine submits. Every `unsafe` block of the engine is here.
//!
//! What keeps it sound: the kernel writes only into memory the [`Ring`]
//! owns (the provided buffers, the eventfd's landing pad) and reads only
//! from it (a send's bytes); Rust code sees a buffer only while the kernel
//! has handed it over and not been given it back ([`Ring::buffer`] checks);
//! and the ring counts every operation it submitted, so its `Drop` cancels
//! and waits for all of them before the memory is freed (and leaks the
//! memory rather than free it under an operation the kernel still runs).

use io_uring::{cqueue, opcode, squeue, types, IoUring};
use std::alloc::{self, Layout};
use std::fs::File;
use std::io::{self, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The `user_data` of the wake-up read; the engine's own values are below.
pub(crate) const WAKE: u64 = u64::MAX;

/// The `user_data` of the cancellations `Drop` submits.
const DROP_CANCEL: u64 = u64::MAX - 1;

/// The `user_data` of the no-op a new ring is tried with.
const PROBE: u64 = u64::MAX - 2;

/// `IORING_RECVSEND_POLL_FIRST` (linux/io_uring.h, 5.19): wait for the
/// socket to be readable before trying the receive.
const RECVSEND_POLL_FIRST: u16 = 1;

/// The one buffer group of a ring.
const GROUP: u16 = 0;

/// How long `Drop` waits for cancelled operations before it gives up and
/// leaks the memory they may still use.
const DROP_WAIT: Duration = Duration::from_secs(5);

/// One completed operation.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Completion {
    pub(crate) user_data: u64,
    /// The operation's result: a count, or a negated `errno`.
    pub(crate) result: i32,
    /// The provided buffer a receive filled (now the engine's to read,
    /// send from and recycle).
    pub(crate) buffer: Option<u16>,
}

/// An echo copied out of a provided buffer ([`Ring::spill`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Spill(usize);

/// Which setup flags the kernel took, for the debug log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Setup {
    /// `SINGLE_ISSUER | DEFER_TASKRUN`: completions run only when the loop
    /// asks for them (6.1).
    DeferTaskrun,
    /// `COOP_TASKRUN`: no interrupt per completion (5.19).
    CoopTaskrun,
    /// Neither.
    Plain,
}

/// Sets a ring builder's flags.
type SetupFlags = fn(&mut io_uring::Builder);

/// Wakes a ring's loop from any thread: writes its eventfd, which the
/// ring keeps a read on.
#[derive(Debug, Clone)]
pub(crate) struct Waker(Arc<File>);

impl Waker {
    pub(crate) fn wake(&self) -> io::Result<()> {
        // An eventfd adds the 8-byte value to its count; a full count
        // (2^64 - 2 wake-ups unread) would block, which cannot happen.
        (&*self.0).write_all(&1u64.to_ne_bytes())
    }
}

/// A ring, the provided buffers its receives select from, and its wake-up.
pub(crate) struct Ring {
    // Field order is drop order, after `Drop::drop` has waited: the ring
    // (its descriptor) before the memory it used.
    ring: IoUring,
    buffers: Buffers,
    /// Echoes copied out of a provided buffer, sent from here: see
    /// [`Ring::spill`]. Freed only once no send from them is in flight.
    spills: Vec<Option<Box<[u8]>>>,
    free_spills: Vec<usize>,
    wake: Arc<File>,
    /// Where the wake-up read lands; never read by us.
    wake_pad: NonNull<u64>,
    /// Operations submitted (or queued) whose last completion has not been
    /// taken.
    in_flight: usize,
    setup: Setup,
}

impl std::fmt::Debug for Ring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ring")
            .field("in_flight", &self.in_flight)
            .field("setup", &self.setup)
            .finish_non_exhaustive()
    }
}

/// Whether this process may use io_uring at all: `io_uring_setup` of a
/// tiny ring. Its error says why not (`EPERM`: disabled by the
/// `kernel.io_uring_disabled` sysctl or a seccomp filter; `ENOSYS`: no
/// io_uring in this kernel), and one no-op through it.
pub(crate) fn probe() -> io::Result<()> {
    #[cfg(test)]
    if let Some(errno) = tests::FORCED_SETUP_ERROR.with(std::cell::Cell::get) {
        return Err(io::Error::from_raw_os_error(errno));
    }
    round_trip(&mut IoUring::new(2)?)
}

/// A no-op submitted and waited for, the way the loops wait (with a
/// timeout: `IORING_ENTER_EXT_ARG`): a filter may allow setting a ring up
/// and still refuse `io_uring_enter`, or only that form of it (outside
/// attacks refused each: the loops started, and every connection handed
/// to them hung), so a ring counts as usable once something has gone
/// through it as the loops will send it.
fn round_trip(ring: &mut IoUring) -> io::Result<()> {
    let nop = opcode::Nop::new().build().user_data(PROBE);
    // SAFETY: a no-op names no memory.
    if unsafe { ring.submission().push(&nop) }.is_err() {
        return Err(io::Error::other("a new ring's submission queue is full"));
    }
    let ts = types::Timespec::from(Duration::from_secs(1));
    let args = types::SubmitArgs::new().timespec(&ts);
    ring.submitter().submit_with_args(1, &args)?;
    ring.completion().for_each(drop);
    Ok(())
}

/// Why this process cannot use io_uring, from the error `io_uring_setup`
/// (or a ring's set-up) failed with, in words for an operator.
pub(crate) fn refusal(e: &io::Error) -> String {
    match e.raw_os_error() {
        Some(libc::ENOSYS) => "this kernel has no io_uring".to_owned(),
        Some(libc::EPERM) => {
            let sysctl = std::fs::read_to_string("/proc/sys/kernel/io_uring_disabled")
                .ok()
                .and_then(|v| v.trim().parse::<u8>().ok())
                .filter(|&v| v > 0);
            match sysctl {
                Some(v) => format!("io_uring is disabled (kernel.io_uring_disabled = {v})"),
                None => "io_uring is not permitted to this process (a seccomp filter, such as \
                         a container runtime's, or kernel.io_uring_disabled)"
                    .to_owned(),
            }
        }
        // Rings of provided buffers came with 5.19.
        Some(libc::EINVAL) => {
            "this kernel's io_uring lacks what the engine needs (5.19 or later)".to_owned()
        }
        _ => "io_uring could not be set up".to_owned(),
    }
}

impl Ring {
    /// A ring of `entries` submission entries and `count` provided buffers
    /// of `size` bytes (`count` a power of two, at most 32768). Tries the
    /// cheapest completion mode first: deferred task work, then cooperative,
    /// then plain (older kernels refuse the flags they do not know).
    pub(crate) fn new(entries: u32, count: u16, size: usize) -> io::Result<Ring> {
        let attempts: [(Setup, SetupFlags); 3] = [
            (Setup::DeferTaskrun, |b| {
                b.setup_single_issuer().setup_defer_taskrun();
            }),
            (Setup::CoopTaskrun, |b| {
                b.setup_coop_taskrun();
            }),
            (Setup::Plain, |_| {}),
        ];
        let mut last = io::Error::other("no setup tried");
        let mut built = None;
        for (setup, flags) in attempts {
            let mut builder = IoUring::builder();
            flags(&mut builder);
            match builder.build(entries) {
                Ok(ring) => {
                    built = Some((ring, setup));
                    break;
                }
                Err(e) => last = e,
            }
        }
        let Some((mut ring, setup)) = built else {
            return Err(last);
        };
        round_trip(&mut ring)?;
        // Everything that can fail is made before the buffers are
        // registered: once they are, only `Ring::drop` frees them.
        let wake = Arc::new(File::from(eventfd()?));
        let buffers = Buffers::new(count, size)?;
        // SAFETY: `buffers.entries` is a page-aligned allocation of `count`
        // ring entries, which lives until `Drop` has unregistered it (or is
        // leaked); the kernel reads entries only up to the tail we publish.
        unsafe {
            ring.submitter().register_buf_ring_with_flags(
                buffers.entries.as_ptr() as u64,
                count,
                GROUP,
                0,
            )?;
        }
        let wake_pad = NonNull::from(Box::leak(Box::new(0u64)));
        let mut ring = Ring {
            ring,
            buffers,
            spills: Vec::new(),
            free_spills: Vec::new(),
            wake,
            wake_pad,
            in_flight: 0,
            setup,
        };
        for bid in 0..count {
            ring.buffers.give(bid);
        }
        ring.buffers.publish();
        Ok(ring)
    }

    pub(crate) fn setup(&self) -> Setup {
        self.setup
    }

    /// A handle that wakes this ring's loop.
    pub(crate) fn waker(&self) -> Waker {
        Waker(Arc::clone(&self.wake))
    }

    /// Operations whose last completion has not been taken.
    #[cfg(test)]
    pub(crate) fn in_flight(&self) -> usize {
        self.in_flight
    }

    /// Keeps a read on the wake-up eventfd: it completes (`WAKE`) once
    /// [`Waker::wake`] is called, and must then be submitted again.
    pub(crate) fn watch_wake(&mut self) -> io::Result<()> {
        let entry = opcode::Read::new(
            types::Fd(self.wake.as_raw_fd()),
            self.wake_pad.as_ptr().cast::<u8>(),
            8,
        )
        .build()
        .user_data(WAKE);
        // SAFETY: the read writes 8 bytes into `wake_pad`, an 8-byte
        // allocation the ring owns and frees only once no operation is in
        // flight (or leaks); the eventfd stays open as long as the ring.
        unsafe { self.push(&entry) }
    }

    /// Receives into a provided buffer (the kernel picks it when data
    /// arrives: an idle connection holds none). `ENOBUFS` if none is free
    /// when the receive is tried, which is at once, data or not, unless
    /// `poll_first`: then the kernel waits for data before it tries (and
    /// picks a buffer).
    pub(crate) fn recv(&mut self, fd: RawFd, poll_first: bool, user_data: u64) -> io::Result<()> {
        let ioprio = if poll_first { RECVSEND_POLL_FIRST } else { 0 };
        let entry = opcode::Recv::new(types::Fd(fd), std::ptr::null_mut(), self.buffers.size)
            .buf_group(GROUP)
            .ioprio(ioprio)
            .build()
            .flags(squeue::Flags::BUFFER_SELECT)
            .user_data(user_data);
        // SAFETY: no memory of ours is named: the kernel writes into a
        // provided buffer it took from the ring, which the ring owns.
        unsafe { self.push(&entry) }
    }

    /// Sends `buffer`'s bytes `from..to` (never raising SIGPIPE). The
    /// buffer must be one a receive handed over and not yet recycled.
    pub(crate) fn send(
        &mut self,
        fd: RawFd,
        buffer: u16,
        from: u32,
        to: u32,
        user_data: u64,
    ) -> io::Result<()> {
        let Some(ptr) = self.buffers.range(buffer, from, to) else {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "not a held buffer, or past its end",
            ));
        };
        // MSG_DONTWAIT: a socket that cannot take the bytes now fails the
        // send with EAGAIN instead of parking it (and its buffer, one of a
        // few shared by every connection of the loop) until the client
        // reads; the engine then spills the rest (see `spill`).
        let entry = opcode::Send::new(types::Fd(fd), ptr, to - from)
            .flags(libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT)
            .build()
            .user_data(user_data);
        // SAFETY: the kernel reads `to - from` bytes inside one provided
        // buffer (checked by `range`), memory the ring owns and frees only
        // once no operation is in flight (or leaks).
        unsafe { self.push(&entry) }
    }

    /// Copies `from..to` of a held buffer into memory of its own and gives
    /// the buffer back to the kernel: an echo whose client is not reading
    /// must not keep one of the loop's few shared buffers (64 stalled
    /// readers would starve every other connection of the loop). `None`
    /// if the buffer is not held or the range is past its end. Only when
    /// no send from the buffer is in flight.
    pub(crate) fn spill(&mut self, bid: u16, from: u32, to: u32) -> Option<Spill> {
        let ptr = self.buffers.range(bid, from, to)?;
        // SAFETY: `range` checked that the buffer is held (the kernel does
        // not write it until it is given back, below) and `from..to` inside.
        let bytes = unsafe { std::slice::from_raw_parts(ptr, (to - from) as usize) };
        let copy: Box<[u8]> = bytes.into();
        self.recycle(bid);
        let slot = match self.free_spills.pop() {
            Some(slot) => {
                self.spills[slot] = Some(copy);
                slot
            }
            None => {
                self.spills.push(Some(copy));
                self.spills.len() - 1
            }
        };
        Some(Spill(slot))
    }

    /// Submits the send of `from..` of a spill (waiting, in the kernel,
    /// until the socket takes it: the memory is this connection's alone).
    pub(crate) fn send_spill(
        &mut self,
        fd: RawFd,
        spill: Spill,
        from: u32,
        user_data: u64,
    ) -> io::Result<()> {
        let Some(Some(bytes)) = self.spills.get(spill.0) else {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "no such spill"));
        };
        let Some(rest) = bytes.get(from as usize..) else {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "past the spill's end",
            ));
        };
        let len = u32::try_from(rest.len()).unwrap_or(u32::MAX);
        let entry = opcode::Send::new(types::Fd(fd), rest.as_ptr(), len)
            .flags(libc::MSG_NOSIGNAL)
            .build()
            .user_data(user_data);
        // SAFETY: the kernel reads `len` bytes of a spill, memory the ring
        // owns and frees only in `drop_spill` (which the engine calls once
        // the send's completion is taken) or after every operation is
        // done (or leaks it).
        unsafe { self.push(&entry) }
    }

    /// Frees a spill. Only once no send from it is in flight.
    pub(crate) fn drop_spill(&mut self, spill: Spill) {
        if let Some(slot) = self.spills.get_mut(spill.0) {
            if slot.take().is_some() {
                self.free_spills.push(spill.0);
            }
        }
    }

    /// Bytes spilled and not yet freed (for tests).
    #[cfg(test)]
    pub(crate) fn spilled(&self) -> usize {
        self.spills.iter().flatten().map(|b| b.len()).sum()
    }

    /// Cancels every operation on `fd`; completes itself too.
    pub(crate) fn cancel(&mut self, fd: RawFd, user_data: u64) -> io::Result<()> {
        let entry = opcode::AsyncCancel2::new(types::CancelBuilder::fd(types::Fd(fd)).all())
            .build()
            .user_data(user_data);
        // SAFETY: a cancellation names no memory.
        unsafe { self.push(&entry) }
    }

    /// # Safety
    ///
    /// Whatever memory `entry` names must stay valid until its completion
    /// is taken: the ring owns it, and `Drop` waits for every operation.
    unsafe fn push(&mut self, entry: &squeue::Entry) -> io::Result<()> {
        // SAFETY: passed on from the caller.
        if unsafe { self.ring.submission().push(entry) }.is_err() {
            // Full: hand the queue to the kernel, which makes room.
            self.ring.submit()?;
            // SAFETY: as above.
            if unsafe { self.ring.submission().push(entry) }.is_err() {
                return Err(io::Error::from_raw_os_error(libc::EBUSY));
            }
        }
        self.in_flight += 1;
        Ok(())
    }

    /// Submits what is queued and waits for one completion at least, or
    /// until `timeout` (`Some(ZERO)`: only submits).
    pub(crate) fn wait(&mut self, timeout: Option<Duration>) -> io::Result<()> {
        let result = match timeout {
            None => self.ring.submit_and_wait(1),
            Some(t) if t.is_zero() => self.ring.submit(),
            Some(t) => {
                let ts = types::Timespec::from(t);
                let args = types::SubmitArgs::new().timespec(&ts);
                self.ring.submitter().submit_with_args(1, &args)
            }
        };
        match result {
            Ok(_) => Ok(()),
            // Timed out, interrupted, or completions to reap first.
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::ETIME | libc::EINTR | libc::EBUSY)
                ) =>
            {
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    /// Moves every completion waiting into `out`.
    pub(crate) fn complete(&mut self, out: &mut Vec<Completion>) {
        for cqe in self.ring.completion() {
            let flags = cqe.flags();
            if !cqueue::more(flags) {
                self.in_flight = self.in_flight.saturating_sub(1);
            }
            let buffer = cqueue::buffer_select(flags);
            if let Some(bid) = buffer {
                self.buffers.taken(bid);
            }
            out.push(Completion {
                user_data: cqe.user_data(),
                result: cqe.result(),
                buffer,
            });
        }
    }

    /// The first `len` bytes of a buffer a receive handed over, or `None`
    /// if the kernel has it (or `len` is past its end).
    pub(crate) fn buffer(&self, bid: u16, len: u32) -> Option<&[u8]> {
        let ptr = self.buffers.range(bid, 0, len)?;
        // SAFETY: `range` checked that the buffer is held (the kernel does
        // not write it until `recycle`, which takes `&mut self` and so
        // cannot run while this slice lives) and that `len` is inside it.
        Some(unsafe { std::slice::from_raw_parts(ptr, len as usize) })
    }

    /// Gives a buffer back to the kernel for the next receive. Only once no
    /// send from it is in flight: the engine recycles after the send's
    /// completion (a recycled buffer under a send would echo other bytes).
    pub(crate) fn recycle(&mut self, bid: u16) {
        if self.buffers.held(bid) {
            self.buffers.give(bid);
            self.buffers.publish();
        }
    }

    /// Buffers the kernel can receive into now.
    #[cfg(test)]
    pub(crate) fn free_buffers(&self) -> usize {
        self.buffers.held.iter().filter(|held| !**held).count()
    }
}

impl Drop for Ring {
    /// Cancels whatever is still in flight and waits for it, so that no
    /// operation outlives the memory it reads or writes; if the kernel does
    /// not finish in time, leaks that memory instead of freeing it.
    fn drop(&mut self) {
        if self.in_flight > 0 {
            let any = opcode::AsyncCancel2::new(types::CancelBuilder::any())
                .build()
                .user_data(DROP_CANCEL);
            // SAFETY: a cancellation names no memory.
            let _ = unsafe { self.push(&any) };
            let deadline = Instant::now() + DROP_WAIT;
            let mut sink = Vec::new();
            while self.in_flight > 0 && Instant::now() < deadline {
                if self.wait(Some(Duration::from_millis(50))).is_err() {
                    break;
                }
                sink.clear();
                self.complete(&mut sink);
            }
        }
        let unregistered = self.ring.submitter().unregister_buf_ring(GROUP).is_ok();
        if self.in_flight > 0 || !unregistered {
            log::error!(
                "io_uring: {} operations did not finish; leaking their buffers",
                self.in_flight
            );
            self.buffers.leak();
            // A send may still read a spill: leak those too.
            for spill in self.spills.drain(..).flatten() {
                Box::leak(spill);
            }
            return;
        }
        // SAFETY: allocated by `Box::new` in `new`, and no operation that
        // could write it is in flight any more.
        drop(unsafe { Box::from_raw(self.wake_pad.as_ptr()) });
    }
}

/// One entry of a ring of provided buffers (`struct io_uring_buf`); the
/// first entry's `tail` is the ring's tail, which the kernel reads.
#[repr(C)]
struct RawBuf {
    addr: u64,
    len: u32,
    bid: u16,
    tail: u16,
}

const _: () = assert!(std::mem::size_of::<RawBuf>() == 16);

/// The provided buffers: `count` entries the kernel takes buffers from, and
/// the memory of `count` buffers of `size` bytes.
struct Buffers {
    entries: NonNull<RawBuf>,
    data: NonNull<u8>,
    count: u16,
    size: u32,
    /// Entries added, as the kernel sees the tail (wrapping).
    tail: u16,
    /// Which buffers a completion handed over and are not recycled yet.
    held: Vec<bool>,
    leaked: bool,
}

impl Buffers {
    fn layouts(count: u16, size: usize) -> io::Result<(Layout, Layout)> {
        let invalid = |_| io::Error::new(io::ErrorKind::InvalidInput, "buffer ring too large");
        let entries = Layout::from_size_align(usize::from(count) * 16, 4096).map_err(invalid)?;
        let data = Layout::from_size_align(usize::from(count) * size, 4096).map_err(invalid)?;
        Ok((entries, data))
    }

    fn new(count: u16, size: usize) -> io::Result<Buffers> {
        if !count.is_power_of_two() || count > 32768 || size == 0 || u32::try_from(size).is_err() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "a power of two of buffers, at most 32768, of at most 4 GiB",
            ));
        }
        let (entries_layout, data_layout) = Buffers::layouts(count, size)?;
        // SAFETY: both layouts have a non-zero size (count and size are
        // non-zero); a null result is handled.
        let (entries, data) = unsafe {
            (
                alloc::alloc_zeroed(entries_layout),
                alloc::alloc(data_layout),
            )
        };
        let (Some(entries), Some(data)) = (NonNull::new(entries), NonNull::new(data)) else {
            alloc::handle_alloc_error(entries_layout);
        };
        Ok(Buffers {
            entries: entries.cast(),
            data,
            count,
            size: size as u32,
            tail: 0,
            held: vec![true; usize::from(count)],
            leaked: false,
        })
    }

    fn held(&self, bid: u16) -> bool {
        self.held.get(usize::from(bid)).copied().unwrap_or(false)
    }

    /// The kernel handed `bid` over with a completion.
    fn taken(&mut self, bid: u16) {
        if let Some(held) = self.held.get_mut(usize::from(bid)) {
            *held = true;
        }
    }

    /// A pointer to `from..to` of a held buffer.
    fn range(&self, bid: u16, from: u32, to: u32) -> Option<*const u8> {
        if !self.held(bid) || from > to || to > self.size {
            return None;
        }
        let offset = usize::from(bid) * self.size as usize + from as usize;
        // SAFETY: `bid < count` (held checked the index) and `from <= size`,
        // so the offset is inside the `count * size` allocation.
        Some(unsafe { self.data.as_ptr().add(offset) }.cast_const())
    }

    /// Writes `bid`'s entry at the tail (published by `publish`).
    fn give(&mut self, bid: u16) {
        let Some(held) = self.held.get_mut(usize::from(bid)) else {
            return;
        };
        *held = false;
        let slot = usize::from(self.tail & (self.count - 1));
        let addr = self.data.as_ptr() as u64 + u64::from(bid) * u64::from(self.size);
        // SAFETY: `slot < count`, inside the entries allocation. The kernel
        // reads entries only below the published tail, and this one is at
        // or past it: no one else touches these fields now. The `tail`
        // field (entry 0's is the ring's tail) is not written here.
        unsafe {
            let entry = self.entries.as_ptr().add(slot);
            std::ptr::addr_of_mut!((*entry).addr).write(addr);
            std::ptr::addr_of_mut!((*entry).len).write(self.size);
            std::ptr::addr_of_mut!((*entry).bid).write(bid);
        }
        self.tail = self.tail.wrapping_add(1);
    }

    /// Makes the entries given so far visible to the kernel.
    fn publish(&self) {
        // SAFETY: entry 0's `tail` is a 2-byte aligned u16 inside the
        // allocation, written only here (by us) and read by the kernel, so
        // an atomic view of it is sound; the release store orders the
        // entries written before it.
        unsafe {
            let tail = std::ptr::addr_of_mut!((*self.entries.as_ptr()).tail);
            AtomicU16::from_ptr(tail).store(self.tail, Ordering::Release);
        }
    }

    fn leak(&mut self) {
        self.leaked = true;
    }
}

impl Drop for Buffers {
    fn drop(&mut self) {
        if self.leaked {
            return;
        }
        let Ok((entries_layout, data_layout)) = Buffers::layouts(self.count, self.size as usize)
        else {
            return;
        };
        // SAFETY: allocated in `new` with these layouts; `Ring::drop` has
        // unregistered the ring and seen every operation complete, or set
        // `leaked`.
        unsafe {
            alloc::dealloc(self.entries.as_ptr().cast(), entries_layout);
            alloc::dealloc(self.data.as_ptr(), data_layout);
        }
    }
}

/// A new eventfd (close-on-exec, blocking: the ring's read of it waits in
/// the kernel's poll, not in a worker thread).
fn eventfd() -> io::Result<OwnedFd> {
    // SAFETY: eventfd takes no pointers; its result is checked.
    let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a descriptor just opened, owned by nothing else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::cell::Cell;

    thread_local! {
        /// The errno `probe` fails with on this thread, to test how a
        /// refused io_uring is reported.
        pub(crate) static FORCED_SETUP_ERROR: Cell<Option<i32>> = const { Cell::new(None) };
    }

    /// Runs `f` with `probe` failing with `errno` on this thread.
    pub(crate) fn with_setup_failing<T>(errno: i32, f: impl FnOnce() -> T) -> T {
        FORCED_SETUP_ERROR.with(|e| e.set(Some(errno)));
        let out = f();
        FORCED_SETUP_ERROR.with(|e| e.set(None));
        out
    }

    #[test]
    fn a_buffer_is_ours_only_between_its_completion_and_its_recycling() {
        let mut ring = Ring::new(8, 4, 64).unwrap();
        assert_eq!(ring.free_buffers(), 4);
        assert!(ring.buffer(0, 1).is_none(), "the kernel has it");
        let (mut a, b) = std::os::unix::net::UnixStream::pair().unwrap();
        a.write_all(b"ping").unwrap();
        ring.recv(b.as_raw_fd(), false, 7).unwrap();
        let mut out = Vec::new();
        while out.is_empty() {
            ring.wait(Some(Duration::from_secs(5))).unwrap();
            ring.complete(&mut out);
        }
        let c = out[0];
        assert_eq!((c.user_data, c.result), (7, 4));
        let bid = c.buffer.unwrap();
        assert_eq!(ring.buffer(bid, 4), Some(&b"ping"[..]));
        assert!(ring.buffer(bid, 65).is_none(), "past its end");
        assert_eq!(ring.free_buffers(), 3);
        ring.recycle(bid);
        assert!(ring.buffer(bid, 4).is_none());
        assert_eq!((ring.free_buffers(), ring.in_flight()), (4, 0));
    }

    #[test]
    fn dropping_a_ring_cancels_what_is_in_flight() {
        let mut ring = Ring::new(8, 4, 64).unwrap();
        let (_a, b) = std::os::unix::net::UnixStream::pair().unwrap();
        ring.recv(b.as_raw_fd(), false, 1).unwrap();
        ring.watch_wake().unwrap();
        ring.wait(Some(Duration::ZERO)).unwrap();
        assert_eq!(ring.in_flight(), 2);
        let started = Instant::now();
        drop(ring);
        assert!(started.elapsed() < DROP_WAIT, "cancelled, not waited out");
    }
}
