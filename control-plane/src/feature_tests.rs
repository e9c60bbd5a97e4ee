//! Virtual-time tests of call pickup and call park (RFC 5359 §2.15, §2.16) inside the control
//! plane: phones are byte strings, the media plane is the test double of `server_tests`.

use std::time::Duration;

use crate::media::MediaRequest;
use crate::server_tests::{
    answer, answer_at, callee_refer, callee_request, confirmed_call, in_dialog, invite, offer, subscriber_calls, to_tag, World, CALLEE,
    CALLER, MEDIA_IP,
};

/// Carol's phone (a subscriber of ours, not trusted: it authenticates).
const CAROL: &str = "192.0.2.60:5060";

/// An in-dialog request from carol's phone in the dialog her INVITE `invite` made (our tag `tag`).
fn from_carol(method: &str, invite: &str, tag: &str, cseq: u32) -> String {
    let call_id = invite.lines().find_map(|l| l.strip_prefix("Call-ID: ")).expect("Call-ID").trim().to_owned();
    in_dialog(method, &call_id, cseq, tag, None)
        .replace(CALLER, CAROL)
        .replace("\"Alice\" <sip:alice@", "<sip:carol@")
        .replace(&format!("branch=z9hG4bK{call_id}{method}{cseq}"), &format!("branch=z9hG4bKc{method}{cseq}"))
}

/// alice (a trusted peer) calls bob; bob's phone rings. Returns the INVITE it got.
fn ringing_call(w: &mut World) -> String {
    w.receive(CALLER, &invite("call1", &offer(4000, "sendrecv")));
    w.take_one(CALLER, "SIP/2.0 100");
    w.allocate();
    let invite_b = w.take_one(CALLEE, "INVITE sip:bob@192.0.2.2:5062");
    w.receive(CALLEE, &answer(&invite_b, 180, None));
    w.take_one(CALLER, "SIP/2.0 180");
    invite_b
}

fn group(w: &mut World, members: &[(&str, &str)]) {
    for (user, group) in members {
        w.settings(user, &[("pickup_group", group)]);
    }
}

#[test]
fn a_ringing_call_is_picked_up_by_a_phone_of_the_callees_group_and_the_ringing_phones_stop() {
    let mut w = World::new();
    w.subscriber("carol", None);
    group(&mut w, &[("bob", "sales"), ("carol", "sales")]);
    let invite_b = ringing_call(&mut w);
    let pickup = subscriber_calls(&mut w, CAROL, "carol", "pick1", "*8", &offer(6000, "sendrecv").replace("192.0.2.1", "192.0.2.60"));
    w.take_one(CAROL, "SIP/2.0 100");
    let join = w.media.last().cloned();
    assert!(
        matches!(&join, Some(MediaRequest::Join { with, release, answer_first: Some((legs, _)), .. })
            if with == &[11] && release == &[12] && legs == &[(11, 12)]),
        "the caller's legs take the picker's, the callee's go: {join:?}"
    );
    w.join();
    // Bob's phone stops ringing; the caller and the picker are answered by the media plane.
    let cancel = w.take_one(CALLEE, "CANCEL sip:bob@192.0.2.2:5062");
    let to_carol = w.take_one(CAROL, "SIP/2.0 200");
    assert!(to_carol.contains(&format!("c=IN IP4 {MEDIA_IP}")) && to_carol.contains("m=audio 31182 "), "{to_carol}");
    let to_alice = w.take_one(CALLER, "SIP/2.0 200");
    assert!(to_alice.contains(&format!("c=IN IP4 {MEDIA_IP}")) && to_alice.contains("m=audio 30000 "), "{to_alice}");
    w.receive(CALLEE, &answer(&cancel, 200, None));
    w.receive(CALLEE, &answer(&invite_b, 487, None));
    w.take_one(CALLEE, "ACK sip:bob@192.0.2.2:5062");
    // Both ACK; their 2xx are sent no more.
    let (alice_tag, carol_tag) = (to_tag(&to_alice), to_tag(&to_carol));
    w.receive(CALLER, &in_dialog("ACK", "call1", 1, &alice_tag, None).replace("call1ACK1", "ack1"));
    w.receive(CAROL, &from_carol("ACK", &pickup, &carol_tag, 2));
    w.advance(Duration::from_secs(5));
    assert!(w.take(CALLER, "SIP/2.0 200").is_empty() && w.take(CAROL, "SIP/2.0 200").is_empty(), "{:?}", w.sent);
    // Carol hangs up: alice gets the BYE, everything is released once.
    w.receive(CAROL, &from_carol("BYE", &pickup, &carol_tag, 3));
    w.take_one(CAROL, "SIP/2.0 200");
    w.take_one(CALLER, "BYE sip:alice@192.0.2.1:5060");
    assert_eq!((w.core.active_calls(), w.core.dialogs(), w.core.stats().calls.pickups), (0, 0, 1));
    let last = w.media.iter().rev().find(|m| matches!(m, MediaRequest::Release { .. })).cloned();
    assert_eq!(last, Some(MediaRequest::Release { legs: vec![11, 91] }), "the call's legs now: the caller's and the picker's");
}

#[test]
fn a_call_is_picked_up_by_name_from_its_group_and_refused_outside_it_or_when_nothing_rings() {
    let mut w = World::new();
    w.subscriber("carol", None);
    w.subscriber("dave", None);
    group(&mut w, &[("bob", "sales"), ("carol", "support")]);
    let dave = "192.0.2.61:5060";
    // Nothing rings yet.
    subscriber_calls(&mut w, CAROL, "carol", "p1", "*8", &offer(6000, "sendrecv"));
    assert!(w.take_one(CAROL, "SIP/2.0 404").contains("Nothing To Pick Up"));
    ringing_call(&mut w);
    // Carol's group has nothing ringing; bob's group is not hers; dave has no group.
    subscriber_calls(&mut w, CAROL, "carol", "p2", "*8", &offer(6000, "sendrecv"));
    w.take_one(CAROL, "SIP/2.0 404");
    subscriber_calls(&mut w, CAROL, "carol", "p3", "*8bob", &offer(6000, "sendrecv"));
    assert!(w.take_one(CAROL, "SIP/2.0 403").contains("Not In The Pickup Group"));
    subscriber_calls(&mut w, dave, "dave", "p4", "*8", &offer(6000, "sendrecv"));
    assert!(w.take_one(dave, "SIP/2.0 403").contains("No Pickup Group"));
    // A trusted peer (a trunk) may not use feature codes.
    w.receive(CALLER, &invite("p5", &offer(4000, "sendrecv")).replace("sip:bob@sip.test SIP/2.0", "sip:*8bob@sip.test SIP/2.0"));
    w.take_one(CALLER, "SIP/2.0 403");
    // In bob's group, by name: picked up; the call rings no more, so a second pickup finds nothing.
    w.settings("carol", &[("pickup_group", "sales")]);
    subscriber_calls(&mut w, CAROL, "carol", "p6", "*8bob", &offer(6000, "sendrecv"));
    assert!(matches!(w.media.last(), Some(MediaRequest::Join { .. })), "{:?}", w.media.last());
    subscriber_calls(&mut w, dave, "dave", "p7", "*8bob", &offer(6000, "sendrecv"));
    assert!(w.take_one(dave, "SIP/2.0 403").contains("Not In The Pickup Group"), "dave has no group, bob has one");
    subscriber_calls(&mut w, CAROL, "carol", "p8", "*8bob", &offer(6000, "sendrecv"));
    w.take_one(CAROL, "SIP/2.0 404");
    assert_eq!(w.core.stats().calls.pickups, 0, "counted once joined");
}

#[test]
fn a_pickup_whose_offer_the_media_plane_refuses_leaves_the_call_ringing() {
    let mut w = World::new();
    w.subscriber("carol", None);
    group(&mut w, &[("bob", "sales"), ("carol", "sales")]);
    let invite_b = ringing_call(&mut w);
    subscriber_calls(&mut w, CAROL, "carol", "pick1", "*8", &offer(6000, "sendrecv"));
    let refused = crate::media::MediaError::NotAcceptable("no common codec".into());
    w.core.handle_media_reply(0, crate::media::MediaReply::Joined(Err(refused)), w.now, &mut w.store);
    w.pump();
    w.take_one(CAROL, "SIP/2.0 488");
    assert!(w.take(CALLEE, "CANCEL").is_empty(), "bob's phone rings on");
    // Bob answers after all: the call goes on as any other.
    w.receive(CALLEE, &answer(&invite_b, 200, Some(&offer(5000, "sendrecv").replace("192.0.2.1", "192.0.2.2"))));
    w.take_one(CALLEE, "ACK sip:bob@192.0.2.2:5062");
    w.take_one(CALLER, "SIP/2.0 200");
}

#[test]
fn a_parked_call_hears_music_until_it_is_taken_back_from_its_orbit_and_the_parker_is_let_go() {
    let mut w = World::new();
    w.subscriber("carol", None);
    let (invite_b, alice_tag, b_tag) = confirmed_call(&mut w);
    // Bob parks alice in orbit 701.
    w.receive(CALLEE, &callee_refer(&invite_b, &b_tag, 2, "sip:701@sip.test", ""));
    w.take_one(CALLEE, "SIP/2.0 202");
    let notifies = w.take(CALLEE, "NOTIFY");
    assert_eq!(notifies.len(), 2, "{notifies:?}");
    assert!(notifies[0].contains("SIP/2.0 100 Trying") && notifies[0].contains("Subscription-State: active"), "{notifies:?}");
    assert!(notifies[1].contains("SIP/2.0 200 OK") && notifies[1].contains("Subscription-State: terminated"), "{notifies:?}");
    assert!(w.media.contains(&MediaRequest::Release { legs: vec![12] }), "bob's legs go: {:?}", w.media);
    assert!(w.media.contains(&MediaRequest::Play { legs: vec![11], file: "music-on-hold.wav".into() }), "{:?}", w.media);
    // Bob hangs up: only his dialog ends.
    w.receive(CALLEE, &callee_request("BYE", &invite_b, &b_tag, 3));
    w.take_one(CALLEE, "SIP/2.0 200");
    assert!(w.take(CALLER, "BYE").is_empty());
    // Alice's re-INVITE has nobody to go to: refused, she stays parked.
    w.receive(CALLER, &in_dialog("INVITE", "call1", 2, &alice_tag, Some(&offer(4000, "sendonly"))));
    w.take_one(CALLER, "SIP/2.0 488");
    // Carol takes alice back by dialling the orbit.
    subscriber_calls(&mut w, CAROL, "carol", "get1", "701", &offer(6000, "sendrecv").replace("192.0.2.1", "192.0.2.60"));
    let join = w.media.last().cloned();
    assert!(
        matches!(&join, Some(MediaRequest::Join { with, release, answer_first: None, .. }) if with == &[11] && release.is_empty()),
        "{join:?}"
    );
    w.join();
    let to_carol = w.take_one(CAROL, "SIP/2.0 200");
    assert!(to_carol.contains(&format!("c=IN IP4 {MEDIA_IP}")), "{to_carol}");
    assert!(w.media.contains(&MediaRequest::StopPlay { legs: vec![11] }), "the music stops: {:?}", w.media);
    assert!(w.take(CALLER, "INVITE").is_empty(), "alice is not re-INVITEd");
    // Alice hangs up: carol gets the BYE; the orbit is free again.
    w.receive(CALLER, &in_dialog("BYE", "call1", 3, &alice_tag, None));
    w.take_one(CAROL, "BYE");
    assert_eq!((w.core.active_calls(), w.core.dialogs(), w.releases()), (0, 0, 2), "bob's legs at the park, the call's at its end");
    let last = w.media.iter().rev().find(|m| matches!(m, MediaRequest::Release { .. })).cloned();
    assert_eq!(last, Some(MediaRequest::Release { legs: vec![11, 91] }));
    let stats = w.core.stats().calls;
    assert_eq!((stats.parks, stats.retrievals), (1, 1));
    subscriber_calls(&mut w, CAROL, "carol", "get2", "701", &offer(6000, "sendrecv"));
    assert!(w.take_one(CAROL, "SIP/2.0 404").contains("Nothing Parked"));
}

#[test]
fn a_parked_call_nobody_takes_back_is_hung_up_after_the_park_timeout_and_full_orbits_refuse_parking() {
    let mut w = World::with_config("[auth]\nalgorithms = [\"MD5\"]\n[features]\npark_orbits = \"701-701\"\npark_timeout_s = 30\n");
    let (invite_b, _, b_tag) = confirmed_call(&mut w);
    w.receive(CALLEE, &callee_refer(&invite_b, &b_tag, 2, "sip:park@sip.test", ""));
    w.take_one(CALLEE, "SIP/2.0 202");
    assert_eq!(w.core.stats().calls.parks, 1);
    // A second call cannot park: its only orbit is taken.
    let second = invite("call2", &offer(4002, "sendrecv"));
    w.receive(CALLER, &second);
    w.allocate();
    let invite_b2 = w.take_one(CALLEE, "INVITE sip:bob@192.0.2.2:5062");
    w.receive(CALLEE, &answer_at(CALLEE, &invite_b2, 200, Some(&offer(5002, "sendrecv"))));
    let ok2 = w.take_one(CALLER, "SIP/2.0 200");
    w.receive(CALLER, &in_dialog("ACK", "call2", 1, &to_tag(&ok2), None).replace("call2ACK1", "ack2"));
    w.receive(CALLEE, &callee_refer(&invite_b2, "b1", 3, "sip:park@sip.test", ""));
    w.take_one(CALLEE, "SIP/2.0 486");
    // Nobody takes the first back: after 30 s alice gets BYE.
    w.advance(Duration::from_secs(29));
    assert!(w.take(CALLER, "BYE").is_empty());
    w.advance(Duration::from_secs(2));
    let bye = w.take_sent(CALLER, "BYE sip:alice@192.0.2.1:5060");
    assert!(bye.contains("Call-ID: call1"), "{bye}");
    assert_eq!((w.core.stats().calls.park_timeouts, w.core.active_calls()), (1, 1));
}
