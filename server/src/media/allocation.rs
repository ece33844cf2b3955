//! How a subscriber's downlink is shared among the tracks it receives. Its connection's
//! congestion controller (GCC over the browser's transport-wide feedback, see
//! [`crate::media::setup`]) estimates what the link carries; [`allocate`] turns that budget
//! into a cap per video track: audio first, then each video track's lowest layer (everyone
//! keeps a picture), then better layers for the tracks the subscriber wishes most for (pinned
//! or large tiles ask for `h`), in that order. [`Downlink`] keeps the caps from flapping: a
//! cap the estimate pushed down stays down for a while, longer each time it happens again.
//! Pure functions and state: the estimate, rates and time are inputs.

use std::time::{Duration, Instant};

use crate::media::codec::MediaKind;
use crate::media::simulcast::{choose, index, Layer, Layers};

/// An upgrade must fit with this much to spare: the estimate is a guess, and a layer's rate
/// swings with the picture.
const UPGRADE_HEADROOM: f64 = 1.25;
/// What a layer is reckoned to cost before it was measured (the caps the page sends with).
const NOMINAL_RATES: [f64; 3] = [150_000.0, 500_000.0, 1_500_000.0];
/// How long upgrades wait after the estimate pushed a cap down, the first time.
const FIRST_HOLD: Duration = Duration::from_secs(4);
/// The longest wait; each step-down within [`CALM`] of the last one doubles it up to this.
const LONGEST_HOLD: Duration = Duration::from_secs(32);
/// A downlink this long without a step-down is trusted again: the wait starts over.
const CALM: Duration = Duration::from_secs(60);

/// What one received track asks of the downlink.
#[derive(Debug, Clone, Copy)]
pub struct Demand {
    pub kind: MediaKind,
    /// The layer the subscriber wishes for (`h` unless its page said otherwise).
    pub wish: Layer,
    pub arriving: Layers,
    /// Each layer's measured rate in bits per second, 0 where not measured yet.
    pub rates: [f64; 3],
    /// The layer the track is held to now (its cap, or what it forwards).
    pub current: Layer,
}

impl Demand {
    fn rate(&self, layer: Layer) -> f64 {
        match self.rates[index(layer)] {
            measured if measured > 0.0 => measured,
            _ => NOMINAL_RATES[index(layer)],
        }
    }
}

/// The cap of each of `demands` (in their order) within `budget` bits per second. Audio is
/// never capped; its rate comes off the budget first. A video track never goes below its
/// lowest arriving layer, even when the budget does not cover it: a small picture beats none.
/// A track that gets what it wishes for of the layers arriving is not capped at all (`h`), so
/// a better layer that starts arriving is taken up at once.
pub fn allocate(budget: f64, demands: &[Demand]) -> Vec<Layer> {
    let mut caps = vec![Layer::High; demands.len()];
    let mut goals = vec![None; demands.len()];
    let mut spent: f64 = demands
        .iter()
        .filter(|demand| demand.kind == MediaKind::Audio)
        .map(|demand| demand.rate(Layer::High))
        .sum();
    let mut videos: Vec<usize> = (0..demands.len())
        .filter(|&index| demands[index].kind == MediaKind::Video)
        .collect();
    // The most wished for first; a stable sort keeps the rest in subscription order.
    videos.sort_by_key(|&index| std::cmp::Reverse(demands[index].wish));
    for &index in &videos {
        let demand = &demands[index];
        if let Some(lowest) = choose(Layer::Low, demand.arriving) {
            caps[index] = lowest;
            spent += demand.rate(lowest);
        }
    }
    for &index in &videos {
        let demand = &demands[index];
        let base = caps[index];
        let Some(goal) = choose(demand.wish, demand.arriving) else {
            continue;
        };
        goals[index] = Some(goal);
        let better = demand
            .arriving
            .iter()
            .filter(|layer| *layer > base && *layer <= goal)
            .rev()
            .find(|&layer| {
                let headroom = if layer > demand.current {
                    UPGRADE_HEADROOM
                } else {
                    1.0
                };
                spent - demand.rate(base) + demand.rate(layer) * headroom <= budget
            });
        if let Some(layer) = better {
            spent += demand.rate(layer) - demand.rate(base);
            caps[index] = layer;
        }
    }
    for (cap, goal) in caps.iter_mut().zip(goals) {
        if goal.is_none_or(|goal| *cap >= goal) {
            *cap = Layer::High;
        }
    }
    caps
}

/// One subscriber's downlink: when its caps may rise again after the estimate pushed one down.
#[derive(Debug)]
pub struct Downlink {
    hold: Duration,
    /// Upgrades wait until then.
    held_until: Option<Instant>,
    last_step_down: Option<Instant>,
}

impl Default for Downlink {
    fn default() -> Downlink {
        Downlink {
            hold: FIRST_HOLD,
            held_until: None,
            last_step_down: None,
        }
    }
}

impl Downlink {
    /// The caps to apply, given the ones in force (`previous`, for tracks wishing for
    /// `wishes`; `None` for a track that forwarded nothing yet) and the ones [`allocate`]
    /// proposes: a cap the budget pushed down (below the wish) holds every rise back for a
    /// while.
    pub fn settle(
        &mut self,
        now: Instant,
        previous: &[Option<Layer>],
        wishes: &[Layer],
        proposed: Vec<Layer>,
    ) -> Vec<Layer> {
        let stepped_down = proposed
            .iter()
            .zip(previous.iter().zip(wishes))
            .any(|(new, (old, wish))| old.is_some_and(|old| *new < old.min(*wish)));
        if stepped_down {
            let calm = self
                .last_step_down
                .is_none_or(|last| now.saturating_duration_since(last) >= CALM);
            self.hold = if calm {
                FIRST_HOLD
            } else {
                (self.hold * 2).min(LONGEST_HOLD)
            };
            self.last_step_down = Some(now);
            self.held_until = Some(now + self.hold);
        }
        let held = self.held_until.is_some_and(|until| now < until);
        proposed
            .into_iter()
            .zip(previous)
            .map(|(new, old)| match old {
                Some(old) if held => new.min(*old),
                _ => new,
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::media::simulcast::LAYERS;

    fn video(wish: Layer) -> Demand {
        Demand {
            kind: MediaKind::Video,
            wish,
            arriving: LAYERS.into_iter().collect(),
            rates: [150_000.0, 500_000.0, 1_500_000.0],
            current: Layer::Low,
        }
    }

    fn audio() -> Demand {
        Demand {
            kind: MediaKind::Audio,
            wish: Layer::High,
            arriving: Layers::default().with(Layer::High),
            rates: [0.0, 0.0, 40_000.0],
            current: Layer::High,
        }
    }

    #[test]
    fn a_wide_link_gives_every_track_its_wish() {
        let demands = [audio(), video(Layer::High), video(Layer::Low)];
        assert_eq!(
            allocate(10_000_000.0, &demands),
            vec![Layer::High; 3],
            "nothing is capped: the wish alone holds the small tile to l"
        );
    }

    #[test]
    fn a_narrow_link_keeps_the_lowest_layer_of_every_video() {
        let demands = [audio(), video(Layer::High), video(Layer::High)];
        assert_eq!(
            allocate(300_000.0, &demands),
            vec![Layer::High, Layer::Low, Layer::Low]
        );
        assert_eq!(
            allocate(50_000.0, &demands),
            vec![Layer::High, Layer::Low, Layer::Low],
            "below even that: still a picture"
        );
    }

    #[test]
    fn the_pinned_tile_is_served_before_the_others() {
        // The small tile comes first in the subscription order; the pinned one asks for h.
        let demands = [video(Layer::Medium), audio(), video(Layer::High)];
        // 40k audio + 150k + 150k base; h for the pinned tile needs 1.35M more (with
        // headroom 1.875M): 2.1M leaves m out.
        assert_eq!(
            allocate(2_100_000.0, &demands),
            vec![Layer::Low, Layer::High, Layer::High]
        );
        assert_eq!(allocate(3_000_000.0, &demands), vec![Layer::High; 3]);
    }

    #[test]
    fn keeping_a_layer_needs_no_headroom_but_rising_does() {
        let mut demand = video(Layer::High);
        // 1.5M + 40k audio fit 1.6M, but not with an upgrade's headroom.
        assert_eq!(allocate(1_600_000.0, &[audio(), demand])[1], Layer::Medium);
        demand.current = Layer::High;
        assert_eq!(allocate(1_600_000.0, &[audio(), demand])[1], Layer::High);
    }

    #[test]
    fn layers_that_do_not_arrive_are_skipped() {
        let mut demand = video(Layer::High);
        demand.arriving = [Layer::Low, Layer::Medium].into_iter().collect();
        // 1M: m fits, and is the best arriving: no cap, so h is taken when it comes.
        assert_eq!(allocate(1_000_000.0, &[demand]), vec![Layer::High]);
        assert_eq!(allocate(500_000.0, &[demand]), vec![Layer::Low]);
        demand.arriving = Layers::default().with(Layer::Medium);
        assert_eq!(
            allocate(100_000.0, &[demand]),
            vec![Layer::High],
            "m is all there is: nothing to cap"
        );
    }

    #[test]
    fn unmeasured_layers_are_reckoned_at_their_nominal_rate() {
        let mut demand = video(Layer::High);
        demand.rates = [0.0; 3];
        assert_eq!(allocate(1_000_000.0, &[demand]), vec![Layer::Medium]);
    }

    #[test]
    fn a_step_down_holds_rises_back_longer_each_time() {
        let start = Instant::now();
        let mut downlink = Downlink::default();
        let wishes = [Layer::High];
        let (high, low) = (vec![Layer::High], vec![Layer::Low]);
        let (was_high, was_low) = ([Some(Layer::High)], [Some(Layer::Low)]);
        assert_eq!(downlink.settle(start, &was_high, &wishes, low.clone()), low);
        // The estimate recovers at once: the rise waits.
        let soon = start + Duration::from_secs(1);
        assert_eq!(downlink.settle(soon, &was_low, &wishes, high.clone()), low);
        let later = start + FIRST_HOLD;
        assert_eq!(
            downlink.settle(later, &was_low, &wishes, high.clone()),
            high
        );
        // Down again soon after: twice the wait.
        let again = later + Duration::from_secs(1);
        downlink.settle(again, &was_high, &wishes, low.clone());
        let after_first_hold = again + FIRST_HOLD;
        let settled = downlink.settle(after_first_hold, &was_low, &wishes, high.clone());
        assert_eq!(settled, low);
        let settled = downlink.settle(again + FIRST_HOLD * 2, &was_low, &wishes, high.clone());
        assert_eq!(settled, high);
        // A track that forwarded nothing yet starts where the estimate puts it, hold or not.
        let mut held = Downlink::default();
        held.settle(start, &was_high, &wishes, low.clone());
        assert_eq!(held.settle(soon, &[None], &wishes, high.clone()), high);
    }

    #[test]
    fn a_lower_wish_is_no_step_down() {
        let start = Instant::now();
        let mut downlink = Downlink::default();
        // The tile was made small: the cap follows the wish down, and up again at once.
        let settled = downlink.settle(start, &[Some(Layer::High)], &[Layer::Low], vec![Layer::Low]);
        assert_eq!(settled, vec![Layer::Low]);
        let settled = downlink.settle(
            start,
            &[Some(Layer::Low)],
            &[Layer::High],
            vec![Layer::High],
        );
        assert_eq!(settled, vec![Layer::High]);
    }
}
