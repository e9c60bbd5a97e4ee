//! Billing: what calls cost ([`rating`]), who may place them and for how long ([`prepaid`]),
//! their detail records ([`cdr`]), and [`Billing`], the server's part: credit held per call.
//!
//! ```text
//!  a stage with branches out through trunks (a dialled number, a forward to a number, the PSTN
//!  fallback, a callback's legs)
//!    payer: the subscriber whose routing sent it there (forwarding) else the caller; its
//!    settings name an `account` (none: not billed)
//!    Ledger::hold(account, legs) ── denied ─► trunk branches dropped; none left: 402/403
//!        │ Hold { max_seconds }
//!        ▼
//!  B2bua::set_limit ─► answer: warning tone at max − warning_s, BYE both sides at max ("credit")
//!  CallUpdate Answered ─► Ledger::answered;   every minute ─► Ledger::touch (calls still up)
//!  CallEvent::Ended ─► CDRs rated ─► Ledger::settle(cost ≤ held) ─► CDR cost = what was charged
//!  start / every minute ─► Ledger::recover: this node's holds left by a restart, expired holds
//! ```
//!
//! Sans-IO like the server it belongs to: the store is handed in, time too.

pub mod accounts;
pub mod cdr;
pub mod prepaid;
pub mod radius;
pub mod rating;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use crate::config::Config;
use crate::now::Now;
use crate::routing::Stage;
use crate::store::{Cdr, HoldRequest, Store};
use prepaid::Leg;

/// `[billing]` settings beyond the rate table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BillingConfig {
    /// This control plane's name on the holds it makes.
    pub node: String,
    /// The longest call an account may place, seconds.
    pub max_call_s: u64,
    /// How long before the end of its credit the caller hears `warning_tone` (zero: never).
    pub warning: Duration,
    pub warning_tone: String,
}

impl Default for BillingConfig {
    fn default() -> Self {
        BillingConfig { node: "cp".into(), max_call_s: 14_400, warning: Duration::from_secs(60), warning_tone: "warning".into() }
    }
}

/// How long a call may take to be answered after its hold: past that (and its longest
/// duration), another node may settle the hold as abandoned.
const SETUP_BOUND: Duration = Duration::from_secs(900);
/// How often answered calls' holds are touched and expired holds settled.
const SWEEP: Duration = Duration::from_secs(60);

/// The [`Denial`] labels, in [`BillingStats::denied`]'s order.
pub const DENIALS: [&str; 7] = ["funds", "disabled", "blocked", "no_rate", "currency", "concurrency", "velocity"];

/// Counters of prepaid authorisation.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BillingStats {
    /// Holds made (calls allowed out).
    pub holds: u64,
    /// Calls (or their trunk branches) refused, by [`DENIALS`].
    pub denied: [u64; DENIALS.len()],
    /// Holds settled at a call's end, and by recovery (a restart, an expiry).
    pub settled: u64,
    pub recovered: u64,
    /// Ledger operations the store failed (the call got 500, or the hold waits for recovery).
    pub store_errors: u64,
}

/// A call's hold.
#[derive(Debug, Clone, Copy)]
struct CallHold {
    id: i64,
    answered: bool,
}

/// Holds of the calls in progress.
#[derive(Debug, Default)]
pub struct Billing {
    holds: HashMap<u64, CallHold>,
    recovered_own: bool,
    next_sweep: Option<Instant>,
    pub stats: BillingStats,
}

/// The number a trunk branch dials, as rated: digits without `+` or the international prefix.
fn dialled(branch_target: &str, international_prefix: &str) -> String {
    rating::international(&cdr::destination(branch_target), international_prefix).to_owned()
}

impl Billing {
    /// Holds credit for `stage`'s branches out through trunks, paid by `payer` (an AoR) if its
    /// settings name an account. Returns the hold made (`None`: nothing to pay for, or no
    /// account); a refusal drops the trunk branches, and if none is left, the status and reason
    /// the caller gets. `call`: the SIP Call-ID, for people reading the ledger.
    pub fn authorize(
        &mut self,
        config: &Config,
        store: &mut dyn Store,
        payer: Option<&str>,
        stage: &mut Stage,
        call: &str,
        now: Now,
    ) -> Result<Option<(i64, u64)>, (u16, &'static str)> {
        let numbers: Vec<String> =
            stage.branches.iter().filter(|b| b.trunk).map(|b| dialled(&b.target, &config.international_prefix)).collect();
        let Some((user, domain)) = payer.and_then(|p| p.split_once('@')) else { return Ok(None) };
        if numbers.is_empty() {
            return Ok(None);
        }
        let account = match store.settings(user, domain) {
            Ok(settings) => settings.and_then(|s| s.account),
            Err(e) => {
                self.stats.store_errors += 1;
                tracing::warn!(error = %e, "cannot read the payer's settings");
                return Err((500, "Server Internal Error"));
            }
        };
        let Some(account) = account else { return Ok(None) };
        let now_ms = now.unix_ms();
        let minute = rating::RateTable::minute_of_day(now_ms);
        // Parallel branches to several numbers: each is checked (blocked, rated) on its own;
        // one of them will answer, so the hold is for the dearest (its cost for an hour).
        let legs: Vec<Leg> = numbers.into_iter().map(|n| Leg { rate: config.rates.lookup(&n, minute).cloned(), destination: n }).collect();
        // (One branch, the usual case: the hold's own decision checks it; no extra read.)
        let account_for_branches = if legs.len() > 1 { store.account(&account, now_ms) } else { Ok(None) };
        let blocked: Vec<String> = match account_for_branches {
            Ok(Some((a, _))) => legs
                .iter()
                .filter(|l| l.rate.is_none() || a.blocked.iter().any(|p| l.destination.starts_with(p.as_str())))
                .map(|l| l.destination.clone())
                .collect(),
            _ => Vec::new(),
        };
        let dearest = legs
            .into_iter()
            .filter(|l| !blocked.contains(&l.destination))
            .max_by_key(|l| l.rate.as_ref().map_or(i64::MAX, |r| r.charge(3_600_000).cost))
            .into_iter()
            .collect::<Vec<_>>();
        if !blocked.is_empty() {
            let intl = config.international_prefix.clone();
            stage.branches.retain(|b| !b.trunk || !blocked.contains(&dialled(&b.target, &intl)));
        }
        if dearest.is_empty() {
            // Every trunk branch refused: the account's own decision says why.
            let all =
                blocked.into_iter().map(|n| Leg { rate: config.rates.lookup(&n, minute).cloned(), destination: n }).collect::<Vec<_>>();
            let refusal = match self.hold(config, store, &account, &all[..all.len().min(1)], call, now_ms) {
                Ok((hold, _)) => {
                    // (Changed meanwhile, and granted after all: not wanted now.)
                    self.release_hold(store, hold, now);
                    (403, "Forbidden")
                }
                Err(refusal) => refusal,
            };
            stage.branches.retain(|b| !b.trunk);
            return if stage.branches.is_empty() { Err(refusal) } else { Ok(None) };
        }
        self.hold(config, store, &account, &dearest, call, now_ms).map(Some).or_else(|denial| {
            stage.branches.retain(|b| !b.trunk);
            if stage.branches.is_empty() {
                Err(denial)
            } else {
                Ok(None)
            }
        })
    }

    /// Holds credit of `account` for a call over `legs` at once (a callback's two legs).
    pub fn hold(
        &mut self,
        config: &Config,
        store: &mut dyn Store,
        account: &str,
        legs: &[Leg],
        call: &str,
        now_ms: u64,
    ) -> Result<(i64, u64), (u16, &'static str)> {
        // A hold of this node left by a restart must be settled before this node holds anew
        // (after, its own calls' holds would look left over).
        self.recover(config, store, now_ms, false);
        if !self.recovered_own {
            // This node's holds from before its restart are not settled yet: a new hold now
            // would be taken for one of them at the next attempt.
            return Err((500, "Server Internal Error"));
        }
        let request = HoldRequest {
            account,
            node: &config.billing.node,
            call,
            legs,
            currency: &config.currency,
            max_call_s: config.billing.max_call_s,
            now_ms,
            expires_ms: now_ms + (SETUP_BOUND + SWEEP).as_millis() as u64 + config.billing.max_call_s * 1000,
        };
        match store.hold(&request) {
            Ok(Ok(hold)) => {
                self.stats.holds += 1;
                tracing::debug!(account, call, held = hold.grant.held, max_seconds = hold.grant.max_seconds, "credit held");
                Ok((hold.id, hold.grant.max_seconds))
            }
            Ok(Err(denial)) => {
                if let Some(i) = DENIALS.iter().position(|l| *l == denial.label()) {
                    self.stats.denied[i] += 1;
                }
                tracing::warn!(account, call, reason = denial.label(), detail = ?denial, "call refused by billing");
                Err(denial.status())
            }
            Err(e) => {
                self.stats.store_errors += 1;
                tracing::error!(account, call, error = %e, "cannot hold credit");
                Err((500, "Server Internal Error"))
            }
        }
    }

    /// Call `id` holds `hold` (made by [`authorize`](Self::authorize)); a hold it had before
    /// (an earlier stage) is released.
    pub fn attach(&mut self, store: &mut dyn Store, id: u64, hold: i64, now: Now) {
        self.release(store, id, now);
        self.holds.insert(id, CallHold { id: hold, answered: false });
    }

    /// Call `id` no longer needs its hold (its trunk stage ended unanswered): settled at nothing.
    pub fn release(&mut self, store: &mut dyn Store, id: u64, now: Now) {
        if let Some(h) = self.holds.remove(&id) {
            self.settle(store, h, 0, now.unix_ms());
        }
    }

    /// Releases a hold that no call took (the call was refused after it was made).
    pub fn release_hold(&mut self, store: &mut dyn Store, hold: i64, now: Now) {
        self.settle(store, CallHold { id: hold, answered: false }, 0, now.unix_ms());
    }

    /// Call `id` was answered.
    pub fn answered(&mut self, store: &mut dyn Store, id: u64, now: Now) {
        let Some(h) = self.holds.get_mut(&id).filter(|h| !h.answered) else { return };
        h.answered = true;
        if let Err(e) = store.answered(h.id, now.unix_ms()) {
            self.stats.store_errors += 1;
            tracing::warn!(call = id, error = %e, "cannot record the answer of a held call");
        }
    }

    /// Call `id` ended with `cdrs`: its hold is settled at the cost they carry (at most what it
    /// held), and the records carry what was charged.
    pub fn ended(&mut self, store: &mut dyn Store, id: u64, cdrs: &mut [Cdr], now: Now) {
        let Some(h) = self.holds.remove(&id) else { return };
        let cost = cdrs.iter().find(|c| c.leg == "call").map_or(0, |c| c.cost);
        let charged = self.settle(store, h, cost, now.unix_ms());
        // Cut off a moment late, a call may cost more than was held: only what was held is
        // charged, and the records say so (the difference off the called side's leg).
        if let Some(charged) = charged.filter(|c| *c < cost) {
            for c in cdrs.iter_mut() {
                match c.leg.as_str() {
                    "call" => c.cost = charged,
                    "b" => c.cost = c.cost.saturating_sub(cost - charged).max(0),
                    _ => {}
                }
            }
        }
    }

    fn settle(&mut self, store: &mut dyn Store, h: CallHold, cost: i64, now_ms: u64) -> Option<i64> {
        match store.settle(h.id, cost, now_ms) {
            Ok(charged) => {
                self.stats.settled += 1;
                charged
            }
            Err(e) => {
                // Left open: recovery settles it (at its last touch) once it expires.
                self.stats.store_errors += 1;
                tracing::error!(hold = h.id, error = %e, "cannot settle a hold");
                None
            }
        }
    }

    /// At start, this node's holds left open by a restart are settled; every minute, answered
    /// calls' holds are touched and expired holds (of any node) settled.
    pub fn handle_timeout(&mut self, config: &Config, store: &mut dyn Store, now: Now) {
        if self.next_sweep.is_some_and(|t| t > now.instant) {
            return;
        }
        self.next_sweep = Some(now.instant + SWEEP);
        let now_ms = now.unix_ms();
        self.recover(config, store, now_ms, false);
        self.recover(config, store, now_ms, true);
        let up: Vec<i64> = self.holds.values().filter(|h| h.answered).map(|h| h.id).collect();
        if !up.is_empty() {
            if let Err(e) = store.touch(&up, now_ms) {
                self.stats.store_errors += 1;
                tracing::warn!(error = %e, "cannot touch the holds of calls in progress");
            }
        }
    }

    /// Settles this node's holds left by its previous run (once, before it holds anything), or
    /// with `expired` the holds of any node past their expiry.
    fn recover(&mut self, config: &Config, store: &mut dyn Store, now_ms: u64, expired: bool) {
        if !expired && self.recovered_own {
            return;
        }
        let node = (!expired).then_some(config.billing.node.as_str());
        match store.recover(node, now_ms) {
            Ok(settled) => {
                self.recovered_own |= !expired;
                for s in &settled {
                    tracing::warn!(hold = s.id, account = %s.account, call = %s.call, cost = s.cost, "settled a hold its call left open");
                }
                self.stats.recovered += settled.len() as u64;
            }
            Err(e) => {
                self.stats.store_errors += 1;
                tracing::error!(error = %e, "cannot settle open holds");
            }
        }
    }

    /// Holds of calls in progress.
    pub fn len(&self) -> usize {
        self.holds.len()
    }

    pub fn is_empty(&self) -> bool {
        self.holds.is_empty()
    }
}
