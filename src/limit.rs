//! The connection limits: at most `max` connections are served at once,
//! optionally at most `per_source` from one IP address, and at most so many
//! of them on their own thread.
//!
//! The accept loop takes a [`Permit`] once a client is waiting and *before*
//! calling `accept`, so when every slot is taken the server simply stops
//! accepting: new clients wait in the kernel's listen backlog and are served,
//! in order, as slots free up. Nothing is refused and nothing is lost.

use crate::shutdown::Shutdown;
use crate::sync::{Arc, AtomicUsize, Condvar, Mutex, MutexGuard, PoisonError};
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::Ordering::{AcqRel, Acquire};
use std::time::Duration;

#[derive(Debug)]
pub(crate) struct ConnectionLimit {
    max: usize,
    in_use: Mutex<usize>,
    freed: Condvar,
}

/// One connection slot; dropping it frees the slot.
#[derive(Debug)]
pub(crate) struct Permit {
    limit: Arc<ConnectionLimit>,
}

impl ConnectionLimit {
    /// A limit of `max` slots, woken by `shutdown` so that an accept loop
    /// waiting for a slot notices the request at once.
    pub(crate) fn new(max: usize, shutdown: &Shutdown) -> Arc<Self> {
        let limit = Arc::new(ConnectionLimit {
            max,
            in_use: Mutex::new(0),
            freed: Condvar::new(),
        });
        let weak = Arc::downgrade(&limit);
        shutdown.on_request(move || {
            if let Some(limit) = weak.upgrade() {
                // Taking the lock orders this notification after any waiter's
                // check of the flag, so the wake-up cannot be lost.
                let _guard = limit.lock();
                limit.freed.notify_all();
            }
        });
        limit
    }

    fn lock(&self) -> MutexGuard<'_, usize> {
        // The guarded value is a plain counter, always consistent.
        self.in_use.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Waits for a free slot. Returns `None` once shutdown is requested.
    /// `on_wait` runs once if the limit was reached and it had to wait.
    #[cfg(test)]
    pub(crate) fn acquire(
        self: &Arc<Self>,
        shutdown: &Shutdown,
        on_wait: impl FnOnce(),
    ) -> Option<Permit> {
        self.acquire_or(shutdown, on_wait, None::<(Duration, fn())>)
    }

    /// [`acquire`](Self::acquire), and while it waits, runs `every.1` each
    /// `every.0` (outside the lock): the accept loop reclaims idle slots
    /// there.
    pub(crate) fn acquire_or(
        self: &Arc<Self>,
        shutdown: &Shutdown,
        on_wait: impl FnOnce(),
        mut every: Option<(Duration, impl FnMut())>,
    ) -> Option<Permit> {
        let mut in_use = self.lock();
        let mut on_wait = Some(on_wait);
        loop {
            if shutdown.is_requested() {
                return None;
            }
            if *in_use < self.max {
                *in_use += 1;
                return Some(Permit {
                    limit: Arc::clone(self),
                });
            }
            if let Some(f) = on_wait.take() {
                f();
            }
            in_use = match &mut every {
                None => self
                    .freed
                    .wait(in_use)
                    .unwrap_or_else(PoisonError::into_inner),
                Some((period, tick)) => {
                    let (guard, timeout) = self
                        .freed
                        .wait_timeout(in_use, *period)
                        .unwrap_or_else(PoisonError::into_inner);
                    if timeout.timed_out() {
                        drop(guard);
                        tick();
                        self.lock()
                    } else {
                        guard
                    }
                }
            };
        }
    }

    /// Slots currently held.
    #[cfg(test)]
    pub(crate) fn in_use(&self) -> usize {
        *self.lock()
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        let mut in_use = self.limit.lock();
        *in_use -= 1;
        drop(in_use);
        self.limit.freed.notify_one();
    }
}

/// Connections per source IP address. A client over the cap is closed at
/// once: unlike the global limit it cannot wait in the backlog, because its
/// address is only known after `accept`.
#[derive(Debug)]
pub(crate) struct SourceCap {
    max: usize,
    counts: Mutex<HashMap<IpAddr, usize>>,
}

/// One connection counted against its source; dropping it uncounts it.
#[derive(Debug)]
pub(crate) struct SourceSlot {
    cap: Arc<SourceCap>,
    ip: IpAddr,
}

impl SourceCap {
    pub(crate) fn new(max: usize) -> Arc<SourceCap> {
        Arc::new(SourceCap {
            max,
            counts: Mutex::new(HashMap::new()),
        })
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<IpAddr, usize>> {
        // Every update leaves the map consistent.
        self.counts.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Counts a connection from `ip`, or returns `None` if `ip` is at its cap.
    pub(crate) fn admit(self: &Arc<Self>, ip: IpAddr) -> Option<SourceSlot> {
        let mut counts = self.lock();
        let count = counts.entry(ip).or_insert(0);
        if *count >= self.max {
            return None;
        }
        *count += 1;
        Some(SourceSlot {
            cap: Arc::clone(self),
            ip,
        })
    }
}

impl Drop for SourceSlot {
    fn drop(&mut self) {
        let mut counts = self.cap.lock();
        if let Some(count) = counts.get_mut(&self.ip) {
            *count -= 1;
            if *count == 0 {
                // Keeps the map as small as the set of connected sources.
                counts.remove(&self.ip);
            }
        }
    }
}

/// Seats for connection threads: how many connections may have a thread of
/// their own. Unlike [`ConnectionLimit`] nobody waits for a seat; a
/// connection that finds none is served another way (an event loop).
#[derive(Debug)]
pub(crate) struct ThreadSeats {
    max: usize,
    taken: AtomicUsize,
}

/// A connection's seat on a thread; dropping it frees the seat.
#[derive(Debug)]
pub(crate) struct Seat {
    seats: Arc<ThreadSeats>,
}

impl ThreadSeats {
    pub(crate) fn new(max: usize) -> Arc<ThreadSeats> {
        Arc::new(ThreadSeats {
            max,
            taken: AtomicUsize::new(0),
        })
    }

    /// Takes a seat if one is free. A compare-and-swap loop, so that two
    /// accept loops can never take more than `max` between them.
    pub(crate) fn try_take(self: &Arc<Self>) -> Option<Seat> {
        self.taken
            .fetch_update(AcqRel, Acquire, |n| (n < self.max).then_some(n + 1))
            .ok()
            .map(|_| Seat {
                seats: Arc::clone(self),
            })
    }

    /// Seats taken now.
    #[cfg(test)]
    pub(crate) fn taken(&self) -> usize {
        self.taken.load(Acquire)
    }
}

impl Drop for Seat {
    fn drop(&mut self) {
        self.seats.taken.fetch_sub(1, AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;

    #[test]
    fn blocks_at_max_until_a_permit_is_dropped() {
        let shutdown = Arc::new(Shutdown::default());
        let limit = ConnectionLimit::new(2, &shutdown);
        let a = limit.acquire(&shutdown, || panic!("no wait")).unwrap();
        let _b = limit.acquire(&shutdown, || panic!("no wait")).unwrap();
        assert_eq!(limit.in_use(), 2);
        let (tx, rx) = mpsc::channel();
        let (l, s) = (limit.clone(), shutdown.clone());
        let waiter = std::thread::spawn(move || {
            let waited = std::cell::Cell::new(false);
            let p = l.acquire(&s, || waited.set(true));
            assert!(waited.get());
            tx.send(p.is_some()).unwrap();
            p
        });
        assert!(rx.recv_timeout(Duration::from_millis(100)).is_err());
        drop(a);
        assert_eq!(rx.recv_timeout(Duration::from_secs(30)), Ok(true));
        let third = waiter.join().unwrap();
        assert_eq!(limit.in_use(), 2);
        drop(third);
        assert_eq!(limit.in_use(), 1);
    }

    #[test]
    fn shutdown_releases_a_waiter() {
        let shutdown = Arc::new(Shutdown::default());
        let limit = ConnectionLimit::new(1, &shutdown);
        let _held = limit.acquire(&shutdown, || ()).unwrap();
        let (l, s) = (limit.clone(), shutdown.clone());
        let waiter = std::thread::spawn(move || l.acquire(&s, || ()).is_none());
        std::thread::sleep(Duration::from_millis(20));
        shutdown.request();
        assert!(waiter.join().unwrap());
    }

    #[test]
    fn source_cap_counts_per_address_and_forgets_idle_ones() {
        let cap = SourceCap::new(2);
        let a: IpAddr = [127, 0, 0, 1].into();
        let b: IpAddr = [127, 0, 0, 2].into();
        let a1 = cap.admit(a).unwrap();
        let _a2 = cap.admit(a).unwrap();
        assert!(cap.admit(a).is_none(), "third from the same address");
        let b1 = cap.admit(b).unwrap();
        drop(a1);
        assert!(cap.admit(a).is_some());
        drop(b1);
        assert!(!cap.lock().contains_key(&b), "idle sources are forgotten");
    }

    #[test]
    fn thread_seats_never_exceed_max_and_free_on_drop() {
        let seats = ThreadSeats::new(2);
        let a = seats.try_take().unwrap();
        let _b = seats.try_take().unwrap();
        assert!(seats.try_take().is_none());
        assert_eq!(seats.taken(), 2);
        drop(a);
        assert!(seats.try_take().is_some());
        assert!(ThreadSeats::new(0).try_take().is_none());
    }
}
