//! Datagrams in batches (`recvmmsg(2)`, `sendmmsg(2)`) with their control
//! messages (`cmsg(3)`): each datagram's source, the address it arrived at
//! (`IP_PKTINFO`, `IPV6_PKTINFO`) and the socket's drop count
//! (`SO_RXQ_OVFL`), and replies sent from a chosen address, consecutive
//! replies of one size to one source merged into one `UDP_SEGMENT` (GSO)
//! message; and a buffer the kernel filled with several datagrams
//! (`UDP_GRO`) split back into them.

use socket2::Socket;
use std::io;
use std::mem::{self, size_of};
use std::net::{IpAddr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::AsRawFd;
use std::ptr;

/// `SO_RXQ_OVFL` (asm-generic value; the same on x86 and Arm).
pub(crate) const SO_RXQ_OVFL: libc::c_int = 40;

/// Most datagrams the kernel cuts one `UDP_SEGMENT` message into
/// (`UDP_MAX_SEGMENTS`: 64 before Linux 6.9, 128 since).
const GSO_MAX_SEGMENTS: usize = 64;

/// Most bytes in one `UDP_SEGMENT` message: the whole must fit in one IP
/// packet of at most 65,535 bytes with its IP (up to 40 bytes for IPv6,
/// more with options) and UDP headers; 64,512 leaves room for any.
const GSO_MAX_BYTES: usize = 63 * 1024;

/// Replies `first..end` sent as one message: with `segment`, a merged run
/// the kernel cuts into datagrams of that many bytes (the last may be
/// shorter); without, a single reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Run {
    first: usize,
    end: usize,
    segment: Option<u16>,
}

/// Room for the control messages of one datagram (an `in6_pktinfo` and
/// an `SO_RXQ_OVFL` count), aligned for `cmsghdr`.
#[repr(C, align(8))]
#[derive(Clone, Copy)]
struct Control([u8; 128]);

/// Where a datagram arrived, to reply from there: the address's bytes
/// in network order (and the IPv6 interface index).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Arrival {
    V4([u8; 4]),
    V6([u8; 16], u32),
}

/// What one datagram's control messages say.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct ControlData {
    arrival: Option<Arrival>,
    drops: Option<u32>,
    /// A segment size: `UDP_GRO` from the kernel (a buffer holding several
    /// datagrams of that size), or `UDP_SEGMENT` as [`build_control`]
    /// writes it (read back by the tests).
    segment: Option<u16>,
}

/// One datagram of the last [`MmsgBatch::recv`].
#[derive(Debug)]
pub(crate) struct Received<'a> {
    /// Its bytes, cut at the buffer size.
    pub(crate) data: &'a [u8],
    /// Its source, if the kernel gave a whole IPv4 or IPv6 address.
    pub(crate) source: Option<SocketAddr>,
    /// The socket's drop count as of this datagram (`SO_RXQ_OVFL`).
    pub(crate) drops: Option<u32>,
    /// The kernel cut its control data short (`MSG_CTRUNC`): `drops` and
    /// `arrival` are then `None`.
    pub(crate) control_truncated: bool,
    /// The address it was sent to (`IP_PKTINFO`, `IPV6_PKTINFO`).
    pub(crate) arrival: Option<IpAddr>,
}

/// Buffers and message headers for `batch` datagrams. The headers'
/// pointers are set afresh before each call, so the buffers may move.
pub(crate) struct MmsgBatch {
    size: usize,
    batch: usize,
    bufs: Vec<u8>,
    names: Vec<libc::sockaddr_storage>,
    controls: Vec<Control>,
    iovs: Vec<libc::iovec>,
    msgs: Vec<libc::mmsghdr>,
    received: usize,
    /// Reply from each datagram's arrival address (wildcard binds).
    pktinfo: bool,
    send_iovs: Vec<libc::iovec>,
    send_controls: Vec<Control>,
    send_msgs: Vec<libc::mmsghdr>,
    /// The datagrams of the last receive: buffer, offset into `bufs`,
    /// length. More than the buffers filled when the kernel merged some.
    parts: Vec<(usize, usize, usize)>,
    /// How the last replies were grouped into messages.
    runs: Vec<Run>,
    /// Merge replies with `UDP_SEGMENT`: until the kernel says it cannot.
    gso: bool,
    /// A merged run has gone through on this socket.
    gso_worked: bool,
    /// The control buffer of a reply sent again on its own.
    one_control: Control,
    #[cfg(test)]
    gso_fault: Option<i32>,
}

impl MmsgBatch {
    /// Room for `batch` datagrams of up to `size` bytes each; with
    /// `pktinfo`, replies leave from the address each datagram arrived at.
    pub(crate) fn new(size: usize, batch: usize, pktinfo: bool) -> MmsgBatch {
        // SAFETY: all-zero bytes are valid for these C structs.
        let zeroed_msg = || unsafe { mem::zeroed::<libc::mmsghdr>() };
        let iov = libc::iovec {
            iov_base: ptr::null_mut(),
            iov_len: 0,
        };
        MmsgBatch {
            size,
            batch,
            bufs: vec![0; size * batch],
            // SAFETY: as above.
            names: vec![unsafe { mem::zeroed() }; batch],
            controls: vec![Control([0; 128]); batch],
            iovs: vec![iov; batch],
            msgs: (0..batch).map(|_| zeroed_msg()).collect(),
            received: 0,
            pktinfo,
            send_iovs: vec![iov; batch],
            send_controls: vec![Control([0; 128]); batch],
            send_msgs: (0..batch).map(|_| zeroed_msg()).collect(),
            parts: Vec::with_capacity(batch),
            runs: Vec::with_capacity(batch),
            gso: true,
            gso_worked: false,
            one_control: Control([0; 128]),
            #[cfg(test)]
            gso_fault: None,
        }
    }

    /// Waits for a datagram (the socket's read timeout bounds the wait),
    /// then takes every one already queued, up to `batch` buffers, in one
    /// `recvmmsg(2)` (retried on `EINTR`). Returns how many datagrams:
    /// more than `batch` when the kernel merged some (GRO).
    pub(crate) fn recv(&mut self, socket: &Socket) -> io::Result<usize> {
        self.received = 0;
        for i in 0..self.batch {
            self.iovs[i] = libc::iovec {
                iov_base: self.bufs[i * self.size..].as_mut_ptr().cast(),
                iov_len: self.size,
            };
            let hdr = &mut self.msgs[i].msg_hdr;
            hdr.msg_name = ptr::addr_of_mut!(self.names[i]).cast();
            hdr.msg_namelen = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
            hdr.msg_iov = &mut self.iovs[i];
            hdr.msg_iovlen = 1;
            hdr.msg_control = self.controls[i].0.as_mut_ptr().cast();
            hdr.msg_controllen = self.controls[i].0.len() as _;
            hdr.msg_flags = 0;
            self.msgs[i].msg_len = 0;
        }
        loop {
            // SAFETY: every header points at live buffers of the lengths
            // given; MSG_WAITFORONE blocks for the first datagram only.
            let n = unsafe {
                libc::recvmmsg(
                    socket.as_raw_fd(),
                    self.msgs.as_mut_ptr(),
                    self.batch as libc::c_uint,
                    libc::MSG_WAITFORONE as _,
                    ptr::null_mut(),
                )
            };
            if n >= 0 {
                self.received = n as usize;
                self.split();
                return Ok(self.parts.len());
            }
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(e);
            }
        }
    }

    /// Lists the datagrams of the last `recvmmsg`: one per buffer, or,
    /// where the kernel merged several (GRO, with a `UDP_GRO` message
    /// giving their size), one per segment of that size, the last
    /// possibly shorter, so each is judged and answered as itself.
    fn split(&mut self) {
        self.parts.clear();
        for slot in 0..self.received {
            let len = (self.msgs[slot].msg_len as usize).min(self.size);
            let start = slot * self.size;
            match self.control(slot).0.segment.map(usize::from) {
                Some(segment) if segment > 0 && len > segment => {
                    let mut at = 0;
                    while at < len {
                        let part = segment.min(len - at);
                        self.parts.push((slot, start + at, part));
                        at += part;
                    }
                }
                _ => self.parts.push((slot, start, len)),
            }
        }
    }

    /// The `i`th datagram of the last [`recv`](Self::recv).
    pub(crate) fn received(&self, i: usize) -> Received<'_> {
        let (slot, start, len) = self.parts[i];
        let hdr = &self.msgs[slot].msg_hdr;
        let (control, control_truncated) = self.control(slot);
        Received {
            data: &self.bufs[start..start + len],
            source: socket_addr(&self.names[slot], hdr.msg_namelen),
            drops: control.drops,
            control_truncated,
            arrival: control.arrival.map(|a| match a {
                Arrival::V4(ip) => IpAddr::from(ip),
                Arrival::V6(ip, _) => IpAddr::from(ip),
            }),
        }
    }

    /// The `i`th datagram's control data, and whether the kernel cut it
    /// short (`MSG_CTRUNC`). Cut short, part of it is missing and the
    /// rest is not trusted: nothing is returned.
    fn control(&self, i: usize) -> (ControlData, bool) {
        let hdr = &self.msgs[i].msg_hdr;
        if hdr.msg_flags & libc::MSG_CTRUNC != 0 {
            return (ControlData::default(), true);
        }
        let buf = &self.controls[i].0;
        // A socklen_t on some libcs (musl), a size_t on glibc.
        #[allow(clippy::unnecessary_cast)]
        let len = (hdr.msg_controllen as usize).min(buf.len());
        (parse_control(&buf[..len]), false)
    }

    /// Sends `count` replies, `reply(j)` giving the `j`th: the index of the
    /// received datagram it answers and its bytes. Each goes to the source
    /// of that datagram (from its arrival address with `pktinfo`), in as
    /// few `sendmmsg(2)` calls as the kernel takes. Consecutive replies of
    /// one size to one source from one address go as one message with a
    /// `UDP_SEGMENT` control message (GSO): the kernel cuts it into
    /// datagrams of that size (the last may be shorter), one per reply, so
    /// what arrives is what separate sends would have sent. Returns the
    /// replies and bytes sent; `failed` hears of each that could not be
    /// (by the index of the datagram it answers).
    pub(crate) fn send<'a>(
        &mut self,
        socket: &Socket,
        count: usize,
        reply: impl Fn(usize) -> (usize, &'a [u8]),
        mut failed: impl FnMut(usize, io::Error),
    ) -> (u64, u64) {
        // Merged receives (GRO) give more datagrams than buffers.
        if self.send_iovs.len() < count {
            let iov = libc::iovec {
                iov_base: ptr::null_mut(),
                iov_len: 0,
            };
            self.send_iovs.resize(count, iov);
            self.send_controls.resize(count, Control([0; 128]));
            // SAFETY: all-zero bytes are a valid mmsghdr.
            self.send_msgs
                .resize_with(count, || unsafe { mem::zeroed::<libc::mmsghdr>() });
        }
        for j in 0..count {
            let bytes = reply(j).1;
            self.send_iovs[j] = libc::iovec {
                iov_base: bytes.as_ptr() as *mut _,
                iov_len: bytes.len(),
            };
        }
        self.group(count, &reply);
        for e in 0..self.runs.len() {
            let Run {
                first,
                end,
                segment,
            } = self.runs[e];
            let index = reply(first).0;
            let arrival = self.arrival(index);
            let recv_hdr = &self.msgs[self.parts[index].0].msg_hdr;
            let hdr = &mut self.send_msgs[e].msg_hdr;
            hdr.msg_name = recv_hdr.msg_name;
            hdr.msg_namelen = recv_hdr.msg_namelen;
            hdr.msg_iov = &mut self.send_iovs[first];
            hdr.msg_iovlen = end - first;
            hdr.msg_flags = 0;
            point_at_control(hdr, &mut self.send_controls[e], arrival, segment);
            self.send_msgs[e].msg_len = 0;
        }
        let (mut sent, mut bytes) = (0u64, 0u64);
        let runs = self.runs.len();
        let mut done = 0;
        while done < runs {
            let n = match self.injected_gso_error(done) {
                Some(e) => Err(e),
                None => {
                    // SAFETY: headers `done..runs` point at live buffers
                    // (the replies, borrowed for 'a, the names of the
                    // received batch, the send iovecs and control buffers,
                    // all owned or borrowed here).
                    let n = unsafe {
                        libc::sendmmsg(
                            socket.as_raw_fd(),
                            self.send_msgs[done..].as_mut_ptr(),
                            (runs - done) as libc::c_uint,
                            0,
                        )
                    };
                    usize::try_from(n).map_err(|_| io::Error::last_os_error())
                }
            };
            // At most `runs - done` sent, and at least one: sendmmsg
            // reports an error of a later message on the next call.
            let n = match n {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    let Run {
                        first,
                        end,
                        segment,
                    } = self.runs[done];
                    if segment.is_some() {
                        // A merged run failed as a whole: whatever the
                        // reason, each of its replies is tried on its own,
                        // so each fails or not as it would have unmerged.
                        if gso_unsupported(&e, self.gso_worked) {
                            self.gso = false;
                        }
                        for j in first..end {
                            let (index, data) = reply(j);
                            match self.send_one(socket, index, data) {
                                Ok(len) => {
                                    sent += 1;
                                    bytes += len as u64;
                                }
                                Err(e) => failed(index, e),
                            }
                        }
                    } else {
                        // The first reply left failed (say, an unreachable
                        // source): skip it, send the rest.
                        failed(reply(first).0, e);
                    }
                    done += 1;
                    continue;
                }
            };
            for (m, run) in self.send_msgs[done..done + n]
                .iter()
                .zip(&self.runs[done..])
            {
                sent += (run.end - run.first) as u64;
                bytes += u64::from(m.msg_len);
                self.gso_worked |= run.segment.is_some();
            }
            done += n.max(1);
        }
        (sent, bytes)
    }

    /// Splits replies `0..count` into [`Run`]s: each as long as GSO allows
    /// (one destination, one source address, one size but for a shorter
    /// last one, within the kernel's limits), or a single reply.
    fn group<'a>(&mut self, count: usize, reply: &impl Fn(usize) -> (usize, &'a [u8])) {
        self.runs.clear();
        let mut j = 0;
        while j < count {
            let first = j;
            let (index, data) = reply(j);
            let size = data.len();
            let mut total = size;
            j += 1;
            // A datagram of 0 bytes cannot be a segment; one that fills
            // the limit alone has nothing to share it with.
            if self.gso && size > 0 && size < GSO_MAX_BYTES {
                let to = self.destination(index);
                while j < count && j - first < GSO_MAX_SEGMENTS {
                    let (next, data) = reply(j);
                    let len = data.len();
                    if len == 0
                        || len > size
                        || total + len > GSO_MAX_BYTES
                        || self.destination(next) != to
                    {
                        break;
                    }
                    total += len;
                    j += 1;
                    if len < size {
                        // Only the last segment may be shorter.
                        break;
                    }
                }
            }
            let segment = (j - first > 1).then_some(size as u16);
            self.runs.push(Run {
                first,
                end: j,
                segment,
            });
        }
    }

    /// Where the reply to datagram `index` goes and leaves from: two
    /// replies may share a GSO message only if both are the same.
    fn destination(&self, index: usize) -> (Option<SocketAddr>, Option<Arrival>) {
        let slot = self.parts[index].0;
        let hdr = &self.msgs[slot].msg_hdr;
        (
            socket_addr(&self.names[slot], hdr.msg_namelen),
            self.arrival(index),
        )
    }

    /// The address the reply to datagram `index` leaves from, when chosen.
    fn arrival(&self, index: usize) -> Option<Arrival> {
        if self.pktinfo {
            self.control(self.parts[index].0).0.arrival
        } else {
            None
        }
    }

    /// One reply on its own, with `sendmsg(2)`: a merged run the kernel
    /// refused, sent again datagram by datagram.
    fn send_one(&mut self, socket: &Socket, index: usize, data: &[u8]) -> io::Result<usize> {
        let arrival = self.arrival(index);
        let mut iov = libc::iovec {
            iov_base: data.as_ptr() as *mut _,
            iov_len: data.len(),
        };
        // SAFETY: all-zero bytes are a valid msghdr.
        let mut hdr: libc::msghdr = unsafe { mem::zeroed() };
        let slot = self.parts[index].0;
        hdr.msg_name = self.msgs[slot].msg_hdr.msg_name;
        hdr.msg_namelen = self.msgs[slot].msg_hdr.msg_namelen;
        hdr.msg_iov = &mut iov;
        hdr.msg_iovlen = 1;
        point_at_control(&mut hdr, &mut self.one_control, arrival, None);
        loop {
            // SAFETY: `hdr` points at `iov` (over `data`), the datagram's
            // source name and `one_control`, all alive for the call.
            let n = unsafe { libc::sendmsg(socket.as_raw_fd(), &hdr, 0) };
            match usize::try_from(n) {
                Ok(n) => return Ok(n),
                Err(_) => {
                    let e = io::Error::last_os_error();
                    if e.kind() != io::ErrorKind::Interrupted {
                        return Err(e);
                    }
                }
            }
        }
    }

    /// Whether replies may still be merged with `UDP_SEGMENT`.
    #[cfg(test)]
    pub(crate) fn gso(&self) -> bool {
        self.gso
    }

    /// The next merged run sent fails with the OS error `code` instead of
    /// reaching the kernel: the fallback path, testable where GSO works.
    #[cfg(test)]
    pub(crate) fn inject_gso_error(&mut self, code: i32) {
        self.gso_fault = Some(code);
    }

    /// How many buffers the last [`recv`](Self::recv) filled.
    #[cfg(test)]
    pub(crate) fn buffers(&self) -> usize {
        self.received
    }

    /// How many messages the last [`send`](Self::send) made of its replies.
    #[cfg(test)]
    pub(crate) fn messages(&self) -> usize {
        self.runs.len()
    }

    #[cfg(test)]
    fn injected_gso_error(&mut self, run: usize) -> Option<io::Error> {
        self.runs[run].segment?;
        self.gso_fault.take().map(io::Error::from_raw_os_error)
    }

    #[cfg(not(test))]
    #[inline(always)]
    fn injected_gso_error(&mut self, _: usize) -> Option<io::Error> {
        None
    }
}

/// Whether an error sending a merged run says GSO cannot work on this
/// socket (so merging stops for good) rather than something about this
/// run: `EIO` (the device has no checksum offload), `ENOPROTOOPT` or
/// `EOPNOTSUPP` (a kernel without `UDP_SEGMENT`), and `EINVAL` until a
/// merged run has gone through once (afterwards it means this run, say a
/// segment longer than the path MTU, not the socket).
fn gso_unsupported(e: &io::Error, worked: bool) -> bool {
    match e.raw_os_error() {
        Some(libc::EIO | libc::ENOPROTOOPT | libc::EOPNOTSUPP) => true,
        Some(libc::EINVAL) => !worked,
        _ => false,
    }
}

/// The source address of a datagram.
fn socket_addr(storage: &libc::sockaddr_storage, len: libc::socklen_t) -> Option<SocketAddr> {
    let len = len as usize;
    match libc::c_int::from(storage.ss_family) {
        libc::AF_INET if len >= size_of::<libc::sockaddr_in>() => {
            // SAFETY: the family says the storage holds a sockaddr_in.
            let sin: &libc::sockaddr_in = unsafe { &*ptr::from_ref(storage).cast() };
            Some(SocketAddr::V4(SocketAddrV4::new(
                u32::from_be(sin.sin_addr.s_addr).into(),
                u16::from_be(sin.sin_port),
            )))
        }
        libc::AF_INET6 if len >= size_of::<libc::sockaddr_in6>() => {
            // SAFETY: the family says the storage holds a sockaddr_in6.
            let sin6: &libc::sockaddr_in6 = unsafe { &*ptr::from_ref(storage).cast() };
            Some(SocketAddr::V6(SocketAddrV6::new(
                sin6.sin6_addr.s6_addr.into(),
                u16::from_be(sin6.sin6_port),
                sin6.sin6_flowinfo,
                sin6.sin6_scope_id,
            )))
        }
        _ => None,
    }
}

/// A C struct of plain data (integers, arrays of them) read from the
/// start of `bytes`, if they are long enough. Only for types valid at
/// any bit pattern: `cmsghdr` and the payloads below.
fn read_plain<T: Copy>(bytes: &[u8]) -> Option<T> {
    (bytes.len() >= size_of::<T>()).then(|| {
        // SAFETY: `bytes` holds at least `size_of::<T>()` bytes, read
        // without alignment, and every caller's `T` is plain data.
        unsafe { ptr::read_unaligned(bytes.as_ptr().cast::<T>()) }
    })
}

/// `n` rounded up to the alignment of control messages (`CMSG_ALIGN`:
/// that of `size_t` on Linux).
fn cmsg_align(n: usize) -> usize {
    let a = size_of::<usize>();
    n.div_ceil(a) * a
}

/// The arrival address and drop count in the control messages of one
/// received datagram: `buf` is the `msg_controllen` bytes the kernel
/// filled. Nothing in it is trusted: each message's header must fit in
/// what is left, its `cmsg_len` must cover the header and stay within
/// `buf`, and a payload shorter than the struct read is skipped. The walk
/// stops at the first malformed header, since where the next begins is
/// then unknown.
fn parse_control(buf: &[u8]) -> ControlData {
    // Where the payload starts: the header, aligned (`CMSG_LEN(0)`).
    let data_offset = cmsg_align(size_of::<libc::cmsghdr>());
    let mut out = ControlData::default();
    let mut rest = buf;
    while let Some(header) = read_plain::<libc::cmsghdr>(rest) {
        // A socklen_t on some libcs (musl), a size_t on glibc.
        #[allow(clippy::unnecessary_cast)]
        let len = header.cmsg_len as usize;
        if len < data_offset || len > rest.len() {
            break;
        }
        let payload = &rest[data_offset..len];
        match (header.cmsg_level, header.cmsg_type) {
            (libc::IPPROTO_IP, libc::IP_PKTINFO) => {
                if let Some(info) = read_plain::<libc::in_pktinfo>(payload) {
                    out.arrival = Some(Arrival::V4(info.ipi_addr.s_addr.to_ne_bytes()));
                }
            }
            (libc::IPPROTO_IPV6, libc::IPV6_PKTINFO) => {
                if let Some(info) = read_plain::<libc::in6_pktinfo>(payload) {
                    out.arrival = Some(Arrival::V6(info.ipi6_addr.s6_addr, info.ipi6_ifindex));
                }
            }
            (libc::SOL_SOCKET, SO_RXQ_OVFL) => {
                if let Some(drops) = read_plain::<u32>(payload) {
                    out.drops = Some(drops);
                }
            }
            (libc::SOL_UDP, libc::UDP_SEGMENT) => {
                out.segment = read_plain::<u16>(payload).or(out.segment);
            }
            (libc::SOL_UDP, libc::UDP_GRO) => {
                // An int, though a segment never exceeds 65,535 bytes.
                if let Some(size) = read_plain::<libc::c_int>(payload) {
                    out.segment = u16::try_from(size).ok().or(out.segment);
                }
            }
            _ => {}
        }
        // The last message needs no padding after it: past the end
        // means done.
        rest = rest.get(cmsg_align(len)..).unwrap_or_default();
    }
    out
}

/// Points `hdr` at `control`, filled by [`build_control`], or at no
/// control data when there is none to send. `control` must outlive the
/// use of `hdr` (both are [`MmsgBatch`]'s own, or the caller's).
fn point_at_control(
    hdr: &mut libc::msghdr,
    control: &mut Control,
    from: Option<Arrival>,
    segment: Option<u16>,
) {
    let len = build_control(control, from, segment);
    if len == 0 {
        hdr.msg_control = ptr::null_mut();
        hdr.msg_controllen = 0;
    } else {
        hdr.msg_control = control.0.as_mut_ptr().cast();
        hdr.msg_controllen = len as _;
    }
}

/// Writes the control messages of one reply into `control`: an
/// `IP_PKTINFO`/`IPV6_PKTINFO` saying which address to send from, and a
/// `UDP_SEGMENT` with the segment size of a merged run. Returns the bytes
/// used (`msg_controllen`), 0 for none. Safe code: every write is a
/// bounds-checked copy into the 128-byte buffer (at most 64 are used).
fn build_control(control: &mut Control, from: Option<Arrival>, segment: Option<u16>) -> usize {
    control.0 = [0; 128];
    let mut at = 0;
    if let Some(from) = from {
        at += match from {
            Arrival::V4(addr) => {
                let info = libc::in_pktinfo {
                    ipi_ifindex: 0,
                    ipi_spec_dst: libc::in_addr {
                        s_addr: u32::from_ne_bytes(addr),
                    },
                    ipi_addr: libc::in_addr { s_addr: 0 },
                };
                write_cmsg(
                    &mut control.0[at..],
                    libc::IPPROTO_IP,
                    libc::IP_PKTINFO,
                    info,
                )
            }
            Arrival::V6(addr, ifindex) => {
                let info = libc::in6_pktinfo {
                    ipi6_addr: in6_addr(addr),
                    ipi6_ifindex: ifindex,
                };
                write_cmsg(
                    &mut control.0[at..],
                    libc::IPPROTO_IPV6,
                    libc::IPV6_PKTINFO,
                    info,
                )
            }
        };
    }
    if let Some(size) = segment {
        at += write_cmsg(&mut control.0[at..], libc::SOL_UDP, libc::UDP_SEGMENT, size);
    }
    at
}

/// An `in6_addr` of these bytes.
fn in6_addr(bytes: [u8; 16]) -> libc::in6_addr {
    // SAFETY: all-zero bytes are a valid in6_addr (plain bytes).
    let mut addr: libc::in6_addr = unsafe { mem::zeroed() };
    addr.s6_addr = bytes;
    addr
}

/// Writes one control message (header, `payload`, padding) at the start
/// of `buf`; returns its `CMSG_SPACE`. Panics if `buf` is too short, which
/// the fixed sizes above rule out.
fn write_cmsg<T: Copy>(buf: &mut [u8], level: libc::c_int, kind: libc::c_int, payload: T) -> usize {
    let data_offset = cmsg_align(size_of::<libc::cmsghdr>());
    let len = data_offset + size_of::<T>();
    let space = cmsg_align(len);
    assert!(buf.len() >= space, "control buffer too short");
    // SAFETY: all-zero bytes are a valid cmsghdr (integers).
    let mut header: libc::cmsghdr = unsafe { mem::zeroed() };
    header.cmsg_level = level;
    header.cmsg_type = kind;
    header.cmsg_len = len as _;
    write_plain(&mut buf[..data_offset], header);
    write_plain(&mut buf[data_offset..len], payload);
    space
}

/// Copies the bytes of a plain C value to the start of `bytes`.
fn write_plain<T: Copy>(bytes: &mut [u8], value: T) {
    assert!(bytes.len() >= size_of::<T>());
    // SAFETY: `bytes` has room for `size_of::<T>()` bytes, written
    // without alignment.
    unsafe { ptr::write_unaligned(bytes.as_mut_ptr().cast::<T>(), value) }
}

/// The control-message parser on crafted buffers: what the kernel
/// writes, and what it must never be trusted to have written.
#[cfg(test)]
mod control_tests {
    use super::*;

    /// One control message: a header saying `len` (the honest length
    /// unless given), the payload, padding to the alignment.
    fn cmsg(level: libc::c_int, kind: libc::c_int, payload: &[u8], len: Option<usize>) -> Vec<u8> {
        let data_offset = cmsg_align(size_of::<libc::cmsghdr>());
        // SAFETY: all-zero bytes are a valid cmsghdr.
        let mut header: libc::cmsghdr = unsafe { mem::zeroed() };
        header.cmsg_level = level;
        header.cmsg_type = kind;
        header.cmsg_len = len.unwrap_or(data_offset + payload.len()) as _;
        let mut out = vec![0u8; data_offset];
        // SAFETY: `out` has room for a header, written unaligned.
        unsafe { ptr::write_unaligned(out.as_mut_ptr().cast(), header) };
        out.extend_from_slice(payload);
        out.resize(cmsg_align(out.len()), 0);
        out
    }

    fn pktinfo4(octets: [u8; 4]) -> Vec<u8> {
        let info = libc::in_pktinfo {
            ipi_ifindex: 3,
            ipi_spec_dst: libc::in_addr { s_addr: 0 },
            ipi_addr: libc::in_addr {
                s_addr: u32::from_ne_bytes(octets),
            },
        };
        bytes_of(&info)
    }

    fn pktinfo6(octets: [u8; 16], ifindex: u32) -> Vec<u8> {
        // SAFETY: all-zero bytes are a valid in6_pktinfo.
        let mut info: libc::in6_pktinfo = unsafe { mem::zeroed() };
        info.ipi6_addr.s6_addr = octets;
        info.ipi6_ifindex = ifindex;
        bytes_of(&info)
    }

    fn bytes_of<T>(value: &T) -> Vec<u8> {
        // SAFETY: reads the `size_of::<T>()` bytes of a live value of
        // a C struct without padding.
        unsafe { std::slice::from_raw_parts(ptr::from_ref(value).cast::<u8>(), size_of::<T>()) }
            .to_vec()
    }

    const V4: [u8; 4] = [127, 0, 0, 2];
    const V6: [u8; 16] = [0x20, 1, 0xd, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 7];

    #[test]
    fn well_formed_messages_are_read() {
        let ip = cmsg(libc::IPPROTO_IP, libc::IP_PKTINFO, &pktinfo4(V4), None);
        let ovfl = cmsg(libc::SOL_SOCKET, SO_RXQ_OVFL, &42u32.to_ne_bytes(), None);
        let both = [ip.clone(), ovfl.clone()].concat();
        let want = ControlData {
            arrival: Some(Arrival::V4(V4)),
            drops: Some(42),
            segment: None,
        };
        assert_eq!(parse_control(&both), want);
        assert_eq!(parse_control(&[ovfl, ip].concat()), want);
        let six = cmsg(
            libc::IPPROTO_IPV6,
            libc::IPV6_PKTINFO,
            &pktinfo6(V6, 5),
            None,
        );
        assert_eq!(parse_control(&six).arrival, Some(Arrival::V6(V6, 5)));
        // An unknown message is skipped, the next one read.
        let other = cmsg(libc::SOL_SOCKET, 9999, &[1; 12], None);
        assert_eq!(
            parse_control(&[other, six].concat()).arrival,
            Some(Arrival::V6(V6, 5))
        );
        assert_eq!(parse_control(&[]), ControlData::default());
    }

    /// What `build_control` writes, `parse_control` reads back: each
    /// message aligned, its length honest, nothing past the length given.
    #[test]
    fn built_control_messages_parse_back() {
        let mut control = Control([0xff; 128]);
        assert_eq!(build_control(&mut control, None, None), 0);
        let header = cmsg_align(size_of::<libc::cmsghdr>());
        let cases = [
            (Some(Arrival::V4(V4)), None),
            (Some(Arrival::V6(V6, 9)), None),
            (None, Some(1000)),
            (Some(Arrival::V4(V4)), Some(1)),
            (Some(Arrival::V6(V6, 9)), Some(u16::MAX)),
        ];
        for (arrival, segment) in cases {
            let len = build_control(&mut control, arrival, segment);
            let want = arrival.map_or(0, |a| match a {
                Arrival::V4(_) => cmsg_align(header + size_of::<libc::in_pktinfo>()),
                Arrival::V6(..) => cmsg_align(header + size_of::<libc::in6_pktinfo>()),
            }) + segment.map_or(0, |_| cmsg_align(header + 2));
            assert_eq!(len, want, "{arrival:?} {segment:?}");
            // The kernel reads the written ipi_spec_dst, not ipi_addr:
            // check the bytes where the parser looks for the address.
            let parsed = parse_control(&control.0[..len]);
            assert_eq!(parsed.segment, segment);
            assert_eq!(parsed.drops, None);
            assert_eq!(parsed.arrival.is_some(), arrival.is_some());
            if let Some(Arrival::V6(..)) = arrival {
                assert_eq!(parsed.arrival, arrival);
            }
        }
        // The pktinfo for IPv4 names the source in ipi_spec_dst.
        let len = build_control(&mut control, Some(Arrival::V4(V4)), None);
        let info: libc::in_pktinfo = read_plain(&control.0[header..len]).unwrap();
        assert_eq!(info.ipi_spec_dst.s_addr.to_ne_bytes(), V4);
        assert_eq!(info.ipi_addr.s_addr, 0);
    }

    /// A `UDP_GRO` message (an int) gives the segment size; one that is
    /// no size (negative, too large) gives none.
    #[test]
    fn a_gro_segment_size_is_read() {
        let gro = |size: libc::c_int| {
            parse_control(&cmsg(
                libc::SOL_UDP,
                libc::UDP_GRO,
                &size.to_ne_bytes(),
                None,
            ))
            .segment
        };
        assert_eq!(gro(1472), Some(1472));
        assert_eq!(gro(-1), None);
        assert_eq!(gro(70_000), None);
    }

    #[test]
    fn a_cmsg_len_too_short_for_the_payload_is_not_read_past() {
        let header = cmsg_align(size_of::<libc::cmsghdr>());
        // Says 2 bytes of payload where a u32 is needed: skipped, and
        // the message after it (at the aligned end) still read.
        let short = cmsg(
            libc::SOL_SOCKET,
            SO_RXQ_OVFL,
            &7u32.to_ne_bytes(),
            Some(header + 2),
        );
        let ip = cmsg(libc::IPPROTO_IP, libc::IP_PKTINFO, &pktinfo4(V4), None);
        let parsed = parse_control(&[short, ip].concat());
        assert_eq!(parsed.drops, None);
        assert_eq!(parsed.arrival, Some(Arrival::V4(V4)));
        // A pktinfo cut at the address's last byte is not read either.
        let cut = cmsg(
            libc::IPPROTO_IP,
            libc::IP_PKTINFO,
            &pktinfo4(V4),
            Some(header + size_of::<libc::in_pktinfo>() - 1),
        );
        assert_eq!(parse_control(&cut), ControlData::default());
    }

    #[test]
    fn a_malformed_header_ends_the_walk() {
        let header = cmsg_align(size_of::<libc::cmsghdr>());
        let ovfl = cmsg(libc::SOL_SOCKET, SO_RXQ_OVFL, &5u32.to_ne_bytes(), None);
        for bad_len in [0, 1, header - 1, 4096, usize::MAX >> 1] {
            let bad = cmsg(
                libc::SOL_SOCKET,
                SO_RXQ_OVFL,
                &9u32.to_ne_bytes(),
                Some(bad_len),
            );
            assert_eq!(
                parse_control(&[bad, ovfl.clone()].concat()),
                ControlData::default(),
                "cmsg_len {bad_len}"
            );
        }
        // A message with no payload (cmsg_len is CMSG_LEN(0)) is well
        // formed: skipped, and the one after it read.
        let empty = cmsg(libc::SOL_SOCKET, 9999, &[], None);
        assert_eq!(
            parse_control(&[empty, ovfl.clone()].concat()).drops,
            Some(5)
        );
        // A cmsg_len past the end of the buffer, by one byte.
        let ovfl_len = header + 4;
        let mut past = cmsg(libc::SOL_SOCKET, SO_RXQ_OVFL, &5u32.to_ne_bytes(), None);
        past.truncate(ovfl_len - 1);
        assert_eq!(parse_control(&past), ControlData::default());
        // Exactly to the end (no trailing padding) is fine.
        past = cmsg(libc::SOL_SOCKET, SO_RXQ_OVFL, &5u32.to_ne_bytes(), None);
        past.truncate(ovfl_len);
        assert_eq!(parse_control(&past).drops, Some(5));
        // Half a header after a good message.
        let half = [ovfl.clone(), vec![0xff; header / 2]].concat();
        assert_eq!(parse_control(&half).drops, Some(5));
        // Every prefix of a two-message buffer parses without panic.
        let two = [
            ovfl,
            cmsg(libc::IPPROTO_IP, libc::IP_PKTINFO, &pktinfo4(V4), None),
        ]
        .concat();
        for n in 0..=two.len() {
            let _ = parse_control(&two[..n]);
        }
    }
}
