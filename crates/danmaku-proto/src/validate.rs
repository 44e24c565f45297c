//! Validation of the strings that come from outside: room ids, nicknames
//! and colours (nonce length is checked where nonces are used). Pure functions, so both the gateway and third-party
//! tools apply the same rules.

use std::fmt;

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
    fn colors() {
        assert_eq!(validate_color("#FFaa00").as_deref(), Some("#ffaa00"));
        for bad in ["ffaa00", "#ffaa0", "#ffaa000", "#gggggg", "", "#"] {
            assert_eq!(validate_color(bad), None, "{bad}");
        }
    }
}
