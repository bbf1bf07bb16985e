//! The parsers clap runs on option values: seconds, byte counts, prefixes,
//! modes. Each returns the message clap shows after `invalid value`.

use crate::address::Network;
use crate::rate_limit::SourcePrefix;
use crate::udp;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

/// An IP address, or something that can be a host name (letters, digits,
/// `-` and `.`); resolving it waits for start-up.
pub(super) fn parse_host(s: &str) -> Result<String, String> {
    let name_like = !s.is_empty()
        && s.len() <= 253
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.');
    if s.parse::<IpAddr>().is_ok() || name_like {
        Ok(s.to_owned())
    } else {
        Err(format!("`{s}` is neither an IP address nor a host name"))
    }
}

/// `HOST:PORT` with an IP address, or a port alone (loopback).
pub(super) fn parse_metrics_addr(s: &str) -> Result<SocketAddr, String> {
    if let Ok(port) = s.parse::<u16>() {
        return Ok(SocketAddr::from(([127, 0, 0, 1], port)));
    }
    s.parse()
        .map_err(|_| format!("`{s}` is neither a port nor an IP address with a port"))
}

pub(super) fn parse_max_connections(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(0) => Err("must be at least 1".to_owned()),
        Ok(n) => Ok(n),
        Err(e) => Err(e.to_string()),
    }
}

/// The longest time any option takes: a year. Longer means "never" in
/// practice, and a deadline that far must still be a time the clock can
/// say (`--proxy-timeout 1e19` once overflowed it).
const MAX_SECS: f64 = 365.0 * 24.0 * 3600.0;

/// Parses a positive, finite number of seconds, such as `30` or `0.5`, at
/// most a year.
pub(super) fn parse_secs(s: &str) -> Result<Duration, String> {
    let secs: f64 = s
        .parse()
        .map_err(|_| format!("`{s}` is not a number of seconds"))?;
    if secs.is_nan() || secs <= 0.0 {
        return Err("must be more than 0 seconds".to_owned());
    }
    if secs > MAX_SECS {
        return Err(format!(
            "{s} seconds is too long (at most {MAX_SECS} seconds, a year)"
        ));
    }
    Duration::try_from_secs_f64(secs).map_err(|_| format!("{s} seconds is too long"))
}

/// A number of seconds, zero allowed.
pub(super) fn parse_secs_or_zero(s: &str) -> Result<Duration, String> {
    if s.parse::<f64>() == Ok(0.0) {
        return Ok(Duration::ZERO);
    }
    parse_secs(s)
}

/// File permissions in octal, such as `660` or `0o600`.
pub(super) fn parse_mode(s: &str) -> Result<u32, String> {
    let digits = s.strip_prefix("0o").unwrap_or(s);
    match u32::from_str_radix(digits, 8) {
        Ok(mode) if mode <= 0o777 && !digits.is_empty() => Ok(mode),
        _ => Err(format!(
            "`{s}` is not a file mode in octal from 0 to 777 (e.g. 660)"
        )),
    }
}

/// `off` (as zero) or a number of seconds.
pub(super) fn parse_secs_or_off(s: &str) -> Result<Duration, String> {
    if s.eq_ignore_ascii_case("off") {
        return Ok(Duration::ZERO);
    }
    parse_secs(s)
}

/// `off`, or whole seconds from 1 (what TCP_KEEPIDLE takes).
pub(super) fn parse_keepalive(s: &str) -> Result<Duration, String> {
    let d = parse_secs_or_off(s)?;
    if !d.is_zero() && d < Duration::from_secs(1) {
        return Err("must be at least 1 second, or off".to_owned());
    }
    Ok(d)
}

/// `Some` unless `off`.
pub(super) fn unless_off(d: Duration) -> Option<Duration> {
    (!d.is_zero()).then_some(d)
}

/// Parses a byte count with an optional binary suffix: `512`, `64K`, `1M`,
/// `2G` (case-insensitive, an optional trailing `B` or `iB`).
pub fn parse_bytes(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let lower = t.to_ascii_lowercase();
    let digits = lower
        .strip_suffix("ib")
        .or_else(|| lower.strip_suffix('b'))
        .unwrap_or(&lower);
    let (number, shift) = match digits.as_bytes().last() {
        Some(b'k') => (&digits[..digits.len() - 1], 10),
        Some(b'm') => (&digits[..digits.len() - 1], 20),
        Some(b'g') => (&digits[..digits.len() - 1], 30),
        _ => (digits, 0),
    };
    let n: u64 = number
        .parse()
        .map_err(|_| format!("`{s}` is not a byte count (e.g. 512, 64K, 1M)"))?;
    n.checked_mul(1 << shift)
        .ok_or_else(|| format!("`{s}` is too large"))
}

/// A UDP burst: a zero burst would answer nothing, ever.
pub(super) fn parse_burst(s: &str) -> Result<u64, String> {
    match parse_bytes(s)? {
        0 => Err("must be above 0 (no datagram could ever be answered)".to_owned()),
        n => Ok(n),
    }
}

/// One entry of `--proxy-protocol`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxySource {
    /// Connections from this network.
    Network(Network),
    /// Connections to the Unix stream listeners.
    Unix,
}

/// A network (`10.0.0.0/8`, an address alone) or `unix`.
pub(super) fn parse_proxy_source(s: &str) -> Result<ProxySource, String> {
    let s = s.trim();
    if s.eq_ignore_ascii_case("unix") {
        return Ok(ProxySource::Unix);
    }
    s.parse().map(ProxySource::Network)
}

/// `V4,V6`: the IPv4 and IPv6 prefix lengths of a UDP source network.
pub(super) fn parse_prefix(s: &str) -> Result<SourcePrefix, String> {
    let usage = || format!("`{s}` is not V4,V6 prefix lengths (IPv4 0-32, IPv6 0-128; e.g. 24,56)");
    let (v4, v6) = s.split_once(',').ok_or_else(usage)?;
    let prefix = SourcePrefix {
        v4: v4.trim().parse().map_err(|_| usage())?,
        v6: v6.trim().parse().map_err(|_| usage())?,
    };
    prefix.is_valid().then_some(prefix).ok_or_else(usage)
}

pub(super) fn parse_udp_buffer(s: &str) -> Result<usize, String> {
    match parse_bytes(s)? {
        n if n < 4096 => Err("must be at least 4K".to_owned()),
        n => usize::try_from(n)
            .ok()
            .filter(|&n| n <= i32::MAX as usize)
            .ok_or_else(|| "must be below 2G".to_owned()),
    }
}

pub(super) fn parse_datagram_size(s: &str) -> Result<usize, String> {
    let n = parse_bytes(s)?;
    if (1..=udp::MAX_DATAGRAM as u64).contains(&n) {
        Ok(n as usize)
    } else {
        Err(format!("must be 1 to {} bytes", udp::MAX_DATAGRAM))
    }
}

/// `MIN-MAX` or `N` (then both): each a value `one` parses, MIN <= MAX.
fn parse_range<T: PartialOrd + Copy>(
    s: &str,
    one: impl Fn(&str) -> Result<T, String>,
) -> Result<(T, T), String> {
    let (min, max) = match s.split_once('-') {
        Some((a, b)) => (one(a)?, one(b)?),
        None => {
            let n = one(s)?;
            (n, n)
        }
    };
    if min > max {
        return Err(format!("`{s}`: MIN is more than MAX"));
    }
    Ok((min, max))
}

/// `--chunk MIN-MAX`: piece sizes in bytes, at least 1.
pub(super) fn parse_chunk(s: &str) -> Result<(usize, usize), String> {
    parse_range(s, |t| match parse_bytes(t)? {
        0 => Err("a piece is at least 1 byte".to_owned()),
        n => usize::try_from(n).map_err(|_| format!("`{t}` is too large")),
    })
}

/// `--delay MS[-MS]`: milliseconds, up to an hour.
pub(super) fn parse_delay(s: &str) -> Result<(Duration, Duration), String> {
    let (min, max) = parse_range(s, |t| {
        t.trim()
            .parse::<u64>()
            .ok()
            .filter(|ms| *ms <= 3_600_000)
            .ok_or_else(|| format!("`{t}` is not a number of milliseconds (0 to 3600000)"))
    })?;
    Ok((Duration::from_millis(min), Duration::from_millis(max)))
}

/// `--rate BYTES/S`: a byte count (`/s` optional), at least 1.
pub(super) fn parse_rate(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let t = t
        .strip_suffix("/s")
        .or_else(|| t.strip_suffix("/S"))
        .unwrap_or(t);
    match parse_bytes(t)? {
        0 => Err("a rate is at least 1 byte per second".to_owned()),
        n => Ok(n),
    }
}

/// `--reset-after BYTES[-BYTES]`.
pub(super) fn parse_byte_range(s: &str) -> Result<(u64, u64), String> {
    parse_range(s, parse_bytes)
}

/// `--impair-port PORT`: 1 to 65535. Port 0 would listen on a port the
/// kernel picks, which no impairment would apply to.
pub(super) fn parse_impair_port(s: &str) -> Result<u16, String> {
    match s.trim().parse::<u16>() {
        Ok(0) => Err("port 0 cannot be impaired (the kernel would pick another)".to_owned()),
        Ok(port) => Ok(port),
        Err(_) => Err(format!("`{s}` is not a port (1 to 65535)")),
    }
}

/// A probability, 0 to 1.
pub(super) fn parse_probability(s: &str) -> Result<f64, String> {
    s.trim()
        .parse::<f64>()
        .ok()
        .filter(|p| (0.0..=1.0).contains(p))
        .ok_or_else(|| format!("`{s}` is not a probability (0 to 1)"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_counts() {
        assert_eq!(parse_bytes("512"), Ok(512));
        assert_eq!(parse_bytes("64K"), Ok(64 << 10));
        assert_eq!(parse_bytes("1m"), Ok(1 << 20));
        assert_eq!(parse_bytes("2GiB"), Ok(2 << 30));
        assert_eq!(parse_bytes("3kb"), Ok(3 << 10));
        assert!(parse_bytes("").is_err());
        assert!(parse_bytes("K").is_err());
        assert!(parse_bytes("-1").is_err());
        assert!(parse_bytes("99999999999999G").is_err());
    }

    #[test]
    fn seconds() {
        assert_eq!(parse_secs("30"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_secs("0.25"), Ok(Duration::from_millis(250)));
        assert!(parse_secs("inf").is_err());
        assert!(parse_secs("1e300").is_err());
        assert!(
            parse_secs("1e19").is_err(),
            "a deadline the clock cannot say"
        );
        assert_eq!(parse_secs("31536000"), Ok(Duration::from_secs(31_536_000)));
        assert!(parse_secs("31536000.5").is_err());
        assert!(parse_secs("").is_err());
    }
}
