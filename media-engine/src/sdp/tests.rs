use super::*;

const PHONE_A: &str = "v=0\r\no=alice 2890844526 2890844526 IN IP4 10.0.0.5\r\ns=-\r\nc=IN IP4 10.0.0.5\r\n\
t=0 0\r\nm=audio 49170 RTP/AVP 0 8 101\r\na=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-16\r\n\
a=rtcp:49171\r\na=candidate:1 1 UDP 2130706431 10.0.0.5 49170 typ host\r\na=ptime:20\r\na=sendrecv\r\n";

/// Deterministic "randomness" for the media plane's keys.
fn counting(buf: &mut [u8]) {
    for (i, b) in buf.iter_mut().enumerate() {
        *b = i as u8;
    }
}

/// An offer with the offerer's transport (most tests are about codecs).
fn offer(body: &[u8], policy: &CodecPolicy, anchor: &Anchor) -> Result<RewrittenOffer, SdpError> {
    super::offer(body, policy, Transport::Same, anchor, &mut counting)
}

fn media_plane(port: u16) -> Anchor {
    Anchor { ip: "203.0.113.9".parse().unwrap(), ports: vec![Some(port)] }
}

fn answer_from_b(body: &str) -> String {
    format!("v=0\r\no=bob 1 1 IN IP4 10.0.0.7\r\ns=-\r\nc=IN IP4 10.0.0.7\r\nt=0 0\r\n{body}")
}

fn only(streams: &[Option<Negotiated>]) -> &Negotiated {
    assert_eq!(streams.len(), 1);
    streams[0].as_ref().expect("stream negotiated")
}

#[test]
fn offer_points_the_answerer_at_the_media_plane_and_drops_ice() {
    let out = offer(PHONE_A.as_bytes(), &CodecPolicy::default(), &media_plane(30_000)).unwrap();
    assert!(out.sdp.contains("o=alice 2890844526 2890844526 IN IP4 203.0.113.9\r\n"), "{}", out.sdp);
    assert!(out.sdp.contains("c=IN IP4 203.0.113.9\r\n"));
    assert!(out.sdp.contains("m=audio 30000 RTP/AVP 0 8 101\r\n"));
    assert!(out.sdp.contains("a=rtcp:30001\r\n"));
    assert!(out.sdp.contains("a=rtpmap:101 telephone-event/8000\r\n"));
    assert!(out.sdp.contains("a=sendrecv\r\n"));
    assert!(!out.sdp.contains("candidate"));
    assert!(!out.sdp.contains("10.0.0.5"));
    let a = out.state.offerer().next().flatten().cloned().unwrap();
    assert_eq!(a.rtp, Some("10.0.0.5:49170".parse().unwrap()));
    assert_eq!(a.rtcp, Some("10.0.0.5:49171".parse().unwrap()));
    assert_eq!(a.direction, Direction::SendRecv);
    // What the media plane writes parses again to the same streams.
    let again = parse(out.sdp.as_bytes()).unwrap();
    assert_eq!(formats(&again.medias[0]).iter().map(|f| f.pt).collect::<Vec<_>>(), [0, 8, 101]);
}

#[test]
fn a_codec_both_sides_have_is_relayed_with_one_codec_on_both_legs() {
    let offered = offer(PHONE_A.as_bytes(), &CodecPolicy::default(), &media_plane(30_000)).unwrap();
    let b = answer_from_b("m=audio 5004 RTP/AVP 8 101\r\na=rtpmap:101 telephone-event/8000\r\n");
    let out = answer(&offered.state, b.as_bytes(), &media_plane(30_002)).unwrap();
    let n = only(&out.streams);
    assert!(!n.transcoded);
    assert_eq!(n.offerer_codec, n.answerer_codec);
    let codec = n.answerer_codec.unwrap();
    assert_eq!((codec.payload_type, codec.params.kind, codec.telephone_event), (8, CodecKind::Pcma, Some(101)));
    assert_eq!(n.answerer.rtp, Some("10.0.0.7:5004".parse().unwrap()));
    assert!(out.sdp.contains("m=audio 30002 RTP/AVP 8 101\r\n"), "{}", out.sdp);
    assert!(out.sdp.contains("c=IN IP4 203.0.113.9\r\n"));
    assert!(!out.sdp.contains("10.0.0.7"));
}

#[test]
fn an_added_codec_the_answerer_picks_is_transcoded_with_dtmf_at_its_clock() {
    let policy = CodecPolicy { transcode: vec!["opus".into()], ..Default::default() };
    let offered = offer(PHONE_A.as_bytes(), &policy, &media_plane(30_000)).unwrap();
    assert!(offered.sdp.contains("m=audio 30000 RTP/AVP 0 8 101 96 97\r\n"), "{}", offered.sdp);
    assert!(offered.sdp.contains("a=rtpmap:96 opus/48000/2\r\n"));
    assert!(offered.sdp.contains("a=fmtp:96 useinbandfec=1\r\n"));
    assert!(offered.sdp.contains("a=rtpmap:97 telephone-event/48000\r\n"));
    // An Opus-only answerer (a WebRTC-style app) with DTMF.
    let b = answer_from_b(
        "m=audio 5004 RTP/AVP 96 97\r\na=rtpmap:96 opus/48000/2\r\na=fmtp:96 useinbandfec=1\r\na=rtpmap:97 telephone-event/48000\r\n",
    );
    let out = answer(&offered.state, b.as_bytes(), &media_plane(30_002)).unwrap();
    let n = only(&out.streams);
    assert!(n.transcoded);
    let (a, b) = (n.offerer_codec.unwrap(), n.answerer_codec.unwrap());
    assert_eq!((a.payload_type, a.params.kind, a.telephone_event), (0, CodecKind::Pcmu, Some(101)));
    assert_eq!((b.payload_type, b.params.kind, b.telephone_event), (96, CodecKind::Opus, Some(97)));
    assert_eq!(b.params.rate, 8000, "Opus runs at the PCMU side's rate: no resampling");
    assert!(b.params.opus.fec);
    // The offerer hears back only its own codec and its own telephone-event.
    assert!(out.sdp.contains("m=audio 30002 RTP/AVP 0 101\r\n"), "{}", out.sdp);
    assert!(out.sdp.contains("a=rtpmap:101 telephone-event/8000\r\n"));
    assert!(!out.sdp.contains("opus"));
}

#[test]
fn a_transcoded_offerer_keeps_its_telephone_events_when_the_answerer_has_none() {
    let policy = CodecPolicy { transcode: vec!["PCMA".into()], strip: vec!["PCMA".into()], ..Default::default() };
    let offered = offer(PHONE_A.as_bytes(), &policy, &media_plane(30_000)).unwrap();
    assert!(offered.sdp.contains("m=audio 30000 RTP/AVP 0 101 8\r\n"), "{}", offered.sdp);
    let b = answer_from_b("m=audio 5004 RTP/AVP 8\r\n");
    let out = answer(&offered.state, b.as_bytes(), &media_plane(30_002)).unwrap();
    assert!(out.sdp.contains("m=audio 30002 RTP/AVP 0 101\r\n"), "{}", out.sdp);
    let n = only(&out.streams);
    assert_eq!((n.offerer_codec.unwrap().telephone_event, n.answerer_codec.unwrap().telephone_event), (Some(101), None));
}

#[test]
fn stripped_codecs_are_neither_offered_nor_accepted() {
    let policy = CodecPolicy { strip: vec!["PCMA".into()], ..Default::default() };
    let offered = offer(PHONE_A.as_bytes(), &policy, &media_plane(30_000)).unwrap();
    assert!(offered.sdp.contains("m=audio 30000 RTP/AVP 0 101\r\n"), "{}", offered.sdp);
    let b = answer_from_b("m=audio 5004 RTP/AVP 8\r\n");
    let err = answer(&offered.state, b.as_bytes(), &media_plane(30_002)).unwrap_err();
    assert_eq!(err, SdpError::Stream { stream: 0, why: "the answer names no codec that was offered".into() });
}

#[test]
fn stripping_all_but_kept_codecs_offers_only_those() {
    let policy = CodecPolicy { strip: vec!["all".into()], keep: vec!["pcma".into()], ..Default::default() };
    let offered = offer(PHONE_A.as_bytes(), &policy, &media_plane(30_000)).unwrap();
    assert!(offered.sdp.contains("m=audio 30000 RTP/AVP 8 101\r\n"), "{}", offered.sdp);
}

#[test]
fn masking_every_codec_and_adding_one_forces_transcoding() {
    let policy = CodecPolicy { mask: vec!["all".into()], transcode: vec!["G722".into()], ..Default::default() };
    let offered = offer(PHONE_A.as_bytes(), &policy, &media_plane(30_000)).unwrap();
    assert!(offered.sdp.contains("m=audio 30000 RTP/AVP 101 9\r\n"), "{}", offered.sdp);
    assert!(offered.sdp.contains("a=rtpmap:9 G722/8000\r\n"));
    let b = answer_from_b("m=audio 5004 RTP/AVP 9 101\r\na=rtpmap:101 telephone-event/8000\r\na=ptime:30\r\n");
    let out = answer(&offered.state, b.as_bytes(), &media_plane(30_002)).unwrap();
    let n = only(&out.streams);
    assert!(n.transcoded);
    assert_eq!(n.offerer_codec.unwrap().params.kind, CodecKind::Pcmu);
    let b = n.answerer_codec.unwrap();
    assert_eq!((b.params.kind, b.ptime_ms, b.telephone_event), (CodecKind::G722, 30, Some(101)));
    assert!(out.sdp.contains("m=audio 30002 RTP/AVP 0 101\r\n"), "{}", out.sdp);
    assert!(out.sdp.contains("a=ptime:20\r\n"), "the offerer is sent its own packet time");
}

#[test]
fn a_renumbered_answer_gets_a_codec_per_leg_so_the_payload_type_is_rewritten() {
    let offer_text = PHONE_A.replace("0 8 101", "96 101").replace("a=rtpmap:101", "a=rtpmap:96 opus/48000/2\r\na=rtpmap:101");
    let offered = offer(offer_text.as_bytes(), &CodecPolicy::default(), &media_plane(30_000)).unwrap();
    let b = answer_from_b("m=audio 5004 RTP/AVP 111\r\na=rtpmap:111 opus/48000/2\r\n");
    let n = answer(&offered.state, b.as_bytes(), &media_plane(30_002)).unwrap().streams.remove(0).unwrap();
    assert!(n.transcoded);
    assert_eq!(n.offerer_codec.unwrap().payload_type, 96);
    assert_eq!(n.answerer_codec.unwrap().payload_type, 111);
}

#[test]
fn a_refused_stream_is_refused_towards_the_offerer() {
    let two = format!("{PHONE_A}m=video 49172 RTP/AVP 96\r\na=rtpmap:96 H264/90000\r\n");
    let anchor = Anchor { ip: "203.0.113.9".parse().unwrap(), ports: vec![Some(30_000), Some(30_004)] };
    let offered = offer(two.as_bytes(), &CodecPolicy::default(), &anchor).unwrap();
    assert!(offered.sdp.contains("m=video 30004 RTP/AVP 96\r\n"), "{}", offered.sdp);
    let b = answer_from_b("m=audio 5004 RTP/AVP 0\r\nm=video 0 RTP/AVP 96\r\n");
    let back = Anchor { ip: "203.0.113.9".parse().unwrap(), ports: vec![Some(30_002), Some(30_006)] };
    let out = answer(&offered.state, b.as_bytes(), &back).unwrap();
    assert!(out.streams[0].is_some());
    assert!(out.streams[1].is_none());
    assert!(out.sdp.contains("m=video 0 RTP/AVP 96\r\n"), "{}", out.sdp);
    let wrong = answer_from_b("m=audio 5004 RTP/AVP 0\r\n");
    assert_eq!(answer(&offered.state, wrong.as_bytes(), &back).unwrap_err(), SdpError::StreamCount { offer: 2, answer: 1 });
}

#[test]
fn a_stream_without_a_leg_is_offered_disabled() {
    let two = format!("{PHONE_A}m=video 49172 RTP/AVP 96\r\n");
    let offered = offer(two.as_bytes(), &CodecPolicy::default(), &media_plane(30_000)).unwrap();
    assert!(offered.sdp.contains("m=video 0 RTP/AVP 96\r\n"), "{}", offered.sdp);
    assert_eq!(offered.state.offerer().filter(Option::is_some).count(), 1);
}

#[test]
fn hold_is_read_from_direction_and_from_the_zero_address() {
    let held = PHONE_A.replace("a=sendrecv", "a=sendonly");
    let offered = offer(held.as_bytes(), &CodecPolicy::default(), &media_plane(30_000)).unwrap();
    assert_eq!(offered.state.offerer().next().flatten().unwrap().direction, Direction::SendOnly);
    assert!(offered.sdp.contains("a=sendonly\r\n"), "the direction reaches the other side");
    let old_style = PHONE_A.replace("c=IN IP4 10.0.0.5", "c=IN IP4 0.0.0.0");
    let offered = offer(old_style.as_bytes(), &CodecPolicy::default(), &media_plane(30_000)).unwrap();
    assert_eq!(offered.state.offerer().next().flatten().unwrap().rtp, None);
}

#[test]
fn rtcp_mux_is_answered_to_the_offerer_whatever_the_answerer_does() {
    let muxed = PHONE_A.replace("a=rtcp:49171\r\n", "a=rtcp-mux\r\n");
    let offered = offer(muxed.as_bytes(), &CodecPolicy::default(), &media_plane(30_000)).unwrap();
    assert!(offered.sdp.contains("a=rtcp-mux\r\n"));
    let a = offered.state.offerer().next().flatten().cloned().unwrap();
    assert!(a.rtcp_mux);
    assert_eq!(a.rtcp, None);
    let b = answer_from_b("m=audio 5004 RTP/AVP 0\r\n");
    let out = answer(&offered.state, b.as_bytes(), &media_plane(30_002)).unwrap();
    assert!(out.sdp.contains("a=rtcp-mux\r\n"), "{}", out.sdp);
    let n = only(&out.streams);
    assert!(!n.answerer.rtcp_mux);
    assert_eq!(n.answerer.rtcp, Some("10.0.0.7:5005".parse().unwrap()));
}

#[test]
fn a_stream_that_is_not_rtp_is_relayed_untouched() {
    let fax = "v=0\r\no=- 1 1 IN IP4 10.0.0.5\r\ns=-\r\nc=IN IP4 10.0.0.5\r\nt=0 0\r\nm=image 4000 udptl t38\r\na=T38FaxVersion:0\r\n";
    let offered =
        offer(fax.as_bytes(), &CodecPolicy { transcode: vec!["opus".into()], ..Default::default() }, &media_plane(30_000)).unwrap();
    assert!(offered.sdp.contains("m=image 30000 udptl t38\r\n"), "{}", offered.sdp);
    assert!(offered.sdp.contains("a=T38FaxVersion:0\r\n"));
    let b = answer_from_b("m=image 6000 udptl t38\r\n");
    let out = answer(&offered.state, b.as_bytes(), &media_plane(30_002)).unwrap();
    let n = only(&out.streams);
    assert_eq!((n.offerer_codec, n.answerer_codec, n.transcoded), (None, None, false));
}

#[test]
fn codecs_the_media_plane_does_not_make_are_relayed_without_a_codec() {
    let gsm = PHONE_A.replace("0 8 101", "3 101");
    let offered = offer(gsm.as_bytes(), &CodecPolicy::default(), &media_plane(30_000)).unwrap();
    let b = answer_from_b("m=audio 5004 RTP/AVP 3 101\r\na=rtpmap:101 telephone-event/8000\r\n");
    let n = answer(&offered.state, b.as_bytes(), &media_plane(30_002)).unwrap().streams.remove(0).unwrap();
    assert_eq!((n.offerer_codec, n.answerer_codec, n.transcoded), (None, None, false));
    // Nothing to transcode from: the added codec is not offered.
    let policy = CodecPolicy { transcode: vec!["PCMU".into()], ..Default::default() };
    let offered = offer(gsm.as_bytes(), &policy, &media_plane(30_000)).unwrap();
    assert!(offered.sdp.contains("m=audio 30000 RTP/AVP 3 101\r\n"), "{}", offered.sdp);
}

#[test]
fn bad_descriptions_and_policies_are_refused_with_what_is_wrong() {
    assert_eq!(offer(&vec![b'v'; MAX_SDP + 1], &CodecPolicy::default(), &media_plane(1)).unwrap_err(), SdpError::TooLarge);
    assert!(matches!(offer(b"hello", &CodecPolicy::default(), &media_plane(1)), Err(SdpError::Syntax(_))));
    let no_c = "v=0\r\no=- 1 1 IN IP4 10.0.0.5\r\ns=-\r\nt=0 0\r\nm=audio 4000 RTP/AVP 0\r\n";
    assert!(matches!(offer(no_c.as_bytes(), &CodecPolicy::default(), &media_plane(1)), Err(SdpError::Stream { stream: 0, .. })));
    let policy = CodecPolicy { transcode: vec!["AMR".into()], ..Default::default() };
    assert!(matches!(offer(PHONE_A.as_bytes(), &policy, &media_plane(1)), Err(SdpError::Policy(why)) if why.contains("AMR")));
    let policy = CodecPolicy { strip: vec!["all".into()], ..Default::default() };
    assert!(matches!(offer(PHONE_A.as_bytes(), &policy, &media_plane(1)), Err(SdpError::Stream { stream: 0, .. })));
    let policy = CodecPolicy { strip: vec!["PCMU/8000/1/9".into()], ..Default::default() };
    assert!(matches!(offer(PHONE_A.as_bytes(), &policy, &media_plane(1)), Err(SdpError::Policy(_))));
}

const SRTP_PHONE: &str = "v=0\r\no=- 1 1 IN IP4 10.0.0.5\r\ns=-\r\nc=IN IP4 10.0.0.5\r\nt=0 0\r\n\
m=audio 49170 RTP/SAVP 0\r\na=crypto:1 F8_128_HMAC_SHA1_80 inline:MTIzNDU2Nzg5QUJDREUwMTIzNDU2Nzg5QUJjZGVm\r\n\
a=crypto:2 AES_CM_128_HMAC_SHA1_80 inline:4fl6DT4Bi+DWT6MsBt5BOQ7Gda1Jiv7rtpYLOqvm|2^31\r\n";

#[test]
fn an_srtp_offerer_is_answered_with_the_media_planes_key_and_the_answerer_gets_plain_rtp() {
    let out = super::offer(SRTP_PHONE.as_bytes(), &CodecPolicy::default(), Transport::Rtp, &media_plane(30_000), &mut counting).unwrap();
    assert!(out.sdp.contains("m=audio 30000 RTP/AVP 0\r\n"), "{}", out.sdp);
    assert!(!out.sdp.contains("crypto"));
    let keys = out.state.offerer().next().flatten().unwrap().srtp.clone().expect("the offerer leg is SRTP");
    assert_eq!((keys.remote.tag, keys.remote.suite), (2, crate::srtp::SrtpSuite::AesCm128HmacSha1_80), "the first supported line");
    assert_eq!(keys.remote.lifetime, Some(1 << 31));
    assert_eq!((keys.local.tag, keys.local.suite), (2, keys.remote.suite));
    let b = answer_from_b("m=audio 5004 RTP/AVP 0\r\n");
    let back = answer(&out.state, b.as_bytes(), &media_plane(30_002)).unwrap();
    assert!(back.sdp.contains("m=audio 30002 RTP/SAVP 0\r\n"), "{}", back.sdp);
    assert!(back.sdp.contains(&format!("a=crypto:{}\r\n", keys.local.to_attribute())));
    let n = only(&back.streams);
    assert_eq!(n.offerer.srtp, Some(keys));
    assert_eq!(n.answerer.srtp, None);
}

#[test]
fn a_plain_offerer_gets_the_answerer_srtp_of_the_suite_it_picks() {
    let out = super::offer(PHONE_A.as_bytes(), &CodecPolicy::default(), Transport::Srtp, &media_plane(30_000), &mut counting).unwrap();
    assert!(out.sdp.contains("m=audio 30000 RTP/SAVP 0 8 101\r\n"), "{}", out.sdp);
    assert_eq!(out.sdp.matches("a=crypto:").count(), 3, "one key per suite: {}", out.sdp);
    assert!(out.sdp.contains("a=crypto:2 AES_CM_128_HMAC_SHA1_32 inline:"));
    let b =
        answer_from_b("m=audio 5004 RTP/SAVP 0\r\na=crypto:2 AES_CM_128_HMAC_SHA1_32 inline:4fl6DT4Bi+DWT6MsBt5BOQ7Gda1Jiv7rtpYLOqvm\r\n");
    let back = answer(&out.state, b.as_bytes(), &media_plane(30_002)).unwrap();
    assert!(back.sdp.contains("m=audio 30002 RTP/AVP 0\r\n"), "{}", back.sdp);
    assert!(!back.sdp.contains("crypto"));
    let keys = only(&back.streams).answerer.srtp.clone().expect("the answerer leg is SRTP");
    assert_eq!((keys.remote.suite, keys.local.tag), (crate::srtp::SrtpSuite::AesCm128HmacSha1_32, 2));
    assert_eq!(keys.local.key, (0..30).collect::<Vec<u8>>(), "the key the media plane offered with tag 2");
    // An answerer that drops to plain RTP, or names a tag never offered, is refused.
    let plain = answer_from_b("m=audio 5004 RTP/AVP 0\r\n");
    assert!(matches!(answer(&out.state, plain.as_bytes(), &media_plane(30_002)), Err(SdpError::Stream { stream: 0, .. })));
    let unknown =
        answer_from_b("m=audio 5004 RTP/SAVP 0\r\na=crypto:9 AES_CM_128_HMAC_SHA1_32 inline:4fl6DT4Bi+DWT6MsBt5BOQ7Gda1Jiv7rtpYLOqvm\r\n");
    assert!(
        matches!(answer(&out.state, unknown.as_bytes(), &media_plane(30_002)), Err(SdpError::Stream { why, .. }) if why.contains("tag 9"))
    );
}

#[test]
fn srtp_the_media_plane_cannot_key_is_refused() {
    let dtls = SRTP_PHONE.replace("RTP/SAVP", "UDP/TLS/RTP/SAVPF");
    assert!(
        matches!(offer(dtls.as_bytes(), &CodecPolicy::default(), &media_plane(1)), Err(SdpError::Stream { why, .. }) if why.contains("DTLS"))
    );
    let no_key = SRTP_PHONE.lines().filter(|l| !l.contains("AES_CM")).collect::<Vec<_>>().join("\r\n");
    assert!(
        matches!(offer(no_key.as_bytes(), &CodecPolicy::default(), &media_plane(1)), Err(SdpError::Stream { why, .. }) if why.contains("a=crypto"))
    );
    let mki = SRTP_PHONE.replace("|2^31", "|2^31|1:4");
    assert!(
        matches!(offer(mki.as_bytes(), &CodecPolicy::default(), &media_plane(1)), Err(SdpError::Stream { why, .. }) if why.contains("MKI"))
    );
    assert!(Transport::from_protocol("RTP/SAVPF").is_ok_and(|t| t == Transport::Srtp));
    assert!(matches!(Transport::from_protocol("UDP/TLS/RTP/SAVP"), Err(SdpError::Policy(_))));
}

#[test]
fn g729_is_offered_for_transcoding_only_by_a_media_plane_built_with_it() {
    let policy = CodecPolicy { transcode: vec!["G729".into()], ..Default::default() };
    let out = offer(PHONE_A.as_bytes(), &policy, &media_plane(30_000));
    if cfg!(feature = "g729") {
        let out = out.unwrap();
        assert!(out.sdp.contains("m=audio 30000 RTP/AVP 0 8 101 18\r\n") && out.sdp.contains("a=fmtp:18 annexb=no\r\n"), "{}", out.sdp);
    } else {
        assert!(matches!(out, Err(SdpError::Policy(why)) if why.contains("G729")));
    }
}

mod properties {
    use super::*;
    use proptest::prelude::*;

    /// Lines a phone's SDP is made of, shuffled and corrupted by proptest.
    fn line() -> impl Strategy<Value = String> {
        prop_oneof![
            Just("v=0".to_owned()),
            Just("o=- 1 1 IN IP4 10.0.0.5".to_owned()),
            Just("c=IN IP4 10.0.0.5".to_owned()),
            Just("c=IN IP6 ::1".to_owned()),
            Just("t=0 0".to_owned()),
            Just("m=audio 4000 RTP/AVP 0 8 96 101".to_owned()),
            Just("m=audio 0 RTP/AVP 0".to_owned()),
            Just("m=image 4002 udptl t38".to_owned()),
            Just("a=rtpmap:96 opus/48000/2".to_owned()),
            Just("a=rtpmap:101 telephone-event/8000".to_owned()),
            Just("a=fmtp:96 stereo=1;maxaveragebitrate=99999999".to_owned()),
            Just("a=rtcp-mux".to_owned()),
            Just("a=rtcp:".to_owned()),
            Just("a=ptime:7".to_owned()),
            Just("a=sendonly".to_owned()),
            "[ -~]{0,40}",
        ]
    }

    fn body() -> impl Strategy<Value = String> {
        proptest::collection::vec(line(), 0..16).prop_map(|lines| lines.join("\r\n"))
    }

    proptest! {
        #[test]
        fn offer_and_answer_never_panic_and_write_what_parses(offer_text in body(), answer_text in body(), flags in 0u8..8) {
            let mut policy = CodecPolicy::default();
            if flags & 1 != 0 { policy.transcode = vec!["opus".into(), "PCMA".into()]; }
            if flags & 2 != 0 { policy.mask = vec!["all".into()]; }
            if flags & 4 != 0 { policy.strip = vec!["PCMU".into()]; }
            let anchor = |base: u16| Anchor { ip: "198.51.100.1".parse().unwrap(), ports: vec![Some(base), Some(base + 2), None] };
            if let Ok(offered) = offer(offer_text.as_bytes(), &policy, &anchor(30_000)) {
                prop_assert!(parse(offered.sdp.as_bytes()).is_ok());
                if let Ok(answered) = answer(&offered.state, answer_text.as_bytes(), &anchor(40_000)) {
                    prop_assert!(parse(answered.sdp.as_bytes()).is_ok());
                }
            }
        }
    }
}
