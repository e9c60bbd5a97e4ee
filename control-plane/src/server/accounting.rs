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
        let Some(radius) = self.config.radius.clone() else { return };
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
