//! What each remote video is doing, as people check a call: its resolution, frame rate, bitrate
//! and loss, read from the connection's `getStats()` once a second. The bitrate is the bytes
//! received since the last sample over the time between them.

use std::collections::BTreeMap;

use js_sys::{Function, Reflect};
use wasm_bindgen::{JsCast, JsValue};
use wasm_bindgen_futures::JsFuture;
use web_sys::RtcPeerConnection;

/// One remote video's figures.
#[derive(Debug, Clone, PartialEq)]
pub struct VideoStats {
    pub width: u32,
    pub height: u32,
    pub frames_per_second: f64,
    /// Since the last sample; `None` on the first.
    pub kilobits_per_second: Option<f64>,
    /// Packets lost of those sent, since the stream began, in percent.
    pub loss_percent: f64,
}

impl VideoStats {
    /// The overlay's line: `640×360 · 24 fps · 850 kbit/s · 0.1% lost`.
    pub fn summary(&self) -> String {
        let bitrate = self
            .kilobits_per_second
            .map_or_else(|| "… kbit/s".to_owned(), |kbps| format!("{kbps:.0} kbit/s"));
        format!(
            "{}×{} · {:.0} fps · {bitrate} · {:.1}% lost",
            self.width, self.height, self.frames_per_second, self.loss_percent
        )
    }
}

/// One inbound video's counters as `getStats()` gives them.
#[derive(Debug, Clone, PartialEq)]
pub struct Inbound {
    /// The id of its track in the page.
    pub track: String,
    /// When read, in ms.
    pub timestamp: f64,
    pub bytes_received: f64,
    pub packets_received: f64,
    pub packets_lost: f64,
    pub frame_width: f64,
    pub frame_height: f64,
    pub frames_per_second: f64,
}

/// The inbound videos of `pc` now.
pub async fn inbound_video(pc: &RtcPeerConnection) -> Result<Vec<Inbound>, JsValue> {
    let report = JsFuture::from(pc.get_stats()).await?;
    let values: Function = Reflect::get(&report, &"values".into())?.dyn_into()?;
    let entries = values.call0(&report)?;
    let mut videos = Vec::new();
    let Some(entries) = js_sys::try_iter(&entries)? else {
        return Ok(videos);
    };
    for entry in entries {
        let entry = entry?;
        let text = |key: &str| Reflect::get(&entry, &key.into()).ok()?.as_string();
        let number = |key: &str| {
            Reflect::get(&entry, &key.into())
                .ok()
                .and_then(|value| value.as_f64())
                .unwrap_or(0.0)
        };
        if text("type").as_deref() != Some("inbound-rtp")
            || text("kind").as_deref() != Some("video")
        {
            continue;
        }
        let Some(track) = text("trackIdentifier") else {
            continue;
        };
        videos.push(Inbound {
            track,
            timestamp: number("timestamp"),
            bytes_received: number("bytesReceived"),
            packets_received: number("packetsReceived"),
            packets_lost: number("packetsLost"),
            frame_width: number("frameWidth"),
            frame_height: number("frameHeight"),
            frames_per_second: number("framesPerSecond"),
        });
    }
    Ok(videos)
}

/// Turns samples into figures, remembering what it needs for rates.
#[derive(Default)]
pub struct Sampler {
    /// Bytes received and when (ms), by track.
    last: BTreeMap<String, (f64, f64)>,
}

impl Sampler {
    /// The figures of each of `inbound`, by track.
    pub fn figures(&mut self, inbound: Vec<Inbound>) -> BTreeMap<String, VideoStats> {
        let mut videos = BTreeMap::new();
        for video in inbound {
            let (bytes, at) = (video.bytes_received, video.timestamp);
            let kilobits_per_second = self
                .last
                .insert(video.track.clone(), (bytes, at))
                .filter(|(_, before)| at > *before)
                .map(|(earlier, before)| (bytes - earlier) * 8.0 / (at - before));
            let (received, lost) = (video.packets_received, video.packets_lost.max(0.0));
            let loss_percent = if received + lost > 0.0 {
                100.0 * lost / (received + lost)
            } else {
                0.0
            };
            videos.insert(
                video.track,
                VideoStats {
                    width: video.frame_width as u32,
                    height: video.frame_height as u32,
                    frames_per_second: video.frames_per_second,
                    kilobits_per_second,
                    loss_percent,
                },
            );
        }
        videos
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_summary_reads_like_a_call_overlay() {
        let stats = VideoStats {
            width: 640,
            height: 360,
            frames_per_second: 23.9,
            kilobits_per_second: Some(851.4),
            loss_percent: 0.125,
        };
        assert_eq!(stats.summary(), "640×360 · 24 fps · 851 kbit/s · 0.1% lost");
        let first = VideoStats {
            kilobits_per_second: None,
            ..stats
        };
        assert!(first.summary().contains("… kbit/s"));
    }

    #[test]
    fn the_bitrate_is_bytes_since_the_last_sample_and_loss_counts_from_the_start() {
        let at = |timestamp: f64, bytes_received: f64, packets_lost: f64| Inbound {
            track: "t".to_owned(),
            timestamp,
            bytes_received,
            packets_received: 990.0,
            packets_lost,
            frame_width: 1280.0,
            frame_height: 720.0,
            frames_per_second: 30.0,
        };
        let mut sampler = Sampler::default();
        let first = sampler.figures(vec![at(1000.0, 50_000.0, 10.0)]);
        assert_eq!(first["t"].kilobits_per_second, None);
        assert_eq!(first["t"].loss_percent, 1.0);
        // 125,000 bytes in 1 s: 1,000 kbit/s.
        let second = sampler.figures(vec![at(2000.0, 175_000.0, 10.0)]);
        assert_eq!(second["t"].kilobits_per_second, Some(1000.0));
        assert_eq!((second["t"].width, second["t"].height), (1280, 720));
        // The same timestamp again gives no rate rather than a division by zero.
        let again = sampler.figures(vec![at(2000.0, 175_000.0, 10.0)]);
        assert_eq!(again["t"].kilobits_per_second, None);
    }
}
