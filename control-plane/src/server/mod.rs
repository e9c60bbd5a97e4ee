//! [`ControlPlane`]: the sans-IO core of the SIP server. Bytes and media-plane answers go in with
//! the time; messages to send, media-plane requests and counters come out.
//!
//! ```text
//!  handle_datagram / handle_stream_message ─► limits ─► parse (400 / drop + count) ─► TransactionLayer
//!        ─► REGISTER: digest (401/403) ─► Registrar ─► Store (write-through)
//!        ─► INVITE: 483, digest (407/403), offer checks, routing ─► B2bua::handle_invite
//!        ─► in-dialog, CANCEL, ACK, responses, transaction ends ─► B2bua
//!        ─► OPTIONS: 200; anything else out of dialog: 405
//!  B2bua::poll_sip ─► TransactionLayer (responses, client transactions, ACKs, 2xx retransmissions)
//!  poll_transmit ◄─ layer transmissions + the core's own (STUN answers, stateless 400s)
//!  poll_media ◄─ B2bua::poll_media
//! ```
//!
//! The server is the layer between the transaction layer and the services: it owns the
//! transaction layer, and the B2BUA ([`crate::b2bua`]) never reaches into it; routing
//! ([`crate::routing`]) decides where a call goes before the B2BUA sees it.
//!
//! The store is passed in by `&mut dyn Store` on each call rather than owned, so tests run the
//! same core over [`MemoryStore`](crate::store::MemoryStore) and the binary over SQLite.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rsip::headers::UntypedHeader;
use rsip::{Header, Method, Request, Response, SipMessage};

use sip_core::digest::{parse_credentials, Algorithm, Authenticator, DigestConfig, DigestError, HashFn};
use sip_core::Random;

use sip_core::message::{self, call_id, from_value, response_for, tag_of, to_value, uri_of, user_host, Framing};
use sip_core::transaction::{InviteServerState, LayerEvent, Outgoing, Peer, Role, TimerConfig, TransactionKey, TransactionLayer};

use crate::b2bua::{B2bua, CallEvent, CallInfo, CallUpdate, OfferProblem, SipOut, ALLOW};
use crate::config::Config;
use crate::media::{MediaReply, MediaRequest};
use crate::now::Now;
use crate::registrar::{RegisterError, Registrar};
use crate::routing::Ctx;
use crate::store::Store;

mod accounting;
mod callback;
mod features;
mod messages;
mod referrals;
mod subscriptions;
pub use callback::CallbackError;

/// Counters of the core (exported by the driver).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Messages that did not parse (answered 400 when possible, else dropped).
    pub malformed: u64,
    /// 400s sent for them.
    pub bad_requests_sent: u64,
    /// REGISTERs accepted.
    pub registrations: u64,
    /// REGISTERs refused after authentication (423, 400, 403, 439, 500).
    pub registrations_refused: u64,
    /// SIP outbound registrations ended because their connection closed.
    pub outbound_flows_closed: u64,
    /// Abuse limits: rate-limited messages, bans, scanners, locked users.
    pub limits: crate::limits::LimitStats,
    /// Challenges sent (401/407).
    pub challenges: u64,
    /// Credentials refused with 403.
    pub auth_failures: u64,
    /// Right credentials on an expired nonce (re-challenged with stale=true).
    pub auth_stale: u64,
    /// Credentials whose nonce count was already used (replays; re-challenged).
    pub auth_replays: u64,
    /// Credentials in an algorithm the subscriber or domain may not use (re-challenged).
    pub auth_wrong_algorithm: u64,
    /// Store errors (the request got 500).
    pub store_errors: u64,
    /// Calls whose detail records the store refused (logged).
    pub cdr_failures: u64,
    /// RADIUS accounting records dropped because the driver's queue was full.
    pub radius_dropped: u64,
    /// Calls out through trunks RADIUS refused (403), and that no RADIUS server answered for (503).
    pub radius_rejected: u64,
    pub radius_unanswered: u64,
    /// Calls that found nowhere to go (404, 480, 502).
    pub calls_unrouted: u64,
    /// Calls and their media (the B2BUA's counters).
    pub calls: crate::b2bua::CallStats,
    /// Prepaid authorisation (holds, refusals by reason, settlements).
    pub billing: crate::billing::BillingStats,
    /// Callback requests and their outcomes.
    pub callbacks: crate::callback::CallbackStats,
    /// Requests answered 481 (no such dialog/transaction).
    pub no_dialog: u64,
    /// MESSAGEs sent on to a subscriber's contacts.
    pub messages_relayed: u64,
    /// Click-to-dial REFERs sent to subscribers' phones.
    pub click_to_dial_refers: u64,
    /// Requests refused with 420 for a `Require` option this server does not support.
    pub unsupported_required: u64,
    /// Keep-alives received on UDP (STUN Binding requests, bare CRLFs).
    pub keepalives: u64,
    /// Requests received (new transactions, and ACKs), by method: [`METHODS`], then others.
    pub requests: [u64; METHODS.len() + 1],
    /// Responses sent, by class (1xx … 6xx).
    pub responses: [u64; 6],
}

/// The methods counted by name in [`Stats::requests`].
pub const METHODS: [&str; 14] = [
    "INVITE",
    "ACK",
    "BYE",
    "CANCEL",
    "REGISTER",
    "OPTIONS",
    "INFO",
    "UPDATE",
    "PRACK",
    "SUBSCRIBE",
    "NOTIFY",
    "REFER",
    "MESSAGE",
    "PUBLISH",
];

impl Stats {
    fn count_request(&mut self, method: &rsip::Method) {
        let name = method.to_string();
        let at = METHODS.iter().position(|m| *m == name).unwrap_or(METHODS.len());
        if let Some(c) = self.requests.get_mut(at) {
            *c += 1;
        }
    }
}

/// The core.
#[derive(Debug)]
pub struct ControlPlane {
    config: Arc<Config>,
    layer: TransactionLayer,
    auth: Authenticator,
    registrar: Registrar,
    /// Abuse limits (rates, password guessing, scanners).
    limits: crate::limits::Limits,
    /// Calls.
    b2bua: B2bua,
    /// Credit held by calls out through trunks.
    billing: crate::billing::Billing,
    /// Callbacks and their IVR.
    callbacks: crate::callback::Engine,
    /// RADIUS accounting: sessions of answered calls, records for the driver.
    sessions: std::collections::HashMap<u64, accounting::Session>,
    accounting: VecDeque<crate::billing::radius::Record>,
    /// RADIUS authorisation: INVITEs waiting, by request id and by transaction, and the requests.
    parked: std::collections::HashMap<u64, accounting::Parked>,
    parked_by_key: std::collections::HashMap<TransactionKey, u64>,
    auth_requests: VecDeque<crate::billing::radius::AuthRequest>,
    next_auth: u64,
    /// Calls' progress for the API's watchers.
    updates: VecDeque<CallUpdate>,
    transmits: VecDeque<Outgoing>,
    /// Subscriptions to subscribers' dialogs, and the calls of watched subscribers (to tell
    /// their watchers when the calls end).
    dialog_events: crate::dialog_events::DialogEvents,
    watched_calls: std::collections::HashMap<u64, Vec<String>>,
    /// MESSAGEs sent on to subscribers' contacts, by id and by our requests' keys.
    messages: std::collections::HashMap<u64, messages::Relayed>,
    message_keys: std::collections::HashMap<TransactionKey, u64>,
    message_deadlines: VecDeque<(Instant, u64)>,
    next_message: u64,
    /// Click-to-dial REFERs to subscribers' phones: by id, by our REFERs' keys, by their
    /// dialogs; their outcomes for the API; when they are forgotten.
    referrals: std::collections::HashMap<u64, referrals::Referral>,
    referral_keys: std::collections::HashMap<TransactionKey, u64>,
    referral_dialogs: std::collections::HashMap<String, u64>,
    referral_outcomes: VecDeque<(u64, u16)>,
    referral_deadlines: std::collections::BinaryHeap<std::cmp::Reverse<(Instant, u64)>>,
    next_referral: u64,
    stats: Stats,
    next_sweep: Option<Instant>,
    /// Tags and nonce salts.
    random: Random,
}

/// Why the core could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// Digest settings refused.
    #[error("auth: {0}")]
    Auth(#[from] sip_core::digest::DigestConfigError),
}

impl ControlPlane {
    /// A core for `config`. `seed` seeds every tag, branch, Call-ID and nonce salt (draw it from
    /// the operating system). `secret` keys the nonces (share it between instances that must
    /// accept each other's nonces); `None` draws one from `seed`.
    /// Makes the fixed-size tables resident before the first request (see
    /// [`Authenticator::prefault`]), so the process's memory is flat from the start.
    pub fn prefault(&mut self) {
        self.auth.prefault();
    }

    pub fn new(config: Arc<Config>, secret: Option<[u8; 32]>, seed: [u8; 32]) -> Result<Self, StartError> {
        let mut random = Random::from_seed(seed);
        let secret = secret.unwrap_or_else(|| random.bytes());
        let mut digest = DigestConfig::new(config.realm.clone());
        // Every algorithm is verifiable; which ones a request may use is the policy's choice
        // (per subscriber, per domain), checked before verification.
        digest.algorithms = Algorithm::ALL.to_vec();
        digest.nonce_ttl = config.nonce_ttl;
        let auth = Authenticator::new(digest, secret)?;
        let timers = TimerConfig::default();
        let mut layer = TransactionLayer::new(timers);
        layer.set_symmetric_responses(config.symmetric_responses);
        Ok(ControlPlane {
            layer,
            auth,
            registrar: Registrar::new(config.registrar),
            limits: crate::limits::Limits::new(config.limits.clone()),
            b2bua: B2bua::new(config.clone(), timers, random.split()),
            dialog_events: crate::dialog_events::DialogEvents::new(config.clone(), random.split()),
            watched_calls: std::collections::HashMap::new(),
            messages: std::collections::HashMap::new(),
            message_keys: std::collections::HashMap::new(),
            message_deadlines: VecDeque::new(),
            referrals: std::collections::HashMap::new(),
            referral_keys: std::collections::HashMap::new(),
            referral_dialogs: std::collections::HashMap::new(),
            referral_outcomes: VecDeque::new(),
            referral_deadlines: std::collections::BinaryHeap::new(),
            next_referral: 0,
            next_message: 0,
            billing: crate::billing::Billing::default(),
            callbacks: crate::callback::Engine::new(config.callback.clone()),
            sessions: std::collections::HashMap::new(),
            accounting: VecDeque::new(),
            parked: std::collections::HashMap::new(),
            parked_by_key: std::collections::HashMap::new(),
            auth_requests: VecDeque::new(),
            next_auth: 1,
            updates: VecDeque::new(),
            transmits: VecDeque::new(),
            stats: Stats::default(),
            next_sweep: None,
            random,
            config,
        })
    }

    // ---- getters ----

    /// Counters.
    pub fn stats(&self) -> Stats {
        let calls = self.b2bua.stats();
        Stats {
            limits: self.limits.stats(),
            calls,
            billing: self.billing.stats,
            callbacks: self.callbacks.stats,
            no_dialog: self.stats.no_dialog + calls.no_dialog,
            responses: self.layer.stats().responses_sent,
            ..self.stats
        }
    }

    /// Live SIP transactions.
    pub fn live_transactions(&self) -> usize {
        self.layer.len()
    }

    /// Registered contacts now.
    pub fn registered_contacts(&self) -> usize {
        self.registrar.binding_count()
    }

    /// Transaction counters.
    pub fn transaction_stats(&self) -> sip_core::transaction::LayerStats {
        self.layer.stats()
    }

    /// Calls in progress.
    pub fn active_calls(&self) -> usize {
        self.b2bua.len()
    }

    /// The registrar (lookups, restore at start).
    pub fn registrar_mut(&mut self) -> &mut Registrar {
        &mut self.registrar
    }

    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.config
    }

    // ---- handle_* ----

    /// A UDP datagram from `source`. Keep-alives are answered here: a STUN Binding request
    /// with the source's address (RFC 5626 §4.4.2), a bare CRLF pair ignored (RFC 5626 §3.5.1
    /// is for streams, but phones send it over UDP too).
    pub fn handle_datagram(&mut self, bytes: &[u8], source: Peer, now: Now, store: &mut dyn Store) {
        if !self.limits.admit(source.addr.ip(), now.instant) {
            return;
        }
        if sip_core::stun::is_stun(bytes) {
            self.stats.keepalives += 1;
            if let Some(answer) = sip_core::stun::binding_response(bytes, source.addr) {
                self.transmits.push_back(Outgoing { destination: source, payload: bytes::Bytes::from(answer), retransmission: false });
            }
            return;
        }
        if !bytes.is_empty() && bytes.iter().all(|&b| b == b'\r' || b == b'\n') {
            self.stats.keepalives += 1;
            return;
        }
        self.handle_bytes(bytes, Framing::Datagram, source, now, store);
    }

    /// One framed message from a stream connection ([`message::next_frame`]).
    pub fn handle_stream_message(&mut self, bytes: &[u8], source: Peer, now: Now, store: &mut dyn Store) {
        if !self.limits.admit(source.addr.ip(), now.instant) {
            return;
        }
        self.handle_bytes(bytes, Framing::Stream, source, now, store);
    }

    fn handle_bytes(&mut self, bytes: &[u8], framing: Framing, source: Peer, now: Now, store: &mut dyn Store) {
        match message::parse(bytes, framing) {
            Ok(parsed) => {
                // Scanners are dropped before any transaction exists: no answer, nothing kept.
                if let SipMessage::Request(request) = &parsed {
                    let agent = request.headers.iter().find_map(|h| match h {
                        Header::UserAgent(ua) => Some(ua.value()),
                        _ => None,
                    });
                    if agent.is_some_and(|ua| self.limits.is_scanner(ua)) {
                        tracing::debug!(from = %source.addr, "scanner dropped");
                        return;
                    }
                }
                self.layer.handle_message(parsed, source, now.instant);
                self.drain(now, store);
            }
            Err(error) => {
                self.stats.malformed += 1;
                tracing::debug!(%error, from = %source.addr, "malformed SIP");
                if let Some(answer) = message::bad_request(bytes, &error) {
                    self.stats.bad_requests_sent += 1;
                    self.transmits.push_back(Outgoing { destination: source, payload: bytes::Bytes::from(answer), retransmission: false });
                }
            }
        }
    }

    /// The media plane answered `call`'s request.
    pub fn handle_media_reply(&mut self, call: u64, reply: MediaReply, now: Now, store: &mut dyn Store) {
        self.b2bua.handle_media_reply(call, reply, now);
        self.drain(now, store);
    }

    /// A TCP/TLS connection closed: SIP outbound registrations that used it end.
    pub fn handle_flow_closed(&mut self, flow: Peer, now: Now, store: &mut dyn Store) {
        let changes = self.registrar.flow_closed(flow);
        if changes.is_empty() {
            return;
        }
        self.stats.outbound_flows_closed += changes.len() as u64;
        if let Err(e) = store.apply(&changes) {
            self.stats.store_errors += 1;
            tracing::warn!(error = %e, "cannot persist registrations of a closed flow");
        }
        self.drain(now, store);
    }

    /// Runs every timer due at `now`.
    pub fn handle_timeout(&mut self, now: Now, store: &mut dyn Store) {
        self.layer.handle_timeout(now.instant);
        self.b2bua.handle_timeout(now);
        let b2bua = &self.b2bua;
        self.dialog_events.handle_timeout(|aor| b2bua.dialogs_of(aor), now.instant);
        self.messages_due(now);
        self.referrals_due(now);
        self.billing.handle_timeout(&self.config, store, now);
        self.callbacks.handle_timeout(now.instant);
        if self.next_sweep.is_none_or(|t| t <= now.instant) {
            self.next_sweep = Some(now.instant + std::time::Duration::from_secs(10));
            self.limits.sweep(now.instant);
            self.accounting_interims(now);
            let changes = self.registrar.sweep(now.unix());
            // With a shared store, another control plane may have refreshed a binding this one
            // saw expire (the row is the same): expired rows are left to lookups, which skip
            // them, and to the AoR's next REGISTER.
            let changes = if self.config.store_shared { Vec::new() } else { changes };
            if let Err(e) = store.apply(&changes) {
                self.stats.store_errors += 1;
                tracing::warn!(error = %e, "cannot persist expired registrations");
            }
        }
        self.drain(now, store);
    }

    /// The call-control API: calls `from`, then `to` (see [`B2bua::handle_originate`]). The
    /// error names the field that has nowhere to go and the status a SIP caller would get.
    pub fn handle_originate(&mut self, from: &str, to: &str, now: Now, store: &mut dyn Store) -> Result<u64, (&'static str, u16)> {
        let mut ctx = Ctx { config: &self.config, store, registrar: &self.registrar, now_unix: now.unix() };
        let (first, mut second, from_uri, to_uri) =
            crate::routing::originate(from, to, &mut ctx).map_err(|(field, r)| (field, r.status()))?;
        if self.radius_refuses_trunks(&mut second.0.stage) {
            return Err(("to", 403));
        }
        // The second party out through a trunk is paid by the first (when a subscriber).
        let payer = from_uri.strip_prefix("sip:").map(str::to_owned);
        let hold = self
            .billing
            .authorize(&self.config, store, payer.as_deref(), &mut second.0.stage, "", now)
            .map_err(|(status, _)| ("to", status))?;
        let id = self.b2bua.handle_originate(first, second, from_uri, to_uri, now);
        if let Some((hold, max_s)) = hold {
            self.billing.attach(store, id, hold, now);
            self.b2bua.set_limit(id, Duration::from_secs(max_s), self.config.billing.warning);
        }
        self.drain(now, store);
        Ok(id)
    }

    /// The call-control API: ends call `id`; whether it existed.
    pub fn handle_hangup(&mut self, id: u64, now: Now, store: &mut dyn Store) -> bool {
        let found = self.b2bua.handle_hangup(id, now);
        self.drain(now, store);
        found
    }

    /// A media plane restarted or stayed unreachable (`lost`): every call with media there is
    /// ended (BYE both sides, or CANCEL and 487 while ringing; CDR cause `media`) — its legs are
    /// gone, nobody would hear anybody.
    pub fn handle_media_plane_lost(&mut self, lost: crate::media_pool::LostPlane, now: Now, store: &mut dyn Store) {
        let ended = self.b2bua.end_calls_with_media(&|id| lost.matches(id), "media", now);
        tracing::warn!(plane = lost.plane, why = lost.why.as_str(), calls = ended, "calls ended: their media plane was lost");
        self.drain(now, store);
    }

    /// The media plane deleted `leg` for want of RTP: its call is ended (see
    /// [`crate::b2bua::B2bua::handle_leg_timed_out`]).
    pub fn handle_leg_timed_out(&mut self, leg: u64, now: Now, store: &mut dyn Store) {
        self.b2bua.handle_leg_timed_out(leg, now);
        self.drain(now, store);
    }

    /// A play on `leg` ended (the media plane's event): a screened caller's announcement is over.
    pub fn handle_play_finished(&mut self, leg: u64, now: Now, store: &mut dyn Store) {
        self.b2bua.handle_play_finished(leg, now);
        self.drain(now, store);
    }

    /// MESSAGEs sent on and not answered yet.
    pub fn pending_messages(&self) -> usize {
        self.messages.len()
    }

    /// Subscriptions to subscribers' dialogs in force.
    pub fn dialog_subscriptions(&self) -> usize {
        self.dialog_events.len()
    }

    /// Dialogs the B2BUA answers to (0 when no call is left).
    pub fn dialogs(&self) -> usize {
        self.b2bua.dialogs()
    }

    /// The calls in progress.
    pub fn calls(&self) -> Vec<CallInfo> {
        self.b2bua.calls()
    }

    // ---- poll_* ----

    /// Next call update (ringing, forwarded, answered, ended) for the API's watchers.
    #[must_use]
    pub fn poll_update(&mut self) -> Option<CallUpdate> {
        self.updates.pop_front()
    }

    /// Next message to send.
    #[must_use]
    pub fn poll_transmit(&mut self) -> Option<Outgoing> {
        self.transmits.pop_front().or_else(|| self.layer.poll_transmit())
    }

    /// Next media-plane request, with the call it belongs to.
    #[must_use]
    pub fn poll_media(&mut self) -> Option<(u64, MediaRequest)> {
        self.b2bua.poll_media()
    }

    /// When [`handle_timeout`](Self::handle_timeout) must next run.
    #[must_use]
    pub fn poll_timeout(&mut self) -> Option<Instant> {
        [
            self.layer.poll_timeout(),
            self.b2bua.poll_timeout(),
            self.next_sweep,
            self.callbacks.poll_timeout(),
            self.dialog_events.poll_timeout(),
            self.message_deadlines.front().map(|(at, _)| *at),
            self.referral_deadlines.peek().map(|std::cmp::Reverse((at, _))| *at),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    // ---- internals ----

    /// Runs the B2BUA's output into the transaction layer and the layer's events into the
    /// services, until neither has more.
    fn drain(&mut self, now: Now, store: &mut dyn Store) {
        loop {
            let mut progressed = false;
            while let Some(out) = self.b2bua.poll_sip() {
                progressed = true;
                self.apply(out, now);
            }
            while let Some(out) = self.dialog_events.poll_sip() {
                progressed = true;
                self.apply(out, now);
            }
            while let Some(event) = self.layer.poll_event() {
                progressed = true;
                self.on_event(event, now, store);
            }
            while let Some(event) = self.b2bua.poll_event() {
                progressed = true;
                self.on_call_event(event, now, store);
            }
            while let Some(action) = self.callbacks.poll_action() {
                progressed = true;
                self.on_callback_action(action, now, store);
            }
            if !progressed {
                return;
            }
        }
    }

    fn apply(&mut self, out: SipOut, now: Now) {
        match out {
            SipOut::Respond(key, response) => self.respond(&key, response, now),
            SipOut::Request(request, peer) => {
                let key = sip_core::transaction::TransactionKey::for_request(&request);
                if let Err(e) = self.layer.start_client(request, peer, now.instant) {
                    tracing::error!(error = %e, "cannot start a client transaction");
                    if let Ok(key) = key {
                        self.b2bua.handle_transaction_failed(&key, Role::Client, now);
                    }
                }
            }
            SipOut::Transmit(outgoing) => self.layer.transmit(outgoing),
        }
    }

    fn on_call_event(&mut self, event: CallEvent, now: Now, store: &mut dyn Store) {
        match event {
            CallEvent::Update(update) => {
                let ended = matches!(update.kind, crate::b2bua::UpdateKind::Ended { .. });
                self.dialogs_changed(update.call, ended, now);
                if matches!(update.kind, crate::b2bua::UpdateKind::Answered { .. }) {
                    self.billing.answered(store, update.call, now);
                    self.accounting_answered(update.call, now);
                }
                // Bounded: without a watcher draining them, the oldest go.
                if self.updates.len() >= MAX_UPDATES {
                    self.updates.pop_front();
                }
                self.updates.push_back(update);
            }
            CallEvent::DialogsChanged { call } => self.dialogs_changed(call, false, now),
            CallEvent::ParkExpired { call, parker } => self.ring_back(call, &parker, now, store),
            CallEvent::Ivr { call, legs } => self.callbacks.on_ivr(call, legs, now.instant),
            CallEvent::Connected { call, result } => self.callbacks.on_connected(call, result, now.instant),
            CallEvent::Ended(record) => {
                self.callbacks.on_ended(record.call, record.first_answered_ms > 0, record.cause, now.instant);
                self.accounting_ended(&record, now);
                // The detail records go to the store before anything else of this call can.
                let mut cdrs =
                    crate::billing::cdr::records(&record, &self.config.rates, &self.config.currency, &self.config.international_prefix);
                self.billing.ended(store, record.call, &mut cdrs, now);
                if let Err(e) = store.add_cdrs(&cdrs) {
                    self.stats.cdr_failures += 1;
                    tracing::error!(call = record.call, error = %e, "call detail records not written");
                }
            }
            CallEvent::Refer(refer) => {
                if self.conference_refer(&refer, now) || self.park_refer(&refer, now, store) {
                    return;
                }
                let mut ctx = Ctx { config: &self.config, store, registrar: &self.registrar, now_unix: now.unix() };
                let route =
                    crate::routing::refer(&refer.target, &refer.transferee, refer.transferor.as_deref(), &mut ctx).map_err(|r| r.status());
                // A transfer out through a trunk is paid by the transferor.
                let route = route.and_then(|(mut plan, state)| {
                    let payer = state.payer().or(refer.transferor.as_deref()).map(str::to_owned);
                    self.authorize_stage(refer.call, payer.as_deref(), &mut plan.stage, now, store).map(|()| (plan, state))
                });
                self.b2bua.handle_refer(refer.call, route, now);
            }
            CallEvent::Held { call, holder } => {
                if let Some(file) = self.music_for(holder.as_deref(), store) {
                    self.b2bua.handle_music(call, &file);
                }
            }
            CallEvent::Unanswered { call, outcome } => {
                let Some(state) = self.b2bua.route_state(call) else { return };
                let mut ctx = Ctx { config: &self.config, store, registrar: &self.registrar, now_unix: now.unix() };
                let mut next = crate::routing::next(state, &outcome, &mut ctx);
                // The stage that ended needs its credit no more; the next one may need some.
                self.billing.release(store, call, now);
                if let crate::routing::Next::Ring(plan) = &mut next {
                    let payer = self.b2bua.route_state(call).and_then(|s| s.payer().map(str::to_owned));
                    let payer = payer.or_else(|| self.b2bua.caller(call).map(str::to_owned));
                    if let Err(status) = self.authorize_stage(call, payer.as_deref(), &mut plan.stage, now, store) {
                        next = crate::routing::Next::Fail(status);
                    }
                }
                self.b2bua.handle_next(call, next, now);
            }
        }
    }

    /// What a party held (or parked) by `holder` hears: the holder's own music on hold, else
    /// the server's.
    fn music_for(&self, holder: Option<&str>, store: &mut dyn Store) -> Option<String> {
        let own = holder
            .and_then(|aor| aor.split_once('@'))
            .and_then(|(user, domain)| store.settings(user, domain).ok().flatten())
            .and_then(|s| s.music_on_hold);
        own.or_else(|| self.config.music_on_hold.clone())
    }

    /// Credit for call `id`'s next stage (see [`crate::billing::Billing::authorize`]): held and
    /// the call limited, or the status its caller gets.
    pub(super) fn authorize_stage(
        &mut self,
        id: u64,
        payer: Option<&str>,
        stage: &mut crate::routing::Stage,
        now: Now,
        store: &mut dyn Store,
    ) -> Result<(), u16> {
        if self.radius_refuses_trunks(stage) {
            return Err(403);
        }
        match self.billing.authorize(&self.config, store, payer, stage, "", now) {
            Ok(Some((hold, max_s))) => {
                self.billing.attach(store, id, hold, now);
                self.b2bua.set_limit(id, Duration::from_secs(max_s), self.config.billing.warning);
                Ok(())
            }
            Ok(None) => Ok(()),
            Err((status, _)) => Err(status),
        }
    }

    /// With RADIUS authorising calls out through trunks, only a call's first stage is asked
    /// about: trunk branches of later stages (forwards, redirects, transfers, click-to-dial) are
    /// dropped rather than let out unasked. Whether nothing is left of `stage`.
    fn radius_refuses_trunks(&mut self, stage: &mut crate::routing::Stage) -> bool {
        if self.config.radius.as_ref().is_none_or(|r| r.authentication.is_empty()) || !stage.branches.iter().any(|b| b.trunk) {
            return false;
        }
        self.stats.radius_rejected += 1;
        stage.branches.retain(|b| !b.trunk);
        stage.branches.is_empty()
    }

    fn on_event(&mut self, event: LayerEvent, now: Now, store: &mut dyn Store) {
        match event {
            LayerEvent::Request { key, request, source, cancels } => {
                self.stats.count_request(&request.method);
                self.on_request(key, request, source, cancels, now, store)
            }
            LayerEvent::Ack { request, .. } => {
                self.stats.count_request(&request.method);
                self.b2bua.handle_ack(&request, now)
            }
            LayerEvent::Stray { message: SipMessage::Request(request), .. } => self.b2bua.handle_ack(&request, now),
            LayerEvent::Stray { message: SipMessage::Response(response), .. } => self.b2bua.handle_stray_response(&response),
            LayerEvent::Response { key, response } => {
                if self.message_response(&key, response.status_code.code(), now)
                    || self.referral_response(&key, response.status_code.code())
                {
                    return;
                }
                if !self.dialog_events.handle_response(&key, &response) {
                    self.b2bua.handle_response(&key, response, now)
                }
            }
            LayerEvent::Timeout { key, role } => self.transaction_failed(&key, role, 408, now),
            // A request that could not be sent is not one left unanswered.
            LayerEvent::TransportError { key, role } => self.transaction_failed(&key, role, 503, now),
            LayerEvent::Terminated { key, role } => {
                if role != Role::Client || !self.dialog_events.handle_terminated(&key) {
                    self.b2bua.handle_transaction_terminated(&key, role)
                }
            }
        }
    }

    /// Transaction `key` timed out (`status` 408) or its message could not be sent (503).
    fn transaction_failed(&mut self, key: &TransactionKey, role: Role, status: u16, now: Now) {
        if role == Role::Client && (self.message_failed(key, now) || self.referral_failed(key, status)) {
            return;
        }
        if role != Role::Client || !self.dialog_events.handle_failed(key) {
            self.b2bua.handle_transaction_failed(key, role, now)
        }
    }

    /// Sends a response through the server transaction `key`.
    fn respond(&mut self, key: &TransactionKey, response: Response, now: Now) {
        if let Err(e) = self.layer.send_response(key, response, now.instant) {
            tracing::debug!(error = %e, "response not sent");
        }
    }

    /// A bodiless `status` response to `request` with a fresh To tag (kept if it had one).
    fn response(&mut self, request: &Request, status: u16, reason: Option<&str>) -> Response {
        let tag = self.random.tag();
        response_for(request, status, reason, Some(&tag))
    }

    /// A bodiless `status` response to `request` (To tag added for non-100).
    fn reply(&mut self, key: &TransactionKey, request: &Request, status: u16, now: Now) {
        let response = if status == 100 { response_for(request, 100, None, None) } else { self.response(request, status, None) };
        self.respond(key, response, now);
    }

    fn on_request(
        &mut self,
        key: TransactionKey,
        request: Request,
        source: Peer,
        cancels: Option<TransactionKey>,
        now: Now,
        store: &mut dyn Store,
    ) {
        let in_dialog = to_value(&request.headers).and_then(tag_of).is_some();
        if !matches!(request.method, Method::Ack | Method::Cancel) {
            let mut unsupported = unsupported_requirements(&request.headers);
            if request.method == Method::Invite
                && !in_dialog
                && request.body.is_empty()
                && crate::b2bua::has_option(&request.headers, "Require", "100rel")
            {
                // A delayed offer requiring 100rel wants the offer in a reliable provisional
                // response (RFC 3262 §5), which the B2BUA does not make: its offer is the callee's
                // 2xx's.
                unsupported.push("100rel".to_owned());
            }
            if !unsupported.is_empty() {
                // RFC 3261 §8.2.2.3: refuse what the client requires and we do not do, and say what.
                self.stats.unsupported_required += 1;
                let mut response = self.response(&request, 420, None);
                response.headers.push(Header::Unsupported(rsip::headers::Unsupported::new(unsupported.join(", "))));
                self.respond(&key, response, now);
                return;
            }
        }
        match request.method {
            Method::Register => self.on_register(&key, &request, source, now, store),
            Method::Cancel => self.on_cancel(&key, &request, cancels, now),
            Method::Invite if !in_dialog => self.on_invite(key, request, source, now, store),
            Method::Subscribe if !in_dialog => self.on_subscribe(&key, &request, source, now, store),
            Method::Message if !in_dialog => self.on_message(&key, &request, source, now, store),
            _ if in_dialog && self.is_referral_request(&request) => self.on_referral_request(&key, &request, now),
            _ if in_dialog && self.is_subscription_request(&request) => self.on_subscription_request(key, &request, now),
            Method::Options if !in_dialog => {
                let mut response = self.response(&request, 200, None);
                response.headers.push(Header::Allow(rsip::headers::Allow::new(ALLOW)));
                response.headers.push(Header::Accept(rsip::headers::Accept::new("application/sdp")));
                self.respond(&key, response, now);
            }
            _ if in_dialog => self.b2bua.handle_in_dialog(key, request, now),
            _ => {
                let mut response = self.response(&request, 405, None);
                response.headers.push(Header::Allow(rsip::headers::Allow::new(ALLOW)));
                self.respond(&key, response, now);
            }
        }
    }

    /// Checks `Authorization`/`Proxy-Authorization` against the store for a request that claims
    /// to come from `user@domain`. `Ok(Some(user))` when valid; `None` after sending a challenge
    /// or a refusal. The algorithms offered and accepted follow [`AuthPolicy`](crate::auth::policy::AuthPolicy).
    fn authenticate(
        &mut self,
        key: &TransactionKey,
        request: &Request,
        source: std::net::IpAddr,
        user: &str,
        domain: &str,
        proxy: bool,
        now: Now,
        store: &mut dyn Store,
    ) -> Option<String> {
        let header_value = request.headers.iter().find_map(|h| match (h, proxy) {
            (Header::Authorization(a), false) => Some(a.value().to_owned()),
            (Header::ProxyAuthorization(a), true) => Some(a.value().to_owned()),
            (Header::Other(n, v), false) if n.eq_ignore_ascii_case("Authorization") => Some(v.clone()),
            (Header::Other(n, v), true) if n.eq_ignore_ascii_case("Proxy-Authorization") => Some(v.clone()),
            _ => None,
        });
        let claimed = match store.subscriber(user, domain) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "subscriber lookup failed");
                self.stats.store_errors += 1;
                self.reply(key, request, 500, now);
                return None;
            }
        };
        // Credentials of another scheme (RFC 4475 §3.3.7) are no credentials: challenge.
        let header_value = header_value.filter(|v| v.trim_start().get(..6).is_some_and(|scheme| scheme.eq_ignore_ascii_case("Digest")));
        let answered = header_value.as_deref().and_then(|v| parse_credentials(v).ok());
        let offer = self.config.auth.offer(domain, claimed.as_ref().and_then(|s| s.auth_algorithm), answered.as_ref().map(|c| c.algorithm));
        let Some(value) = header_value else {
            self.challenge(key, request, proxy, &offer.challenge, false, now);
            return None;
        };
        // A user locked after too many refused credentials is refused without checking: guessing
        // must not pay off, even from many addresses.
        let account = format!("{user}@{}", domain.to_ascii_lowercase());
        if self.limits.user_locked(&account, now.instant) {
            self.stats.auth_failures += 1;
            self.reply(key, request, 403, now);
            return None;
        }
        if answered.as_ref().is_some_and(|c| !offer.accept.contains(&c.algorithm)) {
            // Well-formed credentials in an algorithm this subscriber may not use: offer the right one.
            self.stats.auth_wrong_algorithm += 1;
            self.challenge(key, request, proxy, &offer.challenge, false, now);
            return None;
        }
        // The digest `uri` must name the Request-URI; compared parsed, so that how rsip renders
        // the Request-URI again cannot fail a correct response.
        let uri_matches = |uri: &str| rsip::Uri::try_from(uri).ok().as_ref() == Some(&request.uri);
        let mut store_failed = false;
        let lookup = |name: &str, _realm: &str, hash: HashFn| match &claimed {
            Some(s) if s.user == name => Some(s.ha1(hash).to_owned()),
            _ => match store.subscriber(name, domain) {
                Ok(s) => s.map(|s| s.ha1(hash).to_owned()),
                Err(_) => {
                    store_failed = true;
                    None
                }
            },
        };
        let verified = self.auth.verify_matching(&value, request.method.to_string().as_str(), uri_matches, now.wall, lookup);
        if store_failed {
            self.stats.store_errors += 1;
            self.reply(key, request, 500, now);
            return None;
        }
        match verified {
            Ok(v) => Some(v.username),
            Err(DigestError::StaleNonce) => {
                self.stats.auth_stale += 1;
                self.challenge(key, request, proxy, &offer.challenge, true, now);
                None
            }
            Err(e) if e.is_malformed() => {
                self.stats.malformed += 1;
                let response = self.response(request, 400, Some("Bad Credentials"));
                self.respond(key, response, now);
                None
            }
            Err(DigestError::WrongResponse | DigestError::UnknownUser) => {
                self.stats.auth_failures += 1;
                self.limits.auth_failed(source, &account, now.instant);
                self.reply(key, request, 403, now);
                None
            }
            Err(DigestError::Replay) => {
                self.stats.auth_replays += 1;
                self.challenge(key, request, proxy, &offer.challenge, false, now);
                None
            }
            Err(_) => {
                self.challenge(key, request, proxy, &offer.challenge, false, now);
                None
            }
        }
    }

    fn challenge(&mut self, key: &TransactionKey, request: &Request, proxy: bool, algorithms: &[Algorithm], stale: bool, now: Now) {
        let random = self.random.bytes::<16>();
        self.stats.challenges += 1;
        let status = if proxy { 407 } else { 401 };
        let mut response = self.response(request, status, None);
        for value in self.auth.challenges_for(algorithms, now.wall, random, stale) {
            response.headers.push(if proxy {
                Header::ProxyAuthenticate(rsip::headers::ProxyAuthenticate::new(value))
            } else {
                Header::WwwAuthenticate(rsip::headers::WwwAuthenticate::new(value))
            });
        }
        self.respond(key, response, now);
    }

    fn on_register(&mut self, key: &TransactionKey, request: &Request, source: Peer, now: Now, store: &mut dyn Store) {
        let domain = request.uri.host_with_port.host.to_string();
        if !self.config.is_local_domain(&domain) {
            self.reply(key, request, 404, now);
            return;
        }
        let Some((to_user, to_domain)) = to_value(&request.headers).map(uri_of).and_then(user_host) else {
            self.reply(key, request, 400, now);
            return;
        };
        let Some(user) = self.authenticate(key, request, source.addr.ip(), &to_user, &to_domain, false, now, store) else { return };
        if user != to_user || !to_domain.eq_ignore_ascii_case(&domain) {
            // Authenticated as someone else: may not register this address-of-record.
            self.stats.auth_failures += 1;
            self.reply(key, request, 403, now);
            return;
        }
        let aor = format!("{to_user}@{}", to_domain.to_ascii_lowercase());
        if self.config.store_shared {
            // Another control plane may have changed this AoR's bindings: start from the store's.
            match store.bindings_of(&aor) {
                Ok(stored) => self.registrar.refresh(&aor, stored, now.unix()),
                Err(e) => tracing::warn!(error = %e, aor, "shared registrations not readable: this node's own are used"),
            }
        }
        match self.registrar.handle_register(&aor, request, source, now.unix()) {
            Ok(registered) => {
                if let Err(e) = store.apply(&registered.changes) {
                    self.stats.store_errors += 1;
                    tracing::warn!(error = %e, "cannot persist registration");
                    self.reply(key, request, 500, now);
                    return;
                }
                self.stats.registrations += 1;
                let mut response = self.response(request, 200, None);
                let unix = now.unix();
                for b in &registered.bindings {
                    let expires = b.expires_unix.saturating_sub(unix);
                    let q = if b.q_milli == 1000 { String::new() } else { format!(";q={}.{:03}", b.q_milli / 1000, b.q_milli % 1000) };
                    let outbound =
                        b.outbound.as_ref().map(|o| format!(";+sip.instance=\"{}\";reg-id={}", o.instance, o.reg_id)).unwrap_or_default();
                    response
                        .headers
                        .push(Header::Contact(rsip::headers::Contact::new(format!("<{}>;expires={expires}{q}{outbound}", b.contact))));
                }
                if registered.outbound {
                    response.headers.push(Header::Require(rsip::headers::Require::new("outbound")));
                }
                // RFC 3327 §5.3: the Path is echoed only to a phone that said it understands it.
                if !registered.path.is_empty() && crate::registrar::supports(request, "path") {
                    response.headers.push(Header::Other("Path".into(), registered.path.join(", ")));
                }
                self.respond(key, response, now);
            }
            Err(error) => {
                self.stats.registrations_refused += 1;
                let mut response = self.response(request, error.status(), None);
                if let RegisterError::IntervalTooBrief(min) = error {
                    response.headers.push(Header::MinExpires(rsip::headers::MinExpires::new(min.to_string())));
                }
                self.respond(key, response, now);
            }
        }
    }

    fn on_cancel(&mut self, key: &TransactionKey, request: &Request, cancels: Option<TransactionKey>, now: Now) {
        let Some(invite) = cancels else {
            self.stats.no_dialog += 1;
            self.reply(key, request, 481, now);
            return;
        };
        self.reply(key, request, 200, now);
        if self.radius_cancel(&invite, now) {
            return;
        }
        if self.b2bua.has_invite(&invite) && self.layer.invite_server_state(&invite) == Some(InviteServerState::Proceeding) {
            self.b2bua.handle_cancel(&invite, now);
        }
    }

    /// An initial INVITE: loop check, the caller's identity (trusted peer or digest), the offer,
    /// then routing; the B2BUA takes the call from there.
    fn on_invite(&mut self, key: TransactionKey, request: Request, source: Peer, now: Now, store: &mut dyn Store) {
        if message::max_forwards(&request.headers).is_ok_and(|m| m == 0) {
            self.reply(&key, &request, 483, now);
            return;
        }
        // The caller's identity: a trusted peer, or the subscriber its digest proves (the same
        // check as SUBSCRIBE's and MESSAGE's).
        let Some(caller) = self.requester(&key, &request, source, now, store) else { return };
        if let Some(problem) = OfferProblem::of(&request) {
            let (status, reason) = problem.status();
            let mut response = self.response(&request, status, reason);
            if problem == OfferProblem::UnsupportedMediaType {
                response.headers.push(Header::Accept(rsip::headers::Accept::new("application/sdp")));
            }
            self.respond(&key, response, now);
            return;
        }
        // Feature codes (call pickup) and park orbits.
        let Some(request) = self.on_feature_invite(&key, request, source, caller.as_deref(), now, store) else { return };
        // Callback access numbers (missed call, IVR).
        let Some(request) = self.on_did_invite(&key, request, source, caller.clone(), now, store) else { return };
        let mut ctx = Ctx { config: &self.config, store, registrar: &self.registrar, now_unix: now.unix() };
        match crate::routing::route(&request, caller.as_deref(), &mut ctx) {
            Ok((plan, state)) => {
                // RADIUS authorises calls out through trunks, when configured (it answers later).
                let parked = accounting::Parked { key, request, source, caller, plan, state };
                let Some(accounting::Parked { key, request, source, caller, mut plan, state }) = self.radius_park(parked, now) else {
                    return;
                };
                // Out through a trunk: paid by the subscriber whose forwarding sent it there, else
                // by the caller.
                let payer = state.payer().or(caller.as_deref()).map(str::to_owned);
                let sip_call_id = call_id(&request.headers).unwrap_or_default().to_owned();
                let hold = match self.billing.authorize(&self.config, store, payer.as_deref(), &mut plan.stage, &sip_call_id, now) {
                    Ok(hold) => hold,
                    Err((status, reason)) => {
                        let response = self.response(&request, status, Some(reason));
                        self.respond(&key, response, now);
                        return;
                    }
                };
                let id = self.b2bua.handle_invite(key, request, source, caller, plan, state, now);
                match (id, hold) {
                    (Some(id), Some((hold, max_s))) => {
                        self.billing.attach(store, id, hold, now);
                        self.b2bua.set_limit(id, Duration::from_secs(max_s), self.config.billing.warning);
                    }
                    (None, Some((hold, _))) => self.billing.release_hold(store, hold, now),
                    _ => {}
                }
            }
            Err(refusal) => {
                if refusal == crate::routing::Refusal::Store {
                    self.stats.store_errors += 1;
                }
                if let Some(file) = matches!(refusal, crate::routing::Refusal::Screened(_))
                    .then(|| announcement(&request, store))
                    .flatten()
                    .filter(|_| !request.body.is_empty())
                {
                    // The called subscriber's screening refused: its announcement instead.
                    self.b2bua.handle_invite_announcement(key, request, source, caller, file, now);
                    return;
                }
                self.stats.calls_unrouted += 1;
                self.reply(&key, &request, refusal.status(), now);
            }
        }
    }
}

/// The screening announcement of the subscriber `request` calls (its Request-URI), if it has one
/// (a caller its screening refuses hears it instead of a 403/603).
fn announcement(request: &Request, store: &mut dyn Store) -> Option<String> {
    let auth = request.uri.auth.as_ref()?;
    let domain = request.uri.host_with_port.host.to_string().to_ascii_lowercase();
    store.settings(&auth.user, &domain).ok().flatten()?.screen.announcement
}

/// Call updates kept for the API's watchers between two drains of the driver.
const MAX_UPDATES: usize = 10_000;

/// Option tags (RFC 3261 §19.2) this server supports in `Require`; a request requiring any other
/// gets 420: SIP outbound (RFC 5626) and Path (RFC 3327) at the registrar, Replaces (RFC 3891:
/// call pickup of a ringing call), reliable provisional responses (RFC 3262, `100rel`); session
/// timers (`timer`, RFC 4028) are not implemented.
pub const SUPPORTED_OPTIONS: &[&str] = &["outbound", "path", "replaces", "100rel"];

/// The `Require` option tags of a request this server does not support, in order.
fn unsupported_requirements(headers: &rsip::Headers) -> Vec<String> {
    headers
        .iter()
        .filter_map(|h| match h {
            Header::Require(r) => Some(r.value().to_owned()),
            Header::Other(n, v) if n.eq_ignore_ascii_case("Require") => Some(v.clone()),
            _ => None,
        })
        .flat_map(|v| v.split(',').map(|t| t.trim().to_owned()).collect::<Vec<_>>())
        .filter(|t| !t.is_empty() && !SUPPORTED_OPTIONS.iter().any(|s| s.eq_ignore_ascii_case(t)))
        .collect()
}
