//! The sans-IO relay engine of one core.
//!
//! An [`Engine`] owns the legs and bridges of its core. It never reads a clock or touches a socket:
//! drivers (UDP here, AF_XDP later, the virtual-time [`crate::harness`] in tests) hand it packets
//! with the time they arrived and act on what it returns.
//!
//! ```text
//!   driver ── handle_packet(port, src, bytes, now) ──► Verdict::Forward { from_port, to }  (send the same bytes)
//!          │                                           Verdict::Drop(reason)              (counted here)
//!          ├─ create_leg / update_leg / delete_leg / create_bridge / delete_bridge / stats  (commands)
//!          ├─ handle_timeout(now) at poll_timeout()   (media timeouts, once a second)
//!          └─ poll_event()                             (latched, timed out: the driver frees ports)
//! ```
//!
//! Lookup on the fast path is two array indexations: local port → leg slot, leg → peer slot. Nothing
//! on it allocates.

mod leg;

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

pub use leg::{Direction, DropReason, Drops, LegCounters, LegSpec, LegStats, Remote};
use leg::{Leg, PortKind};

use crate::wire::{self, RtcpPacket, RtpPacket};

/// Identifies a leg across the whole media plane (the owning core is in the top byte).
pub type LegId = u64;
/// Identifies a bridge across the whole media plane.
pub type BridgeId = u64;

/// How often legs are checked for media timeout: timeouts fire within this much of their deadline.
pub const SWEEP_INTERVAL: Duration = Duration::from_secs(1);

/// What the driver does with a packet it handed to [`Engine::handle_packet`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use]
pub enum Verdict {
    /// Send the packet, unchanged, from local port `from_port` to `to`.
    Forward { from_port: u16, to: SocketAddr },
    /// Drop it; the engine has counted it.
    Drop(DropReason),
}

/// Something the control plane (and the driver) must learn about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// The leg learnt its remote address from a packet.
    Latched { leg: LegId, remote: SocketAddr, rtcp: bool },
    /// The leg was idle for its media timeout and has been removed; the driver frees its ports.
    TimedOut { leg: LegId, stats: LegStats },
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
}

/// Counters of one core, beyond those of its legs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CoreCounters {
    pub packets_in: u64,
    pub packets_forwarded: u64,
    /// Drops of packets that reached a leg, plus packets to ports without a leg (as `no_route`).
    pub drops: Drops,
}

/// Per-core engine configuration.
#[derive(Debug, Clone, Copy)]
pub struct EngineConfig {
    /// Media timeout for legs that do not set their own.
    pub media_timeout: Duration,
}

#[derive(Debug, Clone, Copy)]
struct Bridge {
    a: usize,
    b: usize,
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
    counters: CoreCounters,
    next_sweep: Option<Instant>,
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
            counters: CoreCounters::default(),
            next_sweep: None,
        }
    }

    // ---- getters ----

    pub fn leg_count(&self) -> usize {
        self.by_id.len()
    }
    pub fn bridge_count(&self) -> usize {
        self.bridges.len()
    }
    pub fn counters(&self) -> CoreCounters {
        self.counters
    }
    pub fn has_leg(&self, id: LegId) -> bool {
        self.by_id.contains_key(&id)
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
        let verdict = self.route(local_port, src, packet, now);
        match verdict {
            Verdict::Forward { .. } => self.counters.packets_forwarded += 1,
            Verdict::Drop(reason) => self.counters.drops.add(reason),
        }
        verdict
    }

    /// The driver could not deliver `packet`, which it was told to forward from `from_port`: the
    /// kernel refused the send (`SendFailed`), or there is no next hop for it (`NoRoute`). The
    /// forward is taken back off the counters and counted as a drop for `reason` on the sending leg.
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
        match self.next_sweep {
            Some(t) if now >= t => {}
            _ => return,
        }
        let expired: Vec<LegId> = self
            .slots
            .iter()
            .flatten()
            .filter(|l| now.saturating_duration_since(l.last_rx) >= l.media_timeout)
            .map(|l| l.id)
            .collect();
        for id in expired {
            if let Ok(stats) = self.delete_leg(id, now) {
                self.events.push_back(Event::TimedOut { leg: id, stats });
            }
        }
        self.next_sweep = if self.by_id.is_empty() { None } else { Some(now + SWEEP_INTERVAL) };
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

    /// Removes a leg (and the bridge it is in) and returns its final stats; the caller frees its ports.
    pub fn delete_leg(&mut self, id: LegId, now: Instant) -> Result<LegStats, CommandError> {
        let slot = self.by_id.remove(&id).ok_or(CommandError::NoSuchLeg(id))?;
        if let Some(bridge) = self.slot(slot).and_then(|l| l.bridge) {
            let _ = self.delete_bridge(bridge);
        }
        let leg = self.slots[slot].take().ok_or(CommandError::NoSuchLeg(id))?;
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
        let sa = *self.by_id.get(&a).ok_or(CommandError::NoSuchLeg(a))?;
        let sb = *self.by_id.get(&b).ok_or(CommandError::NoSuchLeg(b))?;
        for (slot, leg) in [(sa, a), (sb, b)] {
            if let Some(existing) = self.slot(slot).and_then(|l| l.bridge) {
                return Err(CommandError::AlreadyBridged(leg, existing));
            }
        }
        if let Some(l) = self.slot_mut(sa) {
            l.bridge = Some(id);
            l.peer = Some(sb);
        }
        if let Some(l) = self.slot_mut(sb) {
            l.bridge = Some(id);
            l.peer = Some(sa);
        }
        self.bridges.insert(id, Bridge { a: sa, b: sb });
        Ok(())
    }

    pub fn delete_bridge(&mut self, id: BridgeId) -> Result<(), CommandError> {
        let br = self.bridges.remove(&id).ok_or(CommandError::NoSuchBridge(id))?;
        for s in [br.a, br.b] {
            if let Some(l) = self.slot_mut(s) {
                l.bridge = None;
                l.peer = None;
            }
        }
        Ok(())
    }

    pub fn has_bridge(&self, id: BridgeId) -> bool {
        self.bridges.contains_key(&id)
    }

    // ---- poll_* ----

    /// When [`Engine::handle_timeout`] must next be called; `None` when there is nothing to time.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.next_sweep
    }

    /// Next event for the control plane and the driver.
    #[must_use]
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
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
        match remote.accept(src) {
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
        if is_rtcp {
            leg.counters.rtcp_packets_in += 1;
        } else {
            leg.counters.rtp_packets_in += 1;
            leg.counters.rtp_bytes_in += packet.len() as u64;
            if !leg.direction.endpoint_sends() {
                leg.counters.drops.add(DropReason::Muted);
                return Verdict::Drop(DropReason::Muted);
            }
        }
        let peer_slot = leg.peer;
        let Some(peer) = peer_slot.and_then(|p| self.slots.get_mut(p)).and_then(Option::as_mut) else {
            return self.drop_on(slot, DropReason::NoRoute);
        };
        let out = if is_rtcp { peer.rtcp_destination() } else { peer.rtp_destination() };
        let Some((from_port, to)) = out else {
            return self.drop_on(slot, DropReason::NoRoute);
        };
        if is_rtcp {
            peer.counters.rtcp_packets_out += 1;
        } else {
            if !peer.direction.endpoint_receives() {
                return self.drop_on(slot, DropReason::Muted);
            }
            peer.counters.rtp_packets_out += 1;
            peer.counters.rtp_bytes_out += packet.len() as u64;
        }
        Verdict::Forward { from_port, to }
    }

    fn drop_on(&mut self, slot: usize, reason: DropReason) -> Verdict {
        if let Some(l) = self.slot_mut(slot) {
            l.counters.drops.add(reason);
        }
        Verdict::Drop(reason)
    }
}

#[cfg(test)]
mod tests;
