//! Who may join which room, when access control is on (`--join-secret`): a join token is a JWT
//! (HS256) signed with the secret, naming the room, the display name its holder appears under,
//! and an expiry. A page passes it as the socket's `token` parameter; the channel join of a room
//! is refused, with the reason, unless the token is valid and for that room. `videoroom token`
//! makes one.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{
    decode, encode, errors::ErrorKind, Algorithm, DecodingKey, EncodingKey, Header, Validation,
};
use serde::{Deserialize, Serialize};
use shared::RoomId;
use thiserror::Error;

/// What a join token says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JoinClaims {
    pub room: String,
    pub name: String,
    /// Expiry, Unix seconds.
    pub exp: u64,
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum AccessRefused {
    #[error("this server needs a join token: open the room with the link you were given (its `token` parameter)")]
    Missing,
    #[error("the join token has expired: ask for a new link")]
    Expired,
    #[error("the join token is for room `{0}`, not this one")]
    OtherRoom(String),
    #[error("the join token is not valid: {0}")]
    Invalid(String),
}

/// The secret that signs and checks join tokens.
pub struct JoinSecret {
    encoding: EncodingKey,
    decoding: DecodingKey,
}

impl std::fmt::Debug for JoinSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("JoinSecret(…)")
    }
}

impl JoinSecret {
    pub fn new(secret: &str) -> JoinSecret {
        JoinSecret {
            encoding: EncodingKey::from_secret(secret.as_bytes()),
            decoding: DecodingKey::from_secret(secret.as_bytes()),
        }
    }

    /// A token for `name` in `room`, valid for `valid_for` from `now`.
    pub fn issue(&self, room: &RoomId, name: &str, valid_for: Duration, now: SystemTime) -> String {
        let exp = (now + valid_for)
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        let claims = JoinClaims {
            room: room.to_string(),
            name: name.to_owned(),
            exp,
        };
        encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
            .expect("HS256 signs any claims")
    }

    /// The claims of `token` if it lets its holder into `room` now.
    pub fn check(&self, token: Option<&str>, room: &RoomId) -> Result<JoinClaims, AccessRefused> {
        let token = token
            .filter(|token| !token.is_empty())
            .ok_or(AccessRefused::Missing)?;
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = 0;
        let claims = decode::<JoinClaims>(token, &self.decoding, &validation)
            .map_err(|err| match err.kind() {
                ErrorKind::ExpiredSignature => AccessRefused::Expired,
                _ => AccessRefused::Invalid(err.to_string()),
            })?
            .claims;
        if claims.room != room.as_str() {
            return Err(AccessRefused::OtherRoom(claims.room));
        }
        Ok(claims)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn room(name: &str) -> RoomId {
        RoomId::new(name).unwrap()
    }

    #[test]
    fn a_token_opens_its_room_until_it_expires() {
        let secret = JoinSecret::new("north-wind");
        let now = SystemTime::now();
        let token = secret.issue(&room("standup"), "Ann", Duration::from_secs(60), now);
        let claims = secret.check(Some(&token), &room("standup")).unwrap();
        assert_eq!(
            (claims.room.as_str(), claims.name.as_str()),
            ("standup", "Ann")
        );
        assert_eq!(
            secret.check(Some(&token), &room("board")),
            Err(AccessRefused::OtherRoom("standup".to_owned()))
        );
        let old = secret.issue(
            &room("standup"),
            "Ann",
            Duration::from_secs(60),
            now - Duration::from_secs(3600),
        );
        assert_eq!(
            secret.check(Some(&old), &room("standup")),
            Err(AccessRefused::Expired)
        );
    }

    #[test]
    fn missing_forged_and_garbled_tokens_are_refused() {
        let secret = JoinSecret::new("north-wind");
        assert_eq!(
            secret.check(None, &room("standup")),
            Err(AccessRefused::Missing)
        );
        assert_eq!(
            secret.check(Some(""), &room("standup")),
            Err(AccessRefused::Missing)
        );
        let forged = JoinSecret::new("guess").issue(
            &room("standup"),
            "Mallory",
            Duration::from_secs(60),
            SystemTime::now(),
        );
        assert!(matches!(
            secret.check(Some(&forged), &room("standup")),
            Err(AccessRefused::Invalid(_))
        ));
        assert!(matches!(
            secret.check(Some("not.a.token"), &room("standup")),
            Err(AccessRefused::Invalid(_))
        ));
    }
}
