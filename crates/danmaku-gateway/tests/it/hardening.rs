//! Clients that try to hold the server's sockets: silent sockets, slowloris
//! requests, idle keep-alive connections, endless request heads, too many
//! connections from one address, clients that never read, running out of
//! file descriptors, and a half-sent request at SIGTERM. Each is bounded,
//! counted in `/metrics`, and none keeps a stopping gateway alive.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use danmaku_testkit::RedisServer;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::{
    connect_raw, eventually, http_get, until_ready, Client, GatewayProcess, TestGateway, PATIENCE,
};

/// Reads until the server closes the connection (an end of stream or a
/// reset); returns what arrived and how long it took. Fails the test if it
/// is still open after `PATIENCE`.
async fn until_closed(s: &mut TcpStream) -> (String, Duration) {
    let start = Instant::now();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout_at((start + PATIENCE).into(), s.read(&mut buf)).await {
            Err(_) => panic!(
                "the server kept the connection open; it sent {:?}",
                String::from_utf8_lossy(&got)
            ),
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
        }
    }
    (String::from_utf8_lossy(&got).into_owned(), start.elapsed())
}

/// Reads one response to a GET on a keep-alive connection: through the
/// body, which must end with `body_end`.
async fn read_response(s: &mut TcpStream, body_end: &str) -> String {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&got).ends_with(body_end) {
        let n = tokio::time::timeout(PATIENCE, s.read(&mut buf))
            .await
            .expect("a response in time")
            .unwrap();
        assert!(n > 0, "closed before the response ended");
        got.extend_from_slice(&buf[..n]);
    }
    String::from_utf8_lossy(&got).into_owned()
}

/// A GET that may fail: `None` if the connection is refused or cut.
async fn try_get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect(addr).await.ok()?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n");
    s.write_all(request.as_bytes()).await.ok()?;
    let mut buf = Vec::new();
    tokio::time::timeout(PATIENCE, s.read_to_end(&mut buf))
        .await
        .ok()?
        .ok()?;
    let text = String::from_utf8_lossy(&buf).into_owned();
    let status = text.split(' ').nth(1)?.parse().ok()?;
    let body = text.split_once("\r\n\r\n")?.1.to_owned();
    Some((status, body))
}

/// The value of `series` in the gateway's `/metrics`.
async fn metric(addr: SocketAddr, series: &str) -> f64 {
    let (status, text) = http_get(addr, "/metrics").await;
    assert_eq!(status, 200);
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("{series} missing from\n{text}"))
}

fn refused(reason: &str) -> String {
    format!("danmaku_connections_refused_total{{reason=\"{reason}\"}}")
}

#[tokio::test]
async fn silent_half_sent_and_slowloris_connections_are_closed_after_the_header_timeout() {
    let gw = TestGateway::with(|s| {
        s.http_header_timeout_ms = 300;
        s.http_idle_timeout_ms = 60_000;
    })
    .await;

    let opened = Instant::now();
    // Never sends a byte.
    let mut silent = TcpStream::connect(gw.addr).await.unwrap();
    // Sends half a request line and waits.
    let mut half = TcpStream::connect(gw.addr).await.unwrap();
    half.write_all(b"GET /ws/x HTT").await.unwrap();
    // Sends a header byte every 50 ms, forever.
    let slow = TcpStream::connect(gw.addr).await.unwrap();
    let (mut slow_read, mut slow_write) = slow.into_split();
    let dripping = tokio::spawn(async move {
        slow_write
            .write_all(b"GET /healthz HTTP/1.1\r\n")
            .await
            .unwrap();
        let mut sent = 0u64;
        while slow_write.write_all(b"x").await.is_ok() {
            sent += 1;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        sent
    });

    for s in [&mut silent, &mut half] {
        let (got, _) = until_closed(s).await;
        assert!(got.is_empty(), "no answer, just a close: {got:?}");
        assert!(
            opened.elapsed() >= Duration::from_millis(250),
            "by the timer"
        );
    }
    let mut buf = [0u8; 64];
    let closed = tokio::time::timeout(PATIENCE, slow_read.read(&mut buf)).await;
    assert!(
        matches!(closed, Ok(Ok(0)) | Ok(Err(_))),
        "the slowloris client is cut off while still sending: {closed:?}"
    );
    let sent = tokio::time::timeout(PATIENCE, dripping)
        .await
        .expect("writing fails once the server closed")
        .unwrap();
    assert!(sent >= 3, "it was sending all along: {sent}");

    assert!(metric(gw.addr, &refused("header_timeout")).await >= 3.0);
    // Ordinary requests are unaffected.
    assert_eq!(http_get(gw.addr, "/healthz").await.0, 200);
}

#[tokio::test]
async fn an_idle_keep_alive_connection_is_closed_after_the_idle_timeout() {
    let gw = TestGateway::with(|s| {
        s.http_header_timeout_ms = 60_000;
        s.http_idle_timeout_ms = 400;
    })
    .await;
    let mut s = TcpStream::connect(gw.addr).await.unwrap();
    let request = b"GET /healthz HTTP/1.1\r\nHost: test\r\n\r\n";
    s.write_all(request).await.unwrap();
    assert!(read_response(&mut s, "ok\n")
        .await
        .starts_with("HTTP/1.1 200"));
    // Kept alive: a second request on the same connection is served.
    s.write_all(request).await.unwrap();
    assert!(read_response(&mut s, "ok\n")
        .await
        .starts_with("HTTP/1.1 200"));
    // Then nothing: the connection is closed after the idle timeout.
    let (got, after) = until_closed(&mut s).await;
    assert!(got.is_empty(), "{got:?}");
    assert!(after >= Duration::from_millis(300), "{after:?}");
    assert!(metric(gw.addr, &refused("idle_timeout")).await >= 1.0);
}

#[tokio::test]
async fn an_oversized_request_head_is_refused_whole_or_half_sent() {
    // Default size limit; a header timeout far beyond the test, so only
    // the size can end these connections.
    let gw = TestGateway::with(|s| s.http_header_timeout_ms = 600_000).await;
    assert_eq!(crate::support::settings().http_max_header_bytes, 16_384);
    let big = "a".repeat(20_000);

    let mut whole = TcpStream::connect(gw.addr).await.unwrap();
    let request = format!("GET /healthz HTTP/1.1\r\nHost: test\r\nX-Big: {big}\r\n\r\n");
    whole.write_all(request.as_bytes()).await.unwrap();
    let mut half = TcpStream::connect(gw.addr).await.unwrap();
    let request = format!("GET /ws/x HTTP/1.1\r\nHost: test\r\nX-Big: {big}");
    half.write_all(request.as_bytes()).await.unwrap();
    for s in [&mut whole, &mut half] {
        // A 431, or a reset if the close overtook it: never held open.
        let (got, _) = until_closed(s).await;
        assert!(
            got.is_empty() || got.starts_with("HTTP/1.1 431"),
            "refused: {got:?}"
        );
    }
    assert_eq!(metric(gw.addr, &refused("header_too_large")).await, 2.0);

    // A head under the limit is served.
    let fits = "a".repeat(8_000);
    let (status, body) = crate::support::http_request(
        gw.addr,
        &format!("GET /healthz HTTP/1.1\r\nHost: t\r\nX-Fits: {fits}\r\nConnection: close\r\n\r\n"),
    )
    .await;
    assert_eq!((status, body.as_str()), (200, "ok\n"));
}

#[tokio::test]
async fn the_per_address_cap_counts_http_and_websockets_and_frees_on_close() {
    let gw = TestGateway::with(|s| {
        s.max_connections_per_ip = 3;
        s.http_header_timeout_ms = 600_000;
    })
    .await;
    let a = gw.join("cap").await;
    let _b = gw.join("cap").await;
    let mut idle = TcpStream::connect(gw.addr).await.unwrap();
    idle.write_all(b"GET /heal").await.unwrap();

    // The fourth connection is refused at once, HTTP or WebSocket.
    let mut fourth = TcpStream::connect(gw.addr).await.unwrap();
    let _ = fourth
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n")
        .await;
    let (got, _) = until_closed(&mut fourth).await;
    assert!(
        got.is_empty() || got.starts_with("HTTP/1.1 429"),
        "refused: {got:?}"
    );
    assert!(
        connect_raw(&gw.url("cap"), None).await.is_err(),
        "a WebSocket over the cap is refused too"
    );

    // One closes: a place frees up.
    drop(a);
    let text = eventually("a place frees up after a close", || async {
        // Refused (429 or cut off) until the close is seen.
        let (status, text) = try_get(gw.addr, "/metrics").await?;
        (status == 200).then_some(text)
    })
    .await;
    let per_ip = text
        .lines()
        .find_map(|l| {
            l.strip_prefix(&refused("per_ip_limit"))?
                .trim()
                .parse::<f64>()
                .ok()
        })
        .unwrap();
    assert!(per_ip >= 2.0, "refusals are counted: {per_ip}");
    // The half-sent request is still open: its place is still taken.
    let mut buf = [0u8; 1];
    assert!(
        tokio::time::timeout(Duration::from_millis(100), idle.read(&mut buf))
            .await
            .is_err(),
        "the third connection was left alone"
    );
}

#[tokio::test]
async fn a_client_that_never_reads_cannot_hold_shutdown_past_the_grace() {
    let gw = TestGateway::with(|s| {
        s.shutdown_grace_ms = 500;
        s.tcp_send_buffer_bytes = 4096;
    })
    .await;
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut s = socket.connect(gw.addr).await.unwrap();
    // Many pipelined requests whose answers never fit in the buffers: the
    // server is stuck writing for as long as the client does not read.
    let request = "GET /metrics HTTP/1.1\r\nHost: t\r\n\r\n".repeat(200);
    s.write_all(request.as_bytes()).await.unwrap();
    let mut peek = [0u8; 1];
    tokio::time::timeout(PATIENCE, s.peek(&mut peek))
        .await
        .expect("the server starts answering")
        .unwrap();

    let start = Instant::now();
    gw.stop().await.unwrap();
    assert!(
        start.elapsed() < Duration::from_millis(500 + 1_500),
        "stopped {:?} after the signal",
        start.elapsed()
    );
    drop(s);
}

#[tokio::test]
async fn sigterm_exits_in_time_with_a_half_sent_request_and_still_leaves_the_fleet() {
    let redis = RedisServer::start().unwrap();
    let gw = GatewayProcess::spawn(
        "stuck-client",
        &[
            ("DANMAKU_REDIS_URL", &redis.url()),
            ("DANMAKU_SHUTDOWN_GRACE_MS", "1000"),
            // Far beyond the test: only shutdown may end the stuck client.
            ("DANMAKU_HTTP_HEADER_TIMEOUT_MS", "600000"),
            ("DANMAKU_HEARTBEAT_TTL_MS", "600000"),
        ],
    )
    .await;
    until_ready(gw.addr).await;
    let listed = || {
        let ids: Vec<String> = redis
            .redis_cli(&["ZRANGE", "danmaku:instances", "0", "-1"])
            .unwrap();
        ids.contains(&"stuck-client".to_owned())
    };
    eventually("the instance is in the fleet", || async {
        listed().then_some(())
    })
    .await;

    let mut stuck = TcpStream::connect(gw.addr).await.unwrap();
    stuck.write_all(b"GET /ws/x HTT").await.unwrap();
    // Connections are accepted in order: once this is answered, the stuck
    // one is being served too.
    assert_eq!(http_get(gw.addr, "/healthz").await.0, 200);
    let mut viewer = Client::connect(&gw.url("x"), None).await;
    let closing = tokio::spawn(async move { viewer.expect_close().await });

    let start = Instant::now();
    gw.signal("TERM");
    let status = gw.wait().await;
    let took = start.elapsed();
    assert_eq!(status.code(), Some(0));
    assert!(took < Duration::from_millis(1_000 + 2_000), "took {took:?}");
    assert_eq!(closing.await.unwrap().0, 1001);
    assert!(!listed(), "the gateway left the fleet on its way out");
    drop(stuck);
}

#[tokio::test]
async fn running_out_of_descriptors_is_counted_and_accepting_resumes() {
    let gw = GatewayProcess::spawn_limited(
        "few-fds",
        &[("DANMAKU_MAX_CONNECTIONS_PER_IP", "0")],
        Some(64),
    )
    .await;
    let addr = gw.addr;
    // The kernel completes every handshake (the listen backlog); the
    // gateway can take only as many as it has descriptors for.
    let mut flood = Vec::new();
    for _ in 0..120 {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n")
            .await
            .unwrap();
        flood.push(s);
    }
    let mut answered = 0;
    for s in &mut flood {
        let mut buf = [0u8; 1];
        if let Ok(Ok(n)) = tokio::time::timeout(Duration::from_millis(20), s.peek(&mut buf)).await {
            answered += usize::from(n > 0);
        }
    }
    assert!(
        answered < flood.len(),
        "the descriptor limit was reached: {answered} answered"
    );
    // The flood leaves: the gateway takes connections again and says how
    // often accepting failed.
    drop(flood);
    let (status, text) = eventually("accepting resumes", || async {
        try_get(addr, "/metrics").await
    })
    .await;
    assert_eq!(status, 200);
    let errors: f64 = text
        .lines()
        .find_map(|l| l.strip_prefix("danmaku_accept_errors_total ")?.parse().ok())
        .expect("danmaku_accept_errors_total in /metrics");
    assert!(errors >= 1.0, "failed accepts are counted: {errors}");
    drop(gw);
}
