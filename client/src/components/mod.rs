//! Pieces of the room page.

mod chat;
mod tile;

pub use chat::Chat;
pub use tile::Tile;
