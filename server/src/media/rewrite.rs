//! The sequence-number and timestamp rewrite of one down-track (what LiveKit calls the munger):
//! a subscriber's leg is one RTP stream with one SSRC, whatever the publisher does behind it
//! (restarts with a new SSRC, later simulcast layer switches). Sequence numbers stay gapless
//! across a change of source and keep the source's own gaps (so the subscriber NACKs what was
//! lost); timestamps keep advancing with the wall clock across the change. Pure state: time is
//! an input.

use std::time::Instant;

/// Where a leg's numbering stands.
#[derive(Debug, Default)]
pub struct Rewrite {
    current: Option<Source>,
    /// The highest sequence number and the latest timestamp sent on the leg, and when.
    last: Option<Sent>,
}

/// The source being forwarded and how its numbers map to the leg's.
#[derive(Debug, Clone, Copy)]
struct Source {
    ssrc: u32,
    /// The source's first forwarded sequence number: older ones belong to before the switch.
    first_sequence: u16,
    sequence_offset: u16,
    timestamp_offset: u32,
}

#[derive(Debug, Clone, Copy)]
struct Sent {
    sequence: u16,
    timestamp: u32,
    at: Instant,
}

/// Whether `a` comes after `b` in sequence-number order (RFC 3550's modular comparison).
fn is_newer(a: u16, b: u16) -> bool {
    a != b && a.wrapping_sub(b) < 0x8000
}

impl Rewrite {
    /// The leg's sequence number and timestamp for a packet of source `ssrc`, arriving `now`;
    /// `None` for a packet that belongs to the leg's past (sent by a source before the current
    /// one started), which must not be forwarded.
    pub fn rewrite(
        &mut self,
        ssrc: u32,
        sequence: u16,
        timestamp: u32,
        clock_rate: u32,
        now: Instant,
    ) -> Option<(u16, u32)> {
        let source = match self.current {
            Some(source) if source.ssrc == ssrc => {
                if is_newer(source.first_sequence, sequence) {
                    return None;
                }
                source
            }
            _ => self.switch_to(ssrc, sequence, timestamp, clock_rate, now),
        };
        let out_sequence = sequence.wrapping_add(source.sequence_offset);
        let out_timestamp = timestamp.wrapping_add(source.timestamp_offset);
        match &mut self.last {
            Some(last) if !is_newer(out_sequence, last.sequence) => {}
            last => {
                *last = Some(Sent {
                    sequence: out_sequence,
                    timestamp: out_timestamp,
                    at: now,
                })
            }
        }
        Some((out_sequence, out_timestamp))
    }

    /// Starts mapping a new source so its first packet follows the leg's last one.
    fn switch_to(
        &mut self,
        ssrc: u32,
        sequence: u16,
        timestamp: u32,
        clock_rate: u32,
        now: Instant,
    ) -> Source {
        let (sequence_offset, timestamp_offset) = match self.last {
            // The first source keeps its own numbers.
            None => (0, 0),
            Some(last) => {
                let elapsed = now.saturating_duration_since(last.at);
                let ticks = (elapsed.as_secs_f64() * f64::from(clock_rate)) as u32;
                let next_timestamp = last.timestamp.wrapping_add(ticks.max(1));
                (
                    last.sequence.wrapping_add(1).wrapping_sub(sequence),
                    next_timestamp.wrapping_sub(timestamp),
                )
            }
        };
        let source = Source {
            ssrc,
            first_sequence: sequence,
            sequence_offset,
            timestamp_offset,
        };
        self.current = Some(source);
        source
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    const VIDEO: u32 = 90_000;

    #[test]
    fn the_first_source_keeps_its_numbers_and_its_gaps() {
        let now = Instant::now();
        let mut rewrite = Rewrite::default();
        assert_eq!(rewrite.rewrite(1, 100, 5000, VIDEO, now), Some((100, 5000)));
        assert_eq!(rewrite.rewrite(1, 101, 5000, VIDEO, now), Some((101, 5000)));
        // 102 was lost on the way in: the subscriber sees the same gap and asks for it.
        assert_eq!(rewrite.rewrite(1, 103, 8000, VIDEO, now), Some((103, 8000)));
        // And a late 102 still maps where it belongs.
        assert_eq!(rewrite.rewrite(1, 102, 5000, VIDEO, now), Some((102, 5000)));
    }

    #[test]
    fn numbers_wrap_around_without_a_jump() {
        let now = Instant::now();
        let mut rewrite = Rewrite::default();
        assert_eq!(
            rewrite.rewrite(1, 65_534, u32::MAX - 1000, VIDEO, now),
            Some((65_534, u32::MAX - 1000))
        );
        assert_eq!(
            rewrite.rewrite(1, 65_535, u32::MAX, VIDEO, now),
            Some((65_535, u32::MAX))
        );
        assert_eq!(rewrite.rewrite(1, 0, 2999, VIDEO, now), Some((0, 2999)));
        assert_eq!(rewrite.rewrite(1, 1, 2999, VIDEO, now), Some((1, 2999)));
    }

    #[test]
    fn a_restarted_publisher_continues_the_legs_numbering() {
        let start = Instant::now();
        let mut rewrite = Rewrite::default();
        rewrite.rewrite(1, 500, 90_000, VIDEO, start);
        rewrite.rewrite(1, 501, 93_000, VIDEO, start);
        // The publisher comes back 100 ms later with a new SSRC and numbers of its own.
        let later = start + Duration::from_millis(100);
        let (sequence, timestamp) = rewrite.rewrite(2, 7, 12, VIDEO, later).unwrap();
        assert_eq!(sequence, 502);
        assert_eq!(timestamp, 93_000 + 9_000);
        // Its next packets follow from there.
        assert_eq!(
            rewrite.rewrite(2, 8, 3012, VIDEO, later),
            Some((503, 105_000))
        );
    }

    #[test]
    fn a_switch_across_the_wrap_stays_gapless() {
        let now = Instant::now();
        let mut rewrite = Rewrite::default();
        rewrite.rewrite(1, 65_535, 10, VIDEO, now);
        let (sequence, _) = rewrite.rewrite(2, 40_000, 10, VIDEO, now).unwrap();
        assert_eq!(sequence, 0);
        // The timestamp moves forward even with no time passed, so frames never share one.
        assert_eq!(rewrite.rewrite(2, 40_001, 10, VIDEO, now), Some((1, 11)));
    }

    #[test]
    fn packets_from_before_a_switch_are_not_forwarded() {
        let now = Instant::now();
        let mut rewrite = Rewrite::default();
        rewrite.rewrite(1, 10, 0, VIDEO, now);
        rewrite.rewrite(2, 300, 0, VIDEO, now);
        // A late packet of the new source from before its first forwarded one would land on
        // numbers the old source already used.
        assert_eq!(rewrite.rewrite(2, 299, 0, VIDEO, now), None);
        assert!(rewrite.rewrite(2, 301, 0, VIDEO, now).is_some());
    }

    #[test]
    fn a_return_to_an_earlier_source_is_a_new_switch() {
        let now = Instant::now();
        let mut rewrite = Rewrite::default();
        rewrite.rewrite(1, 10, 0, VIDEO, now);
        rewrite.rewrite(2, 900, 0, VIDEO, now);
        rewrite.rewrite(2, 901, 0, VIDEO, now);
        assert_eq!(
            rewrite.rewrite(1, 11, 0, VIDEO, now).map(|(s, _)| s),
            Some(13)
        );
    }
}
