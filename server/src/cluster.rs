//! Several videoroom nodes sharing one Redis (`--redis`): Redis knows which node hosts which
//! room and how loaded each node is. Each node keeps a heartbeat record (its id, public URL,
//! media addresses, peers, rooms, CPU, packets forwarded a second, draining) that expires a
//! few seconds after the node stops refreshing it. A room's first join places it on the
//! least-loaded live node with `SET NX`, so two first joins through two nodes agree on one;
//! the record lives while the room does (its node refreshes it) and goes when the room
//! empties or its node dies. A client reaching another node is relayed there by
//! [`crate::signaling::relay`]; its media goes straight to the room's node. Without `--redis`
//! nothing here runs.

use std::collections::BTreeMap;
use std::time::Duration;

use redis::aio::ConnectionManager;
use serde::{Deserialize, Serialize};
use shared::RoomId;

use crate::signaling::registry::Registry;

/// How often a node refreshes its record and its rooms'.
const HEARTBEAT: Duration = Duration::from_secs(1);
/// A node whose record is this old is dead: its rooms go elsewhere.
const NODE_TTL: Duration = Duration::from_secs(3);
/// A room record outlives its node's last refresh by this much at most.
const ROOM_TTL: Duration = Duration::from_secs(15);
/// Redis answers within this, or the operation fails (and a join is refused with the reason).
const REDIS_TIMEOUT: Duration = Duration::from_secs(2);

const NODE_PREFIX: &str = "videoroom:node:";
const ROOM_PREFIX: &str = "videoroom:room:";
/// The secret nodes show each other when one relays a client to another.
const SECRET_KEY: &str = "videoroom:relay-secret";

/// Deletes a room record only if it still names this node (another may have taken it over).
const RELEASE: &str =
    "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) else return 0 end";

#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("Redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("Redis did not answer within {REDIS_TIMEOUT:?}")]
    Timeout,
    #[error("no live node to place the room on")]
    NoNode,
}

/// What a node tells the others about itself.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeRecord {
    pub id: String,
    /// Where clients and other nodes reach its HTTP and signaling socket.
    pub url: String,
    /// Where browsers send its media (UDP and ICE-TCP), one address a media worker.
    pub media: String,
    pub peers: usize,
    pub rooms: usize,
    /// Share of one core used since the last heartbeat, in percent.
    pub cpu: f64,
    /// Packets forwarded to subscribers a second, since the last heartbeat.
    pub packets_per_second: f64,
    /// Taking no new rooms (`--drain`).
    pub draining: bool,
}

/// Who a node is and where it is reached.
#[derive(Debug, Clone)]
pub struct NodeAddress {
    pub id: String,
    /// Its HTTP and signaling socket, for clients and the other nodes.
    pub url: String,
    /// Its media addresses, comma-separated.
    pub media: String,
}

/// Where a room is.
#[derive(Debug, Clone, PartialEq)]
pub enum Placement {
    Here,
    Elsewhere(NodeRecord),
}

/// The cluster as `/stats` shows it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ClusterView {
    /// This node's id.
    pub node: String,
    pub nodes: Vec<NodeRecord>,
    /// Each room's node.
    pub rooms: BTreeMap<String, String>,
}

/// This node's membership of the cluster.
#[derive(Clone)]
pub struct Cluster {
    redis: ConnectionManager,
    id: String,
    url: String,
    media: String,
    draining: bool,
    secret: String,
}

impl Cluster {
    /// Connects to Redis at `url` as `node`.
    pub async fn connect(
        url: &str,
        node: NodeAddress,
        draining: bool,
    ) -> Result<Cluster, ClusterError> {
        let client = redis::Client::open(url)?;
        let redis = bounded(ConnectionManager::new(client)).await??;
        let mut cluster = Cluster {
            redis,
            id: node.id,
            url: node.url,
            media: node.media,
            draining,
            secret: String::new(),
        };
        // The first node makes the secret; the others read it.
        let candidate = uuid::Uuid::new_v4().simple().to_string();
        let _: Option<String> = cluster
            .query(redis::cmd("SET").arg(SECRET_KEY).arg(&candidate).arg("NX"))
            .await?;
        cluster.secret = cluster
            .query::<Option<String>>(redis::cmd("GET").arg(SECRET_KEY))
            .await?
            .unwrap_or(candidate);
        // Known to the others before it takes its first join: a room placed here at once must
        // not look like a dead node's to them.
        cluster
            .write_record(&cluster.record(0, 0, Load::default()))
            .await?;
        Ok(cluster)
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    /// What a relaying node shows to be trusted with its clients' addresses.
    pub fn secret(&self) -> &str {
        &self.secret
    }

    async fn query<T: redis::FromRedisValue>(
        &self,
        command: &redis::Cmd,
    ) -> Result<T, ClusterError> {
        let mut redis = self.redis.clone();
        Ok(bounded(command.query_async(&mut redis)).await??)
    }

    /// Where `room` is: the node its record names if that node lives; otherwise this join
    /// places it on the least-loaded live node (`load` is this node's own, fresher than its
    /// record).
    pub async fn place(
        &self,
        room: &RoomId,
        load: (usize, usize),
    ) -> Result<Placement, ClusterError> {
        let key = room_key(room);
        let mut nodes = self.nodes().await?;
        if !nodes.iter().any(|node| node.id == self.id) {
            // Its first heartbeat is not written yet.
            nodes.push(self.record(load.0, load.1, Load::default()));
        }
        for _ in 0..3 {
            let owner: Option<String> = self.query(redis::cmd("GET").arg(&key)).await?;
            if let Some(owner) = owner {
                if owner == self.id {
                    return Ok(Placement::Here);
                }
                if let Some(node) = nodes.iter().find(|node| node.id == owner) {
                    return Ok(Placement::Elsewhere(node.clone()));
                }
                // Its node is dead: the record goes, and the room is placed again.
                self.release_if_on(room, &owner).await?;
                tracing::info!(room = %room, dead = owner, "room placed again: its node is gone");
            }
            let rooms = self.room_counts().await?;
            let chosen = choose(&nodes, &rooms, &self.id, load).ok_or(ClusterError::NoNode)?;
            let taken: Option<String> = self
                .query(
                    redis::cmd("SET")
                        .arg(&key)
                        .arg(&chosen)
                        .arg("NX")
                        .arg("PX")
                        .arg(ROOM_TTL.as_millis() as u64),
                )
                .await?;
            if taken.is_some() {
                tracing::info!(room = %room, node = chosen, "room placed");
            }
            // Placed by this join or by a simultaneous one: read who won.
        }
        Err(ClusterError::NoNode)
    }

    /// `node` could not be reached to relay a join of `room`: the room's record goes if it
    /// still names that node, and so does the node's own record (a live node writes it again
    /// within a heartbeat), so the room is placed on a node that answers.
    pub async fn unreachable(&self, room: &RoomId, node: &str) {
        let released = self.release_if_on(room, node).await;
        let forgotten = self
            .query::<i64>(redis::cmd("DEL").arg(node_key(node)))
            .await;
        if let Err(err) = released.and(forgotten) {
            tracing::warn!(room = %room, node, %err, "records of an unreachable node not removed");
        }
    }

    /// Forgets `room`'s record if it names this node (its last peer left).
    pub async fn release(&self, room: &RoomId) {
        if let Err(err) = self.release_if_on(room, &self.id).await {
            tracing::warn!(room = %room, %err, "room record not removed; it expires");
        }
    }

    /// Deletes `room`'s record if it names `node`.
    async fn release_if_on(&self, room: &RoomId, node: &str) -> Result<(), ClusterError> {
        let mut release = redis::cmd("EVAL");
        release.arg(RELEASE).arg(1).arg(room_key(room)).arg(node);
        self.query::<i64>(&release).await.map(drop)
    }

    /// The live nodes' records.
    pub async fn nodes(&self) -> Result<Vec<NodeRecord>, ClusterError> {
        let values = self.values(NODE_PREFIX).await?;
        Ok(values
            .into_iter()
            .filter_map(|(_, value)| serde_json::from_str(&value).ok())
            .collect())
    }

    /// Each room's node.
    async fn rooms(&self) -> Result<BTreeMap<String, String>, ClusterError> {
        Ok(self
            .values(ROOM_PREFIX)
            .await?
            .into_iter()
            .map(|(key, node)| (key[ROOM_PREFIX.len()..].to_owned(), node))
            .collect())
    }

    /// How many rooms each node holds, by their records.
    async fn room_counts(&self) -> Result<BTreeMap<String, usize>, ClusterError> {
        let mut counts = BTreeMap::new();
        for node in self.rooms().await?.into_values() {
            *counts.entry(node).or_default() += 1;
        }
        Ok(counts)
    }

    /// Every key under `prefix` with its value.
    async fn values(&self, prefix: &str) -> Result<Vec<(String, String)>, ClusterError> {
        let mut keys: Vec<String> = Vec::new();
        let mut cursor = 0u64;
        loop {
            let (next, batch): (u64, Vec<String>) = self
                .query(
                    redis::cmd("SCAN")
                        .arg(cursor)
                        .arg("MATCH")
                        .arg(format!("{prefix}*"))
                        .arg("COUNT")
                        .arg(500),
                )
                .await?;
            keys.extend(batch);
            if next == 0 {
                break;
            }
            cursor = next;
        }
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let values: Vec<Option<String>> = self.query(redis::cmd("MGET").arg(&keys)).await?;
        Ok(keys
            .into_iter()
            .zip(values)
            .filter_map(|(key, value)| Some((key, value?)))
            .collect())
    }

    /// The cluster for `/stats`.
    pub async fn view(&self) -> Result<ClusterView, ClusterError> {
        let mut nodes = self.nodes().await?;
        nodes.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(ClusterView {
            node: self.id.clone(),
            nodes,
            rooms: self.rooms().await?,
        })
    }

    /// Refreshes this node's record and its rooms' every [`HEARTBEAT`], until the registry
    /// shuts down; then removes the node's record, so no room is placed on it any more.
    pub fn spawn_heartbeat(&self, registry: Registry) -> tokio::task::JoinHandle<()> {
        let cluster = self.clone();
        tokio::spawn(async move {
            let mut shutdown = registry.shutdown_watch();
            let mut meter = LoadMeter::default();
            let mut tick = tokio::time::interval(HEARTBEAT);
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = shutdown.wait_for(|stopping| *stopping) => break,
                }
                let load = meter.read(&registry);
                if let Err(err) = cluster.beat(&registry, load).await {
                    tracing::warn!(%err, "cluster heartbeat failed; retrying");
                }
            }
            let gone = cluster
                .query::<i64>(redis::cmd("DEL").arg(node_key(&cluster.id)))
                .await;
            if let Err(err) = gone {
                tracing::warn!(%err, "node record not removed; it expires");
            }
        })
    }

    async fn write_record(&self, record: &NodeRecord) -> Result<(), ClusterError> {
        self.query::<()>(&record_command(record)).await
    }

    fn record(&self, peers: usize, rooms: usize, load: Load) -> NodeRecord {
        NodeRecord {
            id: self.id.clone(),
            url: self.url.clone(),
            media: self.media.clone(),
            peers,
            rooms,
            cpu: load.cpu,
            packets_per_second: load.packets_per_second,
            draining: self.draining,
        }
    }

    async fn beat(&self, registry: &Registry, load: Load) -> Result<(), ClusterError> {
        let counts = registry.counts();
        let record = self.record(counts.peers, counts.rooms, load);
        let mut pipe = redis::pipe();
        pipe.add_command(record_command(&record)).ignore();
        // Each room open here keeps its record: made again if it went (a release that raced
        // with a new room of the same name), its lifetime renewed.
        for room in registry.room_ids() {
            let key = room_key(&room);
            let ttl = ROOM_TTL.as_millis() as u64;
            pipe.cmd("SET")
                .arg(&key)
                .arg(&self.id)
                .arg("NX")
                .arg("PX")
                .arg(ttl)
                .ignore();
            pipe.cmd("PEXPIRE").arg(&key).arg(ttl).ignore();
        }
        let mut redis = self.redis.clone();
        bounded(pipe.query_async::<()>(&mut redis)).await??;
        Ok(())
    }
}

/// The node a new room goes to: the live, not draining one with the fewest rooms (by their
/// records), then the fewest peers, then the smallest id (so simultaneous choices agree).
/// This node counts with its own `load` (peers, rooms) as of now.
fn choose(
    nodes: &[NodeRecord],
    rooms: &BTreeMap<String, usize>,
    this: &str,
    load: (usize, usize),
) -> Option<String> {
    nodes
        .iter()
        .filter(|node| !node.draining)
        .map(|node| {
            let peers = if node.id == this { load.0 } else { node.peers };
            let placed = rooms.get(&node.id).copied().unwrap_or(0);
            let held = if node.id == this { load.1 } else { node.rooms };
            ((placed.max(held), peers), &node.id)
        })
        .min()
        .map(|(_, id)| id.clone())
}

/// Writes a node's record, to expire unless written again within [`NODE_TTL`].
fn record_command(record: &NodeRecord) -> redis::Cmd {
    let json = serde_json::to_string(record).expect("a node record serializes");
    let mut command = redis::cmd("SET");
    command
        .arg(node_key(&record.id))
        .arg(json)
        .arg("PX")
        .arg(NODE_TTL.as_millis() as u64);
    command
}

fn node_key(id: &str) -> String {
    format!("{NODE_PREFIX}{id}")
}

fn room_key(room: &RoomId) -> String {
    format!("{ROOM_PREFIX}{room}")
}

async fn bounded<T>(operation: impl std::future::Future<Output = T>) -> Result<T, ClusterError> {
    tokio::time::timeout(REDIS_TIMEOUT, operation)
        .await
        .map_err(|_| ClusterError::Timeout)
}

/// A node's work between two heartbeats.
#[derive(Debug, Default, Clone, Copy)]
struct Load {
    cpu: f64,
    packets_per_second: f64,
}

/// What the last reading was: this process's CPU ticks and the packets forwarded, and when.
#[derive(Default)]
struct LoadMeter {
    last: Option<(u64, u64, std::time::Instant)>,
}

impl LoadMeter {
    /// The load since the last reading (nothing at the first).
    fn read(&mut self, registry: &Registry) -> Load {
        let ticks = process_ticks().unwrap_or(0);
        let packets: u64 = registry
            .worker_loads()
            .iter()
            .map(|load| load.forwarded_packets)
            .sum();
        let now = std::time::Instant::now();
        let load = match self.last {
            Some((ticks_before, packets_before, at)) => {
                let seconds = now.duration_since(at).as_secs_f64().max(1e-3);
                // Linux counts in USER_HZ, 100 a second on every architecture it runs on.
                let cpu_seconds = ticks.saturating_sub(ticks_before) as f64 / 100.0;
                Load {
                    cpu: 100.0 * cpu_seconds / seconds,
                    packets_per_second: packets.saturating_sub(packets_before) as f64 / seconds,
                }
            }
            None => Load::default(),
        };
        self.last = Some((ticks, packets, now));
        load
    }
}

/// User and system time of this process, in clock ticks.
fn process_ticks() -> Option<u64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // The command name may hold spaces: the fields that follow start after its `)`.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let user: u64 = fields.get(11)?.parse().ok()?;
    let system: u64 = fields.get(12)?.parse().ok()?;
    Some(user + system)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(id: &str, peers: usize, rooms: usize, draining: bool) -> NodeRecord {
        NodeRecord {
            id: id.to_owned(),
            url: format!("http://{id}"),
            media: String::new(),
            peers,
            rooms,
            cpu: 0.0,
            packets_per_second: 0.0,
            draining,
        }
    }

    #[test]
    fn a_new_room_goes_to_the_node_with_the_fewest_rooms_then_peers() {
        let nodes = [
            node("a", 10, 2, false),
            node("b", 3, 2, false),
            node("c", 0, 5, false),
        ];
        let rooms = BTreeMap::new();
        assert_eq!(choose(&nodes, &rooms, "x", (0, 0)).as_deref(), Some("b"));
        // Records placed a moment ago count before the heartbeats catch up.
        let rooms = BTreeMap::from([("b".to_owned(), 4)]);
        assert_eq!(choose(&nodes, &rooms, "x", (0, 0)).as_deref(), Some("a"));
        // This node counts with its own load as of now.
        assert_eq!(
            choose(&nodes, &BTreeMap::new(), "b", (50, 3)).as_deref(),
            Some("a")
        );
    }

    #[test]
    fn a_draining_node_takes_no_room_and_ties_go_to_the_smallest_id() {
        let nodes = [
            node("b", 0, 0, false),
            node("a", 0, 0, true),
            node("c", 0, 0, false),
        ];
        assert_eq!(
            choose(&nodes, &BTreeMap::new(), "x", (0, 0)).as_deref(),
            Some("b")
        );
        let draining = [node("a", 0, 0, true)];
        assert_eq!(choose(&draining, &BTreeMap::new(), "x", (0, 0)), None);
    }

    #[test]
    fn this_process_has_cpu_ticks() {
        assert!(process_ticks().is_some());
    }
}
