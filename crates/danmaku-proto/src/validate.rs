//! Validation of the strings that come from outside: room ids, nicknames,
//! colours and nonces. Pure functions and checked newtypes, so both the
//! gateway and third-party tools apply the same rules.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Longest room id, in bytes (all allowed characters are ASCII).
pub const MAX_ROOM_ID_LEN: usize = 64;
/// Longest nickname, in Unicode scalar values.
pub const MAX_NICK_CHARS: usize = 24;
/// Longest nonce, in bytes.
pub const MAX_NONCE_BYTES: usize = 64;
/// The colour of a post that names none.
pub const DEFAULT_COLOR: &str = "#ffffff";

/// A room id that passed validation: 1–64 characters of `[A-Za-z0-9_-]`.
/// Holding one proves the check was made.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RoomId(String);

/// Why a room id was refused; the message is shown to the client as is.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidRoomId {
    /// Zero characters.
    #[error("room id is empty")]
    Empty,
    /// More than 64 characters.
    #[error("room id is longer than 64 characters")]
    TooLong,
    /// A character outside `[A-Za-z0-9_-]`.
    #[error("room id may only contain A-Z, a-z, 0-9, '_' and '-'")]
    BadChar,
}

impl RoomId {
    /// Checks `s` against the room id rules.
    pub fn parse(s: &str) -> Result<RoomId, InvalidRoomId> {
        if s.is_empty() {
            return Err(InvalidRoomId::Empty);
        }
        if s.len() > MAX_ROOM_ID_LEN {
            return Err(InvalidRoomId::TooLong);
        }
        if !s
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        {
            return Err(InvalidRoomId::BadChar);
        }
        Ok(RoomId(s.to_owned()))
    }

    /// The id as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for RoomId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A nonce that passed the length check: at most [`MAX_NONCE_BYTES`] bytes,
/// any content, the empty string included.
///
/// The server echoes nonces, so the one length rule lives here and nowhere
/// else: a reply can only carry a `Nonce`, which makes echoing an over-long
/// one impossible by construction. Serializes as the bare string.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
#[serde(transparent)]
pub struct Nonce(String);

/// A nonce longer than [`MAX_NONCE_BYTES`]. It carries no copy of the nonce,
/// so refusing one never repeats what the client sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("nonce is longer than {MAX_NONCE_BYTES} bytes")]
pub struct NonceTooLong;

impl Nonce {
    /// Checks `s` against the nonce length rule.
    pub fn parse(s: &str) -> Result<Nonce, NonceTooLong> {
        if s.len() > MAX_NONCE_BYTES {
            return Err(NonceTooLong);
        }
        Ok(Nonce(s.to_owned()))
    }

    /// The nonce as the client sent it.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Nonce {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

// By hand rather than derived, so a decoded `Nonce` (in a client or a test
// reading server events) has passed the same check as one built by `parse`.
impl<'de> Deserialize<'de> for Nonce {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Nonce, D::Error> {
        let s = String::deserialize(d)?;
        if s.len() > MAX_NONCE_BYTES {
            return Err(serde::de::Error::custom(NonceTooLong));
        }
        Ok(Nonce(s))
    }
}

/// What a user may do, from least to most. Identities carry one; tokens will.
/// Not on the wire yet, but named as it will be (lower case).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default, Serialize, Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Watches and posts; every guest is one.
    #[default]
    Viewer,
    /// May also act on other users' posts in the rooms they moderate.
    Moderator,
    /// May do everything.
    Admin,
}

impl Role {
    /// The lower-case name, for logs, metrics labels and later the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Moderator => "moderator",
            Role::Admin => "admin",
        }
    }
}

/// Why a nickname was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidNick {
    /// Empty after trimming.
    #[error("nick is empty")]
    Empty,
    /// More than 24 characters.
    #[error("nick is longer than 24 characters")]
    TooLong,
    /// A control or formatting character.
    #[error("nick may not contain control, bidi-control or zero-width characters")]
    BadChar,
}

/// Checks a nickname (1–24 Unicode scalar values after trimming, no control
/// characters) and returns it trimmed.
pub fn validate_nick(nick: &str) -> Result<String, InvalidNick> {
    let nick = nick.trim();
    if nick.is_empty() {
        return Err(InvalidNick::Empty);
    }
    if nick.chars().count() > MAX_NICK_CHARS {
        return Err(InvalidNick::TooLong);
    }
    if nick
        .chars()
        .any(|c| c.is_control() || is_invisible_format(c))
    {
        return Err(InvalidNick::BadChar);
    }
    Ok(nick.to_owned())
}

/// Bidirectional overrides and zero-width characters, which let a name
/// impersonate another or reorder the text around it.
fn is_invisible_format(c: char) -> bool {
    matches!(c, '\u{200B}'..='\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}' | '\u{FEFF}')
}

/// Checks a `#rrggbb` colour and returns it in lower case.
pub fn validate_color(color: &str) -> Option<String> {
    let hex = color.strip_prefix('#')?;
    (hex.len() == 6 && hex.bytes().all(|b| b.is_ascii_hexdigit()))
        .then(|| format!("#{}", hex.to_ascii_lowercase()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn room_ids() {
        assert!(RoomId::parse("a").is_ok());
        assert!(RoomId::parse("Room_1-x").is_ok());
        assert!(RoomId::parse(&"a".repeat(64)).is_ok());
        assert_eq!(RoomId::parse(""), Err(InvalidRoomId::Empty));
        assert_eq!(RoomId::parse(&"a".repeat(65)), Err(InvalidRoomId::TooLong));
        for bad in ["a b", "a/b", "ä", "a.b", "%20"] {
            assert_eq!(RoomId::parse(bad), Err(InvalidRoomId::BadChar), "{bad}");
        }
    }

    #[test]
    fn nicks() {
        assert_eq!(validate_nick("  小明 ").unwrap(), "小明");
        assert_eq!(validate_nick(&"字".repeat(24)).unwrap().chars().count(), 24);
        assert_eq!(validate_nick(&"字".repeat(25)), Err(InvalidNick::TooLong));
        assert_eq!(validate_nick("   "), Err(InvalidNick::Empty));
        assert_eq!(validate_nick("a\u{0007}"), Err(InvalidNick::BadChar));
        assert_eq!(validate_nick("a\u{202E}b"), Err(InvalidNick::BadChar));
    }

    #[test]
    fn nonces() {
        assert_eq!(Nonce::parse("").unwrap().as_str(), "");
        assert_eq!(Nonce::parse("n-1").unwrap().as_str(), "n-1");
        assert!(Nonce::parse(&"n".repeat(64)).is_ok());
        assert_eq!(Nonce::parse(&"n".repeat(65)), Err(NonceTooLong));
        // Bytes, not characters: 21 × 3 bytes fit, 22 do not.
        assert!(Nonce::parse(&"字".repeat(21)).is_ok());
        assert_eq!(Nonce::parse(&"字".repeat(22)), Err(NonceTooLong));
    }

    #[test]
    fn nonces_serialize_as_bare_strings_and_decode_checked() {
        let n = Nonce::parse("7").unwrap();
        assert_eq!(serde_json::to_string(&n).unwrap(), r#""7""#);
        assert_eq!(serde_json::from_str::<Nonce>(r#""7""#).unwrap(), n);
        let long = format!("\"{}\"", "n".repeat(65));
        assert!(serde_json::from_str::<Nonce>(&long).is_err());
    }

    #[test]
    fn roles() {
        assert_eq!(Role::default(), Role::Viewer);
        for (role, name) in [
            (Role::Viewer, "viewer"),
            (Role::Moderator, "moderator"),
            (Role::Admin, "admin"),
        ] {
            assert_eq!(role.as_str(), name);
            assert_eq!(serde_json::to_string(&role).unwrap(), format!("\"{name}\""));
            let back: Role = serde_json::from_str(&format!("\"{name}\"")).unwrap();
            assert_eq!(back, role);
        }
        assert!(Role::Viewer < Role::Moderator && Role::Moderator < Role::Admin);
    }

    #[test]
    fn colors() {
        assert_eq!(validate_color("#FFaa00").as_deref(), Some("#ffaa00"));
        for bad in ["ffaa00", "#ffaa0", "#ffaa000", "#gggggg", "", "#"] {
            assert_eq!(validate_color(bad), None, "{bad}");
        }
    }
}
