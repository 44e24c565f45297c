//! Who a connection really comes from. Behind a load balancer every TCP
//! peer is the balancer, so the client address is taken from what the
//! balancer says: a PROXY protocol header (v1 text or v2 binary, HAProxy's
//! `send-proxy`/`send-proxy-v2`) at the start of the stream, or the
//! `X-Forwarded-For` header of each request. Either is believed only from a
//! peer in `trusted_proxies`; from anyone else a PROXY header closes the
//! connection and `X-Forwarded-For` is ignored.
//!
//! The parsers here are small and pure, so they are tested on bytes alone.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

use axum::http::HeaderMap;
use serde::{Deserialize, Serialize};

/// The address a request is attributed to: the real client's, as far as
/// trusted proxies tell, else the socket's. A typed request extension, so
/// the per-address cap, logs and later rate limits all key on the same one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ClientAddr(pub(crate) IpAddr);

/// A network in CIDR notation (`10.0.0.0/8`, `2001:db8::/32`); a bare
/// address is a network of one. Host bits past the prefix are ignored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

impl Cidr {
    /// Whether `ip` is in this network. An IPv4 address mapped into IPv6
    /// (`::ffff:a.b.c.d`, as a dual-stack socket shows IPv4 peers) matches
    /// IPv4 networks.
    pub(crate) fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip.to_canonical()) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

impl FromStr for Cidr {
    type Err = String;

    fn from_str(s: &str) -> Result<Cidr, String> {
        let s = s.trim();
        let (addr, prefix) = match s.split_once('/') {
            Some((addr, prefix)) => (addr, Some(prefix)),
            None => (s, None),
        };
        let addr: IpAddr = addr.parse().map_err(|_| {
            format!("`{s}` is not an IP network (like 10.0.0.0/8 or 2001:db8::/32)")
        })?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            // Digits only: `u8::from_str` would also take a leading `+`.
            Some(p) => p
                .bytes()
                .all(|b| b.is_ascii_digit())
                .then(|| p.parse::<u8>().ok())
                .flatten()
                .filter(|p| *p <= max)
                .ok_or_else(|| format!("`{s}`: the prefix length must be 0-{max}"))?,
        };
        Ok(Cidr { addr, prefix })
    }
}

impl TryFrom<String> for Cidr {
    type Error = String;

    fn try_from(s: String) -> Result<Cidr, String> {
        s.parse()
    }
}

impl From<Cidr> for String {
    fn from(c: Cidr) -> String {
        c.to_string()
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// The networks whose word on client addresses is believed.
#[derive(Debug, Clone, Default)]
pub(crate) struct TrustedProxies(Vec<Cidr>);

impl TrustedProxies {
    /// Trusts `networks`; none means every peer is a client.
    pub(crate) fn new(networks: Vec<Cidr>) -> TrustedProxies {
        TrustedProxies(networks)
    }

    /// Whether `ip` is a trusted proxy.
    pub(crate) fn contains(&self, ip: IpAddr) -> bool {
        self.0.iter().any(|net| net.contains(ip))
    }

    /// The client behind `peer`, a trusted proxy, from the request's
    /// `X-Forwarded-For`: its rightmost address that is not itself a
    /// trusted proxy. Each proxy appends the address it got the request
    /// from, so everything left of that one was written by the client and
    /// proves nothing. An entry that is not an address stops the walk at
    /// the last good hop; no header at all means the peer itself.
    pub(crate) fn forwarded_client(&self, headers: &HeaderMap, peer: IpAddr) -> IpAddr {
        let mut hops: Vec<&str> = Vec::new();
        for value in headers.get_all("x-forwarded-for") {
            let Ok(value) = value.to_str() else {
                // Unreadable: nothing past it to the left can be believed.
                hops.clear();
                continue;
            };
            hops.extend(value.split(','));
        }
        let mut client = peer;
        for hop in hops.iter().rev() {
            let Ok(ip) = hop.trim().parse::<IpAddr>() else {
                break;
            };
            client = ip.to_canonical();
            if !self.contains(client) {
                break;
            }
        }
        client
    }
}

/// The 12 bytes that open a PROXY protocol v2 header.
const V2_SIGNATURE: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";
/// What opens a PROXY protocol v1 header.
const V1_PREFIX: &[u8; 6] = b"PROXY ";
/// Longest v1 line, CRLF included, as the specification bounds it.
const V1_MAX: usize = 107;
/// Most bytes of addresses and TLVs after a v2 header's fixed 16: far more
/// than balancers send, and it bounds what one connection makes us buffer.
const V2_MAX_BODY: usize = 2048;
/// Most bytes a PROXY header may take, so a reader knows when to stop.
pub(crate) const PROXY_MAX: usize = 16 + V2_MAX_BODY;

/// What the start of a stream says about a PROXY header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Preface {
    /// Not a PROXY header: the bytes belong to HTTP.
    NotProxy,
    /// Could still be one: read more.
    Incomplete,
    /// A whole header of `len` bytes, naming the client, or `None` when the
    /// proxy speaks for itself (health checks: v1 `UNKNOWN`, v2 `LOCAL`, or
    /// a non-IP family).
    Proxy {
        /// Bytes the header takes; what follows is HTTP.
        len: usize,
        /// The original source address.
        source: Option<IpAddr>,
    },
    /// A PROXY header that is not well formed.
    Bad(&'static str),
}

/// Reads a PROXY protocol header (v1 or v2) at the start of `buf`.
pub(crate) fn parse_preface(buf: &[u8]) -> Preface {
    let starts = |sig: &[u8]| {
        let n = buf.len().min(sig.len());
        buf[..n] == sig[..n]
    };
    if buf.is_empty() {
        return Preface::Incomplete;
    }
    if starts(V1_PREFIX) {
        if buf.len() < V1_PREFIX.len() {
            return Preface::Incomplete;
        }
        return parse_v1(buf);
    }
    if starts(V2_SIGNATURE) {
        if buf.len() < V2_SIGNATURE.len() {
            return Preface::Incomplete;
        }
        return parse_v2(buf);
    }
    Preface::NotProxy
}

fn parse_v1(buf: &[u8]) -> Preface {
    let window = &buf[..buf.len().min(V1_MAX)];
    let Some(end) = window.windows(2).position(|w| w == b"\r\n") else {
        return if buf.len() >= V1_MAX {
            Preface::Bad("PROXY v1 line longer than 107 bytes")
        } else {
            Preface::Incomplete
        };
    };
    let Ok(line) = std::str::from_utf8(&buf[..end]) else {
        return Preface::Bad("PROXY v1 line is not text");
    };
    let parts: Vec<&str> = line.split(' ').collect();
    let source = match parts.as_slice() {
        ["PROXY", "UNKNOWN", ..] => None,
        ["PROXY", proto @ ("TCP4" | "TCP6"), src, dst, sport, dport] => {
            let v4 = *proto == "TCP4";
            let addr = |s: &str| -> Option<IpAddr> {
                if v4 {
                    s.parse::<Ipv4Addr>().ok().map(IpAddr::V4)
                } else {
                    s.parse::<Ipv6Addr>().ok().map(IpAddr::V6)
                }
            };
            let port = |s: &str| {
                !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) && s.parse::<u16>().is_ok()
            };
            match (addr(src), addr(dst)) {
                (Some(src), Some(_)) if port(sport) && port(dport) => Some(src),
                _ => return Preface::Bad("PROXY v1 addresses or ports are malformed"),
            }
        }
        _ => return Preface::Bad("PROXY v1 line is malformed"),
    };
    Preface::Proxy {
        len: end + 2,
        source,
    }
}

fn parse_v2(buf: &[u8]) -> Preface {
    let Some(fixed) = buf.get(..16) else {
        return Preface::Incomplete;
    };
    let (ver_cmd, family) = (fixed[12], fixed[13]);
    let body_len = usize::from(u16::from_be_bytes([fixed[14], fixed[15]]));
    if ver_cmd >> 4 != 2 {
        return Preface::Bad("PROXY v2 version is not 2");
    }
    let local = match ver_cmd & 0x0f {
        0 => true,
        1 => false,
        _ => return Preface::Bad("PROXY v2 command is neither LOCAL nor PROXY"),
    };
    if body_len > V2_MAX_BODY {
        return Preface::Bad("PROXY v2 header too long");
    }
    let Some(body) = buf.get(16..16 + body_len) else {
        return Preface::Incomplete;
    };
    if family & 0x0f > 2 {
        return Preface::Bad("PROXY v2 transport is unknown");
    }
    let source = match family >> 4 {
        // UNSPEC and UNIX name no IP client.
        0 | 3 => None,
        1 => match body.get(..12) {
            Some(a) => Some(IpAddr::V4(Ipv4Addr::new(a[0], a[1], a[2], a[3]))),
            None => return Preface::Bad("PROXY v2 IPv4 address block too short"),
        },
        2 => match body.get(..36) {
            Some(a) => {
                let mut src = [0u8; 16];
                src.copy_from_slice(&a[..16]);
                Some(IpAddr::V6(Ipv6Addr::from(src)))
            }
            None => return Preface::Bad("PROXY v2 IPv6 address block too short"),
        },
        _ => return Preface::Bad("PROXY v2 address family is unknown"),
    };
    Preface::Proxy {
        len: 16 + body_len,
        source: if local { None } else { source },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;
    use proptest::prelude::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn net(s: &str) -> Cidr {
        s.parse().unwrap()
    }

    #[test]
    fn cidrs_parse_and_match_both_families() {
        assert!(net("10.0.0.0/8").contains(ip("10.255.1.2")));
        assert!(!net("10.0.0.0/8").contains(ip("11.0.0.1")));
        assert!(net("10.0.0.0/8").contains(ip("::ffff:10.1.2.3")), "mapped");
        assert!(net("2001:db8::/32").contains(ip("2001:db8:ffff::1")));
        assert!(!net("2001:db8::/32").contains(ip("2001:db9::1")));
        assert!(!net("2001:db8::/32").contains(ip("10.0.0.1")));
        assert!(net("0.0.0.0/0").contains(ip("192.0.2.1")));
        assert!(net("::/0").contains(ip("::1")));
        assert!(net("192.0.2.7").contains(ip("192.0.2.7")));
        assert!(!net("192.0.2.7").contains(ip("192.0.2.8")));
        assert_eq!(net("10.1.2.3/8").to_string(), "10.1.2.3/8");
        for bad in [
            "",
            "10.0.0.0/33",
            "::/129",
            "10.0.0/8",
            "10.0.0.0/+8",
            "x/1",
            "10.0.0.0/",
        ] {
            assert!(bad.parse::<Cidr>().is_err(), "{bad:?}");
        }
    }

    fn forwarded(trusted: &[&str], values: &[&str], peer: &str) -> IpAddr {
        let trusted = TrustedProxies::new(trusted.iter().map(|s| net(s)).collect());
        let mut headers = HeaderMap::new();
        for v in values {
            headers.append("x-forwarded-for", HeaderValue::from_str(v).unwrap());
        }
        trusted.forwarded_client(&headers, ip(peer))
    }

    #[test]
    fn forwarded_for_takes_the_rightmost_untrusted_hop() {
        let lb = ["10.0.0.0/8"];
        assert_eq!(forwarded(&lb, &[], "10.0.0.1"), ip("10.0.0.1"));
        assert_eq!(
            forwarded(&lb, &["203.0.113.7"], "10.0.0.1"),
            ip("203.0.113.7")
        );
        assert_eq!(
            forwarded(&lb, &["1.1.1.1, 203.0.113.7, 10.0.0.5"], "10.0.0.1"),
            ip("203.0.113.7"),
            "the spoofed leftmost entry is not believed"
        );
        assert_eq!(
            forwarded(&lb, &["1.1.1.1", "203.0.113.7"], "10.0.0.1"),
            ip("203.0.113.7"),
            "several headers are one list"
        );
        assert_eq!(
            forwarded(&lb, &["10.0.0.9, 10.0.0.8"], "10.0.0.1"),
            ip("10.0.0.9"),
            "all trusted: the farthest"
        );
        assert_eq!(
            forwarded(&lb, &["203.0.113.7, garbage"], "10.0.0.1"),
            ip("10.0.0.1"),
            "garbage stops the walk"
        );
        assert_eq!(
            forwarded(&lb, &["2001:db8::1"], "10.0.0.1"),
            ip("2001:db8::1")
        );
    }

    #[test]
    fn v1_headers() {
        let h = b"PROXY TCP4 203.0.113.7 10.0.0.1 5555 80\r\nGET / HTTP/1.1\r\n";
        assert_eq!(
            parse_preface(h),
            Preface::Proxy {
                len: 41,
                source: Some(ip("203.0.113.7"))
            }
        );
        assert_eq!(
            parse_preface(b"PROXY TCP6 2001:db8::1 ::1 1 2\r\n"),
            Preface::Proxy {
                len: 32,
                source: Some(ip("2001:db8::1"))
            }
        );
        assert_eq!(
            parse_preface(b"PROXY UNKNOWN\r\n"),
            Preface::Proxy {
                len: 15,
                source: None
            }
        );
        for partial in [&b"P"[..], b"PROX", b"PROXY TCP4 1.2.3.4"] {
            assert_eq!(parse_preface(partial), Preface::Incomplete, "{partial:?}");
        }
        for bad in [
            &b"PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n"[..],
            b"PROXY TCP4 2001:db8::1 ::1 1 2\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 1 70000\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 +1 2\r\n",
            b"PROXY UDP4 1.2.3.4 5.6.7.8 1 2\r\n",
            b"PROXY  TCP4 1.2.3.4 5.6.7.8 1 2\r\n",
        ] {
            assert!(matches!(parse_preface(bad), Preface::Bad(_)), "{bad:?}");
        }
        assert!(matches!(parse_preface(&[b'P'; 200][..]), Preface::NotProxy));
        let mut long = b"PROXY ".to_vec();
        long.resize(200, b'x');
        assert!(matches!(parse_preface(&long), Preface::Bad(_)));
    }

    fn v2(cmd: u8, family: u8, body: &[u8]) -> Vec<u8> {
        let mut h = V2_SIGNATURE.to_vec();
        h.push(0x20 | cmd);
        h.push(family);
        h.extend_from_slice(&(body.len() as u16).to_be_bytes());
        h.extend_from_slice(body);
        h
    }

    #[test]
    fn v2_headers() {
        let v4 = [203, 0, 113, 8, 10, 0, 0, 1, 0x15, 0xb3, 0, 80];
        let h = v2(1, 0x11, &v4);
        assert_eq!(
            parse_preface(&h),
            Preface::Proxy {
                len: 28,
                source: Some(ip("203.0.113.8"))
            }
        );
        for n in 0..h.len() {
            assert_eq!(parse_preface(&h[..n]), Preface::Incomplete, "{n}");
        }
        let mut v6 = "2001:db8::7".parse::<Ipv6Addr>().unwrap().octets().to_vec();
        v6.extend_from_slice(&[0; 20]);
        v6.extend_from_slice(b"\x01\x00\x02ab"); // a TLV after the addresses
        assert_eq!(
            parse_preface(&v2(1, 0x21, &v6)),
            Preface::Proxy {
                len: 16 + v6.len(),
                source: Some(ip("2001:db8::7"))
            }
        );
        assert_eq!(
            parse_preface(&v2(0, 0x11, &v4)),
            Preface::Proxy {
                len: 28,
                source: None
            },
            "LOCAL speaks for the proxy"
        );
        assert_eq!(
            parse_preface(&v2(1, 0x00, &[])),
            Preface::Proxy {
                len: 16,
                source: None
            }
        );
        for bad in [
            v2(2, 0x11, &v4),
            v2(1, 0x11, &v4[..8]),
            v2(1, 0x21, &v4),
            v2(1, 0x41, &v4),
            v2(1, 0x13, &v4),
            v2(1, 0x11, &[0; V2_MAX_BODY + 1]),
        ] {
            assert!(matches!(parse_preface(&bad), Preface::Bad(_)), "{bad:?}");
        }
        let mut wrong_version = v2(1, 0x11, &v4);
        wrong_version[12] = 0x11;
        assert!(matches!(parse_preface(&wrong_version), Preface::Bad(_)));
    }

    #[test]
    fn http_is_not_proxy() {
        for start in [
            &b"GET / HTTP/1.1\r\n"[..],
            b"POST",
            b"\r\nGET",
            b"\r\n\r\nX",
        ] {
            assert_eq!(parse_preface(start), Preface::NotProxy, "{start:?}");
        }
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = parse_preface(&bytes);
            let mut v2 = V2_SIGNATURE.to_vec();
            v2.extend_from_slice(&bytes);
            if let Preface::Proxy { len, .. } = parse_preface(&v2) {
                prop_assert!(len <= v2.len());
            }
            let mut v1 = V1_PREFIX.to_vec();
            v1.extend_from_slice(&bytes);
            if let Preface::Proxy { len, .. } = parse_preface(&v1) {
                prop_assert!(len <= v1.len());
            }
        }
    }
}
