//! The UDP rate limit: a token bucket per source network, and one for the
//! whole server, so the server cannot be turned into a traffic source of
//! any size against a forged victim, nor against a victim's network by
//! forging many of its addresses.
//!
//! Each datagram costs its length plus [`DATAGRAM_OVERHEAD`], so floods of
//! empty datagrams are limited too. A datagram is answered only if both its
//! network's bucket and the server's have the tokens; then both pay. The
//! defaults answer ordinary bursts in full (hundreds of datagrams, megabytes)
//! and only slow sustained floods.

use crate::datagram_filter::Refusal;
use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::Instant;

/// Sustained rate per source network, in bytes per second, unless configured.
pub const DEFAULT_UDP_RATE: u64 = 1 << 20;
/// Burst per source network, in bytes, unless configured.
pub const DEFAULT_UDP_BURST: u64 = 8 << 20;
/// Sustained reply rate of the whole server, in bytes per second, unless
/// configured: 16 networks at their full rate at once (about 134 Mbit/s).
/// A reflector is worth what it can send; this bounds what a flood of
/// forged sources from any number of networks can make the server send
/// anyone, while no test a person runs by hand (one network: 1 MiB/s at
/// most) comes near it.
pub const DEFAULT_UDP_TOTAL_RATE: u64 = 16 << 20;
/// Burst of the whole server, in bytes, unless configured: eight networks'
/// bursts at once.
pub const DEFAULT_UDP_TOTAL_BURST: u64 = 64 << 20;
/// What a datagram costs beyond its payload (headers, per-packet work).
pub(crate) const DATAGRAM_OVERHEAD: u64 = 64;
/// Source networks tracked at once. Past this, the oldest entry is evicted
/// for a new network, which takes over its bucket (see [`NetworkBuckets`]).
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

impl RateLimit {
    /// The server-wide default: [`DEFAULT_UDP_TOTAL_RATE`] with a
    /// [`DEFAULT_UDP_TOTAL_BURST`] burst.
    pub fn total_default() -> RateLimit {
        RateLimit {
            rate: DEFAULT_UDP_TOTAL_RATE,
            burst: DEFAULT_UDP_TOTAL_BURST,
        }
    }
}

/// What one datagram of `len` bytes costs in tokens.
pub(crate) fn cost(len: usize) -> u64 {
    len as u64 + DATAGRAM_OVERHEAD
}

/// The source networks that share one budget: every IPv4 source in the same
/// `/v4` prefix, every IPv6 source in the same `/v6` prefix. An attacker
/// forging sources usually owns, or targets, a whole network, not one
/// address: one address of a /24 or of a /56 (what one IPv6 site is given)
/// is the unit that matters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SourcePrefix {
    /// IPv4 prefix length, 0 to 32.
    pub v4: u8,
    /// IPv6 prefix length, 0 to 128.
    pub v6: u8,
}

impl Default for SourcePrefix {
    /// /24 for IPv4, /56 for IPv6.
    fn default() -> Self {
        SourcePrefix { v4: 24, v6: 56 }
    }
}

impl SourcePrefix {
    /// Whether both lengths are in range.
    pub fn is_valid(self) -> bool {
        self.v4 <= 32 && self.v6 <= 128
    }

    /// The network `source` belongs to: its address with the bits past the
    /// prefix cleared. IPv4-mapped IPv6 addresses count as IPv4, so a
    /// dual-stack socket cannot give an IPv4 network a second budget.
    ///
    /// # Examples
    ///
    /// ```
    /// use echo_server::SourcePrefix;
    /// let p = SourcePrefix::default();
    /// assert_eq!(p.network("10.1.2.3".parse().unwrap()).to_string(), "10.1.2.0");
    /// assert_eq!(p.network("::ffff:10.1.2.3".parse().unwrap()).to_string(), "10.1.2.0");
    /// assert_eq!(p.network("2001:db8:1:2ff::1".parse().unwrap()).to_string(), "2001:db8:1:200::");
    /// ```
    pub fn network(self, source: IpAddr) -> IpAddr {
        match source {
            IpAddr::V4(v4) => IpAddr::V4(self.v4_network(v4)),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => IpAddr::V4(self.v4_network(v4)),
                None => {
                    // checked_shl: a shift by the full width (/0) clears all.
                    let host_bits = 128 - u32::from(self.v6.min(128));
                    let mask = u128::MAX.checked_shl(host_bits).unwrap_or(0);
                    IpAddr::V6(Ipv6Addr::from(u128::from(v6) & mask))
                }
            },
        }
    }

    fn v4_network(self, v4: Ipv4Addr) -> Ipv4Addr {
        let host_bits = 32 - u32::from(self.v4.min(32));
        let mask = u32::MAX.checked_shl(host_bits).unwrap_or(0);
        Ipv4Addr::from(u32::from(v4) & mask)
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

    /// Whether `cost` tokens are there now (refilled first); takes none.
    fn has(&mut self, limit: RateLimit, cost: u64, now: Instant) -> bool {
        self.refill(limit, now);
        self.tokens >= cost as f64
    }
}

/// The buckets of the source networks the server has heard from, at most
/// [`MAX_SOURCES`].
///
/// When the table is full, a new network evicts the oldest entry and starts
/// with that entry's tokens (refilled to now), never with a full bucket:
/// admitting a network never adds tokens to the table. A source rotating
/// through more networks than the table holds (or getting its own drained
/// entry evicted, to come back fresh) therefore earns nothing beyond what
/// the entries it displaces would have earned where they were; an entry
/// that sat idle long enough to refill hands over a full bucket, just as a
/// fresh one would have been. Evicting in insertion order keeps this O(1)
/// per datagram, even under a flood of new sources.
#[derive(Debug)]
struct NetworkBuckets {
    limit: RateLimit,
    buckets: HashMap<IpAddr, Bucket>,
    /// Every key of `buckets`, once, oldest first.
    order: VecDeque<IpAddr>,
    capacity: usize,
}

impl NetworkBuckets {
    fn new(limit: RateLimit, capacity: usize) -> NetworkBuckets {
        NetworkBuckets {
            limit,
            buckets: HashMap::new(),
            order: VecDeque::new(),
            capacity: capacity.max(1),
        }
    }

    /// The bucket of `network`, admitted if new.
    fn bucket(&mut self, network: IpAddr, now: Instant) -> &mut Bucket {
        if !self.buckets.contains_key(&network) {
            let mut start = Bucket::full(self.limit, now);
            if self.buckets.len() >= self.capacity {
                if let Some(mut evicted) = self
                    .order
                    .pop_front()
                    .and_then(|old| self.buckets.remove(&old))
                {
                    evicted.refill(self.limit, now);
                    start = evicted;
                }
            }
            self.order.push_back(network);
            self.buckets.insert(network, start);
        }
        // Inserted just above when missing.
        self.buckets
            .entry(network)
            .or_insert_with(|| Bucket::full(self.limit, now))
    }
}

/// The UDP rate limit of one server: the per-network buckets and the
/// server-wide one. One per server, behind a lock every UDP thread takes
/// once per batch, only to judge it.
#[derive(Debug)]
pub(crate) struct UdpLimiter {
    prefix: SourcePrefix,
    networks: Option<NetworkBuckets>,
    total: Option<(RateLimit, Bucket)>,
}

impl UdpLimiter {
    /// A limiter with either limit or both; `None` if neither is on.
    pub(crate) fn new(
        per_network: Option<RateLimit>,
        total: Option<RateLimit>,
        prefix: SourcePrefix,
        now: Instant,
    ) -> Option<UdpLimiter> {
        UdpLimiter::with_capacity(per_network, total, prefix, now, MAX_SOURCES)
    }

    fn with_capacity(
        per_network: Option<RateLimit>,
        total: Option<RateLimit>,
        prefix: SourcePrefix,
        now: Instant,
        capacity: usize,
    ) -> Option<UdpLimiter> {
        if per_network.is_none() && total.is_none() {
            return None;
        }
        Some(UdpLimiter {
            prefix,
            networks: per_network.map(|limit| NetworkBuckets::new(limit, capacity)),
            total: total.map(|limit| (limit, Bucket::full(limit, now))),
        })
    }

    /// Whether a datagram of `len` bytes from `source` may be answered now;
    /// if so its cost is taken from its network's bucket and the server's.
    /// A datagram refused by either costs nothing, so one limit never
    /// spends the other's tokens on a datagram that is not answered. Over
    /// both, the network's limit is the reason given.
    pub(crate) fn judge(
        &mut self,
        source: IpAddr,
        len: usize,
        now: Instant,
    ) -> Result<(), Refusal> {
        let cost = cost(len);
        let network = self.prefix.network(source);
        let mut own = match &mut self.networks {
            Some(networks) => {
                let limit = networks.limit;
                let bucket = networks.bucket(network, now);
                if !bucket.has(limit, cost, now) {
                    return Err(Refusal::RateLimited);
                }
                Some(bucket)
            }
            None => None,
        };
        if let Some((limit, bucket)) = &mut self.total {
            if !bucket.has(*limit, cost, now) {
                return Err(Refusal::TotalRateLimited);
            }
            bucket.tokens -= cost as f64;
        }
        if let Some(bucket) = own.as_mut() {
            bucket.tokens -= cost as f64;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    const A: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1));
    /// In A's /24.
    const A2: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));
    /// Another /24.
    const B: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 1, 2));
    const DOC: IpAddr = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 77));

    fn per_network(limit: RateLimit) -> UdpLimiter {
        UdpLimiter::new(Some(limit), None, SourcePrefix::default(), Instant::now())
            .expect("a limit is on")
    }

    fn ok(l: &mut UdpLimiter, source: IpAddr, len: usize, now: Instant) -> bool {
        l.judge(source, len, now).is_ok()
    }

    /// The `i`th IPv4 /24: 0.0.0.0, 0.0.1.0, …
    fn net(i: u32) -> IpAddr {
        IpAddr::from((i << 8).to_be_bytes())
    }

    #[test]
    fn prefix_keys() {
        let p = SourcePrefix::default();
        let key = |s: &str| p.network(s.parse().unwrap()).to_string();
        assert_eq!(key("192.0.2.77"), "192.0.2.0");
        assert_eq!(
            key("::ffff:192.0.2.77"),
            "192.0.2.0",
            "mapped counts as IPv4"
        );
        assert_eq!(key("2001:db8:aa:bbcc:1::9"), "2001:db8:aa:bb00::");
        let exact = SourcePrefix { v4: 32, v6: 128 };
        assert_eq!(exact.network("192.0.2.77".parse().unwrap()), DOC);
        assert_eq!(
            exact.network("::ffff:192.0.2.77".parse().unwrap()),
            DOC,
            "mapped counts as IPv4 at /32 too"
        );
        let v6: IpAddr = "2001:db8::1:2:3".parse().unwrap();
        assert_eq!(exact.network(v6), v6);
        let all = SourcePrefix { v4: 0, v6: 0 };
        assert_eq!(all.network(A).to_string(), "0.0.0.0");
        assert_eq!(all.network(v6).to_string(), "::");
        let odd = SourcePrefix { v4: 9, v6: 1 };
        assert_eq!(
            odd.network("10.255.1.1".parse().unwrap()).to_string(),
            "10.128.0.0"
        );
        assert_eq!(
            odd.network("ffff::1".parse().unwrap()).to_string(),
            "8000::"
        );
        assert!(SourcePrefix::default().is_valid());
        assert!(!SourcePrefix { v4: 33, v6: 0 }.is_valid());
        assert!(!SourcePrefix { v4: 0, v6: 129 }.is_valid());
        assert!(SourcePrefix { v4: 32, v6: 128 }.is_valid());
    }

    #[test]
    fn burst_then_refill_at_the_rate() {
        let limit = RateLimit {
            rate: 1000,
            burst: 10 * (100 + DATAGRAM_OVERHEAD),
        };
        let mut l = per_network(limit);
        let t0 = Instant::now();
        let answered = (0..20).filter(|_| ok(&mut l, A, 100, t0)).count();
        assert_eq!(answered, 10, "the burst, then nothing");
        assert!(!ok(&mut l, A2, 100, t0), "A2 shares A's /24");
        // Another network has its own bucket.
        assert!(ok(&mut l, B, 100, t0));
        // 164 bytes cost; at 1000 B/s that takes 164 ms to earn back.
        assert!(!ok(&mut l, A, 100, t0 + Duration::from_millis(100)));
        assert!(ok(&mut l, A2, 100, t0 + Duration::from_millis(400)));
    }

    /// 100 addresses of one /24 get one budget between them; at /32 each
    /// gets its own.
    #[test]
    fn a_network_shares_one_budget_unless_the_prefix_is_the_address() {
        let limit = RateLimit {
            rate: 1,
            burst: 10 * DATAGRAM_OVERHEAD,
        };
        let now = Instant::now();
        let sources = || (10..110u8).map(|i| IpAddr::from([127, 0, 0, i]));
        let mut l = per_network(limit);
        assert_eq!(sources().filter(|&s| ok(&mut l, s, 0, now)).count(), 10);
        let exact = SourcePrefix { v4: 32, v6: 128 };
        let mut l = UdpLimiter::new(Some(limit), None, exact, now).unwrap();
        assert_eq!(sources().filter(|&s| ok(&mut l, s, 0, now)).count(), 100);
    }

    #[test]
    fn defaults_answer_a_few_hundred_datagrams_and_a_few_megabytes() {
        let now = Instant::now();
        let mut l = UdpLimiter::new(
            Some(RateLimit::default()),
            Some(RateLimit::total_default()),
            SourcePrefix::default(),
            now,
        )
        .unwrap();
        assert!((0..500).all(|_| ok(&mut l, A, 64, now)));
        assert!((0..100).all(|_| ok(&mut l, B, 60_000, now)), "6 MB burst");
    }

    /// The server-wide bucket caps the sum over networks: each network
    /// below its own limit, the total over it. A datagram it refuses costs
    /// its network nothing, and is counted under its own reason.
    #[test]
    fn the_total_ceiling_caps_the_sum_over_networks() {
        let own = RateLimit {
            rate: 1,
            burst: 10 * DATAGRAM_OVERHEAD,
        };
        let total = RateLimit {
            rate: 1000,
            burst: 25 * DATAGRAM_OVERHEAD,
        };
        let t0 = Instant::now();
        let mut l = UdpLimiter::new(Some(own), Some(total), SourcePrefix::default(), t0).unwrap();
        let mut verdicts = Vec::new();
        for i in 0..10 {
            for _ in 0..5 {
                verdicts.push(l.judge(net(i), 0, t0));
            }
        }
        let count = |r: Result<(), Refusal>| verdicts.iter().filter(|&&v| v == r).count();
        assert_eq!(count(Ok(())), 25, "the total burst, over 10 networks");
        assert_eq!(count(Err(Refusal::TotalRateLimited)), 25);
        // Network 9 was refused by the total only: its own burst is intact
        // once the total has refilled (64 tokens at 1000 B/s: 64 ms).
        let later = t0 + Duration::from_millis(100);
        assert!(l.judge(net(9), 0, later).is_ok());
        // Over both limits, the network's own is the reason.
        let mut l = UdpLimiter::new(Some(own), Some(total), SourcePrefix::default(), t0).unwrap();
        for _ in 0..10 {
            assert!(l.judge(A, 0, t0).is_ok());
        }
        assert_eq!(l.judge(A, 0, t0), Err(Refusal::RateLimited));
        // The total alone.
        let mut l = UdpLimiter::new(None, Some(total), SourcePrefix::default(), t0).unwrap();
        let answered = (0..100).filter(|&i| ok(&mut l, net(i), 0, t0)).count();
        assert_eq!(answered, 25);
        assert!(UdpLimiter::new(None, None, SourcePrefix::default(), t0).is_none());
    }

    /// Rotation is no way out. With the table full of drained networks,
    /// neither fresh networks nor a drained one that got itself evicted
    /// are answered at that instant: each starts with the evicted entry's
    /// (empty) bucket, where a fresh bucket would have given a burst each.
    /// Over time, rotating through fresh networks earns what the displaced
    /// entries refilled, never more: exactly what staying on the networks
    /// of the table would have earned.
    #[test]
    fn rotating_through_networks_is_no_better_than_staying() {
        const CAPACITY: usize = 64;
        let limit = RateLimit {
            rate: 640,
            burst: 10 * DATAGRAM_OVERHEAD,
        };
        let t0 = Instant::now();
        let new = || {
            UdpLimiter::with_capacity(Some(limit), None, SourcePrefix::default(), t0, CAPACITY)
                .unwrap()
        };
        let drain = |l: &mut UdpLimiter, range: std::ops::Range<u32>, at: Instant| -> usize {
            let mut n = 0;
            for i in range {
                while ok(l, net(i), 0, at) {
                    n += 1;
                }
            }
            n
        };
        // Staying: the table's networks drained at t0, then each earns its
        // refill, 10 datagrams per second.
        let mut staying = new();
        assert_eq!(drain(&mut staying, 0..CAPACITY as u32, t0), 10 * CAPACITY);
        // Rotating: the same start, then fresh networks only.
        let mut rotating = new();
        drain(&mut rotating, 0..CAPACITY as u32, t0);
        assert_eq!(drain(&mut rotating, 1000..11_000, t0), 0, "fresh at t0");
        assert_eq!(drain(&mut rotating, 0..1, t0), 0, "evicted, back at t0");
        assert_eq!(
            rotating.networks.as_ref().map(|n| n.buckets.len()),
            Some(CAPACITY),
            "memory stays bounded"
        );
        let mut rotating = new();
        drain(&mut rotating, 0..CAPACITY as u32, t0);
        for second in 1..=3u32 {
            let at = t0 + Duration::from_secs(u64::from(second));
            let stayed = drain(&mut staying, 0..CAPACITY as u32, at);
            let fresh = 100_000 * second;
            let rotated = drain(&mut rotating, fresh..fresh + 10 * CAPACITY as u32, at);
            assert_eq!(stayed, 10 * CAPACITY, "second {second}");
            assert!(
                rotated <= stayed,
                "second {second}: rotating got {rotated}, staying {stayed}"
            );
        }
    }

    /// An entry that sat idle until full hands over a full bucket: a new
    /// network is then served as if the table had room (the ordinary case
    /// for a long-running server whose table filled over days).
    #[test]
    fn an_idle_entry_hands_a_full_bucket_to_a_new_network() {
        let limit = RateLimit {
            rate: 1000,
            burst: 10 * DATAGRAM_OVERHEAD,
        };
        let t0 = Instant::now();
        let mut l =
            UdpLimiter::with_capacity(Some(limit), None, SourcePrefix::default(), t0, 4).unwrap();
        for i in 0..4 {
            assert!(ok(&mut l, net(i), 0, t0));
        }
        let later = t0 + Duration::from_secs(3600);
        let answered = (0..20).filter(|_| ok(&mut l, B, 0, later)).count();
        assert_eq!(answered, 10, "a full burst");
        // The oldest entry went; the others are still there.
        let networks = l.networks.as_ref().unwrap();
        assert!(!networks.buckets.contains_key(&net(0)));
        assert!(networks.buckets.contains_key(&net(1)));
        assert_eq!(networks.order.len(), 4);
    }
}
