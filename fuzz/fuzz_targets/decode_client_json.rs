//! Fuzzes `decode_client` on JSON text frames: it must return, never panic,
//! and whatever it accepts must check its nonce and survive a round trip.
#![no_main]

use danmaku_proto::Format;
use libfuzzer_sys::fuzz_target;

#[path = "common.rs"]
mod common;

fuzz_target!(|data: &[u8]| common::decode(Format::Json, data));
