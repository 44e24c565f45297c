//! The JSON Schemas in `proto/schema/` against the crate: every event the
//! crate encodes, in both encodings, fits them, and frames the decoder or a
//! v1 server would never produce do not.

use std::sync::OnceLock;

use danmaku_proto::{
    encode, ClientEvent, Danmaku, ErrorCode, Format, Hello, Limits, Mode, Moderate, Nonce, Ping,
    Post, RejectCode, Role, ServerEvent,
};
use serde_json::{json, Value};

/// Where the schemas are.
const DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../proto/schema");

/// The validators of server and client events, built once from every file
/// in [`DIR`], since each refers to the others by their `$id`.
fn validators() -> &'static (jsonschema::Validator, jsonschema::Validator) {
    static V: OnceLock<(jsonschema::Validator, jsonschema::Validator)> = OnceLock::new();
    V.get_or_init(|| {
        let mut opts = jsonschema::options();
        let (mut server, mut client) = (None, None);
        for entry in std::fs::read_dir(DIR).unwrap() {
            let path = entry.unwrap().path();
            let doc: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
            let id = doc["$id"].as_str().unwrap().to_owned();
            match path.file_name().and_then(|n| n.to_str()) {
                Some("server-event.json") => server = Some(doc.clone()),
                Some("client-event.json") => client = Some(doc.clone()),
                _ => {}
            }
            opts = opts.with_resource(id, jsonschema::Resource::from_contents(doc).unwrap());
        }
        (
            opts.build(&server.expect("server-event.json")).unwrap(),
            opts.build(&client.expect("client-event.json")).unwrap(),
        )
    })
}

/// The schema's complaints about `event`; empty when it fits.
fn errors(v: &jsonschema::Validator, event: &Value) -> Vec<String> {
    v.iter_errors(event)
        .map(|e| format!("{e} at {}", e.instance_path))
        .collect()
}

/// A server event as a JSON value, from each encoding's bytes.
fn server_values(event: &ServerEvent) -> [Value; 2] {
    Format::ALL.map(|format| match encode(format, event) {
        danmaku_proto::Encoded::Text(s) => serde_json::from_str(&s).unwrap(),
        danmaku_proto::Encoded::Binary(b) => rmp_serde::from_slice(&b).unwrap(),
    })
}

fn nonce(s: &str) -> Option<Nonce> {
    Some(Nonce::parse(s).unwrap())
}

fn comment() -> Danmaku {
    Danmaku {
        id: "abc-1".into(),
        room: "lobby".into(),
        user: "u1".into(),
        name: Some("小明".into()),
        text: "hi".into(),
        color: "#ffffff".into(),
        mode: Mode::Top,
        ts: 1_700_000_000_000,
    }
}

/// One of every server event, and every reject and error code.
fn server_samples() -> Vec<ServerEvent> {
    let mut events = vec![
        ServerEvent::Hello(Hello {
            room: "lobby".into(),
            user: "u1".into(),
            name: None,
            role: Some(Role::Moderator),
            online: 3,
            server: "gw-1".into(),
            limits: Limits {
                max_text_chars: 100,
                max_frame_bytes: 4096,
                max_nonce_bytes: 64,
                post_rate_count: 5,
                post_window_ms: 10_000,
                post_burst: 3,
            },
            recent: vec![comment()],
        }),
        ServerEvent::Danmaku(comment()),
        ServerEvent::Batch {
            items: vec![
                ServerEvent::Danmaku(comment()),
                ServerEvent::Online {
                    room: "lobby".into(),
                    count: 4,
                },
            ],
        },
        ServerEvent::Delete {
            room: "lobby".into(),
            id: "abc-1".into(),
        },
        ServerEvent::Ack {
            nonce: nonce("1"),
            id: "abc-1".into(),
        },
        ServerEvent::AuthOk {
            nonce: None,
            user: "u1".into(),
            role: Role::Admin,
            exp: 1_700_000_000,
        },
        ServerEvent::Pong { nonce: nonce("p") },
        ServerEvent::Moderated {
            nonce: nonce("m1"),
            action: "mute".into(),
        },
        ServerEvent::Moderated {
            nonce: None,
            action: "slow_mode".into(),
        },
    ];
    for code in RejectCode::ALL {
        let retry = matches!(
            code,
            RejectCode::RateLimited | RejectCode::SlowMode | RejectCode::Muted
        );
        events.push(ServerEvent::Reject {
            nonce: nonce("2"),
            code,
            message: code.as_str().into(),
            retry_after_ms: retry.then_some(1500),
        });
    }
    // A permanent mute says no retry time.
    events.push(ServerEvent::Reject {
        nonce: None,
        code: RejectCode::Muted,
        message: "muted".into(),
        retry_after_ms: None,
    });
    for code in [ErrorCode::BadFrame, ErrorCode::BadToken] {
        events.push(ServerEvent::Error {
            nonce: None,
            code,
            message: "m".into(),
        });
    }
    for code in [
        ErrorCode::Forbidden,
        ErrorCode::BadRequest,
        ErrorCode::Unavailable,
    ] {
        for nonce in [nonce("m2"), None] {
            events.push(ServerEvent::Error {
                nonce,
                code,
                message: "seconds: at most 300".into(),
            });
        }
    }
    events
}

#[test]
fn every_server_event_fits_the_schema_in_both_encodings() {
    let (server, _) = validators();
    for event in server_samples() {
        for value in server_values(&event) {
            let errors = errors(server, &value);
            assert!(errors.is_empty(), "{value}: {errors:?}");
        }
    }
}

/// One of every client event, `moderate` with each action.
fn client_samples() -> Vec<ClientEvent> {
    let moderate = |action: &str| Moderate {
        action: action.into(),
        nonce: Some("m".into()),
        ..Moderate::default()
    };
    let word = |action: &str| Moderate {
        word: Some("spam".into()),
        ..moderate(action)
    };
    vec![
        ClientEvent::Post(Post {
            text: "hi".into(),
            color: Some("#FF0000".into()),
            mode: Some("bottom".into()),
            nonce: Some("1".into()),
        }),
        ClientEvent::Ping(Ping::default()),
        ClientEvent::Auth(danmaku_proto::Auth {
            token: "a.b.c".into(),
            nonce: None,
        }),
        ClientEvent::Moderate(Moderate {
            user: Some("u2".into()),
            seconds: Some(0),
            shadow: Some(true),
            global: Some(true),
            ..moderate("mute")
        }),
        ClientEvent::Moderate(Moderate {
            user: Some("u2".into()),
            ..moderate("unmute")
        }),
        ClientEvent::Moderate(Moderate {
            seconds: Some(300),
            ..moderate("slow_mode")
        }),
        ClientEvent::Moderate(moderate("lock")),
        ClientEvent::Moderate(moderate("unlock")),
        ClientEvent::Moderate(Moderate {
            id: Some("abc-1".into()),
            ..moderate("recall")
        }),
        ClientEvent::Moderate(Moderate {
            word_action: Some("mask".into()),
            ..word("block_word")
        }),
        ClientEvent::Moderate(word("block_word")),
        ClientEvent::Moderate(word("unblock_word")),
        ClientEvent::Moderate(word("allow_word")),
        ClientEvent::Moderate(word("disallow_word")),
    ]
}

#[test]
fn every_client_event_fits_the_schema_and_decodes() {
    let (_, client) = validators();
    for event in client_samples() {
        let value = serde_json::to_value(&event).unwrap();
        let errors = errors(client, &value);
        assert!(errors.is_empty(), "{value}: {errors:?}");
        let bytes = serde_json::to_vec(&value).unwrap();
        assert_eq!(
            danmaku_proto::decode_client(Format::Json, &bytes).unwrap(),
            event
        );
    }
}

#[test]
fn the_schemas_refuse_what_v1_does_not_send() {
    let (server, client) = validators();
    for bad in [
        json!({"type": "moderate"}),
        json!({"type": "moderate", "action": "shout"}),
        json!({"type": "moderate", "action": "mute", "user": "u"}),
        json!({"type": "moderate", "action": "mute", "user": "u", "seconds": -1}),
        json!({"type": "moderate", "action": "mute", "user": "u", "seconds": 1.5}),
        json!({"type": "moderate", "action": "mute", "user": "u", "seconds": "60"}),
        json!({"type": "moderate", "action": "mute", "user": "u", "seconds": 1, "shadow": 1}),
        json!({"type": "moderate", "action": "unmute", "global": "yes", "user": "u"}),
        json!({"type": "moderate", "action": "slow_mode", "seconds": 301}),
        json!({"type": "moderate", "action": "slow_mode"}),
        json!({"type": "moderate", "action": "recall"}),
        json!({"type": "moderate", "action": "block_word", "word": "x", "word_action": "hide"}),
        json!({"type": "moderate", "action": "allow_word"}),
        json!({"type": "moderate", "action": "lock", "nonce": "n".repeat(65)}),
    ] {
        assert!(!errors(client, &bad).is_empty(), "{bad}");
    }
    for bad in [
        json!({"type": "moderated"}),
        json!({"type": "moderated", "action": "shout"}),
        json!({"type": "moderated", "action": "lock", "extra": 1}),
        json!({"type": "reject", "code": "slow_mode", "message": "m"}),
        json!({"type": "reject", "code": "rate_limited", "message": "m"}),
        json!({"type": "reject", "code": "shadow_muted", "message": "m"}),
        json!({"type": "error", "code": "forbidden"}),
        json!({"type": "error", "code": "bad_frame", "message": "m", "nonce": "n"}),
        json!({"type": "error", "code": "bad_request", "message": "m", "nonce": 5}),
    ] {
        assert!(!errors(server, &bad).is_empty(), "{bad}");
    }
}

/// The wire name of an error code; the match breaks the build when a code
/// is added, so the list below cannot silently fall behind.
fn error_code_name(code: ErrorCode) -> &'static str {
    match code {
        ErrorCode::BadFrame => "bad_frame",
        ErrorCode::BadToken => "bad_token",
        ErrorCode::Forbidden => "forbidden",
        ErrorCode::BadRequest => "bad_request",
        ErrorCode::Unavailable => "unavailable",
    }
}

/// The `enum` of a property in one schema file.
fn listed(file: &str, property: &str) -> Vec<String> {
    let doc: Value =
        serde_json::from_slice(&std::fs::read(format!("{DIR}/{file}")).unwrap()).unwrap();
    doc["properties"][property]["enum"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap().to_owned())
        .collect()
}

#[test]
fn the_schemas_list_every_code_in_order() {
    let reject: Vec<&str> = RejectCode::ALL.iter().map(|c| c.as_str()).collect();
    assert_eq!(listed("reject.json", "code"), reject);
    let all = [
        ErrorCode::BadFrame,
        ErrorCode::BadToken,
        ErrorCode::Forbidden,
        ErrorCode::BadRequest,
        ErrorCode::Unavailable,
    ];
    for code in all {
        let wire = serde_json::to_value(code).unwrap();
        assert_eq!(wire, error_code_name(code));
    }
    let error: Vec<&str> = all.map(error_code_name).to_vec();
    assert_eq!(listed("error.json", "code"), error);
    assert_eq!(
        listed("moderate.json", "action"),
        listed("moderated.json", "action")
    );
}

#[test]
fn the_protocol_documents_every_code_and_action() {
    let protocol = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../proto/PROTOCOL.md"
    ))
    .unwrap();
    for code in RejectCode::ALL {
        let row = format!("| `{}`", code.as_str());
        assert!(protocol.contains(&row), "{row} in §8.1");
    }
    for code in ["bad_frame", "bad_token", "forbidden", "bad_request"] {
        let row = format!("| `{code}`");
        assert!(protocol.contains(&row), "{row} in §8.2");
    }
    for action in listed("moderate.json", "action") {
        let row = format!("| `{action}`");
        assert!(protocol.contains(&row), "{row} in §7.2b");
    }
}
