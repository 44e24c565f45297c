//! Signed identities: tokens at the handshake (query and header), refusals
//! with 401, secret rotation, `anonymous_watch`, posting rules of `token`
//! mode, refreshing an expired token with `auth`, and the binary's `token`
//! subcommand, with a check that no token reaches the logs.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};

use danmaku_gateway::auth::{now_secs, sign, Claims, LEEWAY_SECS};
use danmaku_gateway::config::Secrets;
use danmaku_proto::{ErrorCode, RejectCode, Role, ServerEvent};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;

use crate::support::{refused_status, Client, TestGateway, PATIENCE};

fn claims(sub: &str, role: Role, exp: u64) -> Claims {
    Claims {
        sub: sub.into(),
        name: "Ann".into(),
        role,
        exp,
        rooms: None,
    }
}

/// A token for `sub` signed with `secret`, valid for a minute.
fn token(secret: &str, sub: &str) -> String {
    sign(secret, &claims(sub, Role::Moderator, now_secs() + 60))
}

/// A gateway in `token` mode whose secrets are `secrets`, first one first.
async fn token_gateway(secrets: &[&str]) -> TestGateway {
    TestGateway::with(|s| {
        s.auth_mode = "token".into();
        s.auth_secret = Secrets(secrets.iter().map(|s| s.to_string()).collect());
    })
    .await
}

/// Connects with `Authorization: <value>` and reads `hello`.
async fn connect_with_authorization(url: &str, value: &str) -> Client {
    let mut request = url.into_client_request().unwrap();
    request
        .headers_mut()
        .insert("Authorization", HeaderValue::from_str(value).unwrap());
    let (ws, response) = tokio_tungstenite::connect_async(request)
        .await
        .expect("websocket connects");
    let protocol = response
        .headers()
        .get("Sec-WebSocket-Protocol")
        .map(|v| v.to_str().unwrap().to_owned());
    Client::from_parts(ws, protocol).await
}

/// The status and body of a handshake refused while sending `Authorization`.
async fn refused_with_authorization(url: &str, value: &str) -> (u16, String) {
    let mut request = url.into_client_request().unwrap();
    request
        .headers_mut()
        .insert("Authorization", HeaderValue::from_str(value).unwrap());
    crate::support::http_refusal(tokio_tungstenite::connect_async(request).await)
}

/// The next event that is not a comment or a count.
async fn next_answer(c: &mut Client) -> ServerEvent {
    loop {
        match c.next_event().await {
            ServerEvent::Danmaku(_) => continue,
            other => return other,
        }
    }
}

#[tokio::test]
async fn a_valid_token_in_the_query_or_the_header_sets_user_name_and_role() {
    let gw = token_gateway(&["s3cret"]).await;
    let t = token("s3cret", "user-42");
    let by_query = Client::connect(&format!("{}?token={t}&nick=Bob", gw.url("r")), None).await;
    let by_header = connect_with_authorization(&gw.url("r"), &format!("Bearer {t}")).await;
    for c in [&by_query, &by_header] {
        assert_eq!(c.hello.user, "user-42");
        assert_eq!(
            c.hello.name.as_deref(),
            Some("Ann"),
            "the claim, not ?nick="
        );
        assert_eq!(c.hello.role, Some(Role::Moderator));
    }
    let guest = gw.join("r").await;
    assert!(guest.hello.user.starts_with("guest-"));
    assert_eq!(guest.hello.role, Some(Role::Viewer));
}

#[tokio::test]
async fn bad_tokens_get_401_with_a_reason_in_every_mode() {
    let open = TestGateway::with(|s| s.auth_secret = Secrets(vec!["k".into()])).await;
    let token_mode = token_gateway(&["k"]).await;
    let expired = sign(
        "k",
        &claims("u", Role::Viewer, now_secs() - LEEWAY_SECS - 10),
    );
    let wrong = token("not-k", "u");
    for gw in [&open, &token_mode] {
        for (t, reason) in [
            (expired.as_str(), "expired"),
            (wrong.as_str(), "signature"),
            ("garbage", "invalid token"),
        ] {
            let (status, body) = refused_status(&format!("{}?token={t}", gw.url("r"))).await;
            assert_eq!(status, 401, "{body}");
            assert!(body.contains(reason), "{reason}: {body}");
            assert!(!body.contains(t), "the reason does not echo the token");
            let (status, body) =
                refused_with_authorization(&gw.url("r"), &format!("Bearer {t}")).await;
            assert_eq!((status, body.contains(reason)), (401, true), "{body}");
        }
        let (status, _) = refused_with_authorization(&gw.url("r"), "Basic dTpw").await;
        assert_eq!(status, 401);
    }
}

#[tokio::test]
async fn a_token_signed_with_an_older_secret_still_verifies() {
    let gw = token_gateway(&["new", "old"]).await;
    for secret in ["new", "old"] {
        let c = Client::connect(
            &format!("{}?token={}", gw.url("r"), token(secret, "u1")),
            None,
        )
        .await;
        assert_eq!(c.hello.user, "u1");
    }
    let (status, _) =
        refused_status(&format!("{}?token={}", gw.url("r"), token("older", "u1"))).await;
    assert_eq!(status, 401);
}

#[tokio::test]
async fn without_anonymous_watch_a_token_is_needed_to_connect() {
    let gw = TestGateway::with(|s| {
        s.auth_mode = "token".into();
        s.auth_secret = Secrets(vec!["k".into()]);
        s.anonymous_watch = false;
    })
    .await;
    let (status, body) = refused_status(&gw.url("r")).await;
    assert_eq!(status, 401, "{body}");
    assert!(body.contains("token is required"), "{body}");
    let c = Client::connect(&format!("{}?token={}", gw.url("r"), token("k", "u")), None).await;
    assert_eq!(c.hello.user, "u");
}

#[tokio::test]
async fn in_token_mode_guests_watch_but_may_not_post() {
    let gw = token_gateway(&["k"]).await;
    let mut guest = gw.join("r").await;
    let nonce = guest.post("hello").await;
    match next_answer(&mut guest).await {
        ServerEvent::Reject { nonce: n, code, .. } => {
            assert_eq!(code, RejectCode::Unauthorized);
            assert_eq!(n.unwrap().as_str(), nonce);
        }
        other => panic!("expected a reject, got {other:?}"),
    }
    let mut user =
        Client::connect(&format!("{}?token={}", gw.url("r"), token("k", "u")), None).await;
    user.post("hello").await;
    assert!(matches!(
        next_answer(&mut user).await,
        ServerEvent::Ack { .. }
    ));
}

#[tokio::test]
async fn an_expired_token_stops_posts_until_auth_refreshes_it() {
    let gw = token_gateway(&["k"]).await;
    // Valid now only thanks to the leeway, so it expires within two seconds.
    let short = sign(
        "k",
        &claims("u", Role::Viewer, now_secs() - LEEWAY_SECS + 1),
    );
    let mut c = Client::connect(&format!("{}?token={short}", gw.url("r")), None).await;
    c.post("before").await;
    assert!(matches!(next_answer(&mut c).await, ServerEvent::Ack { .. }));
    tokio::time::sleep(std::time::Duration::from_millis(2_100)).await;
    c.post("after").await;
    match next_answer(&mut c).await {
        ServerEvent::Reject { code, .. } => assert_eq!(code, RejectCode::TokenExpired),
        other => panic!("expected token_expired, got {other:?}"),
    }

    // Another user's token is refused and changes nothing.
    let other = token("k", "someone-else");
    c.send_event(serde_json::json!({"type": "auth", "token": other, "nonce": "a1"}))
        .await;
    match next_answer(&mut c).await {
        ServerEvent::Error {
            code,
            message,
            nonce: None,
        } => {
            assert_eq!(code, ErrorCode::BadToken);
            assert!(message.contains("another user"), "{message}");
        }
        other => panic!("expected bad_token, got {other:?}"),
    }

    let exp = now_secs() + 60;
    let fresh = sign("k", &claims("u", Role::Moderator, exp));
    c.send_event(serde_json::json!({"type": "auth", "token": fresh, "nonce": "a2"}))
        .await;
    match next_answer(&mut c).await {
        ServerEvent::AuthOk {
            nonce,
            user,
            role,
            exp: got,
        } => {
            assert_eq!(nonce.unwrap().as_str(), "a2");
            assert_eq!((user.as_str(), role, got), ("u", Role::Moderator, exp));
        }
        other => panic!("expected auth_ok, got {other:?}"),
    }
    c.post("again").await;
    assert!(matches!(next_answer(&mut c).await, ServerEvent::Ack { .. }));
}

#[tokio::test]
async fn auth_is_refused_to_guests_and_for_bad_tokens() {
    let gw = TestGateway::with(|s| s.auth_secret = Secrets(vec!["k".into()])).await;
    let mut guest = gw.join("r").await;
    guest
        .send_event(serde_json::json!({"type": "auth", "token": token("k", "u")}))
        .await;
    assert!(matches!(
        next_answer(&mut guest).await,
        ServerEvent::Error {
            code: ErrorCode::BadToken,
            ..
        }
    ));
    let mut user =
        Client::connect(&format!("{}?token={}", gw.url("r"), token("k", "u")), None).await;
    user.send_event(serde_json::json!({"type": "auth", "token": "garbage"}))
        .await;
    assert!(matches!(
        next_answer(&mut user).await,
        ServerEvent::Error {
            code: ErrorCode::BadToken,
            ..
        }
    ));
    // Open mode: a user with a live token posts as before.
    user.post("still here").await;
    assert!(matches!(
        next_answer(&mut user).await,
        ServerEvent::Ack { .. }
    ));
}

/// Runs the real binary with `env`, trace logs on stdout and stderr kept.
struct Process {
    child: std::process::Child,
    addr: SocketAddr,
    logs: Arc<Mutex<String>>,
}

impl Process {
    fn spawn(env: &[(&str, &str)]) -> Process {
        let mut child = Command::new(env!("CARGO_BIN_EXE_danmaku-gateway"))
            .env("DANMAKU_LISTEN", "127.0.0.1:0")
            .env("DANMAKU_LOG_FORMAT", "json")
            .env("RUST_LOG", "trace")
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let logs = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let stdout = child.stdout.take().unwrap();
        let stderr = child.stderr.take().unwrap();
        let out_logs = logs.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) {
                    if v["fields"]["message"] == "Gateway listening" {
                        let _ = tx.send(v["fields"]["addr"].as_str().unwrap().to_owned());
                    }
                }
                out_logs.lock().unwrap().push_str(&(line + "\n"));
            }
        });
        let err_logs = logs.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                err_logs.lock().unwrap().push_str(&(line + "\n"));
            }
        });
        let addr = rx.recv_timeout(PATIENCE).expect("the gateway listens");
        Process {
            child,
            addr: addr.parse().unwrap(),
            logs,
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `danmaku-gateway token …` with `env`: its stdout, trimmed.
fn token_subcommand(env: &[(&str, &str)], args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_danmaku-gateway"))
        .arg("token")
        .args(args)
        .envs(env.iter().copied())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

#[tokio::test]
async fn the_token_subcommand_signs_what_the_binary_accepts_and_no_token_is_logged() {
    let env = [
        ("DANMAKU_AUTH_MODE", "token"),
        ("DANMAKU_AUTH_SECRET", "first-secret,second-secret"),
    ];
    let issued = token_subcommand(
        &env,
        &[
            "--sub", "op-1", "--name", "Operator", "--role", "admin", "--ttl", "60", "--rooms",
            "a,b",
        ],
    );
    let claims = danmaku_gateway::auth::verify(
        &danmaku_gateway::Settings {
            auth_secret: Secrets(vec!["first-secret".into()]),
            ..danmaku_gateway::Settings::default()
        },
        &issued,
    )
    .expect("signed with the first secret");
    assert_eq!(claims.role, Role::Admin);
    assert_eq!(claims.rooms, Some(vec!["a".to_string(), "b".to_string()]));

    let gw = Process::spawn(&env);
    let url = format!("ws://{}/ws/r", gw.addr);
    let mut c = Client::connect(&format!("{url}?token={issued}"), None).await;
    assert_eq!(
        (c.hello.user.as_str(), c.hello.role),
        ("op-1", Some(Role::Admin))
    );
    let rotated = token("second-secret", "u2");
    let by_header = connect_with_authorization(&url, &format!("Bearer {rotated}")).await;
    assert_eq!(by_header.hello.user, "u2");
    let wrong = token("nobody's", "u3");
    let expired = sign("first-secret", &claims_expired());
    for bad in [&wrong, &expired] {
        assert_eq!(refused_status(&format!("{url}?token={bad}")).await.0, 401);
        assert_eq!(
            refused_with_authorization(&url, &format!("Bearer {bad}"))
                .await
                .0,
            401
        );
    }
    c.send_event(serde_json::json!({"type": "auth", "token": issued}))
        .await;
    assert!(matches!(
        next_answer(&mut c).await,
        ServerEvent::AuthOk { .. }
    ));
    drop((c, by_header));
    let logs = gw.logs.clone();
    drop(gw);
    // The reader threads stop once the pipes close; give them a moment.
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let logs = logs.lock().unwrap().clone();
    assert!(logs.contains("Gateway listening"), "logs were captured");
    for t in [&issued, &rotated, &wrong, &expired] {
        // The signature alone is enough to tell a token was written out.
        let signature = t.rsplit('.').next().unwrap();
        let leaked: Vec<&str> = logs.lines().filter(|l| l.contains(signature)).collect();
        assert!(leaked.is_empty(), "a token reached the logs: {leaked:?}");
    }
}

fn claims_expired() -> Claims {
    claims("u4", Role::Viewer, now_secs() - LEEWAY_SECS - 10)
}

#[test]
fn the_reject_schema_and_protocol_list_every_reject_code_in_order() {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../../proto");
    let schema: serde_json::Value =
        serde_json::from_slice(&std::fs::read(format!("{root}/schema/reject.json")).unwrap())
            .unwrap();
    let listed: Vec<&str> = schema["properties"]["code"]["enum"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap())
        .collect();
    let all: Vec<&str> = RejectCode::ALL.iter().map(|c| c.as_str()).collect();
    assert_eq!(listed, all);
    let protocol = std::fs::read_to_string(format!("{root}/PROTOCOL.md")).unwrap();
    for code in all {
        assert!(protocol.contains(&format!("| `{code}`")), "{code} in §8.1");
    }
}
