//! SIP: message syntax and checks ([`message`]), the RFC 3261 §17 transaction layer
//! ([`transaction`]), and the virtual-time harness that tests it (`harness`, tests only).

pub mod message;
pub mod transaction;

#[cfg(test)]
mod harness;

pub use message::{bad_request, parse, Framing, ParseError};
