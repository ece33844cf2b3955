//! A call: the protocol logic of `membrane-webrtc-js` in Rust, over the browser's own
//! `RTCPeerConnection`. It joins, publishes the local tracks, answers every `offerData` with an
//! offer (receiving slots included), applies the server's answers and candidates, and turns
//! what happens into [`RoomAction`]s for the page. Events are handled one at a time, in order.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;

use futures::channel::mpsc;
use futures::StreamExt;
use shared::client_event::{
    ClientCandidate, Join, SdpOffer, SdpType, SessionDescription, UpdateTrackMetadata,
};
use shared::metadata::{peer_metadata, track_metadata, TrackType};
use shared::server_event::{OfferData, SdpAnswer, ServerCandidate, TurnServer};
use shared::{ClientEvent, PeerId, RoomId, ServerEvent, TrackId};
use wasm_bindgen::closure::Closure;
use wasm_bindgen::{JsCast, JsValue};
use wasm_bindgen_futures::{spawn_local, JsFuture};
use web_sys::{
    MediaStream, MediaStreamTrack, RtcConfiguration, RtcIceCandidateInit, RtcIceConnectionState,
    RtcIceServer, RtcOfferOptions, RtcPeerConnection, RtcPeerConnectionIceEvent,
    RtcPeerConnectionState, RtcRtpTransceiver, RtcRtpTransceiverDirection, RtcRtpTransceiverInit,
    RtcSdpType, RtcSessionDescriptionInit, RtcTrackEvent,
};
use yew::Callback;

use crate::media;
use crate::room_state::{RoomAction, Status};
use crate::signaling::{Signaling, SignalingEvent};

/// A call in progress. [`Session::leave`] ends it.
#[derive(Clone)]
pub struct Session {
    inner: Rc<RefCell<Inner>>,
}

struct Inner {
    display_name: String,
    dispatch: Callback<RoomAction>,
    signaling: Option<Signaling>,
    local_stream: Option<MediaStream>,
    local_tracks: Vec<LocalTrack>,
    me: Option<PeerId>,
    pc: Option<RtcPeerConnection>,
    /// Keeps the connection's event handlers alive as long as the connection.
    handlers: Vec<Closure<dyn FnMut(JsValue)>>,
    /// The server's last answer: which mid carries which track.
    mid_to_track_id: BTreeMap<String, TrackId>,
    /// Server candidates that came before an answer could take them.
    early_candidates: Vec<ServerCandidate>,
    left: bool,
}

struct LocalTrack {
    id: TrackId,
    track: MediaStreamTrack,
    track_type: TrackType,
}

impl Session {
    /// Opens camera and microphone, then joins `room` as `display_name`.
    pub fn start(room: RoomId, display_name: String, dispatch: Callback<RoomAction>) -> Session {
        let session = Session {
            inner: Rc::new(RefCell::new(Inner {
                display_name,
                dispatch,
                signaling: None,
                local_stream: None,
                local_tracks: Vec::new(),
                me: None,
                pc: None,
                handlers: Vec::new(),
                mid_to_track_id: BTreeMap::new(),
                early_candidates: Vec::new(),
                left: false,
            })),
        };
        spawn_local(session.clone().run(room));
        session
    }

    async fn run(self, room: RoomId) {
        let local = media::open().await;
        let dispatch = self.inner.borrow().dispatch.clone();
        if let Some(problem) = local.problem {
            dispatch.emit(RoomAction::Problem(problem));
        }
        let has = |track_type| !tracks_of(local.stream.as_ref(), Some(track_type)).is_empty();
        dispatch.emit(RoomAction::LocalMedia {
            stream: local.stream.clone(),
            has_mic: has(TrackType::Audio),
            has_camera: has(TrackType::Camera),
        });
        if self.inner.borrow().left {
            stop_tracks(local.stream.as_ref());
            return;
        }
        self.inner.borrow_mut().local_stream = local.stream;

        let (events, mut queue) = mpsc::unbounded();
        let on_event = Callback::from(move |event| {
            let _ = events.unbounded_send(event);
        });
        match Signaling::connect(&room, on_event) {
            Ok(signaling) => self.inner.borrow_mut().signaling = Some(signaling),
            Err(reason) => return dispatch.emit(RoomAction::Ended(Status::Failed, Some(reason))),
        }
        while let Some(event) = queue.next().await {
            if self.inner.borrow().left {
                break;
            }
            if let Err(err) = self.handle(event).await {
                let reason = format!("The call failed: {}", describe(&err));
                dispatch.emit(RoomAction::Ended(Status::Failed, Some(reason)));
                self.leave();
            }
        }
    }

    fn push(&self, event: ClientEvent) {
        if let Some(signaling) = &self.inner.borrow().signaling {
            signaling.push(&event);
        }
    }

    fn dispatch(&self, action: RoomAction) {
        let dispatch = self.inner.borrow().dispatch.clone();
        dispatch.emit(action);
    }

    async fn handle(&self, event: SignalingEvent) -> Result<(), JsValue> {
        match event {
            SignalingEvent::Joined => {
                let metadata = peer_metadata(&self.inner.borrow().display_name);
                self.push(ClientEvent::Join(Join { metadata }));
            }
            SignalingEvent::Event(event) => self.on_server_event(event).await?,
            SignalingEvent::Refused(reason) => self.dispatch(RoomAction::Problem(reason)),
            SignalingEvent::Closed(reason) => {
                if !self.inner.borrow().left {
                    self.dispatch(RoomAction::Ended(
                        Status::Disconnected,
                        Some(format!("Disconnected: {reason}.")),
                    ));
                    self.leave();
                }
            }
        }
        Ok(())
    }

    async fn on_server_event(&self, event: ServerEvent) -> Result<(), JsValue> {
        let me = self.inner.borrow().me.clone();
        let is_me = |id: &PeerId| me.as_ref() == Some(id);
        match event {
            ServerEvent::PeerAccepted(accepted) => {
                self.inner.borrow_mut().me = Some(accepted.id.clone());
                // With tracks in the room the server sends `offerData` unprompted (protocol §3,
                // step 4), and our offer to it carries our tracks: asking again would only add
                // a second negotiation round to the join.
                let offer_coming = accepted
                    .peers_in_room
                    .iter()
                    .any(|peer| !peer.track_id_to_metadata.is_empty());
                let peers = accepted
                    .peers_in_room
                    .into_iter()
                    .map(|peer| (peer.id, peer.metadata, peer.track_id_to_metadata))
                    .collect();
                self.dispatch(RoomAction::Joined {
                    me: accepted.id.clone(),
                    peers,
                });
                if self.add_local_tracks(&accepted.id) && !offer_coming {
                    self.push(ClientEvent::RenegotiateTracks);
                }
            }
            ServerEvent::PeerDenied(reason) => {
                let reason = reason
                    .get("reason")
                    .and_then(|r| r.as_str())
                    .unwrap_or("no reason given")
                    .to_owned();
                self.dispatch(RoomAction::Ended(
                    Status::Failed,
                    Some(format!("The room refused you: {reason}.")),
                ));
                self.leave();
            }
            ServerEvent::PeerJoined(joined) if !is_me(&joined.peer.id) => {
                self.dispatch(RoomAction::PeerJoined(joined.peer.id, joined.peer.metadata));
            }
            ServerEvent::PeerLeft(left) => self.dispatch(RoomAction::PeerLeft(left.peer_id)),
            ServerEvent::PeerUpdated(updated) if !is_me(&updated.peer_id) => {
                self.dispatch(RoomAction::PeerUpdated(updated.peer_id, updated.metadata));
            }
            ServerEvent::TracksAdded(added) if !is_me(&added.peer_id) => {
                self.dispatch(RoomAction::TracksAdded(
                    added.peer_id,
                    added.track_id_to_metadata,
                ));
            }
            ServerEvent::TracksRemoved(removed) if !is_me(&removed.peer_id) => {
                self.dispatch(RoomAction::TracksRemoved(
                    removed.peer_id,
                    removed.track_ids,
                ));
            }
            ServerEvent::TrackUpdated(updated) if !is_me(&updated.peer_id) => {
                self.dispatch(RoomAction::TrackUpdated(
                    updated.peer_id,
                    updated.track_id,
                    updated.metadata,
                ));
            }
            ServerEvent::OfferData(offer_data) => self.offer(offer_data).await?,
            ServerEvent::SdpAnswer(answer) => self.on_answer(answer).await?,
            ServerEvent::Candidate(candidate) => {
                let pc = self.inner.borrow().pc.clone();
                match pc.filter(|pc| pc.remote_description().is_some()) {
                    Some(pc) => add_candidate(&pc, &candidate).await,
                    None => self.inner.borrow_mut().early_candidates.push(candidate),
                }
            }
            ServerEvent::Error(error) => {
                self.dispatch(RoomAction::Ended(
                    Status::Failed,
                    Some(format!("The server ended the call: {}", error.message)),
                ));
                self.leave();
            }
            ServerEvent::PeerRemoved(removed) if is_me(&removed.peer_id) => {
                self.dispatch(RoomAction::Ended(
                    Status::Failed,
                    Some(format!(
                        "You were removed from the room: {}",
                        removed.reason
                    )),
                ));
                self.leave();
            }
            _ => {}
        }
        Ok(())
    }

    /// Gives each local track its id `<peerId>:<uuid>`; false when there is nothing to publish.
    fn add_local_tracks(&self, me: &PeerId) -> bool {
        let mut inner = self.inner.borrow_mut();
        for track in tracks_of(inner.local_stream.as_ref(), None) {
            let track_type = if track.kind() == "audio" {
                TrackType::Audio
            } else {
                TrackType::Camera
            };
            inner.local_tracks.push(LocalTrack {
                id: TrackId::new(me, uuid::Uuid::new_v4()),
                track,
                track_type,
            });
        }
        !inner.local_tracks.is_empty()
    }

    /// Answers `offerData`: the connection (first time) or an ICE restart, receiving slots up
    /// to `tracksTypes`, then an offer.
    async fn offer(&self, offer_data: OfferData) -> Result<(), JsValue> {
        let existing = self.inner.borrow().pc.clone();
        let first = existing.is_none();
        let pc = match existing {
            Some(pc) => pc,
            None => self.connect(&offer_data.integrated_turn_servers)?,
        };
        let (mut audio, mut video) = (0, 0);
        for transceiver in transceivers(&pc) {
            if transceiver.direction() == RtcRtpTransceiverDirection::Recvonly {
                match transceiver.receiver().track().kind().as_str() {
                    "audio" => audio += 1,
                    _ => video += 1,
                }
            }
        }
        let receive_only = RtcRtpTransceiverInit::new();
        receive_only.set_direction(RtcRtpTransceiverDirection::Recvonly);
        for _ in audio..offer_data.tracks_types.audio {
            pc.add_transceiver_with_str_and_init("audio", &receive_only);
        }
        for _ in video..offer_data.tracks_types.video {
            pc.add_transceiver_with_str_and_init("video", &receive_only);
        }
        // Unlike membrane-webrtc-js, restart ICE only when the transport broke: a restart on
        // every renegotiation briefly drops media for everyone already in the call.
        let broken = matches!(
            pc.ice_connection_state(),
            RtcIceConnectionState::Failed | RtcIceConnectionState::Disconnected
        );
        let options = RtcOfferOptions::new();
        options.set_ice_restart(!first && broken);
        let offer: RtcSessionDescriptionInit =
            JsFuture::from(pc.create_offer_with_rtc_offer_options(&options))
                .await?
                .unchecked_into();
        JsFuture::from(pc.set_local_description(&offer)).await?;
        let sdp = pc
            .local_description()
            .map(|description| description.sdp())
            .unwrap_or_default();

        let inner = self.inner.borrow();
        let mut mid_to_track_id = BTreeMap::new();
        for transceiver in transceivers(&pc) {
            let (Some(mid), Some(track)) = (transceiver.mid(), transceiver.sender().track()) else {
                continue;
            };
            if let Some(local) = inner
                .local_tracks
                .iter()
                .find(|local| local.track.id() == track.id())
            {
                mid_to_track_id.insert(mid, local.id.clone());
            }
        }
        let track_id_to_track_metadata = inner
            .local_tracks
            .iter()
            .map(|local| {
                (
                    local.id.clone(),
                    track_metadata(local.track_type, local.track.enabled()),
                )
            })
            .collect();
        drop(inner);
        self.push(ClientEvent::SdpOffer(SdpOffer {
            sdp_offer: SessionDescription {
                sdp_type: SdpType::Offer,
                sdp,
            },
            track_id_to_track_metadata,
            mid_to_track_id,
        }));
        Ok(())
    }

    /// Creates the peer connection with the local tracks on it, sending only.
    fn connect(&self, turn_servers: &[TurnServer]) -> Result<RtcPeerConnection, JsValue> {
        let config = RtcConfiguration::new();
        if !turn_servers.is_empty() {
            let servers = js_sys::Array::new();
            for turn in turn_servers {
                let server = RtcIceServer::new();
                server.set_urls_str(&turn.url());
                server.set_username(&turn.username);
                server.set_credential(&turn.password);
                servers.push(&server);
            }
            config.set_ice_servers(&servers);
        }
        let pc = RtcPeerConnection::new_with_configuration(&config)?;
        let mut inner = self.inner.borrow_mut();
        if let Some(stream) = &inner.local_stream {
            let send_only = RtcRtpTransceiverInit::new();
            send_only.set_direction(RtcRtpTransceiverDirection::Sendonly);
            send_only.set_streams(&js_sys::Array::of1(stream));
            for local in &inner.local_tracks {
                pc.add_transceiver_with_media_stream_track_and_init(&local.track, &send_only);
            }
        }

        let session = self.clone();
        let on_candidate = Closure::<dyn FnMut(JsValue)>::new(move |event: JsValue| {
            let Some(candidate) = event
                .unchecked_into::<RtcPeerConnectionIceEvent>()
                .candidate()
            else {
                return;
            };
            if !candidate.candidate().is_empty() {
                session.push(ClientEvent::Candidate(ClientCandidate {
                    candidate: candidate.candidate(),
                    sdp_m_line_index: candidate.sdp_m_line_index().map(u32::from),
                }));
            }
        });
        pc.set_onicecandidate(Some(on_candidate.as_ref().unchecked_ref()));

        let session = self.clone();
        let on_track = Closure::<dyn FnMut(JsValue)>::new(move |event: JsValue| {
            let event: RtcTrackEvent = event.unchecked_into();
            let Some(mid) = event.transceiver().mid() else {
                return;
            };
            let Some(track_id) = session.inner.borrow().mid_to_track_id.get(&mid).cloned() else {
                return;
            };
            let (Ok(owner), Ok(stream)) = (
                PeerId::new(track_id.owner()),
                event.streams().get(0).dyn_into::<MediaStream>(),
            ) else {
                return;
            };
            session.dispatch(RoomAction::Stream(owner, stream));
        });
        pc.set_ontrack(Some(on_track.as_ref().unchecked_ref()));

        let session = self.clone();
        let watched = pc.clone();
        let on_state = Closure::<dyn FnMut(JsValue)>::new(move |_: JsValue| {
            if watched.connection_state() == RtcPeerConnectionState::Failed {
                session.dispatch(RoomAction::Problem(
                    "The media connection failed: the others may not see or hear you.".to_owned(),
                ));
            }
        });
        pc.set_onconnectionstatechange(Some(on_state.as_ref().unchecked_ref()));
        inner.handlers.extend([on_candidate, on_track, on_state]);
        inner.pc = Some(pc.clone());
        // For diagnostics (and the browser tests): the page's connection, with its getStats().
        if let Some(window) = web_sys::window() {
            let _ = js_sys::Reflect::set(&window, &"videoroomPeerConnection".into(), &pc);
        }
        Ok(pc)
    }

    async fn on_answer(&self, answer: SdpAnswer) -> Result<(), JsValue> {
        let Some(pc) = self.inner.borrow().pc.clone() else {
            return Err("an answer came before any offer".into());
        };
        self.inner.borrow_mut().mid_to_track_id = answer.mid_to_track_id;
        let description = RtcSessionDescriptionInit::new(RtcSdpType::Answer);
        description.set_sdp(&answer.description.sdp);
        JsFuture::from(pc.set_remote_description(&description)).await?;
        let early = std::mem::take(&mut self.inner.borrow_mut().early_candidates);
        for candidate in &early {
            add_candidate(&pc, candidate).await;
        }
        Ok(())
    }

    /// Turns the microphone (`TrackType::Audio`) or camera on or off, and tells the others.
    pub fn set_enabled(&self, track_type: TrackType, on: bool) {
        // The tracks themselves switch even before joining, when they have no ids yet.
        for track in tracks_of(self.inner.borrow().local_stream.as_ref(), Some(track_type)) {
            track.set_enabled(on);
        }
        let updates: Vec<ClientEvent> = self
            .inner
            .borrow()
            .local_tracks
            .iter()
            .filter(|local| local.track_type == track_type)
            .map(|local| {
                ClientEvent::UpdateTrackMetadata(UpdateTrackMetadata {
                    track_id: local.id.clone(),
                    track_metadata: track_metadata(local.track_type, on),
                })
            })
            .collect();
        for update in updates {
            self.push(update);
        }
        self.dispatch(if track_type == TrackType::Audio {
            RoomAction::Mic(on)
        } else {
            RoomAction::Camera(on)
        });
    }

    /// Leaves the room: `leave` to the server, then the connection, the tracks and the socket.
    pub fn leave(&self) {
        let mut inner = self.inner.borrow_mut();
        if std::mem::replace(&mut inner.left, true) {
            return;
        }
        if let Some(signaling) = inner.signaling.take() {
            // Queued before the socket closes: the writer sends what it has, then closes.
            signaling.push(&ClientEvent::Leave);
        }
        if let Some(pc) = inner.pc.take() {
            pc.close();
        }
        inner.handlers.clear();
        stop_tracks(inner.local_stream.as_ref());
    }
}

fn stop_tracks(stream: Option<&MediaStream>) {
    for track in tracks_of(stream, None) {
        track.stop();
    }
}

/// The stream's microphone (`Audio`) or camera (any other type) tracks, or all of them.
fn tracks_of(stream: Option<&MediaStream>, track_type: Option<TrackType>) -> Vec<MediaStreamTrack> {
    let Some(stream) = stream else {
        return Vec::new();
    };
    let tracks = match track_type {
        None => stream.get_tracks(),
        Some(TrackType::Audio) => stream.get_audio_tracks(),
        Some(_) => stream.get_video_tracks(),
    };
    tracks
        .iter()
        .filter_map(|track| track.dyn_into().ok())
        .collect()
}

fn transceivers(pc: &RtcPeerConnection) -> Vec<RtcRtpTransceiver> {
    pc.get_transceivers()
        .iter()
        .filter_map(|transceiver| transceiver.dyn_into().ok())
        .collect()
}

/// Adds a server candidate; one the browser refuses is only logged (others may still work).
async fn add_candidate(pc: &RtcPeerConnection, candidate: &ServerCandidate) {
    let init = RtcIceCandidateInit::new(&candidate.candidate);
    init.set_sdp_m_line_index(
        candidate
            .sdp_m_line_index
            .and_then(|index| u16::try_from(index).ok()),
    );
    init.set_sdp_mid(candidate.sdp_mid.as_deref());
    if let Err(err) =
        JsFuture::from(pc.add_ice_candidate_with_opt_rtc_ice_candidate_init(Some(&init))).await
    {
        gloo::console::warn!(format!("candidate refused: {}", describe(&err)));
    }
}

/// A JavaScript error as text.
fn describe(err: &JsValue) -> String {
    err.dyn_ref::<js_sys::Error>()
        .map(|err| String::from(err.message()))
        .or_else(|| err.as_string())
        .unwrap_or_else(|| format!("{err:?}"))
}
