//! The gateway binary: parse config, set up tracing, bind, and run until
//! SIGINT or SIGTERM; or, with the `token` subcommand, print a signed token
//! for the configured secrets and exit; or, with `healthcheck`, probe a
//! running gateway's `/healthz` and exit 0 or 1.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use danmaku_gateway::Settings;
use danmaku_proto::Role;
use tracing_subscriber::EnvFilter;

/// mimalloc, when built with `--features mimalloc` (BENCHMARKS.md, scenario k).
#[cfg(feature = "mimalloc")]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// jemalloc, the default (feature `jemalloc`, unless mimalloc is chosen):
/// with background threads and a short decay (`.cargo/config.toml`) it gives
/// back what a crowd of viewers used once they leave. `_RJEM_MALLOC_CONF`
/// overrides its settings at run time.
#[cfg(all(feature = "jemalloc", not(feature = "mimalloc")))]
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// danmaku gateway: live bullet comments over WebSocket.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// TOML config file; `config/default.toml` is read when present and this is absent.
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

/// What to do instead of serving.
#[derive(Debug, Subcommand)]
enum Command {
    /// Print a token signed with the first `auth_secret` (config loaded as
    /// for serving), for operators and tests.
    Token {
        /// The user id (`sub`).
        #[arg(long)]
        sub: String,
        /// The display name, checked like a nickname.
        #[arg(long)]
        name: String,
        /// `viewer`, `moderator` or `admin`.
        #[arg(long, value_parser = parse_role)]
        role: Role,
        /// Seconds until it expires.
        #[arg(long)]
        ttl: u64,
        /// Comma-separated rooms a moderator may act in; all when absent.
        #[arg(long, value_delimiter = ',')]
        rooms: Option<Vec<String>>,
    },
    /// Exit 0 if the gateway this config describes answers `/healthz` with
    /// 200 (container health checks; needs no curl in the image).
    Healthcheck {
        /// Give up after this many seconds.
        #[arg(long, default_value_t = 3)]
        timeout: u64,
    },
}

fn parse_role(s: &str) -> Result<Role, String> {
    Role::parse(s).ok_or_else(|| "must be viewer, moderator or admin".to_owned())
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let settings = Settings::load(args.config.as_deref(), std::env::vars())
        .context("invalid configuration")?;
    match args.command {
        Some(Command::Token {
            sub,
            name,
            role,
            ttl,
            rooms,
        }) => {
            let token = danmaku_gateway::auth::issue(&settings, &sub, &name, role, ttl, rooms)?;
            println!("{token}");
            return Ok(());
        }
        Some(Command::Healthcheck { timeout }) => {
            danmaku_gateway::probe::probe(&settings, std::time::Duration::from_secs(timeout))?;
            return Ok(());
        }
        None => {}
    }
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info"))
        // tungstenite traces every frame it reads, `auth` tokens included:
        // credentials must not reach the logs, whatever RUST_LOG asks.
        .add_directive(
            "tungstenite::protocol=debug"
                .parse()
                .context("the log filter")?,
        );
    if settings.log_format == "json" {
        tracing_subscriber::fmt()
            .json()
            .with_env_filter(filter)
            .init();
    } else {
        tracing_subscriber::fmt().with_env_filter(filter).init();
    }
    let runtime = tokio::runtime::Runtime::new().context("starting the runtime")?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(settings.listen)
            .await
            .with_context(|| format!("binding {}", settings.listen))?;
        danmaku_gateway::run(listener, settings, shutdown_signal()).await?;
        Ok(())
    })
}

/// Completes on SIGINT or SIGTERM.
async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("installing the SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
