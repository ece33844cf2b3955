//! What the room page shows, as one value changed only by [`RoomAction`]s (a reducer): the
//! connection's status, who is here, their tracks and streams, and what went wrong.

use std::collections::{BTreeMap, BTreeSet};
use std::rc::Rc;

use shared::client_event::SimulcastLayer;
use shared::metadata::{display_name, track_active, track_type, TrackType};
use shared::server_event::ChatMessage;

use crate::media::Device;
use shared::{Metadata, PeerId, TrackId};
use web_sys::MediaStream;
use yew::Reducible;

/// The chat messages a page keeps; older ones scroll away for good.
const MAX_CHAT_SHOWN: usize = 500;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Status {
    #[default]
    Connecting,
    Joined,
    /// The connection to the server was lost; the call is being joined again.
    Reconnecting,
    Disconnected,
    Failed,
}

impl Status {
    /// The page's `data-status`.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Connecting => "connecting",
            Status::Joined => "joined",
            Status::Reconnecting => "reconnecting",
            Status::Disconnected => "disconnected",
            Status::Failed => "failed",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct RemotePeer {
    /// When the peer came, for a stable order of tiles: a moved video element stops playing.
    pub arrival: u64,
    pub metadata: Metadata,
    pub tracks: BTreeMap<TrackId, Metadata>,
    /// What each track's media turned out to be, for tracks whose metadata names no `type`
    /// (a Membrane client sends `{}`): audio by kind, video as a camera.
    pub kinds: BTreeMap<TrackId, TrackType>,
    /// The peer's audio and video, in one stream (the server puts them in one msid).
    pub stream: Option<MediaStream>,
    /// The screen the peer shares, in a stream of its own, with its track's id.
    pub screen: Option<(TrackId, MediaStream)>,
    /// The simulcast layer of its camera the server sends us, once it said.
    pub layer: Option<SimulcastLayer>,
}

impl RemotePeer {
    pub fn name(&self) -> String {
        display_name(&self.metadata).unwrap_or("Guest").to_owned()
    }

    /// The first track of one of `kinds`: its metadata's `type`, or else what its media is.
    fn track_of(&self, kinds: &[TrackType]) -> Option<&Metadata> {
        self.tracks
            .iter()
            .find(|(id, metadata)| {
                track_type(metadata)
                    .or_else(|| self.kinds.get(*id).copied())
                    .is_some_and(|kind| kinds.contains(&kind))
            })
            .map(|(_, metadata)| metadata)
    }

    /// Muted: its microphone track is off, or it has none.
    pub fn mic_muted(&self) -> bool {
        self.track_of(&[TrackType::Audio])
            .is_none_or(|metadata| !track_active(metadata))
    }

    /// The id of the peer's camera track, if it has one.
    pub fn camera(&self) -> Option<&TrackId> {
        self.tracks
            .iter()
            .find(|(id, metadata)| {
                track_type(metadata).or_else(|| self.kinds.get(*id).copied())
                    == Some(TrackType::Camera)
            })
            .map(|(id, _)| id)
    }

    /// Camera off: its video track is off, or it has none.
    pub fn camera_off(&self) -> bool {
        self.track_of(&[TrackType::Camera, TrackType::Screensharing])
            .is_none_or(|metadata| !track_active(metadata))
    }
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct RoomState {
    pub status: Status,
    pub me: Option<PeerId>,
    pub local_stream: Option<MediaStream>,
    pub has_mic: bool,
    pub has_camera: bool,
    pub mic_on: bool,
    pub camera_on: bool,
    pub peers: BTreeMap<PeerId, RemotePeer>,
    arrivals: u64,
    /// Messages for the person, newest last.
    pub problems: Vec<String>,
    /// The media connection did not come up in time after an answer (and has not since).
    pub media_stalled: bool,
    /// The room's chat, oldest first: what the room kept when we joined, then what came since.
    pub chat: Vec<ChatMessage>,
    /// The cameras and microphones there are.
    pub devices: Vec<Device>,
    /// The microphone and the camera in use.
    pub microphone: Option<String>,
    pub camera: Option<String>,
    /// What happened that the person should know, newest last (not errors).
    pub notices: Vec<String>,
    /// Our screen, while we share it.
    pub sharing: Option<MediaStream>,
    /// Who is speaking now (ourselves included), as the server hears it.
    pub speaking: BTreeSet<PeerId>,
    /// When each peer last began to speak, in a count of speeches: recent speakers lead.
    spoke: BTreeMap<PeerId, u64>,
    speeches: u64,
}

pub enum RoomAction {
    LocalMedia {
        stream: Option<MediaStream>,
        has_mic: bool,
        has_camera: bool,
    },
    Joined {
        me: PeerId,
        peers: Vec<(PeerId, Metadata, BTreeMap<TrackId, Metadata>)>,
    },
    PeerJoined(PeerId, Metadata),
    PeerLeft(PeerId),
    PeerUpdated(PeerId, Metadata),
    /// The peer's complete set of tracks.
    TracksAdded(PeerId, BTreeMap<TrackId, Metadata>),
    TracksRemoved(PeerId, Vec<TrackId>),
    TrackUpdated(PeerId, TrackId, Metadata),
    /// Media of a peer's track arrived, and this is what it is.
    TrackKind(PeerId, TrackId, TrackType),
    /// The stream a peer's media arrives in.
    Stream(PeerId, MediaStream),
    /// The server now sends us the peer's track in this simulcast layer.
    Layer(PeerId, TrackId, SimulcastLayer),
    /// A peer's shared screen arrived, in a stream of its own.
    Screen(PeerId, TrackId, MediaStream),
    /// We share our screen (`Some`), or no longer do.
    Sharing(Option<MediaStream>),
    Mic(bool),
    Camera(bool),
    Problem(String),
    /// The media connection came up (`true`), or has not come up in time (`false`).
    MediaUp(bool),
    /// A chat message came.
    Chat(ChatMessage),
    /// The cameras and microphones there are now.
    Devices(Vec<Device>),
    /// The microphone (`Audio`) or camera now in use.
    DeviceInUse(TrackType, String),
    Notice(String),
    /// An audio track began (`true`) or stopped carrying speech.
    Voice(TrackId, bool),
    /// The room's last chat messages, on joining it (again).
    ChatHistory(Vec<ChatMessage>),
    /// The connection was lost and is being made again: the others are gone until the room is
    /// joined anew (with a new id).
    Reconnecting,
    /// The connection ended: `Failed` with a reason, or `Disconnected`.
    Ended(Status, Option<String>),
}

impl RoomState {
    fn next_arrival(&mut self) -> u64 {
        self.arrivals += 1;
        self.arrivals
    }

    /// Where `peer`'s tile goes among the others (CSS `order`): the most recent speaker
    /// first, then earlier ones, then those who have not spoken, in the order they came.
    pub fn tile_order(&self, peer: Option<&PeerId>) -> i64 {
        peer.and_then(|peer| self.spoke.get(peer))
            .map_or(0, |&speech| -i64::try_from(speech).unwrap_or(i64::MAX))
    }

    /// The owner of `track`: a remote peer whose track it is, or ourselves.
    fn owner_of(&self, track: &TrackId) -> Option<PeerId> {
        self.peers
            .iter()
            .find(|(_, peer)| peer.tracks.contains_key(track))
            .map(|(id, _)| id.clone())
            .or_else(|| self.me.clone().filter(|me| track.is_owned_by(me)))
    }

    /// The remote peers in the order they came.
    pub fn peers_by_arrival(&self) -> Vec<(&PeerId, &RemotePeer)> {
        let mut peers: Vec<_> = self.peers.iter().collect();
        peers.sort_by_key(|(_, peer)| peer.arrival);
        peers
    }
}

impl Reducible for RoomState {
    type Action = RoomAction;

    fn reduce(self: Rc<Self>, action: RoomAction) -> Rc<Self> {
        let mut state = (*self).clone();
        match action {
            RoomAction::LocalMedia {
                stream,
                has_mic,
                has_camera,
            } => {
                state.local_stream = stream;
                (state.has_mic, state.has_camera) = (has_mic, has_camera);
                (state.mic_on, state.camera_on) = (has_mic, has_camera);
            }
            RoomAction::Joined { me, peers } => {
                state.status = Status::Joined;
                state.me = Some(me);
                for (id, metadata, tracks) in peers {
                    let arrival = state.next_arrival();
                    let peer = RemotePeer {
                        arrival,
                        metadata,
                        tracks,
                        ..RemotePeer::default()
                    };
                    state.peers.insert(id, peer);
                }
            }
            RoomAction::PeerJoined(id, metadata) => {
                if state.me.as_ref() == Some(&id) {
                    // Our own arrival, announced to everyone.
                } else if let Some(peer) = state.peers.get_mut(&id) {
                    peer.metadata = metadata;
                } else {
                    let arrival = state.next_arrival();
                    let peer = RemotePeer {
                        arrival,
                        metadata,
                        ..RemotePeer::default()
                    };
                    state.peers.insert(id, peer);
                }
            }
            RoomAction::PeerLeft(id) => {
                state.peers.remove(&id);
                state.speaking.remove(&id);
                state.spoke.remove(&id);
            }
            RoomAction::PeerUpdated(id, metadata) => {
                if let Some(peer) = state.peers.get_mut(&id) {
                    peer.metadata = metadata;
                }
            }
            RoomAction::TracksAdded(id, tracks) => {
                if let Some(peer) = state.peers.get_mut(&id) {
                    if peer
                        .screen
                        .as_ref()
                        .is_some_and(|(screen, _)| !tracks.contains_key(screen))
                    {
                        peer.screen = None;
                    }
                    peer.tracks = tracks;
                }
            }
            RoomAction::TracksRemoved(id, track_ids) => {
                if let Some(peer) = state.peers.get_mut(&id) {
                    peer.tracks
                        .retain(|track_id, _| !track_ids.contains(track_id));
                    peer.kinds
                        .retain(|track_id, _| !track_ids.contains(track_id));
                    if peer
                        .screen
                        .as_ref()
                        .is_some_and(|(screen, _)| track_ids.contains(screen))
                    {
                        peer.screen = None;
                    }
                }
            }
            RoomAction::TrackUpdated(id, track_id, metadata) => {
                if let Some(track) = state
                    .peers
                    .get_mut(&id)
                    .and_then(|peer| peer.tracks.get_mut(&track_id))
                {
                    *track = metadata;
                }
            }
            RoomAction::TrackKind(id, track_id, kind) => {
                if let Some(peer) = state.peers.get_mut(&id) {
                    peer.kinds.insert(track_id, kind);
                }
            }
            RoomAction::Stream(id, stream) => {
                if let Some(peer) = state.peers.get_mut(&id) {
                    peer.stream = Some(stream);
                }
            }
            RoomAction::Screen(id, track_id, stream) => {
                if let Some(peer) = state.peers.get_mut(&id) {
                    peer.screen = Some((track_id, stream));
                }
            }
            RoomAction::Sharing(screen) => state.sharing = screen,
            RoomAction::Layer(id, track_id, layer) => {
                if let Some(peer) = state.peers.get_mut(&id) {
                    if peer.camera() == Some(&track_id) {
                        peer.layer = Some(layer);
                    }
                }
            }
            RoomAction::Mic(on) => state.mic_on = on,
            RoomAction::Camera(on) => state.camera_on = on,
            RoomAction::Problem(problem) => state.problems.push(problem),
            RoomAction::MediaUp(up) => state.media_stalled = !up,
            RoomAction::Chat(message) => {
                if state.chat.len() == MAX_CHAT_SHOWN {
                    state.chat.remove(0);
                }
                state.chat.push(message);
            }
            RoomAction::ChatHistory(messages) => state.chat = messages,
            RoomAction::Devices(devices) => state.devices = devices,
            RoomAction::DeviceInUse(TrackType::Audio, id) => state.microphone = Some(id),
            RoomAction::DeviceInUse(_, id) => state.camera = Some(id),
            RoomAction::Notice(notice) => state.notices.push(notice),
            RoomAction::Voice(track, speaking) => {
                if let Some(owner) = state.owner_of(&track) {
                    if speaking {
                        state.speeches += 1;
                        state.spoke.insert(owner.clone(), state.speeches);
                        state.speaking.insert(owner);
                    } else {
                        state.speaking.remove(&owner);
                    }
                }
            }
            RoomAction::Reconnecting => {
                if !matches!(state.status, Status::Disconnected | Status::Failed) {
                    state.status = Status::Reconnecting;
                    state.me = None;
                    state.peers.clear();
                    state.speaking.clear();
                    state.spoke.clear();
                    state.media_stalled = false;
                }
            }
            RoomAction::Ended(status, reason) => {
                if !matches!(state.status, Status::Disconnected | Status::Failed) {
                    state.status = status;
                    state.problems.extend(reason);
                }
            }
        }
        Rc::new(state)
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn peer(n: u128) -> PeerId {
        PeerId::from(uuid::Uuid::from_u128(n))
    }

    fn track(owner: &PeerId, n: u128) -> TrackId {
        TrackId::new(owner, uuid::Uuid::from_u128(n))
    }

    fn reduce(state: Rc<RoomState>, action: RoomAction) -> Rc<RoomState> {
        state.reduce(action)
    }

    #[test]
    fn speakers_are_marked_and_the_most_recent_leads() {
        let (me, ann, bob) = (peer(1), peer(2), peer(3));
        let (ann_mic, bob_mic, my_mic) = (track(&ann, 1), track(&bob, 1), track(&me, 1));
        let mut state = reduce(
            Rc::new(RoomState::default()),
            RoomAction::Joined {
                me: me.clone(),
                peers: vec![
                    (
                        ann.clone(),
                        json!({}),
                        BTreeMap::from([(ann_mic.clone(), json!({}))]),
                    ),
                    (
                        bob.clone(),
                        json!({}),
                        BTreeMap::from([(bob_mic.clone(), json!({}))]),
                    ),
                ],
            },
        );
        assert_eq!(state.tile_order(Some(&ann)), 0);
        state = reduce(state, RoomAction::Voice(ann_mic.clone(), true));
        state = reduce(state, RoomAction::Voice(bob_mic.clone(), true));
        assert_eq!(state.speaking, BTreeSet::from([ann.clone(), bob.clone()]));
        assert!(state.tile_order(Some(&bob)) < state.tile_order(Some(&ann)));
        assert!(state.tile_order(Some(&ann)) < state.tile_order(Some(&me)));

        // Silence ends the mark but keeps the place; our own voice counts as well.
        state = reduce(state, RoomAction::Voice(bob_mic, false));
        state = reduce(state, RoomAction::Voice(my_mic, true));
        assert_eq!(state.speaking, BTreeSet::from([ann.clone(), me.clone()]));
        assert!(state.tile_order(Some(&me)) < state.tile_order(Some(&bob)));
        assert!(state.tile_order(Some(&bob)) < 0);

        // A track nobody here owns changes nothing; one who leaves is forgotten.
        state = reduce(state, RoomAction::Voice(track(&peer(9), 1), true));
        assert_eq!(state.speaking.len(), 2);
        state = reduce(state, RoomAction::PeerLeft(ann.clone()));
        assert_eq!(state.speaking, BTreeSet::from([me]));
        assert_eq!(state.tile_order(Some(&ann)), 0);
    }

    #[test]
    fn a_stalled_media_connection_shows_until_it_comes_up() {
        let mut state = Rc::new(RoomState::default());
        assert!(!state.media_stalled);
        state = reduce(state, RoomAction::MediaUp(false));
        assert!(state.media_stalled);
        state = reduce(state, RoomAction::MediaUp(true));
        assert!(!state.media_stalled);
    }

    #[test]
    fn tracks_without_a_type_count_as_on_once_their_media_shows_what_they_are() {
        let (me, ann) = (peer(1), peer(2));
        let (mic, camera) = (track(&ann, 1), track(&ann, 2));
        let mut state = reduce(
            Rc::new(RoomState::default()),
            RoomAction::Joined {
                me,
                peers: vec![(ann.clone(), json!({"displayName": "Ann"}), BTreeMap::new())],
            },
        );
        // A Membrane client's tracks: `{}` metadata.
        let tracks = BTreeMap::from([(mic.clone(), json!({})), (camera.clone(), json!({}))]);
        state = reduce(state, RoomAction::TracksAdded(ann.clone(), tracks));
        state = reduce(
            state,
            RoomAction::TrackKind(ann.clone(), mic, TrackType::Audio),
        );
        assert!(!state.peers[&ann].mic_muted() && state.peers[&ann].camera_off());
        state = reduce(
            state,
            RoomAction::TrackKind(ann.clone(), camera.clone(), TrackType::Camera),
        );
        assert!(!state.peers[&ann].camera_off());
        // Its metadata still rules once it says something.
        state = reduce(
            state,
            RoomAction::TrackUpdated(ann.clone(), camera, json!({"active": false})),
        );
        assert!(state.peers[&ann].camera_off());
    }

    #[test]
    fn peers_come_and_go_and_their_tracks_say_muted_or_not() {
        let (me, ann) = (peer(1), peer(2));
        let (mic, camera) = (track(&ann, 10), track(&ann, 11));
        let mut state = Rc::new(RoomState::default());
        state = reduce(
            state,
            RoomAction::Joined {
                me: me.clone(),
                peers: vec![],
            },
        );
        assert_eq!(state.status, Status::Joined);
        // Our own peerJoined is not a remote peer.
        state = reduce(
            state,
            RoomAction::PeerJoined(me.clone(), json!({"displayName": "Me"})),
        );
        state = reduce(
            state,
            RoomAction::PeerJoined(ann.clone(), json!({"displayName": "Ann"})),
        );
        assert_eq!(state.peers.len(), 1);
        assert_eq!(state.peers[&ann].name(), "Ann");
        assert!(
            state.peers[&ann].mic_muted() && state.peers[&ann].camera_off(),
            "no tracks yet"
        );

        let tracks = BTreeMap::from([
            (mic.clone(), json!({"type": "audio", "active": true})),
            (camera.clone(), json!({"type": "camera", "active": true})),
        ]);
        state = reduce(state, RoomAction::TracksAdded(ann.clone(), tracks));
        assert!(!state.peers[&ann].mic_muted() && !state.peers[&ann].camera_off());
        state = reduce(
            state,
            RoomAction::TrackUpdated(
                ann.clone(),
                mic.clone(),
                json!({"type": "audio", "active": false}),
            ),
        );
        assert!(state.peers[&ann].mic_muted() && !state.peers[&ann].camera_off());
        state = reduce(state, RoomAction::TracksRemoved(ann.clone(), vec![camera]));
        assert!(state.peers[&ann].camera_off());
        let bob = peer(0);
        state = reduce(
            state,
            RoomAction::PeerJoined(bob.clone(), json!({"displayName": "Bob"})),
        );
        let order: Vec<&PeerId> = state
            .peers_by_arrival()
            .into_iter()
            .map(|(id, _)| id)
            .collect();
        assert_eq!(
            order,
            [&ann, &bob],
            "tiles keep the order of arrival, not of ids"
        );
        state = reduce(state, RoomAction::PeerLeft(ann.clone()));
        assert_eq!(state.peers.len(), 1);
    }

    #[test]
    fn reconnecting_forgets_the_others_until_the_room_is_joined_again() {
        let (me, ann) = (peer(1), peer(2));
        let mut state = Rc::new(RoomState::default());
        state = reduce(
            state,
            RoomAction::Joined {
                me,
                peers: vec![(ann.clone(), json!({"displayName": "Ann"}), BTreeMap::new())],
            },
        );
        state = reduce(state, RoomAction::Reconnecting);
        assert_eq!(state.status, Status::Reconnecting);
        assert!(state.peers.is_empty() && state.me.is_none());
        let me_again = peer(3);
        state = reduce(
            state,
            RoomAction::Joined {
                me: me_again.clone(),
                peers: vec![(ann.clone(), json!({"displayName": "Ann"}), BTreeMap::new())],
            },
        );
        assert_eq!(state.status, Status::Joined);
        assert_eq!(state.me, Some(me_again));
        assert_eq!(state.peers[&ann].name(), "Ann");
        // Once the call ended, a late reconnect does not bring it back.
        state = reduce(state, RoomAction::Ended(Status::Disconnected, None));
        state = reduce(state, RoomAction::Reconnecting);
        assert_eq!(state.status, Status::Disconnected);
    }

    #[test]
    fn the_first_ending_wins() {
        let mut state = Rc::new(RoomState::default());
        state = reduce(
            state,
            RoomAction::Ended(Status::Failed, Some("boom".to_owned())),
        );
        state = reduce(
            state,
            RoomAction::Ended(Status::Disconnected, Some("closed".to_owned())),
        );
        assert_eq!(state.status, Status::Failed);
        assert_eq!(state.problems, ["boom"]);
    }
}
