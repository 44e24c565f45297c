//! Protocol conformance: hello first, post → ack → delivery to every viewer
//! of the room and no other, batches when busy, both subprotocols, nick,
//! online counts, ping/pong, recent history.

use danmaku_proto::{Format, Nonce, ServerEvent, SUBPROTOCOL_JSON, SUBPROTOCOL_MSGPACK};
use serde_json::json;

use crate::support::{Client, TestGateway};

fn lifted(s: &mut danmaku_gateway::Settings) {
    s.post_rate_count = 1_000_000;
    s.post_burst = 1_000_000;
}

#[tokio::test]
async fn a_post_is_acked_then_delivered_once_to_every_viewer_of_the_room_only() {
    let gw = TestGateway::with(|_| {}).await;
    let mut poster = gw.join("lobby").await;
    let mut json_viewer = gw.join("lobby").await;
    let mut mp_viewer = Client::connect(&gw.url("lobby"), Some(SUBPROTOCOL_MSGPACK)).await;
    let mut elsewhere = gw.join("other").await;
    assert_eq!(poster.hello.room, "lobby");
    assert!(poster.hello.user.starts_with("guest-"));
    assert_eq!(mp_viewer.hello.online, 3);
    assert_eq!(elsewhere.hello.online, 1);

    let poster_user = poster.hello.user.clone();
    let nonce = poster.post("  前方高能 hello  ").await;
    let ServerEvent::Ack { nonce: acked, id } = poster.next_event().await else {
        panic!("ack first")
    };
    assert_eq!(acked.as_ref().map(Nonce::as_str), Some(nonce.as_str()));

    for viewer in [&mut poster, &mut json_viewer, &mut mp_viewer] {
        match viewer.next_event().await {
            ServerEvent::Danmaku(d) => {
                assert_eq!(d.id, id);
                assert_eq!(d.room, "lobby");
                assert_eq!(d.text, "前方高能 hello", "trimmed");
                assert_eq!(d.color, "#ffffff");
                assert_eq!(d.user, poster_user);
                assert!(d.ts > 1_600_000_000_000);
            }
            other => panic!("expected the danmaku, got {other:?}"),
        }
    }

    // The other room got nothing: its next event is its own post's ack.
    elsewhere.post("mine").await;
    assert!(matches!(
        elsewhere.next_event().await,
        ServerEvent::Ack { .. }
    ));
    let ServerEvent::Danmaku(d) = elsewhere.next_event().await else {
        panic!("own danmaku")
    };
    assert_eq!((d.room.as_str(), d.text.as_str()), ("other", "mine"));
    // And the lobby did not see it: the next lobby event is the next lobby post.
    json_viewer.post("second").await;
    assert!(matches!(
        json_viewer.next_event().await,
        ServerEvent::Ack { .. }
    ));
    let ServerEvent::Danmaku(d) = json_viewer.next_event().await else {
        panic!()
    };
    assert_eq!(d.text, "second");
    let ServerEvent::Danmaku(d) = poster.next_event().await else {
        panic!()
    };
    assert_eq!(d.text, "second");
}

#[tokio::test]
async fn subprotocols_are_negotiated_and_echoed() {
    let gw = TestGateway::with(|_| {}).await;
    let none = Client::connect(&gw.url("r"), None).await;
    assert_eq!(
        (none.protocol.as_deref(), none.format),
        (None, Format::Json)
    );
    let json = Client::connect(&gw.url("r"), Some(SUBPROTOCOL_JSON)).await;
    assert_eq!(json.protocol.as_deref(), Some(SUBPROTOCOL_JSON));
    let mp = Client::connect(&gw.url("r"), Some(SUBPROTOCOL_MSGPACK)).await;
    assert_eq!(
        (mp.protocol.as_deref(), mp.format),
        (Some(SUBPROTOCOL_MSGPACK), Format::MsgPack)
    );
    // The client's first supported preference wins; unknown ones are skipped.
    let pref = Client::connect(
        &gw.url("r"),
        Some("chat.v9, danmaku.v1.msgpack, danmaku.v1.json"),
    )
    .await;
    assert_eq!(pref.protocol.as_deref(), Some(SUBPROTOCOL_MSGPACK));
}

#[tokio::test]
async fn msgpack_clients_post_and_receive_binary_frames() {
    let gw = TestGateway::with(|_| {}).await;
    let mut a = Client::connect(&gw.url("mp"), Some(SUBPROTOCOL_MSGPACK)).await;
    let mut b = gw.join("mp").await;
    a.send_event(
        json!({"type": "post", "text": "二进制", "color": "#FF0000", "mode": "top", "nonce": "x"}),
    )
    .await;
    let ServerEvent::Ack { id, .. } = a.next_event().await else {
        panic!("ack")
    };
    for c in [&mut a, &mut b] {
        let ServerEvent::Danmaku(d) = c.next_event().await else {
            panic!("danmaku")
        };
        assert_eq!(
            (d.id.as_str(), d.text.as_str(), d.color.as_str()),
            (id.as_str(), "二进制", "#ff0000")
        );
        assert_eq!(d.mode, danmaku_proto::Mode::Top);
    }
}

#[tokio::test]
async fn a_busy_room_batches_and_keeps_order() {
    let gw = TestGateway::with(|s| {
        lifted(s);
        s.flush_window_ms = 300;
    })
    .await;
    let mut poster = gw.join("busy").await;
    let mut viewer = gw.join("busy").await;
    let mut mp_viewer = Client::connect(&gw.url("busy"), Some(SUBPROTOCOL_MSGPACK)).await;
    const N: usize = 40;
    for i in 0..N {
        poster.post(&format!("c{i}")).await;
    }
    for v in [&mut viewer, &mut mp_viewer] {
        for i in 0..N {
            let ServerEvent::Danmaku(d) = v.next_event().await else {
                panic!("danmaku")
            };
            assert_eq!(d.text, format!("c{i}"), "in order");
        }
        assert!(v.batches >= 1, "a busy room sends batch frames");
        assert!(v.batched_events >= 2);
        assert!(
            v.batched_events < N,
            "the first comment of a quiet room goes out alone"
        );
    }
}

#[tokio::test]
async fn nick_is_shown_as_name_and_bad_nicks_are_refused() {
    let gw = TestGateway::with(|_| {}).await;
    let mut c = Client::connect(&format!("{}?nick=%E5%B0%8F%E6%98%8E", gw.url("n")), None).await;
    assert_eq!(c.hello.name.as_deref(), Some("小明"));
    c.post("hi").await;
    c.next_event().await;
    let ServerEvent::Danmaku(d) = c.next_event().await else {
        panic!()
    };
    assert_eq!(d.name.as_deref(), Some("小明"));
    let long = "x".repeat(25);
    for bad in [long.as_str(), "%20%20", "a%07b"] {
        let (status, _) =
            crate::support::refused_status(&format!("{}?nick={bad}", gw.url("n"))).await;
        assert_eq!(status, 400, "nick {bad}");
    }
}

#[tokio::test]
async fn online_counts_come_in_hello_and_periodically() {
    let gw = TestGateway::with(|s| s.online_interval_ms = 100).await;
    let mut a = gw.join("o").await;
    assert_eq!(a.hello.online, 1);
    let b = gw.join("o").await;
    assert_eq!(b.hello.online, 2);
    let count = loop {
        if let ServerEvent::Online { room, count } = a.next_event_with(true).await {
            assert_eq!(room, "o");
            break count;
        }
    };
    assert_eq!(count, 2);
    drop(b);
    loop {
        if let ServerEvent::Online { count: 1, .. } = a.next_event_with(true).await {
            break;
        }
    }
    let rooms = gw.get_json("/api/rooms").await;
    assert_eq!(
        rooms,
        json!({"rooms": [{"room": "o", "online": 1}], "total_online": 1, "total_rooms": 1})
    );
}

#[tokio::test]
async fn api_rooms_is_sorted_by_online_count() {
    let gw = TestGateway::with(|_| {}).await;
    let _a: Vec<Client> = futures_util::future::join_all((0..3).map(|_| gw.join("big"))).await;
    let _b: Vec<Client> = futures_util::future::join_all((0..2).map(|_| gw.join("mid"))).await;
    let _c = gw.join("small").await;
    let rooms = gw.get_json("/api/rooms").await;
    assert_eq!(
        rooms,
        json!({"rooms": [
            {"room": "big", "online": 3}, {"room": "mid", "online": 2}, {"room": "small", "online": 1}
        ], "total_online": 6, "total_rooms": 3})
    );
    let (status, body) = crate::support::http_get(gw.addr, "/healthz").await;
    assert_eq!((status, body.as_str()), (200, "ok\n"));
    let (status, _) = crate::support::http_get(gw.addr, "/readyz").await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn ping_gets_pong_with_the_nonce() {
    let gw = TestGateway::with(|_| {}).await;
    let mut c = gw.join("p").await;
    c.send_event(json!({"type": "ping", "nonce": "abc"})).await;
    assert_eq!(
        c.next_event().await,
        ServerEvent::Pong {
            nonce: Nonce::parse("abc").ok()
        }
    );
    c.send_event(json!({"type": "ping"})).await;
    assert_eq!(c.next_event().await, ServerEvent::Pong { nonce: None });
}

#[tokio::test]
async fn hello_carries_recent_comments_oldest_first() {
    let gw = TestGateway::with(|s| {
        lifted(s);
        s.history_len = 3;
    })
    .await;
    let mut poster = gw.join("h").await;
    for i in 0..5 {
        poster.post(&format!("m{i}")).await;
        while !matches!(poster.next_event().await, ServerEvent::Ack { .. }) {}
    }
    let late = gw.join("h").await;
    let texts: Vec<_> = late.hello.recent.iter().map(|d| d.text.as_str()).collect();
    assert_eq!(texts, ["m2", "m3", "m4"]);
    assert!(gw.join("empty").await.hello.recent.is_empty());
}

#[tokio::test]
async fn a_room_is_removed_after_its_last_viewer_leaves() {
    let gw = TestGateway::with(|_| {}).await;
    let a = gw.join("gone").await;
    let b = gw.join("gone").await;
    drop(a);
    drop(b);
    crate::support::eventually("room removed", || async {
        let rooms = gw.get_json("/api/rooms").await;
        (rooms["total_online"] == 0).then_some(())
    })
    .await;
    // And it comes back fresh on the next join.
    let c = gw.join("gone").await;
    assert_eq!(c.hello.online, 1);
}
