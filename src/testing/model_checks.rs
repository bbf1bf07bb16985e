//! Model checks of the synchronisation (docs/model-checking.md). Shuttle
//! runs each scenario below under thousands of thread schedules, random and
//! PCT, on the production types: `src/sync.rs` swaps in shuttle's mutex,
//! condition variable and atomics. Built only with `--cfg shuttle`:
//!
//! ```text
//! RUSTFLAGS="--cfg shuttle" CARGO_TARGET_DIR=target/shuttle cargo test --lib model_checks
//! ```
//!
//! Every thread here blocks without a timeout as far as shuttle is
//! concerned (its timed waits never time out), so a lost wake-up shows as
//! a deadlock, which shuttle reports with the schedule that led to it.

use crate::limit::{ConnectionLimit, SourceCap, ThreadSeats};
use crate::shutdown::Shutdown;
use crate::stats::Counters;
use crate::stream::Stream;
use crate::table::ConnectionTable;
use shuttle::scheduler::{PctScheduler, RandomScheduler};
use shuttle::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use shuttle::{thread, Config, Runner};
use socket2::{Domain, Socket, Type};
use std::sync::Arc;
use std::time::Duration;

/// Longer than any check runs: a wait that needs it is a lost wake-up.
const FOREVER: Duration = Duration::from_secs(3600);

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Runs `f` under `MODEL_ITERATIONS` (default 5000) uniformly random
/// schedules and as many PCT schedules of depth 3 (likely to hit any bug
/// that needs up to two preemptions at the wrong places), both seeded with
/// `MODEL_SEED` (default 1) so that a run is repeatable.
fn check(f: impl Fn() + Send + Sync + 'static) {
    let iterations = usize::try_from(env("MODEL_ITERATIONS", 5000)).unwrap_or(usize::MAX);
    let seed = env("MODEL_SEED", 1);
    let mut config = Config::new();
    // The warning says that shuttle runs every atomic as `SeqCst`; see
    // docs/model-checking.md for what that leaves unchecked.
    config.silence_warnings = true;
    let f = Arc::new(f);
    let g = Arc::clone(&f);
    Runner::new(
        RandomScheduler::new_from_seed(seed, iterations),
        config.clone(),
    )
    .run(move || g());
    Runner::new(PctScheduler::new_from_seed(seed, 3, iterations), config).run(move || f());
}

#[test]
fn limit_never_exceeds_max_and_a_freed_slot_wakes_a_waiter() {
    check(|| {
        const MAX: usize = 2;
        let shutdown = Shutdown::default();
        let limit = ConnectionLimit::new(MAX, &shutdown);
        let holding = AtomicUsize::new(0);
        thread::scope(|s| {
            for i in 0..3 {
                let (shutdown, limit, holding) = (&shutdown, &limit, &holding);
                s.spawn(move || {
                    for _ in 0..2 {
                        let permit = if i == 0 {
                            // The accept loop's form: a timed wait that ticks.
                            let tick = Some((Duration::from_millis(1), || ()));
                            limit.acquire_or(shutdown, || (), tick)
                        } else {
                            limit.acquire(shutdown, || ())
                        }
                        .expect("no shutdown was requested");
                        let now = holding.fetch_add(1, SeqCst) + 1;
                        assert!(now <= MAX, "{now} permits held at once, max {MAX}");
                        assert!(limit.in_use() <= MAX);
                        thread::yield_now();
                        holding.fetch_sub(1, SeqCst);
                        drop(permit);
                    }
                });
            }
        });
        assert_eq!(limit.in_use(), 0);
    });
}

#[test]
fn shutdown_releases_every_waiter() {
    check(|| {
        let shutdown = Shutdown::default();
        let limit = ConnectionLimit::new(1, &shutdown);
        // Held throughout: only the shutdown can end the waits.
        let held = limit.acquire(&shutdown, || ()).unwrap();
        thread::scope(|s| {
            let waiters = [
                s.spawn(|| limit.acquire(&shutdown, || ()).is_none()),
                s.spawn(|| {
                    let tick = Some((Duration::from_millis(1), || ()));
                    limit.acquire_or(&shutdown, || (), tick).is_none()
                }),
            ];
            s.spawn(|| shutdown.request());
            for waiter in waiters {
                assert!(waiter.join().unwrap(), "a waiter got a slot never freed");
            }
        });
        assert!(limit.acquire(&shutdown, || ()).is_none());
        drop(held);
        assert_eq!(limit.in_use(), 0);
    });
}

#[test]
fn waiters_end_when_a_slot_is_freed_during_shutdown() {
    check(|| {
        let shutdown = Shutdown::default();
        let limit = ConnectionLimit::new(1, &shutdown);
        let held = limit.acquire(&shutdown, || ()).unwrap();
        thread::scope(|s| {
            for _ in 0..2 {
                // Either outcome is right; ending at all is the point.
                s.spawn(|| drop(limit.acquire(&shutdown, || ())));
            }
            s.spawn(|| shutdown.request());
            s.spawn(move || drop(held));
        });
        assert_eq!(limit.in_use(), 0);
        assert!(limit.acquire(&shutdown, || ()).is_none());
    });
}

#[test]
fn thread_seats_never_exceed_max() {
    check(|| {
        const MAX: usize = 2;
        let seats = ThreadSeats::new(MAX);
        let seated = AtomicUsize::new(0);
        thread::scope(|s| {
            for _ in 0..3 {
                s.spawn(|| {
                    for _ in 0..2 {
                        if let Some(seat) = seats.try_take() {
                            let now = seated.fetch_add(1, SeqCst) + 1;
                            assert!(now <= MAX, "{now} seats taken at once, max {MAX}");
                            assert!(seats.taken() <= MAX);
                            thread::yield_now();
                            seated.fetch_sub(1, SeqCst);
                            drop(seat);
                        }
                    }
                });
            }
        });
        assert_eq!(seats.taken(), 0);
        assert!(seats.try_take().is_some());
    });
}

#[test]
fn source_cap_never_exceeds_its_cap() {
    check(|| {
        const MAX: usize = 2;
        let cap = SourceCap::new(MAX);
        let ip: std::net::IpAddr = [192, 0, 2, 1].into();
        let admitted = AtomicUsize::new(0);
        thread::scope(|s| {
            for _ in 0..3 {
                s.spawn(|| {
                    for _ in 0..2 {
                        if let Some(slot) = cap.admit(ip) {
                            let now = admitted.fetch_add(1, SeqCst) + 1;
                            assert!(now <= MAX, "{now} connections from one source, cap {MAX}");
                            thread::yield_now();
                            admitted.fetch_sub(1, SeqCst);
                            drop(slot);
                        }
                    }
                });
            }
        });
        // Every slot was given back: the source has its whole cap again.
        let slots: Vec<_> = (0..MAX)
            .map(|_| cap.admit(ip).expect("a free slot"))
            .collect();
        assert!(cap.admit(ip).is_none());
        drop(slots);
    });
}

#[test]
fn a_waker_runs_exactly_once_whenever_it_is_registered() {
    check(|| {
        let shutdown = Arc::new(Shutdown::default());
        let hits: Arc<[AtomicUsize; 2]> = Arc::new([AtomicUsize::new(0), AtomicUsize::new(0)]);
        thread::scope(|s| {
            for i in 0..2 {
                let (shutdown, hits) = (&shutdown, Arc::clone(&hits));
                s.spawn(move || {
                    shutdown.on_request(move || {
                        hits[i].fetch_add(1, SeqCst);
                    });
                });
            }
            // Two requests, racing each other: `request` is idempotent.
            for _ in 0..2 {
                s.spawn(|| shutdown.request());
            }
        });
        assert!(shutdown.is_requested());
        for (i, hit) in hits.iter().enumerate() {
            assert_eq!(
                hit.load(SeqCst),
                1,
                "waker {i} ran {} times",
                hit.load(SeqCst)
            );
        }
    });
}

#[test]
fn sleep_returns_once_shutdown_is_requested() {
    check(|| {
        let shutdown = Shutdown::default();
        thread::scope(|s| {
            let sleepers = [
                s.spawn(|| shutdown.sleep(FOREVER)),
                s.spawn(|| shutdown.sleep(FOREVER)),
            ];
            s.spawn(|| shutdown.request());
            for sleeper in sleepers {
                assert!(sleeper.join().unwrap(), "a sleep ended without the request");
            }
        });
    });
}

fn stream() -> Arc<Stream> {
    // Never connected: the table only shuts it down, which then fails
    // harmlessly, as it does for a peer already gone.
    let socket = Socket::new(Domain::IPV4, Type::STREAM, None).expect("a socket");
    Arc::new(Stream::new(socket))
}

#[test]
fn table_is_empty_exactly_when_no_connection_is_live() {
    check(|| {
        let table = ConnectionTable::default();
        let counters = Counters::default();
        // In the table before the hand-over, as `Connection::admit` does.
        let ids = [
            table.insert(stream(), &counters),
            table.insert(stream(), &counters),
        ];
        thread::scope(|s| {
            for (i, id) in ids.into_iter().enumerate() {
                let (table, counters) = (&table, &counters);
                s.spawn(move || {
                    if i == 0 {
                        // Another connection comes and goes meanwhile.
                        let other = table.insert(stream(), counters);
                        table.remove(other, counters);
                    }
                    table.remove(id, counters);
                });
            }
            s.spawn(|| {
                for _ in 0..2 {
                    let (live, active) = table.live_and_active(&counters);
                    assert_eq!(live as u64, active, "`active` disagrees with the table");
                    table.shutdown_all(std::net::Shutdown::Read);
                    table.reclaim_idlest(Duration::ZERO);
                }
            });
            for _ in 0..2 {
                s.spawn(|| {
                    assert!(table.wait_until_empty(FOREVER));
                    assert_eq!(table.live_and_active(&counters), (0, 0));
                });
            }
        });
        table.reap();
        assert_eq!(table.unjoined(), 0);
    });
}
