//! Durable fleet state: the [`StateStore`] trait. Moderation keeps its
//! mutes, room modes, word lists and action log here; the bus stores
//! opaque bytes in named tables and logs, and does not read them.
//!
//! Redis keeps it under the deployment prefix; the embedded bus keeps it in
//! memory and, when it has a `state_dir`, in a file written atomically, so
//! nothing written is lost by a restart in either mode.

use bytes::Bytes;

use crate::{BoxFuture, BusError, ControlMessage};

/// One change to a table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StateOp {
    /// Sets `field` of `table` to `value`.
    Put {
        /// The table, e.g. `mutes`.
        table: String,
        /// The field within it.
        field: String,
        /// The value, opaque to the bus.
        value: Bytes,
    },
    /// Removes `field` from `table`; nothing happens if it is absent.
    Delete {
        /// The table.
        table: String,
        /// The field within it.
        field: String,
    },
}

/// One write: table changes, log entries and an announcement, applied as
/// one atomic step (a `MULTI` in Redis), so an instance that loads the
/// state after the announcement sees the change.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StateWrite {
    /// Table changes, in order.
    pub ops: Vec<StateOp>,
    /// Entries appended to logs: (log name, entry). Each log keeps only its
    /// newest [`crate::BusConfig::state_log_len`] entries.
    pub log: Vec<(String, Bytes)>,
    /// Published on the control channel once the write is stored.
    pub announce: Option<ControlMessage>,
}

/// Every table: name, then its fields and values, in no particular order.
pub type StateSnapshot = Vec<(String, Vec<(String, Bytes)>)>;

/// Durable state shared by the fleet.
pub trait StateStore: Send + Sync + 'static {
    /// Every table with its fields. Resolves within
    /// [`crate::BusConfig::op_timeout`].
    fn load_state(&self) -> BoxFuture<'_, Result<StateSnapshot, BusError>>;

    /// Applies one write atomically; `Err` means none of it took effect.
    /// Resolves within [`crate::BusConfig::op_timeout`].
    fn write_state(&self, write: StateWrite) -> BoxFuture<'_, Result<(), BusError>>;

    /// A log's newest `n` entries, newest first. Resolves within
    /// [`crate::BusConfig::op_timeout`].
    fn read_log(&self, log: &str, n: usize) -> BoxFuture<'_, Result<Vec<Bytes>, BusError>>;
}
