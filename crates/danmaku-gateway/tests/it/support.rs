//! Test support: in-process gateways on `127.0.0.1:0`, real WebSocket
//! clients, JSON Schema validation of every frame a client sees, and an
//! "eventually" helper instead of sleeps.

use std::collections::VecDeque;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::OnceLock;
use std::time::Duration;

use danmaku_gateway::{GatewayError, Settings};
use danmaku_proto::{decode_server, Format, Hello, ServerEvent};
use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// How long any single expectation may take before the test fails.
pub(crate) const PATIENCE: Duration = Duration::from_secs(10);

/// Settings for tests: everything the defaults have, on a free port, with
/// short heartbeats, moderation state kept in memory (tests that need it
/// on disk give their own `data_dir`), and, since every test client posts
/// from 127.0.0.1, no practical per-address post budget or duplicate check
/// (the moderation tests set their own).
pub(crate) fn settings() -> Settings {
    Settings {
        listen: "127.0.0.1:0".parse().unwrap(),
        heartbeat_interval_ms: 200,
        heartbeat_ttl_ms: 1_000,
        shutdown_grace_ms: 3_000,
        data_dir: String::new(),
        ip_rate_count: 1_000_000,
        ip_burst: 1_000_000,
        duplicate_window_ms: 0,
        ..Settings::default()
    }
}

/// A gateway running in this process.
pub(crate) struct TestGateway {
    /// Where it listens.
    pub addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), GatewayError>>>,
}

impl TestGateway {
    /// Starts a gateway with `settings`.
    pub(crate) async fn start(settings: Settings) -> TestGateway {
        let listener = tokio::net::TcpListener::bind(settings.listen)
            .await
            .unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(danmaku_gateway::run(listener, settings, async move {
            let _ = rx.await;
        }));
        TestGateway {
            addr,
            stop: Some(tx),
            task: Some(task),
        }
    }

    /// Starts a gateway with test settings changed by `f`.
    pub(crate) async fn with(f: impl FnOnce(&mut Settings)) -> TestGateway {
        let mut s = settings();
        f(&mut s);
        TestGateway::start(s).await
    }

    /// `ws://addr/ws/room`.
    pub(crate) fn url(&self, room: &str) -> String {
        format!("ws://{}/ws/{room}", self.addr)
    }

    /// Connects a JSON client to `room` and reads its `hello`.
    pub(crate) async fn join(&self, room: &str) -> Client {
        Client::connect(&self.url(room), None).await
    }

    /// GETs a JSON document from the gateway's HTTP API.
    pub(crate) async fn get_json(&self, path: &str) -> serde_json::Value {
        let (status, body) = http_get(self.addr, path).await;
        assert_eq!(status, 200, "GET {path}: {body}");
        serde_json::from_str(&body).unwrap()
    }

    /// Triggers shutdown and waits for `run` to return.
    pub(crate) async fn stop(mut self) -> Result<(), GatewayError> {
        let _ = self.stop.take().unwrap().send(());
        let task = self.task.take().unwrap();
        tokio::time::timeout(PATIENCE, task)
            .await
            .expect("gateway stops in time")
            .unwrap()
    }
}

impl Drop for TestGateway {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

/// A minimal HTTP/1.1 GET over a fresh connection: status and body.
pub(crate) async fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    http_request(
        addr,
        &format!("GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n"),
    )
    .await
}

/// Sends a raw HTTP request and returns status and body.
pub(crate) async fn http_request(addr: SocketAddr, request: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(request.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    tokio::time::timeout(PATIENCE, s.read_to_end(&mut buf))
        .await
        .unwrap()
        .unwrap();
    parse_response(&buf)
}

/// The status and body of a raw HTTP/1.1 response (0 when there is none).
pub(crate) fn parse_response(bytes: &[u8]) -> (u16, String) {
    let text = String::from_utf8_lossy(bytes).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

/// Retries `check` until it returns `Some`, or fails the test after `PATIENCE`.
pub(crate) async fn eventually<T, F, Fut>(what: &str, check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    danmaku_testkit::eventually(what, PATIENCE, check).await
}

/// The schema validator of every server event, from `proto/schema/`.
pub(crate) fn server_schema() -> &'static jsonschema::Validator {
    static V: OnceLock<jsonschema::Validator> = OnceLock::new();
    V.get_or_init(|| {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../../proto/schema");
        let mut opts = jsonschema::options();
        let mut root = None;
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            let doc: serde_json::Value =
                serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
            let id = doc["$id"].as_str().unwrap().to_owned();
            if path.file_name().unwrap() == "server-event.json" {
                root = Some(doc.clone());
            }
            opts = opts.with_resource(id, jsonschema::Resource::from_contents(doc).unwrap());
        }
        opts.build(&root.expect("server-event.json")).unwrap()
    })
}

/// Fails the test if `frame` does not match the protocol's schemas.
pub(crate) fn assert_valid_frame(frame: &serde_json::Value) {
    let v = server_schema();
    let errors: Vec<String> = v
        .iter_errors(frame)
        .map(|e| format!("{e} at {}", e.instance_path))
        .collect();
    assert!(
        errors.is_empty(),
        "frame violates the schema: {frame}\n{}",
        errors.join("\n")
    );
}

/// What arrived in one frame.
#[derive(Debug)]
pub(crate) enum Received {
    /// One event, possibly a batch (kept whole).
    Event(ServerEvent),
    /// A close frame.
    Close(Option<(u16, String)>),
    /// The connection ended without a close frame.
    Ended,
}

/// A real WebSocket client.
pub(crate) struct Client {
    /// The socket.
    pub ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    /// The negotiated format.
    pub format: Format,
    /// The first event.
    pub hello: Hello,
    /// Events of batches not yet handed out.
    queued: VecDeque<ServerEvent>,
    /// How many frames were batches, and how many events they held.
    pub batches: usize,
    /// Events that came in batches.
    pub batched_events: usize,
    /// The subprotocol the server chose, if any.
    pub protocol: Option<String>,
    nonce: u64,
}

impl Client {
    /// Connects offering `protocols` (none when `None`) and reads `hello`.
    pub(crate) async fn connect(url: &str, protocols: Option<&str>) -> Client {
        let (ws, protocol) = connect_raw(url, protocols)
            .await
            .expect("websocket connects");
        Client::from_parts(ws, protocol).await
    }

    /// Wraps a socket just opened, with the subprotocol the server chose,
    /// and reads `hello`.
    pub(crate) async fn from_parts(
        ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
        protocol: Option<String>,
    ) -> Client {
        let format = match protocol.as_deref() {
            Some(p) => Format::from_subprotocol(p).expect("known subprotocol"),
            None => Format::Json,
        };
        let mut c = Client {
            ws,
            format,
            hello: placeholder_hello(),
            queued: VecDeque::new(),
            batches: 0,
            batched_events: 0,
            protocol,
            nonce: 0,
        };
        match c.recv().await {
            Received::Event(ServerEvent::Hello(h)) => c.hello = h,
            other => panic!("expected hello first, got {other:?}"),
        }
        c
    }

    /// Sends a JSON (or MessagePack, per the format) event built from `json`.
    pub(crate) async fn send_event(&mut self, json: serde_json::Value) {
        let msg = match self.format {
            Format::Json => Message::Text(json.to_string().into()),
            Format::MsgPack => Message::Binary(rmp_serde::to_vec_named(&json).unwrap().into()),
        };
        self.ws.send(msg).await.unwrap();
    }

    /// Posts `text` with a fresh nonce, returned.
    pub(crate) async fn post(&mut self, text: &str) -> String {
        self.nonce += 1;
        let nonce = format!("n{}", self.nonce);
        self.send_event(serde_json::json!({"type": "post", "text": text, "nonce": nonce}))
            .await;
        nonce
    }

    /// Sends a raw message.
    pub(crate) async fn send_raw(&mut self, msg: Message) {
        self.ws.send(msg).await.unwrap();
    }

    /// Sends a text frame whose payload is not UTF-8.
    pub(crate) async fn send_invalid_utf8(&mut self) {
        let frame = Frame::message(vec![0xff, 0xfe, 0x80], OpCode::Data(Data::Text), true);
        self.ws.send(Message::Frame(frame)).await.unwrap();
    }

    /// Reads the next frame, validating its payload against the schemas.
    pub(crate) async fn recv(&mut self) -> Received {
        loop {
            let next = tokio::time::timeout(PATIENCE, self.ws.next())
                .await
                .expect("a frame in time");
            let msg = match next {
                None | Some(Err(_)) => return Received::Ended,
                Some(Ok(m)) => m,
            };
            let (format, bytes) = match &msg {
                Message::Text(t) => (Format::Json, t.as_bytes().to_vec()),
                Message::Binary(b) => (Format::MsgPack, b.to_vec()),
                Message::Close(c) => {
                    return Received::Close(
                        c.as_ref()
                            .map(|c: &CloseFrame| (u16::from(c.code), c.reason.to_string())),
                    )
                }
                _ => continue,
            };
            assert_eq!(
                format, self.format,
                "frame type matches the negotiated subprotocol"
            );
            let value: serde_json::Value = match format {
                Format::Json => serde_json::from_slice(&bytes).unwrap(),
                Format::MsgPack => rmp_serde::from_slice(&bytes).unwrap(),
            };
            assert_valid_frame(&value);
            return Received::Event(decode_server(format, &bytes).unwrap());
        }
    }

    /// The next event, batches unpacked; `online` events are skipped unless
    /// `keep_online`.
    pub(crate) async fn next_event_with(&mut self, keep_online: bool) -> ServerEvent {
        loop {
            let event = match self.queued.pop_front() {
                Some(e) => e,
                None => match self.recv().await {
                    Received::Event(ServerEvent::Batch { items }) => {
                        self.batches += 1;
                        self.batched_events += items.len();
                        self.queued.extend(items);
                        continue;
                    }
                    Received::Event(e) => e,
                    other => panic!("expected an event, got {other:?}"),
                },
            };
            if keep_online || !matches!(event, ServerEvent::Online { .. }) {
                return event;
            }
        }
    }

    /// The next event other than `online`, batches unpacked.
    pub(crate) async fn next_event(&mut self) -> ServerEvent {
        self.next_event_with(false).await
    }

    /// Reads until a close frame; returns its code and reason.
    pub(crate) async fn expect_close(&mut self) -> (u16, String) {
        loop {
            match self.recv().await {
                Received::Close(Some(c)) => return c,
                Received::Close(None) => panic!("close frame without a code"),
                Received::Ended => panic!("connection ended without a close frame"),
                Received::Event(_) => continue,
            }
        }
    }
}

fn placeholder_hello() -> Hello {
    Hello {
        room: String::new(),
        user: String::new(),
        name: None,
        role: None,
        online: 0,
        server: String::new(),
        limits: danmaku_proto::Limits {
            max_text_chars: 0,
            max_frame_bytes: 0,
            max_nonce_bytes: 0,
            post_rate_count: 0,
            post_window_ms: 0,
            post_burst: 0,
        },
        recent: Vec::new(),
    }
}

/// Opens a WebSocket offering `protocols`; returns the socket and the chosen
/// subprotocol, or the handshake error (an HTTP refusal carries its status).
pub(crate) async fn connect_raw(
    url: &str,
    protocols: Option<&str>,
) -> Result<
    (WebSocketStream<MaybeTlsStream<TcpStream>>, Option<String>),
    tokio_tungstenite::tungstenite::Error,
> {
    let mut request = url.into_client_request().unwrap();
    if let Some(p) = protocols {
        request
            .headers_mut()
            .insert("Sec-WebSocket-Protocol", HeaderValue::from_str(p).unwrap());
    }
    let (ws, response) = tokio_tungstenite::connect_async(request).await?;
    let protocol = response
        .headers()
        .get("Sec-WebSocket-Protocol")
        .map(|v| v.to_str().unwrap().to_owned());
    Ok((ws, protocol))
}

/// The HTTP status of a refused WebSocket handshake.
pub(crate) async fn refused_status(url: &str) -> (u16, String) {
    http_refusal(connect_raw(url, None).await)
}

/// The status and body of a handshake the server refused over HTTP; fails
/// the test if it was not refused that way.
pub(crate) fn http_refusal<T>(
    handshake: Result<T, tokio_tungstenite::tungstenite::Error>,
) -> (u16, String) {
    match handshake {
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
            let body = resp
                .body()
                .as_ref()
                .map(|b| String::from_utf8_lossy(b).into_owned())
                .unwrap_or_default();
            (resp.status().as_u16(), body)
        }
        Err(e) => panic!("expected an HTTP refusal, got {e}"),
        Ok(_) => panic!("expected an HTTP refusal, the upgrade succeeded"),
    }
}

/// A gateway binary running as a child process, for what only a real
/// process shows (being SIGKILLed). Killed on drop.
pub(crate) struct GatewayProcess {
    /// Where it listens, from its "Gateway listening" log line.
    pub addr: SocketAddr,
    child: std::process::Child,
}

impl GatewayProcess {
    /// Starts the gateway binary with JSON logs, `DANMAKU_INSTANCE_ID` set
    /// to `instance_id`, `DANMAKU_LISTEN` on a free port, plus `env`; waits
    /// until it says it listens.
    pub(crate) async fn spawn(instance_id: &str, env: &[(&str, &str)]) -> GatewayProcess {
        Self::spawn_limited(instance_id, env, None).await
    }

    /// Like `spawn`, with at most `fd_limit` open file descriptors (the
    /// shell's `ulimit -n`) when given.
    pub(crate) async fn spawn_limited(
        instance_id: &str,
        env: &[(&str, &str)],
        fd_limit: Option<u32>,
    ) -> GatewayProcess {
        use std::io::{BufRead, BufReader};
        use std::process::{Command, Stdio};
        let binary = env!("CARGO_BIN_EXE_danmaku-gateway");
        let mut command = match fd_limit {
            None => Command::new(binary),
            Some(n) => {
                let mut sh = Command::new("sh");
                sh.args(["-c", &format!("ulimit -n {n} && exec \"$0\""), binary]);
                sh
            }
        };
        let mut child = command
            .env("DANMAKU_LISTEN", "127.0.0.1:0")
            .env("DANMAKU_INSTANCE_ID", instance_id)
            .env("DANMAKU_LOG_FORMAT", "json")
            .env("RUST_LOG", "info")
            .env("DANMAKU_DATA_DIR", "")
            .env("DANMAKU_IP_RATE_COUNT", "1000000")
            .env("DANMAKU_IP_BURST", "1000000")
            .env("DANMAKU_DUPLICATE_WINDOW_MS", "0")
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let addr = tokio::task::spawn_blocking(move || {
            let mut lines = BufReader::new(stdout).lines();
            for line in lines.by_ref() {
                let Ok(v) = serde_json::from_str::<serde_json::Value>(&line.unwrap()) else {
                    continue;
                };
                if v["fields"]["message"] == "Gateway listening" {
                    let addr: SocketAddr = v["fields"]["addr"].as_str().unwrap().parse().unwrap();
                    // Keep draining so the child never blocks on a full pipe.
                    std::thread::spawn(move || for _ in lines {});
                    return Some(addr);
                }
            }
            None
        });
        let addr = tokio::time::timeout(PATIENCE, addr)
            .await
            .expect("the gateway process starts in time")
            .unwrap()
            .expect("the gateway process said it was listening");
        GatewayProcess { addr, child }
    }

    /// `ws://addr/ws/room`.
    pub(crate) fn url(&self, room: &str) -> String {
        format!("ws://{}/ws/{room}", self.addr)
    }

    /// Kills it with SIGKILL, as a crash or the OOM killer would: no
    /// goodbye to anyone, and waits for it to be gone.
    pub(crate) fn kill(&mut self) {
        self.signal("KILL");
        self.child.wait().unwrap();
    }

    /// Sends it a signal by name (`TERM`, `INT`, `KILL`).
    pub(crate) fn signal(&self, name: &str) {
        let status = std::process::Command::new("kill")
            .args([format!("-{name}"), self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// Waits for it to exit and returns how it did, failing after `PATIENCE`.
    pub(crate) async fn wait(mut self) -> std::process::ExitStatus {
        let deadline = std::time::Instant::now() + PATIENCE;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the gateway process did not exit"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for GatewayProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The status and body of `GET /readyz`.
pub(crate) async fn readyz(addr: SocketAddr) -> (u16, String) {
    http_get(addr, "/readyz").await
}

/// Waits until `GET /readyz` answers 200.
pub(crate) async fn until_ready(addr: SocketAddr) {
    eventually("/readyz answers 200", || async {
        (readyz(addr).await.0 == 200).then_some(())
    })
    .await;
}
