//! The accept loop: every TCP connection from `accept` until it closes or
//! is handed over as a WebSocket, with the bounds that keep clients from
//! holding descriptors: a cap per client address, a deadline for the first
//! request, an idle timeout between requests, a cap on the request head,
//! and at shutdown a hard deadline after which what is left is dropped.
//!
//! Before hyper sees a stream, its first bytes are checked for a PROXY
//! protocol header (see `client_addr.rs`): believed from trusted proxies,
//! whose connections are then counted per real client, and a reason to
//! close from anyone else.
//!
//! With `tls_cert_file` and `tls_key_file` set, the TLS handshake comes
//! next (a balancer's PROXY header precedes it), bounded by the same
//! first-request deadline; HTTP and WebSocket are then served over the TLS
//! stream exactly as over TCP.
//!
//! HTTP/1.1 is served by hyper directly, with the axum `Router` as the
//! service, instead of by `axum::serve`: that has none of these bounds, and
//! its graceful shutdown waits for every connection with no timer, so one
//! client that sent half a request could keep a stopping gateway alive.

use std::collections::hash_map::{Entry, HashMap, RandomState};
use std::future::Future;
use std::hash::BuildHasher;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::{pin, Pin};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::extract::ConnectInfo;
use axum::Router;
use bytes::{Buf, Bytes, BytesMut};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use parking_lot::Mutex;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;
use tower_service::Service;

use crate::client_addr::{parse_preface, ClientAddr, Preface, PROXY_MAX};
use crate::config::ServerConfig;
use crate::metrics::ServerMetrics;

/// First pause after a failed `accept`; doubled on each failure in a row.
const MIN_BACKOFF: Duration = Duration::from_millis(5);
/// Longest pause after a failed `accept`: short, so the loop takes
/// connections again soon after descriptors free up, yet it never spins.
const MAX_BACKOFF: Duration = Duration::from_millis(100);
/// A repeated warning (accept failures, refusals) is logged at most this often.
const LOG_EVERY: Duration = Duration::from_secs(1);
/// How long shutdown waits for aborted connection tasks to end: they end at
/// their next poll, so this is only a safety net.
const ABORT_WAIT: Duration = Duration::from_millis(200);
/// Shards of the per-address table, so connections closing on many threads
/// rarely meet on one lock.
const SHARDS: usize = 16;
/// What a connection over the per-address cap is told, if its socket takes
/// it at once; it is closed either way.
const REFUSAL: &[u8] = b"HTTP/1.1 429 Too Many Requests\r\ncontent-type: text/plain\r\ncontent-length: 39\r\nconnection: close\r\n\r\ntoo many connections from your address\n";

/// What every connection shares: the HTTP settings, the routes and the
/// admission table.
pub(crate) struct Server {
    config: ServerConfig,
    /// Set when the gateway serves TLS itself.
    tls: Option<TlsAcceptor>,
    /// hyper's HTTP/1 settings, built once.
    http: http1::Builder,
    router: Router,
    admission: Arc<Admission>,
    metrics: ServerMetrics,
    /// Refusals by the per-address cap happen in the accept loop and in
    /// connection tasks (after a PROXY header): one limit for their logs.
    refusals: Mutex<LogLimiter>,
}

impl Server {
    /// A server for `router` with `config`, over TLS when `tls` is set,
    /// counting into `metrics`.
    pub(crate) fn new(
        config: ServerConfig,
        tls: Option<TlsAcceptor>,
        router: Router,
        metrics: ServerMetrics,
    ) -> Server {
        let mut http = http1::Builder::new();
        http.timer(TokioTimer::new())
            // hyper restarts this timer whenever it waits for a request
            // head, so it bounds every request after the first, idle time
            // included. The first is bounded from accept by
            // `header_timeout`, in `serve_connection`.
            .header_read_timeout(config.idle_timeout)
            // Checked on partial heads too: a head that never ends is
            // refused once this much has arrived.
            .max_header_size(config.max_header_bytes);
        let admission = Arc::new(Admission::new(
            config.max_per_ip,
            metrics.tcp_connections.clone(),
        ));
        Server {
            config,
            tls,
            http,
            router,
            admission,
            metrics,
            refusals: Mutex::default(),
        }
    }
}

/// Accepts connections and serves each in a task of its own until
/// `shutdown` completes; then stops accepting (the listener is dropped) and
/// returns the connection tasks still running.
///
/// A failed `accept` (out of descriptors, say) is counted, logged at most
/// once a second, and followed by a short pause that grows while failures
/// continue: the loop neither spins nor gives up.
pub(crate) async fn accept_until(
    listener: TcpListener,
    server: Arc<Server>,
    stopping: watch::Receiver<bool>,
    shutdown: impl Future<Output = ()>,
) -> Draining {
    let mut shutdown = pin!(shutdown);
    let mut conns = JoinSet::new();
    let mut backoff = MIN_BACKOFF;
    let mut failures = LogLimiter::default();
    loop {
        let accepted = tokio::select! {
            biased;
            () = &mut shutdown => break,
            // Finished tasks are reaped before new ones are accepted, so
            // the set never grows with connections that are gone.
            Some(done) = conns.join_next(), if !conns.is_empty() => {
                if let Err(e) = done {
                    if e.is_panic() {
                        tracing::error!(error = %e, "A connection task panicked");
                    }
                }
                continue;
            }
            accepted = listener.accept() => accepted,
        };
        let (tcp, peer) = match accepted {
            Ok(accepted) => {
                backoff = MIN_BACKOFF;
                accepted
            }
            Err(e) => {
                server.metrics.accept_errors.inc();
                if is_per_connection(&e) {
                    // The failed connection's own problem: the next may be fine.
                    tracing::debug!(error = %e, "A connection failed before it was accepted");
                    continue;
                }
                if let Some(suppressed) = failures.allow() {
                    tracing::warn!(
                        error = %e,
                        suppressed,
                        retry_in_ms = backoff.as_millis() as u64,
                        "Accepting a connection failed"
                    );
                }
                tokio::select! {
                    biased;
                    () = &mut shutdown => break,
                    () = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(MAX_BACKOFF);
                continue;
            }
        };
        // A trusted proxy's connections are counted per real client once
        // its PROXY header (or each upgrade's `X-Forwarded-For`) names one.
        let place = if server.config.trusted.contains(peer.ip()) {
            None
        } else {
            match server.admission.claim(peer.ip()) {
                Some(place) => Some(place),
                None => {
                    server.refuse_per_ip(&tcp, peer.ip());
                    continue;
                }
            }
        };
        let open = server.admission.open();
        tune_socket(&tcp, server.config.send_buffer);
        conns.spawn(serve_connection(
            server.clone(),
            tcp,
            peer,
            (open, place),
            stopping.clone(),
        ));
    }
    Draining {
        conns,
        dropped: server.metrics.shutdown_dropped.clone(),
    }
}

impl Server {
    /// Closes `tcp`, whose client address `ip` has too many open: counted,
    /// logged at most once a second, told 429 if its socket takes it at
    /// once (a refusal never waits) and it speaks plain HTTP: a TLS client
    /// could not read it, and a handshake just to refuse costs too much.
    fn refuse_per_ip(&self, tcp: &TcpStream, ip: IpAddr) {
        self.metrics.refused_per_ip.inc();
        let allowed = self.refusals.lock().allow();
        if let Some(suppressed) = allowed {
            tracing::warn!(
                peer = %ip,
                max = self.config.max_per_ip,
                suppressed,
                "Refusing a connection: its address has too many open"
            );
        }
        if self.tls.is_none() {
            let _ = tcp.try_write(REFUSAL);
        }
    }
}

/// Why a connection ended before HTTP.
enum Preamble {
    /// The header timeout passed.
    Timeout,
    /// Shutdown began, or the peer closed or failed.
    Gone,
    /// A malformed PROXY header.
    Bad(&'static str),
}

/// Reads the start of the stream until it is known whether a PROXY header
/// opens it; returns the header (if any) and the bytes read past it, which
/// belong to HTTP. Bounded by `deadline` and by `PROXY_MAX` bytes.
async fn read_preamble(
    tcp: &mut TcpStream,
    deadline: Instant,
    stopping: &mut watch::Receiver<bool>,
) -> Result<(Option<Option<IpAddr>>, Bytes), Preamble> {
    let mut buf = BytesMut::with_capacity(256);
    loop {
        match parse_preface(&buf) {
            Preface::NotProxy => return Ok((None, buf.freeze())),
            Preface::Proxy { len, source } => {
                buf.advance(len);
                return Ok((Some(source), buf.freeze()));
            }
            Preface::Bad(why) => return Err(Preamble::Bad(why)),
            Preface::Incomplete => {}
        }
        if buf.len() >= PROXY_MAX {
            return Err(Preamble::Bad("PROXY header too long"));
        }
        buf.reserve(256);
        tokio::select! {
            read = tcp.read_buf(&mut buf) => match read {
                Ok(0) | Err(_) => return Err(Preamble::Gone),
                Ok(_) => {}
            },
            () = tokio::time::sleep_until(deadline) => return Err(Preamble::Timeout),
            _ = stopping.wait_for(|stopping| *stopping) => return Err(Preamble::Gone),
        }
    }
}

/// Errors of `accept` that concern one incoming connection only (it was
/// reset or aborted before it was taken): retry at once, no pause.
fn is_per_connection(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionRefused
            | io::ErrorKind::NetworkDown
            | io::ErrorKind::NetworkUnreachable
            | io::ErrorKind::HostUnreachable
    )
}

/// Sets options on an accepted socket: no Nagle delay (frames are already
/// gathered per flush), and the configured send buffer.
fn tune_socket(tcp: &TcpStream, send_buffer: usize) {
    if let Err(e) = tcp.set_nodelay(true) {
        tracing::debug!(error = %e, "Setting TCP_NODELAY failed");
    }
    if send_buffer > 0 {
        if let Err(e) = socket2::SockRef::from(tcp).set_send_buffer_size(send_buffer) {
            tracing::debug!(error = %e, "Setting SO_SNDBUF failed");
        }
    }
}

/// Serves HTTP on one connection until it closes, is upgraded (the
/// WebSocket then owns the socket and `guard`), times out, or shutdown
/// closes it.
async fn serve_connection(
    server: Arc<Server>,
    mut tcp: TcpStream,
    peer: SocketAddr,
    (open, mut place): (OpenGuard, Option<AddrPlace>),
    mut stopping: watch::Receiver<bool>,
) {
    // The header timeout runs from accept, across the PROXY header too.
    let deadline = Instant::now() + server.config.header_timeout;
    let trusted_peer = server.config.trusted.contains(peer.ip());
    let (proxied, prefix) = match read_preamble(&mut tcp, deadline, &mut stopping).await {
        Ok(read) => read,
        Err(Preamble::Timeout) => {
            server.metrics.header_timeouts.inc();
            return;
        }
        Err(Preamble::Gone) => return,
        Err(Preamble::Bad(why)) if trusted_peer => {
            server.metrics.bad_proxy_header.inc();
            tracing::debug!(peer = %peer, why, "Closing: malformed PROXY header");
            return;
        }
        Err(Preamble::Bad(_)) => {
            server.metrics.untrusted_proxy_header.inc();
            return;
        }
    };
    if proxied.is_some() && !trusted_peer {
        server.metrics.untrusted_proxy_header.inc();
        tracing::debug!(peer = %peer, "Closing: PROXY header from a peer not in trusted_proxies");
        return;
    }
    // The address this connection comes from: the PROXY header's source,
    // else the socket's. If that is a trusted proxy too, each request's
    // `X-Forwarded-For` names the client, and the connection is counted
    // per client at the WebSocket upgrade instead of here.
    let conn_ip = proxied.flatten().map_or(peer.ip(), |ip| ip.to_canonical());
    let forwarded = server.config.trusted.contains(conn_ip);
    if trusted_peer && !forwarded {
        match server.admission.claim(conn_ip) {
            Some(claimed) => place = Some(claimed),
            None => {
                server.refuse_per_ip(&tcp, conn_ip);
                return;
            }
        }
    }
    // Disabled at the default level, so it costs nothing per connection
    // unless asked for. Not entered around hyper: the WebSocket's own
    // `conn` span, made in a handler, stays a root span.
    let span = tracing::debug_span!("tcp", peer = %conn_ip, socket = %peer);
    // Set once hyper has read a whole request head: the first-request
    // deadline no longer applies.
    let asked = Arc::new(AtomicBool::new(false));
    let later = Arc::new(Mutex::new(None));
    let service = {
        let router = server.router.clone();
        let asked = asked.clone();
        let server = server.clone();
        let later = later.clone();
        hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
            asked.store(true, Ordering::Relaxed);
            // What axum's `into_make_service_with_connect_info` would insert.
            req.extensions_mut().insert(ConnectInfo(peer));
            if forwarded {
                let client = server
                    .config
                    .trusted
                    .forwarded_client(req.headers(), conn_ip);
                req.extensions_mut().insert(ClientAddr(client));
                req.extensions_mut().insert(Uncounted {
                    admission: server.admission.clone(),
                    holder: later.clone(),
                });
            } else {
                req.extensions_mut().insert(ClientAddr(conn_ip));
            }
            // A `Router` is always ready, so no `poll_ready` first.
            let mut router = router.clone();
            router.call(req)
        })
    };
    let plain = Prefixed { tcp, prefix };
    let stream = match &server.tls {
        None => Conn::Plain(plain),
        Some(acceptor) => {
            // Within the first-request deadline: a client that never
            // finishes its handshake holds the descriptor no longer than
            // one that never finishes its request.
            tokio::select! {
                done = acceptor.accept(plain) => match done {
                    Ok(tls) => Conn::Tls(Box::new(tls)),
                    Err(e) => {
                        server.metrics.tls_handshake.inc();
                        tracing::debug!(parent: &span, error = %e, "Closing: TLS handshake failed");
                        return;
                    }
                },
                () = tokio::time::sleep_until(deadline) => {
                    server.metrics.header_timeouts.inc();
                    tracing::debug!(parent: &span, "Closing: no TLS handshake within the header timeout");
                    return;
                }
                _ = stopping.wait_for(|stopping| *stopping) => return,
            }
        }
    };
    let io = TokioIo::new(Counted {
        stream,
        _places: (open, place, later),
    });
    let mut conn = pin!(server.http.serve_connection(io, service).with_upgrades());
    let mut first_deadline = pin!(tokio::time::sleep_until(deadline));
    let mut waiting_first = true;
    let mut closing = false;
    loop {
        tokio::select! {
            done = conn.as_mut() => {
                if let Err(e) = done {
                    server.count_error(&e, asked.load(Ordering::Relaxed));
                    tracing::debug!(parent: &span, error = %e, "HTTP connection failed");
                }
                return;
            }
            () = &mut first_deadline, if waiting_first => {
                if !asked.load(Ordering::Relaxed) {
                    server.metrics.header_timeouts.inc();
                    tracing::debug!(parent: &span, "Closing: no whole request within the header timeout");
                    return;
                }
                waiting_first = false;
            }
            _ = stopping.wait_for(|stopping| *stopping), if !closing => {
                if !asked.load(Ordering::Relaxed) {
                    // No request ever reached a handler: nothing to finish.
                    return;
                }
                // hyper closes at once between requests, and after the
                // response otherwise; the shutdown deadline bounds the rest.
                closing = true;
                conn.as_mut().graceful_shutdown();
            }
        }
    }
}

impl Server {
    /// Counts how a connection ended, if it was one of the bounds.
    fn count_error(&self, e: &hyper::Error, asked: bool) {
        if e.is_timeout() {
            if asked {
                self.metrics.idle_timeouts.inc();
            } else {
                self.metrics.header_timeouts.inc();
            }
        } else if e.is_parse_too_large() {
            self.metrics.headers_too_large.inc();
        }
    }
}

/// The connection tasks left when accepting stopped.
pub(crate) struct Draining {
    conns: JoinSet<()>,
    /// Counts the tasks dropped at the deadline.
    dropped: Counter,
}

impl Draining {
    /// Waits for the connection tasks until `deadline`, then drops those
    /// still running, closing their sockets: whatever clients do, this
    /// returns soon after `deadline`.
    pub(crate) async fn finish(mut self, deadline: Instant) {
        let conns = &mut self.conns;
        let all_done = async { while conns.join_next().await.is_some() {} };
        if tokio::time::timeout_at(deadline, all_done).await.is_ok() {
            return;
        }
        self.conns.abort_all();
        let mut dropped = 0u64;
        let conns = &mut self.conns;
        let _ = tokio::time::timeout(ABORT_WAIT, async {
            while let Some(done) = conns.join_next().await {
                if matches!(done, Err(e) if e.is_cancelled()) {
                    dropped += 1;
                }
            }
        })
        .await;
        self.dropped.inc_by(dropped);
        tracing::warn!(
            dropped,
            "Grace period over with HTTP connections still open: dropped them"
        );
    }
}

/// A client address as the per-address cap counts it: IPv4 whole, IPv6 by
/// its /64, since one subscriber usually holds a whole /64.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum IpKey {
    V4(u32),
    V6(u64),
}

impl IpKey {
    fn of(ip: IpAddr) -> IpKey {
        // An IPv4 client of a dual-stack socket shows as ::ffff:a.b.c.d.
        match ip.to_canonical() {
            IpAddr::V4(v4) => IpKey::V4(u32::from(v4)),
            IpAddr::V6(v6) => IpKey::V6((u128::from(v6) >> 64) as u64),
        }
    }
}

/// Open TCP connections, in all and per client address.
struct Admission {
    /// 0: no cap, and no table.
    max_per_ip: u32,
    shards: Box<[Mutex<HashMap<IpKey, u32>>]>,
    hasher: RandomState,
    /// Open TCP connections.
    open: Gauge,
}

impl Admission {
    fn new(max_per_ip: u32, open: Gauge) -> Admission {
        Admission {
            max_per_ip,
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
            hasher: RandomState::new(),
            open,
        }
    }

    fn shard(&self, key: &IpKey) -> &Mutex<HashMap<IpKey, u32>> {
        &self.shards[self.hasher.hash_one(key) as usize % SHARDS]
    }

    /// Counts one more open TCP connection.
    fn open(&self) -> OpenGuard {
        self.open.inc();
        OpenGuard(self.open.clone())
    }

    /// Takes a place for a connection from `ip`, unless its address has
    /// `max_per_ip` open already.
    fn claim(self: &Arc<Self>, ip: IpAddr) -> Option<AddrPlace> {
        let key = if self.max_per_ip == 0 {
            None
        } else {
            let key = IpKey::of(ip);
            let mut shard = self.shard(&key).lock();
            let open = shard.entry(key).or_insert(0);
            if *open >= self.max_per_ip {
                return None;
            }
            *open += 1;
            Some(key)
        };
        Some(AddrPlace {
            admission: self.clone(),
            key,
        })
    }

    fn release(&self, key: IpKey) {
        let mut shard = self.shard(&key).lock();
        if let Entry::Occupied(mut open) = shard.entry(key) {
            *open.get_mut() -= 1;
            if *open.get() == 0 {
                open.remove();
            }
        }
    }
}

/// A connection in the count of open ones; dropping it gives it back.
struct OpenGuard(Gauge);

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// A place in the per-address count; dropping it gives the place back.
pub(crate) struct AddrPlace {
    admission: Arc<Admission>,
    key: Option<IpKey>,
}

impl Drop for AddrPlace {
    fn drop(&mut self) {
        if let Some(key) = self.key {
            self.admission.release(key);
        }
    }
}

/// Where a place claimed by a request goes to live as long as the TCP
/// connection: through the WebSocket it was upgraded to.
type LaterPlace = Arc<Mutex<Option<AddrPlace>>>;

/// A request extension on connections from a trusted proxy, whose client
/// (from `X-Forwarded-For`) is not counted yet: the WebSocket upgrade
/// claims its place here.
#[derive(Clone)]
pub(crate) struct Uncounted {
    admission: Arc<Admission>,
    holder: LaterPlace,
}

impl Uncounted {
    /// A place for `client`, or `None` if its address has
    /// `max_connections_per_ip` open already.
    pub(crate) fn claim(&self, client: IpAddr) -> Option<Claimed> {
        Some(Claimed {
            place: self.admission.claim(client)?,
            holder: self.holder.clone(),
        })
    }
}

/// A claimed place not yet tied to the connection: dropped (an upgrade that
/// failed), it is given back.
pub(crate) struct Claimed {
    place: AddrPlace,
    holder: LaterPlace,
}

impl Claimed {
    /// Keeps the place for as long as the TCP connection is open.
    pub(crate) fn keep(self) {
        *self.holder.lock() = Some(self.place);
    }
}

/// A TCP stream whose bytes read before hyper or TLS took over (past a
/// PROXY header) are served first.
struct Prefixed {
    tcp: TcpStream,
    prefix: Bytes,
}

impl AsyncRead for Prefixed {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.prefix.is_empty() {
            let n = this.prefix.len().min(buf.remaining());
            buf.put_slice(&this.prefix.split_to(n));
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.tcp).poll_read(cx, buf)
    }
}

impl AsyncWrite for Prefixed {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().tcp).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().tcp).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.tcp.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().tcp).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().tcp).poll_shutdown(cx)
    }
}

/// What HTTP is served over: the TCP stream, or TLS over it. An enum, not
/// a generic, so hyper's upgraded stream (and the WebSocket on it) has one
/// type either way; the TLS state is boxed, being much larger.
enum Conn {
    Plain(Prefixed),
    Tls(Box<TlsStream<Prefixed>>),
}

/// Delegates a poll method to whichever stream `Conn` holds.
macro_rules! each {
    ($conn:expr, $s:ident => $body:expr) => {
        match $conn {
            Conn::Plain($s) => $body,
            Conn::Tls($s) => $body,
        }
    };
}

impl AsyncRead for Conn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        each!(self.get_mut(), s => Pin::new(s).poll_read(cx, buf))
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        each!(self.get_mut(), s => Pin::new(s).poll_write(cx, buf))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        each!(self.get_mut(), s => Pin::new(s).poll_write_vectored(cx, bufs))
    }

    fn is_write_vectored(&self) -> bool {
        each!(self, s => s.is_write_vectored())
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        each!(self.get_mut(), s => Pin::new(s).poll_flush(cx))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        each!(self.get_mut(), s => Pin::new(s).poll_shutdown(cx))
    }
}

/// A connection that keeps its places in the counts for as long as it is
/// open: through HTTP, and after an upgrade inside the WebSocket, so a
/// WebSocket counts against the per-address cap as long as it lives.
struct Counted {
    stream: Conn,
    _places: (OpenGuard, Option<AddrPlace>, LaterPlace),
}

impl AsyncRead for Counted {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for Counted {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}

/// Lets a repeated warning through at most once per `LOG_EVERY`, and says
/// how many were held back meanwhile.
#[derive(Debug, Default)]
struct LogLimiter {
    last: Option<Instant>,
    held: u64,
}

impl LogLimiter {
    /// `Some(held back since the last one)` if this one may be logged.
    fn allow(&mut self) -> Option<u64> {
        let now = Instant::now();
        match self.last {
            Some(last) if now.duration_since(last) < LOG_EVERY => {
                self.held += 1;
                None
            }
            _ => {
                self.last = Some(now);
                Some(std::mem::take(&mut self.held))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn ipv6_is_counted_per_64_and_mapped_ipv4_as_ipv4() {
        assert_eq!(
            IpKey::of(ip("2001:db8:1:2::1")),
            IpKey::of(ip("2001:db8:1:2:ffff:ffff:ffff:ffff"))
        );
        assert_ne!(
            IpKey::of(ip("2001:db8:1:2::1")),
            IpKey::of(ip("2001:db8:1:3::1"))
        );
        assert_eq!(IpKey::of(ip("::ffff:10.0.0.1")), IpKey::of(ip("10.0.0.1")));
        assert_ne!(IpKey::of(ip("10.0.0.1")), IpKey::of(ip("10.0.0.2")));
    }

    #[test]
    fn the_cap_counts_open_places_per_address_and_frees_them_on_drop() {
        let open = Gauge::default();
        let admission = Arc::new(Admission::new(2, open.clone()));
        let a = admission.claim(ip("2001:db8::1")).unwrap();
        let b = admission.claim(ip("2001:db8::2")).unwrap();
        assert!(admission.claim(ip("2001:db8::3")).is_none(), "same /64");
        let other = admission.claim(ip("10.0.0.1")).unwrap();
        let counted = admission.open();
        assert_eq!(open.get(), 1);
        drop(a);
        let c = admission.claim(ip("2001:db8::3")).unwrap();
        drop((b, c, other, counted));
        assert_eq!(open.get(), 0);
        assert!(
            admission.shards.iter().all(|s| s.lock().is_empty()),
            "no entry outlives its connections"
        );
    }

    #[test]
    fn no_cap_admits_everyone_and_keeps_no_table() {
        let admission = Arc::new(Admission::new(0, Gauge::default()));
        let held: Vec<_> = (0..100)
            .map(|_| admission.claim(ip("10.0.0.1")).unwrap())
            .collect();
        assert!(admission.shards.iter().all(|s| s.lock().is_empty()));
        drop(held);
    }

    #[test]
    fn the_refusal_is_a_complete_response() {
        let text = std::str::from_utf8(REFUSAL).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(head.contains(&format!("content-length: {}", body.len())));
    }
}
