//! Validated identifiers: the room (from the channel topic), the peer (assigned by the server)
//! and the track (made by the client as `<peerId>:<uuid>`).

use std::fmt;

use serde::{Deserialize, Serialize};
use thiserror::Error;
use uuid::Uuid;

/// Why a string is not a valid id.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum IdError {
    #[error("topic `{0}` is not of the form `room:<name>`")]
    NotARoomTopic(String),
    #[error("room name must be 1 to {max} letters, digits, `-`, `_` or `.`", max = RoomId::MAX_LEN)]
    BadRoomName,
    #[error("peer id must be 1 to {max} ASCII letters, digits, `-` or `_`", max = PeerId::MAX_LEN)]
    BadPeerId,
    #[error("track id `{0}` is not of the form `<peerId>:<uuid>`")]
    BadTrackId(String),
}

/// A room's name, as it appears in the topic `room:<name>` and the page URL `/room/<name>`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct RoomId(String);

impl RoomId {
    pub const MAX_LEN: usize = 64;
    pub const TOPIC_PREFIX: &'static str = "room:";

    pub fn new(name: impl Into<String>) -> Result<Self, IdError> {
        let name = name.into();
        let valid_char = |c: char| c.is_alphanumeric() || matches!(c, '-' | '_' | '.');
        let len = name.chars().count();
        if len == 0 || len > Self::MAX_LEN || !name.chars().all(valid_char) {
            return Err(IdError::BadRoomName);
        }
        Ok(RoomId(name))
    }

    /// The room named by a channel topic such as `room:standup`.
    pub fn from_topic(topic: &str) -> Result<Self, IdError> {
        let name = topic
            .strip_prefix(Self::TOPIC_PREFIX)
            .ok_or_else(|| IdError::NotARoomTopic(topic.to_owned()))?;
        Self::new(name)
    }

    pub fn topic(&self) -> String {
        format!("{}{}", Self::TOPIC_PREFIX, self.0)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A peer's id. The server assigns each peer a UUIDv4 when its channel joins.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct PeerId(String);

impl PeerId {
    pub const MAX_LEN: usize = 64;

    pub fn new(id: impl Into<String>) -> Result<Self, IdError> {
        let id = id.into();
        let valid_char = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_');
        if id.is_empty() || id.len() > Self::MAX_LEN || !id.chars().all(valid_char) {
            return Err(IdError::BadPeerId);
        }
        Ok(PeerId(id))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl From<Uuid> for PeerId {
    fn from(uuid: Uuid) -> Self {
        PeerId(uuid.hyphenated().to_string())
    }
}

/// A track's id, `<peerId>:<uuid>`: made by the publishing client, so the prefix names its owner.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct TrackId(String);

impl TrackId {
    pub fn new(owner: &PeerId, uuid: Uuid) -> Self {
        TrackId(format!("{}:{}", owner.0, uuid.hyphenated()))
    }

    pub fn parse(id: impl Into<String>) -> Result<Self, IdError> {
        let id = id.into();
        let valid = id
            .split_once(':')
            .is_some_and(|(peer, uuid)| PeerId::new(peer).is_ok() && Uuid::try_parse(uuid).is_ok());
        if !valid {
            return Err(IdError::BadTrackId(id));
        }
        Ok(TrackId(id))
    }

    /// Whether `peer` published this track: a peer may only change its own tracks.
    pub fn is_owned_by(&self, peer: &PeerId) -> bool {
        self.owner() == peer.as_str()
    }

    /// The `<peerId>` part of the id.
    pub fn owner(&self) -> &str {
        self.0.split_once(':').map_or("", |(peer, _)| peer)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

macro_rules! string_id_conversions {
    ($($id:ident => $parse:ident),*) => {$(
        impl TryFrom<String> for $id {
            type Error = IdError;
            fn try_from(value: String) -> Result<Self, IdError> {
                $id::$parse(value)
            }
        }

        impl From<$id> for String {
            fn from(id: $id) -> String {
                id.0
            }
        }

        impl fmt::Display for $id {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    )*};
}

string_id_conversions!(RoomId => new, PeerId => new, TrackId => parse);
