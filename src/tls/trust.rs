//! Which servers a client of this binary trusts over TLS: the system's roots (or those of
//! `SSL_CERT_FILE` / `SSL_CERT_DIR` when set), and the certificates of an extra PEM file.

use std::path::Path;
use std::sync::Arc;

use rustls::{ClientConfig, RootCertStore};

use super::{TlsError, provider, read_certificates};

/// A client configuration trusting the system's roots and every certificate in `extra_ca`.
/// Roots the system store holds but rustls cannot use are skipped.
pub fn client_config(extra_ca: Option<&Path>) -> Result<Arc<ClientConfig>, TlsError> {
    let mut roots = RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    for e in &native.errors {
        log::debug!("system certificates: {e}");
    }
    roots.add_parsable_certificates(native.certs);
    if let Some(path) = extra_ca {
        for cert in read_certificates("--ca", path)? {
            roots.add(cert)?;
        }
    }
    let config = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}
