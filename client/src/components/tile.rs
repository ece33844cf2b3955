//! One participant's tile: their video (with their audio), name, muted / camera-off marks (the
//! initials on a colour of their own when the camera is off), a click to pin it and a button to
//! show it full-screen.

use web_sys::{HtmlElement, HtmlVideoElement, MediaStream};
use yew::prelude::*;

#[derive(Properties, PartialEq)]
pub struct TileProps {
    pub peer_id: String,
    pub name: String,
    pub stream: Option<MediaStream>,
    /// Our own tile: mirrored, and muted so we do not hear ourselves.
    #[prop_or_default]
    pub local: bool,
    pub mic_muted: bool,
    pub camera_off: bool,
    /// Shown large, the others beside it.
    #[prop_or_default]
    pub pinned: bool,
    /// A click on the tile: pin it, or unpin it.
    pub on_pin: Callback<()>,
    /// Speaking now: highlighted.
    #[prop_or_default]
    pub speaking: bool,
    /// Its place among the tiles (CSS `order`, recent speakers first): tiles never move in
    /// the page, where a moved video stops playing.
    #[prop_or_default]
    pub order: i64,
    /// A shared screen: shown whole, never mirrored.
    #[prop_or_default]
    pub screen: bool,
    /// The video's figures, when the person asked to see them.
    #[prop_or_default]
    pub stats: Option<String>,
}

#[function_component(Tile)]
pub fn tile(props: &TileProps) -> Html {
    let video = use_node_ref();
    let figure = use_node_ref();
    {
        // After every render: the element shows this stream and plays. A media element that
        // was moved in the page pauses, and autoplay does not start it again.
        let (video, stream) = (video.clone(), props.stream.clone());
        use_effect(move || {
            if let Some(element) = video.cast::<HtmlVideoElement>() {
                if element.src_object() != stream {
                    element.set_src_object(stream.as_ref());
                }
                if stream.is_some() && element.paused() {
                    crate::media::play(&element);
                }
            }
        });
    }
    let class = classes!(
        "tile",
        props.local.then_some("local"),
        props.camera_off.then_some("camera-off"),
        props.pinned.then_some("pinned"),
        props.speaking.then_some("speaking"),
        props.screen.then_some("screen")
    );
    let on_click = props.on_pin.reform(|_: MouseEvent| ());
    let on_fullscreen = {
        let figure = figure.clone();
        Callback::from(move |event: MouseEvent| {
            // Not a pin as well.
            event.stop_propagation();
            if let Some(figure) = figure.cast::<HtmlElement>() {
                let _ = figure.request_fullscreen();
            }
        })
    };
    let local = props.local;
    let on_first_frame = Callback::from(move |_: Event| {
        if !local {
            crate::timings::mark(crate::timings::Step::FirstFrame);
        }
    });
    let colour = format!("background: hsl({}, 45%, 38%)", hue(&props.name));
    html! {
        <figure {class} ref={figure} onclick={on_click} title={if props.pinned { "Click to unpin" } else { "Click to pin" }}
            data-peer-id={props.peer_id.clone()} data-name={props.name.clone()} style={format!("order: {}", props.order)}>
            <video ref={video} autoplay=true playsinline=true muted={props.local} onloadeddata={on_first_frame} />
            if props.camera_off {
                <div class="camera-off-indicator" title="Camera off" style={colour}>{ initials(&props.name) }</div>
            }
            <button class="fullscreen" type="button" title="Full screen" aria-label="Full screen" onclick={on_fullscreen}>
                <svg viewBox="0 0 16 16" width="16" height="16" aria-hidden="true">
                    <path d="M1 6V1h5M10 1h5v5M15 10v5h-5M6 15H1v-5" fill="none" stroke="currentColor" stroke-width="2" />
                </svg>
            </button>
            if let Some(stats) = &props.stats {
                <div class="stats">{ stats }</div>
            }
            <figcaption>
                { &props.name }
                if props.mic_muted {
                    <span class="muted-indicator" title="Microphone muted">{ "🔇" }</span>
                }
            </figcaption>
        </figure>
    }
}

/// A hue of the name's own, so that camera-off tiles are told apart at a glance.
fn hue(name: &str) -> u32 {
    name.bytes().fold(7u32, |hash, byte| {
        hash.wrapping_mul(31).wrapping_add(u32::from(byte))
    }) % 360
}

/// Up to two initials, shown when the camera is off.
fn initials(name: &str) -> String {
    name.split_whitespace()
        .filter_map(|word| word.chars().next())
        .take(2)
        .collect::<String>()
        .to_uppercase()
}
