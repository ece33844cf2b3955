//! Pieces of the room page.

mod tile;

pub use tile::Tile;
