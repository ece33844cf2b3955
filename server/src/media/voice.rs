//! Who is speaking: the audio level a browser puts in every audio packet (RFC 6464's
//! `ssrc-audio-level` header extension) turned into speech and silence per published audio
//! track, with hysteresis so a breath or a click does not flicker the room's highlight. Pure
//! state: the worker hands it each packet's level and the time.

use std::time::{Duration, Instant};

/// The header extension's URI, as negotiated in SDP.
pub use rtc::sdp::extmap::AUDIO_LEVEL_URI;

/// Louder than this (in −dBov: 0 is the loudest, 127 silence) counts as voice. Speech at a
/// normal distance from a laptop microphone, after the browser's gain control, sits around −20
/// to −40 dBov; a quiet room below −55. (Chromium's fake microphone beeps reach −36 to −48.)
const VOICE_LEVEL: u8 = 45;

/// Speech begins when voiced time outweighs unvoiced time by this much: a steady voice takes
/// this long, speech with its usual gaps somewhat longer, and clicks and beeps never get there.
const SPEECH_AFTER: Duration = Duration::from_millis(200);

/// The most voiced time kept in hand, so that a long speech is not followed by a long tail.
const MOST_VOICED: Duration = Duration::from_millis(400);

/// The most one packet counts for (packets come every 20 ms, or every 400 ms or so in
/// discontinuous transmission during silence).
const LONGEST_STEP: Duration = Duration::from_millis(100);

/// Speech ends after this long without voice: people pause between phrases.
const SILENCE_AFTER: Duration = Duration::from_millis(1000);

/// The level of an `ssrc-audio-level` extension element (RFC 6464 §3, one-byte form): the
/// voice-activity bit, then the level in −dBov. `None` for an element of the wrong size.
pub fn audio_level(element: &[u8]) -> Option<u8> {
    match element {
        [byte, ..] => Some(byte & 0x7f),
        [] => None,
    }
}

/// One audio track's voice activity.
#[derive(Debug, Default)]
pub struct VoiceActivity {
    speaking: bool,
    /// Voiced time minus unvoiced time, kept between zero and [`MOST_VOICED`].
    voiced: Duration,
    last_packet: Option<Instant>,
    last_voice: Option<Instant>,
}

impl VoiceActivity {
    /// Takes one packet's level; returns the new state when it changed (`true`: speech).
    pub fn on_level(&mut self, level: u8, now: Instant) -> Option<bool> {
        let step = self.last_packet.map_or(Duration::ZERO, |last| {
            now.saturating_duration_since(last).min(LONGEST_STEP)
        });
        self.last_packet = Some(now);
        if level < VOICE_LEVEL {
            self.voiced = (self.voiced + step).min(MOST_VOICED);
            self.last_voice = Some(now);
            if !self.speaking && self.voiced >= SPEECH_AFTER {
                self.speaking = true;
                return Some(true);
            }
            return None;
        }
        self.voiced = self.voiced.saturating_sub(step);
        self.check_silence(now)
    }

    /// Ends speech that has had no voice for long enough, also when packets stopped coming
    /// (a muted or gone publisher); returns `Some(false)` when it did.
    pub fn check_silence(&mut self, now: Instant) -> Option<bool> {
        let quiet = self
            .last_voice
            .is_none_or(|last| now.saturating_duration_since(last) >= SILENCE_AFTER);
        if self.speaking && quiet {
            self.speaking = false;
            self.voiced = Duration::ZERO;
            return Some(false);
        }
        None
    }

    pub fn speaking(&self) -> bool {
        self.speaking
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LOUD: u8 = 20;
    const QUIET: u8 = 90;

    /// Feeds one packet every 20 ms from `start` for `duration` at `level`, collecting changes.
    fn feed(
        voice: &mut VoiceActivity,
        start: Instant,
        duration: Duration,
        level: u8,
    ) -> Vec<(Duration, bool)> {
        let mut changes = Vec::new();
        let mut at = Duration::ZERO;
        while at < duration {
            if let Some(speaking) = voice.on_level(level, start + at) {
                changes.push((at, speaking));
            }
            at += Duration::from_millis(20);
        }
        changes
    }

    #[test]
    fn the_level_is_the_low_seven_bits() {
        assert_eq!(audio_level(&[0x80 | 30]), Some(30));
        assert_eq!(audio_level(&[127]), Some(127));
        assert_eq!(audio_level(&[0]), Some(0));
        assert_eq!(audio_level(&[]), None);
    }

    #[test]
    fn steady_voice_becomes_speech_after_the_run_and_silence_after_the_pause() {
        let start = Instant::now();
        let mut voice = VoiceActivity::default();
        let changes = feed(&mut voice, start, Duration::from_millis(600), LOUD);
        assert_eq!(changes, vec![(Duration::from_millis(200), true)]);
        assert!(voice.speaking());

        let later = start + Duration::from_millis(600);
        let changes = feed(&mut voice, later, Duration::from_millis(1500), QUIET);
        // The last voice was at 580 ms: silence from 1,580 ms, that is 980 ms into the quiet.
        assert_eq!(changes, vec![(Duration::from_millis(980), false)]);
        assert!(!voice.speaking());
    }

    #[test]
    fn short_sounds_and_quiet_rooms_are_not_speech() {
        let start = Instant::now();
        let mut voice = VoiceActivity::default();
        // A click of 100 ms every half second (a fake microphone's beep, a keyboard).
        for burst in 0..10u32 {
            let at = start + Duration::from_millis(500) * burst;
            assert!(feed(&mut voice, at, Duration::from_millis(100), LOUD).is_empty());
            let after = at + Duration::from_millis(100);
            assert!(feed(&mut voice, after, Duration::from_millis(400), QUIET).is_empty());
        }
        assert!(feed(&mut voice, start, Duration::from_secs(5), VOICE_LEVEL).is_empty());
    }

    #[test]
    fn loud_moments_close_together_are_not_speech_unless_they_outweigh_the_quiet() {
        let start = Instant::now();
        let mut voice = VoiceActivity::default();
        // 100 ms loud, 120 ms quiet, over and over (seen from Chromium's fake microphone):
        // the quiet wins.
        let mut at = start;
        for _ in 0..20 {
            assert!(feed(&mut voice, at, Duration::from_millis(100), LOUD).is_empty());
            at += Duration::from_millis(100);
            assert!(feed(&mut voice, at, Duration::from_millis(120), QUIET).is_empty());
            at += Duration::from_millis(120);
        }
        // Speech with short gaps (160 ms voiced, 80 ms not) gets there in its second phrase.
        let mut changes = Vec::new();
        for round in 0..4u32 {
            let offset = Duration::from_millis(240) * round;
            changes.extend(
                feed(&mut voice, at + offset, Duration::from_millis(160), LOUD)
                    .into_iter()
                    .map(|(when, speaking)| (when + offset, speaking)),
            );
            feed(
                &mut voice,
                at + offset + Duration::from_millis(160),
                Duration::from_millis(80),
                QUIET,
            );
        }
        assert_eq!(changes.len(), 1, "{changes:?}");
        let (when, speaking) = changes[0];
        assert!(speaking);
        assert!(
            (Duration::from_millis(240)..Duration::from_millis(400)).contains(&when),
            "speech began at {when:?}"
        );
    }

    #[test]
    fn pauses_between_phrases_keep_speech_and_stopped_packets_end_it() {
        let start = Instant::now();
        let mut voice = VoiceActivity::default();
        feed(&mut voice, start, Duration::from_millis(400), LOUD);
        assert!(voice.speaking());
        // A 600 ms pause, then more voice: still one stretch of speech.
        let pause = start + Duration::from_millis(400);
        assert!(feed(&mut voice, pause, Duration::from_millis(600), QUIET).is_empty());
        let resumed = pause + Duration::from_millis(600);
        assert!(feed(&mut voice, resumed, Duration::from_millis(400), LOUD).is_empty());
        // Then no packets at all (muted, or gone): the check ends it.
        let last_voice = resumed + Duration::from_millis(380);
        assert_eq!(
            voice.check_silence(last_voice + Duration::from_millis(900)),
            None
        );
        assert_eq!(voice.check_silence(last_voice + SILENCE_AFTER), Some(false));
        assert_eq!(voice.check_silence(last_voice + SILENCE_AFTER * 2), None);
    }

    #[test]
    fn time_going_backwards_does_not_panic() {
        let start = Instant::now() + Duration::from_secs(10);
        let mut voice = VoiceActivity::default();
        voice.on_level(LOUD, start);
        assert_eq!(voice.on_level(LOUD, start - Duration::from_secs(5)), None);
        assert_eq!(voice.check_silence(start - Duration::from_secs(5)), None);
    }
}
