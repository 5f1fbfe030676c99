//! The configuration file: one TOML document whose every key can be overridden by an
//! environment variable `SYNCHUB_<SECTION>_<KEY>`.

use std::net::SocketAddr;
use std::ops::RangeInclusive;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::ser::SerializeMap;
use serde::{Deserialize, Serialize, Serializer};
use synchub_actors::dialects::{self, DialectSections};
use synchub_actors::{
    ClusterSettings, CommonSettings, ConnectionLimits, HubSettings, RedisTarget, RoomThreads,
    SessionSettings,
};

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid configuration: {0}")]
    Parse(String),
    #[error("environment variable {var}: {why}")]
    Env { var: String, why: String },
    #[error("invalid configuration:\n  - {}", .0.join("\n  - "))]
    Invalid(Vec<String>),
}

const DAY: u64 = 24 * 3600;
const MIB: u64 = 1 << 20;

/// A numeric key, its value and the values it may take.
#[derive(Debug, Clone)]
struct KeyRange {
    /// `section.key`, as the file and the errors name it.
    key: String,
    value: u64,
    allowed: RangeInclusive<u64>,
}

impl KeyRange {
    fn new(key: &str, value: impl TryInto<u64>, allowed: RangeInclusive<u64>) -> Self {
        KeyRange {
            key: key.to_owned(),
            // Only a `usize` wider than 64 bits fails to convert: past every maximum.
            value: value.try_into().unwrap_or(u64::MAX),
            allowed,
        }
    }

    fn error(&self) -> Option<String> {
        (!self.allowed.contains(&self.value)).then(|| {
            format!(
                "{} = {} is out of range ({} to {})",
                self.key,
                self.value,
                self.allowed.start(),
                self.allowed.end()
            )
        })
    }
}

/// Declares, beside a section's struct, the values each of its numeric keys may take; checked
/// by [`Config::validate`]. Below a minimum a feature stops working; past a maximum, arithmetic
/// on the value would overflow (seconds become milliseconds in an `i64`), a pool would not
/// start, or one client could claim the machine.
macro_rules! ranges {
    ($section:ty, $name:literal { $($key:ident: $allowed:expr),* $(,)? }) => {
        impl $section {
            fn ranges(&self) -> Vec<KeyRange> {
                vec![$(KeyRange::new(concat!($name, ".", stringify!($key)), self.$key, $allowed)),*]
            }
        }
    };
}

/// Keys where an empty string means "not set", in the file and in the environment alike: the
/// typed value is `None` then. `None` is written back as `""`, which keeps the file format (and
/// `check-config`'s output) as it was and tells the environment overrides the key is a string.
mod empty_is_none {
    use std::ffi::OsStr;

    use serde::{Deserialize, Deserializer, Serializer, ser::Error};

    pub fn serialize<T, S>(value: &Option<T>, s: S) -> Result<S::Ok, S::Error>
    where
        T: AsRef<OsStr>,
        S: Serializer,
    {
        match value.as_ref().map(|v| v.as_ref().to_str()) {
            None => s.serialize_str(""),
            Some(Some(text)) => s.serialize_str(text),
            Some(None) => Err(S::Error::custom("a path that is not UTF-8")),
        }
    }

    pub fn deserialize<'de, T, D>(d: D) -> Result<Option<T>, D::Error>
    where
        T: From<String>,
        D: Deserializer<'de>,
    {
        let text = String::deserialize(d)?;
        Ok((!text.is_empty()).then(|| T::from(text)))
    }
}

/// The hub's own sections, and each dialect's (`[pocket]`, `[synckit]`, `[relay]`), whose keys
/// its description in the registry defines. A section the file leaves out keeps its defaults;
/// one that is neither the hub's nor a dialect's is a mistake.
#[derive(Debug, Clone)]
pub struct Config {
    pub server: ServerConfig,
    pub storage: StorageConfig,
    pub auth: AuthConfig,
    pub cluster: ClusterConfig,
    /// Each dialect's section, in the order of the registry.
    pub dialects: DialectSections,
    pub limits: LimitsConfig,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            server: ServerConfig::default(),
            storage: StorageConfig::default(),
            auth: AuthConfig::default(),
            cluster: ClusterConfig::default(),
            dialects: dialects::default_sections(),
            limits: LimitsConfig::default(),
        }
    }
}

/// The sections in the file's order: the hub's, the dialects', the limits.
impl Serialize for Config {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(None)?;
        map.serialize_entry("server", &self.server)?;
        map.serialize_entry("storage", &self.storage)?;
        map.serialize_entry("auth", &self.auth)?;
        map.serialize_entry("cluster", &self.cluster)?;
        for (namespace, section) in self.dialects.iter() {
            map.serialize_entry(namespace.as_str(), &section.to_json())?;
        }
        map.serialize_entry("limits", &self.limits)?;
        map.end()
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    pub bind: String,
    /// Unset: generated once, then kept in the data directory.
    #[serde(with = "empty_is_none")]
    pub node_id: Option<String>,
    /// Seconds between the hub's WebSocket pings.
    pub heartbeat_interval_s: u64,
    /// A client silent for this many seconds is disconnected.
    pub client_timeout_s: u64,
    /// A room with no sessions and no traffic for this many seconds is unloaded.
    pub room_idle_timeout_s: u64,
    /// Threads of their own running room actors; 0 = none: rooms run on the HTTP workers'
    /// threads, beside the sessions.
    pub room_threads: usize,
    /// Browser origins (`Origin` header) allowed to open WebSockets and to call the endpoints
    /// browser apps use (CORS); empty: any. Clients that send no `Origin` (not browsers) are
    /// not affected.
    pub allowed_origins: Vec<String>,
    /// HTTP/WebSocket worker threads; 0 = one per core.
    pub workers: usize,
    /// PEM certificate chain; with `tls_key`, the port serves https:// and wss:// only.
    #[serde(with = "empty_is_none")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of the certificate.
    #[serde(with = "empty_is_none")]
    pub tls_key: Option<PathBuf>,
}

ranges!(ServerConfig, "server" {
    heartbeat_interval_s: 1..=3600,
    client_timeout_s: 1..=DAY,
    room_idle_timeout_s: 0..=30 * DAY,
    room_threads: 0..=1024,
    workers: 0..=1024,
});

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StorageConfig {
    pub path: String,
    /// When a change is acked: after the flush, or before it.
    pub durability: Durability,
    /// How long a delete stays in the log after compaction; 0 keeps it forever.
    pub tombstone_retention_s: u64,
    /// The most memory the store's block cache may use.
    pub cache_bytes: u64,
}

ranges!(StorageConfig, "storage" {
    tombstone_retention_s: 0..=100 * 365 * DAY,
    cache_bytes: MIB..=1 << 40,
});

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    pub required: bool,
    #[serde(with = "empty_is_none")]
    pub jwt_secret: Option<String>,
    #[serde(with = "empty_is_none")]
    pub jwt_public_key_file: Option<PathBuf>,
    #[serde(with = "empty_is_none")]
    pub admin_token: Option<String>,
    pub dev_login: bool,
    /// Clock-skew allowance for `exp` and `nbf`, in seconds.
    pub leeway_s: u64,
    /// When set, a token's `aud` must name it.
    #[serde(with = "empty_is_none")]
    pub audience: Option<String>,
    /// When set, a token's `iss` must be it.
    #[serde(with = "empty_is_none")]
    pub issuer: Option<String>,
}

ranges!(AuthConfig, "auth" {
    leeway_s: 0..=DAY,
});

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterConfig {
    /// Unset: a single node.
    #[serde(with = "empty_is_none")]
    pub redis_url: Option<String>,
    /// Where the other nodes reach this node's HTTP API (to read a room's history from it);
    /// unset: `http://` and the address the hub listens on.
    #[serde(with = "empty_is_none")]
    pub advertise_url: Option<String>,
    /// Prefix of every Redis key and channel the cluster uses.
    pub key_prefix: String,
    /// About how many batches each room's Redis stream keeps.
    pub stream_max_len: usize,
}

ranges!(ClusterConfig, "cluster" {
    stream_max_len: 1..=10_000_000,
});

impl Default for ClusterConfig {
    fn default() -> ClusterConfig {
        ClusterConfig {
            redis_url: None,
            advertise_url: None,
            key_prefix: "synchub".into(),
            stream_max_len: 10_000,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    pub max_frame_bytes: usize,
    pub max_document_bytes: usize,
    pub max_json_depth: usize,
    pub max_connections: usize,
    pub max_connections_per_user: usize,
    pub max_connections_per_ip: usize,
    pub max_messages_per_second: u32,
    pub max_rooms_per_session: usize,
    pub max_outbound_bytes: usize,
    /// How far ahead of the hub's clock a client's timestamp may be (SyncKit deltas).
    pub max_clock_skew_s: u64,
}

ranges!(LimitsConfig, "limits" {
    max_frame_bytes: 1024..=256 * MIB,
    max_document_bytes: 64..=256 * MIB,
    // serde_json reads 128 levels; a stored record nests its value one level deeper.
    max_json_depth: 1..=100,
    max_connections: 1..=10_000_000,
    max_connections_per_user: 1..=10_000_000,
    max_connections_per_ip: 1..=10_000_000,
    max_messages_per_second: 1..=10_000_000,
    max_rooms_per_session: 1..=1_000_000,
    max_outbound_bytes: 64 * 1024..=1 << 40,
    max_clock_skew_s: 0..=365 * DAY,
});

impl Default for ServerConfig {
    fn default() -> ServerConfig {
        ServerConfig {
            bind: "127.0.0.1:8080".into(),
            node_id: None,
            heartbeat_interval_s: 15,
            client_timeout_s: 60,
            room_idle_timeout_s: 60,
            room_threads: 0,
            allowed_origins: Vec::new(),
            workers: 0,
            tls_cert: None,
            tls_key: None,
        }
    }
}

impl ServerConfig {
    /// `bind` as a socket address, or why it is not one.
    pub fn bind_addr(&self) -> Result<SocketAddr, String> {
        self.bind.parse().map_err(|_| {
            format!(
                "server.bind {:?} is not an address like 127.0.0.1:8080",
                self.bind
            )
        })
    }
}

/// When a change is acked (`storage.durability`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Durability {
    /// Once it is on disk.
    Flush,
    /// Once it is merged and numbered; the last moments of writes can be lost in a crash.
    Relaxed,
}

impl Default for StorageConfig {
    fn default() -> StorageConfig {
        StorageConfig {
            path: "./data".into(),
            durability: Durability::Flush,
            tombstone_retention_s: 30 * 24 * 3600,
            cache_bytes: synchub_actors::storage::DEFAULT_CACHE_BYTES,
        }
    }
}

impl Default for AuthConfig {
    fn default() -> AuthConfig {
        AuthConfig {
            required: true,
            jwt_secret: None,
            jwt_public_key_file: None,
            admin_token: None,
            dev_login: false,
            leeway_s: 30,
            audience: None,
            issuer: None,
        }
    }
}

impl Default for LimitsConfig {
    fn default() -> LimitsConfig {
        LimitsConfig {
            max_frame_bytes: 1_048_576,
            max_document_bytes: 262_144,
            max_json_depth: 64,
            max_connections: 100_000,
            max_connections_per_user: 100,
            max_connections_per_ip: 1000,
            max_messages_per_second: 1000,
            max_rooms_per_session: 128,
            max_outbound_bytes: 4_194_304,
            max_clock_skew_s: 600,
        }
    }
}

const ENV_PREFIX: &str = "SYNCHUB_";

/// Applies `SYNCHUB_<SECTION>_<KEY>` variables to a parsed file. A value takes the type of the
/// key's default, so `SYNCHUB_SERVER_NODE_ID=42` stays a string.
fn apply_env(
    table: &mut toml::Table,
    vars: impl Iterator<Item = (String, String)>,
) -> Result<(), ConfigError> {
    let defaults =
        toml::Table::try_from(Config::default()).map_err(|e| ConfigError::Parse(e.to_string()))?;
    for (var, raw) in vars {
        let Some(rest) = var.strip_prefix(ENV_PREFIX) else {
            continue;
        };
        let rest = rest.to_ascii_lowercase();
        let Some((section, key)) = defaults
            .keys()
            .find_map(|s| rest.strip_prefix(&format!("{s}_")).map(|k| (s.clone(), k)))
        else {
            continue;
        };
        let env_error = |why: String| ConfigError::Env {
            var: var.clone(),
            why,
        };
        let Some(default) = defaults
            .get(&section)
            .and_then(toml::Value::as_table)
            .and_then(|t| t.get(key))
        else {
            return Err(env_error(format!("[{section}] has no key {key:?}")));
        };
        let value = match default {
            toml::Value::String(_) => toml::Value::String(raw.clone()),
            toml::Value::Integer(_) => toml::Value::Integer(
                raw.trim()
                    .parse()
                    .map_err(|_| env_error(format!("{raw:?} is not an integer")))?,
            ),
            toml::Value::Boolean(_) => {
                toml::Value::Boolean(match raw.trim().to_ascii_lowercase().as_str() {
                    "true" | "1" | "yes" | "on" => true,
                    "false" | "0" | "no" | "off" => false,
                    _ => return Err(env_error(format!("{raw:?} is not a boolean"))),
                })
            }
            // A list of strings, comma-separated (`server.allowed_origins`).
            toml::Value::Array(_) => toml::Value::Array(
                raw.split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(|s| toml::Value::String(s.to_owned()))
                    .collect(),
            ),
            _ => {
                return Err(env_error(
                    "this key cannot be set from the environment".into(),
                ));
            }
        };
        let section_table = table
            .entry(section.clone())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        match section_table.as_table_mut() {
            Some(t) => {
                t.insert(key.to_owned(), value);
            }
            None => return Err(env_error(format!("[{section}] is not a table in the file"))),
        }
    }
    Ok(())
}

impl Config {
    /// Parses a TOML document and applies the environment overrides.
    pub fn from_toml(
        text: &str,
        env: impl Iterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        let mut table: toml::Table =
            toml::from_str(text).map_err(|e| ConfigError::Parse(e.to_string()))?;
        apply_env(&mut table, env)?;
        Config::from_table(table)
    }

    /// Reads the sections of a file: the hub's own by their types, a dialect's as its
    /// description reads it.
    fn from_table(table: toml::Table) -> Result<Config, ConfigError> {
        fn read<T: serde::de::DeserializeOwned>(
            section: &str,
            value: toml::Value,
        ) -> Result<T, ConfigError> {
            value
                .try_into()
                .map_err(|e| ConfigError::Parse(format!("[{section}] {e}")))
        }
        let mut c = Config::default();
        for (section, value) in table {
            match section.as_str() {
                "server" => c.server = read(&section, value)?,
                "storage" => c.storage = read(&section, value)?,
                "auth" => c.auth = read(&section, value)?,
                "cluster" => c.cluster = read(&section, value)?,
                "limits" => c.limits = read(&section, value)?,
                name => {
                    let Some(dialect) = dialects::find(name) else {
                        return Err(ConfigError::Parse(format!(
                            "unknown section [{name}]: the sections are server, storage, auth, \
                             cluster, limits and one per dialect ({})",
                            dialects::DIALECTS
                                .iter()
                                .map(|d| d.name())
                                .collect::<Vec<_>>()
                                .join(", ")
                        )));
                    };
                    let parse_error =
                        |e: &dyn std::fmt::Display| ConfigError::Parse(format!("[{section}] {e}"));
                    if !value.is_table() {
                        return Err(parse_error(&"is not a table"));
                    }
                    let keys = serde_json::to_value(&value).map_err(|e| parse_error(&e))?;
                    let own = (dialect.settings.parse)(keys).map_err(|e| parse_error(&e))?;
                    c.dialects.set(dialect.namespace(), own);
                }
            }
        }
        Ok(c)
    }

    /// Loads `path` (or `config.toml` in the working directory when present, or the built-in
    /// defaults) and the environment overrides. Returns the file actually read.
    pub fn load(path: Option<&Path>) -> Result<(Config, Option<PathBuf>), ConfigError> {
        let path = match path {
            Some(p) => Some(p.to_path_buf()),
            None => Some(PathBuf::from("config.toml")).filter(|p| p.is_file()),
        };
        let text = match &path {
            Some(p) => std::fs::read_to_string(p).map_err(|source| ConfigError::Read {
                path: p.display().to_string(),
                source,
            })?,
            None => String::new(),
        };
        Ok((Config::from_toml(&text, std::env::vars())?, path))
    }

    /// Checks what types alone cannot; returns warnings for settings that run but surprise.
    pub fn validate(&self) -> Result<Vec<String>, ConfigError> {
        let mut errors = Vec::new();
        let mut warnings = Vec::new();
        if let Err(why) = self.server.bind_addr() {
            errors.push(why);
        }
        if self.storage.path.is_empty() {
            errors.push("storage.path is empty".into());
        }
        if self.storage.durability == Durability::Relaxed {
            warnings.push(
                "storage.durability = \"relaxed\": changes are acked before they are on disk \
                 and the last moments of writes can be lost in a crash"
                    .into(),
            );
        }
        errors.extend(self.ranges().filter_map(|r| r.error()));
        if let Some(file) = &self.auth.jwt_public_key_file
            && !file.is_file()
        {
            errors.push(format!(
                "auth.jwt_public_key_file {:?} does not exist",
                file.display().to_string()
            ));
        }
        if self.server.tls_cert.is_some() != self.server.tls_key.is_some() {
            errors.push(
                "server.tls_cert and server.tls_key go together: set both for https:// and \
                 wss://, or neither"
                    .into(),
            );
        }
        if let Some(url) = &self.cluster.redis_url {
            match RedisTarget::parse(url) {
                Err(e) => errors.push(format!("cluster.redis_url: {e}")),
                // The keys' hash tags are made of the prefix: a brace in it would end the tag
                // early and put every room in one slot, or split a room's keys over two.
                Ok(target) if target.bucketed() && self.cluster.key_prefix.contains(['{', '}']) => {
                    errors.push(
                        "cluster.key_prefix must not hold { or } on a Redis Cluster \
                         (redis+cluster://): the keys' hash tags are made of it"
                            .into(),
                    );
                }
                Ok(_) => {}
            }
            let bind_unspecified = self
                .server
                .bind_addr()
                .is_ok_and(|a| a.ip().is_unspecified());
            if self.cluster.advertise_url.is_none() && bind_unspecified {
                errors.push(format!(
                    "cluster.advertise_url is needed when server.bind ({}) listens on every \
                     address: the other nodes read history from it",
                    self.server.bind
                ));
            }
            if self
                .cluster
                .advertise_url
                .as_ref()
                .is_some_and(|url| !url.starts_with("http://"))
            {
                errors.push("cluster.advertise_url must be an http:// URL".into());
            }
            if self.tls_files().is_some() {
                errors.push(
                    "server.tls_cert on a cluster node: the nodes read history from each other \
                     over http:// (cluster.advertise_url); terminate TLS in front of the nodes"
                        .into(),
                );
            }
            if self.cluster.stream_max_len == 0 {
                errors.push("cluster.stream_max_len must be at least 1".into());
            }
            if self.cluster.key_prefix.is_empty()
                || self.cluster.key_prefix.contains(char::is_whitespace)
            {
                errors.push("cluster.key_prefix must be a word without spaces".into());
            }
            if self.auth.admin_token.is_none() && self.auth.required {
                errors.push(
                    "cluster: auth.admin_token is needed when auth is required: the nodes \
                     read room history from each other with it; set the same token on every \
                     node"
                        .into(),
                );
            } else if self.auth.admin_token.is_none() {
                warnings.push(
                    "cluster: auth.admin_token is empty, so any client can read room history \
                     from /cluster/rooms/…/history; set the same token on every node"
                        .into(),
                );
            }
        }
        if !self.auth.required {
            warnings.push(
                "auth.required = false: every client is admitted with full rights \
                 (development mode)"
                    .into(),
            );
        } else if self.auth.jwt_secret.is_none() && self.auth.jwt_public_key_file.is_none() {
            warnings.push(
                "auth.required = true but neither auth.jwt_secret nor auth.jwt_public_key_file \
                 is set: every client will be refused"
                    .into(),
            );
        }
        match (self.auth.admin_token.is_none(), self.auth.required) {
            (true, true) => warnings.push(
                "auth.admin_token is empty while auth is required: /stats, /metrics, /admin/* \
                 and /cluster/* answer 401 to everyone; set auth.admin_token to use them"
                    .into(),
            ),
            (true, false) => warnings.push(
                "auth.admin_token is empty: /stats, /metrics and /admin/* are open \
                 (development mode)"
                    .into(),
            ),
            _ => {}
        }
        if self.auth.required && self.auth.jwt_secret.as_ref().is_some_and(|s| s.len() < 32) {
            warnings.push(
                "auth.jwt_secret is shorter than 32 bytes: an HS256 secret that short can be \
                 guessed offline from any token"
                    .into(),
            );
        }
        for origin in &self.server.allowed_origins {
            let ok = (origin.starts_with("http://") || origin.starts_with("https://"))
                && !origin.ends_with('/');
            if !ok {
                errors.push(format!(
                    "server.allowed_origins: {origin:?} must be a scheme and host like \
                     https://app.example.com (no path, no trailing slash)"
                ));
            }
        }
        if self.auth.dev_login {
            if self.auth.jwt_secret.is_none() {
                errors.push("auth.dev_login = true needs auth.jwt_secret to sign tokens".into());
            }
            warnings.push("auth.dev_login = true: POST /auth/login mints tokens for anyone".into());
        }
        if errors.is_empty() {
            Ok(warnings)
        } else {
            Err(ConfigError::Invalid(errors))
        }
    }

    /// The certificate and key files when TLS is configured.
    pub fn tls_files(&self) -> Option<crate::tls::CertFiles> {
        match (&self.server.tls_cert, &self.server.tls_key) {
            (Some(cert), Some(key)) => Some(crate::tls::CertFiles {
                cert: cert.clone(),
                key: key.clone(),
            }),
            _ => None,
        }
    }

    /// Every numeric key with the values it may take, section by section.
    fn ranges(&self) -> impl Iterator<Item = KeyRange> {
        [
            self.server.ranges(),
            self.storage.ranges(),
            self.auth.ranges(),
            self.cluster.ranges(),
            self.dialect_ranges(),
            self.limits.ranges(),
        ]
        .into_iter()
        .flatten()
    }

    /// Each dialect's numeric keys, as its section declares them.
    fn dialect_ranges(&self) -> Vec<KeyRange> {
        self.dialects
            .iter()
            .flat_map(|(namespace, section)| {
                section.bounds().into_iter().map(move |b| KeyRange {
                    key: format!("{namespace}.{}", b.key),
                    value: b.value,
                    allowed: b.min..=b.max,
                })
            })
            .collect()
    }

    /// The settings of the actor system, for a hub listening on `listening`. Call after
    /// [`Config::validate`].
    pub fn hub_settings(&self, listening: SocketAddr) -> HubSettings {
        HubSettings {
            data_dir: PathBuf::from(&self.storage.path),
            relaxed: self.storage.durability == Durability::Relaxed,
            storage_cache_bytes: self.storage.cache_bytes,
            node_id: self.server.node_id.clone(),
            dialects: dialects::rooms(),
            sections: self.dialects.clone(),
            common: self.common_settings(),
            session: SessionSettings {
                heartbeat_interval: Duration::from_secs(self.server.heartbeat_interval_s),
                client_timeout: Duration::from_secs(self.server.client_timeout_s),
                max_frame_bytes: self.limits.max_frame_bytes,
                max_messages_per_second: self.limits.max_messages_per_second,
                max_outbound_bytes: self.limits.max_outbound_bytes,
            },
            connections: ConnectionLimits {
                max_connections: self.limits.max_connections,
                max_connections_per_user: self.limits.max_connections_per_user,
            },
            room_idle_timeout: Duration::from_secs(self.server.room_idle_timeout_s),
            room_threads: match self.server.room_threads {
                0 => RoomThreads::OnWorkers,
                n => RoomThreads::Own(n),
            },
            cluster: self.cluster.redis_url.as_ref().map(|url| ClusterSettings {
                redis_url: url.clone(),
                advertise_url: match &self.cluster.advertise_url {
                    None => format!("http://{listening}"),
                    Some(url) => url.trim_end_matches('/').to_owned(),
                },
                key_prefix: self.cluster.key_prefix.clone(),
                stream_max_len: self.cluster.stream_max_len,
                peer_token: self.auth.admin_token.clone(),
            }),
        }
    }

    /// What every dialect reads besides its own section.
    pub fn common_settings(&self) -> CommonSettings {
        let retention = self.storage.tombstone_retention_s;
        CommonSettings {
            max_json_depth: self.limits.max_json_depth,
            max_document_bytes: self.limits.max_document_bytes,
            max_rooms_per_session: self.limits.max_rooms_per_session,
            max_clock_skew_ms: (self.limits.max_clock_skew_s as i64).saturating_mul(1000),
            tombstone_retention_ms: (retention > 0)
                .then(|| (retention as i64).saturating_mul(1000)),
        }
    }

    /// The configuration as TOML, with secrets masked.
    pub fn redacted_toml(&self) -> String {
        let mut c = self.clone();
        for secret in [&mut c.auth.jwt_secret, &mut c.auth.admin_token]
            .into_iter()
            .flatten()
        {
            *secret = "<redacted>".into();
        }
        toml::to_string_pretty(&c).unwrap_or_else(|e| format!("# cannot render: {e}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use synchub_actors::pocket::{PocketSettings, Strategy};
    use synchub_actors::relay::RelaySettings;
    use synchub_actors::synckit::SynckitSettings;

    fn env(pairs: &[(&str, &str)]) -> impl Iterator<Item = (String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect::<Vec<_>>()
            .into_iter()
    }

    fn pocket(c: &Config) -> &PocketSettings {
        c.dialects.get().expect("pocket is a dialect")
    }

    #[test]
    fn defaults_match_the_spec() {
        let c = Config::from_toml("", env(&[])).expect("defaults");
        assert_eq!(c.server.bind, "127.0.0.1:8080");
        assert_eq!(c.storage.path, "./data");
        assert_eq!(c.storage.durability, Durability::Flush);
        assert!(c.auth.required);
        assert_eq!(c.auth.leeway_s, 30);
        assert_eq!(pocket(&c).conflict_strategy, Strategy::LastWriteWins);
        assert_eq!(pocket(&c).max_pull_limit, 1000);
        let synckit: &SynckitSettings = c.dialects.get().expect("synckit is a dialect");
        assert_eq!(synckit.batch_ms, 50);
        assert_eq!(c.limits.max_frame_bytes, 1_048_576);
        assert_eq!(c.limits.max_outbound_bytes, 4_194_304);
        assert!(c.validate().is_ok());
    }

    #[test]
    fn environment_overrides_the_file_with_typed_values() {
        let file = "[server]\nbind = \"0.0.0.0:1\"\n[limits]\nmax_json_depth = 3\n";
        let c = Config::from_toml(
            file,
            env(&[
                ("SYNCHUB_SERVER_BIND", "127.0.0.1:9999"),
                ("SYNCHUB_SERVER_NODE_ID", "42"),
                ("SYNCHUB_AUTH_REQUIRED", "false"),
                ("SYNCHUB_LIMITS_MAX_FRAME_BYTES", "2048"),
                (
                    "SYNCHUB_SERVER_ALLOWED_ORIGINS",
                    "https://a.test, https://b.test",
                ),
                ("UNRELATED", "x"),
            ]),
        )
        .expect("valid");
        assert_eq!(c.server.bind, "127.0.0.1:9999");
        assert_eq!(c.server.node_id.as_deref(), Some("42"));
        assert!(!c.auth.required);
        assert_eq!(c.limits.max_frame_bytes, 2048);
        assert_eq!(c.limits.max_json_depth, 3);
        assert_eq!(
            c.server.allowed_origins,
            ["https://a.test", "https://b.test"]
        );
    }

    #[test]
    fn mistakes_are_reported() {
        assert!(Config::from_toml("[server]\nbnd = \"x\"\n", env(&[])).is_err());
        assert!(Config::from_toml("", env(&[("SYNCHUB_LIMITS_MAX_FRAME_BYTES", "lots")])).is_err());
        assert!(Config::from_toml("", env(&[("SYNCHUB_SERVER_NOPE", "1")])).is_err());
        // Strategies and the durability are read once, as what they name, or refused.
        assert!(Config::from_toml("[pocket]\nconflict_strategy = \"custom\"\n", env(&[])).is_err());
        assert!(Config::from_toml("[storage]\ndurability = \"often\"\n", env(&[])).is_err());
        let c = Config::from_toml(
            "[pocket.collections.todos]\nconflict_strategy = \"merge\"\n",
            env(&[("SYNCHUB_STORAGE_DURABILITY", "relaxed")]),
        )
        .expect("parses");
        assert_eq!(
            pocket(&c).collections["todos"].conflict_strategy,
            Strategy::Merge
        );
        assert_eq!(c.storage.durability, Durability::Relaxed);
    }

    #[test]
    fn dialect_sections_are_read_shown_and_overridden_like_the_hubs() {
        let file = "[synckit]\nbatch_ms = 5\n[relay]\nmax_changes_per_message = 7\n\
                    [pocket.collections.todos]\nconflict_strategy = \"merge\"\n";
        let c = Config::from_toml(
            file,
            env(&[
                ("SYNCHUB_POCKET_MAX_PULL_LIMIT", "20"),
                ("SYNCHUB_POCKET_CONFLICT_STRATEGY", "server-wins"),
            ]),
        )
        .expect("valid");
        let synckit: &SynckitSettings = c.dialects.get().expect("synckit");
        let relay: &RelaySettings = c.dialects.get().expect("relay");
        assert_eq!((synckit.batch_ms, relay.max_changes_per_message), (5, 7));
        assert_eq!(pocket(&c).max_pull_limit, 20);
        assert_eq!(pocket(&c).conflict_strategy, Strategy::ServerWins);
        // What `check-config` shows reads back as the same configuration.
        let shown = c.redacted_toml();
        let again = Config::from_toml(&shown, env(&[])).expect("reads back");
        assert_eq!(pocket(&again), pocket(&c), "{shown}");
        assert_eq!(again.dialects.get::<SynckitSettings>(), Some(synckit));
        assert_eq!(again.dialects.get::<RelaySettings>(), Some(relay));
        for mistake in [
            "[chat]\nmax = 1\n",
            "pocket = 3\n",
            "[relay]\nmax_changes = 1\n",
            "[pocket]\nmax_pull_limit = -1\n",
        ] {
            assert!(Config::from_toml(mistake, env(&[])).is_err(), "{mistake}");
        }
        for var in ["SYNCHUB_POCKET_COLLECTIONS", "SYNCHUB_RELAY_NOPE"] {
            assert!(Config::from_toml("", env(&[(var, "1")])).is_err(), "{var}");
        }
        let c = Config::from_toml("[synckit]\nbatch_ms = 60001\n", env(&[])).expect("parses");
        let Err(ConfigError::Invalid(errors)) = c.validate() else {
            panic!("an out-of-range dialect key passes");
        };
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(errors[0].contains("synckit.batch_ms"), "{errors:?}");
    }

    #[test]
    fn tls_files_come_in_pairs_and_not_on_a_cluster_node() {
        let c = Config::from_toml("", env(&[("SYNCHUB_SERVER_TLS_CERT", "/etc/hub/cert.pem")]))
            .expect("parses");
        assert_eq!(c.server.tls_cert, Some(PathBuf::from("/etc/hub/cert.pem")));
        assert_eq!(c.tls_files(), None);
        let Err(ConfigError::Invalid(errors)) = c.validate() else {
            panic!("a certificate without a key passes");
        };
        assert!(errors[0].contains("go together"), "{errors:?}");

        let file = "[server]\ntls_cert = \"c.pem\"\ntls_key = \"k.pem\"\n";
        let c = Config::from_toml(file, env(&[])).expect("parses");
        assert!(c.validate().is_ok());
        let files = c.tls_files().expect("both set");
        assert_eq!(files.cert, PathBuf::from("c.pem"));
        assert_eq!(files.key, PathBuf::from("k.pem"));
        let cluster = format!(
            "{file}[auth]\nrequired = false\n[cluster]\nredis_url = \"redis://127.0.0.1:6379\"\n"
        );
        let c = Config::from_toml(&cluster, env(&[])).expect("parses");
        let Err(ConfigError::Invalid(errors)) = c.validate() else {
            panic!("TLS on a cluster node passes");
        };
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(errors[0].contains("cluster node"), "{errors:?}");
    }

    #[test]
    fn redis_urls_name_one_redis_or_sentinels() {
        let with = |url: &str| {
            let file = format!("[auth]\nrequired = false\n[cluster]\nredis_url = \"{url}\"\n");
            Config::from_toml(&file, env(&[]))
                .expect("parses")
                .validate()
        };
        assert!(with("redis://127.0.0.1:6379").is_ok());
        assert!(with("redis+sentinel://10.0.0.1:26379,10.0.0.2:26379/main").is_ok());
        assert!(with("redis+cluster://10.0.0.1:7000,10.0.0.2:7000").is_ok());
        for bad in [
            "rediss://h:1",
            "redis+sentinel://h:1",
            "redis+sentinel://h/main",
            "redis+cluster://h",
            "redis+cluster://h:7000/1",
            "redis+cluster://u:p@h:7000",
        ] {
            let Err(ConfigError::Invalid(errors)) = with(bad) else {
                panic!("{bad} passes");
            };
            assert!(errors[0].contains("cluster.redis_url"), "{errors:?}");
        }
    }

    #[test]
    fn a_redis_cluster_key_prefix_holds_no_braces() {
        let with = |url: &str| {
            let file = format!(
                "[auth]\nrequired = false\n[cluster]\nredis_url = \"{url}\"\n\
                 key_prefix = \"a{{b}}\"\n"
            );
            Config::from_toml(&file, env(&[]))
                .expect("parses")
                .validate()
        };
        let Err(ConfigError::Invalid(errors)) = with("redis+cluster://h:7000") else {
            panic!("a prefix with braces passes on a Redis Cluster");
        };
        assert!(errors[0].contains("cluster.key_prefix"), "{errors:?}");
        // One Redis has no slots: its keys were always named so.
        assert!(with("redis://h:6379").is_ok());
    }

    #[test]
    fn numbers_out_of_range_are_refused_with_their_key() {
        let file = "[storage]\ntombstone_retention_s = 9223372036854775807\n\
                    [server]\nroom_threads = 100000\n[limits]\nmax_json_depth = 500\n";
        let c = Config::from_toml(
            file,
            env(&[("SYNCHUB_AUTH_LEEWAY_S", "9223372036854775807")]),
        )
        .expect("parses: the types hold these values");
        let Err(ConfigError::Invalid(errors)) = c.validate() else {
            panic!("out-of-range values pass");
        };
        let text = errors.join("\n");
        for key in [
            "storage.tombstone_retention_s",
            "server.room_threads",
            "limits.max_json_depth",
            "auth.leeway_s",
        ] {
            assert!(text.contains(key), "{key} not named in: {text}");
        }
        assert_eq!(errors.len(), 4, "{text}");
        // The defaults, and every key at the edge of its range, pass.
        let mut edge = Config::default();
        for range in edge.ranges() {
            assert!(*range.allowed.start() <= 1 << 20, "{}", range.key);
        }
        edge.limits.max_json_depth = 100;
        edge.storage.tombstone_retention_s = 0;
        assert!(edge.validate().is_ok());
    }

    #[test]
    fn an_empty_string_means_unset_in_the_file_and_the_environment() {
        let file = "[server]\nnode_id = \"\"\ntls_cert = \"\"\ntls_key = \"\"\n\
                    [auth]\njwt_secret = \"\"\nadmin_token = \"admin\"\nissuer = \"\"\n\
                    [cluster]\nredis_url = \"redis://127.0.0.1:6379\"\n";
        let c = Config::from_toml(
            file,
            env(&[
                // Empty in the environment unsets what the file set.
                ("SYNCHUB_CLUSTER_REDIS_URL", ""),
                ("SYNCHUB_AUTH_AUDIENCE", ""),
                ("SYNCHUB_AUTH_JWT_PUBLIC_KEY_FILE", "/etc/hub/jwt.pem"),
            ]),
        )
        .expect("parses");
        assert_eq!(c.server.node_id, None);
        assert_eq!(c.server.tls_cert, None);
        assert_eq!(c.server.tls_key, None);
        assert_eq!(c.auth.jwt_secret, None);
        assert_eq!(c.auth.issuer, None);
        assert_eq!(c.auth.audience, None);
        assert_eq!(c.cluster.redis_url, None);
        assert_eq!(c.auth.admin_token.as_deref(), Some("admin"));
        assert_eq!(
            c.auth.jwt_public_key_file,
            Some(PathBuf::from("/etc/hub/jwt.pem"))
        );
        assert!(
            c.hub_settings("127.0.0.1:1".parse().expect("addr"))
                .cluster
                .is_none()
        );
        // Unset keys are written back as the empty strings they were read from.
        let shown: toml::Table = toml::from_str(&c.redacted_toml()).expect("TOML");
        assert_eq!(shown["server"]["node_id"].as_str(), Some(""));
        assert_eq!(shown["cluster"]["redis_url"].as_str(), Some(""));
        assert_eq!(shown["auth"]["jwt_secret"].as_str(), Some(""));
        assert_eq!(shown["auth"]["admin_token"].as_str(), Some("<redacted>"));
        assert_eq!(
            shown["auth"]["jwt_public_key_file"].as_str(),
            Some("/etc/hub/jwt.pem")
        );
    }

    #[test]
    fn a_range_error_names_the_key_its_value_and_the_range() {
        let c = Config::from_toml("", env(&[("SYNCHUB_SERVER_HEARTBEAT_INTERVAL_S", "0")]))
            .expect("parses");
        let Err(ConfigError::Invalid(errors)) = c.validate() else {
            panic!("a heartbeat of 0 s passes");
        };
        assert_eq!(
            errors,
            ["server.heartbeat_interval_s = 0 is out of range (1 to 3600)"]
        );
        let mut c = Config::default();
        c.limits.max_outbound_bytes = 1024;
        let pocket: &mut synchub_actors::pocket::PocketSettings =
            c.dialects.get_mut().expect("pocket is a dialect");
        pocket.max_pull_limit = 0;
        let Err(ConfigError::Invalid(errors)) = c.validate() else {
            panic!("out-of-range values set in code pass");
        };
        assert_eq!(
            errors,
            [
                "pocket.max_pull_limit = 0 is out of range (1 to 1000000)",
                "limits.max_outbound_bytes = 1024 is out of range (65536 to 1099511627776)",
            ]
        );
    }
}
