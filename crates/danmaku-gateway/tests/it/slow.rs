//! Slow consumers: a client that stops reading does not hold up the room,
//! its queue on the server stays bounded, and it is closed after the
//! configured time.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use danmaku_proto::ServerEvent;
use futures_util::StreamExt;
use tokio::net::TcpSocket;

use crate::support::{eventually, Client, TestGateway};

const OUTBOX: usize = 16;

#[tokio::test]
async fn a_stalled_reader_is_dropped_from_without_slowing_the_room_then_closed() {
    let gw = TestGateway::with(|s| {
        s.post_rate_count = 1_000_000;
        s.post_burst = 1_000_000;
        s.outbox_frames = OUTBOX;
        s.flush_window_ms = 5;
        s.slow_close_ms = 1_000;
        s.tcp_send_buffer_bytes = 16 * 1024;
    })
    .await;

    // The stalled client: a tiny receive buffer, reads its hello, then nothing.
    let socket = TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let stream = socket.connect(gw.addr).await.unwrap();
    let (mut stalled, _) = tokio_tungstenite::client_async(gw.url("slow"), stream)
        .await
        .unwrap();
    assert!(matches!(stalled.next().await, Some(Ok(_))), "hello");

    let mut poster = gw.join("slow").await;
    let viewer = gw.join("slow").await;

    // The healthy viewer reads everything, concurrently.
    const N: usize = 2_000;
    let reader = tokio::spawn(async move {
        let mut viewer = viewer;
        for i in 0..N {
            match viewer.next_event().await {
                ServerEvent::Danmaku(d) => {
                    assert_eq!(d.text, format!("{i:0>90}"), "in order, none lost")
                }
                other => panic!("unexpected {other:?}"),
            }
        }
        viewer
    });

    // Watch the server's queues while the flood runs.
    let done = Arc::new(AtomicBool::new(false));
    let worst = Arc::new(AtomicU64::new(0));
    let watcher = {
        let (done, worst, addr) = (done.clone(), worst.clone(), gw.addr);
        tokio::spawn(async move {
            while !done.load(Ordering::Relaxed) {
                let (_, body) = crate::support::http_get(addr, "/api/stats").await;
                let stats: serde_json::Value = serde_json::from_str(&body).unwrap();
                worst.fetch_max(
                    stats["max_queued_frames"].as_u64().unwrap(),
                    Ordering::Relaxed,
                );
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
        })
    };

    for i in 0..N {
        let nonce = poster.post(&format!("{i:0>90}")).await;
        loop {
            match poster.next_event().await {
                ServerEvent::Ack { nonce: Some(n), .. } if n.as_str() == nonce => break,
                ServerEvent::Danmaku(_) => continue,
                other => panic!("unexpected {other:?}"),
            }
        }
    }
    let _viewer = reader
        .await
        .expect("the healthy viewer got every comment in order");

    let stats = eventually("the stalled client is evicted", || async {
        let s = gw.get_json("/api/stats").await;
        (s["slow_evictions"] == 1 && s["connections"] == 2).then_some(s)
    })
    .await;
    done.store(true, Ordering::Relaxed);
    watcher.await.unwrap();
    assert!(stats["frames_dropped"].as_u64().unwrap() > 0, "{stats}");
    let worst = worst.load(Ordering::Relaxed) as usize;
    assert!(
        worst <= OUTBOX,
        "a queue held {worst} frames, over the bound {OUTBOX}"
    );

    // What the stalled client finally reads ends in 1008 "too slow" or, when
    // the close frame itself could not be written in time, in the end of the
    // stream; it never goes on forever.
    let ending = tokio::time::timeout(crate::support::PATIENCE, async {
        while let Some(Ok(msg)) = stalled.next().await {
            if let tokio_tungstenite::tungstenite::Message::Close(frame) = msg {
                return frame.map(|f| u16::from(f.code));
            }
        }
        None
    })
    .await
    .expect("the stalled connection ends");
    assert!(matches!(ending, None | Some(1008)), "{ending:?}");
}

#[tokio::test]
async fn a_reader_that_keeps_up_is_never_closed() {
    let gw = TestGateway::with(|s| {
        s.post_rate_count = 1_000_000;
        s.post_burst = 1_000_000;
        s.slow_close_ms = 200;
    })
    .await;
    let mut poster: Client = gw.join("ok").await;
    for i in 0..200 {
        poster.post(&format!("m{i}")).await;
    }
    let mut seen = 0;
    while seen < 200 {
        if let ServerEvent::Danmaku(_) = poster.next_event().await {
            seen += 1;
        }
    }
    let s = gw.get_json("/api/stats").await;
    assert_eq!(s["slow_evictions"], 0);
    assert_eq!(s["frames_dropped"], 0);
}
