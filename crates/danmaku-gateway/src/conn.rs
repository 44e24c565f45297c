//! One WebSocket connection: reads client frames, runs posts through
//! moderation and onto the bus, and writes what the outbox holds.
//!
//! One task per connection does both directions: it waits on the socket, the
//! outbox, the ping timer and shutdown at once, and writes every queued frame
//! with one flush. Writes are bounded in time, so a stalled client is closed
//! instead of holding anything up; nothing else ever waits on this task.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, WebSocket};
use danmaku_bus::now_ms;
use danmaku_moderation::ConnState;
use danmaku_proto::{
    decode_client, encode, ClientEvent, Danmaku, ErrorCode, Format, Hello, Post, RoomId,
    ServerEvent, MAX_NONCE_BYTES,
};
use futures_util::{FutureExt, SinkExt};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite;
use tracing::Instrument;

use crate::outbox::{Drained, Outbox};
use crate::rooms::to_message;
use crate::rooms::Membership;
use crate::{ConnSlot, Gateway};

/// Close code for a server going down (RFC 6455 §7.4.1).
const GOING_AWAY: u16 = 1001;
/// Close code for invalid UTF-8 in a text frame.
const INVALID_PAYLOAD: u16 = 1007;
/// Close code for a policy violation: too slow, too many bad frames.
const POLICY: u16 = 1008;
/// Close code for a frame over the size limit.
const TOO_BIG: u16 = 1009;
/// Close code for a normal close.
const NORMAL: u16 = 1000;

/// Why a connection ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    /// The client closed or the socket failed: nothing more to say.
    Gone,
    /// The server is shutting down.
    GoingAway,
    /// The outbox stayed full, or a write stalled, for `slow_close_ms`.
    TooSlow,
    /// `bad_frame_limit` bad frames within the window.
    BadFrames,
    /// A frame over `max_frame_bytes`.
    TooBig,
    /// Invalid UTF-8 in a text frame.
    BadUtf8,
    /// Nothing heard for `idle_timeout_ms`.
    Idle,
}

impl End {
    fn close_frame(self) -> Option<(u16, &'static str)> {
        match self {
            End::Gone => None,
            End::GoingAway => Some((GOING_AWAY, "going away")),
            End::TooSlow => Some((POLICY, "too slow")),
            End::BadFrames => Some((POLICY, "too many bad frames")),
            End::TooBig => Some((TOO_BIG, "frame too large")),
            End::BadUtf8 => Some((INVALID_PAYLOAD, "invalid utf-8")),
            End::Idle => Some((NORMAL, "idle timeout")),
        }
    }
}

/// Who is on the other end of a socket.
pub(crate) struct Viewer {
    /// The room joined.
    pub room: RoomId,
    /// The negotiated encoding.
    pub format: Format,
    /// `guest-xxxxxx`.
    pub user: String,
    /// Display name from `?nick=`.
    pub name: Option<String>,
}

struct Conn {
    gw: Arc<Gateway>,
    /// This viewer's place in its room; taken (leaving the room) at the end.
    membership: Option<Membership>,
    /// The connection slot, freed when the connection is dropped.
    _slot: ConnSlot,
    /// This connection's number on this instance; picks its ping phase.
    conn_id: u64,
    ws: WebSocket,
    outbox: Arc<Outbox>,
    viewer: Viewer,
    /// Rate-limit state, made on the first post: most viewers never post.
    moderation: Option<Box<ConnState>>,
    /// Bad frames in the current window, and when the window started.
    bad_frames: (u32, Instant),
    /// When the client last sent anything, pongs included.
    last_heard: Instant,
}

/// Starts serving an upgraded socket: joins the room and spawns the
/// connection's task.
///
/// Everything the connection keeps lives in one boxed `Conn` built here,
/// before any `.await`, so the task's future holds a pointer and the small
/// state of the loop it is waiting in, not copies of the socket.
pub(crate) fn start(
    gw: Arc<Gateway>,
    ws: WebSocket,
    viewer: Viewer,
    slot: ConnSlot,
    conn_id: u64,
    span: tracing::Span,
) {
    let _entered = span.enter();
    let outbox = Arc::new(Outbox::new(gw.settings.outbox_frames));
    let membership = gw.rooms.join(&viewer.room, outbox.clone(), viewer.format);
    let now = Instant::now();
    let conn = Box::new(Conn {
        gw,
        ws,
        outbox,
        viewer,
        membership: Some(membership),
        _slot: slot,
        conn_id,
        moderation: None,
        bad_frames: (0, now),
        last_heard: now,
    });
    drop(_entered);
    tokio::spawn(serve(conn).instrument(span));
}

/// Serves one socket until it closes.
async fn serve(mut conn: Box<Conn>) {
    // The room was joined before history is read: the bus answers `recent`
    // only once the room's subscription is live, so every comment after
    // `hello` reaches this viewer. The price is a possible overlap between
    // `recent` and the live stream, which clients remove by id
    // (proto/PROTOCOL.md).
    let recent = Box::pin(fetch_recent(&conn.gw, &conn.viewer.room)).await;
    let local = conn.membership.as_ref().map_or(1, |m| m.local_count());
    let gw = &conn.gw;
    let viewer = &conn.viewer;
    let hello = ServerEvent::Hello(Hello {
        room: viewer.room.as_str().to_owned(),
        user: viewer.user.clone(),
        name: viewer.name.clone(),
        online: gw.presence.online(viewer.room.as_str(), local),
        server: gw.instance_id.clone(),
        limits: gw.limits.clone(),
        recent,
    });
    conn.reply(&hello);
    tracing::debug!("Connected");

    let end = conn.run().await;
    conn.membership.take();
    if end == End::TooSlow {
        conn.gw
            .rooms
            .stats
            .slow_evictions
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        tracing::info!(
            dropped = conn.outbox.dropped(),
            "Closing a connection that is too slow"
        );
    }
    Box::pin(conn.finish(end)).await;
    tracing::debug!(reason = ?end, dropped = conn.outbox.dropped(), "Disconnected");
}

/// The room's recent comments for `hello`, or none when the bus cannot say.
/// Boxed by its caller: its timer would otherwise sit in every connection's
/// state for the connection's whole life.
async fn fetch_recent(gw: &Gateway, room: &RoomId) -> Vec<Danmaku> {
    match tokio::time::timeout(gw.bus_timeout(), gw.bus.recent(room)).await {
        Ok(Ok(recent)) => recent,
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "Recent history unavailable");
            Vec::new()
        }
        Err(_) => {
            tracing::warn!("Recent history timed out");
            Vec::new()
        }
    }
}

impl Conn {
    /// The connection's loop. Its own state is kept small, since every idle
    /// connection holds it: the busy paths (writing, handling a client
    /// frame) are boxed futures that exist only while they run.
    async fn run(&mut self) -> End {
        let phase = self.conn_id as usize % self.gw.pulses.len();
        let mut pulse = self.gw.pulses[phase].clone();
        if pulse.borrow_and_update().stopping {
            return End::GoingAway;
        }
        let idle = crate::config::ms(self.gw.settings.idle_timeout_ms);
        let mut ping_due = false;
        loop {
            let mut frames = Vec::new();
            if self.outbox.drain(&mut frames) == Drained::Evicted {
                return End::TooSlow;
            }
            if !frames.is_empty() || ping_due {
                if ping_due {
                    frames.push(Message::Ping(Default::default()));
                    ping_due = false;
                }
                if let Err(end) = Box::pin(self.write(frames)).await {
                    return end;
                }
                continue;
            }
            tokio::select! {
                biased;
                changed = pulse.changed() => {
                    if changed.is_err() || pulse.borrow_and_update().stopping {
                        return End::GoingAway;
                    }
                    // A ping tick: close if silent too long, else ping.
                    if self.last_heard.elapsed() >= idle {
                        return End::Idle;
                    }
                    ping_due = true;
                }
                _ = self.outbox.ready() => {}
                msg = self.ws.recv() => match msg {
                    None => return End::Gone,
                    Some(Ok(msg)) => {
                        self.last_heard = Instant::now();
                        if let Some(end) = Box::pin(self.on_message(msg)).await {
                            return end;
                        }
                    }
                    Some(Err(e)) => return classify(e),
                },
            }
        }
    }

    /// Writes `frames` (control frames first, as drained) with one flush.
    /// Gives up, as too slow, when the write does not finish within
    /// `slow_close_ms` or the outbox marks the connection evicted meanwhile.
    async fn write(&mut self, frames: Vec<Message>) -> Result<(), End> {
        let limit = crate::config::ms(self.gw.settings.slow_close_ms);
        let ws = &mut self.ws;
        let write = async move {
            for frame in frames {
                ws.feed(frame).await?;
            }
            ws.flush().await
        };
        let mut write = std::pin::pin!(write);
        // Most writes finish at once, when the socket has room: only a
        // write that has to wait pays for a timer.
        let written = match (&mut write).now_or_never() {
            Some(done) => done,
            None => tokio::select! {
                written = tokio::time::timeout(limit, write) => match written {
                    Ok(done) => done,
                    Err(_) => return Err(End::TooSlow),
                },
                _ = self.outbox.evicted() => return Err(End::TooSlow),
            },
        };
        match written {
            Ok(()) => {
                self.outbox.flushed();
                Ok(())
            }
            Err(_) => Err(End::Gone),
        }
    }

    async fn on_message(&mut self, msg: Message) -> Option<End> {
        match msg {
            Message::Text(text) => self.on_frame(Format::Json, text.as_bytes()).await,
            Message::Binary(bytes) => self.on_frame(Format::MsgPack, &bytes).await,
            // tungstenite answers pings itself; both only prove liveness.
            Message::Ping(_) | Message::Pong(_) => None,
            Message::Close(_) => Some(End::Gone),
        }
    }

    /// Handles one data frame; text frames are JSON and binary frames are
    /// MessagePack whatever was negotiated, and replies use the negotiated one.
    async fn on_frame(&mut self, frame_format: Format, bytes: &[u8]) -> Option<End> {
        match decode_client(frame_format, bytes) {
            Err(e) => self.bad_frame(e.to_string()),
            Ok(ClientEvent::Ping(ping)) => {
                if ping
                    .nonce
                    .as_ref()
                    .is_some_and(|n| n.len() > MAX_NONCE_BYTES)
                {
                    return self.bad_frame(format!("nonce is longer than {MAX_NONCE_BYTES} bytes"));
                }
                self.reply(&ServerEvent::Pong { nonce: ping.nonce });
                None
            }
            Ok(ClientEvent::Post(post)) => {
                self.on_post(post).await;
                None
            }
        }
    }

    fn bad_frame(&mut self, reason: String) -> Option<End> {
        let settings = &self.gw.settings;
        let now = Instant::now();
        let (count, since) = &mut self.bad_frames;
        if now.duration_since(*since) >= crate::config::ms(settings.bad_frame_window_ms) {
            *count = 0;
            *since = now;
        }
        *count += 1;
        tracing::debug!(count = *count, reason = %reason, "Bad frame");
        if *count >= settings.bad_frame_limit {
            return Some(End::BadFrames);
        }
        let mut message = reason;
        message.truncate(message.floor_char_boundary(200));
        self.reply(&ServerEvent::Error {
            code: ErrorCode::BadFrame,
            message,
        });
        None
    }

    async fn on_post(&mut self, post: Post) {
        let gw = &self.gw;
        // An over-long nonce is refused, and not echoed: echoes stay in bounds.
        let nonce = post.nonce.clone().filter(|n| n.len() <= MAX_NONCE_BYTES);
        let moderation = self
            .moderation
            .get_or_insert_with(|| Box::new(gw.moderator.conn_state()));
        let accepted = match gw.moderator.check(moderation, &post) {
            Ok(accepted) => accepted,
            Err(refusal) => {
                gw.stats
                    .posts_rejected
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let event = ServerEvent::Reject {
                    nonce,
                    code: refusal.code,
                    message: refusal.message,
                    retry_after_ms: refusal.retry_after.map(|d| d.as_millis() as u64),
                };
                self.reply(&event);
                return;
            }
        };
        let comment = Arc::new(Danmaku {
            id: gw.ids.next(),
            room: self.viewer.room.as_str().to_owned(),
            user: self.viewer.user.clone(),
            name: self.viewer.name.clone(),
            text: accepted.text,
            color: accepted.color,
            mode: accepted.mode,
            ts: now_ms(),
        });
        let id = comment.id.clone();
        // The outbox is not drained while this awaits, so the ack is queued
        // before the poster's own comment can be written.
        let published = tokio::time::timeout(gw.publish_timeout(), gw.bus.publish(comment)).await;
        let event = match published {
            Ok(Ok(())) => {
                gw.stats
                    .posts_accepted
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                ServerEvent::Ack { nonce, id }
            }
            failed => {
                let why = match failed {
                    Ok(Err(e)) => e.to_string(),
                    _ => "bus timed out".to_owned(),
                };
                tracing::warn!(error = %why, "Publish failed");
                gw.stats
                    .posts_rejected
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                ServerEvent::Reject {
                    nonce,
                    code: danmaku_proto::RejectCode::Unavailable,
                    message: "service temporarily unavailable; nothing was published".into(),
                    retry_after_ms: Some(1000),
                }
            }
        };
        self.reply(&event);
    }

    fn reply(&self, event: &ServerEvent) {
        self.outbox
            .push_control(to_message(encode(self.viewer.format, event)));
    }

    /// Sends the close frame `end` calls for, then waits briefly for the
    /// client's answer so the close is clean rather than a reset.
    async fn finish(&mut self, end: End) {
        let Some((code, reason)) = end.close_frame() else {
            return;
        };
        let close = Message::Close(Some(CloseFrame {
            code,
            reason: reason.into(),
        }));
        let patience = Duration::from_secs(1);
        if !matches!(
            tokio::time::timeout(patience, self.ws.send(close)).await,
            Ok(Ok(()))
        ) {
            return;
        }
        if end == End::TooSlow {
            return;
        }
        let _ = tokio::time::timeout(2 * patience, async {
            while let Some(Ok(msg)) = self.ws.recv().await {
                if matches!(msg, Message::Close(_)) {
                    break;
                }
            }
        })
        .await;
    }
}

/// Maps a read error to how the connection ends.
fn classify(e: axum::Error) -> End {
    match e.into_inner().downcast::<tungstenite::Error>() {
        Ok(e) => match *e {
            tungstenite::Error::Capacity(_) => End::TooBig,
            tungstenite::Error::Utf8(_) => End::BadUtf8,
            _ => End::Gone,
        },
        Err(_) => End::Gone,
    }
}
