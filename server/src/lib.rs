//! videoroom's server: serves the web client and (next) the Phoenix socket and the SFU.

mod config;
mod http;

use std::future::Future;

use anyhow::Context;
pub use config::Config;
use tokio::net::TcpListener;

/// Serves HTTP on `listener` until `shutdown` completes.
pub async fn serve(
    listener: TcpListener,
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let address = listener.local_addr().context("listener has no address")?;
    let app = http::router(&config);
    tracing::info!("videoroom listening on http://{address}");
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
        .context("server failed")
}
