//! A down-track (LiveKit's word): one subscriber's copy of one published track. It owns what the
//! subscriber's leg sends with — its SSRC, the payload type its answer gave the codec, and the
//! sequence-number and timestamp rewrite of [`crate::media::rewrite`] — and the simulcast layer
//! it forwards ([`crate::media::simulcast`]): the best the subscriber wishes for and its
//! downlink allows ([`crate::media::allocation`] sets that cap). Video starts, and moves to another layer, only at a
//! keyframe of that layer, so the subscriber decodes from its first packet and across a switch
//! with numbers that run on. Pure state: the worker that owns it hands it each packet's header,
//! layer, the layers arriving, and the time.

use std::time::Instant;

use rtc::rtp;

use crate::media::codec::{Codec, MediaKind};
use crate::media::rewrite::Rewrite;
use crate::media::simulcast::{choose, Layer, Layers};
use crate::media::vp8;

/// What a packet is sent with on one leg.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LegNumbers {
    pub ssrc: u32,
    pub payload_type: u8,
    pub sequence: u16,
    pub timestamp: u32,
    /// A VP8 payload's picture numbers on the leg, where they differ from the publisher's.
    pub renumbering: vp8::Renumbering,
}

/// One arriving packet of a publication, read once for all its legs.
#[derive(Debug, Clone, Copy)]
pub struct Arrival<'a> {
    pub codec: Codec,
    pub header: &'a rtp::Header,
    /// Its VP8 payload descriptor, if it has one.
    pub vp8: Option<&'a vp8::Descriptor>,
    /// The simulcast layer it belongs to.
    pub layer: Layer,
    /// Whether it starts a keyframe.
    pub keyframe: bool,
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
    /// The layer the subscriber wishes for (`setTargetTrackVariant`; the best unless it said).
    wish: Layer,
    /// The highest layer the subscriber's downlink estimate leaves room for.
    cap: Layer,
    /// The layer being forwarded; `None` until the first packet (for video, keyframe) is.
    current: Option<Layer>,
    /// A video layer switched to and not yet reported.
    switched: Option<Layer>,
    rewrite: Rewrite,
    pictures: vp8::Continuity,
}

impl DownTrack {
    pub fn new(ssrc: u32, kind: MediaKind) -> DownTrack {
        DownTrack {
            ssrc,
            kind,
            payload_types: Vec::new(),
            wish: Layer::High,
            cap: Layer::High,
            current: None,
            switched: None,
            rewrite: Rewrite::default(),
            pictures: vp8::Continuity::default(),
        }
    }

    /// Records the payload types the subscriber's answer gave each codec.
    pub fn set_payload_types(&mut self, payload_types: Vec<(Codec, u8)>) {
        self.payload_types = payload_types;
    }

    /// The layer the subscriber wishes for from now on.
    pub fn set_wish(&mut self, wish: Layer) {
        self.wish = wish;
    }

    pub fn wish(&self) -> Layer {
        self.wish
    }

    /// The highest layer the downlink leaves room for, from now on.
    pub fn set_cap(&mut self, cap: Layer) {
        self.cap = cap;
    }

    pub fn cap(&self) -> Layer {
        self.cap
    }

    /// The layer the leg is to forward of those `arriving`: the one [`choose`] picks for the
    /// wish held down to the cap.
    fn goal(&self, arriving: Layers) -> Option<Layer> {
        choose(self.wish.min(self.cap), arriving)
    }

    /// The layer whose keyframe the leg waits for, to start or to switch to it, if it waits.
    pub fn keyframe_wanted(&self, arriving: Layers) -> Option<Layer> {
        if self.kind != MediaKind::Video || self.payload_types.is_empty() {
            return None;
        }
        self.goal(arriving)
            .filter(|goal| self.current != Some(*goal))
    }

    /// The layer being forwarded, once one is.
    pub fn current(&self) -> Option<Layer> {
        self.current
    }

    /// The video layer the leg switched to since last asked, to tell the subscriber.
    pub fn take_switch(&mut self) -> Option<Layer> {
        self.switched.take()
    }

    /// The numbers to send `packet` with on this leg, while the publisher's `arriving` layers
    /// are those, or `None` to hold it back: the leg is not negotiated, has no payload type
    /// for the codec, forwards another layer (or none yet) and this is not a keyframe of the
    /// layer it moves to, or the packet belongs to a source the leg has moved past.
    pub fn admit(
        &mut self,
        packet: &Arrival,
        arriving: Layers,
        now: Instant,
    ) -> Option<LegNumbers> {
        let Arrival {
            codec,
            header,
            vp8,
            layer,
            keyframe,
        } = *packet;
        let payload_type = self
            .payload_types
            .iter()
            .find(|(leg_codec, _)| *leg_codec == codec)
            .map(|(_, payload_type)| *payload_type)?;
        if self.current != Some(layer) {
            if self.kind == MediaKind::Video {
                // Until the goal's keyframe the leg keeps forwarding what it forwards.
                if !keyframe || self.goal(arriving) != Some(layer) {
                    return None;
                }
                self.switched = Some(layer);
            }
            self.current = Some(layer);
        }
        let (sequence, timestamp) = self.rewrite.rewrite(
            header.ssrc,
            header.sequence_number,
            header.timestamp,
            codec.clock_rate(),
            now,
        )?;
        let renumbering = vp8.map_or_else(vp8::Renumbering::default, |descriptor| {
            self.pictures.renumber(header.ssrc, descriptor)
        });
        Some(LegNumbers {
            ssrc: self.ssrc,
            payload_type,
            sequence,
            timestamp,
            renumbering,
        })
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::media::simulcast::LAYERS;

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

    /// The one layer of a track sent without simulcast.
    fn single() -> Layers {
        Layers::default().with(Layer::High)
    }

    fn all_layers() -> Layers {
        LAYERS.into_iter().collect()
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
            renumbering: vp8::Renumbering::default(),
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
        assert_eq!(
            leg.admit(
                &Arrival {
                    codec: Codec::Opus,
                    header: &header(5, 1, 960),
                    vp8: None,
                    layer: Layer::High,
                    keyframe: false
                },
                single(),
                now
            ),
            None
        );
        leg.set_payload_types(vec![(Codec::Opus, 109)]);
        let numbers = leg.admit(
            &Arrival {
                codec: Codec::Opus,
                header: &header(5, 2, 1920),
                vp8: None,
                layer: Layer::High,
                keyframe: false,
            },
            single(),
            now,
        );
        assert_eq!(numbers.map(|n| (n.ssrc, n.payload_type)), Some((1, 109)));
        // A codec the leg did not negotiate is never sent on it.
        assert_eq!(
            leg.admit(
                &Arrival {
                    codec: Codec::H264,
                    header: &header(5, 3, 2880),
                    vp8: None,
                    layer: Layer::High,
                    keyframe: false
                },
                single(),
                now
            ),
            None
        );
    }

    #[test]
    fn video_starts_at_a_keyframe_and_then_forwards_everything() {
        let mut leg = video_leg();
        let now = Instant::now();
        assert_eq!(leg.keyframe_wanted(single()), Some(Layer::High));
        assert_eq!(
            leg.admit(
                &Arrival {
                    codec: Codec::Vp8,
                    header: &header(9, 100, 0),
                    vp8: None,
                    layer: Layer::High,
                    keyframe: false
                },
                single(),
                now
            ),
            None
        );
        let first = leg.admit(
            &Arrival {
                codec: Codec::Vp8,
                header: &header(9, 101, 3000),
                vp8: None,
                layer: Layer::High,
                keyframe: true,
            },
            single(),
            now,
        );
        assert_eq!(first.map(|n| n.sequence), Some(101));
        assert_eq!(leg.keyframe_wanted(single()), None);
        let next = leg.admit(
            &Arrival {
                codec: Codec::Vp8,
                header: &header(9, 102, 3000),
                vp8: None,
                layer: Layer::High,
                keyframe: false,
            },
            single(),
            now,
        );
        assert_eq!(next.map(|n| (n.sequence, n.payload_type)), Some((102, 120)));
    }

    #[test]
    fn a_dropped_packet_stays_a_gap_the_subscriber_can_nack() {
        let mut leg = video_leg();
        let now = Instant::now();
        let sequences: Vec<u16> = [(65_534, true), (65_535, false), (1, false)]
            .into_iter()
            .filter_map(|(sequence, keyframe)| {
                leg.admit(
                    &Arrival {
                        codec: Codec::Vp8,
                        header: &header(9, sequence, 0),
                        vp8: None,
                        layer: Layer::High,
                        keyframe,
                    },
                    single(),
                    now,
                )
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
        let before = leg.admit(
            &Arrival {
                codec: Codec::Vp8,
                header: &header(1, 500, 90_000),
                vp8: None,
                layer: Layer::High,
                keyframe: true,
            },
            single(),
            start,
        );
        assert_eq!(before.map(|n| n.sequence), Some(500));
        // The publisher comes back with a new SSRC and numbers of its own, 1 s later.
        let later = start + Duration::from_secs(1);
        let after = leg
            .admit(
                &Arrival {
                    codec: Codec::Vp8,
                    header: &header(2, 7, 1_000),
                    vp8: None,
                    layer: Layer::High,
                    keyframe: true,
                },
                single(),
                later,
            )
            .expect("the new source is forwarded");
        assert_eq!((after.sequence, after.ssrc), (501, 0xabcd));
        assert_eq!(after.timestamp, 90_000 + 90_000);
    }

    /// A simulcast publisher's packet: SSRC 10, 20, 30 for `l`, `m`, `h`, each layer numbered
    /// and timed on its own.
    fn layered(layer: Layer, sequence: u16) -> rtp::Header {
        let (ssrc, base) = match layer {
            Layer::Low => (10, 1_000),
            Layer::Medium => (20, 30_000),
            Layer::High => (30, 50_000),
        };
        header(ssrc, sequence, base)
    }

    /// `leg` admits the packet `sequence` of `layer` (a keyframe's first, or not) while all
    /// three layers arrive.
    fn admit_layer(
        leg: &mut DownTrack,
        keyframe: bool,
        layer: Layer,
        sequence: u16,
        now: Instant,
    ) -> Option<LegNumbers> {
        leg.admit(
            &Arrival {
                codec: Codec::Vp8,
                header: &layered(layer, sequence),
                vp8: None,
                layer,
                keyframe,
            },
            all_layers(),
            now,
        )
    }

    #[test]
    fn a_subscriber_gets_only_the_layer_it_wishes_for() {
        let mut leg = video_leg();
        leg.set_wish(Layer::Low);
        let now = Instant::now();
        assert_eq!(leg.keyframe_wanted(all_layers()), Some(Layer::Low));
        let mut forwarded = Vec::new();
        for sequence in 0..5u16 {
            for layer in LAYERS {
                let sent = leg.admit(
                    &Arrival {
                        codec: Codec::Vp8,
                        header: &layered(layer, sequence),
                        vp8: None,
                        layer,
                        keyframe: true,
                    },
                    all_layers(),
                    now,
                );
                if sent.is_some() {
                    forwarded.push(layer);
                }
            }
        }
        assert_eq!(forwarded, [Layer::Low; 5]);
        assert_eq!(leg.take_switch(), Some(Layer::Low));
        assert_eq!(leg.take_switch(), None);
        assert_eq!(leg.keyframe_wanted(all_layers()), None);
    }

    #[test]
    fn a_switch_waits_for_the_new_layers_keyframe_and_numbers_run_on() {
        let mut leg = video_leg();
        leg.set_wish(Layer::Low);
        let start = Instant::now();
        let first = admit_layer(&mut leg, true, Layer::Low, 100, start);
        assert_eq!(first.map(|n| n.sequence), Some(100));
        leg.take_switch();

        leg.set_wish(Layer::High);
        assert_eq!(leg.keyframe_wanted(all_layers()), Some(Layer::High));
        // Until a keyframe of `h` comes, `l` goes on and `h`'s other packets stay back.
        let high_delta = admit_layer(&mut leg, false, Layer::High, 700, start);
        assert_eq!(high_delta, None);
        let low = admit_layer(&mut leg, false, Layer::Low, 101, start);
        assert_eq!(low.map(|n| n.sequence), Some(101));

        let later = start + Duration::from_millis(100);
        let switched = leg
            .admit(
                &Arrival {
                    codec: Codec::Vp8,
                    header: &layered(Layer::High, 701),
                    vp8: None,
                    layer: Layer::High,
                    keyframe: true,
                },
                all_layers(),
                later,
            )
            .expect("the keyframe of the wished layer switches");
        assert_eq!(
            (switched.sequence, switched.ssrc),
            (102, 0xabcd),
            "no gap, one SSRC"
        );
        // The timestamp moved on by the 100 ms that passed, whatever `h`'s own clock says.
        assert_eq!(switched.timestamp, 1_000 + 9_000);
        assert_eq!(leg.take_switch(), Some(Layer::High));
        let old = admit_layer(&mut leg, false, Layer::Low, 102, later);
        assert_eq!(old, None, "the old layer stops at the switch");
        let next = admit_layer(&mut leg, false, Layer::High, 702, later);
        assert_eq!(next.map(|n| n.sequence), Some(103));
    }

    #[test]
    fn a_switch_runs_the_vp8_picture_numbers_on() {
        // A descriptor with a 15-bit PictureID and TL0PICIDX, then a frame header.
        let payload = |picture: u16, tl0: u8, keyframe: bool| {
            let [high, low] = picture.to_be_bytes();
            vec![0x90, 0xe0, 0x80 | high, low, tl0, 0x00, u8::from(!keyframe)]
        };
        let mut leg = video_leg();
        leg.set_wish(Layer::High);
        let now = Instant::now();
        let send = |leg: &mut DownTrack, layer, sequence, bytes: Vec<u8>| {
            let descriptor = vp8::Descriptor::parse(&bytes).unwrap();
            let keyframe = descriptor.starts_keyframe(&bytes);
            let header = layered(layer, sequence);
            let numbers = leg.admit(
                &Arrival {
                    codec: Codec::Vp8,
                    header: &header,
                    vp8: Some(&descriptor),
                    layer,
                    keyframe,
                },
                all_layers(),
                now,
            )?;
            let sent = if numbers.renumbering.is_none() {
                bytes
            } else {
                numbers.renumbering.apply(&bytes).to_vec()
            };
            let sent = vp8::Descriptor::parse(&sent).unwrap();
            Some((sent.picture_id?.value, sent.tl0_pic_idx?.1))
        };
        // The first layer keeps its own numbers.
        assert_eq!(
            send(&mut leg, Layer::High, 1, payload(9_000, 40, true)),
            Some((9_000, 40))
        );
        assert_eq!(
            send(&mut leg, Layer::High, 2, payload(9_001, 40, false)),
            Some((9_001, 40))
        );
        // `l` numbers its pictures far behind `h`: on the leg they follow `h`'s.
        leg.set_wish(Layer::Low);
        assert_eq!(
            send(&mut leg, Layer::Low, 1, payload(120, 3, true)),
            Some((9_002, 41))
        );
        assert_eq!(
            send(&mut leg, Layer::Low, 2, payload(121, 4, false)),
            Some((9_003, 42))
        );
    }

    #[test]
    fn a_layer_that_stops_arriving_gives_way_to_the_next_best() {
        let mut leg = video_leg();
        let now = Instant::now();
        admit_layer(&mut leg, true, Layer::High, 1, now);
        leg.take_switch();
        // The publisher paused `h`: the leg wants `m`'s keyframe and takes it.
        let without_high: Layers = [Layer::Low, Layer::Medium].into_iter().collect();
        assert_eq!(leg.keyframe_wanted(without_high), Some(Layer::Medium));
        let medium = leg.admit(
            &Arrival {
                codec: Codec::Vp8,
                header: &layered(Layer::Medium, 40),
                vp8: None,
                layer: Layer::Medium,
                keyframe: true,
            },
            without_high,
            now,
        );
        assert_eq!(medium.map(|n| n.sequence), Some(2));
        assert_eq!(leg.take_switch(), Some(Layer::Medium));
    }

    #[test]
    fn audio_has_no_layers_to_wait_for() {
        let mut leg = DownTrack::new(1, MediaKind::Audio);
        leg.set_payload_types(vec![(Codec::Opus, 111)]);
        assert_eq!(leg.keyframe_wanted(single()), None);
        let sent = leg.admit(
            &Arrival {
                codec: Codec::Opus,
                header: &header(5, 1, 960),
                vp8: None,
                layer: Layer::High,
                keyframe: false,
            },
            single(),
            Instant::now(),
        );
        assert!(sent.is_some());
        assert_eq!(leg.take_switch(), None);
    }

    #[test]
    fn the_cap_holds_the_leg_below_its_wish() {
        let mut leg = video_leg();
        let now = Instant::now();
        leg.set_cap(Layer::Low);
        assert_eq!(leg.keyframe_wanted(all_layers()), Some(Layer::Low));
        let high = admit_layer(&mut leg, true, Layer::High, 1, now);
        assert_eq!(
            high, None,
            "the wish is h, but the downlink has room for l only"
        );
        let low = admit_layer(&mut leg, true, Layer::Low, 1, now);
        assert!(low.is_some());
        // The downlink widens: the leg moves up at h's keyframe.
        leg.set_cap(Layer::High);
        assert_eq!(leg.keyframe_wanted(all_layers()), Some(Layer::High));
        // A wish below the cap rules.
        leg.set_wish(Layer::Low);
        assert_eq!(leg.keyframe_wanted(all_layers()), None);
    }
}
