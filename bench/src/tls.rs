//! `--tls-ca`: the client side of TLS for `pingpong` and `connrate`.
//!
//! rustls (on ring, as echo-server and the tokio peer use) as a client that
//! verifies the server's certificate against the given CA file and never
//! resumes a session: every connection of `connrate` is a full handshake,
//! which is what "handshakes per second" means. The functions here move a
//! session's records over a nonblocking socket; [`crate::conn::Conn`] calls
//! them in place of its plain reads and writes, with the same contract
//! (`WouldBlock` when the socket is what stops it).

use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore};
use std::io::{self, ErrorKind, Read, Write};
use std::path::Path;
use std::sync::{Arc, OnceLock};

/// The run's client configuration and server name, set once by `main`
/// before any connection opens: every connection of every thread uses the
/// same one, and threading it through every mode's connect call would
/// change them all for what is a property of the whole run.
static CLIENT: OnceLock<(Arc<ClientConfig>, ServerName<'static>)> = OnceLock::new();

/// Reads the CA certificates (PEM) and makes every connection of this run
/// a TLS client expecting a certificate for `name`.
pub fn enable(ca: &Path, name: &str) -> Result<(), String> {
    let mut roots = RootCertStore::empty();
    let certs = CertificateDer::pem_file_iter(ca)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("{}: {e}", ca.display()))?;
    if certs.is_empty() {
        return Err(format!("{}: no certificate in it", ca.display()));
    }
    for cert in certs {
        roots
            .add(cert)
            .map_err(|e| format!("{}: {e}", ca.display()))?;
    }
    // Deprecated in rustls 0.23.48 for want of post-quantum key exchange;
    // the servers compared use the same provider, so the handshakes are
    // the same ones.
    #[allow(deprecated)]
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    // Full handshakes only: a resumed one costs the server far less, and
    // whether it happens would depend on the server's ticket settings.
    config.resumption = rustls::client::Resumption::disabled();
    let name =
        ServerName::try_from(name.to_owned()).map_err(|e| format!("--tls-name {name:?}: {e}"))?;
    CLIENT
        .set((Arc::new(config), name))
        .map_err(|_| "TLS is already enabled".to_owned())
}

/// A new client session if the run is over TLS.
pub fn session() -> Option<io::Result<ClientConnection>> {
    let (config, name) = CLIENT.get()?;
    Some(ClientConnection::new(Arc::clone(config), name.clone()).map_err(io::Error::other))
}

/// Sends the session's pending records until it has none (`Ok`) or the
/// socket is full (`WouldBlock`).
pub fn flush<S: Write>(sock: &mut S, session: &mut ClientConnection) -> io::Result<()> {
    while session.wants_write() {
        session.write_tls(sock)?;
    }
    Ok(())
}

/// Hands plaintext to the session and sends its records as far as the
/// socket takes them. `WouldBlock` when the session took nothing (its
/// buffer is full of records the socket would not take).
pub fn send<S: Write>(
    sock: &mut S,
    session: &mut ClientConnection,
    data: &[u8],
) -> io::Result<usize> {
    let flushed = |r: io::Result<()>| match r {
        Err(e) if e.kind() == ErrorKind::WouldBlock => Ok(()),
        other => other,
    };
    flushed(flush(sock, session))?;
    let n = session.writer().write(data)?;
    flushed(flush(sock, session))?;
    if n == 0 {
        return Err(ErrorKind::WouldBlock.into());
    }
    Ok(n)
}

/// Reads plaintext: feeds the session what the socket has (and sends what
/// the handshake answers) until it has plaintext, the socket has nothing
/// more (`WouldBlock`) or the stream has ended (`Ok(0)`, with or without a
/// close_notify: either way the server sends nothing more).
pub fn recv<S: Read + Write>(
    sock: &mut S,
    session: &mut ClientConnection,
    buf: &mut [u8],
) -> io::Result<usize> {
    loop {
        match session.reader().read(buf) {
            Ok(n) => return Ok(n),
            Err(e) if e.kind() == ErrorKind::UnexpectedEof => return Ok(0),
            Err(e) if e.kind() == ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
        // Ok(0) here is the end of the stream: the session records it,
        // and its reader says so on the next turn.
        session.read_tls(sock)?;
        session
            .process_new_packets()
            .map_err(|e| io::Error::new(ErrorKind::InvalidData, e))?;
        match flush(sock, session) {
            Err(e) if e.kind() != ErrorKind::WouldBlock => return Err(e),
            _ => {}
        }
    }
}
