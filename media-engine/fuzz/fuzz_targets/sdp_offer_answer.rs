//! SDP offer/answer accepts any offer and any answer without panicking, and what it writes
//! parses again with the same number of streams.
#![no_main]
use libfuzzer_sys::fuzz_target;
use media_engine::sdp::{self, Anchor, CodecPolicy, Transport};

fuzz_target!(|data: &[u8]| {
    let Some((&flags, rest)) = data.split_first() else { return };
    // The offer, then a NUL, then the answer.
    let (offer, answer) = match rest.iter().position(|b| *b == 0) {
        Some(i) => (&rest[..i], &rest[i + 1..]),
        None => (rest, &[][..]),
    };
    let mut policy = CodecPolicy::default();
    if flags & 1 != 0 {
        policy.transcode = vec!["opus".into(), "G722".into()];
    }
    if flags & 2 != 0 {
        policy.mask = vec!["all".into()];
    }
    if flags & 4 != 0 {
        policy.strip = vec!["PCMA".into()];
    }
    let anchor = |base: u16| Anchor { ip: "198.51.100.1".parse().unwrap(), ports: (0..8).map(|i| Some(base + i * 2)).collect() };
    let transport = [Transport::Same, Transport::Rtp, Transport::Srtp][usize::from(flags >> 3) % 3];
    let mut random = |buf: &mut [u8]| buf.fill(0x5a);
    let Ok(offered) = sdp::offer(offer, &policy, transport, &anchor(30_000), &mut random) else { return };
    let again = sdp::parse(offered.sdp.as_bytes()).expect("a rewritten offer parses");
    assert_eq!(again.medias.len(), offered.state.offerer().count());
    if let Ok(answered) = sdp::answer(&offered.state, answer, &anchor(40_000)) {
        let again = sdp::parse(answered.sdp.as_bytes()).expect("a rewritten answer parses");
        assert_eq!(again.medias.len(), answered.streams.len());
    }
});
