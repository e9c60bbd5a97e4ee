//! `sip-core`: the SIP protocol without I/O, for the control plane and its tools.
//!
//! ```text
//!   bytes ──► message::parse ──► transaction::TransactionLayer ──► the transaction user
//!             (rsip + RFC 3261    (RFC 3261 §17 state machines:     (registrar, B2BUA)
//!              checks; 400s)       timers A–M, retransmissions)
//!                                                 dialog::Dialog: RFC 3261 §12 (route sets,
//!                                                 CSeq, targets, early and confirmed dialogs)
//! ```
//!
//! - [`message`]: SIP syntax and the checks `rsip` leaves out; responses and 400s built from raw
//!   bytes; stream framing.
//! - [`transaction`]: INVITE and non-INVITE client and server transactions and the layer that
//!   routes messages to them.
//! - [`digest`]: HTTP Digest (MD5, SHA-256, SHA-512-256) with stateless HMAC nonces, replay
//!   protection and constant-time checks.
//! - [`stun`]: STUN Binding keep-alives on the SIP port (RFC 5626 §4.4.2).
//! - [`random`]: tags, branches and Call-IDs from a seed the caller draws.
//!
//! The crate depends on no runtime, socket or clock: every function takes the time it needs as an
//! argument and randomness comes from a seeded [`random::Random`], so the virtual-time harness
//! (`harness`, tests only) runs minutes of SIP timers in microseconds.
#![forbid(unsafe_code)]

pub mod dialog;
pub mod digest;
pub mod message;
pub mod random;
pub mod stun;
pub mod transaction;

#[cfg(test)]
mod harness;

pub use message::{bad_request, parse, Framing, ParseError};
pub use random::Random;
