//! Call detail records from an ended call: one for the call and one per leg (the caller's side
//! "a", the called side "b"). A call that went out through a trunk is rated by the number dialled
//! there (the called side and the call carry the cost; export the "call" rows to bill). Calls
//! between phones are recorded, not rated. Pure: the server writes them to the store.

use crate::b2bua::CallRecord;
use crate::billing::rating::RateTable;
use crate::store::Cdr;

/// The number a call is rated by: the user part of the called URI, without `+` or visual
/// separators (`sip:+44 20-7123@x;user=phone` → `44207123`).
pub fn destination(uri: &str) -> String {
    let rest = uri
        .split_once(':')
        .map_or(uri, |(scheme, r)| if scheme.eq_ignore_ascii_case("tel") || scheme.starts_with("sip") { r } else { uri });
    let user = rest.split(['@', ';', '?', '>']).next().unwrap_or_default();
    user.chars().filter(|c| !matches!(c, '+' | '-' | '.' | '(' | ')' | ' ')).collect()
}

/// The records of `call`, rated with `rates` (in `currency`).
/// (`international_prefix`: what dialled numbers may start with for an international call, e.g.
/// `00`; removed before the lookup, as from the rate table: see [`crate::billing::rating::international`].)
pub fn records(call: &CallRecord, rates: &RateTable, currency: &str, international_prefix: &str) -> Vec<Cdr> {
    let destination = destination(call.trunk_number.as_deref().unwrap_or(&call.callee));
    let rated = call.trunk_number.is_some() && !destination.is_empty() && destination.chars().all(|c| c.is_ascii_digit());
    let number = crate::billing::rating::international(&destination, international_prefix);
    let rate = if rated { rates.lookup(number, RateTable::minute_of_day(call.started_ms)) } else { None };
    let charge = rate.map(|r| r.charge(call.duration_ms));
    let base = Cdr {
        call: call.call,
        sip_call_id: call.sip_call_id.clone(),
        leg: String::new(),
        caller: call.caller.clone(),
        callee: call.callee.clone(),
        destination,
        answered_by: call.answered_by.clone().unwrap_or_default(),
        start_ms: call.started_ms,
        answer_ms: call.answered_ms,
        end_ms: call.ended_ms,
        duration_ms: call.duration_ms,
        billed_s: charge.map_or(0, |c| c.billed_s),
        cost: charge.map_or(0, |c| c.cost),
        currency: currency.to_owned(),
        rate_prefix: rate.map_or_else(String::new, |r| r.prefix.clone()),
        status: call.status,
        cause: call.cause.to_owned(),
    };
    // The caller's side is not charged here: it called in. A callback's first party was
    // called out through a trunk: its leg is rated by that number, for its own time.
    let a = match call
        .first_trunk_number
        .as_deref()
        .map(crate::billing::cdr::destination)
        .filter(|n| !n.is_empty() && n.chars().all(|c| c.is_ascii_digit()))
    {
        Some(number) => {
            let rated = crate::billing::rating::international(&number, international_prefix);
            let rate = rates.lookup(rated, RateTable::minute_of_day(call.started_ms));
            let duration_ms = if call.first_answered_ms > 0 { call.ended_ms.saturating_sub(call.first_answered_ms) } else { 0 };
            let charge = rate.map(|r| r.charge(duration_ms));
            Cdr {
                leg: "a".into(),
                destination: number.clone(),
                answer_ms: call.first_answered_ms,
                duration_ms,
                billed_s: charge.map_or(0, |c| c.billed_s),
                cost: charge.map_or(0, |c| c.cost),
                rate_prefix: rate.map_or_else(String::new, |r| r.prefix.clone()),
                ..base.clone()
            }
        }
        None => Cdr { leg: "a".into(), billed_s: 0, cost: 0, rate_prefix: String::new(), ..base.clone() },
    };
    let b = Cdr { leg: "b".into(), ..base.clone() };
    let total = Cdr { leg: "call".into(), cost: base.cost.saturating_add(a.cost), ..base };
    vec![total, a, b]
}

/// CSV of records, with a header line; amounts as decimals of their currency.
pub fn to_csv(cdrs: &[Cdr]) -> String {
    let quote = |s: &str| if s.contains([',', '"', '\n']) { format!("\"{}\"", s.replace('"', "\"\"")) } else { s.to_owned() };
    let mut out = String::from(
        "call,sip_call_id,leg,caller,callee,destination,answered_by,start_ms,answer_ms,end_ms,duration_ms,billed_s,cost,currency,rate_prefix,status,cause\n",
    );
    for c in cdrs {
        out.push_str(&format!(
            "{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{}\n",
            c.call,
            quote(&c.sip_call_id),
            c.leg,
            quote(&c.caller),
            quote(&c.callee),
            quote(&c.destination),
            quote(&c.answered_by),
            c.start_ms,
            c.answer_ms,
            c.end_ms,
            c.duration_ms,
            c.billed_s,
            crate::billing::rating::format_amount(c.cost),
            quote(&c.currency),
            c.rate_prefix,
            c.status,
            quote(&c.cause)
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{MemoryStore, SqliteStore, Store};

    fn call(callee: &str, duration_ms: u64) -> CallRecord {
        CallRecord {
            call: 7,
            sip_call_id: "abc@host".into(),
            caller: "sip:alice@sip.test".into(),
            callee: callee.into(),
            answered_by: Some("sip:+442071234567@trunk.example".into()),
            trunk_number: Some(callee.trim_start_matches("sip:").split('@').next().unwrap_or_default().to_owned()),
            started_ms: 1_800_000_000_000 + 12 * 3_600_000,
            answered_ms: if duration_ms > 0 { 1_800_000_000_000 + 12 * 3_600_000 + 2_000 } else { 0 },
            ended_ms: 1_800_000_000_000 + 12 * 3_600_000 + 2_000 + duration_ms,
            duration_ms,
            status: if duration_ms > 0 { 200 } else { 486 },
            cause: if duration_ms > 0 { "completed" } else { "failed" },
            originated: false,
            first_trunk_number: None,
            first_answered_ms: 0,
        }
    }

    #[test]
    fn a_callbacks_first_leg_is_rated_by_its_own_number_for_its_own_time() {
        // A answered 20 s before B and stayed 20 s longer in all: 60/6 UK for 65 s, London
        // 1/1 for 45 s.
        let mut record = call("sip:+442071234567@sip.test", 45_000);
        record.originated = true;
        record.first_trunk_number = Some("00441611234567".into());
        record.first_answered_ms = record.answered_ms - 20_000;
        let cdrs = records(&record, &rates(), "EUR", "00");
        let by_leg = |leg: &str| cdrs.iter().find(|c| c.leg == leg).expect("leg").clone();
        let (a, b, total) = (by_leg("a"), by_leg("b"), by_leg("call"));
        assert_eq!(
            (a.destination.as_str(), a.duration_ms, a.billed_s, a.cost, a.rate_prefix.as_str()),
            ("00441611234567", 65_000, 66, 13_200, "44")
        );
        assert_eq!((b.billed_s, b.cost), (45, 50_000 + 7_500));
        assert_eq!(total.cost, a.cost + b.cost);
    }

    fn rates() -> RateTable {
        RateTable::from_csv("h\n44,0.0120,0,60,6,,UK\n4420,0.0100,0.0500,1,1,,London\n").expect("rates")
    }

    #[test]
    fn destinations_are_the_callees_digits() {
        assert_eq!(destination("sip:+44 20-7123@x;user=phone"), "44207123");
        assert_eq!(destination("tel:+1-212-555-0100"), "12125550100");
        assert_eq!(destination("sip:bob@sip.test"), "bob");
    }

    #[test]
    fn a_call_has_a_record_and_one_per_leg_with_the_called_side_rated() {
        let r = records(&call("sip:+442071234567@sip.test", 61_000), &rates(), "EUR", "00");
        assert_eq!(r.iter().map(|c| c.leg.as_str()).collect::<Vec<_>>(), ["call", "a", "b"]);
        // 1/1 at 0.01/min + 0.05 connect: 61 s = 0.05 + 61/60 × 0.01.
        assert_eq!((r[0].billed_s, r[0].cost, r[0].rate_prefix.as_str()), (61, 50_000 + 10_167, "4420"));
        assert_eq!((r[1].billed_s, r[1].cost), (0, 0), "the caller's side is not charged");
        assert_eq!(r[2].cost, r[0].cost);
        assert_eq!(r[0].answered_by, "sip:+442071234567@trunk.example");
        // Unanswered: no charge; a destination with no rate: recorded, not rated.
        let unanswered = records(&call("sip:+442071234567@sip.test", 0), &rates(), "EUR", "00");
        assert_eq!((unanswered[0].cost, unanswered[0].status, unanswered[0].cause.as_str()), (0, 486, "failed"));
        let unrated = records(&call("sip:bob@sip.test", 30_000), &rates(), "EUR", "00");
        assert_eq!((unrated[0].cost, unrated[0].rate_prefix.as_str(), unrated[0].duration_ms), (0, "", 30_000));
        // A call between phones, to an all-digit extension, is not rated: only trunk calls are.
        let internal = records(&CallRecord { trunk_number: None, ..call("sip:4420@sip.test", 30_000) }, &rates(), "EUR", "00");
        assert_eq!((internal[0].cost, internal[0].rate_prefix.as_str()), (0, ""));
    }

    #[test]
    fn records_are_written_whole_read_back_since_a_time_and_exported() {
        for mut store in [Box::new(SqliteStore::in_memory().expect("db")) as Box<dyn Store>, Box::new(MemoryStore::default())] {
            let first = records(&call("sip:+442071234567@sip.test", 61_000), &rates(), "EUR", "00");
            let later = records(
                &CallRecord { ended_ms: first[0].end_ms + 10_000, ..call("sip:+441611234567@sip.test", 5_000) },
                &rates(),
                "EUR",
                "00",
            );
            store.add_cdrs(&first).expect("write");
            store.add_cdrs(&later).expect("write");
            assert_eq!(store.cdrs(0).expect("read").len(), 6);
            let since = store.cdrs(first[0].end_ms + 1).expect("read");
            assert_eq!(since, later, "only the later call's, as written");
        }
        let csv = to_csv(&records(&call("sip:+442071234567@sip.test", 61_000), &rates(), "EUR", "00"));
        let lines: Vec<&str> = csv.lines().collect();
        assert_eq!(lines.len(), 4);
        assert!(
            lines[1].starts_with("7,abc@host,call,sip:alice@sip.test,") && lines[1].contains(",0.060167,EUR,4420,200,completed"),
            "{}",
            lines[1]
        );
    }
}
