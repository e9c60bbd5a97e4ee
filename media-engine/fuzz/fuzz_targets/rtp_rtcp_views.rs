//! The RTP/RTCP packet views accept any bytes without panicking.
#![no_main]
use libfuzzer_sys::fuzz_target;
use media_engine::wire::{is_rtcp_on_muxed_port, RtcpPacket, RtpPacket};

fuzz_target!(|data: &[u8]| {
    if let Ok(p) = RtpPacket::new_checked(data) {
        let _ = (p.marker(), p.payload_type(), p.sequence_number(), p.timestamp(), p.ssrc(), p.after_header());
    }
    if let Ok(p) = RtcpPacket::new_checked(data) {
        let _ = p.packet_type();
    }
    let _ = is_rtcp_on_muxed_port(data);
});
