//! Per-source rate limit for UDP: a token bucket per source address, so the
//! server cannot be turned into a traffic source against a spoofed victim.
//!
//! Each datagram costs its length plus [`DATAGRAM_OVERHEAD`], so floods of
//! empty datagrams are limited too. The defaults answer ordinary bursts in
//! full (hundreds of datagrams, megabytes) and only slow sustained floods.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::Instant;

/// Sustained rate per source, in bytes per second, unless configured.
pub const DEFAULT_UDP_RATE: u64 = 1 << 20;
/// Burst per source, in bytes, unless configured.
pub const DEFAULT_UDP_BURST: u64 = 8 << 20;
/// What a datagram costs beyond its payload (headers, per-packet work).
pub(crate) const DATAGRAM_OVERHEAD: u64 = 64;
/// Sources tracked at once. Past this, idle sources are forgotten; if every
/// one is busy (a spoofed-source flood), new sources share one bucket.
const MAX_SOURCES: usize = 16_384;

/// A token bucket's settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit {
    /// Bytes per second added to each bucket.
    pub rate: u64,
    /// Bucket size: the most a source can send at once after being quiet.
    pub burst: u64,
}

impl Default for RateLimit {
    fn default() -> Self {
        RateLimit {
            rate: DEFAULT_UDP_RATE,
            burst: DEFAULT_UDP_BURST,
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    last: Instant,
}

impl Bucket {
    fn full(limit: RateLimit, now: Instant) -> Bucket {
        Bucket {
            tokens: limit.burst as f64,
            last: now,
        }
    }

    fn refill(&mut self, limit: RateLimit, now: Instant) {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + elapsed * limit.rate as f64).min(limit.burst as f64);
        self.last = now;
    }

    fn take(&mut self, limit: RateLimit, cost: u64, now: Instant) -> bool {
        self.refill(limit, now);
        if self.tokens >= cost as f64 {
            self.tokens -= cost as f64;
            true
        } else {
            false
        }
    }
}

/// The buckets of every source the server's UDP sockets have heard from.
/// One per server, behind a lock every UDP thread takes once per batch.
#[derive(Debug)]
pub(crate) struct SourceBuckets {
    limit: RateLimit,
    sources: HashMap<IpAddr, Bucket>,
    overflow: Option<Bucket>,
}

impl SourceBuckets {
    pub(crate) fn new(limit: RateLimit) -> SourceBuckets {
        SourceBuckets {
            limit,
            sources: HashMap::new(),
            overflow: None,
        }
    }

    /// Whether a datagram of `len` bytes from `source` may be answered now.
    pub(crate) fn allow(&mut self, source: IpAddr, len: usize, now: Instant) -> bool {
        let cost = len as u64 + DATAGRAM_OVERHEAD;
        let limit = self.limit;
        if !self.sources.contains_key(&source) && self.sources.len() >= MAX_SOURCES {
            // Forget sources whose bucket has refilled: they are as good as new.
            self.sources.retain(|_, b| {
                b.refill(limit, now);
                b.tokens < limit.burst as f64
            });
            if self.sources.len() >= MAX_SOURCES {
                return self
                    .overflow
                    .get_or_insert_with(|| Bucket::full(limit, now))
                    .take(limit, cost, now);
            }
        }
        self.sources
            .entry(source)
            .or_insert_with(|| Bucket::full(limit, now))
            .take(limit, cost, now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    const A: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, 1));
    const B: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, 2));

    /// A table with `MAX_SOURCES` sources (0.0.0.0, 0.0.0.1, …), each
    /// answered once at `now`.
    fn full_table(limit: RateLimit, now: Instant) -> SourceBuckets {
        let mut buckets = SourceBuckets::new(limit);
        for i in 0..MAX_SOURCES as u32 {
            assert!(buckets.allow(IpAddr::from(i.to_be_bytes()), 0, now));
        }
        buckets
    }

    #[test]
    fn burst_then_refill_at_the_rate() {
        let limit = RateLimit {
            rate: 1000,
            burst: 10 * (100 + DATAGRAM_OVERHEAD),
        };
        let mut buckets = SourceBuckets::new(limit);
        let t0 = Instant::now();
        let answered = (0..20).filter(|_| buckets.allow(A, 100, t0)).count();
        assert_eq!(answered, 10, "the burst, then nothing");
        // Another source has its own bucket.
        assert!(buckets.allow(B, 100, t0));
        // 164 bytes cost; at 1000 B/s that takes 164 ms to earn back.
        assert!(!buckets.allow(A, 100, t0 + Duration::from_millis(100)));
        assert!(buckets.allow(A, 100, t0 + Duration::from_millis(400)));
    }

    #[test]
    fn defaults_answer_a_few_hundred_datagrams_and_a_few_megabytes() {
        let mut buckets = SourceBuckets::new(RateLimit::default());
        let now = Instant::now();
        assert!((0..500).all(|_| buckets.allow(A, 64, now)));
        assert!(
            (0..100).all(|_| buckets.allow(B, 60_000, now)),
            "6 MB burst"
        );
    }

    /// A full table forgets the sources whose bucket has refilled: a new
    /// source then gets a bucket of its own, not the overflow's.
    #[test]
    fn refilled_sources_make_room_for_new_ones() {
        let limit = RateLimit {
            rate: 1000,
            burst: 10 * DATAGRAM_OVERHEAD,
        };
        let t0 = Instant::now();
        let mut buckets = full_table(limit, t0);
        // Long enough for every bucket to be full again.
        let later = t0 + Duration::from_secs(3600);
        assert!(buckets.allow(B, 0, later));
        assert_eq!(buckets.sources.len(), 1, "only the new source is left");
        assert!(buckets.overflow.is_none(), "the overflow bucket was used");
    }

    #[test]
    fn a_flood_of_new_sources_shares_one_bucket() {
        let limit = RateLimit {
            rate: 0,
            burst: 10 * DATAGRAM_OVERHEAD,
        };
        let now = Instant::now();
        let mut buckets = full_table(limit, now);
        let extra = (0..100u32)
            .filter(|i| buckets.allow(IpAddr::from((u32::MAX - i).to_be_bytes()), 0, now))
            .count();
        assert_eq!(extra, 10, "overflow sources share one burst");
        assert_eq!(buckets.sources.len(), MAX_SOURCES, "memory stays bounded");
        // A source the table knows keeps its own bucket (9 of 10 left),
        // full table or not: the overflow bucket is empty by now.
        let known = IpAddr::from(0u32.to_be_bytes());
        assert!(
            buckets.allow(known, 0, now),
            "a known source was sent to the overflow"
        );
    }
}
