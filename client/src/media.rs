//! The camera and microphone: `getUserMedia` with sensible constraints, falling back to what
//! exists (audio only, video only), and a message a person understands when it fails.

use js_sys::Reflect;
use wasm_bindgen::{JsCast, JsValue};
use wasm_bindgen_futures::JsFuture;
use web_sys::{DomException, MediaStream, MediaStreamConstraints, MediaTrackConstraints};

/// What the browser gave us: a stream (maybe with only some tracks), and what went wrong.
pub struct LocalMedia {
    pub stream: Option<MediaStream>,
    pub problem: Option<String>,
}

/// Asks for camera (640×360 at 24 fps) and microphone; then for either alone when the pair
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
    let devices = web_sys::window()
        .ok_or("no window")?
        .navigator()
        .media_devices()?;
    let constraints = MediaStreamConstraints::new();
    constraints.set_audio(&JsValue::from_bool(audio));
    if video {
        let video = MediaTrackConstraints::new();
        video.set_width(&ideal(640.0)?);
        video.set_height(&ideal(360.0)?);
        video.set_frame_rate(&ideal(24.0)?);
        constraints.set_video(&video);
    } else {
        constraints.set_video(&JsValue::FALSE);
    }
    let stream = JsFuture::from(devices.get_user_media_with_constraints(&constraints)?).await?;
    stream.dyn_into()
}

/// `{ideal: value}`: the browser gets close without failing when it cannot match.
fn ideal(value: f64) -> Result<JsValue, JsValue> {
    let object = js_sys::Object::new();
    Reflect::set(&object, &"ideal".into(), &value.into())?;
    Ok(object.into())
}
