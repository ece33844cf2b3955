//! Where a join's time goes: the first moment of each step from starting the call to media
//! (`performance.now()`, ms), in `window.videoroomTimings` for the browser tests and for
//! anyone looking in the console. Steps after a reconnection keep their first time.

use js_sys::{Object, Reflect};
use wasm_bindgen::JsValue;

const TIMINGS: &str = "videoroomTimings";

/// The steps, in the order a join goes through them.
#[derive(Debug, Clone, Copy)]
pub enum Step {
    /// The call started (the page asked for camera and microphone and opened the socket).
    Started,
    /// `getUserMedia` gave the camera and microphone.
    Media,
    /// The room's channel was joined.
    Channel,
    PeerAccepted,
    OfferData,
    OfferSent,
    Answer,
    /// The first remote track arrived.
    Track,
    /// ICE and DTLS are up.
    Connected,
    /// A remote video's first frame is there to show.
    FirstFrame,
}

/// Records `step` now, unless it was recorded before.
pub fn mark(step: Step) {
    let Some(window) = web_sys::window() else {
        return;
    };
    let now = window
        .performance()
        .map_or(0.0, |performance| performance.now());
    let timings = match Reflect::get(&window, &TIMINGS.into()) {
        Ok(timings) if timings.is_object() => timings,
        _ => {
            let timings: JsValue = Object::new().into();
            let _ = Reflect::set(&window, &TIMINGS.into(), &timings);
            timings
        }
    };
    let name = JsValue::from_str(&format!("{step:?}"));
    if !Reflect::has(&timings, &name).unwrap_or(true) {
        let _ = Reflect::set(&timings, &name, &now.into());
    }
}
