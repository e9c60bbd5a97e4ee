//! RADIUS accounting (RFC 2866) to a real FreeRADIUS (Debian `freeradius`), started by the test
//! with a minimal configuration that writes every Accounting-Request to a detail file: a sipp
//! call through both planes gives a Start and a Stop of one session, through a first server that
//! never answers (failover); with FreeRADIUS stopped, the call's CDR is still written and its
//! records are kept, then delivered late (Acct-Delay-Time) once it is back.
//!
//! sipp and FreeRADIUS are required when `REQUIRE_SIPP=1` / `REQUIRE_RADIUS=1` (CI); without
//! them the test skips with a message. Slot 23 (SIP 21230); sipp on 26610/26616 (media
//! 27610/27616); FreeRADIUS accounting on 127.0.0.1:26513, nothing on 26514. The authorisation
//! test: slot 25, FreeRADIUS on 26512 (and 26515), sipp on 26620-26636 (media 27620+).

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

mod common;
use common::stack::{register_callee, sipp, sipp_available, spawn_sipp, wait_bounded, Stack};
use common::{Proc, BIN};

const SECRET: &str = "radius-test-secret";

fn freeradius_available() -> bool {
    common::tool_available("freeradius", "-v", "REQUIRE_RADIUS", "apt-get install freeradius, or SETUP_RADIUS=1 bash scripts/setup.sh")
}

/// FreeRADIUS in the foreground with a configuration of its own in `dir`: one client
/// (127.0.0.1, [`SECRET`]), accounting on 127.0.0.1:`acct_port` written to `dir/detail`, and
/// authorisation on 127.0.0.1:`auth_port` from `dir/users`: alice may call anything but 0049301999,
/// for 3 s at most.
fn start_freeradius(dir: &Path, acct_port: u16, auth_port: u16) -> Proc {
    let d = dir.display();
    std::fs::write(
        dir.join("users"),
        "\"alice@sip.test\" Called-Station-Id == \"0049301999\", Auth-Type := Reject\n\n\
         \"alice@sip.test\" Auth-Type := Accept\n\tSession-Timeout = 3\n",
    )
    .expect("users");
    std::fs::write(
        dir.join("radiusd.conf"),
        format!(
            "prefix = /usr\nexec_prefix = /usr\nsysconfdir = /etc\nlocalstatedir = {d}\nsbindir = /usr/sbin\nlogdir = {d}\n\
             raddbdir = {d}\nradacctdir = {d}\nname = freeradius\nconfdir = {d}\nmodconfdir = {d}\nrun_dir = {d}\ndb_dir = {d}\n\
             libdir = /usr/lib/freeradius\npidfile = {d}/radiusd.pid\nmax_request_time = 30\ncleanup_delay = 5\nmax_requests = 1024\n\
             hostname_lookups = no\nlog {{\n destination = stdout\n}}\nsecurity {{\n allow_core_dumps = no\n}}\n\
             thread pool {{\n start_servers = 1\n max_servers = 2\n min_spare_servers = 1\n max_spare_servers = 2\n}}\n\
             client local {{\n ipaddr = 127.0.0.1\n secret = {SECRET}\n}}\n\
             modules {{\n files {{\n  filename = {d}/users\n }}\n detail {{\n  filename = {d}/detail\n  header = \"%t\"\n  permissions = 0600\n }}\n}}\n\
             server default {{\n listen {{\n  type = acct\n  ipaddr = 127.0.0.1\n  port = {acct_port}\n }}\n\
             listen {{\n  type = auth\n  ipaddr = 127.0.0.1\n  port = {auth_port}\n }}\n\
             authorize {{\n  files\n }}\n authenticate {{\n }}\n accounting {{\n  detail\n }}\n}}\n"
        ),
    )
    .expect("write radiusd.conf");
    let log = std::fs::File::create(dir.join("freeradius.log")).expect("log");
    let child = Command::new("freeradius")
        .args(["-f", "-l", "stdout", "-d"])
        .arg(dir)
        .stdout(log)
        .stderr(Stdio::null())
        .spawn()
        .expect("start freeradius");
    let p = Proc { child, name: "freeradius" };
    let deadline = Instant::now() + Duration::from_secs(10);
    while !std::fs::read_to_string(dir.join("freeradius.log")).unwrap_or_default().contains("Ready to process requests") {
        assert!(
            Instant::now() < deadline,
            "FreeRADIUS did not start: {}",
            std::fs::read_to_string(dir.join("freeradius.log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    p
}

/// alice calls bob (sipp on both sides, 2 s of RTP); whether sipp passed.
fn call(stack: &Stack) -> bool {
    let mut bob = Proc {
        child: spawn_sipp(stack, &["-sf", "uas-answer.xml", "-p", "26610", "-mp", "27610", "-m", "1", "-rtp_echo"]),
        name: "sipp bob",
    };
    std::thread::sleep(Duration::from_millis(300));
    let ok = sipp(
        stack,
        &[
            "-sf",
            "uac-call.xml",
            "-inf",
            "csv/alice-calls-bob.csv",
            "-auth_uri",
            "bob@sip.test",
            "-p",
            "26616",
            "-mp",
            "27616",
            "-m",
            "1",
            "-d",
            "2000",
        ],
        Duration::from_secs(30),
    )
    .success();
    let bob_ok = wait_bounded(&mut bob.child, Duration::from_secs(20)).success();
    ok && bob_ok
}

/// The detail file's records, each as its text.
fn records(dir: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(dir.join("detail")).unwrap_or_default();
    text.split("\n\n").filter(|r| r.contains("Acct-Status-Type")).map(str::to_owned).collect()
}

fn value<'a>(record: &'a str, attribute: &str) -> Option<&'a str> {
    record.lines().find_map(|l| l.trim().strip_prefix(&format!("{attribute} = "))).map(|v| v.trim_matches('"'))
}

fn wait_records(dir: &Path, n: usize, limit: Duration) -> Vec<String> {
    let deadline = Instant::now() + limit;
    loop {
        let r = records(dir);
        if r.len() >= n || Instant::now() > deadline {
            return r;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn metrics(port: u16) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).expect("metrics");
    write!(s, "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").expect("send");
    let mut text = String::new();
    s.read_to_string(&mut text).expect("read");
    text
}

fn metric(text: &str, name: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{name}_total ")).or_else(|| l.strip_prefix(&format!("{name} "))))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

#[test]
fn calls_are_accounted_to_freeradius_with_failover_and_records_kept_while_it_is_down() {
    if !sipp_available() || !freeradius_available() {
        return;
    }
    let stack = Stack::start_with(
        23,
        true,
        &format!(
            "[metrics]\nlisten = \"127.0.0.1:26590\"\n[api]\nlisten = \"127.0.0.1:26591\"\n\
             [radius]\naccounting = [\"127.0.0.1:26514\", \"127.0.0.1:26513\"]\nsecret = \"{SECRET}\"\nnas_identifier = \"cp-radius-test\"\n\
             timeout_ms = 200\nretries = 2\nretry_s = 2\n"
        ),
    );
    let rad_dir = stack.dir.join("radius");
    std::fs::create_dir_all(&rad_dir).expect("dir");
    let radius = start_freeradius(&rad_dir, 26_513, 26_511);
    register_callee(&stack, "csv/bob.csv", 26_610);

    // A call: Start and Stop of one session, through the second server.
    assert!(call(&stack), "the call failed; log: {}", stack.log());
    let got = wait_records(&rad_dir, 2, Duration::from_secs(10));
    assert_eq!(got.len(), 2, "{got:?}; FreeRADIUS: {}", std::fs::read_to_string(rad_dir.join("freeradius.log")).unwrap_or_default());
    let (start, stop) = (&got[0], &got[1]);
    assert_eq!(value(start, "Acct-Status-Type"), Some("Start"), "{start}");
    assert_eq!(value(stop, "Acct-Status-Type"), Some("Stop"), "{stop}");
    assert_eq!(value(start, "Acct-Session-Id"), value(stop, "Acct-Session-Id"));
    assert!(value(start, "Acct-Session-Id").is_some_and(|s| s.starts_with("cp-radius-test-")), "{start}");
    assert_eq!(value(stop, "User-Name"), Some("alice@sip.test"), "{stop}");
    assert_eq!(value(stop, "Called-Station-Id"), Some("bob"), "{stop}");
    assert_eq!(value(stop, "NAS-Identifier"), Some("cp-radius-test"), "{stop}");
    assert_eq!(value(stop, "Acct-Terminate-Cause"), Some("User-Request"), "{stop}");
    let seconds: u64 = value(stop, "Acct-Session-Time").and_then(|v| v.parse().ok()).expect("session time");
    assert!((1..=5).contains(&seconds), "{stop}");
    let m = metrics(26_590);
    assert_eq!(metric(&m, "radius_acked"), 2, "{m}");
    assert_eq!(metric(&m, "radius_retries"), 2, "the dead first server tried twice, then the second, which goes first since: {m}");

    // FreeRADIUS goes away: the call goes on, its CDR is written, its records are kept.
    drop(radius);
    assert!(call(&stack), "the second call failed; log: {}", stack.log());
    let cdrs = Command::new(BIN).args(["--config", stack.config.to_str().expect("utf8"), "cdr", "export"]).output().expect("cdr export");
    let cdrs = String::from_utf8_lossy(&cdrs.stdout).into_owned();
    assert_eq!(cdrs.lines().filter(|l| l.split(',').nth(2) == Some("call")).count(), 2, "both calls' CDRs, RADIUS or not: {cdrs}");
    std::thread::sleep(Duration::from_secs(1));
    assert!(metric(&metrics(26_590), "radius_deferred") >= 1);
    // It is back: the kept records arrive, late and saying so.
    let _radius = start_freeradius(&rad_dir, 26_513, 26_511);
    let got = wait_records(&rad_dir, 4, Duration::from_secs(15));
    assert_eq!(got.len(), 4, "{got:?}");
    let late = &got[3];
    assert_eq!(value(late, "Acct-Status-Type"), Some("Stop"), "{late}");
    assert!(value(late, "Acct-Delay-Time").and_then(|v| v.parse::<u64>().ok()).is_some_and(|d| d >= 1), "{late}");
}

#[test]
fn freeradius_authorises_calls_out_through_trunks_and_its_session_timeout_cuts_them_off() {
    if !sipp_available() || !freeradius_available() {
        return;
    }
    let stack = Stack::start_with(
        25,
        true,
        &format!(
            "[[route]]\nprefix = \"0049301\"\ndestination = \"sip:127.0.0.1:26620\"\n\
             [billing]\nwarning_s = 0\n\
             [radius]\nauthentication = [\"127.0.0.1:26512\"]\nsecret = \"{SECRET}\"\ntimeout_ms = 500\nretries = 2\n"
        ),
    );
    let rad_dir = stack.dir.join("radius");
    std::fs::create_dir_all(&rad_dir).expect("dir");
    let _radius = start_freeradius(&rad_dir, 26_515, 26_512);
    // Accepted with Session-Timeout = 3: the trunk's call is cut off after 3 s.
    let mut trunk =
        Proc { child: spawn_sipp(&stack, &["-sf", "uas-answer.xml", "-p", "26620", "-mp", "27620", "-m", "1"]), name: "sipp trunk" };
    std::thread::sleep(Duration::from_millis(300));
    let _ = sipp(
        &stack,
        &[
            "-sf",
            "uac-call.xml",
            "-inf",
            "csv/alice-calls-0049301.csv",
            "-auth_uri",
            "0049301@sip.test",
            "-p",
            "26626",
            "-mp",
            "27626",
            "-m",
            "1",
            "-d",
            "8000",
        ],
        Duration::from_secs(30),
    );
    assert!(wait_bounded(&mut trunk.child, Duration::from_secs(20)).success(), "the trunk's call did not end with our BYE");
    let cdrs = Command::new(BIN).args(["--config", stack.config.to_str().expect("utf8"), "cdr", "export"]).output().expect("cdr export");
    let cdrs = String::from_utf8_lossy(&cdrs.stdout).into_owned();
    let call = cdrs.lines().find(|l| l.split(',').nth(2) == Some("call")).unwrap_or_else(|| panic!("no CDR: {cdrs}"));
    let fields: Vec<&str> = call.split(',').collect();
    let duration: u64 = fields[10].parse().expect("duration");
    assert_eq!(fields[16], "credit", "{call}");
    assert!((2_900..=3_600).contains(&duration), "cut off after 3 s: {call}");
    // Refused for 0049301999: 403 before anything rings.
    let csv = stack.dir.join("alice-calls-0049301999.csv");
    std::fs::write(&csv, "SEQUENTIAL\nalice;secret;sip.test;[authentication username=alice password=secret];0049301999\n").expect("csv");
    let refused = sipp(
        &stack,
        &[
            "-sf",
            "uac-call-fail.xml",
            "-inf",
            csv.to_str().expect("utf8"),
            "-auth_uri",
            "0049301999@sip.test",
            "-set",
            "expect",
            "403",
            "-p",
            "26636",
            "-mp",
            "27636",
            "-m",
            "1",
        ],
        Duration::from_secs(20),
    );
    assert!(refused.success(), "the call was not refused with 403; log: {}", stack.log());
}
