//! TURN REST credentials (the scheme coturn checks with `use-auth-secret`): the username is
//! `EXPIRY:PEER_ID` (EXPIRY in Unix seconds) and the password base64(HMAC-SHA1(secret,
//! username)). Issued to each peer in `offerData`; the embedded TURN server checks them from
//! the secret alone, so no credential is stored anywhere. Also the server's nonces, which are
//! stateless in the same way: an expiry and a MAC of it.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use hmac::{Hmac, Mac};

/// How long a nonce the server hands out stays good; a client with a stale one is told to use
/// a fresh one (438) and retries without the user noticing.
const NONCE_LIFETIME: Duration = Duration::from_secs(3600);

/// A TURN REST secret: issues and checks credentials.
#[derive(Clone)]
pub struct Secret(Vec<u8>);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(…)")
    }
}

/// A username that checked out.
#[derive(Debug, PartialEq, Eq)]
pub struct User<'a> {
    /// The peer the credentials were issued to: what allocations are counted against.
    pub peer: &'a str,
    pub password: String,
}

/// Why a username is refused.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("the username is not EXPIRY:PEER")]
    Malformed,
    #[error("the credentials expired")]
    Expired,
}

impl Secret {
    pub fn new(secret: impl Into<Vec<u8>>) -> Secret {
        Secret(secret.into())
    }

    /// A random secret, for a server started without `--turn-secret`.
    pub fn generate() -> Secret {
        Secret(rand::random::<[u8; 32]>().to_vec())
    }

    /// Credentials for `peer`, valid until `expiry`.
    pub fn issue(&self, peer: &str, expiry: SystemTime) -> (String, String) {
        let expiry = expiry
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        let username = format!("{expiry}:{peer}");
        let password = self.password(&username);
        (username, password)
    }

    /// The password that goes with `username`, if the username is well formed and not expired
    /// at `now`. Whether the client knew it shows in its MESSAGE-INTEGRITY.
    pub fn check<'u>(&self, username: &'u str, now: SystemTime) -> Result<User<'u>, Refusal> {
        let (expiry, peer) = username.split_once(':').ok_or(Refusal::Malformed)?;
        let expiry: u64 = expiry.parse().map_err(|_| Refusal::Malformed)?;
        if peer.is_empty() {
            return Err(Refusal::Malformed);
        }
        if UNIX_EPOCH + Duration::from_secs(expiry) <= now {
            return Err(Refusal::Expired);
        }
        Ok(User {
            peer,
            password: self.password(username),
        })
    }

    fn password(&self, username: &str) -> String {
        let mut mac = self.mac();
        mac.update(username.as_bytes());
        base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
    }

    /// A nonce good for [`NONCE_LIFETIME`] from `now`: the expiry in hex, then a MAC of it.
    pub fn nonce(&self, now: SystemTime) -> String {
        let expiry = (now + NONCE_LIFETIME)
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        let expiry = format!("{expiry:016x}");
        format!("{expiry}{}", self.nonce_mac(&expiry))
    }

    /// Whether `nonce` is one of ours and still good at `now`.
    pub fn nonce_is_fresh(&self, nonce: &str, now: SystemTime) -> bool {
        let Some((expiry, mac)) = nonce.split_at_checked(16) else {
            return false;
        };
        let Ok(seconds) = u64::from_str_radix(expiry, 16) else {
            return false;
        };
        mac == self.nonce_mac(expiry) && UNIX_EPOCH + Duration::from_secs(seconds) > now
    }

    fn nonce_mac(&self, expiry: &str) -> String {
        let mut mac = self.mac();
        mac.update(b"nonce:");
        mac.update(expiry.as_bytes());
        mac.finalize().into_bytes()[..8]
            .iter()
            .map(|byte| format!("{byte:02x}"))
            .collect()
    }

    fn mac(&self) -> Hmac<sha1::Sha1> {
        Hmac::<sha1::Sha1>::new_from_slice(&self.0).expect("HMAC takes a key of any length")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PEER: &str = "00000000-0000-0000-0000-000000000001";

    fn at(seconds: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(seconds)
    }

    #[test]
    fn credentials_are_what_coturn_computes() {
        // Computed independently: base64(hmac.new(b"north-wind", username, sha1).digest()).
        let (username, password) = Secret::new("north-wind").issue(PEER, at(1_700_000_000));
        assert_eq!(username, format!("1700000000:{PEER}"));
        assert_eq!(password, "4AqJt2egfZwoALwg2Q076FgfOo0=");
    }

    #[test]
    fn issued_credentials_check_until_they_expire() {
        let secret = Secret::new("north-wind");
        let (username, password) = secret.issue(PEER, at(1_700_000_600));
        let user = secret.check(&username, at(1_700_000_000)).unwrap();
        assert_eq!(
            user,
            User {
                peer: PEER,
                password: password.clone()
            }
        );
        assert_eq!(
            secret.check(&username, at(1_700_000_600)),
            Err(Refusal::Expired)
        );
        // Another secret gives another password: the client's integrity will not match.
        let forged = Secret::new("guess")
            .check(&username, at(1_700_000_000))
            .unwrap();
        assert_ne!(forged.password, password);
        for malformed in ["", "peer", "soon:peer", "1700000600:", ":peer"] {
            assert_eq!(
                secret.check(malformed, at(0)),
                Err(Refusal::Malformed),
                "{malformed:?}"
            );
        }
    }

    #[test]
    fn nonces_are_fresh_for_an_hour_and_cannot_be_made_up() {
        let secret = Secret::new("north-wind");
        let nonce = secret.nonce(at(1_700_000_000));
        assert!(secret.nonce_is_fresh(&nonce, at(1_700_003_599)));
        assert!(!secret.nonce_is_fresh(&nonce, at(1_700_003_600)));
        assert!(!Secret::new("other").nonce_is_fresh(&nonce, at(1_700_000_000)));
        let later = format!("{:016x}{}", 1_800_000_000u64, &nonce[16..]);
        assert!(!secret.nonce_is_fresh(&later, at(1_700_000_000)));
        assert!(!secret.nonce_is_fresh("short", at(0)));
        assert!(!secret.nonce_is_fresh("ééééééééééééééééééé", at(0)));
    }
}
