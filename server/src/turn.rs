//! TURN: relayed media for browsers that cannot reach the media ports directly (UDP blocked,
//! strict NATs) and for Membrane clients, which always relay. The server embeds a TURN server
//! (on by default) whose credentials it hands each peer in `offerData`, and can hand out
//! external ones too.
//! - [`offer`]: the list a peer is given, with its credentials;
//! - [`credentials`]: the REST credentials and nonces, checked from the secret alone;
//! - [`stun`]: the message codec;
//! - [`relay`]: requests, allocations and relaying;
//! - [`policy`]: which peers the relay may reach;
//! - [`server`]: the UDP, TCP and TLS transports.

pub mod credentials;
mod offer;
mod policy;
mod relay;
mod server;
pub mod stun;

use std::net::{IpAddr, SocketAddr};

use anyhow::Context;
pub use offer::TurnServers;
pub use relay::REALM;
use tokio_rustls::TlsAcceptor;

use self::credentials::Secret;
use self::offer::Embedded;
use self::policy::PeerPolicy;
use self::relay::{Relay, RelayMetrics};
pub use self::server::TurnServer;
use crate::limits::{KeyedQuota, Quota};
use crate::ports::bind_udp_and_tcp;
use crate::Config;

/// Starts the embedded TURN server of `config` (unless `--no-turn-server`), next to media
/// workers whose candidates name `media_ips` and `media_ports`; with `tls`, TURN over TLS too.
/// Returns the running server, if any, and the list peers are handed.
pub fn start(
    config: &Config,
    (media_ips, media_ports): (&[IpAddr], &[u16]),
    tls: Option<&TlsAcceptor>,
) -> anyhow::Result<(Option<TurnServer>, TurnServers)> {
    if config.no_turn_server {
        if config.turn.is_empty() {
            tracing::warn!(
                "no TURN server (--no-turn-server, no --turn): Membrane clients, which only relay, \
                 and browsers on networks that block UDP cannot get media"
            );
        }
        return Ok((None, TurnServers::new(config, None)));
    }
    let announced = config.announce_ip.unwrap_or(config.media_ip);
    let secret = match &config.turn_secret {
        Some(secret) => Secret::new(secret.as_bytes()),
        None => Secret::generate(),
    };
    let relay = Relay {
        secret: secret.clone(),
        policy: PeerPolicy {
            media_ports: media_ports.to_vec(),
            media_announced: announced,
            media_bound: config.media_ip,
            media_also: media_ips.to_vec(),
            allow_private: config.turn_relay_private,
        },
        relay_bind: config.media_ip,
        relay_announced: announced,
        relay_ports: config.turn_relay_ports.clone(),
        allocations: Quota::new(config.limits.max_turn_allocations),
        per_peer: KeyedQuota::new(config.limits.max_turn_allocations_per_peer),
        metrics: RelayMetrics::new(),
    };
    let plain = bind_udp_and_tcp(
        config.media_ip,
        config.turn_port,
        "the TURN port (--media-ip, --turn-port)",
    )?;
    let tls = match tls {
        Some(acceptor) => {
            let address = SocketAddr::new(config.media_ip, config.turn_tls_port);
            let listener = std::net::TcpListener::bind(address).with_context(|| {
                format!(
                    "cannot listen for TURN over TLS on {address} (--media-ip, --turn-tls-port)"
                )
            })?;
            Some((listener, without_alpn(acceptor)))
        }
        None => None,
    };
    let server = TurnServer::start(relay, plain, tls, config.limits.max_connections)?;
    tracing::info!(
        address = %SocketAddr::new(config.media_ip, server.ports.plain),
        tls_port = ?server.ports.tls,
        "TURN server listening (UDP and TCP{})",
        if server.ports.tls.is_some() { ", TLS" } else { "" }
    );
    let embedded = Embedded {
        host: announced.to_string(),
        ports: server.ports,
        secret,
    };
    Ok((Some(server), TurnServers::new(config, Some(embedded))))
}

/// TURN clients do not ask for HTTP's ALPN protocol, and must not be refused for it.
fn without_alpn(acceptor: &TlsAcceptor) -> TlsAcceptor {
    let mut config = (**acceptor.config()).clone();
    config.alpn_protocols.clear();
    TlsAcceptor::from(std::sync::Arc::new(config))
}
