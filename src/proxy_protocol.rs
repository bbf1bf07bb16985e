//! The PROXY protocol (HAProxy's, versions 1 and 2): the header a load
//! balancer puts before a connection's first byte to say who the client
//! really is. [`parse_header`] reads it from the bytes received so far,
//! without allocating, and says how long it is, so that the header is
//! consumed and never echoed.
//!
//! Written here rather than taken from a crate: the format is small and
//! fixed, and what the server needs is narrower than a general parser: an
//! answer after every chunk (complete, too short yet, or wrong), a hard
//! bound on the header's length, and nothing kept of the TLVs. The
//! properties in the tests check it against an encoder that follows the
//! specification, and `fuzz/fuzz_targets/proxy_parse_header.rs` feeds it
//! arbitrary bytes.
//!
//! Specification: <https://www.haproxy.org/download/2.9/doc/proxy-protocol.txt>.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// The longest version 1 header, `\r\n` included (the specification's
/// bound: `PROXY UNKNOWN` with two IPv6 addresses and ports).
pub const MAX_V1_HEADER: usize = 107;

/// The longest version 2 header accepted: its 16 fixed bytes and a declared
/// length of at most this less 16. The addresses take at most 216 bytes
/// (`AF_UNIX`); the rest is TLVs (a balancer's TLS details, a cloud's
/// endpoint ID), which real balancers keep to a few hundred bytes. A
/// longer one is refused rather than buffered.
pub const MAX_V2_HEADER: usize = 1024;

/// The longest header of either version: what a connection may have to
/// hold before it knows.
pub const MAX_HEADER: usize = MAX_V2_HEADER;

/// The twelve bytes every version 2 header starts with.
const V2_SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";

/// What the bytes received so far hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Parsed {
    /// A header may still come: every byte so far fits one, and more are
    /// needed (never more than [`MAX_HEADER`] in all).
    Incomplete,
    /// A whole header of `len` bytes; the client's bytes start after it.
    Header {
        /// The header's length in bytes.
        len: usize,
        /// The client's address, or `None` when the header carries none
        /// to use (a v1 `UNKNOWN`, a v2 `LOCAL` such as the balancer's own
        /// health check, or a family other than IPv4 and IPv6): the
        /// connection's own peer address stands.
        source: Option<SocketAddr>,
    },
}

/// Why the bytes are not a PROXY protocol header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Invalid {
    /// Neither signature: the connection did not start with a header.
    NoSignature,
    /// A version 1 header longer than [`MAX_V1_HEADER`], or a version 2
    /// header declaring more than [`MAX_V2_HEADER`].
    TooLong,
    /// The header is malformed: a field, a separator, the version or the
    /// command is not what the specification allows.
    Malformed,
}

impl fmt::Display for Invalid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Invalid::NoSignature => "no PROXY protocol header",
            Invalid::TooLong => "PROXY protocol header too long",
            Invalid::Malformed => "malformed PROXY protocol header",
        })
    }
}

impl std::error::Error for Invalid {}

/// Reads a PROXY protocol header, version 1 or 2 (told apart by their
/// signatures), from the start of `received`: the bytes a connection has
/// received so far, which may end anywhere, even inside the signature.
///
/// # Errors
///
/// [`Invalid`] as soon as the bytes cannot begin a valid header.
///
/// # Examples
///
/// ```
/// use echo_server::proxy_protocol::{parse_header, Parsed};
///
/// let received = b"PROXY TCP4 192.0.2.7 198.51.100.1 40000 7\r\nhello";
/// assert_eq!(
///     parse_header(received),
///     Ok(Parsed::Header { len: 43, source: Some("192.0.2.7:40000".parse().unwrap()) })
/// );
/// assert_eq!(parse_header(b"PROXY TCP4 192.0"), Ok(Parsed::Incomplete));
/// assert!(parse_header(b"hello").is_err());
/// ```
pub fn parse_header(received: &[u8]) -> Result<Parsed, Invalid> {
    let starts = |signature: &[u8]| {
        let n = received.len().min(signature.len());
        received[..n] == signature[..n]
    };
    if starts(b"PROXY ") {
        v1(received)
    } else if starts(&V2_SIGNATURE) {
        if received.len() < 16 {
            // The version and command byte can be judged on its own.
            if let Some(&ver_cmd) = received.get(12) {
                if ver_cmd >> 4 != 2 || ver_cmd & 0x0f > 1 {
                    return Err(Invalid::Malformed);
                }
            }
            return Ok(Parsed::Incomplete);
        }
        v2(received)
    } else {
        Err(Invalid::NoSignature)
    }
}

/// `PROXY TCP4 SRC DST SPORT DPORT\r\n`, `TCP6` alike, or
/// `PROXY UNKNOWN<anything>\r\n`.
fn v1(received: &[u8]) -> Result<Parsed, Invalid> {
    let window = &received[..received.len().min(MAX_V1_HEADER)];
    let Some(cr) = window.iter().position(|&b| b == b'\r') else {
        if received.len() >= MAX_V1_HEADER {
            return Err(Invalid::TooLong);
        }
        // No other byte may come before the `\r`: judge what there is.
        return check_partial_v1(window).map(|()| Parsed::Incomplete);
    };
    if cr + 2 > MAX_V1_HEADER {
        return Err(Invalid::TooLong);
    }
    match window.get(cr + 1) {
        None => return check_partial_v1(&window[..cr]).map(|()| Parsed::Incomplete),
        Some(b'\n') => {}
        Some(_) => return Err(Invalid::Malformed),
    }
    let len = cr + 2;
    // Printable ASCII only, as `check_partial_v1` demands of every byte
    // before the `\r`: an answer never changes from refused to accepted
    // as more bytes arrive.
    check_partial_v1(&window[..cr])?;
    let line = std::str::from_utf8(&window[6..cr]).map_err(|_| Invalid::Malformed)?;
    if line.starts_with("UNKNOWN") {
        return Ok(Parsed::Header { len, source: None });
    }
    let fields: Vec<&str> = line.split(' ').collect();
    let [family, source, destination, source_port, destination_port] = fields[..] else {
        return Err(Invalid::Malformed);
    };
    // Both addresses of the family named; only the source is kept.
    let source: IpAddr = match family {
        "TCP4" => {
            v1_ip::<Ipv4Addr>(destination)?;
            v1_ip::<Ipv4Addr>(source)?.into()
        }
        "TCP6" => {
            v1_ip::<Ipv6Addr>(destination)?;
            v1_ip::<Ipv6Addr>(source)?.into()
        }
        _ => return Err(Invalid::Malformed),
    };
    let source_port = v1_port(source_port)?;
    v1_port(destination_port)?;
    Ok(Parsed::Header {
        len,
        source: Some(SocketAddr::new(source, source_port)),
    })
}

/// Whether `partial`, a v1 header's start without its `\r`, could still
/// become a header: only printable ASCII after `PROXY `, and the family
/// one of the three as far as it goes.
fn check_partial_v1(partial: &[u8]) -> Result<(), Invalid> {
    let rest = partial.get(6..).unwrap_or_default();
    if !rest.iter().all(|&b| (b' '..=b'~').contains(&b)) {
        return Err(Invalid::Malformed);
    }
    let family = rest.split(|&b| b == b' ').next().unwrap_or_default();
    let could_be = |name: &[u8]| {
        let n = family.len().min(name.len());
        family[..n] == name[..n]
    };
    let complete = rest.len() > family.len();
    let known = if complete {
        family == b"TCP4" || family == b"TCP6" || family.starts_with(b"UNKNOWN")
    } else {
        // `UNKNOWN` and anything after it (before a space) is one too.
        could_be(b"TCP4") || could_be(b"TCP6") || could_be(b"UNKNOWN")
    };
    if known {
        Ok(())
    } else {
        Err(Invalid::Malformed)
    }
}

/// An address of a v1 header: the family's usual text form, which Rust's
/// parsers take strictly (no leading zeros in IPv4 octets).
fn v1_ip<T: std::str::FromStr>(text: &str) -> Result<T, Invalid> {
    text.parse().map_err(|_| Invalid::Malformed)
}

/// A port of a v1 header: 1 to 5 decimal digits, no sign, at most 65535.
fn v1_port(text: &str) -> Result<u16, Invalid> {
    if text.is_empty() || text.len() > 5 || !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(Invalid::Malformed);
    }
    text.parse().map_err(|_| Invalid::Malformed)
}

/// The binary header: signature, version and command, family and
/// protocol, length, then the addresses and TLVs.
fn v2(received: &[u8]) -> Result<Parsed, Invalid> {
    let ver_cmd = received[12];
    let family = received[13];
    let declared = usize::from(u16::from_be_bytes([received[14], received[15]]));
    if ver_cmd >> 4 != 2 {
        return Err(Invalid::Malformed);
    }
    let local = match ver_cmd & 0x0f {
        0 => true,
        1 => false,
        _ => return Err(Invalid::Malformed),
    };
    let len = 16 + declared;
    if len > MAX_V2_HEADER {
        return Err(Invalid::TooLong);
    }
    // The address block each family needs (the TLVs follow it).
    let needs = match family >> 4 {
        0 => 0,
        1 => 12,
        2 => 36,
        3 => 216,
        _ => return Err(Invalid::Malformed),
    };
    if family & 0x0f > 2 || declared < needs {
        return Err(Invalid::Malformed);
    }
    if received.len() < len {
        return Ok(Parsed::Incomplete);
    }
    let body = &received[16..len];
    // LOCAL: the balancer speaking for itself (a health check); the
    // addresses, if any, are to be ignored. Only a stream's IPv4 or IPv6
    // addresses name a client this server can key on.
    let source = match (local, family) {
        (false, 0x11) => Some(SocketAddr::new(
            Ipv4Addr::new(body[0], body[1], body[2], body[3]).into(),
            u16::from_be_bytes([body[8], body[9]]),
        )),
        (false, 0x21) => {
            let mut octets = [0u8; 16];
            octets.copy_from_slice(&body[..16]);
            Some(SocketAddr::new(
                Ipv6Addr::from(octets).into(),
                u16::from_be_bytes([body[32], body[33]]),
            ))
        }
        _ => None,
    };
    Ok(Parsed::Header { len, source })
}

/// A connection's start while its PROXY protocol header arrives: the bytes
/// received so far, never more than [`MAX_HEADER`].
#[derive(Debug, Default)]
pub(crate) struct Preface {
    received: Vec<u8>,
}

/// What [`Preface::feed`] found.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Fed {
    /// The header goes on; read at most [`Preface::room`] more bytes.
    More,
    /// The header is complete. `rest` is what came after it in the same
    /// reads: the client's first bytes, to be echoed first.
    Done {
        source: Option<SocketAddr>,
        rest: Vec<u8>,
    },
}

impl Preface {
    /// How many more bytes may be read before the header must be complete:
    /// reading no more than this never takes more than a header's bound
    /// from the socket.
    pub(crate) fn room(&self) -> usize {
        MAX_HEADER.saturating_sub(self.received.len()).max(1)
    }

    /// Adds bytes received (however they are split) and judges them.
    pub(crate) fn feed(&mut self, bytes: &[u8]) -> Result<Fed, Invalid> {
        self.received.extend_from_slice(bytes);
        match parse_header(&self.received)? {
            Parsed::Incomplete => Ok(Fed::More),
            Parsed::Header { len, source } => Ok(Fed::Done {
                source,
                rest: self.received.split_off(len),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A v1 header as the specification writes it.
    fn encode_v1(source: SocketAddr, destination: SocketAddr) -> Vec<u8> {
        let family = if source.is_ipv4() { "TCP4" } else { "TCP6" };
        format!(
            "PROXY {family} {} {} {} {}\r\n",
            source.ip(),
            destination.ip(),
            source.port(),
            destination.port()
        )
        .into_bytes()
    }

    /// A v2 header as the specification lays it out, with `tlvs` bytes of
    /// TLVs after the addresses.
    fn encode_v2(local: bool, source: SocketAddr, destination: SocketAddr, tlvs: &[u8]) -> Vec<u8> {
        let mut addresses = Vec::new();
        let family = match (source.ip(), destination.ip()) {
            (IpAddr::V4(s), IpAddr::V4(d)) => {
                addresses.extend_from_slice(&s.octets());
                addresses.extend_from_slice(&d.octets());
                0x11
            }
            (IpAddr::V6(s), IpAddr::V6(d)) => {
                addresses.extend_from_slice(&s.octets());
                addresses.extend_from_slice(&d.octets());
                0x21
            }
            _ => unreachable!("one family"),
        };
        addresses.extend_from_slice(&source.port().to_be_bytes());
        addresses.extend_from_slice(&destination.port().to_be_bytes());
        addresses.extend_from_slice(tlvs);
        let mut header = V2_SIGNATURE.to_vec();
        header.push(if local { 0x20 } else { 0x21 });
        header.push(family);
        header.extend_from_slice(&(addresses.len() as u16).to_be_bytes());
        header.extend_from_slice(&addresses);
        header
    }

    fn addr_pair() -> impl Strategy<Value = (SocketAddr, SocketAddr)> {
        prop_oneof![
            (
                any::<[u8; 4]>(),
                any::<u16>(),
                any::<[u8; 4]>(),
                any::<u16>()
            )
                .prop_map(|(s, sp, d, dp)| (
                    SocketAddr::new(Ipv4Addr::from(s).into(), sp),
                    SocketAddr::new(Ipv4Addr::from(d).into(), dp)
                )),
            (
                any::<[u8; 16]>(),
                any::<u16>(),
                any::<[u8; 16]>(),
                any::<u16>()
            )
                .prop_map(|(s, sp, d, dp)| (
                    SocketAddr::new(Ipv6Addr::from(s).into(), sp),
                    SocketAddr::new(Ipv6Addr::from(d).into(), dp)
                )),
        ]
    }

    proptest! {
        /// Any header the specification's encoder writes, followed by any
        /// client bytes, is read back: its length and the client's
        /// address; and every shorter start of it is `Incomplete`, so a
        /// header split into any segments is read the same.
        #[test]
        fn headers_read_back_whatever_follows_and_however_split(
            (source, destination) in addr_pair(),
            v2_header in any::<bool>(),
            local in any::<bool>(),
            tlvs in proptest::collection::vec(any::<u8>(), 0..64),
            data in proptest::collection::vec(any::<u8>(), 0..64),
        ) {
            let header = if v2_header {
                encode_v2(local, source, destination, &tlvs)
            } else {
                encode_v1(source, destination)
            };
            let source = (!(v2_header && local)).then_some(source);
            let mut received = header.clone();
            received.extend_from_slice(&data);
            prop_assert_eq!(parse_header(&received), Ok(Parsed::Header { len: header.len(), source }));
            for end in 0..header.len() {
                prop_assert_eq!(parse_header(&header[..end]), Ok(Parsed::Incomplete), "{} bytes", end);
            }
            prop_assert!(header.len() <= MAX_HEADER);
        }

        /// Whatever the bytes, the parser answers without panicking, and
        /// a header it finds lies within the bytes and the bounds.
        #[test]
        fn any_bytes_get_an_answer_within_bounds(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            match parse_header(&bytes) {
                Ok(Parsed::Header { len, .. }) => prop_assert!(len <= bytes.len() && len <= MAX_HEADER),
                Ok(Parsed::Incomplete) => prop_assert!(bytes.len() < MAX_HEADER),
                Err(_) => {}
            }
        }

        /// A byte changed anywhere in a v1 header: either the header is refused,
        /// or the address read is the one its fields now say.
        #[test]
        fn a_v1_header_read_is_the_one_written(
            (source, destination) in addr_pair(),
            at in any::<prop::sample::Index>(),
            byte in any::<u8>(),
        ) {
            let mut header = encode_v1(source, destination);
            let i = at.index(header.len());
            header[i] = byte;
            if let Ok(Parsed::Header { len, source: Some(read) }) = parse_header(&header) {
                prop_assert_eq!(len, header.len());
                // The reference: the fields split at spaces, parsed by std.
                let text = String::from_utf8_lossy(&header);
                let fields: Vec<&str> = text.trim_end_matches("\r\n").split(' ').collect();
                prop_assert_eq!(Ok(read.ip()), fields[2].parse::<IpAddr>());
                prop_assert_eq!(Ok(read.port()), fields[4].parse::<u16>());
            }
        }
    }

    /// The preface reads a header fed in pieces of any size, and hands back
    /// exactly the bytes after it.
    #[test]
    fn a_preface_fed_in_pieces_gives_the_header_and_the_rest() {
        let mut bytes = b"PROXY TCP4 192.0.2.7 198.51.100.1 40000 7\r\n".to_vec();
        bytes.extend_from_slice(b"first bytes");
        for piece in [1, 2, 5, 43, 44, 200] {
            let mut preface = Preface::default();
            let mut found = None;
            for (i, chunk) in bytes.chunks(piece).enumerate() {
                assert!(chunk.len() <= preface.room());
                if let Fed::Done { source, mut rest } = preface.feed(chunk).unwrap() {
                    // What later reads would bring follows the rest.
                    let fed = ((i + 1) * piece).min(bytes.len());
                    rest.extend_from_slice(&bytes[fed..]);
                    found = Some((source, rest));
                    break;
                }
            }
            let (source, rest) = found.expect("a header");
            assert_eq!(
                source,
                Some("192.0.2.7:40000".parse().unwrap()),
                "pieces of {piece}"
            );
            assert_eq!(rest, b"first bytes", "pieces of {piece}");
        }
        let mut preface = Preface::default();
        assert_eq!(preface.feed(b"GET /"), Err(Invalid::NoSignature));
        let mut preface = Preface::default();
        assert_eq!(
            preface.feed(&b"PROXY UNKNOWN ".repeat(10)),
            Err(Invalid::TooLong)
        );
        assert_eq!(Preface::default().room(), MAX_HEADER);
    }

    #[test]
    fn v1_examples() {
        let header = |s: &str| parse_header(s.as_bytes());
        assert_eq!(
            header("PROXY TCP6 2001:db8::1 2001:db8::2 1 65535\r\n"),
            Ok(Parsed::Header {
                len: 44,
                source: Some("[2001:db8::1]:1".parse().unwrap())
            })
        );
        assert_eq!(
            header("PROXY UNKNOWN\r\n"),
            Ok(Parsed::Header {
                len: 15,
                source: None
            })
        );
        assert_eq!(
            header("PROXY UNKNOWN ffff:f...f:ffff ffff:f...f:ffff 65535 65535\r\n"),
            Ok(Parsed::Header {
                len: 59,
                source: None
            })
        );
        for bad in [
            "PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n",       // no \r
            "PROXY TCP4 1.2.3.4 5.6.7.8 1 2\rX",      // \r not followed by \n
            "PROXY TCP4 1.2.3.4  5.6.7.8 1 2\r\n",    // two spaces
            "PROXY TCP4 1.2.3.4 5.6.7.8 1 65536\r\n", // port out of range
            "PROXY TCP4 1.2.3.4 5.6.7.8 +1 2\r\n",    // a sign
            "PROXY TCP4 01.2.3.4 5.6.7.8 1 2\r\n",    // a leading zero
            "PROXY TCP4 ::1 ::1 1 2\r\n",             // the wrong family
            "PROXY TCP6 1.2.3.4 5.6.7.8 1 2\r\n",
            "PROXY UDP4 1.2.3.4 5.6.7.8 1 2\r\n",
            "PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n",
            "PROXY TCP4 1.2.3.4 5.6.7.8 1 2 3\r\n",
            "PROXY \r\n",
            "PROXY TCP4 1.2.3.4\x005.6.7.8", // not text
            "PROXY XCP",                     // no such family
        ] {
            assert_eq!(header(bad), Err(Invalid::Malformed), "{bad:?}");
        }
        // The bound, 107 bytes with the \r\n: at it, and one beyond.
        let at_bound = format!("PROXY UNKNOWN {}\r\n", "x".repeat(MAX_V1_HEADER - 16));
        assert_eq!(at_bound.len(), MAX_V1_HEADER);
        assert_eq!(
            header(&at_bound),
            Ok(Parsed::Header {
                len: MAX_V1_HEADER,
                source: None
            })
        );
        let beyond = format!("PROXY UNKNOWN {}\r\n", "x".repeat(MAX_V1_HEADER - 15));
        assert_eq!(header(&beyond), Err(Invalid::TooLong));
        assert_eq!(
            header(&beyond[..MAX_V1_HEADER]),
            Err(Invalid::TooLong),
            "the \\r past the bound"
        );
        // A family judged once it is complete (followed by a space), not
        // only as a prefix of one.
        assert_eq!(header("PROXY TCP"), Ok(Parsed::Incomplete));
        assert_eq!(header("PROXY UNK"), Ok(Parsed::Incomplete));
        assert_eq!(header("PROXY UNKNOWNX"), Ok(Parsed::Incomplete));
        assert_eq!(header("PROXY UNKNOWN 1"), Ok(Parsed::Incomplete));
        assert_eq!(header("PROXY UNKNOWX"), Err(Invalid::Malformed));
        // Ports of up to five digits (zeros allowed), never six.
        assert_eq!(
            header("PROXY TCP4 192.0.2.1 192.0.2.2 00001 2\r\n"),
            Ok(Parsed::Header {
                len: 40,
                source: Some("192.0.2.1:1".parse().unwrap())
            })
        );
        assert_eq!(
            header("PROXY TCP4 192.0.2.1 192.0.2.2 000001 2\r\n"),
            Err(Invalid::Malformed)
        );
        assert_eq!(header("PROXY TCP 1.2"), Err(Invalid::Malformed));
        assert_eq!(header("PROXY TCP4 1.2"), Ok(Parsed::Incomplete));
        assert_eq!(header("PROXY TCP5"), Err(Invalid::Malformed));
        assert_eq!(
            [Invalid::NoSignature, Invalid::TooLong, Invalid::Malformed].map(|e| e.to_string()),
            [
                "no PROXY protocol header",
                "PROXY protocol header too long",
                "malformed PROXY protocol header"
            ]
        );
        let endless = format!("PROXY UNKNOWN {}", "x".repeat(200));
        assert_eq!(header(&endless), Err(Invalid::TooLong));
        assert_eq!(
            header(&endless[..MAX_V1_HEADER - 1]),
            Ok(Parsed::Incomplete)
        );
        assert_eq!(header("GET / HTTP/1.1\r\n"), Err(Invalid::NoSignature));
        assert_eq!(header("PROX"), Ok(Parsed::Incomplete));
        assert_eq!(header(""), Ok(Parsed::Incomplete));
    }

    #[test]
    fn v2_examples() {
        let (source, destination) = (
            "10.1.2.3:4000".parse().unwrap(),
            "10.0.0.1:7".parse().unwrap(),
        );
        let good = encode_v2(false, source, destination, &[]);
        let with = |at: usize, byte: u8| {
            let mut h = good.clone();
            h[at] = byte;
            parse_header(&h)
        };
        assert_eq!(
            with(12, 0x11),
            Err(Invalid::Malformed),
            "version 1 in a v2 header"
        );
        assert_eq!(with(12, 0x22), Err(Invalid::Malformed), "no such command");
        assert_eq!(with(13, 0x41), Err(Invalid::Malformed), "no such family");
        assert_eq!(with(13, 0x13), Err(Invalid::Malformed), "no such protocol");
        assert_eq!(
            with(15, 11),
            Err(Invalid::Malformed),
            "shorter than its addresses"
        );
        // UNSPEC, AF_UNIX, or a datagram protocol: the connection's own
        // address stands.
        for family in [0x00, 0x12] {
            let mut h = good.clone();
            h[13] = family;
            assert_eq!(
                parse_header(&h),
                Ok(Parsed::Header {
                    len: good.len(),
                    source: None
                }),
                "{family:#x}"
            );
        }
        let mut unix = good[..16].to_vec();
        unix[13] = 0x31;
        unix[14..16].copy_from_slice(&216u16.to_be_bytes());
        unix.extend_from_slice(&[0; 216]);
        assert_eq!(
            parse_header(&unix),
            Ok(Parsed::Header {
                len: 232,
                source: None
            })
        );
        // The declared length is bounded, and judged before the bytes come.
        let mut long = good[..16].to_vec();
        long[14..16].copy_from_slice(&((MAX_V2_HEADER - 15) as u16).to_be_bytes());
        assert_eq!(parse_header(&long), Err(Invalid::TooLong));
        long[14..16].copy_from_slice(&((MAX_V2_HEADER - 16) as u16).to_be_bytes());
        assert_eq!(parse_header(&long), Ok(Parsed::Incomplete));
        // A bad version is refused as soon as its byte arrives.
        assert_eq!(
            parse_header(&[&V2_SIGNATURE[..], &[0x31]].concat()),
            Err(Invalid::Malformed)
        );
        assert_eq!(parse_header(&V2_SIGNATURE[..5]), Ok(Parsed::Incomplete));
        assert_eq!(
            parse_header(b"\r\n\r\n\0\r\nQUIx"),
            Err(Invalid::NoSignature)
        );
    }
}
