//! The embedded TURN server's transports: one UDP socket and a TCP listener on the same port
//! (default 3478), and TLS on a second port when the server has a certificate. The UDP task
//! owns the allocations of every UDP client; each TCP or TLS connection's task owns its one
//! allocation. Both read STUN (RFC 8656 §11 framing on streams) and ChannelData and hand them to
//! the [`Relay`].

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, UdpSocket};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;

use super::relay::{Allocation, ClientLink, Relay, MAX_DATAGRAM};
use super::stun::{channel_data, frame_length, Message, HEADER_LEN};
use crate::limits::Quota;

/// How often expired allocations, permissions and channels are let go.
const SWEEP: Duration = Duration::from_secs(1);
/// A TCP or TLS connection must finish its handshake and send a whole first message in this.
const FIRST_MESSAGE: Duration = Duration::from_secs(10);
/// A connection that has had no allocation for this long is closed.
const IDLE_WITHOUT_ALLOCATION: Duration = Duration::from_secs(60);
/// Datagrams queued for a slow TCP/TLS client before it loses some.
const STREAM_QUEUE: usize = 256;

/// The ports the TURN server listens on, once bound.
#[derive(Debug, Clone, Copy)]
pub struct TurnPorts {
    /// UDP and TCP.
    pub plain: u16,
    pub tls: Option<u16>,
}

/// The running TURN server; dropping it stops every transport and allocation.
pub struct TurnServer {
    pub ports: TurnPorts,
    _tasks: JoinSet<()>,
}

impl TurnServer {
    /// Binds the transports (a taken port fails the start) and serves them.
    pub fn start(
        relay: Relay,
        sockets: (std::net::UdpSocket, std::net::TcpListener),
        tls: Option<(std::net::TcpListener, TlsAcceptor)>,
        max_connections: usize,
    ) -> anyhow::Result<TurnServer> {
        let relay = Arc::new(relay);
        let (udp, tcp) = sockets;
        let plain = udp.local_addr()?.port();
        udp.set_nonblocking(true)?;
        tcp.set_nonblocking(true)?;
        let udp = Arc::new(UdpSocket::from_std(udp).context("the TURN UDP socket")?);
        let tcp = TcpListener::from_std(tcp).context("the TURN TCP listener")?;
        let connections = Quota::new(max_connections);
        let mut tasks = JoinSet::new();
        tasks.spawn(serve_udp(udp, relay.clone()));
        tasks.spawn(accept(tcp, None, relay.clone(), connections.clone()));
        let tls_port = match tls {
            Some((listener, acceptor)) => {
                let port = listener.local_addr()?.port();
                listener.set_nonblocking(true)?;
                let listener = TcpListener::from_std(listener).context("the TURN TLS listener")?;
                tasks.spawn(accept(listener, Some(acceptor), relay, connections));
                Some(port)
            }
            None => None,
        };
        Ok(TurnServer {
            ports: TurnPorts {
                plain,
                tls: tls_port,
            },
            _tasks: tasks,
        })
    }
}

/// Every UDP client's requests and ChannelData, and their allocations' expiry.
async fn serve_udp(socket: Arc<UdpSocket>, relay: Arc<Relay>) {
    let mut allocations: HashMap<SocketAddr, Allocation> = HashMap::new();
    let mut buf = vec![0u8; MAX_DATAGRAM];
    let mut reply = Vec::new();
    let mut sweep = tokio::time::interval(SWEEP);
    loop {
        let (length, client) = tokio::select! {
            received = socket.recv_from(&mut buf) => match received {
                Ok(received) => received,
                // An ICMP error from an earlier send, most likely: nothing to do about it here.
                Err(_) => continue,
            },
            _ = sweep.tick() => {
                let now = Instant::now();
                allocations.retain(|_, allocation| !allocation.expired(now));
                allocations.values_mut().for_each(|allocation| allocation.prune(now));
                continue;
            }
        };
        let datagram = &buf[..length];
        if let Some((number, payload)) = channel_data(datagram) {
            if let Some(allocation) = allocations.get(&client) {
                allocation.relay_channel(&relay, number, payload);
            }
            continue;
        }
        let Ok(message) = Message::parse(datagram) else {
            continue;
        };
        let mut slot = allocations.remove(&client);
        let link = ClientLink::Udp {
            socket: socket.clone(),
            client,
        };
        if relay.handle(&message, client, &link, &mut slot, &mut reply) {
            let _ = socket.try_send_to(&reply, client);
        }
        if let Some(allocation) = slot {
            allocations.insert(client, allocation);
        }
    }
}

/// Accepts TCP (or, with `tls`, TLS) connections up to the cap, each served by its own task.
async fn accept(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    relay: Arc<Relay>,
    connections: Arc<Quota>,
) {
    loop {
        let (stream, client) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(err) => {
                tracing::warn!(%err, "cannot accept a TURN connection");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Some(place) = connections.try_take() else {
            tracing::debug!(%client, "TURN connection refused: all connections taken");
            continue;
        };
        let _ = stream.set_nodelay(true);
        let (relay, tls) = (relay.clone(), tls.clone());
        tokio::spawn(async move {
            let _place = place;
            match tls {
                None => serve_stream(stream, client, relay).await,
                Some(acceptor) => {
                    match tokio::time::timeout(FIRST_MESSAGE, acceptor.accept(stream)).await {
                        Ok(Ok(stream)) => serve_stream(stream, client, relay).await,
                        Ok(Err(err)) => tracing::debug!(%client, %err, "TURN TLS handshake failed"),
                        Err(_) => tracing::debug!(%client, "TURN TLS handshake too slow"),
                    }
                }
            }
        });
    }
}

/// One TCP or TLS connection: a stream of STUN messages and ChannelData (padded to four bytes)
/// each way. It ends when the client closes it, sends garbage, lets its allocation expire or
/// never allocates.
async fn serve_stream<S: AsyncRead + AsyncWrite>(stream: S, client: SocketAddr, relay: Arc<Relay>) {
    let (mut reader, mut writer) = tokio::io::split(stream);
    let (queue, mut queued) = mpsc::channel(STREAM_QUEUE);
    let link = ClientLink::Stream(queue);
    let mut slot: Option<Allocation> = None;
    let mut input = BytesMut::with_capacity(4096);
    let mut reply = Vec::new();
    let mut sweep = tokio::time::interval(SWEEP);
    let started = Instant::now();
    let mut last_allocation = started;
    let mut spoke = false;
    loop {
        tokio::select! {
            read = reader.read_buf(&mut input) => {
                if !matches!(read, Ok(n) if n > 0) {
                    return;
                }
                while let Some(length) = frame_length(&input) {
                    let Some(length) = length else {
                        tracing::debug!(%client, "TURN connection sent something that is not STUN or ChannelData");
                        return;
                    };
                    if input.len() < length {
                        break;
                    }
                    let frame = input.split_to(length);
                    spoke = true;
                    if let Some((number, payload)) = channel_data(&frame) {
                        if let Some(allocation) = &slot {
                            allocation.relay_channel(&relay, number, payload);
                        }
                        continue;
                    }
                    let Ok(message) = Message::parse(&frame) else {
                        return;
                    };
                    if relay.handle(&message, client, &link, &mut slot, &mut reply)
                        && writer.write_all(&reply).await.is_err()
                    {
                        return;
                    }
                }
                input.reserve(4096);
            }
            Some(datagram) = queued.recv() => {
                if writer.write_all(&datagram).await.is_err() {
                    return;
                }
            }
            _ = sweep.tick() => {
                let now = Instant::now();
                if !spoke && now - started > FIRST_MESSAGE {
                    return;
                }
                match &mut slot {
                    Some(allocation) if allocation.expired(now) => return,
                    Some(allocation) => {
                        allocation.prune(now);
                        last_allocation = now;
                    }
                    None if now - last_allocation > IDLE_WITHOUT_ALLOCATION => return,
                    None => {}
                }
            }
        }
        if input.len() > MAX_DATAGRAM + HEADER_LEN {
            return;
        }
    }
}
