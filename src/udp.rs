//! UDP echo (RFC 862): each datagram is answered by one datagram with the
//! same bytes, sent back to its source, unless the source filter or the rate
//! limit says no.
//!
//! One thread serves each UDP socket. The datagram goes through the same
//! [`echo`](crate::echo) as every stream, over an in-memory exchange.

use crate::context::Context;
use crate::listener::{self, ListenAddr, POLL};
use crate::rate_limit::SourceBuckets;
pub use crate::source::{check_source, normalize, Refusal};
use crate::stats::Counters;
use socket2::{Domain, MaybeUninitSlice, Protocol, SockAddr, Socket, Type};
use std::io::{self, Read, Write};
use std::mem::MaybeUninit;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::Instant;

/// The largest UDP payload: 65,535 minus the 8-byte UDP header (IPv6 without
/// jumbograms; IPv4 allows 65,507). Larger datagrams cannot exist.
pub const MAX_DATAGRAM: usize = 65_527;

/// A bound UDP socket.
#[derive(Debug)]
pub(crate) struct DatagramSocket {
    socket: Socket,
    pub(crate) addr: ListenAddr,
    /// Learn each datagram's destination address, to reply from it: needed
    /// when bound to a wildcard address on a host with several addresses.
    reply_from_arrival: bool,
}

pub(crate) fn bind_udp(addr: SocketAddr) -> io::Result<DatagramSocket> {
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    if addr.is_ipv6() {
        socket.set_only_v6(!addr.ip().is_unspecified())?;
    }
    socket.bind(&addr.into())?;
    DatagramSocket::from_socket(socket)
}

impl DatagramSocket {
    pub(crate) fn from_socket(socket: Socket) -> io::Result<DatagramSocket> {
        let local = socket
            .local_addr()?
            .as_socket()
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "not an IP socket"))?;
        socket.set_read_timeout(Some(POLL))?;
        let reply_from_arrival = local.ip().is_unspecified() && pktinfo::enable(&socket, local);
        Ok(DatagramSocket {
            socket,
            addr: ListenAddr::Udp(local),
            reply_from_arrival,
        })
    }

    /// Wakes the thread blocked in `recv`: an empty datagram to ourselves.
    pub(crate) fn waker(&self) -> impl Fn() + Send + Sync + 'static {
        let target = match &self.addr {
            ListenAddr::Udp(addr) => Some(listener::connectable(*addr)),
            _ => None,
        };
        move || {
            let Some(target) = target else { return };
            let any = SocketAddr::new(
                match target {
                    SocketAddr::V4(_) => Ipv4Addr::UNSPECIFIED.into(),
                    SocketAddr::V6(_) => std::net::Ipv6Addr::UNSPECIFIED.into(),
                },
                0,
            );
            if let Ok(socket) = std::net::UdpSocket::bind(any) {
                // Best effort: the `POLL` timeout is the backstop.
                let _ = socket.send_to(&[], target);
            }
        }
    }

    /// Answers datagrams until shutdown.
    pub(crate) fn serve(&self, ctx: &Context) {
        let settings = &ctx.settings.udp;
        // One byte more than the largest datagram accepted, so that a larger
        // one shows as too long instead of passing truncated.
        let mut request = vec![0u8; settings.max_datagram + 1];
        let mut scratch = vec![0u8; settings.max_datagram.max(1)];
        let mut reply = Vec::with_capacity(settings.max_datagram);
        let mut buckets = settings.rate_limit.map(SourceBuckets::new);
        let counters = &ctx.counters;
        while !ctx.shutdown.is_requested() {
            let (len, from, arrival) = match self.recv(&mut request) {
                Ok(received) => received,
                Err(e) if crate::stream::is_timeout(&e) => continue,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    // ICMP errors from earlier replies surface here on some
                    // systems; they concern one client, not the socket.
                    log::debug!("{}: recv: {e}", self.addr);
                    continue;
                }
            };
            if ctx.shutdown.is_requested() {
                break;
            }
            let Some(source) = from.as_socket() else {
                continue;
            };
            let verdict = if len > settings.max_datagram {
                Err(Refusal::Truncated)
            } else if settings.filter_sources {
                check_source(source)
            } else {
                Ok(())
            };
            let verdict = verdict.and_then(|()| {
                let within = buckets
                    .as_mut()
                    .is_none_or(|b| b.allow(normalize(source).ip(), len, Instant::now()));
                if within {
                    Ok(())
                } else {
                    Err(Refusal::RateLimited)
                }
            });
            if let Err(refusal) = verdict {
                counters.refused(refusal);
                log::debug!("{}: no answer to {source}: {refusal:?}", self.addr);
                continue;
            }
            reply.clear();
            let mut exchange = Exchange {
                request: &request[..len],
                reply: &mut reply,
            };
            // In memory, `echo` cannot fail.
            if crate::echo_with_buffer(&mut exchange, &mut scratch).is_err() {
                continue;
            }
            if ctx.settings.log_data && !reply.is_empty() {
                log::info!(
                    "{source} sent a {} byte datagram: \"{}\"",
                    reply.len(),
                    crate::escape(&reply)
                );
            }
            match self.send(&reply, &from, arrival) {
                Ok(_) => {
                    Counters::add(&counters.datagrams_echoed, 1);
                    Counters::add(&counters.bytes_echoed, reply.len() as u64);
                }
                Err(e) => log::debug!("{}: reply to {source}: {e}", self.addr),
            }
        }
        log::debug!("{}: no longer answering", self.addr);
    }

    fn recv(&self, buf: &mut [u8]) -> io::Result<(usize, SockAddr, Option<pktinfo::Arrival>)> {
        if self.reply_from_arrival {
            return pktinfo::recv(&self.socket, buf);
        }
        // SAFETY: `recv_from_vectored` only writes initialised bytes, and a
        // `[u8]` is valid for any bytes written.
        let uninit = unsafe { &mut *(buf as *mut [u8] as *mut [MaybeUninit<u8>]) };
        let (len, _, from) = self
            .socket
            .recv_from_vectored(&mut [MaybeUninitSlice::new(uninit)])?;
        Ok((len, from, None))
    }

    fn send(
        &self,
        buf: &[u8],
        to: &SockAddr,
        arrival: Option<pktinfo::Arrival>,
    ) -> io::Result<usize> {
        match arrival {
            Some(arrival) => pktinfo::send(&self.socket, buf, to, arrival),
            None => self.socket.send_to(buf, to),
        }
    }
}

/// A datagram as a stream for [`echo`](crate::echo): reads give the request,
/// writes build the reply.
struct Exchange<'a> {
    request: &'a [u8],
    reply: &'a mut Vec<u8>,
}

impl Read for Exchange<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.request.read(buf)
    }
}

impl Write for Exchange<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.reply.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Replying from the address a datagram arrived on, with `IP_PKTINFO` /
/// `IPV6_PKTINFO` (Linux).
#[cfg(target_os = "linux")]
mod pktinfo {
    use socket2::{SockAddr, Socket};
    use std::io;
    use std::mem::{self, size_of};
    use std::net::SocketAddr;
    use std::os::fd::AsRawFd;
    use std::ptr;

    /// Where a datagram arrived.
    #[derive(Clone, Copy)]
    pub(crate) enum Arrival {
        V4(libc::in_addr),
        V6(libc::in6_addr, u32),
    }

    /// Room for one `in6_pktinfo` control message, aligned for `cmsghdr`.
    #[repr(C, align(8))]
    struct Control([u8; 64]);

    /// Asks the kernel for each datagram's destination address. Returns
    /// whether it agreed.
    pub(crate) fn enable(socket: &Socket, local: SocketAddr) -> bool {
        let (level, name) = match local {
            SocketAddr::V4(_) => (libc::IPPROTO_IP, libc::IP_PKTINFO),
            SocketAddr::V6(_) => (libc::IPPROTO_IPV6, libc::IPV6_RECVPKTINFO),
        };
        let on: libc::c_int = 1;
        // SAFETY: a valid fd and a pointer to a c_int of the length given.
        let rc = unsafe {
            libc::setsockopt(
                socket.as_raw_fd(),
                level,
                name,
                ptr::addr_of!(on).cast(),
                size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        rc == 0
    }

    pub(crate) fn recv(
        socket: &Socket,
        buf: &mut [u8],
    ) -> io::Result<(usize, SockAddr, Option<Arrival>)> {
        let mut control = Control([0; 64]);
        let mut iov = libc::iovec {
            iov_base: buf.as_mut_ptr().cast(),
            iov_len: buf.len(),
        };
        // SAFETY: `try_init` hands out zeroed storage for the source address;
        // every pointer in `msg` is valid for the lengths given, and the
        // control messages are read only within `msg_controllen`.
        let ((len, arrival), from) = unsafe {
            SockAddr::try_init(|storage, storage_len| {
                let mut msg: libc::msghdr = mem::zeroed();
                msg.msg_name = storage.cast();
                msg.msg_namelen = *storage_len;
                msg.msg_iov = &mut iov;
                msg.msg_iovlen = 1;
                msg.msg_control = control.0.as_mut_ptr().cast();
                msg.msg_controllen = control.0.len() as _;
                let n = libc::recvmsg(socket.as_raw_fd(), &mut msg, 0);
                if n < 0 {
                    return Err(io::Error::last_os_error());
                }
                *storage_len = msg.msg_namelen;
                Ok((n as usize, arrival(&msg)))
            })?
        };
        Ok((len, from, arrival))
    }

    /// SAFETY: `msg` was filled by `recvmsg`.
    unsafe fn arrival(msg: &libc::msghdr) -> Option<Arrival> {
        let mut cmsg = libc::CMSG_FIRSTHDR(msg);
        while !cmsg.is_null() {
            let header = &*cmsg;
            if header.cmsg_level == libc::IPPROTO_IP && header.cmsg_type == libc::IP_PKTINFO {
                let info: libc::in_pktinfo = ptr::read_unaligned(libc::CMSG_DATA(cmsg).cast());
                return Some(Arrival::V4(info.ipi_addr));
            }
            if header.cmsg_level == libc::IPPROTO_IPV6 && header.cmsg_type == libc::IPV6_PKTINFO {
                let info: libc::in6_pktinfo = ptr::read_unaligned(libc::CMSG_DATA(cmsg).cast());
                return Some(Arrival::V6(info.ipi6_addr, info.ipi6_ifindex));
            }
            cmsg = libc::CMSG_NXTHDR(msg, cmsg);
        }
        None
    }

    pub(crate) fn send(
        socket: &Socket,
        buf: &[u8],
        to: &SockAddr,
        from: Arrival,
    ) -> io::Result<usize> {
        let mut control = Control([0; 64]);
        let mut iov = libc::iovec {
            iov_base: buf.as_ptr() as *mut _,
            iov_len: buf.len(),
        };
        let (level, kind, size) = match from {
            Arrival::V4(_) => (
                libc::IPPROTO_IP,
                libc::IP_PKTINFO,
                size_of::<libc::in_pktinfo>(),
            ),
            Arrival::V6(..) => (
                libc::IPPROTO_IPV6,
                libc::IPV6_PKTINFO,
                size_of::<libc::in6_pktinfo>(),
            ),
        };
        // SAFETY: `msg` points at live buffers of the lengths given; the one
        // control message fits in `control` (CMSG_SPACE of an in6_pktinfo
        // is 40 bytes) and is written within it.
        let n = unsafe {
            let mut msg: libc::msghdr = mem::zeroed();
            msg.msg_name = to.as_ptr() as *mut _;
            msg.msg_namelen = to.len();
            msg.msg_iov = &mut iov;
            msg.msg_iovlen = 1;
            msg.msg_control = control.0.as_mut_ptr().cast();
            msg.msg_controllen = libc::CMSG_SPACE(size as u32) as _;
            let cmsg = libc::CMSG_FIRSTHDR(&msg);
            (*cmsg).cmsg_level = level;
            (*cmsg).cmsg_type = kind;
            (*cmsg).cmsg_len = libc::CMSG_LEN(size as u32) as _;
            match from {
                Arrival::V4(addr) => ptr::write_unaligned(
                    libc::CMSG_DATA(cmsg).cast(),
                    libc::in_pktinfo {
                        ipi_ifindex: 0,
                        ipi_spec_dst: addr,
                        ipi_addr: libc::in_addr { s_addr: 0 },
                    },
                ),
                Arrival::V6(addr, ifindex) => ptr::write_unaligned(
                    libc::CMSG_DATA(cmsg).cast(),
                    libc::in6_pktinfo {
                        ipi6_addr: addr,
                        ipi6_ifindex: ifindex,
                    },
                ),
            }
            libc::sendmsg(socket.as_raw_fd(), &msg, 0)
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(n as usize)
    }
}

/// Without `IP_PKTINFO`, replies leave from whatever address routing picks;
/// bind to a specific address to control it.
#[cfg(not(target_os = "linux"))]
mod pktinfo {
    use socket2::{SockAddr, Socket};
    use std::io;
    use std::net::SocketAddr;

    #[derive(Clone, Copy)]
    pub(crate) enum Arrival {}

    pub(crate) fn enable(_: &Socket, _: SocketAddr) -> bool {
        false
    }

    pub(crate) fn recv(_: &Socket, _: &mut [u8]) -> io::Result<(usize, SockAddr, Option<Arrival>)> {
        Err(io::ErrorKind::Unsupported.into())
    }

    pub(crate) fn send(_: &Socket, _: &[u8], _: &SockAddr, from: Arrival) -> io::Result<usize> {
        match from {}
    }
}
