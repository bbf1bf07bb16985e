//! Shutdown: one flag, and the wake-ups that get every blocked thread to look
//! at it.
//!
//! Threads block in three places: `accept`/`recv_from` on a listener, waiting
//! for a free connection slot, and backing off after an error. Each place
//! registers a waker (or sleeps on the condition variable here), so a
//! shutdown request reaches all of them at once instead of after a poll
//! interval.

use crate::sync::{Condvar, Mutex, MutexGuard, PoisonError};
use std::fmt;
use std::time::{Duration, Instant};

/// How long a blocked `accept` or `recv` waits before looking at the
/// shutdown flag on its own. Shutdown normally wakes it at once (see
/// `StreamListener::waker`); this is the backstop for when that wake-up
/// cannot get through.
pub(crate) const POLL: Duration = Duration::from_secs(1);

/// `after` from now, or a year from now if that is later than the clock
/// can say (a library user's `Duration::MAX` means "no end" and must not
/// overflow).
pub(crate) fn deadline(after: Duration) -> Instant {
    const YEAR: Duration = Duration::from_secs(31_536_000);
    let now = Instant::now();
    now.checked_add(after).unwrap_or_else(|| now + YEAR)
}

type Waker = Box<dyn Fn() + Send + Sync>;

#[derive(Default)]
pub(crate) struct Shutdown {
    state: Mutex<State>,
    requested_cv: Condvar,
}

#[derive(Default)]
struct State {
    requested: bool,
    wakers: Vec<Waker>,
}

impl Shutdown {
    fn state(&self) -> MutexGuard<'_, State> {
        // A panic while holding this lock cannot leave `State` inconsistent
        // (a bool and a list), so poisoning is ignored.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn is_requested(&self) -> bool {
        self.state().requested
    }

    /// Sets the flag and runs every registered waker once. Idempotent.
    pub(crate) fn request(&self) {
        let wakers = {
            let mut state = self.state();
            if state.requested {
                return;
            }
            state.requested = true;
            std::mem::take(&mut state.wakers)
        };
        self.requested_cv.notify_all();
        // Outside the lock: a waker may block briefly (it connects to a
        // listener) and must not stall `is_requested` callers meanwhile.
        for wake in wakers {
            wake();
        }
    }

    /// Registers `wake` to run when shutdown is requested; runs it at once if
    /// it already was.
    pub(crate) fn on_request(&self, wake: impl Fn() + Send + Sync + 'static) {
        let mut state = self.state();
        if state.requested {
            drop(state);
            wake();
        } else {
            state.wakers.push(Box::new(wake));
        }
    }

    /// Sleeps for `duration` or until shutdown is requested, whichever comes
    /// first. Returns `true` if shutdown was requested.
    pub(crate) fn sleep(&self, duration: Duration) -> bool {
        let state = self.state();
        let (state, _) = self
            .requested_cv
            .wait_timeout_while(state, duration, |s| !s.requested)
            .unwrap_or_else(PoisonError::into_inner);
        state.requested
    }
}

impl fmt::Debug for Shutdown {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Shutdown")
            .field("requested", &self.is_requested())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::time::Instant;

    /// Debug output (as in a `ServerHandle` printed with `{:?}`) shows
    /// whether shutdown was requested.
    #[test]
    fn debug_shows_whether_it_was_requested() {
        let s = Shutdown::default();
        assert_eq!(format!("{s:?}"), "Shutdown { requested: false, .. }");
        s.request();
        assert_eq!(format!("{s:?}"), "Shutdown { requested: true, .. }");
    }

    #[test]
    fn wakers_run_once_and_late_ones_run_at_once() {
        let s = Shutdown::default();
        let hits = Arc::new(AtomicUsize::new(0));
        let h = hits.clone();
        s.on_request(move || {
            h.fetch_add(1, Ordering::SeqCst);
        });
        assert!(!s.is_requested());
        s.request();
        s.request();
        assert_eq!(hits.load(Ordering::SeqCst), 1);
        let h = hits.clone();
        s.on_request(move || {
            h.fetch_add(1, Ordering::SeqCst);
        });
        assert_eq!(hits.load(Ordering::SeqCst), 2);
    }

    #[test]
    fn sleep_is_cut_short_by_a_request() {
        let s = Arc::new(Shutdown::default());
        let s2 = s.clone();
        let start = Instant::now();
        let t = std::thread::spawn(move || s2.sleep(Duration::from_secs(60)));
        std::thread::sleep(Duration::from_millis(20));
        s.request();
        assert!(t.join().unwrap());
        assert!(start.elapsed() < Duration::from_secs(30));
        assert!(!Shutdown::default().sleep(Duration::from_millis(1)));
    }
}
