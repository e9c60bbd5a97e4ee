//! # media-plane
//!
//! A thread-per-core RTP/RTCP relay driven over gRPC (`media.v1.MediaPlane`).
//!
//! ```text
//!             gRPC (tonic, own tokio runtime, not pinned)          api.rs
//!                  │ commands (crossbeam, bounded)   ▲ events (broadcast)
//!      ┌───────────┼──────────────────┬──────────────┘
//!      ▼           ▼                  ▼
//!   core 0      core 1     …      core N-1          one OS thread per core, pinned   driver/
//!   ┌───────────────────────┐
//!   │ Engine (sans-IO)      │  legs, bridges, counters, media timeouts            engine/
//!   │   ▲ packets │ verdicts│
//!   │ UdpDriver: mio epoll, │  one socket per port, recvmmsg/sendmmsg batches     driver/udp.rs, sys.rs
//!   │ recvmmsg → sendmmsg   │
//!   │ or XdpDriver: AF_XDP  │  one socket per NIC queue, frames rewritten in      driver/xdp.rs, sys.rs,
//!   │ RX ring → TX ring     │  place in the UMEM (`--backend xdp|auto`)           frame.rs, neighbour.rs
//!   └───────────────────────┘
//! ```
//!
//! * **Ownership, not locks.** A leg and its ports belong to one core; the port range is split so a
//!   port's core is computed ([`ports::owner`]). Legs are placed by their `group` (else `call_id`),
//!   so a call's bridge relays in place; a bridge between legs of two cores relays over the cores'
//!   bounded hand-off queues (one copy). Nothing on the packet path locks; only hand-offs allocate.
//! * **Sans-IO engine.** [`engine::Engine`] (crate `media-engine`, which depends on no runtime or
//!   socket crate) is given packets and `now` and returns verdicts (forward from port P to address
//!   X, hand off to the core owning the bridged leg, or drop with a reason) and the packets it
//!   queued itself (`poll_transmit`); the driver does the I/O. The same engine runs in the virtual-time
//!   [`harness`] used by tests.
//! * **Zero copy.** A forwarded packet leaves from the buffer it arrived in: unchanged (UDP), or
//!   with only its Ethernet/IP/UDP headers rewritten (AF_XDP; the XDP program is in the `ebpf` crate).
//! * **Latching and strict source.** A leg without a remote learns it from its first packet; after
//!   that, other sources are dropped and counted until the control plane asks it to re-latch.
//! * **Counted drops.** Malformed, wrong source, no route, muted, send failed: per leg and per core.
//!
//! All `unsafe` code is in [`sys`].

pub mod api;
pub mod config;
pub mod driver;
pub mod metrics;
pub mod neighbour;
pub mod ng;
pub mod recorder;
pub mod sys;

// The sans-IO core lives in its own crate (no runtime or socket dependency); re-exported under
// the names the drivers and tools have always used.
pub use media_engine::{engine, frame, harness, ports, sdp, wire};
