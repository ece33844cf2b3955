//! The camera and microphone: `getUserMedia` with sensible constraints (the devices last chosen
//! preferred), falling back to what exists (audio only, video only), and a message a person
//! understands when it fails; the devices there are, and one device's track for a switch. The
//! media opened for the preview before joining is handed to the call, so joining does not wait
//! for the camera a second time.

use std::cell::RefCell;

use futures::future::{FutureExt, LocalBoxFuture, Shared};
use js_sys::Reflect;
use shared::metadata::TrackType;
use wasm_bindgen::{JsCast, JsValue};
use wasm_bindgen_futures::{spawn_local, JsFuture};
use web_sys::{
    DomException, MediaDeviceInfo, MediaDeviceKind, MediaStream, MediaStreamConstraints,
    MediaStreamTrack, MediaTrackConstraints,
};

use crate::profile;

/// A camera or microphone the browser offers.
#[derive(Debug, Clone, PartialEq)]
pub struct Device {
    pub id: String,
    pub label: String,
    /// `Audio` for a microphone, `Camera` for a camera.
    pub kind: TrackType,
}

/// The cameras and microphones there are now (labelled once access was granted).
pub async fn devices() -> Vec<Device> {
    let Some(list) = media_devices()
        .and_then(|devices| devices.enumerate_devices())
        .ok()
    else {
        return Vec::new();
    };
    let Ok(list) = JsFuture::from(list).await else {
        return Vec::new();
    };
    let mut devices = Vec::new();
    for info in js_sys::Array::from(&list).iter() {
        let info: MediaDeviceInfo = info.unchecked_into();
        let kind = match info.kind() {
            MediaDeviceKind::Audioinput => TrackType::Audio,
            MediaDeviceKind::Videoinput => TrackType::Camera,
            _ => continue,
        };
        let number = devices.iter().filter(|d: &&Device| d.kind == kind).count() + 1;
        let label = match (info.label(), kind) {
            (label, _) if !label.is_empty() => label,
            (_, TrackType::Audio) => format!("Microphone {number}"),
            _ => format!("Camera {number}"),
        };
        devices.push(Device {
            id: info.device_id(),
            label,
            kind,
        });
    }
    devices
}

/// The device a track comes from.
pub fn device_of(track: &MediaStreamTrack) -> Option<String> {
    Reflect::get(&track.get_settings(), &"deviceId".into())
        .ok()?
        .as_string()
}

/// A track of exactly the device `device_id`, of `kind`.
pub async fn open_track(kind: TrackType, device_id: &str) -> Result<MediaStreamTrack, JsValue> {
    let constraints = MediaStreamConstraints::new();
    let exact = js_sys::Object::new();
    Reflect::set(&exact, &"exact".into(), &device_id.into())?;
    match kind {
        TrackType::Audio => {
            let audio = MediaTrackConstraints::new();
            audio.set_device_id(&exact);
            constraints.set_audio(&audio);
        }
        _ => {
            let video = camera_constraints()?;
            video.set_device_id(&exact);
            constraints.set_video(&video);
        }
    }
    let stream: MediaStream =
        JsFuture::from(media_devices()?.get_user_media_with_constraints(&constraints)?)
            .await?
            .dyn_into()?;
    stream
        .get_tracks()
        .get(0)
        .dyn_into()
        .map_err(|_| JsValue::from_str("the device gave no track"))
}

/// The screen (a window or tab the person picks): up to 1920×1080, for reading, at a few
/// frames a second, without sound.
pub async fn open_screen() -> Result<MediaStream, JsValue> {
    let constraints = web_sys::DisplayMediaStreamConstraints::new();
    let video = MediaTrackConstraints::new();
    video.set_width(&ideal(1920.0)?);
    video.set_height(&ideal(1080.0)?);
    video.set_frame_rate(&ideal(5.0)?);
    constraints.set_video(&video);
    constraints.set_audio(&JsValue::FALSE);
    let stream: MediaStream =
        JsFuture::from(media_devices()?.get_display_media_with_constraints(&constraints)?)
            .await?
            .dyn_into()?;
    for track in tracks_of(Some(&stream), None) {
        // Sharp text over smooth motion when the link is tight.
        let _ = Reflect::set(&track, &"contentHint".into(), &"detail".into());
    }
    Ok(stream)
}

fn media_devices() -> Result<web_sys::MediaDevices, JsValue> {
    web_sys::window()
        .ok_or("no window")?
        .navigator()
        .media_devices()
}

/// What the browser gave us: a stream (maybe with only some tracks), and what went wrong.
#[derive(Clone)]
pub struct LocalMedia {
    pub stream: Option<MediaStream>,
    pub problem: Option<String>,
}

/// Asks for camera (1280×720 at 24 fps) and microphone; then for either alone when the pair
/// is not there. Permission refused ends the asking: the person said no.
pub async fn open() -> LocalMedia {
    let mut problem = None;
    for (audio, video) in [(true, true), (true, false), (false, true)] {
        match get_user_media(audio, video).await {
            Ok(stream) => {
                let problem = (!(audio && video)).then(|| {
                    let missing = if audio { "camera" } else { "microphone" };
                    format!(
                        "No {missing} could be used: the others get your {} only.",
                        if audio { "voice" } else { "video" }
                    )
                });
                return LocalMedia {
                    stream: Some(stream),
                    problem,
                };
            }
            Err(err) => {
                let name = err
                    .dyn_ref::<DomException>()
                    .map(DomException::name)
                    .unwrap_or_default();
                if name == "NotAllowedError" || name == "SecurityError" {
                    return LocalMedia {
                        stream: None,
                        problem: Some("Camera and microphone access was denied, so the others cannot see or hear you. Allow access for this site and reload to join with them.".to_owned()),
                    };
                }
                problem = Some(format!("No camera or microphone could be used ({name}): you can see and hear the others, but they cannot see or hear you."));
            }
        }
    }
    LocalMedia {
        stream: None,
        problem,
    }
}

async fn get_user_media(audio: bool, video: bool) -> Result<MediaStream, JsValue> {
    let constraints = MediaStreamConstraints::new();
    if audio {
        let audio = MediaTrackConstraints::new();
        if let Some(id) = profile::device(TrackType::Audio) {
            audio.set_device_id(&ideal(id)?);
        }
        constraints.set_audio(&audio);
    } else {
        constraints.set_audio(&JsValue::FALSE);
    }
    if video {
        let video = camera_constraints()?;
        if let Some(id) = profile::device(TrackType::Camera) {
            video.set_device_id(&ideal(id)?);
        }
        constraints.set_video(&video);
    } else {
        constraints.set_video(&JsValue::FALSE);
    }
    let stream =
        JsFuture::from(media_devices()?.get_user_media_with_constraints(&constraints)?).await?;
    stream.dyn_into()
}

/// 1280×720 at 24 fps, as close as the camera gets: the camera is sent in three layers (see
/// `rtc`), and browsers send fewer layers from smaller pictures.
fn camera_constraints() -> Result<MediaTrackConstraints, JsValue> {
    let video = MediaTrackConstraints::new();
    video.set_width(&ideal(1280.0)?);
    video.set_height(&ideal(720.0)?);
    video.set_frame_rate(&ideal(24.0)?);
    Ok(video)
}

/// `{ideal: value}`: the browser gets close without failing when it cannot match.
fn ideal(value: impl Into<JsValue>) -> Result<JsValue, JsValue> {
    let object = js_sys::Object::new();
    Reflect::set(&object, &"ideal".into(), &value.into())?;
    Ok(object.into())
}

/// Camera and microphone being opened (or opened), for whoever awaits them.
pub type Opening = Shared<LocalBoxFuture<'static, LocalMedia>>;

/// The preview's media, and whether a call was started with it (it is then the call's).
struct Preview {
    opening: Opening,
    for_call: bool,
}

thread_local! {
    static PREVIEW: RefCell<Option<Preview>> = const { RefCell::new(None) };
}

/// The preview's camera and microphone, opened now unless they are open or opening.
pub fn preview() -> Opening {
    PREVIEW.with(|preview| {
        preview
            .borrow_mut()
            .get_or_insert_with(|| Preview {
                opening: open().boxed_local().shared(),
                for_call: false,
            })
            .opening
            .clone()
    })
}

/// Joining: the preview's media goes to the call that starts next.
pub fn hand_preview_to_call() {
    PREVIEW.with(|preview| {
        if let Some(preview) = preview.borrow_mut().as_mut() {
            preview.for_call = true;
        }
    });
}

/// The preview's media, if it was handed to a call (see [`hand_preview_to_call`]).
pub fn take_preview() -> Option<Opening> {
    PREVIEW.with(|preview| {
        let mut preview = preview.borrow_mut();
        if preview.as_ref().is_some_and(|p| p.for_call) {
            preview.take().map(|p| p.opening)
        } else {
            None
        }
    })
}

/// The preview is gone without a call taking its media: the camera and microphone are
/// released (once open, if they are still opening).
pub fn close_preview() {
    let unused = PREVIEW.with(|preview| {
        let mut preview = preview.borrow_mut();
        if preview.as_ref().is_some_and(|p| !p.for_call) {
            preview.take()
        } else {
            None
        }
    });
    if let Some(preview) = unused {
        spawn_local(async move { stop_tracks(preview.opening.await.stream.as_ref()) });
    }
}

/// Puts `new` in `stream` in place of `old` (stopped), if there was one.
pub fn put_track(stream: &MediaStream, old: Option<&MediaStreamTrack>, new: &MediaStreamTrack) {
    if let Some(old) = old {
        stream.remove_track(old);
        old.stop();
    }
    stream.add_track(new);
}

pub fn stop_tracks(stream: Option<&MediaStream>) {
    for track in tracks_of(stream, None) {
        track.stop();
    }
}

/// The stream's microphone (`Audio`) or camera (any other type) tracks, or all of them.
pub fn tracks_of(
    stream: Option<&MediaStream>,
    track_type: Option<TrackType>,
) -> Vec<MediaStreamTrack> {
    let Some(stream) = stream else {
        return Vec::new();
    };
    let tracks = match track_type {
        None => stream.get_tracks(),
        Some(TrackType::Audio) => stream.get_audio_tracks(),
        Some(_) => stream.get_video_tracks(),
    };
    tracks
        .iter()
        .filter_map(|track| track.dyn_into().ok())
        .collect()
}

/// Starts playback. The browser may refuse until the person interacts with the page (autoplay
/// rules) or interrupt it when the element changes: the next render tries again.
pub fn play(element: &web_sys::HtmlMediaElement) {
    if let Ok(promise) = element.play() {
        spawn_local(async move {
            let _ = JsFuture::from(promise).await;
        });
    }
}

/// A JavaScript error as text.
pub fn describe(err: &JsValue) -> String {
    err.dyn_ref::<js_sys::Error>()
        .map(|err| String::from(err.message()))
        .or_else(|| err.as_string())
        .unwrap_or_else(|| format!("{err:?}"))
}
