//! Kamailio's dispatcher in front of two control planes sharing a PostgreSQL store (real
//! binaries: PostgreSQL, Kamailio, two control planes, a media plane, sipp phones). A phone
//! registers through the dispatcher; the control plane that took the registration is killed; the
//! dispatcher notices (OPTIONS probes) and the next call reaches the other control plane, which
//! finds the phone's registration in the shared store and connects the call with its media.
//!
//! Needs PostgreSQL, Kamailio and sipp (required in CI: REQUIRE_POSTGRES, REQUIRE_KAMAILIO,
//! REQUIRE_SIPP); skips with a message otherwise. Ports: PostgreSQL 26710, control planes
//! 21420/21430 (metrics 21423/21433), media plane gRPC 21425 (media 26200-26299), Kamailio 24500,
//! phones 24501-24503 (media 24510+).

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

mod common;
use common::stack::{sipp_available, wait_bounded};
use common::{media_plane_bin, metric, pg, repo_root, scrape, start_control_plane, temp_dir, tool_available, Proc, ProcGroup};

const PG_PORT: u16 = 26_710;
const NODES: [(&str, &str); 2] = [("127.0.0.1:21420", "127.0.0.1:21423"), ("127.0.0.1:21430", "127.0.0.1:21433")];
const GRPC: &str = "127.0.0.1:21425";
const EDGE: &str = "127.0.0.1:24500";

fn sipp_at(edge: &str, args: &[&str]) -> std::process::Child {
    Command::new("sipp")
        .arg(edge)
        .args(args)
        .args(["-nostdin", "-timeout", "40s", "-timeout_error"])
        .current_dir(repo_root().join("scripts/sipp"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start sipp")
}

fn registrations(metrics: &str) -> u64 {
    scrape(metrics).and_then(|m| metric(&m, "sip_registrations_total")).unwrap_or(0)
}

#[test]
fn behind_kamailios_dispatcher_a_call_reaches_a_phone_registered_at_a_control_plane_that_died() {
    if !sipp_available() || !tool_available("kamailio", "-v", "REQUIRE_KAMAILIO", "apt-get install kamailio, or bash scripts/setup.sh") {
        return;
    }
    let Some(bin) = pg::bin_dir() else { return };
    let dir = temp_dir("dispatcher");
    let _pg = pg::start_postgres(&bin, &dir, PG_PORT);
    let params = pg::params(PG_PORT);
    let mut nodes: Vec<Option<Proc>> = Vec::new();
    for (i, (sip, metrics)) in NODES.iter().enumerate() {
        let node_dir = dir.join(format!("cp{i}"));
        std::fs::create_dir_all(&node_dir).expect("dir");
        let config = node_dir.join("cp.toml");
        std::fs::write(
            &config,
            format!(
                "[sip]\nlisten = [\"udp:{sip}\"]\ndomains = [\"sip.test\"]\n[media]\ngrpc = \"http://{GRPC}\"\n\
                 [metrics]\nlisten = \"{metrics}\"\n[store]\npostgres = \"{params}\"\n"
            ),
        )
        .expect("config");
        if i == 0 {
            common::add_subscribers(&config, &["alice", "bob"]);
        }
        nodes.push(Some(start_control_plane(&node_dir, &config)));
    }
    let log_of = |i: usize| std::fs::read_to_string(dir.join(format!("cp{i}/cp.log"))).unwrap_or_default();
    let first = 26_200;
    let _mp = Proc {
        child: Command::new(media_plane_bin())
            .args(["--grpc-listen", GRPC, "--ports", &format!("{first}-{}", first + 99), "--no-pin", "--ng-listen", ""])
            .args(["--metrics-listen", ""])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("mp.log")).expect("log"))
            .spawn()
            .expect("start media-plane"),
        name: "media-plane",
    };
    let list = dir.join("dispatcher.list");
    std::fs::write(&list, NODES.iter().map(|(sip, _)| format!("1 sip:{sip}\n")).collect::<String>()).expect("list");
    let run_dir = dir.join("kamailio");
    std::fs::create_dir_all(&run_dir).expect("run dir");
    let kamailio_log = dir.join("kamailio.log");
    let _kamailio = ProcGroup::spawn(
        Command::new("kamailio")
            .args(["-f", repo_root().join("scripts/kamailio/dispatcher.cfg").to_str().expect("utf8"), "-DD", "-E", "-m", "32", "-M", "8"])
            .args(["-Y", run_dir.to_str().expect("utf8"), "-w", run_dir.to_str().expect("utf8")])
            .args(["-l", &format!("udp:{EDGE}"), "-A", &format!("DSLIST=\"{}\"", list.display())])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&kamailio_log).expect("log")),
    )
    .expect("start kamailio");
    let edge_log = || std::fs::read_to_string(&kamailio_log).unwrap_or_default();
    let deadline = Instant::now() + Duration::from_secs(15);
    // Both control planes up (metrics answer) and Kamailio's socket bound.
    while !(edge_log().contains("SO_RCVBUF is finally") && NODES.iter().all(|(_, m)| scrape(m).is_some())) {
        assert!(Instant::now() < deadline, "not up within 15 s: kamailio {}; cp0 {}; cp1 {}", edge_log(), log_of(0), log_of(1));
        std::thread::sleep(Duration::from_millis(100));
    }

    // bob registers through the dispatcher.
    let status = wait_bounded(
        &mut sipp_at(EDGE, &["-sf", "register.xml", "-inf", "csv/bob.csv", "-auth_uri", "sip.test", "-p", "24501", "-m", "1"]),
        Duration::from_secs(45),
    );
    assert!(status.success(), "bob's REGISTER through the dispatcher: {status:?}; {}", edge_log());
    let took: Vec<u64> = NODES.iter().map(|(_, m)| registrations(m)).collect();
    assert_eq!(took.iter().sum::<u64>(), 1, "registrations per node {took:?}");
    let registrar = took.iter().position(|&n| n == 1).expect("one node registered bob");
    let other = 1 - registrar;

    // The node that has bob's registration in its memory dies; the dispatcher's probes notice.
    drop(nodes[registrar].take());
    let deadline = Instant::now() + Duration::from_secs(10);
    while !edge_log().contains("down") {
        assert!(Instant::now() < deadline, "the dispatcher did not mark the dead node down: {}", edge_log());
        std::thread::sleep(Duration::from_millis(100));
    }

    // alice calls bob through the dispatcher: the surviving node takes the call, finds bob's
    // registration (made at the dead node) in PostgreSQL and reaches him through the Path.
    let mut uas = sipp_at(EDGE, &["-sf", "uas-answer.xml", "-p", "24501", "-mp", "24510", "-rtp_echo", "-m", "1"]);
    std::thread::sleep(Duration::from_millis(300));
    let uac = wait_bounded(
        &mut sipp_at(
            EDGE,
            &[
                "-sf",
                "uac-call.xml",
                "-inf",
                "csv/alice-calls-bob.csv",
                "-auth_uri",
                "bob@sip.test",
                "-p",
                "24502",
                "-mp",
                "24520",
                "-d",
                "2000",
                "-m",
                "1",
            ],
        ),
        Duration::from_secs(45),
    );
    let uas = wait_bounded(&mut uas, Duration::from_secs(20));
    assert!(uac.success() && uas.success(), "caller {uac:?}, callee {uas:?}; node {other}: {}; edge: {}", log_of(other), edge_log());
    let m = scrape(NODES[other].1).unwrap_or_default();
    assert_eq!(metric(&m, "sip_calls_answered_total"), Some(1), "{m}");
    assert_eq!(metric(&m, "sip_registrations_total"), Some(0), "bob never registered at the surviving node: {m}");
    // The call's audio went through the media plane both ways, and nothing is left there.
    let (legs, forwarded) = common::media_totals(GRPC);
    assert!(forwarded >= 100, "only {forwarded} packets relayed for a 2 s call");
    assert_eq!(legs, 0, "legs left after the call");
    drop(nodes);
    let _ = std::fs::remove_dir_all(&dir);
}
