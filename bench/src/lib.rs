//! Load tools for the media plane.
//!
//! `rtp-load` sets up calls through the gRPC API (two legs and a bridge each), sends paced RTP into
//! every leg, receives what the relay forwards and reports loss, latency percentiles (from kernel
//! receive timestamps, so the generator's own scheduling does not count) and the relay's CPU cost
//! per packet (from `/proc/PID/stat`), as one JSON line plus a human-readable summary.
//!
//! ```text
//!   rtp-load ──gRPC──► media-plane: CreateLeg ×2, CreateBridge  (per call)
//!   socket[2c]   ──RTP──► leg A ─┐ relay ┌─► leg B ──RTP──► socket[2c+1]
//!   socket[2c]  ◄──RTP── leg A ◄─┘       └── leg B ◄──RTP── socket[2c+1]
//! ```
//!
//! With `--peer rtpengine` the same calls are set up on rtpengine instead, through its ng control
//! protocol ([`ng`]: offer, answer, delete), so both relays are measured by the same traffic code.
#![forbid(unsafe_code)]

pub mod ng;
pub mod procstat;
pub mod traffic;
