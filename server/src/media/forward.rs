//! The SFU's forwarding. A published track has one [`Fanout`]; each subscriber to it adds a
//! [`DownTrack`] that rewrites the packet for its own leg (SSRC, payload type, sequence number
//! and timestamp through [`crate::media::rewrite`], no header extensions) and holds video back
//! until a keyframe starts. The decisions are plain functions; the per-packet path takes no lock
//! held across an await and allocates nothing of its own.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::Instant;

use arc_swap::ArcSwap;
use rtc::rtp;
use shared::TrackId;
use tokio::sync::Notify;
use webrtc::media_stream::track_local::static_rtp::TrackLocalStaticRTP;
use webrtc::media_stream::track_local::TrackLocal;

use crate::media::codec::{Codec, MediaKind};
use crate::media::rewrite::Rewrite;
use crate::telemetry;

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

/// What a packet is sent with on one leg.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LegNumbers {
    pub ssrc: u32,
    pub payload_type: u8,
    pub sequence: u16,
    pub timestamp: u32,
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
    rewrite: Rewrite,
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

    /// The numbers to send `header`'s packet with on this leg, or `None` to hold it back.
    fn admit(
        &self,
        codec: Codec,
        keyframe: bool,
        header: &rtp::Header,
        now: Instant,
    ) -> Option<LegNumbers> {
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
        let (sequence, timestamp) = leg.rewrite.rewrite(
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

/// A published track's subscribers, and the publisher's keyframe requests.
pub struct Fanout {
    pub track_id: TrackId,
    pub kind: MediaKind,
    /// The codec the publisher sends in, once its answer settled it.
    codec: OnceLock<Codec>,
    down_tracks: ArcSwap<Vec<Arc<DownTrack>>>,
    keyframe_wanted: Notify,
    /// `/metrics` handles, made once so counting a packet is an atomic add.
    forwarded_packets: metrics::Counter,
    forwarded_bytes: metrics::Counter,
}

impl Fanout {
    pub fn new(track_id: TrackId, kind: MediaKind) -> Arc<Fanout> {
        Arc::new(Fanout {
            track_id,
            kind,
            codec: OnceLock::new(),
            down_tracks: ArcSwap::default(),
            keyframe_wanted: Notify::new(),
            forwarded_packets: metrics::counter!(telemetry::FORWARDED_PACKETS),
            forwarded_bytes: metrics::counter!(telemetry::FORWARDED_BYTES),
        })
    }

    pub fn set_codec(&self, codec: Codec) {
        let _ = self.codec.set(codec);
    }

    /// The publisher's codec, or the usual one of the kind while it is not known yet.
    pub fn codec(&self) -> Codec {
        self.codec
            .get()
            .copied()
            .unwrap_or_else(|| Codec::usual(self.kind))
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
        let keyframe = self.kind == MediaKind::Video && codec.starts_keyframe(&packet.payload);
        let now = Instant::now();
        let mut sent = 0;
        for down_track in down_tracks.iter() {
            let Some(numbers) = down_track.admit(codec, keyframe, &packet.header, now) else {
                // Still waiting for a keyframe: keep asking (the publisher's reader sends at
                // most one request per interval), in case the answer to the first was lost.
                self.request_keyframe();
                continue;
            };
            let copy = rtp::Packet {
                header: header_for_leg(&packet.header, numbers),
                // Shared, not copied.
                payload: packet.payload.clone(),
            };
            // Fails only once the subscriber's connection is closing; it is detached then.
            if down_track.track.write_rtp(copy).await.is_ok() {
                sent += 1;
            }
        }
        self.forwarded_packets.increment(sent);
        self.forwarded_bytes
            .increment(sent * packet.payload.len() as u64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
