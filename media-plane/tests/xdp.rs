//! The AF_XDP backend end to end: the real binary in a network namespace, relaying RTP between two
//! endpoints behind its one interface.
//!
//! ```text
//!   <P>peer  (10.77.1.1 = leg A's endpoint, 10.77.1.3 = leg B's endpoint; gRPC client)
//!   <P>peer0 ═══ veth, 1 RX/TX queue, TX checksum offload off ═══ <P>dut0  10.77.1.2
//!                                                                <P>dut: media-plane --backend xdp
//! ```
//!
//! The relay tests need root (network namespaces, XDP, AF_XDP): without it they print `skipped: …`
//! (with `REQUIRE_ROOT=1`, which the test command sets when it runs as root, they fail instead)
//! and pass. Each builds its namespaces under a prefix unique to the test and the process and
//! deletes them on drop. Every wait is bounded.

mod common;

use std::fs::File;
use std::net::UdpSocket;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{bridge, core_stats, is_root, leg_stats, rtp, seq_of, simple_leg, temp_path, Client, BIN};

const SKIP: &str = "skipped: needs root (CAP_NET_ADMIN, CAP_SYS_ADMIN, CAP_BPF) for namespaces and AF_XDP";
const PEER_A: &str = "10.77.1.1";
const PEER_B: &str = "10.77.1.3";
const DUT: &str = "10.77.1.2";
const GRPC_PORT: u16 = 9090;
const PORTS: &str = "30000-30099";

fn sh(args: &[&str]) -> std::process::Output {
    Command::new(args[0]).args(&args[1..]).output().unwrap_or_else(|e| panic!("run {args:?}: {e}"))
}

fn must(args: &[&str]) {
    let out = sh(args);
    assert!(out.status.success(), "{args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
}

/// Two namespaces joined by a single-queue veth pair; deleted on drop.
#[derive(Debug)]
struct Topology {
    prefix: String,
}

impl Topology {
    fn up(tag: &str) -> Option<Self> {
        Self::up_queues(tag, "1")
    }

    /// The topology with `queues` receive and transmit queues on each veth end.
    fn up_queues(tag: &str, queues: &str) -> Option<Self> {
        if !is_root() {
            assert!(std::env::var("REQUIRE_ROOT").as_deref() != Ok("1"), "REQUIRE_ROOT=1 but the tests do not run as root");
            eprintln!("{SKIP}");
            return None;
        }
        let prefix = format!("mx{tag}{}", std::process::id() % 100_000);
        let t = Self { prefix };
        let (peer, dut) = (t.peer(), t.dut());
        for ns in [&peer, &dut] {
            if !sh(&["ip", "netns", "add", ns]).status.success() {
                assert!(std::env::var("REQUIRE_ROOT").as_deref() != Ok("1"), "REQUIRE_ROOT=1 but `ip netns add {ns}` failed");
                eprintln!("{SKIP} (ip netns add {ns} failed)");
                return None;
            }
            must(&["ip", "-n", ns, "link", "set", "lo", "up"]);
        }
        let (pif, dif) = (t.peer_if(), t.dut_if());
        // As many queues as media cores: each queue has its AF_XDP socket (a queue without one
        // would leave its flows to the kernel socket).
        must(&[
            "ip",
            "-n",
            &dut,
            "link",
            "add",
            &dif,
            "numrxqueues",
            queues,
            "numtxqueues",
            queues,
            "type",
            "veth",
            "peer",
            "name",
            &pif,
            "netns",
            &peer,
            "numrxqueues",
            queues,
            "numtxqueues",
            queues,
        ]);
        must(&["ip", "-n", &dut, "addr", "add", &format!("{DUT}/24"), "dev", &dif]);
        must(&["ip", "-n", &peer, "addr", "add", &format!("{PEER_A}/24"), "dev", &pif]);
        must(&["ip", "-n", &peer, "addr", "add", &format!("{PEER_B}/24"), "dev", &pif]);
        for (ns, ifc) in [(&dut, &dif), (&peer, &pif)] {
            must(&["ip", "netns", "exec", ns, "ethtool", "-K", ifc, "tx", "off"]);
            must(&["ip", "-n", ns, "link", "set", ifc, "up"]);
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while !String::from_utf8_lossy(&sh(&["ip", "-n", &dut, "-o", "link", "show", "dev", &dif]).stdout).contains("state UP") {
            assert!(Instant::now() < deadline, "{dif} not operationally up after 5 s");
            std::thread::sleep(Duration::from_millis(50));
        }
        Some(t)
    }
    fn peer(&self) -> String {
        format!("{}peer", self.prefix)
    }
    fn dut(&self) -> String {
        format!("{}dut", self.prefix)
    }
    fn peer_if(&self) -> String {
        format!("{}p0", self.prefix)
    }
    fn dut_if(&self) -> String {
        format!("{}d0", self.prefix)
    }
    /// Whether an XDP program is attached to the dut interface.
    fn xdp_attached(&self) -> bool {
        let out = sh(&["ip", "-n", &self.dut(), "-d", "link", "show", "dev", &self.dut_if()]);
        String::from_utf8_lossy(&out.stdout).contains("prog/xdp")
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        for ns in [self.peer(), self.dut()] {
            let _ = sh(&["ip", "netns", "del", &ns]);
        }
    }
}

/// The media plane running in the dut namespace; killed on drop (its log printed on panic).
struct Dut {
    child: Child,
    log: std::path::PathBuf,
}

impl Dut {
    fn start(t: &Topology, extra: &[&str]) -> Self {
        Self::start_cores(t, "1", extra)
    }

    fn start_cores(t: &Topology, cores: &str, extra: &[&str]) -> Self {
        let log = temp_path("xdp-stderr.log");
        let stderr = File::create(&log).expect("create log file");
        let child = Command::new("ip")
            .args(["netns", "exec", &t.dut(), BIN])
            .args(["--interface", &t.dut_if(), "--media-ip", DUT, "--grpc-listen", &format!("{DUT}:{GRPC_PORT}")])
            .args(["--ports", PORTS, "--cores", cores, "--no-pin"])
            .args(extra)
            .env("RUST_LOG", "info,media_plane=debug")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .expect("spawn ip netns exec media-plane");
        Self { child, log }
    }
    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
    /// SIGTERM, then at most 10 s for a clean exit.
    fn stop(&mut self) -> Option<std::process::ExitStatus> {
        let _ = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(s)) = self.child.try_wait() {
                return Some(s);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

impl Drop for Dut {
    fn drop(&mut self) {
        common::reap(&mut self.child, &self.log);
    }
}

/// Runs `f` on a thread that has entered network namespace `ns` (threads it spawns inherit it).
fn in_netns<T: Send>(ns: &str, f: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|s| {
        s.spawn(|| {
            let file = File::open(format!("/var/run/netns/{ns}")).expect("open the namespace file");
            nix::sched::setns(file, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns(CLONE_NEWNET)");
            f()
        })
        .join()
        .expect("namespace thread panicked")
    })
}

async fn connect(dut: &mut Dut) -> Client {
    let url = format!("http://{DUT}:{GRPC_PORT}");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Ok(Some(status)) = dut.child.try_wait() {
            panic!("media-plane exited ({status}) before serving gRPC; its log:\n{}", dut.log());
        }
        if let Ok(Ok(c)) = tokio::time::timeout(Duration::from_secs(1), Client::connect(url.clone())).await {
            return c;
        }
        assert!(Instant::now() < deadline, "no gRPC on {url} within 10 s; log:\n{}", dut.log());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn bind(ip: &str) -> UdpSocket {
    let s = UdpSocket::bind((ip, 0)).unwrap_or_else(|e| panic!("bind {ip}:0: {e}"));
    s.set_read_timeout(Some(Duration::from_secs(2))).expect("set_read_timeout");
    s
}

/// UDP checksum errors the current thread's namespace has counted (`Udp: InCsumErrors`).
fn udp_csum_errors() -> u64 {
    let snmp = std::fs::read_to_string("/proc/thread-self/net/snmp").expect("read /proc/thread-self/net/snmp");
    let mut udp = snmp.lines().filter(|l| l.starts_with("Udp: "));
    let (names, values) = (udp.next().expect("Udp header"), udp.next().expect("Udp values"));
    let i = names.split_whitespace().position(|n| n == "InCsumErrors").expect("InCsumErrors column");
    values.split_whitespace().nth(i).and_then(|v| v.parse().ok()).expect("InCsumErrors value")
}

const SSRC: u32 = 0x5eed_0001;
const PAYLOAD: usize = 160;

#[test]
fn af_xdp_relays_rtp_between_two_endpoints_exactly_and_the_kernel_keeps_arp_and_icmp() {
    let Some(t) = Topology::up("r") else { return };
    let mut dut = Dut::start(&t, &["--backend", "xdp"]);
    in_netns(&t.peer(), || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("tokio runtime");
        rt.block_on(async {
            let mut c = connect(&mut dut).await;
            assert!(t.xdp_attached(), "the XDP program is attached while the media plane runs");
            let (sock_a, sock_b) = (bind(PEER_A), bind(PEER_B));
            let a = simple_leg(&mut c, "xdp-call", None).await;
            let b = simple_leg(&mut c, "xdp-call", Some(sock_b.local_addr().expect("local_addr"))).await;
            bridge(&mut c, &a, &b).await;
            assert_eq!(a.local.ip().to_string(), DUT);
            let csum_errors_before = udp_csum_errors();

            // 1. The dut has never heard from 10.77.1.3: the first forwards find no neighbour,
            //    are dropped as no_route, and prompt ARP; one packet at a time until one arrives.
            let mut warm_sent = 0u64;
            let deadline = Instant::now() + Duration::from_secs(5);
            sock_b.set_read_timeout(Some(Duration::from_millis(100))).expect("set_read_timeout");
            let warm_received = loop {
                assert!(Instant::now() < deadline, "no packet relayed to {PEER_B} within 5 s (ARP never resolved?)");
                sock_a.send_to(&rtp(warm_sent as u16, SSRC, PAYLOAD), a.local).expect("send");
                warm_sent += 1;
                let mut buf = [0u8; 2048];
                if let Ok((n, from)) = sock_b.recv_from(&mut buf) {
                    assert_eq!(from, b.local, "relayed from leg B's port");
                    assert_eq!(seq_of(&buf[..n]), (warm_sent - 1) as u16);
                    break 1u64;
                }
            };
            assert!(warm_sent >= 2, "the first forward should have met an unresolved neighbour");
            let no_route = core_stats(&mut c).await[0].drops.expect("drops").no_route;
            assert_eq!(no_route, warm_sent - warm_received, "unresolved-neighbour drops are counted as no_route");

            // 2. N packets, paced, received concurrently: exact count, order, bytes.
            const N: u16 = 2000;
            const BASE: u16 = 1000;
            sock_b.set_read_timeout(Some(Duration::from_secs(2))).expect("set_read_timeout");
            let receiver = {
                let sock_b = sock_b.try_clone().expect("clone socket");
                let from_b = b.local;
                std::thread::spawn(move || {
                    let mut got = Vec::with_capacity(usize::from(N));
                    let mut buf = [0u8; 2048];
                    while got.len() < usize::from(N) {
                        match sock_b.recv_from(&mut buf) {
                            Ok((n, from)) => {
                                assert_eq!(from, from_b, "relayed from leg B's port");
                                got.push(buf[..n].to_vec());
                            }
                            Err(_) => break, // 2 s of silence: report what arrived
                        }
                    }
                    got
                })
            };
            for i in 0..N {
                sock_a.send_to(&rtp(BASE + i, SSRC, PAYLOAD), a.local).expect("send");
                if i % 50 == 49 {
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
            let got = receiver.join().expect("receiver thread");
            assert_eq!(got.len(), usize::from(N), "every packet relayed exactly once");
            for (i, p) in got.iter().enumerate() {
                let seq = BASE + i as u16;
                assert_eq!(seq_of(p), seq, "packet {i} out of sequence");
                assert_eq!(p, &rtp(seq, SSRC, PAYLOAD), "packet {seq} changed on the way");
            }
            // Reaching the socket proves the checksums valid (the kernel verifies: the frames come
            // from AF_XDP with no offload); the namespace's error counter agrees.
            assert_eq!(udp_csum_errors(), csum_errors_before, "UDP checksum errors at the receiver");

            // 3. The engine's counters: exact.
            let sa = leg_stats(&mut c, a.id).await.expect("leg A stats");
            let sb = leg_stats(&mut c, b.id).await.expect("leg B stats");
            assert_eq!(sa.rtp_packets_in, warm_sent + u64::from(N));
            assert_eq!(sb.rtp_packets_out, warm_received + u64::from(N));
            let core = core_stats(&mut c).await.remove(0);
            assert_eq!(core.packets_forwarded, warm_received + u64::from(N));
            assert_eq!(core.packets_in, warm_sent + u64::from(N));

            // 4. The kernel still gets ARP and ICMP while the program is attached.
            for (ns, to) in [(t.dut(), PEER_A), (t.dut(), PEER_B), (t.peer(), DUT)] {
                let out = sh(&["ip", "netns", "exec", &ns, "ping", "-c", "2", "-i", "0.2", "-W", "2", to]);
                assert!(out.status.success(), "ping {to} from {ns} while attached: {}", String::from_utf8_lossy(&out.stdout));
            }
        });
    });
    let status = dut.stop().expect("media-plane did not exit within 10 s of SIGTERM");
    assert!(status.success(), "media-plane exit: {status}; log:\n{}", dut.log());
    assert!(!t.xdp_attached(), "the XDP program is detached when the media plane exits");
    let log = dut.log();
    assert!(log.contains("AF_XDP backend running") && !log.contains("falling back"), "log:\n{log}");
    // For the record: the attach mode and the driver's and kernel's counters of the run.
    for line in log.lines().filter(|l| l.contains("XDP program attached") || l.contains("AF_XDP media core stopped")) {
        eprintln!("{line}");
    }
}

/// Sums `name: N` over the "AF_XDP media core stopped" log lines (the driver's counters).
fn driver_counter(log: &str, name: &str) -> u64 {
    log.lines()
        .filter(|l| l.contains("AF_XDP media core stopped"))
        .filter_map(|l| l.split(&format!("{name}: ")).nth(1))
        .filter_map(|rest| rest.split(|c: char| !c.is_ascii_digit()).next()?.parse::<u64>().ok())
        .sum()
}

#[test]
fn two_af_xdp_cores_hand_each_other_packets_for_their_ports_and_bridged_legs_and_lose_none() {
    let Some(t) = Topology::up_queues("h", "2") else { return };
    let mut dut = Dut::start_cores(&t, "2", &["--backend", "xdp"]);
    // Many flows: the peer's veth spreads them over both queues by hash, so with 16 calls some
    // land on the queue of the core that does not own their port (all on the right one: p = 2^-16).
    const CALLS: usize = 16;
    const N: u16 = 200;
    in_netns(&t.peer(), || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("tokio runtime");
        rt.block_on(async {
            let mut c = connect(&mut dut).await;
            let mut calls = Vec::new();
            for i in 0..CALLS {
                let (sock_a, sock_b) = (bind(PEER_A), bind(PEER_B));
                // Legs of two call ids: some bridges join legs of the two cores (cross-core
                // bridges, relayed through the hand-off queues and the engine's transmit queue).
                let a = simple_leg(&mut c, &format!("handoff-{i}-a"), None).await;
                let b = simple_leg(&mut c, &format!("handoff-{i}-b"), Some(sock_b.local_addr().expect("local_addr"))).await;
                bridge(&mut c, &a, &b).await;
                calls.push((sock_a, sock_b, a, b));
            }
            let cross_core = calls.iter().filter(|(_, _, a, b)| a.core != b.core).count();
            eprintln!("{cross_core} of {CALLS} bridges join legs of different cores");
            assert!(cross_core > 0, "every call's legs hashed to one core");
            // Warm-up: each core resolves the next hop by itself (ARP), one packet at a time.
            for (sock_a, sock_b, a, _) in &calls {
                sock_b.set_read_timeout(Some(Duration::from_millis(100))).expect("set_read_timeout");
                let deadline = Instant::now() + Duration::from_secs(5);
                let mut buf = [0u8; 2048];
                loop {
                    assert!(Instant::now() < deadline, "no packet relayed within 5 s");
                    sock_a.send_to(&rtp(0, SSRC, PAYLOAD), a.local).expect("send");
                    if sock_b.recv_from(&mut buf).is_ok() {
                        break;
                    }
                }
                while sock_b.recv_from(&mut buf).is_ok() {}
            }
            // Measured: N packets per call, interleaved across calls, paced; exact counts.
            for (_, sock_b, _, _) in &calls {
                sock_b.set_read_timeout(Some(Duration::from_secs(2))).expect("set_read_timeout");
            }
            let receivers: Vec<_> = calls
                .iter()
                .map(|(_, sock_b, _, b)| {
                    let sock_b = sock_b.try_clone().expect("clone socket");
                    let from_b = b.local;
                    std::thread::spawn(move || {
                        let mut got = Vec::new();
                        let mut buf = [0u8; 2048];
                        while got.len() < usize::from(N) {
                            match sock_b.recv_from(&mut buf) {
                                Ok((n, from)) if from == from_b => got.push(seq_of(&buf[..n])),
                                Ok(_) => {}
                                Err(_) => break,
                            }
                        }
                        got
                    })
                })
                .collect();
            for seq in 1..=N {
                for (sock_a, _, a, _) in &calls {
                    sock_a.send_to(&rtp(seq, SSRC, PAYLOAD), a.local).expect("send");
                }
                std::thread::sleep(Duration::from_millis(2));
            }
            for (i, r) in receivers.into_iter().enumerate() {
                let got = r.join().expect("receiver thread");
                assert_eq!(got.len(), usize::from(N), "call {i}: every packet relayed exactly once");
                assert_eq!(got, (1..=N).collect::<Vec<_>>(), "call {i}: in sequence");
            }
            // GetStats carries the drivers' counters.
            let drivers: Vec<_> = core_stats(&mut c).await.into_iter().map(|s| s.driver.expect("driver counters")).collect();
            let out: u64 = drivers.iter().map(|d| d.handoff_out).sum();
            let inn: u64 = drivers.iter().map(|d| d.handoff_in).sum();
            eprintln!("GetStats hand-offs: out {out}, in {inn}");
            assert!(out > 0, "no packet reported as handed off in GetStats: {drivers:?}");
            assert_eq!(inn, out, "GetStats: every hand-off handled: {drivers:?}");
        });
    });
    let status = dut.stop().expect("media-plane did not exit within 10 s of SIGTERM");
    assert!(status.success(), "media-plane exit: {status}; log:\n{}", dut.log());
    let log = dut.log();
    let (out, inn, full) = (driver_counter(&log, "handoff_out"), driver_counter(&log, "handoff_in"), driver_counter(&log, "handoff_full"));
    eprintln!("hand-offs: out {out}, in {inn}, full {full}");
    assert!(out > 0, "no packet landed on the wrong core's queue; log:\n{log}");
    assert_eq!((inn, full), (out, 0), "every packet handed off was handled by its owner");
}

#[test]
fn auto_backend_falls_back_to_udp_on_a_missing_interface_and_logs_why() {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("tokio runtime");
    rt.block_on(async {
        let (mp, mut c) = common::MediaPlane::start_with(40, &["--backend", "auto", "--interface", "mpnosuch0"]).await;
        let leg = simple_leg(&mut c, "fallback", None).await;
        assert!(leg.local.port() >= mp.ports.0, "legs are served by the UDP backend");
        let log = mp.log();
        assert!(log.contains("falling back to the UDP backend") && log.contains("mpnosuch0"), "log:\n{log}");
    });
}

#[test]
fn xdp_backend_without_an_interface_is_a_config_error_naming_the_key() {
    let (code, err) = common::run_to_exit(&["--backend", "xdp"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("interface:"), "{err}");
}
