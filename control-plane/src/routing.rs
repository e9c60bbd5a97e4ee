//! Where a call goes: the routing services (RFC 5359 §2.7–2.9, 2.12–2.14, and the operator's
//! "app when online, else PSTN"). Routing plans the stages the B2BUA rings and decides what
//! follows a stage that ends unanswered; it reads the store (subscribers and their
//! [`Settings`]) and the registrar, and holds per call only a small [`RouteState`].
//!
//! ```text
//!  route(INVITE, caller)
//!    caller's outgoing screening (settings `block`) ───────────────────────────── 403
//!    Request-URI ─► a subscriber of ours ─► ring_subscriber ─┐
//!               └─► [[route]] by prefix ─► trunk (or a local user) ── none ─► 404
//!  ring_subscriber(aor)
//!    incoming screening (`screen.*`) ───────────────────────────────────────── 403/603
//!    forward.always ─► forward(target, unconditional)
//!    stages: its contacts (parallel, or sequential by q) + find-me targets
//!    none registered ─► forward.unreachable / PSTN fallback / 480
//!  next(outcome)  (a stage ended unanswered)
//!    busy ─► forward.busy / PSTN fallback / 486
//!    no answer ─► pending stages, then forward.no_answer / PSTN fallback / 408
//!    failed ─► pending stages, then forward.unreachable / PSTN fallback / the best status
//!  forward(target, reason): 181 to the caller, Diversion (RFC 5806) and History-Info
//!    (RFC 7044, with RFC 4458 causes) on the new INVITEs; a target already visited ─► 482,
//!    more than [routing] max_forwards forwards ─► 483
//! ```

use std::collections::VecDeque;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use rsip::Request;
use sip_core::message::{from_value, header, uri_of, user_host};
use sip_core::transaction::Peer;

use crate::config::{CallerIdPolicy, Config, Destination, ForkMode, ReferPolicy, TrunkCredentials};
use crate::registrar::Registrar;
use crate::settings::Settings;
use crate::store::Store;

/// One place to ring.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Branch {
    /// The Request-URI (a registered contact, or the trunk's URI with the dialled number).
    pub target: String,
    /// The flow to send it over.
    pub peer: Peer,
    /// Route headers towards it (a registered Path).
    pub route: Vec<String>,
    /// What to answer its digest challenge with (trunks).
    pub credentials: Option<TrunkCredentials>,
    /// Out through a `[[route]]` (a trunk): the call is rated by the number dialled there.
    pub trunk: bool,
}

/// Branches rung together, and how long they may ring.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stage {
    /// Rung in parallel; never empty.
    pub branches: Vec<Branch>,
    /// No answer within this ends the stage ([`Outcome::NoAnswer`]).
    pub timeout: Duration,
    /// Header lines (each ending in CRLF) added to every INVITE of the stage: Diversion and
    /// History-Info of a forwarded call.
    pub headers: String,
}

/// What to do now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// The stage to ring.
    pub stage: Stage,
    /// What the callee sees of the caller.
    pub caller_id: CallerIdPolicy,
    /// The call was forwarded to get here: the caller gets 181 Call Is Being Forwarded.
    pub forwarded: bool,
}

/// How a stage ended without an answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// A branch was busy (486, 600).
    Busy(u16),
    /// Nobody answered before the stage's timeout.
    NoAnswer,
    /// Every branch failed; the best status among them (RFC 3261 §16.7.6).
    Failed(u16),
    /// A branch redirected (3xx) to these Contact URIs, and none was busy.
    Redirected(Vec<String>),
}

/// What follows an unanswered stage.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Next {
    /// Ring this.
    Ring(Plan),
    /// Give the caller this final status.
    Fail(u16),
}

/// Why a call has nowhere to go; [`status`](Self::status) is the caller's answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Not a domain, user, number or route of ours (404).
    NotFound,
    /// A subscriber with no registered contact and nowhere to forward to (480).
    NotRegistered,
    /// The trunk's address is not an IP address (502).
    BadTrunk,
    /// The store could not be read (500).
    Store,
    /// Refused by the callee's incoming screening (403 or 603).
    Screened(u16),
    /// A destination the caller's outgoing screening blocks (403).
    Blocked,
    /// Forwarded back to a subscriber already in the chain (482).
    Loop,
    /// More forwards than `[routing] max_forwards` (483).
    TooManyForwards,
}

impl Refusal {
    /// The SIP status for the caller.
    pub fn status(self) -> u16 {
        match self {
            Refusal::NotFound => 404,
            Refusal::NotRegistered => 480,
            Refusal::BadTrunk => 502,
            Refusal::Store => 500,
            Refusal::Screened(status) => status,
            Refusal::Blocked => 403,
            Refusal::Loop => 482,
            Refusal::TooManyForwards => 483,
        }
    }
}

/// Why a call is forwarded (RFC 5806 reason, RFC 4458 cause).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// Forwarding unconditional.
    Unconditional,
    /// Forwarding on busy.
    Busy,
    /// Forwarding on no answer.
    NoAnswer,
    /// Forwarding while unreachable.
    Unavailable,
    /// A callee or trunk redirected the call (3xx).
    Deflection,
}

impl Reason {
    fn diversion(self) -> &'static str {
        match self {
            Reason::Unconditional => "unconditional",
            Reason::Busy => "user-busy",
            Reason::NoAnswer => "no-answer",
            Reason::Unavailable => "unavailable",
            Reason::Deflection => "deflection",
        }
    }

    fn cause(self) -> u16 {
        match self {
            Reason::Unconditional => 302,
            Reason::Busy => 486,
            Reason::NoAnswer => 408,
            Reason::Unavailable => 503,
            Reason::Deflection => 302,
        }
    }
}

/// What routing keeps of a call between stages.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RouteState {
    /// Stages still to ring (sequential forking, find-me).
    pending: VecDeque<Stage>,
    caller_id: CallerIdPolicy,
    /// The caller as screening sees it (user part or number, `anonymous`).
    caller: String,
    /// Subscribers rung so far (forwarding loops).
    visited: Vec<String>,
    /// Forwards so far: (diverted AoR, reason), oldest first.
    diversions: Vec<(String, Reason)>,
    /// The subscriber now being called and its conditional forwards.
    current: Option<Current>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Current {
    aor: String,
    busy: Option<String>,
    no_answer: Option<String>,
    unreachable: Option<String>,
    /// The PSTN number to fall back to.
    fallback: Option<String>,
}

impl RouteState {
    /// The subscriber whose settings send the call where it goes now (the last to forward it,
    /// else the one it rings): who pays for a leg out through a trunk, before the caller.
    pub fn payer(&self) -> Option<&str> {
        self.diversions.iter().rev().map(|(aor, _)| aor.as_str()).find(|a| !a.is_empty()).or_else(|| self.subscriber())
    }

    /// The subscriber (AoR) the call rings now, if it is one.
    pub fn subscriber(&self) -> Option<&str> {
        self.current.as_ref().map(|c| c.aor.as_str())
    }
}

/// What routing reads.
pub struct Ctx<'a> {
    /// The configuration.
    pub config: &'a Config,
    /// Subscribers and settings.
    pub store: &'a mut dyn Store,
    /// Registered contacts.
    pub registrar: &'a Registrar,
    /// UNIX seconds now.
    pub now_unix: u64,
}

impl Ctx<'_> {
    /// `aor`'s live bindings, best first: from the store when control planes share it
    /// (`[store] shared`; a store error falls back to this node's own table), else this node's.
    pub fn contacts(&mut self, aor: &str) -> Vec<crate::registrar::Binding> {
        shared_lookup(self.config, self.store, self.registrar, aor, self.now_unix)
    }
}

/// See [`Ctx::contacts`].
pub fn shared_lookup(
    config: &Config,
    store: &mut dyn Store,
    registrar: &Registrar,
    aor: &str,
    now_unix: u64,
) -> Vec<crate::registrar::Binding> {
    if config.store_shared {
        match store.bindings_of(aor) {
            Ok(stored) => return registrar.lookup_in(aor, stored, now_unix),
            Err(e) => tracing::warn!(error = %e, aor, "shared registrations not readable: this node's own are used"),
        }
    }
    registrar.lookup(aor, now_unix)
}

impl std::fmt::Debug for Ctx<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ctx").field("now_unix", &self.now_unix).finish_non_exhaustive()
    }
}

/// Routes `request` (an initial INVITE; `caller` the AoR it authenticated as): the first stage
/// to ring and the state the call keeps for [`next`].
pub fn route(request: &Request, caller: Option<&str>, ctx: &mut Ctx<'_>) -> Result<(Plan, RouteState), Refusal> {
    let user = request.uri.user().unwrap_or_default().to_owned();
    let host = request.uri.host_with_port.host.to_string();
    let config = ctx.config;
    let advertised_host = config.advertise.rsplit_once(':').map_or(config.advertise.as_str(), |(h, _)| h);
    let ours = config.is_local_domain(&host) || host == advertised_host || config.listen.iter().any(|l| l.addr.ip().to_string() == host);
    if !ours {
        return Err(Refusal::NotFound);
    }
    let domain = if config.is_local_domain(&host) { host.clone() } else { config.domains.first().cloned().unwrap_or_default() };
    route_user(&user, &domain, caller, caller_identity(request), ctx)
}

/// Routes a call from `caller` (an AoR, when a subscriber; `identity` as screening sees it) to
/// `user` of `domain`.
fn route_user(user: &str, domain: &str, caller: Option<&str>, identity: String, ctx: &mut Ctx<'_>) -> Result<(Plan, RouteState), Refusal> {
    // Outgoing screening (RFC 5359 §2.14): the caller's blocked destination prefixes.
    if let Some((caller_user, caller_domain)) = caller.and_then(|c| c.split_once('@')) {
        let settings = ctx.store.settings(caller_user, caller_domain).map_err(|_| Refusal::Store)?;
        if settings.is_some_and(|s| s.blocks(user)) {
            return Err(Refusal::Blocked);
        }
    }
    let target = destination(user, domain, ctx)?;
    plan_for(target, identity, ctx)
}

/// The first stage for `target`, called by `caller` (as screening sees it): a subscriber with
/// its settings, or one branch.
fn plan_for(target: Target, caller: String, ctx: &mut Ctx<'_>) -> Result<(Plan, RouteState), Refusal> {
    let mut state = RouteState { caller, caller_id: CallerIdPolicy::Passthrough, ..RouteState::default() };
    match target {
        Target::Subscriber(aor) => {
            let plan = ring_subscriber(&aor, &mut state, ctx)?;
            Ok((plan, state))
        }
        Target::Branch(branch, caller_id) => {
            state.caller_id = caller_id;
            let stage = Stage { branches: vec![branch], timeout: ctx.config.no_answer_timeout, headers: String::new() };
            Ok((Plan { stage, caller_id, forwarded: false }, state))
        }
    }
}

/// Routes the target of a REFER (a `sip:` URI of a local domain, or with an IP address) for a
/// call from `transferee`, like a call: the target's screening and forwarding apply.
///
/// Who may transfer is `[routing] refer`: "subscribers" (default: the transferor is a
/// subscriber of ours, whose outgoing screening applies to the target, 403 otherwise), "any",
/// or "off" (403).
pub fn refer(target: &str, transferee: &str, transferor: Option<&str>, ctx: &mut Ctx<'_>) -> Result<(Plan, RouteState), Refusal> {
    match (ctx.config.refer, transferor) {
        (ReferPolicy::Off, _) | (ReferPolicy::Subscribers, None) => return Err(Refusal::Blocked),
        _ => {}
    }
    if let Some((user, domain)) = transferor.and_then(|t| t.split_once('@')) {
        let dialled = user_host(target).map(|(u, _)| u).unwrap_or_default();
        let settings = ctx.store.settings(user, domain).map_err(|_| Refusal::Store)?;
        if settings.is_some_and(|s| s.blocks(&dialled)) {
            return Err(Refusal::Blocked);
        }
    }
    let target = resolve(target, ctx)?;
    plan_for(target, transferee.to_owned(), ctx)
}

/// A plan and the state routing keeps for it.
pub type Routed = (Plan, RouteState);

/// The two parties of a call placed by the API, as `from` and `to` were given (a user, a
/// user@domain, a number). The first party's registered phones all ring (no forwarding or
/// screening: it asked for the call); the second is routed like a call from the first. Returns
/// both plans with the parties' URIs, or the field that has nowhere to go and why.
#[allow(clippy::type_complexity)]
pub fn originate(
    from: &str,
    to: &str,
    ctx: &mut Ctx<'_>,
) -> Result<((Plan, RouteState), (Plan, RouteState), String, String), (&'static str, Refusal)> {
    let (first, from_uri, caller) = first_party(from, "from", ctx)?;
    let (second, to_uri) = second_party(to, "to", caller.as_deref(), &from_uri, ctx)?;
    Ok((first, second, from_uri, to_uri))
}

fn split_party(who: &str, ctx: &Ctx<'_>) -> (String, String) {
    match who.split_once('@') {
        Some((user, domain)) => (user.to_owned(), domain.to_ascii_lowercase()),
        None => (who.to_owned(), ctx.config.domains.first().cloned().unwrap_or_default()),
    }
}

/// The first party of a call the server places (`who`: a user, user@domain or number; `field`
/// names it in errors): every registered phone of a subscriber, or the number's route. Its plan,
/// its URI and, for a subscriber, its AoR.
#[allow(clippy::type_complexity)]
pub fn first_party(
    who: &str,
    field: &'static str,
    ctx: &mut Ctx<'_>,
) -> Result<((Plan, RouteState), String, Option<String>), (&'static str, Refusal)> {
    let (user, domain) = split_party(who, ctx);
    if !ctx.config.is_local_domain(&domain) {
        return Err((field, Refusal::NotFound));
    }
    let (stage, aor) = match destination(&user, &domain, ctx).map_err(|r| (field, r))? {
        Target::Subscriber(aor) => {
            let branches = contact_branches(ctx, &aor);
            if branches.is_empty() {
                return Err((field, Refusal::NotRegistered));
            }
            (Stage { branches, timeout: ctx.config.no_answer_timeout, headers: String::new() }, Some(aor))
        }
        Target::Branch(branch, _) => {
            (Stage { branches: vec![branch], timeout: ctx.config.no_answer_timeout, headers: String::new() }, None)
        }
    };
    let plan = Plan { stage, caller_id: CallerIdPolicy::Passthrough, forwarded: false };
    Ok(((plan, RouteState { caller_id: CallerIdPolicy::Passthrough, ..RouteState::default() }), format!("sip:{user}@{domain}"), aor))
}

/// The second party of a call the server places, routed like a call from the first (`caller`:
/// its AoR if a subscriber, `caller_uri` its URI): its plan and URI.
pub fn second_party(
    who: &str,
    field: &'static str,
    caller: Option<&str>,
    caller_uri: &str,
    ctx: &mut Ctx<'_>,
) -> Result<(Routed, String), (&'static str, Refusal)> {
    let (user, domain) = split_party(who, ctx);
    if !ctx.config.is_local_domain(&domain) {
        return Err((field, Refusal::NotFound));
    }
    let caller_user = caller_uri.trim_start_matches("sip:").split('@').next().unwrap_or_default().to_owned();
    let routed = route_user(&user, &domain, caller, caller_user, ctx).map_err(|r| (field, r))?;
    Ok((routed, format!("sip:{user}@{domain}")))
}

/// What follows a stage that ended with `outcome`.
pub fn next(state: &mut RouteState, outcome: &Outcome, ctx: &mut Ctx<'_>) -> Next {
    let current = state.current.clone();
    let (conditional, reason) = match outcome {
        // A 6xx other than 600 is the callee's final word (RFC 3261 §16.7.5).
        Outcome::Failed(status) if (600..700).contains(status) => return Next::Fail(*status),
        Outcome::Busy(_) => (current.as_ref().and_then(|c| c.busy.clone()), Reason::Busy),
        Outcome::NoAnswer => (current.as_ref().and_then(|c| c.no_answer.clone()), Reason::NoAnswer),
        Outcome::Failed(_) => (current.as_ref().and_then(|c| c.unreachable.clone()), Reason::Unavailable),
        Outcome::Redirected(contacts) => {
            return match redirect(contacts, state, ctx) {
                Ok(plan) => Next::Ring(plan),
                Err(refusal) => Next::Fail(refusal.status()),
            }
        }
    };
    // Busy with a busy forward set: the subscriber is busy, whatever contact said it. Otherwise
    // the pending stages (the next contact, the find-me list) come first.
    if conditional.is_none() || !matches!(outcome, Outcome::Busy(_)) {
        if let Some(stage) = state.pending.pop_front() {
            return Next::Ring(Plan { stage, caller_id: state.caller_id, forwarded: false });
        }
    }
    state.pending.clear();
    let fallback = current.and_then(|c| c.fallback);
    let forwarded = match (conditional, fallback) {
        (Some(target), _) => forward(&target, reason, state, ctx),
        (None, Some(number)) => fall_back(&number, reason, state, ctx),
        (None, None) => {
            return Next::Fail(match outcome {
                Outcome::Busy(status) => *status,
                Outcome::NoAnswer => 408,
                Outcome::Failed(status) => caller_status(*status),
                Outcome::Redirected(_) => 480,
            })
        }
    };
    match forwarded {
        Ok(plan) => Next::Ring(plan),
        Err(refusal) => Next::Fail(refusal.status()),
    }
}

/// Where a user or number of `domain` goes.
enum Target {
    /// A subscriber (AoR).
    Subscriber(String),
    /// One branch (a trunk, a SIP URI with an IP address), with its caller-ID policy.
    Branch(Branch, CallerIdPolicy),
}

fn destination(user: &str, domain: &str, ctx: &mut Ctx<'_>) -> Result<Target, Refusal> {
    if ctx.store.subscriber(user, domain).map_err(|_| Refusal::Store)?.is_some() {
        return Ok(Target::Subscriber(format!("{user}@{}", domain.to_ascii_lowercase())));
    }
    let Some(route) = ctx.config.route_for(user) else { return Err(Refusal::NotFound) };
    match &route.destination {
        Destination::Trunk(uri) => {
            let rewritten = route.rewrite(user);
            let port = uri.host_with_port.port.map(|p| *p.value()).unwrap_or(5060);
            let ip: IpAddr = uri.host_with_port.host.to_string().parse().map_err(|_| Refusal::BadTrunk)?;
            let addr = SocketAddr::new(ip, port);
            let peer = match uri.transport() {
                Some(rsip::Transport::Tcp) => Peer::tcp(addr),
                _ => Peer::udp(addr),
            };
            let branch = Branch {
                target: format!("sip:{rewritten}@{addr}"),
                peer,
                route: Vec::new(),
                credentials: route.credentials.clone(),
                trunk: true,
            };
            Ok(Target::Branch(branch, route.caller_id))
        }
        Destination::Local => Ok(Target::Subscriber(format!("{}@{}", route.rewrite(user), domain.to_ascii_lowercase()))),
    }
}

/// A forwarding or find-me target (a user, a number, a `sip:` URI of a local domain or with an
/// IP address) as a [`Target`].
fn resolve(target: &str, ctx: &mut Ctx<'_>) -> Result<Target, Refusal> {
    let first_domain = ctx.config.domains.first().cloned().unwrap_or_default();
    if target.starts_with("sip:") {
        let (user, host) = user_host(target).ok_or(Refusal::NotFound)?;
        if ctx.config.is_local_domain(&host) {
            return destination(&user, &host, ctx);
        }
        let uri = rsip::Uri::try_from(target).map_err(|_| Refusal::NotFound)?;
        let ip: IpAddr = uri.host_with_port.host.to_string().parse().map_err(|_| Refusal::NotFound)?;
        let addr = SocketAddr::new(ip, uri.host_with_port.port.map(|p| *p.value()).unwrap_or(5060));
        let branch = Branch { target: target.to_owned(), peer: Peer::udp(addr), route: Vec::new(), credentials: None, trunk: false };
        return Ok(Target::Branch(branch, CallerIdPolicy::Passthrough));
    }
    destination(target, &first_domain, ctx)
}

/// Rings subscriber `aor` (the callee, or a forwarding target): its screening, unconditional
/// forwarding, contacts and find-me list; remembers its conditional forwards for [`next`].
fn ring_subscriber(aor: &str, state: &mut RouteState, ctx: &mut Ctx<'_>) -> Result<Plan, Refusal> {
    if state.visited.iter().any(|v| v == aor) {
        return Err(Refusal::Loop);
    }
    state.visited.push(aor.to_owned());
    let (user, domain) = aor.split_once('@').unwrap_or((aor, ""));
    let settings = ctx.store.settings(user, domain).map_err(|_| Refusal::Store)?.unwrap_or_default();
    if settings.screen.refuses(&state.caller) {
        return Err(Refusal::Screened(settings.screen.refusal_status()));
    }
    if let Some(target) = &settings.forward.always {
        return forward(target, Reason::Unconditional, state, ctx);
    }
    let fallback = settings.pstn_fallback.then(|| settings.e164.clone()).flatten();
    // How long the contacts ring: until the no-answer forward, or the PSTN fallback.
    let ring = if settings.forward.no_answer.is_some() {
        settings.forward.no_answer_s.map_or(ctx.config.no_answer_timeout, |s| Duration::from_secs(s.into()))
    } else if fallback.is_some() {
        Duration::from_secs(settings.pstn_fallback_after_s.unwrap_or(20).into())
    } else {
        ctx.config.no_answer_timeout
    };
    let headers = diversion_headers(state, &format!("sip:{aor}"));
    // Sequential find-me: the contacts ring one find-me step long, then each target in turn.
    let contacts_ring = if !settings.find_me.is_empty() && !settings.find_me_parallel {
        Duration::from_secs(settings.find_me_branch_s.unwrap_or(15).into())
    } else {
        ring
    };
    let mut stages = contact_stages(ctx, aor, contacts_ring, &headers);
    find_me(&settings, &mut stages, ring, &headers, ctx);
    state.current = Some(Current {
        aor: aor.to_owned(),
        busy: settings.forward.busy.clone(),
        no_answer: settings.forward.no_answer.clone(),
        unreachable: settings.forward.unreachable.clone(),
        fallback: fallback.clone(),
    });
    let forwarded = !state.diversions.is_empty();
    match stages.pop_front() {
        Some(stage) => {
            state.pending = stages;
            Ok(Plan { stage, caller_id: state.caller_id, forwarded })
        }
        None => match (&settings.forward.unreachable, fallback) {
            (Some(target), _) => forward(target, Reason::Unavailable, state, ctx),
            (None, Some(number)) => fall_back(&number, Reason::Unavailable, state, ctx),
            (None, None) => Err(Refusal::NotRegistered),
        },
    }
}

/// Adds the find-me targets (RFC 5359 §2.12): to the contacts' stage (parallel), or each as a
/// stage of its own after them (sequential).
fn find_me(settings: &Settings, stages: &mut VecDeque<Stage>, ring: Duration, headers: &str, ctx: &mut Ctx<'_>) {
    let branch_time = Duration::from_secs(settings.find_me_branch_s.unwrap_or(15).into());
    for target in &settings.find_me {
        let branches = match resolve(target, ctx) {
            Ok(Target::Subscriber(aor)) => contact_branches(ctx, &aor),
            Ok(Target::Branch(branch, _)) => vec![branch],
            Err(_) => {
                tracing::debug!(target, "a find-me target has nowhere to go");
                continue;
            }
        };
        if branches.is_empty() {
            continue;
        }
        match stages.front_mut() {
            Some(first) if settings.find_me_parallel => first.branches.extend(branches),
            _ => stages.push_back(Stage {
                branches,
                timeout: if settings.find_me_parallel { ring } else { branch_time },
                headers: headers.to_owned(),
            }),
        }
    }
}

/// Forwards the call to `target` for `reason`.
fn forward(target: &str, reason: Reason, state: &mut RouteState, ctx: &mut Ctx<'_>) -> Result<Plan, Refusal> {
    if state.diversions.len() >= usize::from(ctx.config.max_forwards) {
        return Err(Refusal::TooManyForwards);
    }
    let diverted = state.current.as_ref().map(|c| c.aor.clone()).or_else(|| state.visited.last().cloned()).unwrap_or_default();
    state.diversions.push((diverted, reason));
    state.pending.clear();
    match resolve(target, ctx)? {
        Target::Subscriber(aor) => ring_subscriber(&aor, state, ctx),
        Target::Branch(branch, caller_id) => {
            state.current = None;
            let headers = diversion_headers(state, &branch.target);
            let stage = Stage { branches: vec![branch], timeout: ctx.config.no_answer_timeout, headers };
            Ok(Plan { stage, caller_id, forwarded: true })
        }
    }
}

/// Follows a redirect (3xx, RFC 3261 §16.7.4 and §8.1.3.4): the Contacts become the next
/// stage, counted against `[routing] max_forwards` like forwards.
fn redirect(contacts: &[String], state: &mut RouteState, ctx: &mut Ctx<'_>) -> Result<Plan, Refusal> {
    if state.diversions.len() >= usize::from(ctx.config.max_forwards) {
        return Err(Refusal::TooManyForwards);
    }
    let diverted = state.current.as_ref().map(|c| c.aor.clone()).or_else(|| state.visited.last().cloned()).unwrap_or_default();
    state.diversions.push((diverted, Reason::Deflection));
    state.pending.clear();
    state.current = None;
    let mut branches = Vec::new();
    for contact in contacts.iter().take(crate::settings::MAX_LIST) {
        match resolve(contact, ctx) {
            Ok(Target::Subscriber(aor)) if !state.visited.contains(&aor) => branches.extend(contact_branches(ctx, &aor)),
            Ok(Target::Branch(branch, _)) => branches.push(branch),
            _ => tracing::debug!(contact, "a redirect's contact has nowhere to go"),
        }
    }
    if branches.is_empty() {
        return Err(Refusal::NotRegistered);
    }
    // History-Info names where the redirect pointed (its first Contact), not a registration.
    let headers = diversion_headers(state, contacts.first().map(String::as_str).unwrap_or_default());
    let stage = Stage { branches, timeout: ctx.config.no_answer_timeout, headers };
    Ok(Plan { stage, caller_id: state.caller_id, forwarded: true })
}

/// The operator's call mode: out through the trunks to the subscriber's own number.
fn fall_back(number: &str, reason: Reason, state: &mut RouteState, ctx: &mut Ctx<'_>) -> Result<Plan, Refusal> {
    let Some(route) = ctx.config.route_for(number).filter(|r| matches!(r.destination, Destination::Trunk(_))) else {
        tracing::warn!(number, "PSTN fallback: no trunk route for the number");
        return Err(Refusal::NotFound);
    };
    let caller_id = route.caller_id;
    match destination(number, "", ctx)? {
        Target::Branch(branch, _) => {
            let diverted = state.current.take().map(|c| c.aor).unwrap_or_default();
            state.diversions.push((diverted, reason));
            let headers = diversion_headers(state, &branch.target);
            let stage = Stage { branches: vec![branch], timeout: ctx.config.no_answer_timeout, headers };
            Ok(Plan { stage, caller_id, forwarded: true })
        }
        Target::Subscriber(_) => Err(Refusal::NotFound),
    }
}

/// Diversion (RFC 5806, newest first) and History-Info (RFC 7044: the original target, then
/// one entry per forward with its RFC 4458 cause, the last naming `target`) for the forwards so
/// far.
fn diversion_headers(state: &RouteState, target: &str) -> String {
    let Some((first, _)) = state.diversions.first() else { return String::new() };
    let mut out = String::new();
    for (i, (aor, reason)) in state.diversions.iter().enumerate().rev() {
        out.push_str(&format!("Diversion: <sip:{aor}>;reason={};counter={}\r\n", reason.diversion(), i + 1));
    }
    let mut entries = vec![format!("<sip:{first}>;index=1")];
    let mut index = String::from("1");
    for (i, (_, reason)) in state.diversions.iter().enumerate() {
        let parent = index.clone();
        index.push_str(".1");
        let next = state.diversions.get(i + 1).map_or_else(|| target.to_owned(), |(aor, _)| format!("sip:{aor}"));
        let (uri, params) = next.split_once(';').map_or((next.as_str(), ""), |(u, p)| (u, p));
        let params = if params.is_empty() { String::new() } else { format!(";{params}") };
        entries.push(format!("<{uri}{params};cause={}>;index={index};mp={parent}", reason.cause()));
    }
    out.push_str(&format!("History-Info: {}\r\n", entries.join(", ")));
    out
}

/// `aor`'s registered contacts as branches, best q first.
fn contact_branches(ctx: &mut Ctx<'_>, aor: &str) -> Vec<Branch> {
    ctx.contacts(aor)
        .into_iter()
        .map(|b| Branch { target: b.contact, peer: b.flow, route: b.path, credentials: None, trunk: false })
        .collect()
}

/// The stages that ring `aor`'s contacts for `ring`: one stage with all of them (parallel
/// forking) or one per contact, best q first (sequential). Empty when none is registered.
fn contact_stages(ctx: &mut Ctx<'_>, aor: &str, ring: Duration, headers: &str) -> VecDeque<Stage> {
    let branches = contact_branches(ctx, aor);
    let config = ctx.config;
    if branches.is_empty() {
        return VecDeque::new();
    }
    match config.fork {
        ForkMode::Parallel => VecDeque::from([Stage { branches, timeout: ring, headers: headers.to_owned() }]),
        ForkMode::Sequential => {
            let last = branches.len() - 1;
            branches
                .into_iter()
                .enumerate()
                .map(|(i, b)| Stage {
                    branches: vec![b],
                    // The last contact rings for the rest of the call's ring time.
                    timeout: if i == last { ring } else { config.branch_timeout },
                    headers: headers.to_owned(),
                })
                .collect()
        }
    }
}

/// The caller as screening sees it: the asserted identity's user if there is one, else the
/// From user; `anonymous` for a withheld identity.
fn caller_identity(request: &Request) -> String {
    let from = from_value(&request.headers).map(uri_of).unwrap_or_default();
    let asserted = header(&request.headers, "P-Asserted-Identity").map(uri_of);
    let (user, host) = asserted.and_then(user_host).or_else(|| user_host(from)).unwrap_or_default();
    if user.eq_ignore_ascii_case("anonymous") || host.eq_ignore_ascii_case("anonymous.invalid") {
        "anonymous".to_owned()
    } else {
        user
    }
}

/// The status the caller gets for a callee's final failure: a redirect that led nowhere is 480,
/// and a callee's own authentication challenge is not the caller's to answer (403).
fn caller_status(callee_status: u16) -> u16 {
    match callee_status {
        300..=399 => 480,
        401 | 407 => 403,
        s => s,
    }
}

/// The best of a stage's final responses (RFC 3261 §16.7.6, simplified): a busy one if any,
/// else a redirect with its Contacts, else the lowest class (4xx before 5xx), the lowest code
/// within it.
pub fn outcome_of(statuses: &[u16], redirects: &[String]) -> Outcome {
    if let Some(&busy) = statuses.iter().find(|&&s| s == 486 || s == 600) {
        return Outcome::Busy(busy);
    }
    if !redirects.is_empty() {
        return Outcome::Redirected(redirects.to_vec());
    }
    let best = statuses.iter().copied().filter(|s| *s >= 300).min_by_key(|s| (s / 100, *s)).unwrap_or(480);
    Outcome::Failed(best)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_busy_branch_makes_the_stage_busy_and_otherwise_the_lowest_class_wins() {
        assert_eq!(outcome_of(&[404, 486, 503], &[]), Outcome::Busy(486));
        assert_eq!(outcome_of(&[503, 480, 404], &[]), Outcome::Failed(404));
        assert_eq!(outcome_of(&[503, 500], &[]), Outcome::Failed(500));
        assert_eq!(outcome_of(&[], &[]), Outcome::Failed(480));
        assert_eq!(outcome_of(&[302, 404], &["sip:x@192.0.2.9".into()]), Outcome::Redirected(vec!["sip:x@192.0.2.9".into()]));
    }

    #[test]
    fn diversion_and_history_info_name_each_forward_with_its_reason() {
        let state = RouteState {
            diversions: vec![("bob@sip.test".into(), Reason::Busy), ("carol@sip.test".into(), Reason::NoAnswer)],
            ..RouteState::default()
        };
        let headers = diversion_headers(&state, "sip:dave@sip.test");
        assert!(headers.starts_with(
            "Diversion: <sip:carol@sip.test>;reason=no-answer;counter=2\r\nDiversion: <sip:bob@sip.test>;reason=user-busy;counter=1\r\n"
        ), "{headers}");
        assert!(headers.contains(
            "History-Info: <sip:bob@sip.test>;index=1, <sip:carol@sip.test;cause=486>;index=1.1;mp=1, <sip:dave@sip.test;cause=408>;index=1.1.1;mp=1.1\r\n"
        ), "{headers}");
    }
}
