//! One WebSocket connection: the I/O loop. It reads client frames and hands
//! each command to its handler in `cmd/`, and writes what the outbox holds.
//!
//! One task per connection does both directions: it waits on the socket, the
//! outbox, the ping pulse and shutdown at once, and writes every queued frame
//! with one flush. Writes are bounded in time, so a stalled client is closed
//! instead of holding anything up; nothing else ever waits on this task.
//! This is the only module that knows the WebSocket message type.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, WebSocket};
use danmaku_proto::{
    decode_client, encode, ClientEvent, Danmaku, ErrorCode, Format, Hello, Limits, Role, RoomId,
    ServerEvent,
};
use futures_util::{FutureExt, SinkExt};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite;
use tracing::Instrument;

use crate::frame::Frame;
use crate::metrics::raise_mark;
use crate::outbox::{Drained, Outbox};
use crate::rooms::{Membership, Variant};
use crate::{cmd, ConnSlot, Gateway};

/// Close code for a server going down (RFC 6455 §7.4.1).
const GOING_AWAY: u16 = 1001;
/// Close code for a client that broke the WebSocket framing rules.
const PROTOCOL_ERROR: u16 = 1002;
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
    /// The socket failed or the peer vanished: nothing can be said.
    Gone,
    /// The client sent a close frame: it gets the answer tungstenite queued
    /// (its own code echoed), flushed before the socket is dropped.
    ClientClosed,
    /// The client broke RFC 6455 framing: an unmasked frame, reserved bits
    /// or opcodes, bad fragmentation, an oversized or fragmented control
    /// frame, a bad close frame.
    Protocol,
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
            End::Gone | End::ClientClosed => None,
            End::Protocol => Some((PROTOCOL_ERROR, "protocol error")),
            End::GoingAway => Some((GOING_AWAY, "going away")),
            End::TooSlow => Some((POLICY, "too slow")),
            End::BadFrames => Some((POLICY, "too many bad frames")),
            End::TooBig => Some((TOO_BIG, "frame too large")),
            End::BadUtf8 => Some((INVALID_PAYLOAD, "invalid utf-8")),
            End::Idle => Some((NORMAL, "idle timeout")),
        }
    }
}

/// Who a connection speaks for, settled before the upgrade.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Identity {
    /// The user id: `guest-xxxxxx` for guests, else the token's `sub`.
    pub(crate) user: String,
    /// Display name, from `?nick=` or the token's `name`.
    pub(crate) name: Option<String>,
    /// What the user may do; guests are viewers.
    pub(crate) role: Role,
    /// When the token expires, in seconds since the Unix epoch; `None`
    /// for guests, who hold no token.
    pub(crate) exp: Option<u64>,
    /// The rooms the token lets a moderator act in; `None` for all.
    pub(crate) rooms: Option<Vec<String>>,
}

/// Who is on the other end of a socket, and how to talk to it.
pub(crate) struct Viewer {
    /// The room joined.
    pub(crate) room: RoomId,
    /// The negotiated encoding.
    pub(crate) format: Format,
    /// Who the connection speaks for.
    pub(crate) identity: Identity,
    /// The client's address (from a trusted proxy when behind one): the
    /// key of the per-address post limits.
    pub(crate) ip: std::net::IpAddr,
}

/// The limits a connection of `role` is held to: moderators and admins
/// write longer comments and have a larger budget.
fn limits_for(gw: &Gateway, role: Role) -> Limits {
    if role < Role::Moderator {
        return gw.limits.clone();
    }
    let policy = gw.modstate.moderator.policy();
    let factor = policy.moderator_rate_factor;
    Limits {
        max_text_chars: policy.max_text_chars_moderator,
        post_rate_count: gw.limits.post_rate_count.saturating_mul(factor),
        post_burst: gw.limits.post_burst.saturating_mul(factor),
        ..gw.limits.clone()
    }
}

/// Everything one connection keeps. Command handlers get it whole.
pub(crate) struct Conn {
    pub(crate) gw: Arc<Gateway>,
    /// This viewer's place in its room; taken (leaving the room) at the end.
    membership: Option<Membership>,
    /// The connection slot, freed when the connection is dropped.
    _slot: ConnSlot,
    /// This connection's number on this instance; picks its ping phase.
    conn_id: u64,
    ws: WebSocket,
    pub(crate) outbox: Arc<Outbox>,
    pub(crate) viewer: Viewer,
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
    let outbox = Arc::new(Outbox::new(
        gw.conn.outbox_frames,
        gw.conn.outbox_must_frames,
        gw.conn.outbox_bytes,
        gw.metrics.fanout.max_queued_bytes.clone(),
    ));
    let variant = Variant {
        format: viewer.format,
    };
    let membership = gw.rooms.join(&viewer.room, outbox.clone(), variant);
    let now = Instant::now();
    let conn = Box::new(Conn {
        gw,
        ws,
        outbox,
        viewer,
        membership: Some(membership),
        _slot: slot,
        conn_id,
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
        user: viewer.identity.user.clone(),
        name: viewer.identity.name.clone(),
        role: Some(viewer.identity.role),
        online: gw.presence.online(viewer.room.as_str(), local),
        server: gw.instance_id.clone(),
        limits: limits_for(gw, viewer.identity.role),
        recent,
    });
    conn.reply(&hello);
    tracing::debug!("Connected");

    let end = conn.run().await;
    conn.membership.take();
    if end == End::TooSlow {
        conn.gw.metrics.fanout.slow_evictions.inc();
        tracing::info!(
            dropped = conn.outbox.dropped(),
            "Closing a connection that is too slow"
        );
    }
    Box::pin(conn.finish(end)).await;
    tracing::debug!(reason = ?end, dropped = conn.outbox.dropped(), "Disconnected");
}

/// The room's recent comments for `hello`, or none when the bus cannot say
/// (the bus bounds the call itself). Boxed by its caller: its state would
/// otherwise sit in every connection's future for the connection's life.
async fn fetch_recent(gw: &Gateway, room: &RoomId) -> Vec<Danmaku> {
    match gw.bus.recent(room).await {
        Ok(recent) => recent,
        Err(e) => {
            tracing::warn!(error = %e, "Recent history unavailable");
            Vec::new()
        }
    }
}

/// Bytes a frame takes on the wire: the payload and an unmasked server
/// frame header (RFC 6455 §5.2).
fn wire_len(frame: &Frame) -> usize {
    let payload = match frame {
        Frame::Text(text) => text.as_str().len(),
        Frame::Binary(bytes) => bytes.len(),
        Frame::Ping => 0,
    };
    let header = match payload {
        0..=125 => 2,
        126..=65_535 => 4,
        _ => 10,
    };
    payload + header
}

/// The WebSocket message for a frame: a reference-count clone, no copy.
fn to_message(frame: Frame) -> Message {
    match frame {
        Frame::Text(text) => Message::Text(text),
        Frame::Binary(bytes) => Message::Binary(bytes),
        Frame::Ping => Message::Ping(Default::default()),
    }
}

impl Conn {
    /// The connection's loop. Its own state is kept small, since every idle
    /// connection holds it: the busy paths (writing, handling a client
    /// frame) are boxed futures that exist only while they run.
    async fn run(&mut self) -> End {
        let mut pulse = self.gw.pulse(self.conn_id);
        if pulse.borrow_and_update().stopping {
            return End::GoingAway;
        }
        let idle = self.gw.conn.idle_timeout;
        let mut ping_due = false;
        loop {
            let mut frames = Vec::new();
            if self.outbox.drain(&mut frames) == Drained::Evicted {
                return End::TooSlow;
            }
            if !frames.is_empty() || ping_due {
                if ping_due {
                    frames.push(Frame::Ping);
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

    /// Writes `frames` (control frames first, as drained), flushing once at
    /// the end, or earlier whenever the next frame would take what sits in
    /// the WebSocket layer's buffer over `max_write_buffer_bytes`: then the
    /// write waits for the socket instead of buffering more, so a client
    /// that stops reading costs at most that much here (one frame alone
    /// when a frame is larger). Gives up, as too slow, when the write does
    /// not finish within `slow_close_ms` or the outbox marks the connection
    /// evicted meanwhile.
    async fn write(&mut self, frames: Vec<Frame>) -> Result<(), End> {
        let limit = self.gw.conn.slow_close;
        let cap = self.gw.conn.max_write_buffer_bytes;
        let mark = &self.gw.metrics.fanout.max_write_buffered;
        let frames_written = &self.gw.metrics.fanout.frames_written;
        let ws = &mut self.ws;
        let frames_len = frames.len() as u64;
        let write = async move {
            let (mut buffered, mut most) = (0, 0);
            for frame in frames {
                let len = wire_len(&frame);
                if buffered > 0 && buffered + len > cap {
                    ws.flush().await?;
                    buffered = 0;
                }
                buffered += len;
                most = usize::max(most, buffered);
                ws.feed(to_message(frame)).await?;
            }
            raise_mark(mark, most);
            let flushed = ws.flush().await;
            if flushed.is_ok() {
                frames_written.inc_by(frames_len);
            }
            flushed
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
            Message::Close(_) => Some(End::ClientClosed),
        }
    }

    /// Decodes one data frame and hands the command to its handler. Text
    /// frames are JSON and binary frames are MessagePack whatever was
    /// negotiated; replies use the negotiated one.
    async fn on_frame(&mut self, frame_format: Format, bytes: &[u8]) -> Option<End> {
        let outcome = match decode_client(frame_format, bytes) {
            Err(e) => Err(e.to_string()),
            Ok(ClientEvent::Ping(ping)) => cmd::ping::handle(self, ping),
            Ok(ClientEvent::Auth(auth)) => cmd::auth::handle(self, auth),
            Ok(ClientEvent::Post(post)) => {
                cmd::post::handle(self, post).await;
                Ok(())
            }
            Ok(ClientEvent::Moderate(command)) => cmd::moderate::handle(self, command).await,
        };
        match outcome {
            Ok(()) => None,
            Err(reason) => self.bad_frame(reason),
        }
    }

    /// Counts a frame the server could not use; the one that reaches
    /// `bad_frame_limit` within the window closes the connection.
    fn bad_frame(&mut self, reason: String) -> Option<End> {
        let config = &self.gw.conn;
        let now = Instant::now();
        let (count, since) = &mut self.bad_frames;
        if now.duration_since(*since) >= config.bad_frame_window {
            *count = 0;
            *since = now;
        }
        *count += 1;
        tracing::debug!(count = *count, reason = %reason, "Bad frame");
        if *count >= config.bad_frame_limit {
            return Some(End::BadFrames);
        }
        let mut message = reason;
        message.truncate(message.floor_char_boundary(200));
        self.reply(&ServerEvent::Error {
            nonce: None,
            code: ErrorCode::BadFrame,
            message,
        });
        None
    }

    /// Queues an answer to this client, in its format; never dropped.
    pub(crate) fn reply(&self, event: &ServerEvent) {
        self.outbox
            .push_control(Frame::from(encode(self.viewer.format, event)));
    }

    /// Sends the close frame `end` calls for, then waits briefly for the
    /// client's answer so the close is clean rather than a reset.
    async fn finish(&mut self, end: End) {
        let patience = Duration::from_secs(1);
        if end == End::ClientClosed {
            // tungstenite queued the answer (the client's code echoed, or
            // 1002 for a code that may not be sent) when it read the close;
            // only a flush puts it on the wire, and without it every
            // well-behaved client would see an abnormal closure.
            let _ = tokio::time::timeout(patience, self.ws.flush()).await;
            return;
        }
        let Some((code, reason)) = end.close_frame() else {
            return;
        };
        let close = Message::Close(Some(CloseFrame {
            code,
            reason: reason.into(),
        }));
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

/// Maps a read error to how the connection ends. A framing violation is
/// answered with 1002 as RFC 6455 §7.4.1 asks, rather than by dropping the
/// socket (which clients report as 1006); a peer that vanished without a
/// close frame gets nothing, since nothing would reach it.
fn classify(e: axum::Error) -> End {
    use tungstenite::error::ProtocolError;
    match e.into_inner().downcast::<tungstenite::Error>() {
        Ok(e) => match *e {
            tungstenite::Error::Capacity(_) => End::TooBig,
            tungstenite::Error::Utf8(_) => End::BadUtf8,
            tungstenite::Error::Protocol(ProtocolError::ResetWithoutClosingHandshake) => End::Gone,
            tungstenite::Error::Protocol(_) => End::Protocol,
            _ => End::Gone,
        },
        Err(_) => End::Gone,
    }
}
