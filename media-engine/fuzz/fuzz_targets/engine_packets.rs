//! The engine's network boundary: arbitrary datagrams from arbitrary sources to bridged legs (mux and
//! non-mux, one bridge in place and one across two cores) never panic, and every packet is
//! forwarded, handed to the other core (which sends it or counts a drop), or counted as a drop.
#![no_main]
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use media_engine::engine::{Engine, EngineConfig, LegSpec, Remote, Verdict, MAX_TRANSMIT};

fuzz_target!(|data: &[u8]| {
    let now = Instant::now();
    let config = EngineConfig { media_timeout: Duration::from_secs(60), core: 0, seed: 7, wall: None };
    let mut e = Engine::new(config);
    let mut other = Engine::new(EngineConfig { core: 1, ..config });
    let remote: SocketAddr = "10.0.0.2:5000".parse().unwrap();
    let _ = e.create_leg(1, 30000, LegSpec::default(), now);
    let _ = e.create_leg(2, 30002, LegSpec { remote: Remote::locked(remote), rtcp_mux: true, ..Default::default() }, now);
    let _ = e.create_bridge(9, 1, 2);
    // Leg 3 here, leg 4 on the other core: a cross-core bridge.
    let _ = e.create_leg(3, 30004, LegSpec::default(), now);
    let _ = other.create_leg(4, 30006, LegSpec { remote: Remote::locked(remote), ..Default::default() }, now);
    let _ = e.link_remote(10, 3, 1, 4, None, true);
    let _ = other.link_remote(10, 4, 0, 3, None, false);
    // Input: records of [port selector, source selector, len, bytes…].
    let mut rest = data;
    let mut n = 0u64;
    let mut buf = [0u8; MAX_TRANSMIT];
    while rest.len() >= 3 {
        let (port, src, len) = (30000 + u16::from(rest[0] % 7), rest[1], usize::from(rest[2]));
        rest = &rest[3..];
        let take = len.min(rest.len());
        let src = SocketAddr::from(([10, 0, 0, src % 4], 5000 + u16::from(src >> 6)));
        if let Verdict::Handoff { core, handoff } = e.handle_packet(port, src, &rest[..take], now) {
            assert_eq!(core, 1);
            let _ = other.handle_handoff(&handoff, &rest[..take], now);
            while let Some(t) = other.poll_transmit(&mut buf) {
                // Leg 4 sends RTP from 30006 and (no rtcp-mux) RTCP from 30007.
                assert!(t.len <= MAX_TRANSMIT && (t.from_port == 30006 || t.from_port == 30007));
            }
        }
        rest = &rest[take..];
        n += 1;
    }
    let (c, o) = (e.counters(), other.counters());
    assert_eq!(c.packets_in, n);
    assert_eq!(c.packets_in, c.packets_forwarded + c.packets_handed_off + c.packets_consumed + c.drops.total());
    assert_eq!(c.packets_handed_off, o.packets_forwarded + o.packets_consumed + o.drops.total());
});
