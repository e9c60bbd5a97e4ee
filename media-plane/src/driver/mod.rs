//! Media cores: one pinned OS thread per core, each running an [`Engine`] under a driver.
//!
//! The gRPC layer talks to a core only through its bounded command queue (and a [`mio::Waker`] to
//! wake it); replies come back on oneshot channels, events on a broadcast channel. A full queue is
//! refused at once (counted), never waited on.

pub mod udp;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crossbeam_channel::{Sender, TrySendError};
use tokio::sync::{broadcast, oneshot};

use crate::engine::{BridgeId, CommandError, CoreCounters, Direction, Event, LegId, LegSpec, LegStats};

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
    CreateLeg { id: LegId, spec: LegSpec, reply: Reply<u16> },
    UpdateLeg {
        id: LegId,
        remote: Option<SocketAddr>,
        remote_rtcp: Option<SocketAddr>,
        direction: Option<Direction>,
        relatch: bool,
        reply: Reply<()>,
    },
    DeleteLeg { id: LegId, reply: Reply<LegStats> },
    CreateBridge { id: BridgeId, a: LegId, b: LegId, reply: Reply<()> },
    DeleteBridge { id: BridgeId, reply: Reply<()> },
    /// `legs: None` = every leg; `Some(ids)` = only those (empty: totals only).
    Stats { legs: Option<Vec<LegId>>, reply: oneshot::Sender<CoreReport> },
    Shutdown,
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

/// Starts the media cores of `config`, each pinned when asked to, and returns their handles.
pub fn spawn_cores(config: &crate::config::Config, events: broadcast::Sender<CoreEvent>) -> std::io::Result<Vec<CoreHandle>> {
    let cpus = core_affinity::get_core_ids().unwrap_or_default();
    let mut handles = Vec::with_capacity(config.cores);
    for core in 0..config.cores {
        let (tx, rx) = crossbeam_channel::bounded(COMMAND_QUEUE);
        let driver = udp::UdpDriver::new(core, config, rx, events.clone())?;
        let waker = driver.waker();
        let cpu = if config.pin_cores && !cpus.is_empty() { Some(cpus[(config.first_cpu + core) % cpus.len()]) } else { None };
        let thread = std::thread::Builder::new().name(format!("media-core-{core}")).spawn(move || {
            if let Some(cpu) = cpu {
                if !core_affinity::set_for_current(cpu) {
                    tracing::warn!(core, cpu = cpu.id, "could not pin media core");
                }
            }
            driver.run();
        })?;
        handles.push(CoreHandle { core, tx, waker, queue_full: AtomicU64::new(0), thread: std::sync::Mutex::new(Some(thread)) });
    }
    Ok(handles)
}
