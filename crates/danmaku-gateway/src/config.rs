//! Gateway settings: a TOML file overridden by `DANMAKU_*` environment
//! variables, every key flat so that each is one plain variable
//! (`max_text_chars` is `DANMAKU_MAX_TEXT_CHARS`). README.md documents every
//! key with its default; `Settings::default` is the single source of them.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use danmaku_bus::BusConfig;
use danmaku_moderation::Policy;

use crate::client_addr::{Cidr, TrustedProxies};
use crate::origin::Origin;
use crate::rooms::FanoutConfig;
use serde::{Deserialize, Deserializer, Serialize};

/// Prefix of every environment variable the gateway reads.
pub const ENV_PREFIX: &str = "DANMAKU";
/// The config file read when `--config` is not given, if it exists.
pub const DEFAULT_CONFIG_PATH: &str = "config/default.toml";
/// The smallest `http_max_header_bytes` accepted: below it ordinary
/// browsers could not even open a WebSocket.
const MIN_HEADER_BYTES: usize = 1024;

/// Every setting of a gateway process.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    /// Address to listen on for HTTP and WebSocket.
    pub listen: SocketAddr,
    /// This instance's id, unique in the fleet; empty means `<hostname>-<pid>`.
    pub instance_id: String,
    /// The address other parties should use to reach this instance (shown in
    /// `/api/instances`); empty means `listen`.
    pub public_address: String,
    /// Redis URL; empty runs on the embedded in-process bus.
    pub redis_url: String,
    /// Prefix of every Redis key and channel, so deployments can share a Redis.
    pub redis_prefix: String,
    /// Log format: `text` or `json`.
    pub log_format: String,

    /// Longest comment in Unicode scalar values.
    pub max_text_chars: u32,
    /// Largest client frame in bytes; larger closes the socket with 1009.
    pub max_frame_bytes: u32,
    /// Posts per connection per `post_window_ms`, sustained.
    pub post_rate_count: u32,
    /// Window of `post_rate_count`, in ms.
    pub post_window_ms: u64,
    /// Posts a connection may send at once before the rate applies.
    pub post_burst: u32,
    /// The bad frame that reaches this count within `bad_frame_window_ms` closes with 1008.
    pub bad_frame_limit: u32,
    /// Window of `bad_frame_limit`, in ms.
    pub bad_frame_window_ms: u64,
    /// Most simultaneous WebSocket connections; beyond, upgrades get HTTP 503.
    pub max_connections: usize,
    /// Most open TCP connections (HTTP and WebSocket alike) from one client
    /// address, IPv6 counted per /64; more are refused at accept. 0 = no cap.
    pub max_connections_per_ip: u32,
    /// Networks of the load balancers in front (CIDR, IPv4 or IPv6): only
    /// their PROXY headers and `X-Forwarded-For` are believed, and their
    /// connections are counted per real client. In the environment: comma-separated.
    #[serde(deserialize_with = "list")]
    pub trusted_proxies: Vec<Cidr>,
    /// Origins whose pages may open WebSockets (`https://example.com`);
    /// others get 403, requests without `Origin` pass. Empty allows all.
    /// In the environment: comma-separated.
    #[serde(deserialize_with = "list")]
    pub allowed_origins: Vec<Origin>,

    /// A new connection whose first request has not fully arrived within
    /// this is closed, in ms: silent sockets and slowloris requests hold
    /// no descriptor for long.
    pub http_header_timeout_ms: u64,
    /// A keep-alive HTTP connection whose next request has not fully arrived
    /// this long after the previous response is closed, in ms.
    pub http_idle_timeout_ms: u64,
    /// Largest request line plus headers, in bytes; larger gets 431 and a close.
    pub http_max_header_bytes: usize,

    /// How long a busy room gathers events into one `batch` frame, in ms.
    pub flush_window_ms: u64,
    /// Most events in one `batch` frame; more are split over several frames.
    pub max_batch_items: usize,
    /// Frames queued per connection before the oldest danmaku are dropped.
    pub outbox_frames: usize,
    /// Must-arrive frames (recalls) queued per connection; one more closes
    /// the connection as too slow, since they are never dropped.
    pub outbox_must_frames: usize,
    /// Bytes of comments and counts queued per connection before the oldest are dropped.
    pub outbox_bytes: usize,
    /// A connection whose queue stays full this long is closed (1008 "too slow"), in ms.
    pub slow_close_ms: u64,
    /// Interval of WebSocket pings, in ms.
    pub ping_interval_ms: u64,
    /// A connection silent this long is closed, in ms.
    pub idle_timeout_ms: u64,
    /// Interval of `online` events to each room, in ms.
    pub online_interval_ms: u64,
    /// How long shutdown waits for sockets to close after 1001, in ms.
    pub shutdown_grace_ms: u64,

    /// Kernel send buffer (SO_SNDBUF) of each accepted socket, in bytes; 0
    /// leaves the kernel's autotuning, which on fast links lets megabytes pile
    /// up unseen for a client that stopped reading.
    pub tcp_send_buffer_bytes: usize,
    /// tungstenite read buffer per connection, in bytes.
    pub read_buffer_bytes: usize,
    /// tungstenite write buffer per connection: writes are gathered up to this, in bytes.
    pub write_buffer_bytes: usize,
    /// Most bytes a connection buffers for its socket; a write beyond waits for the socket.
    pub max_write_buffer_bytes: usize,

    /// Comments kept per room for `hello.recent`.
    pub history_len: usize,
    /// Comments older than this are left out of `hello.recent`, in ms.
    pub history_max_age_ms: u64,
    /// Most unread events one room's bus subscription holds before the
    /// oldest are dropped (counted); nothing is preallocated.
    pub room_queue_max: usize,
    /// Embedded bus: total bytes of every room's history; beyond it the
    /// history of the room written longest ago is dropped.
    pub history_max_bytes: usize,
    /// Interval of presence heartbeats (online counts to the bus), in ms.
    pub heartbeat_interval_ms: u64,
    /// A heartbeat expires after this, so a dead instance leaves the counts, in ms.
    pub heartbeat_ttl_ms: u64,
    /// How long a room stays subscribed on the bus after its last local viewer left, in ms.
    pub unsubscribe_linger_ms: u64,
    /// How long a bus operation may take before it counts as failed, in ms.
    pub bus_timeout_ms: u64,

    /// `open`: anyone connects as a guest, and a token, when given, is
    /// checked. `token`: posting needs a signed token.
    pub auth_mode: String,
    /// HS256 secrets tokens may be signed with; new tokens are signed with
    /// the first. Several let a secret be rotated without refusing the
    /// tokens already handed out. `DANMAKU_AUTH_SECRET` is comma-separated.
    pub auth_secret: Secrets,
    /// Whether a connection without a token may watch; when false it gets 401.
    pub anonymous_watch: bool,
    /// A bearer token for the admin HTTP API with every right, for
    /// operators and scripts; empty disables it (tokens with role `admin`
    /// or `moderator` still work).
    pub admin_token: Secret,
    /// When set, `/api/rooms`, `/api/instances` and `/api/stats` need it (or
    /// `admin_token`, or a moderator's or admin's token) as a bearer token;
    /// empty leaves them open.
    pub api_read_token: Secret,

    /// Longest comment from a moderator or admin, in Unicode scalar values.
    pub max_text_chars_moderator: u32,
    /// Posts per client address (IPv6 per /64) per `ip_window_ms`,
    /// sustained, on this instance and across the fleet. Behind a NAT many
    /// viewers share one address, so it is several users' worth.
    pub ip_rate_count: u32,
    /// Window of `ip_rate_count`, in ms.
    pub ip_window_ms: u64,
    /// Posts a client address may send at once before its rate applies.
    pub ip_burst: u32,
    /// Moderators' and admins' post budget is this many times a viewer's.
    pub moderator_rate_factor: u32,
    /// The same user posting the same text (after normalisation) again
    /// within this is refused as `duplicate`, in ms; 0 turns it off.
    pub duplicate_window_ms: u64,
    /// How often idle keys are evicted from the local rate limiters, in ms.
    pub limiter_evict_interval_ms: u64,
    /// Blocked words loaded at start (one a line: `word` or
    /// `word<TAB>mask`) into the fleet's shared list; empty loads none.
    pub blocklist_file: String,
    /// Embedded bus: where moderation state (mutes, room modes, word lists,
    /// the action log) is saved so a restart keeps it; empty keeps it in
    /// memory only. With Redis, state lives in Redis.
    pub data_dir: String,
    /// PEM certificate chain: with `tls_key_file`, the gateway serves TLS
    /// (`wss://`, `https://`) itself, for a single node without a proxy;
    /// both empty serve plain TCP.
    pub tls_cert_file: String,
    /// PEM private key of `tls_cert_file`; set both or neither.
    pub tls_key_file: String,
    /// Moderator actions kept per room (and for fleet-wide actions) in the
    /// action log that `/api/rooms/{room}/moderation` shows.
    pub moderation_log_len: usize,
}

/// One secret string: never printed, so settings can be debug-logged.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Secret(pub String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_empty() {
            "<none>"
        } else {
            "<secret>"
        })
    }
}

/// The token secrets: never printed, so settings can be debug-logged.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Secrets(pub Vec<String>);

impl std::fmt::Debug for Secrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "<{} secrets>", self.0.len())
    }
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            instance_id: String::new(),
            public_address: String::new(),
            redis_url: String::new(),
            redis_prefix: "danmaku:".into(),
            log_format: "text".into(),
            max_text_chars: 100,
            max_frame_bytes: 4096,
            post_rate_count: 5,
            post_window_ms: 10_000,
            post_burst: 3,
            bad_frame_limit: 10,
            bad_frame_window_ms: 60_000,
            max_connections: 100_000,
            max_connections_per_ip: 50,
            trusted_proxies: Vec::new(),
            allowed_origins: Vec::new(),
            http_header_timeout_ms: 10_000,
            http_idle_timeout_ms: 30_000,
            http_max_header_bytes: 16 * 1024,
            flush_window_ms: 50,
            max_batch_items: 256,
            outbox_frames: 128,
            outbox_must_frames: 64,
            outbox_bytes: 32 * 1024,
            slow_close_ms: 10_000,
            ping_interval_ms: 20_000,
            idle_timeout_ms: 60_000,
            online_interval_ms: 5_000,
            shutdown_grace_ms: 5_000,
            tcp_send_buffer_bytes: 8 * 1024,
            read_buffer_bytes: 256,
            write_buffer_bytes: 8192,
            max_write_buffer_bytes: 16 * 1024,
            history_len: 50,
            history_max_age_ms: 600_000,
            room_queue_max: 65_536,
            history_max_bytes: 64 * 1024 * 1024,
            heartbeat_interval_ms: 2_000,
            heartbeat_ttl_ms: 15_000,
            unsubscribe_linger_ms: 10_000,
            bus_timeout_ms: 2_000,
            auth_mode: "open".into(),
            auth_secret: Secrets::default(),
            anonymous_watch: true,
            admin_token: Secret::default(),
            api_read_token: Secret::default(),
            max_text_chars_moderator: 300,
            ip_rate_count: 30,
            ip_window_ms: 10_000,
            ip_burst: 15,
            moderator_rate_factor: 10,
            duplicate_window_ms: 30_000,
            limiter_evict_interval_ms: 60_000,
            blocklist_file: String::new(),
            data_dir: "data".into(),
            tls_cert_file: String::new(),
            tls_key_file: String::new(),
            moderation_log_len: 200,
        }
    }
}

/// Settings that could not be loaded; the message names the key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file or environment could not be read or a value has the wrong type.
    #[error("{0}")]
    Load(#[from] config::ConfigError),
    /// A value has the right type but cannot work.
    #[error("invalid value for `{key}`: {reason}")]
    Invalid {
        /// The key.
        key: &'static str,
        /// Why.
        reason: String,
    },
}

impl Settings {
    /// Loads settings: defaults, then the file (`path`, or
    /// `config/default.toml` when present), then `DANMAKU_*` variables of
    /// `env`. Everything is checked before anything binds.
    pub fn load<I>(path: Option<&Path>, env: I) -> Result<Settings, ConfigError>
    where
        I: IntoIterator<Item = (String, String)>,
    {
        let mut builder = config::Config::builder();
        match path {
            Some(p) => builder = builder.add_source(config::File::from(p).required(true)),
            None => {
                builder =
                    builder.add_source(config::File::with_name(DEFAULT_CONFIG_PATH).required(false))
            }
        }
        let mut vars: config::Map<String, String> = env
            .into_iter()
            .filter(|(k, _)| k.starts_with(&format!("{ENV_PREFIX}_")))
            .collect();
        // Taken out of the environment source, whose `try_parsing` would
        // turn a secret that looks like a number into one; split here, so
        // every secret stays the exact string given.
        if let Some(secrets) = vars.remove(&format!("{ENV_PREFIX}_AUTH_SECRET")) {
            let list: Vec<String> = secrets
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .collect();
            builder = builder.set_override("auth_secret", list)?;
        }
        // Strings that may look like numbers, kept exactly as given.
        for key in [
            "admin_token",
            "api_read_token",
            "blocklist_file",
            "data_dir",
            "tls_cert_file",
            "tls_key_file",
        ] {
            let var = format!("{ENV_PREFIX}_{}", key.to_ascii_uppercase());
            if let Some(value) = vars.remove(&var) {
                builder = builder.set_override(key, value)?;
            }
        }
        builder = builder.add_source(
            config::Environment::with_prefix(ENV_PREFIX)
                .prefix_separator("_")
                .try_parsing(true)
                .source(Some(vars)),
        );
        let settings: Settings = builder.build()?.try_deserialize()?;
        settings.validate()?;
        Ok(settings)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let positive: [(&'static str, u64); 26] = [
            (
                "max_text_chars_moderator",
                self.max_text_chars_moderator.into(),
            ),
            ("ip_rate_count", self.ip_rate_count.into()),
            ("ip_window_ms", self.ip_window_ms),
            ("ip_burst", self.ip_burst.into()),
            ("moderator_rate_factor", self.moderator_rate_factor.into()),
            ("limiter_evict_interval_ms", self.limiter_evict_interval_ms),
            ("moderation_log_len", self.moderation_log_len as u64),
            ("max_text_chars", self.max_text_chars.into()),
            ("room_queue_max", self.room_queue_max as u64),
            ("max_frame_bytes", self.max_frame_bytes.into()),
            ("post_rate_count", self.post_rate_count.into()),
            ("post_window_ms", self.post_window_ms),
            ("post_burst", self.post_burst.into()),
            ("bad_frame_window_ms", self.bad_frame_window_ms),
            ("flush_window_ms", self.flush_window_ms),
            ("max_batch_items", self.max_batch_items as u64),
            ("outbox_frames", self.outbox_frames as u64),
            ("outbox_must_frames", self.outbox_must_frames as u64),
            ("outbox_bytes", self.outbox_bytes as u64),
            ("ping_interval_ms", self.ping_interval_ms),
            ("idle_timeout_ms", self.idle_timeout_ms),
            ("online_interval_ms", self.online_interval_ms),
            ("heartbeat_interval_ms", self.heartbeat_interval_ms),
            ("bus_timeout_ms", self.bus_timeout_ms),
            ("http_header_timeout_ms", self.http_header_timeout_ms),
            ("http_idle_timeout_ms", self.http_idle_timeout_ms),
        ];
        for (key, value) in positive {
            if value == 0 {
                return Err(ConfigError::Invalid {
                    key,
                    reason: "must be greater than zero".into(),
                });
            }
        }
        if !matches!(self.log_format.as_str(), "text" | "json") {
            return Err(ConfigError::Invalid {
                key: "log_format",
                reason: "must be `text` or `json`".into(),
            });
        }
        if self.max_write_buffer_bytes <= self.write_buffer_bytes {
            return Err(ConfigError::Invalid {
                key: "max_write_buffer_bytes",
                reason: "must be larger than write_buffer_bytes".into(),
            });
        }
        if self.http_max_header_bytes < MIN_HEADER_BYTES {
            return Err(ConfigError::Invalid {
                key: "http_max_header_bytes",
                reason: format!(
                    "must be at least {MIN_HEADER_BYTES}: a browser's WebSocket handshake alone takes several hundred bytes"
                ),
            });
        }
        if self.heartbeat_ttl_ms <= self.heartbeat_interval_ms {
            return Err(ConfigError::Invalid {
                key: "heartbeat_ttl_ms",
                reason: "must be larger than heartbeat_interval_ms".into(),
            });
        }
        if !matches!(self.auth_mode.as_str(), "open" | "token") {
            return Err(ConfigError::Invalid {
                key: "auth_mode",
                reason: "must be `open` or `token`".into(),
            });
        }
        if self.auth_secret.0.iter().any(|s| s.is_empty()) {
            return Err(ConfigError::Invalid {
                key: "auth_secret",
                reason: "a secret may not be empty".into(),
            });
        }
        if self.auth_mode == "token" && self.auth_secret.0.is_empty() {
            return Err(ConfigError::Invalid {
                key: "auth_secret",
                reason: "must hold at least one secret when auth_mode is `token`".into(),
            });
        }
        // Half a TLS setup would quietly serve plain TCP where TLS was meant.
        match (self.tls_cert_file.is_empty(), self.tls_key_file.is_empty()) {
            (false, true) => {
                return Err(ConfigError::Invalid {
                    key: "tls_key_file",
                    reason: "must be set when tls_cert_file is".into(),
                })
            }
            (true, false) => {
                return Err(ConfigError::Invalid {
                    key: "tls_cert_file",
                    reason: "must be set when tls_key_file is".into(),
                })
            }
            _ => {}
        }
        let redis_scheme = ["redis://", "rediss://"]
            .iter()
            .any(|p| self.redis_url.starts_with(p));
        if !self.redis_url.is_empty() && !redis_scheme {
            return Err(ConfigError::Invalid {
                key: "redis_url",
                reason: "must start with redis:// or rediss://".into(),
            });
        }
        Ok(())
    }

    /// The instance id, with the default filled in.
    pub fn instance_id(&self) -> String {
        if !self.instance_id.is_empty() {
            return self.instance_id.clone();
        }
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_owned())
            .unwrap_or_else(|_| "gateway".into());
        format!("{host}-{}", std::process::id())
    }

    /// The moderation policy these settings describe.
    pub fn policy(&self) -> Policy {
        Policy {
            max_text_chars: self.max_text_chars,
            post_rate_count: self.post_rate_count,
            post_window: ms(self.post_window_ms),
            post_burst: self.post_burst,
            max_text_chars_moderator: self.max_text_chars_moderator,
            ip_rate_count: self.ip_rate_count,
            ip_window: ms(self.ip_window_ms),
            ip_burst: self.ip_burst,
            moderator_rate_factor: self.moderator_rate_factor,
            duplicate_window: ms(self.duplicate_window_ms),
        }
    }

    /// The bus settings these settings describe.
    pub fn bus_config(&self) -> BusConfig {
        BusConfig {
            history_len: self.history_len,
            history_max_age: ms(self.history_max_age_ms),
            room_queue_max: self.room_queue_max,
            history_max_bytes: self.history_max_bytes,
            op_timeout: ms(self.bus_timeout_ms),
            state_log_len: self.moderation_log_len,
            state_dir: (!self.data_dir.is_empty()).then(|| self.data_dir.clone().into()),
        }
    }

    /// What every connection needs, as durations and sizes.
    pub(crate) fn conn_config(&self) -> ConnConfig {
        ConnConfig {
            idle_timeout: ms(self.idle_timeout_ms),
            slow_close: ms(self.slow_close_ms),
            bad_frame_limit: self.bad_frame_limit,
            bad_frame_window: ms(self.bad_frame_window_ms),
            outbox_frames: self.outbox_frames,
            outbox_must_frames: self.outbox_must_frames,
            outbox_bytes: self.outbox_bytes,
            read_buffer_bytes: self.read_buffer_bytes,
            write_buffer_bytes: self.write_buffer_bytes,
            max_write_buffer_bytes: self.max_write_buffer_bytes,
            max_frame_bytes: self.max_frame_bytes as usize,
        }
    }

    /// What the accept loop and each HTTP connection need.
    pub(crate) fn server_config(&self) -> ServerConfig {
        ServerConfig {
            header_timeout: ms(self.http_header_timeout_ms),
            idle_timeout: ms(self.http_idle_timeout_ms),
            max_header_bytes: self.http_max_header_bytes,
            max_per_ip: self.max_connections_per_ip,
            send_buffer: self.tcp_send_buffer_bytes,
            trusted: TrustedProxies::new(self.trusted_proxies.clone()),
        }
    }

    /// How room tasks batch and fan out.
    pub(crate) fn fanout_config(&self) -> FanoutConfig {
        FanoutConfig {
            flush_window: ms(self.flush_window_ms),
            max_batch_items: self.max_batch_items,
            slow_close: ms(self.slow_close_ms),
            online_interval: ms(self.online_interval_ms),
        }
    }
}

/// The settings a connection reads, built once from [`Settings`] so no
/// connection parses raw `_ms` numbers at each use.
#[derive(Debug, Clone)]
pub(crate) struct ConnConfig {
    /// A connection silent this long is closed.
    pub(crate) idle_timeout: Duration,
    /// A queue full this long, or a write stalled this long, closes as too slow.
    pub(crate) slow_close: Duration,
    /// Bad frames within `bad_frame_window` that close the connection.
    pub(crate) bad_frame_limit: u32,
    /// Window of `bad_frame_limit`.
    pub(crate) bad_frame_window: Duration,
    /// Droppable room frames queued per connection.
    pub(crate) outbox_frames: usize,
    /// Must-arrive room frames queued per connection.
    pub(crate) outbox_must_frames: usize,
    /// Room-frame bytes queued per connection.
    pub(crate) outbox_bytes: usize,
    /// WebSocket read buffer.
    pub(crate) read_buffer_bytes: usize,
    /// WebSocket write buffer, flushed when full.
    pub(crate) write_buffer_bytes: usize,
    /// Most bytes buffered for the socket before a write waits for it.
    pub(crate) max_write_buffer_bytes: usize,
    /// Largest client frame and message.
    pub(crate) max_frame_bytes: usize,
}

/// The settings of the accept loop and its HTTP connections, built once
/// from [`Settings`].
#[derive(Debug, Clone)]
pub(crate) struct ServerConfig {
    /// The first request of a connection must have fully arrived by then.
    pub(crate) header_timeout: Duration,
    /// Every later request must have fully arrived this long after the
    /// previous response.
    pub(crate) idle_timeout: Duration,
    /// Largest request head; larger gets 431.
    pub(crate) max_header_bytes: usize,
    /// Most TCP connections per client address (IPv6: per /64); 0 = no cap.
    pub(crate) max_per_ip: u32,
    /// SO_SNDBUF of accepted sockets; 0 leaves the kernel's autotuning.
    pub(crate) send_buffer: usize,
    /// Peers whose word on the client address is believed.
    pub(crate) trusted: TrustedProxies,
}

/// A list setting, as a TOML array or as one comma-separated string (how an
/// environment variable gives it); blanks between items are ignored.
fn list<'de, D, T>(de: D) -> Result<Vec<T>, D::Error>
where
    D: Deserializer<'de>,
    T: TryFrom<String, Error = String>,
{
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        One(String),
        Many(Vec<String>),
    }
    let items = match Raw::deserialize(de)? {
        Raw::One(s) => s.split(',').map(str::to_owned).collect(),
        Raw::Many(v) => v,
    };
    items
        .into_iter()
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .map(|s| T::try_from(s).map_err(serde::de::Error::custom))
        .collect()
}

/// Milliseconds as a `Duration`.
pub fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn defaults_load_without_file_or_env() {
        let s = Settings::load(Some(Path::new("/nonexistent")), env(&[]));
        assert!(s.is_err(), "an explicit missing file is an error");
        let s = Settings::load(None, env(&[])).unwrap();
        assert_eq!(s, Settings::default());
    }

    #[test]
    fn environment_overrides_plain_keys() {
        let s = Settings::load(
            None,
            env(&[
                ("DANMAKU_LISTEN", "127.0.0.1:9000"),
                ("DANMAKU_INSTANCE_ID", "gw-7"),
                ("DANMAKU_MAX_TEXT_CHARS", "20"),
                ("OTHER_THING", "x"),
            ]),
        )
        .unwrap();
        assert_eq!(s.listen, "127.0.0.1:9000".parse().unwrap());
        assert_eq!(s.instance_id(), "gw-7");
        assert_eq!(s.max_text_chars, 20);
    }

    #[test]
    fn the_moderation_variables_are_read_as_given() {
        let s = Settings::load(
            None,
            env(&[
                ("DANMAKU_AUTH_MODE", "token"),
                ("DANMAKU_AUTH_SECRET", "new,old"),
                ("DANMAKU_ADMIN_TOKEN", "00123"),
                ("DANMAKU_BLOCKLIST_FILE", "/etc/danmaku/words.txt"),
                ("DANMAKU_DATA_DIR", "/var/lib/danmaku"),
                ("DANMAKU_API_READ_TOKEN", "1e3"),
            ]),
        )
        .unwrap();
        assert_eq!(s.auth_mode, "token");
        assert_eq!(s.auth_secret.0, vec!["new", "old"]);
        // Kept exactly as given, not parsed as numbers.
        assert_eq!(s.admin_token.0, "00123");
        assert_eq!(s.api_read_token.0, "1e3");
        assert_eq!(s.blocklist_file, "/etc/danmaku/words.txt");
        assert_eq!(
            s.bus_config().state_dir.as_deref(),
            Some(Path::new("/var/lib/danmaku"))
        );
        let memory = Settings::load(None, env(&[("DANMAKU_DATA_DIR", "")])).unwrap();
        assert_eq!(memory.bus_config().state_dir, None);
        // Secrets never show in a debug print of the settings.
        assert!(!format!("{s:?}").contains("00123"));
    }

    #[test]
    fn file_then_environment() {
        let dir = std::env::temp_dir().join(format!("danmaku-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("g.toml");
        std::fs::write(&file, "flush_window_ms = 10\npost_burst = 7\n").unwrap();
        let s = Settings::load(Some(&file), env(&[("DANMAKU_POST_BURST", "9")])).unwrap();
        assert_eq!((s.flush_window_ms, s.post_burst), (10, 9));
        std::fs::write(&file, "flush_windw_ms = 10\n").unwrap();
        let err = Settings::load(Some(&file), env(&[]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("flush_windw_ms"), "{err}");
    }

    #[test]
    fn lists_come_from_toml_arrays_or_comma_separated_variables() {
        let s = Settings::load(
            None,
            env(&[
                ("DANMAKU_TRUSTED_PROXIES", "10.0.0.0/8, 2001:db8::/32"),
                ("DANMAKU_ALLOWED_ORIGINS", "https://example.com"),
            ]),
        )
        .unwrap();
        assert_eq!(
            s.trusted_proxies,
            vec![
                "10.0.0.0/8".parse().unwrap(),
                "2001:db8::/32".parse().unwrap()
            ]
        );
        assert_eq!(
            s.allowed_origins,
            vec!["https://example.com".parse().unwrap()]
        );
        let s = Settings::load(None, env(&[("DANMAKU_TRUSTED_PROXIES", "")])).unwrap();
        assert!(s.trusted_proxies.is_empty());

        let dir = std::env::temp_dir().join(format!("danmaku-cfg-list-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("l.toml");
        std::fs::write(&file, "trusted_proxies = [\"127.0.0.0/8\", \"::1\"]\n").unwrap();
        let s = Settings::load(Some(&file), env(&[])).unwrap();
        assert_eq!(s.trusted_proxies.len(), 2);
    }

    #[test]
    fn invalid_values_name_the_key() {
        for (key, value) in [
            ("DANMAKU_LISTEN", "not-an-address"),
            ("DANMAKU_MAX_TEXT_CHARS", "many"),
            ("DANMAKU_FLUSH_WINDOW_MS", "0"),
            ("DANMAKU_LOG_FORMAT", "xml"),
            ("DANMAKU_HTTP_HEADER_TIMEOUT_MS", "0"),
            ("DANMAKU_HTTP_IDLE_TIMEOUT_MS", "0"),
            ("DANMAKU_HTTP_MAX_HEADER_BYTES", "100"),
            ("DANMAKU_AUTH_MODE", "jwt"),
            ("DANMAKU_AUTH_MODE", "token"),
            ("DANMAKU_TRUSTED_PROXIES", "10.0.0.0/8,nonsense"),
            ("DANMAKU_ALLOWED_ORIGINS", "example.com"),
        ] {
            let err = Settings::load(None, env(&[(key, value)]))
                .unwrap_err()
                .to_string();
            let name = key.trim_start_matches("DANMAKU_").to_lowercase();
            let name = if value == "token" {
                "auth_secret".into()
            } else {
                name
            };
            assert!(err.contains(&name), "{key}: {err}");
        }
    }

    #[test]
    fn secrets_come_comma_separated_from_the_environment_and_stay_strings() {
        let s = Settings::load(
            None,
            env(&[
                ("DANMAKU_AUTH_MODE", "token"),
                ("DANMAKU_AUTH_SECRET", "new-secret, 0123 ,"),
            ]),
        )
        .unwrap();
        assert_eq!(s.auth_mode, "token");
        assert_eq!(s.auth_secret.0, ["new-secret", "0123"]);
        assert!(
            !format!("{s:?}").contains("new-secret"),
            "secrets are not printed"
        );
        let one = Settings::load(None, env(&[("DANMAKU_AUTH_SECRET", "1e3")])).unwrap();
        assert_eq!(one.auth_secret.0, ["1e3"]);
    }

    /// `config/default.toml` documents every key with its default, and the
    /// README's table names every key: both must match the code.
    #[test]
    fn shipped_config_and_readme_match_the_defaults() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
        let shipped = std::fs::read_to_string(root.join(DEFAULT_CONFIG_PATH)).unwrap();
        let uncommented: String = shipped
            .lines()
            .filter_map(|l| l.strip_prefix("# "))
            .filter(|l| l.contains(" = "))
            .map(|l| format!("{l}\n"))
            .collect();
        let dir = std::env::temp_dir().join(format!("danmaku-cfg-shipped-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("default.toml");
        std::fs::write(&file, &uncommented).unwrap();
        assert_eq!(
            Settings::load(Some(&file), env(&[])).unwrap(),
            Settings::default()
        );

        let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
        let keys = serde_json::to_value(Settings::default()).unwrap();
        for key in keys.as_object().unwrap().keys() {
            assert!(
                uncommented.contains(&format!("{key} = ")),
                "{key} missing from config/default.toml"
            );
            assert!(
                readme.contains(&format!("| `{key}` |")),
                "{key} missing from README.md"
            );
        }
    }
}
