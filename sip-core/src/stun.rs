//! STUN Binding on the SIP UDP port (RFC 5389), the keep-alive of SIP outbound over UDP (RFC
//! 5626 §4.4.2): a phone behind NAT sends Binding requests to keep its mapping open and learns
//! its public address from the answer's XOR-MAPPED-ADDRESS.
//!
//! Only what that needs: a Binding request (with or without attributes, which are ignored) gets a
//! Binding success response carrying XOR-MAPPED-ADDRESS and FINGERPRINT. Anything else that
//! looks like STUN is ignored; nothing here panics on any input.

use std::net::SocketAddr;

/// The magic cookie every RFC 5389 message carries at bytes 4..8.
const MAGIC_COOKIE: u32 = 0x2112_A442;
const BINDING_REQUEST: u16 = 0x0001;
const BINDING_SUCCESS: u16 = 0x0101;
const XOR_MAPPED_ADDRESS: u16 = 0x0020;
const FINGERPRINT: u16 = 0x8028;

/// Whether a datagram is STUN rather than SIP: the two top bits zero and the magic cookie
/// (SIP starts with a letter).
pub fn is_stun(datagram: &[u8]) -> bool {
    datagram.len() >= 20
        && datagram[0] & 0xc0 == 0
        && u32::from_be_bytes([datagram[4], datagram[5], datagram[6], datagram[7]]) == MAGIC_COOKIE
}

/// The answer to a Binding request from `source`, or `None` for any other (or malformed) STUN.
pub fn binding_response(datagram: &[u8], source: SocketAddr) -> Option<Vec<u8>> {
    if !is_stun(datagram) {
        return None;
    }
    let kind = u16::from_be_bytes([datagram[0], datagram[1]]);
    let length = usize::from(u16::from_be_bytes([datagram[2], datagram[3]]));
    if kind != BINDING_REQUEST || length % 4 != 0 || datagram.len() != 20 + length {
        return None;
    }
    let transaction = datagram.get(8..20)?;
    let mut attribute = Vec::with_capacity(20);
    let port = source.port() ^ (MAGIC_COOKIE >> 16) as u16;
    match source {
        SocketAddr::V4(a) => {
            attribute.extend_from_slice(&[0, 0x01]);
            attribute.extend_from_slice(&port.to_be_bytes());
            attribute.extend_from_slice(&(u32::from(*a.ip()) ^ MAGIC_COOKIE).to_be_bytes());
        }
        SocketAddr::V6(a) => {
            attribute.extend_from_slice(&[0, 0x02]);
            attribute.extend_from_slice(&port.to_be_bytes());
            let mut key = [0u8; 16];
            key[..4].copy_from_slice(&MAGIC_COOKIE.to_be_bytes());
            key[4..].copy_from_slice(transaction);
            attribute.extend(a.ip().octets().iter().zip(key).map(|(b, k)| b ^ k));
        }
    }
    let mut out = Vec::with_capacity(20 + 4 + attribute.len() + 8);
    out.extend_from_slice(&BINDING_SUCCESS.to_be_bytes());
    out.extend_from_slice(&((4 + attribute.len() + 8) as u16).to_be_bytes());
    out.extend_from_slice(&MAGIC_COOKIE.to_be_bytes());
    out.extend_from_slice(transaction);
    out.extend_from_slice(&XOR_MAPPED_ADDRESS.to_be_bytes());
    out.extend_from_slice(&(attribute.len() as u16).to_be_bytes());
    out.extend_from_slice(&attribute);
    // FINGERPRINT: CRC-32 of the message so far (its length already counting this attribute),
    // XORed with 0x5354554e (RFC 5389 §15.5).
    let crc = crc32(&out) ^ 0x5354_554e;
    out.extend_from_slice(&FINGERPRINT.to_be_bytes());
    out.extend_from_slice(&4u16.to_be_bytes());
    out.extend_from_slice(&crc.to_be_bytes());
    Some(out)
}

/// CRC-32 (ISO-HDLC, the one FINGERPRINT uses), bitwise: a few dozen bytes per keep-alive.
fn crc32(data: &[u8]) -> u32 {
    let mut crc = 0xffff_ffffu32;
    for &byte in data {
        crc ^= u32::from(byte);
        for _ in 0..8 {
            crc = if crc & 1 != 0 { (crc >> 1) ^ 0xedb8_8320 } else { crc >> 1 };
        }
    }
    !crc
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn request(transaction: [u8; 12]) -> Vec<u8> {
        let mut r = vec![0x00, 0x01, 0x00, 0x00, 0x21, 0x12, 0xa4, 0x42];
        r.extend_from_slice(&transaction);
        r
    }

    #[test]
    fn binding_request_gets_the_source_as_xor_mapped_address_with_a_valid_fingerprint() {
        let t = [7u8; 12];
        let source: SocketAddr = "192.0.2.1:32853".parse().unwrap();
        let r = binding_response(&request(t), source).expect("answered");
        assert_eq!(&r[0..2], &[0x01, 0x01], "Binding success");
        assert_eq!(&r[8..20], &t, "same transaction");
        assert_eq!(&r[20..24], &[0x00, 0x20, 0x00, 0x08], "XOR-MAPPED-ADDRESS, IPv4");
        let port = u16::from_be_bytes([r[26], r[27]]) ^ 0x2112;
        let ip = u32::from_be_bytes([r[28], r[29], r[30], r[31]]) ^ MAGIC_COOKIE;
        assert_eq!(SocketAddr::from((std::net::Ipv4Addr::from(ip), port)), source);
        assert_eq!(u16::from_be_bytes([r[2], r[3]]) as usize, r.len() - 20);
        let crc = u32::from_be_bytes([r[r.len() - 4], r[r.len() - 3], r[r.len() - 2], r[r.len() - 1]]);
        assert_eq!(crc, crc32(&r[..r.len() - 8]) ^ 0x5354_554e);
        assert_eq!(crc32(b"123456789"), 0xcbf4_3926, "the CRC-32 check value");
    }

    #[test]
    fn sip_and_other_stun_are_not_answered() {
        assert!(!is_stun(b"OPTIONS sip:a SIP/2.0\r\n\r\n"));
        let mut response = request([1; 12]);
        response[1] = 0x01;
        response[0] = 0x01;
        assert_eq!(binding_response(&response, "192.0.2.1:5".parse().unwrap()), None);
        let mut bad_length = request([1; 12]);
        bad_length[3] = 4;
        assert_eq!(binding_response(&bad_length, "192.0.2.1:5".parse().unwrap()), None);
    }

    proptest! {
        #[test]
        fn any_datagram_is_handled_without_panicking(b in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = binding_response(&b, "[2001:db8::1]:5060".parse().unwrap());
        }
    }
}
