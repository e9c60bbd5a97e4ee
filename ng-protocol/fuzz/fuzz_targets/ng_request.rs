//! Any datagram on the ng port: framing, bencode and the request reader never panic, what decodes
//! re-encodes to the same value, and the reply cache takes any cookie.
#![no_main]
use std::time::Instant;

use libfuzzer_sys::fuzz_target;
use ng_protocol::bencode::{unframe, Value};
use ng_protocol::cache::ReplyCache;
use ng_protocol::request::Request;

fuzz_target!(|data: &[u8]| {
    if let Ok(v) = Value::decode(data) {
        assert_eq!(Value::decode(&v.encode()).as_ref(), Ok(&v));
        let _ = Request::parse(&v);
    }
    if let Ok((cookie, msg)) = unframe(data) {
        let _ = Request::parse(&msg);
        let mut cache = ReplyCache::new(4, 1 << 16);
        let peer = "127.0.0.1:1".parse().unwrap();
        let _ = cache.begin(peer, cookie, Instant::now());
        cache.finish(peer, cookie, data.into());
    }
});
