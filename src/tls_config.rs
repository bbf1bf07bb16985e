//! The TLS configuration: the certificate chain, key and (for mutual TLS)
//! client CA read from PEM files, in one place for start-up and reload.
//! [`TlsConfig`] keeps the current rustls `ServerConfig` behind a lock that
//! is held only to clone or swap an `Arc`: a new connection takes the
//! config of the moment, a reload swaps in a new one for the connections
//! after it, and those already open go on with theirs.

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use std::fmt;
use std::io::{self, ErrorKind};
use std::path::{Path, PathBuf};
use std::sync::{Arc, PoisonError, RwLock};

/// Where the TLS material is read from (at start-up and on each reload).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct TlsFiles {
    /// The certificate chain, PEM, the server's certificate first.
    pub(crate) cert: Option<PathBuf>,
    /// Its private key, PEM (PKCS#8, PKCS#1 or SEC1).
    pub(crate) key: Option<PathBuf>,
    /// CA certificates, PEM: when set, every client must present a
    /// certificate they signed (mutual TLS).
    pub(crate) client_ca: Option<PathBuf>,
}

/// The live TLS configuration of a server.
pub(crate) struct TlsConfig {
    files: TlsFiles,
    current: RwLock<Arc<ServerConfig>>,
}

impl fmt::Debug for TlsConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsConfig")
            .field("files", &self.files)
            .finish_non_exhaustive()
    }
}

impl TlsConfig {
    /// Reads the files.
    ///
    /// # Errors
    ///
    /// A missing setting, or the file that cannot be read or used and why.
    pub(crate) fn load(files: TlsFiles) -> io::Result<TlsConfig> {
        let config = server_config(&files)?;
        Ok(TlsConfig {
            files,
            current: RwLock::new(config),
        })
    }

    /// The configuration a new connection starts with.
    pub(crate) fn current(&self) -> Arc<ServerConfig> {
        Arc::clone(&self.current.read().unwrap_or_else(PoisonError::into_inner))
    }

    /// Reads the files again; the new configuration serves the connections
    /// accepted from now on.
    ///
    /// # Errors
    ///
    /// As [`load`](Self::load): the configuration in force stays.
    pub(crate) fn reload(&self) -> io::Result<()> {
        let config = server_config(&self.files)?;
        *self.current.write().unwrap_or_else(PoisonError::into_inner) = config;
        Ok(())
    }
}

/// The rustls configuration the files describe, on the `ring` provider.
fn server_config(files: &TlsFiles) -> io::Result<Arc<ServerConfig>> {
    let (Some(cert_file), Some(key_file)) = (&files.cert, &files.key) else {
        return Err(io::Error::new(
            ErrorKind::InvalidInput,
            "TLS needs a certificate chain and a key (--tls-cert, --tls-key)",
        ));
    };
    let chain = certificates(cert_file, "certificate chain")?;
    let key = PrivateKeyDer::from_pem_slice(&read_pem(key_file, "private key")?)
        .map_err(|e| file_error(key_file, "private key", e))?;
    // rustls 0.23.48 deprecates the ring provider for want of post-quantum
    // key exchange, which only its aws-lc-rs provider has; that one needs
    // cmake and a larger C build, which this crate does not take on.
    // Classical X25519/P-256 key exchange, as every TLS client offers.
    #[allow(deprecated)]
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .map_err(io::Error::other)?;
    let builder = match &files.client_ca {
        None => builder.with_no_client_auth(),
        Some(ca_file) => {
            let mut roots = RootCertStore::empty();
            for cert in certificates(ca_file, "client CA")? {
                roots
                    .add(cert)
                    .map_err(|e| file_error(ca_file, "client CA", e))?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| file_error(ca_file, "client CA", e))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let config = builder
        .with_single_cert(chain, key)
        // A key that does not match the certificate, a certificate rustls
        // cannot read, a chain out of order: either file may be at fault.
        .map_err(|e| {
            io::Error::new(
                ErrorKind::InvalidData,
                format!(
                    "cannot use the TLS certificate chain {} with the private key {}: {e}",
                    cert_file.display(),
                    key_file.display()
                ),
            )
        })?;
    Ok(Arc::new(config))
}

/// Every certificate of a PEM file: at least one.
fn certificates(file: &Path, what: &str) -> io::Result<Vec<CertificateDer<'static>>> {
    let certs = CertificateDer::pem_slice_iter(&read_pem(file, what)?)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| file_error(file, what, e))?;
    if certs.is_empty() {
        return Err(file_error(file, what, "no PEM certificate in it"));
    }
    Ok(certs)
}

/// The largest PEM file read: chains and keys are a few KiB; a bigger file
/// is a mistake, and reading it whole would balloon the server at a reload.
const MAX_PEM: u64 = 1 << 20;

/// A PEM file's bytes, at most [`MAX_PEM`]. Only a regular file: opened
/// without blocking and refused otherwise, because a FIFO in its place
/// would block the one thread that handles the signals (SIGTERM included)
/// while it reloads.
fn read_pem(file: &Path, what: &str) -> io::Result<Vec<u8>> {
    use std::io::Read as _;
    let mut options = std::fs::OpenOptions::new();
    options.read(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::custom_flags(&mut options, libc::O_NONBLOCK);
    let opened = options.open(file).map_err(|e| file_error(file, what, e))?;
    let is_file = opened
        .metadata()
        .map_err(|e| file_error(file, what, e))?
        .is_file();
    if !is_file {
        return Err(file_error(file, what, "not a regular file"));
    }
    let mut bytes = Vec::new();
    opened
        .take(MAX_PEM + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| file_error(file, what, e))?;
    if bytes.len() as u64 > MAX_PEM {
        return Err(file_error(file, what, "larger than 1 MiB, not a PEM file"));
    }
    Ok(bytes)
}

/// An error that names the file, what it was for, and the reason.
fn file_error(file: &Path, what: &str, e: impl fmt::Display) -> io::Error {
    io::Error::new(
        ErrorKind::InvalidData,
        format!("cannot load the TLS {what} {}: {e}", file.display()),
    )
}
