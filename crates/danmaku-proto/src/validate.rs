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

/// What a user may do, from least to most. Identities carry one, from the
/// token's `role` claim (guests are viewers); `hello` and `auth_ok` name it
/// in lower case.
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
    /// Parses the lower-case name; `None` for anything else.
    pub fn parse(s: &str) -> Option<Role> {
        match s {
            "viewer" => Some(Role::Viewer),
            "moderator" => Some(Role::Moderator),
            "admin" => Some(Role::Admin),
            _ => None,
        }
    }

    /// The lower-case name, for logs, metrics labels and the wire.
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
    /// Empty after trimming, or nothing in it has a glyph.
    #[error("nick is empty")]
    Empty,
    /// More than 24 characters.
    #[error("nick is longer than 24 characters")]
    TooLong,
    /// A control or formatting character.
    #[error("nick may not contain control, bidi-control or zero-width characters")]
    BadChar,
}

/// Checks a nickname (1–24 Unicode scalar values after trimming, at least one
/// visible, no control, line-break, bidirectional or zero-width characters)
/// and returns it trimmed.
///
/// Stricter than [`validate_text`]: a name stands for a person, so even the
/// characters a comment may legitimately use (direction marks, the
/// zero-width joiner of 👩‍💻) are refused, as they let one name pass for another.
pub fn validate_nick(nick: &str) -> Result<String, InvalidNick> {
    let nick = nick.trim();
    if nick.is_empty() {
        return Err(InvalidNick::Empty);
    }
    if nick.chars().count() > MAX_NICK_CHARS {
        return Err(InvalidNick::TooLong);
    }
    let mut visible = false;
    for c in nick.chars() {
        match classify(c) {
            CharClass::Visible => visible = true,
            CharClass::Space | CharClass::Blank => {}
            CharClass::Break
            | CharClass::Control
            | CharClass::BidiControl
            | CharClass::BidiMark
            | CharClass::ZeroWidth => return Err(InvalidNick::BadChar),
        }
    }
    if !visible {
        return Err(InvalidNick::Empty);
    }
    Ok(nick.to_owned())
}

/// Why a comment's text was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum InvalidText {
    /// Empty after trimming, or nothing in it has a glyph (only spaces,
    /// zero-width, format or direction-mark characters).
    #[error("text is empty")]
    Empty,
    /// A control character, or a bidirectional embedding, override or
    /// isolate: characters that can hide or reverse what is shown next to it.
    #[error("text may not contain control or bidirectional-override characters")]
    BadChar,
}

/// Checks a comment's text and returns it cleaned: trimmed, and each run of
/// line breaks and tabs replaced by one space (a comment is drawn on one
/// line). The length limit is the caller's, counted on what this returns.
///
/// Refused: C0 and C1 control characters other than those breaks, and
/// bidirectional embeddings, overrides and isolates (U+202A–U+202E,
/// U+2066–U+2069), which reorder or hide neighbouring text on screen. Kept:
/// direction marks (LRM, RLM, ALM), zero-width joiners and non-joiners,
/// variation selectors and tags, which right-to-left scripts, Persian and
/// emoji sequences such as 👨‍👩‍👧 need; but a text of nothing else is empty.
pub fn validate_text(text: &str) -> Result<String, InvalidText> {
    let text = text.trim();
    let mut visible = false;
    let mut breaks = false;
    for c in text.chars() {
        match classify(c) {
            CharClass::Visible => visible = true,
            CharClass::Break => breaks = true,
            CharClass::Control | CharClass::BidiControl => return Err(InvalidText::BadChar),
            CharClass::Space | CharClass::BidiMark | CharClass::ZeroWidth | CharClass::Blank => {}
        }
    }
    if !visible {
        return Err(InvalidText::Empty);
    }
    if !breaks {
        return Ok(text.to_owned());
    }
    let mut out = String::with_capacity(text.len());
    let mut in_break = false;
    for c in text.chars() {
        if classify(c) == CharClass::Break {
            if !in_break {
                out.push(' ');
            }
            in_break = true;
        } else {
            out.push(c);
            in_break = false;
        }
    }
    Ok(out)
}

/// What a character does on screen. The one table behind both the nickname
/// and the text rules, so they cannot drift apart; each rule decides what
/// to do with each class.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CharClass {
    /// Has a glyph: letters, digits, punctuation, symbols, emoji, combining
    /// marks; anything not named below.
    Visible,
    /// White space that does not break a line (U+0020, U+00A0, U+3000…).
    Space,
    /// Tab and line breaks: TAB, LF, VT, FF, CR, NEL, U+2028, U+2029.
    Break,
    /// Any other C0 or C1 control character, or DEL.
    Control,
    /// Bidirectional embeddings and overrides (U+202A–U+202E) and isolates
    /// (U+2066–U+2069): they reorder text up to their end, or past it when
    /// left open.
    BidiControl,
    /// LRM, RLM and ALM (U+200E, U+200F, U+061C): invisible, they only set
    /// the direction of the neutral characters beside them.
    BidiMark,
    /// Zero-width and format characters without a glyph: ZWSP, ZWNJ, ZWJ,
    /// word joiner and invisible operators, soft hyphen, BOM, and the like.
    ZeroWidth,
    /// No glyph of their own: variation selectors, tag characters, the
    /// combining grapheme joiner, Hangul fillers and the blank braille cell.
    Blank,
}

/// Sorts one character into its [`CharClass`].
fn classify(c: char) -> CharClass {
    match c {
        '\t' | '\n' | '\u{B}' | '\u{C}' | '\r' | '\u{85}' | '\u{2028}' | '\u{2029}' => {
            CharClass::Break
        }
        c if c.is_control() => CharClass::Control,
        '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}' => CharClass::BidiControl,
        '\u{200E}' | '\u{200F}' | '\u{061C}' => CharClass::BidiMark,
        '\u{00AD}'
        | '\u{180E}'
        | '\u{200B}'..='\u{200D}'
        | '\u{2060}'..='\u{2064}'
        | '\u{206A}'..='\u{206F}'
        | '\u{FEFF}'
        | '\u{FFF9}'..='\u{FFFB}'
        | '\u{1BCA0}'..='\u{1BCA3}'
        | '\u{1D173}'..='\u{1D17A}' => CharClass::ZeroWidth,
        '\u{034F}'
        | '\u{115F}'
        | '\u{1160}'
        | '\u{17B4}'
        | '\u{17B5}'
        | '\u{180B}'..='\u{180D}'
        | '\u{180F}'
        | '\u{2800}'
        | '\u{3164}'
        | '\u{FE00}'..='\u{FE0F}'
        | '\u{FFA0}'
        | '\u{E0000}'..='\u{E007F}'
        | '\u{E0100}'..='\u{E01EF}' => CharClass::Blank,
        c if c.is_whitespace() => CharClass::Space,
        _ => CharClass::Visible,
    }
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
    fn nicks_refuse_every_invisible_or_reordering_class() {
        for bad in [
            "a\tb",
            "a\u{2028}b",
            "a\u{85}b",
            "a\u{9B}b",
            "a\u{2066}b",
            "a\u{200F}b",
            "a\u{061C}b",
            "a\u{200B}b",
            "a\u{2060}b",
            "a\u{AD}b",
            "\u{1F469}\u{200D}\u{1F4BB}",
        ] {
            assert_eq!(validate_nick(bad), Err(InvalidNick::BadChar), "{bad:?}");
        }
        // A name that shows nothing is empty.
        for blank in ["\u{3164}", "\u{FE0F}", " \u{115F}\u{1160} ", "\u{2800}"] {
            assert_eq!(validate_nick(blank), Err(InvalidNick::Empty), "{blank:?}");
        }
        // Emoji with a variation selector, spaces inside, RTL letters pass.
        for good in ["\u{2764}\u{FE0F}", "小 明", "שלום", "مرحبا", "e\u{301}"] {
            assert_eq!(validate_nick(good).as_deref(), Ok(good), "{good:?}");
        }
    }

    #[test]
    fn text_refuses_controls_and_bidi_overrides() {
        let mut bad: Vec<String> = ["\u{0}", "\u{7}", "\u{1B}[31m", "\u{7F}", "\u{80}", "\u{9F}"]
            .iter()
            .map(|c| format!("a{c}b"))
            .collect();
        for c in ('\u{202A}'..='\u{202E}').chain('\u{2066}'..='\u{2069}') {
            bad.push(format!("abc{c}def"));
            bad.push(format!("{c}abc"));
        }
        for text in &bad {
            assert_eq!(validate_text(text), Err(InvalidText::BadChar), "{text:?}");
        }
    }

    #[test]
    fn text_line_breaks_become_one_space() {
        assert_eq!(validate_text("a\nb").unwrap(), "a b");
        assert_eq!(validate_text("a\r\n\r\nb").unwrap(), "a b");
        assert_eq!(
            validate_text("a\tb\u{2028}c\u{2029}d\u{85}e").unwrap(),
            "a b c d e"
        );
        assert_eq!(validate_text("a\u{B}\u{C}b").unwrap(), "a b");
        // Breaks at the ends go with the trimming; spaces are not collapsed.
        assert_eq!(validate_text("\n\t a  b \r\n").unwrap(), "a  b");
    }

    #[test]
    fn text_with_nothing_visible_is_empty() {
        for text in [
            "",
            " \n\t ",
            "\u{200B}",
            "\u{200B}\u{200C}\u{200D}\u{2060}\u{FEFF}",
            "\u{200E}\u{200F}\u{061C}",
            "\u{FE0F}\u{FE0F}",
            "\u{E0041}",
            "\u{3164} \u{3164}",
            "\u{2800}",
            "\u{AD}",
            " \u{200B} \u{200B} ",
        ] {
            assert_eq!(validate_text(text), Err(InvalidText::Empty), "{text:?}");
        }
    }

    #[test]
    fn legitimate_text_passes_unchanged() {
        for text in [
            "hello 弹幕 233333",
            "前方高能！！！",
            "ｗｗｗ　草",
            "한국어 텍스트",
            "👨\u{200D}👩\u{200D}👧",
            "👍🏽 ❤\u{FE0F} 🇯🇵",
            // Flag of Scotland: a tag sequence.
            "\u{1F3F4}\u{E0067}\u{E0062}\u{E0073}\u{E0063}\u{E0074}\u{E007F}",
            "שלום עולם",
            "مرحبا بالعالم",
            "abc \u{200F}שלום\u{200F} def",
            "می\u{200C}خواهم",
            "e\u{301}\u{302} ñ n\u{303}",
            "นี่\u{200B}คือ",
            "a\u{A0}b",
        ] {
            assert_eq!(validate_text(text).as_deref(), Ok(text), "{text:?}");
        }
    }

    #[test]
    fn classes() {
        assert_eq!(classify('a'), CharClass::Visible);
        assert_eq!(classify('\u{301}'), CharClass::Visible);
        assert_eq!(classify('\u{3000}'), CharClass::Space);
        assert_eq!(classify('\n'), CharClass::Break);
        assert_eq!(classify('\u{1}'), CharClass::Control);
        assert_eq!(classify('\u{202E}'), CharClass::BidiControl);
        assert_eq!(classify('\u{200F}'), CharClass::BidiMark);
        assert_eq!(classify('\u{200D}'), CharClass::ZeroWidth);
        assert_eq!(classify('\u{FE0F}'), CharClass::Blank);
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
