//! What moderators decide, as values: mutes, room modes, word lists, and
//! the [`Change`]s that edit them. The gateway stores and ships these; this
//! crate only reads them.

use serde::{Deserialize, Serialize};

/// Longest blocked or allowed word, in characters.
pub const MAX_WORD_CHARS: usize = 64;
/// Longest slow-mode interval, in seconds.
pub const MAX_SLOW_MODE_SECS: u32 = 300;

/// A user kept from posting, in one room or everywhere.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mute {
    /// The muted user id.
    pub user: String,
    /// The room; `None` for a global mute.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub room: Option<String>,
    /// When it ends, in ms since the Unix epoch; `None` is permanent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub until_ms: Option<u64>,
    /// A shadow mute: the poster is acknowledged and sees its own comment;
    /// nobody else receives it.
    #[serde(default)]
    pub shadow: bool,
    /// Who set it.
    pub by: String,
    /// When it was set, in ms since the Unix epoch.
    pub at_ms: u64,
}

/// A room's modes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoomSettings {
    /// One post per this many seconds per user; 0 is off.
    #[serde(default)]
    pub slow_mode_secs: u32,
    /// Only moderators and admins may post.
    #[serde(default)]
    pub locked: bool,
}

/// What a blocked word does to a post that holds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WordAction {
    /// Refuse the post with `blocked`.
    Block,
    /// Replace the matched span with `*` and publish.
    Mask,
}

/// One edit of the rules.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Change {
    /// Sets (or replaces) a mute.
    Mute(Mute),
    /// Lifts a mute.
    Unmute {
        /// `None` for the global mute.
        room: Option<String>,
        /// The user.
        user: String,
    },
    /// Replaces a room's modes.
    RoomSettings {
        /// The room.
        room: String,
        /// Its new modes.
        settings: RoomSettings,
    },
    /// Adds or changes a blocked word.
    BlockWord {
        /// The word, as given; matched after normalisation.
        word: String,
        /// What it does.
        action: WordAction,
    },
    /// Removes a blocked word.
    UnblockWord {
        /// The word.
        word: String,
    },
    /// Adds an allowed word (a known false positive).
    AllowWord {
        /// The word.
        word: String,
    },
    /// Removes an allowed word.
    DisallowWord {
        /// The word.
        word: String,
    },
}

/// A change that cannot be applied, naming the field at fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct FieldError {
    /// The field, as named in the API.
    pub field: &'static str,
    /// What is wrong with it.
    pub message: String,
}

/// All the rules at once: what a (re)started instance loads.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Snapshot {
    /// Every mute, expired ones possibly included.
    pub mutes: Vec<Mute>,
    /// Rooms whose modes are not the default.
    pub rooms: Vec<(String, RoomSettings)>,
    /// Blocked words.
    pub blocklist: Vec<(String, WordAction)>,
    /// Allowed words.
    pub allowlist: Vec<String>,
}
