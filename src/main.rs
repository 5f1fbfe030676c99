use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use synchub::auth::{self, Claims};
use synchub::config::Config;
use synchub_actors::Permissions;

/// jemalloc, with its background threads: they hand freed pages back to the system some
/// seconds after a flood, while the hub sits idle. glibc's malloc cost a sixth of the server's
/// CPU under `rooms` (buffers allocated on one thread are freed on another) and kept what a flood
/// freed in per-thread arenas until trimmed; mimalloc was as fast but held half as much again
/// per idle connection. The A/B is in the README's benchmark section.
#[cfg(not(target_env = "msvc"))]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[derive(Parser)]
#[command(
    name = "synchub",
    version,
    about = "A real-time sync hub for local-first apps"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the hub.
    Serve {
        /// Configuration file; default: ./config.toml when present, else built-in defaults.
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Check a configuration and print it as the hub would use it (secrets masked).
    CheckConfig {
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Mint an HS256 access token with the configured auth.jwt_secret (for development).
    Token {
        #[arg(long)]
        config: Option<PathBuf>,
        /// The user id (`sub` claim).
        #[arg(long)]
        sub: String,
        /// Room patterns the user may read (repeatable; `*` is a wildcard).
        #[arg(long)]
        read: Vec<String>,
        /// Room patterns the user may write (repeatable; write implies read).
        #[arg(long)]
        write: Vec<String>,
        #[arg(long)]
        admin: bool,
        /// A `room` claim: the Pocket room of HTTP requests made with this token.
        #[arg(long)]
        room: Option<String>,
        /// Lifetime in seconds (at most ten years).
        #[arg(long, default_value_t = 3600,
              value_parser = clap::value_parser!(i64).range(1..=10 * 365 * 24 * 3600))]
        ttl: i64,
    },
    /// Drive a hub (or any server speaking a dialect) with load and report what it sustains.
    #[cfg(feature = "bench")]
    Bench(synchub_bench::BenchArgs),
    /// Take a consistent backup of a running hub (every change acked before it starts).
    Backup {
        /// The hub, as http://HOST:PORT or https://HOST:PORT.
        #[arg(long)]
        url: String,
        /// PEM certificates an https:// hub may present or chain to, beside the system's roots
        /// (which SSL_CERT_FILE / SSL_CERT_DIR replace when set).
        #[arg(long, value_name = "FILE")]
        ca: Option<PathBuf>,
        /// The admin token (`auth.admin_token`), when the hub has one.
        #[arg(long, env = "SYNCHUB_ADMIN_TOKEN")]
        token: Option<String>,
        /// The file to write.
        #[arg(long)]
        out: PathBuf,
    },
    /// Check a data directory offline: replay every room, compare its counters, report what is
    /// corrupt (exit 1 if anything is).
    CheckData {
        /// The data directory (`storage.path`) of a hub that is not running.
        dir: PathBuf,
    },
    /// Upgrade a data directory of an earlier storage format (`serve` does it by itself).
    Migrate {
        /// The data directory (`storage.path`) of a hub that is not running.
        dir: PathBuf,
    },
    /// Make a data directory from a backup file.
    Restore {
        /// The backup file.
        file: PathBuf,
        /// The data directory to create (it must be empty or absent).
        #[arg(long)]
        data: PathBuf,
    },
}

fn load(path: Option<&std::path::Path>) -> Result<Config, ExitCode> {
    match Config::load(path) {
        Ok((config, file)) => {
            match file {
                Some(f) => log::info!("configuration from {}", f.display()),
                None => log::info!("no configuration file: built-in defaults"),
            }
            Ok(config)
        }
        Err(e) => {
            eprintln!("synchub: {e}");
            Err(ExitCode::from(2))
        }
    }
}

/// Resolves on SIGTERM or SIGINT.
async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        Err(e) => {
            log::warn!("cannot watch SIGTERM ({e}); only Ctrl-C stops the hub");
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

fn serve(config: Config) -> ExitCode {
    if !config.auth.required {
        log::warn!("==============================================================");
        log::warn!("AUTH IS OFF (auth.required = false): development mode.");
        log::warn!("Every client is admitted with full read and write rights.");
        log::warn!("==============================================================");
    }

    match synchub::open_files::raise_to_hard_limit() {
        Ok(n) => log::debug!("open files limit: {n}"),
        Err(e) => log::warn!("cannot raise the open files limit: {e}"),
    }
    let bound = config.server.bind_addr().and_then(|addr| {
        synchub::listener::listen(addr).map_err(|e| format!("cannot bind {addr}: {e}"))
    });
    let listener = match bound {
        Ok(l) => l,
        Err(why) => {
            eprintln!("synchub: {why}");
            return ExitCode::from(1);
        }
    };
    let system = actix_web::rt::System::new();
    match system.block_on(synchub::run(config, listener, shutdown_signal())) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("synchub: {e}");
            ExitCode::from(1)
        }
    }
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(
        env_logger::Env::default()
            .default_filter_or("info,actix_server=warn,fjall=warn,lsm_tree=warn"),
    )
    .init();
    let cli = Cli::parse();
    match cli.command {
        #[cfg(feature = "bench")]
        Command::Bench(args) => synchub_bench::run(args, |ca| {
            synchub::tls::client_config(ca).map_err(|e| e.to_string())
        }),
        Command::Backup {
            url,
            ca,
            token,
            out,
        } => match synchub::data::backup(&url, ca.as_deref(), token.as_deref(), &out) {
            Ok(done) => {
                println!(
                    "{}: {} rooms, {} bytes, in {:.1} s",
                    out.display(),
                    done.report.rooms,
                    done.report.bytes,
                    done.took.as_secs_f64()
                );
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("synchub: backup failed: {e}");
                ExitCode::from(1)
            }
        },
        Command::CheckData { dir } => synchub::data::check(&dir),
        Command::Migrate { dir } => synchub::data::migrate(&dir),
        Command::Restore { file, data } => match synchub::data::restore(&file, &data) {
            Ok(done) => {
                println!(
                    "{}: {} rooms restored from {}, in {:.1} s",
                    data.display(),
                    done.report.rooms,
                    file.display(),
                    done.took.as_secs_f64()
                );
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("synchub: restore failed: {e}");
                ExitCode::from(1)
            }
        },
        Command::Serve { config } => match load(config.as_deref()) {
            Ok(c) => serve(c),
            Err(code) => code,
        },
        Command::CheckConfig { config } => {
            let config = match load(config.as_deref()) {
                Ok(c) => c,
                Err(code) => return code,
            };
            let checked = config.validate().and_then(|warnings| {
                // The files `serve` would refuse to start with.
                match config.tls_files().map(|files| files.load()) {
                    Some(Err(e)) => Err(e.to_string()),
                    _ => Ok(warnings),
                }
                .map_err(|e| synchub::config::ConfigError::Invalid(vec![e]))
            });
            match checked {
                Ok(warnings) => {
                    for w in warnings {
                        eprintln!("warning: {w}");
                    }
                    print!("{}", config.redacted_toml());
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("synchub: {e}");
                    ExitCode::from(2)
                }
            }
        }
        Command::Token {
            config,
            sub,
            read,
            write,
            admin,
            room,
            ttl,
        } => {
            let config = match load(config.as_deref()) {
                Ok(c) => c,
                Err(code) => return code,
            };
            if config.auth.jwt_secret.is_none() {
                eprintln!("synchub: auth.jwt_secret is empty; set it (or SYNCHUB_AUTH_JWT_SECRET)");
                return ExitCode::from(2);
            }
            let verifier = match auth::JwtVerifier::from_config(&config.auth) {
                Ok(v) => v,
                Err(e) => {
                    eprintln!("synchub: {e}");
                    return ExitCode::from(2);
                }
            };
            let now = auth::unix_now();
            let claims = Claims {
                sub: Some(sub),
                exp: now.saturating_add(ttl),
                iat: Some(now),
                permissions: Some(Permissions {
                    can_read: read,
                    can_write: write,
                    is_admin: admin,
                }),
                room,
                ..Claims::default()
            };
            match auth::mint_access(&config.auth, &verifier, claims) {
                Ok(t) => {
                    println!("{t}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("synchub: {e}");
                    ExitCode::from(1)
                }
            }
        }
    }
}
