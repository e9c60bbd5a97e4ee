//! SDP parsing accepts any bytes without panicking.
#![no_main]
use control_plane::sdp::Sdp;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(sdp) = Sdp::parse(data) {
        let _ = (sdp.active().len(), sdp.any_active());
    }
});
