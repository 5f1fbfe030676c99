//! TLS on the hub's own port (`server.tls_cert` / `server.tls_key`), and the trust that the
//! hub's own clients (`synchub bench`) put in the servers they reach over `wss://`.
//!
//! Every TLS context uses the aws-lc-rs provider, the backend jsonwebtoken already builds, named
//! explicitly: with two providers compiled in, rustls would not pick one by itself.

mod reload;
mod trust;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;

pub use reload::{ReloadingCert, watch};
pub use trust::client_config;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{key} {path:?}: cannot read it: {source}")]
    Read {
        key: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{key} {path:?}: {why}")]
    Pem {
        key: &'static str,
        path: PathBuf,
        why: String,
    },
    #[error("server.tls_key {key:?} is not the key of the certificate in server.tls_cert {cert:?}")]
    Mismatch { cert: PathBuf, key: PathBuf },
    #[error("server.tls_key {path:?}: {why}")]
    Key { path: PathBuf, why: rustls::Error },
    #[error("TLS: {0}")]
    Rustls(#[from] rustls::Error),
}

/// The two PEM files of `server.tls_cert` and `server.tls_key`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

pub(crate) fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

fn read(key: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        key,
        path: path.to_owned(),
        source,
    })
}

/// Every certificate in a PEM file, in order; an error when there is none.
pub(crate) fn read_certificates(
    key: &'static str,
    path: &Path,
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let bad = |why: &str| TlsError::Pem {
        key,
        path: path.to_owned(),
        why: why.to_owned(),
    };
    let bytes = read(key, path)?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|_| bad("not a readable PEM file"))?;
    if certs.is_empty() {
        return Err(bad("holds no PEM certificate (BEGIN CERTIFICATE)"));
    }
    Ok(certs)
}

impl CertFiles {
    /// Reads and checks both files: a certificate chain, and the private key of its first
    /// certificate.
    pub fn load(&self) -> Result<Arc<CertifiedKey>, TlsError> {
        let chain = read_certificates("server.tls_cert", &self.cert)?;
        let bytes = read("server.tls_key", &self.key)?;
        let key = PrivateKeyDer::from_pem_slice(&bytes).map_err(|e| TlsError::Pem {
            key: "server.tls_key",
            path: self.key.clone(),
            why: match e {
                pem::Error::NoItemsFound => "holds no PEM private key".into(),
                _ => "not a readable PEM file".into(),
            },
        })?;
        match CertifiedKey::from_der(chain, key, &provider()) {
            Ok(certified) => Ok(Arc::new(certified)),
            Err(rustls::Error::InconsistentKeys(_)) => Err(TlsError::Mismatch {
                cert: self.cert.clone(),
                key: self.key.clone(),
            }),
            Err(rustls::Error::InvalidCertificate(why)) => Err(TlsError::Pem {
                key: "server.tls_cert",
                path: self.cert.clone(),
                why: format!("not a usable certificate ({why:?})"),
            }),
            Err(why) => Err(TlsError::Key {
                path: self.key.clone(),
                why,
            }),
        }
    }
}
