//! The attack suite: hostile clients, scripted as an attacker would, against the real server in a
//! process of its own on loopback. The attacker comes from 127.0.0.2; a bystander room (Ann and
//! Bob, synthetic peers publishing audio and video) from 127.0.0.1. Each case checks that the
//! attacker gets a clear refusal naming the limit, that the server stays up, that the bystanders'
//! media keeps flowing through the attack, that memory stays bounded (peak RSS from /proc), and
//! that nothing is left behind (`/stats` back to zero). Each prints its figures on one line
//! beginning `attack:`. Cases run one at a time, so their figures are their own.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context};
use e2e::phoenix::{error_reason, Channel, PhoenixClient};
use e2e::process::{self, ServerProcess};
use e2e::synthetic::{PeerOptions, SyntheticPeer};
use e2e::TestServer;
use serde_json::json;
use shared::client_event::{
    ClientCandidate, Join, SdpOffer, SdpType, SessionDescription, UpdatePeerMetadata,
    UpdateTrackMetadata,
};
use shared::metadata::{peer_metadata, track_metadata, TrackType};
use shared::server_event::PeerAccepted;
use shared::{ClientEvent, Frame, PeerId, PhoenixEvent, ServerEvent, TrackId};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpSocket;
use tokio::sync::{Mutex, MutexGuard};
use tokio_tungstenite::tungstenite::protocol::frame::coding::{CloseCode, Data, OpCode};
use tokio_tungstenite::tungstenite::protocol::frame::Frame as WsFrame;
use tokio_tungstenite::tungstenite::Message;

/// Where the attacker comes from: another loopback address, so the per-address limits it
/// reaches are its own and the bystanders on 127.0.0.1 keep theirs.
const ATTACKER: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));

/// The most resident memory an attack may take the server (a debug build) to. Unbounded, these
/// attacks took it to 0.7–2.9 GB.
const MAX_PEAK_RSS: u64 = 128 << 20;

/// Packets per second the two bystanders receive together: each gets the other's 50 audio and
/// 30 video packets a second.
const BYSTANDER_RATE: f64 = 160.0;

/// Generous deadlines for what happens in milliseconds on a quiet machine.
const SOON: Duration = Duration::from_secs(10);

/// One case at a time: each has the machine, and its server's peak memory, to itself.
static ONE_AT_A_TIME: Mutex<()> = Mutex::const_new(());

/// A fresh server process with a bystander room in it.
struct Arena {
    server: ServerProcess,
    bystanders: Vec<SyntheticPeer>,
    _turn: MutexGuard<'static, ()>,
}

/// The bystanders' packet count when an attack began.
struct Start {
    at: Instant,
    packets: u64,
    rss: u64,
}

impl Arena {
    /// Starts the server with `args` and the bystanders, and waits until their media flows.
    async fn open(args: &[&str]) -> anyhow::Result<Arena> {
        let turn = ONE_AT_A_TIME.lock().await;
        let binary = ServerProcess::binary_beside_this_one()?;
        let server = ServerProcess::spawn(&binary, args).await?;
        let mut bystanders = Vec::new();
        for name in ["Ann", "Bob"] {
            let peer = SyntheticPeer::join(
                &server.socket_url(),
                "bystanders",
                PeerOptions::publishing(name),
            )
            .await?;
            bystanders.push(peer);
        }
        for peer in &bystanders {
            peer.wait_until("the other bystander's media", SOON * 3, |state| {
                state.received.len() == 2 && state.received.values().all(|r| r.packets > 0)
            })
            .await?;
        }
        Ok(Arena {
            server,
            bystanders,
            _turn: turn,
        })
    }

    fn bystander_packets(&self) -> u64 {
        self.bystanders
            .iter()
            .map(|peer| peer.state(|state| state.received.values().map(|r| r.packets).sum::<u64>()))
            .sum()
    }

    fn begin(&self) -> anyhow::Result<Start> {
        Ok(Start {
            at: Instant::now(),
            packets: self.bystander_packets(),
            rss: self.server.memory("VmRSS")?,
        })
    }

    fn url(&self) -> String {
        self.server.socket_url()
    }

    async fn attacker(&self) -> anyhow::Result<PhoenixClient> {
        PhoenixClient::connect_from(&self.url(), ATTACKER, None).await
    }

    /// A socket from the bystanders' address, for observers in the attacked room.
    async fn observer(&self) -> anyhow::Result<PhoenixClient> {
        PhoenixClient::connect(&self.url()).await
    }

    async fn counts(&self) -> anyhow::Result<server::Counts> {
        process::counts(&self.server.url("")).await
    }

    /// Ends a case whose attackers are gone: checks the bystanders' media during the attack,
    /// the server's health and peak memory, then that the bystanders leave nothing behind;
    /// prints the figures.
    async fn close(self, name: &str, start: Start, refusal: &str) -> anyhow::Result<()> {
        // A second at least, so a short attack's aftermath is measured too.
        tokio::time::sleep(Duration::from_secs(1).saturating_sub(start.at.elapsed())).await;
        let elapsed = start.at.elapsed().as_secs_f64();
        let received = self.bystander_packets() - start.packets;
        let rate = received as f64 / elapsed;
        let peak = self.server.memory("VmHWM")?;
        let after = self.server.memory("VmRSS")?;
        println!(
            "attack: {name}: {refusal}; peak RSS {} MiB (before {} MiB, after {} MiB); \
             bystanders got {received} packets in {elapsed:.1} s ({rate:.0}/s)",
            peak >> 20,
            start.rss >> 20,
            after >> 20,
        );
        ensure!(
            rate >= BYSTANDER_RATE * 0.4,
            "{name}: the bystanders' media slowed to {rate:.0} packets/s (of {BYSTANDER_RATE})"
        );
        let health = reqwest::get(self.server.url("/health")).await?;
        ensure!(
            health.status().is_success(),
            "{name}: /health said {health:?}"
        );
        ensure!(
            peak <= MAX_PEAK_RSS,
            "{name}: the server's memory peaked at {} MiB",
            peak >> 20
        );
        for peer in self.bystanders {
            peer.leave().await;
        }
        wait_for_counts(&self.server, 0, 0, 0).await?;
        tokio::time::sleep(Duration::from_millis(500)).await;
        let idle = self.server.memory("VmRSS")?;
        println!(
            "attack: {name}: idle RSS {} MiB once everyone left",
            idle >> 20
        );
        // What the attack took is given back, not kept by the allocator.
        ensure!(
            idle <= start.rss + (12 << 20),
            "{name}: the idle server kept {} MiB, {} MiB before the attack",
            idle >> 20,
            start.rss >> 20
        );
        Ok(())
    }
}

/// Polls `/stats` until it says `rooms`, `peers` and `connections`.
async fn wait_for_counts(
    server: &ServerProcess,
    rooms: usize,
    peers: usize,
    connections: usize,
) -> anyhow::Result<()> {
    let wanted = server::Counts {
        rooms,
        peers,
        peer_connections: connections,
    };
    let deadline = Instant::now() + SOON;
    loop {
        let counts = process::counts(&server.url("")).await?;
        if counts == wanted {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("/stats stayed at {counts:?}, not {wanted:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Joins `room` on a new channel of `client` and sends the media `join`.
async fn enter(
    client: &mut PhoenixClient,
    room: &str,
    name: &str,
) -> anyhow::Result<(Channel, PeerAccepted)> {
    let channel = client.join(&format!("room:{room}")).await?;
    let accepted = client.join_room(&channel, peer_metadata(name)).await?;
    Ok((channel, accepted))
}

/// The message of the next `error` media event.
async fn error_event(client: &mut PhoenixClient) -> anyhow::Result<String> {
    match client.wait_for("error").await? {
        (_, ServerEvent::Error(error)) => Ok(error.message),
        (frame, _) => bail!("expected an error, got {}", frame.encode()),
    }
}

/// An offer of `sendonly` VP8 tracks named in `midToTrackId` for `owner`, and `recvonly` slots.
fn offer(owner: &PeerId, sendonly: usize, recvonly: usize) -> SdpOffer {
    let mut sdp = String::from("v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n");
    let mut mid_to_track_id = std::collections::BTreeMap::new();
    for mid in 0..sendonly + recvonly {
        let direction = if mid < sendonly {
            "sendonly"
        } else {
            "recvonly"
        };
        sdp.push_str(&format!(
            "m=video 9 UDP/TLS/RTP/SAVPF 96\r\na=mid:{mid}\r\na={direction}\r\na=rtpmap:96 VP8/90000\r\n"
        ));
        if mid < sendonly {
            mid_to_track_id.insert(mid.to_string(), TrackId::new(owner, uuid::Uuid::new_v4()));
        }
    }
    SdpOffer {
        sdp_offer: SessionDescription {
            sdp_type: SdpType::Offer,
            sdp,
        },
        track_id_to_track_metadata: Default::default(),
        mid_to_track_id,
    }
}

fn assert_names(message: &str, flag: &str) -> anyhow::Result<()> {
    ensure!(
        message.contains(flag),
        "the refusal does not name {flag}: {message}"
    );
    Ok(())
}

#[tokio::test]
async fn a_candidate_flood_is_cut_at_the_limit() -> anyhow::Result<()> {
    let arena = Arena::open(&[]).await?;
    let mut attacker = arena.attacker().await?;
    let (channel, _) = enter(&mut attacker, "attack", "Mallory").await?;
    let start = arena.begin()?;
    // Candidates of 100 kB each, as fast as the socket takes them.
    let padding = "x".repeat(100_000);
    let mut sent = 0;
    for number in 0..100 {
        let candidate = ClientEvent::Candidate(ClientCandidate {
            candidate: format!(
                "candidate:{number} 1 udp 2122260223 192.0.2.1 {} typ host {padding}",
                10_000 + number
            ),
            sdp_m_line_index: Some(0),
        });
        if attacker.push(&channel, &candidate).await.is_err() {
            break;
        }
        sent += 1;
    }
    let message = error_event(&mut attacker).await?;
    let refused_after = start.at.elapsed();
    assert_names(&message, "--max-candidates-per-peer")?;
    // The candidates after it were refused as coming from a peer not in the room.
    while let Some(reply) = attacker.recv_within(Duration::from_millis(300)).await? {
        ensure!(
            error_reason(&reply)?.contains("before `join`"),
            "{}",
            reply.encode()
        );
    }
    // Removed, the peer may join again on the same channel.
    let again = attacker
        .join_room(&channel, peer_metadata("Mallory"))
        .await?;
    ensure!(again.peers_in_room.is_empty(), "{again:?}");
    drop(attacker);
    let refusal = format!("{sent} candidates of 100 kB sent, `error` after {refused_after:?}");
    arena.close("candidate flood", start, &refusal).await
}

#[tokio::test]
async fn an_offer_of_too_many_mlines_or_tracks_is_refused_and_never_reaches_the_others(
) -> anyhow::Result<()> {
    let arena = Arena::open(&[]).await?;
    let mut observer = arena.observer().await?;
    enter(&mut observer, "attack", "Olive").await?;
    let mut attacker = arena.attacker().await?;
    let (channel, accepted) = enter(&mut attacker, "attack", "Mallory").await?;
    let start = arena.begin()?;

    let sent = Instant::now();
    attacker
        .push(
            &channel,
            &ClientEvent::SdpOffer(offer(&accepted.id, 0, 2000)),
        )
        .await?;
    let mlines = error_event(&mut attacker).await?;
    let mlines_after = sent.elapsed();
    assert_names(&mlines, "--max-mlines-per-offer")?;

    attacker
        .join_room(&channel, peer_metadata("Mallory"))
        .await?;
    let sent = Instant::now();
    attacker
        .push(&channel, &ClientEvent::SdpOffer(offer(&accepted.id, 9, 0)))
        .await?;
    let tracks = error_event(&mut attacker).await?;
    let tracks_after = sent.elapsed();
    assert_names(&tracks, "--max-tracks-per-peer")?;

    // The observer only saw the attacker come and go: no tracks, no slots to open.
    let mut seen = Vec::new();
    while let Some(frame) = observer.recv_within(Duration::from_millis(500)).await? {
        seen.push(e2e::phoenix::decode_media_event(&frame)?.kind());
    }
    ensure!(
        seen == [
            "peerJoined",
            "peerLeft",
            "peerJoined",
            "peerJoined",
            "peerLeft"
        ] || seen == ["peerJoined", "peerLeft", "peerJoined", "peerLeft"],
        "the observer saw {seen:?}"
    );
    drop((attacker, observer));
    let refusal = format!(
        "2,000 m-lines refused after {mlines_after:?}, 9 tracks refused after {tracks_after:?}"
    );
    arena.close("m-line and track bomb", start, &refusal).await
}

/// Reads `client` in the background until `stop` is seen, counting the events `count` picks.
fn drain(
    mut client: PhoenixClient,
    count: impl Fn(&ServerEvent) -> bool + Send + 'static,
    stop: impl Fn(&ServerEvent) -> bool + Send + 'static,
) -> tokio::task::JoinHandle<anyhow::Result<usize>> {
    tokio::spawn(async move {
        let mut counted = 0;
        loop {
            let frame = client.read_frame().await?;
            if frame.event != PhoenixEvent::MediaEvent {
                continue;
            }
            let event = e2e::phoenix::decode_media_event(&frame)?;
            counted += usize::from(count(&event));
            if stop(&event) {
                return Ok(counted);
            }
        }
    })
}

#[tokio::test]
async fn metadata_updates_in_a_room_of_twenty_stay_small() -> anyhow::Result<()> {
    let arena = Arena::open(&[]).await?;
    let mut attacker = arena.attacker().await?;
    let (channel, accepted) = enter(&mut attacker, "chatty", "Mallory").await?;
    let mallory = accepted.id;
    let mut listeners = Vec::new();
    for index in 0..19 {
        let mut listener = arena.observer().await?;
        enter(&mut listener, "chatty", &format!("listener{index}")).await?;
        let (from, left) = (mallory.clone(), mallory.clone());
        listeners.push(drain(
            listener,
            move |event| matches!(event, ServerEvent::PeerUpdated(update) if update.peer_id == from),
            move |event| matches!(event, ServerEvent::PeerLeft(gone) if gone.peer_id == left),
        ));
    }
    let start = arena.begin()?;
    // As much metadata as a peer may have, 150 times over, within the event rate.
    const UPDATES: usize = 150;
    let largest = json!({ "displayName": "Mallory", "bio": "x".repeat(4000) });
    for _ in 0..UPDATES {
        let update = ClientEvent::UpdatePeerMetadata(UpdatePeerMetadata {
            metadata: largest.clone(),
        });
        attacker.push(&channel, &update).await?;
    }
    // A little more than a peer may have: refused on its own.
    let too_much = ClientEvent::UpdatePeerMetadata(UpdatePeerMetadata {
        metadata: json!({ "bio": "x".repeat(5000) }),
    });
    let msg_ref = attacker.push(&channel, &too_much).await?;
    let reply = loop {
        let frame = attacker.recv().await?;
        if frame.msg_ref.as_deref() == Some(msg_ref.as_str()) {
            break frame;
        }
    };
    assert_names(&error_reason(&reply)?, "--max-metadata-bytes")?;
    // A megabyte: the socket is closed as too big.
    let sent = Instant::now();
    let huge = ClientEvent::UpdatePeerMetadata(UpdatePeerMetadata {
        metadata: json!({ "bio": "x".repeat(1 << 20) }),
    });
    attacker.push(&channel, &huge).await?;
    let (_, close) = attacker.frames_until_close(SOON).await?;
    let closed_after = sent.elapsed();
    ensure!(close.code == CloseCode::Size, "{close:?}");
    assert_names(&close.reason, "--max-frame-bytes")?;
    for listener in listeners {
        let updates = tokio::time::timeout(SOON, listener).await???;
        ensure!(
            updates == UPDATES,
            "a listener got {updates} of {UPDATES} updates"
        );
    }
    let refusal = format!(
        "{UPDATES} updates of 4 kB reached all 19 others; 5 kB refused; 1 MiB closed (1009) after {closed_after:?}"
    );
    arena
        .close("metadata amplification, 20 peers", start, &refusal)
        .await
}

#[tokio::test]
async fn one_socket_joins_only_a_few_rooms() -> anyhow::Result<()> {
    let arena = Arena::open(&[]).await?;
    let mut attacker = arena.attacker().await?;
    let start = arena.begin()?;
    // 5,000 rooms: a channel join and a media join each, as fast as the socket takes them.
    let mut sent = 0;
    for room in 0..5000 {
        let topic = format!("room:flood-{room}");
        let join_ref = attacker.next_ref();
        let join = Frame::request(
            Some(join_ref.clone()),
            join_ref.clone(),
            &topic,
            PhoenixEvent::Join,
            json!({}),
        );
        let media_join = Frame::media_event(
            Some(join_ref),
            Some(attacker.next_ref()),
            &topic,
            ClientEvent::Join(Join::default()).encode(),
        );
        if attacker.send(&join).await.is_err() || attacker.send(&media_join).await.is_err() {
            break;
        }
        sent += 1;
    }
    let (frames, close) = attacker.frames_until_close(SOON).await?;
    let refused_after = start.at.elapsed();
    let accepted = frames
        .iter()
        .filter(|frame| frame.event == PhoenixEvent::MediaEvent)
        .filter(|frame| {
            matches!(
                e2e::phoenix::decode_media_event(frame),
                Ok(ServerEvent::PeerAccepted(_))
            )
        })
        .count();
    let refusals: Vec<String> = frames
        .iter()
        .filter_map(|frame| error_reason(frame).ok())
        .filter(|reason| reason.contains("--max-rooms-per-socket"))
        .collect();
    ensure!(accepted == 4, "{accepted} rooms joined");
    ensure!(!refusals.is_empty(), "no join was refused: {frames:?}");
    ensure!(close.code == CloseCode::Policy, "{close:?}");
    assert_names(&close.reason, "--max-events-per-second")?;
    wait_for_counts(&arena.server, 1, 2, 2).await?;
    let refusal = format!(
        "{sent} room pairs sent: 4 joined, {} refused by room count, then closed (1008, rate) after {refused_after:?}",
        refusals.len()
    );
    arena
        .close("5,000 rooms from one socket", start, &refusal)
        .await
}

#[tokio::test]
async fn one_address_opens_only_a_few_sockets() -> anyhow::Result<()> {
    let arena = Arena::open(&[]).await?;
    let start = arena.begin()?;
    let limit = server::Config::defaults().limits.max_sockets_per_ip;
    let mut open = Vec::new();
    let mut refused = 0;
    let mut slowest_refusal = Duration::ZERO;
    for _batch in 0..10 {
        let attempts = (0..100).map(|_| async {
            let started = Instant::now();
            let mut client = arena.attacker().await?;
            let closed = client.recv_within(Duration::from_millis(300)).await;
            anyhow::Ok((client, closed, started.elapsed()))
        });
        for attempt in futures_util::future::join_all(attempts).await {
            let (client, closed, took) = attempt?;
            match closed {
                Ok(None) => open.push(client),
                Ok(Some(frame)) => bail!("a new socket got {}", frame.encode()),
                Err(err) => {
                    assert_names(&format!("{err:#}"), "--max-sockets-per-ip")?;
                    refused += 1;
                    slowest_refusal = slowest_refusal.max(took);
                }
            }
        }
    }
    ensure!(open.len() == limit, "{} sockets stayed open", open.len());
    // Each joins a room; none has media resources without an offer.
    for (index, client) in open.iter_mut().enumerate() {
        enter(client, &format!("socket-{index}"), "Mallory").await?;
    }
    wait_for_counts(&arena.server, limit + 1, limit + 2, 2).await?;
    drop(open);
    wait_for_counts(&arena.server, 1, 2, 2).await?;
    let refusal =
        format!("1,000 sockets: {limit} open, {refused} closed (1008) within {slowest_refusal:?}");
    arena
        .close("1,000 sockets from one address", start, &refusal)
        .await
}

#[tokio::test]
async fn joins_that_never_offer_hold_no_media_and_time_out() -> anyhow::Result<()> {
    let arena = Arena::open(&["--offer-timeout", "2"]).await?;
    let files_before = arena.server.open_files()?;
    let start = arena.begin()?;
    // 500 joins, four rooms a socket; the last ten sockets admitted join the bystanders' room
    // too, where `offerData` comes (a socket has one channel a room).
    let limit = server::Config::defaults().limits.max_sockets_per_ip;
    let mut sockets = Vec::new();
    let mut joined = 0;
    let mut offered = Vec::new();
    for _ in 0..125 {
        let Ok(mut client) = arena.attacker().await else {
            continue;
        };
        if client.heartbeat().await.is_err() {
            continue; // refused: past the sockets an address may have
        }
        let offering = sockets.len() + offered.len() >= limit - 10;
        for channel in 0..4 {
            let room = if offering && channel == 0 {
                "bystanders".to_owned()
            } else {
                format!("idle-{joined}")
            };
            enter(&mut client, &room, "Mallory").await?;
            joined += 1;
        }
        if offering {
            offered.push((client, Instant::now()));
        } else {
            sockets.push(client);
        }
    }
    let counts = arena.counts().await?;
    let files = arena.server.open_files()?;
    ensure!(
        counts.peer_connections == 2,
        "peer connections without offers: {counts:?}"
    );
    // Each socket is one file; nothing else (no UDP sockets) was opened for the joins.
    ensure!(
        files <= files_before + sockets.len() + offered.len() + 8,
        "{files} files open, {files_before} before {joined} joins"
    );
    let deadline = Instant::now() + SOON;
    let mut timeouts = 0;
    let mut slowest = Duration::ZERO;
    for (client, joined_at) in &mut offered {
        let message = loop {
            match error_event(client).await {
                Ok(message) => break message,
                Err(_) if Instant::now() < deadline => continue,
                Err(err) => return Err(err.context("waiting for the offer deadline")),
            }
        };
        assert_names(&message, "--offer-timeout")?;
        timeouts += 1;
        slowest = slowest.max(joined_at.elapsed());
    }
    ensure!(timeouts == 10, "{timeouts} of 10 offer deadlines passed");
    drop((sockets, offered));
    let refusal = format!(
        "{joined} joins of 500 admitted, 0 peer connections, {} files open for them; 10 removed at the 2 s offer deadline, the last {slowest:?} after its join",
        files - files_before
    );
    arena
        .close("500 joins that never offer", start, &refusal)
        .await
}

#[tokio::test]
async fn a_socket_that_stops_reading_is_dropped_and_slows_no_one() -> anyhow::Result<()> {
    let arena = Arena::open(&["--write-timeout", "2"]).await?;
    // The slow reader: a small receive buffer, and it never reads.
    let mut slow = PhoenixClient::connect_from(&arena.url(), ATTACKER, Some(4096)).await?;
    let (_, accepted) = enter(&mut slow, "busy", "Sloth").await?;
    let sloth = accepted.id;
    let start = arena.begin()?;
    // Four busy peers that read everything and update their metadata 50 times a second.
    let mut busy = Vec::new();
    for index in 0..4 {
        let mut peer = arena.observer().await?;
        let (channel, _) = enter(&mut peer, "busy", &format!("busy{index}")).await?;
        let gone = sloth.clone();
        busy.push(tokio::spawn(async move {
            let metadata = json!({ "displayName": format!("busy{index}"), "bio": "x".repeat(4000) });
            let mut tick = tokio::time::interval(Duration::from_millis(20));
            let deadline = Instant::now() + Duration::from_secs(60);
            loop {
                tokio::select! {
                    frame = peer.read_frame() => {
                        let frame = frame?;
                        if frame.event == PhoenixEvent::MediaEvent {
                            if let ServerEvent::PeerLeft(left) = e2e::phoenix::decode_media_event(&frame)? {
                                if left.peer_id == gone {
                                    return anyhow::Ok(Instant::now());
                                }
                            }
                        }
                    }
                    _ = tick.tick() => {
                        ensure!(Instant::now() < deadline, "the slow reader is still in the room");
                        let update = ClientEvent::UpdatePeerMetadata(UpdatePeerMetadata { metadata: metadata.clone() });
                        peer.push(&channel, &update).await?;
                    }
                }
            }
        }));
    }
    let mut removed_at = Vec::new();
    for peer in busy {
        removed_at.push(peer.await??);
    }
    let removed_after = *removed_at.iter().max().expect("four peers") - start.at;
    // The server let go of the slow socket: reading it now ends, with a close frame or without.
    let ended =
        tokio::time::timeout(SOON * 3, async { while slow.read_frame().await.is_ok() {} }).await;
    ensure!(ended.is_ok(), "the slow socket is still open");
    let refusal = format!("the slow reader removed after {removed_after:?}, its socket closed");
    arena
        .close("slow reader in a busy room", start, &refusal)
        .await
}

#[tokio::test]
async fn slowloris_connections_are_capped_and_timed_out() -> anyhow::Result<()> {
    // A header deadline far beyond how long opening and reading 1,000 connections takes on
    // a loaded machine: a held connection that expired early would free its slot for a later
    // one, and the count below would no longer say how many the server held at once.
    let arena = Arena::open(&["--header-timeout", "10"]).await?;
    let start = arena.begin()?;
    let address = SocketAddr::from((Ipv4Addr::LOCALHOST, arena.server.port));
    let mut held = Vec::new();
    for _ in 0..1000 {
        let socket = TcpSocket::new_v4()?;
        socket.bind(SocketAddr::new(ATTACKER, 0))?;
        let mut stream = socket.connect(address).await?;
        // Headers begun, never finished.
        let _ = stream
            .write_all(b"GET / HTTP/1.1\r\nHost: videoroom\r\n")
            .await;
        held.push(stream);
    }
    // The server still answers others meanwhile.
    let health = reqwest::get(arena.server.url("/health")).await?;
    ensure!(health.status().is_success(), "/health said {health:?}");
    // Every connection read at once, briefly: a refused one has its answer (or reset) waiting.
    let reads = held.into_iter().map(|mut stream| async move {
        let mut buffer = vec![0; 4096];
        let read = tokio::time::timeout(Duration::from_millis(500), stream.read(&mut buffer)).await;
        (stream, buffer, read)
    });
    let mut waiting = Vec::new();
    let (mut refused, mut dropped, mut expired) = (0, 0, 0);
    for (stream, buffer, read) in futures_util::future::join_all(reads).await {
        match read {
            Ok(Ok(size)) if size > 0 => {
                let answer = String::from_utf8_lossy(&buffer[..size]);
                ensure!(
                    answer.starts_with("HTTP/1.1 503")
                        && answer.contains("--max-connections-per-ip"),
                    "{answer}"
                );
                refused += 1;
            }
            // Held, and already closed at its header deadline.
            Ok(Ok(_)) => expired += 1,
            // Reset before its 503 could be read (our request bytes sat unread when the
            // server closed it): refused too, only less politely.
            Ok(Err(_)) => dropped += 1,
            Err(_) => waiting.push(stream),
        }
    }
    let limit = server::Config::defaults().limits.max_connections_per_ip;
    let held = waiting.len() + expired;
    ensure!(
        held <= limit,
        "{held} connections held, the limit is {limit}"
    );
    // Every held connection is closed once its header deadline passes.
    for stream in &mut waiting {
        let closed = tokio::time::timeout(SOON * 2, async {
            let mut buffer = [0; 256];
            loop {
                match stream.read(&mut buffer).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
            }
        })
        .await;
        ensure!(
            closed.is_ok(),
            "a slowloris connection outlived its deadline"
        );
    }
    let closed_after = start.at.elapsed();
    let refusal = format!(
        "1,000 connections: {held} held ({expired} of them closed at their deadline before they were read), {refused} refused (503), {dropped} reset before their 503 was read, all closed after {closed_after:?}"
    );
    drop(waiting);
    arena
        .close("1,000 slowloris connections", start, &refusal)
        .await
}

/// Frames that are not frames, or frames nobody can act on: each gets an error reply.
fn malformed(index: usize, limit: usize) -> String {
    match index % 8 {
        0 => "not json at all".to_owned(),
        1 => r#"{"an":"object"}"#.to_owned(),
        2 => "[1,2,3]".to_owned(),
        3 => format!(r#"[null,"{index}","room:nowhere","mediaEvent",{{"data":"{{}}"}}]"#),
        4 => "[".repeat(10_000),
        5 => format!(r#"[null,"{index}","phoenix","heartbeat",[]]"#),
        6 => format!(r#"["1","{index}","room:bad name!","phx_join",{{}}]"#),
        // Over the size limit, within twice it.
        _ if index % 64 == 7 => format!("\"{}\"", "x".repeat(limit + 10)),
        _ => format!(r#"[null,"{index}","phoenix","unknown_event",{{}}]"#),
    }
}

#[tokio::test]
async fn ten_thousand_bad_frames_get_ten_thousand_clear_errors() -> anyhow::Result<()> {
    let arena = Arena::open(&[]).await?;
    let limit = server::Config::defaults().limits.max_frame_bytes;
    let start = arena.begin()?;
    const SOCKETS: usize = 50;
    const FRAMES: usize = 200; // one socket's burst of the event rate
    let mut replies = 0;
    let mut closes = Vec::new();
    for socket in 0..SOCKETS {
        let mut attacker = arena.attacker().await?;
        for index in 0..FRAMES {
            attacker
                .send_message(Message::text(malformed(index, limit)))
                .await?;
        }
        for _ in 0..FRAMES {
            let reply = attacker.recv().await?;
            error_reason(&reply)?;
            replies += 1;
        }
        // Then one thing that ends the socket: bytes that are not UTF-8, or far too many.
        let ending = if socket % 2 == 0 {
            let text =
                WsFrame::message(vec![b'[', 0xff, 0xfe, b']'], OpCode::Data(Data::Text), true);
            Message::Frame(text)
        } else {
            Message::text("x".repeat(3 * limit))
        };
        attacker.send_message(ending).await?;
        let close = attacker.expect_close().await?;
        closes.push(close.code);
    }
    let refused_after = start.at.elapsed();
    ensure!(replies == SOCKETS * FRAMES, "{replies} error replies");
    let not_utf8 = closes
        .iter()
        .filter(|code| **code == CloseCode::Invalid)
        .count();
    let too_big = closes
        .iter()
        .filter(|code| **code == CloseCode::Size)
        .count();
    ensure!(
        not_utf8 == SOCKETS / 2 && too_big == SOCKETS / 2,
        "closes: {closes:?}"
    );
    let refusal = format!(
        "{replies} bad frames → {replies} error replies, then {not_utf8} closes 1007 and {too_big} closes 1009, in {refused_after:?}"
    );
    arena
        .close(
            "10,000 malformed, huge and deeply nested frames",
            start,
            &refusal,
        )
        .await
}

#[tokio::test]
async fn acting_on_another_peers_tracks_removes_the_actor() -> anyhow::Result<()> {
    let arena = Arena::open(&[]).await?;
    let mut attacker = arena.attacker().await?;
    let (channel, accepted) = enter(&mut attacker, "bystanders", "Mallory").await?;
    let ann_track = accepted
        .peers_in_room
        .iter()
        .flat_map(|peer| peer.track_id_to_metadata.keys())
        .next()
        .context("no bystander track")?
        .clone();
    let start = arena.begin()?;
    // Muting someone else's camera.
    let sent = Instant::now();
    let update = ClientEvent::UpdateTrackMetadata(UpdateTrackMetadata {
        track_id: ann_track.clone(),
        track_metadata: track_metadata(TrackType::Camera, false),
    });
    attacker.push(&channel, &update).await?;
    let message = error_event(&mut attacker).await?;
    let update_after = sent.elapsed();
    ensure!(message.contains("belongs to another peer"), "{message}");
    // Publishing someone else's track.
    attacker
        .join_room(&channel, peer_metadata("Mallory"))
        .await?;
    let mut stolen = offer(&accepted.id, 1, 0);
    stolen
        .mid_to_track_id
        .insert("0".to_owned(), ann_track.clone());
    attacker
        .push(&channel, &ClientEvent::SdpOffer(stolen))
        .await?;
    let message = error_event(&mut attacker).await?;
    ensure!(message.contains("belongs to another peer"), "{message}");
    for bystander in &arena.bystanders {
        let touched = bystander.state(|state| {
            state.events.iter().any(|event| {
                matches!(
                    event,
                    ServerEvent::TrackUpdated(_) | ServerEvent::TracksRemoved(_)
                )
            })
        });
        ensure!(!touched, "a bystander's tracks were touched");
    }
    drop(attacker);
    let refusal = format!("removed with `error` after {update_after:?}, twice");
    arena
        .close("acting on another peer's ids", start, &refusal)
        .await
}

#[tokio::test]
async fn abruptly_reset_sockets_leave_at_once() -> anyhow::Result<()> {
    let arena = Arena::open(&[]).await?;
    let mut observer = arena.observer().await?;
    enter(&mut observer, "resets", "Olive").await?;
    let mut attackers = Vec::new();
    for index in 0..10 {
        let mut attacker = arena.attacker().await?;
        enter(&mut attacker, "resets", &format!("gone{index}")).await?;
        attackers.push(attacker);
    }
    let start = arena.begin()?;
    for attacker in attackers {
        attacker.reset();
    }
    let mut left = 0;
    let deadline = start.at + Duration::from_secs(2);
    while left < 10 {
        let Some(frame) = observer
            .recv_within(deadline.saturating_duration_since(Instant::now()))
            .await?
        else {
            bail!("only {left} of 10 peerLeft within 2 s");
        };
        if let ServerEvent::PeerLeft(_) = e2e::phoenix::decode_media_event(&frame)? {
            left += 1;
        }
    }
    let all_left_after = start.at.elapsed();
    drop(observer);
    let refusal = format!("10 resets → 10 peerLeft after {all_left_after:?}");
    arena
        .close("10 abruptly reset sockets", start, &refusal)
        .await
}

/// Waits until `peer` has seen an `error` event, and returns its message.
async fn removal_of(peer: &SyntheticPeer) -> anyhow::Result<String> {
    let deadline = Instant::now() + SOON;
    loop {
        let message = peer.state(|state| {
            state.events.iter().find_map(|event| match event {
                ServerEvent::Error(error) => Some(error.message.clone()),
                _ => None,
            })
        });
        if let Some(message) = message {
            return Ok(message);
        }
        ensure!(Instant::now() < deadline, "no error event came");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Packets the peer received so far, over all tracks.
fn packets(peer: &SyntheticPeer) -> u64 {
    peer.state(|state| state.received.values().map(|r| r.packets).sum())
}

/// Waits until `peer` received `more` packets beyond `since`.
async fn receives(peer: &SyntheticPeer, since: u64, more: u64) -> anyhow::Result<()> {
    peer.wait_until("media to keep flowing", SOON, |state| {
        state.received.values().map(|r| r.packets).sum::<u64>() >= since + more
    })
    .await
}

/// With the test hooks, the server runs in this process: panics are injected, not provoked.
#[tokio::test]
async fn a_panicking_room_or_endpoint_loses_only_that_peer() -> anyhow::Result<()> {
    let _turn = ONE_AT_A_TIME.lock().await;
    let server = TestServer::start_with(server::Config {
        test_hooks: Some(server::test_hooks::TestHooks::default()),
        ..server::Config::defaults()
    })
    .await?;
    let url = server.socket_url();
    let ann = SyntheticPeer::join(&url, "panic", PeerOptions::publishing("Ann")).await?;
    let bob = SyntheticPeer::join(&url, "panic", PeerOptions::publishing("Bob")).await?;
    let carol = SyntheticPeer::join(&url, "panic", PeerOptions::publishing("Carol")).await?;
    for peer in [&ann, &bob, &carol] {
        peer.wait_until("everyone's media", SOON * 3, |state| {
            state.received.len() == 4 && state.received.values().all(|r| r.packets > 0)
        })
        .await?;
    }
    let panic_in = |site: &str| {
        ClientEvent::UpdatePeerMetadata(UpdatePeerMetadata {
            metadata: json!({ server::test_hooks::PANIC_KEY: site }),
        })
    };

    // The room's task panics on Carol's message: Carol is removed, the room goes on.
    carol.push(panic_in("room"));
    let message = removal_of(&carol).await?;
    ensure!(message.contains("internal server error"), "{message}");
    receives(&ann, packets(&ann), 100).await?;
    receives(&bob, packets(&bob), 100).await?;
    wait_until_counts(&server, 2).await?;

    // Bob's endpoint panics: Bob is removed, his connection closed; Ann's room goes on.
    let dave = SyntheticPeer::join(&url, "panic", PeerOptions::publishing("Dave")).await?;
    dave.wait_until("Ann's media", SOON * 3, |state| {
        state.received.values().filter(|r| r.packets > 0).count() >= 2
    })
    .await?;
    bob.push(panic_in("endpoint"));
    let message = removal_of(&bob).await?;
    ensure!(message.contains("internal server error"), "{message}");
    receives(&ann, packets(&ann), 100).await?;
    receives(&dave, packets(&dave), 100).await?;
    wait_until_counts(&server, 2).await?;
    println!("attack: panicking room and endpoint tasks: only the peer concerned was removed");

    for peer in [ann, dave] {
        peer.leave().await;
    }
    bob.vanish();
    carol.vanish();
    wait_until_counts(&server, 0).await
}

/// Polls the in-process server's `/stats` until it has `peers` peers, each with its connection.
async fn wait_until_counts(server: &TestServer, peers: usize) -> anyhow::Result<()> {
    let deadline = Instant::now() + SOON;
    loop {
        let counts = server.counts().await?;
        if counts.peers == peers && counts.peer_connections == peers {
            return Ok(());
        }
        ensure!(Instant::now() < deadline, "/stats stayed at {counts:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
