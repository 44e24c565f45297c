//! The opening handshake, with hand-written HTTP requests: a
//! `Sec-WebSocket-Key` that is not base64 of 16 bytes gets 400, a version
//! other than 13 gets 426 naming 13, and a `nick` that is not UTF-8 once
//! percent-decoded gets 400 instead of being repaired with U+FFFD.

use crate::raw::{upgrade, KEY};
use crate::support::{Client, TestGateway};

#[tokio::test]
async fn keys_that_are_not_base64_of_16_bytes_get_400() {
    let gw = TestGateway::with(|_| {}).await;
    let bad = [
        "x",
        "dGhlIHNhbXBsZSBub25jZQ",       // no padding
        "dGhlIHNhbXBsZSBub25jZQ=",      // short padding
        "dGhlIHNhbXBsZSBub25jZQ===",    // too much padding
        "dGhlIHNhbXBsZSBub25jZR==",     // bits past the 128th
        "AAAAAAAAAAAAAAAAAAAAAAA=",     // 17 bytes
        "AAAAAAAAAAAAAAAAAAAAAA",       // 16 bytes, unpadded
        "AAAAAAAAAAAAAAAAAAAAAAAAAA==", // 19 bytes
        "dGhlIHNhbXBsZSBub25j!Q==",     // not the alphabet
        "dGhlIHNhbXBsZSBub25jZQ-_",     // URL-safe alphabet
    ];
    for key in bad {
        let (response, _, _) = upgrade(gw.addr, "/ws/keys", &[("Sec-WebSocket-Key", key)]).await;
        assert_eq!(response.status, 400, "key {key:?}: {response:?}");
        assert!(
            response.body.contains("Sec-WebSocket-Key"),
            "a plain reason for {key:?}: {}",
            response.body
        );
    }
    for key in [KEY, "AAAAAAAAAAAAAAAAAAAAAA==", "/////////////////////w=="] {
        let (response, _, _) = upgrade(gw.addr, "/ws/keys", &[("Sec-WebSocket-Key", key)]).await;
        assert_eq!(response.status, 101, "key {key:?}: {response:?}");
    }
    // The accept header is computed from the key, as RFC 6455 §1.3 shows.
    let (response, _, _) = upgrade(gw.addr, "/ws/keys", &[]).await;
    assert_eq!(
        response.header("sec-websocket-accept"),
        Some("s3pPLMBiTxaQ9kYGzzhZRbK+xOo=")
    );
}

#[tokio::test]
async fn other_versions_get_426_naming_13() {
    let gw = TestGateway::with(|_| {}).await;
    for version in ["8", "12", "14", "13, 8", ""] {
        let (response, _, _) = upgrade(
            gw.addr,
            "/ws/versions",
            &[("Sec-WebSocket-Version", version)],
        )
        .await;
        assert_eq!(response.status, 426, "version {version:?}: {response:?}");
        assert_eq!(
            response.header("sec-websocket-version"),
            Some("13"),
            "version {version:?}"
        );
    }
}

#[tokio::test]
async fn a_nick_that_is_not_utf8_is_refused_not_repaired() {
    let gw = TestGateway::with(|_| {}).await;
    for query in [
        "nick=%FF",
        "nick=ab%C3",
        "nick=%C3%28",
        "nick=%ED%A0%80", // an encoded surrogate
        "nick=a&nick=b",
    ] {
        let (response, _, _) = upgrade(gw.addr, &format!("/ws/nicks?{query}"), &[]).await;
        assert_eq!(response.status, 400, "{query}: {response:?}");
        assert!(response.body.contains("nick"), "{query}: {}", response.body);
    }
    // Valid encodings still work, `+` reads as a space, and other
    // parameters are ignored.
    let c = Client::connect(
        &format!("{}?x=%FF&nick=%C3%A9t%C3%A9+2", gw.url("nicks")),
        None,
    )
    .await;
    assert_eq!(c.hello.name.as_deref(), Some("été 2"));
}
