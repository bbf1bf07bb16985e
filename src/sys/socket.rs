//! socket2 calls that take a buffer of possibly uninitialised bytes, given
//! a buffer of initialised ones.

use socket2::{MaybeUninitSlice, SockAddr, Socket};
use std::io;
use std::mem::MaybeUninit;

/// Receives one datagram into `buf` (`recvmsg(2)`): its length (cut at the
/// buffer's) and its source.
pub(crate) fn recv_from(socket: &Socket, buf: &mut [u8]) -> io::Result<(usize, SockAddr)> {
    // SAFETY: `recv_from_vectored` only writes initialised bytes, and
    // a `[u8]` is valid for any bytes written.
    let uninit = unsafe { &mut *(buf as *mut [u8] as *mut [MaybeUninit<u8>]) };
    let (len, _, from) = socket.recv_from_vectored(&mut [MaybeUninitSlice::new(uninit)])?;
    Ok((len, from))
}
