//! Which datagrams UDP answers: the loop and reflection filter on a
//! datagram's source, and the reasons a datagram is refused ([`Refusal`]),
//! which the rate limits and the counters name too.

use crate::address::normalize;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};

/// Why a datagram got no answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Refusal {
    /// From a privileged port (below 1024): answering could start an endless
    /// loop with another UDP service such as echo, chargen or daytime.
    PrivilegedPort,
    /// From a broadcast, multicast or unspecified address, or from the
    /// receiving socket's own address and port: no real host sends from
    /// those, so the source is forged (or the datagram is a reply that came
    /// back, which answered would loop forever).
    InvalidSource,
    /// The source's network has used up its rate limit.
    RateLimited,
    /// The server has used up its own reply budget (`--udp-total-rate`),
    /// whatever the source.
    TotalRateLimited,
    /// Larger than the configured maximum
    /// ([`udp_max_datagram`](crate::ServerBuilder::udp_max_datagram)):
    /// dropped whole, never echoed in part. (Counted as
    /// [`Stats::too_large`](crate::Stats::too_large).)
    TooLarge,
}

/// The loop and reflection filter: whether a datagram from `source` may be
/// answered. Refuses privileged source ports and broadcast, multicast and
/// unspecified source addresses, after [`normalize`].
///
/// # Examples
///
/// ```
/// use echo_server::udp::{check_source, Refusal};
/// assert_eq!(check_source("127.0.0.1:40000".parse().unwrap()), Ok(()));
/// assert_eq!(check_source("127.0.0.1:7".parse().unwrap()), Err(Refusal::PrivilegedPort));
/// assert_eq!(check_source("[::ffff:224.0.0.1]:40000".parse().unwrap()), Err(Refusal::InvalidSource));
/// ```
pub fn check_source(source: SocketAddr) -> Result<(), Refusal> {
    let source = normalize(source);
    let invalid = match source.ip() {
        IpAddr::V4(ip) => ip.is_unspecified() || ip.is_multicast() || ip == Ipv4Addr::BROADCAST,
        IpAddr::V6(ip) => ip.is_unspecified() || ip.is_multicast(),
    };
    if invalid {
        Err(Refusal::InvalidSource)
    } else if source.port() < 1024 {
        Err(Refusal::PrivilegedPort)
    } else {
        Ok(())
    }
}

/// Whether `source` is the very socket that received its datagram: the
/// socket's own port, at the address the datagram was sent to (`arrival`,
/// where known) or the address the socket is bound to. The socket never
/// sends anything but replies, so such a datagram is forged, or a reply
/// that came back: answering it would echo it to itself until the rate
/// limit ran dry. Bound to a wildcard address with no arrival address
/// known, any loopback address counts as its own.
pub(crate) fn is_own_address(
    source: SocketAddr,
    local: SocketAddr,
    arrival: Option<IpAddr>,
) -> bool {
    let (source, local) = (normalize(source), normalize(local));
    if source.port() != local.port() {
        return false;
    }
    let unmapped = |ip: IpAddr| normalize(SocketAddr::new(ip, 0)).ip();
    match arrival.map(unmapped) {
        Some(arrival) => source.ip() == arrival,
        None if local.ip().is_unspecified() => source.ip().is_loopback(),
        None => source.ip() == local.ip(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_datagram_from_the_socket_itself_is_told_apart() {
        let at = |s: &str| s.parse::<SocketAddr>().unwrap();
        let ip = |s: &str| Some(s.parse::<IpAddr>().unwrap());
        let bound = at("127.0.0.1:7007");
        assert!(is_own_address(at("127.0.0.1:7007"), bound, None));
        assert!(is_own_address(at("[::ffff:127.0.0.1]:7007"), bound, None));
        assert!(!is_own_address(at("127.0.0.1:7008"), bound, None));
        assert!(!is_own_address(at("127.0.0.2:7007"), bound, None));
        let wildcard = at("[::]:7007");
        assert!(is_own_address(
            at("10.0.0.5:7007"),
            wildcard,
            ip("10.0.0.5")
        ));
        assert!(is_own_address(
            at("10.0.0.5:7007"),
            wildcard,
            ip("::ffff:10.0.0.5")
        ));
        assert!(!is_own_address(
            at("10.0.0.6:7007"),
            wildcard,
            ip("10.0.0.5")
        ));
        assert!(is_own_address(at("[::1]:7007"), wildcard, None));
        assert!(!is_own_address(at("10.0.0.6:7007"), wildcard, None));
    }

    fn refusal(s: &str) -> Result<(), Refusal> {
        check_source(s.parse().unwrap())
    }

    #[test]
    fn source_filter() {
        assert_eq!(refusal("127.0.0.1:1024"), Ok(()));
        assert_eq!(refusal("[::1]:50000"), Ok(()));
        assert_eq!(refusal("127.0.0.1:1023"), Err(Refusal::PrivilegedPort));
        assert_eq!(refusal("127.0.0.1:0"), Err(Refusal::PrivilegedPort));
        assert_eq!(refusal("[::1]:19"), Err(Refusal::PrivilegedPort));
        assert_eq!(refusal("255.255.255.255:5000"), Err(Refusal::InvalidSource));
        assert_eq!(refusal("224.0.0.251:5353"), Err(Refusal::InvalidSource));
        assert_eq!(refusal("0.0.0.0:5000"), Err(Refusal::InvalidSource));
        assert_eq!(refusal("[ff02::1]:5000"), Err(Refusal::InvalidSource));
        assert_eq!(refusal("[::]:5000"), Err(Refusal::InvalidSource));
        assert_eq!(
            refusal("[::ffff:255.255.255.255]:5000"),
            Err(Refusal::InvalidSource)
        );
        assert_eq!(
            refusal("[::ffff:127.0.0.1]:7"),
            Err(Refusal::PrivilegedPort)
        );
        assert_eq!(refusal("[::ffff:127.0.0.1]:7007"), Ok(()));
    }

    #[test]
    fn normalize_unmaps_ipv4_mapped_addresses_only() {
        let n = |s: &str| normalize(s.parse().unwrap()).to_string();
        assert_eq!(n("[::ffff:10.1.2.3]:9"), "10.1.2.3:9");
        assert_eq!(n("[::1]:9"), "[::1]:9");
        assert_eq!(n("10.1.2.3:9"), "10.1.2.3:9");
    }
}
