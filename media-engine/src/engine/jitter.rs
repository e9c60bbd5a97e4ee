//! The jitter buffer in front of a conference member's decoder: packets in arrival order,
//! PCM out one mixing period at a time, in sequence order.
//!
//! * **Order and duplicates**: packets are held by their extended sequence number; a second
//!   copy of one is dropped, a packet behind the playout point is late and dropped (counted).
//! * **Depth**: playout starts once the buffer holds its target depth, in packet times; the
//!   target follows the measured interarrival jitter (RFC 3550 §A.8): `2 × jitter + 1` packet
//!   times, between 1 and [`MAX_DEPTH`]. A buffer that runs dry waits for the target again.
//! * **Loss**: a missing packet with later ones waiting is concealed by the decoder (Opus with
//!   the next packet's FEC), so the member's audio stays continuous.
//! * **Resync**: a new SSRC, or a sequence number or timestamp jump too large to be loss or
//!   reordering, empties the buffer and starts again.

/// Most packet times buffered before playout.
pub const MAX_DEPTH: u32 = 10;
/// Packets held at most, in a ring by sequence number (a newer packet that needs a slot still
/// holding an older one drops it: a burst cannot grow the buffer).
const SLOTS: usize = 64;
/// A sequence jump larger than this restarts the stream.
const MAX_GAP: u64 = 100;

/// Counters of one jitter buffer.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct JitterCounters {
    pub duplicates: u64,
    pub late: u64,
    pub concealed: u64,
    pub resyncs: u64,
    /// Packets dropped because too many were held.
    pub overflow: u64,
}

/// What the next packet time plays.
#[derive(Debug, PartialEq, Eq)]
pub enum Playout<'a> {
    /// This payload.
    Packet(&'a [u8]),
    /// A lost packet: conceal it (the next payload, for FEC, if there is one).
    Lost(Option<&'a [u8]>),
    /// Nothing to play yet (filling, or run dry): silence.
    Wait,
}

/// One member's jitter buffer (see the module documentation). Its packet buffers are reused:
/// nothing allocates once it has seen a few packets.
#[derive(Debug)]
pub struct JitterBuffer {
    /// Slot `ext % SLOTS`: the packet of that extended sequence number, if held.
    ring: Vec<Option<(u64, Vec<u8>)>>,
    held: usize,
    spare: Vec<Vec<u8>>,
    ssrc: Option<u32>,
    /// Extended sequence number of the highest packet seen, and the next one to play.
    highest: Option<u64>,
    next: Option<u64>,
    playing: bool,
    /// RFC 3550 jitter estimate (RTP clock units × 16) and the last transit.
    jitter_x16: u64,
    last_transit: Option<i64>,
    last_ts: Option<u32>,
    /// RTP clock units per packet time.
    ts_per_packet: u32,
    /// The packet just played, kept for the caller to borrow.
    current: Vec<u8>,
    pub counters: JitterCounters,
}

impl JitterBuffer {
    /// A buffer for packets of `ts_per_packet` RTP clock units each.
    pub fn new(ts_per_packet: u32) -> Self {
        JitterBuffer {
            ring: (0..SLOTS).map(|_| None).collect(),
            held: 0,
            spare: Vec::new(),
            ssrc: None,
            highest: None,
            next: None,
            playing: false,
            jitter_x16: 0,
            last_transit: None,
            last_ts: None,
            ts_per_packet: ts_per_packet.max(1),
            current: Vec::new(),
            counters: JitterCounters::default(),
        }
    }

    fn slot(ext: u64) -> usize {
        (ext % SLOTS as u64) as usize
    }

    /// Takes packet `ext` out, if held.
    fn take(&mut self, ext: u64) -> Option<Vec<u8>> {
        let slot = self.ring.get_mut(Self::slot(ext))?;
        if slot.as_ref().is_some_and(|(e, _)| *e == ext) {
            self.held -= 1;
            return slot.take().map(|(_, p)| p);
        }
        None
    }

    fn holds(&self, ext: u64) -> bool {
        self.ring.get(Self::slot(ext)).is_some_and(|s| s.as_ref().is_some_and(|(e, _)| *e == ext))
    }

    /// The lowest sequence number held.
    fn first(&self) -> Option<u64> {
        self.ring.iter().flatten().map(|(e, _)| *e).min()
    }

    /// The depth playout waits for, in packet times.
    pub fn target_depth(&self) -> u32 {
        let jitter = (self.jitter_x16 >> 4) as u32;
        (2 * jitter / self.ts_per_packet + 1).clamp(1, MAX_DEPTH)
    }

    /// Packets waiting.
    pub fn held(&self) -> usize {
        self.held
    }

    fn reset(&mut self) {
        for slot in &mut self.ring {
            if let Some((_, p)) = slot.take() {
                self.spare.push(p);
            }
        }
        self.held = 0;
        self.highest = None;
        self.next = None;
        self.playing = false;
        self.last_transit = None;
        self.last_ts = None;
    }

    /// A packet arrived at `arrival` (in the stream's RTP clock units, from any fixed origin).
    pub fn insert(&mut self, ssrc: u32, seq: u16, ts: u32, arrival: u32, payload: &[u8]) {
        let jumped_ts = self.last_ts.is_some_and(|last| {
            let d = ts.wrapping_sub(last) as i32;
            d.unsigned_abs() > self.ts_per_packet.saturating_mul(MAX_GAP as u32)
        });
        if self.ssrc != Some(ssrc) || jumped_ts {
            if self.ssrc.is_some() {
                self.counters.resyncs += 1;
            }
            self.reset();
            self.ssrc = Some(ssrc);
        }
        // Extend the sequence number around the highest seen.
        let ext = match self.highest {
            None => u64::from(seq) + (1 << 16),
            Some(h) => {
                let delta = i64::from(seq.wrapping_sub(h as u16) as i16);
                (h as i64 + delta).max(0) as u64
            }
        };
        if self.highest.is_some_and(|h| ext > h + MAX_GAP) {
            self.counters.resyncs += 1;
            self.reset();
            self.ssrc = Some(ssrc);
            return self.insert(ssrc, seq, ts, arrival, payload);
        }
        if self.next.is_some_and(|n| ext < n) {
            self.counters.late += 1;
            return;
        }
        if self.holds(ext) {
            self.counters.duplicates += 1;
            return;
        }
        // Jitter from the arrival and RTP times (RFC 3550 §A.8).
        let transit = i64::from(arrival.wrapping_sub(ts) as i32);
        if let Some(last) = self.last_transit {
            let d = (transit - last).unsigned_abs();
            self.jitter_x16 = self.jitter_x16 + d - (self.jitter_x16 >> 4);
        }
        self.last_transit = Some(transit);
        self.last_ts = Some(ts);
        self.highest = Some(self.highest.map_or(ext, |h| h.max(ext)));
        let mut buf = self.spare.pop().unwrap_or_default();
        buf.clear();
        buf.extend_from_slice(payload);
        let Some(slot) = self.ring.get_mut(Self::slot(ext)) else { return };
        match slot.replace((ext, buf)) {
            Some((_, old)) => {
                // An older packet still waiting where this one goes: it has waited too long.
                self.spare.push(old);
                self.counters.overflow += 1;
            }
            None => self.held += 1,
        }
    }

    /// What the next packet time plays.
    pub fn pop(&mut self) -> Playout<'_> {
        if !self.playing {
            if self.held < self.target_depth() as usize {
                return Playout::Wait;
            }
            self.playing = true;
            self.next = self.first();
        }
        let Some(next) = self.next else { return Playout::Wait };
        if let Some(payload) = self.take(next) {
            self.next = Some(next + 1);
            let played = std::mem::replace(&mut self.current, payload);
            self.spare.push(played);
            return Playout::Packet(&self.current);
        }
        if self.held == 0 {
            // Run dry: wait for the target depth again before playing on.
            self.playing = false;
            return Playout::Wait;
        }
        self.next = Some(next + 1);
        self.counters.concealed += 1;
        let following = self.ring.get(Self::slot(next + 1)).and_then(|s| s.as_ref()).filter(|(e, _)| *e == next + 1);
        match following {
            Some((_, p)) => {
                self.current.clone_from(p);
                Playout::Lost(Some(&self.current))
            }
            None => Playout::Lost(None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Plays until the buffer waits; returns what was played (sequence numbers as payloads,
    /// `L` for a concealed packet).
    fn drain(j: &mut JitterBuffer) -> Vec<String> {
        let mut out = Vec::new();
        loop {
            match j.pop() {
                Playout::Packet(p) => out.push(p[0].to_string()),
                Playout::Lost(_) => out.push("L".into()),
                Playout::Wait => return out,
            }
        }
    }

    #[test]
    fn reordered_packets_play_in_order_and_duplicates_and_late_ones_are_dropped() {
        let mut j = JitterBuffer::new(160);
        for (seq, arrival) in [(1u16, 160u32), (3, 480), (2, 500), (2, 510), (4, 640)] {
            j.insert(7, seq, u32::from(seq) * 160, arrival, &[seq as u8]);
        }
        assert_eq!(drain(&mut j), ["1", "2", "3", "4"]);
        j.insert(7, 2, 320, 700, &[2]);
        assert_eq!((j.counters.duplicates, j.counters.late), (1, 1));
    }

    #[test]
    fn a_lost_packet_is_concealed_with_the_next_one_for_fec() {
        let mut j = JitterBuffer::new(160);
        for seq in [10u16, 11, 13, 14] {
            j.insert(7, seq, u32::from(seq) * 160, u32::from(seq) * 160, &[seq as u8]);
        }
        assert_eq!(j.pop(), Playout::Packet(&[10]));
        assert_eq!(j.pop(), Playout::Packet(&[11]));
        assert_eq!(j.pop(), Playout::Lost(Some(&[13])), "12 is lost; 13 carries its FEC");
        assert_eq!(drain(&mut j), ["13", "14"]);
        assert_eq!(j.counters.concealed, 1);
    }

    #[test]
    fn depth_follows_jitter_and_a_dry_buffer_refills_before_playing() {
        let mut j = JitterBuffer::new(160);
        // Evenly spaced: one packet of depth.
        for seq in 0..50u16 {
            j.insert(7, seq, u32::from(seq) * 160, u32::from(seq) * 160, &[0]);
        }
        assert_eq!(j.target_depth(), 1);
        // Arrivals off by ±60 ms: the target grows.
        let mut j = JitterBuffer::new(160);
        for seq in 0..50u16 {
            let wobble = if seq % 2 == 0 { 0 } else { 480 };
            j.insert(7, seq, u32::from(seq) * 160, u32::from(seq) * 160 + wobble, &[0]);
        }
        assert!(j.target_depth() >= 4, "target {} for 60 ms of jitter", j.target_depth());
        drain(&mut j);
        j.insert(7, 50, 50 * 160, 50 * 160, &[0]);
        assert_eq!(j.pop(), Playout::Wait, "refilling to the target first");
    }

    #[test]
    fn a_new_ssrc_or_a_big_jump_resyncs() {
        let mut j = JitterBuffer::new(160);
        j.insert(7, 100, 16_000, 16_000, &[1]);
        j.insert(8, 5, 800, 16_160, &[2]);
        assert_eq!(drain(&mut j), ["2"]);
        j.insert(8, 6000, 960_000, 16_320, &[3]);
        assert_eq!(drain(&mut j), ["3"]);
        assert_eq!(j.counters.resyncs, 2);
        // The sequence wraps without a resync.
        let mut j = JitterBuffer::new(160);
        for seq in [65_534u16, 65_535, 0, 1] {
            j.insert(9, seq, u32::from(seq.wrapping_add(10)) * 160, u32::from(seq.wrapping_add(10)) * 160, &[seq as u8]);
        }
        assert_eq!(drain(&mut j), ["254", "255", "0", "1"]);
        assert_eq!(j.counters.resyncs, 0);
    }
}
