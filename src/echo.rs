//! The echo core: the one piece of code every transport, engine and test
//! goes through.
//!
//! [`Echo`] is a resumable state machine: it moves bytes from a `Read +
//! Write` until the stream would block, ends or fails, remembers what it
//! read but could not write yet, and continues exactly there on the next
//! call. The event engine drives it over non-blocking sockets; [`echo`] and
//! [`echo_with_buffer`] are the blocking API on top of it, which the thread
//! engine uses.
//!
//! Invariant: nothing in this file knows about sockets. It sees a `Read +
//! Write` value and a buffer, so it can be driven by an in-memory mock in
//! property tests and fuzz targets exactly as it is driven by TCP or Unix
//! streams.

use std::io::{self, ErrorKind, Read, Write};

/// Size of the buffer [`echo`] moves to once a client sends in bulk: large
/// enough that one `read` can take a full socket receive batch.
pub const DEFAULT_BUFFER_SIZE: usize = 64 * 1024;

/// Size of the buffer [`echo`] starts with, on the stack. Most echo traffic
/// is small messages; an idle or chatty connection then costs no heap at
/// all, which is what keeps thousands of idle connections cheap.
pub const SMALL_BUFFER_SIZE: usize = 1024;

/// A resumable echo: the state of one stream's echo between calls.
///
/// [`resume`](Echo::resume) reads into a scratch buffer the caller lends
/// and writes every chunk back before it reads again. When the stream
/// reports `WouldBlock`, it returns [`Status::Blocked`]; bytes read but not
/// yet written are kept here (and only then: an idle `Echo` owns no
/// buffer), so any scratch buffer can be lent to the next call. Nothing is
/// read while an earlier chunk is unwritten, so a client that does not read
/// its echo is held back by flow control and memory stays bounded by one
/// chunk.
///
/// # Examples
///
/// ```
/// use echo_server::{Echo, Status};
/// use std::io::{self, Read, Write};
///
/// /// Reads "ping", then would block once, then reads "pong" and ends.
/// struct Stream { reads: Vec<io::Result<&'static [u8]>>, out: Vec<u8> }
/// impl Read for Stream {
///     fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
///         if self.reads.is_empty() { return Ok(0) }
///         let data = self.reads.remove(0)?;
///         buf[..data.len()].copy_from_slice(data);
///         Ok(data.len())
///     }
/// }
/// impl Write for Stream {
///     fn write(&mut self, buf: &[u8]) -> io::Result<usize> { self.out.write(buf) }
///     fn flush(&mut self) -> io::Result<()> { Ok(()) }
/// }
///
/// let mut stream = Stream {
///     reads: vec![Ok(b"ping"), Err(io::ErrorKind::WouldBlock.into()), Ok(b"pong")],
///     out: Vec::new(),
/// };
/// let mut echo = Echo::new();
/// let mut scratch = [0u8; 16];
/// assert_eq!(echo.resume(&mut stream, &mut scratch)?, Status::Blocked);
/// assert_eq!(echo.resume(&mut stream, &mut scratch)?, Status::Finished);
/// assert_eq!(stream.out, b"pingpong");
/// assert_eq!(echo.echoed(), 8);
/// # Ok::<(), io::Error>(())
/// ```
#[derive(Debug, Default, Clone)]
pub struct Echo {
    /// Bytes read but not yet written, from `written` on. Empty (and
    /// without an allocation) whenever no echo is partly written.
    unwritten: Vec<u8>,
    written: usize,
    /// Every byte of the last chunk is written; the flush is still owed.
    unflushed: bool,
    echoed: u64,
}

/// Where [`Echo::resume`] stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Status {
    /// The stream would block: call `resume` again once it is ready
    /// (readable, or writable when [`Echo::is_writing`]).
    Blocked,
    /// End of file, and everything read has been written back and flushed.
    Finished,
}

/// What one [`Echo::step`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Step {
    /// Read a chunk of this many bytes, wrote all of it back and flushed.
    Echoed(usize),
    /// Wrote (and flushed) what an earlier call left unwritten; read
    /// nothing. Says nothing about what is waiting to be read.
    CaughtUp,
    /// The stream would block.
    Blocked,
    /// End of file; nothing is left to write.
    Finished,
}

impl Echo {
    /// A new echo, with nothing read yet.
    pub fn new() -> Echo {
        Echo::default()
    }

    /// An echo whose first bytes were read before it began (those that
    /// followed a PROXY protocol header in the same read): they are written
    /// back first, and nothing is read until they are.
    pub(crate) fn after(received: Vec<u8>) -> Echo {
        Echo {
            unwritten: received,
            ..Echo::default()
        }
    }

    /// Bytes written back so far.
    pub fn echoed(&self) -> u64 {
        self.echoed
    }

    /// Whether some bytes read are not yet written back (or not flushed):
    /// the echo is waiting for the stream to become writable, and reads
    /// nothing until then.
    pub fn is_writing(&self) -> bool {
        self.unflushed || self.written < self.unwritten.len()
    }

    /// Moves bytes until the stream would block, ends or fails.
    ///
    /// `scratch` is where reads land; it may be a different buffer on each
    /// call, and its length sets the largest chunk read at once.
    ///
    /// # Errors
    ///
    /// `ErrorKind::InvalidInput` if `scratch` is empty, `ErrorKind::WriteZero`
    /// if the stream accepts no more bytes, and any other error of the
    /// stream (except `Interrupted`, which is retried, and `WouldBlock`,
    /// which is [`Status::Blocked`]) as it is. After an error the echo
    /// cannot go on.
    pub fn resume<S: Read + Write + ?Sized>(
        &mut self,
        stream: &mut S,
        scratch: &mut [u8],
    ) -> io::Result<Status> {
        loop {
            match self.step(stream, scratch)? {
                Step::Echoed(_) | Step::CaughtUp => continue,
                Step::Blocked => return Ok(Status::Blocked),
                Step::Finished => return Ok(Status::Finished),
            }
        }
    }

    /// One chunk: first finishes what an earlier call left unwritten, then
    /// reads one chunk and writes it back. Engines call this directly to
    /// see chunk sizes (bulk detection) or to bound the work done for one
    /// connection before serving others.
    pub(crate) fn step<S: Read + Write + ?Sized>(
        &mut self,
        stream: &mut S,
        scratch: &mut [u8],
    ) -> io::Result<Step> {
        if scratch.is_empty() {
            return Err(io::Error::new(
                ErrorKind::InvalidInput,
                "echo buffer must not be empty",
            ));
        }
        if self.is_writing() {
            let chunk = self.unwritten.len();
            self.written += write_from(stream, &self.unwritten[self.written..], &mut self.echoed)?;
            if self.written < chunk {
                return Ok(Step::Blocked);
            }
            // Done with it: an idle connection holds no buffer.
            self.unwritten = Vec::new();
            self.written = 0;
            self.unflushed = true;
            return Ok(if self.flush(stream)? {
                Step::CaughtUp
            } else {
                Step::Blocked
            });
        }
        let n = loop {
            match stream.read(scratch) {
                Ok(n) => break n,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(Step::Blocked),
                Err(e) => return Err(e),
            }
        };
        if n == 0 {
            return Ok(Step::Finished);
        }
        let done = write_from(stream, &scratch[..n], &mut self.echoed)?;
        if done < n {
            // Copied out, so the caller's scratch buffer is free for other
            // streams while this one waits to be writable.
            self.unwritten = scratch[done..n].to_vec();
            self.written = 0;
            return Ok(Step::Blocked);
        }
        self.unflushed = true;
        Ok(if self.flush(stream)? {
            Step::Echoed(n)
        } else {
            Step::Blocked
        })
    }

    /// Flushes the owed flush. Returns `false` if the stream would block
    /// (the flush stays owed).
    fn flush<S: Write + ?Sized>(&mut self, stream: &mut S) -> io::Result<bool> {
        loop {
            match stream.flush() {
                Ok(()) => {
                    self.unflushed = false;
                    return Ok(true);
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(false),
                Err(e) => return Err(e),
            }
        }
    }
}

/// Writes `buf` until all of it is written or the stream would block;
/// returns how much was written and adds it to `echoed`.
fn write_from<S: Write + ?Sized>(
    stream: &mut S,
    buf: &[u8],
    echoed: &mut u64,
) -> io::Result<usize> {
    let mut done = 0;
    while done < buf.len() {
        match stream.write(&buf[done..]) {
            // A write of zero bytes would loop forever.
            Ok(0) => {
                return Err(io::Error::new(
                    ErrorKind::WriteZero,
                    "the stream accepted no bytes of the echo",
                ))
            }
            Ok(n) => {
                done += n;
                *echoed += n as u64;
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) if e.kind() == ErrorKind::WouldBlock => break,
            Err(e) => return Err(e),
        }
    }
    Ok(done)
}

/// Copies everything read from `stream` back to it until end of file, and
/// returns the number of bytes echoed.
///
/// Short reads and short writes are handled (every byte read is written back,
/// in order, before the next read), reads and writes interrupted by a signal
/// (`ErrorKind::Interrupted`) are retried, and the stream is flushed after
/// every chunk so that an interactive peer never waits on buffered data.
///
/// It starts with a small buffer ([`SMALL_BUFFER_SIZE`]) and moves to a heap
/// buffer of [`DEFAULT_BUFFER_SIZE`] the first time a read fills the small
/// one, so memory follows the traffic.
///
/// It returns `Ok` when `read` reports end of file (the peer closed or shut
/// down its write side); any other error ends the loop and is returned, and
/// so is `WouldBlock` (a blocking socket's timeout): use [`Echo`] to resume
/// non-blocking streams. Bytes echoed before an error are not reported:
/// wrap the stream to observe progress.
///
/// # Examples
///
/// ```
/// # fn main() -> std::io::Result<()> {
/// // Any `Read + Write` works; here a cursor reads "ping" and keeps the echo.
/// struct Loop { input: std::io::Cursor<Vec<u8>>, output: Vec<u8> }
/// impl std::io::Read for Loop {
///     fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> { self.input.read(buf) }
/// }
/// impl std::io::Write for Loop {
///     fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> { self.output.write(buf) }
///     fn flush(&mut self) -> std::io::Result<()> { Ok(()) }
/// }
///
/// let mut stream = Loop { input: std::io::Cursor::new(b"ping".to_vec()), output: Vec::new() };
/// let echoed = echo_server::echo(&mut stream)?;
/// assert_eq!(echoed, 4);
/// assert_eq!(stream.output, b"ping");
/// # Ok(())
/// # }
/// ```
pub fn echo<S: Read + Write + ?Sized>(stream: &mut S) -> io::Result<u64> {
    let mut echo = Echo::new();
    match echo_until_bulk(&mut echo, stream)? {
        Progress::Done => Ok(echo.echoed()),
        Progress::Bulk => {
            let mut big = vec![0u8; DEFAULT_BUFFER_SIZE];
            finish(&mut echo, stream, &mut big)
        }
    }
}

/// How [`echo_until_bulk`] stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Progress {
    /// End of file: the echo is complete.
    Done,
    /// A read filled the small buffer: the client sends in bulk. The rest
    /// is for a bulk engine (such as [`echo_with_buffer`] with a large
    /// buffer).
    Bulk,
}

/// The first phase of [`echo`] over a blocking stream: echoes through a
/// [`SMALL_BUFFER_SIZE`] stack buffer until end of file or until a read
/// fills it. Transports with a faster way to move bulk data (Linux
/// `splice`) take over from there; [`Echo::echoed`] tells how much was
/// echoed so far.
///
/// # Errors
///
/// As [`echo_with_buffer`].
pub fn echo_until_bulk<S: Read + Write + ?Sized>(
    echo: &mut Echo,
    stream: &mut S,
) -> io::Result<Progress> {
    let mut small = [0u8; SMALL_BUFFER_SIZE];
    loop {
        match echo.step(stream, &mut small)? {
            Step::Finished => return Ok(Progress::Done),
            // Bulk traffic: a bigger buffer means fewer system calls.
            Step::Echoed(n) if n == small.len() => return Ok(Progress::Bulk),
            Step::Echoed(_) | Step::CaughtUp => {}
            Step::Blocked => return Err(ErrorKind::WouldBlock.into()),
        }
    }
}

/// [`echo`] with a caller-provided buffer, which sets the largest chunk read
/// at once. Useful to reuse one buffer across streams.
///
/// # Errors
///
/// Returns `ErrorKind::InvalidInput` if `buf` is empty (no progress is
/// possible), `ErrorKind::WriteZero` if the stream accepts no more bytes,
/// `ErrorKind::WouldBlock` if the stream would block (a timeout on a
/// blocking socket), and any other error from the stream as it is.
pub fn echo_with_buffer<S: Read + Write + ?Sized>(
    stream: &mut S,
    buf: &mut [u8],
) -> io::Result<u64> {
    finish(&mut Echo::new(), stream, buf)
}

/// Runs `echo` to the end over a blocking stream.
fn finish<S: Read + Write + ?Sized>(
    echo: &mut Echo,
    stream: &mut S,
    buf: &mut [u8],
) -> io::Result<u64> {
    match echo.resume(stream, buf)? {
        Status::Finished => Ok(echo.echoed()),
        Status::Blocked => Err(ErrorKind::WouldBlock.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::scripted::{ReadStep, ScriptedStream, WriteStep};
    use proptest::collection::vec;
    use proptest::prelude::*;

    /// The trivially correct reference: echoing `input` gives back `input`,
    /// and reports its length.
    fn reference(input: &[u8]) -> (Vec<u8>, u64) {
        (input.to_vec(), input.len() as u64)
    }

    #[test]
    fn echoes_short_reads_and_short_writes() {
        let mut s = ScriptedStream::new(
            b"hello world".to_vec(),
            [
                ReadStep::Chunk(3),
                ReadStep::Interrupted,
                ReadStep::Chunk(6),
            ],
            [
                WriteStep::Accept(2),
                WriteStep::Interrupted,
                WriteStep::Accept(1),
            ],
        );
        assert_eq!(echo_with_buffer(&mut s, &mut [0; 4]).unwrap(), 11);
        assert_eq!(s.output(), b"hello world");
    }

    /// `echo_until_bulk` hands over exactly when a read fills the small
    /// buffer, and not before: reads one byte short of it never do.
    #[test]
    fn bulk_is_a_read_that_fills_the_small_buffer() {
        let input: Vec<u8> = (0..3 * SMALL_BUFFER_SIZE).map(|i| i as u8).collect();
        let short = ReadStep::Chunk(SMALL_BUFFER_SIZE - 1);
        let mut s = ScriptedStream::new(input.clone(), [short, short, short, short], []);
        let mut state = Echo::new();
        assert_eq!(echo_until_bulk(&mut state, &mut s).unwrap(), Progress::Done);
        assert_eq!(
            (state.echoed(), s.output()),
            (input.len() as u64, &input[..])
        );

        let full = ReadStep::Chunk(SMALL_BUFFER_SIZE);
        let mut s = ScriptedStream::new(input.clone(), [short, full], []);
        let mut state = Echo::new();
        assert_eq!(echo_until_bulk(&mut state, &mut s).unwrap(), Progress::Bulk);
        let echoed = 2 * SMALL_BUFFER_SIZE - 1;
        assert_eq!(
            (state.echoed(), s.output()),
            (echoed as u64, &input[..echoed])
        );
        // The bulk engine goes on from there.
        assert_eq!(
            finish(&mut state, &mut s, &mut [0; 100]).unwrap(),
            input.len() as u64
        );
        assert_eq!(s.output(), &input[..]);
    }

    #[test]
    fn read_error_is_returned_after_echoing_what_came_before() {
        let mut s = ScriptedStream::new(
            b"abcdef".to_vec(),
            [ReadStep::Chunk(2), ReadStep::Reset],
            [],
        );
        let err = echo(&mut s).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::ConnectionReset);
        assert_eq!(s.output(), b"ab");
    }

    #[test]
    fn zero_length_write_is_an_error_not_a_spin() {
        /// Has 10 bytes to read, accepts no writes.
        struct Full(u8);
        impl Read for Full {
            fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
                if self.0 == 0 {
                    return Ok(0);
                }
                self.0 -= 1;
                buf[0] = b'x';
                Ok(1)
            }
        }
        impl Write for Full {
            fn write(&mut self, _: &[u8]) -> io::Result<usize> {
                Ok(0)
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let mut stream = Full(10);
        assert_eq!(echo(&mut stream).unwrap_err().kind(), ErrorKind::WriteZero);
        assert_eq!(stream.0, 9, "gave up at the first refused write");
    }

    /// Bytes written become visible only on flush; reading the next chunk
    /// while some are unflushed is a protocol bug (the peer would wait).
    struct FlushChecked {
        input: Vec<u8>,
        unflushed: usize,
        visible: Vec<u8>,
        flush_error: Option<ErrorKind>,
        failed_flushes: u32,
    }

    impl Read for FlushChecked {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            assert_eq!(self.unflushed, 0, "read again before flushing the echo");
            let n = self.input.len().min(buf.len()).min(3);
            buf[..n].copy_from_slice(&self.input[..n]);
            self.input.drain(..n);
            Ok(n)
        }
    }

    impl Write for FlushChecked {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.unflushed += buf.len();
            self.visible.extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            if let Some(kind) = self.flush_error {
                self.failed_flushes += 1;
                assert!(
                    self.failed_flushes < 100,
                    "a failed flush is retried forever"
                );
                return Err(kind.into());
            }
            self.unflushed = 0;
            Ok(())
        }
    }

    #[test]
    fn every_chunk_is_flushed_before_the_next_read() {
        let mut s = FlushChecked {
            input: b"one two three".to_vec(),
            unflushed: 0,
            visible: Vec::new(),
            flush_error: None,
            failed_flushes: 0,
        };
        assert_eq!(echo(&mut s).unwrap(), 13);
        assert_eq!(s.visible, b"one two three");
        assert_eq!(s.unflushed, 0);
    }

    #[test]
    fn a_failed_flush_is_returned_not_retried() {
        let mut s = FlushChecked {
            input: b"abc".to_vec(),
            unflushed: 0,
            visible: Vec::new(),
            flush_error: Some(ErrorKind::BrokenPipe),
            failed_flushes: 0,
        };
        assert_eq!(echo(&mut s).unwrap_err().kind(), ErrorKind::BrokenPipe);
    }

    #[test]
    fn empty_buffer_is_rejected() {
        let mut s = ScriptedStream::new(b"x".to_vec(), [], []);
        let err = echo_with_buffer(&mut s, &mut []).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidInput);
    }

    #[test]
    fn empty_input_echoes_nothing() {
        let mut s = ScriptedStream::new(Vec::new(), [], []);
        assert_eq!(echo(&mut s).unwrap(), 0);
        assert!(s.output().is_empty());
    }

    #[test]
    fn resumes_exactly_where_it_would_block_and_idles_without_a_buffer() {
        let mut s = ScriptedStream::new(
            b"abcdefgh".to_vec(),
            [ReadStep::Chunk(4), ReadStep::WouldBlock],
            [
                WriteStep::Accept(1),
                WriteStep::WouldBlock,
                WriteStep::Accept(3),
                WriteStep::WouldBlock, // the flush
            ],
        );
        let mut echo = Echo::new();
        let mut scratch = [0u8; 8];
        // Wrote "a", then the write blocked: "bcd" is kept.
        assert_eq!(echo.resume(&mut s, &mut scratch).unwrap(), Status::Blocked);
        assert!(echo.is_writing());
        assert_eq!((s.output(), echo.echoed()), (&b"a"[..], 1));
        assert_eq!(echo.unwritten, b"bcd");
        // Blocked at the flush after writing "bcd": nothing read meanwhile.
        assert_eq!(echo.resume(&mut s, &mut scratch).unwrap(), Status::Blocked);
        assert!(echo.is_writing());
        assert_eq!(s.consumed(), b"abcd");
        assert_eq!(s.output(), b"abcd");
        // Flushed; then the read would block: idle, and no buffer held.
        let mut other_scratch = [0u8; 3];
        assert_eq!(
            echo.resume(&mut s, &mut other_scratch).unwrap(),
            Status::Blocked
        );
        assert!(!echo.is_writing());
        assert_eq!(echo.unwritten.capacity(), 0);
        assert_eq!(
            echo.resume(&mut s, &mut other_scratch).unwrap(),
            Status::Finished
        );
        assert_eq!((s.output(), echo.echoed()), (&b"abcdefgh"[..], 8));
    }

    fn read_step() -> impl Strategy<Value = ReadStep> {
        prop_oneof![
            6 => (1usize..300).prop_map(ReadStep::Chunk),
            1 => (1usize..4).prop_map(ReadStep::Chunk),
            1 => Just(ReadStep::Interrupted),
        ]
    }

    fn write_step() -> impl Strategy<Value = WriteStep> {
        prop_oneof![
            6 => (1usize..300).prop_map(WriteStep::Accept),
            1 => (1usize..4).prop_map(WriteStep::Accept),
            1 => Just(WriteStep::Interrupted),
        ]
    }

    fn nonblocking_read_step() -> impl Strategy<Value = ReadStep> {
        prop_oneof![
            4 => read_step(),
            1 => Just(ReadStep::WouldBlock),
        ]
    }

    fn nonblocking_write_step() -> impl Strategy<Value = WriteStep> {
        prop_oneof![
            4 => write_step(),
            1 => Just(WriteStep::WouldBlock),
        ]
    }

    proptest! {
        /// Any pattern of `WouldBlock` on reads, writes and flushes, with a
        /// different scratch buffer lent on every call: resuming until the
        /// end gives exactly the input, in order, with the right count; a
        /// blocked echo never holds more than one chunk, and holds no
        /// buffer at all while it waits to read.
        #[test]
        fn resumed_echo_matches_the_reference(
            input in vec(any::<u8>(), 0..4096),
            reads in vec(nonblocking_read_step(), 0..96),
            writes in vec(nonblocking_write_step(), 0..96),
            scratch_lens in vec(1usize..600, 1..8),
        ) {
            let mut stream = ScriptedStream::new(input.clone(), reads, writes);
            let mut echo = Echo::new();
            let mut calls = 0;
            loop {
                let len = scratch_lens[calls % scratch_lens.len()];
                let max_len = *scratch_lens.iter().max().unwrap();
                calls += 1;
                prop_assert!(calls < 10_000, "no progress");
                match echo.resume(&mut stream, &mut vec![0; len]).unwrap() {
                    Status::Finished => break,
                    Status::Blocked => {
                        let held = stream.consumed().len() - stream.output().len();
                        prop_assert!(held <= max_len, "holds {} bytes", held);
                        prop_assert_eq!(held, echo.unwritten.len() - echo.written);
                        if !echo.is_writing() {
                            prop_assert_eq!(echo.unwritten.capacity(), 0);
                        }
                    }
                }
            }
            let (expected, count) = reference(&input);
            prop_assert_eq!(stream.output(), &expected[..]);
            prop_assert_eq!(echo.echoed(), count);
            prop_assert!(!echo.is_writing());
        }

        /// Whatever the chunking, interrupts and buffer size, the output is
        /// the input and the count is its length.
        #[test]
        fn echo_matches_the_reference(
            input in vec(any::<u8>(), 0..4096),
            reads in vec(read_step(), 0..64),
            writes in vec(write_step(), 0..64),
            buf_len in prop_oneof![1usize..8, 1usize..4096],
        ) {
            let mut stream = ScriptedStream::new(input.clone(), reads, writes);
            let echoed = echo_with_buffer(&mut stream, &mut vec![0; buf_len]).unwrap();
            let (expected, count) = reference(&input);
            prop_assert_eq!(stream.output(), &expected[..]);
            prop_assert_eq!(echoed, count);
        }

        /// `echo` itself (small buffer first, then the large one once a read
        /// fills it) matches the reference too.
        #[test]
        fn adaptive_echo_matches_the_reference(
            input in vec(any::<u8>(), 0..8192),
            reads in vec(read_step(), 0..64),
            writes in vec(write_step(), 0..64),
        ) {
            let mut stream = ScriptedStream::new(input.clone(), reads, writes);
            let echoed = echo(&mut stream).unwrap();
            let (expected, count) = reference(&input);
            prop_assert!(stream.output() == &expected[..]);
            prop_assert_eq!(echoed, count);
        }

        /// A read that fails ends the loop with that error, after every byte
        /// read before it was written back.
        #[test]
        fn a_failed_read_ends_after_echoing_all_earlier_bytes(
            input in vec(any::<u8>(), 0..2048),
            mut reads in vec(read_step(), 0..32),
            fail_at in any::<prop::sample::Index>(),
            writes in vec(write_step(), 0..32),
            buf_len in 1usize..512,
        ) {
            let at = fail_at.index(reads.len() + 1);
            reads.insert(at, ReadStep::Reset);
            let mut stream = ScriptedStream::new(input, reads, writes);
            let result = echo_with_buffer(&mut stream, &mut vec![0; buf_len]);
            // The script may reach end of file before the failing step.
            match result {
                Ok(n) => prop_assert_eq!(n as usize, stream.consumed().len()),
                Err(e) => prop_assert_eq!(e.kind(), ErrorKind::ConnectionReset),
            }
            prop_assert_eq!(stream.output(), stream.consumed());
        }
    }
}
