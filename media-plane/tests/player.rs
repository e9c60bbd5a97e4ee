//! The player through the running media plane: music on hold from a WAV file of its prompt
//! directory played to a leg over its bridge's audio, stopped, and the bridge's audio resumed in
//! the same stream; tones played once; what is wrong with a request named.

use std::time::Duration;

use media_codecs::{CodecKind, CodecParams};
use proto::v1;
use tonic::Code;

mod common;
use common::*;

const SLOT_PLAYER: u16 = 23;

/// The strongest of `candidates` (Hz) in `pcm` at 8 kHz.
fn strongest(pcm: &[i16], candidates: &[f64]) -> f64 {
    let power = |hz: f64| media_codecs::signal::tone_power(pcm, 8000, hz);
    candidates.iter().copied().max_by(|a, b| power(*a).total_cmp(&power(*b))).unwrap_or(0.0)
}

fn rtp_header(p: &[u8]) -> (u32, u16, u32) {
    (u32::from_be_bytes([p[8], p[9], p[10], p[11]]), u16::from_be_bytes([p[2], p[3]]), u32::from_be_bytes([p[4], p[5], p[6], p[7]]))
}

#[tokio::test]
async fn music_on_hold_continues_the_relayed_stream_and_the_bridge_resumes_in_it() {
    let dir = temp_path("prompts");
    std::fs::create_dir_all(&dir).expect("prompt dir");
    std::fs::write(dir.join("moh.wav"), tone_wav(600.0, 0.5)).expect("write moh.wav");
    let (_mp, mut c) = MediaPlane::start_with(SLOT_PLAYER, &["--prompt-dir", dir.to_str().expect("utf8")]).await;
    let mut events = c.events(v1::EventsRequest {}).await.expect("Events").into_inner();
    let (held, other) = (udp(), udp());
    let pcmu =
        Some(v1::Codec { payload_type: 0, name: "PCMU".into(), rate: 8000, channels: 1, ptime_ms: 20, opus: None, telephone_event: None });
    let leg = |s: &std::net::UdpSocket| v1::CreateLegRequest {
        call_id: "moh".into(),
        remote: Some(endpoint(local(s))),
        codec: pcmu.clone(),
        ..Default::default()
    };
    let a = create_leg(&mut c, leg(&held)).await;
    let b = create_leg(&mut c, leg(&other)).await;
    bridge(&mut c, &a, &b).await;
    let pcmu_params = CodecParams::new(CodecKind::Pcmu, 8000);
    // The other side talks (a 1 kHz tone) all along, 20 ms at a time.
    let talk = rtp_packets(pcmu_params, 0, &media_codecs::signal::sine(8000, 1000.0, 4.0, 8000.0), 0xB);
    let mut talk = talk.iter();
    let step = |talk: &mut std::slice::Iter<'_, Vec<u8>>, n: usize| -> Vec<Vec<u8>> {
        let mut got = Vec::new();
        for _ in 0..n {
            send(&other, talk.next().expect("talk"), b.local);
            got.push(recv(&held, "RTP at the held side").0);
            std::thread::sleep(Duration::from_millis(20));
        }
        got
    };
    let before = step(&mut talk, 5);
    assert_eq!(rtp_header(&before[0]).0, 0xB, "relayed as it is before any play");

    let play = c
        .play(v1::PlayRequest { leg_id: a.id, source: Some(v1::play_request::Source::File("moh.wav".into())), r#loop: true })
        .await
        .expect("Play")
        .into_inner();
    assert_eq!(play.duration_ms, 500);
    // 1.2 s of music on hold: longer than the file, so it looped; the other side's voice is held back.
    let mut on_hold = Vec::new();
    for _ in 0..60 {
        send(&other, talk.next().expect("talk"), b.local);
        let (p, _) = recv(&held, "music on hold");
        on_hold.push(p);
        std::thread::sleep(Duration::from_millis(10));
    }
    // The music continues the stream the held side was receiving (one source, RFC 3550 §5.1):
    // a phone that drops packets of a new SSRC or a timestamp jump still plays it.
    let (ssrc, seq, ts) = rtp_header(&on_hold[0]);
    let (_, seq_before, ts_before) = rtp_header(before.last().expect("relayed"));
    assert_eq!(ssrc, 0xB, "the same SSRC as the relayed stream");
    assert_eq!(seq, seq_before.wrapping_add(1), "the next sequence number");
    let advance = ts.wrapping_sub(ts_before);
    assert!((160..=8_000).contains(&advance), "the timestamp moves on with the time between them: {advance}");
    let payloads: Vec<Vec<u8>> = on_hold.iter().map(|p| p[12..].to_vec()).collect();
    let heard = decode(pcmu_params, &payloads);
    assert_eq!(strongest(&heard[800..], &[600.0, 1000.0]), 600.0, "the held side hears the music, not the other side");
    assert!(heard.len() >= 8000, "at least a second of it: looped");

    let stop = c.stop_play(v1::StopPlayRequest { leg_id: a.id }).await.expect("StopPlay").into_inner();
    assert!(stop.stopped);
    // Music packets sent before the stop took effect.
    held.set_read_timeout(Some(Duration::from_millis(100))).expect("timeout");
    let mut buf = [0u8; 2048];
    while let Ok((n, _)) = held.recv_from(&mut buf) {
        on_hold.push(buf[..n].to_vec());
    }
    held.set_read_timeout(Some(IO_TIMEOUT)).expect("timeout");
    let after = step(&mut talk, 10);
    let (ssrc_after, seq_after, ts_after) = rtp_header(&after[0]);
    let (_, seq_last, ts_last) = rtp_header(on_hold.last().expect("music"));
    assert_eq!(ssrc_after, ssrc, "the bridge resumes in the same stream");
    assert_eq!(seq_after, seq_last.wrapping_add(1), "sequence numbers continue");
    assert_eq!(ts_after, ts_last.wrapping_add(160), "timestamps continue");
    let resumed: Vec<Vec<u8>> = after.iter().map(|p| p[12..].to_vec()).collect();
    assert_eq!(strongest(&decode(pcmu_params, &resumed), &[600.0, 1000.0]), 1000.0, "the other side is heard again");

    // A tone once: it ends by itself.
    let busy = c
        .play(v1::PlayRequest { leg_id: a.id, source: Some(v1::play_request::Source::Tone("busy".into())), r#loop: false })
        .await
        .expect("Play busy")
        .into_inner();
    assert_eq!(busy.duration_ms, 1000);
    let mut finished = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(4);
    while finished.len() < 2 {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let ev =
            tokio::time::timeout(left, events.message()).await.expect("the play events within 4 s").expect("Events").expect("an event");
        if let Some(v1::event::Kind::PlayFinished(f)) = ev.kind {
            finished.push((ev.leg_id, f.play_id, f.stopped));
        }
    }
    assert_eq!(finished, vec![(a.id, play.play_id, true), (a.id, busy.play_id, false)]);

    // What is wrong is named.
    for (source, code, field) in [
        (v1::play_request::Source::File("../moh.wav".into()), Code::InvalidArgument, "file"),
        (v1::play_request::Source::File("/etc/passwd".into()), Code::InvalidArgument, "file"),
        (v1::play_request::Source::File("missing.wav".into()), Code::NotFound, "file"),
        (v1::play_request::Source::Tone("dial".into()), Code::InvalidArgument, "tone"),
    ] {
        let e = c.play(v1::PlayRequest { leg_id: a.id, source: Some(source), r#loop: false }).await.unwrap_err();
        assert!(e.code() == code && e.message().starts_with(field), "{field}: {e:?}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

const SLOT_SHIPPED: u16 = 24;

#[tokio::test]
async fn the_shipped_prompts_and_music_on_hold_play() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../prompts");
    let moh = dir.join("music-on-hold.wav");
    if !moh.exists() {
        assert!(std::env::var("REQUIRE_PROMPTS").as_deref() != Ok("1"), "REQUIRE_PROMPTS=1 but {} is missing", moh.display());
        eprintln!("SKIP: no rendered prompts (bash scripts/make-prompts.sh)");
        return;
    }
    for name in ["music-on-hold", "please-hold", "not-available", "enter-number", "invalid-number", "goodbye", "call-parked"] {
        let bytes = std::fs::read(dir.join(format!("{name}.wav"))).unwrap_or_else(|e| panic!("{name}.wav: {e}"));
        let (rate, pcm) = media_codecs::prompt::read_wav(&bytes).unwrap_or_else(|e| panic!("{name}.wav: {e}"));
        assert_eq!(rate, 16_000, "{name}");
        assert!(pcm.len() >= 16_000 && pcm.iter().any(|s| s.abs() > 2000), "{name}: at least a second, not silent");
    }
    let (_mp, mut c) = MediaPlane::start_with(SLOT_SHIPPED, &["--prompt-dir", dir.to_str().expect("utf8")]).await;
    let listener = udp();
    let g722 = Some(v1::Codec {
        payload_type: 9,
        name: "G722".into(),
        rate: 16_000,
        channels: 1,
        ptime_ms: 20,
        opus: None,
        telephone_event: None,
    });
    let leg = create_leg(
        &mut c,
        v1::CreateLegRequest { call_id: "shipped".into(), remote: Some(endpoint(local(&listener))), codec: g722, ..Default::default() },
    )
    .await;
    let r = c
        .play(v1::PlayRequest { leg_id: leg.id, source: Some(v1::play_request::Source::File("music-on-hold.wav".into())), r#loop: true })
        .await
        .expect("Play")
        .into_inner();
    assert_eq!(r.duration_ms, 16_000);
    let payloads: Vec<Vec<u8>> = (0..25).map(|_| recv(&listener, "music on hold in G.722").0[12..].to_vec()).collect();
    let pcm = decode(CodecParams::new(CodecKind::G722, 16_000), &payloads);
    assert!(pcm.iter().any(|s| s.abs() > 500), "half a second of music, not silence");
}
