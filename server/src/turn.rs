//! The TURN servers a peer is handed in `offerData` (`integratedTurnServers`), with its
//! credentials. With `--turn-secret` each peer gets credentials of its own that expire, in the
//! TURN REST scheme coturn checks with `use-auth-secret`: the username is `EXPIRY:PEER_ID`
//! (EXPIRY in Unix seconds) and the password base64(HMAC-SHA1(secret, username)), so nothing a
//! client sees lets anyone else use the relay past the expiry. Otherwise every client gets the
//! one `--turn-username`/`--turn-password`.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use hmac::{Hmac, Mac};
use shared::server_event::{TurnServer, TurnTransport};
use shared::PeerId;

use crate::Config;

/// The configured TURN servers and how their credentials are given.
#[derive(Debug)]
pub struct TurnServers {
    servers: Vec<(String, u16, TurnTransport)>,
    credentials: Credentials,
}

#[derive(Debug)]
enum Credentials {
    Shared { username: String, password: String },
    PerPeer { secret: String, ttl: Duration },
}

impl TurnServers {
    pub fn from_config(config: &Config) -> TurnServers {
        let credentials = match &config.turn_secret {
            Some(secret) => Credentials::PerPeer {
                secret: secret.clone(),
                ttl: config.turn_credential_ttl,
            },
            None => Credentials::Shared {
                username: config.turn_username.clone(),
                password: config.turn_password.clone(),
            },
        };
        TurnServers {
            servers: config.turn.clone(),
            credentials,
        }
    }

    /// The servers for `peer`, with credentials valid from `now`.
    pub fn for_peer(&self, peer: &PeerId, now: SystemTime) -> Vec<TurnServer> {
        if self.servers.is_empty() {
            return Vec::new();
        }
        let (username, password) = match &self.credentials {
            Credentials::Shared { username, password } => (username.clone(), password.clone()),
            Credentials::PerPeer { secret, ttl } => {
                let expiry = (now + *ttl)
                    .duration_since(UNIX_EPOCH)
                    .unwrap_or_default()
                    .as_secs();
                rest_credentials(secret, expiry, peer)
            }
        };
        self.servers
            .iter()
            .map(|(host, port, transport)| TurnServer {
                server_addr: host.clone(),
                server_port: *port,
                transport: *transport,
                username: username.clone(),
                password: password.clone(),
            })
            .collect()
    }
}

/// TURN REST credentials for `peer`, valid until `expiry` (Unix seconds).
fn rest_credentials(secret: &str, expiry: u64, peer: &PeerId) -> (String, String) {
    let username = format!("{expiry}:{peer}");
    let mut mac = Hmac::<sha1::Sha1>::new_from_slice(secret.as_bytes())
        .expect("HMAC takes a key of any length");
    mac.update(username.as_bytes());
    let password = base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
    (username, password)
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    fn peer() -> PeerId {
        PeerId::from(uuid::Uuid::from_u128(1))
    }

    #[test]
    fn rest_credentials_are_what_coturn_computes() {
        // Computed independently: base64(hmac.new(b"north-wind", username, sha1).digest()).
        let (username, password) = rest_credentials("north-wind", 1_700_000_000, &peer());
        assert_eq!(username, "1700000000:00000000-0000-0000-0000-000000000001");
        assert_eq!(password, "4AqJt2egfZwoALwg2Q076FgfOo0=");
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
        let turn = TurnServers::from_config(&config);
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
        let servers = TurnServers::from_config(&config).for_peer(&peer(), SystemTime::now());
        assert_eq!(
            (servers[0].username.as_str(), servers[0].password.as_str()),
            ("u", "p")
        );
        let none = TurnServers::from_config(&Config::parse_from(["videoroom"]));
        assert!(none.for_peer(&peer(), SystemTime::now()).is_empty());
    }
}
