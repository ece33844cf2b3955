//! The media side: everything that touches RTP. It never imports the signaling side; the room
//! drives it through an [`endpoint::EndpointHandle`] and hears back through
//! [`endpoint::EndpointReport`]s.
//! - [`endpoint`]: one per peer, its WebRTC peer connection, started at the peer's first offer;
//! - [`forward`]: a published track's fan-out to its subscribers' down-tracks, which
//!   [`rewrite`] numbers for their own leg; incoming RTP goes there straight from the
//!   publisher's endpoint, never through the room;
//! - [`codec`]: the one table of forwarded codecs; [`sdp`] the little read from an offer;
//!   [`webrtc_setup`] the media engine and interceptors every peer connection uses.

pub mod codec;
pub(crate) mod endpoint;
pub mod forward;
mod rewrite;
pub(crate) mod sdp;
pub mod webrtc_setup;
