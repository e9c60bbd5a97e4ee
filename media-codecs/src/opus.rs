//! Opus through libopus (`opusic-c`, linked to the system's libopus): decode to and encode from
//! 8/12/16/24/48 kHz mono or stereo, with libopus's concealment, in-band FEC, DTX, bitrate and
//! complexity. The RTP clock is always 48 kHz (RFC 7587).

use opusic_c::{Application, Bitrate, Channels, InbandFec, SampleRate};

use crate::{CodecError, CodecParams};

/// Most samples per channel in one Opus packet: 120 ms at 48 kHz.
const MAX_FRAME: usize = 5760;
/// Largest payload the encoder may produce (RFC 6716 §3.4 packets are at most 1275 bytes per
/// frame; 1500 fits an Ethernet MTU).
const MAX_PAYLOAD: usize = 1500;

fn library(code: opusic_c::ErrorCode) -> CodecError {
    CodecError::Library { codec: "opus", code: code as i32 }
}

fn rate(hz: u32) -> SampleRate {
    match hz {
        8000 => SampleRate::Hz8000,
        12_000 => SampleRate::Hz12000,
        16_000 => SampleRate::Hz16000,
        24_000 => SampleRate::Hz24000,
        _ => SampleRate::Hz48000,
    }
}

fn channels(n: u8) -> Channels {
    if n == 2 {
        Channels::Stereo
    } else {
        Channels::Mono
    }
}

/// An Opus decoder.
pub struct Decoder {
    inner: opusic_c::Decoder,
    rate: u32,
    channels: u8,
    /// libopus writes unsigned 16-bit words (the same bits as i16): a reused scratch buffer.
    scratch: Vec<u16>,
}

impl std::fmt::Debug for Decoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpusDecoder").field("rate", &self.rate).field("channels", &self.channels).finish_non_exhaustive()
    }
}

impl Decoder {
    pub fn new(params: &CodecParams) -> Result<Self, CodecError> {
        let inner = opusic_c::Decoder::new(channels(params.channels), rate(params.rate)).map_err(library)?;
        Ok(Decoder { inner, rate: params.rate, channels: params.channels, scratch: vec![0; MAX_FRAME * usize::from(params.channels)] })
    }

    fn run(&mut self, payload: &[u8], samples: usize, fec: bool, pcm: &mut Vec<i16>) -> Result<usize, CodecError> {
        let ch = usize::from(self.channels);
        // A lost frame's length must be given exactly; a packet's is whatever it holds.
        let len = if payload.is_empty() || fec { samples.min(MAX_FRAME) * ch } else { self.scratch.len() };
        let out = self.scratch.get_mut(..len).unwrap_or_default();
        let n = self.inner.decode_to_slice(payload, out, fec).map_err(|e| match e {
            opusic_c::ErrorCode::InvalidPacket | opusic_c::ErrorCode::BufferTooSmall => {
                CodecError::Corrupt { codec: "opus", why: "libopus refused the packet" }
            }
            other => library(other),
        })?;
        pcm.extend(self.scratch.iter().take(n * ch).map(|&s| s as i16));
        Ok(n)
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
        if payload.is_empty() {
            return Err(CodecError::Corrupt { codec: "opus", why: "empty payload" });
        }
        self.run(payload, 0, false, pcm)
    }
    fn conceal(&mut self, samples: usize, pcm: &mut Vec<i16>) -> Result<usize, CodecError> {
        self.run(&[], samples, false, pcm)
    }
    fn decode_fec(&mut self, next_payload: &[u8], samples: usize, pcm: &mut Vec<i16>) -> Result<usize, CodecError> {
        self.run(next_payload, samples, true, pcm)
    }
}

/// An Opus encoder (VoIP application).
pub struct Encoder {
    inner: opusic_c::Encoder,
    rate: u32,
    channels: u8,
    scratch: Vec<u16>,
}

impl std::fmt::Debug for Encoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpusEncoder").field("rate", &self.rate).field("channels", &self.channels).finish_non_exhaustive()
    }
}

impl Encoder {
    pub fn new(params: &CodecParams) -> Result<Self, CodecError> {
        let mut inner = opusic_c::Encoder::new(channels(params.channels), rate(params.rate), Application::Voip).map_err(library)?;
        let s = params.opus;
        inner.set_bitrate(s.bitrate.map_or(Bitrate::Auto, Bitrate::Value)).map_err(library)?;
        inner.set_complexity(s.complexity).map_err(library)?;
        inner.set_inband_fec(if s.fec { InbandFec::Mode1 } else { InbandFec::Off }).map_err(library)?;
        inner.set_packet_loss(s.expected_loss_pct).map_err(library)?;
        inner.set_dtx(s.dtx).map_err(library)?;
        Ok(Encoder { inner, rate: params.rate, channels: params.channels, scratch: Vec::with_capacity(MAX_FRAME * 2) })
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
        let per_channel = pcm.len() / usize::from(self.channels);
        // 2.5, 5, 10, 20, 40 or 60 ms.
        let ms_x2 = per_channel * 2000 / self.rate as usize;
        if ![5, 10, 20, 40, 80, 120].contains(&ms_x2) || per_channel * 2000 % self.rate as usize != 0 {
            return Err(CodecError::Unsupported {
                codec: "opus",
                field: "frame length",
                value: per_channel as u32,
                allowed: "2.5, 5, 10, 20, 40 or 60 ms of samples",
            });
        }
        self.scratch.clear();
        self.scratch.extend(pcm.iter().map(|&s| s as u16));
        let start = out.len();
        out.resize(start + MAX_PAYLOAD, 0);
        let result = self.inner.encode_to_slice(&self.scratch, out.get_mut(start..).unwrap_or_default());
        match result {
            Ok(n) => {
                out.truncate(start + n);
                Ok(n)
            }
            Err(e) => {
                out.truncate(start);
                Err(library(e))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::signal::{best_lag, rms, spectral_snr_db, speech_like};
    use crate::{decoder, encoder, CodecError, CodecKind, CodecParams, OpusSettings};
    use proptest::prelude::*;

    fn round_trip(params: &CodecParams, seconds: f64) -> (Vec<i16>, Vec<i16>, Vec<usize>) {
        let (mut enc, mut dec) = (encoder(params).unwrap(), decoder(params).unwrap());
        let mono = speech_like(params.rate, seconds);
        let signal: Vec<i16> = mono.iter().flat_map(|&s| std::iter::repeat_n(s, usize::from(params.channels))).collect();
        let frame = params.rate as usize / 50 * usize::from(params.channels);
        let (mut bytes, mut out, mut sizes) = (Vec::new(), Vec::new(), Vec::new());
        for chunk in signal.chunks_exact(frame) {
            bytes.clear();
            sizes.push(enc.encode(chunk, &mut bytes).unwrap());
            dec.decode(&bytes, &mut out).unwrap();
        }
        (signal, out, sizes)
    }

    // Opus (SILK and hybrid modes, as the VoIP application picks for speech) keeps the spectral
    // envelope, not the waveform: judged by the spectral SNR (phase-blind), with the bounds below.
    #[test]
    fn speech_at_48_khz_and_32_kbits_keeps_its_spectrum() {
        let params = CodecParams {
            opus: OpusSettings { bitrate: Some(32_000), complexity: 10, ..Default::default() },
            ..CodecParams::new(CodecKind::Opus, 48_000)
        };
        let (signal, out, sizes) = round_trip(&params, 2.0);
        let lag = best_lag(&signal, &out, 960);
        let snr = spectral_snr_db(&signal[48_000..], &out[48_000..], lag, 48_000, 8000.0);
        assert!(snr >= 12.0, "spectral SNR {snr:.1} dB at lag {lag}");
        let mean = sizes.iter().sum::<usize>() as f64 / sizes.len() as f64;
        assert!((50.0..=110.0).contains(&mean), "32 kbit/s is ~80 bytes per 20 ms, got {mean:.0}");
    }

    #[test]
    fn narrowband_decoding_at_8_khz_and_stereo_work() {
        let nb = CodecParams::new(CodecKind::Opus, 8000);
        let (signal, out, _) = round_trip(&nb, 1.0);
        assert_eq!(out.len(), signal.len(), "decoded straight to 8 kHz, no resampling");
        let lag = best_lag(&signal, &out, 320);
        let snr = spectral_snr_db(&signal[4000..], &out[4000..], lag, 8000, 3800.0);
        assert!(snr >= 10.0, "narrowband spectral SNR {snr:.1} dB at lag {lag}");
        let stereo = CodecParams { channels: 2, ..CodecParams::new(CodecKind::Opus, 48_000) };
        let (signal, out, _) = round_trip(&stereo, 0.5);
        assert_eq!(out.len(), signal.len(), "interleaved stereo");
    }

    #[test]
    fn a_lost_frame_is_concealed_and_fec_rebuilds_it_from_the_next_packet() {
        let params = CodecParams {
            opus: OpusSettings { fec: true, expected_loss_pct: 20, bitrate: Some(24_000), ..Default::default() },
            ..CodecParams::new(CodecKind::Opus, 16_000)
        };
        let (mut enc, mut dec) = (encoder(&params).unwrap(), decoder(&params).unwrap());
        let signal = speech_like(16_000, 1.0);
        let packets: Vec<Vec<u8>> = signal
            .chunks_exact(320)
            .map(|c| {
                let mut b = Vec::new();
                enc.encode(c, &mut b).unwrap();
                b
            })
            .collect();
        let mut out = Vec::new();
        for p in &packets[..20] {
            dec.decode(p, &mut out).unwrap();
        }
        // Packet 20 lost: conceal it; or, knowing packet 21, rebuild it.
        let mut concealed = Vec::new();
        assert_eq!(dec.conceal(320, &mut concealed).unwrap(), 320);
        assert!(rms(&concealed) > 0.0, "concealment is not silence right after speech");
        let mut rebuilt = Vec::new();
        assert_eq!(dec.decode_fec(&packets[21], 320, &mut rebuilt).unwrap(), 320);
        assert_eq!(rebuilt.len(), 320);
    }

    #[test]
    fn bad_parameters_name_the_field() {
        let bad = |p: CodecParams| match encoder(&p) {
            Err(CodecError::Unsupported { field, .. }) => field,
            other => panic!("{other:?}"),
        };
        assert_eq!(bad(CodecParams::new(CodecKind::Opus, 44_100)), "rate");
        assert_eq!(bad(CodecParams { channels: 3, ..CodecParams::new(CodecKind::Opus, 48_000) }), "channels");
        assert_eq!(
            bad(CodecParams { opus: OpusSettings { complexity: 11, ..Default::default() }, ..CodecParams::new(CodecKind::Opus, 48_000) }),
            "complexity"
        );
        assert_eq!(
            bad(CodecParams {
                opus: OpusSettings { bitrate: Some(1000), ..Default::default() },
                ..CodecParams::new(CodecKind::Opus, 48_000)
            }),
            "bitrate"
        );
        let mut enc = encoder(&CodecParams::new(CodecKind::Opus, 48_000)).unwrap();
        assert!(matches!(enc.encode(&[0; 333], &mut Vec::new()), Err(CodecError::Unsupported { field: "frame length", .. })));
    }

    proptest! {
        #[test]
        fn any_payload_is_decoded_or_refused_without_panicking(payload in proptest::collection::vec(any::<u8>(), 0..300)) {
            let mut dec = decoder(&CodecParams::new(CodecKind::Opus, 48_000)).unwrap();
            let mut out = Vec::new();
            match dec.decode(&payload, &mut out) {
                Ok(n) => prop_assert_eq!(out.len(), n),
                Err(e) => prop_assert!(matches!(e, CodecError::Corrupt { .. }), "{e:?}"),
            }
        }
    }
}
