//! G.729 Annex A (8 kHz PCM, 8 kbit/s; RTP clock 8000, RFC 3551 §4.5.6) from Debian's bcg729.
//!
//! Built only with the `g729` cargo feature: bcg729 is GPL-licensed, so a media plane built
//! with it is GPL as a whole when distributed; the default build has no GPL code.
//!
//! A payload is whole 10 ms frames of 10 bytes, optionally ended by a 2-byte SID frame (Annex B
//! comfort noise). The encoder runs without VAD (`annexb=no`), so it makes only whole frames.

use crate::CodecError;

/// Samples per 10 ms frame.
const FRAME: usize = 80;
/// Bytes of a voice frame and of a SID frame.
const VOICE: usize = 10;
const SID: usize = 2;

/// The only unsafe code of this crate: bcg729's C API. Each context is created and freed here,
/// and the buffers handed over have the sizes its headers document.
#[allow(unsafe_code)]
mod ffi {
    use std::ptr::NonNull;

    #[repr(C)]
    struct DecoderContext {
        _private: [u8; 0],
    }
    #[repr(C)]
    struct EncoderContext {
        _private: [u8; 0],
    }

    #[link(name = "bcg729")]
    extern "C" {
        fn initBcg729DecoderChannel() -> *mut DecoderContext;
        fn closeBcg729DecoderChannel(ctx: *mut DecoderContext);
        fn bcg729Decoder(
            ctx: *mut DecoderContext,
            bitstream: *const u8,
            bitstream_len: u8,
            frame_erasure: u8,
            sid_frame: u8,
            rfc3389_payload: u8,
            signal: *mut i16,
        );
        fn initBcg729EncoderChannel(enable_vad: u8) -> *mut EncoderContext;
        fn closeBcg729EncoderChannel(ctx: *mut EncoderContext);
        fn bcg729Encoder(ctx: *mut EncoderContext, input: *const i16, bitstream: *mut u8, bitstream_len: *mut u8);
    }

    /// One bcg729 decoder channel.
    pub struct Decoder(NonNull<DecoderContext>);

    // SAFETY: the context is plain heap state owned by this value alone; bcg729 keeps no
    // thread-local or global state for it, so it may move to another thread.
    unsafe impl Send for Decoder {}

    impl Decoder {
        pub fn new() -> Option<Self> {
            // SAFETY: no arguments; returns a fresh context or null on allocation failure.
            NonNull::new(unsafe { initBcg729DecoderChannel() }).map(Decoder)
        }

        /// Decodes one frame (`frame` is 10 bytes, or 2 for a SID frame, or empty with `erased`)
        /// into 80 samples.
        pub fn frame(&mut self, frame: &[u8], erased: bool, out: &mut [i16; super::FRAME]) {
            // bcg729 may read a whole voice frame whatever the length says (an erased frame
            // included): it always gets 10 readable bytes.
            let mut bits = [0u8; super::VOICE];
            let len = frame.len().min(super::VOICE);
            bits[..len].copy_from_slice(&frame[..len]);
            let sid = u8::from(len == super::SID);
            // SAFETY: the context is live (freed only in Drop); `bits` is 10 valid bytes, the
            // most bcg729 reads; `out` has the 80 samples one call writes.
            unsafe { bcg729Decoder(self.0.as_ptr(), bits.as_ptr(), len as u8, u8::from(erased), sid, 0, out.as_mut_ptr()) }
        }
    }

    impl Drop for Decoder {
        fn drop(&mut self) {
            // SAFETY: the context came from initBcg729DecoderChannel and is freed once.
            unsafe { closeBcg729DecoderChannel(self.0.as_ptr()) }
        }
    }

    /// One bcg729 encoder channel, without VAD.
    pub struct Encoder(NonNull<EncoderContext>);

    // SAFETY: as for Decoder.
    unsafe impl Send for Encoder {}

    impl Encoder {
        pub fn new() -> Option<Self> {
            // SAFETY: VAD off; returns a fresh context or null on allocation failure.
            NonNull::new(unsafe { initBcg729EncoderChannel(0) }).map(Encoder)
        }

        /// Encodes 80 samples into one frame; returns its length (10).
        pub fn frame(&mut self, pcm: &[i16; super::FRAME], out: &mut [u8; super::VOICE]) -> usize {
            let mut len = 0u8;
            // SAFETY: the context is live; `pcm` has the 80 samples read, `out` room for the
            // 10 bytes written (VAD is off, so no longer frame exists).
            unsafe { bcg729Encoder(self.0.as_ptr(), pcm.as_ptr(), out.as_mut_ptr(), &mut len) };
            usize::from(len).min(super::VOICE)
        }
    }

    impl Drop for Encoder {
        fn drop(&mut self) {
            // SAFETY: the context came from initBcg729EncoderChannel and is freed once.
            unsafe { closeBcg729EncoderChannel(self.0.as_ptr()) }
        }
    }
}

fn no_memory() -> CodecError {
    CodecError::Library { codec: "G729", code: -1 }
}

/// A G.729 decoder.
pub struct Decoder {
    inner: ffi::Decoder,
}

impl std::fmt::Debug for Decoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("G729Decoder").finish_non_exhaustive()
    }
}

impl Decoder {
    pub fn new() -> Result<Self, CodecError> {
        Ok(Decoder { inner: ffi::Decoder::new().ok_or_else(no_memory)? })
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
        let sid = payload.len() % VOICE == SID;
        if payload.is_empty() || !(payload.len() % VOICE == 0 || sid) {
            return Err(CodecError::Corrupt { codec: "G729", why: "not whole 10-byte frames (and a 2-byte SID frame)" });
        }
        let mut out = [0i16; FRAME];
        let mut samples = 0;
        for frame in payload.chunks(VOICE) {
            self.inner.frame(frame, false, &mut out);
            pcm.extend_from_slice(&out);
            samples += FRAME;
        }
        Ok(samples)
    }
    fn conceal(&mut self, samples: usize, pcm: &mut Vec<i16>) -> Result<usize, CodecError> {
        let mut out = [0i16; FRAME];
        for _ in 0..samples.div_ceil(FRAME) {
            self.inner.frame(&[], true, &mut out);
            pcm.extend_from_slice(&out);
        }
        Ok(samples.div_ceil(FRAME) * FRAME)
    }
}

/// A G.729 encoder (no VAD).
pub struct Encoder {
    inner: ffi::Encoder,
}

impl std::fmt::Debug for Encoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("G729Encoder").finish_non_exhaustive()
    }
}

impl Encoder {
    pub fn new() -> Result<Self, CodecError> {
        Ok(Encoder { inner: ffi::Encoder::new().ok_or_else(no_memory)? })
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
        if pcm.is_empty() || pcm.len() % FRAME != 0 {
            return Err(CodecError::Unsupported {
                codec: "G729",
                field: "samples",
                value: pcm.len() as u32,
                allowed: "multiples of 80 (10 ms)",
            });
        }
        let mut written = 0;
        let mut frame = [0u8; VOICE];
        for chunk in pcm.chunks_exact(FRAME) {
            let mut input = [0i16; FRAME];
            input.copy_from_slice(chunk);
            let n = self.inner.frame(&input, &mut frame);
            out.extend_from_slice(&frame[..n]);
            written += n;
        }
        Ok(written)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::signal::{best_lag, spectral_snr_db, speech_like};
    use crate::{Decoder as _, Encoder as _};

    #[test]
    fn g729_round_trip_keeps_speech_within_its_snr_bound() {
        let (mut enc, mut dec) = (Encoder::new().unwrap(), Decoder::new().unwrap());
        let source = speech_like(8000, 2.0);
        let mut pcm = Vec::new();
        for chunk in source.chunks_exact(160) {
            let mut payload = Vec::new();
            assert_eq!(enc.encode(chunk, &mut payload).unwrap(), 20, "two 10-byte frames per 20 ms");
            dec.decode(&payload, &mut pcm).unwrap();
        }
        // G.729 is a CELP codec: it keeps the spectrum's envelope and pitch, not the waveform, so
        // it is judged like Opus, by the spectral SNR of 20 ms frames.
        let lag = best_lag(&source, &pcm, 200);
        let snr = spectral_snr_db(&source[2000..], &pcm[2000..], lag, 8000, 3400.0);
        assert!(snr >= 12.0, "G.729 spectral SNR {snr:.1} dB (bound 12 dB) at lag {lag}");
    }

    #[test]
    fn bad_g729_payloads_are_refused_and_losses_concealed() {
        let mut dec = Decoder::new().unwrap();
        let mut pcm = Vec::new();
        assert!(dec.decode(&[0; 7], &mut pcm).is_err());
        assert!(dec.decode(&[], &mut pcm).is_err());
        assert_eq!(dec.decode(&[0; 12], &mut pcm).unwrap(), 160, "a voice frame and a SID frame");
        assert_eq!(dec.conceal(160, &mut pcm).unwrap(), 160);
        let mut enc = Encoder::new().unwrap();
        assert!(enc.encode(&[0; 100], &mut Vec::new()).is_err());
    }
}
