//! The server's side of the callback engine ([`crate::callback`]): requests from the APIs and
//! the access numbers, the engine's actions carried out with the B2BUA, routing and billing,
//! and the media plane's DTMF.

use super::*;
use crate::billing::prepaid::Leg;
use crate::callback::{Action, DidMode, Refused, Request, Status, Trigger};
use crate::routing::{Plan, Stage};

/// Why a callback request was refused; [`status`](Self::status) is the HTTP answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CallbackError {
    /// A field is missing or wrong.
    #[error("{0}: {1}")]
    Invalid(&'static str, String),
    /// No such account, or wrong credentials.
    #[error("unknown account or wrong credentials")]
    Forbidden,
    #[error("{0}")]
    Refused(Refused),
    /// The store failed.
    #[error("store: {0}")]
    Store(String),
}

impl CallbackError {
    pub fn status(&self) -> u16 {
        match self {
            CallbackError::Invalid(..) => 400,
            CallbackError::Forbidden => 403,
            CallbackError::Refused(Refused::RateLimited) => 429,
            CallbackError::Refused(_) => 503,
            CallbackError::Store(_) => 500,
        }
    }
}

/// A number or user a callback may call: `+`, digits, or a user name of ours.
fn check_party(field: &'static str, value: &str) -> Result<(), CallbackError> {
    let ok = !value.is_empty()
        && value.len() <= 32
        && value.trim_start_matches('+').chars().all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
        && !value[1..].contains('+');
    if ok {
        Ok(())
    } else {
        Err(CallbackError::Invalid(field, format!("{value:?} is not a number (digits, optionally after +) or a user name")))
    }
}

/// The number a trunk branch dials, as rated.
fn trunk_legs(stage: &Stage, config: &Config, now_ms: u64) -> Vec<Leg> {
    let minute = crate::billing::rating::RateTable::minute_of_day(now_ms);
    stage
        .branches
        .iter()
        .filter(|b| b.trunk)
        .map(|b| {
            let n = crate::billing::rating::international(&crate::billing::cdr::destination(&b.target), &config.international_prefix)
                .to_owned();
            Leg { rate: config.rates.lookup(&n, minute).cloned(), destination: n }
        })
        .take(1)
        .collect()
}

impl ControlPlane {
    /// A callback request from an API: `account` must exist (with `pin`, when given, its PIN).
    /// Returns the job's id (see [`callback_status`](Self::callback_status)).
    pub fn handle_callback(&mut self, request: Request, pin: Option<&str>, now: Now, store: &mut dyn Store) -> Result<u64, CallbackError> {
        crate::billing::prepaid::check_id(&request.account).map_err(|e| CallbackError::Invalid("account", e.why))?;
        check_party("a", &request.a)?;
        if let Some(b) = &request.b {
            check_party("b", b)?;
        }
        let account = store.account(&request.account, now.unix_ms()).map_err(|e| CallbackError::Store(e.to_string()))?;
        let Some((account, _)) = account else { return Err(CallbackError::Forbidden) };
        if let Some(pin) = pin {
            self.check_pin(&account, pin, now)?;
        }
        if !account.enabled {
            return Err(CallbackError::Forbidden);
        }
        let job = self.callbacks.submit(request, now.instant).map_err(CallbackError::Refused)?;
        self.drain(now, store);
        Ok(job)
    }

    /// A callback's progress.
    pub fn callback_status(&self, id: u64) -> Option<Status> {
        self.callbacks.status(id)
    }

    /// Whether `pin` is `account`'s: wrong PINs are counted, and an account with too many is
    /// locked (its right PIN refused too) for a while.
    pub fn check_pin(&mut self, account: &crate::billing::prepaid::Account, pin: &str, now: Now) -> Result<(), CallbackError> {
        if self.callbacks.pin_locked(&account.id, now.instant) {
            return Err(CallbackError::Forbidden);
        }
        if !account.pin_matches(pin) {
            tracing::warn!(account = %account.id, "wrong PIN");
            self.callbacks.pin_failed(&account.id, now.instant);
            return Err(CallbackError::Forbidden);
        }
        self.callbacks.pin_ok(&account.id);
        Ok(())
    }

    /// What calls to `number` (digits) do, if it is a callback access number.
    pub fn callback_did(&self, number: &str) -> Option<DidMode> {
        self.callbacks.did(number)
    }

    /// Media plane `plane`'s events were lost for a while (it may have restarted, reusing leg
    /// ids): callbacks on it waiting for digits stop (goodbye, hang-up) rather than take another
    /// call's; those on other planes go on.
    pub fn handle_media_events_lost(&mut self, plane: usize, now: Now, store: &mut dyn Store) {
        self.callbacks.media_events_lost(plane, now.instant);
        self.drain(now, store);
    }

    /// A DTMF digit from an endpoint, as the media plane reported it on `leg`.
    pub fn handle_dtmf(&mut self, leg: u64, digit: char, now: Now, store: &mut dyn Store) {
        self.callbacks.on_dtmf(leg, digit, now.instant);
        self.drain(now, store);
    }

    /// An INVITE to a callback access number (`did`, its mode): a missed call is refused and
    /// called back, an IVR call answered by the media plane. The caller is the account whose
    /// `ani` is its number (or the subscriber's account). Whether it was one.
    pub(super) fn on_did_invite(
        &mut self,
        key: &TransactionKey,
        request: Request_,
        source: Peer,
        caller: Option<String>,
        now: Now,
        store: &mut dyn Store,
    ) -> Option<Request_> {
        let number = request.uri.auth.as_ref().map(|a| a.user.trim_start_matches('+').to_owned()).unwrap_or_default();
        let Some(mode) = self.callbacks.did(&number) else { return Some(request) };
        let ani = from_value(&request.headers).map(uri_of).and_then(user_host).map(|(user, _)| user).unwrap_or_default();
        let account = match &caller {
            Some(aor) => aor.split_once('@').and_then(|(u, d)| store.settings(u, d).ok().flatten()).and_then(|s| s.account),
            None => store.account_by_ani(&ani).ok().flatten().filter(|a| a.enabled).map(|a| a.id),
        };
        let Some(account) = account else {
            tracing::info!(did = %number, %ani, "a call to a callback number from no customer of ours");
            self.reply(key, &request, 403, now);
            return None;
        };
        match mode {
            DidMode::MissedCall { delay } => {
                // Refused, so the customer pays nothing; then called back.
                let response = self.response(&request, 603, Some("Decline (Calling You Back)"));
                self.respond(key, response, now);
                let callback = Request { account, a: ani, b: None, trigger: Trigger::MissedCall, delay };
                if let Err(e) = self.callbacks.submit(callback, now.instant) {
                    tracing::warn!(error = %e, "missed-call callback refused");
                }
            }
            DidMode::Ivr => {
                if let Err(e) = self.callbacks.can_take(&account) {
                    tracing::info!(%account, error = %e, "an IVR caller refused");
                    let response = self.response(&request, 486, Some("Busy Here (Callbacks Going)"));
                    self.respond(key, response, now);
                    return None;
                }
                // Refused at once: answered already, nothing more to do.
                let call = self.b2bua.handle_invite_ivr(key.clone(), request, source, caller, now)?;
                let job = Request { account, a: ani, b: None, trigger: Trigger::Ivr, delay: Duration::ZERO };
                if self.callbacks.adopt(job, call, now.instant).is_err() {
                    self.b2bua.handle_hangup(call, now);
                }
            }
        }
        None
    }

    pub(super) fn on_callback_action(&mut self, action: Action, now: Now, store: &mut dyn Store) {
        match action {
            Action::Call { job, account, a, b } => {
                let result = self.call_customer(&account, &a, b.as_deref(), job, now, store);
                self.callbacks.placed(job, result, now.instant);
            }
            Action::Prompt { call, legs, file } => {
                self.b2bua.handle_play(call, MediaRequest::Prompt { legs, file });
            }
            Action::Connect { job, call, legs, account, a, b } => {
                if self.b2bua.call_info(call).is_none() {
                    // The call ended meanwhile (its end reached the engine already).
                    return;
                }
                let route = self.route_destination(job, call, &account, &a, &b, now, store);
                if route.is_ok() {
                    self.b2bua.handle_play(call, MediaRequest::Tone { legs, tone: "ringback".into(), looped: true });
                }
                if !self.b2bua.handle_connect(call, route, now) {
                    // The call cannot take a second party (it is ending): the job ends with it.
                    self.callbacks.on_connected(call, Err(500), now.instant);
                }
            }
            Action::Hangup { call } => {
                self.b2bua.handle_hangup(call, now);
            }
        }
    }

    /// Calls job `job`'s customer `a` with credit held for its leg (and `b`'s, when known).
    fn call_customer(&mut self, account: &str, a: &str, b: Option<&str>, job: u64, now: Now, store: &mut dyn Store) -> Result<u64, String> {
        let mut ctx = Ctx { config: &self.config, store, registrar: &self.registrar, now_unix: now.unix() };
        let (first, a_uri, a_aor) =
            crate::routing::first_party(a, "a", &mut ctx).map_err(|(_, r)| format!("customer unreachable ({})", r.status()))?;
        let now_ms = now.unix_ms();
        let mut legs = trunk_legs(&first.0.stage, &self.config, now_ms);
        if let Some(b) = b {
            let (second, _) = crate::routing::second_party(b, "b", a_aor.as_deref(), &a_uri, &mut ctx)
                .map_err(|(_, r)| format!("destination unreachable ({})", r.status()))?;
            legs.extend(trunk_legs(&second.0.stage, &self.config, now_ms));
        }
        let hold = if legs.is_empty() {
            None
        } else {
            let sip_call_id = format!("callback-{job}");
            Some(self.billing.hold(&self.config, store, account, &legs, &sip_call_id, now_ms).map_err(|(_, reason)| reason.to_owned())?)
        };
        let domain = self.config.domains.first().cloned().unwrap_or_default();
        let from_uri = format!("sip:{}@{domain}", self.config.callback.caller_id);
        let call = self.b2bua.handle_originate_ivr(first, a_uri, from_uri, now);
        if let Some((hold, max_s)) = hold {
            self.billing.attach(store, call, hold, now);
            self.b2bua.set_limit(call, Duration::from_secs(max_s), self.config.billing.warning);
        }
        Ok(call)
    }

    /// Routes job `job`'s destination `b` for call `call` and holds credit for both legs
    /// (replacing the first leg's hold): the plan, or the status that refuses it.
    #[allow(clippy::too_many_arguments)]
    fn route_destination(
        &mut self,
        job: u64,
        call: u64,
        account: &str,
        a: &str,
        b: &str,
        now: Now,
        store: &mut dyn Store,
    ) -> Result<(Plan, crate::routing::RouteState), u16> {
        let a_aor = self.b2bua.caller(call).map(str::to_owned);
        let mut ctx = Ctx { config: &self.config, store, registrar: &self.registrar, now_unix: now.unix() };
        // A's leg: rated again (its trunk, if the customer was called out through one).
        let first = crate::routing::first_party(a, "a", &mut ctx).ok();
        let a_uri = first.as_ref().map_or_else(|| format!("sip:{a}"), |(_, uri, _)| uri.clone());
        let a_aor = a_aor.or_else(|| first.as_ref().and_then(|(_, _, aor)| aor.clone()));
        let (routed, _) = crate::routing::second_party(b, "b", a_aor.as_deref(), &a_uri, &mut ctx).map_err(|(_, r)| r.status())?;
        let now_ms = now.unix_ms();
        let mut legs = first
            .filter(|_| self.b2bua.first_party_trunk(call))
            .map(|(f, _, _)| trunk_legs(&f.0.stage, &self.config, now_ms))
            .unwrap_or_default();
        legs.extend(trunk_legs(&routed.0.stage, &self.config, now_ms));
        self.billing.release(store, call, now);
        if !legs.is_empty() {
            let sip_call_id = format!("callback-{job}");
            match self.billing.hold(&self.config, store, account, &legs, &sip_call_id, now_ms) {
                Ok((hold, max_s)) => {
                    self.billing.attach(store, call, hold, now);
                    self.b2bua.set_limit(call, Duration::from_secs(max_s), self.config.billing.warning);
                }
                Err((status, _)) => {
                    // The customer's own time (and the prompt that tells it) stays paid for.
                    if let Some(a_leg) = legs.first().filter(|_| self.b2bua.first_party_trunk(call)) {
                        if let Ok((hold, max_s)) =
                            self.billing.hold(&self.config, store, account, std::slice::from_ref(a_leg), &sip_call_id, now_ms)
                        {
                            self.billing.attach(store, call, hold, now);
                            self.b2bua.set_limit(call, Duration::from_secs(max_s), self.config.billing.warning);
                        }
                    }
                    return Err(status);
                }
            }
        }
        Ok(routed)
    }
}

type Request_ = rsip::Request;
