//! G.722 at 64 kbit/s (16 kHz PCM; RTP clock 8000, RFC 3551 §4.5.2), from `ezk-g722`'s Rust
//! translation of spandsp's public-domain G.722.

use ezk_g722::libg722::{decoder, encoder, Bitrate};

use crate::{CodecError, RepeatConcealer};

/// A G.722 decoder: two 16 kHz samples per byte, any byte valid.
pub struct Decoder {
    inner: decoder::Decoder,
    plc: RepeatConcealer,
}

impl std::fmt::Debug for Decoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("G722Decoder").finish_non_exhaustive()
    }
}

impl Decoder {
    pub fn new() -> Self {
        // 64 kbit/s, unpacked bytes, 16 kHz output.
        Decoder { inner: decoder::Decoder::new(Bitrate::Mode1_64000, false, false), plc: RepeatConcealer::default() }
    }
}

impl crate::Decoder for Decoder {
    fn sample_rate(&self) -> u32 {
        16_000
    }
    fn channels(&self) -> u8 {
        1
    }
    fn decode(&mut self, payload: &[u8], pcm: &mut Vec<i16>) -> Result<usize, CodecError> {
        let decoded = self.inner.decode(payload);
        self.plc.decoded(&decoded);
        pcm.extend_from_slice(&decoded);
        Ok(decoded.len())
    }
    fn conceal(&mut self, samples: usize, pcm: &mut Vec<i16>) -> Result<usize, CodecError> {
        Ok(self.plc.conceal(samples, pcm))
    }
}

/// A G.722 encoder: an even number of 16 kHz samples in, half as many bytes out.
pub struct Encoder {
    inner: encoder::Encoder,
}

impl std::fmt::Debug for Encoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("G722Encoder").finish_non_exhaustive()
    }
}

impl Encoder {
    pub fn new() -> Self {
        // 64 kbit/s, 16 kHz input, unpacked bytes.
        Encoder { inner: encoder::Encoder::new(Bitrate::Mode1_64000, false, false) }
    }
}

impl crate::Encoder for Encoder {
    fn sample_rate(&self) -> u32 {
        16_000
    }
    fn channels(&self) -> u8 {
        1
    }
    fn encode(&mut self, pcm: &[i16], out: &mut Vec<u8>) -> Result<usize, CodecError> {
        if pcm.len() % 2 != 0 {
            return Err(CodecError::Unsupported {
                codec: "G722",
                field: "frame length",
                value: pcm.len() as u32,
                allowed: "an even number of samples",
            });
        }
        let bytes = self.inner.encode(pcm);
        out.extend_from_slice(&bytes);
        Ok(bytes.len())
    }
}

#[cfg(test)]
mod tests {
    use crate::signal::{best_lag, snr_db, speech_like};
    use crate::{decoder, encoder, CodecKind, CodecParams};
    use proptest::prelude::*;

    #[test]
    fn speech_round_trip_keeps_at_least_15_db_snr_after_the_codec_delay() {
        let params = CodecParams::new(CodecKind::G722, 16_000);
        let (mut enc, mut dec) = (encoder(&params).unwrap(), decoder(&params).unwrap());
        let signal = speech_like(16_000, 1.0);
        let (mut bytes, mut out) = (Vec::new(), Vec::new());
        for frame in signal.chunks(320) {
            bytes.clear();
            assert_eq!(enc.encode(frame, &mut bytes).unwrap(), 160, "64 kbit/s: 160 bytes per 20 ms");
            dec.decode(&bytes, &mut out).unwrap();
        }
        let lag = best_lag(&signal, &out, 64);
        let snr = snr_db(&signal, &out, lag);
        assert!(snr >= 15.0, "SNR {snr:.1} dB at lag {lag}");
    }

    proptest! {
        #[test]
        fn any_payload_decodes_without_panicking(payload in proptest::collection::vec(any::<u8>(), 0..400)) {
            let mut dec = decoder(&CodecParams::new(CodecKind::G722, 16_000)).unwrap();
            let mut out = Vec::new();
            prop_assert_eq!(dec.decode(&payload, &mut out).unwrap(), 2 * payload.len());
        }
    }
}
