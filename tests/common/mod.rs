//! Test support: a real hub on a free port, and a small WebSocket / HTTP client.
#![allow(dead_code)]

pub mod cluster;
pub mod pocket;
pub mod raw_ws;
pub mod redis_cluster;
pub mod sentinel;
pub mod synckit;
pub mod tls;
pub mod tokens;

use std::net::{SocketAddr, TcpListener};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use synchub::config::Config;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

pub const TIMEOUT: Duration = Duration::from_secs(10);

/// How long one test may run once it has started a hub. Every step of a test is bounded by
/// [`TIMEOUT`] where a helper takes it; this bounds the rest (a loop that never sees what it
/// waits for), so a hang fails with the test's name instead of stalling the suite.
pub const TEST_LIMIT: Duration = Duration::from_secs(300);

/// `f`, or a failure naming `what` if it takes longer than [`TIMEOUT`].
pub async fn within<F: std::future::Future>(what: &str, f: F) -> F::Output {
    match tokio::time::timeout(TIMEOUT, f).await {
        Ok(out) => out,
        Err(_) => panic!("{what}: nothing within {TIMEOUT:?}"),
    }
}

/// Aborts the test process if the test that made it is still running after [`TEST_LIMIT`];
/// dropping it (with the hub that holds it) stands it down.
pub struct Watchdog {
    _stand_down: std::sync::mpsc::Sender<()>,
}

impl Watchdog {
    pub fn start() -> Watchdog {
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let test = std::thread::current().name().unwrap_or("a test").to_owned();
        std::thread::spawn(move || {
            if let Err(std::sync::mpsc::RecvTimeoutError::Timeout) = rx.recv_timeout(TEST_LIMIT) {
                eprintln!("{test} still runs after {TEST_LIMIT:?}: aborting the test process");
                std::process::abort();
            }
        });
        Watchdog { _stand_down: tx }
    }
}

/// A hub running in-process, in its own actix system on its own thread.
pub struct TestHub {
    pub addr: SocketAddr,
    pub dir: tempfile::TempDir,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
    /// Says when the hub's thread is done, so a stop can wait for it with a deadline.
    stopped: std::sync::mpsc::Receiver<()>,
    _watchdog: Watchdog,
}

/// The development configuration tests start from: auth off, data in `dir`.
pub fn test_config(dir: &std::path::Path) -> Config {
    let mut c = Config::default();
    c.server.bind = "127.0.0.1:0".into();
    c.storage.path = dir.display().to_string();
    c.auth.required = false;
    c.server.workers = 2;
    c
}

impl TestHub {
    pub fn start() -> TestHub {
        TestHub::start_with(|_| {})
    }

    pub fn start_with(edit: impl FnOnce(&mut Config)) -> TestHub {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut config = test_config(dir.path());
        edit(&mut config);
        TestHub::start_in(dir, config)
    }

    pub fn start_in(dir: tempfile::TempDir, config: Config) -> TestHub {
        // The listening socket the binary makes, backlog and all.
        let listener =
            synchub::listener::listen(SocketAddr::from(([127, 0, 0, 1], 0))).expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let (stopped_tx, stopped) = std::sync::mpsc::channel();
        let thread = std::thread::spawn(move || {
            let _done = Done(stopped_tx);
            let system = actix_web::rt::System::new();
            let result = system.block_on(async move {
                let _ = ready_tx.send(());
                synchub::run(config, listener, async move {
                    let _ = rx.await;
                })
                .await
            });
            if let Err(e) = result {
                panic!("hub failed: {e}");
            }
        });
        ready_rx.recv_timeout(TIMEOUT).expect("hub thread started");
        TestHub {
            addr,
            dir,
            stop: Some(tx),
            thread: Some(thread),
            stopped,
            _watchdog: Watchdog::start(),
        }
    }

    pub fn ws_url(&self, path: &str) -> String {
        format!("ws://{}{}", self.addr, path)
    }

    pub fn http_url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// Stops the hub gracefully and waits for it.
    pub fn stop(mut self) -> tempfile::TempDir {
        self.shutdown();
        let dir = tempfile::tempdir().expect("tempdir");
        std::mem::replace(&mut self.dir, dir)
    }

    fn shutdown(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            // A graceful stop waits for open sockets to close (the server's shutdown timeout).
            let waited = self.stopped.recv_timeout(TIMEOUT + Duration::from_secs(30));
            assert!(
                !matches!(waited, Err(std::sync::mpsc::RecvTimeoutError::Timeout)),
                "the hub did not stop"
            );
            t.join().expect("hub thread");
        }
    }
}

impl Drop for TestHub {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Sends on its channel when dropped: when the hub's thread ends, however it ends.
struct Done(std::sync::mpsc::Sender<()>);

impl Drop for Done {
    fn drop(&mut self) {
        let _ = self.0.send(());
    }
}

pub type RawWs =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A WebSocket client speaking JSON text frames.
pub struct Ws {
    stream: tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
}

/// How a connection ended.
#[derive(Debug, PartialEq)]
pub struct Closed {
    pub code: u16,
    pub reason: String,
}

impl Ws {
    pub fn from_stream(stream: RawWs) -> Ws {
        Ws { stream }
    }

    pub async fn connect(url: &str) -> Ws {
        let (stream, _) = tokio::time::timeout(TIMEOUT, tokio_tungstenite::connect_async(url))
            .await
            .expect("connect in time")
            .expect("connect");
        Ws { stream }
    }

    /// The HTTP status of a refused upgrade.
    pub async fn refused_status(url: &str) -> u16 {
        match within("upgrade", tokio_tungstenite::connect_async(url)).await {
            Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => resp.status().as_u16(),
            Err(e) => panic!("unexpected error: {e}"),
            Ok(_) => panic!("upgrade was accepted"),
        }
    }

    pub async fn send_text(&mut self, text: &str) {
        within("send", self.stream.send(Message::Text(text.into())))
            .await
            .expect("send");
    }

    /// Sends, reporting a connection that is gone instead of failing the test.
    pub async fn try_send_text(&mut self, text: &str) -> Result<(), String> {
        within("send", self.stream.send(Message::Text(text.into())))
            .await
            .map_err(|e| e.to_string())
    }

    pub async fn send_binary(&mut self, bytes: Vec<u8>) {
        within("send", self.stream.send(Message::Binary(bytes.into())))
            .await
            .expect("send");
    }

    pub async fn send_json(&mut self, v: &Value) {
        self.send_text(&v.to_string()).await;
    }

    /// The next text or binary message, skipping control frames.
    pub async fn recv_text(&mut self) -> String {
        self.try_recv(TIMEOUT).await.expect("a message in time")
    }

    pub async fn try_recv(&mut self, wait: Duration) -> Option<String> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let next = tokio::time::timeout_at(deadline, self.stream.next())
                .await
                .ok()?;
            match next {
                Some(Ok(Message::Text(t))) => return Some(t.to_string()),
                Some(Ok(Message::Binary(b))) => {
                    return Some(String::from_utf8_lossy(&b).into_owned());
                }
                Some(Ok(Message::Close(c))) => panic!("closed unexpectedly: {c:?}"),
                Some(Ok(_)) => continue,
                Some(Err(e)) => panic!("socket error: {e}"),
                None => panic!("socket ended"),
            }
        }
    }

    /// The next message; `Ok(None)` if nothing came in time, `Err` once the connection is gone
    /// (closed, reset, or its server killed).
    pub async fn recv_or_lost(&mut self, wait: Duration) -> Result<Option<String>, String> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let Ok(next) = tokio::time::timeout_at(deadline, self.stream.next()).await else {
                return Ok(None);
            };
            match next {
                Some(Ok(Message::Text(t))) => return Ok(Some(t.to_string())),
                Some(Ok(Message::Close(c))) => return Err(format!("closed: {c:?}")),
                Some(Ok(_)) => continue,
                Some(Err(e)) => return Err(e.to_string()),
                None => return Err("ended".into()),
            }
        }
    }

    /// The next message, or how the server closed the socket; `None` if nothing came in time.
    pub async fn next_or_close(&mut self, wait: Duration) -> Option<Result<String, Closed>> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let next = tokio::time::timeout_at(deadline, self.stream.next())
                .await
                .ok()?;
            match next {
                Some(Ok(Message::Text(t))) => return Some(Ok(t.to_string())),
                Some(Ok(Message::Close(c))) => {
                    return Some(Err(Closed {
                        code: c.as_ref().map_or(1005, |f| u16::from(f.code)),
                        reason: c.map(|f| f.reason.to_string()).unwrap_or_default(),
                    }));
                }
                Some(Ok(_)) => continue,
                Some(Err(e)) => panic!("socket error: {e}"),
                None => panic!("socket ended"),
            }
        }
    }

    pub async fn recv_json(&mut self) -> Value {
        let text = self.recv_text().await;
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
    }

    /// Sends a request and returns the reply with the same id; other messages are kept.
    pub async fn request(&mut self, v: &Value) -> Value {
        self.send_json(v).await;
        let id = v["id"].clone();
        loop {
            let msg = self.recv_json().await;
            if msg["id"] == id {
                return msg;
            }
        }
    }

    /// Sends a message and returns the first reply of type `kind`; other messages are dropped.
    pub async fn request_typed(&mut self, v: &Value, kind: &str) -> Value {
        self.send_json(v).await;
        loop {
            let msg = self.recv_json().await;
            if msg["type"] == kind {
                return msg;
            }
        }
    }

    /// Asserts nothing arrives for `ms` milliseconds.
    pub async fn expect_silence(&mut self, ms: u64) {
        if let Some(m) = self.try_recv(Duration::from_millis(ms)).await {
            panic!("expected silence, got {m}");
        }
    }

    /// Waits for the server to close the connection.
    pub async fn closed(&mut self) -> Closed {
        loop {
            let next = tokio::time::timeout(TIMEOUT, self.stream.next())
                .await
                .expect("close in time");
            match next {
                Some(Ok(Message::Close(Some(frame)))) => {
                    return Closed {
                        code: u16::from(frame.code),
                        reason: frame.reason.to_string(),
                    };
                }
                Some(Ok(Message::Close(None))) | None => {
                    return Closed {
                        code: u16::from(CloseCode::Status),
                        reason: String::new(),
                    };
                }
                Some(Ok(_)) => continue,
                Some(Err(e)) => panic!("socket error before close: {e}"),
            }
        }
    }
}

/// Writes relay change `i` of 50 KB and waits for its ack (version `i`): 200 of them are more
/// than the kernel's socket buffers hold for a client that stopped reading.
pub async fn relay_write_big(writer: &mut Ws, i: u64) {
    let change = serde_json::json!(["t", i.to_string(), "v", "x".repeat(50_000), 1, 1, "w", 1, 0]);
    let update =
        serde_json::json!({"type": "update", "changes": [change], "version": 0, "siteId": "w"});
    let ack = writer.request_typed(&update, "ack").await;
    assert_eq!(ack["version"], i);
}

/// An HTTP response's status and body as JSON (or a JSON string of the text).
pub async fn http(
    method: &str,
    url: &str,
    bearer: Option<&str>,
    body: Option<&Value>,
) -> (u16, Value) {
    let client = awc::Client::builder().timeout(TIMEOUT).finish();
    let mut req = match method {
        "GET" => client.get(url),
        "POST" => client.post(url),
        "DELETE" => client.delete(url),
        other => panic!("method {other}"),
    };
    if let Some(t) = bearer {
        req = req.insert_header(("Authorization", format!("Bearer {t}")));
    }
    let mut resp = match body {
        Some(b) => req.send_json(b).await,
        None => req.send().await,
    }
    .expect("http request");
    let status = resp.status().as_u16();
    let bytes = resp.body().limit(64 << 20).await.expect("body");
    let text = String::from_utf8_lossy(&bytes).into_owned();
    let value = serde_json::from_str(&text).unwrap_or(Value::String(text));
    (status, value)
}

pub async fn get(url: &str) -> (u16, Value) {
    http("GET", url, None, None).await
}

/// The built `synchub` binary running as a child process, for crash and signal tests.
pub struct ChildHub {
    pub child: std::process::Child,
    pub addr: SocketAddr,
    _watchdog: Watchdog,
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port()
}

impl ChildHub {
    /// Starts `synchub serve` on `data` with auth off and waits until it answers.
    pub async fn spawn(data: &std::path::Path, env: &[(&str, &str)]) -> ChildHub {
        ChildHub::spawn_logging_to(data, env, std::process::Stdio::inherit()).await
    }

    /// [`ChildHub::spawn`], its log (stderr) going to `log`.
    pub async fn spawn_logging_to(
        data: &std::path::Path,
        env: &[(&str, &str)],
        log: impl Into<std::process::Stdio>,
    ) -> ChildHub {
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_synchub"));
        // Only what the test sets configures the child: `SYNCHUB_*` variables of whoever runs
        // the tests (say `SYNCHUB_STORAGE_DURABILITY=relaxed`) would change what is tested.
        for (var, _) in std::env::vars_os() {
            if var.to_string_lossy().starts_with("SYNCHUB_") {
                cmd.env_remove(var);
            }
        }
        cmd.arg("serve")
            // A directory without a config.toml: only the environment configures the child.
            .current_dir(data)
            .env("SYNCHUB_SERVER_BIND", addr.to_string())
            .env("SYNCHUB_STORAGE_PATH", data.join("db"))
            .env("SYNCHUB_AUTH_REQUIRED", "false")
            .env("RUST_LOG", "error")
            .stdout(std::process::Stdio::null())
            .stderr(log);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().expect("spawn synchub");
        let hub = ChildHub {
            child,
            addr,
            _watchdog: Watchdog::start(),
        };
        let deadline = tokio::time::Instant::now() + TIMEOUT;
        loop {
            // A connection whose two ends are the same address is the kernel connecting the
            // probe to itself (the free port is in the ephemeral range), not the hub listening.
            let probe = within("connect", tokio::net::TcpStream::connect(addr)).await;
            if let Ok(stream) = probe
                && stream.local_addr().ok() != stream.peer_addr().ok()
            {
                return hub;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "child hub did not start"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn ws_url(&self, path: &str) -> String {
        format!("ws://{}{}", self.addr, path)
    }

    pub fn http_url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// SIGKILL: no chance to flush or clean up.
    pub fn kill(mut self) {
        self.sigkill();
    }

    /// SIGKILL, keeping the handle (its data directory is reused by a new process).
    pub fn sigkill(&mut self) {
        self.child.kill().expect("kill");
        self.child.wait().expect("reap");
    }

    /// SIGTERM, then the exit status.
    pub fn terminate(mut self) -> std::process::ExitStatus {
        let status = std::process::Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("kill -TERM");
        assert!(status.success());
        let deadline = std::time::Instant::now() + TIMEOUT;
        loop {
            if let Some(s) = self.child.try_wait().expect("wait") {
                return s;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "hub did not exit on SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for ChildHub {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Connects with `Authorization: Bearer <token>` on the upgrade request.
pub async fn connect_with_bearer(url: &str, token: &str) -> Ws {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let mut req = url.into_client_request().expect("request");
    req.headers_mut().insert(
        "Authorization",
        format!("Bearer {token}").parse().expect("header"),
    );
    let (stream, _) = tokio::time::timeout(TIMEOUT, tokio_tungstenite::connect_async(req))
        .await
        .expect("connect in time")
        .expect("connect");
    Ws { stream }
}

/// A small deterministic generator, so a seed always replays the same run.
pub struct Lcg(pub u64);

impl Lcg {
    pub fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        self.0 >> 33
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    pub fn shuffle<T>(&mut self, v: &mut [T]) {
        for i in (1..v.len()).rev() {
            let j = self.below(i as u64 + 1) as usize;
            v.swap(i, j);
        }
    }
}

/// Copies a directory tree (a data directory, for a test that alters or upgrades the copy).
pub fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for entry in std::fs::read_dir(from).expect("read dir") {
        let entry = entry.expect("entry");
        let target = to.join(entry.file_name());
        if entry.file_type().expect("type").is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).expect("copy");
        }
    }
}

/// Runs the built `synchub` with `args`: whether it succeeded, and what it printed.
pub fn run_synchub<S: AsRef<std::ffi::OsStr>>(args: &[S]) -> (bool, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_synchub"))
        .args(args)
        .env("RUST_LOG", "off")
        .output()
        .expect("run synchub");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}
