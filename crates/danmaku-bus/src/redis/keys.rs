//! Names of the Redis keys and channels the bus uses, all under one prefix
//! so deployments can share a Redis. The only place a name is spelled out.
//!
//! | name                  | type    | what                                             |
//! |-----------------------|---------|--------------------------------------------------|
//! | `{p}room:{room}`      | channel | each room event, in an envelope (`envelope.rs`)  |
//! | `{p}history:{room}`   | list    | the comment envelopes, newest last, capped, expiring |
//! | `{p}control`          | channel | fleet-wide control messages                      |
//! | `{p}instance:{id}`    | hash    | an instance's last heartbeat, expiring after TTL |
//! | `{p}instances`        | zset    | instance ids scored by last heartbeat (ms)       |
//! | `{p}probe:{token}`    | string  | a bus's write probe, set on each ping, expiring  |
//! | `{p}limit:{key}`      | string  | a limit's state: a GCRA key's TAT (µs, Redis clock), a `Once` key's marker; expiring once it holds no information |
//! | `{p}state:{table}`    | hash    | a `StateStore` table: field to opaque bytes      |
//! | `{p}state-tables`     | set     | the names of the tables, so they can be listed   |
//! | `{p}log:{name}`       | list    | a `StateStore` log, newest first, capped         |
//!
//! The table set is not `{p}state:tables`, so no table name can collide
//! with it.

/// Names of keys and channels under the prefix.
#[derive(Debug, Clone)]
pub(crate) struct Keys {
    prefix: String,
}

impl Keys {
    pub(crate) fn new(prefix: &str) -> Keys {
        Keys {
            prefix: prefix.to_owned(),
        }
    }

    pub(crate) fn prefix(&self) -> &str {
        &self.prefix
    }

    /// A room's pub/sub channel.
    pub(crate) fn channel(&self, room: &str) -> String {
        format!("{}room:{room}", self.prefix)
    }

    /// The room a channel belongs to, if it is a room channel.
    pub(crate) fn room_of<'a>(&self, channel: &'a str) -> Option<&'a str> {
        channel.strip_prefix(&self.prefix)?.strip_prefix("room:")
    }

    /// A room's history list.
    pub(crate) fn history(&self, room: &str) -> String {
        format!("{}history:{room}", self.prefix)
    }

    /// The fleet-wide control channel.
    pub(crate) fn control(&self) -> String {
        format!("{}control", self.prefix)
    }

    /// Whether `channel` is the control channel.
    pub(crate) fn is_control(&self, channel: &str) -> bool {
        channel.strip_prefix(&self.prefix) == Some("control")
    }

    /// An instance's heartbeat hash.
    pub(crate) fn instance(&self, id: &str) -> String {
        format!("{}instance:{id}", self.prefix)
    }

    /// A bus's write-probe key; `token` is random per bus.
    pub(crate) fn probe(&self, token: &str) -> String {
        format!("{}probe:{token}", self.prefix)
    }

    /// A limit's state; `key` is the caller's, opaque.
    pub(crate) fn limit(&self, key: &str) -> String {
        format!("{}limit:{key}", self.prefix)
    }

    /// What every table's hash name starts with (the table name follows).
    pub(crate) fn state_table_prefix(&self) -> String {
        format!("{}state:", self.prefix)
    }

    /// A state table's hash.
    pub(crate) fn state_table(&self, table: &str) -> String {
        format!("{}state:{table}", self.prefix)
    }

    /// The set of state table names.
    pub(crate) fn state_tables(&self) -> String {
        format!("{}state-tables", self.prefix)
    }

    /// A state log's list.
    pub(crate) fn state_log(&self, log: &str) -> String {
        format!("{}log:{log}", self.prefix)
    }

    /// The index of instances by last heartbeat.
    pub(crate) fn instances(&self) -> String {
        format!("{}instances", self.prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_live_under_the_prefix_and_room_channels_map_back() {
        let keys = Keys::new("t:");
        assert_eq!(keys.channel("a"), "t:room:a");
        assert_eq!(keys.room_of("t:room:a"), Some("a"));
        assert_eq!(keys.room_of("t:control"), None);
        assert_eq!(keys.room_of("u:room:a"), None);
        assert_eq!(keys.history("a"), "t:history:a");
        assert_eq!(keys.control(), "t:control");
        assert!(keys.is_control("t:control"));
        assert!(!keys.is_control("t:room:control"));
        assert_eq!(keys.instance("gw"), "t:instance:gw");
        assert_eq!(keys.instances(), "t:instances");
        assert_eq!(keys.probe("ab12"), "t:probe:ab12");
        assert_eq!(keys.limit("user:a"), "t:limit:user:a");
        assert_eq!(keys.state_table("mutes"), "t:state:mutes");
        assert_eq!(
            keys.state_table_prefix() + "mutes",
            keys.state_table("mutes")
        );
        assert_eq!(keys.state_tables(), "t:state-tables");
        assert_ne!(keys.state_tables(), keys.state_table("tables"));
        assert_eq!(keys.state_log("actions"), "t:log:actions");
    }
}
