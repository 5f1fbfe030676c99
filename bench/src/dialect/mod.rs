//! The dialects as a client speaks them: the messages the bench sends and what it reads of the
//! replies, one module per dialect behind [`Client`]. Which dialects there are, and where their
//! sockets are, is the hub's registry's; the bench speaks those it has a client for.

mod pocket;
mod read;
mod relay;
mod synckit;

use std::fmt;

use synchub_actors::dialects::{DIALECTS, DialectSpec};
use tokio_tungstenite::tungstenite::Message;

pub use read::{DecodeError, Decoded, Kind};

/// The bench's client side of each dialect it can speak, by the dialect's name.
static CLIENTS: &[&dyn Client] = &[&pocket::Pocket, &synckit::Synckit, &relay::Relay];

/// The client side of one dialect's wire protocol.
pub trait Client: Sync {
    /// The name of the dialect it speaks, as the registry has it.
    fn name(&self) -> &'static str;
    /// What `--dialect`'s help says of it.
    fn about(&self) -> &'static str;
    /// Query parameters beyond the room's, for a connection of `client` (Pocket's `nodeId`).
    fn query_extra(&self, _client: &str) -> Option<String> {
        None
    }
    /// Whether the server opens the conversation (relay's `connected`).
    fn server_speaks_first(&self) -> bool {
        false
    }
    /// Whether `--keys` and `--pad-bytes` apply.
    fn shapes_writes(&self) -> bool {
        false
    }
    /// Whether acks come back in the order of the writes, without a request id.
    fn acks_in_order(&self) -> bool {
        false
    }
    /// Changes per batch when loading a room.
    fn batch_size(&self) -> u64 {
        1000
    }
    /// One write: a new cell/document/field `<client>-<n>` whose value is `val_us`; `shape`
    /// where [`Client::shapes_writes`].
    fn write(
        &self,
        room: &str,
        client: &str,
        site: &str,
        n: u64,
        val_us: u64,
        shape: &Shape,
    ) -> Message;
    /// A batch of `count` writes `c<first>`, `c<first+1>`, … for loading a room; `batch` is
    /// the batch's number, the request id where the dialect has one.
    fn write_batch(
        &self,
        room: &str,
        client: &str,
        site: &str,
        batch: u64,
        first: u64,
        count: u64,
    ) -> Message;
    /// What makes a session receive a room's writes, where joining is not enough.
    fn subscribe(&self, room: &str) -> Option<Message>;
    /// An application-level ping, where the dialect has one.
    fn ping(&self) -> Option<Message>;
    /// Asks for a room's history: page `page`, from `checkpoint` where the dialect pages by
    /// checkpoints.
    fn catch_up(&self, room: &str, page: u64, checkpoint: Option<&str>) -> Message;
    /// What `reply` is to a catch-up of a room that was at version `target` (relay's).
    fn catch_up_page<'m>(&self, reply: &Decoded<'m>, target: u64) -> Page<'m>;
    /// Reads one message (its bytes, and whether it came as text). Every change it holds is
    /// passed to `on_change` as its key and its value when that is a non-negative integer.
    fn decode<'m>(
        &self,
        bytes: &'m [u8],
        is_text: bool,
        on_change: &mut dyn FnMut(&str, Option<u64>),
    ) -> Result<Decoded<'m>, DecodeError>;
    /// What a delivery latency includes besides the network and the server, if anything.
    fn latency_note(&self) -> &'static str {
        ""
    }
}

/// A reply's place in a catch-up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Page<'m> {
    /// Not part of the catch-up.
    Other,
    /// A page; more follow without asking.
    More,
    /// A page; the next is asked for from this checkpoint.
    AskNext(Option<&'m str>),
    /// The last page.
    Last,
}

/// A dialect as the bench speaks it: the hub's description of it and the bench's client side.
#[derive(Clone, Copy)]
pub struct Dialect {
    spec: &'static DialectSpec,
    client: &'static dyn Client,
}

impl Dialect {
    /// Every dialect of the registry the bench has a client for, in the registry's order.
    pub fn all() -> impl Iterator<Item = Dialect> {
        DIALECTS.iter().filter_map(|&spec| {
            let client = CLIENTS.iter().find(|c| c.name() == spec.name())?;
            Some(Dialect {
                spec,
                client: *client,
            })
        })
    }

    pub fn named(name: &str) -> Option<Dialect> {
        Dialect::all().find(|d| d.name() == name)
    }

    pub fn name(self) -> &'static str {
        self.spec.name()
    }

    /// The path of the dialect's socket when `--url` names none.
    pub fn default_path(self) -> &'static str {
        self.spec.websocket.paths.first().copied().unwrap_or("/")
    }

    /// The query of a connection of `client` to `room`.
    pub fn query(self, room: &str, client: &str) -> String {
        let room = self
            .spec
            .websocket
            .room
            .map(|param| format!("{}={room}", param.name));
        room.into_iter()
            .chain(self.client.query_extra(client))
            .collect::<Vec<_>>()
            .join("&")
    }

    /// Reads one message from the server; see [`Client::decode`].
    pub fn decode<'m>(
        self,
        msg: &'m Message,
        on_change: &mut dyn FnMut(&str, Option<u64>),
    ) -> Result<Decoded<'m>, DecodeError> {
        match msg {
            Message::Text(t) => self.client.decode(t.as_bytes(), true, on_change),
            Message::Binary(b) => self.client.decode(b, false, on_change),
            _ => Ok(Decoded::of(Kind::Other)),
        }
    }
}

/// The bench's client side of the dialect: how it writes, subscribes and reads catch-ups.
impl std::ops::Deref for Dialect {
    type Target = dyn Client;

    fn deref(&self) -> &(dyn Client + 'static) {
        self.client
    }
}

impl fmt::Debug for Dialect {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl serde::Serialize for Dialect {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.name())
    }
}

/// `--dialect`: the name of a dialect the bench speaks.
#[derive(Clone)]
pub struct DialectParser;

impl clap::builder::TypedValueParser for DialectParser {
    type Value = Dialect;

    fn parse_ref(
        &self,
        cmd: &clap::Command,
        arg: Option<&clap::Arg>,
        value: &std::ffi::OsStr,
    ) -> Result<Dialect, clap::Error> {
        let name =
            clap::builder::PossibleValuesParser::new(self.possible_values().into_iter().flatten())
                .parse_ref(cmd, arg, value)?;
        Dialect::named(&name).ok_or_else(|| clap::Error::new(clap::error::ErrorKind::InvalidValue))
    }

    fn possible_values(
        &self,
    ) -> Option<Box<dyn Iterator<Item = clap::builder::PossibleValue> + '_>> {
        Some(Box::new(Dialect::all().map(|d| {
            clap::builder::PossibleValue::new(d.name()).help(d.about())
        })))
    }
}

/// The key of a bench write: `<client>-<n>`. Client names and room names are made by the bench
/// from `[A-Za-z0-9_.:-]`, so they go into JSON without escaping.
pub fn write_key(client: &str, n: u64) -> String {
    format!("{client}-{n}")
}

/// Splits a key made by [`write_key`].
pub fn parse_key(key: &str) -> Option<(&str, u64)> {
    let (client, n) = key.rsplit_once('-')?;
    Some((client, n.parse().ok()?))
}

/// What writes look like beyond their number (`--keys`, `--pad-bytes`), where the dialect
/// shapes them.
#[derive(Debug, Clone, Default)]
pub struct Shape {
    /// Cycle over this many records per writer; 0 writes a new record every time.
    pub keys: u64,
    pub pad: String,
}

impl Shape {
    fn key(&self, n: u64) -> u64 {
        if self.keys == 0 { n } else { n % self.keys }
    }
}

fn text(s: String) -> Message {
    Message::Text(s.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bench_speaks_every_dialect_of_the_registry() {
        let names: Vec<&str> = Dialect::all().map(Dialect::name).collect();
        let registered: Vec<&str> = DIALECTS.iter().map(|d| d.name()).collect();
        assert_eq!(names, registered);
        let relay = Dialect::named("relay").expect("relay");
        assert_eq!(relay.default_path(), "/relay");
        assert_eq!(relay.query("r1", "w0"), "channel=r1");
        let pocket = Dialect::named("pocket").expect("pocket");
        assert_eq!(pocket.query("r1", "w0"), "room=r1&nodeId=w0");
        let synckit = Dialect::named("synckit").expect("synckit");
        assert_eq!(
            (synckit.default_path(), synckit.query("d", "w0").as_str()),
            ("/ws", "")
        );
        assert!(Dialect::named("nope").is_none());
        assert_eq!(parse_key(&write_key("w-3", 12)), Some(("w-3", 12)));
    }
}
