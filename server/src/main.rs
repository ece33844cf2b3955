//! The `videoroom` binary: reads the configuration, sets up logging, serves until SIGINT or
//! SIGTERM, then shuts down gracefully.

use anyhow::Context;
use clap::Parser;
use std::time::SystemTime;

use server::access::JoinSecret;
use server::{Command, Config};
use shared::RoomId;
use tracing_subscriber::EnvFilter;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = Config::parse();
    if let Some(Command::Token {
        room,
        name,
        valid_for,
    }) = &config.command
    {
        let secret = config
            .join_secret
            .as_deref()
            .context("a token is signed with the server's secret: pass --join-secret (or VIDEOROOM_JOIN_SECRET)")?;
        let room = RoomId::new(room.as_str()).context("not a valid room name")?;
        println!(
            "{}",
            JoinSecret::new(secret).issue(&room, name, *valid_for, SystemTime::now())
        );
        return Ok(());
    }
    // webrtc-rs's DTLS warns about every extension of a browser's ClientHello it does not know,
    // a dozen lines per connection that say nothing is wrong: quiet unless asked for by name.
    let filter = if config.log.contains("rtc_dtls") {
        config.log.clone()
    } else {
        format!("{},rtc_dtls::handshake=error", config.log)
    };
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_new(&filter).context("invalid --log filter")?)
        .init();
    let listener = tokio::net::TcpListener::bind((config.host.as_str(), config.port))
        .await
        .with_context(|| format!("cannot listen on {}:{}", config.host, config.port))?;
    server::serve(listener, config, shutdown_signal()).await
}

/// Ctrl-C (SIGINT) or SIGTERM, as a service manager sends it.
async fn shutdown_signal() {
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(err) => {
                tracing::error!(%err, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    let interrupt = async {
        if let Err(err) = tokio::signal::ctrl_c().await {
            tracing::error!(%err, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    };
    tokio::select! {
        () = terminate => tracing::info!("SIGTERM"),
        () = interrupt => tracing::info!("SIGINT"),
    }
}
