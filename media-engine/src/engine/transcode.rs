//! One direction of a transcoding bridge: RTP of the source leg's codec in, RTP of the
//! destination leg's codec out.
//!
//! ```text
//!  RTP (from_pt) ─► payload ─► Decoder ─► PCM ─► Resampler ─► frame buffer ─► Encoder ─► RTP (to_pt)
//!                   seq gap: conceal the missing frames        whole ptime frames    own SSRC, seq, ts
//! ```
//!
//! The outgoing stream is the media plane's own: its SSRC, sequence number and timestamp start
//! from values drawn when the bridge is made and advance by one packet and one ptime at the
//! destination's clock, continuously, whatever the source does (loss, reordering, a new SSRC,
//! other packet sizes: repacketised to the destination's ptime). Losses of up to
//! [`MAX_CONCEALED`] packets are concealed by the decoder; longer gaps, a new source SSRC or a
//! timestamp jump resynchronise without filling. Late packets (behind the last one decoded) are
//! dropped and counted.

use media_codecs::dtmf::{Detection, DtmfDetector, ToneGenerator};
use media_codecs::{CodecError, CodecKind, CodecParams, Decoder, Encoder, Resampler};

use super::dtmf::TelephoneEvent;
use crate::wire::{write_rtp_header, RtpPacket, RTP_HEADER_LEN};

/// Most consecutive lost packets concealed before the stream is resynchronised instead.
pub const MAX_CONCEALED: u16 = 5;

/// What an endpoint sends and receives on a leg.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LegCodec {
    /// RTP payload type the endpoint uses for it.
    pub payload_type: u8,
    /// The codec and its parameters.
    pub params: CodecParams,
    /// Packet duration in milliseconds (10, 20, 30, 40 or 60).
    pub ptime_ms: u16,
    /// RTP payload type of RFC 4733 telephone-events (DTMF), at the codec's RTP clock, if the
    /// endpoint uses them.
    pub telephone_event: Option<u8>,
}

impl LegCodec {
    /// Whether media between legs of these codecs can be relayed as it is.
    pub fn relays_to(&self, other: &LegCodec) -> bool {
        self == other
    }

    /// RTP clock of the codec.
    pub fn rtp_clock(&self) -> u32 {
        self.params.kind.rtp_clock(&self.params)
    }
}

/// Why a transcoder could not be made (bad codec settings from the API).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TranscodeError {
    #[error(transparent)]
    Codec(#[from] CodecError),
    #[error("ptime {0} ms is not 10, 20, 30, 40 or 60")]
    Ptime(u16),
}

/// Counters of one transcoding direction, reported with the destination leg.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TranscodeCounters {
    /// Source packets decoded.
    pub decoded: u64,
    /// Lost source packets concealed.
    pub concealed: u64,
    /// Packets encoded and sent.
    pub encoded: u64,
    /// Payload bytes of the packets sent (audio and events), for sender reports.
    pub octets: u64,
    /// Source packets the decoder refused (undecodable), dropped.
    pub undecodable: u64,
    /// Source packets of a payload type that is not the source codec's, dropped.
    pub unknown_payload_type: u64,
    /// Source packets that arrived after a later one was decoded, dropped.
    pub late: u64,
    /// RFC 4733 event packets carried across (payload type, SSRC, sequence and timestamp
    /// rewritten into the outgoing stream).
    pub events: u64,
    /// Event packets dropped because the destination leg takes no telephone-events.
    pub events_not_carried: u64,
    /// Digits of RFC 4733 events played as in-band tones (the destination takes no events).
    pub digits_to_tones: u64,
    /// Digits heard as in-band tones and sent on as RFC 4733 events.
    pub tones_to_digits: u64,
    /// Digits injected over the API (as events or tones).
    pub digits_injected: u64,
}

/// Why a source packet was dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejected {
    /// Not the source codec's payload type.
    UnknownPayloadType,
    /// The codec could not decode it.
    Undecodable,
    /// Behind the last packet decoded.
    Late,
}

/// A stream the media plane makes (a transcoder's, a conference member's): payload type, SSRC,
/// and the next sequence number and timestamp, advanced by `ts_step` per packet.
#[derive(Debug, Clone, Copy)]
pub(super) struct RtpStream {
    pub pt: u8,
    pub ssrc: u32,
    pub seq: u16,
    pub ts: u32,
    pub ts_step: u32,
}

impl RtpStream {
    /// Encodes every whole `chunk` of `pending` with `encoder` into the next packet of the
    /// stream (built in `packet`, reused), calling `out` with each; returns packets and payload
    /// octets sent. A chunk the codec refuses is skipped.
    pub fn encode_pending(
        &mut self,
        encoder: &mut dyn Encoder,
        pending: &mut Vec<i16>,
        chunk: usize,
        packet: &mut Vec<u8>,
        out: &mut impl FnMut(&[u8]),
    ) -> (u64, u64) {
        let (mut sent, mut octets) = (0, 0);
        while chunk > 0 && pending.len() >= chunk {
            packet.clear();
            packet.resize(RTP_HEADER_LEN, 0);
            let encoded = encoder.encode(pending.get(..chunk).unwrap_or_default(), packet);
            pending.drain(..chunk);
            if encoded.is_err() {
                continue;
            }
            let _ = write_rtp_header(packet, self.pt, self.seq, self.ts, self.ssrc);
            self.seq = self.seq.wrapping_add(1);
            self.ts = self.ts.wrapping_add(self.ts_step);
            sent += 1;
            octets += (packet.len() - RTP_HEADER_LEN) as u64;
            out(packet);
        }
        (sent, octets)
    }
}

/// One direction of a transcoding bridge (see the module documentation).
pub struct Transcoder {
    from_pt: u8,
    /// Telephone-event payload types of the source and destination, and how the destination's
    /// RTP clock relates to the source's (durations are scaled by `to_clock / from_clock`).
    from_event_pt: Option<u8>,
    to_event_pt: Option<u8>,
    from_clock: u32,
    to_clock: u32,
    /// The source timestamp of the event being carried, and the outgoing timestamp it maps to.
    event_ts: Option<(u32, u32)>,
    decoder: Box<dyn Decoder>,
    resampler: Option<Resampler>,
    encoder: Box<dyn Encoder>,
    channels: usize,
    /// Samples per channel of one outgoing packet, at the encoder's rate.
    frame: usize,
    /// Decoded samples per channel of the last source packet (the size of a concealed one).
    last_frame: usize,
    last_seq: Option<u16>,
    last_ssrc: Option<u32>,
    /// The outgoing stream: the destination's payload type, the media plane's SSRC, the next
    /// sequence number and timestamp.
    stream: RtpStream,
    decoded: Vec<i16>,
    resampled: Vec<i16>,
    pending: Vec<i16>,
    packet: Vec<u8>,
    /// RFC 4733 events from the source played as tones (the destination takes no events).
    tones: Option<TonesOut>,
    /// In-band tones in the source's audio, found to be sent on as events.
    detector: Option<DtmfDetector>,
    event_out: Option<EventOut>,
    /// A digit heard in the source's audio and finished, for the engine's event stream.
    heard: Option<(char, u32)>,
    /// Digits asked for over the API, played into the outgoing stream one frame per
    /// [`tick`](Self::tick) (the source's audio is not sent meanwhile).
    injected: std::collections::VecDeque<Injected>,
    injecting: Option<Injecting>,
    /// Audio played into the outgoing stream instead of the source's (prompts, music on hold,
    /// tones), and the play that finished last, for the engine's event.
    playing: Option<Playing>,
    finished: Option<u64>,
    pub counters: TranscodeCounters,
}

/// Audio being played: PCM at the encoder's rate, mono.
#[derive(Debug)]
struct Playing {
    id: u64,
    pcm: std::sync::Arc<[i16]>,
    at: usize,
    looped: bool,
}

/// A digit to play: frames of tone (or events), then frames of silence.
#[derive(Debug, Clone, Copy)]
struct Injected {
    digit: char,
    on_frames: u32,
    pause_frames: u32,
}

/// The digit being played.
#[derive(Debug)]
struct Injecting {
    digit: Injected,
    frame: u32,
    /// Outgoing timestamp of its first frame (its RFC 4733 packets all carry it).
    event_ts: u32,
    generator: ToneGenerator,
}

/// Most digits queued at once for injection.
pub const MAX_INJECTED: usize = 64;

/// An RFC 4733 event being played as tones into the outgoing audio.
#[derive(Debug)]
struct TonesOut {
    generator: ToneGenerator,
    digit: char,
    /// The event's source timestamp (all its packets share it).
    source_ts: u32,
    /// Samples of it made so far, at the encoder's rate.
    made: usize,
    /// Its duration so far in the source's clock (from its last packet).
    duration: u32,
    ended: bool,
}

/// An event being sent for a digit heard in the source's audio.
#[derive(Debug, Clone, Copy)]
struct EventOut {
    event: u8,
    /// Outgoing timestamp when it began (all its packets carry it) and samples since, at the
    /// destination's RTP clock.
    ts: u32,
    first: bool,
}

impl std::fmt::Debug for Transcoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Transcoder")
            .field("from_pt", &self.from_pt)
            .field("to_pt", &self.stream.pt)
            .field("decoder", &self.decoder)
            .field("encoder", &self.encoder)
            .field("counters", &self.counters)
            .finish_non_exhaustive()
    }
}

impl Transcoder {
    /// A transcoder from `from` to `to`; the outgoing stream starts at `ssrc`, `seq`, `ts`
    /// (random values the caller draws).
    pub fn new(from: &LegCodec, to: &LegCodec, ssrc: u32, seq: u16, ts: u32) -> Result<Self, TranscodeError> {
        for c in [from, to] {
            if ![10, 20, 30, 40, 60].contains(&c.ptime_ms) {
                return Err(TranscodeError::Ptime(c.ptime_ms));
            }
        }
        // Opus is decoded straight to the rate the other side needs, and encoded from the rate
        // the other side delivers (libopus works at 8-48 kHz): a PCMU↔Opus bridge then neither
        // resamples nor codes more bandwidth than G.711 carries.
        let opus_rate = |other: u32| if [8000, 12_000, 16_000, 24_000, 48_000].contains(&other) { other } else { 48_000 };
        let mut from_params = from.params;
        let mut to_params = to.params;
        if from.params.kind == CodecKind::Opus && to.params.kind != CodecKind::Opus {
            from_params.rate = opus_rate(to.params.rate);
        }
        if to.params.kind == CodecKind::Opus && from.params.kind != CodecKind::Opus {
            to_params.rate = opus_rate(from.params.rate);
        }
        let decoder = media_codecs::decoder(&from_params)?;
        // Same channel count on both sides: the decoder is asked for the destination's layout
        // where it can (Opus downmixes itself); otherwise the channel counts must agree.
        if from.params.channels != to.params.channels {
            return Err(TranscodeError::Codec(CodecError::Unsupported {
                codec: to.params.kind.name(),
                field: "channels",
                value: u32::from(to.params.channels),
                allowed: "the source's channel count",
            }));
        }
        let encoder = media_codecs::encoder(&to_params)?;
        let resampler = (decoder.sample_rate() != encoder.sample_rate())
            .then(|| Resampler::new(decoder.sample_rate(), encoder.sample_rate(), to.params.channels))
            .transpose()?;
        let frame = encoder.sample_rate() as usize * usize::from(to.ptime_ms) / 1000;
        let ts_step = to.rtp_clock() * u32::from(to.ptime_ms) / 1000;
        let last_frame = decoder.sample_rate() as usize * usize::from(from.ptime_ms) / 1000;
        Ok(Transcoder {
            from_pt: from.payload_type,

            from_event_pt: from.telephone_event,
            to_event_pt: to.telephone_event,
            from_clock: from.rtp_clock(),
            to_clock: to.rtp_clock(),
            event_ts: None,
            channels: usize::from(to.params.channels),
            decoder,
            resampler,
            encoder,
            frame,
            last_frame,
            last_seq: None,
            last_ssrc: None,
            stream: RtpStream { pt: to.payload_type, ssrc, seq, ts, ts_step },
            decoded: Vec::new(),
            resampled: Vec::new(),
            pending: Vec::new(),
            packet: Vec::with_capacity(1500),
            tones: None,
            // Digits sent as tones by a source without events are found for a destination that
            // takes events.
            detector: (from.telephone_event.is_none() && to.telephone_event.is_some()).then(|| DtmfDetector::new(from_params.rate)),
            event_out: None,
            heard: None,
            injected: std::collections::VecDeque::new(),
            injecting: None,
            playing: None,
            finished: None,
            counters: TranscodeCounters::default(),
        })
    }

    /// Takes one source RTP packet and calls `out` with every packet it completes (zero, one or
    /// more, depending on the ptimes). A dropped packet is counted and reported.
    pub fn push(&mut self, rtp: &RtpPacket<&[u8]>, mut out: impl FnMut(&[u8])) -> Result<usize, Rejected> {
        if Some(rtp.payload_type()) == self.from_event_pt {
            return Ok(self.carry_event(rtp, out));
        }
        if rtp.payload_type() != self.from_pt {
            self.counters.unknown_payload_type += 1;
            return Err(Rejected::UnknownPayloadType);
        }
        let Ok(payload) = rtp.payload() else {
            self.counters.undecodable += 1;
            return Err(Rejected::Undecodable);
        };
        let seq = rtp.sequence_number();
        let same_source = self.last_ssrc == Some(rtp.ssrc());
        self.decoded.clear();
        if let (true, Some(last)) = (same_source, self.last_seq) {
            let gap = seq.wrapping_sub(last);
            if gap == 0 || gap > 0x8000 {
                self.counters.late += 1;
                return Err(Rejected::Late);
            }
            if (2..=MAX_CONCEALED + 1).contains(&gap) {
                for _ in 1..gap {
                    // Opus rebuilds the frame right before this packet from its FEC; the rest
                    // are concealed.
                    let result = if gap == 2 {
                        self.decoder.decode_fec(payload, self.last_frame, &mut self.decoded)
                    } else {
                        self.decoder.conceal(self.last_frame, &mut self.decoded)
                    };
                    if result.is_ok() {
                        self.counters.concealed += 1;
                    }
                }
            }
        }
        let before = self.decoded.len();
        match self.decoder.decode(payload, &mut self.decoded) {
            Ok(n) => {
                self.counters.decoded += 1;
                if n > 0 {
                    self.last_frame = n;
                }
            }
            Err(_) => {
                self.decoded.truncate(before);
                self.counters.undecodable += 1;
                return Err(Rejected::Undecodable);
            }
        }
        self.last_seq = Some(seq);
        self.last_ssrc = Some(rtp.ssrc());
        let mut sent = self.detect_tones(&mut out);
        // A tone whose End packets were all lost ends when the source's audio is past it.
        let ptime_src = self.last_frame as u32 * self.from_clock / self.decoder.sample_rate().max(1);
        if let Some(t) = self.tones.as_mut().filter(|t| !t.ended) {
            let into = rtp.timestamp().wrapping_sub(t.source_ts) as i32;
            if into > 0 && into as u32 > t.duration.saturating_add(3 * ptime_src) {
                t.ended = true;
            }
        }
        if self.tones.as_ref().is_some_and(|t| !t.ended) || self.generating() {
            // An event from the source is being played as tones, or injected digits or a play
            // make the stream: the source's audio is not sent meanwhile.
            return Ok(sent);
        }
        if self.event_out.is_some() {
            // A digit heard in the audio goes as events: the audio carries silence meanwhile.
            self.decoded.iter_mut().for_each(|s| *s = 0);
        }
        let pcm: &[i16] = match &mut self.resampler {
            Some(r) => {
                self.resampled.clear();
                // A resampler error leaves this packet's audio out; the stream goes on.
                let _ = r.process(&self.decoded, &mut self.resampled);
                &self.resampled
            }
            None => &self.decoded,
        };
        self.pending.extend_from_slice(pcm);
        sent += self.encode_pending(&mut out);
        Ok(sent)
    }

    /// Encodes every whole frame of `pending` and sends it on; returns how many.
    fn encode_pending(&mut self, out: &mut impl FnMut(&[u8])) -> usize {
        let chunk = self.frame * self.channels;
        let (sent, octets) = self.stream.encode_pending(self.encoder.as_mut(), &mut self.pending, chunk, &mut self.packet, out);
        self.counters.encoded += sent;
        self.counters.octets += octets;
        sent as usize
    }

    /// Queues `digits` to play into the outgoing stream, each `on_ms` of tone (or RFC 4733 events
    /// when the destination takes them) and `pause_ms` of silence. Returns how many were queued
    /// (unknown characters are skipped; at most [`MAX_INJECTED`] wait).
    pub fn inject(&mut self, digits: &str, on_ms: u32, pause_ms: u32, ptime_ms: u16) -> usize {
        let frames = |ms: u32| ms.div_ceil(u32::from(ptime_ms.max(1))).max(1);
        let mut queued = 0;
        for digit in digits.chars().filter(|d| media_codecs::dtmf::frequencies(*d).is_some()) {
            if self.injected.len() >= MAX_INJECTED {
                break;
            }
            self.injected.push_back(Injected {
                digit: digit.to_ascii_uppercase(),
                on_frames: frames(on_ms),
                pause_frames: frames(pause_ms),
            });
            queued += 1;
        }
        queued
    }

    /// Room for more injected digits.
    pub fn inject_room(&self) -> usize {
        MAX_INJECTED - self.injected.len().min(MAX_INJECTED)
    }

    /// Whether injected digits are playing or waiting.
    pub fn injecting(&self) -> bool {
        self.injecting.is_some() || !self.injected.is_empty()
    }

    /// The PCM rate audio to [`play`](Self::play) must have.
    pub fn play_rate(&self) -> u32 {
        self.encoder.sample_rate()
    }

    /// Plays `pcm` (mono, at [`play_rate`](Self::play_rate)) into the outgoing stream instead of
    /// the source's audio, once or `looped`; returns the play it replaced.
    pub fn play(&mut self, id: u64, pcm: std::sync::Arc<[i16]>, looped: bool) -> Option<u64> {
        let replaced = self.playing.take().map(|p| p.id);
        if pcm.is_empty() {
            self.finished = Some(id);
        } else {
            self.playing = Some(Playing { id, pcm, at: 0, looped });
        }
        replaced
    }

    /// Stops the play, if any; returns its id.
    pub fn stop_play(&mut self) -> Option<u64> {
        self.playing.take().map(|p| p.id)
    }

    /// The play that reached its end since the last call (taken once).
    pub fn take_finished(&mut self) -> Option<u64> {
        self.finished.take()
    }

    /// Whether the outgoing stream is made here (injected digits, a play) rather than from
    /// the source's audio.
    pub fn generating(&self) -> bool {
        self.injecting() || self.playing.is_some()
    }

    /// Plays one packet time of what is generated: injected digits first (a tone frame, an RFC
    /// 4733 packet, three with the end bit on a digit's last frame, or a silence frame), else a
    /// frame of the play. Returns packets sent.
    pub fn tick(&mut self, mut out: impl FnMut(&[u8])) -> usize {
        if !self.injecting() {
            return self.play_frame(&mut out);
        }
        if self.injecting.is_none() {
            let Some(digit) = self.injected.pop_front() else { return 0 };
            let generator = ToneGenerator::new(self.encoder.sample_rate(), -7.0);
            self.injecting = Some(Injecting { digit, frame: 0, event_ts: self.stream.ts, generator });
        }
        let Some(mut now) = self.injecting.take() else { return 0 };
        let (d, frame) = (now.digit, now.frame);
        let mut sent = 0;
        if frame < d.on_frames && self.to_event_pt.is_some() {
            let end = frame + 1 == d.on_frames;
            let duration = (frame + 1) * self.stream.ts_step;
            if let Some(event) = TelephoneEvent::code_of(d.digit) {
                let e = EventOut { event, ts: now.event_ts, first: frame == 0 };
                for _ in 0..if end { 3 } else { 1 } {
                    sent += self.send_event(e, duration, end, &mut out);
                }
            }
            // The stream's clock runs on under the event.
            self.stream.ts = self.stream.ts.wrapping_add(self.stream.ts_step);
        } else {
            let samples = self.frame;
            let before = self.pending.len();
            if frame < d.on_frames {
                now.generator.tone(d.digit, samples, &mut self.pending);
            } else {
                self.pending.extend(std::iter::repeat_n(0, samples));
            }
            self.widen_pending(before);
            sent += self.encode_pending(&mut out);
        }
        now.frame += 1;
        if now.frame < d.on_frames + d.pause_frames {
            self.injecting = Some(now);
        } else {
            self.counters.digits_injected += 1;
        }
        sent
    }

    /// One frame of the play (silence after its end, which finishes it unless it loops).
    fn play_frame(&mut self, out: &mut impl FnMut(&[u8])) -> usize {
        let Some(mut p) = self.playing.take() else { return 0 };
        let before = self.pending.len();
        let mut need = self.frame;
        while need > 0 {
            let take = need.min(p.pcm.len() - p.at);
            self.pending.extend_from_slice(&p.pcm[p.at..p.at + take]);
            p.at += take;
            need -= take;
            if p.at == p.pcm.len() {
                if !p.looped {
                    self.pending.extend(std::iter::repeat_n(0, need));
                    break;
                }
                p.at = 0;
            }
        }
        self.widen_pending(before);
        let sent = self.encode_pending(out);
        if p.at == p.pcm.len() && !p.looped {
            self.finished = Some(p.id);
        } else {
            self.playing = Some(p);
        }
        sent
    }

    /// The outgoing stream for a sender report: SSRC, packets and payload octets sent, and the
    /// RTP timestamp of the next packet (the report's time: the stream is continuous).
    pub fn sender_info(&self) -> (u32, u32, u32, u32) {
        let packets = self.counters.encoded + self.counters.events;
        (self.stream.ssrc, packets as u32, self.counters.octets as u32, self.stream.ts)
    }

    /// Makes the mono samples made into `pending` from `from` on (tones, silence) the stream's
    /// channel count.
    fn widen_pending(&mut self, from: usize) {
        if self.channels == 2 {
            let mono: Vec<i16> = self.pending.drain(from..).collect();
            self.pending.extend(mono.iter().flat_map(|s| [*s, *s]));
        }
    }

    /// A digit the source played as tones and that has ended (taken once), with its length.
    pub fn take_heard_digit(&mut self) -> Option<(char, u32)> {
        self.heard.take()
    }

    /// Runs the in-band detector on the packet just decoded, sending RFC 4733 packets for what
    /// it finds: the first with the marker bit when a digit begins, one per source packet while
    /// it lasts, three with the end bit when it ends (RFC 4733 §2.5.1). Returns packets sent.
    fn detect_tones(&mut self, out: &mut impl FnMut(&[u8])) -> usize {
        let Some(detector) = self.detector.as_mut() else { return 0 };
        let mut found = [None, None];
        let mut n = 0;
        detector.push(&self.decoded, |d| {
            if let Some(slot) = found.get_mut(n) {
                *slot = Some(d);
                n += 1;
            }
        });
        let mut sent = 0;
        for d in found.into_iter().flatten() {
            match d {
                Detection::Began(digit) => {
                    if let Some(event) = TelephoneEvent::code_of(digit) {
                        self.event_out = Some(EventOut { event, ts: self.stream.ts, first: true });
                    }
                }
                Detection::Ended(digit, ms) => {
                    if let Some(e) = self.event_out.take() {
                        let duration = (u64::from(ms) * u64::from(self.to_clock) / 1000).min(u64::from(u32::MAX)) as u32;
                        for _ in 0..3 {
                            sent += self.send_event(e, duration, true, out);
                        }
                        self.counters.tones_to_digits += 1;
                        self.heard = Some((digit, ms));
                    }
                }
            }
        }
        if let Some(e) = self.event_out.as_mut() {
            let duration = self.stream.ts.wrapping_sub(e.ts).wrapping_add(self.stream.ts_step);
            let current = *e;
            e.first = false;
            sent += self.send_event(current, duration, false, out);
        }
        sent
    }

    /// One RFC 4733 packet of `e` lasting `duration` (destination clock).
    fn send_event(&mut self, e: EventOut, duration: u32, end: bool, out: &mut impl FnMut(&[u8])) -> usize {
        let Some(pt) = self.to_event_pt else { return 0 };
        let event = TelephoneEvent { event: e.event, end, volume: 10, duration: u16::try_from(duration).unwrap_or(u16::MAX) };
        self.emit_event(pt, e.ts, event, e.first && !end, out)
    }

    /// One RFC 4733 packet of `event` in the outgoing stream: payload type `pt`, the event's
    /// timestamp `ts`, the stream's next sequence number, the marker bit on an event's first.
    fn emit_event(&mut self, pt: u8, ts: u32, event: TelephoneEvent, marker: bool, out: &mut impl FnMut(&[u8])) -> usize {
        self.packet.clear();
        self.packet.resize(RTP_HEADER_LEN, 0);
        let _ = write_rtp_header(&mut self.packet, pt, self.stream.seq, ts, self.stream.ssrc);
        if let (true, Some(b)) = (marker, self.packet.get_mut(1)) {
            *b |= 0x80;
        }
        self.packet.extend_from_slice(&event.to_bytes());
        self.stream.seq = self.stream.seq.wrapping_add(1);
        self.counters.events += 1;
        self.counters.octets += 4;
        out(&self.packet);
        1
    }

    /// An RFC 4733 event for a destination without events: its digit played as tones, as much
    /// as the event's duration says so far (the sender's packets pace it), the rest of a frame
    /// filled when it ends.
    fn play_event(&mut self, rtp: &RtpPacket<&[u8]>, event: TelephoneEvent, out: &mut impl FnMut(&[u8])) -> usize {
        let Some(digit) = event.digit() else {
            self.counters.events_not_carried += 1;
            return 0;
        };
        let rate = self.encoder.sample_rate();
        let fresh = self.tones.as_ref().is_none_or(|t| t.source_ts != rtp.timestamp());
        if fresh {
            self.tones = Some(TonesOut {
                generator: ToneGenerator::new(rate, -7.0),
                digit,
                source_ts: rtp.timestamp(),
                made: 0,
                duration: 0,
                ended: false,
            });
            self.counters.digits_to_tones += 1;
        }
        let frame = self.frame;
        let Some(t) = self.tones.as_mut().filter(|t| !t.ended) else { return 0 };
        t.duration = u32::from(event.duration);
        let mut target = u64::from(event.duration) * u64::from(rate) / u64::from(self.from_clock.max(1));
        if event.end {
            t.ended = true;
            // The tone ends on a frame boundary: no half frame waits for audio that follows.
            let total = (self.pending.len() / self.channels.max(1)) as u64 + target.saturating_sub(t.made as u64);
            target += (frame as u64 - total % frame as u64) % frame as u64;
        }
        // At most three packet times per event packet: a burst of event packets, or a bogus
        // duration, cannot make a burst of encodes.
        let more = (target.saturating_sub(t.made as u64) as usize).min(3 * frame);
        let before = self.pending.len();
        t.generator.tone(t.digit, more, &mut self.pending);
        t.made += more;
        self.widen_pending(before);
        self.encode_pending(out)
    }
}

impl Transcoder {
    /// An RFC 4733 event packet into the outgoing stream: the destination's event payload type,
    /// the outgoing SSRC and next sequence number, the outgoing timestamp current when the event
    /// began (kept for all its packets), its duration in the destination's clock.
    fn carry_event(&mut self, rtp: &RtpPacket<&[u8]>, mut out: impl FnMut(&[u8])) -> usize {
        // Events share the source's sequence space with its audio: not a loss to conceal.
        if self.last_ssrc == Some(rtp.ssrc()) {
            self.last_seq = Some(rtp.sequence_number());
        }
        let Some(event) = rtp.payload().ok().and_then(TelephoneEvent::parse) else {
            self.counters.events_not_carried += 1;
            return 0;
        };
        let Some(to_pt) = self.to_event_pt else {
            return self.play_event(rtp, event, &mut out);
        };
        let out_ts = match self.event_ts {
            Some((src, mapped)) if src == rtp.timestamp() => mapped,
            _ => {
                self.event_ts = Some((rtp.timestamp(), self.stream.ts));
                self.stream.ts
            }
        };
        let duration = u64::from(event.duration) * u64::from(self.to_clock) / u64::from(self.from_clock.max(1));
        let event = TelephoneEvent { duration: u16::try_from(duration).unwrap_or(u16::MAX), ..event };
        self.emit_event(to_pt, out_ts, event, false, &mut out)
    }
}

/// The codec a payload type number names statically (RFC 3551), for clients that give only one.
pub fn static_payload_type(pt: u8) -> Option<CodecKind> {
    match pt {
        0 => Some(CodecKind::Pcmu),
        8 => Some(CodecKind::Pcma),
        9 => Some(CodecKind::G722),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use media_codecs::signal::{best_lag, snr_db, spectral_snr_db, speech_like};

    fn codec(pt: u8, kind: CodecKind, rate: u32, ptime_ms: u16) -> LegCodec {
        LegCodec { payload_type: pt, params: CodecParams::new(kind, rate), ptime_ms, telephone_event: None }
    }

    #[test]
    fn dtmf_events_cross_into_the_outgoing_stream_with_its_numbering_and_clock() {
        let from = LegCodec { telephone_event: Some(101), ..codec(0, CodecKind::Pcmu, 8000, 20) };
        let to = LegCodec { telephone_event: Some(110), ..codec(111, CodecKind::Opus, 48_000, 20) };
        let mut t = Transcoder::new(&from, &to, 0x77, 500, 9600).unwrap();
        let mut sent = Vec::new();
        let audio = |seq: u16| {
            let mut p = vec![0u8; 12];
            write_rtp_header(&mut p, 0, seq, u32::from(seq) * 160, 5).unwrap();
            p.extend_from_slice(&[0xff; 160]);
            p
        };
        let event = |seq: u16, end: bool, duration: u16| {
            let mut p = vec![0u8; 12];
            write_rtp_header(&mut p, 101, seq, 1600, 5).unwrap();
            p.extend_from_slice(&TelephoneEvent { event: 3, end, volume: 10, duration }.to_bytes());
            p
        };
        for p in [audio(9), event(10, false, 160), event(11, true, 320), event(12, true, 320), audio(13)] {
            t.push(&RtpPacket::new_checked(&p[..]).unwrap(), |o| sent.push(o.to_vec())).unwrap();
        }
        let views: Vec<_> = sent.iter().map(|p| RtpPacket::new_checked(&p[..]).unwrap()).collect();
        assert_eq!(views.iter().map(|v| v.payload_type()).collect::<Vec<_>>(), vec![111, 110, 110, 110, 111]);
        assert!(views.iter().all(|v| v.ssrc() == 0x77));
        assert_eq!(views.iter().map(|v| v.sequence_number()).collect::<Vec<_>>(), vec![500, 501, 502, 503, 504], "one sequence");
        assert!(views[1..4].iter().all(|v| v.timestamp() == 9600 + 960), "the event keeps the timestamp current when it began");
        let e = TelephoneEvent::parse(views[2].payload().unwrap()).unwrap();
        assert_eq!((e.event, e.end, e.duration), (3, true, 320 * 6), "duration in the 48 kHz clock");
        assert_eq!(t.counters.events, 3);
        // A destination without telephone-events: the digit is played as 40 ms of tones (two
        // 20 ms frames); the repeated End adds nothing.
        let mut t = Transcoder::new(&from, &codec(8, CodecKind::Pcma, 8000, 20), 1, 1, 1).unwrap();
        assert_eq!(t.push(&RtpPacket::new_checked(&event(1, true, 320)[..]).unwrap(), |_| {}), Ok(2));
        assert_eq!(t.push(&RtpPacket::new_checked(&event(2, true, 320)[..]).unwrap(), |_| {}), Ok(0));
        assert_eq!((t.counters.digits_to_tones, t.counters.events_not_carried), (1, 0));
    }

    /// Encodes `signal` (at `from`'s rate) into RTP of `from`, runs it through a transcoder to
    /// `to`, skipping the packets in `lost`, and decodes what comes out.
    fn run(from: LegCodec, to: LegCodec, signal: &[i16], lost: &[u16]) -> (Vec<i16>, Vec<Vec<u8>>, TranscodeCounters) {
        let mut enc = media_codecs::encoder(&from.params).unwrap();
        let mut t = Transcoder::new(&from, &to, 0x5151_5151, 1000, 90_000).unwrap();
        let frame = from.params.rate as usize * usize::from(from.ptime_ms) / 1000;
        let mut out_packets = Vec::new();
        for (i, chunk) in signal.chunks_exact(frame).enumerate() {
            let seq = 40_000u16.wrapping_add(i as u16);
            let mut pkt = vec![0u8; 12];
            write_rtp_header(&mut pkt, from.payload_type, seq, (i * frame) as u32, 0xabcd).unwrap();
            enc.encode(chunk, &mut pkt).unwrap();
            if lost.contains(&(i as u16)) {
                continue;
            }
            let view = RtpPacket::new_checked(&pkt[..]).unwrap();
            t.push(&view, |p| out_packets.push(p.to_vec())).unwrap();
        }
        let mut dec = media_codecs::decoder(&to.params).unwrap();
        let mut pcm = Vec::new();
        for p in &out_packets {
            dec.decode(RtpPacket::new_checked(&p[..]).unwrap().payload().unwrap(), &mut pcm).unwrap();
        }
        (pcm, out_packets, t.counters)
    }

    #[cfg(feature = "g729")]
    #[test]
    fn g729_and_pcmu_transcode_both_ways_with_20_ms_of_two_frames() {
        use media_codecs::signal::{best_lag, spectral_snr_db};
        let signal = speech_like(8000, 1.0);
        let (pcm, packets, _) = run(codec(0, CodecKind::Pcmu, 8000, 20), codec(18, CodecKind::G729, 8000, 20), &signal, &[]);
        assert!(packets.iter().all(|p| p.len() == 12 + 20), "two 10-byte G.729 frames per packet");
        let lag = best_lag(&signal, &pcm, 200);
        let snr = spectral_snr_db(&signal[1000..], &pcm[1000..], lag, 8000, 3400.0);
        assert!(snr >= 10.0, "PCMU→G.729 spectral SNR {snr:.1} dB (bound 10 dB)");
        let (pcm, _, counters) = run(codec(18, CodecKind::G729, 8000, 20), codec(0, CodecKind::Pcmu, 8000, 20), &signal, &[10]);
        assert_eq!(counters.concealed, 1, "a lost G.729 packet is concealed by the decoder");
        let lag = best_lag(&signal, &pcm, 200);
        let snr = spectral_snr_db(&signal[1000..], &pcm[1000..], lag, 8000, 3400.0);
        assert!(snr >= 8.0, "G.729→PCMU with a loss: spectral SNR {snr:.1} dB (bound 8 dB)");
    }

    #[test]
    fn a_tone_whose_end_packets_were_lost_ends_when_the_audio_is_past_it() {
        let from = LegCodec { telephone_event: Some(101), ..codec(0, CodecKind::Pcmu, 8000, 20) };
        let mut t = Transcoder::new(&from, &codec(8, CodecKind::Pcma, 8000, 20), 1, 1, 1).unwrap();
        let packet = |pt: u8, seq: u16, ts: u32, body: &[u8]| {
            let mut p = vec![0u8; 12];
            write_rtp_header(&mut p, pt, seq, ts, 5).unwrap();
            p.extend_from_slice(body);
            p
        };
        let audio = |seq: u16| packet(0, seq, u32::from(seq) * 160, &[0xff; 160]);
        let event =
            |seq: u16, duration: u16| packet(101, seq, 1600, &TelephoneEvent { event: 5, end: false, volume: 10, duration }.to_bytes());
        let push = |t: &mut Transcoder, p: Vec<u8>| t.push(&RtpPacket::new_checked(&p[..]).unwrap(), |_| {}).unwrap();
        push(&mut t, audio(9));
        push(&mut t, event(10, 320));
        // No End packet; the source's audio carries on well past the 40 ms event.
        assert_eq!(push(&mut t, audio(11)), 0, "still within the tone: the audio is held back");
        assert_eq!(push(&mut t, audio(20)), 1, "past it: the audio goes out again");
    }

    #[test]
    fn pcmu_to_pcma_keeps_the_waveform_and_numbers_its_own_stream() {
        let signal = speech_like(8000, 1.0);
        let (pcm, packets, counters) = run(codec(0, CodecKind::Pcmu, 8000, 20), codec(8, CodecKind::Pcma, 8000, 20), &signal, &[]);
        assert_eq!((counters.decoded, counters.encoded), (50, 50));
        let snr = snr_db(&signal, &pcm, 0);
        assert!(snr >= 25.0, "PCMU→PCMA SNR {snr:.1} dB");
        let first = RtpPacket::new_checked(&packets[0][..]).unwrap();
        assert_eq!((first.payload_type(), first.ssrc(), first.sequence_number(), first.timestamp()), (8, 0x5151_5151, 1000, 90_000));
        let last = RtpPacket::new_checked(&packets[49][..]).unwrap();
        assert_eq!((last.sequence_number(), last.timestamp()), (1049, 90_000 + 49 * 160));
    }

    #[test]
    fn pcmu_to_opus_and_g722_to_pcma_resample_and_keep_the_speech() {
        let narrow = speech_like(8000, 1.0);
        let (pcm, packets, _) = run(codec(0, CodecKind::Pcmu, 8000, 20), codec(111, CodecKind::Opus, 48_000, 20), &narrow, &[]);
        let ts_step = RtpPacket::new_checked(&packets[1][..])
            .unwrap()
            .timestamp()
            .wrapping_sub(RtpPacket::new_checked(&packets[0][..]).unwrap().timestamp());
        assert_eq!(ts_step, 960, "Opus RTP clock is 48 kHz");
        // Judge at 8 kHz: bring the 48 kHz result back down.
        let mut down = Resampler::new(48_000, 8000, 1).unwrap();
        let mut back = Vec::new();
        down.process(&pcm, &mut back).unwrap();
        let lag = best_lag(&narrow, &back, 400);
        let snr = spectral_snr_db(&narrow[1600..], &back[1600..], lag, 8000, 3800.0);
        assert!(snr >= 8.0, "PCMU→Opus spectral SNR {snr:.1} dB at lag {lag}");

        let wide = speech_like(16_000, 1.0);
        let (pcm, _, _) = run(codec(9, CodecKind::G722, 16_000, 20), codec(8, CodecKind::Pcma, 8000, 20), &wide, &[]);
        let mut narrow_ref = Vec::new();
        Resampler::new(16_000, 8000, 1).unwrap().process(&wide, &mut narrow_ref).unwrap();
        let lag = best_lag(&narrow_ref, &pcm, 200);
        let snr = snr_db(&narrow_ref[800..], &pcm[800..], lag);
        assert!(snr >= 10.0, "G.722→PCMA SNR {snr:.1} dB at lag {lag}");
    }

    #[test]
    fn ptime_30_source_is_repacketised_to_20_ms() {
        let signal = speech_like(8000, 1.2);
        let (_, packets, counters) = run(codec(0, CodecKind::Pcmu, 8000, 30), codec(0, CodecKind::Pcmu, 8000, 20), &signal, &[]);
        assert_eq!(counters.decoded, 40);
        assert_eq!(packets.len(), 60, "1.2 s in 20 ms packets");
        assert!(packets.iter().all(|p| p.len() == 12 + 160));
    }

    #[test]
    fn lost_packets_are_concealed_so_the_outgoing_stream_stays_continuous() {
        let signal = speech_like(8000, 1.0);
        let (pcm, packets, counters) =
            run(codec(0, CodecKind::Pcmu, 8000, 20), codec(8, CodecKind::Pcma, 8000, 20), &signal, &[10, 20, 21]);
        assert_eq!((counters.decoded, counters.concealed), (47, 3));
        assert_eq!(packets.len(), 50, "every 20 ms has its packet");
        assert_eq!(pcm.len(), signal.len());
        let seqs: Vec<u16> = packets.iter().map(|p| RtpPacket::new_checked(&p[..]).unwrap().sequence_number()).collect();
        assert!(seqs.windows(2).all(|w| w[1] == w[0].wrapping_add(1)), "no gap in the outgoing sequence");
    }

    #[test]
    fn foreign_payload_types_late_and_undecodable_packets_are_counted_drops() {
        let from = codec(0, CodecKind::Pcmu, 8000, 20);
        let mut t = Transcoder::new(&from, &codec(96, CodecKind::L16, 8000, 20), 1, 1, 1).unwrap();
        let packet = |pt: u8, seq: u16| {
            let mut p = vec![0u8; 12 + 160];
            write_rtp_header(&mut p, pt, seq, 0, 7).unwrap();
            p
        };
        let push = |t: &mut Transcoder, p: &[u8]| t.push(&RtpPacket::new_checked(p).unwrap(), |_| {});
        assert_eq!(push(&mut t, &packet(101, 1)), Err(Rejected::UnknownPayloadType));
        assert_eq!(push(&mut t, &packet(0, 5)), Ok(1));
        assert_eq!(push(&mut t, &packet(0, 4)), Err(Rejected::Late));
        let mut bad = packet(0, 6);
        bad.truncate(12 + 20);
        bad[0] |= 0x0f; // fifteen CSRCs (60 bytes) in a 20-byte remainder
        assert_eq!(push(&mut t, &bad), Err(Rejected::Undecodable));
        assert_eq!((t.counters.unknown_payload_type, t.counters.late, t.counters.undecodable), (1, 1, 1));
        assert!(matches!(Transcoder::new(&from, &codec(8, CodecKind::Pcma, 8000, 25), 1, 1, 1), Err(TranscodeError::Ptime(25))));
    }
}
