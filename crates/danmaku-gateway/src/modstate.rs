//! Moderation state: what moderators decided, kept in step across the fleet.
//!
//! The rules (mutes, room modes, word lists) live in the bus's
//! [`StateStore`] (Redis, or memory plus a file in `data_dir`), so a restart
//! loses nothing. Every action is one atomic write that stores the change,
//! appends it to the action log and announces it on the control channel;
//! every instance applies announced changes to its [`Moderator`], and
//! reloads everything when the bus says it may have missed some. An
//! instance takes no post until it has loaded the rules once.
//!
//! Both ways in, the admin HTTP API and the WebSocket `moderate` command,
//! go through [`ModState::act`] and [`ModState::recall`], so they check and
//! do exactly the same things.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use danmaku_bus::{
    now_ms, Bus, BusError, ControlMessage, RecvError, RoomEvent, StateOp, StateSnapshot,
    StateWrite, CONTROL_RESYNC,
};
use danmaku_moderation::{
    normalize, Change, FieldError, Moderator, Mute, RoomSettings, Snapshot, WordAction,
};
use danmaku_proto::{Role, RoomId};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::metrics::ActionCounters;

/// Table of mutes; field `<room or *>:<user>`, value a JSON [`Mute`].
const MUTES: &str = "mutes";
/// Table of room modes; field the room, value JSON [`RoomSettings`].
const ROOMS: &str = "rooms";
/// Table of blocked words; field the word normalised (so spellings that
/// match alike are one entry, as in the moderator), value a JSON
/// [`WordEntry`].
const BLOCKLIST: &str = "blocklist";
/// Table of allowed words; field the word normalised, value the word as
/// given.
const ALLOWLIST: &str = "allowlist";
/// The action log of fleet-wide actions; rooms have `room:<room>`.
const GLOBAL_LOG: &str = "global";

/// Control message kind of one change; body a JSON [`Change`].
const KIND_CHANGE: &str = "moderation.change";
/// Control message kind asking every instance to reload all the rules.
const KIND_RELOAD: &str = "moderation.reload";

/// Longest recalled id accepted; ids the gateway hands out are far shorter.
const MAX_ID_BYTES: usize = 128;
/// Longest mute accepted, in seconds (ten years): longer is `0`, permanent.
const MAX_MUTE_SECS: u64 = 10 * 365 * 24 * 3600;
/// Actions shown by [`ModState::room_view`].
const VIEW_ACTIONS: usize = 50;

/// A blocked word as stored: its spelling as given and its action.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct WordEntry {
    word: String,
    action: WordAction,
}

/// Who acts: from `admin_token`, or from a moderator's or admin's token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Actor {
    /// Recorded in the action log as `by`.
    pub(crate) name: String,
    /// `Moderator` or `Admin`; a viewer is refused before it acts.
    pub(crate) role: Role,
    /// The rooms a moderator may act in; `None` for all.
    pub(crate) rooms: Option<Vec<String>>,
}

impl Actor {
    /// Whether this actor may act in `room`.
    pub(crate) fn may_act_in(&self, room: &str) -> bool {
        match self.role {
            Role::Admin => true,
            Role::Moderator => self
                .rooms
                .as_ref()
                .is_none_or(|rooms| rooms.iter().any(|r| r == room)),
            Role::Viewer => false,
        }
    }

    /// Whether this actor may take fleet-wide actions (global mutes, word
    /// lists): admins, and moderators not limited to some rooms.
    pub(crate) fn may_act_everywhere(&self) -> bool {
        match self.role {
            Role::Admin => true,
            Role::Moderator => self.rooms.is_none(),
            Role::Viewer => false,
        }
    }
}

/// Why an action was not confirmed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ActError {
    /// The actor may not do this here.
    #[error("{0}")]
    Forbidden(String),
    /// A field is wrong.
    #[error("{0}")]
    BadRequest(#[from] FieldError),
    /// The store did not confirm it in time.
    #[error("{0}")]
    Unavailable(#[from] BusError),
}

/// One entry of the action log: who did what, when, where.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ActionRecord {
    /// When, in ms since the Unix epoch.
    pub at_ms: u64,
    /// Who: a token's `sub`, or `admin-token`.
    pub by: String,
    /// The kind: `mute`, `unmute`, `room_settings`, `block_word`,
    /// `unblock_word`, `allow_word`, `disallow_word` or `recall`.
    pub action: String,
    /// The room, for actions in one room.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub room: Option<String>,
    /// What exactly: the change, or the recalled id.
    pub detail: serde_json::Value,
}

/// `GET /api/rooms/{room}/moderation`: a room's rules and recent actions.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RoomModeration {
    /// The room.
    pub room: String,
    /// Its modes.
    pub settings: RoomSettings,
    /// Mutes in force there: the room's and the global ones.
    pub mutes: Vec<Mute>,
    /// The room's most recent actions, newest first.
    pub actions: Vec<ActionRecord>,
}

/// The moderation state service of one gateway.
pub(crate) struct ModState {
    bus: Arc<dyn Bus>,
    pub(crate) moderator: Moderator,
    actions: ActionCounters,
    instance_id: String,
    /// Set once the rules have been loaded; posts wait for it.
    ready: AtomicBool,
    /// Words of `blocklist_file`, merged into the shared list at start.
    seed: Vec<(String, WordAction)>,
}

impl ModState {
    pub(crate) fn new(
        bus: Arc<dyn Bus>,
        moderator: Moderator,
        actions: ActionCounters,
        instance_id: String,
        seed: Vec<(String, WordAction)>,
    ) -> ModState {
        ModState {
            bus,
            moderator,
            actions,
            instance_id,
            ready: AtomicBool::new(false),
            seed,
        }
    }

    /// Whether the rules are loaded, so posts may be judged.
    pub(crate) fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    /// Validates, authorises and takes one action: stores it, logs it,
    /// announces it to the fleet, and applies it here. A refusal
    /// (`Forbidden`, `BadRequest`) changed nothing; after `Unavailable` the
    /// store did not confirm in time and the write may still land, which is
    /// harmless since every action is idempotent (the same change twice is
    /// the change once).
    pub(crate) async fn act(&self, actor: &Actor, change: Change) -> Result<(), ActError> {
        change.validate()?;
        let (kind, room) = describe(&change);
        match room {
            Some(room) if !actor.may_act_in(room) => {
                return Err(ActError::Forbidden(format!(
                    "you may not moderate room {room}"
                )))
            }
            None if !actor.may_act_everywhere() => {
                return Err(ActError::Forbidden(
                    "fleet-wide actions need an admin or a moderator of every room".into(),
                ))
            }
            _ => {}
        }
        let body = json_bytes(&change);
        let record = ActionRecord {
            at_ms: now_ms(),
            by: actor.name.clone(),
            action: kind.into(),
            room: room.map(str::to_owned),
            detail: serde_json::to_value(&change).unwrap_or_default(),
        };
        let write = StateWrite {
            ops: ops_for(&change),
            log: vec![(log_name(room), json_bytes(&record))],
            announce: Some(ControlMessage {
                origin: self.instance_id.clone(),
                kind: KIND_CHANGE.into(),
                body,
            }),
        };
        self.bus.write_state(write).await?;
        if let Err(e) = self.moderator.apply(&change) {
            // Validated above, so this is a bug, not bad input.
            tracing::error!(error = %e, "A stored change could not be applied");
        }
        self.actions.inc(kind);
        tracing::info!(by = %actor.name, action = kind, room = room.unwrap_or("*"), "Moderator action");
        Ok(())
    }

    /// Recalls comment `id` of `room`: removes it from history, then tells
    /// every viewer on every instance to take it off the screen. `Ok(true)`
    /// if it was still in history.
    pub(crate) async fn recall(
        &self,
        actor: &Actor,
        room: &RoomId,
        id: &str,
    ) -> Result<bool, ActError> {
        if !actor.may_act_in(room.as_str()) {
            return Err(ActError::Forbidden(format!(
                "you may not moderate room {room}"
            )));
        }
        if id.is_empty() || id.len() > MAX_ID_BYTES || id.chars().any(char::is_control) {
            return Err(ActError::BadRequest(FieldError {
                field: "id",
                message: format!("must be 1 to {MAX_ID_BYTES} bytes without control characters"),
            }));
        }
        let was_there = self.bus.remove_history(room, id).await?;
        self.bus
            .publish(room, RoomEvent::Delete { id: id.to_owned() })
            .await?;
        let record = ActionRecord {
            at_ms: now_ms(),
            by: actor.name.clone(),
            action: "recall".into(),
            room: Some(room.as_str().to_owned()),
            detail: serde_json::json!({ "id": id, "in_history": was_there }),
        };
        let write = StateWrite {
            log: vec![(log_name(Some(room.as_str())), json_bytes(&record))],
            ..StateWrite::default()
        };
        // The recall itself is done; a log that could not be written is
        // worth a warning, not a failure the moderator would retry.
        if let Err(e) = self.bus.write_state(write).await {
            tracing::warn!(error = %e, "Recall done but not logged");
        }
        self.actions.inc("recall");
        tracing::info!(by = %actor.name, room = %room, id, "Comment recalled");
        Ok(was_there)
    }

    /// A room's rules and recent actions.
    pub(crate) async fn room_view(&self, room: &RoomId) -> Result<RoomModeration, ActError> {
        let view = self.moderator.room_view(room.as_str(), now_ms());
        let actions = self
            .bus
            .read_log(&log_name(Some(room.as_str())), VIEW_ACTIONS)
            .await?
            .iter()
            .filter_map(|entry| serde_json::from_slice(entry).ok())
            .collect();
        Ok(RoomModeration {
            room: room.as_str().to_owned(),
            settings: view.settings,
            mutes: view.mutes,
            actions,
        })
    }

    /// Loads every rule from the store, replacing what this instance had.
    async fn reload(&self) -> Result<(), BusError> {
        let tables = self.bus.load_state().await?;
        if let Err(e) = self.moderator.replace(snapshot_from(tables)) {
            // The rules in force stay; what was stored is reported.
            tracing::error!(error = %e, "Stored moderation rules could not be loaded");
        }
        Ok(())
    }

    /// Puts the words of `blocklist_file` the shared list lacks (or has
    /// with another action) into it, and tells the fleet to reload. Words
    /// removed at runtime come back at the next start while the file still
    /// lists them: the file is the operator's baseline.
    async fn seed_blocklist(&self) -> Result<(), BusError> {
        let current = self.moderator.snapshot().blocklist;
        let ops: Vec<StateOp> = self
            .seed
            .iter()
            .filter(|entry| !current.contains(entry))
            .flat_map(|(word, action)| {
                ops_for(&Change::BlockWord {
                    word: word.clone(),
                    action: *action,
                })
            })
            .collect();
        if ops.is_empty() {
            return Ok(());
        }
        let added = ops.len();
        self.bus
            .write_state(StateWrite {
                ops,
                log: Vec::new(),
                announce: Some(ControlMessage {
                    origin: self.instance_id.clone(),
                    kind: KIND_RELOAD.into(),
                    body: Bytes::new(),
                }),
            })
            .await?;
        tracing::info!(
            added,
            "Blocked words from blocklist_file added to the shared list"
        );
        self.reload().await
    }

    /// Removes mutes that have ended from the store, so it does not grow
    /// with them. Every instance may do it; deleting twice is harmless.
    async fn purge_expired(&self) {
        let expired = self.moderator.expired_mutes(now_ms());
        if expired.is_empty() {
            return;
        }
        let ops = expired
            .iter()
            .map(|(room, user)| StateOp::Delete {
                table: MUTES.into(),
                field: mute_field(room.as_deref(), user),
            })
            .collect();
        let write = StateWrite {
            ops,
            ..StateWrite::default()
        };
        if let Err(e) = self.bus.write_state(write).await {
            tracing::debug!(error = %e, "Could not purge expired mutes; will retry");
        }
    }

    /// Keeps this instance's rules in step until shutdown: loads them
    /// (retrying while the store is down), merges the word file, then
    /// applies announced changes, reloading whenever messages may have been
    /// missed; and evicts idle limiter keys on a timer.
    pub(crate) async fn run(
        self: Arc<Self>,
        evict_every: Duration,
        mut shutdown: watch::Receiver<bool>,
    ) {
        // Subscribed before loading, so no change falls between the two.
        let mut control = self.bus.subscribe_control();
        let mut retry = Duration::from_millis(100);
        loop {
            match self.reload().await {
                Ok(()) => match self.seed_blocklist().await {
                    Ok(()) => break,
                    Err(e) => tracing::warn!(error = %e, "Could not merge blocklist_file"),
                },
                Err(e) => tracing::warn!(error = %e, "Could not load moderation state"),
            }
            tokio::select! {
                _ = tokio::time::sleep(retry) => {}
                _ = stopped(&mut shutdown) => return,
            }
            retry = (retry * 2).min(Duration::from_secs(2));
        }
        self.ready.store(true, Ordering::Release);
        tracing::info!("Moderation state loaded");
        let mut evict = tokio::time::interval(evict_every);
        evict.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        evict.tick().await;
        let mut stale = false;
        loop {
            if stale {
                match self.reload().await {
                    Ok(()) => stale = false,
                    Err(e) => tracing::warn!(error = %e, "Could not reload moderation state"),
                }
            }
            tokio::select! {
                msg = control.recv() => match msg {
                    Ok(msg) => stale |= self.on_control(msg),
                    Err(RecvError::Lagged(n)) => {
                        tracing::warn!(missed = n, "Control messages missed; reloading");
                        stale = true;
                    }
                    Err(RecvError::Closed) => return,
                },
                _ = evict.tick() => {
                    self.moderator.evict_idle();
                    self.purge_expired().await;
                }
                _ = tokio::time::sleep(Duration::from_secs(1)), if stale => {}
                _ = stopped(&mut shutdown) => return,
            }
        }
    }

    /// Handles one control message; `true` asks for a reload.
    fn on_control(&self, msg: ControlMessage) -> bool {
        match msg.kind.as_str() {
            KIND_CHANGE => match serde_json::from_slice::<Change>(&msg.body) {
                Ok(change) => match self.moderator.apply(&change) {
                    Ok(()) => false,
                    Err(e) => {
                        tracing::warn!(error = %e, origin = %msg.origin, "Unusable moderation change; reloading");
                        true
                    }
                },
                Err(e) => {
                    tracing::warn!(error = %e, origin = %msg.origin, "Undecodable moderation change; reloading");
                    true
                }
            },
            KIND_RELOAD | CONTROL_RESYNC => true,
            _ => false,
        }
    }
}

/// Resolves once shutdown starts. Its own function so the watch guard
/// `wait_for` returns is dropped inside it, keeping callers' futures `Send`.
async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|s| *s).await;
}

/// The kind of a change, as counted and logged, and the room it is in
/// (`None` for fleet-wide ones).
fn describe(change: &Change) -> (&'static str, Option<&str>) {
    match change {
        Change::Mute(m) => ("mute", m.room.as_deref()),
        Change::Unmute { room, .. } => ("unmute", room.as_deref()),
        Change::RoomSettings { room, .. } => ("room_settings", Some(room)),
        Change::BlockWord { .. } => ("block_word", None),
        Change::UnblockWord { .. } => ("unblock_word", None),
        Change::AllowWord { .. } => ("allow_word", None),
        Change::DisallowWord { .. } => ("disallow_word", None),
    }
}

/// The store operations that make `change` durable.
fn ops_for(change: &Change) -> Vec<StateOp> {
    let put = |table: &str, field: String, value: Bytes| StateOp::Put {
        table: table.into(),
        field,
        value,
    };
    let delete = |table: &str, field: String| StateOp::Delete {
        table: table.into(),
        field,
    };
    vec![match change {
        Change::Mute(m) => put(MUTES, mute_field(m.room.as_deref(), &m.user), json_bytes(m)),
        Change::Unmute { room, user } => delete(MUTES, mute_field(room.as_deref(), user)),
        Change::RoomSettings { room, settings } if *settings == RoomSettings::default() => {
            delete(ROOMS, room.clone())
        }
        Change::RoomSettings { room, settings } => put(ROOMS, room.clone(), json_bytes(settings)),
        Change::BlockWord { word, action } => put(
            BLOCKLIST,
            normalize(word),
            json_bytes(&WordEntry {
                word: word.clone(),
                action: *action,
            }),
        ),
        Change::UnblockWord { word } => delete(BLOCKLIST, normalize(word)),
        Change::AllowWord { word } => put(ALLOWLIST, normalize(word), Bytes::from(word.clone())),
        Change::DisallowWord { word } => delete(ALLOWLIST, normalize(word)),
    }]
}

/// The rules held in the store's tables; entries that do not decode are
/// skipped with a warning rather than stopping the instance.
fn snapshot_from(tables: StateSnapshot) -> Snapshot {
    let mut snapshot = Snapshot::default();
    for (table, fields) in tables {
        for (field, value) in fields {
            let ok = match table.as_str() {
                MUTES => serde_json::from_slice(&value)
                    .map(|m| snapshot.mutes.push(m))
                    .is_ok(),
                ROOMS => serde_json::from_slice(&value)
                    .map(|s| snapshot.rooms.push((field.clone(), s)))
                    .is_ok(),
                BLOCKLIST => serde_json::from_slice::<WordEntry>(&value)
                    .map(|e| snapshot.blocklist.push((e.word, e.action)))
                    .is_ok(),
                ALLOWLIST => String::from_utf8(value.to_vec())
                    .map(|word| snapshot.allowlist.push(word))
                    .is_ok(),
                _ => true,
            };
            if !ok {
                tracing::warn!(
                    table,
                    field,
                    "Skipping a moderation entry that does not decode"
                );
            }
        }
    }
    snapshot
}

/// A mute's field in its table: rooms never hold `:` or `*`.
fn mute_field(room: Option<&str>, user: &str) -> String {
    format!("{}:{user}", room.unwrap_or("*"))
}

/// The action log an action in `room` (or fleet-wide) goes to.
fn log_name(room: Option<&str>) -> String {
    match room {
        Some(room) => format!("room:{room}"),
        None => GLOBAL_LOG.into(),
    }
}

fn json_bytes<T: Serialize>(value: &T) -> Bytes {
    // Plain data types: serialising cannot fail.
    Bytes::from(serde_json::to_vec(value).unwrap_or_default())
}

/// A mute of `user` set by `actor` now for `seconds` (0 = permanent).
pub(crate) fn mute(
    actor: &Actor,
    room: Option<&RoomId>,
    user: String,
    seconds: u64,
    shadow: bool,
) -> Result<Change, FieldError> {
    if seconds > MAX_MUTE_SECS {
        return Err(FieldError {
            field: "seconds",
            message: format!("must be at most {MAX_MUTE_SECS} (ten years); 0 is permanent"),
        });
    }
    let at_ms = now_ms();
    Ok(Change::Mute(Mute {
        user,
        room: room.map(|r| r.as_str().to_owned()),
        until_ms: (seconds > 0).then(|| at_ms + seconds * 1000),
        shadow,
        by: actor.name.clone(),
        at_ms,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn actor(role: Role, rooms: Option<&[&str]>) -> Actor {
        Actor {
            name: "m".into(),
            role,
            rooms: rooms.map(|r| r.iter().map(|s| s.to_string()).collect()),
        }
    }

    #[test]
    fn who_may_act_where() {
        let admin = actor(Role::Admin, None);
        let everywhere = actor(Role::Moderator, None);
        let lobby = actor(Role::Moderator, Some(&["lobby"]));
        let viewer = actor(Role::Viewer, None);
        assert!(admin.may_act_in("x") && admin.may_act_everywhere());
        assert!(everywhere.may_act_in("x") && everywhere.may_act_everywhere());
        assert!(lobby.may_act_in("lobby") && !lobby.may_act_in("x"));
        assert!(!lobby.may_act_everywhere());
        assert!(!viewer.may_act_in("lobby") && !viewer.may_act_everywhere());
    }

    #[test]
    fn changes_round_trip_through_the_tables() {
        let admin = actor(Role::Admin, None);
        let room = RoomId::parse("lobby").unwrap();
        let changes = [
            mute(&admin, Some(&room), "bob".into(), 60, true).unwrap(),
            mute(&admin, None, "eve".into(), 0, false).unwrap(),
            Change::RoomSettings {
                room: "lobby".into(),
                settings: RoomSettings {
                    slow_mode_secs: 5,
                    locked: true,
                },
            },
            Change::BlockWord {
                word: "bad".into(),
                action: WordAction::Mask,
            },
            Change::AllowWord {
                word: "good".into(),
            },
        ];
        let mut tables: std::collections::BTreeMap<String, Vec<(String, Bytes)>> =
            Default::default();
        for change in &changes {
            for op in ops_for(change) {
                let StateOp::Put {
                    table,
                    field,
                    value,
                } = op
                else {
                    panic!("only puts expected");
                };
                tables.entry(table).or_default().push((field, value));
            }
        }
        let snapshot = snapshot_from(tables.into_iter().collect());
        assert_eq!(snapshot.mutes.len(), 2);
        assert!(snapshot.mutes.iter().any(|m| m.user == "bob" && m.shadow));
        assert!(snapshot
            .mutes
            .iter()
            .any(|m| m.user == "eve" && m.until_ms.is_none()));
        assert_eq!(snapshot.rooms[0].1.slow_mode_secs, 5);
        assert_eq!(snapshot.blocklist, vec![("bad".into(), WordAction::Mask)]);
        assert_eq!(snapshot.allowlist, vec!["good".to_string()]);
        // Clearing a room's modes deletes its entry rather than storing defaults.
        let clear = Change::RoomSettings {
            room: "lobby".into(),
            settings: RoomSettings::default(),
        };
        assert!(matches!(&ops_for(&clear)[0], StateOp::Delete { .. }));
    }

    #[test]
    fn over_long_mutes_are_refused_naming_seconds() {
        let admin = actor(Role::Admin, None);
        let err = mute(&admin, None, "u".into(), MAX_MUTE_SECS + 1, false).unwrap_err();
        assert_eq!(err.field, "seconds");
    }
}
