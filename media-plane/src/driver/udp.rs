//! UDP socket backend: one socket per media port, `epoll` through mio, `recvmmsg`/`sendmmsg` batches.
//!
//! Each readable socket is read in batches of up to `batch` datagrams with one `recvmmsg`; the engine
//! routes each datagram and the forwarded ones leave, from the same buffers (no copy), with one
//! `sendmmsg` per outgoing socket. A read that returns fewer datagrams than asked means the socket is
//! drained: Linux queues a new edge-triggered event for every datagram that arrives after it, so the
//! second `recvmmsg` that would only return `EAGAIN` is skipped (one system call per wake saved).
//! When idle the thread sleeps in `epoll_wait` until a packet, a command, another core's hand-off
//! or the next engine timer.
//!
//! A packet for a bridged leg on another core is copied over that core's cross-core queue
//! ([`super::CrossCore`]); packets other cores hand here go through the engine, which queues
//! them, and leave with one `sendto` each from the engine's `poll_transmit` (the exception path:
//! legs placed in one group share a core and take the zero-copy path).

use std::io;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::Instant;

use crossbeam_channel::Receiver;
use mio::{Events, Poll, Token, Waker};
use tokio::sync::broadcast;

use super::{Command, CoreEvent, CorePeer, CoreState, CrossCore};
use crate::config::Config;
use crate::engine::{DropReason, Verdict, MAX_TRANSMIT};
use crate::sys::PacketBatch;

/// Token of the command waker; socket tokens are their port numbers (< 65536).
const WAKER: Token = Token(1 << 16);

/// The UDP driver of one core. See the module documentation.
#[derive(Debug)]
pub struct UdpDriver {
    state: CoreState,
    poll: Poll,
    waker: Arc<Waker>,
    batch: PacketBatch,
    /// (from_port, slot, destination) of the packets of the current batch to forward.
    forwards: Vec<(u16, usize, SocketAddr)>,
    tx_items: Vec<(usize, SocketAddr)>,
    /// Slots the kernel refused to send (rare; reused, so no allocation on the fast path).
    failed: Vec<usize>,
    /// After a packet, keep polling without sleeping this long before blocking in epoll_wait:
    /// saves the sleep/wake-up cost per packet at high rates, costs CPU while traffic is sparse.
    /// Zero (the default) sleeps as soon as nothing is ready.
    idle_spin: std::time::Duration,
    /// Where the engine's transmissions are copied to be sent.
    tx_buf: Vec<u8>,
}

/// Cross-core packets handled per loop turn (bounded so the own sockets are not starved).
const CROSS_BATCH: usize = 256;

impl UdpDriver {
    pub fn new(
        core: usize,
        config: &Config,
        commands: Receiver<Command>,
        events: broadcast::Sender<CoreEvent>,
        cross: CrossCore,
    ) -> io::Result<Self> {
        let poll = Poll::new()?;
        let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
        let registry = poll.registry().try_clone()?;
        Ok(Self {
            state: CoreState::new(core, config, commands, events, Some(registry), cross),
            poll,
            waker,
            batch: PacketBatch::new(config.batch),
            forwards: Vec::with_capacity(config.batch),
            tx_items: Vec::with_capacity(config.batch),
            failed: Vec::with_capacity(config.batch),
            idle_spin: config.idle_spin,
            tx_buf: vec![0; MAX_TRANSMIT],
        })
    }

    pub fn waker(&self) -> Arc<Waker> {
        Arc::clone(&self.waker)
    }

    /// Every core's cross-core queue and waker (see [`super::spawn_cores`]).
    pub fn set_peers(&mut self, peers: Vec<CorePeer>) {
        self.state.cross.set_peers(peers);
    }

    /// The core's loop; returns on [`Command::Shutdown`] or when the gRPC side is gone.
    pub fn run(mut self) {
        let mut events = Events::with_capacity(1024);
        tracing::debug!(core = self.state.core, free_ports = self.state.free_ports(), "media core running");
        let mut last_packet = Instant::now();
        loop {
            let now = Instant::now();
            let timeout = if !self.state.cross.is_empty() || now.saturating_duration_since(last_packet) < self.idle_spin {
                // Hand-offs waiting, or traffic just flowed: poll without sleeping (see `idle_spin`).
                Some(std::time::Duration::ZERO)
            } else {
                self.state.engine.poll_timeout().map(|t| t.saturating_duration_since(now))
            };
            if let Err(e) = self.poll.poll(&mut events, timeout) {
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                tracing::error!(core = self.state.core, error = %e, "epoll_wait failed; media core stops");
                return;
            }
            for ev in events.iter() {
                if ev.token() == WAKER {
                    if !self.state.drain_commands() {
                        tracing::debug!(core = self.state.core, "media core stopped");
                        return;
                    }
                } else if let Ok(port) = u16::try_from(ev.token().0) {
                    self.on_readable(port);
                    last_packet = Instant::now();
                }
            }
            self.state.cross.wake_peers();
            // The waker also carries other cores' hand-offs; the inbox is drained every turn.
            self.state.drain_cross(CROSS_BATCH, Instant::now(), |_, _, _, _| {});
            // Timers first: what they make (reports, injected digits) leaves in this turn.
            self.state.engine.handle_timeout(Instant::now());
            self.send_transmits();
            self.state.drain_engine_events();
            self.state.cross.wake_peers();
        }
    }

    /// Sends what the engine queued (hand-offs from other cores), one `sendto` each.
    fn send_transmits(&mut self) {
        while let Some(t) = self.state.engine.poll_transmit(&mut self.tx_buf) {
            let bytes = self.tx_buf.get(..t.len).unwrap_or_default();
            let sent = self.state.socket(t.from_port).is_some_and(|s| s.send_to(bytes, t.to).is_ok());
            if !sent {
                self.state.engine.handle_forward_dropped(t.from_port, bytes, DropReason::SendFailed);
            }
        }
    }

    fn on_readable(&mut self, port: u16) {
        let Some(fd) = self.state.socket(port).map(|s| s.as_raw_fd()) else { return };
        loop {
            let n = match self.batch.recv(fd) {
                Ok(n) => n,
                Err(e) => {
                    tracing::debug!(core = self.state.core, port, error = %e, "recvmmsg failed");
                    return;
                }
            };
            if n == 0 {
                return;
            }
            let now = Instant::now();
            self.forwards.clear();
            for i in 0..n {
                let Some(src) = self.batch.peer(i) else { continue };
                // A datagram longer than a slot reaches the engine empty and is counted malformed.
                let bytes = if self.batch.truncated(i) { &[][..] } else { self.batch.packet(i) };
                match self.state.engine.handle_packet(port, src, bytes, now) {
                    Verdict::Forward { from_port, to } => self.forwards.push((from_port, i, to)),
                    Verdict::Handoff { core, handoff } => self.state.hand_off(core, handoff, bytes),
                    // Transcoded: what it makes leaves through send_transmits.
                    Verdict::Consumed | Verdict::Drop(_) => {}
                }
            }
            self.send_forwards();
            if n < self.batch.capacity() {
                return;
            }
        }
    }

    /// Sends the batch's forwarded packets, one `sendmmsg` per run of packets leaving the same port.
    fn send_forwards(&mut self) {
        let mut k = 0;
        while k < self.forwards.len() {
            let from_port = self.forwards[k].0;
            self.tx_items.clear();
            while k < self.forwards.len() && self.forwards[k].0 == from_port {
                self.tx_items.push((self.forwards[k].1, self.forwards[k].2));
                k += 1;
            }
            self.failed.clear();
            let failed = &mut self.failed;
            match self.state.socket(from_port) {
                Some(s) => {
                    self.batch.send(s.as_raw_fd(), &self.tx_items, |slot| failed.push(slot));
                }
                None => failed.extend(self.tx_items.iter().map(|&(slot, _)| slot)),
            }
            for &slot in &self.failed {
                self.state.engine.handle_forward_dropped(from_port, self.batch.packet(slot), DropReason::SendFailed);
            }
        }
    }
}
