//! The PostgreSQL store against a real PostgreSQL (Debian `postgresql`) that the test starts in a
//! directory of its own: subscribers, settings, registrations, CDRs, accounts and credit holds
//! behave as on SQLite; eight connections (eight control planes) racing for one balance never hold
//! more than it has; the binary's CLI works against it.
//!
//! PostgreSQL is required when `REQUIRE_POSTGRES=1` (CI); without it the test skips with a
//! message. As root, the server runs as the `postgres` user (it refuses root). Port 26700.

use std::process::Command;

mod common;
use common::{pg, temp_dir, BIN};
use control_plane::billing::prepaid::{Account, Kind, Leg, Usage};
use control_plane::billing::rating::Rate;
use control_plane::store::{Cdr, HoldRequest, Ledger, LocationChange, PgStore, Store, StoredBinding, Subscriber};

const PORT: u16 = 26_700;

fn params() -> String {
    pg::params(PORT)
}

fn binding(contact: &str, expires: u64, reg_id: u32) -> StoredBinding {
    StoredBinding {
        aor: "alice@sip.test".into(),
        contact: contact.into(),
        expires_unix: expires,
        q_milli: 500,
        call_id: "c1".into(),
        cseq: 7,
        flow: "udp:127.0.0.1:5070".into(),
        path: String::new(),
        instance: None,
        reg_id,
    }
}

fn per_second(per_minute: i64) -> Rate {
    Rate { prefix: "44".into(), per_minute, connect_fee: 0, initial: 1, increment: 1, period: None, description: String::new() }
}

fn hold_request<'a>(account: &'a str, legs: &'a [Leg], node: &'a str, now_ms: u64) -> HoldRequest<'a> {
    HoldRequest { account, node, call: "c", legs, currency: "EUR", max_call_s: 60, now_ms, expires_ms: now_ms + 1_000_000 }
}

#[test]
fn the_postgresql_store_keeps_everything_the_sqlite_one_does_and_holds_are_safe_across_connections() {
    let Some(bin) = pg::bin_dir() else { return };
    let dir = temp_dir("postgres");
    let server = pg::start_postgres(&bin, &dir, PORT);
    let mut s = PgStore::open(&params()).expect("open");

    // Subscribers, their settings and algorithm.
    let alice = Subscriber::with_password("alice", "SIP.test", "sip.test", "secret");
    s.add_subscriber(&alice).expect("add");
    assert!(s.add_subscriber(&alice).is_err(), "added twice");
    let found = s.subscriber("alice", "sip.test").expect("read").expect("alice");
    assert_eq!((found.user.as_str(), found.ha1_md5.as_str(), found.auth_algorithm), ("alice", alice.ha1_md5.as_str(), None));
    assert_eq!(s.subscriber("bob", "sip.test").expect("read"), None);
    assert!(s.set_auth_algorithm("alice", "sip.test", Some(sip_core::digest::Algorithm::Sha256)).expect("set"));
    assert_eq!(s.subscriber("alice", "sip.test").expect("read").expect("alice").auth_algorithm, Some(sip_core::digest::Algorithm::Sha256));
    let mut settings = control_plane::settings::Settings::default();
    settings.set("forward.busy", "carol").expect("setting");
    settings.set("account", "acme").expect("setting");
    assert!(s.set_settings("alice", "sip.test", &settings).expect("set"));
    assert_eq!(s.settings("alice", "sip.test").expect("read"), Some(settings));
    assert_eq!(s.settings("nobody", "sip.test").expect("read"), None);
    // Registrations: upsert, replace, remove, two flows of one contact.
    s.apply(&[LocationChange::Upsert(binding("sip:a@1", 10, 0)), LocationChange::Upsert(binding("sip:a@2", 20, 0))]).expect("apply");
    s.apply(&[LocationChange::Upsert(binding("sip:a@1", 30, 0)), LocationChange::Upsert(binding("sip:a@9", 40, 1))]).expect("apply");
    s.apply(&[LocationChange::Remove { aor: "alice@sip.test".into(), contact: "sip:a@2".into(), reg_id: 0 }]).expect("apply");
    let mut bindings = s.bindings().expect("bindings");
    bindings.sort_by(|a, b| a.contact.cmp(&b.contact));
    assert_eq!(bindings, vec![binding("sip:a@1", 30, 0), binding("sip:a@9", 40, 1)]);
    // CDRs.
    let cdr = Cdr {
        call: 1,
        sip_call_id: "x@y".into(),
        leg: "call".into(),
        caller: "sip:alice@sip.test".into(),
        callee: "sip:0044@sip.test".into(),
        destination: "0044".into(),
        answered_by: String::new(),
        start_ms: 1_000,
        answer_ms: 2_000,
        end_ms: 5_000,
        duration_ms: 3_000,
        billed_s: 3,
        cost: 3_000,
        currency: "EUR".into(),
        rate_prefix: "44".into(),
        status: 200,
        cause: "completed".into(),
    };
    s.add_cdrs(&[cdr.clone(), Cdr { leg: "b".into(), end_ms: 6_000, ..cdr.clone() }]).expect("cdrs");
    assert_eq!(s.cdrs(5_500).expect("cdrs").len(), 1);
    assert_eq!(s.cdrs(0).expect("cdrs")[0], cdr);
    assert!(s.remove_subscriber("alice", "sip.test").expect("remove"));
    assert!(s.bindings().expect("bindings").is_empty(), "its registrations go with it");

    // Accounts and holds, as on SQLite.
    let mut acme = Account::new("acme", Kind::Prepaid, "EUR").expect("account");
    acme.balance = 100_000;
    acme.set("ani", "+4930111").expect("ani");
    s.add_account(&acme).expect("add account");
    assert!(s.add_account(&acme).is_err());
    assert_eq!(s.account_by_ani("4930111").expect("ani").map(|a| a.id), Some("acme".into()));
    let legs = vec![Leg { destination: "441611234567".into(), rate: Some(per_second(60_000)) }];
    let first = s.hold(&hold_request("acme", &legs, "cp1", 1_000)).expect("store").expect("granted");
    let second = s.hold(&hold_request("acme", &legs, "cp1", 2_000)).expect("store").expect("granted");
    assert_eq!((first.grant.held, second.grant.held), (60_000, 40_000));
    assert!(s.hold(&hold_request("acme", &legs, "cp1", 3_000)).expect("store").is_err(), "nothing left");
    assert_eq!(s.account("acme", 3_000).expect("read").expect("acme").1, Usage { held: 100_000, open: 2, last_minute: 2 });
    assert_eq!(s.settle(first.id, 30_000, 10_000).expect("settle"), Some(30_000));
    assert_eq!(s.settle(first.id, 30_000, 10_000).expect("settle"), None, "once");
    s.answered(second.id, 3_000).expect("answered");
    s.touch(&[second.id], 13_000).expect("touch");
    let settled = s.recover(Some("cp1"), 20_000).expect("recover");
    assert_eq!(settled.iter().map(|x| (x.id, x.cost)).collect::<Vec<_>>(), vec![(second.id, 10_000)], "answered at 3 s, last seen at 13 s");
    assert_eq!(s.credit("acme", 0).expect("credit"), Some(60_000));

    // Eight control planes race for one balance: 1.00 buys 16 calls of 60 s and one of 40 s.
    let mut race = Account::new("race", Kind::Prepaid, "EUR").expect("account");
    race.balance = 1_000_000;
    s.add_account(&race).expect("add");
    let threads: Vec<_> = (0..8)
        .map(|t| {
            std::thread::spawn(move || {
                let mut store = PgStore::open(&params()).expect("open");
                let legs = vec![Leg { destination: "441611234567".into(), rate: Some(per_second(60_000)) }];
                let node = format!("cp{t}");
                let mut granted = 0;
                for i in 0..10u64 {
                    if let Ok(h) = store.hold(&hold_request("race", &legs, &node, 1_000 + i)).expect("store") {
                        store.settle(h.id, h.grant.held, 5_000).expect("settle");
                        granted += 1;
                    }
                }
                granted
            })
        })
        .collect();
    let granted: u32 = threads.into_iter().map(|t| t.join().expect("thread")).sum();
    assert_eq!(granted, 17);
    assert_eq!(s.account("race", 10_000).expect("read").expect("race").0.balance, 0, "all of it, not a millionth more");

    // The binary's CLI on PostgreSQL.
    let config = dir.join("cp.toml");
    std::fs::write(&config, format!("[sip]\ndomains = [\"sip.test\"]\n[store]\npostgres = \"{}\"\n", params())).expect("config");
    let cli = |args: &[&str]| {
        let out = Command::new(BIN).arg("--config").arg(&config).args(args).output().expect("run");
        assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    cli(&["account", "add", "cli", "--balance", "2.50"]);
    cli(&["account", "credit", "cli", "1.25"]);
    assert!(cli(&["account", "show", "cli"]).starts_with("cli prepaid balance 3.750000 EUR"));
    cli(&["subscriber", "add", "--user", "bob", "--domain", "sip.test", "--password", "pw"]);
    assert!(cli(&["subscriber", "list"]).contains("bob@sip.test"));
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
}
