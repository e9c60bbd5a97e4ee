//! End-to-end tests of `rtp-load` against the real `media-plane` binary on loopback: the calls are
//! set up over gRPC, paced RTP goes through the relay and back into the generator, and the one JSON
//! line on stdout is checked against what must hold for a healthy relay at a light load (every
//! packet back exactly once, in order, from the right relay port, the relay's CPU measured).
//!
//! `media-plane` is the workspace's other binary: `cargo test --workspace` builds it next to
//! `rtp-load` before any test runs. Every wait is bounded.

use std::fs::File;
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const RTP_LOAD: &str = env!("CARGO_BIN_EXE_rtp-load");
/// Media ports of the relay these tests start: clear of the ranges the media plane's own tests use
/// (61000-62299) and above Linux's default ephemeral range.
const PORTS: [&str; 2] = ["63000-63099", "63100-63199"];
const CALLS: usize = 20;

fn media_plane_bin() -> PathBuf {
    let bin = PathBuf::from(RTP_LOAD).with_file_name("media-plane");
    assert!(bin.exists(), "{} is missing: run these tests with `cargo test --workspace`, which builds it", bin.display());
    bin
}

/// A running relay, killed on drop; its stderr is printed if the test fails.
struct Relay {
    child: Child,
    grpc: String,
    log: PathBuf,
}

impl Relay {
    fn start(ports: &str) -> Self {
        let grpc = TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("find a free TCP port").to_string();
        let log = std::env::temp_dir().join(format!("rtp-load-test-{}-{ports}.log", std::process::id()));
        let child = Command::new(media_plane_bin())
            .args(["--grpc-listen", &grpc, "--ports", ports, "--cores", "1", "--no-pin"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(File::create(&log).expect("create the relay's log"))
            .spawn()
            .expect("spawn media-plane");
        let relay = Self { child, grpc, log };
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(&relay.grpc).is_err() {
            assert!(Instant::now() < deadline, "media-plane did not listen on {} within 10 s", relay.grpc);
            std::thread::sleep(Duration::from_millis(50));
        }
        relay
    }

    /// Runs `rtp-load` against this relay with `extra` arguments; at most 30 s.
    fn load(&self, extra: &[&str]) -> Output {
        let mut child = Command::new(RTP_LOAD)
            .args(["--grpc", &format!("http://{}", self.grpc), "--relay-pid", &self.child.id().to_string()])
            .args(["--calls", &CALLS.to_string(), "--sockets", "2", "--warmup", "0.3", "--duration", "1"])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn rtp-load");
        let deadline = Instant::now() + Duration::from_secs(30);
        while child.try_wait().expect("wait for rtp-load").is_none() {
            if Instant::now() >= deadline {
                let _ = child.kill();
                panic!("rtp-load still running after 30 s");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        child.wait_with_output().expect("collect rtp-load's output")
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("media-plane log:\n{}", std::fs::read_to_string(&self.log).unwrap_or_default());
        }
        let _ = std::fs::remove_file(&self.log);
    }
}

/// The one JSON line of a fixed run, after checking the exit status.
fn report(out: &Output) -> serde_json::Value {
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "rtp-load failed ({}):\n{stderr}", out.status);
    let lines: Vec<&str> = stdout.lines().filter(|l| l.starts_with('{')).collect();
    assert_eq!(lines.len(), 1, "expected one JSON line, got:\n{stdout}\nstderr:\n{stderr}");
    serde_json::from_str(lines[0]).expect("the JSON line parses")
}

fn num(r: &serde_json::Value, path: &[&str]) -> f64 {
    let v = path.iter().fold(r, |v, k| &v[*k]);
    v.as_f64().unwrap_or_else(|| panic!("{} missing or not a number in {r}", path.join(".")))
}

fn assert_clean_relay(r: &serde_json::Value) {
    assert_eq!(r["mode"], "fixed");
    assert_eq!(num(r, &["calls"]), CALLS as f64);
    assert_eq!(num(r, &["streams"]), 2.0 * CALLS as f64);
    let sent = num(r, &["sent"]);
    // 20 calls × 2 streams × 50 packets/s over the ~1 s window.
    assert!(sent >= 1000.0, "only {sent} packets sent in the window: {r}");
    assert_eq!(num(r, &["received"]), sent, "every packet comes back: {r}");
    assert_eq!(num(r, &["lost"]), 0.0);
    assert_eq!(num(r, &["reordered"]), 0.0, "{r}");
    assert_eq!(num(r, &["misrouted"]), 0.0, "{r}");
    let (p50, p99, max) = (num(r, &["latency_us", "p50"]), num(r, &["latency_us", "p99"]), num(r, &["latency_us", "max"]));
    assert!(p50 > 0.0 && p50 <= p99 && p99 <= max, "latency percentiles out of order: {r}");
    assert!(num(r, &["relay_cpu_us_per_pkt"]) > 0.0, "the relay's CPU is measured from /proc: {r}");
}

#[test]
fn rtp_load_relays_every_packet_through_the_media_plane_and_prints_one_json_line() {
    let relay = Relay::start(PORTS[0]);
    let r = report(&relay.load(&["--label", "test"]));
    assert_eq!(r["label"], "test");
    assert_eq!(r["peer"], "media-plane");
    assert_clean_relay(&r);
}

#[test]
fn busy_pacing_with_tick_zero_relays_every_packet_too() {
    let relay = Relay::start(PORTS[1]);
    let r = report(&relay.load(&["--tick-us", "0"]));
    assert_clean_relay(&r);
}
