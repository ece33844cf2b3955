//! Where the relay may send: the SFU's own media ports always (that is what the relay is for),
//! public addresses but the SFU's own, and loopback, private, link-local or otherwise special
//! addresses only when `--turn-relay-private` allows them (and then anything). Without this an anonymous user with credentials from
//! `offerData` could reach services on the server's own machine or its private network.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// The peers the relay may reach, and how the SFU's own announced address maps to where its
/// sockets are bound (the relay sends there directly, whatever NAT is in front).
#[derive(Debug, Clone)]
pub struct PeerPolicy {
    /// The media workers' ports (UDP).
    pub media_ports: Vec<u16>,
    /// The address the media candidates announce.
    pub media_announced: IpAddr,
    /// The address the media sockets are bound to.
    pub media_bound: IpAddr,
    /// The media candidates' other addresses (the machine's own, beside loopback).
    pub media_also: Vec<IpAddr>,
    pub allow_private: bool,
}

impl PeerPolicy {
    /// Whether the relay may exchange datagrams with `peer`.
    pub fn permits(&self, peer: SocketAddr) -> bool {
        self.allow_private
            || self.is_media(peer)
            || is_public(peer.ip()) && !self.is_media_ip(peer.ip())
    }

    /// Whether a permission for `ip` may be installed: some port of it is reachable.
    pub fn permits_ip(&self, ip: IpAddr) -> bool {
        self.allow_private || is_public(ip) || self.is_media_ip(ip)
    }

    /// Where a datagram for `peer` goes: the media sockets' own address for the announced one.
    pub fn outbound(&self, peer: SocketAddr) -> SocketAddr {
        if peer.ip() == self.media_announced && self.media_ports.contains(&peer.port()) {
            let bound = if self.media_bound.is_unspecified() {
                loopback_like(self.media_bound)
            } else {
                self.media_bound
            };
            SocketAddr::new(bound, peer.port())
        } else {
            peer
        }
    }

    /// The peer a datagram from `source` is from, as the client knows it (see [`outbound`]).
    ///
    /// [`outbound`]: PeerPolicy::outbound
    pub fn inbound(&self, source: SocketAddr) -> SocketAddr {
        let bound = self.media_bound.is_unspecified() && source.ip().is_loopback()
            || source.ip() == self.media_bound;
        if bound && self.media_ports.contains(&source.port()) {
            SocketAddr::new(self.media_announced, source.port())
        } else {
            source
        }
    }

    fn is_media(&self, peer: SocketAddr) -> bool {
        self.is_media_ip(peer.ip()) && self.media_ports.contains(&peer.port())
    }

    /// The SFU's addresses are reachable only on its media ports, whatever kind they are.
    fn is_media_ip(&self, ip: IpAddr) -> bool {
        ip == self.media_announced || ip == self.media_bound || self.media_also.contains(&ip)
    }
}

fn loopback_like(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::LOCALHOST),
    }
}

/// Whether `ip` is an ordinary address on the internet: not loopback, private, shared (CGNAT),
/// link-local, multicast, broadcast, documentation, benchmarking, reserved or unspecified.
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(ip) => is_public_v4(ip),
        IpAddr::V6(ip) => match ip.to_ipv4_mapped() {
            Some(v4) => is_public_v4(v4),
            None => is_public_v6(ip),
        },
    }
}

fn is_public_v4(ip: Ipv4Addr) -> bool {
    let [a, b, c, _] = ip.octets();
    !(ip.is_unspecified()
        || ip.is_loopback()
        || ip.is_private()
        || ip.is_link_local()
        || ip.is_multicast()
        || ip.is_broadcast()
        || ip.is_documentation()
        || a == 0
        || a >= 240
        || (a == 100 && (64..128).contains(&b))
        || (a == 192 && b == 0 && c == 0)
        || (a == 198 && (18..20).contains(&b)))
}

fn is_public_v6(ip: Ipv6Addr) -> bool {
    let first = ip.segments()[0];
    !(ip.is_unspecified()
        || ip.is_loopback()
        || ip.is_multicast()
        || first & 0xfe00 == 0xfc00 // unique local
        || first & 0xffc0 == 0xfe80 // link-local
        || first == 0x2001 && ip.segments()[1] == 0x0db8 // documentation
        || first == 0x0064 && ip.segments()[1] == 0xff9b) // NAT64, reaches IPv4 anywhere
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(allow_private: bool) -> PeerPolicy {
        PeerPolicy {
            media_ports: vec![4001, 4002],
            media_announced: "203.0.113.10".parse().unwrap(),
            media_bound: "10.0.0.5".parse().unwrap(),
            media_also: vec!["192.168.7.7".parse().unwrap()],
            allow_private,
        }
    }

    fn at(text: &str) -> SocketAddr {
        text.parse().unwrap()
    }

    #[test]
    fn special_addresses_are_not_public() {
        for ip in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "224.0.0.251",
            "255.255.255.255",
            "240.0.0.1",
            "198.18.0.1",
            "::1",
            "::",
            "fe80::1",
            "fd00::1",
            "ff02::1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
            "64:ff9b::7f00:1",
        ] {
            assert!(!is_public(ip.parse().unwrap()), "{ip}");
        }
        for ip in [
            "8.8.8.8",
            "100.128.0.1",
            "172.32.0.1",
            "2a00:1450::1",
            "::ffff:8.8.8.8",
        ] {
            assert!(is_public(ip.parse().unwrap()), "{ip}");
        }
    }

    #[test]
    fn the_sfu_is_reachable_on_its_media_ports_only() {
        let policy = policy(false);
        assert!(policy.permits(at("203.0.113.10:4001")));
        assert!(policy.permits(at("10.0.0.5:4002")));
        assert!(!policy.permits(at("203.0.113.10:22")));
        assert!(!policy.permits(at("10.0.0.5:6379")));
        assert!(policy.permits(at("192.168.7.7:4002")));
        assert!(!policy.permits(at("192.168.7.7:22")));
        assert!(policy.permits_ip("10.0.0.5".parse().unwrap()));
    }

    #[test]
    fn private_peers_need_the_flag_and_public_ones_do_not() {
        assert!(!policy(false).permits(at("127.0.0.1:5000")));
        assert!(!policy(false).permits_ip("192.168.1.1".parse().unwrap()));
        assert!(policy(true).permits(at("127.0.0.1:5000")));
        assert!(policy(false).permits(at("8.8.8.8:53")));
        assert!(policy(true).permits(at("10.0.0.5:22")));
    }

    #[test]
    fn the_announced_media_address_is_reached_where_it_is_bound() {
        let policy = policy(false);
        assert_eq!(
            policy.outbound(at("203.0.113.10:4001")),
            at("10.0.0.5:4001")
        );
        assert_eq!(policy.inbound(at("10.0.0.5:4001")), at("203.0.113.10:4001"));
        assert_eq!(policy.outbound(at("8.8.8.8:4001")), at("8.8.8.8:4001"));
        assert_eq!(policy.inbound(at("10.0.0.5:9")), at("10.0.0.5:9"));
        let everywhere = PeerPolicy {
            media_bound: "0.0.0.0".parse().unwrap(),
            ..policy
        };
        assert_eq!(
            everywhere.outbound(at("203.0.113.10:4002")),
            at("127.0.0.1:4002")
        );
        assert_eq!(
            everywhere.inbound(at("127.0.0.1:4002")),
            at("203.0.113.10:4002")
        );
    }
}
