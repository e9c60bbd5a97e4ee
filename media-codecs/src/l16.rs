//! L16: linear 16-bit PCM in network byte order (RFC 3551 §4.5.11), any rate, mono or stereo.

use crate::{CodecError, RepeatConcealer};

/// An L16 decoder.
#[derive(Debug)]
pub struct Decoder {
    rate: u32,
    channels: u8,
    plc: RepeatConcealer,
}

impl Decoder {
    pub fn new(rate: u32, channels: u8) -> Self {
        Decoder { rate, channels, plc: RepeatConcealer::default() }
    }
}

impl crate::Decoder for Decoder {
    fn sample_rate(&self) -> u32 {
        self.rate
    }
    fn channels(&self) -> u8 {
        self.channels
    }
    fn decode(&mut self, payload: &[u8], pcm: &mut Vec<i16>) -> Result<usize, CodecError> {
        let frame = 2 * usize::from(self.channels);
        if payload.len() % frame != 0 {
            return Err(CodecError::Corrupt { codec: "L16", why: "length is not a whole number of sample frames" });
        }
        let start = pcm.len();
        pcm.extend(payload.chunks_exact(2).map(|b| i16::from_be_bytes([b[0], b[1]])));
        self.plc.decoded(pcm.get(start..).unwrap_or_default());
        Ok(payload.len() / frame)
    }
    fn conceal(&mut self, samples: usize, pcm: &mut Vec<i16>) -> Result<usize, CodecError> {
        self.plc.conceal(samples * usize::from(self.channels), pcm);
        Ok(samples)
    }
}

/// An L16 encoder.
#[derive(Debug)]
pub struct Encoder {
    rate: u32,
    channels: u8,
}

impl Encoder {
    pub fn new(rate: u32, channels: u8) -> Self {
        Encoder { rate, channels }
    }
}

impl crate::Encoder for Encoder {
    fn sample_rate(&self) -> u32 {
        self.rate
    }
    fn channels(&self) -> u8 {
        self.channels
    }
    fn encode(&mut self, pcm: &[i16], out: &mut Vec<u8>) -> Result<usize, CodecError> {
        let start = out.len();
        out.extend(pcm.iter().flat_map(|s| s.to_be_bytes()));
        Ok(out.len() - start)
    }
}

#[cfg(test)]
mod tests {
    use crate::{decoder, encoder, CodecKind, CodecParams};

    #[test]
    fn stereo_round_trip_is_exact_and_odd_lengths_are_refused() {
        let params = CodecParams { channels: 2, ..CodecParams::new(CodecKind::L16, 16_000) };
        let (mut enc, mut dec) = (encoder(&params).unwrap(), decoder(&params).unwrap());
        let pcm: Vec<i16> = (0..640).map(|i| (i * 97 - 30_000) as i16).collect();
        let mut bytes = Vec::new();
        enc.encode(&pcm, &mut bytes).unwrap();
        assert_eq!(&bytes[..2], &pcm[0].to_be_bytes(), "network byte order");
        let mut out = Vec::new();
        assert_eq!(dec.decode(&bytes, &mut out).unwrap(), 320, "samples per channel");
        assert_eq!(out, pcm);
        assert!(dec.decode(&bytes[..6], &mut out).is_err(), "half a stereo frame");
    }
}
