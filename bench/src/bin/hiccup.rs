//! `hiccup`: how long this machine keeps a thread from running, the floor under any relay's tail
//! latency. Run it on an otherwise idle CPU before trusting latency percentiles from a shared VM.
//!
//! * `--mode sleep`: sleep `--interval-us` again and again and record how late each wake-up is
//!   (timer slack, plus waking a halted vCPU; this is what an event-driven relay pays per wake-up).
//! * `--mode busy`: spin reading the clock and record every gap longer than 20 µs (the thread or the
//!   vCPU taken away while runnable: interrupts, the host's scheduler).
//!
//! Shows progress each second and ends with a human line on stderr and one JSON line on stdout.
//! Bounded by `--seconds`.

use std::time::{Duration, Instant};

use bench::traffic::Latency;
use clap::{Parser, ValueEnum};
use hdrhistogram::Histogram;

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Mode {
    Sleep,
    Busy,
}

#[derive(Debug, Parser)]
#[command(version, about = "Measures how late a thread runs on this machine (wake-up lateness or stalls while spinning)")]
struct Args {
    #[arg(long, value_enum, default_value_t = Mode::Sleep)]
    mode: Mode,
    /// CPU to pin to.
    #[arg(long)]
    cpu: Option<usize>,
    #[arg(long, default_value_t = 10.0)]
    seconds: f64,
    /// Sleep length in sleep mode.
    #[arg(long, default_value_t = 100)]
    interval_us: u64,
}

/// Gaps shorter than this are not stalls in busy mode (a clock read and loop turn take well under 1 µs).
const BUSY_GAP: Duration = Duration::from_micros(20);

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    if let Some(cpu) = args.cpu {
        if !core_affinity::set_for_current(core_affinity::CoreId { id: cpu }) {
            return Err(format!("could not pin to CPU {cpu}").into());
        }
    }
    if !args.seconds.is_finite() || args.seconds <= 0.0 {
        return Err(format!("--seconds must be a positive number, not {}", args.seconds).into());
    }
    let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3)?;
    let window = Duration::from_secs_f64(args.seconds.clamp(0.1, 3600.0));
    let start = Instant::now();
    let end = start + window;
    let interval = Duration::from_micros(args.interval_us.max(1));
    let mut stalled = Duration::ZERO;
    let mut prev = start;
    let mut next_progress = start + Duration::from_secs(1);
    while prev < end {
        if prev >= next_progress {
            eprintln!("  {:>5.1} s  {} samples", prev.duration_since(start).as_secs_f64(), hist.len());
            next_progress += Duration::from_secs(1);
            // The progress line itself is not a stall.
            prev = Instant::now();
        }
        match args.mode {
            Mode::Sleep => {
                let before = Instant::now();
                std::thread::sleep(interval);
                prev = Instant::now();
                let late = prev.duration_since(before).saturating_sub(interval);
                hist.record(late.as_nanos().max(1) as u64)?;
            }
            Mode::Busy => {
                let now = Instant::now();
                let gap = now.duration_since(prev);
                if gap > BUSY_GAP {
                    hist.record(gap.as_nanos() as u64)?;
                    stalled += gap;
                }
                prev = now;
            }
        }
    }
    let us = Latency::from_ns(&hist);
    let over_1ms = hist.count_between(1_000_000, u64::MAX);
    let (what, n) = match args.mode {
        Mode::Sleep => ("wake-ups, lateness", hist.len()),
        Mode::Busy => ("stalls > 20 µs, length", hist.len()),
    };
    eprintln!(
        "hiccup {:?} on CPU {}: {n} {what} µs p50 {:.0} p90 {:.0} p99 {:.0} p99.9 {:.0} max {:.0}; {over_1ms} over 1 ms; stalled {:.2}% of {:.1} s",
        args.mode,
        args.cpu.map_or("any".into(), |c| c.to_string()),
        us.p50,
        us.p90,
        us.p99,
        us.p999,
        us.max,
        stalled.as_secs_f64() * 100.0 / window.as_secs_f64(),
        window.as_secs_f64(),
    );
    let json = serde_json::json!({
        "tool": "hiccup",
        "mode": format!("{:?}", args.mode).to_lowercase(),
        "cpu": args.cpu,
        "seconds": window.as_secs_f64(),
        "count": n,
        "us": us,
        "over_1ms": over_1ms,
        "stalled_pct": stalled.as_secs_f64() * 100.0 / window.as_secs_f64(),
    });
    println!("{json}");
    Ok(())
}
