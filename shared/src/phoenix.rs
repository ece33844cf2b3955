//! Phoenix Channels V2 framing: every WebSocket text message is one [`Frame`],
//! `[join_ref, ref, topic, event, payload]`, with refs as strings or null and an object payload.

use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

use crate::{DecodeError, MAX_MESSAGE_LEN};

/// The topic of socket-level messages (heartbeats).
pub const PHOENIX_TOPIC: &str = "phoenix";

/// A frame's event name. The Phoenix ones are typed; anything else (an app event) is `Other`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PhoenixEvent {
    Join,
    Reply,
    Leave,
    Close,
    Error,
    Heartbeat,
    /// The videoroom's one app event: a media event as a JSON string in `payload.data`.
    MediaEvent,
    Other(String),
}

impl PhoenixEvent {
    pub fn as_str(&self) -> &str {
        match self {
            PhoenixEvent::Join => "phx_join",
            PhoenixEvent::Reply => "phx_reply",
            PhoenixEvent::Leave => "phx_leave",
            PhoenixEvent::Close => "phx_close",
            PhoenixEvent::Error => "phx_error",
            PhoenixEvent::Heartbeat => "heartbeat",
            PhoenixEvent::MediaEvent => "mediaEvent",
            PhoenixEvent::Other(name) => name,
        }
    }

    fn from_name(name: String) -> Self {
        match name.as_str() {
            "phx_join" => PhoenixEvent::Join,
            "phx_reply" => PhoenixEvent::Reply,
            "phx_leave" => PhoenixEvent::Leave,
            "phx_close" => PhoenixEvent::Close,
            "phx_error" => PhoenixEvent::Error,
            "heartbeat" => PhoenixEvent::Heartbeat,
            "mediaEvent" => PhoenixEvent::MediaEvent,
            _ => PhoenixEvent::Other(name),
        }
    }
}

/// The status of a `phx_reply`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ReplyStatus {
    Ok,
    Error,
}

/// The payload of a `phx_reply`: `{"status", "response"}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Reply {
    pub status: ReplyStatus,
    pub response: Value,
}

/// One Phoenix V2 frame.
#[derive(Debug, Clone, PartialEq)]
pub struct Frame {
    pub join_ref: Option<String>,
    pub msg_ref: Option<String>,
    pub topic: String,
    pub event: PhoenixEvent,
    /// Always a JSON object.
    pub payload: Map<String, Value>,
}

type WireFrame = (
    Option<String>,
    Option<String>,
    String,
    String,
    Map<String, Value>,
);

impl Frame {
    pub fn decode(text: &str) -> Result<Frame, DecodeError> {
        DecodeError::check_size(text, MAX_MESSAGE_LEN)?;
        // Parse first, so malformed JSON is reported as such and not as a frame of the wrong shape.
        let value: Value =
            serde_json::from_str(text).map_err(|err| DecodeError::from_json("frame", err))?;
        let (join_ref, msg_ref, topic, event, payload): WireFrame =
            serde_json::from_value(value).map_err(|err| DecodeError::from_json("frame", err))?;
        Ok(Frame {
            join_ref,
            msg_ref,
            topic,
            event: PhoenixEvent::from_name(event),
            payload,
        })
    }

    pub fn encode(&self) -> String {
        let wire = (
            &self.join_ref,
            &self.msg_ref,
            &self.topic,
            self.event.as_str(),
            &self.payload,
        );
        // A tuple of strings and a string-keyed JSON map cannot fail to serialize.
        serde_json::to_string(&wire).expect("a frame always serializes")
    }

    /// A push from the server: `ref` is null, `join_ref` is that of the topic's current join.
    pub fn push(
        join_ref: Option<String>,
        topic: &str,
        event: PhoenixEvent,
        payload: Value,
    ) -> Frame {
        Frame {
            join_ref,
            msg_ref: None,
            topic: topic.to_owned(),
            event,
            payload: into_object(payload),
        }
    }

    /// A `mediaEvent` frame carrying an encoded media event.
    pub fn media_event(
        join_ref: Option<String>,
        msg_ref: Option<String>,
        topic: &str,
        encoded_event: String,
    ) -> Frame {
        Frame {
            msg_ref,
            ..Frame::push(
                join_ref,
                topic,
                PhoenixEvent::MediaEvent,
                json!({ "data": encoded_event }),
            )
        }
    }

    /// `phx_close` for a join: the join's ref fills both ref slots.
    pub fn close(join_ref: &str, topic: &str) -> Frame {
        Frame {
            msg_ref: Some(join_ref.to_owned()),
            ..Frame::push(
                Some(join_ref.to_owned()),
                topic,
                PhoenixEvent::Close,
                json!({}),
            )
        }
    }

    /// `phx_error`: the channel of this join crashed.
    pub fn channel_error(join_ref: &str, topic: &str) -> Frame {
        Frame {
            msg_ref: Some(join_ref.to_owned()),
            ..Frame::push(
                Some(join_ref.to_owned()),
                topic,
                PhoenixEvent::Error,
                json!({}),
            )
        }
    }

    /// A request from a client: `phx_join` (with `join_ref == ref`), `phx_leave`, `heartbeat`.
    pub fn request(
        join_ref: Option<String>,
        msg_ref: String,
        topic: &str,
        event: PhoenixEvent,
        payload: Value,
    ) -> Frame {
        Frame {
            msg_ref: Some(msg_ref),
            ..Frame::push(join_ref, topic, event, payload)
        }
    }

    /// The reply to this frame: it echoes the request's refs and topic.
    pub fn reply(&self, status: ReplyStatus, response: Value) -> Frame {
        let payload = json!({ "status": status, "response": response });
        Frame {
            join_ref: self.join_ref.clone(),
            msg_ref: self.msg_ref.clone(),
            topic: self.topic.clone(),
            event: PhoenixEvent::Reply,
            payload: into_object(payload),
        }
    }

    pub fn reply_ok(&self) -> Frame {
        self.reply(ReplyStatus::Ok, json!({}))
    }

    /// An error reply with `{"reason": reason}`, e.g. `unmatched topic`.
    pub fn reply_error(&self, reason: &str) -> Frame {
        self.reply(ReplyStatus::Error, json!({ "reason": reason }))
    }

    /// The payload of a `phx_reply`.
    pub fn as_reply(&self) -> Result<Reply, DecodeError> {
        serde_json::from_value(Value::Object(self.payload.clone()))
            .map_err(|err| DecodeError::from_json("phx_reply", err))
    }

    /// The media event string of a `mediaEvent` frame (`payload.data`).
    pub fn media_event_data(&self) -> Result<&str, DecodeError> {
        match self.payload.get("data") {
            Some(Value::String(data)) => Ok(data),
            Some(_) => Err(DecodeError::BadValue {
                event: "mediaEvent".to_owned(),
                reason: "`data` must be a string of JSON".to_owned(),
            }),
            None => Err(DecodeError::MissingField {
                event: "mediaEvent".to_owned(),
                field: "data".to_owned(),
            }),
        }
    }
}

/// The object inside `value`; constructors only ever pass objects.
fn into_object(value: Value) -> Map<String, Value> {
    match value {
        Value::Object(map) => map,
        _ => Map::new(),
    }
}
