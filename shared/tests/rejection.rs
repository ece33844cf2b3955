//! Bad input gets a typed error, never a panic; the lenient forms the protocol allows decode.

use serde_json::json;
use shared::client_event::Join;
use shared::server_event::PeerLeft;
use shared::{
    ClientEvent, DecodeError, Frame, IdError, PeerId, RoomId, ServerEvent, TrackId, MAX_MESSAGE_LEN,
};

const P: &str = "5c4e2a9e-7d1b-4f6a-9b3e-2f1d8c6a4b10";

#[test]
fn malformed_json_is_malformed() {
    for text in [
        "",
        "{",
        "not json",
        "{\"type\":\"join\",}",
        "{\"type\":\"leave\"} x",
    ] {
        assert!(
            matches!(ClientEvent::decode(text), Err(DecodeError::Malformed(_))),
            "{text:?}"
        );
    }
    for text in [
        "",
        "[",
        "not json",
        "[\"4\",\"4\"",
        "[null,\"1\",\"phoenix\",\"heartbeat\",{}] x",
    ] {
        assert!(
            matches!(Frame::decode(text), Err(DecodeError::Malformed(_))),
            "{text:?}"
        );
    }
}

#[test]
fn unknown_types_are_named() {
    let unknown = ClientEvent::decode(r#"{"type":"selectEncoding","data":{}}"#);
    assert_eq!(
        unknown,
        Err(DecodeError::UnknownType("selectEncoding".to_owned()))
    );
    let unknown_custom =
        ClientEvent::decode(r#"{"type":"custom","data":{"type":"vadNotification"}}"#);
    assert_eq!(
        unknown_custom,
        Err(DecodeError::UnknownType("vadNotification".to_owned()))
    );
    // A server event is not a client event, and a custom envelope is opened only once.
    assert_eq!(
        ClientEvent::decode(r#"{"type":"peerAccepted","data":{}}"#),
        Err(DecodeError::UnknownType("peerAccepted".to_owned()))
    );
    assert_eq!(
        ServerEvent::decode(
            r#"{"type":"custom","data":{"type":"custom","data":{"type":"peerLeft"}}}"#
        ),
        Err(DecodeError::UnknownType("custom".to_owned()))
    );
}

#[test]
fn missing_fields_are_named() {
    let cases = [
        (
            r#"{"type":"updateTrackMetadata","data":{"trackMetadata":{}}}"#,
            "updateTrackMetadata",
            "trackId",
        ),
        (
            r#"{"type":"custom","data":{"type":"sdpOffer","data":{"sdpOffer":{"type":"offer","sdp":""},"midToTrackId":{}}}}"#,
            "sdpOffer",
            "trackIdToTrackMetadata",
        ),
        (
            r#"{"type":"custom","data":{"type":"candidate"}}"#,
            "candidate",
            "data",
        ),
        (
            r#"{"type":"updatePeerMetadata"}"#,
            "updatePeerMetadata",
            "data",
        ),
        (r#"{"type":"custom"}"#, "custom", "data"),
        (r#"{"data":{}}"#, "media event", "type"),
    ];
    for (text, event, field) in cases {
        assert_eq!(
            ClientEvent::decode(text),
            Err(DecodeError::MissingField {
                event: event.to_owned(),
                field: field.to_owned()
            }),
            "{text}"
        );
    }
}

#[test]
fn wrong_types_are_bad_values() {
    let cases = [
        (
            r#"{"type":"updateTrackMetadata","data":{"trackId":5,"trackMetadata":{}}}"#,
            "updateTrackMetadata",
        ),
        (
            r#"{"type":"updateTrackMetadata","data":{"trackId":"no-colon","trackMetadata":{}}}"#,
            "updateTrackMetadata",
        ),
        (
            r#"{"type":"custom","data":{"type":"setTargetTrackVariant","data":{"trackId":"a:5c4e2a9e-7d1b-4f6a-9b3e-2f1d8c6a4b10","variant":"x"}}}"#,
            "setTargetTrackVariant",
        ),
        (
            r#"{"type":"custom","data":{"type":"candidate","data":{"candidate":"candidate:1","sdpMLineIndex":-1}}}"#,
            "candidate",
        ),
        (
            r#"{"type":"custom","data":{"type":"sdpOffer","data":{"sdpOffer":{"type":"bogus","sdp":""},"trackIdToTrackMetadata":{},"midToTrackId":{}}}}"#,
            "sdpOffer",
        ),
        (r#"{"type":"custom","data":"renegotiateTracks"}"#, "custom"),
        (r#"{"type":7}"#, "media event"),
        (r#"["join"]"#, "media event"),
    ];
    for (text, event) in cases {
        match ClientEvent::decode(text) {
            Err(DecodeError::BadValue { event: got, .. }) => assert_eq!(got, event, "{text}"),
            other => panic!("{text}: expected a bad value, got {other:?}"),
        }
    }
}

#[test]
fn bad_frames_are_rejected() {
    let cases = [
        r#"["4","4","room:r1","phx_join"]"#,
        r#"[4,"4","room:r1","phx_join",{}]"#,
        r#"["4","4","room:r1","phx_join",[]]"#,
        r#"["4","4",null,"phx_join",{}]"#,
        r#"{"topic":"room:r1"}"#,
    ];
    for text in cases {
        assert!(
            matches!(Frame::decode(text), Err(DecodeError::BadValue { .. })),
            "{text}: {:?}",
            Frame::decode(text)
        );
    }
    let push =
        Frame::decode(r#"["4",null,"room:r1","mediaEvent",{"data":{"type":"leave"}}]"#).unwrap();
    assert!(matches!(
        push.media_event_data(),
        Err(DecodeError::BadValue { .. })
    ));
    let empty = Frame::decode(r#"["4",null,"room:r1","mediaEvent",{}]"#).unwrap();
    assert!(matches!(
        empty.media_event_data(),
        Err(DecodeError::MissingField { .. })
    ));
}

#[test]
fn oversize_input_is_refused_before_parsing() {
    let padding = " ".repeat(MAX_MESSAGE_LEN);
    let huge_event = format!(r#"{{"type":"leave"}}{padding}"#);
    assert_eq!(
        ClientEvent::decode(&huge_event),
        Err(DecodeError::TooLarge {
            size: huge_event.len(),
            limit: MAX_MESSAGE_LEN
        })
    );
    let huge_frame = format!(r#"[null,"1","phoenix","heartbeat",{{}}]{padding}"#);
    assert!(matches!(
        Frame::decode(&huge_frame),
        Err(DecodeError::TooLarge { .. })
    ));
    // Just under the limit still decodes.
    let fits = format!(r#"{{"type":"leave"}}{}"#, " ".repeat(MAX_MESSAGE_LEN - 20));
    assert_eq!(ClientEvent::decode(&fits), Ok(ClientEvent::Leave));
}

#[test]
fn join_without_metadata_counts_as_empty() {
    let empty = ClientEvent::Join(Join {
        metadata: json!({}),
    });
    for text in [
        r#"{"type":"join"}"#,
        r#"{"type":"join","data":null}"#,
        r#"{"type":"join","data":{}}"#,
        r#"{"type":"join","data":{"metadata":null}}"#,
    ] {
        assert_eq!(ClientEvent::decode(text), Ok(empty.clone()), "{text}");
    }
}

#[test]
fn bare_and_wrapped_forms_decode_alike() {
    assert_eq!(
        ClientEvent::decode(r#"{"type":"renegotiateTracks"}"#),
        Ok(ClientEvent::RenegotiateTracks)
    );
    let left = ServerEvent::PeerLeft(PeerLeft {
        peer_id: PeerId::new(P).unwrap(),
    });
    let wrapped = format!(r#"{{"type":"custom","data":{}}}"#, left.encode());
    assert_eq!(ServerEvent::decode(&wrapped), Ok(left));
    // Unknown extra keys are ignored, as the Membrane client does.
    assert_eq!(
        ClientEvent::decode(r#"{"type":"leave","data":null,"extra":1}"#),
        Ok(ClientEvent::Leave)
    );
}

#[test]
fn decode_error_messages_are_clear() {
    let err = ClientEvent::decode(r#"{"type":"updateTrackMetadata","data":{"trackMetadata":{}}}"#)
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "`updateTrackMetadata` is missing field `trackId`"
    );
    assert_eq!(
        DecodeError::UnknownType("x".to_owned()).to_string(),
        "unknown event type `x`"
    );
}

#[test]
fn room_ids_come_from_room_topics() {
    assert_eq!(
        RoomId::from_topic("room:stand-up_2.0").unwrap().as_str(),
        "stand-up_2.0"
    );
    assert_eq!(
        RoomId::from_topic("room:żółw").unwrap().topic(),
        "room:żółw"
    );
    assert_eq!(
        RoomId::from_topic("lobby:x"),
        Err(IdError::NotARoomTopic("lobby:x".to_owned()))
    );
    for bad in ["room:", "room:a b", "room:a/b", "room:<script>"] {
        assert_eq!(RoomId::from_topic(bad), Err(IdError::BadRoomName), "{bad}");
    }
    assert!(RoomId::new("x".repeat(RoomId::MAX_LEN)).is_ok());
    assert!(RoomId::new("x".repeat(RoomId::MAX_LEN + 1)).is_err());
}

#[test]
fn track_ids_name_their_owner() {
    let owner = PeerId::new(P).unwrap();
    let other = PeerId::new("someone-else").unwrap();
    let track = TrackId::parse(format!("{P}:0f6c1a52-3b7e-4c9d-a1e2-5f3b8d7c6e41")).unwrap();
    assert!(track.is_owned_by(&owner));
    assert!(!track.is_owned_by(&other));
    assert_eq!(track.owner(), P);
    for bad in [
        "",
        ":",
        "peer:",
        ":0f6c1a52-3b7e-4c9d-a1e2-5f3b8d7c6e41",
        "peer:not-a-uuid",
        "pe er:0f6c1a52-3b7e-4c9d-a1e2-5f3b8d7c6e41",
    ] {
        assert!(TrackId::parse(bad).is_err(), "{bad}");
    }
    for bad in ["", "a:b", "with space", &"x".repeat(PeerId::MAX_LEN + 1)] {
        assert_eq!(PeerId::new(bad), Err(IdError::BadPeerId), "{bad}");
    }
}
