//! SDP offer/answer through the running media plane: the descriptions it returns, the codecs it
//! gives the legs, and the media that then flows between loopback "phones".

use std::net::{SocketAddr, UdpSocket};

use media_codecs::signal::{best_lag, spectral_snr_db, speech_like};
use media_codecs::{CodecKind, CodecParams};
use proto::v1;
use tonic::Code;

mod common;
use common::*;

const SLOT_TRANSCODE: u16 = 17;
const SLOT_RELAY: u16 = 18;
const SLOT_SRTP: u16 = 19;
const SLOT_CREATE_OFFER: u16 = 43;

/// A phone's description: RTP at `at`, formats `fmt` with their `a=` lines.
fn phone_sdp(at: SocketAddr, fmt: &str, attributes: &str) -> String {
    format!(
        "v=0\r\no=- 7 7 IN IP4 {ip}\r\ns=-\r\nc=IN IP4 {ip}\r\nt=0 0\r\nm=audio {port} RTP/AVP {fmt}\r\n{attributes}",
        ip = at.ip(),
        port = at.port()
    )
}

/// The port and payload types of the first `m=` line of `sdp`.
fn media_line(sdp: &str) -> (u16, Vec<u8>) {
    let line = sdp.lines().find(|l| l.starts_with("m=audio ")).unwrap_or_else(|| panic!("no m=audio in {sdp}"));
    let mut parts = line.split_ascii_whitespace().skip(1);
    let port = parts.next().and_then(|p| p.parse().ok()).expect("port");
    (port, parts.skip(1).map(|pt| pt.parse().expect("payload type")).collect())
}

/// The payload type `sdp` maps to `encoding` (e.g. "opus/48000/2").
fn pt_of(sdp: &str, encoding: &str) -> u8 {
    sdp.lines()
        .find_map(|l| l.strip_prefix("a=rtpmap:").filter(|r| r.ends_with(encoding)).and_then(|r| r.split(' ').next()?.parse().ok()))
        .unwrap_or_else(|| panic!("no rtpmap for {encoding} in {sdp}"))
}

fn streams(a: &Leg, b: &Leg) -> Vec<v1::StreamLegs> {
    vec![v1::StreamLegs { offerer_leg: a.id, answerer_leg: b.id }]
}

/// Sends `packets` from `tx` to `to` ten at a time and returns the payloads of what reaches
/// `rx`, checking the payload type.
fn exchange(tx: &UdpSocket, to: SocketAddr, rx: &UdpSocket, packets: &[Vec<u8>], out_pt: u8) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    for burst in packets.chunks(10) {
        for p in burst {
            send(tx, p, to);
        }
        for _ in burst {
            let (got, _) = recv(rx, "media through the bridge");
            assert_eq!(got[1] & 0x7f, out_pt, "the receiving side's payload type");
            out.push(got[12..].to_vec());
        }
    }
    out
}

/// A leg of a call other than `other`'s, on another core if one of 16 call ids lands there.
async fn leg_of_another_call(c: &mut Client, other: &Leg) -> Leg {
    let mut leg = simple_leg(c, "other-call-0", None).await;
    for i in 1..16 {
        if leg.core != other.core {
            break;
        }
        c.delete_leg(v1::DeleteLegRequest { leg_id: leg.id }).await.expect("DeleteLeg");
        leg = simple_leg(c, &format!("other-call-{i}"), None).await;
    }
    leg
}

#[tokio::test]
async fn an_offer_answer_transcodes_a_pcmu_phone_to_an_opus_app_on_legs_of_different_calls() {
    let (_mp, mut c) = MediaPlane::start(SLOT_TRANSCODE).await;
    let (phone, app) = (udp(), udp());
    let a = simple_leg(&mut c, "call-of-the-phone", None).await;
    let b = leg_of_another_call(&mut c, &a).await;
    assert_ne!(a.core, b.core, "the two calls' legs are on different cores");

    // The phone offers PCMU and DTMF; the policy adds Opus for the app.
    let offer = phone_sdp(local(&phone), "0 101", "a=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-16\r\n");
    let policy = v1::CodecPolicy { transcode: vec!["opus".into()], ..Default::default() };
    let to_app = c
        .offer(v1::OfferRequest { sdp: offer, streams: streams(&a, &b), policy: Some(policy), ..Default::default() })
        .await
        .expect("Offer")
        .into_inner()
        .sdp;
    let (port, pts) = media_line(&to_app);
    assert_eq!(port, b.local.port(), "the app is sent to its own leg: {to_app}");
    let (opus_pt, opus_events) = (pt_of(&to_app, "opus/48000/2"), pt_of(&to_app, "telephone-event/48000"));
    assert_eq!(pts, [0, 101, opus_pt, opus_events]);
    assert!(to_app.contains(&format!("c=IN IP4 {}", b.local.ip())));

    // The app takes only Opus.
    let answer = phone_sdp(
        local(&app),
        &format!("{opus_pt} {opus_events}"),
        &format!("a=rtpmap:{opus_pt} opus/48000/2\r\na=rtpmap:{opus_events} telephone-event/48000\r\n"),
    );
    let r = c.answer(v1::AnswerRequest { sdp: answer, streams: streams(&a, &b) }).await.expect("Answer").into_inner();
    let (port, pts) = media_line(&r.sdp);
    assert_eq!(port, a.local.port(), "the phone is sent to its own leg: {}", r.sdp);
    assert_eq!(pts, [0, 101], "the phone hears only its own codec and events");
    let n = &r.streams[0];
    assert!(n.transcoded);
    assert_ne!(n.bridge_id, 0);
    assert_eq!(n.offerer_codec.as_ref().map(|c| c.name.as_str()), Some("PCMU"));
    assert_eq!(n.answerer_codec.as_ref().map(|c| (c.name.as_str(), c.telephone_event)), Some(("opus", Some(u32::from(opus_events)))));

    // Speech both ways, each side in its own codec, to the addresses the descriptions gave.
    let pcmu = CodecParams::new(CodecKind::Pcmu, 8000);
    let opus = CodecParams::new(CodecKind::Opus, 48_000);
    let narrow = speech_like(8000, 2.0);
    let at_app = exchange(&phone, a.local, &app, &rtp_packets(pcmu, 0, &narrow, 0xA), opus_pt);
    let heard = resample(&decode(opus, &at_app), 48_000, 8000);
    let lag = best_lag(&narrow, &heard, 480);
    let snr = spectral_snr_db(&narrow[2000..], &heard[2000..], lag, 8000, 3800.0);
    assert!(snr >= 8.0, "PCMU→Opus: spectral SNR {snr:.1} dB (bound 8 dB)");
    let wide = speech_like(48_000, 2.0);
    let at_phone = exchange(&app, b.local, &phone, &rtp_packets(opus, opus_pt, &wide, 0xB), 0);
    let reference = resample(&wide, 48_000, 8000);
    let heard = decode(pcmu, &at_phone);
    let lag = best_lag(&reference, &heard, 480);
    let snr = spectral_snr_db(&reference[2000..], &heard[2000..], lag, 8000, 3800.0);
    assert!(snr >= 8.0, "Opus→PCMU: spectral SNR {snr:.1} dB (bound 8 dB)");

    // A digit from the phone reaches the app as a telephone-event at Opus's clock.
    for (i, end) in [(0u16, false), (1, false), (2, true), (3, true)] {
        send(&phone, &telephone_event(101, 200 + i, 16_000, 0xA, 5, end, 320), a.local);
    }
    let (event, _) = recv(&app, "the digit at the app");
    assert_eq!(event[1] & 0x7f, opus_events);
    assert_eq!(event[12], 5, "digit 5");
}

#[tokio::test]
async fn an_offer_answer_relays_a_common_codec_and_a_reoffer_that_changes_it_rebridges() {
    let (_mp, mut c) = MediaPlane::start(SLOT_RELAY).await;
    let (phone_a, phone_b) = (udp(), udp());
    let a = simple_leg(&mut c, "relay", None).await;
    let b = simple_leg(&mut c, "relay", None).await;

    // Errors name what is wrong.
    let early = c.answer(v1::AnswerRequest { sdp: phone_sdp(local(&phone_b), "0", ""), streams: streams(&a, &b) }).await.unwrap_err();
    assert_eq!(early.code(), Code::FailedPrecondition, "{early:?}");
    let bad =
        c.offer(v1::OfferRequest { sdp: "hello".into(), streams: streams(&a, &b), policy: None, ..Default::default() }).await.unwrap_err();
    assert!(bad.code() == Code::InvalidArgument && bad.message().starts_with("sdp:"), "{bad:?}");
    let policy = v1::CodecPolicy { transcode: vec!["AMR-WB".into()], ..Default::default() };
    let bad = c
        .offer(v1::OfferRequest {
            sdp: phone_sdp(local(&phone_a), "0", ""),
            streams: streams(&a, &b),
            policy: Some(policy),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert!(bad.code() == Code::InvalidArgument && bad.message().starts_with("policy:"), "{bad:?}");
    let none = c
        .offer(v1::OfferRequest { sdp: phone_sdp(local(&phone_a), "0", ""), streams: vec![], policy: None, ..Default::default() })
        .await
        .unwrap_err();
    assert!(none.message().starts_with("streams"), "{none:?}");

    // Both phones do PCMA: relayed, the payload untouched.
    let to_b = c
        .offer(v1::OfferRequest {
            sdp: phone_sdp(local(&phone_a), "0 8", ""),
            streams: streams(&a, &b),
            policy: None,
            ..Default::default()
        })
        .await
        .expect("Offer")
        .into_inner()
        .sdp;
    assert_eq!(media_line(&to_b), (b.local.port(), vec![0, 8]));
    let r = c
        .answer(v1::AnswerRequest { sdp: phone_sdp(local(&phone_b), "8", ""), streams: streams(&a, &b) })
        .await
        .expect("Answer")
        .into_inner();
    assert!(!r.streams[0].transcoded);
    let relay_bridge = r.streams[0].bridge_id;
    let mut packet = vec![0x80, 8, 0, 1, 0, 0, 0, 160, 0, 0, 0, 0xA];
    packet.extend_from_slice(&[0xd5; 160]);
    send(&phone_a, &packet, a.local);
    assert_eq!(recv(&phone_b, "relayed PCMA").0, packet, "relayed as it was sent");
    // The answer repeated (a 183 then the 200) keeps the bridge.
    let again = c
        .answer(v1::AnswerRequest { sdp: phone_sdp(local(&phone_b), "8", ""), streams: streams(&a, &b) })
        .await
        .expect("Answer")
        .into_inner();
    assert_eq!(again.streams[0].bridge_id, relay_bridge);

    // B re-offers mid-call with only G.722; A's side adds PCMU and A takes it: transcoded now.
    let policy = v1::CodecPolicy { transcode: vec!["PCMU".into()], ..Default::default() };
    let reoffer = c
        .offer(v1::OfferRequest {
            sdp: phone_sdp(local(&phone_b), "9", ""),
            streams: streams(&b, &a),
            policy: Some(policy),
            ..Default::default()
        })
        .await
        .expect("re-Offer")
        .into_inner()
        .sdp;
    assert_eq!(media_line(&reoffer), (a.local.port(), vec![9, 0]));
    let r = c
        .answer(v1::AnswerRequest { sdp: phone_sdp(local(&phone_a), "0", ""), streams: streams(&b, &a) })
        .await
        .expect("re-Answer")
        .into_inner();
    assert!(r.streams[0].transcoded);
    assert_ne!(r.streams[0].bridge_id, relay_bridge, "a new bridge for the new codecs");
    let g722 = CodecParams::new(CodecKind::G722, 16_000);
    let at_a = exchange(&phone_b, b.local, &phone_a, &rtp_packets(g722, 9, &speech_like(16_000, 0.2), 0xB), 0);
    assert_eq!(at_a.len(), 10);
    let stats = stats(&mut c).await;
    assert_eq!(stats.cores.iter().map(|c| c.bridges).sum::<u32>(), 1, "the relay bridge was replaced, not leaked");
}

#[tokio::test]
async fn create_offer_makes_a_calls_legs_and_offer_in_one_request_and_delete_legs_frees_them_in_one() {
    let (_mp, mut c) = MediaPlane::start(SLOT_CREATE_OFFER).await;
    let (phone_a, phone_b) = (udp(), udp());
    let legs_now = |s: &v1::GetStatsResponse| s.cores.iter().map(|c| c.legs).sum::<u32>();

    // Refusals leave nothing behind and name the field.
    let offer = |sdp: String, policy: Option<v1::CodecPolicy>| v1::CreateOfferRequest {
        call_id: "one-trip".into(),
        sdp,
        policy,
        ..Default::default()
    };
    let bad = c.create_offer(offer("hello".into(), None)).await.unwrap_err();
    assert!(bad.code() == Code::InvalidArgument && bad.message().starts_with("sdp:"), "{bad:?}");
    let disabled = phone_sdp(SocketAddr::new(local(&phone_a).ip(), 0), "0", "");
    let bad = c.create_offer(offer(disabled, None)).await.unwrap_err();
    assert!(bad.code() == Code::InvalidArgument && bad.message().starts_with("sdp:"), "{bad:?}");
    let amr = v1::CodecPolicy { transcode: vec!["AMR-WB".into()], ..Default::default() };
    let bad = c.create_offer(offer(phone_sdp(local(&phone_a), "0", ""), Some(amr))).await.unwrap_err();
    assert!(bad.code() == Code::InvalidArgument && bad.message().starts_with("policy:"), "{bad:?}");
    assert_eq!(legs_now(&stats(&mut c).await), 0, "a refused CreateOffer deletes the legs it made");

    // Audio active, video refused (port 0): legs for the audio line only, on one core.
    let two_lines = format!("{}m=video 0 RTP/AVP 96\r\n", phone_sdp(local(&phone_a), "0 8", ""));
    let made = c.create_offer(offer(two_lines, None)).await.expect("CreateOffer").into_inner();
    assert_eq!(made.streams.len(), 2);
    assert_eq!((made.streams[1].offerer_leg, made.streams[1].answerer_leg), (0, 0), "no legs for a disabled line");
    let (a, b) = (made.streams[0].offerer_leg, made.streams[0].answerer_leg);
    assert!(a != 0 && b != 0 && a != b);
    let (stats_a, stats_b) = (leg_stats(&mut c, a).await.expect("offerer leg"), leg_stats(&mut c, b).await.expect("answerer leg"));
    assert_eq!(stats_a.core, made.core);
    assert_eq!(stats_b.core, made.core);
    let at = |s: &v1::LegStats| {
        let local = s.local.as_ref().expect("local");
        SocketAddr::new(local.ip.parse().expect("ip"), local.port as u16)
    };
    let (a_at, b_port) = (at(&stats_a), at(&stats_b).port());
    let a_port = a_at.port();
    assert!(made.sdp.contains(&format!("m=audio {b_port} ")), "the answerer is offered its leg's port: {}", made.sdp);
    assert!(made.sdp.contains("m=video 0 "), "{}", made.sdp);

    // The answer over them bridges them: PCMA relayed as it was sent.
    let streams = made.streams.clone();
    let answer = format!("{}m=video 0 RTP/AVP 96\r\n", phone_sdp(local(&phone_b), "8", ""));
    let r = c.answer(v1::AnswerRequest { sdp: answer, streams }).await.expect("Answer").into_inner();
    assert!(r.sdp.contains(&format!("m=audio {a_port} ")), "the offerer is answered with its leg's port: {}", r.sdp);
    assert!(r.streams[0].bridge_id != 0 && !r.streams[0].transcoded, "{r:?}");
    let mut packet = vec![0x80, 8, 0, 1, 0, 0, 0, 160, 0, 0, 0, 0xA];
    packet.extend_from_slice(&[0xd5; 160]);
    send(&phone_a, &packet, a_at);
    assert_eq!(recv(&phone_b, "relayed PCMA").0, packet, "relayed as it was sent");

    // One DeleteLegs for both (and one that does not exist): ports and bridge freed.
    let gone = 12_345;
    let deleted = c.delete_legs(v1::DeleteLegsRequest { leg_ids: vec![a, b, gone] }).await.expect("DeleteLegs").into_inner();
    assert_eq!(deleted.stats.iter().map(|s| s.leg_id).collect::<Vec<_>>(), vec![a, b]);
    assert_eq!(deleted.stats[0].rtp_packets_in, 1, "the final counters: {:?}", deleted.stats[0]);
    assert_eq!(deleted.unknown, vec![gone]);
    let after = stats(&mut c).await;
    assert_eq!(legs_now(&after), 0);
    assert_eq!(after.cores.iter().map(|c| c.bridges).sum::<u32>(), 0, "the bridge went with its legs");
    let late = c.answer(v1::AnswerRequest { sdp: phone_sdp(local(&phone_b), "8", ""), streams: made.streams }).await.unwrap_err();
    assert!(late.code() == Code::NotFound && late.message().starts_with("streams[0].answerer_leg:"), "{late:?}");

    // At most 16 streams a request.
    let many = phone_sdp(local(&phone_a), "0", "") + &"m=audio 4000 RTP/AVP 0\r\n".repeat(16);
    let bad = c.create_offer(offer(many, None)).await.unwrap_err();
    assert!(bad.code() == Code::InvalidArgument && bad.message().contains("at most 16"), "{bad:?}");
    assert_eq!(legs_now(&stats(&mut c).await), 0);
}

/// An SRTP session of the test's phone (libsrtp, like the media plane; AES_CM_128_HMAC_SHA1_80).
fn srtp_session(key: &[u8], outbound: bool) -> srtp::Session {
    let policy = srtp::StreamPolicy {
        rtp: srtp::CryptoPolicy::aes_cm_128_hmac_sha1_80(),
        rtcp: srtp::CryptoPolicy::aes_cm_128_hmac_sha1_80(),
        key,
        ..Default::default()
    };
    if outbound { srtp::Session::with_outbound_template(policy) } else { srtp::Session::with_inbound_template(policy) }
        .expect("libsrtp session")
}

#[tokio::test]
async fn an_srtp_phone_talks_to_a_plain_rtp_phone_through_legs_on_different_cores() {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD;
    let (_mp, mut c) = MediaPlane::start(SLOT_SRTP).await;
    let ((phone, phone_rtcp), (trunk, trunk_rtcp)) = (udp_pair(), udp_pair());
    let a = simple_leg(&mut c, "srtp-phone", None).await;
    let b = leg_of_another_call(&mut c, &a).await;
    assert_ne!(a.core, b.core);

    let phone_key: Vec<u8> = (100..130).collect();
    let offer = phone_sdp(local(&phone), "0", &format!("a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:{}\r\n", b64.encode(&phone_key)))
        .replace("RTP/AVP", "RTP/SAVP");
    let to_trunk = c
        .offer(v1::OfferRequest { sdp: offer, streams: streams(&a, &b), transport_protocol: "RTP/AVP".into(), ..Default::default() })
        .await
        .expect("Offer")
        .into_inner()
        .sdp;
    assert!(to_trunk.contains(" RTP/AVP 0") && !to_trunk.contains("crypto"), "the trunk gets plain RTP: {to_trunk}");
    let answer = phone_sdp(local(&trunk), "0", "");
    let back = c.answer(v1::AnswerRequest { sdp: answer, streams: streams(&a, &b) }).await.expect("Answer").into_inner().sdp;
    assert!(back.contains(" RTP/SAVP 0"), "{back}");
    let line = back.lines().find_map(|l| l.strip_prefix("a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:")).expect("the media plane's key");
    let media_plane_key = b64.decode(line.trim()).expect("base64 key");
    assert_ne!(media_plane_key, phone_key, "the media plane keys its own direction");

    // Phone → trunk: decrypted on the phone's core, handed to the trunk's core in the clear.
    let mut to_mp = srtp_session(&phone_key, true);
    let mut sent = Vec::new();
    for seq in 0..10u16 {
        let plain = rtp(seq, 0xA1, 160);
        let mut packet = plain.clone();
        to_mp.protect(&mut packet).expect("protect");
        send(&phone, &packet, a.local);
        assert_eq!(recv(&trunk, "RTP at the trunk").0, plain, "the trunk hears the phone's RTP as it was before encryption");
        sent.push(packet);
    }
    let mut report = rtcp_sr(0xA1, 7);
    let plain_report = report.clone();
    to_mp.protect_rtcp(&mut report).expect("protect_rtcp");
    send(&phone_rtcp, &report, a.local_rtcp());
    assert_eq!(recv(&trunk_rtcp, "RTCP at the trunk").0, plain_report);

    // Trunk → phone: encrypted with the media plane's key.
    let mut from_mp = srtp_session(&media_plane_key, false);
    for seq in 0..10u16 {
        let plain = rtp(seq, 0xB2, 160);
        send(&trunk, &plain, b.local);
        let (mut got, _) = recv(&phone, "SRTP at the phone");
        assert_eq!(got.len(), plain.len() + 10, "an 80-bit tag");
        from_mp.unprotect(&mut got).expect("the phone's libsrtp accepts it");
        assert_eq!(got, plain);
    }

    // A tampered packet and a replayed one are counted and go nowhere.
    let mut tampered = rtp(50, 0xA1, 160);
    to_mp.protect(&mut tampered).expect("protect");
    tampered[20] ^= 0x40;
    send(&phone, &tampered, a.local);
    send(&phone, &sent[3], a.local);
    let stats = leg_until(&mut c, a.id, "the SRTP drops", |l| drops(l).srtp_auth + drops(l).srtp_replay == 2).await;
    assert_eq!((drops(&stats).srtp_auth, drops(&stats).srtp_replay), (1, 1));
    trunk.set_read_timeout(Some(std::time::Duration::from_millis(200))).expect("timeout");
    assert!(trunk.recv_from(&mut [0u8; 2048]).is_err(), "nothing reached the trunk");
}
