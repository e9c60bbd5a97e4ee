//! Digest header parsing and verification accept any text without panicking.
#![no_main]
use std::time::{Duration, UNIX_EPOCH};

use sip_core::digest::{parse_challenge, parse_credentials, ha1, Authenticator, DigestConfig};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let _ = parse_credentials(text);
    let _ = parse_challenge(text);
    let mut auth = Authenticator::new(DigestConfig::new("example.com"), [1; 32]).unwrap();
    let now = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
    let _ = auth.verify(text, "REGISTER", "sip:example.com", now, |user, realm, hash| Some(ha1(hash, user, realm, "pw")));
});
