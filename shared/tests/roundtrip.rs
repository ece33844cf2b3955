//! Property tests: encode → decode is the identity for generated events and frames.

use std::collections::BTreeMap;

use proptest::collection::{btree_map, vec};
use proptest::option;
use proptest::prelude::*;
use serde_json::{Map, Value};
use shared::client_event::*;
use shared::phoenix::PhoenixEvent;
use shared::server_event::*;
use shared::{ClientEvent, Frame, Metadata, PeerId, ServerEvent, TrackId};

fn peer_id() -> impl Strategy<Value = PeerId> {
    prop_oneof![
        any::<u128>().prop_map(|n| PeerId::from(uuid::Uuid::from_u128(n))),
        "[a-zA-Z0-9_-]{1,64}".prop_map(|id| PeerId::new(id).unwrap()),
    ]
}

fn track_id() -> impl Strategy<Value = TrackId> {
    (peer_id(), any::<u128>()).prop_map(|(peer, n)| TrackId::new(&peer, uuid::Uuid::from_u128(n)))
}

/// Any JSON, floats included: they are read exactly (serde_json's `float_roundtrip`), so a
/// relayed number never changes.
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        proptest::num::f64::NORMAL.prop_map(Value::from),
        ".{0,12}".prop_map(Value::from),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            vec(inner.clone(), 0..4).prop_map(Value::from),
            btree_map(".{0,8}", inner, 0..4)
                .prop_map(|map| Value::Object(map.into_iter().collect())),
        ]
    })
}

fn metadata() -> impl Strategy<Value = Metadata> {
    btree_map("[a-zA-Z]{1,10}", json_value(), 0..4)
        .prop_map(|map| Value::Object(map.into_iter().collect::<Map<_, _>>()))
}

fn tracks() -> impl Strategy<Value = BTreeMap<TrackId, Metadata>> {
    btree_map(track_id(), metadata(), 0..4)
}

fn mids() -> impl Strategy<Value = BTreeMap<String, TrackId>> {
    btree_map("[0-9]{1,3}", track_id(), 0..4)
}

fn layer() -> impl Strategy<Value = SimulcastLayer> {
    prop_oneof![
        Just(SimulcastLayer::Low),
        Just(SimulcastLayer::Medium),
        Just(SimulcastLayer::High)
    ]
}

fn client_event() -> impl Strategy<Value = ClientEvent> {
    prop_oneof![
        metadata().prop_map(|metadata| ClientEvent::Join(Join { metadata })),
        Just(ClientEvent::Leave),
        metadata()
            .prop_map(|metadata| ClientEvent::UpdatePeerMetadata(UpdatePeerMetadata { metadata })),
        (track_id(), json_value()).prop_map(|(track_id, track_metadata)| {
            ClientEvent::UpdateTrackMetadata(UpdateTrackMetadata {
                track_id,
                track_metadata,
            })
        }),
        Just(ClientEvent::RenegotiateTracks),
        (".*", tracks(), mids()).prop_map(|(sdp, track_id_to_track_metadata, mid_to_track_id)| {
            ClientEvent::SdpOffer(SdpOffer {
                sdp_offer: SessionDescription {
                    sdp_type: SdpType::Offer,
                    sdp,
                },
                track_id_to_track_metadata,
                mid_to_track_id,
            })
        }),
        (".*", option::of(0..16u32)).prop_map(|(candidate, sdp_m_line_index)| {
            ClientEvent::Candidate(ClientCandidate {
                candidate,
                sdp_m_line_index,
            })
        }),
        (track_id(), layer()).prop_map(|(track_id, variant)| {
            ClientEvent::SetTargetTrackVariant(SetTargetTrackVariant { track_id, variant })
        }),
        track_id().prop_map(|track_id| ClientEvent::PrioritizeTrack(TrackRef { track_id })),
        track_id().prop_map(|track_id| ClientEvent::UnprioritizeTrack(TrackRef { track_id })),
        (any::<u32>(), any::<u32>(), any::<u32>(), any::<bool>()).prop_map(
            |(big, medium, small, same)| {
                ClientEvent::PreferedVideoSizes(PreferedVideoSizes {
                    big_screens: big,
                    medium_screens: medium,
                    small_screens: small,
                    all_same_size: same,
                })
            }
        ),
        ".*".prop_map(|text| ClientEvent::ChatMessage(ChatText { text })),
    ]
}

fn chat_message() -> impl Strategy<Value = ChatMessage> {
    (peer_id(), ".*", ".*", any::<u64>()).prop_map(|(peer_id, display_name, text, sent_at)| {
        ChatMessage {
            peer_id,
            display_name,
            text,
            sent_at,
        }
    })
}

fn turn_server() -> impl Strategy<Value = TurnServer> {
    let transport = prop_oneof![
        Just(TurnTransport::Udp),
        Just(TurnTransport::Tcp),
        Just(TurnTransport::Tls)
    ];
    (".{0,20}", any::<u16>(), transport, ".{0,20}", ".{0,20}").prop_map(
        |(server_addr, server_port, transport, username, password)| TurnServer {
            server_addr,
            server_port,
            transport,
            username,
            password,
        },
    )
}

fn server_event() -> impl Strategy<Value = ServerEvent> {
    let peer_with_tracks =
        (peer_id(), metadata(), tracks()).prop_map(|(id, metadata, track_id_to_metadata)| {
            PeerWithTracks {
                id,
                metadata,
                track_id_to_metadata,
            }
        });
    prop_oneof![
        (peer_id(), vec(peer_with_tracks, 0..3)).prop_map(|(id, peers_in_room)| {
            ServerEvent::PeerAccepted(PeerAccepted { id, peers_in_room })
        }),
        metadata().prop_map(|reason| match reason {
            Value::Object(map) => ServerEvent::PeerDenied(map),
            _ => unreachable!("metadata() makes objects"),
        }),
        (peer_id(), metadata()).prop_map(|(id, metadata)| ServerEvent::PeerJoined(PeerJoined {
            peer: PeerInfo { id, metadata }
        })),
        peer_id().prop_map(|peer_id| ServerEvent::PeerLeft(PeerLeft { peer_id })),
        (peer_id(), json_value()).prop_map(|(peer_id, metadata)| ServerEvent::PeerUpdated(
            PeerUpdated { peer_id, metadata }
        )),
        (peer_id(), ".*").prop_map(|(peer_id, reason)| ServerEvent::PeerRemoved(PeerRemoved {
            peer_id,
            reason
        })),
        (peer_id(), tracks()).prop_map(|(peer_id, track_id_to_metadata)| {
            ServerEvent::TracksAdded(TracksAdded {
                peer_id,
                track_id_to_metadata,
            })
        }),
        (peer_id(), vec(track_id(), 0..4)).prop_map(|(peer_id, track_ids)| {
            ServerEvent::TracksRemoved(TracksRemoved { peer_id, track_ids })
        }),
        (peer_id(), track_id(), json_value()).prop_map(|(peer_id, track_id, metadata)| {
            ServerEvent::TrackUpdated(TrackUpdated {
                peer_id,
                track_id,
                metadata,
            })
        }),
        vec(track_id(), 0..4)
            .prop_map(|tracks| ServerEvent::TracksPriority(TracksPriority { tracks })),
        (peer_id(), track_id(), layer()).prop_map(|(peer_id, track_id, encoding)| {
            ServerEvent::EncodingSwitched(EncodingSwitched {
                peer_id,
                track_id,
                encoding,
            })
        }),
        (track_id(), any::<bool>()).prop_map(|(track_id, speech)| {
            ServerEvent::VadNotification(VadNotification {
                track_id,
                status: if speech {
                    VadStatus::Speech
                } else {
                    VadStatus::Silence
                },
            })
        }),
        ".*".prop_map(|message| ServerEvent::Error(ErrorMessage { message })),
        (any::<u32>(), any::<u32>(), vec(turn_server(), 0..3)).prop_map(
            |(audio, video, integrated_turn_servers)| {
                ServerEvent::OfferData(OfferData {
                    tracks_types: TracksTypes { audio, video },
                    integrated_turn_servers,
                })
            }
        ),
        (".*", mids()).prop_map(|(sdp, mids)| ServerEvent::SdpAnswer(SdpAnswer::new(sdp, mids))),
        (
            ".*",
            option::of(any::<u32>()),
            option::of(".{0,4}"),
            option::of(".{0,8}")
        )
            .prop_map(
                |(candidate, sdp_m_line_index, sdp_mid, username_fragment)| {
                    ServerEvent::Candidate(ServerCandidate {
                        candidate,
                        sdp_m_line_index,
                        sdp_mid,
                        username_fragment,
                    })
                }
            ),
        chat_message().prop_map(ServerEvent::ChatMessage),
        vec(chat_message(), 0..3)
            .prop_map(|messages| ServerEvent::ChatHistory(ChatHistory { messages })),
    ]
}

fn frame() -> impl Strategy<Value = Frame> {
    let event = prop_oneof![
        Just(PhoenixEvent::Join),
        Just(PhoenixEvent::Reply),
        Just(PhoenixEvent::Leave),
        Just(PhoenixEvent::Close),
        Just(PhoenixEvent::Error),
        Just(PhoenixEvent::Heartbeat),
        Just(PhoenixEvent::MediaEvent),
        "[a-z_]{1,12}".prop_filter_map("not a Phoenix event name", |name| {
            let known = [
                "phx_join",
                "phx_reply",
                "phx_leave",
                "phx_close",
                "phx_error",
                "heartbeat",
            ];
            (!known.contains(&name.as_str())).then_some(PhoenixEvent::Other(name))
        }),
    ];
    let payload = metadata().prop_map(|value| match value {
        Value::Object(map) => map,
        _ => unreachable!("metadata() makes objects"),
    });
    (
        option::of("[0-9]{1,4}"),
        option::of("[0-9]{1,4}"),
        ".{0,20}",
        event,
        payload,
    )
        .prop_map(|(join_ref, msg_ref, topic, event, payload)| Frame {
            join_ref,
            msg_ref,
            topic,
            event,
            payload,
        })
}

proptest! {
    #[test]
    fn client_events_round_trip(event in client_event()) {
        prop_assert_eq!(ClientEvent::decode(&event.encode()), Ok(event));
    }

    #[test]
    fn server_events_round_trip(event in server_event()) {
        prop_assert_eq!(ServerEvent::decode(&event.encode()), Ok(event));
    }

    #[test]
    fn frames_round_trip(frame in frame()) {
        prop_assert_eq!(Frame::decode(&frame.encode()), Ok(frame));
    }

    #[test]
    fn arbitrary_text_never_panics(text in ".{0,200}") {
        let _ = ClientEvent::decode(&text);
        let _ = ServerEvent::decode(&text);
        let _ = Frame::decode(&text);
    }
}

/// Found by the `frames` fuzz target: `12e23` was read as the double nearest 1.2e24 by a fast
/// approximation, which printed as `1.2e24`, which read back as a different double.
#[test]
fn a_number_reads_back_as_itself_after_a_round_trip() {
    let text = r#"["4",null,"room:","mediaEvent",{"n":12e23}]"#;
    let frame = Frame::decode(text).unwrap();
    assert_eq!(Frame::decode(&frame.encode()).unwrap(), frame);
}
