//! A room: one task owns its peers, their tracks and every negotiation, and receives messages
//! from the sockets (media events) and the peers' endpoints (answers, candidates, failures).
//! Media never passes through here: the room only wires which endpoint sends which track.
//!
//! The room also keeps the per-peer bounds that depend on its state (tracks and m-lines of an
//! offer, candidates) and the signaling deadline (an offer soon after `offerData`), and survives
//! its own bugs: a panic while handling a peer's message removes that peer with an `error`,
//! and only if that fails too does the whole room close, telling every peer.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use shared::client_event::{SdpOffer, SimulcastLayer, UpdateTrackMetadata};
use shared::metadata;
use shared::server_event::{
    ChatHistory, ChatMessage, EncodingSwitched, ErrorMessage, OfferData, PeerAccepted, PeerInfo,
    PeerJoined, PeerLeft, PeerUpdated, PeerWithTracks, SdpAnswer, ServerCandidate, TrackUpdated,
    TracksAdded, TracksRemoved, TracksTypes, VadNotification, VadStatus,
};
use shared::{ClientEvent, Metadata, PeerId, RoomId, ServerEvent, TrackId};
use thiserror::Error;
use tokio::sync::{mpsc, oneshot};
use tokio::time::{sleep_until, Instant};

use crate::access::JoinSecret;
use crate::cluster::Cluster;
use crate::limits::{LimitExceeded, Limits, QuotaGuard, CHAT_NAME_CHARS};
use crate::media::codec::MediaKind;
use crate::media::engine::{
    EndpointBusy, EndpointEvent, EndpointHandle, EndpointReport, MediaEngine, Negotiation, Reports,
    RoomMedia, Subscription,
};
use crate::media::sdp::{self, Direction};
use crate::signaling::outbox::Outbox;
use crate::test_hooks::{PanicSite, TestHooks};
use crate::turn::TurnServers;

/// Messages a room task receives.
pub enum RoomMessage {
    /// A peer's media `join`, holding its seat among the server's peers; the reply says
    /// whether it is in.
    Join {
        peer_id: PeerId,
        metadata: Metadata,
        outbox: Outbox,
        seat: QuotaGuard,
        reply: oneshot::Sender<Result<(), JoinRefused>>,
    },
    /// A media event from a joined peer (`leave` also when its socket or channel closed).
    Event { peer_id: PeerId, event: ClientEvent },
}

#[derive(Debug, Clone, Error, PartialEq, Eq)]
pub enum JoinRefused {
    #[error("the room is full: it holds its limit of {0} peers (--max-peers-per-room)")]
    Full(usize),
    #[error("the server is full: it holds its limit of {0} peers (--max-peers-total)")]
    ServerFull(usize),
    #[error("the server has its limit of {0} rooms open (--max-rooms)")]
    TooManyRooms(usize),
    #[error("the room is not available, try again")]
    Unavailable,
    #[error("this peer is already in the room")]
    AlreadyJoined,
}

/// What every room of the server shares.
pub struct RoomSettings {
    pub limits: Arc<Limits>,
    /// The media workers rooms are placed on.
    pub media: Arc<MediaEngine>,
    pub test_hooks: Option<TestHooks>,
    /// The TURN servers and credentials each peer is handed.
    pub turn: TurnServers,
    /// With access control on, what checks join tokens.
    pub join_secret: Option<JoinSecret>,
    /// With `--redis`, the cluster this node is part of.
    pub cluster: Option<Cluster>,
}

/// The way to a room's task.
#[derive(Clone)]
pub struct RoomHandle {
    tx: mpsc::Sender<RoomMessage>,
    pub generation: u64,
}

impl RoomHandle {
    /// A handle and the mailbox it fills.
    pub(crate) fn new(generation: u64) -> (RoomHandle, Mailbox) {
        let (tx, mailbox) = mpsc::channel(MAILBOX_CAPACITY);
        (RoomHandle { tx, generation }, mailbox)
    }

    pub async fn send(&self, message: RoomMessage) -> Result<(), RoomClosed> {
        self.tx.send(message).await.map_err(|_| RoomClosed)
    }

    pub fn is_closed(&self) -> bool {
        self.tx.is_closed()
    }
}

#[derive(Debug)]
pub struct RoomClosed;

/// Messages waiting for a room; senders wait when it is full, which slows a flooding socket.
const MAILBOX_CAPACITY: usize = 1024;

pub(crate) type Mailbox = mpsc::Receiver<RoomMessage>;

/// Starts the task of room `id`; `open` is its place among the server's open rooms, and
/// `on_close` runs when the room has closed to new joins.
pub fn spawn(
    id: RoomId,
    generation: u64,
    open: QuotaGuard,
    settings: Arc<RoomSettings>,
    on_close: impl FnOnce() + Send + 'static,
) -> RoomHandle {
    let (handle, mailbox) = RoomHandle::new(generation);
    let (room, reports) = Room::new(id, settings);
    tokio::spawn(async move {
        room.run(mailbox, reports, on_close).await;
        drop(open);
    });
    handle
}

pub(crate) struct Room {
    id: RoomId,
    settings: Arc<RoomSettings>,
    /// Given to endpoints, so they can report to the room.
    reports: Reports,
    /// The media worker the room is placed on.
    media: RoomMedia,
    peers: BTreeMap<PeerId, Peer>,
    tracks: BTreeMap<TrackId, Track>,
    /// The last `--chat-history` chat messages, oldest first, for those who join later.
    chat: VecDeque<ChatMessage>,
}

struct Peer {
    metadata: Metadata,
    outbox: Outbox,
    /// The peer's place among the server's peers, given back when it is dropped.
    _seat: QuotaGuard,
    /// The peer's media connection, made by its first offer: a peer that never offers holds
    /// no media resources.
    endpoint: Option<EndpointHandle>,
    /// Candidates that came before the endpoint.
    early_candidates: Vec<String>,
    /// Candidates since the last offer.
    candidates: usize,
    /// The tracks this peer publishes, by the mid it sends them on.
    published: BTreeMap<String, TrackId>,
    /// Others' tracks this peer has been told about (`peerAccepted`, `tracksAdded`).
    known: BTreeSet<TrackId>,
    /// Others' tracks that have had a receiving slot in this peer's connection, ever.
    slotted: BTreeMap<TrackId, MediaKind>,
    /// Others' tracks this peer's last answer sends, by mid.
    receiving: BTreeMap<String, TrackId>,
    negotiation: NegotiationState,
    /// Something changed while a negotiation was running: run another one after it.
    renegotiate_after: bool,
}

/// One negotiation at a time per peer (as the reference does).
enum NegotiationState {
    Idle,
    /// `offerData` went out listing these tracks' slots; the client's `sdpOffer` is due.
    AwaitingOffer {
        tracks: Vec<TrackId>,
        due: Instant,
    },
    /// The endpoint is answering the client's offer.
    AwaitingAnswer,
}

struct Track {
    owner: PeerId,
    kind: MediaKind,
    metadata: Metadata,
}

/// Why a peer is removed from the room (a bad offer, a limit, a failed connection), told to it
/// as an `error` event.
#[derive(Debug, Error)]
#[error("{0}")]
struct PeerFault(String);

impl From<LimitExceeded> for PeerFault {
    fn from(limit: LimitExceeded) -> Self {
        PeerFault(limit.to_string())
    }
}

impl From<EndpointBusy> for PeerFault {
    fn from(busy: EndpointBusy) -> Self {
        PeerFault(busy.to_string())
    }
}

/// How a peer leaves the room.
enum Removal {
    /// It asked to (`leave`), or its socket or channel closed.
    Left,
    /// Its socket is gone or fell too far behind: nothing more can be said to it.
    Unreachable,
    /// The server removes it, and tells it why.
    Fault(PeerFault),
}

impl Room {
    /// A room, and the queue its endpoints report to.
    pub(crate) fn new(
        id: RoomId,
        settings: Arc<RoomSettings>,
    ) -> (Room, mpsc::UnboundedReceiver<EndpointReport>) {
        let (reports, receiver) = mpsc::unbounded_channel();
        let media = settings.media.place_room();
        let room = Room {
            id,
            settings,
            reports,
            media,
            peers: BTreeMap::new(),
            tracks: BTreeMap::new(),
            chat: VecDeque::new(),
        };
        (room, receiver)
    }

    async fn run(
        mut self,
        mut mailbox: Mailbox,
        mut reports: mpsc::UnboundedReceiver<EndpointReport>,
        on_close: impl FnOnce(),
    ) {
        tracing::info!(room = %self.id, "room opened");
        loop {
            let deadline = self.next_deadline();
            tokio::select! {
                message = mailbox.recv() => match message {
                    Some(message) => self.handle(message),
                    None => break,
                },
                // The room holds a sender itself, so the queue never ends.
                Some(report) = reports.recv() => self.on_report(report),
                () = sleep_until(deadline.unwrap_or_else(Instant::now)), if deadline.is_some() => {
                    self.expire(Instant::now());
                }
            }
            if self.peers.is_empty() {
                break;
            }
        }
        // Forget the room first, so new joins make a new one; joins already queued here are
        // dropped unanswered, and their senders retry with that new room.
        on_close();
        mailbox.close();
        while mailbox.recv().await.is_some() {}
        tracing::info!(room = %self.id, "room closed");
    }

    pub(crate) fn handle(&mut self, message: RoomMessage) {
        match message {
            RoomMessage::Join {
                peer_id,
                metadata,
                outbox,
                seat,
                reply,
            } => {
                let joined = self
                    .guarded(&peer_id, |room| {
                        room.join(peer_id.clone(), metadata, outbox, seat)
                    })
                    .unwrap_or(Err(JoinRefused::Unavailable));
                let _ = reply.send(joined);
            }
            RoomMessage::Event { peer_id, event } => {
                if self.peers.contains_key(&peer_id) {
                    self.guarded(&peer_id, |room| room.on_event(&peer_id, event));
                } else {
                    tracing::debug!(peer = %peer_id, kind = event.kind(), "event from a peer not in the room");
                }
            }
        }
    }

    /// News from a peer's endpoint; stale when the peer has left since.
    pub(crate) fn on_report(&mut self, report: EndpointReport) {
        let EndpointReport { peer_id, event } = report;
        if self.peers.contains_key(&peer_id) {
            self.guarded(&peer_id, |room| room.on_endpoint_event(&peer_id, event));
        }
    }

    /// Runs `step` for `peer_id`, catching a panic: the peer is then removed with an `error`,
    /// and should even that fail, the room closes. `None` when `step` panicked.
    fn guarded<T>(&mut self, peer_id: &PeerId, step: impl FnOnce(&mut Room) -> T) -> Option<T> {
        let panic = match catch_unwind(AssertUnwindSafe(|| step(self))) {
            Ok(value) => return Some(value),
            Err(panic) => panic,
        };
        tracing::error!(room = %self.id, peer = %peer_id, panic = panic_text(&panic), "the room failed on a message of this peer; removing the peer");
        let fault = PeerFault("internal server error".to_owned());
        let removed = catch_unwind(AssertUnwindSafe(|| {
            self.remove_peer(peer_id, Removal::Fault(fault))
        }));
        if let Err(panic) = removed {
            tracing::error!(room = %self.id, panic = panic_text(&panic), "the room failed again; closing it");
            self.close_on_failure();
        }
        None
    }

    /// Ends the room after a failure it could not contain: every peer is told and removed.
    fn close_on_failure(&mut self) {
        let error = encode(&ServerEvent::Error(ErrorMessage {
            message: "internal server error: the room closed".to_owned(),
        }));
        for (peer_id, peer) in std::mem::take(&mut self.peers) {
            peer.outbox.push(&peer_id, &error);
            peer.outbox.removed(&peer_id);
        }
        self.tracks.clear();
    }

    /// When the next peer's deadline passes, if any.
    fn next_deadline(&self) -> Option<Instant> {
        self.peers
            .values()
            .filter_map(|peer| match peer.negotiation {
                NegotiationState::AwaitingOffer { due, .. } => Some(due),
                _ => None,
            })
            .min()
    }

    /// Removes the peers whose offer is overdue.
    pub(crate) fn expire(&mut self, now: Instant) {
        let overdue: Vec<PeerId> = self
            .peers
            .iter()
            .filter(|(_, peer)| {
                matches!(peer.negotiation, NegotiationState::AwaitingOffer { due, .. } if due <= now)
            })
            .map(|(id, _)| id.clone())
            .collect();
        for peer_id in overdue {
            let fault = PeerFault(format!(
                "no sdpOffer came within {:?} of offerData (--offer-timeout)",
                self.settings.limits.offer_timeout
            ));
            self.guarded(&peer_id, |room| {
                room.remove_peer(&peer_id, Removal::Fault(fault))
            });
        }
    }

    fn join(
        &mut self,
        peer_id: PeerId,
        metadata: Metadata,
        outbox: Outbox,
        seat: QuotaGuard,
    ) -> Result<(), JoinRefused> {
        if self.peers.contains_key(&peer_id) {
            // Its socket joins each room once; a second join would orphan the first's tracks.
            return Err(JoinRefused::AlreadyJoined);
        }
        let max_peers = self.settings.limits.max_peers_per_room;
        if self.peers.len() >= max_peers {
            return Err(JoinRefused::Full(max_peers));
        }
        let peers_in_room = self
            .peers
            .iter()
            .map(|(id, peer)| PeerWithTracks {
                id: id.clone(),
                metadata: peer.metadata.clone(),
                track_id_to_metadata: self.tracks_of(peer),
            })
            .collect();
        let known = self.tracks.keys().cloned().collect();
        self.peers.insert(
            peer_id.clone(),
            Peer {
                metadata: metadata.clone(),
                outbox,
                _seat: seat,
                endpoint: None,
                early_candidates: Vec::new(),
                candidates: 0,
                published: BTreeMap::new(),
                known,
                slotted: BTreeMap::new(),
                receiving: BTreeMap::new(),
                negotiation: NegotiationState::Idle,
                renegotiate_after: false,
            },
        );
        tracing::info!(room = %self.id, peer = %peer_id, peers = self.peers.len(), "peer joined");
        self.push(
            &peer_id,
            &ServerEvent::PeerAccepted(PeerAccepted {
                id: peer_id.clone(),
                peers_in_room,
            }),
        );
        let joined = ServerEvent::PeerJoined(PeerJoined {
            peer: PeerInfo {
                id: peer_id.clone(),
                metadata,
            },
        });
        self.broadcast(None, |_| true, &joined);
        if !self.chat.is_empty() {
            let messages = self.chat.iter().cloned().collect();
            self.push(
                &peer_id,
                &ServerEvent::ChatHistory(ChatHistory { messages }),
            );
        }
        if !self.tracks.is_empty() {
            self.renegotiate(&peer_id);
        }
        Ok(())
    }

    fn on_event(&mut self, peer_id: &PeerId, event: ClientEvent) {
        match event {
            ClientEvent::Leave => self.remove_peer(peer_id, Removal::Left),
            ClientEvent::RenegotiateTracks => self.renegotiate(peer_id),
            ClientEvent::SdpOffer(offer) => {
                if let Err(fault) = self.on_offer(peer_id, offer) {
                    self.remove_peer(peer_id, Removal::Fault(fault));
                }
            }
            ClientEvent::Candidate(candidate) => {
                // The browser signals the end of candidates with an empty one.
                if !candidate.candidate.is_empty() {
                    if let Err(fault) = self.add_candidate(peer_id, candidate.candidate) {
                        self.remove_peer(peer_id, Removal::Fault(fault));
                    }
                }
            }
            ClientEvent::UpdatePeerMetadata(update) => {
                self.update_peer_metadata(peer_id, update.metadata)
            }
            ClientEvent::UpdateTrackMetadata(update) => self.update_track_metadata(peer_id, update),
            ClientEvent::ChatMessage(chat) => self.chat(peer_id, chat.text),
            ClientEvent::Join(_) => {}
            ClientEvent::SetTargetTrackVariant(wish) => {
                if let Err(fault) = self.set_wish(peer_id, wish.track_id, wish.variant) {
                    self.remove_peer(peer_id, Removal::Fault(fault));
                }
            }
            ClientEvent::PrioritizeTrack(_)
            | ClientEvent::UnprioritizeTrack(_)
            | ClientEvent::PreferedVideoSizes(_) => {
                // Layers follow each subscriber's wishes (`setTargetTrackVariant`) instead.
                tracing::debug!(peer = %peer_id, kind = event.kind(), "ignored");
            }
        }
    }

    /// The peer wishes to receive another's video track in simulcast layer `layer`: its
    /// endpoint moves to it at the layer's next keyframe, and says so (`encodingSwitched`).
    fn set_wish(
        &mut self,
        peer_id: &PeerId,
        track_id: TrackId,
        layer: SimulcastLayer,
    ) -> Result<(), PeerFault> {
        let known = self
            .tracks
            .get(&track_id)
            .is_some_and(|track| track.kind == MediaKind::Video && &track.owner != peer_id);
        let endpoint = self
            .peers
            .get(peer_id)
            .and_then(|peer| peer.endpoint.as_ref());
        match endpoint {
            Some(endpoint) if known => endpoint.set_wish(track_id, layer).map_err(PeerFault::from),
            _ => {
                tracing::debug!(peer = %peer_id, track = %track_id, "a layer wish for no video it can receive");
                Ok(())
            }
        }
    }

    /// Keeps a chat message (the socket checked its size and rate) and sends it to everyone in
    /// the room, its sender included: the order all see is the room's.
    fn chat(&mut self, peer_id: &PeerId, text: String) {
        let peer = self
            .peers
            .get(peer_id)
            .expect("the caller checked the peer");
        let display_name = metadata::display_name(&peer.metadata)
            .unwrap_or_default()
            .chars()
            .take(CHAT_NAME_CHARS)
            .collect();
        let sent_at = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |since| since.as_millis() as u64);
        let message = ChatMessage {
            peer_id: peer_id.clone(),
            display_name,
            text,
            sent_at,
        };
        if self.chat.len() == self.settings.limits.chat_history {
            self.chat.pop_front();
        }
        if self.settings.limits.chat_history > 0 {
            self.chat.push_back(message.clone());
        }
        self.broadcast(None, |_| true, &ServerEvent::ChatMessage(message));
    }

    /// Hands a client candidate to the peer's endpoint, or keeps it until the endpoint exists;
    /// a peer sending more than its limit per offer is at fault.
    fn add_candidate(&mut self, peer_id: &PeerId, candidate: String) -> Result<(), PeerFault> {
        let max = self.settings.limits.max_candidates_per_peer;
        let peer = self
            .peers
            .get_mut(peer_id)
            .expect("the caller checked the peer");
        peer.candidates += 1;
        if peer.candidates > max {
            return Err(LimitExceeded::new(
                format!("ICE candidate number {}", peer.candidates),
                max,
                "candidates per offer",
                "max-candidates-per-peer",
            )
            .into());
        }
        match &peer.endpoint {
            Some(endpoint) => endpoint.add_candidate(candidate).map_err(PeerFault::from),
            None => {
                peer.early_candidates.push(candidate);
                Ok(())
            }
        }
    }

    /// Starts a negotiation with the peer, or queues one behind the running one.
    fn renegotiate(&mut self, peer_id: &PeerId) {
        let tracks = self.tracks_for(peer_id);
        let Some(peer) = self.peers.get_mut(peer_id) else {
            return;
        };
        if !matches!(peer.negotiation, NegotiationState::Idle) {
            peer.renegotiate_after = true;
            return;
        }
        peer.renegotiate_after = false;
        let mut offered = Vec::new();
        for (track_id, kind) in tracks {
            peer.slotted.entry(track_id.clone()).or_insert(kind);
            offered.push(track_id);
        }
        // Slots are never reused, so the counts only grow, as the client expects.
        let tracks_types = peer
            .slotted
            .values()
            .fold(TracksTypes::default(), |mut types, kind| {
                match kind {
                    MediaKind::Audio => types.audio += 1,
                    MediaKind::Video => types.video += 1,
                }
                types
            });
        peer.negotiation = NegotiationState::AwaitingOffer {
            tracks: offered,
            due: Instant::now() + self.settings.limits.offer_timeout,
        };
        let offer_data = ServerEvent::OfferData(OfferData {
            tracks_types,
            integrated_turn_servers: self.settings.turn.for_peer(peer_id, SystemTime::now()),
        });
        self.push(peer_id, &offer_data);
    }

    /// The tracks of other peers that `peer_id` should receive, with their kinds.
    fn tracks_for(&self, peer_id: &PeerId) -> Vec<(TrackId, MediaKind)> {
        self.tracks
            .iter()
            .filter(|(_, track)| &track.owner != peer_id)
            .map(|(id, track)| (id.clone(), track.kind))
            .collect()
    }

    fn on_offer(&mut self, peer_id: &PeerId, offer: SdpOffer) -> Result<(), PeerFault> {
        let published = published_tracks(peer_id, &offer, &self.settings.limits)?;
        let peer = self
            .peers
            .get_mut(peer_id)
            .expect("the caller checked the peer");
        let offered =
            match std::mem::replace(&mut peer.negotiation, NegotiationState::AwaitingAnswer) {
                NegotiationState::AwaitingOffer { tracks, .. } => tracks,
                // An offer nobody asked for: keep what the peer already receives.
                NegotiationState::Idle | NegotiationState::AwaitingAnswer => {
                    peer.receiving.values().cloned().collect()
                }
            };
        peer.candidates = 0;
        if peer.endpoint.is_none() {
            let endpoint = self
                .media
                .add_endpoint(peer_id.clone(), self.reports.clone())
                .map_err(PeerFault)?;
            peer.endpoint = Some(endpoint);
        }
        let early_candidates = std::mem::take(&mut peer.early_candidates);
        let old: BTreeSet<TrackId> = peer.published.values().cloned().collect();
        let new: BTreeSet<TrackId> = published.iter().map(|(_, (id, _))| id.clone()).collect();
        peer.published = published
            .iter()
            .map(|(mid, (id, _))| (mid.clone(), id.clone()))
            .collect();
        // Tracks the offer no longer sends stop before anything can fail: a peer removed
        // below takes only the tracks it now publishes with it.
        let removed: BTreeSet<TrackId> = old.difference(&new).cloned().collect();
        if !removed.is_empty() {
            self.announce_removed(peer_id, &removed);
            self.forget_tracks(&removed);
        }
        if !self.peers.contains_key(peer_id) {
            // Its outbox overflowed on news of a peer that could not be told of the removal.
            return Ok(());
        }

        for (track_id, kind) in published.values() {
            let metadata = offer
                .track_id_to_track_metadata
                .get(track_id)
                .cloned()
                .unwrap_or_else(|| Metadata::Object(Default::default()));
            let track = self
                .tracks
                .entry(track_id.clone())
                .or_insert_with(|| Track {
                    owner: peer_id.clone(),
                    kind: *kind,
                    metadata: metadata.clone(),
                });
            track.metadata = metadata;
        }

        let negotiation = Negotiation {
            offer: offer.sdp_offer.sdp,
            publish: published
                .iter()
                .map(|(mid, (track_id, kind))| (mid.clone(), track_id.clone(), *kind))
                .collect(),
            subscribe: offered
                .iter()
                .filter_map(|track_id| {
                    let track = self.tracks.get(track_id)?;
                    Some(Subscription {
                        track_id: track_id.clone(),
                        kind: track.kind,
                        stream_id: track.owner.to_string(),
                    })
                })
                .collect(),
        };
        let endpoint = self.peers[peer_id].endpoint.as_ref().expect("made above");
        endpoint.negotiate(negotiation)?;
        for candidate in early_candidates {
            endpoint.add_candidate(candidate)?;
        }

        let added: Vec<&TrackId> = new.difference(&old).collect();
        if !added.is_empty() {
            let tracks_added = ServerEvent::TracksAdded(TracksAdded {
                peer_id: peer_id.clone(),
                track_id_to_metadata: self.tracks_of(&self.peers[peer_id]),
            });
            for (other_id, other) in self.peers.iter_mut() {
                if other_id != peer_id {
                    other.known.extend(added.iter().map(|id| (*id).clone()));
                }
            }
            self.broadcast(Some(peer_id), |_| true, &tracks_added);
        }
        if !added.is_empty() || !removed.is_empty() {
            self.renegotiate_all_but(Some(peer_id));
        }
        Ok(())
    }

    /// Drops tracks that stopped: from the room, and from what each peer receives and knows.
    fn forget_tracks(&mut self, removed: &BTreeSet<TrackId>) {
        for track_id in removed {
            self.tracks.remove(track_id);
        }
        for peer in self.peers.values_mut() {
            peer.receiving.retain(|_, id| !removed.contains(id));
            peer.known.retain(|id| !removed.contains(id));
        }
    }

    /// Renegotiates every peer but `except`: what they receive changed.
    fn renegotiate_all_but(&mut self, except: Option<&PeerId>) {
        let peers: Vec<PeerId> = self
            .peers
            .keys()
            .filter(|id| Some(*id) != except)
            .cloned()
            .collect();
        for peer_id in peers {
            self.renegotiate(&peer_id);
        }
    }

    /// Tells each other peer which of `removed` it was receiving (only those: the client looks
    /// each one's mid up and fails on a track it has no mid for).
    fn announce_removed(&mut self, owner: &PeerId, removed: &BTreeSet<TrackId>) {
        let mut unreachable = Vec::new();
        for (peer_id, peer) in &self.peers {
            let track_ids: Vec<TrackId> = peer
                .receiving
                .values()
                .filter(|id| removed.contains(*id))
                .cloned()
                .collect();
            if peer_id == owner || track_ids.is_empty() {
                continue;
            }
            let event = encode(&ServerEvent::TracksRemoved(TracksRemoved {
                peer_id: owner.clone(),
                track_ids,
            }));
            if !peer.outbox.push(peer_id, &event) {
                unreachable.push(peer_id.clone());
            }
        }
        self.drop_unreachable(unreachable);
    }

    fn on_endpoint_event(&mut self, peer_id: &PeerId, event: EndpointEvent) {
        match event {
            EndpointEvent::Answer { sdp, sending } => {
                let peer = self
                    .peers
                    .get_mut(peer_id)
                    .expect("the caller checked the peer");
                peer.negotiation = NegotiationState::Idle;
                // A track may have stopped while the endpoint answered: the client still hears
                // of its mid, but the peer no longer receives it.
                let tracks = &self.tracks;
                peer.receiving = sending
                    .iter()
                    .filter(|(_, id)| tracks.contains_key(*id))
                    .map(|(mid, id)| (mid.clone(), id.clone()))
                    .collect();
                let mut mid_to_track_id = sending;
                mid_to_track_id.extend(peer.published.clone());
                self.push(
                    peer_id,
                    &ServerEvent::SdpAnswer(SdpAnswer::new(sdp, mid_to_track_id)),
                );
                if self
                    .peers
                    .get(peer_id)
                    .is_some_and(|peer| peer.renegotiate_after)
                {
                    self.renegotiate(peer_id);
                }
            }
            EndpointEvent::Candidate(candidate) => {
                self.push(
                    peer_id,
                    &ServerEvent::Candidate(ServerCandidate::bundled(candidate)),
                );
            }
            EndpointEvent::Failed(reason) => {
                self.remove_peer(peer_id, Removal::Fault(PeerFault(reason)))
            }
            EndpointEvent::LayerSwitched { track_id, layer } => {
                if let Some(owner) = self.tracks.get(&track_id).map(|track| track.owner.clone()) {
                    let switched = ServerEvent::EncodingSwitched(EncodingSwitched {
                        peer_id: owner,
                        track_id,
                        encoding: layer,
                    });
                    self.push(peer_id, &switched);
                }
            }
            EndpointEvent::VoiceActivity { track_id, speaking } => {
                // A track gone meanwhile has nobody left to highlight.
                if self.tracks.contains_key(&track_id) {
                    let status = if speaking {
                        VadStatus::Speech
                    } else {
                        VadStatus::Silence
                    };
                    let event = ServerEvent::VadNotification(VadNotification { track_id, status });
                    self.broadcast(None, |_| true, &event);
                }
            }
        }
    }

    fn update_peer_metadata(&mut self, peer_id: &PeerId, metadata: Metadata) {
        if self.settings.test_hooks.is_some() {
            self.inject_panic(peer_id, &metadata);
        }
        let peer = self
            .peers
            .get_mut(peer_id)
            .expect("the caller checked the peer");
        peer.metadata = metadata.clone();
        // membrane-webrtc-js 0.3 wipes the track map of a peer it gets `peerUpdated` for, so
        // the news waits for peers without tracks (others learn it from `peerAccepted`).
        if peer.published.is_empty() {
            let updated = ServerEvent::PeerUpdated(PeerUpdated {
                peer_id: peer_id.clone(),
                metadata,
            });
            self.broadcast(Some(peer_id), |_| true, &updated);
        }
    }

    /// The test hook: panics here, or has the peer's endpoint panic, when the metadata asks.
    fn inject_panic(&self, peer_id: &PeerId, metadata: &Metadata) {
        match TestHooks::panic_asked(metadata) {
            Some(PanicSite::Room) => panic!("test hook: a panic in room {}", self.id),
            Some(PanicSite::Endpoint) => {
                if let Some(endpoint) = &self.peers[peer_id].endpoint {
                    endpoint.inject_panic();
                }
            }
            None => {}
        }
    }

    fn update_track_metadata(&mut self, peer_id: &PeerId, update: UpdateTrackMetadata) {
        let Some(track) = self.tracks.get_mut(&update.track_id) else {
            // A track the peer just stopped, most likely: nothing to update.
            tracing::debug!(peer = %peer_id, track = %update.track_id, "metadata update for no track");
            return;
        };
        if &track.owner != peer_id {
            let fault = PeerFault(format!("track {} belongs to another peer", update.track_id));
            return self.remove_peer(peer_id, Removal::Fault(fault));
        }
        track.metadata = update.track_metadata.clone();
        let updated = ServerEvent::TrackUpdated(TrackUpdated {
            peer_id: peer_id.clone(),
            track_id: update.track_id.clone(),
            metadata: update.track_metadata,
        });
        // Only to peers that know the track: the client fails on an unknown one.
        self.broadcast(
            Some(peer_id),
            |peer| peer.known.contains(&update.track_id),
            &updated,
        );
    }

    /// Removes a peer: its tracks stop, the others hear `peerLeft` and renegotiate. A peer
    /// removed by the server is told so (`error` for a fault), and its socket learns it left.
    fn remove_peer(&mut self, peer_id: &PeerId, removal: Removal) {
        let Some(peer) = self.peers.remove(peer_id) else {
            return;
        };
        match &removal {
            Removal::Left => {
                tracing::info!(room = %self.id, peer = %peer_id, peers = self.peers.len(), "peer left")
            }
            Removal::Unreachable => {
                tracing::warn!(room = %self.id, peer = %peer_id, "removing peer: its socket is gone or too far behind");
                peer.outbox.removed(peer_id);
            }
            Removal::Fault(fault) => {
                tracing::warn!(room = %self.id, peer = %peer_id, %fault, "removing peer");
                let error = ServerEvent::Error(ErrorMessage {
                    message: fault.to_string(),
                });
                peer.outbox.push(peer_id, &encode(&error));
                peer.outbox.removed(peer_id);
            }
        }
        // Dropping the peer's endpoint handle (with `peer`) closes its connection.
        let removed: BTreeSet<TrackId> = peer.published.into_values().collect();
        self.forget_tracks(&removed);
        let left = ServerEvent::PeerLeft(PeerLeft {
            peer_id: peer_id.clone(),
        });
        self.broadcast(None, |_| true, &left);
        if !removed.is_empty() {
            self.renegotiate_all_but(None);
        }
    }

    /// The active tracks a peer publishes, with their metadata.
    fn tracks_of(&self, peer: &Peer) -> BTreeMap<TrackId, Metadata> {
        peer.published
            .values()
            .filter_map(|id| Some((id.clone(), self.tracks.get(id)?.metadata.clone())))
            .collect()
    }

    fn push(&mut self, peer_id: &PeerId, event: &ServerEvent) {
        let delivered = self
            .peers
            .get(peer_id)
            .is_some_and(|peer| peer.outbox.push(peer_id, &encode(event)));
        if !delivered {
            self.drop_unreachable(vec![peer_id.clone()]);
        }
    }

    /// Sends `event`, encoded once, to each peer but `except` that `to` picks.
    fn broadcast(
        &mut self,
        except: Option<&PeerId>,
        to: impl Fn(&Peer) -> bool,
        event: &ServerEvent,
    ) {
        let data = encode(event);
        let unreachable = self
            .peers
            .iter()
            .filter(|(peer_id, peer)| Some(*peer_id) != except && to(peer))
            .filter(|(peer_id, peer)| !peer.outbox.push(peer_id, &data))
            .map(|(peer_id, _)| peer_id.clone())
            .collect();
        self.drop_unreachable(unreachable);
    }

    /// Removes peers whose socket is gone or cannot keep up.
    fn drop_unreachable(&mut self, peers: Vec<PeerId>) {
        for peer_id in peers {
            self.remove_peer(&peer_id, Removal::Unreachable);
        }
    }
}

impl Room {
    /// What must hold between any two messages, for tests and the fuzzer: every track has an
    /// owner in the room who publishes it, peers only receive and know tracks that exist, and
    /// the limits on peers, tracks and chat history hold.
    pub(crate) fn check_invariants(&self) -> Result<(), String> {
        let limits = &self.settings.limits;
        if self.peers.len() > limits.max_peers_per_room {
            return Err(format!("{} peers in the room", self.peers.len()));
        }
        for (track_id, track) in &self.tracks {
            let published = self
                .peers
                .get(&track.owner)
                .is_some_and(|owner| owner.published.values().any(|id| id == track_id));
            if !published {
                return Err(format!("track {track_id} has no owner publishing it"));
            }
        }
        for (peer_id, peer) in &self.peers {
            if peer.published.len() > limits.max_tracks_per_peer {
                return Err(format!(
                    "{peer_id} publishes {} tracks",
                    peer.published.len()
                ));
            }
            if let Some(id) = peer
                .published
                .values()
                .find(|id| !self.tracks.contains_key(*id))
            {
                return Err(format!("{peer_id} publishes {id}, which the room lacks"));
            }
            let unknown = peer
                .receiving
                .values()
                .chain(&peer.known)
                .find(|id| !self.tracks.contains_key(*id));
            if let Some(id) = unknown {
                return Err(format!(
                    "{peer_id} receives or knows {id}, which the room lacks"
                ));
            }
            if peer.candidates > limits.max_candidates_per_peer + 1 {
                return Err(format!("{peer_id} has {} candidates", peer.candidates));
            }
        }
        if self.chat.len() > limits.chat_history {
            return Err(format!("the room keeps {} chat messages", self.chat.len()));
        }
        Ok(())
    }
}

/// An event as the JSON string a `mediaEvent` frame carries, shared by all its recipients.
fn encode(event: &ServerEvent) -> Arc<str> {
    Arc::from(event.encode())
}

/// What a caught panic said.
fn panic_text(panic: &Box<dyn std::any::Any + Send>) -> &str {
    panic
        .downcast_ref::<String>()
        .map(String::as_str)
        .or_else(|| panic.downcast_ref::<&str>().copied())
        .unwrap_or("(no message)")
}

/// The tracks an offer publishes, by mid: its `sendonly` m-lines, each named in `midToTrackId`
/// by a track id of this peer and offering a codec the SFU can forward, within the limits on
/// m-lines, tracks and track metadata.
fn published_tracks(
    peer_id: &PeerId,
    offer: &SdpOffer,
    limits: &Limits,
) -> Result<BTreeMap<String, (TrackId, MediaKind)>, PeerFault> {
    let sections = sdp::media_sections(&offer.sdp_offer.sdp);
    if sections.len() > limits.max_mlines_per_offer {
        return Err(LimitExceeded::new(
            format!("an offer of {} m-lines", sections.len()),
            limits.max_mlines_per_offer,
            "m-lines",
            "max-mlines-per-offer",
        )
        .into());
    }
    let mut published = BTreeMap::new();
    for (index, section) in sections.into_iter().enumerate() {
        let Some(kind) = section.kind else { continue };
        let mid = section.mid.clone().unwrap_or_else(|| index.to_string());
        match section.direction {
            Direction::RecvOnly | Direction::Inactive => continue,
            Direction::SendRecv => {
                return Err(PeerFault(format!(
                "m-line {mid} is sendrecv: offer your tracks sendonly and receiving slots recvonly"
            )))
            }
            Direction::SendOnly => {}
        }
        let track_id = offer.mid_to_track_id.get(&mid).ok_or_else(|| {
            PeerFault(format!(
                "m-line {mid} sends a track missing from midToTrackId"
            ))
        })?;
        if !track_id.is_owned_by(peer_id) {
            return Err(PeerFault(format!(
                "track {track_id} belongs to another peer"
            )));
        }
        if !section.has_forwardable_codec() {
            return Err(PeerFault(format!(
                "m-line {mid} offers no codec videoroom can forward (Opus for audio, VP8 or H264 for video)"
            )));
        }
        if let Some(metadata) = offer.track_id_to_track_metadata.get(track_id) {
            limits.check_track_metadata(metadata)?;
        }
        published.insert(mid, (track_id.clone(), kind));
        if published.len() > limits.max_tracks_per_peer {
            return Err(LimitExceeded::new(
                "an offer of more tracks".to_owned(),
                limits.max_tracks_per_peer,
                "tracks",
                "max-tracks-per-peer",
            )
            .into());
        }
    }
    Ok(published)
}
