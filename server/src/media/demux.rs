//! Which peer connection a datagram on a worker's shared socket belongs to. A peer is found by
//! its remote address once known; before that (and whenever a STUN check names one) by the
//! local ICE username fragment in the check's `USERNAME`, which the server chose for that peer
//! and which only its SDP answer carries. Following the username on every check keeps media
//! flowing across an ICE restart (a new ufrag per re-offer) and a NAT rebinding (a new
//! address). Pure lookups: the worker owns the maps and feeds them datagrams.

use std::collections::HashMap;
use std::net::SocketAddr;

/// A peer connection on a worker.
pub type EndpointKey = u64;

/// The addresses a peer may send from at once (its candidates' bases, a rebinding); older ones
/// are forgotten first.
const ADDRESSES_PER_ENDPOINT: usize = 8;

/// STUN's magic cookie (RFC 5389), at bytes 4–8 of every STUN message.
const MAGIC_COOKIE: [u8; 4] = [0x21, 0x12, 0xa4, 0x42];
const USERNAME: u16 = 0x0006;

/// The local username fragment a STUN message's `USERNAME` names (`local:remote` as the
/// server receives it), or `None` for anything else.
pub fn stun_local_ufrag(datagram: &[u8]) -> Option<&str> {
    // RFC 7983: STUN starts with 0–3; its header is 20 bytes and its length a multiple of 4.
    if datagram.len() < 20 || datagram[0] > 3 || datagram[4..8] != MAGIC_COOKIE {
        return None;
    }
    let length = usize::from(u16::from_be_bytes([datagram[2], datagram[3]]));
    let mut attributes = datagram.get(20..20 + length)?;
    while attributes.len() >= 4 {
        let kind = u16::from_be_bytes([attributes[0], attributes[1]]);
        let size = usize::from(u16::from_be_bytes([attributes[2], attributes[3]]));
        let value = attributes.get(4..4 + size)?;
        if kind == USERNAME {
            let username = std::str::from_utf8(value).ok()?;
            return username.split(':').next().filter(|ufrag| !ufrag.is_empty());
        }
        attributes = attributes.get(4 + size.next_multiple_of(4)..)?;
    }
    None
}

/// The worker's maps from ufrag and address to peer connection.
#[derive(Default)]
pub struct Demux {
    by_ufrag: HashMap<String, EndpointKey>,
    by_address: HashMap<SocketAddr, EndpointKey>,
    /// Each endpoint's ufrags and addresses, to forget them with it.
    owned: HashMap<EndpointKey, Owned>,
}

#[derive(Default)]
struct Owned {
    ufrags: Vec<String>,
    addresses: Vec<SocketAddr>,
}

impl Demux {
    /// Routes checks naming `ufrag` to `endpoint` (each answer may bring a new one).
    pub fn add_ufrag(&mut self, endpoint: EndpointKey, ufrag: &str) {
        if self.by_ufrag.contains_key(ufrag) {
            return;
        }
        self.by_ufrag.insert(ufrag.to_owned(), endpoint);
        self.owned
            .entry(endpoint)
            .or_default()
            .ufrags
            .push(ufrag.to_owned());
    }

    /// The endpoint `datagram` from `from` is for, learning `from` when a check names it.
    pub fn route(&mut self, from: SocketAddr, datagram: &[u8]) -> Option<EndpointKey> {
        if let Some(ufrag) = stun_local_ufrag(datagram) {
            if let Some(&endpoint) = self.by_ufrag.get(ufrag) {
                if self.by_address.get(&from) != Some(&endpoint) {
                    self.learn(endpoint, from);
                }
                return Some(endpoint);
            }
        }
        self.by_address.get(&from).copied()
    }

    fn learn(&mut self, endpoint: EndpointKey, address: SocketAddr) {
        if let Some(previous) = self.by_address.insert(address, endpoint) {
            if let Some(owned) = self.owned.get_mut(&previous) {
                owned.addresses.retain(|known| *known != address);
            }
        }
        let owned = self.owned.entry(endpoint).or_default();
        owned.addresses.push(address);
        if owned.addresses.len() > ADDRESSES_PER_ENDPOINT {
            let oldest = owned.addresses.remove(0);
            self.by_address.remove(&oldest);
        }
    }

    /// Forgets an endpoint's ufrags and addresses; returns the addresses.
    pub fn remove(&mut self, endpoint: EndpointKey) -> Vec<SocketAddr> {
        let Some(owned) = self.owned.remove(&endpoint) else {
            return Vec::new();
        };
        for ufrag in owned.ufrags {
            self.by_ufrag.remove(&ufrag);
        }
        for address in &owned.addresses {
            self.by_address.remove(address);
        }
        owned.addresses
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A binding request with `USERNAME` (and a leading attribute to skip, with padding).
    fn binding_request(username: &str) -> Vec<u8> {
        let mut attributes = Vec::new();
        // SOFTWARE, 5 bytes, padded to 8.
        attributes.extend_from_slice(&[0x80, 0x22, 0, 5]);
        attributes.extend_from_slice(b"tests\0\0\0");
        attributes.extend_from_slice(&USERNAME.to_be_bytes());
        attributes.extend_from_slice(&(username.len() as u16).to_be_bytes());
        attributes.extend_from_slice(username.as_bytes());
        attributes.resize(attributes.len().next_multiple_of(4), 0);
        let mut message = vec![0x00, 0x01];
        message.extend_from_slice(&(attributes.len() as u16).to_be_bytes());
        message.extend_from_slice(&MAGIC_COOKIE);
        message.extend_from_slice(&[7; 12]);
        message.extend_from_slice(&attributes);
        message
    }

    fn address(port: u16) -> SocketAddr {
        SocketAddr::from(([192, 0, 2, 1], port))
    }

    #[test]
    fn the_local_ufrag_is_read_from_a_binding_request() {
        assert_eq!(
            stun_local_ufrag(&binding_request("srv1:cli1")),
            Some("srv1")
        );
        assert_eq!(stun_local_ufrag(&binding_request(":cli1")), None);
        // RTP (version 2: first byte 0x80..) and truncated messages are not STUN.
        assert_eq!(stun_local_ufrag(&[0x80; 40]), None);
        let request = binding_request("srv1:cli1");
        assert_eq!(stun_local_ufrag(&request[..request.len() - 3]), None);
        assert_eq!(stun_local_ufrag(&[]), None);
    }

    #[test]
    fn a_check_teaches_the_address_and_media_follows_it() {
        let mut demux = Demux::default();
        demux.add_ufrag(1, "srv1");
        let media = [0x80u8; 40];
        assert_eq!(demux.route(address(5000), &media), None);
        assert_eq!(
            demux.route(address(5000), &binding_request("srv1:c")),
            Some(1)
        );
        assert_eq!(demux.route(address(5000), &media), Some(1));
        // An unknown ufrag teaches nothing.
        assert_eq!(demux.route(address(6000), &binding_request("nope:c")), None);
        assert_eq!(demux.route(address(6000), &media), None);
    }

    #[test]
    fn an_ice_restart_keeps_the_address_and_adds_the_new_ufrag() {
        let mut demux = Demux::default();
        demux.add_ufrag(1, "old");
        demux.route(address(5000), &binding_request("old:c"));
        demux.add_ufrag(1, "new");
        assert_eq!(demux.route(address(5000), &[0x80; 40]), Some(1));
        assert_eq!(
            demux.route(address(5001), &binding_request("new:c2")),
            Some(1)
        );
        assert_eq!(demux.route(address(5001), &[0x80; 40]), Some(1));
    }

    #[test]
    fn an_address_taken_over_by_another_peer_moves_to_it() {
        let mut demux = Demux::default();
        demux.add_ufrag(1, "one");
        demux.add_ufrag(2, "two");
        demux.route(address(5000), &binding_request("one:c"));
        demux.route(address(5000), &binding_request("two:c"));
        assert_eq!(demux.route(address(5000), &[0x80; 40]), Some(2));
        assert!(demux.remove(1).is_empty());
        assert_eq!(demux.route(address(5000), &[0x80; 40]), Some(2));
        assert_eq!(demux.remove(2), [address(5000)]);
        assert_eq!((demux.by_address.len(), demux.by_ufrag.len()), (0, 0));
    }

    #[test]
    fn addresses_per_peer_are_bounded() {
        let mut demux = Demux::default();
        demux.add_ufrag(1, "one");
        for port in 0..100 {
            demux.route(address(port), &binding_request("one:c"));
        }
        assert_eq!(demux.by_address.len(), ADDRESSES_PER_ENDPOINT);
        assert_eq!(demux.route(address(99), &[0x80; 40]), Some(1));
        assert_eq!(demux.route(address(0), &[0x80; 40]), None);
    }
}
