//! SIP parsing accepts any bytes without panicking, on both framings; a stateless answer built
//! for a rejected request never panics and is well framed; stream framing never panics; and a
//! message that parses can be fed to a transaction layer and re-encoded without panicking.
#![no_main]
use std::time::Instant;

use sip_core::message::{bad_request, encode, next_frame, parse, Framing};
use sip_core::transaction::{Peer, TimerConfig, TransactionLayer};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = next_frame(data);
    for framing in [Framing::Datagram, Framing::Stream] {
        match parse(data, framing) {
            Ok(message) => {
                let wire = encode(&message);
                assert!(parse(&wire, Framing::Stream).is_ok(), "re-encoded message no longer parses");
                let mut layer = TransactionLayer::new(TimerConfig::default());
                let now = Instant::now();
                layer.handle_message(message, Peer::udp("192.0.2.1:5060".parse().unwrap()), now);
                while layer.poll_transmit().is_some() {}
                while layer.poll_event().is_some() {}
                layer.handle_timeout(now + std::time::Duration::from_secs(64));
            }
            Err(error) => {
                if let Some(answer) = bad_request(data, &error) {
                    assert!(answer.starts_with(b"SIP/2.0 ") && answer.ends_with(b"\r\n\r\n"));
                }
            }
        }
    }
});
