//! One simulated viewer: a task that connects, reads every frame the gateway
//! sends and counts our comments in it, and, if it is one of its room's
//! posters, posts on a fixed schedule.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use danmaku_proto::{ClientEvent, Format, Nonce, Post, ServerEvent};
use parking_lot::Mutex;
use tokio::net::TcpSocket;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::reconnect::{self, hint_ms, Received};
use crate::scan::{classify, post_text, FrameKind, Scanner};
use crate::stats::Stats;
use crate::tiers::{Meter, SETTLE_US};
use crate::ws::{Client, Incoming, WsError, OP_BINARY, OP_TEXT};

/// Posts one poster sends back to back at most when it fell behind its
/// schedule; the rest of the backlog is skipped rather than bursted.
const MAX_CATCH_UP: u32 = 64;

/// Where the run is; every connection task watches it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Phase {
    /// Connections are being opened; nobody posts.
    Connecting,
    /// Posters post from `start` until `end`.
    Posting {
        /// First post.
        start: Instant,
        /// No post at or after this.
        end: Instant,
    },
    /// Close every connection.
    Stop,
}

/// A gateway to connect to.
#[derive(Debug, Clone)]
pub(crate) struct Target {
    /// Its resolved address.
    pub addr: SocketAddr,
    /// As given on the command line, for the `Host` header and the URL.
    pub host: String,
}

/// Settings shared by every connection.
pub(crate) struct Shared {
    /// Counters of the run.
    pub stats: Arc<Stats>,
    /// Finds our comments in frames.
    pub scanner: Scanner,
    /// The encoding every connection asks for.
    pub format: Format,
    /// Room ids by index.
    pub rooms: Vec<String>,
    /// How long one connect-and-hello may take.
    pub connect_timeout: Duration,
    /// The run's phase.
    pub phase: watch::Receiver<Phase>,
    /// Whether to offer `permessage-deflate`.
    pub deflate: bool,
    /// Whole seconds of posting, over which tiers are measured.
    pub posting_seconds: usize,
    /// Follow a 1001 to the next address instead of ending.
    pub reconnect: bool,
    /// Every address, `--gateway` ones first, then `--standby` ones: where
    /// a viewer goes after a 1001.
    pub targets: Vec<Arc<Target>>,
    /// Size of the post table, for the per-viewer record of receipts.
    pub max_posts: usize,
}

/// A poster's place in its room's schedule.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Schedule {
    /// Time between two posts of this poster.
    pub interval: Duration,
    /// Delay of its first post after posting starts.
    pub offset: Duration,
}

/// What one connection does.
#[derive(Debug, Clone)]
pub(crate) struct Plan {
    /// The gateway it connects to.
    pub target: Arc<Target>,
    /// Local address to bind before connecting, if any.
    pub source: Option<IpAddr>,
    /// Index of its room.
    pub room: usize,
    /// Set for posters.
    pub poster: Option<Schedule>,
    /// Varies the WebSocket masking keys between connections.
    pub seed: u32,
    /// The `density` to ask for, if any (0: unlimited).
    pub density: Option<u32>,
    /// Whether to record the exact set of comments received.
    pub record: bool,
}

/// What `hello` says that a run needs.
#[derive(Debug, Default, serde::Deserialize)]
struct HelloFields {
    /// The density tier granted; absent from servers without tiers.
    #[serde(default)]
    density: Option<u32>,
}

/// Microseconds since the Unix epoch.
pub(crate) fn unix_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

/// Why a connection never got its `hello`. The messages, with their first
/// cause, end up in the report's list of reasons.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ConnectError {
    /// The socket could not be created.
    #[error("socket")]
    Socket(#[source] std::io::Error),
    /// The source address could not be bound.
    #[error("bind {0}")]
    Bind(IpAddr, #[source] std::io::Error),
    /// The TCP connection failed.
    #[error("tcp")]
    Tcp(#[source] std::io::Error),
    /// `TCP_NODELAY` could not be set.
    #[error("nodelay")]
    NoDelay(#[source] std::io::Error),
    /// The WebSocket handshake failed.
    #[error(transparent)]
    Handshake(WsError),
    /// Reading or answering frames before `hello` failed.
    #[error("reading hello")]
    ReadingHello(#[source] WsError),
    /// The first frame was not `hello`.
    #[error("first frame was {0:?}, not hello")]
    NotHello(FrameKind),
    /// The server closed before `hello`, with this close frame.
    #[error("closed before hello: {0}")]
    ClosedBeforeHello(String),
    /// The connection ended before `hello`, without a close frame.
    #[error("closed before hello")]
    EndedBeforeHello,
}

/// Runs one connection until the run stops or the gateway closes it.
pub(crate) async fn run(shared: Arc<Shared>, plan: Plan) {
    let stats = &shared.stats;
    let connected = tokio::time::timeout(
        shared.connect_timeout,
        connect(&shared, &plan, &plan.target),
    )
    .await;
    let (mut client, granted) = match connected {
        Ok(Ok(up)) => up,
        Ok(Err(e)) => {
            stats.failed.fetch_add(1, Relaxed);
            stats.reason(format!("connect failed: {}", short_error(&e)));
            return;
        }
        Err(_) => {
            stats.failed.fetch_add(1, Relaxed);
            stats.reason("connect failed: timed out before hello");
            return;
        }
    };
    if shared.deflate && !client.deflate() {
        stats.reason("permessage-deflate offered but not accepted");
    }
    // A viewer with a density limit gets a sample: it does not count
    // against a post's expected deliveries.
    let counted = granted.unwrap_or(0) == 0;
    stats.joined(plan.room, counted);
    let conn = Conn {
        shared: &shared,
        plan: &plan,
        counted,
        meter: Mutex::new(Meter::new(plan.record)),
        posting: Mutex::new(None),
        storm: Mutex::new(shared.reconnect.then(|| reconnect::Viewer {
            room: plan.room,
            hellos: vec![unix_micros()],
            received: Received::new(shared.max_posts),
            ..reconnect::Viewer::default()
        })),
    };
    let mut target = plan.target.clone();
    let end = loop {
        let end = conn.serve(&mut client).await;
        let going_away = matches!(&end, Err(e) if e.close.as_ref().is_some_and(|c| c.0 == 1001));
        if !(shared.reconnect && going_away) {
            break end;
        }
        // Sent away by a draining gateway: go to the next address, after
        // the delay the close asked for.
        let closed_at = unix_micros();
        let hint = end
            .as_ref()
            .err()
            .and_then(|e| e.close.as_ref())
            .and_then(|(_, reason)| hint_ms(reason));
        tokio::time::sleep(Duration::from_millis(hint.unwrap_or(0))).await;
        match reconnect(&shared, &plan, &mut target).await {
            Some((next, handshake_us)) => {
                client = next;
                stats.reconnected.fetch_add(1, Relaxed);
                if let Some(v) = conn.storm.lock().as_mut() {
                    v.closes.push(closed_at);
                    v.hellos.push(unix_micros());
                    v.handshakes.push(handshake_us);
                    v.first_after_back = None;
                }
            }
            None => {
                break Err(Ended {
                    reason: "no address took it back after a 1001".into(),
                    close: None,
                })
            }
        }
    };
    stats.left(plan.room, counted);
    if let Some(density) = granted.filter(|_| plan.density.is_some()) {
        let meter = std::mem::take(&mut *conn.meter.lock());
        stats
            .tiers
            .lock()
            .add(density, &target.host, meter, shared.posting_seconds);
    }
    if let Some(v) = conn.storm.lock().take() {
        stats.viewers.lock().push(v);
    }
    match end {
        // Stopped by the run: close politely, but don't wait long.
        Ok(()) => {
            let _ = tokio::time::timeout(Duration::from_secs(2), client.close()).await;
        }
        Err(why) => {
            stats.closed_early.fetch_add(1, Relaxed);
            stats.reason(format!("closed early: {}", why.reason));
        }
    }
}

/// Attempts after a 1001 before a viewer gives up: a few rounds over every
/// address.
const RECONNECT_ROUNDS: usize = 3;

/// Connects to the address after `target`, then the ones after it, until
/// one gives a `hello`; returns the client and the handshake time in µs,
/// and leaves `target` at the address that took it.
async fn reconnect(
    shared: &Shared,
    plan: &Plan,
    target: &mut Arc<Target>,
) -> Option<(Client, u64)> {
    let n = shared.targets.len();
    let mut at = shared
        .targets
        .iter()
        .position(|t| Arc::ptr_eq(t, target))
        .unwrap_or(0);
    for attempt in 0..RECONNECT_ROUNDS * n {
        at = (at + 1) % n;
        if attempt > 0 {
            // Jittered, so failed attempts do not return in step.
            let ms = 100 + u64::from(plan.seed.wrapping_add(attempt as u32) % 200);
            tokio::time::sleep(Duration::from_millis(ms)).await;
        }
        let next = shared.targets[at].clone();
        let started = Instant::now();
        let attempt = tokio::time::timeout(shared.connect_timeout, connect(shared, plan, &next));
        match attempt.await {
            Ok(Ok((client, _))) => {
                *target = next;
                return Some((client, started.elapsed().as_micros() as u64));
            }
            Ok(Err(e)) => shared
                .stats
                .reason(format!("reconnect failed: {}", short_error(&e))),
            Err(_) => shared
                .stats
                .reason("reconnect failed: timed out before hello"),
        }
    }
    None
}

/// How a connection ended early: why, and the server's close frame if any.
#[derive(Debug)]
struct Ended {
    reason: String,
    close: Option<(u16, String)>,
}

impl From<String> for Ended {
    fn from(reason: String) -> Ended {
        Ended {
            reason,
            close: None,
        }
    }
}

/// Opens the socket, upgrades it and waits for `hello`; returns the client
/// and the density `hello` granted, if it said.
async fn connect(
    shared: &Shared,
    plan: &Plan,
    target: &Target,
) -> Result<(Client, Option<u32>), ConnectError> {
    let addr = target.addr;
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()
    } else {
        TcpSocket::new_v6()
    }
    .map_err(ConnectError::Socket)?;
    if let Some(ip) = plan.source {
        socket
            .bind(SocketAddr::new(ip, 0))
            .map_err(|e| ConnectError::Bind(ip, e))?;
    }
    let tcp = socket.connect(addr).await.map_err(ConnectError::Tcp)?;
    tcp.set_nodelay(true).map_err(ConnectError::NoDelay)?;
    let path = match plan.density {
        Some(d) => format!("/ws/{}?density={d}", shared.rooms[plan.room]),
        None => format!("/ws/{}", shared.rooms[plan.room]),
    };
    let mut client = Client::handshake(
        tcp,
        &target.host,
        &path,
        shared.format.subprotocol(),
        plan.seed,
        shared.deflate,
    )
    .await
    .map_err(ConnectError::Handshake)?;
    // The first message must be `hello`. It may have come in with the
    // handshake response, so look at what is buffered before reading.
    let mut n = usize::MAX;
    let mut granted = None;
    loop {
        let mut first: Option<Result<(), ConnectError>> = None;
        let closed = client
            .process(|m| {
                if first.is_some() {
                    // Frames right behind hello are rare; they are old news.
                    return;
                }
                first = Some(match m {
                    Incoming::Data { text, payload } => {
                        let format = if text { Format::Json } else { Format::MsgPack };
                        shared.stats.frame(payload.len(), 0, |_| ());
                        match classify(format, payload) {
                            FrameKind::Hello => {
                                granted = hello_fields(format, payload).density;
                                Ok(())
                            }
                            other => Err(ConnectError::NotHello(other)),
                        }
                    }
                    Incoming::Close(c) => {
                        Err(ConnectError::ClosedBeforeHello(close_reason(c.as_ref())))
                    }
                });
            })
            .await
            .map_err(ConnectError::ReadingHello)?;
        match first {
            Some(result) => return result.map(|()| (client, granted)),
            None if closed || n == 0 => return Err(ConnectError::EndedBeforeHello),
            None => {
                n = client
                    .read()
                    .await
                    .map_err(|e| ConnectError::ReadingHello(e.into()))?;
                shared.stats.wire(n);
            }
        }
    }
}

/// The fields of `hello` a run needs; defaults when it cannot be read.
fn hello_fields(format: Format, payload: &[u8]) -> HelloFields {
    match format {
        Format::Json => serde_json::from_slice(payload).unwrap_or_default(),
        Format::MsgPack => rmp_serde::from_slice(payload).unwrap_or_default(),
    }
}

/// The error with its first cause, kept short.
fn short_error(e: &dyn std::error::Error) -> String {
    match e.source() {
        Some(cause) => format!("{e}: {cause}"),
        None => e.to_string(),
    }
}

/// The error with all its causes, `: `-separated.
fn full_error(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        out.push_str(": ");
        out.push_str(&c.to_string());
        cause = c.source();
    }
    out
}

fn close_reason(close: Option<&(u16, String)>) -> String {
    match close {
        Some((code, reason)) => format!("close {code} {reason}"),
        None => "close without code".into(),
    }
}

/// The next phase of the run (the current one if `first`), with the
/// receiver to wait for the one after; `None` once the run is gone.
async fn next_phase(
    mut rx: watch::Receiver<Phase>,
    first: bool,
) -> (watch::Receiver<Phase>, Option<Phase>) {
    if !first && rx.changed().await.is_err() {
        return (rx, None);
    }
    let phase = *rx.borrow_and_update();
    (rx, Some(phase))
}

/// An established connection.
struct Conn<'a> {
    shared: &'a Shared,
    plan: &'a Plan,
    /// Whether its deliveries count against expected deliveries.
    counted: bool,
    /// Its deliveries per second and, if recorded, the set received; only
    /// this connection's task takes the lock.
    meter: Mutex<Meter>,
    /// When posting began: on the runtime's clock and in Unix µs.
    posting: Mutex<Option<(Instant, u64)>>,
    /// With `--reconnect`: its connections and the comments it received.
    storm: Mutex<Option<reconnect::Viewer>>,
}

impl Conn<'_> {
    /// Reads and posts until the run stops (`Ok`) or the connection ends
    /// (`Err` with the reason).
    async fn serve(&self, client: &mut Client) -> Result<(), Ended> {
        // One waiter on the phase for the whole life of the connection,
        // rather than a new one per frame.
        let mut phase = Box::pin(next_phase(self.shared.phase.clone(), true));
        let far = Instant::now() + Duration::from_secs(86_400 * 365);
        let timer = tokio::time::sleep_until(far);
        tokio::pin!(timer);
        let mut next_post: Option<Instant> = None;
        let mut post_end = far;
        loop {
            // Biased: the post timer comes before reading, or a busy
            // socket would starve its poster.
            tokio::select! {
                biased;
                (rx, changed) = &mut phase => {
                    let Some(now) = changed else {
                        return Ok(());
                    };
                    phase.set(next_phase(rx, false));
                    match now {
                        Phase::Connecting => {}
                        Phase::Stop => return Ok(()),
                        Phase::Posting { start, end } => {
                            let until = start.saturating_duration_since(Instant::now());
                            let start_us = unix_micros() + until.as_micros() as u64;
                            *self.posting.lock() = Some((start, start_us));
                            if let Some(s) = self.plan.poster.filter(|s| !s.interval.is_zero()) {
                                let mut first = start + s.offset;
                                // Back after a reconnect: the next slot
                                // from now, not a burst of missed ones.
                                let now = Instant::now();
                                while first < now && first < end {
                                    first += s.interval;
                                }
                                next_post = Some(first);
                                post_end = end;
                                timer.as_mut().reset(first);
                            }
                        }
                    }
                }
                () = &mut timer, if next_post.is_some() => {
                    let interval = self.plan.poster.map_or(Duration::ZERO, |s| s.interval);
                    let mut next = next_post.take().expect("guarded by the branch condition");
                    let now = Instant::now();
                    let mut sent = 0;
                    while next <= now && next < post_end && sent < MAX_CATCH_UP {
                        let Some(seq) = self.shared.stats.next_post(self.plan.room) else {
                            next = post_end;
                            break;
                        };
                        let (opcode, frame) = encode_post(self.shared.format, seq);
                        client.queue(opcode, &frame);
                        next += interval;
                        sent += 1;
                    }
                    // Skip a backlog too large to catch up with.
                    while next <= now {
                        next += interval;
                    }
                    client
                        .flush()
                        .await
                        .map_err(|e| Ended::from(format!("write error: {e}")))?;
                    if next < post_end {
                        next_post = Some(next);
                        timer.as_mut().reset(next);
                    }
                }
                read = client.read() => {
                    let n = read.map_err(|e| Ended::from(format!("read error: {e}")))?;
                    self.shared.stats.wire(n);
                    let mut closed = None;
                    client
                        .process(|m| match m {
                            Incoming::Data { text: true, payload } => {
                                self.on_frame(Format::Json, payload);
                            }
                            Incoming::Data { text: false, payload } => {
                                self.on_frame(Format::MsgPack, payload);
                            }
                            Incoming::Close(c) => closed = Some(c),
                        })
                        .await
                        .map_err(|e| Ended::from(format!("read error: {}", full_error(&e))))?;
                    if let Some(close) = closed {
                        return Err(Ended {
                            reason: close_reason(close.as_ref()),
                            close,
                        });
                    }
                    if n == 0 {
                        return Err(Ended::from(
                            "connection ended without a close frame".to_owned(),
                        ));
                    }
                }
            }
        }
    }

    /// Handles one data frame.
    fn on_frame(&self, format: Format, bytes: &[u8]) {
        let stats = &self.shared.stats;
        let kind = classify(format, bytes);
        if kind.carries_comments() {
            let now_us = unix_micros();
            let posting = *self.posting.lock();
            let second = posting.and_then(|(start, _)| {
                let now = Instant::now();
                (now >= start).then(|| (now - start).as_secs() as usize)
            });
            let settled_from = posting.map_or(u64::MAX, |(_, us)| us + SETTLE_US);
            let mut meter = self.meter.lock();
            let mut storm = self.storm.lock();
            stats.frame(bytes.len(), now_us, |rec| {
                self.shared.scanner.scan(format, bytes, |m| {
                    rec.delivery(m.sent_us, m.seq, self.counted);
                    meter.delivery(second, m.seq, m.sent_us >= settled_from);
                    if let Some(v) = storm.as_mut() {
                        v.received.set(m.seq);
                        v.first_after_back.get_or_insert(now_us);
                    }
                });
            });
            return;
        }
        stats.frame(bytes.len(), 0, |_| ());
        match kind {
            FrameKind::Ack | FrameKind::Reject | FrameKind::Error => self.on_answer(format, bytes),
            // A second hello would be a gateway bug; its recent list is old news anyway.
            _ => {}
        }
    }

    /// Decodes a rare answer frame in full.
    fn on_answer(&self, format: Format, bytes: &[u8]) {
        let stats = &self.shared.stats;
        match danmaku_proto::decode_server(format, bytes) {
            Ok(ServerEvent::Ack { nonce, .. }) => stats.answered(parse_nonce(nonce), true),
            Ok(ServerEvent::Reject { nonce, code, .. }) => {
                stats.answered(parse_nonce(nonce), false);
                stats.reason(format!("post rejected: {}", code.as_str()));
            }
            Ok(ServerEvent::Error { message, .. }) => {
                stats.errors.fetch_add(1, Relaxed);
                stats.reason(format!("error event: {message}"));
            }
            Ok(_) => {}
            Err(e) => stats.reason(format!("undecodable answer: {e}")),
        }
    }
}

/// The sequence number an echoed nonce carries, if it is one of ours.
fn parse_nonce(nonce: Option<Nonce>) -> Option<u64> {
    nonce?.as_str().parse().ok()
}

/// The `post` frame for sequence number `seq`, stamped with the time now:
/// its opcode and payload.
pub(crate) fn encode_post(format: Format, seq: u64) -> (u8, Vec<u8>) {
    let event = ClientEvent::Post(Post {
        text: post_text(unix_micros(), seq),
        color: None,
        mode: None,
        nonce: Some(seq.to_string()),
    });
    match format {
        Format::Json => (
            OP_TEXT,
            serde_json::to_vec(&event).expect("a post serializes to JSON"),
        ),
        Format::MsgPack => (
            OP_BINARY,
            rmp_serde::to_vec_named(&event).expect("a post serializes to MessagePack"),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use danmaku_proto::{encode, Hello, Limits};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio_tungstenite::tungstenite::handshake::derive_accept_key;

    fn hello_frame() -> Vec<u8> {
        let hello = ServerEvent::Hello(Hello {
            room: "lg-0".into(),
            user: "guest-abc123".into(),
            name: None,
            role: None,
            online: 1,
            server: "fake".into(),
            limits: Limits {
                max_text_chars: 100,
                max_frame_bytes: 4096,
                max_nonce_bytes: 64,
                post_rate_count: 5,
                post_window_ms: 10_000,
                post_burst: 3,
            },
            recent: Vec::new(),
        });
        let payload = encode(Format::Json, &hello).as_bytes().to_vec();
        let mut frame = vec![0x81, 126];
        frame.extend_from_slice(&(payload.len() as u16).to_be_bytes());
        frame.extend_from_slice(&payload);
        frame
    }

    /// A server that answers the upgrade and sends `hello` in the same
    /// write, then stays silent.
    async fn eager_server() -> (SocketAddr, tokio::task::JoinHandle<()>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            let (mut tcp, _) = listener.accept().await.unwrap();
            let mut request = Vec::new();
            while memchr::memmem::find(&request, b"\r\n\r\n").is_none() {
                let mut chunk = [0u8; 1024];
                let n = tcp.read(&mut chunk).await.unwrap();
                request.extend_from_slice(&chunk[..n]);
            }
            let request = String::from_utf8(request).unwrap();
            assert!(
                request.starts_with("GET /ws/lg-0 HTTP/1.1\r\n"),
                "{request}"
            );
            let key = request
                .lines()
                .find_map(|l| l.strip_prefix("Sec-WebSocket-Key: "))
                .unwrap();
            let mut out = format!(
                "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
                 Sec-WebSocket-Accept: {}\r\nSec-WebSocket-Protocol: danmaku.v1.json\r\n\r\n",
                derive_accept_key(key.as_bytes())
            )
            .into_bytes();
            out.extend(hello_frame());
            tcp.write_all(&out).await.unwrap();
            // Silent from here on; hold the socket until the test ends.
            let mut rest = Vec::new();
            let _ = tcp.read_to_end(&mut rest).await;
        });
        (addr, task)
    }

    #[tokio::test]
    async fn a_hello_that_arrives_with_the_handshake_is_not_missed() {
        let (addr, server) = eager_server().await;
        let (_phase_tx, phase) = watch::channel(Phase::Connecting);
        let shared = Shared {
            stats: Arc::new(Stats::new(1, 0, 0)),
            scanner: Scanner::new(),
            format: Format::Json,
            rooms: vec!["lg-0".into()],
            connect_timeout: Duration::from_secs(30),
            phase,
            deflate: false,
            posting_seconds: 0,
            reconnect: false,
            targets: Vec::new(),
            max_posts: 0,
        };
        let plan = Plan {
            target: Arc::new(Target {
                addr,
                host: addr.to_string(),
            }),
            source: None,
            room: 0,
            poster: None,
            seed: 1,
            density: None,
            record: false,
        };
        // Generous bound: with the bug this waits forever, not a bit longer.
        let client = tokio::time::timeout(
            Duration::from_secs(20),
            connect(&shared, &plan, &plan.target),
        )
        .await
        .expect("connect must not wait for a second frame");
        let (_, granted) = client.expect("connected");
        assert_eq!(granted, None, "a server without tiers grants nothing");
        assert_eq!(shared.stats.totals().frames, 1);
        server.abort();
    }

    #[test]
    fn the_granted_density_is_read_from_hello_in_either_format() {
        let json = br#"{"type":"hello","room":"r","density":30,"limits":{}}"#;
        assert_eq!(hello_fields(Format::Json, json).density, Some(30));
        let value: serde_json::Value = serde_json::from_slice(json).unwrap();
        let packed = rmp_serde::to_vec_named(&value).unwrap();
        assert_eq!(hello_fields(Format::MsgPack, &packed).density, Some(30));
        assert_eq!(hello_fields(Format::Json, b"{}").density, None);
        assert_eq!(hello_fields(Format::Json, b"junk").density, None);
    }

    #[test]
    fn posts_decode_as_client_events_with_our_marker() {
        for format in Format::ALL {
            let (opcode, bytes) = encode_post(format, 77);
            assert_eq!(opcode == OP_TEXT, format == Format::Json);
            let ClientEvent::Post(post) = danmaku_proto::decode_client(format, &bytes).unwrap()
            else {
                panic!("not a post");
            };
            assert_eq!(post.nonce.as_deref(), Some("77"));
            assert!(post.text.starts_with("lg ") && post.text.ends_with(" 77"));
            assert!(post.text.chars().count() < 100);
        }
    }

    #[test]
    fn nonces_are_sequence_numbers() {
        assert_eq!(parse_nonce(Nonce::parse("12").ok()), Some(12));
        assert_eq!(parse_nonce(Nonce::parse("x").ok()), None);
        assert_eq!(parse_nonce(None), None);
    }
}
