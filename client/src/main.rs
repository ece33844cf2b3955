//! videoroom's web client. UI lives in function components under `pages/`; the app routes
//! between the home page (pick a room and a name) and a room page.

mod app;
mod pages;
mod profile;

fn main() {
    yew::Renderer::<app::App>::new().render();
}
