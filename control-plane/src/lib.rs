//! `control-plane`: the SIP side of the media server: a registrar with digest authentication and
//! a B2BUA that anchors every call's media in the media plane over the `media.v1` gRPC API.
//!
//! ```text
//!   UDP/TCP/TLS (driver) ──► server::ControlPlane: limits, parse (sip_core), TransactionLayer
//!        ├─ REGISTER: sip_core::digest (401/403) ─► registrar ─► store (SQLite)
//!        ├─ INVITE: 483, digest (407), offer checks ─► routing (settings, registrar, routes)
//!        │     callback DIDs ─► callback engine        │ Plan (stages of branches)
//!        │     trunk legs ─► billing (hold credit) / RADIUS (Access-Request) ─┐
//!        └─ calls ─► b2bua::B2bua ◄──────────────────────────────────────────┘ Outcome ─► next
//!                      │ SipOut (responses, requests, ACKs)   │ CallEvent (refer, hold, ivr,
//!                      │                                      │ updates, ended ─► CDRs, settle)
//!                      └─ MediaRequest ─► media::MediaClient (tonic) ─► media plane
//!   api (control.v1 gRPC), callback HTTP ─► the core's loop: originate, callbacks, accounts
//! ```
//!
//! - The SIP protocol itself (messages, transactions, digest, STUN) is the `sip-core` crate, which
//!   has no I/O; this crate is the server built on it.
//! - [`auth::policy`]: which digest algorithms a subscriber or domain may use.
//! - [`server`]: [`ControlPlane`](server::ControlPlane), the sans-IO core: bytes, time and
//!   media-plane replies in; transmissions, media-plane requests and counters out. It owns the
//!   transaction layer and hands calls to the B2BUA after authentication and [`routing`].
//! - [`registrar`]: the location table (RFC 3261 §10.3); [`store`]: subscribers, registrations,
//!   CDRs, accounts and credit holds behind a trait, SQLite by default, PostgreSQL for several
//!   hosts.
//! - [`b2bua`]: [`B2bua`](b2bua::B2bua), a state machine of its own: calls (two
//!   `sip_core::dialog` dialogs each, forks per stage, media anchored, every allocation released
//!   once), delayed offer, calls the API places, hold with music on hold, blind and attended
//!   transfer; [`sdp`]: the SDP checks it needs; [`media`]: the media-plane requests and the
//!   tonic client.
//! - [`routing`]: where a call goes and what follows an unanswered stage: registered contacts
//!   (parallel or sequential forking), trunks by prefix, forwarding, find-me, screening, the
//!   PSTN fallback, redirects.
//! - [`now`]: the clocks handed to the sans-IO parts.
//! - [`config`]: the TOML file; [`driver`]: tokio sockets, timers and the media client around the core.
//! - [`api`]: the control.v1 gRPC API (originate, hang up, list and watch calls, settings),
//!   executed on the core's loop.
//! - [`settings`]: per-subscriber call settings (forwarding, find-me, screening, PSTN fallback).
//! - [`billing`]: rating, prepaid and postpaid accounts (credit held before a trunk rings, the
//!   call cut off when it runs out), CDRs, RADIUS accounting and authorisation.
//! - [`callback`]: the callback engine (the customer called, a prompt, the destination keyed in,
//!   both joined) and its HTTP triggers (API, web page, webhook), missed-call and IVR numbers.
//!
//! Like the media plane's engine, the core never reads a clock or a socket, so the transaction
//! harness (in `sip-core`) and the B2BUA tests (`server_tests`) run minutes of SIP timers in
//! microseconds.
#![forbid(unsafe_code)]

pub mod api;
pub mod auth;
pub mod b2bua;
pub mod billing;
pub mod callback;
pub mod config;
pub mod dialog_events;
pub mod driver;
pub mod features;
pub mod limits;
pub mod media;
pub mod media_pool;
pub mod metrics;
pub mod now;
pub mod registrar;
pub mod routing;
pub mod sdp;
pub mod server;
pub mod settings;
pub mod store;

#[cfg(test)]
mod billing_tests;
#[cfg(test)]
mod callback_tests;
#[cfg(test)]
mod feature_tests;
#[cfg(test)]
mod server_tests;
#[cfg(test)]
mod torture_tests;
