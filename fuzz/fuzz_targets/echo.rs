//! `echo` and `echo_with_buffer` over a scripted stream: the input decides
//! which, the buffer size, every read and write chunk size, where calls are
//! interrupted, and the payload.
//! Property: the echoed bytes are the payload and the count is its length.
#![no_main]

use echo_server::scripted::{ReadStep, ScriptedStream, WriteStep};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // Layout: [buf_len: 2][n_reads: 1][n_writes: 1][read steps][write steps][payload]
    let Some((header, rest)) = data.split_first_chunk::<4>() else {
        return;
    };
    // 0 selects `echo` itself (small buffer, then the large one).
    let raw_buf_len = u16::from_le_bytes([header[0], header[1]]);
    let (n_reads, n_writes) = (usize::from(header[2]), usize::from(header[3]));
    if rest.len() < n_reads + n_writes {
        return;
    }
    let (read_bytes, rest) = rest.split_at(n_reads);
    let (write_bytes, payload) = rest.split_at(n_writes);
    // Step byte 0 is an interrupt; any other value is a chunk size limit.
    let reads = read_bytes.iter().map(|&b| match b {
        0 => ReadStep::Interrupted,
        n => ReadStep::Chunk(n.into()),
    });
    let writes = write_bytes.iter().map(|&b| match b {
        0 => WriteStep::Interrupted,
        n => WriteStep::Accept(n.into()),
    });
    let mut stream = ScriptedStream::new(payload.to_vec(), reads, writes);
    let echoed = if raw_buf_len == 0 {
        echo_server::echo(&mut stream)
    } else {
        let buf_len = 1 + usize::from(raw_buf_len % 8192);
        echo_server::echo_with_buffer(&mut stream, &mut vec![0; buf_len])
    }
    .expect("a scripted stream without resets never fails");
    assert_eq!(stream.output(), payload, "echo differs from the payload");
    assert_eq!(echoed, payload.len() as u64, "wrong byte count");
});
