//! Graceful shutdown: every client gets 1001 "going away" and the process
//! exits 0, both for the real binary on SIGTERM and for `run` in process.

use std::process::Command;

use crate::support::{Client, GatewayProcess, TestGateway};

#[tokio::test]
async fn sigterm_closes_every_socket_with_1001_and_exits_0() {
    let gw = GatewayProcess::spawn("shutdown-test", &[]).await;
    let (_, stats) = crate::support::http_get(gw.addr, "/api/stats").await;
    let stats: serde_json::Value = serde_json::from_str(&stats).unwrap();
    assert_eq!(
        stats["instance"], "shutdown-test",
        "DANMAKU_INSTANCE_ID is read as is"
    );

    let mut clients = Vec::new();
    for room in ["a", "a", "b"] {
        clients.push(Client::connect(&gw.url(room), None).await);
    }
    gw.signal("TERM");
    for c in &mut clients {
        assert_eq!(c.expect_close().await, (1001, "going away".to_string()));
    }
    assert_eq!(gw.wait().await.code(), Some(0));
}

#[tokio::test]
async fn run_returns_after_closing_sockets_with_1001() {
    let gw = TestGateway::with(|_| {}).await;
    let mut a = gw.join("x").await;
    let mut b = Client::connect(&gw.url("y"), Some(danmaku_proto::SUBPROTOCOL_MSGPACK)).await;
    let addr = gw.addr;
    let stopping = tokio::spawn(gw.stop());
    assert_eq!(a.expect_close().await.0, 1001);
    assert_eq!(b.expect_close().await.0, 1001);
    stopping.await.unwrap().unwrap();
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "no longer accepting"
    );
}

#[test]
fn an_invalid_setting_stops_the_binary_before_binding_with_the_key_named() {
    // A port that is free now; the gateway must never bind it.
    let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = probe.local_addr().unwrap().to_string();
    drop(probe);
    for (key, value) in [
        ("DANMAKU_MAX_TEXT_CHARS", "lots"),
        ("DANMAKU_FLUSH_WINDOW_MS", "0"),
        ("DANMAKU_NO_SUCH_KEY", "1"),
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_danmaku-gateway"))
            .env("DANMAKU_LISTEN", &addr)
            .env(key, value)
            .output()
            .unwrap();
        assert!(!out.status.success(), "{key}={value} must not start");
        let stderr = String::from_utf8_lossy(&out.stderr);
        let name = key.trim_start_matches("DANMAKU_").to_lowercase();
        assert!(
            stderr.contains(&name),
            "{key}: the message names the key: {stderr}"
        );
        assert!(
            !stderr.contains("Gateway listening"),
            "{key}: it never bound"
        );
    }
    assert!(
        std::net::TcpListener::bind(&addr).is_ok(),
        "the port was left alone"
    );
}
