//! The certificate the hub serves, swapped while it runs: on SIGHUP, and when its files change.
//! A connection takes the certificate current at its handshake; a replacement that does not load
//! leaves the current one in place.

use std::fmt;
use std::os::unix::fs::MetadataExt;
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use rustls::ServerConfig;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use super::{CertFiles, TlsError, provider};

/// How often the files are looked at. A change is loaded once two looks in a row agree, so a
/// file caught half-written is not taken for a broken one.
const LOOK_EVERY: Duration = Duration::from_secs(2);

/// The certificate and key currently served, and where they come from.
pub struct ReloadingCert {
    files: CertFiles,
    current: RwLock<Arc<CertifiedKey>>,
}

impl fmt::Debug for ReloadingCert {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReloadingCert")
            .field("files", &self.files)
            .finish_non_exhaustive()
    }
}

impl ResolvesServerCert for ReloadingCert {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(
            self.current
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .clone(),
        )
    }
}

impl ReloadingCert {
    /// Loads the files; the hub does not start without a certificate it can serve.
    pub fn open(files: CertFiles) -> Result<Arc<ReloadingCert>, TlsError> {
        let current = RwLock::new(files.load()?);
        Ok(Arc::new(ReloadingCert { files, current }))
    }

    /// Loads the files again and serves them to new connections; on an error the current
    /// certificate stays.
    pub fn reload(&self) -> Result<(), TlsError> {
        let loaded = self.files.load()?;
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = loaded;
        Ok(())
    }

    /// The listener's configuration: TLS 1.2 and 1.3, no client certificates, the certificate
    /// from this resolver.
    pub fn server_config(self: &Arc<Self>) -> Result<ServerConfig, TlsError> {
        Ok(ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_cert_resolver(self.clone()))
    }

    fn reload_logged(&self, why: &str) {
        match self.reload() {
            Ok(()) => log::info!(
                "TLS certificate reloaded from {} ({why})",
                self.files.cert.display()
            ),
            Err(e) => log::warn!(
                "TLS certificate not reloaded ({why}): {e}; new connections keep the previous one"
            ),
        }
    }
}

/// What identifies a version of one file: its inode (a file replaced by a rename, or a symlink
/// pointed elsewhere, has a new one), size and modification time.
type Stamp = Option<(u64, u64, u64, SystemTime)>;

fn stamp(files: &CertFiles) -> [Stamp; 2] {
    [&files.cert, &files.key].map(|path| {
        let m = std::fs::metadata(path).ok()?;
        Some((m.dev(), m.ino(), m.len(), m.modified().ok()?))
    })
}

/// Reloads `cert` on every SIGHUP and when its files change, for as long as the task runs.
pub fn watch(cert: Arc<ReloadingCert>) -> actix_web::rt::task::JoinHandle<()> {
    actix_web::rt::spawn(async move {
        use tokio::signal::unix::{SignalKind, signal};
        let mut hangups = match signal(SignalKind::hangup()) {
            Ok(s) => Some(s),
            Err(e) => {
                log::warn!("cannot watch SIGHUP ({e}); the certificate reloads on file changes");
                None
            }
        };
        let mut loaded = stamp(&cert.files);
        let mut last_look = loaded;
        let mut looks = tokio::time::interval(LOOK_EVERY);
        looks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let hangup = async {
                let received = match hangups.as_mut() {
                    Some(s) => s.recv().await,
                    None => None,
                };
                if received.is_none() {
                    std::future::pending::<()>().await;
                }
            };
            tokio::select! {
                _ = hangup => {
                    loaded = stamp(&cert.files);
                    cert.reload_logged("SIGHUP");
                }
                _ = looks.tick() => {
                    let now = stamp(&cert.files);
                    if now != loaded && now == last_look {
                        loaded = now;
                        cert.reload_logged("the files changed");
                    }
                    last_look = now;
                }
            }
        }
    })
}
