//! Authentication of SIP requests: HTTP Digest ([`digest`]) for REGISTER (401) and for calls
//! (407).

pub mod digest;
