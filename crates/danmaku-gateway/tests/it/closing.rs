//! The closing handshake, to the letter of RFC 6455: every framing
//! violation is answered with a 1002 close frame (never a bare disconnect,
//! which clients report as 1006), and a client's own close is answered with
//! its code before the server drops the socket. Frames are written by hand
//! over raw TCP, since no WebSocket library sends them wrong.

use crate::raw::RawWs;
use crate::support::TestGateway;

/// A hand-made frame: its first header byte, its payload, and whether the
/// payload is masked.
type HandMade<'a> = (u8, &'a [u8], bool);

/// Sends hand-made frames on a fresh connection and expects the server
/// to close with 1002, then end the TCP connection.
async fn answered_with_1002(gw: &TestGateway, what: &str, frames: &[HandMade<'_>]) {
    let mut ws = RawWs::connect(gw.addr, "close").await;
    for (first, payload, masked) in frames {
        ws.send_frame(*first, payload, *masked).await;
    }
    assert_eq!(ws.expect_close().await, Some(1002), "{what}");
    ws.expect_end().await;
}

#[tokio::test]
async fn framing_violations_get_a_1002_close_frame() {
    let gw = TestGateway::with(|_| {}).await;
    let ping = br#"{"type":"ping"}"#.as_slice();
    let cases: [(&str, &[HandMade]); 10] = [
        ("an unmasked client frame", &[(0x81, ping, false)]),
        ("RSV1 set", &[(0x81 | 0x40, ping, true)]),
        ("RSV3 set on a ping", &[(0x89 | 0x10, b"", true)]),
        ("reserved data opcode 0x3", &[(0x83, ping, true)]),
        ("reserved control opcode 0xB", &[(0x8b, b"", true)]),
        ("a 126-byte ping", &[(0x89, &[b'p'; 126], true)]),
        ("a fragmented ping", &[(0x09, b"p", true)]),
        (
            "a continuation with nothing to continue",
            &[(0x80, ping, true)],
        ),
        (
            "a new message inside a fragmented one",
            &[(0x01, b"{\"type\":", true), (0x81, ping, true)],
        ),
        (
            "a close frame with a one-byte payload",
            &[(0x88, b"\x03", true)],
        ),
    ];
    for (what, frames) in cases {
        answered_with_1002(&gw, what, frames).await;
    }
    // The connection of a client that follows the rules is unaffected.
    let mut ok = RawWs::connect(gw.addr, "close").await;
    ok.send_frame(0x81, ping, true).await;
    let pong = ok.read_frame().await.expect("pong");
    assert!(pong.payload.starts_with(br#"{"type":"pong""#), "{pong:?}");
}

#[tokio::test]
async fn close_codes_that_may_not_be_sent_get_1002() {
    let gw = TestGateway::with(|_| {}).await;
    // 1005 and 1006 are reserved for reporting, never sent; 999 and 5000
    // are outside every range; 1004 and 2000 are reserved.
    for code in [999u16, 1004, 1005, 1006, 2000, 5000] {
        let mut ws = RawWs::connect(gw.addr, "codes").await;
        ws.send_close(code).await;
        assert_eq!(ws.expect_close().await, Some(1002), "close code {code}");
        ws.expect_end().await;
    }
}

#[tokio::test]
async fn a_client_close_is_answered_with_its_own_code() {
    let gw = TestGateway::with(|_| {}).await;
    for code in [1000u16, 1001, 4000] {
        let mut ws = RawWs::connect(gw.addr, "bye").await;
        ws.send_close(code).await;
        assert_eq!(ws.expect_close().await, Some(code), "close code {code}");
        ws.expect_end().await;
    }
    // A close without a code is answered with one without a code.
    let mut ws = RawWs::connect(gw.addr, "bye").await;
    ws.send_frame(0x88, b"", true).await;
    assert_eq!(ws.expect_close().await, None);
    ws.expect_end().await;
    // And the connections are gone from the room.
    crate::support::eventually("closed connections leave", || async {
        let s = gw.get_json("/api/stats").await;
        (s["connections"] == 0).then_some(())
    })
    .await;
}

#[tokio::test]
async fn a_library_client_sees_a_clean_close() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
    use tokio_tungstenite::tungstenite::protocol::CloseFrame;
    use tokio_tungstenite::tungstenite::Message;

    let gw = TestGateway::with(|_| {}).await;
    let mut c = gw.join("clean").await;
    c.ws.send(Message::Close(Some(CloseFrame {
        code: CloseCode::Normal,
        reason: "bye".into(),
    })))
    .await
    .unwrap();
    // tungstenite reports the server's answer, then a clean end: not the
    // "reset without closing handshake" error a dropped socket gives.
    let mut answer = None;
    while let Some(msg) = tokio::time::timeout(crate::support::PATIENCE, c.ws.next())
        .await
        .expect("the close completes in time")
    {
        match msg {
            Ok(Message::Close(frame)) => answer = frame.map(|f| u16::from(f.code)),
            Ok(_) => {}
            Err(e) => panic!("the close was not clean: {e}"),
        }
    }
    assert_eq!(answer, Some(1000));
}
