//! WebSocket connections of the bench: opening them (optionally from a chosen source
//! address), joining a room in the dialect's way, reading, closing.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use futures_util::{SinkExt, Stream, StreamExt, TryStreamExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{Connector, MaybeTlsStream, WebSocketStream};

use super::dialect::Kind;
use super::stats::Counters;
use super::target::Endpoint;
use super::{BenchError, Ctx};

pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Small read buffers: tungstenite clears its whole read buffer on every read, and all but
/// catch-up messages are small; thousands of idle sockets should not hold 128 KiB each.
fn ws_config() -> WebSocketConfig {
    WebSocketConfig::default().read_buffer_size(16 * 1024)
}

/// Opens a TCP connection (from `source`, port 0, when given) and does the TLS handshake of a
/// `wss://` server and the WebSocket handshake.
pub async fn connect(ep: &Endpoint, url: &str, source: Option<IpAddr>) -> Result<Ws, BenchError> {
    let failed = |e: &dyn std::fmt::Display| BenchError::Connect {
        url: url.to_owned(),
        why: e.to_string(),
    };
    let socket = if ep.addr.is_ipv4() {
        TcpSocket::new_v4()
    } else {
        TcpSocket::new_v6()
    }
    .map_err(|e| failed(&e))?;
    if let Some(ip) = source {
        socket
            .bind(SocketAddr::new(ip, 0))
            .map_err(|e| failed(&format!("cannot bind {ip}: {e}")))?;
    }
    let stream = socket.connect(ep.addr).await.map_err(|e| failed(&e))?;
    stream.set_nodelay(true).map_err(|e| failed(&e))?;
    let connector = match &ep.tls {
        Some(config) => Connector::Rustls(config.clone()),
        None => Connector::Plain,
    };
    let (ws, _) = tokio_tungstenite::client_async_tls_with_config(
        url,
        stream,
        Some(ws_config()),
        Some(connector),
    )
    .await
    .map_err(|e| failed(&e))?;
    Ok(ws)
}

/// [`recv`], unless `stop` fires first: `Ok(None)` then. A reader runs on this until the
/// run ends or its connection does.
pub async fn recv_until<S>(
    stream: &mut S,
    stop: &mut tokio::sync::watch::Receiver<bool>,
) -> Result<Option<Message>, BenchError>
where
    S: Stream<Item = Result<Message, tungstenite::Error>> + Unpin,
{
    tokio::select! {
        biased;
        m = recv(stream) => m.map(Some),
        _ = stop.changed() => Ok(None),
    }
}

/// The next text or binary message. Pings are answered by tungstenite while we read.
pub async fn recv<S>(stream: &mut S) -> Result<Message, BenchError>
where
    S: Stream<Item = Result<Message, tungstenite::Error>> + Unpin,
{
    loop {
        match stream.next().await {
            Some(Ok(m @ (Message::Text(_) | Message::Binary(_)))) => return Ok(m),
            Some(Ok(Message::Close(frame))) => {
                return Err(BenchError::Closed(match frame {
                    Some(f) => format!("{} {}", u16::from(f.code), f.reason),
                    None => "without a code".into(),
                }));
            }
            Some(Ok(_)) => continue,
            Some(Err(e)) => return Err(BenchError::Closed(e.to_string())),
            None => return Err(BenchError::Closed("connection ended".into())),
        }
    }
}

/// [`recv`] with a deadline; `what` names what was awaited, for the error.
pub async fn recv_by<S>(
    stream: &mut S,
    deadline: Instant,
    what: &str,
) -> Result<Message, BenchError>
where
    S: Stream<Item = Result<Message, tungstenite::Error>> + Unpin,
{
    match tokio::time::timeout_at(deadline, recv(stream)).await {
        Ok(r) => r,
        Err(_) => Err(BenchError::Timeout(what.to_owned())),
    }
}

/// A client that has joined a room.
pub struct Client {
    pub ws: Ws,
    pub name: String,
    /// Relay: the channel's version in `connected`.
    pub version: u64,
}

/// Connects client `name` (the `index`-th of the run, for spreading over the servers) to
/// `room` and, with `subscribe`, makes it receive the room's writes (Pocket pulls the
/// collection, SyncKit subscribes). Bounded by the run's timeout.
pub async fn join(
    ctx: &Ctx,
    index: usize,
    room: &str,
    name: String,
    subscribe: bool,
) -> Result<Client, BenchError> {
    let d = ctx.dialect;
    let ep = ctx.endpoint(index);
    let url = ep.url(d.default_path(), &d.query(room, &name));
    let deadline = Instant::now() + ctx.timeout;
    let mut ws = match tokio::time::timeout_at(deadline, connect(ep, &url, None)).await {
        Ok(r) => r?,
        Err(_) => return Err(BenchError::Timeout(format!("connecting to {url}"))),
    };
    let mut version = 0;
    if d.server_speaks_first() {
        loop {
            let m = recv_by(&mut ws, deadline, "the server's greeting").await?;
            let r = d.decode(&m, &mut |_, _| {})?;
            if r.kind == Kind::Connected {
                version = r.version.unwrap_or(0);
                break;
            }
        }
    }
    if subscribe && let Some(m) = d.subscribe(room) {
        ws.send(m).await.map_err(BenchError::ws)?;
        loop {
            let m = recv_by(&mut ws, deadline, "the answer to subscribing").await?;
            match d.decode(&m, &mut |_, _| {})?.kind {
                Kind::PullReply => break,
                Kind::Error => {
                    return Err(BenchError::Protocol(format!(
                        "subscribing to {room} was refused"
                    )));
                }
                _ => {}
            }
        }
    }
    Counters::add(&ctx.counters.connections, 1);
    Ok(Client { ws, name, version })
}

/// Runs `f(0..n)` with at most `concurrency` at a time; the results in index order.
pub async fn open_many<T, F, Fut>(n: usize, concurrency: usize, f: F) -> Result<Vec<T>, BenchError>
where
    F: FnMut(usize) -> Fut,
    Fut: std::future::Future<Output = Result<T, BenchError>>,
{
    futures_util::stream::iter((0..n).map(f))
        .buffered(concurrency.max(1))
        .try_collect()
        .await
}

/// Sends a close frame on every socket, a bounded time for all of them.
pub async fn close_all(sockets: Vec<Ws>, within: Duration) {
    let closing =
        futures_util::stream::iter(sockets).for_each_concurrent(256, |mut ws| async move {
            let _ = ws.close(None).await;
        });
    let _ = tokio::time::timeout(within, closing).await;
}
