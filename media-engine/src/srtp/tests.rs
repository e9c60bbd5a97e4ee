//! Known answers: RFC 3711 Appendix B.3's master key and salt (AES-CM) and RFC 7714's GCM key
//! layout, with the protected packets libsrtp's own validation uses (SSRC 0xcafebabe, sequence
//! 0x1234, ROC 0, SRTCP index 1).

use super::*;

const AES_CM_KEY: [u8; 30] = [
    0xe1, 0xf9, 0x7a, 0x0d, 0x3e, 0x01, 0x8b, 0xe0, 0xd6, 0x4f, 0xa3, 0x2c, 0x06, 0xde, 0x41, 0x39, // master key
    0x0e, 0xc6, 0x75, 0xad, 0x49, 0x8a, 0xfe, 0xeb, 0xb6, 0x96, 0x0b, 0x3a, 0xab, 0xe6, // master salt
];
const GCM_KEY: [u8; 28] = [
    0x00, 0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x08, 0x09, 0x0a, 0x0b, 0x0c, 0x0d, 0x0e, 0x0f, // key
    0xa0, 0xa1, 0xa2, 0xa3, 0xa4, 0xa5, 0xa6, 0xa7, 0xa8, 0xa9, 0xaa, 0xab, // salt
];

fn rtp_plain() -> Vec<u8> {
    let mut p = vec![0x80, 0x0f, 0x12, 0x34, 0xde, 0xca, 0xfb, 0xad, 0xca, 0xfe, 0xba, 0xbe];
    p.extend_from_slice(&[0xab; 16]);
    p
}

fn rtcp_plain() -> Vec<u8> {
    let mut p = vec![0x81, 0xc8, 0x00, 0x0b, 0xca, 0xfe, 0xba, 0xbe];
    p.extend_from_slice(&[0xab; 16]);
    p
}

const AES_CM_RTP: [u8; 38] = [
    0x80, 0x0f, 0x12, 0x34, 0xde, 0xca, 0xfb, 0xad, 0xca, 0xfe, 0xba, 0xbe, 0x4e, 0x55, 0xdc, 0x4c, 0xe7, 0x99, 0x78, 0xd8, 0x8c, 0xa4,
    0xd2, 0x15, 0x94, 0x9d, 0x24, 0x02, 0xb7, 0x8d, 0x6a, 0xcc, 0x99, 0xea, 0x17, 0x9b, 0x8d, 0xbb,
];
const AES_CM_RTCP: [u8; 38] = [
    0x81, 0xc8, 0x00, 0x0b, 0xca, 0xfe, 0xba, 0xbe, 0x71, 0x28, 0x03, 0x5b, 0xe4, 0x87, 0xb9, 0xbd, 0xbe, 0xf8, 0x90, 0x41, 0xf9, 0x77,
    0xa5, 0xa8, 0x80, 0x00, 0x00, 0x01, 0x99, 0x3e, 0x08, 0xcd, 0x54, 0xd6, 0xc1, 0x23, 0x07, 0x98,
];
const GCM_RTP: [u8; 44] = [
    0x80, 0x0f, 0x12, 0x34, 0xde, 0xca, 0xfb, 0xad, 0xca, 0xfe, 0xba, 0xbe, 0xc5, 0x00, 0x2e, 0xde, 0x04, 0xcf, 0xdd, 0x2e, 0xb9, 0x11,
    0x59, 0xe0, 0x88, 0x0a, 0xa0, 0x6e, 0xd2, 0x97, 0x68, 0x26, 0xf7, 0x96, 0xb2, 0x01, 0xdf, 0x31, 0x31, 0xa1, 0x27, 0xe8, 0xa3, 0x92,
];
const GCM_RTCP: [u8; 44] = [
    0x81, 0xc8, 0x00, 0x0b, 0xca, 0xfe, 0xba, 0xbe, 0xc9, 0x8b, 0x8b, 0x5d, 0xf0, 0x39, 0x2a, 0x55, 0x85, 0x2b, 0x6c, 0x21, 0xac, 0x8e,
    0x70, 0x25, 0xc5, 0x2c, 0x6f, 0xbe, 0xa2, 0xb3, 0xb4, 0x46, 0xea, 0x31, 0x12, 0x3b, 0xa8, 0x8c, 0xe6, 0x1e, 0x80, 0x00, 0x00, 0x01,
];

fn key(suite: SrtpSuite, bytes: &[u8]) -> SdesKey {
    SdesKey { tag: 1, suite, key: bytes.to_vec(), lifetime: None }
}

/// A context whose both keys are `bytes`: what it protects, it can unprotect.
fn context(suite: SrtpSuite, bytes: &[u8]) -> SrtpContext {
    SrtpContext::new(SrtpKeys { remote: key(suite, bytes), local: key(suite, bytes) }).expect("libsrtp takes the key")
}

#[test]
fn aes_cm_128_hmac_sha1_80_matches_the_known_packets_both_ways() {
    let mut c = context(SrtpSuite::AesCm128HmacSha1_80, &AES_CM_KEY);
    let mut p = rtp_plain();
    c.protect(&mut p, false).unwrap();
    assert_eq!(p, AES_CM_RTP);
    let mut p = rtcp_plain();
    c.protect(&mut p, true).unwrap();
    assert_eq!(p, AES_CM_RTCP);
    let mut p = AES_CM_RTP.to_vec();
    c.unprotect(&mut p, false).unwrap();
    assert_eq!(p, rtp_plain());
    let mut p = AES_CM_RTCP.to_vec();
    c.unprotect(&mut p, true).unwrap();
    assert_eq!(p, rtcp_plain());
}

#[test]
fn aes_cm_128_hmac_sha1_32_truncates_the_rtp_tag_to_four_bytes() {
    let mut c = context(SrtpSuite::AesCm128HmacSha1_32, &AES_CM_KEY);
    let mut p = rtp_plain();
    c.protect(&mut p, false).unwrap();
    assert_eq!(p, AES_CM_RTP[..32]);
    let mut p = rtcp_plain();
    c.protect(&mut p, true).unwrap();
    assert_eq!(p, AES_CM_RTCP, "SRTCP keeps the 80-bit tag");
}

#[test]
fn aead_aes_128_gcm_matches_the_known_packets_both_ways() {
    let mut c = context(SrtpSuite::AeadAes128Gcm, &GCM_KEY);
    let mut p = rtp_plain();
    c.protect(&mut p, false).unwrap();
    assert_eq!(p, GCM_RTP);
    let mut p = rtcp_plain();
    c.protect(&mut p, true).unwrap();
    assert_eq!(p, GCM_RTCP);
    let mut p = GCM_RTP.to_vec();
    c.unprotect(&mut p, false).unwrap();
    assert_eq!(p, rtp_plain());
}

#[test]
fn tampered_replayed_and_expired_packets_are_refused_by_reason() {
    let mut c = context(SrtpSuite::AesCm128HmacSha1_80, &AES_CM_KEY);
    let mut tampered = AES_CM_RTP.to_vec();
    tampered[20] ^= 1;
    assert_eq!(c.unprotect(&mut tampered, false), Err(SrtpFailure::Auth));
    let mut first = AES_CM_RTP.to_vec();
    c.unprotect(&mut first, false).unwrap();
    let mut again = AES_CM_RTP.to_vec();
    assert_eq!(c.unprotect(&mut again, false), Err(SrtpFailure::Replay));
    let mut short = vec![0x80, 0x00];
    assert!(c.unprotect(&mut short, false).is_err());

    let mut limited = key(SrtpSuite::AesCm128HmacSha1_80, &AES_CM_KEY);
    limited.lifetime = Some(1);
    let mut c = SrtpContext::new(SrtpKeys { remote: limited.clone(), local: limited }).unwrap();
    c.protect(&mut rtp_plain(), false).unwrap();
    assert_eq!(c.protect(&mut rtp_plain(), false), Err(SrtpFailure::KeyExpired));
}

#[test]
fn sdes_lines_parse_and_print_and_bad_ones_say_why() {
    let line = "1 AES_CM_128_HMAC_SHA1_80 inline:4fl6DT4Bi+DWT6MsBt5BOQ7Gda1Jiv7rtpYLOqvm|2^31";
    let k = SdesKey::parse(line).unwrap();
    assert_eq!((k.tag, k.suite, k.key.as_slice(), k.lifetime), (1, SrtpSuite::AesCm128HmacSha1_80, &AES_CM_KEY[..], Some(1 << 31)));
    assert_eq!(SdesKey::parse(&k.to_attribute()).unwrap().key, k.key);
    assert!(!format!("{k:?}").contains("4fl6"), "keys are not printed");
    assert_eq!(SdesKey::parse("1 F8_128_HMAC_SHA1_80 inline:abc"), Err(SdesError::Suite("F8_128_HMAC_SHA1_80".into())));
    assert_eq!(SdesKey::parse("1 AES_CM_128_HMAC_SHA1_80 inline:AAAA"), Err(SdesError::Key(30)));
    assert_eq!(SdesKey::parse(&format!("{line}|1:4")), Err(SdesError::Mki));
    assert!(matches!(SdesKey::parse("x"), Err(SdesError::Syntax(_))));
    assert!(matches!(
        SdesKey::parse("1 AES_CM_128_HMAC_SHA1_80 inline:4fl6DT4Bi+DWT6MsBt5BOQ7Gda1Jiv7rtpYLOqvm|2^99"),
        Err(SdesError::Lifetime(_))
    ));
    let mut n = 0u8;
    let fresh = SdesKey::generate(2, SrtpSuite::AeadAes128Gcm, &mut |b: &mut [u8]| {
        b.iter_mut().for_each(|x| {
            n = n.wrapping_add(1);
            *x = n
        })
    });
    assert_eq!(fresh.key.len(), 28);
    assert!(fresh.to_attribute().starts_with("2 AEAD_AES_128_GCM inline:"));
}

mod properties {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn unprotecting_any_bytes_never_panics_and_accepts_no_forgery(bytes in proptest::collection::vec(any::<u8>(), 0..200), rtcp: bool) {
            let mut c = context(SrtpSuite::AesCm128HmacSha1_80, &AES_CM_KEY);
            let mut buf = bytes;
            prop_assert!(c.unprotect(&mut buf, rtcp).is_err());
        }

        #[test]
        fn any_crypto_line_parses_or_says_why(line in "[ -~]{0,80}") {
            let _ = SdesKey::parse(&line);
        }
    }
}

#[test]
fn rekeying_with_the_endpoints_key_unchanged_keeps_its_replay_state() {
    let mut c = context(SrtpSuite::AesCm128HmacSha1_80, &AES_CM_KEY);
    let mut first = AES_CM_RTP.to_vec();
    c.unprotect(&mut first, false).unwrap();
    // A re-INVITE: a new key of ours, the endpoint's the same.
    let mut ours = key(SrtpSuite::AesCm128HmacSha1_80, &[9; 30]);
    ours.tag = 2;
    c.rekey(SrtpKeys { remote: key(SrtpSuite::AesCm128HmacSha1_80, &AES_CM_KEY), local: ours.clone() }).unwrap();
    let mut again = AES_CM_RTP.to_vec();
    assert_eq!(c.unprotect(&mut again, false), Err(SrtpFailure::Replay), "the inbound session went on");
    assert_eq!(c.keys().local, ours);
    // A key of another suite is refused and changes nothing.
    let gcm = key(SrtpSuite::AeadAes128Gcm, &GCM_KEY);
    assert!(c.rekey(SrtpKeys { remote: gcm, local: ours.clone() }).is_err());
    assert_eq!(c.keys().local, ours);
}
