//! A conference: legs of one core mixed together every 20 ms.
//!
//! ```text
//!  member RTP ─► decode ─► resample to the conference rate ─► inbox ─┐
//!                                                                   │ every 20 ms (tick):
//!                      top-K talkers by energy, not muted ──────────┤ Σ talkers (i32)
//!  member RTP ◄─ encode ◄─ resample to the member's codec ◄─ soft limit ◄─ Σ − own (N−1), unless deaf
//! ```
//!
//! Each member hears everyone but itself: the talkers' sum minus its own contribution. Members
//! that are not among the talkers all hear the same thing, the whole mix: those with the same
//! codec and packet time share one encode ([`Shared`]), and each gets the payload under its own
//! RTP header (payload type, SSRC, sequence number, timestamp). A member moves between the shared
//! encode and its own only when it starts or stops talking (with the talk hysteresis, or when it
//! enters the mix), a speech boundary; a shared encode without listeners is kept for a second. A
//! conference of a thousand listeners thus encodes once per codec per period, plus once per
//! talker. Only
//! the [`TOP_TALKERS`] loudest members are mixed, so noise from many open microphones does not
//! add up. The sum goes through one soft limiter (linear below −3 dBFS, compressed above, never
//! clipping hard). Each member's stream is the media plane's own (SSRC, sequence numbers,
//! timestamps), at its codec and packet time. A member's packets wait in an adaptive
//! [`JitterBuffer`] and are decoded one mixing period at a time in sequence order, lost ones
//! concealed by the decoder.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use media_codecs::{Decoder, Encoder, Resampler};

use super::jitter::{JitterBuffer, JitterCounters, Playout};
use super::transcode::{LegCodec, RtpStream, TranscodeError};
use super::LegId;
use crate::wire::{write_rtp_header, RtpPacket, RTP_HEADER_LEN};

/// Identifies a conference across the media plane (its core in the top byte, like legs).
pub type ConferenceId = u64;

/// Members mixed at once: the loudest ones.
pub const TOP_TALKERS: usize = 3;
/// The mixing period.
pub const TICK: Duration = Duration::from_millis(20);
/// Below this mean-square energy per sample a member is not a talker (about −50 dBFS).
const SILENCE: u64 = 100;
/// A member whose level (energy with hangover) rises above this starts talking (an RMS of 200,
/// about −44 dBFS), and stops once its level falls below [`TALK_STOP`] (RMS 100). The level
/// decays by 1/8 per period, so a talker stays one for about 0.7 s after a loud syllable:
/// speech's short pauses do not end it.
const TALK_START: u64 = 40_000;
const TALK_STOP: u64 = 10_000;

/// Counters of one member.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MemberCounters {
    /// Packets decoded into the mix.
    pub decoded: u64,
    /// Packets the codec refused.
    pub undecodable: u64,
    /// Lost packets concealed by the decoder.
    pub concealed: u64,
    /// Ticks without a frame from the member (it is silent in them).
    pub underrun: u64,
    /// Packets of the mix sent to the member.
    pub sent: u64,
    /// A member on another core: times its frames came faster than the mix took them (the
    /// oldest were dropped).
    pub overrun: u64,
}

/// One leg in a conference.
pub(super) struct Member {
    pub leg: LegId,
    /// Its leg's slot on this core; for a member on another core, unused.
    pub slot: usize,
    /// The core of a member on another core (its RTP comes from there, the mix goes there).
    pub remote: Option<usize>,
    pub muted: bool,
    pub deaf: bool,
    /// Its RTP in, decoded at the mixing rate into `inbox`; `None` for a member on another core,
    /// whose core decodes and sends the frames ([`Conference::push_frame`]).
    intake: Option<Intake>,
    /// Conference rate → codec rate.
    outward: Option<Resampler>,
    encoder: Box<dyn Encoder>,
    /// Decoded audio at the conference rate, not yet mixed.
    inbox: VecDeque<i16>,
    /// Mixed audio at the encoder's rate, not yet a whole packet.
    outbox: Vec<i16>,
    /// Samples per packet at the encoder's rate.
    packet_samples: usize,
    /// The member's stream (its payload type is also the one its endpoint sends).
    stream: RtpStream,
    /// This tick's frame and its energy; the energy with hangover (decaying by 1/8 a period),
    /// which picks the talkers; and whether the member talks now.
    frame: Vec<i16>,
    energy: u64,
    level: u64,
    talking: bool,
    scratch: Vec<i16>,
    packet: Vec<u8>,
    /// What its shared encode would be: the codec and packet time.
    key: (media_codecs::CodecParams, u16),
    /// It heard the whole mix through a shared encode last period (else its own encode).
    shared: bool,
    pub counters: MemberCounters,
}

/// Where a member's packet goes: its leg's slot here, or its core.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dest {
    pub slot: usize,
    pub remote: Option<usize>,
    pub leg: LegId,
}

/// One encode of the whole mix, shared by the listening members of one codec and packet time.
struct Shared {
    key: (media_codecs::CodecParams, u16),
    encoder: Box<dyn Encoder>,
    outward: Option<Resampler>,
    outbox: Vec<i16>,
    packet_samples: usize,
    /// This period's members (indices into the conference's members).
    members: Vec<usize>,
    packet: Vec<u8>,
    /// Periods in a row without members.
    idle: u32,
}

/// Periods a shared encode without listeners is kept (a second).
const SHARED_IDLE: u32 = 50;

impl Shared {
    fn new(key: (media_codecs::CodecParams, u16), rate: u32) -> Result<Self, TranscodeError> {
        let encoder = media_codecs::encoder(&key.0)?;
        let outward = (rate != encoder.sample_rate()).then(|| Resampler::new(rate, encoder.sample_rate(), 1)).transpose()?;
        let packet_samples = encoder.sample_rate() as usize * usize::from(key.1) / 1000;
        Ok(Self {
            key,
            encoder,
            outward,
            outbox: Vec::new(),
            packet_samples,
            members: Vec::new(),
            packet: Vec::with_capacity(1500),
            idle: 0,
        })
    }
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared").field("key", &self.key).field("members", &self.members.len()).finish_non_exhaustive()
    }
}

impl std::fmt::Debug for Member {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Member")
            .field("leg", &self.leg)
            .field("muted", &self.muted)
            .field("deaf", &self.deaf)
            .field("counters", &self.counters)
            .finish_non_exhaustive()
    }
}

/// A conference of one core.
#[derive(Debug)]
pub struct Conference {
    pub id: ConferenceId,
    /// The mixing rate (8000, 16000 or 48000).
    pub rate: u32,
    pub(super) members: Vec<Member>,
    /// When the next tick is due.
    pub next_tick: Instant,
    sum: Vec<i32>,
    /// Members that started (true) or stopped talking in the last periods, for the engine's
    /// events.
    pub(super) talk_changes: Vec<(LegId, bool)>,
    /// The recording of the whole mix, if one runs: what a listen-only member hears.
    pub(super) tap: Option<u64>,
    /// The last period's whole mix (what every member that is not a talker hears).
    pub(super) mix: Vec<i16>,
    /// Shared encodes of the whole mix, one per codec and packet time in use.
    shared: Vec<Shared>,
    pub counters: ConferenceCounters,
}

/// Counters of a conference.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ConferenceCounters {
    /// Mixing periods run.
    pub ticks: u64,
    /// Frames encoded for one member (talkers, who hear everyone but themselves).
    pub own_encodes: u64,
    /// Frames encoded once for all the listeners of a codec, and the packets they made.
    pub shared_encodes: u64,
    pub shared_packets: u64,
}

/// Compresses above −3 dBFS so the sum of talkers never clips hard.
fn soft_limit(x: i32) -> i16 {
    const KNEE: i32 = 23_197;
    const ROOM: i32 = 32_767 - KNEE;
    let m = x.abs();
    if m <= KNEE {
        return x as i16;
    }
    let over = m - KNEE;
    let y = KNEE + (over as i64 * ROOM as i64 / (over as i64 + ROOM as i64)) as i32;
    (y * x.signum()) as i16
}

/// A member's incoming audio: its jitter buffer, decoder and resampler to the mixing rate. A
/// conference runs one per member of its core; a core whose leg is a member of a conference on
/// another core runs it for that leg and sends the decoded frames over (so decoding is spread
/// over the members' cores).
pub struct Intake {
    pt: u8,
    /// The mixing rate.
    rate: u32,
    decoder: Box<dyn Decoder>,
    jitter: JitterBuffer,
    /// RTP clock of the codec, and decoded samples of its last packet (a concealed packet's size).
    clock: u32,
    last_samples: usize,
    /// Codec rate → mixing rate.
    inward: Option<Resampler>,
    scratch: Vec<i16>,
    resampled: Vec<i16>,
    pub counters: MemberCounters,
}

impl std::fmt::Debug for Intake {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Intake").field("pt", &self.pt).field("counters", &self.counters).finish_non_exhaustive()
    }
}

impl Intake {
    /// The intake of a member speaking mono `codec`, mixed at `rate`.
    pub fn new(codec: &LegCodec, rate: u32) -> Result<Self, TranscodeError> {
        let channels = usize::from(codec.params.channels);
        if channels != 1 {
            return Err(TranscodeError::Codec(media_codecs::CodecError::Unsupported {
                codec: codec.params.kind.name(),
                field: "channels",
                value: channels as u32,
                allowed: "1 in a conference",
            }));
        }
        let decoder = media_codecs::decoder(&codec.params)?;
        let inward = (decoder.sample_rate() != rate).then(|| Resampler::new(decoder.sample_rate(), rate, 1)).transpose()?;
        Ok(Self {
            pt: codec.payload_type,
            rate,
            jitter: JitterBuffer::new(codec.rtp_clock() * u32::from(codec.ptime_ms) / 1000),
            clock: codec.rtp_clock(),
            last_samples: decoder.sample_rate() as usize * usize::from(codec.ptime_ms) / 1000,
            decoder,
            inward,
            scratch: Vec::new(),
            resampled: Vec::new(),
            counters: MemberCounters::default(),
        })
    }

    /// Takes an RTP packet into the jitter buffer (telephone-events and comfort noise are not
    /// mixed: taken, not kept); `since` is its arrival from any fixed origin. `false`: no payload.
    pub fn push(&mut self, rtp: &RtpPacket<&[u8]>, since: Duration) -> bool {
        if rtp.payload_type() != self.pt {
            return true;
        }
        let Ok(payload) = rtp.payload() else { return false };
        let arrival = (since.as_nanos() * u128::from(self.clock) / 1_000_000_000) as u32;
        self.jitter.insert(rtp.ssrc(), rtp.sequence_number(), rtp.timestamp(), arrival, payload);
        true
    }

    /// Decodes from the jitter buffer until `inbox` holds `frame` samples (or it waits).
    pub fn fill(&mut self, inbox: &mut VecDeque<i16>, frame: usize) {
        while inbox.len() < frame {
            self.scratch.clear();
            let decoded = match self.jitter.pop() {
                Playout::Packet(p) => self.decoder.decode(p, &mut self.scratch).inspect(|_| self.counters.decoded += 1),
                Playout::Lost(next) => {
                    self.counters.concealed += 1;
                    match next {
                        Some(p) => self.decoder.decode_fec(p, self.last_samples, &mut self.scratch),
                        None => self.decoder.conceal(self.last_samples, &mut self.scratch),
                    }
                }
                Playout::Wait => return,
            };
            match decoded {
                Ok(n) if n > 0 => self.last_samples = n,
                Ok(_) => {}
                Err(_) => {
                    self.counters.undecodable += 1;
                    continue;
                }
            }
            match &mut self.inward {
                Some(r) => {
                    self.resampled.clear();
                    let _ = r.process(&self.scratch, &mut self.resampled);
                    inbox.extend(self.resampled.iter().copied());
                }
                None => inbox.extend(self.scratch.iter().copied()),
            }
        }
    }

    pub fn jitter_counters(&self) -> JitterCounters {
        self.jitter.counters
    }

    /// Samples of one mixing period at the mixing rate the intake was made for.
    pub fn frame_samples(&self) -> usize {
        self.rate as usize / 50
    }
}

/// Frames a member on another core may have waiting; beyond, the oldest go (its core ran
/// ahead of the mixer, or caught up a burst): the delay it adds stays under 60 ms.
const MAX_QUEUED_FRAMES: usize = 3;

impl Conference {
    pub fn new(id: ConferenceId, rate: u32, now: Instant) -> Self {
        Conference {
            id,
            rate,
            members: Vec::new(),
            next_tick: now + TICK,
            sum: Vec::new(),
            talk_changes: Vec::new(),
            tap: None,
            mix: Vec::new(),
            shared: Vec::new(),
            counters: ConferenceCounters::default(),
        }
    }

    /// Adds a member speaking `codec`, its leg in `slot` of this core, or (`remote`) on that core
    /// (`slot` unused); its stream starts at `ssrc`, `seq`, `ts`.
    pub(super) fn add(
        &mut self,
        leg: LegId,
        slot: usize,
        remote: Option<usize>,
        codec: &LegCodec,
        muted: bool,
        deaf: bool,
        ssrc: u32,
        seq: u16,
        ts: u32,
    ) -> Result<(), TranscodeError> {
        // A member on another core is decoded there.
        let intake = match remote {
            None => Some(Intake::new(codec, self.rate)?),
            Some(_) => None,
        };
        let encoder = media_codecs::encoder(&codec.params)?;
        let outward = (self.rate != encoder.sample_rate()).then(|| Resampler::new(self.rate, encoder.sample_rate(), 1)).transpose()?;
        let packet_samples = encoder.sample_rate() as usize * usize::from(codec.ptime_ms) / 1000;
        self.members.push(Member {
            leg,
            slot,
            remote,
            muted,
            deaf,
            intake,
            outward,
            encoder,
            inbox: VecDeque::new(),
            outbox: Vec::new(),
            packet_samples,
            stream: RtpStream { pt: codec.payload_type, ssrc, seq, ts, ts_step: codec.rtp_clock() * u32::from(codec.ptime_ms) / 1000 },
            frame: Vec::new(),
            energy: 0,
            level: 0,
            talking: false,
            scratch: Vec::new(),
            packet: Vec::with_capacity(1500),
            key: (codec.params, codec.ptime_ms),
            shared: false,
            counters: MemberCounters::default(),
        });
        Ok(())
    }

    /// Removes leg `leg`; whether it was a member.
    pub(super) fn remove(&mut self, leg: LegId) -> bool {
        let before = self.members.len();
        self.members.retain(|m| m.leg != leg);
        self.members.len() != before
    }

    pub(super) fn member_mut(&mut self, leg: LegId) -> Option<&mut Member> {
        self.members.iter_mut().find(|m| m.leg == leg)
    }

    /// Takes a member's RTP packet into its jitter buffer; `since` is its arrival time from
    /// any fixed origin.
    pub(super) fn push(&mut self, leg: LegId, rtp: &RtpPacket<&[u8]>, since: Duration) -> bool {
        match self.member_mut(leg).and_then(|m| m.intake.as_mut()) {
            Some(intake) => intake.push(rtp, since),
            None => false,
        }
    }

    /// A mixing period's frame of member `leg` of core `core`, decoded there.
    pub(super) fn push_frame(&mut self, leg: LegId, core: usize, pcm: &[i16]) -> bool {
        let frame = self.rate as usize / 50;
        let Some(m) = self.members.iter_mut().find(|m| m.leg == leg && m.remote == Some(core)) else { return false };
        m.inbox.extend(pcm.iter().copied());
        let most = MAX_QUEUED_FRAMES * frame;
        if m.inbox.len() > most {
            let extra = m.inbox.len() - most;
            m.inbox.drain(..extra);
            m.counters.overrun += 1;
        }
        true
    }

    /// A member's jitter buffer counters.
    pub fn jitter(&self, leg: LegId) -> Option<JitterCounters> {
        self.members.iter().find(|m| m.leg == leg).and_then(|m| m.intake.as_ref()).map(Intake::jitter_counters)
    }

    /// One mixing period: each member's frame in, the N−1 mix out; calls `out(to, packet)` for
    /// every packet made (in each member's codec and stream).
    pub(super) fn tick(&mut self, mut out: impl FnMut(Dest, &[u8])) {
        let frame = self.rate as usize / 50;
        // This tick's frames and energies.
        for m in &mut self.members {
            if let Some(intake) = &mut m.intake {
                intake.fill(&mut m.inbox, frame);
            }
            m.frame.clear();
            if m.inbox.len() >= frame {
                m.frame.extend(m.inbox.drain(..frame));
            } else {
                m.frame.resize(frame, 0);
                m.counters.underrun += 1;
            }
            m.energy = if m.muted { 0 } else { m.frame.iter().map(|&s| i64::from(s).pow(2) as u64).sum::<u64>() / frame as u64 };
            m.level = m.energy.max(m.level - m.level / 8);
            let talking = if m.talking { m.level >= TALK_STOP } else { m.level > TALK_START };
            if talking != m.talking {
                m.talking = talking;
                self.talk_changes.push((m.leg, talking));
            }
        }
        // The loudest few talk, by level (kept in a fixed array: nothing allocates per tick).
        let mut talkers = [usize::MAX; TOP_TALKERS];
        for (i, m) in self.members.iter().enumerate().filter(|(_, m)| m.level > SILENCE && m.energy > 0) {
            let quieter = |t: usize| t == usize::MAX || self.members.get(t).is_none_or(|o| o.level < m.level);
            if let Some(at) = talkers.iter().position(|&t| quieter(t)) {
                talkers[at..].rotate_right(1);
                talkers[at] = i;
            }
        }
        let order: &[usize] = &talkers[..talkers.iter().position(|&t| t == usize::MAX).unwrap_or(TOP_TALKERS)];
        self.sum.clear();
        self.sum.resize(frame, 0);
        for &i in order {
            for (acc, &s) in self.sum.iter_mut().zip(&self.members[i].frame) {
                *acc += i32::from(s);
            }
        }
        self.mix.clear();
        self.mix.extend(self.sum.iter().map(|&total| soft_limit(total)));
        self.counters.ticks += 1;
        for g in &mut self.shared {
            g.members.clear();
        }
        for (i, m) in self.members.iter_mut().enumerate() {
            if m.deaf {
                m.shared = false;
                continue;
            }
            // A member stays on its own encode while it talks (with the talk hysteresis) or is
            // mixed, so it moves between encodes only at speech boundaries.
            if !order.contains(&i) && !m.talking {
                // A listener: the whole mix, through the shared encode of its codec.
                let g = match self.shared.iter().position(|g| g.key == m.key) {
                    Some(g) => g,
                    None => match Shared::new(m.key, self.rate) {
                        Ok(g) => {
                            self.shared.push(g);
                            self.shared.len() - 1
                        }
                        // No shared encoder for this codec: the member's own, as a talker's.
                        Err(_) => usize::MAX,
                    },
                };
                if let Some(group) = self.shared.get_mut(g) {
                    if !m.shared {
                        // Into the shared encode: its own half-made packet is dropped.
                        m.outbox.clear();
                    }
                    m.shared = true;
                    group.members.push(i);
                    continue;
                }
            }
            if std::mem::take(&mut m.shared) {
                m.outbox.clear();
            }
            let talking = order.contains(&i);
            m.scratch.clear();
            m.scratch.extend(
                self.sum.iter().zip(&m.frame).map(|(&total, &own)| soft_limit(if talking { total - i32::from(own) } else { total })),
            );
            match &mut m.outward {
                Some(r) => {
                    let _ = r.process(&m.scratch, &mut m.outbox);
                }
                None => m.outbox.extend_from_slice(&m.scratch),
            }
            let to = Dest { slot: m.slot, remote: m.remote, leg: m.leg };
            let (sent, _) =
                m.stream.encode_pending(m.encoder.as_mut(), &mut m.outbox, m.packet_samples, &mut m.packet, &mut |p: &[u8]| out(to, p));
            m.counters.sent += sent;
            self.counters.own_encodes += sent;
        }
        // Each shared encode once, its payload under each listener's own header.
        for g in &mut self.shared {
            if g.members.is_empty() {
                g.outbox.clear();
                g.idle += 1;
                continue;
            }
            g.idle = 0;
            match &mut g.outward {
                Some(r) => {
                    let _ = r.process(&self.mix, &mut g.outbox);
                }
                None => g.outbox.extend_from_slice(&self.mix),
            }
            while g.packet_samples > 0 && g.outbox.len() >= g.packet_samples {
                g.packet.clear();
                g.packet.resize(RTP_HEADER_LEN, 0);
                let encoded = g.encoder.encode(g.outbox.get(..g.packet_samples).unwrap_or_default(), &mut g.packet);
                g.outbox.drain(..g.packet_samples);
                if encoded.is_err() {
                    continue;
                }
                self.counters.shared_encodes += 1;
                for &i in &g.members {
                    let Some(m) = self.members.get_mut(i) else { continue };
                    let st = &mut m.stream;
                    let _ = write_rtp_header(&mut g.packet, st.pt, st.seq, st.ts, st.ssrc);
                    st.seq = st.seq.wrapping_add(1);
                    st.ts = st.ts.wrapping_add(st.ts_step);
                    m.counters.sent += 1;
                    self.counters.shared_packets += 1;
                    out(Dest { slot: m.slot, remote: m.remote, leg: m.leg }, &g.packet);
                }
            }
        }
        // Encodes no listener used for a second go (a listener coming back makes a new one).
        self.shared.retain(|g| g.idle < SHARED_IDLE);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_limiter_is_linear_below_its_knee_and_never_clips() {
        assert_eq!(soft_limit(1000), 1000);
        assert_eq!(soft_limit(-23_000), -23_000);
        assert!(soft_limit(40_000) < 32_767 && soft_limit(40_000) > 23_197);
        assert!(soft_limit(3 * 32_767) > 28_000 && soft_limit(-3 * 32_767) < -28_000, "near full scale, no wrap-around");
        assert!(soft_limit(30_000) < soft_limit(40_000), "monotonic");
    }
}
