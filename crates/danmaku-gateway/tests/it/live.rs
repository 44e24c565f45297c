//! The dashboard's live view, `GET /api/live`: fleet-wide viewers, comment
//! and reject rates from heartbeat counters, with one gateway and with two
//! on one Redis; the event stream; and the read token, also as `?token=`.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use danmaku_gateway::config::Secret;
use danmaku_gateway::{LiveSnapshot, Settings};
use danmaku_testkit::RedisServer;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::{
    eventually, http_get, http_request, until_ready, Client, TestGateway, PATIENCE,
};

/// One snapshot, `GET /api/live?once=1` plus `extra` query.
async fn snapshot(addr: SocketAddr, extra: &str) -> LiveSnapshot {
    let (status, body) = http_get(addr, &format!("/api/live?once=1{extra}")).await;
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

/// Opens `n` viewers of `room`.
async fn viewers(gw: &TestGateway, room: &str, n: usize) -> Vec<Client> {
    let mut out = Vec::new();
    for _ in 0..n {
        out.push(gw.join(room).await);
    }
    out
}

/// Posts `text` (numbered) in rounds from `poster` until `check` of a
/// snapshot from `addr` holds, failing the test after `PATIENCE`.
async fn while_posting(
    poster: &mut Client,
    text: &str,
    addr: SocketAddr,
    extra: &str,
    check: impl Fn(&LiveSnapshot) -> bool,
) -> LiveSnapshot {
    let deadline = Instant::now() + PATIENCE;
    let mut n = 0;
    loop {
        for _ in 0..5 {
            n += 1;
            let text = if text.is_empty() {
                String::new()
            } else {
                format!("{text} {n}")
            };
            poster.post(&text).await;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        let s = snapshot(addr, extra).await;
        if check(&s) {
            return s;
        }
        assert!(
            Instant::now() < deadline,
            "never seen while posting {text:?}: {s:?}"
        );
    }
}

fn online_of(s: &LiveSnapshot, room: &str) -> Option<u64> {
    s.rooms.iter().find(|r| r.room == room).map(|r| r.online)
}

#[tokio::test]
async fn the_snapshot_shows_viewers_comment_rates_and_rejects() {
    let gw = TestGateway::with(|_| {}).await;
    let mut busy = viewers(&gw, "live-busy", 3).await;
    let _quiet = viewers(&gw, "live-quiet", 1).await;
    let s = eventually("the viewers are counted", || async {
        let s = snapshot(gw.addr, "").await;
        (s.total_online == 4).then_some(s)
    })
    .await;
    assert_eq!(online_of(&s, "live-busy"), Some(3));
    assert_eq!(online_of(&s, "live-quiet"), Some(1));
    assert_eq!(s.rooms[0].room, "live-busy", "busiest first");
    assert_eq!(s.instances.len(), 1);
    let me = &s.instances[0];
    assert_eq!((me.connections, me.rooms), (4, 2));
    assert!(me.healthy);

    // Posting: the room's and the fleet's comment rates rise.
    let poster = &mut busy[0];
    let s = while_posting(poster, "hello", gw.addr, "&room=live-busy", |s| {
        let room = s.rooms.iter().find(|r| r.room == "live-busy");
        room.is_some_and(|r| r.comments_per_s > 0.0) && s.comments_per_s > 0.0
    })
    .await;
    assert!(s.posts_per_s > 0.0, "posts per second: {}", s.posts_per_s);
    let quiet = s.rooms.iter().find(|r| r.room == "live-quiet").unwrap();
    assert_eq!(quiet.comments_per_s, 0.0);
    let room_history = s.history.room.expect("the asked room's history");
    assert!(room_history.len() <= s.history.fleet.len());

    // Refused posts: counted per code.
    let s = while_posting(poster, "", gw.addr, "", |s| {
        s.rejects_per_s.contains_key("empty")
    })
    .await;
    assert!(s.rejects_per_s["empty"] > 0.0);
}

#[tokio::test]
async fn the_sampler_keeps_a_history_for_the_charts() {
    let gw = TestGateway::with(|_| {}).await;
    let _v = viewers(&gw, "live-hist", 2).await;
    let s = eventually("two points of history with the viewers", || async {
        let s = snapshot(gw.addr, "&room=live-hist").await;
        let room = s.history.room.as_deref().unwrap_or_default();
        (s.history.fleet.len() >= 2 && room.iter().any(|p| p.online == 2)).then_some(s)
    })
    .await;
    let times: Vec<u64> = s.history.fleet.iter().map(|p| p.t).collect();
    assert!(
        times.windows(2).all(|w| w[0] < w[1]),
        "oldest first: {times:?}"
    );
    assert_eq!(s.interval_ms, 2_000);
}

#[tokio::test]
async fn either_of_two_gateways_on_one_redis_shows_the_whole_fleet() {
    let redis = RedisServer::start().unwrap();
    let node = |id: &'static str| {
        let url = redis.url();
        move |s: &mut Settings| {
            s.redis_url = url;
            s.instance_id = id.into();
        }
    };
    let a = TestGateway::with(node("live-a")).await;
    let b = TestGateway::with(node("live-b")).await;
    until_ready(a.addr).await;
    until_ready(b.addr).await;
    let mut on_a = viewers(&a, "shared", 2).await;
    let _on_b = viewers(&b, "shared", 1).await;
    let _only_b = viewers(&b, "elsewhere", 2).await;
    for gw in [&a, &b] {
        let s = eventually("both instances and the sum", || async {
            let s = snapshot(gw.addr, "").await;
            (s.total_online == 5 && s.instances.len() == 2).then_some(s)
        })
        .await;
        let ids: Vec<&str> = s.instances.iter().map(|i| i.id.as_str()).collect();
        assert_eq!(ids, ["live-a", "live-b"]);
        assert_eq!(online_of(&s, "shared"), Some(3));
        assert_eq!(online_of(&s, "elsewhere"), Some(2));
        let conns: Vec<u64> = s.instances.iter().map(|i| i.connections).collect();
        assert_eq!(conns, [2, 3]);
    }

    // Comments posted on one are seen in the rate read from the other.
    let s = while_posting(&mut on_a[0], "x", b.addr, "", |s| {
        let shared = s.rooms.iter().find(|r| r.room == "shared");
        shared.is_some_and(|r| r.comments_per_s > 0.0)
    })
    .await;
    assert!(s.posts_per_s > 0.0);
}

/// Opens `path` as an event stream and counts `snapshot` events until
/// `want` have arrived or `within` has passed; returns the count and the
/// response head.
async fn stream_events(
    addr: SocketAddr,
    path: &str,
    want: usize,
    within: Duration,
) -> (usize, String) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nHost: test\r\nAccept: text/event-stream\r\n\r\n");
    s.write_all(request.as_bytes()).await.unwrap();
    let deadline = Instant::now() + within;
    let mut text = String::new();
    let mut buf = [0u8; 16 * 1024];
    let count = |t: &str| t.matches("event: snapshot").count();
    while count(&text) < want {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, s.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => text.push_str(&String::from_utf8_lossy(&buf[..n])),
            _ => break,
        }
    }
    let head = text.split("\r\n\r\n").next().unwrap_or_default().to_owned();
    (count(&text), head)
}

#[tokio::test]
async fn the_stream_sends_a_snapshot_every_interval() {
    let gw = TestGateway::with(|_| {}).await;
    let _v = viewers(&gw, "live-sse", 1).await;
    let (events, head) = stream_events(
        gw.addr,
        "/api/live?room=live-sse",
        2,
        Duration::from_secs(5),
    )
    .await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: text/event-stream"),
        "{head}"
    );
    assert!(events >= 2, "{events} snapshots within 5 s");
    // A stream ends at shutdown rather than holding it up.
    gw.stop().await.unwrap();
}

#[tokio::test]
async fn the_read_token_protects_the_live_view_also_as_a_query_parameter() {
    let gw = TestGateway::with(|s| s.api_read_token = Secret("reader".into())).await;
    let get = |path: &'static str, bearer: Option<&'static str>| async move {
        let auth = bearer
            .map(|t| format!("Authorization: Bearer {t}\r\n"))
            .unwrap_or_default();
        let request =
            format!("GET {path} HTTP/1.1\r\nHost: test\r\n{auth}Connection: close\r\n\r\n");
        http_request(gw.addr, &request).await
    };
    for (path, bearer, want) in [
        ("/api/live?once=1", None, 401),
        ("/api/live?once=1&token=wrong", None, 401),
        ("/api/live?once=1", Some("wrong"), 401),
        ("/api/live?once=1&token=reader", Some("reader"), 400),
        ("/api/live?once=1&token=reader", None, 200),
        ("/api/live?once=1", Some("reader"), 200),
        ("/api/live", None, 401),
    ] {
        let (status, body) = get(path, bearer).await;
        assert_eq!(status, want, "{path} with {bearer:?}: {body}");
        if status == 401 {
            let error: serde_json::Value = serde_json::from_str(&body).unwrap();
            assert!(error["message"].is_string(), "{body}");
        }
    }
    let (events, _) =
        stream_events(gw.addr, "/api/live?token=reader", 1, Duration::from_secs(5)).await;
    assert_eq!(events, 1);
}

#[tokio::test]
async fn bad_queries_are_refused_and_the_page_is_served() {
    let gw = TestGateway::with(|_| {}).await;
    for path in ["/api/live?once=1&room=no.dots", "/api/live?once=1&q=%ff"] {
        assert_eq!(http_get(gw.addr, path).await.0, 400, "{path}");
    }
    let (status, page) = http_get(gw.addr, "/dashboard").await;
    assert_eq!(status, 200);
    assert!(page.contains("/static/dashboard.js"), "{page}");
    for file in ["dashboard.js", "chart.js", "dashboard.css"] {
        let (status, _) = http_get(gw.addr, &format!("/static/{file}")).await;
        assert_eq!(status, 200, "{file}");
    }
}
