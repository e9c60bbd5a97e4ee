//! The netns topology of `scripts/netns.sh` for one test, entering its namespaces, and bounded
//! waits. Each test builds its own topology under a prefix unique to the test and the process, so
//! tests run in parallel and a crashed run never collides with the next one.
//!
//! These tests need root (CAP_NET_ADMIN and CAP_SYS_ADMIN for namespaces, CAP_BPF for the program):
//! without it they print `skipped: …` and return.

#![allow(dead_code, reason = "each test file uses a different subset of the helpers")]

use std::fs::File;
use std::net::UdpSocket;
use std::path::PathBuf;
use std::process::{Command, Output};
use std::thread;
use std::time::{Duration, Instant};

use ebpf::{SteerError, SteerStats, Steering, XdpMode};
use nix::sched::{setns, CloneFlags};
use nix::sys::socket::{setsockopt, sockopt};

pub const SKIP: &str = "skipped: needs root (CAP_NET_ADMIN, CAP_BPF)";

/// Media port range the tests attach with; 5060 (SIP) is outside it.
pub const MEDIA_MIN: u16 = 30000;
pub const MEDIA_MAX: u16 = 30999;
pub const SIP_PORT: u16 = 5060;

pub const GEN_V4: &str = "10.77.1.1";
pub const DUT_V4: &str = "10.77.1.2";
pub const GEN_V6: &str = "fd77:1::1";
pub const DUT_V6: &str = "fd77:1::2";

/// gen ↔ dut ↔ sink, torn down on drop.
#[derive(Debug)]
pub struct Topology {
    pub prefix: String,
}

impl Topology {
    /// Builds the topology, or prints the skip message and returns `None` without privileges.
    pub fn up(tag: &str) -> Option<Self> {
        assert!(tag.len() <= 3 && tag.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit()));
        let prefix = format!("x{tag}{}", base36(std::process::id()));
        let out = netns_script("up", &prefix);
        match out.status.code() {
            Some(0) => Some(Self { prefix }),
            Some(77) => {
                eprintln!("{SKIP} ({})", String::from_utf8_lossy(&out.stderr).trim());
                None
            }
            _ => panic!(
                "scripts/netns.sh up {prefix} failed: {}\n{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        }
    }

    pub fn gen(&self) -> String {
        format!("{}gen", self.prefix)
    }
    pub fn dut(&self) -> String {
        format!("{}dut", self.prefix)
    }
    /// gen's end of the gen ↔ dut pair.
    pub fn gen_if(&self) -> String {
        format!("{}gen0", self.prefix)
    }
    /// dut's end of the gen ↔ dut pair: where the program is attached.
    pub fn dut_if(&self) -> String {
        format!("{}dut0", self.prefix)
    }

    /// `ip -n NS ARGS…`, asserting success; returns stdout.
    pub fn ip(&self, ns: &str, args: &[&str]) -> String {
        let out = Command::new("ip").arg("-n").arg(ns).args(args).output().expect("run ip");
        assert!(out.status.success(), "ip -n {ns} {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `ip netns exec NS PROGRAM ARGS…`, not asserting success.
    pub fn exec(&self, ns: &str, program: &str, args: &[&str]) -> Output {
        Command::new("ip")
            .args(["netns", "exec", ns, program])
            .args(args)
            .output()
            .unwrap_or_else(|err| panic!("ip netns exec {ns} {program}: {err}"))
    }

    /// The XDP part of `ip link show` for dut's interface: `None` if no program is attached, else
    /// `Some("xdp")` (native) or `Some("xdpgeneric")`.
    pub fn dut_xdp(&self) -> Option<&'static str> {
        let line = self.ip(&self.dut(), &["-o", "link", "show", "dev", &self.dut_if()]);
        if line.contains("prog/xdpgeneric") || line.contains(" xdpgeneric") {
            Some("xdpgeneric")
        } else if line.contains("prog/xdp ") || line.contains(" xdp ") {
            Some("xdp")
        } else {
            None
        }
    }

    /// Permanent neighbour entries between gen and dut (both families, both ways), so a burst of
    /// datagrams is not cut short by the few packets the kernel queues while it resolves a neighbour.
    pub fn pin_neighbours(&self) {
        let (gen, dut, gen_if, dut_if) = (self.gen(), self.dut(), self.gen_if(), self.dut_if());
        let gen_mac = mac_text(self.mac(&gen, &gen_if));
        let dut_mac = mac_text(self.mac(&dut, &dut_if));
        for addr in [DUT_V4, DUT_V6] {
            self.ip(&gen, &["neigh", "replace", addr, "lladdr", &dut_mac, "dev", &gen_if, "nud", "permanent"]);
        }
        for addr in [GEN_V4, GEN_V6] {
            self.ip(&dut, &["neigh", "replace", addr, "lladdr", &gen_mac, "dev", &dut_if, "nud", "permanent"]);
        }
    }

    /// The MAC address of `ifname` in `ns`.
    pub fn mac(&self, ns: &str, ifname: &str) -> [u8; 6] {
        let line = self.ip(ns, &["-o", "link", "show", "dev", ifname]);
        let text = line.split_whitespace().skip_while(|w| *w != "link/ether").nth(1).unwrap_or_else(|| panic!("no link/ether in {line}"));
        let mut mac = [0u8; 6];
        for (byte, hex) in mac.iter_mut().zip(text.split(':')) {
            *byte = u8::from_str_radix(hex, 16).expect("hex MAC");
        }
        mac
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        let out = netns_script("down", &self.prefix);
        if !out.status.success() {
            eprintln!("scripts/netns.sh down {}: {}", self.prefix, String::from_utf8_lossy(&out.stderr));
        }
    }
}

fn mac_text(mac: [u8; 6]) -> String {
    mac.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":")
}

fn netns_script(cmd: &str, prefix: &str) -> Output {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../scripts/netns.sh");
    Command::new("bash").arg(script).arg(cmd).arg(prefix).output().expect("run scripts/netns.sh")
}

fn base36(mut n: u32) -> String {
    let digits = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let mut out = Vec::new();
    loop {
        out.push(digits[(n % 36) as usize]);
        n /= 36;
        if n == 0 {
            break;
        }
    }
    out.reverse();
    String::from_utf8(out).expect("ascii")
}

/// While alive, the calling thread is in network namespace `ns`; dropping it returns the thread to
/// the namespace it was in. Sockets keep the namespace they were created in, and child processes
/// start in the spawning thread's.
#[derive(Debug)]
pub struct InNetns {
    previous: File,
}

pub fn enter(ns: &str) -> InNetns {
    let previous = File::open("/proc/thread-self/ns/net").expect("open own netns");
    let target = File::open(format!("/run/netns/{ns}")).expect("open netns");
    setns(&target, CloneFlags::CLONE_NEWNET).expect("setns into test namespace");
    InNetns { previous }
}

impl Drop for InNetns {
    fn drop(&mut self) {
        setns(&self.previous, CloneFlags::CLONE_NEWNET).expect("setns back");
    }
}

/// Attaches in dut's namespace; `None` (after printing the skip message) if the kernel refuses for
/// lack of privileges.
pub fn attach(topo: &Topology, mode: XdpMode) -> Option<Steering> {
    let _ns = enter(&topo.dut());
    match Steering::attach(&topo.dut_if(), MEDIA_MIN..=MEDIA_MAX, mode) {
        Ok(steering) => Some(steering),
        Err(err @ SteerError::Permission { .. }) => {
            eprintln!("{SKIP}: {err}");
            None
        }
        Err(err) => panic!("attach to {}: {err}", topo.dut_if()),
    }
}

/// A UDP socket bound in `ns`, with an 8 MiB receive buffer: a test sends its whole burst before
/// it reads, and a frame that went through native XDP on veth is charged a full page.
pub fn udp_socket(ns: &str, bind: &str) -> UdpSocket {
    let _ns = enter(ns);
    let socket = UdpSocket::bind(bind).unwrap_or_else(|err| panic!("bind {bind} in {ns}: {err}"));
    setsockopt(&socket, sockopt::RcvBufForce, &(8 << 20)).expect("SO_RCVBUFFORCE");
    socket.set_read_timeout(Some(Duration::from_millis(100))).expect("read timeout");
    socket
}

/// Sends `count` datagrams numbered 0.. from `from` to `to`.
pub fn send_numbered(from: &UdpSocket, to: &str, count: u32) {
    for seq in 0..count {
        from.send_to(&seq.to_be_bytes(), to).unwrap_or_else(|err| panic!("send to {to}: {err}"));
    }
}

/// Receives until `expected` datagrams arrived, or 3 s passed; returns the sequence numbers seen.
pub fn receive_up_to(socket: &UdpSocket, expected: usize) -> Vec<u32> {
    let deadline = Instant::now() + Duration::from_secs(3);
    let mut seen = Vec::new();
    let mut buf = [0u8; 64];
    while seen.len() < expected && Instant::now() < deadline {
        if let Ok((len, _)) = socket.recv_from(&mut buf) {
            if len == 4 {
                seen.push(u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]));
            }
        }
    }
    seen
}

/// Counts nothing arriving for `quiet` (used after the counters prove the packets were handled).
pub fn receive_for(socket: &UdpSocket, quiet: Duration) -> usize {
    let deadline = Instant::now() + quiet;
    let mut buf = [0u8; 64];
    let mut n = 0;
    while Instant::now() < deadline {
        if socket.recv_from(&mut buf).is_ok() {
            n += 1;
        }
    }
    n
}

/// Polls the program's counters until `done` holds or 3 s pass; returns the last reading.
pub fn stats_when(steering: &Steering, done: impl Fn(&SteerStats) -> bool) -> SteerStats {
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let stats = steering.stats().expect("read stats");
        if done(&stats) || Instant::now() >= deadline {
            return stats;
        }
        thread::sleep(Duration::from_millis(10));
    }
}

/// Polls `ip link` until dut's interface shows no XDP program, or 5 s pass.
pub fn wait_detached(topo: &Topology) -> Option<&'static str> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let xdp = topo.dut_xdp();
        if xdp.is_none() || Instant::now() >= deadline {
            return xdp;
        }
        thread::sleep(Duration::from_millis(20));
    }
}
