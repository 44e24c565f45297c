//! Property tests: the decoders return `Ok` or `Err` on any input, never panic,
//! and anything that decodes re-encodes to something that decodes the same.

use danmaku_proto::{decode_client, decode_server, ClientEvent, Format, Moderate};
use proptest::prelude::*;

/// Bytes that are often close to valid: mutations of real frames, plus noise.
fn near_valid() -> impl Strategy<Value = Vec<u8>> {
    let seeds: Vec<Vec<u8>> = vec![
        br##"{"type":"post","text":"hi","color":"#ffffff","mode":"top","nonce":"1"}"##.to_vec(),
        br#"{"type":"ping","nonce":"x"}"#.to_vec(),
        rmp_serde::to_vec_named(&ClientEvent::Ping(Default::default())).unwrap(),
        br#"{"type":"moderate","action":"mute","user":"u1","seconds":600,"shadow":true,"global":false,"nonce":"m"}"#.to_vec(),
        br#"{"type":"moderate","action":"block_word","word":"spam","word_action":"mask"}"#.to_vec(),
        rmp_serde::to_vec_named(&ClientEvent::Moderate(Moderate {
            action: "slow_mode".into(),
            seconds: Some(30),
            global: Some(true),
            id: Some("abc-1".into()),
            nonce: Some("n".into()),
            ..Moderate::default()
        }))
        .unwrap(),
    ];
    (
        proptest::sample::select(seeds),
        proptest::collection::vec((any::<usize>(), any::<u8>()), 0..8),
    )
        .prop_map(|(mut bytes, edits)| {
            for (at, b) in edits {
                let len = bytes.len();
                bytes[at % len] = b;
            }
            bytes
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(4096))]

    #[test]
    fn decoders_never_panic_on_arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        for format in Format::ALL {
            let _ = decode_client(format, &bytes);
            let _ = decode_server(format, &bytes);
        }
    }

    #[test]
    fn decoders_never_panic_on_mutated_frames(bytes in near_valid()) {
        for format in Format::ALL {
            if let Ok(event) = decode_client(format, &bytes) {
                // Checking a decoded nonce never panics either.
                match &event {
                    ClientEvent::Post(post) => {
                        let _ = post.nonce();
                    }
                    ClientEvent::Ping(ping) => {
                        let _ = ping.nonce();
                    }
                    ClientEvent::Auth(auth) => {
                        let _ = auth.nonce();
                    }
                    ClientEvent::Moderate(command) => {
                        let _ = command.nonce();
                    }
                }
                let again = match format {
                    Format::Json => serde_json::to_vec(&event).unwrap(),
                    Format::MsgPack => rmp_serde::to_vec_named(&event).unwrap(),
                };
                prop_assert_eq!(decode_client(format, &again).unwrap(), event);
            }
        }
    }
}
