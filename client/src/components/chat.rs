//! The room's chat: the messages so far (name, time, text), newest at the bottom and kept in
//! view, and a box to send one.

use shared::server_event::ChatMessage;
use web_sys::{HtmlElement, HtmlInputElement};
use yew::prelude::*;

/// The most a message may hold, in UTF-8 bytes: under the server's default limit
/// (`--max-chat-message-bytes`, 2000 as JSON), so a typed message is never refused for size.
pub const MAX_CHAT_BYTES: usize = 1900;

#[derive(Properties, PartialEq)]
pub struct ChatProps {
    pub messages: Vec<ChatMessage>,
    /// Whether messages can be sent now (the room is joined).
    pub can_send: bool,
    pub on_send: Callback<String>,
}

#[function_component(Chat)]
pub fn chat(props: &ChatProps) -> Html {
    let list = use_node_ref();
    let draft = use_state(String::new);
    let error = use_state(|| None::<String>);
    {
        // Each new message scrolls into view.
        let list = list.clone();
        use_effect_with(props.messages.len(), move |_| {
            if let Some(list) = list.cast::<HtmlElement>() {
                list.set_scroll_top(list.scroll_height());
            }
        });
    }
    let on_input = {
        let draft = draft.clone();
        Callback::from(move |event: InputEvent| {
            draft.set(event.target_unchecked_into::<HtmlInputElement>().value());
        })
    };
    let on_submit = {
        let (draft, error, on_send) = (draft.clone(), error.clone(), props.on_send.clone());
        Callback::from(move |event: SubmitEvent| {
            event.prevent_default();
            let text = draft.trim();
            if text.is_empty() {
                return;
            }
            if text.len() > MAX_CHAT_BYTES {
                error.set(Some(format!(
                    "Too long: {} bytes, at most {MAX_CHAT_BYTES}.",
                    text.len()
                )));
                return;
            }
            on_send.emit(text.to_owned());
            draft.set(String::new());
            error.set(None);
        })
    };
    html! {
        <section class="chat" aria-label="Chat">
            <h2>{ "Chat" }</h2>
            <ol id="chat-messages" ref={list}>
                { for props.messages.iter().map(message) }
            </ol>
            <form id="chat-form" onsubmit={on_submit}>
                <input id="chat-input" value={(*draft).clone()} oninput={on_input}
                    placeholder="Message everyone" autocomplete="off" disabled={!props.can_send} />
                <button id="chat-send" type="submit" disabled={!props.can_send}>{ "Send" }</button>
            </form>
            if let Some(error) = &*error {
                <p class="error" role="alert">{ error }</p>
            }
        </section>
    }
}

fn message(message: &ChatMessage) -> Html {
    let name = if message.display_name.is_empty() {
        "Guest"
    } else {
        &message.display_name
    };
    let sent = js_sys::Date::new(&(message.sent_at as f64).into());
    let time = format!("{:02}:{:02}", sent.get_hours(), sent.get_minutes());
    html! {
        <li class="chat-message" data-peer-id={message.peer_id.to_string()}>
            <span class="chat-name">{ name }</span>
            <time datetime={String::from(sent.to_iso_string())}>{ time }</time>
            <p class="chat-text">{ &message.text }</p>
        </li>
    }
}
