//! The home page: a room name and a display name, validated, then off to `/room/<name>`.

use shared::RoomId;
use web_sys::HtmlInputElement;
use yew::prelude::*;
use yew_router::prelude::*;

use crate::app::Route;
use crate::components::Preview;
use crate::media;
use crate::profile;

#[function_component(Home)]
pub fn home() -> Html {
    let room = use_state(profile::last_room);
    let name = use_state(profile::display_name);
    let error = use_state(|| None::<String>);
    let navigator = use_navigator();

    let on_room = text_setter(room.clone());
    let on_name = text_setter(name.clone());
    let on_submit = {
        let (room, name, error) = (room.clone(), name.clone(), error.clone());
        Callback::from(move |event: SubmitEvent| {
            event.prevent_default();
            let room_id = match RoomId::new(room.trim()) {
                Ok(room_id) => room_id,
                Err(err) => return error.set(Some(format!("Room name: {err}."))),
            };
            let display_name = match profile::validate_display_name(&name) {
                Ok(display_name) => display_name,
                Err(message) => return error.set(Some(message.to_owned())),
            };
            profile::remember(room_id.as_str(), display_name);
            media::hand_preview_to_call();
            profile::intend_to_join();
            if let Some(navigator) = &navigator {
                navigator.push(&Route::Room {
                    name: room_id.as_str().to_owned(),
                });
            }
        })
    };

    html! {
        <main class="home">
            <h1>{ "videoroom" }</h1>
            <p class="tagline">{ "Pick a room, say who you are, and talk with everyone in it." }</p>
            <form id="join-form" onsubmit={on_submit}>
                <label for="room-name">{ "Room" }</label>
                <input id="room-name" value={(*room).clone()} oninput={on_room}
                    placeholder="standup" autocomplete="off" />
                <label for="display-name">{ "Your name" }</label>
                <input id="display-name" value={(*name).clone()} oninput={on_name}
                    placeholder="Ann" autocomplete="name" />
                <Preview />
                if let Some(message) = &*error {
                    <p class="error" role="alert">{ message }</p>
                }
                <button id="join" type="submit">{ "Join" }</button>
            </form>
        </main>
    }
}

/// An `oninput` callback that keeps `state` equal to the input's text.
fn text_setter(state: UseStateHandle<String>) -> Callback<InputEvent> {
    Callback::from(move |event: InputEvent| {
        state.set(event.target_unchecked_into::<HtmlInputElement>().value());
    })
}
