//! AF_XDP backend: one AF_XDP socket per NIC receive queue, one pinned core thread per socket,
//! the same [`crate::engine::Engine`] as the UDP backend.
//!
//! ```text
//!  NIC queue q ─► XDP program (ebpf crate: media ports → xsks[q], the rest → kernel)
//!                     │
//!                     ▼  RX ring                      fill ring ◄── free UMEM frames
//!  core q:  frame::parse ─► not UDP to media_ip:ports ─────────────► free (counted)
//!                       └─► engine.handle_packet(dst port, src, payload, now)
//!                              ├─ Drop ────────────────────────────► free (engine counted it)
//!                              └─ Forward { from_port, to }
//!                                   neighbour MAC of `to` ── unknown ► free, no_route, ARP prompted
//!                                   frame::rewrite in place (MACs, IPs, ports, TTL, checksums)
//!                                   └─► TX ring (the same UMEM frame: zero copies) ─► sendto kick
//!                                         completion ring ─► free UMEM frames
//! ```
//!
//! * **Crate.** Rings and UMEM come from the `xdp` crate 0.8 (Apache-2.0 OR MIT, pure Rust, no
//!   libbpf/libxdp, written for the Quilkin UDP proxy). Of the candidates the architecture lists,
//!   `xsk-rs` binds libxdp and pins a libbpf-sys that conflicts with libbpf-rs 0.27, and `xdpilone`
//!   is EUPL-1.2; `xdp` fits our licence and build. Its ring operations are `unsafe fn`; they are
//!   wrapped once, in [`crate::sys::Xsk`], which owns socket, rings and UMEM together.
//! * **Queues and hand-off.** Core `i` serves receive queue `i`; `cores` must not exceed the
//!   interface's queue count. RSS does not know which core owns a media port, so a packet can land
//!   on another core's queue. That core copies its UDP payload into a [`CrossPacket::Port`] and
//!   passes it over the owner's bounded cross-core queue ([`super::CrossCore`]), waking the owner
//!   once per batch; it never blocks (a full queue drops the packet and counts `handoff_full`).
//!   The owner runs it through its engine like a packet of its own and transmits a frame it
//!   builds in its own UMEM (one copy: hand-off is the exception path; flow steering that matches
//!   the port split avoids it). Counted as `handoff_out` / `handoff_in` per core. A bridge
//!   between legs of two cores crosses the same queues ([`CrossPacket::Peer`]); the receiving
//!   engine queues the packet and this driver builds its frame from `poll_transmit`.
//! * **Ports.** Each leg's ports are still bound by a kernel UDP socket ([`super::CoreState`]) so no
//!   other process takes them and the kernel sends no port-unreachable for them; the XDP program
//!   takes their packets before the socket would see them.
//! * **Copy mode.** The socket is bound with `XDP_COPY` on virtual devices (veth) and under a
//!   generic-XDP attach; elsewhere the kernel tries zero-copy and falls back to copy by itself. In
//!   copy mode the kernel copies each frame once in and once out, and transmits only when kicked
//!   with `sendto`. The `xdp` crate does not expose the rings' need_wakeup flags, so the driver
//!   kicks after every batch that queued frames (required in copy mode; one call per batch more
//!   than needed on a zero-copy NIC) and keeps kicking, bounded, until the completion ring has
//!   returned every frame; frames still in flight make the loop come back within 200 µs.
//! * **Counters.** Engine drops are in `GetStats` as for UDP. A forward whose next hop has no known
//!   MAC is handed back to the engine as a `no_route` drop of the sending leg. The driver's own
//!   counters (frames not UDP to `media_ip` and the port range, TX ring full, rewrite refused,
//!   hand-offs) are in `GetStats` (`CoreStats.driver`, as of the core's last loop turn); the
//!   kernel's `XDP_STATISTICS` are logged when the core stops.
//! * **Sleeping.** When no packet is waiting the thread sleeps in `epoll_wait` (mio) on the socket,
//!   the command waker and the engine's next timer; it never busy-spins unless `idle_spin_us` asks.
//! * **IPv4 only** for now: IPv6 media (neighbour discovery) is refused at start with a clear error.
//! * **Engine transmissions** (`poll_transmit`: hand-offs from other cores today, generated media
//!   later) are copied into UMEM frames with headers built for them ([`frame::build`]).

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::{AsFd as _, AsRawFd as _};
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::Receiver;
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token, Waker};
use tokio::sync::broadcast;

use super::{Command, CoreEvent, CoreHandle, CorePeer, CoreState, CrossCore, CrossPacket, Started, COMMAND_QUEUE, CROSS_QUEUE};
use crate::config::Config;
use crate::engine::{DropReason, Verdict, MAX_TRANSMIT};
use crate::frame::{self, Rewrite};
use crate::neighbour::Neighbours;
use crate::sys::{Xsk, XskConfig, XskError};

const WAKER: Token = Token(0);
const SOCKET: Token = Token(1);
/// UMEM frames per socket (2 KiB each: 8 MiB).
const UMEM_FRAMES: u32 = 4096;
/// Entries per ring.
const RING_SIZE: u32 = 2048;
/// Batches handled before the loop looks at commands and timers again.
const BATCHES_PER_WAKE: usize = 64;
/// Kicks without completion progress before the TX drain gives up until the next loop turn.
const DRAIN_KICKS: usize = 64;
/// Largest MTU whose frames fit a 2 KiB UMEM frame after the kernel's 256-byte headroom, with an
/// Ethernet header and one VLAN tag.
const MAX_MTU: u32 = 2048 - 256 - 14 - 4;
/// How long a core may take to open its socket and report ready.
const START_TIMEOUT: Duration = Duration::from_secs(5);

/// Why the AF_XDP backend could not start.
#[derive(Debug, thiserror::Error)]
pub enum XdpError {
    // Configuration that cannot work.
    /// IPv6 media is not supported by this backend yet.
    #[error("media_ip {0} is IPv6: the AF_XDP backend relays IPv4 only for now")]
    Ipv6Unsupported(IpAddr),
    /// More cores than the interface has receive queues.
    #[error("cores = {cores} but {interface} has {queues} receive queue(s); the AF_XDP backend runs one core per queue")]
    TooManyCores { cores: usize, interface: String, queues: usize },

    // The host.
    /// The interface does not exist in this network namespace.
    #[error("no network interface {interface} in this network namespace (if_nametoindex: {source})")]
    NoSuchInterface { interface: String, source: nix::Error },
    /// `media_ip` is not configured on the interface.
    #[error("media_ip {ip} is not an address of {interface} (getifaddrs lists: {found})")]
    AddressNotOnInterface { ip: IpAddr, interface: String, found: String },
    /// The interface has no Ethernet address.
    #[error("{0} has no Ethernet (MAC) address (getifaddrs: no AF_PACKET entry)")]
    NoMac(String),
    /// Listing interface addresses failed.
    #[error("getifaddrs failed: {0}")]
    Getifaddrs(nix::Error),
    /// The queue count could not be read.
    #[error("cannot read the receive queue count of {interface} (readdir {path}: {source})")]
    QueueCount { interface: String, path: String, source: io::Error },
    /// Loading or attaching the XDP program, or registering a socket with it, failed.
    #[error(transparent)]
    Steer(#[from] ebpf::SteerError),
    /// An AF_XDP socket could not be created or bound.
    #[error("AF_XDP socket for {interface} queue {queue}: {source}")]
    Socket { interface: String, queue: u32, source: XskError },
    /// epoll setup for a core failed; `call` names the step.
    #[error("{call} for media core {core} failed: {source}")]
    Poll { core: usize, call: &'static str, source: io::Error },
    /// The interface's MTU makes frames larger than a UMEM frame holds.
    #[error("{interface} has MTU {mtu}; the AF_XDP backend's 2 KiB UMEM frames hold an MTU of at most {MAX_MTU}")]
    MtuTooLarge { interface: String, mtu: u32 },
    /// A core thread could not be spawned.
    #[error("spawning media core thread {core}: {source}")]
    Thread { core: usize, source: io::Error },

    // Our own bug or a stuck kernel.
    /// A core did not report ready in time, or its thread died first.
    #[error("media core {core} did not report ready within {START_TIMEOUT:?}")]
    StartTimeout { core: usize },
}

/// What the interface looks like to the backend.
#[derive(Debug, Clone)]
struct Interface {
    name: String,
    index: u32,
    mac: [u8; 6],
}

/// The AF_XDP driver of one core (one receive queue). See the module documentation.
#[derive(Debug)]
pub struct XdpDriver {
    state: CoreState,
    poll: Poll,
    waker: Arc<Waker>,
    interface: Interface,
    queue: u32,
    media_ip: IpAddr,
    ports: (u16, u16),
    xsk_config: XskConfig,
    neighbours: Neighbours,
    idle_spin: Duration,
}

/// Starts one AF_XDP core per receive queue `0..cores` of `config.interface`, after attaching the
/// XDP program. On any failure, what was started is stopped again and the program detached.
pub fn spawn_cores(config: &Config, events: broadcast::Sender<CoreEvent>) -> Result<Started, XdpError> {
    let ifname = config.interface.clone().unwrap_or_default();
    if config.media_ip.is_ipv6() {
        return Err(XdpError::Ipv6Unsupported(config.media_ip));
    }
    let interface = inspect_interface(&ifname, config.media_ip)?;
    let queues = rx_queue_count(&ifname)?;
    if let Some(mtu) = std::fs::read_to_string(format!("/sys/class/net/{ifname}/mtu")).ok().and_then(|m| m.trim().parse().ok()) {
        if mtu > MAX_MTU {
            return Err(XdpError::MtuTooLarge { interface: ifname, mtu });
        }
    }
    if config.cores > queues {
        return Err(XdpError::TooManyCores { cores: config.cores, interface: ifname, queues });
    }
    let steering = Arc::new(ebpf::Steering::attach(&ifname, config.port_min..=config.port_max, ebpf::XdpMode::Auto)?);
    match steering.fallback_reason() {
        Some(why) => {
            tracing::info!(interface = %ifname, mode = %steering.mode(), reason = why, "XDP program attached (native mode refused)")
        }
        None => tracing::info!(interface = %ifname, mode = %steering.mode(), "XDP program attached"),
    }
    // Zero-copy needs the program in the driver and a driver with AF_XDP zero-copy: virtual devices
    // (veth has native XDP) never have it. Otherwise the kernel tries zero-copy and falls back to
    // copy mode by itself.
    let force_copy = steering.mode() == ebpf::AttachedMode::Generic || is_virtual(&ifname);
    let xsk_config = XskConfig { frames: UMEM_FRAMES, ring: RING_SIZE, batch: config.batch.min(RING_SIZE as usize / 2), force_copy };
    // Every driver first, so each can be given every core's hand-off queue and waker.
    let mut drivers = Vec::with_capacity(config.cores);
    let mut peers = Vec::with_capacity(config.cores);
    for core in 0..config.cores {
        let (tx, rx) = crossbeam_channel::bounded(COMMAND_QUEUE);
        let (cross_tx, inbox) = crossbeam_channel::bounded(CROSS_QUEUE);
        let cross = CrossCore::new(inbox, config.cores);
        let driver = XdpDriver::new(core, config, interface.clone(), xsk_config, rx, events.clone(), cross)?;
        peers.push(CorePeer { tx: cross_tx, waker: Arc::clone(&driver.waker) });
        drivers.push((driver, tx));
    }
    let mut handles: Vec<CoreHandle> = Vec::with_capacity(config.cores);
    for (core, (mut driver, tx)) in drivers.into_iter().enumerate() {
        driver.state.cross.set_peers(peers.clone());
        match spawn_core(core, config, driver, tx, &steering) {
            Ok(h) => handles.push(h),
            Err(e) => {
                for h in &handles {
                    h.shutdown(Duration::from_secs(2));
                }
                return Err(e);
            }
        }
    }
    tracing::info!(interface = %ifname, queues = config.cores, copy_mode = force_copy, "AF_XDP backend running");
    Ok(Started { cores: handles, backend: "xdp", steering: Some(steering) })
}

fn spawn_core(
    core: usize,
    config: &Config,
    driver: XdpDriver,
    tx: crossbeam_channel::Sender<Command>,
    steering: &Arc<ebpf::Steering>,
) -> Result<CoreHandle, XdpError> {
    let waker = Arc::clone(&driver.waker);
    let cpu = super::pin_cpu(config, core);
    let (ready_tx, ready_rx) = crossbeam_channel::bounded(1);
    let steering = Arc::clone(steering);
    let thread = std::thread::Builder::new()
        .name(format!("media-core-{core}"))
        .spawn(move || {
            super::pin_current(core, cpu);
            driver.run(&steering, ready_tx);
        })
        .map_err(|source| XdpError::Thread { core, source })?;
    let handle = CoreHandle { core, tx, waker, queue_full: AtomicU64::new(0), thread: std::sync::Mutex::new(Some(thread)) };
    match ready_rx.recv_timeout(START_TIMEOUT) {
        Ok(Ok(())) => Ok(handle),
        Ok(Err(e)) => Err(e),
        Err(_) => {
            handle.shutdown(Duration::from_secs(1));
            Err(XdpError::StartTimeout { core })
        }
    }
}

fn inspect_interface(name: &str, media_ip: IpAddr) -> Result<Interface, XdpError> {
    let index = nix::net::if_::if_nametoindex(name).map_err(|source| XdpError::NoSuchInterface { interface: name.to_owned(), source })?;
    let mut mac = None;
    let mut found = Vec::new();
    for ifa in nix::ifaddrs::getifaddrs().map_err(XdpError::Getifaddrs)? {
        if ifa.interface_name != name {
            continue;
        }
        let Some(addr) = ifa.address else { continue };
        if let Some(link) = addr.as_link_addr() {
            mac = link.addr().filter(|m| *m != [0; 6]);
        } else if let Some(v4) = addr.as_sockaddr_in() {
            found.push(IpAddr::V4(v4.ip()));
        } else if let Some(v6) = addr.as_sockaddr_in6() {
            found.push(IpAddr::V6(v6.ip()));
        }
    }
    if !found.contains(&media_ip) {
        let found =
            if found.is_empty() { "no address".to_owned() } else { found.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ") };
        return Err(XdpError::AddressNotOnInterface { ip: media_ip, interface: name.to_owned(), found });
    }
    let mac = mac.ok_or_else(|| XdpError::NoMac(name.to_owned()))?;
    Ok(Interface { name: name.to_owned(), index, mac })
}

/// Receive queues of `name`: the `rx-N` entries of /sys/class/net/NAME/queues (sysfs shows the
/// namespace it was mounted in; `ip netns exec` mounts the right one).
fn rx_queue_count(name: &str) -> Result<usize, XdpError> {
    let path = format!("/sys/class/net/{name}/queues");
    let entries =
        std::fs::read_dir(&path).map_err(|source| XdpError::QueueCount { interface: name.to_owned(), path: path.clone(), source })?;
    Ok(entries.filter_map(Result::ok).filter(|e| e.file_name().to_string_lossy().starts_with("rx-")).count().max(1))
}

/// Whether `name` is a virtual device (veth, bridge, …): those have no zero-copy AF_XDP.
fn is_virtual(name: &str) -> bool {
    std::path::Path::new(&format!("/sys/devices/virtual/net/{name}")).exists()
}

impl XdpDriver {
    fn new(
        core: usize,
        config: &Config,
        interface: Interface,
        xsk_config: XskConfig,
        commands: Receiver<Command>,
        events: broadcast::Sender<CoreEvent>,
        cross: CrossCore,
    ) -> Result<Self, XdpError> {
        let poll = Poll::new().map_err(|source| XdpError::Poll { core, call: "epoll_create1", source })?;
        let waker = Arc::new(Waker::new(poll.registry(), WAKER).map_err(|source| XdpError::Poll { core, call: "eventfd", source })?);
        Ok(Self {
            state: CoreState::new(core, config, commands, events, None, cross),
            poll,
            waker,
            neighbours: Neighbours::new(&interface.name),
            queue: core as u32,
            interface,
            media_ip: config.media_ip,
            ports: (config.port_min, config.port_max),
            xsk_config,
            idle_spin: config.idle_spin,
        })
    }

    /// Opens the queue's socket, registers it with the XDP program, reports on `ready`, then runs
    /// the core until [`Command::Shutdown`] or until the gRPC side is gone.
    fn run(mut self, steering: &ebpf::Steering, ready: crossbeam_channel::Sender<Result<(), XdpError>>) {
        let core = self.state.core;
        let mut xsk = match self.open(steering) {
            Ok(x) => x,
            Err(e) => {
                let _ = ready.send(Err(e));
                return;
            }
        };
        let _ = ready.send(Ok(()));
        tracing::debug!(core, queue = self.queue, free_ports = self.state.free_ports(), "AF_XDP media core running");
        let mut events = Events::with_capacity(64);
        let mut last_packet = Instant::now().checked_sub(self.idle_spin).unwrap_or_else(Instant::now);
        let mut more = false;
        loop {
            let now = Instant::now();
            let timeout = if more || !self.state.cross.is_empty() || now.saturating_duration_since(last_packet) < self.idle_spin {
                Some(Duration::ZERO)
            } else if xsk.tx_in_flight() > 0 {
                // Frames still on the TX ring: come back soon to kick and reap them.
                Some(Duration::from_micros(200))
            } else {
                self.state.engine.poll_timeout().map(|t| t.saturating_duration_since(now))
            };
            if let Err(e) = self.poll.poll(&mut events, timeout) {
                if e.kind() != io::ErrorKind::Interrupted {
                    tracing::error!(core, error = %e, "epoll_wait failed; media core stops");
                    break;
                }
            }
            if events.iter().any(|ev| ev.token() == WAKER) && !self.state.drain_commands() {
                break;
            }
            // The socket is registered edge-triggered: drain the RX ring before sleeping again.
            more = true;
            for _ in 0..BATCHES_PER_WAKE {
                if self.rx_batch(&mut xsk) == 0 {
                    more = false;
                    break;
                }
                last_packet = Instant::now();
                // Frames back to the fill ring as soon as they are free, so it never runs dry
                // while a burst is being handled.
                xsk.reap();
                if let Err(e) = xsk.refill() {
                    tracing::warn!(core, error = %e, "AF_XDP fill ring wakeup failed");
                }
            }
            self.state.cross.wake_peers();
            // Timers first: what they make (reports, injected digits) leaves in this turn.
            self.state.engine.handle_timeout(Instant::now());
            self.drain_cross(&mut xsk);
            if let Err(e) = xsk.drain_tx(DRAIN_KICKS) {
                tracing::warn!(core, error = %e, "AF_XDP transmit failed");
            }
            if let Err(e) = xsk.refill() {
                tracing::warn!(core, error = %e, "AF_XDP fill ring wakeup failed");
            }
            self.state.drain_engine_events();
            self.state.cross.wake_peers();
        }
        if let Err(e) = steering.unregister_xsk(self.queue) {
            tracing::warn!(core, error = %e, "unregistering the AF_XDP socket");
        }
        let kernel = xsk.stats().map_err(|e| tracing::debug!(core, error = %e, "XDP_STATISTICS")).ok();
        tracing::info!(core, queue = self.queue, counters = ?self.state.driver, kernel = ?kernel, "AF_XDP media core stopped");
    }

    fn open(&mut self, steering: &ebpf::Steering) -> Result<Xsk, XdpError> {
        let sock_err = |source| XdpError::Socket { interface: self.interface.name.clone(), queue: self.queue, source };
        let xsk = Xsk::open(self.interface.index, self.queue, &self.xsk_config).map_err(sock_err)?;
        let fd = xsk.as_fd().as_raw_fd();
        self.poll.registry().register(&mut SourceFd(&fd), SOCKET, Interest::READABLE).map_err(|source| XdpError::Poll {
            core: self.state.core,
            call: "epoll_ctl(EPOLL_CTL_ADD, AF_XDP socket)",
            source,
        })?;
        steering.register_xsk(self.queue, &xsk)?;
        Ok(xsk)
    }

    /// Handles one batch from the RX ring and transmits its forwards. Returns the frames received.
    fn rx_batch(&mut self, xsk: &mut Xsk) -> usize {
        let now = Instant::now();
        let Self { state, neighbours, media_ip, ports, interface, .. } = self;
        let n = xsk.recv_batch(|bytes| relay_frame(bytes, now, state, neighbours, *media_ip, *ports, interface.mac));
        if n == 0 {
            return 0;
        }
        flush(xsk, state);
        n
    }
}

/// Puts the queued frames on the TX ring; frames it has no room for are counted (`tx_full`) and
/// handed back to the engine as `send_failed` drops of their sending leg.
fn flush(xsk: &mut Xsk, state: &mut CoreState) {
    let result = xsk.flush_tx(|bytes| {
        state.driver.tx_full += 1;
        if let Ok(p) = frame::parse(bytes) {
            let payload = bytes.get(p.payload..p.payload + p.payload_len).unwrap_or_default();
            state.engine.handle_forward_dropped(p.src.port(), payload, DropReason::SendFailed);
        }
    });
    if let Err(e) = result {
        tracing::warn!(core = state.core, error = %e, "AF_XDP transmit failed");
    }
}

impl XdpDriver {
    /// Runs what other cores sent (at most [`CROSS_BATCH`] packets) and transmits the results
    /// from this core's UMEM, with the engine's other transmissions.
    fn drain_cross(&mut self, xsk: &mut Xsk) {
        let now = Instant::now();
        let mut frame_buf = [0u8; 2048];
        let mut queued = 0;
        let Self { state, neighbours, media_ip, interface, .. } = self;
        let (media_ip, mac) = (*media_ip, interface.mac);
        state.drain_cross(CROSS_BATCH, now, |state, dst_port, src, payload| {
            // A packet RSS put on another core's queue: ours to run, in a frame of our own (or,
            // for a leg bridged to a third core's, passed on again).
            let (from_port, to) = match state.engine.handle_packet(dst_port, src, payload, now) {
                Verdict::Forward { from_port, to } => (from_port, to),
                Verdict::Handoff { core, handoff } => return state.hand_off(core, handoff, payload),
                Verdict::Consumed | Verdict::Drop(_) => return,
            };
            if let Some(len) = build_frame(state, neighbours, media_ip, mac, from_port, to, payload, now, &mut frame_buf) {
                if xsk.queue_copy(frame_buf.get(..len).unwrap_or_default()) {
                    queued += 1;
                } else {
                    state.driver.tx_full += 1;
                    state.engine.handle_forward_dropped(from_port, payload, DropReason::SendFailed);
                }
            }
        });
        let mut packet = [0u8; MAX_TRANSMIT];
        while let Some(t) = state.engine.poll_transmit(&mut packet) {
            let payload = packet.get(..t.len).unwrap_or_default();
            let Some(len) = build_frame(state, neighbours, media_ip, mac, t.from_port, t.to, payload, now, &mut frame_buf) else {
                continue;
            };
            if xsk.queue_copy(frame_buf.get(..len).unwrap_or_default()) {
                queued += 1;
            } else {
                state.driver.tx_full += 1;
                state.engine.handle_forward_dropped(t.from_port, payload, DropReason::SendFailed);
            }
        }
        if queued > 0 {
            flush(xsk, state);
        }
    }
}

/// Cross-core packets handled per loop turn (bounded so commands and the own queue are not starved).
const CROSS_BATCH: usize = 32;

/// A whole frame in `buf` carrying `payload` from `media_ip:from_port` to `to`. Returns its
/// length; `None` when it cannot be built (no next-hop MAC, or a refused rewrite), counted here
/// and on the sending leg.
fn build_frame(
    state: &mut CoreState,
    neighbours: &mut Neighbours,
    media_ip: IpAddr,
    mac: [u8; 6],
    from_port: u16,
    to: SocketAddr,
    payload: &[u8],
    now: Instant,
    buf: &mut [u8],
) -> Option<usize> {
    let Ok(dst_mac) = neighbours.lookup(to.ip(), now) else {
        state.driver.no_neighbour += 1;
        state.engine.handle_forward_dropped(from_port, payload, DropReason::NoRoute);
        return None;
    };
    let rewrite = Rewrite { src_mac: mac, dst_mac, src: SocketAddr::new(media_ip, from_port), dst: to };
    match frame::build(buf, &rewrite, payload) {
        Ok(len) => Some(len),
        Err(_) => {
            state.driver.rewrite_failed += 1;
            state.engine.handle_forward_dropped(from_port, payload, DropReason::SendFailed);
            None
        }
    }
}

/// The per-frame path: parse, route through the engine, rewrite in place. `true`: transmit the
/// (rewritten) frame; `false`: free it. Every `false` is counted, by the engine or the driver.
fn relay_frame(
    bytes: &mut [u8],
    now: Instant,
    state: &mut CoreState,
    neighbours: &mut Neighbours,
    media_ip: IpAddr,
    ports: (u16, u16),
    mac: [u8; 6],
) -> bool {
    let Ok(parsed) = frame::parse(bytes) else {
        state.driver.not_udp += 1;
        return false;
    };
    let dst_port = parsed.dst.port();
    if parsed.dst.ip() != media_ip || dst_port < ports.0 || dst_port > ports.1 {
        state.driver.not_ours += 1;
        return false;
    }
    let payload_range = parsed.payload..parsed.payload + parsed.payload_len;
    let Some(payload) = bytes.get(payload_range.clone()) else {
        state.driver.not_udp += 1;
        return false;
    };
    if let Some(owner) = crate::ports::owner(dst_port, ports.0, ports.1, state.cross.cores).filter(|&o| o != state.core) {
        let packet = CrossPacket::Port { dst_port, src: parsed.src, payload: payload.to_vec() };
        let _ = state.cross.send(owner, packet, &mut state.driver);
        return false;
    }
    let (from_port, to) = match state.engine.handle_packet(dst_port, parsed.src, payload, now) {
        Verdict::Forward { from_port, to } => (from_port, to),
        Verdict::Handoff { core, handoff } => {
            state.hand_off(core, handoff, payload);
            return false;
        }
        // Transcoded: what it makes leaves through the engine's transmit queue.
        Verdict::Consumed | Verdict::Drop(_) => return false,
    };
    let dst_mac = match neighbours.lookup(to.ip(), now) {
        Ok(m) => m,
        Err(e) => {
            state.driver.no_neighbour += 1;
            state.engine.handle_forward_dropped(from_port, payload, DropReason::NoRoute);
            tracing::trace!(error = %e, "forward dropped: no next hop");
            return false;
        }
    };
    let rewrite = Rewrite { src_mac: mac, dst_mac, src: SocketAddr::new(media_ip, from_port), dst: to };
    if frame::rewrite(bytes, &parsed, &rewrite).is_err() {
        state.driver.rewrite_failed += 1;
        let payload = bytes.get(payload_range).unwrap_or_default();
        state.engine.handle_forward_dropped(from_port, payload, DropReason::SendFailed);
        return false;
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::FileConfig;
    use crate::engine::{LegSpec, Remote};

    const OUR_MAC: [u8; 6] = [2, 0, 0, 0, 0, 1];
    const PEER_MAC: [u8; 6] = [2, 0, 0, 0, 0, 0xb];
    const A_PORT: u16 = 30000;
    const B_PORT: u16 = 30002;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    /// A core with legs A (latching) and B (remote 10.0.0.3:5000) bridged, media_ip 10.0.0.2.
    fn bridged_core() -> CoreState {
        let config =
            FileConfig { media_ip: Some("10.0.0.2".into()), ports: Some("30000-30099".into()), ..Default::default() }.validate().unwrap();
        let (_tx, rx) = crossbeam_channel::bounded(1);
        let (events, _) = broadcast::channel(4);
        let mut state = CoreState::new(0, &config, rx, events, None, CrossCore::alone());
        let now = Instant::now();
        state.engine.create_leg(1, A_PORT, LegSpec { rtcp_mux: true, ..Default::default() }, now).unwrap();
        let spec = LegSpec { remote: Remote::locked(addr("10.0.0.3:5000")), rtcp_mux: true, ..Default::default() };
        state.engine.create_leg(2, B_PORT, spec, now).unwrap();
        state.engine.create_bridge(1, 1, 2).unwrap();
        state
    }

    fn rtp_payload() -> Vec<u8> {
        let mut p = vec![0x80, 0x00, 0x00, 0x07, 0, 0, 0, 160, 0, 0, 0, 42];
        p.extend((0..160u16).map(|i| i as u8));
        p
    }

    /// A frame from the peer's endpoint 10.0.0.1:4000 to `dst`.
    fn inbound(dst: &str, payload: &[u8]) -> Vec<u8> {
        let r = Rewrite { src_mac: PEER_MAC, dst_mac: OUR_MAC, src: addr("10.0.0.1:4000"), dst: addr(dst) };
        let mut buf = vec![0u8; 2048];
        let n = frame::build(&mut buf, &r, payload).unwrap();
        buf.truncate(n);
        buf
    }

    fn relay(state: &mut CoreState, n: &mut Neighbours, bytes: &mut [u8]) -> bool {
        relay_frame(bytes, Instant::now(), state, n, "10.0.0.2".parse().unwrap(), (30000, 30099), OUR_MAC)
    }

    #[test]
    fn a_forwarded_frame_is_rewritten_in_place_and_its_payload_is_untouched() {
        let mut state = bridged_core();
        let mut n = Neighbours::new("test0");
        n.insert_for_test("10.0.0.3".parse().unwrap(), PEER_MAC, Instant::now());
        let payload = rtp_payload();
        let mut f = inbound("10.0.0.2:30000", &payload);
        assert!(relay(&mut state, &mut n, &mut f));
        let p = frame::parse(&f).unwrap();
        assert_eq!((p.src, p.dst), (addr("10.0.0.2:30002"), addr("10.0.0.3:5000")));
        assert_eq!((&f[0..6], &f[6..12]), (&PEER_MAC[..], &OUR_MAC[..]));
        assert_eq!(&f[p.payload..p.payload + p.payload_len], &payload[..]);
        // The checksum the rewrite wrote verifies: recomputing over the zeroed field gives it back.
        let sum = u16::from_be_bytes([f[p.l4 + 6], f[p.l4 + 7]]);
        let mut udp = f[p.l4..p.payload + p.payload_len].to_vec();
        udp[6..8].fill(0);
        assert_eq!(frame::udp_checksum(p.src.ip(), p.dst.ip(), &udp), sum);
        assert_eq!(state.engine.counters().packets_forwarded, 1);
    }

    #[test]
    fn frames_not_for_the_media_address_and_ports_are_dropped_and_counted() {
        let mut state = bridged_core();
        let mut n = Neighbours::new("test0");
        let payload = rtp_payload();
        assert!(!relay(&mut state, &mut n, &mut inbound("10.0.0.9:30000", &payload)));
        assert!(!relay(&mut state, &mut n, &mut inbound("10.0.0.2:5060", &payload)));
        let mut arp = inbound("10.0.0.2:30000", &payload);
        arp[12..14].copy_from_slice(&[0x08, 0x06]);
        assert!(!relay(&mut state, &mut n, &mut arp));
        assert!(!relay(&mut state, &mut n, &mut [0u8; 10]));
        assert_eq!((state.driver.not_ours, state.driver.not_udp), (2, 2));
        assert_eq!(state.engine.counters().packets_in, 0, "the engine never saw them");
    }

    #[test]
    fn a_forward_to_an_unresolved_neighbour_is_dropped_as_no_route() {
        let mut state = bridged_core();
        // No route or ARP entry for 10.0.0.3 on an interface that does not exist here.
        let mut n = Neighbours::new("mp-test-none0");
        assert!(!relay(&mut state, &mut n, &mut inbound("10.0.0.2:30000", &rtp_payload())));
        assert_eq!(state.driver.no_neighbour, 1);
        let counters = state.engine.counters();
        assert_eq!((counters.packets_in, counters.packets_forwarded, counters.drops.no_route), (1, 0, 1));
        assert_eq!(counters.drops.send_failed, 0);
    }

    /// Two cores sharing cross-core queues (core 1's holding `depth`), as `spawn_cores` wires them.
    fn two_cores(depth: usize) -> (CoreState, CoreState) {
        let config =
            FileConfig { media_ip: Some("10.0.0.2".into()), ports: Some("30000-30099".into()), cores: Some(2), ..Default::default() }
                .validate()
                .unwrap();
        let (events, _) = broadcast::channel(4);
        let (_c0, r0) = crossbeam_channel::bounded(1);
        let (_c1, r1) = crossbeam_channel::bounded(1);
        let poll = Poll::new().unwrap();
        let waker = Arc::new(Waker::new(poll.registry(), WAKER).unwrap());
        let (tx0, inbox0) = crossbeam_channel::bounded(CROSS_QUEUE);
        let (tx1, inbox1) = crossbeam_channel::bounded(depth);
        let peers = vec![CorePeer { tx: tx0, waker: Arc::clone(&waker) }, CorePeer { tx: tx1, waker }];
        let mut cross0 = CrossCore::new(inbox0, 2);
        let mut cross1 = CrossCore::new(inbox1, 2);
        cross0.set_peers(peers.clone());
        cross1.set_peers(peers);
        (CoreState::new(0, &config, r0, events.clone(), None, cross0), CoreState::new(1, &config, r1, events, None, cross1))
    }

    /// Runs core `state`'s cross-core inbox the way the driver does; returns the frames built.
    fn drain(state: &mut CoreState, n: &mut Neighbours, now: Instant) -> Vec<Vec<u8>> {
        let mut frames = Vec::new();
        let mut buf = [0u8; 2048];
        let ip: IpAddr = "10.0.0.2".parse().unwrap();
        state.drain_cross(CROSS_BATCH, now, |state, dst_port, src, payload| {
            match state.engine.handle_packet(dst_port, src, payload, now) {
                Verdict::Forward { from_port, to } => {
                    let len = build_frame(state, n, ip, OUR_MAC, from_port, to, payload, now, &mut buf).expect("frame");
                    frames.push(buf[..len].to_vec());
                }
                Verdict::Handoff { core, handoff } => state.hand_off(core, handoff, payload),
                Verdict::Consumed | Verdict::Drop(_) => {}
            }
        });
        let mut packet = [0u8; MAX_TRANSMIT];
        while let Some(t) = state.engine.poll_transmit(&mut packet) {
            let len = build_frame(state, n, ip, OUR_MAC, t.from_port, t.to, &packet[..t.len], now, &mut buf).expect("frame");
            frames.push(buf[..len].to_vec());
        }
        frames
    }

    fn check_frame(f: &[u8], src: &str, dst: &str, payload: &[u8]) {
        let p = frame::parse(f).unwrap();
        assert_eq!((p.src, p.dst), (addr(src), addr(dst)));
        assert_eq!((&f[0..6], &f[6..12]), (&PEER_MAC[..], &OUR_MAC[..]));
        assert_eq!(&f[p.payload..p.payload + p.payload_len], payload);
        let mut udp = f[p.l4..].to_vec();
        let sent = u16::from_be_bytes([udp[6], udp[7]]);
        udp[6..8].fill(0);
        assert_eq!(frame::udp_checksum(p.src.ip(), p.dst.ip(), &udp), sent, "UDP checksum verifies");
    }

    #[test]
    fn a_packet_on_the_wrong_core_is_handed_to_the_owner_which_relays_it_in_a_frame_of_its_own() {
        // Two cores: port 30002 (pair 1) and 30006 (pair 3) belong to core 1.
        let (mut core0, mut core1) = two_cores(2);
        let now = Instant::now();
        core1.engine.create_leg(1, 30002, LegSpec { rtcp_mux: true, ..Default::default() }, now).unwrap();
        let spec = LegSpec { remote: Remote::locked(addr("10.0.0.3:5000")), rtcp_mux: true, ..Default::default() };
        core1.engine.create_leg(2, 30006, spec, now).unwrap();
        core1.engine.create_bridge(1, 1, 2).unwrap();
        let mut n = Neighbours::new("test0");
        n.insert_for_test("10.0.0.3".parse().unwrap(), PEER_MAC, now);
        let payload = rtp_payload();

        for _ in 0..3 {
            let mut f = inbound("10.0.0.2:30002", &payload);
            assert!(!relay(&mut core0, &mut n, &mut f), "core 0 frees the frame");
        }
        assert_eq!(
            (core0.driver.handoff_out, core0.driver.handoff_full),
            (2, 1),
            "queue of 2: the third is dropped and counted, never waited for"
        );
        assert_eq!(core0.cross.pending_wakes(), &[false, true], "core 1 is woken");
        assert_eq!(core0.engine.poll_event(), None);

        let frames = drain(&mut core1, &mut n, now);
        assert_eq!((frames.len(), core1.driver.handoff_in), (2, 2));
        check_frame(&frames[0], "10.0.0.2:30006", "10.0.0.3:5000", &payload);
    }

    #[test]
    fn a_bridge_between_legs_of_two_cores_relays_through_the_cross_core_queue_and_is_unlinked_with_its_leg() {
        // Leg 1 on core 0 (port 30000, pair 0), leg 2 on core 1 (port 30002, pair 1), bridge 7.
        let (mut core0, mut core1) = two_cores(CROSS_QUEUE);
        let now = Instant::now();
        core0.engine.create_leg(1, 30000, LegSpec { rtcp_mux: true, ..Default::default() }, now).unwrap();
        let spec = LegSpec { remote: Remote::locked(addr("10.0.0.3:5000")), rtcp_mux: true, ..Default::default() };
        core1.engine.create_leg(2, 30002, spec, now).unwrap();
        core0.engine.link_remote(7, 1, 1, 2, None, true).unwrap();
        core1.engine.link_remote(7, 2, 0, 1, None, false).unwrap();
        let mut n = Neighbours::new("test0");
        n.insert_for_test("10.0.0.3".parse().unwrap(), PEER_MAC, now);
        let payload = rtp_payload();

        let mut f = inbound("10.0.0.2:30000", &payload);
        assert!(!relay(&mut core0, &mut n, &mut f), "the frame is freed: a copy crosses");
        assert_eq!((core0.engine.counters().packets_handed_off, core0.driver.handoff_out), (1, 1));
        let frames = drain(&mut core1, &mut n, now);
        assert_eq!(frames.len(), 1);
        check_frame(&frames[0], "10.0.0.2:30002", "10.0.0.3:5000", &payload);
        assert_eq!(core1.engine.counters().packets_forwarded, 1);

        // Deleting leg 1 on core 0 unlinks core 1's half over the same queues.
        core0.engine.delete_leg(1, now).unwrap();
        core0.drain_engine_events();
        drain(&mut core1, &mut n, now);
        assert_eq!(core1.engine.leg_stats(2, now).unwrap().bridge, None);
    }
}
