//! Certificates made for a test: a CA of its own and server certificates it signs, written as
//! the PEM files `server.tls_cert` / `server.tls_key` name; clients that trust that CA only.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
use rustls::pki_types::{CertificateDer, ServerName};

pub struct TestCa {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

/// A server certificate and its key, as PEM, and the certificate as the server presents it.
pub struct ServerCert {
    pub cert_pem: String,
    pub key_pem: String,
    pub der: CertificateDer<'static>,
}

impl TestCa {
    pub fn new() -> TestCa {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "synchub test CA");
        let key = KeyPair::generate().expect("CA key");
        TestCa {
            issuer: CertifiedIssuer::self_signed(params, key).expect("CA certificate"),
        }
    }

    pub fn pem(&self) -> String {
        self.issuer.pem()
    }

    /// A new server certificate for `localhost` and 127.0.0.1 (each call a new key too).
    pub fn server_cert(&self) -> ServerCert {
        let params = CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
            .expect("server params");
        let key = KeyPair::generate().expect("server key");
        let cert = params.signed_by(&key, &self.issuer).expect("server cert");
        ServerCert {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            der: cert.der().clone(),
        }
    }

    /// Writes the CA certificate to `dir/ca.pem` (for a client that reads a file).
    pub fn write_ca(&self, dir: &Path) -> PathBuf {
        let path = dir.join("ca.pem");
        std::fs::write(&path, self.pem()).expect("write CA");
        path
    }

    /// A client configuration that trusts this CA and nothing else.
    pub fn client_config(&self) -> Arc<rustls::ClientConfig> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.issuer.der().clone()).expect("CA root");
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        Arc::new(
            rustls::ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .expect("protocol versions")
                .with_root_certificates(roots)
                .with_no_client_auth(),
        )
    }
}

/// Where a test keeps the certificate and key files of a hub.
pub struct CertPaths {
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl CertPaths {
    pub fn in_dir(dir: &Path) -> CertPaths {
        CertPaths {
            cert: dir.join("server.crt"),
            key: dir.join("server.key"),
        }
    }

    /// Replaces both files the way a deployment tool does: each written aside, then renamed
    /// over the old one.
    pub fn install(&self, cert: &ServerCert) {
        for (path, text) in [(&self.cert, &cert.cert_pem), (&self.key, &cert.key_pem)] {
            let aside = path.with_extension("new");
            std::fs::write(&aside, text).expect("write");
            std::fs::rename(&aside, path).expect("rename");
        }
    }

    /// The environment that gives a child hub these files.
    pub fn env(&self) -> [(&'static str, String); 2] {
        [
            ("SYNCHUB_SERVER_TLS_CERT", self.cert.display().to_string()),
            ("SYNCHUB_SERVER_TLS_KEY", self.key.display().to_string()),
        ]
    }
}

/// The certificate a server at `addr` presents to a new connection for `localhost`.
pub async fn served_certificate(
    addr: SocketAddr,
    trust: Arc<rustls::ClientConfig>,
) -> CertificateDer<'static> {
    let tcp = super::within("connect", tokio::net::TcpStream::connect(addr))
        .await
        .expect("tcp");
    let name = ServerName::try_from("localhost").expect("name");
    let tls = super::within(
        "TLS handshake",
        tokio_rustls::TlsConnector::from(trust).connect(name, tcp),
    )
    .await
    .expect("TLS handshake");
    let (_, conn) = tls.get_ref();
    conn.peer_certificates()
        .and_then(|chain| chain.first())
        .expect("a certificate")
        .clone()
        .into_owned()
}

/// An HTTPS client that trusts `trust`'s roots.
pub fn https_client(trust: Arc<rustls::ClientConfig>) -> awc::Client {
    awc::Client::builder()
        .connector(awc::Connector::new().rustls_0_23(trust))
        .timeout(super::TIMEOUT)
        .finish()
}

/// A WebSocket over TLS to `url` (`wss://…`), trusting `trust`'s roots.
pub async fn connect_wss(url: &str, trust: Arc<rustls::ClientConfig>) -> super::Ws {
    let connecting = tokio_tungstenite::connect_async_tls_with_config(
        url,
        None,
        false,
        Some(tokio_tungstenite::Connector::Rustls(trust)),
    );
    let (stream, _) = super::within("wss connect", connecting)
        .await
        .expect("wss connect");
    super::Ws::from_stream(stream)
}
