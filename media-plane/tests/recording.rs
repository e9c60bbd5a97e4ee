//! Recording through the running media plane: a bridge to a stereo WAV (one party per channel),
//! a conference's mix, files complete after a stop, after the legs end and after SIGTERM, and a
//! full disk that stops a recording without stopping the media plane.

use std::path::{Path, PathBuf};
use std::time::Duration;

use media_codecs::signal::{sine, tone_power};
use media_codecs::{CodecKind, CodecParams};
use proto::v1;
use tokio_stream::StreamExt;

mod common;
use common::*;

const SLOT_RECORD_BRIDGE: u16 = 35;
const SLOT_RECORD_END: u16 = 36;
const SLOT_RECORD_FULL: u16 = 37;
const SLOT_RECORD_CONFERENCE: u16 = 38;

fn pcmu_codec() -> v1::Codec {
    v1::Codec { payload_type: 0, name: "PCMU".into(), rate: 8000, channels: 1, ptime_ms: 20, ..Default::default() }
}

/// A WAV file as written: (channels, rate, the data size its header states, samples per channel).
fn read_recording(path: &Path) -> (u16, u32, u32, Vec<Vec<i16>>) {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert!(bytes.len() >= 44 && &bytes[..4] == b"RIFF" && &bytes[8..16] == b"WAVEfmt ", "a WAV header");
    let u16_at = |at: usize| u16::from_le_bytes([bytes[at], bytes[at + 1]]);
    let u32_at = |at: usize| u32::from_le_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]]);
    let (channels, rate, data) = (u16_at(22), u32_at(24), u32_at(40));
    assert_eq!(&bytes[36..40], b"data");
    assert_eq!(u32_at(4), 36 + data, "RIFF size");
    assert_eq!(data as usize, bytes.len() - 44, "the header states the data the file has");
    let n = usize::from(channels);
    let samples: Vec<i16> = bytes[44..].chunks_exact(2).map(|b| i16::from_le_bytes([b[0], b[1]])).collect();
    let per_channel = (0..n).map(|c| samples.iter().skip(c).step_by(n).copied().collect()).collect();
    (channels, rate, data, per_channel)
}

fn recording_dir(tag: &str) -> PathBuf {
    let dir = temp_path(tag);
    std::fs::create_dir_all(&dir).expect("recording dir");
    dir
}

/// Sends `seconds` of a `hz` tone as PCMU from `from` to `to`, paced at 20 ms.
async fn speak(from: &std::net::UdpSocket, to: std::net::SocketAddr, hz: f64, seconds: f64, ssrc: u32) {
    let tone = sine(8000, hz, seconds, 8000.0);
    for p in rtp_packets(CodecParams::new(CodecKind::Pcmu, 8000), 0, &tone, ssrc) {
        send(from, &p, to);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Two PCMU legs of call `call_id`, sending to two local sockets, bridged.
async fn bridged_call(c: &mut Client, call_id: &str) -> (std::net::UdpSocket, std::net::UdpSocket, Leg, Leg) {
    let (pa, pb) = (udp(), udp());
    let leg = |remote| v1::CreateLegRequest {
        call_id: call_id.into(),
        remote: Some(endpoint(remote)),
        codec: Some(pcmu_codec()),
        ..Default::default()
    };
    let a = create_leg(c, leg(local(&pa))).await;
    let b = create_leg(c, leg(local(&pb))).await;
    bridge(c, &a, &b).await;
    (pa, pb, a, b)
}

async fn next_recording_stopped(events: &mut tonic::Streaming<v1::Event>) -> v1::RecordingSummary {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let ev = tokio::time::timeout_at(deadline, events.next()).await.expect("a recording_stopped event within 10 s");
        if let Some(Ok(v1::Event { kind: Some(v1::event::Kind::RecordingStopped(s)), .. })) = ev {
            return s;
        }
    }
}

#[tokio::test]
async fn a_bridge_is_recorded_one_party_per_channel_and_the_file_is_complete_after_stop() {
    let dir = recording_dir("rec-bridge");
    let (_mp, mut c) = MediaPlane::start_with(SLOT_RECORD_BRIDGE, &["--recording-dir", dir.to_str().expect("utf8")]).await;
    let (pa, pb, a, b) = bridged_call(&mut c, "rec").await;

    // Bad requests name their field.
    for (req, field) in [
        (v1::StartRecordingRequest { leg_ids: vec![a.id], file: "../x.wav".into(), ..Default::default() }, "file"),
        (v1::StartRecordingRequest { leg_ids: vec![a.id], file: "x.mp3".into(), ..Default::default() }, "file"),
        (v1::StartRecordingRequest { file: "x.wav".into(), ..Default::default() }, "leg_ids"),
        (v1::StartRecordingRequest { leg_ids: vec![a.id, a.id], file: "x.wav".into(), ..Default::default() }, "leg_ids"),
        (v1::StartRecordingRequest { leg_ids: vec![a.id], file: "x.wav".into(), rate: 44_100, ..Default::default() }, "rate"),
        (v1::StartRecordingRequest { leg_ids: vec![a.id, 999], file: "x.wav".into(), ..Default::default() }, "leg_ids[1]"),
    ] {
        let e = c.start_recording(req.clone()).await.unwrap_err();
        assert!(e.message().starts_with(field), "{req:?}: {e:?}");
    }
    assert!(!dir.join("x.wav").exists(), "a refused recording writes nothing");

    let r = c
        .start_recording(v1::StartRecordingRequest {
            leg_ids: vec![a.id, b.id],
            file: "calls/one.wav".into(),
            pcap: true,
            ..Default::default()
        })
        .await
        .expect("StartRecording")
        .into_inner();
    assert_eq!((r.channels, r.rate), (2, 8000));
    let again = c.start_recording(v1::StartRecordingRequest { leg_ids: vec![a.id], file: "again.wav".into(), ..Default::default() }).await;
    assert!(again.unwrap_err().message().contains("being recorded"), "a leg is in one recording at a time");
    // An existing file is never overwritten (and the refused recording leaves the leg free).
    std::fs::write(dir.join("taken.wav"), b"not ours").expect("write");
    let spare_remote = Some(endpoint(local(&udp())));
    let spare = create_leg(
        &mut c,
        v1::CreateLegRequest { call_id: "rec".into(), remote: spare_remote, codec: Some(pcmu_codec()), ..Default::default() },
    )
    .await;
    let taken =
        c.start_recording(v1::StartRecordingRequest { leg_ids: vec![spare.id], file: "taken.wav".into(), ..Default::default() }).await;
    assert!(taken.unwrap_err().message().starts_with("file"));
    assert_eq!(std::fs::read(dir.join("taken.wav")).expect("read"), b"not ours");
    c.start_recording(v1::StartRecordingRequest { leg_ids: vec![spare.id], file: "spare.wav".into(), ..Default::default() })
        .await
        .expect("the leg is free again");
    // The two parties talk at once, each its own tone; the relay goes on as before.
    let (pa2, pb2) = (pa.try_clone().expect("clone"), pb.try_clone().expect("clone"));
    tokio::join!(speak(&pa2, a.local, 440.0, 1.0, 0xA), speak(&pb2, b.local, 1000.0, 1.0, 0xB));
    let summary = c.stop_recording(v1::StopRecordingRequest { recording_id: r.recording_id }).await.expect("StopRecording").into_inner();
    let s = summary.summary.expect("summary");
    assert_eq!((s.reason.as_str(), s.packets, s.late), ("stopped", 100, 0), "{s:?}");
    assert!((900..=1500).contains(&s.duration_ms), "{s:?}");
    let (channels, rate, data, ch) = read_recording(&dir.join("calls/one.wav"));
    assert_eq!((channels, rate, u64::from(data) + 44), (2, 8000, s.bytes));
    let (left, right) = (&ch[0][800..], &ch[1][800..]);
    assert!(tone_power(left, 8000, 440.0) > 100.0 * tone_power(left, 8000, 1000.0), "channel 0 is the first leg's party");
    assert!(tone_power(right, 8000, 1000.0) > 100.0 * tone_power(right, 8000, 440.0), "channel 1 is the second leg's");
    assert!(c.stop_recording(v1::StopRecordingRequest { recording_id: r.recording_id }).await.is_err(), "stopped once");
    // The pcap beside it: every RTP packet of both parties, in raw IPv4/UDP, channel by source.
    let pcap = std::fs::read(dir.join("calls/one.pcap")).expect("the pcap file");
    assert_eq!(&pcap[..4], &0xa1b2_c3d4u32.to_le_bytes(), "pcap magic");
    let (mut at, mut per_source) = (24, std::collections::HashMap::new());
    while at + 16 <= pcap.len() {
        let len = u32::from_le_bytes(pcap[at + 8..at + 12].try_into().expect("4 bytes")) as usize;
        let packet = &pcap[at + 16..at + 16 + len];
        assert_eq!((packet[0], packet[9], packet[28] >> 6), (0x45, 17, 2), "IPv4, UDP, RTP version 2");
        *per_source.entry(packet[15]).or_insert(0) += 1;
        at += 16 + len;
    }
    assert_eq!(at, pcap.len(), "whole records");
    assert_eq!((per_source.get(&1), per_source.get(&2)), (Some(&50), Some(&50)), "{per_source:?}");
    let relayed = leg_stats(&mut c, b.id).await.expect("leg b").rtp_packets_out;
    assert_eq!(relayed, 50, "recording did not disturb the relay");
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn a_recording_ends_with_its_legs_and_the_files_are_complete_after_sigterm() {
    let dir = recording_dir("rec-end");
    let (mut mp, mut c) = MediaPlane::start_with(SLOT_RECORD_END, &["--recording-dir", dir.to_str().expect("utf8")]).await;
    let mut events = c.events(v1::EventsRequest {}).await.expect("Events").into_inner();
    let (pa, pb, a, b) = bridged_call(&mut c, "end").await;
    let r = c
        .start_recording(v1::StartRecordingRequest { leg_ids: vec![a.id], file: "ended.wav".into(), ..Default::default() })
        .await
        .expect("start");
    speak(&pa, a.local, 440.0, 0.5, 0xA).await;
    c.delete_leg(v1::DeleteLegRequest { leg_id: a.id }).await.expect("DeleteLeg");
    let s = next_recording_stopped(&mut events).await;
    assert_eq!((s.recording_id, s.reason.as_str(), s.channels), (r.into_inner().recording_id, "ended", 1));
    let (_, _, data, ch) = read_recording(&dir.join("ended.wav"));
    assert!(data >= 7000 && tone_power(&ch[0], 8000, 440.0) > 1e9, "half a second of the tone: {data} bytes");

    // Another, still running when the media plane is told to stop.
    c.start_recording(v1::StartRecordingRequest { leg_ids: vec![b.id], file: "shutdown.wav".into(), ..Default::default() })
        .await
        .expect("start");
    speak(&pb, b.local, 1000.0, 0.6, 0xB).await;
    mp.terminate();
    assert!(mp.wait_exit(Duration::from_secs(15)).await.is_some(), "the media plane stops on SIGTERM");
    let (_, _, data, ch) = read_recording(&dir.join("shutdown.wav"));
    assert!(data >= 8000 && tone_power(&ch[0], 8000, 1000.0) > 1e9, "the running recording is complete: {data} bytes");
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn a_conference_is_recorded_as_its_whole_mix() {
    let dir = recording_dir("rec-conf");
    let (_mp, mut c) = MediaPlane::start_with(SLOT_RECORD_CONFERENCE, &["--recording-dir", dir.to_str().expect("utf8")]).await;
    let conf =
        c.create_conference(v1::CreateConferenceRequest { group: "room".into(), rate: 16_000 }).await.expect("conference").into_inner();
    let mut members = Vec::new();
    for _ in 0..2 {
        let s = udp();
        let l = create_leg(
            &mut c,
            v1::CreateLegRequest {
                call_id: "m".into(),
                group: "room".into(),
                remote: Some(endpoint(local(&s))),
                codec: Some(pcmu_codec()),
                ..Default::default()
            },
        )
        .await;
        c.add_participant(v1::ParticipantRequest { conference_id: conf.conference_id, leg_id: l.id, muted: false, deaf: false })
            .await
            .expect("add");
        members.push((s, l));
    }
    let r = c
        .start_recording(v1::StartRecordingRequest { conference_id: conf.conference_id, file: "room.wav".into(), ..Default::default() })
        .await
        .expect("start")
        .into_inner();
    assert_eq!((r.channels, r.rate), (1, 16_000));
    let (s0, s1) = (members[0].0.try_clone().expect("clone"), members[1].0.try_clone().expect("clone"));
    tokio::join!(speak(&s0, members[0].1.local, 440.0, 1.0, 1), speak(&s1, members[1].1.local, 1000.0, 1.0, 2));
    let s = c
        .stop_recording(v1::StopRecordingRequest { recording_id: r.recording_id })
        .await
        .expect("stop")
        .into_inner()
        .summary
        .expect("summary");
    assert!(s.packets >= 40, "{s:?}");
    let (channels, rate, _, ch) = read_recording(&dir.join("room.wav"));
    assert_eq!((channels, rate), (1, 16_000));
    let mix = &ch[0][4000..];
    let (p440, p1000, p700) = (tone_power(mix, 16_000, 440.0), tone_power(mix, 16_000, 1000.0), tone_power(mix, 16_000, 700.0));
    assert!(p440 > 20.0 * p700 && p1000 > 20.0 * p700, "both members in the mix: {p440:.0} {p1000:.0} vs {p700:.0}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn a_full_disk_stops_the_recording_with_an_event_and_the_media_plane_carries_on() {
    if !is_root() {
        assert!(std::env::var("REQUIRE_ROOT").as_deref() != Ok("1"), "REQUIRE_ROOT=1 but not root");
        eprintln!("SKIP: the full-disk test mounts a small tmpfs, which needs root");
        return;
    }
    let dir = recording_dir("rec-full");
    let mounted = std::process::Command::new("mount").args(["-t", "tmpfs", "-o", "size=64k", "tmpfs"]).arg(&dir).status().expect("mount");
    assert!(mounted.success(), "mount a 64 KiB tmpfs on {}", dir.display());
    struct Unmount(PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount").arg(&self.0).status();
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
    let _unmount = Unmount(dir.clone());
    let (mut mp, mut c) = MediaPlane::start_with(SLOT_RECORD_FULL, &["--recording-dir", dir.to_str().expect("utf8")]).await;
    let mut events = c.events(v1::EventsRequest {}).await.expect("Events").into_inner();
    let (pa, _pb, a, b) = bridged_call(&mut c, "full").await;
    // 48 kHz, two channels: 192 kB a second, so 64 KiB is full within a second.
    let r = c
        .start_recording(v1::StartRecordingRequest {
            leg_ids: vec![a.id, b.id],
            file: "big.wav".into(),
            rate: 48_000,
            ..Default::default()
        })
        .await
        .expect("start")
        .into_inner();
    let speaking = speak(&pa, a.local, 440.0, 2.0, 0xA);
    let (_, s) = tokio::join!(speaking, next_recording_stopped(&mut events));
    assert_eq!(s.recording_id, r.recording_id);
    assert!(s.reason.starts_with("write failed"), "{s:?}");
    mp.assert_running();
    // The relay went on, and the recording is over.
    assert!(leg_stats(&mut c, b.id).await.expect("leg b").rtp_packets_out >= 90);
    assert!(c.stop_recording(v1::StopRecordingRequest { recording_id: r.recording_id }).await.is_err());
}
