//! A raw TCP WebSocket client for what a real library refuses to send:
//! hand-written handshakes and hand-made frames (unmasked, reserved bits,
//! unknown opcodes, oversized control frames, bad close codes), and a
//! reader that shows exactly which frames the server wrote back.

use std::net::SocketAddr;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::PATIENCE;

/// A valid `Sec-WebSocket-Key`: the one from RFC 6455 §1.3.
pub(crate) const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";

/// An HTTP response: status, header block and body.
#[derive(Debug)]
pub(crate) struct HttpResponse {
    pub status: u16,
    /// The header lines, lower-cased names, as `name: value`.
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl HttpResponse {
    /// The value of the header `name` (lower case), if present.
    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Reads one HTTP response head (and its `Content-Length` body) from `s`;
/// bytes after it are returned too, as the start of the WebSocket stream.
async fn read_response(s: &mut TcpStream) -> (HttpResponse, Vec<u8>) {
    let mut buf = Vec::new();
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let mut chunk = [0u8; 4096];
        let n = tokio::time::timeout(PATIENCE, s.read(&mut chunk))
            .await
            .expect("a response in time")
            .unwrap();
        assert!(n > 0, "connection closed before a response");
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8(buf[..head_end].to_vec()).unwrap();
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let mut rest = buf[head_end..].to_vec();
    let length: usize = headers
        .iter()
        .find(|(n, _)| n == "content-length")
        .map_or(0, |(_, v)| v.parse().unwrap());
    if status == 101 {
        return (
            HttpResponse {
                status,
                headers,
                body: String::new(),
            },
            rest,
        );
    }
    while rest.len() < length {
        let mut chunk = [0u8; 4096];
        let n = tokio::time::timeout(PATIENCE, s.read(&mut chunk))
            .await
            .expect("a body in time")
            .unwrap();
        assert!(n > 0, "connection closed inside the body");
        rest.extend_from_slice(&chunk[..n]);
    }
    let body = String::from_utf8_lossy(&rest[..length]).into_owned();
    (
        HttpResponse {
            status,
            headers,
            body,
        },
        rest[length..].to_vec(),
    )
}

/// Sends a WebSocket upgrade for `path` with the standard headers, where
/// `overrides` replace (or, with an empty value, remove) a header, and
/// returns the response with the connection.
pub(crate) async fn upgrade(
    addr: SocketAddr,
    path: &str,
    overrides: &[(&str, &str)],
) -> (HttpResponse, TcpStream, Vec<u8>) {
    let mut headers = vec![
        ("Host", "test"),
        ("Upgrade", "websocket"),
        ("Connection", "Upgrade"),
        ("Sec-WebSocket-Version", "13"),
        ("Sec-WebSocket-Key", KEY),
    ];
    for &(name, value) in overrides {
        headers.retain(|(n, _)| !n.eq_ignore_ascii_case(name));
        if !value.is_empty() {
            headers.push((name, value));
        }
    }
    let mut request = format!("GET {path} HTTP/1.1\r\n");
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(request.as_bytes()).await.unwrap();
    let (response, rest) = read_response(&mut s).await;
    (response, s, rest)
}

/// One frame as the server sent it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RawFrame {
    /// The opcode (low four bits of the first byte).
    pub opcode: u8,
    /// The payload, unmasked.
    pub payload: Vec<u8>,
}

/// A WebSocket connection driven byte by byte.
pub(crate) struct RawWs {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl RawWs {
    /// Upgrades to `/ws/{room}` and reads the `hello` frame.
    pub(crate) async fn connect(addr: SocketAddr, room: &str) -> RawWs {
        let (response, stream, buf) = upgrade(addr, &format!("/ws/{room}"), &[]).await;
        assert_eq!(response.status, 101, "{response:?}");
        let mut ws = RawWs { stream, buf };
        let hello = ws.read_frame().await.expect("hello");
        assert_eq!(hello.opcode, 0x1, "hello is a text frame");
        assert!(hello.payload.starts_with(br#"{"type":"hello""#));
        ws
    }

    /// Writes one frame: `first` is the first header byte (FIN, RSV1-3 and
    /// opcode), the payload masked with a fixed key when `masked`.
    pub(crate) async fn send_frame(&mut self, first: u8, payload: &[u8], masked: bool) {
        let mut frame = vec![first];
        let mask_bit = if masked { 0x80 } else { 0 };
        match payload.len() {
            n @ 0..=125 => frame.push(mask_bit | n as u8),
            n @ 126..=65_535 => {
                frame.push(mask_bit | 126);
                frame.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                frame.push(mask_bit | 127);
                frame.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        if masked {
            let key = [0x37, 0xfa, 0x21, 0x3d];
            frame.extend_from_slice(&key);
            frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
        } else {
            frame.extend_from_slice(payload);
        }
        self.stream.write_all(&frame).await.unwrap();
    }

    /// A masked close frame with `code` and no reason.
    pub(crate) async fn send_close(&mut self, code: u16) {
        self.send_frame(0x88, &code.to_be_bytes(), true).await;
    }

    /// The next frame, or `None` when the server closed the TCP connection
    /// (or reset it) first.
    pub(crate) async fn read_frame(&mut self) -> Option<RawFrame> {
        loop {
            if let Some((frame, used)) = parse_frame(&self.buf) {
                self.buf.drain(..used);
                return Some(frame);
            }
            let mut chunk = [0u8; 8192];
            let read = tokio::time::timeout(PATIENCE, self.stream.read(&mut chunk))
                .await
                .expect("a frame or the end in time");
            match read {
                Ok(0) | Err(_) => return None,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
            }
        }
    }

    /// Reads until the server's close frame, skipping data and pings, and
    /// returns its code (`None` for a close frame without one). Fails when
    /// the connection ends without a close frame, which clients see as 1006.
    pub(crate) async fn expect_close(&mut self) -> Option<u16> {
        loop {
            let frame = self
                .read_frame()
                .await
                .expect("a close frame before the connection ends (not a 1006)");
            if frame.opcode == 0x8 {
                return (frame.payload.len() >= 2)
                    .then(|| u16::from_be_bytes([frame.payload[0], frame.payload[1]]));
            }
        }
    }

    /// Whether the server then closes the TCP connection, sending nothing
    /// more.
    pub(crate) async fn expect_end(&mut self) {
        assert_eq!(self.read_frame().await, None, "nothing after the close");
    }
}

/// Parses one unmasked server frame from the start of `buf`: the frame and
/// the bytes it took, or `None` when more bytes are needed.
fn parse_frame(buf: &[u8]) -> Option<(RawFrame, usize)> {
    if buf.len() < 2 {
        return None;
    }
    assert_eq!(buf[1] & 0x80, 0, "server frames are never masked");
    let (len, at) = match buf[1] & 0x7f {
        126 => (
            u16::from_be_bytes(buf.get(2..4)?.try_into().ok()?) as usize,
            4,
        ),
        127 => (
            u64::from_be_bytes(buf.get(2..10)?.try_into().ok()?) as usize,
            10,
        ),
        n => (n as usize, 2),
    };
    let payload = buf.get(at..at + len)?.to_vec();
    Some((
        RawFrame {
            opcode: buf[0] & 0x0f,
            payload,
        },
        at + len,
    ))
}
