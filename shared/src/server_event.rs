//! Media events the server sends to a client (S→C), section 2.3 of the protocol.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::client_event::{SdpType, SessionDescription, SimulcastLayer};
use crate::{Metadata, PeerId, TrackId};

/// A media event from the server.
#[derive(Debug, Clone, PartialEq)]
pub enum ServerEvent {
    PeerAccepted(PeerAccepted),
    /// Any object; passed to the client's `onJoinError`.
    PeerDenied(Map<String, Value>),
    PeerJoined(PeerJoined),
    PeerLeft(PeerLeft),
    PeerUpdated(PeerUpdated),
    PeerRemoved(PeerRemoved),
    TracksAdded(TracksAdded),
    TracksRemoved(TracksRemoved),
    TrackUpdated(TrackUpdated),
    TracksPriority(TracksPriority),
    EncodingSwitched(EncodingSwitched),
    Error(ErrorMessage),
    OfferData(OfferData),
    SdpAnswer(SdpAnswer),
    Candidate(ServerCandidate),
    /// Our extension: a chat message someone in the room sent.
    ChatMessage(ChatMessage),
    /// Our extension: the room's last chat messages, to a joiner.
    ChatHistory(ChatHistory),
    /// Our extension (as later Membrane engines send it): an audio track began or stopped
    /// carrying speech.
    VadNotification(VadNotification),
}

/// `peerAccepted`, to the joiner only: its id and the *other* peers with their active tracks.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PeerAccepted {
    pub id: PeerId,
    pub peers_in_room: Vec<PeerWithTracks>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PeerWithTracks {
    pub id: PeerId,
    pub metadata: Metadata,
    pub track_id_to_metadata: BTreeMap<TrackId, Metadata>,
}

/// `peerJoined`, broadcast to the room (joiner included).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PeerJoined {
    pub peer: PeerInfo,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PeerInfo {
    pub id: PeerId,
    pub metadata: Metadata,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PeerLeft {
    pub peer_id: PeerId,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PeerUpdated {
    pub peer_id: PeerId,
    pub metadata: Metadata,
}

/// `peerRemoved`, about the receiving peer itself: the server removed it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PeerRemoved {
    pub peer_id: PeerId,
    pub reason: String,
}

/// `tracksAdded`: the peer's **complete** set of active tracks.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TracksAdded {
    pub peer_id: PeerId,
    pub track_id_to_metadata: BTreeMap<TrackId, Metadata>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TracksRemoved {
    pub peer_id: PeerId,
    pub track_ids: Vec<TrackId>,
}

/// `trackUpdated` (its key is `metadata`, where `updateTrackMetadata` has `trackMetadata`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TrackUpdated {
    pub peer_id: PeerId,
    pub track_id: TrackId,
    pub metadata: Metadata,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TracksPriority {
    pub tracks: Vec<TrackId>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EncodingSwitched {
    pub peer_id: PeerId,
    pub track_id: TrackId,
    pub encoding: SimulcastLayer,
}

/// `error`: the client reports it and leaves.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorMessage {
    pub message: String,
}

impl ErrorMessage {
    /// What every peer is told when the server shuts down; our client reconnects on it.
    pub const SERVER_RESTARTING: &'static str = "the server is restarting";

    pub fn server_restarting() -> ErrorMessage {
        ErrorMessage {
            message: Self::SERVER_RESTARTING.to_owned(),
        }
    }

    pub fn is_server_restarting(&self) -> bool {
        self.message == Self::SERVER_RESTARTING
    }
}

/// custom `offerData`: how many receiving slots of each kind the client must have, and the
/// TURN servers for its first peer connection. Both keys are mandatory for the client.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OfferData {
    pub tracks_types: TracksTypes,
    pub integrated_turn_servers: Vec<TurnServer>,
}

/// Cumulative per-kind track counts over the connection: they never decrease.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TracksTypes {
    #[serde(default)]
    pub audio: u32,
    #[serde(default)]
    pub video: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TurnServer {
    pub server_addr: String,
    pub server_port: u16,
    pub transport: TurnTransport,
    pub username: String,
    pub password: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TurnTransport {
    Udp,
    Tcp,
    Tls,
}

impl TurnTransport {
    /// Its name on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            TurnTransport::Udp => "udp",
            TurnTransport::Tcp => "tcp",
            TurnTransport::Tls => "tls",
        }
    }
}

impl TurnServer {
    /// The ICE server URL the Membrane client builds from this entry.
    pub fn url(&self) -> String {
        let (scheme, transport) = match self.transport {
            TurnTransport::Udp => ("turn", "udp"),
            TurnTransport::Tcp => ("turn", "tcp"),
            TurnTransport::Tls => ("turns", "tcp"),
        };
        let host = &self.server_addr;
        // An IPv6 address takes brackets in a URI (RFC 7065).
        let host = if host.contains(':') && !host.starts_with('[') {
            format!("[{host}]")
        } else {
            host.clone()
        };
        format!("{scheme}:{host}:{}?transport={transport}", self.server_port)
    }
}

/// custom `sdpAnswer`: `{"type":"answer","sdp","midToTrackId"}`. The map covers every m-line the
/// server sends on and replaces the client's own.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SdpAnswer {
    #[serde(flatten)]
    pub description: SessionDescription,
    pub mid_to_track_id: BTreeMap<String, TrackId>,
}

impl SdpAnswer {
    pub fn new(sdp: String, mid_to_track_id: BTreeMap<String, TrackId>) -> Self {
        SdpAnswer {
            description: SessionDescription {
                sdp_type: SdpType::Answer,
                sdp,
            },
            mid_to_track_id,
        }
    }
}

/// custom `candidate` from the server. `sdpMid` and `sdpMLineIndex` must not both be null.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServerCandidate {
    pub candidate: String,
    pub sdp_m_line_index: Option<u32>,
    pub sdp_mid: Option<String>,
    pub username_fragment: Option<String>,
}

impl ServerCandidate {
    /// A candidate for the one bundled transport: m-line 0, no mid, no ufrag, as the client expects.
    pub fn bundled(candidate: String) -> Self {
        ServerCandidate {
            candidate,
            sdp_m_line_index: Some(0),
            sdp_mid: None,
            username_fragment: None,
        }
    }
}

/// `chatMessage` to clients (our extension): who sent what, when (Unix milliseconds, the
/// server's clock). `displayName` is the sender's at the time, so history names people who
/// have left.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ChatMessage {
    pub peer_id: PeerId,
    pub display_name: String,
    pub text: String,
    pub sent_at: u64,
}

/// `chatHistory` (our extension): the room's last messages, oldest first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatHistory {
    pub messages: Vec<ChatMessage>,
}

/// `vadNotification` (our extension, in a `custom` envelope as Membrane's later engines send
/// it): whether the audio track `trackId` carries speech now. Sent to everyone in the room, the
/// track's owner included, when it changes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VadNotification {
    pub track_id: TrackId,
    pub status: VadStatus,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum VadStatus {
    Speech,
    Silence,
}

media_event_codec! {
    ServerEvent {
        unit {}
        data {
            PeerAccepted = "peerAccepted",
            PeerJoined = "peerJoined",
            PeerLeft = "peerLeft",
            PeerUpdated = "peerUpdated",
            PeerRemoved = "peerRemoved",
            TracksAdded = "tracksAdded",
            TracksRemoved = "tracksRemoved",
            TrackUpdated = "trackUpdated",
            TracksPriority = "tracksPriority",
            EncodingSwitched = "encodingSwitched",
            Error = "error",
            OfferData = "offerData",
            SdpAnswer = "sdpAnswer",
            Candidate = "candidate",
            ChatMessage = "chatMessage",
            ChatHistory = "chatHistory",
            VadNotification = "vadNotification",
        }
        defaulted {
            PeerDenied = "peerDenied",
        }
    }
}

impl ServerEvent {
    /// Whether the event travels inside a `custom` envelope.
    pub fn is_custom(&self) -> bool {
        matches!(
            self,
            ServerEvent::EncodingSwitched(_)
                | ServerEvent::VadNotification(_)
                | ServerEvent::OfferData(_)
                | ServerEvent::SdpAnswer(_)
                | ServerEvent::Candidate(_)
        )
    }
}
