//! Before joining: whether to start with the microphone and the camera on (remembered).

use shared::metadata::TrackType;
use web_sys::HtmlInputElement;
use yew::prelude::*;

use crate::profile;

#[function_component(JoinChoices)]
pub fn join_choices() -> Html {
    let choice = |kind: TrackType, id: &'static str, label: &'static str| {
        let on_change = Callback::from(move |event: Event| {
            let on = event.target_unchecked_into::<HtmlInputElement>().checked();
            profile::remember_joining_with(kind, on);
        });
        html! {
            <label class="join-choice" for={id}>
                <input type="checkbox" id={id} checked={profile::joins_with(kind)} onchange={on_change} />
                { label }
            </label>
        }
    };
    html! {
        <fieldset class="join-choices">
            <legend>{ "Join with" }</legend>
            { choice(TrackType::Audio, "join-microphone", "microphone on") }
            { choice(TrackType::Camera, "join-camera", "camera on") }
        </fieldset>
    }
}
