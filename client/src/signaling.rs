//! The Phoenix socket and the room's channel, over the browser's WebSocket: joins `room:<name>`,
//! heartbeats every 30 s, pushes media events, and reports what arrives.

use std::cell::Cell;
use std::rc::Rc;

use futures::channel::mpsc;
use futures::{SinkExt, StreamExt};
use gloo::net::websocket::futures::WebSocket;
use gloo::net::websocket::Message;
use gloo::timers::callback::Interval;
use serde_json::json;
use shared::phoenix::{ReplyStatus, PHOENIX_TOPIC};
use shared::{ClientEvent, Frame, PhoenixEvent, RoomId, ServerEvent};
use wasm_bindgen_futures::spawn_local;
use yew::Callback;

const HEARTBEAT_MS: u32 = 30_000;

/// What the channel reports.
#[derive(Debug, Clone)]
pub enum SignalingEvent {
    Joined,
    Event(ServerEvent),
    /// The server refused something or closed the channel; the text says what.
    Refused(String),
    Closed(String),
}

/// An open channel. Dropping it stops the heartbeat and closes the socket.
pub struct Signaling {
    topic: String,
    join_ref: String,
    last_ref: Rc<Cell<u64>>,
    outgoing: mpsc::UnboundedSender<String>,
    _heartbeat: Interval,
}

/// The join token of the page's link (`?token=…`), on a server with access control.
pub fn join_token() -> Option<String> {
    let search = web_sys::window()?.location().search().ok()?;
    web_sys::UrlSearchParams::new_with_str(&search)
        .ok()?
        .get("token")
}

/// The display name the link's join token gives (read, not verified: the server checks it).
pub fn join_token_name() -> Option<String> {
    let token = join_token()?;
    let payload = token.split('.').nth(1)?;
    // base64url without padding, as JWTs write it, to the base64 `atob` reads.
    let mut base64: String = payload
        .chars()
        .map(|c| match c {
            '-' => '+',
            '_' => '/',
            c => c,
        })
        .collect();
    while base64.len() % 4 != 0 {
        base64.push('=');
    }
    // `atob` gives one char per byte; the bytes are the payload's UTF-8.
    let bytes: Vec<u8> = web_sys::window()?
        .atob(&base64)
        .ok()?
        .chars()
        .map(|c| u8::try_from(u32::from(c)).unwrap_or(b'?'))
        .collect();
    let claims: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    Some(claims.get("name")?.as_str()?.to_owned())
}

impl Signaling {
    /// Opens the socket of the page's own server and joins the room's channel.
    pub fn connect(room: &RoomId, on_event: Callback<SignalingEvent>) -> Result<Signaling, String> {
        let location = web_sys::window().ok_or("no window")?.location();
        let scheme = if location.protocol().ok().as_deref() == Some("https:") {
            "wss"
        } else {
            "ws"
        };
        let host = location.host().map_err(|_| "no host")?;
        // A room link of a server with access control carries a join token: the socket takes
        // it as its `token` parameter.
        let token = join_token()
            .map(|token| format!("&token={}", js_sys::encode_uri_component(&token)))
            .unwrap_or_default();
        let socket = WebSocket::open(&format!(
            "{scheme}://{host}/socket/websocket?vsn=2.0.0{token}"
        ))
        .map_err(|err| format!("cannot open the signaling socket: {err}"))?;
        let (mut sink, mut stream) = socket.split();
        let (outgoing, mut queue) = mpsc::unbounded::<String>();
        spawn_local(async move {
            while let Some(text) = queue.next().await {
                if sink.send(Message::Text(text)).await.is_err() {
                    break;
                }
            }
            let _ = sink.close().await;
        });

        let last_ref = Rc::new(Cell::new(0));
        let topic = room.topic();
        let join_ref = next_ref(&last_ref);
        spawn_local({
            let topic = topic.clone();
            let join_ref = join_ref.clone();
            async move {
                let reason = loop {
                    match stream.next().await {
                        Some(Ok(Message::Text(text))) => {
                            if let Some(event) = interpret(&text, &topic, &join_ref) {
                                on_event.emit(event);
                            }
                        }
                        Some(Ok(Message::Bytes(_))) => {}
                        Some(Err(err)) => {
                            break format!("the connection to the server was lost ({err})")
                        }
                        None => break "the connection to the server was closed".to_owned(),
                    }
                };
                on_event.emit(SignalingEvent::Closed(reason));
            }
        });

        let join = Frame::request(
            Some(join_ref.clone()),
            join_ref.clone(),
            &topic,
            PhoenixEvent::Join,
            json!({}),
        );
        let _ = outgoing.unbounded_send(join.encode());
        let heartbeat = Interval::new(HEARTBEAT_MS, {
            let outgoing = outgoing.clone();
            let last_ref = last_ref.clone();
            move || {
                let beat = Frame::request(
                    None,
                    next_ref(&last_ref),
                    PHOENIX_TOPIC,
                    PhoenixEvent::Heartbeat,
                    json!({}),
                );
                let _ = outgoing.unbounded_send(beat.encode());
            }
        });
        Ok(Signaling {
            topic,
            join_ref,
            last_ref,
            outgoing,
            _heartbeat: heartbeat,
        })
    }

    pub fn push(&self, event: &ClientEvent) {
        let frame = Frame::media_event(
            Some(self.join_ref.clone()),
            Some(next_ref(&self.last_ref)),
            &self.topic,
            event.encode(),
        );
        let _ = self.outgoing.unbounded_send(frame.encode());
    }
}

fn next_ref(last_ref: &Cell<u64>) -> String {
    last_ref.set(last_ref.get() + 1);
    last_ref.get().to_string()
}

/// What a frame from the server means for this channel, if anything.
fn interpret(text: &str, topic: &str, join_ref: &str) -> Option<SignalingEvent> {
    let frame = match Frame::decode(text) {
        Ok(frame) => frame,
        Err(err) => {
            return Some(SignalingEvent::Refused(format!(
                "the server sent a bad frame: {err}"
            )))
        }
    };
    // Frames of an earlier join of this topic are stale (a null join_ref is not).
    if frame.topic != topic || frame.join_ref.as_deref().is_some_and(|r| r != join_ref) {
        return None;
    }
    match frame.event {
        PhoenixEvent::Reply => {
            let reply = frame.as_reply().ok()?;
            let is_join = frame.msg_ref.as_deref() == Some(join_ref);
            match reply.status {
                ReplyStatus::Ok if is_join => Some(SignalingEvent::Joined),
                ReplyStatus::Ok => None,
                ReplyStatus::Error => {
                    let reason = reply
                        .response
                        .get("reason")
                        .and_then(|r| r.as_str())
                        .unwrap_or("unknown reason");
                    Some(SignalingEvent::Refused(format!(
                        "the server refused a message: {reason}"
                    )))
                }
            }
        }
        PhoenixEvent::MediaEvent => match frame.media_event_data().and_then(ServerEvent::decode) {
            Ok(event) => Some(SignalingEvent::Event(event)),
            // Newer servers may send events this client does not know: ignore them.
            Err(shared::DecodeError::UnknownType(kind)) => {
                gloo::console::warn!(format!("ignoring unknown media event `{kind}`"));
                None
            }
            Err(err) => Some(SignalingEvent::Refused(format!(
                "the server sent a bad event: {err}"
            ))),
        },
        PhoenixEvent::Close => Some(SignalingEvent::Closed(
            "the server closed the room's channel".to_owned(),
        )),
        PhoenixEvent::Error => Some(SignalingEvent::Closed(
            "the room's channel crashed on the server".to_owned(),
        )),
        _ => None,
    }
}
