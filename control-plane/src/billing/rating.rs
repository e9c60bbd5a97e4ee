//! Rating: what a call to a destination costs, by the longest matching prefix of a rate table.
//!
//! A rate has a per-minute price, a connect fee, billing increments (`60/6`: the first 60 s are
//! billed whole, then every started 6 s; `1/1`: per second) and, optionally, a time-of-day period
//! (UTC minutes of the day; a period may wrap midnight). For a destination, the longest prefix
//! wins; among the rates of that prefix, one whose period holds the call's start wins over one
//! without a period. Amounts are integers in millionths of the table's currency, so sums and
//! comparisons are exact; a cost is rounded up to the next millionth.
//!
//! Pure: no store, no clock (the call's start is given). Rate tables come from CSV:
//!
//! ```text
//! prefix,per_minute,connect_fee,initial,increment,period,description
//! 44,0.0120,0,60,6,,United Kingdom
//! 4420,0.0100,0.0500,1,1,08:00-18:00,London (day)
//! ```

use std::fmt;

/// Millionths of a currency unit.
pub type Micros = i64;

/// One line of a rate table.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Rate {
    /// Digits a destination starts with (empty: every destination).
    pub prefix: String,
    pub per_minute: Micros,
    pub connect_fee: Micros,
    /// Seconds billed at least, once answered, and the step after them.
    pub initial: u32,
    pub increment: u32,
    /// UTC minutes of the day `[start, end)` this rate applies in (wrapping midnight if
    /// `end <= start`); `None`: all day.
    pub period: Option<(u16, u16)>,
    pub description: String,
}

/// Why a rate table line was refused; `line` counts from 1 (the header is line 1).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {field}: {why}")]
pub struct RateError {
    pub line: usize,
    pub field: &'static str,
    pub why: String,
}

/// What a call costs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Charge {
    pub billed_s: u64,
    pub cost: Micros,
}

/// A rate table.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RateTable {
    rates: Vec<Rate>,
}

/// `"0.0123"` → 12_300 millionths; at most 6 decimals, not negative.
pub fn parse_amount(s: &str) -> Result<Micros, String> {
    let s = s.trim();
    if s.is_empty() {
        return Ok(0);
    }
    let (whole, frac) = s.split_once('.').unwrap_or((s, ""));
    if whole.is_empty() && frac.is_empty() || !whole.chars().chain(frac.chars()).all(|c| c.is_ascii_digit()) {
        return Err(format!("{s:?} is not an amount like 0.0123"));
    }
    if frac.len() > 6 {
        return Err(format!("{s:?} has more than 6 decimals"));
    }
    let whole: i64 = if whole.is_empty() { 0 } else { whole.parse().map_err(|_| format!("{s:?} is too large"))? };
    let frac: i64 = format!("{frac:0<6}").parse().map_err(|_| format!("{s:?} is not an amount"))?;
    whole.checked_mul(1_000_000).and_then(|w| w.checked_add(frac)).ok_or_else(|| format!("{s:?} is too large"))
}

/// Millionths as a decimal amount (`12_300` → `"0.012300"`).
pub fn format_amount(m: Micros) -> String {
    let sign = if m < 0 { "-" } else { "" };
    let m = m.unsigned_abs();
    format!("{sign}{}.{:06}", m / 1_000_000, m % 1_000_000)
}

fn parse_period(s: &str) -> Result<Option<(u16, u16)>, String> {
    let s = s.trim();
    if s.is_empty() {
        return Ok(None);
    }
    let minute = |t: &str| -> Option<u16> {
        let (h, m) = t.trim().split_once(':')?;
        let (h, m): (u16, u16) = (h.parse().ok()?, m.parse().ok()?);
        (h < 24 && m < 60).then_some(h * 60 + m)
    };
    let (a, b) = s.split_once('-').ok_or_else(|| format!("{s:?} is not a period like 08:00-18:00"))?;
    match (minute(a), minute(b)) {
        (Some(a), Some(b)) if a != b => Ok(Some((a, b))),
        _ => Err(format!("{s:?} is not a period like 08:00-18:00 (start and end differ)")),
    }
}

impl RateTable {
    pub fn new(rates: Vec<Rate>) -> Self {
        Self { rates }
    }

    pub fn rates(&self) -> &[Rate] {
        &self.rates
    }

    /// A table from CSV text (a header line, then one rate per line; `#` lines and blank lines
    /// are skipped). Errors name the line and field.
    pub fn from_csv(text: &str) -> Result<Self, RateError> {
        let mut rates = Vec::new();
        for (i, line) in text.lines().enumerate().skip(1) {
            let n = i + 1;
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let f: Vec<&str> = line.splitn(7, ',').map(str::trim).collect();
            let err = |field: &'static str, why: String| RateError { line: n, field, why };
            let get = |k: usize| f.get(k).copied().unwrap_or("");
            let prefix = get(0).trim_start_matches('+');
            if !prefix.chars().all(|c| c.is_ascii_digit()) || prefix.len() > 32 {
                return Err(err("prefix", format!("{prefix:?} is not up to 32 digits")));
            }
            let int = |k: usize, field: &'static str, default: u32| -> Result<u32, RateError> {
                match get(k) {
                    "" => Ok(default),
                    v => v
                        .parse::<u32>()
                        .ok()
                        .filter(|x| (1..=3600).contains(x))
                        .ok_or_else(|| err(field, format!("{v:?} is not 1-3600 seconds"))),
                }
            };
            if get(1).is_empty() {
                return Err(err("per_minute", "missing (a line without a price would make calls free)".into()));
            }
            rates.push(Rate {
                prefix: prefix.to_owned(),
                per_minute: parse_amount(get(1)).map_err(|w| err("per_minute", w))?,
                connect_fee: parse_amount(get(2)).map_err(|w| err("connect_fee", w))?,
                initial: int(3, "initial", 60)?,
                increment: int(4, "increment", 60)?,
                period: parse_period(get(5)).map_err(|w| err("period", w))?,
                description: get(6).to_owned(),
            });
        }
        Ok(Self { rates })
    }

    /// The rate for `destination` (its digits; a leading `+` is ignored) for a call starting
    /// at UTC minute of the day `minute`.
    pub fn lookup(&self, destination: &str, minute: u16) -> Option<&Rate> {
        let digits = destination.trim_start_matches('+');
        let in_period = |r: &Rate| match r.period {
            None => true,
            Some((a, b)) if a < b => (a..b).contains(&minute),
            Some((a, b)) => minute >= a || minute < b,
        };
        self.rates.iter().filter(|r| digits.starts_with(&r.prefix) && in_period(r)).max_by_key(|r| (r.prefix.len(), r.period.is_some()))
    }

    /// Removes the international prefix (e.g. `00`) from the table's prefixes, so that a table
    /// written either way (`0049`, `49`) rates numbers dialled either way (see [`international`]).
    pub fn normalise(&mut self, international_prefix: &str) {
        for r in &mut self.rates {
            r.prefix = international(&r.prefix, international_prefix).to_owned();
        }
    }

    /// The UTC minute of the day of a UNIX time in milliseconds.
    pub fn minute_of_day(unix_ms: u64) -> u16 {
        ((unix_ms / 60_000) % 1440) as u16
    }
}

/// `number` without a leading `+` or international prefix (`+4930…` and `004930…` are both
/// `4930…`); an empty prefix only drops the `+`.
pub fn international<'a>(number: &'a str, international_prefix: &str) -> &'a str {
    let n = number.trim_start_matches('+');
    if international_prefix.is_empty() {
        return n;
    }
    n.strip_prefix(international_prefix).unwrap_or(n)
}

impl Rate {
    /// The seconds billed for `answered_s` seconds of call (0 for an unanswered call).
    pub fn billed_seconds(&self, answered_s: u64) -> u64 {
        if answered_s == 0 {
            return 0;
        }
        let (initial, step) = (u64::from(self.initial.max(1)), u64::from(self.increment.max(1)));
        if answered_s <= initial {
            return initial;
        }
        initial + (answered_s - initial).div_ceil(step) * step
    }

    /// What `answered_ms` of call costs (an unanswered call costs nothing).
    pub fn charge(&self, answered_ms: u64) -> Charge {
        let answered_s = answered_ms.div_ceil(1000);
        let billed_s = self.billed_seconds(answered_s);
        if billed_s == 0 {
            return Charge { billed_s: 0, cost: 0 };
        }
        let usage = (i128::from(self.per_minute) * i128::from(billed_s) + 59) / 60;
        let cost = i128::from(self.connect_fee) + usage;
        Charge { billed_s, cost: i64::try_from(cost).unwrap_or(i64::MAX) }
    }

    /// The longest call `balance` pays for at this rate, in whole billing increments (0 if it
    /// does not cover the connect fee and the first increment).
    pub fn max_seconds(&self, balance: Micros) -> u64 {
        let left = i128::from(balance) - i128::from(self.connect_fee);
        if left <= 0 {
            return 0;
        }
        let (initial, step) = (u64::from(self.initial.max(1)), u64::from(self.increment.max(1)));
        if self.per_minute <= 0 {
            return u64::MAX;
        }
        let affordable = u64::try_from(left * 60 / i128::from(self.per_minute)).unwrap_or(u64::MAX);
        if affordable < initial {
            return 0;
        }
        initial + (affordable - initial) / step * step
    }
}

impl fmt::Display for Rate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} at {}/min + {} ({}/{})",
            self.prefix,
            format_amount(self.per_minute),
            format_amount(self.connect_fee),
            self.initial,
            self.increment
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TABLE: &str = "prefix,per_minute,connect_fee,initial,increment,period,description\n\
        # comments and blank lines are skipped\n\
        \n\
        44,0.0120,0,60,6,,United Kingdom\n\
        4420,0.0100,0.0500,1,1,08:00-18:00,London (day)\n\
        4420,0.0060,0.0500,1,1,,London\n\
        +1,0.0090,,30,6,22:00-06:00,North America (night)\n\
        ,0.5,,60,60,,Everywhere else\n";

    fn table() -> RateTable {
        RateTable::from_csv(TABLE).expect("table")
    }

    #[test]
    fn the_longest_prefix_wins_and_a_period_beats_all_day() {
        let t = table();
        let at = |dest: &str, hhmm: u16| t.lookup(dest, hhmm / 100 * 60 + hhmm % 100).map(|r| r.description.as_str());
        assert_eq!(at("+442071234567", 1200), Some("London (day)"));
        assert_eq!(at("442071234567", 2000), Some("London"), "outside the day period: the all-day rate");
        assert_eq!(at("441611234567", 1200), Some("United Kingdom"));
        assert_eq!(at("12125551234", 2300), Some("North America (night)"), "a period wrapping midnight");
        assert_eq!(at("12125551234", 300), Some("North America (night)"));
        assert_eq!(at("12125551234", 1200), Some("Everywhere else"));
        assert_eq!(RateTable::default().lookup("44", 0), None);
        assert_eq!(RateTable::minute_of_day(86_400_000 + 61_000), 1);
    }

    #[test]
    fn calls_are_billed_in_their_increments_with_the_connect_fee() {
        let t = table();
        let uk = t.lookup("441611234567", 0).expect("uk");
        // 60/6 at 0.012/min: 1 s bills 60 s; 61 s bills 66 s; unanswered bills nothing.
        assert_eq!(uk.charge(1_000), Charge { billed_s: 60, cost: 12_000 });
        assert_eq!(uk.charge(61_000), Charge { billed_s: 66, cost: 13_200 });
        assert_eq!(uk.charge(60_001), Charge { billed_s: 66, cost: 13_200 }, "a started second counts");
        assert_eq!(uk.charge(0), Charge { billed_s: 0, cost: 0 });
        let london = t.lookup("442071234567", 12 * 60).expect("london");
        // 1/1 at 0.01/min + 0.05: 7 s = 0.05 + 7/60 × 0.01, rounded up to the millionth.
        assert_eq!(london.charge(7_000), Charge { billed_s: 7, cost: 50_000 + 1_167 });
    }

    #[test]
    fn a_balance_buys_whole_increments_only() {
        let t = table();
        let uk = t.lookup("44161", 0).expect("uk");
        // 0.012/min: 0.0132 buys 66 s exactly; a little less, 60 s; below one minute's worth, nothing.
        assert_eq!(uk.max_seconds(13_200), 66);
        assert_eq!(uk.max_seconds(13_199), 60);
        assert_eq!(uk.max_seconds(11_999), 0);
        let london = t.lookup("4420", 12 * 60).expect("london");
        assert_eq!(london.max_seconds(50_000), 0, "the connect fee alone");
        assert_eq!(london.max_seconds(50_000 + 10_000), 60);
        // What a balance buys never costs more than the balance.
        for balance in [12_000, 13_200, 60_000, 1_000_000, 7_654_321] {
            for r in t.rates() {
                let s = r.max_seconds(balance);
                if s > 0 && s < u64::MAX {
                    assert!(r.charge(s * 1000).cost <= balance, "{r} for {balance}: {s} s");
                }
            }
        }
    }

    #[test]
    fn numbers_and_prefixes_dialled_with_plus_or_the_international_prefix_rate_alike() {
        assert_eq!(international("+4930123", "00"), "4930123");
        assert_eq!(international("004930123", "00"), "4930123");
        assert_eq!(international("030123", "00"), "030123", "a national number keeps its 0");
        assert_eq!(international("004930123", ""), "004930123");
        let mut t = RateTable::from_csv("h\n0049,0.06,0,1,1,,Germany\n+44,0.01,0,1,1,,UK\n").expect("table");
        t.normalise("00");
        assert_eq!(t.rates().iter().map(|r| r.prefix.as_str()).collect::<Vec<_>>(), ["49", "44"]);
        assert_eq!(t.lookup(international("+49301", "00"), 0).map(|r| r.description.as_str()), Some("Germany"));
        assert_eq!(t.lookup(international("0044207", "00"), 0).map(|r| r.description.as_str()), Some("UK"));
    }

    #[test]
    fn amounts_parse_exactly_and_bad_lines_are_named() {
        assert_eq!(parse_amount("0.0123"), Ok(12_300));
        assert_eq!(parse_amount("12"), Ok(12_000_000));
        assert_eq!(parse_amount(".5"), Ok(500_000));
        assert_eq!(parse_amount(""), Ok(0));
        assert!(
            parse_amount("-1").is_err() && parse_amount("0.0000001").is_err() && parse_amount("1e3").is_err() && parse_amount(".").is_err()
        );
        assert_eq!(format_amount(12_300), "0.012300");
        let bad = |line: &str| RateTable::from_csv(&format!("header\n{line}")).unwrap_err();
        assert_eq!(bad("44x,0.1").field, "prefix");
        assert_eq!(bad("4420").field, "per_minute", "no price is no line");
        assert_eq!(bad("44,abc").field, "per_minute");
        assert_eq!(bad("44,0.1,z").field, "connect_fee");
        assert_eq!(bad("44,0.1,0,0").field, "initial");
        assert_eq!(bad("44,0.1,0,60,99999").field, "increment");
        assert_eq!(bad("44,0.1,0,60,6,25:00-26:00").field, "period");
        assert_eq!(bad("44,0.1,0,60,6,08:00-08:00").line, 2);
    }
}
