//! Synthetic peers: WebRTC clients built on webrtc-rs that speak the real protocol over a real
//! WebSocket, as `membrane-webrtc-js` does (join, `offerData` → offer with recvonly slots, answer,
//! trickle ICE), publish generated VP8 and Opus RTP, and count what they receive.
//!
//! Every media payload carries the sending track's packet number and send time, and a filler
//! derived from the number, so a receiver can tell loss, corruption and latency per track.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};
use bytes::Bytes;
use rtc::media_stream::MediaStreamTrack;
use rtc::peer_connection::configuration::RTCOfferOptions;
use rtc::rtcp::payload_feedbacks::picture_loss_indication::PictureLossIndication;
use rtc::rtcp::transport_feedbacks::transport_layer_nack::{NackPair, TransportLayerNack};
use rtc::rtp;
use rtc::rtp::extension::audio_level_extension::AudioLevelExtension;
use rtc::rtp::extension::HeaderExtension;
use rtc::rtp_transceiver::rtp_sender::{
    RTCRtpCodec, RTCRtpCodingParameters, RTCRtpEncodingParameters, RtpCodecKind,
};
use rtc::rtp_transceiver::{
    RTCRtpTransceiverDirection, RTCRtpTransceiverId, RTCRtpTransceiverInit,
};
use serde_json::json;
use shared::client_event::{ClientCandidate, Join, SdpOffer, SdpType, SessionDescription};
use shared::metadata::{peer_metadata, track_metadata, TrackType};
use shared::phoenix::ReplyStatus;
use shared::server_event::{OfferData, SdpAnswer, TurnServer, TurnTransport};
use shared::{ClientEvent, Frame, PeerId, PhoenixEvent, RoomId, ServerEvent, TrackId};

use server::media::codec::Codec;
use server::media::setup::{codec, is_keyframe_request, media_and_interceptors};

use crate::phoenix::{Channel, PhoenixClient};
use crate::throttle::Throttle;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use webrtc::media_stream::track_local::static_rtp::TrackLocalStaticRTP;
use webrtc::media_stream::track_local::{TrackLocal, TrackLocalEvent};
use webrtc::media_stream::track_remote::{TrackRemote, TrackRemoteEvent};
use webrtc::peer_connection::{
    PeerConnection, PeerConnectionBuilder, PeerConnectionEventHandler, RTCConfigurationBuilder,
    RTCIceCandidateInit, RTCIceServer, RTCIceTransportPolicy, RTCPeerConnectionIceEvent,
    RTCSessionDescription, SettingEngineBuilder,
};
use webrtc::rtp_transceiver::RtpTransceiver;

/// What a synthetic peer publishes, and how.
#[derive(Debug, Clone)]
pub struct PeerOptions {
    pub display_name: String,
    pub audio: bool,
    pub video: bool,
    /// Video sends a keyframe this often, and whenever the server asks for one.
    pub keyframe_interval: Duration,
    pub video_fps: u32,
    /// RTP payload bytes of one video packet.
    pub video_packet_size: usize,
    /// Video packets per frame.
    pub video_packets_per_frame: usize,
    /// Track metadata `{}`, as the Membrane JS client sends it, instead of `type` and `active`.
    pub untyped_tracks: bool,
    /// ICE over TCP only (active, to the server's passive candidate), as on a network that
    /// blocks UDP.
    pub tcp_only: bool,
    /// Relayed candidates only, through the UDP TURN servers of the first `offerData`, as the
    /// Membrane JS client connects.
    pub relay_only: bool,
    /// Video in three simulcast layers (rids `l`, `m`, `h`, as a browser sends them), each with
    /// its SSRC and numbering, its payloads tagged with the layer (see [`layer_of_number`]).
    pub simulcast: bool,
    /// The media from the server comes through this narrowed link ([`Throttle`]).
    pub downlink: Option<Throttle>,
}

impl PeerOptions {
    pub fn publishing(display_name: &str) -> PeerOptions {
        PeerOptions {
            display_name: display_name.to_owned(),
            audio: true,
            video: true,
            keyframe_interval: Duration::from_secs(3),
            video_fps: 30,
            video_packet_size: 1000,
            video_packets_per_frame: 1,
            untyped_tracks: false,
            tcp_only: false,
            relay_only: false,
            simulcast: false,
            downlink: None,
        }
    }

    pub fn receive_only(display_name: &str) -> PeerOptions {
        PeerOptions {
            audio: false,
            video: false,
            ..PeerOptions::publishing(display_name)
        }
    }
}

/// What one peer received of one remote track.
#[derive(Debug, Clone, Default)]
pub struct Received {
    pub kind: Option<RtpCodecKind>,
    /// The msid stream the track arrived in.
    pub stream_id: Option<String>,
    pub packets: u64,
    pub bytes: u64,
    pub keyframes: u64,
    /// Packets whose payload did not match what the publisher generated.
    pub corrupt: u64,
    /// Since the peer joined.
    pub first_packet: Option<Duration>,
    pub first_keyframe: Option<Duration>,
    /// Lowest and highest packet number seen; with `packets` they tell loss.
    pub lowest_number: Option<u64>,
    pub highest_number: Option<u64>,
    /// One-way latency of each packet (sender and receiver share this machine's clock), µs.
    pub latencies_us: Vec<u64>,
    /// The packet number NACKed on purpose, until it comes again.
    pub nacked: Option<u64>,
    /// Packets that came again after a NACK.
    pub retransmitted: u64,
    /// Video packets by the simulcast layer tagged in them (0 `l`, 1 `m`, 2 `h`; 2 also
    /// without simulcast).
    pub layers: BTreeMap<u64, u64>,
    /// Each change of layer in what arrived: (the new layer, whether its first packet
    /// started a keyframe).
    pub layer_changes: Vec<(u64, bool)>,
    /// Arrivals whose RTP sequence number was not the last one's plus one (a gap, or reordering).
    pub sequence_breaks: u64,
    last_sequence: Option<u16>,
}

impl Received {
    /// Packets missing between the first and the last one received (video counts packets, not
    /// frames; a subscriber starts at a keyframe, so nothing before its first packet is missing).
    pub fn lost(&self) -> u64 {
        match (self.lowest_number, self.highest_number) {
            (Some(lowest), Some(highest)) => {
                (highest - lowest + 1).saturating_sub(self.packets - self.corrupt)
            }
            _ => 0,
        }
    }

    /// The `q` quantile (0..=1) of the one-way latencies, in µs.
    pub fn latency_quantile_us(&self, q: f64) -> Option<u64> {
        let mut latencies = self.latencies_us.clone();
        latencies.sort_unstable();
        let index = ((latencies.len() as f64 - 1.0) * q).round() as usize;
        latencies.get(index).copied()
    }
}

/// What one of our own tracks sent.
#[derive(Debug, Default)]
pub struct Sent {
    pub packets: AtomicU64,
    pub keyframes: AtomicU64,
    /// Keyframe requests (PLI/FIR) the server passed on for this track.
    pub keyframe_requests: AtomicU64,
}

/// Everything a peer saw, shared with its tasks.
#[derive(Default)]
pub struct PeerState {
    pub id: Option<PeerId>,
    pub events: Vec<ServerEvent>,
    /// The server's last `midToTrackId`: which mid carries which track.
    pub mid_to_track_id: BTreeMap<String, TrackId>,
    pub received: BTreeMap<TrackId, Received>,
    pub published: BTreeMap<TrackId, Arc<Sent>>,
    pub answers: u32,
    /// Set when the server sent an `error` event, or the socket closed.
    pub error: Option<String>,
    /// Tracks whose next packet is to be NACKed as if lost, to see it retransmitted.
    pub nack_next: BTreeSet<TrackId>,
}

/// A synthetic peer in a room.
pub struct SyntheticPeer {
    state: Arc<Mutex<PeerState>>,
    audio_level: Arc<AtomicU8>,
    commands: mpsc::UnboundedSender<Command>,
    task: JoinHandle<()>,
}

enum Command {
    Push(ClientEvent),
    Leave,
}

impl SyntheticPeer {
    /// Connects to the server's socket, joins `room`, and starts publishing per `options`.
    pub async fn join(
        socket_url: &str,
        room: &str,
        options: PeerOptions,
    ) -> anyhow::Result<SyntheticPeer> {
        let mut socket = PhoenixClient::connect(socket_url).await?;
        let channel = socket.join(&RoomId::new(room)?.topic()).await?;
        let join_event = ClientEvent::Join(Join {
            metadata: peer_metadata(&options.display_name),
        });
        let audio_level = Arc::new(AtomicU8::new(SILENCE));
        let mut client = Client {
            socket,
            channel,
            options,
            audio_level: audio_level.clone(),
            state: Arc::default(),
            joined_at: Instant::now(),
            pc: None,
            local: Vec::new(),
            pending_candidates: Vec::new(),
            relays: BTreeMap::new(),
            tasks: Vec::new(),
        };
        client.push(join_event).await?;
        let state = client.state.clone();
        let (commands, command_rx) = mpsc::unbounded_channel();
        let task = tokio::spawn(client.run(command_rx));
        Ok(SyntheticPeer {
            state,
            audio_level,
            commands,
            task,
        })
    }

    /// A look at the peer's state.
    pub fn state<T>(&self, read: impl FnOnce(&PeerState) -> T) -> T {
        read(&self.state.lock().unwrap_or_else(PoisonError::into_inner))
    }

    pub fn id(&self) -> Option<PeerId> {
        self.state(|state| state.id.clone())
    }

    /// Waits until `condition` holds on the peer's state, or fails after `timeout`.
    pub async fn wait_until(
        &self,
        what: &str,
        timeout: Duration,
        condition: impl Fn(&PeerState) -> bool,
    ) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if self.state(&condition) {
                return Ok(());
            }
            if let Some(error) = self.state(|state| state.error.clone()) {
                bail!("while waiting for {what}: {error}");
            }
            if Instant::now() > deadline {
                bail!("timed out after {timeout:?} waiting for {what}");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// NACKs the next packet of `track` as if it were lost; [`Received::retransmitted`] counts
    /// it when it comes again.
    pub fn nack_next_packet(&self, track: &TrackId) {
        self.state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .nack_next
            .insert(track.clone());
    }

    /// The loudness the audio packets say they carry from now on, in −dBov (RFC 6464: 0 is
    /// the loudest, 127 silence, the start).
    pub fn set_audio_level(&self, level: u8) {
        self.audio_level
            .store(level.min(SILENCE), Ordering::Relaxed);
    }

    /// Sends any media event, as a misbehaving client might.
    pub fn push(&self, event: ClientEvent) {
        let _ = self.commands.send(Command::Push(event));
    }

    /// Sends `leave`, then closes the socket.
    pub async fn leave(self) {
        let _ = self.commands.send(Command::Leave);
        let _ = tokio::time::timeout(Duration::from_secs(5), self.task).await;
    }

    /// Drops the socket and the connection without a word, as a crashed browser would.
    pub fn vanish(self) {
        self.task.abort();
    }
}

/// One of our published tracks.
struct LocalTrack {
    id: TrackId,
    kind: RtpCodecKind,
    /// One, or three for simulcast video.
    encodings: Vec<Encoding>,
    track: Arc<TrackLocalStaticRTP>,
    sent: Arc<Sent>,
    /// The SSRCs the server asked for a keyframe of.
    keyframes_wanted: Arc<Mutex<BTreeSet<u32>>>,
    transceiver: Option<Arc<dyn RtpTransceiver>>,
}

/// One RTP stream of a local track.
#[derive(Debug, Clone)]
struct Encoding {
    /// The simulcast rid, if the track is sent in layers.
    rid: Option<&'static str>,
    ssrc: u32,
    /// The layer number tagged in the payloads: 0 `l`, 1 `m`, 2 `h` (or the only one).
    layer: u64,
    /// RTP payload bytes of one video packet.
    packet_size: usize,
}

/// The simulcast layers a synthetic publisher sends: rid, layer number and video packet size.
const SIMULCAST_LAYERS: [(&str, u64, usize); 3] = [("l", 0, 300), ("m", 1, 600), ("h", 2, 1000)];

/// Where a payload's packet number keeps its layer: the top 16 bits.
const LAYER_SHIFT: u32 = 48;

/// The simulcast layer tagged in a generated packet number.
pub fn layer_of_number(number: u64) -> u64 {
    number >> LAYER_SHIFT
}

/// The peer's task: the socket, the peer connection and the media it sends.
struct Client {
    socket: PhoenixClient,
    channel: Channel,
    options: PeerOptions,
    /// The level the audio packets carry (see [`SyntheticPeer::set_audio_level`]).
    audio_level: Arc<AtomicU8>,
    state: Arc<Mutex<PeerState>>,
    joined_at: Instant,
    pc: Option<(
        Arc<dyn PeerConnection>,
        mpsc::UnboundedReceiver<ConnectionEvent>,
    )>,
    local: Vec<LocalTrack>,
    /// Server candidates that came before the answer.
    pending_candidates: Vec<String>,
    /// The relay through [`PeerOptions::downlink`] to each server address.
    relays: BTreeMap<SocketAddr, SocketAddr>,
    tasks: Vec<JoinHandle<()>>,
}

const HEARTBEAT_INTERVAL: Duration = Duration::from_secs(30);

/// The audio level of silence, in −dBov.
const SILENCE: u8 = 127;

impl Client {
    fn lock(&self) -> std::sync::MutexGuard<'_, PeerState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    async fn run(mut self, mut commands: mpsc::UnboundedReceiver<Command>) {
        let mut heartbeat = tokio::time::interval(HEARTBEAT_INTERVAL);
        let outcome: anyhow::Result<()> = async {
            loop {
                let connection_event = async {
                    match &mut self.pc {
                        Some((_, events)) => events.recv().await,
                        None => std::future::pending().await,
                    }
                };
                tokio::select! {
                    frame = self.socket.read_frame() => self.on_frame(frame?).await?,
                    Some(event) = connection_event => self.on_connection_event(event).await?,
                    command = commands.recv() => match command {
                        Some(Command::Push(event)) => self.push(event).await?,
                        Some(Command::Leave) | None => {
                            self.push(ClientEvent::Leave).await?;
                            self.socket.close().await;
                            return Ok(());
                        }
                    },
                    _ = heartbeat.tick() => self.socket.send_heartbeat().await?,
                }
            }
        }
        .await;
        if let Err(err) = outcome {
            self.lock().error.get_or_insert(format!("{err:#}"));
        }
        for task in &self.tasks {
            task.abort();
        }
        if let Some((pc, _)) = &self.pc {
            let _ = pc.close().await;
        }
    }

    async fn push(&mut self, event: ClientEvent) -> anyhow::Result<()> {
        self.socket.push(&self.channel, &event).await.map(drop)
    }

    async fn on_frame(&mut self, frame: Frame) -> anyhow::Result<()> {
        match frame.event {
            PhoenixEvent::MediaEvent => {}
            PhoenixEvent::Reply if frame.as_reply()?.status == ReplyStatus::Error => {
                bail!("the server refused a message: {}", frame.encode())
            }
            PhoenixEvent::Close | PhoenixEvent::Error => {
                bail!("the channel closed: {}", frame.encode())
            }
            _ => return Ok(()),
        }
        let event = ServerEvent::decode(frame.media_event_data()?)?;
        self.lock().events.push(event.clone());
        match event {
            ServerEvent::PeerAccepted(accepted) => {
                self.lock().id = Some(accepted.id.clone());
                self.create_local_tracks(&accepted.id);
                if !self.local.is_empty() {
                    self.push(ClientEvent::RenegotiateTracks).await?;
                }
            }
            ServerEvent::OfferData(offer_data) => self.offer(offer_data).await?,
            ServerEvent::SdpAnswer(answer) => self.on_answer(answer).await?,
            ServerEvent::Candidate(candidate) => {
                if self.lock().answers == 0 {
                    self.pending_candidates.push(candidate.candidate);
                } else {
                    self.add_candidate(candidate.candidate).await;
                }
            }
            ServerEvent::Error(error) => bail!("the server reported an error: {}", error.message),
            ServerEvent::PeerDenied(reason) => bail!("join denied: {}", json!(reason)),
            _ => {}
        }
        Ok(())
    }

    fn create_local_tracks(&mut self, peer_id: &PeerId) {
        let kinds = [
            (self.options.audio, RtpCodecKind::Audio),
            (self.options.video, RtpCodecKind::Video),
        ];
        for kind in kinds
            .into_iter()
            .filter(|(on, _)| *on)
            .map(|(_, kind)| kind)
        {
            let id = TrackId::new(peer_id, uuid::Uuid::new_v4());
            let encodings: Vec<Encoding> = if kind == RtpCodecKind::Video && self.options.simulcast
            {
                SIMULCAST_LAYERS
                    .iter()
                    .map(|&(rid, layer, packet_size)| Encoding {
                        rid: Some(rid),
                        ssrc: rand::random(),
                        layer,
                        packet_size,
                    })
                    .collect()
            } else {
                vec![Encoding {
                    rid: None,
                    ssrc: rand::random(),
                    layer: 2,
                    packet_size: self.options.video_packet_size,
                }]
            };
            // One stream for the peer's audio and video, as a browser's getUserMedia gives.
            let mime = if kind == RtpCodecKind::Audio {
                Codec::Opus.mime()
            } else {
                Codec::Vp8.mime()
            };
            let codec = codec(mime).expect("Opus and VP8 are registered");
            let track = rtp_track(peer_id.to_string(), id.to_string(), kind, &encodings, codec);
            let sent = Arc::new(Sent::default());
            self.lock().published.insert(id.clone(), sent.clone());
            self.local.push(LocalTrack {
                id,
                kind,
                encodings,
                track,
                sent,
                keyframes_wanted: Arc::default(),
                transceiver: None,
            });
        }
    }

    /// Answers `offerData` as the Membrane client does: the connection (first time), recvonly
    /// slots up to `tracksTypes`, an offer (restarting ICE after the first), `sdpOffer`.
    async fn offer(&mut self, offer_data: OfferData) -> anyhow::Result<()> {
        let first = self.pc.is_none();
        if first {
            self.connect(&offer_data.integrated_turn_servers).await?;
        }
        let pc = self.pc.as_ref().expect("connected above").0.clone();
        let mut receiving = [0u32; 2];
        for transceiver in pc.get_transceivers().await {
            if transceiver.direction().await? == RTCRtpTransceiverDirection::Recvonly {
                let kind = transceiver_kind(&pc, &transceiver).await;
                receiving[usize::from(kind == RtpCodecKind::Video)] += 1;
            }
        }
        let wanted = [offer_data.tracks_types.audio, offer_data.tracks_types.video];
        for (index, kind) in [RtpCodecKind::Audio, RtpCodecKind::Video]
            .into_iter()
            .enumerate()
        {
            for _ in receiving[index]..wanted[index] {
                let init = RTCRtpTransceiverInit {
                    direction: RTCRtpTransceiverDirection::Recvonly,
                    streams: vec![],
                    send_encodings: vec![],
                };
                pc.add_transceiver_from_kind(kind, Some(init)).await?;
            }
        }
        let options = (!first).then_some(RTCOfferOptions { ice_restart: true });
        let offer = pc.create_offer(options).await?;
        pc.set_local_description(offer).await?;
        let sdp = pc
            .local_description()
            .await
            .context("no local description")?
            .sdp;
        let mut mid_to_track_id = BTreeMap::new();
        for transceiver in pc.get_transceivers().await {
            let Some(sender) = transceiver.sender().await? else {
                continue;
            };
            let sender_track = sender.track().track_id().await;
            if let (Some(mid), Some(local)) = (
                transceiver.mid().await?,
                self.local
                    .iter()
                    .find(|local| local.id.as_str() == sender_track),
            ) {
                mid_to_track_id.insert(mid, local.id.clone());
            }
        }
        let untyped = self.options.untyped_tracks;
        let track_id_to_track_metadata = self
            .local
            .iter()
            .map(|local| {
                let track_type = match local.kind {
                    RtpCodecKind::Audio => TrackType::Audio,
                    _ => TrackType::Camera,
                };
                let metadata = if untyped {
                    serde_json::json!({})
                } else {
                    track_metadata(track_type, true)
                };
                (local.id.clone(), metadata)
            })
            .collect();
        let offer = SdpOffer {
            sdp_offer: SessionDescription {
                sdp_type: SdpType::Offer,
                sdp,
            },
            track_id_to_track_metadata,
            mid_to_track_id,
        };
        self.push(ClientEvent::SdpOffer(offer)).await
    }

    async fn connect(&mut self, turn_servers: &[TurnServer]) -> anyhow::Result<()> {
        let (media, interceptors) = media_and_interceptors(None, None)?;
        let (events, event_rx) = mpsc::unbounded_channel();
        let network = if self.options.tcp_only {
            rtc::ice::network_type::NetworkType::Tcp4
        } else {
            rtc::ice::network_type::NetworkType::Udp4
        };
        let settings = SettingEngineBuilder::new()
            .with_include_loopback_candidate(true)
            .with_network_types(vec![network])
            // A browser's pace of connectivity checks (Chromium checks about every 50 ms until a
            // pair works), not webrtc-rs's default 200 ms: a join's time to first media then
            // measures the server, not the client's pace.
            .with_ice_connection_attempts(Some(Duration::from_millis(50)), Some(25))
            .build();
        let mut configuration = RTCConfigurationBuilder::new();
        if self.options.relay_only {
            let ice_servers = turn_servers
                .iter()
                .filter(|turn| turn.transport == TurnTransport::Udp)
                .map(|turn| RTCIceServer {
                    urls: vec![turn.url()],
                    username: turn.username.clone(),
                    credential: turn.password.clone(),
                })
                .collect();
            configuration = configuration
                .with_ice_servers(ice_servers)
                .with_ice_transport_policy(RTCIceTransportPolicy::Relay);
        }
        let builder = PeerConnectionBuilder::new()
            .with_configuration(configuration.build())
            .with_media_engine(media)
            .with_setting_engine(settings)
            .with_interceptor_registry(interceptors)
            .with_handler(Arc::new(EventsToChannel(events)));
        let pc = if self.options.tcp_only {
            builder.with_tcp_addrs(vec!["127.0.0.1:0"])
        } else {
            builder.with_udp_addrs(vec!["127.0.0.1:0"])
        }
        .build()
        .await?;
        let pc: Arc<dyn PeerConnection> = Arc::new(pc);
        for local in &mut self.local {
            let init = RTCRtpTransceiverInit {
                direction: RTCRtpTransceiverDirection::Sendonly,
                streams: vec![],
                send_encodings: vec![],
            };
            let transceiver = pc
                .add_transceiver_from_track(local.track.clone(), Some(init))
                .await?;
            local.transceiver = Some(transceiver);
            self.tasks.push(tokio::spawn(watch_keyframe_requests(
                local.track.clone(),
                local.sent.clone(),
                local.keyframes_wanted.clone(),
                local
                    .encodings
                    .iter()
                    .map(|encoding| encoding.ssrc)
                    .collect(),
            )));
        }
        self.pc = Some((pc, event_rx));
        Ok(())
    }

    async fn on_answer(&mut self, answer: SdpAnswer) -> anyhow::Result<()> {
        let pc = self
            .pc
            .as_ref()
            .context("an answer before any offer")?
            .0
            .clone();
        self.lock().mid_to_track_id = answer.mid_to_track_id;
        let mut sdp = answer.description.sdp;
        if self.options.downlink.is_some() {
            // Only the trickled candidates, which go through the narrowed link.
            sdp = sdp
                .split_inclusive('\n')
                .filter(|line| !line.starts_with("a=candidate"))
                .collect();
        }
        pc.set_remote_description(RTCSessionDescription::answer(sdp)?)
            .await?;
        let first = {
            let mut state = self.lock();
            state.answers += 1;
            state.answers == 1
        };
        for candidate in std::mem::take(&mut self.pending_candidates) {
            self.add_candidate(candidate).await;
        }
        if first {
            for local in &self.local {
                let extensions = simulcast_extensions(local).await?;
                for encoding in &local.encodings {
                    let mut extensions = extensions.clone();
                    if let (Some(rid), Some((id, _))) = (encoding.rid, extensions.get(1).cloned()) {
                        extensions[1] = (id, Bytes::from_static(rid.as_bytes()));
                    }
                    self.tasks.push(tokio::spawn(send_media(
                        local.kind,
                        encoding.clone(),
                        extensions,
                        local.track.clone(),
                        Senders {
                            sent: local.sent.clone(),
                            keyframes_wanted: local.keyframes_wanted.clone(),
                            audio_level: self.audio_level.clone(),
                        },
                        self.options.clone(),
                    )));
                }
            }
        }
        Ok(())
    }

    async fn add_candidate(&mut self, candidate: String) {
        let candidate = match &self.options.downlink {
            Some(throttle) => match self.through_relay(throttle.clone(), &candidate).await {
                Some(relayed) => relayed,
                None => return,
            },
            None => candidate,
        };
        if let Some((pc, _)) = &self.pc {
            let init = RTCIceCandidateInit {
                candidate,
                sdp_mline_index: Some(0),
                ..Default::default()
            };
            let _ = pc.add_ice_candidate(init).await;
        }
    }

    /// A server candidate made to name the relay through `throttle` instead; `None` for one
    /// the relay does not carry (TCP).
    async fn through_relay(&mut self, throttle: Throttle, candidate: &str) -> Option<String> {
        let mut fields: Vec<&str> = candidate.split_whitespace().collect();
        if fields.len() < 6 || !fields[2].eq_ignore_ascii_case("udp") {
            return None;
        }
        let server = SocketAddr::new(fields[4].parse().ok()?, fields[5].parse().ok()?);
        let relay = match self.relays.get(&server) {
            Some(relay) => *relay,
            None => {
                let relay = throttle.relay(server).await.ok()?;
                self.relays.insert(server, relay);
                relay
            }
        };
        let (ip, port) = (relay.ip().to_string(), relay.port().to_string());
        fields[4] = &ip;
        fields[5] = &port;
        Some(fields.join(" "))
    }

    async fn on_connection_event(&mut self, event: ConnectionEvent) -> anyhow::Result<()> {
        match event {
            ConnectionEvent::LocalCandidate(candidate) => {
                let candidate = ClientEvent::Candidate(ClientCandidate {
                    candidate,
                    sdp_m_line_index: Some(0),
                });
                self.push(candidate).await?;
            }
            ConnectionEvent::Track(track) => {
                let pc = self
                    .pc
                    .as_ref()
                    .context("a track without a connection")?
                    .0
                    .clone();
                self.tasks.push(tokio::spawn(receive_track(
                    track,
                    pc,
                    self.state.clone(),
                    self.joined_at,
                )));
            }
        }
        Ok(())
    }
}

async fn transceiver_kind(
    pc: &Arc<dyn PeerConnection>,
    transceiver: &Arc<dyn webrtc::rtp_transceiver::RtpTransceiver>,
) -> RtpCodecKind {
    // A transceiver's kind is that of its m-line in the local description.
    let mid = transceiver.mid().await.ok().flatten();
    let sdp = pc
        .local_description()
        .await
        .map(|d| d.sdp)
        .unwrap_or_default();
    let mut kind = RtpCodecKind::Video;
    let mut current = None;
    for line in sdp.lines() {
        if line.starts_with("m=audio") {
            current = Some(RtpCodecKind::Audio);
        } else if line.starts_with("m=") {
            current = Some(RtpCodecKind::Video);
        } else if let (Some(section_mid), Some(mid)) = (line.strip_prefix("a=mid:"), &mid) {
            if section_mid.trim() == mid {
                kind = current.unwrap_or(kind);
            }
        }
    }
    kind
}

/// Notes the keyframe requests the server sends for one of our tracks.
async fn watch_keyframe_requests(
    track: Arc<TrackLocalStaticRTP>,
    sent: Arc<Sent>,
    keyframes_wanted: Arc<Mutex<BTreeSet<u32>>>,
    ssrcs: Vec<u32>,
) {
    while let Some(event) = track.poll().await {
        if let TrackLocalEvent::OnRtcpPacket(packets) = event {
            for packet in packets
                .iter()
                .filter(|packet| is_keyframe_request(packet.as_ref()))
            {
                sent.keyframe_requests.fetch_add(1, Ordering::Relaxed);
                let named = packet.destination_ssrc();
                let mut wanted = keyframes_wanted
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner);
                wanted.extend(ssrcs.iter().filter(|ssrc| named.contains(ssrc)));
                if ssrcs.len() == 1 {
                    // One stream: any request is for it.
                    wanted.extend(&ssrcs);
                }
            }
        }
    }
}

/// The mid and rid header extensions (ids and values; the rid is set per layer) that a
/// simulcast track's packets must carry for the server to tell its layers apart; none for
/// other tracks.
async fn simulcast_extensions(local: &LocalTrack) -> anyhow::Result<Vec<(u8, Bytes)>> {
    let Some(transceiver) = local
        .transceiver
        .as_ref()
        .filter(|_| local.encodings.len() > 1)
    else {
        return Ok(Vec::new());
    };
    let mid = transceiver
        .mid()
        .await?
        .context("a negotiated track has a mid")?;
    let sender = transceiver
        .sender()
        .await?
        .context("a sending transceiver")?;
    let parameters = sender.get_parameters().await?;
    let id = |uri: &str| {
        parameters
            .rtp_parameters
            .header_extensions
            .iter()
            .find(|extension| extension.uri == uri)
            .and_then(|extension| u8::try_from(extension.id).ok())
            .with_context(|| format!("the answer did not accept {uri}"))
    };
    Ok(vec![
        (id(rtc::sdp::extmap::SDES_MID_URI)?, Bytes::from(mid)),
        (id(rtc::sdp::extmap::SDES_RTP_STREAM_ID_URI)?, Bytes::new()),
    ])
}

/// What the sending task of one stream shares with the peer.
struct Senders {
    sent: Arc<Sent>,
    keyframes_wanted: Arc<Mutex<BTreeSet<u32>>>,
    audio_level: Arc<AtomicU8>,
}

const OPUS_FRAME: Duration = Duration::from_millis(20);
const OPUS_PAYLOAD: usize = 120;
/// Magic at the start of every generated payload body.
const MAGIC: &[u8; 4] = b"VRM1";
/// Bytes before the filler: magic, packet number, send time.
const BODY_HEADER: usize = 4 + 8 + 8;

/// Generates a payload body: magic, packet number, send time (µs since the epoch), filler.
pub fn payload_body(number: u64, size: usize) -> Vec<u8> {
    let sent_at = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_micros() as u64;
    let mut body = Vec::with_capacity(size.max(BODY_HEADER));
    body.extend_from_slice(MAGIC);
    body.extend_from_slice(&number.to_be_bytes());
    body.extend_from_slice(&sent_at.to_be_bytes());
    body.extend((0..size.saturating_sub(BODY_HEADER)).map(|i| filler(number, i)));
    body
}

fn filler(number: u64, index: usize) -> u8 {
    (number as u8).wrapping_add(index as u8).wrapping_mul(31)
}

/// Reads a generated body back: its packet number and send time, if it is intact.
pub fn check_body(body: &[u8]) -> Option<(u64, u64)> {
    if body.len() < BODY_HEADER || &body[..4] != MAGIC {
        return None;
    }
    let number = u64::from_be_bytes(body[4..12].try_into().ok()?);
    let sent_at = u64::from_be_bytes(body[12..20].try_into().ok()?);
    let intact = body[BODY_HEADER..]
        .iter()
        .enumerate()
        .all(|(index, byte)| *byte == filler(number, index));
    intact.then_some((number, sent_at))
}

/// Sends generated media on one track until the task is aborted.
async fn send_media(
    kind: RtpCodecKind,
    encoding: Encoding,
    extensions: Vec<(u8, Bytes)>,
    track: Arc<TrackLocalStaticRTP>,
    senders: Senders,
    options: PeerOptions,
) {
    let Senders {
        sent,
        keyframes_wanted,
        audio_level,
    } = senders;
    let ssrc = encoding.ssrc;
    let video = kind == RtpCodecKind::Video;
    let (interval, clock_step) = if video {
        let interval = Duration::from_secs(1) / options.video_fps.max(1);
        (interval, 90_000 / options.video_fps.max(1))
    } else {
        (OPUS_FRAME, 960)
    };
    let mut ticker = tokio::time::interval(interval);
    let mut sequence_number: u16 = rand::random();
    let mut timestamp: u32 = rand::random();
    let mut number: u64 = encoding.layer << LAYER_SHIFT;
    let mut last_keyframe: Option<Instant> = None;
    loop {
        ticker.tick().await;
        let packets_per_frame = if video {
            options.video_packets_per_frame.max(1)
        } else {
            1
        };
        let asked = keyframes_wanted
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&ssrc);
        let keyframe = video
            && (asked
                || last_keyframe.is_none_or(|last| last.elapsed() >= options.keyframe_interval));
        if keyframe {
            last_keyframe = Some(Instant::now());
            sent.keyframes.fetch_add(1, Ordering::Relaxed);
        }
        for index in 0..packets_per_frame {
            let (payload_type, payload) = if video {
                // VP8 descriptor: S bit on the first packet of the frame, partition 0; then the
                // frame header's inverse key bit.
                let mut payload = vec![if index == 0 { 0x10 } else { 0x00 }, u8::from(!keyframe)];
                payload.extend(payload_body(number, encoding.packet_size.saturating_sub(2)));
                (Codec::Vp8.payload_type(), payload)
            } else {
                (
                    Codec::Opus.payload_type(),
                    payload_body(number, OPUS_PAYLOAD),
                )
            };
            let mut packet = rtp::Packet {
                header: rtp::Header {
                    version: 2,
                    marker: index + 1 == packets_per_frame,
                    payload_type,
                    sequence_number,
                    timestamp,
                    ssrc,
                    ..Default::default()
                },
                payload: Bytes::from(payload),
            };
            for (id, value) in &extensions {
                if packet.header.set_extension(*id, value.clone()).is_err() {
                    return;
                }
            }
            let written = if video {
                track.write_rtp(packet).await
            } else {
                let level = audio_level.load(Ordering::Relaxed);
                let extension = HeaderExtension::AudioLevel(AudioLevelExtension {
                    level,
                    voice: level < SILENCE,
                });
                track.write_rtp_with_extensions(packet, &[extension]).await
            };
            if written.is_err() {
                return;
            }
            sent.packets.fetch_add(1, Ordering::Relaxed);
            sequence_number = sequence_number.wrapping_add(1);
            number += 1;
        }
        timestamp = timestamp.wrapping_add(clock_step);
    }
}

/// One packet as it arrived, for [`account`].
struct Arrival<'a> {
    kind: Option<RtpCodecKind>,
    stream_id: &'a Option<String>,
    bytes: usize,
    keyframe: bool,
    /// Its packet number and send time, when the payload is intact.
    checked: Option<(u64, u64)>,
    /// Its RTP sequence number.
    sequence: u16,
    /// Since the peer joined.
    now: Duration,
}

/// Counts one packet of `track_id`. Returns whether to NACK it, as if it were lost, to see it
/// retransmitted (a retransmission is counted apart, not as a packet).
fn account(state: &mut PeerState, track_id: &TrackId, arrival: Arrival<'_>) -> bool {
    let nack_this = state.nack_next.remove(track_id);
    let received = state.received.entry(track_id.clone()).or_default();
    let number = arrival.checked.map(|(number, _)| number);
    if number.is_some() && received.nacked == number {
        received.nacked = None;
        received.retransmitted += 1;
        return false;
    }
    received.kind = arrival.kind;
    received.stream_id.clone_from(arrival.stream_id);
    if received
        .last_sequence
        .is_some_and(|last| arrival.sequence != last.wrapping_add(1))
    {
        received.sequence_breaks += 1;
    }
    received.last_sequence = Some(arrival.sequence);
    if let (Some(RtpCodecKind::Video), Some((number, _))) = (arrival.kind, arrival.checked) {
        let layer = layer_of_number(number);
        let last = received.layer_changes.last().map(|(layer, _)| *layer);
        if last != Some(layer) {
            received.layer_changes.push((layer, arrival.keyframe));
        }
        *received.layers.entry(layer).or_default() += 1;
    }
    received.packets += 1;
    received.bytes += arrival.bytes as u64;
    received.first_packet.get_or_insert(arrival.now);
    if arrival.keyframe {
        received.keyframes += 1;
        received.first_keyframe.get_or_insert(arrival.now);
    }
    match arrival.checked {
        Some((number, sent_at)) => {
            received.highest_number = received.highest_number.max(Some(number));
            received.lowest_number = Some(
                received
                    .lowest_number
                    .map_or(number, |lowest| lowest.min(number)),
            );
            let now_us = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default()
                .as_micros() as u64;
            received.latencies_us.push(now_us.saturating_sub(sent_at));
        }
        None => received.corrupt += 1,
    }
    let nack = nack_this && number.is_some();
    if nack {
        received.nacked = number;
    }
    nack
}

/// How often a receiver without a decodable picture asks again, as browsers do.
const KEYFRAME_REQUEST_INTERVAL: Duration = Duration::from_millis(300);

/// Counts, checks and times what arrives on one remote track.
async fn receive_track(
    track: Arc<dyn TrackRemote>,
    pc: Arc<dyn PeerConnection>,
    state: Arc<Mutex<PeerState>>,
    joined_at: Instant,
) {
    let mut track_id: Option<TrackId> = None;
    let mut kind = None;
    let mut stream_id = None;
    let mut keyframe_seen = false;
    let mut last_request: Option<Instant> = None;
    while let Some(event) = track.poll().await {
        match event {
            TrackRemoteEvent::OnOpen(init) => {
                let transceiver_id = RTCRtpTransceiverId::from(init.receiver_id);
                for transceiver in pc.get_transceivers().await {
                    if transceiver.id() == transceiver_id {
                        let mid = transceiver.mid().await.ok().flatten();
                        let state = state.lock().unwrap_or_else(PoisonError::into_inner);
                        track_id = mid.and_then(|mid| state.mid_to_track_id.get(&mid).cloned());
                    }
                }
                kind = Some(track.kind().await);
                stream_id = init.stream_ids.first().cloned();
            }
            TrackRemoteEvent::OnRtpPacket(packet) => {
                let Some(track_id) = &track_id else { continue };
                let video = kind == Some(RtpCodecKind::Video);
                let body = if video {
                    packet.payload.get(2..)
                } else {
                    packet.payload.get(..)
                };
                let checked = body.and_then(check_body);
                let keyframe = video
                    && packet.payload.get(1).is_some_and(|header| header & 1 == 0)
                    && packet.payload.first().is_some_and(|d| d & 0x10 != 0);
                keyframe_seen |= keyframe;
                // Like a browser, ask for a keyframe while video cannot be decoded yet.
                if video
                    && !keyframe_seen
                    && last_request.is_none_or(|last| last.elapsed() >= KEYFRAME_REQUEST_INTERVAL)
                {
                    last_request = Some(Instant::now());
                    let pli = PictureLossIndication {
                        sender_ssrc: 0,
                        media_ssrc: packet.header.ssrc,
                    };
                    let _ = track.write_rtcp(vec![Box::new(pli)]).await;
                }
                let now = joined_at.elapsed();
                let nack = account(
                    &mut state.lock().unwrap_or_else(PoisonError::into_inner),
                    track_id,
                    Arrival {
                        kind,
                        stream_id: &stream_id,
                        bytes: packet.payload.len(),
                        keyframe,
                        checked,
                        sequence: packet.header.sequence_number,
                        now,
                    },
                );
                if nack {
                    let nack = TransportLayerNack {
                        sender_ssrc: 0,
                        media_ssrc: packet.header.ssrc,
                        nacks: vec![NackPair {
                            packet_id: packet.header.sequence_number,
                            lost_packets: 0,
                        }],
                    };
                    let _ = track.write_rtcp(vec![Box::new(nack)]).await;
                }
            }
            _ => {}
        }
    }
}

/// What a peer connection reports to its owner.
enum ConnectionEvent {
    /// A local ICE candidate, as `candidate:…`.
    LocalCandidate(String),
    /// A remote track started (its first packet arrived).
    Track(Arc<dyn TrackRemote>),
}

/// Sends the connection's events to a channel. The callbacks run on the connection's driver
/// task, so they only hand over; the owner's task does the work.
struct EventsToChannel(mpsc::UnboundedSender<ConnectionEvent>);

#[async_trait::async_trait]
impl PeerConnectionEventHandler for EventsToChannel {
    async fn on_ice_candidate(&self, event: RTCPeerConnectionIceEvent) {
        if let Ok(init) = event.candidate.to_json() {
            let _ = self.0.send(ConnectionEvent::LocalCandidate(init.candidate));
        }
    }

    async fn on_track(&self, track: Arc<dyn TrackRemote>) {
        let _ = self.0.send(ConnectionEvent::Track(track));
    }
}

/// A local track to send RTP on, in `codec`, with its own SSRC per encoding (three with rids
/// for simulcast): without explicit SSRCs the sender would pick ones this track never learns,
/// and without a codec the sender would not be bound to the interceptors (no NACK responses,
/// no sender reports). Tracks with the same `stream_id` share an `a=msid` stream.
fn rtp_track(
    stream_id: String,
    track_id: String,
    kind: RtpCodecKind,
    encodings: &[Encoding],
    codec: RTCRtpCodec,
) -> Arc<TrackLocalStaticRTP> {
    let encodings = encodings
        .iter()
        .map(|encoding| RTCRtpEncodingParameters {
            rtp_coding_parameters: RTCRtpCodingParameters {
                rid: encoding.rid.unwrap_or_default().to_owned(),
                ssrc: Some(encoding.ssrc),
                ..Default::default()
            },
            active: true,
            codec: codec.clone(),
            ..Default::default()
        })
        .collect();
    Arc::new(TrackLocalStaticRTP::new(MediaStreamTrack::new(
        stream_id,
        track_id.clone(),
        track_id,
        kind,
        encodings,
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payload_bodies_check_out_and_catch_corruption() {
        let body = payload_body(1234, 300);
        assert_eq!(body.len(), 300);
        let (number, _) = check_body(&body).expect("intact");
        assert_eq!(number, 1234);
        let mut flipped = body.clone();
        flipped[200] ^= 1;
        assert_eq!(check_body(&flipped), None);
        assert_eq!(check_body(&body[..10]), None);
    }
}
