//! videoroom's server. A request's way through it:
//! - [`listener`]: TCP connections, capped and with a header deadline, served by hyper;
//! - [`http`]: the client's pages and assets, `/health`, `/stats`, and the socket upgrade
//!   (for pages of the origins [`origin`] allows);
//! - [`signaling`]: one task per WebSocket, Phoenix framing, media events in and out, to one
//!   task per room that owns its peers, tracks and negotiations;
//! - [`media`]: media worker threads, each with one UDP socket and the peer connections of the
//!   rooms placed on it; incoming RTP goes straight to the subscribers' down-tracks on the same
//!   thread, never through the room;
//! - [`turn`]: the embedded TURN server, for browsers that cannot reach the media ports;
//! - [`cluster`]: with `--redis`, the nodes sharing rooms through Redis.
//!
//! [`limits`] holds every bound a client could otherwise push, [`test_hooks`] the faults tests
//! inject.

pub mod access;
pub mod cluster;
mod config;
mod forwarded;
mod http;
pub mod limits;
mod listener;
pub mod media;
mod origin;
mod ports;
pub mod signaling;
pub mod telemetry;
pub mod test_hooks;
mod tls;
pub mod turn;
mod web_client;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
pub use config::{Command, Config};
pub use signaling::registry::Counts;
pub use tls::RELOAD_CHECK as TLS_RELOAD_CHECK;
use tokio::net::TcpListener;
use tokio::sync::oneshot;

use crate::access::JoinSecret;
use crate::cluster::Cluster;
use crate::media::engine::{MediaEngine, MediaSettings};
use crate::signaling::registry::Registry;
use crate::signaling::room::RoomSettings;

/// How long a shutdown may take to tell every peer and close their sockets; the process exits
/// after it in any case.
const SHUTDOWN_GRACE: Duration = Duration::from_millis(4500);
/// How long the media workers get to close their connections after that.
const MEDIA_STOP_GRACE: Duration = Duration::from_millis(300);

/// Serves HTTP and the signaling socket on `listener` until `shutdown` completes; then stops
/// accepting, tells every peer the server is restarting and closes their sockets (within
/// [`SHUTDOWN_GRACE`]).
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
    // Before anything is counted.
    telemetry::prometheus();
    let media = MediaEngine::start(&MediaSettings::from_config(&config, address)?)?;
    let (tls, reloadable) = tls::acceptor(&config)
        .context("cannot set up HTTPS")?
        .unzip();
    let media_addresses = (media.candidate_ips(), media.ports());
    let (turn_server, turn) = turn::start(&config, media_addresses, tls.as_ref())?;
    let scheme = if tls.is_some() { "https" } else { "http" };
    let cluster = match &config.redis {
        None => None,
        Some(redis) => {
            let id = config
                .node_id
                .clone()
                .unwrap_or_else(|| format!("{}:{}", hostname(), address.port()));
            let url = config
                .public_url
                .clone()
                .unwrap_or_else(|| format!("{scheme}://{address}"));
            // Where browsers send this node's media: its first candidate address, each port.
            let media_address = media
                .ports()
                .iter()
                .filter_map(|port| Some(SocketAddr::new(*media.candidate_ips().first()?, *port)))
                .map(|address| address.to_string())
                .collect::<Vec<_>>()
                .join(",");
            let node = cluster::NodeAddress {
                id,
                url,
                media: media_address,
            };
            let cluster = Cluster::connect(redis, node, config.drain)
                .await
                .with_context(|| format!("cannot join the cluster at {redis}"))?;
            tracing::info!(node = cluster.id(), "in the cluster of {redis}");
            Some(cluster)
        }
    };
    let rooms = Registry::new(RoomSettings {
        limits: Arc::new(config.limits.clone()),
        media: media.clone(),
        test_hooks: config.test_hooks.clone(),
        turn,
        join_secret: config.join_secret.as_deref().map(JoinSecret::new),
        cluster: cluster.clone(),
    });
    let heartbeat = cluster.map(|cluster| cluster.spawn_heartbeat(rooms.clone()));
    // A certificate from files follows them (SIGHUP, or a change seen on disk).
    let following = tokio::spawn(tls::follow(reloadable.flatten(), tls::hangups()));
    let app = http::router(&config, rooms.clone());
    tracing::info!("videoroom listening on {scheme}://{address}");
    let (stop, stopped) = oneshot::channel();
    let signal = async move {
        shutdown.await;
        let _ = stop.send(());
    };
    let serving = tokio::spawn(listener::serve(
        listener,
        app,
        config.limits.clone(),
        tls,
        signal,
    ));
    let _ = stopped.await;
    tracing::info!("shutting down: no new connections; telling every peer");
    let closing = async {
        rooms.shut_down().await;
        let _ = serving.await;
    };
    if tokio::time::timeout(SHUTDOWN_GRACE, closing).await.is_err() {
        tracing::warn!("some connections did not close within {SHUTDOWN_GRACE:?}; leaving them");
    }
    following.abort();
    if let Some(heartbeat) = heartbeat {
        // It removes the node's record on its way out.
        let _ = tokio::time::timeout(Duration::from_secs(1), heartbeat).await;
    }
    drop(turn_server);
    // The peers were told; their media connections close with the workers.
    tokio::task::spawn_blocking(move || media.stop(MEDIA_STOP_GRACE))
        .await
        .context("stopping the media workers")?;
    Ok(())
}

/// The machine's name, for a default node id.
fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|name| name.trim().to_owned())
        .ok()
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| "localhost".to_owned())
}
