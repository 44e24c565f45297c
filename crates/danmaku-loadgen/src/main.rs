//! The `danmaku-loadgen` command: parses its options into
//! [`danmaku_loadgen::Settings`] and runs [`danmaku_loadgen::run`]. Exit
//! status 0 when the run held, 2 when no connection came up or too many
//! failed, 1 (with the error on stderr) when it could not be carried out.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, ValueEnum};
use danmaku_loadgen::{Outcome, Settings};
use danmaku_proto::Format;

/// Wire encoding to ask for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum FormatArg {
    /// `danmaku.v1.json`, text frames.
    Json,
    /// `danmaku.v1.msgpack`, binary frames.
    Msgpack,
}

impl FormatArg {
    fn format(self) -> Format {
        match self {
            FormatArg::Json => Format::Json,
            FormatArg::Msgpack => Format::MsgPack,
        }
    }
}

/// Load generator for danmaku gateways: viewers, posters, and what arrives.
#[derive(Debug, Clone, Parser)]
#[command(version, args_override_self = true)]
struct Args {
    /// Gateway address HOST:PORT; repeat to spread connections round-robin.
    #[arg(long = "gateway", default_value = "127.0.0.1:8080")]
    gateways: Vec<String>,
    /// Viewer connections in total, posters included.
    #[arg(long, default_value_t = 1000)]
    viewers: usize,
    /// Rooms; viewers are spread evenly over them.
    #[arg(long, default_value_t = 1)]
    rooms: usize,
    /// Viewers of each room that also post.
    #[arg(long, default_value_t = 2)]
    posters_per_room: usize,
    /// Posts per second per room, shared by its posters; 0 keeps everyone idle.
    #[arg(long, default_value_t = 10.0)]
    rate: f64,
    /// Seconds of posting (or of idling, with --rate 0).
    #[arg(long, default_value_t = 30.0)]
    duration: f64,
    /// Seconds between the last connection coming up and the first post.
    #[arg(long, default_value_t = 2.0)]
    warmup: f64,
    /// Seconds to wait for late deliveries after posting stops.
    #[arg(long, default_value_t = 3.0)]
    drain: f64,
    /// Encoding to ask for.
    #[arg(long, value_enum, default_value_t = FormatArg::Json)]
    format: FormatArg,
    /// Local addresses to connect from (127.0.0.1, 127.0.0.2, ...); default:
    /// 127.0.0.1 up to 20,000 connections per gateway, then the next one.
    #[arg(long)]
    source_ips: Option<u32>,
    /// New connections per second while ramping up; 0 for no limit.
    #[arg(long, default_value_t = 2000.0)]
    connect_rate: f64,
    /// Seconds one connection may take to get its hello.
    #[arg(long, default_value_t = 15.0)]
    connect_timeout: f64,
    /// Gateway process id, for RSS and CPU; repeat for several gateways.
    #[arg(long = "gateway-pid")]
    gateway_pids: Vec<u32>,
    /// Write the final report as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Room ids are PREFIX-0 .. PREFIX-(rooms-1).
    #[arg(long, default_value = "lg")]
    room_prefix: String,
    /// Runtime worker threads; default: one per core.
    #[arg(long)]
    threads: Option<usize>,
    /// Exit with status 2 when more than this fraction of connections fail.
    #[arg(long, default_value_t = 0.01)]
    max_failed_ratio: f64,
    /// KEY=VALUE noted in the JSON report (settings, versions); repeatable.
    #[arg(long = "meta")]
    meta: Vec<String>,
    /// Densities (comments/s, 0 = unlimited) the viewers who do not post
    /// ask for in turn, e.g. 15,30,60,120,0; posters ask for 0.
    #[arg(long, value_delimiter = ',')]
    density: Vec<u32>,
    /// Viewers per density (in the first room) that record every comment,
    /// for the nesting and consistency checks.
    #[arg(long, default_value_t = 2)]
    record_per_density: usize,
    /// Offer permessage-deflate, as browsers do.
    #[arg(long)]
    deflate: bool,
    /// Follow a 1001 (gateway going away) to the next address, after the
    /// delay its close reason asks for, and report how viewers came back.
    #[arg(long)]
    reconnect: bool,
    /// HOST:PORT only reconnecting viewers go to; repeatable.
    #[arg(long)]
    standby: Vec<String>,
}

impl Args {
    /// The run's settings; `command` is the command line, for the report.
    fn into_settings(self, command: Vec<String>) -> Settings {
        Settings {
            gateways: self.gateways,
            viewers: self.viewers,
            rooms: self.rooms,
            posters_per_room: self.posters_per_room,
            rate: self.rate,
            duration: self.duration,
            warmup: self.warmup,
            drain: self.drain,
            format: self.format.format(),
            source_ips: self.source_ips,
            connect_rate: self.connect_rate,
            connect_timeout: self.connect_timeout,
            gateway_pids: self.gateway_pids,
            json: self.json,
            room_prefix: self.room_prefix,
            threads: self.threads,
            max_failed_ratio: self.max_failed_ratio,
            meta: self.meta,
            command,
            density: self.density,
            record_per_density: self.record_per_density,
            deflate: self.deflate,
            reconnect: self.reconnect,
            standby: self.standby,
        }
    }
}

fn main() -> anyhow::Result<ExitCode> {
    let settings = Args::parse().into_settings(std::env::args().collect());
    Ok(match danmaku_loadgen::run(settings)? {
        Outcome::Passed => ExitCode::SUCCESS,
        Outcome::NoConnection | Outcome::TooManyFailed => ExitCode::from(2),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arguments_are_checked() {
        let parse = |extra: &[&str]| {
            let mut argv = vec!["danmaku-loadgen"];
            argv.extend_from_slice(extra);
            Args::try_parse_from(argv)
                .map_err(|e| e.to_string())
                .and_then(|a| {
                    let s = a.into_settings(Vec::new());
                    s.validate().map(|()| s).map_err(|e| e.to_string())
                })
        };
        let a = parse(&[
            "--gateway",
            "a:1",
            "--gateway",
            "b:2",
            "--format",
            "msgpack",
        ])
        .unwrap();
        assert_eq!(a.gateways, ["a:1", "b:2"]);
        assert_eq!(a.format, Format::MsgPack);
        assert_eq!(parse(&[]).unwrap().gateways, ["127.0.0.1:8080"]);
        assert!(parse(&["--rooms", "5", "--viewers", "4"]).is_err());
        assert!(parse(&["--rate", "-1"]).is_err());
        assert!(parse(&["--meta", "novalue"]).is_err());
        assert!(parse(&["--source-ips", "0"]).is_err());
    }
}
