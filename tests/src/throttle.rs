//! A narrow downlink for synthetic peers: a UDP relay between a peer and the server's media
//! socket whose way towards the peer is shaped like a `tc tbf` queue: packets leave at the set
//! rate, wait in a queue of bounded delay, and are dropped when it is full. The way towards the
//! server is not shaped. The peer is given the relay's address as the server's candidate; the
//! server sees the relay's other socket as the peer (ICE-lite takes any address that checks).

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::UdpSocket;
use tokio::sync::Mutex;
use tokio::time::{sleep_until, Instant};

/// The longest a packet waits in the queue before it is dropped instead (a `tbf` latency).
const MAX_QUEUE_DELAY: Duration = Duration::from_millis(200);

/// The rate of a narrowed link, shared by the test and its relays.
#[derive(Debug, Clone, Default)]
pub struct Throttle {
    /// Bits per second towards the peer; 0 is no limit.
    rate: Arc<AtomicU64>,
}

impl Throttle {
    /// A link towards the peer of `bits_per_second`, `None` for no limit.
    pub fn set_rate(&self, bits_per_second: Option<u64>) {
        self.rate
            .store(bits_per_second.unwrap_or(0), Ordering::Relaxed);
    }

    /// A relay to `server` through this link, serving one peer. It runs as long as the runtime.
    pub async fn relay(&self, server: SocketAddr) -> std::io::Result<SocketAddr> {
        let peer_side = Arc::new(UdpSocket::bind("127.0.0.1:0").await?);
        let server_side = Arc::new(UdpSocket::bind("127.0.0.1:0").await?);
        server_side.connect(server).await?;
        let address = peer_side.local_addr()?;
        let peer = Arc::new(Mutex::new(None::<SocketAddr>));
        tokio::spawn(up(peer_side.clone(), server_side.clone(), peer.clone()));
        tokio::spawn(down(server_side, peer_side, peer, self.rate.clone()));
        Ok(address)
    }
}

/// Peer → server, as it comes; notes where the peer sends from.
async fn up(
    peer_side: Arc<UdpSocket>,
    server_side: Arc<UdpSocket>,
    peer: Arc<Mutex<Option<SocketAddr>>>,
) {
    let mut buffer = vec![0; 65_536];
    while let Ok((length, from)) = peer_side.recv_from(&mut buffer).await {
        *peer.lock().await = Some(from);
        if server_side.send(&buffer[..length]).await.is_err() {
            return;
        }
    }
}

/// Server → peer through the shaped queue.
async fn down(
    server_side: Arc<UdpSocket>,
    peer_side: Arc<UdpSocket>,
    peer: Arc<Mutex<Option<SocketAddr>>>,
    rate: Arc<AtomicU64>,
) {
    let mut buffer = vec![0; 65_536];
    let mut queue: VecDeque<(Instant, Vec<u8>)> = VecDeque::new();
    // When the link is free to start the next packet.
    let mut free_at = Instant::now();
    loop {
        let due = queue.front().map(|(at, _)| *at);
        tokio::select! {
            received = server_side.recv(&mut buffer) => {
                let Ok(length) = received else { return };
                let now = Instant::now();
                let bits_per_second = rate.load(Ordering::Relaxed);
                let departure = if bits_per_second == 0 {
                    now
                } else {
                    let start = free_at.max(now);
                    if start - now > MAX_QUEUE_DELAY {
                        continue; // the queue is full: dropped
                    }
                    free_at = start
                        + Duration::from_secs_f64(length as f64 * 8.0 / bits_per_second as f64);
                    start
                };
                queue.push_back((departure, buffer[..length].to_vec()));
            }
            () = sleep_until(due.unwrap_or_else(Instant::now)), if due.is_some() => {}
        }
        let now = Instant::now();
        let to = *peer.lock().await;
        while queue.front().is_some_and(|(at, _)| *at <= now) {
            let Some((_, datagram)) = queue.pop_front() else {
                break;
            };
            if let Some(to) = to {
                let _ = peer_side.send_to(&datagram, to).await;
            }
        }
    }
}
