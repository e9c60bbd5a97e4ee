//! A recording assembled from what the engine taps: each channel's RTP decoded, resampled to the
//! file's rate and placed on one timeline, then handed out as interleaved 16-bit frames once no
//! late packet can change them any more. Pure: time is passed in (`now`, since the recording
//! started); the media plane's recorder thread does the file I/O.
//!
//! ```text
//!  channel 0 RTP ─► decode ─► resample ─► place at (arrival of its first packet) + (ts − first ts)
//!  channel 1 RTP ─► decode ─► resample ─► place …                       │
//!  conference mix (PCM) ─► resample ─► place at arrival                 ▼
//!                                   frames before now − HOLD ─► take_ready ─► WAV writer
//! ```
//!
//! A channel's timeline follows its RTP timestamps, so jitter does not move its audio; a jump of
//! more than [`RESYNC`] from where the arrival time puts it (a new SSRC, a sender restart, clock
//! drift over a long call) re-anchors it at its arrival. Lost packets are silence, late ones
//! (after their place was written) are counted and dropped, and a channel with no media (a
//! party on hold) is silence: the channels never drift apart.

use std::collections::VecDeque;
use std::time::Duration;

use media_codecs::{decoder, CodecParams, Decoder, Resampler};

use crate::engine::transcode::LegCodec;
use crate::wire::RtpPacket;

/// How long audio waits for late packets before it is written.
pub const HOLD: Duration = Duration::from_millis(400);
/// A channel whose timestamps stray this far from its arrival times is re-anchored.
pub const RESYNC: Duration = Duration::from_secs(1);
/// Packets in a row far behind a stream's newest before it counts as restarted.
const BEHIND_RESTART: u32 = 10;
/// Rates a recording can be written at.
pub const RATES: [u32; 3] = [8000, 16_000, 48_000];

/// How a recording went, when it ends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordingSummary {
    pub recording: u64,
    /// The file as the client named it.
    pub file: String,
    pub channels: u8,
    pub rate: u32,
    pub frames: u64,
    pub bytes: u64,
    pub counters: RecordCounters,
    /// `stopped`, `ended`, `shutdown` or `write failed: …`.
    pub reason: String,
}

/// Counters of a recording.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RecordCounters {
    /// RTP packets decoded into the recording.
    pub packets: u64,
    /// Packets of another payload type (telephone-events, comfort noise) or that did not decode.
    pub skipped: u64,
    /// Packets that came after their place in the file was written.
    pub late: u64,
    /// Times a channel was re-anchored.
    pub resyncs: u64,
}

#[derive(Debug)]
struct Channel {
    /// The codec the decoder is for (a change makes a new decoder).
    codec: Option<(u8, CodecParams)>,
    decoder: Option<Box<dyn Decoder>>,
    resampler: Option<(u32, Resampler)>,
    /// (extended timestamp of the anchor packet, file position it was placed at, RTP clock).
    anchor: Option<(i64, i64, u32)>,
    /// The last timestamp, extended over wrap-arounds, and the highest one.
    last_ts: Option<i64>,
    highest: Option<i64>,
    /// Packets in a row far behind the newest: after [`BEHIND_RESTART`] the stream restarted.
    behind: u32,
    ssrc: Option<u32>,
    pcm: Vec<i16>,
    resampled: Vec<i16>,
}

impl Channel {
    fn new() -> Self {
        Self {
            codec: None,
            decoder: None,
            resampler: None,
            anchor: None,
            last_ts: None,
            highest: None,
            behind: 0,
            ssrc: None,
            pcm: Vec::new(),
            resampled: Vec::new(),
        }
    }

    /// `ts` extended over 32-bit wrap-arounds, relative to the last one.
    fn extend(&mut self, ts: u32) -> i64 {
        let ext = match self.last_ts {
            None => i64::from(ts),
            Some(last) => last + i64::from(ts.wrapping_sub(last as u32) as i32),
        };
        self.last_ts = Some(ext);
        ext
    }

    /// `pcm` at `from` Hz into `self.resampled` at `to` Hz.
    fn resample(&mut self, from: u32, to: u32) -> bool {
        self.resampled.clear();
        if from == to {
            self.resampled.extend_from_slice(&self.pcm);
            return true;
        }
        if self.resampler.as_ref().is_none_or(|(r, _)| *r != from) {
            match Resampler::new(from, to, 1) {
                Ok(r) => self.resampler = Some((from, r)),
                Err(_) => return false,
            }
        }
        match &mut self.resampler {
            Some((_, r)) => r.process(&self.pcm, &mut self.resampled).is_ok(),
            None => false,
        }
    }
}

/// One recording's timeline.
#[derive(Debug)]
pub struct Recording {
    rate: u32,
    channels: Vec<Channel>,
    /// Interleaved frames not written yet; `pending[0]` is frame `written`.
    pending: VecDeque<i16>,
    /// Frames handed out so far.
    written: i64,
    pub counters: RecordCounters,
}

impl Recording {
    /// A recording of `channels` channels (1 to 8) at `rate` (one of [`RATES`]).
    pub fn new(channels: u8, rate: u32) -> Option<Self> {
        if !(1..=8).contains(&channels) || !RATES.contains(&rate) {
            return None;
        }
        Some(Self {
            rate,
            channels: (0..channels).map(|_| Channel::new()).collect(),
            pending: VecDeque::new(),
            written: 0,
            counters: RecordCounters::default(),
        })
    }

    pub fn rate(&self) -> u32 {
        self.rate
    }

    pub fn channel_count(&self) -> u8 {
        self.channels.len() as u8
    }

    /// Frames handed out so far (the file's length).
    pub fn frames_written(&self) -> u64 {
        self.written as u64
    }

    fn frames(&self, d: Duration) -> i64 {
        (d.as_nanos() * u128::from(self.rate) / 1_000_000_000) as i64
    }

    /// An RTP packet (decrypted) of `channel` in `codec`, arrived `now` after the start.
    pub fn push_rtp(&mut self, channel: u8, codec: Option<LegCodec>, packet: &[u8], now: Duration) {
        let rate = self.rate;
        let arrival = self.frames(now);
        let (resync, written) = (self.frames(RESYNC), self.written);
        let Some(ch) = self.channels.get_mut(usize::from(channel)) else { return };
        let Ok(rtp) = RtpPacket::new_checked(packet) else {
            self.counters.skipped += 1;
            return;
        };
        let Some(codec) = codec.filter(|c| c.payload_type == rtp.payload_type()) else {
            self.counters.skipped += 1;
            return;
        };
        if ch.codec != Some((codec.payload_type, codec.params)) {
            ch.decoder = decoder(&codec.params).ok();
            ch.codec = Some((codec.payload_type, codec.params));
            ch.anchor = None;
        }
        let clock = codec.rtp_clock();
        if ch.ssrc != Some(rtp.ssrc()) {
            ch.ssrc = Some(rtp.ssrc());
            ch.last_ts = None;
            ch.highest = None;
            ch.anchor = None;
        }
        let highest = ch.highest;
        let ts = ch.extend(rtp.timestamp());
        ch.highest = Some(highest.map_or(ts, |h| h.max(ts)));
        let place = |(ts0, pos0, clock): (i64, i64, u32)| pos0 + (ts - ts0) * i64::from(rate) / i64::from(clock.max(1));
        let mut pos = ch.anchor.map_or(arrival, place);
        if ch.anchor.is_some() && (pos - arrival).abs() > resync && highest.is_some_and(|h| ts < h) && ch.behind < BEHIND_RESTART {
            // Far behind the stream's newest packet: late, not a new start (unless it keeps on:
            // the sender went back in time, and its stream starts again from here).
            ch.behind += 1;
            ch.highest = highest;
            self.counters.late += 1;
            return;
        }
        ch.behind = 0;
        if ch.anchor.is_none() || (pos - arrival).abs() > resync {
            if ch.anchor.is_some() {
                self.counters.resyncs += 1;
            }
            ch.anchor = Some((ts, arrival, clock));
            ch.highest = Some(ts);
            pos = arrival;
        }
        let Some(dec) = ch.decoder.as_mut() else {
            self.counters.skipped += 1;
            return;
        };
        ch.pcm.clear();
        let Ok(payload) = rtp.payload() else {
            self.counters.skipped += 1;
            return;
        };
        if dec.decode(payload, &mut ch.pcm).is_err() || ch.pcm.is_empty() {
            self.counters.skipped += 1;
            return;
        }
        let from = dec.sample_rate();
        if dec.channels() > 1 {
            // Mono for the file: the first channel.
            let n = usize::from(dec.channels());
            ch.pcm = ch.pcm.iter().step_by(n).copied().collect();
        }
        if !ch.resample(from, rate) {
            self.counters.skipped += 1;
            return;
        }
        if pos + ch.resampled.len() as i64 <= written {
            self.counters.late += 1;
            return;
        }
        self.counters.packets += 1;
        let samples = std::mem::take(&mut self.channels[usize::from(channel)].resampled);
        self.place(channel, pos, &samples);
        if let Some(ch) = self.channels.get_mut(usize::from(channel)) {
            ch.resampled = samples;
        }
    }

    /// PCM of `channel` at `rate` Hz (a conference's mix), arrived `now` after the start: placed
    /// right after the channel's previous PCM, or at its arrival if that strays by [`RESYNC`].
    pub fn push_pcm(&mut self, channel: u8, rate: u32, pcm: &[i16], now: Duration) {
        let file_rate = self.rate;
        let arrival = self.frames(now);
        let resync = self.frames(RESYNC);
        let Some(ch) = self.channels.get_mut(usize::from(channel)) else { return };
        ch.pcm.clear();
        ch.pcm.extend_from_slice(pcm);
        if !ch.resample(rate, file_rate) {
            self.counters.skipped += 1;
            return;
        }
        // The anchor's "timestamp" counts file frames here.
        let mut pos = ch.anchor.map_or(arrival, |(next, _, _)| next);
        if ch.anchor.is_none() || (pos - arrival).abs() > resync {
            pos = arrival;
        }
        let n = ch.resampled.len() as i64;
        ch.anchor = Some((pos + n, 0, file_rate));
        self.counters.packets += 1;
        let samples = std::mem::take(&mut self.channels[usize::from(channel)].resampled);
        self.place(channel, pos, &samples);
        if let Some(ch) = self.channels.get_mut(usize::from(channel)) {
            ch.resampled = samples;
        }
    }

    /// Mixes `samples` (file rate) into `channel` from frame `pos`; what falls before the written
    /// frames is dropped.
    fn place(&mut self, channel: u8, pos: i64, samples: &[i16]) {
        let n = self.channels.len();
        let c = usize::from(channel);
        let skip = (self.written - pos).max(0) as usize;
        let start = (pos.max(self.written) - self.written) as usize;
        let need = (start + samples.len().saturating_sub(skip)) * n;
        if self.pending.len() < need {
            self.pending.resize(need, 0);
        }
        for (i, s) in samples.iter().skip(skip).enumerate() {
            if let Some(slot) = self.pending.get_mut((start + i) * n + c) {
                *slot = slot.saturating_add(*s);
            }
        }
    }

    /// Appends to `out` the interleaved frames that can no longer change (older than
    /// `now − HOLD`), silence where no channel had media; returns the frames appended.
    pub fn take_ready(&mut self, now: Duration, out: &mut Vec<i16>) -> usize {
        let until = self.frames(now.saturating_sub(HOLD));
        self.take_until(until, out)
    }

    /// Appends every frame placed so far (the end of the recording).
    pub fn finish(&mut self, out: &mut Vec<i16>) -> usize {
        let n = self.channels.len();
        let end = self.written + (self.pending.len() / n) as i64;
        self.take_until(end, out)
    }

    fn take_until(&mut self, until: i64, out: &mut Vec<i16>) -> usize {
        let n = self.channels.len();
        let frames = (until - self.written).max(0) as usize;
        if frames == 0 {
            return 0;
        }
        let have = (self.pending.len() / n).min(frames);
        out.extend(self.pending.drain(..have * n));
        out.resize(out.len() + (frames - have) * n, 0);
        self.written = until;
        frames
    }
}

#[cfg(test)]
mod tests {
    use media_codecs::signal::{sine, tone_power};
    use media_codecs::{encoder, CodecKind};

    use super::*;

    fn pcmu() -> LegCodec {
        LegCodec { payload_type: 0, params: CodecParams::new(CodecKind::Pcmu, 8000), ptime_ms: 20, telephone_event: Some(101) }
    }

    /// 20 ms PCMU packets of a `hz` tone: (sequence, timestamp, packet).
    fn packets(hz: f64, count: usize, ssrc: u32) -> Vec<Vec<u8>> {
        let tone = sine(8000, hz, count as f64 * 0.02, 8000.0);
        let mut enc = encoder(&pcmu().params).expect("encoder");
        tone.chunks_exact(160)
            .enumerate()
            .map(|(i, chunk)| {
                let mut p = vec![0x80, 0];
                p.extend_from_slice(&(i as u16).to_be_bytes());
                p.extend_from_slice(&(i as u32 * 160).to_be_bytes());
                p.extend_from_slice(&ssrc.to_be_bytes());
                enc.encode(chunk, &mut p).expect("encode");
                p
            })
            .collect()
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn channel(frames: &[i16], n: usize, c: usize) -> Vec<i16> {
        frames.chunks_exact(n).map(|f| f[c]).collect()
    }

    #[test]
    fn two_channels_keep_their_own_audio_on_one_timeline() {
        let mut r = Recording::new(2, 8000).expect("recording");
        let (a, b) = (packets(440.0, 50, 1), packets(1000.0, 50, 2));
        let mut out = Vec::new();
        for (i, (pa, pb)) in a.iter().zip(&b).enumerate() {
            let t = ms(20 * i as u64);
            r.push_rtp(0, Some(pcmu()), pa, t);
            // Channel 1 starts 100 ms later and arrives with jitter.
            if i >= 5 {
                r.push_rtp(1, Some(pcmu()), pb, t + ms(100 + (i as u64 % 3) * 7));
            }
            r.take_ready(t, &mut out);
        }
        r.finish(&mut out);
        assert_eq!(r.counters, RecordCounters { packets: 95, ..Default::default() });
        let (left, right) = (channel(&out, 2, 0), channel(&out, 2, 1));
        assert!(tone_power(&left[..7000], 8000, 440.0) > 100.0 * tone_power(&left[..7000], 8000, 1000.0));
        assert!(tone_power(&right[1600..], 8000, 1000.0) > 100.0 * tone_power(&right[1600..], 8000, 440.0));
        // Channel 1's first packet landed at its arrival (214 ms: 1712 frames), the rest after it
        // by their timestamps, whatever their jitter.
        assert!(right[..1712].iter().all(|s| *s == 0), "silence before channel 1 starts");
        assert!(right[1712..1760].iter().any(|s| *s != 0));
        assert_eq!(out.len(), 2 * (1712 + 45 * 160), "both channels run to the last packet");
    }

    #[test]
    fn lost_packets_are_silence_late_ones_are_dropped_and_reordered_ones_land_in_place() {
        let mut r = Recording::new(1, 8000).expect("recording");
        let p = packets(440.0, 60, 7);
        let mut out = Vec::new();
        for (i, pkt) in p.iter().enumerate() {
            let t = ms(20 * i as u64);
            match i {
                10 => continue,                               // lost
                20 => r.push_rtp(0, Some(pcmu()), &p[21], t), // 21 before 20
                21 => r.push_rtp(0, Some(pcmu()), &p[20], t),
                _ => r.push_rtp(0, Some(pcmu()), pkt, t),
            }
            r.take_ready(t, &mut out);
        }
        // Packet 10 much too late: its place is written already.
        r.push_rtp(0, Some(pcmu()), &p[10], ms(20 * 59));
        r.finish(&mut out);
        assert_eq!((r.counters.packets, r.counters.late), (59, 1));
        assert_eq!(out.len(), 60 * 160);
        assert!(out[1600..1760].iter().all(|s| *s == 0), "the lost packet is silence");
        assert!(tone_power(&out[3200..3520], 8000, 440.0) > 1e10, "reordered packets in place");
    }

    #[test]
    fn a_packet_seconds_late_is_counted_late_and_does_not_move_the_stream() {
        let mut r = Recording::new(1, 8000).expect("recording");
        let p = packets(440.0, 150, 9);
        for (i, pkt) in p.iter().enumerate().skip(1) {
            r.push_rtp(0, Some(pcmu()), pkt, ms(20 * i as u64));
        }
        // Packet 0 arrives 2 s after its time: late, no resync.
        r.push_rtp(0, Some(pcmu()), &p[0], ms(20 * 150));
        assert_eq!((r.counters.late, r.counters.resyncs, r.counters.packets), (1, 0, 149));
    }

    #[test]
    fn other_payload_types_and_garbage_are_skipped_and_a_new_source_reanchors() {
        let mut r = Recording::new(1, 16_000).expect("recording");
        let mut event = packets(440.0, 1, 3).remove(0);
        event[1] = 101;
        r.push_rtp(0, Some(pcmu()), &event, ms(0));
        r.push_rtp(0, Some(pcmu()), b"\x80\x00", ms(0));
        r.push_rtp(0, None, &packets(440.0, 1, 3)[0], ms(0));
        r.push_rtp(9, Some(pcmu()), &packets(440.0, 1, 3)[0], ms(0));
        assert_eq!(r.counters.skipped, 3);
        // A stream whose timestamps jump 10 s is re-anchored at its arrival.
        let p = packets(440.0, 3, 4);
        r.push_rtp(0, Some(pcmu()), &p[0], ms(0));
        let mut jumped = p[1].clone();
        jumped[4..8].copy_from_slice(&(160u32 + 80_000).to_be_bytes());
        r.push_rtp(0, Some(pcmu()), &jumped, ms(20));
        assert_eq!(r.counters.resyncs, 1);
        let mut out = Vec::new();
        r.finish(&mut out);
        assert_eq!(out.len(), 2 * 320, "16 kHz: two 20 ms packets, the second right after the first");
        assert!(Recording::new(0, 8000).is_none() && Recording::new(1, 44_100).is_none());
    }

    #[test]
    fn a_mix_in_pcm_follows_on_and_resyncs_after_a_gap() {
        let mut r = Recording::new(1, 16_000).expect("recording");
        let frame = sine(16_000, 500.0, 0.02, 8000.0);
        for i in 0..10 {
            r.push_pcm(0, 16_000, &frame, ms(20 * i));
        }
        // Nothing for 2 s, then more: placed at its arrival.
        r.push_pcm(0, 16_000, &frame, ms(2200));
        let mut out = Vec::new();
        r.finish(&mut out);
        assert_eq!(out.len(), 2200 * 16 + 320);
        assert!(out[3200..2200 * 16].iter().all(|s| *s == 0));
    }
}
