//! The callback engine through the real binaries: a control plane and a media plane, sipp as the
//! customer and the destination behind two trunks (and as the PSTN's missed call), the test itself as the customer's phone's
//! media (it hears the prompt, keys in the destination as RFC 4733 events and hears the
//! destination's audio through the bridge), the HTTP triggers, the CDRs and the balance; and the
//! customer's web page in headless Chromium.
//!
//! sipp is required when `REQUIRE_SIPP=1`, Chromium when `REQUIRE_BROWSER=1` (CI); without
//! them the tests skip with a message. Slot 21 (SIP 21210, gRPC 21215, RTP 24100-24199); sipp on
//! 26110/26120 (media 27110/27120), the customer's media on 26200, HTTP on 26300; slot 22 and
//! 26400+ for the browser test; slot 24 and 26510-26550 (media 27510+) for the missed call.

use std::io::{Read, Write};
use std::net::{TcpStream, UdpSocket};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

mod common;
use common::stack::{sipp, sipp_available, spawn_sipp, wait_bounded, Stack};
use common::{Proc, BIN};

const TOKEN: &str = "callback-test-token-0123";
const RATES: &str = "prefix,per_minute,connect_fee,initial,increment,period,description\n\
                     49301,0.60,0,1,1,,Customers\n49302,1.20,0,1,1,,Destinations\n";

fn prompts_available() -> bool {
    let found = common::repo_root().join("prompts/enter-number.wav").exists();
    if !found {
        assert!(std::env::var("REQUIRE_PROMPTS").as_deref() != Ok("1"), "REQUIRE_PROMPTS=1 but prompts/ is not rendered");
        eprintln!("SKIP: prompts/ is not rendered (bash scripts/make-prompts.sh)");
    }
    found
}

/// A stack in `slot` whose trunks reach the customers (0049301…) at `customer` and the
/// destinations (0049302…) at `destination`, billing with [`RATES`], callbacks over HTTP at
/// `http`; account `acme` (PIN 2468) holds 5.00.
fn stack(slot: u16, customer: u16, destination: u16, http: u16) -> Stack {
    stack_with(slot, customer, destination, http, "", "")
}

/// [`stack`] with `sip` lines in `[sip]` and `callback` lines in `[callback]`.
fn stack_with(slot: u16, customer: u16, destination: u16, http: u16, sip: &str, callback: &str) -> Stack {
    let rates = std::env::temp_dir().join(format!("cb-rates-{}-{slot}.csv", std::process::id()));
    std::fs::write(&rates, RATES).expect("rates");
    let stack = Stack::start_config(
        slot,
        true,
        sip,
        &format!(
            "[[route]]\nprefix = \"0049301\"\ndestination = \"sip:127.0.0.1:{customer}\"\n\
             [[route]]\nprefix = \"0049302\"\ndestination = \"sip:127.0.0.1:{destination}\"\n\
             [billing]\nrates = \"{}\"\nnode = \"cp-callback-test\"\nwarning_s = 0\n\
             [callback]\nlisten = \"127.0.0.1:{http}\"\napi_tokens = [\"{TOKEN}\"]\nfirst_digit_s = 20\nnext_digit_s = 3\nmax_per_account = 3\n{callback}",
            rates.display()
        ),
    );
    let out = cli(&stack, &["account", "add", "acme", "--kind", "prepaid", "--balance", "5.00", "pin=2468"]);
    assert!(out.contains("acme prepaid balance 5.000000"), "{out}");
    stack
}

fn cli(stack: &Stack, args: &[&str]) -> String {
    let out = Command::new(BIN).args(["--config", stack.config.to_str().expect("utf8")]).args(args).output().expect("run control-plane");
    assert!(out.status.success(), "control-plane {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// One HTTP/1.1 request to 127.0.0.1:`port`: status and JSON body.
fn http(port: u16, method: &str, path: &str, token: Option<&str>, body: &str) -> (u16, serde_json::Value) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect to the callback endpoint");
    s.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
    let auth = token.map(|t| format!("Authorization: Bearer {t}\r\n")).unwrap_or_default();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .expect("send");
    let mut text = String::new();
    s.read_to_string(&mut text).expect("read");
    let status = text.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or_default();
    (status, serde_json::from_str(body).unwrap_or(serde_json::Value::Null))
}

/// The customer's phone's media: waits for the media plane's first packet (the prompt), then
/// sends 20 ms PCMU packets, keys in `digits` as RFC 4733 events (payload type 101) and counts
/// what it receives, and what after `connected` is set. Bounded to `limit`.
fn customer_media(
    socket: UdpSocket,
    digits: &'static str,
    connected: Arc<AtomicBool>,
    after: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    limit: Duration,
) -> std::thread::JoinHandle<u64> {
    std::thread::spawn(move || {
        socket.set_read_timeout(Some(Duration::from_millis(5))).expect("timeout");
        let start = Instant::now();
        let mut buf = [0u8; 2048];
        let mut received = 0u64;
        let mut peer = None;
        while peer.is_none() && start.elapsed() < limit {
            if let Ok((_, from)) = socket.recv_from(&mut buf) {
                peer = Some(from);
                received += 1;
            }
        }
        let Some(peer) = peer else { return 0 };
        let (mut seq, mut ts) = (1u16, 160u32);
        let packet = |seq: u16, ts: u32, pt: u8, marker: bool, payload: &[u8]| {
            let mut p = vec![0x80, pt | if marker { 0x80 } else { 0 }];
            p.extend_from_slice(&seq.to_be_bytes());
            p.extend_from_slice(&ts.to_be_bytes());
            p.extend_from_slice(&0x5eed_0001u32.to_be_bytes());
            p.extend_from_slice(payload);
            p
        };
        // What to send, one entry per 20 ms: audio, or an event packet.
        let mut plan: Vec<Vec<u8>> = Vec::new();
        let silence = [0xffu8; 160];
        for _ in 0..50 {
            plan.push(packet(seq, ts, 0, false, &silence));
            seq = seq.wrapping_add(1);
            ts = ts.wrapping_add(160);
        }
        for d in digits.chars() {
            let code = match d {
                '*' => 10,
                '#' => 11,
                d => d.to_digit(10).expect("digit") as u8,
            };
            // 100 ms of event (five packets), three end packets, then 100 ms of audio.
            for i in 1..=8u16 {
                let end = i > 5;
                let duration = 160 * i.min(5);
                let payload = [code, if end { 0x80 } else { 0 } | 10, (duration >> 8) as u8, duration as u8];
                plan.push(packet(seq, ts, 101, i == 1, &payload));
                seq = seq.wrapping_add(1);
            }
            ts = ts.wrapping_add(160 * 5);
            for _ in 0..5 {
                plan.push(packet(seq, ts, 0, false, &silence));
                seq = seq.wrapping_add(1);
                ts = ts.wrapping_add(160);
            }
        }
        let mut next = Instant::now();
        let mut i = 0usize;
        while start.elapsed() < limit && !stop.load(Ordering::Relaxed) {
            if Instant::now() >= next {
                let p = plan
                    .get(i)
                    .cloned()
                    .unwrap_or_else(|| packet(seq.wrapping_add(i as u16), ts.wrapping_add(160 * i as u32), 0, false, &silence));
                let _ = socket.send_to(&p, peer);
                i += 1;
                next += Duration::from_millis(20);
            }
            if socket.recv_from(&mut buf).is_ok() {
                received += 1;
                if connected.load(Ordering::Relaxed) {
                    after.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        received
    })
}

/// A callback's status over the API.
fn status(port: u16, id: u64) -> serde_json::Value {
    let (code, body) = http(port, "GET", &format!("/api/callback/{id}"), Some(TOKEN), "");
    assert_eq!(code, 200, "{body}");
    body
}

/// The customer (sipp behind the 0049301 trunk at `customer`, its media the test's socket on
/// `rtp`, keying in 0049302555#) and the destination (sipp streaming audio at `destination`).
struct Parties {
    customer: Proc,
    customer_log: std::path::PathBuf,
    destination: Proc,
    phone: std::thread::JoinHandle<u64>,
    connected: Arc<AtomicBool>,
    after: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
}

fn parties(stack: &Stack, customer: u16, destination: u16, rtp: u16) -> Parties {
    let customer_log = stack.dir.join("customer.log");
    let (c, cm, r) = (customer.to_string(), (customer + 1000).to_string(), rtp.to_string());
    let args = ["-sf", "uas-callback-customer.xml", "-p", &c, "-mp", &cm, "-m", "1", "-set", "rtp_port", &r, "-trace_msg", "-message_file"];
    let mut args: Vec<&str> = args.to_vec();
    args.push(customer_log.to_str().expect("utf8"));
    let customer = Proc { child: spawn_sipp(stack, &args), name: "sipp customer" };
    let (d, dm) = (destination.to_string(), (destination + 1000).to_string());
    let destination =
        Proc { child: spawn_sipp(stack, &["-sf", "uas-answer-stream.xml", "-p", &d, "-mp", &dm, "-m", "1"]), name: "sipp destination" };
    std::thread::sleep(Duration::from_millis(300));
    let media = UdpSocket::bind(("127.0.0.1", rtp)).expect("bind the customer's media port");
    let (connected, after, stop) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicU64::new(0)), Arc::new(AtomicBool::new(false)));
    let phone = customer_media(media, "0049302555#", connected.clone(), after.clone(), stop.clone(), Duration::from_secs(40));
    Parties { customer, customer_log, destination, phone, connected, after, stop }
}

/// Follows callback `id` over the API until it is done: its last status and the phases seen.
fn follow(http_port: u16, id: u64, connected: &AtomicBool) -> (serde_json::Value, Vec<String>) {
    let deadline = Instant::now() + Duration::from_secs(40);
    let mut phases: Vec<String> = Vec::new();
    loop {
        let s = status(http_port, id);
        let phase = s["phase"].as_str().unwrap_or_default().to_owned();
        if phases.last() != Some(&phase) {
            phases.push(phase.clone());
        }
        if phase == "connected" {
            connected.store(true, Ordering::Relaxed);
        }
        if phase == "done" || Instant::now() > deadline {
            return (s, phases);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Callback `id` completed as the customer keyed it: the phases, both parties' scenarios, the
/// audio the customer heard, both legs' CDRs and the balance (5.00 less their cost), no leg left.
fn completed(mut stack: Stack, mut p: Parties, id: u64, http_port: u16) {
    let (last, phases) = follow(http_port, id, &p.connected);
    assert_eq!(last["result"], "completed", "{last}; phases {phases:?}; log: {}", stack.log());
    assert_eq!(last["b"], "0049302555", "the destination keyed in: {last}");
    // (calling-customer and calling-destination last as long as they ring: sipp answers at once.)
    for phase in ["collecting-destination", "connected", "done"] {
        assert!(phases.iter().any(|x| x == phase), "phase {phase} not seen: {phases:?}");
    }
    assert!(
        wait_bounded(&mut p.customer.child, Duration::from_secs(20)).success(),
        "customer: {}",
        std::fs::read_to_string(&p.customer_log).unwrap_or_default()
    );
    assert!(wait_bounded(&mut p.destination.child, Duration::from_secs(20)).success(), "the destination's scenario failed");
    p.stop.store(true, Ordering::Relaxed);
    let heard = p.phone.join().expect("customer media");
    let talked = p.after.load(Ordering::Relaxed);
    // The prompt before, the destination's audio after the connection (4 s of talk: 200
    // packets; allow for the start and the end).
    assert!(heard > 100, "the customer heard {heard} packets");
    assert!(talked > 100, "the customer heard {talked} packets of the destination");
    // Both legs rated and charged: the customer's from its answer, the destination's from its.
    let cdrs = cli(&stack, &["cdr", "export"]);
    let row = |leg: &str, destination: &str| -> Vec<String> {
        cdrs.lines()
            .map(|l| l.split(',').map(str::to_owned).collect::<Vec<_>>())
            .find(|f| f.get(2).map(String::as_str) == Some(leg) && f.get(5).map(String::as_str) == Some(destination))
            .unwrap_or_else(|| panic!("no {leg} record for {destination}:\n{cdrs}"))
    };
    let amount = |f: &[String]| -> f64 { f[12].parse().expect("cost") };
    let (a, b) = (row("a", "0049301111"), row("b", "0049302555"));
    assert!(amount(&a) > 0.0 && amount(&b) > 0.0, "{cdrs}");
    let total: f64 = cdrs
        .lines()
        .filter(|l| l.split(',').nth(2) == Some("call"))
        .map(|l| l.split(',').nth(12).and_then(|c| c.parse::<f64>().ok()).unwrap_or(0.0))
        .sum();
    assert!((total - amount(&a) - amount(&b)).abs() < 1e-9, "{cdrs}");
    let shown = cli(&stack, &["account", "show", "acme"]);
    let balance: f64 = shown.split_whitespace().nth(3).and_then(|b| b.parse().ok()).expect("balance");
    assert!((balance - (5.0 - total)).abs() < 1e-9, "{shown} after {total}");
    assert!(shown.contains("held 0.000000 calls 0"), "{shown}");
    let (legs, _) = stack.media_totals();
    assert_eq!(legs, 0, "legs left in the media plane");
    stack.stop();
}

#[test]
fn a_web_callback_asks_the_customer_for_the_destination_bridges_them_with_audio_and_bills_both_legs() {
    if !sipp_available() || !prompts_available() {
        return;
    }
    let stack = stack(21, 26_110, 26_120, 26_300);
    let parties = parties(&stack, 26_110, 26_120, 26_200);
    // Bad requests are refused naming the field; a wrong PIN gets 403, a wrong token 401.
    let (code, body) = http(26_300, "POST", "/web/callback", None, r#"{"account":"acme","pin":"2468"}"#);
    assert_eq!((code, body["field"].as_str()), (400, Some("a")), "{body}");
    let (code, _) = http(26_300, "POST", "/web/callback", None, r#"{"account":"acme","pin":"0000","a":"0049301111"}"#);
    assert_eq!(code, 403);
    let (code, _) = http(26_300, "POST", "/api/callback", Some("wrong-token-000000000"), r#"{"account":"acme","a":"0049301111"}"#);
    assert_eq!(code, 401);
    // The customer asks to be called back, without saying whom to call.
    let (code, body) = http(26_300, "POST", "/web/callback", None, r#"{"account":"acme","pin":"2468","a":"0049301111"}"#);
    assert_eq!(code, 202, "{body}");
    completed(stack, parties, body["id"].as_u64().expect("id"), 26_300);
}

#[test]
fn a_missed_call_to_the_access_number_is_declined_and_called_back_through_the_ivr() {
    if !sipp_available() || !prompts_available() {
        return;
    }
    // The PSTN trunk (127.0.0.1 here) is trusted; the customer's caller ID is its account's.
    let stack = stack_with(
        24,
        26_510,
        26_530,
        26_540,
        "trusted = [\"127.0.0.1\"]\n",
        "[[callback.did]]\nnumber = \"4930555000\"\nmode = \"missed-call\"\ndelay_s = 1\n",
    );
    cli(&stack, &["account", "set", "acme", "ani=0049301111"]);
    let parties = parties(&stack, 26_510, 26_530, 26_520);
    let ok = sipp(
        &stack,
        &["-sf", "uac-missed-call.xml", "-s", "4930555000", "-set", "ani", "0049301111", "-p", "26550", "-mp", "27550", "-m", "1"],
        Duration::from_secs(20),
    );
    assert!(ok.success(), "the missed call was not declined with 603; log: {}", stack.log());
    completed(stack, parties, 1, 26_540);
}

fn chromium() -> Option<&'static str> {
    let found = ["chromium", "chromium-browser"]
        .into_iter()
        .find(|b| Command::new(b).arg("--version").stdout(Stdio::null()).stderr(Stdio::null()).status().is_ok_and(|s| s.success()));
    if found.is_none() {
        assert!(std::env::var("REQUIRE_BROWSER").as_deref() != Ok("1"), "REQUIRE_BROWSER=1 but Chromium is not installed");
        eprintln!("SKIP: Chromium is not installed (apt-get install chromium, or SETUP_BROWSER=1 bash scripts/setup.sh)");
    }
    found
}

/// Runs headless Chromium on `url` with `what` (`--dump-dom`, `--screenshot=…`): its stdout.
fn browse(browser: &str, profile: &std::path::Path, url: &str, what: &str) -> String {
    let out = Command::new(browser)
        .args(["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking"])
        .args(["--disable-component-update", "--disable-sync", "--window-size=640,900", "--virtual-time-budget=6000"])
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg(what)
        .arg(url)
        .output()
        .expect("run chromium");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn the_web_page_shows_the_form_and_the_callbacks_progress_in_a_browser() {
    if !sipp_available() {
        return;
    }
    let Some(browser) = chromium() else { return };
    let stack = stack_with(22, 26_410, 26_420, 26_400, "", "[[callback.did]]\nnumber = \"4930555000\"\nmode = \"missed-call\"\n");
    // The customer's phone rings and is not answered while the page watches.
    let _customer =
        Proc { child: spawn_sipp(&stack, &["-sf", "uas-noanswer.xml", "-p", "26410", "-mp", "27410", "-m", "2"]), name: "sipp customer" };
    std::thread::sleep(Duration::from_millis(300));
    let profile = stack.dir.join("chromium");
    let url = "http://127.0.0.1:26400/#account=acme&pin=2468&a=0049301111&b=0049302555&go=1";
    // The page sends the callback and shows its progress: the customer's phone rings.
    let shot = stack.dir.join("callback-page.png");
    browse(browser, &profile, url, &format!("--screenshot={}", shot.display()));
    let png = std::fs::read(&shot).expect("screenshot written");
    assert!(png.len() > 10_000 && png.starts_with(b"\x89PNG"), "a PNG of the page ({} bytes)", png.len());
    // SAVE_SCREENSHOT=docs/callback-page.png refreshes the README's picture.
    if let Ok(path) = std::env::var("SAVE_SCREENSHOT") {
        std::fs::copy(&shot, common::repo_root().join(path)).expect("save the screenshot");
    }
    assert_eq!(status(26_400, 1)["phase"], "calling-customer");
    // Again, read as text: the form, and a second callback refused (the first holds what the
    // balance buys), as the page says.
    let dom = browse(browser, &profile, url, "--dump-dom");
    assert!(dom.contains("<form id=\"f\">") && dom.contains("Their number"), "{dom}");
    assert!(dom.contains("Callback 2: Done — refused: Payment Required"), "the progress line: {dom}");
    assert_eq!(status(26_400, 2)["result"], "refused: Payment Required");
    // The webhook over HTTP: a token is needed, the text must say something, and a message
    // from the customer's number starts a callback (refused here too: the first holds it all).
    cli(&stack, &["account", "set", "acme", "ani=0049301111"]);
    let hook = r#"{"from":"0049301111","text":"4930555000#0049302555"}"#;
    assert_eq!(http(26_400, "POST", "/api/webhook", None, hook).0, 401);
    let (code, body) = http(26_400, "POST", "/api/webhook", Some(TOKEN), r#"{"from":"0049301111","text":"call me"}"#);
    assert_eq!((code, body["field"].as_str()), (400, Some("text")), "{body}");
    let (code, body) = http(26_400, "POST", "/api/webhook", Some(TOKEN), hook);
    assert_eq!(code, 202, "{body}");
    let id = body["id"].as_u64().expect("id");
    assert_eq!((status(26_400, id)["trigger"].as_str(), status(26_400, id)["b"].as_str()), (Some("webhook"), Some("0049302555")));
}
