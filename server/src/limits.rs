//! The bounds on everything a client can make the server hold or do: message and metadata sizes;
//! tracks, m-lines and candidates per peer; rooms per socket; sockets and connections per address;
//! peers and rooms overall; the event rate of a socket and the bytes waiting for a slow one. Each
//! is a flag with an environment variable and a default that a real room never reaches. A client
//! that reaches one is refused with a [`LimitExceeded`] that names the flag. The shared counts are
//! [`Quota`]s and [`AddressQuota`]s whose guards give back on drop, so a panicking task leaks none.

use std::collections::HashMap;
use std::hash::Hash;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use shared::Metadata;
use thiserror::Error;

use crate::telemetry;

#[derive(Debug, Clone, clap::Args)]
pub struct Limits {
    /// Largest WebSocket message a client may send, SDP offers included; up to twice this gets
    /// an error reply, anything larger closes the socket (1009).
    #[arg(long, env = "VIDEOROOM_MAX_FRAME_BYTES", default_value_t = 256 * 1024)]
    pub max_frame_bytes: usize,

    /// Largest metadata of a peer, as JSON.
    #[arg(long, env = "VIDEOROOM_MAX_METADATA_BYTES", default_value_t = 4096)]
    pub max_metadata_bytes: usize,

    /// Largest metadata of one track, as JSON.
    #[arg(
        long,
        env = "VIDEOROOM_MAX_TRACK_METADATA_BYTES",
        default_value_t = 1024
    )]
    pub max_track_metadata_bytes: usize,

    /// Tracks one peer may publish at a time.
    #[arg(long, env = "VIDEOROOM_MAX_TRACKS_PER_PEER", default_value_t = 8)]
    pub max_tracks_per_peer: usize,

    /// m-lines in one SDP offer: the peer's own tracks and its slots for the others' tracks.
    #[arg(long, env = "VIDEOROOM_MAX_MLINES_PER_OFFER", default_value_t = 256)]
    pub max_mlines_per_offer: usize,

    /// ICE candidates one peer may send per offer.
    #[arg(long, env = "VIDEOROOM_MAX_CANDIDATES_PER_PEER", default_value_t = 64)]
    pub max_candidates_per_peer: usize,

    /// Peers a room admits; later joiners get `peerDenied`.
    #[arg(long, env = "VIDEOROOM_MAX_PEERS", default_value_t = 25)]
    pub max_peers_per_room: usize,

    /// Peers in all rooms together.
    #[arg(long, env = "VIDEOROOM_MAX_PEERS_TOTAL", default_value_t = 2000)]
    pub max_peers_total: usize,

    /// Rooms open at once.
    #[arg(long, env = "VIDEOROOM_MAX_ROOMS", default_value_t = 1000)]
    pub max_rooms: usize,

    /// Rooms (Phoenix channels) one socket may join.
    #[arg(long, env = "VIDEOROOM_MAX_ROOMS_PER_SOCKET", default_value_t = 4)]
    pub max_rooms_per_socket: usize,

    /// Signaling sockets from one IP address, loopback included (raise it for load tests).
    #[arg(long, env = "VIDEOROOM_MAX_SOCKETS_PER_IP", default_value_t = 64)]
    pub max_sockets_per_ip: usize,

    /// TCP connections (HTTP and sockets alike) from one IP address.
    #[arg(long, env = "VIDEOROOM_MAX_CONNECTIONS_PER_IP", default_value_t = 256)]
    pub max_connections_per_ip: usize,

    /// TCP connections in all.
    #[arg(long, env = "VIDEOROOM_MAX_CONNECTIONS", default_value_t = 8192)]
    pub max_connections: usize,

    /// Longest chat message, as JSON text (escapes counted).
    #[arg(long, env = "VIDEOROOM_MAX_CHAT_MESSAGE_BYTES", default_value_t = 2000)]
    pub max_chat_message_bytes: usize,

    /// Chat messages one socket may send per minute, on average; five in a burst.
    #[arg(
        long,
        env = "VIDEOROOM_MAX_CHAT_MESSAGES_PER_MINUTE",
        default_value_t = 30
    )]
    pub max_chat_messages_per_minute: u32,

    /// Last chat messages a room keeps for those who join later.
    #[arg(long, env = "VIDEOROOM_CHAT_HISTORY", default_value_t = 50)]
    pub chat_history: usize,

    /// TURN allocations (relayed addresses) of the embedded TURN server in all.
    #[arg(long, env = "VIDEOROOM_MAX_TURN_ALLOCATIONS", default_value_t = 4000)]
    pub max_turn_allocations: usize,

    /// TURN allocations one peer's credentials may hold (a browser makes one per TURN entry
    /// and ICE restart, and lets the old ones go).
    #[arg(
        long,
        env = "VIDEOROOM_MAX_TURN_ALLOCATIONS_PER_PEER",
        default_value_t = 16
    )]
    pub max_turn_allocations_per_peer: usize,

    /// Messages a socket may send per second, on average; twice as many in a burst. A socket
    /// that sends faster is closed (1008).
    #[arg(long, env = "VIDEOROOM_MAX_EVENTS_PER_SECOND", default_value_t = 100)]
    pub max_events_per_second: u32,

    /// Bytes of events waiting for one socket; a socket that falls further behind is closed (1008).
    #[arg(long, env = "VIDEOROOM_MAX_OUTBOX_BYTES", default_value_t = 1 << 20)]
    pub max_outbox_bytes: usize,

    /// Seconds a client has to send a request's headers (the next one too, on a kept-alive
    /// connection).
    #[arg(long, env = "VIDEOROOM_HEADER_TIMEOUT", default_value = "10", value_parser = parse_seconds)]
    pub header_timeout: Duration,

    /// Seconds one write to a socket may wait for a client that does not read.
    #[arg(long, env = "VIDEOROOM_WRITE_TIMEOUT", default_value = "10", value_parser = parse_seconds)]
    pub write_timeout: Duration,

    /// Seconds a peer has to answer `offerData` with its `sdpOffer`.
    #[arg(long, env = "VIDEOROOM_OFFER_TIMEOUT", default_value = "30", value_parser = parse_seconds)]
    pub offer_timeout: Duration,

    /// Seconds the media connection may take to come up after an answer.
    #[arg(long, env = "VIDEOROOM_ICE_TIMEOUT", default_value = "20", value_parser = parse_seconds)]
    pub ice_timeout: Duration,
}

/// A duration given in seconds, fractions allowed.
pub(crate) fn parse_seconds(text: &str) -> Result<Duration, String> {
    let seconds: f64 = text
        .parse()
        .map_err(|err| format!("`{text}` is not a number of seconds: {err}"))?;
    Duration::try_from_secs_f64(seconds)
        .ok()
        .filter(|duration| !duration.is_zero())
        .ok_or_else(|| format!("`{text}` is not a positive number of seconds"))
}

/// The most characters of a sender's name a chat message carries.
pub const CHAT_NAME_CHARS: usize = 64;
/// Those characters as JSON, at their longest (`\u0000` escapes).
const CHAT_NAME_JSON_BYTES: usize = 6 * CHAT_NAME_CHARS + 2;

impl Limits {
    /// Checks that the limits fit together: a joiner's `peerAccepted` (every other peer with its
    /// tracks, at their largest) and the room's chat history must fit its outbox, and an offer
    /// must have room for a slot per track of a full room.
    pub fn validate(&self) -> Result<(), String> {
        let others = self.max_peers_per_room.saturating_sub(1);
        let per_peer = self.max_metadata_bytes
            + self.max_tracks_per_peer * (self.max_track_metadata_bytes + 128)
            + 128;
        // Nested JSON inside a JSON string: every quote may come escaped.
        let peer_accepted = 2 * others * per_peer;
        let per_message = self.max_chat_message_bytes + CHAT_NAME_JSON_BYTES + 160;
        let chat_history = 2 * self.chat_history * per_message;
        if peer_accepted + chat_history > self.max_outbox_bytes {
            return Err(format!(
                "--max-outbox-bytes {} cannot hold what a joiner of a full room gets: up to \
                 {peer_accepted} bytes of peerAccepted (--max-peers-per-room, \
                 --max-tracks-per-peer and the metadata limits) and {chat_history} of chat \
                 history (--chat-history, --max-chat-message-bytes)",
                self.max_outbox_bytes
            ));
        }
        let slots = self.max_peers_per_room * self.max_tracks_per_peer;
        if self.max_mlines_per_offer < slots {
            return Err(format!(
                "--max-mlines-per-offer {} is below the {slots} m-lines a full room may need \
                 (--max-peers-per-room × --max-tracks-per-peer)",
                self.max_mlines_per_offer
            ));
        }
        if self.max_events_per_second == 0 || self.max_frame_bytes == 0 {
            return Err("--max-events-per-second and --max-frame-bytes must be above 0".to_owned());
        }
        Ok(())
    }

    /// A chat message's text: not blank, and within `--max-chat-message-bytes` as JSON.
    pub fn check_chat_text(&self, text: &str) -> Result<(), LimitExceeded> {
        let size = json_len(&text);
        if size > self.max_chat_message_bytes {
            return Err(LimitExceeded::new(
                "chat message".to_owned(),
                self.max_chat_message_bytes,
                "bytes",
                "max-chat-message-bytes",
            ));
        }
        Ok(())
    }

    pub fn check_peer_metadata(&self, metadata: &Metadata) -> Result<(), LimitExceeded> {
        let size = json_len(metadata);
        if size > self.max_metadata_bytes {
            return Err(LimitExceeded::new(
                format!("peer metadata of {size} bytes"),
                self.max_metadata_bytes,
                "bytes",
                "max-metadata-bytes",
            ));
        }
        Ok(())
    }

    pub fn check_track_metadata(&self, metadata: &Metadata) -> Result<(), LimitExceeded> {
        let size = json_len(metadata);
        if size > self.max_track_metadata_bytes {
            return Err(LimitExceeded::new(
                format!("track metadata of {size} bytes"),
                self.max_track_metadata_bytes,
                "bytes",
                "max-track-metadata-bytes",
            ));
        }
        Ok(())
    }
}

/// A limit a client reached: what it sent or asked for, and the flag that sets the limit.
#[derive(Debug, Clone, Error, PartialEq, Eq)]
#[error("{what} is over the limit of {limit} {unit} (--{flag})")]
pub struct LimitExceeded {
    pub what: String,
    pub limit: usize,
    pub unit: &'static str,
    pub flag: &'static str,
}

impl LimitExceeded {
    /// A refusal: counted by its flag for `/metrics` as it is made.
    pub fn new(what: String, limit: usize, unit: &'static str, flag: &'static str) -> Self {
        metrics::counter!(telemetry::LIMIT_REFUSALS, "limit" => flag).increment(1);
        LimitExceeded {
            what,
            limit,
            unit,
            flag,
        }
    }
}

/// The length of `value` written as JSON, without writing it anywhere.
pub fn json_len(value: &impl serde::Serialize) -> usize {
    struct Counter(usize);
    impl std::io::Write for Counter {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0 += bytes.len();
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut counter = Counter(0);
    // Writing a `Value` to a writer that never fails cannot fail.
    let _ = serde_json::to_writer(&mut counter, value);
    counter.0
}

/// A count shared by many tasks, up to a maximum.
#[derive(Debug)]
pub struct Quota {
    used: AtomicUsize,
    max: usize,
}

impl Quota {
    pub fn new(max: usize) -> Arc<Quota> {
        Arc::new(Quota {
            used: AtomicUsize::new(0),
            max,
        })
    }

    /// Takes one, or `None` when all are taken.
    pub fn try_take(self: &Arc<Self>) -> Option<QuotaGuard> {
        self.used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                (used < self.max).then_some(used + 1)
            })
            .ok()
            .map(|_| QuotaGuard(self.clone()))
    }

    pub fn used(&self) -> usize {
        self.used.load(Ordering::Acquire)
    }

    pub fn max(&self) -> usize {
        self.max
    }
}

/// One unit of a [`Quota`], given back when dropped.
#[derive(Debug)]
pub struct QuotaGuard(Arc<Quota>);

impl Drop for QuotaGuard {
    fn drop(&mut self) {
        self.0.used.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A count per key (a client's IP address, a TURN user), up to a maximum each.
#[derive(Debug)]
pub struct KeyedQuota<K: Hash + Eq + Clone> {
    used: Mutex<HashMap<K, usize>>,
    max: usize,
}

/// Counts per IP address.
pub type AddressQuota = KeyedQuota<IpAddr>;
/// One unit of an [`AddressQuota`].
pub type AddressGuard = KeyedGuard<IpAddr>;

impl<K: Hash + Eq + Clone> KeyedQuota<K> {
    pub fn new(max: usize) -> Arc<KeyedQuota<K>> {
        Arc::new(KeyedQuota {
            used: Mutex::default(),
            max,
        })
    }

    /// Takes one for `key`, or `None` when it has all it may have.
    pub fn try_take(self: &Arc<Self>, key: K) -> Option<KeyedGuard<K>> {
        let mut used = self.lock();
        let count = used.entry(key.clone()).or_insert(0);
        if *count >= self.max {
            return None;
        }
        *count += 1;
        Some(KeyedGuard {
            quota: self.clone(),
            key,
        })
    }

    pub fn max(&self) -> usize {
        self.max
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<K, usize>> {
        // Every update is one call that leaves the map consistent, even if its holder panicked.
        self.used.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// One unit of a [`KeyedQuota`], given back when dropped.
#[derive(Debug)]
pub struct KeyedGuard<K: Hash + Eq + Clone> {
    quota: Arc<KeyedQuota<K>>,
    key: K,
}

impl<K: Hash + Eq + Clone> Drop for KeyedGuard<K> {
    fn drop(&mut self) {
        let mut used = self.quota.lock();
        if let Some(count) = used.get_mut(&self.key) {
            *count -= 1;
            if *count == 0 {
                used.remove(&self.key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use clap::Parser;
    use serde_json::json;

    use super::*;

    #[derive(Parser)]
    struct Flags {
        #[command(flatten)]
        limits: Limits,
    }

    fn defaults() -> Limits {
        Flags::parse_from(["videoroom"]).limits
    }

    #[test]
    fn the_defaults_fit_together() {
        assert_eq!(defaults().validate(), Ok(()));
    }

    #[test]
    fn limits_that_cannot_hold_a_full_room_are_refused() {
        let tiny_outbox = Limits {
            max_outbox_bytes: 10_000,
            ..defaults()
        };
        assert!(tiny_outbox
            .validate()
            .unwrap_err()
            .contains("--max-outbox-bytes"));
        let few_mlines = Limits {
            max_mlines_per_offer: 10,
            ..defaults()
        };
        assert!(few_mlines
            .validate()
            .unwrap_err()
            .contains("--max-mlines-per-offer"));
    }

    #[test]
    fn metadata_is_measured_as_json_and_refusals_name_the_flag() {
        let limits = Limits {
            max_metadata_bytes: 20,
            ..defaults()
        };
        let name = json!({"displayName": "Ann"});
        assert_eq!(json_len(&name), r#"{"displayName":"Ann"}"#.len());
        assert!(limits.check_peer_metadata(&json!({"a": 1})).is_ok());
        let refused = limits.check_peer_metadata(&name).unwrap_err();
        assert_eq!(
            refused.to_string(),
            "peer metadata of 21 bytes is over the limit of 20 bytes (--max-metadata-bytes)"
        );
    }

    #[test]
    fn quotas_refuse_past_the_maximum_and_give_back_on_drop() {
        let quota = Quota::new(2);
        let first = quota.try_take().unwrap();
        let _second = quota.try_take().unwrap();
        assert!(quota.try_take().is_none());
        drop(first);
        assert_eq!(quota.used(), 1);
        assert!(quota.try_take().is_some());
    }

    #[test]
    fn address_quotas_count_each_address_alone() {
        let quota = AddressQuota::new(1);
        let ann = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1));
        let bob = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 2));
        let held = quota.try_take(ann).unwrap();
        assert!(quota.try_take(ann).is_none());
        assert!(quota.try_take(bob).is_some());
        drop(held);
        assert!(quota.try_take(ann).is_some());
        assert!(quota.lock().is_empty(), "released addresses are forgotten");
    }
}
