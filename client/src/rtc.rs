//! A call: the protocol logic of `membrane-webrtc-js` in Rust, over the browser's own
//! `RTCPeerConnection`. It joins, publishes the local tracks, answers every `offerData` with an
//! offer (receiving slots included), applies the server's answers and candidates, and turns
//! what happens into [`RoomAction`]s for the page. Events are handled one at a time, in order.
//!
//! A call outlives a lost connection: when the socket drops (or the server ends a call whose
//! media had been flowing), the page reconnects with backoff and joins the room again under the
//! same name, publishing the same camera and microphone; when only the media path fails, it
//! asks for a renegotiation and restarts ICE.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::rc::Rc;

use futures::channel::mpsc;
use futures::StreamExt;
use gloo_timers::future::TimeoutFuture;
use shared::client_event::{
    ChatText, ClientCandidate, Join, SdpOffer, SdpType, SessionDescription, SetTargetTrackVariant,
    SimulcastLayer, UpdateTrackMetadata,
};
use shared::metadata::{peer_metadata, track_metadata, track_type, TrackType};
use shared::server_event::{OfferData, SdpAnswer, ServerCandidate, TurnServer, VadStatus};
use shared::{ClientEvent, Metadata, PeerId, RoomId, ServerEvent, TrackId};
use wasm_bindgen::closure::Closure;
use wasm_bindgen::{JsCast, JsValue};
use wasm_bindgen_futures::{spawn_local, JsFuture};
use web_sys::{
    MediaStream, MediaStreamTrack, RtcBundlePolicy, RtcConfiguration, RtcIceCandidateInit,
    RtcIceConnectionState, RtcIceServer, RtcIceTransportPolicy, RtcOfferOptions, RtcPeerConnection,
    RtcPeerConnectionIceEvent, RtcPeerConnectionState, RtcRtpEncodingParameters, RtcRtpTransceiver,
    RtcRtpTransceiverDirection, RtcRtpTransceiverInit, RtcSdpType, RtcSessionDescriptionInit,
    RtcTrackEvent,
};
use yew::Callback;

use crate::media::{self, describe, stop_tracks, tracks_of};
use crate::profile;
use crate::room_state::{RoomAction, Status};
use crate::signaling::{Signaling, SignalingEvent};
use crate::timings::{self, Step};

/// Attempts to reconnect in a row (without getting into the room) before the call is given up.
const MAX_RECONNECT_ATTEMPTS: u32 = 10;

/// How long to wait before reconnect attempt `attempt` (from 1): 1, 2, 4, 8 s, then 10 s.
fn reconnect_delay_ms(attempt: u32) -> u32 {
    1000u32
        .saturating_mul(1 << attempt.saturating_sub(1).min(4))
        .min(10_000)
}

/// A call in progress. [`Session::leave`] ends it.
#[derive(Clone)]
pub struct Session {
    inner: Rc<RefCell<Inner>>,
}

/// What the call does after an event.
enum Next {
    Continue,
    /// The connection was lost (the reason says how): join the room again.
    Reconnect(String),
}

/// How long after an answer the media connection may take to come up before the page says it
/// has not.
const MEDIA_DEADLINE_MS: u32 = 5_000;

/// A signaling event, with the number of the connection it came on.
type Tagged = (u32, SignalingEvent);

struct Inner {
    room: RoomId,
    display_name: String,
    dispatch: Callback<RoomAction>,
    signaling: Option<Signaling>,
    /// Where every connection's events go, tagged with its number.
    events: Option<mpsc::UnboundedSender<Tagged>>,
    /// The number of the current connection; events of earlier ones are stale.
    connection: u32,
    /// Reconnect attempts since the room last accepted us.
    attempts: u32,
    /// Whether this join's media connection came up: if the server then ends the call, it is
    /// worth joining again.
    media_up: bool,
    local_stream: Option<MediaStream>,
    local_tracks: Vec<LocalTrack>,
    me: Option<PeerId>,
    pc: Option<RtcPeerConnection>,
    /// Keeps the connection's event handlers alive as long as the connection.
    handlers: Vec<Closure<dyn FnMut(JsValue)>>,
    /// Keeps the local devices' handlers (a track ended, the device list changed) alive as
    /// long as the call: the camera and microphone outlive reconnections.
    device_handlers: Vec<Closure<dyn FnMut(JsValue)>>,
    /// The server's last answer: which mid carries which track.
    mid_to_track_id: BTreeMap<String, TrackId>,
    /// Server candidates that came before an answer could take them.
    early_candidates: Vec<ServerCandidate>,
    /// The others' screen-sharing tracks, known from their metadata before their media comes:
    /// each is shown in a tile of its own.
    remote_screens: BTreeSet<TrackId>,
    /// The simulcast layer last asked for, by remote track.
    wishes: BTreeMap<TrackId, SimulcastLayer>,
    /// Our screen being shared, in a stream of its own (not the camera's), and the
    /// transceiver that sends it.
    screen: Option<(MediaStream, RtcRtpTransceiver)>,
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
                room,
                display_name,
                dispatch,
                signaling: None,
                events: None,
                connection: 0,
                attempts: 0,
                media_up: false,
                local_stream: None,
                local_tracks: Vec::new(),
                me: None,
                pc: None,
                handlers: Vec::new(),
                device_handlers: Vec::new(),
                mid_to_track_id: BTreeMap::new(),
                early_candidates: Vec::new(),
                remote_screens: BTreeSet::new(),
                wishes: BTreeMap::new(),
                screen: None,
                left: false,
            })),
        };
        spawn_local(session.clone().run());
        session
    }

    async fn run(self) {
        timings::mark(Step::Started);
        // The socket and the room's channel open while the browser opens camera and microphone;
        // their events wait in the queue until the local media is there to publish.
        let (events, mut queue) = mpsc::unbounded::<Tagged>();
        self.inner.borrow_mut().events = Some(events);
        self.open_signaling();
        // Camera and microphone are usually open already: the preview before joining.
        let local = match media::take_preview() {
            Some(preview) => preview.await,
            None => media::open().await,
        };
        timings::mark(Step::Media);
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
        // Chosen before joining: start with the microphone or camera off.
        for kind in [TrackType::Audio, TrackType::Camera] {
            if !profile::joins_with(kind) {
                self.set_enabled(kind, false);
            }
        }
        spawn_local(self.clone().watch_devices());

        while let Some((connection, event)) = queue.next().await {
            if self.inner.borrow().left {
                break;
            }
            if connection != self.inner.borrow().connection {
                continue; // from a connection given up
            }
            match self.handle(event).await {
                Ok(Next::Continue) => {}
                Ok(Next::Reconnect(reason)) => self.reconnect(reason).await,
                Err(err) => {
                    let reason = format!("The call failed: {}", describe(&err));
                    dispatch.emit(RoomAction::Ended(Status::Failed, Some(reason)));
                    self.leave();
                }
            }
        }
    }

    /// Opens a signaling connection (the current one) and joins the room's channel; a failure
    /// to open comes back as that connection's `Closed` event.
    fn open_signaling(&self) {
        let (connection, room, events) = {
            let inner = self.inner.borrow();
            (inner.connection, inner.room.clone(), inner.events.clone())
        };
        let Some(events) = events else { return };
        let on_event = {
            let events = events.clone();
            Callback::from(move |event| {
                let _ = events.unbounded_send((connection, event));
            })
        };
        match Signaling::connect(&room, on_event) {
            Ok(signaling) => self.inner.borrow_mut().signaling = Some(signaling),
            Err(reason) => {
                let _ = events.unbounded_send((connection, SignalingEvent::Closed(reason)));
            }
        }
    }

    /// Drops the lost call (the server has dropped it too) and, after a backoff, joins again.
    async fn reconnect(&self, reason: String) {
        let attempt = {
            let mut inner = self.inner.borrow_mut();
            inner.drop_call();
            inner.connection += 1;
            inner.attempts += 1;
            inner.attempts
        };
        if attempt > MAX_RECONNECT_ATTEMPTS {
            self.dispatch(RoomAction::Ended(
                Status::Disconnected,
                Some(format!(
                    "Disconnected: {reason}; {MAX_RECONNECT_ATTEMPTS} attempts to reconnect failed."
                )),
            ));
            self.leave();
            return;
        }
        gloo::console::warn!(format!(
            "connection lost ({reason}); reconnecting, attempt {attempt}"
        ));
        self.dispatch(RoomAction::Reconnecting);
        TimeoutFuture::new(reconnect_delay_ms(attempt)).await;
        if !self.inner.borrow().left {
            self.open_signaling();
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

    async fn handle(&self, event: SignalingEvent) -> Result<Next, JsValue> {
        match event {
            SignalingEvent::Joined => {
                timings::mark(Step::Channel);
                let metadata = peer_metadata(&self.inner.borrow().display_name);
                self.push(ClientEvent::Join(Join { metadata }));
            }
            SignalingEvent::Event(event) => return self.on_server_event(event).await,
            SignalingEvent::Refused(reason) => self.dispatch(RoomAction::Problem(reason)),
            SignalingEvent::Closed(reason) => return Ok(Next::Reconnect(reason)),
        }
        Ok(Next::Continue)
    }

    async fn on_server_event(&self, event: ServerEvent) -> Result<Next, JsValue> {
        let me = self.inner.borrow().me.clone();
        let is_me = |id: &PeerId| me.as_ref() == Some(id);
        match event {
            ServerEvent::PeerAccepted(accepted) => {
                timings::mark(Step::PeerAccepted);
                {
                    let mut inner = self.inner.borrow_mut();
                    inner.me = Some(accepted.id.clone());
                    inner.attempts = 0;
                }
                // With tracks in the room the server sends `offerData` unprompted (protocol §3,
                // step 4), and our offer to it carries our tracks: asking again would only add
                // a second negotiation round to the join.
                let offer_coming = accepted
                    .peers_in_room
                    .iter()
                    .any(|peer| !peer.track_id_to_metadata.is_empty());
                self.note_screens(
                    accepted
                        .peers_in_room
                        .iter()
                        .flat_map(|peer| &peer.track_id_to_metadata),
                );
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
                self.note_screens(&added.track_id_to_metadata);
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
            ServerEvent::ChatMessage(message) => self.dispatch(RoomAction::Chat(message)),
            ServerEvent::EncodingSwitched(switched) => self.dispatch(RoomAction::Layer(
                switched.peer_id,
                switched.track_id,
                switched.encoding,
            )),
            ServerEvent::VadNotification(voice) => self.dispatch(RoomAction::Voice(
                voice.track_id,
                voice.status == VadStatus::Speech,
            )),
            ServerEvent::ChatHistory(history) => {
                self.dispatch(RoomAction::ChatHistory(history.messages))
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
                let reason = format!("the server ended the call: {}", error.message);
                // A call whose media flowed is worth joining again, and so is any call of a
                // server that restarts; one whose media never came up would fail the same way.
                if self.inner.borrow().media_up || error.is_server_restarting() {
                    return Ok(Next::Reconnect(reason));
                }
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
        Ok(Next::Continue)
    }

    /// Notes which of `tracks` are screens being shared.
    fn note_screens<'a>(&self, tracks: impl IntoIterator<Item = (&'a TrackId, &'a Metadata)>) {
        let mut inner = self.inner.borrow_mut();
        for (id, metadata) in tracks {
            if track_type(metadata) == Some(TrackType::Screensharing) {
                inner.remote_screens.insert(id.clone());
            }
        }
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
        timings::mark(Step::OfferData);
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
        timings::mark(Step::OfferSent);
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
        // The server bundles everything on one transport: gathering for one is enough (the
        // default gathers for each kind until the answer says so: twice the candidates, past
        // the server's limit per offer on a machine with many interfaces). Not Firefox: its
        // max-bundle offers mark the later m-lines `bundle-only` on port 0, which the server
        // reads as stopped.
        if !is_firefox() {
            config.set_bundle_policy(RtcBundlePolicy::MaxBundle);
        }
        let only_transport = ice_setting("videoroom.turnTransport");
        let turn_servers: Vec<&TurnServer> = turn_servers
            .iter()
            .filter(|turn| {
                only_transport
                    .as_deref()
                    .is_none_or(|only| turn.transport.as_str() == only)
            })
            .collect();
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
        if ice_setting("videoroom.iceTransportPolicy").as_deref() == Some("relay") {
            config.set_ice_transport_policy(RtcIceTransportPolicy::Relay);
        }
        let pc = RtcPeerConnection::new_with_configuration(&config)?;
        let mut inner = self.inner.borrow_mut();
        if let Some(stream) = &inner.local_stream {
            for local in &inner.local_tracks {
                let send_only = RtcRtpTransceiverInit::new();
                send_only.set_direction(RtcRtpTransceiverDirection::Sendonly);
                send_only.set_streams(&js_sys::Array::of1(stream));
                if local.track_type == TrackType::Camera {
                    send_only.set_send_encodings(&simulcast_encodings());
                }
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
            timings::mark(Step::Track);
            let track = event.track();
            if session.inner.borrow().remote_screens.contains(&track_id) {
                // The server puts a peer's tracks in one stream: the screen leaves it for a
                // stream and a tile of its own, so the camera's tile never shows it.
                stream.remove_track(&track);
                if let Ok(screen) = MediaStream::new_with_tracks(&js_sys::Array::of1(&track)) {
                    session.dispatch(RoomAction::Screen(owner, track_id, screen));
                }
                return;
            }
            let kind = if track.kind() == "audio" {
                TrackType::Audio
            } else {
                TrackType::Camera
            };
            session.dispatch(RoomAction::TrackKind(owner.clone(), track_id, kind));
            session.dispatch(RoomAction::Stream(owner, stream));
        });
        pc.set_ontrack(Some(on_track.as_ref().unchecked_ref()));

        let session = self.clone();
        let watched = pc.clone();
        let on_state = Closure::<dyn FnMut(JsValue)>::new(move |_: JsValue| {
            match watched.connection_state() {
                RtcPeerConnectionState::Connected => {
                    timings::mark(Step::Connected);
                    session.inner.borrow_mut().media_up = true;
                    session.dispatch(RoomAction::MediaUp(true));
                }
                // The media path broke but signaling still works: ask for a negotiation, whose
                // offer restarts ICE (see `offer`).
                RtcPeerConnectionState::Failed => {
                    gloo::console::warn!("the media connection failed; restarting ICE");
                    session.push(ClientEvent::RenegotiateTracks);
                }
                _ => {}
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
        timings::mark(Step::Answer);
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
        spawn_local(self.clone().watch_media(pc));
        Ok(())
    }

    /// Says so when the media connection `pc` has not come up a while after an answer, rather
    /// than "Connected" over black tiles (UDP blocked, or the server announces an address this
    /// browser cannot reach). It clears once the connection comes up.
    async fn watch_media(self, pc: RtcPeerConnection) {
        TimeoutFuture::new(MEDIA_DEADLINE_MS).await;
        let current = self.inner.borrow().pc.as_ref() == Some(&pc);
        if current && pc.connection_state() != RtcPeerConnectionState::Connected {
            gloo::console::warn!("the media connection has not come up");
            self.dispatch(RoomAction::MediaUp(false));
        }
    }

    /// Turns the microphone (`TrackType::Audio`) or camera on or off, and tells the others.
    /// Shares the screen (a window or tab the person picks) as a track of its own, type
    /// `screensharing`, at high resolution and a low frame rate; the browser's own "Stop
    /// sharing" ends it as [`Session::stop_sharing`] does.
    pub fn share_screen(&self) {
        let session = self.clone();
        spawn_local(async move {
            if let Err(err) = session.start_sharing().await {
                session.dispatch(RoomAction::Notice(format!(
                    "The screen is not shared: {}",
                    describe(&err)
                )));
            }
        });
    }

    async fn start_sharing(&self) -> Result<(), JsValue> {
        let (me, pc) = {
            let inner = self.inner.borrow();
            (inner.me.clone(), inner.pc.clone())
        };
        let (Some(me), Some(pc)) = (me, pc) else {
            return Err("join the room first".into());
        };
        let screen = media::open_screen().await?;
        let Some(track) = tracks_of(Some(&screen), Some(TrackType::Screensharing))
            .into_iter()
            .next()
        else {
            return Err("the browser gave no video of the screen".into());
        };
        let session = self.clone();
        let on_ended = Closure::<dyn FnMut(JsValue)>::new(move |_: JsValue| session.stop_sharing());
        track.set_onended(Some(on_ended.as_ref().unchecked_ref()));
        let send_only = RtcRtpTransceiverInit::new();
        send_only.set_direction(RtcRtpTransceiverDirection::Sendonly);
        send_only.set_streams(&js_sys::Array::of1(&screen));
        let transceiver = pc.add_transceiver_with_media_stream_track_and_init(&track, &send_only);
        {
            let mut inner = self.inner.borrow_mut();
            inner.device_handlers.push(on_ended);
            inner.local_tracks.push(LocalTrack {
                id: TrackId::new(&me, uuid::Uuid::new_v4()),
                track,
                track_type: TrackType::Screensharing,
            });
            inner.screen = Some((screen.clone(), transceiver));
        }
        self.dispatch(RoomAction::Sharing(Some(screen)));
        self.push(ClientEvent::RenegotiateTracks);
        Ok(())
    }

    /// Stops sharing the screen: its sender stops, and the others lose its tile.
    pub fn stop_sharing(&self) {
        let Some((screen, transceiver)) = self.inner.borrow_mut().screen.take() else {
            return;
        };
        // A stopped transceiver's m-line is offered with port 0: the server drops the track.
        transceiver.stop();
        let tracks = tracks_of(Some(&screen), None);
        self.inner
            .borrow_mut()
            .local_tracks
            .retain(|local| !tracks.contains(&local.track));
        stop_tracks(Some(&screen));
        self.dispatch(RoomAction::Sharing(None));
        self.push(ClientEvent::RenegotiateTracks);
    }

    /// Asks the server for the simulcast layer of each `(track, layer)` that fits its tile now;
    /// each wish is sent once, when it changes.
    pub fn wish_layers(&self, wishes: Vec<(TrackId, SimulcastLayer)>) {
        let changed: Vec<(TrackId, SimulcastLayer)> = {
            let mut inner = self.inner.borrow_mut();
            if inner.pc.is_none() {
                return;
            }
            wishes
                .into_iter()
                .filter(|(track, layer)| inner.wishes.insert(track.clone(), *layer) != Some(*layer))
                .collect()
        };
        for (track_id, variant) in changed {
            self.push(ClientEvent::SetTargetTrackVariant(SetTargetTrackVariant {
                track_id,
                variant,
            }));
        }
    }

    /// The connection to the server, while there is one (for its statistics).
    pub fn peer_connection(&self) -> Option<RtcPeerConnection> {
        self.inner.borrow().pc.clone()
    }

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
    /// Sends a chat message to everyone in the room (ourselves included: it shows when the
    /// room sends it back, in the room's order).
    pub fn send_chat(&self, text: String) {
        self.push(ClientEvent::ChatMessage(ChatText { text }));
    }

    /// Switches the camera or microphone (`kind`) to the device `device_id`, in place: the
    /// new track replaces the old one on its sender (`replaceTrack`), so nothing is negotiated
    /// and the others see and hear the new device at once.
    pub fn switch_device(&self, kind: TrackType, device_id: String) {
        let session = self.clone();
        spawn_local(async move {
            if let Err(err) = session.replace_device(kind, &device_id).await {
                session.dispatch(RoomAction::Problem(format!(
                    "That device could not be used: {}",
                    describe(&err)
                )));
            }
        });
    }

    async fn replace_device(&self, kind: TrackType, device_id: &str) -> Result<(), JsValue> {
        let new = media::open_track(kind, device_id).await?;
        let (stream, pc) = {
            let inner = self.inner.borrow();
            (inner.local_stream.clone(), inner.pc.clone())
        };
        let Some(stream) = stream else {
            new.stop();
            return Err("there is no local media to switch".into());
        };
        let old = tracks_of(Some(&stream), Some(kind)).into_iter().next();
        if let Some(old) = &old {
            new.set_enabled(old.enabled());
        }
        if let Some(pc) = pc {
            for transceiver in transceivers(&pc) {
                let sender = transceiver.sender();
                if sender
                    .track()
                    .is_some_and(|track| Some(&track) == old.as_ref())
                {
                    JsFuture::from(sender.replace_track(Some(&new))).await?;
                }
            }
        }
        media::put_track(&stream, old.as_ref(), &new);
        for local in &mut self.inner.borrow_mut().local_tracks {
            if Some(&local.track) == old.as_ref() {
                local.track = new.clone();
            }
        }
        self.watch_unplugging(&new, kind);
        profile::remember_device(kind, device_id);
        self.dispatch(RoomAction::DeviceInUse(kind, device_id.to_owned()));
        Ok(())
    }

    /// Lists the devices for the page, says which are in use, and follows both: a device that
    /// goes away (its track ends) is replaced by another of its kind, with a notice.
    async fn watch_devices(self) {
        for kind in [TrackType::Audio, TrackType::Camera] {
            let stream = self.inner.borrow().local_stream.clone();
            if let Some(track) = tracks_of(stream.as_ref(), Some(kind)).into_iter().next() {
                if let Some(device) = media::device_of(&track) {
                    self.dispatch(RoomAction::DeviceInUse(kind, device));
                }
                self.watch_unplugging(&track, kind);
            }
        }
        self.dispatch(RoomAction::Devices(media::devices().await));
        let session = self.clone();
        let on_change = Closure::<dyn FnMut(JsValue)>::new(move |_: JsValue| {
            let session = session.clone();
            spawn_local(async move {
                session.dispatch(RoomAction::Devices(media::devices().await));
            });
        });
        if let Some(devices) = web_sys::window().and_then(|w| w.navigator().media_devices().ok()) {
            devices.set_ondevicechange(Some(on_change.as_ref().unchecked_ref()));
        }
        self.inner.borrow_mut().device_handlers.push(on_change);
    }

    /// When `track` ends without us stopping it (its device was unplugged or taken), switches
    /// to another device of its kind and tells the person.
    fn watch_unplugging(&self, track: &MediaStreamTrack, kind: TrackType) {
        let session = self.clone();
        let gone = media::device_of(track);
        let label = track.label();
        let on_ended = Closure::<dyn FnMut(JsValue)>::new(move |_: JsValue| {
            let (session, gone, label) = (session.clone(), gone.clone(), label.clone());
            spawn_local(async move {
                let what = if kind == TrackType::Audio {
                    "microphone"
                } else {
                    "camera"
                };
                let other = media::devices()
                    .await
                    .into_iter()
                    .find(|device| device.kind == kind && Some(&device.id) != gone.as_ref());
                let notice = match other {
                    Some(device) => match session.replace_device(kind, &device.id).await {
                        Ok(()) => format!(
                            "Your {what} “{label}” went away: now using “{}”.",
                            device.label
                        ),
                        Err(err) => format!(
                            "Your {what} “{label}” went away, and “{}” could not be used: {}.",
                            device.label,
                            describe(&err)
                        ),
                    },
                    None => format!("Your {what} “{label}” went away, and there is no other."),
                };
                session.dispatch(RoomAction::Notice(notice));
            });
        });
        track.set_onended(Some(on_ended.as_ref().unchecked_ref()));
        self.inner.borrow_mut().device_handlers.push(on_ended);
    }

    pub fn leave(&self) {
        let mut inner = self.inner.borrow_mut();
        if std::mem::replace(&mut inner.left, true) {
            return;
        }
        if let Some(signaling) = &inner.signaling {
            // Queued before the socket closes: the writer sends what it has, then closes.
            signaling.push(&ClientEvent::Leave);
        }
        inner.drop_call();
        stop_tracks(inner.local_stream.as_ref());
    }
}

impl Inner {
    /// Forgets the call with the server: the socket, the connection, and everything named by
    /// this join's ids. The local camera and microphone stay, to be published again.
    fn drop_call(&mut self) {
        self.signaling = None;
        if let Some(pc) = self.pc.take() {
            pc.close();
        }
        self.handlers.clear();
        self.me = None;
        self.local_tracks.clear();
        self.mid_to_track_id.clear();
        self.early_candidates.clear();
        self.remote_screens.clear();
        self.wishes.clear();
        self.media_up = false;
        // A share is not taken over into the next join.
        if let Some((screen, _)) = self.screen.take() {
            stop_tracks(Some(&screen));
        }
        self.dispatch.emit(RoomAction::Sharing(None));
    }
}

/// Firefox, whose offers the server reads differently under the max-bundle policy.
fn is_firefox() -> bool {
    web_sys::window()
        .and_then(|window| window.navigator().user_agent().ok())
        .is_some_and(|agent| agent.contains("Firefox"))
}

/// The camera's three simulcast layers, as `membrane-webrtc-js` 0.3 sends them: rids `l`, `m`
/// and `h` at a quarter, half and full resolution, each with a bitrate cap.
fn simulcast_encodings() -> js_sys::Array {
    [
        ("l", 4.0, 150_000),
        ("m", 2.0, 500_000),
        ("h", 1.0, 1_500_000),
    ]
    .into_iter()
    .map(|(rid, scale, max_bitrate)| {
        let encoding = RtcRtpEncodingParameters::new();
        encoding.set_rid(rid);
        encoding.set_scale_resolution_down_by(scale);
        encoding.set_max_bitrate(max_bitrate);
        JsValue::from(encoding)
    })
    .collect()
}

/// A connection setting for tests and for checking a TURN setup by hand, from `localStorage`:
/// `videoroom.iceTransportPolicy = "relay"` uses relayed candidates only, as behind a network
/// that lets nothing else through; `videoroom.turnTransport = "udp" | "tcp" | "tls"` keeps only
/// the TURN servers reached that way.
fn ice_setting(key: &str) -> Option<String> {
    use gloo::storage::Storage;
    gloo::storage::LocalStorage::raw()
        .get_item(key)
        .ok()
        .flatten()
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
