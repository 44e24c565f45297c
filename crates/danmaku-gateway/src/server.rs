//! The accept loop: every TCP connection from `accept` until it closes or
//! is handed over as a WebSocket, with the bounds that keep clients from
//! holding descriptors: a cap per client address, a deadline for the first
//! request, an idle timeout between requests, a cap on the request head,
//! and at shutdown a hard deadline after which what is left is dropped.
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
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use parking_lot::Mutex;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tower_service::Service;

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
    /// hyper's HTTP/1 settings, built once.
    http: http1::Builder,
    router: Router,
    admission: Arc<Admission>,
    metrics: ServerMetrics,
}

impl Server {
    /// A server for `router` with `config`, counting into `metrics`.
    pub(crate) fn new(config: ServerConfig, router: Router, metrics: ServerMetrics) -> Server {
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
            http,
            router,
            admission,
            metrics,
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
    let mut refusals = LogLimiter::default();
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
        let Some(guard) = server.admission.admit(peer.ip()) else {
            server.metrics.refused_per_ip.inc();
            if let Some(suppressed) = refusals.allow() {
                tracing::warn!(
                    peer = %peer.ip(),
                    max = server.config.max_per_ip,
                    suppressed,
                    "Refusing a connection: its address has too many open"
                );
            }
            // Only what fits in the socket at once: a refusal never waits.
            let _ = tcp.try_write(REFUSAL);
            continue;
        };
        tune_socket(&tcp, server.config.send_buffer);
        conns.spawn(serve_connection(
            server.clone(),
            tcp,
            peer,
            guard,
            stopping.clone(),
        ));
    }
    Draining {
        conns,
        dropped: server.metrics.shutdown_dropped.clone(),
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
    tcp: TcpStream,
    peer: SocketAddr,
    guard: ConnGuard,
    mut stopping: watch::Receiver<bool>,
) {
    // Disabled at the default level, so it costs nothing per connection
    // unless asked for. Not entered around hyper: the WebSocket's own
    // `conn` span, made in a handler, stays a root span.
    let span = tracing::debug_span!("tcp", peer = %peer);
    // Set once hyper has read a whole request head: the first-request
    // deadline no longer applies.
    let asked = Arc::new(AtomicBool::new(false));
    let service = {
        let router = server.router.clone();
        let asked = asked.clone();
        hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
            asked.store(true, Ordering::Relaxed);
            // What axum's `into_make_service_with_connect_info` would insert.
            req.extensions_mut().insert(ConnectInfo(peer));
            // A `Router` is always ready, so no `poll_ready` first.
            let mut router = router.clone();
            router.call(req)
        })
    };
    let io = TokioIo::new(Counted { tcp, _guard: guard });
    let mut conn = pin!(server.http.serve_connection(io, service).with_upgrades());
    let mut first_deadline = pin!(tokio::time::sleep(server.config.header_timeout));
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

    /// Takes a place for a connection from `ip`, unless its address has
    /// `max_per_ip` open already.
    fn admit(self: &Arc<Self>, ip: IpAddr) -> Option<ConnGuard> {
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
        self.open.inc();
        Some(ConnGuard {
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

/// A connection's place in the counts; dropping it gives the place back.
struct ConnGuard {
    admission: Arc<Admission>,
    key: Option<IpKey>,
}

impl Drop for ConnGuard {
    fn drop(&mut self) {
        self.admission.open.dec();
        if let Some(key) = self.key {
            self.admission.release(key);
        }
    }
}

/// A TCP stream that keeps its place in the counts for as long as it is
/// open: through HTTP, and after an upgrade inside the WebSocket, so a
/// WebSocket counts against the per-address cap as long as it lives.
struct Counted {
    tcp: TcpStream,
    _guard: ConnGuard,
}

impl AsyncRead for Counted {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().tcp).poll_read(cx, buf)
    }
}

impl AsyncWrite for Counted {
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
        let a = admission.admit(ip("2001:db8::1")).unwrap();
        let b = admission.admit(ip("2001:db8::2")).unwrap();
        assert!(admission.admit(ip("2001:db8::3")).is_none(), "same /64");
        let other = admission.admit(ip("10.0.0.1")).unwrap();
        assert_eq!(open.get(), 3);
        drop(a);
        let c = admission.admit(ip("2001:db8::3")).unwrap();
        drop((b, c, other));
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
            .map(|_| admission.admit(ip("10.0.0.1")).unwrap())
            .collect();
        assert_eq!(admission.open.get(), 100);
        assert!(admission.shards.iter().all(|s| s.lock().is_empty()));
        drop(held);
        assert_eq!(admission.open.get(), 0);
    }

    #[test]
    fn the_refusal_is_a_complete_response() {
        let text = std::str::from_utf8(REFUSAL).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(head.contains(&format!("content-length: {}", body.len())));
    }
}
