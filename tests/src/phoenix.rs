//! A small Phoenix Channels V2 client for tests: it speaks the `shared` crate's [`Frame`]s and
//! media events over a real WebSocket, and every wait has a deadline, so a server that stays
//! silent fails the test instead of hanging it.

use std::collections::{HashSet, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use anyhow::{anyhow, bail, ensure, Context};
use futures_util::{SinkExt, StreamExt};
use serde_json::json;
use shared::client_event::Join;
use shared::phoenix::{ReplyStatus, PHOENIX_TOPIC};
use shared::server_event::PeerAccepted;
use shared::{ClientEvent, Frame, Metadata, PhoenixEvent, ServerEvent};
use tokio::net::{TcpSocket, TcpStream};
use tokio::time::{timeout, Instant};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{http, Message};
use tokio_tungstenite::{
    client_async, connect_async, connect_async_tls_with_config, Connector, MaybeTlsStream,
    WebSocketStream,
};

/// How long a wait for a frame lasts. The server answers on loopback within milliseconds, but
/// a CI machine running a dozen servers at once can be seconds behind; this only bounds how
/// long a broken server can stall a test.
pub const RECV_TIMEOUT: Duration = Duration::from_secs(10);

/// A topic this client joined: what its pushes must carry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Channel {
    pub topic: String,
    pub join_ref: String,
}

/// One Phoenix socket, as phoenix.js would open it.
pub struct PhoenixClient {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    last_ref: u64,
    /// Frames that arrived while a wait looked for another one, in arrival order: `recv` returns
    /// them first, so waiting for one frame never loses the others.
    pending: VecDeque<Frame>,
    /// Refs of this client's `mediaEvent` pushes. The server may answer them `ok` (protocol §1,
    /// duty 3), and [`PhoenixClient::next_media_event`] passes over such replies.
    media_refs: HashSet<String>,
}

impl PhoenixClient {
    /// Opens a socket at `url`, e.g. [`crate::TestServer::socket_url`].
    pub async fn connect(url: &str) -> anyhow::Result<PhoenixClient> {
        // A `wss://` test server's certificate is self-signed: any is taken.
        let connector = Connector::Rustls(crate::https::accepting_any_certificate());
        let (ws, _response) = connect_async_tls_with_config(url, None, false, Some(connector))
            .await
            .with_context(|| format!("cannot open a WebSocket to {url}"))?;
        Ok(PhoenixClient::over(ws))
    }

    /// Opens a socket at `url` with extra request `headers`, e.g. the `Origin` a page would
    /// send or a proxy's `X-Forwarded-For`; the error carries the server's refusal, e.g.
    /// `HTTP error: 403 Forbidden`.
    pub async fn connect_with_headers(
        url: &str,
        headers: &[(&str, &str)],
    ) -> anyhow::Result<PhoenixClient> {
        let mut request = url.into_client_request()?;
        for (name, value) in headers {
            request.headers_mut().insert(
                http::HeaderName::from_bytes(name.as_bytes())?,
                http::HeaderValue::from_str(value)?,
            );
        }
        let (ws, _response) = connect_async(request)
            .await
            .with_context(|| format!("cannot open a WebSocket to {url} with {headers:?}"))?;
        Ok(PhoenixClient::over(ws))
    }

    /// Opens a socket at `url` (a `ws://` URL of a loopback server) from the local address
    /// `source`, e.g. `127.0.0.2`: a client the server tells apart from those on `127.0.0.1`.
    /// `receive_buffer` shrinks the kernel's receive buffer, for a client that stops reading.
    pub async fn connect_from(
        url: &str,
        source: IpAddr,
        receive_buffer: Option<u32>,
    ) -> anyhow::Result<PhoenixClient> {
        let address = url
            .strip_prefix("ws://")
            .and_then(|rest| rest.split('/').next())
            .context("not a ws:// URL")?;
        let address: SocketAddr = address.parse()?;
        let socket = TcpSocket::new_v4()?;
        if let Some(size) = receive_buffer {
            socket.set_recv_buffer_size(size)?;
        }
        socket.bind(SocketAddr::new(source, 0))?;
        let stream = socket
            .connect(address)
            .await
            .with_context(|| format!("cannot connect to {address} from {source}"))?;
        let (ws, _response) = client_async(url, MaybeTlsStream::Plain(stream))
            .await
            .with_context(|| format!("cannot open a WebSocket to {url}"))?;
        Ok(PhoenixClient::over(ws))
    }

    fn over(ws: WebSocketStream<MaybeTlsStream<TcpStream>>) -> PhoenixClient {
        PhoenixClient {
            ws,
            last_ref: 0,
            pending: VecDeque::new(),
            media_refs: HashSet::new(),
        }
    }

    /// Ends the connection with a TCP reset, as a crashed machine's network would: no close
    /// frame, no FIN.
    pub fn reset(self) {
        if let MaybeTlsStream::Plain(stream) = self.ws.get_ref() {
            let _ = stream.set_zero_linger();
        }
    }

    /// A fresh ref from this socket's counter, as phoenix.js makes them.
    pub fn next_ref(&mut self) -> String {
        self.last_ref += 1;
        self.last_ref.to_string()
    }

    /// Sends one frame as a text message.
    pub async fn send(&mut self, frame: &Frame) -> anyhow::Result<()> {
        self.send_message(Message::text(frame.encode())).await
    }

    /// Sends any WebSocket message, e.g. text that is no frame at all, or a binary message.
    pub async fn send_message(&mut self, message: Message) -> anyhow::Result<()> {
        self.ws
            .send(message)
            .await
            .context("cannot send on the socket")
    }

    /// The next frame, failing after [`RECV_TIMEOUT`] or if the socket closes.
    pub async fn recv(&mut self) -> anyhow::Result<Frame> {
        self.recv_within(RECV_TIMEOUT)
            .await?
            .ok_or_else(|| anyhow!("no frame within {RECV_TIMEOUT:?}"))
    }

    /// The next frame if one comes within `wait`; an error if the socket closes.
    pub async fn recv_within(&mut self, wait: Duration) -> anyhow::Result<Option<Frame>> {
        if let Some(frame) = self.pending.pop_front() {
            return Ok(Some(frame));
        }
        match timeout(wait, self.read_frame()).await {
            Ok(frame) => frame.map(Some),
            Err(_elapsed) => Ok(None),
        }
    }

    /// Fails if any frame arrives within `wait` (or is already waiting to be read), but for
    /// `ok` replies to this client's media pushes, which the server may send at any time.
    pub async fn expect_silence(&mut self, wait: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + wait;
        while let Some(frame) = self
            .recv_within(deadline.saturating_duration_since(Instant::now()))
            .await?
        {
            ensure!(
                self.acknowledges_media_push(&frame),
                "expected no frame, got {}",
                frame.encode()
            );
        }
        Ok(())
    }

    /// Waits for the server to close the socket, passing over any frames before its close
    /// frame, and returns that close frame.
    pub async fn expect_close(&mut self) -> anyhow::Result<CloseFrame> {
        Ok(self.frames_until_close(RECV_TIMEOUT).await?.1)
    }

    /// Reads until the server closes the socket, within `within`: the frames that came before
    /// its close frame (queued ones first), and that close frame.
    pub async fn frames_until_close(
        &mut self,
        within: Duration,
    ) -> anyhow::Result<(Vec<Frame>, CloseFrame)> {
        let mut frames: Vec<Frame> = self.pending.drain(..).collect();
        let closed = async {
            loop {
                match self.ws.next().await {
                    Some(Ok(Message::Text(text))) => frames.push(
                        Frame::decode(&text)
                            .with_context(|| format!("the server sent a bad frame: {text}"))?,
                    ),
                    Some(Ok(Message::Close(Some(close)))) => return Ok(close),
                    Some(Ok(Message::Close(None))) => bail!("closed without a close code"),
                    Some(Ok(_)) => {}
                    Some(Err(err)) => bail!("socket failed before a close frame: {err}"),
                    None => bail!("socket ended without a close frame"),
                }
            }
        };
        let close = timeout(within, closed)
            .await
            .map_err(|_| anyhow!("socket still open after {within:?}"))??;
        Ok((frames, close))
    }

    /// Sends a request (join, leave, heartbeat, media event) and returns the `phx_reply` that
    /// echoes its ref; other frames arriving meanwhile stay queued for `recv`.
    pub async fn request(&mut self, request: &Frame) -> anyhow::Result<Frame> {
        self.send(request).await?;
        let reply = async {
            loop {
                let frame = self.read_frame().await?;
                let answers_request = frame.event == PhoenixEvent::Reply
                    && frame.msg_ref == request.msg_ref
                    && frame.topic == request.topic;
                if answers_request {
                    return Ok(frame);
                }
                self.pending.push_back(frame);
            }
        };
        timeout(RECV_TIMEOUT, reply)
            .await
            .map_err(|_| anyhow!("no reply to {} within {RECV_TIMEOUT:?}", request.encode()))?
    }

    /// Sends a heartbeat and checks that the reply is `ok`: the socket is alive and served.
    pub async fn heartbeat(&mut self) -> anyhow::Result<()> {
        let msg_ref = self.next_ref();
        let heartbeat = Frame::request(
            None,
            msg_ref,
            PHOENIX_TOPIC,
            PhoenixEvent::Heartbeat,
            json!({}),
        );
        let reply = self.request(&heartbeat).await?;
        ensure!(
            reply == heartbeat.reply_ok(),
            "heartbeat answered with {}",
            reply.encode()
        );
        Ok(())
    }

    /// Joins `topic` with empty params (as the videoroom client does) and checks the reply is
    /// `ok`.
    pub async fn join(&mut self, topic: &str) -> anyhow::Result<Channel> {
        let join_ref = self.next_ref();
        let join = Frame::request(
            Some(join_ref.clone()),
            join_ref.clone(),
            topic,
            PhoenixEvent::Join,
            json!({}),
        );
        let reply = self.request(&join).await?;
        ensure!(
            reply == join.reply_ok(),
            "join of {topic} answered with {}",
            reply.encode()
        );
        Ok(Channel {
            topic: topic.to_owned(),
            join_ref,
        })
    }

    /// Closes the socket.
    pub async fn close(&mut self) {
        let _ = self.ws.close(None).await;
    }

    /// Sends a heartbeat without waiting for its reply, as phoenix.js does on its timer.
    pub async fn send_heartbeat(&mut self) -> anyhow::Result<()> {
        let heartbeat = Frame::request(
            None,
            self.next_ref(),
            PHOENIX_TOPIC,
            PhoenixEvent::Heartbeat,
            json!({}),
        );
        self.send(&heartbeat).await
    }

    /// Pushes a media event on `channel` and returns the push's ref.
    pub async fn push(&mut self, channel: &Channel, event: &ClientEvent) -> anyhow::Result<String> {
        let msg_ref = self.next_ref();
        let frame = Frame::media_event(
            Some(channel.join_ref.clone()),
            Some(msg_ref.clone()),
            &channel.topic,
            event.encode(),
        );
        self.send(&frame).await?;
        self.media_refs.insert(msg_ref.clone());
        Ok(msg_ref)
    }

    /// The next frame, which must be a media event (an `ok` reply to one of our media pushes
    /// before it is passed over), with the event decoded.
    pub async fn next_media_event(&mut self) -> anyhow::Result<(Frame, ServerEvent)> {
        loop {
            let frame = self.recv().await?;
            if self.acknowledges_media_push(&frame) {
                continue;
            }
            ensure!(
                frame.event == PhoenixEvent::MediaEvent,
                "expected a media event, got {}",
                frame.encode()
            );
            let event = decode_media_event(&frame)?;
            return Ok((frame, event));
        }
    }

    /// Waits for a media event of type `kind` (e.g. `"peerLeft"`); frames passed over stay
    /// queued for `recv`.
    pub async fn wait_for(&mut self, kind: &str) -> anyhow::Result<(Frame, ServerEvent)> {
        let is_wanted = |frame: &Frame| -> anyhow::Result<Option<ServerEvent>> {
            if frame.event != PhoenixEvent::MediaEvent {
                return Ok(None);
            }
            let event = decode_media_event(frame)?;
            Ok((event.kind() == kind).then_some(event))
        };
        for index in 0..self.pending.len() {
            if let Some(event) = is_wanted(&self.pending[index])? {
                let frame = self.pending.remove(index).expect("index is in range");
                return Ok((frame, event));
            }
        }
        let found = async {
            loop {
                let frame = self.read_frame().await?;
                if let Some(event) = is_wanted(&frame)? {
                    return Ok((frame, event));
                }
                self.pending.push_back(frame);
            }
        };
        timeout(RECV_TIMEOUT, found)
            .await
            .map_err(|_| anyhow!("no `{kind}` within {RECV_TIMEOUT:?}"))?
    }

    /// Sends the media `join` with `metadata` on a joined channel and waits for the answers:
    /// `peerAccepted`, then `peerJoined` for this peer (frames of other kinds stay queued).
    /// Returns the acceptance (its id and the peers already in the room).
    pub async fn join_room(
        &mut self,
        channel: &Channel,
        metadata: Metadata,
    ) -> anyhow::Result<PeerAccepted> {
        self.push(channel, &ClientEvent::Join(Join { metadata }))
            .await?;
        let accepted = match self.wait_for("peerAccepted").await? {
            (_, ServerEvent::PeerAccepted(accepted)) => accepted,
            (frame, _) => bail!("expected `peerAccepted`, got {}", frame.encode()),
        };
        loop {
            match self.wait_for("peerJoined").await? {
                (_, ServerEvent::PeerJoined(joined)) if joined.peer.id == accepted.id => {
                    return Ok(accepted)
                }
                _ => continue,
            }
        }
    }

    /// Whether `frame` is an `ok` reply to one of this client's media pushes.
    fn acknowledges_media_push(&self, frame: &Frame) -> bool {
        frame.event == PhoenixEvent::Reply
            && frame
                .msg_ref
                .as_ref()
                .is_some_and(|msg_ref| self.media_refs.contains(msg_ref))
            && frame
                .as_reply()
                .is_ok_and(|reply| reply.status == ReplyStatus::Ok)
    }

    /// Reads the next frame from the socket itself, with no deadline (queued frames aside). A
    /// text message that is not a frame is an error: the server must only send frames. Safe to
    /// cancel, so a long-running client can wait on it among other things.
    pub async fn read_frame(&mut self) -> anyhow::Result<Frame> {
        loop {
            match self.ws.next().await {
                Some(Ok(Message::Text(text))) => {
                    return Frame::decode(&text)
                        .with_context(|| format!("the server sent a bad frame: {text}"));
                }
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
                Some(Ok(Message::Close(close))) => bail!("the server closed the socket: {close:?}"),
                Some(Ok(other)) => bail!("unexpected message from the server: {other:?}"),
                Some(Err(err)) => bail!("socket failed: {err}"),
                None => bail!("socket ended"),
            }
        }
    }
}

/// The reason of an error `phx_reply`; fails on anything else.
pub fn error_reason(reply: &Frame) -> anyhow::Result<String> {
    ensure!(
        reply.event == PhoenixEvent::Reply,
        "expected a reply, got {}",
        reply.encode()
    );
    let payload = reply.as_reply()?;
    ensure!(
        payload.status == ReplyStatus::Error,
        "expected an error reply, got {}",
        reply.encode()
    );
    match payload.response.get("reason") {
        Some(serde_json::Value::String(reason)) => Ok(reason.clone()),
        _ => bail!("error reply without a reason: {}", reply.encode()),
    }
}

/// The server event in a `mediaEvent` frame. One that does not decode is a server bug.
pub fn decode_media_event(frame: &Frame) -> anyhow::Result<ServerEvent> {
    let data = frame.media_event_data()?;
    ServerEvent::decode(data)
        .with_context(|| format!("the server sent a bad media event: {}", frame.encode()))
}
