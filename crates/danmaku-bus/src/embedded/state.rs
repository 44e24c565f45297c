//! The embedded bus's [`crate::StateStore`]: tables and logs in memory and,
//! with a `state_dir`, in one file there, so a restart loses nothing.
//!
//! File: `{state_dir}/state.msgpack`, MessagePack of a map
//! `{v: 1, tables: {table: {field: bin}}, logs: {log: [bin, ...]}}`, each
//! log newest first. It is replaced whole on every write, atomically: the
//! new contents go to `state.msgpack.tmp` in the same directory, are
//! fsynced, renamed over the file, and the directory is fsynced, so a crash
//! leaves either the old file or the new one, never a mix. A temporary file
//! a crash left behind is removed when the state is next loaded.
//!
//! Writes are rare (moderators' actions), so each one copies the state,
//! changes the copy, saves it, and only then makes it current: a write that
//! fails to save changes nothing. One write at a time, in order, so the
//! file and the announcements follow the order of the writes.

use std::collections::{BTreeMap, VecDeque};
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;

use crate::envelope::{Bin, OwnedBin};
use crate::{now_ms, BusError, ControlMessage, StateOp, StateSnapshot, StateWrite};

/// The state file's name in `state_dir`.
pub(super) const STATE_FILE: &str = "state.msgpack";
/// Where a new state file is written before it replaces the old one.
pub(super) const TEMP_FILE: &str = "state.msgpack.tmp";
/// The file format's version; a file of another is refused, not guessed.
const FILE_VERSION: u64 = 1;

/// Why the state file could not be read or written.
#[derive(Debug, thiserror::Error)]
pub(super) enum StateFileError {
    /// The file system refused.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory concerned.
        path: PathBuf,
        /// What the file system said.
        source: std::io::Error,
    },
    /// The file is not a state file this version can read.
    #[error("{path}: not a readable state file: {why}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        why: String,
    },
    /// The state could not be encoded (not expected with these types).
    #[error("encoding the state: {0}")]
    Encode(String),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> StateFileError + '_ {
    move |source| StateFileError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Every table and log.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct StateData {
    tables: BTreeMap<String, BTreeMap<String, Bytes>>,
    /// Each log newest first.
    logs: BTreeMap<String, VecDeque<Bytes>>,
}

#[derive(Serialize)]
struct FileOut<'a> {
    v: u64,
    tables: BTreeMap<&'a str, BTreeMap<&'a str, Bin<'a>>>,
    logs: BTreeMap<&'a str, Vec<Bin<'a>>>,
}

#[derive(Deserialize)]
struct FileIn {
    v: u64,
    tables: BTreeMap<String, BTreeMap<String, OwnedBin>>,
    logs: BTreeMap<String, Vec<OwnedBin>>,
}

impl StateData {
    /// Applies a write's table changes and log entries. A table left with
    /// no field is dropped, as Redis drops an empty hash; with
    /// `log_len == 0` logs keep nothing.
    fn apply(&mut self, write: &StateWrite, log_len: usize) {
        for op in &write.ops {
            match op {
                StateOp::Put {
                    table,
                    field,
                    value,
                } => {
                    self.tables
                        .entry(table.clone())
                        .or_default()
                        .insert(field.clone(), value.clone());
                }
                StateOp::Delete { table, field } => {
                    if let Some(fields) = self.tables.get_mut(table) {
                        fields.remove(field);
                        if fields.is_empty() {
                            self.tables.remove(table);
                        }
                    }
                }
            }
        }
        if log_len == 0 {
            return;
        }
        for (log, entry) in &write.log {
            let entries = self.logs.entry(log.clone()).or_default();
            entries.push_front(entry.clone());
            entries.truncate(log_len);
        }
    }

    fn snapshot(&self) -> StateSnapshot {
        self.tables
            .iter()
            .map(|(table, fields)| {
                let fields = fields.iter().map(|(f, v)| (f.clone(), v.clone())).collect();
                (table.clone(), fields)
            })
            .collect()
    }

    fn read_log(&self, log: &str, n: usize) -> Vec<Bytes> {
        self.logs
            .get(log)
            .map(|entries| entries.iter().take(n).cloned().collect())
            .unwrap_or_default()
    }

    fn encode(&self) -> Result<Vec<u8>, StateFileError> {
        let file = FileOut {
            v: FILE_VERSION,
            tables: self
                .tables
                .iter()
                .map(|(t, fields)| {
                    let fields = fields.iter().map(|(f, v)| (f.as_str(), Bin(v))).collect();
                    (t.as_str(), fields)
                })
                .collect(),
            logs: self
                .logs
                .iter()
                .map(|(l, entries)| (l.as_str(), entries.iter().map(|e| Bin(e)).collect()))
                .collect(),
        };
        rmp_serde::to_vec_named(&file).map_err(|e| StateFileError::Encode(e.to_string()))
    }

    fn decode(path: &Path, bytes: &[u8]) -> Result<StateData, StateFileError> {
        let corrupt = |why: String| StateFileError::Corrupt {
            path: path.to_owned(),
            why,
        };
        let file: FileIn = rmp_serde::from_slice(bytes).map_err(|e| corrupt(e.to_string()))?;
        if file.v != FILE_VERSION {
            return Err(corrupt(format!(
                "version {} (expected {FILE_VERSION})",
                file.v
            )));
        }
        Ok(StateData {
            tables: file
                .tables
                .into_iter()
                .map(|(t, fields)| {
                    let fields = fields
                        .into_iter()
                        .map(|(f, v)| (f, Bytes::from(v.0)))
                        .collect();
                    (t, fields)
                })
                .collect(),
            logs: file
                .logs
                .into_iter()
                .map(|(l, entries)| (l, entries.into_iter().map(|e| Bytes::from(e.0)).collect()))
                .collect(),
        })
    }
}

/// Reads the state file in `dir`: `None` if there is none yet. Removes a
/// temporary file an interrupted write left.
pub(super) fn load(dir: &Path) -> Result<Option<StateData>, StateFileError> {
    let temp = dir.join(TEMP_FILE);
    match std::fs::remove_file(&temp) {
        Ok(()) => tracing::warn!(path = %temp.display(), "Removed an unfinished state file"),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io(&temp)(e)),
    }
    let path = dir.join(STATE_FILE);
    let bytes = match std::fs::read(&path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io(&path)(e)),
    };
    StateData::decode(&path, &bytes).map(Some)
}

/// Replaces the state file in `dir` by `bytes` atomically (see the module
/// doc). Once the rename is done the write counts as saved: a failure to
/// sync the directory after it is only logged.
fn save(dir: &Path, bytes: &[u8]) -> Result<(), StateFileError> {
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let temp = dir.join(TEMP_FILE);
    let path = dir.join(STATE_FILE);
    let written = (|| {
        let mut file = File::create(&temp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        std::fs::rename(&temp, &path)
    })();
    if let Err(e) = written {
        let _ = std::fs::remove_file(&temp);
        return Err(io(&temp)(e));
    }
    if let Err(e) = File::open(dir).and_then(|d| d.sync_all()) {
        tracing::warn!(dir = %dir.display(), error = %e, "Syncing the state directory failed");
    }
    Ok(())
}

/// Sets a file that cannot be read aside (`state.msgpack.corrupt-{ms}`),
/// so starting empty does not overwrite what an operator may recover.
fn set_aside(dir: &Path) {
    let path = dir.join(STATE_FILE);
    let aside = dir.join(format!("{STATE_FILE}.corrupt-{}", now_ms()));
    match std::fs::rename(&path, &aside) {
        Ok(()) => tracing::error!(
            path = %aside.display(),
            "The unreadable state file was set aside; starting with empty state"
        ),
        Err(e) => tracing::error!(
            path = %path.display(),
            error = %e,
            "The unreadable state file could not be set aside; starting with empty state"
        ),
    }
}

/// The state and the one writer's turn.
pub(super) struct Store {
    data: Mutex<StateData>,
    /// Held by the write in progress, across its save, so writes are saved
    /// and announced in order.
    writer: tokio::sync::Mutex<()>,
    dir: Option<PathBuf>,
}

impl Store {
    /// The state saved in `dir`, or an error if it cannot be read.
    pub(super) fn open(dir: Option<PathBuf>) -> Result<Store, StateFileError> {
        let data = match &dir {
            Some(dir) => load(dir)?.unwrap_or_default(),
            None => StateData::default(),
        };
        Ok(Store {
            data: Mutex::new(data),
            writer: tokio::sync::Mutex::new(()),
            dir,
        })
    }

    /// Like [`Store::open`], but a file that cannot be read is logged and
    /// set aside, and the state starts empty: for a constructor that
    /// cannot fail.
    pub(super) fn open_or_empty(dir: Option<PathBuf>) -> Store {
        match Store::open(dir.clone()) {
            Ok(store) => store,
            Err(e) => {
                tracing::error!(error = %e, "Loading the saved state failed");
                if let (StateFileError::Corrupt { .. }, Some(dir)) = (&e, &dir) {
                    set_aside(dir);
                }
                Store {
                    data: Mutex::new(StateData::default()),
                    writer: tokio::sync::Mutex::new(()),
                    dir,
                }
            }
        }
    }

    pub(super) fn snapshot(&self) -> StateSnapshot {
        self.data.lock().snapshot()
    }

    pub(super) fn read_log(&self, log: &str, n: usize) -> Vec<Bytes> {
        self.data.lock().read_log(log, n)
    }

    /// Applies, saves, makes current, then announces one write; on error
    /// nothing changed and nothing was announced.
    pub(super) async fn write(
        &self,
        write: StateWrite,
        log_len: usize,
        control: &broadcast::Sender<ControlMessage>,
    ) -> Result<(), BusError> {
        let _turn = self.writer.lock().await;
        let mut next = self.data.lock().clone();
        next.apply(&write, log_len);
        if let Some(dir) = self.dir.clone() {
            let bytes = next
                .encode()
                .map_err(|e| BusError::Unavailable(format!("state write: {e}")))?;
            tokio::task::spawn_blocking(move || save(&dir, &bytes))
                .await
                .map_err(|e| BusError::Unavailable(format!("state write: {e}")))?
                .map_err(|e| BusError::Unavailable(format!("state write: {e}")))?;
        }
        *self.data.lock() = next;
        if let Some(msg) = write.announce {
            // An error only means nobody listens.
            let _ = control.send(msg);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(table: &str, field: &str, value: &'static [u8]) -> StateOp {
        StateOp::Put {
            table: table.into(),
            field: field.into(),
            value: Bytes::from_static(value),
        }
    }

    #[test]
    fn apply_puts_deletes_drops_empty_tables_and_caps_logs_newest_first() {
        let mut data = StateData::default();
        let write = StateWrite {
            ops: vec![
                put("mutes", "alice", b"1"),
                put("modes", "room1", b"\x00\xff"),
            ],
            log: (0..5u8)
                .map(|i| ("actions".to_owned(), Bytes::from(vec![i])))
                .collect(),
            announce: None,
        };
        data.apply(&write, 3);
        assert_eq!(data.read_log("actions", 10), [vec![4u8], vec![3], vec![2]]);
        assert_eq!(data.read_log("actions", 1), [vec![4u8]]);
        assert!(data.read_log("other", 10).is_empty());
        data.apply(
            &StateWrite {
                ops: vec![StateOp::Delete {
                    table: "mutes".into(),
                    field: "alice".into(),
                }],
                ..StateWrite::default()
            },
            3,
        );
        assert_eq!(
            data.snapshot(),
            [(
                "modes".to_owned(),
                vec![("room1".to_owned(), Bytes::from_static(b"\x00\xff"))]
            )]
        );
    }

    #[test]
    fn the_file_round_trips_binary_values_and_refuses_garbage() {
        let mut data = StateData::default();
        data.apply(
            &StateWrite {
                ops: vec![put("words", "\u{5f3e}", b"\x00\x01\xfe\xff")],
                log: vec![("log".into(), Bytes::from_static(b"\xff"))],
                announce: None,
            },
            10,
        );
        let path = Path::new("state.msgpack");
        let bytes = data.encode().unwrap();
        assert_eq!(StateData::decode(path, &bytes).unwrap(), data);
        assert!(matches!(
            StateData::decode(path, b"\x93garbage"),
            Err(StateFileError::Corrupt { .. })
        ));
    }
}
