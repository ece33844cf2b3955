//! Pieces of the pages.

mod chat;
mod preview;
mod tile;

pub use chat::Chat;
pub use preview::Preview;
pub use tile::Tile;
