//! In-band DTMF: a detector (Goertzel) and a tone generator, on PCM at any rate.
//!
//! Written here rather than taken from a crate: the Goertzel filter is a few lines, and what
//! makes a detector usable on a carrier's lines is the acceptance logic around it, which must
//! follow ITU-T Q.24 with limits we can state and test:
//!
//! * **windows** evaluated every 5 ms, one length per frequency (26 ms for 697 Hz down to 11 ms
//!   for 1633 Hz: about 18 periods each), so that every tone has the same relative selectivity;
//! * **frequency**: tones within ±1.5 % are accepted, tones off by 3.5 % or more are rejected
//!   (an off tone loses most of its share of its window's energy);
//! * **level**: each tone at least −30 dBm0 (amplitude 1/40 of full scale);
//! * **twist**: the high-group tone may be up to 8 dB below the low-group tone (normal twist) or
//!   4 dB above it (reverse twist);
//! * **talk-off**: the two tones carry at least 70 % of the window's energy, and the next-best
//!   tone of each group is at least 8 dB below the best;
//! * **duration**: measured on the signal's envelope in 5 ms steps (steps at half the digit's
//!   peak energy or more); a digit is reported once it has lasted 30 ms (Q.24's 40 ms digits are
//!   always caught, 23 ms bursts never), and ends after two windows without it (a dropout of
//!   under 5 ms does not split a digit).

use std::collections::VecDeque;

/// Low-group (row) frequencies.
pub const ROWS: [f32; 4] = [697.0, 770.0, 852.0, 941.0];
/// High-group (column) frequencies.
pub const COLUMNS: [f32; 4] = [1209.0, 1336.0, 1477.0, 1633.0];
const KEYS: [[char; 4]; 4] = [['1', '2', '3', 'A'], ['4', '5', '6', 'B'], ['7', '8', '9', 'C'], ['*', '0', '#', 'D']];

/// The two frequencies of `digit` (0-9, *, #, A-D).
pub fn frequencies(digit: char) -> Option<(f32, f32)> {
    let digit = digit.to_ascii_uppercase();
    KEYS.iter().enumerate().find_map(|(r, row)| row.iter().position(|k| *k == digit).map(|c| (ROWS[r], COLUMNS[c])))
}

/// A digit found in the audio: which, and how long it lasted (ms).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Detection {
    /// A digit started (reported once, after the confirming window).
    Began(char),
    /// The digit ended after `duration_ms` of tone.
    Ended(char, u32),
}

/// Goertzel power of `f` over `x` (at `rate`), scaled so a full-window sine of amplitude `a`
/// gives `a² N² / 4`.
fn goertzel<'a>(x: impl Iterator<Item = &'a f32>, f: f32, rate: f32) -> f32 {
    let coeff = 2.0 * (2.0 * std::f32::consts::PI * f / rate).cos();
    let (mut s1, mut s2) = (0.0f32, 0.0f32);
    for &v in x {
        let s = v + coeff * s1 - s2;
        s2 = s1;
        s1 = s;
    }
    s1 * s1 + s2 * s2 - coeff * s1 * s2
}

/// The in-band DTMF detector of one stream (see the module documentation).
#[derive(Debug, Clone)]
pub struct DtmfDetector {
    rate: f32,
    /// Window length per row and per column frequency.
    row_windows: [usize; 4],
    col_windows: [usize; 4],
    hop: usize,
    /// The last samples (the longest window), oldest first.
    buf: VecDeque<f32>,
    since_eval: usize,
    /// Energy of each recent 5 ms step, oldest first (the envelope the duration is read from).
    steps: Vec<f32>,
    step_energy: f32,
    candidate: Option<char>,
    /// Steps of the candidate or current digit's envelope, from before its first hit.
    digit_steps: Vec<f32>,
    steps_beyond: usize,
    current: Option<char>,
    misses: u32,
}

/// Lowest accepted tone amplitude (−30 dBm0 with full scale at +3 dBm0).
const MIN_AMPLITUDE: f32 = 32_767.0 / 40.0;
const MIN_TONE_SHARE: f32 = 0.7;
const NORMAL_TWIST_DB: f32 = 8.0;
const REVERSE_TWIST_DB: f32 = 4.0;
const NEIGHBOUR_DB: f32 = 8.0;
/// Periods of each tone in its window (sets the relative selectivity).
const PERIODS: f32 = 18.0;
/// Shortest tone reported.
const MIN_DIGIT_MS: u32 = 30;
/// Envelope steps kept from before a digit's first hit (a window's length, and more).
const LEAD_STEPS: usize = 8;
/// Envelope steps kept per digit (10 s); a longer tone is counted, not stored.
const MAX_DIGIT_STEPS: usize = 2000;

fn db(ratio: f32) -> f32 {
    10.0 * ratio.max(1e-12).log10()
}

impl DtmfDetector {
    /// A detector for PCM at `rate` Hz (8000 to 48000).
    pub fn new(rate: u32) -> Self {
        let rate = rate.clamp(8000, 48_000) as f32;
        let window = |f: f32| (PERIODS * rate / f).round() as usize;
        let row_windows = ROWS.map(window);
        let longest = row_windows[0];
        DtmfDetector {
            rate,
            row_windows,
            col_windows: COLUMNS.map(window),
            hop: (rate * 0.005).round() as usize,
            buf: VecDeque::with_capacity(longest),
            since_eval: 0,
            steps: Vec::with_capacity(LEAD_STEPS),
            step_energy: 0.0,
            candidate: None,
            digit_steps: Vec::new(),
            steps_beyond: 0,
            current: None,
            misses: 0,
        }
    }

    /// Feeds mono PCM; calls `found` for each digit that begins or ends in it.
    pub fn push(&mut self, pcm: &[i16], mut found: impl FnMut(Detection)) {
        let longest = self.row_windows[0];
        for &s in pcm {
            if self.buf.len() == longest {
                self.buf.pop_front();
            }
            let v = f32::from(s);
            self.buf.push_back(v);
            self.step_energy += v * v;
            self.since_eval += 1;
            if self.since_eval >= self.hop {
                self.since_eval = 0;
                let energy = std::mem::take(&mut self.step_energy);
                if self.steps.len() == LEAD_STEPS {
                    self.steps.remove(0);
                }
                self.steps.push(energy);
                let digit = if self.buf.len() == longest { self.classify() } else { None };
                self.step(digit, energy, &mut found);
            }
        }
    }

    /// Power share of `f` in the last `n` samples (1.0 for a pure sine at `f`), and the tone's
    /// amplitude.
    fn tone(&self, f: f32, n: usize) -> (f32, f32) {
        let x = self.buf.range(self.buf.len().saturating_sub(n)..);
        let n = x.len() as f32;
        let energy: f32 = x.clone().map(|v| v * v).sum();
        let power = goertzel(x, f, self.rate);
        // A sine of amplitude a has energy a² n / 2 and Goertzel power a² n² / 4.
        let share = if energy > 0.0 { power / (energy * n / 2.0) } else { 0.0 };
        (share, 2.0 * power.max(0.0).sqrt() / n)
    }

    /// The digit the current windows hold, if it passes every check.
    fn classify(&self) -> Option<char> {
        let rows: [(f32, f32); 4] = std::array::from_fn(|i| self.tone(ROWS[i], self.row_windows[i]));
        let cols: [(f32, f32); 4] = std::array::from_fn(|i| self.tone(COLUMNS[i], self.col_windows[i]));
        let best = |t: &[(f32, f32)]| {
            let (i, top) = t.iter().enumerate().fold((0, (0.0f32, 0.0f32)), |acc, (i, v)| if v.1 > acc.1 .1 { (i, *v) } else { acc });
            let second = t.iter().enumerate().filter(|(j, _)| *j != i).map(|(_, v)| v.1).fold(0.0f32, f32::max);
            (i, top, second)
        };
        let (r, (row_share, row_amp), row2) = best(&rows);
        let (c, (col_share, col_amp), col2) = best(&cols);
        let twist = 2.0 * db(col_amp / row_amp.max(1e-6));
        let ok = row_amp >= MIN_AMPLITUDE
            && col_amp >= MIN_AMPLITUDE
            && row_share + col_share >= MIN_TONE_SHARE
            && (-NORMAL_TWIST_DB..=REVERSE_TWIST_DB).contains(&twist)
            && 2.0 * db(row_amp / row2.max(1e-6)) >= NEIGHBOUR_DB
            && 2.0 * db(col_amp / col2.max(1e-6)) >= NEIGHBOUR_DB;
        ok.then(|| KEYS[r][c])
    }

    /// Duration of the digit so far: 5 ms steps of its envelope at half its peak or more (the
    /// steps after the first [`MAX_DIGIT_STEPS`] count as strong: a held key costs no memory).
    fn digit_ms(&self) -> u32 {
        let peak = self.digit_steps.iter().copied().fold(0.0f32, f32::max);
        let strong = self.digit_steps.iter().filter(|e| **e >= peak / 2.0).count() + self.steps_beyond;
        (strong as f32 * self.hop as f32 * 1000.0 / self.rate).round() as u32
    }

    fn note_step(&mut self, energy: f32) {
        if self.digit_steps.len() < MAX_DIGIT_STEPS {
            self.digit_steps.push(energy);
        } else {
            self.steps_beyond += 1;
        }
    }

    fn step(&mut self, digit: Option<char>, energy: f32, found: &mut impl FnMut(Detection)) {
        match (self.current, self.candidate) {
            (Some(cur), _) => {
                if digit == Some(cur) {
                    self.misses = 0;
                    self.note_step(energy);
                } else {
                    self.misses += 1;
                    self.note_step(energy);
                    if self.misses >= 2 {
                        found(Detection::Ended(cur, self.digit_ms()));
                        self.current = None;
                        self.candidate = None;
                        self.misses = 0;
                    }
                }
            }
            (None, Some(cand)) if digit == Some(cand) => {
                self.note_step(energy);
                if self.digit_ms() >= MIN_DIGIT_MS {
                    self.current = Some(cand);
                    found(Detection::Began(cand));
                }
            }
            (None, _) => {
                self.candidate = digit;
                self.digit_steps.clear();
                self.steps_beyond = 0;
                if digit.is_some() {
                    // The tone began before the first window that holds enough of it.
                    self.digit_steps.extend_from_slice(&self.steps);
                }
            }
        }
    }
}

/// Makes the two tones of DTMF digits as PCM, continuing phase across calls.
#[derive(Debug, Clone)]
pub struct ToneGenerator {
    rate: f32,
    amplitude: f32,
    phase: (f32, f32),
}

impl ToneGenerator {
    /// Tones at `rate` Hz, each at `level_dbm0` (−7 dBm0 is what phones send; full scale is
    /// +3 dBm0).
    pub fn new(rate: u32, level_dbm0: f32) -> Self {
        ToneGenerator { rate: rate.max(8000) as f32, amplitude: 32_767.0 * 10f32.powf((level_dbm0 - 3.0) / 20.0), phase: (0.0, 0.0) }
    }

    /// Appends `samples` samples of `digit` (silence for an unknown digit) to `out`.
    pub fn tone(&mut self, digit: char, samples: usize, out: &mut Vec<i16>) {
        let Some((low, high)) = frequencies(digit) else {
            out.extend(std::iter::repeat_n(0, samples));
            return;
        };
        let tau = 2.0 * std::f32::consts::PI;
        let (step_low, step_high) = (tau * low / self.rate, tau * high / self.rate);
        for _ in 0..samples {
            let v = self.amplitude * (self.phase.0.sin() + self.phase.1.sin());
            out.push(v.round().clamp(-32_768.0, 32_767.0) as i16);
            self.phase.0 = (self.phase.0 + step_low) % tau;
            self.phase.1 = (self.phase.1 + step_high) % tau;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::signal::speech_like;

    /// `digits` as (digit, tone ms, pause ms) at 8 kHz, with optional tone tweaks.
    fn tones(rate: u32, seq: &[(char, u32, u32)], level: f32, detune: f32, twist_db: f32) -> Vec<i16> {
        let mut out = Vec::new();
        let a = 32_767.0 * 10f32.powf((level - 3.0) / 20.0);
        let tau = 2.0 * std::f32::consts::PI;
        for &(d, on, off) in seq {
            let (low, high) = frequencies(d).unwrap();
            let (low, high) = (low * (1.0 + detune), high * (1.0 + detune));
            let high_amp = a * 10f32.powf(twist_db / 20.0);
            for i in 0..(rate * on / 1000) {
                let t = i as f32 / rate as f32;
                out.push((a * (tau * low * t).sin() + high_amp * (tau * high * t).sin()) as i16);
            }
            out.extend(std::iter::repeat_n(0, (rate * off / 1000) as usize));
        }
        out
    }

    fn detect(rate: u32, pcm: &[i16]) -> Vec<Detection> {
        let mut d = DtmfDetector::new(rate);
        let mut found = Vec::new();
        // In 20 ms packets, as the engine feeds it.
        for chunk in pcm.chunks(rate as usize / 50) {
            d.push(chunk, |x| found.push(x));
        }
        found
    }

    fn digits(found: &[Detection]) -> String {
        found.iter().filter_map(|d| if let Detection::Ended(c, _) = d { Some(*c) } else { None }).collect()
    }

    #[test]
    fn every_digit_is_detected_with_its_duration_at_8_16_and_48_khz() {
        let keys = "0123456789*#ABCD";
        for rate in [8000, 16_000, 48_000] {
            let seq: Vec<_> = keys.chars().map(|c| (c, 100, 60)).collect();
            let found = detect(rate, &tones(rate, &seq, -7.0, 0.0, 0.0));
            assert_eq!(digits(&found), keys, "at {rate} Hz");
            for d in &found {
                if let Detection::Ended(_, ms) = d {
                    assert!((90..=115).contains(ms), "100 ms of tone measured as {ms} ms at {rate} Hz");
                }
            }
        }
    }

    #[test]
    fn q24_frequency_tolerance_accepts_1_5_percent_and_rejects_3_5_percent() {
        for detune in [0.015, -0.015] {
            assert_eq!(digits(&detect(8000, &tones(8000, &[('1', 80, 60), ('D', 80, 60)], -7.0, detune, 0.0))), "1D", "{detune}");
        }
        for detune in [0.035, -0.035] {
            assert_eq!(digits(&detect(8000, &tones(8000, &[('1', 80, 60), ('D', 80, 60)], -7.0, detune, 0.0))), "", "{detune}");
        }
    }

    #[test]
    fn q24_duration_accepts_40_ms_and_rejects_23_ms() {
        assert_eq!(digits(&detect(8000, &tones(8000, &[('5', 40, 40), ('6', 40, 40), ('7', 40, 40)], -7.0, 0.0, 0.0))), "567");
        assert_eq!(digits(&detect(8000, &tones(8000, &[('5', 23, 40), ('6', 23, 40)], -7.0, 0.0, 0.0))), "");
    }

    #[test]
    fn q24_twist_and_level_limits() {
        assert_eq!(digits(&detect(8000, &tones(8000, &[('8', 80, 60)], -7.0, 0.0, -7.0))), "8", "normal twist 7 dB");
        assert_eq!(digits(&detect(8000, &tones(8000, &[('8', 80, 60)], -7.0, 0.0, 3.5))), "8", "reverse twist 3.5 dB");
        assert_eq!(digits(&detect(8000, &tones(8000, &[('8', 80, 60)], -7.0, 0.0, -10.0))), "", "normal twist 10 dB");
        assert_eq!(digits(&detect(8000, &tones(8000, &[('8', 80, 60)], -7.0, 0.0, 6.0))), "", "reverse twist 6 dB");
        assert_eq!(digits(&detect(8000, &tones(8000, &[('9', 80, 60)], -28.0, 0.0, 0.0))), "9", "-28 dBm0");
        assert_eq!(digits(&detect(8000, &tones(8000, &[('9', 80, 60)], -40.0, 0.0, 0.0))), "", "-40 dBm0");
    }

    #[test]
    fn speech_does_not_talk_off_and_a_digit_in_speech_is_found() {
        for rate in [8000, 16_000] {
            let speech = speech_like(rate, 10.0);
            assert_eq!(detect(rate, &speech), vec![], "10 s of speech-like signal at {rate} Hz");
        }
        // A digit over quiet background speech (20 dB below).
        let mut mixed = tones(8000, &[('#', 100, 0)], -7.0, 0.0, 0.0);
        let speech = speech_like(8000, 0.1);
        for (m, s) in mixed.iter_mut().zip(speech) {
            *m = m.saturating_add(s / 10);
        }
        assert_eq!(digits(&detect(8000, &[mixed, vec![0; 800]].concat())), "#");
    }

    #[test]
    fn generated_tones_are_detected_as_the_same_digits() {
        for rate in [8000, 16_000, 48_000] {
            let mut g = ToneGenerator::new(rate, -7.0);
            let mut pcm = Vec::new();
            for d in "147*2580#369ABCD".chars() {
                g.tone(d, rate as usize / 10, &mut pcm);
                pcm.extend(std::iter::repeat_n(0, rate as usize / 20));
            }
            assert_eq!(digits(&detect(rate, &pcm)), "147*2580#369ABCD", "at {rate} Hz");
        }
        assert_eq!(frequencies('x'), None);
        let mut silent = Vec::new();
        ToneGenerator::new(8000, -7.0).tone('x', 10, &mut silent);
        assert_eq!(silent, [0; 10]);
    }
}
