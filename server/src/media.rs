//! The media side: everything that touches RTP. It never imports the signaling side; a room
//! drives it through its [`engine::RoomMedia`] and each peer's [`engine::EndpointHandle`], and
//! hears back through [`engine::EndpointReport`]s.
//! - [`engine`]: the worker threads and the handles rooms hold; commands in, reports out;
//! - [`worker`]: one thread's event loop over its shared UDP socket ([`udp`]) and ICE-TCP
//!   listener ([`tcp`]), the datagrams routed to connections by [`demux`], the forwarding from
//!   publishers to subscribers;
//! - [`endpoint`]: one peer's sans-I/O peer connection and what its negotiations decided;
//! - [`down_track`]: a subscriber's leg of a track, numbered for it by [`rewrite`] (and its VP8
//!   pictures by [`vp8`]), on the
//!   layer [`simulcast`] chooses, held within the subscriber's downlink ([`estimate`], from the
//!   feedback [`twcc`] brings) by [`allocation`];
//! - [`codec`]: the one table of forwarded codecs; [`sdp`] the little read from an offer;
//!   [`setup`] the codecs and interceptors every peer connection uses; [`addresses`] the
//!   machine's own addresses, candidates beside loopback; [`voice`] who is speaking, from
//!   the audio level in each audio packet.

mod addresses;
pub(crate) mod allocation;
pub mod codec;
pub mod demux;
pub mod down_track;
pub(crate) mod endpoint;
pub mod engine;
pub mod estimate;
mod rewrite;
pub(crate) mod sdp;
pub mod setup;
pub(crate) mod simulcast;
mod tcp;
pub(crate) mod twcc;
pub mod udp;
pub mod voice;
pub mod vp8;
mod worker;
