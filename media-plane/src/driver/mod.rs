//! Media cores: one pinned OS thread per core, each running an [`Engine`] under a driver.
//!
//! The gRPC layer talks to a core only through its bounded command queue (and a [`mio::Waker`] to
//! wake it); replies come back on oneshot channels, events on a broadcast channel. A full queue is
//! refused at once (counted), never waited on.
//!
//! What does not depend on the datapath lives here, in [`CoreState`]: the engine, the command
//! handling, the port pool (each allocated port is held by a bound kernel UDP socket, also under
//! AF_XDP, so no other process gets it and the kernel sends no ICMP port-unreachable), engine
//! events, and the cross-core queues ([`CrossCore`]). The drivers ([`udp`], [`xdp`]) only move
//! packets.
//!
//! **Cross-core.** Every core has one bounded inbox of [`CrossPacket`]s and the sender of every
//! other core's. A bridge between legs of two cores sends each packet over it (the engine's
//! `Verdict::Handoff`; the receiving engine queues it and the driver sends it from its
//! `poll_transmit`), bridge halves are undone over it, and the AF_XDP driver passes on packets
//! RSS put on the wrong queue. Sending never blocks: a full inbox is a counted drop
//! (`handoff_full`); the receiver is woken once per batch.

pub mod udp;
pub mod xdp;

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, TrySendError};
use mio::net::UdpSocket;
use mio::{Interest, Token};
use socket2::{Domain, Protocol, Socket, Type};
use tokio::sync::{broadcast, oneshot};

use crate::config::{Backend, Config};
use crate::engine::{
    BridgeId, CommandError, CoreCounters, CrossMessage, Direction, Engine, EngineConfig, Event, Handoff, LegCodec, LegId, LegMedia,
    LegSpec, LegStats,
};
use crate::ports::PortPool;
use crate::sdp::PendingOffer;

/// Depth of each core's command queue.
pub const COMMAND_QUEUE: usize = 4096;

/// Why a core could not carry out a command.
#[derive(Debug, thiserror::Error)]
pub enum CoreError {
    #[error(transparent)]
    Command(#[from] CommandError),
    #[error("no free media port on core {0}")]
    PortsExhausted(usize),
    #[error("bind({0}) failed: {1}")]
    Bind(SocketAddr, std::io::Error),
    #[error("epoll_ctl for port {0} failed: {1}")]
    Register(u16, std::io::Error),
}

pub type Reply<T> = oneshot::Sender<Result<T, CoreError>>;

/// A request to one core.
#[derive(Debug)]
pub enum Command {
    /// Where the core sends what it taps for recordings.
    SetRecorder(crate::recorder::RecorderHandle),
    /// Taps a leg for a recording (as its `channel`); replies with the leg's codec.
    RecordLeg {
        id: LegId,
        recording: u64,
        channel: u8,
        reply: Reply<Option<LegCodec>>,
    },
    /// Taps a conference's mix for a recording; replies with its rate.
    RecordConference {
        id: u64,
        recording: u64,
        reply: Reply<u32>,
    },
    /// Makes a leg of this core a member of a conference on core `core` mixed at `rate`.
    JoinRemote {
        leg: LegId,
        core: usize,
        conference: u64,
        rate: u32,
        reply: Reply<()>,
    },
    /// The leg is no longer a member of a conference on another core.
    LeaveRemote {
        leg: LegId,
        reply: Reply<bool>,
    },
    /// Adds leg `leg` of core `core` (to be joined there) to this core's conference; replies
    /// with its mixing rate.
    AddRemoteMember {
        conference: u64,
        leg: LegId,
        core: usize,
        codec: LegCodec,
        muted: bool,
        deaf: bool,
        reply: Reply<u32>,
    },
    /// Stops a recording's taps on this core; replies with how many there were.
    StopRecording {
        recording: u64,
        reply: Option<Reply<usize>>,
    },
    CreateLeg {
        id: LegId,
        spec: LegSpec,
        reply: Reply<u16>,
    },
    UpdateLeg {
        id: LegId,
        remote: Option<SocketAddr>,
        remote_rtcp: Option<SocketAddr>,
        direction: Option<Direction>,
        relatch: bool,
        reply: Reply<()>,
    },
    DeleteLeg {
        id: LegId,
        reply: Reply<LegStats>,
    },
    /// Creates legs, all or none (those made are deleted again when one fails); replies with
    /// their RTP ports in order.
    CreateLegs {
        legs: Vec<(LegId, LegSpec)>,
        reply: Reply<Vec<u16>>,
    },
    /// Deletes legs; replies with each one's final stats, `None` for a leg that did not exist.
    DeleteLegs {
        ids: Vec<LegId>,
        reply: Reply<Vec<Option<LegStats>>>,
    },
    /// The SDP offer kept on leg `id` and the stats of `legs` (all of this core; `None` for a
    /// leg that does not exist), for an answer.
    OfferAndLegs {
        id: LegId,
        legs: Vec<LegId>,
        reply: Reply<OfferAndLegs>,
    },
    /// What an answer settled, stream by stream (legs of this core): the media of both legs,
    /// and the bridge between them kept or made again; replies with each stream's bridge.
    Settle {
        streams: Vec<SettleStream>,
        reply: Reply<Vec<BridgeId>>,
    },
    CreateBridge {
        id: BridgeId,
        a: LegId,
        b: LegId,
        reply: Reply<()>,
    },
    /// This core's half of a bridge to leg `peer_leg` (of codec `peer_codec`) of core `peer_core`.
    LinkRemote {
        id: BridgeId,
        leg: LegId,
        peer_core: usize,
        peer_leg: LegId,
        peer_codec: Option<LegCodec>,
        primary: bool,
        reply: Reply<()>,
    },
    /// The codec a leg was created with.
    LegCodec {
        id: LegId,
        reply: Reply<Option<LegCodec>>,
    },
    /// One leg's stats (ports, bridge, codec).
    Leg {
        id: LegId,
        reply: Reply<LegStats>,
    },
    /// What an SDP offer/answer settled for a leg (opens or closes its RTCP port on a change of
    /// rtcp-mux).
    SetMedia {
        id: LegId,
        media: LegMedia,
        reply: Reply<()>,
    },
    /// Keeps (or clears) an SDP offer on a leg until its answer.
    PutOffer {
        id: LegId,
        offer: Option<Box<PendingOffer>>,
        reply: Reply<()>,
    },
    GetOffer {
        id: LegId,
        reply: Reply<Option<Box<PendingOffer>>>,
    },
    CreateConference {
        id: u64,
        rate: u32,
        reply: Reply<()>,
    },
    DeleteConference {
        id: u64,
        reply: Reply<Vec<LegId>>,
    },
    /// Adds (`add`) or updates a member.
    Member {
        conference: u64,
        leg: LegId,
        muted: bool,
        deaf: bool,
        add: bool,
        reply: Reply<()>,
    },
    RemoveMember {
        conference: u64,
        leg: LegId,
        reply: Reply<()>,
    },
    /// The PCM rate a play to the leg must have.
    PlayRate {
        id: LegId,
        reply: Reply<u32>,
    },
    Play {
        id: LegId,
        play: u64,
        pcm: std::sync::Arc<[i16]>,
        looped: bool,
        reply: Reply<()>,
    },
    StopPlay {
        id: LegId,
        reply: Reply<bool>,
    },
    /// Plays DTMF digits to a leg's endpoint; answers how many were queued.
    InjectDtmf {
        id: LegId,
        digits: String,
        on: Duration,
        pause: Duration,
        reply: Reply<usize>,
    },
    DeleteBridge {
        id: BridgeId,
        reply: Reply<()>,
    },
    /// `legs: None` = every leg; `Some(ids)` = only those (empty: totals only).
    Stats {
        legs: Option<Vec<LegId>>,
        reply: oneshot::Sender<CoreReport>,
    },
    Shutdown,
}

/// [`Command::OfferAndLegs`]' answer: the offer kept, and each leg's stats (`None`: no such leg).
pub type OfferAndLegs = (Option<Box<PendingOffer>>, Vec<Option<LegStats>>);

/// One stream of a [`Command::Settle`].
#[derive(Debug)]
pub struct SettleStream {
    pub a: LegId,
    pub media_a: LegMedia,
    pub b: LegId,
    pub media_b: LegMedia,
    /// The bridge the legs are in now, if any.
    pub bridge: Option<BridgeId>,
    /// That bridge is deleted first (the codecs changed) and a new one made.
    pub rebridge: bool,
    /// The id of a bridge made.
    pub new_bridge: BridgeId,
}

/// A core's answer to [`Command::Stats`].
#[derive(Debug, Clone)]
pub struct CoreReport {
    pub core: usize,
    pub legs: Vec<LegStats>,
    pub leg_count: usize,
    pub bridge_count: usize,
    pub counters: CoreCounters,
    pub free_ports: usize,
    pub driver: DriverCounters,
    pub transcoders: usize,
    pub conferences: usize,
    pub conference_members: usize,
}

/// Frames a backend driver dropped itself, before or after the engine, and cross-core
/// hand-offs. The AF_XDP driver keeps them; the UDP driver has none (the kernel demultiplexes).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct DriverCounters {
    /// Frames that were not UDP over IPv4/IPv6 (the XDP program only steers those; counted anyway).
    pub not_udp: u64,
    /// UDP frames not addressed to media_ip and the port range.
    pub not_ours: u64,
    /// Forwards dropped because the next hop's MAC was unknown (ARP prompted).
    pub no_neighbour: u64,
    /// Forwards the TX ring or the UMEM had no room for.
    pub tx_full: u64,
    /// Forwards the rewrite refused (family mismatch: IPv6 destination for an IPv4 relay).
    pub rewrite_failed: u64,
    /// Packets passed to another core: for a port it owns (AF_XDP), or for a bridged leg it owns.
    pub handoff_out: u64,
    /// Of those, dropped because that core's queue was full.
    pub handoff_full: u64,
    /// Packets received from other cores and run through this core's engine.
    pub handoff_in: u64,
}

/// What one core passes to another over its bounded cross-core queue.
#[derive(Debug)]
pub enum CrossPacket {
    /// A packet that arrived on this core for a port the other core owns (AF_XDP: RSS put it on
    /// the wrong queue); the owner runs it through its engine as its own.
    Port { dst_port: u16, src: SocketAddr, payload: Vec<u8> },
    /// A packet for the bridged leg the other core owns (the engine's `Verdict::Handoff`).
    Peer { handoff: Handoff, payload: Vec<u8> },
    /// Drop your half of a cross-core bridge (the engine's `CrossMessage::Unlink`).
    Unlink { leg: LegId, bridge: BridgeId },
    /// Your conference's member `leg` (of the sending core) is gone.
    MemberGone { conference: u64, leg: LegId },
    /// A mixing period's audio of member `leg` of core `from`, decoded there.
    MemberFrame { conference: u64, leg: LegId, from: usize, pcm: Vec<i16> },
    /// Your leg `leg` is no longer in the sending core's conference `conference`.
    Unjoin { conference: u64, leg: LegId, from: usize },
}

/// Packets waiting in each core's cross-core queue before more are dropped (`handoff_full`).
pub const CROSS_QUEUE: usize = 4096;

/// How a core reaches another: its cross-core queue and the waker of its loop.
#[derive(Debug, Clone)]
pub struct CorePeer {
    pub tx: Sender<CrossPacket>,
    pub waker: Arc<mio::Waker>,
}

/// The cross-core side of one core (see the module documentation).
#[derive(Debug)]
pub struct CrossCore {
    /// Packets other cores passed to this one.
    inbox: Receiver<CrossPacket>,
    /// Every core's queue, indexed by core (this core's own entry is unused).
    peers: Vec<CorePeer>,
    /// Cores sent something since their last wake-up.
    to_wake: Vec<bool>,
    /// Number of media cores.
    pub cores: usize,
}

impl CrossCore {
    /// A core's side with its `inbox`; [`CrossCore::set_peers`] completes it once every core's
    /// waker exists.
    pub fn new(inbox: Receiver<CrossPacket>, cores: usize) -> Self {
        Self { inbox, peers: Vec::new(), to_wake: vec![false; cores], cores }
    }

    /// A one-core media plane's side: nothing to send to.
    pub fn alone() -> Self {
        let (_tx, inbox) = crossbeam_channel::bounded(1);
        Self::new(inbox, 1)
    }

    /// Every core's queue and waker, indexed by core.
    pub fn set_peers(&mut self, peers: Vec<CorePeer>) {
        self.to_wake = vec![false; peers.len()];
        self.cores = peers.len().max(1);
        self.peers = peers;
    }

    /// Queues `packet` for `core` without waiting; `false` (counted) when its queue is full or
    /// the core is gone. The core is woken by the next [`CrossCore::wake_peers`].
    pub fn send(&mut self, core: usize, packet: CrossPacket, counters: &mut DriverCounters) -> bool {
        self.try_send(core, packet, counters).is_ok()
    }

    /// As [`CrossCore::send`], giving the packet back when it could not be queued (a core that
    /// does not exist: dropped).
    pub fn try_send(&mut self, core: usize, packet: CrossPacket, counters: &mut DriverCounters) -> Result<(), CrossPacket> {
        let Some(peer) = self.peers.get(core) else { return Ok(()) };
        match peer.tx.try_send(packet) {
            Ok(()) => {
                counters.handoff_out += 1;
                if let Some(w) = self.to_wake.get_mut(core) {
                    *w = true;
                }
                Ok(())
            }
            Err(crossbeam_channel::TrySendError::Full(p)) => {
                counters.handoff_full += 1;
                Err(p)
            }
            Err(crossbeam_channel::TrySendError::Disconnected(_)) => Ok(()),
        }
    }

    /// Wakes the cores sent something since the last call (one eventfd write each).
    pub fn wake_peers(&mut self) {
        for (peer, wake) in self.peers.iter().zip(self.to_wake.iter_mut()) {
            if std::mem::take(wake) {
                let _ = peer.waker.wake();
            }
        }
    }

    /// The next packet another core passed here.
    pub fn recv(&self) -> Option<CrossPacket> {
        self.inbox.try_recv().ok()
    }

    /// Whether nothing is waiting in the inbox.
    pub fn is_empty(&self) -> bool {
        self.inbox.is_empty()
    }

    /// Which cores were marked for waking (tests).
    pub fn pending_wakes(&self) -> &[bool] {
        &self.to_wake
    }
}

/// An engine event tagged with the core it came from.
pub type CoreEvent = (usize, Event);

/// The gRPC side's handle on a core.
#[derive(Debug)]
pub struct CoreHandle {
    pub core: usize,
    tx: Sender<Command>,
    waker: Arc<mio::Waker>,
    queue_full: AtomicU64,
    thread: std::sync::Mutex<Option<std::thread::JoinHandle<()>>>,
}

/// The core's queue is full or the core has stopped.
#[derive(Debug, thiserror::Error)]
pub enum SubmitError {
    #[error("core {0} command queue is full")]
    QueueFull(usize),
    #[error("core {0} has stopped")]
    Stopped(usize),
}

impl CoreHandle {
    /// Queues a command without waiting and wakes the core.
    pub fn submit(&self, cmd: Command) -> Result<(), SubmitError> {
        match self.tx.try_send(cmd) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                self.queue_full.fetch_add(1, Ordering::Relaxed);
                return Err(SubmitError::QueueFull(self.core));
            }
            Err(TrySendError::Disconnected(_)) => return Err(SubmitError::Stopped(self.core)),
        }
        self.waker.wake().map_err(|_| SubmitError::Stopped(self.core))
    }

    pub fn queue_full(&self) -> u64 {
        self.queue_full.load(Ordering::Relaxed)
    }

    /// Asks the core to stop and waits for its thread, at most `limit`.
    pub fn shutdown(&self, limit: Duration) {
        let _ = self.submit(Command::Shutdown);
        let handle = self.thread.lock().ok().and_then(|mut t| t.take());
        if let Some(h) = handle {
            let deadline = std::time::Instant::now() + limit;
            while !h.is_finished() && std::time::Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(5));
            }
            if h.is_finished() {
                let _ = h.join();
            }
        }
    }
}

/// Ports tried when the next free one is taken by another process.
const BIND_ATTEMPTS: usize = 64;

/// What every driver of one core shares: the engine, its ports and their sockets, the command queue
/// and the event channel. See the module documentation.
#[derive(Debug)]
pub struct CoreState {
    pub core: usize,
    pub engine: Engine,
    pool: PortPool,
    /// Kernel sockets holding the core's ports, indexed by local port.
    sockets: Vec<Option<UdpSocket>>,
    /// Where port sockets are registered for readability with token = port (UDP driver); `None`
    /// when they are only bound to reserve the port (AF_XDP driver: the XDP program steers their
    /// packets away from them).
    registry: Option<mio::Registry>,
    commands: Receiver<Command>,
    events: broadcast::Sender<CoreEvent>,
    media_ip: IpAddr,
    socket_buffer: usize,
    /// The driver's counters (reported by [`Command::Stats`]).
    pub driver: DriverCounters,
    /// Queues to and from the other cores.
    pub cross: CrossCore,
    /// Where recorded media goes (set once the recorder runs).
    recorder: Option<crate::recorder::RecorderHandle>,
    /// Messages to other cores that must not be lost (a conference member gone or let go),
    /// kept while the other core's queue is full and sent again.
    control_retry: Vec<(usize, CrossPacket)>,
}

impl CoreState {
    pub fn new(
        core: usize,
        config: &Config,
        commands: Receiver<Command>,
        events: broadcast::Sender<CoreEvent>,
        registry: Option<mio::Registry>,
        cross: CrossCore,
    ) -> Self {
        let mut sockets = Vec::with_capacity(1 << 16);
        sockets.resize_with(1 << 16, || None);
        Self {
            core,
            engine: Engine::new(EngineConfig {
                media_timeout: config.media_timeout,
                core,
                seed: random_seed(core),
                wall: Some(wall_clock()),
            }),
            pool: PortPool::for_core(config.port_min, config.port_max, core, config.cores),
            sockets,
            registry,
            commands,
            events,
            media_ip: config.media_ip,
            socket_buffer: config.socket_buffer,
            driver: DriverCounters::default(),
            cross,
            recorder: None,
            control_retry: Vec::new(),
        }
    }

    pub fn free_ports(&self) -> usize {
        self.pool.free()
    }

    /// The kernel socket bound to `port`, if the port belongs to a leg of this core.
    pub fn socket(&self, port: u16) -> Option<&UdpSocket> {
        self.sockets[usize::from(port)].as_ref()
    }

    /// Runs queued commands; `false` when the core must stop.
    pub fn drain_commands(&mut self) -> bool {
        loop {
            let cmd = match self.commands.try_recv() {
                Ok(c) => c,
                Err(crossbeam_channel::TryRecvError::Empty) => return true,
                Err(crossbeam_channel::TryRecvError::Disconnected) => return false,
            };
            let now = Instant::now();
            match cmd {
                Command::SetRecorder(r) => self.recorder = Some(r),
                Command::RecordLeg { id, recording, channel, reply } => {
                    let _ = reply.send(self.engine.record_leg(id, recording, channel).map_err(CoreError::from));
                }
                Command::RecordConference { id, recording, reply } => {
                    let _ = reply.send(self.engine.record_conference(id, recording).map_err(CoreError::from));
                }
                Command::StopRecording { recording, reply } => {
                    let n = self.engine.stop_recording(recording);
                    if let Some(reply) = reply {
                        let _ = reply.send(Ok(n));
                    }
                }
                Command::CreateLeg { id, spec, reply } => {
                    let _ = reply.send(self.create_leg(id, spec, now));
                }
                Command::UpdateLeg { id, remote, remote_rtcp, direction, relatch, reply } => {
                    let r = self.engine.update_leg(id, remote, remote_rtcp, direction, relatch).map_err(CoreError::from);
                    let _ = reply.send(r);
                }
                Command::DeleteLeg { id, reply } => {
                    let _ = reply.send(self.delete_leg(id, now));
                }
                Command::CreateLegs { legs, reply } => {
                    let _ = reply.send(self.create_legs(legs, now));
                }
                Command::DeleteLegs { ids, reply } => {
                    let stats = ids.iter().map(|&id| self.delete_leg(id, now).ok()).collect();
                    let _ = reply.send(Ok(stats));
                }
                Command::OfferAndLegs { id, legs, reply } => {
                    let offer = self.engine.offer(id).unwrap_or(None);
                    let _ = reply.send(Ok((offer, legs.iter().map(|&id| self.engine.leg_stats(id, now)).collect())));
                }
                Command::Settle { streams, reply } => {
                    let _ = reply.send(streams.into_iter().map(|s| self.settle(s, now)).collect());
                }
                Command::CreateBridge { id, a, b, reply } => {
                    let _ = reply.send(self.engine.create_bridge(id, a, b).map_err(CoreError::from));
                }
                Command::LinkRemote { id, leg, peer_core, peer_leg, peer_codec, primary, reply } => {
                    let r = self.engine.link_remote(id, leg, peer_core, peer_leg, peer_codec, primary);
                    let _ = reply.send(r.map_err(CoreError::from));
                }
                Command::LegCodec { id, reply } => {
                    let _ = reply.send(self.engine.leg_codec(id).map_err(CoreError::from));
                }
                Command::Leg { id, reply } => {
                    let _ = reply.send(self.engine.leg_stats(id, now).ok_or(CoreError::Command(CommandError::NoSuchLeg(id))));
                }
                Command::SetMedia { id, media, reply } => {
                    let _ = reply.send(self.set_leg_media(id, media, now));
                }
                Command::PutOffer { id, offer, reply } => {
                    let _ = reply.send(self.engine.set_offer(id, offer).map_err(CoreError::from));
                }
                Command::CreateConference { id, rate, reply } => {
                    let _ = reply.send(self.engine.create_conference(id, rate, now).map_err(CoreError::from));
                }
                Command::DeleteConference { id, reply } => {
                    let _ = reply.send(self.engine.delete_conference(id).map_err(CoreError::from));
                }
                Command::Member { conference, leg, muted, deaf, add, reply } => {
                    let r = if add {
                        self.engine.add_member(conference, leg, muted, deaf)
                    } else {
                        self.engine.update_member(conference, leg, muted, deaf)
                    };
                    let _ = reply.send(r.map_err(CoreError::from));
                }
                Command::JoinRemote { leg, core, conference, rate, reply } => {
                    let _ = reply.send(self.engine.join_remote(leg, core, conference, rate, now).map_err(CoreError::from));
                }
                Command::LeaveRemote { leg, reply } => {
                    let _ = reply.send(Ok(self.engine.leave_remote(leg)));
                }
                Command::AddRemoteMember { conference, leg, core, codec, muted, deaf, reply } => {
                    let r = self.engine.add_remote_member(conference, leg, core, codec, muted, deaf);
                    let _ = reply.send(r.map_err(CoreError::from));
                }
                Command::RemoveMember { conference, leg, reply } => {
                    let _ = reply.send(self.engine.remove_member(conference, leg).map_err(CoreError::from));
                }
                Command::PlayRate { id, reply } => {
                    let _ = reply.send(self.engine.play_rate(id).map_err(CoreError::from));
                }
                Command::Play { id, play, pcm, looped, reply } => {
                    let _ = reply.send(self.engine.play(id, play, pcm, looped, now).map_err(CoreError::from));
                }
                Command::StopPlay { id, reply } => {
                    let _ = reply.send(self.engine.stop_play(id).map_err(CoreError::from));
                }
                Command::InjectDtmf { id, digits, on, pause, reply } => {
                    let _ = reply.send(self.engine.inject_dtmf(id, &digits, on, pause, now).map_err(CoreError::from));
                }
                Command::GetOffer { id, reply } => {
                    let _ = reply.send(self.engine.offer(id).map_err(CoreError::from));
                }
                Command::DeleteBridge { id, reply } => {
                    let _ = reply.send(self.engine.delete_bridge(id).map_err(CoreError::from));
                }
                Command::Stats { legs, reply } => {
                    let legs = match legs {
                        None => self.engine.all_leg_stats(now),
                        Some(ids) => ids.iter().filter_map(|id| self.engine.leg_stats(*id, now)).collect(),
                    };
                    let counters = self.engine.counters();
                    let _ = reply.send(CoreReport {
                        core: self.core,
                        legs,
                        leg_count: self.engine.leg_count(),
                        bridge_count: self.engine.bridge_count(),
                        counters,
                        free_ports: self.pool.free(),
                        driver: self.driver,
                        transcoders: self.engine.transcoder_count(),
                        conferences: self.engine.conference_count().0,
                        conference_members: self.engine.conference_count().1,
                    });
                }
                Command::Shutdown => return false,
            }
        }
    }

    /// Passes engine events on, freeing the ports of legs that timed out, and sends the engine's
    /// messages for other cores.
    /// Sends a message another core must get, keeping it to send again if its queue is full.
    fn send_control(&mut self, core: usize, packet: CrossPacket) {
        if let Err(packet) = self.cross.try_send(core, packet, &mut self.driver) {
            self.control_retry.push((core, packet));
        }
    }

    pub fn drain_engine_events(&mut self) {
        for (core, packet) in std::mem::take(&mut self.control_retry) {
            self.send_control(core, packet);
        }
        if let Some(recorder) = &self.recorder {
            let now = Instant::now();
            while let Some(tap) = self.engine.poll_tap() {
                if !recorder.tap(tap, now) {
                    self.engine.count_tap_dropped();
                }
            }
        }
        while let Some(ev) = self.engine.poll_event() {
            if let Event::TimedOut { leg, stats } = &ev {
                tracing::info!(core = self.core, leg, port = stats.local_port, "leg timed out");
                self.release_ports(stats);
            }
            // No subscriber is not an error: events are for whoever listens.
            let _ = self.events.send((self.core, ev));
        }
        while let Some(m) = self.engine.poll_cross() {
            match m {
                CrossMessage::Unlink { core, leg, bridge } => {
                    if !self.cross.send(core, CrossPacket::Unlink { leg, bridge }, &mut self.driver) {
                        // The far half stays until its own leg goes; its packets to us are dropped as no_route.
                        tracing::warn!(core = self.core, peer_core = core, bridge, "could not tell the other core to drop its bridge half");
                    }
                }
                CrossMessage::MemberOut { core, conference, leg, packet } => {
                    // A full queue is a counted drop (handoff_full), like any hand-off.
                    let handoff =
                        Handoff { to_leg: leg, from_leg: 0, from_core: self.core, bridge: conference, rtcp: false, conference: true };
                    self.cross.send(core, CrossPacket::Peer { handoff, payload: packet }, &mut self.driver);
                }
                CrossMessage::MemberFrame { core, conference, leg, pcm } => {
                    // A full queue is a counted drop (handoff_full): the mix has a silent period.
                    let from = self.core;
                    self.cross.send(core, CrossPacket::MemberFrame { conference, leg, from, pcm }, &mut self.driver);
                }
                CrossMessage::MemberGone { core, conference, leg } => {
                    self.send_control(core, CrossPacket::MemberGone { conference, leg });
                }
                CrossMessage::Unjoin { core, conference, leg } => {
                    let from = self.core;
                    self.send_control(core, CrossPacket::Unjoin { conference, leg, from });
                }
            }
        }
    }

    /// Passes a packet of this core's bridged leg to the core that owns the other leg; a full
    /// queue is counted on the leg it arrived on.
    /// `received` is the packet as it arrived (the engine hands off its decryption if it was
    /// SRTP).
    pub fn hand_off(&mut self, core: usize, handoff: Handoff, received: &[u8]) {
        let packet = CrossPacket::Peer { handoff, payload: self.engine.handoff_payload(received).to_vec() };
        if !self.cross.send(core, packet, &mut self.driver) {
            self.engine.handle_handoff_dropped(&handoff);
        }
    }

    /// Runs what other cores sent, up to `limit` packets. Bridge hand-offs end up in the engine's
    /// transmit queue and unlinks in its bridges; packets for this core's ports (AF_XDP's RSS
    /// misses) are handed to `port_packet`.
    pub fn drain_cross(&mut self, limit: usize, now: Instant, mut port_packet: impl FnMut(&mut Self, u16, SocketAddr, &[u8])) {
        for _ in 0..limit {
            let Some(packet) = self.cross.recv() else { return };
            match packet {
                CrossPacket::Peer { handoff, payload } => {
                    self.driver.handoff_in += 1;
                    let _ = self.engine.handle_handoff(&handoff, &payload, now);
                }
                CrossPacket::Unlink { leg, bridge } => self.engine.handle_unlink(leg, bridge),
                CrossPacket::MemberFrame { conference, leg, from, pcm } => {
                    self.driver.handoff_in += 1;
                    self.engine.handle_member_frame(conference, leg, from, &pcm);
                }
                CrossPacket::MemberGone { conference, leg } => {
                    let _ = self.engine.remove_member(conference, leg);
                }
                CrossPacket::Unjoin { conference, leg, from } => {
                    self.engine.unjoin(leg, from, conference);
                }
                CrossPacket::Port { dst_port, src, payload } => {
                    self.driver.handoff_in += 1;
                    port_packet(self, dst_port, src, &payload);
                }
            }
        }
    }

    fn create_leg(&mut self, id: LegId, spec: LegSpec, now: Instant) -> Result<u16, CoreError> {
        let mut last_err = None;
        for _ in 0..BIND_ATTEMPTS.min(self.pool.free()) {
            let Some(port) = self.pool.take() else { break };
            match self.open_ports(port, spec.rtcp_mux) {
                Ok(()) => {}
                Err(e) => {
                    self.close_ports(port, spec.rtcp_mux);
                    self.pool.release(port);
                    match e {
                        CoreError::Bind(_, ref io) if io.kind() == io::ErrorKind::AddrInUse => {
                            last_err = Some(e);
                            continue;
                        }
                        other => return Err(other),
                    }
                }
            }
            if let Err(e) = self.engine.create_leg(id, port, spec, now) {
                self.close_ports(port, spec.rtcp_mux);
                self.pool.release(port);
                return Err(e.into());
            }
            return Ok(port);
        }
        Err(last_err.unwrap_or(CoreError::PortsExhausted(self.core)))
    }

    fn open_ports(&mut self, port: u16, rtcp_mux: bool) -> Result<(), CoreError> {
        let rtcp_port = if rtcp_mux { None } else { Some(port + 1) };
        for p in std::iter::once(port).chain(rtcp_port) {
            self.open_port(p)?;
        }
        Ok(())
    }

    fn open_port(&mut self, p: u16) -> Result<(), CoreError> {
        let mut s = self.bind(p)?;
        if let Some(registry) = &self.registry {
            registry.register(&mut s, Token(usize::from(p)), Interest::READABLE).map_err(|e| CoreError::Register(p, e))?;
        }
        self.sockets[usize::from(p)] = Some(s);
        Ok(())
    }

    fn close_port(&mut self, p: u16) {
        if let Some(mut s) = self.sockets[usize::from(p)].take() {
            if let Some(registry) = &self.registry {
                let _ = registry.deregister(&mut s);
            }
        }
    }

    /// See [`Command::CreateLegs`].
    fn create_legs(&mut self, legs: Vec<(LegId, LegSpec)>, now: Instant) -> Result<Vec<u16>, CoreError> {
        let mut ports = Vec::with_capacity(legs.len());
        for (i, &(id, spec)) in legs.iter().enumerate() {
            match self.create_leg(id, spec, now) {
                Ok(port) => ports.push(port),
                Err(e) => {
                    for &(made, _) in &legs[..i] {
                        let _ = self.delete_leg(made, now);
                    }
                    return Err(e);
                }
            }
        }
        Ok(ports)
    }

    fn delete_leg(&mut self, id: LegId, now: Instant) -> Result<LegStats, CoreError> {
        let stats = self.engine.delete_leg(id, now)?;
        self.release_ports(&stats);
        Ok(stats)
    }

    /// See [`Command::Settle`].
    fn settle(&mut self, s: SettleStream, now: Instant) -> Result<BridgeId, CoreError> {
        if let Some(id) = s.bridge.filter(|_| s.rebridge) {
            self.engine.delete_bridge(id)?;
        }
        self.set_leg_media(s.a, s.media_a, now)?;
        self.set_leg_media(s.b, s.media_b, now)?;
        match s.bridge.filter(|_| !s.rebridge) {
            Some(id) => Ok(id),
            None => {
                self.engine.create_bridge(s.new_bridge, s.a, s.b)?;
                Ok(s.new_bridge)
            }
        }
    }

    /// [`Engine::set_leg_media`], with the leg's RTCP port opened when rtcp-mux is turned off
    /// and closed when it is turned on.
    fn set_leg_media(&mut self, id: LegId, media: LegMedia, now: Instant) -> Result<(), CoreError> {
        let leg = self.engine.leg_stats(id, now).ok_or(CoreError::Command(CommandError::NoSuchLeg(id)))?;
        let rtcp_port = leg.local_port + 1;
        let (opening, closing) = (leg.rtcp_mux && !media.rtcp_mux, !leg.rtcp_mux && media.rtcp_mux);
        if opening {
            self.open_port(rtcp_port)?;
        }
        if let Err(e) = self.engine.set_leg_media(id, media) {
            if opening {
                self.close_port(rtcp_port);
            }
            return Err(e.into());
        }
        if closing {
            self.close_port(rtcp_port);
        }
        Ok(())
    }

    fn bind(&self, port: u16) -> Result<UdpSocket, CoreError> {
        let addr = SocketAddr::new(self.media_ip, port);
        let err = |e| CoreError::Bind(addr, e);
        let sock = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP)).map_err(err)?;
        sock.set_nonblocking(true).map_err(err)?;
        // Larger buffers absorb bursts; the kernel caps them at net.core.{r,w}mem_max.
        let _ = sock.set_recv_buffer_size(self.socket_buffer);
        let _ = sock.set_send_buffer_size(self.socket_buffer);
        sock.bind(&addr.into()).map_err(err)?;
        Ok(UdpSocket::from_std(sock.into()))
    }

    fn close_ports(&mut self, port: u16, rtcp_mux: bool) {
        let ports = if rtcp_mux { port..=port } else { port..=port + 1 };
        for p in ports {
            self.close_port(p);
        }
    }

    fn release_ports(&mut self, stats: &LegStats) {
        self.close_ports(stats.local_port, stats.rtcp_mux);
        self.pool.release(stats.local_port);
    }
}

/// Now, on the monotonic clock and as NTP time (RFC 3550 §4), for the engine's sender reports.
fn wall_clock() -> (Instant, u64) {
    // Seconds from 1900 (NTP's era) to 1970 (Unix's).
    const NTP_UNIX_OFFSET: u64 = 2_208_988_800;
    let now = Instant::now();
    let since_unix = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    let ntp = ((since_unix.as_secs() + NTP_UNIX_OFFSET) << 32) | ((u64::from(since_unix.subsec_nanos()) << 32) / 1_000_000_000);
    (now, ntp)
}

/// A seed for a core's engine (the SSRCs and initial sequence numbers of the streams it makes):
/// std's per-process random hash keys (drawn from the OS), mixed with the core number.
fn random_seed(core: usize) -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_usize(core);
    h.finish()
}

/// Why the media cores could not be started.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The UDP backend failed (epoll, eventfd, thread creation).
    #[error("UDP backend: {0}")]
    Udp(#[source] io::Error),
    /// The AF_XDP backend was asked for and could not be started.
    #[error("AF_XDP backend: {0}")]
    Xdp(#[source] xdp::XdpError),
}

/// The running media cores, and what must live as long as they do.
#[derive(Debug)]
pub struct Started {
    pub cores: Vec<CoreHandle>,
    /// The backend actually running.
    pub backend: &'static str,
    /// The attached XDP program (AF_XDP backend); dropping it detaches the program.
    pub steering: Option<Arc<ebpf::Steering>>,
}

/// Starts the media cores with the backend `config` asks for; `auto` falls back to UDP, logging why.
pub fn start(config: &Config, events: broadcast::Sender<CoreEvent>) -> Result<Started, StartError> {
    match config.backend {
        Backend::Udp => Ok(Started { cores: spawn_cores(config, events).map_err(StartError::Udp)?, backend: "udp", steering: None }),
        Backend::Xdp => xdp::spawn_cores(config, events).map_err(StartError::Xdp),
        Backend::Auto => match xdp::spawn_cores(config, events.clone()) {
            Ok(s) => Ok(s),
            Err(e) => {
                tracing::warn!(reason = %e, "backend auto: AF_XDP unavailable, falling back to the UDP backend");
                Ok(Started { cores: spawn_cores(config, events).map_err(StartError::Udp)?, backend: "udp", steering: None })
            }
        },
    }
}

/// CPU that core `core` is pinned to, if pinning is on.
fn pin_cpu(config: &Config, core: usize) -> Option<core_affinity::CoreId> {
    let cpus = core_affinity::get_core_ids().unwrap_or_default();
    if config.pin_cores && !cpus.is_empty() {
        Some(cpus[(config.first_cpu + core) % cpus.len()])
    } else {
        None
    }
}

fn pin_current(core: usize, cpu: Option<core_affinity::CoreId>) {
    if let Some(cpu) = cpu {
        if !core_affinity::set_for_current(cpu) {
            tracing::warn!(core, cpu = cpu.id, "could not pin media core");
        }
    }
}

/// Starts the UDP-backend media cores of `config`, each pinned when asked to, and returns their handles.
pub fn spawn_cores(config: &crate::config::Config, events: broadcast::Sender<CoreEvent>) -> std::io::Result<Vec<CoreHandle>> {
    // Every driver first, so each can be given every core's cross-core queue and waker.
    let mut drivers = Vec::with_capacity(config.cores);
    let mut peers = Vec::with_capacity(config.cores);
    for core in 0..config.cores {
        let (tx, rx) = crossbeam_channel::bounded(COMMAND_QUEUE);
        let (cross_tx, inbox) = crossbeam_channel::bounded(CROSS_QUEUE);
        let driver = udp::UdpDriver::new(core, config, rx, events.clone(), CrossCore::new(inbox, config.cores))?;
        peers.push(CorePeer { tx: cross_tx, waker: driver.waker() });
        drivers.push((driver, tx));
    }
    let mut handles = Vec::with_capacity(config.cores);
    for (core, (mut driver, tx)) in drivers.into_iter().enumerate() {
        driver.set_peers(peers.clone());
        let waker = driver.waker();
        let cpu = pin_cpu(config, core);
        let thread = std::thread::Builder::new().name(format!("media-core-{core}")).spawn(move || {
            pin_current(core, cpu);
            driver.run();
        })?;
        handles.push(CoreHandle { core, tx, waker, queue_full: AtomicU64::new(0), thread: std::sync::Mutex::new(Some(thread)) });
    }
    Ok(handles)
}
