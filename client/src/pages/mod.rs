//! The app's pages.

mod home;
mod room;

pub use home::Home;
pub use room::Room;
