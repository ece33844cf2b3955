//! Golden fixtures, one per media event and direction and one per Phoenix frame of the spec:
//! each decodes to the expected typed value and encodes back to the same JSON (as values).

use std::collections::BTreeMap;

use serde_json::{json, Value};
use shared::client_event::*;
use shared::phoenix::{Frame, PhoenixEvent, Reply, ReplyStatus};
use shared::server_event::*;
use shared::{ClientEvent, PeerId, ServerEvent, TrackId};

const P: &str = "5c4e2a9e-7d1b-4f6a-9b3e-2f1d8c6a4b10";
const Q: &str = "9a0b1c2d-3e4f-4a5b-8c6d-7e8f9a0b1c2d";
const OFFER: &str =
    "v=0\r\no=- 4611731400430051336 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\na=group:BUNDLE 0 1\r\n";
const ANSWER: &str = "v=0\r\no=- 1 2 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\na=group:BUNDLE 0 1 2 3\r\n";

fn peer(id: &str) -> PeerId {
    PeerId::new(id).unwrap()
}
fn track_a() -> TrackId {
    TrackId::parse(format!("{P}:0f6c1a52-3b7e-4c9d-a1e2-5f3b8d7c6e41")).unwrap()
}
fn track_v() -> TrackId {
    TrackId::parse(format!("{P}:b2d4f6a8-1c3e-4a5b-9d7f-2e4c6a8b0d13")).unwrap()
}
fn track_q() -> TrackId {
    TrackId::parse(format!("{Q}:e1d2c3b4-a596-4877-8a9b-0c1d2e3f4a5b")).unwrap()
}
fn camera(active: bool) -> Value {
    json!({"type": "camera", "active": active})
}

/// Decodes the fixture with `decode`, checks the value, and checks that it encodes back.
fn check<T: PartialEq + std::fmt::Debug, E: std::fmt::Debug>(
    fixture: &str,
    decode: impl Fn(&str) -> Result<T, E>,
    encode: impl Fn(&T) -> String,
    expected: T,
) {
    let fixture_value: Value = serde_json::from_str(fixture).expect("fixture is JSON");
    let decoded = decode(&fixture_value.to_string()).expect("fixture decodes");
    assert_eq!(decoded, expected);
    let encoded: Value = serde_json::from_str(&encode(&decoded)).expect("encoding is JSON");
    assert_eq!(
        encoded, fixture_value,
        "re-encoding differs from the fixture"
    );
}

fn check_client(fixture: &str, expected: ClientEvent) {
    check(fixture, ClientEvent::decode, ClientEvent::encode, expected);
}

fn check_server(fixture: &str, expected: ServerEvent) {
    check(fixture, ServerEvent::decode, ServerEvent::encode, expected);
}

fn check_frame(fixture: &str, expected: Frame) {
    check(fixture, Frame::decode, Frame::encode, expected);
}

macro_rules! fixture {
    ($dir:literal, $name:literal) => {
        include_str!(concat!("fixtures/", $dir, "/", $name, ".json"))
    };
}

#[test]
fn client_join() {
    let metadata = json!({"displayName": "Ann"});
    check_client(
        fixture!("client", "join"),
        ClientEvent::Join(Join { metadata }),
    );
}

#[test]
fn client_leave() {
    check_client(fixture!("client", "leave"), ClientEvent::Leave);
}

#[test]
fn client_chat_message() {
    check_client(
        fixture!("client", "chatMessage"),
        ClientEvent::ChatMessage(ChatText {
            text: "Shall we start? 🙂".to_owned(),
        }),
    );
}

#[test]
fn client_update_peer_metadata() {
    let metadata = json!({"displayName": "Ann B.", "emoji": "🦊"});
    check_client(
        fixture!("client", "updatePeerMetadata"),
        ClientEvent::UpdatePeerMetadata(UpdatePeerMetadata { metadata }),
    );
}

#[test]
fn client_update_track_metadata() {
    check_client(
        fixture!("client", "updateTrackMetadata"),
        ClientEvent::UpdateTrackMetadata(UpdateTrackMetadata {
            track_id: track_v(),
            track_metadata: camera(false),
        }),
    );
}

#[test]
fn client_renegotiate_tracks() {
    check_client(
        fixture!("client", "renegotiateTracks"),
        ClientEvent::RenegotiateTracks,
    );
}

#[test]
fn client_sdp_offer() {
    check_client(
        fixture!("client", "sdpOffer"),
        ClientEvent::SdpOffer(SdpOffer {
            sdp_offer: SessionDescription {
                sdp_type: SdpType::Offer,
                sdp: OFFER.to_owned(),
            },
            track_id_to_track_metadata: BTreeMap::from([
                (track_a(), json!({"type": "audio", "active": true})),
                (track_v(), camera(true)),
            ]),
            mid_to_track_id: BTreeMap::from([
                ("0".to_owned(), track_a()),
                ("1".to_owned(), track_v()),
            ]),
        }),
    );
}

#[test]
fn client_candidate() {
    check_client(
        fixture!("client", "candidate"),
        ClientEvent::Candidate(ClientCandidate {
            candidate: "candidate:842163049 1 udp 1677729535 198.51.100.7 61000 typ srflx raddr 0.0.0.0 rport 0 generation 0 ufrag sKzV network-cost 999".to_owned(),
            sdp_m_line_index: Some(1),
        }),
    );
}

#[test]
fn client_set_target_track_variant() {
    check_client(
        fixture!("client", "setTargetTrackVariant"),
        ClientEvent::SetTargetTrackVariant(SetTargetTrackVariant {
            track_id: track_q(),
            variant: SimulcastLayer::Medium,
        }),
    );
}

#[test]
fn client_prioritize_and_unprioritize_track() {
    let track = || TrackRef {
        track_id: track_q(),
    };
    check_client(
        fixture!("client", "prioritizeTrack"),
        ClientEvent::PrioritizeTrack(track()),
    );
    check_client(
        fixture!("client", "unprioritizeTrack"),
        ClientEvent::UnprioritizeTrack(track()),
    );
}

#[test]
fn client_prefered_video_sizes() {
    check_client(
        fixture!("client", "preferedVideoSizes"),
        ClientEvent::PreferedVideoSizes(PreferedVideoSizes {
            big_screens: 1,
            medium_screens: 2,
            small_screens: 6,
            all_same_size: false,
        }),
    );
}

#[test]
fn server_peer_accepted() {
    check_server(
        fixture!("server", "peerAccepted"),
        ServerEvent::PeerAccepted(PeerAccepted {
            id: peer(P),
            peers_in_room: vec![PeerWithTracks {
                id: peer(Q),
                metadata: json!({"displayName": "Bob"}),
                track_id_to_metadata: BTreeMap::from([(track_q(), camera(true))]),
            }],
        }),
    );
}

#[test]
fn server_peer_denied() {
    let reason = json!({"reason": "room is full"});
    let Value::Object(reason) = reason else {
        unreachable!()
    };
    check_server(
        fixture!("server", "peerDenied"),
        ServerEvent::PeerDenied(reason),
    );
}

#[test]
fn server_peer_joined() {
    check_server(
        fixture!("server", "peerJoined"),
        ServerEvent::PeerJoined(PeerJoined {
            peer: PeerInfo {
                id: peer(Q),
                metadata: json!({"displayName": "Bob"}),
            },
        }),
    );
}

fn ann_asks() -> ChatMessage {
    ChatMessage {
        peer_id: peer(Q),
        display_name: "Ann".to_owned(),
        text: "Shall we start? 🙂".to_owned(),
        sent_at: 1_764_673_200_000,
    }
}

#[test]
fn server_chat_message() {
    check_server(
        fixture!("server", "chatMessage"),
        ServerEvent::ChatMessage(ann_asks()),
    );
}

#[test]
fn server_chat_history() {
    check_server(
        fixture!("server", "chatHistory"),
        ServerEvent::ChatHistory(ChatHistory {
            messages: vec![ann_asks()],
        }),
    );
}

#[test]
fn server_peer_left() {
    check_server(
        fixture!("server", "peerLeft"),
        ServerEvent::PeerLeft(PeerLeft { peer_id: peer(Q) }),
    );
}

#[test]
fn server_peer_updated() {
    check_server(
        fixture!("server", "peerUpdated"),
        ServerEvent::PeerUpdated(PeerUpdated {
            peer_id: peer(Q),
            metadata: json!({"displayName": "Robert"}),
        }),
    );
}

#[test]
fn server_peer_removed() {
    check_server(
        fixture!("server", "peerRemoved"),
        ServerEvent::PeerRemoved(PeerRemoved {
            peer_id: peer(P),
            reason: "Internal server error.".to_owned(),
        }),
    );
}

#[test]
fn server_tracks_added() {
    check_server(
        fixture!("server", "tracksAdded"),
        ServerEvent::TracksAdded(TracksAdded {
            peer_id: peer(Q),
            track_id_to_metadata: BTreeMap::from([(track_q(), camera(true))]),
        }),
    );
}

#[test]
fn server_tracks_removed() {
    check_server(
        fixture!("server", "tracksRemoved"),
        ServerEvent::TracksRemoved(TracksRemoved {
            peer_id: peer(Q),
            track_ids: vec![track_q()],
        }),
    );
}

#[test]
fn server_track_updated() {
    check_server(
        fixture!("server", "trackUpdated"),
        ServerEvent::TrackUpdated(TrackUpdated {
            peer_id: peer(Q),
            track_id: track_q(),
            metadata: camera(false),
        }),
    );
}

#[test]
fn server_tracks_priority() {
    check_server(
        fixture!("server", "tracksPriority"),
        ServerEvent::TracksPriority(TracksPriority {
            tracks: vec![track_q()],
        }),
    );
}

#[test]
fn server_encoding_switched() {
    check_server(
        fixture!("server", "encodingSwitched"),
        ServerEvent::EncodingSwitched(EncodingSwitched {
            peer_id: peer(Q),
            track_id: track_q(),
            encoding: SimulcastLayer::High,
        }),
    );
}

#[test]
fn server_vad_notification() {
    check_server(
        fixture!("server", "vadNotification"),
        ServerEvent::VadNotification(VadNotification {
            track_id: track_q(),
            status: VadStatus::Speech,
        }),
    );
}

#[test]
fn server_error() {
    check_server(
        fixture!("server", "error"),
        ServerEvent::Error(ErrorMessage {
            message: "Cannot join: the room is shutting down.".to_owned(),
        }),
    );
}

#[test]
fn server_offer_data() {
    let turn = TurnServer {
        server_addr: "203.0.113.10".to_owned(),
        server_port: 50012,
        transport: TurnTransport::Udp,
        username: "1669740000:c0ffee".to_owned(),
        password: "bWFjLXNlY3JldA==".to_owned(),
    };
    assert_eq!(turn.url(), "turn:203.0.113.10:50012?transport=udp");
    let v6 = TurnServer {
        server_addr: "2001:db8::10".to_owned(),
        transport: TurnTransport::Tls,
        ..turn.clone()
    };
    assert_eq!(v6.url(), "turns:[2001:db8::10]:50012?transport=tcp");
    for transport in [TurnTransport::Udp, TurnTransport::Tcp, TurnTransport::Tls] {
        assert_eq!(serde_json::to_value(transport).unwrap(), transport.as_str());
    }
    check_server(
        fixture!("server", "offerData"),
        ServerEvent::OfferData(OfferData {
            tracks_types: TracksTypes { audio: 1, video: 1 },
            integrated_turn_servers: vec![turn],
        }),
    );
}

#[test]
fn server_sdp_answer() {
    let mid_to_track_id = BTreeMap::from([
        ("0".to_owned(), track_a()),
        ("1".to_owned(), track_v()),
        ("2".to_owned(), track_q()),
    ]);
    check_server(
        fixture!("server", "sdpAnswer"),
        ServerEvent::SdpAnswer(SdpAnswer::new(ANSWER.to_owned(), mid_to_track_id)),
    );
}

#[test]
fn server_candidate() {
    check_server(
        fixture!("server", "candidate"),
        ServerEvent::Candidate(ServerCandidate::bundled(
            "candidate:1 1 udp 2130706431 127.0.0.1 50123 typ host".to_owned(),
        )),
    );
}

fn request(join_ref: Option<&str>, msg_ref: &str, topic: &str, event: PhoenixEvent) -> Frame {
    Frame::request(
        join_ref.map(str::to_owned),
        msg_ref.to_owned(),
        topic,
        event,
        json!({}),
    )
}

#[test]
fn phoenix_requests() {
    let join = request(Some("4"), "4", "room:r1", PhoenixEvent::Join);
    check_frame(fixture!("phoenix", "join"), join.clone());
    check_frame(
        fixture!("phoenix", "leave"),
        request(Some("4"), "9", "room:r1", PhoenixEvent::Leave),
    );
    check_frame(
        fixture!("phoenix", "heartbeat"),
        request(None, "7", "phoenix", PhoenixEvent::Heartbeat),
    );
    let media = Frame::media_event(
        Some("4".to_owned()),
        Some("6".to_owned()),
        "room:r1",
        ClientEvent::Leave.encode(),
    );
    check_frame(
        fixture!("phoenix", "media_event_from_client"),
        media.clone(),
    );
    assert_eq!(
        ClientEvent::decode(media.media_event_data().unwrap()),
        Ok(ClientEvent::Leave)
    );
}

#[test]
fn phoenix_replies_echo_the_request() {
    let join = request(Some("4"), "4", "room:r1", PhoenixEvent::Join);
    check_frame(fixture!("phoenix", "join_ok"), join.reply_ok());
    check_frame(
        fixture!("phoenix", "join_refused"),
        join.reply_error("failed to start room"),
    );
    let heartbeat = request(None, "7", "phoenix", PhoenixEvent::Heartbeat);
    check_frame(fixture!("phoenix", "heartbeat_ok"), heartbeat.reply_ok());
    let stray = request(None, "6", "room:zz", PhoenixEvent::MediaEvent);
    let unmatched = stray.reply_error("unmatched topic");
    check_frame(fixture!("phoenix", "unmatched_topic"), unmatched.clone());
    assert_eq!(
        unmatched.as_reply().unwrap(),
        Reply {
            status: ReplyStatus::Error,
            response: json!({"reason": "unmatched topic"})
        }
    );
}

#[test]
fn phoenix_pushes() {
    let left = ServerEvent::PeerLeft(PeerLeft { peer_id: peer(Q) });
    check_frame(
        fixture!("phoenix", "media_event_push"),
        Frame::media_event(Some("4".to_owned()), None, "room:r1", left.encode()),
    );
    check_frame(fixture!("phoenix", "close"), Frame::close("4", "room:r1"));
    check_frame(
        fixture!("phoenix", "channel_error"),
        Frame::channel_error("4", "room:r1"),
    );
}
