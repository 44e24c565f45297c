//! The events of protocol v1, as serde types.
//!
//! Every event is a map with a `type` field. The same field names are used by
//! both encodings, so a JSON client and a MessagePack client see the same shape.
//! Every serialized field is a compatibility promise: add fields, never rename.

use serde::{Deserialize, Serialize};

use crate::validate::{Nonce, NonceTooLong, Role};

/// How a comment is drawn over the video.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Scrolls across the video from right to left; the default.
    #[default]
    Scroll,
    /// Pinned at the top, centred.
    Top,
    /// Pinned at the bottom, centred.
    Bottom,
}

impl Mode {
    /// Parses the wire name of a mode; `None` for anything else.
    pub fn parse(s: &str) -> Option<Mode> {
        match s {
            "scroll" => Some(Mode::Scroll),
            "top" => Some(Mode::Top),
            "bottom" => Some(Mode::Bottom),
            _ => None,
        }
    }
}

/// One accepted comment, as every viewer of the room sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Danmaku {
    /// Unique across the whole service; opaque to clients.
    pub id: String,
    /// The room it was posted in.
    pub room: String,
    /// The poster's user id (`guest-xxxxxx` for guests).
    pub user: String,
    /// The poster's display name, when it chose one with `?nick=`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The comment, trimmed.
    pub text: String,
    /// `#rrggbb`, lower case.
    pub color: String,
    /// Where it is drawn.
    pub mode: Mode,
    /// When the gateway accepted it, in milliseconds since the Unix epoch.
    pub ts: u64,
}

/// The limits a client should respect, announced in `hello` so clients can
/// check input before sending it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limits {
    /// Longest accepted comment, in Unicode scalar values.
    pub max_text_chars: u32,
    /// Largest client frame; larger ones close the socket with 1009.
    pub max_frame_bytes: u32,
    /// Longest accepted nonce, in bytes.
    pub max_nonce_bytes: u32,
    /// Posts allowed per `post_window_ms`, sustained.
    pub post_rate_count: u32,
    /// The window of `post_rate_count`, in milliseconds.
    pub post_window_ms: u64,
    /// Posts that may be sent at once before the sustained rate applies.
    pub post_burst: u32,
}

/// The first event on every connection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    /// The room joined.
    pub room: String,
    /// The user id given to this connection.
    pub user: String,
    /// The display name, when one was asked for or a token gave one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// What this connection may do: `viewer` for guests, else the token's
    /// role. Optional so servers that predate tokens still fit the schema.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<Role>,
    /// Viewers in the room, this one included.
    pub online: u64,
    /// Id of the gateway instance serving this socket.
    pub server: String,
    /// Limits that apply to this connection.
    pub limits: Limits,
    /// The room's most recent comments, oldest first.
    #[serde(default)]
    pub recent: Vec<Danmaku>,
}

/// Why a post was refused. The wire names are stable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RejectCode {
    /// The text is empty after trimming, or nothing in it is visible.
    Empty,
    /// The text is longer than `limits.max_text_chars`.
    TooLong,
    /// A field is malformed: colour, mode or nonce.
    BadRequest,
    /// The connection posts faster than its rate limit; see `retry_after_ms`.
    RateLimited,
    /// The bus cannot take the post right now; nothing was published.
    Unavailable,
    /// The text holds a control character or a bidirectional embedding,
    /// override or isolate, which could hide or reorder what is around it.
    InvalidText,
    /// Posting needs a signed token and this connection has none.
    Unauthorized,
    /// The connection's token has expired; refresh it with `auth`.
    TokenExpired,
    /// The poster is muted in this room or everywhere; `retry_after_ms`
    /// says when the mute ends, and is absent for a permanent one.
    Muted,
    /// The room is in slow mode and the poster posted less than its
    /// interval ago; see `retry_after_ms`.
    SlowMode,
    /// The room is locked: only moderators and admins may post.
    RoomLocked,
    /// The poster sent the same text (after normalisation) moments ago.
    Duplicate,
    /// The text holds a blocked word.
    Blocked,
}

impl RejectCode {
    /// Every code, in declaration order: metrics keep one series per code.
    pub const ALL: [RejectCode; 13] = [
        RejectCode::Empty,
        RejectCode::TooLong,
        RejectCode::BadRequest,
        RejectCode::RateLimited,
        RejectCode::Unavailable,
        RejectCode::InvalidText,
        RejectCode::Unauthorized,
        RejectCode::TokenExpired,
        RejectCode::Muted,
        RejectCode::SlowMode,
        RejectCode::RoomLocked,
        RejectCode::Duplicate,
        RejectCode::Blocked,
    ];

    /// The wire name, for logs and metrics labels.
    pub fn as_str(self) -> &'static str {
        match self {
            RejectCode::Empty => "empty",
            RejectCode::TooLong => "too_long",
            RejectCode::BadRequest => "bad_request",
            RejectCode::RateLimited => "rate_limited",
            RejectCode::Unavailable => "unavailable",
            RejectCode::InvalidText => "invalid_text",
            RejectCode::Unauthorized => "unauthorized",
            RejectCode::TokenExpired => "token_expired",
            RejectCode::Muted => "muted",
            RejectCode::SlowMode => "slow_mode",
            RejectCode::RoomLocked => "room_locked",
            RejectCode::Duplicate => "duplicate",
            RejectCode::Blocked => "blocked",
        }
    }
}

/// Why a frame could not be handled at all.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The frame is not a valid event: bad encoding, unknown type, wrong field types.
    BadFrame,
    /// An `auth` token was refused: malformed, wrongly signed, expired, or
    /// for another user than the connection's.
    BadToken,
    /// A `moderate` command from a connection whose token does not let it
    /// act in this room.
    Forbidden,
    /// A `moderate` command whose fields are wrong; the message names the
    /// field.
    BadRequest,
    /// A `moderate` command could not be stored right now; nothing changed.
    Unavailable,
}

/// Everything a gateway sends to a client.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerEvent {
    /// First event of every connection.
    Hello(Hello),
    /// A comment.
    Danmaku(Danmaku),
    /// Several events in one frame.
    Batch {
        /// The events, in order.
        items: Vec<ServerEvent>,
    },
    /// The room's viewer count.
    Online {
        /// The room.
        room: String,
        /// Viewers across all gateway instances.
        count: u64,
    },
    /// A comment was recalled: clients remove it from the screen. Never
    /// dropped by the server's flow control, and never overtakes the
    /// comment it removes.
    Delete {
        /// The room.
        room: String,
        /// The recalled comment's id.
        id: String,
    },
    /// The client's post was accepted and published as `id`.
    Ack {
        /// The client's nonce, echoed; a checked [`Nonce`], so an
        /// over-long one cannot be echoed.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        nonce: Option<Nonce>,
        /// The id every viewer sees.
        id: String,
    },
    /// The client's post was refused; nothing was published.
    Reject {
        /// The client's nonce, echoed; a checked [`Nonce`], so an
        /// over-long one cannot be echoed.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        nonce: Option<Nonce>,
        /// Stable reason.
        code: RejectCode,
        /// Human-readable reason.
        message: String,
        /// When a retry may succeed: always given with `rate_limited` and
        /// `slow_mode`, with `muted` unless the mute is permanent, and
        /// perhaps with `unavailable`; the schema requires the first two.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        retry_after_ms: Option<u64>,
    },
    /// A frame could not be handled.
    Error {
        /// The command's nonce, when the frame was a command that has one
        /// (`moderate`); a checked [`Nonce`].
        #[serde(default, skip_serializing_if = "Option::is_none")]
        nonce: Option<Nonce>,
        /// Stable reason.
        code: ErrorCode,
        /// Human-readable reason.
        message: String,
    },
    /// A `moderate` command took effect on every instance's rules.
    Moderated {
        /// The command's nonce, echoed; a checked [`Nonce`].
        #[serde(default, skip_serializing_if = "Option::is_none")]
        nonce: Option<Nonce>,
        /// The command's action, echoed.
        action: String,
    },
    /// The connection's token was replaced by the one an `auth` sent.
    AuthOk {
        /// The `auth`'s nonce, echoed; a checked [`Nonce`].
        #[serde(default, skip_serializing_if = "Option::is_none")]
        nonce: Option<Nonce>,
        /// The user id, unchanged by a refresh.
        user: String,
        /// The role the new token gives.
        role: Role,
        /// When the new token expires, in seconds since the Unix epoch.
        exp: u64,
    },
    /// Answer to a client `ping`.
    Pong {
        /// The client's nonce, echoed; a checked [`Nonce`], so an
        /// over-long one cannot be echoed.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        nonce: Option<Nonce>,
    },
}

/// A client's request to publish a comment, as sent. Fields are checked by
/// moderation, not by the decoder, so a malformed colour gets a `reject` that
/// echoes the nonce rather than a bare `error`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Post {
    /// The comment.
    pub text: String,
    /// `#rrggbb`; white when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub color: Option<String>,
    /// `scroll`, `top` or `bottom`; `scroll` when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<String>,
    /// Any string up to 64 bytes, echoed in `ack` or `reject`. Unchecked
    /// here so an over-long nonce still decodes and can be refused without
    /// being echoed; [`Post::nonce`] checks it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nonce: Option<String>,
}

impl Post {
    /// The post's nonce, checked: `Ok(None)` when it has none.
    pub fn nonce(&self) -> Result<Option<Nonce>, NonceTooLong> {
        self.nonce.as_deref().map(Nonce::parse).transpose()
    }
}

/// A client's liveness probe.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Ping {
    /// Echoed in `pong`. Unchecked here, as in [`Post`]; [`Ping::nonce`]
    /// checks it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nonce: Option<String>,
}

impl Ping {
    /// The ping's nonce, checked: `Ok(None)` when it has none.
    pub fn nonce(&self) -> Result<Option<Nonce>, NonceTooLong> {
        self.nonce.as_deref().map(Nonce::parse).transpose()
    }
}

/// A client's new token for its open connection, sent before the old one
/// expires so posting goes on without a reconnect.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Auth {
    /// The token (a JWT), as it would be given at connect.
    pub token: String,
    /// Echoed in `auth_ok`. Unchecked here, as in [`Post`];
    /// [`Auth::nonce`] checks it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nonce: Option<String>,
}

impl Auth {
    /// The nonce, checked: `Ok(None)` when it has none.
    pub fn nonce(&self) -> Result<Option<Nonce>, NonceTooLong> {
        self.nonce.as_deref().map(Nonce::parse).transpose()
    }
}

/// A moderator's command on its open connection, acting in the
/// connection's room (or everywhere, for `global` mutes and word lists,
/// which need an admin or a moderator of every room). The same actions as
/// the admin HTTP API; answered by `moderated` or an `error`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Moderate {
    /// `mute`, `unmute`, `slow_mode`, `lock`, `unlock`, `recall`,
    /// `block_word`, `unblock_word`, `allow_word` or `disallow_word`.
    pub action: String,
    /// The user, for `mute` and `unmute`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// `mute`: its length (0 is permanent); `slow_mode`: the interval (0
    /// turns it off).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seconds: Option<u64>,
    /// `mute`: a shadow mute.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shadow: Option<bool>,
    /// `mute`, `unmute`: everywhere rather than in this room.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub global: Option<bool>,
    /// `recall`: the comment's id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// The word, for the word-list actions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub word: Option<String>,
    /// `block_word`: `block` (default) or `mask`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub word_action: Option<String>,
    /// Echoed in `moderated` or `error`. Unchecked here, as in [`Post`];
    /// [`Moderate::nonce`] checks it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nonce: Option<String>,
}

impl Moderate {
    /// The nonce, checked: `Ok(None)` when it has none.
    pub fn nonce(&self) -> Result<Option<Nonce>, NonceTooLong> {
        self.nonce.as_deref().map(Nonce::parse).transpose()
    }
}

/// Everything a client may send.
///
/// Serialized like the server events, as a map tagged by `type`. Its
/// `Deserialize` is written by hand (in `client_de.rs`) rather than derived,
/// because the derived one accepts more than the protocol allows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ClientEvent {
    /// Publish a comment.
    Post(Post),
    /// Ask for a `pong`.
    Ping(Ping),
    /// Replace the connection's token.
    Auth(Auth),
    /// A moderator's action.
    Moderate(Moderate),
}
