//! The RADIUS accounting records of calls ([`crate::billing::radius`]): a session per answered
//! call, Interim-Updates while it lasts, Stop at its end; the driver sends them.

use super::*;
use crate::billing::radius::{Record, Status};

/// Records waiting for the driver; beyond this the oldest go (counted).
const MAX_RECORDS: usize = 100_000;

/// An answered call's accounting session.
#[derive(Debug, Clone)]
pub(super) struct Session {
    id: String,
    user: String,
    calling: String,
    called: String,
    answered_unix_ms: u64,
    next_interim: Option<Instant>,
}

impl ControlPlane {
    /// The next accounting record to send (RADIUS configured).
    pub fn poll_accounting(&mut self) -> Option<Record> {
        self.accounting.pop_front()
    }

    fn push_record(&mut self, record: Record) {
        if self.accounting.len() >= MAX_RECORDS {
            self.accounting.pop_front();
            self.stats.radius_dropped += 1;
        }
        self.accounting.push_back(record);
    }

    /// Call `call` was answered: its session starts.
    pub(super) fn accounting_answered(&mut self, call: u64, now: Now) {
        let Some(radius) = self.config.radius.clone().filter(|r| !r.accounting.is_empty()) else { return };
        if self.sessions.contains_key(&call) {
            return;
        }
        let Some(info) = self.b2bua.call_info(call) else { return };
        let answered_unix_ms = now.unix_ms();
        let user = info.caller.trim_start_matches("sip:").to_owned();
        let called = info.callee.trim_start_matches("sip:").split('@').next().unwrap_or_default().to_owned();
        let session = Session {
            id: format!("{}-{call}-{answered_unix_ms}", radius.nas_identifier),
            user,
            calling: info.caller,
            called,
            answered_unix_ms,
            next_interim: radius.interim.map(|i| now.instant + i),
        };
        let record = Record {
            status: Status::Start,
            session_id: session.id.clone(),
            user: session.user.clone(),
            calling: session.calling.clone(),
            called: session.called.clone(),
            session_time_s: 0,
            cause: String::new(),
            event_unix: (answered_unix_ms / 1000) as u32,
        };
        self.sessions.insert(call, session);
        self.push_record(record);
    }

    /// Call `record` ended: its session stops.
    pub(super) fn accounting_ended(&mut self, record: &crate::b2bua::CallRecord, now: Now) {
        let Some(session) = self.sessions.remove(&record.call) else { return };
        let end_ms = record.ended_ms.max(session.answered_unix_ms);
        let called = record.trunk_number.clone().filter(|n| !n.is_empty()).unwrap_or(session.called);
        self.push_record(Record {
            status: Status::Stop,
            session_id: session.id,
            user: session.user,
            calling: session.calling,
            called,
            session_time_s: ((end_ms - session.answered_unix_ms) / 1000) as u32,
            cause: record.cause.to_owned(),
            event_unix: (now.unix_ms() / 1000) as u32,
        });
    }

    /// Interim-Updates due at `now`.
    pub(super) fn accounting_interims(&mut self, now: Now) {
        let Some(interim) = self.config.radius.as_ref().and_then(|r| r.interim) else { return };
        let due: Vec<u64> =
            self.sessions.iter().filter(|(_, s)| s.next_interim.is_some_and(|t| t <= now.instant)).map(|(&c, _)| c).collect();
        for call in due {
            let Some(s) = self.sessions.get_mut(&call) else { continue };
            s.next_interim = Some(now.instant + interim);
            let record = Record {
                status: Status::Interim,
                session_id: s.id.clone(),
                user: s.user.clone(),
                calling: s.calling.clone(),
                called: s.called.clone(),
                session_time_s: (now.unix_ms().saturating_sub(s.answered_unix_ms) / 1000) as u32,
                cause: String::new(),
                event_unix: now.unix() as u32,
            };
            self.push_record(record);
        }
    }
}

/// Calls waiting for a RADIUS authorisation, at most.
const MAX_PARKED: usize = 10_000;

/// An INVITE waiting for its RADIUS authorisation.
#[derive(Debug)]
pub(super) struct Parked {
    pub(super) key: TransactionKey,
    pub(super) request: Request,
    pub(super) source: Peer,
    pub(super) caller: Option<String>,
    pub(super) plan: crate::routing::Plan,
    pub(super) state: crate::routing::RouteState,
}

impl ControlPlane {
    /// The next call to authorise over RADIUS (`[radius] authentication`).
    pub fn poll_radius_auth(&mut self) -> Option<crate::billing::radius::AuthRequest> {
        self.auth_requests.pop_front()
    }

    /// An initial INVITE routed out through a trunk, when RADIUS authorises such calls: it waits
    /// for the answer ([`handle_radius_auth`](Self::handle_radius_auth)). Returns it back when
    /// RADIUS has nothing to say about it.
    pub(super) fn radius_park(&mut self, parked: Parked, now: Now) -> Option<Parked> {
        let enabled = self.config.radius.as_ref().is_some_and(|r| !r.authentication.is_empty());
        let called = parked.plan.stage.branches.iter().find(|b| b.trunk).map(|b| crate::billing::cdr::destination(&b.target));
        let (true, Some(called)) = (enabled, called) else { return Some(parked) };
        let Parked { key, request, source, caller, plan, state } = parked;
        if self.parked.len() >= MAX_PARKED {
            self.reply(&key, &request, 503, now);
            return None;
        }
        let from = from_value(&request.headers).map(uri_of).unwrap_or_default().to_owned();
        let user = state.payer().map(str::to_owned).or_else(|| caller.clone()).unwrap_or_else(|| {
            from.trim_start_matches("sip:").trim_start_matches("sips:").split('@').next().unwrap_or_default().to_owned()
        });
        let id = self.next_auth;
        self.next_auth += 1;
        let trying = self.response(&request, 100, None);
        self.respond(&key, trying, now);
        self.auth_requests.push_back(crate::billing::radius::AuthRequest { id, user, calling: from, called });
        self.parked_by_key.insert(key.clone(), id);
        self.parked.insert(id, Parked { key, request, source, caller, plan, state });
        None
    }

    /// RADIUS answered (or did not) for parked call `id`: an Accept lets it go (its
    /// Session-Timeout the call's longest), a Reject gets 403, no answer 503.
    pub fn handle_radius_auth(&mut self, id: u64, answer: crate::billing::radius::AuthAnswer, now: Now, store: &mut dyn Store) {
        use crate::billing::radius::AuthAnswer;
        let Some(p) = self.parked.remove(&id) else { return };
        self.parked_by_key.remove(&p.key);
        match answer {
            AuthAnswer::Accept { session_timeout } => {
                let call = self.b2bua.handle_invite(p.key, p.request, p.source, p.caller, p.plan, p.state, now);
                if let (Some(call), Some(max_s)) = (call, session_timeout) {
                    self.b2bua.set_limit(call, Duration::from_secs(u64::from(max_s.max(1))), self.config.billing.warning);
                }
            }
            AuthAnswer::Reject => {
                self.stats.radius_rejected += 1;
                let response = self.response(&p.request, 403, Some("Forbidden (Not Authorised)"));
                self.respond(&p.key, response, now);
            }
            AuthAnswer::NoAnswer => {
                self.stats.radius_unanswered += 1;
                self.reply(&p.key, &p.request, 503, now);
            }
        }
        self.drain(now, store);
    }

    /// The caller cancelled INVITE `key` while it waited for RADIUS: 487. Whether it did.
    pub(super) fn radius_cancel(&mut self, key: &TransactionKey, now: Now) -> bool {
        let Some(id) = self.parked_by_key.remove(key) else { return false };
        if let Some(p) = self.parked.remove(&id) {
            self.reply(&p.key, &p.request, 487, now);
        }
        true
    }
}
