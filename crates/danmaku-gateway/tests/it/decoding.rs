//! Strict decoding and comment-text hygiene, seen from a client socket:
//! each refusal reaches the client as `proto/PROTOCOL.md` documents. A frame
//! that is not exactly one client event (two messages, trailing bytes, a
//! MessagePack array for a map, `bin` for a string, `null` for a required
//! field) gets an `error` `bad_frame` and nothing else; `null` in an
//! optional field reads as absent; text with bidi controls or C0/C1
//! controls is a `reject` `invalid_text`, invisible-only text is `empty`,
//! and emoji ZWJ sequences and CJK pass.

use danmaku_proto::{ErrorCode, Nonce, RejectCode, ServerEvent, SUBPROTOCOL_MSGPACK};
use tokio_tungstenite::tungstenite::Message;

use crate::support::{Client, TestGateway};

async fn gateway() -> TestGateway {
    TestGateway::with(|s| {
        s.post_rate_count = 1_000_000;
        s.post_burst = 1_000_000;
        s.bad_frame_limit = 1_000;
    })
    .await
}

/// Sends `msg`, expects a `bad_frame` error for it, then proves nothing
/// else was produced for that frame: the next event is the pong of a ping
/// sent after it.
async fn refused_as_bad_frame(c: &mut Client, what: &str, msg: Message) {
    c.send_raw(msg).await;
    match c.next_event().await {
        ServerEvent::Error {
            code: ErrorCode::BadFrame,
            message,
            nonce: None,
        } => assert!(!message.is_empty(), "{what}"),
        other => panic!("{what}: expected bad_frame, got {other:?}"),
    }
    c.send_event(serde_json::json!({"type": "ping", "nonce": "after"}))
        .await;
    assert_eq!(
        c.next_event().await,
        ServerEvent::Pong {
            nonce: Nonce::parse("after").ok()
        },
        "{what}: nothing else came of the bad frame"
    );
}

#[tokio::test]
async fn json_frames_must_hold_exactly_one_event() {
    let gw = gateway().await;
    let mut c = gw.join("json").await;
    for (what, text) in [
        ("two messages", r#"{"type":"ping"}{"type":"ping"}"#),
        (
            "two messages on lines",
            "{\"type\":\"ping\"}\n{\"type\":\"ping\"}",
        ),
        ("trailing bytes", r#"{"type":"ping"} x"#),
        ("an array", r#"["ping"]"#),
        (
            "null for a required field",
            r#"{"type":"post","text":null}"#,
        ),
        (
            "a duplicate field",
            r#"{"type":"post","text":"a","text":"b"}"#,
        ),
    ] {
        refused_as_bad_frame(&mut c, what, Message::Text(text.into())).await;
    }
    // Whitespace around the one object is fine.
    c.send_raw(Message::Text(
        " {\"type\":\"ping\",\"nonce\":\"ws\"}\n".into(),
    ))
    .await;
    assert_eq!(
        c.next_event().await,
        ServerEvent::Pong {
            nonce: Nonce::parse("ws").ok()
        }
    );
}

#[tokio::test]
async fn null_in_an_optional_field_reads_as_absent() {
    let gw = gateway().await;
    let mut c = gw.join("nulls").await;
    c.send_raw(Message::Text(
        r#"{"type":"post","text":"hi","color":null,"mode":null,"nonce":null}"#.into(),
    ))
    .await;
    let ServerEvent::Ack { nonce, .. } = c.next_event().await else {
        panic!("ack")
    };
    assert_eq!(nonce, None);
    let ServerEvent::Danmaku(d) = c.next_event().await else {
        panic!("danmaku")
    };
    assert_eq!((d.color.as_str(), d.text.as_str()), ("#ffffff", "hi"));

    let mut mp = Client::connect(&gw.url("nulls"), Some(SUBPROTOCOL_MSGPACK)).await;
    let mut post = map(3);
    post.extend(str8("type"));
    post.extend(str8("post"));
    post.extend(str8("text"));
    post.extend(str8("mp"));
    post.extend(str8("nonce"));
    post.push(0xc0); // nil
    mp.send_raw(Message::Binary(post.into())).await;
    let ServerEvent::Ack { nonce, .. } = mp.next_event().await else {
        panic!("ack")
    };
    assert_eq!(nonce, None);
}

/// A MessagePack fixmap header for `n` pairs.
fn map(n: u8) -> Vec<u8> {
    vec![0x80 | n]
}

/// A MessagePack fixstr.
fn str8(s: &str) -> Vec<u8> {
    let mut out = vec![0xa0 | s.len() as u8];
    out.extend_from_slice(s.as_bytes());
    out
}

/// A MessagePack `bin 8`.
fn bin(b: &[u8]) -> Vec<u8> {
    let mut out = vec![0xc4, b.len() as u8];
    out.extend_from_slice(b);
    out
}

/// `{"type": "ping"}` as MessagePack.
fn ping() -> Vec<u8> {
    let mut out = map(1);
    out.extend(str8("type"));
    out.extend(str8("ping"));
    out
}

#[tokio::test]
async fn msgpack_frames_must_hold_exactly_one_named_map() {
    let gw = gateway().await;
    let mut c = Client::connect(&gw.url("mp"), Some(SUBPROTOCOL_MSGPACK)).await;

    let two = [ping(), ping()].concat();
    let trailing = [ping(), vec![0xc0]].concat();
    // A positional encoding: ["ping"] and ["post", "hi"].
    let array = [vec![0x91], str8("ping")].concat();
    let post_array = [vec![0x92], str8("post"), str8("hi")].concat();
    let bin_text = [map(2), str8("type"), str8("post"), str8("text"), bin(b"hi")].concat();
    let bin_type = [map(1), str8("type"), bin(b"ping")].concat();
    let bin_nonce = [map(2), str8("type"), str8("ping"), str8("nonce"), bin(b"n")].concat();
    let int_key = [map(2), str8("type"), str8("ping"), vec![0x01, 0x02]].concat();
    let nil_text = [map(2), str8("type"), str8("post"), str8("text"), vec![0xc0]].concat();
    let bad_utf8 = [map(1), str8("type"), vec![0xa2, 0xff, 0xfe]].concat();
    for (what, bytes) in [
        ("two maps", two),
        ("trailing bytes", trailing),
        ("an array for a map", array),
        ("a positional post", post_array),
        ("bin for text", bin_text),
        ("bin for type", bin_type),
        ("bin for nonce", bin_nonce),
        ("an integer key", int_key),
        ("nil for a required field", nil_text),
        ("a str that is not UTF-8", bad_utf8),
    ] {
        refused_as_bad_frame(&mut c, what, Message::Binary(bytes.into())).await;
    }
    // The well-formed frame still works.
    c.send_raw(Message::Binary(ping().into())).await;
    assert_eq!(c.next_event().await, ServerEvent::Pong { nonce: None });
}

/// Posts `text` and returns the reject code, or `None` when acked (and the
/// comment then arrives with `expected` as its text).
async fn post_outcome(c: &mut Client, text: &str, expected: &str) -> Option<RejectCode> {
    let nonce = c.post(text).await;
    match c.next_event().await {
        ServerEvent::Reject {
            code, nonce: echo, ..
        } => {
            assert_eq!(echo.as_ref().map(Nonce::as_str), Some(nonce.as_str()));
            Some(code)
        }
        ServerEvent::Ack { .. } => {
            let ServerEvent::Danmaku(d) = c.next_event().await else {
                panic!("the accepted comment")
            };
            assert_eq!(d.text, expected);
            None
        }
        other => panic!("{text:?}: unexpected {other:?}"),
    }
}

#[tokio::test]
async fn comment_text_hygiene_reaches_the_client_as_documented() {
    let gw = gateway().await;
    let mut c = gw.join("text").await;
    for (what, text) in [
        ("a right-to-left override", "abc\u{202E}def"),
        ("a left-to-right embedding", "\u{202A}abc"),
        ("a bidi isolate", "x\u{2066}y\u{2069}"),
        ("a C0 control (BEL)", "ding\u{7}"),
        ("a C0 control (ESC)", "\u{1b}[31mred"),
        ("NUL", "a\u{0}b"),
        ("DEL", "a\u{7f}b"),
        ("a C1 control", "a\u{90}b"),
        ("a C1 control (CSI)", "a\u{9b}31m"),
    ] {
        assert_eq!(
            post_outcome(&mut c, text, "").await,
            Some(RejectCode::InvalidText),
            "{what}"
        );
    }
    for (what, text) in [
        ("zero-width only", "\u{200B}\u{200D}\u{FEFF}"),
        ("marks and joiners only", " \u{200E}\u{200C} \u{2060} "),
        ("a Hangul filler", "\u{3164}"),
        ("the blank braille cell", "\u{2800}\u{2800}"),
    ] {
        assert_eq!(
            post_outcome(&mut c, text, "").await,
            Some(RejectCode::Empty),
            "{what}"
        );
    }
    for (text, shown) in [
        ("👨\u{200D}👩\u{200D}👧", "👨\u{200D}👩\u{200D}👧"),
        ("👩\u{200D}💻 ❤\u{FE0F}", "👩\u{200D}💻 ❤\u{FE0F}"),
        ("前方高能！", "前方高能！"),
        ("弾幕コメント", "弾幕コメント"),
        ("  line\none\ttwo  ", "line one two"),
        ("می\u{200C}خواهم", "می\u{200C}خواهم"),
    ] {
        assert_eq!(post_outcome(&mut c, text, shown).await, None, "{text:?}");
    }
}
