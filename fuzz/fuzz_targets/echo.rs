//! `echo`, `echo_with_buffer` and the resumable `Echo` over a scripted
//! stream: the input decides which, the buffer size, every read and write
//! chunk size, where calls are interrupted or would block, and the payload.
//! Property: the echoed bytes are the payload and the count is its length.
#![no_main]

use echo_server::scripted::{ReadStep, ScriptedStream, WriteStep};
use echo_server::{Echo, Status};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // Layout: [buf_len: 2][n_reads: 1][n_writes: 1][read steps][write steps][payload]
    let Some((header, rest)) = data.split_first_chunk::<4>() else {
        return;
    };
    // 0 selects `echo` itself (small buffer, then the large one); the top
    // bit selects the resumable `Echo` with that buffer size.
    let raw_buf_len = u16::from_le_bytes([header[0], header[1]]);
    let resumable = raw_buf_len & 0x8000 != 0;
    let (n_reads, n_writes) = (usize::from(header[2]), usize::from(header[3]));
    if rest.len() < n_reads + n_writes {
        return;
    }
    let (read_bytes, rest) = rest.split_at(n_reads);
    let (write_bytes, payload) = rest.split_at(n_writes);
    // Step byte 0 is an interrupt; 255 would block (resumable path only,
    // where it is meaningful); any other value is a chunk size limit.
    let reads = read_bytes.iter().map(|&b| match b {
        0 => ReadStep::Interrupted,
        255 if resumable => ReadStep::WouldBlock,
        n => ReadStep::Chunk(n.into()),
    });
    let writes = write_bytes.iter().map(|&b| match b {
        0 => WriteStep::Interrupted,
        255 if resumable => WriteStep::WouldBlock,
        n => WriteStep::Accept(n.into()),
    });
    let mut stream = ScriptedStream::new(payload.to_vec(), reads, writes);
    let buf_len = 1 + usize::from(raw_buf_len & 0x7fff) % 8192;
    let echoed = if resumable {
        // Each call gets a fresh scratch buffer of a varying size, as an
        // event loop lends whatever buffer it has.
        let mut echo = Echo::new();
        let mut calls = 0usize;
        loop {
            let len = 1 + (buf_len + calls * 7) % buf_len;
            calls += 1;
            assert!(calls <= 2 + n_reads + n_writes, "resume made no progress");
            match echo.resume(&mut stream, &mut vec![0; len]) {
                Ok(Status::Finished) => break Ok(echo.echoed()),
                Ok(Status::Blocked) => continue,
                Ok(_) => unreachable!("no other status exists yet"),
                Err(e) => break Err(e),
            }
        }
    } else if raw_buf_len == 0 {
        echo_server::echo(&mut stream)
    } else {
        echo_server::echo_with_buffer(&mut stream, &mut vec![0; buf_len])
    }
    .expect("a scripted stream without resets never fails");
    assert_eq!(stream.output(), payload, "echo differs from the payload");
    assert_eq!(echoed, payload.len() as u64, "wrong byte count");
});
