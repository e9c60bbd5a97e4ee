//! Authentication of SIP requests: HTTP Digest ([`digest`]) for REGISTER (401) and for calls
//! (407), with the choice of algorithm per request in [`policy`].

pub mod digest;
pub mod policy;
