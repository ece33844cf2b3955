//! Faults that tests inject into a running server: a signaling socket cut from the server's side,
//! and a panic in a room's task or a peer's endpoint. They exist only when a test builds its
//! [`Config`](crate::Config) with [`TestHooks`]; no flag or environment variable turns them on.

use shared::{Metadata, PeerId};
use tokio::sync::broadcast;

/// The metadata key that, in a peer's `updatePeerMetadata`, asks for a panic: `"room"` panics
/// the room's task while it handles the update, `"endpoint"` the peer's endpoint task.
pub const PANIC_KEY: &str = "videoroomTestPanic";

/// Where an injected panic happens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PanicSite {
    Room,
    Endpoint,
}

#[derive(Debug, Clone)]
pub struct TestHooks {
    cuts: broadcast::Sender<PeerId>,
}

impl Default for TestHooks {
    fn default() -> Self {
        TestHooks {
            cuts: broadcast::channel(16).0,
        }
    }
}

impl TestHooks {
    /// Closes the signaling socket that carries `peer` at once, as a network failure would:
    /// no Phoenix close, no `peerLeft` before the socket is gone.
    pub fn cut_socket_of(&self, peer: &PeerId) {
        let _ = self.cuts.send(peer.clone());
    }

    /// The peers whose sockets are to be cut, for a socket to watch.
    pub(crate) fn cuts(&self) -> broadcast::Receiver<PeerId> {
        self.cuts.subscribe()
    }

    /// The panic a metadata update asks for, if any.
    pub(crate) fn panic_asked(metadata: &Metadata) -> Option<PanicSite> {
        match metadata.get(PANIC_KEY)?.as_str()? {
            "room" => Some(PanicSite::Room),
            "endpoint" => Some(PanicSite::Endpoint),
            _ => None,
        }
    }
}
