//! Subscribers, registrations, call detail records and billing accounts behind the [`Store`]
//! trait (accounts and the credit calls hold: [`ledger`]).
//!
//! [`SqliteStore`] is the default: an embedded SQLite file (WAL journal, `synchronous=NORMAL`,
//! prepared statements cached), nothing to install. Registrations are written through on every
//! REGISTER so a restart reloads them ([`Store::bindings`]); the registrar serves lookups from
//! memory. [`MemoryStore`] holds the same in maps, for tests and throwaway set-ups. [`PgStore`]
//! keeps them in PostgreSQL, for control planes on several hosts sharing subscribers, accounts
//! and CDRs.
//!
//! Passwords are never stored: a subscriber row holds HA1 = H(user:realm:password) for each
//! digest hash, and optionally the one digest algorithm the subscriber must use
//! (`auth_algorithm`, NULL = the domain's or server's default; see [`crate::config`] `[auth]`).

use std::collections::HashMap;
use std::path::Path;

use crate::settings::Settings;
use sip_core::digest::{ha1, Algorithm, HashFn};

pub mod ledger;
pub mod postgres;
pub use ledger::{Hold, HoldRequest, Ledger, Settled};
pub use postgres::PgStore;

/// A subscriber account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subscriber {
    /// User part (`alice`).
    pub user: String,
    /// Domain (`sip.test`).
    pub domain: String,
    /// HA1 for MD5.
    pub ha1_md5: String,
    /// HA1 for SHA-256.
    pub ha1_sha256: String,
    /// HA1 for SHA-512-256.
    pub ha1_sha512_256: String,
    /// The only digest algorithm this subscriber is challenged with and may answer with
    /// (`None`: the domain's setting, else the server's default).
    pub auth_algorithm: Option<Algorithm>,
}

impl Subscriber {
    /// A subscriber with HA1s computed from `password` in `realm`.
    pub fn with_password(user: &str, domain: &str, realm: &str, password: &str) -> Self {
        Subscriber {
            user: user.to_owned(),
            domain: domain.to_ascii_lowercase(),
            ha1_md5: ha1(HashFn::Md5, user, realm, password),
            ha1_sha256: ha1(HashFn::Sha256, user, realm, password),
            ha1_sha512_256: ha1(HashFn::Sha512_256, user, realm, password),
            auth_algorithm: None,
        }
    }

    /// The HA1 for `hash`.
    pub fn ha1(&self, hash: HashFn) -> &str {
        match hash {
            HashFn::Md5 => &self.ha1_md5,
            HashFn::Sha256 => &self.ha1_sha256,
            HashFn::Sha512_256 => &self.ha1_sha512_256,
        }
    }
}

/// A registration as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredBinding {
    /// Address-of-record, `user@domain`.
    pub aor: String,
    /// Contact URI.
    pub contact: String,
    /// Expiry, UNIX seconds.
    pub expires_unix: u64,
    /// q-value ×1000.
    pub q_milli: u16,
    /// Call-ID of the REGISTER.
    pub call_id: String,
    /// CSeq of the REGISTER.
    pub cseq: u32,
    /// The flow it arrived on: `udp:IP:PORT` / `tcp:IP:PORT`.
    pub flow: String,
    /// The REGISTER's Path values joined with `, ` (empty: none).
    pub path: String,
    /// `+sip.instance` of an outbound binding.
    pub instance: Option<String>,
    /// `reg-id` of an outbound binding; 0 for a binding without outbound. Part of the key, so
    /// one phone can hold two flows with the same Contact.
    pub reg_id: u32,
}

/// A call detail record: one per call (`leg` "call") and one per leg ("a": the caller's side,
/// "b": the called side).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cdr {
    /// The call's id in this control plane, and the caller's Call-ID.
    pub call: u64,
    pub sip_call_id: String,
    pub leg: String,
    pub caller: String,
    pub callee: String,
    /// The destination number rated (the callee's user part), and where the answering INVITE
    /// went (a phone's contact, a trunk).
    pub destination: String,
    pub answered_by: String,
    /// UNIX milliseconds (answer 0: never answered).
    pub start_ms: u64,
    pub answer_ms: u64,
    pub end_ms: u64,
    pub duration_ms: u64,
    pub billed_s: u64,
    /// Millionths of `currency` (see [`crate::billing::rating`]); 0 when unrated.
    pub cost: i64,
    pub currency: String,
    /// The rate's prefix (empty: none matched).
    pub rate_prefix: String,
    pub status: u16,
    pub cause: String,
}

/// A change to the stored registrations.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LocationChange {
    /// Insert or replace the binding (aor, contact).
    Upsert(StoredBinding),
    /// Remove one binding.
    Remove {
        /// Address-of-record.
        aor: String,
        /// Contact URI.
        contact: String,
        /// Its reg-id (0: none).
        reg_id: u32,
    },
}

/// Why the store failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database refused or failed.
    #[error("database: {0}")]
    Database(#[from] rusqlite::Error),
    /// PostgreSQL refused, failed or is unreachable.
    #[error("postgresql: {0}")]
    Postgres(String),
    /// Adding a subscriber or an account that exists.
    #[error("{0} already exists")]
    AlreadyExists(String),
    /// Changing a subscriber that does not exist.
    #[error("no subscriber {0}")]
    NotFound(String),
    /// Stored settings that no longer read (edited by hand).
    #[error("settings of {0}: {1}")]
    BadSettings(String, crate::settings::SettingError),
}

/// Subscribers, registrations, detail records and (through [`Ledger`]) accounts.
pub trait Store: Ledger + Send {
    /// The subscriber `user@domain`, if any.
    fn subscriber(&mut self, user: &str, domain: &str) -> Result<Option<Subscriber>, StoreError>;
    /// Adds a subscriber.
    fn add_subscriber(&mut self, subscriber: &Subscriber) -> Result<(), StoreError>;
    /// Sets (or clears) a subscriber's digest algorithm; whether the subscriber exists.
    fn set_auth_algorithm(&mut self, user: &str, domain: &str, algorithm: Option<Algorithm>) -> Result<bool, StoreError>;
    /// A subscriber's call settings (`None`: no such subscriber).
    fn settings(&mut self, user: &str, domain: &str) -> Result<Option<Settings>, StoreError>;
    /// Replaces a subscriber's call settings (checked by the caller); whether the subscriber exists.
    fn set_settings(&mut self, user: &str, domain: &str, settings: &Settings) -> Result<bool, StoreError>;
    /// Removes a subscriber and its registrations; whether it existed.
    fn remove_subscriber(&mut self, user: &str, domain: &str) -> Result<bool, StoreError>;
    /// Every subscriber, ordered by domain then user.
    fn subscribers(&mut self) -> Result<Vec<Subscriber>, StoreError>;
    /// Applies registration changes atomically.
    fn apply(&mut self, changes: &[LocationChange]) -> Result<(), StoreError>;
    /// Every stored registration.
    fn bindings(&mut self) -> Result<Vec<StoredBinding>, StoreError>;
    /// The stored registrations of `aor` (what several control planes sharing the store look up).
    fn bindings_of(&mut self, aor: &str) -> Result<Vec<StoredBinding>, StoreError>;
    /// Writes a call's detail records, all or none.
    fn add_cdrs(&mut self, cdrs: &[Cdr]) -> Result<(), StoreError>;
    /// The detail records of calls that ended at or after `since_ms`, oldest first.
    fn cdrs(&mut self, since_ms: u64) -> Result<Vec<Cdr>, StoreError>;
}

/// The SQLite store.
#[derive(Debug)]
pub struct SqliteStore {
    db: rusqlite::Connection,
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS subscriber (
    user TEXT NOT NULL,
    domain TEXT NOT NULL,
    ha1_md5 TEXT NOT NULL,
    ha1_sha256 TEXT NOT NULL,
    ha1_sha512_256 TEXT NOT NULL,
    auth_algorithm TEXT,
    settings TEXT,
    PRIMARY KEY (user, domain)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS location (
    aor TEXT NOT NULL,
    contact TEXT NOT NULL,
    expires INTEGER NOT NULL,
    q INTEGER NOT NULL,
    call_id TEXT NOT NULL,
    cseq INTEGER NOT NULL,
    flow TEXT NOT NULL,
    path TEXT NOT NULL DEFAULT '',
    instance TEXT,
    reg_id INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (aor, contact, reg_id)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS cdr (
    id INTEGER PRIMARY KEY,
    call INTEGER NOT NULL,
    sip_call_id TEXT NOT NULL,
    leg TEXT NOT NULL,
    caller TEXT NOT NULL,
    callee TEXT NOT NULL,
    destination TEXT NOT NULL,
    answered_by TEXT NOT NULL,
    start_ms INTEGER NOT NULL,
    answer_ms INTEGER NOT NULL,
    end_ms INTEGER NOT NULL,
    duration_ms INTEGER NOT NULL,
    billed_s INTEGER NOT NULL,
    cost INTEGER NOT NULL,
    currency TEXT NOT NULL,
    rate_prefix TEXT NOT NULL,
    status INTEGER NOT NULL,
    cause TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS cdr_end ON cdr (end_ms);
CREATE TABLE IF NOT EXISTS account (
    id TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    balance INTEGER NOT NULL,
    credit_limit INTEGER NOT NULL DEFAULT 0,
    currency TEXT NOT NULL,
    max_concurrent INTEGER NOT NULL DEFAULT 0,
    max_per_minute INTEGER NOT NULL DEFAULT 0,
    max_call_cost INTEGER NOT NULL DEFAULT 0,
    blocked TEXT NOT NULL DEFAULT '',
    enabled INTEGER NOT NULL DEFAULT 1,
    ani TEXT NOT NULL DEFAULT '',
    pin_hash TEXT NOT NULL DEFAULT ''
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS reservation (
    id INTEGER PRIMARY KEY,
    account TEXT NOT NULL,
    node TEXT NOT NULL,
    call TEXT NOT NULL,
    destination TEXT NOT NULL,
    rates TEXT NOT NULL,
    amount INTEGER NOT NULL,
    max_seconds INTEGER NOT NULL,
    created_ms INTEGER NOT NULL,
    answered_ms INTEGER NOT NULL DEFAULT 0,
    touched_ms INTEGER NOT NULL,
    expires_ms INTEGER NOT NULL,
    settled_ms INTEGER,
    cost INTEGER
);
CREATE INDEX IF NOT EXISTS reservation_open ON reservation (account) WHERE settled_ms IS NULL;
CREATE INDEX IF NOT EXISTS reservation_created ON reservation (account, created_ms);
";

const CDR_COLUMNS: &str = "call, sip_call_id, leg, caller, callee, destination, answered_by, start_ms, answer_ms, end_ms, \
                           duration_ms, billed_s, cost, currency, rate_prefix, status, cause";

fn binding_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<StoredBinding> {
    Ok(StoredBinding {
        aor: row.get(0)?,
        contact: row.get(1)?,
        expires_unix: u64::try_from(row.get::<_, i64>(2)?).unwrap_or(0),
        q_milli: row.get(3)?,
        call_id: row.get(4)?,
        cseq: row.get(5)?,
        flow: row.get(6)?,
        path: row.get(7)?,
        instance: row.get(8)?,
        reg_id: row.get(9)?,
    })
}

fn cdr_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<Cdr> {
    let u = |i: usize| -> rusqlite::Result<u64> { Ok(u64::try_from(row.get::<_, i64>(i)?).unwrap_or(0)) };
    Ok(Cdr {
        call: u(0)?,
        sip_call_id: row.get(1)?,
        leg: row.get(2)?,
        caller: row.get(3)?,
        callee: row.get(4)?,
        destination: row.get(5)?,
        answered_by: row.get(6)?,
        start_ms: u(7)?,
        answer_ms: u(8)?,
        end_ms: u(9)?,
        duration_ms: u(10)?,
        billed_s: u(11)?,
        cost: row.get(12)?,
        currency: row.get(13)?,
        rate_prefix: row.get(14)?,
        status: row.get(15)?,
        cause: row.get(16)?,
    })
}

/// SQLite keeps signed 64-bit integers.
fn sql_int(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

impl SqliteStore {
    /// Opens (creating if needed) the database at `path`.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let db = rusqlite::Connection::open(path)?;
        db.pragma_update(None, "journal_mode", "WAL")?;
        db.pragma_update(None, "synchronous", "NORMAL")?;
        db.busy_timeout(std::time::Duration::from_secs(5))?;
        db.execute_batch(SCHEMA)?;
        migrate(&db)?;
        db.set_prepared_statement_cache_capacity(32);
        Ok(SqliteStore { db })
    }

    /// An in-memory SQLite database (tests).
    pub fn in_memory() -> Result<Self, StoreError> {
        let db = rusqlite::Connection::open_in_memory()?;
        db.execute_batch(SCHEMA)?;
        Ok(SqliteStore { db })
    }
}

/// Brings a database made by an older release up to [`SCHEMA`] (columns added since).
fn migrate(db: &rusqlite::Connection) -> Result<(), StoreError> {
    let mut stmt = db.prepare("SELECT name FROM pragma_table_info('subscriber')")?;
    let columns: Vec<String> = stmt.query_map([], |row| row.get(0))?.collect::<Result<_, _>>()?;
    if !columns.iter().any(|c| c == "auth_algorithm") {
        db.execute_batch("ALTER TABLE subscriber ADD COLUMN auth_algorithm TEXT")?;
    }
    if !columns.iter().any(|c| c == "settings") {
        db.execute_batch("ALTER TABLE subscriber ADD COLUMN settings TEXT")?;
    }
    let mut stmt = db.prepare("SELECT name FROM pragma_table_info('account')")?;
    let columns: Vec<String> = stmt.query_map([], |row| row.get(0))?.collect::<Result<_, _>>()?;
    for (column, definition) in [("ani", "ani TEXT NOT NULL DEFAULT ''"), ("pin_hash", "pin_hash TEXT NOT NULL DEFAULT ''")] {
        if !columns.iter().any(|c| c == column) {
            db.execute_batch(&format!("ALTER TABLE account ADD COLUMN {definition}"))?;
        }
    }
    // Path and SIP outbound: three columns and a key that includes reg-id. SQLite cannot change
    // a primary key in place, so the table is rebuilt (registrations are few, this is quick).
    let mut stmt = db.prepare("SELECT name FROM pragma_table_info('location')")?;
    let columns: Vec<String> = stmt.query_map([], |row| row.get(0))?.collect::<Result<_, _>>()?;
    if !columns.iter().any(|c| c == "reg_id") {
        db.execute_batch(
            "BEGIN;
             ALTER TABLE location RENAME TO location_old;
             CREATE TABLE location (
                 aor TEXT NOT NULL, contact TEXT NOT NULL, expires INTEGER NOT NULL, q INTEGER NOT NULL,
                 call_id TEXT NOT NULL, cseq INTEGER NOT NULL, flow TEXT NOT NULL,
                 path TEXT NOT NULL DEFAULT '', instance TEXT, reg_id INTEGER NOT NULL DEFAULT 0,
                 PRIMARY KEY (aor, contact, reg_id)
             ) WITHOUT ROWID;
             INSERT INTO location (aor, contact, expires, q, call_id, cseq, flow)
                 SELECT aor, contact, expires, q, call_id, cseq, flow FROM location_old;
             DROP TABLE location_old;
             COMMIT;",
        )?;
    }
    Ok(())
}

const SUBSCRIBER_COLUMNS: &str = "user, domain, ha1_md5, ha1_sha256, ha1_sha512_256, auth_algorithm";

fn subscriber_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<Subscriber> {
    let algorithm: Option<String> = row.get(5)?;
    Ok(Subscriber {
        user: row.get(0)?,
        domain: row.get(1)?,
        ha1_md5: row.get(2)?,
        ha1_sha256: row.get(3)?,
        ha1_sha512_256: row.get(4)?,
        // An unknown token (edited by hand) means no setting, not a failed lookup.
        auth_algorithm: algorithm.as_deref().and_then(Algorithm::from_token),
    })
}

impl Store for SqliteStore {
    fn subscriber(&mut self, user: &str, domain: &str) -> Result<Option<Subscriber>, StoreError> {
        let mut stmt = self.db.prepare_cached(&format!("SELECT {SUBSCRIBER_COLUMNS} FROM subscriber WHERE user = ?1 AND domain = ?2"))?;
        let mut rows = stmt.query_map(rusqlite::params![user, domain.to_ascii_lowercase()], subscriber_row)?;
        Ok(rows.next().transpose()?)
    }

    fn add_subscriber(&mut self, s: &Subscriber) -> Result<(), StoreError> {
        let result = self.db.execute(
            &format!("INSERT INTO subscriber ({SUBSCRIBER_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6)"),
            rusqlite::params![s.user, s.domain, s.ha1_md5, s.ha1_sha256, s.ha1_sha512_256, s.auth_algorithm.map(Algorithm::name)],
        );
        match result {
            Ok(_) => Ok(()),
            Err(rusqlite::Error::SqliteFailure(e, _)) if e.code == rusqlite::ErrorCode::ConstraintViolation => {
                Err(StoreError::AlreadyExists(format!("subscriber {}@{}", s.user, s.domain)))
            }
            Err(e) => Err(e.into()),
        }
    }

    fn set_auth_algorithm(&mut self, user: &str, domain: &str, algorithm: Option<Algorithm>) -> Result<bool, StoreError> {
        let n = self.db.execute(
            "UPDATE subscriber SET auth_algorithm = ?3 WHERE user = ?1 AND domain = ?2",
            rusqlite::params![user, domain.to_ascii_lowercase(), algorithm.map(Algorithm::name)],
        )?;
        Ok(n > 0)
    }

    fn settings(&mut self, user: &str, domain: &str) -> Result<Option<Settings>, StoreError> {
        let mut stmt = self.db.prepare_cached("SELECT settings FROM subscriber WHERE user = ?1 AND domain = ?2")?;
        let mut rows = stmt.query_map(rusqlite::params![user, domain.to_ascii_lowercase()], |row| row.get::<_, Option<String>>(0))?;
        match rows.next().transpose()? {
            None => Ok(None),
            Some(None) => Ok(Some(Settings::default())),
            Some(Some(json)) => Settings::from_json(&json).map(Some).map_err(|e| StoreError::BadSettings(format!("{user}@{domain}"), e)),
        }
    }

    fn set_settings(&mut self, user: &str, domain: &str, settings: &Settings) -> Result<bool, StoreError> {
        let n = self.db.execute(
            "UPDATE subscriber SET settings = ?3 WHERE user = ?1 AND domain = ?2",
            rusqlite::params![user, domain.to_ascii_lowercase(), settings.to_json()],
        )?;
        Ok(n > 0)
    }

    fn remove_subscriber(&mut self, user: &str, domain: &str) -> Result<bool, StoreError> {
        let tx = self.db.transaction()?;
        let n = tx.execute("DELETE FROM subscriber WHERE user = ?1 AND domain = ?2", rusqlite::params![user, domain])?;
        tx.execute("DELETE FROM location WHERE aor = ?1", rusqlite::params![format!("{user}@{domain}")])?;
        tx.commit()?;
        Ok(n > 0)
    }

    fn subscribers(&mut self) -> Result<Vec<Subscriber>, StoreError> {
        let mut stmt = self.db.prepare_cached(&format!("SELECT {SUBSCRIBER_COLUMNS} FROM subscriber ORDER BY domain, user"))?;
        let rows = stmt.query_map([], subscriber_row)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn apply(&mut self, changes: &[LocationChange]) -> Result<(), StoreError> {
        if changes.is_empty() {
            return Ok(());
        }
        let tx = self.db.transaction()?;
        for change in changes {
            match change {
                LocationChange::Upsert(b) => {
                    let mut stmt = tx.prepare_cached(
                        "INSERT OR REPLACE INTO location \
                         (aor, contact, expires, q, call_id, cseq, flow, path, instance, reg_id) \
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
                    )?;
                    stmt.execute(rusqlite::params![
                        b.aor,
                        b.contact,
                        i64::try_from(b.expires_unix).unwrap_or(i64::MAX),
                        b.q_milli,
                        b.call_id,
                        b.cseq,
                        b.flow,
                        b.path,
                        b.instance,
                        b.reg_id
                    ])?;
                }
                LocationChange::Remove { aor, contact, reg_id } => {
                    let mut stmt = tx.prepare_cached("DELETE FROM location WHERE aor = ?1 AND contact = ?2 AND reg_id = ?3")?;
                    stmt.execute(rusqlite::params![aor, contact, reg_id])?;
                }
            }
        }
        tx.commit()?;
        Ok(())
    }

    fn bindings(&mut self) -> Result<Vec<StoredBinding>, StoreError> {
        let mut stmt = self
            .db
            .prepare_cached("SELECT aor, contact, expires, q, call_id, cseq, flow, path, instance, reg_id FROM location ORDER BY aor")?;
        let rows = stmt.query_map([], binding_row)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn bindings_of(&mut self, aor: &str) -> Result<Vec<StoredBinding>, StoreError> {
        let mut stmt = self
            .db
            .prepare_cached("SELECT aor, contact, expires, q, call_id, cseq, flow, path, instance, reg_id FROM location WHERE aor = ?1")?;
        let rows = stmt.query_map([aor], binding_row)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn add_cdrs(&mut self, cdrs: &[Cdr]) -> Result<(), StoreError> {
        let tx = self.db.transaction()?;
        {
            let mut stmt = tx.prepare_cached(&format!(
                "INSERT INTO cdr ({CDR_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17)"
            ))?;
            for c in cdrs {
                stmt.execute(rusqlite::params![
                    sql_int(c.call),
                    c.sip_call_id,
                    c.leg,
                    c.caller,
                    c.callee,
                    c.destination,
                    c.answered_by,
                    sql_int(c.start_ms),
                    sql_int(c.answer_ms),
                    sql_int(c.end_ms),
                    sql_int(c.duration_ms),
                    sql_int(c.billed_s),
                    c.cost,
                    c.currency,
                    c.rate_prefix,
                    c.status,
                    c.cause
                ])?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    fn cdrs(&mut self, since_ms: u64) -> Result<Vec<Cdr>, StoreError> {
        let mut stmt = self.db.prepare_cached(&format!("SELECT {CDR_COLUMNS} FROM cdr WHERE end_ms >= ?1 ORDER BY end_ms, id"))?;
        let rows = stmt.query_map([sql_int(since_ms)], cdr_row)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }
}

/// Subscribers and registrations in maps.
#[derive(Debug, Default)]
pub struct MemoryStore {
    subscribers: HashMap<(String, String), Subscriber>,
    settings: HashMap<(String, String), Settings>,
    bindings: HashMap<(String, String, u32), StoredBinding>,
    cdrs: Vec<Cdr>,
    accounts: HashMap<String, crate::billing::prepaid::Account>,
    holds: Vec<ledger::MemoryHold>,
}

impl Store for MemoryStore {
    fn subscriber(&mut self, user: &str, domain: &str) -> Result<Option<Subscriber>, StoreError> {
        Ok(self.subscribers.get(&(user.to_owned(), domain.to_ascii_lowercase())).cloned())
    }

    fn add_subscriber(&mut self, s: &Subscriber) -> Result<(), StoreError> {
        let key = (s.user.clone(), s.domain.clone());
        if self.subscribers.contains_key(&key) {
            return Err(StoreError::AlreadyExists(format!("subscriber {}@{}", s.user, s.domain)));
        }
        self.subscribers.insert(key, s.clone());
        Ok(())
    }

    fn set_auth_algorithm(&mut self, user: &str, domain: &str, algorithm: Option<Algorithm>) -> Result<bool, StoreError> {
        match self.subscribers.get_mut(&(user.to_owned(), domain.to_ascii_lowercase())) {
            Some(s) => {
                s.auth_algorithm = algorithm;
                Ok(true)
            }
            None => Ok(false),
        }
    }

    fn settings(&mut self, user: &str, domain: &str) -> Result<Option<Settings>, StoreError> {
        let key = (user.to_owned(), domain.to_ascii_lowercase());
        if !self.subscribers.contains_key(&key) {
            return Ok(None);
        }
        Ok(Some(self.settings.get(&key).cloned().unwrap_or_default()))
    }

    fn set_settings(&mut self, user: &str, domain: &str, settings: &Settings) -> Result<bool, StoreError> {
        let key = (user.to_owned(), domain.to_ascii_lowercase());
        if !self.subscribers.contains_key(&key) {
            return Ok(false);
        }
        self.settings.insert(key, settings.clone());
        Ok(true)
    }

    fn remove_subscriber(&mut self, user: &str, domain: &str) -> Result<bool, StoreError> {
        let aor = format!("{user}@{domain}");
        self.settings.remove(&(user.to_owned(), domain.to_owned()));
        self.bindings.retain(|(a, _, _), _| *a != aor);
        Ok(self.subscribers.remove(&(user.to_owned(), domain.to_owned())).is_some())
    }

    fn subscribers(&mut self) -> Result<Vec<Subscriber>, StoreError> {
        let mut all: Vec<Subscriber> = self.subscribers.values().cloned().collect();
        all.sort_by(|a, b| (&a.domain, &a.user).cmp(&(&b.domain, &b.user)));
        Ok(all)
    }

    fn apply(&mut self, changes: &[LocationChange]) -> Result<(), StoreError> {
        for change in changes {
            match change {
                LocationChange::Upsert(b) => {
                    self.bindings.insert((b.aor.clone(), b.contact.clone(), b.reg_id), b.clone());
                }
                LocationChange::Remove { aor, contact, reg_id } => {
                    self.bindings.remove(&(aor.clone(), contact.clone(), *reg_id));
                }
            }
        }
        Ok(())
    }

    fn bindings(&mut self) -> Result<Vec<StoredBinding>, StoreError> {
        Ok(self.bindings.values().cloned().collect())
    }

    fn bindings_of(&mut self, aor: &str) -> Result<Vec<StoredBinding>, StoreError> {
        Ok(self.bindings.values().filter(|b| b.aor == aor).cloned().collect())
    }

    fn add_cdrs(&mut self, cdrs: &[Cdr]) -> Result<(), StoreError> {
        self.cdrs.extend_from_slice(cdrs);
        Ok(())
    }

    fn cdrs(&mut self, since_ms: u64) -> Result<Vec<Cdr>, StoreError> {
        let mut out: Vec<Cdr> = self.cdrs.iter().filter(|c| c.end_ms >= since_ms).cloned().collect();
        out.sort_by_key(|c| c.end_ms);
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn binding(contact: &str, expires: u64) -> StoredBinding {
        StoredBinding {
            aor: "alice@sip.test".into(),
            contact: contact.into(),
            expires_unix: expires,
            q_milli: 1000,
            call_id: "c1".into(),
            cseq: 1,
            flow: "udp:127.0.0.1:5070".into(),
            path: String::new(),
            instance: None,
            reg_id: 0,
        }
    }

    fn exercise(store: &mut dyn Store) {
        let alice = Subscriber::with_password("alice", "SIP.test", "sip.test", "secret");
        store.add_subscriber(&alice).unwrap();
        assert!(matches!(store.add_subscriber(&alice), Err(StoreError::AlreadyExists(_))));
        let found = store.subscriber("alice", "sip.test").unwrap().unwrap();
        assert_eq!(found.ha1(HashFn::Md5), ha1(HashFn::Md5, "alice", "sip.test", "secret"));
        assert!(store.subscriber("bob", "sip.test").unwrap().is_none());
        assert_eq!(found.auth_algorithm, None);
        assert!(store.set_auth_algorithm("alice", "SIP.test", Some(Algorithm::Sha256)).unwrap());
        assert_eq!(store.subscriber("alice", "sip.test").unwrap().unwrap().auth_algorithm, Some(Algorithm::Sha256));
        assert!(!store.set_auth_algorithm("bob", "sip.test", None).unwrap(), "no such subscriber");
        assert_eq!(store.settings("alice", "sip.test").unwrap(), Some(crate::settings::Settings::default()));
        let mut settings = crate::settings::Settings::default();
        settings.set("forward.busy", "carol").unwrap();
        assert!(store.set_settings("alice", "SIP.test", &settings).unwrap());
        assert_eq!(store.settings("alice", "sip.test").unwrap(), Some(settings.clone()));
        assert!(!store.set_settings("bob", "sip.test", &settings).unwrap(), "no such subscriber");
        assert_eq!(store.settings("bob", "sip.test").unwrap(), None);

        store.apply(&[LocationChange::Upsert(binding("sip:a@1", 10)), LocationChange::Upsert(binding("sip:a@2", 20))]).unwrap();
        store.apply(&[LocationChange::Upsert(binding("sip:a@1", 30))]).unwrap();
        store.apply(&[LocationChange::Remove { aor: "alice@sip.test".into(), contact: "sip:a@2".into(), reg_id: 0 }]).unwrap();
        assert_eq!(store.bindings().unwrap(), vec![binding("sip:a@1", 30)]);
        // Two outbound flows of one phone share a Contact and differ by reg-id.
        let flow = |reg_id| StoredBinding {
            path: "<sip:edge.test;lr;ob>".into(),
            instance: Some("<urn:uuid:00000000-0000-0000-0000-000000000001>".into()),
            reg_id,
            ..binding("sip:a@9", 40)
        };
        store.apply(&[LocationChange::Upsert(flow(1)), LocationChange::Upsert(flow(2))]).unwrap();
        store.apply(&[LocationChange::Remove { aor: "alice@sip.test".into(), contact: "sip:a@9".into(), reg_id: 1 }]).unwrap();
        let mut left = store.bindings().unwrap();
        left.sort_by_key(|b| b.reg_id);
        assert_eq!(left, vec![binding("sip:a@1", 30), flow(2)]);

        assert!(store.remove_subscriber("alice", "sip.test").unwrap());
        assert!(!store.remove_subscriber("alice", "sip.test").unwrap());
        assert!(store.bindings().unwrap().is_empty(), "removing a subscriber removes its registrations");
        assert!(store.subscribers().unwrap().is_empty());
    }

    #[test]
    fn sqlite_store_keeps_subscribers_and_bindings() {
        exercise(&mut SqliteStore::in_memory().unwrap());
    }

    #[test]
    fn memory_store_behaves_like_sqlite() {
        exercise(&mut MemoryStore::default());
    }

    #[test]
    fn sqlite_file_survives_reopen() {
        let dir = std::env::temp_dir().join(format!("cp-store-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("t.db");
        {
            let mut s = SqliteStore::open(&path).unwrap();
            s.add_subscriber(&Subscriber::with_password("bob", "sip.test", "sip.test", "pw")).unwrap();
            s.apply(&[LocationChange::Upsert(binding("sip:b@1", 99))]).unwrap();
        }
        let mut s = SqliteStore::open(&path).unwrap();
        assert_eq!(s.subscribers().unwrap().len(), 1);
        assert_eq!(s.bindings().unwrap().len(), 1);
        drop(s);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn database_of_an_older_release_gains_the_new_columns_and_keeps_its_rows() {
        let dir = std::env::temp_dir().join(format!("cp-store-migrate-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("old.db");
        {
            let db = rusqlite::Connection::open(&path).unwrap();
            db.execute_batch(
                "CREATE TABLE subscriber (user TEXT NOT NULL, domain TEXT NOT NULL, ha1_md5 TEXT NOT NULL, \
                 ha1_sha256 TEXT NOT NULL, ha1_sha512_256 TEXT NOT NULL, PRIMARY KEY (user, domain)) WITHOUT ROWID;\
                 INSERT INTO subscriber VALUES ('carol', 'sip.test', 'a', 'b', 'c');\
                 CREATE TABLE location (aor TEXT NOT NULL, contact TEXT NOT NULL, expires INTEGER NOT NULL, \
                 q INTEGER NOT NULL, call_id TEXT NOT NULL, cseq INTEGER NOT NULL, flow TEXT NOT NULL, \
                 PRIMARY KEY (aor, contact)) WITHOUT ROWID;\
                 INSERT INTO location VALUES ('alice@sip.test', 'sip:a@1', 30, 1000, 'c1', 1, 'udp:127.0.0.1:5070');",
            )
            .unwrap();
        }
        let mut s = SqliteStore::open(&path).unwrap();
        let carol = s.subscriber("carol", "sip.test").unwrap().unwrap();
        assert_eq!((carol.ha1_md5.as_str(), carol.auth_algorithm), ("a", None));
        assert!(s.set_auth_algorithm("carol", "sip.test", Some(Algorithm::Sha512_256)).unwrap());
        assert_eq!(s.subscriber("carol", "sip.test").unwrap().unwrap().auth_algorithm, Some(Algorithm::Sha512_256));
        assert_eq!(s.settings("carol", "sip.test").unwrap(), Some(crate::settings::Settings::default()), "settings column added");
        assert_eq!(s.bindings().unwrap(), vec![binding("sip:a@1", 30)], "registrations survive the location rebuild");
        drop(s);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
