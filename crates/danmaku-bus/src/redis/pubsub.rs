//! The pub/sub task: keeps one pub/sub link subscribed to the control
//! channel and to exactly the rooms this instance serves (or lingers on),
//! and hands every message it reads to its room's subscriptions (one queue
//! push each, under one short lock), or to the control broadcast.
//!
//! Invariants: one link per instance, read by this one task, which is what
//! keeps each room's events in publish order; a room is subscribed from its
//! first local subscription until `unsubscribe_linger` after its last, and
//! never otherwise (no pattern subscription); handing a message on never
//! waits, so a room task that lags loses its own oldest events, not the
//! other rooms' time. On reconnect the control channel and every served
//! room are subscribed again, and missed comments recovered from history
//! (`recovery.rs`), before the bus turns ready; then every control
//! subscription is sent a [`CONTROL_RESYNC`] message, since control
//! messages published meanwhile are lost to this instance. The first
//! connection sends one too: a subscription made before it may have
//! missed messages while Redis was unreachable.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use ::redis::Msg;
use bytes::Bytes;
use tokio::sync::watch;
use tokio::time::Instant;

use super::backoff::Backoff;
use super::transport::PubSubLink;
use super::{recovery, Inner};
use crate::envelope::{self, Decoded};
use crate::throttle::LogThrottle;
use crate::{ControlMessage, RoomEvent, CONTROL_RESYNC};

/// At most one log line per interval for each kind of bad payload.
static UNKNOWN_LOG: LogThrottle = LogThrottle::new(Duration::from_secs(10));
static INVALID_LOG: LogThrottle = LogThrottle::new(Duration::from_secs(10));

/// Keeps the pub/sub link up until the bus is dropped.
pub(crate) async fn run(inner: Arc<Inner>, mut stop: watch::Receiver<()>) {
    let cfg = &inner.config;
    let mut backoff = Backoff::new(cfg.max_backoff);
    // Idle rooms and when their linger ends. Outlives connections.
    let mut lingering: HashMap<String, Instant> = HashMap::new();
    let mut was_up = false;
    let mut connections = 0u64;
    loop {
        let connected = tokio::select! {
            c = inner.transport.pubsub_link() => c,
            _ = stop.changed() => return,
        };
        let mut link = match connected {
            Ok(link) => link,
            Err(why) => {
                if was_up {
                    tracing::warn!(error = %why, "Redis pub/sub connection failed; retrying");
                } else {
                    tracing::debug!(error = %why, "Redis pub/sub not reachable yet; retrying");
                }
                was_up = false;
                inner.set_pubsub_health(Err(format!("redis unreachable: {why}")));
                if !backoff.wait(&mut stop).await {
                    return;
                }
                continue;
            }
        };

        // A fresh connection serves the control channel and every room
        // still in the map. Where each room resumes is taken before any is
        // confirmed on it: a room first confirmed now missed nothing.
        inner.rooms.clear_pending();
        let all: Vec<String> = inner.rooms.map.lock().keys().cloned().collect();
        let resume = recovery::resume_points(&inner);
        let mut channels: Vec<String> = all.iter().map(|r| inner.keys.channel(r)).collect();
        channels.push(inner.keys.control());
        if let Err(why) = link.subscribe(&channels).await {
            tracing::warn!(error = %why, rooms = all.len(), "Subscribing rooms failed; reconnecting");
            inner.set_pubsub_health(Err(format!("redis pub/sub: {why}")));
            if !backoff.wait(&mut stop).await {
                return;
            }
            continue;
        }
        inner.rooms.set_subscribed(&all, true);
        let mut current: HashSet<String> = all.iter().cloned().collect();
        connections += 1;
        if connections > 1 {
            inner.metrics.pubsub_reconnects.inc();
        }
        recovery::recover_missed(&inner, resume).await;
        // Control messages published while the link was down (or before
        // it first came up) were missed: receivers reload their state.
        // Sent before the bus turns ready, so whoever sees it ready was
        // sent it already. An error only means nobody listens.
        let _ = inner.control.send(ControlMessage {
            origin: String::new(),
            kind: CONTROL_RESYNC.to_owned(),
            body: Bytes::new(),
        });
        inner.set_pubsub_health(Ok(()));
        backoff.reset();
        was_up = true;
        tracing::info!(rooms = all.len(), "Redis pub/sub connection up");

        let Some(why) = serve(&inner, &mut link, &mut current, &mut lingering, &mut stop).await
        else {
            return;
        };
        inner.rooms.unsubscribe_all();
        inner.set_pubsub_health(Err(format!("redis pub/sub connection lost: {why}")));
        tracing::warn!(error = %why, rooms = current.len(), "Redis pub/sub connection lost; reconnecting");
    }
}

/// Reads and reconciles on one link until it fails (the reason) or the bus
/// is dropped (`None`).
async fn serve(
    inner: &Inner,
    link: &mut PubSubLink,
    current: &mut HashSet<String>,
    lingering: &mut HashMap<String, Instant>,
    stop: &mut watch::Receiver<()>,
) -> Option<String> {
    let interval = inner.config.ping_interval;
    let mut ping = tokio::time::interval_at(Instant::now() + interval, interval);
    ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let next_expiry = lingering.values().min().copied();
        tokio::select! {
            _ = stop.changed() => return None,
            msg = link.next() => match msg {
                Some(msg) => dispatch(inner, &msg),
                None => return Some("connection closed".to_owned()),
            },
            _ = inner.rooms.changed.notified() => {
                if let Err(why) = reconcile(inner, link, current, lingering).await {
                    return Some(why);
                }
            }
            _ = tokio::time::sleep_until(next_expiry.unwrap_or_else(Instant::now)), if next_expiry.is_some() => {
                if let Err(why) = reconcile(inner, link, current, lingering).await {
                    return Some(why);
                }
            }
            _ = ping.tick() => {
                if let Err(why) = link.ping().await {
                    return Some(why);
                }
            }
        }
    }
}

/// Brings the link's subscriptions in line with the rooms: subscribes rooms
/// that gained a first viewer, unsubscribes those whose linger ended, each
/// batch in as few commands as possible.
async fn reconcile(
    inner: &Inner,
    link: &mut PubSubLink,
    current: &mut HashSet<String>,
    lingering: &mut HashMap<String, Instant>,
) -> Result<(), String> {
    let changed = inner.rooms.take_pending();
    let now = Instant::now();
    let linger = inner.config.unsubscribe_linger;
    let mut subscribe = Vec::new();
    let mut unsubscribe = Vec::new();
    {
        let mut map = inner.rooms.map.lock();
        for room in changed {
            match map.get(&room) {
                Some(st) if st.local() > 0 => {
                    lingering.remove(&room);
                    if !current.contains(&room) {
                        subscribe.push(room);
                    }
                }
                Some(st) => {
                    let since = st.idle_since.unwrap_or(now);
                    lingering.insert(room, since + linger);
                }
                None => {}
            }
        }
        lingering.retain(|room, until| {
            if *until > now {
                return true;
            }
            // Rejoined meanwhile: stays subscribed.
            if inner.rooms.forget_if_idle(&mut map, room) && current.remove(room) {
                unsubscribe.push(room.clone());
            }
            false
        });
    }
    if !unsubscribe.is_empty() {
        let channels: Vec<String> = unsubscribe.iter().map(|r| inner.keys.channel(r)).collect();
        link.unsubscribe(&channels).await?;
        tracing::debug!(rooms = unsubscribe.len(), "Unsubscribed idle rooms");
    }
    if !subscribe.is_empty() {
        let channels: Vec<String> = subscribe.iter().map(|r| inner.keys.channel(r)).collect();
        link.subscribe(&channels).await?;
        current.extend(subscribe.iter().cloned());
        inner.rooms.set_subscribed(&subscribe, true);
        tracing::debug!(rooms = subscribe.len(), "Subscribed rooms");
    }
    Ok(())
}

/// Hands a message to its room's channel, or to the control broadcast.
/// Never waits.
fn dispatch(inner: &Inner, msg: &Msg) {
    let channel = msg.get_channel_name();
    let payload = msg.get_payload_bytes();
    let Some(room) = inner.keys.room_of(channel) else {
        if inner.keys.is_control(channel) {
            dispatch_control(inner, payload);
        }
        return;
    };
    let event = match envelope::decode(payload) {
        Ok(Decoded::Event(event)) => event,
        Ok(Decoded::Unknown { v, kind }) => {
            inner.metrics.unknown_events.inc();
            if UNKNOWN_LOG.allow() {
                tracing::warn!(
                    room,
                    v,
                    kind,
                    "Bus event of an unknown kind skipped (a newer instance?)"
                );
            }
            return;
        }
        Err(e) => {
            inner.metrics.invalid_payloads.inc();
            if INVALID_LOG.allow() {
                tracing::warn!(room, error = %e, "Undecodable bus event skipped");
            }
            return;
        }
    };
    let mut map = inner.rooms.map.lock();
    let Some(st) = map.get_mut(room) else {
        return;
    };
    if let RoomEvent::Comment(comment) = &event {
        if !st.recovered.is_empty() {
            if st.recovered.remove(&comment.id) {
                return;
            }
            // Live comments come in publish order: past the overlap.
            st.recovered.clear();
        }
        st.last = Some(comment.clone());
    }
    // Without a local subscription (lingering) this hands it to nobody.
    st.fanout.send(event);
}

fn dispatch_control(inner: &Inner, payload: &[u8]) {
    match envelope::decode_control(payload) {
        Ok(Some(msg)) => {
            // An error only means nobody listens.
            let _ = inner.control.send(msg);
        }
        Ok(None) => {
            inner.metrics.unknown_events.inc();
            if UNKNOWN_LOG.allow() {
                tracing::warn!("Control message of a newer version skipped");
            }
        }
        Err(e) => {
            inner.metrics.invalid_payloads.inc();
            if INVALID_LOG.allow() {
                tracing::warn!(error = %e, "Undecodable control message skipped");
            }
        }
    }
}
