//! The `--log-data` escaper. Properties: the output is printable ASCII only
//! (nothing a client sends reaches the terminal raw), it unescapes back to
//! the input exactly, and `unescape` never panics on arbitrary text.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = echo_server::escape(data);
    assert!(
        text.bytes().all(|b| (0x20..0x7f).contains(&b)),
        "non-printable output: {text:?}"
    );
    assert_eq!(echo_server::unescape(&text).as_deref(), Some(data));
    if let Ok(s) = std::str::from_utf8(data) {
        // Whatever unescape accepts, escaping it again gives the same text.
        if let Some(bytes) = echo_server::unescape(s) {
            assert_eq!(echo_server::escape(&bytes), s);
        }
    }
});
