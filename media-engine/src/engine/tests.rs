use std::net::SocketAddr;
use std::time::Duration;

use media_codecs::signal::tone_power;
use proptest::prelude::*;

use super::*;
use crate::harness::{Harness, Link};
use crate::wire::write_rtp_header;

const A_PORT: u16 = 30000;
const B_PORT: u16 = 30002;

fn cfg() -> EngineConfig {
    EngineConfig { media_timeout: Duration::from_secs(30), core: 0, seed: 7, wall: None }
}
fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}
fn rtp(seq: u16) -> Vec<u8> {
    let mut b = vec![0u8; 172];
    write_rtp_header(&mut b, 0, seq, u32::from(seq) * 160, 0x1234).unwrap();
    b
}
fn rtcp_sr() -> Vec<u8> {
    let mut b = vec![0u8; 28];
    b[0] = 0x80;
    b[1] = 200;
    b[3] = 6;
    b
}
fn seqs(r: &[crate::harness::Received]) -> Vec<u16> {
    r.iter().map(|p| u16::from_be_bytes([p.bytes[2], p.bytes[3]])).collect()
}

/// Two legs bridged: A latches (no remote), B is pinned to `b_remote`.
fn call(h: &mut Harness, b_remote: SocketAddr, mux: bool) {
    let now = h.now();
    h.engine.create_leg(1, A_PORT, LegSpec { rtcp_mux: mux, ..Default::default() }, now).unwrap();
    let spec = LegSpec { remote: Remote::locked(b_remote), rtcp_mux: mux, ..Default::default() };
    h.engine.create_leg(2, B_PORT, spec, now).unwrap();
    h.engine.create_bridge(7, 1, 2).unwrap();
}

#[test]
fn rtp_is_relayed_unchanged_with_sequence_intact() {
    let (a, b) = (addr("10.0.0.1:4000"), addr("10.0.0.2:5000"));
    let mut h = Harness::new(cfg(), Link::default(), 1);
    call(&mut h, b, false);
    for seq in 0..50 {
        h.send(a, A_PORT, &rtp(seq));
        h.advance(Duration::from_millis(20));
    }
    let got = h.take_inbox(b);
    assert_eq!(seqs(&got), (0..50).collect::<Vec<_>>());
    assert!(got.iter().all(|p| p.from_port == B_PORT));
    assert_eq!(got[7].bytes, rtp(7), "payload and header untouched");
    let st = h.engine.leg_stats(2, h.now()).unwrap();
    assert_eq!((st.counters.rtp_packets_out, st.counters.rtp_bytes_out), (50, 50 * 172));
}

#[test]
fn first_packet_latches_remote_and_reverse_direction_flows_to_it() {
    let (a, b) = (addr("10.0.0.1:4000"), addr("10.0.0.2:5000"));
    let mut h = Harness::new(cfg(), Link::default(), 1);
    call(&mut h, b, false);
    // Before A has sent anything, media from B has nowhere to go.
    h.send(b, B_PORT, &rtp(1));
    h.advance(Duration::from_millis(5));
    assert_eq!(h.engine.leg_stats(2, h.now()).unwrap().counters.drops.no_route, 1);
    h.send(a, A_PORT, &rtp(1));
    h.advance(Duration::from_millis(5));
    assert_eq!(h.take_events(), vec![Event::Latched { leg: 1, remote: a, rtcp: false }]);
    h.send(b, B_PORT, &rtp(2));
    h.advance(Duration::from_millis(5));
    assert_eq!(seqs(&h.take_inbox(a)), vec![2]);
    assert!(h.engine.leg_stats(1, h.now()).unwrap().latched);
}

#[test]
fn packets_from_other_source_after_latching_are_dropped_until_relatch() {
    let (a, b, intruder) = (addr("10.0.0.1:4000"), addr("10.0.0.2:5000"), addr("10.9.9.9:666"));
    let mut h = Harness::new(cfg(), Link::default(), 1);
    call(&mut h, b, false);
    h.send(a, A_PORT, &rtp(1));
    h.send(intruder, A_PORT, &rtp(99));
    h.send(intruder, B_PORT, &rtp(98)); // B is pinned by the API
    h.advance(Duration::from_millis(5));
    assert_eq!(seqs(&h.take_inbox(b)), vec![1]);
    assert_eq!(h.engine.leg_stats(1, h.now()).unwrap().counters.drops.wrong_source, 1);
    assert_eq!(h.engine.leg_stats(2, h.now()).unwrap().counters.drops.wrong_source, 1);
    // The control plane re-latches A (NAT rebinding): the next source wins and is then strict.
    h.engine.update_leg(1, None, None, None, true).unwrap();
    let moved = addr("10.0.0.1:4444");
    h.send(moved, A_PORT, &rtp(2));
    h.advance(Duration::from_millis(5));
    h.send(a, A_PORT, &rtp(3));
    h.advance(Duration::from_millis(5));
    assert_eq!(seqs(&h.take_inbox(b)), vec![2]);
    assert_eq!(h.engine.leg_stats(1, h.now()).unwrap().remote, Some(moved));
    assert_eq!(h.engine.leg_stats(1, h.now()).unwrap().counters.drops.wrong_source, 2);
}

#[test]
fn update_leg_remote_redirects_media_and_pins_source() {
    let (a, b, b2) = (addr("10.0.0.1:4000"), addr("10.0.0.2:5000"), addr("10.0.0.3:5000"));
    let mut h = Harness::new(cfg(), Link::default(), 1);
    call(&mut h, b, false);
    h.engine.update_leg(2, Some(b2), None, None, false).unwrap();
    h.send(a, A_PORT, &rtp(1));
    h.advance(Duration::from_millis(5));
    assert!(h.take_inbox(b).is_empty());
    assert_eq!(seqs(&h.take_inbox(b2)), vec![1]);
}

#[test]
fn update_with_remote_and_relatch_sends_to_the_new_remote_then_latches_on_the_real_source() {
    // An endpoint behind NAT: its SDP says 10.0.0.3, its packets come from 192.0.2.9.
    let (a, b, sdp_b, nat_b) = (addr("10.0.0.1:4000"), addr("10.0.0.2:5000"), addr("10.0.0.3:5000"), addr("192.0.2.9:6000"));
    let mut h = Harness::new(cfg(), Link::default(), 1);
    call(&mut h, b, false);
    h.engine.update_leg(2, Some(sdp_b), None, None, true).unwrap();
    h.send(a, A_PORT, &rtp(1));
    h.advance(Duration::from_millis(5));
    assert_eq!(seqs(&h.take_inbox(sdp_b)), vec![1], "sent to the new remote until B speaks");
    h.send(nat_b, B_PORT, &rtp(7));
    h.send(a, A_PORT, &rtp(2));
    h.advance(Duration::from_millis(5));
    assert_eq!(seqs(&h.take_inbox(nat_b)), vec![2], "latched onto B's real source");
    assert_eq!(h.engine.leg_stats(2, h.now()).unwrap().counters.drops.wrong_source, 0);
    // Latched: another source is now refused (after the learning time, even from the SDP's
    // address: the NAT's is the endpoint's).
    h.advance(leg::LEARNING);
    h.send(addr("198.51.100.66:7000"), B_PORT, &rtp(8));
    h.send(sdp_b, B_PORT, &rtp(9));
    h.advance(Duration::from_millis(5));
    assert_eq!(h.engine.leg_stats(2, h.now()).unwrap().counters.drops.wrong_source, 2);
}

#[test]
fn a_stray_packet_from_the_previous_endpoint_cannot_keep_the_leg_from_the_signalled_one() {
    // B's leg is moved to C (a transfer: C's answer gives its address, 192.0.2.3:5002, but its
    // packets leave from another address of its host); B's RTP still in flight arrives first.
    let (a, b, c) = (addr("10.0.0.1:4000"), addr("10.0.0.2:5000"), addr("10.0.0.3:5002"));
    let c_sdp = addr("192.0.2.3:5002");
    let mut h = Harness::new(cfg(), Link::default(), 1);
    call(&mut h, b, false);
    h.send(b, B_PORT, &rtp(1));
    h.advance(Duration::from_millis(5));
    h.engine.update_leg(2, Some(c_sdp), None, None, true).unwrap();
    h.send(b, B_PORT, &rtp(2));
    h.send(a, A_PORT, &rtp(3));
    h.advance(Duration::from_millis(5));
    h.take_inbox(a);
    assert_eq!(seqs(&h.take_inbox(b)), vec![3], "latched (tentatively) onto B's stray packet");
    // C's first packet takes the leg over for good.
    h.send(c, B_PORT, &rtp(10));
    h.send(a, A_PORT, &rtp(4));
    h.advance(Duration::from_millis(5));
    assert_eq!(seqs(&h.take_inbox(c)), vec![4], "C, from the signalled port, gets A's audio");
    assert_eq!(seqs(&h.take_inbox(a)), vec![10], "and A gets C's");
    h.send(b, B_PORT, &rtp(5));
    h.advance(Duration::from_millis(5));
    assert!(h.take_inbox(a).is_empty(), "B's later packets are refused");
    assert_eq!(h.engine.leg_stats(2, h.now()).unwrap().counters.drops.wrong_source, 1);
}

/// Leg 1 on core 0 (port A) and leg 2 on core 1 (port B), joined by cross-core bridge 9.
fn cross_core_call(h: &mut Harness, b_remote: SocketAddr) {
    let now = h.now();
    h.core(0).create_leg(1, A_PORT, LegSpec::default(), now).unwrap();
    let spec = LegSpec { remote: Remote::locked(b_remote), ..Default::default() };
    h.core(1).create_leg(2, B_PORT, spec, now).unwrap();
    h.core(0).link_remote(9, 1, 1, 2, None, true).unwrap();
    h.core(1).link_remote(9, 2, 0, 1, None, false).unwrap();
}

#[test]
fn legs_on_two_cores_are_bridged_through_handoff_both_ways() {
    let (a, b) = (addr("10.0.0.1:4000"), addr("10.0.0.2:5000"));
    let mut h = Harness::with_cores(cfg(), Link::default(), 1, 2);
    cross_core_call(&mut h, b);
    for seq in 0..20 {
        h.send(a, A_PORT, &rtp(seq));
        h.send(b, B_PORT, &rtp(100 + seq));
        h.advance(Duration::from_millis(20));
    }
    h.send(a, A_PORT + 1, &rtcp_sr());
    h.advance(Duration::from_millis(20));
    let to_b = h.take_inbox(b);
    assert_eq!(seqs(&to_b), (0..20).collect::<Vec<_>>());
    assert!(to_b.iter().all(|p| p.from_port == B_PORT), "sent from B's port");
    let rtcp_to_b = h.take_inbox(addr("10.0.0.2:5001"));
    assert_eq!((rtcp_to_b.len(), rtcp_to_b[0].from_port), (1, B_PORT + 1), "RTCP crosses too, from B's RTCP port");
    assert_eq!(rtcp_to_b[0].bytes, rtcp_sr());
    assert_eq!(to_b[3].bytes, rtp(3), "bytes unchanged");
    // A's first packet (sent just before B's) latched A, so all of B's media reaches it.
    assert_eq!(seqs(&h.take_inbox(a)), (100..120).collect::<Vec<_>>());
    let now = h.now();
    let (c0, c1) = (h.core(0).counters(), h.core(1).counters());
    assert_eq!((c0.packets_in, c0.packets_handed_off), (21, 21), "core 0: A's 20 RTP and 1 RTCP crossed");
    assert_eq!((c1.packets_in, c1.packets_handed_off), (20, 20));
    assert_eq!((c0.packets_forwarded, c1.packets_forwarded), (20, 21), "each core counts what it sent");
    assert_eq!(h.core(1).leg_stats(2, now).unwrap().counters.rtp_packets_out, 20);
    assert_eq!((h.core(0).bridge_count(), h.core(1).bridge_count()), (1, 0), "a cross-core bridge counts once");
}

#[test]
fn deleting_one_half_of_a_cross_core_bridge_unlinks_the_other_core() {
    let (a, b) = (addr("10.0.0.1:4000"), addr("10.0.0.2:5000"));
    let mut h = Harness::with_cores(cfg(), Link::default(), 1, 2);
    cross_core_call(&mut h, b);
    let now = h.now();
    h.core(0).delete_leg(1, now).unwrap();
    h.advance(Duration::from_millis(1));
    assert_eq!(h.core(1).leg_stats(2, now).unwrap().bridge, None, "core 1's half went with leg 1");
    // Leg 2 can be bridged again, and media for it has nowhere to go meanwhile.
    h.send(b, B_PORT, &rtp(1));
    h.advance(Duration::from_millis(5));
    let now = h.now();
    assert_eq!(h.core(1).leg_stats(2, now).unwrap().counters.drops.no_route, 1);
    h.core(1).create_leg(3, B_PORT + 2, LegSpec::default(), now).unwrap();
    h.core(1).create_bridge(10, 2, 3).unwrap();
    let _ = a;
}

#[test]
fn handoff_for_a_leg_no_longer_paired_is_dropped_and_counted() {
    let b = addr("10.0.0.2:5000");
    let mut h = Harness::with_cores(cfg(), Link::default(), 1, 2);
    cross_core_call(&mut h, b);
    let now = h.now();
    let stale = Handoff { to_leg: 2, from_leg: 1, from_core: 0, bridge: 8, rtcp: false, conference: false };
    assert!(!h.core(1).handle_handoff(&stale, &rtp(1), now), "wrong bridge id");
    let stranger = Handoff { to_leg: 2, from_leg: 5, from_core: 0, bridge: 9, rtcp: false, conference: false };
    assert!(!h.core(1).handle_handoff(&stranger, &rtp(1), now), "not the paired leg");
    assert_eq!(h.core(1).counters().drops.no_route, 2);
    assert!(!h.core(1).has_transmit());
    let good = Handoff { to_leg: 2, from_leg: 1, from_core: 0, bridge: 9, rtcp: false, conference: false };
    assert!(h.core(1).handle_handoff(&good, &rtp(1), now));
    let mut buf = [0u8; MAX_TRANSMIT];
    let t = h.core(1).poll_transmit(&mut buf).expect("queued");
    assert_eq!((t.from_port, t.to, &buf[..t.len]), (B_PORT, b, &rtp(1)[..]));
}

#[test]
fn full_transmit_queue_drops_as_queue_full_without_growing() {
    let b = addr("10.0.0.2:5000");
    let mut e = Engine::new(EngineConfig { core: 1, ..cfg() });
    let now = Harness::new(cfg(), Link::default(), 1).now(); // a virtual epoch
    e.create_leg(2, B_PORT, LegSpec { remote: Remote::locked(b), ..Default::default() }, now).unwrap();
    e.link_remote(9, 2, 0, 1, None, false).unwrap();
    let h = Handoff { to_leg: 2, from_leg: 1, from_core: 0, bridge: 9, rtcp: false, conference: false };
    for _ in 0..TRANSMIT_QUEUE + 5 {
        let _ = e.handle_handoff(&h, &rtp(1), now);
    }
    let st = e.leg_stats(2, now).unwrap();
    assert_eq!(st.counters.drops.queue_full, 5);
    assert_eq!(st.counters.rtp_packets_out, TRANSMIT_QUEUE as u64, "dropped packets are not counted as sent");
    let mut buf = [0u8; MAX_TRANSMIT];
    let mut n = 0;
    while e.poll_transmit(&mut buf).is_some() {
        n += 1;
    }
    assert_eq!(n, TRANSMIT_QUEUE);
}

#[test]
fn cross_core_link_refuses_a_bridged_leg_and_a_duplicate_bridge_id() {
    let mut e = Engine::new(cfg());
    let now = Harness::new(cfg(), Link::default(), 1).now(); // a virtual epoch
    e.create_leg(1, A_PORT, LegSpec::default(), now).unwrap();
    e.create_leg(3, A_PORT + 4, LegSpec::default(), now).unwrap();
    e.link_remote(9, 1, 1, 2, None, true).unwrap();
    assert_eq!(e.link_remote(10, 1, 1, 4, None, true), Err(CommandError::AlreadyBridged(1, 9)));
    assert_eq!(e.link_remote(9, 3, 1, 4, None, true), Err(CommandError::BridgeExists(9)));
    assert_eq!(e.create_bridge(9, 3, 1), Err(CommandError::BridgeExists(9)));
    e.delete_bridge(9).unwrap();
    assert_eq!(e.poll_cross(), Some(CrossMessage::Unlink { core: 1, leg: 2, bridge: 9 }));
}

fn leg_codec(pt: u8, kind: media_codecs::CodecKind, rate: u32) -> LegCodec {
    LegCodec { payload_type: pt, params: media_codecs::CodecParams::new(kind, rate), ptime_ms: 20, telephone_event: None }
}

/// 20 ms PCMU packets of a speech-like signal.
fn pcmu_packets(n: usize) -> Vec<Vec<u8>> {
    let signal = media_codecs::signal::speech_like(8000, n as f64 / 50.0);
    let mut enc = media_codecs::encoder(&media_codecs::CodecParams::new(media_codecs::CodecKind::Pcmu, 8000)).unwrap();
    signal
        .chunks_exact(160)
        .enumerate()
        .map(|(i, c)| {
            let mut p = vec![0u8; 12];
            write_rtp_header(&mut p, 0, i as u16, (i * 160) as u32, 0x1234).unwrap();
            enc.encode(c, &mut p).unwrap();
            p
        })
        .collect()
}

#[test]
fn bridge_between_pcmu_and_opus_legs_transcodes_and_equal_codecs_relay() {
    use media_codecs::CodecKind;
    let (a, b) = (addr("10.0.0.1:4000"), addr("10.0.0.2:5000"));
    let mut h = Harness::new(cfg(), Link::default(), 1);
    let now = h.now();
    let pcmu = LegSpec { codec: Some(leg_codec(0, CodecKind::Pcmu, 8000)), ..Default::default() };
    let opus = LegSpec { remote: Remote::locked(b), codec: Some(leg_codec(111, CodecKind::Opus, 48_000)), ..Default::default() };
    h.engine.create_leg(1, A_PORT, pcmu, now).unwrap();
    h.engine.create_leg(2, B_PORT, opus, now).unwrap();
    h.engine.create_bridge(7, 1, 2).unwrap();
    for p in pcmu_packets(50) {
        h.send(a, A_PORT, &p);
        h.advance(Duration::from_millis(20));
    }
    let got = h.take_inbox(b);
    assert_eq!(got.len(), 50, "one Opus packet per 20 ms");
    let first = crate::wire::RtpPacket::new_checked(&got[0].bytes[..]).unwrap();
    assert_eq!(first.payload_type(), 111);
    assert_ne!(first.ssrc(), 0x1234, "the media plane's own stream");
    let mut dec = media_codecs::decoder(&media_codecs::CodecParams::new(CodecKind::Opus, 48_000)).unwrap();
    let mut pcm = Vec::new();
    for r in &got {
        dec.decode(crate::wire::RtpPacket::new_checked(&r.bytes[..]).unwrap().payload().unwrap(), &mut pcm).unwrap();
    }
    assert_eq!(pcm.len(), 50 * 960, "48 kHz out");
    let now = h.now();
    let st = h.engine.leg_stats(2, now).unwrap();
    let t = st.transcoded.expect("leg 2 receives transcoded media");
    assert_eq!((t.decoded, t.encoded, st.counters.rtp_packets_out), (50, 50, 50));
    assert_eq!(h.engine.counters().packets_consumed, 50);
    // Same codec on both legs: the plain relay (no transcoder).
    let mut h = Harness::new(cfg(), Link::default(), 1);
    let now = h.now();
    h.engine.create_leg(1, A_PORT, pcmu, now).unwrap();
    let pcmu_b = LegSpec { remote: Remote::locked(b), ..pcmu };
    h.engine.create_leg(2, B_PORT, pcmu_b, now).unwrap();
    h.engine.create_bridge(7, 1, 2).unwrap();
    let p = pcmu_packets(1).remove(0);
    h.send(a, A_PORT, &p);
    h.advance(Duration::from_millis(5));
    assert_eq!(h.take_inbox(b)[0].bytes, p, "relayed byte for byte");
    assert_eq!(h.engine.leg_stats(2, h.now()).unwrap().transcoded, None);
}

#[test]
fn dtmf_digits_of_a_leg_with_telephone_events_are_reported_once_each() {
    use crate::engine::dtmf::TelephoneEvent;
    use media_codecs::CodecKind;
    let (a, b) = (addr("10.0.0.1:4000"), addr("10.0.0.2:5000"));
    let mut h = Harness::new(cfg(), Link::default(), 1);
    let now = h.now();
    let pcmu = LegCodec { telephone_event: Some(101), ..leg_codec(0, CodecKind::Pcmu, 8000) };
    h.engine.create_leg(1, A_PORT, LegSpec { codec: Some(pcmu), ..Default::default() }, now).unwrap();
    h.engine.create_leg(2, B_PORT, LegSpec { remote: Remote::locked(b), codec: Some(pcmu), ..Default::default() }, now).unwrap();
    h.engine.create_bridge(7, 1, 2).unwrap();
    let event = |seq: u16, ts: u32, key: u8, end: bool, duration: u16| {
        let mut p = vec![0u8; 12];
        write_rtp_header(&mut p, 101, seq, ts, 9).unwrap();
        p.extend_from_slice(&TelephoneEvent { event: key, end, volume: 10, duration }.to_bytes());
        p
    };
    for (i, (ts, key, end, d)) in
        [(800, 1, false, 160), (800, 1, true, 640), (800, 1, true, 640), (800, 1, true, 640), (4000, 11, true, 960)].into_iter().enumerate()
    {
        h.send(a, A_PORT, &event(i as u16, ts, key, end, d));
        h.advance(Duration::from_millis(20));
    }
    let digits: Vec<_> = h
        .take_events()
        .into_iter()
        .filter_map(|e| match e {
            Event::Dtmf { leg, digit, duration_ms } => Some((leg, digit, duration_ms)),
            _ => None,
        })
        .collect();
    assert_eq!(digits, vec![(1, '1', 80), (1, '#', 120)]);
    assert_eq!(h.take_inbox(b).len(), 5, "relayed as they are");
}

#[test]
fn cross_core_bridge_transcodes_on_the_core_of_the_receiving_leg() {
    use media_codecs::CodecKind;
    let (a, b) = (addr("10.0.0.1:4000"), addr("10.0.0.2:5000"));
    let mut h = Harness::with_cores(cfg(), Link::default(), 1, 2);
    let now = h.now();
    let (pcmu, pcma) = (leg_codec(0, CodecKind::Pcmu, 8000), leg_codec(8, CodecKind::Pcma, 8000));
    h.core(0).create_leg(1, A_PORT, LegSpec { codec: Some(pcmu), ..Default::default() }, now).unwrap();
    h.core(1).create_leg(2, B_PORT, LegSpec { remote: Remote::locked(b), codec: Some(pcma), ..Default::default() }, now).unwrap();
    h.core(0).link_remote(9, 1, 1, 2, Some(pcma), true).unwrap();
    h.core(1).link_remote(9, 2, 0, 1, Some(pcmu), false).unwrap();
    for p in pcmu_packets(10) {
        h.send(a, A_PORT, &p);
        h.advance(Duration::from_millis(20));
    }
    let got = h.take_inbox(b);
    assert_eq!(got.len(), 10);
    assert!(got.iter().all(|r| r.bytes[1] & 0x7f == 8 && r.from_port == B_PORT), "PCMA from B's port");
    assert_eq!(h.core(0).counters().packets_handed_off, 10);
    assert_eq!(h.core(1).counters().packets_consumed, 10, "transcoded on core 1");
    // A transcoding bridge ends RTCP instead of relaying reports about another stream.
    h.send(a, A_PORT + 1, &rtcp_sr());
    h.advance(Duration::from_millis(5));
    assert!(h.take_inbox(addr("10.0.0.2:5001")).is_empty());
}

#[test]
fn bridge_of_incompatible_codecs_is_refused_and_leaves_the_legs_free() {
    use media_codecs::CodecKind;
    let mut e = Engine::new(cfg());
    let now = Harness::new(cfg(), Link::default(), 1).now();
    let stereo = LegCodec {
        params: media_codecs::CodecParams { channels: 2, ..media_codecs::CodecParams::new(CodecKind::Opus, 48_000) },
        ..leg_codec(111, CodecKind::Opus, 48_000)
    };
    e.create_leg(1, A_PORT, LegSpec { codec: Some(leg_codec(0, CodecKind::Pcmu, 8000)), ..Default::default() }, now).unwrap();
    e.create_leg(2, B_PORT, LegSpec { codec: Some(stereo), ..Default::default() }, now).unwrap();
    assert!(matches!(e.create_bridge(7, 1, 2), Err(CommandError::Transcode(_))));
    assert_eq!(e.bridge_count(), 0);
    e.create_leg(3, B_PORT + 2, LegSpec::default(), now).unwrap();
    e.create_bridge(8, 1, 3).unwrap();
}

#[test]
fn idle_leg_times_out_is_removed_with_its_bridge_and_reported() {
    let (a, b) = (addr("10.0.0.1:4000"), addr("10.0.0.2:5000"));
    let mut h = Harness::new(cfg(), Link::default(), 1);
    call(&mut h, b, false);
    // B keeps sending (to A, which never latches), A sends once and goes silent.
    h.send(a, A_PORT, &rtp(0));
    for i in 0..40 {
        h.send(b, B_PORT, &rtp(i));
        h.advance(Duration::from_secs(1));
    }
    let events = h.take_events();
    let timed_out: Vec<_> = events
        .iter()
        .filter_map(|e| match e {
            Event::TimedOut { leg, stats } => Some((*leg, stats.counters.rtp_packets_in)),
            _ => None,
        })
        .collect();
    assert_eq!(timed_out, vec![(1, 1)]);
    assert!(!h.engine.has_leg(1));
    assert!(h.engine.has_leg(2), "the active leg stays");
    assert!(!h.engine.has_bridge(7));
    // A's port is free again and traffic to it is a no-route drop.
    h.send(a, A_PORT, &rtp(1));
    h.advance(Duration::from_millis(5));
    assert_eq!(h.engine.counters().drops.no_route, 1 + h.engine.leg_stats(2, h.now()).unwrap().counters.drops.no_route);
}

#[test]
fn timeout_fires_within_one_sweep_of_its_deadline() {
    let mut h = Harness::new(cfg(), Link::default(), 1);
    let spec = LegSpec { media_timeout: Some(Duration::from_secs(5)), ..Default::default() };
    h.engine.create_leg(1, A_PORT, spec, h.now()).unwrap();
    h.advance(Duration::from_millis(4900));
    assert!(h.engine.has_leg(1));
    h.advance(Duration::from_millis(100) + SWEEP_INTERVAL);
    assert!(!h.engine.has_leg(1));
    assert_eq!(h.engine.poll_timeout(), None, "no timer while there are no legs");
}

#[test]
fn a_leg_on_hold_gets_the_hold_timeout_not_the_media_timeout() {
    let mut h = Harness::new(cfg(), Link::default(), 1);
    let timeout = Duration::from_secs(5);
    for (id, port, direction) in [(1, A_PORT, Direction::RecvOnly), (2, B_PORT, Direction::SendOnly), (3, A_PORT + 10, Direction::SendRecv)]
    {
        let spec = LegSpec { media_timeout: Some(timeout), direction, ..Default::default() };
        h.engine.create_leg(id, port, spec, h.now()).unwrap();
    }
    h.advance(timeout + SWEEP_INTERVAL);
    assert!(h.engine.has_leg(1) && h.engine.has_leg(2), "held (recvonly) and holding (sendonly), silent: kept");
    assert!(!h.engine.has_leg(3), "sendrecv and silent: timed out");
    h.advance(HOLD_TIMEOUT);
    assert!(!h.engine.has_leg(1) && !h.engine.has_leg(2), "silent past the hold timeout too");
}

#[test]
fn rtcp_is_relayed_between_rtcp_ports() {
    let (a, b) = (addr("10.0.0.1:4000"), addr("10.0.0.2:5000"));
    let a_rtcp = addr("10.0.0.1:4001");
    let mut h = Harness::new(cfg(), Link::default(), 1);
    call(&mut h, b, false);
    h.send(a, A_PORT, &rtp(1));
    h.send(a_rtcp, A_PORT + 1, &rtcp_sr());
    h.send(addr("10.0.0.2:5001"), B_PORT + 1, &rtcp_sr());
    h.advance(Duration::from_millis(5));
    // A's RTCP goes to B's RTP port + 1 from B's RTCP port; B's RTCP to the latched A RTCP source.
    let at_b = h.take_inbox(addr("10.0.0.2:5001"));
    assert_eq!(at_b.len(), 1);
    assert_eq!((at_b[0].from_port, at_b[0].bytes.clone()), (B_PORT + 1, rtcp_sr()));
    let at_a = h.take_inbox(a_rtcp);
    assert_eq!(at_a.len(), 1);
    assert_eq!(at_a[0].from_port, A_PORT + 1);
    let st = h.engine.leg_stats(1, h.now()).unwrap();
    assert_eq!((st.counters.rtcp_packets_in, st.counters.rtcp_packets_out, st.counters.rtp_packets_in), (1, 1, 1));
}

#[test]
fn rtcp_mux_legs_relay_rtcp_on_the_rtp_port() {
    let (a, b) = (addr("10.0.0.1:4000"), addr("10.0.0.2:5000"));
    let mut h = Harness::new(cfg(), Link::default(), 1);
    call(&mut h, b, true);
    h.send(a, A_PORT, &rtp(1));
    h.send(a, A_PORT, &rtcp_sr());
    h.advance(Duration::from_millis(5));
    let got = h.take_inbox(b);
    assert_eq!(got.len(), 2);
    assert!(got.iter().all(|p| p.from_port == B_PORT));
    assert_eq!(got[1].bytes, rtcp_sr());
    let st = h.engine.leg_stats(2, h.now()).unwrap();
    assert_eq!((st.counters.rtp_packets_out, st.counters.rtcp_packets_out), (1, 1));
    // No RTCP port was taken: B_PORT + 1 is free.
    h.engine.create_leg(3, B_PORT + 1, LegSpec { rtcp_mux: true, ..Default::default() }, h.now()).unwrap();
}

#[test]
fn malformed_packets_are_counted_and_dropped() {
    let (a, b) = (addr("10.0.0.1:4000"), addr("10.0.0.2:5000"));
    let mut h = Harness::new(cfg(), Link::default(), 1);
    call(&mut h, b, false);
    let mut v1 = rtp(1);
    v1[0] = 0x40;
    for bad in [vec![], vec![0x80; 11], v1, vec![0xff; 200]] {
        h.send(a, A_PORT, &bad);
    }
    h.send(a, A_PORT + 1, &[0x80, 200, 0]); // short RTCP
    h.advance(Duration::from_millis(5));
    assert!(h.take_inbox(b).is_empty());
    assert!(h.take_events().is_empty(), "malformed packets do not latch");
    assert_eq!(h.engine.leg_stats(1, h.now()).unwrap().counters.drops.malformed, 5);
    assert_eq!(h.engine.counters().drops.malformed, 5);
}

#[test]
fn hold_direction_mutes_rtp_but_not_rtcp() {
    let (a, b) = (addr("10.0.0.1:4000"), addr("10.0.0.2:5000"));
    let mut h = Harness::new(cfg(), Link::default(), 1);
    call(&mut h, b, false);
    // B put on hold by A: B is told sendonly -> nothing is sent to... A says sendonly: A's RTP flows,
    // nothing is sent to A. B recvonly: B's RTP is dropped.
    h.engine.update_leg(2, None, None, Some(Direction::RecvOnly), false).unwrap();
    h.send(a, A_PORT, &rtp(1));
    h.send(b, B_PORT, &rtp(2));
    h.send(addr("10.0.0.2:5001"), B_PORT + 1, &rtcp_sr());
    h.advance(Duration::from_millis(5));
    assert_eq!(seqs(&h.take_inbox(b)), vec![1]);
    assert!(h.take_inbox(a).is_empty());
    assert_eq!(h.take_inbox(addr("10.0.0.1:4001")).len(), 1, "RTCP flows on hold");
    assert_eq!(h.engine.leg_stats(2, h.now()).unwrap().counters.drops.muted, 1);
    h.engine.update_leg(2, None, None, Some(Direction::SendRecv), false).unwrap();
    h.send(b, B_PORT, &rtp(3));
    h.advance(Duration::from_millis(5));
    assert_eq!(seqs(&h.take_inbox(a)), vec![3]);
}

#[test]
fn lossy_reordering_link_relays_every_surviving_packet_once() {
    let (a, b) = (addr("10.0.0.1:4000"), addr("10.0.0.2:5000"));
    let link = Link { latency: Duration::from_millis(10), jitter: Duration::from_millis(60), loss: 0.1 };
    let mut h = Harness::new(cfg(), link, 42);
    call(&mut h, b, false);
    for seq in 0..500 {
        h.send(a, A_PORT, &rtp(seq));
        h.advance(Duration::from_millis(20));
    }
    h.advance(Duration::from_millis(500));
    let got = seqs(&h.take_inbox(b));
    let st = h.engine.leg_stats(1, h.now()).unwrap();
    // The relay forwards what it receives in the order it receives it: no duplicates, no loss of its own.
    let mut sorted = got.clone();
    sorted.sort_unstable();
    sorted.dedup();
    assert_eq!(sorted.len(), got.len());
    assert_eq!(st.counters.rtp_packets_in, h.engine.leg_stats(2, h.now()).unwrap().counters.rtp_packets_out);
    assert!(got.len() < 500 && got.len() > 300, "link loss applies twice (in and out): {}", got.len());
    assert!(got.windows(2).any(|w| w[0] > w[1]), "jitter reordered something");
}

#[test]
fn command_misuse_is_reported() {
    let mut h = Harness::new(cfg(), Link::default(), 1);
    let now = h.now();
    h.engine.create_leg(1, A_PORT, LegSpec::default(), now).unwrap();
    assert_eq!(h.engine.create_leg(1, B_PORT, LegSpec::default(), now), Err(CommandError::LegExists(1)));
    assert_eq!(h.engine.create_leg(2, A_PORT + 1, LegSpec::default(), now), Err(CommandError::PortInUse(A_PORT + 1)));
    assert_eq!(h.engine.create_bridge(5, 1, 1), Err(CommandError::SelfBridge));
    assert_eq!(h.engine.create_bridge(5, 1, 9), Err(CommandError::NoSuchLeg(9)));
    h.engine.create_leg(2, B_PORT, LegSpec::default(), now).unwrap();
    h.engine.create_leg(3, B_PORT + 2, LegSpec::default(), now).unwrap();
    h.engine.create_bridge(5, 1, 2).unwrap();
    assert_eq!(h.engine.create_bridge(6, 3, 2), Err(CommandError::AlreadyBridged(2, 5)));
    assert_eq!(h.engine.delete_bridge(6), Err(CommandError::NoSuchBridge(6)));
    h.engine.delete_leg(2, now).unwrap();
    assert!(!h.engine.has_bridge(5), "deleting a leg deletes its bridge");
    h.engine.create_bridge(6, 3, 1).unwrap();
}

#[derive(Debug, Clone)]
enum Op {
    Create(u8, bool, bool),
    Delete(u8),
    Bridge(u8, u8),
    Unbridge(u8),
    Relatch(u8),
    Packet(u8, u8, Vec<u8>),
    Wait(u16),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (0..8u8, any::<bool>(), any::<bool>()).prop_map(|(l, m, r)| Op::Create(l, m, r)),
        (0..8u8).prop_map(Op::Delete),
        (0..8u8, 0..8u8).prop_map(|(a, b)| Op::Bridge(a, b)),
        (0..4u8).prop_map(Op::Unbridge),
        (0..8u8).prop_map(Op::Relatch),
        (0..20u8, 0..4u8, proptest::collection::vec(any::<u8>(), 0..40)).prop_map(|(p, s, mut b)| {
            if b.len() > 12 && s % 2 == 0 {
                b[0] = 0x80;
            }
            Op::Packet(p, s, b)
        }),
        (0..5000u16).prop_map(Op::Wait),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]
    /// Any sequence of commands and packets keeps the engine's books straight: every packet is either
    /// forwarded or counted under one drop reason, and legs never leak ports.
    #[test]
    fn counters_balance_under_arbitrary_operation_sequences(ops in proptest::collection::vec(op(), 1..120), seed in 1..u64::MAX) {
        let link = Link { latency: Duration::from_millis(1), jitter: Duration::from_millis(3), loss: 0.0 };
        let mut h = Harness::new(EngineConfig { media_timeout: Duration::from_secs(3), core: 0, seed: 7, wall: None }, link, seed);
        let mut delivered = 0u64;
        for op in ops {
            let now = h.now();
            match op {
                Op::Create(l, mux, remote) => {
                    let spec = LegSpec {
                        rtcp_mux: mux,
                        remote: if remote { Remote::locked(addr("10.0.0.1:4000")) } else { Remote::default() },
                        ..Default::default()
                    };
                    let _ = h.engine.create_leg(u64::from(l), 30000 + u16::from(l) * 2, spec, now);
                }
                Op::Delete(l) => { let _ = h.engine.delete_leg(u64::from(l), now); }
                Op::Bridge(a, b) => { let _ = h.engine.create_bridge(u64::from(a) * 8 + u64::from(b), u64::from(a), u64::from(b)); }
                Op::Unbridge(b) => { let _ = h.engine.delete_bridge(u64::from(b)); }
                Op::Relatch(l) => { let _ = h.engine.update_leg(u64::from(l), None, None, None, true); }
                Op::Packet(p, s, b) => {
                    h.send(SocketAddr::from(([10, 0, 0, s], 4000)), 30000 + u16::from(p), &b);
                }
                Op::Wait(ms) => h.advance(Duration::from_millis(u64::from(ms))),
            }
            for a in 0..4u8 {
                delivered += h.take_inbox(SocketAddr::from(([10, 0, 0, a], 4000))).len() as u64;
                delivered += h.take_inbox(SocketAddr::from(([10, 0, 0, a], 4001))).len() as u64;
            }
        }
        h.advance(Duration::from_secs(10));
        for a in 0..4u8 {
            delivered += h.take_inbox(SocketAddr::from(([10, 0, 0, a], 4000))).len() as u64;
            delivered += h.take_inbox(SocketAddr::from(([10, 0, 0, a], 4001))).len() as u64;
        }
        let c = h.engine.counters();
        prop_assert_eq!(c.packets_in, c.packets_forwarded + c.drops.total());
        prop_assert_eq!(c.packets_forwarded, delivered);
        prop_assert_eq!(h.engine.leg_count(), 0, "every leg timed out");
        prop_assert_eq!(h.engine.bridge_count(), 0);
    }
}

#[test]
fn refused_send_is_taken_off_the_sending_legs_counters() {
    let (a, b) = (addr("10.0.0.1:4000"), addr("10.0.0.2:5000"));
    let mut h = Harness::new(cfg(), Link::default(), 1);
    call(&mut h, b, false);
    let pkt = rtp(1);
    let v = h.engine.handle_packet(A_PORT, a, &pkt, h.now());
    assert_eq!(v, Verdict::Forward { from_port: B_PORT, to: b });
    h.engine.handle_forward_dropped(B_PORT, &pkt, DropReason::SendFailed);
    let st = h.engine.leg_stats(2, h.now()).unwrap();
    assert_eq!((st.counters.rtp_packets_out, st.counters.rtp_bytes_out, st.counters.drops.send_failed), (0, 0, 1));
    let c = h.engine.counters();
    assert_eq!((c.packets_in, c.packets_forwarded, c.drops.send_failed), (1, 0, 1));
}

#[test]
fn a_transcoded_leg_gets_the_media_planes_own_sender_reports_with_a_block_on_its_stream() {
    use media_codecs::CodecKind;
    use rtcp_types::{Compound, Packet};
    let (a, b) = (addr("10.0.0.1:4000"), addr("10.0.0.2:5000"));
    let b_rtcp = addr("10.0.0.2:5001");
    let mut h = Harness::new(cfg(), Link::default(), 1);
    let now = h.now();
    let pcmu = LegSpec { remote: Remote::locked(a), codec: Some(leg_codec(0, CodecKind::Pcmu, 8000)), ..Default::default() };
    let pcma = LegSpec { remote: Remote::locked(b), codec: Some(leg_codec(8, CodecKind::Pcma, 8000)), ..Default::default() };
    h.engine.create_leg(1, A_PORT, pcmu, now).unwrap();
    h.engine.create_leg(2, B_PORT, pcma, now).unwrap();
    h.engine.create_bridge(7, 1, 2).unwrap();
    // A sends 12 s of audio with every tenth packet lost; B sends nothing.
    for (i, p) in pcmu_packets(600).iter().enumerate() {
        if i % 10 != 9 {
            h.send(a, A_PORT, p);
        }
        h.advance(Duration::from_millis(20));
    }
    h.advance(Duration::from_millis(100));
    let rtp_to_b = h.take_inbox(b);
    let ssrc_to_b = crate::wire::RtpPacket::new_checked(&rtp_to_b[0].bytes[..]).unwrap().ssrc();
    let reports = h.take_inbox(b_rtcp);
    assert!((1..=3).contains(&reports.len()), "a report every 2.5-7.5 s after the first interval: {}", reports.len());
    let last = &reports[reports.len() - 1];
    assert_eq!(last.from_port, B_PORT + 1, "from the leg's RTCP port");
    let compound = Compound::parse(&last.bytes).expect("a valid compound packet");
    let mut packets = compound.map(|p| p.expect("packet"));
    let Packet::Sr(sr) = packets.next().expect("SR first") else { panic!("not an SR first") };
    assert_eq!(sr.ssrc(), ssrc_to_b, "the sender is the stream the media plane makes for B");
    assert!(
        sr.packet_count() >= 400 && sr.octet_count() == sr.packet_count() * 160,
        "{} packets, {} octets",
        sr.packet_count(),
        sr.octet_count()
    );
    // B sends nothing, so there is no block; leg 1's report to A has one on A's stream.
    assert_eq!(sr.report_blocks().count(), 0);
    assert!(matches!(packets.next(), Some(Packet::Sdes(_))), "SDES CNAME second");
    let to_a = h.take_inbox(addr("10.0.0.1:4001"));
    let report = Compound::parse(&to_a.last().expect("a report to A").bytes).unwrap().next().unwrap().unwrap();
    let Packet::Sr(sr) = report else { panic!("not an SR") };
    let block = sr.report_blocks().next().expect("a block on A's stream");
    assert_eq!(block.ssrc(), 0x1234);
    assert!(block.cumulative_lost() >= 40, "{} lost", block.cumulative_lost());
    assert!((20..=30).contains(&block.fraction_lost()), "10 % is 25/256: {}", block.fraction_lost());
    assert_eq!(h.engine.leg_stats(2, h.now()).unwrap().counters.rtcp_packets_out, reports.len() as u64);
}

#[test]
fn a_quality_alarm_is_raised_when_loss_crosses_the_threshold_and_cleared_when_it_recovers() {
    let a = addr("10.0.0.1:4000");
    let mut h = Harness::new(cfg(), Link::default(), 1);
    let now = h.now();
    let spec = LegSpec { alarm: QualityAlarm { loss_permille: Some(50), jitter_us: None }, ..Default::default() };
    h.engine.create_leg(1, A_PORT, spec, now).unwrap();
    let packets = pcmu_packets(500);
    // 4 s with 10 % loss, then 6 s without.
    for (i, p) in packets.iter().enumerate() {
        if i >= 200 || i % 10 != 3 {
            h.send(a, A_PORT, p);
        }
        h.advance(Duration::from_millis(20));
    }
    let alarms: Vec<(bool, u32)> = h
        .take_events()
        .into_iter()
        .filter_map(|e| if let Event::Quality { leg: 1, alarm, loss_permille, .. } = e { Some((alarm, loss_permille)) } else { None })
        .collect();
    assert_eq!(alarms.len(), 2, "raised once, cleared once: {alarms:?}");
    assert!(alarms[0].0 && (80..=120).contains(&alarms[0].1), "raised at about 100 per mille: {alarms:?}");
    assert!(!alarms[1].0 && alarms[1].1 == 0, "cleared with no loss: {alarms:?}");
}

#[test]
fn each_conference_member_hears_the_others_and_not_itself_and_mute_silences_one() {
    use media_codecs::{CodecKind, CodecParams};
    let mut h = Harness::new(cfg(), Link::default(), 1);
    let now = h.now();
    let tones = [440.0, 700.0, 1100.0];
    let ports = [A_PORT, B_PORT, B_PORT + 2];
    let endpoints: Vec<SocketAddr> = (0..3).map(|i| addr(&format!("10.0.0.{}:4000", i + 1))).collect();
    h.engine.create_conference(50, 8000, now).unwrap();
    for i in 0..3 {
        let spec = LegSpec { remote: Remote::locked(endpoints[i]), codec: Some(leg_codec(0, CodecKind::Pcmu, 8000)), ..Default::default() };
        h.engine.create_leg(i as u64 + 1, ports[i], spec, now).unwrap();
        h.engine.add_member(50, i as u64 + 1, false, false).unwrap();
    }
    assert!(matches!(h.engine.create_bridge(9, 1, 2), Err(CommandError::InConference(1, 50))));
    let params = CodecParams::new(CodecKind::Pcmu, 8000);
    let signals: Vec<Vec<i16>> = tones.iter().map(|hz| media_codecs::signal::sine(8000, *hz, 2.0, 6000.0)).collect();
    let mut encoders: Vec<_> = (0..3).map(|_| media_codecs::encoder(&params).unwrap()).collect();
    let run = |h: &mut Harness, encoders: &mut Vec<Box<dyn media_codecs::Encoder>>, from: usize, to: usize| {
        for k in from..to {
            for i in 0..3 {
                let mut p = vec![0u8; 12];
                write_rtp_header(&mut p, 0, k as u16, (k * 160) as u32, 0x100 + i as u32).unwrap();
                encoders[i].encode(&signals[i][k * 160..(k + 1) * 160], &mut p).unwrap();
                h.send(endpoints[i], ports[i], &p);
            }
            h.advance(Duration::from_millis(20));
        }
    };
    let heard = |h: &mut Harness| -> Vec<Vec<i16>> {
        (0..3)
            .map(|i| {
                let mut dec = media_codecs::decoder(&params).unwrap();
                let mut pcm = Vec::new();
                for r in h.take_inbox(endpoints[i]) {
                    dec.decode(crate::wire::RtpPacket::new_checked(&r.bytes[..]).unwrap().payload().unwrap(), &mut pcm).unwrap();
                }
                pcm
            })
            .collect()
    };
    run(&mut h, &mut encoders, 0, 50);
    let pcm = heard(&mut h);
    for i in 0..3 {
        assert!(pcm[i].len() >= 40 * 160, "member {i} got the mix: {} samples", pcm[i].len());
        let own = tone_power(&pcm[i][1600..], 8000, tones[i]);
        for j in (0..3).filter(|j| *j != i) {
            let other = tone_power(&pcm[i][1600..], 8000, tones[j]);
            assert!(
                other > 1000.0 * own.max(1.0),
                "member {i} hears {} Hz ({other:.0}) far above its own {} Hz ({own:.0})",
                tones[j],
                tones[i]
            );
        }
    }
    // Member 2 (700 Hz) muted: the others stop hearing it.
    h.engine.update_member(50, 2, true, false).unwrap();
    run(&mut h, &mut encoders, 50, 100);
    let pcm = heard(&mut h);
    for i in [0, 2] {
        let quiet = tone_power(&pcm[i][800..], 8000, 700.0);
        let loud = tone_power(&pcm[i][800..], 8000, tones[2 - i]);
        assert!(loud > 1000.0 * quiet.max(1.0), "member {i} no longer hears the muted member");
    }
    // Deleting a member's leg takes it out; ending the conference frees the rest.
    h.engine.delete_leg(3, h.now()).unwrap();
    assert_eq!(h.engine.delete_conference(50).unwrap(), vec![1, 2]);
    h.engine.create_bridge(9, 1, 2).unwrap();
}

#[test]
fn a_conference_member_is_heard_continuously_through_jitter_reordering_loss_and_duplicates() {
    use media_codecs::{CodecKind, CodecParams};
    // 60 ms of jitter (packets reordered), 3 % loss, every tenth packet sent twice.
    let link = Link { latency: Duration::from_millis(5), jitter: Duration::from_millis(60), loss: 0.03 };
    let mut h = Harness::new(cfg(), link, 3);
    let now = h.now();
    let (talker, listener) = (addr("10.0.0.1:4000"), addr("10.0.0.2:4000"));
    h.engine.create_conference(60, 8000, now).unwrap();
    for (id, port, remote) in [(1u64, A_PORT, talker), (2, B_PORT, listener)] {
        let spec = LegSpec { remote: Remote::locked(remote), codec: Some(leg_codec(0, CodecKind::Pcmu, 8000)), ..Default::default() };
        h.engine.create_leg(id, port, spec, now).unwrap();
        h.engine.add_member(60, id, false, false).unwrap();
    }
    let params = CodecParams::new(CodecKind::Pcmu, 8000);
    let signal = media_codecs::signal::sine(8000, 500.0, 4.0, 6000.0);
    let mut enc = media_codecs::encoder(&params).unwrap();
    for k in 0..200 {
        let mut p = vec![0u8; 12];
        write_rtp_header(&mut p, 0, k as u16, (k * 160) as u32, 0x77).unwrap();
        enc.encode(&signal[k * 160..(k + 1) * 160], &mut p).unwrap();
        h.send(talker, A_PORT, &p);
        if k % 10 == 0 {
            h.send(talker, A_PORT, &p);
        }
        h.advance(Duration::from_millis(20));
    }
    h.advance(Duration::from_millis(300));
    let got = h.take_inbox(listener);
    assert!(got.len() >= 200, "a packet every 20 ms to the listener: {}", got.len());
    let mut dec = media_codecs::decoder(&params).unwrap();
    let mut pcm = Vec::new();
    for r in &got {
        dec.decode(crate::wire::RtpPacket::new_checked(&r.bytes[..]).unwrap().payload().unwrap(), &mut pcm).unwrap();
    }
    // After the buffer fills, the tone plays in order: in 20 ms windows, at most a few (the
    // concealed losses, the refills) are not the tone.
    let windows: Vec<&[i16]> = pcm[4000..pcm.len() - 4000].chunks(160).collect();
    let tone = windows
        .iter()
        .filter(|w| tone_power(w, 8000, 500.0) > 100.0 * tone_power(w, 8000, 1500.0).max(1.0) && tone_power(w, 8000, 500.0) > 1e9)
        .count();
    assert!(tone * 100 >= windows.len() * 90, "{tone} of {} windows carry the tone", windows.len());
    let c = h.engine.conference_jitter(60, 1).unwrap();
    assert!(c.duplicates >= 10 && c.concealed >= 1, "{c:?}");
}

#[test]
fn a_conference_member_talks_from_its_first_syllable_until_a_pause_longer_than_the_hangover() {
    use media_codecs::{CodecKind, CodecParams};
    let mut h = Harness::new(cfg(), Link::default(), 1);
    let now = h.now();
    let ports = [A_PORT, B_PORT];
    let endpoints: Vec<SocketAddr> = (0..2).map(|i| addr(&format!("10.0.1.{}:4000", i + 1))).collect();
    h.engine.create_conference(60, 8000, now).unwrap();
    for i in 0..2 {
        let spec = LegSpec { remote: Remote::locked(endpoints[i]), codec: Some(leg_codec(0, CodecKind::Pcmu, 8000)), ..Default::default() };
        h.engine.create_leg(i as u64 + 1, ports[i], spec, now).unwrap();
        h.engine.add_member(60, i as u64 + 1, false, false).unwrap();
    }
    let params = CodecParams::new(CodecKind::Pcmu, 8000);
    // Member 1: one second of speech-level tone with a 200 ms gap in it, then 1.5 s of silence.
    // Member 2: silence throughout.
    let mut tone = media_codecs::signal::sine(8000, 500.0, 1.0, 3000.0);
    tone[4000..5600].fill(0);
    tone.extend(std::iter::repeat_n(0i16, 12_000));
    let silence = vec![0i16; tone.len()];
    let mut encoders: Vec<_> = (0..2).map(|_| media_codecs::encoder(&params).unwrap()).collect();
    let mut talking = Vec::new();
    for k in 0..tone.len() / 160 {
        for (i, pcm) in [&tone, &silence].into_iter().enumerate() {
            let mut p = vec![0u8; 12];
            write_rtp_header(&mut p, 0, k as u16, (k * 160) as u32, 0x200 + i as u32).unwrap();
            encoders[i].encode(&pcm[k * 160..(k + 1) * 160], &mut p).unwrap();
            h.send(endpoints[i], ports[i], &p);
        }
        h.advance(Duration::from_millis(20));
        for e in h.take_events() {
            match e {
                Event::Talking { leg, conference: 60, talking: t } => talking.push((k, leg, t)),
                Event::Talking { .. } => panic!("a talking event of another conference: {e:?}"),
                _ => {}
            }
        }
    }
    assert_eq!(talking.len(), 2, "one start and one stop, the 200 ms gap inside the hangover: {talking:?}");
    let (start, stop) = (talking[0], talking[1]);
    assert!(start.1 == 1 && start.2 && start.0 <= 8, "member 1 talks within the first packets (jitter buffer included): {talking:?}");
    assert!(stop.1 == 1 && !stop.2, "{talking:?}");
    assert!((55..=100).contains(&stop.0), "stops 0.1-1 s after the speech ends at packet 50: {talking:?}");
    h.engine.remove_member(60, 2).unwrap();
    let left: Vec<_> = std::iter::from_fn(|| h.engine.poll_event()).filter(|e| matches!(e, Event::Member { .. })).collect();
    assert_eq!(left, vec![Event::Member { leg: 2, conference: 60, joined: false }]);
}

/// Every tap waiting in the engine.
fn taps(h: &mut Harness) -> Vec<Tap> {
    std::iter::from_fn(|| h.engine.poll_tap()).collect()
}

#[test]
fn a_recorded_leg_taps_what_its_endpoint_sends_while_the_relay_goes_on() {
    let (a, b) = (addr("10.0.0.1:4000"), addr("10.0.0.2:5000"));
    let mut h = Harness::new(cfg(), Link::default(), 1);
    call(&mut h, b, false);
    assert_eq!(h.engine.record_leg(1, 77, 1), Ok(None));
    assert_eq!(h.engine.record_leg(99, 77, 0), Err(CommandError::NoSuchLeg(99)));
    for seq in 0..3 {
        h.send(a, A_PORT, &rtp(seq));
        h.advance(Duration::from_millis(20));
    }
    assert_eq!(seqs(&h.take_inbox(b)), vec![0, 1, 2], "the relay is unchanged");
    let got = taps(&mut h);
    assert_eq!(got.len(), 3);
    assert_eq!(got[1], Tap::Rtp { recording: 77, channel: 1, codec: None, packet: rtp(1) });
    // RTCP is not tapped; a leg is in one recording at a time; deleting the leg ends its tap.
    h.send(a, A_PORT + 1, &rtcp_sr());
    h.advance(Duration::from_millis(5));
    assert!(taps(&mut h).is_empty());
    assert_eq!(h.engine.record_leg(1, 78, 0), Err(CommandError::Recorded(1, 77)), "one recording per leg");
    assert_eq!(h.engine.stop_recording(77), 1);
    assert_eq!(taps(&mut h), vec![Tap::Ended { recording: 77, channel: 1 }]);
    h.engine.record_leg(1, 78, 0).unwrap();
    let now = h.now();
    h.engine.delete_leg(1, now).unwrap();
    assert_eq!(taps(&mut h), vec![Tap::Ended { recording: 78, channel: 0 }]);
}

#[test]
fn stopping_a_recording_ends_its_taps_and_a_slow_recorder_costs_counted_drops_only() {
    let (a, b) = (addr("10.0.0.1:4000"), addr("10.0.0.2:5000"));
    let mut h = Harness::new(cfg(), Link::default(), 1);
    call(&mut h, b, false);
    h.engine.record_leg(1, 5, 0).unwrap();
    h.engine.record_leg(2, 5, 1).unwrap();
    for seq in 0..(MAX_TAPS as u16 + 10) {
        h.send(a, A_PORT, &rtp(seq));
    }
    h.advance(Duration::from_millis(50));
    assert_eq!(h.take_inbox(b).len(), MAX_TAPS + 10, "every packet relayed");
    assert_eq!(h.engine.counters().taps_dropped, 10);
    assert_eq!(taps(&mut h).len(), MAX_TAPS);
    assert_eq!(h.engine.stop_recording(5), 2);
    let ended = taps(&mut h);
    assert!(ended.contains(&Tap::Ended { recording: 5, channel: 0 }) && ended.contains(&Tap::Ended { recording: 5, channel: 1 }));
    assert_eq!(h.engine.stop_recording(5), 0);
}

#[test]
fn listeners_of_one_codec_share_one_encode_under_their_own_headers_and_a_talker_gets_its_own() {
    use media_codecs::{CodecKind, CodecParams};
    let mut h = Harness::new(cfg(), Link::default(), 1);
    let now = h.now();
    h.engine.create_conference(70, 8000, now).unwrap();
    // Members 1 and 2 talk (440 and 1100 Hz); 3..=8 listen (send nothing).
    let endpoints: Vec<SocketAddr> = (1..=8).map(|i| addr(&format!("10.0.1.{i}:4000"))).collect();
    for (i, ep) in endpoints.iter().enumerate() {
        let spec = LegSpec { remote: Remote::locked(*ep), codec: Some(leg_codec(0, CodecKind::Pcmu, 8000)), ..Default::default() };
        h.engine.create_leg(i as u64 + 1, 30_000 + 2 * i as u16, spec, now).unwrap();
        h.engine.add_member(70, i as u64 + 1, false, false).unwrap();
    }
    let params = CodecParams::new(CodecKind::Pcmu, 8000);
    let tone = |hz: f64| media_codecs::signal::sine(8000, hz, 3.0, 6000.0);
    let signals = [tone(440.0), tone(1100.0), tone(1700.0)];
    let mut encoders: Vec<_> = (0..3).map(|_| media_codecs::encoder(&params).unwrap()).collect();
    let mut send_tick = |h: &mut Harness, k: usize, talkers: &[usize]| {
        for &i in talkers {
            let mut p = vec![0u8; 12];
            write_rtp_header(&mut p, 0, k as u16, (k * 160) as u32, 0x200 + i as u32).unwrap();
            encoders[i].encode(&signals[i][k * 160..(k + 1) * 160], &mut p).unwrap();
            h.send(endpoints[i], 30_000 + 2 * i as u16, &p);
        }
        h.advance(Duration::from_millis(20));
    };
    for k in 0..50 {
        send_tick(&mut h, k, &[0, 1]);
    }
    let c = h.engine.conference_counters(70).unwrap();
    assert!(c.ticks >= 48, "{c:?}");
    assert!(c.shared_encodes <= c.ticks && c.shared_encodes + 2 >= c.ticks, "one shared encode a period: {c:?}");
    assert_eq!(c.shared_packets, 6 * c.shared_encodes, "six listeners each get it: {c:?}");
    assert!(c.own_encodes <= 2 * c.ticks + 4, "at most the two talkers encode their own: {c:?}");
    // Each listener: its own SSRC and sequence numbers, the same payload as the others.
    let inboxes: Vec<_> = endpoints[2..].iter().map(|ep| h.take_inbox(*ep)).collect();
    let ssrcs: std::collections::HashSet<u32> =
        inboxes.iter().map(|r| u32::from_be_bytes(r[10].bytes[8..12].try_into().unwrap())).collect();
    assert_eq!(ssrcs.len(), 6, "one stream per listener");
    for r in &inboxes {
        let seq: Vec<u16> = seqs(r);
        assert!(seq.windows(2).all(|w| w[1] == w[0].wrapping_add(1)), "consecutive sequence numbers");
        assert_eq!(r[20].bytes[12..], inboxes[0][20].bytes[12..], "one encode, many headers");
    }
    let mut dec = media_codecs::decoder(&params).unwrap();
    let mut pcm = Vec::new();
    for r in &inboxes[0][10..] {
        dec.decode(&r.bytes[12..], &mut pcm).unwrap();
    }
    assert!(tone_power(&pcm, 8000, 440.0) > 1e9 && tone_power(&pcm, 8000, 1100.0) > 1e9, "a listener hears both talkers");
    h.take_inbox(endpoints[0]);
    // Listener 3 starts talking (1700 Hz): it leaves the shared encode and hears the others, not itself.
    for k in 50..100 {
        send_tick(&mut h, k, &[0, 1, 2]);
    }
    let got = h.take_inbox(endpoints[2]);
    let mut dec = media_codecs::decoder(&params).unwrap();
    let mut pcm = Vec::new();
    for r in &got[10..] {
        dec.decode(&r.bytes[12..], &mut pcm).unwrap();
    }
    let own = tone_power(&pcm, 8000, 1700.0);
    assert!(tone_power(&pcm, 8000, 440.0) > 1000.0 * own.max(1.0), "the new talker hears the others ({own:.0} of its own)");
    assert!(seqs(&got).windows(2).all(|w| w[1] == w[0].wrapping_add(1)), "its stream goes on across the switch");
}

#[test]
fn a_member_on_another_core_is_mixed_through_the_cores_queues_and_leaves_when_its_leg_goes() {
    use media_codecs::{CodecKind, CodecParams};
    let mut h = Harness::with_cores(cfg(), Link::default(), 1, 2);
    let now = h.now();
    // The conference and member 1 on core 0; member 2 on core 1.
    let (ep1, ep2) = (addr("10.0.2.1:4000"), addr("10.0.2.2:4000"));
    let spec = |ep| LegSpec { remote: Remote::locked(ep), codec: Some(leg_codec(0, CodecKind::Pcmu, 8000)), ..Default::default() };
    h.core(0).create_conference(80, 8000, now).unwrap();
    h.core(0).create_leg(1, 30_000, spec(ep1), now).unwrap();
    h.core(0).add_member(80, 1, false, false).unwrap();
    h.core(1).create_leg((1 << 56) | 2, 40_000, spec(ep2), now).unwrap();
    let remote = (1u64 << 56) | 2;
    let codec = leg_codec(0, CodecKind::Pcmu, 8000);
    assert_eq!(h.core(0).add_remote_member(80, remote, 1, codec, false, false), Ok(8000));
    h.core(1).join_remote(remote, 0, 80, 8000, now).unwrap();
    assert_eq!(h.core(1).join_remote(remote, 0, 80, 8000, now), Err(CommandError::InConference(remote, 80)), "a leg joins once");
    assert!(!h.core(1).unjoin(remote, 0, 81), "a late message of another conference does not take it out of this one");
    let params = CodecParams::new(CodecKind::Pcmu, 8000);
    let tones = [media_codecs::signal::sine(8000, 440.0, 2.0, 6000.0), media_codecs::signal::sine(8000, 1300.0, 2.0, 6000.0)];
    let mut encoders: Vec<_> = (0..2).map(|_| media_codecs::encoder(&params).unwrap()).collect();
    for k in 0..60 {
        for (i, (ep, port)) in [(ep1, 30_000u16), (ep2, 40_000)].into_iter().enumerate() {
            let mut p = vec![0u8; 12];
            write_rtp_header(&mut p, 0, k as u16, (k * 160) as u32, 0x300 + i as u32).unwrap();
            encoders[i].encode(&tones[i][k * 160..(k + 1) * 160], &mut p).unwrap();
            h.send(ep, port, &p);
        }
        h.advance(Duration::from_millis(20));
    }
    let heard = |h: &mut Harness, ep: SocketAddr, from_port: u16| -> Vec<i16> {
        let mut dec = media_codecs::decoder(&params).unwrap();
        let mut pcm = Vec::new();
        for r in h.take_inbox(ep) {
            assert_eq!(r.from_port, from_port, "the mix leaves from the member's own port");
            dec.decode(&r.bytes[12..], &mut pcm).unwrap();
        }
        pcm
    };
    let (at1, at2) = (heard(&mut h, ep1, 30_000), heard(&mut h, ep2, 40_000));
    assert!(at2.len() >= 40 * 160, "the remote member gets the mix: {} samples", at2.len());
    assert!(
        tone_power(&at1[1600..], 8000, 1300.0) > 1000.0 * tone_power(&at1[1600..], 8000, 440.0).max(1.0),
        "member 1 hears the remote member, not itself"
    );
    assert!(
        tone_power(&at2[1600..], 8000, 440.0) > 1000.0 * tone_power(&at2[1600..], 8000, 1300.0).max(1.0),
        "the remote member hears member 1, not itself"
    );
    // Deleting the remote leg takes it out of the conference on the other core.
    h.take_events();
    h.core(1).delete_leg(remote, now).unwrap();
    h.advance(Duration::from_millis(20));
    assert!(h.take_events().contains(&Event::Member { leg: remote, conference: 80, joined: false }));
    assert_eq!(h.core(0).remove_member(80, remote), Err(CommandError::NotMember(remote, 80)));
    // Ending the conference lets a remote member's leg go free.
    h.core(1).create_leg((1 << 56) | 3, 40_002, spec(ep2), now).unwrap();
    let third = (1u64 << 56) | 3;
    h.core(0).add_remote_member(80, third, 1, codec, false, false).unwrap();
    h.core(1).join_remote(third, 0, 80, 8000, now).unwrap();
    h.core(0).delete_conference(80).unwrap();
    h.advance(Duration::from_millis(20));
    assert!(!h.core(1).leave_remote(third), "the conference's end unjoined it");
}

#[test]
fn only_the_three_loudest_talkers_are_mixed() {
    use media_codecs::{CodecKind, CodecParams};
    let mut h = Harness::new(cfg(), Link::default(), 1);
    let now = h.now();
    h.engine.create_conference(90, 8000, now).unwrap();
    // Four talkers, loudest first, and one listener.
    let talkers = [(500.0, 9000.0), (800.0, 7000.0), (1200.0, 5000.0), (1700.0, 1500.0)];
    let endpoints: Vec<SocketAddr> = (1..=5).map(|i| addr(&format!("10.0.3.{i}:4000"))).collect();
    for (i, ep) in endpoints.iter().enumerate() {
        let spec = LegSpec { remote: Remote::locked(*ep), codec: Some(leg_codec(0, CodecKind::Pcmu, 8000)), ..Default::default() };
        h.engine.create_leg(i as u64 + 1, 30_000 + 2 * i as u16, spec, now).unwrap();
        h.engine.add_member(90, i as u64 + 1, false, false).unwrap();
    }
    let params = CodecParams::new(CodecKind::Pcmu, 8000);
    let signals: Vec<Vec<i16>> = talkers.iter().map(|(hz, amp)| media_codecs::signal::sine(8000, *hz, 2.0, *amp)).collect();
    let mut encoders: Vec<_> = (0..4).map(|_| media_codecs::encoder(&params).unwrap()).collect();
    for k in 0..80 {
        for i in 0..4 {
            let mut p = vec![0u8; 12];
            write_rtp_header(&mut p, 0, k as u16, (k * 160) as u32, 0x400 + i as u32).unwrap();
            encoders[i].encode(&signals[i][k * 160..(k + 1) * 160], &mut p).unwrap();
            h.send(endpoints[i], 30_000 + 2 * i as u16, &p);
        }
        h.advance(Duration::from_millis(20));
    }
    let mut dec = media_codecs::decoder(&params).unwrap();
    let mut pcm = Vec::new();
    for r in h.take_inbox(endpoints[4]) {
        dec.decode(&r.bytes[12..], &mut pcm).unwrap();
    }
    let heard = &pcm[2400..];
    let power = |hz: f64| tone_power(heard, 8000, hz);
    let quietest = power(1700.0);
    for (hz, _) in &talkers[..3] {
        assert!(power(*hz) > 1000.0 * quietest.max(1.0), "{hz} Hz is mixed, the fourth talker is not ({} vs {quietest:.0})", power(*hz));
    }
}
