//! The `videoroom` binary: reads the configuration, sets up logging, serves until Ctrl-C.

use anyhow::Context;
use clap::Parser;
use server::Config;
use tracing_subscriber::EnvFilter;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = Config::parse();
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_new(&config.log).context("invalid --log filter")?)
        .init();
    let listener = tokio::net::TcpListener::bind((config.host.as_str(), config.port))
        .await
        .with_context(|| format!("cannot listen on {}:{}", config.host, config.port))?;
    server::serve(listener, config, shutdown_signal()).await
}

async fn shutdown_signal() {
    if let Err(err) = tokio::signal::ctrl_c().await {
        tracing::error!(%err, "cannot listen for Ctrl-C; serving until killed");
        std::future::pending::<()>().await;
    }
    tracing::info!("shutting down");
}
