//! The call routing services of RFC 5359 through the real binaries, with sipp on every side:
//! forking (parallel, sequential), call forwarding (unconditional, busy, no answer), redirects
//! (3xx), find-me, incoming and outgoing screening, the operator's app-else-PSTN fallback, and
//! delayed offer.
//! Each test checks the order of the messages the flow of the RFC shows (from sipp's message
//! logs), the headers the forwarded INVITE carries, and that the media plane is left with no
//! legs. docs/call-services.md maps each flow to its scenario and test.
//!
//! sipp is required when `REQUIRE_SIPP=1` (CI); without it the tests skip with a message.
//! Slots 8-19 (SIP 21080+, the media plane's RTP 22800+, sipp 24080+ and its media 25080+) keep
//! them apart from tests/sip.rs.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

mod common;
use common::stack::{register_callee, settings, sipp, sipp_available, spawn_sipp, wait_bounded, Stack};
use common::{Proc, BIN};

/// A sipp callee (`scenario`) on `port` logging its messages to `name`.log. Its media port is
/// `port + 1000`: sipp binds that port and the one two above it, which must not be another
/// sipp's SIP port.
fn callee(stack: &Stack, scenario: &str, port: u16, name: &str, extra: &[&str]) -> (Proc, PathBuf) {
    let log = stack.dir.join(format!("{name}.log"));
    let (p, mp) = (port.to_string(), (port + 1000).to_string());
    let mut args = vec!["-sf", scenario, "-p", &p, "-mp", &mp, "-m", "1", "-trace_msg", "-message_file", log.to_str().expect("utf8")];
    args.extend_from_slice(extra);
    let child = Proc { child: spawn_sipp(stack, &args), name: "sipp" };
    std::thread::sleep(Duration::from_millis(300));
    (child, log)
}

/// alice calls `callee` with `scenario` from `port`; returns whether sipp passed and its message log.
fn call(stack: &Stack, scenario: &str, callee: &str, port: u16, extra: &[&str]) -> (bool, String) {
    let log = stack.dir.join(format!("caller-{port}.log"));
    let (csv, auth) = (format!("csv/alice-calls-{callee}.csv"), format!("{callee}@sip.test"));
    let (p, mp) = (port.to_string(), (port + 1000).to_string());
    let mut args = vec!["-sf", scenario, "-inf", &csv, "-auth_uri", &auth, "-p", &p, "-mp", &mp, "-m", "1"];
    args.extend_from_slice(&["-trace_msg", "-message_file", log.to_str().expect("utf8")]);
    args.extend_from_slice(extra);
    let status = sipp(stack, &args, Duration::from_secs(40));
    (status.success(), std::fs::read_to_string(&log).unwrap_or_default())
}

/// The messages of a sipp message log (`-trace_msg`), one per entry between its dashed lines.
fn sipp_messages(log: &str) -> Vec<String> {
    log.split("----------").map(|m| m.trim().to_owned()).collect()
}

/// Where `needle` first appears in `log` (panics naming it when it does not).
fn at(log: &str, needle: &str) -> usize {
    log.find(needle).unwrap_or_else(|| panic!("{needle:?} not in the message log:\n{log}"))
}

/// Waits for the callees, checks that no leg is left, stops the control plane and returns its
/// counters (the stack's files stay until it is dropped).
fn finish(stack: &mut Stack, callees: Vec<Proc>) -> String {
    for mut c in callees {
        assert!(wait_bounded(&mut c.child, Duration::from_secs(20)).success(), "a callee's scenario failed; log: {}", stack.log());
    }
    let (legs, _) = stack.media_totals();
    assert_eq!(legs, 0, "legs left in the media plane");
    stack.stop()
}

#[test]
fn parallel_forking_rings_both_contacts_and_cancels_the_one_that_did_not_answer() {
    if !sipp_available() {
        return;
    }
    let mut stack = Stack::start(10, true);
    register_callee(&stack, "csv/bob.csv", 24_100);
    register_callee(&stack, "csv/bob.csv", 24_103);
    let (answers, _) = callee(&stack, "uas-answer.xml", 24_100, "bob-1", &["-d", "300"]);
    let (rings, rings_log) = callee(&stack, "uas-noanswer.xml", 24_103, "bob-2", &[]);
    let (ok, log) = call(&stack, "uac-call-short.xml", "bob", 24_106, &[]);
    assert!(ok, "caller failed; log: {}", stack.log());
    assert!(at(&log, "SIP/2.0 180") < at(&log, "SIP/2.0 200"));
    let counters = finish(&mut stack, vec![answers, rings]);
    let rings_log = std::fs::read_to_string(rings_log).unwrap_or_default();
    assert!(at(&rings_log, "INVITE sip:bob@") < at(&rings_log, "CANCEL sip:bob@"), "{rings_log}");
    assert!(counters.contains("\"calls_completed\":1"), "{counters}");
}

#[test]
fn sequential_forking_tries_the_best_q_contact_first_and_moves_on_when_it_is_busy() {
    if !sipp_available() {
        return;
    }
    let mut stack = Stack::start_with(11, true, "[routing]\nfork = \"sequential\"\n");
    for (port, q) in [(24_110, "1.0"), (24_113, "0.5")] {
        let p = port.to_string();
        let status = sipp(
            &stack,
            &["-sf", "register-q.xml", "-inf", "csv/bob.csv", "-auth_uri", "sip.test", "-set", "q", q, "-p", &p, "-m", "1"],
            Duration::from_secs(20),
        );
        assert!(status.success(), "register-q.xml q={q}");
    }
    let (busy, busy_log) = callee(&stack, "uas-busy.xml", 24_110, "bob-busy", &[]);
    let (answers, answer_log) = callee(&stack, "uas-answer.xml", 24_113, "bob-answers", &[]);
    let (ok, log) = call(&stack, "uac-call-short.xml", "bob", 24_116, &[]);
    assert!(ok, "caller failed; log: {}", stack.log());
    assert!(!log.contains("SIP/2.0 486"), "the busy contact's answer is not the caller's");
    finish(&mut stack, vec![busy, answers]);
    let busy_log = std::fs::read_to_string(busy_log).unwrap_or_default();
    let answer_log = std::fs::read_to_string(answer_log).unwrap_or_default();
    assert!(busy_log.contains("INVITE sip:bob@") && answer_log.contains("INVITE sip:bob@"));
}

/// bob forwards to carol for `condition`; bob's phone runs `bob_scenario` (none: not rung)
/// with `bob_args`.
fn forwarded_call(slot: u16, condition: &[&str], bob_scenario: Option<&str>, bob_args: &[&str], reason: &str) -> (String, String) {
    let mut stack = Stack::start(slot, true);
    let base = 24_000 + slot * 10;
    settings(&stack, "bob", condition);
    let mut callees = Vec::new();
    if let Some(scenario) = bob_scenario {
        register_callee(&stack, "csv/bob.csv", base);
        callees.push(callee(&stack, scenario, base, "bob", bob_args).0);
    }
    register_callee(&stack, "csv/carol.csv", base + 3);
    let (carol, carol_log) = callee(&stack, "uas-answer.xml", base + 3, "carol", &[]);
    callees.push(carol);
    let (ok, log) = call(&stack, "uac-call-forwarded.xml", "bob", base + 6, &[]);
    assert!(ok, "caller failed; log: {}", stack.log());
    // RFC 5359 §2.7-2.9: 181 Call Is Being Forwarded reaches the caller before the answer.
    assert!(at(&log, "SIP/2.0 181") < at(&log, "SIP/2.0 200"), "{log}");
    finish(&mut stack, callees);
    let carol_log = std::fs::read_to_string(carol_log).unwrap_or_default();
    let diversion = format!("Diversion: <sip:bob@sip.test>;reason={reason};counter=1");
    assert!(carol_log.contains(&diversion), "{diversion:?} not in carol's INVITE:\n{carol_log}");
    assert!(carol_log.contains("History-Info: <sip:bob@sip.test>;index=1, <sip:carol@sip.test;cause="), "{carol_log}");
    (log, carol_log)
}

#[test]
fn unconditional_forwarding_rings_the_target_not_the_subscriber() {
    if !sipp_available() {
        return;
    }
    forwarded_call(12, &["forward.always=carol"], None, &[], "unconditional");
}

#[test]
fn forwarding_on_busy_rings_the_target_after_the_subscribers_486() {
    if !sipp_available() {
        return;
    }
    let (log, _) = forwarded_call(13, &["forward.busy=carol"], Some("uas-busy.xml"), &[], "user-busy");
    assert!(!log.contains("SIP/2.0 486"), "{log}");
}

#[test]
fn forwarding_on_no_answer_cancels_the_subscriber_and_rings_the_target() {
    if !sipp_available() {
        return;
    }
    let (log, _) = forwarded_call(14, &["forward.no_answer=carol", "forward.no_answer_s=2"], Some("uas-noanswer.xml"), &[], "no-answer");
    // The subscriber's own ringing came first (RFC 5359 §2.9).
    assert!(at(&log, "SIP/2.0 180") < at(&log, "SIP/2.0 181"), "{log}");
}

#[test]
fn a_redirect_from_the_callee_is_followed_to_its_contact() {
    if !sipp_available() {
        return;
    }
    // bob's own settings play no part: the redirect comes from his phone.
    forwarded_call(15, &["e164=+4930111"], Some("uas-redirect.xml"), &["-set", "target", "carol@sip.test"], "deflection");
}

#[test]
fn find_me_rings_the_list_after_the_subscribers_own_phone() {
    if !sipp_available() {
        return;
    }
    let mut stack = Stack::start(16, true);
    settings(&stack, "bob", &["find_me=carol", "find_me.branch_s=2"]);
    register_callee(&stack, "csv/bob.csv", 24_160);
    register_callee(&stack, "csv/carol.csv", 24_163);
    let (bob, bob_log) = callee(&stack, "uas-noanswer.xml", 24_160, "bob", &[]);
    let (carol, carol_log) = callee(&stack, "uas-answer.xml", 24_163, "carol", &[]);
    let (ok, _) = call(&stack, "uac-call-short.xml", "bob", 24_166, &[]);
    assert!(ok, "caller failed; log: {}", stack.log());
    finish(&mut stack, vec![bob, carol]);
    let bob_log = std::fs::read_to_string(bob_log).unwrap_or_default();
    let carol_log = std::fs::read_to_string(carol_log).unwrap_or_default();
    assert!(bob_log.contains("CANCEL sip:bob@"), "bob rang first, then was cancelled: {bob_log}");
    assert!(carol_log.contains("INVITE sip:carol@") && !carol_log.contains("Diversion:"), "find-me is not forwarding: {carol_log}");
}

#[test]
fn screening_refuses_a_listed_caller_and_a_blocked_destination() {
    if !sipp_available() {
        return;
    }
    let stack = Stack::start_with(17, false, "[[route]]\nprefix = \"00\"\ndestination = \"sip:127.0.0.1:24179\"\n");
    settings(&stack, "bob", &["screen.reject=alice"]);
    settings(&stack, "alice", &["block=0090,0049"]);
    for (callee, code, port) in [("bob", "603", 24_170), ("0049301", "403", 24_173)] {
        let (ok, log) = call(&stack, "uac-call-fail.xml", callee, port, &["-set", "expect", code]);
        assert!(ok, "alice → {callee} expected {code}: {log}");
    }
}

#[test]
fn a_screened_caller_hears_the_callees_announcement_and_is_hung_up_when_it_ends() {
    if !sipp_available() {
        return;
    }
    let mut stack = Stack::start(12, true);
    settings(&stack, "bob", &["screen.reject=alice", "screen.announcement=goodbye.wav"]);
    // alice's phone talks until the control plane hangs up (uac-call-until-bye.xml).
    let started = std::time::Instant::now();
    let (ok, log) = call(&stack, "uac-call-until-bye.xml", "bob", 24_120, &[]);
    let took = started.elapsed();
    assert!(ok, "alice's call: {log}; control plane: {}", stack.log());
    assert!(at(&log, "SIP/2.0 200") < at(&log, "BYE sip:alice@"), "answered, then hung up by us: {log}");
    // The BYE came when the announcement ended (goodbye.wav lasts 2.7 s), not before it and
    // not at the 60 s limit.
    assert!(took > Duration::from_millis(2600) && took < Duration::from_secs(20), "hung up after {took:?}");
    let counters = finish(&mut stack, Vec::new());
    assert!(counters.contains("\"calls_answered\":1,\"calls_completed\":1"), "{counters}");
}

#[test]
fn app_else_pstn_sends_an_unregistered_subscribers_call_out_to_its_number() {
    if !sipp_available() {
        return;
    }
    let mut stack = Stack::start_with(18, true, "[[route]]\nprefix = \"+\"\ndestination = \"sip:127.0.0.1:24180\"\n");
    settings(&stack, "bob", &["e164=+4930555", "pstn_fallback=true"]);
    let (trunk, trunk_log) = callee(&stack, "uas-answer.xml", 24_180, "trunk", &[]);
    let (ok, log) = call(&stack, "uac-call-forwarded.xml", "bob", 24_186, &[]);
    assert!(ok, "caller failed; log: {}", stack.log());
    assert!(at(&log, "SIP/2.0 181") < at(&log, "SIP/2.0 200"), "{log}");
    finish(&mut stack, vec![trunk]);
    let trunk_log = std::fs::read_to_string(trunk_log).unwrap_or_default();
    assert!(trunk_log.contains("INVITE sip:+4930555@127.0.0.1:24180"), "{trunk_log}");
    assert!(trunk_log.contains("Diversion: <sip:bob@sip.test>;reason=unavailable"), "{trunk_log}");
}

#[test]
fn a_delayed_offer_call_gets_the_offer_in_the_200_and_answers_in_the_ack() {
    if !sipp_available() {
        return;
    }
    let mut stack = Stack::start(19, true);
    register_callee(&stack, "csv/bob.csv", 24_190);
    let (bob, bob_log) = callee(&stack, "uas-answer.xml", 24_190, "bob", &[]);
    let (ok, log) = call(&stack, "uac-call-delayed.xml", "bob", 24_196, &[]);
    assert!(ok, "caller failed; log: {}", stack.log());
    finish(&mut stack, vec![bob]);
    let bob_log = std::fs::read_to_string(bob_log).unwrap_or_default();
    let invite = &bob_log[at(&bob_log, "INVITE sip:bob@")..];
    let invite = &invite[..invite.find("\r\n\r\n").or_else(|| invite.find("\n\n")).unwrap_or(invite.len())];
    assert!(!invite.contains("application/sdp"), "the callee gets no offer: {invite}");
    let ack = &bob_log[at(&bob_log, "ACK sip:")..];
    assert!(ack.contains("m=audio") && ack.contains("c=IN IP4 127.0.0.1"), "the callee's ACK carries the anchored answer: {ack}");
    let answer_ack = log.rfind("ACK sip:").expect("the ACK of the 200");
    assert!(at(&log, "SIP/2.0 200") < answer_ack && log[answer_ack..].contains("m=audio"), "{log}");
}

#[test]
fn a_reinvite_without_sdp_gets_the_callees_offer_anchored_in_the_200_and_the_answer_in_the_ack() {
    if !sipp_available() {
        return;
    }
    let mut stack = Stack::start(13, true);
    register_callee(&stack, "csv/bob.csv", 24_200);
    let (bob, bob_log) = callee(&stack, "uas-answer-reoffer.xml", 24_200, "bob", &[]);
    let (ok, log) = call(&stack, "uac-call-reoffer.xml", "bob", 24_206, &[]);
    assert!(ok, "caller failed; log: {}", stack.log());
    finish(&mut stack, vec![bob]);
    let bob_log = std::fs::read_to_string(bob_log).unwrap_or_default();
    // sipp's message log: one message per chunk between its dashed separator lines.
    let bob_messages = sipp_messages(&bob_log);
    let reinvite = bob_messages.iter().find(|m| m.contains("CSeq: 2 INVITE") && m.contains("INVITE sip:")).expect("the re-INVITE");
    assert!(!reinvite.contains("application/sdp"), "the callee gets no offer: {reinvite}");
    let ack = bob_messages.iter().find(|m| m.contains("CSeq: 2 ACK")).expect("the re-INVITE's ACK");
    assert!(ack.contains("m=audio") && ack.contains("c=IN IP4 127.0.0.1"), "the callee's ACK carries the anchored answer: {ack}");
    let caller_messages = sipp_messages(&log);
    let ok = caller_messages.iter().find(|m| m.contains("SIP/2.0 200") && m.contains("CSeq: 3 INVITE")).expect("the 200 to the re-INVITE");
    assert!(ok.contains("m=audio") && ok.contains("a=rtpmap:0 PCMU/8000"), "the caller's 200 carries the media plane's offer: {ok}");
    assert!(!ok.contains(&format!("m=audio {} ", 24_200 + 1000)), "with the media plane's port, not the callee's: {ok}");
}

#[test]
fn a_reliable_early_answer_is_pracked_on_both_sides_and_an_early_update_renegotiates_through_the_media_plane() {
    if !sipp_available() {
        return;
    }
    let mut stack = Stack::start(14, true);
    register_callee(&stack, "csv/bob.csv", 24_210);
    // Both scenarios check what they get: the 183's Require/RSeq and early answer, the RAck, the
    // UPDATE's offer and answer, the 200s' CSeqs.
    let (bob, bob_log) = callee(&stack, "uas-answer-100rel.xml", 24_210, "bob", &[]);
    let (ok, log) = call(&stack, "uac-call-100rel.xml", "bob", 24_216, &[]);
    assert!(ok, "caller failed; log: {}", stack.log());
    finish(&mut stack, vec![bob]);
    let bob_log = std::fs::read_to_string(bob_log).unwrap_or_default();
    let bob_messages = sipp_messages(&bob_log);
    let update = bob_messages.iter().find(|m| m.contains("\nUPDATE sip:")).expect("the UPDATE reached the callee");
    assert!(update.contains("c=IN IP4 127.0.0.1") && update.contains("CSeq: 3 UPDATE"), "anchored, after INVITE and PRACK: {update}");
    let caller_messages = sipp_messages(&log);
    let ringing = caller_messages.iter().find(|m| m.contains("SIP/2.0 183")).expect("the 183");
    assert!(!ringing.contains(&format!("m=audio {} ", 24_210 + 1000)), "the media plane's early answer, not the callee's: {ringing}");
}

// ---- the control.v1 API, driven by a Python client written from the .proto ----

fn python_has_grpc() -> Result<(), String> {
    let out = Command::new("python3")
        .args(["-c", "import grpc, grpc_tools"])
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|e| format!("cannot run python3: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        let stderr = String::from_utf8_lossy(&out.stderr);
        Err(stderr.lines().last().unwrap_or("import failed").trim().to_owned())
    }
}

#[test]
fn a_python_application_places_watches_lists_and_hangs_up_a_call_over_the_api() {
    if !sipp_available() {
        return;
    }
    if let Err(why) = python_has_grpc() {
        assert!(std::env::var("REQUIRE_PYTHON_GRPC").as_deref() != Ok("1"), "REQUIRE_PYTHON_GRPC=1 but Python gRPC is unavailable: {why}");
        eprintln!("SKIP: python3 cannot import grpc and grpc_tools ({why}): pip install grpcio grpcio-tools");
        return;
    }
    let api = "127.0.0.1:21099";
    let mut stack = Stack::start_with(9, true, &format!("[api]\nlisten = \"{api}\"\n"));
    register_callee(&stack, "csv/alice.csv", 24_090);
    register_callee(&stack, "csv/bob.csv", 24_093);
    let (alice, _) = callee(&stack, "uas-answer.xml", 24_090, "alice", &[]);
    let (bob, _) = callee(&stack, "uas-answer.xml", 24_093, "bob", &[]);
    let script = common::repo_root().join("tests/python/call_control.py");
    let mut child = Command::new("python3")
        .arg(&script)
        .args([api, "alice", "bob"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn python3");
    let status = wait_bounded(&mut child, Duration::from_secs(90));
    let output = child.wait_with_output().expect("output");
    let (stdout, stderr) = (String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    assert!(status.success(), "{} failed: {stdout}{stderr}\nlog: {}", script.display(), stack.log());
    assert!(stdout.contains("\"answered:2\""), "{stdout}");
    let counters = finish(&mut stack, vec![alice, bob]);
    assert!(counters.contains("\"calls_completed\":1"), "{counters}");
}

#[test]
fn a_blind_transfer_connects_the_caller_to_the_target_and_the_transferor_leaves() {
    if !sipp_available() {
        return;
    }
    let mut stack = Stack::start(8, true);
    register_callee(&stack, "csv/bob.csv", 24_080);
    register_callee(&stack, "csv/carol.csv", 24_083);
    let (bob, bob_log) = callee(&stack, "uas-refer.xml", 24_080, "bob", &["-set", "target", "carol@sip.test"]);
    let (carol, carol_log) = callee(&stack, "uas-answer.xml", 24_083, "carol", &[]);
    let (ok, log) = call(&stack, "uac-call-transferred.xml", "bob", 24_086, &["-d", "1000"]);
    assert!(ok, "the transferee failed: {log}\nlog: {}", stack.log());
    let counters = finish(&mut stack, vec![bob, carol]);
    let bob_log = std::fs::read_to_string(bob_log).unwrap_or_default();
    let carol_log = std::fs::read_to_string(carol_log).unwrap_or_default();
    // 202, then NOTIFY 100 Trying, then the final NOTIFY that ends the subscription.
    let trying = at(&bob_log, "SIP/2.0 100 Trying");
    assert!(at(&bob_log, "SIP/2.0 202") < trying && bob_log[trying..].contains("Subscription-State: terminated"), "{bob_log}");
    assert!(carol_log.contains("Referred-By: <sip:bob@sip.test>") && carol_log.contains("BYE sip:"), "{carol_log}");
    // The transferee's re-INVITE came after the target answered, and its BYE went to the target.
    assert!(at(&log, "INVITE sip:alice@") > at(&log, "SIP/2.0 200"), "{log}");
    assert!(counters.contains("\"calls_completed\":1"), "{counters}");
}

#[test]
fn a_call_out_through_a_trunk_leaves_rated_detail_records_exported_as_csv() {
    if !sipp_available() {
        return;
    }
    let rates = std::env::temp_dir().join(format!("cp-rates-{}.csv", std::process::id()));
    std::fs::write(
        &rates,
        "prefix,per_minute,connect_fee,initial,increment,period,description\n00,1.0,0,60,60,,Abroad\n0049,0.0600,0.0100,1,1,,Germany\n",
    )
    .expect("write rates");
    let extra = format!(
        "[[route]]\nprefix = \"00\"\ndestination = \"sip:127.0.0.1:24250\"\n[billing]\nrates = \"{}\"\ncurrency = \"EUR\"\n",
        rates.display()
    );
    let mut stack = Stack::start_with(20, true, &extra);
    let (trunk, _) = callee(&stack, "uas-answer.xml", 24_250, "trunk", &[]);
    let (ok, log) = call(&stack, "uac-call-short.xml", "0049301", 24_256, &["-d", "2000"]);
    assert!(ok, "alice → 0049301 through the trunk: {log}");
    finish(&mut stack, vec![trunk]);
    let out = Command::new(BIN).args(["--config", stack.config.to_str().expect("utf8"), "cdr", "export"]).output().expect("run cdr export");
    assert!(out.status.success(), "cdr export: {}", String::from_utf8_lossy(&out.stderr));
    let csv = String::from_utf8_lossy(&out.stdout).into_owned();
    let rows: Vec<Vec<&str>> = csv.lines().skip(1).map(|l| l.split(',').collect()).collect();
    assert_eq!(rows.iter().map(|r| r[2]).collect::<Vec<_>>(), ["call", "a", "b"], "{csv}");
    let call = &rows[0];
    // call,sip_call_id,leg,caller,callee,destination,answered_by,start,answer,end,duration_ms,billed_s,cost,currency,rate_prefix,status,cause
    // The table's 0049 and the dialled 0049… are both taken without the international prefix.
    assert_eq!((call[5], call[13], call[14], call[15], call[16]), ("0049301", "EUR", "49", "200", "completed"), "{csv}");
    assert!(call[6].contains("@127.0.0.1:24250"), "answered by the trunk: {csv}");
    let duration: u64 = call[10].parse().expect("duration");
    let billed: u64 = call[11].parse().expect("billed");
    assert!((1900..6000).contains(&duration), "about the 2 s the caller waited: {csv}");
    assert_eq!(billed, duration.div_ceil(1000), "per second (1/1): {csv}");
    // 0.01 connect + billed × 0.06/60, in millionths rounded up.
    let cost = 10_000 + (60_000 * billed).div_ceil(60);
    assert_eq!(call[12], format!("0.{cost:06}"), "{csv}");
    assert_eq!((rows[1][12], rows[2][12]), ("0.000000", call[12]), "the caller's side is not charged; the called side is");
    let _ = std::fs::remove_file(&rates);
}
