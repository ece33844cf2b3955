//! The SFU's forwarding. A published track has one [`Fanout`]; each subscriber to it adds a
//! [`DownTrack`] that rewrites the packet for its own leg (SSRC, payload type, no header
//! extensions) and holds video back until a keyframe starts. The decisions are plain functions;
//! the per-packet path takes no lock held across an await and allocates nothing of its own.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};

use arc_swap::ArcSwap;
use rtc::rtp;
use shared::TrackId;
use tokio::sync::Notify;
use webrtc::media_stream::track_local::static_rtp::TrackLocalStaticRTP;
use webrtc::media_stream::track_local::TrackLocal;

use crate::sdp::MediaKind;

/// The codecs the SFU forwards, known by their MIME subtype.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Codec {
    Opus,
    Vp8,
    H264,
}

impl Codec {
    /// The codec of a MIME type such as `video/VP8`.
    pub fn from_mime(mime: &str) -> Option<Codec> {
        let subtype = mime.rsplit('/').next()?;
        [
            ("opus", Codec::Opus),
            ("vp8", Codec::Vp8),
            ("h264", Codec::H264),
        ]
        .into_iter()
        .find(|(name, _)| subtype.eq_ignore_ascii_case(name))
        .map(|(_, codec)| codec)
    }

    pub fn mime(self) -> &'static str {
        match self {
            Codec::Opus => "audio/opus",
            Codec::Vp8 => "video/VP8",
            Codec::H264 => "video/H264",
        }
    }
}

/// Whether an RTP payload starts a keyframe, so a new subscriber can begin decoding there.
pub fn starts_keyframe(codec: Codec, payload: &[u8]) -> bool {
    match codec {
        Codec::Opus => true,
        Codec::Vp8 => vp8_starts_keyframe(payload),
        Codec::H264 => h264_has_keyframe(payload),
    }
}

/// VP8 (RFC 7741): the payload descriptor's S bit and partition 0, then the frame header's
/// inverse key-frame bit.
fn vp8_starts_keyframe(payload: &[u8]) -> bool {
    let Some(&first) = payload.first() else {
        return false;
    };
    let (extended, start, partition) = (first & 0x80 != 0, first & 0x10 != 0, first & 0x07);
    if !start || partition != 0 {
        return false;
    }
    let mut offset = 1;
    if extended {
        let Some(&flags) = payload.get(1) else {
            return false;
        };
        offset = 2;
        if flags & 0x80 != 0 {
            // PictureID: one byte, or two when its M bit is set.
            let long = payload.get(offset).is_some_and(|byte| byte & 0x80 != 0);
            offset += if long { 2 } else { 1 };
        }
        if flags & 0x40 != 0 {
            offset += 1; // TL0PICIDX
        }
        if flags & 0x30 != 0 {
            offset += 1; // TID / KEYIDX
        }
    }
    payload.get(offset).is_some_and(|header| header & 0x01 == 0)
}

/// H264 (RFC 6184): an IDR slice or an SPS, alone, aggregated (STAP-A) or at the start of a
/// fragmented unit (FU-A).
fn h264_has_keyframe(payload: &[u8]) -> bool {
    const IDR: u8 = 5;
    const SPS: u8 = 7;
    const STAP_A: u8 = 24;
    const FU_A: u8 = 28;
    let is_key = |nal_type: u8| nal_type == IDR || nal_type == SPS;
    let Some(&header) = payload.first() else {
        return false;
    };
    match header & 0x1f {
        STAP_A => {
            let mut rest = &payload[1..];
            while rest.len() > 2 {
                let size = usize::from(u16::from_be_bytes([rest[0], rest[1]]));
                match rest.get(2) {
                    Some(&nal) if size > 0 && is_key(nal & 0x1f) => return true,
                    _ => {}
                }
                rest = rest.get(2 + size..).unwrap_or_default();
            }
            false
        }
        FU_A => payload
            .get(1)
            .is_some_and(|&fu| fu & 0x80 != 0 && is_key(fu & 0x1f)),
        nal_type => is_key(nal_type),
    }
}

/// A publisher's header made fit for a subscriber's leg: its SSRC and payload type there, and no
/// header extensions (their ids are negotiated per leg). Built field by field, so the
/// publisher's extensions are never copied (no allocation per packet and subscriber).
pub fn header_for_leg(header: &rtp::Header, ssrc: u32, payload_type: u8) -> rtp::Header {
    rtp::Header {
        version: header.version,
        padding: header.padding,
        marker: header.marker,
        payload_type,
        sequence_number: header.sequence_number,
        timestamp: header.timestamp,
        ssrc,
        csrc: header.csrc.clone(),
        ..Default::default()
    }
}

/// A subscriber's copy of one published track.
pub struct DownTrack {
    id: u64,
    ssrc: u32,
    kind: MediaKind,
    track: Arc<TrackLocalStaticRTP>,
    leg: Mutex<Leg>,
}

/// What the subscriber's negotiation decided, and whether forwarding has begun.
#[derive(Default)]
struct Leg {
    /// The payload type of each codec on this leg; empty until the leg is negotiated.
    payload_types: Vec<(Codec, u8)>,
    /// Video waits for a keyframe so the subscriber can decode from its first packet.
    started: bool,
}

static NEXT_DOWN_TRACK: AtomicU64 = AtomicU64::new(0);

impl DownTrack {
    pub fn new(ssrc: u32, kind: MediaKind, track: Arc<TrackLocalStaticRTP>) -> Arc<DownTrack> {
        Arc::new(DownTrack {
            id: NEXT_DOWN_TRACK.fetch_add(1, Ordering::Relaxed),
            ssrc,
            kind,
            track,
            leg: Mutex::default(),
        })
    }

    pub fn track(&self) -> &Arc<TrackLocalStaticRTP> {
        &self.track
    }

    /// Records the payload types the subscriber's answer gave each codec.
    pub fn set_payload_types(&self, payload_types: Vec<(Codec, u8)>) {
        self.leg().payload_types = payload_types;
    }

    fn leg(&self) -> std::sync::MutexGuard<'_, Leg> {
        // Only the publisher's reader and the subscriber's endpoint touch it, never for long.
        self.leg.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The payload type to send `packet` with, or `None` to hold it back.
    fn admit(&self, codec: Codec, keyframe: bool) -> Option<u8> {
        let mut leg = self.leg();
        let payload_type = leg
            .payload_types
            .iter()
            .find(|(leg_codec, _)| *leg_codec == codec)
            .map(|(_, payload_type)| *payload_type)?;
        if !leg.started {
            if self.kind == MediaKind::Video && !keyframe {
                return None;
            }
            leg.started = true;
        }
        Some(payload_type)
    }
}

/// A published track's subscribers, and the publisher's keyframe requests.
pub struct Fanout {
    pub track_id: TrackId,
    pub kind: MediaKind,
    /// The codec the publisher sends in, once its answer settled it.
    codec: OnceLock<Codec>,
    down_tracks: ArcSwap<Vec<Arc<DownTrack>>>,
    keyframe_wanted: Notify,
}

impl Fanout {
    pub fn new(track_id: TrackId, kind: MediaKind) -> Arc<Fanout> {
        Arc::new(Fanout {
            track_id,
            kind,
            codec: OnceLock::new(),
            down_tracks: ArcSwap::default(),
            keyframe_wanted: Notify::new(),
        })
    }

    pub fn set_codec(&self, codec: Codec) {
        let _ = self.codec.set(codec);
    }

    /// The publisher's codec, or the usual one of the kind while it is not known yet.
    pub fn codec(&self) -> Codec {
        self.codec.get().copied().unwrap_or(match self.kind {
            MediaKind::Audio => Codec::Opus,
            MediaKind::Video => Codec::Vp8,
        })
    }

    /// Starts sending to `down_track`, beginning at the next keyframe, which is asked for now.
    pub fn attach(&self, down_track: Arc<DownTrack>) {
        self.down_tracks.rcu(|current| {
            let mut next = Vec::clone(current);
            next.push(down_track.clone());
            next
        });
        self.request_keyframe();
    }

    pub fn detach(&self, down_track: &DownTrack) {
        self.down_tracks.rcu(|current| {
            current
                .iter()
                .filter(|attached| attached.id != down_track.id)
                .cloned()
                .collect::<Vec<_>>()
        });
    }

    /// Asks the publisher for a keyframe (a subscriber started or lost one); the publisher's
    /// reader sends the PLI, rate-limited.
    pub fn request_keyframe(&self) {
        if self.kind == MediaKind::Video {
            self.keyframe_wanted.notify_one();
        }
    }

    pub async fn keyframe_requested(&self) {
        self.keyframe_wanted.notified().await;
    }

    /// Sends one packet of the publisher to every subscriber.
    pub async fn forward(&self, codec: Codec, packet: &rtp::Packet) {
        let down_tracks = self.down_tracks.load_full();
        if down_tracks.is_empty() {
            return;
        }
        let keyframe = self.kind == MediaKind::Video && starts_keyframe(codec, &packet.payload);
        for down_track in down_tracks.iter() {
            let Some(payload_type) = down_track.admit(codec, keyframe) else {
                // Still waiting for a keyframe: keep asking (the publisher's reader sends at
                // most one request per interval), in case the answer to the first was lost.
                self.request_keyframe();
                continue;
            };
            let copy = rtp::Packet {
                header: header_for_leg(&packet.header, down_track.ssrc, payload_type),
                // Shared, not copied.
                payload: packet.payload.clone(),
            };
            // Fails only once the subscriber's connection is closing; it is detached then.
            let _ = down_track.track.write_rtp(copy).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codecs_from_mime_types() {
        assert_eq!(Codec::from_mime("video/VP8"), Some(Codec::Vp8));
        assert_eq!(Codec::from_mime("video/h264"), Some(Codec::H264));
        assert_eq!(Codec::from_mime("audio/opus"), Some(Codec::Opus));
        assert_eq!(Codec::from_mime("video/AV1"), None);
        assert_eq!(Codec::from_mime(""), None);
    }

    #[test]
    fn vp8_keyframes_are_found_behind_any_descriptor() {
        // S=1, partition 0, then a frame header whose P bit is 0 (key) or 1 (delta).
        assert!(starts_keyframe(Codec::Vp8, &[0x10, 0x00]));
        assert!(!starts_keyframe(Codec::Vp8, &[0x10, 0x01]));
        // Not the start of a partition, or not partition 0.
        assert!(!starts_keyframe(Codec::Vp8, &[0x00, 0x00]));
        assert!(!starts_keyframe(Codec::Vp8, &[0x11, 0x00]));
        // X with a 15-bit PictureID (as Chrome sends), TL0PICIDX and TID.
        assert!(starts_keyframe(
            Codec::Vp8,
            &[0x90, 0xe0, 0x81, 0x23, 0x05, 0x40, 0x9c]
        ));
        assert!(!starts_keyframe(
            Codec::Vp8,
            &[0x90, 0xe0, 0x81, 0x23, 0x05, 0x40, 0x9d]
        ));
        // A 7-bit PictureID only.
        assert!(starts_keyframe(Codec::Vp8, &[0x90, 0x80, 0x12, 0x00]));
        // Truncated payloads are never keyframes, and never panic.
        for truncated in [&[][..], &[0x90], &[0x90, 0x80], &[0x90, 0xe0, 0x81]] {
            assert!(!starts_keyframe(Codec::Vp8, truncated));
        }
    }

    #[test]
    fn h264_keyframes_single_aggregated_and_fragmented() {
        assert!(starts_keyframe(Codec::H264, &[0x65, 0x88])); // IDR
        assert!(starts_keyframe(Codec::H264, &[0x67, 0x42])); // SPS
        assert!(!starts_keyframe(Codec::H264, &[0x41, 0x9a])); // non-IDR slice
                                                               // STAP-A with an SPS after a SEI.
        assert!(starts_keyframe(
            Codec::H264,
            &[0x78, 0x00, 0x01, 0x06, 0x00, 0x02, 0x67, 0x42]
        ));
        assert!(!starts_keyframe(
            Codec::H264,
            &[0x78, 0x00, 0x01, 0x06, 0x00, 0x01, 0x41]
        ));
        // FU-A: the start fragment of an IDR, a middle fragment, and a non-IDR start.
        assert!(starts_keyframe(Codec::H264, &[0x7c, 0x85]));
        assert!(!starts_keyframe(Codec::H264, &[0x7c, 0x05]));
        assert!(!starts_keyframe(Codec::H264, &[0x7c, 0x81]));
        // A STAP-A whose sizes run past the end stops cleanly.
        assert!(!starts_keyframe(Codec::H264, &[0x78, 0xff, 0xff, 0x41]));
    }

    #[test]
    fn rewriting_sets_the_leg_and_drops_extensions() {
        let publisher = rtp::Header {
            version: 2,
            extension: true,
            extension_profile: 0xbede,
            extensions: vec![rtp::header::Extension {
                id: 3,
                payload: bytes::Bytes::from_static(&[1, 2]),
            }],
            payload_type: 96,
            sequence_number: 7,
            timestamp: 9000,
            ssrc: 0x1111,
            marker: true,
            ..Default::default()
        };
        let header = header_for_leg(&publisher, 0x2222, 100);
        assert_eq!((header.ssrc, header.payload_type), (0x2222, 100));
        assert!(!header.extension && header.extensions.is_empty());
        // Sequence numbers, timestamps and the marker pass through: one source per down-track.
        assert_eq!(
            (header.sequence_number, header.timestamp, header.marker),
            (7, 9000, true)
        );
    }
}
