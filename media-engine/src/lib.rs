//! # media-engine
//!
//! The media plane's sans-IO core: everything that decides what happens to a packet, and nothing
//! that reads a socket or a clock. This crate depends on no runtime, socket or gRPC crate, so the
//! build itself keeps it pure; the `media-plane` crate wraps it in drivers (UDP, AF_XDP), threads
//! and the gRPC server.
//!
//! ```text
//!          driver (media-plane: udp | xdp)              tests (harness: virtual time, lossy links)
//!               │ packets + now         ▲ verdicts, transmits, events
//!               ▼                       │
//!   ┌──────────────────────────────────────────────┐
//!   │ engine::Engine            one per core        │  legs, bridges, latching, counters,
//!   │   handle_packet(port, src, bytes, now)        │  media timeouts
//!   │     → Verdict::Forward  (same bytes, zero copy)│
//!   │     → Verdict::Handoff  (peer on another core) │
//!   │     → Verdict::Consumed (transcoding bridge)   │
//!   │     → Verdict::Drop(reason)                    │
//!   │   handle_handoff(handoff, bytes, now)          │  the far half of a cross-core bridge
//!   │   poll_transmit(buf) → packets it queued       │  (hand-offs; later generated media)
//!   │   handle_timeout / poll_timeout / poll_event   │
//!   │   poll_cross / handle_unlink                   │  bridge halves on other cores
//!   └──────────────────────────────────────────────┘
//!        wire: RTP/RTCP views    frame: Ethernet/IP/UDP parse + in-place rewrite
//!        ports: which core owns a port (computed, no table)
//! ```
//!
//! * [`engine`]: the state of one core (see its documentation for the fast path), with
//!   [`engine::transcode`] (one direction of a bridge between legs of different codecs, which
//!   also carries DTMF between RFC 4733 and tones, injects digits and plays prompts),
//!   [`engine::conference`] and [`engine::jitter`] (the N−1 mixer and its jitter buffers),
//!   [`engine::quality`] (RFC 3550 statistics and report blocks) and [`engine::dtmf`] (RFC 4733).
//! * [`wire`]: zero-copy, checked views of RTP and RTCP packets.
//! * [`frame`]: Ethernet/IPv4/IPv6/UDP frames as the AF_XDP driver sees them, parsed and rewritten
//!   in place (addresses, ports, checksums).
//! * [`ports`]: the media port range split between cores.
//! * [`srtp`]: SRTP/SRTCP per leg (libsrtp2), SDES keys.
//! * [`sdp`]: SDP offer/answer for anchored legs, with codec policies (strip, mask, transcode).
//! * [`record`]: a recording's timeline: tapped RTP decoded, resampled and placed by timestamp,
//!   handed out as interleaved frames once late packets can no longer change them.
//! * [`harness`]: an in-memory network with a virtual clock around one engine, for tests.
#![forbid(unsafe_code)]

pub mod engine;
pub mod frame;
pub mod harness;
pub mod ports;
pub mod record;
pub mod sdp;
pub mod srtp;
pub mod wire;
