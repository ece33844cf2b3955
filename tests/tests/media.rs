//! Media through the real server: synthetic webrtc-rs peers publish generated VP8 and Opus over
//! the real protocol, and what each receives is counted and checked packet by packet.

use std::time::Duration;

use e2e::synthetic::{PeerOptions, PeerState, SyntheticPeer};
use e2e::TestServer;
use shared::{PeerId, ServerEvent, TrackId};

const MEDIA_TIMEOUT: Duration = Duration::from_secs(15);

/// The tracks `publisher` publishes.
fn published(publisher: &SyntheticPeer) -> Vec<TrackId> {
    publisher.state(|state| state.published.keys().cloned().collect())
}

/// Whether `state` received at least `audio` and `video` packets of each of `tracks`.
fn received_enough(state: &PeerState, tracks: &[TrackId], audio: u64, video: u64) -> bool {
    tracks.iter().all(|id| {
        state.received.get(id).is_some_and(|received| {
            let wanted = match received.kind {
                Some(rtc::rtp_transceiver::rtp_sender::RtpCodecKind::Audio) => audio,
                _ => video,
            };
            received.packets >= wanted
        })
    })
}

/// Prints what `receiver` got of `tracks` and checks that none of it was corrupt.
fn report(name: &str, receiver: &SyntheticPeer, tracks: &[TrackId]) {
    receiver.state(|state| {
        for id in tracks {
            let received = &state.received[id];
            let mut latencies = received.latencies_us.clone();
            latencies.sort_unstable();
            let p50 = latencies.get(latencies.len() / 2).copied().unwrap_or_default();
            println!(
                "{name} ← {id}: {:?} {} packets, {} keyframes, {} corrupt, first packet {:?}, first keyframe {:?}, latency p50 {p50} µs",
                received.kind, received.packets, received.keyframes, received.corrupt,
                received.first_packet, received.first_keyframe
            );
            assert_eq!(received.corrupt, 0, "{name} got corrupt packets of {id}");
        }
    });
}

fn saw_peer_left(state: &PeerState, peer: &PeerId) -> bool {
    state
        .events
        .iter()
        .any(|event| matches!(event, ServerEvent::PeerLeft(left) if &left.peer_id == peer))
}

#[tokio::test]
async fn two_peers_receive_each_others_audio_and_video() -> anyhow::Result<()> {
    let server = TestServer::start().await?;
    let ann = SyntheticPeer::join(&server.socket_url(), "pair", PeerOptions::publishing("Ann")).await?;
    let bob = SyntheticPeer::join(&server.socket_url(), "pair", PeerOptions::publishing("Bob")).await?;
    ann.wait_until("Ann's tracks", MEDIA_TIMEOUT, |state| state.published.len() == 2).await?;
    bob.wait_until("Bob's tracks", MEDIA_TIMEOUT, |state| state.published.len() == 2).await?;
    let (ann_tracks, bob_tracks) = (published(&ann), published(&bob));

    // One second of media each way: 50 audio packets, 30 video frames.
    ann.wait_until("Bob's media at Ann", MEDIA_TIMEOUT, |state| received_enough(state, &bob_tracks, 50, 30)).await?;
    bob.wait_until("Ann's media at Bob", MEDIA_TIMEOUT, |state| received_enough(state, &ann_tracks, 50, 30)).await?;
    report("Ann", &ann, &bob_tracks);
    report("Bob", &bob, &ann_tracks);
    for (publisher, tracks) in [(&ann, &ann_tracks), (&bob, &bob_tracks)] {
        for id in tracks {
            let sent = publisher.state(|state| state.published[id].packets.load(std::sync::atomic::Ordering::Relaxed));
            println!("{id}: {sent} packets sent");
        }
    }
    ann.leave().await;
    bob.leave().await;
    Ok(())
}
