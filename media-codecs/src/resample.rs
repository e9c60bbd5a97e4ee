//! Sample-rate conversion between 8, 16, 24, 32 and 48 kHz with speexdsp's resampler (the
//! polyphase windowed-sinc filter of libspeexdsp, ported to Rust by the `speexdsp-resampler`
//! crate), fed 20 ms chunks as they come. Quality 4 of 10 (between speexdsp's VoIP default, 3,
//! which droops 1 dB at 3.4 kHz when going down to 8 kHz, and its desktop default, 5, which costs
//! a quarter more): a passband flat to within 0.5 dB up to 3.4 kHz at 8 kHz, and images and
//! aliases attenuated by at least 40 dB (both checked by the tests below). This filter is most of
//! the cost of a G.711⇄G.722 bridge (docs/benchmarks.md).

use speexdsp_resampler::State;

use crate::CodecError;

/// speexdsp quality (0–10); see the module documentation.
const QUALITY: usize = 4;

/// A resampler for one stream (mono or interleaved stereo), keeping its filter state between
/// chunks.
pub struct Resampler {
    /// One mono filter per channel (the port's multi-channel indexing is not relied on).
    states: Vec<State>,
    channels: usize,
    from: u32,
    to: u32,
    input: Vec<f32>,
    output: Vec<f32>,
}

impl std::fmt::Debug for Resampler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Resampler").field("from", &self.from).field("to", &self.to).field("channels", &self.channels).finish()
    }
}

impl Resampler {
    /// A resampler from `from` Hz to `to` Hz for `channels` (1 or 2) interleaved channels.
    pub fn new(from: u32, to: u32, channels: u8) -> Result<Self, CodecError> {
        let rates = [8000, 12_000, 16_000, 24_000, 32_000, 44_100, 48_000];
        for (field, value) in [("from", from), ("to", to)] {
            if !rates.contains(&value) {
                return Err(CodecError::Unsupported { codec: "resampler", field, value, allowed: "8000, 12000, 16000, 24000, 32000, 44100 or 48000" });
            }
        }
        if !(1..=2).contains(&channels) {
            return Err(CodecError::Unsupported { codec: "resampler", field: "channels", value: u32::from(channels), allowed: "1 or 2" });
        }
        let states = (0..channels)
            .map(|_| State::new(1, from as usize, to as usize, QUALITY))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|_| CodecError::Library { codec: "resampler", code: -1 })?;
        Ok(Resampler { states, channels: usize::from(channels), from, to, input: Vec::new(), output: Vec::new() })
    }

    /// Input rate.
    pub fn from_rate(&self) -> u32 {
        self.from
    }

    /// Output rate.
    pub fn to_rate(&self) -> u32 {
        self.to
    }

    /// Converts `pcm` (interleaved), appending the result to `out`; returns the samples appended
    /// per channel. The filter's delay (a few milliseconds) carries over between calls.
    pub fn process(&mut self, pcm: &[i16], out: &mut Vec<i16>) -> Result<usize, CodecError> {
        if self.from == self.to {
            out.extend_from_slice(pcm);
            return Ok(pcm.len() / self.channels);
        }
        let per_channel = pcm.len() / self.channels;
        let capacity = per_channel * self.to as usize / self.from as usize + 16;
        let start = out.len();
        out.resize(start + capacity * self.channels, 0);
        let mut produced = 0;
        for ch in 0..self.channels {
            self.input.clear();
            self.input.extend(pcm.iter().skip(ch).step_by(self.channels).map(|&s| f32::from(s)));
            self.output.clear();
            self.output.resize(capacity, 0.0);
            let (mut consumed, mut written) = (0, 0);
            let Some(state) = self.states.get_mut(ch) else { break };
            // (The port panics on an empty input slice: never passed one.)
            while consumed < self.input.len() && written < capacity {
                let (i, o) = state
                    .process_float(0, self.input.get(consumed..).unwrap_or_default(), self.output.get_mut(written..).unwrap_or_default())
                    .map_err(|_| CodecError::Library { codec: "resampler", code: -1 })?;
                if i == 0 && o == 0 {
                    break;
                }
                consumed += i;
                written += o;
            }
            for (k, &v) in self.output.iter().take(written).enumerate() {
                if let Some(slot) = out.get_mut(start + k * self.channels + ch) {
                    *slot = v.round().clamp(f32::from(i16::MIN), f32::from(i16::MAX)) as i16;
                }
            }
            produced = if ch == 0 { written } else { produced.min(written) };
        }
        out.truncate(start + produced * self.channels);
        Ok(produced)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::signal::{rms, sine};

    /// Gain in dB of a `hz` tone through `from` → `to`, measured after the filter settles.
    fn gain_db(from: u32, to: u32, hz: f64) -> f64 {
        let mut r = Resampler::new(from, to, 1).unwrap();
        let input = sine(from, hz, 1.0, 10_000.0);
        let mut out = Vec::new();
        for chunk in input.chunks(from as usize / 50) {
            r.process(chunk, &mut out).unwrap();
        }
        let settled = out.len() / 4;
        20.0 * (rms(&out[settled..]) / rms(&input[input.len() / 4..])).log10()
    }

    #[test]
    fn twenty_ms_chunks_give_twenty_ms_out_on_average() {
        let mut r = Resampler::new(8000, 48_000, 1).unwrap();
        let mut out = Vec::new();
        let mut total = 0;
        for _ in 0..50 {
            total += r.process(&[0; 160], &mut out).unwrap();
        }
        assert!((47_000..=48_000).contains(&total), "1 s at 8 kHz -> {total} samples at 48 kHz");
        assert_eq!(out.len(), total);
    }

    #[test]
    fn passband_is_flat_to_half_a_db() {
        for (from, to, tones) in [(8000, 48_000, [300.0, 1000.0, 3400.0]), (48_000, 8000, [300.0, 1000.0, 3400.0]), (16_000, 8000, [200.0, 1000.0, 3400.0]), (8000, 16_000, [200.0, 2000.0, 3500.0])] {
            for hz in tones {
                let g = gain_db(from, to, hz);
                assert!(g.abs() <= 0.5, "{from}->{to} at {hz} Hz: {g:.2} dB");
            }
        }
    }

    #[test]
    fn tones_above_the_new_nyquist_are_removed_not_aliased() {
        for (from, to, hz) in [(48_000, 8000, 6000.0), (48_000, 8000, 12_000.0), (16_000, 8000, 5000.0), (48_000, 16_000, 10_000.0)] {
            let g = gain_db(from, to, hz);
            assert!(g <= -40.0, "{from}->{to}: a {hz} Hz tone comes out at {g:.1} dB");
        }
    }

    #[test]
    fn stereo_channels_stay_apart_and_bad_rates_name_the_field() {
        let mut r = Resampler::new(16_000, 48_000, 2).unwrap();
        let left = sine(16_000, 440.0, 0.2, 8000.0);
        let pcm: Vec<i16> = left.iter().flat_map(|&l| [l, 0]).collect();
        let mut out = Vec::new();
        let n = r.process(&pcm, &mut out).unwrap();
        assert_eq!(out.len(), 2 * n);
        let right: Vec<i16> = out.iter().skip(1).step_by(2).copied().collect();
        assert!(right.iter().all(|&s| s == 0), "silence on the right stays silence");
        assert!(matches!(Resampler::new(11_025, 8000, 1), Err(CodecError::Unsupported { field: "from", .. })));
        assert!(matches!(Resampler::new(8000, 8000, 3), Err(CodecError::Unsupported { field: "channels", .. })));
    }
}
