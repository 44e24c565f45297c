//! Moderation end to end: every reject code of the pipeline over a real
//! socket in both encodings, the admin HTTP API and the WebSocket
//! `moderate` command with their refusals (and state unchanged after
//! them), shadow mutes, recalls, blocked-word evasions, and the rules
//! holding across instances on a real Redis and across restarts, with
//! Redis and with the embedded bus's `data_dir`.

use std::net::SocketAddr;
use std::time::Duration;

use danmaku_gateway::auth::{now_secs, sign, Claims};
use danmaku_gateway::config::{Secret, Secrets};
use danmaku_gateway::Settings;
use danmaku_proto::{Danmaku, ErrorCode, RejectCode, Role, ServerEvent, SUBPROTOCOL_MSGPACK};
use danmaku_testkit::RedisServer;
use serde_json::{json, Value};

use crate::support::{http_request, until_ready, Client, TestGateway, PATIENCE};

const SECRET: &str = "moderation-secret";
const ADMIN: &str = "admin-token-for-tests";

/// A token for `sub` with `role`, for `rooms` (all when `None`), valid
/// for `ttl` seconds.
fn token(sub: &str, role: Role, rooms: Option<&[&str]>, ttl: i64) -> String {
    let claims = Claims {
        sub: sub.into(),
        name: sub.into(),
        role,
        exp: (now_secs() as i64 + ttl) as u64,
        rooms: rooms.map(|r| r.iter().map(|s| s.to_string()).collect()),
    };
    sign(SECRET, &claims)
}

fn viewer(sub: &str) -> String {
    token(sub, Role::Viewer, None, 600)
}

/// Open mode with a secret (so tests sign users in) and an admin token;
/// no practical per-user budget (tests that check it set their own).
fn moderated(s: &mut Settings) {
    s.auth_secret = Secrets(vec![SECRET.into()]);
    s.admin_token = Secret(ADMIN.into());
    s.post_rate_count = 1_000_000;
    s.post_burst = 1_000_000;
}

/// Calls the API: status and JSON body (`Null` when empty or not JSON).
async fn api(
    addr: SocketAddr,
    method: &str,
    path: &str,
    bearer: Option<&str>,
    body: Option<Value>,
) -> (u16, Value) {
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let auth = bearer
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let (status, text) = http_request(addr, &request).await;
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

/// `api` as the admin, expecting 200.
async fn admin(addr: SocketAddr, method: &str, path: &str, body: Option<Value>) -> Value {
    let (status, v) = api(addr, method, path, Some(ADMIN), body).await;
    assert_eq!(status, 200, "{method} {path}: {v}");
    v
}

/// Joins `room` as `sub` (a guest when `None`), in JSON or MessagePack.
async fn join(addr: SocketAddr, room: &str, sub: Option<&str>, msgpack: bool) -> Client {
    join_as(addr, room, sub.map(viewer).as_deref(), msgpack).await
}

async fn join_as(addr: SocketAddr, room: &str, token: Option<&str>, msgpack: bool) -> Client {
    let mut url = format!("ws://{addr}/ws/{room}");
    if let Some(t) = token {
        url.push_str(&format!("?token={t}"));
    }
    Client::connect(&url, msgpack.then_some(SUBPROTOCOL_MSGPACK)).await
}

/// What a post came to.
#[derive(Debug, PartialEq, Eq)]
enum Answer {
    Ack(String),
    Reject(RejectCode, Option<u64>),
}

/// Posts `text` and reads until its answer; comments read meanwhile are
/// returned too.
async fn post(c: &mut Client, text: &str) -> (Answer, Vec<Danmaku>) {
    c.post(text).await;
    let mut seen = Vec::new();
    loop {
        match c.next_event().await {
            ServerEvent::Ack { id, .. } => return (Answer::Ack(id), seen),
            ServerEvent::Reject {
                code,
                retry_after_ms,
                ..
            } => return (Answer::Reject(code, retry_after_ms), seen),
            ServerEvent::Danmaku(d) => seen.push(d),
            _ => {}
        }
    }
}

async fn code(c: &mut Client, text: &str) -> RejectCode {
    match post(c, text).await.0 {
        Answer::Reject(code, _) => code,
        other => panic!("{text:?} should be refused, got {other:?}"),
    }
}

async fn acked(c: &mut Client, text: &str) -> String {
    match post(c, text).await.0 {
        Answer::Ack(id) => id,
        other => panic!("{text:?} should be accepted, got {other:?}"),
    }
}

/// Reads until a comment with `text` arrives, and returns it.
async fn until_comment(c: &mut Client, text: &str) -> Danmaku {
    loop {
        if let ServerEvent::Danmaku(d) = c.next_event().await {
            if d.text == text {
                return d;
            }
        }
    }
}

/// Waits until `c`'s next post is answered `want` (checked every 20 ms,
/// with `c`'s posts in between), for at most `within`.
async fn until_answer(c: &mut Client, text: &str, want: Option<RejectCode>, within: Duration) {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let got = match post(c, text).await.0 {
            Answer::Ack(_) => None,
            Answer::Reject(code, _) => Some(code),
        };
        if got == want {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{text:?}: still {got:?}, wanted {want:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A fresh directory under the system's temporary one.
fn temp_dir(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "danmaku-it-{name}-{}-{}",
        std::process::id(),
        now_secs()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

#[tokio::test]
async fn every_pipeline_reject_code_reaches_the_poster_in_both_encodings() {
    let gw = TestGateway::with(|s| {
        moderated(s);
        s.duplicate_window_ms = 30_000;
        s.post_rate_count = 2;
        s.post_burst = 2;
        s.post_window_ms = 60_000;
    })
    .await;
    let a = gw.addr;
    admin(
        a,
        "POST",
        "/api/blocklist",
        Some(json!({"word": "forbidden"})),
    )
    .await;
    for msgpack in [false, true] {
        let tag = if msgpack { "mp" } else { "js" };
        let room = |name: &str| format!("{name}-{tag}");

        // muted, with the time left.
        let mut m = join(a, &room("mute"), Some(&format!("troll-{tag}")), msgpack).await;
        let path = format!("/api/rooms/{}/mutes", room("mute"));
        admin(
            a,
            "POST",
            &path,
            Some(json!({"user": format!("troll-{tag}"), "seconds": 60})),
        )
        .await;
        match post(&mut m, "hello").await.0 {
            Answer::Reject(RejectCode::Muted, Some(ms)) => assert!((55_000..=60_000).contains(&ms)),
            other => panic!("expected muted with retry_after_ms, got {other:?}"),
        }

        // room_locked for a viewer; a moderator still posts.
        let mut v = join(a, &room("locked"), Some(&format!("v-{tag}")), msgpack).await;
        let path = format!("/api/rooms/{}/settings", room("locked"));
        admin(a, "PUT", &path, Some(json!({"locked": true}))).await;
        assert_eq!(code(&mut v, "hi").await, RejectCode::RoomLocked);
        let modtoken = token(&format!("mod-{tag}"), Role::Moderator, None, 600);
        let mut moderator = join_as(a, &room("locked"), Some(&modtoken), msgpack).await;
        acked(&mut moderator, "moderators may").await;
        // Moderators write longer comments, and are told so.
        assert_eq!(moderator.hello.limits.max_text_chars, 300);
        assert_eq!(v.hello.limits.max_text_chars, 100);
        acked(&mut moderator, &"長".repeat(150)).await;

        // slow_mode, with the wait.
        let mut s = join(a, &room("slow"), Some(&format!("s-{tag}")), msgpack).await;
        let path = format!("/api/rooms/{}/settings", room("slow"));
        admin(a, "PUT", &path, Some(json!({"slow_mode_secs": 30}))).await;
        acked(&mut s, "first").await;
        match post(&mut s, "second").await.0 {
            Answer::Reject(RejectCode::SlowMode, Some(ms)) => {
                assert!((25_000..=30_000).contains(&ms))
            }
            other => panic!("expected slow_mode, got {other:?}"),
        }

        // duplicate.
        let mut d = join(a, &room("dup"), Some(&format!("d-{tag}")), msgpack).await;
        acked(&mut d, "same text").await;
        assert_eq!(code(&mut d, "  SAME   text ").await, RejectCode::Duplicate);

        // rate_limited, with the wait.
        let mut r = join(a, &room("rate"), Some(&format!("r-{tag}")), msgpack).await;
        acked(&mut r, "one").await;
        acked(&mut r, "two").await;
        match post(&mut r, "three").await.0 {
            Answer::Reject(RejectCode::RateLimited, Some(ms)) => assert!(ms > 0),
            other => panic!("expected rate_limited, got {other:?}"),
        }

        // blocked.
        let mut b = join(a, &room("words"), Some(&format!("b-{tag}")), msgpack).await;
        assert_eq!(code(&mut b, "this is forbidden").await, RejectCode::Blocked);
    }
    // Each refusal was counted by code, and each action by kind.
    let (_, metrics) = crate::support::http_get(a, "/metrics").await;
    for (line, at_least) in [
        ("danmaku_posts_rejected_total{code=\"muted\"}", 2),
        ("danmaku_posts_rejected_total{code=\"room_locked\"}", 2),
        ("danmaku_posts_rejected_total{code=\"slow_mode\"}", 2),
        ("danmaku_posts_rejected_total{code=\"duplicate\"}", 2),
        ("danmaku_posts_rejected_total{code=\"blocked\"}", 2),
        ("danmaku_moderation_actions_total{action=\"mute\"}", 2),
        (
            "danmaku_moderation_actions_total{action=\"room_settings\"}",
            4,
        ),
        ("danmaku_moderation_actions_total{action=\"block_word\"}", 1),
    ] {
        let value: u64 = metrics
            .lines()
            .find_map(|l| l.strip_prefix(line))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("{line} in {metrics}"));
        assert!(value >= at_least, "{line} = {value}");
    }
}

#[tokio::test]
async fn guests_who_reconnect_share_their_address_budget() {
    let gw = TestGateway::with(|s| {
        s.ip_rate_count = 3;
        s.ip_burst = 3;
        s.ip_window_ms = 60_000;
    })
    .await;
    // Each guest connection is a new user with a fresh user budget; the
    // address is what they share.
    for i in 0..3 {
        let mut c = join(gw.addr, "flood", None, false).await;
        acked(&mut c, &format!("post {i}")).await;
    }
    let mut c = join(gw.addr, "flood", None, false).await;
    assert_eq!(code(&mut c, "one more").await, RejectCode::RateLimited);
}

#[tokio::test]
async fn shadow_muted_posters_see_their_own_comment_and_nobody_else_does() {
    let gw = TestGateway::with(moderated).await;
    let mut troll = join(gw.addr, "shadow", Some("troll"), false).await;
    let mut other = join(gw.addr, "shadow", Some("other"), false).await;
    admin(
        gw.addr,
        "POST",
        "/api/rooms/shadow/mutes",
        Some(json!({"user": "troll", "seconds": 0, "shadow": true})),
    )
    .await;
    let (answer, _) = post(&mut troll, "you cannot see me").await;
    let Answer::Ack(id) = answer else {
        panic!("a shadow-muted post is acknowledged, got {answer:?}");
    };
    let mine = until_comment(&mut troll, "you cannot see me").await;
    assert_eq!(mine.id, id);
    // The other viewer receives the comment posted after it, and never it.
    let (answer, mut seen) = post(&mut other, "after").await;
    assert!(matches!(answer, Answer::Ack(_)), "{answer:?}");
    while !seen.iter().any(|d| d.text == "after") {
        if let ServerEvent::Danmaku(d) = other.next_event().await {
            seen.push(d);
        }
    }
    assert!(seen.iter().all(|d| d.id != id), "{seen:?}");
    // Nor does a late joiner find it in history.
    let late = join(gw.addr, "shadow", None, false).await;
    assert!(late.hello.recent.iter().all(|d| d.id != id));
}

#[tokio::test]
async fn blocked_words_are_caught_through_evasions_allowed_words_pass_and_masks_publish() {
    let gw = TestGateway::with(moderated).await;
    let a = gw.addr;
    for (word, action) in [
        ("fuck", "block"),
        ("学习", "block"),
        ("操", "block"),
        ("darn", "mask"),
    ] {
        admin(
            a,
            "POST",
            "/api/blocklist",
            Some(json!({"word": word, "action": action})),
        )
        .await;
    }
    for word in ["体操", "操作"] {
        admin(a, "POST", "/api/allowlist", Some(json!({"word": word}))).await;
    }
    let mut c = join(a, "words", Some("poster"), false).await;
    for evasion in [
        "ＦＵＣＫ",
        "f u c k",
        "f\u{200B}u\u{200D}ck",
        "FuCk you",
        "好好學習",
        "操",
        "操 你",
    ] {
        assert_eq!(
            code(&mut c, evasion).await,
            RejectCode::Blocked,
            "{evasion:?}"
        );
    }
    acked(&mut c, "我喜欢体操").await;
    acked(&mut c, "我在操作电脑").await;
    acked(&mut c, "oh darn it").await;
    until_comment(&mut c, "oh **** it").await;
    let listed = admin(a, "GET", "/api/blocklist", None).await;
    assert_eq!(listed["words"].as_array().unwrap().len(), 4, "{listed}");
    // Removing a word lets it through again.
    admin(a, "DELETE", "/api/blocklist/fuck", None).await;
    acked(&mut c, "fuck it").await;
}

#[tokio::test]
async fn api_refusals_are_clear_and_change_nothing() {
    let gw = TestGateway::with(moderated).await;
    let a = gw.addr;
    let mute = json!({"user": "u1", "seconds": 60});
    let path = "/api/rooms/lobby/mutes";
    let expired = token("m", Role::Moderator, None, -60);
    let viewer_token = viewer("v");
    let other_room = token("m2", Role::Moderator, Some(&["other"]), 600);
    for (bearer, status, what) in [
        (None, 401, "no credentials"),
        (Some("not-a-token"), 401, "a malformed token"),
        (Some(expired.as_str()), 401, "an expired token"),
        (Some(viewer_token.as_str()), 403, "a viewer's token"),
        (
            Some(other_room.as_str()),
            403,
            "a moderator of another room",
        ),
    ] {
        let (got, body) = api(a, "POST", path, bearer, Some(mute.clone())).await;
        assert_eq!(got, status, "{what}: {body}");
        assert!(
            body["message"].as_str().is_some_and(|m| !m.is_empty()),
            "{body}"
        );
    }
    // A moderator of another room may not touch fleet-wide lists either.
    let (got, _) = api(
        a,
        "POST",
        "/api/blocklist",
        Some(&other_room),
        Some(json!({"word": "x"})),
    )
    .await;
    assert_eq!(got, 403);
    for (method, path, body, field) in [
        (
            "POST",
            "/api/rooms/lobby/mutes",
            json!({"user": "u1"}),
            "seconds",
        ),
        (
            "POST",
            "/api/rooms/lobby/mutes",
            json!({"user": "u1", "seconds": -1}),
            "seconds",
        ),
        (
            "POST",
            "/api/rooms/lobby/mutes",
            json!({"seconds": 5}),
            "user",
        ),
        (
            "POST",
            "/api/rooms/lobby/mutes",
            json!({"user": "", "seconds": 5}),
            "user",
        ),
        (
            "POST",
            "/api/rooms/lobby/mutes",
            json!({"user": "u", "seconds": 5, "shadow": "y"}),
            "shadow",
        ),
        (
            "POST",
            "/api/rooms/bad%20room/mutes",
            json!({"user": "u", "seconds": 5}),
            "room",
        ),
        (
            "PUT",
            "/api/rooms/lobby/settings",
            json!({"slow_mode_secs": 301}),
            "slow_mode_secs",
        ),
        (
            "PUT",
            "/api/rooms/lobby/settings",
            json!({"locked": 1}),
            "locked",
        ),
        (
            "POST",
            "/api/blocklist",
            json!({"word": "x", "action": "burn"}),
            "action",
        ),
        ("POST", "/api/blocklist", json!({"word": ""}), "word"),
        (
            "POST",
            "/api/allowlist",
            json!({"word": "w".repeat(65)}),
            "word",
        ),
    ] {
        let (got, v) = api(a, method, path, Some(ADMIN), Some(body.clone())).await;
        assert_eq!(got, 400, "{method} {path} {body}: {v}");
        assert_eq!(v["field"], field, "{method} {path} {body}: {v}");
        assert!(v["message"].as_str().unwrap().contains(field), "{v}");
    }
    let (got, v) = api(
        a,
        "POST",
        "/api/mutes",
        Some(ADMIN),
        Some(json!({"user": "u", "seconds": 1, "extra": 1})),
    )
    .await;
    assert_eq!(got, 400);
    assert!(v["message"].as_str().unwrap().contains("extra"), "{v}");
    // Nothing changed.
    let view = admin(a, "GET", "/api/rooms/lobby/moderation", None).await;
    assert_eq!(view["mutes"], json!([]), "{view}");
    assert_eq!(
        view["settings"],
        json!({"slow_mode_secs": 0, "locked": false})
    );
    assert_eq!(view["actions"], json!([]));
    assert_eq!(
        admin(a, "GET", "/api/blocklist", None).await["words"],
        json!([])
    );
    assert_eq!(
        admin(a, "GET", "/api/allowlist", None).await["words"],
        json!([])
    );
    let mut c = join(a, "lobby", Some("u1"), false).await;
    acked(&mut c, "still free").await;
    // A moderator of the room may act there, and the action is recorded.
    let lobby_mod = token("lobby-mod", Role::Moderator, Some(&["lobby"]), 600);
    let (got, v) = api(a, "POST", path, Some(&lobby_mod), Some(mute)).await;
    assert_eq!(got, 200, "{v}");
    let view = admin(a, "GET", "/api/rooms/lobby/moderation", None).await;
    assert_eq!(view["mutes"][0]["user"], "u1", "{view}");
    assert_eq!(view["actions"][0]["by"], "lobby-mod");
    assert_eq!(view["actions"][0]["action"], "mute");
}

#[tokio::test]
async fn the_read_api_can_be_protected() {
    let gw = TestGateway::with(|s| {
        moderated(s);
        s.api_read_token = Secret("reader".into());
    })
    .await;
    for (bearer, status) in [
        (None, 401),
        (Some("wrong"), 401),
        (Some("reader"), 200),
        (Some(ADMIN), 200),
    ] {
        for path in ["/api/rooms", "/api/instances", "/api/stats"] {
            let (got, _) = api(gw.addr, "GET", path, bearer, None).await;
            assert_eq!(got, status, "{path} with {bearer:?}");
        }
    }
    assert_eq!(crate::support::http_get(gw.addr, "/metrics").await.0, 200);
}

/// Reads until the answer to a `moderate` command.
async fn command_answer(c: &mut Client) -> ServerEvent {
    loop {
        let event = c.next_event().await;
        if matches!(
            event,
            ServerEvent::Moderated { .. } | ServerEvent::Error { .. }
        ) {
            return event;
        }
    }
}

#[tokio::test]
async fn moderators_act_from_their_socket_and_viewers_may_not() {
    let gw = TestGateway::with(moderated).await;
    let a = gw.addr;
    let modtoken = token("mod", Role::Moderator, Some(&["ws-room"]), 600);
    let mut m = join_as(a, "ws-room", Some(&modtoken), false).await;
    let mut v = join(a, "ws-room", Some("victim"), true).await;
    m.send_event(json!({"type": "moderate", "action": "mute", "user": "victim", "seconds": 30, "nonce": "k1"}))
        .await;
    match command_answer(&mut m).await {
        ServerEvent::Moderated { nonce, action } => {
            assert_eq!(nonce.unwrap().as_str(), "k1");
            assert_eq!(action, "mute");
        }
        other => panic!("expected moderated, got {other:?}"),
    }
    assert_eq!(code(&mut v, "hey").await, RejectCode::Muted);
    // Outside its rooms, fleet-wide, or with a bad field: refused.
    for (command, want) in [
        (
            json!({"type": "moderate", "action": "mute", "user": "x", "seconds": 5, "global": true}),
            ErrorCode::Forbidden,
        ),
        (
            json!({"type": "moderate", "action": "block_word", "word": "x"}),
            ErrorCode::Forbidden,
        ),
        (
            json!({"type": "moderate", "action": "slow_mode", "seconds": 301}),
            ErrorCode::BadRequest,
        ),
        (
            json!({"type": "moderate", "action": "zap"}),
            ErrorCode::BadRequest,
        ),
        (
            json!({"type": "moderate", "action": "mute", "seconds": 5}),
            ErrorCode::BadRequest,
        ),
    ] {
        m.send_event(command.clone()).await;
        match command_answer(&mut m).await {
            ServerEvent::Error { code, .. } => assert_eq!(code, want, "{command}"),
            other => panic!("{command}: expected an error, got {other:?}"),
        }
    }
    // A viewer may not moderate.
    v.send_event(json!({"type": "moderate", "action": "unmute", "user": "victim"}))
        .await;
    match command_answer(&mut v).await {
        ServerEvent::Error { code, .. } => assert_eq!(code, ErrorCode::Forbidden),
        other => panic!("expected forbidden, got {other:?}"),
    }
    assert_eq!(code(&mut v, "still muted").await, RejectCode::Muted);
    // Lock, recall and unmute from the socket.
    m.send_event(json!({"type": "moderate", "action": "unmute", "user": "victim"}))
        .await;
    assert!(matches!(
        command_answer(&mut m).await,
        ServerEvent::Moderated { .. }
    ));
    let id = acked(&mut v, "take me back").await;
    m.send_event(json!({"type": "moderate", "action": "recall", "id": id}))
        .await;
    assert!(matches!(
        command_answer(&mut m).await,
        ServerEvent::Moderated { .. }
    ));
    loop {
        if let ServerEvent::Delete { id: gone, .. } = v.next_event().await {
            assert_eq!(gone, id);
            break;
        }
    }
    m.send_event(json!({"type": "moderate", "action": "lock"}))
        .await;
    assert!(matches!(
        command_answer(&mut m).await,
        ServerEvent::Moderated { .. }
    ));
    assert_eq!(code(&mut v, "locked out").await, RejectCode::RoomLocked);
}

#[tokio::test]
async fn the_embedded_gateway_keeps_moderation_across_a_restart() {
    let dir = temp_dir("state");
    let with_dir = |s: &mut Settings| {
        moderated(s);
        s.data_dir = dir.to_string_lossy().into_owned();
    };
    let gw = TestGateway::with(with_dir).await;
    admin(
        gw.addr,
        "POST",
        "/api/mutes",
        Some(json!({"user": "troll", "seconds": 0})),
    )
    .await;
    admin(
        gw.addr,
        "PUT",
        "/api/rooms/slowroom/settings",
        Some(json!({"slow_mode_secs": 60})),
    )
    .await;
    admin(
        gw.addr,
        "POST",
        "/api/blocklist",
        Some(json!({"word": "spoiler", "action": "mask"})),
    )
    .await;
    gw.stop().await.unwrap();
    let again = TestGateway::with(with_dir).await;
    let mut t = join(again.addr, "anyroom", Some("troll"), false).await;
    assert_eq!(code(&mut t, "back again").await, RejectCode::Muted);
    let mut s = join(again.addr, "slowroom", Some("fan"), false).await;
    acked(&mut s, "the spoiler is").await;
    until_comment(&mut s, "the ******* is").await;
    assert_eq!(code(&mut s, "again").await, RejectCode::SlowMode);
    let view = admin(again.addr, "GET", "/api/rooms/slowroom/moderation", None).await;
    assert_eq!(view["actions"][0]["action"], "room_settings", "{view}");
    drop(again);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Settings of instance `id` on `redis`, moderated.
fn node(redis: &RedisServer, id: &str) -> impl Fn(&mut Settings) {
    let (url, id) = (redis.url(), id.to_owned());
    move |s| {
        moderated(s);
        s.redis_url = url.clone();
        s.instance_id = id.clone();
    }
}

async fn start(redis: &RedisServer, id: &str, more: impl FnOnce(&mut Settings)) -> TestGateway {
    let base = node(redis, id);
    let gw = TestGateway::with(|s| {
        base(s);
        more(s);
    })
    .await;
    until_ready(gw.addr).await;
    gw
}

#[tokio::test]
async fn one_user_on_two_instances_has_one_budget() {
    let redis = RedisServer::start().unwrap();
    let budget = |s: &mut Settings| {
        s.post_rate_count = 3;
        s.post_burst = 3;
        s.post_window_ms = 60_000;
    };
    let a = start(&redis, "a", budget).await;
    let b = start(&redis, "b", budget).await;
    let mut on_a = join(a.addr, "budget", Some("alice"), false).await;
    let mut on_b = join(b.addr, "budget", Some("alice"), true).await;
    acked(&mut on_a, "1").await;
    acked(&mut on_b, "2").await;
    acked(&mut on_a, "3").await;
    // Each instance alone has allowed fewer than 3; together, 3.
    assert_eq!(code(&mut on_b, "4").await, RejectCode::RateLimited);
    assert_eq!(code(&mut on_a, "5").await, RejectCode::RateLimited);
    // Another user is not held to alice's budget.
    let mut bob = join(b.addr, "budget", Some("bob"), false).await;
    acked(&mut bob, "bob's").await;
}

#[tokio::test]
async fn a_mute_set_on_one_instance_holds_on_another_within_a_second_and_after_restarts() {
    let redis = RedisServer::start().unwrap();
    let a = start(&redis, "a", |_| {}).await;
    let b = start(&redis, "b", |_| {}).await;
    let mut on_b = join(b.addr, "fleet", Some("troll"), false).await;
    acked(&mut on_b, "before").await;
    admin(
        a.addr,
        "POST",
        "/api/rooms/fleet/mutes",
        Some(json!({"user": "troll", "seconds": 300})),
    )
    .await;
    until_answer(
        &mut on_b,
        "during",
        Some(RejectCode::Muted),
        Duration::from_secs(1),
    )
    .await;
    admin(a.addr, "DELETE", "/api/rooms/fleet/mutes/troll", None).await;
    until_answer(&mut on_b, "after", None, Duration::from_secs(1)).await;
    // Muted again; a new instance enforces it from its first post.
    admin(
        b.addr,
        "POST",
        "/api/mutes",
        Some(json!({"user": "troll", "seconds": 0})),
    )
    .await;
    drop(a);
    let c = start(&redis, "c", |_| {}).await;
    let mut on_c = join(c.addr, "elsewhere", Some("troll"), false).await;
    assert_eq!(code(&mut on_c, "new instance").await, RejectCode::Muted);
    // Slow mode and the word lists are shared too.
    admin(
        c.addr,
        "POST",
        "/api/blocklist",
        Some(json!({"word": "shared"})),
    )
    .await;
    let mut other = join(b.addr, "fleet", Some("someone"), false).await;
    until_answer(
        &mut other,
        "shared word",
        Some(RejectCode::Blocked),
        Duration::from_secs(1),
    )
    .await;
}

#[tokio::test]
async fn a_recall_reaches_viewers_on_every_instance_and_leaves_history() {
    let redis = RedisServer::start().unwrap();
    let a = start(&redis, "a", |_| {}).await;
    let b = start(&redis, "b", |_| {}).await;
    let mut on_a = join(a.addr, "recall", Some("poster"), false).await;
    let mut on_b = join(b.addr, "recall", Some("watcher"), true).await;
    let keep = acked(&mut on_a, "keep me").await;
    let id = acked(&mut on_a, "regret").await;
    until_comment(&mut on_b, "regret").await;
    let v = admin(
        a.addr,
        "DELETE",
        &format!("/api/rooms/recall/danmaku/{id}"),
        None,
    )
    .await;
    assert_eq!(v["in_history"], true, "{v}");
    for c in [&mut on_a, &mut on_b] {
        let deleted = tokio::time::timeout(PATIENCE, async {
            loop {
                if let ServerEvent::Delete { id, room } = c.next_event().await {
                    return (id, room);
                }
            }
        })
        .await
        .expect("delete arrives");
        assert_eq!(deleted, (id.clone(), "recall".to_string()));
    }
    let late = join(b.addr, "recall", None, false).await;
    let recent: Vec<&str> = late.hello.recent.iter().map(|d| d.id.as_str()).collect();
    assert!(recent.contains(&keep.as_str()), "{recent:?}");
    assert!(!recent.contains(&id.as_str()), "{recent:?}");
}

#[tokio::test]
async fn the_other_reject_codes_reach_the_poster_in_both_encodings_too() {
    use danmaku_gateway::auth::LEEWAY_SECS;
    let mut redis = RedisServer::start().unwrap();
    let gw = start(&redis, "codes", |s| s.auth_mode = "token".into()).await;
    let a = gw.addr;
    let mut expiring = Vec::new();
    for msgpack in [false, true] {
        let mut guest = join_as(a, "codes", None, msgpack).await;
        assert_eq!(code(&mut guest, "hi").await, RejectCode::Unauthorized);
        let mut c = join(a, "codes", Some("writer"), msgpack).await;
        assert_eq!(code(&mut c, "  ").await, RejectCode::Empty);
        assert_eq!(code(&mut c, &"長".repeat(101)).await, RejectCode::TooLong);
        assert_eq!(code(&mut c, "a\u{202E}b").await, RejectCode::InvalidText);
        c.send_event(json!({"type": "post", "text": "x", "color": "red", "nonce": "c"}))
            .await;
        match c.next_event().await {
            ServerEvent::Reject { code, .. } => assert_eq!(code, RejectCode::BadRequest),
            other => panic!("expected bad_request, got {other:?}"),
        }
        // Valid now only thanks to the leeway: it expires within two seconds.
        let short = token("short", Role::Viewer, None, 1 - LEEWAY_SECS as i64);
        let mut e = join_as(a, "codes", Some(&short), msgpack).await;
        acked(&mut e, "before").await;
        expiring.push(e);
    }
    tokio::time::sleep(Duration::from_millis(2_100)).await;
    for e in &mut expiring {
        assert_eq!(code(e, "after").await, RejectCode::TokenExpired);
    }
    let mut writers = Vec::new();
    for msgpack in [false, true] {
        writers.push(join(a, "codes", Some("writer2"), msgpack).await);
    }
    redis.stop();
    for w in &mut writers {
        assert_eq!(code(w, "nobody home").await, RejectCode::Unavailable);
    }
}

#[tokio::test]
async fn the_blocklist_file_seeds_the_shared_list() {
    let dir = temp_dir("words");
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("blocked.txt");
    std::fs::write(&file, "# seeded words\nrotten\nspoiler\tmask\n\n").unwrap();
    let gw = TestGateway::with(|s| {
        moderated(s);
        s.blocklist_file = file.to_string_lossy().into_owned();
    })
    .await;
    let mut c = join(gw.addr, "seeded", Some("fan"), false).await;
    assert_eq!(code(&mut c, "R O T T E N").await, RejectCode::Blocked);
    acked(&mut c, "no spoiler here").await;
    until_comment(&mut c, "no ******* here").await;
    let listed = admin(gw.addr, "GET", "/api/blocklist", None).await;
    assert_eq!(
        listed["words"],
        json!([{"word": "rotten", "action": "block"}, {"word": "spoiler", "action": "mask"}])
    );
    // A file that does not parse stops the start, naming the line.
    std::fs::write(&file, "fine\nbad\tzap\n").unwrap();
    let mut broken = crate::support::settings();
    broken.blocklist_file = file.to_string_lossy().into_owned();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let err = danmaku_gateway::run(listener, broken, std::future::pending())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("line 2"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn an_unreadable_saved_state_stops_the_start_rather_than_lose_it() {
    let dir = temp_dir("corrupt");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("state.msgpack"), b"not a state file").unwrap();
    let mut s = crate::support::settings();
    s.data_dir = dir.to_string_lossy().into_owned();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let err = danmaku_gateway::run(listener, s, std::future::pending())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("data_dir"), "{err}");
    // The file is left as it was, for the operator to look at.
    assert_eq!(
        std::fs::read(dir.join("state.msgpack")).unwrap(),
        b"not a state file"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
