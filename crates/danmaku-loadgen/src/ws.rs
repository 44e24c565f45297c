//! A lean WebSocket client for the receive-heavy side of a load test.
//!
//! A general-purpose WebSocket library zero-fills its read buffer before
//! every read, validates the UTF-8 of every text frame and hands out an owned
//! message per frame. At a hundred thousand frames a second those costs land
//! on the same two cores the gateway under test needs, so this client does
//! none of it: it reads into an uninitialised buffer, parses frame headers in
//! place and lends out each payload as a slice. It speaks only what a load
//! generator needs: the client handshake (RFC 6455 §4.1, checking the accept
//! key and the subprotocol), unmasked server frames with fragmentation,
//! answering pings, and sending masked data and close frames.
//!
//! It may also offer `permessage-deflate` (RFC 7692) as browsers do. The
//! gateway answers with `server_no_context_takeover`, so every compressed
//! message inflates on its own: one inflater per worker thread serves every
//! connection of that thread, and an idle connection holds no inflate
//! state. What this client sends stays uncompressed (RSV1 is per message).

use std::io;

use std::cell::RefCell;

use bytes::{Buf, BytesMut};
use flate2::{Decompress, FlushDecompress, Status};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::handshake::client::generate_key;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;

/// Continuation of a fragmented message.
const OP_CONTINUATION: u8 = 0x0;
/// Text data frame.
pub(crate) const OP_TEXT: u8 = 0x1;
/// Binary data frame.
pub(crate) const OP_BINARY: u8 = 0x2;
/// Close control frame.
pub(crate) const OP_CLOSE: u8 = 0x8;
/// Ping control frame.
pub(crate) const OP_PING: u8 = 0x9;
/// Pong control frame.
pub(crate) const OP_PONG: u8 = 0xa;

/// Largest message accepted from the server.
pub(crate) const MAX_MESSAGE: usize = 16 << 20;
/// Largest handshake response accepted.
const MAX_RESPONSE_HEAD: usize = 16 << 10;
/// Free space kept in the read buffer before each read.
const READ_CHUNK: usize = 4096;

/// Why a connection's WebSocket conversation failed. The messages end up,
/// as they are, in the report's list of reasons.
#[derive(Debug, thiserror::Error)]
pub(crate) enum WsError {
    /// The socket failed.
    #[error(transparent)]
    Io(#[from] io::Error),
    /// A frame header with RSV bits set that no negotiated extension allows.
    #[error("reserved bits set in a frame from the server")]
    ReservedBits,
    /// A compressed message that does not inflate.
    #[error("compressed message does not inflate: {0}")]
    Inflate(String),
    /// The server accepted `permessage-deflate` with parameters this client
    /// cannot honour (it must not keep its compression context).
    #[error("handshake: unusable permessage-deflate answer {0:?}")]
    Extension(String),
    /// A server frame with the mask bit set, which RFC 6455 forbids.
    #[error("masked frame from the server")]
    Masked,
    /// A frame longer than [`MAX_MESSAGE`].
    #[error("frame of {0} bytes is over the {MAX_MESSAGE} byte limit")]
    FrameTooLarge(usize),
    /// A data frame arrived while a fragmented message was incomplete.
    #[error("new message inside a fragmented one")]
    NestedMessage,
    /// A continuation frame arrived with no message to continue.
    #[error("continuation frame without a message")]
    StrayContinuation,
    /// The fragments of one message add up to more than [`MAX_MESSAGE`].
    #[error("fragmented message over the {MAX_MESSAGE} byte limit")]
    MessageTooLarge,
    /// An opcode RFC 6455 does not define.
    #[error("unknown opcode {0:#x} from the server")]
    UnknownOpcode(u8),
    /// The handshake response head did not end within [`MAX_RESPONSE_HEAD`].
    #[error("handshake response too long")]
    ResponseTooLong,
    /// The server hung up before the handshake response was complete.
    #[error("connection closed during the handshake")]
    ClosedDuringHandshake,
    /// The handshake response head is not text.
    #[error("handshake response is not UTF-8")]
    ResponseNotUtf8(#[source] std::str::Utf8Error),
    /// The server refused the upgrade with this HTTP status.
    #[error("handshake: HTTP {0}")]
    Status(String),
    /// The accept key does not match ours.
    #[error("handshake: wrong Sec-WebSocket-Accept")]
    WrongAccept,
    /// The server chose another subprotocol, or none where one is needed.
    #[error("handshake: server chose subprotocol {got:?}, not {wanted}")]
    WrongSubprotocol {
        /// What the server chose.
        got: Option<String>,
        /// What we asked for.
        wanted: String,
    },
}

/// What the server sent, as the caller sees it.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Incoming<'a> {
    /// A complete data message: `text` for a text frame, else binary.
    Data {
        /// Whether it came as text.
        text: bool,
        /// The message, borrowed from the read buffer.
        payload: &'a [u8],
    },
    /// The server closed, with code and reason if it gave them.
    Close(Option<(u16, String)>),
}

/// A parsed frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Header {
    fin: bool,
    /// RSV1: the message is compressed (only with `permessage-deflate`).
    compressed: bool,
    opcode: u8,
    header_len: usize,
    payload_len: usize,
}

/// Parses the header of the frame at the start of `buf`; `None` until the
/// whole frame is in the buffer.
/// With `deflate`, RSV1 may mark the first frame of a data message.
fn parse_header(buf: &[u8], deflate: bool) -> Result<Option<Header>, WsError> {
    let [b0, b1, ..] = *buf else {
        return Ok(None);
    };
    let compressed = b0 & 0x40 != 0;
    let data_start = matches!(b0 & 0x0f, OP_TEXT | OP_BINARY);
    if b0 & 0x30 != 0 || (compressed && !(deflate && data_start)) {
        return Err(WsError::ReservedBits);
    }
    if b1 & 0x80 != 0 {
        return Err(WsError::Masked);
    }
    let (header_len, payload_len) = match b1 & 0x7f {
        126 => match buf.get(2..4) {
            Some(n) => (4, usize::from(u16::from_be_bytes([n[0], n[1]]))),
            None => return Ok(None),
        },
        127 => match buf.get(2..10) {
            Some(n) => {
                let len = u64::from_be_bytes(n.try_into().expect("8 bytes"));
                (10, usize::try_from(len).unwrap_or(usize::MAX))
            }
            None => return Ok(None),
        },
        n => (2, usize::from(n)),
    };
    if payload_len > MAX_MESSAGE {
        return Err(WsError::FrameTooLarge(payload_len));
    }
    let header = Header {
        fin: b0 & 0x80 != 0,
        compressed,
        opcode: b0 & 0x0f,
        header_len,
        payload_len,
    };
    Ok((buf.len() >= header_len + payload_len).then_some(header))
}

/// The whole length of the frame at the start of `buf`, once its header is in.
fn frame_len(buf: &[u8]) -> Option<usize> {
    let len7 = buf.get(1)? & 0x7f;
    match len7 {
        126 => Some(4 + usize::from(u16::from_be_bytes(buf.get(2..4)?.try_into().ok()?))),
        127 => {
            let n = u64::from_be_bytes(buf.get(2..10)?.try_into().ok()?);
            Some(10usize.saturating_add(usize::try_from(n).unwrap_or(usize::MAX).min(MAX_MESSAGE)))
        }
        n => Some(2 + usize::from(n)),
    }
}

/// Appends a masked client frame to `out`.
fn push_frame(out: &mut Vec<u8>, opcode: u8, payload: &[u8], mask: [u8; 4]) {
    out.push(0x80 | opcode);
    match payload.len() {
        n @ 0..=125 => out.push(0x80 | n as u8),
        n @ 126..=0xffff => {
            out.push(0x80 | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(0x80 | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    out.extend_from_slice(&mask);
    out.extend(payload.iter().zip(mask.iter().cycle()).map(|(b, m)| b ^ m));
}

/// Frame parsing and output buffering, apart from the socket so it can be
/// tested on bytes.
struct Codec {
    buf: BytesMut,
    /// Opcode, compression and data of a fragmented message being put
    /// together.
    fragments: Option<(u8, bool, Vec<u8>)>,
    /// Whether `permessage-deflate` was negotiated.
    deflate: bool,
    /// Frames waiting to be written.
    out: Vec<u8>,
    /// State of the masking-key generator (xorshift; masks need not be secret here).
    mask_state: u32,
    /// Set once a close frame was queued.
    close_sent: bool,
}

impl Codec {
    fn new(seed: u32, initial: BytesMut) -> Codec {
        Codec {
            buf: initial,
            fragments: None,
            deflate: false,
            out: Vec::new(),
            mask_state: seed | 1,
            close_sent: false,
        }
    }

    fn next_mask(&mut self) -> [u8; 4] {
        let mut x = self.mask_state;
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        self.mask_state = x;
        x.to_ne_bytes()
    }

    fn queue(&mut self, opcode: u8, payload: &[u8]) {
        let mask = self.next_mask();
        push_frame(&mut self.out, opcode, payload, mask);
    }

    /// Hands every complete message in the buffer to `on_message`, answers
    /// pings, and stops after a close. Returns whether the server closed.
    fn drain(&mut self, mut on_message: impl FnMut(Incoming<'_>)) -> Result<bool, WsError> {
        while let Some(h) = parse_header(&self.buf, self.deflate)? {
            let start = h.header_len;
            let end = start + h.payload_len;
            let mut closed = false;
            match h.opcode {
                OP_TEXT | OP_BINARY if h.fin && self.fragments.is_none() => {
                    deliver(
                        h.opcode == OP_TEXT,
                        h.compressed,
                        &self.buf[start..end],
                        &mut on_message,
                    )?;
                }
                OP_TEXT | OP_BINARY => {
                    if self.fragments.is_some() {
                        return Err(WsError::NestedMessage);
                    }
                    self.fragments = Some((h.opcode, h.compressed, self.buf[start..end].to_vec()));
                }
                OP_CONTINUATION => {
                    let Some((opcode, _, data)) = self.fragments.as_mut() else {
                        return Err(WsError::StrayContinuation);
                    };
                    data.extend_from_slice(&self.buf[start..end]);
                    if data.len() > MAX_MESSAGE {
                        return Err(WsError::MessageTooLarge);
                    }
                    if h.fin {
                        let text = *opcode == OP_TEXT;
                        let (_, compressed, data) = self.fragments.take().expect("checked above");
                        deliver(text, compressed, &data, &mut on_message)?;
                    }
                }
                OP_PING => {
                    let payload = self.buf[start..end].to_vec();
                    if !self.close_sent {
                        self.queue(OP_PONG, &payload);
                    }
                }
                OP_PONG => {}
                OP_CLOSE => {
                    let payload = &self.buf[start..end];
                    let reason = (payload.len() >= 2).then(|| {
                        (
                            u16::from_be_bytes([payload[0], payload[1]]),
                            String::from_utf8_lossy(&payload[2..]).into_owned(),
                        )
                    });
                    on_message(Incoming::Close(reason));
                    closed = true;
                }
                other => return Err(WsError::UnknownOpcode(other)),
            }
            self.buf.advance(end);
            if closed {
                return Ok(true);
            }
        }
        Ok(false)
    }
}

thread_local! {
    /// This thread's inflater and its output buffer, shared by every
    /// connection the thread serves: without a kept context, each message
    /// inflates from a fresh state.
    static INFLATE: RefCell<(Decompress, Vec<u8>)> =
        RefCell::new((Decompress::new(false), Vec::new()));
}

/// The tail RFC 7692 §7.2.1 has the sender strip from every message.
const DEFLATE_TAIL: [u8; 4] = [0x00, 0x00, 0xff, 0xff];

/// Raw-inflates one message (its stripped tail put back) into `out`,
/// refusing more than [`MAX_MESSAGE`] bytes.
fn inflate(z: &mut Decompress, input: &[u8], out: &mut Vec<u8>) -> Result<(), WsError> {
    z.reset(false);
    out.clear();
    for part in [input, &DEFLATE_TAIL[..]] {
        let mut rest = part;
        loop {
            if out.capacity() - out.len() < 4096 {
                out.reserve(out.len().max(4096));
            }
            let (in_before, out_before) = (z.total_in(), z.total_out());
            let status = z
                .decompress_vec(rest, out, FlushDecompress::Sync)
                .map_err(|e| WsError::Inflate(e.to_string()))?;
            rest = &rest[(z.total_in() - in_before) as usize..];
            if out.len() > MAX_MESSAGE {
                return Err(WsError::MessageTooLarge);
            }
            if status == Status::StreamEnd {
                return Ok(());
            }
            let room_left = out.len() < out.capacity();
            if rest.is_empty() && room_left {
                break;
            }
            if room_left && z.total_in() == in_before && z.total_out() == out_before {
                return Err(WsError::Inflate("inflate made no progress".into()));
            }
        }
    }
    Ok(())
}

/// Hands one complete data message to `on_message`, inflated first when
/// it came compressed.
fn deliver(
    text: bool,
    compressed: bool,
    payload: &[u8],
    on_message: &mut impl FnMut(Incoming<'_>),
) -> Result<(), WsError> {
    if !compressed {
        on_message(Incoming::Data { text, payload });
        return Ok(());
    }
    INFLATE.with(|cell| {
        let mut guard = cell.borrow_mut();
        let (z, out) = &mut *guard;
        inflate(z, payload, out)?;
        on_message(Incoming::Data { text, payload: out });
        if out.capacity() > 1 << 20 {
            *out = Vec::new();
        }
        Ok(())
    })
}

/// Runs the frame parser on `data` as a socket would hand it over, in reads
/// of `chunk` bytes (at least one), draining after each, until the data
/// ends, the parser fails or the server closes. Only for [`crate::fuzz`], so
/// split headers and split payloads are exercised as on a real socket.
pub(crate) fn parse_stream(data: &[u8], chunk: usize, mut on_message: impl FnMut(Incoming<'_>)) {
    let mut codec = Codec::new(1, BytesMut::new());
    for piece in data.chunks(chunk.max(1)) {
        codec.buf.extend_from_slice(piece);
        if !matches!(codec.drain(&mut on_message), Ok(false)) {
            return;
        }
    }
}

/// A connected WebSocket client.
pub(crate) struct Client {
    stream: TcpStream,
    codec: Codec,
}

impl Client {
    /// Performs the opening handshake for `path` on `stream`, asking for
    /// `subprotocol`. `seed` varies the masking keys between connections.
    /// With `deflate`, offers `permessage-deflate` the way browsers do.
    pub(crate) async fn handshake(
        mut stream: TcpStream,
        host: &str,
        path: &str,
        subprotocol: &str,
        seed: u32,
        deflate: bool,
    ) -> Result<Client, WsError> {
        let key = generate_key();
        let offer = if deflate {
            "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n"
        } else {
            ""
        };
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\
             Sec-WebSocket-Protocol: {subprotocol}\r\n{offer}\r\n"
        );
        stream.write_all(request.as_bytes()).await?;
        let mut buf = BytesMut::with_capacity(READ_CHUNK);
        let head_len = loop {
            if let Some(at) = memchr::memmem::find(&buf, b"\r\n\r\n") {
                break at + 4;
            }
            if buf.len() > MAX_RESPONSE_HEAD {
                return Err(WsError::ResponseTooLong);
            }
            buf.reserve(READ_CHUNK);
            if stream.read_buf(&mut buf).await? == 0 {
                return Err(WsError::ClosedDuringHandshake);
            }
        };
        let negotiated = check_response(&buf[..head_len], &key, subprotocol)?;
        if negotiated && !deflate {
            return Err(WsError::Extension(
                "an extension that was not offered".into(),
            ));
        }
        buf.advance(head_len);
        let mut codec = Codec::new(seed, buf);
        codec.deflate = negotiated;
        Ok(Client { stream, codec })
    }

    /// Whether `permessage-deflate` is in use on this connection.
    pub(crate) fn deflate(&self) -> bool {
        self.codec.deflate
    }

    /// Reads what the socket has into the buffer, waiting until there is
    /// something; `Ok(0)` at the end of the stream. Cancel-safe: when
    /// dropped before it completes, nothing was read.
    pub(crate) async fn read(&mut self) -> io::Result<usize> {
        let buf = &mut self.codec.buf;
        // Room for at least the rest of the frame being received, so a big
        // batch comes in one read.
        let want =
            frame_len(buf).map_or(READ_CHUNK, |n| n.saturating_sub(buf.len()).max(READ_CHUNK));
        if buf.capacity() - buf.len() < want {
            buf.reserve(want);
        }
        self.stream.read_buf(buf).await
    }

    /// Hands every complete message read so far to `on_message`, and
    /// writes any pongs owed. Returns whether the server closed.
    pub(crate) async fn process(
        &mut self,
        on_message: impl FnMut(Incoming<'_>),
    ) -> Result<bool, WsError> {
        let closed = self.codec.drain(on_message)?;
        if self.codec.buf.is_empty() && self.codec.buf.capacity() > 4 * READ_CHUNK {
            // Give back the room a big frame needed.
            self.codec.buf = BytesMut::with_capacity(READ_CHUNK);
        }
        self.flush().await?;
        Ok(closed)
    }

    /// Queues a data frame; [`Client::flush`] sends it.
    pub(crate) fn queue(&mut self, opcode: u8, payload: &[u8]) {
        self.codec.queue(opcode, payload);
    }

    /// Writes everything queued.
    pub(crate) async fn flush(&mut self) -> io::Result<()> {
        if !self.codec.out.is_empty() {
            self.stream.write_all(&self.codec.out).await?;
            self.codec.out.clear();
            if self.codec.out.capacity() > 4 * READ_CHUNK {
                self.codec.out = Vec::new();
            }
        }
        Ok(())
    }

    /// Sends a close frame with code 1000 and waits briefly for the answer.
    pub(crate) async fn close(&mut self) {
        if !self.codec.close_sent {
            self.codec.queue(OP_CLOSE, &1000u16.to_be_bytes());
            self.codec.close_sent = true;
        }
        let _ = self.flush().await;
        let _ = self.stream.shutdown().await;
    }
}

/// Checks a handshake response head: status 101, the accept key for `key`,
/// and the subprotocol (the server may leave it out only for JSON, the
/// protocol's default). Returns whether the server accepted
/// `permessage-deflate`; it must then promise `server_no_context_takeover`,
/// since this client keeps no inflate context between messages.
fn check_response(head: &[u8], key: &str, subprotocol: &str) -> Result<bool, WsError> {
    let head = std::str::from_utf8(head).map_err(WsError::ResponseNotUtf8)?;
    let mut lines = head.split("\r\n");
    let status = lines.next().unwrap_or_default();
    let code = status.split_whitespace().nth(1).unwrap_or_default();
    if code != "101" {
        return Err(WsError::Status(code.to_owned()));
    }
    let mut accept = None;
    let mut protocol = None;
    let mut deflate = false;
    for line in lines {
        if let Some((name, value)) = line.split_once(':') {
            let value = value.trim();
            if name.eq_ignore_ascii_case("sec-websocket-accept") {
                accept = Some(value);
            } else if name.eq_ignore_ascii_case("sec-websocket-protocol") {
                protocol = Some(value);
            } else if name.eq_ignore_ascii_case("sec-websocket-extensions") {
                let mut params = value.split(';').map(str::trim);
                if params.next() != Some("permessage-deflate") {
                    return Err(WsError::Extension(value.to_owned()));
                }
                if !params.any(|p| p == "server_no_context_takeover") {
                    return Err(WsError::Extension(value.to_owned()));
                }
                deflate = true;
            }
        }
    }
    if accept != Some(derive_accept_key(key.as_bytes()).as_str()) {
        return Err(WsError::WrongAccept);
    }
    match protocol {
        Some(p) if p == subprotocol => Ok(deflate),
        None if subprotocol == danmaku_proto::SUBPROTOCOL_JSON => Ok(deflate),
        other => Err(WsError::WrongSubprotocol {
            got: other.map(str::to_owned),
            wanted: subprotocol.to_owned(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};
    use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
    use tokio_tungstenite::tungstenite::protocol::CloseFrame;
    use tokio_tungstenite::tungstenite::Message;

    /// An unmasked server frame; the property tests build theirs with it too.
    pub(super) fn server_frame(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
        let mut out = vec![u8::from(fin) << 7 | opcode];
        match payload.len() {
            n @ 0..=125 => out.push(n as u8),
            n @ 126..=0xffff => {
                out.push(126);
                out.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                out.push(127);
                out.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        out.extend_from_slice(payload);
        out
    }

    fn collect(codec: &mut Codec) -> (Vec<(bool, Vec<u8>)>, bool) {
        let mut got = Vec::new();
        let closed = codec
            .drain(|m| match m {
                Incoming::Data { text, payload } => got.push((text, payload.to_vec())),
                Incoming::Close(c) => got.push((false, format!("close {c:?}").into_bytes())),
            })
            .unwrap();
        (got, closed)
    }

    #[test]
    fn frames_of_every_length_form_come_through_whole() {
        let big = vec![b'x'; 70_000];
        let mid = vec![b'y'; 300];
        let mut bytes = server_frame(true, OP_TEXT, b"hi");
        bytes.extend(server_frame(true, OP_BINARY, &mid));
        bytes.extend(server_frame(true, OP_TEXT, &big));
        let mut codec = Codec::new(1, BytesMut::new());
        // Fed a byte at a time, nothing comes out before it is complete.
        let mut got = Vec::new();
        for b in &bytes {
            codec.buf.extend_from_slice(&[*b]);
            got.extend(collect(&mut codec).0);
        }
        assert_eq!(
            got,
            [(true, b"hi".to_vec()), (false, mid), (true, big)],
            "in order, with their kinds"
        );
        assert!(codec.buf.is_empty());
    }

    #[test]
    fn frame_lengths_are_known_from_the_header() {
        assert_eq!(frame_len(&[]), None);
        assert_eq!(frame_len(&[0x81]), None);
        assert_eq!(frame_len(&[0x81, 5]), Some(7));
        assert_eq!(frame_len(&[0x81, 126, 0x01]), None);
        assert_eq!(frame_len(&[0x81, 126, 0x01, 0x00]), Some(4 + 256));
        let mut long = vec![0x82, 127];
        long.extend_from_slice(&70_000u64.to_be_bytes());
        assert_eq!(frame_len(&long), Some(10 + 70_000));
    }

    #[test]
    fn fragments_are_joined_and_pings_answered_in_between() {
        let mut codec = Codec::new(7, BytesMut::new());
        codec.buf.extend(server_frame(false, OP_TEXT, b"he"));
        codec.buf.extend(server_frame(true, OP_PING, b"p"));
        codec
            .buf
            .extend(server_frame(false, OP_CONTINUATION, b"ll"));
        codec.buf.extend(server_frame(true, OP_CONTINUATION, b"o"));
        let (got, closed) = collect(&mut codec);
        assert_eq!(got, [(true, b"hello".to_vec())]);
        assert!(!closed);
        // The pong is masked and carries the ping's payload.
        let out = &codec.out;
        assert_eq!(out[0], 0x80 | OP_PONG);
        assert_eq!(out[1], 0x80 | 1);
        assert_eq!(out[6] ^ out[2], b'p');
    }

    #[test]
    fn a_close_stops_the_drain_and_reports_the_code() {
        let mut codec = Codec::new(3, BytesMut::new());
        let mut close = 1008u16.to_be_bytes().to_vec();
        close.extend_from_slice(b"too slow");
        codec.buf.extend(server_frame(true, OP_CLOSE, &close));
        codec.buf.extend(server_frame(true, OP_TEXT, b"after"));
        let (got, closed) = collect(&mut codec);
        assert!(closed);
        assert_eq!(got.len(), 1);
        assert!(String::from_utf8_lossy(&got[0].1).contains("1008"));
    }

    #[test]
    fn protocol_violations_are_errors() {
        for bad in [
            vec![0x81, 0x81, 0, 0, 0, 0, b'x'], // masked
            vec![0xc1, 0x00],                   // reserved bit
            vec![0x83, 0x00],                   // unknown opcode
            vec![0x80, 0x00],                   // continuation without a start
        ] {
            let mut codec = Codec::new(1, BytesMut::from(&bad[..]));
            assert!(codec.drain(|_| ()).is_err(), "{bad:?}");
        }
        let mut huge = vec![0x82, 127];
        huge.extend_from_slice(&u64::MAX.to_be_bytes());
        assert!(parse_header(&huge, false).is_err());
    }

    /// `payload` raw-deflated as a permessage-deflate sender does: sync
    /// flushed, the empty block's tail stripped.
    fn deflated(payload: &[u8]) -> Vec<u8> {
        let mut z = flate2::Compress::new(flate2::Compression::default(), false);
        let mut out = Vec::with_capacity(payload.len() + 64);
        z.compress_vec(payload, &mut out, flate2::FlushCompress::Sync)
            .unwrap();
        assert!(out.ends_with(&DEFLATE_TAIL));
        out.truncate(out.len() - 4);
        out
    }

    #[test]
    fn compressed_messages_inflate_when_deflate_was_negotiated() {
        let text = br#"{"type":"batch","items":[{"text":"hello hello hello hello"}]}"#;
        let packed = deflated(text);
        let mut frame = server_frame(true, OP_TEXT, &packed);
        frame[0] |= 0x40;
        // Fragmented: RSV1 on the first frame only.
        let (a, b) = packed.split_at(packed.len() / 2);
        let mut first = server_frame(false, OP_BINARY, a);
        first[0] |= 0x40;
        let mut bytes = frame.clone();
        bytes.extend(first);
        bytes.extend(server_frame(true, OP_CONTINUATION, b));
        bytes.extend(server_frame(true, OP_TEXT, b"plain"));
        let mut codec = Codec::new(1, BytesMut::from(&bytes[..]));
        codec.deflate = true;
        let (got, _) = collect(&mut codec);
        assert_eq!(
            got,
            [
                (true, text.to_vec()),
                (false, text.to_vec()),
                (true, b"plain".to_vec())
            ]
        );
        // Without the extension, RSV1 is a protocol error.
        let mut codec = Codec::new(1, BytesMut::from(&frame[..]));
        assert!(matches!(codec.drain(|_| ()), Err(WsError::ReservedBits)));
        // On a control frame it is one even with the extension.
        let mut ping = server_frame(true, OP_PING, b"");
        ping[0] |= 0x40;
        let mut codec = Codec::new(1, BytesMut::from(&ping[..]));
        codec.deflate = true;
        assert!(codec.drain(|_| ()).is_err());
    }

    #[test]
    fn an_inflation_past_the_limit_is_refused() {
        let bomb = deflated(&vec![0u8; MAX_MESSAGE + 1]);
        assert!(bomb.len() < 100_000, "{}", bomb.len());
        let mut frame = server_frame(true, OP_BINARY, &bomb);
        frame[0] |= 0x40;
        let mut codec = Codec::new(1, BytesMut::from(&frame[..]));
        codec.deflate = true;
        assert!(matches!(codec.drain(|_| ()), Err(WsError::MessageTooLarge)));
        let mut junk = server_frame(true, OP_BINARY, &[0xff; 40]);
        junk[0] |= 0x40;
        let mut codec = Codec::new(1, BytesMut::from(&junk[..]));
        codec.deflate = true;
        assert!(codec.drain(|_| ()).is_err());
    }

    #[test]
    fn a_deflate_answer_must_drop_the_server_context() {
        let key = "dGhlIHNhbXBsZSBub25jZQ==";
        let head = |ext: &str| {
            format!(
                "HTTP/1.1 101 OK\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n{ext}\r\n"
            )
        };
        let json = "danmaku.v1.json";
        assert!(!check_response(head("").as_bytes(), key, json).unwrap());
        let good = "Sec-WebSocket-Extensions: permessage-deflate; server_no_context_takeover; client_no_context_takeover\r\n";
        assert!(check_response(head(good).as_bytes(), key, json).unwrap());
        let kept = "Sec-WebSocket-Extensions: permessage-deflate\r\n";
        assert!(check_response(head(kept).as_bytes(), key, json).is_err());
        let other = "Sec-WebSocket-Extensions: x-webkit-deflate-frame\r\n";
        assert!(check_response(head(other).as_bytes(), key, json).is_err());
    }

    #[test]
    fn handshake_responses_are_checked() {
        let key = "dGhlIHNhbXBsZSBub25jZQ==";
        let ok = "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\
                  Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\
                  sec-websocket-protocol: danmaku.v1.msgpack\r\n\r\n";
        check_response(ok.as_bytes(), key, "danmaku.v1.msgpack").unwrap();
        assert!(check_response(ok.as_bytes(), key, "danmaku.v1.json").is_err());
        let no_protocol =
            "HTTP/1.1 101 OK\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n";
        check_response(no_protocol.as_bytes(), key, "danmaku.v1.json").unwrap();
        let wrong_key = "HTTP/1.1 101 OK\r\nSec-WebSocket-Accept: AAAA\r\n\r\n";
        assert!(check_response(wrong_key.as_bytes(), key, "danmaku.v1.json").is_err());
        let refused = "HTTP/1.1 503 Service Unavailable\r\n\r\n";
        let err = check_response(refused.as_bytes(), key, "x").unwrap_err();
        assert!(err.to_string().contains("503"), "{err}");
    }

    // The server callback's error type is tungstenite's, and large.
    #[allow(clippy::result_large_err)]
    #[tokio::test]
    async fn talks_to_a_real_websocket_server() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.unwrap();
            let callback = |_req: &Request, mut resp: Response| {
                resp.headers_mut()
                    .insert("sec-websocket-protocol", "danmaku.v1.json".parse().unwrap());
                Ok(resp)
            };
            let mut ws = tokio_tungstenite::accept_hdr_async(tcp, callback)
                .await
                .unwrap();
            ws.send(Message::text("first")).await.unwrap();
            ws.send(Message::Ping(b"are you there".to_vec().into()))
                .await
                .unwrap();
            ws.send(Message::binary(vec![7u8; 100_000])).await.unwrap();
            // What the client sends must arrive unmasked and intact; the
            // pong is answered before it.
            let mut seen = Vec::new();
            while let Some(Ok(msg)) = ws.next().await {
                match msg {
                    Message::Pong(p) => seen.push(format!("pong {}", String::from_utf8_lossy(&p))),
                    Message::Text(t) => {
                        seen.push(format!("text {t}"));
                        ws.send(Message::Close(Some(CloseFrame {
                            code: CloseCode::Normal,
                            reason: "bye".into(),
                        })))
                        .await
                        .unwrap();
                    }
                    Message::Close(_) => break,
                    _ => {}
                }
            }
            seen
        });
        let tcp = TcpStream::connect(addr).await.unwrap();
        let mut client =
            Client::handshake(tcp, &addr.to_string(), "/ws/x", "danmaku.v1.json", 9, false)
                .await
                .unwrap();
        let mut got = Vec::new();
        let mut answered = false;
        loop {
            let n = client.read().await.unwrap();
            let closed = client
                .process(|m| match m {
                    Incoming::Data { text, payload } => got.push((text, payload.len())),
                    Incoming::Close(c) => got.push((false, usize::from(c.unwrap().0))),
                })
                .await
                .unwrap();
            if got.len() >= 2 && !answered {
                client.queue(OP_TEXT, "post ünïcode".as_bytes());
                client.flush().await.unwrap();
                answered = true;
            }
            if closed || n == 0 {
                break;
            }
        }
        client.close().await;
        assert_eq!(got, [(true, 5), (false, 100_000), (false, 1000)]);
        let seen = server.await.unwrap();
        assert_eq!(seen, ["pong are you there", "text post ünïcode"]);
    }
}

/// Property tests of the frame parser: whatever the bytes and however the
/// socket splits them, it neither panics nor changes its answer.
#[cfg(test)]
mod proptests {
    use super::tests::server_frame as frame;
    use super::*;
    use proptest::prelude::*;
    use proptest::sample::Index;

    /// One message the server sends: a data message, possibly in fragments,
    /// possibly with control frames between them.
    #[derive(Debug, Clone)]
    struct Message {
        text: bool,
        payload: Vec<u8>,
        /// Where the payload is cut into fragments.
        cuts: Vec<Index>,
        /// A ping or pong payload to send after each fragment but the last.
        controls: Vec<(bool, Vec<u8>)>,
    }

    /// Payload lengths across all three header forms; filled from a seed
    /// rather than drawn byte by byte, which would be slow at 64 KiB.
    fn payload(max_small: usize) -> impl Strategy<Value = Vec<u8>> {
        let len = prop_oneof![
            6 => 0..=max_small,
            3 => 126..=300usize,
            1 => 65_530..=65_545usize,
        ];
        (len, any::<u8>()).prop_map(|(len, seed)| {
            (0..len)
                .map(|i| seed.wrapping_add((i as u8).wrapping_mul(31)))
                .collect()
        })
    }

    fn control() -> impl Strategy<Value = (bool, Vec<u8>)> {
        (
            any::<bool>(),
            proptest::collection::vec(any::<u8>(), 0..=125),
        )
    }

    fn message() -> impl Strategy<Value = Message> {
        (
            any::<bool>(),
            payload(125),
            proptest::collection::vec(any::<Index>(), 0..4),
            proptest::collection::vec(control(), 0..3),
        )
            .prop_map(|(text, payload, cuts, controls)| Message {
                text,
                payload,
                cuts,
                controls,
            })
    }

    /// The bytes of `messages`, with a close frame at the end if `close`.
    fn stream(messages: &[Message], close: bool) -> Vec<u8> {
        let mut out = Vec::new();
        for m in messages {
            let mut cuts: Vec<usize> = m
                .cuts
                .iter()
                .map(|c| c.index(m.payload.len() + 1))
                .collect();
            cuts.sort_unstable();
            cuts.dedup();
            let mut bounds = vec![0];
            bounds.extend(cuts.into_iter().filter(|&c| c > 0 && c < m.payload.len()));
            bounds.push(m.payload.len());
            let pieces = bounds.len() - 1;
            for (i, w) in bounds.windows(2).enumerate() {
                let last = i + 1 == pieces;
                let opcode = match (i, m.text) {
                    (0, true) => OP_TEXT,
                    (0, false) => OP_BINARY,
                    _ => OP_CONTINUATION,
                };
                out.extend(frame(last, opcode, &m.payload[w[0]..w[1]]));
                if let (false, Some((ping, p))) = (last, m.controls.get(i)) {
                    out.extend(frame(true, if *ping { OP_PING } else { OP_PONG }, p));
                }
            }
        }
        if close {
            out.extend(frame(true, OP_CLOSE, &1000u16.to_be_bytes()));
        }
        out
    }

    /// How feeding a codec ended.
    #[derive(Debug, Clone, PartialEq, Eq)]
    enum End {
        /// Everything complete was handled; maybe part of a frame is left.
        Pending,
        /// The server closed.
        Closed,
        /// The stream broke the protocol.
        Failed(String),
    }

    /// What a codec made of a stream.
    #[derive(Debug, PartialEq, Eq)]
    struct Fed {
        /// The messages handed out, a close as text.
        messages: Vec<(bool, Vec<u8>)>,
        /// How it ended.
        end: End,
        /// The bytes it queued to send (pongs).
        out: Vec<u8>,
        /// Bytes left unparsed.
        left: usize,
    }

    /// What a codec made of `bytes` arriving in the pieces `splits` cut
    /// them into.
    fn feed(bytes: &[u8], splits: &[Index]) -> Fed {
        let mut at: Vec<usize> = splits.iter().map(|s| s.index(bytes.len() + 1)).collect();
        at.push(bytes.len());
        at.sort_unstable();
        let mut codec = Codec::new(5, BytesMut::new());
        let mut got = Vec::new();
        let mut end = End::Pending;
        let mut from = 0;
        for to in at {
            codec.buf.extend_from_slice(&bytes[from..to]);
            from = to;
            let drained = codec.drain(|m| match m {
                Incoming::Data { text, payload } => got.push((text, payload.to_vec())),
                Incoming::Close(c) => got.push((false, format!("close {c:?}").into_bytes())),
            });
            match drained {
                Ok(false) => {}
                Ok(true) => {
                    end = End::Closed;
                    break;
                }
                Err(e) => {
                    end = End::Failed(e.to_string());
                    break;
                }
            }
        }
        Fed {
            messages: got,
            end,
            out: codec.out,
            left: codec.buf.len(),
        }
    }

    /// Arbitrary bytes, and valid streams with a few bytes overwritten.
    fn junk() -> impl Strategy<Value = Vec<u8>> {
        prop_oneof![
            proptest::collection::vec(any::<u8>(), 0..600),
            (
                proptest::collection::vec(message(), 1..4),
                proptest::collection::vec((any::<Index>(), any::<u8>()), 1..6),
            )
                .prop_map(|(messages, edits)| {
                    let mut bytes = stream(&messages, false);
                    for (at, b) in edits {
                        let i = at.index(bytes.len());
                        bytes[i] = b;
                    }
                    bytes
                }),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn valid_frames_split_anywhere_parse_to_the_same_payloads(
            messages in proptest::collection::vec(message(), 0..6),
            close in any::<bool>(),
            splits in proptest::collection::vec(any::<Index>(), 0..24),
        ) {
            let bytes = stream(&messages, close);
            let whole = feed(&bytes, &[]);
            let split = feed(&bytes, &splits);
            let mut expected: Vec<(bool, Vec<u8>)> =
                messages.iter().map(|m| (m.text, m.payload.clone())).collect();
            if close {
                expected.push((false, b"close Some((1000, \"\"))".to_vec()));
            }
            prop_assert_eq!(&whole.messages, &expected);
            prop_assert_eq!(&whole.end, &if close { End::Closed } else { End::Pending });
            prop_assert_eq!(whole.left, 0, "nothing left over");
            prop_assert_eq!(whole, split);
        }

        #[test]
        fn arbitrary_bytes_never_panic_and_splits_never_matter(
            bytes in junk(),
            splits in proptest::collection::vec(any::<Index>(), 0..24),
        ) {
            let whole = feed(&bytes, &[]);
            let split = feed(&bytes, &splits);
            // Leftovers may differ after an error or a close, when feeding
            // stops at different points; everything else must agree.
            prop_assert_eq!(&whole.messages, &split.messages);
            prop_assert_eq!(&whole.end, &split.end);
            prop_assert_eq!(&whole.out, &split.out);
            if whole.end == End::Pending {
                prop_assert_eq!(whole.left, split.left);
            }
            let _ = frame_len(&bytes);
        }
    }
}
