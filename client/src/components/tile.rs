//! One participant's tile: their video (with their audio), name, and muted / camera-off marks.

use web_sys::{HtmlVideoElement, MediaStream};
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
}

#[function_component(Tile)]
pub fn tile(props: &TileProps) -> Html {
    let video = use_node_ref();
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
                    play(&element);
                }
            }
        });
    }
    let class = classes!(
        "tile",
        props.local.then_some("local"),
        props.camera_off.then_some("camera-off")
    );
    html! {
        <figure {class} data-peer-id={props.peer_id.clone()} data-name={props.name.clone()}>
            <video ref={video} autoplay=true playsinline=true muted={props.local} />
            if props.camera_off {
                <div class="camera-off-indicator" title="Camera off">{ initials(&props.name) }</div>
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

/// Starts playback. The browser may refuse until the person interacts with the page (autoplay
/// rules) or interrupt it when the element changes: the next render tries again.
fn play(element: &HtmlVideoElement) {
    if let Ok(promise) = element.play() {
        wasm_bindgen_futures::spawn_local(async move {
            let _ = wasm_bindgen_futures::JsFuture::from(promise).await;
        });
    }
}

/// Up to two initials, shown when the camera is off.
fn initials(name: &str) -> String {
    name.split_whitespace()
        .filter_map(|word| word.chars().next())
        .take(2)
        .collect::<String>()
        .to_uppercase()
}
