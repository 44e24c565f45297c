//! The `Origin` allow-list of WebSocket upgrades. A browser sends the page's
//! origin with every WebSocket handshake and lets any page open one, with
//! the user's cookies: without this check a hostile site could open
//! sockets in its visitors' names (cross-site WebSocket hijacking).
//! Non-browser clients send no `Origin` and are let through.

use std::fmt;
use std::str::FromStr;

use axum::http::{header, HeaderMap};
use serde::{Deserialize, Serialize};

/// A web origin: scheme, host and port, as a browser sends it
/// (`https://example.com`, `http://localhost:8080`). The host is compared
/// case-insensitively; a port left out is the scheme's default.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Origin {
    scheme: String,
    host: String,
    port: u16,
}

impl FromStr for Origin {
    type Err = String;

    fn from_str(s: &str) -> Result<Origin, String> {
        let bad = || format!("`{s}` is not an origin like https://example.com[:port]");
        let (scheme, rest) = s.split_once("://").ok_or_else(bad)?;
        let scheme = scheme.to_ascii_lowercase();
        let default_port = match scheme.as_str() {
            "https" => 443,
            "http" => 80,
            _ => return Err(bad()),
        };
        // An IPv6 host is bracketed: its colons are not the port's.
        let (host, port) = match rest.rfind(':') {
            Some(i) if !rest[i..].contains(']') => (&rest[..i], Some(&rest[i + 1..])),
            _ => (rest, None),
        };
        let host_ok = |c: char| c.is_ascii_alphanumeric() || ".-_[]:".contains(c);
        if host.is_empty() || !host.chars().all(host_ok) {
            return Err(bad());
        }
        let port = match port {
            None => default_port,
            Some(p) if !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) => {
                p.parse().map_err(|_| bad())?
            }
            Some(_) => return Err(bad()),
        };
        Ok(Origin {
            scheme,
            host: host.to_ascii_lowercase(),
            port,
        })
    }
}

impl TryFrom<String> for Origin {
    type Error = String;

    fn try_from(s: String) -> Result<Origin, String> {
        s.parse()
    }
}

impl From<Origin> for String {
    fn from(o: Origin) -> String {
        o.to_string()
    }
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}://{}:{}", self.scheme, self.host, self.port)
    }
}

/// The origins whose pages may open WebSockets; empty allows every one.
#[derive(Debug, Clone, Default)]
pub(crate) struct AllowedOrigins(Vec<Origin>);

impl AllowedOrigins {
    /// Allows `origins`; none allows all.
    pub(crate) fn new(origins: Vec<Origin>) -> AllowedOrigins {
        AllowedOrigins(origins)
    }

    /// `Err(reason)` if the request comes from a page not on the list. No
    /// `Origin` header passes: browsers always send one with a WebSocket
    /// handshake, so its absence means a client that is not a browser.
    pub(crate) fn check(&self, headers: &HeaderMap) -> Result<(), &'static str> {
        if self.0.is_empty() {
            return Ok(());
        }
        let mut values = headers.get_all(header::ORIGIN).iter();
        let Some(value) = values.next() else {
            return Ok(());
        };
        if values.next().is_some() {
            return Err("more than one Origin header\n");
        }
        let origin = value.to_str().ok().and_then(|v| v.parse::<Origin>().ok());
        match origin {
            Some(origin) if self.0.contains(&origin) => Ok(()),
            _ => Err("this origin may not open WebSockets here\n"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn check(allowed: &[&str], origin: Option<&str>) -> bool {
        let list = AllowedOrigins::new(allowed.iter().map(|o| o.parse().unwrap()).collect());
        let mut headers = HeaderMap::new();
        if let Some(o) = origin {
            headers.insert(header::ORIGIN, HeaderValue::from_str(o).unwrap());
        }
        list.check(&headers).is_ok()
    }

    #[test]
    fn scheme_host_and_port_must_match() {
        let list = ["https://example.com", "http://localhost:8080"];
        assert!(check(&list, Some("https://example.com")));
        assert!(check(&list, Some("https://EXAMPLE.com")), "host case");
        assert!(
            check(&list, Some("https://example.com:443")),
            "default port"
        );
        assert!(check(&list, Some("http://localhost:8080")));
        assert!(check(&list, None), "not a browser");
        for no in [
            "https://evil.example",
            "http://example.com",
            "https://example.com:8443",
            "https://example.com.evil.example",
            "https://sub.example.com",
            "http://localhost",
            "null",
            "https://example.com/",
        ] {
            assert!(!check(&list, Some(no)), "{no}");
        }
        assert!(check(&[], Some("https://evil.example")), "no list: all");
    }

    #[test]
    fn origins_parse() {
        assert!("https://[::1]:8443".parse::<Origin>().is_ok());
        assert_eq!(
            "https://[::1]".parse::<Origin>().unwrap().to_string(),
            "https://[::1]:443"
        );
        for bad in [
            "example.com",
            "ftp://x",
            "https://",
            "https://a/b",
            "https://a:",
            "https://a:99999",
        ] {
            assert!(bad.parse::<Origin>().is_err(), "{bad}");
        }
    }
}
