//! Prepaid authorisations and CDR writes per second on the SQLite store, as the control plane
//! does them for a call out through a trunk: hold (one write transaction with the account's
//! usage), answered, settle, and the call's three detail records.
//!
//! ```text
//! cargo run --release -p control-plane --example ledger_bench -- [CALLS] [ACCOUNTS] [CONNECTIONS]
//! ```
//!
//! CONNECTIONS threads with their own connection to one database file share the work (several
//! control planes on one host). With `LEDGER_BENCH_POSTGRES="host=… port=… user=… dbname=…"`,
//! the same on PostgreSQL (its tables emptied first). Prints a human summary and one JSON line.

use std::time::Instant;

use control_plane::billing::prepaid::{Account, Kind, Leg};
use control_plane::billing::rating::Rate;
use control_plane::store::{Cdr, HoldRequest, PgStore, SqliteStore, Store};

fn open(path: &std::path::Path) -> Box<dyn Store> {
    match std::env::var("LEDGER_BENCH_POSTGRES") {
        Ok(params) => Box::new(PgStore::open(&params).expect("open PostgreSQL")),
        Err(_) => Box::new(SqliteStore::open(path).expect("open")),
    }
}

fn main() {
    let args: Vec<u64> = std::env::args().skip(1).filter_map(|a| a.parse().ok()).collect();
    let calls = args.first().copied().unwrap_or(20_000);
    let accounts = args.get(1).copied().unwrap_or(100).max(1);
    let connections = args.get(2).copied().unwrap_or(1).max(1);
    let dir = std::env::temp_dir().join(format!("ledger-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let path = dir.join("bench.db");
    let postgres = std::env::var("LEDGER_BENCH_POSTGRES").is_ok();
    if let Ok(params) = std::env::var("LEDGER_BENCH_POSTGRES") {
        PgStore::open(&params).expect("create the tables");
        let mut client = postgres::Client::connect(&params, postgres::NoTls).expect("connect");
        client.batch_execute("TRUNCATE account, reservation, cdr").expect("empty the tables");
    }
    {
        let mut store = open(&path);
        for i in 0..accounts {
            let mut a = Account::new(&format!("acct{i}"), Kind::Prepaid, "EUR").expect("account");
            a.balance = 1_000_000_000_000;
            store.add_account(&a).expect("add");
        }
    }
    let rate = Rate {
        prefix: "44".into(),
        per_minute: 12_000,
        connect_fee: 0,
        initial: 60,
        increment: 6,
        period: None,
        description: String::new(),
    };
    let start = Instant::now();
    let per = calls / connections;
    let threads: Vec<_> = (0..connections)
        .map(|t| {
            let (path, rate) = (path.clone(), rate.clone());
            std::thread::spawn(move || {
                let mut store = open(&path);
                let legs = [Leg { destination: "441611234567".into(), rate: Some(rate) }];
                let (mut hold_us, mut settle_us, mut cdr_us) = (Vec::new(), Vec::new(), Vec::new());
                for i in 0..per {
                    let account = format!("acct{}", (t * per + i) % accounts);
                    let now_ms = 1_800_000_000_000 + i * 10;
                    let call = format!("bench-{t}-{i}");
                    let request = HoldRequest {
                        account: &account,
                        node: "bench",
                        call: &call,
                        legs: &legs,
                        currency: "EUR",
                        max_call_s: 3600,
                        now_ms,
                        expires_ms: now_ms + 5_000_000,
                    };
                    let t0 = Instant::now();
                    let hold = store.hold(&request).expect("store").expect("granted");
                    hold_us.push(t0.elapsed().as_micros() as u64);
                    let t1 = Instant::now();
                    store.answered(hold.id, now_ms + 2_000).expect("answered");
                    store.settle(hold.id, 24_000, now_ms + 120_000).expect("settle");
                    settle_us.push(t1.elapsed().as_micros() as u64);
                    let base = Cdr {
                        call: i,
                        sip_call_id: call.clone(),
                        leg: "call".into(),
                        caller: "sip:alice@sip.test".into(),
                        callee: "sip:00441611234567@sip.test".into(),
                        destination: "00441611234567".into(),
                        answered_by: "sip:00441611234567@192.0.2.30".into(),
                        start_ms: now_ms,
                        answer_ms: now_ms + 2_000,
                        end_ms: now_ms + 120_000,
                        duration_ms: 118_000,
                        billed_s: 120,
                        cost: 24_000,
                        currency: "EUR".into(),
                        rate_prefix: "44".into(),
                        status: 200,
                        cause: "completed".into(),
                    };
                    let cdrs = [Cdr { leg: "a".into(), ..base.clone() }, Cdr { leg: "b".into(), ..base.clone() }, base];
                    let t2 = Instant::now();
                    store.add_cdrs(&cdrs).expect("cdrs");
                    cdr_us.push(t2.elapsed().as_micros() as u64);
                }
                (hold_us, settle_us, cdr_us)
            })
        })
        .collect();
    let mut all = (Vec::new(), Vec::new(), Vec::new());
    for t in threads {
        let (h, s, c) = t.join().expect("thread");
        all.0.extend(h);
        all.1.extend(s);
        all.2.extend(c);
    }
    let elapsed = start.elapsed().as_secs_f64();
    let done = per * connections;
    let pct = |v: &mut Vec<u64>, p: f64| {
        v.sort_unstable();
        v.get(((v.len() as f64 - 1.0) * p) as usize).copied().unwrap_or(0)
    };
    let (h50, h99) = (pct(&mut all.0, 0.5), pct(&mut all.0, 0.99));
    let (s50, s99) = (pct(&mut all.1, 0.5), pct(&mut all.1, 0.99));
    let (c50, c99) = (pct(&mut all.2, 0.5), pct(&mut all.2, 0.99));
    let rate = done as f64 / elapsed;
    println!(
        "{}, {connections} connection(s), {accounts} accounts: {done} calls in {elapsed:.2} s = {rate:.0} calls/s \
         (hold + answered + settle + 3 CDR rows each); hold p50 {h50} µs p99 {h99} µs, answered+settle p50 {s50} µs p99 {s99} µs, CDRs p50 {c50} µs p99 {c99} µs",
        if postgres { "PostgreSQL" } else { "SQLite (WAL, synchronous=NORMAL)" }
    );
    println!(
        "{{\"store\":\"{}\",\"connections\":{connections},\"accounts\":{accounts},\"calls\":{done},\"seconds\":{elapsed:.3},\"calls_per_s\":{rate:.0},\"authorisations_per_s\":{rate:.0},\"cdr_rows_per_s\":{:.0},\"hold_p50_us\":{h50},\"hold_p99_us\":{h99},\"settle_p50_us\":{s50},\"settle_p99_us\":{s99},\"cdr_p50_us\":{c50},\"cdr_p99_us\":{c99}}}",
        if postgres { "postgresql" } else { "sqlite" },
        rate * 3.0
    );
    let _ = std::fs::remove_dir_all(&dir);
}
