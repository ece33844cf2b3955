//! How every peer connection of videoroom is set up, the server's and the synthetic test and
//! load peers' alike: the codecs, the interceptors that bring keyframe requests to the app, and
//! the handler that turns the connection's callbacks into messages for the task that owns it.

use std::collections::VecDeque;
use std::sync::Arc;

use rtc::interceptor::{
    Attribute, Interceptor, Packet as InterceptorPacket, Slot, StreamInfo, TaggedPacket,
};
use rtc::media_stream::MediaStreamTrack;
use rtc::peer_connection::configuration::media_engine::MIME_TYPE_RTX;
use rtc::rtcp::payload_feedbacks::full_intra_request::FullIntraRequest;
use rtc::rtcp::payload_feedbacks::picture_loss_indication::PictureLossIndication;
use rtc::rtp_transceiver::rtp_sender::{
    RTCPFeedback, RTCRtpCodec, RTCRtpCodecParameters, RTCRtpCodingParameters,
    RTCRtpEncodingParameters, RtpCodecKind,
};
use rtc::sansio::Protocol;
use tokio::sync::mpsc;
use webrtc::media_stream::track_local::static_rtp::TrackLocalStaticRTP;
use webrtc::media_stream::track_remote::TrackRemote;
use webrtc::peer_connection::{
    register_default_interceptors, MediaEngine, PeerConnectionEventHandler,
    RTCPeerConnectionIceEvent, RTCPeerConnectionState, Registry,
};

use crate::media::codec::{MediaKind, CODECS};

/// What a peer connection reports to its owner.
pub enum ConnectionEvent {
    /// A local ICE candidate, as `candidate:…`.
    LocalCandidate(String),
    /// A remote track started (its first packet arrived).
    Track(Arc<dyn TrackRemote>),
    State(RTCPeerConnectionState),
}

/// Sends the connection's events to a channel. The callbacks run on the connection's driver
/// task, so they only hand over; the owner's task does the work.
pub struct EventsToChannel(pub mpsc::UnboundedSender<ConnectionEvent>);

#[async_trait::async_trait]
impl PeerConnectionEventHandler for EventsToChannel {
    async fn on_ice_candidate(&self, event: RTCPeerConnectionIceEvent) {
        if let Ok(init) = event.candidate.to_json() {
            let _ = self.0.send(ConnectionEvent::LocalCandidate(init.candidate));
        }
    }

    async fn on_connection_state_change(&self, state: RTCPeerConnectionState) {
        let _ = self.0.send(ConnectionEvent::State(state));
    }

    async fn on_track(&self, track: Arc<dyn TrackRemote>) {
        let _ = self.0.send(ConnectionEvent::Track(track));
    }
}

/// The codecs and interceptors for one peer connection.
pub fn media_and_interceptors() -> webrtc::error::Result<(MediaEngine, Registry)> {
    let mut media = media_engine()?;
    let interceptors = register_default_interceptors(Registry::new(), &mut media)?
        // Outermost, so the built-in interceptors (NACK responder, reports) see RTCP first.
        .with(Slot::from(14_000), KeyframeRequestsToApp::default());
    Ok((media, interceptors))
}

/// A local track to send RTP on, in `codec`, with its own SSRC: without an explicit SSRC the
/// sender would pick one this track never learns, and without a codec the sender would not be
/// bound to the interceptors (no NACK responses, no sender reports). Tracks with the same
/// `stream_id` share an `a=msid` stream.
pub fn rtp_track(
    stream_id: String,
    track_id: String,
    kind: RtpCodecKind,
    ssrc: u32,
    codec: RTCRtpCodec,
) -> Arc<TrackLocalStaticRTP> {
    let encoding = RTCRtpEncodingParameters {
        rtp_coding_parameters: RTCRtpCodingParameters {
            ssrc: Some(ssrc),
            ..Default::default()
        },
        active: true,
        codec,
        ..Default::default()
    };
    Arc::new(TrackLocalStaticRTP::new(MediaStreamTrack::new(
        stream_id,
        track_id.clone(),
        track_id,
        kind,
        vec![encoding],
    )))
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

fn media_engine() -> webrtc::error::Result<MediaEngine> {
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
/// without it a subscriber's keyframe requests would never reach its publisher.
#[derive(Default)]
struct KeyframeRequestsToApp {
    read: VecDeque<TaggedPacket>,
    write: VecDeque<TaggedPacket>,
}

impl Protocol<TaggedPacket, TaggedPacket, ()> for KeyframeRequestsToApp {
    type Rout = TaggedPacket;
    type Wout = TaggedPacket;
    type Eout = ();
    type Error = rtc::shared::error::Error;
    type Time = std::time::Instant;

    fn handle_read(&mut self, mut message: TaggedPacket) -> Result<(), Self::Error> {
        if let InterceptorPacket::Rtcp(packets) = &message.message.packet {
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
