//! Before joining: the camera as the others will see it, a level meter that moves when the
//! microphone hears something, pickers for both (remembered), and whether to join with each on
//! (remembered). Its camera and microphone are handed to the call when the person joins.

use gloo::timers::callback::Interval;
use shared::metadata::TrackType;
use wasm_bindgen_futures::spawn_local;
use web_sys::{AnalyserNode, AudioContext, HtmlInputElement, HtmlVideoElement, MediaStream};
use yew::prelude::*;

use crate::media::{self, Device, LocalMedia};
use crate::profile;

/// How often the level meter reads the microphone.
const LEVEL_INTERVAL_MS: u32 = 100;

#[function_component(Preview)]
pub fn preview() -> Html {
    let local = use_state(|| None::<LocalMedia>);
    let devices = use_state(Vec::<Device>::new);
    let problem = use_state(|| None::<String>);
    // Bumped when a picker swapped a track in the stream, which the stream itself does not say.
    let swaps = use_state(|| 0u32);
    let camera_on = use_state(|| profile::joins_with(TrackType::Camera));
    {
        let (local, devices) = (local.clone(), devices.clone());
        use_effect_with((), move |_| {
            spawn_local(async move {
                let opened = media::preview().await;
                local.set(Some(opened));
                devices.set(media::devices().await);
            });
            media::close_preview
        });
    }
    let stream = local.as_ref().and_then(|local| local.stream.clone());
    let video = use_node_ref();
    {
        let (video, stream) = (video.clone(), stream.clone());
        use_effect(move || {
            if let Some(element) = video.cast::<HtmlVideoElement>() {
                if element.src_object() != stream {
                    element.set_muted(true);
                    element.set_src_object(stream.as_ref());
                    media::play(&element);
                }
            }
        });
    }

    let on_pick = |kind: TrackType| {
        let (stream, problem, swaps) = (stream.clone(), problem.clone(), swaps.clone());
        Callback::from(move |event: Event| {
            let device_id = event
                .target_unchecked_into::<web_sys::HtmlSelectElement>()
                .value();
            let (stream, problem, swaps) = (stream.clone(), problem.clone(), swaps.clone());
            spawn_local(async move {
                let Some(stream) = stream else { return };
                match media::open_track(kind, &device_id).await {
                    Ok(new) => {
                        let old = media::tracks_of(Some(&stream), Some(kind))
                            .into_iter()
                            .next();
                        media::put_track(&stream, old.as_ref(), &new);
                        profile::remember_device(kind, &device_id);
                        problem.set(None);
                        swaps.set(*swaps + 1);
                    }
                    Err(err) => problem.set(Some(format!(
                        "That device could not be used: {}",
                        media::describe(&err)
                    ))),
                }
            });
        })
    };
    let picker = |kind: TrackType, id: &'static str, label: &'static str| {
        let current = media::tracks_of(stream.as_ref(), Some(kind))
            .first()
            .and_then(media::device_of);
        let choices: Vec<_> = devices
            .iter()
            .filter(|device| device.kind == kind)
            .collect();
        if current.is_none() || choices.is_empty() {
            return Html::default();
        }
        html! {
            <select id={id} aria-label={label} onchange={on_pick(kind)}>
                { for choices.into_iter().map(|device| html! {
                    <option value={device.id.clone()} selected={current.as_ref() == Some(&device.id)}>{ &device.label }</option>
                }) }
            </select>
        }
    };
    let choice = |kind: TrackType, id: &'static str, label: &'static str| {
        let camera_on = camera_on.clone();
        let on_change = Callback::from(move |event: Event| {
            let on = event.target_unchecked_into::<HtmlInputElement>().checked();
            profile::remember_joining_with(kind, on);
            if kind == TrackType::Camera {
                camera_on.set(on);
            }
        });
        html! {
            <label class="join-choice" for={id}>
                <input type="checkbox" id={id} checked={profile::joins_with(kind)} onchange={on_change} />
                { label }
            </label>
        }
    };
    let microphone = media::tracks_of(stream.as_ref(), Some(TrackType::Audio))
        .into_iter()
        .next();
    let opened_problem = local.as_ref().and_then(|local| local.problem.clone());
    html! {
        <div class="preview" data-swaps={swaps.to_string()}>
            <div class={classes!("preview-video", (!*camera_on).then_some("camera-off"))}>
                <video id="preview-video" ref={video} autoplay=true playsinline=true muted=true />
                if local.is_none() {
                    <span class="preview-note">{ "Opening camera and microphone…" }</span>
                } else if !*camera_on {
                    <span class="preview-note">{ "Camera off" }</span>
                }
            </div>
            if let (Some(stream), Some(track)) = (stream.clone(), microphone) {
                <MicLevel key={track.id()} {stream} />
            }
            { picker(TrackType::Audio, "preview-microphone", "Microphone") }
            { picker(TrackType::Camera, "preview-camera", "Camera") }
            if let Some(message) = problem.as_ref().or(opened_problem.as_ref()) {
                <p class="notice" role="status">{ message }</p>
            }
            <fieldset class="join-choices">
                <legend>{ "Join with" }</legend>
                { choice(TrackType::Audio, "join-microphone", "microphone on") }
                { choice(TrackType::Camera, "join-camera", "camera on") }
            </fieldset>
        </div>
    }
}

#[derive(Properties, PartialEq)]
struct MicLevelProps {
    /// The stream whose microphone is measured (made again when the microphone changes).
    stream: MediaStream,
}

/// How loud the microphone is now, as a meter (0 to 1): the peak of the last 512 samples.
#[function_component(MicLevel)]
fn mic_level(props: &MicLevelProps) -> Html {
    let level = use_state(|| 0.0f64);
    {
        let level = level.clone();
        use_effect_with(props.stream.clone(), move |stream| {
            let meter = Meter::new(stream);
            let interval = meter.as_ref().ok().map(|meter| {
                let (analyser, level) = (meter.analyser.clone(), level.clone());
                let mut samples = vec![0u8; analyser.fft_size() as usize];
                Interval::new(LEVEL_INTERVAL_MS, move || {
                    analyser.get_byte_time_domain_data(&mut samples);
                    level.set(peak(&samples));
                })
            });
            move || {
                drop(interval);
                if let Ok(meter) = meter {
                    let _ = meter.context.close();
                }
            }
        });
    }
    html! {
        <label class="mic-level" for="mic-level">
            { "Microphone" }
            <meter id="mic-level" min="0" max="1" low="0.05" value={format!("{:.3}", *level)} />
        </label>
    }
}

/// An audio graph from the microphone to an analyser, and nowhere else (nothing is played).
struct Meter {
    context: AudioContext,
    analyser: AnalyserNode,
}

impl Meter {
    fn new(stream: &MediaStream) -> Result<Meter, wasm_bindgen::JsValue> {
        let context = AudioContext::new()?;
        let source = context.create_media_stream_source(stream)?;
        let analyser = context.create_analyser()?;
        analyser.set_fft_size(512);
        source.connect_with_audio_node(&analyser)?;
        // A context made before the person touched the page may start suspended; the page is
        // capturing, which lets most browsers run it.
        let _ = context.resume();
        Ok(Meter { context, analyser })
    }
}

/// The peak of 8-bit samples centred on 128, from 0 (silence) to 1.
fn peak(samples: &[u8]) -> f64 {
    let max = samples
        .iter()
        .map(|&sample| (i32::from(sample) - 128).unsigned_abs())
        .max()
        .unwrap_or(0);
    f64::from(max) / 128.0
}
