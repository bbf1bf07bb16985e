//! The bytes every connection sends, and so expects back.
//!
//! Each connection's byte stream is a window sliding over one shared table of
//! pseudo-random bytes: stream byte `i` of a connection whose base is `b` is
//! `table[(b + i) % PERIOD]`. That gives, at memcpy/memcmp speed and with no
//! per-connection memory:
//! - contents that differ per message and per connection (every connection
//!   starts at its own base, every message at a later offset), so an echo
//!   delivered to the wrong connection or in the wrong order is caught;
//! - writes straight from the table and checks by one slice comparison, so
//!   the client spends its share of the two cores on the network, not on
//!   generating or hashing bytes.
//!
//! `PERIOD` is prime, so a server that drops or repeats a chunk of any
//! power-of-two size (the usual buffer sizes) shifts the stream onto
//! different bytes and is caught; only a shift by a multiple of ~1 MiB could
//! line up again.

/// Length of the repeating pattern: the largest prime below 2^20.
pub const PERIOD: u64 = 1_048_573;

/// Largest slice [`Pattern::at`] hands out: the most one `write` sends or one
/// `read` receives. The table carries this many bytes past `PERIOD` so every
/// window is contiguous and no wrap-around copy is needed.
pub const MAX_CHUNK: usize = 256 * 1024;

/// The shared pattern table (about 1.3 MiB), built once per run.
pub struct Pattern {
    table: Box<[u8]>,
}

impl Pattern {
    /// Fills the table from a fixed seed, so runs are reproducible.
    pub fn new() -> Self {
        let period = PERIOD as usize;
        let mut table = vec![0u8; period + MAX_CHUNK];
        let mut state = 0x5eed_ec40_u64;
        for chunk in table[..period].chunks_mut(8) {
            let word = splitmix64(&mut state).to_le_bytes();
            chunk.copy_from_slice(&word[..chunk.len()]);
        }
        // The tail repeats the head, so a window crossing the end of the
        // period reads on as if it had wrapped around.
        table.copy_within(..MAX_CHUNK, period);
        Pattern {
            table: table.into_boxed_slice(),
        }
    }

    /// The `len` stream bytes starting at stream position `pos` (base
    /// included), at most [`MAX_CHUNK`] of them: callers never ask for more,
    /// and clamping keeps a bad length from ever indexing out of bounds.
    pub fn at(&self, pos: u64, len: usize) -> &[u8] {
        let start = (pos % PERIOD) as usize;
        &self.table[start..start + len.min(MAX_CHUNK)]
    }
}

/// Where connection (or attempt) `id` starts in the pattern: scattered
/// pseudo-randomly so neighbouring ids do not overlap for long stretches.
pub fn stream_base(id: u64) -> u64 {
    let mut state = id;
    splitmix64(&mut state) % PERIOD
}

/// SplitMix64: a tiny, well-mixed generator; no dependency needed for it.
fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_wrap_at_the_period() {
        let p = Pattern::new();
        assert_eq!(p.at(PERIOD + 5, 100), p.at(5, 100));
        assert_eq!(p.at(PERIOD - 3, 10).len(), 10);
        assert_eq!(p.at(0, MAX_CHUNK + 10).len(), MAX_CHUNK);
        // A window crossing the end of the period continues with its start.
        assert_eq!(&p.at(PERIOD - 3, MAX_CHUNK)[3..], p.at(0, MAX_CHUNK - 3));
        assert_eq!(p.at(PERIOD - 1, 1), p.at(2 * PERIOD - 1, 1));
    }

    #[test]
    fn consecutive_messages_and_connections_differ() {
        let p = Pattern::new();
        assert_ne!(p.at(stream_base(0), 16), p.at(stream_base(1), 16));
        assert_ne!(p.at(stream_base(0), 64), p.at(stream_base(0) + 64, 64));
    }
}
