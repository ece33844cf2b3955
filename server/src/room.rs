//! A room: one task owns its peers, their tracks and every negotiation, and receives messages
//! from the sockets (media events) and the peers' endpoints (answers, candidates, failures).
//! Media never passes through here: the room only wires which endpoint sends which track.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use shared::client_event::{SdpOffer, UpdateTrackMetadata};
use shared::server_event::{
    ErrorMessage, OfferData, PeerAccepted, PeerInfo, PeerJoined, PeerLeft, PeerUpdated,
    PeerWithTracks, SdpAnswer, ServerCandidate, TrackUpdated, TracksAdded, TracksRemoved,
    TracksTypes,
};
use shared::{ClientEvent, Metadata, PeerId, RoomId, ServerEvent, TrackId};
use thiserror::Error;
use tokio::sync::{mpsc, oneshot};

use crate::endpoint::{EndpointEvent, EndpointHandle, Negotiation, RtcSettings, Subscription};
use crate::forward::Fanout;
use crate::registry::{Mailbox, Registry};
use crate::sdp::{self, Direction, MediaKind};
use crate::socket::Outbox;

/// Messages a room task receives.
pub enum RoomMessage {
    /// A peer's media `join`; the reply says whether it is in.
    Join {
        peer_id: PeerId,
        metadata: Metadata,
        outbox: Outbox,
        reply: oneshot::Sender<Result<(), JoinRefused>>,
    },
    /// A media event from a joined peer (`leave` also when its socket or channel closed).
    Event {
        peer_id: PeerId,
        event: ClientEvent,
    },
    /// News from a peer's endpoint.
    Endpoint {
        peer_id: PeerId,
        event: EndpointEvent,
    },
    CountPeers {
        reply: oneshot::Sender<usize>,
    },
}

#[derive(Debug, Clone, Error, PartialEq, Eq)]
pub enum JoinRefused {
    #[error("the room is full ({0} peers)")]
    Full(usize),
    #[error("the room is not available, try again")]
    Unavailable,
}

/// What every room of the server shares.
pub struct RoomSettings {
    pub max_peers: usize,
    pub rtc: Arc<RtcSettings>,
}

/// The way to a room's task.
#[derive(Clone)]
pub struct RoomHandle {
    tx: mpsc::Sender<RoomMessage>,
    pub generation: u64,
}

impl RoomHandle {
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

pub fn spawn(
    id: RoomId,
    generation: u64,
    registry: Registry,
    settings: Arc<RoomSettings>,
) -> RoomHandle {
    let (tx, mailbox) = mpsc::channel(MAILBOX_CAPACITY);
    let handle = RoomHandle { tx, generation };
    let room = Room {
        id,
        settings,
        handle: handle.clone(),
        peers: BTreeMap::new(),
        tracks: BTreeMap::new(),
    };
    tokio::spawn(room.run(mailbox, registry));
    handle
}

struct Room {
    id: RoomId,
    settings: Arc<RoomSettings>,
    /// Given to endpoints, so they can report to the room.
    handle: RoomHandle,
    peers: BTreeMap<PeerId, Peer>,
    tracks: BTreeMap<TrackId, Track>,
}

struct Peer {
    metadata: Metadata,
    outbox: Outbox,
    endpoint: EndpointHandle,
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
    /// `offerData` went out listing these tracks' slots; the client's `sdpOffer` is next.
    AwaitingOffer {
        tracks: Vec<TrackId>,
    },
    /// The endpoint is answering the client's offer.
    AwaitingAnswer,
}

struct Track {
    owner: PeerId,
    kind: MediaKind,
    metadata: Metadata,
    fanout: Arc<Fanout>,
}

/// Why a peer is removed from the room (a bad offer, a failed connection), told to it as an
/// `error` event.
#[derive(Debug, Error)]
#[error("{0}")]
struct PeerFault(String);

impl Room {
    async fn run(mut self, mut mailbox: Mailbox, registry: Registry) {
        tracing::info!(room = %self.id, "room opened");
        while let Some(message) = mailbox.recv().await {
            self.handle_message(message);
            if self.peers.is_empty() {
                break;
            }
        }
        // Forget the room first, so new joins make a new one; joins already queued here are
        // dropped unanswered, and their senders retry with that new room.
        registry.forget(&self.id, self.handle.generation);
        mailbox.close();
        while let Some(message) = mailbox.recv().await {
            if let RoomMessage::CountPeers { reply } = message {
                let _ = reply.send(0);
            }
        }
        tracing::info!(room = %self.id, "room closed");
    }

    fn handle_message(&mut self, message: RoomMessage) {
        match message {
            RoomMessage::Join {
                peer_id,
                metadata,
                outbox,
                reply,
            } => {
                let joined = self.join(peer_id, metadata, outbox);
                let _ = reply.send(joined);
            }
            RoomMessage::Event { peer_id, event } => {
                if self.peers.contains_key(&peer_id) {
                    self.on_event(&peer_id, event);
                } else {
                    tracing::debug!(peer = %peer_id, kind = event.kind(), "event from a peer not in the room");
                }
            }
            RoomMessage::Endpoint { peer_id, event } => {
                if self.peers.contains_key(&peer_id) {
                    self.on_endpoint_event(&peer_id, event);
                }
            }
            RoomMessage::CountPeers { reply } => {
                let _ = reply.send(self.peers.len());
            }
        }
    }

    fn join(
        &mut self,
        peer_id: PeerId,
        metadata: Metadata,
        outbox: Outbox,
    ) -> Result<(), JoinRefused> {
        if self.peers.len() >= self.settings.max_peers {
            return Err(JoinRefused::Full(self.settings.max_peers));
        }
        let endpoint = EndpointHandle::spawn(
            peer_id.clone(),
            self.settings.rtc.clone(),
            self.handle.clone(),
        );
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
                endpoint,
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
            ServerEvent::PeerAccepted(PeerAccepted {
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
        self.broadcast(None, |_| Some(joined.clone()));
        if !self.tracks.is_empty() {
            self.renegotiate(&peer_id);
        }
        Ok(())
    }

    fn on_event(&mut self, peer_id: &PeerId, event: ClientEvent) {
        match event {
            ClientEvent::Leave => self.remove_peer(peer_id, None),
            ClientEvent::RenegotiateTracks => self.renegotiate(peer_id),
            ClientEvent::SdpOffer(offer) => {
                if let Err(fault) = self.on_offer(peer_id, offer) {
                    self.remove_peer(peer_id, Some(fault));
                }
            }
            ClientEvent::Candidate(candidate) => {
                // The browser signals the end of candidates with an empty one.
                if !candidate.candidate.is_empty() {
                    self.peers[peer_id]
                        .endpoint
                        .add_candidate(candidate.candidate);
                }
            }
            ClientEvent::UpdatePeerMetadata(update) => {
                self.update_peer_metadata(peer_id, update.metadata)
            }
            ClientEvent::UpdateTrackMetadata(update) => self.update_track_metadata(peer_id, update),
            ClientEvent::Join(_) => {}
            ClientEvent::SetTargetTrackVariant(_)
            | ClientEvent::PrioritizeTrack(_)
            | ClientEvent::UnprioritizeTrack(_)
            | ClientEvent::PreferedVideoSizes(_) => {
                // Without simulcast there is one layer per track to forward: nothing to choose.
                tracing::debug!(peer = %peer_id, kind = event.kind(), "ignored: no simulcast");
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
        peer.negotiation = NegotiationState::AwaitingOffer { tracks: offered };
        let offer_data = ServerEvent::OfferData(OfferData {
            tracks_types,
            integrated_turn_servers: self.settings.rtc.turn_servers.clone(),
        });
        self.push(peer_id, offer_data);
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
        let published = published_tracks(peer_id, &offer)?;
        let peer = self
            .peers
            .get_mut(peer_id)
            .expect("the caller checked the peer");
        let offered =
            match std::mem::replace(&mut peer.negotiation, NegotiationState::AwaitingAnswer) {
                NegotiationState::AwaitingOffer { tracks } => tracks,
                // An offer nobody asked for: keep what the peer already receives.
                NegotiationState::Idle | NegotiationState::AwaitingAnswer => {
                    peer.receiving.values().cloned().collect()
                }
            };
        let old: BTreeSet<TrackId> = peer.published.values().cloned().collect();
        let new: BTreeSet<TrackId> = published.iter().map(|(_, (id, _))| id.clone()).collect();
        peer.published = published
            .iter()
            .map(|(mid, (id, _))| (mid.clone(), id.clone()))
            .collect();

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
                    fanout: Fanout::new(track_id.clone(), *kind),
                });
            track.metadata = metadata;
        }

        let negotiation = Negotiation {
            offer: offer.sdp_offer.sdp,
            publish: published
                .iter()
                .map(|(mid, (track_id, _))| (mid.clone(), self.tracks[track_id].fanout.clone()))
                .collect(),
            subscribe: offered
                .iter()
                .filter_map(|track_id| {
                    let track = self.tracks.get(track_id)?;
                    Some(Subscription {
                        track_id: track_id.clone(),
                        kind: track.kind,
                        stream_id: track.owner.to_string(),
                        fanout: track.fanout.clone(),
                    })
                })
                .collect(),
        };
        self.peers[peer_id].endpoint.negotiate(negotiation);

        let added: Vec<&TrackId> = new.difference(&old).collect();
        let removed: BTreeSet<TrackId> = old.difference(&new).cloned().collect();
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
            self.broadcast(Some(peer_id), |_| Some(tracks_added.clone()));
        }
        if !removed.is_empty() {
            self.announce_removed(peer_id, &removed);
            self.forget_tracks(&removed);
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
        self.broadcast(Some(owner), |peer| {
            let track_ids: Vec<TrackId> = peer
                .receiving
                .values()
                .filter(|id| removed.contains(*id))
                .cloned()
                .collect();
            (!track_ids.is_empty()).then(|| {
                ServerEvent::TracksRemoved(TracksRemoved {
                    peer_id: owner.clone(),
                    track_ids,
                })
            })
        });
    }

    fn on_endpoint_event(&mut self, peer_id: &PeerId, event: EndpointEvent) {
        match event {
            EndpointEvent::Answer { sdp, sending } => {
                let peer = self
                    .peers
                    .get_mut(peer_id)
                    .expect("the caller checked the peer");
                peer.negotiation = NegotiationState::Idle;
                peer.receiving = sending.clone();
                let mut mid_to_track_id = sending;
                mid_to_track_id.extend(peer.published.clone());
                self.push(
                    peer_id,
                    ServerEvent::SdpAnswer(SdpAnswer::new(sdp, mid_to_track_id)),
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
                    ServerEvent::Candidate(ServerCandidate::bundled(candidate)),
                );
            }
            EndpointEvent::Failed(reason) => self.remove_peer(peer_id, Some(PeerFault(reason))),
        }
    }

    fn update_peer_metadata(&mut self, peer_id: &PeerId, metadata: Metadata) {
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
            self.broadcast(Some(peer_id), |_| Some(updated.clone()));
        }
    }

    fn update_track_metadata(&mut self, peer_id: &PeerId, update: UpdateTrackMetadata) {
        let Some(track) = self
            .tracks
            .get_mut(&update.track_id)
            .filter(|track| &track.owner == peer_id)
        else {
            tracing::warn!(peer = %peer_id, track = %update.track_id, "metadata update for a track the peer does not publish");
            return;
        };
        track.metadata = update.track_metadata.clone();
        let updated = ServerEvent::TrackUpdated(TrackUpdated {
            peer_id: peer_id.clone(),
            track_id: update.track_id.clone(),
            metadata: update.track_metadata,
        });
        // Only to peers that know the track: the client fails on an unknown one.
        self.broadcast(Some(peer_id), |peer| {
            peer.known
                .contains(&update.track_id)
                .then(|| updated.clone())
        });
    }

    /// Removes a peer: its tracks stop, the others hear `peerLeft` and renegotiate. A fault is
    /// told to the peer first as an `error` event.
    fn remove_peer(&mut self, peer_id: &PeerId, fault: Option<PeerFault>) {
        let Some(peer) = self.peers.remove(peer_id) else {
            return;
        };
        if let Some(fault) = &fault {
            tracing::warn!(room = %self.id, peer = %peer_id, %fault, "removing peer");
            peer.outbox.push(
                peer_id,
                ServerEvent::Error(ErrorMessage {
                    message: fault.to_string(),
                }),
            );
        } else {
            tracing::info!(room = %self.id, peer = %peer_id, peers = self.peers.len(), "peer left");
        }
        // Dropping the peer's endpoint handle (with `peer`) closes its connection.
        let removed: BTreeSet<TrackId> = peer.published.into_values().collect();
        self.forget_tracks(&removed);
        let left = ServerEvent::PeerLeft(PeerLeft {
            peer_id: peer_id.clone(),
        });
        self.broadcast(None, |_| Some(left.clone()));
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

    fn push(&mut self, peer_id: &PeerId, event: ServerEvent) {
        let delivered = self
            .peers
            .get(peer_id)
            .is_some_and(|peer| peer.outbox.push(peer_id, event));
        if !delivered {
            self.drop_unreachable(vec![peer_id.clone()]);
        }
    }

    /// Sends each peer (but `except`) the event `event_for` makes for it, if any.
    fn broadcast(
        &mut self,
        except: Option<&PeerId>,
        event_for: impl Fn(&Peer) -> Option<ServerEvent>,
    ) {
        let mut unreachable = Vec::new();
        for (peer_id, peer) in &self.peers {
            if Some(peer_id) == except {
                continue;
            }
            if let Some(event) = event_for(peer) {
                if !peer.outbox.push(peer_id, event) {
                    unreachable.push(peer_id.clone());
                }
            }
        }
        self.drop_unreachable(unreachable);
    }

    /// Removes peers whose socket is gone or cannot keep up.
    fn drop_unreachable(&mut self, peers: Vec<PeerId>) {
        for peer_id in peers {
            tracing::warn!(room = %self.id, peer = %peer_id, "socket unreachable or too far behind");
            self.remove_peer(&peer_id, None);
        }
    }
}

/// The tracks an offer publishes, by mid: its `sendonly` m-lines, each named in `midToTrackId`
/// by a track id of this peer and offering a codec the SFU can forward.
fn published_tracks(
    peer_id: &PeerId,
    offer: &SdpOffer,
) -> Result<BTreeMap<String, (TrackId, MediaKind)>, PeerFault> {
    let mut published = BTreeMap::new();
    for (index, section) in sdp::media_sections(&offer.sdp_offer.sdp)
        .into_iter()
        .enumerate()
    {
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
        published.insert(mid, (track_id.clone(), kind));
    }
    Ok(published)
}
