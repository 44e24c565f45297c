//! What moderators decide, as values: mutes, room modes, word lists, and
//! the [`Change`]s that edit them. The gateway stores and ships these; this
//! crate only reads them.

use danmaku_proto::RoomId;
use serde::{Deserialize, Serialize};

use crate::normalize::normalize;

/// Longest blocked or allowed word, in characters.
pub const MAX_WORD_CHARS: usize = 64;
/// Longest slow-mode interval, in seconds.
pub const MAX_SLOW_MODE_SECS: u32 = 300;
/// Longest user id, in bytes.
pub const MAX_USER_BYTES: usize = 64;

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

impl Mute {
    /// Whether the mute still holds at `wall_ms` (ms since the Unix epoch).
    pub fn active_at(&self, wall_ms: u64) -> bool {
        self.until_ms.is_none_or(|until| until > wall_ms)
    }
}

impl FieldError {
    /// An error in `field`.
    pub(crate) fn new(field: &'static str, message: impl Into<String>) -> FieldError {
        FieldError {
            field,
            message: message.into(),
        }
    }
}

impl Change {
    /// Checks everything an API caller could get wrong, naming the field at
    /// fault, so a bad edit is refused before it is stored or shipped:
    /// user ids (`user`, `by`), room ids (`room`), the mute's end
    /// (`until_ms`, after `at_ms`), the slow-mode interval
    /// (`slow_mode_secs`) and words (`word`).
    pub fn validate(&self) -> Result<(), FieldError> {
        match self {
            Change::Mute(mute) => {
                check_user("user", &mute.user)?;
                check_user("by", &mute.by)?;
                if let Some(room) = &mute.room {
                    check_room(room)?;
                }
                if let Some(until) = mute.until_ms {
                    if until <= mute.at_ms {
                        return Err(FieldError::new("until_ms", "must be later than at_ms"));
                    }
                }
                Ok(())
            }
            Change::Unmute { room, user } => {
                check_user("user", user)?;
                room.as_deref().map_or(Ok(()), check_room)
            }
            Change::RoomSettings { room, settings } => {
                check_room(room)?;
                if settings.slow_mode_secs > MAX_SLOW_MODE_SECS {
                    return Err(FieldError::new(
                        "slow_mode_secs",
                        format!("must be at most {MAX_SLOW_MODE_SECS}"),
                    ));
                }
                Ok(())
            }
            Change::BlockWord { word, .. }
            | Change::UnblockWord { word }
            | Change::AllowWord { word }
            | Change::DisallowWord { word } => check_word(word),
        }
    }
}

/// A user id: 1–64 bytes, no control characters.
fn check_user(field: &'static str, user: &str) -> Result<(), FieldError> {
    if user.is_empty() {
        return Err(FieldError::new(field, "must not be empty"));
    }
    if user.len() > MAX_USER_BYTES {
        return Err(FieldError::new(
            field,
            format!("must be at most {MAX_USER_BYTES} bytes"),
        ));
    }
    if user.chars().any(char::is_control) {
        return Err(FieldError::new(
            field,
            "must not contain control characters",
        ));
    }
    Ok(())
}

/// A room id, by the protocol's rule.
fn check_room(room: &str) -> Result<(), FieldError> {
    RoomId::parse(room)
        .map(drop)
        .map_err(|e| FieldError::new("room", e.to_string()))
}

/// A word: at most [`MAX_WORD_CHARS`] characters, no control characters
/// (a tab or line break would break the word-list file), and something
/// left once folded for matching.
pub(crate) fn check_word(word: &str) -> Result<(), FieldError> {
    if word.chars().count() > MAX_WORD_CHARS {
        return Err(FieldError::new(
            "word",
            format!("must be at most {MAX_WORD_CHARS} characters"),
        ));
    }
    if word.chars().any(char::is_control) {
        return Err(FieldError::new(
            "word",
            "must not contain control characters",
        ));
    }
    if normalize(word).is_empty() {
        return Err(FieldError::new(
            "word",
            "must contain a letter or digit (spaces, punctuation and symbols are ignored)",
        ));
    }
    Ok(())
}

/// Reads a word-list file: one entry a line, `word`, `word<TAB>block` or
/// `word<TAB>mask` (a bare word blocks); blank lines and lines starting
/// with `#` are skipped, and spaces around a word are trimmed. An error's
/// field is `word` and its message starts with `line N:` (from 1), so a
/// long file can be fixed; words are checked as [`Change::validate`] does.
pub fn parse_blocklist(text: &str) -> Result<Vec<(String, WordAction)>, FieldError> {
    let mut words = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.strip_suffix('\r').unwrap_or(line);
        if line.trim().is_empty() || line.starts_with('#') {
            continue;
        }
        let at = |message: String| FieldError {
            field: "word",
            message: format!("line {}: {message}", n + 1),
        };
        let (word, action) = match line.split_once('\t') {
            None => (line, WordAction::Block),
            Some((word, action)) => {
                let action = match action.trim() {
                    "block" => WordAction::Block,
                    "mask" => WordAction::Mask,
                    other => {
                        return Err(at(format!("action must be block or mask, not {other:?}")))
                    }
                };
                (word, action)
            }
        };
        let word = word.trim();
        check_word(word).map_err(|e| at(e.message))?;
        words.push((word.to_owned(), action));
    }
    Ok(words)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mute() -> Mute {
        Mute {
            user: "alice".into(),
            room: Some("room1".into()),
            until_ms: Some(2_000),
            shadow: false,
            by: "mod".into(),
            at_ms: 1_000,
        }
    }

    fn field(change: Change) -> &'static str {
        change.validate().expect_err("invalid").field
    }

    #[test]
    fn valid_changes_pass() {
        let ok = [
            Change::Mute(mute()),
            Change::Unmute {
                room: None,
                user: "alice".into(),
            },
            Change::RoomSettings {
                room: "room1".into(),
                settings: RoomSettings {
                    slow_mode_secs: MAX_SLOW_MODE_SECS,
                    locked: true,
                },
            },
            Change::BlockWord {
                word: "操".into(),
                action: WordAction::Mask,
            },
            Change::AllowWord {
                word: "体操".into(),
            },
        ];
        for change in ok {
            assert_eq!(change.validate(), Ok(()), "{change:?}");
        }
    }

    #[test]
    fn invalid_changes_name_their_field() {
        let m = |f: fn(&mut Mute)| {
            let mut m = mute();
            f(&mut m);
            Change::Mute(m)
        };
        assert_eq!(field(m(|m| m.user.clear())), "user");
        assert_eq!(field(m(|m| m.user = "a".repeat(65))), "user");
        assert_eq!(field(m(|m| m.user = "a\nb".into())), "user");
        assert_eq!(field(m(|m| m.by.clear())), "by");
        assert_eq!(field(m(|m| m.room = Some("no spaces".into()))), "room");
        assert_eq!(field(m(|m| m.until_ms = Some(1_000))), "until_ms");
        assert_eq!(
            field(Change::Unmute {
                room: Some(String::new()),
                user: "alice".into()
            }),
            "room"
        );
        assert_eq!(
            field(Change::RoomSettings {
                room: "room1".into(),
                settings: RoomSettings {
                    slow_mode_secs: MAX_SLOW_MODE_SECS + 1,
                    locked: false
                }
            }),
            "slow_mode_secs"
        );
        assert_eq!(
            field(Change::BlockWord {
                word: " .!! ".into(),
                action: WordAction::Block
            }),
            "word"
        );
        assert_eq!(
            field(Change::AllowWord {
                word: "x".repeat(MAX_WORD_CHARS + 1)
            }),
            "word"
        );
        assert_eq!(
            field(Change::UnblockWord {
                word: "a\tb".into()
            }),
            "word"
        );
    }

    #[test]
    fn change_json_round_trips() {
        let changes = [
            Change::Mute(mute()),
            Change::Unmute {
                room: Some("room1".into()),
                user: "alice".into(),
            },
            Change::RoomSettings {
                room: "room1".into(),
                settings: RoomSettings {
                    slow_mode_secs: 30,
                    locked: false,
                },
            },
            Change::BlockWord {
                word: "bad".into(),
                action: WordAction::Mask,
            },
            Change::UnblockWord { word: "bad".into() },
            Change::AllowWord {
                word: "体操".into(),
            },
            Change::DisallowWord {
                word: "体操".into(),
            },
        ];
        for change in changes {
            let json = serde_json::to_string(&change).expect("serializes");
            let back: Change = serde_json::from_str(&json).expect("deserializes");
            assert_eq!(back, change, "{json}");
        }
        let json = r#"{"op":"block_word","word":"bad","action":"mask"}"#;
        assert_eq!(
            serde_json::from_str::<Change>(json).expect("deserializes"),
            Change::BlockWord {
                word: "bad".into(),
                action: WordAction::Mask
            }
        );
        let json = r#"{"op":"mute","user":"u","by":"m","at_ms":5}"#;
        let Change::Mute(m) = serde_json::from_str::<Change>(json).expect("deserializes") else {
            panic!("not a mute: {json}");
        };
        assert_eq!((m.room, m.until_ms, m.shadow), (None, None, false));
    }

    #[test]
    fn parses_blocklist_files() {
        let text = "# comment\n\nbad\nworse\tmask\r\n  spaced  \tblock\n操\n";
        assert_eq!(
            parse_blocklist(text),
            Ok(vec![
                ("bad".to_owned(), WordAction::Block),
                ("worse".to_owned(), WordAction::Mask),
                ("spaced".to_owned(), WordAction::Block),
                ("操".to_owned(), WordAction::Block),
            ])
        );
        let err = parse_blocklist("ok\n\nbad\tdelete\n").expect_err("bad action");
        assert!(err.message.starts_with("line 3:"), "{err}");
        let err = parse_blocklist("ok\n...\n").expect_err("empty word");
        assert!(err.message.starts_with("line 2:"), "{err}");
        assert_eq!(parse_blocklist(""), Ok(vec![]));
    }

    #[test]
    fn mute_expiry() {
        let m = mute();
        assert!(m.active_at(1_999));
        assert!(!m.active_at(2_000));
        let permanent = Mute {
            until_ms: None,
            ..mute()
        };
        assert!(permanent.active_at(u64::MAX));
    }
}
