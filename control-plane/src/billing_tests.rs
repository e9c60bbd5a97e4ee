//! Virtual-time tests of prepaid calls inside [`ControlPlane`](crate::server::ControlPlane):
//! credit held before the trunk rings, the warning tone and the cut-off at the time the balance
//! buys, settlement at the call's cost, refusals by the fraud guards, recovery after a restart.

use std::sync::Arc;
use std::time::Duration;

use crate::billing::prepaid::{Account, Kind};
use crate::config::Config;
use crate::media::MediaRequest;
use crate::server::ControlPlane;
use crate::server_tests::{answer_at, in_dialog, invite, offer, to_tag, World};
use crate::store::{Ledger, Store};
use sip_core::digest::{authorization, ha1, parse_challenge, Algorithm};

pub(crate) const PHONE: &str = "192.0.2.50:5060";
pub(crate) const TRUNK: &str = "192.0.2.30:5070";

/// 0049: 0.60 a minute per second; 0044: 0.06 a minute in 60/6 with a 0.01 connect fee.
const RATES: &str = "prefix,per_minute,connect_fee,initial,increment,period,description\n\
                     49,0.60,0,1,1,,Germany\n44,0.06,0.01,60,6,,United Kingdom\n";

pub(crate) fn world(billing: &str) -> World {
    let dir = std::env::temp_dir().join(format!("cp-billing-{}-{:?}", std::process::id(), std::thread::current().id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let rates = dir.join("rates.csv");
    std::fs::write(&rates, RATES).expect("rates");
    let mut w = World::with_config(&format!(
        "[auth]\nalgorithms = [\"MD5\"]\n[[route]]\nprefix = \"00\"\ndestination = \"sip:{TRUNK}\"\n\
         [billing]\nrates = \"{}\"\nnode = \"cp-test\"\n{billing}",
        rates.display()
    ));
    w.subscriber("alice", None);
    w.settings("alice", &[("account", "acme")]);
    w
}

pub(crate) fn account(w: &mut World, balance: &str, pairs: &[&str]) {
    let mut a = Account::new("acme", Kind::Prepaid, "EUR").expect("account");
    a.balance = crate::billing::rating::parse_amount(balance).expect("amount");
    for p in pairs {
        let (k, v) = p.split_once('=').expect("pair");
        a.set(k, v).expect("setting");
    }
    w.store.add_account(&a).expect("add");
}

pub(crate) fn balance(w: &mut World) -> (i64, u32) {
    let (a, usage) = w.store.account("acme", w.now.unix_ms()).expect("store").expect("acme");
    (a.balance, usage.open)
}

/// Alice dials `number` as call `id` (answering the 407 challenge); the first line of what she
/// gets next (the trunk rings: None).
fn dial(w: &mut World, id: &str, number: &str) -> Option<String> {
    let call = |cseq: u32, auth: &str| {
        invite(id, &offer(4000, "sendrecv"))
            .replace("192.0.2.1:5060", PHONE)
            .replace("sip:bob@sip.test SIP/2.0", &format!("sip:{number}@sip.test SIP/2.0"))
            .replace("CSeq: 1 INVITE", &format!("CSeq: {cseq} INVITE"))
            .replace(&format!("branch=z9hG4bK{id}i"), &format!("branch=z9hG4bK{id}i{cseq}"))
            .replace("Contact:", &format!("{auth}Contact:"))
    };
    // The 407s of earlier calls, sent again (their ACKs do not matter here).
    w.take(PHONE, "SIP/2.0 407");
    w.receive(PHONE, &call(1, ""));
    let challenge = w.take(PHONE, "SIP/2.0 407").pop().expect("407");
    let value = challenge.lines().find_map(|l| l.strip_prefix("Proxy-Authenticate: ")).expect("challenge");
    let challenge = parse_challenge(value).expect("parses");
    let credentials = authorization(
        &challenge,
        "alice",
        &ha1(Algorithm::Md5.hash(), "alice", "sip.test", "pw"),
        "INVITE",
        &format!("sip:{number}@sip.test"),
        "c0ffee",
        1,
    );
    w.receive(PHONE, &call(2, &format!("Proxy-Authorization: {credentials}\r\n")));
    let refused = w.take(PHONE, "SIP/2.0 4");
    if let Some(r) = refused.first() {
        return Some(r.lines().next().unwrap_or_default().to_owned());
    }
    w.allocate();
    None
}

/// The trunk answers the INVITE for `number`; Alice gets the 200 and ACKs it. The trunk's
/// INVITE and Alice's To tag.
fn trunk_answers(w: &mut World, id: &str, number: &str) -> (String, String) {
    let invite_b = w.take_one(TRUNK, &format!("INVITE sip:{number}@{TRUNK}"));
    w.receive(TRUNK, &answer_at(TRUNK, &invite_b, 200, Some(&offer(5000, "sendrecv").replace("192.0.2.1", "192.0.2.30"))));
    w.take_one(TRUNK, "ACK");
    let ok = w.take_one(PHONE, "SIP/2.0 200");
    let tag = to_tag(&ok);
    w.receive(PHONE, &in_dialog("ACK", id, 2, &tag, None).replace("192.0.2.1:5060", PHONE));
    (invite_b, tag)
}

pub(crate) fn call_cdr(w: &mut World, id: &str) -> crate::store::Cdr {
    let cdrs = w.store.cdrs(0).expect("cdrs");
    cdrs.into_iter().find(|c| c.leg == "call" && c.sip_call_id == id).expect("call record")
}

#[test]
fn a_prepaid_call_hears_the_warning_then_is_cut_off_when_its_credit_runs_out() {
    // 0.50 at 0.60/min buys 50 s; the warning 10 s before the end.
    let mut w = world("warning_s = 10\n");
    account(&mut w, "0.50", &[]);
    assert_eq!(dial(&mut w, "p1", "004930123"), None);
    assert_eq!(balance(&mut w), (500_000, 1), "held, not yet spent");
    trunk_answers(&mut w, "p1", "004930123");
    w.advance(Duration::from_secs(39));
    assert!(!w.media.iter().any(|m| matches!(m, MediaRequest::Tone { .. })), "no warning yet");
    w.advance(Duration::from_secs(1));
    let tones: Vec<_> = w.media.iter().filter(|m| matches!(m, MediaRequest::Tone { .. })).collect();
    assert_eq!(tones, [&MediaRequest::Tone { legs: vec![11], tone: "warning".into(), looped: false }], "to the caller's leg");
    assert!(w.take(PHONE, "BYE").is_empty() && w.take(TRUNK, "BYE").is_empty());
    w.advance(Duration::from_secs(10));
    w.take_one(PHONE, "BYE");
    w.take_one(TRUNK, "BYE");
    let cdr = call_cdr(&mut w, "p1");
    assert_eq!((cdr.cause.as_str(), cdr.duration_ms, cdr.cost), ("credit", 50_000, 500_000), "{cdr:?}");
    assert_eq!(balance(&mut w), (0, 0), "all of it, and nothing held");
    assert_eq!(w.core.stats().calls.calls_cut_off, 1);
    // Nothing left: the next call is refused before any trunk rings.
    assert_eq!(dial(&mut w, "p2", "004930123").as_deref(), Some("SIP/2.0 402 Payment Required"));
    assert!(w.take(TRUNK, "INVITE").is_empty());
}

#[test]
fn calls_racing_for_one_balance_never_hold_more_than_it_has_and_settle_at_their_cost() {
    // 1.00 at 0.60/min buys 100 s; no call may last more than 60 s.
    let mut w = world("max_call_s = 60\nwarning_s = 0\n");
    account(&mut w, "1.00", &[]);
    assert_eq!(dial(&mut w, "r1", "004930111"), None);
    assert_eq!(dial(&mut w, "r2", "004930222"), None);
    assert_eq!(dial(&mut w, "r3", "004930333").as_deref(), Some("SIP/2.0 402 Payment Required"), "0.60 + 0.40 held");
    assert_eq!(balance(&mut w), (1_000_000, 2));
    let (_, tag1) = trunk_answers(&mut w, "r1", "004930111");
    let (_, tag2) = trunk_answers(&mut w, "r2", "004930222");
    w.advance(Duration::from_secs(10));
    w.receive(PHONE, &in_dialog("BYE", "r1", 3, &tag1, None).replace("192.0.2.1:5060", PHONE));
    w.take_one(TRUNK, "BYE");
    assert_eq!(balance(&mut w), (900_000, 1), "r1 cost 0.10 for 10 s");
    // r2 was held 40 s: it is cut off then, whatever is left.
    w.advance(Duration::from_secs(30));
    w.take_one(PHONE, "BYE");
    let r2 = call_cdr(&mut w, "r2");
    assert_eq!((r2.cause.as_str(), r2.cost), ("credit", 400_000));
    assert_eq!(balance(&mut w), (500_000, 0));
    let _ = tag2;
}

#[test]
fn fraud_guards_refuse_with_their_reason_and_are_counted() {
    let mut w = world("");
    account(&mut w, "100", &["max_concurrent=1", "blocked=4490"]);
    assert_eq!(dial(&mut w, "g1", "004490555").as_deref(), Some("SIP/2.0 403 Destination Blocked"));
    assert_eq!(dial(&mut w, "g2", "0099123").as_deref(), Some("SIP/2.0 403 No Rate For Destination"));
    assert_eq!(dial(&mut w, "g3", "004930123"), None);
    assert_eq!(dial(&mut w, "g4", "004930124").as_deref(), Some("SIP/2.0 403 Too Many Calls"));
    let stats = w.core.stats().billing;
    assert_eq!((stats.holds, stats.denied[2], stats.denied[3], stats.denied[5]), (1, 1, 1, 1), "{stats:?}");
    // A subscriber without an account is not billed (a trusted trunk's calls neither).
    w.settings("alice", &[("account", "")]);
    assert_eq!(dial(&mut w, "g5", "004930125"), None);
    assert_eq!(w.core.stats().billing.holds, 1);
}

#[test]
fn an_unanswered_trunk_call_costs_nothing_and_frees_its_hold() {
    let mut w = world("");
    account(&mut w, "1.00", &["max_call_cost=0.30"]);
    assert_eq!(dial(&mut w, "u1", "004930123"), None);
    let (a, usage) = w.store.account("acme", w.now.unix_ms()).expect("store").expect("acme");
    assert_eq!((a.balance, usage.held), (1_000_000, 300_000), "max_call_cost caps the hold");
    let invite_b = w.take_one(TRUNK, "INVITE sip:004930123");
    w.receive(TRUNK, &answer_at(TRUNK, &invite_b, 486, None));
    w.take_one(PHONE, "SIP/2.0 486");
    assert_eq!(balance(&mut w), (1_000_000, 0));
    assert_eq!(call_cdr(&mut w, "u1").cost, 0);
}

#[test]
fn a_restarted_control_plane_settles_the_holds_its_calls_left_open() {
    let mut w = world("");
    account(&mut w, "10.00", &[]);
    assert_eq!(dial(&mut w, "c1", "004930123"), None);
    trunk_answers(&mut w, "c1", "004930123");
    // Up a little over 2 minutes: the hold is touched every minute.
    w.advance(Duration::from_secs(125));
    assert_eq!(balance(&mut w), (10_000_000, 1));
    // The control plane dies; a new one on the same node and store starts.
    let config = Config::parse("[sip]\ndomains = [\"sip.test\"]\n[billing]\nnode = \"cp-test\"\n").expect("config");
    w.core = ControlPlane::new(Arc::new(config), Some([7; 32]), [11; 32]).expect("core");
    w.core.handle_timeout(w.now, &mut w.store);
    let (a, usage) = w.store.account("acme", w.now.unix_ms()).expect("store").expect("acme");
    assert_eq!(usage.open, 0, "settled");
    // Billed from the answer to the last touch (at most a minute before the restart).
    let spent = 10_000_000 - a.balance;
    assert!((650_000..=1_250_000).contains(&spent) && spent % 10_000 == 0, "spent {spent}");
    assert_eq!(w.core.stats().billing.recovered, 1);
}

#[test]
fn a_call_holding_credit_cannot_be_transferred_and_click_to_dial_is_held_for_its_first_party() {
    let mut w = world("");
    // Enough for two calls of the longest (4 h at 0.60/min: 144.00 each).
    account(&mut w, "1000.00", &[]);
    assert_eq!(dial(&mut w, "t1", "004930123"), None);
    let (invite_b, _) = trunk_answers(&mut w, "t1", "004930123");
    let b_tag = to_tag(&answer_at(TRUNK, &invite_b, 200, None));
    w.receive(TRUNK, &crate::server_tests::callee_refer(&invite_b, &b_tag, 1, "sip:004930999@sip.test", ""));
    let refused = w.take_one(TRUNK, "SIP/2.0 403");
    assert!(refused.starts_with("SIP/2.0 403 Prepaid Call Not Transferable"), "{refused}");
    // The API calls alice's phone, then a number through the trunk: her account holds for it.
    w.add_contact_for("alice", "192.0.2.51:5060", 1000);
    let before = balance(&mut w).1;
    w.core.handle_originate("alice", "004930124", w.now, &mut w.store).expect("originated");
    assert_eq!(balance(&mut w).1, before + 1, "a hold for the number, before anything rings");
    w.settings("alice", &[("account", "")]);
    w.core.handle_originate("alice", "004930125", w.now, &mut w.store).expect("originated, not billed");
    assert_eq!(balance(&mut w).1, before + 1);
}

#[test]
fn five_wrong_pins_lock_the_accounts_pin_for_a_while() {
    use crate::callback::http::{execute, HttpCall};
    use crate::callback::{Request, Trigger};
    let mut w = world("[callback]\n");
    account(&mut w, "10.00", &["pin=2468"]);
    let web = |pin: &str| HttpCall::Web {
        request: Request { account: "acme".into(), a: "004930111".into(), b: None, trigger: Trigger::Web, delay: Duration::ZERO },
        pin: pin.into(),
    };
    // The right PIN forgets the wrong ones before it.
    for _ in 0..4 {
        assert_eq!(execute(web("0000"), &mut w.core, &mut w.store, w.now).status, 403);
    }
    assert_eq!(execute(web("2468"), &mut w.core, &mut w.store, w.now).status, 202);
    for _ in 0..5 {
        assert_eq!(execute(web("0000"), &mut w.core, &mut w.store, w.now).status, 403);
    }
    assert_eq!(execute(web("2468"), &mut w.core, &mut w.store, w.now).status, 403, "locked, the right PIN too");
    assert_eq!(w.core.stats().callbacks.pin_failures, 9);
    w.advance(Duration::from_secs(901));
    assert_eq!(execute(web("2468"), &mut w.core, &mut w.store, w.now).status, 202, "unlocked after 15 minutes");
}
