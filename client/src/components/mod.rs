//! Pieces of the room page.

mod chat;
mod join_choices;
mod tile;

pub use chat::Chat;
pub use join_choices::JoinChoices;
pub use tile::Tile;
