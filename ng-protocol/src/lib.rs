//! # ng-protocol
//!
//! rtpengine's ng control protocol without I/O: the bencode codec and the `<cookie> <dictionary>`
//! framing ([`bencode`]), a request read into what a media plane acts on, with errors worded as
//! rtpengine words them ([`request`]), and the replies kept by cookie so a resent request is not
//! run twice ([`cache`], time passed in). It depends on no runtime, socket or clock crate: the
//! media plane's ng listener and the load tools' ng client do the I/O.
pub mod bencode;
pub mod cache;
pub mod request;
