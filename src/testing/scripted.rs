//! An in-memory `Read + Write` stream whose behaviour follows a script: how
//! many bytes each `read` and `write` takes, where calls are interrupted,
//! where a read fails. It is how the property tests and fuzz targets drive
//! [`echo`](crate::echo) through every short-read and short-write pattern.
//!
//! Compiled for tests and with the `scripted` feature (used by `fuzz/`).

use std::collections::VecDeque;
use std::io::{self, ErrorKind, Read, Write};

/// What the next `read` does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadStep {
    /// Return at most this many bytes (at least 1 while input remains: 0
    /// would mean end of file).
    Chunk(usize),
    /// Fail with `ErrorKind::Interrupted`, to be retried.
    Interrupted,
    /// Fail with `ErrorKind::ConnectionReset`: the peer went away.
    Reset,
    /// Fail with `ErrorKind::WouldBlock`: a non-blocking stream with
    /// nothing to read yet.
    WouldBlock,
}

/// What the next `write` (or `flush`) does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteStep {
    /// Accept at most this many bytes (at least 1).
    Accept(usize),
    /// Fail with `ErrorKind::Interrupted`, to be retried.
    Interrupted,
    /// Fail with `ErrorKind::WouldBlock`: a non-blocking stream whose send
    /// buffer is full.
    WouldBlock,
}

/// A stream that reads `input` and records what is written, one scripted
/// step per call. When a script runs out, reads return as much as fits and
/// writes take everything. After the input is consumed, reads return 0.
#[derive(Debug, Clone, Default)]
pub struct ScriptedStream {
    input: Vec<u8>,
    consumed: usize,
    reads: VecDeque<ReadStep>,
    writes: VecDeque<WriteStep>,
    output: Vec<u8>,
}

impl ScriptedStream {
    /// A stream that will read `input` following `reads` and take writes
    /// following `writes`.
    pub fn new(
        input: Vec<u8>,
        reads: impl IntoIterator<Item = ReadStep>,
        writes: impl IntoIterator<Item = WriteStep>,
    ) -> ScriptedStream {
        ScriptedStream {
            input,
            consumed: 0,
            reads: reads.into_iter().collect(),
            writes: writes.into_iter().collect(),
            output: Vec::new(),
        }
    }

    /// Everything written so far.
    pub fn output(&self) -> &[u8] {
        &self.output
    }

    /// The input bytes handed out by `read` so far.
    pub fn consumed(&self) -> &[u8] {
        &self.input[..self.consumed]
    }
}

impl Read for ScriptedStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let left = self.input.len() - self.consumed;
        let limit = match self.reads.pop_front() {
            Some(ReadStep::Interrupted) => return Err(ErrorKind::Interrupted.into()),
            Some(ReadStep::Reset) => return Err(ErrorKind::ConnectionReset.into()),
            Some(ReadStep::WouldBlock) => return Err(ErrorKind::WouldBlock.into()),
            Some(ReadStep::Chunk(n)) => n.max(1),
            None => usize::MAX,
        };
        let n = left.min(buf.len()).min(limit);
        buf[..n].copy_from_slice(&self.input[self.consumed..self.consumed + n]);
        self.consumed += n;
        Ok(n)
    }
}

impl Write for ScriptedStream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let limit = match self.writes.pop_front() {
            Some(WriteStep::Interrupted) => return Err(ErrorKind::Interrupted.into()),
            Some(WriteStep::WouldBlock) => return Err(ErrorKind::WouldBlock.into()),
            Some(WriteStep::Accept(n)) => n.max(1),
            None => usize::MAX,
        };
        let n = buf.len().min(limit);
        self.output.extend_from_slice(&buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        // Flushes can be interrupted or blocked too; they consume such a
        // step, and leave chunk sizes to the writes.
        match self.writes.front() {
            Some(WriteStep::Interrupted) => {
                self.writes.pop_front();
                Err(ErrorKind::Interrupted.into())
            }
            Some(WriteStep::WouldBlock) => {
                self.writes.pop_front();
                Err(ErrorKind::WouldBlock.into())
            }
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The stream does exactly what its script says, step by step: the
    /// properties are only as strict as this.
    #[test]
    fn follows_its_script_step_by_step() {
        let mut s = ScriptedStream::new(
            b"abcdefgh".to_vec(),
            [
                ReadStep::Chunk(3),
                ReadStep::Interrupted,
                ReadStep::WouldBlock,
                ReadStep::Chunk(0),
                ReadStep::Reset,
            ],
            [
                WriteStep::Accept(2),
                WriteStep::Interrupted,
                WriteStep::WouldBlock,
                WriteStep::Accept(0),
            ],
        );
        let mut buf = [0u8; 16];
        assert_eq!(s.read(&mut buf).unwrap(), 3);
        assert_eq!(&buf[..3], b"abc");
        assert_eq!(s.consumed(), b"abc");
        assert_eq!(s.read(&mut buf).unwrap_err().kind(), ErrorKind::Interrupted);
        assert_eq!(s.read(&mut buf).unwrap_err().kind(), ErrorKind::WouldBlock);
        // A chunk of 0 still moves a byte: 0 would mean end of file.
        assert_eq!(s.read(&mut buf).unwrap(), 1);
        assert_eq!(&buf[..1], b"d");
        assert_eq!(
            s.read(&mut buf).unwrap_err().kind(),
            ErrorKind::ConnectionReset
        );
        // Script done: as much as fits, then end of file.
        assert_eq!(s.read(&mut buf[..2]).unwrap(), 2);
        assert_eq!(s.read(&mut buf).unwrap(), 2);
        assert_eq!(&buf[..2], b"gh");
        assert_eq!(s.consumed(), b"abcdefgh");
        assert_eq!(s.read(&mut buf).unwrap(), 0);

        // A flush before an ordinary write step leaves it to the write.
        s.flush().unwrap();
        assert_eq!(s.write(b"xyz").unwrap(), 2);
        // Flushes take interrupted and blocked steps.
        assert_eq!(s.flush().unwrap_err().kind(), ErrorKind::Interrupted);
        assert_eq!(s.flush().unwrap_err().kind(), ErrorKind::WouldBlock);
        assert_eq!(s.write(b"z").unwrap(), 1, "Accept(0) still takes a byte");
        assert_eq!(s.write(b"rest").unwrap(), 4);
        assert_eq!(s.output(), b"xyzrest");
        s.flush().unwrap();

        let mut s = ScriptedStream::new(
            Vec::new(),
            [],
            [WriteStep::Interrupted, WriteStep::WouldBlock],
        );
        assert_eq!(s.write(b"a").unwrap_err().kind(), ErrorKind::Interrupted);
        assert_eq!(s.write(b"a").unwrap_err().kind(), ErrorKind::WouldBlock);
        assert_eq!(s.write(b"ab").unwrap(), 2);
        assert_eq!(s.output(), b"ab");
    }
}
