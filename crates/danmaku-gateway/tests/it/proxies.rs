//! Connections through load balancers: the client address from
//! `X-Forwarded-For` and PROXY protocol headers, believed only from
//! `trusted_proxies`, as the per-address cap sees it; and the `Origin`
//! allow-list of WebSocket upgrades.

use std::net::SocketAddr;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::raw::KEY;
use crate::support::{http_get, TestGateway, PATIENCE};

/// A WebSocket upgrade of room `room` with `extra` header lines.
fn upgrade_request(room: &str, extra: &[(&str, &str)]) -> Vec<u8> {
    let mut r = format!(
        "GET /ws/{room} HTTP/1.1\r\nHost: test\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: {KEY}\r\n"
    );
    for (name, value) in extra {
        r.push_str(&format!("{name}: {value}\r\n"));
    }
    r.push_str("\r\n");
    r.into_bytes()
}

/// Sends `preamble` then an upgrade with `extra` headers on a new
/// connection; returns the response's status and body (`None`: closed
/// without one) and the open connection, which holds the WebSocket on 101.
async fn try_upgrade(
    addr: SocketAddr,
    preamble: &[u8],
    extra: &[(&str, &str)],
) -> (Option<(u16, String)>, TcpStream) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let mut bytes = preamble.to_vec();
    bytes.extend_from_slice(&upgrade_request("proxied", extra));
    let _ = s.write_all(&bytes).await;
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    let response = loop {
        let text = String::from_utf8_lossy(&got).into_owned();
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let status: u16 = head.split(' ').nth(1).unwrap().parse().unwrap();
            let length = head
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().to_owned())
                })
                .map_or(0, |v| v.parse().unwrap());
            if status == 101 || body.len() >= length {
                break Some((status, body.to_owned()));
            }
        }
        match tokio::time::timeout(PATIENCE, s.read(&mut buf)).await {
            Err(_) => panic!("no response and no close: {text:?}"),
            Ok(Ok(0)) | Ok(Err(_)) => break None,
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
        }
    };
    (response, s)
}

/// The status of an upgrade, 0 if the connection was closed without one.
async fn status(addr: SocketAddr, preamble: &[u8], extra: &[(&str, &str)]) -> (u16, TcpStream) {
    let (response, s) = try_upgrade(addr, preamble, extra).await;
    (response.map_or(0, |(status, _)| status), s)
}

/// `danmaku_connections_refused_total{reason}` from `/metrics`.
async fn refused(addr: SocketAddr, reason: &str) -> f64 {
    let (code, text) = http_get(addr, "/metrics").await;
    assert_eq!(code, 200);
    let series = format!("danmaku_connections_refused_total{{reason=\"{reason}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&series)?.parse().ok())
        .unwrap_or_else(|| panic!("{series} missing"))
}

/// A PROXY v2 header for a TCP connection from `source` (IPv4 or IPv6).
fn proxy_v2(source: &str) -> Vec<u8> {
    let mut h = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    h.push(0x21); // version 2, PROXY
    match source.parse().unwrap() {
        std::net::IpAddr::V4(v4) => {
            h.extend_from_slice(&[0x11, 0, 12]);
            h.extend_from_slice(&v4.octets());
            h.extend_from_slice(&[127, 0, 0, 1, 0x30, 0x39, 0, 80]);
        }
        std::net::IpAddr::V6(v6) => {
            h.extend_from_slice(&[0x21, 0, 36]);
            h.extend_from_slice(&v6.octets());
            h.extend_from_slice(&[0; 15]);
            h.extend_from_slice(&[1, 0x30, 0x39, 0, 80]);
        }
    }
    h
}

async fn behind_proxy(max_per_ip: u32) -> TestGateway {
    TestGateway::with(|s| {
        s.max_connections_per_ip = max_per_ip;
        s.trusted_proxies = vec!["127.0.0.0/8".parse().unwrap()];
    })
    .await
}

#[tokio::test]
async fn forwarded_for_from_a_trusted_proxy_is_what_the_cap_counts() {
    let gw = behind_proxy(2).await;
    let seven = [("X-Forwarded-For", "203.0.113.7")];
    let (a, ha) = status(gw.addr, b"", &seven).await;
    let (b, _hb) = status(gw.addr, b"", &seven).await;
    assert_eq!((a, b), (101, 101));
    let (third, _) = try_upgrade(gw.addr, b"", &seven).await;
    let (code, body) = third.expect("a response");
    assert_eq!(code, 429);
    assert_eq!(body, "too many connections from your address\n");
    // A spoofed entry to the left changes nothing: the balancer appended .7.
    let spoofed = [("X-Forwarded-For", "198.51.100.1, 203.0.113.7")];
    assert_eq!(status(gw.addr, b"", &spoofed).await.0, 429);
    let eight = [("X-Forwarded-For", "203.0.113.8")];
    let (other, _hc) = status(gw.addr, b"", &eight).await;
    assert_eq!(other, 101, "another client is counted on its own");
    assert_eq!(refused(gw.addr, "per_ip_limit").await, 2.0);

    // A closed WebSocket gives its place back.
    drop(ha);
    crate::support::eventually("a place frees up", || async {
        let (code, _held) = status(gw.addr, b"", &seven).await;
        (code == 101).then_some(())
    })
    .await;
}

#[tokio::test]
async fn forwarded_for_is_ignored_without_trusted_proxies() {
    let gw = TestGateway::with(|s| s.max_connections_per_ip = 2).await;
    let (a, _ha) = status(gw.addr, b"", &[("X-Forwarded-For", "203.0.113.7")]).await;
    let (b, _hb) = status(gw.addr, b"", &[("X-Forwarded-For", "203.0.113.8")]).await;
    assert_eq!((a, b), (101, 101));
    // All three come from 127.0.0.1: the third is refused at accept.
    let (c, _) = status(gw.addr, b"", &[("X-Forwarded-For", "203.0.113.9")]).await;
    assert!(c == 0 || c == 429, "refused, got {c}");
}

#[tokio::test]
async fn proxy_headers_from_a_trusted_peer_name_the_client() {
    let gw = behind_proxy(1).await;
    let v1 = b"PROXY TCP4 198.51.100.1 127.0.0.1 40000 80\r\n";
    let (first, _held) = status(gw.addr, v1, &[]).await;
    assert_eq!(first, 101);
    // The same client through v2: over its cap of 1, refused at once.
    let (again, _) = status(gw.addr, &proxy_v2("198.51.100.1"), &[]).await;
    assert!(again == 0 || again == 429, "refused, got {again}");
    // Other clients, v2 IPv4 and IPv6, and v1 IPv6.
    let (v2_four, _h2) = status(gw.addr, &proxy_v2("198.51.100.2"), &[]).await;
    let (v2_six, _h3) = status(gw.addr, &proxy_v2("2001:db8::1"), &[]).await;
    let v1_six = b"PROXY TCP6 2001:db8:1::1 ::1 40000 80\r\n";
    let (v1_six, _h4) = status(gw.addr, v1_six, &[]).await;
    assert_eq!((v2_four, v2_six, v1_six), (101, 101, 101));
    // The header's client wins over X-Forwarded-For, which it did not write.
    let (spoof, _) = status(
        gw.addr,
        &proxy_v2("198.51.100.1"),
        &[("X-Forwarded-For", "203.0.113.50")],
    )
    .await;
    assert!(spoof == 0 || spoof == 429, "refused, got {spoof}");
    assert_eq!(refused(gw.addr, "per_ip_limit").await, 2.0);

    // A balancer's health check (v1 UNKNOWN) and a plain request pass.
    let mut check = TcpStream::connect(gw.addr).await.unwrap();
    check
        .write_all(
            b"PROXY UNKNOWN\r\nGET /healthz HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
        )
        .await
        .unwrap();
    let mut text = String::new();
    check.read_to_string(&mut text).await.unwrap();
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
}

#[tokio::test]
async fn a_malformed_proxy_header_from_a_trusted_peer_closes() {
    let gw = behind_proxy(10).await;
    let (code, _) = status(gw.addr, b"PROXY TCP4 not-an-address\r\n", &[]).await;
    assert_eq!(code, 0, "closed without a response");
    assert_eq!(refused(gw.addr, "bad_proxy_header").await, 1.0);
}

#[tokio::test]
async fn a_proxy_header_from_an_untrusted_peer_closes() {
    let gw = TestGateway::with(|s| {
        s.trusted_proxies = vec!["10.0.0.0/8".parse().unwrap()];
    })
    .await;
    let (v1, _) = status(gw.addr, b"PROXY TCP4 198.51.100.1 127.0.0.1 1 2\r\n", &[]).await;
    let (v2, _) = status(gw.addr, &proxy_v2("198.51.100.1"), &[]).await;
    assert_eq!((v1, v2), (0, 0), "closed without a response");
    assert_eq!(refused(gw.addr, "untrusted_proxy_header").await, 2.0);
    // Without a header the same peer is served.
    assert_eq!(http_get(gw.addr, "/healthz").await.0, 200);
}

#[tokio::test]
async fn origins_not_on_the_list_get_403() {
    let gw = TestGateway::with(|s| {
        s.allowed_origins = vec!["https://example.com".parse().unwrap()];
    })
    .await;
    let (evil, _) = try_upgrade(gw.addr, b"", &[("Origin", "https://evil.example")]).await;
    let (code, body) = evil.expect("a response");
    assert_eq!(code, 403);
    assert_eq!(body, "this origin may not open WebSockets here\n");
    let (ok, _h1) = status(gw.addr, b"", &[("Origin", "https://example.com")]).await;
    let (upper, _h2) = status(gw.addr, b"", &[("Origin", "https://EXAMPLE.COM")]).await;
    let (none, _h3) = status(gw.addr, b"", &[]).await;
    assert_eq!((ok, upper, none), (101, 101, 101));
    let (port, _) = status(gw.addr, b"", &[("Origin", "https://example.com:8443")]).await;
    assert_eq!(port, 403);
    assert_eq!(refused(gw.addr, "forbidden_origin").await, 2.0);
}
