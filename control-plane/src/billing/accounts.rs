//! Account administration, shared by the CLI (`control-plane account …`) and the APIs: each
//! command checks its input (errors name the field) and returns the text to show.

use super::prepaid::{Account, AccountError, Kind};
use super::rating::{format_amount, parse_amount};
use crate::store::{Store, StoreError};

/// What to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// A new account: `kind` prepaid or postpaid, `balance` a decimal amount, settings as
    /// `key=value` pairs.
    Add {
        id: String,
        kind: String,
        balance: String,
        currency: String,
        pairs: Vec<String>,
    },
    Set {
        id: String,
        pairs: Vec<String>,
    },
    /// Add (or with `debit`, take) `amount`.
    Credit {
        id: String,
        amount: String,
        debit: bool,
    },
    Show {
        id: String,
    },
    List,
}

/// Why a command failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A field or setting is wrong.
    #[error("{0}")]
    Invalid(#[from] AccountError),
    #[error("no account {0}")]
    NotFound(String),
    #[error("{0}")]
    Store(StoreError),
}

impl From<StoreError> for Error {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::AlreadyExists(what) => Error::Invalid(AccountError { key: "id".into(), why: format!("{what} already exists") }),
            e => Error::Store(e),
        }
    }
}

fn invalid(key: &str, why: impl Into<String>) -> Error {
    Error::Invalid(AccountError { key: key.into(), why: why.into() })
}

fn apply(account: &mut Account, pairs: &[String]) -> Result<(), Error> {
    for pair in pairs {
        let (key, value) = pair.split_once('=').ok_or_else(|| invalid(pair, "is not key=value"))?;
        account.set(key.trim(), value.trim())?;
    }
    Ok(())
}

/// Runs `command` against `store` at `now_ms` (usage counts calls of the last minute).
pub fn run(store: &mut dyn Store, command: Command, now_ms: u64) -> Result<String, Error> {
    match command {
        Command::Add { id, kind, balance, currency, pairs } => {
            let kind = match kind.as_str() {
                "prepaid" => Kind::Prepaid,
                "postpaid" => Kind::Postpaid,
                other => return Err(invalid("kind", format!("{other:?} is not prepaid or postpaid"))),
            };
            let mut account = Account::new(&id, kind, "EUR")?;
            account.set("currency", &currency)?;
            account.balance = parse_amount(&balance).map_err(|why| invalid("balance", why))?;
            apply(&mut account, &pairs)?;
            store.add_account(&account)?;
            show(store, &id, now_ms)
        }
        Command::Set { id, pairs } => {
            let (mut account, _) = store.account(&id, now_ms)?.ok_or_else(|| Error::NotFound(id.clone()))?;
            apply(&mut account, &pairs)?;
            store.update_account(&account)?;
            show(store, &id, now_ms)
        }
        Command::Credit { id, amount, debit } => {
            let amount = parse_amount(&amount).map_err(|why| invalid("amount", why))?;
            let balance = store.credit(&id, if debit { -amount } else { amount })?.ok_or(Error::NotFound(id.clone()))?;
            Ok(format!("{id} balance {}\n", format_amount(balance)))
        }
        Command::Show { id } => show(store, &id, now_ms),
        Command::List => {
            let mut out = String::new();
            for a in store.accounts()? {
                out.push_str(&format!("{}\t{}\t{} {}\n", a.id, a.kind.as_str(), format_amount(a.balance), a.currency));
            }
            Ok(out)
        }
    }
}

fn show(store: &mut dyn Store, id: &str, now_ms: u64) -> Result<String, Error> {
    let (account, usage) = store.account(id, now_ms)?.ok_or_else(|| Error::NotFound(id.to_owned()))?;
    Ok(format!("{}\n", account.describe(&usage)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::MemoryStore;

    #[test]
    fn accounts_are_added_topped_up_and_changed_with_errors_naming_the_field() {
        let mut s = MemoryStore::default();
        let add = |id: &str, kind: &str, balance: &str, pairs: &[&str]| Command::Add {
            id: id.into(),
            kind: kind.into(),
            balance: balance.into(),
            currency: "EUR".into(),
            pairs: pairs.iter().map(|p| p.to_string()).collect(),
        };
        let out = run(&mut s, add("acme", "prepaid", "10.00", &["max_concurrent=2"]), 0).unwrap();
        assert!(out.starts_with("acme prepaid balance 10.000000 EUR held 0.000000 calls 0"), "{out}");
        assert!(out.contains("max_concurrent 2"), "{out}");
        let e = run(&mut s, add("acme", "prepaid", "1", &[]), 0).unwrap_err();
        assert!(e.to_string().contains("already exists"), "{e}");
        for (cmd, field) in [
            (add("x", "gold", "1", &[]), "kind"),
            (add("x", "prepaid", "-1", &[]), "balance"),
            (add("x", "prepaid", "1", &["max_per_minute=many"]), "max_per_minute"),
            (add("bad id", "prepaid", "1", &[]), "account"),
        ] {
            let e = run(&mut s, cmd, 0).unwrap_err();
            assert!(matches!(&e, Error::Invalid(a) if a.key == field), "{field}: {e}");
        }
        let credit = |amount: &str, debit| Command::Credit { id: "acme".into(), amount: amount.into(), debit };
        assert_eq!(run(&mut s, credit("2.5", false), 0).unwrap(), "acme balance 12.500000\n");
        assert_eq!(run(&mut s, credit("0.5", true), 0).unwrap(), "acme balance 12.000000\n");
        assert!(matches!(
            run(&mut s, Command::Credit { id: "nobody".into(), amount: "1".into(), debit: false }, 0),
            Err(Error::NotFound(_))
        ));
        let out = run(&mut s, Command::Set { id: "acme".into(), pairs: vec!["blocked=4490".into(), "enabled=false".into()] }, 0).unwrap();
        assert!(out.contains("blocked 4490 ani - pin unset disabled") && out.contains("balance 12.000000"), "{out}");
        assert_eq!(run(&mut s, Command::List, 0).unwrap(), "acme\tprepaid\t12.000000 EUR\n");
    }
}
