//! The room page: asks for a display name when there is none yet, then runs the call and shows
//! its tiles, participants, controls, and anything that went wrong.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;

use gloo::timers::callback::Interval;
use shared::client_event::SimulcastLayer;
use shared::metadata::TrackType;
use shared::{RoomId, TrackId};
use wasm_bindgen::JsCast;
use wasm_bindgen_futures::spawn_local;
use yew::prelude::*;
use yew_router::prelude::*;

use crate::app::Route;
use crate::components::{Chat, Preview, Tile};
use crate::media;
use crate::profile;
use crate::room_state::{RoomState, Status};
use crate::rtc::Session;
use crate::signaling;
use crate::stats::{inbound_video, Sampler, VideoStats};

/// The tile id of our own shared screen.
const LOCAL_SCREEN: &str = "screen";

/// The tile id of `peer`'s shared screen.
fn screen_tile_id(peer: &shared::PeerId) -> String {
    format!("{peer}:screen")
}

/// The simulcast layer that fills a tile `width` CSS pixels wide on a screen of
/// `pixel_ratio`: `l` (320 pixels wide) up to 360, `m` (640) up to 720, else `h` (1280).
fn layer_for_width(width: f64, pixel_ratio: f64) -> SimulcastLayer {
    match width * pixel_ratio.max(1.0) {
        pixels if pixels <= 360.0 => SimulcastLayer::Low,
        pixels if pixels <= 720.0 => SimulcastLayer::Medium,
        _ => SimulcastLayer::High,
    }
}

/// How often the video figures are read while shown.
const STATS_INTERVAL_MS: u32 = 1000;

#[derive(Properties, PartialEq)]
pub struct RoomProps {
    pub name: String,
}

#[function_component(Room)]
pub fn room(props: &RoomProps) -> Html {
    let room_id = match RoomId::new(props.name.clone()) {
        Ok(room_id) => room_id,
        Err(err) => {
            return html! {
                <main class="room" data-status="failed">
                    <h1 id="room-title">{ "No such room" }</h1>
                    <p class="error-banner" role="alert">{ format!("“{}” is not a room name: {err}.", props.name) }</p>
                    <Link<Route> to={Route::Home}>{ "Back home" }</Link<Route>>
                </main>
            };
        }
    };
    // Coming from the home page, the name is chosen; a shared link asks for it (and the click
    // lets the browser play the others' sound).
    let display_name = use_state(|| {
        profile::take_join_intent()
            .then(profile::display_name)
            .filter(|name| !name.is_empty())
    });
    match (*display_name).clone() {
        Some(name) => html! { <Call room={room_id} display_name={name} /> },
        None => {
            let on_join = Callback::from(move |name: String| display_name.set(Some(name)));
            html! { <NameForm room={room_id} {on_join} /> }
        }
    }
}

#[derive(Properties, PartialEq)]
struct NameFormProps {
    room: RoomId,
    on_join: Callback<String>,
}

#[function_component(NameForm)]
fn name_form(props: &NameFormProps) -> Html {
    let name = use_state(|| signaling::join_token_name().unwrap_or_else(profile::display_name));
    let error = use_state(|| None::<&'static str>);
    let on_input = {
        let name = name.clone();
        Callback::from(move |event: InputEvent| {
            name.set(
                event
                    .target_unchecked_into::<web_sys::HtmlInputElement>()
                    .value(),
            );
        })
    };
    let on_submit = {
        let (name, error, on_join, room) = (
            name.clone(),
            error.clone(),
            props.on_join.clone(),
            props.room.clone(),
        );
        Callback::from(move |event: SubmitEvent| {
            event.prevent_default();
            match profile::validate_display_name(&name) {
                Ok(valid) => {
                    profile::remember(room.as_str(), valid);
                    media::hand_preview_to_call();
                    on_join.emit(valid.to_owned());
                }
                Err(message) => error.set(Some(message)),
            }
        })
    };
    html! {
        <main class="home">
            <h1 id="room-title">{ format!("Room {}", props.room) }</h1>
            <form id="name-form" onsubmit={on_submit}>
                <label for="display-name">{ "Your name" }</label>
                <input id="display-name" value={(*name).clone()} oninput={on_input} placeholder="Ann" autocomplete="name" />
                <Preview />
                if let Some(message) = *error {
                    <p class="error" role="alert">{ message }</p>
                }
                <button id="join" type="submit">{ "Join" }</button>
            </form>
        </main>
    }
}

#[derive(Properties, PartialEq)]
struct CallProps {
    room: RoomId,
    display_name: String,
}

#[function_component(Call)]
fn call(props: &CallProps) -> Html {
    let state = use_reducer(RoomState::default);
    let session = use_mut_ref(|| None::<Session>);
    {
        let (session, dispatcher) = (session.clone(), state.dispatcher());
        use_effect_with(
            (props.room.clone(), props.display_name.clone()),
            move |(room, name)| {
                let dispatch = Callback::from(move |action| dispatcher.dispatch(action));
                *session.borrow_mut() = Some(Session::start(room.clone(), name.clone(), dispatch));
                move || {
                    if let Some(session) = session.borrow_mut().take() {
                        session.leave();
                    }
                }
            },
        );
    }
    // The pinned tile's peer id (ours is the empty string before joining): shown large.
    let pinned = use_state(|| None::<String>);
    let pin = |peer_id: String| {
        let pinned = pinned.clone();
        Callback::from(move |()| {
            let again = pinned.as_deref() == Some(peer_id.as_str());
            pinned.set((!again).then(|| peer_id.clone()));
        })
    };
    // The video figures over each remote tile, sampled once a second while shown.
    let show_stats = use_state(|| false);
    let stats = use_state(BTreeMap::<String, VideoStats>::new);
    {
        let (session, stats) = (session.clone(), stats.clone());
        use_effect_with(*show_stats, move |&shown| {
            let sampler = Rc::new(RefCell::new(Sampler::default()));
            let interval = shown.then(|| {
                Interval::new(STATS_INTERVAL_MS, move || {
                    let pc = session.borrow().as_ref().and_then(Session::peer_connection);
                    let (sampler, stats) = (sampler.clone(), stats.clone());
                    spawn_local(async move {
                        let Some(pc) = pc else { return };
                        if let Ok(inbound) = inbound_video(&pc).await {
                            stats.set(sampler.borrow_mut().figures(inbound));
                        }
                    });
                })
            });
            move || drop(interval)
        });
    }
    let stats_of = |stream: &Option<web_sys::MediaStream>, layer: Option<SimulcastLayer>| {
        let track = stream.as_ref()?.get_video_tracks().get(0);
        let track: web_sys::MediaStreamTrack = track.dyn_into().ok()?;
        (*show_stats).then(|| {
            let figures = stats
                .get(&track.id())
                .map_or_else(|| "no video yet".to_owned(), VideoStats::summary);
            match layer {
                Some(layer) => format!("{figures} · layer {}", layer_name(layer)),
                None => figures,
            }
        })
    };
    // After each render (and when the window is resized), each remote camera is asked for in
    // the layer that fits its tile.
    let resized = use_state(|| 0u32);
    {
        let resized = resized.clone();
        use_effect_with((), move |_| {
            let listener = web_sys::window().map(|window| {
                gloo::events::EventListener::new(&window, "resize", move |_| {
                    resized.set(resized.wrapping_add(1));
                })
            });
            move || drop(listener)
        });
    }
    {
        let session = session.clone();
        let cameras: Vec<(String, TrackId)> = state
            .peers
            .iter()
            .filter_map(|(id, peer)| Some((id.to_string(), peer.camera()?.clone())))
            .collect();
        use_effect(move || {
            let Some(window) = web_sys::window() else {
                return;
            };
            let Some(document) = window.document() else {
                return;
            };
            let wishes = cameras
                .into_iter()
                .filter_map(|(peer, track)| {
                    let selector = format!("figure.tile[data-peer-id=\"{peer}\"]");
                    let tile = document.query_selector(&selector).ok()??;
                    let width = f64::from(tile.client_width());
                    Some((track, layer_for_width(width, window.device_pixel_ratio())))
                })
                .collect();
            if let Some(session) = &*session.borrow() {
                session.wish_layers(wishes);
            }
        });
    }
    let on_stats = {
        let show_stats = show_stats.clone();
        Callback::from(move |_: MouseEvent| show_stats.set(!*show_stats))
    };
    // A screen someone starts sharing is pinned, unless the person pinned something already.
    let screens: Vec<String> = state
        .peers
        .iter()
        .filter(|(_, peer)| peer.screen.is_some())
        .map(|(id, _)| screen_tile_id(id))
        .collect();
    {
        let (pinned, seen) = (pinned.clone(), use_mut_ref(Vec::<String>::new));
        use_effect_with(screens, move |screens| {
            let new = screens.iter().find(|id| !seen.borrow().contains(id));
            if let (Some(new), None) = (new, pinned.as_ref()) {
                pinned.set(Some(new.clone()));
            }
            *seen.borrow_mut() = screens.clone();
        });
    }
    let on_share = {
        let (session, sharing) = (session.clone(), state.sharing.is_some());
        Callback::from(move |_: MouseEvent| {
            if let Some(session) = &*session.borrow() {
                if sharing {
                    session.stop_sharing();
                } else {
                    session.share_screen();
                }
            }
        })
    };
    let navigator = use_navigator();
    let toggle = |track_type: TrackType, on: bool| {
        let session = session.clone();
        Callback::from(move |_: MouseEvent| {
            if let Some(session) = &*session.borrow() {
                session.set_enabled(track_type, on);
            }
        })
    };
    let on_chat = {
        let session = session.clone();
        Callback::from(move |text: String| {
            if let Some(session) = &*session.borrow() {
                session.send_chat(text);
            }
        })
    };
    let on_device = |kind: TrackType| {
        let session = session.clone();
        Callback::from(move |event: Event| {
            let id = event
                .target_unchecked_into::<web_sys::HtmlSelectElement>()
                .value();
            if let Some(session) = &*session.borrow() {
                session.switch_device(kind, id);
            }
        })
    };
    let device_select = |kind: TrackType, id: &str, label: &str, current: &Option<String>| {
        let choices: Vec<_> = state
            .devices
            .iter()
            .filter(|device| device.kind == kind)
            .collect();
        html! {
            <select id={id.to_owned()} aria-label={label.to_owned()} disabled={choices.len() < 2 || current.is_none()} onchange={on_device(kind)}>
                { for choices.into_iter().map(|device| html! {
                    <option value={device.id.clone()} selected={current.as_ref() == Some(&device.id)}>{ &device.label }</option>
                }) }
            </select>
        }
    };
    let on_disconnect = {
        let session = session.clone();
        Callback::from(move |_: MouseEvent| {
            if let Some(session) = session.borrow_mut().take() {
                session.leave();
            }
            if let Some(navigator) = &navigator {
                navigator.push(&Route::Home);
            }
        })
    };

    let me = state
        .me
        .as_ref()
        .map(ToString::to_string)
        .unwrap_or_default();
    // Tiles keep their place in the page (a moved video element stops playing); the layout is
    // CSS: a grid of about as many columns as rows, or the pinned tile large and a strip.
    let remote_screens: Vec<_> = state
        .peers_by_arrival()
        .into_iter()
        .filter_map(|(id, peer)| Some((id, peer, peer.screen.as_ref()?.1.clone())))
        .collect();
    let tiles = state.peers.len() + 1 + remote_screens.len() + usize::from(state.sharing.is_some());
    let pinned_here = pinned.as_deref().is_some_and(|id| {
        id == me
            || (id == LOCAL_SCREEN && state.sharing.is_some())
            || state.peers.iter().any(|(peer_id, peer)| {
                peer_id.to_string() == id
                    || (peer.screen.is_some() && screen_tile_id(peer_id) == id)
            })
    });
    let columns = (1..=tiles)
        .find(|columns| columns * columns >= tiles)
        .unwrap_or(1);
    let layout = format!("--columns: {columns}; --others: {}", (tiles - 1).max(1));
    // One list, every tile keyed: Yew then keeps each tile (and its playing video) when
    // someone joins or leaves. A list of keyed and unkeyed children (a tile, then a `for`,
    // then an `if`) is diffed by position, and every tile was made anew.
    let mut tiles_in_order: Vec<Html> = vec![html! {
        <Tile key="local" peer_id={me.clone()} name={format!("{} (you)", props.display_name)} stream={state.local_stream.clone()}
            local=true mic_muted={!state.mic_on} camera_off={!state.camera_on}
            pinned={pinned.as_deref() == Some(me.as_str())} on_pin={pin(me.clone())}
            speaking={state.me.as_ref().is_some_and(|me| state.speaking.contains(me))} order={state.tile_order(state.me.as_ref())} />
    }];
    tiles_in_order.extend(state.peers_by_arrival().into_iter().map(|(id, peer)| html! {
        <Tile key={id.to_string()} peer_id={id.to_string()} name={peer.name()} stream={peer.stream.clone()}
            mic_muted={peer.mic_muted()} camera_off={peer.camera_off()}
            pinned={pinned.as_deref() == Some(id.to_string().as_str())} on_pin={pin(id.to_string())}
            speaking={state.speaking.contains(id)} order={state.tile_order(Some(id))}
            stats={stats_of(&peer.stream, peer.layer)} />
    }));
    if let Some(screen) = state.sharing.clone() {
        tiles_in_order.push(html! {
            <Tile key={LOCAL_SCREEN} peer_id={LOCAL_SCREEN} name="Your screen" stream={screen} screen=true
                mic_muted=false camera_off=false
                pinned={pinned.as_deref() == Some(LOCAL_SCREEN)} on_pin={pin(LOCAL_SCREEN.to_owned())} />
        });
    }
    tiles_in_order.extend(remote_screens.into_iter().map(|(id, peer, screen)| {
        let tile_id = screen_tile_id(id);
        html! {
            <Tile key={tile_id.clone()} peer_id={tile_id.clone()} name={format!("{}'s screen", peer.name())}
                stream={screen.clone()} screen=true mic_muted=false camera_off=false
                pinned={pinned.as_deref() == Some(tile_id.as_str())} on_pin={pin(tile_id.clone())}
                stats={stats_of(&Some(screen), None)} />
        }
    }));
    let status_text = match state.status {
        Status::Connecting => "Connecting…",
        Status::Joined if state.media_stalled => "Connected, no media",
        Status::Joined => "Connected",
        Status::Reconnecting => "Reconnecting…",
        Status::Disconnected => "Disconnected",
        Status::Failed => "Connection failed",
    };
    html! {
        <main class="room" data-status={state.status.as_str()}>
            <header>
                <h1 id="room-title">{ format!("Room {}", props.room) }</h1>
                <span class={classes!("status", state.status.as_str())}>{ status_text }</span>
            </header>
            { for state.problems.iter().map(|problem| html! { <p class="error-banner" role="alert">{ problem }</p> }) }
            { for state.notices.iter().map(|notice| html! { <p class="notice-banner" role="status">{ notice }</p> }) }
            if state.media_stalled && state.status == Status::Joined {
                <p class="error-banner media-stalled" role="alert">
                    { "Audio and video cannot get through: the media connection has not come up. A firewall or network may block UDP to the server, or the server announces an address this browser cannot reach (its --media-ip / --announce-ip)." }
                </p>
            }
            <section class={classes!("tiles", pinned_here.then_some("has-pinned"))} style={layout}
                data-count={tiles.to_string()}>
                { for tiles_in_order }
            </section>
            <aside>
                <h2>{ format!("Participants ({})", state.peers.len() + 1) }</h2>
                <ul id="participants">
                    <li data-peer-id={me}>{ format!("{} (you)", props.display_name) }</li>
                    { for state.peers_by_arrival().into_iter().map(|(id, peer)| html! { <li key={id.to_string()} data-peer-id={id.to_string()}>{ peer.name() }</li> }) }
                </ul>
                <Chat messages={state.chat.clone()} can_send={state.status == Status::Joined} on_send={on_chat} />
            </aside>
            <nav class="controls">
                <button id="toggle-mic" disabled={!state.has_mic} onclick={toggle(TrackType::Audio, !state.mic_on)}>
                    { if state.mic_on { "Mute" } else { "Unmute" } }
                </button>
                <button id="toggle-camera" disabled={!state.has_camera} onclick={toggle(TrackType::Camera, !state.camera_on)}>
                    { if state.camera_on { "Camera off" } else { "Camera on" } }
                </button>
                { device_select(TrackType::Audio, "microphone-select", "Microphone", &state.microphone) }
                { device_select(TrackType::Camera, "camera-select", "Camera", &state.camera) }
                <button id="toggle-screen" disabled={state.status != Status::Joined} aria-pressed={state.sharing.is_some().to_string()} onclick={on_share}>
                    { if state.sharing.is_some() { "Stop sharing" } else { "Share screen" } }
                </button>
                <button id="toggle-stats" class="secondary" aria-pressed={show_stats.to_string()} onclick={on_stats}>
                    { if *show_stats { "Hide stats" } else { "Stats" } }
                </button>
                <button id="disconnect" class="leave" onclick={on_disconnect}>{ "Disconnect" }</button>
            </nav>
        </main>
    }
}

/// A layer as the wire names it.
fn layer_name(layer: SimulcastLayer) -> &'static str {
    match layer {
        SimulcastLayer::Low => "l",
        SimulcastLayer::Medium => "m",
        SimulcastLayer::High => "h",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tile_asks_for_the_layer_its_pixels_can_show() {
        assert_eq!(layer_for_width(224.0, 1.0), SimulcastLayer::Low);
        assert_eq!(layer_for_width(224.0, 2.0), SimulcastLayer::Medium);
        assert_eq!(layer_for_width(500.0, 1.0), SimulcastLayer::Medium);
        assert_eq!(layer_for_width(1000.0, 1.0), SimulcastLayer::High);
        assert_eq!(layer_for_width(0.0, 0.0), SimulcastLayer::Low);
    }
}
