//! What both decoder targets check, so they differ only in the format.

use danmaku_proto::{decode_client, ClientEvent, Format};

/// Decodes `data` as one client frame. On success the nonce check runs (it
/// must not panic either), and the event, encoded again with named fields,
/// must decode to itself: the decoder accepts what the encoder writes.
pub fn decode(format: Format, data: &[u8]) {
    let Ok(event) = decode_client(format, data) else {
        return;
    };
    let _ = match &event {
        ClientEvent::Post(post) => post.nonce(),
        ClientEvent::Ping(ping) => ping.nonce(),
        ClientEvent::Auth(auth) => auth.nonce(),
        ClientEvent::Moderate(command) => command.nonce(),
    };
    let again = match format {
        Format::Json => serde_json::to_vec(&event).expect("a client event serializes"),
        Format::MsgPack => rmp_serde::to_vec_named(&event).expect("a client event serializes"),
    };
    assert_eq!(decode_client(format, &again).expect("re-encoded event decodes"), event);
}
