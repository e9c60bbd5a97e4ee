//! SDP parsing accepts any bytes without panicking, and anchoring what parsed yields SDP that
//! parses again with the same number of streams.
#![no_main]
use control_plane::sdp::Sdp;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(sdp) = Sdp::parse(data) {
        // As the B2BUA does: a media-plane port for each active stream, rejected ones keep 0.
        let ports: Vec<Option<u16>> =
            sdp.streams().iter().enumerate().map(|(i, s)| s.is_active().then_some(30_000 + i as u16 * 2)).collect();
        let anchored = sdp.anchor("198.51.100.1".parse().unwrap(), &ports);
        if anchored.len() <= control_plane::sdp::MAX_SDP {
            let again = Sdp::parse(anchored.as_bytes()).expect("anchored SDP parses");
            assert_eq!(again.streams().len(), sdp.streams().len());
        }
    }
});
