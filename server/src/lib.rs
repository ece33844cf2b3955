//! videoroom's server. A request's way through it:
//! - [`listener`]: TCP connections, capped and with a header deadline, served by hyper;
//! - [`http`]: the client's pages and assets, `/health`, `/stats`, and the socket upgrade;
//! - [`socket`]: one task per WebSocket, Phoenix framing, media events in and out;
//! - [`registry`] → [`room`]: one task per room owns its peers, tracks and negotiations;
//! - [`endpoint`]: one per peer, its WebRTC peer connection; incoming RTP goes straight to the
//!   subscribers' down-tracks in [`forward`], never through the room; [`webrtc_setup`] holds
//!   the codecs and interceptors every peer connection uses.
//!
//! [`limits`] holds every bound a client could otherwise push, [`test_hooks`] the faults tests
//! inject, and [`harness`] drives a room without sockets (for its unit tests and the fuzzer).

pub mod codec;
mod config;
mod endpoint;
pub mod forward;
pub mod harness;
mod http;
pub mod limits;
mod listener;
mod registry;
mod rewrite;
mod room;
mod sdp;
mod socket;
pub mod test_hooks;
pub mod webrtc_setup;

use std::future::Future;
use std::sync::Arc;

use anyhow::Context;
pub use config::Config;
pub use registry::Counts;
use tokio::net::TcpListener;

use crate::endpoint::{EndpointHandle, RtcSettings};
use crate::registry::Registry;
use crate::room::RoomSettings;

/// Serves HTTP and the signaling socket on `listener` until `shutdown` completes.
pub async fn serve(
    listener: TcpListener,
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    config
        .limits
        .validate()
        .map_err(anyhow::Error::msg)
        .context("the limits do not fit together")?;
    let address = listener.local_addr().context("listener has no address")?;
    let rooms = Registry::new(RoomSettings {
        limits: Arc::new(config.limits.clone()),
        rtc: Arc::new(RtcSettings::from_config(&config)),
        test_hooks: config.test_hooks.clone(),
        start_endpoint: EndpointHandle::spawn,
    });
    let app = http::router(&config, rooms);
    tracing::info!("videoroom listening on http://{address}");
    listener::serve(listener, app, &config.limits, shutdown).await;
    Ok(())
}
