//! The signaling side: sockets, rooms and what they say to each other.
//! - [`socket`]: one task per WebSocket, Phoenix framing, media events in and out;
//! - [`registry`] → [`room`]: one task per room owns its peers, tracks and negotiations, and
//!   drives each peer's media through the media side's endpoint handle;
//! - [`outbox`]: what a room hands a socket, bounded in bytes;
//! - [`relay`]: in a cluster, a channel carried to the node its room lives on;
//! - [`harness`]: a room driven without sockets, for its unit tests and the fuzzer.

pub mod harness;
pub(crate) mod outbox;
pub(crate) mod registry;
pub(crate) mod relay;
pub(crate) mod room;
pub(crate) mod socket;
