//! Media events a client sends to the server (C→S), section 2.2 of the protocol.

use std::collections::BTreeMap;

use serde::{Deserialize, Deserializer, Serialize};
use serde_json::Value;

use crate::{Metadata, TrackId};

/// A media event from a client.
#[derive(Debug, Clone, PartialEq)]
pub enum ClientEvent {
    Join(Join),
    Leave,
    UpdatePeerMetadata(UpdatePeerMetadata),
    UpdateTrackMetadata(UpdateTrackMetadata),
    RenegotiateTracks,
    SdpOffer(SdpOffer),
    Candidate(ClientCandidate),
    SetTargetTrackVariant(SetTargetTrackVariant),
    PrioritizeTrack(TrackRef),
    UnprioritizeTrack(TrackRef),
    PreferedVideoSizes(PreferedVideoSizes),
    /// Our extension: a text message to everyone in the room.
    ChatMessage(ChatText),
}

/// `join`: the peer's metadata. A missing or null `metadata` counts as `{}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Join {
    #[serde(default = "empty_object", deserialize_with = "null_as_empty_object")]
    pub metadata: Metadata,
}

impl Default for Join {
    fn default() -> Self {
        Join {
            metadata: empty_object(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UpdatePeerMetadata {
    pub metadata: Metadata,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UpdateTrackMetadata {
    pub track_id: TrackId,
    pub track_metadata: Metadata,
}

/// The type of a session description, as in `RTCSessionDescriptionInit`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SdpType {
    Offer,
    Answer,
    Pranswer,
    Rollback,
}

/// `{"type", "sdp"}`, as the browser's `RTCSessionDescriptionInit`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionDescription {
    #[serde(rename = "type")]
    pub sdp_type: SdpType,
    pub sdp: String,
}

/// custom `sdpOffer`: the client's offer with its tracks' metadata and which mid sends which track.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SdpOffer {
    pub sdp_offer: SessionDescription,
    pub track_id_to_track_metadata: BTreeMap<TrackId, Metadata>,
    pub mid_to_track_id: BTreeMap<String, TrackId>,
}

/// custom `candidate` from the browser: `candidate:…` (no `a=`) and its m-line index.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ClientCandidate {
    pub candidate: String,
    pub sdp_m_line_index: Option<u32>,
}

/// A simulcast layer: `l`, `m` or `h` at ¼, ½ and full scale.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum SimulcastLayer {
    #[serde(rename = "l")]
    Low,
    #[serde(rename = "m")]
    Medium,
    #[serde(rename = "h")]
    High,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SetTargetTrackVariant {
    pub track_id: TrackId,
    pub variant: SimulcastLayer,
}

/// `{"trackId"}`, the data of `prioritizeTrack` and `unprioritizeTrack`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TrackRef {
    pub track_id: TrackId,
}

/// custom `preferedVideoSizes` (the spelling is the wire's).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PreferedVideoSizes {
    pub big_screens: u32,
    pub medium_screens: u32,
    pub small_screens: u32,
    pub all_same_size: bool,
}

/// `chatMessage` from a client (our extension: the README's "Protocol extensions"): its text.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatText {
    pub text: String,
}

media_event_codec! {
    ClientEvent {
        unit {
            Leave = "leave",
            RenegotiateTracks = "renegotiateTracks",
        }
        data {
            UpdatePeerMetadata = "updatePeerMetadata",
            UpdateTrackMetadata = "updateTrackMetadata",
            SdpOffer = "sdpOffer",
            Candidate = "candidate",
            SetTargetTrackVariant = "setTargetTrackVariant",
            PrioritizeTrack = "prioritizeTrack",
            UnprioritizeTrack = "unprioritizeTrack",
            PreferedVideoSizes = "preferedVideoSizes",
            ChatMessage = "chatMessage",
        }
        defaulted {
            Join = "join",
        }
    }
}

impl ClientEvent {
    /// Whether the event travels inside a `custom` envelope.
    pub fn is_custom(&self) -> bool {
        !matches!(
            self,
            ClientEvent::Join(_)
                | ClientEvent::Leave
                | ClientEvent::UpdatePeerMetadata(_)
                | ClientEvent::UpdateTrackMetadata(_)
                | ClientEvent::ChatMessage(_)
        )
    }
}

fn empty_object() -> Metadata {
    Value::Object(Default::default())
}

fn null_as_empty_object<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Metadata, D::Error> {
    let metadata = Metadata::deserialize(deserializer)?;
    Ok(if metadata.is_null() {
        empty_object()
    } else {
        metadata
    })
}
