//! What the media plane plays: WAV files (16-bit PCM or G.711; 8, 12, 16, 24, 32, 44.1 or 48 kHz;
//! mono or stereo) and
//! call-progress tones, as mono PCM.
//!
//! The WAV reader is written here: it is a few dozen lines over the RIFF chunks, and the common
//! WAV crate (`hound`) reads PCM and float but not G.711 (`WAVE_FORMAT_ALAW`/`MULAW`, format 6 and
//! 7), which telephony prompt sets often are. It never panics on a file (fuzzed by property test).

use crate::dtmf::ToneGenerator;
use crate::{CodecError, Decoder as _};

/// Why a WAV file cannot be played.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WavError {
    #[error("not a RIFF/WAVE file")]
    NotWave,
    #[error("no fmt chunk before the data chunk")]
    NoFormat,
    #[error("no data chunk")]
    NoData,
    #[error("format {0} is not 16-bit PCM (1), A-law (6) or μ-law (7)")]
    Format(u16),
    #[error("{0} channels; 1 or 2 are played")]
    Channels(u16),
    #[error("{0} bits per sample for its format")]
    Bits(u16),
    #[error("sample rate {0} Hz; 8000, 12000, 16000, 24000, 32000, 44100 or 48000 are played")]
    Rate(u32),
}

/// A WAV file's audio mixed down to mono: its rate and samples.
pub fn read_wav(bytes: &[u8]) -> Result<(u32, Vec<i16>), WavError> {
    if bytes.get(..4) != Some(b"RIFF") || bytes.get(8..12) != Some(b"WAVE") {
        return Err(WavError::NotWave);
    }
    let u16_at = |at: usize| bytes.get(at..at + 2).map(|b| u16::from_le_bytes([b[0], b[1]]));
    let u32_at = |at: usize| bytes.get(at..at + 4).map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]));
    let mut format = None;
    let mut at = 12usize;
    while let (Some(id), Some(len)) = (bytes.get(at..at + 4), u32_at(at + 4)) {
        let start = at + 8;
        let len = len as usize;
        if id == b"fmt " {
            let (Some(tag), Some(channels), Some(rate), Some(bits)) =
                (u16_at(start), u16_at(start + 2), u32_at(start + 4), u16_at(start + 14))
            else {
                return Err(WavError::NoFormat);
            };
            format = Some((tag, channels, rate, bits));
        } else if id == b"data" {
            let (tag, channels, rate, bits) = format.ok_or(WavError::NoFormat)?;
            if !(1..=2).contains(&channels) {
                return Err(WavError::Channels(channels));
            }
            if ![8000, 12_000, 16_000, 24_000, 32_000, 44_100, 48_000].contains(&rate) {
                return Err(WavError::Rate(rate));
            }
            let data = bytes.get(start..start.saturating_add(len).min(bytes.len())).unwrap_or_default();
            let samples: Vec<i16> = match (tag, bits) {
                (1, 16) => data.chunks_exact(2).map(|b| i16::from_le_bytes([b[0], b[1]])).collect(),
                (6 | 7, 8) => {
                    let law = if tag == 6 { crate::g711::Law::A } else { crate::g711::Law::Mu };
                    let mut pcm = Vec::with_capacity(data.len());
                    // G.711 decodes any byte.
                    let _ = crate::g711::Decoder::new(law).decode(data, &mut pcm);
                    pcm
                }
                (1 | 6 | 7, b) => return Err(WavError::Bits(b)),
                (t, _) => return Err(WavError::Format(t)),
            };
            let mono = match channels {
                2 => samples.chunks_exact(2).map(|f| ((i32::from(f[0]) + i32::from(f[1])) / 2) as i16).collect(),
                _ => samples,
            };
            return Ok((rate, mono));
        }
        at = start.saturating_add(len).saturating_add(len & 1);
    }
    Err(WavError::NoData)
}

/// Call-progress tones, as ITU-T E.180 and ETSI ES 201 970 give them (425 Hz), and their North
/// American counterparts (`-us`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tone {
    /// 425 Hz, 1 s on, 4 s off.
    Ringback,
    /// 425 Hz, 0.5 s on, 0.5 s off.
    Busy,
    /// 425 Hz, 0.25 s on, 0.25 s off.
    Congestion,
    /// 440 + 480 Hz, 2 s on, 4 s off.
    RingbackUs,
    /// 480 + 620 Hz, 0.5 s on, 0.5 s off.
    BusyUs,
    /// 480 + 620 Hz, 0.25 s on, 0.25 s off.
    CongestionUs,
    /// Three 1400 Hz beeps, 0.2 s on, 0.2 s off: the call ends soon (prepaid credit running out).
    Warning,
}

impl Tone {
    /// By name: `ringback`, `busy`, `congestion`, the same with `-us`, and `warning`.
    pub fn from_name(name: &str) -> Option<Self> {
        Some(match name {
            "ringback" => Tone::Ringback,
            "busy" => Tone::Busy,
            "congestion" => Tone::Congestion,
            "ringback-us" => Tone::RingbackUs,
            "busy-us" => Tone::BusyUs,
            "congestion-us" => Tone::CongestionUs,
            "warning" => Tone::Warning,
            _ => return None,
        })
    }

    /// Frequencies, cadence (ms on, ms off) and how many on/off pairs make one cycle.
    fn plan(self) -> (&'static [f32], u32, u32, usize) {
        match self {
            Tone::Ringback => (&[425.0], 1000, 4000, 1),
            Tone::Busy => (&[425.0], 500, 500, 1),
            Tone::Congestion => (&[425.0], 250, 250, 1),
            Tone::RingbackUs => (&[440.0, 480.0], 2000, 4000, 1),
            Tone::BusyUs => (&[480.0, 620.0], 500, 500, 1),
            Tone::CongestionUs => (&[480.0, 620.0], 250, 250, 1),
            Tone::Warning => (&[1400.0], 200, 200, 3),
        }
    }

    /// One cadence cycle at `rate` Hz (loop it for the tone), each frequency at −13 dBm0.
    pub fn cycle(self, rate: u32) -> Vec<i16> {
        let (freqs, on, off, repeats) = self.plan();
        let amplitude = 32_767.0 * 10f32.powf((-13.0 - 3.0) / 20.0);
        let on_samples = (rate * on / 1000) as usize;
        let tau = 2.0 * std::f32::consts::PI;
        let mut out: Vec<i16> = (0..on_samples)
            .map(|n| {
                let t = n as f32 / rate as f32;
                let v: f32 = freqs.iter().map(|f| (tau * f * t).sin()).sum::<f32>() * amplitude;
                v.round() as i16
            })
            .collect();
        out.extend(std::iter::repeat_n(0, (rate * off / 1000) as usize));
        out.repeat(repeats)
    }
}

/// DTMF `digits` as tones at `rate` Hz: 100 ms each, 60 ms apart (unknown characters are
/// silence).
pub fn dtmf_sequence(digits: &str, rate: u32) -> Vec<i16> {
    let mut g = ToneGenerator::new(rate, -7.0);
    let mut out = Vec::new();
    for d in digits.chars() {
        g.tone(d, rate as usize / 10, &mut out);
        out.extend(std::iter::repeat_n(0, rate as usize * 60 / 1000));
    }
    out
}

/// `pcm` at `from` Hz resampled to `to` Hz, whole (for a prompt, once, off the packet path).
pub fn resample_all(pcm: &[i16], from: u32, to: u32) -> Result<Vec<i16>, CodecError> {
    if from == to {
        return Ok(pcm.to_vec());
    }
    let mut r = crate::Resampler::new(from, to, 1)?;
    let mut out = Vec::with_capacity(pcm.len() * to as usize / from as usize + 64);
    for chunk in pcm.chunks(from as usize / 50) {
        r.process(chunk, &mut out)?;
    }
    // The filter's delay: 20 ms of silence pushes the end out; the result is as long as the
    // prompt (so a loop does not drift).
    r.process(&vec![0; from as usize / 50], &mut out)?;
    out.truncate((pcm.len() as u64 * u64::from(to) / u64::from(from)) as usize);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dtmf::{Detection, DtmfDetector};

    fn wav(tag: u16, channels: u16, rate: u32, bits: u16, data: &[u8]) -> Vec<u8> {
        let mut w = b"RIFF\0\0\0\0WAVE".to_vec();
        w.extend_from_slice(b"LIST\x04\0\0\0abcd");
        w.extend_from_slice(b"fmt \x10\0\0\0");
        w.extend_from_slice(&tag.to_le_bytes());
        w.extend_from_slice(&channels.to_le_bytes());
        w.extend_from_slice(&rate.to_le_bytes());
        w.extend_from_slice(&(rate * u32::from(channels) * u32::from(bits) / 8).to_le_bytes());
        w.extend_from_slice(&(channels * bits / 8).to_le_bytes());
        w.extend_from_slice(&bits.to_le_bytes());
        w.extend_from_slice(b"data");
        w.extend_from_slice(&(data.len() as u32).to_le_bytes());
        w.extend_from_slice(data);
        w
    }

    #[test]
    fn pcm_and_g711_wav_files_read_as_mono_pcm() {
        let pcm: Vec<u8> = [100i16, -100, 2000, 0].iter().flat_map(|s| s.to_le_bytes()).collect();
        assert_eq!(read_wav(&wav(1, 1, 16_000, 16, &pcm)), Ok((16_000, vec![100, -100, 2000, 0])));
        assert_eq!(read_wav(&wav(1, 2, 48_000, 16, &pcm)), Ok((48_000, vec![0, 1000])), "stereo mixed down");
        let (rate, alaw) = read_wav(&wav(6, 1, 8000, 8, &[0xd5, 0x55])).unwrap();
        assert_eq!((rate, alaw.len()), (8000, 2));
        assert!(alaw.iter().all(|s| s.abs() < 16), "A-law 0xd5/0x55 are near silence: {alaw:?}");
        assert_eq!(read_wav(&wav(7, 1, 8000, 8, &[0xff])).unwrap().1, vec![0], "μ-law 0xff is 0");
    }

    #[test]
    fn unplayable_files_say_why() {
        assert_eq!(read_wav(b"hello"), Err(WavError::NotWave));
        assert_eq!(read_wav(&wav(3, 1, 8000, 32, &[0; 8])), Err(WavError::Format(3)));
        assert_eq!(read_wav(&wav(1, 1, 8000, 8, &[0; 8])), Err(WavError::Bits(8)));
        assert_eq!(read_wav(&wav(1, 3, 8000, 16, &[0; 8])), Err(WavError::Channels(3)));
        assert_eq!(read_wav(&wav(1, 1, 96_000, 16, &[0; 8])), Err(WavError::Rate(96_000)));
        let mut no_data = wav(1, 1, 8000, 16, &[]);
        no_data.truncate(no_data.len() - 8);
        assert_eq!(read_wav(&no_data), Err(WavError::NoData));
        // A truncated data chunk plays what is there.
        let mut short = wav(1, 1, 8000, 16, &[1, 0, 2, 0]);
        short.truncate(short.len() - 2);
        assert_eq!(read_wav(&short), Ok((8000, vec![1])));
    }

    #[test]
    fn tones_follow_their_cadence_and_dtmf_sequences_are_detected() {
        let busy = Tone::from_name("busy").unwrap().cycle(8000);
        assert_eq!(busy.len(), 8000, "0.5 s on + 0.5 s off");
        assert!(busy[..4000].iter().any(|s| s.abs() > 1000) && busy[4000..].iter().all(|s| *s == 0));
        assert_eq!(Tone::from_name("ringback-us").unwrap().cycle(16_000).len(), 6 * 16_000);
        let warning = Tone::from_name("warning").unwrap().cycle(8000);
        assert_eq!(warning.len(), 3 * 3200, "three beeps of 0.2 s on, 0.2 s off");
        assert!(warning[6400..8000].iter().any(|s| s.abs() > 1000) && warning[8000..].iter().all(|s| *s == 0));
        assert_eq!(Tone::from_name("dial"), None);
        let mut found = String::new();
        DtmfDetector::new(16_000).push(&dtmf_sequence("19#", 16_000), |d| {
            if let Detection::Ended(c, _) = d {
                found.push(c);
            }
        });
        assert_eq!(found, "19#");
    }

    #[test]
    fn whole_prompts_are_resampled_with_their_end() {
        let out = resample_all(&[1000; 8000], 8000, 48_000).unwrap();
        assert_eq!(out.len(), 48_000, "as long as the prompt");
        assert!(out[47_000..].iter().all(|s| (s - 1000).abs() < 30), "its end is there, not the filter's ramp");
        assert_eq!(resample_all(&[5; 10], 8000, 8000).unwrap(), vec![5; 10]);
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            #[test]
            fn any_bytes_read_or_fail_without_panicking(tag in 0u16..10, channels in 0u16..4, bits in 0u16..20, data in proptest::collection::vec(any::<u8>(), 0..64), cut in 0usize..80) {
                let mut w = wav(tag, channels, 8000, bits, &data);
                w.truncate(w.len().saturating_sub(cut));
                let _ = read_wav(&w);
            }
        }
    }
}
