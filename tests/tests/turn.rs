//! The embedded TURN server, spoken to in plain STUN over UDP and TCP as a browser's TURN client
//! speaks it, with the credentials a peer finds in its `offerData`: who may allocate, where the
//! relay may send, that data goes both ways (Send/Data indications and channels), and the
//! per-peer quota. (Media through the relay: `media.rs`; browsers through it: `room_page.rs`.)

use std::net::SocketAddr;
use std::time::{Duration, SystemTime};

use anyhow::{ensure, Context};
use e2e::synthetic::{PeerOptions, SyntheticPeer};
use e2e::TestServer;
use server::turn::credentials::Secret;
use server::turn::stun::{self, attr, method, Class, Message, Writer};
use server::turn::REALM;
use shared::server_event::{TurnServer, TurnTransport};
use shared::ServerEvent;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};

const TIMEOUT: Duration = Duration::from_secs(10);
/// How long a datagram that must not arrive is waited for.
const SILENCE: Duration = Duration::from_millis(700);
const UDP: [u8; 4] = [17, 0, 0, 0];

/// A peer in a room, for the TURN entries of its `offerData`.
async fn turn_entries(server: &TestServer) -> anyhow::Result<(SyntheticPeer, Vec<TurnServer>)> {
    let peer =
        SyntheticPeer::join(&server.socket_url(), "turn", PeerOptions::publishing("Pia")).await?;
    peer.wait_until("offerData", TIMEOUT, |state| {
        state
            .events
            .iter()
            .any(|event| matches!(event, ServerEvent::OfferData(_)))
    })
    .await?;
    let entries = peer.state(|state| {
        state.events.iter().find_map(|event| match event {
            ServerEvent::OfferData(offer) => Some(offer.integrated_turn_servers.clone()),
            _ => None,
        })
    });
    Ok((peer, entries.unwrap_or_default()))
}

fn entry(entries: &[TurnServer], transport: TurnTransport) -> anyhow::Result<&TurnServer> {
    entries
        .iter()
        .find(|entry| entry.transport == transport)
        .with_context(|| format!("no {transport:?} entry in integratedTurnServers: {entries:?}"))
}

fn address_of(entry: &TurnServer) -> anyhow::Result<SocketAddr> {
    Ok(SocketAddr::new(
        entry.server_addr.parse()?,
        entry.server_port,
    ))
}

/// A reply's error code, if it is an error.
fn error_code(reply: &Message) -> Option<u16> {
    let value = reply.get(attr::ERROR_CODE)?;
    Some(u16::from(value[2]) * 100 + u16::from(value[3]))
}

fn error_reason(reply: &Message) -> String {
    reply
        .get(attr::ERROR_CODE)
        .map(|value| String::from_utf8_lossy(&value[4..]).into_owned())
        .unwrap_or_default()
}

/// One TURN client transport: a UDP socket or a TCP connection to the server.
enum Transport {
    Udp(UdpSocket, SocketAddr),
    Tcp(TcpStream),
}

/// A TURN client: its transport and, once the server has challenged it, its credentials.
struct Client {
    transport: Transport,
    username: String,
    key: [u8; 16],
    nonce: String,
}

impl Client {
    async fn udp(server: SocketAddr, username: &str, password: &str) -> anyhow::Result<Client> {
        let socket = UdpSocket::bind("127.0.0.1:0").await?;
        Client::new(Transport::Udp(socket, server), username, password).await
    }

    async fn tcp(server: SocketAddr, username: &str, password: &str) -> anyhow::Result<Client> {
        let stream = TcpStream::connect(server).await?;
        Client::new(Transport::Tcp(stream), username, password).await
    }

    /// Sends an unauthenticated Allocate, as every TURN client starts, for the realm and nonce.
    async fn new(transport: Transport, username: &str, password: &str) -> anyhow::Result<Client> {
        let mut client = Client {
            transport,
            username: username.to_owned(),
            key: stun::long_term_key(username, REALM, password),
            nonce: String::new(),
        };
        let challenge = client
            .exchange(method::ALLOCATE, false, |w| {
                w.attribute(attr::REQUESTED_TRANSPORT, &UDP);
            })
            .await?;
        let reply = Message::parse(&challenge)?;
        ensure!(
            error_code(&reply) == Some(401),
            "an Allocate without credentials got {:?}",
            error_code(&reply)
        );
        ensure!(
            reply.text(attr::REALM) == Some(REALM),
            "the challenge names no realm"
        );
        client.nonce = reply
            .text(attr::NONCE)
            .context("the challenge has no nonce")?
            .to_owned();
        Ok(client)
    }

    /// Sends a request (signed when `signed`) and returns the reply's bytes.
    async fn exchange(
        &mut self,
        method: u16,
        signed: bool,
        attributes: impl FnOnce(&mut Writer),
    ) -> anyhow::Result<Vec<u8>> {
        let transaction: [u8; 12] = rand::random();
        let mut request = Vec::new();
        let mut writer = Writer::new(&mut request, method, Class::Request, transaction);
        attributes(&mut writer);
        if signed {
            writer
                .attribute(attr::USERNAME, self.username.as_bytes())
                .attribute(attr::REALM, REALM.as_bytes())
                .attribute(attr::NONCE, self.nonce.as_bytes())
                .integrity(&self.key);
        }
        self.send(&request).await?;
        loop {
            let reply = self.receive(TIMEOUT).await?.context("no reply")?;
            if Message::parse(&reply).is_ok_and(|reply| reply.transaction == transaction) {
                return Ok(reply);
            }
        }
    }

    /// A signed request; fails unless it succeeds.
    async fn succeed(
        &mut self,
        method: u16,
        attributes: impl FnOnce(&mut Writer),
    ) -> anyhow::Result<Vec<u8>> {
        let reply = self.exchange(method, true, attributes).await?;
        let message = Message::parse(&reply)?;
        ensure!(
            message.class == Class::Success,
            "method {method:#x} failed: {:?} {}",
            error_code(&message),
            error_reason(&message)
        );
        ensure!(
            message.integrity_matches(&self.key),
            "a success without our integrity"
        );
        Ok(reply)
    }

    /// A signed request's error code (`None` for a success).
    async fn code(
        &mut self,
        method: u16,
        attributes: impl FnOnce(&mut Writer),
    ) -> anyhow::Result<Option<u16>> {
        let reply = self.exchange(method, true, attributes).await?;
        Ok(error_code(&Message::parse(&reply)?))
    }

    /// Allocates a relayed address, returning it.
    async fn allocate(&mut self) -> anyhow::Result<SocketAddr> {
        let reply = self
            .succeed(method::ALLOCATE, |w| {
                w.attribute(attr::REQUESTED_TRANSPORT, &UDP);
            })
            .await?;
        Message::parse(&reply)?
            .xor_address(attr::XOR_RELAYED_ADDRESS)
            .context("an allocation without XOR-RELAYED-ADDRESS")
    }

    async fn send(&mut self, bytes: &[u8]) -> anyhow::Result<()> {
        match &mut self.transport {
            Transport::Udp(socket, server) => {
                socket.send_to(bytes, *server).await?;
            }
            Transport::Tcp(stream) => stream.write_all(bytes).await?,
        }
        Ok(())
    }

    /// The next datagram or stream frame, if one comes within `wait`.
    async fn receive(&mut self, wait: Duration) -> anyhow::Result<Option<Vec<u8>>> {
        let received = tokio::time::timeout(wait, async {
            match &mut self.transport {
                Transport::Udp(socket, _) => {
                    let mut buf = vec![0; 65_536];
                    let length = socket.recv(&mut buf).await?;
                    buf.truncate(length);
                    anyhow::Ok(buf)
                }
                Transport::Tcp(stream) => {
                    let mut header = [0u8; 4];
                    stream.read_exact(&mut header).await?;
                    let length = usize::from(u16::from_be_bytes([header[2], header[3]]));
                    let rest = if header[0] >> 6 == 0 {
                        16 + length
                    } else {
                        length.div_ceil(4) * 4
                    };
                    let mut frame = header.to_vec();
                    frame.resize(4 + rest, 0);
                    stream.read_exact(&mut frame[4..]).await?;
                    Ok(frame)
                }
            }
        })
        .await;
        match received {
            Ok(frame) => frame.map(Some),
            Err(_) => Ok(None),
        }
    }
}

/// The credentials an offerData gives, checked with the secret a test server was given, and
/// ones that must be refused: forged, expired, or with a nonce the server never gave.
#[tokio::test]
async fn only_the_credentials_of_offer_data_allocate() -> anyhow::Result<()> {
    let config = server::Config {
        turn_secret: Some("north-wind".to_owned()),
        ..server::Config::defaults()
    };
    let server = TestServer::start_with(config).await?;
    let (pia, entries) = turn_entries(&server).await?;
    let udp = entry(&entries, TurnTransport::Udp)?;
    ensure!(
        entry(&entries, TurnTransport::Tcp)?.server_port == udp.server_port,
        "TCP and UDP are on one port"
    );
    let address = address_of(udp)?;
    let peer = pia.state(|state| state.id.clone()).context("no peer id")?;
    ensure!(
        udp.username.ends_with(&format!(":{peer}")),
        "the username {} is not EXPIRY:PEER_ID",
        udp.username
    );

    let mut wrong_password = Client::udp(address, &udp.username, "guess").await?;
    let refused = wrong_password
        .code(method::ALLOCATE, |w| {
            w.attribute(attr::REQUESTED_TRANSPORT, &UDP);
        })
        .await?;
    ensure!(refused == Some(401), "a wrong password got {refused:?}");

    let secret = Secret::new("north-wind");
    let (expired, expired_password) = secret.issue(
        &peer.to_string(),
        SystemTime::now() - Duration::from_secs(60),
    );
    let mut late = Client::udp(address, &expired, &expired_password).await?;
    let reply = late
        .exchange(method::ALLOCATE, true, |w| {
            w.attribute(attr::REQUESTED_TRANSPORT, &UDP);
        })
        .await?;
    let reply = Message::parse(&reply)?;
    ensure!(
        error_code(&reply) == Some(401) && error_reason(&reply).contains("expired"),
        "expired credentials got {:?} {}",
        error_code(&reply),
        error_reason(&reply)
    );

    // The real password of one username does not sign another.
    let other_user = udp.username.replace(&peer.to_string(), "someone-else");
    let mut forged = Client::udp(address, &other_user, &udp.password).await?;
    let refused = forged
        .code(method::ALLOCATE, |w| {
            w.attribute(attr::REQUESTED_TRANSPORT, &UDP);
        })
        .await?;
    ensure!(refused == Some(401), "a forged username got {refused:?}");

    let mut client = Client::udp(address, &udp.username, &udp.password).await?;
    client.nonce = format!("{:016x}{}", u64::MAX, "0".repeat(16));
    let stale = client
        .code(method::ALLOCATE, |w| {
            w.attribute(attr::REQUESTED_TRANSPORT, &UDP);
        })
        .await?;
    ensure!(stale == Some(438), "a made-up nonce got {stale:?}");

    let mut client = Client::udp(address, &udp.username, &udp.password).await?;
    let relayed = client.allocate().await?;
    println!("allocated {relayed} with the offerData credentials");
    ensure!(relayed.ip() == address.ip(), "relayed on {relayed}");
    ensure!(
        relayed.port() >= 49152,
        "the relay port {relayed} is outside the default range"
    );
    let again = client
        .code(method::ALLOCATE, |w| {
            w.attribute(attr::REQUESTED_TRANSPORT, &UDP);
        })
        .await?;
    ensure!(
        again == Some(437),
        "a second allocation on one address got {again:?}"
    );
    client
        .succeed(method::REFRESH, |w| {
            w.u32(attr::LIFETIME, 0);
        })
        .await?;
    let gone = client
        .code(method::CREATE_PERMISSION, |w| {
            w.xor_address(attr::XOR_PEER_ADDRESS, "127.0.0.1:9".parse().unwrap());
        })
        .await?;
    ensure!(
        gone == Some(437),
        "a permission on a deleted allocation got {gone:?}"
    );
    pia.leave().await;
    Ok(())
}

/// The relay reaches the SFU's media ports, not private addresses, nor other ports of the
/// server's own address, where a local service could listen.
#[tokio::test]
async fn the_relay_does_not_reach_private_addresses_or_local_services() -> anyhow::Result<()> {
    let server = TestServer::start_with(server::Config::defaults()).await?;
    let (pia, entries) = turn_entries(&server).await?;
    let udp = entry(&entries, TurnTransport::Udp)?;
    let mut client = Client::udp(address_of(udp)?, &udp.username, &udp.password).await?;
    client.allocate().await?;
    for private in [
        "10.1.2.3:5000",
        "192.168.0.1:5000",
        "169.254.169.254:80",
        "[::1]:5000",
    ] {
        let peer: SocketAddr = private.parse()?;
        let code = client
            .code(method::CREATE_PERMISSION, |w| {
                w.xor_address(attr::XOR_PEER_ADDRESS, peer);
            })
            .await?;
        ensure!(
            matches!(code, Some(403 | 443)),
            "a permission for {private} got {code:?}"
        );
    }
    let service = UdpSocket::bind("127.0.0.1:0").await?;
    let service_address = service.local_addr()?;
    let code = client
        .code(method::CHANNEL_BIND, |w| {
            w.u32(attr::CHANNEL_NUMBER, 0x4000 << 16)
                .xor_address(attr::XOR_PEER_ADDRESS, service_address);
        })
        .await?;
    ensure!(
        code == Some(403),
        "a channel to a local service got {code:?}"
    );
    // A permission for the server's own address is for its media ports only.
    client
        .succeed(method::CREATE_PERMISSION, |w| {
            w.xor_address(attr::XOR_PEER_ADDRESS, service_address);
        })
        .await?;
    send_indication(&mut client, service_address, b"hello").await?;
    let mut buf = [0u8; 64];
    let leaked = tokio::time::timeout(SILENCE, service.recv_from(&mut buf)).await;
    ensure!(leaked.is_err(), "the relay sent to a local service");
    pia.leave().await;
    Ok(())
}

async fn send_indication(client: &mut Client, peer: SocketAddr, data: &[u8]) -> anyhow::Result<()> {
    let mut indication = Vec::new();
    Writer::new(
        &mut indication,
        method::SEND,
        Class::Indication,
        rand::random(),
    )
    .xor_address(attr::XOR_PEER_ADDRESS, peer)
    .attribute(attr::DATA, data);
    client.send(&indication).await
}

/// With `--turn-relay-private` (as on a closed network), a loopback peer is reached: data goes
/// both ways over UDP and over TCP, in indications and in channels (padded on TCP).
#[tokio::test]
async fn relayed_data_goes_both_ways_over_udp_and_tcp() -> anyhow::Result<()> {
    let config = server::Config {
        turn_relay_private: true,
        ..server::Config::defaults()
    };
    let server = TestServer::start_with(config).await?;
    let (pia, entries) = turn_entries(&server).await?;
    let peer = UdpSocket::bind("127.0.0.1:0").await?;
    let peer_address = peer.local_addr()?;
    for transport in [TurnTransport::Udp, TurnTransport::Tcp] {
        let turn = entry(&entries, transport)?;
        let address = address_of(turn)?;
        let mut client = match transport {
            TurnTransport::Tcp => Client::tcp(address, &turn.username, &turn.password).await?,
            _ => Client::udp(address, &turn.username, &turn.password).await?,
        };
        let relayed = client.allocate().await?;
        client
            .succeed(method::CREATE_PERMISSION, |w| {
                w.xor_address(attr::XOR_PEER_ADDRESS, peer_address);
            })
            .await?;

        send_indication(&mut client, peer_address, b"hello").await?;
        let mut buf = [0u8; 64];
        let (length, from) = tokio::time::timeout(TIMEOUT, peer.recv_from(&mut buf))
            .await
            .context("the Send indication never reached the peer")??;
        ensure!(
            &buf[..length] == b"hello" && from == relayed,
            "the peer got {:?} from {from}",
            &buf[..length]
        );
        peer.send_to(b"world", relayed).await?;
        let data = client
            .receive(TIMEOUT)
            .await?
            .context("no Data indication")?;
        let data = Message::parse(&data)?;
        ensure!(
            (data.method, data.class) == (method::DATA, Class::Indication)
                && data.xor_address(attr::XOR_PEER_ADDRESS) == Some(peer_address)
                && data.get(attr::DATA) == Some(&b"world"[..]),
            "{transport:?}: not the Data indication from the peer"
        );

        client
            .succeed(method::CHANNEL_BIND, |w| {
                w.u32(attr::CHANNEL_NUMBER, 0x4001 << 16)
                    .xor_address(attr::XOR_PEER_ADDRESS, peer_address);
            })
            .await?;
        // Five bytes: on TCP the frame is padded to eight.
        let mut channel_data = vec![0x40, 0x01, 0x00, 0x05];
        channel_data.extend_from_slice(b"ping!");
        if transport == TurnTransport::Tcp {
            channel_data.extend_from_slice(&[0, 0, 0]);
        }
        client.send(&channel_data).await?;
        let (length, _) = tokio::time::timeout(TIMEOUT, peer.recv_from(&mut buf))
            .await
            .context("ChannelData never reached the peer")??;
        ensure!(
            &buf[..length] == b"ping!",
            "the peer got {:?}",
            &buf[..length]
        );
        peer.send_to(b"pong!", relayed).await?;
        let frame = client
            .receive(TIMEOUT)
            .await?
            .context("no ChannelData back")?;
        let expected: &[u8] = match transport {
            TurnTransport::Tcp => b"\x40\x01\x00\x05pong!\0\0\0",
            _ => b"\x40\x01\x00\x05pong!",
        };
        ensure!(
            frame == expected,
            "{transport:?}: ChannelData back was {frame:?}"
        );
        println!("{transport:?}: indications and channel data relayed both ways via {relayed}");
    }
    pia.leave().await;
    Ok(())
}

/// One peer's credentials hold at most `--max-turn-allocations-per-peer` allocations; letting
/// one go makes room for the next.
#[tokio::test]
async fn a_peer_holds_at_most_its_quota_of_allocations() -> anyhow::Result<()> {
    let mut config = server::Config::defaults();
    config.limits.max_turn_allocations_per_peer = 3;
    let server = TestServer::start_with(config).await?;
    let (pia, entries) = turn_entries(&server).await?;
    let udp = entry(&entries, TurnTransport::Udp)?;
    let address = address_of(udp)?;
    let mut clients = Vec::new();
    for _ in 0..3 {
        let mut client = Client::udp(address, &udp.username, &udp.password).await?;
        client.allocate().await?;
        clients.push(client);
    }
    let mut fourth = Client::udp(address, &udp.username, &udp.password).await?;
    let code = fourth
        .code(method::ALLOCATE, |w| {
            w.attribute(attr::REQUESTED_TRANSPORT, &UDP);
        })
        .await?;
    ensure!(code == Some(486), "a fourth allocation got {code:?}");
    clients[0]
        .succeed(method::REFRESH, |w| {
            w.u32(attr::LIFETIME, 0);
        })
        .await?;
    fourth.allocate().await?;
    pia.leave().await;
    Ok(())
}
