//! SDP parsing accepts any bytes without panicking.
#![no_main]
use control_plane::sdp::Sdp;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(sdp) = Sdp::parse(data) {
        for s in sdp.streams() {
            let _ = (s.is_active(), s.address, s.direction, s.rtcp_mux);
        }
    }
});
