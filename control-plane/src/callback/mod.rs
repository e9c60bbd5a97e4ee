//! The callback engine: the customer (A) is called, hears a prompt, keys in the destination (B)
//! if the request did not name it, and is joined to B; the account pays for both legs.
//!
//! ```text
//!  submit(request) ── account busy (max_per_account), queue full ──────────────► refused
//!     Queued ─► Action::Call (the server holds credit, calls A with the media plane answering)
//!  A answers ─► on_ivr: B known ─► Action::Connect(B) + ringback
//!                       else   ─► Action::Prompt(enter-number), digits until # or a pause
//!  digits ─► B (4-20 digits) ─► Action::Connect; else invalid-number (3 tries) then goodbye
//!  Connected(Ok) ─► Connected … Ended ─► Done(completed)
//!  Connected(Err) ─► not-available, then hang up ─► Done(destination failed)
//!  Ended before A answered ─► again after retry_interval (retries times) ─► Done(no answer)
//! ```
//!
//! Sans-IO: requests, call events, DTMF and time come in; [`Action`]s go out for the server to
//! carry out (it owns the calls, the credit and the media plane). Jobs are kept (status for the
//! API and the web page) for [`KEEP_DONE`] after they end.

pub(crate) mod config;
pub mod http;

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use crate::media_pool::plane_of;

/// How long an ended job's status stays readable.
pub const KEEP_DONE: Duration = Duration::from_secs(600);

/// `[callback]` settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallbackConfig {
    /// HTTP API, webhook and web page (none: only the gRPC API and DIDs trigger callbacks).
    pub listen: Option<std::net::SocketAddr>,
    /// Bearer tokens of the HTTP API (integrators); the web page and the webhook use the
    /// account's PIN instead.
    pub api_tokens: Vec<String>,
    /// Who A sees calling (a number or user of ours).
    pub caller_id: String,
    /// Calls to A that go unanswered are tried again this many times, this far apart.
    pub retries: u32,
    pub retry_interval: Duration,
    /// Callbacks of one account at once.
    pub max_per_account: u32,
    /// Jobs waiting or running, all accounts.
    pub max_jobs: usize,
    /// Requests per account (and per HTTP source) a minute.
    pub requests_per_minute: u32,
    /// Waiting for the first digit, and between digits.
    pub first_digit: Duration,
    pub next_digit: Duration,
    /// Prompts (WAV files in the media plane's prompt_dir).
    pub prompt_enter: String,
    pub prompt_invalid: String,
    pub prompt_unavailable: String,
    pub prompt_goodbye: String,
    /// Access numbers: calls to them start a callback (missed call) or an IVR.
    pub dids: Vec<Did>,
}

impl Default for CallbackConfig {
    fn default() -> Self {
        CallbackConfig {
            listen: None,
            api_tokens: Vec::new(),
            caller_id: "callback".into(),
            retries: 2,
            retry_interval: Duration::from_secs(60),
            max_per_account: 2,
            max_jobs: 1000,
            requests_per_minute: 10,
            first_digit: Duration::from_secs(15),
            next_digit: Duration::from_secs(5),
            prompt_enter: "enter-number.wav".into(),
            prompt_invalid: "invalid-number.wav".into(),
            prompt_unavailable: "not-available.wav".into(),
            prompt_goodbye: "goodbye.wav".into(),
            dids: Vec::new(),
        }
    }
}

/// An access number.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Did {
    /// Digits as dialled to us (the Request-URI's user part, without `+`).
    pub number: String,
    pub mode: DidMode,
}

/// What a call to a DID does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DidMode {
    /// Refused (the customer pays nothing), then the caller is called back after `delay`.
    MissedCall { delay: Duration },
    /// Answered by the media plane: the caller keys in the destination and is joined to it.
    Ivr,
}

/// What started a callback.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    Api,
    Web,
    Webhook,
    MissedCall,
    Ivr,
}

impl Trigger {
    pub fn as_str(self) -> &'static str {
        match self {
            Trigger::Api => "api",
            Trigger::Web => "web",
            Trigger::Webhook => "webhook",
            Trigger::MissedCall => "missed-call",
            Trigger::Ivr => "ivr",
        }
    }
}

/// A callback to make.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub account: String,
    /// The customer: a number or a subscriber.
    pub a: String,
    /// The destination, if known; else keyed in by A.
    pub b: Option<String>,
    pub trigger: Trigger,
    /// Not before this (a missed call's delay).
    pub delay: Duration,
}

/// Where a job is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Queued,
    CallingA,
    /// A answered and keys in the destination.
    Collecting,
    CallingB,
    Connected,
    /// A hears a last prompt (goodbye, not available) before the hang-up.
    Ending,
    Done,
}

impl Phase {
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Queued => "queued",
            Phase::CallingA => "calling-customer",
            Phase::Collecting => "collecting-destination",
            Phase::CallingB => "calling-destination",
            Phase::Connected => "connected",
            Phase::Ending => "ending",
            Phase::Done => "done",
        }
    }
}

/// A job's state, for the API and the web page.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Status {
    pub id: u64,
    pub account: String,
    pub a: String,
    pub b: Option<String>,
    pub trigger: Trigger,
    pub phase: Phase,
    /// Calls to A so far.
    pub attempts: u32,
    /// Why it ended (`completed`, `no-answer`, `destination-failed`, `invalid-number`,
    /// `refused: <reason>`, `hangup`, …); empty while it runs.
    pub result: String,
    /// The call, once placed.
    pub call: Option<u64>,
}

/// What the server must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Hold credit for job `job` and call its A (a service call: [`Outcome`] through
    /// [`Engine::placed`]).
    Call { job: u64, account: String, a: String, b: Option<String> },
    /// Play `file` once to the legs of `call`.
    Prompt { call: u64, legs: Vec<u64>, file: String },
    /// Hold credit for A and B together and join B to `call`, ringback to A meanwhile.
    Connect { job: u64, call: u64, legs: Vec<u64>, account: String, a: String, b: String },
    /// End `call`.
    Hangup { call: u64 },
}

/// Why a request is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    #[error("this account has as many callbacks going as it may")]
    AccountBusy,
    #[error("too many requests for this account; try again in a minute")]
    RateLimited,
    #[error("too many callbacks waiting")]
    Full,
}

#[derive(Debug)]
struct Job {
    request: Request,
    phase: Phase,
    attempts: u32,
    /// Queued: when to call; Collecting: digit timeout; after destination-failed: hang-up time.
    at: Option<Instant>,
    call: Option<u64>,
    legs: Vec<u64>,
    digits: String,
    tries: u32,
    connected: bool,
    result: String,
    ended: Option<Instant>,
}

/// The engine.
#[derive(Debug)]
pub struct Engine {
    config: CallbackConfig,
    jobs: HashMap<u64, Job>,
    by_call: HashMap<u64, u64>,
    by_leg: HashMap<u64, u64>,
    next_id: u64,
    /// Request times per account, the last minute.
    recent: HashMap<String, VecDeque<Instant>>,
    actions: VecDeque<Action>,
    /// Wrong PINs per account.
    pin_failures: HashMap<String, PinFailures>,
    pub stats: CallbackStats,
}

/// An account's recent wrong PINs.
#[derive(Debug, Clone, Copy)]
struct PinFailures {
    count: u32,
    since: Instant,
    locked_until: Option<Instant>,
}

/// Wrong PINs an account may see within [`PIN_LOCK`] before it is locked for [`PIN_LOCK`].
pub const PIN_FAILURES: u32 = 5;
pub const PIN_LOCK: Duration = Duration::from_secs(900);
/// Accounts whose wrong PINs are remembered, at most.
const MAX_PIN_ACCOUNTS: usize = 100_000;

/// Counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CallbackStats {
    pub requests: u64,
    pub refused: u64,
    pub calls_to_a: u64,
    pub connected: u64,
    pub completed: u64,
    pub failed: u64,
    /// Wrong PINs (web page, webhook).
    pub pin_failures: u64,
}

/// Destinations keyed in: 4 to 20 digits.
fn valid_destination(digits: &str) -> bool {
    (4..=20).contains(&digits.len()) && digits.chars().all(|c| c.is_ascii_digit())
}

/// Tries of keying in the destination before goodbye.
const TRIES: u32 = 3;
/// How long the goodbye or not-available prompt plays before the hang-up.
const PROMPT_TIME: Duration = Duration::from_secs(5);

impl Engine {
    pub fn new(config: CallbackConfig) -> Self {
        Engine {
            config,
            jobs: HashMap::new(),
            by_call: HashMap::new(),
            by_leg: HashMap::new(),
            next_id: 1,
            recent: HashMap::new(),
            actions: VecDeque::new(),
            pin_failures: HashMap::new(),
            stats: CallbackStats::default(),
        }
    }

    /// Whether `account` is locked by wrong PINs at `now` (it may not use its PIN).
    pub fn pin_locked(&self, account: &str, now: Instant) -> bool {
        match self.pin_failures.get(account) {
            Some(f) => f.locked_until.is_some_and(|t| now < t),
            // The table is full of others' failures: nobody new is let try (fail closed).
            None => self.pin_failures.len() >= MAX_PIN_ACCOUNTS,
        }
    }

    /// A wrong PIN for `account` at `now`: the account is locked for [`PIN_LOCK`] from its
    /// [`PIN_FAILURES`]th failure within that time.
    pub fn pin_failed(&mut self, account: &str, now: Instant) {
        self.stats.pin_failures += 1;
        if !self.pin_failures.contains_key(account) && self.pin_failures.len() >= MAX_PIN_ACCOUNTS {
            self.pin_failures.retain(|_, f| f.locked_until.is_some_and(|t| now < t) || now.saturating_duration_since(f.since) < PIN_LOCK);
            if self.pin_failures.len() >= MAX_PIN_ACCOUNTS {
                return;
            }
        }
        let f = self.pin_failures.entry(account.to_owned()).or_insert(PinFailures { count: 0, since: now, locked_until: None });
        if f.locked_until.is_some_and(|t| now >= t) || now.saturating_duration_since(f.since) >= PIN_LOCK {
            *f = PinFailures { count: 0, since: now, locked_until: None };
        }
        f.count += 1;
        if f.count >= PIN_FAILURES {
            f.locked_until = Some(now + PIN_LOCK);
        }
    }

    /// The right PIN for `account`: its failures are forgotten.
    pub fn pin_ok(&mut self, account: &str) {
        self.pin_failures.remove(account);
    }

    /// Whether a new job of `account` would be taken now (callbacks at once, all jobs), without
    /// counting it.
    pub fn can_take(&self, account: &str) -> Result<(), Refused> {
        let running = self.jobs.values().filter(|j| j.phase != Phase::Done).count();
        if running >= self.config.max_jobs {
            return Err(Refused::Full);
        }
        let mine = self.jobs.values().filter(|j| j.phase != Phase::Done && j.request.account == account).count();
        if mine >= self.config.max_per_account as usize {
            return Err(Refused::AccountBusy);
        }
        Ok(())
    }

    pub fn config(&self) -> &CallbackConfig {
        &self.config
    }

    /// A new callback (the account exists: the server checked); its job id.
    pub fn submit(&mut self, request: Request, now: Instant) -> Result<u64, Refused> {
        self.stats.requests += 1;
        let refused = self.admit(&request, now);
        if let Err(e) = refused {
            self.stats.refused += 1;
            return Err(e);
        }
        let id = self.next_id;
        self.next_id += 1;
        let at = now + request.delay;
        self.jobs.insert(
            id,
            Job {
                request,
                phase: Phase::Queued,
                attempts: 0,
                at: Some(at),
                call: None,
                legs: Vec::new(),
                digits: String::new(),
                tries: 0,
                connected: false,
                result: String::new(),
                ended: None,
            },
        );
        self.handle_timeout(now);
        Ok(id)
    }

    fn admit(&mut self, request: &Request, now: Instant) -> Result<(), Refused> {
        let recent = self.recent.entry(request.account.clone()).or_default();
        while recent.front().is_some_and(|t| now.saturating_duration_since(*t) >= Duration::from_secs(60)) {
            recent.pop_front();
        }
        if recent.len() >= self.config.requests_per_minute as usize {
            return Err(Refused::RateLimited);
        }
        recent.push_back(now);
        self.can_take(&request.account)
    }

    /// A job for a call already up (a caller of an IVR access number): it goes straight to
    /// waiting for the call's [`on_ivr`](Self::on_ivr).
    pub fn adopt(&mut self, request: Request, call: u64, now: Instant) -> Result<u64, Refused> {
        let id = self.submit(Request { delay: Duration::from_secs(86_400), ..request }, now)?;
        if let Some(j) = self.jobs.get_mut(&id) {
            j.at = None;
            j.attempts = 1;
            j.request.delay = Duration::ZERO;
        }
        self.placed(id, Ok(call), now);
        Ok(id)
    }

    /// The server placed job `job`'s call to A (`Some(call)`), or could not (`Err(reason)`:
    /// credit refused, A has nowhere to go): the job ends with it.
    pub fn placed(&mut self, job: u64, result: Result<u64, String>, now: Instant) {
        let Some(j) = self.jobs.get_mut(&job) else { return };
        match result {
            Ok(call) => {
                j.call = Some(call);
                j.phase = Phase::CallingA;
                self.by_call.insert(call, job);
            }
            Err(reason) => self.done(job, &format!("refused: {reason}"), now),
        }
    }

    /// A answered call `call`: `legs` face it.
    pub fn on_ivr(&mut self, call: u64, legs: Vec<u64>, now: Instant) {
        let Some(&job) = self.by_call.get(&call) else { return };
        let Some(j) = self.jobs.get_mut(&job) else { return };
        for &leg in &legs {
            self.by_leg.insert(leg, job);
        }
        j.legs = legs.clone();
        match j.request.b.clone() {
            Some(b) => self.connect(job, b),
            None => {
                j.phase = Phase::Collecting;
                j.at = Some(now + self.config.first_digit);
                self.actions.push_back(Action::Prompt { call, legs, file: self.config.prompt_enter.clone() });
            }
        }
    }

    fn connect(&mut self, job: u64, b: String) {
        let Some(j) = self.jobs.get_mut(&job) else { return };
        let Some(call) = j.call else { return };
        j.phase = Phase::CallingB;
        j.at = None;
        j.request.b = Some(b.clone());
        self.actions.push_back(Action::Connect {
            job,
            call,
            legs: j.legs.clone(),
            account: j.request.account.clone(),
            a: j.request.a.clone(),
            b,
        });
    }

    /// A digit A keyed in on `leg`.
    pub fn on_dtmf(&mut self, leg: u64, digit: char, now: Instant) {
        let Some(&job) = self.by_leg.get(&leg) else { return };
        let Some(j) = self.jobs.get_mut(&job).filter(|j| j.phase == Phase::Collecting) else { return };
        if digit == '#' {
            self.digits_done(job, now);
            return;
        }
        if j.digits.len() < 24 {
            j.digits.push(digit);
        }
        j.at = Some(now + self.config.next_digit);
    }

    fn digits_done(&mut self, job: u64, now: Instant) {
        let Some(j) = self.jobs.get_mut(&job) else { return };
        let digits = std::mem::take(&mut j.digits);
        if valid_destination(&digits) {
            self.connect(job, digits);
            return;
        }
        j.tries += 1;
        let Some(call) = j.call else { return };
        if j.tries >= TRIES {
            j.phase = Phase::Ending;
            j.result = "invalid-number".into();
            j.at = Some(now + PROMPT_TIME);
            self.actions.push_back(Action::Prompt { call, legs: j.legs.clone(), file: self.config.prompt_goodbye.clone() });
            return;
        }
        j.at = Some(now + self.config.first_digit);
        // The invalid-number prompt, then the question again (the second replaces the first
        // when it ends: both are queued as one file each).
        self.actions.push_back(Action::Prompt { call, legs: j.legs.clone(), file: self.config.prompt_invalid.clone() });
    }

    /// Media plane `plane`'s events were lost for a while (digits may have been missed, and
    /// after a restart its leg ids reused): its jobs waiting for digits end (goodbye, then
    /// hang-up), and no digit reaches them any more. Jobs on other planes go on.
    pub fn media_events_lost(&mut self, plane: usize, now: Instant) {
        self.by_leg.retain(|&leg, _| plane_of(leg) != plane);
        let collecting: Vec<u64> = self
            .jobs
            .iter()
            .filter(|(_, j)| j.phase == Phase::Collecting && j.legs.first().is_some_and(|&leg| plane_of(leg) == plane))
            .map(|(&id, _)| id)
            .collect();
        for id in collecting {
            let Some(j) = self.jobs.get_mut(&id) else { continue };
            j.phase = Phase::Ending;
            j.result = "media-restarted".into();
            j.at = Some(now + PROMPT_TIME);
            if let Some(call) = j.call {
                self.actions.push_back(Action::Prompt { call, legs: j.legs.clone(), file: self.config.prompt_goodbye.clone() });
            }
        }
    }

    /// B answered (`Ok`) or could not be reached.
    pub fn on_connected(&mut self, call: u64, result: Result<(), u16>, now: Instant) {
        let Some(&job) = self.by_call.get(&call) else { return };
        let Some(j) = self.jobs.get_mut(&job) else { return };
        match result {
            Ok(()) => {
                j.phase = Phase::Connected;
                j.connected = true;
                self.stats.connected += 1;
            }
            Err(status) => {
                j.phase = Phase::Ending;
                j.result = format!("destination-failed: {status}");
                j.at = Some(now + PROMPT_TIME);
                self.actions.push_back(Action::Prompt { call, legs: j.legs.clone(), file: self.config.prompt_unavailable.clone() });
            }
        }
    }

    /// Call `call` ended; `a_answered`: A had answered it.
    pub fn on_ended(&mut self, call: u64, a_answered: bool, cause: &str, now: Instant) {
        let Some(job) = self.by_call.remove(&call) else { return };
        let Some(j) = self.jobs.get_mut(&job) else { return };
        for leg in std::mem::take(&mut j.legs) {
            self.by_leg.remove(&leg);
        }
        j.call = None;
        if !j.result.is_empty() {
            let result = j.result.clone();
            self.done(job, &result, now);
        } else if j.connected {
            self.stats.completed += 1;
            self.done(job, "completed", now);
        } else if !a_answered && cause != "hangup" && j.request.trigger != Trigger::Ivr {
            if j.attempts <= self.config.retries {
                j.phase = Phase::Queued;
                j.at = Some(now + self.config.retry_interval);
            } else {
                self.done(job, "no-answer", now);
            }
        } else {
            let result = if cause == "credit" { "credit" } else { "hangup" };
            self.done(job, result, now);
        }
    }

    fn done(&mut self, job: u64, result: &str, now: Instant) {
        let Some(j) = self.jobs.get_mut(&job) else { return };
        result.clone_into(&mut j.result);
        if result != "completed" {
            self.stats.failed += 1;
        }
        j.phase = Phase::Done;
        j.at = None;
        j.ended = Some(now);
    }

    /// Runs the timers due at `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        let due: Vec<u64> = self.jobs.iter().filter(|(_, j)| j.at.is_some_and(|t| t <= now)).map(|(&id, _)| id).collect();
        for id in due {
            let Some(j) = self.jobs.get_mut(&id) else { continue };
            j.at = None;
            match j.phase {
                Phase::Queued => {
                    j.attempts += 1;
                    self.stats.calls_to_a += 1;
                    self.actions.push_back(Action::Call {
                        job: id,
                        account: j.request.account.clone(),
                        a: j.request.a.clone(),
                        b: j.request.b.clone(),
                    });
                }
                Phase::Collecting => self.digits_done(id, now),
                Phase::Ending => {
                    if let Some(call) = j.call {
                        self.actions.push_back(Action::Hangup { call });
                    }
                }
                _ => {}
            }
        }
        self.jobs.retain(|_, j| j.ended.is_none_or(|e| now.saturating_duration_since(e) < KEEP_DONE));
    }

    /// The next timer.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.jobs.values().filter_map(|j| j.at).min()
    }

    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    /// A job's status.
    pub fn status(&self, id: u64) -> Option<Status> {
        let j = self.jobs.get(&id)?;
        Some(Status {
            id,
            account: j.request.account.clone(),
            a: j.request.a.clone(),
            b: j.request.b.clone(),
            trigger: j.request.trigger,
            phase: j.phase,
            attempts: j.attempts,
            result: j.result.clone(),
            call: j.call,
        })
    }

    /// The access number `number` (digits), if it is one.
    pub fn did(&self, number: &str) -> Option<DidMode> {
        self.config.dids.iter().find(|d| d.number == number).map(|d| d.mode)
    }

    /// Jobs not done.
    pub fn running(&self) -> usize {
        self.jobs.values().filter(|j| j.phase != Phase::Done).count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn engine() -> Engine {
        Engine::new(CallbackConfig { retries: 1, ..CallbackConfig::default() })
    }

    fn request(b: Option<&str>) -> Request {
        Request { account: "acme".into(), a: "004930111".into(), b: b.map(str::to_owned), trigger: Trigger::Api, delay: Duration::ZERO }
    }

    fn actions(e: &mut Engine) -> Vec<Action> {
        std::iter::from_fn(|| e.poll_action()).collect()
    }

    #[test]
    fn a_known_destination_is_connected_once_the_customer_answers() {
        let mut e = engine();
        let t0 = Instant::now();
        let job = e.submit(request(Some("004930222")), t0).unwrap();
        assert_eq!(actions(&mut e), [Action::Call { job, account: "acme".into(), a: "004930111".into(), b: Some("004930222".into()) }]);
        e.placed(job, Ok(7), t0);
        assert_eq!(e.status(job).unwrap().phase, Phase::CallingA);
        e.on_ivr(7, vec![71], t0);
        assert!(matches!(&actions(&mut e)[..], [Action::Connect { call: 7, b, .. }] if b == "004930222"));
        e.on_connected(7, Ok(()), t0);
        e.on_ended(7, true, "completed", t0);
        let s = e.status(job).unwrap();
        assert_eq!((s.phase, s.result.as_str()), (Phase::Done, "completed"));
    }

    #[test]
    fn the_destination_is_keyed_in_and_a_bad_one_asked_again_then_goodbye() {
        let mut e = engine();
        let t0 = Instant::now();
        let job = e.submit(request(None), t0).unwrap();
        actions(&mut e);
        e.placed(job, Ok(7), t0);
        e.on_ivr(7, vec![71], t0);
        assert!(matches!(&actions(&mut e)[..], [Action::Prompt { file, .. }] if file == "enter-number.wav"));
        // "12#": too short.
        for d in ['1', '2', '#'] {
            e.on_dtmf(71, d, t0);
        }
        assert!(matches!(&actions(&mut e)[..], [Action::Prompt { file, .. }] if file == "invalid-number.wav"));
        // Digits ended by a pause.
        for d in "004930222".chars() {
            e.on_dtmf(71, d, t0);
        }
        e.handle_timeout(t0 + Duration::from_secs(4));
        assert!(actions(&mut e).is_empty(), "still within the pause");
        e.handle_timeout(t0 + Duration::from_secs(6));
        assert!(matches!(&actions(&mut e)[..], [Action::Connect { b, .. }] if b == "004930222"));
        // Another job: three bad tries end it with goodbye and a hang-up.
        let t1 = t0 + Duration::from_secs(100);
        let job2 = e.submit(Request { account: "other".into(), ..request(None) }, t1).unwrap();
        actions(&mut e);
        e.placed(job2, Ok(8), t1);
        e.on_ivr(8, vec![81], t1);
        for i in 1..=3u32 {
            e.handle_timeout(t1 + Duration::from_secs(16 * u64::from(i)));
        }
        let a = actions(&mut e);
        assert!(matches!(a.last(), Some(Action::Prompt { file, .. }) if file == "goodbye.wav"), "{a:?}");
        e.handle_timeout(t1 + Duration::from_secs(48 + 6));
        assert_eq!(actions(&mut e), [Action::Hangup { call: 8 }]);
        e.on_ended(8, true, "hangup", t1 + Duration::from_secs(55));
        assert_eq!(e.status(job2).unwrap().result, "invalid-number");
    }

    #[test]
    fn digits_after_the_media_planes_events_were_lost_reach_no_job() {
        let mut e = engine();
        let t0 = Instant::now();
        let job = e.submit(request(None), t0).unwrap();
        actions(&mut e);
        e.placed(job, Ok(7), t0);
        e.on_ivr(7, vec![71], t0);
        actions(&mut e);
        e.media_events_lost(0, t0);
        assert!(matches!(&actions(&mut e)[..], [Action::Prompt { file, .. }] if file == "goodbye.wav"));
        for d in "004930222#".chars() {
            e.on_dtmf(71, d, t0);
        }
        assert!(actions(&mut e).is_empty(), "no connection from a leg id that may be another call's now");
        e.handle_timeout(t0 + Duration::from_secs(6));
        assert_eq!(actions(&mut e), [Action::Hangup { call: 7 }]);
        e.on_ended(7, true, "hangup", t0 + Duration::from_secs(6));
        assert_eq!(e.status(job).unwrap().result, "media-restarted");
    }

    #[test]
    fn events_lost_on_one_media_plane_end_only_the_jobs_whose_legs_are_there() {
        let mut e = engine();
        let t0 = Instant::now();
        let (job_a, job_b) = (e.submit(request(None), t0).unwrap(), e.submit(request(None), t0).unwrap());
        actions(&mut e);
        e.placed(job_a, Ok(7), t0);
        e.placed(job_b, Ok(8), t0);
        // Leg ids carry their plane in bits 48-55 (see media_pool).
        let (on_0, on_1) = (71, (1u64 << 48) | 81);
        e.on_ivr(7, vec![on_0], t0);
        e.on_ivr(8, vec![on_1], t0);
        actions(&mut e);
        e.media_events_lost(1, t0);
        assert!(matches!(&actions(&mut e)[..], [Action::Prompt { call: 8, file, .. }] if file == "goodbye.wav"));
        assert_eq!(e.status(job_a).unwrap().phase, Phase::Collecting, "the job on the other plane goes on");
        for d in "004930222#".chars() {
            e.on_dtmf(on_1, d, t0);
            e.on_dtmf(on_0, d, t0);
        }
        assert!(actions(&mut e).iter().any(|a| matches!(a, Action::Connect { call: 7, .. })), "plane 0's digits still reach their job");
        assert_eq!(e.status(job_b).unwrap().phase, Phase::Ending);
    }

    #[test]
    fn an_unanswered_customer_is_called_again_then_given_up() {
        let mut e = engine();
        let t0 = Instant::now();
        let job = e.submit(request(Some("004930222")), t0).unwrap();
        actions(&mut e);
        e.placed(job, Ok(7), t0);
        e.on_ended(7, false, "failed", t0 + Duration::from_secs(30));
        assert_eq!(e.status(job).unwrap().phase, Phase::Queued);
        e.handle_timeout(t0 + Duration::from_secs(89));
        assert!(actions(&mut e).is_empty());
        e.handle_timeout(t0 + Duration::from_secs(90));
        assert!(matches!(&actions(&mut e)[..], [Action::Call { .. }]));
        e.placed(job, Ok(9), t0 + Duration::from_secs(90));
        e.on_ended(9, false, "failed", t0 + Duration::from_secs(120));
        let s = e.status(job).unwrap();
        assert_eq!((s.phase, s.result.as_str(), s.attempts), (Phase::Done, "no-answer", 2));
    }

    #[test]
    fn accounts_are_limited_in_callbacks_at_once_and_requests_a_minute() {
        let mut e = Engine::new(CallbackConfig { max_per_account: 1, requests_per_minute: 3, ..CallbackConfig::default() });
        let t0 = Instant::now();
        let job = e.submit(request(Some("004930222")), t0).unwrap();
        assert_eq!(e.submit(request(Some("004930222")), t0), Err(Refused::AccountBusy));
        e.placed(job, Err("Payment Required".into()), t0);
        assert_eq!(e.status(job).unwrap().result, "refused: Payment Required");
        e.submit(request(Some("004930222")), t0).unwrap();
        assert_eq!(e.submit(request(Some("004930222")), t0), Err(Refused::RateLimited), "3 a minute");
        assert_eq!(e.stats.refused, 2);
    }
}
