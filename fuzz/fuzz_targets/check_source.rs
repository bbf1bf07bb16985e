//! The UDP loop and reflection filter, `udp::check_source`, checked against
//! a reference written from raw octets, and `udp::normalize`.
#![no_main]

use echo_server::udp::{check_source, normalize, Refusal};
use libfuzzer_sys::fuzz_target;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};

/// The filter as the issue states it, from the bytes on the wire.
fn reference(addr: SocketAddr) -> Result<(), Refusal> {
    let v4 = match addr {
        SocketAddr::V4(a) => Some(a.ip().octets()),
        SocketAddr::V6(a) => {
            let o = a.ip().octets();
            (o[..10] == [0; 10] && o[10] == 0xff && o[11] == 0xff)
                .then(|| [o[12], o[13], o[14], o[15]])
        }
    };
    let invalid = match (v4, addr) {
        (Some(o), _) => o == [0; 4] || o == [255; 4] || (224..=239).contains(&o[0]),
        (None, SocketAddr::V6(a)) => a.ip().octets() == [0; 16] || a.ip().octets()[0] == 0xff,
        (None, SocketAddr::V4(_)) => unreachable!(),
    };
    if invalid {
        Err(Refusal::InvalidSource)
    } else if addr.port() < 1024 {
        Err(Refusal::PrivilegedPort)
    } else {
        Ok(())
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&kind, rest)) = data.split_first() else {
        return;
    };
    let Some((&port, rest)) = rest.split_first_chunk::<2>() else {
        return;
    };
    let port = u16::from_be_bytes(port);
    let addr = if kind & 1 == 0 {
        let Some(&o) = rest.first_chunk::<4>() else {
            return;
        };
        SocketAddr::from((Ipv4Addr::from(o), port))
    } else {
        let Some(&o) = rest.first_chunk::<16>() else {
            return;
        };
        SocketAddr::from((Ipv6Addr::from(o), port))
    };
    assert_eq!(check_source(addr), reference(addr), "{addr}");
    let normal = normalize(addr);
    assert_eq!(normalize(normal), normal, "normalize is idempotent");
    assert_eq!(
        check_source(normal),
        check_source(addr),
        "same verdict mapped or not"
    );
    assert_eq!(normal.port(), addr.port());
});
