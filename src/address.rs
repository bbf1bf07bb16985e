//! Addresses: where a listener listens ([`ListenAddr`]), who is on the other
//! end of a stream ([`Peer`]), and a client's address [`normalize`]d so that
//! IPv4 clients of a dual-stack socket count as IPv4 (the per-source cap,
//! the UDP filter and the UDP rate limit all key on normalized addresses).

use crate::escape::escape;
use socket2::SockAddr;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;

/// Where a listener listens. `Display` gives the form used in the startup
/// line, such as `tcp 127.0.0.1:7007`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ListenAddr {
    /// A TCP listener.
    Tcp(SocketAddr),
    /// A UDP socket.
    Udp(SocketAddr),
    /// A Unix stream socket at this path.
    Unix(PathBuf),
    /// A TCP listener whose clients speak TLS (feature `tls`).
    Tls(SocketAddr),
}

impl fmt::Display for ListenAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ListenAddr::Tcp(addr) => write!(f, "tcp {addr}"),
            ListenAddr::Udp(addr) => write!(f, "udp {addr}"),
            ListenAddr::Unix(path) => write!(f, "unix {}", path.display()),
            ListenAddr::Tls(addr) => write!(f, "tls {addr}"),
        }
    }
}

/// Who is on the other end, for logs.
#[derive(Debug, Clone)]
pub(crate) enum Peer {
    Ip(SocketAddr),
    Local(String),
}

impl Peer {
    pub(crate) fn from_sockaddr(addr: &SockAddr) -> Peer {
        if let Some(ip) = addr.as_socket() {
            return Peer::Ip(ip);
        }
        // A Unix client names its own socket, so its name is client bytes:
        // escaped like data, it can never forge a log line or move the
        // terminal's cursor.
        #[cfg(unix)]
        if let Some(path) = addr.as_pathname() {
            use std::os::unix::ffi::OsStrExt;
            return Peer::Local(escape(path.as_os_str().as_bytes()));
        }
        #[cfg(any(target_os = "linux", target_os = "android"))]
        if let Some(name) = addr.as_abstract_namespace() {
            return Peer::Local(format!("@{}", escape(name)));
        }
        Peer::Local("unix client".to_owned())
    }
}

impl fmt::Display for Peer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Peer::Ip(addr) => addr.fmt(f),
            Peer::Local(name) => f.write_str(name),
        }
    }
}

/// Rewrites an IPv4-mapped IPv6 address (`::ffff:a.b.c.d`) to plain IPv4, so
/// that a dual-stack socket judges IPv4 sources as IPv4.
pub fn normalize(addr: SocketAddr) -> SocketAddr {
    match addr {
        SocketAddr::V6(v6) => match v6.ip().to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(IpAddr::V4(v4), v6.port()),
            None => addr,
        },
        SocketAddr::V4(_) => addr,
    }
}

/// A network of IP addresses, `10.0.0.0/8` or `2001:db8::/32`; an address
/// alone is a network of one. A client's IPv4 address is also its
/// IPv4-mapped IPv6 one (`::ffff:10.1.2.3`), whichever way a dual-stack
/// socket reports it: `10.0.0.0/8`, `::ffff:10.0.0.0/104` and `::/0` all
/// contain it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Network {
    addr: IpAddr,
    prefix: u8,
}

impl Network {
    /// Whether `ip` lies in this network.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = normalize(SocketAddr::new(ip, 0)).ip();
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), ip) => {
                let ip = match ip {
                    IpAddr::V4(v4) => v4.to_ipv6_mapped(),
                    IpAddr::V6(v6) => v6,
                };
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            (IpAddr::V4(_), IpAddr::V6(_)) => false,
        }
    }
}

impl std::str::FromStr for Network {
    type Err = String;

    fn from_str(s: &str) -> Result<Network, String> {
        let usage = || format!("`{s}` is not an IP address or network (e.g. 10.0.0.0/8, ::1)");
        let (addr, prefix) = match s.split_once('/') {
            Some((addr, prefix)) => (addr, Some(prefix)),
            None => (s, None),
        };
        // As written: `::ffff:10.0.0.0/104` is an IPv6 network (which holds
        // the IPv4 clients of 10.0.0.0/8, see `contains`).
        let addr: IpAddr = addr.parse().map_err(|_| usage())?;
        let bits = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => bits,
            Some(p) if !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) => p
                .parse::<u8>()
                .ok()
                .filter(|&p| p <= bits)
                .ok_or_else(usage)?,
            Some(_) => return Err(usage()),
        };
        Ok(Network { addr, prefix })
    }
}

impl fmt::Display for Network {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// The address to connect to in order to reach a listener: a wildcard
/// address is reached through the loopback address of its family.
pub(crate) fn connectable(addr: SocketAddr) -> SocketAddr {
    match addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => (Ipv4Addr::LOCALHOST, addr.port()).into(),
        IpAddr::V6(ip) if ip.is_unspecified() => (Ipv6Addr::LOCALHOST, addr.port()).into(),
        _ => addr,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn networks_contain_their_addresses_and_no_others() {
        let net = |s: &str| s.parse::<Network>().unwrap();
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert!(net("10.0.0.0/8").contains(ip("10.255.1.2")));
        assert!(!net("10.0.0.0/8").contains(ip("11.0.0.1")));
        assert!(net("10.0.0.0/8").contains(ip("::ffff:10.1.1.1")), "mapped");
        assert!(
            net("::ffff:10.0.0.0/104").contains(ip("10.1.1.1")),
            "mapped network"
        );
        assert!(!net("::ffff:10.0.0.0/104").contains(ip("11.1.1.1")));
        assert!(net("::ffff:10.0.0.0/104").contains(ip("::ffff:10.9.9.9")));
        assert!(
            net("::ffff:0:0/96").contains(ip("203.0.113.1")),
            "every IPv4 client"
        );
        assert!(net("::/0").contains(ip("203.0.113.1")), "::/0 is everyone");
        assert!(!net("::ffff:0:0/96").contains(ip("2001:db8::1")));
        assert!(net("192.0.2.7").contains(ip("192.0.2.7")));
        assert!(!net("192.0.2.7").contains(ip("192.0.2.8")));
        assert!(net("0.0.0.0/0").contains(ip("203.0.113.9")));
        assert!(!net("0.0.0.0/0").contains(ip("::1")), "families apart");
        assert!(net("2001:db8::/32").contains(ip("2001:db8:ffff::1")));
        assert!(!net("2001:db8::/32").contains(ip("2001:db9::1")));
        assert!(net("::/0").contains(ip("::1")));
        assert!(net("::1").contains(ip("::1")) && !net("::1").contains(ip("::2")));
        assert!(net("10.0.0.1/31").contains(ip("10.0.0.0")));
        assert!(!net("10.0.0.1/31").contains(ip("10.0.0.2")));
        assert_eq!(net("10.0.0.0/8").to_string(), "10.0.0.0/8");
        assert_eq!(net("::1").to_string(), "::1/128");
        for bad in [
            "",
            "10.0.0.0/33",
            "::/129",
            "10.0.0.0/",
            "10.0.0.0/+8",
            "10.0.0/8",
            "host/8",
            "10.0.0.0/8/8",
        ] {
            assert!(bad.parse::<Network>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn wildcard_is_reached_through_loopback() {
        assert_eq!(
            connectable("0.0.0.0:7".parse().unwrap()),
            "127.0.0.1:7".parse().unwrap()
        );
        assert_eq!(
            connectable("[::]:7".parse().unwrap()),
            "[::1]:7".parse().unwrap()
        );
        assert_eq!(
            connectable("10.0.0.1:7".parse().unwrap()),
            "10.0.0.1:7".parse().unwrap()
        );
        assert_eq!(
            connectable("[fd00::1]:7".parse().unwrap()),
            "[fd00::1]:7".parse().unwrap()
        );
    }

    #[test]
    fn listen_addr_display_matches_the_startup_line() {
        assert_eq!(
            ListenAddr::Tcp("127.0.0.1:40123".parse().unwrap()).to_string(),
            "tcp 127.0.0.1:40123"
        );
        assert_eq!(
            ListenAddr::Udp("[::1]:7".parse().unwrap()).to_string(),
            "udp [::1]:7"
        );
        assert_eq!(
            ListenAddr::Unix("/tmp/e.sock".into()).to_string(),
            "unix /tmp/e.sock"
        );
    }
}
