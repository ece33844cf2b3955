//! What the browser remembers between visits (localStorage): the last room and display name,
//! and the camera and microphone last chosen.

use std::cell::Cell;

use gloo::storage::{LocalStorage, Storage};
use shared::metadata::TrackType;

const ROOM_KEY: &str = "videoroom.room";
const NAME_KEY: &str = "videoroom.displayName";

pub fn last_room() -> String {
    LocalStorage::get(ROOM_KEY).unwrap_or_default()
}

pub fn display_name() -> String {
    LocalStorage::get(NAME_KEY).unwrap_or_default()
}

/// Remembers the choice; a browser that refuses storage (private mode) just forgets it.
pub fn remember(room: &str, display_name: &str) {
    let _ = LocalStorage::set(ROOM_KEY, room);
    let _ = LocalStorage::set(NAME_KEY, display_name);
}

fn device_key(kind: TrackType) -> &'static str {
    match kind {
        TrackType::Audio => "videoroom.microphone",
        _ => "videoroom.camera",
    }
}

/// The device of `kind` last chosen, if any.
pub fn device(kind: TrackType) -> Option<String> {
    LocalStorage::get(device_key(kind)).ok()
}

pub fn remember_device(kind: TrackType, device_id: &str) {
    let _ = LocalStorage::set(device_key(kind), device_id);
}

fn joining_key(kind: TrackType) -> &'static str {
    match kind {
        TrackType::Audio => "videoroom.joinWithMicrophone",
        _ => "videoroom.joinWithCamera",
    }
}

/// Whether calls start with the microphone (`Audio`) or camera on; on unless chosen otherwise.
pub fn joins_with(kind: TrackType) -> bool {
    LocalStorage::get(joining_key(kind)).unwrap_or(true)
}

pub fn remember_joining_with(kind: TrackType, on: bool) {
    let _ = LocalStorage::set(joining_key(kind), on);
}

/// A display name must say something and fit on a tile.
pub fn validate_display_name(name: &str) -> Result<&str, &'static str> {
    let name = name.trim();
    match name.chars().count() {
        0 => Err("Enter a display name."),
        1..=40 => Ok(name),
        _ => Err("A display name has at most 40 characters."),
    }
}

thread_local! {
    /// Set by the home page's Join: the room page then starts the call at once.
    static JOIN_INTENT: Cell<bool> = const { Cell::new(false) };
}

pub fn intend_to_join() {
    JOIN_INTENT.with(|intent| intent.set(true));
}

/// Whether the person just clicked Join on the home page (asked once).
pub fn take_join_intent() -> bool {
    JOIN_INTENT.with(|intent| intent.replace(false))
}
