//! videoroom's server. A request's way through it:
//! - [`http`]: the client's pages and assets, `/health`, `/stats`, and the socket upgrade;
//! - [`socket`]: one task per WebSocket, Phoenix framing, media events in and out;
//! - [`registry`] → [`room`]: one task per room owns its peers, tracks and negotiations;
//! - [`endpoint`]: one per peer, its WebRTC peer connection; incoming RTP goes straight to the
//!   subscribers' down-tracks in [`forward`], never through the room; [`webrtc_setup`] holds
//!   the codecs and interceptors every peer connection uses.

mod config;
mod endpoint;
mod forward;
mod http;
mod registry;
mod room;
mod sdp;
mod socket;
pub mod webrtc_setup;

use std::future::Future;
use std::sync::Arc;

use anyhow::Context;
pub use config::Config;
pub use registry::Counts;
use tokio::net::TcpListener;

use crate::endpoint::RtcSettings;
use crate::registry::Registry;
use crate::room::RoomSettings;

/// Serves HTTP and the signaling socket on `listener` until `shutdown` completes.
pub async fn serve(
    listener: TcpListener,
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let address = listener.local_addr().context("listener has no address")?;
    let rooms = Registry::new(RoomSettings {
        max_peers: config.max_peers_per_room,
        rtc: Arc::new(RtcSettings::from_config(&config)),
    });
    let app = http::router(&config, rooms);
    tracing::info!("videoroom listening on http://{address}");
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
        .context("server failed")
}
