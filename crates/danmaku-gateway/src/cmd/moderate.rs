//! `moderate`: a moderator's action from its open connection, in the
//! connection's room (or fleet-wide, for global mutes and word lists).
//! The same checks and effects as the admin HTTP API: both act through
//! `ModState`. Answered by `moderated` once the change is stored and
//! announced, or by an `error` (`forbidden`, `bad_request`, or
//! `unavailable` when the store could not take it) naming the field.

use danmaku_moderation::{Change, FieldError, RoomSettings, WordAction, MAX_SLOW_MODE_SECS};
use danmaku_proto::{ErrorCode, Moderate, Role, RoomId, ServerEvent};

use crate::conn::Conn;
use crate::modstate::{self, ActError, Actor, ModState};

/// Handles one command; always answers. An over-long nonce makes the
/// frame a bad one, as for `ping`.
pub(crate) async fn handle(conn: &mut Conn, command: Moderate) -> Result<(), String> {
    let nonce = command.nonce().map_err(|e| e.to_string())?;
    let state = conn.gw.modstate.clone();
    let room = conn.viewer.room.clone();
    let outcome = match actor(conn) {
        Ok(actor) => act(&state, &actor, &room, &command).await,
        Err(e) => Err(e),
    };
    let answer = match outcome {
        Ok(()) => ServerEvent::Moderated {
            nonce,
            action: command.action,
        },
        Err(e) => {
            let code = match e {
                ActError::Forbidden(_) => ErrorCode::Forbidden,
                ActError::BadRequest(_) => ErrorCode::BadRequest,
                ActError::Unavailable(_) => ErrorCode::Unavailable,
            };
            tracing::debug!(action = %command.action, error = %e, "Moderation command refused");
            ServerEvent::Error {
                nonce,
                code,
                message: e.to_string(),
            }
        }
    };
    conn.reply(&answer);
    Ok(())
}

/// Who the connection acts as: only a moderator's or admin's token whose
/// time has not run out may act.
fn actor(conn: &Conn) -> Result<Actor, ActError> {
    let identity = &conn.viewer.identity;
    if identity.role < Role::Moderator {
        return Err(ActError::Forbidden(
            "moderation needs a token with role moderator or admin".into(),
        ));
    }
    if identity.exp.is_some_and(crate::auth::expired) {
        return Err(ActError::Forbidden(
            "the token has expired; send a fresh one with `auth`".into(),
        ));
    }
    Ok(Actor {
        name: identity.user.clone(),
        role: identity.role,
        rooms: identity.rooms.clone(),
    })
}

fn field(field: &'static str, message: &str) -> ActError {
    ActError::BadRequest(FieldError {
        field,
        message: message.into(),
    })
}

/// Turns the command into an action in `room` and takes it.
async fn act(
    state: &ModState,
    actor: &Actor,
    room: &RoomId,
    command: &Moderate,
) -> Result<(), ActError> {
    let user = || {
        command
            .user
            .clone()
            .ok_or_else(|| field("user", "is required"))
    };
    let word = || {
        command
            .word
            .clone()
            .ok_or_else(|| field("word", "is required"))
    };
    let scope = || (!command.global.unwrap_or(false)).then_some(room);
    let settings = || {
        state
            .moderator
            .room_view(room.as_str(), danmaku_bus::now_ms())
            .settings
    };
    let set = |settings: RoomSettings| Change::RoomSettings {
        room: room.as_str().to_owned(),
        settings,
    };
    let change = match command.action.as_str() {
        "mute" => {
            let seconds = command
                .seconds
                .ok_or_else(|| field("seconds", "is required (0 = permanent)"))?;
            let shadow = command.shadow.unwrap_or(false);
            modstate::mute(actor, scope(), user()?, seconds, shadow)?
        }
        "unmute" => Change::Unmute {
            room: scope().map(|r| r.as_str().to_owned()),
            user: user()?,
        },
        "slow_mode" => {
            let secs = command
                .seconds
                .ok_or_else(|| field("seconds", "is required (0 turns slow mode off)"))?;
            let secs = u32::try_from(secs)
                .ok()
                .filter(|s| *s <= MAX_SLOW_MODE_SECS)
                .ok_or_else(|| field("seconds", "must be 0 (off) to 300"))?;
            set(RoomSettings {
                slow_mode_secs: secs,
                ..settings()
            })
        }
        "lock" | "unlock" => set(RoomSettings {
            locked: command.action == "lock",
            ..settings()
        }),
        "recall" => {
            let id = command.id.as_deref().ok_or_else(|| field("id", "is required"))?;
            state.recall(actor, room, id).await?;
            return Ok(());
        }
        "block_word" => {
            let action = match command.word_action.as_deref() {
                None | Some("block") => WordAction::Block,
                Some("mask") => WordAction::Mask,
                Some(_) => return Err(field("word_action", "must be block or mask")),
            };
            Change::BlockWord {
                word: word()?,
                action,
            }
        }
        "unblock_word" => Change::UnblockWord { word: word()? },
        "allow_word" => Change::AllowWord { word: word()? },
        "disallow_word" => Change::DisallowWord { word: word()? },
        _ => {
            return Err(field(
                "action",
                "must be mute, unmute, slow_mode, lock, unlock, recall, block_word, unblock_word, allow_word or disallow_word",
            ))
        }
    };
    state.act(actor, change).await
}
