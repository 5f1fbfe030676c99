//! `synchub backup` and `synchub restore`: a running hub's data into a file, and a file into a
//! new data directory.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use synchub_actors::Namespace;
use synchub_actors::dialects::{self, Model};
use synchub_actors::storage::{self, BackupError, BackupReport, Store};

use crate::config::Config;

#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error("{0}")]
    Http(String),
    #[error("{path}: {source}")]
    File {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Backup(#[from] BackupError),
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
    #[error("{0} is not empty: restore into an empty or new directory")]
    NotEmpty(PathBuf),
}

/// A finished backup or restore, for the line the command prints.
pub struct Done {
    pub report: BackupReport,
    pub took: Duration,
}

/// Fetches `GET /admin/backup` from the hub at `url` into `out` (written next to it first and
/// renamed once the file checks out, so `out` is never a cut-off backup). An `https://` hub
/// must present a certificate of the system's roots or of `ca`.
pub fn backup(
    url: &str,
    ca: Option<&Path>,
    token: Option<&str>,
    out: &Path,
) -> Result<Done, DataError> {
    let started = Instant::now();
    let partial = out.with_extension("partial");
    let file = |source| DataError::File {
        path: partial.clone(),
        source,
    };
    let mut connector = awc::Connector::new();
    if url.starts_with("https://") {
        connector = connector.rustls_0_23(crate::tls::client_config(ca)?);
    }
    let system = actix_web::rt::System::new();
    system.block_on(async {
        let client = awc::Client::builder()
            .connector(connector)
            .disable_timeout()
            .finish();
        let mut req = client.get(format!("{}/admin/backup", url.trim_end_matches('/')));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        let mut res = req
            .send()
            .await
            .map_err(|e| DataError::Http(format!("{url}: {e}")))?;
        if !res.status().is_success() {
            let body = res.body().await.unwrap_or_default();
            return Err(DataError::Http(format!(
                "{url} answered {}: {}",
                res.status(),
                String::from_utf8_lossy(&body)
            )));
        }
        let mut f = std::io::BufWriter::new(std::fs::File::create(&partial).map_err(file)?);
        while let Some(chunk) = res.next().await {
            let chunk = chunk.map_err(|e| DataError::Http(format!("backup cut off: {e}")))?;
            f.write_all(&chunk).map_err(file)?;
        }
        let f = f.into_inner().map_err(|e| file(e.into_error()))?;
        f.sync_all().map_err(file)?;
        Ok(())
    })?;
    // Read back whole: the hash in its trailer proves the copy complete.
    let report = storage::check_backup(&partial).inspect_err(|_| {
        let _ = std::fs::remove_file(&partial);
    })?;
    std::fs::rename(&partial, out).map_err(|source| DataError::File {
        path: out.to_owned(),
        source,
    })?;
    Ok(Done {
        report,
        took: started.elapsed(),
    })
}

/// Makes `data` a data directory holding what the backup `file` holds.
pub fn restore(file: &Path, data: &Path) -> Result<Done, DataError> {
    let started = Instant::now();
    match std::fs::read_dir(data) {
        Ok(mut entries) => {
            if entries.next().is_some() {
                return Err(DataError::NotEmpty(data.to_owned()));
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(source) => {
            return Err(DataError::File {
                path: data.to_owned(),
                source,
            });
        }
    }
    let store = Store::open(data).map_err(BackupError::from)?;
    let report = store
        .restore(&mut || std::fs::File::open(file).map(|f| Box::new(f) as Box<dyn std::io::Read>));
    let report = match report {
        Ok(r) => r,
        Err(e) => {
            drop(store);
            // Leave no half-made directory behind. The store's background threads may still
            // be letting go of their files for a moment after it is dropped.
            let deadline = Instant::now() + Duration::from_secs(3);
            while std::fs::remove_dir_all(data).is_err()
                && data.exists()
                && Instant::now() < deadline
            {
                std::thread::sleep(Duration::from_millis(20));
            }
            return Err(e.into());
        }
    };
    Ok(Done {
        report,
        took: started.elapsed(),
    })
}

/// `synchub check-data DIR`: one line per room, then a summary; exit 1 when anything is wrong,
/// 2 when the directory cannot be opened at all.
pub fn check(dir: &Path) -> std::process::ExitCode {
    use std::process::ExitCode;
    if let Err(code) = data_dir(dir) {
        return code;
    }
    let store = match Store::open(dir) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("synchub: cannot open {}: {e}", dir.display());
            return ExitCode::from(2);
        }
    };
    let models = replay_models();
    let rooms = match storage::check_rooms(&store, &models) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("synchub: cannot list the rooms of {}: {e}", dir.display());
            return ExitCode::from(1);
        }
    };
    let mut bad = 0;
    for r in &rooms {
        if r.problems.is_empty() {
            println!(
                "ok       {}: seq {}, {} records, digest {}",
                r.room, r.seq, r.records, r.digest
            );
        } else {
            bad += 1;
            println!("CORRUPT  {}: {}", r.room, r.problems.join("; "));
        }
    }
    println!("{} rooms, {} corrupt", rooms.len(), bad);
    if bad == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

/// Every dialect's model as the defaults make it: the rules that make a room's state out of
/// its log do not depend on any setting.
fn replay_models() -> HashMap<Namespace, Arc<dyn Model>> {
    let defaults = Config::default();
    dialects::models(&defaults.dialects, &defaults.common_settings())
}

/// `synchub migrate DIR`: brings an older data directory to this version's format.
pub fn migrate(dir: &Path) -> std::process::ExitCode {
    use std::process::ExitCode;
    if let Err(code) = data_dir(dir) {
        return code;
    }
    let models = replay_models();
    let stamp = storage::stamp_with(&models);
    match storage::migrate(dir, &stamp) {
        Ok(r) => {
            match &r.kept_as {
                Some(kept) => println!(
                    "{}: upgraded from storage format {}: {} rooms, {} log entries; the \
                     directory as it was is kept in {}",
                    dir.display(),
                    r.from,
                    r.rooms,
                    r.entries,
                    kept.display()
                ),
                None => println!("{}: already in this version's format", dir.display()),
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("synchub: cannot migrate {}: {e}", dir.display());
            ExitCode::from(1)
        }
    }
}

/// Refuses (exit 2) what is not a data directory, before anything would create one there.
fn data_dir(dir: &Path) -> Result<(), std::process::ExitCode> {
    if storage::FjallKv::is_at(dir) || storage::SledKv::is_at(dir) {
        return Ok(());
    }
    eprintln!("synchub: {} is not a data directory", dir.display());
    Err(std::process::ExitCode::from(2))
}
