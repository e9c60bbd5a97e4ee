//! Where a call goes: the routing service. An INVITE's Request-URI names a subscriber of a local
//! domain (rung at its registered contacts), a number a `[[routes]]` entry sends to a trunk, or a
//! number it maps to a local user; anything else is refused with the status the caller gets.
//!
//! ```text
//!  Request-URI ─► ours? (domain, advertised host, listen address) ── no ─► 404
//!      │ user is a subscriber ─► its contacts ── none registered ─► 480
//!      │                          parallel: one stage, all contacts, the no-answer timeout
//!      │                          sequential: one stage per contact, best q first
//!      └ else [[routes]] by prefix ─► Trunk: one branch to the trunk (502 if unreachable)
//!                                   └► Local: rewritten user's contacts (as above)
//! ```
//!
//! Routing answers with a [`Plan`]: the stage to ring now (branches rung in parallel, with a
//! timeout) and a [`RouteState`] the B2BUA keeps with the call. When a stage ends unanswered the
//! B2BUA reports an [`Outcome`] and [`next`] decides what follows: the next stage, or the final
//! status for the caller.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::Duration;

use rsip::Request;
use sip_core::transaction::Peer;

use crate::config::{CallerIdPolicy, Config, Destination, ForkMode};
use crate::registrar::Registrar;
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
}

/// Branches rung together, and how long they may ring.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stage {
    /// Rung in parallel; never empty.
    pub branches: Vec<Branch>,
    /// No answer within this ends the stage ([`Outcome::NoAnswer`]).
    pub timeout: Duration,
}

/// What to do now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// The stage to ring.
    pub stage: Stage,
    /// What the callee sees of the caller.
    pub caller_id: CallerIdPolicy,
}

/// What routing keeps of a call between stages.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RouteState {
    /// Stages still to ring (sequential forking).
    pending: VecDeque<Stage>,
    caller_id: CallerIdPolicy,
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
    /// A subscriber with no registered contact (480).
    NotRegistered,
    /// The trunk's address is not an IP address (502).
    BadTrunk,
    /// The store could not be read (500).
    Store,
}

impl Refusal {
    /// The SIP status for the caller.
    pub fn status(self) -> u16 {
        match self {
            Refusal::NotFound => 404,
            Refusal::NotRegistered => 480,
            Refusal::BadTrunk => 502,
            Refusal::Store => 500,
        }
    }
}

/// Routes `request` (an initial INVITE) at `now_unix`: the first stage to ring and the state
/// the call keeps for [`next`].
pub fn route(
    request: &Request,
    config: &Config,
    store: &mut dyn Store,
    registrar: &Registrar,
    now_unix: u64,
) -> Result<(Plan, RouteState), Refusal> {
    let user = request.uri.user().unwrap_or_default().to_owned();
    let host = request.uri.host_with_port.host.to_string();
    let advertised_host = config.advertise.rsplit_once(':').map_or(config.advertise.as_str(), |(h, _)| h);
    let ours = config.is_local_domain(&host)
        || host == advertised_host
        || config.listen.iter().any(|l| l.addr.ip().to_string() == host);
    if !ours {
        return Err(Refusal::NotFound);
    }
    let local_domain =
        if config.is_local_domain(&host) { host.clone() } else { config.domains.first().cloned().unwrap_or_default() };
    let subscriber = store.subscriber(&user, &local_domain).map_err(|_| Refusal::Store)?;
    let (local_user, caller_id) = if subscriber.is_some() {
        (user, CallerIdPolicy::Passthrough)
    } else {
        let Some(route) = config.route_for(&user) else { return Err(Refusal::NotFound) };
        match &route.destination {
            Destination::Trunk(uri) => {
                let rewritten = route.rewrite(&user);
                let port = uri.host_with_port.port.map(|p| *p.value()).unwrap_or(5060);
                let ip = uri.host_with_port.host.to_string().parse().map_err(|_| Refusal::BadTrunk)?;
                let addr = SocketAddr::new(ip, port);
                let peer = match uri.transport() {
                    Some(rsip::Transport::Tcp) => Peer::tcp(addr),
                    _ => Peer::udp(addr),
                };
                let branch = Branch { target: format!("sip:{rewritten}@{addr}"), peer, route: Vec::new() };
                let stage = Stage { branches: vec![branch], timeout: config.no_answer_timeout };
                let state = RouteState { pending: VecDeque::new(), caller_id: route.caller_id };
                return Ok((Plan { stage, caller_id: route.caller_id }, state));
            }
            Destination::Local => (route.rewrite(&user), route.caller_id),
        }
    };
    let aor = format!("{local_user}@{local_domain}");
    let mut stages = contact_stages(registrar, &aor, now_unix, config);
    let Some(stage) = stages.pop_front() else { return Err(Refusal::NotRegistered) };
    Ok((Plan { stage, caller_id }, RouteState { pending: stages, caller_id }))
}

/// The stages that ring `aor`'s registered contacts: one stage with all of them (parallel
/// forking) or one per contact, best q first (sequential). Empty when none is registered.
fn contact_stages(registrar: &Registrar, aor: &str, now_unix: u64, config: &Config) -> VecDeque<Stage> {
    let branches: Vec<Branch> = registrar
        .lookup(aor, now_unix)
        .into_iter()
        .map(|b| Branch { target: b.contact, peer: b.flow, route: b.path })
        .collect();
    if branches.is_empty() {
        return VecDeque::new();
    }
    match config.fork {
        ForkMode::Parallel => VecDeque::from([Stage { branches, timeout: config.no_answer_timeout }]),
        ForkMode::Sequential => {
            let last = branches.len() - 1;
            branches
                .into_iter()
                .enumerate()
                .map(|(i, b)| Stage {
                    branches: vec![b],
                    // The last contact rings for the rest of the call's no-answer time.
                    timeout: if i == last { config.no_answer_timeout } else { config.branch_timeout },
                })
                .collect()
        }
    }
}

/// What follows a stage that ended with `outcome`: the next pending stage (sequential forking
/// goes on after a busy or failed contact, RFC 3261 §16.6), else the caller's final status.
pub fn next(state: &mut RouteState, outcome: &Outcome) -> Next {
    if let Some(stage) = state.pending.pop_front() {
        return Next::Ring(Plan { stage, caller_id: state.caller_id });
    }
    Next::Fail(match outcome {
        Outcome::Busy(status) => *status,
        Outcome::NoAnswer => 408,
        Outcome::Failed(status) => caller_status(*status),
    })
}

/// The status the caller gets for a callee's final failure: redirects are not followed yet
/// (480), and the callee's own authentication challenge is not the caller's to answer (403).
fn caller_status(callee_status: u16) -> u16 {
    match callee_status {
        300..=399 => 480,
        401 | 407 => 403,
        s => s,
    }
}

/// The best of a stage's final responses (RFC 3261 §16.7.6, simplified): a busy one if any,
/// else the lowest class (4xx before 5xx), the lowest code within it.
pub fn outcome_of(statuses: &[u16]) -> Outcome {
    if let Some(&busy) = statuses.iter().find(|&&s| s == 486 || s == 600) {
        return Outcome::Busy(busy);
    }
    let best = statuses.iter().copied().filter(|s| *s >= 300).min_by_key(|s| (s / 100, *s)).unwrap_or(480);
    Outcome::Failed(best)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_busy_branch_makes_the_stage_busy_and_otherwise_the_lowest_class_wins() {
        assert_eq!(outcome_of(&[404, 486, 503]), Outcome::Busy(486));
        assert_eq!(outcome_of(&[503, 480, 404]), Outcome::Failed(404));
        assert_eq!(outcome_of(&[503, 500]), Outcome::Failed(500));
        assert_eq!(outcome_of(&[]), Outcome::Failed(480));
    }

    #[test]
    fn pending_stages_come_before_the_final_status() {
        let branch = Branch { target: "sip:b@192.0.2.1".into(), peer: Peer::udp(SocketAddr::from(([192, 0, 2, 1], 5060))), route: vec![] };
        let stage = Stage { branches: vec![branch], timeout: Duration::from_secs(5) };
        let mut state = RouteState { pending: VecDeque::from([stage.clone()]), caller_id: CallerIdPolicy::Passthrough };
        assert_eq!(next(&mut state, &Outcome::Busy(486)), Next::Ring(Plan { stage, caller_id: CallerIdPolicy::Passthrough }));
        assert_eq!(next(&mut state, &Outcome::Busy(486)), Next::Fail(486));
        assert_eq!(next(&mut state, &Outcome::NoAnswer), Next::Fail(408));
        assert_eq!(next(&mut state, &Outcome::Failed(407)), Next::Fail(403));
    }
}
