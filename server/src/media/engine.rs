//! The media engine as the signaling side sees it. `--media-workers` threads each run a
//! [`crate::media::worker`] loop that owns the peer connections of the rooms placed on it, one
//! UDP socket and one ICE-TCP listener (both on `--media-port`, then +1 per worker). A room is placed on one worker
//! ([`MediaEngine::place_room`]) and talks to it through its [`RoomMedia`]; each peer's media
//! connection is an [`EndpointHandle`] that sends the worker commands in order. The worker
//! answers with [`EndpointReport`]s, types of this module: the media side never imports the
//! signaling side.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::Context;
use shared::{PeerId, TrackId};
use thiserror::Error;
use tokio::sync::mpsc;

use crate::limits::{Quota, QuotaGuard};
use crate::media::addresses::machine_addresses;
use crate::media::codec::MediaKind;
use crate::media::demux::EndpointKey;
use crate::media::simulcast::Layer;
use crate::media::worker::{self, WorkerSettings};
use crate::ports::bind_udp_and_tcp;
use crate::Config;

/// Commands an endpoint may have waiting on its worker: a negotiation and the candidates of
/// one offer fit many times over; a room that finds more drops the peer.
const COMMAND_CAPACITY: usize = 256;

/// A room, as its worker knows it.
pub type RoomKey = u64;

/// What the signaling side asks of a worker.
pub(crate) enum Command {
    AddEndpoint {
        key: EndpointKey,
        room: RoomKey,
        peer_id: PeerId,
        reports: Reports,
        pending: Arc<AtomicUsize>,
    },
    Negotiate {
        key: EndpointKey,
        negotiation: Negotiation,
    },
    RemoteCandidate {
        key: EndpointKey,
        candidate: String,
    },
    RemoveEndpoint {
        key: EndpointKey,
    },
    /// The client wishes to receive `track_id` in simulcast layer `layer`.
    SetWish {
        key: EndpointKey,
        track_id: TrackId,
        layer: Layer,
    },
    /// The test hook: panic while handling this endpoint's command.
    Panic {
        key: EndpointKey,
    },
    /// The server is stopping: close every connection and end.
    Stop,
}

/// One round of negotiation: the client's offer, the tracks it publishes, and the tracks it
/// should receive (the full set: ones missing from it stop).
pub struct Negotiation {
    pub offer: String,
    /// Each track the client publishes, by the mid it sends it on.
    pub publish: Vec<(String, TrackId, MediaKind)>,
    pub subscribe: Vec<Subscription>,
}

/// A track of another peer of the room to send to this one.
pub struct Subscription {
    pub track_id: TrackId,
    pub kind: MediaKind,
    /// The publisher's id: its audio and video share this stream, so a client shows them together.
    pub stream_id: String,
}

/// What an endpoint tells its room.
pub enum EndpointEvent {
    /// The answer to the last offer; `sending` maps the mids the server sends on (including
    /// stopped ones) to their tracks.
    Answer {
        sdp: String,
        sending: std::collections::BTreeMap<String, TrackId>,
    },
    Candidate(String),
    Failed(String),
    /// The endpoint now receives `track_id` (a subscription) in simulcast layer `layer`.
    LayerSwitched {
        track_id: TrackId,
        layer: Layer,
    },
    /// One of the endpoint's audio tracks began (`speaking`) or stopped carrying speech. At
    /// most a few a second per track: [`super::voice`] holds each state for a while.
    VoiceActivity {
        track_id: TrackId,
        speaking: bool,
    },
}

/// An endpoint's news for its room, with whose endpoint it is.
pub struct EndpointReport {
    pub peer_id: PeerId,
    pub event: EndpointEvent,
}

/// Where a room's endpoints report. Unbounded, because a worker never waits on a room; what
/// bounds it is the commands: each yields a handful of reports, and an endpoint has at most
/// [`COMMAND_CAPACITY`] waiting.
pub type Reports = mpsc::UnboundedSender<EndpointReport>;

/// The endpoint cannot take more commands: its queue is full, or its worker is gone.
#[derive(Debug, Error)]
#[error("the peer's media connection is not taking requests (too many queued, or it failed)")]
pub struct EndpointBusy;

/// How the media engine is set up.
#[derive(Debug, Clone)]
pub struct MediaSettings {
    pub bind_ip: IpAddr,
    /// The addresses put in the candidates, the first preferred: `--announce-ip`, else the
    /// bound one; on loopback, also the machine's other addresses (see [`super::addresses`]).
    pub candidate_ips: Vec<IpAddr>,
    /// The first worker's UDP port (the next ones follow); 0 for any free ports.
    pub first_port: u16,
    pub workers: usize,
    pub ice_timeout: Duration,
    pub max_peer_connections: usize,
}

impl MediaSettings {
    /// The media settings of `config`, for a server whose HTTP listener is at `http` (the
    /// workers' TCP ports must not be its port).
    pub fn from_config(config: &Config, http: SocketAddr) -> anyhow::Result<MediaSettings> {
        let candidate_ip = config.announce_ip.unwrap_or(config.media_ip);
        anyhow::ensure!(
            !candidate_ip.is_unspecified(),
            "--media-ip {} is every address, which a browser cannot be told: set --announce-ip to the one peers reach",
            config.media_ip
        );
        let workers = match config.media_workers {
            0 => std::thread::available_parallelism().map_or(1, |cores| cores.get()),
            workers => workers,
        };
        let first = usize::from(config.media_port);
        let same_address = http.ip() == config.media_ip
            || http.ip().is_unspecified()
            || config.media_ip.is_unspecified();
        let ports = first..first + workers;
        anyhow::ensure!(
            first == 0 || !same_address || !ports.contains(&usize::from(http.port())),
            "the media ports {}-{} (--media-port, one per worker, UDP and TCP) include the HTTP port {} (--port)",
            ports.start,
            ports.end - 1,
            http.port()
        );
        // On loopback, the sockets also answer on the machine's other addresses, which the
        // candidates offer after it: a browser that shuns loopback (Firefox) uses those.
        let others = match config.announce_ip {
            None if candidate_ip.is_loopback() => machine_addresses(candidate_ip),
            _ => Vec::new(),
        };
        let bind_ip = match (others.is_empty(), config.media_ip) {
            (true, ip) => ip,
            (false, IpAddr::V4(_)) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            (false, IpAddr::V6(_)) => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
        };
        let candidate_ips = std::iter::once(candidate_ip).chain(others).collect();
        Ok(MediaSettings {
            bind_ip,
            candidate_ips,
            first_port: config.media_port,
            workers,
            ice_timeout: config.limits.ice_timeout,
            max_peer_connections: config.limits.max_peers_total,
        })
    }
}

/// A worker as the engine reaches it.
struct WorkerLink {
    commands: mpsc::UnboundedSender<Command>,
    /// Endpoints placed on it now: where the next room goes.
    endpoints: Arc<AtomicUsize>,
    meters: Arc<WorkerMeters>,
}

/// What a worker counts as it goes, for the engine to read.
#[derive(Debug, Default)]
pub struct WorkerMeters {
    /// Nanoseconds its loop has spent working, not waiting.
    pub busy: AtomicU64,
    /// Packets it has sent to subscribers.
    pub forwarded_packets: AtomicU64,
}

/// How loaded a worker is.
#[derive(Debug, Clone, Copy)]
pub struct WorkerLoad {
    pub peer_connections: usize,
    /// The time its loop has spent working (not waiting) since it started.
    pub busy: Duration,
    /// The packets it has forwarded since it started.
    pub forwarded_packets: u64,
}

/// The media workers. Dropping the engine (and every room's [`RoomMedia`]) stops them.
pub struct MediaEngine {
    workers: Vec<WorkerLink>,
    /// Each worker's port (UDP and TCP), in worker order.
    ports: Vec<u16>,
    /// The addresses the workers' candidates name.
    candidate_ips: Vec<IpAddr>,
    peer_connections: Arc<Quota>,
    next_room: AtomicU64,
    threads: Mutex<Vec<JoinHandle<()>>>,
    /// The commands of workers that are not there (see [`MediaEngine::unattended`]).
    _parked: Mutex<Vec<mpsc::UnboundedReceiver<Command>>>,
}

impl MediaEngine {
    /// Binds every worker's socket (so a taken port fails the start) and starts the workers.
    pub fn start(settings: &MediaSettings) -> anyhow::Result<Arc<MediaEngine>> {
        let mut workers = Vec::new();
        let mut ports = Vec::new();
        let mut threads = Vec::new();
        for index in 0..settings.workers {
            let port = match settings.first_port {
                0 => 0,
                first => u16::try_from(usize::from(first) + index)
                    .context("--media-port leaves no room for every worker's port")?,
            };
            let (socket, listener) = bind_udp_and_tcp(
                settings.bind_ip,
                port,
                "the media port (--media-ip, --media-port)",
            )?;
            let bound = socket.local_addr()?;
            let (commands, receiver) = mpsc::unbounded_channel();
            let meters = Arc::new(WorkerMeters::default());
            let worker_settings = WorkerSettings {
                candidates: settings
                    .candidate_ips
                    .iter()
                    .map(|ip| SocketAddr::new(*ip, bound.port()))
                    .collect(),
                ice_timeout: settings.ice_timeout,
                max_tcp_links: settings.max_peer_connections,
            };
            let thread = std::thread::Builder::new()
                .name(format!("media-{index}"))
                .spawn({
                    let meters = meters.clone();
                    move || worker::run(socket, listener, worker_settings, receiver, meters)
                })
                .context("cannot start a media worker")?;
            tracing::info!(worker = index, address = %bound, "media worker listening (UDP and ICE-TCP)");
            threads.push(thread);
            ports.push(bound.port());
            workers.push(WorkerLink {
                commands,
                endpoints: Arc::default(),
                meters,
            });
        }
        Ok(Arc::new(MediaEngine {
            workers,
            ports,
            candidate_ips: settings.candidate_ips.clone(),
            peer_connections: Quota::new(settings.max_peer_connections),
            next_room: AtomicU64::new(0),
            threads: Mutex::new(threads),
            _parked: Mutex::default(),
        }))
    }

    /// An engine with one worker that never runs: its commands pile up unread (until each
    /// endpoint's queue is full). What rooms run with when they are driven without sockets.
    pub fn unattended(max_peer_connections: usize) -> Arc<MediaEngine> {
        let (commands, receiver) = mpsc::unbounded_channel();
        Arc::new(MediaEngine {
            workers: vec![WorkerLink {
                commands,
                endpoints: Arc::default(),
                meters: Arc::default(),
            }],
            ports: Vec::new(),
            candidate_ips: Vec::new(),
            peer_connections: Quota::new(max_peer_connections),
            next_room: AtomicU64::new(0),
            threads: Mutex::default(),
            _parked: Mutex::new(vec![receiver]),
        })
    }

    /// The workers' ports (UDP and TCP), in worker order.
    pub fn ports(&self) -> &[u16] {
        &self.ports
    }

    /// The addresses the workers' candidates name, the preferred first.
    pub fn candidate_ips(&self) -> &[IpAddr] {
        &self.candidate_ips
    }

    /// Peer connections open now, across all rooms.
    pub fn peer_connections(&self) -> usize {
        self.peer_connections.used()
    }

    /// Each worker's load, in worker order: how it is spread.
    pub fn worker_loads(&self) -> Vec<WorkerLoad> {
        self.workers
            .iter()
            .map(|worker| WorkerLoad {
                peer_connections: worker.endpoints.load(Ordering::Relaxed),
                busy: Duration::from_nanos(worker.meters.busy.load(Ordering::Relaxed)),
                forwarded_packets: worker.meters.forwarded_packets.load(Ordering::Relaxed),
            })
            .collect()
    }

    /// Places a new room on the worker with the fewest endpoints now.
    pub fn place_room(&self) -> RoomMedia {
        let worker = self
            .workers
            .iter()
            .min_by_key(|worker| worker.endpoints.load(Ordering::Relaxed))
            .expect("an engine has a worker");
        RoomMedia {
            room: self.next_room.fetch_add(1, Ordering::Relaxed),
            commands: worker.commands.clone(),
            endpoints: worker.endpoints.clone(),
            peer_connections: self.peer_connections.clone(),
        }
    }

    /// Stops the workers once every room is gone, closing their peer connections; waits at most
    /// `grace` for them.
    pub fn stop(&self, grace: Duration) {
        let threads = std::mem::take(&mut *self.threads.lock().unwrap_or_else(|e| e.into_inner()));
        for worker in &self.workers {
            let _ = worker.commands.send(Command::Stop);
        }
        let deadline = std::time::Instant::now() + grace;
        for thread in threads {
            while !thread.is_finished() && std::time::Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(5));
            }
            if thread.is_finished() {
                let _ = thread.join();
            }
        }
    }
}

/// A room's way to its worker.
pub struct RoomMedia {
    room: RoomKey,
    commands: mpsc::UnboundedSender<Command>,
    endpoints: Arc<AtomicUsize>,
    peer_connections: Arc<Quota>,
}

static NEXT_ENDPOINT: AtomicU64 = AtomicU64::new(0);

impl RoomMedia {
    /// Starts the media connection of `peer_id`, if the server may open one more.
    pub fn add_endpoint(
        &self,
        peer_id: PeerId,
        reports: Reports,
    ) -> Result<EndpointHandle, String> {
        let seat = self.peer_connections.try_take().ok_or_else(|| {
            format!(
                "the server holds its limit of {} peer connections (--max-peers-total)",
                self.peer_connections.max()
            )
        })?;
        let key = NEXT_ENDPOINT.fetch_add(1, Ordering::Relaxed);
        let pending = Arc::new(AtomicUsize::new(0));
        let command = Command::AddEndpoint {
            key,
            room: self.room,
            peer_id,
            reports,
            pending: pending.clone(),
        };
        self.commands
            .send(command)
            .map_err(|_| "the media engine has stopped".to_owned())?;
        self.endpoints.fetch_add(1, Ordering::Relaxed);
        Ok(EndpointHandle {
            key,
            commands: self.commands.clone(),
            pending,
            endpoints: self.endpoints.clone(),
            _seat: seat,
        })
    }
}

/// The room's side of a peer's media connection. Dropping it closes the connection.
pub struct EndpointHandle {
    key: EndpointKey,
    commands: mpsc::UnboundedSender<Command>,
    /// Commands sent and not yet taken by the worker.
    pending: Arc<AtomicUsize>,
    endpoints: Arc<AtomicUsize>,
    _seat: QuotaGuard,
}

impl EndpointHandle {
    pub fn negotiate(&self, negotiation: Negotiation) -> Result<(), EndpointBusy> {
        self.send(Command::Negotiate {
            key: self.key,
            negotiation,
        })
    }

    pub fn add_candidate(&self, candidate: String) -> Result<(), EndpointBusy> {
        self.send(Command::RemoteCandidate {
            key: self.key,
            candidate,
        })
    }

    /// The client wishes to receive `track_id` in simulcast `layer` (when it is arriving).
    pub fn set_wish(&self, track_id: TrackId, layer: Layer) -> Result<(), EndpointBusy> {
        self.send(Command::SetWish {
            key: self.key,
            track_id,
            layer,
        })
    }

    pub fn inject_panic(&self) {
        let _ = self.send(Command::Panic { key: self.key });
    }

    fn send(&self, command: Command) -> Result<(), EndpointBusy> {
        if self.pending.load(Ordering::Relaxed) >= COMMAND_CAPACITY {
            return Err(EndpointBusy);
        }
        self.pending.fetch_add(1, Ordering::Relaxed);
        self.commands.send(command).map_err(|_| EndpointBusy)
    }
}

impl Drop for EndpointHandle {
    fn drop(&mut self) {
        let _ = self
            .commands
            .send(Command::RemoveEndpoint { key: self.key });
        self.endpoints.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(port: u16, media_port: u16, workers: usize) -> anyhow::Result<MediaSettings> {
        let config = Config {
            media_port,
            media_workers: workers,
            ..Config::defaults()
        };
        MediaSettings::from_config(&config, SocketAddr::from(([127, 0, 0, 1], port)))
    }

    #[test]
    fn the_default_media_ports_leave_the_http_port_alone() {
        let config = Config::defaults();
        let http = SocketAddr::from(([127, 0, 0, 1], config.port));
        assert!(MediaSettings::from_config(&config, http).is_ok());
    }

    #[test]
    fn media_ports_that_take_the_http_port_are_refused_with_both_flags_named() {
        let err = settings(4002, 4001, 2).unwrap_err().to_string();
        assert!(
            err.contains("--media-port") && err.contains("--port"),
            "{err}"
        );
        assert!(settings(4003, 4001, 2).is_ok());
        // Free ports never collide.
        assert!(settings(4000, 0, 2).is_ok());
    }
}
