//! `control-plane`: the SIP side of the media server. This crate is being built up from its
//! foundation; what exists today:
//!
//! ```text
//!   bytes from UDP/TCP ──► sip::message::parse ──► sip::transaction::TransactionLayer ──► TU
//!        (driver)            (rsip + RFC 3261        (RFC 3261 §17 state machines,      (registrar, B2BUA:
//!                             checks; 400s)           sans-IO, virtual-time tested)       not yet written)
//!                                                                                           │
//!                                                      auth::digest::Authenticator ◄───────┘
//!                                                      (RFC 7616/8760 challenges and checks)
//! ```
//!
//! - [`sip::message`]: parsing with `rsip` plus what it leaves out (Content-Length framing,
//!   required headers, Via branch cookie, compact names, folding), stateless 400s, stream
//!   framing, wire encoding.
//! - [`sip::transaction`]: INVITE and non-INVITE client and server transactions with timers
//!   A–M, and the [`TransactionLayer`](sip::transaction::TransactionLayer) that routes to them.
//!   Like the media plane's engine, they never read a clock or a socket: the caller passes `now`
//!   in and polls transmissions, timeouts and events out (quinn-proto's shape), so a
//!   virtual-time harness (`sip::harness`, tests only) runs a 32-second timeout in microseconds
//!   over a lossy simulated link.
//! - [`auth::digest`]: Digest authentication with MD5, SHA-256 and SHA-512-256, stateless HMAC
//!   nonces, replay protection and constant-time checks; credentials stored as HA1 only.
//!
//! Still to come (issue 3): UDP/TCP drivers, registrar and location store (SQLite), B2BUA calls
//! anchored in the media plane over gRPC, configuration, sipp scenarios. Until then the
//! `control-plane` binary says it is not implemented and exits 2.
#![forbid(unsafe_code)]

pub mod auth;
pub mod b2bua;
pub mod config;
pub mod driver;
pub mod media;
pub mod registrar;
pub mod sdp;
pub mod service;
pub mod sip;
pub mod store;

#[cfg(test)]
mod service_tests;
