//! A room fed any sequence of client events and endpoint news, without sockets: it never
//! panics (a caught panic would remove a peer with "internal server error", which fails here
//! too), every event it sends decodes, and its state stays consistent after every step.

#![no_main]

use std::collections::BTreeMap;
use std::sync::OnceLock;

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use serde_json::json;
use server::signaling::harness::RoomHarness;
use server::Config;
use shared::client_event::{
    ChatText, ClientCandidate, SdpOffer, SdpType, SessionDescription, UpdatePeerMetadata,
    UpdateTrackMetadata,
};
use shared::{ClientEvent, PeerId, ServerEvent, TrackId};

#[derive(Arbitrary, Debug)]
enum Step {
    Connect,
    Join {
        peer: u8,
        name: u16,
    },
    Leave {
        peer: u8,
    },
    Renegotiate {
        peer: u8,
    },
    Offer(Offer),
    Candidate {
        peer: u8,
        text: String,
    },
    PeerMetadata {
        peer: u8,
        size: u16,
    },
    TrackMetadata {
        peer: u8,
        owner: u8,
        track: u8,
        size: u16,
    },
    Answer {
        peer: u8,
        sending: Vec<(u8, u8)>,
    },
    LocalCandidate {
        peer: u8,
    },
    Fail {
        peer: u8,
    },
    Voice {
        peer: u8,
        track: u8,
        speaking: bool,
    },
    Expire,
    Chat {
        peer: u8,
        text: String,
    },
    Raw {
        peer: u8,
        json: String,
    },
}

#[derive(Arbitrary, Debug)]
struct Offer {
    peer: u8,
    /// Whose ids the tracks carry: the sender's own, or another peer's.
    owner: u8,
    audio: u8,
    video: u8,
    slots: u8,
    /// The first m-line says `sendrecv`.
    sendrecv: bool,
    /// The first track is left out of `midToTrackId`.
    unnamed: bool,
    /// Which tracks (by number) the offer sends.
    first_track: u8,
}

fn config() -> &'static Config {
    static CONFIG: OnceLock<Config> = OnceLock::new();
    CONFIG.get_or_init(Config::defaults)
}

fn track(owner: &PeerId, number: u8) -> TrackId {
    TrackId::new(owner, uuid::Uuid::from_u128(u128::from(number) + 1))
}

fn offer(room: &RoomHarness, peers: usize, offer: &Offer) -> SdpOffer {
    let owner = room.id(usize::from(offer.owner) % peers).clone();
    let (audio, video) = (usize::from(offer.audio % 4), usize::from(offer.video % 4));
    let mut sdp = String::from("v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n");
    let mut mid_to_track_id = BTreeMap::new();
    let mut metadata = BTreeMap::new();
    for mid in 0..audio + video + usize::from(offer.slots % 8) {
        let (kind, codec) = if mid < audio {
            ("audio", "111 opus/48000/2")
        } else {
            ("video", "96 VP8/90000")
        };
        let sending = mid < audio + video;
        let direction = match (mid, sending) {
            (0, _) if offer.sendrecv => "sendrecv",
            (_, true) => "sendonly",
            (_, false) => "recvonly",
        };
        let payload_type = codec.split(' ').next().unwrap_or_default();
        sdp.push_str(&format!(
            "m={kind} 9 UDP/TLS/RTP/SAVPF {payload_type}\r\na=mid:{mid}\r\na={direction}\r\na=rtpmap:{codec}\r\n"
        ));
        if sending && !(mid == 0 && offer.unnamed) {
            let id = track(&owner, offer.first_track.wrapping_add(mid as u8));
            metadata.insert(
                id.clone(),
                json!({ "type": if mid < audio { "audio" } else { "camera" } }),
            );
            mid_to_track_id.insert(mid.to_string(), id);
        }
    }
    SdpOffer {
        sdp_offer: SessionDescription {
            sdp_type: SdpType::Offer,
            sdp,
        },
        track_id_to_track_metadata: metadata,
        mid_to_track_id,
    }
}

fuzz_target!(|steps: Vec<Step>| {
    let mut room = RoomHarness::new(config(), false);
    let mut peers = 0usize;
    for step in steps.iter().take(64) {
        if !matches!(step, Step::Connect | Step::Expire) && peers == 0 {
            continue;
        }
        let pick = |peer: &u8| usize::from(*peer) % peers.max(1);
        match step {
            Step::Connect => {
                if peers < 32 {
                    room.connect();
                    peers += 1;
                }
            }
            Step::Join { peer, name } => {
                let name = "n".repeat(usize::from(*name % 64));
                let _ = room.join(pick(peer), json!({ "displayName": name }));
            }
            Step::Leave { peer } => room.event(pick(peer), ClientEvent::Leave),
            Step::Renegotiate { peer } => room.event(pick(peer), ClientEvent::RenegotiateTracks),
            Step::Offer(details) => {
                let offer = offer(&room, peers, details);
                room.event(pick(&details.peer), ClientEvent::SdpOffer(offer));
            }
            Step::Candidate { peer, text } => {
                let candidate = ClientCandidate {
                    candidate: text.clone(),
                    sdp_m_line_index: Some(0),
                };
                room.event(pick(peer), ClientEvent::Candidate(candidate));
            }
            Step::PeerMetadata { peer, size } => {
                let metadata = json!({ "bio": "x".repeat(usize::from(*size % 5000)) });
                room.event(
                    pick(peer),
                    ClientEvent::UpdatePeerMetadata(UpdatePeerMetadata { metadata }),
                );
            }
            Step::TrackMetadata {
                peer,
                owner,
                track: number,
                size,
            } => {
                let owner = room.id(pick(owner)).clone();
                let update = UpdateTrackMetadata {
                    track_id: track(&owner, *number),
                    track_metadata: json!({ "note": "x".repeat(usize::from(*size % 2000)) }),
                };
                room.event(pick(peer), ClientEvent::UpdateTrackMetadata(update));
            }
            Step::Answer { peer, sending } => {
                let sending = sending
                    .iter()
                    .take(16)
                    .map(|(owner, number)| {
                        let owner = room.id(pick(owner)).clone();
                        (
                            format!("{}", 100 + usize::from(*number)),
                            track(&owner, *number),
                        )
                    })
                    .collect();
                room.answer(pick(peer), sending);
            }
            Step::LocalCandidate { peer } => {
                room.candidate(pick(peer), "candidate:1 1 udp 1 127.0.0.1 4000 typ host")
            }
            Step::Fail { peer } => room.fail(pick(peer), "fuzzed failure"),
            Step::Voice {
                peer,
                track: number,
                speaking,
            } => {
                let owner = room.id(pick(peer)).clone();
                room.voice(pick(peer), track(&owner, *number), *speaking);
            }
            Step::Expire => room.expire_offers(),
            Step::Chat { peer, text } => {
                let text = text.clone();
                room.event(pick(peer), ClientEvent::ChatMessage(ChatText { text }));
            }
            Step::Raw { peer, json } => {
                if let Ok(event) = ClientEvent::decode(json) {
                    room.event(pick(peer), event);
                }
            }
        }
        room.check();
        for peer in 0..peers {
            for event in room.told(peer).events {
                if let ServerEvent::Error(error) = event {
                    assert!(
                        !error.message.contains("internal server error"),
                        "the room panicked on {step:?}"
                    );
                }
            }
        }
    }
});
