//! Every limit a client can hit, each with its stable answer: HTTP 400 for
//! bad room ids, 1009 for oversize frames, 1007 for invalid UTF-8,
//! `bad_frame` then 1008, `too_long`, `empty`, `bad_request`,
//! `rate_limited` with `retry_after_ms`, and 503 when full.

use danmaku_proto::{ErrorCode, RejectCode, ServerEvent};
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;

use crate::support::{refused_status, Client, TestGateway};

fn reject_code(event: ServerEvent) -> (RejectCode, Option<String>, Option<u64>) {
    match event {
        ServerEvent::Reject {
            code,
            nonce,
            retry_after_ms,
            ..
        } => (code, nonce.map(|n| n.as_str().to_owned()), retry_after_ms),
        other => panic!("expected a reject, got {other:?}"),
    }
}

#[tokio::test]
async fn bad_room_ids_get_400_before_the_upgrade() {
    let gw = TestGateway::with(|_| {}).await;
    let long = "a".repeat(65);
    for bad in ["a%20b", "caf%C3%A9", long.as_str(), "a.b", "", "a/b"] {
        let (status, body) = refused_status(&format!("ws://{}/ws/{bad}", gw.addr)).await;
        assert_eq!(status, 400, "room {bad:?}");
        assert!(body.contains("room id"), "plain reason for {bad:?}: {body}");
    }
    let ok = "a".repeat(64);
    Client::connect(&gw.url(&ok), None).await;
}

#[tokio::test]
async fn oversize_frames_close_with_1009() {
    let gw = TestGateway::with(|_| {}).await;
    let mut c = gw.join("big").await;
    assert_eq!(c.hello.limits.max_frame_bytes, 4096);
    // Exactly at the limit is fine (as a post it is too long, not too big).
    let text = "x".repeat(4096 - r#"{"type":"post","text":""}"#.len());
    c.send_raw(Message::Text(
        json!({"type": "post", "text": text}).to_string().into(),
    ))
    .await;
    assert_eq!(reject_code(c.next_event().await).0, RejectCode::TooLong);
    c.send_raw(Message::Text("y".repeat(5000).into())).await;
    assert_eq!(c.expect_close().await.0, 1009);

    let mut c = gw.join("big").await;
    c.send_raw(Message::Binary(vec![0u8; 4097].into())).await;
    assert_eq!(c.expect_close().await.0, 1009);
}

#[tokio::test]
async fn invalid_utf8_closes_with_1007() {
    let gw = TestGateway::with(|_| {}).await;
    let mut c = gw.join("utf").await;
    c.send_invalid_utf8().await;
    assert_eq!(c.expect_close().await.0, 1007);
}

#[tokio::test]
async fn bad_frames_get_errors_then_1008_and_the_socket_survives_until_then() {
    let gw = TestGateway::with(|s| s.bad_frame_limit = 4).await;
    let mut c = gw.join("bad").await;
    let frames = [
        Message::Text("not json".into()),
        Message::Text(r#"{"type":"shout"}"#.into()),
        Message::Binary(vec![0xc1, 0x00].into()),
    ];
    for f in frames {
        c.send_raw(f).await;
        match c.next_event().await {
            ServerEvent::Error {
                code: ErrorCode::BadFrame,
                message,
                nonce: None,
            } => assert!(!message.is_empty()),
            other => panic!("expected bad_frame, got {other:?}"),
        }
    }
    // Still open and working.
    c.post("still here").await;
    assert!(matches!(c.next_event().await, ServerEvent::Ack { .. }));
    // The fourth bad frame in the window closes.
    c.send_raw(Message::Text(r#"{"type":"post","text":1}"#.into()))
        .await;
    let (code, reason) = c.expect_close().await;
    assert_eq!(code, 1008);
    assert!(reason.contains("bad frames"), "{reason}");
}

#[tokio::test]
async fn the_default_bad_frame_limit_is_ten() {
    let gw = TestGateway::with(|_| {}).await;
    let mut c = gw.join("bad10").await;
    for _ in 0..9 {
        c.send_raw(Message::Text("{".into())).await;
        assert!(matches!(c.next_event().await, ServerEvent::Error { .. }));
    }
    c.send_raw(Message::Text("{".into())).await;
    assert_eq!(c.expect_close().await.0, 1008);
}

#[tokio::test]
async fn text_limits_are_rejected_with_codes_and_the_nonce() {
    let gw = TestGateway::with(|s| s.max_text_chars = 10).await;
    let mut c = gw.join("txt").await;
    assert_eq!(c.hello.limits.max_text_chars, 10);
    let n = c.post(&"字".repeat(11)).await;
    assert_eq!(
        reject_code(c.next_event().await),
        (RejectCode::TooLong, Some(n), None)
    );
    let n = c.post(" \t\n ").await;
    assert_eq!(
        reject_code(c.next_event().await),
        (RejectCode::Empty, Some(n), None)
    );
    c.send_event(json!({"type": "post", "text": "x", "color": "red", "nonce": "c"}))
        .await;
    assert_eq!(reject_code(c.next_event().await).0, RejectCode::BadRequest);
    c.send_event(json!({"type": "post", "text": "x", "mode": "spiral"}))
        .await;
    assert_eq!(reject_code(c.next_event().await).0, RejectCode::BadRequest);
    c.send_event(json!({"type": "post", "text": "x", "nonce": "n".repeat(65)}))
        .await;
    assert_eq!(reject_code(c.next_event().await).0, RejectCode::BadRequest);
    // Exactly at the limit passes.
    c.post(&"字".repeat(10)).await;
    assert!(matches!(c.next_event().await, ServerEvent::Ack { .. }));
}

#[tokio::test]
async fn posting_too_fast_is_rate_limited_with_retry_after() {
    let gw = TestGateway::with(|_| {}).await;
    let mut c = gw.join("rate").await;
    let limits = c.hello.limits.clone();
    assert_eq!(
        (
            limits.post_rate_count,
            limits.post_window_ms,
            limits.post_burst
        ),
        (5, 10_000, 3)
    );
    let mut acked = 0;
    let mut limited = None;
    for i in 0..5 {
        c.post(&format!("p{i}")).await;
        loop {
            match c.next_event().await {
                ServerEvent::Ack { .. } => {
                    acked += 1;
                    break;
                }
                ServerEvent::Reject {
                    code: RejectCode::RateLimited,
                    retry_after_ms,
                    ..
                } => {
                    limited = retry_after_ms;
                    break;
                }
                ServerEvent::Danmaku(_) => continue,
                other => panic!("unexpected {other:?}"),
            }
        }
    }
    assert_eq!(acked, 3, "the burst");
    let wait = limited.expect("rate_limited carries retry_after_ms");
    assert!(wait > 0 && wait <= 2_001, "{wait}");
    // Another connection has its own budget.
    let mut other = gw.join("rate").await;
    other.post("mine").await;
    assert!(matches!(other.next_event().await, ServerEvent::Ack { .. }));
}

#[tokio::test]
async fn connections_over_the_limit_get_503() {
    let gw = TestGateway::with(|s| s.max_connections = 2).await;
    let _a = gw.join("full").await;
    let b = gw.join("full").await;
    let (status, body) = refused_status(&gw.url("full")).await;
    assert_eq!(status, 503);
    assert!(body.contains("too many connections"));
    drop(b);
    crate::support::eventually("a slot frees up", || async {
        crate::support::connect_raw(&gw.url("full"), None)
            .await
            .ok()
            .map(|_| ())
    })
    .await;
}

#[tokio::test]
async fn garbage_of_every_kind_never_takes_the_server_down() {
    let gw = TestGateway::with(|s| s.bad_frame_limit = 1_000_000).await;
    let mut c = gw.join("fuzz").await;
    let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut errors = 0;
    for i in 0..300 {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let len = (seed % 200) as usize;
        let bytes: Vec<u8> = (0..len)
            .map(|j| (seed.rotate_left(j as u32) & 0xff) as u8)
            .collect();
        let msg = if i % 2 == 0 {
            Message::Binary(bytes.into())
        } else {
            Message::Text(String::from_utf8_lossy(&bytes).into_owned().into())
        };
        c.send_raw(msg).await;
        if let ServerEvent::Error { .. } = c.next_event().await {
            errors += 1;
        }
    }
    assert!(errors > 250, "garbage is reported as bad frames: {errors}");
    c.post("alive").await;
    assert!(matches!(c.next_event().await, ServerEvent::Ack { .. }));
    let (status, _) = crate::support::http_get(gw.addr, "/healthz").await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn the_server_pings_and_closes_only_silent_connections() {
    let gw = TestGateway::with(|s| {
        s.ping_interval_ms = 100;
        s.idle_timeout_ms = 400;
    })
    .await;
    let mut lively = gw.join("hb").await;
    let mut silent = gw.join("hb").await;

    // The lively client reads (so its WebSocket layer answers every ping)
    // for well past the idle timeout and sees the server's pings.
    let mut pings = 0;
    let until = tokio::time::Instant::now() + std::time::Duration::from_millis(1_200);
    while tokio::time::Instant::now() < until {
        if let Ok(Some(Ok(msg))) = tokio::time::timeout(
            std::time::Duration::from_millis(50),
            futures_util::StreamExt::next(&mut lively.ws),
        )
        .await
        {
            match msg {
                Message::Ping(_) => pings += 1,
                Message::Close(c) => panic!("a client that answers pings was closed: {c:?}"),
                _ => {}
            }
        }
    }
    assert!(pings >= 3, "server pings periodically: {pings}");
    lively.post("still here").await;
    assert!(matches!(lively.next_event().await, ServerEvent::Ack { .. }));

    // The silent client read nothing, so it answered no ping: it was closed.
    assert_eq!(
        silent.expect_close().await,
        (1000, "idle timeout".to_string())
    );
}
