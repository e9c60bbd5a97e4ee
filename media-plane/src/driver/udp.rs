//! UDP socket backend: one socket per media port, `epoll` through mio, `recvmmsg`/`sendmmsg` batches.
//!
//! Each readable socket is read in batches of up to `batch` datagrams with one `recvmmsg`; the engine
//! routes each datagram and the forwarded ones leave, from the same buffers (no copy), with one
//! `sendmmsg` per outgoing socket. A read that returns fewer datagrams than asked means the socket is
//! drained: Linux queues a new edge-triggered event for every datagram that arrives after it, so the
//! second `recvmmsg` that would only return `EAGAIN` is skipped (one system call per wake saved).
//! When idle the thread sleeps in `epoll_wait` until a packet, a command or the next engine timer.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::Instant;

use crossbeam_channel::Receiver;
use mio::net::UdpSocket;
use mio::{Events, Interest, Poll, Token, Waker};
use socket2::{Domain, Protocol, Socket, Type};
use tokio::sync::broadcast;

use super::{Command, CoreError, CoreEvent, CoreReport};
use crate::config::Config;
use crate::engine::{Engine, EngineConfig, Event, LegId, LegSpec, LegStats, Verdict};
use crate::ports::PortPool;
use crate::sys::PacketBatch;

/// Token of the command waker; socket tokens are their port numbers (< 65536).
const WAKER: Token = Token(1 << 16);
/// Ports tried when the next free one is taken by another process.
const BIND_ATTEMPTS: usize = 64;

/// The UDP driver of one core. See the module documentation.
#[derive(Debug)]
pub struct UdpDriver {
    core: usize,
    engine: Engine,
    poll: Poll,
    waker: Arc<Waker>,
    /// Indexed by local port.
    sockets: Vec<Option<UdpSocket>>,
    pool: PortPool,
    commands: Receiver<Command>,
    events: broadcast::Sender<CoreEvent>,
    batch: PacketBatch,
    /// (from_port, slot, destination) of the packets of the current batch to forward.
    forwards: Vec<(u16, usize, SocketAddr)>,
    tx_items: Vec<(usize, SocketAddr)>,
    /// Slots the kernel refused to send (rare; reused, so no allocation on the fast path).
    failed: Vec<usize>,
    media_ip: IpAddr,
    socket_buffer: usize,
    /// After a packet, keep polling without sleeping this long before blocking in epoll_wait:
    /// saves the sleep/wake-up cost per packet at high rates, costs CPU while traffic is sparse.
    /// Zero (the default) sleeps as soon as nothing is ready.
    idle_spin: std::time::Duration,
}

impl UdpDriver {
    pub fn new(core: usize, config: &Config, commands: Receiver<Command>, events: broadcast::Sender<CoreEvent>) -> io::Result<Self> {
        let poll = Poll::new()?;
        let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
        let mut sockets = Vec::with_capacity(1 << 16);
        sockets.resize_with(1 << 16, || None);
        Ok(Self {
            core,
            engine: Engine::new(EngineConfig { media_timeout: config.media_timeout }),
            poll,
            waker,
            sockets,
            pool: PortPool::for_core(config.port_min, config.port_max, core, config.cores),
            commands,
            events,
            batch: PacketBatch::new(config.batch),
            forwards: Vec::with_capacity(config.batch),
            tx_items: Vec::with_capacity(config.batch),
            failed: Vec::with_capacity(config.batch),
            media_ip: config.media_ip,
            socket_buffer: config.socket_buffer,
            idle_spin: config.idle_spin,
        })
    }

    pub fn waker(&self) -> Arc<Waker> {
        Arc::clone(&self.waker)
    }

    /// The core's loop; returns on [`Command::Shutdown`] or when the gRPC side is gone.
    pub fn run(mut self) {
        let mut events = Events::with_capacity(1024);
        tracing::debug!(core = self.core, free_ports = self.pool.free(), "media core running");
        let mut last_packet = Instant::now();
        loop {
            let now = Instant::now();
            let timeout = if now.saturating_duration_since(last_packet) < self.idle_spin {
                // Traffic just flowed: poll without sleeping for a little longer (see `idle_spin`).
                Some(std::time::Duration::ZERO)
            } else {
                self.engine.poll_timeout().map(|t| t.saturating_duration_since(now))
            };
            if let Err(e) = self.poll.poll(&mut events, timeout) {
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                tracing::error!(core = self.core, error = %e, "epoll_wait failed; media core stops");
                return;
            }
            for ev in events.iter() {
                if ev.token() == WAKER {
                    if !self.drain_commands() {
                        tracing::debug!(core = self.core, "media core stopped");
                        return;
                    }
                } else if let Ok(port) = u16::try_from(ev.token().0) {
                    self.on_readable(port);
                    last_packet = Instant::now();
                }
            }
            self.engine.handle_timeout(Instant::now());
            self.drain_engine_events();
        }
    }

    fn on_readable(&mut self, port: u16) {
        let Some(fd) = self.sockets[usize::from(port)].as_ref().map(|s| s.as_raw_fd()) else { return };
        loop {
            let n = match self.batch.recv(fd) {
                Ok(n) => n,
                Err(e) => {
                    tracing::debug!(core = self.core, port, error = %e, "recvmmsg failed");
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
                if let Verdict::Forward { from_port, to } = self.engine.handle_packet(port, src, bytes, now) {
                    self.forwards.push((from_port, i, to));
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
            match self.sockets[usize::from(from_port)].as_ref() {
                Some(s) => {
                    self.batch.send(s.as_raw_fd(), &self.tx_items, |slot| failed.push(slot));
                }
                None => failed.extend(self.tx_items.iter().map(|&(slot, _)| slot)),
            }
            for &slot in &self.failed {
                self.engine.handle_send_failed(from_port, self.batch.packet(slot));
            }
        }
    }

    /// Runs queued commands; `false` when the core must stop.
    fn drain_commands(&mut self) -> bool {
        loop {
            let cmd = match self.commands.try_recv() {
                Ok(c) => c,
                Err(crossbeam_channel::TryRecvError::Empty) => return true,
                Err(crossbeam_channel::TryRecvError::Disconnected) => return false,
            };
            let now = Instant::now();
            match cmd {
                Command::CreateLeg { id, spec, reply } => {
                    let _ = reply.send(self.create_leg(id, spec, now));
                }
                Command::UpdateLeg { id, remote, remote_rtcp, direction, relatch, reply } => {
                    let r = self.engine.update_leg(id, remote, remote_rtcp, direction, relatch).map_err(CoreError::from);
                    let _ = reply.send(r);
                }
                Command::DeleteLeg { id, reply } => {
                    let r = self.engine.delete_leg(id, now).map_err(CoreError::from);
                    if let Ok(stats) = &r {
                        self.release_ports(stats);
                    }
                    let _ = reply.send(r);
                }
                Command::CreateBridge { id, a, b, reply } => {
                    let _ = reply.send(self.engine.create_bridge(id, a, b).map_err(CoreError::from));
                }
                Command::DeleteBridge { id, reply } => {
                    let _ = reply.send(self.engine.delete_bridge(id).map_err(CoreError::from));
                }
                Command::Stats { legs, reply } => {
                    let legs = match legs {
                        None => self.engine.all_leg_stats(now),
                        Some(ids) => ids.iter().filter_map(|id| self.engine.leg_stats(*id, now)).collect(),
                    };
                    let _ = reply.send(CoreReport {
                        core: self.core,
                        legs,
                        leg_count: self.engine.leg_count(),
                        bridge_count: self.engine.bridge_count(),
                        counters: self.engine.counters(),
                        free_ports: self.pool.free(),
                    });
                }
                Command::Shutdown => return false,
            }
        }
    }

    fn drain_engine_events(&mut self) {
        while let Some(ev) = self.engine.poll_event() {
            if let Event::TimedOut { leg, stats } = &ev {
                tracing::info!(core = self.core, leg, port = stats.local_port, "leg timed out");
                self.release_ports(stats);
            }
            // No subscriber is not an error: events are for whoever listens.
            let _ = self.events.send((self.core, ev));
        }
    }

    fn create_leg(&mut self, id: LegId, spec: LegSpec, now: Instant) -> Result<u16, CoreError> {
        let mut last_err = None;
        for _ in 0..BIND_ATTEMPTS.min(self.pool.free()) {
            let Some(port) = self.pool.take() else { break };
            match self.open_ports(port, spec.rtcp_mux) {
                Ok(()) => {}
                Err(e) => {
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
        let rtp = self.bind(port)?;
        let rtcp = if rtcp_mux { None } else { Some(self.bind(port + 1)?) };
        for (p, s) in std::iter::once((port, rtp)).chain(rtcp.map(|s| (port + 1, s))) {
            let mut s = s;
            self.poll.registry().register(&mut s, Token(usize::from(p)), Interest::READABLE).map_err(|e| CoreError::Register(p, e))?;
            self.sockets[usize::from(p)] = Some(s);
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
            if let Some(mut s) = self.sockets[usize::from(p)].take() {
                let _ = self.poll.registry().deregister(&mut s);
            }
        }
    }

    fn release_ports(&mut self, stats: &LegStats) {
        self.close_ports(stats.local_port, stats.rtcp_mux);
        self.pool.release(stats.local_port);
    }
}
