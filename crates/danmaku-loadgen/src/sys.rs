//! Looking at processes from outside: resident memory and CPU time from
//! `/proc`, and a gateway's `/api/stats` over plain HTTP.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::Error;

/// Clock ticks per second of `/proc/PID/stat` times (USER_HZ, 100 on Linux).
const TICKS_PER_SECOND: f64 = 100.0;

/// VmRSS of a process in KiB, from the text of `/proc/PID/status`.
pub(crate) fn parse_vm_rss_kib(status: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
}

/// VmRSS of process `pid` in KiB.
pub(crate) fn vm_rss_kib(pid: u32) -> Result<u64, Error> {
    let path = format!("/proc/{pid}/status");
    let status = match std::fs::read_to_string(&path) {
        Ok(status) => status,
        Err(source) => return Err(Error::ReadProc { path, source }),
    };
    parse_vm_rss_kib(&status).ok_or(Error::NoVmRss { path })
}

/// User plus system CPU seconds, from the text of `/proc/PID/stat`.
pub(crate) fn parse_cpu_seconds(stat: &str) -> Option<f64> {
    // The command name may hold spaces and parentheses; fields resume
    // after the last ')'. Then: state(3) ... utime(14) stime(15).
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) as f64 / TICKS_PER_SECOND)
}

/// CPU seconds used so far by process `pid` (`None`: this process).
pub(crate) fn cpu_seconds(pid: Option<u32>) -> Option<f64> {
    let path = match pid {
        Some(pid) => format!("/proc/{pid}/stat"),
        None => "/proc/self/stat".to_owned(),
    };
    parse_cpu_seconds(&std::fs::read_to_string(path).ok()?)
}

/// Busy CPU seconds of the whole machine (all cores, everything but idle
/// and I/O wait), from the text of `/proc/stat`.
pub(crate) fn parse_machine_busy_seconds(stat: &str) -> Option<f64> {
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    let ticks: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(|f| f.parse().ok())
        .collect::<Option<_>>()?;
    // user nice system idle iowait irq softirq steal [guest guest_nice]:
    // guest time is already part of user time.
    let total: u64 = ticks.iter().take(8).sum();
    let idle = ticks.get(3)? + ticks.get(4).copied().unwrap_or(0);
    Some((total - idle) as f64 / TICKS_PER_SECOND)
}

/// Busy CPU seconds of the whole machine so far.
pub(crate) fn machine_busy_seconds() -> Option<f64> {
    parse_machine_busy_seconds(&std::fs::read_to_string("/proc/stat").ok()?)
}

/// `GET /api/stats` of a gateway, as JSON; `Null` if it cannot be had.
pub(crate) async fn gateway_stats(addr: SocketAddr, host: &str) -> serde_json::Value {
    let fetch = async {
        let mut tcp = tokio::net::TcpStream::connect(addr).await?;
        let request =
            format!("GET /api/stats HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
        tcp.write_all(request.as_bytes()).await?;
        let mut response = Vec::new();
        tcp.read_to_end(&mut response).await?;
        std::io::Result::Ok(response)
    };
    match tokio::time::timeout(Duration::from_secs(5), fetch).await {
        Ok(Ok(response)) => parse_http_json(&response).unwrap_or(serde_json::Value::Null),
        _ => serde_json::Value::Null,
    }
}

/// The JSON body of a `200` HTTP/1.1 response with a fixed-length body.
fn parse_http_json(response: &[u8]) -> Option<serde_json::Value> {
    let split = memchr::memmem::find(response, b"\r\n\r\n")?;
    let head = std::str::from_utf8(&response[..split]).ok()?;
    if !head.starts_with("HTTP/1.1 200") {
        return None;
    }
    serde_json::from_slice(&response[split + 4..]).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rss_is_read_from_status() {
        let status =
            "Name:\tdanmaku-gateway\nVmPeak:\t  9000 kB\nVmRSS:\t   12345 kB\nRssAnon:\t 1 kB\n";
        assert_eq!(parse_vm_rss_kib(status), Some(12345));
        assert_eq!(parse_vm_rss_kib("Name:\tx\n"), None);
    }

    #[test]
    fn cpu_time_survives_odd_command_names() {
        let stat = "4242 (my (odd) name) S 1 2 3 4 5 6 7 8 9 10 250 50 0 0 20 0 3 0";
        assert_eq!(parse_cpu_seconds(stat), Some(3.0));
        assert_eq!(parse_cpu_seconds("garbage"), None);
    }

    #[test]
    fn machine_busy_time_leaves_out_idle_and_iowait() {
        let stat = "cpu  100 5 50 1000 20 1 4 0 7 0\ncpu0 1 2 3 4 5 6 7 8 9 10\n";
        assert_eq!(parse_machine_busy_seconds(stat), Some(1.6));
        assert_eq!(parse_machine_busy_seconds("intr 1 2"), None);
    }

    #[test]
    fn our_own_process_is_readable() {
        assert!(cpu_seconds(None).is_some());
        assert!(machine_busy_seconds().is_some());
        assert!(vm_rss_kib(std::process::id()).unwrap() > 0);
    }

    #[test]
    fn http_bodies_are_parsed_only_from_ok_responses() {
        let ok = b"HTTP/1.1 200 OK\r\ncontent-length: 8\r\n\r\n{\"a\":1}";
        assert_eq!(parse_http_json(ok), Some(serde_json::json!({"a": 1})));
        let bad = b"HTTP/1.1 503 Service Unavailable\r\n\r\n{}";
        assert_eq!(parse_http_json(bad), None);
    }
}
