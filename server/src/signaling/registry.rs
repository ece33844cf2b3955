//! The rooms of this server by name: a room is created by its first join and forgotten when its
//! task ends (its last peer left). The map is only looked up and updated here, never held
//! across an await; each room's state is owned by its own task. The registry also holds the
//! server-wide quotas: peers and rooms overall, signaling sockets per address.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use shared::{Metadata, PeerId, RoomId};
use tokio::sync::{oneshot, watch};

use crate::limits::{AddressQuota, Limits, Quota};
use crate::media::engine::WorkerLoad;
use crate::signaling::outbox::Outbox;
use crate::signaling::room::{self, JoinRefused, RoomHandle, RoomMessage, RoomSettings};

#[derive(Clone)]
pub struct Registry {
    inner: Arc<Inner>,
}

struct Inner {
    rooms: Mutex<HashMap<RoomId, RoomHandle>>,
    next_generation: AtomicU64,
    settings: Arc<RoomSettings>,
    limits: Arc<Limits>,
    open_rooms: Arc<Quota>,
    joined_peers: Arc<Quota>,
    sockets_per_address: Arc<AddressQuota>,
    /// Set when the server shuts down; every socket task holds a receiver until it has closed.
    shutdown: watch::Sender<bool>,
}

/// How many rooms and peers the server has now (for `/stats` and tests).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Counts {
    pub rooms: usize,
    pub peers: usize,
    #[serde(rename = "peerConnections")]
    pub peer_connections: usize,
}

impl Registry {
    pub fn new(settings: RoomSettings) -> Registry {
        let limits = settings.limits.clone();
        Registry {
            inner: Arc::new(Inner {
                rooms: Mutex::default(),
                next_generation: AtomicU64::new(0),
                open_rooms: Quota::new(limits.max_rooms),
                joined_peers: Quota::new(limits.max_peers_total),
                sockets_per_address: AddressQuota::new(limits.max_sockets_per_ip),
                shutdown: watch::Sender::new(false),
                limits,
                settings: Arc::new(settings),
            }),
        }
    }

    pub fn limits(&self) -> &Limits {
        &self.inner.limits
    }

    pub fn settings(&self) -> &RoomSettings {
        &self.inner.settings
    }

    /// What a socket task watches to learn that the server shuts down; it holds the receiver
    /// until it has closed.
    pub fn shutdown_watch(&self) -> watch::Receiver<bool> {
        self.inner.shutdown.subscribe()
    }

    /// Tells every socket the server shuts down, and waits until they have all closed.
    pub async fn shut_down(&self) {
        self.inner.shutdown.send_replace(true);
        self.inner.shutdown.closed().await;
    }

    /// Signaling sockets per client address.
    pub fn sockets_per_address(&self) -> &Arc<AddressQuota> {
        &self.inner.sockets_per_address
    }

    /// Adds a peer to the room `room_id`, creating the room if needed. A room that is closing
    /// as the join arrives answers nothing; the join then goes to a new room of that name.
    pub async fn join(
        &self,
        room_id: &RoomId,
        peer_id: PeerId,
        metadata: Metadata,
        outbox: Outbox,
    ) -> Result<RoomHandle, JoinRefused> {
        const ATTEMPTS: usize = 3;
        for _ in 0..ATTEMPTS {
            let seat = self
                .inner
                .joined_peers
                .try_take()
                .ok_or(JoinRefused::ServerFull(self.inner.joined_peers.max()))?;
            let room = self.room(room_id)?;
            let (reply, answer) = oneshot::channel();
            let join = RoomMessage::Join {
                peer_id: peer_id.clone(),
                metadata: metadata.clone(),
                outbox: outbox.clone(),
                seat,
                reply,
            };
            if room.send(join).await.is_err() {
                self.forget(room_id, room.generation);
                continue;
            }
            match answer.await {
                Ok(Ok(())) => return Ok(room),
                Ok(Err(refused)) => return Err(refused),
                Err(_closed) => self.forget(room_id, room.generation),
            }
        }
        Err(JoinRefused::Unavailable)
    }

    /// The live room of that name, or a new one if the server may open one more.
    fn room(&self, room_id: &RoomId) -> Result<RoomHandle, JoinRefused> {
        let mut rooms = self.lock();
        if let Some(room) = rooms.get(room_id) {
            if !room.is_closed() {
                return Ok(room.clone());
            }
        }
        let open = self
            .inner
            .open_rooms
            .try_take()
            .ok_or(JoinRefused::TooManyRooms(self.inner.open_rooms.max()))?;
        let generation = self.inner.next_generation.fetch_add(1, Ordering::Relaxed);
        let registry = self.clone();
        let id = room_id.clone();
        let room = room::spawn(
            room_id.clone(),
            generation,
            open,
            self.inner.settings.clone(),
            move || registry.forget(&id, generation),
        );
        rooms.insert(room_id.clone(), room.clone());
        Ok(room)
    }

    /// Forgets the room `room_id` if it is still the one of `generation`; in a cluster, its
    /// record goes too (unless a new room of that name opened here meanwhile).
    pub(crate) fn forget(&self, room_id: &RoomId, generation: u64) {
        let mut rooms = self.lock();
        if rooms
            .get(room_id)
            .is_some_and(|room| room.generation == generation)
        {
            rooms.remove(room_id);
            if let Some(cluster) = self.inner.settings.cluster.clone() {
                let (registry, room_id) = (self.clone(), room_id.clone());
                tokio::spawn(async move {
                    if !registry.lock().contains_key(&room_id) {
                        cluster.release(&room_id).await;
                    }
                });
            }
        }
    }

    /// The names of the rooms open here.
    pub fn room_ids(&self) -> Vec<RoomId> {
        self.lock().keys().cloned().collect()
    }

    pub fn counts(&self) -> Counts {
        Counts {
            rooms: self.inner.open_rooms.used(),
            peers: self.inner.joined_peers.used(),
            peer_connections: self.inner.settings.media.peer_connections(),
        }
    }

    /// Peer connections on each media worker now.
    pub fn worker_loads(&self) -> Vec<WorkerLoad> {
        self.inner.settings.media.worker_loads()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<RoomId, RoomHandle>> {
        // The map stays consistent even if a holder panicked: every update is a single call.
        self.inner
            .rooms
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}
