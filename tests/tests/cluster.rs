//! Nodes sharing one Redis (`--redis`): a real `redis-server` on a loopback port and server
//! processes beside it. A room lives on one node whichever node its people reach; rooms are
//! spread over the nodes, never on a draining one; simultaneous first joins through two nodes
//! agree; when a room's node dies, its people come back through a live node and meet there
//! again; without `--redis` a node opens no connection of its own.

use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context};
use e2e::phoenix::PhoenixClient;
use e2e::process::{counts, ServerProcess};
use e2e::redis::RedisServer;
use e2e::synthetic::{PeerOptions, PeerState, SyntheticPeer};
use serde_json::{json, Value};
use shared::RoomId;

/// Long enough for a loaded machine to connect, negotiate and forward.
const MEDIA_TIMEOUT: Duration = Duration::from_secs(20);
/// The bound for meeting again after the room's node died.
const FAILOVER_TIMEOUT: Duration = Duration::from_secs(10);

/// A node of the cluster at `redis`, named `id`.
async fn node(redis: &RedisServer, id: &str) -> anyhow::Result<ServerProcess> {
    let binary = ServerProcess::binary_beside_this_one()?;
    ServerProcess::spawn(&binary, &["--redis", &redis.url(), "--node-id", id]).await
}

/// What a node's `/stats` says, the cluster's view included.
async fn stats(node: &ServerProcess) -> anyhow::Result<Value> {
    e2e::process::stats(&node.url("")).await
}

/// A client holding a channel of `room` open through `node` (its first join places the room).
async fn open_room(node: &ServerProcess, room: &str) -> anyhow::Result<PhoenixClient> {
    let mut client = PhoenixClient::connect(&node.socket_url()).await?;
    client.join(&RoomId::new(room)?.topic()).await?;
    Ok(client)
}

/// The node the cluster's records put `room` on.
async fn owner_of(node: &ServerProcess, room: &str) -> anyhow::Result<Option<String>> {
    Ok(stats(node).await?["cluster"]["rooms"][room]
        .as_str()
        .map(str::to_owned))
}

/// Whether a peer receives the other's audio and video.
fn receives_the_other(state: &PeerState) -> bool {
    state.received.len() >= 2 && state.received.values().all(|track| track.packets >= 20)
}

/// Waits until Ann and Bob both receive the other's audio and video (`when`: for the message).
async fn meet(
    ann: &SyntheticPeer,
    bob: &SyntheticPeer,
    when: &str,
    timeout: Duration,
) -> anyhow::Result<()> {
    for (peer, name) in [(ann, "Ann"), (bob, "Bob")] {
        let what = format!("{name} receiving the other's audio and video{when}");
        peer.wait_until(&what, timeout, receives_the_other).await?;
    }
    Ok(())
}

#[tokio::test]
async fn people_joining_through_different_nodes_meet_on_the_rooms_node() -> anyhow::Result<()> {
    let redis = RedisServer::start().await?;
    let (a, b) = tokio::try_join!(node(&redis, "a"), node(&redis, "b"))?;
    let ann = SyntheticPeer::join(&a.socket_url(), "meet", PeerOptions::publishing("Ann")).await?;
    let bob = SyntheticPeer::join(&b.socket_url(), "meet", PeerOptions::publishing("Bob")).await?;
    meet(&ann, &bob, "", MEDIA_TIMEOUT).await?;
    let owner = owner_of(&a, "meet")
        .await?
        .context("no record of the room in the cluster")?;
    ensure!(
        owner_of(&b, "meet").await?.as_deref() == Some(owner.as_str()),
        "the nodes disagree on the room's node"
    );
    let (home, other) = if owner == "a" { (&a, &b) } else { (&b, &a) };
    let home_counts = counts(&home.url("")).await?;
    let other_counts = counts(&other.url("")).await?;
    println!("room `meet` on node {owner}: {home_counts:?} there, {other_counts:?} on the other");
    ensure!(
        (home_counts.rooms, home_counts.peers) == (1, 2),
        "the room's node holds {home_counts:?}"
    );
    ensure!(
        (other_counts.rooms, other_counts.peers) == (0, 0),
        "the other node holds {other_counts:?}"
    );
    // Its heartbeat tells the others what it forwards.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let view = stats(&a).await?;
        let record = view["cluster"]["nodes"]
            .as_array()
            .and_then(|nodes| nodes.iter().find(|node| node["id"] == owner.as_str()))
            .cloned()
            .unwrap_or_default();
        let forwarding = record["packets_per_second"].as_f64().unwrap_or(0.0) > 0.0;
        let media = record["media"].as_str().unwrap_or_default();
        if forwarding && media.contains("127.0.0.1:") {
            println!("node {owner}'s record: {record}");
            break;
        }
        ensure!(
            Instant::now() < deadline,
            "node {owner}'s record shows no forwarding: {record}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    ann.leave().await;
    bob.leave().await;
    Ok(())
}

#[tokio::test]
async fn rooms_created_through_alternating_nodes_are_spread() -> anyhow::Result<()> {
    let redis = RedisServer::start().await?;
    let (a, b) = tokio::try_join!(node(&redis, "a"), node(&redis, "b"))?;
    let mut clients = Vec::new();
    for index in 0..20 {
        let through = if index % 2 == 0 { &a } else { &b };
        clients.push(open_room(through, &format!("spread-{index}")).await?);
    }
    let view = stats(&a).await?;
    let rooms = view["cluster"]["rooms"]
        .as_object()
        .context("no cluster view in /stats")?;
    let on = |id: &str| rooms.values().filter(|owner| *owner == id).count();
    println!("20 rooms: {} on a, {} on b", on("a"), on("b"));
    ensure!(rooms.len() == 20, "{} room records: {rooms:?}", rooms.len());
    ensure!(
        on("a") >= 5 && on("b") >= 5,
        "the rooms are not spread: {rooms:?}"
    );
    let nodes: Vec<&str> = view["cluster"]["nodes"]
        .as_array()
        .context("no nodes in the cluster view")?
        .iter()
        .filter_map(|node| node["id"].as_str())
        .collect();
    ensure!(nodes == ["a", "b"], "live nodes: {nodes:?}");
    let metrics = reqwest::get(b.url("/metrics")).await?.text().await?;
    for node in ["a", "b"] {
        let gauge = format!(
            "videoroom_cluster_node_rooms{{node=\"{node}\"}} {}",
            on(node)
        );
        ensure!(
            metrics.lines().any(|line| line == gauge),
            "/metrics lacks `{gauge}`"
        );
    }
    Ok(())
}

#[tokio::test]
async fn a_draining_node_takes_no_new_room() -> anyhow::Result<()> {
    let redis = RedisServer::start().await?;
    let binary = ServerProcess::binary_beside_this_one()?;
    let draining = ["--redis", &redis.url(), "--node-id", "a", "--drain"];
    let (a, b) = tokio::try_join!(ServerProcess::spawn(&binary, &draining), node(&redis, "b"))?;
    let mut clients = Vec::new();
    for index in 0..4 {
        clients.push(open_room(&a, &format!("drained-{index}")).await?);
    }
    let view = stats(&b).await?;
    let rooms = &view["cluster"]["rooms"];
    for index in 0..4 {
        let owner = &rooms[format!("drained-{index}")];
        ensure!(owner == "b", "room drained-{index} is on {owner}: {rooms}");
    }
    Ok(())
}

#[tokio::test]
async fn simultaneous_first_joins_through_two_nodes_end_on_one() -> anyhow::Result<()> {
    let redis = RedisServer::start().await?;
    let (a, b) = tokio::try_join!(node(&redis, "a"), node(&redis, "b"))?;
    for round in 0..5 {
        let topic = RoomId::new(format!("race-{round}"))?.topic();
        let (url_a, url_b) = (a.socket_url(), b.socket_url());
        let (mut at_a, mut at_b) = tokio::try_join!(
            PhoenixClient::connect(&url_a),
            PhoenixClient::connect(&url_b)
        )?;
        let (channel_a, channel_b) = tokio::try_join!(at_a.join(&topic), at_b.join(&topic))?;
        let first = at_a
            .join_room(&channel_a, json!({ "displayName": "Ann" }))
            .await?;
        let second = at_b
            .join_room(&channel_b, json!({ "displayName": "Bob" }))
            .await?;
        let met: Vec<_> = second.peers_in_room.iter().map(|peer| &peer.id).collect();
        ensure!(
            met == [&first.id],
            "round {round}: Bob found {met:?} in the room, not Ann ({})",
            first.id
        );
        let owner = owner_of(&a, &format!("race-{round}")).await?;
        println!("round {round}: both on node {owner:?}");
    }
    Ok(())
}

#[tokio::test]
async fn when_the_rooms_node_dies_its_people_meet_again_through_a_live_node() -> anyhow::Result<()>
{
    let redis = RedisServer::start().await?;
    // Alone at first, node b takes the room.
    let mut b = node(&redis, "b").await?;
    let bob =
        SyntheticPeer::join(&b.socket_url(), "phoenix", PeerOptions::publishing("Bob")).await?;
    let a = node(&redis, "a").await?;
    let ann =
        SyntheticPeer::join(&a.socket_url(), "phoenix", PeerOptions::publishing("Ann")).await?;
    meet(&ann, &bob, " before the failure", MEDIA_TIMEOUT).await?;
    ensure!(
        owner_of(&a, "phoenix").await?.as_deref() == Some("b"),
        "the room is not on b"
    );

    b.kill().await?;
    let killed = Instant::now();
    // Ann's node closes her socket (its relay to b broke); both come back through a, as the
    // page does when its socket closes.
    ann.wait_until("Ann's socket closing", FAILOVER_TIMEOUT, |state| {
        state.error.is_some()
    })
    .await?;
    drop((ann, bob));
    let (ann, bob) = tokio::try_join!(
        rejoin(&a, "Ann", killed + FAILOVER_TIMEOUT),
        rejoin(&a, "Bob", killed + FAILOVER_TIMEOUT)
    )?;
    let left = (killed + FAILOVER_TIMEOUT).saturating_duration_since(Instant::now());
    meet(&ann, &bob, " after the failure", left).await?;
    println!(
        "node b killed: Ann and Bob meet again through a {} ms later",
        killed.elapsed().as_millis()
    );
    let view = stats(&a).await?;
    ensure!(
        view["cluster"]["rooms"]["phoenix"] == "a",
        "the room is not on a: {}",
        view["cluster"]
    );
    let nodes = &view["cluster"]["nodes"];
    ensure!(
        nodes
            .as_array()
            .is_some_and(|nodes| nodes.len() == 1 && nodes[0]["id"] == "a"),
        "the dead node's record is still there: {nodes}"
    );
    Ok(())
}

/// `name` joins `phoenix` through `node`, again and again until it is let in (the room's
/// record still names the dead node for a few seconds) or `deadline` passes.
async fn rejoin(
    node: &ServerProcess,
    name: &str,
    deadline: Instant,
) -> anyhow::Result<SyntheticPeer> {
    loop {
        let attempt =
            SyntheticPeer::join(&node.socket_url(), "phoenix", PeerOptions::publishing(name)).await;
        match attempt {
            Ok(peer) => {
                // Let in, or told at once why not.
                tokio::time::sleep(Duration::from_millis(300)).await;
                if peer.state(|state| state.error.is_none()) {
                    return Ok(peer);
                }
            }
            Err(err) if Instant::now() > deadline => {
                bail!("{name} could not join again before the deadline: {err:#}")
            }
            Err(_) => {}
        }
        if Instant::now() > deadline {
            bail!("{name} could not join again before the deadline");
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Without `--redis` a node stands alone: `/stats` has no cluster, and while people talk the
/// process holds no TCP connection it opened itself (every established one is a client's, to
/// its own port).
#[tokio::test]
async fn without_redis_a_node_opens_no_connection_of_its_own() -> anyhow::Result<()> {
    let binary = ServerProcess::binary_beside_this_one()?;
    let alone = ServerProcess::spawn(&binary, &[]).await?;
    let ann =
        SyntheticPeer::join(&alone.socket_url(), "alone", PeerOptions::publishing("Ann")).await?;
    let bob =
        SyntheticPeer::join(&alone.socket_url(), "alone", PeerOptions::publishing("Bob")).await?;
    bob.wait_until("Bob receiving Ann", MEDIA_TIMEOUT, receives_the_other)
        .await?;
    ensure!(
        stats(&alone).await?.get("cluster").is_none(),
        "a cluster view without --redis"
    );
    let (listening, connections) = tcp_sockets(alone.pid)?;
    ensure!(!connections.is_empty(), "no connection of the clients seen");
    // A connection accepted by the node runs on one of its listening ports.
    let own: Vec<_> = connections
        .iter()
        .filter(|(local_port, _)| !listening.contains(local_port))
        .collect();
    ensure!(
        own.is_empty(),
        "connections the node opened (local port, remote port): {own:?}; it listens on {listening:?}"
    );
    ann.leave().await;
    bob.leave().await;
    Ok(())
}

/// The TCP ports process `pid` listens on, and its established connections: (local port,
/// remote port) each.
type TcpSockets = (Vec<u16>, Vec<(u16, u16)>);

fn tcp_sockets(pid: u32) -> anyhow::Result<TcpSockets> {
    let inodes: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))?
        .filter_map(|entry| std::fs::read_link(entry.ok()?.path()).ok())
        .filter_map(|link| {
            let link = link.to_string_lossy().into_owned();
            Some(link.strip_prefix("socket:[")?.strip_suffix(']')?.to_owned())
        })
        .collect();
    let (mut listening, mut connections) = (Vec::new(), Vec::new());
    for table in ["tcp", "tcp6"] {
        let text = std::fs::read_to_string(format!("/proc/{pid}/net/{table}"))?;
        for line in text.lines().skip(1) {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let (Some(local), Some(remote), Some(state), Some(inode)) =
                (fields.get(1), fields.get(2), fields.get(3), fields.get(9))
            else {
                continue;
            };
            if !inodes.iter().any(|own| own == inode) {
                continue;
            }
            let port = |address: &str| {
                address
                    .rsplit_once(':')
                    .and_then(|(_, port)| u16::from_str_radix(port, 16).ok())
            };
            match (*state, port(local), port(remote)) {
                // LISTEN
                ("0A", Some(local), _) => listening.push(local),
                // ESTABLISHED
                ("01", Some(local), Some(remote)) => connections.push((local, remote)),
                _ => {}
            }
        }
    }
    Ok((listening, connections))
}
