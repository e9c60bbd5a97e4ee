//! The callback triggers' bodies (web page, API, webhook, status) and a RADIUS server's answer
//! are read from any bytes without panicking; what they accept is within bounds.
#![no_main]
use control_plane::billing::radius::{decode_access_answer, is_response};
use control_plane::callback::http::{parse_api, parse_status, parse_web, parse_webhook};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok((request, pin)) = parse_web(data) {
        assert!(request.a.len() <= 256 && pin.len() <= 256);
    }
    let _ = parse_api(data);
    let _ = parse_status(data);
    if let Ok((from, text)) = parse_webhook(data) {
        assert!(from.len() <= 256 && text.len() <= 256);
    }
    let request = [4u8, 7, 0, 20, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
    let _ = is_response(data, &request, "secret");
    let _ = is_response(&request, data, "secret");
    let _ = decode_access_answer(data, &request, "secret", false);
    let _ = decode_access_answer(data, &request, "secret", true);
});
