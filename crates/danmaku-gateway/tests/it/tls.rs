//! TLS served by the gateway itself (`tls_cert_file`, `tls_key_file`):
//! `wss://` and `https://` with a certificate the test makes with rcgen,
//! what happens to plain clients and silent ones on a TLS port, and the
//! settings that refuse to start.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use rustls_pki_types::{CertificateDer, ServerName};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use crate::support::{eventually, settings, TestGateway, PATIENCE};

/// A self-signed certificate for `localhost` and 127.0.0.1, written as PEM
/// into a directory of its own.
struct Certs {
    dir: PathBuf,
    cert_file: String,
    key_file: String,
    cert: CertificateDer<'static>,
}

impl Certs {
    fn new(name: &str) -> Certs {
        let dir = std::env::temp_dir().join(format!(
            "danmaku-tls-{name}-{}-{}",
            std::process::id(),
            rand::random::<u64>()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let made = rcgen::generate_simple_self_signed(vec![
            "localhost".to_owned(),
            "127.0.0.1".to_owned(),
        ])
        .unwrap();
        let cert_file = dir.join("cert.pem");
        let key_file = dir.join("key.pem");
        std::fs::write(&cert_file, made.cert.pem()).unwrap();
        std::fs::write(&key_file, made.signing_key.serialize_pem()).unwrap();
        Certs {
            cert_file: cert_file.to_string_lossy().into_owned(),
            key_file: key_file.to_string_lossy().into_owned(),
            cert: made.cert.der().clone(),
            dir,
        }
    }

    /// A gateway serving TLS with this certificate.
    async fn gateway(&self) -> TestGateway {
        TestGateway::with(|s| {
            s.tls_cert_file = self.cert_file.clone();
            s.tls_key_file = self.key_file.clone();
            s.http_header_timeout_ms = 300;
        })
        .await
    }

    /// A client that trusts only this certificate and offers `http/1.1`.
    fn connector(&self) -> TlsConnector {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.cert.clone()).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        TlsConnector::from(Arc::new(config))
    }

    /// A TLS connection to `addr` as `localhost`, handshake done.
    async fn connect(&self, addr: SocketAddr) -> TlsStream<TcpStream> {
        let tcp = TcpStream::connect(addr).await.unwrap();
        let name = ServerName::try_from("localhost").unwrap();
        tokio::time::timeout(PATIENCE, self.connector().connect(name, tcp))
            .await
            .expect("TLS handshake in time")
            .expect("TLS handshake succeeds")
    }

    /// An HTTP/1.1 GET over TLS: status and body.
    async fn get(&self, addr: SocketAddr, path: &str) -> (u16, String) {
        let mut s = self.connect(addr).await;
        let request =
            format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
        s.write_all(request.as_bytes()).await.unwrap();
        let mut buf = Vec::new();
        // A peer closing without close_notify is an error to rustls; what
        // arrived before it is still the whole response.
        let _ = tokio::time::timeout(PATIENCE, s.read_to_end(&mut buf))
            .await
            .expect("response in time");
        crate::support::parse_response(&buf)
    }

    /// `danmaku_connections_refused_total` for `reason`, read over TLS.
    async fn refused(&self, addr: SocketAddr, reason: &str) -> f64 {
        let (status, text) = self.get(addr, "/metrics").await;
        assert_eq!(status, 200);
        let series = format!("danmaku_connections_refused_total{{reason=\"{reason}\"}} ");
        text.lines()
            .find_map(|l| l.strip_prefix(&series)?.parse().ok())
            .unwrap_or_else(|| panic!("{series} missing"))
    }
}

impl Drop for Certs {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The next server event as JSON, batches unpacked into `pending`.
async fn next_event(
    ws: &mut WebSocketStream<TlsStream<TcpStream>>,
    pending: &mut Vec<Value>,
) -> Value {
    loop {
        if !pending.is_empty() {
            return pending.remove(0);
        }
        let msg = tokio::time::timeout(PATIENCE, ws.next())
            .await
            .expect("a frame in time")
            .expect("the socket stays open")
            .expect("a valid frame");
        let Message::Text(text) = msg else { continue };
        let event: Value = serde_json::from_str(text.as_str()).unwrap();
        crate::support::assert_valid_frame(&event);
        match event["type"].as_str() {
            Some("batch") => pending.extend(event["items"].as_array().unwrap().iter().cloned()),
            Some("online") => {}
            _ => return event,
        }
    }
}

#[tokio::test]
async fn a_comment_goes_round_over_wss() {
    let certs = Certs::new("wss");
    let gw = certs.gateway().await;
    let tls = certs.connect(gw.addr).await;
    assert_eq!(
        tls.get_ref().1.alpn_protocol(),
        Some(&b"http/1.1"[..]),
        "ALPN settles on http/1.1"
    );
    let url = format!("wss://localhost:{}/ws/secure", gw.addr.port());
    let (mut ws, _) = tokio_tungstenite::client_async(url, tls)
        .await
        .expect("WebSocket upgrade over TLS");
    let mut pending = Vec::new();
    let hello = next_event(&mut ws, &mut pending).await;
    assert_eq!(hello["type"], "hello", "{hello}");
    assert_eq!(hello["room"], "secure", "{hello}");
    let post = json!({"type": "post", "text": "over TLS", "nonce": "t1"});
    ws.send(Message::Text(post.to_string().into()))
        .await
        .unwrap();
    let (mut acked, mut seen) = (None, None);
    while acked.is_none() || seen.is_none() {
        let event = next_event(&mut ws, &mut pending).await;
        match event["type"].as_str() {
            Some("ack") => {
                assert_eq!(event["nonce"], "t1", "{event}");
                acked = Some(event["id"].clone());
            }
            Some("danmaku") => {
                assert_eq!(event["text"], "over TLS", "{event}");
                seen = Some(event["id"].clone());
            }
            _ => panic!("unexpected {event}"),
        }
    }
    assert_eq!(acked, seen, "the ack names the comment that came back");
    drop(ws);
    gw.stop().await.unwrap();
}

#[tokio::test]
async fn healthz_answers_over_https_and_plain_clients_are_refused() {
    let certs = Certs::new("https");
    let gw = certs.gateway().await;
    let (status, body) = certs.get(gw.addr, "/healthz").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(certs.refused(gw.addr, "tls_handshake").await, 0.0);
    // A plain WebSocket client gets no WebSocket from a TLS port.
    let plain = tokio::time::timeout(
        PATIENCE,
        tokio_tungstenite::connect_async(format!("ws://{}/ws/secure", gw.addr)),
    )
    .await
    .expect("the plain attempt ends in time");
    assert!(plain.is_err(), "ws:// to a TLS port must fail");
    eventually("the failed handshake is counted", || async {
        (certs.refused(gw.addr, "tls_handshake").await >= 1.0).then_some(())
    })
    .await;
}

#[tokio::test]
async fn a_client_that_never_says_hello_is_closed_at_the_header_timeout() {
    let certs = Certs::new("silent");
    let gw = certs.gateway().await;
    let started = tokio::time::Instant::now();
    let mut silent = TcpStream::connect(gw.addr).await.unwrap();
    let mut buf = [0u8; 16];
    let read = tokio::time::timeout(PATIENCE, silent.read(&mut buf))
        .await
        .expect("closed in time");
    assert!(
        matches!(read, Ok(0) | Err(_)),
        "closed without a byte: {read:?}"
    );
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(250) && took < Duration::from_secs(3),
        "closed after {took:?}, not at the 300 ms header timeout"
    );
    assert!(certs.refused(gw.addr, "header_timeout").await >= 1.0);
}

/// `run` with these settings fails before serving; its error, as text.
async fn start_error(s: danmaku_gateway::Settings) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    tokio::time::timeout(
        PATIENCE,
        danmaku_gateway::run(listener, s, std::future::pending()),
    )
    .await
    .expect("refuses at once")
    .expect_err("must not start")
    .to_string()
}

#[tokio::test]
async fn unusable_files_stop_the_start_naming_the_file() {
    let certs = Certs::new("bad");
    let bad_key = certs.dir.join("bad-key.pem");
    std::fs::write(&bad_key, "not a key\n").unwrap();
    let bad_key = bad_key.to_string_lossy().into_owned();
    let mut s = settings();
    s.tls_cert_file = certs.cert_file.clone();
    s.tls_key_file = bad_key.clone();
    let err = start_error(s).await;
    assert!(
        err.contains("tls_key_file") && err.contains(&bad_key),
        "{err}"
    );

    let missing = certs.dir.join("missing.pem").to_string_lossy().into_owned();
    let mut s = settings();
    s.tls_cert_file = missing.clone();
    s.tls_key_file = certs.key_file.clone();
    let err = start_error(s).await;
    assert!(
        err.contains("tls_cert_file") && err.contains(&missing),
        "{err}"
    );

    // A key that parses but is not the certificate's.
    let other = Certs::new("other");
    let mut s = settings();
    s.tls_cert_file = certs.cert_file.clone();
    s.tls_key_file = other.key_file.clone();
    let err = start_error(s).await;
    assert!(err.contains(&other.key_file), "{err}");
}

#[test]
fn one_tls_setting_without_the_other_is_a_config_error() {
    let load = |var: &str| {
        danmaku_gateway::Settings::load(None, vec![(var.to_owned(), "/some/file.pem".to_owned())])
            .expect_err("half a TLS setup must not load")
            .to_string()
    };
    let err = load("DANMAKU_TLS_CERT_FILE");
    assert!(err.contains("tls_key_file"), "{err}");
    let err = load("DANMAKU_TLS_KEY_FILE");
    assert!(err.contains("tls_cert_file"), "{err}");
}
