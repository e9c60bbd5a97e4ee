//! Call pickup, call park, automatic redial and conference rooms (RFC 5359 §2.16, §2.15, §2.17,
//! §2.10) through the real binaries, with sipp as every phone: the order of each phone's
//! messages from sipp's logs, audio relayed between the parties the media plane joined (its
//! packet counters), no leg left, and the control plane's counters from /metrics.
//!
//! sipp is required when `REQUIRE_SIPP=1` (CI); without it the tests skip with a message.
//! Slots 21 to 29 (SIP 21210+, the media plane's RTP 24100-24999, sipp 26000+ and its media
//! 27000+).

use std::path::PathBuf;
use std::time::Duration;

mod common;
use common::stack::{register_callee, settings, sipp_available, spawn_sipp, wait_bounded, Stack};
use common::{metric, scrape, Proc};

/// sipp running `scenario` from `port` (its RTP from `port + 1000`), logging to `name`.log
/// (killed if the test fails first).
fn phone(stack: &Stack, name: &str, port: u16, args: &[&str]) -> (Proc, PathBuf) {
    let log = stack.dir.join(format!("{name}.log"));
    let (p, mp) = (port.to_string(), (port + 1000).to_string());
    let mut all = vec!["-p", &p, "-mp", &mp, "-m", "1", "-trace_msg", "-message_file", log.to_str().expect("utf8")];
    all.extend_from_slice(args);
    (Proc { child: spawn_sipp(stack, &all), name: "sipp" }, log)
}

/// Waits for `phones` to pass; their message logs.
fn logs(stack: &Stack, phones: Vec<(&str, Proc, PathBuf)>) -> Vec<String> {
    phones
        .into_iter()
        .map(|(name, mut phone, log)| {
            let status = wait_bounded(&mut phone.child, Duration::from_secs(40));
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            assert!(status.success(), "{name}'s scenario failed: {text}\ncontrol plane: {}", stack.log());
            text
        })
        .collect()
}

/// The body of the last NOTIFY of a transfer's progress (the one that ends its subscription)
/// after `from` in a message log: the sipfrag status line.
fn final_sipfrag(log: &str, from: usize) -> &str {
    let last = from + at(&log[from..], "Subscription-State: terminated");
    let rest = &log[last..];
    let body = rest.find("\r\n\r\n").map(|i| i + 4).or_else(|| rest.find("\n\n").map(|i| i + 2)).expect("the NOTIFY's body");
    rest[body..].lines().next().unwrap_or_default()
}

fn at(log: &str, needle: &str) -> usize {
    log.find(needle).unwrap_or_else(|| panic!("{needle:?} not in the message log:\n{log}"))
}

/// The control plane's counter `name` (scraped from the stack's /metrics on `metrics`).
fn counter(metrics: &str, name: &str) -> u64 {
    let body = scrape(metrics).unwrap_or_else(|| panic!("no /metrics on {metrics}"));
    metric(&body, &format!("{name}_total ")).unwrap_or_else(|| panic!("{name} not in /metrics"))
}

#[test]
fn a_ringing_call_is_picked_up_with_star_8_by_a_phone_of_the_callees_group() {
    if !sipp_available() {
        return;
    }
    let metrics = "127.0.0.1:21219";
    let mut stack = Stack::start_with(21, true, &format!("[metrics]\nlisten = \"{metrics}\"\n"));
    settings(&stack, "bob", &["pickup_group=sales"]);
    settings(&stack, "carol", &["pickup_group=sales"]);
    register_callee(&stack, "csv/bob.csv", 26_000);
    let (bob, bob_log) = phone(&stack, "bob", 26_000, &["-sf", "uas-noanswer.xml"]);
    std::thread::sleep(Duration::from_millis(300));
    // Alice calls bob (RTP for 4 s once answered, then BYE); bob's phone rings and rings.
    let alice_args = ["-sf", "uac-call.xml", "-inf", "csv/alice-calls-bob.csv", "-auth_uri", "bob@sip.test", "-d", "4000"];
    let (alice, alice_log) = phone(&stack, "alice", 26_003, &alice_args);
    std::thread::sleep(Duration::from_millis(1500));
    let (_, before) = stack.media_totals();
    // Carol, in bob's group, dials *8: she and alice talk until alice hangs up.
    let carol_args = ["-sf", "uac-call-until-bye.xml", "-inf", "csv/carol-picks-up.csv", "-auth_uri", "*8@sip.test"];
    let (carol, carol_log) = phone(&stack, "carol", 26_006, &carol_args);
    let logs = logs(&stack, vec![("alice", alice, alice_log), ("carol", carol, carol_log), ("bob", bob, bob_log)]);
    let (alice, carol, bob) = (&logs[0], &logs[1], &logs[2]);
    assert!(at(alice, "SIP/2.0 180") < at(alice, "SIP/2.0 200"), "{alice}");
    assert!(at(carol, "SIP/2.0 200") < at(carol, "BYE sip:"), "carol's call ends with alice's BYE: {carol}");
    assert!(at(bob, "INVITE sip:bob@") < at(bob, "CANCEL sip:bob@"), "bob's phone stops ringing: {bob}");
    let (legs, after) = stack.media_totals();
    assert_eq!(legs, 0, "legs left in the media plane");
    // Both sent 50 packets a second for about 4 s, each relayed to the other.
    assert!(after - before > 200, "audio relayed between alice and carol: {} packets", after - before);
    assert_eq!(counter(metrics, "sip_pickups"), 1);
    stack.stop();
}

#[test]
fn a_call_parked_in_an_orbit_hears_music_and_is_taken_back_by_dialling_the_orbit() {
    if !sipp_available() {
        return;
    }
    let metrics = "127.0.0.1:21229";
    let mut stack = Stack::start_with(22, true, &format!("[metrics]\nlisten = \"{metrics}\"\n"));
    register_callee(&stack, "csv/bob.csv", 26_010);
    // Bob answers and parks alice in orbit 701 (REFER), then hangs up.
    let (bob, bob_log) = phone(&stack, "bob", 26_010, &["-sf", "uas-refer.xml", "-set", "target", "701@sip.test"]);
    std::thread::sleep(Duration::from_millis(300));
    let alice_args = ["-sf", "uac-call.xml", "-inf", "csv/alice-calls-bob.csv", "-auth_uri", "bob@sip.test", "-d", "5000"];
    let (alice, alice_log) = phone(&stack, "alice", 26_013, &alice_args);
    std::thread::sleep(Duration::from_millis(2000));
    assert_eq!(counter(metrics, "sip_parks"), 1, "parked by now; log: {}", stack.log());
    // Carol dials the orbit and talks to alice until alice hangs up.
    let carol_args = ["-sf", "uac-call-until-bye.xml", "-inf", "csv/carol-calls-701.csv", "-auth_uri", "701@sip.test"];
    let (carol, carol_log) = phone(&stack, "carol", 26_016, &carol_args);
    let logs = logs(&stack, vec![("alice", alice, alice_log), ("carol", carol, carol_log), ("bob", bob, bob_log)]);
    let (alice, carol, bob) = (&logs[0], &logs[1], &logs[2]);
    let trying = at(bob, "SIP/2.0 100 Trying");
    assert!(at(bob, "SIP/2.0 202") < trying && final_sipfrag(bob, trying).starts_with("SIP/2.0 200 OK"), "{bob}");
    assert!(!alice[at(alice, "SIP/2.0 200")..].contains("INVITE sip:alice@"), "alice is not re-INVITEd: {alice}");
    assert!(at(carol, "SIP/2.0 200") < at(carol, "BYE sip:"), "{carol}");
    let (legs, _) = stack.media_totals();
    assert_eq!(legs, 0, "legs left in the media plane");
    assert_eq!((counter(metrics, "sip_parks"), counter(metrics, "sip_park_retrievals")), (1, 1));
    stack.stop();
}

#[test]
fn a_caller_who_found_the_callee_busy_watches_its_dialogs_and_calls_again_once_it_is_free() {
    if !sipp_available() {
        return;
    }
    let mut stack = Stack::start(23, true);
    register_callee(&stack, "csv/bob.csv", 26_020);
    register_callee(&stack, "csv/carol.csv", 26_023);
    // Bob is on the phone with carol for 4 s.
    let (carol, carol_log) = phone(&stack, "carol", 26_023, &["-sf", "uas-answer.xml"]);
    std::thread::sleep(Duration::from_millis(300));
    let bob_args = ["-sf", "uac-call-short.xml", "-inf", "csv/bob-calls-carol.csv", "-auth_uri", "carol@sip.test", "-d", "4000"];
    let (bob_out, bob_out_log) = phone(&stack, "bob-out", 26_026, &bob_args);
    std::thread::sleep(Duration::from_millis(1000));
    // Alice calls bob, whose phone says busy; she watches his dialogs and calls again when his
    // call with carol is over; his phone answers then.
    let (busy, busy_log) = phone(&stack, "bob-busy", 26_020, &["-sf", "uas-busy.xml"]);
    std::thread::sleep(Duration::from_millis(300));
    let alice_args = ["-sf", "uac-redial.xml", "-inf", "csv/alice-calls-bob.csv", "-auth_uri", "bob@sip.test", "-d", "500"];
    let (alice, alice_log) = phone(&stack, "alice", 26_029, &alice_args);
    logs(&stack, vec![("bob-busy", busy, busy_log)]);
    let (answers, answers_log) = phone(&stack, "bob-answers", 26_020, &["-sf", "uas-answer.xml"]);
    let logs = logs(
        &stack,
        vec![
            ("alice", alice, alice_log),
            ("bob-out", bob_out, bob_out_log),
            ("carol", carol, carol_log),
            ("bob-answers", answers, answers_log),
        ],
    );
    let alice = &logs[0];
    let (busy_at, subscribed) = (at(alice, "SIP/2.0 486"), at(alice, "SUBSCRIBE sip:bob@"));
    let confirmed = at(alice, "<state>confirmed</state>");
    let again = alice.rfind("INVITE sip:bob@").expect("a second INVITE");
    assert!(busy_at < subscribed && subscribed < confirmed && confirmed < again, "{alice}");
    assert!(alice[confirmed..again].contains("Subscription-State: terminated"), "the subscription ends before the redial: {alice}");
    assert!(alice[again..].contains("SIP/2.0 200"), "{alice}");
    let (legs, _) = stack.media_totals();
    assert_eq!(legs, 0, "legs left in the media plane");
    stack.stop();
}

#[test]
fn a_party_referred_to_a_conference_room_talks_there_with_two_who_dialled_it() {
    if !sipp_available() {
        return;
    }
    let mut stack = Stack::start(24, true);
    register_callee(&stack, "csv/bob.csv", 26_030);
    // Alice calls bob (RTP for 6 s once answered); bob answers and sends her to room conf-x
    // (RFC 5359 §2.10), then dials the room himself, and so does carol.
    let (bob, bob_log) = phone(&stack, "bob", 26_030, &["-sf", "uas-refer.xml", "-set", "target", "conf-x@sip.test"]);
    std::thread::sleep(Duration::from_millis(300));
    let alice_args = ["-sf", "uac-call.xml", "-inf", "csv/alice-calls-bob.csv", "-auth_uri", "bob@sip.test", "-d", "6000"];
    let (alice, alice_log) = phone(&stack, "alice", 26_033, &alice_args);
    std::thread::sleep(Duration::from_millis(1500));
    let room = |csv: &'static str| ["-sf", "uac-call.xml", "-inf", csv, "-auth_uri", "conf-x@sip.test", "-d", "3000"];
    let (bob_in, bob_in_log) = phone(&stack, "bob-in", 26_036, &room("csv/bob-calls-conf-x.csv"));
    let (carol, carol_log) = phone(&stack, "carol", 26_039, &room("csv/carol-calls-conf-x.csv"));
    std::thread::sleep(Duration::from_millis(2000));
    // Three parties in the room: each of their legs takes RTP in and sends the mix out.
    let legs = stack.media_legs();
    assert_eq!(legs.len(), 3, "alice's, bob's and carol's legs in the room: {legs:?}");
    assert!(legs.iter().all(|&(i, o)| i > 20 && o > 20), "every party sends and hears the room: {legs:?}");
    let logs =
        logs(&stack, vec![("alice", alice, alice_log), ("bob", bob, bob_log), ("bob-in", bob_in, bob_in_log), ("carol", carol, carol_log)]);
    let (alice, bob) = (&logs[0], &logs[1]);
    let trying = at(bob, "SIP/2.0 100 Trying");
    assert!(at(bob, "SIP/2.0 202") < trying && final_sipfrag(bob, trying).starts_with("SIP/2.0 200 OK"), "{bob}");
    assert!(!alice[at(alice, "SIP/2.0 200")..].contains("INVITE sip:alice@"), "alice is not re-INVITEd: {alice}");
    let (legs, _) = stack.media_totals();
    assert_eq!(legs, 0, "legs left in the media plane");
    stack.stop();
}

#[test]
fn a_message_sent_during_a_call_reaches_the_other_party_with_the_transfer_target() {
    if !sipp_available() {
        return;
    }
    let mut stack = Stack::start(25, true);
    register_callee(&stack, "csv/bob.csv", 26_040);
    // Bob's phone takes alice's call and, during it, her message naming where to transfer it
    // (RFC 5359 §2.6).
    let (bob, bob_log) = phone(&stack, "bob", 26_040, &["-sf", "uas-call-and-message.xml", "-m", "2"]);
    std::thread::sleep(Duration::from_millis(300));
    let alice_args = ["-sf", "uac-call.xml", "-inf", "csv/alice-calls-bob.csv", "-auth_uri", "bob@sip.test", "-d", "3000"];
    let (alice, alice_log) = phone(&stack, "alice", 26_043, &alice_args);
    std::thread::sleep(Duration::from_millis(1500));
    let im_args = [
        "-sf",
        "uac-message.xml",
        "-inf",
        "csv/alice-calls-bob.csv",
        "-auth_uri",
        "bob@sip.test",
        "-set",
        "text",
        "Please call sip:carol@sip.test",
    ];
    let (im, im_log) = phone(&stack, "alice-im", 26_046, &im_args);
    let logs = logs(&stack, vec![("alice-im", im, im_log), ("alice", alice, alice_log), ("bob", bob, bob_log)]);
    let (im, bob) = (&logs[0], &logs[2]);
    assert!(at(im, "SIP/2.0 407") < at(im, "SIP/2.0 200"), "{im}");
    let message = at(bob, "MESSAGE sip:bob@");
    assert!(at(bob, "INVITE sip:bob@") < message && message < bob.rfind("BYE sip:").unwrap_or(0), "during the call: {bob}");
    assert!(bob[message..].contains("Please call sip:carol@sip.test"), "{bob}");
    let (legs, _) = stack.media_totals();
    assert_eq!(legs, 0, "legs left in the media plane");
    stack.stop();
}

#[test]
fn a_phone_asked_over_the_api_places_the_call_itself_click_to_dial_by_refer() {
    if !sipp_available() {
        return;
    }
    let api = "127.0.0.1:21269";
    let mut stack = Stack::start_with(26, true, &format!("[api]\nlisten = \"{api}\"\n"));
    register_callee(&stack, "csv/alice.csv", 26_050);
    register_callee(&stack, "csv/bob.csv", 26_053);
    // Alice's phone takes the REFER and calls bob itself (RFC 5359 §2.18); bob answers.
    let alice_args = ["-sf", "uas-refer-dial.xml", "-inf", "csv/alice-calls-bob.csv", "-auth_uri", "bob@sip.test", "-d", "1000"];
    let (alice, alice_log) = phone(&stack, "alice", 26_050, &alice_args);
    let (bob, bob_log) = phone(&stack, "bob", 26_053, &["-sf", "uas-answer.xml"]);
    std::thread::sleep(Duration::from_millis(300));
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let status = rt.block_on(async {
        use proto::control::v1::call_control_client::CallControlClient;
        let mut client = CallControlClient::connect(format!("http://{api}")).await.expect("connect to the API");
        let request = proto::control::v1::ClickToDialRequest { from: "alice".into(), to: "bob".into() };
        let status = client.click_to_dial(request).await.expect("ClickToDial").into_inner().status;
        // A subscriber that does not exist is named as such.
        let nobody = proto::control::v1::ClickToDialRequest { from: "nobody".into(), to: "bob".into() };
        let refused = client.click_to_dial(nobody).await.expect_err("no such subscriber");
        assert_eq!(refused.code(), tonic::Code::NotFound, "{refused:?}");
        status
    });
    assert_eq!(status, 202, "alice's phone took the REFER");
    let logs = logs(&stack, vec![("alice", alice, alice_log), ("bob", bob, bob_log)]);
    let (alice, bob) = (&logs[0], &logs[1]);
    let refer = at(alice, "REFER sip:alice@");
    assert!(
        alice[refer..].contains("Refer-To: <sip:bob@sip.test>") && alice[refer..].contains("Referred-By: <sip:click-to-dial@sip.test>"),
        "{alice}"
    );
    assert!(refer < at(alice, "INVITE sip:bob@") && at(alice, "INVITE sip:bob@") < final_sipfrag_at(alice), "{alice}");
    assert!(at(bob, "INVITE sip:bob@") < at(bob, "BYE sip:") && bob.contains("From: <sip:alice@sip.test>"), "{bob}");
    let (legs, _) = stack.media_totals();
    assert_eq!(legs, 0, "legs left in the media plane");
    stack.stop();
}

/// Where the last NOTIFY (the one that ends its subscription) of a message log is.
fn final_sipfrag_at(log: &str) -> usize {
    at(log, "Subscription-State: terminated")
}

#[test]
fn a_third_party_that_learnt_a_call_from_the_dialog_package_joins_it_and_all_three_talk() {
    if !sipp_available() {
        return;
    }
    let mut stack = Stack::start(27, true);
    register_callee(&stack, "csv/bob.csv", 26_060);
    // Bob's phone echoes what it hears (sipp's -rtp_echo), so his leg carries RTP both ways.
    let (bob, bob_log) = phone(&stack, "bob", 26_060, &["-sf", "uas-answer.xml", "-rtp_echo"]);
    std::thread::sleep(Duration::from_millis(300));
    // Alice calls bob (RTP for 10 s once answered); once they talk, carol watches bob's dialogs,
    // joins the call with Join (RFC 5359 §2.11), talks for 5 s and leaves; alice and bob go on.
    let alice_args = ["-sf", "uac-call.xml", "-inf", "csv/alice-calls-bob.csv", "-auth_uri", "bob@sip.test", "-d", "10000"];
    let (alice, alice_log) = phone(&stack, "alice", 26_063, &alice_args);
    until(&stack, "alice and bob talking", |legs| legs.len() == 2 && legs.iter().all(|&(i, o)| i > 0 && o > 0));
    let carol_args = ["-sf", "uac-join.xml", "-inf", "csv/carol-joins-bob.csv", "-auth_uri", "bob@sip.test", "-d", "5000"];
    let (carol, carol_log) = phone(&stack, "carol", 26_066, &carol_args);
    // Three parties in the conference: each leg takes RTP in and sends the mix out.
    until(&stack, "three legs, each with RTP in and out", |legs| legs.len() == 3 && legs.iter().all(|&(i, o)| i > 20 && o > 20));
    let logs = logs(&stack, vec![("carol", carol, carol_log), ("alice", alice, alice_log), ("bob", bob, bob_log)]);
    let (alice, bob) = (&logs[1], &logs[2]);
    // Nobody was re-INVITEd: the media plane moved the legs.
    assert!(!alice[at(alice, "SIP/2.0 200")..].contains("INVITE sip:alice@"), "{alice}");
    assert_eq!(bob.matches("INVITE sip:bob@").count(), 1, "{bob}");
    let (legs, _) = stack.media_totals();
    assert_eq!(legs, 0, "legs left in the media plane");
    stack.stop();
}

#[test]
fn a_caller_holds_its_callee_calls_a_third_party_meanwhile_and_takes_the_callee_back() {
    if !sipp_available() {
        return;
    }
    let mut stack = Stack::start(28, true);
    register_callee(&stack, "csv/bob.csv", 26_070);
    register_callee(&stack, "csv/carol.csv", 26_073);
    let (bob, bob_log) = phone(&stack, "bob", 26_070, &["-sf", "uas-answer-hold.xml", "-set", "rtp_port", "27099"]);
    let (carol, carol_log) = phone(&stack, "carol", 26_073, &["-sf", "uas-answer.xml"]);
    std::thread::sleep(Duration::from_millis(300));
    // Alice calls bob, holds him for 3 s (RFC 5359 §2.2, consultation hold) and calls carol
    // meanwhile from her other line, then takes bob back and hangs up.
    let hold_args = ["-sf", "uac-call-hold.xml", "-inf", "csv/alice-calls-bob.csv", "-auth_uri", "bob@sip.test", "-d", "3000"];
    let (alice, alice_log) = phone(&stack, "alice", 26_076, &hold_args);
    std::thread::sleep(Duration::from_millis(1800));
    let consult_args = ["-sf", "uac-call-short.xml", "-inf", "csv/alice-calls-carol.csv", "-auth_uri", "carol@sip.test", "-d", "500"];
    let (consult, consult_log) = phone(&stack, "alice-2", 26_079, &consult_args);
    let logs = logs(
        &stack,
        vec![("alice-2", consult, consult_log), ("alice", alice, alice_log), ("bob", bob, bob_log), ("carol", carol, carol_log)],
    );
    let (bob, carol) = (&logs[2], &logs[3]);
    // Bob got the hold re-INVITE, then carol was called, then bob got the resume.
    let held = when(bob, "a=sendonly", 0.0);
    let consulted = when(carol, "INVITE sip:carol@", 0.0);
    let resumed = when(bob, "a=sendrecv", held);
    assert!(held < consulted && consulted < resumed, "hold {held}, consultation {consulted}, resume {resumed}");
    let (legs, _) = stack.media_totals();
    assert_eq!(legs, 0, "legs left in the media plane");
    stack.stop();
}

/// Waits (up to 10 s) until the media plane's legs, (RTP in, RTP out) each, satisfy `ok`.
fn until(stack: &Stack, what: &str, ok: impl Fn(&[(u64, u64)]) -> bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let legs = stack.media_legs();
        if ok(&legs) {
            return;
        }
        assert!(std::time::Instant::now() < deadline, "not {what} within 10 s: {legs:?}; log: {}", stack.log());
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// When (seconds of the day) the first message of a sipp message log that contains `needle`
/// (and, with `after`, comes after that time) was sent or received.
fn when(log: &str, needle: &str, after: f64) -> f64 {
    let mut blocks = log.split("-----------------------------------------------").skip(1);
    blocks
        .find_map(|block| {
            let stamp = block.split_whitespace().nth(1)?;
            let mut hms = stamp.split(':').map(|p| p.parse::<f64>().ok());
            let t = hms.next()?? * 3600.0 + hms.next()?? * 60.0 + hms.next()??;
            (t > after && block.contains(needle)).then_some(t)
        })
        .unwrap_or_else(|| panic!("{needle:?} not in the message log:\n{log}"))
}

/// The words of the file a sipp scenario writes (waited for up to 10 s).
fn written(path: &std::path::Path) -> Vec<String> {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        if text.ends_with('\n') {
            return text.split_whitespace().map(str::to_owned).collect();
        }
        assert!(std::time::Instant::now() < deadline, "{} was not written", path.display());
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn an_attended_transfer_joins_the_caller_to_the_party_the_callee_consulted() {
    if !sipp_available() {
        return;
    }
    let mut stack = Stack::start(29, true);
    register_callee(&stack, "csv/bob.csv", 26_110);
    register_callee(&stack, "csv/carol.csv", 26_113);
    let (call1, call2) = (stack.dir.join("call1.txt"), stack.dir.join("call2.txt"));
    let (c1, c2) = (call1.to_str().expect("utf8").to_owned(), call2.to_str().expect("utf8").to_owned());
    // Alice calls bob; bob's phone writes the dialog down (for its REFER) and waits.
    let (bob, bob_log) = phone(&stack, "bob", 26_110, &["-sf", "uas-answer-transferor.xml", "-set", "dialog_file", &c1]);
    let (carol, carol_log) = phone(&stack, "carol", 26_113, &["-sf", "uas-answer.xml", "-rtp_echo"]);
    std::thread::sleep(Duration::from_millis(300));
    let alice_args = ["-sf", "uac-call-transferred.xml", "-inf", "csv/alice-calls-bob.csv", "-auth_uri", "bob@sip.test", "-d", "8000"];
    let (alice, alice_log) = phone(&stack, "alice", 26_116, &alice_args);
    let first = written(&call1);
    // Bob consults carol from his other line (and hangs that line up some seconds later, as phones
    // do once the transfer is done: the server answers for the dialog it replaced).
    let consult_args = [
        "-sf",
        "uac-consult.xml",
        "-inf",
        "csv/bob-calls-carol.csv",
        "-auth_uri",
        "carol@sip.test",
        "-cid_str",
        "consult-5",
        "-set",
        "dialog_file",
        &c2,
        "-d",
        "5000",
    ];
    let (consult, consult_log) = phone(&stack, "bob-consult", 26_119, &consult_args);
    let second = written(&call2);
    // Bob transfers alice to carol, replacing his consultation call (RFC 5359 §2.5).
    let (cid1, ours1, theirs1, server) = (&first[0], &first[1], &first[2], &first[3]);
    let (cid2, ours2, theirs2) = (&second[0], &second[1], &second[2]);
    let refer_args = [
        "-sf",
        "uac-refer-replaces.xml",
        "-cid_str",
        cid1,
        "-set",
        "ours",
        ours1,
        "-set",
        "theirs",
        theirs1,
        "-set",
        "server",
        server,
        "-set",
        "target",
        "sip:carol@sip.test",
        "-set",
        "rcid",
        cid2,
        "-set",
        "rours",
        ours2,
        "-set",
        "rtheirs",
        theirs2,
    ];
    let (refer, refer_log) = phone(&stack, "bob-refer", 26_122, &refer_args);
    let logs = logs(
        &stack,
        vec![
            ("bob-refer", refer, refer_log),
            ("bob", bob, bob_log),
            ("bob-consult", consult, consult_log),
            ("alice", alice, alice_log),
            ("carol", carol, carol_log),
        ],
    );
    let (bob, carol) = (&logs[1], &logs[4]);
    assert!(final_sipfrag(bob, at(bob, "SIP/2.0 100 Trying")).starts_with("SIP/2.0 200 OK"), "{bob}");
    // Carol was not called again: her legs were joined to alice's (alice's scenario got the
    // re-INVITE, and carol the BYE when alice hung up).
    assert_eq!(carol.matches("INVITE sip:carol@").count(), 1, "{carol}");
    let (legs, _) = stack.media_totals();
    assert_eq!(legs, 0, "legs left in the media plane");
    stack.stop();
}
