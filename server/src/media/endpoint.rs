//! A peer's endpoint: its one WebRTC peer connection (webrtc-rs), answering the client's offers.
//! One task owns the connection and takes commands from the room in order; what happens on the
//! connection (answers, candidates, failure) goes back to the room. Each published track gets a
//! reader task that hands its packets straight to the track's [`Fanout`].
//!
//! The connection is ICE-lite (it answers the browser's checks and never sends any of its own,
//! so a client cannot aim it at addresses of its choosing) and has no mDNS listener. It must
//! connect within `--ice-timeout` of an answer. A panic in the endpoint's task is caught by
//! its supervisor, which reports the peer failed; the connection closes as the task unwinds.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rtc::ice::mdns::MulticastDnsMode;
use rtc::rtcp::payload_feedbacks::picture_loss_indication::PictureLossIndication;
use rtc::rtp_transceiver::rtp_sender::RtpCodecKind;
use rtc::rtp_transceiver::{
    RTCRtpTransceiverDirection, RTCRtpTransceiverId, RTCRtpTransceiverInit,
};
use shared::{PeerId, TrackId};
use thiserror::Error;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::{sleep_until, Instant};
use webrtc::media_stream::track_local::{TrackLocal, TrackLocalEvent};
use webrtc::media_stream::track_remote::{TrackRemote, TrackRemoteEvent};
use webrtc::peer_connection::{
    PeerConnection, PeerConnectionBuilder, RTCConfigurationBuilder, RTCIceCandidateInit,
    RTCIceCandidateType, RTCPeerConnectionState, RTCSessionDescription, SettingEngineBuilder,
};
use webrtc::rtp_transceiver::RtpTransceiver;

use crate::limits::{Quota, QuotaGuard};
use crate::media::codec::{Codec, MediaKind};
use crate::media::forward::{DownTrack, Fanout};
use crate::media::sdp;
use crate::media::webrtc_setup::{self, ConnectionEvent, EventsToChannel};
use crate::telemetry;
use crate::Config;

/// Commands waiting for an endpoint: a negotiation and the candidates of one offer fit many
/// times over; a room that finds the queue full drops the peer.
const COMMAND_CAPACITY: usize = 256;

/// How the server's peer connections are set up.
pub struct RtcSettings {
    pub media_ip: IpAddr,
    pub announce_ip: Option<IpAddr>,
    pub ports: Option<PortRange>,
    /// Peer connections open now, across all rooms (at most one a peer).
    pub peer_connections: Arc<Quota>,
    /// How long a connection may take to come up after an answer.
    pub ice_timeout: Duration,
}

impl RtcSettings {
    pub fn from_config(config: &Config) -> RtcSettings {
        RtcSettings {
            media_ip: config.media_ip,
            announce_ip: config.announce_ip,
            ports: config.media_ports.map(|(first, last)| PortRange {
                first,
                last,
                next: AtomicU16::new(first),
            }),
            peer_connections: Quota::new(config.limits.max_peers_total),
            ice_timeout: config.limits.ice_timeout,
        }
    }

    /// The address a new peer connection binds: any free port, or the next free one of the range.
    fn media_address(&self) -> Result<SocketAddr, String> {
        let Some(range) = &self.ports else {
            return Ok(SocketAddr::new(self.media_ip, 0));
        };
        let size = usize::from(range.last - range.first) + 1;
        for _ in 0..size {
            let port = range.take();
            // webrtc-rs binds the port itself: check it is free now (another peer or process).
            if UdpSocket::bind((self.media_ip, port)).is_ok() {
                return Ok(SocketAddr::new(self.media_ip, port));
            }
        }
        Err(format!(
            "no free media port in {}-{}",
            range.first, range.last
        ))
    }
}

/// The media ports, handed out in turn.
pub struct PortRange {
    first: u16,
    last: u16,
    next: AtomicU16,
}

impl PortRange {
    fn take(&self) -> u16 {
        let span = self.last - self.first + 1;
        let offset = self
            .next
            .fetch_add(1, Ordering::Relaxed)
            .wrapping_sub(self.first)
            % span;
        self.first + offset
    }
}

/// What the room asks of an endpoint.
enum Command {
    Negotiate(Negotiation),
    RemoteCandidate(String),
    /// The test hook: panic in the endpoint's task.
    Panic,
}

/// One round of negotiation: the client's offer, the tracks it publishes, and the tracks it
/// should receive (the full set: ones missing from it stop).
pub struct Negotiation {
    pub offer: String,
    /// The fan-out of each track the client publishes, by its mid.
    pub publish: Vec<(String, Arc<Fanout>)>,
    pub subscribe: Vec<Subscription>,
}

/// A track of another peer to send to this one.
pub struct Subscription {
    pub track_id: TrackId,
    pub kind: MediaKind,
    /// The publisher's id: its audio and video share this stream, so a client shows them together.
    pub stream_id: String,
    pub fanout: Arc<Fanout>,
}

/// What an endpoint tells its room.
pub enum EndpointEvent {
    /// The answer to the last offer; `sending` maps the mids the server sends on (including
    /// stopped ones) to their tracks.
    Answer {
        sdp: String,
        sending: BTreeMap<String, TrackId>,
    },
    Candidate(String),
    Failed(String),
}

/// An endpoint's news for its room, with whose endpoint it is.
pub struct EndpointReport {
    pub peer_id: PeerId,
    pub event: EndpointEvent,
}

/// Where endpoints send their reports: the room reads them beside its own mailbox. Bounded;
/// an endpoint waits when its room is behind (each negotiation yields a handful of reports).
pub type Reports = mpsc::Sender<EndpointReport>;

/// The capacity of a room's report queue.
pub const REPORTS_CAPACITY: usize = 1024;

/// The endpoint cannot take more commands: its queue is full, or it is gone.
#[derive(Debug, Error)]
#[error("the peer's media connection is not taking requests (too many queued, or it failed)")]
pub struct EndpointBusy;

/// The room's side of an endpoint. Dropping it closes the peer connection.
pub struct EndpointHandle {
    commands: mpsc::Sender<Command>,
    /// The commands of an endpoint that is not there (see [`EndpointHandle::unattended`]).
    _unattended: Option<mpsc::Receiver<Command>>,
}

impl EndpointHandle {
    /// Starts the endpoint of `peer_id`, if the server may open one more peer connection.
    pub fn spawn(
        peer_id: PeerId,
        settings: Arc<RtcSettings>,
        reports: Reports,
    ) -> Result<EndpointHandle, String> {
        let open = settings.peer_connections.try_take().ok_or_else(|| {
            format!(
                "the server holds its limit of {} peer connections (--max-peers-total)",
                settings.peer_connections.max()
            )
        })?;
        let (commands, receiver) = mpsc::channel(COMMAND_CAPACITY);
        let task = tokio::spawn(run(
            peer_id.clone(),
            settings,
            reports.clone(),
            receiver,
            open,
        ));
        tokio::spawn(supervise(task, peer_id, reports));
        Ok(EndpointHandle {
            commands,
            _unattended: None,
        })
    }

    /// An endpoint with no task and no connection, whose commands pile up unread (until its
    /// queue is full): what a room runs with when it is driven without sockets.
    pub fn unattended(_: PeerId, _: Arc<RtcSettings>, _: Reports) -> Result<Self, String> {
        let (commands, receiver) = mpsc::channel(COMMAND_CAPACITY);
        Ok(EndpointHandle {
            commands,
            _unattended: Some(receiver),
        })
    }

    pub fn negotiate(&self, negotiation: Negotiation) -> Result<(), EndpointBusy> {
        self.send(Command::Negotiate(negotiation))
    }

    pub fn add_candidate(&self, candidate: String) -> Result<(), EndpointBusy> {
        self.send(Command::RemoteCandidate(candidate))
    }

    pub fn inject_panic(&self) {
        let _ = self.send(Command::Panic);
    }

    fn send(&self, command: Command) -> Result<(), EndpointBusy> {
        self.commands.try_send(command).map_err(|_| EndpointBusy)
    }
}

/// Waits for an endpoint's task, and reports the peer failed if the task panicked.
async fn supervise(task: JoinHandle<()>, peer_id: PeerId, reports: Reports) {
    let Err(err) = task.await else { return };
    if err.is_panic() {
        tracing::error!(peer = %peer_id, %err, "the endpoint task panicked");
        let event = EndpointEvent::Failed("internal server error".to_owned());
        report(&reports, &peer_id, event).await;
    }
}

async fn run(
    peer_id: PeerId,
    settings: Arc<RtcSettings>,
    reports: Reports,
    mut commands: mpsc::Receiver<Command>,
    _open: QuotaGuard,
) {
    let (events, mut connection_events) = mpsc::unbounded_channel();
    let handler = Arc::new(EventsToChannel(events));
    let pc = match connect(&settings, handler).await {
        Ok(pc) => pc,
        Err(reason) => {
            tracing::error!(peer = %peer_id, %reason, "cannot create a peer connection");
            report(&reports, &peer_id, EndpointEvent::Failed(reason)).await;
            return;
        }
    };
    let mut endpoint = Endpoint {
        ice_timeout: settings.ice_timeout,
        peer_id,
        pc,
        reports,
        publications: Arc::default(),
        subscriptions: BTreeMap::new(),
        stopped: BTreeMap::new(),
        local_candidates: Vec::new(),
        early_candidates: Vec::new(),
        answered: false,
        connected: false,
        connect_due: None,
        readers: Vec::new(),
        closed: false,
    };
    loop {
        let due = endpoint.connect_due;
        tokio::select! {
            command = commands.recv() => match command {
                None => break,
                Some(Command::Negotiate(negotiation)) => {
                    if let Err(reason) = endpoint.negotiate(negotiation).await {
                        endpoint.report(EndpointEvent::Failed(reason)).await;
                    }
                }
                Some(Command::RemoteCandidate(candidate)) => endpoint.add_remote_candidate(candidate).await,
                Some(Command::Panic) => panic!("test hook: a panic in the endpoint of {}", endpoint.peer_id),
            },
            Some(event) = connection_events.recv() => endpoint.on_connection_event(event).await,
            () = sleep_until(due.unwrap_or_else(Instant::now)), if due.is_some() => {
                endpoint.connect_due = None;
                let reason = format!(
                    "the media connection did not come up within {:?} of the answer (--ice-timeout)",
                    endpoint.ice_timeout
                );
                endpoint.report(EndpointEvent::Failed(reason)).await;
            }
        }
    }
    endpoint.close().await;
}

struct Endpoint {
    peer_id: PeerId,
    pc: Arc<dyn PeerConnection>,
    reports: Reports,
    /// The fan-out of each track the client publishes, by mid, as of the last offer.
    publications: Arc<BTreeMap<String, Arc<Fanout>>>,
    subscriptions: BTreeMap<TrackId, Subscribed>,
    /// Mids of tracks this endpoint stopped sending: the answer keeps naming them.
    stopped: BTreeMap<String, TrackId>,
    /// Every candidate gathered, re-sent after each answer (an ICE restart forgets them).
    local_candidates: Vec<String>,
    /// The client's candidates that came before its first offer.
    early_candidates: Vec<String>,
    answered: bool,
    /// Whether ICE and DTLS are up now.
    connected: bool,
    /// When the connection must be up by, after an answer.
    connect_due: Option<Instant>,
    ice_timeout: Duration,
    readers: Vec<JoinHandle<()>>,
    /// Set once the connection was closed in order; a dropped endpoint closes it otherwise.
    closed: bool,
}

/// A track this endpoint sends to its client.
struct Subscribed {
    transceiver: Arc<dyn RtpTransceiver>,
    down_track: Arc<DownTrack>,
    fanout: Arc<Fanout>,
    mid: Option<String>,
    /// Passes the client's keyframe requests for this track on to the publisher.
    feedback: JoinHandle<()>,
}

impl Endpoint {
    async fn report(&self, event: EndpointEvent) {
        report(&self.reports, &self.peer_id, event).await;
    }

    async fn negotiate(&mut self, negotiation: Negotiation) -> Result<(), String> {
        self.publications = Arc::new(negotiation.publish.into_iter().collect());
        let wanted: BTreeSet<&TrackId> =
            negotiation.subscribe.iter().map(|s| &s.track_id).collect();
        let unwanted: Vec<TrackId> = self
            .subscriptions
            .keys()
            .filter(|id| !wanted.contains(id))
            .cloned()
            .collect();
        for track_id in unwanted {
            self.unsubscribe(track_id).await;
        }
        // Each new track gets a sendonly transceiver before the offer is applied: applying it
        // gives each new recvonly m-line the next such transceiver of its kind.
        for subscription in negotiation.subscribe {
            if !self.subscriptions.contains_key(&subscription.track_id) {
                self.subscribe(subscription).await?;
            }
        }

        let offer = RTCSessionDescription::offer(negotiation.offer)
            .map_err(|err| format!("the offer is not valid SDP: {err}"))?;
        self.pc
            .set_remote_description(offer)
            .await
            .map_err(|err| format!("cannot apply the offer: {err}"))?;
        for candidate in std::mem::take(&mut self.early_candidates) {
            self.add_remote_candidate(candidate).await;
        }
        self.silence_unused_slots().await;
        let answer = self
            .pc
            .create_answer(None)
            .await
            .map_err(|err| format!("cannot answer the offer: {err}"))?;
        self.pc
            .set_local_description(answer)
            .await
            .map_err(|err| format!("cannot apply the answer: {err}"))?;
        let sdp = self
            .pc
            .local_description()
            .await
            .map(|description| description.sdp)
            .ok_or("the answer vanished")?;

        self.learn_published_codecs(&sdp);
        let sending = self.start_sending().await;
        self.report(EndpointEvent::Answer { sdp, sending }).await;
        self.answered = true;
        if !self.connected {
            self.connect_due = Some(Instant::now() + self.ice_timeout);
        }
        for candidate in self.local_candidates.clone() {
            self.report(EndpointEvent::Candidate(candidate)).await;
        }
        Ok(())
    }

    /// Notes each published track's codec: the first our answer lists on its m-line. Subscribers
    /// that negotiate from now on ask for that codec.
    fn learn_published_codecs(&self, answer: &str) {
        for section in sdp::media_sections(answer) {
            let fanout = section
                .mid
                .as_ref()
                .and_then(|mid| self.publications.get(mid));
            let codec = section
                .codecs
                .first()
                .and_then(|name| Codec::from_sdp_name(name));
            if let (Some(fanout), Some(codec)) = (fanout, codec) {
                fanout.set_codec(codec);
            }
        }
    }

    async fn subscribe(&mut self, subscription: Subscription) -> Result<(), String> {
        let ssrc = rand::random::<u32>();
        let kind = match subscription.kind {
            MediaKind::Audio => RtpCodecKind::Audio,
            MediaKind::Video => RtpCodecKind::Video,
        };
        // In the publisher's codec, so the leg negotiates it and the sender's NACK responder
        // and reports are bound.
        let codec = webrtc_setup::codec(subscription.fanout.codec().mime())
            .ok_or("a forwarded codec is not registered")?;
        let track = webrtc_setup::rtp_track(
            subscription.stream_id,
            subscription.track_id.to_string(),
            kind,
            ssrc,
            codec,
        );
        let init = RTCRtpTransceiverInit {
            direction: RTCRtpTransceiverDirection::Sendonly,
            streams: vec![],
            send_encodings: vec![],
        };
        let transceiver = self
            .pc
            .add_transceiver_from_track(track.clone(), Some(init))
            .await
            .map_err(|err| format!("cannot add a track to send: {err}"))?;
        let down_track = DownTrack::new(ssrc, subscription.kind, track);
        let feedback = tokio::spawn(relay_keyframe_requests(
            down_track.clone(),
            subscription.fanout.clone(),
        ));
        self.subscriptions.insert(
            subscription.track_id,
            Subscribed {
                transceiver,
                down_track,
                fanout: subscription.fanout,
                mid: None,
                feedback,
            },
        );
        Ok(())
    }

    async fn unsubscribe(&mut self, track_id: TrackId) {
        let Some(subscribed) = self.subscriptions.remove(&track_id) else {
            return;
        };
        subscribed.fanout.detach(&subscribed.down_track);
        subscribed.feedback.abort();
        let _ = subscribed
            .transceiver
            .set_direction(RTCRtpTransceiverDirection::Inactive)
            .await;
        if let Some(mid) = subscribed.mid {
            self.stopped.insert(mid, track_id);
        }
    }

    /// Answers `inactive` on receiving slots the client offered beyond what we send: an empty
    /// sendonly m-line would make the client expect a track for a mid it cannot name.
    async fn silence_unused_slots(&self) {
        for transceiver in self.pc.get_transceivers().await {
            let sends = matches!(
                transceiver.direction().await,
                Ok(RTCRtpTransceiverDirection::Sendonly)
            );
            if sends && matches!(transceiver.sender().await, Ok(None)) {
                let _ = transceiver
                    .set_direction(RTCRtpTransceiverDirection::Inactive)
                    .await;
            }
        }
    }

    /// After an answer: learns each subscription's mid and payload types and starts forwarding
    /// to new ones. Returns what the answer sends, by mid.
    async fn start_sending(&mut self) -> BTreeMap<String, TrackId> {
        let mut unplaced = Vec::new();
        for (track_id, subscribed) in &mut self.subscriptions {
            let mid = subscribed.transceiver.mid().await.ok().flatten();
            let sender = subscribed.transceiver.sender().await.ok().flatten();
            let (Some(mid), Some(sender)) = (mid, sender) else {
                // The offer had no m-line left for it (a client that offered fewer slots than
                // `tracksTypes` asked for): it is dropped, and the answer does not name it.
                unplaced.push(track_id.clone());
                continue;
            };
            let payload_types = match sender.get_parameters().await {
                Ok(parameters) => parameters
                    .rtp_parameters
                    .codecs
                    .iter()
                    .filter_map(|codec| {
                        Some((
                            Codec::from_mime(&codec.rtp_codec.mime_type)?,
                            codec.payload_type,
                        ))
                    })
                    .collect(),
                Err(_) => Vec::new(),
            };
            subscribed.down_track.set_payload_types(payload_types);
            if subscribed.mid.is_none() {
                subscribed.fanout.attach(subscribed.down_track.clone());
            }
            subscribed.mid = Some(mid);
        }
        for track_id in unplaced {
            tracing::warn!(peer = %self.peer_id, track = %track_id, "no m-line to send the track on");
            self.unsubscribe(track_id).await;
        }
        let mut sending = self.stopped.clone();
        for (track_id, subscribed) in &self.subscriptions {
            if let Some(mid) = &subscribed.mid {
                sending.insert(mid.clone(), track_id.clone());
            }
        }
        sending
    }

    async fn add_remote_candidate(&mut self, candidate: String) {
        if self.pc.remote_description().await.is_none() {
            self.early_candidates.push(candidate);
            return;
        }
        let init = RTCIceCandidateInit {
            candidate,
            sdp_mid: None,
            sdp_mline_index: Some(0),
            ..Default::default()
        };
        if let Err(err) = self.pc.add_ice_candidate(init).await {
            tracing::debug!(peer = %self.peer_id, %err, "candidate refused");
        }
    }

    async fn on_connection_event(&mut self, event: ConnectionEvent) {
        match event {
            ConnectionEvent::LocalCandidate(candidate) => {
                self.local_candidates.push(candidate.clone());
                // Before the first answer, candidates wait: they would reach the client first.
                if self.answered {
                    self.report(EndpointEvent::Candidate(candidate)).await;
                }
            }
            ConnectionEvent::Track(track) => {
                let reader = read_published_track(
                    track,
                    self.pc.clone(),
                    self.publications.clone(),
                    self.peer_id.clone(),
                );
                self.readers.push(tokio::spawn(reader));
            }
            ConnectionEvent::State(RTCPeerConnectionState::Connected) => {
                self.connected = true;
                self.connect_due = None;
                // Keyframes sent before the media path was up were lost: ask again.
                for subscribed in self.subscriptions.values() {
                    subscribed.fanout.request_keyframe();
                }
            }
            ConnectionEvent::State(RTCPeerConnectionState::Failed) => {
                self.connected = false;
                self.report(EndpointEvent::Failed(
                    "the media connection failed (ICE or DTLS)".to_owned(),
                ))
                .await;
            }
            ConnectionEvent::State(RTCPeerConnectionState::Disconnected) => self.connected = false,
            ConnectionEvent::State(_) => {}
        }
    }

    async fn close(mut self) {
        if let Err(err) = self.pc.close().await {
            tracing::debug!(peer = %self.peer_id, %err, "closing the peer connection");
        }
        self.closed = true;
        tracing::debug!(peer = %self.peer_id, "peer connection closed");
    }
}

impl Drop for Endpoint {
    /// Stops forwarding to and from this peer, however the endpoint ends: in order, or by
    /// a panic unwinding its task (then the connection is closed here, in the background).
    fn drop(&mut self) {
        for subscribed in self.subscriptions.values() {
            subscribed.fanout.detach(&subscribed.down_track);
            subscribed.feedback.abort();
        }
        for reader in &self.readers {
            reader.abort();
        }
        if !self.closed {
            let pc = self.pc.clone();
            tokio::spawn(async move { pc.close().await });
        }
    }
}

async fn report(reports: &Reports, peer_id: &PeerId, event: EndpointEvent) {
    let report = EndpointReport {
        peer_id: peer_id.clone(),
        event,
    };
    // Fails only once the room is gone, and with it the endpoint's reason to report.
    let _ = reports.send(report).await;
}

/// A publisher may be asked for a keyframe this often at most; requests in between wait.
const KEYFRAME_REQUEST_INTERVAL: Duration = Duration::from_millis(500);

/// Reads one published track and forwards every packet to its subscribers; sends the
/// publisher the keyframe requests its subscribers make.
async fn read_published_track(
    track: Arc<dyn TrackRemote>,
    pc: Arc<dyn PeerConnection>,
    publications: Arc<BTreeMap<String, Arc<Fanout>>>,
    peer_id: PeerId,
) {
    // The first event names the receiver, hence the mid, hence the track it publishes.
    let init = loop {
        match track.poll().await {
            Some(TrackRemoteEvent::OnOpen(init)) => break init,
            Some(_) => continue,
            None => return,
        }
    };
    let transceiver_id = RTCRtpTransceiverId::from(init.receiver_id);
    let mut mid = None;
    for transceiver in pc.get_transceivers().await {
        if transceiver.id() == transceiver_id {
            mid = transceiver.mid().await.ok().flatten();
        }
    }
    let Some(fanout) = mid.as_ref().and_then(|mid| publications.get(mid)).cloned() else {
        tracing::warn!(peer = %peer_id, ?mid, "media on an m-line that publishes no track");
        return;
    };
    let codec = track
        .codec(init.ssrc)
        .await
        .and_then(|codec| Codec::from_mime(&codec.mime_type));
    let Some(codec) = codec else {
        tracing::warn!(peer = %peer_id, track = %fanout.track_id, "track in a codec the SFU does not forward");
        return;
    };
    fanout.set_codec(codec);
    tracing::debug!(peer = %peer_id, track = %fanout.track_id, ?codec, "forwarding");

    let mut last_request: Option<Instant> = None;
    let mut request_due: Option<Instant> = None;
    loop {
        tokio::select! {
            event = track.poll() => match event {
                Some(TrackRemoteEvent::OnRtpPacket(packet)) => fanout.forward(codec, &packet).await,
                Some(_) => {}
                None => break,
            },
            () = fanout.keyframe_requested() => {
                let earliest = last_request.map_or_else(Instant::now, |last| last + KEYFRAME_REQUEST_INTERVAL);
                request_due.get_or_insert(earliest);
            }
            () = sleep_until(request_due.unwrap_or_else(Instant::now)), if request_due.is_some() => {
                request_due = None;
                last_request = Some(Instant::now());
                let pli = PictureLossIndication { sender_ssrc: 0, media_ssrc: init.ssrc };
                match track.write_rtcp(vec![Box::new(pli)]).await {
                    Ok(()) => metrics::counter!(telemetry::KEYFRAME_REQUESTS).increment(1),
                    Err(err) => tracing::debug!(%err, "keyframe request not sent"),
                }
            }
        }
    }
}

/// Turns a subscriber's PLI and FIR for a down-track into a keyframe request to the publisher.
async fn relay_keyframe_requests(down_track: Arc<DownTrack>, fanout: Arc<Fanout>) {
    while let Some(event) = down_track.track().poll().await {
        if let TrackLocalEvent::OnRtcpPacket(packets) = event {
            let wants_keyframe = packets
                .iter()
                .any(|packet| webrtc_setup::is_keyframe_request(packet.as_ref()));
            if wants_keyframe {
                fanout.request_keyframe();
            }
        }
    }
}

async fn connect(
    settings: &RtcSettings,
    handler: Arc<EventsToChannel>,
) -> Result<Arc<dyn PeerConnection>, String> {
    let (media, interceptors) =
        webrtc_setup::media_and_interceptors().map_err(|err| format!("codec setup: {err}"))?;
    let network = if settings.media_ip.is_ipv4() {
        rtc::ice::network_type::NetworkType::Udp4
    } else {
        rtc::ice::network_type::NetworkType::Udp6
    };
    let mut setting_engine = SettingEngineBuilder::new()
        .with_lite(true)
        .with_multicast_dns_mode(MulticastDnsMode::Disabled)
        .with_include_loopback_candidate(settings.media_ip.is_loopback())
        .with_network_types(vec![network]);
    if let Some(ip) = settings.announce_ip {
        setting_engine =
            setting_engine.with_nat_1to1_ips(vec![ip.to_string()], RTCIceCandidateType::Host);
    }
    let address = settings.media_address()?;
    let pc = PeerConnectionBuilder::new()
        .with_configuration(RTCConfigurationBuilder::new().build())
        .with_media_engine(media)
        .with_setting_engine(setting_engine.build())
        .with_interceptor_registry(interceptors)
        .with_handler(handler)
        .with_udp_addrs(vec![address])
        .build()
        .await
        .map_err(|err| format!("cannot open a media socket on {address}: {err}"))?;
    Ok(Arc::new(pc))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_range_hands_out_ports_in_turn_and_wraps() {
        let range = PortRange {
            first: 50_000,
            last: 50_002,
            next: AtomicU16::new(50_000),
        };
        let ports: Vec<u16> = (0..5).map(|_| range.take()).collect();
        assert_eq!(ports, [50_000, 50_001, 50_002, 50_000, 50_001]);
    }
}
