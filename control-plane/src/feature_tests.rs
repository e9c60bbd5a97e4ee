//! Virtual-time tests of call pickup and call park (RFC 5359 §2.15, §2.16) inside the control
//! plane: phones are byte strings, the media plane is the test double of `server_tests`.

use std::time::Duration;

use crate::media::MediaRequest;
use crate::server_tests::{
    answer, answer_at, callee_refer, callee_request, confirmed_call, in_dialog, invite, offer, subscriber_calls, to_tag, with_credentials,
    World, CALLEE, CALLER, MEDIA_IP,
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
    // Dave has no group, bob has one: not by name either.
    subscriber_calls(&mut w, dave, "dave", "p7", "*8bob", &offer(6000, "sendrecv"));
    assert!(w.take_one(dave, "SIP/2.0 403").contains("Not In The Pickup Group"));
    // In bob's group, by name: picked up; the call rings no more, so a second pickup finds nothing.
    w.settings("carol", &[("pickup_group", "sales")]);
    subscriber_calls(&mut w, CAROL, "carol", "p6", "*8bob", &offer(6000, "sendrecv"));
    assert!(matches!(w.media.last(), Some(MediaRequest::Join { .. })), "{:?}", w.media.last());
    w.join();
    w.take_one(CAROL, "SIP/2.0 100");
    w.take_one(CAROL, "SIP/2.0 200");
    w.take_one(CALLER, "SIP/2.0 200");
    assert_eq!(w.core.stats().calls.pickups, 1);
    subscriber_calls(&mut w, CAROL, "carol", "p8", "*8bob", &offer(6000, "sendrecv"));
    w.take_one(CAROL, "SIP/2.0 404");
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
    assert!(
        !w.media.iter().any(|m| matches!(m, MediaRequest::Release { legs } if legs.contains(&12))),
        "bob's legs are the call's again: {:?}",
        w.media
    );
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
fn a_parked_call_nobody_takes_back_ends_when_its_parker_does_not_answer_the_ring_back_and_full_orbits_refuse_parking() {
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
    // Nobody takes the first back: after 30 s bob is rung back, does not answer, and alice
    // gets BYE.
    w.advance(Duration::from_secs(29));
    assert!(w.take(CALLER, "BYE").is_empty());
    w.advance(Duration::from_secs(2));
    w.extend();
    let ring = w.take_one(CALLEE, "INVITE sip:bob@192.0.2.2:5062");
    w.receive(CALLEE, &answer_at(CALLEE, &ring, 480, None));
    let bye = w.take_sent(CALLER, "BYE sip:alice@192.0.2.1:5060");
    assert!(bye.contains("Call-ID: call1"), "{bye}");
    assert_eq!((w.core.stats().calls.park_timeouts, w.core.active_calls()), (1, 1));
}

// ---- the dialog event package (RFC 4235) ----

/// Carol's SUBSCRIBE to `target`'s dialogs (Call-ID `id`), with `headers` (Event, Expires, …).
fn subscribe_text(id: &str, target: &str, cseq: u32, to_tag: Option<&str>, headers: &str) -> String {
    let to_tag = to_tag.map(|t| format!(";tag={t}")).unwrap_or_default();
    format!(
        "SUBSCRIBE sip:{target}@sip.test SIP/2.0\r\nVia: SIP/2.0/UDP {CAROL};branch=z9hG4bK{id}s{cseq}\r\nMax-Forwards: 70\r\n\
         From: <sip:carol@sip.test>;tag=w1\r\nTo: <sip:{target}@sip.test>{to_tag}\r\nCall-ID: {id}\r\nCSeq: {cseq} SUBSCRIBE\r\n\
         Contact: <sip:carol@{CAROL}>\r\n{headers}Content-Length: 0\r\n\r\n"
    )
}

/// Carol subscribes to `target`'s dialogs with `headers` (authenticated).
fn subscribe(w: &mut World, id: &str, target: &str, headers: &str) {
    let uri = format!("sip:{target}@sip.test");
    with_credentials(w, CAROL, "carol", "SUBSCRIBE", &uri, |cseq, auth| {
        subscribe_text(id, target, cseq, None, &format!("{headers}{auth}"))
    });
}

/// Answers a NOTIFY of ours with `status`; returns its body.
fn answer_notify(w: &mut World, notify: &str, status: u16) -> String {
    w.receive(CAROL, &answer_at(CAROL, notify, status, None));
    notify.split("\r\n\r\n").nth(1).unwrap_or_default().to_owned()
}

fn attribute<'a>(xml: &'a str, name: &str) -> &'a str {
    let start = xml.find(&format!(" {name}=\"")).unwrap_or_else(|| panic!("{name} not in {xml}")) + name.len() + 3;
    &xml[start..start + xml[start..].find('"').expect("closing quote")]
}

#[test]
fn a_watcher_is_told_of_a_subscribers_dialogs_as_they_ring_and_takes_the_ringing_call_with_replaces() {
    let mut w = World::new();
    w.subscriber("carol", None);
    subscribe(&mut w, "sub1", "bob", "Event: dialog\r\nAccept: application/dialog-info+xml\r\n");
    let ok = w.take_one(CAROL, "SIP/2.0 200");
    assert!(ok.contains("Expires: 3600"), "{ok}");
    let first = w.take_one(CAROL, "NOTIFY sip:carol@192.0.2.60:5060");
    assert!(first.contains("Event: dialog") && first.contains("Subscription-State: active;expires=3600"), "{first}");
    let idle = answer_notify(&mut w, &first, 200);
    assert!(idle.contains("version=\"0\"") && !idle.contains("<dialog "), "bob is idle: {idle}");
    // Alice calls bob: his phone rings, and carol sees the early dialog his phone has.
    ringing_call(&mut w);
    let ringing = w.take_one(CAROL, "NOTIFY");
    let ringing = answer_notify(&mut w, &ringing, 200);
    assert!(
        ringing.contains("version=\"1\"") && ringing.contains("<state>early</state>") && ringing.contains("direction=\"recipient\""),
        "{ringing}"
    );
    assert!(ringing.contains("<identity>sip:alice@sip.test</identity>"), "{ringing}");
    let (call_id, bobs, ours) = (attribute(&ringing, "call-id"), attribute(&ringing, "local-tag"), attribute(&ringing, "remote-tag"));
    assert_eq!(bobs, "b1", "bob's phone's tag, from its 180");
    // Carol takes the call with an INVITE that replaces bob's phone's early dialog.
    let replaces = format!("Replaces: {call_id};to-tag={ours};from-tag={bobs};early-only\r\n");
    let body = offer(6000, "sendrecv").replace("192.0.2.1", "192.0.2.60");
    let uri = "sip:bob@sip.test";
    let text = |cseq: u32, auth: &str| {
        subscriber_invite_text("take1", "bob", cseq, &body).replace("Contact:", &format!("{replaces}{auth}Contact:"))
    };
    with_credentials(&mut w, CAROL, "carol", "INVITE", uri, text);
    w.take_one(CAROL, "SIP/2.0 100");
    w.join();
    w.take_one(CAROL, "SIP/2.0 200");
    w.take_one(CALLER, "SIP/2.0 200");
    w.take_one(CALLEE, "CANCEL");
    assert_eq!(w.core.stats().calls.pickups, 1);
    // Bob's phone is no longer in the call: his watchers see him idle.
    let after = w.take_one(CAROL, "NOTIFY");
    let after = answer_notify(&mut w, &after, 200);
    assert!(after.contains("version=\"2\"") && !after.contains("<dialog "), "{after}");
    // Carol ends her subscription: the last NOTIFY says so.
    let tag = to_tag(&ok);
    w.receive(CAROL, &subscribe_text("sub1", "bob", 3, Some(&tag), "Event: dialog\r\nExpires: 0\r\n"));
    assert!(w.take_one(CAROL, "SIP/2.0 200").contains("Expires: 0"));
    let last = w.take_one(CAROL, "NOTIFY");
    assert!(last.contains("Subscription-State: terminated;reason=timeout"), "{last}");
    answer_notify(&mut w, &last, 200);
    assert_eq!(w.core.dialog_subscriptions(), 0);
}

/// Carol's INVITE to `dialled` (Call-ID `id`, CSeq `cseq`) with `body`, before credentials.
fn subscriber_invite_text(id: &str, dialled: &str, cseq: u32, body: &str) -> String {
    invite(id, body)
        .replace(CALLER, CAROL)
        .replace("\"Alice\" <sip:alice@", "<sip:carol@")
        .replace("sip:bob@sip.test SIP/2.0", &format!("sip:{dialled}@sip.test SIP/2.0"))
        .replace("CSeq: 1 INVITE", &format!("CSeq: {cseq} INVITE"))
        .replace(&format!("branch=z9hG4bK{id}i"), &format!("branch=z9hG4bK{id}i{cseq}"))
}

#[test]
fn subscriptions_refuse_other_packages_short_times_unknown_targets_and_end_on_expiry_or_a_refused_notify() {
    let mut w = World::new();
    w.subscriber("carol", None);
    subscribe(&mut w, "s1", "bob", "Event: presence\r\n");
    assert!(w.take_one(CAROL, "SIP/2.0 489").contains("Allow-Events: dialog"));
    subscribe(&mut w, "s2", "bob", "Event: dialog\r\nExpires: 10\r\n");
    assert!(w.take_one(CAROL, "SIP/2.0 423").contains("Min-Expires: 60"));
    subscribe(&mut w, "s3", "nobody", "Event: dialog\r\n");
    w.take_one(CAROL, "SIP/2.0 404");
    subscribe(&mut w, "s4", "bob", "Event: dialog\r\nAccept: application/pidf+xml\r\n");
    w.take_one(CAROL, "SIP/2.0 406");
    // One that expires: its last NOTIFY after 120 s.
    subscribe(&mut w, "s5", "bob", "Event: dialog\r\nExpires: 120\r\n");
    w.take_one(CAROL, "SIP/2.0 200");
    let first = w.take_one(CAROL, "NOTIFY");
    answer_notify(&mut w, &first, 200);
    w.advance(Duration::from_secs(119));
    assert!(w.take(CAROL, "NOTIFY").is_empty());
    w.advance(Duration::from_secs(2));
    let last = w.take_sent(CAROL, "NOTIFY");
    assert!(last.contains("terminated;reason=timeout"), "{last}");
    answer_notify(&mut w, &last, 200);
    // One whose watcher answers 481: it ends, and bob's next call notifies nobody.
    subscribe(&mut w, "s6", "bob", "Event: dialog\r\n");
    w.take_one(CAROL, "SIP/2.0 200");
    let first = w.take_one(CAROL, "NOTIFY");
    answer_notify(&mut w, &first, 481);
    assert_eq!(w.core.dialog_subscriptions(), 0);
    ringing_call(&mut w);
    assert!(w.take(CAROL, "NOTIFY").is_empty());
}

// ---- conference rooms and three-way calls (RFC 5359 §2.10, §2.11) ----

/// The Conference request's fields: (room, conference, add, release, whether a newcomer).
fn conference_fields(request: &MediaRequest) -> (String, Option<u64>, Vec<u64>, Vec<u64>, bool) {
    let MediaRequest::Conference { room, conference, add, release, newcomer } = request else { panic!("not a Conference: {request:?}") };
    (room.clone(), *conference, add.clone(), release.clone(), newcomer.is_some())
}

#[test]
fn parties_dialling_a_room_are_answered_by_the_media_plane_and_the_room_ends_with_its_last_party() {
    let mut w = World::new();
    w.subscriber("carol", None);
    w.subscriber("dave", None);
    let dave = "192.0.2.61:5060";
    let carol_invite = subscriber_calls(&mut w, CAROL, "carol", "c1", "conf-sales", &offer(6000, "sendrecv"));
    w.take_one(CAROL, "SIP/2.0 100");
    let made = w.conference(500);
    assert_eq!(conference_fields(&made), ("conf-sales".into(), None, vec![], vec![], true), "the first party makes the room");
    let ok = w.take_one(CAROL, "SIP/2.0 200");
    assert!(ok.contains(&format!("c=IN IP4 {MEDIA_IP}")) && ok.contains("m=audio 31182 "), "{ok}");
    assert!(ok.contains("Contact: <sip:conf-sales@192.0.2.100:5060>;isfocus"), "the room's URI, a focus (RFC 4579): {ok}");
    subscriber_calls(&mut w, dave, "dave", "d1", "conf-sales", &offer(6002, "sendrecv"));
    let joined = w.conference(500);
    assert_eq!(conference_fields(&joined), ("conf-sales".into(), Some(500), vec![], vec![], true), "the second joins it");
    let dave_ok = w.take_one(dave, "SIP/2.0 200");
    // Carol leaves: her legs go, the room stays for dave.
    w.receive(CAROL, &from_carol("ACK", &carol_invite, &to_tag(&ok), 2));
    w.receive(CAROL, &from_carol("BYE", &carol_invite, &to_tag(&ok), 3));
    w.take_one(CAROL, "SIP/2.0 200");
    assert!(w.media.contains(&MediaRequest::Release { legs: vec![91] }), "{:?}", w.media);
    assert!(!w.media.iter().any(|m| matches!(m, MediaRequest::EndConference { .. })));
    // A re-INVITE from dave has nobody to go to: refused; he stays.
    let from_dave = |method: &str, cseq: u32, body: Option<&str>| {
        in_dialog(method, "d1", cseq, &to_tag(&dave_ok), body).replace(CALLER, dave).replace("\"Alice\" <sip:alice@", "<sip:dave@")
    };
    w.receive(dave, &from_dave("INVITE", 3, Some(&offer(6002, "sendonly"))));
    w.take_one(dave, "SIP/2.0 488");
    w.receive(dave, &from_dave("BYE", 4, None));
    w.take_one(dave, "SIP/2.0 200");
    assert!(w.media.contains(&MediaRequest::EndConference { conference: 500 }), "the empty room ends: {:?}", w.media);
    assert_eq!((w.core.active_calls(), w.core.dialogs()), (0, 0));
    let stats = w.core.stats().calls;
    assert_eq!(stats.media_allocations, stats.media_releases, "{stats:?}");
}

#[test]
fn a_refer_to_a_room_moves_the_other_party_in_and_lets_the_transferor_go() {
    let mut w = World::new();
    let (invite_b, alice_tag, b_tag) = confirmed_call(&mut w);
    // Bob sends alice to room conf-x (RFC 5359 §2.10: the conference URI the focus gave, with
    // Replaces of the dialog it replaces).
    let target = "sip:conf-x@192.0.2.100:5060?Replaces=whatever%3Bto-tag%3Da%3Bfrom-tag%3Db";
    w.receive(CALLEE, &callee_refer(&invite_b, &b_tag, 2, target, ""));
    w.take_one(CALLEE, "SIP/2.0 202");
    let trying = w.take_one(CALLEE, "NOTIFY");
    assert!(trying.contains("SIP/2.0 100 Trying"), "{trying}");
    let moved = w.conference(700);
    assert_eq!(conference_fields(&moved), ("conf-x".into(), None, vec![11], vec![12], false), "alice's legs in, bob's out");
    let done = w.take_one(CALLEE, "NOTIFY");
    assert!(done.contains("SIP/2.0 200 OK") && done.contains("terminated"), "{done}");
    w.receive(CALLEE, &callee_request("BYE", &invite_b, &b_tag, 3));
    w.take_one(CALLEE, "SIP/2.0 200");
    assert!(w.take(CALLER, "BYE").is_empty(), "alice stays in the room");
    w.receive(CALLER, &in_dialog("BYE", "call1", 2, &alice_tag, None));
    w.take_one(CALLER, "SIP/2.0 200");
    assert!(w.media.contains(&MediaRequest::EndConference { conference: 700 }));
    assert_eq!((w.core.active_calls(), w.core.dialogs()), (0, 0));
    assert_eq!(w.core.stats().calls.transfers_completed, 1);
}

#[test]
fn a_third_party_joining_a_call_makes_a_room_of_three_and_the_last_one_left_is_hung_up() {
    let mut w = World::new();
    w.subscriber("carol", None);
    group(&mut w, &[("bob", "sales"), ("carol", "sales")]);
    let (invite_b, alice_tag, b_tag) = confirmed_call(&mut w);
    let b_call_id = invite_b.lines().find_map(|l| l.strip_prefix("Call-ID: ")).expect("Call-ID").trim().to_owned();
    let ours = invite_b.lines().find(|l| l.starts_with("From:")).and_then(|l| l.split(";tag=").nth(1)).expect("tag").trim().to_owned();
    // Carol joins bob's call (RFC 3911), naming his phone's dialog as the dialog package shows it.
    let join = format!("Join: {b_call_id};to-tag={ours};from-tag={b_tag}\r\n");
    let body = offer(6000, "sendrecv");
    let text = |cseq: u32, auth: &str| {
        invite("j1", &body)
            .replace(CALLER, CAROL)
            .replace("\"Alice\" <sip:alice@", "<sip:carol@")
            .replace("CSeq: 1 INVITE", &format!("CSeq: {cseq} INVITE"))
            .replace("branch=z9hG4bKj1i", &format!("branch=z9hG4bKj1i{cseq}"))
            .replace("Contact:", &format!("{join}{auth}Contact:"))
    };
    let carol_invite = with_credentials(&mut w, CAROL, "carol", "INVITE", "sip:bob@sip.test", text);
    let made = w.conference(800);
    let (room, conference, add, release, newcomer) = conference_fields(&made);
    assert!(room.starts_with("conf-") && conference.is_none() && add == [11, 12] && release.is_empty() && !newcomer, "{made:?}");
    let joined = w.conference(800);
    assert_eq!(conference_fields(&joined), (room, Some(800), vec![], vec![], true), "carol joins the room made of the call");
    let ok = w.take_one(CAROL, "SIP/2.0 200");
    assert!(w.take(CALLER, "INVITE").is_empty() && w.take(CALLEE, "INVITE").is_empty(), "nobody is re-INVITEd");
    assert_eq!(w.core.stats().calls.conferences_joined, 1);
    // Alice leaves: bob and carol talk on.
    w.receive(CALLER, &in_dialog("BYE", "call1", 2, &alice_tag, None));
    w.take_one(CALLER, "SIP/2.0 200");
    assert!(w.take(CALLEE, "BYE").is_empty() && w.take(CAROL, "BYE").is_empty());
    assert!(w.media.contains(&MediaRequest::Release { legs: vec![11] }), "{:?}", w.media);
    // Bob leaves: carol, alone, is hung up; the room ends.
    w.receive(CALLEE, &callee_request("BYE", &invite_b, &b_tag, 2));
    w.take_one(CALLEE, "SIP/2.0 200");
    let bye = w.take_one(CAROL, "BYE");
    assert!(bye.contains(&format!("Call-ID: {}", carol_invite.lines().find_map(|l| l.strip_prefix("Call-ID: ")).expect("id"))));
    let _ = ok;
    assert!(w.media.contains(&MediaRequest::EndConference { conference: 800 }));
    assert_eq!((w.core.active_calls(), w.core.dialogs()), (0, 0));
    let stats = w.core.stats().calls;
    assert_eq!(stats.media_allocations, stats.media_releases, "{stats:?}");
}

#[test]
fn joining_needs_an_answered_call_of_the_joiners_group() {
    let mut w = World::new();
    w.subscriber("carol", None);
    group(&mut w, &[("bob", "sales"), ("carol", "support")]);
    let (invite_b, _, b_tag) = confirmed_call(&mut w);
    let b_call_id = invite_b.lines().find_map(|l| l.strip_prefix("Call-ID: ")).expect("Call-ID").trim().to_owned();
    let ours = invite_b.lines().find(|l| l.starts_with("From:")).and_then(|l| l.split(";tag=").nth(1)).expect("tag").trim().to_owned();
    let attempt = |w: &mut World, id: &str, join: String| {
        let body = offer(6000, "sendrecv");
        let text = |cseq: u32, auth: &str| {
            invite(id, &body)
                .replace(CALLER, CAROL)
                .replace("\"Alice\" <sip:alice@", "<sip:carol@")
                .replace("CSeq: 1 INVITE", &format!("CSeq: {cseq} INVITE"))
                .replace(&format!("branch=z9hG4bK{id}i"), &format!("branch=z9hG4bK{id}i{cseq}"))
                .replace("Contact:", &format!("{join}{auth}Contact:"))
        };
        with_credentials(w, CAROL, "carol", "INVITE", "sip:bob@sip.test", text);
    };
    attempt(&mut w, "j1", format!("Join: {b_call_id};to-tag={ours};from-tag={b_tag}\r\n"));
    assert!(w.take_one(CAROL, "SIP/2.0 403").contains("Not In The Pickup Group"));
    attempt(&mut w, "j2", format!("Join: {b_call_id};to-tag=nope;from-tag={b_tag}\r\n"));
    w.take_one(CAROL, "SIP/2.0 481");
    attempt(&mut w, "j3", "Join: unknown-call;to-tag=a;from-tag=b\r\n".to_owned());
    w.take_one(CAROL, "SIP/2.0 481");
    assert!(w.conferencing.is_empty());
}

#[test]
fn a_pickup_refused_after_the_ringing_phone_said_busy_ends_the_stage_as_busy() {
    let mut w = World::new();
    w.subscriber("carol", None);
    group(&mut w, &[("bob", "sales"), ("carol", "sales")]);
    let invite_b = ringing_call(&mut w);
    subscriber_calls(&mut w, CAROL, "carol", "pick1", "*8", &offer(6000, "sendrecv"));
    // Bob's phone says busy while the media plane joins carol; then carol's offer is refused.
    w.receive(CALLEE, &answer(&invite_b, 486, None));
    w.take_one(CALLEE, "ACK");
    assert!(w.take(CALLER, "SIP/2.0 486").is_empty(), "not while the pickup is under way");
    let refused = crate::media::MediaError::NotAcceptable("no common codec".into());
    w.core.handle_media_reply(0, crate::media::MediaReply::Joined(Err(refused)), w.now, &mut w.store);
    w.pump();
    w.take_one(CAROL, "SIP/2.0 488");
    w.take_one(CALLER, "SIP/2.0 486");
    assert_eq!(w.core.active_calls(), 0);
}

#[test]
fn a_caller_that_cancels_while_a_pickup_is_joined_leaves_the_picker_a_final_answer_and_no_leg() {
    let mut w = World::new();
    w.subscriber("carol", None);
    group(&mut w, &[("bob", "sales"), ("carol", "sales")]);
    let invite_b = ringing_call(&mut w);
    subscriber_calls(&mut w, CAROL, "carol", "pick1", "*8", &offer(6000, "sendrecv"));
    w.take_one(CAROL, "SIP/2.0 100");
    let cancel = invite("call1", "").replace("INVITE sip:bob", "CANCEL sip:bob").replace("CSeq: 1 INVITE", "CSeq: 1 CANCEL");
    let cancel = cancel.split("Content-Type").next().expect("head").to_owned() + "Content-Length: 0\r\n\r\n";
    w.receive(CALLER, &cancel);
    w.take_one(CALLER, "SIP/2.0 487");
    // The media plane finishes the join anyway: its new leg goes, carol is told.
    w.join();
    w.take_one(CAROL, "SIP/2.0 481");
    assert!(w.take(CAROL, "SIP/2.0 200").is_empty());
    assert!(w.media.contains(&MediaRequest::Release { legs: vec![91] }), "the picker's leg: {:?}", w.media);
    let releases: Vec<_> = w.media.iter().filter(|m| matches!(m, MediaRequest::Release { .. })).collect();
    assert!(
        !releases.iter().any(|m| matches!(m, MediaRequest::Release { legs } if legs.contains(&12))),
        "bob's leg is the Join's to delete: {releases:?}"
    );
    let _ = invite_b;
}

#[test]
fn a_park_timeout_that_falls_during_a_failed_retrieval_ends_the_call_after_it() {
    let mut w = World::with_config("[auth]\nalgorithms = [\"MD5\"]\n[features]\npark_timeout_s = 30\n");
    w.subscriber("carol", None);
    let (invite_b, _, b_tag) = confirmed_call(&mut w);
    w.receive(CALLEE, &callee_refer(&invite_b, &b_tag, 2, "sip:701@sip.test", ""));
    w.take_one(CALLEE, "SIP/2.0 202");
    w.advance(Duration::from_secs(29));
    subscriber_calls(&mut w, CAROL, "carol", "get1", "701", &offer(6000, "sendrecv"));
    w.advance(Duration::from_secs(2));
    assert!(w.take(CALLER, "BYE").is_empty(), "not while carol is being joined");
    let refused = crate::media::MediaError::NotAcceptable("no common codec".into());
    w.core.handle_media_reply(0, crate::media::MediaReply::Joined(Err(refused)), w.now, &mut w.store);
    w.pump();
    w.take_one(CAROL, "SIP/2.0 488");
    // Its time is over: bob, who parked it, is rung back; busy, so alice's call ends.
    w.extend();
    let ring = w.take_one(CALLEE, "INVITE sip:bob@192.0.2.2:5062");
    w.receive(CALLEE, &answer_at(CALLEE, &ring, 486, None));
    w.take_sent(CALLER, "BYE sip:alice@192.0.2.1:5060");
    assert_eq!(w.core.stats().calls.park_timeouts, 1);
}

#[test]
fn a_party_held_before_it_is_parked_is_taken_off_hold_first() {
    let mut w = World::new();
    let (invite_b, alice_tag, b_tag) = confirmed_call(&mut w);
    // Bob holds alice (music plays), then parks her.
    let hold = callee_request("INVITE", &invite_b, &b_tag, 2).replace("Content-Length: 0\r\n\r\n", "")
        + &format!("Content-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{}", offer(5000, "sendonly").len(), offer(5000, "sendonly"));
    w.receive(CALLEE, &hold);
    let reinvite = w.take_one(CALLER, "INVITE sip:alice@192.0.2.1:5060");
    assert!(reinvite.contains("a=sendonly"), "{reinvite}");
    w.receive(CALLER, &answer_at(CALLER, &reinvite, 200, Some(&offer(4000, "recvonly"))));
    w.take_one(CALLER, "ACK");
    w.take_one(CALLEE, "SIP/2.0 200");
    w.receive(CALLEE, &callee_request("ACK", &invite_b, &b_tag, 2));
    w.receive(CALLEE, &callee_refer(&invite_b, &b_tag, 3, "sip:701@sip.test", ""));
    w.take_one(CALLEE, "SIP/2.0 202");
    // Alice is re-INVITEd with sendrecv before bob's legs go (at the Contact of her last 200,
    // which the test's phones all write as bob's).
    let resume = w.take_one(CALLER, "INVITE sip:bob@192.0.2.1:5060");
    assert!(resume.contains("a=sendrecv") && resume.contains(&format!("c=IN IP4 {MEDIA_IP}")), "{resume}");
    assert!(!w.media.iter().any(|m| matches!(m, MediaRequest::Release { .. })), "bob's legs stay until then: {:?}", w.media);
    w.receive(CALLER, &answer_at(CALLER, &resume, 200, Some(&offer(4000, "sendrecv"))));
    w.take_one(CALLER, "ACK");
    assert!(w.media.contains(&MediaRequest::Release { legs: vec![12] }), "{:?}", w.media);
    assert!(
        w.media.iter().filter(|m| matches!(m, MediaRequest::Play { legs, .. } if legs == &[11])).count() >= 2,
        "the park's music: {:?}",
        w.media
    );
    let _ = alice_tag;
}

#[test]
fn a_subscription_that_reuses_a_calls_call_id_leaves_the_calls_requests_to_the_call() {
    let mut w = World::new();
    w.subscriber("carol", None);
    let (invite_b, alice_tag, _) = confirmed_call(&mut w);
    let _ = invite_b;
    // Carol subscribes to bob with the Call-ID of alice's call.
    subscribe(&mut w, "call1", "bob", "Event: dialog\r\n");
    w.take_one(CAROL, "SIP/2.0 200");
    let first = w.take_one(CAROL, "NOTIFY");
    answer_notify(&mut w, &first, 200);
    // Alice's BYE is still hers.
    w.receive(CALLER, &in_dialog("BYE", "call1", 2, &alice_tag, None));
    w.take_one(CALLER, "SIP/2.0 200");
    w.take_one(CALLEE, "BYE");
    assert_eq!(w.core.dialog_subscriptions(), 1);
}

#[test]
fn a_subscriber_whose_number_is_in_the_orbit_range_is_called_not_taken_for_an_orbit() {
    let mut w = World::new();
    w.subscriber("701", Some(crate::server_tests::CALLEE2));
    w.receive(CALLER, &invite("call7", &offer(4000, "sendrecv")).replace("sip:bob@sip.test SIP/2.0", "sip:701@sip.test SIP/2.0"));
    w.allocate();
    w.take_one(crate::server_tests::CALLEE2, "INVITE sip:701@192.0.2.3:5064");
    assert!(!w.take(CALLER, "SIP/2.0 404").iter().any(|r| r.contains("Nothing Parked")));
}

// ---- instant messages (RFC 3428; RFC 5359 §2.6) ----

/// Carol's MESSAGE to `target` with `body` (Call-ID `id`), before credentials.
fn message_text(id: &str, target: &str, cseq: u32, body: &str, auth: &str) -> String {
    format!(
        "MESSAGE sip:{target}@sip.test SIP/2.0\r\nVia: SIP/2.0/UDP {CAROL};branch=z9hG4bK{id}m{cseq}\r\nMax-Forwards: 70\r\n\
         From: <sip:carol@sip.test>;tag=m1\r\nTo: <sip:{target}@sip.test>\r\nCall-ID: {id}\r\nCSeq: {cseq} MESSAGE\r\n\
         {auth}Content-Type: text/plain\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
}

fn send_message(w: &mut World, id: &str, target: &str, body: &str) {
    let uri = format!("sip:{target}@sip.test");
    with_credentials(w, CAROL, "carol", "MESSAGE", &uri, |cseq, auth| message_text(id, target, cseq, body, auth));
}

#[test]
fn a_message_reaches_the_subscribers_phone_and_its_answer_the_sender() {
    let mut w = World::new();
    w.subscriber("carol", None);
    // Bob is told, during a call, where to transfer it (RFC 5359 §2.6).
    send_message(&mut w, "im1", "bob", "Please call sip:dave@sip.test");
    let to_bob = w.take_one(CALLEE, "MESSAGE sip:bob@192.0.2.2:5062");
    assert!(to_bob.contains("Please call sip:dave@sip.test") && to_bob.contains("Content-Type: text/plain"), "{to_bob}");
    assert!(
        to_bob.contains("From: <sip:carol@sip.test>;tag=m1") && to_bob.contains("P-Asserted-Identity: <sip:carol@sip.test>"),
        "{to_bob}"
    );
    assert!(w.take(CAROL, "SIP/2.0 200").is_empty(), "not before bob's phone answers");
    w.receive(CALLEE, &answer(&to_bob, 200, None));
    w.take_one(CAROL, "SIP/2.0 200");
    assert_eq!(w.core.stats().messages_relayed, 1);
}

#[test]
fn a_message_to_nobody_reachable_too_large_or_refused_gets_the_right_failure() {
    let mut w = World::new();
    w.subscriber("carol", None);
    w.subscriber("dave", None);
    send_message(&mut w, "im1", "dave", "hello");
    w.take_one(CAROL, "SIP/2.0 480");
    send_message(&mut w, "im2", "nobody", "hello");
    w.take_one(CAROL, "SIP/2.0 404");
    send_message(&mut w, "im3", "bob", &"x".repeat(1301));
    w.take_one(CAROL, "SIP/2.0 513");
    // Bob's phone refuses it; then one that never answers gets 408.
    send_message(&mut w, "im4", "bob", "hello");
    let to_bob = w.take_one(CALLEE, "MESSAGE");
    w.receive(CALLEE, &answer(&to_bob, 415, None));
    w.take_one(CAROL, "SIP/2.0 415");
    // One that bob's phone never answers: the sender gets 408 after 30 s, before its own
    // transaction gives up; nothing is kept.
    send_message(&mut w, "im5", "bob", "hello");
    w.take_sent(CALLEE, "MESSAGE");
    assert_eq!(w.core.pending_messages(), 1);
    w.advance(Duration::from_secs(31));
    w.take(CALLEE, "MESSAGE");
    w.take_one(CAROL, "SIP/2.0 408");
    assert_eq!(w.core.pending_messages(), 0);
    // One that came back to us (a contact routed to this server) is a loop.
    let looped = message_text("im6", "bob", 1, "hello", "")
        .replace("Via: SIP/2.0/UDP ", "Via: SIP/2.0/UDP 192.0.2.100:5060;branch=z9hG4bKours\r\nVia: SIP/2.0/UDP ");
    w.receive(CAROL, &looped);
    w.take_one(CAROL, "SIP/2.0 482");
    // Our address on another transport, or in a comma-joined Via, is ours too; a port that only
    // starts like ours is not.
    for (id, via) in [
        ("im7", "SIP/2.0/TCP 192.0.2.100:5060;branch=z9hG4bKt"),
        ("im8", "SIP/2.0/UDP 192.0.2.9:5060;branch=z9hG4bKx, SIP/2.0/UDP 192.0.2.100:5060;branch=z9hG4bKy"),
    ] {
        let looped = message_text(id, "bob", 1, "hello", "").replace("Via: SIP/2.0/UDP ", &format!("Via: {via}\r\nVia: SIP/2.0/UDP "));
        w.receive(CAROL, &looped);
        w.take_one(CAROL, "SIP/2.0 482");
    }
    let not_ours = message_text("im9", "bob", 1, "hello", "")
        .replace("Via: SIP/2.0/UDP ", "Via: SIP/2.0/UDP 192.0.2.100:50601;branch=z9hG4bKz\r\nVia: SIP/2.0/UDP ");
    w.receive(CAROL, &not_ours);
    w.take_one(CAROL, "SIP/2.0 407");
}

/// Carol's INVITE (Call-ID `id`) with `join` (a Join header line) and `body`, authenticated.
fn carol_joins(w: &mut World, id: &str, join: &str, body: &str) -> String {
    let text = |cseq: u32, auth: &str| {
        invite(id, body)
            .replace(CALLER, CAROL)
            .replace("\"Alice\" <sip:alice@", "<sip:carol@")
            .replace("CSeq: 1 INVITE", &format!("CSeq: {cseq} INVITE"))
            .replace(&format!("branch=z9hG4bK{id}i"), &format!("branch=z9hG4bK{id}i{cseq}"))
            .replace("Contact:", &format!("{join}{auth}Contact:"))
    };
    with_credentials(w, CAROL, "carol", "INVITE", "sip:bob@sip.test", text)
}

/// The Join header naming bob's phone's dialog of call1.
fn join_bob(invite_b: &str, b_tag: &str) -> String {
    let b_call_id = invite_b.lines().find_map(|l| l.strip_prefix("Call-ID: ")).expect("Call-ID").trim().to_owned();
    let ours = invite_b.lines().find(|l| l.starts_with("From:")).and_then(|l| l.split(";tag=").nth(1)).expect("tag").trim().to_owned();
    format!("Join: {b_call_id};to-tag={ours};from-tag={b_tag}\r\n")
}

/// A hold (sendonly) re-INVITE from bob in call1, relayed to alice and answered.
fn bob_holds_alice(w: &mut World, invite_b: &str, b_tag: &str, cseq: u32) {
    let sdp = offer(5000, "sendonly");
    let hold = callee_request("INVITE", invite_b, b_tag, cseq).replace("Content-Length: 0\r\n\r\n", "")
        + &format!("Content-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{sdp}", sdp.len());
    w.receive(CALLEE, &hold);
    let reinvite = w.take_one(CALLER, "INVITE sip:");
    w.receive(CALLER, &answer_at(CALLER, &reinvite, 200, Some(&offer(4000, "recvonly"))));
    w.take_one(CALLER, "ACK");
    w.take_one(CALLEE, "SIP/2.0 200");
    w.receive(CALLEE, &callee_request("ACK", invite_b, b_tag, cseq));
}

#[test]
fn a_join_is_refused_for_a_held_call_and_one_without_an_offer_leaves_the_call_as_it_was() {
    let mut w = World::new();
    w.subscriber("carol", None);
    let (invite_b, _, b_tag) = confirmed_call(&mut w);
    carol_joins(&mut w, "j0", &join_bob(&invite_b, &b_tag), "");
    w.take_one(CAROL, "SIP/2.0 488");
    assert!(w.conferencing.is_empty(), "nothing moved");
    bob_holds_alice(&mut w, &invite_b, &b_tag, 2);
    carol_joins(&mut w, "j1", &join_bob(&invite_b, &b_tag), &offer(6000, "sendrecv"));
    w.take_one(CAROL, "SIP/2.0 486");
    assert!(w.conferencing.is_empty());
}

#[test]
fn a_joiner_whose_offer_is_refused_leaves_a_plain_call_again() {
    let mut w = World::new();
    w.subscriber("carol", None);
    let (invite_b, alice_tag, b_tag) = confirmed_call(&mut w);
    carol_joins(&mut w, "j1", &join_bob(&invite_b, &b_tag), &offer(6000, "sendrecv"));
    w.conference(800);
    // Carol's offer is refused by the media plane.
    let call = w.conferencing.remove(0);
    let refused = crate::media::MediaError::NotAcceptable("no common codec".into());
    w.core.handle_media_reply(call, crate::media::MediaReply::Conferenced(Err(refused)), w.now, &mut w.store);
    w.pump();
    w.take_one(CAROL, "SIP/2.0 488");
    assert!(w.media.contains(&MediaRequest::Unconference { conference: 800, pairs: vec![(11, 12)] }), "{:?}", w.media);
    // Alice and bob talk as before: her re-INVITE reaches bob.
    w.receive(CALLER, &in_dialog("INVITE", "call1", 2, &alice_tag, Some(&offer(4000, "sendonly"))));
    w.take_one(CALLEE, "INVITE sip:bob@192.0.2.2:5062");
}

#[test]
fn a_party_moving_into_a_room_is_taken_off_hold_first_and_its_requests_meanwhile_are_answered() {
    let mut w = World::new();
    let (invite_b, alice_tag, b_tag) = confirmed_call(&mut w);
    bob_holds_alice(&mut w, &invite_b, &b_tag, 2);
    w.receive(CALLEE, &callee_refer(&invite_b, &b_tag, 3, "sip:conf-x@sip.test", ""));
    w.take_one(CALLEE, "SIP/2.0 202");
    let resume = w.take_one(CALLER, "INVITE sip:");
    assert!(resume.contains("a=sendrecv"), "{resume}");
    assert!(w.conferencing.is_empty(), "not before she is off hold");
    // Her own re-INVITE crosses ours: ours gets 491 and goes again 2.1 s later; hers has nobody
    // to go to and gets 488.
    w.receive(CALLER, &answer_at(CALLER, &resume, 491, None));
    w.take_one(CALLER, "ACK");
    w.receive(CALLER, &in_dialog("INVITE", "call1", 2, &alice_tag, Some(&offer(4000, "sendrecv"))));
    w.take_one(CALLER, "SIP/2.0 488");
    w.advance(Duration::from_millis(2200));
    let again = w.take_one(CALLER, "INVITE sip:");
    assert!(again.contains("a=sendrecv") && again.contains("CSeq: 3 INVITE"), "{again}");
    w.receive(CALLER, &answer_at(CALLER, &again, 200, Some(&offer(4000, "sendrecv"))));
    w.take_one(CALLER, "ACK");
    let moved = w.conference(900);
    assert_eq!(conference_fields(&moved), ("conf-x".into(), None, vec![11], vec![12], false));
    let done = w.take(CALLEE, "NOTIFY");
    assert!(done.last().is_some_and(|n| n.contains("SIP/2.0 200 OK") && n.contains("terminated")), "{done:?}");
}

#[test]
fn a_room_that_cannot_be_made_ends_the_referred_call_and_tells_the_transferor() {
    let mut w = World::new();
    let (invite_b, _, b_tag) = confirmed_call(&mut w);
    w.receive(CALLEE, &callee_refer(&invite_b, &b_tag, 2, "sip:conf-x@sip.test", ""));
    w.take_one(CALLEE, "SIP/2.0 202");
    let call = w.conferencing.remove(0);
    let failed = crate::media::MediaError::Unavailable("media plane down".into());
    w.core.handle_media_reply(call, crate::media::MediaReply::Conferenced(Err(failed)), w.now, &mut w.store);
    w.pump();
    let notifies = w.take(CALLEE, "NOTIFY");
    assert!(notifies.last().is_some_and(|n| n.contains("SIP/2.0 503")), "{notifies:?}");
    w.take_sent(CALLER, "BYE");
    assert_eq!((w.core.active_calls(), w.core.dialogs()), (0, 0));
    let stats = w.core.stats().calls;
    assert_eq!(stats.media_allocations, stats.media_releases, "{stats:?}");
}

#[test]
fn a_parked_call_nobody_takes_back_rings_its_parker_who_answers_and_talks_to_it_again() {
    let mut w = World::with_config("[auth]\nalgorithms = [\"MD5\"]\n[features]\npark_timeout_s = 30\n");
    let (invite_b, alice_tag, b_tag) = confirmed_call(&mut w);
    w.receive(CALLEE, &callee_refer(&invite_b, &b_tag, 2, "sip:701@sip.test", ""));
    w.take_one(CALLEE, "SIP/2.0 202");
    w.receive(CALLEE, &callee_request("BYE", &invite_b, &b_tag, 3));
    w.take_one(CALLEE, "SIP/2.0 200");
    w.take(CALLEE, "NOTIFY");
    // 30 s later bob's phone rings again, with alice as the caller and new legs for him.
    w.advance(Duration::from_secs(31));
    assert!(w.take(CALLER, "BYE").is_empty(), "alice waits for bob");
    w.extend();
    let ring = w.take_one(CALLEE, "INVITE sip:bob@192.0.2.2:5062");
    assert!(ring.contains("From: \"Alice\" <sip:alice@sip.test>") && ring.contains("m=audio 31194 "), "{ring}");
    // Bob answers: alice is re-INVITEd with his media, her music stops.
    w.receive(CALLEE, &answer_at(CALLEE, &ring, 200, Some(&offer(5004, "sendrecv").replace("192.0.2.1", "192.0.2.2"))));
    w.take_one(CALLEE, "ACK");
    let reinvite = w.take_one(CALLER, "INVITE sip:");
    w.receive(CALLER, &answer_at(CALLER, &reinvite, 200, Some(&offer(4000, "sendrecv"))));
    w.take_one(CALLER, "ACK");
    let music = w.media.iter().position(|m| matches!(m, MediaRequest::Play { legs, .. } if legs == &[11])).expect("music while parked");
    let stop = w.media.iter().rposition(|m| matches!(m, MediaRequest::StopPlay { legs } if legs == &[11])).expect("the music stops");
    assert!(music < stop, "{:?}", w.media);
    let stats = w.core.stats().calls;
    assert_eq!((stats.park_timeouts, stats.park_ring_backs, stats.transfers_completed), (1, 1, 0));
    // Alice hangs up: bob (rung back) gets the BYE; the call's legs now are alice's and bob's new one.
    w.receive(CALLER, &in_dialog("BYE", "call1", 2, &alice_tag, None));
    w.take_one(CALLEE, "BYE");
    let last = w.media.iter().rev().find(|m| matches!(m, MediaRequest::Release { .. })).cloned();
    assert_eq!(last, Some(MediaRequest::Release { legs: vec![11, 97] }));
    assert_eq!((w.core.active_calls(), w.core.dialogs()), (0, 0));
}

#[test]
fn a_parker_that_does_not_answer_its_ring_back_leaves_the_parked_call_to_end() {
    let mut w = World::with_config("[auth]\nalgorithms = [\"MD5\"]\n[features]\npark_timeout_s = 30\n");
    let (invite_b, _, b_tag) = confirmed_call(&mut w);
    w.receive(CALLEE, &callee_refer(&invite_b, &b_tag, 2, "sip:701@sip.test", ""));
    w.take_one(CALLEE, "SIP/2.0 202");
    w.advance(Duration::from_secs(31));
    w.extend();
    let ring = w.take_one(CALLEE, "INVITE sip:bob@192.0.2.2:5062");
    w.receive(CALLEE, &answer_at(CALLEE, &ring, 486, None));
    w.take_one(CALLEE, "ACK");
    w.take_sent(CALLER, "BYE sip:");
    assert_eq!(w.core.active_calls(), 0);
}

#[test]
fn a_caller_that_parked_its_callee_is_rung_back_with_the_callee_shown_as_the_caller() {
    let mut w = World::with_config("[auth]\nalgorithms = [\"MD5\"]\n[features]\npark_timeout_s = 30\n");
    let phone = "192.0.2.70:5060";
    w.subscriber("alice", Some(phone));
    subscriber_calls(&mut w, phone, "alice", "pk1", "bob", &offer(4000, "sendrecv"));
    w.allocate();
    let invite_b = w.take_one(CALLEE, "INVITE sip:bob@192.0.2.2:5062");
    w.receive(CALLEE, &answer(&invite_b, 200, Some(&offer(5000, "sendrecv").replace("192.0.2.1", "192.0.2.2"))));
    w.take_one(CALLEE, "ACK");
    let tag = to_tag(&w.take_one(phone, "SIP/2.0 200"));
    let from_alice = |method: &str, cseq: u32| in_dialog(method, "pk1", cseq, &tag, None).replace(CALLER, phone);
    w.receive(phone, &from_alice("ACK", 2));
    // Alice, the caller, parks bob.
    w.receive(phone, &from_alice("REFER", 3).replace("Content-Length: 0", "Refer-To: <sip:701@sip.test>\r\nContent-Length: 0"));
    w.take_one(phone, "SIP/2.0 202");
    // 30 s later alice's phone rings with bob as the caller, not with her own identity.
    w.advance(Duration::from_secs(31));
    w.extend();
    let ring = w.take_one(phone, "INVITE sip:alice@192.0.2.70:5060");
    assert!(ring.contains("From: <sip:bob@192.0.2.2:5062>;tag="), "the parked party, as its dialog names it: {ring}");
    assert!(!ring.contains("P-Asserted-Identity: <sip:+4930123@sip.test>"), "not alice's own identity: {ring}");
    // Alice answers; bob is re-INVITEd with her media.
    w.receive(phone, &answer_at(phone, &ring, 200, Some(&offer(4002, "sendrecv"))));
    w.take_one(phone, "ACK");
    let reinvite = w.take_one(CALLEE, "INVITE sip:bob@192.0.2.2:5062");
    w.receive(CALLEE, &answer_at(CALLEE, &reinvite, 200, Some(&offer(5000, "sendrecv").replace("192.0.2.1", "192.0.2.2"))));
    w.take_one(CALLEE, "ACK");
    assert_eq!(w.core.stats().calls.park_ring_backs, 1);
}

// ---- click-to-dial by REFER (RFC 5359 §2.18) ----

#[test]
fn click_to_dial_refers_the_subscribers_phone_reports_its_answer_and_takes_its_notifies() {
    let mut w = World::new();
    w.subscriber("dave", None);
    assert_eq!(w.core.handle_click_to_dial("nobody", "bob", w.now, &mut w.store), Err(("from", 404)));
    assert_eq!(w.core.handle_click_to_dial("dave", "bob", w.now, &mut w.store), Err(("from", 480)), "no phone registered");
    let id = w.core.handle_click_to_dial("bob", "+4930555", w.now, &mut w.store).expect("referred");
    w.pump();
    let refer = w.take_one(CALLEE, "REFER sip:bob@192.0.2.2:5062");
    assert!(refer.contains("Refer-To: <sip:+4930555@sip.test>") && refer.contains("Referred-By: <sip:click-to-dial@sip.test>"), "{refer}");
    assert!(refer.contains("Contact: <sip:b2bua@"), "a REFER makes a dialog: {refer}");
    assert_eq!(w.core.poll_referral(), None, "not before the phone answers");
    let accepted = answer(&refer, 202, None);
    w.receive(CALLEE, &accepted);
    assert_eq!(w.core.poll_referral(), Some((id, 202)));
    // The phone's NOTIFYs in the REFER's dialog are answered; after the last, the dialog is gone.
    let call_id = refer.lines().find_map(|l| l.strip_prefix("Call-ID: ")).expect("Call-ID").trim().to_owned();
    let ours = refer.lines().find(|l| l.starts_with("From:")).and_then(|l| l.split(";tag=").nth(1)).expect("tag").trim().to_owned();
    let notify = |cseq: u32, state: &str| {
        format!(
            "NOTIFY sip:b2bua@192.0.2.100:5060 SIP/2.0\r\nVia: SIP/2.0/UDP {CALLEE};branch=z9hG4bKn{cseq}\r\nMax-Forwards: 70\r\n\
             From: <sip:bob@sip.test>;tag=b1\r\nTo: <sip:click-to-dial@sip.test>;tag={ours}\r\nCall-ID: {call_id}\r\n\
             CSeq: {cseq} NOTIFY\r\nEvent: refer\r\nSubscription-State: {state}\r\nContent-Type: message/sipfrag\r\n\
             Content-Length: 16\r\n\r\nSIP/2.0 200 OK\r\n"
        )
    };
    w.receive(CALLEE, &notify(1, "terminated;reason=noresource"));
    w.take_one(CALLEE, "SIP/2.0 200");
    w.receive(CALLEE, &notify(2, "terminated;reason=noresource"));
    w.take_one(CALLEE, "SIP/2.0 481");
}

#[test]
fn a_referral_whose_notify_comes_before_its_202_or_whose_phone_never_answers_still_answers_the_api() {
    let mut w = World::new();
    // The phone's terminated NOTIFY overtakes its 202: the API still gets the 202.
    let id = w.core.handle_click_to_dial("bob", "carol", w.now, &mut w.store).expect("referred");
    w.pump();
    let refer = w.take_one(CALLEE, "REFER sip:bob@192.0.2.2:5062");
    let call_id = refer.lines().find_map(|l| l.strip_prefix("Call-ID: ")).expect("Call-ID").trim().to_owned();
    let ours = refer.lines().find(|l| l.starts_with("From:")).and_then(|l| l.split(";tag=").nth(1)).expect("tag").trim().to_owned();
    let notify = format!(
        "NOTIFY sip:b2bua@192.0.2.100:5060 SIP/2.0\r\nVia: SIP/2.0/UDP {CALLEE};branch=z9hG4bKn1\r\nMax-Forwards: 70\r\n\
         From: <sip:bob@sip.test>;tag=b1\r\nTo: <sip:click-to-dial@sip.test>;tag={ours}\r\nCall-ID: {call_id}\r\n\
         CSeq: 1 NOTIFY\r\nEvent: refer\r\nSubscription-State: terminated;reason=noresource\r\n\
         Content-Type: message/sipfrag\r\nContent-Length: 22\r\n\r\nSIP/2.0 486 Busy Here\r\n"
    );
    w.receive(CALLEE, &notify);
    w.take_one(CALLEE, "SIP/2.0 200");
    assert_eq!(w.core.poll_referral(), None);
    w.receive(CALLEE, &answer(&refer, 202, None));
    assert_eq!(w.core.poll_referral(), Some((id, 202)));
    // A phone that never answers: 408 when the REFER times out.
    let id = w.core.handle_click_to_dial("bob", "carol", w.now, &mut w.store).expect("referred");
    w.pump();
    w.advance(Duration::from_secs(40));
    assert_eq!(w.core.poll_referral(), Some((id, 408)));
    // The API refuses what cannot be called.
    assert_eq!(w.core.handle_click_to_dial("bob", "carol <x>", w.now, &mut w.store), Err(("to", 400)));
}
