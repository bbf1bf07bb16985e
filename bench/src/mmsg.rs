//! Batched UDP I/O on a connected, nonblocking socket: on Linux one
//! `recvmmsg` call receives a whole batch of datagrams, and one `sendmsg`
//! with UDP generic segmentation offload (`UDP_SEGMENT`) sends a batch of
//! equal-sized datagrams as one buffer that the kernel cuts into separate
//! datagrams (falling back to `sendmmsg` where GSO is unavailable). That is
//! what lets one client thread keep up with a fast server: a loopback send
//! costs the sender the whole trip through the stack, and GSO pays most of
//! it once per batch. The server still receives one datagram per datagram.
//! Elsewhere the same interface sends and receives one datagram per call.
//!
//! Datagrams are sent from two pieces (a header and a payload slice of the
//! shared pattern table), gathered by the kernel, so nothing is copied.

use std::io;

/// Most datagrams one call moves.
pub const MAX_BATCH: usize = 64;

/// Most datagrams one GSO send carries (the kernel's limit is 64 or more),
/// within the 65,507 bytes one UDP send may carry in all.
const MAX_GSO_SEGMENTS: usize = 64;
const MAX_GSO_BYTES: usize = 65_507;

/// Receive buffers for a batch of datagrams, each one byte longer than the
/// size expected (so a longer datagram shows as too long even where the
/// kernel does not flag truncation).
pub struct RecvBatch {
    cap: usize,
    bufs: Vec<u8>,
    lens: Vec<usize>,
    truncated: Vec<bool>,
    #[cfg(target_os = "linux")]
    sys: imp::RecvState,
}

impl RecvBatch {
    /// Room for `batch` (at most [`MAX_BATCH`]) datagrams of up to `cap`
    /// bytes each.
    pub fn new(batch: usize, cap: usize) -> Self {
        let batch = batch.clamp(1, MAX_BATCH);
        RecvBatch {
            cap,
            bufs: vec![0; batch * cap],
            lens: vec![0; batch],
            truncated: vec![false; batch],
            #[cfg(target_os = "linux")]
            sys: imp::RecvState::new(batch),
        }
    }

    pub fn batch(&self) -> usize {
        self.lens.len()
    }

    /// Datagram `i` of the last [`RecvBatch::recv`], and whether it was cut
    /// short because it did not fit.
    pub fn get(&self, i: usize) -> (&[u8], bool) {
        let start = i * self.cap;
        (&self.bufs[start..start + self.lens[i]], self.truncated[i])
    }

    /// Receives up to [`RecvBatch::batch`] datagrams waiting on `sock`;
    /// never `Ok(0)` (nothing waiting is `WouldBlock`).
    pub fn recv(&mut self, sock: &mio::net::UdpSocket) -> io::Result<usize> {
        imp::recv(sock, self)
    }
}

/// One datagram to send: header, then payload.
pub struct Piece<'a> {
    pub header: &'a [u8],
    pub payload: &'a [u8],
}

/// Sends batches of datagrams of one size.
pub struct Sender {
    size: usize,
    /// Whether to try GSO (turned off for good if the kernel refuses it).
    gso: bool,
    #[cfg(target_os = "linux")]
    sys: imp::SendState,
}

impl Sender {
    /// For datagrams of `size` bytes each; with `gso`, sent merged where
    /// the kernel allows.
    pub fn new(size: usize, gso: bool) -> Self {
        Sender {
            size,
            gso: gso && cfg!(target_os = "linux") && size > 0 && MAX_GSO_BYTES / size >= 2,
            #[cfg(target_os = "linux")]
            sys: imp::SendState::new(),
        }
    }

    /// Sends the datagrams (each `size` bytes, at most [`MAX_BATCH`]) in
    /// order; returns how many went out (a prefix), or the error that
    /// stopped the first one.
    pub fn send(&mut self, sock: &mio::net::UdpSocket, pieces: &[Piece]) -> io::Result<usize> {
        imp::send(sock, self, pieces)
    }
}

#[cfg(target_os = "linux")]
mod imp {
    use super::{Piece, RecvBatch, Sender, MAX_BATCH, MAX_GSO_BYTES, MAX_GSO_SEGMENTS};
    use std::io;
    use std::os::fd::AsRawFd;

    const EMPTY_IOV: libc::iovec = libc::iovec {
        iov_base: std::ptr::null_mut(),
        iov_len: 0,
    };

    fn empty_msgs(n: usize) -> Box<[libc::mmsghdr]> {
        // SAFETY: `mmsghdr` is plain data (integers and raw pointers), for
        // which all-zero bytes are a valid (empty) value.
        let empty: libc::mmsghdr = unsafe { std::mem::zeroed() };
        vec![empty; n].into_boxed_slice()
    }

    /// The kernel's view of the receive buffers, kept between calls (the
    /// pointers are set again on every call, for the entries used).
    pub struct RecvState {
        iov: Box<[libc::iovec]>,
        msgs: Box<[libc::mmsghdr]>,
    }

    impl RecvState {
        pub fn new(batch: usize) -> Self {
            RecvState {
                iov: vec![EMPTY_IOV; batch].into_boxed_slice(),
                msgs: empty_msgs(batch),
            }
        }
    }

    pub struct SendState {
        /// Header and payload of each datagram.
        iov: Box<[libc::iovec]>,
        msgs: Box<[libc::mmsghdr]>,
    }

    impl SendState {
        pub fn new() -> Self {
            SendState {
                iov: vec![EMPTY_IOV; 2 * MAX_BATCH].into_boxed_slice(),
                msgs: empty_msgs(MAX_BATCH),
            }
        }
    }

    pub fn recv(sock: &impl AsRawFd, rb: &mut RecvBatch) -> io::Result<usize> {
        let batch = rb.batch();
        let cap = rb.cap;
        let base = rb.bufs.as_mut_ptr();
        let RecvState { iov, msgs } = &mut rb.sys;
        for (i, (v, m)) in iov.iter_mut().zip(msgs.iter_mut()).enumerate() {
            // SAFETY: `i < batch`, so `i * cap` is within `bufs`
            // (`batch * cap` bytes long).
            v.iov_base = unsafe { base.add(i * cap) }.cast();
            v.iov_len = cap;
            m.msg_hdr.msg_iov = v;
            m.msg_hdr.msg_iovlen = 1;
            m.msg_hdr.msg_flags = 0;
            m.msg_len = 0;
        }
        // SAFETY: `msgs[..batch]` are valid headers without address or
        // control data, each pointing at one iovec that covers its own `cap`
        // bytes of `bufs`, all of which outlive the call.
        let n = unsafe {
            libc::recvmmsg(
                sock.as_raw_fd(),
                msgs.as_mut_ptr(),
                batch as libc::c_uint,
                libc::MSG_DONTWAIT as _,
                std::ptr::null_mut(),
            )
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        let n = n as usize;
        let got = rb.lens.iter_mut().zip(rb.truncated.iter_mut());
        for (m, (len, truncated)) in msgs[..n].iter().zip(got) {
            *len = (m.msg_len as usize).min(cap);
            *truncated = m.msg_hdr.msg_flags & libc::MSG_TRUNC != 0;
        }
        Ok(n)
    }

    /// Points `iov[2i]`, `iov[2i + 1]` at datagram `i`'s header and payload.
    fn gather(iov: &mut [libc::iovec], pieces: &[Piece]) {
        for (pair, p) in iov.chunks_exact_mut(2).zip(pieces) {
            // The kernel only reads through these pointers.
            pair[0].iov_base = p.header.as_ptr().cast_mut().cast();
            pair[0].iov_len = p.header.len();
            pair[1].iov_base = p.payload.as_ptr().cast_mut().cast();
            pair[1].iov_len = p.payload.len();
        }
    }

    pub fn send(sock: &impl AsRawFd, tx: &mut Sender, pieces: &[Piece]) -> io::Result<usize> {
        let n = pieces.len().min(MAX_BATCH);
        let gso_n = n.min(MAX_GSO_SEGMENTS).min(MAX_GSO_BYTES / tx.size.max(1));
        if tx.gso && gso_n >= 2 {
            match send_gso(sock, tx, &pieces[..gso_n]) {
                Ok(sent) => return Ok(sent),
                Err(e) if gso_refused(&e) => tx.gso = false,
                Err(e) => return Err(e),
            }
        }
        let SendState { iov, msgs } = &mut tx.sys;
        gather(iov, &pieces[..n]);
        for (m, pair) in msgs.iter_mut().zip(iov.chunks_exact_mut(2)).take(n) {
            m.msg_hdr.msg_iov = pair.as_mut_ptr();
            m.msg_hdr.msg_iovlen = 2;
            m.msg_hdr.msg_control = std::ptr::null_mut();
            m.msg_hdr.msg_controllen = 0;
        }
        // SAFETY: `msgs[..n]` are valid headers for a connected socket (no
        // address, no control data), each pointing at two iovecs over
        // slices that outlive the call and that sendmmsg only reads.
        let sent = unsafe {
            libc::sendmmsg(
                sock.as_raw_fd(),
                msgs.as_mut_ptr(),
                n as libc::c_uint,
                libc::MSG_DONTWAIT as _,
            )
        };
        if sent < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(sent as usize)
    }

    /// Errors that say this kernel (or socket) does not do UDP GSO.
    fn gso_refused(e: &io::Error) -> bool {
        matches!(
            e.raw_os_error(),
            Some(libc::EIO | libc::EINVAL | libc::ENOPROTOOPT | libc::EOPNOTSUPP)
        )
    }

    /// Sends `pieces` (all `tx.size` bytes) as one GSO buffer: all or none.
    fn send_gso(sock: &impl AsRawFd, tx: &mut Sender, pieces: &[Piece]) -> io::Result<usize> {
        let iov = &mut tx.sys.iov;
        gather(iov, pieces);
        // Room for one control message carrying a u16, suitably aligned.
        let mut control = [0u64; 4];
        // SAFETY: CMSG_SPACE only computes a size.
        let space = unsafe { libc::CMSG_SPACE(std::mem::size_of::<u16>() as u32) } as usize;
        debug_assert!(space <= std::mem::size_of_val(&control));
        // SAFETY: all-zero bytes are a valid `msghdr`.
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_iov = iov.as_mut_ptr();
        msg.msg_iovlen = 2 * pieces.len();
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = space as _;
        let segment = u16::try_from(tx.size).unwrap_or(u16::MAX);
        // SAFETY: `msg` has a control buffer of `space` bytes, room for one
        // header and a u16; CMSG_FIRSTHDR points at its start (8-aligned),
        // and CMSG_DATA inside it.
        unsafe {
            let cmsg = libc::CMSG_FIRSTHDR(&msg);
            (*cmsg).cmsg_level = libc::SOL_UDP;
            (*cmsg).cmsg_type = libc::UDP_SEGMENT;
            (*cmsg).cmsg_len = libc::CMSG_LEN(std::mem::size_of::<u16>() as u32) as _;
            std::ptr::write_unaligned(libc::CMSG_DATA(cmsg).cast::<u16>(), segment);
        }
        // SAFETY: `msg` is a valid header for a connected socket: iovecs
        // over slices that outlive the call (sendmsg only reads them) and
        // the control message built above.
        let sent = unsafe { libc::sendmsg(sock.as_raw_fd(), &msg, libc::MSG_DONTWAIT) };
        if sent < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(pieces.len())
    }
}

#[cfg(not(target_os = "linux"))]
mod imp {
    use super::{Piece, RecvBatch, Sender};
    use mio::net::UdpSocket;
    use std::io;

    pub fn recv(sock: &UdpSocket, rb: &mut RecvBatch) -> io::Result<usize> {
        let cap = rb.cap;
        let n = sock.recv(&mut rb.bufs[..cap])?;
        rb.lens[0] = n;
        rb.truncated[0] = false;
        Ok(1)
    }

    pub fn send(sock: &UdpSocket, _tx: &mut Sender, pieces: &[Piece]) -> io::Result<usize> {
        let mut buf = Vec::new();
        for (i, p) in pieces.iter().enumerate() {
            buf.clear();
            buf.extend_from_slice(p.header);
            buf.extend_from_slice(p.payload);
            match sock.send(&buf) {
                Ok(_) => {}
                Err(e) if i == 0 => return Err(e),
                Err(_) => return Ok(i),
            }
        }
        Ok(pieces.len())
    }
}
