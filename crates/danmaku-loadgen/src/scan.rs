//! Cheap inspection of server frames: what kind of event a frame holds, and
//! where in it the comments posted by this load generator are.
//!
//! At a million and more deliveries per second the load generator cannot
//! afford to decode every frame, so it never does for room traffic. A frame's
//! kind is read from its first bytes (the gateway writes `type` first), and
//! the comments we posted are found by searching the raw bytes for the encoded
//! `text` key followed by our marker, `lg <unix_micros> <seq>`. Only small,
//! rare frames (`ack`, `reject`, `error`) are decoded in full.

use danmaku_proto::Format;
use memchr::memmem;

/// What the text of every comment we post starts with.
pub(crate) const MARKER: &str = "lg ";

/// The text of a post sent at `sent_us` (microseconds since the Unix epoch)
/// with sequence number `seq`.
pub(crate) fn post_text(sent_us: u64, seq: u64) -> String {
    format!("{MARKER}{sent_us} {seq}")
}

/// The kind of event a frame carries, read from its first bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FrameKind {
    /// `hello`: the first frame; its `recent` comments are old and not counted.
    Hello,
    /// `ack` for one of our posts.
    Ack,
    /// `reject` for one of our posts.
    Reject,
    /// `error`: the server could not read something we sent.
    Error,
    /// `danmaku`: one comment.
    Danmaku,
    /// `batch`: several comments or counts.
    Batch,
    /// Anything else (`online`, `pong`, unknown types): nothing to count.
    Other,
}

impl FrameKind {
    /// Whether the frame can hold live comments to count.
    pub(crate) fn carries_comments(self) -> bool {
        matches!(self, FrameKind::Danmaku | FrameKind::Batch)
    }

    fn from_type(name: &[u8]) -> FrameKind {
        match name {
            b"hello" => FrameKind::Hello,
            b"ack" => FrameKind::Ack,
            b"reject" => FrameKind::Reject,
            b"error" => FrameKind::Error,
            b"danmaku" => FrameKind::Danmaku,
            b"batch" => FrameKind::Batch,
            _ => FrameKind::Other,
        }
    }
}

/// Reads a frame's kind from its first bytes. The gateway serializes the
/// `type` tag first; a frame that does not start that way is `Other`.
pub(crate) fn classify(format: Format, bytes: &[u8]) -> FrameKind {
    match format {
        Format::Json => {
            const PREFIX: &[u8] = br#"{"type":""#;
            let Some(rest) = bytes.strip_prefix(PREFIX) else {
                return FrameKind::Other;
            };
            match memchr::memchr(b'"', rest) {
                Some(end) => FrameKind::from_type(&rest[..end]),
                None => FrameKind::Other,
            }
        }
        Format::MsgPack => {
            let after_map = match bytes.first() {
                Some(0x80..=0x8f) => 1,
                Some(0xde) => 3,
                Some(0xdf) => 5,
                _ => return FrameKind::Other,
            };
            let Some(rest) = bytes
                .get(after_map..)
                .and_then(|b| b.strip_prefix(b"\xa4type"))
            else {
                return FrameKind::Other;
            };
            match rest.split_first() {
                Some((&h, name)) if (0xa0..=0xbf).contains(&h) => {
                    let len = usize::from(h & 0x1f);
                    name.get(..len)
                        .map_or(FrameKind::Other, FrameKind::from_type)
                }
                _ => FrameKind::Other,
            }
        }
    }
}

/// One of our comments found in a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Mark {
    /// When the poster sent it, in microseconds since the Unix epoch.
    pub sent_us: u64,
    /// The post's sequence number.
    pub seq: u64,
}

/// Finds our comments in raw frames. Build one and share it: the searchers
/// are prepared once.
pub(crate) struct Scanner {
    json: memmem::Finder<'static>,
    msgpack: memmem::Finder<'static>,
}

impl Default for Scanner {
    fn default() -> Self {
        Scanner::new()
    }
}

impl Scanner {
    /// Prepares the searchers for both encodings.
    pub(crate) fn new() -> Scanner {
        Scanner {
            // serde_json writes no whitespace, and a quote inside a string
            // is escaped, so this cannot match inside another string.
            json: memmem::Finder::new(br#""text":"lg "#).into_owned(),
            // The key `text` as a MessagePack fixstr; the value's string
            // header, whose form depends on its length, is checked after.
            msgpack: memmem::Finder::new(b"\xa4text").into_owned(),
        }
    }

    /// Calls `found` for every comment of ours in `bytes`, in order.
    pub(crate) fn scan(&self, format: Format, bytes: &[u8], mut found: impl FnMut(Mark)) {
        match format {
            Format::Json => {
                let skip = self.json.needle().len();
                for at in self.json.find_iter(bytes) {
                    if let Some(mark) = parse_json_value(&bytes[at + skip..]) {
                        found(mark);
                    }
                }
            }
            Format::MsgPack => {
                let skip = self.msgpack.needle().len();
                for at in self.msgpack.find_iter(bytes) {
                    if let Some(mark) = parse_msgpack_value(&bytes[at + skip..]) {
                        found(mark);
                    }
                }
            }
        }
    }
}

/// Parses `<digits> <digits>"` — the rest of a JSON text value after the
/// marker. Anything else (more words, escapes, letters) is not ours.
fn parse_json_value(rest: &[u8]) -> Option<Mark> {
    let (sent_us, rest) = parse_u64(rest)?;
    let rest = rest.strip_prefix(b" ")?;
    let (seq, rest) = parse_u64(rest)?;
    rest.starts_with(b"\"").then_some(Mark { sent_us, seq })
}

/// Parses a MessagePack string value that must be exactly
/// `lg <digits> <digits>`.
fn parse_msgpack_value(rest: &[u8]) -> Option<Mark> {
    let (&header, rest) = rest.split_first()?;
    let (len, rest) = match header {
        0xa0..=0xbf => (usize::from(header & 0x1f), rest),
        0xd9 => {
            let (&n, rest) = rest.split_first()?;
            (usize::from(n), rest)
        }
        0xda => {
            let n = rest.get(..2)?;
            (usize::from(u16::from_be_bytes([n[0], n[1]])), &rest[2..])
        }
        _ => return None,
    };
    let text = rest.get(..len)?;
    let text = text.strip_prefix(MARKER.as_bytes())?;
    let (sent_us, text) = parse_u64(text)?;
    let text = text.strip_prefix(b" ")?;
    let (seq, text) = parse_u64(text)?;
    text.is_empty().then_some(Mark { sent_us, seq })
}

/// Parses 1 to 19 leading ASCII digits (always fits a `u64`).
fn parse_u64(bytes: &[u8]) -> Option<(u64, &[u8])> {
    let digits = bytes
        .iter()
        .take(20)
        .take_while(|b| b.is_ascii_digit())
        .count();
    if digits == 0 || digits > 19 {
        return None;
    }
    let value = bytes[..digits]
        .iter()
        .fold(0u64, |n, &d| n * 10 + u64::from(d - b'0'));
    Some((value, &bytes[digits..]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use danmaku_proto::{
        batch_frame, encode, encode_danmaku, Danmaku, Encoded, Hello, Limits, Mode, RejectCode,
        ServerEvent,
    };

    fn comment(text: &str, name: Option<&str>) -> Danmaku {
        Danmaku {
            id: "c-1".into(),
            room: "lg-0".into(),
            user: "guest-abc123".into(),
            name: name.map(str::to_owned),
            text: text.into(),
            color: "#ffffff".into(),
            mode: Mode::Scroll,
            ts: 1_732_180_000_000,
        }
    }

    fn marks(format: Format, frame: &Encoded) -> Vec<Mark> {
        let mut out = Vec::new();
        Scanner::new().scan(format, frame.as_bytes(), |m| out.push(m));
        out
    }

    fn mark(sent_us: u64, seq: u64) -> Mark {
        Mark { sent_us, seq }
    }

    #[test]
    fn a_lone_comment_of_ours_is_found_in_both_formats() {
        let d = comment(&post_text(1_732_180_000_123_456, 42), Some("小明"));
        for format in Format::ALL {
            let frame = encode_danmaku(format, &d);
            assert_eq!(classify(format, frame.as_bytes()), FrameKind::Danmaku);
            assert_eq!(marks(format, &frame), [mark(1_732_180_000_123_456, 42)]);
        }
    }

    #[test]
    fn every_comment_of_a_batch_is_found_in_order() {
        let texts: Vec<String> = (0..40u64)
            .map(|i| post_text(1_700_000_000_000_000 + i, 1000 + i))
            .collect();
        for format in Format::ALL {
            let mut items: Vec<Encoded> = texts
                .iter()
                .map(|t| encode_danmaku(format, &comment(t, None)))
                .collect();
            // An `online` count and someone else's comment among them.
            items.insert(
                3,
                encode(
                    format,
                    &ServerEvent::Online {
                        room: "lg-0".into(),
                        count: 5000,
                    },
                ),
            );
            items.insert(7, encode_danmaku(format, &comment("hello", None)));
            let frame = batch_frame(format, &items);
            assert_eq!(classify(format, frame.as_bytes()), FrameKind::Batch);
            let expected: Vec<Mark> = (0..40u64)
                .map(|i| mark(1_700_000_000_000_000 + i, 1000 + i))
                .collect();
            assert_eq!(marks(format, &frame), expected, "{format:?}");
        }
    }

    #[test]
    fn long_texts_use_other_msgpack_string_headers() {
        // 32 characters and more no longer fit a fixstr.
        let text = post_text(1_700_000_000_000_000, 123_456_789_012);
        assert!(text.len() >= 32);
        let frame = encode_danmaku(Format::MsgPack, &comment(&text, None));
        assert_eq!(
            marks(Format::MsgPack, &frame),
            [mark(1_700_000_000_000_000, 123_456_789_012)]
        );
    }

    #[test]
    fn texts_that_only_look_like_ours_are_ignored() {
        let lookalikes = [
            "lg 123".to_string(),
            "lg 123 456 and more".into(),
            "lg 123  456".into(),
            "lg abc 456".into(),
            "lg 123 456x".into(),
            "lg -1 2".into(),
            "xlg 1 2".into(),
            " lg 1 2x".into(),
            "lg 99999999999999999999 1".into(),
            // A quoted copy of a JSON fragment: the quotes get escaped.
            r#""text":"lg 1 2""#.into(),
            // A msgpack key inside a text: ¤ is C2 A4 in UTF-8.
            "¤text\u{3}lg 1 2".into(),
            // ... followed by a lead byte that is also a str 8 header.
            "¤text\u{640}lg 1 2".into(),
        ];
        for text in &lookalikes {
            for format in Format::ALL {
                let frame = encode_danmaku(format, &comment(text, Some("lg 1 2")));
                assert_eq!(marks(format, &frame), [], "{format:?} {text:?}");
            }
        }
    }

    #[test]
    fn our_marker_in_a_name_is_not_a_comment() {
        for format in Format::ALL {
            let frame = encode_danmaku(format, &comment("hi", Some("lg 1 2")));
            assert_eq!(marks(format, &frame), []);
        }
    }

    #[test]
    fn frames_are_classified_by_their_type() {
        let hello = ServerEvent::Hello(Hello {
            room: "lg-0".into(),
            user: "guest-abc123".into(),
            name: None,
            role: None,
            online: 1,
            server: "gw".into(),
            limits: Limits {
                max_text_chars: 100,
                max_frame_bytes: 4096,
                max_nonce_bytes: 64,
                post_rate_count: 5,
                post_window_ms: 10_000,
                post_burst: 3,
            },
            recent: vec![comment(&post_text(1, 2), None)],
        });
        let cases = [
            (hello, FrameKind::Hello),
            (
                ServerEvent::Ack {
                    nonce: danmaku_proto::Nonce::parse("7").ok(),
                    id: "c-9".into(),
                },
                FrameKind::Ack,
            ),
            (
                ServerEvent::Reject {
                    nonce: danmaku_proto::Nonce::parse("7").ok(),
                    code: RejectCode::RateLimited,
                    message: "slow down".into(),
                    retry_after_ms: Some(10),
                },
                FrameKind::Reject,
            ),
            (
                ServerEvent::Online {
                    room: "lg-0".into(),
                    count: 1,
                },
                FrameKind::Other,
            ),
            (ServerEvent::Pong { nonce: None }, FrameKind::Other),
        ];
        for (event, kind) in cases {
            for format in Format::ALL {
                assert_eq!(
                    classify(format, encode(format, &event).as_bytes()),
                    kind,
                    "{format:?} {event:?}"
                );
            }
        }
        assert_eq!(classify(Format::Json, b"[]"), FrameKind::Other);
        assert_eq!(classify(Format::Json, br#"{"type":"ack"#), FrameKind::Other);
        assert_eq!(classify(Format::MsgPack, b""), FrameKind::Other);
        assert_eq!(
            classify(Format::MsgPack, b"\x81\xa4type\xa5ac"),
            FrameKind::Other
        );
    }

    #[test]
    fn a_big_map_header_is_skipped_when_classifying() {
        let mut frame = vec![0xde, 0x00, 0x02];
        frame.extend_from_slice(b"\xa4type\xa3ack");
        assert_eq!(classify(Format::MsgPack, &frame), FrameKind::Ack);
    }

    #[test]
    fn decoding_msgpack_agrees_with_the_scan() {
        // The scan must see exactly what a full decode sees.
        let d = comment(&post_text(5, 6), None);
        let bytes = rmp_serde::to_vec_named(&ServerEvent::Danmaku(d.clone())).unwrap();
        let mut found = Vec::new();
        Scanner::new().scan(Format::MsgPack, &bytes, |m| found.push(m));
        assert_eq!(found, [mark(5, 6)]);
        assert_eq!(
            danmaku_proto::decode_server(Format::MsgPack, &bytes).unwrap(),
            ServerEvent::Danmaku(d)
        );
    }
}

/// Property tests: classifying and scanning read raw bytes at offsets taken
/// from the bytes themselves, so they must hold up on anything.
#[cfg(test)]
mod proptests {
    use super::*;
    use danmaku_proto::{encode_danmaku, Danmaku, Mode};
    use proptest::prelude::*;
    use proptest::sample::Index;

    /// Real frames holding one of our comments, with a few bytes overwritten.
    fn mutated_frame() -> impl Strategy<Value = (Format, Vec<u8>)> {
        (
            any::<bool>(),
            any::<u64>(),
            any::<u64>(),
            proptest::collection::vec((any::<Index>(), any::<u8>()), 0..6),
        )
            .prop_map(|(json, sent_us, seq, edits)| {
                let format = if json { Format::Json } else { Format::MsgPack };
                let comment = Danmaku {
                    id: "c-1".into(),
                    room: "lg-0".into(),
                    user: "guest-abc123".into(),
                    name: None,
                    text: post_text(sent_us, seq),
                    color: "#ffffff".into(),
                    mode: Mode::Scroll,
                    ts: 1,
                };
                let mut bytes = encode_danmaku(format, &comment).as_bytes().to_vec();
                for (at, b) in edits {
                    let i = at.index(bytes.len());
                    bytes[i] = b;
                }
                (format, bytes)
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(1024))]

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
            let scanner = Scanner::new();
            for format in Format::ALL {
                let _ = classify(format, &bytes);
                scanner.scan(format, &bytes, |_| ());
            }
        }

        #[test]
        fn mutated_frames_never_panic_and_find_at_most_one_comment(
            (format, bytes) in mutated_frame(),
        ) {
            let _ = classify(format, &bytes);
            let mut found = 0;
            Scanner::new().scan(format, &bytes, |_| found += 1);
            prop_assert!(found <= 1, "{found} comments in one frame");
        }
    }
}
