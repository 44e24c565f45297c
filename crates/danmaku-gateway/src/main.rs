//! The gateway binary: parse config, set up tracing, bind, and run until
//! SIGINT or SIGTERM.

use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use danmaku_gateway::Settings;
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
    #[arg(long)]
    config: Option<PathBuf>,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let settings = Settings::load(args.config.as_deref(), std::env::vars())
        .context("invalid configuration")?;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
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
