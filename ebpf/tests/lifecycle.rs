//! What happens around the program's life that one process cannot show from inside: the link
//! dies with the process that holds it, and a process without capabilities is refused with the
//! capabilities named. Each test runs this test binary again as a child (selected with
//! `EBPF_TEST_CHILD`) in dut's namespace; the child is the process under test.
//! Root only; without privileges each test prints `skipped: …` and returns.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::*;
use ebpf::{SteerError, Steering, XdpMode};

const CHILD_ROLE: &str = "EBPF_TEST_CHILD";
const CHILD_IF: &str = "EBPF_TEST_IF";

/// This test binary, running only `test` (which then plays `role` on `ifname`).
fn child_command(test: &str, role: &str, ifname: &str) -> Command {
    let exe = std::env::current_exe().expect("own executable");
    let mut cmd = Command::new(exe);
    cmd.args([test, "--exact", "--nocapture", "--test-threads=1"]).env(CHILD_ROLE, role).env(CHILD_IF, ifname);
    cmd
}

fn role() -> Option<(String, String)> {
    Some((std::env::var(CHILD_ROLE).ok()?, std::env::var(CHILD_IF).ok()?))
}

/// Kills the child on drop, so a failed assertion leaves no process behind.
struct Reaped(Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn the_program_detaches_when_the_process_holding_it_is_killed() {
    if let Some((role, ifname)) = role() {
        assert_eq!(role, "attach-and-wait");
        let steering = Steering::attach(&ifname, MEDIA_MIN..=MEDIA_MAX, XdpMode::Auto).unwrap_or_else(|err| panic!("child attach: {err}"));
        println!("attached {:?}", steering.mode());
        // Bounded: the parent kills us long before this ends.
        std::thread::sleep(Duration::from_secs(60));
        return;
    }

    let Some(topo) = Topology::up("k") else {
        return;
    };
    let mut child = {
        let _ns = enter(&topo.dut()); // the child starts in this thread's namespace
        let test = "the_program_detaches_when_the_process_holding_it_is_killed";
        Reaped(child_command(test, "attach-and-wait", &topo.dut_if()).stdout(Stdio::piped()).spawn().expect("spawn child"))
    };
    // Wait for the child's "attached" line (or its exit: then the pipe closes). The harness prints
    // `test NAME ... ` before it, on the same line.
    let stdout = child.0.stdout.take().expect("child stdout");
    let attached = BufReader::new(stdout).lines().map_while(Result::ok).find(|line| line.contains("attached "));
    if attached.is_none() {
        let status = child.0.wait().expect("child status");
        panic!("child exited without attaching: {status}");
    }
    assert_eq!(topo.dut_xdp(), Some("xdp"), "child's program not attached");

    child.0.kill().expect("SIGKILL the child");
    child.0.wait().expect("reap the child");
    assert_eq!(wait_detached(&topo), None, "program outlived the process that attached it");
}

#[test]
fn a_process_without_capabilities_is_refused_with_the_capabilities_named() {
    if let Some((role, ifname)) = role() {
        assert_eq!(role, "no-caps");
        let err = Steering::attach(&ifname, MEDIA_MIN..=MEDIA_MAX, XdpMode::Auto).unwrap_err();
        println!("refused: {err}");
        match &err {
            SteerError::Permission { missing: Some(missing), .. } => {
                assert!(missing.contains("CAP_BPF") && missing.contains("CAP_NET_ADMIN"), "{err}");
            }
            _ => panic!("expected a permission error naming the capabilities, got: {err}"),
        }
        return;
    }

    let Some(topo) = Topology::up("n") else {
        return;
    };
    let out = {
        let _ns = enter(&topo.dut());
        let test = "a_process_without_capabilities_is_refused_with_the_capabilities_named";
        let mut setpriv = Command::new("setpriv");
        // Root keeps uid 0 but, with an empty bounding set, execs with no capability at all.
        setpriv.args(["--bounding-set", "-all", "--inh-caps", "-all", "--"]);
        let child = child_command(test, "no-caps", &topo.dut_if());
        setpriv.arg(child.get_program()).args(child.get_args());
        for (key, value) in child.get_envs() {
            if let Some(value) = value {
                setpriv.env(key, value);
            }
        }
        setpriv.output().expect("run setpriv (util-linux)")
    };
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "child without capabilities: {}\n{stdout}\n{}", out.status, String::from_utf8_lossy(&out.stderr));
    // The harness prints `test NAME ... ` before the child's own line, on the same line.
    let refusal = stdout.lines().find_map(|l| l.find("refused: ").map(|at| &l[at..])).expect("child's refusal line");
    println!("{refusal}");
    assert!(refusal.contains("bpf_object__load"), "{refusal}");
    assert_eq!(topo.dut_xdp(), None);
}
