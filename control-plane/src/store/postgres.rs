//! The PostgreSQL store (`[store] postgres = "host=… user=… dbname=…"`): the same tables as the
//! SQLite store, for control planes on several hosts sharing subscribers, accounts, credit holds
//! and CDRs.
//!
//! The `postgres` crate's client runs its own tokio runtime, which cannot be blocked on from the
//! control plane's; so one OS thread owns the connection and the store's calls are jobs sent to it
//! (the caller waits for the answer, as it waits for SQLite's disk). A lost connection is made
//! again on the next call. Holds lock the account's row (`SELECT … FOR UPDATE`), so control
//! planes on different hosts never hold the same money twice.

use std::sync::mpsc;

use postgres::{Client, NoTls, Row};

use super::ledger::{Hold, HoldRequest, Ledger, Settled};
use super::{sql_int, Cdr, LocationChange, Store, StoreError, StoredBinding, Subscriber};
use crate::billing::prepaid::{self, Account, Denial, Kind, Usage};
use crate::billing::rating::{Micros, Rate};
use crate::settings::Settings;
use sip_core::digest::Algorithm;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS subscriber (
    username TEXT NOT NULL, domain TEXT NOT NULL, ha1_md5 TEXT NOT NULL, ha1_sha256 TEXT NOT NULL,
    ha1_sha512_256 TEXT NOT NULL, auth_algorithm TEXT, settings TEXT, PRIMARY KEY (username, domain));
CREATE TABLE IF NOT EXISTS location (
    aor TEXT NOT NULL, contact TEXT NOT NULL, expires BIGINT NOT NULL, q INTEGER NOT NULL, call_id TEXT NOT NULL,
    cseq BIGINT NOT NULL, flow TEXT NOT NULL, path TEXT NOT NULL DEFAULT '', instance TEXT,
    reg_id BIGINT NOT NULL DEFAULT 0, PRIMARY KEY (aor, contact, reg_id));
CREATE TABLE IF NOT EXISTS cdr (
    id BIGSERIAL PRIMARY KEY, call BIGINT NOT NULL, sip_call_id TEXT NOT NULL, leg TEXT NOT NULL, caller TEXT NOT NULL,
    callee TEXT NOT NULL, destination TEXT NOT NULL, answered_by TEXT NOT NULL, start_ms BIGINT NOT NULL,
    answer_ms BIGINT NOT NULL, end_ms BIGINT NOT NULL, duration_ms BIGINT NOT NULL, billed_s BIGINT NOT NULL,
    cost BIGINT NOT NULL, currency TEXT NOT NULL, rate_prefix TEXT NOT NULL, status INTEGER NOT NULL, cause TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS cdr_end ON cdr (end_ms);
CREATE TABLE IF NOT EXISTS account (
    id TEXT PRIMARY KEY, kind TEXT NOT NULL, balance BIGINT NOT NULL, credit_limit BIGINT NOT NULL DEFAULT 0,
    currency TEXT NOT NULL, max_concurrent BIGINT NOT NULL DEFAULT 0, max_per_minute BIGINT NOT NULL DEFAULT 0,
    max_call_cost BIGINT NOT NULL DEFAULT 0, blocked TEXT NOT NULL DEFAULT '', enabled BOOLEAN NOT NULL DEFAULT TRUE,
    ani TEXT NOT NULL DEFAULT '', pin_hash TEXT NOT NULL DEFAULT '');
CREATE TABLE IF NOT EXISTS reservation (
    id BIGSERIAL PRIMARY KEY, account TEXT NOT NULL, node TEXT NOT NULL, call TEXT NOT NULL, destination TEXT NOT NULL,
    rates TEXT NOT NULL, amount BIGINT NOT NULL, max_seconds BIGINT NOT NULL, created_ms BIGINT NOT NULL,
    answered_ms BIGINT NOT NULL DEFAULT 0, touched_ms BIGINT NOT NULL, expires_ms BIGINT NOT NULL,
    settled_ms BIGINT, cost BIGINT);
CREATE INDEX IF NOT EXISTS reservation_open ON reservation (account) WHERE settled_ms IS NULL;
CREATE INDEX IF NOT EXISTS reservation_created ON reservation (account, created_ms);
";

type Job = Box<dyn FnOnce(&mut Option<Client>, &str) + Send>;

/// The PostgreSQL store: a handle to the thread that owns the connection.
#[derive(Debug)]
pub struct PgStore {
    jobs: mpsc::Sender<Job>,
}

fn pg(e: postgres::Error) -> StoreError {
    StoreError::Postgres(e.to_string())
}

/// How long the control plane waits for one store call before it counts it failed.
const CALL_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

fn connect(params: &str) -> Result<Client, StoreError> {
    let mut config: postgres::Config = params.parse().map_err(pg)?;
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(std::time::Duration::from_secs(3));
    }
    config.keepalives(true);
    config.keepalives_idle(std::time::Duration::from_secs(30));
    let mut client = config.connect(NoTls).map_err(pg)?;
    // A wait on another node's lock, a slow statement or a transaction left open end with an
    // error rather than stopping the SIP core.
    client
        .batch_execute("SET lock_timeout = '3s'; SET statement_timeout = '5s'; SET idle_in_transaction_session_timeout = '10s'")
        .map_err(pg)?;
    client.batch_execute(SCHEMA).map_err(pg)?;
    Ok(client)
}

impl PgStore {
    /// Connects with `params` (libpq style: `host=… port=… user=… dbname=… password=…`) and
    /// creates the tables that are missing.
    pub fn open(params: &str) -> Result<Self, StoreError> {
        let client = connect(params)?;
        let (jobs, queue) = mpsc::channel::<Job>();
        let params = params.to_owned();
        std::thread::Builder::new()
            .name("postgres".into())
            .spawn(move || {
                let mut client = Some(client);
                while let Ok(job) = queue.recv() {
                    job(&mut client, &params);
                }
            })
            .map_err(|e| StoreError::Postgres(format!("cannot start the store's thread: {e}")))?;
        Ok(PgStore { jobs })
    }

    /// Runs `f` on the connection's thread (connecting again if the last call lost it).
    fn run<T: Send + 'static>(&self, f: impl FnOnce(&mut Client) -> Result<T, StoreError> + Send + 'static) -> Result<T, StoreError> {
        let (tx, rx) = mpsc::sync_channel(1);
        let waiting = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
        let still = waiting.clone();
        let job: Job = Box::new(move |client, params| {
            // Its caller gave up (timed out): not done late, behind its back.
            if !still.load(std::sync::atomic::Ordering::Acquire) {
                return;
            }
            if client.as_ref().is_none_or(Client::is_closed) {
                *client = connect(params).map_err(|e| tracing::warn!(error = %e, "PostgreSQL: cannot connect again")).ok();
            }
            let result = match client.as_mut() {
                Some(c) => f(c),
                None => Err(StoreError::Postgres("not connected".into())),
            };
            let _ = tx.send(result);
        });
        self.jobs.send(job).map_err(|_| StoreError::Postgres("the store's thread stopped".into()))?;
        rx.recv_timeout(CALL_TIMEOUT).map_err(|_| {
            waiting.store(false, std::sync::atomic::Ordering::Release);
            StoreError::Postgres("no answer from the store's thread in time".into())
        })?
    }
}

fn subscriber_row(row: &Row) -> Subscriber {
    Subscriber {
        user: row.get(0),
        domain: row.get(1),
        ha1_md5: row.get(2),
        ha1_sha256: row.get(3),
        ha1_sha512_256: row.get(4),
        auth_algorithm: row.get::<_, Option<String>>(5).as_deref().and_then(Algorithm::from_token),
    }
}

fn binding_row(r: &postgres::Row) -> StoredBinding {
    StoredBinding {
        aor: r.get(0),
        contact: r.get(1),
        expires_unix: u(r.get(2)),
        q_milli: u16::try_from(r.get::<_, i32>(3)).unwrap_or(1000),
        call_id: r.get(4),
        cseq: u32::try_from(r.get::<_, i64>(5)).unwrap_or(0),
        flow: r.get(6),
        path: r.get(7),
        instance: r.get(8),
        reg_id: u32::try_from(r.get::<_, i64>(9)).unwrap_or(0),
    }
}

fn u(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

fn cdr_row(row: &Row) -> Cdr {
    Cdr {
        call: u(row.get(0)),
        sip_call_id: row.get(1),
        leg: row.get(2),
        caller: row.get(3),
        callee: row.get(4),
        destination: row.get(5),
        answered_by: row.get(6),
        start_ms: u(row.get(7)),
        answer_ms: u(row.get(8)),
        end_ms: u(row.get(9)),
        duration_ms: u(row.get(10)),
        billed_s: u(row.get(11)),
        cost: row.get(12),
        currency: row.get(13),
        rate_prefix: row.get(14),
        status: u16::try_from(row.get::<_, i32>(15)).unwrap_or(0),
        cause: row.get(16),
    }
}

const ACCOUNT_COLUMNS: &str =
    "id, kind, balance, credit_limit, currency, max_concurrent, max_per_minute, max_call_cost, blocked, enabled, ani, pin_hash";

fn account_row(row: &Row) -> Account {
    let list = |s: String| s.split(',').filter(|p| !p.is_empty()).map(str::to_owned).collect();
    Account {
        id: row.get(0),
        kind: if row.get::<_, String>(1) == "postpaid" { Kind::Postpaid } else { Kind::Prepaid },
        balance: row.get(2),
        credit_limit: row.get(3),
        currency: row.get(4),
        max_concurrent: u32::try_from(row.get::<_, i64>(5)).unwrap_or(0),
        max_per_minute: u32::try_from(row.get::<_, i64>(6)).unwrap_or(0),
        max_call_cost: row.get(7),
        blocked: list(row.get(8)),
        enabled: row.get(9),
        ani: list(row.get(10)),
        pin_hash: row.get(11),
    }
}

fn usage(c: &mut impl postgres::GenericClient, account: &str, now_ms: u64) -> Result<Usage, postgres::Error> {
    // One round trip: what open holds keep, how many, and how many began in the last minute.
    let row = c.query_one(
        "SELECT COALESCE(SUM(amount) FILTER (WHERE settled_ms IS NULL), 0)::BIGINT, \
                COUNT(*) FILTER (WHERE settled_ms IS NULL), COUNT(*) FILTER (WHERE created_ms > $2) \
         FROM reservation WHERE account = $1 AND (settled_ms IS NULL OR created_ms > $2)",
        &[&account, &sql_int(now_ms.saturating_sub(60_000))],
    )?;
    Ok(Usage {
        held: row.get(0),
        open: u32::try_from(row.get::<_, i64>(1)).unwrap_or(u32::MAX),
        last_minute: u32::try_from(row.get::<_, i64>(2)).unwrap_or(u32::MAX),
    })
}

fn settle_in(tx: &mut postgres::Transaction<'_>, id: i64, cost: Micros, at_ms: u64) -> Result<Option<Micros>, postgres::Error> {
    let Some(row) = tx.query_opt("SELECT account, amount FROM reservation WHERE id = $1 AND settled_ms IS NULL FOR UPDATE", &[&id])? else {
        return Ok(None);
    };
    let (account, amount): (String, i64) = (row.get(0), row.get(1));
    let charged = cost.clamp(0, amount);
    tx.execute("UPDATE account SET balance = balance - $1 WHERE id = $2", &[&charged, &account])?;
    tx.execute("UPDATE reservation SET settled_ms = $1, cost = $2 WHERE id = $3", &[&sql_int(at_ms), &charged, &id])?;
    Ok(Some(charged))
}

impl Store for PgStore {
    fn subscriber(&mut self, user: &str, domain: &str) -> Result<Option<Subscriber>, StoreError> {
        let (user, domain) = (user.to_owned(), domain.to_ascii_lowercase());
        self.run(move |c| {
            let row = c
                .query_opt(
                    "SELECT username, domain, ha1_md5, ha1_sha256, ha1_sha512_256, auth_algorithm FROM subscriber WHERE username = $1 AND domain = $2",
                    &[&user, &domain],
                )
                .map_err(pg)?;
            Ok(row.as_ref().map(subscriber_row))
        })
    }

    fn add_subscriber(&mut self, s: &Subscriber) -> Result<(), StoreError> {
        let s = s.clone();
        self.run(move |c| {
            let n = c
                .execute(
                    "INSERT INTO subscriber (username, domain, ha1_md5, ha1_sha256, ha1_sha512_256, auth_algorithm) \
                     VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING",
                    &[&s.user, &s.domain, &s.ha1_md5, &s.ha1_sha256, &s.ha1_sha512_256, &s.auth_algorithm.map(Algorithm::name)],
                )
                .map_err(pg)?;
            if n == 0 {
                return Err(StoreError::AlreadyExists(format!("subscriber {}@{}", s.user, s.domain)));
            }
            Ok(())
        })
    }

    fn set_auth_algorithm(&mut self, user: &str, domain: &str, algorithm: Option<Algorithm>) -> Result<bool, StoreError> {
        let (user, domain) = (user.to_owned(), domain.to_ascii_lowercase());
        self.run(move |c| {
            let n = c
                .execute(
                    "UPDATE subscriber SET auth_algorithm = $3 WHERE username = $1 AND domain = $2",
                    &[&user, &domain, &algorithm.map(Algorithm::name)],
                )
                .map_err(pg)?;
            Ok(n > 0)
        })
    }

    fn settings(&mut self, user: &str, domain: &str) -> Result<Option<Settings>, StoreError> {
        let (user, domain) = (user.to_owned(), domain.to_ascii_lowercase());
        self.run(move |c| {
            let row = c.query_opt("SELECT settings FROM subscriber WHERE username = $1 AND domain = $2", &[&user, &domain]).map_err(pg)?;
            match row.map(|r| r.get::<_, Option<String>>(0)) {
                None => Ok(None),
                Some(None) => Ok(Some(Settings::default())),
                Some(Some(json)) => {
                    Settings::from_json(&json).map(Some).map_err(|e| StoreError::BadSettings(format!("{user}@{domain}"), e))
                }
            }
        })
    }

    fn set_settings(&mut self, user: &str, domain: &str, settings: &Settings) -> Result<bool, StoreError> {
        let (user, domain, json) = (user.to_owned(), domain.to_ascii_lowercase(), settings.to_json());
        self.run(move |c| {
            let n = c
                .execute("UPDATE subscriber SET settings = $3 WHERE username = $1 AND domain = $2", &[&user, &domain, &json])
                .map_err(pg)?;
            Ok(n > 0)
        })
    }

    fn remove_subscriber(&mut self, user: &str, domain: &str) -> Result<bool, StoreError> {
        let (user, domain) = (user.to_owned(), domain.to_owned());
        self.run(move |c| {
            let mut tx = c.transaction().map_err(pg)?;
            let n = tx.execute("DELETE FROM subscriber WHERE username = $1 AND domain = $2", &[&user, &domain]).map_err(pg)?;
            tx.execute("DELETE FROM location WHERE aor = $1", &[&format!("{user}@{domain}")]).map_err(pg)?;
            tx.commit().map_err(pg)?;
            Ok(n > 0)
        })
    }

    fn subscribers(&mut self) -> Result<Vec<Subscriber>, StoreError> {
        self.run(|c| {
            let rows = c
                .query(
                    "SELECT username, domain, ha1_md5, ha1_sha256, ha1_sha512_256, auth_algorithm FROM subscriber ORDER BY domain, username",
                    &[],
                )
                .map_err(pg)?;
            Ok(rows.iter().map(subscriber_row).collect())
        })
    }

    fn apply(&mut self, changes: &[LocationChange]) -> Result<(), StoreError> {
        if changes.is_empty() {
            return Ok(());
        }
        let changes = changes.to_vec();
        self.run(move |c| {
            let mut tx = c.transaction().map_err(pg)?;
            for change in &changes {
                match change {
                    LocationChange::Upsert(b) => {
                        tx.execute(
                            "INSERT INTO location (aor, contact, expires, q, call_id, cseq, flow, path, instance, reg_id) \
                             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) \
                             ON CONFLICT (aor, contact, reg_id) DO UPDATE SET expires = EXCLUDED.expires, q = EXCLUDED.q, \
                             call_id = EXCLUDED.call_id, cseq = EXCLUDED.cseq, flow = EXCLUDED.flow, path = EXCLUDED.path, \
                             instance = EXCLUDED.instance",
                            &[
                                &b.aor,
                                &b.contact,
                                &sql_int(b.expires_unix),
                                &i32::from(b.q_milli),
                                &b.call_id,
                                &i64::from(b.cseq),
                                &b.flow,
                                &b.path,
                                &b.instance,
                                &i64::from(b.reg_id),
                            ],
                        )
                        .map_err(pg)?;
                    }
                    LocationChange::Remove { aor, contact, reg_id } => {
                        tx.execute(
                            "DELETE FROM location WHERE aor = $1 AND contact = $2 AND reg_id = $3",
                            &[aor, contact, &i64::from(*reg_id)],
                        )
                        .map_err(pg)?;
                    }
                }
            }
            tx.commit().map_err(pg)
        })
    }

    fn bindings(&mut self) -> Result<Vec<StoredBinding>, StoreError> {
        self.run(|c| {
            let rows = c
                .query("SELECT aor, contact, expires, q, call_id, cseq, flow, path, instance, reg_id FROM location ORDER BY aor", &[])
                .map_err(pg)?;
            Ok(rows.iter().map(binding_row).collect())
        })
    }

    fn bindings_of(&mut self, aor: &str) -> Result<Vec<StoredBinding>, StoreError> {
        let aor = aor.to_owned();
        self.run(move |c| {
            let rows = c
                .query("SELECT aor, contact, expires, q, call_id, cseq, flow, path, instance, reg_id FROM location WHERE aor = $1", &[&aor])
                .map_err(pg)?;
            Ok(rows.iter().map(binding_row).collect())
        })
    }

    fn add_cdrs(&mut self, cdrs: &[Cdr]) -> Result<(), StoreError> {
        let cdrs = cdrs.to_vec();
        self.run(move |c| {
            let mut tx = c.transaction().map_err(pg)?;
            let stmt = tx
                .prepare(
                    "INSERT INTO cdr (call, sip_call_id, leg, caller, callee, destination, answered_by, start_ms, answer_ms, end_ms, \
                     duration_ms, billed_s, cost, currency, rate_prefix, status, cause) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17)",
                )
                .map_err(pg)?;
            for r in &cdrs {
                tx.execute(
                    &stmt,
                    &[
                        &sql_int(r.call),
                        &r.sip_call_id,
                        &r.leg,
                        &r.caller,
                        &r.callee,
                        &r.destination,
                        &r.answered_by,
                        &sql_int(r.start_ms),
                        &sql_int(r.answer_ms),
                        &sql_int(r.end_ms),
                        &sql_int(r.duration_ms),
                        &sql_int(r.billed_s),
                        &r.cost,
                        &r.currency,
                        &r.rate_prefix,
                        &i32::from(r.status),
                        &r.cause,
                    ],
                )
                .map_err(pg)?;
            }
            tx.commit().map_err(pg)
        })
    }

    fn cdrs(&mut self, since_ms: u64) -> Result<Vec<Cdr>, StoreError> {
        self.run(move |c| {
            let rows = c
                .query(
                    "SELECT call, sip_call_id, leg, caller, callee, destination, answered_by, start_ms, answer_ms, end_ms, \
                     duration_ms, billed_s, cost, currency, rate_prefix, status, cause FROM cdr WHERE end_ms >= $1 ORDER BY end_ms, id",
                    &[&sql_int(since_ms)],
                )
                .map_err(pg)?;
            Ok(rows.iter().map(cdr_row).collect())
        })
    }
}

impl Ledger for PgStore {
    fn add_account(&mut self, a: &Account) -> Result<(), StoreError> {
        let a = a.clone();
        self.run(move |c| {
            let n = c
                .execute(
                    &format!("INSERT INTO account ({ACCOUNT_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12) ON CONFLICT DO NOTHING"),
                    &[
                        &a.id,
                        &a.kind.as_str(),
                        &a.balance,
                        &a.credit_limit,
                        &a.currency,
                        &i64::from(a.max_concurrent),
                        &i64::from(a.max_per_minute),
                        &a.max_call_cost,
                        &a.blocked.join(","),
                        &a.enabled,
                        &a.ani.join(","),
                        &a.pin_hash,
                    ],
                )
                .map_err(pg)?;
            if n == 0 {
                return Err(StoreError::AlreadyExists(format!("account {}", a.id)));
            }
            Ok(())
        })
    }

    fn update_account(&mut self, a: &Account) -> Result<bool, StoreError> {
        let a = a.clone();
        self.run(move |c| {
            let n = c
                .execute(
                    "UPDATE account SET kind = $2, credit_limit = $3, currency = $4, max_concurrent = $5, max_per_minute = $6, \
                     max_call_cost = $7, blocked = $8, enabled = $9, ani = $10, pin_hash = $11 WHERE id = $1",
                    &[
                        &a.id,
                        &a.kind.as_str(),
                        &a.credit_limit,
                        &a.currency,
                        &i64::from(a.max_concurrent),
                        &i64::from(a.max_per_minute),
                        &a.max_call_cost,
                        &a.blocked.join(","),
                        &a.enabled,
                        &a.ani.join(","),
                        &a.pin_hash,
                    ],
                )
                .map_err(pg)?;
            Ok(n > 0)
        })
    }

    fn account(&mut self, id: &str, now_ms: u64) -> Result<Option<(Account, Usage)>, StoreError> {
        let id = id.to_owned();
        self.run(move |c| {
            let Some(row) = c.query_opt(&format!("SELECT {ACCOUNT_COLUMNS} FROM account WHERE id = $1"), &[&id]).map_err(pg)? else {
                return Ok(None);
            };
            Ok(Some((account_row(&row), usage(c, &id, now_ms).map_err(pg)?)))
        })
    }

    fn accounts(&mut self) -> Result<Vec<Account>, StoreError> {
        self.run(|c| {
            Ok(c.query(&format!("SELECT {ACCOUNT_COLUMNS} FROM account ORDER BY id"), &[]).map_err(pg)?.iter().map(account_row).collect())
        })
    }

    fn account_by_ani(&mut self, number: &str) -> Result<Option<Account>, StoreError> {
        let n = number.trim_start_matches('+').to_owned();
        if n.is_empty() || !n.chars().all(|c| c.is_ascii_digit()) {
            return Ok(None);
        }
        self.run(move |c| {
            let rows = c
                .query(
                    &format!(
                        "SELECT {ACCOUNT_COLUMNS} FROM account WHERE $1 = ANY(string_to_array(replace(ani, '+', ''), ',')) ORDER BY id"
                    ),
                    &[&n],
                )
                .map_err(pg)?;
            Ok(rows.first().map(account_row))
        })
    }

    fn credit(&mut self, id: &str, amount: Micros) -> Result<Option<Micros>, StoreError> {
        let id = id.to_owned();
        self.run(move |c| {
            let row =
                c.query_opt("UPDATE account SET balance = balance + $1 WHERE id = $2 RETURNING balance", &[&amount, &id]).map_err(pg)?;
            Ok(row.map(|r| r.get(0)))
        })
    }

    fn hold(&mut self, r: &HoldRequest<'_>) -> Result<Result<Hold, Denial>, StoreError> {
        let (account_id, node, call, legs, currency) =
            (r.account.to_owned(), r.node.to_owned(), r.call.to_owned(), r.legs.to_vec(), r.currency.to_owned());
        let (max_call_s, now_ms, expires_ms) = (r.max_call_s, r.now_ms, r.expires_ms);
        self.run(move |c| {
            let mut tx = c.transaction().map_err(pg)?;
            // The account's row lock: every other hold of this account waits here.
            let Some(row) = tx.query_opt(&format!("SELECT {ACCOUNT_COLUMNS} FROM account WHERE id = $1 FOR UPDATE"), &[&account_id]).map_err(pg)?
            else {
                return Ok(Err(Denial::Disabled));
            };
            let account = account_row(&row);
            let usage = usage(&mut tx, &account_id, now_ms).map_err(pg)?;
            let grant = match prepaid::decide(&account, &usage, &legs, &currency, max_call_s) {
                Ok(g) => g,
                Err(d) => return Ok(Err(d)),
            };
            let rates = serde_json::to_string(&grant.rates).unwrap_or_else(|_| "[]".into());
            let destination = legs.iter().map(|l| l.destination.as_str()).collect::<Vec<_>>().join(",");
            let row = tx
                .query_one(
                    "INSERT INTO reservation (account, node, call, destination, rates, amount, max_seconds, created_ms, touched_ms, expires_ms) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $8, $9) RETURNING id",
                    &[&account_id, &node, &call, &destination, &rates, &grant.held, &sql_int(grant.max_seconds), &sql_int(now_ms), &sql_int(expires_ms)],
                )
                .map_err(pg)?;
            tx.commit().map_err(pg)?;
            Ok(Ok(Hold { id: row.get(0), grant }))
        })
    }

    fn answered(&mut self, id: i64, at_ms: u64) -> Result<(), StoreError> {
        self.run(move |c| {
            c.execute(
                "UPDATE reservation SET answered_ms = $1, touched_ms = $1 WHERE id = $2 AND settled_ms IS NULL AND answered_ms = 0",
                &[&sql_int(at_ms), &id],
            )
            .map_err(pg)?;
            Ok(())
        })
    }

    fn touch(&mut self, ids: &[i64], at_ms: u64) -> Result<(), StoreError> {
        let ids = ids.to_vec();
        self.run(move |c| {
            c.execute("UPDATE reservation SET touched_ms = $1 WHERE id = ANY($2) AND settled_ms IS NULL", &[&sql_int(at_ms), &ids])
                .map_err(pg)?;
            Ok(())
        })
    }

    fn settle(&mut self, id: i64, cost: Micros, at_ms: u64) -> Result<Option<Micros>, StoreError> {
        self.run(move |c| {
            let mut tx = c.transaction().map_err(pg)?;
            let charged = settle_in(&mut tx, id, cost, at_ms).map_err(pg)?;
            tx.commit().map_err(pg)?;
            Ok(charged)
        })
    }

    fn recover(&mut self, node: Option<&str>, now_ms: u64) -> Result<Vec<Settled>, StoreError> {
        let node = node.unwrap_or("").to_owned();
        self.run(move |c| {
            let mut tx = c.transaction().map_err(pg)?;
            let open = tx
                .query(
                    "SELECT id, account, call, rates, answered_ms, touched_ms FROM reservation \
                     WHERE settled_ms IS NULL AND (node = $1 OR expires_ms < $2) FOR UPDATE",
                    &[&node, &sql_int(now_ms)],
                )
                .map_err(pg)?;
            let mut settled = Vec::new();
            for row in open {
                let (id, account, call, rates): (i64, String, String, String) = (row.get(0), row.get(1), row.get(2), row.get(3));
                let (answered_ms, touched_ms) = (u(row.get(4)), u(row.get(5)));
                let rates: Vec<Rate> = serde_json::from_str(&rates).unwrap_or_default();
                let cost = super::ledger::recovered_cost(&rates, answered_ms, touched_ms);
                if let Some(cost) = settle_in(&mut tx, id, cost, now_ms).map_err(pg)? {
                    settled.push(Settled { id, account, call, cost });
                }
            }
            tx.commit().map_err(pg)?;
            Ok(settled)
        })
    }
}
