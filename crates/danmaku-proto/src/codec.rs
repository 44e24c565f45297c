//! The two encodings of protocol v1 and the batch splice.
//!
//! A gateway encodes each event once per format and shares the bytes with
//! every socket. A `batch` frame is built by splicing already-encoded items
//! into an envelope, so batching never re-encodes an event.

use serde::{Deserialize, Serialize};

use crate::event::{ClientEvent, Danmaku, ServerEvent};

/// WebSocket subprotocol for JSON text frames; the default when a client offers none.
pub const SUBPROTOCOL_JSON: &str = "danmaku.v1.json";
/// WebSocket subprotocol for MessagePack binary frames.
pub const SUBPROTOCOL_MSGPACK: &str = "danmaku.v1.msgpack";

/// The encoding a connection negotiated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Format {
    /// One JSON object per text frame.
    Json,
    /// One MessagePack map (named fields) per binary frame.
    MsgPack,
}

impl Format {
    /// Both formats, for code that prepares bytes for each.
    pub const ALL: [Format; 2] = [Format::Json, Format::MsgPack];

    /// The subprotocol name a server echoes for this format.
    pub fn subprotocol(self) -> &'static str {
        match self {
            Format::Json => SUBPROTOCOL_JSON,
            Format::MsgPack => SUBPROTOCOL_MSGPACK,
        }
    }

    /// The format named by a subprotocol, if it is one of ours.
    pub fn from_subprotocol(name: &str) -> Option<Format> {
        match name.trim() {
            SUBPROTOCOL_JSON => Some(Format::Json),
            SUBPROTOCOL_MSGPACK => Some(Format::MsgPack),
            _ => None,
        }
    }

    /// A small dense index, for per-format arrays.
    pub fn index(self) -> usize {
        match self {
            Format::Json => 0,
            Format::MsgPack => 1,
        }
    }
}

/// One encoded frame: text for JSON, binary for MessagePack. Kept apart so a
/// JSON frame never needs UTF-8 validation again on its way to a socket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Encoded {
    /// A JSON text frame.
    Text(String),
    /// A MessagePack binary frame.
    Binary(Vec<u8>),
}

impl Encoded {
    /// The frame's bytes.
    pub fn as_bytes(&self) -> &[u8] {
        match self {
            Encoded::Text(s) => s.as_bytes(),
            Encoded::Binary(b) => b,
        }
    }

    /// The frame's length in bytes.
    pub fn len(&self) -> usize {
        self.as_bytes().len()
    }

    /// True for a zero-length frame (never produced by `encode`).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A frame that is not a valid event in the connection's format.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// Not valid JSON, or not a known event, or wrong field types.
    #[error("invalid json event: {0}")]
    Json(#[from] serde_json::Error),
    /// Not valid MessagePack, or not a known event, or wrong field types.
    #[error("invalid msgpack event: {0}")]
    MsgPack(#[from] rmp_serde::decode::Error),
    /// Bytes left after the first MessagePack value: a frame holds exactly
    /// one event, and a second one would otherwise be dropped unseen.
    #[error("invalid msgpack event: {0} bytes after the event")]
    TrailingBytes(usize),
}

/// Encodes one server event.
pub fn encode(format: Format, event: &ServerEvent) -> Encoded {
    match format {
        // Serialization cannot fail: every map key is a string and every
        // value is a plain string, number, bool, sequence or map.
        Format::Json => Encoded::Text(serde_json::to_string(event).expect("event serializes")),
        Format::MsgPack => {
            Encoded::Binary(rmp_serde::to_vec_named(event).expect("event serializes"))
        }
    }
}

/// Encodes a `danmaku` event from a borrowed comment: the hot path of
/// fan-out, which must not clone a comment just to encode it.
pub fn encode_danmaku(format: Format, comment: &Danmaku) -> Encoded {
    #[derive(Serialize)]
    #[serde(tag = "type", rename_all = "snake_case")]
    enum Borrowed<'a> {
        Danmaku(&'a Danmaku),
    }
    let event = Borrowed::Danmaku(comment);
    match format {
        // Cannot fail, as for `encode`.
        Format::Json => Encoded::Text(serde_json::to_string(&event).expect("event serializes")),
        Format::MsgPack => {
            Encoded::Binary(rmp_serde::to_vec_named(&event).expect("event serializes"))
        }
    }
}

/// Builds a `batch` frame from items that are each already an encoded event
/// in `format`, without decoding, re-encoding or re-validating them.
pub fn batch_frame<'a, I>(format: Format, items: I) -> Encoded
where
    I: IntoIterator<Item = &'a Encoded>,
    I::IntoIter: ExactSizeIterator,
{
    let items = items.into_iter();
    let n = items.len();
    match format {
        Format::Json => {
            let mut out = String::from(r#"{"type":"batch","items":["#);
            for (i, item) in items.enumerate() {
                if i > 0 {
                    out.push(',');
                }
                match item {
                    Encoded::Text(json) => out.push_str(json),
                    // Not a JSON item: replaced rather than trusted.
                    Encoded::Binary(b) => out.push_str(&String::from_utf8_lossy(b)),
                }
            }
            out.push_str("]}");
            Encoded::Text(out)
        }
        Format::MsgPack => {
            let mut out = Vec::with_capacity(32);
            out.push(0x82); // fixmap, 2 entries
            push_str(&mut out, "type");
            push_str(&mut out, "batch");
            push_str(&mut out, "items");
            if n < 16 {
                out.push(0x90 | n as u8);
            } else if n <= u16::MAX as usize {
                out.push(0xdc);
                out.extend_from_slice(&(n as u16).to_be_bytes());
            } else {
                out.push(0xdd);
                out.extend_from_slice(&(n as u32).to_be_bytes());
            }
            for item in items {
                out.extend_from_slice(item.as_bytes());
            }
            Encoded::Binary(out)
        }
    }
}

/// Writes a short MessagePack fixstr.
fn push_str(out: &mut Vec<u8>, s: &str) {
    debug_assert!(s.len() < 32);
    out.push(0xa0 | s.len() as u8);
    out.extend_from_slice(s.as_bytes());
}

/// Decodes one client frame's payload: exactly one event, read strictly
/// (PROTOCOL.md §4.5). A map of the wrong shape, a MessagePack array or
/// `bin` in place of a map or string, or anything after the event is an
/// error; unknown fields are ignored and `null`/`nil` reads as absent.
pub fn decode_client(format: Format, bytes: &[u8]) -> Result<ClientEvent, DecodeError> {
    match format {
        // `from_slice` already refuses anything but whitespace after the value.
        Format::Json => Ok(serde_json::from_slice(bytes)?),
        Format::MsgPack => {
            // A plain `&[u8]` reader, not `from_slice`, so what is left
            // after the event can be seen: the slice shrinks as it is read.
            let mut de = rmp_serde::Deserializer::new(bytes);
            let event = ClientEvent::deserialize(&mut de)?;
            match de.get_ref().len() {
                0 => Ok(event),
                left => Err(DecodeError::TrailingBytes(left)),
            }
        }
    }
}

/// Decodes one server frame's payload; for clients, tests and the load generator.
pub fn decode_server(format: Format, bytes: &[u8]) -> Result<ServerEvent, DecodeError> {
    match format {
        Format::Json => Ok(serde_json::from_slice(bytes)?),
        Format::MsgPack => Ok(rmp_serde::from_slice(bytes)?),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{Danmaku, ErrorCode, Mode, Moderate, Ping, Post, RejectCode};
    use crate::validate::{Nonce, NonceTooLong};

    fn danmaku(i: u32) -> ServerEvent {
        ServerEvent::Danmaku(Danmaku {
            id: format!("id{i}"),
            room: "lobby".into(),
            user: "guest-abc123".into(),
            name: i.is_multiple_of(2).then(|| "小明".to_string()),
            text: format!("hello {i} 弹幕"),
            color: "#ffffff".into(),
            mode: Mode::Scroll,
            ts: 1_700_000_000_000 + u64::from(i),
        })
    }

    #[test]
    fn every_server_event_round_trips_in_both_formats() {
        for format in Format::ALL {
            for event in [
                danmaku(1),
                ServerEvent::Online {
                    room: "r".into(),
                    count: 7,
                },
                ServerEvent::Pong { nonce: None },
                ServerEvent::Delete {
                    room: "r".into(),
                    id: "abc-1".into(),
                },
                ServerEvent::Ack {
                    nonce: Nonce::parse("n").ok(),
                    id: "x".into(),
                },
                ServerEvent::AuthOk {
                    nonce: Nonce::parse("a").ok(),
                    user: "u1".into(),
                    role: crate::validate::Role::Moderator,
                    exp: 1_700_000_000,
                },
            ] {
                let bytes = encode(format, &event);
                assert_eq!(decode_server(format, bytes.as_bytes()).unwrap(), event);
            }
        }
    }

    #[test]
    fn borrowed_danmaku_encodes_like_the_owned_event() {
        for format in Format::ALL {
            let event = danmaku(3);
            let ServerEvent::Danmaku(d) = &event else {
                unreachable!()
            };
            assert_eq!(encode_danmaku(format, d), encode(format, &event));
        }
    }

    #[test]
    fn spliced_batch_decodes_to_the_same_items_for_every_size() {
        // 15, 16 and 70_000 cross the msgpack array header boundaries.
        for format in Format::ALL {
            for n in [0usize, 1, 2, 15, 16, 17, 300, 70_000] {
                let events: Vec<ServerEvent> = (0..n as u32).map(danmaku).collect();
                let encoded: Vec<Encoded> = events.iter().map(|e| encode(format, e)).collect();
                let frame = batch_frame(format, &encoded);
                let decoded = decode_server(format, frame.as_bytes()).unwrap();
                assert_eq!(decoded, ServerEvent::Batch { items: events }, "n={n}");
            }
        }
    }

    #[test]
    fn client_events_decode_from_both_formats() {
        let post = ClientEvent::Post(Post {
            text: "hi".into(),
            color: Some("#ff0000".into()),
            mode: Some("top".into()),
            nonce: Some("1".into()),
        });
        let ping = ClientEvent::Ping(Ping { nonce: None });
        let auth = ClientEvent::Auth(crate::event::Auth {
            token: "a.b.c".into(),
            nonce: Some("n".into()),
        });
        for event in [post, ping, auth] {
            let json = serde_json::to_vec(&event).unwrap();
            assert_eq!(decode_client(Format::Json, &json).unwrap(), event);
            let mp = rmp_serde::to_vec_named(&event).unwrap();
            assert_eq!(decode_client(Format::MsgPack, &mp).unwrap(), event);
        }
        let minimal = decode_client(Format::Json, br#"{"type":"ping"}"#).unwrap();
        assert_eq!(minimal, ClientEvent::Ping(Ping::default()));
    }

    #[test]
    fn echoed_nonces_are_bare_strings_on_the_wire() {
        let nonce = Nonce::parse("n-1").ok();
        let cases = [
            (
                ServerEvent::Ack {
                    nonce: nonce.clone(),
                    id: "x".into(),
                },
                r#"{"type":"ack","nonce":"n-1","id":"x"}"#,
            ),
            (
                ServerEvent::Reject {
                    nonce: nonce.clone(),
                    code: RejectCode::Empty,
                    message: "m".into(),
                    retry_after_ms: None,
                },
                r#"{"type":"reject","nonce":"n-1","code":"empty","message":"m"}"#,
            ),
            (
                ServerEvent::Pong { nonce },
                r#"{"type":"pong","nonce":"n-1"}"#,
            ),
            (ServerEvent::Pong { nonce: None }, r#"{"type":"pong"}"#),
        ];
        for (event, json) in cases {
            assert_eq!(encode(Format::Json, &event), Encoded::Text(json.into()));
            let mp = encode(Format::MsgPack, &event);
            assert_eq!(
                decode_server(Format::MsgPack, mp.as_bytes()).unwrap(),
                event
            );
        }
    }

    #[test]
    fn over_long_nonces_decode_and_are_caught_by_the_check() {
        let long = "n".repeat(65);
        let json = format!(r#"{{"type":"post","text":"hi","nonce":"{long}"}}"#);
        let ClientEvent::Post(post) = decode_client(Format::Json, json.as_bytes()).unwrap() else {
            panic!("not a post");
        };
        assert_eq!(post.nonce.as_deref(), Some(long.as_str()));
        assert_eq!(post.nonce(), Err(NonceTooLong));
        let json = format!(r#"{{"type":"ping","nonce":"{long}"}}"#);
        let ClientEvent::Ping(ping) = decode_client(Format::Json, json.as_bytes()).unwrap() else {
            panic!("not a ping");
        };
        assert_eq!(ping.nonce(), Err(NonceTooLong));
        assert_eq!(Ping::default().nonce(), Ok(None));
        let ok = Ping {
            nonce: Some("p1".into()),
        };
        assert_eq!(ok.nonce().unwrap().unwrap().as_str(), "p1");
        // A server event echoing an over-long nonce is not a valid event.
        let echo = format!(r#"{{"type":"pong","nonce":"{long}"}}"#);
        assert!(decode_server(Format::Json, echo.as_bytes()).is_err());
    }

    /// A MessagePack value for hand-built frames: what no serializer of
    /// ours would write, but a stranger may.
    enum Mp<'a> {
        Str(&'a str),
        Bin(&'a [u8]),
        Nil,
        Int(u8),
        Bool(bool),
        /// A negative fixint, -32..=-1.
        Neg(i8),
        F64(f64),
    }

    /// Appends one [`Mp`] value.
    fn mp_value(out: &mut Vec<u8>, v: &Mp<'_>) {
        match v {
            Mp::Str(s) => push_str(out, s),
            Mp::Bin(b) => {
                out.extend_from_slice(&[0xc4, b.len() as u8]);
                out.extend_from_slice(b);
            }
            Mp::Nil => out.push(0xc0),
            Mp::Int(i) => out.push(i & 0x7f),
            Mp::Bool(b) => out.push(if *b { 0xc3 } else { 0xc2 }),
            Mp::Neg(i) => out.push(0xe0 | (*i as u8 & 0x1f)),
            Mp::F64(f) => {
                out.push(0xcb);
                out.extend_from_slice(&f.to_be_bytes());
            }
        }
    }

    /// A MessagePack map of (key, value) pairs, keys in order.
    fn mp_map(pairs: &[(Mp<'_>, Mp<'_>)]) -> Vec<u8> {
        let mut out = vec![0x80 | pairs.len() as u8];
        for (k, v) in pairs {
            mp_value(&mut out, k);
            mp_value(&mut out, v);
        }
        out
    }

    fn ping(nonce: Option<&str>) -> ClientEvent {
        ClientEvent::Ping(Ping {
            nonce: nonce.map(Into::into),
        })
    }

    #[test]
    fn a_frame_holds_exactly_one_event() {
        // JSON: only whitespace may follow the object.
        for bad in [
            &br#"{"type":"ping"}{"type":"ping"}"#[..],
            br#"{"type":"ping"}
{"type":"ping"}"#,
            br#"{"type":"ping"} x"#,
            br#"{"type":"ping"}]"#,
            br#"{"type":"ping"}null"#,
        ] {
            assert!(decode_client(Format::Json, bad).is_err(), "{bad:?}");
        }
        let spaced = b" {\"type\":\"ping\"} \r\n\t";
        assert_eq!(decode_client(Format::Json, spaced).unwrap(), ping(None));
        // MessagePack: nothing at all may follow the map.
        let one = mp_map(&[(Mp::Str("type"), Mp::Str("ping"))]);
        assert_eq!(decode_client(Format::MsgPack, &one).unwrap(), ping(None));
        for tail in [&one[..], &[0x00], &[0xc0], &[0x80], &[0xc1]] {
            let two = [&one[..], tail].concat();
            let err = decode_client(Format::MsgPack, &two).unwrap_err();
            assert!(
                matches!(err, DecodeError::TrailingBytes(n) if n == tail.len()),
                "{tail:?}: {err}"
            );
        }
    }

    #[test]
    fn positional_arrays_are_not_events() {
        let post = ClientEvent::Post(Post {
            text: "hi".into(),
            color: Some("#ff0000".into()),
            mode: Some("top".into()),
            nonce: Some("1".into()),
        });
        for event in [post, ping(Some("n")), ping(None)] {
            // rmp-serde's default (`to_vec`) writes structs as arrays.
            let positional = rmp_serde::to_vec(&event).unwrap();
            assert_eq!(positional[0] & 0xf0, 0x90, "an array");
            assert!(decode_client(Format::MsgPack, &positional).is_err());
        }
        for bad in [
            &br#"["ping"]"#[..],
            br#"["ping","n"]"#,
            br#"["post","hi"]"#,
            br#"["post","hi",null,null,"1"]"#,
        ] {
            assert!(decode_client(Format::Json, bad).is_err(), "{bad:?}");
        }
        // A non-map at the top level, in MessagePack: nil, a string, an int.
        for bad in [&[0xc0][..], &[0xa4, b'p', b'i', b'n', b'g'], &[0x01]] {
            assert!(decode_client(Format::MsgPack, bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn msgpack_bin_is_not_a_string() {
        let t = Mp::Str("type");
        let post = || {
            vec![
                (Mp::Str("type"), Mp::Str("post")),
                (Mp::Str("text"), Mp::Str("hi")),
            ]
        };
        assert!(decode_client(Format::MsgPack, &mp_map(&post())).is_ok());
        let mut cases = vec![
            mp_map(&[(t, Mp::Bin(b"ping"))]),
            mp_map(&[
                (Mp::Str("type"), Mp::Bin(b"post")),
                (Mp::Str("text"), Mp::Str("hi")),
            ]),
            mp_map(&[
                (Mp::Str("type"), Mp::Str("ping")),
                (Mp::Str("nonce"), Mp::Bin(b"n")),
            ]),
            // A key must be a str as well.
            mp_map(&[(Mp::Bin(b"type"), Mp::Str("ping"))]),
        ];
        for field in ["text", "color", "mode", "nonce"] {
            let mut pairs = post();
            pairs.retain(|(k, _)| !matches!(k, Mp::Str(s) if *s == field));
            pairs.push((Mp::Str(field), Mp::Bin(b"x")));
            cases.push(mp_map(&pairs));
        }
        for bad in cases {
            assert!(decode_client(Format::MsgPack, &bad).is_err(), "{bad:x?}");
        }
        // A str that is not UTF-8 is refused too, not read as bytes.
        let bad_utf8 = [0x81, 0xa4, b't', b'y', b'p', b'e', 0xa2, 0xff, 0xfe];
        assert!(decode_client(Format::MsgPack, &bad_utf8).is_err());
    }

    #[test]
    fn null_optional_fields_read_as_absent_in_both_formats() {
        let bare = ClientEvent::Post(Post {
            text: "hi".into(),
            color: None,
            mode: None,
            nonce: None,
        });
        let json = br#"{"type":"post","text":"hi","color":null,"mode":null,"nonce":null}"#;
        assert_eq!(decode_client(Format::Json, json).unwrap(), bare);
        let mp = mp_map(&[
            (Mp::Str("type"), Mp::Str("post")),
            (Mp::Str("text"), Mp::Str("hi")),
            (Mp::Str("color"), Mp::Nil),
            (Mp::Str("mode"), Mp::Nil),
            (Mp::Str("nonce"), Mp::Nil),
        ]);
        assert_eq!(decode_client(Format::MsgPack, &mp).unwrap(), bare);
        let json = br#"{"type":"ping","nonce":null}"#;
        assert_eq!(decode_client(Format::Json, json).unwrap(), ping(None));
        let mp = mp_map(&[
            (Mp::Str("type"), Mp::Str("ping")),
            (Mp::Str("nonce"), Mp::Nil),
        ]);
        assert_eq!(decode_client(Format::MsgPack, &mp).unwrap(), ping(None));
        // Required fields may not be null.
        for bad in [&br#"{"type":null}"#[..], br#"{"type":"post","text":null}"#] {
            assert!(decode_client(Format::Json, bad).is_err(), "{bad:?}");
        }
        let mp = mp_map(&[
            (Mp::Str("type"), Mp::Str("post")),
            (Mp::Str("text"), Mp::Nil),
        ]);
        assert!(decode_client(Format::MsgPack, &mp).is_err());
    }

    #[test]
    fn open_maps_still_decode_as_before() {
        // Unknown fields of any shape are skipped, `type` may come last, and
        // a field that means nothing for the type is ignored whatever it holds.
        let json =
            br#"{"x":[1,{"y":null}],"nonce":"n","text":5,"z":{"type":"post"},"type":"ping"}"#;
        assert_eq!(decode_client(Format::Json, json).unwrap(), ping(Some("n")));
        let mut mp = mp_map(&[
            (Mp::Str("extra"), Mp::Bin(b"\x00\x01")),
            (Mp::Str("text"), Mp::Int(5)),
            (Mp::Str("nonce"), Mp::Str("n")),
            (Mp::Str("type"), Mp::Str("ping")),
        ]);
        // A fifth pair whose value is an array holding a map and an ext.
        mp[0] += 1;
        push_str(&mut mp, "deep");
        mp.extend_from_slice(&[0x92, 0x81, 0xa1, b'k', 0xc0, 0xd4, 0x01, 0x02]);
        assert_eq!(
            decode_client(Format::MsgPack, &mp).unwrap(),
            ping(Some("n"))
        );
        // Wrong types in the fields a post needs are still errors.
        for bad in [
            &br#"{"type":"post","text":"hi","color":5}"#[..],
            br#"{"type":"post","text":"hi","mode":["top"]}"#,
            br#"{"type":"post","text":"hi","nonce":{}}"#,
            br#"{"type":"ping","nonce":1}"#,
            br#"{"type":"post","text":"a","text":"b"}"#,
            br#"{"type":"ping","type":"ping"}"#,
            br#"{"type":"auth"}"#,
            br#"{"type":"auth","token":5}"#,
        ] {
            assert!(decode_client(Format::Json, bad).is_err(), "{bad:?}");
        }
        // MessagePack keys are strings (§4.2): an integer key is refused.
        let int_key = mp_map(&[(Mp::Str("type"), Mp::Str("ping")), (Mp::Int(1), Mp::Nil)]);
        assert!(decode_client(Format::MsgPack, &int_key).is_err());
    }

    #[test]
    fn unknown_types_and_wrong_field_types_are_errors() {
        for bad in [
            &br#"{"type":"shout","text":"x"}"#[..],
            br#"{"text":"x"}"#,
            br#"{"type":"post","text":5}"#,
            br#"[1,2]"#,
            b"",
        ] {
            assert!(decode_client(Format::Json, bad).is_err());
        }
        assert!(decode_client(Format::MsgPack, &[0xc1]).is_err());
    }

    fn mute() -> Moderate {
        Moderate {
            action: "mute".into(),
            user: Some("u1".into()),
            seconds: Some(600),
            shadow: Some(true),
            global: Some(false),
            nonce: Some("m1".into()),
            ..Moderate::default()
        }
    }

    #[test]
    fn moderate_round_trips_in_both_formats() {
        let every_field = Moderate {
            action: "block_word".into(),
            user: Some("u2".into()),
            seconds: Some(u64::MAX),
            shadow: Some(false),
            global: Some(true),
            id: Some("abc-1".into()),
            word: Some("spam".into()),
            word_action: Some("mask".into()),
            nonce: Some(String::new()),
        };
        let bare = Moderate {
            action: "lock".into(),
            ..Moderate::default()
        };
        for command in [mute(), every_field, bare] {
            let event = ClientEvent::Moderate(command);
            let json = serde_json::to_vec(&event).unwrap();
            assert_eq!(decode_client(Format::Json, &json).unwrap(), event);
            let mp = rmp_serde::to_vec_named(&event).unwrap();
            assert_eq!(decode_client(Format::MsgPack, &mp).unwrap(), event);
        }
        // Written by hand: `type` last, null for the absent, an unknown
        // field and fields of other events (of any type) ignored.
        let json = br#"{"action":"mute","user":"u1","seconds":600,"shadow":true,
            "global":false,"nonce":"m1","id":null,"word":null,"text":5,"token":[],
            "extra":{"seconds":-1},"type":"moderate"}"#;
        assert_eq!(
            decode_client(Format::Json, json).unwrap(),
            ClientEvent::Moderate(mute())
        );
        let mp = mp_map(&[
            (Mp::Str("type"), Mp::Str("moderate")),
            (Mp::Str("action"), Mp::Str("mute")),
            (Mp::Str("user"), Mp::Str("u1")),
            (Mp::Str("seconds"), Mp::Int(100)),
            (Mp::Str("shadow"), Mp::Bool(true)),
            (Mp::Str("global"), Mp::Bool(false)),
            (Mp::Str("nonce"), Mp::Str("m1")),
            (Mp::Str("word_action"), Mp::Nil),
            (Mp::Str("color"), Mp::Bin(b"x")),
        ]);
        let expected = Moderate {
            seconds: Some(100),
            ..mute()
        };
        assert_eq!(
            decode_client(Format::MsgPack, &mp).unwrap(),
            ClientEvent::Moderate(expected)
        );
        // MessagePack may write a positive number in a signed type (int 8).
        let mut signed = mp_map(&[
            (Mp::Str("type"), Mp::Str("moderate")),
            (Mp::Str("action"), Mp::Str("slow_mode")),
        ]);
        signed[0] += 1;
        push_str(&mut signed, "seconds");
        signed.extend_from_slice(&[0xd0, 30]);
        let ClientEvent::Moderate(slow) = decode_client(Format::MsgPack, &signed).unwrap() else {
            panic!("not a moderate");
        };
        assert_eq!(slow.seconds, Some(30));
    }

    /// The decode error of `json`, which must not decode.
    fn json_error(json: &str) -> String {
        match decode_client(Format::Json, json.as_bytes()) {
            Ok(event) => panic!("{json} decoded to {event:?}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn moderate_field_types_are_checked_and_named() {
        for (field, value, said) in [
            ("seconds", "-1", "invalid value: integer `-1`"),
            ("seconds", "1.5", "a float"),
            ("seconds", "60.0", "a float"),
            ("seconds", "1e3", "a float"),
            ("seconds", "18446744073709551616", "a float"),
            ("seconds", r#""60""#, r#"string "60""#),
            ("seconds", "true", "boolean `true`"),
            ("shadow", "1", "integer `1`"),
            ("shadow", r#""true""#, r#"string "true""#),
            ("global", "[]", "an array"),
            ("user", "7", "integer `7`"),
            ("id", "{}", "a map"),
            ("word", "false", "boolean `false`"),
            ("word_action", "0", "integer `0`"),
            ("nonce", "1", "integer `1`"),
            ("action", "null", "null"),
            ("action", "5", "integer `5`"),
        ] {
            let json = format!(r#"{{"type":"moderate","action":"mute","{field}":{value}}}"#);
            let json = json.replacen(r#""action":"mute","action""#, r#""action""#, 1);
            let err = json_error(&json);
            assert!(err.contains(&format!("`{field}` to be")), "{json}: {err}");
            assert!(err.contains(said), "{json}: {err}");
        }
        assert!(json_error(r#"{"type":"moderate"}"#).contains("missing field `action`"));
        // The same checks in MessagePack.
        for (field, value) in [
            ("seconds", Mp::Neg(-1)),
            ("seconds", Mp::F64(60.0)),
            ("seconds", Mp::Str("60")),
            ("seconds", Mp::Bin(b"60")),
            ("shadow", Mp::Int(1)),
            ("global", Mp::Str("yes")),
            ("user", Mp::Bin(b"u1")),
            ("word", Mp::Bool(true)),
        ] {
            let mp = mp_map(&[
                (Mp::Str("type"), Mp::Str("moderate")),
                (Mp::Str("action"), Mp::Str("mute")),
                (Mp::Str(field), value),
            ]);
            let err = decode_client(Format::MsgPack, &mp).unwrap_err().to_string();
            assert!(err.contains(&format!("`{field}` to be")), "{field}: {err}");
        }
    }

    #[test]
    fn repeated_moderate_fields_are_errors_only_in_a_moderate() {
        // Whether `type` comes before or after the repeated field.
        for json in [
            r#"{"type":"moderate","action":"lock","action":"unlock"}"#,
            r#"{"action":"lock","seconds":1,"seconds":2,"type":"moderate"}"#,
            r#"{"action":"lock","type":"moderate","user":"a","user":"b"}"#,
            r#"{"type":"moderate","action":"lock","nonce":"a","nonce":"b"}"#,
            r#"{"type":"moderate","action":"lock","text":"a","text":"b"}"#,
        ] {
            assert!(json_error(json).contains("duplicate field"), "{json}");
        }
        // In other events those keys are unknown keys, as they were before
        // `moderate`: skipped, repeats and wrong types included.
        for json in [
            r#"{"type":"ping","user":1,"user":[],"seconds":-1,"seconds":"x"}"#,
            r#"{"user":1,"user":[],"shadow":"no","type":"ping","seconds":-1}"#,
        ] {
            assert_eq!(
                decode_client(Format::Json, json.as_bytes()).unwrap(),
                ping(None),
                "{json}"
            );
        }
        let mp = mp_map(&[
            (Mp::Str("action"), Mp::Bin(b"x")),
            (Mp::Str("action"), Mp::Neg(-3)),
            (Mp::Str("type"), Mp::Str("ping")),
            (Mp::Str("action"), Mp::F64(1.0)),
        ]);
        assert_eq!(decode_client(Format::MsgPack, &mp).unwrap(), ping(None));
    }

    #[test]
    fn moderated_and_error_carry_the_nonce() {
        let nonce = Nonce::parse("m1").ok();
        let cases = [
            (
                ServerEvent::Moderated {
                    nonce: nonce.clone(),
                    action: "mute".into(),
                },
                r#"{"type":"moderated","nonce":"m1","action":"mute"}"#,
            ),
            (
                ServerEvent::Moderated {
                    nonce: None,
                    action: "lock".into(),
                },
                r#"{"type":"moderated","action":"lock"}"#,
            ),
            (
                ServerEvent::Error {
                    nonce: nonce.clone(),
                    code: ErrorCode::Forbidden,
                    message: "m".into(),
                },
                r#"{"type":"error","nonce":"m1","code":"forbidden","message":"m"}"#,
            ),
            (
                ServerEvent::Error {
                    nonce,
                    code: ErrorCode::BadRequest,
                    message: "seconds: at most 300".into(),
                },
                r#"{"type":"error","nonce":"m1","code":"bad_request","message":"seconds: at most 300"}"#,
            ),
            (
                ServerEvent::Error {
                    nonce: None,
                    code: ErrorCode::BadFrame,
                    message: "m".into(),
                },
                r#"{"type":"error","code":"bad_frame","message":"m"}"#,
            ),
        ];
        for (event, json) in cases {
            assert_eq!(encode(Format::Json, &event), Encoded::Text(json.into()));
            for format in Format::ALL {
                let bytes = encode(format, &event);
                assert_eq!(decode_server(format, bytes.as_bytes()).unwrap(), event);
            }
        }
    }

    #[test]
    fn the_new_reject_codes_have_their_wire_names() {
        for code in RejectCode::ALL {
            let json = serde_json::to_string(&code).unwrap();
            assert_eq!(json, format!("\"{}\"", code.as_str()));
        }
        let muted = ServerEvent::Reject {
            nonce: None,
            code: RejectCode::Muted,
            message: "m".into(),
            retry_after_ms: Some(1500),
        };
        assert_eq!(
            encode(Format::Json, &muted),
            Encoded::Text(
                r#"{"type":"reject","code":"muted","message":"m","retry_after_ms":1500}"#.into()
            )
        );
    }
}
