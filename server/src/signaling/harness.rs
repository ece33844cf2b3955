//! A room driven without sockets, tasks or a clock of its own: the fuzzer feeds it client
//! events and endpoint news, and the room's unit tests read what each peer is told. Its
//! media engine is [`MediaEngine::unattended`] and its outboxes plain queues; time passes only
//! when [`RoomHarness::expire_offers`] says so.

use std::collections::BTreeMap;
use std::sync::Arc;

use shared::{ClientEvent, Metadata, PeerId, RoomId, ServerEvent, TrackId};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use crate::limits::{Limits, Quota};
use crate::media::engine::{EndpointEvent, EndpointReport, MediaEngine};
use crate::signaling::outbox::{Delivery, Outbox};
use crate::signaling::room::{JoinRefused, Room, RoomMessage, RoomSettings};
use crate::test_hooks::TestHooks;
use crate::turn::TurnServers;
use crate::Config;

/// One room and the peers that talk to it.
pub struct RoomHarness {
    room: Room,
    limits: Arc<Limits>,
    peers: Vec<HarnessPeer>,
    seats: Arc<Quota>,
    /// What unattended endpoints would report: nothing, as the harness reports for them.
    _reports: mpsc::UnboundedReceiver<EndpointReport>,
}

struct HarnessPeer {
    id: PeerId,
    outbox: Outbox,
    deliveries: mpsc::UnboundedReceiver<Delivery>,
}

/// What a peer was told since the last look.
#[derive(Debug, Default)]
pub struct Told {
    pub events: Vec<ServerEvent>,
    /// The room removed the peer without its asking.
    pub removed: bool,
}

impl RoomHarness {
    /// A room with `config`'s limits; with test hooks when `hooks` is set.
    pub fn new(config: &Config, hooks: bool) -> RoomHarness {
        let limits = Arc::new(config.limits.clone());
        let settings = RoomSettings {
            limits: limits.clone(),
            media: MediaEngine::unattended(config.limits.max_peers_total),
            test_hooks: hooks.then(TestHooks::default),
            turn: TurnServers::new(config, None),
            join_secret: None,
            cluster: None,
        };
        let id = RoomId::new("harness").expect("a valid room name");
        let (room, reports) = Room::new(id, Arc::new(settings));
        RoomHarness {
            room,
            seats: Quota::new(limits.max_peers_total),
            limits,
            peers: Vec::new(),
            _reports: reports,
        }
    }

    /// A new client, not in the room yet; returns its number.
    pub fn connect(&mut self) -> usize {
        let (outbox, deliveries) = Outbox::new(self.limits.max_outbox_bytes);
        let id = PeerId::from(uuid::Uuid::from_u128(self.peers.len() as u128 + 1));
        self.peers.push(HarnessPeer {
            id,
            outbox,
            deliveries,
        });
        self.peers.len() - 1
    }

    pub fn id(&self, peer: usize) -> &PeerId {
        &self.peers[peer].id
    }

    /// The media `join` of client `peer`, as its socket sends it.
    pub fn join(&mut self, peer: usize, metadata: Metadata) -> Result<(), JoinRefused> {
        let seat = self
            .seats
            .try_take()
            .ok_or(JoinRefused::ServerFull(self.seats.max()))?;
        let (reply, answer) = oneshot::channel();
        let client = &self.peers[peer];
        self.room.handle(RoomMessage::Join {
            peer_id: client.id.clone(),
            metadata,
            outbox: client.outbox.clone(),
            seat,
            reply,
        });
        let mut answer = answer;
        answer.try_recv().unwrap_or(Err(JoinRefused::Unavailable))
    }

    /// A media event from client `peer`.
    pub fn event(&mut self, peer: usize, event: ClientEvent) {
        let peer_id = self.peers[peer].id.clone();
        self.room.handle(RoomMessage::Event { peer_id, event });
    }

    /// The endpoint of `peer` answers its last offer, sending on `sending`'s mids.
    pub fn answer(&mut self, peer: usize, sending: BTreeMap<String, TrackId>) {
        let event = EndpointEvent::Answer {
            sdp: "v=0\r\n".to_owned(),
            sending,
        };
        self.endpoint_event(peer, event);
    }

    /// The endpoint of `peer` reports a local candidate.
    pub fn candidate(&mut self, peer: usize, candidate: &str) {
        self.endpoint_event(peer, EndpointEvent::Candidate(candidate.to_owned()));
    }

    /// The endpoint of `peer` fails.
    pub fn fail(&mut self, peer: usize, reason: &str) {
        self.endpoint_event(peer, EndpointEvent::Failed(reason.to_owned()));
    }

    /// The endpoint of `peer` hears speech (`speaking`) or silence begin on `track_id`.
    pub fn voice(&mut self, peer: usize, track_id: TrackId, speaking: bool) {
        self.endpoint_event(peer, EndpointEvent::VoiceActivity { track_id, speaking });
    }

    fn endpoint_event(&mut self, peer: usize, event: EndpointEvent) {
        let peer_id = self.peers[peer].id.clone();
        self.room.on_report(EndpointReport { peer_id, event });
    }

    /// Lets the offer deadline pass for every peer waiting to offer.
    pub fn expire_offers(&mut self) {
        let later = Instant::now() + self.limits.offer_timeout * 2;
        self.room.expire(later);
    }

    /// What client `peer` was told since the last look. Every event must decode as the client
    /// decodes it: one that does not is a server bug, and panics here.
    pub fn told(&mut self, peer: usize) -> Told {
        let mut told = Told::default();
        while let Ok(delivery) = self.peers[peer].deliveries.try_recv() {
            match delivery {
                Delivery::Event { data, .. } => {
                    let event = ServerEvent::decode(&data)
                        .unwrap_or_else(|err| panic!("the room sent {data}: {err}"));
                    told.events.push(event);
                }
                Delivery::Removed { .. } => told.removed = true,
            }
        }
        told
    }

    /// Panics when the room's state is inconsistent.
    pub fn check(&self) {
        if let Err(broken) = self.room.check_invariants() {
            panic!("room invariant broken: {broken}");
        }
    }
}

#[cfg(test)]
mod tests {
    use shared::client_event::{ClientCandidate, SdpOffer, SdpType, SessionDescription};
    use shared::metadata::peer_metadata;
    use shared::server_event::VadStatus;

    use super::*;

    fn harness() -> RoomHarness {
        RoomHarness::new(&Config::defaults(), true)
    }

    fn kinds(told: &Told) -> Vec<&'static str> {
        told.events.iter().map(ServerEvent::kind).collect()
    }

    /// An offer publishing audio on mid 0 and video on mid 1, with `slots` video slots after.
    fn offer(owner: &PeerId, slots: usize) -> (SdpOffer, Vec<TrackId>) {
        let mut sdp = String::from("v=0\r\n");
        sdp.push_str("m=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=mid:0\r\na=sendonly\r\na=rtpmap:111 opus/48000/2\r\n");
        sdp.push_str(
            "m=video 9 UDP/TLS/RTP/SAVPF 96\r\na=mid:1\r\na=sendonly\r\na=rtpmap:96 VP8/90000\r\n",
        );
        for slot in 0..slots {
            sdp.push_str(&format!(
                "m=video 9 UDP/TLS/RTP/SAVPF 96\r\na=mid:{}\r\na=recvonly\r\na=rtpmap:96 VP8/90000\r\n",
                slot + 2
            ));
        }
        let tracks: Vec<TrackId> = (0..2)
            .map(|n| TrackId::new(owner, uuid::Uuid::from_u128(100 + n)))
            .collect();
        let offer = SdpOffer {
            sdp_offer: SessionDescription {
                sdp_type: SdpType::Offer,
                sdp,
            },
            track_id_to_track_metadata: BTreeMap::new(),
            mid_to_track_id: BTreeMap::from([
                ("0".to_owned(), tracks[0].clone()),
                ("1".to_owned(), tracks[1].clone()),
            ]),
        };
        (offer, tracks)
    }

    #[test]
    fn a_publisher_is_announced_and_the_other_peer_is_offered_its_tracks() {
        let mut room = harness();
        let (ann, bob) = (room.connect(), room.connect());
        room.join(ann, peer_metadata("Ann")).unwrap();
        assert_eq!(kinds(&room.told(ann)), ["peerAccepted", "peerJoined"]);
        room.join(bob, peer_metadata("Bob")).unwrap();
        assert_eq!(kinds(&room.told(ann)), ["peerJoined"]);
        room.told(bob);

        room.event(ann, ClientEvent::RenegotiateTracks);
        assert_eq!(kinds(&room.told(ann)), ["offerData"]);
        let (offer, tracks) = offer(&room.id(ann).clone(), 0);
        room.event(ann, ClientEvent::SdpOffer(offer));
        room.check();
        // Bob hears of Ann's tracks, then is asked to offer slots for them.
        let told = room.told(bob);
        assert_eq!(kinds(&told), ["tracksAdded", "offerData"]);
        let ServerEvent::OfferData(offer_data) = &told.events[1] else {
            unreachable!()
        };
        assert_eq!(
            (offer_data.tracks_types.audio, offer_data.tracks_types.video),
            (1, 1)
        );

        room.answer(ann, BTreeMap::new());
        let told = room.told(ann);
        let ServerEvent::SdpAnswer(answer) = &told.events[0] else {
            panic!("{told:?}")
        };
        assert_eq!(
            answer.mid_to_track_id.values().collect::<Vec<_>>(),
            [&tracks[0], &tracks[1]]
        );

        room.event(ann, ClientEvent::Leave);
        let told = room.told(bob);
        assert_eq!(kinds(&told), ["peerLeft"]);
        assert!(!told.removed);
        room.check();
    }

    #[test]
    fn speech_on_a_published_track_is_told_to_everyone_and_on_an_unknown_one_to_no_one() {
        let mut room = harness();
        let (ann, bob) = (room.connect(), room.connect());
        room.join(ann, peer_metadata("Ann")).unwrap();
        room.join(bob, peer_metadata("Bob")).unwrap();
        room.event(ann, ClientEvent::RenegotiateTracks);
        let (offer, tracks) = offer(&room.id(ann).clone(), 0);
        room.event(ann, ClientEvent::SdpOffer(offer));
        room.told(ann);
        room.told(bob);

        room.voice(ann, tracks[0].clone(), true);
        for peer in [ann, bob] {
            let told = room.told(peer);
            assert_eq!(kinds(&told), ["vadNotification"]);
            let ServerEvent::VadNotification(voice) = &told.events[0] else {
                unreachable!()
            };
            assert_eq!(
                (&voice.track_id, voice.status),
                (&tracks[0], VadStatus::Speech)
            );
        }
        let unknown = TrackId::new(&room.id(ann).clone(), uuid::Uuid::from_u128(7));
        room.voice(ann, unknown, true);
        assert!(room.told(bob).events.is_empty());
        room.check();
    }

    #[test]
    fn a_peer_that_does_not_offer_in_time_is_removed_and_told_why() {
        let mut room = harness();
        let (ann, bob) = (room.connect(), room.connect());
        room.join(ann, peer_metadata("Ann")).unwrap();
        room.join(bob, peer_metadata("Bob")).unwrap();
        room.event(ann, ClientEvent::RenegotiateTracks);
        room.told(ann);
        room.told(bob);
        room.expire_offers();
        let told = room.told(ann);
        assert!(told.removed);
        let ServerEvent::Error(error) = &told.events[0] else {
            panic!("{told:?}")
        };
        assert!(
            error.message.contains("--offer-timeout"),
            "{}",
            error.message
        );
        assert_eq!(kinds(&room.told(bob)), ["peerLeft"]);
        room.check();
    }

    #[test]
    fn candidates_past_the_limit_remove_the_sender() {
        let mut room = harness();
        let ann = room.connect();
        room.join(ann, peer_metadata("Ann")).unwrap();
        room.told(ann);
        let limit = Config::defaults().limits.max_candidates_per_peer;
        for n in 0..=limit {
            let candidate = ClientCandidate {
                candidate: format!("candidate:{n} 1 udp 1 192.0.2.1 9 typ host"),
                sdp_m_line_index: Some(0),
            };
            room.event(ann, ClientEvent::Candidate(candidate));
            room.check();
        }
        let told = room.told(ann);
        assert!(told.removed, "{told:?}");
        assert_eq!(kinds(&told), ["error"]);
    }

    #[test]
    fn a_panic_on_a_peers_message_removes_only_that_peer() {
        let mut room = harness();
        let (ann, bob) = (room.connect(), room.connect());
        room.join(ann, peer_metadata("Ann")).unwrap();
        room.join(bob, peer_metadata("Bob")).unwrap();
        room.told(ann);
        room.told(bob);
        let panic = serde_json::json!({ crate::test_hooks::PANIC_KEY: "room" });
        room.event(
            bob,
            ClientEvent::UpdatePeerMetadata(shared::client_event::UpdatePeerMetadata {
                metadata: panic,
            }),
        );
        let told = room.told(bob);
        assert!(told.removed);
        assert_eq!(kinds(&told), ["error"]);
        assert_eq!(kinds(&room.told(ann)), ["peerLeft"]);
        room.check();
        // The room goes on.
        let carol = room.connect();
        assert!(room.join(carol, peer_metadata("Carol")).is_ok());
    }

    #[test]
    fn a_second_join_of_a_publishing_peer_is_refused_and_keeps_its_tracks() {
        let mut room = harness();
        let ann = room.connect();
        room.join(ann, peer_metadata("Ann")).unwrap();
        let (offer, _) = offer(&room.id(ann).clone(), 0);
        room.event(ann, ClientEvent::SdpOffer(offer));
        assert!(matches!(
            room.join(ann, peer_metadata("Ann again")),
            Err(JoinRefused::AlreadyJoined)
        ));
        room.check();
    }
}
