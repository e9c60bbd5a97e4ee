//! # media-codecs
//!
//! The audio codecs and the resampler the media engine transcodes with, behind one interface:
//! a [`Decoder`] turns one RTP payload into 16-bit PCM at the codec's sample rate (and conceals
//! a lost frame), an [`Encoder`] turns PCM into one payload, a [`Resampler`] converts between
//! 8, 16 and 48 kHz in 20 ms chunks.
//!
//! ```text
//!  RTP payload ─► Decoder ─► PCM @ codec rate ─► Resampler ─► PCM @ other rate ─► Encoder ─► RTP payload
//!   (leg A's codec)             (conceal() on loss)                                (leg B's codec)
//! ```
//!
//! | codec | RTP clock | PCM rate | from |
//! | --- | --- | --- | --- |
//! | PCMU, PCMA (G.711) | 8000 | 8000 | written here: the ITU-T G.711 bit manipulation, a few lines each |
//! | L16 | its rate | its rate | written here: big-endian samples |
//! | G.722 | 8000 (RFC 3551) | 16000 | `ezk-g722` (spandsp's public-domain G.722, in Rust) |
//! | Opus | 48000 (RFC 7587) | 8, 12, 16, 24 or 48 kHz, mono or stereo | libopus through `opusic-c` |
//! | G.729 (Annex A) | 8000 | 8000 | Debian's bcg729 (GPL), only with the `g729` cargo feature |
//!
//! G.729 is off by default so the default build has no GPL code: a build with `--features g729`
//! links bcg729 and is GPL as a whole when distributed. Without the feature, `G729` is not a
//! codec name this crate knows (offers keep it for relaying; nothing transcodes to or from it).
//!
//! **Loss concealment.** Opus conceals with libopus's own PLC (and in-band FEC when the next
//! packet carries it: [`Decoder::decode_fec`]). For the waveform codecs, a lost frame repeats the
//! last decoded one at half the level each time, then silence after three: simple and click-free,
//! not G.711 Appendix I's pitch-synchronous PLC.
//!
//! Nothing here panics on any payload: a payload a codec cannot decode is [`CodecError::Corrupt`].
//! Nothing reads a clock or touches I/O. [`signal`] has the test signals and quality measures
//! (speech-like source, waveform and spectral SNR) the tests of this crate and of the media
//! plane judge transcoding with.
// Unsafe code only in `g729::ffi` (bcg729's C API), with the feature on.
#![deny(unsafe_code)]

mod g711;
mod g722;
#[cfg(feature = "g729")]
mod g729;
mod l16;
mod opus;
mod resample;

pub use resample::Resampler;

/// A codec this crate can decode and encode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CodecKind {
    /// G.711 μ-law.
    Pcmu,
    /// G.711 A-law.
    Pcma,
    /// Linear 16-bit big-endian PCM (RFC 3551 §4.5.11).
    L16,
    /// G.722 at 64 kbit/s.
    G722,
    /// Opus (RFC 6716, RTP payload RFC 7587).
    Opus,
    /// G.729 Annex A (with the `g729` feature).
    G729,
}

impl CodecKind {
    /// The encoding name used in SDP `a=rtpmap` (case-insensitive there).
    pub fn name(self) -> &'static str {
        match self {
            CodecKind::Pcmu => "PCMU",
            CodecKind::Pcma => "PCMA",
            CodecKind::L16 => "L16",
            CodecKind::G722 => "G722",
            CodecKind::Opus => "opus",
            CodecKind::G729 => "G729",
        }
    }

    /// The codec named `name` in an `a=rtpmap`, if supported.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::BUILT.iter().copied().find(|k| k.name().eq_ignore_ascii_case(name))
    }

    /// The codecs this build decodes and encodes.
    #[cfg(feature = "g729")]
    pub const BUILT: &'static [CodecKind] =
        &[CodecKind::Pcmu, CodecKind::Pcma, CodecKind::L16, CodecKind::G722, CodecKind::Opus, CodecKind::G729];
    /// The codecs this build decodes and encodes.
    #[cfg(not(feature = "g729"))]
    pub const BUILT: &'static [CodecKind] = &[CodecKind::Pcmu, CodecKind::Pcma, CodecKind::L16, CodecKind::G722, CodecKind::Opus];

    /// The RTP timestamp clock of the codec (`rtpmap` rate): what one PCM sample per channel
    /// advances the RTP timestamp by is `clock_rate / sample_rate`.
    pub fn rtp_clock(self, params: &CodecParams) -> u32 {
        match self {
            CodecKind::Pcmu | CodecKind::Pcma | CodecKind::G722 | CodecKind::G729 => 8000,
            CodecKind::L16 => params.rate,
            CodecKind::Opus => 48_000,
        }
    }
}

/// Opus encoder settings (RFC 7587 fmtp and libopus controls).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpusSettings {
    /// Target bitrate in bit/s; `None`: libopus chooses from rate and channels.
    pub bitrate: Option<u32>,
    /// In-band forward error correction (`useinbandfec=1`).
    pub fec: bool,
    /// Expected packet loss in percent, which sizes the FEC (0–100).
    pub expected_loss_pct: u8,
    /// Discontinuous transmission (`usedtx=1`): near-empty packets during silence.
    pub dtx: bool,
    /// Encoder complexity, 0 (cheapest) to 10 (best).
    pub complexity: u8,
}

impl Default for OpusSettings {
    fn default() -> Self {
        OpusSettings { bitrate: None, fec: false, expected_loss_pct: 0, dtx: false, complexity: 5 }
    }
}

/// What a decoder or encoder is made for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CodecParams {
    /// The codec.
    pub kind: CodecKind,
    /// PCM sample rate: fixed for G.711 (8000) and G.722 (16000); L16's rate; for Opus the rate
    /// PCM is decoded to and encoded from (8000, 12000, 16000, 24000 or 48000).
    pub rate: u32,
    /// Channels: 1, or 2 for Opus and L16.
    pub channels: u8,
    /// Opus only.
    pub opus: OpusSettings,
}

impl CodecParams {
    /// The usual parameters of `kind`, mono: G.711 at 8 kHz, G.722 at 16 kHz, L16 and Opus at
    /// `rate` (Opus decoded straight to the rate the other side needs avoids a resampling).
    pub fn new(kind: CodecKind, rate: u32) -> Self {
        let rate = match kind {
            CodecKind::Pcmu | CodecKind::Pcma | CodecKind::G729 => 8000,
            CodecKind::G722 => 16_000,
            CodecKind::L16 | CodecKind::Opus => rate,
        };
        CodecParams { kind, rate, channels: 1, opus: OpusSettings::default() }
    }
}

/// Why a codec refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CodecError {
    // ---- bad input from the network ----
    /// The payload cannot be decoded by this codec.
    #[error("undecodable {codec} payload: {why}")]
    Corrupt {
        /// The codec.
        codec: &'static str,
        /// What is wrong.
        why: &'static str,
    },
    // ---- bad parameters from the API ----
    /// A parameter the codec does not support; names it.
    #[error("{codec}: {field} {value} is not supported ({allowed})")]
    Unsupported {
        /// The codec.
        codec: &'static str,
        /// The parameter (`rate`, `channels`, `bitrate`, `complexity`, ...).
        field: &'static str,
        /// Its value.
        value: u32,
        /// What would be accepted.
        allowed: &'static str,
    },
    // ---- the library failed ----
    /// libopus (or another library) returned an error code.
    #[error("{codec} library error {code}")]
    Library {
        /// The codec.
        codec: &'static str,
        /// Its error code.
        code: i32,
    },
}

/// Turns RTP payloads of one codec into PCM.
pub trait Decoder: Send + std::fmt::Debug {
    /// PCM sample rate of the output.
    fn sample_rate(&self) -> u32;
    /// Channels of the output (interleaved).
    fn channels(&self) -> u8;
    /// Decodes one payload, appending its samples (interleaved) to `pcm`; returns the samples
    /// appended per channel.
    fn decode(&mut self, payload: &[u8], pcm: &mut Vec<i16>) -> Result<usize, CodecError>;
    /// Conceals one lost frame of `samples` per channel, appending it to `pcm`.
    fn conceal(&mut self, samples: usize, pcm: &mut Vec<i16>) -> Result<usize, CodecError>;
    /// Rebuilds the lost frame before `next_payload` from the redundancy `next_payload` carries
    /// (Opus in-band FEC); codecs without it conceal.
    fn decode_fec(&mut self, next_payload: &[u8], samples: usize, pcm: &mut Vec<i16>) -> Result<usize, CodecError> {
        let _ = next_payload;
        self.conceal(samples, pcm)
    }
}

/// Turns PCM into RTP payloads of one codec.
pub trait Encoder: Send + std::fmt::Debug {
    /// PCM sample rate of the input.
    fn sample_rate(&self) -> u32;
    /// Channels of the input (interleaved).
    fn channels(&self) -> u8;
    /// Encodes one frame (a whole packet's worth: 10–60 ms), appending the payload to `out`;
    /// returns its length.
    fn encode(&mut self, pcm: &[i16], out: &mut Vec<u8>) -> Result<usize, CodecError>;
}

/// A decoder for `params`.
pub fn decoder(params: &CodecParams) -> Result<Box<dyn Decoder>, CodecError> {
    check(params)?;
    Ok(match params.kind {
        CodecKind::Pcmu => Box::new(g711::Decoder::new(g711::Law::Mu)),
        CodecKind::Pcma => Box::new(g711::Decoder::new(g711::Law::A)),
        CodecKind::L16 => Box::new(l16::Decoder::new(params.rate, params.channels)),
        CodecKind::G722 => Box::new(g722::Decoder::new()),
        CodecKind::Opus => Box::new(opus::Decoder::new(params)?),
        #[cfg(feature = "g729")]
        CodecKind::G729 => Box::new(g729::Decoder::new()?),
        #[cfg(not(feature = "g729"))]
        CodecKind::G729 => return Err(not_built()),
    })
}

/// An encoder for `params`.
pub fn encoder(params: &CodecParams) -> Result<Box<dyn Encoder>, CodecError> {
    check(params)?;
    Ok(match params.kind {
        CodecKind::Pcmu => Box::new(g711::Encoder::new(g711::Law::Mu)),
        CodecKind::Pcma => Box::new(g711::Encoder::new(g711::Law::A)),
        CodecKind::L16 => Box::new(l16::Encoder::new(params.rate, params.channels)),
        CodecKind::G722 => Box::new(g722::Encoder::new()),
        CodecKind::Opus => Box::new(opus::Encoder::new(params)?),
        #[cfg(feature = "g729")]
        CodecKind::G729 => Box::new(g729::Encoder::new()?),
        #[cfg(not(feature = "g729"))]
        CodecKind::G729 => return Err(not_built()),
    })
}

#[cfg(not(feature = "g729"))]
fn not_built() -> CodecError {
    CodecError::Unsupported { codec: "G729", field: "build", value: 0, allowed: "a media plane built with the g729 feature" }
}

fn check(params: &CodecParams) -> Result<(), CodecError> {
    let codec = params.kind.name();
    let unsupported = |field, value, allowed| Err(CodecError::Unsupported { codec, field, value, allowed });
    match params.kind {
        CodecKind::Pcmu | CodecKind::Pcma | CodecKind::G729 if params.rate != 8000 => unsupported("rate", params.rate, "8000"),
        CodecKind::G722 if params.rate != 16_000 => unsupported("rate", params.rate, "16000"),
        CodecKind::L16 if !(8000..=48_000).contains(&params.rate) => unsupported("rate", params.rate, "8000-48000"),
        CodecKind::Opus if ![8000, 12_000, 16_000, 24_000, 48_000].contains(&params.rate) => {
            unsupported("rate", params.rate, "8000, 12000, 16000, 24000 or 48000")
        }
        CodecKind::Pcmu | CodecKind::Pcma | CodecKind::G722 | CodecKind::G729 if params.channels != 1 => {
            unsupported("channels", u32::from(params.channels), "1")
        }
        _ if !(1..=2).contains(&params.channels) => unsupported("channels", u32::from(params.channels), "1 or 2"),
        CodecKind::Opus if params.opus.complexity > 10 => unsupported("complexity", u32::from(params.opus.complexity), "0-10"),
        CodecKind::Opus if params.opus.expected_loss_pct > 100 => {
            unsupported("expected_loss_pct", u32::from(params.opus.expected_loss_pct), "0-100")
        }
        CodecKind::Opus if params.opus.bitrate.is_some_and(|b| !(6000..=510_000).contains(&b)) => {
            unsupported("bitrate", params.opus.bitrate.unwrap_or_default(), "6000-510000")
        }
        _ => Ok(()),
    }
}

/// Concealment shared by the waveform codecs: the last frame again at half the level, three
/// times, then silence.
#[derive(Debug, Default)]
struct RepeatConcealer {
    last: Vec<i16>,
    losses: u32,
}

impl RepeatConcealer {
    /// Remembers a decoded frame.
    fn decoded(&mut self, frame: &[i16]) {
        self.last.clear();
        self.last.extend_from_slice(frame);
        self.losses = 0;
    }

    /// Appends `samples` concealed samples.
    fn conceal(&mut self, samples: usize, pcm: &mut Vec<i16>) -> usize {
        self.losses = self.losses.saturating_add(1);
        let shift = self.losses.min(16);
        if self.losses > 3 || self.last.is_empty() {
            pcm.extend(std::iter::repeat_n(0, samples));
        } else {
            pcm.extend((0..samples).map(|i| self.last.get(i % self.last.len()).map_or(0, |&s| s >> shift)));
        }
        samples
    }
}

pub mod dtmf;
pub mod prompt;
pub mod signal;
