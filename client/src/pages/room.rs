//! The room page. Joining the call is not built yet, and the page says so.

use yew::prelude::*;
use yew_router::prelude::*;

use crate::app::Route;

#[derive(Properties, PartialEq)]
pub struct RoomProps {
    pub name: String,
}

#[function_component(Room)]
pub fn room(props: &RoomProps) -> Html {
    html! {
        <main class="room">
            <h1 id="room-title">{ format!("Room {}", props.name) }</h1>
            <p class="notice" role="status">
                { "Calls are not available yet: this build of videoroom serves the pages only." }
            </p>
            <Link<Route> to={Route::Home}>{ "Back home" }</Link<Route>>
        </main>
    }
}
