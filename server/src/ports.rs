//! Binding a UDP socket and a TCP listener on one port number, as the media workers (ICE over
//! UDP and TCP) and the TURN server (UDP and TCP) both listen.

use std::net::{IpAddr, TcpListener, UdpSocket};

use anyhow::Context;

/// A UDP socket and a TCP listener on `ip`, port `port`; with port 0, a free port both can have.
/// `what` names the port and its flags in errors.
pub fn bind_udp_and_tcp(
    ip: IpAddr,
    port: u16,
    what: &str,
) -> anyhow::Result<(UdpSocket, TcpListener)> {
    let attempts = if port == 0 { 20 } else { 1 };
    let mut last_error = None;
    for _ in 0..attempts {
        let socket = UdpSocket::bind((ip, port))
            .with_context(|| format!("cannot bind {what} {ip}:{port} (UDP)"))?;
        let bound = socket.local_addr()?.port();
        match TcpListener::bind((ip, bound)) {
            Ok(listener) => return Ok((socket, listener)),
            Err(err) => last_error = Some(err),
        }
    }
    let err = last_error.expect("at least one attempt");
    Err(err).with_context(|| format!("cannot bind {what} {ip}:{port} (TCP)"))
}
