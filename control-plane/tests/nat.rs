//! A phone behind NAT keeps receiving calls: three network namespaces (a server side with the
//! control plane, the media plane and a calling sipp; a NAT router that masquerades with random
//! source ports, as carrier-grade NATs do; a phone side with a sipp that registers and answers),
//! joined by veth pairs. The server side has no route to the phone's private network, so a call
//! only reaches the phone if the registrar sends it to the flow its REGISTER came from (the NAT's
//! public address and rewritten port) rather than to the private Contact; the phone's audio
//! reaches the caller only if the media plane latches onto where it really comes from.
//!
//! Needs root (namespaces, nftables); without it the test prints why and passes. Traffic stays
//! inside the namespaces the test creates.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

mod common;
use common::{counter, media_plane_bin, repo_root, temp_dir, terminate, Proc, BIN};

const SKIP: &str = "skipped: needs root (network namespaces, nftables)";
const SERVER: &str = "10.89.2.1";
const NAT_PUBLIC: &str = "10.89.2.254";
const NAT_PRIVATE: &str = "10.89.1.254";
const PHONE: &str = "10.89.1.2";

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find_map(|l| l.strip_prefix("Uid:")).map(|u| u.split_whitespace().next() == Some("0")))
        .unwrap_or(false)
}

fn must(args: &[&str]) {
    let out = Command::new(args[0]).args(&args[1..]).output().unwrap_or_else(|e| panic!("run {args:?}: {e}"));
    assert!(out.status.success(), "{args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
}

/// The three namespaces; deleted (with their veths) on drop.
struct Topology {
    prefix: String,
}

impl Topology {
    fn up() -> Self {
        let prefix = format!("cpnat{}", std::process::id() % 100_000);
        let t = Topology { prefix };
        let (srv, rt, ph) = (t.ns("srv"), t.ns("rt"), t.ns("ph"));
        for ns in [&srv, &rt, &ph] {
            must(&["ip", "netns", "add", ns]);
            must(&["ip", "-n", ns, "link", "set", "lo", "up"]);
        }
        // server 10.89.2.1 <-> router 10.89.2.254 (public side)
        must(&["ip", "link", "add", "s0", "netns", &srv, "type", "veth", "peer", "name", "r1", "netns", &rt]);
        // phone 10.89.1.2 <-> router 10.89.1.254 (private side)
        must(&["ip", "link", "add", "p0", "netns", &ph, "type", "veth", "peer", "name", "r0", "netns", &rt]);
        for (ns, dev, addr) in [(&srv, "s0", SERVER), (&rt, "r1", NAT_PUBLIC), (&rt, "r0", NAT_PRIVATE), (&ph, "p0", PHONE)] {
            must(&["ip", "-n", ns, "addr", "add", &format!("{addr}/24"), "dev", dev]);
            must(&["ip", "-n", ns, "link", "set", dev, "up"]);
        }
        must(&["ip", "-n", &ph, "route", "add", "default", "via", NAT_PRIVATE]);
        must(&["ip", "netns", "exec", &rt, "sysctl", "-qw", "net.ipv4.ip_forward=1"]);
        // Masquerade with random source ports: the phone's 5090 becomes some other port.
        must(&["ip", "netns", "exec", &rt, "nft", "add", "table", "ip", "nat"]);
        must(&["ip", "netns", "exec", &rt, "nft", "add", "chain", "ip", "nat", "post", "{ type nat hook postrouting priority 100; }"]);
        must(&["ip", "netns", "exec", &rt, "nft", "add", "rule", "ip", "nat", "post", "oifname", "r1", "masquerade", "random"]);
        t
    }

    fn ns(&self, role: &str) -> String {
        format!("{}{role}", self.prefix)
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        for role in ["srv", "rt", "ph"] {
            let _ = Command::new("ip").args(["netns", "del", &self.ns(role)]).status();
        }
    }
}

/// `program args…` inside namespace `ns`, with stdout and stderr to `log`.
fn spawn_in(ns: &str, program: &Path, args: &[&str], log: &Path, cwd: Option<&Path>) -> Proc {
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", ns]).arg(program).args(args);
    if let Some(dir) = cwd {
        cmd.current_dir(dir);
    }
    let child = cmd
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(log).expect("log"))
        .stderr(std::fs::File::create(log.with_extension("err")).expect("log"))
        .spawn()
        .expect("spawn in namespace");
    Proc { child, name: "namespaced process" }
}

/// Runs sipp from scripts/sipp in `ns` to completion (at most `limit`).
fn sipp_in(ns: &str, args: &[&str], limit: Duration, log: &Path) {
    let mut p = spawn_in(ns, Path::new("sipp"), args, log, Some(&repo_root().join("scripts/sipp")));
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = p.child.try_wait().expect("wait sipp") {
            assert!(
                status.success(),
                "sipp {args:?} in {ns}: {status}; {}",
                std::fs::read_to_string(log.with_extension("err")).unwrap_or_default()
            );
            return;
        }
        assert!(Instant::now() < deadline, "sipp {args:?} did not finish within {limit:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The bench crate's `media-stats` next to our binary (built if a single-package run left it out).
fn media_stats_bin() -> PathBuf {
    let path = Path::new(BIN).with_file_name("media-stats");
    if !path.exists() {
        let status = Command::new(env!("CARGO"))
            .args(["build", "-p", "bench", "--bin", "media-stats"])
            .current_dir(repo_root())
            .status()
            .expect("cargo build media-stats");
        assert!(status.success());
    }
    path
}

#[test]
fn phone_behind_a_port_rewriting_nat_keeps_receiving_calls_with_audio_both_ways() {
    if !is_root() {
        assert!(std::env::var("REQUIRE_ROOT").as_deref() != Ok("1"), "REQUIRE_ROOT=1 but the tests do not run as root");
        eprintln!("{SKIP}");
        return;
    }
    let found = Command::new("sipp").arg("-v").stdout(Stdio::null()).stderr(Stdio::null()).status().is_ok();
    let nft = Command::new("nft").arg("--version").stdout(Stdio::null()).status().is_ok();
    if !found || !nft {
        assert!(std::env::var("REQUIRE_SIPP").as_deref() != Ok("1"), "REQUIRE_SIPP=1 but sipp or nft is missing");
        eprintln!("SKIP: sipp or nftables is not installed");
        return;
    }
    let dir = temp_dir("nat");
    let t = Topology::up();
    let (srv, ph) = (t.ns("srv"), t.ns("ph"));
    let config = dir.join("cp.toml");
    std::fs::write(
        &config,
        format!("[sip]\nlisten = [\"udp:{SERVER}:5060\"]\ndomains = [\"sip.test\"]\n[store]\npath = \"{}\"\n", dir.join("cp.db").display()),
    )
    .expect("write config");
    for user in ["alice", "bob"] {
        let out = Command::new(BIN)
            .args([
                "--config",
                config.to_str().expect("utf8"),
                "subscriber",
                "add",
                "--user",
                user,
                "--domain",
                "sip.test",
                "--password",
                "secret",
            ])
            .output()
            .expect("subscriber add");
        assert!(out.status.success());
    }
    let _media =
        spawn_in(&srv, &media_plane_bin(), &["--media-ip", SERVER, "--ports", "30000-30999", "--no-pin"], &dir.join("mp.log"), None);
    let mut cp = spawn_in(&srv, Path::new(BIN), &["--config", config.to_str().expect("utf8")], &dir.join("cp.out"), None);
    std::thread::sleep(Duration::from_millis(500));

    // bob registers from behind the NAT (Contact: its private 10.89.1.2:5090)...
    let target = format!("{SERVER}:5060");
    sipp_in(
        &ph,
        &[
            &target,
            "-sf",
            "register.xml",
            "-inf",
            "csv/bob.csv",
            "-auth_uri",
            "sip.test",
            "-i",
            PHONE,
            "-p",
            "5090",
            "-m",
            "1",
            "-nostdin",
            "-timeout",
            "20s",
            "-timeout_error",
        ],
        Duration::from_secs(25),
        &dir.join("reg.log"),
    );
    // ...and answers two calls, a few seconds apart, sending audio itself.
    let mut uas = spawn_in(
        &ph,
        Path::new("sipp"),
        &[
            &target,
            "-sf",
            "uas-answer-stream.xml",
            "-i",
            PHONE,
            "-p",
            "5090",
            "-mp",
            "6000",
            "-m",
            "2",
            "-nostdin",
            "-timeout",
            "60s",
            "-timeout_error",
        ],
        &dir.join("uas.log"),
        Some(&repo_root().join("scripts/sipp")),
    );
    std::thread::sleep(Duration::from_millis(300));
    for call in 0..2 {
        sipp_in(
            &srv,
            &[
                &target,
                "-sf",
                "uac-call.xml",
                "-inf",
                "csv/alice-calls-bob.csv",
                "-auth_uri",
                "bob@sip.test",
                "-i",
                SERVER,
                "-p",
                "5070",
                "-mp",
                "7000",
                "-d",
                "2000",
                "-m",
                "1",
                "-nostdin",
                "-timeout",
                "30s",
                "-timeout_error",
            ],
            Duration::from_secs(35),
            &dir.join(format!("uac{call}.log")),
        );
        std::thread::sleep(Duration::from_secs(3));
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    let uas_status = loop {
        if let Some(s) = uas.child.try_wait().expect("wait uas") {
            break s;
        }
        assert!(Instant::now() < deadline, "the phone's sipp did not finish its two calls");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(uas_status.success(), "phone: {uas_status}; {}", std::fs::read_to_string(dir.join("uas.err")).unwrap_or_default());

    // Audio crossed both ways: 2 calls × 2 s × 50 packets/s each way is 400 packets; the
    // phone's half passes only if its leg latched onto the NAT's address (its SDP names the
    // private one, which the server side cannot reach: the first packets sent there before the
    // phone spoke are the only loss). No leg left over.
    let stats = Command::new("ip")
        .args(["netns", "exec", &srv])
        .arg(media_stats_bin())
        .args(["--grpc", "http://127.0.0.1:9090"])
        .output()
        .expect("media-stats");
    let text = String::from_utf8_lossy(&stats.stdout);
    let number = |key: &str| counter(&text, key);
    assert!(number("packets_forwarded") >= 350, "media plane totals: {text}");
    assert_eq!(number("wrong_source"), 0, "the phone's audio was refused: {text}");
    assert_eq!(number("legs"), 0, "{text}");
    terminate(&mut cp);
    let counters = std::fs::read_to_string(dir.join("cp.out")).unwrap_or_default();
    assert!(counters.contains("\"calls_completed\":2"), "{counters}");
    drop(t);
    let _ = std::fs::remove_dir_all(&dir);
}
