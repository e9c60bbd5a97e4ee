//! In-memory, virtual-time network around the engines of a media plane's cores, for tests.
//!
//! Endpoints are plain socket addresses. Packets they send cross a simulated link (fixed latency,
//! jitter that reorders, random loss from a seeded generator) to the engine that has a leg on the
//! destination port; what an engine forwards or transmits lands in the destination endpoint's
//! inbox, after the same link. Hand-offs between cores and their unlink messages are delivered at
//! once, as the drivers' bounded queues do between two loop turns. Time only moves when a
//! test calls [`Harness::advance`], so timeouts of minutes run in microseconds and every run with
//! the same seed is identical.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::engine::{CrossMessage, Engine, EngineConfig, Event, Verdict, MAX_TRANSMIT};

/// Link behaviour between endpoints and the engine.
#[derive(Debug, Clone, Copy)]
pub struct Link {
    pub latency: Duration,
    /// Extra delay drawn uniformly from `0..jitter` per packet; larger than the packet spacing
    /// reorders packets.
    pub jitter: Duration,
    /// Probability of losing each packet, 0.0..=1.0.
    pub loss: f64,
}

impl Default for Link {
    fn default() -> Self {
        Self { latency: Duration::from_millis(1), jitter: Duration::ZERO, loss: 0.0 }
    }
}

/// A packet as an endpoint received it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Received {
    /// The media plane's address it came from.
    pub from_port: u16,
    pub at: Instant,
    pub bytes: Vec<u8>,
}

#[derive(Debug)]
enum InFlight {
    ToEngine { src: SocketAddr, port: u16, bytes: Vec<u8> },
    ToEndpoint { dst: SocketAddr, from_port: u16, bytes: Vec<u8> },
}

/// The harness. See the module documentation.
#[derive(Debug)]
pub struct Harness {
    /// Core 0's engine.
    pub engine: Engine,
    /// The engines of cores 1.. (empty for a one-core harness).
    pub others: Vec<Engine>,
    pub link: Link,
    start: Instant,
    now: Instant,
    rng: u64,
    seq: u64,
    in_flight: BTreeMap<(Instant, u64), InFlight>,
    inboxes: HashMap<SocketAddr, Vec<Received>>,
    events: Vec<Event>,
}

impl Harness {
    pub fn new(config: EngineConfig, link: Link, seed: u64) -> Self {
        Self::with_cores(config, link, seed, 1)
    }

    /// A harness of `cores` engines (core numbers 0..cores); legs are created on the engine of the
    /// test's choice ([`Harness::core`]).
    pub fn with_cores(config: EngineConfig, link: Link, seed: u64, cores: usize) -> Self {
        let start = Instant::now();
        Self {
            engine: Engine::new(EngineConfig { core: 0, ..config }),
            others: (1..cores.max(1)).map(|core| Engine::new(EngineConfig { core, ..config })).collect(),
            link,
            start,
            now: start,
            rng: seed.max(1),
            seq: 0,
            in_flight: BTreeMap::new(),
            inboxes: HashMap::new(),
            events: Vec::new(),
        }
    }

    /// The engine of core `core` (0 is [`Harness::engine`]).
    pub fn core(&mut self, core: usize) -> &mut Engine {
        match core.checked_sub(1) {
            None => &mut self.engine,
            Some(i) => &mut self.others[i],
        }
    }

    fn engines(&mut self) -> impl Iterator<Item = &mut Engine> {
        std::iter::once(&mut self.engine).chain(self.others.iter_mut())
    }

    /// Virtual now.
    pub fn now(&self) -> Instant {
        self.now
    }
    /// Virtual time elapsed since the harness started.
    pub fn elapsed(&self) -> Duration {
        self.now - self.start
    }

    /// `src` sends `bytes` to the media plane's `port`.
    pub fn send(&mut self, src: SocketAddr, port: u16, bytes: &[u8]) {
        self.schedule(InFlight::ToEngine { src, port, bytes: bytes.to_vec() });
    }

    /// Moves virtual time forward by `d`, delivering packets and running engine timers on the way.
    pub fn advance(&mut self, d: Duration) {
        // What commands run since the last call queued (transmits, unlinks) goes first.
        self.settle();
        let end = self.now + d;
        loop {
            let next_packet = self.in_flight.keys().next().map(|k| k.0);
            let next_timer = self.engines().filter_map(|e| e.poll_timeout()).min();
            let next = [next_packet, next_timer].into_iter().flatten().filter(|t| *t <= end).min();
            let Some(t) = next else { break };
            self.now = self.now.max(t);
            let now = self.now;
            for e in self.engines() {
                if e.poll_timeout().is_some_and(|nt| nt <= now) {
                    e.handle_timeout(now);
                }
            }
            while let Some(entry) = self.in_flight.first_entry() {
                if entry.key().0 > self.now {
                    break;
                }
                let pkt = entry.remove();
                self.deliver(pkt);
            }
            self.settle();
        }
        self.now = end;
    }

    /// Packets `addr` has received so far (drained).
    pub fn take_inbox(&mut self, addr: SocketAddr) -> Vec<Received> {
        self.inboxes.remove(&addr).unwrap_or_default()
    }

    /// Engine events so far (drained).
    pub fn take_events(&mut self) -> Vec<Event> {
        std::mem::take(&mut self.events)
    }

    fn deliver(&mut self, pkt: InFlight) {
        match pkt {
            InFlight::ToEngine { src, port, bytes } => {
                let now = self.now;
                let Some(engine) = self.engines().find(|e| e.owns_port(port)) else {
                    // No leg anywhere: core 0 counts it, as a driver's port owner would.
                    let _ = self.engine.handle_packet(port, src, &bytes, now);
                    return;
                };
                match engine.handle_packet(port, src, &bytes, now) {
                    Verdict::Forward { from_port, to } => self.schedule(InFlight::ToEndpoint { dst: to, from_port, bytes }),
                    Verdict::Handoff { core, handoff } => {
                        let payload = engine.handoff_payload(&bytes).to_vec();
                        if core < 1 + self.others.len() {
                            let _ = self.core(core).handle_handoff(&handoff, &payload, now);
                        }
                    }
                    Verdict::Consumed | Verdict::Drop(_) => {}
                }
                self.settle();
            }
            InFlight::ToEndpoint { dst, from_port, bytes } => {
                self.inboxes.entry(dst).or_default().push(Received { from_port, at: self.now, bytes });
            }
        }
    }

    /// Sends what the engines queued, passes cross-core messages on and collects events.
    fn settle(&mut self) {
        let mut buf = vec![0u8; MAX_TRANSMIT];
        let mut out = Vec::new();
        let mut cross = Vec::new();
        let mut events = Vec::new();
        for (source, e) in self.engines().enumerate() {
            while let Some(t) = e.poll_transmit(&mut buf) {
                out.push(InFlight::ToEndpoint { dst: t.to, from_port: t.from_port, bytes: buf[..t.len].to_vec() });
            }
            while let Some(m) = e.poll_cross() {
                cross.push((source, m));
            }
            while let Some(ev) = e.poll_event() {
                events.push(ev);
            }
        }
        for pkt in out {
            self.schedule(pkt);
        }
        let now = self.now;
        for (source, m) in cross {
            let core = match &m {
                CrossMessage::Unlink { core, .. }
                | CrossMessage::MemberOut { core, .. }
                | CrossMessage::MemberFrame { core, .. }
                | CrossMessage::MemberGone { core, .. }
                | CrossMessage::Unjoin { core, .. } => *core,
            };
            if core > self.others.len() {
                continue;
            }
            let e = self.core(core);
            match m {
                CrossMessage::Unlink { leg, bridge, .. } => e.handle_unlink(leg, bridge),
                CrossMessage::MemberOut { leg, conference, packet, .. } => {
                    let handoff = crate::engine::Handoff {
                        to_leg: leg,
                        from_leg: 0,
                        from_core: source,
                        bridge: conference,
                        rtcp: false,
                        conference: true,
                    };
                    let _ = e.handle_handoff(&handoff, &packet, now);
                }
                CrossMessage::MemberFrame { conference, leg, pcm, .. } => {
                    e.handle_member_frame(conference, leg, source, &pcm);
                }
                CrossMessage::MemberGone { conference, leg, .. } => {
                    let _ = e.remove_member(conference, leg);
                }
                CrossMessage::Unjoin { leg, conference, .. } => {
                    e.unjoin(leg, source, conference);
                }
            }
        }
        self.events.extend(events);
    }

    fn schedule(&mut self, pkt: InFlight) {
        if self.link.loss > 0.0 && self.next_f64() < self.link.loss {
            return;
        }
        let jitter = if self.link.jitter.is_zero() { Duration::ZERO } else { self.link.jitter.mul_f64(self.next_f64()) };
        self.seq += 1;
        self.in_flight.insert((self.now + self.link.latency + jitter, self.seq), pkt);
    }

    /// xorshift64*: deterministic, good enough for loss and jitter draws.
    fn next_f64(&mut self) -> f64 {
        (crate::engine::xorshift64star(&mut self.rng) >> 11) as f64 / (1u64 << 53) as f64
    }
}
