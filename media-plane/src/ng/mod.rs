//! rtpengine's ng control protocol, so that Kamailio's and OpenSIPS's rtpengine modules can use
//! this media plane as their media tier by changing one address.
//!
//! ```text
//!   datagram ──► bencode::unframe ──► cache (resent cookie? same reply) ──► request::Request
//!                                                                              │
//!   reply ◄── bencode::frame ◄── service::NgService (calls, monologues, legs) ◄─┘
//!                                   │ Offer/Answer/CreateLeg/DeleteLeg/GetStats
//!                                   ▼
//!                              api::MediaService (the gRPC service's own code)
//! ```
//!
//! `bencode`, `request` and `cache` are the `ng-protocol` crate (no I/O); `service` holds the
//! calls; `server` is the UDP socket. `docs/ng-protocol.md` lists every command and flag as
//! supported, ignored or refused.
pub use ng_protocol::{bencode, cache, request};
pub mod server;
pub mod service;

pub use service::{NgService, NgTimeouts};
