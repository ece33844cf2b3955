//! Any datagram as it reaches the media path from a peer's address: the sans-I/O peer connection
//! the server's endpoints run on (webrtc-rs `rtc`: the STUN, DTLS, SRTP and RTCP demultiplexing,
//! ICE-lite and the DTLS server role as the server's endpoints have them, with videoroom's
//! codecs and interceptors) and the SFU's own reading of a datagram (the STUN username a media
//! worker routes by, keyframe detection, keyframe requests, the header rewrite) never panic.
//!
//! The peer connection is negotiated once with an in-memory client and then takes every input in
//! turn: raw, or as one of the datagrams the real client sent it (STUN checks, the DTLS
//! handshake, SRTP media) with some bytes changed, so the fuzzer starts from packets that get past
//! the demultiplexer.

#![no_main]

use std::cell::RefCell;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use libfuzzer_sys::fuzz_target;
use rtc::media_stream::MediaStreamTrack;
use rtc::peer_connection::configuration::setting_engine::SettingEngineBuilder;
use rtc::peer_connection::configuration::RTCConfigurationBuilder;
use rtc::peer_connection::event::RTCPeerConnectionEvent;
use rtc::peer_connection::message::RTCMessage;
use rtc::peer_connection::state::RTCPeerConnectionState;
use rtc::peer_connection::transport::{
    CandidateConfig, CandidateHostConfig, RTCDtlsRole, RTCIceCandidate,
};
use rtc::peer_connection::{RTCPeerConnection, RTCPeerConnectionBuilder};
use rtc::rtp_transceiver::rtp_sender::{
    RTCRtpCodingParameters, RTCRtpEncodingParameters, RtpCodecKind,
};
use rtc::rtp_transceiver::RTCRtpSenderId;
use rtc::sansio::Protocol;
use rtc::shared::marshal::Unmarshal;
use rtc::shared::{TaggedBytesMut, TransportContext, TransportProtocol};
use server::media::codec::CODECS;
use server::media::demux::stun_local_ufrag;
use server::media::down_track::{header_for_leg, LegNumbers};
use server::media::vp8;
use server::media::setup::{codec, is_keyframe_request, media_and_interceptors};

const CLIENT: &str = "127.0.0.1:50000";
const SERVER: &str = "127.0.0.1:4000";

/// The server's peer connection, and what the client sent it while they connected.
struct Media {
    server: RTCPeerConnection,
    recorded: Vec<Vec<u8>>,
    now: Instant,
}

thread_local! {
    static MEDIA: RefCell<Media> = RefCell::new(negotiate());
}

fn address(text: &str) -> SocketAddr {
    text.parse().expect("a socket address")
}

fn datagram(now: Instant, to: &str, from: &str, bytes: &[u8]) -> TaggedBytesMut {
    TaggedBytesMut {
        now,
        transport: TransportContext {
            local_addr: address(to),
            peer_addr: address(from),
            ecn: None,
            transport_protocol: TransportProtocol::UDP,
        },
        message: BytesMut::from(bytes),
    }
}

fn peer_connection(lite: bool, at: &str, now: Instant) -> RTCPeerConnection {
    let (media, interceptors) = media_and_interceptors(None, None).expect("videoroom's codecs register");
    let mut settings = SettingEngineBuilder::new().with_lite(lite);
    if lite {
        // As the server's endpoints answer: the client opens DTLS.
        settings = settings.with_answering_dtls_role(RTCDtlsRole::Server);
    }
    let settings = settings.build();
    let mut pc = RTCPeerConnectionBuilder::new()
        .with_configuration(RTCConfigurationBuilder::new().build())
        .with_setting_engine(settings)
        .with_media_engine(media)
        .with_interceptor_registry(interceptors)
        .build(now)
        .expect("a peer connection");
    let at = address(at);
    let candidate = CandidateHostConfig {
        base_config: CandidateConfig {
            network: "udp".to_owned(),
            address: at.ip().to_string(),
            port: at.port(),
            component: 1,
            ..Default::default()
        },
        ..Default::default()
    }
    .new_candidate_host()
    .expect("a host candidate");
    let init = RTCIceCandidate::from(&candidate)
        .to_json()
        .expect("a candidate as JSON");
    pc.add_local_candidate(init).expect("the local candidate");
    pc
}

fn add_track(
    pc: &mut RTCPeerConnection,
    kind: RtpCodecKind,
    mime: &str,
    ssrc: u32,
) -> RTCRtpSenderId {
    let encoding = RTCRtpEncodingParameters {
        rtp_coding_parameters: RTCRtpCodingParameters {
            ssrc: Some(ssrc),
            ..Default::default()
        },
        codec: codec(mime).expect("a forwarded codec"),
        ..Default::default()
    };
    let track = MediaStreamTrack::new(
        "client".to_owned(),
        mime.to_owned(),
        mime.to_owned(),
        kind,
        vec![encoding],
    );
    pc.add_track(track).expect("a track to send")
}

/// Connects a client to the server's peer connection in memory, recording every datagram the
/// client sends, media included.
fn negotiate() -> Media {
    let mut now = Instant::now();
    let mut server = peer_connection(true, SERVER, now);
    let mut client = peer_connection(false, CLIENT, now);
    let senders = [
        (
            add_track(&mut client, RtpCodecKind::Audio, "audio/opus", 1111),
            111,
        ),
        (
            add_track(&mut client, RtpCodecKind::Video, "video/VP8", 2222),
            96,
        ),
    ];
    let offer = client.create_offer(None).expect("an offer");
    client
        .set_local_description(now, offer.clone())
        .expect("the offer applies");
    server
        .set_remote_description(now, offer)
        .expect("the server takes the offer");
    let answer = server.create_answer(None).expect("an answer");
    server
        .set_local_description(now, answer.clone())
        .expect("the answer applies");
    client
        .set_remote_description(now, answer)
        .expect("the client takes the answer");

    let mut recorded = Vec::new();
    let mut connected = false;
    for round in 0..600u16 {
        while let Some(message) = client.poll_write() {
            recorded.push(message.message.to_vec());
            let _ = server.handle_read(datagram(now, SERVER, CLIENT, &message.message));
        }
        while let Some(message) = server.poll_write() {
            let _ = client.handle_read(datagram(now, CLIENT, SERVER, &message.message));
        }
        while let Some(event) = client.poll_event() {
            if let RTCPeerConnectionEvent::OnConnectionStateChangeEvent(state) = event {
                connected = state == RTCPeerConnectionState::Connected;
            }
        }
        while server.poll_event().is_some() {}
        while server.poll_read().is_some() {}
        while client.poll_read().is_some() {}
        if connected && round % 10 == 0 {
            for (sender, payload_type) in senders {
                // A VP8 keyframe's first bytes, then filler; Opus takes it as it is.
                let payload = Bytes::from([&[0x90u8, 0x80, 0x01, 0x10][..], &[0u8; 200]].concat());
                let packet = rtc::rtp::Packet {
                    header: rtc::rtp::header::Header {
                        version: 2,
                        payload_type,
                        sequence_number: round,
                        timestamp: u32::from(round) * 3000,
                        ..Default::default()
                    },
                    payload,
                };
                if let Some(mut sender) = client.rtp_sender(sender) {
                    let _ = sender.write_rtp(now, packet);
                }
            }
        }
        now += Duration::from_millis(5);
        let _ = client.handle_timeout(now);
        let _ = server.handle_timeout(now);
    }
    assert!(connected, "the in-memory client never connected");
    Media {
        server,
        recorded,
        now,
    }
}

/// What the SFU itself reads of a datagram: the STUN username its worker routes by, and RTP
/// or RTCP.
fn read_as_media(bytes: &[u8]) {
    if let Some(ufrag) = stun_local_ufrag(bytes) {
        assert!(!ufrag.is_empty() && !ufrag.contains(':'));
    }
    if let Ok(packet) = rtc::rtp::Packet::unmarshal(&mut &bytes[..]) {
        read_rtp(&packet);
    }
    if let Ok(packets) = rtc::rtcp::packet::unmarshal(&mut &bytes[..]) {
        for packet in &packets {
            is_keyframe_request(packet.as_ref());
        }
    }
}

fn read_rtp(packet: &rtc::rtp::Packet) {
    for spec in &CODECS {
        (spec.starts_keyframe)(&packet.payload);
    }
    // A VP8 descriptor read, and renumbered as after a layer switch.
    let renumbering = match vp8::Descriptor::parse(&packet.payload) {
        Some(descriptor) => {
            let mut continuity = vp8::Continuity::default();
            continuity.renumber(1, &descriptor);
            let renumbering = continuity.renumber(packet.header.ssrc ^ 1, &descriptor);
            renumbering.apply(&packet.payload);
            renumbering
        }
        None => vp8::Renumbering::default(),
    };
    let leg = LegNumbers {
        ssrc: 0x1234,
        payload_type: 100,
        sequence: packet.header.sequence_number,
        timestamp: packet.header.timestamp,
        renumbering,
    };
    header_for_leg(&packet.header, leg);
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    MEDIA.with_borrow_mut(|media| {
        let input = if mode & 1 == 0 || media.recorded.is_empty() {
            rest.to_vec()
        } else {
            // A recorded datagram with bytes changed: (position, value) pairs.
            let mut bytes = media.recorded[usize::from(mode >> 1) % media.recorded.len()].clone();
            for change in rest.chunks_exact(2) {
                let position = usize::from(change[0]) % bytes.len().max(1);
                if let Some(byte) = bytes.get_mut(position) {
                    *byte = change[1];
                }
            }
            bytes
        };
        read_as_media(&input);
        media.now += Duration::from_millis(1);
        let now = media.now;
        let _ = media
            .server
            .handle_read(datagram(now, SERVER, CLIENT, &input));
        let _ = media.server.handle_timeout(now);
        while media.server.poll_write().is_some() {}
        while media.server.poll_event().is_some() {}
        while let Some(message) = media.server.poll_read() {
            if let RTCMessage::RtpPacket(_, packet) = message.message {
                read_rtp(&packet);
            }
        }
    });
});
