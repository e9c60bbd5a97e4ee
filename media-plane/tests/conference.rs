//! A conference through the running media plane: three RTP endpoints, each sending its own
//! tone, each hearing the other two and not itself; muting one removes its tone.

use std::net::UdpSocket;
use std::time::Duration;

use media_codecs::signal::tone_power;
use media_codecs::{CodecKind, CodecParams};
use proto::v1;
use tonic::Code;

mod common;
use common::*;

const SLOT_CONFERENCE: u16 = 25;
const SLOT_CONFERENCE_CROSS: u16 = 42;
const TONES: [f64; 3] = [440.0, 700.0, 1100.0];

/// Each endpoint sends its packets of `range`, one every 20 ms; returns what each one decoded
/// (as many packets as were sent).
fn talk(sockets: &[UdpSocket], legs: &[Leg], packets: &[Vec<Vec<u8>>], range: std::ops::Range<usize>) -> Vec<Vec<i16>> {
    let params = CodecParams::new(CodecKind::Pcmu, 8000);
    // The mix goes on while nobody talks: what came before is dropped, and what the sending
    // produced is read, no more.
    let mut stale = [0u8; 2048];
    for s in sockets {
        s.set_nonblocking(true).expect("nonblocking");
        while s.recv_from(&mut stale).is_ok() {}
        s.set_nonblocking(false).expect("blocking");
    }
    let wanted = range.len();
    for k in range {
        for i in 0..3 {
            send(&sockets[i], &packets[i][k], legs[i].local);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(100));
    sockets
        .iter()
        .map(|s| {
            s.set_read_timeout(Some(Duration::from_millis(50))).expect("timeout");
            let mut buf = [0u8; 2048];
            let mut payloads = Vec::new();
            while payloads.len() < wanted {
                let Ok((n, _)) = s.recv_from(&mut buf) else { break };
                payloads.push(buf[12..n].to_vec());
            }
            decode(params, &payloads)
        })
        .collect()
}

/// Each member's decoded mix has the other members' tones far above its own.
fn each_hears_the_others_not_itself(heard: &[Vec<i16>]) {
    for i in 0..3 {
        let pcm = &heard[i];
        assert!(pcm.len() >= 40 * 160, "member {i} received the mix: {} samples", pcm.len());
        let own = tone_power(&pcm[1600..], 8000, TONES[i]);
        for j in (0..3).filter(|j| *j != i) {
            let other = tone_power(&pcm[1600..], 8000, TONES[j]);
            assert!(other > 1000.0 * own.max(1.0), "member {i} hears {} Hz far above its own {} Hz", TONES[j], TONES[i]);
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn three_members_each_hear_the_other_two_and_not_themselves_and_mute_removes_one() {
    let (_mp, mut c) = MediaPlane::start(SLOT_CONFERENCE).await;
    let mut events = c.events(v1::EventsRequest {}).await.expect("Events").into_inner();
    let conf = c
        .create_conference(v1::CreateConferenceRequest { group: "room-1".into(), rate: 16_000 })
        .await
        .expect("CreateConference")
        .into_inner();
    let pcmu =
        Some(v1::Codec { payload_type: 0, name: "PCMU".into(), rate: 8000, channels: 1, ptime_ms: 20, opus: None, telephone_event: None });
    let sockets: Vec<UdpSocket> = (0..3).map(|_| udp()).collect();
    let mut legs = Vec::new();
    for s in &sockets {
        let leg = create_leg(
            &mut c,
            v1::CreateLegRequest {
                call_id: format!("member-{}", legs.len()),
                group: "room-1".into(),
                remote: Some(endpoint(local(s))),
                codec: pcmu.clone(),
                ..Default::default()
            },
        )
        .await;
        assert_eq!(leg.core, conf.core, "placed with the conference by its group");
        c.add_participant(v1::ParticipantRequest { conference_id: conf.conference_id, leg_id: leg.id, muted: false, deaf: false })
            .await
            .expect("AddParticipant");
        legs.push(leg);
    }
    let params = CodecParams::new(CodecKind::Pcmu, 8000);
    let packets: Vec<Vec<Vec<u8>>> = TONES
        .iter()
        .enumerate()
        .map(|(i, hz)| rtp_packets(params, 0, &media_codecs::signal::sine(8000, *hz, 3.0, 6000.0), 0x100 + i as u32))
        .collect();

    let heard = tokio::task::block_in_place(|| talk(&sockets, &legs, &packets, 0..60));
    each_hears_the_others_not_itself(&heard);

    // The second member muted: the others no longer hear 700 Hz.
    c.update_participant(v1::ParticipantRequest { conference_id: conf.conference_id, leg_id: legs[1].id, muted: true, deaf: false })
        .await
        .expect("mute");
    let heard = tokio::task::block_in_place(|| talk(&sockets, &legs, &packets, 60..120));
    for (i, other) in [(0, 2), (2, 0)] {
        let muted = tone_power(&heard[i][800..], 8000, TONES[1]);
        let talking = tone_power(&heard[i][800..], 8000, TONES[other]);
        assert!(talking > 1000.0 * muted.max(1.0), "member {i} no longer hears the muted member");
    }

    // The events: each member joined, and each started talking with its tone; the muted one
    // stopped.
    let mut joined: Vec<u64> = Vec::new();
    let mut talking: Vec<(u64, bool)> = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(3);
    while talking.iter().filter(|(_, t)| !*t).count() < 1 {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let Ok(Ok(Some(ev))) = tokio::time::timeout(left, events.message()).await else { break };
        match ev.kind {
            Some(v1::event::Kind::Member(m)) if m.conference_id == conf.conference_id && m.joined => joined.push(ev.leg_id),
            Some(v1::event::Kind::Talking(t)) if t.conference_id == conf.conference_id => talking.push((ev.leg_id, t.talking)),
            _ => {}
        }
    }
    let ids: Vec<u64> = legs.iter().map(|l| l.id).collect();
    assert_eq!(joined, ids, "a member event per AddParticipant");
    for id in &ids {
        assert!(talking.contains(&(*id, true)), "member {id} talked: {talking:?}");
    }
    assert_eq!(talking.iter().filter(|(_, t)| !*t).copied().collect::<Vec<_>>(), vec![(legs[1].id, false)], "the muted member stopped");

    // Members cannot be bridged; what is wrong is named; deleting the conference frees them.
    let e = c.create_bridge(v1::CreateBridgeRequest { leg_a: legs[0].id, leg_b: legs[1].id }).await.unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
    let e = c.create_conference(v1::CreateConferenceRequest { group: "room-2".into(), rate: 11_025 }).await.unwrap_err();
    assert!(e.message().starts_with("rate"), "{e:?}");
    let left = c
        .delete_conference(v1::DeleteConferenceRequest { conference_id: conf.conference_id })
        .await
        .expect("DeleteConference")
        .into_inner();
    assert_eq!(left.leg_ids.len(), 3);
    bridge(&mut c, &legs[0], &legs[1]).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn members_on_other_cores_hear_and_are_heard_through_the_cores_queues() {
    let (_mp, mut c) = MediaPlane::start(SLOT_CONFERENCE_CROSS).await;
    let conf = c
        .create_conference(v1::CreateConferenceRequest { group: "room-x".into(), rate: 8000 })
        .await
        .expect("CreateConference")
        .into_inner();
    let pcmu =
        Some(v1::Codec { payload_type: 0, name: "PCMU".into(), rate: 8000, channels: 1, ptime_ms: 20, opus: None, telephone_event: None });
    let sockets: Vec<UdpSocket> = (0..3).map(|_| udp()).collect();
    let mut legs = Vec::new();
    // Member 0 with the conference; members 1 and 2 on the other core (call ids tried until one
    // lands there).
    for (i, s) in sockets.iter().enumerate() {
        let mut tries = 0;
        let leg = loop {
            let req = v1::CreateLegRequest {
                call_id: format!("cross-{i}-{tries}"),
                remote: Some(endpoint(local(s))),
                codec: pcmu.clone(),
                ..Default::default()
            };
            let leg = create_leg(&mut c, req).await;
            if (leg.core == conf.core) == (i == 0) {
                break leg;
            }
            c.delete_leg(v1::DeleteLegRequest { leg_id: leg.id }).await.expect("DeleteLeg");
            tries += 1;
            assert!(tries < 32, "no call id placed a leg on the core wanted");
        };
        c.add_participant(v1::ParticipantRequest { conference_id: conf.conference_id, leg_id: leg.id, muted: false, deaf: false })
            .await
            .expect("AddParticipant across cores");
        legs.push(leg);
    }
    assert!(legs[1].core != conf.core && legs[2].core != conf.core);
    let params = CodecParams::new(CodecKind::Pcmu, 8000);
    let packets: Vec<Vec<Vec<u8>>> = TONES
        .iter()
        .enumerate()
        .map(|(i, hz)| rtp_packets(params, 0, &media_codecs::signal::sine(8000, *hz, 3.0, 6000.0), 0x200 + i as u32))
        .collect();
    let heard = tokio::task::block_in_place(|| talk(&sockets, &legs, &packets, 0..60));
    each_hears_the_others_not_itself(&heard);
    // A member across cores cannot join twice or be bridged; removed, its leg is free again.
    let again = c
        .add_participant(v1::ParticipantRequest { conference_id: conf.conference_id, leg_id: legs[1].id, muted: false, deaf: false })
        .await;
    assert_eq!(again.unwrap_err().code(), Code::FailedPrecondition);
    c.remove_participant(v1::RemoveParticipantRequest { conference_id: conf.conference_id, leg_id: legs[1].id })
        .await
        .expect("RemoveParticipant");
    eventually("the member's core to let its leg go", POLL_TIMEOUT, || {
        let mut c = c.clone();
        let (a, b) = (legs[1].id, legs[2].id);
        async move {
            // Member 2 is still in: bridging it fails; member 1 bridges once it is free.
            match c.create_bridge(v1::CreateBridgeRequest { leg_a: a, leg_b: b }).await {
                Err(e) if e.code() == Code::FailedPrecondition => Ok(()),
                other => Err(format!("{other:?}")),
            }
        }
    })
    .await;
    // Deleting the conference frees the last member across cores.
    c.delete_conference(v1::DeleteConferenceRequest { conference_id: conf.conference_id }).await.expect("DeleteConference");
    eventually("both legs free to bridge", POLL_TIMEOUT, || {
        let mut c = c.clone();
        let (a, b) = (legs[1].id, legs[2].id);
        async move { c.create_bridge(v1::CreateBridgeRequest { leg_a: a, leg_b: b }).await.map(|_| ()).map_err(|e| e.to_string()) }
    })
    .await;
}
