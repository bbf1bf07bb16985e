//! The PROXY protocol header parser, `proxy_protocol::parse_header`, on
//! arbitrary bytes, fed the way a connection receives them: every prefix in
//! turn. Properties: it never panics; a header found lies within the bytes
//! and the bounds; every shorter prefix of a header is `Incomplete` and the
//! header's own bytes give the same answer (so however the header is split
//! into segments, it is read the same); once a prefix is refused, every
//! longer one is too (a refused connection could not have been accepted
//! by waiting for more); `Incomplete` never outlasts `MAX_HEADER` bytes.
#![no_main]

use echo_server::proxy_protocol::{parse_header, Parsed, MAX_HEADER};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|bytes: &[u8]| {
    let whole = parse_header(bytes);
    let mut refused = None;
    for end in 0..=bytes.len() {
        let answer = parse_header(&bytes[..end]);
        if let Some(first) = refused {
            assert!(
                answer.is_err(),
                "refused at {first} bytes, then {answer:?} at {end}"
            );
        }
        match answer {
            Err(_) => refused = refused.or(Some(end)),
            Ok(Parsed::Incomplete) => assert!(end < MAX_HEADER, "{end} bytes still incomplete"),
            Ok(Parsed::Header { len, source }) => {
                assert!(len <= end && len <= MAX_HEADER, "{len} of {end}");
                assert_eq!(
                    parse_header(&bytes[..len]),
                    Ok(Parsed::Header { len, source })
                );
                assert_eq!(whole, answer, "more bytes changed the header");
                for shorter in 0..len {
                    assert_eq!(parse_header(&bytes[..shorter]), Ok(Parsed::Incomplete));
                }
                return;
            }
        }
    }
});
