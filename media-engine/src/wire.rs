//! Zero-copy views of RTP and RTCP packets with checked accessors.
//!
//! The relay reads only what it needs to classify a packet (version, payload type byte) and never
//! writes the payload. A view is created with [`RtpPacket::new_checked`] / [`RtcpPacket::new_checked`],
//! which validate the fixed header; accessors after that cannot panic.

/// Fixed RTP header length (RFC 3550 §5.1).
pub const RTP_HEADER_LEN: usize = 12;
/// Fixed RTCP header length (RFC 3550 §6.4).
pub const RTCP_HEADER_LEN: usize = 8;

/// Why a buffer is not a valid RTP or RTCP packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("packet of {0} bytes is shorter than the fixed header")]
    Truncated(usize),
    #[error("version {0}, expected 2")]
    BadVersion(u8),
    #[error("CSRC list, header extension or padding longer than the packet")]
    BadLength,
}

/// A read-only RTP packet view.
#[derive(Debug, Clone, Copy)]
pub struct RtpPacket<T: AsRef<[u8]>> {
    buf: T,
}

impl<T: AsRef<[u8]>> RtpPacket<T> {
    /// Validates length and version.
    pub fn new_checked(buf: T) -> Result<Self, WireError> {
        check_header(buf.as_ref(), RTP_HEADER_LEN)?;
        Ok(Self { buf })
    }

    fn b(&self) -> &[u8] {
        self.buf.as_ref()
    }
    pub fn marker(&self) -> bool {
        self.b()[1] & 0x80 != 0
    }
    pub fn payload_type(&self) -> u8 {
        self.b()[1] & 0x7f
    }
    pub fn sequence_number(&self) -> u16 {
        u16::from_be_bytes([self.b()[2], self.b()[3]])
    }
    pub fn timestamp(&self) -> u32 {
        u32::from_be_bytes([self.b()[4], self.b()[5], self.b()[6], self.b()[7]])
    }
    pub fn ssrc(&self) -> u32 {
        u32::from_be_bytes([self.b()[8], self.b()[9], self.b()[10], self.b()[11]])
    }
    /// Bytes after the fixed header (CSRCs and extensions included; the relay does not parse them).
    pub fn after_header(&self) -> &[u8] {
        &self.b()[RTP_HEADER_LEN..]
    }

    /// The payload: after the CSRC list and any header extension, before any padding (RFC 3550
    /// §5.1, §5.3.1). Lengths that run past the packet are [`WireError::BadLength`].
    pub fn payload(&self) -> Result<&[u8], WireError> {
        let b = self.b();
        let csrcs = usize::from(b[0] & 0x0f);
        let mut start = RTP_HEADER_LEN + 4 * csrcs;
        if b[0] & 0x10 != 0 {
            let ext = b.get(start + 2..start + 4).ok_or(WireError::BadLength)?;
            start += 4 + 4 * usize::from(u16::from_be_bytes([ext[0], ext[1]]));
        }
        let mut end = b.len();
        if b[0] & 0x20 != 0 {
            let pad = usize::from(*b.last().ok_or(WireError::BadLength)?);
            end = end.checked_sub(pad).ok_or(WireError::BadLength)?;
        }
        if start > end {
            return Err(WireError::BadLength);
        }
        b.get(start..end).ok_or(WireError::BadLength)
    }
}

/// A read-only RTCP packet view (the first packet of a compound packet).
#[derive(Debug, Clone, Copy)]
pub struct RtcpPacket<T: AsRef<[u8]>> {
    buf: T,
}

impl<T: AsRef<[u8]>> RtcpPacket<T> {
    pub fn new_checked(buf: T) -> Result<Self, WireError> {
        check_header(buf.as_ref(), RTCP_HEADER_LEN)?;
        Ok(Self { buf })
    }
    pub fn packet_type(&self) -> u8 {
        self.buf.as_ref()[1]
    }
}

/// The packets of a compound RTCP packet: (packet type, count field, body after the 4-byte
/// header), stopping at the first malformed length.
pub fn rtcp_compound(mut b: &[u8]) -> impl Iterator<Item = (u8, u8, &[u8])> {
    std::iter::from_fn(move || {
        let header = b.get(..4)?;
        if header[0] >> 6 != 2 {
            return None;
        }
        let len = (usize::from(u16::from_be_bytes([header[2], header[3]])) + 1) * 4;
        let packet = b.get(..len)?;
        b = b.get(len..).unwrap_or_default();
        Some((header[1], header[0] & 0x1f, packet.get(4..).unwrap_or_default()))
    })
}

fn check_header(b: &[u8], min: usize) -> Result<(), WireError> {
    if b.len() < min {
        return Err(WireError::Truncated(b.len()));
    }
    let version = b[0] >> 6;
    if version != 2 {
        return Err(WireError::BadVersion(version));
    }
    Ok(())
}

/// RFC 5761 §4: on a multiplexed port, a second byte in 192..=223 marks RTCP (payload types 64-95
/// with the marker bit are not used by RTP for that reason).
pub fn is_rtcp_on_muxed_port(b: &[u8]) -> bool {
    matches!(b.get(1), Some(192..=223))
}

/// Writes a minimal RTP header into `buf[..12]` (test and load-generator helper).
pub fn write_rtp_header(buf: &mut [u8], pt: u8, seq: u16, ts: u32, ssrc: u32) -> Result<(), WireError> {
    let h = buf.get_mut(..RTP_HEADER_LEN).ok_or(WireError::Truncated(0))?;
    h[0] = 0x80;
    h[1] = pt & 0x7f;
    h[2..4].copy_from_slice(&seq.to_be_bytes());
    h[4..8].copy_from_slice(&ts.to_be_bytes());
    h[8..12].copy_from_slice(&ssrc.to_be_bytes());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn rtp_header_round_trips_through_view() {
        let mut b = [0u8; 20];
        write_rtp_header(&mut b, 8, 0xbeef, 0x01020304, 0xdeadbeef).unwrap();
        let p = RtpPacket::new_checked(&b[..]).unwrap();
        assert_eq!((p.payload_type(), p.sequence_number(), p.timestamp(), p.ssrc()), (8, 0xbeef, 0x01020304, 0xdeadbeef));
        assert!(!p.marker());
        assert_eq!(p.after_header().len(), 8);
    }

    #[test]
    fn payload_skips_csrcs_and_extension_and_drops_padding() {
        let mut b = vec![0u8; 12];
        write_rtp_header(&mut b, 0, 1, 2, 3).unwrap();
        b[0] |= 0x01 | 0x10 | 0x20; // one CSRC, an extension, padding
        b.extend_from_slice(&[9, 9, 9, 9]); // CSRC
        b.extend_from_slice(&[0xbe, 0xde, 0, 1, 7, 7, 7, 7]); // extension header + one word
        b.extend_from_slice(b"voice");
        b.extend_from_slice(&[0, 0, 3]); // 3 bytes of padding
        assert_eq!(RtpPacket::new_checked(&b[..]).unwrap().payload(), Ok(&b"voice"[..]));
        let mut overrun = b.clone();
        overrun[15] = 40; // extension longer than the packet
        overrun[0] &= !0x10;
        overrun[0] |= 0x0f; // fifteen CSRCs
        assert_eq!(RtpPacket::new_checked(&overrun[..]).unwrap().payload(), Err(WireError::BadLength));
        let mut pad = b.clone();
        *pad.last_mut().unwrap() = 200;
        assert_eq!(RtpPacket::new_checked(&pad[..]).unwrap().payload(), Err(WireError::BadLength));
    }

    #[test]
    fn short_and_wrong_version_packets_are_rejected() {
        assert_eq!(RtpPacket::new_checked(&[0x80u8; 11][..]).unwrap_err(), WireError::Truncated(11));
        assert_eq!(RtpPacket::new_checked(&[0x40u8; 12][..]).unwrap_err(), WireError::BadVersion(1));
        assert_eq!(RtcpPacket::new_checked(&[0x80u8; 7][..]).unwrap_err(), WireError::Truncated(7));
        assert!(RtcpPacket::new_checked(&[0x80u8, 200, 0, 1, 0, 0, 0, 0][..]).is_ok());
    }

    #[test]
    fn compound_rtcp_is_split_into_its_packets_and_stops_at_a_bad_length() {
        // An SR (1 report block: 4 + 24 + 24 bytes) followed by an SDES of 2 words, then a
        // header claiming more bytes than remain.
        let mut b = vec![0x81, 200, 0, 12];
        b.extend([0u8; 48]);
        b.extend([0x81, 202, 0, 1, 1, 2, 3, 4]);
        b.extend([0x80, 203, 0, 9]);
        let parts: Vec<(u8, u8, usize)> = rtcp_compound(&b).map(|(pt, count, body)| (pt, count, body.len())).collect();
        assert_eq!(parts, vec![(200, 1, 48), (202, 1, 4)]);
        assert_eq!(rtcp_compound(&[0x40, 200, 0, 0]).count(), 0, "not version 2");
        assert_eq!(rtcp_compound(&[]).count(), 0);
    }

    #[test]
    fn rtcp_sender_report_is_recognised_on_muxed_port() {
        assert!(is_rtcp_on_muxed_port(&[0x80, 200]));
        assert!(is_rtcp_on_muxed_port(&[0x81, 201]));
        assert!(!is_rtcp_on_muxed_port(&[0x80, 0]));
        assert!(!is_rtcp_on_muxed_port(&[0x80]));
    }

    proptest! {
        #[test]
        fn views_never_panic_on_arbitrary_bytes(b in proptest::collection::vec(any::<u8>(), 0..64)) {
            if let Ok(p) = RtpPacket::new_checked(&b[..]) {
                let _ = (p.marker(), p.payload_type(), p.sequence_number(), p.timestamp(), p.ssrc(), p.after_header(), p.payload());
            }
            if let Ok(p) = RtcpPacket::new_checked(&b[..]) { let _ = p.packet_type(); }
            let _ = is_rtcp_on_muxed_port(&b);
        }
    }
}
