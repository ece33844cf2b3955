//! A down-track (LiveKit's word): one subscriber's copy of one published track. It owns what the
//! subscriber's leg sends with — its SSRC, the payload type its answer gave the codec, and the
//! sequence-number and timestamp rewrite of [`crate::media::rewrite`] — and holds video back
//! until a keyframe starts it, so the subscriber can decode from its first packet. Pure state:
//! the worker that owns it hands it each packet's header and the time.

use std::time::Instant;

use rtc::rtp;

use crate::media::codec::{Codec, MediaKind};
use crate::media::rewrite::Rewrite;

/// What a packet is sent with on one leg.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LegNumbers {
    pub ssrc: u32,
    pub payload_type: u8,
    pub sequence: u16,
    pub timestamp: u32,
}

/// A publisher's header made fit for a subscriber's leg: its SSRC, payload type, sequence
/// number and timestamp there, and no header extensions (their ids are negotiated per leg).
/// Built field by field, so the publisher's extensions are never copied (no allocation per
/// packet and subscriber).
pub fn header_for_leg(header: &rtp::Header, leg: LegNumbers) -> rtp::Header {
    rtp::Header {
        version: header.version,
        padding: header.padding,
        marker: header.marker,
        payload_type: leg.payload_type,
        sequence_number: leg.sequence,
        timestamp: leg.timestamp,
        ssrc: leg.ssrc,
        csrc: header.csrc.clone(),
        ..Default::default()
    }
}

/// One subscriber's leg of one published track.
#[derive(Debug)]
pub struct DownTrack {
    ssrc: u32,
    kind: MediaKind,
    /// The payload type of each codec on this leg; empty until the leg is negotiated.
    payload_types: Vec<(Codec, u8)>,
    /// Video waits for a keyframe so the subscriber can decode from its first packet.
    started: bool,
    rewrite: Rewrite,
}

impl DownTrack {
    pub fn new(ssrc: u32, kind: MediaKind) -> DownTrack {
        DownTrack {
            ssrc,
            kind,
            payload_types: Vec::new(),
            started: false,
            rewrite: Rewrite::default(),
        }
    }

    /// Records the payload types the subscriber's answer gave each codec.
    pub fn set_payload_types(&mut self, payload_types: Vec<(Codec, u8)>) {
        self.payload_types = payload_types;
    }

    /// Whether the leg is negotiated but still waits for a keyframe to start.
    pub fn waits_for_keyframe(&self) -> bool {
        !self.started && self.kind == MediaKind::Video && !self.payload_types.is_empty()
    }

    /// The numbers to send `header`'s packet with on this leg, or `None` to hold it back (the
    /// leg is not negotiated, has no payload type for the codec, waits for a keyframe, or the
    /// packet belongs to a source the leg has moved past).
    pub fn admit(
        &mut self,
        codec: Codec,
        keyframe: bool,
        header: &rtp::Header,
        now: Instant,
    ) -> Option<LegNumbers> {
        let payload_type = self
            .payload_types
            .iter()
            .find(|(leg_codec, _)| *leg_codec == codec)
            .map(|(_, payload_type)| *payload_type)?;
        if !self.started {
            if self.kind == MediaKind::Video && !keyframe {
                return None;
            }
            self.started = true;
        }
        let (sequence, timestamp) = self.rewrite.rewrite(
            header.ssrc,
            header.sequence_number,
            header.timestamp,
            codec.clock_rate(),
            now,
        )?;
        Some(LegNumbers {
            ssrc: self.ssrc,
            payload_type,
            sequence,
            timestamp,
        })
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn header(ssrc: u32, sequence: u16, timestamp: u32) -> rtp::Header {
        rtp::Header {
            version: 2,
            payload_type: 96,
            sequence_number: sequence,
            timestamp,
            ssrc,
            ..Default::default()
        }
    }

    fn video_leg() -> DownTrack {
        let mut leg = DownTrack::new(0xabcd, MediaKind::Video);
        leg.set_payload_types(vec![(Codec::Vp8, 120)]);
        leg
    }

    #[test]
    fn rewriting_sets_the_leg_and_drops_extensions() {
        let publisher = rtp::Header {
            extension: true,
            extension_profile: 0xbede,
            extensions: vec![rtp::header::Extension {
                id: 3,
                payload: bytes::Bytes::from_static(&[1, 2]),
            }],
            marker: true,
            ..header(0x1111, 7, 9000)
        };
        let leg = LegNumbers {
            ssrc: 0x2222,
            payload_type: 100,
            sequence: 70,
            timestamp: 90_000,
        };
        let header = header_for_leg(&publisher, leg);
        assert_eq!((header.ssrc, header.payload_type), (0x2222, 100));
        assert_eq!((header.sequence_number, header.timestamp), (70, 90_000));
        assert!(!header.extension && header.extensions.is_empty());
        assert!(header.marker);
    }

    #[test]
    fn a_leg_sends_nothing_before_it_is_negotiated() {
        let mut leg = DownTrack::new(1, MediaKind::Audio);
        let now = Instant::now();
        assert_eq!(leg.admit(Codec::Opus, false, &header(5, 1, 960), now), None);
        leg.set_payload_types(vec![(Codec::Opus, 109)]);
        let numbers = leg.admit(Codec::Opus, false, &header(5, 2, 1920), now);
        assert_eq!(numbers.map(|n| (n.ssrc, n.payload_type)), Some((1, 109)));
        // A codec the leg did not negotiate is never sent on it.
        assert_eq!(
            leg.admit(Codec::H264, false, &header(5, 3, 2880), now),
            None
        );
    }

    #[test]
    fn video_starts_at_a_keyframe_and_then_forwards_everything() {
        let mut leg = video_leg();
        let now = Instant::now();
        assert!(leg.waits_for_keyframe());
        assert_eq!(leg.admit(Codec::Vp8, false, &header(9, 100, 0), now), None);
        let first = leg.admit(Codec::Vp8, true, &header(9, 101, 3000), now);
        assert_eq!(first.map(|n| n.sequence), Some(101));
        assert!(!leg.waits_for_keyframe());
        let next = leg.admit(Codec::Vp8, false, &header(9, 102, 3000), now);
        assert_eq!(next.map(|n| (n.sequence, n.payload_type)), Some((102, 120)));
    }

    #[test]
    fn a_dropped_packet_stays_a_gap_the_subscriber_can_nack() {
        let mut leg = video_leg();
        let now = Instant::now();
        let sequences: Vec<u16> = [(65_534, true), (65_535, false), (1, false)]
            .into_iter()
            .filter_map(|(sequence, keyframe)| {
                leg.admit(Codec::Vp8, keyframe, &header(9, sequence, 0), now)
            })
            .map(|numbers| numbers.sequence)
            .collect();
        // 0 was lost upstream: the leg keeps the gap across the wrap-around.
        assert_eq!(sequences, [65_534, 65_535, 1]);
    }

    #[test]
    fn a_restarted_publisher_continues_the_legs_numbering() {
        let mut leg = video_leg();
        let start = Instant::now();
        let before = leg.admit(Codec::Vp8, true, &header(1, 500, 90_000), start);
        assert_eq!(before.map(|n| n.sequence), Some(500));
        // The publisher comes back with a new SSRC and numbers of its own, 1 s later.
        let later = start + Duration::from_secs(1);
        let after = leg
            .admit(Codec::Vp8, true, &header(2, 7, 1_000), later)
            .expect("the new source is forwarded");
        assert_eq!((after.sequence, after.ssrc), (501, 0xabcd));
        assert_eq!(after.timestamp, 90_000 + 90_000);
    }
}
