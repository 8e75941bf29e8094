//! HTTPS served directly: the server's certificate chain and key from PEM
//! files, optionally client certificates checked against a CA (mutual
//! TLS), all reloadable while serving ([`Tls::reload`]: on SIGHUP, or when
//! the files change), so that a renewed certificate or a new client CA
//! takes effect without a restart and without dropping a connection.
//!
//! Invariants: a reload that fails (a missing file, a key that does not
//! match, a half-written PEM) changes nothing: the server keeps the last
//! good configuration and the error names the file; each connection uses
//! the configuration current when it was accepted; the handshake has the
//! same deadline as a request head ([`crate::ServeLimits::header_read_timeout`]).

use rustls::ServerConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::SystemTime;

/// Largest PEM file read (a certificate chain, a key, a CA bundle).
pub const MAX_PEM_BYTES: u64 = 1 << 20;

/// Where the TLS material is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// The certificate chain, PEM, the server's own first.
    pub cert: PathBuf,
    /// The private key, PEM (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// CA certificates, PEM: when set, clients may present a certificate
    /// issued by one of them (and one that is not is refused in the
    /// handshake); a client without a certificate is still served, and
    /// authenticates otherwise (a bearer token).
    pub client_ca: Option<PathBuf>,
}

/// Why TLS material was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// A file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A file is not what it should be.
    #[error("{path}: {problem}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        problem: String,
    },
}

/// The certificate of the client of a connection, when it presented one
/// that the client CA ([`TlsFiles::client_ca`]) issued: every request of
/// that connection carries it as an extension (its DER).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientCertificate(pub Vec<u8>);

/// TLS for [`crate::serve`]: the configuration connections are accepted
/// with, swapped whole by [`Tls::reload`].
pub struct Tls {
    files: TlsFiles,
    current: RwLock<Arc<ServerConfig>>,
    /// When the files were last read (their latest modification then).
    loaded: RwLock<Option<SystemTime>>,
}

impl Tls {
    /// Read `files`; refused (naming the file) unless they make a working
    /// server configuration.
    pub fn load(files: TlsFiles) -> Result<Tls, TlsError> {
        let stamp = modified(&files);
        let config = config(&files)?;
        Ok(Tls {
            files,
            current: RwLock::new(Arc::new(config)),
            loaded: RwLock::new(stamp),
        })
    }

    /// Read the files again. On success new connections use them; on
    /// failure nothing changes and the error says why.
    pub fn reload(&self) -> Result<(), TlsError> {
        let stamp = modified(&self.files);
        let config = config(&self.files)?;
        *self.current.write().expect("not poisoned") = Arc::new(config);
        *self.loaded.write().expect("not poisoned") = stamp;
        Ok(())
    }

    /// [`Tls::reload`] if a file changed since the last load (a renewal
    /// tool replaced the certificate): `None` when none did.
    pub fn reload_if_changed(&self) -> Option<Result<(), TlsError>> {
        let stamp = modified(&self.files);
        if stamp == *self.loaded.read().expect("not poisoned") {
            return None;
        }
        Some(self.reload())
    }

    /// The files it reads.
    pub fn files(&self) -> &TlsFiles {
        &self.files
    }

    pub(crate) fn acceptor(&self) -> tokio_rustls::TlsAcceptor {
        tokio_rustls::TlsAcceptor::from(self.current.read().expect("not poisoned").clone())
    }
}

/// The latest modification time of `files`, if they can be looked at.
fn modified(files: &TlsFiles) -> Option<SystemTime> {
    [
        Some(&files.cert),
        Some(&files.key),
        files.client_ca.as_ref(),
    ]
    .into_iter()
    .flatten()
    .filter_map(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok())
    .max()
}

/// A PEM file, read only up to [`MAX_PEM_BYTES`] (a larger one is refused
/// without being read whole), errors naming it.
pub fn read_pem(path: &Path) -> Result<Vec<u8>, TlsError> {
    use std::io::Read;
    let read_error = |source| TlsError::Read {
        path: path.to_owned(),
        source,
    };
    let mut bytes = Vec::new();
    std::fs::File::open(path)
        .map_err(read_error)?
        .take(MAX_PEM_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(read_error)?;
    if bytes.len() as u64 > MAX_PEM_BYTES {
        return Err(invalid(path, format!("larger than {MAX_PEM_BYTES} bytes")));
    }
    Ok(bytes)
}

fn invalid(path: &Path, problem: impl Into<String>) -> TlsError {
    TlsError::Invalid {
        path: path.to_owned(),
        problem: problem.into(),
    }
}

fn certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_slice_iter(&read_pem(path)?)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| invalid(path, format!("not PEM certificates: {e}")))?;
    if certs.is_empty() {
        return Err(invalid(path, "no certificate in it"));
    }
    Ok(certs)
}

fn config(files: &TlsFiles) -> Result<ServerConfig, TlsError> {
    let chain = certificates(&files.cert)?;
    let key = PrivateKeyDer::from_pem_slice(&read_pem(&files.key)?)
        .map_err(|e| invalid(&files.key, format!("not a PEM private key: {e}")))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| invalid(&files.cert, e.to_string()))?;
    let builder = match &files.client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            for cert in certificates(ca)? {
                roots
                    .add(cert)
                    .map_err(|e| invalid(ca, format!("not a CA certificate: {e}")))?;
            }
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                provider,
            )
            .allow_unauthenticated()
            .build()
            .map_err(|e| invalid(ca, e.to_string()))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder.with_single_cert(chain, key).map_err(|e| {
        invalid(
            &files.key,
            format!("does not go with {}: {e}", files.cert.display()),
        )
    })?;
    // HTTP/1.1 only, as served without TLS.
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}
