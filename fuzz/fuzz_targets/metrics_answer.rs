//! The metrics endpoint's request handling, `metrics::answer`, fed the way
//! its loop feeds it: the bytes of one connection arriving in reads of
//! arbitrary sizes, answered at the first read that completes a head.
//!
//! Input: `[flags][request bytes]*`. Bit 0 of `flags` is what `/readyz`
//! says (ready or draining); the other bits pick the read sizes
//! (`1 + (flags >> 1) × k % 97`, varying per read).
//!
//! Properties: an answer comes by `MAX_HEAD` bytes at the latest, and it is
//! the one the whole input gets (bytes after a complete head never change
//! it); it is a well-formed HTTP/1.1 response (httparse reads it back) with
//! a known status, `Connection: close`, a `Content-Length` that is its
//! body's (or a `HEAD` answer without a body), `Allow` on a 405; and
//! readiness changes nothing but `/readyz`'s 200 into 503.
#![no_main]

use echo_server::metrics::{answer, Answer, MAX_HEAD};
use echo_server::Stats;
use libfuzzer_sys::fuzz_target;

/// Feeds `data` in reads as the loop does; returns the answer and the
/// bytes read by then.
fn serve(data: &[u8], read_key: u8, ready: bool) -> Option<(Answer, usize)> {
    let mut stats = Stats::default();
    stats.accepted = 7;
    stats.bytes_echoed = 1 << 40;
    let mut head: Vec<u8> = Vec::new();
    let mut at = 0;
    let mut reads = 0usize;
    while at < data.len() && head.len() < MAX_HEAD {
        reads += 1;
        let size = 1 + (usize::from(read_key) * reads) % 97;
        // A read never goes past the head buffer.
        let n = size.min(data.len() - at).min(MAX_HEAD - head.len());
        head.extend_from_slice(&data[at..at + n]);
        at += n;
        if let Some(a) = answer(&head, &stats, ready) {
            return Some((a, head.len()));
        }
    }
    assert!(head.len() < MAX_HEAD, "{MAX_HEAD} bytes read and no answer");
    None
}

fn check(a: &Answer) {
    let mut headers = [httparse::EMPTY_HEADER; 16];
    let mut response = httparse::Response::new(&mut headers);
    let end = match response.parse(&a.bytes) {
        Ok(httparse::Status::Complete(end)) => end,
        other => panic!(
            "not a response ({other:?}): {:?}",
            String::from_utf8_lossy(&a.bytes)
        ),
    };
    assert_eq!(response.version, Some(1));
    assert_eq!(response.code, Some(a.status));
    assert!(
        [200, 400, 404, 405, 431, 503].contains(&a.status),
        "status {}",
        a.status
    );
    let header = |name: &str| {
        response
            .headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .map(|h| std::str::from_utf8(h.value).expect("ASCII headers"))
    };
    assert_eq!(header("Connection"), Some("close"));
    let length: usize = header("Content-Length")
        .and_then(|v| v.parse().ok())
        .expect("a Content-Length");
    let body = a.bytes.len() - end;
    assert!(
        body == length || body == 0,
        "{body} bytes of body, {length} declared"
    );
    if a.status == 405 {
        assert_eq!(header("Allow"), Some("GET, HEAD"));
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&flags, request)) = data.split_first() else {
        return;
    };
    let ready = flags & 1 == 1;
    let got = serve(request, flags >> 1, ready);
    // The same answer whatever the reads, and for the whole input at once.
    let all_at_once = answer(request, &Stats::default(), ready).map(|a| a.status);
    assert_eq!(got.as_ref().map(|(a, _)| a.status), all_at_once);
    let Some((a, used)) = got else {
        return;
    };
    check(&a);
    // Bytes after the answer was decided change nothing.
    let again = serve(&request[..used], 1, ready).map(|(b, _)| b.status);
    assert_eq!(again, Some(a.status));
    // Readiness only turns /readyz's 200 into 503.
    let other = serve(request, flags >> 1, !ready).map(|(b, _)| b.status);
    let pair = if ready {
        (Some(a.status), other)
    } else {
        (other, Some(a.status))
    };
    assert!(
        pair.0 == pair.1 || pair == (Some(200), Some(503)),
        "ready {:?}, draining {:?}",
        pair.0,
        pair.1
    );
});
