//! The TURN servers a peer is handed in `offerData` (`integratedTurnServers`), with its
//! credentials: the embedded server's entries (UDP, TCP and, with HTTPS, TLS) with per-peer
//! REST credentials that expire, then the `--turn` servers, with the same kind of credentials
//! when `--turn-secret` is set, else the one `--turn-username`/`--turn-password` for everyone.

use std::time::{Duration, SystemTime};

use shared::server_event::{TurnServer, TurnTransport};
use shared::PeerId;

use super::credentials::Secret;
use super::server::TurnPorts;
use crate::Config;

/// A TURN server's host, port and transport.
type Entry = (String, u16, TurnTransport);

/// The TURN servers to hand out and how their credentials are given.
#[derive(Debug)]
pub struct TurnServers {
    /// The embedded server's entries, with its secret.
    embedded: Option<(Vec<Entry>, Secret)>,
    external: Vec<Entry>,
    external_credentials: Credentials,
    ttl: Duration,
}

#[derive(Debug)]
enum Credentials {
    Shared { username: String, password: String },
    PerPeer(Secret),
}

/// The embedded TURN server as clients reach it.
#[derive(Debug)]
pub struct Embedded {
    pub host: String,
    pub ports: TurnPorts,
    pub secret: Secret,
}

impl TurnServers {
    pub fn new(config: &Config, embedded: Option<Embedded>) -> TurnServers {
        let external_credentials = match &config.turn_secret {
            Some(secret) => Credentials::PerPeer(Secret::new(secret.as_bytes())),
            None => Credentials::Shared {
                username: config.turn_username.clone(),
                password: config.turn_password.clone(),
            },
        };
        let embedded = embedded.map(
            |Embedded {
                 host,
                 ports,
                 secret,
             }| {
                let mut entries = vec![
                    (host.clone(), ports.plain, TurnTransport::Udp),
                    (host.clone(), ports.plain, TurnTransport::Tcp),
                ];
                if let Some(tls) = ports.tls {
                    entries.push((host, tls, TurnTransport::Tls));
                }
                (entries, secret)
            },
        );
        TurnServers {
            embedded,
            external: config.turn.clone(),
            external_credentials,
            ttl: config.turn_credential_ttl,
        }
    }

    /// The servers for `peer`, with credentials valid from `now`.
    pub fn for_peer(&self, peer: &PeerId, now: SystemTime) -> Vec<TurnServer> {
        let peer = peer.to_string();
        let mut servers = Vec::new();
        if let Some((entries, secret)) = &self.embedded {
            let (username, password) = secret.issue(&peer, now + self.ttl);
            servers.extend(entries_with(entries, &username, &password));
        }
        if !self.external.is_empty() {
            let (username, password) = match &self.external_credentials {
                Credentials::Shared { username, password } => (username.clone(), password.clone()),
                Credentials::PerPeer(secret) => secret.issue(&peer, now + self.ttl),
            };
            servers.extend(entries_with(&self.external, &username, &password));
        }
        servers
    }
}

fn entries_with<'a>(
    entries: &'a [Entry],
    username: &'a str,
    password: &'a str,
) -> impl Iterator<Item = TurnServer> + 'a {
    entries.iter().map(|(host, port, transport)| TurnServer {
        server_addr: host.clone(),
        server_port: *port,
        transport: *transport,
        username: username.to_owned(),
        password: password.to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use std::time::UNIX_EPOCH;

    use clap::Parser;

    use super::*;

    fn peer() -> PeerId {
        PeerId::from(uuid::Uuid::from_u128(1))
    }

    #[test]
    fn with_a_secret_each_peer_gets_its_own_expiring_credentials() {
        let config = Config::parse_from([
            "videoroom",
            "--turn",
            "turn.example.org:3478,turn.example.org:5349?transport=tls",
            "--turn-secret",
            "north-wind",
            "--turn-credential-ttl",
            "600",
        ]);
        let turn = TurnServers::new(&config, None);
        let now = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let servers = turn.for_peer(&peer(), now);
        assert_eq!(servers.len(), 2);
        assert_eq!(
            servers[1].url(),
            "turns:turn.example.org:5349?transport=tcp"
        );
        assert!(servers[0].username.starts_with("1700000600:"));
        assert_eq!(servers[0].username, servers[1].username);
        let other = turn.for_peer(&PeerId::from(uuid::Uuid::from_u128(2)), now);
        assert_ne!(other[0].password, servers[0].password);
    }

    #[test]
    fn without_a_secret_every_peer_gets_the_shared_credentials() {
        let config = Config::parse_from([
            "videoroom",
            "--turn",
            "turn.example.org:3478",
            "--turn-username",
            "u",
            "--turn-password",
            "p",
        ]);
        let servers = TurnServers::new(&config, None).for_peer(&peer(), SystemTime::now());
        assert_eq!(
            (servers[0].username.as_str(), servers[0].password.as_str()),
            ("u", "p")
        );
        let none = TurnServers::new(&Config::parse_from(["videoroom"]), None);
        assert!(none.for_peer(&peer(), SystemTime::now()).is_empty());
    }

    #[test]
    fn the_embedded_server_comes_first_with_its_own_credentials() {
        let config = Config::parse_from([
            "videoroom",
            "--turn",
            "turn.example.org:3478",
            "--turn-username",
            "u",
            "--turn-password",
            "p",
        ]);
        let embedded = Embedded {
            host: "203.0.113.10".to_owned(),
            ports: TurnPorts {
                plain: 3478,
                tls: Some(5349),
            },
            secret: Secret::new("north-wind"),
        };
        let now = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let servers = TurnServers::new(&config, Some(embedded)).for_peer(&peer(), now);
        let urls: Vec<String> = servers.iter().map(TurnServer::url).collect();
        assert_eq!(
            urls,
            [
                "turn:203.0.113.10:3478?transport=udp",
                "turn:203.0.113.10:3478?transport=tcp",
                "turns:203.0.113.10:5349?transport=tcp",
                "turn:turn.example.org:3478?transport=udp",
            ]
        );
        // Valid for --turn-credential-ttl (12 hours by default), checkable with the secret.
        let username = format!("1700043200:{}", peer());
        assert_eq!(servers[0].username, username);
        let user = Secret::new("north-wind").check(&username, now).unwrap();
        assert_eq!(servers[2].password, user.password);
        assert_eq!(
            (servers[3].username.as_str(), servers[3].password.as_str()),
            ("u", "p")
        );
    }
}
