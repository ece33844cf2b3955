//! How every peer connection of videoroom is set up, the server's and the synthetic test and
//! load peers' alike: the codecs of the table in [`crate::media::codec`] with their feedback,
//! the interceptors (NACK, RTCP reports, transport-wide congestion control), and the one of
//! ours that brings keyframe requests to the application. The server's connections also
//! number what they send transport-wide and estimate their client's downlink from its feedback
//! ([`crate::media::twcc`], [`crate::media::estimate`]).

use std::collections::VecDeque;

use metrics::Counter;
use rtc::interceptor::{
    Attribute, Interceptor, NackGeneratorBuilder, NackResponderBuilder,
    Packet as InterceptorPacket, Registry, SenderReportBuilder, Slot, StreamInfo, TaggedPacket,
};
use rtc::peer_connection::configuration::interceptor_registry::{
    configure_simulcast_extension_headers, configure_twcc_receiver_only,
};
use rtc::peer_connection::configuration::media_engine::MediaEngine;
use rtc::peer_connection::configuration::media_engine::MIME_TYPE_RTX;
use rtc::rtcp::payload_feedbacks::full_intra_request::FullIntraRequest;
use rtc::rtcp::payload_feedbacks::picture_loss_indication::PictureLossIndication;
use rtc::rtcp::transport_feedbacks::transport_layer_nack::TransportLayerNack;
use rtc::rtp_transceiver::rtp_sender::{
    RTCPFeedback, RTCRtpCodec, RTCRtpCodecParameters, RTCRtpHeaderExtensionCapability, RtpCodecKind,
};
use rtc::sansio::Protocol;

use crate::media::codec::{MediaKind, CODECS};
use crate::media::estimate::{DownlinkEstimate, DownlinkEstimator};
use crate::media::twcc::TransportWide;
use crate::media::voice;

/// Packets each sent stream keeps to answer NACKs: 1.7 s of a 1.5 Mbit/s video stream, far
/// beyond any round trip worth retransmitting over (webrtc-rs keeps 1,024, a megabyte and more
/// per published video track).
const NACK_HISTORY: u16 = 256;

/// The codecs and interceptors for one peer connection: webrtc-rs's defaults (NACK generator
/// and responder, sender reports (not receiver reports: see below), transport-wide congestion
/// control feedback, the simulcast and audio-level header extensions) with a shorter NACK
/// history, and ours that brings keyframe requests to the application and counts the NACKs
/// that arrive in `nacks`, if given (the server's connections count them; test peers do not).
/// With `estimate`, the connection numbers what it sends transport-wide and estimates the
/// remote's downlink from its feedback into it, without pacing: a forwarded packet leaves
/// at once, and the worker keeps each subscriber within the estimate by choosing layers.
pub fn media_and_interceptors(
    nacks: Option<Counter>,
    estimate: Option<DownlinkEstimate>,
) -> rtc::shared::error::Result<(MediaEngine, Registry)> {
    let mut media = media_engine()?;
    configure_simulcast_extension_headers(&mut media)?;
    // Each audio packet's level, for the room's voice activity (`crate::media::voice`).
    media.register_header_extension(
        RTCRtpHeaderExtensionCapability {
            uri: voice::AUDIO_LEVEL_URI.to_owned(),
        },
        RtpCodecKind::Audio,
        None,
    )?;
    let interceptors = Registry::new()
        .with(
            Slot::NackResponder,
            NackResponderBuilder::new().with_size(NACK_HISTORY).build(),
        )
        .with(Slot::NackGenerator, NackGeneratorBuilder::new().build());
    let mut interceptors = configure_twcc_receiver_only(interceptors, &mut media)?;
    if let Some(estimate) = estimate {
        // Wire-most, below the NACK responder: retransmissions are numbered too.
        interceptors = interceptors.with(
            Slot::CongestionControl,
            TransportWide::new(DownlinkEstimator::new(estimate)),
        );
    }
    // Sender reports only, no receiver reports. A browser stops putting the mid and rid header
    // extensions in a simulcast layer's packets once a receiver report acknowledges the layer's
    // SSRC, and webrtc-rs 0.21 forgets which SSRC is which layer at every renegotiation
    // (`start_rtp` sets the layers' tracks anew): it can only learn them again from those
    // extensions, so after the first renegotiation the layers would be dropped. The browsers'
    // congestion control runs on the transport-wide feedback, which goes on.
    let interceptors = interceptors
        .with(Slot::SenderReport, SenderReportBuilder::new().build())
        // Outermost, so the built-in interceptors (NACK responder, reports) see RTCP first.
        .with(
            Slot::from(14_000),
            KeyframeRequestsToApp {
                nacks,
                ..KeyframeRequestsToApp::default()
            },
        );
    Ok((media, interceptors))
}

/// Whether an RTCP packet asks for a keyframe (PLI or FIR).
pub fn is_keyframe_request(packet: &dyn rtc::rtcp::Packet) -> bool {
    let packet = packet.as_any();
    packet.is::<PictureLossIndication>() || packet.is::<FullIntraRequest>()
}

/// The codecs of the table in `codec`, each with NACK, PLI and FIR feedback and RTX for video:
/// (kind, payload type, codec).
fn codecs() -> Vec<(RtpCodecKind, u8, RTCRtpCodec)> {
    let feedback = |typ: &str, parameter: &str| RTCPFeedback {
        typ: typ.to_owned(),
        parameter: parameter.to_owned(),
    };
    let mut codecs = Vec::new();
    for spec in &CODECS {
        let (kind, rtcp_feedback) = match spec.kind {
            MediaKind::Audio => (RtpCodecKind::Audio, vec![]),
            MediaKind::Video => (
                RtpCodecKind::Video,
                vec![
                    feedback("nack", ""),
                    feedback("nack", "pli"),
                    feedback("ccm", "fir"),
                ],
            ),
        };
        let codec = RTCRtpCodec {
            mime_type: spec.mime.to_owned(),
            clock_rate: spec.clock_rate,
            channels: spec.channels,
            sdp_fmtp_line: spec.fmtp.to_owned(),
            rtcp_feedback,
        };
        codecs.push((kind, spec.payload_type, codec));
        if let Some(rtx) = spec.rtx_payload_type {
            let codec = RTCRtpCodec {
                mime_type: MIME_TYPE_RTX.to_owned(),
                clock_rate: spec.clock_rate,
                channels: 0,
                sdp_fmtp_line: format!("apt={}", spec.payload_type),
                rtcp_feedback: vec![],
            };
            codecs.push((kind, rtx, codec));
        }
    }
    codecs
}

fn media_engine() -> rtc::shared::error::Result<MediaEngine> {
    let mut media = MediaEngine::default();
    for (kind, payload_type, rtp_codec) in codecs() {
        media.register_codec(
            RTCRtpCodecParameters {
                rtp_codec,
                payload_type,
            },
            kind,
        )?;
    }
    Ok(media)
}

/// The registered codec of a MIME type such as `video/VP8` (case-insensitive).
pub fn codec(mime: &str) -> Option<RTCRtpCodec> {
    codecs()
        .into_iter()
        .map(|(_, _, codec)| codec)
        .find(|codec| codec.mime_type.eq_ignore_ascii_case(mime))
}

/// Marks incoming PLI and FIR for the application, which the built-in interceptors never do;
/// without it a subscriber's keyframe requests would never reach its publisher. Counts the NACKs
/// it sees go by on their way to the NACK responder.
#[derive(Default)]
struct KeyframeRequestsToApp {
    read: VecDeque<TaggedPacket>,
    write: VecDeque<TaggedPacket>,
    nacks: Option<Counter>,
}

impl Protocol<TaggedPacket, TaggedPacket, ()> for KeyframeRequestsToApp {
    type Rout = TaggedPacket;
    type Wout = TaggedPacket;
    type Eout = ();
    type Error = rtc::shared::error::Error;
    type Time = std::time::Instant;

    fn handle_read(&mut self, mut message: TaggedPacket) -> Result<(), Self::Error> {
        if let InterceptorPacket::Rtcp(packets) = &message.message.packet {
            if let Some(nacks) = &self.nacks {
                let count = packets
                    .iter()
                    .filter(|packet| packet.as_any().is::<TransportLayerNack>())
                    .count();
                nacks.increment(count as u64);
            }
            // The core routes a compound packet by its first packet's SSRC: keep only requests.
            let requests: Vec<Box<dyn rtc::rtcp::Packet>> = packets
                .iter()
                .filter(|packet| is_keyframe_request(packet.as_ref()))
                .cloned()
                .collect();
            if requests.is_empty() {
                return Ok(());
            }
            message.message.packet = InterceptorPacket::Rtcp(requests);
            message.message.add(Attribute::DeliverToApplication);
        }
        self.read.push_back(message);
        Ok(())
    }

    fn poll_read(&mut self) -> Option<TaggedPacket> {
        self.read.pop_front()
    }

    fn handle_write(&mut self, message: TaggedPacket) -> Result<(), Self::Error> {
        self.write.push_back(message);
        Ok(())
    }

    fn poll_write(&mut self) -> Option<TaggedPacket> {
        self.write.pop_front()
    }
}

impl Interceptor for KeyframeRequestsToApp {
    fn bind_local_stream(&mut self, _: &StreamInfo) {}
    fn unbind_local_stream(&mut self, _: &StreamInfo) {}
    fn bind_remote_stream(&mut self, _: &StreamInfo) {}
    fn unbind_remote_stream(&mut self, _: &StreamInfo) {}
}
