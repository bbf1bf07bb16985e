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
}

impl fmt::Display for ListenAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ListenAddr::Tcp(addr) => write!(f, "tcp {addr}"),
            ListenAddr::Udp(addr) => write!(f, "udp {addr}"),
            ListenAddr::Unix(path) => write!(f, "unix {}", path.display()),
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
