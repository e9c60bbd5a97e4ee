//! One control plane over two media planes (real binaries, sipp phones): calls spread by load,
//! a media plane that dies has its calls ended and gets no new ones, and one that restarts (its
//! legs gone) has its calls ended at once, leaving no leg behind.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::stack::{register_callee, sipp, sipp_available, spawn_sipp, wait_bounded, Stack};
use common::{media_plane_bin, metric, repo_root, scrape, start_control_plane, temp_dir, Proc};
use proto::v1;

/// Ports of this file's stack (slot 40 of the tests' port plan).
const SIP: &str = "127.0.0.1:21400";
const METRICS: &str = "127.0.0.1:21403";
const PLANES: [(&str, u16); 2] = [("127.0.0.1:21405", 26_000), ("127.0.0.1:21406", 26_100)];

fn start_plane(dir: &Path, index: usize) -> Proc {
    let (grpc, first) = PLANES[index];
    let log = std::fs::OpenOptions::new().create(true).append(true).open(dir.join(format!("mp{index}.log"))).expect("log file");
    let child = Command::new(media_plane_bin())
        .args(["--grpc-listen", grpc, "--ports", &format!("{first}-{}", first + 99), "--no-pin", "--ng-listen", ""])
        .args(["--prompt-dir", repo_root().join("prompts").to_str().expect("utf8 path")])
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("start media-plane");
    Proc { child, name: "media-plane" }
}

/// Plane `index`'s legs, or `None` if it does not answer.
fn legs(index: usize) -> Option<u32> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    rt.block_on(async {
        let mut client = v1::media_plane_client::MediaPlaneClient::connect(format!("http://{}", PLANES[index].0)).await.ok()?;
        let stats = client.get_stats(v1::GetStatsRequest { leg_ids: vec![], totals_only: true }).await.ok()?.into_inner();
        Some(stats.cores.iter().map(|c| c.legs).sum())
    })
}

/// Waits up to `limit` for `done` (polled every 100 ms); whether it came true.
fn wait_for(limit: Duration, mut done: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if done() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    done()
}

fn calls_active() -> Option<u64> {
    scrape(METRICS).and_then(|m| metric(&m, "sip_calls_active"))
}

#[test]
fn calls_spread_over_two_media_planes_and_a_lost_or_restarted_plane_has_its_calls_ended() {
    if !sipp_available() {
        return;
    }
    let dir = temp_dir("media-planes");
    let config = dir.join("cp.toml");
    let planes: Vec<String> = PLANES.iter().map(|(grpc, _)| format!("\"http://{grpc}\"")).collect();
    std::fs::write(
        &config,
        format!(
            "[sip]\nlisten = [\"udp:{SIP}\"]\ndomains = [\"sip.test\"]\n\
             [media]\ngrpc = [{}]\nlost_after_s = 2\n[metrics]\nlisten = \"{METRICS}\"\n[store]\npath = \"{}\"\n",
            planes.join(", "),
            dir.join("cp.db").display()
        ),
    )
    .expect("write config");
    common::add_subscribers(&config, &["alice", "bob"]);
    let mut mp = [Some(start_plane(&dir, 0)), Some(start_plane(&dir, 1))];
    let sip: SocketAddr = SIP.parse().expect("addr");
    let stack = Stack {
        cp: Some(start_control_plane(&dir, &config)),
        _mp: None,
        sip,
        grpc: PLANES[0].0.parse().expect("addr"),
        dir: dir.clone(),
        config: config.clone(),
    };
    stack.wait_ready();
    assert!(wait_for(Duration::from_secs(5), || legs(0).is_some() && legs(1).is_some()), "media planes not up");
    // The control plane has seen both planes up (one health check) before calls arrive.
    std::thread::sleep(Duration::from_millis(1500));

    register_callee(&stack, "csv/bob.csv", 24_400);
    let mut uas = spawn_sipp(&stack, &["-sf", "uas-answer.xml", "-p", "24400", "-mp", "24402", "-rtp_echo", "-m", "5"]);
    std::thread::sleep(Duration::from_millis(300));
    // Four calls that last until the control plane hangs them up.
    let mut callers = spawn_sipp(
        &stack,
        &[
            "-sf",
            "uac-call-until-bye.xml",
            "-inf",
            "csv/alice-calls-bob.csv",
            "-auth_uri",
            "bob@sip.test",
            "-p",
            "24401",
            "-mp",
            "24410",
            "-r",
            "4",
            "-m",
            "4",
        ],
    );
    let answered = || scrape(METRICS).and_then(|m| metric(&m, "sip_calls_answered_total"));
    let spread = wait_for(Duration::from_secs(10), || {
        calls_active() == Some(4) && answered() == Some(4) && legs(0) == Some(4) && legs(1) == Some(4)
    });
    assert!(spread, "4 calls, 2 legs each, 2 per plane: planes have {:?} and {:?} legs; log: {}", legs(0), legs(1), stack.log());

    // Plane 1 dies: after lost_after_s its two calls are ended; plane 0's go on.
    drop(mp[1].take());
    let ended = wait_for(Duration::from_secs(8), || calls_active() == Some(2));
    let m = scrape(METRICS).unwrap_or_default();
    assert!(ended, "calls left: {:?}; metrics: {m}", calls_active());
    assert_eq!(metric(&m, &format!("media_plane_up{{media_plane=\"http://{}\"}}", PLANES[1].0)), Some(0), "{m}");
    assert_eq!(metric(&m, &format!("media_plane_lost_total{{media_plane=\"http://{}\"}}", PLANES[1].0)), Some(1), "{m}");
    assert_eq!(legs(0), Some(4), "plane 0 kept its calls");

    // A new call while plane 1 is down goes to plane 0, with its media.
    let one = sipp(
        &stack,
        &[
            "-sf",
            "uac-call.xml",
            "-inf",
            "csv/alice-calls-bob.csv",
            "-auth_uri",
            "bob@sip.test",
            "-p",
            "24403",
            "-mp",
            "24420",
            "-d",
            "1000",
            "-m",
            "1",
        ],
        Duration::from_secs(30),
    );
    assert!(one.success(), "a call with one plane down failed: {one:?}; log: {}", stack.log());

    // Plane 0 restarts (a new instance, its legs gone): its calls are ended within a health
    // check or two, and nothing is left behind on it.
    drop(mp[0].take());
    mp[0] = Some(start_plane(&dir, 0));
    let ended = wait_for(Duration::from_secs(8), || calls_active() == Some(0));
    assert!(ended, "calls left after the restart: {:?}; log: {}", calls_active(), stack.log());
    let callers = wait_bounded(&mut callers, Duration::from_secs(20));
    let uas = wait_bounded(&mut uas, Duration::from_secs(20));
    assert!(callers.success() && uas.success(), "every call ended by BYE, answered: callers {callers:?}, callee {uas:?}");
    assert!(wait_for(Duration::from_secs(3), || legs(0) == Some(0)), "legs on the restarted plane: {:?}", legs(0));
    let m = scrape(METRICS).unwrap_or_default();
    assert_eq!(metric(&m, &format!("media_plane_lost_total{{media_plane=\"http://{}\"}}", PLANES[0].0)), Some(1), "{m}");
    assert!(
        m.contains("media_request_duration_seconds_bucket{le=\"0.0001\",request=\"allocate\"}") || m.contains("request=\"allocate\""),
        "{m}"
    );
    let log = stack.log();
    assert!(log.contains("media plane lost") && log.contains("restarted") && log.contains("unreachable"), "{log}");
    drop(mp);
    drop(stack);
}
