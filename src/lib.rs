//! synchub: a real-time sync hub for local-first and collaborative apps.
//!
//! This crate is the shell around the actor system in `synchub-actors`: configuration, auth,
//! the HTTP routes, and [`run`], which serves a hub on a listener until a shutdown signal.

pub mod auth;
pub mod config;
pub mod data;
pub mod http;
pub mod listener;
pub mod open_files;
pub mod tls;

use std::future::Future;
use std::net::TcpListener;
use std::sync::Arc;
use std::time::Duration;

use actix_http::HttpService;
use actix_service::map_config;
use actix_tls::accept::rustls_0_23::TlsStream;
use actix_web::dev::AppConfig;
use actix_web::rt::net::TcpStream;
use actix_web::{App, web};
use synchub_actors::admin::GetCensus;
use synchub_actors::connection::ConnSocket;
use synchub_actors::{Hub, HubError, TokenVerifier};

use crate::auth::{JwtVerifier, KeyError};
use crate::config::{Config, ConfigError};
use crate::http::AppState;
use crate::tls::{ReloadingCert, TlsError};

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Key(#[from] KeyError),
    #[error(transparent)]
    Hub(#[from] HubError),
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error("server: {0}")]
    Io(#[from] std::io::Error),
}

fn tcp_under_tls(tls: &TlsStream<TcpStream>) -> &TcpStream {
    tls.get_ref().0
}

/// How long shutdown waits for sessions to finish closing before it stops the server.
const CLOSE_GRACE: Duration = Duration::from_secs(3);

/// Serves the hub on `listener` until `shutdown` resolves, then shuts down gracefully: stop
/// accepting, close every session with 1001, make every write durable. Must run inside an
/// actix system (`actix_web::rt::System`).
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
) -> Result<(), RunError> {
    for warning in config.validate()? {
        log::warn!("{warning}");
    }
    auth::self_test()?;
    let tls = config.tls_files().map(ReloadingCert::open).transpose()?;
    let verifier = Arc::new(JwtVerifier::from_config(&config.auth)?);
    let hub_verifier: Option<Arc<dyn TokenVerifier>> = config
        .auth
        .required
        .then(|| verifier.clone() as Arc<dyn TokenVerifier>);
    let hub = Hub::start(config.hub_settings(listener.local_addr()?), hub_verifier)?;
    log::info!(
        "synchub {} node {} serving on {}://{} (data in {})",
        env!("CARGO_PKG_VERSION"),
        hub.node_id(),
        if tls.is_some() { "https" } else { "http" },
        listener.local_addr()?,
        config.storage.path
    );
    let workers = match config.server.workers {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n,
    };
    let payload_limit = hub.session_settings().codec_max_bytes();
    let state = web::Data::new(AppState::new(hub.clone(), Arc::new(config), verifier));
    let recording = http::start_recording(&state);
    let make_app = move || {
        App::new()
            .wrap(actix_web::middleware::ErrorHandlers::new().default_handler(http::json_errors))
            .wrap(actix_web::middleware::from_fn(http::check_request))
            .app_data(state.clone())
            .app_data(web::PayloadConfig::new(payload_limit))
            .configure(http::routes)
    };
    let builder = actix_server::Server::build()
        .workers(workers)
        .disable_signals()
        .shutdown_timeout(5);
    let closing = builder.graceful_shutdown_signal();
    let rooms_hub = hub.clone();
    // What HttpServer would build, plus the upgrade service that hands WebSocket connections
    // over to their sessions (see `http::upgrade`). Made once on each worker's thread, as it
    // starts (or restarts), which is when the worker offers its thread for rooms.
    macro_rules! service {
        ($io:ty, $tcp:expr) => {{
            rooms_hub.offer_thread_for_rooms();
            let closing = closing.clone();
            HttpService::<$io, _, _>::build()
                .graceful_shutdown_signal(move || {
                    let closing = closing.clone();
                    async move { closing.notified().await }
                })
                .client_disconnect_timeout(Duration::from_secs(1))
                // Sessions write small frames that must leave at once; they already gather what
                // they have into one write per wake-up, so Nagle's delay would only add latency.
                .tcp_nodelay(true)
                // Each connection's socket, so that a session whose client stopped reading can
                // be cut off (see `synchub_actors::connection::ConnSocket`).
                .on_connect_ext(|io: &$io, ext| {
                    use std::os::fd::AsRawFd;
                    let tcp: &TcpStream = $tcp(io);
                    if let Ok(peer) = tcp.peer_addr() {
                        ext.insert(ConnSocket {
                            fd: tcp.as_raw_fd(),
                            peer,
                        });
                    }
                })
                .upgrade(http::upgrade::factory(make_app.clone()))
                .finish(map_config(make_app(), |_| AppConfig::default()))
        }};
    }
    let server = match &tls {
        Some(cert) => {
            let config = cert.server_config()?;
            builder.listen("synchub", listener, move || {
                service!(TlsStream<TcpStream>, tcp_under_tls).rustls_0_23(config.clone())
            })?
        }
        None => builder.listen("synchub", listener, move || {
            service!(TcpStream, std::convert::identity).tcp()
        })?,
    }
    .run();
    let reloading = tls.map(tls::watch);
    let handle = server.handle();
    let serving = actix_web::rt::spawn(server);
    shutdown.await;
    log::info!("shutting down");
    handle.pause().await;
    hub.shutdown().await;
    let deadline = std::time::Instant::now() + CLOSE_GRACE;
    while std::time::Instant::now() < deadline {
        match hub.directory().send(GetCensus).await {
            Ok(c) if c.sessions_total > 0 => {
                actix_web::rt::time::sleep(Duration::from_millis(20)).await
            }
            _ => break,
        }
    }
    handle.stop(true).await;
    recording.abort();
    if let Some(task) = reloading {
        task.abort();
    }
    match serving.await {
        Ok(result) => result?,
        Err(e) => log::warn!("server task ended abnormally: {e}"),
    }
    // The HTTP workers drop their copies of the hub, and the rooms running on them (with their
    // storage handles), on their own threads, a moment after the server reports them stopped;
    // wait for that, so the caller can reopen the data directory as soon as this returns.
    let deadline = std::time::Instant::now() + CLOSE_GRACE;
    while !hub.is_last_handle() && std::time::Instant::now() < deadline {
        actix_web::rt::time::sleep(Duration::from_millis(5)).await;
    }
    log::info!("stopped");
    Ok(())
}
