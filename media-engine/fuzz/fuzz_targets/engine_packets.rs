//! The engine's network boundary: arbitrary datagrams from arbitrary sources to bridged legs (mux and
//! non-mux) never panic, and every packet is either forwarded or counted as a drop.
#![no_main]
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use media_engine::engine::{Engine, EngineConfig, LegSpec, Remote};

fuzz_target!(|data: &[u8]| {
    let now = Instant::now();
    let mut e = Engine::new(EngineConfig { media_timeout: Duration::from_secs(60) });
    let remote: SocketAddr = "10.0.0.2:5000".parse().unwrap();
    let _ = e.create_leg(1, 30000, LegSpec::default(), now);
    let _ = e.create_leg(2, 30002, LegSpec { remote: Remote::locked(remote), rtcp_mux: true, ..Default::default() }, now);
    let _ = e.create_bridge(9, 1, 2);
    // Input: records of [port selector, source selector, len, bytes…].
    let mut rest = data;
    let mut n = 0u64;
    while rest.len() >= 3 {
        let (port, src, len) = (30000 + u16::from(rest[0] % 5), rest[1], usize::from(rest[2]));
        rest = &rest[3..];
        let take = len.min(rest.len());
        let src = SocketAddr::from(([10, 0, 0, src % 4], 5000 + u16::from(src >> 6)));
        let _ = e.handle_packet(port, src, &rest[..take], now);
        rest = &rest[take..];
        n += 1;
    }
    let c = e.counters();
    assert_eq!(c.packets_in, n);
    assert_eq!(c.packets_in, c.packets_forwarded + c.drops.total());
});
