//! A leg: one media endpoint (RTP port, RTCP port or rtcp-mux), its remote addresses and counters.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use super::direction::Direction;
use super::dtmf::{KeyPressTracker, TelephoneEvent};
use super::quality::{Quality, QualityStats};
use super::transcode::{LegCodec, TranscodeCounters, Transcoder};
use super::{BridgeId, LegId};
use crate::sdp::PendingOffer;
use crate::srtp::{SrtpContext, SrtpKeys};
use crate::wire::RtpPacket;

/// The other end of a leg's bridge: a leg of this core (its slot), or a leg of another core,
/// reached over the drivers' cross-core hand-off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Peer {
    Local(usize),
    Remote { core: usize, leg: LegId },
}

/// Why a packet was dropped. Every drop is counted under one of these.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    /// Too short for its header, or version not 2.
    Malformed,
    /// From an address other than the leg's latched remote.
    WrongSource,
    /// No leg on the port, no bridge, or the peer has no remote yet.
    NoRoute,
    /// RTP the direction does not allow (hold, mute). RTCP always flows.
    Muted,
    /// The kernel refused the send.
    SendFailed,
    /// A queue on the way was full: the engine's transmit queue, or the hand-off queue to the
    /// core that owns the peer leg.
    QueueFull,
    /// Transcoding: a payload type that is not the leg's codec.
    UnknownPayloadType,
    /// Transcoding: a payload the codec cannot decode.
    Undecodable,
    /// Transcoding: behind a packet already decoded.
    Late,
    /// SRTP/SRTCP whose authentication tag does not match (tampered, or the wrong key).
    SrtpAuth,
    /// SRTP/SRTCP replayed, or older than the replay window.
    SrtpReplay,
    /// SRTP that could not be protected or unprotected otherwise: key lifetime used up, a
    /// packet too short to be SRTP.
    SrtpOther,
}

/// Drop counters by reason.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Drops {
    pub malformed: u64,
    pub wrong_source: u64,
    pub no_route: u64,
    pub muted: u64,
    pub send_failed: u64,
    pub queue_full: u64,
    pub unknown_payload_type: u64,
    pub undecodable: u64,
    pub late: u64,
    pub srtp_auth: u64,
    pub srtp_replay: u64,
    pub srtp_other: u64,
}

impl Drops {
    pub fn add(&mut self, r: DropReason) {
        let c = match r {
            DropReason::Malformed => &mut self.malformed,
            DropReason::WrongSource => &mut self.wrong_source,
            DropReason::NoRoute => &mut self.no_route,
            DropReason::Muted => &mut self.muted,
            DropReason::SendFailed => &mut self.send_failed,
            DropReason::QueueFull => &mut self.queue_full,
            DropReason::UnknownPayloadType => &mut self.unknown_payload_type,
            DropReason::Undecodable => &mut self.undecodable,
            DropReason::Late => &mut self.late,
            DropReason::SrtpAuth => &mut self.srtp_auth,
            DropReason::SrtpReplay => &mut self.srtp_replay,
            DropReason::SrtpOther => &mut self.srtp_other,
        };
        *c += 1;
    }
    pub fn total(&self) -> u64 {
        self.malformed
            + self.wrong_source
            + self.no_route
            + self.muted
            + self.send_failed
            + self.queue_full
            + self.unknown_payload_type
            + self.undecodable
            + self.late
            + self.srtp_auth
            + self.srtp_replay
            + self.srtp_other
    }
}

/// A remote address and whether packets from elsewhere are refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Remote {
    pub addr: Option<SocketAddr>,
    /// Locked: only `addr` may send. Unlocked: the next packet's source becomes `addr` (latching).
    pub locked: bool,
    /// Endpoint learning (as rtpengine's "heuristic" mode). The address the endpoint signalled
    /// (SDP) for a latching remote: a source that is not exactly it is latched tentatively, and
    /// for [`LEARNING`] after that first packet a source that matches it better (the same port,
    /// or the exact address) takes over. So a stray packet from the endpoint the leg faced before
    /// (a transferred phone's RTP still in flight when its successor's answer moved the leg)
    /// cannot keep the leg from its new endpoint, even one whose SDP names another interface
    /// than the one its packets leave from; a source behind NAT stays latched.
    pub signalled: Option<SocketAddr>,
    /// How well the latched source matches `signalled` (see [`match_rank`]), and until when a
    /// better one may take over.
    rank: u8,
    learning_until: Option<Instant>,
}

/// How long after a tentative latch a source that matches the signalled address better takes
/// over.
pub const LEARNING: Duration = Duration::from_secs(3);

/// 3: `src` is `signalled`; 2: the same port (another address of the endpoint's host); 1: any
/// other source.
fn match_rank(src: SocketAddr, signalled: SocketAddr) -> u8 {
    if src == signalled {
        3
    } else if src.port() == signalled.port() {
        2
    } else {
        1
    }
}

pub(super) enum Accept {
    Known,
    Latched,
    WrongSource,
}

impl Remote {
    pub fn locked(addr: SocketAddr) -> Self {
        Self { addr: Some(addr), locked: true, ..Self::default() }
    }
    /// Send to `addr` (if any) until the first packet arrives, then latch onto its source (a
    /// source matching `addr` better takes over for a while: see [`Remote::signalled`]).
    pub fn latching(addr: Option<SocketAddr>) -> Self {
        Self { addr, signalled: addr, ..Self::default() }
    }
    /// Latch again onto the next packet's source (no address preferred).
    pub(super) fn unlock(&mut self) {
        self.locked = false;
        self.signalled = None;
        self.learning_until = None;
    }
    pub(super) fn accept(&mut self, src: SocketAddr, now: Instant) -> Accept {
        if self.locked && self.addr == Some(src) {
            return Accept::Known;
        }
        let rank = self.signalled.map_or(1, |s| match_rank(src, s));
        if self.locked {
            let learning = self.learning_until.is_some_and(|until| now < until);
            if !(learning && rank > self.rank) {
                return Accept::WrongSource;
            }
        } else {
            self.learning_until = (self.signalled.is_some() && rank < 3).then(|| now + LEARNING);
        }
        self.addr = Some(src);
        self.locked = true;
        self.rank = rank;
        if rank == 3 {
            self.learning_until = None;
        }
        Accept::Latched
    }
}

/// What the control plane asks for when creating a leg.
#[derive(Debug, Clone, Copy, Default)]
pub struct LegSpec {
    pub remote: Remote,
    pub remote_rtcp: Remote,
    pub rtcp_mux: bool,
    pub direction: Direction,
    /// `None`: the engine's default.
    pub media_timeout: Option<Duration>,
    /// What the endpoint sends and receives; a bridge to a leg of another codec transcodes.
    /// `None`: unknown, relayed as it is.
    pub codec: Option<LegCodec>,
    /// When to raise a quality alarm on the stream the endpoint sends.
    pub alarm: QualityAlarm,
}

/// Thresholds of a leg's quality alarm ([`super::Event::Quality`]), judged every second over the
/// packets of the last second or more (at least 50 expected); `None`: not watched.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QualityAlarm {
    /// Loss above this, in 1/1000 of the packets expected.
    pub loss_permille: Option<u32>,
    /// Interarrival jitter above this.
    pub jitter_us: Option<u64>,
}

/// What an SDP offer/answer settled for a leg ([`super::Engine::set_leg_media`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LegMedia {
    /// Where the endpoint said it receives RTP (`None`: keep the current remote).
    pub remote: Option<SocketAddr>,
    /// ...and RTCP.
    pub remote_rtcp: Option<SocketAddr>,
    pub rtcp_mux: bool,
    pub direction: Direction,
    /// What the endpoint sends and receives (`None`: relayed as it is).
    pub codec: Option<LegCodec>,
    /// SDES keys when the endpoint speaks SRTP (`None`: plain RTP).
    pub srtp: Option<SrtpKeys>,
}

/// Counters and addresses of a leg, as reported by GetStats and events.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LegStats {
    pub id: LegId,
    pub local_port: u16,
    pub rtcp_mux: bool,
    pub remote: Option<SocketAddr>,
    pub remote_rtcp: Option<SocketAddr>,
    pub latched: bool,
    pub direction: Direction,
    pub bridge: Option<BridgeId>,
    pub counters: LegCounters,
    /// Time since the last accepted packet; `None` if none yet.
    pub idle: Option<Duration>,
    pub codec: Option<LegCodec>,
    /// Transcoding of the media sent to this leg (when its bridge joins another codec).
    pub transcoded: Option<TranscodeCounters>,
    /// RTP loss and jitter of what the endpoint sends, its reports, round-trip time.
    pub quality: QualityStats,
}

/// Packet counters of a leg. "In" is what its endpoint sent, "out" what was sent to its endpoint.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LegCounters {
    pub rtp_packets_in: u64,
    pub rtp_bytes_in: u64,
    pub rtp_packets_out: u64,
    pub rtp_bytes_out: u64,
    pub rtcp_packets_in: u64,
    pub rtcp_packets_out: u64,
    pub drops: Drops,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum PortKind {
    Rtp,
    Rtcp,
}

#[derive(Debug)]
pub(super) struct Leg {
    pub id: LegId,
    pub local_port: u16,
    pub rtcp_mux: bool,
    pub rtp_remote: Remote,
    pub rtcp_remote: Remote,
    pub direction: Direction,
    pub media_timeout: Duration,
    pub bridge: Option<BridgeId>,
    /// The bridged leg.
    pub peer: Option<Peer>,
    pub codec: Option<LegCodec>,
    /// Turns the peer's media into this leg's codec, when they differ.
    pub transcoder: Option<Box<Transcoder>>,
    pub dtmf: KeyPressTracker,
    pub quality: Quality,
    /// SRTP towards and from the endpoint, when it uses it.
    pub srtp: Option<Box<SrtpContext>>,
    /// When the media plane's next own RTCP report is due (legs where it ends RTCP).
    pub next_report: Option<Instant>,
    /// The conference the leg is in (its media goes into the mix instead of a bridge).
    pub conference: Option<super::conference::ConferenceId>,
    pub alarm: QualityAlarm,
    /// The alarm is raised; expected and lost when it was last judged.
    pub alarm_on: bool,
    pub alarm_prior: (u64, u64),
    /// The SDP offer this leg's endpoint was sent, until its answer ([`crate::sdp`]).
    pub offer: Option<Box<PendingOffer>>,
    /// Last accepted packet, or creation.
    pub last_rx: Instant,
    pub any_rx: bool,
    pub counters: LegCounters,
    /// The last RTP packet relayed to the endpoint: SSRC, sequence number, timestamp and when.
    /// A stream the media plane makes for this leg later (a play, music on hold) continues it,
    /// so the endpoint sees one stream, not a new source with a jump in its timestamps.
    pub last_relayed: Option<(u32, u16, u32, Instant)>,
    /// The recording (and its channel) this leg's incoming media is tapped for.
    pub tap: Option<(u64, u8)>,
    /// The conference on another core this leg is a member of: (its core, its id).
    pub remote_conference: Option<(usize, super::conference::ConferenceId)>,
    /// That member's audio, decoded here for the mix: its intake and the frames decoded so far.
    pub feed: Option<Box<(super::conference::Intake, std::collections::VecDeque<i16>)>>,
}

impl Leg {
    pub fn new(id: LegId, local_port: u16, spec: LegSpec, media_timeout: Duration, now: Instant) -> Self {
        Self {
            id,
            local_port,
            rtcp_mux: spec.rtcp_mux,
            rtp_remote: spec.remote,
            rtcp_remote: spec.remote_rtcp,
            direction: spec.direction,
            media_timeout,
            bridge: None,
            peer: None,
            codec: spec.codec,
            transcoder: None,
            dtmf: KeyPressTracker::default(),
            quality: Quality::default(),
            srtp: None,
            next_report: None,
            conference: None,
            alarm: spec.alarm,
            alarm_on: false,
            alarm_prior: (0, 0),
            offer: None,
            last_rx: now,
            any_rx: false,
            counters: LegCounters::default(),
            last_relayed: None,
            tap: None,
            remote_conference: None,
            feed: None,
        }
    }

    /// The conference the leg is a member of, on this core or another.
    pub fn in_conference(&self) -> Option<super::conference::ConferenceId> {
        self.conference.or(self.remote_conference.map(|(_, c)| c))
    }

    /// The RTP clock of payload type `pt` from this endpoint: its codec's (or telephone-event's)
    /// if it has one, else the static payload types' (RFC 3551), else unknown.
    pub fn rtp_clock(&self, pt: u8) -> Option<u32> {
        match self.codec {
            Some(c) if c.payload_type == pt || c.telephone_event == Some(pt) => Some(c.rtp_clock()),
            _ => match pt {
                0 | 3 | 4 | 5 | 7 | 8 | 9 | 12 | 13 | 15 | 18 => Some(8000),
                6 => Some(16_000),
                10 | 11 => Some(44_100),
                _ => None,
            },
        }
    }

    /// A DTMF digit (and its duration in ms) completed by this RTP packet from the endpoint, if
    /// its codec names a telephone-event payload type and the packet is one.
    pub fn detect_dtmf(&mut self, packet: &[u8]) -> Option<(char, u32)> {
        let codec = self.codec?;
        let rtp = RtpPacket::new_checked(packet).ok()?;
        if Some(rtp.payload_type()) != codec.telephone_event {
            return None;
        }
        let event = TelephoneEvent::parse(rtp.payload().ok()?)?;
        let (digit, duration) = self.dtmf.push(rtp.ssrc(), rtp.timestamp(), event)?;
        let ms = u64::from(duration) * 1000 / u64::from(codec.rtp_clock().max(1));
        Some((digit, u32::try_from(ms).unwrap_or(u32::MAX)))
    }

    /// Local port and remote address for RTP sent to this leg's endpoint.
    pub fn rtp_destination(&self) -> Option<(u16, SocketAddr)> {
        Some((self.local_port, self.rtp_remote.addr?))
    }

    /// Local port and remote address for RTCP sent to this leg's endpoint: the RTCP remote if known,
    /// else derived from the RTP remote (same address with rtcp-mux, port + 1 without).
    pub fn rtcp_destination(&self) -> Option<(u16, SocketAddr)> {
        if self.rtcp_mux {
            let to = self.rtcp_remote.addr.or(self.rtp_remote.addr)?;
            return Some((self.local_port, to));
        }
        let to = match self.rtcp_remote.addr {
            Some(a) => a,
            None => {
                let mut a = self.rtp_remote.addr?;
                a.set_port(a.port().checked_add(1)?);
                a
            }
        };
        Some((self.local_port + 1, to))
    }

    pub fn stats(&self, now: Instant) -> LegStats {
        LegStats {
            id: self.id,
            local_port: self.local_port,
            rtcp_mux: self.rtcp_mux,
            remote: self.rtp_remote.addr,
            remote_rtcp: self.rtcp_destination().map(|(_, a)| a),
            latched: self.rtp_remote.locked,
            direction: self.direction,
            bridge: self.bridge,
            counters: self.counters,
            idle: self.any_rx.then(|| now.saturating_duration_since(self.last_rx)),
            codec: self.codec,
            transcoded: self.transcoder.as_ref().map(|t| t.counters),
            quality: self.quality.stats(),
        }
    }
}
