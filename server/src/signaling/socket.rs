//! One task per WebSocket at `/socket/websocket`: Phoenix Channels V2 framing (heartbeats, joins,
//! leaves, replies, pushes with the current join_ref), `mediaEvent` frames decoded into messages
//! for the room, and the room's deliveries encoded back into frames. It enforces the per-socket
//! limits (message size, event rate, rooms, the bytes waiting in its [`Outbox`]) and closes with a
//! code that says why: 1007 invalid UTF-8, 1008 policy (flood, too slow, too many sockets),
//! 1009 too big.

use std::borrow::Cow;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket};
use futures_util::stream::{SplitSink, SplitStream, StreamExt};
use futures_util::{SinkExt, TryFutureExt};
use shared::metadata;
use shared::phoenix::PHOENIX_TOPIC;
use shared::server_event::ErrorMessage;
use shared::{ClientEvent, DecodeError, Frame, PeerId, PhoenixEvent, RoomId, ServerEvent};
use tokio::sync::{broadcast, mpsc};
use tokio::time::{sleep_until, timeout, Instant};

use crate::cluster::Placement;
use crate::limits::{AddressGuard, LimitExceeded, Limits};
use crate::signaling::outbox::{Delivery, Outbox};
use crate::signaling::registry::Registry;
use crate::signaling::relay::{FromNode, Relay};
use crate::signaling::room::{RoomHandle, RoomMessage};
use crate::telemetry;

/// Phoenix drops a socket after 60 s without a message; clients heartbeat every 30 s.
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a closing socket waits for the client's close frame.
const CLOSE_GRACE: Duration = Duration::from_secs(1);
/// How long a refused socket's close frame may take to go out.
const REFUSAL_WRITE_TIMEOUT: Duration = Duration::from_secs(1);

/// A joined topic: one peer of one room.
struct Channel {
    join_ref: Option<String>,
    room_id: RoomId,
    peer_id: PeerId,
    /// Set once the peer's media `join` was accepted by the room.
    room: Option<RoomHandle>,
    /// The display name the join token gives, which the peer's own metadata cannot change.
    token_name: Option<String>,
}

/// Why the server closes a socket: the WebSocket close code and a reason for the client.
struct Close {
    code: u16,
    reason: Cow<'static, str>,
}

impl Close {
    const fn fixed(code: u16, reason: &'static str) -> Close {
        Close {
            code,
            reason: Cow::Borrowed(reason),
        }
    }
}

const CLOSE_IDLE: Close = Close::fixed(1001, "idle timeout");
const CLOSE_BINARY: Close = Close::fixed(1003, "binary frames are not supported");
const CLOSE_NOT_UTF8: Close = Close::fixed(1007, "text frames must be valid UTF-8");
const CLOSE_RESTART: Close = Close::fixed(1001, ErrorMessage::SERVER_RESTARTING);
const CLOSE_NODE_GONE: Close = Close::fixed(
    1012,
    "the server holding your room went away; reconnect to continue",
);
/// Frames from the nodes of relayed rooms waiting for the client's socket.
const RELAYED_FRAMES: usize = 256;

/// Refuses a socket past the per-address limit: accepted only to be closed with the reason.
pub async fn refuse(ws: WebSocket, client: SocketAddr, limit: usize) {
    let refused = LimitExceeded::new(
        format!("another signaling socket from {}", client.ip()),
        limit,
        "sockets",
        "max-sockets-per-ip",
    );
    tracing::warn!(%client, %refused, "socket refused");
    let (sink, stream) = ws.split();
    let close = Close {
        code: 1008,
        reason: refused.to_string().into(),
    };
    close_socket(sink, stream, close, REFUSAL_WRITE_TIMEOUT).await;
}

pub async fn serve(
    ws: WebSocket,
    rooms: Registry,
    client: SocketAddr,
    admitted: AddressGuard,
    token: Option<String>,
) {
    let (sink, mut stream) = ws.split();
    // Held until the socket has closed: the server's shutdown waits for that.
    let mut shutdown = rooms.shutdown_watch();
    let limits = rooms.limits().clone();
    let (outbox, mut deliveries) = Outbox::new(limits.max_outbox_bytes);
    let rate = f64::from(limits.max_events_per_second);
    let mut cuts = rooms
        .settings()
        .test_hooks
        .as_ref()
        .map(|hooks| hooks.cuts());
    let (from_nodes, mut relayed) = mpsc::channel(RELAYED_FRAMES);
    let mut socket = Socket {
        sink,
        rooms,
        outbox,
        channels: HashMap::new(),
        client,
        relays: HashMap::new(),
        from_nodes,
        flood: TokenBucket::new(2.0 * rate, rate),
        chat: TokenBucket::new(
            CHAT_BURST,
            f64::from(limits.max_chat_messages_per_minute) / 60.0,
        ),
        limits,
        token,
    };
    tracing::debug!(%client, "socket opened");
    metrics::counter!(telemetry::SOCKETS_OPENED).increment(1);
    let mut deadline = Instant::now() + IDLE_TIMEOUT;
    let close = 'socket: loop {
        tokio::select! {
            message = stream.next() => {
                deadline = Instant::now() + IDLE_TIMEOUT;
                match message {
                    Some(Ok(Message::Text(text))) => {
                        // The room's news already queued goes first: a removal it sent along
                        // with an error must be known before the client's answer to that
                        // error (a rejoin), which would otherwise reach the room as the removed
                        // peer's and be dropped.
                        while let Ok(delivery) = deliveries.try_recv() {
                            match socket.deliver(delivery).await {
                                Ok(None) => {}
                                Ok(Some(close)) => break 'socket Some(close),
                                Err(SocketGone) => break 'socket None,
                            }
                        }
                        if !socket.flood.take(Instant::now()) {
                            break Some(socket.flood_close());
                        }
                        if socket.on_text(&text).await.is_err() {
                            break None;
                        }
                    }
                    Some(Ok(Message::Binary(_))) => break Some(CLOSE_BINARY),
                    Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
                    Some(Ok(Message::Close(_))) | None => break None,
                    Some(Err(err)) => break socket.read_failure(err),
                }
            }
            Some(from_node) = relayed.recv() => match from_node {
                FromNode::Frame(text) => {
                    if socket.send_text(text).await.is_err() {
                        break None;
                    }
                }
                FromNode::Closed { topic, reason } => {
                    if socket.relays.remove(&topic).is_some() {
                        // The room's node went away: the client reconnects, and its room is
                        // placed again on a live node.
                        tracing::info!(%client, topic, reason, "relayed room's node closed");
                        break Some(CLOSE_NODE_GONE);
                    }
                }
            },
            Some(delivery) = deliveries.recv() => match socket.deliver(delivery).await {
                Ok(None) => {}
                Ok(Some(close)) => break Some(close),
                Err(SocketGone) => break None,
            },
            Some(peer) = next_cut(&mut cuts) => {
                if socket.channels.values().any(|channel| channel.peer_id == peer) {
                    // A network failure: the client hears nothing, not even a close frame.
                    for (_, channel) in socket.channels.drain() {
                        channel.leave_room().await;
                    }
                    tracing::info!(%client, %peer, "socket cut by a test");
                    return;
                }
            }
            () = sleep_until(deadline) => break Some(CLOSE_IDLE),
            Ok(()) = shutdown.wait_for(|stopping| *stopping).map_ok(drop) => {
                let _ = socket.say_restarting().await;
                break Some(CLOSE_RESTART);
            }
        }
    };
    // Leave the rooms first: the others hear of it at once, not after the close handshake.
    for (_, channel) in socket.channels.drain() {
        channel.leave_room().await;
    }
    drop(admitted);
    match close {
        Some(close) => {
            tracing::info!(%client, code = close.code, reason = %close.reason, "closing socket");
            let write_timeout = socket.limits.write_timeout;
            close_socket(socket.sink, stream, close, write_timeout).await;
        }
        None => tracing::debug!(%client, "socket closed"),
    }
}

/// The next peer whose socket a test cuts; never, without test hooks.
async fn next_cut(cuts: &mut Option<broadcast::Receiver<PeerId>>) -> Option<PeerId> {
    match cuts {
        Some(cuts) => loop {
            match cuts.recv().await {
                Ok(peer) => return Some(peer),
                Err(broadcast::error::RecvError::Lagged(_)) => continue,
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        },
        None => std::future::pending().await,
    }
}

/// Sends the close frame and reads on until the client answers it (or a moment passes): dropping
/// a socket with unread data resets it, and the client would never see the close frame.
async fn close_socket(
    mut sink: SplitSink<WebSocket, Message>,
    mut stream: SplitStream<WebSocket>,
    close: Close,
    write_timeout: Duration,
) {
    let frame = CloseFrame {
        code: close.code,
        reason: Utf8Bytes::from(close.reason.into_owned()),
    };
    if timeout(write_timeout, sink.send(Message::Close(Some(frame))))
        .await
        .is_err()
    {
        return;
    }
    let _ = timeout(CLOSE_GRACE, async {
        while let Some(Ok(message)) = stream.next().await {
            if matches!(message, Message::Close(_)) {
                break;
            }
        }
    })
    .await;
}

struct Socket {
    sink: SplitSink<WebSocket, Message>,
    rooms: Registry,
    outbox: Outbox,
    channels: HashMap<String, Channel>,
    flood: TokenBucket,
    /// Chat messages: fewer than other events, so a socket cannot flood a room's chat.
    chat: TokenBucket,
    limits: Limits,
    /// The socket's join token, if it was given one.
    token: Option<String>,
    client: SocketAddr,
    /// In a cluster, the joined topics whose rooms live on other nodes.
    relays: HashMap<String, Relay>,
    /// What those nodes send back.
    from_nodes: mpsc::Sender<FromNode>,
}

/// The socket can no longer be written to.
struct SocketGone;

impl Socket {
    /// Writes one frame, waiting at most `--write-timeout` for a client that does not read.
    async fn send(&mut self, frame: Frame) -> Result<(), SocketGone> {
        self.send_text(frame.encode()).await
    }

    /// Writes one encoded frame, as [`Socket::send`].
    async fn send_text(&mut self, text: String) -> Result<(), SocketGone> {
        let text = Utf8Bytes::from(text);
        let write_timeout = self.limits.write_timeout;
        match timeout(write_timeout, self.sink.send(Message::Text(text))).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(SocketGone),
            Err(_) => {
                tracing::info!("socket write timed out: the client stopped reading");
                Err(SocketGone)
            }
        }
    }

    fn flood_close(&self) -> Close {
        let refused = LimitExceeded::new(
            "the message rate".to_owned(),
            self.limits.max_events_per_second as usize,
            "messages a second",
            "max-events-per-second",
        );
        Close {
            code: 1008,
            reason: refused.to_string().into(),
        }
    }

    /// How a failed read ends the socket: with 1009 or 1007 when the client sent something too
    /// big or not UTF-8, silently when the connection itself broke.
    fn read_failure(&self, err: axum::Error) -> Option<Close> {
        let inner = err.into_inner();
        match inner.downcast_ref::<tungstenite::Error>() {
            Some(tungstenite::Error::Capacity(capacity)) => {
                tracing::warn!(%capacity, "message too big");
                let refused = LimitExceeded::new(
                    "a message".to_owned(),
                    self.limits.max_frame_bytes,
                    "bytes",
                    "max-frame-bytes",
                );
                Some(Close {
                    code: 1009,
                    reason: refused.to_string().into(),
                })
            }
            Some(tungstenite::Error::Utf8(_)) => {
                tracing::warn!("text frame is not UTF-8");
                Some(CLOSE_NOT_UTF8)
            }
            _ => {
                tracing::debug!(err = %inner, "socket read failed");
                None
            }
        }
    }

    async fn on_text(&mut self, text: &str) -> Result<(), SocketGone> {
        if text.len() > self.limits.max_frame_bytes {
            let refused = LimitExceeded::new(
                format!("a message of {} bytes", text.len()),
                self.limits.max_frame_bytes,
                "bytes",
                "max-frame-bytes",
            );
            tracing::warn!(%refused, "message refused");
            return self.send(socket_error(&refused.to_string())).await;
        }
        let frame = match Frame::decode(text) {
            Ok(frame) => frame,
            Err(err) => {
                // Without a frame there is no ref to reply to: say it on the socket's own topic.
                tracing::warn!(%err, "undecodable frame");
                return self.send(socket_error(&err.to_string())).await;
            }
        };
        if let Some(relay) = self.relays.get(&frame.topic) {
            if frame.event != PhoenixEvent::Join {
                relay.send(text.to_owned());
                return Ok(());
            }
            // A new join of the topic: the old relay goes, and the join is placed anew.
            self.relays.remove(&frame.topic);
        }
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
        // Relayed channels count too: each holds a socket to another node.
        if self.channels.len() + self.relays.len() >= self.limits.max_rooms_per_socket {
            let refused = LimitExceeded::new(
                format!("joining room {room_id} too"),
                self.limits.max_rooms_per_socket,
                "rooms a socket",
                "max-rooms-per-socket",
            );
            tracing::warn!(%refused, "join refused");
            return self.send(frame.reply_error(&refused.to_string())).await;
        }
        let token_name = match &self.rooms.settings().join_secret {
            None => None,
            Some(secret) => match secret.check(self.token.as_deref(), &room_id) {
                Ok(claims) => Some(claims.name),
                Err(refused) => {
                    tracing::warn!(room = %room_id, %refused, "join refused");
                    return self.send(frame.reply_error(&refused.to_string())).await;
                }
            },
        };
        let Some(frame) = self.place(frame, &room_id).await? else {
            return Ok(());
        };
        let peer_id = PeerId::from(uuid::Uuid::new_v4());
        tracing::info!(room = %room_id, peer = %peer_id, "channel joined");
        self.channels.insert(
            frame.topic.clone(),
            Channel {
                join_ref: frame.join_ref.clone(),
                room_id,
                peer_id,
                room: None,
                token_name,
            },
        );
        self.send(frame.reply_ok()).await
    }

    /// Where `join`'s room lives, in a cluster: here (the join is handed back, to be joined
    /// here), or on another node, to which the channel is then relayed (its join goes there,
    /// and so does every later frame of its topic). A node that cannot be reached loses its
    /// records and the room is placed again, once: after a node died, the first join of its
    /// room need not wait for its record to expire.
    async fn place(&mut self, join: Frame, room_id: &RoomId) -> Result<Option<Frame>, SocketGone> {
        let Some(cluster) = self.rooms.settings().cluster.clone() else {
            return Ok(Some(join));
        };
        let mut placed_again = false;
        loop {
            let counts = self.rooms.counts();
            let node = match cluster.place(room_id, (counts.peers, counts.rooms)).await {
                Ok(Placement::Here) => return Ok(Some(join)),
                Ok(Placement::Elsewhere(node)) => node,
                Err(err) => {
                    tracing::warn!(room = %room_id, %err, "join refused: no placement");
                    let reason = format!("the room cannot be placed in the cluster: {err}");
                    self.send(join.reply_error(&reason)).await?;
                    return Ok(None);
                }
            };
            let opened = Relay::open(
                &node.url,
                cluster.secret(),
                self.client,
                self.token.as_deref(),
                join.topic.clone(),
                self.from_nodes.clone(),
            )
            .await;
            match opened {
                Ok(relay) => {
                    tracing::info!(client = %self.client, room = %room_id, node = node.id, "channel relayed");
                    relay.send(join.encode());
                    self.relays.insert(join.topic.clone(), relay);
                    return Ok(None);
                }
                Err(err) if !placed_again => {
                    tracing::warn!(room = %room_id, node = node.id, %err, "the room's node is unreachable: placing the room again");
                    cluster.unreachable(room_id, &node.id).await;
                    placed_again = true;
                }
                Err(err) => {
                    tracing::warn!(room = %room_id, %err, "join refused: relay failed");
                    self.send(join.reply_error(&err.to_string())).await?;
                    return Ok(None);
                }
            }
        }
    }

    /// Tells each joined peer the server is going away: an `error` media event (the client
    /// shows it and reconnects later), then the channel's `phx_close`.
    async fn say_restarting(&mut self) -> Result<(), SocketGone> {
        let error = ServerEvent::Error(ErrorMessage::server_restarting()).encode();
        let channels: Vec<(String, Option<String>, bool)> = self
            .channels
            .iter()
            .map(|(topic, channel)| {
                (
                    topic.clone(),
                    channel.join_ref.clone(),
                    channel.room.is_some(),
                )
            })
            .collect();
        for (topic, join_ref, in_room) in channels {
            if in_room {
                self.send(Frame::media_event(
                    join_ref.clone(),
                    None,
                    &topic,
                    error.clone(),
                ))
                .await?;
            }
            self.send(Frame::close(&join_ref.unwrap_or_default(), &topic))
                .await?;
        }
        Ok(())
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
        if matches!(&event, ClientEvent::ChatMessage(chat) if chat.text.trim().is_empty()) {
            return self.send(frame.reply_error("a blank chat message")).await;
        }
        if let Err(refused) = self.check_limits(&event) {
            tracing::warn!(topic = frame.topic, %refused, "media event refused");
            return self.send(frame.reply_error(&refused.to_string())).await;
        }
        let Some(channel) = self.channels.get_mut(&frame.topic) else {
            return Ok(());
        };
        match (event, &channel.room) {
            (ClientEvent::Join(mut join), None) => {
                if let Some(name) = &channel.token_name {
                    // The token's name, whatever the page sent.
                    metadata::set_display_name(&mut join.metadata, name);
                }
                let asked = std::time::Instant::now();
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
                    Ok(room) => {
                        metrics::histogram!(telemetry::JOIN_SECONDS)
                            .record(asked.elapsed().as_secs_f64());
                        channel.room = Some(room);
                    }
                    Err(refused) => {
                        tracing::info!(room = %channel.room_id, %refused, "join refused");
                        let reason = ("reason".to_owned(), refused.to_string().into());
                        let denied = ServerEvent::PeerDenied(serde_json::Map::from_iter([reason]));
                        let frame = Frame::media_event(
                            channel.join_ref.clone(),
                            None,
                            &frame.topic,
                            denied.encode(),
                        );
                        return self.send(frame).await;
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

    /// The size and rate limits a single event can be held to without knowing the room; the
    /// room checks what depends on the peer's state (tracks, m-lines and candidates).
    fn check_limits(&mut self, event: &ClientEvent) -> Result<(), LimitExceeded> {
        match event {
            ClientEvent::ChatMessage(chat) => {
                self.limits.check_chat_text(&chat.text)?;
                if !self.chat.take(Instant::now()) {
                    return Err(LimitExceeded::new(
                        "the chat message rate".to_owned(),
                        self.limits.max_chat_messages_per_minute as usize,
                        "messages a minute",
                        "max-chat-messages-per-minute",
                    ));
                }
                Ok(())
            }
            ClientEvent::Join(join) => self.limits.check_peer_metadata(&join.metadata),
            ClientEvent::UpdatePeerMetadata(update) => {
                self.limits.check_peer_metadata(&update.metadata)
            }
            ClientEvent::UpdateTrackMetadata(update) => {
                self.limits.check_track_metadata(&update.track_metadata)
            }
            _ => Ok(()),
        }
    }

    /// Answers an undecodable media event with an error reply, and otherwise ignores it.
    async fn refuse(&mut self, frame: &Frame, err: &DecodeError) -> Result<(), SocketGone> {
        tracing::warn!(topic = frame.topic, %err, "bad media event");
        self.send(frame.reply_error(&err.to_string())).await
    }

    /// Acts on what a room delivered: an event goes to its channel with that channel's current
    /// join_ref; a removal frees the channel, or closes the socket if it fell too far behind.
    async fn deliver(&mut self, delivery: Delivery) -> Result<Option<Close>, SocketGone> {
        match delivery {
            Delivery::Event { peer, data } => {
                self.outbox.delivered(&data);
                let Some((topic, channel)) = self.channel_of(&peer) else {
                    return Ok(None);
                };
                let frame =
                    Frame::media_event(channel.join_ref.clone(), None, topic, data.to_string());
                self.send(frame).await.map(|()| None)
            }
            Delivery::Removed { peer } => {
                if self.outbox.overflowed() {
                    let refused = LimitExceeded::new(
                        "the events waiting for this socket".to_owned(),
                        self.limits.max_outbox_bytes,
                        "bytes",
                        "max-outbox-bytes",
                    );
                    return Ok(Some(Close {
                        code: 1008,
                        reason: refused.to_string().into(),
                    }));
                }
                let channel = self
                    .channels
                    .values_mut()
                    .find(|channel| channel.peer_id == peer);
                if let Some(channel) = channel {
                    channel.room = None;
                }
                Ok(None)
            }
        }
    }

    fn channel_of(&self, peer: &PeerId) -> Option<(&String, &Channel)> {
        self.channels
            .iter()
            .find(|(_, channel)| &channel.peer_id == peer)
    }
}

/// An error on the socket's own topic, for a message whose refs are unknown.
fn socket_error(reason: &str) -> Frame {
    Frame::push(
        None,
        PHOENIX_TOPIC,
        PhoenixEvent::Reply,
        serde_json::json!({"status": "error", "response": {"reason": reason}}),
    )
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

/// Chat messages a socket may send at once, before `--max-chat-messages-per-minute` paces it.
const CHAT_BURST: f64 = 5.0;

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
