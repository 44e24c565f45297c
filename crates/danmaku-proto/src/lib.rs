//! Wire protocol v1 of danmaku: the events clients and gateways exchange, their
//! two encodings (JSON text frames and MessagePack binary frames) and the
//! validation rules for room ids, nicknames, colours and nonces.
//!
//! Architecture invariant: this crate does no I/O. It turns values into bytes
//! and bytes into values, nothing else, so it cannot fail in surprising ways and
//! can be fuzzed in isolation. `proto/PROTOCOL.md` is the document for
//! third-party clients; this crate is its executable form.

mod client_de;
mod codec;
mod event;
mod validate;

pub use codec::{
    batch_frame, decode_client, decode_server, encode, encode_danmaku, DecodeError, Encoded,
    Format, SUBPROTOCOL_JSON, SUBPROTOCOL_MSGPACK,
};
pub use event::{
    Auth, ClientEvent, Danmaku, ErrorCode, Hello, Limits, Mode, Moderate, Ping, Post, RejectCode,
    ServerEvent,
};
pub use validate::{
    validate_color, validate_nick, validate_text, InvalidNick, InvalidRoomId, InvalidText, Nonce,
    NonceTooLong, Role, RoomId, DEFAULT_COLOR, MAX_NICK_CHARS, MAX_NONCE_BYTES, MAX_ROOM_ID_LEN,
};
