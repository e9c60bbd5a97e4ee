//! The `hiccup` binary: a short run in each mode prints one JSON line whose figures are consistent.

use std::process::Command;

fn run(mode: &str) -> serde_json::Value {
    let out = Command::new(env!("CARGO_BIN_EXE_hiccup")).args(["--mode", mode, "--seconds", "0.3"]).output().expect("run hiccup");
    assert!(out.status.success(), "hiccup failed: {}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("not one JSON line ({e}): {stdout}"))
}

#[test]
fn sleep_mode_records_every_wake_up_and_orders_its_percentiles() {
    let r = run("sleep");
    assert_eq!(r["mode"], "sleep");
    // 0.3 s of 100 µs sleeps: at least a few hundred wake-ups even on a slow machine.
    assert!(r["count"].as_u64().unwrap_or(0) >= 100, "{r}");
    let us = |k: &str| r["us"][k].as_f64().unwrap_or_else(|| panic!("us.{k} missing: {r}"));
    assert!(us("p50") <= us("p99") && us("p99") <= us("p999") && us("p999") <= us("max"), "{r}");
    assert_eq!(r["stalled_pct"].as_f64(), Some(0.0), "sleep mode does not count stalls: {r}");
}

#[test]
fn busy_mode_reports_stalls_as_a_share_of_the_window() {
    let r = run("busy");
    assert_eq!(r["mode"], "busy");
    let pct = r["stalled_pct"].as_f64().unwrap_or(-1.0);
    assert!((0.0..100.0).contains(&pct), "{r}");
}

#[test]
fn a_non_positive_duration_is_refused() {
    let out = Command::new(env!("CARGO_BIN_EXE_hiccup")).args(["--seconds", "0"]).output().expect("run hiccup");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--seconds"));
}
