//! SIP: message syntax and checks ([`message`]), the RFC 3261 §17 transaction layer
//! ([`transaction`]), STUN keep-alives on the SIP UDP port ([`stun`]), and the virtual-time
//! harness that tests it (`harness`, tests only).

pub mod message;
pub mod stun;
pub mod transaction;

#[cfg(test)]
mod harness;

pub use message::{bad_request, parse, Framing, ParseError};
