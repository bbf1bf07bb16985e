//! The TLS configuration: the certificate chain, key and (for mutual TLS)
//! client CA read from PEM files, in one place for start-up and reload.
//! [`TlsConfig`] keeps the current rustls `ServerConfig` behind a lock that
//! is held only to clone or swap an `Arc`: a new connection takes the
//! config of the moment, a reload swaps in a new one for the connections
//! after it, and those already open go on with theirs.
//!
//! [`client_config`] is the other side, for `echo-server probe --tls`: the
//! same PEM reading, the same provider.

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig, SignatureScheme};
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
    let provider = provider();
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

/// The crypto provider of both sides.
fn provider() -> Arc<CryptoProvider> {
    // rustls 0.23.48 deprecates the ring provider for want of post-quantum
    // key exchange, which only its aws-lc-rs provider has; that one needs
    // cmake and a larger C build, which this crate does not take on.
    // Classical X25519/P-256 key exchange, as every TLS client offers.
    #[allow(deprecated)]
    Arc::new(rustls::crypto::ring::default_provider())
}

/// What a TLS client (the probe) trusts and shows.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct ClientFiles {
    /// CA certificates, PEM, that must have signed the server's
    /// certificate; `None`: the certificate is not checked at all.
    pub(crate) ca: Option<PathBuf>,
    /// A client certificate chain and its key, PEM, for a server that
    /// asks for one (mutual TLS).
    pub(crate) identity: Option<(PathBuf, PathBuf)>,
}

/// The client configuration the files describe, on the same provider as
/// the server's. Session resumption is off: each probe is one connection.
pub(crate) fn client_config(files: &ClientFiles) -> io::Result<Arc<ClientConfig>> {
    let provider = provider();
    let builder = ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .map_err(io::Error::other)?;
    let builder = match &files.ca {
        Some(ca_file) => {
            let mut roots = RootCertStore::empty();
            for cert in certificates(ca_file, "CA")? {
                roots.add(cert).map_err(|e| file_error(ca_file, "CA", e))?;
            }
            builder.with_root_certificates(roots)
        }
        None => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider))),
    };
    let mut config = match &files.identity {
        None => builder.with_no_client_auth(),
        Some((cert_file, key_file)) => {
            let chain = certificates(cert_file, "client certificate")?;
            let key = PrivateKeyDer::from_pem_slice(&read_pem(key_file, "client key")?)
                .map_err(|e| file_error(key_file, "client key", e))?;
            builder.with_client_auth_cert(chain, key).map_err(|e| {
                io::Error::new(
                    ErrorKind::InvalidData,
                    format!(
                        "cannot use the TLS client certificate {} with the key {}: {e}",
                        cert_file.display(),
                        key_file.display()
                    ),
                )
            })?
        }
    };
    config.resumption = rustls::client::Resumption::disabled();
    Ok(Arc::new(config))
}

/// A verifier that accepts any server certificate, for a probe without a
/// CA file: it checks that a server echoes over TLS, not who the server
/// is (a health check on 127.0.0.1 rarely has a certificate for that
/// name). The handshake's signatures are still checked, so the peer does
/// hold the key of the certificate it showed.
#[derive(Debug)]
struct AnyCertificate(Arc<CryptoProvider>);

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
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
