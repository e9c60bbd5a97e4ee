//! Accounts and the decision to let a call out: prepaid balances, postpaid credit limits and the
//! fraud guards, all checked before a trunk is rung.
//!
//! ```text
//!  decide(account, usage, legs)
//!    disabled ─────────────────────────────────────────────────── 403 (account disabled)
//!    a leg's destination starts with a blocked prefix ─────────── 403 (blocked destination)
//!    a leg has no rate ───────────────────────────────────────── 403 (no rate)
//!    open calls ≥ max_concurrent ──────────────────────────────── 403 (too many calls)
//!    calls started in the last minute ≥ max_per_minute ───────── 403 (too many calls a minute)
//!    cap = balance (+ credit_limit if postpaid) − held by open calls, at most max_call_cost
//!    max_seconds = longest call whose legs' charges fit in cap (whole increments),
//!                  at most [billing] max_call_s;  0 ─────────────── 402 (insufficient funds)
//!    Grant { held: the legs' charges for max_seconds, max_seconds }
//! ```
//!
//! The decision is pure; the store runs it inside one write transaction with the account's usage,
//! so two calls (or two control planes sharing a database) never spend the same money. A call's
//! grant is *held* until it ends, then settled at its real cost (never more than held); the call is
//! cut off at `max_seconds` after answer, so it cannot cost more. A callback's two legs are rated
//! apart and held together.

use serde::{Deserialize, Serialize};

use super::rating::{format_amount, parse_amount, Micros, Rate};

/// How an account pays.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// Calls spend the balance; none may spend more than it holds.
    Prepaid,
    /// Calls spend the balance down to minus the credit limit.
    Postpaid,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Prepaid => "prepaid",
            Kind::Postpaid => "postpaid",
        }
    }
}

/// A billing account; subscribers name theirs in their settings (`account`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Account {
    /// Its name (letters, digits, `-_.@`).
    pub id: String,
    pub kind: Kind,
    /// Millionths of `currency`; a postpaid balance may go below 0, down to `-credit_limit`.
    pub balance: Micros,
    pub credit_limit: Micros,
    /// Must be the rate table's currency.
    pub currency: String,
    /// Guards (0: none): calls at once, calls started per minute, cost of one call.
    pub max_concurrent: u32,
    pub max_per_minute: u32,
    pub max_call_cost: Micros,
    /// Destination prefixes (digits, as rated) it may not call.
    pub blocked: Vec<String>,
    pub enabled: bool,
    /// The customer's own numbers (caller IDs): a call from one to a callback access number
    /// is this account's.
    pub ani: Vec<String>,
    /// SHA-256 of `id:pin` (hex), for the web page and the webhook; empty: none set.
    pub pin_hash: String,
}

/// Longest account name.
pub const MAX_ID: usize = 64;

/// Why an account setting was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{key}: {why}")]
pub struct AccountError {
    pub key: String,
    pub why: String,
}

impl Account {
    /// A new enabled account with no guards.
    pub fn new(id: &str, kind: Kind, currency: &str) -> Result<Self, AccountError> {
        check_id(id)?;
        Ok(Account {
            id: id.to_owned(),
            kind,
            balance: 0,
            credit_limit: 0,
            currency: currency.to_owned(),
            max_concurrent: 0,
            max_per_minute: 0,
            max_call_cost: 0,
            blocked: Vec::new(),
            enabled: true,
            ani: Vec::new(),
            pin_hash: String::new(),
        })
    }

    /// Changes one setting (`key=value` from the CLI or the API); the balance changes only by
    /// credit and debit, not here.
    pub fn set(&mut self, key: &str, value: &str) -> Result<(), AccountError> {
        let err = |why: String| AccountError { key: key.to_owned(), why };
        let count = |v: &str| v.trim().parse::<u32>().map_err(|_| err(format!("{v:?} is not a count (0: no limit)")));
        match key {
            "kind" => {
                self.kind = match value {
                    "prepaid" => Kind::Prepaid,
                    "postpaid" => Kind::Postpaid,
                    _ => return Err(err(format!("{value:?} is not prepaid or postpaid"))),
                }
            }
            "credit_limit" => self.credit_limit = parse_amount(value).map_err(err)?,
            "currency" => {
                if value.len() != 3 || !value.chars().all(|c| c.is_ascii_uppercase()) {
                    return Err(err(format!("{value:?} is not a three-letter code such as EUR")));
                }
                value.clone_into(&mut self.currency);
            }
            "max_concurrent" => self.max_concurrent = count(value)?,
            "max_per_minute" => self.max_per_minute = count(value)?,
            "max_call_cost" => self.max_call_cost = parse_amount(value).map_err(err)?,
            "blocked" => {
                let prefixes: Vec<String> =
                    value.split(',').map(|p| p.trim().trim_start_matches('+').to_owned()).filter(|p| !p.is_empty()).collect();
                if let Some(bad) = prefixes.iter().find(|p| p.len() > 16 || !p.chars().all(|c| c.is_ascii_digit())) {
                    return Err(err(format!("{bad:?} is not a prefix of up to 16 digits")));
                }
                if prefixes.len() > crate::settings::MAX_LIST {
                    return Err(err(format!("more than {} prefixes", crate::settings::MAX_LIST)));
                }
                self.blocked = prefixes;
            }
            "ani" => {
                let numbers: Vec<String> = value.split(',').map(|p| p.trim().to_owned()).filter(|p| !p.is_empty()).collect();
                if let Some(bad) = numbers.iter().find(|p| p.len() > 24 || !p.trim_start_matches('+').chars().all(|c| c.is_ascii_digit())) {
                    return Err(err(format!("{bad:?} is not a number of up to 24 digits")));
                }
                if numbers.len() > crate::settings::MAX_LIST {
                    return Err(err(format!("more than {} numbers", crate::settings::MAX_LIST)));
                }
                self.ani = numbers;
            }
            "pin" => {
                if value.is_empty() {
                    self.pin_hash.clear();
                } else if value.len() < 4 || value.len() > 32 {
                    return Err(err("must be 4-32 characters".into()));
                } else {
                    self.pin_hash = pin_hash(&self.id, value);
                }
            }
            "enabled" => {
                self.enabled = match value {
                    "true" | "yes" | "1" => true,
                    "false" | "no" | "0" => false,
                    _ => return Err(err(format!("{value:?} is not true or false"))),
                }
            }
            _ => {
                return Err(err(
                    "unknown (kind, credit_limit, currency, max_concurrent, max_per_minute, max_call_cost, blocked, enabled)".into()
                ))
            }
        }
        Ok(())
    }

    /// One line for people: `acme prepaid balance 10.000000 EUR …`.
    pub fn describe(&self, usage: &Usage) -> String {
        format!(
            "{} {} balance {} {} held {} calls {} credit_limit {} max_concurrent {} max_per_minute {} max_call_cost {} blocked {} ani {} pin {} {}",
            self.id,
            self.kind.as_str(),
            format_amount(self.balance),
            self.currency,
            format_amount(usage.held),
            usage.open,
            format_amount(self.credit_limit),
            self.max_concurrent,
            self.max_per_minute,
            format_amount(self.max_call_cost),
            if self.blocked.is_empty() { "-".into() } else { self.blocked.join(",") },
            if self.ani.is_empty() { "-".into() } else { self.ani.join(",") },
            if self.pin_hash.is_empty() { "unset" } else { "set" },
            if self.enabled { "enabled" } else { "disabled" },
        )
    }

    /// Whether `pin` is this account's PIN (never, if none is set). Compared in constant time.
    pub fn pin_matches(&self, pin: &str) -> bool {
        if self.pin_hash.is_empty() {
            return false;
        }
        let given = pin_hash(&self.id, pin);
        given.len() == self.pin_hash.len() && given.bytes().zip(self.pin_hash.bytes()).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0
    }

    /// Whether `number` (a caller ID, with or without `+`) is one of the customer's.
    pub fn has_ani(&self, number: &str) -> bool {
        let n = number.trim_start_matches('+');
        self.ani.iter().any(|a| a.trim_start_matches('+') == n)
    }

    /// What calls may still hold: the balance (and a postpaid credit limit) less what open
    /// calls hold.
    pub fn available(&self, usage: &Usage) -> Micros {
        let floor = match self.kind {
            Kind::Prepaid => 0,
            Kind::Postpaid => self.credit_limit,
        };
        self.balance.saturating_add(floor).saturating_sub(usage.held)
    }
}

/// SHA-256 of `id:pin`, hex.
pub fn pin_hash(id: &str, pin: &str) -> String {
    sip_core::digest::HashFn::Sha256.hex(&[id.as_bytes(), b":", pin.as_bytes()])
}

/// An account name: 1‥64 of letters, digits and `-_.@`.
pub fn check_id(id: &str) -> Result<(), AccountError> {
    if id.is_empty() || id.len() > MAX_ID || !id.chars().all(|c| c.is_ascii_alphanumeric() || "-_.@".contains(c)) {
        return Err(AccountError { key: "account".into(), why: format!("{id:?} is not 1-{MAX_ID} letters, digits or -_.@") });
    }
    Ok(())
}

/// What an account has going: money held by open calls, how many, and how many calls it
/// started in the last minute.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    pub held: Micros,
    pub open: u32,
    pub last_minute: u32,
}

/// One leg to pay for: the number dialled (digits, as rated) and its rate, if the table has one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Leg {
    pub destination: String,
    pub rate: Option<Rate>,
}

/// What a call may do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    /// Held from the account until the call is settled: the legs' cost for `max_seconds`.
    pub held: Micros,
    /// The longest the call may last once answered.
    pub max_seconds: u64,
    /// The rates of its legs, kept with the hold so that it settles at the rates it started with.
    pub rates: Vec<Rate>,
}

/// Why a call may not go out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Denial {
    Disabled,
    /// A blocked prefix (the account's).
    Blocked(String),
    /// A destination the rate table has no rate for.
    NoRate(String),
    /// The account's currency is not the rate table's.
    Currency,
    Concurrency,
    Velocity,
    /// The balance (or credit) left does not buy the first increment.
    Funds,
}

impl Denial {
    /// The caller's answer: status and reason phrase.
    pub fn status(&self) -> (u16, &'static str) {
        match self {
            Denial::Funds => (402, "Payment Required"),
            Denial::Disabled => (403, "Account Disabled"),
            Denial::Blocked(_) => (403, "Destination Blocked"),
            Denial::NoRate(_) => (403, "No Rate For Destination"),
            Denial::Currency => (403, "Account Currency Not Rated"),
            Denial::Concurrency => (403, "Too Many Calls"),
            Denial::Velocity => (403, "Too Many Calls Per Minute"),
        }
    }

    /// The counter label.
    pub fn label(&self) -> &'static str {
        match self {
            Denial::Funds => "funds",
            Denial::Disabled => "disabled",
            Denial::Blocked(_) => "blocked",
            Denial::NoRate(_) => "no_rate",
            Denial::Currency => "currency",
            Denial::Concurrency => "concurrency",
            Denial::Velocity => "velocity",
        }
    }
}

/// Whether `account`, with `usage` going, may place a call over `legs` (rated in `currency`),
/// and for how long: at most `max_call_s` seconds.
pub fn decide(account: &Account, usage: &Usage, legs: &[Leg], currency: &str, max_call_s: u64) -> Result<Grant, Denial> {
    if !account.enabled {
        return Err(Denial::Disabled);
    }
    for leg in legs {
        if let Some(p) = account.blocked.iter().find(|p| leg.destination.starts_with(p.as_str())) {
            return Err(Denial::Blocked(p.clone()));
        }
        if leg.rate.is_none() {
            return Err(Denial::NoRate(leg.destination.clone()));
        }
    }
    if account.currency != currency {
        return Err(Denial::Currency);
    }
    if account.max_concurrent > 0 && usage.open >= account.max_concurrent {
        return Err(Denial::Concurrency);
    }
    if account.max_per_minute > 0 && usage.last_minute >= account.max_per_minute {
        return Err(Denial::Velocity);
    }
    let rates: Vec<Rate> = legs.iter().filter_map(|l| l.rate.clone()).collect();
    let mut cap = account.available(usage);
    if account.max_call_cost > 0 {
        cap = cap.min(account.max_call_cost);
    }
    let max_seconds = longest(&rates, cap, max_call_s);
    if max_seconds == 0 {
        return Err(Denial::Funds);
    }
    Ok(Grant { held: cost(&rates, max_seconds * 1000), max_seconds, rates })
}

/// What `rates` charge together for `answered_ms` of call.
pub fn cost(rates: &[Rate], answered_ms: u64) -> Micros {
    rates.iter().map(|r| r.charge(answered_ms).cost).fold(0, Micros::saturating_add)
}

/// The longest call (whole seconds, at most `limit`) whose cost at `rates` fits in `cap`; the
/// charges only step at increments, so this ends on one. 0: not even the first second.
fn longest(rates: &[Rate], cap: Micros, limit: u64) -> u64 {
    if cap < 0 || cost(rates, 1000) > cap {
        return 0;
    }
    // cost(lo) <= cap < cost(hi + 1), costs not decreasing with time.
    let (mut lo, mut hi) = (1u64, limit.max(1));
    if cost(rates, hi.saturating_mul(1000)) <= cap {
        return hi;
    }
    while hi - lo > 1 {
        let mid = lo + (hi - lo) / 2;
        if cost(rates, mid * 1000) <= cap {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    lo
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn rate(per_minute: Micros, connect_fee: Micros, initial: u32, increment: u32) -> Rate {
        Rate { prefix: "44".into(), per_minute, connect_fee, initial, increment, period: None, description: String::new() }
    }

    fn prepaid(balance: Micros) -> Account {
        Account { balance, ..Account::new("acme", Kind::Prepaid, "EUR").unwrap() }
    }

    fn leg(r: Rate) -> Leg {
        Leg { destination: "441611234567".into(), rate: Some(r) }
    }

    #[test]
    fn the_balance_buys_whole_increments_and_the_grant_holds_their_cost() {
        // 0.06/min in 60/6: 0.10 buys 60 s (0.06) + 6 × 6 s (0.036) = 96 s for 0.096.
        let g = decide(&prepaid(100_000), &Usage::default(), &[leg(rate(60_000, 0, 60, 6))], "EUR", 14_400).unwrap();
        assert_eq!((g.max_seconds, g.held), (96, 96_000));
        // Less than the first 60 s: refused with 402.
        let e = decide(&prepaid(59_999), &Usage::default(), &[leg(rate(60_000, 0, 60, 6))], "EUR", 14_400).unwrap_err();
        assert_eq!((e.clone(), e.status().0), (Denial::Funds, 402));
        // Held money is not available to a second call.
        let usage = Usage { held: 50_000, open: 1, last_minute: 1 };
        let g = decide(&prepaid(100_000), &usage, &[leg(rate(6_000, 0, 1, 1))], "EUR", 14_400).unwrap();
        assert_eq!((g.max_seconds, g.held), (500, 50_000));
        // The server's longest call caps a cheap one.
        let g = decide(&prepaid(1_000_000_000), &Usage::default(), &[leg(rate(6_000, 0, 1, 1))], "EUR", 3_600).unwrap();
        assert_eq!((g.max_seconds, g.held), (3_600, 360_000));
    }

    #[test]
    fn a_callback_holds_both_legs_at_their_own_rates() {
        // A leg 0.06/min + B leg 0.12/min per second: 0.18/min → 0.09 buys 30 s.
        let legs = [leg(rate(60_000, 0, 1, 1)), Leg { destination: "4930".into(), rate: Some(rate(120_000, 0, 1, 1)) }];
        let g = decide(&prepaid(90_000), &Usage::default(), &legs, "EUR", 14_400).unwrap();
        assert_eq!((g.max_seconds, g.held, g.rates.len()), (30, 90_000, 2));
    }

    #[test]
    fn postpaid_accounts_go_down_to_their_credit_limit() {
        let mut a = Account { kind: Kind::Postpaid, balance: -40_000, credit_limit: 100_000, ..prepaid(0) };
        let g = decide(&a, &Usage::default(), &[leg(rate(60_000, 0, 1, 1))], "EUR", 14_400).unwrap();
        assert_eq!(g.max_seconds, 60, "0.06 of credit left");
        a.balance = -100_000;
        assert_eq!(decide(&a, &Usage::default(), &[leg(rate(60_000, 0, 1, 1))], "EUR", 14_400), Err(Denial::Funds));
    }

    #[test]
    fn guards_refuse_with_their_reason() {
        let r = rate(60_000, 0, 1, 1);
        let mut a = prepaid(10_000_000);
        a.set("blocked", "+4490, 449").unwrap();
        let blocked = Leg { destination: "449012345".into(), rate: Some(r.clone()) };
        assert_eq!(decide(&a, &Usage::default(), &[blocked], "EUR", 60), Err(Denial::Blocked("4490".into())));
        let unrated = Leg { destination: "99".into(), rate: None };
        assert_eq!(decide(&a, &Usage::default(), &[unrated], "EUR", 60), Err(Denial::NoRate("99".into())));
        assert_eq!(decide(&a, &Usage::default(), &[leg(r.clone())], "USD", 60), Err(Denial::Currency));
        a.set("max_concurrent", "2").unwrap();
        a.set("max_per_minute", "5").unwrap();
        assert_eq!(decide(&a, &Usage { held: 0, open: 2, last_minute: 2 }, &[leg(r.clone())], "EUR", 60), Err(Denial::Concurrency));
        assert_eq!(decide(&a, &Usage { held: 0, open: 1, last_minute: 5 }, &[leg(r.clone())], "EUR", 60), Err(Denial::Velocity));
        a.set("max_call_cost", "0.03").unwrap();
        assert_eq!(decide(&a, &Usage::default(), &[leg(r.clone())], "EUR", 14_400).unwrap().max_seconds, 30, "max call cost caps it");
        a.set("enabled", "false").unwrap();
        assert_eq!(decide(&a, &Usage::default(), &[leg(r)], "EUR", 60).map_err(|d| d.status()), Err((403, "Account Disabled")));
        for (key, value) in [("kind", "gold"), ("max_concurrent", "-1"), ("blocked", "44a"), ("currency", "euro"), ("colour", "red")] {
            assert_eq!(a.set(key, value).unwrap_err().key, key, "{key}={value} refused naming its key");
        }
        assert!(Account::new("bad name", Kind::Prepaid, "EUR").is_err());
    }

    proptest! {
        #[test]
        fn a_grant_never_costs_more_than_is_available(
            balance in 0i64..5_000_000, held in 0i64..5_000_000,
            per_minute in 0i64..2_000_000, fee in 0i64..100_000,
            initial in 1u32..120, increment in 1u32..60, limit in 1u64..20_000,
            ms in 0u64..30_000_000,
        ) {
            let a = prepaid(balance);
            let usage = Usage { held, open: 0, last_minute: 0 };
            let r = rate(per_minute, fee, initial, increment);
            if let Ok(g) = decide(&a, &usage, &[leg(r.clone())], "EUR", limit) {
                prop_assert!(g.held <= a.available(&usage));
                prop_assert!(g.max_seconds <= limit);
                prop_assert_eq!(g.held, r.charge(g.max_seconds * 1000).cost);
                // Any call no longer than the grant costs no more than is held.
                let ms = ms.min(g.max_seconds * 1000);
                prop_assert!(r.charge(ms).cost <= g.held);
                // One more increment would not have fitted (unless capped by the limit).
                if g.max_seconds < limit {
                    prop_assert!(r.charge((g.max_seconds + 1) * 1000).cost > a.available(&usage));
                }
            } else {
                prop_assert!(r.charge(1000).cost > a.available(&usage));
            }
        }
    }
}
