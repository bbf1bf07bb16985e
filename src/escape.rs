//! Escaping of client bytes for `--log-data`: whatever a client sends, the
//! terminal only ever sees printable ASCII.

use std::fmt::Write as _;

/// Renders `bytes` as printable ASCII: printable characters stand for
/// themselves, `\t`, `\r`, `\n`, `\'`, `\"` and `\\` use their escapes, and
/// every other byte (control bytes, DEL, anything non-ASCII, so also invalid
/// UTF-8) becomes `\xNN`. [`unescape`] reverses it exactly.
///
/// # Examples
///
/// ```
/// assert_eq!(echo_server::escape(b"hi\n\x1b[2J\xff"), r"hi\n\x1b[2J\xff");
/// ```
pub fn escape(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len());
    // `escape_ascii` only emits printable ASCII; writing to a String cannot fail.
    let _ = write!(out, "{}", bytes.escape_ascii());
    out
}

/// Reverses [`escape`]. Returns `None` if `text` is not exactly something
/// [`escape`] could have produced (a stray backslash, a bad or needless `\x`
/// escape, a bare quote, a non-printable or non-ASCII character), so every
/// accepted text is the one canonical escape of its bytes.
///
/// # Examples
///
/// ```
/// let text = echo_server::escape(b"\x00ok\r\n");
/// assert_eq!(echo_server::unescape(&text).unwrap(), b"\x00ok\r\n");
/// assert_eq!(echo_server::unescape(r"\q"), None);
/// ```
pub fn unescape(text: &str) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(text.len());
    let mut bytes = text.bytes();
    while let Some(b) = bytes.next() {
        if b != b'\\' {
            // `escape` never leaves a quote bare, nor anything unprintable.
            if !(0x20..0x7f).contains(&b) || b == b'"' || b == b'\'' {
                return None;
            }
            out.push(b);
            continue;
        }
        match bytes.next()? {
            b't' => out.push(b'\t'),
            b'r' => out.push(b'\r'),
            b'n' => out.push(b'\n'),
            b'\'' => out.push(b'\''),
            b'"' => out.push(b'"'),
            b'\\' => out.push(b'\\'),
            b'x' => {
                let hi = hex_digit(bytes.next()?)?;
                let lo = hex_digit(bytes.next()?)?;
                let byte = hi << 4 | lo;
                // `escape` writes these bytes another way, never as `\xNN`.
                if (0x20..0x7f).contains(&byte) || matches!(byte, b'\t' | b'\r' | b'\n') {
                    return None;
                }
                out.push(byte);
            }
            _ => return None,
        }
    }
    Some(out)
}

fn hex_digit(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn escapes_control_bytes_and_invalid_utf8() {
        assert_eq!(
            escape(b"a\x00\x07\x1b\x7f\xc3\x28"),
            r"a\x00\x07\x1b\x7f\xc3("
        );
        assert_eq!(escape("é".as_bytes()), r"\xc3\xa9");
        assert_eq!(escape(b"\\\"'\t"), r#"\\\"\'\t"#);
    }

    #[test]
    fn rejects_malformed_escapes() {
        for bad in [
            r"\", r"\x4", r"\xZZ", r"\xAB", "\u{7f}", "é", "\n", r"\0", "\"", "'", r"\x55", r"\x0a",
        ] {
            assert_eq!(unescape(bad), None, "{bad:?}");
        }
    }

    proptest! {
        #[test]
        fn output_is_printable_ascii_and_round_trips(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let text = escape(&bytes);
            prop_assert!(text.bytes().all(|b| (0x20..0x7f).contains(&b)), "{text:?}");
            prop_assert_eq!(unescape(&text), Some(bytes));
        }
    }
}
