//! Authentication of SIP requests: HTTP Digest (`sip_core::digest`) for REGISTER (401) and for calls
//! (407), with the choice of algorithm per request in [`policy`].

pub mod policy;
