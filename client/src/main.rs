//! videoroom's web client. UI lives in function components (`pages/`, `components/`); the
//! browser glue in its own modules: `media` (camera and microphone), `signaling` (the Phoenix
//! socket), `rtc` (the call over `RTCPeerConnection`), with `room_state` between them and the UI;
//! `timings` records where a join's time goes.

mod app;
mod components;
mod media;
mod pages;
mod profile;
mod room_state;
mod rtc;
mod signaling;
mod stats;
mod timings;

fn main() {
    yew::Renderer::<app::App>::new().render();
}
