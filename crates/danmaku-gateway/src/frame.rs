//! A frame ready for the wire, as outboxes and room tasks hold it.
//!
//! Room tasks and outboxes deal only in [`Frame`]: a shared, already-encoded
//! payload that every viewer's queue clones by reference count. The
//! WebSocket message type is made from it only in `conn.rs`, where frames
//! are written. The text payload is kept in a UTF-8-checked shared buffer
//! from the start because the WebSocket library offers no unchecked
//! conversion from plain bytes, and re-validating a shared frame once per
//! viewer would cost more than the rest of the push.

use axum::extract::ws::Utf8Bytes;
use bytes::Bytes;
use danmaku_proto::Encoded;

/// One outbound frame.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Frame {
    /// A JSON text frame.
    Text(Utf8Bytes),
    /// A MessagePack binary frame.
    Binary(Bytes),
    /// A WebSocket ping, written by the connection on its pulse.
    Ping,
}

impl From<Encoded> for Frame {
    fn from(encoded: Encoded) -> Frame {
        match encoded {
            Encoded::Text(s) => Frame::Text(s.into()),
            Encoded::Binary(b) => Frame::Binary(b.into()),
        }
    }
}

impl Frame {
    /// The payload, for tests and logs.
    #[cfg(test)]
    pub(crate) fn as_bytes(&self) -> &[u8] {
        match self {
            Frame::Text(s) => s.as_bytes(),
            Frame::Binary(b) => b,
            Frame::Ping => &[],
        }
    }
}
