//! The strict reading of client events, the same for both encodings.
//!
//! A derived `Deserialize` for an internally tagged enum buffers the whole
//! value and then accepts more than the protocol allows: a positional array
//! in place of the map, MessagePack `bin` where a string is required, keys
//! that are not strings. Client frames come from strangers, so this reads
//! exactly the shape PROTOCOL.md §4.5 and §7 describe, in one pass and
//! without buffering anything but the six fields it knows.

use std::fmt;

use serde::de::{
    self, Deserialize, Deserializer, EnumAccess, IgnoredAny, MapAccess, SeqAccess, Unexpected,
    Visitor,
};

use crate::event::{Auth, ClientEvent, Ping, Post};

impl<'de> Deserialize<'de> for ClientEvent {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<ClientEvent, D::Error> {
        d.deserialize_map(EventVisitor)
    }
}

/// The keys version 1 gives a meaning to; [`Key`] holds an index into it.
const KEYS: [&str; 6] = ["type", "text", "color", "mode", "nonce", "token"];
/// The values of `type` a client may send.
const TYPES: &[&str] = &["post", "ping", "auth"];

/// A map key: one of [`KEYS`] by index, or any other string (ignored, since
/// client schemas are open).
#[derive(Clone, Copy)]
struct Key(Option<usize>);

impl<'de> Deserialize<'de> for Key {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Key, D::Error> {
        d.deserialize_str(KeyVisitor)
    }
}

/// Accepts string keys only: a MessagePack integer or `bin` key is refused
/// rather than skipped, since §4.2 promises string keys.
struct KeyVisitor;

impl Visitor<'_> for KeyVisitor {
    type Value = Key;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a string key")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Key, E> {
        Ok(Key(KEYS.iter().position(|k| *k == v)))
    }
}

/// The value of a known key, kept until `type` is known: a field that means
/// nothing for this type (`text` in a `ping`) is ignored whatever it holds,
/// as any unknown field is.
enum Value {
    /// A string (MessagePack `str`, never `bin`).
    Str(String),
    /// JSON `null` or MessagePack `nil`: the same as an absent field.
    Null,
    /// Anything else, named for the error message.
    Other(&'static str),
}

impl<'de> Deserialize<'de> for Value {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Value, D::Error> {
        d.deserialize_any(ValueVisitor)
    }
}

/// Sorts a value into [`Value`]; containers are read to their end, so the
/// decoder stays in step whatever the field held.
struct ValueVisitor;

impl<'de> Visitor<'de> for ValueVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any value")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Value, E> {
        Ok(Value::Str(v.to_owned()))
    }

    fn visit_string<E: de::Error>(self, v: String) -> Result<Value, E> {
        Ok(Value::Str(v))
    }

    fn visit_unit<E: de::Error>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_none<E: de::Error>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        IgnoredAny::deserialize(d)?;
        Ok(Value::Other("an option"))
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Value, E> {
        Ok(Value::Other("a boolean"))
    }

    fn visit_i64<E: de::Error>(self, _: i64) -> Result<Value, E> {
        Ok(Value::Other("an integer"))
    }

    fn visit_u64<E: de::Error>(self, _: u64) -> Result<Value, E> {
        Ok(Value::Other("an integer"))
    }

    fn visit_i128<E: de::Error>(self, _: i128) -> Result<Value, E> {
        Ok(Value::Other("an integer"))
    }

    fn visit_u128<E: de::Error>(self, _: u128) -> Result<Value, E> {
        Ok(Value::Other("an integer"))
    }

    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Value, E> {
        Ok(Value::Other("a float"))
    }

    fn visit_bytes<E: de::Error>(self, _: &[u8]) -> Result<Value, E> {
        Ok(Value::Other("a byte array (MessagePack bin)"))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Value, A::Error> {
        IgnoredAny.visit_seq(seq)?;
        Ok(Value::Other("an array"))
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Value, A::Error> {
        IgnoredAny.visit_map(map)?;
        Ok(Value::Other("a map"))
    }

    fn visit_newtype_struct<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        // MessagePack ext values arrive here.
        IgnoredAny::deserialize(d)?;
        Ok(Value::Other("a MessagePack extension"))
    }

    fn visit_enum<A: EnumAccess<'de>>(self, data: A) -> Result<Value, A::Error> {
        IgnoredAny.visit_enum(data)?;
        Ok(Value::Other("an enum"))
    }
}

/// A required string field.
fn required<E: de::Error>(key: &'static str, v: Option<Value>) -> Result<String, E> {
    match v {
        Some(Value::Str(s)) => Ok(s),
        None => Err(E::missing_field(key)),
        Some(Value::Null) => Err(E::invalid_type(Unexpected::Unit, &"a string")),
        Some(Value::Other(kind)) => Err(E::invalid_type(Unexpected::Other(kind), &"a string")),
    }
}

/// An optional string field: absent and null both read as `None`.
fn optional<E: de::Error>(v: Option<Value>) -> Result<Option<String>, E> {
    match v {
        Some(Value::Str(s)) => Ok(Some(s)),
        None | Some(Value::Null) => Ok(None),
        Some(Value::Other(kind)) => Err(E::invalid_type(Unexpected::Other(kind), &"a string")),
    }
}

/// Reads the one map a client event is; anything else (an array, a scalar)
/// is refused by the deserializer before this runs.
struct EventVisitor;

impl<'de> Visitor<'de> for EventVisitor {
    type Value = ClientEvent;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a map with a string `type`")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<ClientEvent, A::Error> {
        let mut slots: [Option<Value>; KEYS.len()] = Default::default();
        while let Some(Key(key)) = map.next_key()? {
            let Some(i) = key else {
                map.next_value::<IgnoredAny>()?;
                continue;
            };
            if slots[i].is_some() {
                return Err(de::Error::duplicate_field(KEYS[i]));
            }
            slots[i] = Some(map.next_value()?);
        }
        let [ty, text, color, mode, nonce, token] = slots;
        let ty = required(KEYS[0], ty)?;
        match ty.as_str() {
            "post" => Ok(ClientEvent::Post(Post {
                text: required(KEYS[1], text)?,
                color: optional(color)?,
                mode: optional(mode)?,
                nonce: optional(nonce)?,
            })),
            "ping" => Ok(ClientEvent::Ping(Ping {
                nonce: optional(nonce)?,
            })),
            "auth" => Ok(ClientEvent::Auth(Auth {
                token: required(KEYS[5], token)?,
                nonce: optional(nonce)?,
            })),
            other => Err(de::Error::unknown_variant(other, TYPES)),
        }
    }
}
