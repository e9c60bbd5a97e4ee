//! Ethernet/IP/UDP frame parsing (AF_XDP path) accepts any bytes without panicking, and rewriting a
//! frame it accepted never panics either.
#![no_main]
use libfuzzer_sys::fuzz_target;
use media_engine::frame::{parse, rewrite, Rewrite};

fuzz_target!(|data: &[u8]| {
    let mut buf = data.to_vec();
    if let Ok(p) = parse(&buf) {
        let (src, dst) = if p.src.is_ipv4() {
            ("10.0.0.1:30000".parse().unwrap(), "10.0.0.2:4000".parse().unwrap())
        } else {
            ("[fd00::1]:30000".parse().unwrap(), "[fd00::2]:4000".parse().unwrap())
        };
        let r = Rewrite { src_mac: [2, 0, 0, 0, 0, 1], dst_mac: [2, 0, 0, 0, 0, 2], src, dst };
        rewrite(&mut buf, &p, &r).unwrap();
        assert_eq!(parse(&buf).map(|q| (q.src, q.dst)), Ok((src, dst)));
    }
});
