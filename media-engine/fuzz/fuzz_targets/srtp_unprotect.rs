//! SRTP/SRTCP unprotection and SDES key parsing accept any bytes without panicking, and
//! nothing unauthenticated is accepted.
#![no_main]
use libfuzzer_sys::fuzz_target;
use media_engine::srtp::{SdesKey, SrtpContext, SrtpKeys, SrtpSuite};

fuzz_target!(|data: &[u8]| {
    let _ = SdesKey::parse(&String::from_utf8_lossy(data));
    let Some((&selector, packet)) = data.split_first() else { return };
    let suite = SrtpSuite::ALL[usize::from(selector) % SrtpSuite::ALL.len()];
    let key = SdesKey { tag: 1, suite, key: vec![7; suite.key_len()], lifetime: None };
    let mut ctx = SrtpContext::new(SrtpKeys { remote: key.clone(), local: key }).expect("fixed keys are valid");
    let mut buf = packet.to_vec();
    let accepted = ctx.unprotect(&mut buf, selector & 0x80 != 0).is_ok();
    // A forgery that passes a 32-bit or longer tag would be a finding.
    assert!(!accepted || packet.len() >= 12 + 4);
});
