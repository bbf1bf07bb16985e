//! What one UDP datagram of `echo-bench udp` carries, and how a reply is
//! checked against it.
//!
//! A datagram of `size` bytes is a 16-byte header, then `size - 16` bytes of
//! the shared [`Pattern`]:
//!
//! | bytes | field |
//! |---|---|
//! | 0..4 | the run's magic number (little-endian), random per run |
//! | 4..8 | the sending socket's id |
//! | 8..16 | the socket's sequence number for this datagram |
//! | 16.. | pattern bytes from a position derived from socket id and sequence |
//!
//! So a reply is identified by its header alone, and its payload tells
//! whether it was damaged: a reply of another size, with a foreign magic, a
//! sequence number never sent, or a payload that is not the one belonging
//! to its header is corrupt; a correct reply arriving on another socket than
//! the one that sent it is cross-talk. Duplicates are told by the caller,
//! which remembers which sequence numbers were answered.

use crate::pattern::{stream_base, Pattern, PERIOD};
use std::fmt;

/// Header length: magic, socket id, sequence number.
pub const HEADER: usize = 16;

/// Smallest `--size` for UDP: the header must fit.
pub const MIN_SIZE: u64 = HEADER as u64;

/// Largest `--size` for UDP: the most an IPv4 UDP datagram can carry
/// (65,535 minus 8 bytes of UDP and 20 of IP header).
pub const MAX_SIZE: u64 = 65_507;

/// Why a reply is not an answer to anything sent. Every one of these makes
/// the run fail (exit 1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Not `size` bytes long.
    WrongSize { got: usize, want: usize },
    /// Header or payload damaged, or a sequence number never sent.
    Corrupted { seq: u64 },
    /// An intact datagram that socket `from` sent, delivered to another.
    CrossTalk { from: u32 },
    /// A second answer to the same datagram.
    Duplicate { seq: u64 },
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Fault::WrongSize { got, want } => {
                write!(f, "a {got} byte reply to {want} byte datagrams")
            }
            Fault::Corrupted { seq } => {
                write!(f, "a corrupted reply (header says sequence number {seq})")
            }
            Fault::CrossTalk { from } => {
                write!(f, "a reply to a datagram that socket {from} sent")
            }
            Fault::Duplicate { seq } => {
                write!(f, "a second reply to sequence number {seq}")
            }
        }
    }
}

/// The layout every datagram of a run shares.
#[derive(Debug, Clone, Copy)]
pub struct Format {
    pub magic: u32,
    /// Whole datagram, header included; `MIN_SIZE..=MAX_SIZE`.
    pub size: usize,
}

impl Format {
    /// The header of datagram `seq` of socket `socket`.
    pub fn header(&self, socket: u32, seq: u64) -> [u8; HEADER] {
        let mut h = [0u8; HEADER];
        h[0..4].copy_from_slice(&self.magic.to_le_bytes());
        h[4..8].copy_from_slice(&socket.to_le_bytes());
        h[8..16].copy_from_slice(&seq.to_le_bytes());
        h
    }

    /// The payload of datagram `seq` of socket `socket` (`size - HEADER`
    /// bytes, straight from the pattern table).
    pub fn payload<'p>(&self, pattern: &'p Pattern, socket: u32, seq: u64) -> &'p [u8] {
        let len = self.size - HEADER;
        // Consecutive datagrams start `len` bytes apart in the pattern, as
        // consecutive TCP messages do; kept below 2^40, so no overflow.
        let step = (seq % PERIOD) * (len as u64 % PERIOD);
        pattern.at(stream_base(u64::from(socket)) + step, len)
    }

    /// Checks a reply that socket `socket` received (`truncated`: longer
    /// than the buffer); `next_seq` is the first sequence number it has not
    /// sent yet. Returns the sequence number it answers.
    pub fn check(
        &self,
        pattern: &Pattern,
        socket: u32,
        next_seq: u64,
        data: &[u8],
        truncated: bool,
    ) -> Result<u64, Fault> {
        if data.len() != self.size || truncated {
            return Err(Fault::WrongSize {
                got: data.len(),
                want: self.size,
            });
        }
        let word = |r: std::ops::Range<usize>| {
            let mut b = [0u8; 8];
            b[..r.len()].copy_from_slice(&data[r]);
            u64::from_le_bytes(b)
        };
        let (magic, from, seq) = (word(0..4) as u32, word(4..8) as u32, word(8..16));
        let intact = magic == self.magic && data[HEADER..] == *self.payload(pattern, from, seq);
        if !intact {
            return Err(Fault::Corrupted { seq });
        }
        if from != socket {
            return Err(Fault::CrossTalk { from });
        }
        if seq >= next_seq {
            return Err(Fault::Corrupted { seq });
        }
        Ok(seq)
    }
}

/// A magic number for this run, so stray datagrams of an earlier run (or
/// of anything else) are never taken for replies.
pub fn run_magic() -> u32 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    let mixed = stream_base(nanos ^ (u64::from(std::process::id()) << 32));
    mixed as u32 | 1
}

#[cfg(test)]
mod tests {
    use super::*;

    fn datagram(f: &Format, p: &Pattern, socket: u32, seq: u64) -> Vec<u8> {
        let mut d = f.header(socket, seq).to_vec();
        d.extend_from_slice(f.payload(p, socket, seq));
        d
    }

    #[test]
    fn replies_are_told_apart() {
        let p = Pattern::new();
        let f = Format {
            magic: 0x1234_5679,
            size: 64,
        };
        let d = datagram(&f, &p, 3, 7);
        assert_eq!(d.len(), 64);
        assert_eq!(f.check(&p, 3, 8, &d, false), Ok(7));
        // Never sent yet.
        assert_eq!(
            f.check(&p, 3, 7, &d, false),
            Err(Fault::Corrupted { seq: 7 })
        );
        // Sent by socket 3, arrived at socket 4.
        assert_eq!(
            f.check(&p, 4, 8, &d, false),
            Err(Fault::CrossTalk { from: 3 })
        );
        assert_eq!(
            f.check(&p, 3, 8, &d[..63], false),
            Err(Fault::WrongSize { got: 63, want: 64 })
        );
        assert!(f.check(&p, 3, 8, &d, true).is_err());
        for at in [0, 5, 9, 16, 63] {
            let mut bad = d.clone();
            bad[at] ^= 1;
            assert!(
                matches!(f.check(&p, 3, 8, &bad, false), Err(Fault::Corrupted { .. })),
                "flip at {at}"
            );
        }
        // Neighbouring datagrams and sockets carry different payloads.
        assert_ne!(f.payload(&p, 3, 7), f.payload(&p, 3, 8));
        assert_ne!(f.payload(&p, 3, 7), f.payload(&p, 4, 7));
    }

    #[test]
    fn header_only_and_largest_datagrams() {
        let p = Pattern::new();
        for size in [HEADER, MAX_SIZE as usize] {
            let f = Format { magic: 9, size };
            let d = datagram(&f, &p, 0, u64::MAX - 1);
            assert_eq!(d.len(), size);
            assert_eq!(f.check(&p, 0, u64::MAX, &d, false), Ok(u64::MAX - 1));
        }
    }
}
