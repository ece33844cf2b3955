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
        let video = video.clone();
        use_effect_with(props.stream.clone(), move |stream| {
            if let Some(element) = video.cast::<HtmlVideoElement>() {
                element.set_src_object(stream.as_ref());
                if stream.is_some() {
                    // Autoplay may wait for a click; the video starts then.
                    let _ = element.play();
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

/// Up to two initials, shown when the camera is off.
fn initials(name: &str) -> String {
    name.split_whitespace()
        .filter_map(|word| word.chars().next())
        .take(2)
        .collect::<String>()
        .to_uppercase()
}
