//! A peer's endpoint on its media worker: its one sans-I/O WebRTC peer connection (webrtc-rs
//! `rtc`), ICE-lite on the worker's shared socket, and what its negotiations decided — the
//! mids it publishes on, the tracks it receives and on which transceiver. The worker drives it
//! (datagrams, timers, commands) and does the forwarding between endpoints.
//!
//! ICE-lite: the connection answers the browser's checks and never sends any of its own, so a
//! client cannot aim it at addresses of its choosing; there is no mDNS and nothing is gathered:
//! the one candidate is the worker's socket.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use rand::distr::{Alphanumeric, SampleString};
use rtc::ice::mdns::MulticastDnsMode;
use rtc::ice::tcp_type::TcpType;
use rtc::peer_connection::configuration::setting_engine::SettingEngineBuilder;
use rtc::peer_connection::configuration::RTCConfigurationBuilder;
use rtc::peer_connection::transport::{
    CandidateConfig, CandidateHostConfig, RTCDtlsRole, RTCIceCandidate, RTCIceCandidateInit,
};
use rtc::peer_connection::{RTCPeerConnection, RTCPeerConnectionBuilder};
use rtc::rtp_transceiver::{RTCRtpSenderId, RTCRtpTransceiverId};
use rtc::shared::TransportProtocol;
use shared::{PeerId, TrackId};

use crate::media::allocation::Downlink;
use crate::media::codec::MediaKind;
use crate::media::engine::{EndpointEvent, EndpointReport, Reports, RoomKey};
use crate::media::estimate::DownlinkEstimate;
use crate::media::setup;
use crate::media::simulcast::Layer;
use crate::telemetry;

/// A published track on a worker.
pub type PublicationKey = u64;

pub struct Endpoint {
    pub room: RoomKey,
    pub peer_id: PeerId,
    reports: Reports,
    /// Commands the room sent and the worker has not yet taken.
    pending: Arc<AtomicUsize>,
    pub pc: RTCPeerConnection,
    /// The tracks the client publishes, by mid, as of its last offer.
    pub published: BTreeMap<String, PublicationKey>,
    /// The same, by the id the connection gives a remote track once its first packet came.
    pub incoming: HashMap<String, PublicationKey>,
    /// Others' tracks this endpoint sends to its client.
    pub subscriptions: BTreeMap<TrackId, Subscribed>,
    /// The simulcast layer the client wishes for, by track (`setTargetTrackVariant`), also
    /// for tracks it does not receive yet.
    pub wishes: HashMap<TrackId, Layer>,
    /// What the client's downlink carries, as its feedback tells.
    pub estimate: DownlinkEstimate,
    /// When the caps of the tracks it receives may rise again.
    pub downlink: Downlink,
    /// Mids of tracks this endpoint stopped sending: the answer keeps naming them.
    pub stopped: BTreeMap<String, TrackId>,
    /// The client's candidates that came before its first offer.
    pub early_candidates: Vec<String>,
    /// Whether ICE and DTLS are up now.
    pub connected: bool,
    /// When the connection must be up by, after an answer.
    pub connect_due: Option<Instant>,
    /// When the connection's own timers (ICE, DTLS, RTCP reports, NACK) next want it.
    pub timer: Option<Instant>,
    /// It has datagrams to send that the worker has not collected yet.
    pub dirty: bool,
}

/// A track this endpoint sends to its client.
pub struct Subscribed {
    pub publication: PublicationKey,
    pub kind: MediaKind,
    pub transceiver: RTCRtpTransceiverId,
    pub sender: RTCRtpSenderId,
    pub ssrc: u32,
    /// Its m-line, once an answer placed it.
    pub mid: Option<String>,
}

impl Endpoint {
    /// The endpoint of `peer_id`, with its peer connection reachable at `candidate`.
    pub fn new(
        room: RoomKey,
        peer_id: PeerId,
        reports: Reports,
        pending: Arc<AtomicUsize>,
        candidates: &[RTCIceCandidateInit],
        now: Instant,
    ) -> Result<Endpoint, String> {
        let estimate = DownlinkEstimate::default();
        let (media, interceptors) = setup::media_and_interceptors(
            Some(metrics::counter!(telemetry::NACKS_RECEIVED)),
            Some(estimate.clone()),
        )
        .map_err(|err| format!("codec setup: {err}"))?;
        let mut random = rand::rng();
        let setting_engine = SettingEngineBuilder::new()
            .with_lite(true)
            .with_multicast_dns_mode(MulticastDnsMode::Disabled)
            // The client opens DTLS once its ICE is up. As the DTLS client, the server would send
            // its hello beside its answer to the nominating check, often before the client takes
            // DTLS from that pair, and the handshake would wait for a retransmission: a join's
            // first media came after 20 ms or after 220 ms; as the DTLS server, after 55-80 ms.
            .with_answering_dtls_role(RTCDtlsRole::Server)
            // The ufrag names this connection on the worker's shared socket.
            .with_ice_credentials(
                Alphanumeric.sample_string(&mut random, 16),
                Alphanumeric.sample_string(&mut random, 32),
            )
            .build();
        let mut pc = RTCPeerConnectionBuilder::new()
            .with_configuration(RTCConfigurationBuilder::new().build())
            .with_setting_engine(setting_engine)
            .with_media_engine(media)
            .with_interceptor_registry(interceptors)
            .build(now)
            .map_err(|err| format!("cannot create a peer connection: {err}"))?;
        for candidate in candidates {
            pc.add_local_candidate(candidate.clone())
                .map_err(|err| format!("cannot add the media candidate: {err}"))?;
        }
        Ok(Endpoint {
            room,
            peer_id,
            reports,
            pending,
            pc,
            published: BTreeMap::new(),
            incoming: HashMap::new(),
            subscriptions: BTreeMap::new(),
            wishes: HashMap::new(),
            estimate,
            downlink: Downlink::default(),
            stopped: BTreeMap::new(),
            early_candidates: Vec::new(),
            connected: false,
            connect_due: None,
            timer: None,
            dirty: false,
        })
    }

    pub fn report(&self, event: EndpointEvent) {
        let report = EndpointReport {
            peer_id: self.peer_id.clone(),
            event,
        };
        // Fails only once the room is gone, and with it the endpoint's reason to report.
        let _ = self.reports.send(report);
    }

    /// One command of the room's was taken.
    pub fn took_command(&self) {
        self.pending.fetch_sub(1, Ordering::Relaxed);
    }

    pub fn add_remote_candidate(&mut self, candidate: String) {
        if self.pc.remote_description().is_none() {
            self.early_candidates.push(candidate);
            return;
        }
        let init = RTCIceCandidateInit {
            candidate,
            sdp_mline_index: Some(0),
            ..Default::default()
        };
        // ICE-lite never checks the client's candidates; they only complete its description.
        if let Err(err) = self.pc.add_remote_candidate(init) {
            tracing::debug!(peer = %self.peer_id, %err, "candidate refused");
        }
    }
}

/// The worker's host candidates for each of `addresses`, UDP and passive TCP (RFC 6544), as
/// the connections take them and as clients are told them (`candidate:…`).
pub fn host_candidates(addresses: &[SocketAddr]) -> Result<Vec<RTCIceCandidateInit>, String> {
    let mut candidates = Vec::new();
    for address in addresses {
        candidates.push(host_candidate(*address, TransportProtocol::UDP)?);
        candidates.push(host_candidate(*address, TransportProtocol::TCP)?);
    }
    Ok(candidates)
}

fn host_candidate(
    address: SocketAddr,
    protocol: TransportProtocol,
) -> Result<RTCIceCandidateInit, String> {
    let (network, tcp_type) = match protocol {
        TransportProtocol::UDP => ("udp", TcpType::Unspecified),
        _ => ("tcp", TcpType::Passive),
    };
    let candidate = CandidateHostConfig {
        base_config: CandidateConfig {
            network: network.to_owned(),
            address: address.ip().to_string(),
            port: address.port(),
            component: 1,
            ..Default::default()
        },
        tcp_type,
    }
    .new_candidate_host()
    .map_err(|err| format!("cannot make the host candidate {address}: {err}"))?;
    RTCIceCandidate::from(&candidate)
        .to_json()
        .map_err(|err| format!("cannot write the host candidate {address}: {err}"))
}

/// The local ICE username fragment an SDP description carries.
pub fn ice_ufrag(sdp: &str) -> Option<&str> {
    sdp.lines()
        .find_map(|line| line.trim_end().strip_prefix("a=ice-ufrag:"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_host_candidates_name_the_worker_socket_and_listener() {
        let candidates =
            host_candidates(&["192.0.2.7:4001".parse().expect("an address")]).expect("candidates");
        let [udp, tcp] = &candidates[..] else {
            panic!("two candidates: {candidates:?}");
        };
        assert!(udp.candidate.contains(" udp "), "{}", udp.candidate);
        assert!(
            udp.candidate.ends_with("192.0.2.7 4001 typ host"),
            "{}",
            udp.candidate
        );
        assert!(tcp.candidate.contains(" tcp "), "{}", tcp.candidate);
        assert!(
            tcp.candidate
                .ends_with("192.0.2.7 4001 typ host tcptype passive"),
            "{}",
            tcp.candidate
        );
    }

    #[test]
    fn the_ufrag_is_read_from_a_description() {
        let sdp = "v=0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=ice-ufrag:abcd\r\na=ice-pwd:x\r\n";
        assert_eq!(ice_ufrag(sdp), Some("abcd"));
        assert_eq!(ice_ufrag("v=0\r\n"), None);
    }
}
