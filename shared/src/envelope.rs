//! The media-event envelope `{"type": str, "data"?: any}`, and its `custom` wrapping
//! `{"type":"custom","data":{"type": inner, "data"?: any}}` used for WebRTC signalling.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::{DecodeError, MAX_MESSAGE_LEN};

const CUSTOM: &str = "custom";

/// A decoded envelope whose `custom` wrapping, if any, has been taken off.
pub(crate) struct Opened {
    pub kind: String,
    data: Option<Value>,
}

#[derive(Deserialize)]
struct WireEnvelope {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    data: Option<Value>,
}

#[derive(Serialize)]
struct SealedEnvelope<'a, T> {
    #[serde(rename = "type")]
    kind: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    data: Option<T>,
}

/// Parses an envelope, taking off one `custom` wrapping: the bare and the wrapped form of an
/// event decode alike, as the Membrane client itself dispatches a custom event's inner object.
pub(crate) fn open(text: &str) -> Result<Opened, DecodeError> {
    DecodeError::check_size(text, MAX_MESSAGE_LEN)?;
    let outer: Value =
        serde_json::from_str(text).map_err(|err| DecodeError::from_json("media event", err))?;
    let outer = object_of::<WireEnvelope>("media event", outer)?;
    if outer.kind != CUSTOM {
        return Ok(Opened {
            kind: outer.kind,
            data: outer.data,
        });
    }
    let inner = outer.data.ok_or_else(|| DecodeError::MissingField {
        event: CUSTOM.to_owned(),
        field: "data".to_owned(),
    })?;
    let inner = object_of::<WireEnvelope>(CUSTOM, inner)?;
    Ok(Opened {
        kind: inner.kind,
        data: inner.data,
    })
}

/// Decodes a `T` from a JSON object: every envelope and every payload of the protocol is one,
/// and serde alone would also take an array for a struct.
fn object_of<T: DeserializeOwned>(what: &str, value: Value) -> Result<T, DecodeError> {
    if !value.is_object() {
        return Err(DecodeError::BadValue {
            event: what.to_owned(),
            reason: format!("expected a JSON object, found {}", json_kind(&value)),
        });
    }
    serde_json::from_value(value).map_err(|err| DecodeError::from_json(what, err))
}

impl Opened {
    /// The event's data as `T`; a missing or null `data` is an error.
    pub fn data<T: DeserializeOwned>(self) -> Result<T, DecodeError> {
        match self.data {
            Some(data) if !data.is_null() => object_of(&self.kind, data),
            _ => Err(DecodeError::MissingField {
                event: self.kind,
                field: "data".to_owned(),
            }),
        }
    }

    /// The event's data as `T`, or `T::default()` when `data` is missing or null.
    pub fn data_or_default<T: DeserializeOwned + Default>(self) -> Result<T, DecodeError> {
        match self.data {
            Some(ref data) if !data.is_null() => self.data(),
            _ => Ok(T::default()),
        }
    }
}

/// Encodes an event as `{"type": kind, "data": data}`, leaving `data` out when it is `None`,
/// and wraps it in a `custom` envelope when `custom` is set.
pub(crate) fn seal<T: Serialize>(kind: &str, data: Option<T>, custom: bool) -> String {
    let event = SealedEnvelope { kind, data };
    let encoded = if custom {
        serde_json::to_string(&SealedEnvelope {
            kind: CUSTOM,
            data: Some(event),
        })
    } else {
        serde_json::to_string(&event)
    };
    // Media event payloads hold only strings, numbers, bools and string-keyed maps.
    encoded.expect("a media event always serializes")
}

/// Implements `kind`, `encode` and `decode` for a media-event enum from one table of variants
/// and their wire names: `unit` variants carry no data, `data` variants require it, and
/// `defaulted` variants take their payload's `Default` when `data` is missing.
macro_rules! media_event_codec {
    (
        $event:ident {
            unit { $($unit:ident = $unit_wire:literal,)* }
            data { $($data:ident = $data_wire:literal,)* }
            defaulted { $($defaulted:ident = $defaulted_wire:literal,)* }
        }
    ) => {
        impl $event {
            /// The event's `type` on the wire.
            pub fn kind(&self) -> &'static str {
                match self {
                    $($event::$unit => $unit_wire,)*
                    $($event::$data(_) => $data_wire,)*
                    $($event::$defaulted(_) => $defaulted_wire,)*
                }
            }

            /// The JSON string that goes into a `mediaEvent` frame's `payload.data`.
            pub fn encode(&self) -> String {
                let (kind, custom) = (self.kind(), self.is_custom());
                match self {
                    $($event::$unit => $crate::envelope::seal::<()>(kind, None, custom),)*
                    $($event::$data(payload) => $crate::envelope::seal(kind, Some(payload), custom),)*
                    $($event::$defaulted(payload) => $crate::envelope::seal(kind, Some(payload), custom),)*
                }
            }

            /// Decodes a media event string, in its bare or its `custom`-wrapped form.
            pub fn decode(text: &str) -> Result<$event, $crate::DecodeError> {
                let event = $crate::envelope::open(text)?;
                Ok(match event.kind.as_str() {
                    $($unit_wire => $event::$unit,)*
                    $($data_wire => $event::$data(event.data()?),)*
                    $($defaulted_wire => $event::$defaulted(event.data_or_default()?),)*
                    _ => return Err($crate::DecodeError::UnknownType(event.kind)),
                })
            }
        }
    };
}

fn json_kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}
