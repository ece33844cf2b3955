//! One task per WebSocket at `/socket/websocket`: Phoenix Channels V2 framing (heartbeats, joins,
//! leaves, replies, pushes with the current join_ref), `mediaEvent` frames decoded into messages
//! for the room, and the room's pushes encoded back into frames.

use std::collections::HashMap;
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket};
use futures_util::stream::{SplitSink, StreamExt};
use futures_util::SinkExt;
use shared::phoenix::PHOENIX_TOPIC;
use shared::{ClientEvent, DecodeError, Frame, PeerId, PhoenixEvent, RoomId, ServerEvent};
use tokio::sync::mpsc;
use tokio::time::{sleep_until, Instant};

use crate::registry::Registry;
use crate::room::{RoomHandle, RoomMessage};

/// Phoenix drops a socket after 60 s without a message; clients heartbeat every 30 s.
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a closing socket waits for the client's close frame.
const CLOSE_GRACE: Duration = Duration::from_secs(1);
/// Pushes from rooms waiting to be written; a room drops a peer whose socket is this far behind.
const OUTBOX_CAPACITY: usize = 512;
/// Frames a client may send in a burst, and per second after it.
const FLOOD_BURST: f64 = 200.0;
const FLOOD_RATE: f64 = 100.0;

/// Where a room sends the events for the peers of one socket.
#[derive(Clone, Debug)]
pub struct Outbox(mpsc::Sender<(PeerId, ServerEvent)>);

impl Outbox {
    /// Queues `event` for `peer` without waiting; false when the socket is gone or hopelessly
    /// behind, so the room can drop the peer instead of stalling on it.
    pub fn push(&self, peer: &PeerId, event: ServerEvent) -> bool {
        self.0.try_send((peer.clone(), event)).is_ok()
    }
}

/// A joined topic: one peer of one room.
struct Channel {
    join_ref: Option<String>,
    room_id: RoomId,
    peer_id: PeerId,
    /// Set once the peer's media `join` was accepted by the room.
    room: Option<RoomHandle>,
}

/// Why the server closes a socket.
struct CloseReason {
    code: u16,
    reason: &'static str,
}

const CLOSE_IDLE: CloseReason = CloseReason {
    code: 1001,
    reason: "idle timeout",
};
const CLOSE_FLOOD: CloseReason = CloseReason {
    code: 1008,
    reason: "too many messages",
};
const CLOSE_BINARY: CloseReason = CloseReason {
    code: 1003,
    reason: "binary frames are not supported",
};

pub async fn serve(ws: WebSocket, rooms: Registry) {
    let (sink, mut stream) = ws.split();
    let (outbox_tx, mut outbox) = mpsc::channel(OUTBOX_CAPACITY);
    let mut socket = Socket {
        sink,
        rooms,
        outbox: Outbox(outbox_tx),
        channels: HashMap::new(),
        flood: TokenBucket::new(FLOOD_BURST, FLOOD_RATE),
    };
    let mut deadline = Instant::now() + IDLE_TIMEOUT;
    let close = loop {
        tokio::select! {
            message = stream.next() => {
                deadline = Instant::now() + IDLE_TIMEOUT;
                match message {
                    Some(Ok(Message::Text(text))) => {
                        if !socket.flood.take(Instant::now()) {
                            break Some(CLOSE_FLOOD);
                        }
                        if socket.on_text(&text).await.is_err() {
                            break None;
                        }
                    }
                    Some(Ok(Message::Binary(_))) => break Some(CLOSE_BINARY),
                    Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
                    Some(Ok(Message::Close(_))) | None => break None,
                    Some(Err(err)) => {
                        tracing::debug!(%err, "socket read failed");
                        break None;
                    }
                }
            }
            Some((peer_id, event)) = outbox.recv() => {
                if socket.push(&peer_id, &event).await.is_err() {
                    break None;
                }
            }
            () = sleep_until(deadline) => break Some(CLOSE_IDLE),
        }
    };
    // Leave the rooms first: the others hear of it at once, not after the close handshake.
    for (_, channel) in socket.channels.drain() {
        channel.leave_room().await;
    }
    if let Some(close) = close {
        tracing::info!(reason = close.reason, "closing socket");
        let frame = CloseFrame {
            code: close.code,
            reason: Utf8Bytes::from_static(close.reason),
        };
        let _ = socket.sink.send(Message::Close(Some(frame))).await;
        // Read on until the client answers the close (or a moment passes): dropping a socket
        // with unread data resets it, and the client would never see the close frame.
        let _ = tokio::time::timeout(CLOSE_GRACE, async {
            while let Some(Ok(message)) = stream.next().await {
                if matches!(message, Message::Close(_)) {
                    break;
                }
            }
        })
        .await;
    }
}

struct Socket {
    sink: SplitSink<WebSocket, Message>,
    rooms: Registry,
    outbox: Outbox,
    channels: HashMap<String, Channel>,
    flood: TokenBucket,
}

/// The socket can no longer be written to.
struct SocketGone;

impl Socket {
    async fn send(&mut self, frame: Frame) -> Result<(), SocketGone> {
        let text = Utf8Bytes::from(frame.encode());
        self.sink
            .send(Message::Text(text))
            .await
            .map_err(|_| SocketGone)
    }

    async fn on_text(&mut self, text: &str) -> Result<(), SocketGone> {
        let frame = match Frame::decode(text) {
            Ok(frame) => frame,
            Err(err) => {
                // Without a frame there is no ref to reply to: say it on the socket's own topic.
                tracing::warn!(%err, "undecodable frame");
                let reply = Frame::push(
                    None,
                    PHOENIX_TOPIC,
                    PhoenixEvent::Reply,
                    serde_json::json!({"status": "error", "response": {"reason": err.to_string()}}),
                );
                return self.send(reply).await;
            }
        };
        match (&frame.event, frame.topic.as_str()) {
            (PhoenixEvent::Heartbeat, PHOENIX_TOPIC) => self.send(frame.reply_ok()).await,
            (PhoenixEvent::Join, _) => self.on_join(frame).await,
            (PhoenixEvent::Leave, _) => self.on_leave(frame).await,
            (PhoenixEvent::MediaEvent, _) if self.is_current(&frame) => {
                self.on_media_event(frame).await
            }
            _ => {
                tracing::debug!(
                    topic = frame.topic,
                    event = frame.event.as_str(),
                    "unmatched topic"
                );
                self.send(frame.reply_error("unmatched topic")).await
            }
        }
    }

    /// Whether the frame is for a joined topic and not from an earlier join of it.
    fn is_current(&self, frame: &Frame) -> bool {
        self.channels
            .get(&frame.topic)
            .is_some_and(|channel| frame.join_ref.is_none() || frame.join_ref == channel.join_ref)
    }

    async fn on_join(&mut self, frame: Frame) -> Result<(), SocketGone> {
        let room_id = match RoomId::from_topic(&frame.topic) {
            Ok(room_id) => room_id,
            Err(shared::IdError::NotARoomTopic(_)) => {
                return self.send(frame.reply_error("unmatched topic")).await
            }
            Err(err) => return self.send(frame.reply_error(&err.to_string())).await,
        };
        // A second join of a joined topic replaces the first: close the old channel first.
        if let Some(old) = self.channels.remove(&frame.topic) {
            let old_ref = old.join_ref.clone().unwrap_or_default();
            old.leave_room().await;
            self.send(Frame::close(&old_ref, &frame.topic)).await?;
        }
        let peer_id = PeerId::from(uuid::Uuid::new_v4());
        tracing::info!(room = %room_id, peer = %peer_id, "channel joined");
        self.channels.insert(
            frame.topic.clone(),
            Channel {
                join_ref: frame.join_ref.clone(),
                room_id,
                peer_id,
                room: None,
            },
        );
        self.send(frame.reply_ok()).await
    }

    async fn on_leave(&mut self, frame: Frame) -> Result<(), SocketGone> {
        if !self.is_current(&frame) {
            return self.send(frame.reply_ok()).await;
        }
        let channel = self.channels.remove(&frame.topic);
        self.send(frame.reply_ok()).await?;
        if let Some(channel) = channel {
            let join_ref = channel.join_ref.clone().unwrap_or_default();
            channel.leave_room().await;
            self.send(Frame::close(&join_ref, &frame.topic)).await?;
        }
        Ok(())
    }

    async fn on_media_event(&mut self, frame: Frame) -> Result<(), SocketGone> {
        let event = match frame.media_event_data().and_then(ClientEvent::decode) {
            Ok(event) => event,
            Err(err) => return self.refuse(&frame, &err).await,
        };
        let Some(channel) = self.channels.get_mut(&frame.topic) else {
            return Ok(());
        };
        match (event, &channel.room) {
            (ClientEvent::Join(join), None) => {
                let joined = self
                    .rooms
                    .join(
                        &channel.room_id,
                        channel.peer_id.clone(),
                        join.metadata,
                        self.outbox.clone(),
                    )
                    .await;
                match joined {
                    Ok(room) => channel.room = Some(room),
                    Err(refused) => {
                        tracing::info!(room = %channel.room_id, %refused, "join refused");
                        let reason = ("reason".to_owned(), refused.to_string().into());
                        let denied = ServerEvent::PeerDenied(serde_json::Map::from_iter([reason]));
                        let peer_id = channel.peer_id.clone();
                        return self.push(&peer_id, &denied).await;
                    }
                }
            }
            (ClientEvent::Join(_), Some(_)) => {
                return self.send(frame.reply_error("already joined")).await;
            }
            (event, Some(room)) => {
                let leaving = matches!(event, ClientEvent::Leave);
                let message = RoomMessage::Event {
                    peer_id: channel.peer_id.clone(),
                    event,
                };
                // A room only ends once all its peers left, so it is there to take this.
                let _ = room.send(message).await;
                if leaving {
                    channel.room = None;
                }
            }
            (event, None) => {
                tracing::debug!(kind = event.kind(), "media event before join");
                let reason = format!("`{}` before `join`: join the room first", event.kind());
                return self.send(frame.reply_error(&reason)).await;
            }
        }
        Ok(())
    }

    /// Answers an undecodable media event with an error reply, and otherwise ignores it.
    async fn refuse(&mut self, frame: &Frame, err: &DecodeError) -> Result<(), SocketGone> {
        tracing::warn!(topic = frame.topic, %err, "bad media event");
        self.send(frame.reply_error(&err.to_string())).await
    }

    /// Sends a room's event to the channel of `peer_id`, with that channel's current join_ref.
    async fn push(&mut self, peer_id: &PeerId, event: &ServerEvent) -> Result<(), SocketGone> {
        let Some((topic, channel)) = self
            .channels
            .iter()
            .find(|(_, channel)| &channel.peer_id == peer_id)
        else {
            return Ok(());
        };
        let frame = Frame::media_event(channel.join_ref.clone(), None, topic, event.encode());
        self.send(frame).await
    }
}

impl Channel {
    async fn leave_room(self) {
        if let Some(room) = self.room {
            tracing::info!(room = %self.room_id, peer = %self.peer_id, "peer leaves");
            let _ = room
                .send(RoomMessage::Event {
                    peer_id: self.peer_id,
                    event: ClientEvent::Leave,
                })
                .await;
        }
    }
}

/// Allows `burst` frames at once and `rate` per second after that.
struct TokenBucket {
    tokens: f64,
    burst: f64,
    rate: f64,
    last: Instant,
}

impl TokenBucket {
    fn new(burst: f64, rate: f64) -> Self {
        TokenBucket {
            tokens: burst,
            burst,
            rate,
            last: Instant::now(),
        }
    }

    fn take(&mut self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        if self.tokens < 1.0 {
            return false;
        }
        self.tokens -= 1.0;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_bucket_allows_a_burst_then_the_rate() {
        let start = Instant::now();
        let mut bucket = TokenBucket::new(3.0, 2.0);
        bucket.last = start;
        assert!((0..3).all(|_| bucket.take(start)));
        assert!(!bucket.take(start));
        assert!(bucket.take(start + Duration::from_millis(500)));
        assert!(!bucket.take(start + Duration::from_millis(500)));
    }
}
