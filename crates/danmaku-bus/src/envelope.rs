//! The wire format of what the Redis bus publishes: a versioned, tagged
//! envelope, MessagePack with named fields, so instances of different
//! versions can share a fleet during a rolling upgrade.
//!
//! Room channel (`{p}room:{room}`), one message per [`RoomEvent`]:
//!
//! ```text
//! {"v": 1, "kind": "comment", "comment": {<Danmaku, named fields>}}
//! {"v": 1, "kind": "delete",  "id": "<comment id>"}
//! ```
//!
//! History (`{p}history:{room}`) holds the very bytes published for each
//! comment (only comments are kept), so publish encodes once and a reader
//! of history decodes with the same [`decode`].
//!
//! Control channel (`{p}control`), one message per [`ControlMessage`]:
//!
//! ```text
//! {"v": 1, "origin": "<instance id>", "kind": "<kind>", "body": <bin>}
//! ```
//!
//! Compatibility rules, the promises this format makes:
//!
//! - A field added to a v1 envelope is ignored by v1 readers: adding one
//!   does not bump `v`.
//! - A new `kind` does not bump `v` either: a reader that does not know it
//!   gets [`Decoded::Unknown`], skips it and counts it.
//! - `v` is bumped only for a change v1 readers would misread (a known kind
//!   changing shape). A reader meeting a higher `v` than its own skips the
//!   message as [`Decoded::Unknown`] whatever its kind, since it cannot
//!   trust its reading of it.
//! - A map without `v` is the legacy payload (before envelopes): a bare
//!   `Danmaku`, read as a comment, so history and messages from instances
//!   not yet upgraded keep working.
//! - Anything else (not MessagePack, `v` of 0, a known kind missing its
//!   fields) is an [`EnvelopeError`].

use std::sync::Arc;

use bytes::Bytes;
use danmaku_proto::Danmaku;
use serde::{Deserialize, Serialize};

use crate::{ControlMessage, RoomEvent};

/// The envelope version this instance writes and fully understands.
pub(crate) const VERSION: u64 = 1;

/// What a room-channel payload turned out to be.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Decoded {
    /// An event this version understands.
    Event(RoomEvent),
    /// A well-formed envelope this version does not understand: a newer
    /// kind, or a newer envelope version. To be skipped and counted.
    Unknown {
        /// The envelope's version.
        v: u64,
        /// The envelope's kind.
        kind: String,
    },
}

/// A payload that is not an envelope of any version.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("undecodable bus payload: {0}")]
pub(crate) struct EnvelopeError(String);

/// The fields every envelope starts with; everything else is skipped.
#[derive(Deserialize)]
struct Header<'a> {
    #[serde(default)]
    v: Option<u64>,
    #[serde(default, borrow)]
    kind: Option<&'a str>,
}

#[derive(Serialize)]
struct CommentOut<'a> {
    v: u64,
    kind: &'static str,
    comment: &'a Danmaku,
}

#[derive(Deserialize)]
struct CommentIn {
    comment: Danmaku,
}

#[derive(Serialize)]
struct DeleteOut<'a> {
    v: u64,
    kind: &'static str,
    id: &'a str,
}

#[derive(Deserialize)]
struct DeleteIn {
    id: String,
}

/// Encodes an event for its room channel (and, for a comment, history).
pub(crate) fn encode(event: &RoomEvent) -> Result<Vec<u8>, EnvelopeError> {
    let kind = event.kind();
    let encoded = match event {
        RoomEvent::Comment(comment) => rmp_serde::to_vec_named(&CommentOut {
            v: VERSION,
            kind,
            comment,
        }),
        RoomEvent::Delete { id } => rmp_serde::to_vec_named(&DeleteOut {
            v: VERSION,
            kind,
            id,
        }),
    };
    encoded.map_err(|e| EnvelopeError(e.to_string()))
}

/// Decodes a room-channel or history payload of any version.
pub(crate) fn decode(bytes: &[u8]) -> Result<Decoded, EnvelopeError> {
    let header: Header<'_> =
        rmp_serde::from_slice(bytes).map_err(|e| EnvelopeError(e.to_string()))?;
    let body_error = |e: rmp_serde::decode::Error| EnvelopeError(e.to_string());
    let v = match header.v {
        None => {
            let legacy: Danmaku = rmp_serde::from_slice(bytes).map_err(body_error)?;
            return Ok(Decoded::Event(RoomEvent::Comment(Arc::new(legacy))));
        }
        Some(0) => return Err(EnvelopeError("envelope version 0".into())),
        Some(v) => v,
    };
    let kind = header
        .kind
        .ok_or_else(|| EnvelopeError(format!("v{v} envelope without a kind")))?;
    if v > VERSION {
        return Ok(Decoded::Unknown {
            v,
            kind: kind.to_owned(),
        });
    }
    let event = match kind {
        "comment" => {
            let body: CommentIn = rmp_serde::from_slice(bytes).map_err(body_error)?;
            RoomEvent::Comment(Arc::new(body.comment))
        }
        "delete" => {
            let body: DeleteIn = rmp_serde::from_slice(bytes).map_err(body_error)?;
            RoomEvent::Delete { id: body.id }
        }
        other => {
            return Ok(Decoded::Unknown {
                v,
                kind: other.to_owned(),
            })
        }
    };
    Ok(Decoded::Event(event))
}

/// Serializes as MessagePack `bin`, not as an array of numbers.
pub(crate) struct Bin<'a>(pub(crate) &'a [u8]);

impl Serialize for Bin<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(self.0)
    }
}

/// Reads MessagePack `bin` (or an array of bytes) into owned bytes.
pub(crate) struct OwnedBin(pub(crate) Vec<u8>);

impl<'de> Deserialize<'de> for OwnedBin {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = OwnedBin;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("bytes")
            }
            fn visit_bytes<E>(self, v: &[u8]) -> Result<OwnedBin, E> {
                Ok(OwnedBin(v.to_vec()))
            }
            fn visit_byte_buf<E>(self, v: Vec<u8>) -> Result<OwnedBin, E> {
                Ok(OwnedBin(v))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<OwnedBin, A::Error> {
                let mut out = Vec::new();
                while let Some(b) = seq.next_element::<u8>()? {
                    out.push(b);
                }
                Ok(OwnedBin(out))
            }
        }
        d.deserialize_bytes(Visitor)
    }
}

#[derive(Serialize)]
struct ControlOut<'a> {
    v: u64,
    origin: &'a str,
    kind: &'a str,
    body: Bin<'a>,
}

#[derive(Deserialize)]
struct ControlIn {
    v: u64,
    origin: String,
    kind: String,
    body: OwnedBin,
}

/// Encodes a control message for the control channel.
pub(crate) fn encode_control(msg: &ControlMessage) -> Result<Vec<u8>, EnvelopeError> {
    rmp_serde::to_vec_named(&ControlOut {
        v: VERSION,
        origin: &msg.origin,
        kind: &msg.kind,
        body: Bin(&msg.body),
    })
    .map_err(|e| EnvelopeError(e.to_string()))
}

/// Decodes a control-channel payload: `Ok(None)` for a newer envelope
/// version this instance must skip.
pub(crate) fn decode_control(bytes: &[u8]) -> Result<Option<ControlMessage>, EnvelopeError> {
    let header: Header<'_> =
        rmp_serde::from_slice(bytes).map_err(|e| EnvelopeError(e.to_string()))?;
    match header.v {
        Some(v) if v > VERSION => return Ok(None),
        Some(0) | None => return Err(EnvelopeError("control message without a version".into())),
        Some(_) => {}
    }
    let msg: ControlIn = rmp_serde::from_slice(bytes).map_err(|e| EnvelopeError(e.to_string()))?;
    debug_assert!(msg.v <= VERSION);
    Ok(Some(ControlMessage {
        origin: msg.origin,
        kind: msg.kind,
        body: Bytes::from(msg.body.0),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use danmaku_proto::Mode;
    use std::collections::BTreeMap;

    fn danmaku() -> Danmaku {
        Danmaku {
            id: "c1".into(),
            room: "live".into(),
            user: "guest-000001".into(),
            name: Some("名前".into()),
            text: "弹幕".into(),
            color: "#ffcc00".into(),
            mode: Mode::Top,
            ts: 1_700_000_000_000,
        }
    }

    /// The envelope as a generic map, to check what is on the wire.
    fn as_map(bytes: &[u8]) -> BTreeMap<String, rmpv_like::Value> {
        rmp_serde::from_slice(bytes).unwrap()
    }

    /// Just enough of a dynamic MessagePack value for the assertions.
    mod rmpv_like {
        #[derive(Debug, PartialEq, serde::Deserialize)]
        #[serde(untagged)]
        pub(super) enum Value {
            Int(u64),
            Str(String),
            Map(std::collections::BTreeMap<String, serde::de::IgnoredAny>),
        }
    }

    #[test]
    fn each_kind_round_trips_in_a_v1_envelope() {
        for event in [
            RoomEvent::Comment(Arc::new(danmaku())),
            RoomEvent::Delete { id: "c1".into() },
        ] {
            let bytes = encode(&event).unwrap();
            assert_eq!(decode(&bytes).unwrap(), Decoded::Event(event));
        }
    }

    #[test]
    fn the_envelope_has_named_version_and_kind_fields() {
        let bytes = encode(&RoomEvent::Delete { id: "x".into() }).unwrap();
        let map = as_map(&bytes);
        assert_eq!(map["v"], rmpv_like::Value::Int(1));
        assert_eq!(map["kind"], rmpv_like::Value::Str("delete".into()));
        assert_eq!(map["id"], rmpv_like::Value::Str("x".into()));
        let bytes = encode(&RoomEvent::Comment(Arc::new(danmaku()))).unwrap();
        assert!(matches!(
            as_map(&bytes)["comment"],
            rmpv_like::Value::Map(_)
        ));
    }

    #[test]
    fn a_legacy_bare_comment_is_read_as_a_comment() {
        let legacy = rmp_serde::to_vec_named(&danmaku()).unwrap();
        assert_eq!(
            decode(&legacy).unwrap(),
            Decoded::Event(RoomEvent::Comment(Arc::new(danmaku())))
        );
    }

    #[derive(Serialize)]
    struct Future<'a> {
        v: u64,
        kind: &'a str,
        payload: Vec<u32>,
    }

    #[test]
    fn an_unknown_kind_or_a_newer_version_is_unknown_not_an_error() {
        let future = rmp_serde::to_vec_named(&Future {
            v: 1,
            kind: "future_thing",
            payload: vec![1, 2],
        })
        .unwrap();
        assert_eq!(
            decode(&future).unwrap(),
            Decoded::Unknown {
                v: 1,
                kind: "future_thing".into()
            }
        );
        // Even a known kind is not trusted in a newer envelope version.
        let v2 = rmp_serde::to_vec_named(&Future {
            v: 2,
            kind: "comment",
            payload: vec![],
        })
        .unwrap();
        assert_eq!(
            decode(&v2).unwrap(),
            Decoded::Unknown {
                v: 2,
                kind: "comment".into()
            }
        );
    }

    #[test]
    fn garbage_is_an_error() {
        for bytes in [
            &b"not msgpack at all"[..],
            &[0xc1][..],
            &rmp_serde::to_vec_named(&BTreeMap::<String, u8>::new()).unwrap(),
            // A known kind without its fields.
            &rmp_serde::to_vec_named(&Future {
                v: 1,
                kind: "comment",
                payload: vec![],
            })
            .unwrap(),
            &rmp_serde::to_vec_named(&Future {
                v: 0,
                kind: "comment",
                payload: vec![],
            })
            .unwrap(),
        ] {
            assert!(decode(bytes).is_err(), "{bytes:?}");
        }
    }

    #[test]
    fn control_messages_round_trip_with_binary_bodies() {
        let msg = ControlMessage {
            origin: "gw-a".into(),
            kind: "mute".into(),
            body: Bytes::from_static(&[0, 159, 146, 150, 255]),
        };
        let bytes = encode_control(&msg).unwrap();
        assert_eq!(decode_control(&bytes).unwrap(), Some(msg));
        assert!(decode_control(b"junk").is_err());
    }
}
