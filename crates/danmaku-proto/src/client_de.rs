//! The strict reading of client events, the same for both encodings.
//!
//! A derived `Deserialize` for an internally tagged enum buffers the whole
//! value and then accepts more than the protocol allows: a positional array
//! in place of the map, MessagePack `bin` where a string is required, keys
//! that are not strings. Client frames come from strangers, so this reads
//! exactly the shape PROTOCOL.md §4.5 and §7 describe, in one pass and
//! without buffering anything but the fields it knows, one value each: the
//! work is linear in the frame, whatever the frame holds.

use std::fmt;

use serde::de::{
    self, Deserialize, Deserializer, EnumAccess, IgnoredAny, MapAccess, SeqAccess, Unexpected,
    Visitor,
};

use crate::event::{Auth, ClientEvent, Moderate, Ping, Post};

impl<'de> Deserialize<'de> for ClientEvent {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<ClientEvent, D::Error> {
        d.deserialize_map(EventVisitor)
    }
}

/// The keys version 1 gives a meaning to; [`Key`] holds an index into it.
/// The first [`MODERATE_KEYS`] of them are read whatever the `type`, as
/// they were before `moderate` existed; the rest only matter to `moderate`.
const KEYS: [&str; 14] = [
    "type",
    "text",
    "color",
    "mode",
    "nonce",
    "token",
    "action",
    "user",
    "seconds",
    "shadow",
    "global",
    "id",
    "word",
    "word_action",
];
/// The index in [`KEYS`] of the first key only `moderate` reads.
const MODERATE_KEYS: usize = 6;
/// The values of `type` a client may send.
const TYPES: &[&str] = &["post", "ping", "auth", "moderate"];

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
    /// `true` or `false`.
    Bool(bool),
    /// An integer of 0 or more that fits 64 bits.
    Unsigned(u64),
    /// An integer below 0 that fits 64 bits.
    Negative(i64),
    /// Anything else, named for the error message.
    Other(&'static str),
}

impl Value {
    /// What a non-string is, for an error about a string field of `post`,
    /// `ping` or `auth`: worded as those errors were before booleans and
    /// integers were told apart, so their messages do not change.
    fn as_before(&self) -> Unexpected<'static> {
        match self {
            Value::Str(_) => Unexpected::Other("a string"),
            Value::Null => Unexpected::Unit,
            Value::Bool(_) => Unexpected::Other("a boolean"),
            Value::Unsigned(_) | Value::Negative(_) => Unexpected::Other("an integer"),
            Value::Other(kind) => Unexpected::Other(kind),
        }
    }

    /// What the value is, as precisely as serde can say it, for an error
    /// about a field of `moderate`.
    fn unexpected(&self) -> Unexpected<'_> {
        match self {
            Value::Str(s) => Unexpected::Str(s),
            Value::Null => Unexpected::Unit,
            Value::Bool(b) => Unexpected::Bool(*b),
            Value::Unsigned(n) => Unexpected::Unsigned(*n),
            Value::Negative(n) => Unexpected::Signed(*n),
            Value::Other(kind) => Unexpected::Other(kind),
        }
    }
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

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Value, E> {
        // MessagePack may write a small positive number as a signed type.
        Ok(match u64::try_from(v) {
            Ok(n) => Value::Unsigned(n),
            Err(_) => Value::Negative(v),
        })
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Value, E> {
        Ok(Value::Unsigned(v))
    }

    fn visit_i128<E: de::Error>(self, v: i128) -> Result<Value, E> {
        Ok(match (u64::try_from(v), i64::try_from(v)) {
            (Ok(n), _) => Value::Unsigned(n),
            (_, Ok(n)) => Value::Negative(n),
            _ => Value::Other("an integer"),
        })
    }

    fn visit_u128<E: de::Error>(self, v: u128) -> Result<Value, E> {
        Ok(match u64::try_from(v) {
            Ok(n) => Value::Unsigned(n),
            Err(_) => Value::Other("an integer"),
        })
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

/// A required string field of `post`, `ping` or `auth`.
fn required<E: de::Error>(key: &'static str, v: Option<Value>) -> Result<String, E> {
    match v {
        Some(Value::Str(s)) => Ok(s),
        None => Err(E::missing_field(key)),
        Some(other) => Err(E::invalid_type(other.as_before(), &"a string")),
    }
}

/// An optional string field of `post`, `ping` or `auth`: absent and null
/// both read as `None`.
fn optional<E: de::Error>(v: Option<Value>) -> Result<Option<String>, E> {
    match v {
        Some(Value::Str(s)) => Ok(Some(s)),
        None | Some(Value::Null) => Ok(None),
        Some(other) => Err(E::invalid_type(other.as_before(), &"a string")),
    }
}

/// What a field of `moderate` should hold, naming the field, so a
/// moderator's tool learns which of its many fields is wrong.
struct Field {
    /// The field's key.
    key: &'static str,
    /// What it should hold, e.g. "a string".
    what: &'static str,
}

impl de::Expected for Field {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "`{}` to be {}", self.key, self.what)
    }
}

/// The field at index `i` of [`KEYS`] holding a string, `None` when absent
/// or null.
fn mod_str<E: de::Error>(i: usize, v: Option<Value>) -> Result<Option<String>, E> {
    match v {
        Some(Value::Str(s)) => Ok(Some(s)),
        None | Some(Value::Null) => Ok(None),
        Some(other) => Err(E::invalid_type(
            other.unexpected(),
            &Field {
                key: KEYS[i],
                what: "a string",
            },
        )),
    }
}

/// The field at index `i` of [`KEYS`] holding a string, required: null
/// is a wrong type there, as in the other events' required fields.
fn mod_required<E: de::Error>(i: usize, v: Option<Value>) -> Result<String, E> {
    match v {
        None => Err(E::missing_field(KEYS[i])),
        Some(Value::Null) => Err(E::invalid_type(
            Unexpected::Unit,
            &Field {
                key: KEYS[i],
                what: "a string",
            },
        )),
        v => Ok(mod_str(i, v)?.unwrap_or_default()),
    }
}

/// The field at index `i` of [`KEYS`] holding a boolean, `None` when absent
/// or null.
fn mod_bool<E: de::Error>(i: usize, v: Option<Value>) -> Result<Option<bool>, E> {
    match v {
        Some(Value::Bool(b)) => Ok(Some(b)),
        None | Some(Value::Null) => Ok(None),
        Some(other) => Err(E::invalid_type(
            other.unexpected(),
            &Field {
                key: KEYS[i],
                what: "a boolean",
            },
        )),
    }
}

/// The field at index `i` of [`KEYS`] holding an integer of 0 or more,
/// `None` when absent or null. A float is refused even when it is whole
/// (`60.0`): the field counts seconds, and a client that writes a float
/// there is likely to write `1.5` next.
fn mod_u64<E: de::Error>(i: usize, v: Option<Value>) -> Result<Option<u64>, E> {
    let want = Field {
        key: KEYS[i],
        what: "an integer of 0 or more",
    };
    match v {
        Some(Value::Unsigned(n)) => Ok(Some(n)),
        None | Some(Value::Null) => Ok(None),
        Some(Value::Negative(n)) => Err(E::invalid_value(Unexpected::Signed(n), &want)),
        Some(other) => Err(E::invalid_type(other.unexpected(), &want)),
    }
}

/// Whether a `type` read so far is `moderate`: `None` while no `type` was
/// read. A `type` that is not a string counts as not `moderate`; the frame
/// is refused for it at the end anyway.
fn is_moderate(ty: Option<&Value>) -> Option<bool> {
    match ty {
        None => None,
        Some(Value::Str(s)) => Some(s == "moderate"),
        Some(_) => Some(false),
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
        // A key only `moderate` reads, seen twice before `type` said the
        // frame is a `moderate`: an error if it turns out to be one.
        let mut repeated: Option<usize> = None;
        while let Some(Key(key)) = map.next_key()? {
            let Some(i) = key else {
                map.next_value::<IgnoredAny>()?;
                continue;
            };
            if i >= MODERATE_KEYS {
                // Once `type` says this is not a `moderate`, its keys are
                // unknown keys, skipped unread as they were before it
                // existed; until then they must be read and kept. So a
                // value no decoder can read (a JSON lone surrogate escape)
                // under one of these keys, before `type`, now fails the
                // frame, as it always did under `text` or `color`.
                let moderate = is_moderate(slots[0].as_ref());
                if moderate == Some(false) {
                    map.next_value::<IgnoredAny>()?;
                    continue;
                }
                if slots[i].is_some() {
                    if moderate == Some(true) {
                        return Err(de::Error::duplicate_field(KEYS[i]));
                    }
                    repeated.get_or_insert(i);
                    map.next_value::<IgnoredAny>()?;
                    continue;
                }
            } else if slots[i].is_some() {
                return Err(de::Error::duplicate_field(KEYS[i]));
            }
            slots[i] = Some(map.next_value()?);
        }
        let [ty, text, color, mode, nonce, token, moderate @ ..] = slots;
        let [action, user, seconds, shadow, global, id, word, word_action] = moderate;
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
            "moderate" => {
                if let Some(i) = repeated {
                    return Err(de::Error::duplicate_field(KEYS[i]));
                }
                Ok(ClientEvent::Moderate(Moderate {
                    action: mod_required(6, action)?,
                    user: mod_str(7, user)?,
                    seconds: mod_u64(8, seconds)?,
                    shadow: mod_bool(9, shadow)?,
                    global: mod_bool(10, global)?,
                    id: mod_str(11, id)?,
                    word: mod_str(12, word)?,
                    word_action: mod_str(13, word_action)?,
                    nonce: mod_str(4, nonce)?,
                }))
            }
            other => Err(de::Error::unknown_variant(other, TYPES)),
        }
    }
}
