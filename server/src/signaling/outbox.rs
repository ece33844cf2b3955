//! What a room hands one socket: encoded events for its peers and news of peers the room
//! removed, queued without waiting and bounded in bytes so a client that stops reading can
//! never make the server hold more than `--max-outbox-bytes` for it.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use shared::PeerId;
use tokio::sync::mpsc;

/// Where a room sends what is for the peers of one socket. It is bounded in bytes, not messages:
/// a push that would take the socket past its limit fails, and the room then drops the peer; the
/// socket learns it ([`Delivery::Removed`]) and closes.
#[derive(Clone, Debug)]
pub struct Outbox {
    deliveries: mpsc::UnboundedSender<Delivery>,
    state: Arc<OutboxState>,
}

#[derive(Debug)]
struct OutboxState {
    queued_bytes: AtomicUsize,
    limit: usize,
    overflowed: AtomicBool,
}

/// What a room hands a socket.
#[derive(Debug)]
pub enum Delivery {
    /// An encoded media event for `peer`, shared by every peer it is broadcast to.
    Event { peer: PeerId, data: Arc<str> },
    /// The room removed `peer` without its asking (a fault, or its socket fell behind): the
    /// channel is no longer in the room and may join again.
    Removed { peer: PeerId },
}

impl Outbox {
    pub(crate) fn new(limit: usize) -> (Outbox, mpsc::UnboundedReceiver<Delivery>) {
        let (deliveries, receiver) = mpsc::unbounded_channel();
        let state = Arc::new(OutboxState {
            queued_bytes: AtomicUsize::new(0),
            limit,
            overflowed: AtomicBool::new(false),
        });
        (Outbox { deliveries, state }, receiver)
    }

    /// Queues the encoded event `data` for `peer` without waiting; false when the socket is gone
    /// or this would take it past its byte limit, so the room can drop the peer instead.
    pub fn push(&self, peer: &PeerId, data: &Arc<str>) -> bool {
        let size = data.len();
        let state = &self.state;
        let fits = state
            .queued_bytes
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |queued| {
                (queued + size <= state.limit).then_some(queued + size)
            })
            .is_ok();
        if !fits {
            state.overflowed.store(true, Ordering::Release);
            return false;
        }
        let event = Delivery::Event {
            peer: peer.clone(),
            data: data.clone(),
        };
        self.deliveries.send(event).is_ok()
    }

    /// Tells the socket the room removed `peer`. Never refused: it is one small message per peer.
    pub fn removed(&self, peer: &PeerId) {
        let _ = self
            .deliveries
            .send(Delivery::Removed { peer: peer.clone() });
    }

    pub(crate) fn delivered(&self, data: &str) {
        self.state
            .queued_bytes
            .fetch_sub(data.len(), Ordering::AcqRel);
    }

    pub(crate) fn overflowed(&self) -> bool {
        self.state.overflowed.load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_outbox_counts_bytes_and_refuses_past_its_limit() {
        let (outbox, mut deliveries) = Outbox::new(10);
        let peer = PeerId::new("ann").unwrap();
        let six: Arc<str> = Arc::from("123456");
        assert!(outbox.push(&peer, &six));
        assert!(!outbox.push(&peer, &six), "12 bytes would pass the limit");
        assert!(outbox.overflowed());
        let Some(Delivery::Event { data, .. }) = deliveries.try_recv().ok() else {
            panic!("the first event is queued");
        };
        outbox.delivered(&data);
        assert!(outbox.push(&peer, &six), "written bytes are given back");
    }
}
