//! Durable fleet state on Redis (`StateStore`).
//!
//! A table is a hash `{p}state:{table}`, its name kept in the set
//! `{p}state-tables` so [`StateStore::load_state`] can find every table; a
//! log is a list `{p}log:{name}`, newest first (`LPUSH`), trimmed to
//! `state_log_len`. No key expires: this is the state that must survive.
//!
//! A write is one `MULTI`/`EXEC`: the table changes (`HSET` with `SADD` of
//! the table's name, `HDEL`), the log appends (`LPUSH`, `LTRIM`) and the
//! announcement (`PUBLISH` on the control channel, encoded as
//! [`crate::Controller::publish_control`] encodes it), so an instance that
//! receives the announcement and then loads the state sees the change.
//! As with any command, a write the caller saw time out may still have
//! taken effect (`deadline.rs`).
//!
//! Loading is one Lua script that lists the tables and reads each, so the
//! snapshot is consistent. It names the hashes from the prefix rather than
//! in `KEYS`, which a single Redis allows (a Redis Cluster transport would
//! give the state keys one hash tag).

use ::redis::Value;
use bytes::Bytes;

use super::RedisBus;
use crate::deadline::bounded;
use crate::{envelope, BoxFuture, BusError, StateOp, StateSnapshot, StateStore, StateWrite};

/// The load script. `KEYS[1]`: the table set. `ARGV[1]`: the prefix of the
/// tables' hashes. Answers `{{table, {field, value, ...}}, ...}`, tables
/// without fields left out.
const LOAD_SOURCE: &str = r#"
local out = {}
for _, name in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  local fields = redis.call('HGETALL', ARGV[1] .. name)
  if #fields > 0 then out[#out + 1] = {name, fields} end
end
return out
"#;

/// A bulk string's bytes as text (names are written from `String`s).
fn text(value: &Value) -> Result<String, String> {
    match value {
        Value::BulkString(bytes) => Ok(String::from_utf8_lossy(bytes).into_owned()),
        Value::SimpleString(s) => Ok(s.clone()),
        other => Err(format!("expected a string, got {other:?}")),
    }
}

/// The load script's answer as a snapshot.
fn parse_snapshot(value: Value) -> Result<StateSnapshot, String> {
    let Value::Array(tables) = value else {
        return Err(format!("expected an array, got {value:?}"));
    };
    let mut snapshot = Vec::with_capacity(tables.len());
    for table in tables {
        let Value::Array(parts) = table else {
            return Err(format!("expected a table, got {table:?}"));
        };
        let [name, Value::Array(flat)] = parts.as_slice() else {
            return Err(format!(
                "expected a table name and its fields, got {parts:?}"
            ));
        };
        let mut fields = Vec::with_capacity(flat.len() / 2);
        for pair in flat.chunks(2) {
            let [field, Value::BulkString(bytes)] = pair else {
                return Err(format!("expected a field and its value, got {pair:?}"));
            };
            fields.push((text(field)?, Bytes::copy_from_slice(bytes)));
        }
        snapshot.push((text(name)?, fields));
    }
    Ok(snapshot)
}

impl StateStore for RedisBus {
    /// One script, one round trip, within `op_timeout`.
    fn load_state(&self) -> BoxFuture<'_, Result<StateSnapshot, BusError>> {
        let inner = &self.inner;
        Box::pin(bounded(inner.op_timeout(), "loading state", async move {
            let set = inner.keys.state_tables();
            let prefix = inner.keys.state_table_prefix();
            let raw: Value = inner
                .commands
                .eval(
                    "loading state",
                    LOAD_SOURCE,
                    &[set.as_bytes()],
                    &[prefix.as_bytes()],
                )
                .await?;
            parse_snapshot(raw)
                .map_err(|why| BusError::Unavailable(format!("loading state: {why}")))
        }))
    }

    /// One `MULTI`/`EXEC` within `op_timeout`. Does not need the pub/sub
    /// link; this instance's own subscribers receive the announcement
    /// through it like everyone's.
    fn write_state(&self, write: StateWrite) -> BoxFuture<'_, Result<(), BusError>> {
        let inner = &self.inner;
        Box::pin(bounded(inner.op_timeout(), "writing state", async move {
            let keys = &inner.keys;
            let mut pipe = ::redis::pipe();
            pipe.atomic();
            for op in &write.ops {
                match op {
                    StateOp::Put {
                        table,
                        field,
                        value,
                    } => {
                        pipe.cmd("HSET")
                            .arg(keys.state_table(table))
                            .arg(field)
                            .arg(value.as_ref())
                            .ignore();
                        pipe.cmd("SADD")
                            .arg(keys.state_tables())
                            .arg(table)
                            .ignore();
                    }
                    StateOp::Delete { table, field } => {
                        pipe.cmd("HDEL")
                            .arg(keys.state_table(table))
                            .arg(field)
                            .ignore();
                    }
                }
            }
            let log_len = inner.config.bus.state_log_len;
            if log_len > 0 {
                for (log, entry) in &write.log {
                    let key = keys.state_log(log);
                    pipe.cmd("LPUSH").arg(&key).arg(entry.as_ref()).ignore();
                    pipe.cmd("LTRIM").arg(&key).arg(0).arg(log_len - 1).ignore();
                }
            }
            if let Some(msg) = &write.announce {
                let bytes = envelope::encode_control(msg).map_err(|e| {
                    BusError::Unavailable(format!("encoding the announcement: {e}"))
                })?;
                pipe.cmd("PUBLISH").arg(keys.control()).arg(bytes).ignore();
            }
            inner.commands.query::<()>("writing state", &pipe).await?;
            inner.commands.wrote();
            Ok(())
        }))
    }

    fn read_log(&self, log: &str, n: usize) -> BoxFuture<'_, Result<Vec<Bytes>, BusError>> {
        let inner = &self.inner;
        let key = inner.keys.state_log(log);
        Box::pin(bounded(inner.op_timeout(), "reading a log", async move {
            if n == 0 {
                return Ok(Vec::new());
            }
            let mut pipe = ::redis::pipe();
            pipe.cmd("LRANGE").arg(&key).arg(0).arg(n - 1);
            let (raw,): (Vec<Vec<u8>>,) = inner.commands.query("reading a log", &pipe).await?;
            Ok(raw.into_iter().map(Bytes::from).collect())
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(s: &[u8]) -> Value {
        Value::BulkString(s.to_vec())
    }

    #[test]
    fn the_load_answer_parses_and_malformed_ones_are_errors() {
        let answer = Value::Array(vec![Value::Array(vec![
            bulk(b"mutes"),
            Value::Array(vec![bulk(b"alice"), bulk(b"\x00\xff")]),
        ])]);
        assert_eq!(
            parse_snapshot(answer).unwrap(),
            [(
                "mutes".to_owned(),
                vec![("alice".to_owned(), Bytes::from_static(b"\x00\xff"))]
            )]
        );
        assert!(parse_snapshot(Value::Int(1)).is_err());
        let odd = Value::Array(vec![Value::Array(vec![
            bulk(b"t"),
            Value::Array(vec![bulk(b"field-without-value")]),
        ])]);
        assert!(parse_snapshot(odd).is_err());
    }
}
