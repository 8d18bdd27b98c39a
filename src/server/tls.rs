//! HTTPS served by our own servers (the collector): the rustls server
//! configuration from PEM files; the collector's accept loop wraps each
//! connection with tokio-rustls before hyper serves it. Crate choice:
//! tokio-rustls is maintained by the rustls project itself and hyper-util's
//! connection builder is what axum is built on, so nothing here is a
//! third-party wrapper that could lag behind either (axum-server was the
//! alternative). The ring provider is chosen explicitly, so the build needs
//! no C toolchain beyond what ring already uses and no process-wide default.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// Longest a client may take to finish the TLS handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Why the TLS set-up could not be read.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read the TLS certificate chain {}: {cause}", path.display())]
    Certificate { path: PathBuf, cause: String },
    #[error("cannot read the TLS private key {}: {cause}", path.display())]
    Key { path: PathBuf, cause: String },
    #[error("the TLS certificate {} and key {} do not go together: {cause}", cert.display(), key.display())]
    Mismatch {
        cert: PathBuf,
        key: PathBuf,
        cause: String,
    },
}

/// A server configuration from a PEM certificate chain (leaf first, as
/// `fullchain.pem` from an ACME client) and a PEM private key (PKCS#8, PKCS#1
/// or SEC1). HTTP/1.1 only, as the collector speaks.
pub fn load_server_config(cert: &Path, key: &Path) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .and_then(|certs| certs.collect())
        .map_err(|e| TlsError::Certificate {
            path: cert.to_path_buf(),
            cause: e.to_string(),
        })?;
    if chain.is_empty() {
        return Err(TlsError::Certificate {
            path: cert.to_path_buf(),
            cause: "no `BEGIN CERTIFICATE` block".into(),
        });
    }
    let private_key = PrivateKeyDer::from_pem_file(key).map_err(|e| TlsError::Key {
        path: key.to_path_buf(),
        cause: e.to_string(),
    })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Mismatch {
            cert: cert.to_path_buf(),
            key: key.to_path_buf(),
            cause: e.to_string(),
        })?
        .with_no_client_auth()
        .with_single_cert(chain, private_key)
        .map_err(|e| TlsError::Mismatch {
            cert: cert.to_path_buf(),
            key: key.to_path_buf(),
            cause: e.to_string(),
        })?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}
