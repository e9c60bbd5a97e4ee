//! The sans-IO engine of one core: relay, transcoding, SRTP, DTMF, players, conferences.
//!
//! An [`Engine`] owns the legs, bridges and conferences of its core. It never reads a clock or touches a socket:
//! drivers (UDP, AF_XDP, the virtual-time [`crate::harness`] in tests) hand it packets with the
//! time they arrived and act on what it returns.
//!
//! ```text
//!   driver ── handle_packet(port, src, bytes, now) ──► Verdict::Forward { from_port, to }  (send the same bytes)
//!          │                                           Verdict::Handoff { core, handoff }  (copy to that core:
//!          │                                                                 its decryption if it was SRTP)
//!          │                                           Verdict::Consumed                  (transcoded, mixed,
//!          │                                                                 re-encrypted: out via poll_transmit)
//!          │                                           Verdict::Drop(reason)              (counted here)
//!          ├─ handle_handoff(handoff, bytes, now)      the far half of a cross-core bridge: queues a transmit
//!          ├─ poll_transmit(buf)                       packets the engine made: hand-offs, transcoded,
//!          │                                           DTMF, RTCP reports, plays, conference mixes
//!          ├─ commands: legs, set_leg_media (offer/answer), bridges, conferences, play, inject_dtmf
//!          ├─ handle_timeout(now) at poll_timeout()    (packet times of plays and injected digits,
//!          │                                           20 ms conference ticks, 1 s sweeps: media
//!          │                                           timeouts, RTCP reports, quality alarms)
//!          ├─ poll_event()                             (latched, timed out, DTMF, play finished, quality)
//!          └─ poll_cross() / handle_unlink()           (bridge halves on other cores to undo)
//! ```
//!
//! **Bridges across cores.** A leg belongs to the core that owns its port. Two legs on one core
//! are bridged in place (the fast path: two array lookups, the received buffer sent on). Legs on
//! two cores are joined by a bridge in two halves, one per core ([`Engine::link_remote`]): a
//! packet for the far leg comes back as [`Verdict::Handoff`]; the driver copies it over a bounded
//! queue to the owning core, whose engine checks the pairing, counts it and queues it for sending
//! ([`Engine::handle_handoff`], [`Engine::poll_transmit`]). When a half goes (bridge or leg
//! deleted, media timeout), [`Engine::poll_cross`] says which half on which core to undo.
//!
//! Lookup on the fast path is two array indexations: local port → leg slot, leg → peer slot. The
//! relay path does not allocate; the transmit queue, the SRTP scratch buffer and the conference
//! jitter buffers reuse theirs (a codec may allocate inside; see `media-codecs`).

pub mod conference;
pub(crate) mod direction;
pub mod dtmf;
pub mod jitter;
mod leg;
pub mod quality;
pub mod transcode;

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use conference::{Conference, ConferenceId};
pub use direction::Direction;
pub use leg::{DropReason, Drops, LegCounters, LegMedia, LegSpec, LegStats, QualityAlarm, Remote};
use leg::{Leg, Peer, PortKind};
pub use transcode::{LegCodec, TranscodeCounters, TranscodeError};
use transcode::{Rejected, Transcoder};

/// How long a leg on hold (direction sendonly, recvonly or inactive) may receive nothing before
/// it is deleted; sendrecv legs keep their media timeout.
pub const HOLD_TIMEOUT: Duration = Duration::from_secs(3600);

use crate::sdp::PendingOffer;
use crate::srtp::{SrtpContext, SrtpFailure, SrtpSetupError};
use crate::wire::{self, RtcpPacket, RtpPacket};

/// Identifies a leg across the whole media plane (the owning core is in the top byte).
pub type LegId = u64;
/// Identifies a bridge across the whole media plane.
pub type BridgeId = u64;

/// How often legs are checked for media timeout: timeouts fire within this much of their deadline.
pub const SWEEP_INTERVAL: Duration = Duration::from_secs(1);

/// Longest packet the engine queues for sending (hand-offs, generated media).
pub const MAX_TRANSMIT: usize = 2048;
/// Packets the transmit queue holds before more are dropped (`queue_full`).
pub const TRANSMIT_QUEUE: usize = 4096;

/// What the driver does with a packet it handed to [`Engine::handle_packet`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use]
pub enum Verdict {
    /// Send the packet, unchanged, from local port `from_port` to `to`.
    Forward { from_port: u16, to: SocketAddr },
    /// The bridged leg lives on core `core`: copy the packet there with `handoff`, for that core's
    /// [`Engine::handle_handoff`]. If the copy cannot be queued, call
    /// [`Engine::handle_handoff_dropped`].
    Handoff { core: usize, handoff: Handoff },
    /// The engine took the packet (transcoding: what it makes of it comes out of
    /// [`Engine::poll_transmit`]); nothing to send now.
    Consumed,
    /// Drop it; the engine has counted it.
    Drop(DropReason),
}

/// A packet crossing from one core's leg to its bridged leg on another core.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Handoff {
    /// The leg the packet is for (on the receiving core).
    pub to_leg: LegId,
    /// The leg it arrived on, and its core.
    pub from_leg: LegId,
    pub from_core: usize,
    /// The bridge joining them (a conference: the conference).
    pub bridge: BridgeId,
    /// RTCP (else RTP).
    pub rtcp: bool,
    /// Conference media across cores: the conference's packet for member `to_leg` of the
    /// receiving core, to send out from its ports.
    pub conference: bool,
}

/// A packet the engine made, copied into the driver's buffer by [`Engine::poll_transmit`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transmit {
    /// Send from this local port (a leg's RTP or RTCP port)...
    pub from_port: u16,
    /// ...to this address.
    pub to: SocketAddr,
    /// Bytes written at the start of the buffer.
    pub len: usize,
}

/// Work for another core, from [`Engine::poll_cross`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CrossMessage {
    /// This core's half of `bridge` is gone: core `core` must drop its half, on its leg `leg`
    /// ([`Engine::handle_unlink`]).
    Unlink { core: usize, leg: LegId, bridge: BridgeId },
    /// Conference `conference`'s packet for member `leg` of core `core`, to go out from that
    /// leg's ports (as a [`Handoff`] with `conference`, the conference in `bridge`).
    MemberOut { core: usize, conference: ConferenceId, leg: LegId, packet: Vec<u8> },
    /// A mixing period's audio of member `leg` of this core, decoded here at the mixing rate,
    /// for conference `conference` of core `core` ([`Engine::handle_member_frame`]).
    MemberFrame { core: usize, conference: ConferenceId, leg: LegId, pcm: Vec<i16> },
    /// Leg `leg` of this core, a member of conference `conference` of core `core`, is gone:
    /// take it out there ([`Engine::remove_member`]).
    MemberGone { core: usize, conference: ConferenceId, leg: LegId },
    /// Conference member `leg` of core `core` is no longer in this core's conference
    /// `conference` (removed, or the conference ended): its media stops going there
    /// ([`Engine::unjoin`]).
    Unjoin { core: usize, conference: ConferenceId, leg: LegId },
}

/// Something the control plane (and the driver) must learn about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// The leg learnt its remote address from a packet.
    Latched { leg: LegId, remote: SocketAddr, rtcp: bool },
    /// The leg was idle for its media timeout and has been removed; the driver frees its ports.
    TimedOut { leg: LegId, stats: Box<LegStats> },
    /// A conference member started (`talking`) or stopped talking: its level, the energy with
    /// about 0.7 s of hangover, crossed the talk thresholds.
    Talking { leg: LegId, conference: ConferenceId, talking: bool },
    /// A leg joined or left a conference (left: removed, or the conference was deleted).
    Member { leg: LegId, conference: ConferenceId, joined: bool },
    /// The leg's endpoint sent a DTMF digit (RFC 4733, or tones heard on a transcoded leg),
    /// lasting `duration_ms`.
    Dtmf { leg: LegId, digit: char, duration_ms: u32 },
    /// Play `play` to the leg ended: it reached its end, or (`stopped`) it was stopped or
    /// replaced.
    PlayFinished { leg: LegId, play: u64, stopped: bool },
    /// The stream the leg's endpoint sends crossed its quality thresholds (`alarm`: now above
    /// them; else back under), with the loss and jitter of the last judged interval.
    Quality { leg: LegId, alarm: bool, loss_permille: u32, jitter_us: u64 },
    /// A recording ended. Sent by the media plane's recorder (which runs
    /// [`crate::record::Recording`]), not by a core.
    RecordingStopped(Box<crate::record::RecordingSummary>),
}

/// Misuse of the command API (unknown ids, conflicting state). The fast path has no errors: it
/// counts drops.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CommandError {
    #[error("leg {0} does not exist")]
    NoSuchLeg(LegId),
    #[error("bridge {0} does not exist")]
    NoSuchBridge(BridgeId),
    #[error("leg {0} already exists")]
    LegExists(LegId),
    #[error("port {0} is already in use by another leg")]
    PortInUse(u16),
    #[error("leg {0} is already in bridge {1}")]
    AlreadyBridged(LegId, BridgeId),
    #[error("a leg cannot be bridged to itself")]
    SelfBridge,
    #[error("bridge {0} already exists")]
    BridgeExists(BridgeId),
    #[error("cannot transcode between the legs' codecs: {0}")]
    Transcode(#[from] TranscodeError),
    #[error("{0}")]
    Srtp(#[from] SrtpSetupError),
    #[error("leg {0} has no codec: digits are injected into the stream the media plane makes for a leg of a known codec")]
    NoCodec(LegId),
    #[error("no DTMF digit (0-9, *, #, A-D) in {0:?}")]
    NoDigits(String),
    #[error("leg {0} has as many digits waiting as it takes; try when they have played")]
    DtmfQueueFull(LegId),
    #[error("conference {0} does not exist")]
    NoSuchConference(ConferenceId),
    #[error("{0} is being recorded already (recording {1})")]
    Recorded(u64, u64),
    #[error("conference {0} already exists")]
    ConferenceExists(ConferenceId),
    #[error("leg {0} is in conference {1}")]
    InConference(LegId, ConferenceId),
    #[error("leg {0} is not in conference {1}")]
    NotMember(LegId, ConferenceId),
    #[error("{0} Hz is not a conference rate (8000, 16000 or 48000)")]
    ConferenceRate(u32),
}

/// Media tapped for a recording, for the media plane's recorder (off the packet path).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Tap {
    /// An RTP packet a recorded leg received (decrypted), with the leg's codec then.
    Rtp { recording: u64, channel: u8, codec: Option<LegCodec>, packet: Vec<u8> },
    /// One period of a recorded conference's whole mix, at its rate.
    Pcm { recording: u64, channel: u8, rate: u32, pcm: Vec<i16> },
    /// The channel's leg or conference is gone (deleted, timed out), or its recording stopped.
    Ended { recording: u64, channel: u8 },
}

/// Taps waiting for the driver; beyond this they are dropped (and counted).
pub const MAX_TAPS: usize = 4096;

/// Counters of one core, beyond those of its legs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CoreCounters {
    pub packets_in: u64,
    /// Packets sent: forwarded in place, and hand-offs from other cores sent on.
    pub packets_forwarded: u64,
    /// Packets passed to the core that owns their bridged leg (that core counts them forwarded).
    pub packets_handed_off: u64,
    /// Packets taken in by a transcoding bridge (what it encodes is counted per leg) and RTCP
    /// ended there (a transcoding bridge does not relay RTCP).
    pub packets_consumed: u64,
    /// Drops of packets that reached a leg, plus packets to ports without a leg (as `no_route`).
    pub drops: Drops,
    /// Recorded media dropped because the recorder fell behind ([`MAX_TAPS`] waiting).
    pub taps_dropped: u64,
    /// Conference mixing periods run, those run more than [`MIX_LATE`] after they were due,
    /// and those skipped because the core fell more than five periods behind.
    pub mix_ticks: u64,
    pub mix_ticks_late: u64,
    pub mix_ticks_missed: u64,
}

/// A mixing period run later than this after it was due counts as late.
pub const MIX_LATE: Duration = Duration::from_millis(5);

/// Per-core engine configuration.
#[derive(Debug, Clone, Copy)]
pub struct EngineConfig {
    /// Media timeout for legs that do not set their own.
    pub media_timeout: Duration,
    /// This engine's core number (named in the hand-offs it makes).
    pub core: usize,
    /// Seed of the engine's random numbers (SSRCs, initial sequence numbers and timestamps of
    /// the streams it makes); the driver draws it.
    pub seed: u64,
    /// The wall clock at one instant, as an NTP timestamp (RFC 3550 §4: seconds since 1900 in
    /// 32.32 fixed point), for the sender reports the engine makes; it adds the monotonic time
    /// since. `None`: NTP time counts from the engine's first packet (tests).
    pub wall: Option<(Instant, u64)>,
}

/// Mean interval of the media plane's own RTCP reports on legs where it ends RTCP (RFC 3550
/// §6.2's minimum of 5 s; each interval is drawn between 0.5 and 1.5 times this).
pub const REPORT_INTERVAL: Duration = Duration::from_secs(5);

/// What a new offer/answer does to a leg's SRTP.
enum SrtpChange {
    Keep,
    Rekey(crate::srtp::SrtpKeys),
    New(Box<SrtpContext>),
    Off,
}

/// A bridge as this core holds it: its local leg `a`, and the other end.
#[derive(Debug, Clone, Copy)]
struct Bridge {
    a: usize,
    b: Peer,
    /// For a cross-core bridge, whether this core holds the half the bridge id was made on (it
    /// alone counts the bridge in [`Engine::bridge_count`]).
    primary: bool,
}

/// A queued transmission; its buffer returns to the spare list once the driver has copied it.
#[derive(Debug)]
struct Pending {
    from_port: u16,
    to: SocketAddr,
    bytes: Vec<u8>,
}

/// The relay state of one core. See the module documentation.
#[derive(Debug)]
pub struct Engine {
    config: EngineConfig,
    /// Leg slots; `None` are free and reused via `free_slots`.
    slots: Vec<Option<Leg>>,
    free_slots: Vec<usize>,
    by_id: HashMap<LegId, usize>,
    /// Local port → (slot + 1) << 1 | is_rtcp_port; 0 = no leg. Indexed by port, 64 Ki entries.
    by_port: Vec<u32>,
    bridges: HashMap<BridgeId, Bridge>,
    events: VecDeque<Event>,
    cross: VecDeque<CrossMessage>,
    transmits: VecDeque<Pending>,
    /// Buffers of sent transmissions, reused so the steady state does not allocate.
    spare: Vec<Vec<u8>>,
    counters: CoreCounters,
    next_sweep: Option<Instant>,
    rng: u64,
    /// A fixed instant (the first packet's arrival) that jitter arrival times count from.
    epoch: Option<Instant>,
    /// The last packet received on an SRTP leg, decrypted; a hand-off of it carries these bytes
    /// ([`Engine::handoff_payload`]).
    plain: Vec<u8>,
    plain_valid: bool,
    /// Legs whose outgoing stream the engine generates (injected digits, plays), and when each
    /// one's next packet time is.
    generating: Vec<(usize, Instant)>,
    conferences: HashMap<ConferenceId, Conference>,
    /// The SDES CNAME of the streams this core makes.
    cname: String,
    /// Recorded media for the driver ([`Engine::poll_tap`]).
    taps: VecDeque<Tap>,
    /// Legs that are members of conferences on other cores, and when each one's next frame
    /// is due.
    feeding: Vec<(usize, Instant)>,
}

impl Engine {
    pub fn new(config: EngineConfig) -> Self {
        Self {
            config,
            slots: Vec::new(),
            free_slots: Vec::new(),
            by_id: HashMap::new(),
            by_port: vec![0; 1 << 16],
            bridges: HashMap::new(),
            events: VecDeque::new(),
            cross: VecDeque::new(),
            transmits: VecDeque::new(),
            spare: Vec::new(),
            counters: CoreCounters::default(),
            next_sweep: None,
            rng: config.seed | 1,
            epoch: None,
            plain: Vec::with_capacity(MAX_TRANSMIT),
            plain_valid: false,
            generating: Vec::new(),
            conferences: HashMap::new(),
            cname: format!("core{}@media-plane", config.core),
            taps: VecDeque::new(),
            feeding: Vec::new(),
        }
    }

    // ---- getters ----

    pub fn leg_count(&self) -> usize {
        self.by_id.len()
    }
    /// Bridges on this core; a cross-core bridge counts on the core its id was made on.
    pub fn bridge_count(&self) -> usize {
        self.bridges.values().filter(|b| b.primary).count()
    }
    pub fn counters(&self) -> CoreCounters {
        self.counters
    }
    pub fn has_leg(&self, id: LegId) -> bool {
        self.by_id.contains_key(&id)
    }
    /// Whether a leg of this engine uses `port` (RTP or RTCP).
    pub fn owns_port(&self, port: u16) -> bool {
        self.by_port[usize::from(port)] != 0
    }

    /// The codec leg `id` was created with (`Ok(None)`: none given).
    pub fn leg_codec(&self, id: LegId) -> Result<Option<LegCodec>, CommandError> {
        let slot = *self.by_id.get(&id).ok_or(CommandError::NoSuchLeg(id))?;
        Ok(self.slot(slot).and_then(|l| l.codec))
    }

    /// Stats of one leg, `None` if it does not exist.
    pub fn leg_stats(&self, id: LegId, now: Instant) -> Option<LegStats> {
        let slot = *self.by_id.get(&id)?;
        self.slot(slot).map(|l| l.stats(now))
    }

    /// Stats of every leg.
    pub fn all_leg_stats(&self, now: Instant) -> Vec<LegStats> {
        self.slots.iter().flatten().map(|l| l.stats(now)).collect()
    }

    // ---- handle_* ----

    /// Classifies a packet received on `local_port` from `src` and says where it goes.
    pub fn handle_packet(&mut self, local_port: u16, src: SocketAddr, packet: &[u8], now: Instant) -> Verdict {
        self.counters.packets_in += 1;
        self.plain_valid = false;
        let verdict = self.route(local_port, src, packet, now);
        match verdict {
            Verdict::Forward { .. } => self.counters.packets_forwarded += 1,
            Verdict::Handoff { .. } => self.counters.packets_handed_off += 1,
            Verdict::Consumed => self.counters.packets_consumed += 1,
            Verdict::Drop(reason) => self.counters.drops.add(reason),
        }
        verdict
    }

    /// The bytes a [`Verdict::Handoff`] of `received` carries to the other core: `received`
    /// itself, or its decryption when it arrived on an SRTP leg (each core does its own legs'
    /// SRTP).
    pub fn handoff_payload<'a>(&'a self, received: &'a [u8]) -> &'a [u8] {
        if self.plain_valid {
            &self.plain
        } else {
            received
        }
    }

    /// The receiving core's half of a cross-core bridge: a packet another core's engine handed
    /// off for leg `handoff.to_leg`. Checks that the leg is still bridged to the sender, applies
    /// its direction and queues the packet for sending ([`poll_transmit`](Self::poll_transmit)).
    /// Returns whether it was queued; otherwise the drop is counted.
    pub fn handle_handoff(&mut self, handoff: &Handoff, packet: &[u8], _now: Instant) -> bool {
        if handoff.conference {
            return self.handle_conference_handoff(handoff, packet, _now);
        }
        let expected = Peer::Remote { core: handoff.from_core, leg: handoff.from_leg };
        let slot = self.by_id.get(&handoff.to_leg).copied();
        let paired = slot.and_then(|s| self.slot(s)).is_some_and(|l| l.peer == Some(expected) && l.bridge == Some(handoff.bridge));
        let Some(slot) = slot.filter(|_| paired) else {
            // The bridge went away while the packet crossed: nothing to send it to.
            self.counters.drops.add(DropReason::NoRoute);
            return false;
        };
        if self.slot(slot).is_some_and(|l| l.transcoder.is_some()) {
            return match self.transcode_into(slot, handoff.rtcp, packet) {
                Ok(()) => {
                    self.counters.packets_consumed += 1;
                    true
                }
                Err(reason) => {
                    self.count_drop(slot, reason);
                    false
                }
            };
        }
        match self.egress(slot, handoff.rtcp, packet, _now) {
            Ok((from_port, to)) => match self.queue_to(slot, from_port, to, packet, handoff.rtcp) {
                Ok(()) => {
                    self.counters.packets_forwarded += 1;
                    true
                }
                Err(reason) => {
                    self.take_back_out(slot, handoff.rtcp, packet.len());
                    self.count_drop(slot, reason);
                    false
                }
            },
            Err(reason) => {
                self.count_drop(slot, reason);
                false
            }
        }
    }

    /// A conference's packet for a member of ours (see [`Handoff::conference`]).
    fn handle_conference_handoff(&mut self, handoff: &Handoff, packet: &[u8], _now: Instant) -> bool {
        // The mix for a member of ours: out from its ports.
        // Only the conference the leg is in, from its core, sends it a mix.
        let from = Some((handoff.from_core, handoff.bridge));
        let Some(slot) = self.by_id.get(&handoff.to_leg).copied().filter(|&s| self.slot(s).is_some_and(|l| l.remote_conference == from))
        else {
            self.counters.drops.add(DropReason::NoRoute);
            return false;
        };
        let Some(leg) = self.slot_mut(slot) else { return false };
        let Some((from_port, to)) = leg.rtp_destination().filter(|_| leg.direction.endpoint_receives()) else {
            self.count_drop(slot, DropReason::NoRoute);
            return false;
        };
        match self.queue_to(slot, from_port, to, packet, false) {
            Ok(()) => {
                if let Some(leg) = self.slot_mut(slot) {
                    leg.counters.rtp_packets_out += 1;
                    leg.counters.rtp_bytes_out += packet.len() as u64;
                }
                self.counters.packets_forwarded += 1;
                true
            }
            Err(reason) => {
                self.count_drop(slot, reason);
                false
            }
        }
    }

    /// The driver could not pass a [`Verdict::Handoff`] to the other core (its queue was full):
    /// counted as a `queue_full` drop of the leg the packet arrived on.
    pub fn handle_handoff_dropped(&mut self, handoff: &Handoff) {
        self.counters.packets_handed_off = self.counters.packets_handed_off.saturating_sub(1);
        match self.by_id.get(&handoff.from_leg).copied() {
            Some(slot) => self.count_drop(slot, DropReason::QueueFull),
            None => self.counters.drops.add(DropReason::QueueFull),
        }
    }

    /// Another core dropped its half of `bridge` (see [`CrossMessage::Unlink`]): drop ours, on
    /// leg `leg`. Unknown or already-gone halves are ignored (the message may cross a deletion).
    pub fn handle_unlink(&mut self, leg: LegId, bridge: BridgeId) {
        let Some(&slot) = self.by_id.get(&leg) else { return };
        let ours = self.bridges.get(&bridge).is_some_and(|b| b.a == slot && matches!(b.b, Peer::Remote { .. }));
        if ours {
            self.bridges.remove(&bridge);
            self.end_generated(slot);
            if let Some(l) = self.slot_mut(slot) {
                l.bridge = None;
                l.peer = None;
                l.transcoder = None;
            }
        }
    }

    /// The driver could not deliver `packet`, which it was told to forward from `from_port`: the
    /// kernel refused the send (`SendFailed`), or there is no next hop for it (`NoRoute`). The
    /// forward is taken back off the counters and counted as a drop for `reason` on the sending leg.
    /// The same applies to a [`Transmit`] the driver could not send.
    pub fn handle_forward_dropped(&mut self, from_port: u16, packet: &[u8], reason: DropReason) {
        self.counters.drops.add(reason);
        self.counters.packets_forwarded = self.counters.packets_forwarded.saturating_sub(1);
        let Some((slot, kind)) = self.port_owner(from_port) else { return };
        let Some(leg) = self.slot_mut(slot) else { return };
        let is_rtcp = kind == PortKind::Rtcp || (leg.rtcp_mux && wire::is_rtcp_on_muxed_port(packet));
        if is_rtcp {
            leg.counters.rtcp_packets_out = leg.counters.rtcp_packets_out.saturating_sub(1);
        } else {
            leg.counters.rtp_packets_out = leg.counters.rtp_packets_out.saturating_sub(1);
            leg.counters.rtp_bytes_out = leg.counters.rtp_bytes_out.saturating_sub(packet.len() as u64);
        }
        leg.counters.drops.add(reason);
    }

    /// Runs due timers: removes legs idle for their media timeout.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.play_generated(now);
        self.feed_remote_members(now);
        self.mix_conferences(now);
        match self.next_sweep {
            Some(t) if now >= t => {}
            _ => return,
        }
        // A leg on hold (any direction but sendrecv: the held party, and a holder that sends
        // nothing while the network plays its music) may stay silent: it gets HOLD_TIMEOUT (as
        // rtpengine's silent timeout for held streams), not the media timeout.
        let idle_limit = |l: &Leg| if l.direction == Direction::SendRecv { l.media_timeout } else { l.media_timeout.max(HOLD_TIMEOUT) };
        let expired: Vec<LegId> =
            self.slots.iter().flatten().filter(|l| now.saturating_duration_since(l.last_rx) >= idle_limit(l)).map(|l| l.id).collect();
        for id in expired {
            if let Ok(stats) = self.delete_leg(id, now) {
                self.events.push_back(Event::TimedOut { leg: id, stats: Box::new(stats) });
            }
        }
        self.send_reports(now);
        self.judge_quality();
        self.next_sweep = if self.by_id.is_empty() { None } else { Some(now + SWEEP_INTERVAL) };
    }

    /// Raises or clears the quality alarms of legs that have thresholds, over the packets since
    /// they were last judged (at least 50 expected).
    fn judge_quality(&mut self) {
        for leg in self.slots.iter_mut().flatten() {
            let alarm = leg.alarm;
            if alarm == QualityAlarm::default() {
                continue;
            }
            let stats = leg.quality.stats();
            if stats.expected < leg.alarm_prior.0 {
                // The stream restarted: judge it from its new start.
                leg.alarm_prior = (0, 0);
            }
            let expected = stats.expected.saturating_sub(leg.alarm_prior.0);
            if expected < 50 {
                continue;
            }
            let lost = stats.lost.saturating_sub(leg.alarm_prior.1);
            leg.alarm_prior = (stats.expected, stats.lost);
            let loss_permille = (lost * 1000 / expected) as u32;
            let jitter_us = stats.jitter_us.unwrap_or(0);
            let bad = alarm.loss_permille.is_some_and(|t| loss_permille > t) || alarm.jitter_us.is_some_and(|t| jitter_us > t);
            if bad != leg.alarm_on {
                leg.alarm_on = bad;
                self.events.push_back(Event::Quality { leg: leg.id, alarm: bad, loss_permille, jitter_us });
            }
        }
    }

    /// Sends the media plane's own RTCP on legs where it ends RTCP (media towards them is
    /// transcoded): a sender report on the stream it makes for the leg, with a report block on
    /// the stream the leg's endpoint sends, and an SDES CNAME; SRTCP on SRTP legs.
    fn send_reports(&mut self, now: Instant) {
        let due: Vec<usize> = (0..self.slots.len())
            .filter(|&slot| self.slot(slot).is_some_and(|l| l.transcoder.is_some() && l.next_report.is_none_or(|t| t <= now)))
            .collect();
        for slot in due {
            let jitter = self.next_random() % 1000;
            let ntp = self.ntp(now);
            let Self { slots, cname, .. } = self;
            let Some(leg) = slots.get_mut(slot).and_then(Option::as_mut) else { continue };
            // RFC 3550 §6.3.1: an interval drawn from [0.5, 1.5] times the mean.
            let next = now + REPORT_INTERVAL / 2 + REPORT_INTERVAL * jitter as u32 / 1000;
            let first = leg.next_report.is_none();
            leg.next_report = Some(next);
            if first {
                continue;
            }
            let (Some(t), Some((from_port, to))) = (leg.transcoder.as_ref(), leg.rtcp_destination()) else { continue };
            let (ssrc, packets, octets, ts) = t.sender_info();
            let block = leg.quality.report_block(now);
            let mut buf = [0u8; 256];
            let Some(len) = sender_report(ssrc, ntp, ts, packets, octets, block, cname, &mut buf) else { continue };
            let report = &buf[..len];
            leg.quality.on_rtcp_to_endpoint(report, now);
            leg.counters.rtcp_packets_out += 1;
            if let Err(reason) = self.queue_to(slot, from_port, to, report, true) {
                self.count_drop(slot, reason);
            }
        }
    }

    /// The NTP time (32.32) at `now`.
    fn ntp(&mut self, now: Instant) -> u64 {
        let (at, base) = self.config.wall.unwrap_or((*self.epoch.get_or_insert(now), 0));
        let since = now.saturating_duration_since(at);
        base.wrapping_add((since.as_secs() << 32) | ((u64::from(since.subsec_nanos()) << 32) / 1_000_000_000))
    }

    // ---- commands ----

    /// Adds a leg on `local_port` (RTP; RTCP on `local_port + 1` unless `spec.rtcp_mux`).
    pub fn create_leg(&mut self, id: LegId, local_port: u16, spec: LegSpec, now: Instant) -> Result<(), CommandError> {
        if self.by_id.contains_key(&id) {
            return Err(CommandError::LegExists(id));
        }
        let rtcp_port = if spec.rtcp_mux { None } else { Some(local_port.checked_add(1).ok_or(CommandError::PortInUse(local_port))?) };
        for p in std::iter::once(local_port).chain(rtcp_port) {
            if self.by_port[usize::from(p)] != 0 {
                return Err(CommandError::PortInUse(p));
            }
        }
        let timeout = spec.media_timeout.unwrap_or(self.config.media_timeout);
        let leg = Leg::new(id, local_port, spec, timeout, now);
        let slot = match self.free_slots.pop() {
            Some(s) => {
                self.slots[s] = Some(leg);
                s
            }
            None => {
                self.slots.push(Some(leg));
                self.slots.len() - 1
            }
        };
        let tag = (slot as u32 + 1) << 1;
        self.by_port[usize::from(local_port)] = tag;
        if let Some(p) = rtcp_port {
            self.by_port[usize::from(p)] = tag | 1;
        }
        self.by_id.insert(id, slot);
        if self.next_sweep.is_none() {
            self.next_sweep = Some(now + SWEEP_INTERVAL);
        }
        Ok(())
    }

    /// Applies an UpdateLeg: remote(s), direction, re-latch.
    pub fn update_leg(
        &mut self,
        id: LegId,
        remote: Option<SocketAddr>,
        remote_rtcp: Option<SocketAddr>,
        direction: Option<Direction>,
        relatch: bool,
    ) -> Result<(), CommandError> {
        let slot = *self.by_id.get(&id).ok_or(CommandError::NoSuchLeg(id))?;
        let leg = self.slot_mut(slot).ok_or(CommandError::NoSuchLeg(id))?;
        if relatch {
            leg.rtp_remote.unlock();
            leg.rtcp_remote.unlock();
        }
        // A new remote with `relatch` is where to send until the endpoint's first packet arrives,
        // whose source then becomes the remote (an SDP address behind NAT is often not the
        // source the packets come from); without `relatch` it is the only accepted source.
        let remote_for = |r| if relatch { Remote::latching(Some(r)) } else { Remote::locked(r) };
        if let Some(r) = remote {
            leg.rtp_remote = remote_for(r);
        }
        if let Some(r) = remote_rtcp {
            leg.rtcp_remote = remote_for(r);
        }
        if let Some(d) = direction {
            leg.direction = d;
        }
        Ok(())
    }

    /// Applies what an SDP offer/answer settled for a leg ([`crate::sdp`]): where its endpoint
    /// receives (latching still corrects it behind NAT), rtcp-mux, direction and codec. A codec
    /// can change only while the leg is not bridged (the bridge's transcoders are made for the
    /// codecs it joined): delete the bridge, set the codecs, bridge again.
    pub fn set_leg_media(&mut self, id: LegId, media: LegMedia) -> Result<(), CommandError> {
        let slot = *self.by_id.get(&id).ok_or(CommandError::NoSuchLeg(id))?;
        let leg = self.slot(slot).ok_or(CommandError::NoSuchLeg(id))?;
        let codec_changes = leg.codec != media.codec;
        if let (Some(bridge), true) = (leg.bridge, codec_changes) {
            return Err(CommandError::AlreadyBridged(id, bridge));
        }
        if let (Some(conference), true) = (leg.in_conference(), codec_changes) {
            return Err(CommandError::InConference(id, conference));
        }
        let port = leg.local_port;
        let rtcp_port = usize::from(port) + 1;
        if leg.rtcp_mux && !media.rtcp_mux && self.by_port.get(rtcp_port).is_none_or(|t| *t != 0) {
            return Err(CommandError::PortInUse(port.saturating_add(1)));
        }
        // SRTP first (the one step that can fail): nothing changes if it does. The same keys (a
        // re-INVITE) keep the context; a new local key keeps the inbound session, so its
        // rollover counter and replay window go on.
        let srtp = match (&leg.srtp, media.srtp) {
            (Some(c), Some(keys)) if c.keys() == &keys => SrtpChange::Keep,
            (Some(_), Some(keys)) => SrtpChange::Rekey(keys),
            (None, Some(keys)) => SrtpChange::New(Box::new(SrtpContext::new(keys)?)),
            (_, None) => SrtpChange::Off,
        };
        let had_transcoder = leg.transcoder.is_some();
        if let SrtpChange::Rekey(keys) = &srtp {
            if let Some(c) = self.slot_mut(slot).and_then(|l| l.srtp.as_deref_mut()) {
                c.rekey(keys.clone())?;
            }
        }
        if codec_changes && had_transcoder {
            // A play or injection was made for the old codec.
            self.end_generated(slot);
            if let Some(l) = self.slot_mut(slot) {
                l.transcoder = None;
            }
        }
        // RTCP's own port is listened on only without rtcp-mux.
        if let Some(tag) = self.by_port.get_mut(rtcp_port) {
            *tag = if media.rtcp_mux { 0 } else { ((slot as u32 + 1) << 1) | 1 };
        }
        let leg = self.slot_mut(slot).ok_or(CommandError::NoSuchLeg(id))?;
        leg.rtcp_mux = media.rtcp_mux;
        if let Some(r) = media.remote {
            leg.rtp_remote = Remote::latching(Some(r));
        }
        if let Some(r) = media.remote_rtcp {
            leg.rtcp_remote = Remote::latching(Some(r));
        }
        leg.direction = media.direction;
        leg.codec = media.codec;
        match srtp {
            SrtpChange::Keep | SrtpChange::Rekey(_) => {}
            SrtpChange::New(c) => leg.srtp = Some(c),
            SrtpChange::Off => leg.srtp = None,
        }
        Ok(())
    }

    /// A play going to the leg in `slot` ends (its transcoder is about to be replaced or
    /// dropped): its [`Event::PlayFinished`] says it was stopped.
    fn end_generated(&mut self, slot: usize) {
        let Some(leg) = self.slots.get_mut(slot).and_then(Option::as_mut) else { return };
        if let Some(play) = leg.transcoder.as_mut().and_then(|t| t.stop_play()) {
            self.events.push_back(Event::PlayFinished { leg: leg.id, play, stopped: true });
        }
    }

    /// Plays `digits` to leg `id`'s endpoint: into the stream the media plane makes for it, as
    /// RFC 4733 events if the leg takes them, else as tones, each `on` long with `pause` after.
    pub fn inject_dtmf(&mut self, id: LegId, digits: &str, on: Duration, pause: Duration, now: Instant) -> Result<usize, CommandError> {
        if !digits.chars().any(|d| media_codecs::dtmf::frequencies(d).is_some()) {
            return Err(CommandError::NoDigits(digits.to_owned()));
        }
        let slot = *self.by_id.get(&id).ok_or(CommandError::NoSuchLeg(id))?;
        let room = self.slot(slot).and_then(|l| l.transcoder.as_ref()).map_or(transcode::MAX_INJECTED, |t| t.inject_room());
        if room < digits.chars().count() {
            return Err(CommandError::DtmfQueueFull(id));
        }
        let (slot, codec) = self.own_stream(id, now)?;
        let ms = |d: Duration| u32::try_from(d.as_millis()).unwrap_or(u32::MAX);
        let queued =
            self.slot_mut(slot).and_then(|l| l.transcoder.as_mut()).map_or(0, |t| t.inject(digits, ms(on), ms(pause), codec.ptime_ms));
        self.start_generating(slot, now);
        Ok(queued)
    }

    /// The PCM rate audio played to leg `id` must have (mono): its outgoing stream's encoder
    /// rate. Changes nothing.
    pub fn play_rate(&self, id: LegId) -> Result<u32, CommandError> {
        let slot = *self.by_id.get(&id).ok_or(CommandError::NoSuchLeg(id))?;
        let leg = self.slot(slot).ok_or(CommandError::NoSuchLeg(id))?;
        if let Some(conference) = leg.in_conference() {
            return Err(CommandError::InConference(id, conference));
        }
        match (&leg.transcoder, leg.codec) {
            (Some(t), _) => Ok(t.play_rate()),
            // The transcoder a play installs encodes the leg's codec at its parameters' rate.
            (None, Some(codec)) => Ok(codec.params.rate),
            (None, None) => Err(CommandError::NoCodec(id)),
        }
    }

    /// Plays `pcm` (mono, at [`play_rate`](Self::play_rate)) to leg `id`'s endpoint instead of
    /// its bridge's audio, once or `looped`, as play `play`; a play already going is replaced
    /// (its [`Event::PlayFinished`] says so). When it ends, the bridge's audio resumes in the
    /// same stream (continuous SSRC, sequence numbers and timestamps).
    pub fn play(&mut self, id: LegId, play: u64, pcm: std::sync::Arc<[i16]>, looped: bool, now: Instant) -> Result<(), CommandError> {
        let (slot, _) = self.own_stream(id, now)?;
        let replaced = self.slot_mut(slot).and_then(|l| l.transcoder.as_mut()).and_then(|t| t.play(play, pcm, looped));
        if let Some(replaced) = replaced {
            self.events.push_back(Event::PlayFinished { leg: id, play: replaced, stopped: true });
        }
        self.start_generating(slot, now);
        Ok(())
    }

    /// Stops leg `id`'s play; whether one was going.
    pub fn stop_play(&mut self, id: LegId) -> Result<bool, CommandError> {
        let slot = *self.by_id.get(&id).ok_or(CommandError::NoSuchLeg(id))?;
        let stopped = self.slot_mut(slot).and_then(|l| l.transcoder.as_mut()).and_then(|t| t.stop_play());
        if let Some(play) = stopped {
            self.events.push_back(Event::PlayFinished { leg: id, play, stopped: true });
        }
        Ok(stopped.is_some())
    }

    /// Leg `id`'s slot and codec, with a transcoder making its outgoing stream: a relayed leg
    /// gets one of its own codec first (the stream becomes the media plane's: its SSRC and
    /// numbering), which stays for the rest of the bridge.
    fn own_stream(&mut self, id: LegId, now: Instant) -> Result<(usize, LegCodec), CommandError> {
        let slot = *self.by_id.get(&id).ok_or(CommandError::NoSuchLeg(id))?;
        if let Some(conference) = self.slot(slot).and_then(|l| l.in_conference()) {
            return Err(CommandError::InConference(id, conference));
        }
        let codec = self.slot(slot).and_then(|l| l.codec).ok_or(CommandError::NoCodec(id))?;
        if self.slot(slot).is_some_and(|l| l.transcoder.is_none()) {
            // Continue what the endpoint was receiving (RFC 3550 §5.1: one stream, the timestamp
            // advancing with time), else start a stream of our own.
            let continued = self.slot(slot).and_then(|l| l.last_relayed).map(|(ssrc, seq, ts, at)| {
                let elapsed = now.saturating_duration_since(at).as_millis().min(60_000) as u64;
                let advance =
                    (elapsed * u64::from(codec.rtp_clock()) / 1000).max(u64::from(codec.rtp_clock()) * u64::from(codec.ptime_ms) / 1000);
                (ssrc, seq.wrapping_add(1), ts.wrapping_add(advance as u32))
            });
            let (ssrc, seq, ts) = match continued {
                Some(c) => c,
                None => self.stream_start(),
            };
            let t = Transcoder::new(&codec, &codec, ssrc, seq, ts)?;
            if let Some(l) = self.slot_mut(slot) {
                l.transcoder = Some(Box::new(t));
            }
        }
        Ok((slot, codec))
    }

    fn start_generating(&mut self, slot: usize, now: Instant) {
        if !self.generating.iter().any(|(s, _)| *s == slot) {
            self.generating.push((slot, now));
        }
    }

    /// Plays the packet times of generated streams that are due (at most 5 behind per leg: a
    /// late core sends a short burst, not a flood).
    fn play_generated(&mut self, now: Instant) {
        let mut i = 0;
        while let Some(&(slot, mut at)) = self.generating.get(i) {
            let Self { slots, transmits, spare, events, .. } = self;
            let Some(leg) = slots.get_mut(slot).and_then(Option::as_mut) else {
                self.generating.swap_remove(i);
                continue;
            };
            let ptime = Duration::from_millis(u64::from(leg.codec.map_or(20, |c| c.ptime_ms)));
            let destination = leg.rtp_destination().filter(|_| leg.direction.endpoint_receives());
            let mut srtp = leg.srtp.as_deref_mut();
            let Some(t) = leg.transcoder.as_mut() else {
                self.generating.swap_remove(i);
                continue;
            };
            if let Some(play) = t.take_finished() {
                events.push_back(Event::PlayFinished { leg: leg.id, play, stopped: false });
            }
            if !t.generating() {
                self.generating.swap_remove(i);
                continue;
            }
            let (mut sent, mut bytes) = (0u64, 0u64);
            for _ in 0..5 {
                if at > now || !t.generating() {
                    break;
                }
                t.tick(|packet| {
                    if let Some((from_port, to)) = destination {
                        if push_transmit(transmits, spare, srtp.as_deref_mut(), from_port, to, packet, false).is_ok() {
                            sent += 1;
                            bytes += packet.len() as u64;
                        }
                    }
                });
                at += ptime;
            }
            if let Some(play) = t.take_finished() {
                events.push_back(Event::PlayFinished { leg: leg.id, play, stopped: false });
            }
            let more = t.generating();
            leg.counters.rtp_packets_out += sent;
            leg.counters.rtp_bytes_out += bytes;
            if more {
                self.generating[i].1 = now.checked_sub(ptime).map_or(at, |floor| at.max(floor));
                i += 1;
            } else {
                self.generating.swap_remove(i);
            }
        }
    }

    /// Makes conference `id`, mixing at `rate` Hz (8000, 16000 or 48000).
    pub fn create_conference(&mut self, id: ConferenceId, rate: u32, now: Instant) -> Result<(), CommandError> {
        if ![8000, 16_000, 48_000].contains(&rate) {
            return Err(CommandError::ConferenceRate(rate));
        }
        if self.conferences.contains_key(&id) {
            return Err(CommandError::ConferenceExists(id));
        }
        self.conferences.insert(id, Conference::new(id, rate, now));
        Ok(())
    }

    /// Ends conference `id`; its members stay, in no conference. Returns them.
    pub fn delete_conference(&mut self, id: ConferenceId) -> Result<Vec<LegId>, CommandError> {
        let c = self.conferences.remove(&id).ok_or(CommandError::NoSuchConference(id))?;
        if let Some(recording) = c.tap {
            self.taps.push_back(Tap::Ended { recording, channel: 0 });
        }
        let legs: Vec<LegId> = c.members.iter().map(|m| m.leg).collect();
        for m in &c.members {
            match m.remote {
                // A member on another core stops sending here.
                Some(core) => self.cross.push_back(CrossMessage::Unjoin { core, conference: id, leg: m.leg }),
                None => {
                    if let Some(l) = self.slot_mut(m.slot) {
                        l.conference = None;
                    }
                }
            }
            self.events.push_back(Event::Member { leg: m.leg, conference: id, joined: false });
        }
        Ok(legs)
    }

    /// Adds leg `leg` (of a known mono codec, in no bridge) to conference `id`: it hears the
    /// others (unless `deaf`) and they hear it (unless `muted`).
    pub fn add_member(&mut self, id: ConferenceId, leg: LegId, muted: bool, deaf: bool) -> Result<(), CommandError> {
        if !self.conferences.contains_key(&id) {
            return Err(CommandError::NoSuchConference(id));
        }
        let slot = self.unbridged_slot(leg)?;
        if let Some((_, c)) = self.slot(slot).and_then(|l| l.remote_conference) {
            return Err(CommandError::InConference(leg, c));
        }
        let codec = self.slot(slot).and_then(|l| l.codec).ok_or(CommandError::NoCodec(leg))?;
        // The conference makes the member's stream from now on.
        self.end_generated(slot);
        if let Some(l) = self.slot_mut(slot) {
            l.transcoder = None;
        }
        let (ssrc, seq, ts) = self.stream_start();
        let c = self.conferences.get_mut(&id).ok_or(CommandError::NoSuchConference(id))?;
        c.add(leg, slot, None, &codec, muted, deaf, ssrc, seq, ts)?;
        if let Some(l) = self.slot_mut(slot) {
            l.conference = Some(id);
        }
        self.events.push_back(Event::Member { leg, conference: id, joined: true });
        Ok(())
    }

    /// Makes leg `leg` (of a known mono codec, in no bridge or conference) a member of conference
    /// `conference` on core `core`, mixed at `rate`: its RTP is decoded here and sent there a
    /// frame per mixing period; the mix comes back from there.
    pub fn join_remote(&mut self, leg: LegId, core: usize, conference: ConferenceId, rate: u32, now: Instant) -> Result<(), CommandError> {
        let slot = self.unbridged_slot(leg)?;
        if let Some(c) = self.slot(slot).and_then(|l| l.in_conference()) {
            return Err(CommandError::InConference(leg, c));
        }
        let codec = self.slot(slot).and_then(|l| l.codec).ok_or(CommandError::NoCodec(leg))?;
        let intake = conference::Intake::new(&codec, rate)?;
        self.end_generated(slot);
        if let Some(l) = self.slot_mut(slot) {
            l.transcoder = None;
            l.remote_conference = Some((core, conference));
            l.feed = Some(Box::new((intake, VecDeque::new())));
        }
        self.feeding.push((slot, now + conference::TICK));
        Ok(())
    }

    /// Conference `conference` of core `core` let leg `leg` go: it leaves, if that is still
    /// the conference it is in (a late message of an earlier conference changes nothing).
    pub fn unjoin(&mut self, leg: LegId, core: usize, conference: ConferenceId) -> bool {
        let ours = self.by_id.get(&leg).and_then(|&s| self.slot(s)).is_some_and(|l| l.remote_conference == Some((core, conference)));
        ours && self.leave_remote(leg)
    }

    /// Leg `leg` is no longer a member of a conference on another core; whether it was.
    pub fn leave_remote(&mut self, leg: LegId) -> bool {
        let Some(&slot) = self.by_id.get(&leg) else { return false };
        self.feeding.retain(|(s, _)| *s != slot);
        let Some(l) = self.slot_mut(slot) else { return false };
        l.feed = None;
        l.remote_conference.take().is_some()
    }

    /// Sends a frame per mixing period of each member of a conference on another core (decoded
    /// here; silence where nothing came).
    fn feed_remote_members(&mut self, now: Instant) {
        let mut i = 0;
        while let Some(&(slot, mut at)) = self.feeding.get(i) {
            let Self { slots, cross, .. } = self;
            let Some(leg) = slots.get_mut(slot).and_then(Option::as_mut) else {
                self.feeding.swap_remove(i);
                continue;
            };
            let id = leg.id;
            let (Some((core, conference)), Some(feed)) = (leg.remote_conference, leg.feed.as_mut()) else {
                self.feeding.swap_remove(i);
                continue;
            };
            let (intake, inbox) = &mut **feed;
            let frame = intake.frame_samples();
            let mut periods = 0;
            while at <= now && periods < 5 {
                intake.fill(inbox, frame);
                let mut pcm: Vec<i16> = inbox.drain(..frame.min(inbox.len())).collect();
                pcm.resize(frame, 0);
                cross.push_back(CrossMessage::MemberFrame { core, conference, leg: id, pcm });
                at += conference::TICK;
                periods += 1;
            }
            if at <= now {
                at = now + conference::TICK;
            }
            if let Some(entry) = self.feeding.get_mut(i) {
                entry.1 = at;
            }
            i += 1;
        }
    }

    /// A frame of member `leg` of core `core`, decoded there, for conference `id` of this core.
    pub fn handle_member_frame(&mut self, id: ConferenceId, leg: LegId, core: usize, pcm: &[i16]) -> bool {
        let taken = self.conferences.get_mut(&id).is_some_and(|c| c.push_frame(leg, core, pcm));
        if taken {
            self.counters.packets_consumed += 1;
        } else {
            self.counters.drops.add(DropReason::NoRoute);
        }
        taken
    }

    /// Adds leg `leg` of core `core` (to be joined with [`Engine::join_remote`] there) to
    /// conference `id` of this core; returns the conference's mixing rate.
    pub fn add_remote_member(
        &mut self,
        id: ConferenceId,
        leg: LegId,
        core: usize,
        codec: LegCodec,
        muted: bool,
        deaf: bool,
    ) -> Result<u32, CommandError> {
        let (ssrc, seq, ts) = self.stream_start();
        let c = self.conferences.get_mut(&id).ok_or(CommandError::NoSuchConference(id))?;
        if c.member_mut(leg).is_some() {
            return Err(CommandError::InConference(leg, id));
        }
        c.add(leg, usize::MAX, Some(core), &codec, muted, deaf, ssrc, seq, ts)?;
        let rate = c.rate;
        self.events.push_back(Event::Member { leg, conference: id, joined: true });
        Ok(rate)
    }

    /// A conference's counters (mixing periods, own and shared encodes).
    pub fn conference_counters(&self, id: ConferenceId) -> Option<conference::ConferenceCounters> {
        self.conferences.get(&id).map(|c| c.counters)
    }

    /// A member's jitter-buffer counters.
    pub fn conference_jitter(&self, id: ConferenceId, leg: LegId) -> Option<jitter::JitterCounters> {
        self.conferences.get(&id)?.jitter(leg)
    }

    /// Mutes or deafens a member.
    pub fn update_member(&mut self, id: ConferenceId, leg: LegId, muted: bool, deaf: bool) -> Result<(), CommandError> {
        let c = self.conferences.get_mut(&id).ok_or(CommandError::NoSuchConference(id))?;
        let m = c.member_mut(leg).ok_or(CommandError::NotMember(leg, id))?;
        m.muted = muted;
        m.deaf = deaf;
        Ok(())
    }

    /// Takes leg `leg` out of conference `id` (it stays, in nothing).
    pub fn remove_member(&mut self, id: ConferenceId, leg: LegId) -> Result<(), CommandError> {
        let c = self.conferences.get_mut(&id).ok_or(CommandError::NoSuchConference(id))?;
        let remote = c.member_mut(leg).and_then(|m| m.remote);
        if !c.remove(leg) {
            return Err(CommandError::NotMember(leg, id));
        }
        self.events.push_back(Event::Member { leg, conference: id, joined: false });
        if let Some(core) = remote {
            self.cross.push_back(CrossMessage::Unjoin { core, conference: id, leg });
        }
        if let Some(slot) = self.by_id.get(&leg).copied() {
            if let Some(l) = self.slot_mut(slot) {
                l.conference = None;
            }
        }
        Ok(())
    }

    /// Runs the mixing periods that are due (a core more than five periods late skips ahead
    /// rather than bursting).
    fn mix_conferences(&mut self, now: Instant) {
        let Self { conferences, slots, transmits, spare, events, taps, counters, cross, .. } = self;
        for c in conferences.values_mut() {
            let mut ticks = 0;
            while c.next_tick <= now && ticks < 5 {
                counters.mix_ticks += 1;
                if now.saturating_duration_since(c.next_tick) > MIX_LATE {
                    counters.mix_ticks_late += 1;
                }
                let conference_id = c.id;
                c.tick(|to: conference::Dest, packet| {
                    if let Some(core) = to.remote {
                        // A member on another core: that core sends it.
                        cross.push_back(CrossMessage::MemberOut { core, conference: conference_id, leg: to.leg, packet: packet.to_vec() });
                        return;
                    }
                    let Some(leg) = slots.get_mut(to.slot).and_then(Option::as_mut) else { return };
                    let Some((from_port, to)) = leg.rtp_destination().filter(|_| leg.direction.endpoint_receives()) else { return };
                    match push_transmit(transmits, spare, leg.srtp.as_deref_mut(), from_port, to, packet, false) {
                        Ok(()) => {
                            leg.counters.rtp_packets_out += 1;
                            leg.counters.rtp_bytes_out += packet.len() as u64;
                        }
                        Err(reason) => leg.counters.drops.add(reason),
                    }
                });
                if let Some(recording) = c.tap {
                    if taps.len() < MAX_TAPS {
                        taps.push_back(Tap::Pcm { recording, channel: 0, rate: c.rate, pcm: c.mix.clone() });
                    } else {
                        counters.taps_dropped += 1;
                    }
                }
                c.next_tick += conference::TICK;
                ticks += 1;
            }
            if c.next_tick <= now {
                let behind = now.saturating_duration_since(c.next_tick);
                counters.mix_ticks_missed += 1 + (behind.as_micros() / conference::TICK.as_micros()) as u64;
                c.next_tick = now + conference::TICK;
            }
            for (leg, talking) in c.talk_changes.drain(..) {
                events.push_back(Event::Talking { leg, conference: c.id, talking });
            }
        }
    }

    /// Taps what leg `id`'s endpoint sends for `recording` as its `channel`; returns the leg's
    /// codec, if known. A leg is in one recording at a time.
    pub fn record_leg(&mut self, id: LegId, recording: u64, channel: u8) -> Result<Option<LegCodec>, CommandError> {
        let slot = *self.by_id.get(&id).ok_or(CommandError::NoSuchLeg(id))?;
        let leg = self.slots.get_mut(slot).and_then(Option::as_mut).ok_or(CommandError::NoSuchLeg(id))?;
        if let Some((other, _)) = leg.tap {
            return Err(CommandError::Recorded(id, other));
        }
        leg.tap = Some((recording, channel));
        Ok(leg.codec)
    }

    /// Taps conference `id`'s whole mix for `recording` (channel 0); returns its rate. A
    /// conference is in one recording at a time.
    pub fn record_conference(&mut self, id: ConferenceId, recording: u64) -> Result<u32, CommandError> {
        let c = self.conferences.get_mut(&id).ok_or(CommandError::NoSuchConference(id))?;
        if let Some(other) = c.tap {
            return Err(CommandError::Recorded(id, other));
        }
        c.tap = Some(recording);
        Ok(c.rate)
    }

    /// Stops every tap of `recording` on this core (each ends); returns how many there were.
    pub fn stop_recording(&mut self, recording: u64) -> usize {
        let mut n = 0;
        for leg in self.slots.iter_mut().flatten() {
            if let Some((_, channel)) = leg.tap.filter(|(r, _)| *r == recording) {
                leg.tap = None;
                self.taps.push_back(Tap::Ended { recording, channel });
                n += 1;
            }
        }
        for c in self.conferences.values_mut() {
            if c.tap == Some(recording) {
                c.tap = None;
                self.taps.push_back(Tap::Ended { recording, channel: 0 });
                n += 1;
            }
        }
        n
    }

    /// Counts a tap the driver could not pass on (the recorder's queue was full).
    pub fn count_tap_dropped(&mut self) {
        self.counters.taps_dropped += 1;
    }

    /// The next piece of recorded media (or end of a channel) for the recorder.
    pub fn poll_tap(&mut self) -> Option<Tap> {
        self.taps.pop_front()
    }

    /// Keeps an SDP offer on leg `id` until its answer (it goes with the leg).
    pub fn set_offer(&mut self, id: LegId, offer: Option<Box<PendingOffer>>) -> Result<(), CommandError> {
        let slot = *self.by_id.get(&id).ok_or(CommandError::NoSuchLeg(id))?;
        self.slot_mut(slot).ok_or(CommandError::NoSuchLeg(id))?.offer = offer;
        Ok(())
    }

    /// The SDP offer kept on leg `id`, if any.
    pub fn offer(&self, id: LegId) -> Result<Option<Box<PendingOffer>>, CommandError> {
        let slot = *self.by_id.get(&id).ok_or(CommandError::NoSuchLeg(id))?;
        Ok(self.slot(slot).ok_or(CommandError::NoSuchLeg(id))?.offer.clone())
    }

    /// Removes a leg (and the bridge it is in) and returns its final stats; the caller frees its ports.
    pub fn delete_leg(&mut self, id: LegId, now: Instant) -> Result<LegStats, CommandError> {
        let slot = self.by_id.remove(&id).ok_or(CommandError::NoSuchLeg(id))?;
        if let Some(bridge) = self.slot(slot).and_then(|l| l.bridge) {
            let _ = self.delete_bridge(bridge);
        }
        if let Some(conference) = self.slot(slot).and_then(|l| l.conference) {
            if let Some(c) = self.conferences.get_mut(&conference) {
                c.remove(id);
            }
        }
        let leg = self.slots[slot].take().ok_or(CommandError::NoSuchLeg(id))?;
        // Its slot may be reused before the next frame: its feed goes now.
        self.feeding.retain(|(s, _)| *s != slot);
        if let Some((core, conference)) = leg.remote_conference {
            self.cross.push_back(CrossMessage::MemberGone { core, conference, leg: id });
        }
        if let Some((recording, channel)) = leg.tap {
            self.taps.push_back(Tap::Ended { recording, channel });
        }
        self.by_port[usize::from(leg.local_port)] = 0;
        if !leg.rtcp_mux {
            self.by_port[usize::from(leg.local_port) + 1] = 0;
        }
        self.free_slots.push(slot);
        Ok(leg.stats(now))
    }

    /// Bridges two legs of this engine: media from each is relayed to the other.
    pub fn create_bridge(&mut self, id: BridgeId, a: LegId, b: LegId) -> Result<(), CommandError> {
        if a == b {
            return Err(CommandError::SelfBridge);
        }
        if self.bridges.contains_key(&id) {
            return Err(CommandError::BridgeExists(id));
        }
        let sa = self.unbridged_slot(a)?;
        let sb = self.unbridged_slot(b)?;
        let codec_of = |e: &Self, s| e.slot(s).and_then(|l| l.codec);
        let (ca, cb) = (codec_of(self, sa), codec_of(self, sb));
        let to_a = self.transcoder_between(cb, ca)?;
        let to_b = self.transcoder_between(ca, cb)?;
        for (slot, t) in [(sa, to_a), (sb, to_b)] {
            self.end_generated(slot);
            if let Some(l) = self.slot_mut(slot) {
                l.transcoder = t;
            }
        }
        for (slot, peer) in [(sa, sb), (sb, sa)] {
            if let Some(l) = self.slot_mut(slot) {
                l.bridge = Some(id);
                l.peer = Some(Peer::Local(peer));
            }
        }
        self.bridges.insert(id, Bridge { a: sa, b: Peer::Local(sb), primary: true });
        Ok(())
    }

    /// This core's half of a cross-core bridge: media from `leg` goes to `peer_leg` on core
    /// `peer_core` (as [`Verdict::Handoff`]), and hand-offs from it are accepted for `leg`. The
    /// other core links its half the same way; `primary` is set on the core the id was made on.
    ///
    /// `peer_codec` is the far leg's codec: when it differs from this leg's, the media this core
    /// receives from the far leg is transcoded here (each core transcodes towards its own leg).
    pub fn link_remote(
        &mut self,
        id: BridgeId,
        leg: LegId,
        peer_core: usize,
        peer_leg: LegId,
        peer_codec: Option<LegCodec>,
        primary: bool,
    ) -> Result<(), CommandError> {
        if peer_core == self.config.core && peer_leg == leg {
            return Err(CommandError::SelfBridge);
        }
        if self.bridges.contains_key(&id) {
            return Err(CommandError::BridgeExists(id));
        }
        let slot = self.unbridged_slot(leg)?;
        let own = self.slot(slot).and_then(|l| l.codec);
        let transcoder = self.transcoder_between(peer_codec, own)?;
        self.end_generated(slot);
        let peer = Peer::Remote { core: peer_core, leg: peer_leg };
        if let Some(l) = self.slot_mut(slot) {
            l.bridge = Some(id);
            l.peer = Some(peer);
            l.transcoder = transcoder;
        }
        self.bridges.insert(id, Bridge { a: slot, b: peer, primary });
        Ok(())
    }

    /// Removes a bridge (or this core's half of a cross-core one, telling the other core through
    /// [`poll_cross`](Self::poll_cross)).
    pub fn delete_bridge(&mut self, id: BridgeId) -> Result<(), CommandError> {
        let br = self.bridges.remove(&id).ok_or(CommandError::NoSuchBridge(id))?;
        let clear = |engine: &mut Self, slot| {
            engine.end_generated(slot);
            if let Some(l) = engine.slot_mut(slot) {
                l.bridge = None;
                l.peer = None;
                l.transcoder = None;
            }
        };
        clear(self, br.a);
        match br.b {
            Peer::Local(b) => clear(self, b),
            Peer::Remote { core, leg } => self.cross.push_back(CrossMessage::Unlink { core, leg, bridge: id }),
        }
        Ok(())
    }

    /// Legs whose incoming media is transcoded (or generated) by this core.
    pub fn transcoder_count(&self) -> usize {
        self.slots.iter().flatten().filter(|l| l.transcoder.is_some()).count()
    }

    /// Conferences on this core, and their members.
    pub fn conference_count(&self) -> (usize, usize) {
        (self.conferences.len(), self.conferences.values().map(|c| c.members.len()).sum())
    }

    pub fn has_bridge(&self, id: BridgeId) -> bool {
        self.bridges.contains_key(&id)
    }

    // ---- poll_* ----

    /// When [`Engine::handle_timeout`] must next be called; `None` when there is nothing to time.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.generating
            .iter()
            .chain(&self.feeding)
            .map(|(_, at)| *at)
            .chain(self.conferences.values().map(|c| c.next_tick))
            .chain(self.next_sweep)
            .min()
    }

    /// Next event for the control plane and the driver.
    #[must_use]
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// Next packet the engine made, copied into `buf` (give it [`MAX_TRANSMIT`] bytes; a longer
    /// packet is cut to `buf`). Send it from `from_port` to `to`; if that fails, tell
    /// [`handle_forward_dropped`](Self::handle_forward_dropped).
    #[must_use]
    pub fn poll_transmit(&mut self, buf: &mut [u8]) -> Option<Transmit> {
        let p = self.transmits.pop_front()?;
        let len = p.bytes.len().min(buf.len());
        buf.get_mut(..len)?.copy_from_slice(p.bytes.get(..len)?);
        let mut bytes = p.bytes;
        bytes.clear();
        self.spare.push(bytes);
        Some(Transmit { from_port: p.from_port, to: p.to, len })
    }

    /// Whether [`poll_transmit`](Self::poll_transmit) has something.
    pub fn has_transmit(&self) -> bool {
        !self.transmits.is_empty()
    }

    /// Next message for another core (see [`CrossMessage`]).
    #[must_use]
    pub fn poll_cross(&mut self) -> Option<CrossMessage> {
        self.cross.pop_front()
    }

    // ---- internals ----

    fn slot(&self, s: usize) -> Option<&Leg> {
        self.slots.get(s).and_then(Option::as_ref)
    }
    fn slot_mut(&mut self, s: usize) -> Option<&mut Leg> {
        self.slots.get_mut(s).and_then(Option::as_mut)
    }

    fn port_owner(&self, port: u16) -> Option<(usize, PortKind)> {
        let tag = self.by_port[usize::from(port)];
        if tag == 0 {
            return None;
        }
        let kind = if tag & 1 == 1 { PortKind::Rtcp } else { PortKind::Rtp };
        Some(((tag >> 1) as usize - 1, kind))
    }

    fn route(&mut self, local_port: u16, src: SocketAddr, packet: &[u8], now: Instant) -> Verdict {
        let Some((slot, port_kind)) = self.port_owner(local_port) else {
            return Verdict::Drop(DropReason::NoRoute);
        };
        // Split borrows: the receiving leg and its peer are distinct slots.
        let Some(leg) = self.slots.get_mut(slot).and_then(Option::as_mut) else {
            return Verdict::Drop(DropReason::NoRoute);
        };
        let is_rtcp = match port_kind {
            PortKind::Rtcp => true,
            PortKind::Rtp => leg.rtcp_mux && wire::is_rtcp_on_muxed_port(packet),
        };
        let valid = if is_rtcp { RtcpPacket::new_checked(packet).is_ok() } else { RtpPacket::new_checked(packet).is_ok() };
        if !valid {
            leg.counters.drops.add(DropReason::Malformed);
            return Verdict::Drop(DropReason::Malformed);
        }
        // Strict source: RTCP arriving on the RTP port (mux) is checked against the RTP remote.
        let remote = if port_kind == PortKind::Rtcp { &mut leg.rtcp_remote } else { &mut leg.rtp_remote };
        match remote.accept(src, now) {
            leg::Accept::Known => {}
            leg::Accept::Latched => {
                self.events.push_back(Event::Latched { leg: leg.id, remote: src, rtcp: port_kind == PortKind::Rtcp });
            }
            leg::Accept::WrongSource => {
                leg.counters.drops.add(DropReason::WrongSource);
                return Verdict::Drop(DropReason::WrongSource);
            }
        }
        leg.last_rx = now;
        leg.any_rx = true;
        // SRTP is checked and decrypted before anything reads past the RTP header.
        let mut plain = std::mem::take(&mut self.plain);
        let decrypted = match leg.srtp.as_mut() {
            None => false,
            Some(ctx) => {
                plain.clear();
                plain.extend_from_slice(packet);
                if let Err(failure) = ctx.unprotect(&mut plain, is_rtcp) {
                    let reason = srtp_drop(failure);
                    leg.counters.drops.add(reason);
                    self.plain = plain;
                    return Verdict::Drop(reason);
                }
                true
            }
        };
        let verdict = self.relay(slot, is_rtcp, if decrypted { &plain } else { packet }, packet.len(), decrypted, now);
        self.plain = plain;
        self.plain_valid = decrypted && matches!(verdict, Verdict::Handoff { .. });
        verdict
    }

    /// The rest of [`route`](Self::route), on the packet as RTP/RTCP (`decrypted`: it arrived as
    /// SRTP, `wire_len` bytes long, so the bytes sent on cannot be the received ones).
    fn relay(&mut self, slot: usize, is_rtcp: bool, packet: &[u8], wire_len: usize, decrypted: bool, now: Instant) -> Verdict {
        let Some(leg) = self.slots.get_mut(slot).and_then(Option::as_mut) else {
            return Verdict::Drop(DropReason::NoRoute);
        };
        let epoch = *self.epoch.get_or_insert(now);
        if is_rtcp {
            leg.counters.rtcp_packets_in += 1;
            leg.quality.on_rtcp_from_endpoint(packet, now);
        } else {
            if let Ok(view) = RtpPacket::new_checked(packet) {
                let clock = leg.rtp_clock(view.payload_type());
                leg.quality.on_rtp(&view, now, epoch, clock);
            }
            leg.counters.rtp_packets_in += 1;
            leg.counters.rtp_bytes_in += wire_len as u64;
            if !leg.direction.endpoint_sends() {
                leg.counters.drops.add(DropReason::Muted);
                return Verdict::Drop(DropReason::Muted);
            }
            if let Some((digit, duration_ms)) = leg.detect_dtmf(packet) {
                self.events.push_back(Event::Dtmf { leg: leg.id, digit, duration_ms });
            }
            if let Some((recording, channel)) = leg.tap {
                if self.taps.len() < MAX_TAPS {
                    self.taps.push_back(Tap::Rtp { recording, channel, codec: leg.codec, packet: packet.to_vec() });
                } else {
                    self.counters.taps_dropped += 1;
                }
            }
        }
        let (leg_id, bridge, peer) = (leg.id, leg.bridge.unwrap_or_default(), leg.peer);
        if leg.remote_conference.is_some() {
            // A member of a conference on another core: its RTP is decoded here (the frames go
            // there every period), its RTCP ends here.
            let since = now.saturating_duration_since(epoch);
            let taken =
                is_rtcp || RtpPacket::new_checked(packet).ok().zip(leg.feed.as_mut()).is_some_and(|(rtp, feed)| feed.0.push(&rtp, since));
            return if taken { Verdict::Consumed } else { self.drop_on(slot, DropReason::Undecodable) };
        }
        if let Some(conference) = leg.conference {
            // A member's media goes into the mix; its RTCP ends here.
            let since = now.saturating_duration_since(epoch);
            let mixed = is_rtcp
                || RtpPacket::new_checked(packet)
                    .ok()
                    .and_then(|rtp| self.conferences.get_mut(&conference).map(|c| c.push(leg_id, &rtp, since)))
                    .unwrap_or(false);
            return if mixed { Verdict::Consumed } else { self.drop_on(slot, DropReason::Undecodable) };
        }
        match peer {
            None => self.drop_on(slot, DropReason::NoRoute),
            Some(Peer::Local(peer)) if self.slot(peer).is_some_and(|l| l.transcoder.is_some()) => {
                match self.transcode_into(peer, is_rtcp, packet) {
                    Ok(()) => Verdict::Consumed,
                    Err(reason) => self.drop_on(slot, reason),
                }
            }
            Some(Peer::Local(peer)) => match self.egress(peer, is_rtcp, packet, now) {
                // The fast path: the received bytes go out as they are.
                Ok((from_port, to)) if !decrypted && self.slot(peer).is_some_and(|l| l.srtp.is_none()) => {
                    Verdict::Forward { from_port, to }
                }
                // SRTP on either side: the bytes change, so they go out as a transmit.
                Ok((from_port, to)) => match self.queue_to(peer, from_port, to, packet, is_rtcp) {
                    Ok(()) => Verdict::Consumed,
                    Err(reason) => {
                        self.take_back_out(peer, is_rtcp, packet.len());
                        self.drop_on(slot, reason)
                    }
                },
                Err(reason) => self.drop_on(slot, reason),
            },
            Some(Peer::Remote { core, leg: to_leg }) => Verdict::Handoff {
                core,
                handoff: Handoff { to_leg, from_leg: leg_id, from_core: self.config.core, bridge, rtcp: is_rtcp, conference: false },
            },
        }
    }

    /// The sending half of a relay: where the leg in `slot` sends a packet of `len` bytes, its
    /// out counters moved; or why it cannot (counted by the caller).
    fn egress(&mut self, slot: usize, is_rtcp: bool, packet: &[u8], now: Instant) -> Result<(u16, SocketAddr), DropReason> {
        let len = packet.len();
        let peer = self.slot_mut(slot).ok_or(DropReason::NoRoute)?;
        let out = if is_rtcp { peer.rtcp_destination() } else { peer.rtp_destination() };
        let (from_port, to) = out.ok_or(DropReason::NoRoute)?;
        if is_rtcp {
            peer.counters.rtcp_packets_out += 1;
            peer.quality.on_rtcp_to_endpoint(packet, now);
        } else {
            if !peer.direction.endpoint_receives() {
                return Err(DropReason::Muted);
            }
            peer.counters.rtp_packets_out += 1;
            peer.counters.rtp_bytes_out += len as u64;
            if let (Some(seq), Some(ts), Some(ssrc)) = (packet.get(2..4), packet.get(4..8), packet.get(8..12)) {
                let word = |b: &[u8]| b.iter().fold(0u32, |acc, &x| (acc << 8) | u32::from(x));
                peer.last_relayed = Some((word(ssrc), word(seq) as u16, word(ts), now));
            }
        }
        Ok((from_port, to))
    }

    /// Runs a packet through the transcoder of the leg in `slot` (media towards it), queueing
    /// what it completes. RTCP ends here: the far side's reports describe another stream.
    fn transcode_into(&mut self, slot: usize, is_rtcp: bool, packet: &[u8]) -> Result<(), DropReason> {
        if is_rtcp {
            return Ok(());
        }
        let view = RtpPacket::new_checked(packet).map_err(|_| DropReason::Malformed)?;
        let Self { slots, transmits, spare, .. } = self;
        let leg = slots.get_mut(slot).and_then(Option::as_mut).ok_or(DropReason::NoRoute)?;
        if !leg.direction.endpoint_receives() {
            return Err(DropReason::Muted);
        }
        let (from_port, to) = leg.rtp_destination().ok_or(DropReason::NoRoute)?;
        let peer = leg.peer;
        let Some(transcoder) = leg.transcoder.as_mut() else { return Err(DropReason::NoRoute) };
        let mut srtp = leg.srtp.as_deref_mut();
        let (mut sent, mut bytes) = (0u64, 0u64);
        let mut failed = Vec::new();
        let result = transcoder.push(&view, |out| match push_transmit(transmits, spare, srtp.as_deref_mut(), from_port, to, out, false) {
            Ok(()) => {
                sent += 1;
                bytes += out.len() as u64;
            }
            Err(reason) => failed.push(reason),
        });
        let heard = transcoder.take_heard_digit();
        leg.counters.rtp_packets_out += sent;
        leg.counters.rtp_bytes_out += bytes;
        for reason in failed {
            leg.counters.drops.add(reason);
        }
        // A digit the far endpoint played as tones: reported as that endpoint's leg's.
        let source = match peer {
            Some(Peer::Local(s)) => slots.get(s).and_then(Option::as_ref).map(|l| l.id),
            Some(Peer::Remote { leg, .. }) => Some(leg),
            None => None,
        };
        if let (Some((digit, duration_ms)), Some(leg)) = (heard, source) {
            self.events.push_back(Event::Dtmf { leg, digit, duration_ms });
        }
        match result {
            Ok(_) => Ok(()),
            Err(Rejected::UnknownPayloadType) => Err(DropReason::UnknownPayloadType),
            Err(Rejected::Undecodable) => Err(DropReason::Undecodable),
            Err(Rejected::Late) => Err(DropReason::Late),
        }
    }

    /// The transcoder for media from a leg of codec `from` to a leg of codec `to`: none when
    /// either is unknown or they relay as they are.
    fn transcoder_between(&mut self, from: Option<LegCodec>, to: Option<LegCodec>) -> Result<Option<Box<Transcoder>>, CommandError> {
        let (Some(from), Some(to)) = (from, to) else { return Ok(None) };
        if from.relays_to(&to) {
            return Ok(None);
        }
        let (ssrc, seq, ts) = self.stream_start();
        let t = Transcoder::new(&from, &to, ssrc, seq, ts)?;
        Ok(Some(Box::new(t)))
    }

    /// Seeded by the driver ([`EngineConfig::seed`]).
    fn next_random(&mut self) -> u64 {
        xorshift64star(&mut self.rng)
    }

    /// A random start for a stream the engine makes: SSRC, sequence number, timestamp.
    fn stream_start(&mut self) -> (u32, u16, u32) {
        let r = self.next_random();
        (r as u32, (r >> 32) as u16, (r >> 16) as u32)
    }

    /// Undoes [`egress`](Self::egress)'s counting when the packet did not leave after all.
    fn take_back_out(&mut self, slot: usize, is_rtcp: bool, len: usize) {
        let Some(l) = self.slot_mut(slot) else { return };
        if is_rtcp {
            l.counters.rtcp_packets_out = l.counters.rtcp_packets_out.saturating_sub(1);
        } else {
            l.counters.rtp_packets_out = l.counters.rtp_packets_out.saturating_sub(1);
            l.counters.rtp_bytes_out = l.counters.rtp_bytes_out.saturating_sub(len as u64);
        }
    }

    /// Counts a drop on the leg in `slot` and on the core.
    fn count_drop(&mut self, slot: usize, reason: DropReason) {
        self.counters.drops.add(reason);
        if let Some(l) = self.slot_mut(slot) {
            l.counters.drops.add(reason);
        }
    }

    /// Queues `bytes` for the leg in `slot` ([`poll_transmit`](Self::poll_transmit)), encrypted
    /// if the leg speaks SRTP.
    fn queue_to(&mut self, slot: usize, from_port: u16, to: SocketAddr, bytes: &[u8], rtcp: bool) -> Result<(), DropReason> {
        let Self { slots, transmits, spare, .. } = self;
        let srtp = slots.get_mut(slot).and_then(Option::as_mut).and_then(|l| l.srtp.as_deref_mut());
        push_transmit(transmits, spare, srtp, from_port, to, bytes, rtcp)
    }

    /// The slot of leg `id` if it exists and is in no bridge.
    fn unbridged_slot(&self, id: LegId) -> Result<usize, CommandError> {
        let slot = *self.by_id.get(&id).ok_or(CommandError::NoSuchLeg(id))?;
        if let Some(existing) = self.slot(slot).and_then(|l| l.bridge) {
            return Err(CommandError::AlreadyBridged(id, existing));
        }
        if let Some(conference) = self.slot(slot).and_then(|l| l.in_conference()) {
            return Err(CommandError::InConference(id, conference));
        }
        Ok(slot)
    }

    fn drop_on(&mut self, slot: usize, reason: DropReason) -> Verdict {
        if let Some(l) = self.slot_mut(slot) {
            l.counters.drops.add(reason);
        }
        Verdict::Drop(reason)
    }
}

/// Writes an RTCP compound packet (SR with `block`, SDES CNAME) into `buf`; its length.
fn sender_report(
    ssrc: u32,
    ntp: u64,
    ts: u32,
    packets: u32,
    octets: u32,
    block: Option<quality::ReportBlock>,
    cname: &str,
    buf: &mut [u8],
) -> Option<usize> {
    use rtcp_types::{Compound, ReportBlock, RtcpPacketWriterExt, Sdes, SdesChunk, SdesItem, SenderReport};
    let mut sr = SenderReport::builder(ssrc).ntp_timestamp(ntp).rtp_timestamp(ts).packet_count(packets).octet_count(octets);
    if let Some(b) = block {
        sr = sr.add_report_block(
            ReportBlock::builder(b.ssrc)
                .fraction_lost(b.fraction_lost)
                .cumulative_lost(b.cumulative_lost)
                .extended_sequence_number(b.extended_highest_seq)
                .interarrival_jitter(b.jitter)
                .last_sender_report_timestamp(b.lsr)
                .delay_since_last_sender_report_timestamp(b.dlsr),
        );
    }
    let sdes = Sdes::builder().add_chunk(SdesChunk::builder(ssrc).add_item(SdesItem::builder(SdesItem::CNAME, cname)));
    Compound::builder().add_packet(sr).add_packet(sdes).write_into(buf).ok()
}

/// Room libsrtp wants after a packet it protects (its largest trailer: tag, SRTCP index, MKI).
const SRTP_TRAILER: usize = 144;

/// Queues a copy of `bytes` in `transmits`, reusing a buffer from `spare`, encrypted first with
/// `srtp` if given. Refused when the queue is full or the packet too long (`QueueFull`), or when
/// SRTP refuses it.
fn push_transmit(
    transmits: &mut VecDeque<Pending>,
    spare: &mut Vec<Vec<u8>>,
    srtp: Option<&mut SrtpContext>,
    from_port: u16,
    to: SocketAddr,
    bytes: &[u8],
    rtcp: bool,
) -> Result<(), DropReason> {
    let room = if srtp.is_some() { MAX_TRANSMIT - SRTP_TRAILER } else { MAX_TRANSMIT };
    if transmits.len() >= TRANSMIT_QUEUE || bytes.len() > room {
        return Err(DropReason::QueueFull);
    }
    let mut buf = spare.pop().unwrap_or_else(|| Vec::with_capacity(MAX_TRANSMIT));
    buf.clear();
    buf.extend_from_slice(bytes);
    if let Some(ctx) = srtp {
        if let Err(failure) = ctx.protect(&mut buf, rtcp) {
            spare.push(buf);
            return Err(srtp_drop(failure));
        }
    }
    transmits.push_back(Pending { from_port, to, bytes: buf });
    Ok(())
}

/// The drop an SRTP failure counts as.
fn srtp_drop(failure: SrtpFailure) -> DropReason {
    match failure {
        SrtpFailure::Auth => DropReason::SrtpAuth,
        SrtpFailure::Replay => DropReason::SrtpReplay,
        SrtpFailure::KeyExpired | SrtpFailure::Invalid => DropReason::SrtpOther,
    }
}

/// xorshift64*: advances `state` (never 0) and returns the next value. Deterministic, for the
/// engine's SSRCs and sequence numbers and the harness's loss and jitter draws; not for secrets.
pub(crate) fn xorshift64star(state: &mut u64) -> u64 {
    let mut x = *state;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    *state = x;
    x.wrapping_mul(0x2545_f491_4f6c_dd1d)
}

#[cfg(test)]
mod tests;
