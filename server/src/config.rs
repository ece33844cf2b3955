//! The server's configuration: command-line flags, each with an environment-variable fallback.

use std::net::IpAddr;
use std::ops::RangeInclusive;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use shared::server_event::TurnTransport;

use crate::limits::{parse_seconds, Limits};
use crate::test_hooks::TestHooks;

#[derive(Debug, Clone, Parser)]
#[command(
    name = "videoroom",
    version,
    about = "A self-hosted multi-party video room"
)]
pub struct Config {
    /// Address to listen on for HTTP and the signaling socket.
    #[arg(long, env = "VIDEOROOM_HOST", default_value = "127.0.0.1")]
    pub host: String,

    /// Port to listen on.
    #[arg(long, env = "VIDEOROOM_PORT", default_value_t = 4000)]
    pub port: u16,

    /// Serve the web client from this directory (`scripts/build-client.sh` writes `dist/`)
    /// instead of the copy built into the binary.
    #[arg(long, env = "VIDEOROOM_STATIC_DIR")]
    pub static_dir: Option<PathBuf>,

    /// Log filter, e.g. `info` or `server=debug,info`.
    #[arg(long, env = "VIDEOROOM_LOG", default_value = "info")]
    pub log: String,

    /// Address the media sockets bind to (UDP, and TCP for ICE over TCP). On loopback (the
    /// default, and without --announce-ip) they also answer on the machine's other addresses,
    /// which the candidates offer too: Firefox never pairs with a loopback candidate.
    #[arg(long, env = "VIDEOROOM_MEDIA_IP", default_value = "127.0.0.1")]
    pub media_ip: IpAddr,

    /// Public IP to announce in ICE candidates instead of the bound one (1:1 NAT, cloud VMs).
    #[arg(long, env = "VIDEOROOM_ANNOUNCE_IP")]
    pub announce_ip: Option<IpAddr>,

    /// Media port of the first worker (UDP, and TCP for ICE over TCP); each next worker takes
    /// the next port. Every peer connection of a worker shares its port. 0 picks free ports.
    /// Just above the HTTP port by default: ICE-TCP cannot share it.
    #[arg(long, env = "VIDEOROOM_MEDIA_PORT", default_value_t = 4001)]
    pub media_port: u16,

    /// Media worker threads, each with its own UDP port and rooms; 0 for one per core.
    #[arg(long, env = "VIDEOROOM_MEDIA_WORKERS", default_value_t = 0)]
    pub media_workers: usize,

    /// TURN servers handed to clients, as `HOST:PORT[?transport=udp|tcp|tls]`; repeatable or
    /// comma-separated. They share one way of giving credentials: --turn-secret, or
    /// --turn-username and --turn-password.
    #[arg(long = "turn", env = "VIDEOROOM_TURN", value_delimiter = ',', value_parser = parse_turn)]
    pub turn: Vec<(String, u16, TurnTransport)>,

    /// The TURN secret (coturn's `static-auth-secret`): the embedded TURN server checks the
    /// credentials it gives each peer with it, and so can --turn servers, which then get the
    /// same per-peer credentials instead of --turn-username/--turn-password. Without it the
    /// embedded server makes a random one at start.
    #[arg(long, env = "VIDEOROOM_TURN_SECRET", conflicts_with_all = ["turn_username", "turn_password"])]
    pub turn_secret: Option<String>,

    /// How long a peer's TURN credentials stay valid, in seconds (a call that lasts longer
    /// loses its relay).
    #[arg(long, env = "VIDEOROOM_TURN_CREDENTIAL_TTL", default_value = "43200", value_parser = parse_seconds)]
    pub turn_credential_ttl: Duration,

    /// A username every client gets for the --turn servers (prefer --turn-secret).
    #[arg(long, env = "VIDEOROOM_TURN_USERNAME", default_value = "")]
    pub turn_username: String,

    /// A password every client gets for the --turn servers (prefer --turn-secret).
    #[arg(long, env = "VIDEOROOM_TURN_PASSWORD", default_value = "")]
    pub turn_password: String,

    /// Turns the embedded TURN server off (clients then get only the --turn servers; a
    /// Membrane client, which uses relayed candidates only, cannot connect without one).
    #[arg(long, env = "VIDEOROOM_NO_TURN_SERVER")]
    pub no_turn_server: bool,

    /// The embedded TURN server's port, UDP and TCP, on --media-ip. 0 picks a free one.
    #[arg(long, env = "VIDEOROOM_TURN_PORT", default_value_t = 3478)]
    pub turn_port: u16,

    /// The embedded TURN server's TLS port, served when HTTPS is (--tls-cert or
    /// --tls-self-signed). 0 picks a free one.
    #[arg(long, env = "VIDEOROOM_TURN_TLS_PORT", default_value_t = 5349)]
    pub turn_tls_port: u16,

    /// The UDP ports the embedded TURN server relays from, as `FIRST-LAST`.
    #[arg(long, env = "VIDEOROOM_TURN_RELAY_PORTS", default_value = "49152-65535", value_parser = parse_port_range)]
    pub turn_relay_ports: RangeInclusive<u16>,

    /// Lets the embedded TURN server relay to loopback, private and link-local addresses (not
    /// only to the media ports and public addresses): for tests and closed networks.
    #[arg(long, env = "VIDEOROOM_TURN_RELAY_PRIVATE")]
    pub turn_relay_private: bool,

    /// Web origins whose pages may open the signaling socket, e.g. `https://meet.example.org`;
    /// repeatable or comma-separated. The page's own origin (and, on a loopback address, any
    /// loopback origin, such as `trunk serve`'s) is always allowed.
    #[arg(
        long = "allowed-origin",
        env = "VIDEOROOM_ALLOWED_ORIGINS",
        value_delimiter = ','
    )]
    pub allowed_origins: Vec<String>,

    /// Serve HTTPS (and the socket over TLS) with this certificate chain (PEM).
    #[arg(long, env = "VIDEOROOM_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,

    /// The private key of --tls-cert (PEM).
    #[arg(long, env = "VIDEOROOM_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,

    /// Serve HTTPS with a certificate made at start for localhost, the listening and announced
    /// addresses and --tls-hostname names (browsers warn once; fine for a LAN room).
    #[arg(long, env = "VIDEOROOM_TLS_SELF_SIGNED", conflicts_with_all = ["tls_cert", "tls_key"])]
    pub tls_self_signed: bool,

    /// Names the self-signed certificate also covers (repeatable or comma-separated).
    #[arg(
        long = "tls-hostname",
        env = "VIDEOROOM_TLS_HOSTNAMES",
        value_delimiter = ','
    )]
    pub tls_hostnames: Vec<String>,

    /// Reverse proxies in front of the server (repeatable or comma-separated addresses): for
    /// their connections, `X-Forwarded-For` names the client the per-address limits count.
    #[arg(
        long = "trusted-proxy",
        env = "VIDEOROOM_TRUSTED_PROXIES",
        value_delimiter = ','
    )]
    pub trusted_proxies: Vec<IpAddr>,

    /// Turns access control on: joining a room takes a join token signed with this secret
    /// (`videoroom token` makes one).
    #[arg(long, env = "VIDEOROOM_JOIN_SECRET", global = true)]
    pub join_secret: Option<String>,

    /// When set, `/stats` and `/metrics` answer only requests with `Authorization: Bearer TOKEN`.
    #[arg(long, env = "VIDEOROOM_METRICS_TOKEN")]
    pub metrics_token: Option<String>,

    /// Joins a cluster of nodes sharing this Redis (`redis://HOST:PORT[/DB]`): each room lives
    /// on one node, placed on the least-loaded; a client reaching another node is relayed to
    /// the room's. Without it the node stands alone and touches no network beyond its own.
    #[arg(long, env = "VIDEOROOM_REDIS")]
    pub redis: Option<String>,

    /// This node's name in the cluster (default: HOSTNAME:PORT).
    #[arg(long, env = "VIDEOROOM_NODE_ID", requires = "redis")]
    pub node_id: Option<String>,

    /// Where the other nodes reach this one's HTTP and signaling socket, e.g.
    /// `http://10.0.0.2:4000` (default: the listening address, with --host).
    #[arg(long, env = "VIDEOROOM_PUBLIC_URL", requires = "redis")]
    pub public_url: Option<String>,

    /// Takes no new rooms: the cluster places them on other nodes, and this node's rooms go on
    /// until their last peer leaves.
    #[arg(long, env = "VIDEOROOM_DRAIN", requires = "redis")]
    pub drain: bool,

    #[command(flatten)]
    pub limits: Limits,

    #[command(subcommand)]
    pub command: Option<Command>,

    /// Faults a test injects; never set from the command line or the environment.
    #[arg(skip)]
    pub test_hooks: Option<TestHooks>,
}

/// What the binary does instead of serving.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum Command {
    /// Prints a join token for one person and room, signed with --join-secret.
    Token {
        /// The room the token opens.
        #[arg(long)]
        room: String,
        /// The display name its holder appears under.
        #[arg(long)]
        name: String,
        /// How long the token stays valid, in seconds.
        #[arg(long, default_value = "86400", value_parser = parse_seconds)]
        valid_for: Duration,
    },
}

impl Config {
    /// The defaults, as if no flag and no variable were given.
    pub fn defaults() -> Config {
        Config::parse_from(["videoroom"])
    }
}

fn parse_port_range(range: &str) -> Result<RangeInclusive<u16>, String> {
    let ports = range
        .split_once('-')
        .and_then(|(first, last)| Some((first.trim().parse().ok()?, last.trim().parse().ok()?)));
    match ports {
        Some((first, last)) if 0 < first && first <= last => Ok(first..=last),
        _ => Err(format!(
            "`{range}` is not a port range FIRST-LAST (1-65535)"
        )),
    }
}

fn parse_turn(server: &str) -> Result<(String, u16, TurnTransport), String> {
    let (address, transport) = match server.split_once("?transport=") {
        None => (server, TurnTransport::Udp),
        Some((address, "udp")) => (address, TurnTransport::Udp),
        Some((address, "tcp")) => (address, TurnTransport::Tcp),
        Some((address, "tls")) => (address, TurnTransport::Tls),
        Some((_, other)) => {
            return Err(format!(
                "unknown TURN transport `{other}` (udp, tcp or tls)"
            ))
        }
    };
    let (host, port) = address
        .rsplit_once(':')
        .ok_or_else(|| format!("`{server}` is not HOST:PORT"))?;
    let port = port
        .parse()
        .map_err(|err| format!("`{server}`: bad port: {err}"))?;
    Ok((host.to_owned(), port, transport))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_serve_localhost() {
        let config = Config::defaults();
        assert_eq!((config.host.as_str(), config.port), ("127.0.0.1", 4000));
        assert!(config.turn.is_empty());
        assert_eq!((config.media_port, config.media_workers), (4001, 0));
        assert!(!config.no_turn_server, "the embedded TURN server is on");
        assert_eq!(
            (config.turn_port, config.turn_relay_ports),
            (3478, 49152..=65535)
        );
    }

    #[test]
    fn flags_parse() {
        let config = Config::parse_from([
            "videoroom",
            "--media-port",
            "50000",
            "--turn",
            "turn.example.org:3478,turn.example.org:5349?transport=tls",
            "--turn-username",
            "u",
        ]);
        assert_eq!(config.media_port, 50000);
        assert_eq!(config.turn.len(), 2);
        assert_eq!(
            config.turn[1],
            ("turn.example.org".to_owned(), 5349, TurnTransport::Tls)
        );
        assert_eq!(config.turn_username, "u");
    }

    #[test]
    fn a_turn_secret_excludes_a_shared_password() {
        let both =
            Config::try_parse_from(["videoroom", "--turn-secret", "s", "--turn-password", "p"]);
        assert!(both.is_err());
    }

    #[test]
    fn bad_flags_are_explained() {
        assert!(Config::try_parse_from(["videoroom", "--media-port", "50000-50010"]).is_err());
        assert!(parse_turn("turn.example.org").is_err());
        assert_eq!(parse_port_range("40000-40099"), Ok(40000..=40099));
        for bad in ["40000", "0-10", "50-40", "a-b", "1-70000"] {
            assert!(parse_port_range(bad).is_err(), "{bad}");
        }
        assert!(parse_turn("h:1?transport=sctp")
            .unwrap_err()
            .contains("sctp"));
    }
}
