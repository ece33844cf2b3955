//! The videoroom's metadata conventions: helpers to read and build them, never restrictions.
//! Peers carry `{"displayName"}`; tracks carry `{"type": "camera"|"audio"|"screensharing",
//! "active": bool}`. Any other metadata is stored and forwarded unchanged.

use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::Metadata;

/// What a track shows, as in the videoroom's track metadata `type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TrackType {
    Camera,
    Audio,
    Screensharing,
}

/// `{"displayName": name}`.
pub fn peer_metadata(display_name: &str) -> Metadata {
    json!({ "displayName": display_name })
}

/// The peer's `displayName`, if its metadata has one.
pub fn display_name(metadata: &Metadata) -> Option<&str> {
    metadata.get("displayName")?.as_str()
}

/// Makes `metadata` name the peer `name`, keeping whatever else it holds (an object), or
/// replacing it (anything else).
pub fn set_display_name(metadata: &mut Metadata, name: &str) {
    match metadata {
        Metadata::Object(fields) => {
            fields.insert("displayName".to_owned(), name.into());
        }
        other => *other = peer_metadata(name),
    }
}

/// `{"type": track_type, "active": active}`.
pub fn track_metadata(track_type: TrackType, active: bool) -> Metadata {
    json!({ "type": track_type, "active": active })
}

/// The track's `type`, if its metadata has a known one.
pub fn track_type(metadata: &Metadata) -> Option<TrackType> {
    serde_json::from_value(metadata.get("type")?.clone()).ok()
}

/// Whether the track is on (not muted, camera not off). Tracks without `active` are on.
pub fn track_active(metadata: &Metadata) -> bool {
    metadata
        .get("active")
        .and_then(|active| active.as_bool())
        .unwrap_or(true)
}
