//! What travels on the bus: [`RoomEvent`]s on a room's channel, and
//! [`ControlMessage`]s on the fleet-wide control channel. Plain values; how
//! they are encoded on the wire is `envelope.rs`'s business.

use std::sync::Arc;

use bytes::Bytes;
use danmaku_proto::Danmaku;

/// What travels on a room's channel.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum RoomEvent {
    /// An accepted comment; publishing it also appends it to the room's
    /// history in the same atomic step.
    Comment(Arc<Danmaku>),
    /// A recalled comment: viewers remove it from the screen. Publishing it
    /// does not touch history (see [`crate::Broker::remove_history`]).
    Delete {
        /// The recalled comment's id.
        id: String,
    },
}

impl RoomEvent {
    /// The event's kind as named on the wire and in logs and metrics:
    /// `"comment"` or `"delete"`.
    pub fn kind(&self) -> &'static str {
        match self {
            RoomEvent::Comment(_) => "comment",
            RoomEvent::Delete { .. } => "delete",
        }
    }
}

/// The `kind` of a control message the bus itself delivers, with an empty
/// `origin` and `body`, when it may have missed messages (the pub/sub link
/// was down, or the receiver lagged): receivers reload whatever state they
/// keep from control messages.
pub const CONTROL_RESYNC: &str = "bus.resync";

/// A node-to-node control message. The bus does not interpret `kind` or
/// `body`: they belong to whoever sends them (moderation, next).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ControlMessage {
    /// The sending instance's id, so a receiver can tell its own messages.
    pub origin: String,
    /// What the message is about, for the receiver to route it.
    pub kind: String,
    /// The payload, opaque to the bus.
    pub body: Bytes,
}
