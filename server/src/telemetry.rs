//! Prometheus metrics, served as text at `/metrics`: what is open now (rooms, peers, peer
//! connections, sockets) as gauges read at each scrape, and what happened (forwarded packets
//! and bytes, keyframe requests to publishers, refusals by limit, joins and how long they took)
//! as counters and a histogram recorded where it happens. The per-packet counters are handles
//! made once per track, so counting a packet is an atomic add.

use std::sync::OnceLock;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::cluster::ClusterView;
use crate::media::engine::WorkerLoad;
use crate::signaling::registry::Counts;

pub const FORWARDED_PACKETS: &str = "videoroom_forwarded_packets_total";
pub const FORWARDED_BYTES: &str = "videoroom_forwarded_bytes_total";
pub const KEYFRAME_REQUESTS: &str = "videoroom_keyframe_requests_total";
pub const MEDIA_DATAGRAMS_RECEIVED: &str = "videoroom_media_datagrams_received_total";
pub const MEDIA_DATAGRAMS_UNROUTED: &str = "videoroom_media_datagrams_unrouted_total";
pub const MEDIA_DATAGRAMS_SENT: &str = "videoroom_media_datagrams_sent_total";
pub const MEDIA_WORKER_BUSY: &str = "videoroom_media_worker_busy_microseconds_total";
pub const NACKS_RECEIVED: &str = "videoroom_nacks_received_total";
pub const MEDIA_DATAGRAMS_DROPPED: &str = "videoroom_media_datagrams_dropped_total";
pub const TURN_ALLOCATIONS: &str = "videoroom_turn_allocations";
pub const TURN_ALLOCATIONS_TOTAL: &str = "videoroom_turn_allocations_total";
pub const TURN_REFUSALS: &str = "videoroom_turn_refusals_total";
pub const TURN_RELAYED: &str = "videoroom_turn_relayed_datagrams_total";
pub const TURN_DROPPED: &str = "videoroom_turn_dropped_datagrams_total";
pub const LIMIT_REFUSALS: &str = "videoroom_limit_refusals_total";
pub const SOCKETS_OPENED: &str = "videoroom_sockets_opened_total";
pub const JOIN_SECONDS: &str = "videoroom_join_seconds";

/// The process's one recorder (the `metrics` macros record into a global one), made on first use.
pub fn prometheus() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        let recorder = PrometheusBuilder::new()
            .set_buckets_for_metric(
                Matcher::Full(JOIN_SECONDS.to_owned()),
                &[0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0],
            )
            .expect("the buckets are not empty")
            .build_recorder();
        let handle = recorder.handle();
        // Fails only if another recorder was installed first, which this binary never does.
        let _ = metrics::set_global_recorder(recorder);
        describe();
        handle
    })
}

fn describe() {
    metrics::describe_counter!(FORWARDED_PACKETS, "RTP packets sent to subscribers");
    metrics::describe_counter!(FORWARDED_BYTES, "RTP payload bytes sent to subscribers");
    metrics::describe_counter!(
        KEYFRAME_REQUESTS,
        "keyframe requests (PLI) sent to publishers"
    );
    metrics::describe_counter!(
        MEDIA_DATAGRAMS_RECEIVED,
        "UDP datagrams the media workers received"
    );
    metrics::describe_counter!(
        MEDIA_DATAGRAMS_UNROUTED,
        "received UDP datagrams that belonged to no peer connection"
    );
    metrics::describe_counter!(MEDIA_DATAGRAMS_SENT, "UDP datagrams the media workers sent");
    metrics::describe_counter!(
        MEDIA_DATAGRAMS_DROPPED,
        "UDP datagrams the kernel refused (a full buffer, an unreachable address): dropped, never waited for"
    );
    metrics::describe_gauge!(TURN_ALLOCATIONS, "TURN allocations open now");
    metrics::describe_counter!(TURN_ALLOCATIONS_TOTAL, "TURN allocations made");
    metrics::describe_counter!(
        TURN_REFUSALS,
        "TURN requests refused, by STUN error code (401 is also every client's first request)"
    );
    metrics::describe_counter!(
        TURN_RELAYED,
        "datagrams the TURN server relayed, to peers or back to clients"
    );
    metrics::describe_counter!(
        TURN_DROPPED,
        "datagrams the TURN server did not relay: no permission or channel, or a full queue"
    );
    metrics::describe_counter!(
        MEDIA_WORKER_BUSY,
        "time each media worker's loop spent working rather than waiting (its rate is the load)"
    );
    metrics::describe_counter!(
        NACKS_RECEIVED,
        "NACK packets (retransmission requests) from subscribers"
    );
    metrics::describe_counter!(LIMIT_REFUSALS, "requests refused by a limit, by its flag");
    metrics::describe_counter!(SOCKETS_OPENED, "signaling sockets opened");
    metrics::describe_histogram!(
        JOIN_SECONDS,
        metrics::Unit::Seconds,
        "from a media join to the room's acceptance"
    );
}

/// The metrics as Prometheus text, with the gauges of `counts` and each media worker's load
/// (`worker_loads`) as of now.
pub fn render(counts: Counts, worker_loads: &[WorkerLoad]) -> String {
    let handle = prometheus();
    metrics::gauge!("videoroom_rooms").set(counts.rooms as f64);
    metrics::gauge!("videoroom_peers").set(counts.peers as f64);
    metrics::gauge!("videoroom_peer_connections").set(counts.peer_connections as f64);
    let forwarded: u64 = worker_loads.iter().map(|load| load.forwarded_packets).sum();
    metrics::counter!(FORWARDED_PACKETS).absolute(forwarded);
    for (worker, load) in worker_loads.iter().enumerate() {
        let worker = worker.to_string();
        metrics::gauge!("videoroom_media_worker_peer_connections", "worker" => worker.clone())
            .set(load.peer_connections as f64);
        metrics::counter!(MEDIA_WORKER_BUSY, "worker" => worker)
            .absolute(load.busy.as_micros() as u64);
    }
    handle.render()
}

/// The cluster's gauges: each live node's rooms (by their records), peers, CPU and packets
/// forwarded a second.
pub fn cluster(view: &ClusterView) {
    metrics::gauge!("videoroom_cluster_nodes").set(view.nodes.len() as f64);
    for node in &view.nodes {
        let rooms = view
            .rooms
            .values()
            .filter(|owner| **owner == node.id)
            .count();
        let id = node.id.clone();
        metrics::gauge!("videoroom_cluster_node_rooms", "node" => id.clone()).set(rooms as f64);
        metrics::gauge!("videoroom_cluster_node_peers", "node" => id.clone())
            .set(node.peers as f64);
        metrics::gauge!("videoroom_cluster_node_cpu_percent", "node" => id.clone()).set(node.cpu);
        metrics::gauge!("videoroom_cluster_node_packets_per_second", "node" => id)
            .set(node.packets_per_second);
    }
}
