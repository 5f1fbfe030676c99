//! Reading a room's history from another node, when the Redis stream no longer holds it.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use serde_json::value::RawValue;

use super::ClusterError;
use crate::raw_json::RawJson;
use crate::room_key::RoomKey;
use crate::store::{HistoryPage, LogEntry, StateRecord, state_hash};

/// How long one history read from a peer may take.
const PEER_TIMEOUT: Duration = Duration::from_secs(10);

/// The largest history page the hub reads from a peer.
const MAX_PAGE_BYTES: usize = 256 << 20;

/// Another node, as its heartbeats describe it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Peer {
    pub node: String,
    /// Its HTTP API, e.g. `http://10.0.0.2:8080`.
    pub url: String,
    /// When it last wrote its heartbeat, in Unix milliseconds.
    pub last_heard_ms: i64,
}

/// A history page on the wire (`GET /cluster/rooms/<ns>/<room>/history`).
#[derive(Debug, Serialize, Deserialize)]
pub struct HistoryResponse {
    pub upto: u64,
    pub more: bool,
    /// `[seq, stream, key, change]`, in sequence order.
    pub entries: Vec<(u64, String, String, Box<RawValue>)>,
    /// `[stream, key, seq, state]` of records kept outside the log.
    pub records: Vec<(String, String, u64, Value)>,
}

impl HistoryResponse {
    pub fn from_page(page: HistoryPage) -> HistoryResponse {
        let entries = page
            .entries
            .into_iter()
            .filter_map(|e| {
                let body = RawValue::from_string(e.body.as_str().to_owned()).ok()?;
                Some((e.seq, e.stream, e.key, body))
            })
            .collect();
        HistoryResponse {
            upto: page.upto,
            more: page.more,
            entries,
            records: page
                .records
                .into_iter()
                .map(|(stream, key, r)| (stream, key, r.seq, r.value))
                .collect(),
        }
    }

    pub fn into_page(self) -> HistoryPage {
        HistoryPage {
            entries: self
                .entries
                .into_iter()
                .map(|(seq, stream, key, body)| LogEntry {
                    seq,
                    stream,
                    key,
                    body: RawJson::trusted(body.get().to_owned()),
                    origin: None,
                })
                .collect(),
            records: self
                .records
                .into_iter()
                .map(|(stream, key, seq, value)| {
                    let json = value.to_string();
                    let hash = state_hash(&stream, &key, &json);
                    let json_len = json.len();
                    (
                        stream,
                        key,
                        StateRecord {
                            seq,
                            hash,
                            value,
                            json_len,
                        },
                    )
                })
                .collect(),
            upto: self.upto,
            more: self.more,
        }
    }
}

/// Why a peer's history could not be read.
#[derive(Debug, thiserror::Error)]
pub enum PeerError {
    /// awc's send error is neither `Send` nor `Sync` (it may hold the request's body): its
    /// text is kept.
    #[error("cannot reach it: {0}")]
    Send(String),
    #[error("{url} answered {status}")]
    Status { url: String, status: u16 },
    #[error("unreadable history: {0}")]
    Body(#[source] awc::error::JsonPayloadError),
}

/// Reads one page of a room's history, `after < seq <= upto`, from a peer.
pub async fn read_history(
    peer: &Peer,
    token: Option<&str>,
    room: &RoomKey,
    after: u64,
    upto: u64,
    limit: usize,
) -> Result<HistoryPage, ClusterError> {
    let fail = |e: PeerError| ClusterError::Peer {
        peer: peer.node.clone(),
        source: std::sync::Arc::new(e),
    };
    let url = format!(
        "{}/cluster/rooms/{}/{}/history?after={after}&upto={upto}&limit={limit}",
        peer.url.trim_end_matches('/'),
        room.namespace,
        room.room
    );
    let client = awc::Client::builder().timeout(PEER_TIMEOUT).finish();
    let mut request = client.get(&url);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let mut response = request
        .send()
        .await
        .map_err(|e| fail(PeerError::Send(e.to_string())))?;
    if !response.status().is_success() {
        return Err(fail(PeerError::Status {
            url,
            status: response.status().as_u16(),
        }));
    }
    let body: HistoryResponse = response
        .json()
        .limit(MAX_PAGE_BYTES)
        .await
        .map_err(|e| fail(PeerError::Body(e)))?;
    Ok(body.into_page())
}
