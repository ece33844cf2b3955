//! Load scenarios for the benchmark: many synthetic peers on the real protocol against a server
//! process, and the figures that matter — forwarded packets and bits per second, the server's
//! CPU time per forwarded packet and its memory (read from `/proc/<pid>`), loss, one-way latency
//! and join time — measured over a window once every peer receives what it should.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::Context;
use serde::Serialize;
use shared::TrackId;

use crate::synthetic::{PeerOptions, SyntheticPeer};

/// Linux's USER_HZ: the unit of utime and stime in /proc/<pid>/stat.
const CLOCK_TICKS_PER_SECOND: f64 = 100.0;

/// A generated publisher: ≈ 1.5 Mbit/s of 720p-class video at 30 fps (five 1,250-byte packets a
/// frame, a keyframe every 3 s) and Opus in 20 ms frames.
pub fn publisher(name: &str) -> PeerOptions {
    PeerOptions {
        video_packet_size: 1_250,
        video_packets_per_frame: 5,
        ..PeerOptions::publishing(name)
    }
}

/// CPU time and memory of one process, from /proc.
#[derive(Debug, Clone, Copy)]
pub struct ProcessSample {
    pub cpu_seconds: f64,
    pub rss_bytes: u64,
}

impl ProcessSample {
    pub fn read(pid: u32) -> anyhow::Result<ProcessSample> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .with_context(|| format!("no process {pid}"))?;
        // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
        let fields: Vec<&str> = stat
            .rsplit_once(')')
            .map(|(_, rest)| rest.split_whitespace().collect())
            .unwrap_or_default();
        let ticks = |index: usize| -> f64 {
            fields
                .get(index)
                .and_then(|field| field.parse::<f64>().ok())
                .unwrap_or(0.0)
        };
        let cpu_seconds = (ticks(11) + ticks(12)) / CLOCK_TICKS_PER_SECOND;
        Ok(ProcessSample {
            cpu_seconds,
            rss_bytes: crate::process::memory_of(pid, "VmRSS")?,
        })
    }

    /// The sum over `pids`, if there are any and each can be read.
    fn read_all(pids: &[u32]) -> Option<ProcessSample> {
        let samples: Vec<ProcessSample> = pids
            .iter()
            .map(|pid| ProcessSample::read(*pid).ok())
            .collect::<Option<_>>()?;
        (!samples.is_empty()).then(|| ProcessSample {
            cpu_seconds: samples.iter().map(|sample| sample.cpu_seconds).sum(),
            rss_bytes: samples.iter().map(|sample| sample.rss_bytes).sum(),
        })
    }
}

/// The figures of one measured window.
#[derive(Debug, Clone, Serialize)]
pub struct Figures {
    pub label: String,
    pub peers: usize,
    pub publishers: usize,
    /// Subscriber tracks being forwarded (one publisher track to one subscriber).
    pub forwarded_streams: usize,
    pub window_seconds: f64,
    pub forwarded_packets_per_second: f64,
    pub forwarded_mbit_per_second: f64,
    pub server_cpu_percent: Option<f64>,
    pub server_cpu_us_per_packet: Option<f64>,
    pub generator_cpu_percent: f64,
    pub loss_percent: f64,
    pub corrupt_packets: u64,
    pub latency_p50_us: u64,
    pub latency_p99_us: u64,
    pub latency_max_us: u64,
    /// Join (socket open) → first media packet, over peers that joined a room with media in it.
    pub join_to_media_p50_ms: Option<f64>,
    pub join_to_media_max_ms: Option<f64>,
    pub server_rss_mb: Option<f64>,
    pub server_rss_per_peer_kb: Option<f64>,
}

impl Figures {
    /// Where the generator itself may be what limits the figures.
    pub fn generator_is_bottleneck(&self) -> bool {
        self.generator_cpu_percent > 80.0
    }
}

/// A set of synthetic peers under measurement.
pub struct Load {
    pub peers: Vec<SyntheticPeer>,
    /// Which peers joined a room where media already flowed, for the join time.
    pub late_joiners: Vec<usize>,
    /// The server's processes (a cluster's nodes), whose CPU and memory are summed.
    pub server_pids: Vec<u32>,
}

/// Counters at one instant, to subtract.
struct Snapshot {
    at: Instant,
    packets: u64,
    bytes: u64,
    latency_marks: BTreeMap<(usize, TrackId), usize>,
    server: Option<ProcessSample>,
    generator: Option<ProcessSample>,
}

impl Load {
    pub fn new(server_pids: Vec<u32>) -> Load {
        Load {
            peers: Vec::new(),
            late_joiners: Vec::new(),
            server_pids,
        }
    }

    pub async fn join(
        &mut self,
        socket_url: &str,
        room: &str,
        options: PeerOptions,
        late: bool,
    ) -> anyhow::Result<()> {
        let peer = SyntheticPeer::join(socket_url, room, options).await?;
        if late {
            self.late_joiners.push(self.peers.len());
        }
        self.peers.push(peer);
        Ok(())
    }

    /// Tracks each peer should receive: every track published by another peer of its room.
    fn expected(&self, rooms: &[usize]) -> Vec<Vec<TrackId>> {
        let published: Vec<Vec<TrackId>> = self
            .peers
            .iter()
            .map(|peer| peer.state(|state| state.published.keys().cloned().collect()))
            .collect();
        (0..self.peers.len())
            .map(|index| {
                (0..self.peers.len())
                    .filter(|other| *other != index && rooms[*other] == rooms[index])
                    .flat_map(|other| published[other].clone())
                    .collect()
            })
            .collect()
    }

    /// Waits until peer `index` sends every track it publishes (its connection is up), so
    /// peers that join after it join a room where media flows.
    pub async fn wait_until_sending(&self, index: usize, timeout: Duration) -> anyhow::Result<()> {
        self.peers[index]
            .wait_until("the publisher's media", timeout, |state| {
                !state.published.is_empty()
                    && state
                        .published
                        .values()
                        .all(|sent| sent.packets.load(Ordering::Relaxed) > 0)
            })
            .await
    }

    /// Waits until every peer receives every track of its room (`rooms[i]` is peer i's room).
    pub async fn wait_until_flowing(
        &self,
        rooms: &[usize],
        timeout: Duration,
    ) -> anyhow::Result<()> {
        let expected = self.expected(rooms);
        for (peer, tracks) in self.peers.iter().zip(&expected) {
            peer.wait_until("media from every peer of the room", timeout, |state| {
                tracks.iter().all(|id| {
                    state
                        .received
                        .get(id)
                        .is_some_and(|received| received.packets > 0)
                })
            })
            .await?;
        }
        Ok(())
    }

    fn snapshot(&self) -> Snapshot {
        let mut packets = 0;
        let mut bytes = 0;
        let mut latency_marks = BTreeMap::new();
        for (index, peer) in self.peers.iter().enumerate() {
            peer.state(|state| {
                for (id, received) in &state.received {
                    packets += received.packets;
                    bytes += received.bytes;
                    latency_marks.insert((index, id.clone()), received.latencies_us.len());
                }
            });
        }
        Snapshot {
            at: Instant::now(),
            packets,
            bytes,
            latency_marks,
            server: ProcessSample::read_all(&self.server_pids),
            generator: ProcessSample::read(std::process::id()).ok(),
        }
    }

    /// Measures for `window`, printing progress every few seconds.
    pub async fn measure(&self, label: &str, window: Duration) -> Figures {
        let start = self.snapshot();
        let progress = Duration::from_secs(5);
        let end_at = start.at + window;
        while Instant::now() + progress < end_at {
            tokio::time::sleep(progress).await;
            let now = self.snapshot();
            let seconds = now.at.duration_since(start.at).as_secs_f64();
            eprintln!(
                "  {label}: {:>5.1} s, {:>9.0} packets/s forwarded",
                seconds,
                (now.packets - start.packets) as f64 / seconds
            );
        }
        tokio::time::sleep(end_at.saturating_duration_since(Instant::now())).await;
        let end = self.snapshot();
        self.figures(label, &start, &end)
    }

    fn figures(&self, label: &str, start: &Snapshot, end: &Snapshot) -> Figures {
        let seconds = end.at.duration_since(start.at).as_secs_f64().max(1e-9);
        let packets = end.packets - start.packets;
        let mut latencies = Vec::new();
        let (mut lost, mut received_total, mut corrupt, mut streams) = (0u64, 0u64, 0u64, 0usize);
        let mut join_ms = Vec::new();
        for (index, peer) in self.peers.iter().enumerate() {
            peer.state(|state| {
                for (id, received) in &state.received {
                    let from = start
                        .latency_marks
                        .get(&(index, id.clone()))
                        .copied()
                        .unwrap_or(0);
                    latencies.extend_from_slice(
                        &received.latencies_us[from.min(received.latencies_us.len())..],
                    );
                    lost += received.lost();
                    received_total += received.packets;
                    corrupt += received.corrupt;
                    streams += 1;
                }
                if self.late_joiners.contains(&index) {
                    if let Some(first) =
                        state.received.values().filter_map(|r| r.first_packet).min()
                    {
                        join_ms.push(first.as_secs_f64() * 1000.0);
                    }
                }
            });
        }
        latencies.sort_unstable();
        join_ms.sort_by(f64::total_cmp);
        let quantile = |q: f64| {
            latencies
                .get(((latencies.len() as f64 - 1.0) * q).round() as usize)
                .copied()
                .unwrap_or(0)
        };
        let server_cpu = match (start.server, end.server) {
            (Some(a), Some(b)) => Some(b.cpu_seconds - a.cpu_seconds),
            _ => None,
        };
        let generator_cpu = match (start.generator, end.generator) {
            (Some(a), Some(b)) => b.cpu_seconds - a.cpu_seconds,
            _ => 0.0,
        };
        let publishers = self
            .peers
            .iter()
            .filter(|peer| peer.state(|state| !state.published.is_empty()))
            .count();
        let rss = end.server.map(|sample| sample.rss_bytes as f64);
        Figures {
            label: label.to_owned(),
            peers: self.peers.len(),
            publishers,
            forwarded_streams: streams,
            window_seconds: seconds,
            forwarded_packets_per_second: packets as f64 / seconds,
            forwarded_mbit_per_second: (end.bytes - start.bytes) as f64 * 8.0 / seconds / 1e6,
            server_cpu_percent: server_cpu.map(|cpu| cpu / seconds * 100.0),
            server_cpu_us_per_packet: server_cpu
                .filter(|_| packets > 0)
                .map(|cpu| cpu * 1e6 / packets as f64),
            generator_cpu_percent: generator_cpu / seconds * 100.0,
            loss_percent: if received_total + lost == 0 {
                0.0
            } else {
                lost as f64 * 100.0 / (received_total + lost) as f64
            },
            corrupt_packets: corrupt,
            latency_p50_us: quantile(0.5),
            latency_p99_us: quantile(0.99),
            latency_max_us: latencies.last().copied().unwrap_or(0),
            join_to_media_p50_ms: join_ms.get(join_ms.len() / 2).copied(),
            join_to_media_max_ms: join_ms.last().copied(),
            server_rss_mb: rss.map(|rss| rss / 1e6),
            server_rss_per_peer_kb: rss.map(|rss| rss / 1e3 / self.peers.len().max(1) as f64),
        }
    }

    /// Packets the publishers have sent so far, over all their tracks.
    pub fn packets_sent(&self) -> u64 {
        self.peers
            .iter()
            .map(|peer| {
                peer.state(|state| {
                    state
                        .published
                        .values()
                        .map(|sent| sent.packets.load(Ordering::Relaxed))
                        .sum::<u64>()
                })
            })
            .sum()
    }

    pub async fn leave(self) {
        for peer in self.peers {
            peer.leave().await;
        }
    }
}

/// A table of figures, one row each.
pub fn table(rows: &[Figures]) -> String {
    let mut out =
        format!(
        "{:<22} {:>5} {:>7} {:>10} {:>8} {:>8} {:>9} {:>7} {:>6} {:>8} {:>8} {:>8} {:>8} {:>9}\n",
        "scenario", "peers", "streams", "pkts/s", "Mbit/s", "srv CPU", "µs/pkt", "gen CPU",
        "loss%", "p50 µs", "p99 µs", "max µs", "join ms", "RSS/peer"
    );
    let optional = |value: Option<f64>, precision: usize| {
        value.map_or("-".to_owned(), |value| format!("{value:.precision$}"))
    };
    for row in rows {
        out += &format!(
            "{:<22} {:>5} {:>7} {:>10.0} {:>8.1} {:>7}% {:>9} {:>6.0}% {:>6.2} {:>8} {:>8} {:>8} {:>8} {:>7}kB{}\n",
            row.label,
            row.peers,
            row.forwarded_streams,
            row.forwarded_packets_per_second,
            row.forwarded_mbit_per_second,
            optional(row.server_cpu_percent, 0),
            optional(row.server_cpu_us_per_packet, 2),
            row.generator_cpu_percent,
            row.loss_percent,
            row.latency_p50_us,
            row.latency_p99_us,
            row.latency_max_us,
            optional(row.join_to_media_p50_ms, 0),
            optional(row.server_rss_per_peer_kb, 0),
            if row.generator_is_bottleneck() { "  (generator near a full core: the figures may be its limit)" } else { "" },
        );
    }
    out
}
