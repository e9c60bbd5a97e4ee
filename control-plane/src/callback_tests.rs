//! Virtual-time tests of the callback engine inside the control plane: the customer and the
//! destination are reached through a trunk (byte strings), the media plane is the test double
//! of `server_tests` (it answers a service call's offer itself), DTMF is handed in as the media
//! plane's events would be.

use std::time::Duration;

use crate::billing_tests::{account, balance, world, TRUNK};
use crate::callback::http::{execute, HttpCall};
use crate::callback::{Phase, Request, Trigger};
use crate::media::MediaRequest;
use crate::server_tests::{answer_at, callee_request, invite, offer, to_tag, World, MEDIA_IP};
use crate::store::{Ledger, Store};

/// `[callback]` with an access number of each kind.
const CALLBACK: &str = "warning_s = 0\n[callback]\nretries = 1\nretry_interval_s = 60\n\
                        [[callback.did]]\nnumber = \"4930555000\"\nmode = \"missed-call\"\ndelay_s = 10\n\
                        [[callback.did]]\nnumber = \"4930555111\"\nmode = \"ivr\"\n";

fn request(b: Option<&str>) -> Request {
    Request { account: "acme".into(), a: "004930111".into(), b: b.map(str::to_owned), trigger: Trigger::Api, delay: Duration::ZERO }
}

fn sdp_at(port: u16) -> String {
    offer(port, "sendrecv").replace("192.0.2.1", "192.0.2.30")
}

/// The customer (at the trunk) answers our INVITE with its offer; the media plane answers it:
/// the ACK carries that answer. Returns the INVITE.
fn customer_answers(w: &mut World) -> String {
    let invite_a = w.take_one(TRUNK, "INVITE sip:004930111@192.0.2.30:5070");
    assert!(!invite_a.contains("application/sdp"), "no offer to the customer: {invite_a}");
    assert!(invite_a.contains("From: <sip:callback@sip.test>"), "{invite_a}");
    w.receive(TRUNK, &answer_at(TRUNK, &invite_a, 200, Some(&sdp_at(6000))));
    w.allocate();
    let ack = w.take_one(TRUNK, "ACK sip:bob@192.0.2.30:5070");
    assert!(ack.contains("m=audio") && ack.contains(MEDIA_IP), "the media plane's answer in the ACK: {ack}");
    invite_a
}

fn job_phase(w: &World, job: u64) -> (Phase, String) {
    let s = w.core.callback_status(job).expect("job");
    (s.phase, s.result)
}

#[test]
fn an_api_callback_calls_the_customer_then_the_destination_and_bills_both_legs() {
    let mut w = world(CALLBACK);
    account(&mut w, "10.00", &[]);
    let job = w.core.handle_callback(request(Some("004930222")), None, w.now, &mut w.store).expect("accepted");
    w.pump();
    assert_eq!(balance(&mut w).1, 1, "credit held before the customer rings");
    let invite_a = customer_answers(&mut w);
    // The destination rings with the media plane's offer; the customer hears ringback.
    let invite_b = w.take_one(TRUNK, "INVITE sip:004930222@192.0.2.30:5070");
    w.advance(Duration::from_secs(5));
    w.take_sent(TRUNK, "INVITE sip:004930222@192.0.2.30:5070");
    assert!(invite_b.contains(MEDIA_IP), "{invite_b}");
    assert!(w.media.iter().any(|m| matches!(m, MediaRequest::Tone { legs, tone, looped: true } if legs == &[11] && tone == "ringback")));
    assert_eq!(job_phase(&w, job).0, Phase::CallingB);
    w.receive(TRUNK, &answer_at(TRUNK, &invite_b, 200, Some(&sdp_at(7000))));
    // The customer is re-offered the destination's media, answers, and they talk.
    let reinvite = w.take(TRUNK, "INVITE sip:bob@192.0.2.30:5070").pop().expect("re-INVITE of the customer");
    assert!(reinvite.contains(MEDIA_IP));
    w.receive(TRUNK, &answer_at(TRUNK, &reinvite, 200, Some(&sdp_at(6000))));
    assert_eq!(job_phase(&w, job).0, Phase::Connected);
    assert!(w.media.iter().any(|m| matches!(m, MediaRequest::StopPlay { legs } if legs == &[11])), "ringback stops");
    w.advance(Duration::from_secs(30));
    // The destination hangs up: the customer gets BYE.
    let b_tag = to_tag(&answer_at(TRUNK, &invite_b, 200, None));
    w.receive(TRUNK, &callee_request("BYE", &invite_b, &b_tag, 1));
    let byes = w.take(TRUNK, "BYE sip:bob@192.0.2.30:5070");
    assert!(byes.iter().any(|b| b.contains(invite_a.lines().find(|l| l.starts_with("Call-ID:")).expect("call-id"))), "{byes:?}");
    assert_eq!(job_phase(&w, job), (Phase::Done, "completed".into()));
    // The customer's leg: 35 s; the destination's: 30 s; 0.60/min per second each.
    let cdrs = w.store.cdrs(0).expect("cdrs");
    let leg = |l: &str| cdrs.iter().find(|c| c.leg == l).expect("leg").clone();
    assert_eq!((leg("a").destination.as_str(), leg("a").cost), ("004930111", 350_000));
    assert_eq!((leg("b").destination.as_str(), leg("b").cost), ("004930222", 300_000));
    assert_eq!(leg("call").cost, 650_000);
    assert_eq!(balance(&mut w), (10_000_000 - 650_000, 0));
}

#[test]
fn the_customer_keys_in_the_destination_and_an_unreachable_one_ends_the_call() {
    let mut w = world(CALLBACK);
    account(&mut w, "10.00", &[]);
    let job = w.core.handle_callback(request(None), None, w.now, &mut w.store).expect("accepted");
    w.pump();
    customer_answers(&mut w);
    assert!(w.media.iter().any(|m| matches!(m, MediaRequest::Prompt { legs, file } if legs == &[11] && file == "enter-number.wav")));
    assert_eq!(job_phase(&w, job).0, Phase::Collecting);
    for d in "004930222#".chars() {
        w.core.handle_dtmf(11, d, w.now, &mut w.store);
        w.pump();
    }
    let invite_b = w.take_one(TRUNK, "INVITE sip:004930222@192.0.2.30:5070");
    w.receive(TRUNK, &answer_at(TRUNK, &invite_b, 486, None));
    assert!(w.media.iter().any(|m| matches!(m, MediaRequest::Prompt { file, .. } if file == "not-available.wav")));
    assert!(w.take(TRUNK, "BYE").is_empty(), "the prompt plays first");
    w.advance(Duration::from_secs(6));
    w.take_sent(TRUNK, "BYE sip:bob@192.0.2.30:5070");
    assert_eq!(job_phase(&w, job), (Phase::Done, "destination-failed: 486".into()));
    assert_eq!(balance(&mut w), (10_000_000 - 60_000, 0), "the customer's 6 s at 0.60/min");
}

#[test]
fn an_unanswered_customer_is_called_again_after_the_retry_interval() {
    let mut w = world(CALLBACK);
    account(&mut w, "10.00", &[]);
    let job = w.core.handle_callback(request(Some("004930222")), None, w.now, &mut w.store).expect("accepted");
    w.pump();
    let invite_a = w.take_one(TRUNK, "INVITE sip:004930111@");
    w.receive(TRUNK, &answer_at(TRUNK, &invite_a, 480, None));
    assert_eq!(job_phase(&w, job).0, Phase::Queued);
    assert_eq!(balance(&mut w), (10_000_000, 0), "nothing held while waiting");
    w.advance(Duration::from_secs(59));
    assert!(w.take(TRUNK, "INVITE sip:004930111@").is_empty());
    w.advance(Duration::from_secs(1));
    let again = w.take_one(TRUNK, "INVITE sip:004930111@");
    w.receive(TRUNK, &answer_at(TRUNK, &again, 480, None));
    let s = w.core.callback_status(job).expect("job");
    assert_eq!((s.phase, s.result.as_str(), s.attempts), (Phase::Done, "no-answer", 2));
}

#[test]
fn a_missed_call_to_the_access_number_is_declined_and_called_back() {
    let mut w = world(CALLBACK);
    account(&mut w, "10.00", &["ani=+4930111,004930111"]);
    let missed = invite("m1", &offer(4000, "sendrecv"))
        .replace("sip:bob@sip.test SIP/2.0", "sip:4930555000@sip.test SIP/2.0")
        .replace("<sip:alice@sip.test>", "<sip:004930111@sip.test>");
    w.receive("192.0.2.1:5060", &missed);
    let declined = w.take_one("192.0.2.1:5060", "SIP/2.0 603");
    assert!(declined.starts_with("SIP/2.0 603 Decline (Calling You Back)"), "{declined}");
    w.advance(Duration::from_secs(9));
    assert!(w.take(TRUNK, "INVITE").is_empty());
    w.advance(Duration::from_secs(1));
    w.take_one(TRUNK, "INVITE sip:004930111@192.0.2.30:5070");
    // A caller that is nobody's customer is refused.
    let stranger = missed.replace("004930111@", "004930999@").replace("Call-ID: m1", "Call-ID: m2").replace("z9hG4bKm1i", "z9hG4bKm2i");
    w.receive("192.0.2.1:5060", &stranger);
    w.take_one("192.0.2.1:5060", "SIP/2.0 403");
}

#[test]
fn a_caller_of_the_ivr_number_keys_in_the_destination_and_is_joined_to_it() {
    let mut w = world(CALLBACK);
    account(&mut w, "10.00", &["ani=004930111"]);
    let call = invite("i1", &offer(4000, "sendrecv"))
        .replace("sip:bob@sip.test SIP/2.0", "sip:+4930555111@sip.test SIP/2.0")
        .replace("<sip:alice@sip.test>", "<sip:004930111@sip.test>");
    w.receive("192.0.2.1:5060", &call);
    w.allocate();
    let ok = w.take_one("192.0.2.1:5060", "SIP/2.0 200");
    assert!(ok.contains(MEDIA_IP), "the media plane answers the caller: {ok}");
    let tag = to_tag(&ok);
    w.receive("192.0.2.1:5060", &crate::server_tests::in_dialog("ACK", "i1", 1, &tag, None));
    assert!(w.media.iter().any(|m| matches!(m, MediaRequest::Prompt { file, .. } if file == "enter-number.wav")));
    for d in "004930222".chars() {
        w.core.handle_dtmf(11, d, w.now, &mut w.store);
    }
    w.advance(Duration::from_secs(5));
    let invite_b = w.take_one(TRUNK, "INVITE sip:004930222@192.0.2.30:5070");
    w.receive(TRUNK, &answer_at(TRUNK, &invite_b, 200, Some(&sdp_at(7000))));
    let reinvite = w.take_one("192.0.2.1:5060", "INVITE sip:alice@192.0.2.1:5060");
    w.receive("192.0.2.1:5060", &answer_at("192.0.2.1:5060", &reinvite, 200, Some(&offer(4000, "sendrecv"))));
    w.advance(Duration::from_secs(20));
    // The caller hangs up: the destination gets BYE; only the destination's leg is charged.
    w.receive("192.0.2.1:5060", &crate::server_tests::in_dialog("BYE", "i1", 2, &tag, None));
    w.take_one(TRUNK, "BYE sip:bob@192.0.2.30:5070");
    assert_eq!(balance(&mut w), (10_000_000 - 200_000, 0), "20 s to 004930222");
}

#[test]
fn http_triggers_refuse_strangers_bad_fields_and_floods() {
    let mut w = world(CALLBACK);
    account(&mut w, "10.00", &["pin=2468", "ani=004930111"]);
    let run = |w: &mut World, call: HttpCall| execute(call, &mut w.core, &mut w.store, w.now);
    let web = |pin: &str, a: &str| HttpCall::Web {
        request: Request { a: a.into(), trigger: Trigger::Web, ..request(Some("004930222")) },
        pin: pin.into(),
    };
    assert_eq!(run(&mut w, web("0000", "004930111")).status, 403, "wrong PIN");
    let bad = run(&mut w, web("2468", "0049 30"));
    assert_eq!((bad.status, bad.body["field"].as_str()), (400, Some("a")));
    let unknown = HttpCall::Api(Request { account: "nobody".into(), ..request(None) });
    assert_eq!(run(&mut w, unknown).status, 403);
    let accepted = run(&mut w, web("2468", "004930111"));
    assert_eq!(accepted.status, 202, "{:?}", accepted.body);
    let id = accepted.body["id"].as_u64().expect("id");
    let status = run(&mut w, HttpCall::Status { id, pin: Some(("acme".into(), "2468".into())) });
    assert_eq!((status.status, status.body["phase"].as_str()), (200, Some("calling-customer")));
    assert_eq!(run(&mut w, HttpCall::Status { id, pin: Some(("acme".into(), "1111".into())) }).status, 403);
    // Two callbacks at once per account (the default): the third waits for one to end.
    // The first callback holds all the balance buys: the next finds nothing to hold.
    let second = run(&mut w, web("2468", "004930111"));
    let id2 = second.body["id"].as_u64().expect("id");
    let status = run(&mut w, HttpCall::Status { id: id2, pin: None });
    assert_eq!((status.body["phase"].as_str(), status.body["result"].as_str()), (Some("done"), Some("refused: Payment Required")));
    // With more money, a second goes; a third waits for one of them (two at once per account).
    w.store.credit("acme", 100_000_000).expect("credit");
    assert_eq!(run(&mut w, web("2468", "004930111")).status, 202);
    assert_eq!(run(&mut w, web("2468", "004930111")).status, 503);
    // The webhook: "account pin customer destination", or "access-number#destination".
    let hook = |text: &str| HttpCall::Webhook { from: "004930111".into(), text: text.into() };
    assert_eq!(run(&mut w, hook("acme 9999 004930111 004930222")).status, 403);
    assert_eq!(run(&mut w, hook("hello")).body["field"], "text");
    assert_eq!(run(&mut w, hook("4930777#004930222")).body["field"], "text", "not an access number");
    assert_eq!(run(&mut w, hook("4930555000#004930222")).status, 503, "the account's two callbacks are going");
    // Floods: ten requests a minute per account.
    let mut limited = 0;
    for _ in 0..20 {
        if run(&mut w, web("2468", "004930111")).status == 429 {
            limited += 1;
        }
    }
    assert!(limited >= 10, "{limited}");
}

#[test]
fn the_http_api_reads_accounts_and_cdrs_and_tops_up_naming_bad_fields() {
    use crate::callback::http::parse_cdr_query;
    let mut w = world(CALLBACK);
    account(&mut w, "1.00", &[]);
    let run = |w: &mut World, call: HttpCall| execute(call, &mut w.core, &mut w.store, w.now);
    let shown = run(&mut w, HttpCall::Account { id: "acme".into() });
    assert_eq!((shown.status, shown.body["balance"].as_str(), shown.body["held"].as_str()), (200, Some("1.000000"), Some("0.000000")));
    assert_eq!(run(&mut w, HttpCall::Account { id: "nobody".into() }).status, 404);
    let topped = run(&mut w, HttpCall::Credit { id: "acme".into(), amount: "2.5".into(), debit: false });
    assert_eq!(topped.body["balance"], "3.500000");
    let bad = run(&mut w, HttpCall::Credit { id: "acme".into(), amount: "-1".into(), debit: false });
    assert_eq!((bad.status, bad.body["field"].as_str()), (400, Some("amount")));
    assert_eq!(run(&mut w, HttpCall::Credit { id: "acme".into(), amount: "0.5".into(), debit: true }).body["balance"], "3.000000");
    // A call's records, as the API lists them.
    let job = w.core.handle_callback(request(Some("004930222")), None, w.now, &mut w.store).expect("accepted");
    w.pump();
    let invite_a = w.take_one(TRUNK, "INVITE sip:004930111@");
    w.receive(TRUNK, &answer_at(TRUNK, &invite_a, 486, None));
    let _ = job;
    let cdrs = run(&mut w, parse_cdr_query(Some("since=0&limit=2")).expect("query"));
    assert_eq!(cdrs.body["cdrs"].as_array().map(Vec::len), Some(2));
    assert_eq!(cdrs.body["more"], true, "three records, two asked for");
    assert_eq!(cdrs.body["cdrs"][0]["cost"], "0.000000");
    for (query, field) in [("since=x", "since"), ("limit=0", "limit"), ("limit=10001", "limit"), ("color=red", "query")] {
        assert_eq!(parse_cdr_query(Some(query)).unwrap_err().body["field"], field, "{query}");
    }
}

#[test]
fn an_ivr_caller_gets_bye_when_the_destination_hangs_up() {
    let mut w = world(CALLBACK);
    account(&mut w, "10.00", &["ani=004930111"]);
    let call = invite("i2", &offer(4000, "sendrecv"))
        .replace("sip:bob@sip.test SIP/2.0", "sip:4930555111@sip.test SIP/2.0")
        .replace("<sip:alice@sip.test>", "<sip:004930111@sip.test>");
    w.receive("192.0.2.1:5060", &call);
    w.allocate();
    let ok = w.take_one("192.0.2.1:5060", "SIP/2.0 200");
    let tag = to_tag(&ok);
    w.receive("192.0.2.1:5060", &crate::server_tests::in_dialog("ACK", "i2", 1, &tag, None));
    for d in "004930222#".chars() {
        w.core.handle_dtmf(11, d, w.now, &mut w.store);
        w.pump();
    }
    let invite_b = w.take_one(TRUNK, "INVITE sip:004930222@192.0.2.30:5070");
    // While the destination rings, the caller's requests are answered here, not sent to it.
    w.receive("192.0.2.1:5060", &crate::server_tests::in_dialog("INFO", "i2", 2, &tag, None));
    w.take_one("192.0.2.1:5060", "SIP/2.0 200");
    assert!(w.take(TRUNK, "INFO").is_empty());
    w.receive(TRUNK, &answer_at(TRUNK, &invite_b, 200, Some(&sdp_at(7000))));
    let reinvite = w.take_one("192.0.2.1:5060", "INVITE sip:alice@192.0.2.1:5060");
    w.receive("192.0.2.1:5060", &answer_at("192.0.2.1:5060", &reinvite, 200, Some(&offer(4000, "sendrecv"))));
    w.advance(Duration::from_secs(10));
    let b_tag = to_tag(&answer_at(TRUNK, &invite_b, 200, None));
    w.receive(TRUNK, &callee_request("BYE", &invite_b, &b_tag, 1));
    w.take_one(TRUNK, "SIP/2.0 200");
    let bye = w.take("192.0.2.1:5060", "BYE");
    assert_eq!(bye.len(), 1, "the caller is hung up: {:?}", w.sent);
    assert_eq!(balance(&mut w), (10_000_000 - 100_000, 0), "10 s to 004930222");
}

#[test]
fn an_ivr_caller_that_hangs_up_while_the_destination_rings_ends_the_call_once_it_is_cancelled() {
    let mut w = world(CALLBACK);
    account(&mut w, "10.00", &["ani=004930111"]);
    let call = invite("i3", &offer(4000, "sendrecv"))
        .replace("sip:bob@sip.test SIP/2.0", "sip:4930555111@sip.test SIP/2.0")
        .replace("<sip:alice@sip.test>", "<sip:004930111@sip.test>");
    w.receive("192.0.2.1:5060", &call);
    w.allocate();
    let tag = to_tag(&w.take_one("192.0.2.1:5060", "SIP/2.0 200"));
    w.receive("192.0.2.1:5060", &crate::server_tests::in_dialog("ACK", "i3", 1, &tag, None));
    for d in "004930222#".chars() {
        w.core.handle_dtmf(11, d, w.now, &mut w.store);
        w.pump();
    }
    let invite_b = w.take_one(TRUNK, "INVITE sip:004930222@192.0.2.30:5070");
    w.receive(TRUNK, &answer_at(TRUNK, &invite_b, 180, None));
    w.receive("192.0.2.1:5060", &crate::server_tests::in_dialog("BYE", "i3", 2, &tag, None));
    w.take_one("192.0.2.1:5060", "SIP/2.0 200");
    let cancel = w.take_one(TRUNK, "CANCEL sip:004930222@192.0.2.30:5070");
    w.receive(TRUNK, &answer_at(TRUNK, &cancel, 200, None));
    w.receive(TRUNK, &answer_at(TRUNK, &invite_b, 487, None));
    assert_eq!(w.core.active_calls(), 0, "the call ended once its last fork did");
    assert_eq!(balance(&mut w), (10_000_000, 0), "nothing held, nothing spent");
    let cdrs = w.store.cdrs(0).expect("cdrs");
    assert_eq!(cdrs.iter().filter(|c| c.leg == "call").count(), 1);
}
