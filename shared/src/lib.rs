//! The videoroom wire protocol, defined once for the server (native) and the client (wasm).
//!
//! Two layers, as in `docs/protocol.md`:
//! - [`phoenix`]: Phoenix Channels V2 frames `[join_ref, ref, topic, event, payload]`;
//! - [`client_event`] / [`server_event`]: Membrane media events (the `membrane-webrtc-js` 0.3
//!   dialect) carried as a JSON string in a `mediaEvent` frame's `payload.data`.
//!
//! Ids live in [`ids`], the videoroom's metadata conventions in [`metadata`], and every decoding
//! failure is a [`DecodeError`]; decoding never panics.

#[macro_use]
mod envelope;
pub mod client_event;
mod error;
pub mod ids;
pub mod metadata;
pub mod phoenix;
pub mod server_event;

pub use client_event::ClientEvent;
pub use error::DecodeError;
pub use ids::{IdError, PeerId, RoomId, TrackId};
pub use phoenix::{Frame, PhoenixEvent};
pub use server_event::ServerEvent;

/// Free-form metadata of a peer or a track: stored and forwarded unchanged by the server.
pub type Metadata = serde_json::Value;

/// The largest WebSocket text message either side accepts. A re-offer of a big room carries one
/// m-line (≈ 2 KB) per track in the room, so this leaves room for a few hundred tracks.
pub const MAX_MESSAGE_LEN: usize = 1 << 20;
