//! Accounts and the money calls hold, behind the [`Ledger`] trait (part of every [`Store`]).
//!
//! A *hold* is a row in `reservation`: the account, the node (control plane) that made it, the
//! call, the rates it was made at, the amount held and the longest call it allows. It is made
//! in one write transaction with the account's usage ([`Ledger::hold`], `BEGIN IMMEDIATE` on
//! SQLite), so concurrent calls, even from control planes sharing the database, never hold more
//! than the balance. It is *settled* once: the call's cost (at most the amount held) leaves the
//! balance, in the same transaction that closes the hold. A node that restarts settles its own
//! open holds, and any node settles holds past their expiry: answered ones at their rates for
//! the time from the answer to the last [`touch`](Ledger::touch) (written every minute while a
//! call is up), unanswered ones at nothing. Settled holds stay as the account's history.

use super::{sql_int, MemoryStore, SqliteStore, StoreError};
use crate::billing::prepaid::{self, Account, Denial, Grant, Kind, Leg, Usage};
use crate::billing::rating::{Micros, Rate};

/// A hold to make.
#[derive(Debug, Clone)]
pub struct HoldRequest<'a> {
    pub account: &'a str,
    /// The control plane making it ([billing] node).
    pub node: &'a str,
    /// The call, for people (its SIP Call-ID).
    pub call: &'a str,
    pub legs: &'a [Leg],
    /// The rate table's currency, and the longest call allowed.
    pub currency: &'a str,
    pub max_call_s: u64,
    pub now_ms: u64,
    /// Past this, any node may settle it.
    pub expires_ms: u64,
}

/// A hold made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hold {
    pub id: i64,
    pub grant: Grant,
}

/// A hold settled by [`Ledger::recover`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settled {
    pub id: i64,
    pub account: String,
    pub call: String,
    pub cost: Micros,
}

/// Accounts and holds.
pub trait Ledger {
    /// Adds an account (its balance as given); [`StoreError::AlreadyExists`] if it exists.
    fn add_account(&mut self, account: &Account) -> Result<(), StoreError>;
    /// Replaces an account's settings (not its balance); whether it exists.
    fn update_account(&mut self, account: &Account) -> Result<bool, StoreError>;
    /// An account and its usage at `now_ms`.
    fn account(&mut self, id: &str, now_ms: u64) -> Result<Option<(Account, Usage)>, StoreError>;
    /// Every account, by id.
    fn accounts(&mut self) -> Result<Vec<Account>, StoreError>;
    /// The account whose `ani` numbers include `number` (with or without `+`).
    fn account_by_ani(&mut self, number: &str) -> Result<Option<Account>, StoreError> {
        Ok(self.accounts()?.into_iter().find(|a| a.has_ani(number)))
    }
    /// Adds `amount` (negative: takes it) to an account's balance; the new balance.
    fn credit(&mut self, id: &str, amount: Micros) -> Result<Option<Micros>, StoreError>;
    /// Decides ([`prepaid::decide`]) and, if granted, holds the money, atomically. An unknown
    /// account is [`Denial::Disabled`].
    fn hold(&mut self, request: &HoldRequest<'_>) -> Result<Result<Hold, Denial>, StoreError>;
    /// The call of hold `id` was answered at `at_ms`.
    fn answered(&mut self, id: i64, at_ms: u64) -> Result<(), StoreError>;
    /// The calls of `ids` are still up at `at_ms`.
    fn touch(&mut self, ids: &[i64], at_ms: u64) -> Result<(), StoreError>;
    /// Settles hold `id` at `cost` (at most what it holds): the charged cost, `None` if it was
    /// settled already (or does not exist).
    fn settle(&mut self, id: i64, cost: Micros, at_ms: u64) -> Result<Option<Micros>, StoreError>;
    /// Settles the open holds of `node` (it restarted) and every hold expired at `now_ms`.
    fn recover(&mut self, node: Option<&str>, now_ms: u64) -> Result<Vec<Settled>, StoreError>;
}

/// What a hold found open at recovery costs: its rates from answer to last touch.
pub(super) fn recovered_cost(rates: &[Rate], answered_ms: u64, touched_ms: u64) -> Micros {
    if answered_ms == 0 {
        return 0;
    }
    prepaid::cost(rates, touched_ms.saturating_sub(answered_ms))
}

const ACCOUNT_COLUMNS: &str =
    "id, kind, balance, credit_limit, currency, max_concurrent, max_per_minute, max_call_cost, blocked, enabled, ani, pin_hash";

fn account_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<Account> {
    let kind: String = row.get(1)?;
    let blocked: String = row.get(8)?;
    let ani: String = row.get(10)?;
    Ok(Account {
        id: row.get(0)?,
        kind: if kind == "postpaid" { Kind::Postpaid } else { Kind::Prepaid },
        balance: row.get(2)?,
        credit_limit: row.get(3)?,
        currency: row.get(4)?,
        max_concurrent: row.get(5)?,
        max_per_minute: row.get(6)?,
        max_call_cost: row.get(7)?,
        blocked: blocked.split(',').filter(|p| !p.is_empty()).map(str::to_owned).collect(),
        enabled: row.get(9)?,
        ani: ani.split(',').filter(|p| !p.is_empty()).map(str::to_owned).collect(),
        pin_hash: row.get(11)?,
    })
}

fn usage(db: &rusqlite::Connection, account: &str, now_ms: u64) -> rusqlite::Result<Usage> {
    let (held, open): (i64, u32) = db.query_row(
        "SELECT COALESCE(SUM(amount), 0), COUNT(*) FROM reservation WHERE account = ?1 AND settled_ms IS NULL",
        [account],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )?;
    let last_minute: u32 = db.query_row(
        "SELECT COUNT(*) FROM reservation WHERE account = ?1 AND created_ms > ?2",
        rusqlite::params![account, sql_int(now_ms.saturating_sub(60_000))],
        |r| r.get(0),
    )?;
    Ok(Usage { held, open, last_minute })
}

fn settle_in(db: &rusqlite::Connection, id: i64, cost: Micros, at_ms: u64) -> Result<Option<Micros>, StoreError> {
    let row: Option<(String, i64)> = db
        .query_row("SELECT account, amount FROM reservation WHERE id = ?1 AND settled_ms IS NULL", [id], |r| Ok((r.get(0)?, r.get(1)?)))
        .map(Some)
        .or_else(|e| if e == rusqlite::Error::QueryReturnedNoRows { Ok(None) } else { Err(e) })?;
    let Some((account, amount)) = row else { return Ok(None) };
    let charged = cost.clamp(0, amount);
    db.execute("UPDATE account SET balance = balance - ?1 WHERE id = ?2", rusqlite::params![charged, account])?;
    db.execute("UPDATE reservation SET settled_ms = ?1, cost = ?2 WHERE id = ?3", rusqlite::params![sql_int(at_ms), charged, id])?;
    Ok(Some(charged))
}

impl Ledger for SqliteStore {
    fn add_account(&mut self, a: &Account) -> Result<(), StoreError> {
        let added = self.db.execute(
            &format!("INSERT OR IGNORE INTO account ({ACCOUNT_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)"),
            rusqlite::params![
                a.id,
                a.kind.as_str(),
                a.balance,
                a.credit_limit,
                a.currency,
                a.max_concurrent,
                a.max_per_minute,
                a.max_call_cost,
                a.blocked.join(","),
                a.enabled,
                a.ani.join(","),
                a.pin_hash
            ],
        )?;
        if added == 0 {
            return Err(StoreError::AlreadyExists(format!("account {}", a.id)));
        }
        Ok(())
    }

    fn update_account(&mut self, a: &Account) -> Result<bool, StoreError> {
        let n = self.db.execute(
            "UPDATE account SET kind = ?2, credit_limit = ?3, currency = ?4, max_concurrent = ?5, max_per_minute = ?6, \
             max_call_cost = ?7, blocked = ?8, enabled = ?9, ani = ?10, pin_hash = ?11 WHERE id = ?1",
            rusqlite::params![
                a.id,
                a.kind.as_str(),
                a.credit_limit,
                a.currency,
                a.max_concurrent,
                a.max_per_minute,
                a.max_call_cost,
                a.blocked.join(","),
                a.enabled,
                a.ani.join(","),
                a.pin_hash
            ],
        )?;
        Ok(n > 0)
    }

    fn account(&mut self, id: &str, now_ms: u64) -> Result<Option<(Account, Usage)>, StoreError> {
        let mut stmt = self.db.prepare_cached(&format!("SELECT {ACCOUNT_COLUMNS} FROM account WHERE id = ?1"))?;
        let Some(account) = stmt.query_map([id], account_row)?.next().transpose()? else { return Ok(None) };
        drop(stmt);
        Ok(Some((account, usage(&self.db, id, now_ms)?)))
    }

    fn accounts(&mut self) -> Result<Vec<Account>, StoreError> {
        let mut stmt = self.db.prepare_cached(&format!("SELECT {ACCOUNT_COLUMNS} FROM account ORDER BY id"))?;
        let rows = stmt.query_map([], account_row)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn credit(&mut self, id: &str, amount: Micros) -> Result<Option<Micros>, StoreError> {
        let tx = self.db.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let n = tx.execute("UPDATE account SET balance = balance + ?1 WHERE id = ?2", rusqlite::params![amount, id])?;
        let balance = if n == 0 { None } else { Some(tx.query_row("SELECT balance FROM account WHERE id = ?1", [id], |r| r.get(0))?) };
        tx.commit()?;
        Ok(balance)
    }

    fn hold(&mut self, r: &HoldRequest<'_>) -> Result<Result<Hold, Denial>, StoreError> {
        // IMMEDIATE: the write lock first, so no other connection reads the same usage.
        let tx = self.db.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let account = {
            let mut stmt = tx.prepare_cached(&format!("SELECT {ACCOUNT_COLUMNS} FROM account WHERE id = ?1"))?;
            let found = stmt.query_map([r.account], account_row)?.next().transpose()?;
            found
        };
        let Some(account) = account else { return Ok(Err(Denial::Disabled)) };
        let usage = usage(&tx, r.account, r.now_ms)?;
        let grant = match prepaid::decide(&account, &usage, r.legs, r.currency, r.max_call_s) {
            Ok(g) => g,
            Err(d) => return Ok(Err(d)),
        };
        let rates = serde_json::to_string(&grant.rates).unwrap_or_else(|_| "[]".into());
        let destination = r.legs.iter().map(|l| l.destination.as_str()).collect::<Vec<_>>().join(",");
        tx.execute(
            "INSERT INTO reservation (account, node, call, destination, rates, amount, max_seconds, created_ms, touched_ms, expires_ms) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?8, ?9)",
            rusqlite::params![
                r.account,
                r.node,
                r.call,
                destination,
                rates,
                grant.held,
                sql_int(grant.max_seconds),
                sql_int(r.now_ms),
                sql_int(r.expires_ms)
            ],
        )?;
        let id = tx.last_insert_rowid();
        tx.commit()?;
        Ok(Ok(Hold { id, grant }))
    }

    fn answered(&mut self, id: i64, at_ms: u64) -> Result<(), StoreError> {
        self.db.execute(
            "UPDATE reservation SET answered_ms = ?1, touched_ms = ?1 WHERE id = ?2 AND settled_ms IS NULL AND answered_ms = 0",
            rusqlite::params![sql_int(at_ms), id],
        )?;
        Ok(())
    }

    fn touch(&mut self, ids: &[i64], at_ms: u64) -> Result<(), StoreError> {
        let tx = self.db.transaction()?;
        {
            let mut stmt = tx.prepare_cached("UPDATE reservation SET touched_ms = ?1 WHERE id = ?2 AND settled_ms IS NULL")?;
            for id in ids {
                stmt.execute(rusqlite::params![sql_int(at_ms), id])?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    fn settle(&mut self, id: i64, cost: Micros, at_ms: u64) -> Result<Option<Micros>, StoreError> {
        let tx = self.db.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let charged = settle_in(&tx, id, cost, at_ms)?;
        tx.commit()?;
        Ok(charged)
    }

    fn recover(&mut self, node: Option<&str>, now_ms: u64) -> Result<Vec<Settled>, StoreError> {
        let tx = self.db.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let open: Vec<(i64, String, String, String, u64, u64)> = {
            let mut stmt = tx.prepare_cached(
                "SELECT id, account, call, rates, answered_ms, touched_ms FROM reservation \
                 WHERE settled_ms IS NULL AND (node = ?1 OR expires_ms < ?2)",
            )?;
            let rows = stmt.query_map(rusqlite::params![node.unwrap_or(""), sql_int(now_ms)], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get::<_, i64>(4)?.max(0) as u64, r.get::<_, i64>(5)?.max(0) as u64))
            })?;
            rows.collect::<Result<_, _>>()?
        };
        let mut settled = Vec::new();
        for (id, account, call, rates, answered_ms, touched_ms) in open {
            let rates: Vec<Rate> = serde_json::from_str(&rates).unwrap_or_default();
            if let Some(cost) = settle_in(&tx, id, recovered_cost(&rates, answered_ms, touched_ms), now_ms)? {
                settled.push(Settled { id, account, call, cost });
            }
        }
        tx.commit()?;
        Ok(settled)
    }
}

/// An open or settled hold in a [`MemoryStore`].
#[derive(Debug, Clone)]
pub(super) struct MemoryHold {
    account: String,
    node: String,
    call: String,
    rates: Vec<Rate>,
    amount: Micros,
    created_ms: u64,
    answered_ms: u64,
    touched_ms: u64,
    expires_ms: u64,
    settled: bool,
}

impl MemoryStore {
    fn memory_usage(&self, account: &str, now_ms: u64) -> Usage {
        let mine = || self.holds.iter().filter(move |h| h.account == account);
        let open = || mine().filter(|h| !h.settled);
        Usage {
            held: open().map(|h| h.amount).sum(),
            open: open().count() as u32,
            last_minute: mine().filter(|h| h.created_ms > now_ms.saturating_sub(60_000)).count() as u32,
        }
    }

    fn memory_settle(&mut self, id: i64, cost: Micros) -> Option<Micros> {
        let hold = usize::try_from(id).ok().and_then(|i| self.holds.get_mut(i)).filter(|h| !h.settled)?;
        let charged = cost.clamp(0, hold.amount);
        hold.settled = true;
        let account = hold.account.clone();
        if let Some(a) = self.accounts.get_mut(&account) {
            a.balance -= charged;
        }
        Some(charged)
    }
}

impl Ledger for MemoryStore {
    fn add_account(&mut self, a: &Account) -> Result<(), StoreError> {
        if self.accounts.contains_key(&a.id) {
            return Err(StoreError::AlreadyExists(format!("account {}", a.id)));
        }
        self.accounts.insert(a.id.clone(), a.clone());
        Ok(())
    }

    fn update_account(&mut self, a: &Account) -> Result<bool, StoreError> {
        let Some(old) = self.accounts.get_mut(&a.id) else { return Ok(false) };
        *old = Account { balance: old.balance, ..a.clone() };
        Ok(true)
    }

    fn account(&mut self, id: &str, now_ms: u64) -> Result<Option<(Account, Usage)>, StoreError> {
        Ok(self.accounts.get(id).cloned().map(|a| (a, self.memory_usage(id, now_ms))))
    }

    fn accounts(&mut self) -> Result<Vec<Account>, StoreError> {
        let mut out: Vec<Account> = self.accounts.values().cloned().collect();
        out.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(out)
    }

    fn credit(&mut self, id: &str, amount: Micros) -> Result<Option<Micros>, StoreError> {
        Ok(self.accounts.get_mut(id).map(|a| {
            a.balance += amount;
            a.balance
        }))
    }

    fn hold(&mut self, r: &HoldRequest<'_>) -> Result<Result<Hold, Denial>, StoreError> {
        let Some(account) = self.accounts.get(r.account) else { return Ok(Err(Denial::Disabled)) };
        let usage = self.memory_usage(r.account, r.now_ms);
        let grant = match prepaid::decide(account, &usage, r.legs, r.currency, r.max_call_s) {
            Ok(g) => g,
            Err(d) => return Ok(Err(d)),
        };
        let id = self.holds.len() as i64;
        self.holds.push(MemoryHold {
            account: r.account.to_owned(),
            node: r.node.to_owned(),
            call: r.call.to_owned(),
            rates: grant.rates.clone(),
            amount: grant.held,
            created_ms: r.now_ms,
            answered_ms: 0,
            touched_ms: r.now_ms,
            expires_ms: r.expires_ms,
            settled: false,
        });
        Ok(Ok(Hold { id, grant }))
    }

    fn answered(&mut self, id: i64, at_ms: u64) -> Result<(), StoreError> {
        if let Some(h) = usize::try_from(id).ok().and_then(|i| self.holds.get_mut(i)).filter(|h| !h.settled && h.answered_ms == 0) {
            h.answered_ms = at_ms;
            h.touched_ms = at_ms;
        }
        Ok(())
    }

    fn touch(&mut self, ids: &[i64], at_ms: u64) -> Result<(), StoreError> {
        for &id in ids {
            if let Some(h) = usize::try_from(id).ok().and_then(|i| self.holds.get_mut(i)).filter(|h| !h.settled) {
                h.touched_ms = at_ms;
            }
        }
        Ok(())
    }

    fn settle(&mut self, id: i64, cost: Micros, _at_ms: u64) -> Result<Option<Micros>, StoreError> {
        Ok(self.memory_settle(id, cost))
    }

    fn recover(&mut self, node: Option<&str>, now_ms: u64) -> Result<Vec<Settled>, StoreError> {
        let due: Vec<(i64, String, String, Micros)> = self
            .holds
            .iter()
            .enumerate()
            .filter(|(_, h)| !h.settled && (Some(h.node.as_str()) == node || h.expires_ms < now_ms))
            .map(|(i, h)| (i as i64, h.account.clone(), h.call.clone(), recovered_cost(&h.rates, h.answered_ms, h.touched_ms)))
            .collect();
        Ok(due
            .into_iter()
            .filter_map(|(id, account, call, cost)| self.memory_settle(id, cost).map(|cost| Settled { id, account, call, cost }))
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::billing::rating::Rate;

    fn per_second(per_minute: Micros) -> Rate {
        Rate { prefix: "44".into(), per_minute, connect_fee: 0, initial: 1, increment: 1, period: None, description: String::new() }
    }

    fn legs() -> Vec<Leg> {
        vec![Leg { destination: "441611234567".into(), rate: Some(per_second(60_000)) }]
    }

    fn request<'a>(legs: &'a [Leg], node: &'a str, now_ms: u64) -> HoldRequest<'a> {
        HoldRequest { account: "acme", node, call: "c1", legs, currency: "EUR", max_call_s: 60, now_ms, expires_ms: now_ms + 1_000_000 }
    }

    fn exercise(store: &mut dyn super::super::Store) {
        let mut acme = Account::new("acme", Kind::Prepaid, "EUR").unwrap();
        acme.balance = 100_000; // 0.10: 100 s at 0.06/min, 60 s per call at most
        store.add_account(&acme).unwrap();
        assert!(matches!(store.add_account(&acme), Err(StoreError::AlreadyExists(_))));
        let legs = legs();
        let first = store.hold(&request(&legs, "cp1", 1_000)).unwrap().unwrap();
        assert_eq!((first.grant.max_seconds, first.grant.held), (60, 60_000));
        let second = store.hold(&request(&legs, "cp1", 2_000)).unwrap().unwrap();
        assert_eq!((second.grant.max_seconds, second.grant.held), (40, 40_000), "what the first leaves");
        assert_eq!(store.hold(&request(&legs, "cp1", 3_000)).unwrap(), Err(Denial::Funds));
        let (_, usage) = store.account("acme", 3_000).unwrap().unwrap();
        assert_eq!(usage, Usage { held: 100_000, open: 2, last_minute: 2 });
        // Settled at the call's cost, at most what it held, once.
        assert_eq!(store.settle(first.id, 30_000, 10_000).unwrap(), Some(30_000));
        assert_eq!(store.settle(first.id, 30_000, 10_000).unwrap(), None);
        assert_eq!(store.settle(second.id, 99_000, 10_000).unwrap(), Some(40_000), "never more than held");
        let (account, usage) = store.account("acme", 100_000).unwrap().unwrap();
        assert_eq!((account.balance, usage.held, usage.open), (30_000, 0, 0));
        assert_eq!(store.credit("acme", 970_000).unwrap(), Some(1_000_000));
        assert_eq!(store.credit("nobody", 1).unwrap(), None);
        // A node that restarts settles its open holds: answered ones up to their last touch.
        let up = store.hold(&request(&legs, "cp1", 200_000)).unwrap().unwrap();
        let ringing = store.hold(&request(&legs, "cp1", 200_000)).unwrap().unwrap();
        let other = store.hold(&request(&legs, "cp2", 200_000)).unwrap().unwrap();
        store.answered(up.id, 201_000).unwrap();
        store.touch(&[up.id], 221_000).unwrap();
        let settled = store.recover(Some("cp1"), 230_000).unwrap();
        assert_eq!(settled.iter().map(|s| (s.id, s.cost)).collect::<Vec<_>>(), vec![(up.id, 20_000), (ringing.id, 0)]);
        assert!(store.recover(Some("cp1"), 230_000).unwrap().is_empty());
        // Another node's hold is settled by anyone once expired.
        assert!(store.recover(None, 1_199_999).unwrap().is_empty());
        assert_eq!(store.recover(None, 1_200_001).unwrap().len(), 1);
        assert_eq!(store.settle(other.id, 1, 0).unwrap(), None);
        assert_eq!(store.account("acme", 0).unwrap().unwrap().0.balance, 980_000);
        // Settings change, the balance does not.
        acme.set("max_concurrent", "1").unwrap();
        assert!(store.update_account(&acme).unwrap());
        let (a, _) = store.account("acme", 0).unwrap().unwrap();
        assert_eq!((a.max_concurrent, a.balance), (1, 980_000));
        assert_eq!(store.accounts().unwrap().len(), 1);
        assert_eq!(store.hold(&HoldRequest { account: "nobody", ..request(&legs, "cp1", 0) }).unwrap(), Err(Denial::Disabled));
    }

    #[test]
    fn sqlite_ledger_holds_settles_and_recovers() {
        exercise(&mut SqliteStore::in_memory().unwrap());
    }

    #[test]
    fn memory_ledger_behaves_like_sqlite() {
        exercise(&mut MemoryStore::default());
    }

    /// Control planes sharing one database race for one balance: together they never hold
    /// (or, settled at the longest call, bill) more than it has.
    #[test]
    fn concurrent_holds_on_one_balance_never_overdraw_it() {
        let dir = std::env::temp_dir().join(format!("cp-ledger-race-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("race.db");
        let _ = std::fs::remove_file(&path);
        {
            let mut s = SqliteStore::open(&path).unwrap();
            let mut acme = Account::new("acme", Kind::Prepaid, "EUR").unwrap();
            acme.balance = 1_000_000; // 1.00: 1000 s at 0.06/min, 60 s per call → 16 calls and a 40 s one
            s.add_account(&acme).unwrap();
        }
        let threads: Vec<_> = (0..8)
            .map(|t| {
                let path = path.clone();
                std::thread::spawn(move || {
                    let mut s = SqliteStore::open(&path).unwrap();
                    let legs = legs();
                    let node = format!("cp{t}");
                    let mut granted = Vec::new();
                    for i in 0..10 {
                        if let Ok(h) = s.hold(&request(&legs, &node, 1_000 + i)).unwrap() {
                            granted.push(h);
                        }
                    }
                    // Every call lasts its longest.
                    for h in &granted {
                        s.settle(h.id, crate::billing::prepaid::cost(&h.grant.rates, h.grant.max_seconds * 1000), 5_000).unwrap();
                    }
                    granted.len()
                })
            })
            .collect();
        let granted: usize = threads.into_iter().map(|t| t.join().unwrap()).sum();
        let mut s = SqliteStore::open(&path).unwrap();
        let balance = s.account("acme", 10_000).unwrap().unwrap().0.balance;
        assert_eq!(granted, 17, "16 whole minutes and one of 40 s");
        assert_eq!(balance, 0, "all of it spent, not a millionth more");
        drop(s);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
