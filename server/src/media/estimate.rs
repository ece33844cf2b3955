//! What a subscriber's downlink carries: the estimate the worker shares out among its tracks
//! ([`crate::media::allocation`]). Each server connection runs webrtc-rs's GCC on its client's
//! transport-wide feedback ([`crate::media::twcc`] brings it), held under a
//! ceiling of our own: when a window of feedback shows heavy loss, the estimate falls at once
//! to what actually got through. GCC alone climbs without bound while the link is not full
//! (a subscriber of small tiles leaves it far from full), and from there its loss half takes
//! many steps to come down. Pure state; time and reports are inputs.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rtc::interceptor::{BandwidthEstimator, Gcc, PacketReport};

/// Where GCC starts, before the first feedback moves it: a link good enough for a large tile
/// and a few small ones. The caps are not applied before that feedback.
const INITIAL: f64 = 3_000_000.0;
const LOWEST: f64 = 100_000.0;
const HIGHEST: f64 = 50_000_000.0;
/// Feedback is judged over windows of this long at least...
const WINDOW: Duration = Duration::from_millis(500);
/// ...and of this many packets at least.
const WINDOW_PACKETS: u32 = 20;
/// Lost in a window beyond this share, the link is full: the ceiling falls to what arrived.
const HEAVY_LOSS: f64 = 0.10;
/// Below this share, the ceiling rises.
const LIGHT_LOSS: f64 = 0.02;
/// What the ceiling keeps of the rate that arrived, so the queue that overflowed drains.
const BACK_OFF: f64 = 0.85;
/// How fast the ceiling rises per second while the loss is light: a rise to a better layer is
/// what probes the link, and it needs the room to be tried.
const RISE_PER_SECOND: f64 = 1.25;

/// The estimate, shared between the connection (which writes it) and the worker.
#[derive(Debug, Clone, Default)]
pub struct DownlinkEstimate(Arc<AtomicU64>);

impl DownlinkEstimate {
    /// Bits per second, once feedback came.
    pub fn bits_per_second(&self) -> Option<f64> {
        match self.0.load(Ordering::Relaxed) {
            0 => None,
            bits => Some(bits as f64),
        }
    }

    fn set(&self, bits_per_second: f64) {
        self.0
            .store(bits_per_second.max(1.0) as u64, Ordering::Relaxed);
    }
}

/// GCC under the loss ceiling, telling the estimate to the worker after each feedback.
pub struct DownlinkEstimator {
    gcc: Gcc,
    ceiling: LossCeiling,
    shared: DownlinkEstimate,
}

impl DownlinkEstimator {
    pub fn new(shared: DownlinkEstimate) -> DownlinkEstimator {
        DownlinkEstimator {
            gcc: Gcc::new(INITIAL, LOWEST, HIGHEST),
            ceiling: LossCeiling::default(),
            shared,
        }
    }
}

impl DownlinkEstimator {
    /// Takes in the reports of one feedback, and tells the worker the estimate now.
    pub fn on_reports(&mut self, now: Instant, reports: &[PacketReport]) {
        self.gcc.on_reports(now, reports);
        self.ceiling
            .on_reports(now, reports, self.gcc.target_bitrate());
        self.shared
            .set(self.ceiling.limit(self.gcc.target_bitrate()));
    }
}

/// The ceiling heavy loss sets, and the window of feedback it is judged on.
#[derive(Debug, Default)]
struct LossCeiling {
    ceiling: Option<f64>,
    window_start: Option<Instant>,
    packets: u32,
    lost: u32,
    arrived_bytes: usize,
    /// The first and last arrival in the window, on the receiver's clock.
    arrivals: Option<(Duration, Duration)>,
}

impl LossCeiling {
    fn limit(&self, estimate: f64) -> f64 {
        self.ceiling
            .map_or(estimate, |ceiling| estimate.min(ceiling))
    }

    /// Counts `reports` into the window, and judges it when it is full; `gcc` is GCC's
    /// estimate now (a ceiling above it no longer matters and is dropped).
    fn on_reports(&mut self, now: Instant, reports: &[PacketReport], gcc: f64) {
        let start = *self.window_start.get_or_insert(now);
        for report in reports {
            self.packets += 1;
            match report.arrival.filter(|_| report.arrived) {
                Some(arrival) => {
                    self.arrived_bytes += report.size;
                    self.arrivals = Some(match self.arrivals {
                        Some((first, last)) => (first.min(arrival), last.max(arrival)),
                        None => (arrival, arrival),
                    });
                }
                None => self.lost += 1,
            }
        }
        let elapsed = now.saturating_duration_since(start);
        if elapsed < WINDOW || self.packets < WINDOW_PACKETS {
            return;
        }
        let loss = f64::from(self.lost) / f64::from(self.packets);
        if loss > HEAVY_LOSS {
            let span = self.arrivals.map(|(first, last)| last - first);
            if let Some(span) = span.filter(|span| *span >= WINDOW / 5) {
                let arrived = self.arrived_bytes as f64 * 8.0 / span.as_secs_f64();
                self.ceiling = Some((arrived * BACK_OFF).max(LOWEST));
            }
        } else if loss < LIGHT_LOSS {
            let risen = self
                .ceiling
                .map(|ceiling| ceiling * RISE_PER_SECOND.powf(elapsed.as_secs_f64()));
            self.ceiling = risen.filter(|ceiling| *ceiling < gcc);
        }
        *self = LossCeiling {
            ceiling: self.ceiling,
            window_start: Some(now),
            ..LossCeiling::default()
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rtc::rtcp::transport_feedbacks::cc_feedback_report::Ecn;

    /// Feedback for `count` packets of 1,000 bytes sent over `span` from `at`, of which every
    /// `lose_every`-th was lost (0: none).
    fn window(at: Instant, span: Duration, count: u64, lose_every: u64) -> Vec<PacketReport> {
        (0..count)
            .map(|index| {
                let arrived = lose_every == 0 || index % lose_every != 0;
                let offset = span * index as u32 / count as u32;
                PacketReport {
                    ssrc: 1,
                    id: index,
                    rtp_sequence_number: index as u16,
                    is_twcc: true,
                    twcc_sequence_number: index as u16,
                    size: 1000,
                    arrived,
                    departure: at + offset,
                    arrival: arrived.then_some(Duration::from_secs(100) + offset),
                    ecn: Ecn::default(),
                }
            })
            .collect()
    }

    #[test]
    fn heavy_loss_brings_the_ceiling_down_to_what_arrived() {
        let start = Instant::now();
        let mut ceiling = LossCeiling::default();
        let second = Duration::from_secs(1);
        // 100 packets of 8,000 bits a second: 800 kbit/s, none lost: no ceiling.
        ceiling.on_reports(start, &window(start, second, 100, 0), 5_000_000.0);
        ceiling.on_reports(start + second, &[], 5_000_000.0);
        assert_eq!(ceiling.limit(5_000_000.0), 5_000_000.0);
        // Then one in two is lost: 400 kbit/s get through.
        let later = start + second;
        ceiling.on_reports(later, &window(later, second, 100, 2), 5_000_000.0);
        ceiling.on_reports(later + second, &[], 5_000_000.0);
        let limited = ceiling.limit(5_000_000.0);
        assert!(
            (320_000.0..360_000.0).contains(&limited),
            "0.85 × ~400 kbit/s, got {limited}"
        );
        assert_eq!(
            ceiling.limit(200_000.0),
            200_000.0,
            "a lower estimate stands"
        );
    }

    #[test]
    fn the_ceiling_rises_without_loss_and_goes_when_gcc_is_lower() {
        let start = Instant::now();
        let second = Duration::from_secs(1);
        let mut ceiling = LossCeiling {
            ceiling: Some(300_000.0),
            ..LossCeiling::default()
        };
        ceiling.on_reports(start, &window(start, second, 50, 0), 5_000_000.0);
        ceiling.on_reports(start + second, &[], 5_000_000.0);
        let risen = ceiling.limit(5_000_000.0);
        assert!(
            (370_000.0..380_000.0).contains(&risen),
            "25% in a second: {risen}"
        );
        let later = start + second;
        ceiling.on_reports(later, &window(later, second, 50, 0), 350_000.0);
        ceiling.on_reports(later + second, &[], 350_000.0);
        assert_eq!(
            ceiling.ceiling, None,
            "GCC is lower: the ceiling is no more"
        );
    }

    #[test]
    fn a_window_needs_enough_packets_and_time() {
        let start = Instant::now();
        let mut ceiling = LossCeiling::default();
        let all_lost = window(start, Duration::from_millis(100), 10, 1);
        ceiling.on_reports(start, &all_lost, 5_000_000.0);
        ceiling.on_reports(start + Duration::from_secs(1), &[], 5_000_000.0);
        assert_eq!(ceiling.ceiling, None, "ten packets are no verdict");
    }

    #[test]
    fn the_shared_estimate_is_unknown_until_feedback() {
        let shared = DownlinkEstimate::default();
        assert_eq!(shared.bits_per_second(), None);
        let mut estimator = DownlinkEstimator::new(shared.clone());
        let now = Instant::now();
        estimator.on_reports(now, &window(now, Duration::from_millis(100), 10, 0));
        assert!(shared.bits_per_second().is_some());
    }
}
