//! The VP8 payload descriptor (RFC 7741 §4.2) and a leg's continuity of its picture numbering.
//! Every simulcast layer (and every restart of a publisher) numbers its pictures on its own:
//! PictureID and TL0PICIDX start at random. A receiver that sees them jump backwards at a
//! layer switch takes the new layer's frames for old ones: Chromium decodes the keyframe, then
//! drops every delta frame until the numbers catch up with the old layer's (seconds of frozen
//! picture). So a leg rewrites both to run on from what it sent last, as it does sequence
//! numbers and timestamps ([`crate::media::rewrite`]). Pure state.

use bytes::Bytes;

/// Where the numbers of one packet's descriptor are, and what they say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Descriptor {
    /// The S bit: the packet starts a VP8 partition.
    pub start: bool,
    pub partition: u8,
    pub picture_id: Option<PictureId>,
    /// TL0PICIDX: the running index of the base temporal layer's pictures, and its offset.
    pub tl0_pic_idx: Option<(usize, u8)>,
    /// Where the VP8 payload (its frame header, in a partition's first packet) begins.
    pub payload_at: usize,
}

/// A PictureID, 7 or 15 bits long, and its offset in the payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PictureId {
    pub at: usize,
    pub long: bool,
    pub value: u16,
}

impl PictureId {
    fn modulus(self) -> u16 {
        if self.long {
            0x8000
        } else {
            0x80
        }
    }
}

impl Descriptor {
    /// The descriptor at the start of `payload`, or `None` when it is cut short.
    pub fn parse(payload: &[u8]) -> Option<Descriptor> {
        let first = *payload.first()?;
        let mut descriptor = Descriptor {
            start: first & 0x10 != 0,
            partition: first & 0x07,
            picture_id: None,
            tl0_pic_idx: None,
            payload_at: 1,
        };
        if first & 0x80 == 0 {
            return Some(descriptor);
        }
        let flags = *payload.get(1)?;
        let mut at = 2;
        if flags & 0x80 != 0 {
            let high = *payload.get(at)?;
            let long = high & 0x80 != 0;
            let value = if long {
                u16::from_be_bytes([high & 0x7f, *payload.get(at + 1)?])
            } else {
                u16::from(high)
            };
            descriptor.picture_id = Some(PictureId { at, long, value });
            at += if long { 2 } else { 1 };
        }
        if flags & 0x40 != 0 {
            descriptor.tl0_pic_idx = Some((at, *payload.get(at)?));
            at += 1;
        }
        if flags & 0x30 != 0 {
            at += 1; // TID, Y and KEYIDX
        }
        descriptor.payload_at = at;
        Some(descriptor)
    }

    /// Whether the packet starts a keyframe: the start of partition 0 and a frame header
    /// whose inverse key-frame bit is clear.
    pub fn starts_keyframe(&self, payload: &[u8]) -> bool {
        self.start
            && self.partition == 0
            && payload
                .get(self.payload_at)
                .is_some_and(|header| header & 0x01 == 0)
    }
}

/// The numbers one packet goes out with on a leg, when they differ from the publisher's.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Renumbering {
    picture_id: Option<PictureId>,
    tl0_pic_idx: Option<(usize, u8)>,
}

impl Renumbering {
    pub fn is_none(&self) -> bool {
        self.picture_id.is_none() && self.tl0_pic_idx.is_none()
    }

    /// A copy of `payload` with the leg's numbers written in.
    pub fn apply(&self, payload: &[u8]) -> Bytes {
        let mut copy = payload.to_vec();
        if let Some(picture_id) = self.picture_id {
            if picture_id.long {
                let [high, low] = picture_id.value.to_be_bytes();
                copy[picture_id.at] = 0x80 | high;
                copy[picture_id.at + 1] = low;
            } else {
                copy[picture_id.at] = picture_id.value as u8;
            }
        }
        if let Some((at, value)) = self.tl0_pic_idx {
            copy[at] = value;
        }
        Bytes::from(copy)
    }
}

/// A leg's picture numbering: the source it forwards and how that source's numbers map to the
/// leg's.
#[derive(Debug, Default)]
pub struct Continuity {
    source: Option<Source>,
    /// The newest PictureID and the TL0PICIDX sent on the leg.
    last: Option<(u16, u8)>,
}

#[derive(Debug, Clone, Copy)]
struct Source {
    ssrc: u32,
    picture_offset: u16,
    tl0_offset: u8,
}

impl Continuity {
    /// How a packet of source `ssrc` with `descriptor` is to be renumbered on the leg. A new
    /// source (a switch happens at a keyframe) continues one picture after the last one sent.
    pub fn renumber(&mut self, ssrc: u32, descriptor: &Descriptor) -> Renumbering {
        let source = match self.source {
            Some(source) if source.ssrc == ssrc => source,
            _ => {
                let (picture_offset, tl0_offset) = match (self.last, descriptor.picture_id) {
                    (Some((picture, tl0)), Some(picture_id)) => (
                        picture.wrapping_add(1).wrapping_sub(picture_id.value) % 0x8000,
                        descriptor
                            .tl0_pic_idx
                            .map_or(0, |(_, idx)| tl0.wrapping_add(1).wrapping_sub(idx)),
                    ),
                    // The first source keeps its own numbers.
                    _ => (0, 0),
                };
                let source = Source {
                    ssrc,
                    picture_offset,
                    tl0_offset,
                };
                self.source = Some(source);
                source
            }
        };
        let picture_id = descriptor.picture_id.map(|picture_id| PictureId {
            value: picture_id.value.wrapping_add(source.picture_offset) % picture_id.modulus(),
            ..picture_id
        });
        let tl0_pic_idx = descriptor
            .tl0_pic_idx
            .map(|(at, idx)| (at, idx.wrapping_add(source.tl0_offset)));
        if let Some(sent) = picture_id {
            let tl0 = tl0_pic_idx.map_or(0, |(_, idx)| idx);
            match self.last {
                // A late packet (a retransmission) does not move the numbering back.
                Some((last, _)) if !is_newer(sent.value, last) => {}
                _ => self.last = Some((sent.value, tl0)),
            }
        }
        Renumbering {
            picture_id: picture_id.filter(|_| source.picture_offset != 0),
            tl0_pic_idx: tl0_pic_idx.filter(|_| source.tl0_offset != 0),
        }
    }
}

/// Whether PictureID `a` comes after `b` (15-bit modular order).
fn is_newer(a: u16, b: u16) -> bool {
    a != b && a.wrapping_sub(b) % 0x8000 < 0x4000
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A descriptor with a 15-bit PictureID, TL0PICIDX and TID, then a frame header.
    fn packet(picture_id: u16, tl0: u8, keyframe: bool) -> Vec<u8> {
        let [high, low] = picture_id.to_be_bytes();
        vec![
            0x90,
            0xe0,
            0x80 | high,
            low,
            tl0,
            0x20,
            if keyframe { 0x10 } else { 0x11 },
            0xaa,
        ]
    }

    #[test]
    fn the_descriptor_is_read_with_its_numbers() {
        let payload = packet(0x1234, 77, true);
        let descriptor = Descriptor::parse(&payload).unwrap();
        assert_eq!(
            descriptor.picture_id,
            Some(PictureId {
                at: 2,
                long: true,
                value: 0x1234
            })
        );
        assert_eq!(descriptor.tl0_pic_idx, Some((4, 77)));
        assert_eq!(descriptor.payload_at, 6);
        assert!(descriptor.starts_keyframe(&payload));
        assert!(!descriptor.starts_keyframe(&packet(0x1234, 77, false)));
        // A short PictureID, no extension, and truncated descriptors.
        let short = Descriptor::parse(&[0x90, 0x80, 0x05, 0x00]).unwrap();
        assert_eq!(
            short.picture_id.map(|p| (p.long, p.value)),
            Some((false, 5))
        );
        assert!(short.starts_keyframe(&[0x90, 0x80, 0x05, 0x00]));
        assert_eq!(Descriptor::parse(&[0x10, 0x00]).unwrap().payload_at, 1);
        assert_eq!(Descriptor::parse(&[0x90, 0xc0, 0x81]), None);
        assert_eq!(Descriptor::parse(&[]), None);
    }

    #[test]
    fn the_first_source_keeps_its_numbers() {
        let mut continuity = Continuity::default();
        for picture in [500, 501, 502] {
            let descriptor = Descriptor::parse(&packet(picture, 9, false)).unwrap();
            assert!(continuity.renumber(1, &descriptor).is_none());
        }
    }

    #[test]
    fn a_switch_continues_one_picture_after_the_last_even_from_behind() {
        let mut continuity = Continuity::default();
        for (picture, tl0) in [(20_000, 200), (20_001, 200), (20_002, 201)] {
            continuity.renumber(1, &Descriptor::parse(&packet(picture, tl0, false)).unwrap());
        }
        // The new layer numbers far behind the old: its keyframe must come after.
        let keyframe = packet(300, 17, true);
        let renumbering = continuity.renumber(2, &Descriptor::parse(&keyframe).unwrap());
        let sent = renumbering.apply(&keyframe);
        let descriptor = Descriptor::parse(&sent).unwrap();
        assert_eq!(descriptor.picture_id.map(|p| p.value), Some(20_003));
        assert_eq!(descriptor.tl0_pic_idx.map(|(_, idx)| idx), Some(202));
        assert!(descriptor.starts_keyframe(&sent));
        assert_eq!(sent[7..], keyframe[7..]);
        // Its next picture follows on.
        let next = packet(301, 17, false);
        let sent = continuity
            .renumber(2, &Descriptor::parse(&next).unwrap())
            .apply(&next);
        let descriptor = Descriptor::parse(&sent).unwrap();
        assert_eq!(descriptor.picture_id.map(|p| p.value), Some(20_004));
        assert_eq!(descriptor.tl0_pic_idx.map(|(_, idx)| idx), Some(202));
    }

    #[test]
    fn numbers_wrap_at_fifteen_and_eight_bits() {
        let mut continuity = Continuity::default();
        continuity.renumber(1, &Descriptor::parse(&packet(0x7fff, 255, false)).unwrap());
        let keyframe = packet(1000, 3, true);
        let sent = continuity
            .renumber(2, &Descriptor::parse(&keyframe).unwrap())
            .apply(&keyframe);
        let descriptor = Descriptor::parse(&sent).unwrap();
        assert_eq!(descriptor.picture_id.map(|p| p.value), Some(0));
        assert_eq!(descriptor.tl0_pic_idx.map(|(_, idx)| idx), Some(0));
    }

    #[test]
    fn a_late_packet_does_not_move_the_numbering_back() {
        let mut continuity = Continuity::default();
        for picture in [100, 102, 101] {
            continuity.renumber(1, &Descriptor::parse(&packet(picture, 5, false)).unwrap());
        }
        let keyframe = packet(7, 1, true);
        let sent = continuity
            .renumber(2, &Descriptor::parse(&keyframe).unwrap())
            .apply(&keyframe);
        let descriptor = Descriptor::parse(&sent).unwrap();
        assert_eq!(descriptor.picture_id.map(|p| p.value), Some(103));
    }
}
