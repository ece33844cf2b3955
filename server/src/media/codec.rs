//! The one table of codecs videoroom forwards: for each, its kind, MIME type, SDP name, payload
//! type (and RTX payload type), clock rate, channels, format parameters and keyframe detector.
//! The SDP checks, the peer connections' media engine, the forwarding and the synthetic test
//! peers all read it; adding a codec is adding a row.

use crate::media::vp8;

/// What a media section or track carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum MediaKind {
    Audio,
    Video,
}

/// The codecs the SFU forwards, in the order of their rows in [`CODECS`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Codec {
    Opus,
    Vp8,
    H264,
}

/// One row of the table.
pub struct CodecSpec {
    pub codec: Codec,
    pub kind: MediaKind,
    /// As webrtc-rs names it, e.g. `video/VP8`.
    pub mime: &'static str,
    /// As `a=rtpmap` names it, lower-cased.
    pub sdp_name: &'static str,
    pub payload_type: u8,
    /// Retransmissions (RFC 4588) for video.
    pub rtx_payload_type: Option<u8>,
    pub clock_rate: u32,
    pub channels: u16,
    pub fmtp: &'static str,
    /// Whether an RTP payload starts a keyframe, so a new subscriber can begin decoding there.
    pub starts_keyframe: fn(&[u8]) -> bool,
}

/// Opus, VP8 and H264 (constrained baseline, as browsers offer it), with the payload types
/// Chromium uses for them.
pub static CODECS: [CodecSpec; 3] = [
    CodecSpec {
        codec: Codec::Opus,
        kind: MediaKind::Audio,
        mime: "audio/opus",
        sdp_name: "opus",
        payload_type: 111,
        rtx_payload_type: None,
        clock_rate: 48_000,
        channels: 2,
        fmtp: "minptime=10;useinbandfec=1",
        // Every Opus packet decodes on its own.
        starts_keyframe: |_| true,
    },
    CodecSpec {
        codec: Codec::Vp8,
        kind: MediaKind::Video,
        mime: "video/VP8",
        sdp_name: "vp8",
        payload_type: 96,
        rtx_payload_type: Some(97),
        clock_rate: 90_000,
        channels: 0,
        fmtp: "",
        starts_keyframe: vp8_starts_keyframe,
    },
    CodecSpec {
        codec: Codec::H264,
        kind: MediaKind::Video,
        mime: "video/H264",
        sdp_name: "h264",
        payload_type: 102,
        rtx_payload_type: Some(103),
        clock_rate: 90_000,
        channels: 0,
        fmtp: "level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42e01f",
        starts_keyframe: h264_has_keyframe,
    },
];

impl Codec {
    /// Its row; on the per-packet path, so an index rather than a search.
    pub fn spec(self) -> &'static CodecSpec {
        &CODECS[self as usize]
    }

    /// The codec of a MIME type such as `video/VP8` (case-insensitive).
    pub fn from_mime(mime: &str) -> Option<Codec> {
        CODECS
            .iter()
            .find(|spec| spec.mime.eq_ignore_ascii_case(mime))
            .map(|spec| spec.codec)
    }

    /// The codec of an `a=rtpmap` name such as `VP8` (case-insensitive).
    pub fn from_sdp_name(name: &str) -> Option<Codec> {
        CODECS
            .iter()
            .find(|spec| spec.sdp_name.eq_ignore_ascii_case(name))
            .map(|spec| spec.codec)
    }

    /// The codec a track of `kind` usually has, until its publisher's first packet tells.
    pub fn usual(kind: MediaKind) -> Codec {
        match kind {
            MediaKind::Audio => Codec::Opus,
            MediaKind::Video => Codec::Vp8,
        }
    }

    pub fn mime(self) -> &'static str {
        self.spec().mime
    }

    pub fn kind(self) -> MediaKind {
        self.spec().kind
    }

    pub fn payload_type(self) -> u8 {
        self.spec().payload_type
    }

    pub fn clock_rate(self) -> u32 {
        self.spec().clock_rate
    }

    pub fn starts_keyframe(self, payload: &[u8]) -> bool {
        (self.spec().starts_keyframe)(payload)
    }
}

/// VP8 (RFC 7741): see [`vp8::Descriptor::starts_keyframe`].
fn vp8_starts_keyframe(payload: &[u8]) -> bool {
    vp8::Descriptor::parse(payload).is_some_and(|descriptor| descriptor.starts_keyframe(payload))
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
        assert!(Codec::Vp8.starts_keyframe(&[0x10, 0x00]));
        assert!(!Codec::Vp8.starts_keyframe(&[0x10, 0x01]));
        // Not the start of a partition, or not partition 0.
        assert!(!Codec::Vp8.starts_keyframe(&[0x00, 0x00]));
        assert!(!Codec::Vp8.starts_keyframe(&[0x11, 0x00]));
        // X with a 15-bit PictureID (as Chrome sends), TL0PICIDX and TID.
        assert!(Codec::Vp8.starts_keyframe(&[0x90, 0xe0, 0x81, 0x23, 0x05, 0x40, 0x9c]));
        assert!(!Codec::Vp8.starts_keyframe(&[0x90, 0xe0, 0x81, 0x23, 0x05, 0x40, 0x9d]));
        // A 7-bit PictureID only.
        assert!(Codec::Vp8.starts_keyframe(&[0x90, 0x80, 0x12, 0x00]));
        // Truncated payloads are never keyframes, and never panic.
        for truncated in [&[][..], &[0x90], &[0x90, 0x80], &[0x90, 0xe0, 0x81]] {
            assert!(!Codec::Vp8.starts_keyframe(truncated));
        }
    }

    #[test]
    fn h264_keyframes_single_aggregated_and_fragmented() {
        assert!(Codec::H264.starts_keyframe(&[0x65, 0x88])); // IDR
        assert!(Codec::H264.starts_keyframe(&[0x67, 0x42])); // SPS
        assert!(!Codec::H264.starts_keyframe(&[0x41, 0x9a])); // non-IDR slice
                                                              // STAP-A with an SPS after a SEI.
        assert!(Codec::H264.starts_keyframe(&[0x78, 0x00, 0x01, 0x06, 0x00, 0x02, 0x67, 0x42]));
        assert!(!Codec::H264.starts_keyframe(&[0x78, 0x00, 0x01, 0x06, 0x00, 0x01, 0x41]));
        // FU-A: the start fragment of an IDR, a middle fragment, and a non-IDR start.
        assert!(Codec::H264.starts_keyframe(&[0x7c, 0x85]));
        assert!(!Codec::H264.starts_keyframe(&[0x7c, 0x05]));
        assert!(!Codec::H264.starts_keyframe(&[0x7c, 0x81]));
        // A STAP-A whose sizes run past the end stops cleanly.
        assert!(!Codec::H264.starts_keyframe(&[0x78, 0xff, 0xff, 0x41]));
    }

    #[test]
    fn the_table_names_each_codec_once_by_mime_and_sdp_name() {
        for spec in &CODECS {
            assert_eq!(Codec::from_mime(spec.mime), Some(spec.codec));
            assert_eq!(Codec::from_sdp_name(spec.sdp_name), Some(spec.codec));
            assert!(
                std::ptr::eq(spec.codec.spec(), spec),
                "{:?} is not its row",
                spec.codec
            );
        }
        assert_eq!(Codec::from_sdp_name("VP8"), Some(Codec::Vp8));
        assert_eq!(Codec::from_sdp_name("rtx"), None);
    }
}
