//! The TURN server's requests (RFC 8656) and its allocations: authenticating with the REST
//! credentials, Allocate, Refresh, CreatePermission, ChannelBind, Send indications and
//! ChannelData from the client, and the relay's way back (ChannelData or Data indications).
//! One client transport address (a UDP source, or one TCP/TLS connection) holds at most one
//! [`Allocation`], owned by the task that reads that transport; the task that reads the relayed
//! socket sees only a snapshot of its permissions and channels ([`PeerView`]), swapped when a
//! request changes them, so relaying takes no lock.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::ops::RangeInclusive;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use arc_swap::ArcSwap;
use bytes::Bytes;
use metrics::{Counter, Gauge};
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio::task::AbortHandle;

use super::credentials::{Refusal, Secret};
use super::policy::PeerPolicy;
use super::stun::{self, attr, method, Class, Message, Writer};
use crate::limits::{KeyedGuard, KeyedQuota, Quota, QuotaGuard};
use crate::telemetry;

pub const REALM: &str = "videoroom";
/// An allocation's lifetime when the client asks for none or less (RFC 8656 §7.2).
const DEFAULT_LIFETIME: Duration = Duration::from_secs(600);
const MAX_LIFETIME: Duration = Duration::from_secs(3600);
const PERMISSION_LIFETIME: Duration = Duration::from_secs(300);
const CHANNEL_LIFETIME: Duration = Duration::from_secs(600);
/// REQUESTED-TRANSPORT's value for UDP, the only transport the relay offers to peers.
const UDP: u8 = 17;
/// Attempts at a free relay port before the server says it has no capacity.
const PORT_ATTEMPTS: usize = 32;
/// The largest datagram relayed; the relay's receive buffer leaves room for a header before it.
pub const MAX_DATAGRAM: usize = 65_535;

/// What every transport of the TURN server shares: settings, the secret, the quotas.
#[derive(Debug)]
pub struct Relay {
    pub secret: Secret,
    pub policy: PeerPolicy,
    /// Where relay sockets are bound, and the address they are announced as.
    pub relay_bind: IpAddr,
    pub relay_announced: IpAddr,
    pub relay_ports: RangeInclusive<u16>,
    pub allocations: Arc<Quota>,
    pub per_peer: Arc<KeyedQuota<String>>,
    pub metrics: RelayMetrics,
}

/// The relay's counters, as handles made once.
#[derive(Debug, Clone)]
pub struct RelayMetrics {
    allocations: Gauge,
    to_peers: Counter,
    to_clients: Counter,
    dropped: Counter,
}

impl RelayMetrics {
    pub fn new() -> RelayMetrics {
        RelayMetrics {
            allocations: metrics::gauge!(telemetry::TURN_ALLOCATIONS),
            to_peers: metrics::counter!(telemetry::TURN_RELAYED, "direction" => "to_peer"),
            to_clients: metrics::counter!(telemetry::TURN_RELAYED, "direction" => "to_client"),
            dropped: metrics::counter!(telemetry::TURN_DROPPED),
        }
    }
}

/// How the server reaches a client: its UDP address through the listening socket, or the
/// queue of its TCP/TLS connection's writer.
#[derive(Debug, Clone)]
pub enum ClientLink {
    Udp {
        socket: Arc<UdpSocket>,
        client: SocketAddr,
    },
    Stream(mpsc::Sender<Bytes>),
}

impl ClientLink {
    /// Sends without waiting: a client that cannot take more loses the datagram.
    fn send(&self, bytes: &[u8]) -> bool {
        match self {
            ClientLink::Udp { socket, client } => socket.try_send_to(bytes, *client).is_ok(),
            ClientLink::Stream(queue) => queue.try_send(Bytes::copy_from_slice(bytes)).is_ok(),
        }
    }

    /// Whether ChannelData must be padded to four bytes (RFC 8656 §12.5: over TCP and TLS).
    fn pads(&self) -> bool {
        matches!(self, ClientLink::Stream(_))
    }
}

/// An allocation's permissions and channels, as the relay's receiving task reads them.
#[derive(Debug, Default)]
pub struct PeerView {
    permitted: Vec<IpAddr>,
    channels: Vec<(SocketAddr, u16)>,
}

impl PeerView {
    fn channel_of(&self, peer: SocketAddr) -> Option<u16> {
        self.channels
            .iter()
            .find(|(bound, _)| *bound == peer)
            .map(|(_, number)| *number)
    }
}

/// One client's relayed transport address and what it allows.
#[derive(Debug)]
pub struct Allocation {
    username: String,
    /// The Allocate request that made it: a retransmission of it gets the same answer.
    transaction: [u8; 12],
    socket: Arc<UdpSocket>,
    relayed: SocketAddr,
    expires: Instant,
    permissions: HashMap<IpAddr, Instant>,
    channels: HashMap<u16, (SocketAddr, Instant)>,
    view: Arc<ArcSwap<PeerView>>,
    receiving: AbortHandle,
    metrics: RelayMetrics,
    _places: (QuotaGuard, KeyedGuard<String>),
}

impl Drop for Allocation {
    fn drop(&mut self) {
        self.receiving.abort();
        self.metrics.allocations.decrement(1.0);
    }
}

impl Allocation {
    pub fn expired(&self, now: Instant) -> bool {
        self.expires <= now
    }

    /// Forgets permissions and channels past their lifetime.
    pub fn prune(&mut self, now: Instant) {
        let (permissions, channels) = (self.permissions.len(), self.channels.len());
        self.permissions.retain(|_, expires| *expires > now);
        self.channels.retain(|_, (_, expires)| *expires > now);
        if (permissions, channels) != (self.permissions.len(), self.channels.len()) {
            self.publish();
        }
    }

    /// Relays ChannelData's payload to the channel's peer; an unbound channel drops it.
    pub fn relay_channel(&self, relay: &Relay, number: u16, payload: &[u8]) {
        match self.channels.get(&number) {
            Some((peer, _)) => self.send_to_peer(relay, *peer, payload),
            None => relay.metrics.dropped.increment(1),
        }
    }

    /// Relays a Send indication's DATA to its peer, if a permission lets it through.
    fn relay_indication(&self, relay: &Relay, message: &Message) {
        let (Some(peer), Some(data)) = (
            message.xor_address(attr::XOR_PEER_ADDRESS),
            message.get(attr::DATA),
        ) else {
            return relay.metrics.dropped.increment(1);
        };
        if self.permissions.contains_key(&peer.ip()) && relay.policy.permits(peer) {
            self.send_to_peer(relay, peer, data);
        } else {
            relay.metrics.dropped.increment(1);
        }
    }

    fn send_to_peer(&self, relay: &Relay, peer: SocketAddr, payload: &[u8]) {
        match self
            .socket
            .try_send_to(payload, relay.policy.outbound(peer))
        {
            Ok(_) => relay.metrics.to_peers.increment(1),
            Err(_) => relay.metrics.dropped.increment(1),
        }
    }

    fn publish(&self) {
        self.view.store(Arc::new(PeerView {
            permitted: self.permissions.keys().copied().collect(),
            channels: self
                .channels
                .iter()
                .map(|(number, (peer, _))| (*peer, *number))
                .collect(),
        }));
    }
}

/// A request's outcome that is not a success: its code and reason.
struct Failure(u16, &'static str);

/// Who sent an authenticated request, and the key its reply is signed with.
struct Authenticated {
    username: String,
    peer: String,
    key: [u8; 16],
}

impl Relay {
    /// Handles one STUN message from `client` over `link`, whose allocation (if any) is in
    /// `slot`. Writes the reply, if one is due, into `reply` and says so.
    pub fn handle(
        &self,
        message: &Message,
        client: SocketAddr,
        link: &ClientLink,
        slot: &mut Option<Allocation>,
        reply: &mut Vec<u8>,
    ) -> bool {
        match (message.class, message.method) {
            (Class::Indication, method::SEND) => {
                if let Some(allocation) = slot {
                    allocation.relay_indication(self, message);
                }
                false
            }
            (Class::Request, method::BINDING) => {
                Writer::new(reply, method::BINDING, Class::Success, message.transaction)
                    .xor_address(attr::XOR_MAPPED_ADDRESS, client);
                true
            }
            (Class::Request, method) => {
                let now = Instant::now();
                let Some(user) = self.authenticate(message, reply) else {
                    return true;
                };
                let outcome = match method {
                    method::ALLOCATE => self.allocate(message, &user, client, link, slot, now),
                    _ => match slot {
                        None => Err(Failure(437, "Allocation Mismatch")),
                        Some(allocation) if allocation.username != user.username => {
                            Err(Failure(441, "Wrong Credentials"))
                        }
                        Some(allocation) => match method {
                            method::REFRESH => Ok(refresh(message, slot, now)),
                            method::CREATE_PERMISSION => {
                                self.create_permission(message, allocation, now)
                            }
                            method::CHANNEL_BIND => self.channel_bind(message, allocation, now),
                            _ => Err(Failure(400, "Bad Request")),
                        },
                    },
                };
                match outcome {
                    Ok(Success::Allocated) => {
                        let allocation = slot.as_ref().expect("an allocation was just made");
                        let lifetime = allocation.expires.saturating_duration_since(now);
                        Writer::new(reply, method::ALLOCATE, Class::Success, message.transaction)
                            .xor_address(attr::XOR_RELAYED_ADDRESS, allocation.relayed)
                            .u32(attr::LIFETIME, lifetime.as_secs() as u32)
                            .xor_address(attr::XOR_MAPPED_ADDRESS, client)
                            .integrity(&user.key);
                    }
                    Ok(Success::Lifetime(lifetime)) => {
                        Writer::new(reply, method, Class::Success, message.transaction)
                            .u32(attr::LIFETIME, lifetime.as_secs() as u32)
                            .integrity(&user.key);
                    }
                    Ok(Success::Done) => {
                        Writer::new(reply, method, Class::Success, message.transaction)
                            .integrity(&user.key);
                    }
                    Err(Failure(code, reason)) => {
                        tracing::debug!(%client, code, reason, peer = user.peer, "TURN request refused");
                        metrics::counter!(telemetry::TURN_REFUSALS, "code" => code.to_string())
                            .increment(1);
                        Writer::new(reply, method, Class::Error, message.transaction)
                            .error(code, reason)
                            .integrity(&user.key);
                    }
                }
                true
            }
            // Responses and other indications are not for a server.
            _ => false,
        }
    }

    /// Checks the long-term credentials of a request; on failure writes the error reply (a
    /// challenge with a fresh nonce, where the client can do better).
    fn authenticate(&self, message: &Message, reply: &mut Vec<u8>) -> Option<Authenticated> {
        let wall = SystemTime::now();
        let challenge = |reply: &mut Vec<u8>, code: u16, reason: &str| {
            metrics::counter!(telemetry::TURN_REFUSALS, "code" => code.to_string()).increment(1);
            Writer::new(reply, message.method, Class::Error, message.transaction)
                .error(code, reason)
                .attribute(attr::REALM, REALM.as_bytes())
                .attribute(attr::NONCE, self.secret.nonce(wall).as_bytes());
        };
        if !message.has(attr::MESSAGE_INTEGRITY) {
            // The first request of every client: it learns the realm and nonce from this.
            challenge(reply, 401, "Unauthorized");
            return None;
        }
        let (Some(username), Some(_), Some(nonce)) = (
            message.text(attr::USERNAME),
            message.get(attr::REALM),
            message.text(attr::NONCE),
        ) else {
            Writer::new(reply, message.method, Class::Error, message.transaction)
                .error(400, "Bad Request: USERNAME, REALM and NONCE are required");
            return None;
        };
        if !self.secret.nonce_is_fresh(nonce, wall) {
            challenge(reply, 438, "Stale Nonce");
            return None;
        }
        if message.text(attr::REALM) != Some(REALM) {
            challenge(reply, 401, "Unauthorized: wrong realm");
            return None;
        }
        let user = match self.secret.check(username, wall) {
            Ok(user) => user,
            Err(refusal) => {
                tracing::debug!(username, %refusal, "TURN credentials refused");
                let reason = match refusal {
                    Refusal::Expired => "Unauthorized: the credentials expired",
                    Refusal::Malformed => "Unauthorized: unknown username",
                };
                challenge(reply, 401, reason);
                return None;
            }
        };
        let key = stun::long_term_key(username, REALM, &user.password);
        if !message.integrity_matches(&key) {
            tracing::debug!(username, "TURN request with a wrong password");
            challenge(reply, 401, "Unauthorized: wrong password");
            return None;
        }
        if let Some(unknown) = unknown_required_attribute(message) {
            tracing::debug!(username, unknown, "TURN request with an unknown attribute");
            Writer::new(reply, message.method, Class::Error, message.transaction)
                .error(420, "Unknown Attribute")
                .attribute(attr::UNKNOWN_ATTRIBUTES, &unknown.to_be_bytes())
                .integrity(&key);
            return None;
        }
        Some(Authenticated {
            username: username.to_owned(),
            peer: user.peer.to_owned(),
            key,
        })
    }

    fn allocate(
        &self,
        message: &Message,
        user: &Authenticated,
        client: SocketAddr,
        link: &ClientLink,
        slot: &mut Option<Allocation>,
        now: Instant,
    ) -> Result<Success, Failure> {
        if let Some(existing) = slot {
            return if existing.transaction == message.transaction {
                Ok(Success::Allocated)
            } else {
                Err(Failure(437, "Allocation Mismatch"))
            };
        }
        match message.get(attr::REQUESTED_TRANSPORT) {
            Some([UDP, ..]) => {}
            Some(_) => return Err(Failure(442, "Unsupported Transport Protocol")),
            None => return Err(Failure(400, "Bad Request: no REQUESTED-TRANSPORT")),
        }
        let family_v6 = match message.get(attr::REQUESTED_ADDRESS_FAMILY) {
            None | Some([0x01, ..]) => false,
            Some([0x02, ..]) => true,
            Some(_) => return Err(Failure(440, "Address Family not Supported")),
        };
        if family_v6 != self.relay_bind.is_ipv6() {
            return Err(Failure(440, "Address Family not Supported"));
        }
        let per_peer = self
            .per_peer
            .try_take(user.peer.clone())
            .ok_or(Failure(486, "Allocation Quota Reached"))?;
        let total = self
            .allocations
            .try_take()
            .ok_or(Failure(508, "Insufficient Capacity"))?;
        let socket = self
            .bind_relay_socket()
            .ok_or(Failure(508, "Insufficient Capacity: no relay port free"))?;
        let relayed = SocketAddr::new(
            self.relay_announced,
            socket
                .local_addr()
                .map_err(|_| Failure(508, "Insufficient Capacity"))?
                .port(),
        );
        let view = Arc::new(ArcSwap::from_pointee(PeerView::default()));
        let receiving = tokio::spawn(relay_to_client(
            socket.clone(),
            view.clone(),
            link.clone(),
            self.policy.clone(),
            self.metrics.clone(),
        ))
        .abort_handle();
        self.metrics.allocations.increment(1.0);
        metrics::counter!(telemetry::TURN_ALLOCATIONS_TOTAL).increment(1);
        tracing::debug!(%client, %relayed, peer = user.peer, "TURN allocation");
        *slot = Some(Allocation {
            username: user.username.clone(),
            transaction: message.transaction,
            socket,
            relayed,
            expires: now + lifetime(message),
            permissions: HashMap::new(),
            channels: HashMap::new(),
            view,
            receiving,
            metrics: self.metrics.clone(),
            _places: (total, per_peer),
        });
        Ok(Success::Allocated)
    }

    /// A UDP socket on a random free port of the relay range.
    fn bind_relay_socket(&self) -> Option<Arc<UdpSocket>> {
        let (first, last) = (*self.relay_ports.start(), *self.relay_ports.end());
        for _ in 0..PORT_ATTEMPTS {
            let port = rand::random_range(first..=last);
            let Ok(socket) = std::net::UdpSocket::bind((self.relay_bind, port)) else {
                continue;
            };
            if socket.set_nonblocking(true).is_err() {
                continue;
            }
            if let Ok(socket) = UdpSocket::from_std(socket) {
                return Some(Arc::new(socket));
            }
        }
        tracing::warn!(
            "no free relay port in {first}-{last} after {PORT_ATTEMPTS} tries (--turn-relay-ports)"
        );
        None
    }

    fn create_permission(
        &self,
        message: &Message,
        allocation: &mut Allocation,
        now: Instant,
    ) -> Result<Success, Failure> {
        let mut peers = Vec::new();
        for peer in message.xor_addresses(attr::XOR_PEER_ADDRESS) {
            let peer = peer.ok_or(Failure(400, "Bad Request: unreadable XOR-PEER-ADDRESS"))?;
            self.check_peer(allocation, peer.ip())?;
            peers.push(peer.ip());
        }
        if peers.is_empty() {
            return Err(Failure(400, "Bad Request: no XOR-PEER-ADDRESS"));
        }
        for ip in peers {
            allocation.permissions.insert(ip, now + PERMISSION_LIFETIME);
        }
        allocation.publish();
        Ok(Success::Done)
    }

    fn channel_bind(
        &self,
        message: &Message,
        allocation: &mut Allocation,
        now: Instant,
    ) -> Result<Success, Failure> {
        let number = match message.get(attr::CHANNEL_NUMBER) {
            Some([high, low, _, _]) => u16::from_be_bytes([*high, *low]),
            _ => return Err(Failure(400, "Bad Request: no CHANNEL-NUMBER")),
        };
        if !(0x4000..=0x4FFF).contains(&number) {
            return Err(Failure(400, "Bad Request: channel number out of range"));
        }
        let peer = message
            .xor_address(attr::XOR_PEER_ADDRESS)
            .ok_or(Failure(400, "Bad Request: no XOR-PEER-ADDRESS"))?;
        self.check_peer(allocation, peer.ip())?;
        if !self.policy.permits(peer) {
            return Err(Failure(
                403,
                "Forbidden: the relay does not reach that port",
            ));
        }
        let taken_by_other = allocation
            .channels
            .iter()
            .any(|(bound, (to, _))| (*bound == number) != (*to == peer));
        if taken_by_other {
            return Err(Failure(400, "Bad Request: channel or peer bound otherwise"));
        }
        allocation
            .channels
            .insert(number, (peer, now + CHANNEL_LIFETIME));
        allocation
            .permissions
            .insert(peer.ip(), now + PERMISSION_LIFETIME);
        allocation.publish();
        Ok(Success::Done)
    }

    fn check_peer(&self, allocation: &Allocation, ip: IpAddr) -> Result<(), Failure> {
        if ip.is_ipv6() != allocation.relayed.is_ipv6() {
            return Err(Failure(443, "Peer Address Family Mismatch"));
        }
        if !self.policy.permits_ip(ip) {
            return Err(Failure(
                403,
                "Forbidden: the relay does not reach that address",
            ));
        }
        Ok(())
    }
}

enum Success {
    Allocated,
    Lifetime(Duration),
    Done,
}

/// Refresh: a new lifetime, or with LIFETIME 0 the end of the allocation.
fn refresh(message: &Message, slot: &mut Option<Allocation>, now: Instant) -> Success {
    if message.u32(attr::LIFETIME) == Some(0) {
        *slot = None;
        return Success::Lifetime(Duration::ZERO);
    }
    let lifetime = lifetime(message);
    if let Some(allocation) = slot {
        allocation.expires = now + lifetime;
    }
    Success::Lifetime(lifetime)
}

/// The lifetime a request asks for, within what the server gives.
fn lifetime(message: &Message) -> Duration {
    message
        .u32(attr::LIFETIME)
        .map_or(DEFAULT_LIFETIME, |seconds| {
            Duration::from_secs(u64::from(seconds)).clamp(DEFAULT_LIFETIME, MAX_LIFETIME)
        })
}

/// The first attribute that a server must understand (below 0x8000) and this one does not.
fn unknown_required_attribute(message: &Message) -> Option<u16> {
    const KNOWN: [u16; 13] = [
        attr::USERNAME,
        attr::MESSAGE_INTEGRITY,
        attr::CHANNEL_NUMBER,
        attr::LIFETIME,
        attr::XOR_PEER_ADDRESS,
        attr::DATA,
        attr::REALM,
        attr::NONCE,
        attr::REQUESTED_ADDRESS_FAMILY,
        attr::REQUESTED_TRANSPORT,
        attr::DONT_FRAGMENT,
        attr::XOR_MAPPED_ADDRESS,
        attr::ERROR_CODE,
    ];
    message
        .attributes()
        .map_while(Result::ok)
        .map(|attribute| attribute.kind)
        .find(|kind| *kind < 0x8000 && !KNOWN.contains(kind))
}

/// Relays what peers send to the allocation's socket back to the client: over a bound channel
/// as ChannelData, else as a Data indication if a permission lets the peer in.
async fn relay_to_client(
    socket: Arc<UdpSocket>,
    view: Arc<ArcSwap<PeerView>>,
    link: ClientLink,
    policy: PeerPolicy,
    metrics: RelayMetrics,
) {
    // Four bytes of ChannelData header, the datagram, and up to three of padding.
    let mut buf = vec![0u8; 4 + MAX_DATAGRAM + 3];
    let mut indication = Vec::new();
    loop {
        let Ok((length, source)) = socket.recv_from(&mut buf[4..4 + MAX_DATAGRAM]).await else {
            continue;
        };
        let peer = policy.inbound(source);
        let view = view.load();
        let sent = if let Some(number) = view.channel_of(peer) {
            buf[..2].copy_from_slice(&number.to_be_bytes());
            buf[2..4].copy_from_slice(&(length as u16).to_be_bytes());
            let padded = if link.pads() {
                length.div_ceil(4) * 4
            } else {
                length
            };
            buf[4 + length..4 + padded].fill(0);
            link.send(&buf[..4 + padded])
        } else if view.permitted.contains(&peer.ip()) && policy.permits(peer) {
            Writer::new(
                &mut indication,
                method::DATA,
                Class::Indication,
                rand::random(),
            )
            .xor_address(attr::XOR_PEER_ADDRESS, peer)
            .attribute(attr::DATA, &buf[4..4 + length]);
            link.send(&indication)
        } else {
            false
        };
        if sent {
            metrics.to_clients.increment(1);
        } else {
            metrics.dropped.increment(1);
        }
    }
}
