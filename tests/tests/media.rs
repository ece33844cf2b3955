//! Media through the real server: synthetic webrtc-rs peers publish generated VP8 and Opus over
//! the real protocol, and what each receives is counted and checked packet by packet.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use e2e::synthetic::{PeerOptions, PeerState, SyntheticPeer};
use e2e::throttle::Throttle;
use e2e::TestServer;
use rtc::rtp_transceiver::rtp_sender::RtpCodecKind;
use shared::client_event::{
    SdpOffer, SdpType, SessionDescription, SetTargetTrackVariant, SimulcastLayer,
};
use shared::server_event::{VadNotification, VadStatus};
use shared::{ClientEvent, PeerId, ServerEvent, TrackId};

const TIMEOUT: Duration = Duration::from_secs(15);

/// Audio and video packets in one second of generated media (Opus 20 ms, video 30 fps).
const ONE_SECOND: (u64, u64) = (50, 30);

async fn join(
    server: &TestServer,
    room: &str,
    options: PeerOptions,
) -> anyhow::Result<SyntheticPeer> {
    let peer = SyntheticPeer::join(&server.socket_url(), room, options).await?;
    let tracks = peer.state(|state| state.published.len());
    let wanted = 2;
    peer.wait_until("the peer's own tracks", TIMEOUT, |state| {
        state.id.is_some() && (state.published.len() == wanted || tracks == 0)
    })
    .await?;
    Ok(peer)
}

/// The tracks `publisher` publishes.
fn published(publisher: &SyntheticPeer) -> Vec<TrackId> {
    publisher.state(|state| state.published.keys().cloned().collect())
}

/// How many packets of each of `tracks` `receiver` has had.
fn packet_counts(receiver: &SyntheticPeer, tracks: &[TrackId]) -> BTreeMap<TrackId, u64> {
    receiver.state(|state| {
        tracks
            .iter()
            .map(|id| {
                (
                    id.clone(),
                    state
                        .received
                        .get(id)
                        .map_or(0, |received| received.packets),
                )
            })
            .collect()
    })
}

/// Waits until `receiver` has had `more` (audio, video) packets of each of `tracks`.
async fn wait_for_media(
    receiver: &SyntheticPeer,
    tracks: &[TrackId],
    more: (u64, u64),
) -> anyhow::Result<()> {
    let before = packet_counts(receiver, tracks);
    receiver
        .wait_until("media", TIMEOUT, |state| {
            tracks.iter().all(|id| {
                state.received.get(id).is_some_and(|received| {
                    let wanted = if received.kind == Some(RtpCodecKind::Audio) {
                        more.0
                    } else {
                        more.1
                    };
                    received.packets >= before[id] + wanted
                })
            })
        })
        .await
}

/// Prints what `receiver` got of `tracks`, and checks it is intact, nearly lossless, and that
/// each publisher's audio and video came in one stream named after the publisher.
fn check_received(name: &str, receiver: &SyntheticPeer, tracks: &[TrackId]) {
    receiver.state(|state| {
        for id in tracks {
            let received = &state.received[id];
            println!(
                "{name} ← {id}: {:?}, {} packets, {} lost, {} corrupt, {} keyframes, first packet {:?}, first keyframe {:?}, latency p50 {:?} µs p99 {:?} µs",
                received.kind.expect("kind known"), received.packets, received.lost(), received.corrupt, received.keyframes,
                received.first_packet, received.first_keyframe,
                received.latency_quantile_us(0.5), received.latency_quantile_us(0.99),
            );
            assert_eq!(received.corrupt, 0, "{name} got corrupt packets of {id}");
            assert!(received.lost() * 20 <= received.packets, "{name} lost over 5 % of {id}");
            assert_eq!(received.stream_id.as_deref(), Some(id.owner()), "{id} is not in its publisher's stream");
        }
    });
}

fn saw_peer_left(state: &PeerState, peer: &PeerId) -> bool {
    state
        .events
        .iter()
        .any(|event| matches!(event, ServerEvent::PeerLeft(left) if &left.peer_id == peer))
}

fn sent(publisher: &SyntheticPeer, track: &TrackId) -> u64 {
    publisher.state(|state| state.published[track].packets.load(Ordering::Relaxed))
}

#[tokio::test]
async fn two_peers_receive_each_others_audio_and_video() -> anyhow::Result<()> {
    let server = TestServer::start().await?;
    let ann = join(&server, "pair", PeerOptions::publishing("Ann")).await?;
    let bob = join(&server, "pair", PeerOptions::publishing("Bob")).await?;
    let (ann_tracks, bob_tracks) = (published(&ann), published(&bob));

    // Two seconds of media each way.
    wait_for_media(&ann, &bob_tracks, (2 * ONE_SECOND.0, 2 * ONE_SECOND.1)).await?;
    wait_for_media(&bob, &ann_tracks, (2 * ONE_SECOND.0, 2 * ONE_SECOND.1)).await?;
    check_received("Ann", &ann, &bob_tracks);
    check_received("Bob", &bob, &ann_tracks);
    for (publisher, tracks) in [(&ann, &ann_tracks), (&bob, &bob_tracks)] {
        for id in tracks {
            println!("{id}: {} packets sent", sent(publisher, id));
        }
    }
    // Each receives exactly the other's tracks, nothing of its own.
    assert_eq!(
        ann.state(|state| state.received.keys().cloned().collect::<Vec<_>>()),
        bob_tracks
    );
    assert_eq!(
        bob.state(|state| state.received.keys().cloned().collect::<Vec<_>>()),
        ann_tracks
    );
    ann.leave().await;
    bob.leave().await;
    Ok(())
}

/// The `vadNotification`s a peer got about `track`, in order.
fn voice_statuses(state: &PeerState, track: &TrackId) -> Vec<VadStatus> {
    state
        .events
        .iter()
        .filter_map(|event| match event {
            ServerEvent::VadNotification(VadNotification { track_id, status })
                if track_id == track =>
            {
                Some(*status)
            }
            _ => None,
        })
        .collect()
}

/// Ann's audio packets say she speaks: the room (Ann included) hears of speech on her audio
/// track, and of silence when her packets say quiet again; Bob, silent, is never speaking.
#[tokio::test]
async fn the_room_hears_who_is_speaking_from_the_audio_level() -> anyhow::Result<()> {
    let server = TestServer::start().await?;
    let ann = join(&server, "voices", PeerOptions::publishing("Ann")).await?;
    let bob = join(&server, "voices", PeerOptions::publishing("Bob")).await?;
    let (ann_tracks, bob_tracks) = (published(&ann), published(&bob));
    wait_for_media(&bob, &ann_tracks, ONE_SECOND).await?;
    wait_for_media(&ann, &bob_tracks, ONE_SECOND).await?;
    let audio_of = |receiver: &SyntheticPeer, tracks: &[TrackId]| {
        receiver.state(|state| {
            tracks
                .iter()
                .find(|id| state.received[*id].kind == Some(RtpCodecKind::Audio))
                .cloned()
        })
    };
    let ann_audio = audio_of(&bob, &ann_tracks).expect("Bob receives Ann's audio");
    let bob_audio = audio_of(&ann, &bob_tracks).expect("Ann receives Bob's audio");
    assert!(
        bob.state(|state| voice_statuses(state, &ann_audio))
            .is_empty(),
        "silence is not speech"
    );

    ann.set_audio_level(25);
    let speaking = Instant::now();
    for peer in [&bob, &ann] {
        peer.wait_until("speech on Ann's audio track", TIMEOUT, |state| {
            voice_statuses(state, &ann_audio).first() == Some(&VadStatus::Speech)
        })
        .await?;
    }
    println!(
        "speech reported {} ms after it began",
        speaking.elapsed().as_millis()
    );

    ann.set_audio_level(110);
    let quiet = Instant::now();
    bob.wait_until("silence on Ann's audio track", TIMEOUT, |state| {
        voice_statuses(state, &ann_audio) == [VadStatus::Speech, VadStatus::Silence]
    })
    .await?;
    println!(
        "silence reported {} ms after it began",
        quiet.elapsed().as_millis()
    );
    for peer in [&ann, &bob] {
        let bob_spoke = peer.state(|state| voice_statuses(state, &bob_audio));
        assert!(bob_spoke.is_empty(), "Bob never spoke: {bob_spoke:?}");
    }
    ann.leave().await;
    bob.leave().await;
    Ok(())
}

/// The `encodingSwitched` events a peer got about `track`, in order.
fn switches(state: &PeerState, track: &TrackId) -> Vec<SimulcastLayer> {
    state
        .events
        .iter()
        .filter_map(|event| match event {
            ServerEvent::EncodingSwitched(switched) if &switched.track_id == track => {
                Some(switched.encoding)
            }
            _ => None,
        })
        .collect()
}

/// The video track of `tracks` that `receiver` receives.
fn received_video(receiver: &SyntheticPeer, tracks: &[TrackId]) -> TrackId {
    receiver
        .state(|state| {
            tracks
                .iter()
                .find(|id| state.received[*id].kind == Some(RtpCodecKind::Video))
                .cloned()
        })
        .expect("the video is received")
}

/// Packets of each simulcast layer (0 `l`, 1 `m`, 2 `h`) `receiver` has had of `track`.
fn layer_counts(receiver: &SyntheticPeer, track: &TrackId) -> [u64; 3] {
    receiver.state(|state| state.received.get(track).map_or([0; 3], layer_counts_of))
}

/// Ann publishes her video in three simulcast layers, each tagged in its payloads. Bob asks for
/// `l` and then receives only `l`; asked for `h`, he is moved at an `h` keyframe, with RTP
/// sequence numbers that run on without a gap; the server confirms each switch.
#[tokio::test]
async fn a_subscriber_gets_the_simulcast_layer_it_asks_for() -> anyhow::Result<()> {
    let server = TestServer::start().await?;
    let ann = join(
        &server,
        "layers",
        PeerOptions {
            simulcast: true,
            ..PeerOptions::publishing("Ann")
        },
    )
    .await?;
    let bob = join(&server, "layers", PeerOptions::receive_only("Bob")).await?;
    let ann_tracks = published(&ann);
    wait_for_media(&bob, &ann_tracks, ONE_SECOND).await?;
    let video = received_video(&bob, &ann_tracks);
    // Unasked, a subscriber gets the best layer.
    bob.wait_until("the high layer, unasked", TIMEOUT, |state| {
        switches(state, &video) == [SimulcastLayer::High]
    })
    .await?;

    let wish = |layer| {
        ClientEvent::SetTargetTrackVariant(SetTargetTrackVariant {
            track_id: video.clone(),
            variant: layer,
        })
    };
    bob.push(wish(SimulcastLayer::Low));
    let asked = Instant::now();
    bob.wait_until("the switch to l", TIMEOUT, |state| {
        switches(state, &video).last() == Some(&SimulcastLayer::Low)
    })
    .await?;
    let to_low = asked.elapsed();
    let at_switch = layer_counts(&bob, &video);
    wait_for_media(&bob, std::slice::from_ref(&video), (0, ONE_SECOND.1)).await?;
    let after = layer_counts(&bob, &video);
    println!("l: switched {} ms after the wish; packets by layer then {at_switch:?}, a second later {after:?}", to_low.as_millis());
    assert_eq!(
        (after[1], after[2]),
        (at_switch[1], at_switch[2]),
        "only l comes after the switch to it"
    );
    assert!(
        after[0] >= at_switch[0] + ONE_SECOND.1 / 2,
        "l comes: {after:?}"
    );

    bob.push(wish(SimulcastLayer::High));
    let asked = Instant::now();
    bob.wait_until("the switch to h", TIMEOUT, |state| {
        switches(state, &video).last() == Some(&SimulcastLayer::High)
    })
    .await?;
    let to_high = asked.elapsed();
    wait_for_media(&bob, std::slice::from_ref(&video), (0, ONE_SECOND.1)).await?;
    let (changes, breaks, counts) = bob.state(|state| {
        let received = &state.received[&video];
        (
            received.layer_changes.clone(),
            received.sequence_breaks,
            layer_counts_of(received),
        )
    });
    println!(
        "h: switched {} ms after the wish; layer changes {changes:?}, packets by layer {counts:?}",
        to_high.as_millis()
    );
    assert_eq!(
        changes.iter().map(|(layer, _)| *layer).collect::<Vec<_>>(),
        [2, 0, 2],
        "h, then l, then h"
    );
    assert!(
        changes.iter().all(|(_, keyframe)| *keyframe),
        "every layer starts at a keyframe: {changes:?}"
    );
    assert_eq!(
        breaks, 0,
        "the sequence numbers run on across both switches"
    );
    ann.leave().await;
    bob.leave().await;
    Ok(())
}

/// Ann publishes three layers (about 150, 300 and 500 kbit/s). Bob's downlink passes a relay
/// shaped like `tc tbf`; Carol's does not. Both start on `h`. Bob's link is narrowed to 300
/// kbit/s: the server's congestion controller, on Bob's transport-wide feedback, moves him down
/// to `l` within seconds, and he keeps receiving it; Carol stays on `h`. The link widens
/// again: Bob is moved back up to `h`.
#[tokio::test]
async fn a_narrow_downlink_is_moved_down_to_the_low_layer_and_back_up() -> anyhow::Result<()> {
    let server = TestServer::start().await?;
    let ann = join(
        &server,
        "narrow",
        PeerOptions {
            simulcast: true,
            video_packets_per_frame: 2,
            ..PeerOptions::publishing("Ann")
        },
    )
    .await?;
    let throttle = Throttle::default();
    let bob = join(
        &server,
        "narrow",
        PeerOptions {
            downlink: Some(throttle.clone()),
            ..PeerOptions::receive_only("Bob")
        },
    )
    .await?;
    let carol = join(&server, "narrow", PeerOptions::receive_only("Carol")).await?;
    let ann_tracks = published(&ann);
    wait_for_media(&bob, &ann_tracks, ONE_SECOND).await?;
    wait_for_media(&carol, &ann_tracks, ONE_SECOND).await?;
    let video = received_video(&bob, &ann_tracks);
    for peer in [&bob, &carol] {
        peer.wait_until("the high layer on a wide link", TIMEOUT, |state| {
            switches(state, &video) == [SimulcastLayer::High]
        })
        .await?;
    }
    // A few seconds at h, so the estimate has feedback to stand on.
    tokio::time::sleep(Duration::from_secs(3)).await;

    throttle.set_rate(Some(300_000));
    let narrowed = Instant::now();
    bob.wait_until("Bob moved down to l", Duration::from_secs(20), |state| {
        switches(state, &video).last() == Some(&SimulcastLayer::Low)
    })
    .await?;
    let stepped_down = narrowed.elapsed();
    let at_low = layer_counts(&bob, &video);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let later = layer_counts(&bob, &video);
    println!(
        "narrowed to 300 kbit/s: Bob on l {} ms later; l packets in the next 3 s: {}; \
         Bob's switches {:?}",
        stepped_down.as_millis(),
        later[0] - at_low[0],
        bob.state(|state| switches(state, &video))
    );
    assert!(
        later[0] >= at_low[0] + 2 * ONE_SECOND.1,
        "Bob keeps receiving l on the narrow link: {at_low:?} then {later:?}"
    );
    let carol_switches = carol.state(|state| switches(state, &video));
    assert_eq!(
        carol_switches,
        [SimulcastLayer::High],
        "Carol's link is wide: she stays on h"
    );

    throttle.set_rate(None);
    let widened = Instant::now();
    bob.wait_until("Bob back up to h", Duration::from_secs(60), |state| {
        switches(state, &video).last() == Some(&SimulcastLayer::High)
    })
    .await?;
    println!(
        "widened: Bob on h {} ms later; switches {:?}",
        widened.elapsed().as_millis(),
        bob.state(|state| switches(state, &video))
    );
    // (Which layer each packet came in is no test of the switches here: the packets lost on
    // the narrow link are resent from before a switch, after it.)
    let carol_received = layer_counts(&carol, &video);
    assert_eq!(
        (carol_received[0], carol_received[1]),
        (0, 0),
        "Carol received only h"
    );
    ann.leave().await;
    bob.leave().await;
    carol.leave().await;
    Ok(())
}

/// Packets by layer in one track's reception.
fn layer_counts_of(received: &e2e::synthetic::Received) -> [u64; 3] {
    [0, 1, 2].map(|layer| received.layers.get(&layer).copied().unwrap_or(0))
}

#[tokio::test]
async fn a_late_joiner_gets_everyone_and_a_keyframe_at_once() -> anyhow::Result<()> {
    let server = TestServer::start().await?;
    // Keyframes only every minute: a late joiner gets one quickly only if its keyframe
    // request reaches the publisher through the server.
    let rare_keyframes = |name| PeerOptions {
        keyframe_interval: Duration::from_secs(60),
        ..PeerOptions::publishing(name)
    };
    let ann = join(&server, "late", rare_keyframes("Ann")).await?;
    let bob = join(&server, "late", rare_keyframes("Bob")).await?;
    let (ann_tracks, bob_tracks) = (published(&ann), published(&bob));
    wait_for_media(&ann, &bob_tracks, ONE_SECOND).await?;
    wait_for_media(&bob, &ann_tracks, ONE_SECOND).await?;

    let joined = Instant::now();
    let carol = join(&server, "late", PeerOptions::publishing("Carol")).await?;
    let accepted = carol.state(|state| {
        state.events.iter().find_map(|event| match event {
            ServerEvent::PeerAccepted(accepted) => Some(accepted.clone()),
            _ => None,
        })
    });
    let accepted = accepted.expect("peerAccepted came first");
    let listed: BTreeMap<PeerId, Vec<TrackId>> = accepted
        .peers_in_room
        .iter()
        .map(|peer| {
            (
                peer.id.clone(),
                peer.track_id_to_metadata.keys().cloned().collect(),
            )
        })
        .collect();
    let expected = BTreeMap::from([
        (ann.id().unwrap(), ann_tracks.clone()),
        (bob.id().unwrap(), bob_tracks.clone()),
    ]);
    assert_eq!(
        listed, expected,
        "peerAccepted lists both peers with their tracks"
    );

    let others: Vec<TrackId> = ann_tracks.iter().chain(&bob_tracks).cloned().collect();
    wait_for_media(&carol, &others, ONE_SECOND).await?;
    check_received("Carol", &carol, &others);
    for video in others
        .iter()
        .filter(|id| carol.state(|state| state.received[*id].kind == Some(RtpCodecKind::Video)))
    {
        let first_keyframe = carol.state(|state| state.received[video].first_keyframe);
        println!(
            "Carol: first keyframe of {video} {:?} after joining",
            first_keyframe
        );
        assert!(
            first_keyframe.is_some(),
            "no keyframe of {video} in a second of video"
        );
    }
    println!(
        "Carol: joined to media of 4 tracks in {:?}",
        joined.elapsed()
    );

    // The others renegotiate and receive Carol's tracks too.
    let carol_tracks = published(&carol);
    wait_for_media(&ann, &carol_tracks, ONE_SECOND).await?;
    wait_for_media(&bob, &carol_tracks, ONE_SECOND).await?;
    check_received("Ann", &ann, &carol_tracks);
    check_received("Bob", &bob, &carol_tracks);
    for peer in [ann, bob, carol] {
        peer.leave().await;
    }
    Ok(())
}

#[tokio::test]
async fn leaving_or_vanishing_peers_are_gone_for_the_others_and_the_room_closes(
) -> anyhow::Result<()> {
    let server = TestServer::start().await?;
    let ann = join(&server, "leaving", PeerOptions::publishing("Ann")).await?;
    let bob = join(&server, "leaving", PeerOptions::publishing("Bob")).await?;
    let carol = join(&server, "leaving", PeerOptions::publishing("Carol")).await?;
    let (bob_tracks, carol_tracks) = (published(&bob), published(&carol));
    wait_for_media(&ann, &bob_tracks, ONE_SECOND).await?;
    wait_for_media(&ann, &carol_tracks, ONE_SECOND).await?;
    assert_eq!(server.counts().await?.peer_connections, 3);

    // Carol says goodbye.
    let carol_id = carol.id().unwrap();
    carol.leave().await;
    ann.wait_until("peerLeft for Carol", TIMEOUT, |state| {
        saw_peer_left(state, &carol_id)
    })
    .await?;
    bob.wait_until("peerLeft for Carol", TIMEOUT, |state| {
        saw_peer_left(state, &carol_id)
    })
    .await?;
    // Her tracks stop while Bob's go on.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let after_leave = packet_counts(&ann, &carol_tracks);
    wait_for_media(&ann, &bob_tracks, ONE_SECOND).await?;
    assert_eq!(
        packet_counts(&ann, &carol_tracks),
        after_leave,
        "Carol's media still arrives"
    );

    // Bob's socket and connection vanish without a word.
    let bob_id = bob.id().unwrap();
    let vanished = Instant::now();
    bob.vanish();
    ann.wait_until("peerLeft for Bob", Duration::from_secs(2), |state| {
        saw_peer_left(state, &bob_id)
    })
    .await?;
    println!("Ann heard that Bob vanished after {:?}", vanished.elapsed());

    ann.leave().await;
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let counts = server.counts().await?;
        if counts.rooms == 0 && counts.peers == 0 && counts.peer_connections == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the room outlived its peers: {counts:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

#[tokio::test]
async fn a_bad_offer_removes_only_its_sender() -> anyhow::Result<()> {
    let server = TestServer::start().await?;
    let ann = join(&server, "bad-offer", PeerOptions::publishing("Ann")).await?;
    let bob = join(&server, "bad-offer", PeerOptions::publishing("Bob")).await?;
    let bob_tracks = published(&bob);
    wait_for_media(&ann, &bob_tracks, ONE_SECOND).await?;

    let bad_offers = [
        ("m=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=mid:0\r\na=sendrecv\r\na=rtpmap:111 opus/48000/2\r\n", "sendrecv"),
        ("v=0\r\nthis is not SDP", "offer"),
    ];
    for (sdp, complaint) in bad_offers {
        let mallory = join(&server, "bad-offer", PeerOptions::receive_only("Mallory")).await?;
        let mallory_id = mallory.id().unwrap();
        mallory.push(ClientEvent::SdpOffer(SdpOffer {
            sdp_offer: SessionDescription {
                sdp_type: SdpType::Offer,
                sdp: sdp.to_owned(),
            },
            track_id_to_track_metadata: BTreeMap::new(),
            mid_to_track_id: BTreeMap::new(),
        }));
        // (An error ends the peer's session, and waiting checks the condition before that.)
        mallory
            .wait_until("an error event", TIMEOUT, |state| {
                state
                    .events
                    .iter()
                    .any(|event| matches!(event, ServerEvent::Error(_)))
            })
            .await?;
        let message = mallory.state(|state| {
            state.events.iter().find_map(|event| match event {
                ServerEvent::Error(error) => Some(error.message.clone()),
                _ => None,
            })
        });
        let message = message.expect("an error event");
        println!("Mallory was told: {message}");
        assert!(message.contains(complaint), "unclear error: {message}");
        ann.wait_until("peerLeft for Mallory", TIMEOUT, |state| {
            saw_peer_left(state, &mallory_id)
        })
        .await?;
        mallory.vanish();
    }
    // Ann still gets Bob's media.
    wait_for_media(&ann, &bob_tracks, ONE_SECOND).await?;
    check_received("Ann", &ann, &bob_tracks);
    ann.leave().await;
    bob.leave().await;
    Ok(())
}

#[tokio::test]
async fn a_subscriber_that_reports_a_video_packet_lost_gets_it_again() -> anyhow::Result<()> {
    let server = TestServer::start().await?;
    let ann = join(&server, "nack", PeerOptions::publishing("Ann")).await?;
    let bob = join(&server, "nack", PeerOptions::publishing("Bob")).await?;
    let bob_tracks = published(&bob);
    wait_for_media(&ann, &bob_tracks, ONE_SECOND).await?;
    let video = bob_tracks
        .iter()
        .find(|id| ann.state(|state| state.received[*id].kind == Some(RtpCodecKind::Video)))
        .expect("Bob publishes video")
        .clone();
    let nacks_before = nacks_counted(&server).await?;
    // Three NACKs in turn: each packet comes again from the server's send buffer.
    for round in 1..=3 {
        ann.nack_next_packet(&video);
        ann.wait_until("the NACKed packet again", Duration::from_secs(3), |state| {
            state.received[&video].retransmitted >= round
        })
        .await?;
    }
    check_received("Ann", &ann, &bob_tracks);
    let nacks = nacks_counted(&server).await? - nacks_before;
    assert!(
        nacks >= 3.0,
        "/metrics counted {nacks} NACKs for Ann's three"
    );
    ann.leave().await;
    bob.leave().await;
    Ok(())
}

/// `videoroom_nacks_received_total` now (the process's servers share it, so it only grows).
async fn nacks_counted(server: &TestServer) -> anyhow::Result<f64> {
    let metrics = reqwest::get(server.url("/metrics")).await?.text().await?;
    Ok(metrics
        .lines()
        .find_map(|line| line.strip_prefix("videoroom_nacks_received_total "))
        .and_then(|value| value.trim().parse().ok())
        .unwrap_or(0.0))
}

/// Packets each of `tracks` has had sent by `publisher`.
fn sent_counts(publisher: &SyntheticPeer, tracks: &[TrackId]) -> BTreeMap<TrackId, u64> {
    tracks
        .iter()
        .map(|id| (id.clone(), sent(publisher, id)))
        .collect()
}

/// A subscriber that stops reading (a frozen tab: its whole runtime blocked, its socket buffer
/// full) and one whose address goes dead (vanished without a word) lose their own packets;
/// the publisher and the healthy subscriber, on the same media worker, notice nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribers_that_cannot_keep_up_slow_no_one_else() -> anyhow::Result<()> {
    const FROZEN_FOR: Duration = Duration::from_secs(4);
    let server = TestServer::start_with(server::Config {
        media_workers: 1,
        ..server::Config::defaults()
    })
    .await?;
    // The load generator's 1.5 Mbit/s: more than a frozen socket's buffer holds over the freeze.
    let options = PeerOptions {
        video_packet_size: 1_250,
        video_packets_per_frame: 5,
        ..PeerOptions::publishing("Pat")
    };
    let publisher = join(&server, "isolation", options).await?;
    let tracks = published(&publisher);
    let healthy = join(&server, "isolation", PeerOptions::receive_only("Hal")).await?;
    let vanishing = join(&server, "isolation", PeerOptions::receive_only("Vic")).await?;

    // The frozen subscriber lives on a runtime of its own, so blocking it blocks only it.
    let (frozen_tx, frozen_rx) = tokio::sync::oneshot::channel();
    let (url, frozen_tracks) = (server.socket_url(), tracks.clone());
    let frozen = std::thread::spawn(move || -> anyhow::Result<u64> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        runtime.block_on(async move {
            let frozen =
                SyntheticPeer::join(&url, "isolation", PeerOptions::receive_only("Fay")).await?;
            wait_for_media(&frozen, &frozen_tracks, ONE_SECOND).await?;
            let _ = frozen_tx.send(());
            // Nothing on this runtime runs meanwhile: its sockets are not read.
            std::thread::sleep(FROZEN_FOR);
            wait_for_media(&frozen, &frozen_tracks, ONE_SECOND).await?;
            let lost = frozen.state(|state| state.received.values().map(|r| r.lost()).sum());
            frozen.leave().await;
            Ok(lost)
        })
    });
    wait_for_media(&healthy, &tracks, ONE_SECOND).await?;
    wait_for_media(&vanishing, &tracks, ONE_SECOND).await?;
    frozen_rx.await?;
    vanishing.vanish();

    let (sent_before, got_before) = (
        sent_counts(&publisher, &tracks),
        packet_counts(&healthy, &tracks),
    );
    let latencies_before: BTreeMap<TrackId, usize> = healthy.state(|state| {
        tracks
            .iter()
            .map(|id| (id.clone(), state.received[id].latencies_us.len()))
            .collect()
    });
    tokio::time::sleep(FROZEN_FOR - Duration::from_millis(500)).await;
    let sent_after = sent_counts(&publisher, &tracks);
    // The healthy subscriber gets what was sent meanwhile (given time on a loaded machine)…
    for id in &tracks {
        let sent = sent_after[id] - sent_before[id];
        assert!(sent > 0, "the publisher stopped sending");
        let wanted = got_before[id] + sent * 97 / 100;
        healthy
            .wait_until("the window's packets", TIMEOUT, |state| {
                state.received[id].packets >= wanted
            })
            .await?;
        println!("{id}: sent {sent} while the others stalled, the healthy subscriber got them");
    }
    // …and without delay: a server held up by a stalled subscriber would have delivered the
    // window's packets up to the freeze's length late.
    let mut latencies: Vec<u64> = healthy.state(|state| {
        tracks
            .iter()
            .flat_map(|id| state.received[id].latencies_us[latencies_before[id]..].to_vec())
            .collect()
    });
    latencies.sort_unstable();
    let p99 = Duration::from_micros(latencies[latencies.len() * 99 / 100]);
    println!("the healthy subscriber's p99 latency meanwhile: {p99:?}");
    assert!(
        p99 < FROZEN_FOR / 2,
        "the healthy subscriber's packets came {p99:?} late (p99) while others stalled"
    );
    let healthy_lost: u64 = healthy.state(|state| state.received.values().map(|r| r.lost()).sum());
    assert_eq!(healthy_lost, 0, "the healthy subscriber lost packets");
    let frozen_lost = frozen.join().expect("the frozen peer's thread")?;
    println!("the frozen subscriber lost {frozen_lost} packets over its freeze");
    assert!(
        frozen_lost > 0,
        "the frozen subscriber lost nothing: the test froze nothing"
    );
    let metrics = reqwest::get(server.url("/metrics")).await?.text().await?;
    println!(
        "{}",
        metrics
            .lines()
            .filter(|line| line.starts_with("videoroom_media_datagrams"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    Ok(())
}

/// A peer on a network that blocks UDP reaches the worker's ICE-TCP candidate (its port number,
/// RFC 4571 framing) and sends and receives media through it, in a room with a UDP peer.
#[tokio::test]
async fn a_peer_limited_to_tcp_sends_and_receives_media() -> anyhow::Result<()> {
    let server = TestServer::start().await?;
    let uma = join(&server, "tcp", PeerOptions::publishing("Uma")).await?;
    let tcp_only = PeerOptions {
        tcp_only: true,
        ..PeerOptions::publishing("Tom")
    };
    let tom = join(&server, "tcp", tcp_only).await?;
    let (uma_tracks, tom_tracks) = (published(&uma), published(&tom));
    wait_for_media(&tom, &uma_tracks, (2 * ONE_SECOND.0, 2 * ONE_SECOND.1)).await?;
    wait_for_media(&uma, &tom_tracks, (2 * ONE_SECOND.0, 2 * ONE_SECOND.1)).await?;
    check_received("Tom (TCP)", &tom, &uma_tracks);
    check_received("Uma (UDP)", &uma, &tom_tracks);
    tom.leave().await;
    uma.leave().await;
    Ok(())
}

/// Two peers that use relayed candidates only, through the UDP TURN entry of their `offerData`
/// (as the Membrane JS client connects), exchange media through the embedded TURN server of a
/// server started without any TURN flag.
#[tokio::test]
async fn relay_only_peers_get_media_through_the_embedded_turn_server() -> anyhow::Result<()> {
    let server = TestServer::start().await?;
    let relayed = |name: &str| PeerOptions {
        relay_only: true,
        ..PeerOptions::publishing(name)
    };
    let rita = join(&server, "relayed", relayed("Rita")).await?;
    let remy = join(&server, "relayed", relayed("Remy")).await?;
    let (rita_tracks, remy_tracks) = (published(&rita), published(&remy));
    wait_for_media(&remy, &rita_tracks, (2 * ONE_SECOND.0, 2 * ONE_SECOND.1)).await?;
    wait_for_media(&rita, &remy_tracks, (2 * ONE_SECOND.0, 2 * ONE_SECOND.1)).await?;
    check_received("Remy (relayed)", &remy, &rita_tracks);
    check_received("Rita (relayed)", &rita, &remy_tracks);
    let metrics = reqwest::get(server.url("/metrics")).await?.text().await?;
    let value = |name: &str| -> f64 {
        metrics
            .lines()
            .filter(|line| line.starts_with(name))
            .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    };
    let (allocations, relayed) = (
        value("videoroom_turn_allocations "),
        value("videoroom_turn_relayed_datagrams_total"),
    );
    println!("TURN allocations open: {allocations}, datagrams relayed: {relayed}");
    assert!(
        allocations >= 2.0,
        "{allocations} TURN allocations for two relayed peers"
    );
    // Both peers' media went through the relay, each way: at least four seconds of it.
    let least = 4 * (ONE_SECOND.0 + ONE_SECOND.1);
    assert!(relayed >= least as f64, "only {relayed} datagrams relayed");
    rita.leave().await;
    remy.leave().await;
    Ok(())
}
