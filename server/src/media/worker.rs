//! A media worker: one thread, one UDP socket (and an ICE-TCP listener on the same port
//! number), and every peer connection of the rooms placed on it. A plain event loop takes datagrams by the batch, routes each to its connection
//! ([`crate::media::demux`]), forwards the RTP that comes out of a publisher's connection into
//! each subscriber's connection through its [`DownTrack`], and sends what the turn produced in
//! one batch ([`crate::media::udp`]). A room's packets never leave this thread: no task hop,
//! lock or channel per packet. Commands from the rooms (negotiate, candidate, remove) arrive on
//! a channel between batches; what the worker has to say goes back as endpoint reports.
//!
//! A panic while handling one endpoint's command or datagram is caught: that endpoint is
//! dropped and reported failed, and the others on the worker carry on.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::{IpAddr, SocketAddr, TcpListener, UdpSocket};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use rtc::peer_connection::event::{RTCPeerConnectionEvent, RTCTrackEvent};
use rtc::peer_connection::message::RTCMessage;
use rtc::peer_connection::sdp::RTCSessionDescription;
use rtc::peer_connection::state::RTCPeerConnectionState;
use rtc::peer_connection::transport::RTCIceCandidateInit;
use rtc::rtcp::payload_feedbacks::picture_loss_indication::PictureLossIndication;
use rtc::rtp;
use rtc::rtp_transceiver::rtp_sender::{
    RTCRtpCodingParameters, RTCRtpEncodingParameters, RtpCodecKind,
};
use rtc::rtp_transceiver::{
    RTCRtpReceiverId, RTCRtpSenderId, RTCRtpTransceiverDirection, RTCRtpTransceiverId,
    RTCRtpTransceiverInit,
};
use rtc::sansio::Protocol;
use rtc::shared::{TaggedBytesMut, TransportContext, TransportProtocol};
use shared::TrackId;
use tokio::sync::mpsc;
use tokio::time::sleep_until;

use crate::media::allocation::{allocate, Demand};
use crate::media::codec::{Codec, MediaKind};
use crate::media::demux::{Demux, EndpointKey};
use crate::media::down_track::{header_for_leg, Arrival, DownTrack};
use crate::media::endpoint::{self, Endpoint, PublicationKey, Subscribed};
use crate::media::engine::{
    Command, EndpointEvent, EndpointReport, Negotiation, RoomKey, Subscription, WorkerMeters,
};
use crate::media::simulcast::{Incoming, Layer, Layers, LAYERS};
use crate::media::tcp::{TcpFrame, TcpFrames, TcpLinks};
use crate::media::udp::MediaSocket;
use crate::media::voice::{self, VoiceActivity};
use crate::media::{sdp, setup, vp8};
use crate::telemetry;

/// How often every connection's timers are looked at.
const TICK: Duration = Duration::from_millis(10);
/// A connection's timers are run at least this often, whatever it last said it needs (sending
/// RTP on it can arm timers it is not asked about).
const LONGEST_TIMER: Duration = Duration::from_millis(250);
/// Batches read before the turn's sends go out and commands are looked at again.
const BATCHES_PER_TURN: usize = 8;
/// A publisher may be asked for a keyframe this often at most; requests in between wait.
const KEYFRAME_REQUEST_INTERVAL: Duration = Duration::from_millis(500);
/// How often each subscriber's downlink estimate is shared out again among its tracks.
const ALLOCATION_INTERVAL: Duration = Duration::from_millis(500);
/// The bytes a forwarded packet carries besides its payload: the RTP header and the
/// transport-wide sequence number extension (what the downlink estimate counts).
const LEG_HEADER_BYTES: usize = 20;

pub(crate) struct WorkerSettings {
    /// The addresses the worker's candidates name (UDP, and TCP on the same port number), the
    /// preferred first.
    pub candidates: Vec<SocketAddr>,
    pub ice_timeout: Duration,
    /// ICE-TCP connections the worker holds at most.
    pub max_tcp_links: usize,
}

/// Runs a worker on this thread until the engine stops it or every room is gone.
pub(crate) fn run(
    socket: UdpSocket,
    listener: TcpListener,
    settings: WorkerSettings,
    commands: mpsc::UnboundedReceiver<Command>,
    meters: Arc<WorkerMeters>,
) {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            tracing::error!(%err, "a media worker cannot start");
            return;
        }
    };
    runtime.block_on(async move {
        let socket = match MediaSocket::new(socket) {
            Ok(socket) => socket,
            Err(err) => {
                tracing::error!(%err, "a media worker cannot use its socket");
                return;
            }
        };
        let (tcp, tcp_frames) = match TcpLinks::new(listener, settings.max_tcp_links) {
            Ok(tcp) => tcp,
            Err(err) => {
                tracing::error!(%err, "a media worker cannot use its TCP listener");
                return;
            }
        };
        let candidates = match endpoint::host_candidates(&settings.candidates) {
            Ok(candidates) => candidates,
            Err(reason) => {
                tracing::error!(%reason, "a media worker cannot start");
                return;
            }
        };
        let mut worker = Worker {
            socket,
            tcp,
            tcp_frames,
            media: Media::new(settings, candidates, meters.clone()),
            meters,
        };
        worker.run(commands).await;
    });
}

struct Worker {
    socket: MediaSocket,
    tcp: TcpLinks,
    tcp_frames: TcpFrames,
    media: Media,
    /// What the engine reads for `/metrics` and the cluster's load.
    meters: Arc<WorkerMeters>,
}

/// What woke a worker's loop.
enum Wake {
    Command(Option<Command>),
    Readable(std::io::Result<()>),
    Accepted(std::io::Result<(tokio::net::TcpStream, SocketAddr)>),
    TcpFrame(TcpFrame),
    Tick,
}

impl Worker {
    async fn run(&mut self, mut commands: mpsc::UnboundedReceiver<Command>) {
        let mut next_tick = tokio::time::Instant::now() + TICK;
        loop {
            // A worker without connections has no timers to run: it sleeps until told.
            let ticking = !self.media.endpoints.is_empty();
            let wake = tokio::select! {
                biased;
                command = commands.recv() => Wake::Command(command),
                readable = self.socket.readable() => Wake::Readable(readable),
                accepted = self.tcp.accept() => Wake::Accepted(accepted),
                Some(frame) = self.tcp_frames.recv() => Wake::TcpFrame(frame),
                () = sleep_until(next_tick), if ticking => Wake::Tick,
            };
            let woke = Instant::now();
            match wake {
                Wake::Command(Some(Command::Stop) | None) => break,
                Wake::Command(Some(command)) => self.media.on_command(command, woke),
                Wake::Readable(Err(err)) => {
                    tracing::error!(%err, "the media socket failed");
                    break;
                }
                Wake::Readable(Ok(())) => self.receive(),
                Wake::Accepted(Ok((stream, from))) => self.tcp.start(stream, from),
                Wake::Accepted(Err(err)) => tracing::debug!(%err, "ICE-TCP accept"),
                Wake::TcpFrame(frame) => self.on_tcp_frame(frame),
                Wake::Tick => {
                    next_tick = tokio::time::Instant::now() + TICK;
                    self.media.on_tick(woke);
                }
            }
            self.send();
            let worked = woke.elapsed().as_nanos() as u64;
            self.meters.busy.fetch_add(worked, Ordering::Relaxed);
        }
        self.media.close_all();
        self.send();
    }

    fn receive(&mut self) {
        let Worker { socket, media, .. } = self;
        for _ in 0..BATCHES_PER_TURN {
            let now = Instant::now();
            let mut handle = |from, to: Option<IpAddr>, datagram: &[u8]| {
                let local = media.local_address(to);
                media.on_datagram(from, local, datagram, TransportProtocol::UDP, now);
            };
            match socket.receive(&mut handle) {
                Ok(0) => break,
                Ok(_) => {}
                Err(err) => {
                    tracing::debug!(%err, "media receive");
                    break;
                }
            }
        }
        media.send_keyframe_requests(Instant::now());
    }

    /// A frame from an ICE-TCP connection, or its end. A connection whose frame belongs to no
    /// peer is closed.
    fn on_tcp_frame(&mut self, frame: TcpFrame) {
        let routed = match frame.frame {
            Some(datagram) => {
                let now = Instant::now();
                let local = self.media.local_address(Some(frame.local.ip()));
                self.media
                    .on_datagram(frame.from, local, &datagram, TransportProtocol::TCP, now)
            }
            None => false,
        };
        if !routed {
            self.tcp.close(frame.from);
        }
        self.media.send_keyframe_requests(Instant::now());
    }

    /// Collects what every touched connection has to send, and sends it.
    fn send(&mut self) {
        let Worker {
            socket, tcp, media, ..
        } = self;
        for address in media.forgotten.drain(..) {
            tcp.close(address);
        }
        let mut tcp_dropped = 0;
        let mut send = |datagram: TaggedBytesMut| match datagram.transport.transport_protocol {
            TransportProtocol::UDP => socket.queue(datagram.transport.peer_addr, datagram.message),
            _ => {
                if !tcp.send(datagram.transport.peer_addr, datagram.message) {
                    tcp_dropped += 1;
                }
            }
        };
        for datagram in media.farewells.drain(..) {
            send(datagram);
        }
        for key in media.dirty.drain(..) {
            let Some(endpoint) = media.endpoints.get_mut(&key) else {
                continue;
            };
            endpoint.dirty = false;
            while let Some(datagram) = endpoint.pc.poll_write() {
                send(datagram);
            }
        }
        media.counters.dropped.increment(tcp_dropped);
        if socket.queued() > 0 {
            let sent = socket.flush();
            media.counters.sent.increment(sent.datagrams);
            media.counters.dropped.increment(sent.dropped);
        }
    }
}

/// `/metrics` handles, made once so counting is an atomic add.
struct Counters {
    forwarded_bytes: metrics::Counter,
    keyframe_requests: metrics::Counter,
    received: metrics::Counter,
    unrouted: metrics::Counter,
    sent: metrics::Counter,
    dropped: metrics::Counter,
}

/// One published track on the worker: its subscribers' legs and its keyframe requests.
struct Publication {
    track_id: TrackId,
    room: RoomKey,
    publisher: EndpointKey,
    kind: MediaKind,
    /// The codec the publisher sends in, once its answer settled it.
    codec: Option<Codec>,
    /// The publisher's receiver, once packets came.
    receiver: Option<RTCRtpReceiverId>,
    /// The layers the packets come in (one, without simulcast), by SSRC.
    incoming: Incoming,
    legs: Vec<Leg>,
    /// The layers to ask the publisher for a keyframe of.
    keyframe_wanted: Layers,
    last_keyframe_request: Option<Instant>,
    /// An audio track's voice activity, once its publisher's answer gave the audio-level
    /// extension an id.
    voice: Option<Voice>,
}

/// Where an audio track's level is, and what it said so far.
struct Voice {
    /// The `ssrc-audio-level` extension's id on the publisher's m-line.
    extension: u8,
    activity: VoiceActivity,
}

/// A subscriber's leg of a publication.
struct Leg {
    subscriber: EndpointKey,
    sender: RTCRtpSenderId,
    down_track: DownTrack,
}

impl Publication {
    fn codec(&self) -> Codec {
        self.codec.unwrap_or_else(|| Codec::usual(self.kind))
    }

    /// The layer `subscriber`'s leg wants a keyframe of: the one it waits for to start or
    /// switch, or else (the subscriber asked for one) the one it forwards.
    fn keyframe_layer(&self, subscriber: EndpointKey, now: Instant) -> Option<Layer> {
        let leg = self.legs.iter().find(|leg| leg.subscriber == subscriber)?;
        leg.down_track
            .keyframe_wanted(self.incoming.arriving(now))
            .or(leg.down_track.current())
    }
}

/// Everything of a worker but its socket.
struct Media {
    settings: WorkerSettings,
    /// Shared with the engine: what it reads of this worker's work.
    meters: Arc<WorkerMeters>,
    /// The worker's UDP and TCP candidates.
    candidates: Vec<RTCIceCandidateInit>,
    endpoints: HashMap<EndpointKey, Endpoint>,
    publications: HashMap<PublicationKey, Publication>,
    /// Each room's publications by track id.
    rooms: HashMap<RoomKey, HashMap<TrackId, PublicationKey>>,
    next_publication: PublicationKey,
    demux: Demux,
    /// Endpoints with datagrams to collect.
    dirty: Vec<EndpointKey>,
    /// Publications whose publisher is to be asked for a keyframe.
    keyframes_wanted: Vec<PublicationKey>,
    /// Audio publications whose publisher is speaking, to end it when its packets stop.
    speaking: Vec<PublicationKey>,
    /// The last datagrams of connections closed this turn.
    farewells: Vec<TaggedBytesMut>,
    /// Addresses of endpoints removed this turn, whose ICE-TCP connections are to close.
    forgotten: Vec<SocketAddr>,
    /// When the downlinks are next shared out.
    next_allocation: Instant,
    counters: Counters,
}

impl Media {
    fn new(
        settings: WorkerSettings,
        candidates: Vec<RTCIceCandidateInit>,
        meters: Arc<WorkerMeters>,
    ) -> Media {
        Media {
            meters,
            settings,
            candidates,
            endpoints: HashMap::new(),
            publications: HashMap::new(),
            rooms: HashMap::new(),
            next_publication: 0,
            demux: Demux::default(),
            dirty: Vec::new(),
            keyframes_wanted: Vec::new(),
            speaking: Vec::new(),
            farewells: Vec::new(),
            forgotten: Vec::new(),
            next_allocation: Instant::now(),
            counters: Counters {
                forwarded_bytes: metrics::counter!(telemetry::FORWARDED_BYTES),
                keyframe_requests: metrics::counter!(telemetry::KEYFRAME_REQUESTS),
                received: metrics::counter!(telemetry::MEDIA_DATAGRAMS_RECEIVED),
                unrouted: metrics::counter!(telemetry::MEDIA_DATAGRAMS_UNROUTED),
                sent: metrics::counter!(telemetry::MEDIA_DATAGRAMS_SENT),
                dropped: metrics::counter!(telemetry::MEDIA_DATAGRAMS_DROPPED),
            },
        }
    }

    fn mark_dirty(dirty: &mut Vec<EndpointKey>, key: EndpointKey, endpoint: &mut Endpoint) {
        if !endpoint.dirty {
            endpoint.dirty = true;
            dirty.push(key);
        }
    }

    /// Runs `work` for endpoint `key`; a panic in it drops the endpoint and reports it failed.
    fn guarded(&mut self, key: EndpointKey, work: impl FnOnce(&mut Media)) {
        if catch_unwind(AssertUnwindSafe(|| work(self))).is_err() {
            tracing::error!(endpoint = key, "a media endpoint panicked; dropping it");
            if let Some(endpoint) = self.endpoints.get(&key) {
                endpoint.report(EndpointEvent::Failed("internal server error".to_owned()));
            }
            self.remove_endpoint(key);
        }
    }

    fn on_command(&mut self, command: Command, now: Instant) {
        let key = match &command {
            Command::AddEndpoint { key, .. }
            | Command::Negotiate { key, .. }
            | Command::RemoteCandidate { key, .. }
            | Command::RemoveEndpoint { key }
            | Command::SetWish { key, .. }
            | Command::Panic { key } => *key,
            Command::Stop => return,
        };
        if let Some(endpoint) = self.endpoints.get(&key) {
            if !matches!(
                command,
                Command::AddEndpoint { .. } | Command::RemoveEndpoint { .. }
            ) {
                endpoint.took_command();
            }
        }
        self.guarded(key, |media| match command {
            Command::AddEndpoint {
                key,
                room,
                peer_id,
                reports,
                pending,
            } => {
                let made = Endpoint::new(
                    room,
                    peer_id.clone(),
                    reports.clone(),
                    pending,
                    &media.candidates,
                    now,
                );
                match made {
                    Ok(endpoint) => {
                        media.rooms.entry(room).or_default();
                        media.endpoints.insert(key, endpoint);
                    }
                    Err(reason) => {
                        tracing::error!(%reason, "cannot create a peer connection");
                        let event = EndpointEvent::Failed(reason);
                        let _ = reports.send(EndpointReport { peer_id, event });
                    }
                }
            }
            Command::Negotiate { key, negotiation } => media.negotiate(key, negotiation, now),
            Command::RemoteCandidate { key, candidate } => {
                if let Some(endpoint) = media.endpoints.get_mut(&key) {
                    endpoint.add_remote_candidate(candidate);
                }
            }
            Command::RemoveEndpoint { key } => media.remove_endpoint(key),
            Command::SetWish {
                key,
                track_id,
                layer,
            } => media.set_wish(key, track_id, layer),
            Command::Panic { key } => panic!("test hook: a panic in media endpoint {key}"),
            Command::Stop => {}
        });
    }

    fn negotiate(&mut self, key: EndpointKey, negotiation: Negotiation, now: Instant) {
        if let Err(reason) = self.try_negotiate(key, negotiation, now) {
            if let Some(endpoint) = self.endpoints.get(&key) {
                endpoint.report(EndpointEvent::Failed(reason));
            }
        }
        self.after_input(key, now);
    }

    fn try_negotiate(
        &mut self,
        key: EndpointKey,
        negotiation: Negotiation,
        now: Instant,
    ) -> Result<(), String> {
        let Some(room) = self.endpoints.get(&key).map(|endpoint| endpoint.room) else {
            return Ok(());
        };
        self.set_published(key, room, &negotiation.publish);

        let wanted: BTreeSet<&TrackId> =
            negotiation.subscribe.iter().map(|s| &s.track_id).collect();
        let unwanted: Vec<TrackId> = self.endpoints[&key]
            .subscriptions
            .keys()
            .filter(|id| !wanted.contains(id))
            .cloned()
            .collect();
        for track_id in unwanted {
            self.unsubscribe(key, &track_id);
        }
        // Each new track gets a sendonly transceiver before the offer is applied: applying it
        // gives each new recvonly m-line the next such transceiver of its kind.
        for subscription in negotiation.subscribe {
            if !self.endpoints[&key]
                .subscriptions
                .contains_key(&subscription.track_id)
            {
                self.subscribe(key, room, subscription)?;
            }
        }

        let endpoint = self.endpoints.get_mut(&key).expect("checked above");
        let offer = RTCSessionDescription::offer(negotiation.offer)
            .map_err(|err| format!("the offer is not valid SDP: {err}"))?;
        endpoint
            .pc
            .set_remote_description(now, offer)
            .map_err(|err| format!("cannot apply the offer: {err}"))?;
        for candidate in std::mem::take(&mut endpoint.early_candidates) {
            endpoint.add_remote_candidate(candidate);
        }
        silence_unused_slots(endpoint);
        let answer = endpoint
            .pc
            .create_answer(None)
            .map_err(|err| format!("cannot answer the offer: {err}"))?;
        endpoint
            .pc
            .set_local_description(now, answer)
            .map_err(|err| format!("cannot apply the answer: {err}"))?;
        let sdp = endpoint
            .pc
            .local_description()
            .map(|description| description.sdp)
            .ok_or("the answer vanished")?;
        if let Some(ufrag) = endpoint::ice_ufrag(&sdp) {
            self.demux.add_ufrag(key, ufrag);
        }

        self.learn_published_codecs(key, &sdp);
        let sending = self.start_sending(key, now);
        // New legs start within the downlink, not at `h` until the next allocation.
        self.allocate_downlink(key, now);
        let endpoint = self.endpoints.get_mut(&key).expect("checked above");
        endpoint.report(EndpointEvent::Answer { sdp, sending });
        if !endpoint.connected {
            endpoint.connect_due = Some(now + self.settings.ice_timeout);
        }
        for candidate in &self.candidates {
            endpoint.report(EndpointEvent::Candidate(candidate.candidate.clone()));
        }
        Ok(())
    }

    /// Makes the publications of `key` those of `publish` (mid, track, kind): new ones are
    /// opened, ones it no longer sends are closed with their legs.
    fn set_published(
        &mut self,
        key: EndpointKey,
        room: RoomKey,
        publish: &[(String, TrackId, MediaKind)],
    ) {
        let tracks = self.rooms.entry(room).or_default();
        let mut published = BTreeMap::new();
        for (mid, track_id, kind) in publish {
            let publication = match tracks.get(track_id) {
                Some(&existing) if self.publications[&existing].publisher == key => existing,
                _ => {
                    let new = self.next_publication;
                    self.next_publication += 1;
                    self.publications.insert(
                        new,
                        Publication {
                            track_id: track_id.clone(),
                            room,
                            publisher: key,
                            kind: *kind,
                            codec: None,
                            receiver: None,
                            incoming: Incoming::default(),
                            legs: Vec::new(),
                            keyframe_wanted: Layers::default(),
                            last_keyframe_request: None,
                            voice: None,
                        },
                    );
                    tracks.insert(track_id.clone(), new);
                    new
                }
            };
            published.insert(mid.clone(), publication);
        }
        let endpoint = self.endpoints.get_mut(&key).expect("the caller checked it");
        let old = std::mem::replace(&mut endpoint.published, published);
        let kept: BTreeSet<PublicationKey> = endpoint.published.values().copied().collect();
        endpoint
            .incoming
            .retain(|_, publication| kept.contains(publication));
        for publication in old.into_values().filter(|p| !kept.contains(p)) {
            self.close_publication(publication);
        }
    }

    fn close_publication(&mut self, key: PublicationKey) {
        if let Some(publication) = self.publications.remove(&key) {
            if let Some(tracks) = self.rooms.get_mut(&publication.room) {
                if tracks.get(&publication.track_id) == Some(&key) {
                    tracks.remove(&publication.track_id);
                }
            }
        }
    }

    fn subscribe(
        &mut self,
        key: EndpointKey,
        room: RoomKey,
        subscription: Subscription,
    ) -> Result<(), String> {
        let Some(&publication) = self
            .rooms
            .get(&room)
            .and_then(|tracks| tracks.get(&subscription.track_id))
        else {
            // Its publisher's negotiation failed or it left meanwhile: the room tells the peer.
            return Ok(());
        };
        let codec = self.publications[&publication].codec();
        let ssrc = rand::random::<u32>();
        let kind = match subscription.kind {
            MediaKind::Audio => RtpCodecKind::Audio,
            MediaKind::Video => RtpCodecKind::Video,
        };
        // In the publisher's codec, so the leg negotiates it and the sender's NACK responder
        // and reports are bound.
        let encoding = RTCRtpEncodingParameters {
            rtp_coding_parameters: RTCRtpCodingParameters {
                ssrc: Some(ssrc),
                ..Default::default()
            },
            active: true,
            codec: setup::codec(codec.mime()).ok_or("a forwarded codec is not registered")?,
            ..Default::default()
        };
        let track = rtc::media_stream::MediaStreamTrack::new(
            subscription.stream_id,
            subscription.track_id.to_string(),
            subscription.track_id.to_string(),
            kind,
            vec![encoding],
        );
        let init = RTCRtpTransceiverInit {
            direction: RTCRtpTransceiverDirection::Sendonly,
            streams: vec![],
            send_encodings: vec![],
        };
        let endpoint = self.endpoints.get_mut(&key).expect("the caller checked it");
        let transceiver = endpoint
            .pc
            .add_transceiver_from_track(track, Some(init))
            .map_err(|err| format!("cannot add a track to send: {err}"))?;
        endpoint.subscriptions.insert(
            subscription.track_id,
            Subscribed {
                publication,
                kind: subscription.kind,
                transceiver,
                sender: RTCRtpSenderId::from(transceiver),
                ssrc,
                mid: None,
            },
        );
        Ok(())
    }

    /// Notes the layer the client of `key` wishes for `track_id`, and gives it to the leg if
    /// there is one (the leg moves at the layer's next keyframe).
    fn set_wish(&mut self, key: EndpointKey, track_id: TrackId, layer: Layer) {
        let Some(endpoint) = self.endpoints.get_mut(&key) else {
            return;
        };
        let publication = endpoint
            .subscriptions
            .get(&track_id)
            .map(|subscribed| subscribed.publication);
        endpoint.wishes.insert(track_id, layer);
        let leg = publication
            .and_then(|publication| self.publications.get_mut(&publication))
            .and_then(|publication| {
                publication
                    .legs
                    .iter_mut()
                    .find(|leg| leg.subscriber == key)
            });
        if let Some(leg) = leg {
            leg.down_track.set_wish(layer);
        }
    }

    fn unsubscribe(&mut self, key: EndpointKey, track_id: &TrackId) {
        let Some(endpoint) = self.endpoints.get_mut(&key) else {
            return;
        };
        let Some(subscribed) = endpoint.subscriptions.remove(track_id) else {
            return;
        };
        if let Some(mut transceiver) = endpoint.pc.rtp_transceiver(subscribed.transceiver) {
            transceiver.set_direction(RTCRtpTransceiverDirection::Inactive);
        }
        if let Some(mid) = subscribed.mid {
            endpoint.stopped.insert(mid, track_id.clone());
        }
        if let Some(publication) = self.publications.get_mut(&subscribed.publication) {
            publication.legs.retain(|leg| leg.subscriber != key);
        }
    }

    /// Notes each published track's codec, the first our answer lists on its m-line (the
    /// subscribers that negotiate from now on ask for that codec), and where an audio track's
    /// packets carry their level.
    fn learn_published_codecs(&mut self, key: EndpointKey, answer: &str) {
        let endpoint = &self.endpoints[&key];
        for section in sdp::media_sections(answer) {
            let publication = section
                .mid
                .as_ref()
                .and_then(|mid| endpoint.published.get(mid));
            let codec = section
                .codecs
                .first()
                .and_then(|name| Codec::from_sdp_name(name));
            let Some(publication) = publication.and_then(|p| self.publications.get_mut(p)) else {
                continue;
            };
            if let Some(codec) = codec {
                publication.codec.get_or_insert(codec);
            }
            if publication.kind == MediaKind::Audio {
                match section.extension_id(voice::AUDIO_LEVEL_URI) {
                    Some(extension) => {
                        let voice = publication.voice.get_or_insert_with(|| Voice {
                            extension,
                            activity: VoiceActivity::default(),
                        });
                        voice.extension = extension;
                    }
                    None => publication.voice = None,
                }
            }
        }
    }

    /// After an answer: learns each subscription's mid and payload types and starts forwarding
    /// to new ones. Returns what the answer sends, by mid.
    fn start_sending(&mut self, key: EndpointKey, now: Instant) -> BTreeMap<String, TrackId> {
        let mut unplaced = Vec::new();
        let endpoint = self.endpoints.get_mut(&key).expect("the caller checked it");
        let connected = endpoint.connected;
        let wishes = &endpoint.wishes;
        for (track_id, subscribed) in &mut endpoint.subscriptions {
            let mid = endpoint
                .pc
                .rtp_transceiver(subscribed.transceiver)
                .and_then(|transceiver| transceiver.mid().clone());
            let Some(mid) = mid else {
                // The offer had no m-line left for it (a client that offered fewer slots than
                // `tracksTypes` asked for): it is dropped, and the answer does not name it.
                unplaced.push(track_id.clone());
                continue;
            };
            let payload_types: Vec<(Codec, u8)> = endpoint
                .pc
                .rtp_sender(subscribed.sender)
                .map(|mut sender| {
                    sender
                        .get_parameters()
                        .rtp_parameters
                        .codecs
                        .iter()
                        .filter_map(|codec| {
                            Some((
                                Codec::from_mime(&codec.rtp_codec.mime_type)?,
                                codec.payload_type,
                            ))
                        })
                        .collect()
                })
                .unwrap_or_default();
            let Some(publication) = self.publications.get_mut(&subscribed.publication) else {
                unplaced.push(track_id.clone());
                continue;
            };
            match publication
                .legs
                .iter_mut()
                .find(|leg| leg.subscriber == key)
            {
                Some(leg) => leg.down_track.set_payload_types(payload_types),
                None => {
                    let mut down_track = DownTrack::new(subscribed.ssrc, subscribed.kind);
                    down_track.set_payload_types(payload_types);
                    if let Some(&wish) = wishes.get(track_id) {
                        down_track.set_wish(wish);
                    }
                    publication.legs.push(Leg {
                        subscriber: key,
                        sender: subscribed.sender,
                        down_track,
                    });
                    // It starts at the next keyframe: ask for one now if the subscriber's
                    // connection is up, else when it comes up (a keyframe sent before would be
                    // lost, and the request throttle would delay the one that counts).
                    if connected {
                        want_leg_keyframe(
                            &mut self.keyframes_wanted,
                            subscribed.publication,
                            publication,
                            key,
                            now,
                        );
                    }
                }
            }
            subscribed.mid = Some(mid);
        }
        for track_id in unplaced {
            tracing::warn!(endpoint = key, track = %track_id, "no m-line to send the track on");
            self.unsubscribe(key, &track_id);
        }
        let endpoint = &self.endpoints[&key];
        let mut sending = endpoint.stopped.clone();
        for (track_id, subscribed) in &endpoint.subscriptions {
            if let Some(mid) = &subscribed.mid {
                sending.insert(mid.clone(), track_id.clone());
            }
        }
        sending
    }

    fn remove_endpoint(&mut self, key: EndpointKey) {
        let Some(mut endpoint) = self.endpoints.remove(&key) else {
            return;
        };
        self.forgotten.extend(self.demux.remove(key));
        for publication in endpoint.published.values() {
            self.close_publication(*publication);
        }
        for subscribed in endpoint.subscriptions.values() {
            if let Some(publication) = self.publications.get_mut(&subscribed.publication) {
                publication.legs.retain(|leg| leg.subscriber != key);
            }
        }
        // Tell the client (DTLS close_notify) now rather than letting its consent checks lapse.
        let _ = endpoint.pc.close();
        let room = endpoint.room;
        if !self.endpoints.values().any(|other| other.room == room) {
            self.rooms.remove(&room);
        }
        while let Some(datagram) = endpoint.pc.poll_write() {
            self.farewells.push(datagram);
        }
    }

    /// Hands a datagram to its connection; false when it belongs to none.
    /// The candidate a datagram sent to `to` came in on: the one of that address, else the
    /// preferred one (an announced address is not where datagrams arrive).
    fn local_address(&self, to: Option<IpAddr>) -> SocketAddr {
        let candidates = &self.settings.candidates;
        to.and_then(|to| candidates.iter().find(|candidate| candidate.ip() == to))
            .unwrap_or(&candidates[0])
            .to_owned()
    }

    fn on_datagram(
        &mut self,
        from: SocketAddr,
        local: SocketAddr,
        datagram: &[u8],
        protocol: TransportProtocol,
        now: Instant,
    ) -> bool {
        self.counters.received.increment(1);
        let Some(key) = self.demux.route(from, datagram) else {
            self.counters.unrouted.increment(1);
            return false;
        };
        self.guarded(key, |media| {
            let Some(endpoint) = media.endpoints.get_mut(&key) else {
                return;
            };
            let message = TaggedBytesMut {
                now,
                transport: TransportContext {
                    local_addr: local,
                    peer_addr: from,
                    ecn: None,
                    transport_protocol: protocol,
                },
                message: BytesMut::from(datagram),
            };
            if let Err(err) = endpoint.pc.handle_read(message) {
                tracing::trace!(endpoint = key, %err, "datagram refused");
            }
            media.after_input(key, now);
        });
        true
    }

    /// Takes in everything the connection of `key` has for the application after an input:
    /// its events first (a track's first packet comes with the event that says which track
    /// and simulcast layer it is), then its packets.
    fn after_input(&mut self, key: EndpointKey, now: Instant) {
        self.take_events(key, now);
        loop {
            let Some(endpoint) = self.endpoints.get_mut(&key) else {
                return;
            };
            let Some(message) = endpoint.pc.poll_read() else {
                break;
            };
            match message.message {
                RTCMessage::RtpPacket(track, packet) => {
                    if let Some(&publication) = endpoint.incoming.get(&track) {
                        self.forward(publication, packet, now);
                    }
                }
                RTCMessage::RtcpPacket(track, packets) => {
                    // Only keyframe requests reach us, for a track this endpoint sends.
                    let publication = TrackId::parse(&track)
                        .ok()
                        .and_then(|id| endpoint.subscriptions.get(&id))
                        .map(|subscribed| subscribed.publication);
                    let asks = packets
                        .iter()
                        .any(|packet| setup::is_keyframe_request(packet.as_ref()));
                    if let (Some(publication_key), true) = (publication, asks) {
                        if let Some(publication) = self.publications.get_mut(&publication_key) {
                            want_leg_keyframe(
                                &mut self.keyframes_wanted,
                                publication_key,
                                publication,
                                key,
                                now,
                            );
                        }
                    }
                }
                _ => {}
            }
        }
        self.take_events(key, now);
        if let Some(endpoint) = self.endpoints.get_mut(&key) {
            endpoint.timer = endpoint.pc.poll_timeout();
            Self::mark_dirty(&mut self.dirty, key, endpoint);
        }
    }

    fn take_events(&mut self, key: EndpointKey, now: Instant) {
        while let Some(event) = self
            .endpoints
            .get_mut(&key)
            .and_then(|endpoint| endpoint.pc.poll_event())
        {
            self.on_connection_event(key, event, now);
        }
    }

    fn on_connection_event(
        &mut self,
        key: EndpointKey,
        event: RTCPeerConnectionEvent,
        now: Instant,
    ) {
        let Some(endpoint) = self.endpoints.get_mut(&key) else {
            return;
        };
        match event {
            RTCPeerConnectionEvent::OnTrack(RTCTrackEvent::OnOpen(init)) => {
                let transceiver = RTCRtpTransceiverId::from(init.receiver_id);
                let mid = endpoint
                    .pc
                    .rtp_transceiver(transceiver)
                    .and_then(|transceiver| transceiver.mid().clone());
                let Some(&publication) = mid.as_ref().and_then(|mid| endpoint.published.get(mid))
                else {
                    tracing::warn!(peer = %endpoint.peer_id, ?mid, "media on an m-line that publishes no track");
                    return;
                };
                endpoint.incoming.insert(init.track_id, publication);
                if let Some(publication) = self.publications.get_mut(&publication) {
                    // One event per simulcast layer, each with its rid and SSRC.
                    publication.receiver = Some(init.receiver_id);
                    publication
                        .incoming
                        .bind(init.rid.as_deref(), init.ssrc, now);
                    tracing::debug!(peer = %endpoint.peer_id, track = %publication.track_id, rid = ?init.rid, "forwarding");
                }
            }
            RTCPeerConnectionEvent::OnConnectionStateChangeEvent(state) => match state {
                RTCPeerConnectionState::Connected => {
                    endpoint.connected = true;
                    endpoint.connect_due = None;
                    // Keyframes sent before the media path was up were lost: ask again.
                    let publications: Vec<PublicationKey> = endpoint
                        .subscriptions
                        .values()
                        .map(|subscribed| subscribed.publication)
                        .collect();
                    for publication_key in publications {
                        if let Some(publication) = self.publications.get_mut(&publication_key) {
                            want_leg_keyframe(
                                &mut self.keyframes_wanted,
                                publication_key,
                                publication,
                                key,
                                now,
                            );
                        }
                    }
                }
                RTCPeerConnectionState::Failed => {
                    endpoint.connected = false;
                    endpoint.report(EndpointEvent::Failed(
                        "the media connection failed (ICE or DTLS)".to_owned(),
                    ));
                }
                RTCPeerConnectionState::Disconnected => endpoint.connected = false,
                _ => {}
            },
            _ => {}
        }
    }

    /// Sends one packet of a publication to every subscriber's connection.
    fn forward(&mut self, key: PublicationKey, packet: rtp::Packet, now: Instant) {
        let Some(publication) = self.publications.get_mut(&key) else {
            return;
        };
        let Some(codec) = publication.codec else {
            return;
        };
        if let Some(voice) = &mut publication.voice {
            let level = packet.header.get_extension(voice.extension);
            let change = level
                .as_deref()
                .and_then(voice::audio_level)
                .and_then(|level| voice.activity.on_level(level, now));
            if let Some(speaking) = change {
                if speaking {
                    self.speaking.push(key);
                } else {
                    self.speaking.retain(|&other| other != key);
                }
                if let Some(publisher) = self.endpoints.get(&publication.publisher) {
                    publisher.report(EndpointEvent::VoiceActivity {
                        track_id: publication.track_id.clone(),
                        speaking,
                    });
                }
            }
        }
        if publication.legs.is_empty() {
            return;
        }
        let size = packet.payload.len() + LEG_HEADER_BYTES;
        let Some(layer) = publication.incoming.layer_of(packet.header.ssrc, size, now) else {
            return; // a layer the publisher did not name
        };
        let arriving = publication.incoming.arriving(now);
        // A VP8 descriptor is read once: for the keyframe, and for each leg's renumbering.
        let vp8 = (codec == Codec::Vp8)
            .then(|| vp8::Descriptor::parse(&packet.payload))
            .flatten();
        let keyframe = publication.kind == MediaKind::Video
            && match &vp8 {
                Some(descriptor) => descriptor.starts_keyframe(&packet.payload),
                None => codec.starts_keyframe(&packet.payload),
            };
        let arrival = Arrival {
            codec,
            header: &packet.header,
            vp8: vp8.as_ref(),
            layer,
            keyframe,
        };
        let mut sent = 0;
        let mut waiting = Layers::default();
        for leg in &mut publication.legs {
            let Some(subscriber) = self.endpoints.get_mut(&leg.subscriber) else {
                continue;
            };
            // Nothing reaches a subscriber before its connection is up: its leg starts at the
            // first keyframe after that (asked for when it comes up), not at one it never got.
            if !subscriber.connected {
                continue;
            }
            let admitted = leg.down_track.admit(&arrival, arriving, now);
            if let Some(goal) = leg.down_track.keyframe_wanted(arriving) {
                waiting = waiting.with(goal);
            }
            if let Some(switched) = leg.down_track.take_switch() {
                if publication.incoming.is_simulcast() {
                    subscriber.report(EndpointEvent::LayerSwitched {
                        track_id: publication.track_id.clone(),
                        layer: switched,
                    });
                }
            }
            let Some(numbers) = admitted else {
                continue;
            };
            let payload = if numbers.renumbering.is_none() {
                // Shared, not copied.
                packet.payload.clone()
            } else {
                numbers.renumbering.apply(&packet.payload)
            };
            let copy = rtp::Packet {
                header: header_for_leg(&packet.header, numbers),
                payload,
            };
            if let Some(mut sender) = subscriber.pc.rtp_sender(leg.sender) {
                if sender.write_rtp(now, copy).is_ok() {
                    sent += 1;
                }
            }
            Self::mark_dirty(&mut self.dirty, leg.subscriber, subscriber);
        }
        // Subscribers still wait for keyframes: keep asking (at most once an interval), in
        // case the answer to the first request was lost.
        for layer in waiting.iter() {
            want_keyframe(&mut self.keyframes_wanted, key, publication, layer);
        }
        // One count for /metrics and the cluster's load alike (the engine reads it).
        self.meters
            .forwarded_packets
            .fetch_add(sent, Ordering::Relaxed);
        self.counters
            .forwarded_bytes
            .increment(sent * packet.payload.len() as u64);
    }

    /// Sends the keyframe requests that are due: a PLI for each wanted layer, at most once per
    /// publication and interval.
    fn send_keyframe_requests(&mut self, now: Instant) {
        let mut index = 0;
        while index < self.keyframes_wanted.len() {
            let key = self.keyframes_wanted[index];
            let Some(publication) = self.publications.get_mut(&key) else {
                self.keyframes_wanted.swap_remove(index);
                continue;
            };
            let due = publication
                .last_keyframe_request
                .is_none_or(|last| now >= last + KEYFRAME_REQUEST_INTERVAL);
            let Some(receiver) = publication.receiver.filter(|_| due) else {
                // Not due yet, or no packet came yet to ask about: later.
                index += 1;
                continue;
            };
            self.keyframes_wanted.swap_remove(index);
            let layers = std::mem::take(&mut publication.keyframe_wanted);
            publication.last_keyframe_request = Some(now);
            let Some(publisher) = self.endpoints.get_mut(&publication.publisher) else {
                continue;
            };
            let plis: Vec<Box<dyn rtc::rtcp::Packet>> = layers
                .iter()
                .filter_map(|layer| publication.incoming.ssrc(layer))
                .map(|ssrc| {
                    Box::new(PictureLossIndication {
                        sender_ssrc: 0,
                        media_ssrc: ssrc,
                    }) as Box<dyn rtc::rtcp::Packet>
                })
                .collect();
            let count = plis.len() as u64;
            if let Some(mut receiver) = publisher.pc.rtp_receiver(receiver) {
                match receiver.write_rtcp(now, plis) {
                    Ok(()) => self.counters.keyframe_requests.increment(count),
                    Err(err) => tracing::debug!(%err, "keyframe request not sent"),
                }
            }
            Self::mark_dirty(&mut self.dirty, publication.publisher, publisher);
        }
    }

    /// Runs the timers that are due, and the deadlines to connect.
    fn on_tick(&mut self, now: Instant) {
        let due: Vec<EndpointKey> = self
            .endpoints
            .iter()
            .filter(|(_, endpoint)| {
                endpoint.timer.is_none_or(|at| at <= now)
                    || endpoint.connect_due.is_some_and(|at| at <= now)
            })
            .map(|(key, _)| *key)
            .collect();
        for key in due {
            self.guarded(key, |media| {
                let Some(endpoint) = media.endpoints.get_mut(&key) else {
                    return;
                };
                if endpoint.connect_due.is_some_and(|at| at <= now) {
                    endpoint.connect_due = None;
                    let reason = format!(
                        "the media connection did not come up within {:?} of the answer (--ice-timeout)",
                        media.settings.ice_timeout
                    );
                    endpoint.report(EndpointEvent::Failed(reason));
                }
                if let Err(err) = endpoint.pc.handle_timeout(now) {
                    tracing::debug!(endpoint = key, %err, "connection timers");
                }
                media.after_input(key, now);
                if let Some(endpoint) = media.endpoints.get_mut(&key) {
                    let longest = now + LONGEST_TIMER;
                    endpoint.timer = Some(endpoint.timer.map_or(longest, |at| at.min(longest)).max(now + Duration::from_millis(1)));
                }
            });
        }
        if now >= self.next_allocation {
            self.next_allocation = now + ALLOCATION_INTERVAL;
            self.allocate_downlinks(now);
        }
        self.send_keyframe_requests(now);
        self.end_stopped_speech(now);
    }

    /// Caps every subscriber's legs to what its downlink estimate carries.
    fn allocate_downlinks(&mut self, now: Instant) {
        let keys: Vec<EndpointKey> = self.endpoints.keys().copied().collect();
        for key in keys {
            self.allocate_downlink(key, now);
        }
    }

    /// Caps the legs of `key` to what its downlink estimate carries (see
    /// [`crate::media::allocation`]); a leg whose cap moved waits for the new layer's keyframe.
    fn allocate_downlink(&mut self, key: EndpointKey, now: Instant) {
        let Some(endpoint) = self.endpoints.get_mut(&key) else {
            return;
        };
        let Some(budget) = endpoint.estimate.bits_per_second() else {
            return; // no feedback yet (or none at all): the wishes alone decide
        };
        let mut legs = Vec::new();
        let mut demands = Vec::new();
        for subscribed in endpoint.subscriptions.values() {
            let Some(publication) = self.publications.get(&subscribed.publication) else {
                continue;
            };
            let Some(leg) = publication.legs.iter().find(|leg| leg.subscriber == key) else {
                continue;
            };
            let down_track = &leg.down_track;
            // A leg that forwarded nothing yet has no cap to step down from.
            let in_force = down_track.current().map(|_| down_track.cap());
            legs.push((subscribed.publication, in_force));
            demands.push(Demand {
                kind: publication.kind,
                wish: down_track.wish(),
                arriving: publication.incoming.arriving(now),
                rates: LAYERS.map(|layer| publication.incoming.rate(layer)),
                current: down_track.current().unwrap_or(down_track.cap()),
            });
        }
        if legs.is_empty() {
            return;
        }
        let previous: Vec<Option<Layer>> = legs.iter().map(|(_, cap)| *cap).collect();
        let wishes: Vec<Layer> = demands.iter().map(|demand| demand.wish).collect();
        let caps = endpoint
            .downlink
            .settle(now, &previous, &wishes, allocate(budget, &demands));
        for ((publication_key, _), cap) in legs.into_iter().zip(caps) {
            let Some(publication) = self.publications.get_mut(&publication_key) else {
                continue;
            };
            let arriving = publication.incoming.arriving(now);
            let Some(leg) = publication
                .legs
                .iter_mut()
                .find(|leg| leg.subscriber == key)
            else {
                continue;
            };
            if leg.down_track.cap() == cap {
                continue;
            }
            tracing::debug!(endpoint = key, budget, old = ?leg.down_track.cap(), ?cap, "downlink cap");
            leg.down_track.set_cap(cap);
            if let Some(layer) = leg.down_track.keyframe_wanted(arriving) {
                want_keyframe(
                    &mut self.keyframes_wanted,
                    publication_key,
                    publication,
                    layer,
                );
            }
        }
    }

    /// Ends the speech of audio tracks whose packets stopped coming (a muted or gone publisher).
    fn end_stopped_speech(&mut self, now: Instant) {
        let publications = &mut self.publications;
        let endpoints = &self.endpoints;
        self.speaking.retain(|key| {
            let Some(publication) = publications.get_mut(key) else {
                return false;
            };
            let Some(voice) = &mut publication.voice else {
                return false;
            };
            if voice.activity.check_silence(now).is_none() {
                return true;
            }
            if let Some(publisher) = endpoints.get(&publication.publisher) {
                publisher.report(EndpointEvent::VoiceActivity {
                    track_id: publication.track_id.clone(),
                    speaking: false,
                });
            }
            false
        });
    }

    fn close_all(&mut self) {
        let keys: Vec<EndpointKey> = self.endpoints.keys().copied().collect();
        for key in keys {
            self.remove_endpoint(key);
        }
    }
}

/// Marks `publication` as wanting the keyframe `subscriber`'s leg needs (see
/// [`Publication::keyframe_layer`]).
fn want_leg_keyframe(
    wanted: &mut Vec<PublicationKey>,
    key: PublicationKey,
    publication: &mut Publication,
    subscriber: EndpointKey,
    now: Instant,
) {
    if let Some(layer) = publication.keyframe_layer(subscriber, now) {
        want_keyframe(wanted, key, publication, layer);
    }
}

/// Marks `publication` as wanting a keyframe of `layer` from its publisher (video only).
fn want_keyframe(
    wanted: &mut Vec<PublicationKey>,
    key: PublicationKey,
    publication: &mut Publication,
    layer: Layer,
) {
    if publication.kind != MediaKind::Video || publication.keyframe_wanted.contains(layer) {
        return;
    }
    if publication.keyframe_wanted.is_empty() {
        wanted.push(key);
    }
    publication.keyframe_wanted = publication.keyframe_wanted.with(layer);
}

/// Answers `inactive` on receiving slots the client offered beyond what we send: an empty
/// sendonly m-line would make the client expect a track for a mid it cannot name.
fn silence_unused_slots(endpoint: &mut Endpoint) {
    let transceivers: Vec<RTCRtpTransceiverId> = endpoint.pc.get_transceivers().collect();
    for id in transceivers {
        if let Some(mut transceiver) = endpoint.pc.rtp_transceiver(id) {
            let sends = transceiver.direction() == RTCRtpTransceiverDirection::Sendonly;
            if sends && transceiver.sender().is_none() {
                transceiver.set_direction(RTCRtpTransceiverDirection::Inactive);
            }
        }
    }
}
