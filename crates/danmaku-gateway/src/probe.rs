//! `danmaku-gateway healthcheck`: asks a running gateway's `/healthz`
//! whether it is alive, for container `HEALTHCHECK`s. It lives in the binary
//! itself so that a minimal runtime image needs no `curl` or `wget`.
//!
//! The probe is plain blocking `std` I/O with one deadline: it runs once per
//! check in a fresh process, so a runtime would only cost start-up time.

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use crate::config::Settings;

/// Why a health probe failed.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    /// No connection, or it broke, or the deadline passed.
    #[error("{addr}: {source}")]
    Io {
        /// The address probed.
        addr: SocketAddr,
        /// What went wrong.
        source: std::io::Error,
    },
    /// The gateway answered, but not with 200.
    #[error("{addr}: /healthz answered {status_line:?}")]
    Unhealthy {
        /// The address probed.
        addr: SocketAddr,
        /// The first line of the answer.
        status_line: String,
    },
}

/// The address a probe on the same host reaches the gateway at: `listen`,
/// with a wildcard address replaced by loopback of the same family.
pub fn local_address(settings: &Settings) -> SocketAddr {
    let mut addr = settings.listen;
    if addr.ip().is_unspecified() {
        addr.set_ip(match addr.ip() {
            IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::LOCALHOST),
        });
    }
    addr
}

/// Asks `/healthz` over plain HTTP within `timeout`. With TLS configured
/// (`tls_cert_file`) a probe that shares no trust with the certificate
/// could only check the handshake, so it checks that the listener accepts.
pub fn probe(settings: &Settings, timeout: Duration) -> Result<(), ProbeError> {
    let addr = local_address(settings);
    let io = |source| ProbeError::Io { addr, source };
    let deadline = Instant::now() + timeout;
    let mut stream = TcpStream::connect_timeout(&addr, timeout).map_err(io)?;
    if !settings.tls_cert_file.is_empty() {
        return Ok(());
    }
    let left = |now: Instant| {
        deadline
            .saturating_duration_since(now)
            .max(Duration::from_millis(1))
    };
    stream
        .set_write_timeout(Some(left(Instant::now())))
        .map_err(io)?;
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .map_err(io)?;
    let mut answer = Vec::with_capacity(256);
    let mut buf = [0u8; 256];
    // The status line is all that matters; stop reading once it is in.
    while !answer.contains(&b'\n') {
        stream
            .set_read_timeout(Some(left(Instant::now())))
            .map_err(io)?;
        match stream.read(&mut buf).map_err(io)? {
            0 => break,
            n => answer.extend_from_slice(&buf[..n]),
        }
        if answer.len() > 4096 {
            break;
        }
    }
    let status_line = String::from_utf8_lossy(&answer)
        .lines()
        .next()
        .unwrap_or("")
        .trim()
        .to_owned();
    let ok = status_line
        .split_whitespace()
        .nth(1)
        .is_some_and(|code| code == "200");
    if ok {
        Ok(())
    } else {
        Err(ProbeError::Unhealthy { addr, status_line })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_wildcard_listen_address_is_probed_on_loopback() {
        let mut s = Settings {
            listen: "0.0.0.0:8080".parse().unwrap(),
            ..Settings::default()
        };
        assert_eq!(local_address(&s), "127.0.0.1:8080".parse().unwrap());
        s.listen = "[::]:9000".parse().unwrap();
        assert_eq!(local_address(&s), "[::1]:9000".parse().unwrap());
        s.listen = "10.1.2.3:80".parse().unwrap();
        assert_eq!(local_address(&s), "10.1.2.3:80".parse().unwrap());
    }

    #[test]
    fn a_closed_port_is_unhealthy() {
        let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let s = Settings {
            listen: free.local_addr().unwrap(),
            ..Settings::default()
        };
        drop(free);
        let err = probe(&s, Duration::from_secs(2)).unwrap_err();
        assert!(matches!(err, ProbeError::Io { .. }), "{err}");
    }

    #[test]
    fn a_non_200_answer_is_unhealthy() {
        let server = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let s = Settings {
            listen: server.local_addr().unwrap(),
            ..Settings::default()
        };
        let t = std::thread::spawn(move || {
            let (mut c, _) = server.accept().unwrap();
            let mut buf = [0u8; 512];
            let _ = c.read(&mut buf).unwrap();
            c.write_all(b"HTTP/1.1 503 Service Unavailable\r\n\r\n")
                .unwrap();
        });
        let err = probe(&s, Duration::from_secs(2)).unwrap_err();
        t.join().unwrap();
        assert!(
            matches!(&err, ProbeError::Unhealthy { status_line, .. } if status_line.contains("503")),
            "{err}"
        );
    }
}
