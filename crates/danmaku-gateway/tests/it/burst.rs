//! A burst of posts within every default limit: each acked comment reaches
//! every viewer that keeps reading. A room task that falls behind the bus
//! must not skip what the bus already acknowledged.

use std::collections::HashSet;
use std::sync::Arc;

use danmaku_proto::ServerEvent;
use futures_util::{SinkExt, StreamExt};
use tokio::sync::Barrier;
use tokio_tungstenite::tungstenite::Message;

use crate::support::{Client, TestGateway, PATIENCE};

/// Viewers that read everything and are checked.
const READERS: usize = 40;
/// Posters, each sending `POSTS_EACH` at once (the default burst).
const POSTERS: usize = 1000;
const POSTS_EACH: usize = 3;

/// One poster: connects, waits for everyone, sends its burst, and returns
/// the ids of its acks. It reads only what it needs, cheaply: the comments
/// it is also sent are skipped without decoding.
async fn poster(url: String, start: Arc<Barrier>) -> Vec<String> {
    let (mut ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    start.wait().await;
    for i in 0..POSTS_EACH {
        let post = serde_json::json!({"type": "post", "text": format!("burst {i}"), "nonce": i.to_string()});
        ws.send(Message::Text(post.to_string().into()))
            .await
            .unwrap();
    }
    let mut acks = Vec::new();
    while acks.len() < POSTS_EACH {
        let msg = tokio::time::timeout(PATIENCE, ws.next())
            .await
            .expect("an answer in time")
            .expect("open")
            .unwrap();
        let Message::Text(text) = msg else { continue };
        if !text.starts_with(r#"{"type":"ack""#) && !text.starts_with(r#"{"type":"reject""#) {
            continue;
        }
        match danmaku_proto::decode_server(danmaku_proto::Format::Json, text.as_bytes()).unwrap() {
            ServerEvent::Ack { id, .. } => acks.push(id),
            other => panic!("a post within the limits was refused: {other:?}"),
        }
    }
    acks
}

/// On one thread, as on a saturated gateway, the room task waits its turn
/// behind every connection task that is publishing: on the bus's old
/// fixed 256-slot buffer it skipped 2,741 of these 3,000 acked comments.
#[tokio::test]
async fn every_acked_comment_of_a_burst_reaches_every_reading_viewer() {
    // Default post limits. The test's thousand sockets all come from one
    // address, so no per-address cap. And the readers, on the test's one
    // thread, cannot keep up in real time: give their queues room, so that
    // what is measured is the path from the bus to the room, not them.
    let gw = TestGateway::with(|s| {
        s.max_connections_per_ip = 0;
        s.outbox_frames = 100_000;
        s.outbox_bytes = 1 << 30;
    })
    .await;
    let mut readers = Vec::new();
    for _ in 0..READERS {
        readers.push(gw.join("burst").await);
    }
    let start = Arc::new(Barrier::new(POSTERS + 1));
    let posters: Vec<_> = (0..POSTERS)
        .map(|_| tokio::spawn(poster(gw.url("burst"), start.clone())))
        .collect();
    start.wait().await;

    let readers: Vec<_> = readers
        .into_iter()
        .map(|mut c: Client| {
            tokio::spawn(async move {
                let mut seen = HashSet::new();
                while seen.len() < POSTERS * POSTS_EACH {
                    match tokio::time::timeout(PATIENCE, c.next_event()).await {
                        Ok(ServerEvent::Danmaku(d)) => {
                            seen.insert(d.id);
                        }
                        Ok(_) => {}
                        Err(_) => break,
                    }
                }
                seen
            })
        })
        .collect();
    let mut acked = HashSet::new();
    for p in posters {
        acked.extend(p.await.unwrap());
    }
    assert_eq!(acked.len(), POSTERS * POSTS_EACH, "every post acked");
    for r in readers {
        let seen = r.await.unwrap();
        let missing = acked.difference(&seen).count();
        assert_eq!(
            missing, 0,
            "{missing} acked comments never reached a reader"
        );
    }
    let stats = gw.get_json("/api/stats").await;
    assert_eq!(stats["bus_lagged"], 0, "{stats}");
}
