//! The machine's own addresses. A server on loopback (the default `--media-ip`) also offers
//! them as candidates: Firefox never pairs its addresses with a loopback one, so a stock
//! Firefox on the same machine would otherwise get no media.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// The addresses of the machine's interfaces that are up, of `ip`'s family, but loopback and
/// link-local ones (which a browser does not use).
pub fn machine_addresses(ip: IpAddr) -> Vec<IpAddr> {
    let mut addresses = Vec::new();
    let mut list: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `list` with a linked list that stays valid until freeifaddrs;
    // every node and its address are only read before that, and each address is read as the
    // sockaddr type its family names.
    unsafe {
        if libc::getifaddrs(&mut list) != 0 {
            return addresses;
        }
        let mut node = list;
        while let Some(interface) = node.as_ref() {
            node = interface.ifa_next;
            let up = interface.ifa_flags & libc::IFF_UP as u32 != 0;
            let Some(address) = interface.ifa_addr.as_ref() else {
                continue;
            };
            let found = match i32::from(address.sa_family) {
                libc::AF_INET if ip.is_ipv4() => {
                    let v4 = &*(interface.ifa_addr as *const libc::sockaddr_in);
                    IpAddr::V4(Ipv4Addr::from(u32::from_be(v4.sin_addr.s_addr)))
                }
                libc::AF_INET6 if ip.is_ipv6() => {
                    let v6 = &*(interface.ifa_addr as *const libc::sockaddr_in6);
                    IpAddr::V6(Ipv6Addr::from(v6.sin6_addr.s6_addr))
                }
                _ => continue,
            };
            if up && usable(found) && !addresses.contains(&found) {
                addresses.push(found);
            }
        }
        libc::freeifaddrs(list);
    }
    addresses
}

fn usable(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(ip) => !ip.is_loopback() && !ip.is_link_local() && !ip.is_unspecified(),
        IpAddr::V6(ip) => {
            !ip.is_loopback() && !ip.is_unspecified() && ip.segments()[0] & 0xffc0 != 0xfe80
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_link_local_and_unspecified_addresses_are_left_out() {
        for ip in [
            "127.0.0.1",
            "169.254.1.2",
            "0.0.0.0",
            "::1",
            "fe80::1",
            "::",
        ] {
            assert!(!usable(ip.parse().unwrap()), "{ip}");
        }
        for ip in [
            "192.168.1.20",
            "10.0.0.5",
            "203.0.113.10",
            "2001:db8::5",
            "fd00::5",
        ] {
            assert!(usable(ip.parse().unwrap()), "{ip}");
        }
    }
}
