//! Transcoding through the running media plane: legs of different codecs bridged, speech-like
//! audio sent as RTP from loopback sockets, what comes out decoded and compared with the source.
//!
//! Quality bounds (stated here, measured by `media_codecs::signal`): the waveform codecs (G.711,
//! G.722) by waveform SNR after aligning the codec delay; Opus, which keeps the spectrum and not
//! the waveform, by the spectral SNR of 20 ms frames (phase-blind).

use std::net::{SocketAddr, UdpSocket};

use media_codecs::signal::{best_lag, snr_db, spectral_snr_db, speech_like};
use media_codecs::{CodecKind, CodecParams};
use proto::v1;

mod common;
use common::*;

const SLOT_PCMU_OPUS: u16 = 14;
const SLOT_G722_PCMA: u16 = 15;
const SLOT_DTMF: u16 = 16;

fn codec(pt: u32, name: &str, rate: u32) -> Option<v1::Codec> {
    Some(v1::Codec { payload_type: pt, name: name.into(), rate, channels: 1, ptime_ms: 20, opus: None, telephone_event: None })
}

/// Sends `packets` from `tx` to `to` in bursts of 10, receiving what comes out at `rx` from
/// `from`; returns the payloads received, in order, checking their payload type.
fn exchange(tx: &UdpSocket, to: SocketAddr, rx: &UdpSocket, from: SocketAddr, packets: &[Vec<u8>], out_pt: u8) -> Vec<Vec<u8>> {
    let mut payloads = Vec::new();
    for burst in packets.chunks(10) {
        for p in burst {
            send(tx, p, to);
        }
        for _ in burst {
            let (got, src) = recv(rx, "transcoded RTP");
            assert_eq!(src, from, "leaves from the leg's own port");
            assert_eq!(got[1] & 0x7f, out_pt, "the destination leg's payload type");
            payloads.push(got[12..].to_vec());
        }
    }
    payloads
}

#[tokio::test]
async fn pcmu_and_opus_legs_talk_through_a_transcoding_bridge_both_ways() {
    let (_mp, mut c) = MediaPlane::start(SLOT_PCMU_OPUS).await;
    let (sock_a, sock_b) = (udp(), udp());
    let a = create_leg(&mut c, v1::CreateLegRequest { call_id: "tc".into(), codec: codec(0, "PCMU", 8000), ..Default::default() }).await;
    let b = create_leg(
        &mut c,
        v1::CreateLegRequest {
            call_id: "tc".into(),
            remote: Some(endpoint(local(&sock_b))),
            codec: codec(111, "opus", 48_000),
            ..Default::default()
        },
    )
    .await;
    bridge(&mut c, &a, &b).await;

    // A (PCMU, 8 kHz) → B (Opus, 48 kHz).
    let narrow = speech_like(8000, 2.0);
    let pcmu = CodecParams::new(CodecKind::Pcmu, 8000);
    let opus = CodecParams::new(CodecKind::Opus, 48_000);
    let at_b = exchange(&sock_a, a.local, &sock_b, b.local, &rtp_packets(pcmu, 0, &narrow, 0xA), 111);
    assert_eq!(at_b.len(), 100);
    let heard = resample(&decode(opus, &at_b), 48_000, 8000);
    let lag = best_lag(&narrow, &heard, 480);
    let snr = spectral_snr_db(&narrow[2000..], &heard[2000..], lag, 8000, 3800.0);
    assert!(snr >= 8.0, "PCMU→Opus: spectral SNR {snr:.1} dB (bound 8 dB) at lag {lag}");

    // B (Opus) → A (PCMU), to the address A latched onto.
    let wide = speech_like(48_000, 2.0);
    let at_a = exchange(&sock_b, b.local, &sock_a, a.local, &rtp_packets(opus, 111, &wide, 0xB), 0);
    let heard = decode(pcmu, &at_a);
    let reference = resample(&wide, 48_000, 8000);
    let lag = best_lag(&reference, &heard, 480);
    let snr = spectral_snr_db(&reference[2000..], &heard[2000..], lag, 8000, 3800.0);
    assert!(snr >= 8.0, "Opus→PCMU: spectral SNR {snr:.1} dB (bound 8 dB) at lag {lag}");

    let sb = leg_stats(&mut c, b.id).await.expect("leg B");
    let t = sb.transcoded.expect("B receives transcoded media");
    assert_eq!((t.decoded, t.encoded), (100, 100));
    assert_eq!(sb.codec.map(|c| c.name), Some("opus".into()));
    let cores = core_stats(&mut c).await;
    assert_eq!(cores.iter().map(|c| c.packets_consumed).sum::<u64>(), 200);
}

#[tokio::test]
async fn g722_and_pcma_legs_talk_through_a_transcoding_bridge_and_bad_codecs_name_the_field() {
    let (_mp, mut c) = MediaPlane::start(SLOT_G722_PCMA).await;
    let (sock_a, sock_b) = (udp(), udp());
    let a = create_leg(&mut c, v1::CreateLegRequest { call_id: "wb".into(), codec: codec(9, "G722", 16_000), ..Default::default() }).await;
    let b = create_leg(
        &mut c,
        v1::CreateLegRequest {
            call_id: "wb".into(),
            remote: Some(endpoint(local(&sock_b))),
            codec: codec(8, "PCMA", 8000),
            ..Default::default()
        },
    )
    .await;
    bridge(&mut c, &a, &b).await;

    let wide = speech_like(16_000, 2.0);
    let g722 = CodecParams::new(CodecKind::G722, 16_000);
    let pcma = CodecParams::new(CodecKind::Pcma, 8000);
    let at_b = exchange(&sock_a, a.local, &sock_b, b.local, &rtp_packets(g722, 9, &wide, 0xA), 8);
    let heard = decode(pcma, &at_b);
    let reference = resample(&wide, 16_000, 8000);
    let lag = best_lag(&reference, &heard, 200);
    let snr = snr_db(&reference[2000..], &heard[2000..], lag);
    assert!(snr >= 10.0, "G.722→PCMA: SNR {snr:.1} dB (bound 10 dB) at lag {lag}");

    let narrow = speech_like(8000, 2.0);
    let at_a = exchange(&sock_b, b.local, &sock_a, a.local, &rtp_packets(pcma, 8, &narrow, 0xB), 9);
    let heard = resample(&decode(g722, &at_a), 16_000, 8000);
    let lag = best_lag(&narrow, &heard, 200);
    let snr = snr_db(&narrow[2000..], &heard[2000..], lag);
    assert!(snr >= 10.0, "PCMA→G.722: SNR {snr:.1} dB (bound 10 dB) at lag {lag}");

    for (bad, field) in [
        (v1::Codec { payload_type: 0, name: "G729".into(), ..Default::default() }, "codec.name"),
        (v1::Codec { payload_type: 200, name: "PCMU".into(), ..Default::default() }, "codec.payload_type"),
        (v1::Codec { payload_type: 0, name: "PCMU".into(), ptime_ms: 25, ..Default::default() }, "codec.ptime_ms"),
        (v1::Codec { payload_type: 96, name: "opus".into(), rate: 44_100, ..Default::default() }, "codec.name"),
    ] {
        let err = c
            .create_leg(v1::CreateLegRequest { codec: Some(bad.clone()), ..Default::default() })
            .await
            .expect_err("a bad codec is refused");
        assert_eq!(err.code(), tonic::Code::InvalidArgument, "{bad:?}");
        assert!(err.message().contains(field), "{bad:?}: {}", err.message());
    }
}

#[tokio::test]
async fn dtmf_digits_are_reported_on_the_events_stream_and_cross_a_transcoding_bridge() {
    let (_mp, mut c) = MediaPlane::start(SLOT_DTMF).await;
    let mut events = c.events(v1::EventsRequest {}).await.expect("Events").into_inner();
    let (sock_a, sock_b) = (udp(), udp());
    let with_events = |codec: Option<v1::Codec>, pt: u32| codec.map(|c| v1::Codec { telephone_event: Some(pt), ..c });
    let a = create_leg(
        &mut c,
        v1::CreateLegRequest { call_id: "dtmf".into(), codec: with_events(codec(0, "PCMU", 8000), 101), ..Default::default() },
    )
    .await;
    let b = create_leg(
        &mut c,
        v1::CreateLegRequest {
            call_id: "dtmf".into(),
            remote: Some(endpoint(local(&sock_b))),
            codec: with_events(codec(111, "opus", 48_000), 110),
            ..Default::default()
        },
    )
    .await;
    bridge(&mut c, &a, &b).await;
    // Key 7 held for 100 ms: three progress packets, then the End packet three times.
    let event = |seq: u16, end: bool, duration: u16| telephone_event(101, seq, 8000, 0xA, 7, end, duration);
    for (i, (end, d)) in [(false, 160), (false, 320), (false, 480), (true, 800), (true, 800), (true, 800)].into_iter().enumerate() {
        send(&sock_a, &event(i as u16, end, d), a.local);
    }
    let mut carried = Vec::new();
    for _ in 0..6 {
        let (p, from) = recv(&sock_b, "telephone-event at B");
        assert_eq!(from, b.local);
        carried.push(p);
    }
    assert!(carried.iter().all(|p| p[1] & 0x7f == 110), "B's telephone-event payload type");
    let last = &carried[5];
    assert_eq!((last[12], last[13] & 0x80, u16::from_be_bytes([last[14], last[15]])), (7, 0x80, 4800), "key 7, End, 100 ms at 48 kHz");
    // A latches on its first packet (a Latched event) and reports the digit once.
    let mut digits = Vec::new();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(3);
    while digits.is_empty() {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let ev =
            tokio::time::timeout(left, events.message()).await.expect("the digit within 3 s").expect("Events stream").expect("an event");
        if let Some(v1::event::Kind::Dtmf(d)) = ev.kind {
            digits.push((ev.leg_id, d.digit, d.duration_ms));
        }
    }
    assert_eq!(digits, vec![(a.id, "7".to_owned(), 100)]);
}

const SLOT_INBAND: u16 = 21;

#[tokio::test]
async fn dtmf_crosses_between_rfc4733_and_in_band_tones_both_ways() {
    use media_codecs::dtmf::{Detection, DtmfDetector, ToneGenerator};
    let (_mp, mut c) = MediaPlane::start(SLOT_INBAND).await;
    let mut events = c.events(v1::EventsRequest {}).await.expect("Events").into_inner();
    let (sock_a, sock_b) = (udp(), udp());
    // A sends and takes RFC 4733 events; B (a PSTN gateway, say) only audio.
    let pcmu_events = codec(0, "PCMU", 8000).map(|c| v1::Codec { telephone_event: Some(101), ..c });
    let a = create_leg(&mut c, v1::CreateLegRequest { call_id: "inband".into(), codec: pcmu_events, ..Default::default() }).await;
    let b = create_leg(
        &mut c,
        v1::CreateLegRequest {
            call_id: "inband".into(),
            remote: Some(endpoint(local(&sock_b))),
            codec: codec(8, "PCMA", 8000),
            ..Default::default()
        },
    )
    .await;
    bridge(&mut c, &a, &b).await;
    let pcma = CodecParams::new(CodecKind::Pcma, 8000);

    // A → B: key 4 as events (100 ms, End three times) becomes tones in B's audio.
    let event = |seq: u16, end: bool, duration: u16| telephone_event(101, seq, 8000, 0xA, 4, end, duration);
    for (i, (end, d)) in
        [(false, 160), (false, 320), (false, 480), (false, 640), (true, 800), (true, 800), (true, 800)].into_iter().enumerate()
    {
        send(&sock_a, &event(i as u16, end, d), a.local);
    }
    let mut heard = Vec::new();
    for _ in 0..5 {
        let (p, _) = recv(&sock_b, "tone frames at B");
        assert_eq!(p[1] & 0x7f, 8, "PCMA audio, no events");
        heard.push(p[12..].to_vec());
    }
    let mut pcm = decode(pcma, &heard);
    pcm.extend(std::iter::repeat_n(0, 400));
    let mut found = Vec::new();
    DtmfDetector::new(8000).push(&pcm, |d| found.push(d));
    assert!(matches!(found.as_slice(), [Detection::Began('4'), Detection::Ended('4', 90..=110)]), "B hears key 4 for 100 ms: {found:?}");

    // B → A: key 9 played as tones (100 ms, then 100 ms of silence) reaches A as events.
    let mut tone = Vec::new();
    ToneGenerator::new(8000, -7.0).tone('9', 800, &mut tone);
    tone.extend(std::iter::repeat_n(0, 800));
    let packets = rtp_packets(pcma, 8, &tone, 0xB);
    for p in &packets {
        send(&sock_b, p, b.local);
    }
    let mut at_a = Vec::new();
    while at_a.iter().filter(|p: &&Vec<u8>| p[1] & 0x7f == 101 && p[13] & 0x80 != 0).count() < 3 {
        at_a.push(recv(&sock_a, "RTP at A").0);
    }
    let events_at_a: Vec<&Vec<u8>> = at_a.iter().filter(|p| p[1] & 0x7f == 101).collect();
    assert!(events_at_a.iter().all(|p| p[12] == 9), "key 9");
    assert_eq!(events_at_a[0][1] & 0x80, 0x80, "the first event packet has the marker bit");
    let ts: Vec<u32> = events_at_a.iter().map(|p| u32::from_be_bytes([p[4], p[5], p[6], p[7]])).collect();
    assert!(ts.iter().all(|t| *t == ts[0]), "one event: one timestamp");
    let last = events_at_a.last().expect("end packets");
    let duration = u16::from_be_bytes([last[14], last[15]]);
    assert!((720..=880).contains(&duration), "about 100 ms at 8 kHz: {duration}");

    let mut digits = Vec::new();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(3);
    while digits.len() < 2 {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let ev =
            tokio::time::timeout(left, events.message()).await.expect("the digits within 3 s").expect("Events stream").expect("an event");
        if let Some(v1::event::Kind::Dtmf(d)) = ev.kind {
            digits.push((ev.leg_id, d.digit));
        }
    }
    assert_eq!(
        digits,
        vec![(a.id, "4".to_owned()), (b.id, "9".to_owned())],
        "each digit reported on the leg of the endpoint that keyed it"
    );
    let sa = leg_stats(&mut c, a.id).await.expect("leg A").transcoded.expect("A receives transcoded media");
    let sb = leg_stats(&mut c, b.id).await.expect("leg B").transcoded.expect("B receives transcoded media");
    assert_eq!((sb.digits_to_tones, sa.tones_to_digits), (1, 1));
}

const SLOT_INJECT: u16 = 22;

#[tokio::test]
async fn injected_digits_reach_a_leg_as_events_or_tones_and_bad_requests_name_the_field() {
    use media_codecs::dtmf::{Detection, DtmfDetector};
    let (_mp, mut c) = MediaPlane::start(SLOT_INJECT).await;
    let (sock_a, sock_b) = (udp(), udp());
    let pcmu_events = codec(0, "PCMU", 8000).map(|c| v1::Codec { telephone_event: Some(101), ..c });
    let with_remote = |s: &UdpSocket, codec| v1::CreateLegRequest {
        call_id: "inject".into(),
        remote: Some(endpoint(local(s))),
        codec,
        ..Default::default()
    };
    let a = create_leg(&mut c, with_remote(&sock_a, pcmu_events)).await;
    // B relays with A (same codec but no events: a transcoding bridge carries DTMF across).
    let b = create_leg(&mut c, with_remote(&sock_b, codec(0, "PCMU", 8000))).await;
    bridge(&mut c, &a, &b).await;

    // To A, which takes events: RFC 4733 packets, 3 End packets per digit.
    let r = c
        .inject_dtmf(v1::InjectDtmfRequest { leg_id: a.id, digits: "12".into(), duration_ms: 100, pause_ms: 60 })
        .await
        .expect("InjectDtmf");
    assert_eq!(r.into_inner().queued, 2);
    let mut ends = Vec::new();
    while ends.len() < 6 {
        let (p, _) = recv(&sock_a, "injected events at A");
        if p[1] & 0x7f == 101 && p[13] & 0x80 != 0 {
            ends.push((p[12], u16::from_be_bytes([p[14], p[15]])));
        }
    }
    assert_eq!(ends, vec![(1, 800), (1, 800), (1, 800), (2, 800), (2, 800), (2, 800)], "keys 1 and 2, 100 ms each at 8 kHz");

    // To B, which takes no events: tones in its PCMU.
    c.inject_dtmf(v1::InjectDtmfRequest { leg_id: b.id, digits: "7#".into(), ..Default::default() }).await.expect("InjectDtmf");
    let mut heard = Vec::new();
    for _ in 0..16 {
        let (p, _) = recv(&sock_b, "injected tones at B");
        assert_eq!(p[1] & 0x7f, 0);
        heard.push(p[12..].to_vec());
    }
    let mut pcm = decode(CodecParams::new(CodecKind::Pcmu, 8000), &heard);
    pcm.extend(std::iter::repeat_n(0, 400));
    let mut found = Vec::new();
    DtmfDetector::new(8000).push(&pcm, |d| {
        if let Detection::Ended(digit, _) = d {
            found.push(digit);
        }
    });
    assert_eq!(found, vec!['7', '#']);
    let sb = leg_stats(&mut c, b.id).await.expect("leg B").transcoded.expect("B's stream is the media plane's");
    assert_eq!(sb.digits_injected, 2);

    // What is wrong is named.
    for (req, field) in [
        (v1::InjectDtmfRequest { leg_id: a.id, digits: "1x".into(), ..Default::default() }, "digits"),
        (v1::InjectDtmfRequest { leg_id: a.id, digits: "1".into(), duration_ms: 10, ..Default::default() }, "duration_ms"),
        (v1::InjectDtmfRequest { leg_id: 0xdead, digits: "1".into(), ..Default::default() }, "leg_id"),
    ] {
        let e = c.inject_dtmf(req).await.unwrap_err();
        assert!(e.message().contains(field), "{field}: {e:?}");
    }
    let plain = simple_leg(&mut c, "inject", None).await;
    let e = c.inject_dtmf(v1::InjectDtmfRequest { leg_id: plain.id, digits: "1".into(), ..Default::default() }).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::FailedPrecondition, "a leg without a codec: {e:?}");
}
