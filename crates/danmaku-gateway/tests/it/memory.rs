//! What a viewer that stops reading can make the server hold, with the
//! shipped defaults for every memory bound: its queue stays within
//! `outbox_bytes`, what it has buffered for its socket within
//! `max_write_buffer_bytes` (one larger frame excepted, as documented), and
//! it is closed as too slow within `slow_close_ms` of the flood, while a
//! viewer that reads is kept.

use std::time::Duration;

use danmaku_gateway::{Settings, StatsResponse};
use danmaku_proto::ServerEvent;
use futures_util::StreamExt;
use tokio::net::TcpSocket;
use tokio_tungstenite::tungstenite::Message;

use crate::support::{TestGateway, PATIENCE};

/// Viewers that read their `hello`, then nothing.
const STALLED: usize = 40;
/// Comments posted; each reaches every viewer, about 200 KB in all: far
/// more than a stalled viewer's buffers take.
const POSTS: usize = 800;

async fn stats(gw: &TestGateway) -> StatsResponse {
    serde_json::from_value(gw.get_json("/api/stats").await).unwrap()
}

#[tokio::test]
async fn non_reading_viewers_hold_little_and_are_closed_in_time() {
    let defaults = Settings::default();
    // Only posting is unlimited; every memory and timing bound is the default.
    let gw = TestGateway::with(|s| {
        s.post_rate_count = 1_000_000;
        s.post_burst = 1_000_000;
    })
    .await;
    assert_eq!(defaults.outbox_bytes, 32 * 1024, "the documented default");
    assert_eq!(defaults.max_write_buffer_bytes, 16 * 1024);
    assert_eq!(defaults.tcp_send_buffer_bytes, 8 * 1024);

    // The healthy viewer reads everything, and notes the largest frame.
    let (healthy, _) = tokio_tungstenite::connect_async(gw.url("busy"))
        .await
        .unwrap();
    let reader = tokio::spawn(async move {
        let mut healthy = healthy;
        let (mut largest, mut seen) = (0usize, 0usize);
        loop {
            let msg = tokio::time::timeout(PATIENCE, healthy.next())
                .await
                .expect("the healthy viewer keeps receiving")
                .expect("the healthy viewer is not closed")
                .unwrap();
            let Message::Text(text) = msg else { continue };
            largest = largest.max(text.as_str().len());
            let event = danmaku_proto::decode_server(danmaku_proto::Format::Json, text.as_bytes());
            let items = match event.unwrap() {
                ServerEvent::Batch { items } => items,
                other => vec![other],
            };
            for item in items {
                if let ServerEvent::Danmaku(d) = item {
                    seen += 1;
                    if d.text == "last" {
                        return (largest, seen, healthy);
                    }
                }
            }
        }
    });

    // Stalled viewers: a small receive buffer, so what the server sends
    // piles up on the server's side, as with a real client that stopped.
    let mut stalled = Vec::new();
    for _ in 0..STALLED {
        let socket = TcpSocket::new_v4().unwrap();
        socket.set_recv_buffer_size(4096).unwrap();
        let stream = socket.connect(gw.addr).await.unwrap();
        let (mut ws, _) = tokio_tungstenite::client_async(gw.url("busy"), stream)
            .await
            .unwrap();
        assert!(matches!(ws.next().await, Some(Ok(_))), "hello");
        stalled.push(ws);
    }

    let mut poster = gw.join("busy").await;
    let text = "弹".repeat(60);
    for i in 0..POSTS {
        let nonce = poster.post(&format!("{i:04}{text}")).await;
        loop {
            match poster.next_event().await {
                ServerEvent::Ack { nonce: Some(n), .. } if n.as_str() == nonce => break,
                ServerEvent::Danmaku(_) => continue,
                other => panic!("unexpected {other:?}"),
            }
        }
        // Paced, so batches stay well under the bounds and the bounds, not
        // the one-frame exception, are what is measured.
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    poster.post("last").await;
    let flood_over = tokio::time::Instant::now();
    let (largest, seen, _healthy) = reader.await.unwrap();
    assert!(seen > POSTS / 2, "the healthy viewer kept up: {seen}");

    // Every stalled viewer is closed as too slow, within the slow-close time
    // (plus scheduling slack) of the flood's end; the readers stay.
    let limit = Duration::from_millis(defaults.slow_close_ms) + Duration::from_secs(5);
    let s = loop {
        let s = stats(&gw).await;
        if s.slow_evictions as usize >= STALLED && s.connections == 2 {
            break s;
        }
        assert!(
            flood_over.elapsed() < limit,
            "stalled viewers not closed within {limit:?}: {s:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(
        s.slow_evictions as usize, STALLED,
        "only the stalled: {s:?}"
    );

    // The bounds held, for every connection.
    assert_eq!(s.outbox_bytes, defaults.outbox_bytes as u64);
    assert_eq!(
        s.max_write_buffer_bytes,
        defaults.max_write_buffer_bytes as u64
    );
    assert!(
        (largest as u64) < s.outbox_bytes / 2,
        "frames are small beside the bounds: {largest}"
    );
    assert!(s.max_queued_bytes > 0, "{s:?}");
    assert!(
        s.max_queued_bytes <= s.outbox_bytes,
        "a queue held {} bytes; bound {}",
        s.max_queued_bytes,
        s.outbox_bytes
    );
    assert!(
        s.max_write_buffered_bytes <= s.max_write_buffer_bytes,
        "{} bytes buffered for a socket; bound {}",
        s.max_write_buffered_bytes,
        s.max_write_buffer_bytes
    );
    // The frame count was never what bound them.
    assert!(s.max_queued_frames < s.outbox_frames, "{s:?}");
    assert!(s.frames_dropped > 0, "{s:?}");
    drop(stalled);
}
