//! The rules in force on one instance, indexed for the hot path: mutes by
//! room then user (looked up with borrowed strings, no allocation), room
//! modes by room, and the word lists behind an `Arc` so a post can keep
//! using the list it started with while an edit swaps in a new one.

use std::collections::HashMap;
use std::sync::Arc;

use crate::rules::{Mute, RoomSettings, Snapshot};
use crate::words::Words;

/// Every rule, as the pipeline reads it.
#[derive(Debug, Default)]
pub(crate) struct Rules {
    /// Room → user → mute.
    room_mutes: HashMap<String, HashMap<String, Mute>>,
    /// User → global mute.
    global_mutes: HashMap<String, Mute>,
    /// Rooms whose modes are not the default.
    rooms: HashMap<String, RoomSettings>,
    /// Blocked and allowed words.
    pub(crate) words: Arc<Words>,
}

impl Rules {
    /// The rules of a snapshot, with its word lists already built.
    pub(crate) fn from_snapshot(snapshot: Snapshot, words: Words) -> Rules {
        let mut rules = Rules {
            words: Arc::new(words),
            ..Rules::default()
        };
        for mute in snapshot.mutes {
            rules.mute(mute);
        }
        for (room, settings) in snapshot.rooms {
            rules.set_room(room, settings);
        }
        rules
    }

    /// Sets or replaces a mute.
    pub(crate) fn mute(&mut self, mute: Mute) {
        match &mute.room {
            Some(room) => {
                self.room_mutes
                    .entry(room.clone())
                    .or_default()
                    .insert(mute.user.clone(), mute);
            }
            None => {
                self.global_mutes.insert(mute.user.clone(), mute);
            }
        }
    }

    /// Lifts a mute, if there is one.
    pub(crate) fn unmute(&mut self, room: Option<&str>, user: &str) {
        match room {
            Some(room) => {
                if let Some(users) = self.room_mutes.get_mut(room) {
                    users.remove(user);
                    if users.is_empty() {
                        self.room_mutes.remove(room);
                    }
                }
            }
            None => {
                self.global_mutes.remove(user);
            }
        }
    }

    /// Sets a room's modes; the default ones are not stored.
    pub(crate) fn set_room(&mut self, room: String, settings: RoomSettings) {
        if settings == RoomSettings::default() {
            self.rooms.remove(&room);
        } else {
            self.rooms.insert(room, settings);
        }
    }

    /// A room's modes.
    pub(crate) fn room(&self, room: &str) -> RoomSettings {
        self.rooms.get(room).copied().unwrap_or_default()
    }

    /// The room mute and the global mute of `user`, either possibly absent.
    pub(crate) fn mutes_of(&self, room: &str, user: &str) -> [Option<&Mute>; 2] {
        [
            self.room_mutes.get(room).and_then(|users| users.get(user)),
            self.global_mutes.get(user),
        ]
    }

    /// Every mute, room mutes first, in no particular order.
    fn all_mutes(&self) -> impl Iterator<Item = &Mute> {
        self.room_mutes
            .values()
            .flat_map(HashMap::values)
            .chain(self.global_mutes.values())
    }

    /// A room's unexpired mutes and the unexpired global ones, sorted by
    /// room (global first) then user.
    pub(crate) fn room_mutes(&self, room: &str, wall_ms: u64) -> Vec<Mute> {
        let mut mutes: Vec<Mute> = self
            .room_mutes
            .get(room)
            .into_iter()
            .flat_map(HashMap::values)
            .chain(self.global_mutes.values())
            .filter(|m| m.active_at(wall_ms))
            .cloned()
            .collect();
        mutes.sort_by(|a, b| (&a.room, &a.user).cmp(&(&b.room, &b.user)));
        mutes
    }

    /// (room, user) of every mute that has ended by `wall_ms`, sorted.
    pub(crate) fn expired(&self, wall_ms: u64) -> Vec<(Option<String>, String)> {
        let mut expired: Vec<_> = self
            .all_mutes()
            .filter(|m| !m.active_at(wall_ms))
            .map(|m| (m.room.clone(), m.user.clone()))
            .collect();
        expired.sort();
        expired
    }

    /// All the rules as values, each list sorted.
    pub(crate) fn snapshot(&self) -> Snapshot {
        let mut mutes: Vec<Mute> = self.all_mutes().cloned().collect();
        mutes.sort_by(|a, b| (&a.room, &a.user).cmp(&(&b.room, &b.user)));
        let mut rooms: Vec<_> = self
            .rooms
            .iter()
            .map(|(room, settings)| (room.clone(), *settings))
            .collect();
        rooms.sort_by(|a, b| a.0.cmp(&b.0));
        Snapshot {
            mutes,
            rooms,
            blocklist: self.words.blocklist(),
            allowlist: self.words.allowlist(),
        }
    }
}
