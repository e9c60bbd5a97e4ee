//! Where a call goes: the routing service. An INVITE's Request-URI names a subscriber of a local
//! domain (rung at its registered contacts), a number a `[[routes]]` entry sends to a trunk, or a
//! number it maps to a local user; anything else is refused with the status the caller gets.
//!
//! ```text
//!  Request-URI ─► ours? (domain, advertised host, listen address) ── no ─► 404
//!      │ user is a subscriber ─► its contacts, best q first ── none registered ─► 480
//!      └ else [[routes]] by prefix ─► Trunk: one branch to the trunk (502 if unreachable)
//!                                   └► Local: rewritten user's contacts (as above)
//! ```
//!
//! The answer is a [`Route`]: the branches to try, in order, and the caller-ID policy. The B2BUA
//! rings the first branch today; forking and the forwarding services take the others.

use std::net::SocketAddr;

use rsip::Request;
use sip_core::transaction::Peer;

use crate::config::{CallerIdPolicy, Config, Destination};
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

/// Where a call goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// Branches in order of preference (registered contacts by q-value); never empty.
    pub branches: Vec<Branch>,
    /// What the callee sees of the caller.
    pub caller_id: CallerIdPolicy,
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

/// Routes `request` (an initial INVITE) at `now_unix`.
pub fn route(request: &Request, config: &Config, store: &mut dyn Store, registrar: &Registrar, now_unix: u64) -> Result<Route, Refusal> {
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
                return Ok(Route { branches: vec![branch], caller_id: route.caller_id });
            }
            Destination::Local => (route.rewrite(&user), route.caller_id),
        }
    };
    let aor = format!("{local_user}@{local_domain}");
    let branches: Vec<Branch> = registrar
        .lookup(&aor, now_unix)
        .into_iter()
        .map(|b| Branch { target: b.contact, peer: b.flow, route: b.path })
        .collect();
    if branches.is_empty() {
        return Err(Refusal::NotRegistered);
    }
    Ok(Route { branches, caller_id })
}
