//! The echo loop: the one function every transport and every test goes through.
//!
//! Invariant: nothing in this file knows about sockets. It sees a `Read + Write`
//! value and a buffer, so it can be driven by an in-memory mock in property
//! tests and fuzz targets exactly as it is driven by TCP or Unix streams.

use std::io::{self, ErrorKind, Read, Write};

/// Size of the buffer [`echo`] allocates: large enough that one `read` can take
/// a full socket receive batch, small enough to keep memory per connection low.
pub const DEFAULT_BUFFER_SIZE: usize = 64 * 1024;

/// Copies everything read from `stream` back to it until end of file, and
/// returns the number of bytes echoed.
///
/// Short reads and short writes are handled (every byte read is written back,
/// in order, before the next read), reads and writes interrupted by a signal
/// (`ErrorKind::Interrupted`) are retried, and the stream is flushed after
/// every chunk so that an interactive peer never waits on buffered data.
///
/// It returns `Ok` when `read` reports end of file (the peer closed or shut
/// down its write side); any other error ends the loop and is returned.
/// Bytes echoed before an error are not reported: wrap the stream to observe
/// progress.
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
    // On the heap, so that connection threads can run on small stacks.
    let mut buf = vec![0u8; DEFAULT_BUFFER_SIZE];
    echo_with_buffer(stream, &mut buf)
}

/// [`echo`] with a caller-provided buffer, which sets the largest chunk read
/// at once. Useful to reuse one buffer across streams.
///
/// # Errors
///
/// Returns `ErrorKind::InvalidInput` if `buf` is empty (no progress is
/// possible), `ErrorKind::WriteZero` if the stream accepts no more bytes, and
/// any other error from the stream as it is.
pub fn echo_with_buffer<S: Read + Write + ?Sized>(
    stream: &mut S,
    buf: &mut [u8],
) -> io::Result<u64> {
    if buf.is_empty() {
        return Err(io::Error::new(
            ErrorKind::InvalidInput,
            "echo buffer must not be empty",
        ));
    }
    let mut echoed: u64 = 0;
    loop {
        let n = match stream.read(buf) {
            Ok(0) => return Ok(echoed),
            Ok(n) => n,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        // `write_all` retries short writes and `Interrupted`, and turns a
        // write of zero bytes into `WriteZero` instead of looping forever.
        stream.write_all(&buf[..n])?;
        flush(stream)?;
        echoed += n as u64;
    }
}

fn flush<S: Write + ?Sized>(stream: &mut S) -> io::Result<()> {
    loop {
        match stream.flush() {
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            other => return other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    /// Reads from a script of chunks and errors, records what is written.
    struct Scripted {
        reads: Vec<io::Result<Vec<u8>>>,
        written: Vec<u8>,
        max_write: usize,
    }

    impl Read for Scripted {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            if self.reads.is_empty() {
                return Ok(0);
            }
            match self.reads.remove(0) {
                Ok(mut chunk) => {
                    let n = chunk.len().min(buf.len());
                    buf[..n].copy_from_slice(&chunk[..n]);
                    if n < chunk.len() {
                        self.reads.insert(0, Ok(chunk.split_off(n)));
                    }
                    Ok(n)
                }
                Err(e) => Err(e),
            }
        }
    }

    impl Write for Scripted {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            let n = buf.len().min(self.max_write);
            self.written.extend_from_slice(&buf[..n]);
            Ok(n)
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn echoes_short_reads_and_short_writes() {
        let mut s = Scripted {
            reads: vec![
                Ok(b"hel".to_vec()),
                Err(ErrorKind::Interrupted.into()),
                Ok(b"lo wor".to_vec()),
                Ok(b"ld".to_vec()),
            ],
            written: Vec::new(),
            max_write: 2,
        };
        assert_eq!(echo_with_buffer(&mut s, &mut [0; 4]).unwrap(), 11);
        assert_eq!(s.written, b"hello world");
    }

    #[test]
    fn read_error_is_returned() {
        let mut s = Scripted {
            reads: vec![Ok(b"ab".to_vec()), Err(ErrorKind::ConnectionReset.into())],
            written: Vec::new(),
            max_write: usize::MAX,
        };
        let err = echo(&mut s).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::ConnectionReset);
        assert_eq!(s.written, b"ab");
    }

    #[test]
    fn zero_length_write_is_an_error_not_a_spin() {
        let mut s = Scripted {
            reads: vec![Ok(b"abc".to_vec())],
            written: Vec::new(),
            max_write: 0,
        };
        assert_eq!(echo(&mut s).unwrap_err().kind(), ErrorKind::WriteZero);
    }

    #[test]
    fn empty_buffer_is_rejected() {
        let mut s = Cursor::new(Vec::new());
        assert_eq!(
            echo_with_buffer(&mut s, &mut []).unwrap_err().kind(),
            ErrorKind::InvalidInput
        );
    }

    #[test]
    fn empty_input_echoes_nothing() {
        let mut s = Scripted {
            reads: vec![],
            written: Vec::new(),
            max_write: 1,
        };
        assert_eq!(echo(&mut s).unwrap(), 0);
        assert!(s.written.is_empty());
    }
}
