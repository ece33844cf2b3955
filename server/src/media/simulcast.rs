//! Simulcast: a publisher sends its camera as up to three layers (rids `l`, `m`, `h`: a quarter,
//! half and full resolution, each its own SSRC), and each subscriber's down-track forwards one
//! of them. Which one is [`choose`]: the highest layer the subscriber wishes for that is
//! arriving, else the lowest arriving one above it. A track sent without simulcast is one layer,
//! [`Layer::High`], so the forwarding is the same for both. Pure state and functions: the time
//! is an input.

use std::time::{Duration, Instant};

pub use shared::client_event::SimulcastLayer as Layer;

/// The layers from the lowest.
pub const LAYERS: [Layer; 3] = [Layer::Low, Layer::Medium, Layer::High];

/// A layer with no packet for this long has stopped (the browser pauses layers it cannot
/// afford: bandwidth, CPU); a camera sends every 33–42 ms.
const STOPPED_AFTER: Duration = Duration::from_millis(1000);

/// The layer a rid names (`l`, `m`, `h`, as `membrane-webrtc-js` sends them).
pub fn layer_of_rid(rid: &str) -> Option<Layer> {
    match rid {
        "l" => Some(Layer::Low),
        "m" => Some(Layer::Medium),
        "h" => Some(Layer::High),
        _ => None,
    }
}

/// Where `layer` stands in [`LAYERS`], and in any array kept by layer.
pub fn index(layer: Layer) -> usize {
    match layer {
        Layer::Low => 0,
        Layer::Medium => 1,
        Layer::High => 2,
    }
}

/// A set of layers.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Layers(u8);

impl Layers {
    pub fn contains(self, layer: Layer) -> bool {
        self.0 & (1 << index(layer)) != 0
    }

    pub fn with(self, layer: Layer) -> Layers {
        Layers(self.0 | (1 << index(layer)))
    }

    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    pub fn iter(self) -> impl DoubleEndedIterator<Item = Layer> {
        LAYERS
            .into_iter()
            .filter(move |layer| self.contains(*layer))
    }
}

impl FromIterator<Layer> for Layers {
    fn from_iter<I: IntoIterator<Item = Layer>>(layers: I) -> Layers {
        layers.into_iter().fold(Layers::default(), Layers::with)
    }
}

/// The layer a subscriber who wishes for `wish` gets, of those `arriving`: the highest at or
/// below the wish, else the lowest above it (a picture rather than none); `None` when nothing
/// arrives.
pub fn choose(wish: Layer, arriving: Layers) -> Option<Layer> {
    arriving
        .iter()
        .rev()
        .find(|layer| *layer <= wish)
        .or_else(|| arriving.iter().find(|layer| *layer > wish))
}

/// How long a layer's bytes are counted before its rate is taken.
const RATE_WINDOW: Duration = Duration::from_millis(500);

/// What a published track's packets come as: each layer's SSRC, when it last sent, and at
/// what rate.
#[derive(Debug, Default)]
pub struct Incoming {
    layers: [Option<(u32, Instant)>; 3],
    rates: [LayerRate; 3],
    /// Whether the publisher named its layers (rids): it sends simulcast.
    simulcast: bool,
}

impl Incoming {
    /// The layer `rid` (`None`: a track without simulcast) now comes with `ssrc`.
    pub fn bind(&mut self, rid: Option<&str>, ssrc: u32, now: Instant) {
        let layer = match rid {
            Some(rid) => match layer_of_rid(rid) {
                Some(layer) => {
                    self.simulcast = true;
                    layer
                }
                None => return,
            },
            None => Layer::High,
        };
        self.layers[index(layer)] = Some((ssrc, now));
    }

    /// The layer a packet of `ssrc` and `size` bytes belongs to, which is marked as arriving
    /// and counted in its rate. A track without simulcast takes any SSRC as its one layer (a
    /// publisher that restarts changes it).
    pub fn layer_of(&mut self, ssrc: u32, size: usize, now: Instant) -> Option<Layer> {
        let layer = LAYERS
            .into_iter()
            .find(|layer| matches!(self.layers[index(*layer)], Some((known, _)) if known == ssrc));
        let layer = match layer {
            Some(layer) => layer,
            None if self.simulcast => return None,
            None => Layer::High,
        };
        self.layers[index(layer)] = Some((ssrc, now));
        self.rates[index(layer)].count(size, now);
        Some(layer)
    }

    /// The bits per second `layer` arrived at in its last counted window (0 before one ended).
    pub fn rate(&self, layer: Layer) -> f64 {
        self.rates[index(layer)].bits_per_second
    }

    /// The layers that are arriving.
    pub fn arriving(&self, now: Instant) -> Layers {
        LAYERS
            .into_iter()
            .filter(|layer| {
                self.layers[index(*layer)]
                    .is_some_and(|(_, seen)| now.saturating_duration_since(seen) < STOPPED_AFTER)
            })
            .collect()
    }

    /// The SSRC of `layer`, to ask it for a keyframe.
    pub fn ssrc(&self, layer: Layer) -> Option<u32> {
        self.layers[index(layer)].map(|(ssrc, _)| ssrc)
    }

    pub fn is_simulcast(&self) -> bool {
        self.simulcast
    }
}

/// One layer's arrival rate, taken every [`RATE_WINDOW`].
#[derive(Debug, Default)]
struct LayerRate {
    window_start: Option<Instant>,
    bytes: u64,
    bits_per_second: f64,
}

impl LayerRate {
    fn count(&mut self, size: usize, now: Instant) {
        let start = *self.window_start.get_or_insert(now);
        let elapsed = now.saturating_duration_since(start);
        if elapsed >= RATE_WINDOW {
            self.bits_per_second = self.bytes as f64 * 8.0 / elapsed.as_secs_f64();
            self.bytes = 0;
            self.window_start = Some(now);
        }
        self.bytes += size as u64;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(layers: &[Layer]) -> Layers {
        layers.iter().copied().collect()
    }

    #[test]
    fn the_choice_is_the_highest_arriving_layer_the_wish_allows() {
        let all = set(&LAYERS);
        assert_eq!(choose(Layer::Low, all), Some(Layer::Low));
        assert_eq!(choose(Layer::Medium, all), Some(Layer::Medium));
        assert_eq!(choose(Layer::High, all), Some(Layer::High));
        // The high layer paused (the publisher's uplink is tight): the best below it.
        let no_high = set(&[Layer::Low, Layer::Medium]);
        assert_eq!(choose(Layer::High, no_high), Some(Layer::Medium));
        // Nothing at or below the wish: the lowest above it, rather than no picture.
        let only_high = set(&[Layer::High]);
        assert_eq!(choose(Layer::Low, only_high), Some(Layer::High));
        let medium_high = set(&[Layer::Medium, Layer::High]);
        assert_eq!(choose(Layer::Low, medium_high), Some(Layer::Medium));
        assert_eq!(choose(Layer::High, Layers::default()), None);
    }

    #[test]
    fn layers_are_known_by_their_ssrc_and_stop_when_silent() {
        let start = Instant::now();
        let mut incoming = Incoming::default();
        incoming.bind(Some("l"), 10, start);
        incoming.bind(Some("h"), 30, start);
        incoming.bind(Some("x"), 99, start);
        assert!(incoming.is_simulcast());
        assert_eq!(incoming.layer_of(30, 100, start), Some(Layer::High));
        assert_eq!(
            incoming.layer_of(99, 100, start),
            None,
            "an unknown rid is no layer"
        );
        assert_eq!(incoming.ssrc(Layer::Low), Some(10));
        assert_eq!(incoming.ssrc(Layer::Medium), None);

        let later = start + Duration::from_millis(800);
        incoming.layer_of(10, 100, later);
        assert_eq!(
            incoming.arriving(later + Duration::from_millis(300)),
            set(&[Layer::Low]),
            "the high layer sent nothing for 1.1 s"
        );
        assert!(incoming.arriving(later + STOPPED_AFTER).is_empty());
    }

    #[test]
    fn a_track_without_simulcast_is_one_layer_whatever_its_ssrc() {
        let now = Instant::now();
        let mut incoming = Incoming::default();
        assert_eq!(incoming.layer_of(5, 100, now), Some(Layer::High));
        assert_eq!(
            incoming.layer_of(6, 100, now),
            Some(Layer::High),
            "a restart"
        );
        assert_eq!(incoming.ssrc(Layer::High), Some(6));
        assert!(!incoming.is_simulcast());
        assert_eq!(incoming.arriving(now), set(&[Layer::High]));
        assert_eq!(
            choose(Layer::Low, incoming.arriving(now)),
            Some(Layer::High)
        );
    }

    #[test]
    fn each_layer_has_the_rate_it_arrives_at() {
        let start = Instant::now();
        let mut incoming = Incoming::default();
        incoming.bind(Some("l"), 10, start);
        incoming.bind(Some("h"), 30, start);
        // 30 packets a second of 250 and of 1,000 bytes for a second and a bit.
        for frame in 0..=32u64 {
            let at = start + Duration::from_millis(frame * 1000 / 30);
            incoming.layer_of(10, 250, at);
            incoming.layer_of(30, 1000, at);
        }
        let low = incoming.rate(Layer::Low);
        let high = incoming.rate(Layer::High);
        assert!((55_000.0..65_000.0).contains(&low), "l at {low} bit/s");
        assert!((220_000.0..260_000.0).contains(&high), "h at {high} bit/s");
        assert_eq!(incoming.rate(Layer::Medium), 0.0);
    }
}
