//! G.711 μ-law (PCMU) and A-law (PCMA), as ITU-T G.711 defines them (the bit manipulations of
//! its reference implementation, a few lines each; a crate would add nothing but a dependency).

use crate::{CodecError, RepeatConcealer};

/// Which companding law.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Law {
    /// μ-law (North America, Japan).
    Mu,
    /// A-law (Europe, most of the world).
    A,
}

const BIAS: i32 = 0x84;
const CLIP: i32 = 32_635;

/// One 16-bit sample to μ-law.
pub fn linear_to_ulaw(sample: i16) -> u8 {
    let mut s = i32::from(sample);
    let sign = if s < 0 {
        s = -s;
        0x80
    } else {
        0
    };
    s = s.min(CLIP) + BIAS;
    let exponent = (7 - (s.leading_zeros() as i32 - 17)).clamp(0, 7);
    let mantissa = (s >> (exponent + 3)) & 0x0F;
    !(sign | (exponent << 4) as u8 | mantissa as u8)
}

/// One μ-law byte to a 16-bit sample.
pub fn ulaw_to_linear(byte: u8) -> i16 {
    let u = !byte;
    let exponent = i32::from((u >> 4) & 0x07);
    let mantissa = i32::from(u & 0x0F);
    let magnitude = (((mantissa << 3) + BIAS) << exponent) - BIAS;
    (if u & 0x80 != 0 { -magnitude } else { magnitude }) as i16
}

/// One 16-bit sample to A-law.
pub fn linear_to_alaw(sample: i16) -> u8 {
    let s = i32::from(sample) >> 3; // 13-bit magnitude domain
    let (mask, magnitude) = if s >= 0 { (0xD5, s) } else { (0x55, -s - 1) };
    let magnitude = magnitude.min(0x0FFF);
    let byte = if magnitude < 32 {
        magnitude >> 1
    } else {
        let segment = 31 - magnitude.leading_zeros() as i32 - 4; // 1..=7
        (segment << 4) | ((magnitude >> segment) & 0x0F)
    };
    (byte as u8) ^ mask
}

/// One A-law byte to a 16-bit sample.
pub fn alaw_to_linear(byte: u8) -> i16 {
    let a = byte ^ 0x55;
    let segment = i32::from((a >> 4) & 0x07);
    let mantissa = i32::from(a & 0x0F);
    let magnitude = if segment == 0 { (mantissa << 4) + 8 } else { ((mantissa << 4) + 0x108) << (segment - 1) };
    (if a & 0x80 != 0 { magnitude } else { -magnitude }) as i16
}

/// A G.711 decoder: one sample per byte, any byte valid.
#[derive(Debug)]
pub struct Decoder {
    law: Law,
    plc: RepeatConcealer,
}

impl Decoder {
    pub fn new(law: Law) -> Self {
        Decoder { law, plc: RepeatConcealer::default() }
    }
}

impl crate::Decoder for Decoder {
    fn sample_rate(&self) -> u32 {
        8000
    }
    fn channels(&self) -> u8 {
        1
    }
    fn decode(&mut self, payload: &[u8], pcm: &mut Vec<i16>) -> Result<usize, CodecError> {
        let start = pcm.len();
        match self.law {
            Law::Mu => pcm.extend(payload.iter().map(|&b| ulaw_to_linear(b))),
            Law::A => pcm.extend(payload.iter().map(|&b| alaw_to_linear(b))),
        }
        self.plc.decoded(pcm.get(start..).unwrap_or_default());
        Ok(payload.len())
    }
    fn conceal(&mut self, samples: usize, pcm: &mut Vec<i16>) -> Result<usize, CodecError> {
        Ok(self.plc.conceal(samples, pcm))
    }
}

/// A G.711 encoder.
#[derive(Debug)]
pub struct Encoder {
    law: Law,
}

impl Encoder {
    pub fn new(law: Law) -> Self {
        Encoder { law }
    }
}

impl crate::Encoder for Encoder {
    fn sample_rate(&self) -> u32 {
        8000
    }
    fn channels(&self) -> u8 {
        1
    }
    fn encode(&mut self, pcm: &[i16], out: &mut Vec<u8>) -> Result<usize, CodecError> {
        match self.law {
            Law::Mu => out.extend(pcm.iter().map(|&s| linear_to_ulaw(s))),
            Law::A => out.extend(pcm.iter().map(|&s| linear_to_alaw(s))),
        }
        Ok(pcm.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::signal::{snr_db, speech_like};

    #[test]
    fn reference_code_points_of_both_laws() {
        // Silence: μ-law 0xFF (and 0x7F), A-law 0xD5 (and 0x55).
        assert_eq!(linear_to_ulaw(0), 0xFF);
        assert_eq!(linear_to_alaw(0), 0xD5);
        assert_eq!(ulaw_to_linear(0xFF), 0);
        assert_eq!(alaw_to_linear(0xD5), 8);
        // Full scale.
        assert_eq!(linear_to_ulaw(i16::MAX), 0x80);
        assert_eq!(linear_to_ulaw(i16::MIN), 0x00);
        assert_eq!(ulaw_to_linear(0x80), 32_124);
        assert_eq!(alaw_to_linear(0xAA), 32_256);
        assert_eq!(linear_to_alaw(i16::MAX), 0xAA);
        assert_eq!(linear_to_alaw(i16::MIN), 0x2A);
    }

    #[test]
    fn every_code_decodes_and_reencodes_to_itself() {
        for b in 0..=255u8 {
            let mu = ulaw_to_linear(b);
            // 0x7F and 0xFF are both zero in μ-law; every other code is its own round trip.
            if b != 0x7F {
                assert_eq!(linear_to_ulaw(mu), b, "μ-law {b:#04x} -> {mu}");
            }
            assert_eq!(linear_to_alaw(alaw_to_linear(b)), b, "A-law {b:#04x}");
        }
    }

    #[test]
    fn speech_round_trip_keeps_at_least_30_db_snr() {
        let signal = speech_like(8000, 1.0);
        for law in [Law::Mu, Law::A] {
            let mut enc = Encoder::new(law);
            let mut dec = Decoder::new(law);
            let (mut bytes, mut out) = (Vec::new(), Vec::new());
            for frame in signal.chunks(160) {
                bytes.clear();
                crate::Encoder::encode(&mut enc, frame, &mut bytes).unwrap();
                crate::Decoder::decode(&mut dec, &bytes, &mut out).unwrap();
            }
            let snr = snr_db(&signal, &out, 0);
            assert!(snr >= 30.0, "{law:?}: SNR {snr:.1} dB");
        }
    }

    #[test]
    fn concealment_fades_the_last_frame_then_goes_silent() {
        let mut dec = Decoder::new(Law::Mu);
        let mut out = Vec::new();
        crate::Decoder::decode(&mut dec, &[linear_to_ulaw(8000); 160], &mut out).unwrap();
        let level = out[0];
        for (loss, expected) in [(1, level >> 1), (2, level >> 2), (3, level >> 3), (4, 0)] {
            out.clear();
            assert_eq!(crate::Decoder::conceal(&mut dec, 160, &mut out).unwrap(), 160);
            assert!(out.iter().all(|&s| s == expected), "loss {loss}: {:?}", &out[..4]);
        }
    }
}
