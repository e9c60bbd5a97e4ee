//! Call quality per leg (RFC 3550): what the media plane measures on the RTP an endpoint sends
//! (packets expected and lost from the sequence numbers, §A.1; interarrival jitter, §A.8), what
//! the endpoint reports in its RTCP receiver reports about the stream it gets (fraction and
//! cumulative loss, jitter), and the round-trip time between the media plane and the endpoint
//! (an endpoint's report names the last sender report it got, LSR, and how long it held it,
//! DLSR; the media plane remembers when it sent that sender report on, so
//! RTT = now − sent − DLSR).
//!
//! All of it is a few integer operations per packet; RTCP is parsed only on RTCP packets.

use std::time::{Duration, Instant};

use crate::wire::RtpPacket;

/// Sequence-number jumps larger than this start a new run (RFC 3550 §A.1).
const MAX_DROPOUT: u16 = 3000;
/// Sequence numbers this far behind the highest are late packets, not a restart.
const MAX_MISORDER: u16 = 100;
/// Sender reports remembered per leg for RTT (a report names one of the last few).
const SR_HISTORY: usize = 4;

/// RTP statistics of the stream an endpoint sends, and what it reports about the stream it gets.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QualityStats {
    /// Packets expected from the sequence numbers seen.
    pub expected: u64,
    /// Expected but not received (negative with duplicates: then 0).
    pub lost: u64,
    /// Interarrival jitter in microseconds (needs the clock rate: the leg's codec or a static
    /// payload type).
    pub jitter_us: Option<u64>,
    /// From the endpoint's last receiver report on the stream sent to it: fraction lost (0–255 =
    /// 0–100 %), cumulative lost, jitter in microseconds.
    pub remote_fraction_lost: Option<u8>,
    pub remote_lost: Option<u32>,
    pub remote_jitter_us: Option<u64>,
    /// Round trip between the media plane and the endpoint, from its last report naming a sender
    /// report the media plane sent it.
    pub rtt_us: Option<u64>,
}

/// The measuring state of one leg.
#[derive(Debug, Default, Clone)]
pub struct Quality {
    /// RFC 3550 §A.1 state: base and highest sequence number, cycles, bad-sequence probe.
    base_seq: Option<u32>,
    max_seq: u16,
    cycles: u32,
    bad_seq: Option<u16>,
    received: u64,
    /// §A.8: last relative transit time and the jitter estimate (clock units × 16).
    last_transit: Option<i64>,
    jitter_x16: u64,
    clock: u32,
    /// Sender reports sent on out of this leg: (middle 32 bits of their NTP time, when).
    sent_srs: [(u32, Option<Instant>); SR_HISTORY],
    next_sr: usize,
    stats: QualityStats,
    /// The endpoint's SSRC, and its last sender report (middle 32 bits of its NTP time, when it
    /// came), for the media plane's own receiver reports.
    ssrc: Option<u32>,
    last_sr: Option<(u32, Instant)>,
    /// Expected and received at the last report block made (RFC 3550 §A.3's interval loss).
    prior: (u64, u64),
}

/// A report block (RFC 3550 §6.4.1) about the stream an endpoint sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReportBlock {
    pub ssrc: u32,
    /// Lost since the last block, in 1/256.
    pub fraction_lost: u8,
    /// Cumulative lost, clamped to 24 bits.
    pub cumulative_lost: u32,
    pub extended_highest_seq: u32,
    /// Interarrival jitter in RTP clock units.
    pub jitter: u32,
    /// Middle 32 bits of the endpoint's last sender report's NTP time, and the delay since it
    /// came in 1/65536 s (0 and 0 without one).
    pub lsr: u32,
    pub dlsr: u32,
}

impl Quality {
    /// Counts one RTP packet from the endpoint, which arrived at `now` (`epoch` is any fixed
    /// instant of the engine; `clock` the stream's RTP clock if known).
    pub fn on_rtp(&mut self, rtp: &RtpPacket<&[u8]>, now: Instant, epoch: Instant, clock: Option<u32>) {
        let seq = rtp.sequence_number();
        match self.base_seq {
            None => {
                self.base_seq = Some(u32::from(seq));
                self.max_seq = seq;
            }
            Some(_) => {
                let delta = seq.wrapping_sub(self.max_seq);
                if delta != 0 && delta < MAX_DROPOUT {
                    if seq < self.max_seq {
                        self.cycles += 1 << 16;
                    }
                    self.max_seq = seq;
                } else if delta != 0 && delta <= u16::MAX - MAX_MISORDER {
                    // A big jump: a restarted stream once two packets agree on it.
                    if self.bad_seq == Some(seq) {
                        self.base_seq = Some(u32::from(seq));
                        self.max_seq = seq;
                        self.cycles = 0;
                        self.received = 0;
                        self.last_transit = None;
                    } else {
                        self.bad_seq = Some(seq.wrapping_add(1));
                        return;
                    }
                }
            }
        }
        self.received += 1;
        self.ssrc = Some(rtp.ssrc());
        if let Some(clock) = clock.filter(|c| *c > 0) {
            self.clock = clock;
            let arrival = (now.saturating_duration_since(epoch).as_nanos() * u128::from(clock) / 1_000_000_000) as u32;
            let transit = i64::from(arrival.wrapping_sub(rtp.timestamp()) as i32);
            if let Some(last) = self.last_transit {
                let d = (transit - last).unsigned_abs();
                // J += (|D| − J) / 16, kept as 16·J in integers (RFC 3550 §A.8).
                self.jitter_x16 = self.jitter_x16 + d - (self.jitter_x16 >> 4);
            }
            self.last_transit = Some(transit);
        }
    }

    /// Reads the endpoint's RTCP (a compound packet): its report on the stream sent to it, and
    /// the RTT when the report names a sender report this leg sent on.
    pub fn on_rtcp_from_endpoint(&mut self, packet: &[u8], now: Instant) {
        for (pt, count, body) in crate::wire::rtcp_compound(packet) {
            if let (200, Some(ntp)) = (pt, body.get(4..12)) {
                self.last_sr = Some((u32::from_be_bytes([ntp[2], ntp[3], ntp[4], ntp[5]]), now));
            }
            let blocks = match pt {
                200 => body.get(24..),
                201 => body.get(4..),
                _ => None,
            };
            let Some(block) = blocks.and_then(|b| b.get(..24)).filter(|_| count > 0) else { continue };
            let word = |i: usize| u32::from_be_bytes([block[i], block[i + 1], block[i + 2], block[i + 3]]);
            self.stats.remote_fraction_lost = Some(block[4]);
            self.stats.remote_lost = Some(word(4) & 0x00ff_ffff);
            if self.clock > 0 {
                self.stats.remote_jitter_us = Some(u64::from(word(12)) * 1_000_000 / u64::from(self.clock));
            }
            let (lsr, dlsr) = (word(16), word(20));
            if lsr != 0 {
                if let Some(sent) = self.sent_srs.iter().find(|(mid, at)| *mid == lsr && at.is_some()).and_then(|(_, at)| *at) {
                    let held = Duration::from_micros(u64::from(dlsr) * 1_000_000 / 65_536);
                    let rtt = now.saturating_duration_since(sent).saturating_sub(held);
                    self.stats.rtt_us = Some(rtt.as_micros() as u64);
                }
            }
        }
    }

    /// Notes a sender report this leg sends on to its endpoint (for the RTT of its answer).
    pub fn on_rtcp_to_endpoint(&mut self, packet: &[u8], now: Instant) {
        if let Some((200, _, body)) = crate::wire::rtcp_compound(packet).next() {
            if let Some(ntp) = body.get(4..12) {
                let mid = u32::from_be_bytes([ntp[2], ntp[3], ntp[4], ntp[5]]);
                self.sent_srs[self.next_sr % SR_HISTORY] = (mid, Some(now));
                self.next_sr += 1;
            }
        }
    }

    /// A report block on the endpoint's stream for a report the media plane sends at `now`
    /// (`None` before its first packet). Starts the next interval of the fraction lost.
    pub fn report_block(&mut self, now: Instant) -> Option<ReportBlock> {
        let ssrc = self.ssrc?;
        let stats = self.stats();
        let (expected, received) = (stats.expected, self.received);
        let expected_interval = expected.saturating_sub(self.prior.0);
        let lost_interval = expected_interval.saturating_sub(received.saturating_sub(self.prior.1));
        self.prior = (expected, received);
        let fraction_lost = (lost_interval << 8).checked_div(expected_interval).map_or(0, |f| f.min(255) as u8);
        let (lsr, dlsr) = match self.last_sr {
            Some((mid, at)) => (mid, (now.saturating_duration_since(at).as_micros() * 65_536 / 1_000_000).min(u128::from(u32::MAX)) as u32),
            None => (0, 0),
        };
        Some(ReportBlock {
            ssrc,
            fraction_lost,
            cumulative_lost: stats.lost.min(0x7f_ffff) as u32,
            extended_highest_seq: self.cycles.wrapping_add(u32::from(self.max_seq)),
            jitter: (self.jitter_x16 >> 4).min(u64::from(u32::MAX)) as u32,
            lsr,
            dlsr,
        })
    }

    /// The statistics now.
    pub fn stats(&self) -> QualityStats {
        let expected = self.base_seq.map_or(0, |base| u64::from(self.cycles + u32::from(self.max_seq)) + 1 - u64::from(base));
        QualityStats {
            expected,
            lost: expected.saturating_sub(self.received),
            jitter_us: (self.clock > 0).then(|| (self.jitter_x16 >> 4) * 1_000_000 / u64::from(self.clock)),
            ..self.stats
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::write_rtp_header;

    fn rtp(seq: u16, ts: u32) -> Vec<u8> {
        let mut p = vec![0u8; 172];
        write_rtp_header(&mut p, 0, seq, ts, 1).unwrap();
        p
    }

    #[test]
    fn loss_is_counted_across_the_sequence_wrap_and_reordering_is_not_loss() {
        let epoch = crate::harness::Harness::new(
            crate::engine::EngineConfig { media_timeout: Duration::from_secs(1), core: 0, seed: 1, wall: None },
            Default::default(),
            1,
        )
        .now();
        let mut q = Quality::default();
        let mut feed = |seqs: &[u16]| {
            for (i, &s) in seqs.iter().enumerate() {
                q.on_rtp(
                    &RtpPacket::new_checked(&rtp(s, u32::from(s) * 160)[..]).unwrap(),
                    epoch + Duration::from_millis(20 * i as u64),
                    epoch,
                    Some(8000),
                );
            }
        };
        feed(&[65_530, 65_531, 65_533, 65_532, 65_535, 0, 1, 3]);
        let s = q.stats();
        assert_eq!((s.expected, s.lost), (10, 2), "65534 and 2 missing; 65532 arrived late");
    }

    #[test]
    fn jitter_grows_with_uneven_arrival_as_rfc3550_defines_it() {
        let epoch = crate::harness::Harness::new(
            crate::engine::EngineConfig { media_timeout: Duration::from_secs(1), core: 0, seed: 1, wall: None },
            Default::default(),
            1,
        )
        .now();
        let mut q = Quality::default();
        for i in 0..200u16 {
            // Every other packet 10 ms late: |D| alternates 80 and 80 clock units.
            let late = if i % 2 == 1 { 10 } else { 0 };
            let at = epoch + Duration::from_millis(20 * u64::from(i) + late);
            q.on_rtp(&RtpPacket::new_checked(&rtp(i, u32::from(i) * 160)[..]).unwrap(), at, epoch, Some(8000));
        }
        let j = q.stats().jitter_us.unwrap();
        assert!((9_000..=10_100).contains(&j), "jitter converges to |D| = 10 ms: {j} µs");
    }

    #[test]
    fn receiver_report_gives_remote_loss_jitter_and_rtt_of_a_sender_report_sent_on() {
        let epoch = crate::harness::Harness::new(
            crate::engine::EngineConfig { media_timeout: Duration::from_secs(1), core: 0, seed: 1, wall: None },
            Default::default(),
            1,
        )
        .now();
        let mut q = Quality::default();
        q.on_rtp(&RtpPacket::new_checked(&rtp(1, 160)[..]).unwrap(), epoch, epoch, Some(8000));
        // A sender report (NTP middle bits 0x1234_5678) goes out to the endpoint at t = 100 ms.
        let mut sr = vec![0x80, 200, 0, 6, 0, 0, 0, 9, 0xaa, 0xbb, 0x12, 0x34, 0x56, 0x78, 0xcc, 0xdd];
        sr.extend_from_slice(&[0; 12]);
        q.on_rtcp_to_endpoint(&sr, epoch + Duration::from_millis(100));
        // Its receiver report at t = 400 ms: held 250 ms (DLSR), so the round trip is 50 ms.
        let mut rr = vec![0x81, 201, 0, 7, 0, 0, 0, 5];
        rr.extend_from_slice(&[0, 0, 0, 9, 64, 0, 0, 12, 0, 0, 0, 100, 0, 0, 0, 80]);
        rr.extend_from_slice(&0x1234_5678u32.to_be_bytes());
        rr.extend_from_slice(&((250u32 * 65_536) / 1000).to_be_bytes());
        q.on_rtcp_from_endpoint(&rr, epoch + Duration::from_millis(400));
        let s = q.stats();
        assert_eq!((s.remote_fraction_lost, s.remote_lost, s.remote_jitter_us), (Some(64), Some(12), Some(10_000)));
        let rtt = s.rtt_us.unwrap();
        assert!((49_000..=51_000).contains(&rtt), "RTT {rtt} µs");
        // Garbage never panics and changes nothing.
        q.on_rtcp_from_endpoint(&[0x81, 201, 0xff, 0xff, 1], epoch);
        assert_eq!(q.stats(), s);
    }
}
