//! Whose socket it is, behind a reverse proxy: every connection then comes from the proxy's
//! address, and the per-address limits would count all clients as one. For connections from an
//! address listed with `--trusted-proxy`, the client is the nearest address in
//! `X-Forwarded-For` that is not itself a trusted proxy; anyone else's header is ignored, as a
//! client could write anything there.

use std::net::{IpAddr, SocketAddr};

/// The client behind `peer`, given the request's `X-Forwarded-For` and the trusted proxies.
pub fn client_address(
    peer: SocketAddr,
    forwarded_for: Option<&str>,
    trusted: &[IpAddr],
) -> SocketAddr {
    if !trusted.contains(&peer.ip()) {
        return peer;
    }
    let nearest_untrusted = forwarded_for
        .into_iter()
        .flat_map(|header| header.rsplit(','))
        .map(|entry| entry.trim().parse::<IpAddr>())
        .take_while(Result::is_ok)
        .flatten()
        .find(|ip| !trusted.contains(ip));
    match nearest_untrusted {
        Some(ip) => SocketAddr::new(ip, peer.port()),
        None => peer,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    const PROXY: &str = "127.0.0.1:40000";

    #[test]
    fn a_trusted_proxy_names_the_client() {
        let trusted = [ip("127.0.0.1")];
        let peer: SocketAddr = PROXY.parse().unwrap();
        assert_eq!(
            client_address(peer, Some("198.51.100.7"), &trusted).ip(),
            ip("198.51.100.7")
        );
        // The client's own claim comes first; the proxy appends what it saw.
        assert_eq!(
            client_address(peer, Some("10.9.9.9, 198.51.100.7"), &trusted).ip(),
            ip("198.51.100.7")
        );
        // A chain of trusted proxies is skipped.
        let chain = [ip("127.0.0.1"), ip("10.0.0.2")];
        assert_eq!(
            client_address(peer, Some("198.51.100.7, 10.0.0.2"), &chain).ip(),
            ip("198.51.100.7")
        );
    }

    #[test]
    fn untrusted_peers_and_garbled_headers_keep_the_peer_address() {
        let peer: SocketAddr = "198.51.100.7:5000".parse().unwrap();
        assert_eq!(
            client_address(peer, Some("10.1.1.1"), &[ip("127.0.0.1")]),
            peer
        );
        let proxy: SocketAddr = PROXY.parse().unwrap();
        let trusted = [ip("127.0.0.1")];
        assert_eq!(client_address(proxy, None, &trusted), proxy);
        assert_eq!(
            client_address(proxy, Some("not-an-address"), &trusted),
            proxy
        );
        // Parsing stops at the first garbled entry from the right: nothing left of it counts.
        assert_eq!(
            client_address(proxy, Some("198.51.100.9, junk"), &trusted),
            proxy
        );
    }
}
