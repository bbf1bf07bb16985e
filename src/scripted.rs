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
