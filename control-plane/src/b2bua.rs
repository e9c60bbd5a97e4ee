//! B2BUA calls with media anchored in the media plane (sans-IO; part of [`ControlPlane`]).
//!
//! ```text
//!  A ──INVITE(offer)──► [auth 407] ─► route (registered user / trunk) ─► Allocate (2 legs per stream
//!                                                                           + Offer: the media plane
//!                                                                           rewrites A's offer for B)
//!                                                                                │
//!  A ◄─1xx/2xx(answer for A)── Answer ◄─1xx/2xx(answer)── B ◄──INVITE(offer for B)──┘
//!  A ──ACK──► (B was ACKed on its 2xx)     BYE either side ─► 200, BYE other side, Release
//! ```
//!
//! Every call that got an allocation releases it exactly once, whichever way it ends (answered and
//! hung up, refused, cancelled, timed out, allocation answered after the caller gave up); the
//! counters `media_allocations`/`media_releases` and the media plane's leg count prove it in tests.
//! Two dialogs per call: A's (the caller's Call-ID, our To tag) and B's (our Call-ID and From
//! tag). In-dialog requests are relayed to the other side; an SDP offer in one (re-INVITE, UPDATE:
//! hold, resume, a codec change) goes through the media plane's Offer first, and the answer in
//! its response through Answer. The media plane writes every description the endpoints get (its
//! address and ports, the codecs of the configured policy, SRTP per side), and bridges the legs
//! with transcoding where the two sides share no codec. Responses carrying an answer wait for
//! it in order: a 200 never overtakes the 183 whose answer is still in the media plane.
//!
//! Not yet: forking to several registered contacts (the best-q contact is called), delayed-offer
//! INVITEs and re-INVITEs (488), early-dialog UPDATE, redirects (3xx maps to 480), trunk
//! authentication (a 401/407 from the callee maps to 403).

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use rsip::headers::UntypedHeader;
use rsip::{Header, Method, Request, Response, SipMessage};

use crate::config::{CallerIdPolicy, Config, Destination};
use crate::media::{Allocation, MediaError, MediaReply, MediaRequest};
use crate::sdp::Sdp;
use crate::service::{ControlPlane, Now};
use sip_core::message::{self, call_id, from_value, header, response_for, tag_of, to_value, uri_of, user_host, Framing};
use sip_core::transaction::{cancel_for, Outgoing, Peer, Role, TransactionKey};
use crate::store::Store;

/// Which side of a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// The caller.
    A,
    /// The callee.
    B,
}

impl Side {
    fn other(self) -> Side {
        match self {
            Side::A => Side::B,
            Side::B => Side::A,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Waiting for the media plane.
    Allocating,
    /// INVITE sent to B.
    Calling,
    /// B answered; 2xx sent to A, waiting for A's ACK.
    Answered,
    /// A ACKed.
    Confirmed,
    /// A cancelled (or the no-answer timer fired); waiting for B's final response.
    Cancelled,
}

/// One dialog of a call, as we present ourselves in it.
#[derive(Debug, Clone)]
struct Dialog {
    call_id: String,
    /// Our From (B side) or To (A side) value, with our tag.
    local: String,
    /// Their value, with their tag once known.
    remote: String,
    /// Where in-dialog requests go (their Contact).
    target: String,
    /// The flow to them.
    peer: Peer,
    /// Route set (RFC 3261 §12.1): the Record-Route of the dialog-forming request (A side, in
    /// order) or of the 2xx (B side, reversed); before the 2xx, the callee's registered Path.
    /// Loose routing only: the Request-URI stays the remote target and the request goes to `peer`.
    route: Vec<String>,
    /// Our CSeq in this dialog.
    cseq: u32,
}

#[derive(Debug)]
struct Retransmit {
    side: Side,
    payload: Bytes,
    next: Instant,
    interval: Duration,
    until: Instant,
}

#[derive(Debug)]
struct Call {
    state: State,
    a: Dialog,
    b: Dialog,
    invite_a: Request,
    invite_a_key: TransactionKey,
    invite_b: Option<Request>,
    media: Option<Allocation>,
    /// The (offerer, answerer) legs of the last offer, which its answer goes over.
    offer_legs: Vec<(u64, u64)>,
    /// An Offer or Answer is in the media plane: responses wait in `forwards`.
    negotiating: bool,
    /// Responses to pass to the other side, in order (the head may wait for its answer).
    forwards: VecDeque<Forward>,
    /// An in-dialog request with an offer, waiting for the media plane's rewrite of it.
    relay_offer: Option<RelayOffer>,
    policy: CallerIdPolicy,
    caller: Option<String>,
    b_provisional: bool,
    cancel_on_provisional: bool,
    ring_deadline: Option<Instant>,
    retransmit: Option<Retransmit>,
    /// The ACK sent for B's 2xx, re-sent when B retransmits its 2xx.
    ack_b: Option<Bytes>,
    reinvite_pending: bool,
}

impl Call {
    fn holds_deadline(&self, at: Instant) -> bool {
        self.ring_deadline == Some(at) || self.retransmit.as_ref().is_some_and(|r| r.next == at)
    }

    fn dialog(&self, side: Side) -> &Dialog {
        match side {
            Side::A => &self.a,
            Side::B => &self.b,
        }
    }

    fn dialog_mut(&mut self, side: Side) -> &mut Dialog {
        match side {
            Side::A => &mut self.a,
            Side::B => &mut self.b,
        }
    }

}

/// A response from one side for the other (to a request we relayed, or the callee's to the
/// caller's INVITE).
#[derive(Debug)]
struct Forward {
    to: Side,
    origin: TransactionKey,
    /// The request being answered, as the `to` side sent it.
    request: Request,
    response: Response,
    /// The request carried an offer: an SDP body in this response is its answer.
    answers_offer: bool,
}

/// An in-dialog request with an SDP offer, relayed once the media plane has rewritten it.
#[derive(Debug)]
struct RelayOffer {
    key: TransactionKey,
    from: Side,
    request: Request,
    extra: String,
}

#[derive(Debug, Clone)]
enum Purpose {
    Invite,
    Cancel,
    Bye,
    /// An in-dialog request relayed from `from`; its answer goes back through `origin`. `offer`:
    /// it carried an SDP offer (the media plane answers the response's SDP).
    Relay { origin: TransactionKey, from: Side, request: Box<Request>, offer: bool },
}

/// The table of calls.
#[derive(Debug, Default)]
pub struct Calls {
    calls: HashMap<u64, Call>,
    by_call_id: HashMap<String, (u64, Side)>,
    by_invite: HashMap<TransactionKey, u64>,
    clients: HashMap<TransactionKey, (u64, Purpose)>,
    /// Call timers (ring deadline, 2xx retransmission), lazily deleted: an entry is live only
    /// while the call still holds that deadline.
    timers: BinaryHeap<Reverse<(Instant, u64)>>,
    next_id: u64,
}

impl Calls {
    /// Calls in progress.
    pub fn len(&self) -> usize {
        self.calls.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.calls.is_empty()
    }

    /// Earliest call timer.
    pub fn next_deadline(&mut self) -> Option<Instant> {
        while let Some(&Reverse((at, id))) = self.timers.peek() {
            if self.calls.get(&id).is_some_and(|c| c.holds_deadline(at)) {
                return Some(at);
            }
            self.timers.pop();
        }
        None
    }

    fn schedule(&mut self, at: Instant, id: u64) {
        self.timers.push(Reverse((at, id)));
    }

    /// Calls with a timer due at `now`, each once.
    fn due(&mut self, now: Instant) -> Vec<u64> {
        let mut due = Vec::new();
        while let Some(&Reverse((at, id))) = self.timers.peek() {
            if at > now {
                break;
            }
            self.timers.pop();
            if !due.contains(&id) {
                due.push(id);
            }
        }
        due
    }
}

fn reason_of(response: &Response) -> String {
    match &response.status_code {
        rsip::StatusCode::Other(_, reason) => reason.clone(),
        other => message::default_reason_phrase(other.code()).to_owned(),
    }
}

fn content_type(headers: &rsip::Headers) -> Option<String> {
    headers.iter().find_map(|h| match h {
        Header::ContentType(c) => Some(c.value().trim().to_owned()),
        _ => None,
    })
}

/// The Record-Route entries of a message, top first.
fn record_route(headers: &rsip::Headers) -> Vec<String> {
    headers
        .iter()
        .filter_map(|h| match h {
            Header::RecordRoute(rr) => Some(rr.value()),
            _ => None,
        })
        .flat_map(message::split_list)
        .map(str::to_owned)
        .collect()
}

fn contact_uri(headers: &rsip::Headers) -> Option<String> {
    headers.iter().find_map(|h| match h {
        Header::Contact(c) => Some(uri_of(c.value()).to_owned()),
        _ => None,
    })
}

fn is_sdp(headers: &rsip::Headers, body: &[u8]) -> bool {
    !body.is_empty() && content_type(headers).is_some_and(|c| c.to_ascii_lowercase().starts_with("application/sdp"))
}

/// Whether the request's `Accept` (if any) admits `application/sdp` (RFC 3261 §20.1: absent
/// means application/sdp).
fn accepts_sdp(headers: &rsip::Headers) -> bool {
    let mut values = headers
        .iter()
        .filter_map(|h| match h {
            Header::Accept(a) => Some(a.value().to_owned()),
            _ => None,
        })
        .peekable();
    if values.peek().is_none() {
        return true;
    }
    values.any(|v| {
        v.split(',').any(|range| {
            let media = range.split(';').next().unwrap_or_default().trim().to_ascii_lowercase();
            media.is_empty() || media == "application/sdp" || media == "application/*" || media == "*/*"
        })
    })
}

/// Status sent to the caller for the callee's final failure.
fn caller_status(callee_status: u16) -> u16 {
    match callee_status {
        300..=399 => 480,
        401 | 407 => 403,
        s => s,
    }
}

fn our_contact(config: &Config, peer: &Peer) -> String {
    let advertise = config.advertise_for(peer.transport);
    match peer.transport {
        rsip::Transport::Tcp => format!("<sip:b2bua@{advertise};transport=tcp>"),
        rsip::Transport::Tls => format!("<sip:b2bua@{advertise};transport=tls>"),
        _ => format!("<sip:b2bua@{advertise}>"),
    }
}

fn without_tag(value: &str) -> String {
    match value.rfind('>') {
        Some(end) => value.get(..=end).unwrap_or(value).to_owned(),
        None => value.split(';').next().unwrap_or(value).to_owned(),
    }
}

impl ControlPlane {
    fn via_transport(peer: &Peer) -> &'static str {
        match peer.transport {
            rsip::Transport::Tcp => "TCP",
            rsip::Transport::Tls => "TLS",
            _ => "UDP",
        }
    }


    /// Builds an in-dialog (or initial) request; `None` only if our own text does not parse
    /// (an internal bug, logged).
    fn build_request(
        config: &crate::config::Config,
        random: &mut sip_core::Random,
        method: &str,
        dialog: &Dialog,
        cseq: u32,
        extra: &str,
        body: Option<(&str, &[u8])>,
    ) -> Option<Request> {
        let branch = random.branch();
        // The initial INVITE carries the caller's Max-Forwards minus one in `extra`, so a route
        // that loops back to us runs out of hops (483) instead of ringing forever.
        let max_forwards = if extra.contains("Max-Forwards:") { "" } else { "Max-Forwards: 70\r\n" };
        let routes: String = dialog.route.iter().map(|r| format!("Route: {r}\r\n")).collect();
        let mut text = format!(
            "{method} {target} SIP/2.0\r\nVia: SIP/2.0/{transport} {advertise};branch={branch};rport\r\n\
             {max_forwards}{routes}From: {from}\r\nTo: {to}\r\nCall-ID: {call_id}\r\nCSeq: {cseq} {method}\r\n{extra}",
            target = dialog.target,
            transport = Self::via_transport(&dialog.peer),
            advertise = config.advertise_for(dialog.peer.transport),
            from = dialog.local,
            to = dialog.remote,
            call_id = dialog.call_id,
        );
        let mut bytes = Vec::new();
        if let Some((ctype, body)) = body {
            text.push_str(&format!("Content-Type: {ctype}\r\nContent-Length: {}\r\n\r\n", body.len()));
            bytes.extend_from_slice(text.as_bytes());
            bytes.extend_from_slice(body);
        } else {
            text.push_str("Content-Length: 0\r\n\r\n");
            bytes.extend_from_slice(text.as_bytes());
        }
        match message::parse(&bytes, Framing::Datagram) {
            Ok(SipMessage::Request(r)) => Some(r),
            other => {
                tracing::error!(?other, "built an unparsable {method}");
                None
            }
        }
    }

    /// Starts a client transaction for `request` to `peer` and indexes it.
    fn send_client(&mut self, id: u64, request: Request, peer: Peer, purpose: Purpose, now: Now) -> bool {
        match self.layer.start_client(request, peer, now.instant) {
            Ok(key) => {
                self.calls.clients.insert(key, (id, purpose));
                true
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot start client transaction");
                false
            }
        }
    }

    /// Sends a request in `side`'s dialog of call `id`.
    fn send_in_dialog(
        &mut self,
        id: u64,
        side: Side,
        method: &str,
        extra: &str,
        body: Option<(&str, &[u8])>,
        purpose: Purpose,
        now: Now,
    ) {
        let Some(call) = self.calls.calls.get_mut(&id) else { return };
        let dialog = call.dialog_mut(side);
        dialog.cseq += 1;
        let (dialog, cseq) = (dialog.clone(), dialog.cseq);
        if let Some(request) = Self::build_request(&self.config, &mut self.random, method, &dialog, cseq, extra, body) {
            self.send_client(id, request, dialog.peer, purpose, now);
        }
    }

    // ---- new calls ----

    pub(crate) fn on_invite(
        &mut self,
        key: TransactionKey,
        request: Request,
        source: Peer,
        now: Now,
        store: &mut dyn Store,
    ) {
        if message::max_forwards(&request.headers).is_ok_and(|m| m == 0) {
            self.reply(&key, &request, 483, now);
            return;
        }
        let Some((from_user, from_domain)) = from_value(&request.headers).map(uri_of).and_then(user_host) else {
            self.reply(&key, &request, 400, now);
            return;
        };
        let caller = if self.config.trusted.contains(&source.addr.ip()) {
            None
        } else {
            let Some(user) = self.authenticate(&key, &request, source.addr.ip(), &from_user, &from_domain, true, now, store) else { return };
            if user != from_user || !self.config.is_local_domain(&from_domain) {
                self.stats.auth_failures += 1;
                self.reply(&key, &request, 403, now);
                return;
            }
            Some(format!("{user}@{}", from_domain.to_ascii_lowercase()))
        };
        // Content negotiation (RFC 3261 §8.2.3, §21.4.7): the answer will be SDP, so the caller
        // must accept it (406); the offer must be SDP (415, with Accept); there must be an offer
        // (delayed offer is not supported: 488).
        if !accepts_sdp(&request.headers) {
            self.reply(&key, &request, 406, now);
            return;
        }
        if !request.body.is_empty() && !is_sdp(&request.headers, &request.body) {
            let mut response = self.response(&request, 415, None);
            response.headers.push(Header::Accept(rsip::headers::Accept::new("application/sdp")));
            self.respond(&key, response, now);
            return;
        }
        if !is_sdp(&request.headers, &request.body) {
            let response = self.response(&request, 488, Some("Offer Required"));
            self.respond(&key, response, now);
            return;
        }
        let offer = match Sdp::parse(&request.body) {
            Ok(sdp) if sdp.streams().iter().any(|s| s.is_active()) => sdp,
            _ => {
                self.reply(&key, &request, 488, now);
                return;
            }
        };
        let Some((target, peer, route, policy)) = self.resolve_target(&key, &request, now, store) else { return };

        let (tag_a, tag_b, call_id_b) = (self.random.tag(), self.random.tag(), self.random.call_id());
        let (Some(a_call_id), Some(a_from), Some(a_to)) =
            (call_id(&request.headers), from_value(&request.headers), to_value(&request.headers))
        else {
            self.reply(&key, &request, 400, now);
            return;
        };
        let a = Dialog {
            call_id: a_call_id.to_owned(),
            local: format!("{};tag={tag_a}", a_to.trim()),
            remote: a_from.trim().to_owned(),
            target: contact_uri(&request.headers).unwrap_or_else(|| uri_of(a_from).to_owned()),
            peer: source,
            route: record_route(&request.headers),
            cseq: 0,
        };
        let b_from = match policy {
            CallerIdPolicy::Strip => "\"Anonymous\" <sip:anonymous@anonymous.invalid>".to_owned(),
            _ => without_tag(a_from.trim()),
        };
        let b = Dialog {
            call_id: format!("{call_id_b}-b2b"),
            local: format!("{b_from};tag={tag_b}"),
            remote: format!("<{target}>"),
            target,
            peer,
            route,
            cseq: 0,
        };
        let active = offer.streams().iter().map(|s| s.is_active()).collect();
        let offer_text = String::from_utf8_lossy(&request.body).into_owned();

        let id = self.calls.next_id;
        self.calls.next_id += 1;
        self.stats.calls_started += 1;
        self.reply(&key, &request, 100, now);
        self.calls.by_call_id.insert(a.call_id.clone(), (id, Side::A));
        self.calls.by_call_id.insert(b.call_id.clone(), (id, Side::B));
        self.calls.by_invite.insert(key.clone(), id);
        let policy_media = self.config.codec_policy.clone();
        self.media_request(id, MediaRequest::Allocate { call_id: a.call_id.clone(), offer: offer_text, active, policy: policy_media });
        self.calls.calls.insert(
            id,
            Call {
                state: State::Allocating,
                a,
                b,
                invite_a: request,
                invite_a_key: key,
                invite_b: None,
                media: None,
                offer_legs: Vec::new(),
                negotiating: false,
                forwards: VecDeque::new(),
                relay_offer: None,
                policy,
                caller,
                b_provisional: false,
                cancel_on_provisional: false,
                ring_deadline: None,
                retransmit: None,
                ack_b: None,
                reinvite_pending: false,
            },
        );
    }

    /// Where an INVITE goes: (Request-URI, flow, Route set, caller-ID policy). Answers the caller itself
    /// (404, 480) and returns `None` when there is nowhere to go.
    fn resolve_target(
        &mut self,
        key: &TransactionKey,
        request: &Request,
        now: Now,
        store: &mut dyn Store,
    ) -> Option<(String, Peer, Vec<String>, CallerIdPolicy)> {
        let user = request.uri.user().unwrap_or_default().to_owned();
        let host = request.uri.host_with_port.host.to_string();
        let advertised_host = self.config.advertise.rsplit_once(':').map_or(self.config.advertise.as_str(), |(h, _)| h);
        let ours = self.config.is_local_domain(&host)
            || host == advertised_host
            || self.config.listen.iter().any(|l| l.addr.ip().to_string() == host);
        let local_domain = if self.config.is_local_domain(&host) {
            host.clone()
        } else {
            self.config.domains.first().cloned().unwrap_or_default()
        };
        if !ours {
            self.reply(key, request, 404, now);
            return None;
        }
        let subscriber = match store.subscriber(&user, &local_domain) {
            Ok(s) => s,
            Err(_) => {
                self.stats.store_errors += 1;
                self.reply(key, request, 500, now);
                return None;
            }
        };
        let (local_user, policy) = if subscriber.is_some() {
            (user, CallerIdPolicy::Passthrough)
        } else {
            match self.config.route_for(&user).cloned() {
                None => {
                    self.reply(key, request, 404, now);
                    return None;
                }
                Some(route) => match &route.destination {
                    Destination::Trunk(uri) => {
                        let rewritten = route.rewrite(&user);
                        let port = uri.host_with_port.port.map(|p| *p.value()).unwrap_or(5060);
                        let Ok(ip) = uri.host_with_port.host.to_string().parse() else {
                            self.reply(key, request, 502, now);
                            return None;
                        };
                        let addr = SocketAddr::new(ip, port);
                        let peer = match uri.transport() {
                            Some(rsip::Transport::Tcp) => Peer::tcp(addr),
                            _ => Peer::udp(addr),
                        };
                        return Some((format!("sip:{rewritten}@{addr}"), peer, Vec::new(), route.caller_id));
                    }
                    Destination::Local => (route.rewrite(&user), route.caller_id),
                },
            }
        };
        let aor = format!("{local_user}@{local_domain}");
        let Some(binding) = self.registrar.lookup(&aor, now.unix()).into_iter().next() else {
            self.reply(key, request, 480, now);
            return None;
        };
        Some((binding.contact, binding.flow, binding.path, policy))
    }

    pub(crate) fn on_media_reply(&mut self, id: u64, reply: MediaReply, now: Now) {
        match reply {
            MediaReply::Allocated(result) => self.on_allocated(id, result, now),
            MediaReply::Offered(result) => self.on_offered(id, result, now),
            MediaReply::Answered(result) => self.on_answered(id, result, now),
        }
    }

    fn on_allocated(&mut self, id: u64, result: Result<Allocation, MediaError>, now: Now) {
        match &result {
            Ok(_) => self.stats.media_allocations += 1,
            Err(error) => {
                self.stats.media_allocation_failures += 1;
                tracing::warn!(%error, media_plane = %self.config.media_grpc, "media allocation failed");
            }
        }
        let Some(call) = self.calls.calls.get_mut(&id) else {
            if let Ok(allocation) = result {
                self.media_request(id, allocation.release());
            }
            return;
        };
        match result {
            Err(error) => {
                if call.state == State::Allocating {
                    let (key, invite) = (call.invite_a_key.clone(), call.invite_a.clone());
                    // An offer the media plane cannot take (no usable codec or crypto) is the
                    // caller's to fix; anything else is ours.
                    let status = if matches!(error, MediaError::NotAcceptable(_)) { 488 } else { 503 };
                    self.reply(&key, &invite, status, now);
                    self.stats.calls_failed += 1;
                }
                self.finish(id);
            }
            Ok(allocation) => {
                call.offer_legs = allocation.legs(true);
                call.media = Some(allocation);
                if call.state != State::Allocating {
                    // The caller gave up while the media plane was working.
                    self.finish(id);
                    return;
                }
                self.send_invite_b(id, now);
            }
        }
    }

    /// The media plane rewrote an in-dialog offer: relay the request with it.
    fn on_offered(&mut self, id: u64, result: Result<String, MediaError>, now: Now) {
        let Some(call) = self.calls.calls.get_mut(&id) else { return };
        call.negotiating = false;
        let Some(RelayOffer { key, from, request, extra }) = call.relay_offer.take() else { return };
        match result {
            Ok(sdp) => {
                let method = request.method.to_string();
                let purpose = Purpose::Relay { origin: key, from, request: Box::new(request), offer: true };
                self.send_in_dialog(id, from.other(), &method, &extra, Some(("application/sdp", sdp.as_bytes())), purpose, now);
            }
            Err(error) => {
                tracing::info!(%error, "an in-dialog offer was refused by the media plane");
                if let Some(call) = self.calls.calls.get_mut(&id) {
                    call.reinvite_pending = false;
                }
                let status = if matches!(error, MediaError::NotAcceptable(_)) { 488 } else { 500 };
                self.reply(&key, &request, status, now);
            }
        }
        self.pump_forwards(id, now);
    }

    /// The media plane rewrote the answer at the head of the call's forwards.
    fn on_answered(&mut self, id: u64, result: Result<String, MediaError>, now: Now) {
        let Some(call) = self.calls.calls.get_mut(&id) else { return };
        call.negotiating = false;
        let Some(forward) = call.forwards.pop_front() else { return };
        let status = forward.response.status_code.code();
        match result {
            Ok(sdp) => self.deliver(id, forward, Some(sdp), now),
            Err(error) if status >= 200 => {
                // The answer cannot be used: the session the offerer asked for does not exist.
                tracing::info!(%error, "an answer was refused by the media plane");
                if forward.request.method == Method::Invite {
                    let out = response_for(&forward.request, 488, None, tag_of(&call.dialog(forward.to).local));
                    let initial = call.invite_a_key == forward.origin;
                    self.respond(&forward.origin, out, now);
                    if initial {
                        // The callee answered the call itself: it is hung up.
                        self.stats.calls_failed += 1;
                        self.send_in_dialog(id, Side::B, "BYE", "", None, Purpose::Bye, now);
                        self.finish(id);
                        return;
                    }
                } else {
                    self.reply(&forward.origin, &forward.request, 488, now);
                }
            }
            // A provisional response goes on without its answer.
            Err(_) => self.deliver(id, forward, None, now),
        }
        self.pump_forwards(id, now);
    }

    /// Queues a response for the other side; it goes once the answers before it (and its own)
    /// are back from the media plane.
    fn forward(&mut self, id: u64, forward: Forward, now: Now) {
        let Some(call) = self.calls.calls.get_mut(&id) else { return };
        call.forwards.push_back(forward);
        self.pump_forwards(id, now);
    }

    fn pump_forwards(&mut self, id: u64, now: Now) {
        loop {
            let Some(call) = self.calls.calls.get_mut(&id) else { return };
            if call.negotiating {
                return;
            }
            let Some(head) = call.forwards.front() else { return };
            let status = head.response.status_code.code();
            let has_answer = head.answers_offer && status < 300 && is_sdp(&head.response.headers, &head.response.body);
            if has_answer && call.media.is_some() {
                call.negotiating = true;
                let request = MediaRequest::Answer { legs: call.offer_legs.clone(), sdp: String::from_utf8_lossy(&head.response.body).into_owned() };
                self.media_request(id, request);
                return;
            }
            let Some(forward) = call.forwards.pop_front() else { return };
            self.deliver(id, forward, None, now);
        }
    }

    /// Sends a forwarded response on, with `answer` as its body (else any non-SDP body it had);
    /// a 2xx to an INVITE over UDP is retransmitted until its ACK.
    fn deliver(&mut self, id: u64, forward: Forward, answer: Option<String>, now: Now) {
        let Some(call) = self.calls.calls.get(&id) else { return };
        let status = forward.response.status_code.code();
        let out = self.response_to(call, forward.to, &forward.request, &forward.response, status, answer);
        let retransmit = (forward.request.method == Method::Invite && (200..300).contains(&status) && !call.dialog(forward.to).peer.is_reliable())
            .then(|| message::encode(&SipMessage::Response(out.clone())));
        self.respond(&forward.origin, out, now);
        if let (Some(payload), Some(call)) = (retransmit, self.calls.calls.get_mut(&id)) {
            let t1 = self.layer.config().t1;
            call.retransmit =
                Some(Retransmit { side: forward.to, payload, next: now.instant + t1, interval: t1, until: now.instant + 64 * t1 });
            self.calls.schedule(now.instant + t1, id);
        }
    }

    fn send_invite_b(&mut self, id: u64, now: Now) {
        let Some(call) = self.calls.calls.get_mut(&id) else { return };
        let Some(sdp) = call.media.as_ref().map(|m| m.offer_for_b.clone()) else { return };
        call.b.cseq = 1;
        let mut extra = String::new();
        let hops = message::max_forwards(&call.invite_a.headers).unwrap_or(70).saturating_sub(1);
        extra.push_str(&format!("Max-Forwards: {hops}\r\n"));
        extra.push_str(&format!("Contact: {}\r\n", our_contact(&self.config, &call.b.peer)));
        extra.push_str(&format!("Allow: {}\r\n", crate::service::ALLOW));
        let copied = ["P-Asserted-Identity", "Remote-Party-ID", "Privacy"];
        match call.policy {
            CallerIdPolicy::Passthrough => {
                for name in copied {
                    if let Some(v) = header(&call.invite_a.headers, name) {
                        extra.push_str(&format!("{name}: {v}\r\n"));
                    }
                }
            }
            CallerIdPolicy::Assert => {
                for name in ["Remote-Party-ID", "Privacy"] {
                    if let Some(v) = header(&call.invite_a.headers, name) {
                        extra.push_str(&format!("{name}: {v}\r\n"));
                    }
                }
                let asserted = match &call.caller {
                    Some(aor) => format!("<sip:{aor}>"),
                    None => format!("<{}>", uri_of(&call.a.remote)),
                };
                extra.push_str(&format!("P-Asserted-Identity: {asserted}\r\n"));
            }
            CallerIdPolicy::Strip => {}
        }
        let dialog = call.b.clone();
        let ring = now.instant + self.config.no_answer_timeout;
        let Some(request) = Self::build_request(&self.config, &mut self.random, "INVITE", &dialog, 1, &extra, Some(("application/sdp", sdp.as_bytes())))
        else {
            let (key, invite) = (call.invite_a_key.clone(), call.invite_a.clone());
            self.reply(&key, &invite, 500, now);
            self.finish(id);
            return;
        };
        call.invite_b = Some(request.clone());
        call.state = State::Calling;
        call.ring_deadline = Some(ring);
        self.calls.schedule(ring, id);
        if !self.send_client(id, request, dialog.peer, Purpose::Invite, now) {
            if let Some(call) = self.calls.calls.get(&id) {
                let (key, invite) = (call.invite_a_key.clone(), call.invite_a.clone());
                self.reply(&key, &invite, 500, now);
            }
            self.finish(id);
        }
    }

    // ---- responses ----

    pub(crate) fn on_response(&mut self, key: &TransactionKey, response: Response, now: Now) {
        let Some((id, purpose)) = self.calls.clients.get(key).cloned() else { return };
        if !self.calls.calls.contains_key(&id) {
            // The call is over; a late 2xx to our INVITE still needs ACK and BYE.
            return;
        }
        match purpose {
            Purpose::Invite => self.on_invite_response(id, response, now),
            Purpose::Relay { origin, from, request, offer } => self.on_relay_response(id, &origin, from, &request, offer, response, now),
            Purpose::Cancel | Purpose::Bye => {}
        }
    }

    /// Our response `to` that side's `request`, from the other side's `response`, with `status`
    /// and `answer` (the media plane's) as its SDP.
    fn response_to(&self, call: &Call, to: Side, request: &Request, response: &Response, status: u16, answer: Option<String>) -> Response {
        let tag = tag_of(&call.dialog(to).local).map(str::to_owned);
        let reason = reason_of(response);
        let mut out = response_for(request, status, Some(&reason), tag.as_deref());
        if (101..300).contains(&status) {
            out.headers.push(Header::Contact(rsip::headers::Contact::new(our_contact(&self.config, &call.dialog(to).peer))));
            // §12.1.1: the UAS copies the request's Record-Route into dialog-forming responses so
            // the proxies that asked stay on the path of the caller's in-dialog requests.
            if request.method == rsip::Method::Invite {
                for h in request.headers.iter() {
                    if let Header::RecordRoute(rr) = h {
                        out.headers.push(Header::RecordRoute(rr.clone()));
                    }
                }
            }
        }
        if let Some(body) = answer {
            out.headers.push(Header::ContentType(rsip::headers::ContentType::new("application/sdp")));
            out.body = body.into_bytes();
        } else if !response.body.is_empty() && !is_sdp(&response.headers, &response.body) {
            if let Some(ctype) = content_type(&response.headers) {
                out.headers.push(Header::ContentType(rsip::headers::ContentType::new(ctype)));
                out.body = response.body.clone();
            }
        }
        out
    }

    fn on_invite_response(&mut self, id: u64, response: Response, now: Now) {
        let status = response.status_code.code();
        let Some(call) = self.calls.calls.get_mut(&id) else { return };
        match status {
            100 => {}
            101..=199 => {
                call.b_provisional = true;
                if call.state == State::Cancelled {
                    if std::mem::take(&mut call.cancel_on_provisional) {
                        self.cancel_b(id, now);
                    }
                    return;
                }
                let forward =
                    Forward { to: Side::A, origin: call.invite_a_key.clone(), request: call.invite_a.clone(), response, answers_offer: true };
                self.forward(id, forward, now);
            }
            200..=299 => {
                if let Some(ack) = call.ack_b.clone() {
                    // B retransmitted its 2xx: our ACK was lost.
                    self.transmits.push_back(Outgoing { destination: call.b.peer, payload: ack, retransmission: true });
                    return;
                }
                if let Some(to) = to_value(&response.headers) {
                    call.b.remote = to.trim().to_owned();
                }
                if let Some(target) = contact_uri(&response.headers) {
                    call.b.target = target;
                }
                let recorded = record_route(&response.headers);
                if !recorded.is_empty() {
                    call.b.route = recorded.into_iter().rev().collect();
                }
                let dialog = call.b.clone();
                let cseq = message::cseq(&response.headers).map(|c| c.seq).unwrap_or(1);
                if let Some(ack) = Self::build_request(&self.config, &mut self.random, "ACK", &dialog, cseq, "", None) {
                    let payload = message::encode(&SipMessage::Request(ack));
                    self.transmits.push_back(Outgoing { destination: dialog.peer, payload: payload.clone(), retransmission: false });
                    if let Some(call) = self.calls.calls.get_mut(&id) {
                        call.ack_b = Some(payload);
                    }
                }
                let Some(call) = self.calls.calls.get_mut(&id) else { return };
                if call.state == State::Cancelled {
                    // Answered after the caller gave up: hang B up.
                    self.send_in_dialog(id, Side::B, "BYE", "", None, Purpose::Bye, now);
                    self.finish(id);
                    return;
                }
                call.state = State::Answered;
                call.ring_deadline = None;
                self.stats.calls_answered += 1;
                let forward =
                    Forward { to: Side::A, origin: call.invite_a_key.clone(), request: call.invite_a.clone(), response, answers_offer: true };
                self.forward(id, forward, now);
            }
            _ => {
                if call.state != State::Cancelled {
                    let (key, invite) = (call.invite_a_key.clone(), call.invite_a.clone());
                    let out = response_for(
                        &invite,
                        caller_status(status),
                        Some(&reason_of(&response)),
                        tag_of(&call.a.local),
                    );
                    self.respond(&key, out, now);
                    self.stats.calls_failed += 1;
                }
                self.finish(id);
            }
        }
    }

    fn on_relay_response(
        &mut self,
        id: u64,
        origin: &TransactionKey,
        from: Side,
        request: &Request,
        offer: bool,
        response: Response,
        now: Now,
    ) {
        let status = response.status_code.code();
        if status < 200 {
            return;
        }
        let to = from.other();
        let is_invite = request.method == Method::Invite;
        if is_invite && status < 300 {
            if let Some(call) = self.calls.calls.get(&id) {
                let dialog = call.dialog(to).clone();
                let cseq = message::cseq(&response.headers).map(|c| c.seq).unwrap_or(1);
                if let Some(ack) = Self::build_request(&self.config, &mut self.random, "ACK", &dialog, cseq, "", None) {
                    self.layer.send_stateless(&SipMessage::Request(ack), dialog.peer);
                }
            }
        }
        let Some(call) = self.calls.calls.get_mut(&id) else { return };
        if is_invite {
            call.reinvite_pending = false;
        }
        let forward = Forward { to: from, origin: origin.clone(), request: request.clone(), response, answers_offer: offer };
        self.forward(id, forward, now);
    }

    pub(crate) fn on_stray_response(&mut self, response: &Response, _source: Peer) {
        // A 2xx retransmission after our INVITE transaction ended: re-send the ACK.
        if !(200..300).contains(&response.status_code.code()) {
            return;
        }
        let Some(&(id, Side::B)) = call_id(&response.headers).and_then(|c| self.calls.by_call_id.get(c)) else { return };
        if let Some(call) = self.calls.calls.get(&id) {
            if let Some(ack) = call.ack_b.clone() {
                self.transmits.push_back(Outgoing { destination: call.b.peer, payload: ack, retransmission: true });
            }
        }
    }

    pub(crate) fn on_transaction_failed(&mut self, key: &TransactionKey, role: Role, now: Now) {
        if role != Role::Client {
            return;
        }
        let Some((id, purpose)) = self.calls.clients.get(key).cloned() else { return };
        match purpose {
            Purpose::Invite => {
                let Some(call) = self.calls.calls.get(&id) else { return };
                if call.state == State::Calling {
                    let (key, invite) = (call.invite_a_key.clone(), call.invite_a.clone());
                    self.reply(&key, &invite, 408, now);
                    self.stats.calls_failed += 1;
                }
                self.finish(id);
            }
            Purpose::Relay { origin, request, .. } => {
                if request.method == Method::Invite {
                    if let Some(call) = self.calls.calls.get_mut(&id) {
                        call.reinvite_pending = false;
                    }
                }
                self.reply(&origin, &request, 408, now);
            }
            Purpose::Cancel | Purpose::Bye => {}
        }
    }

    pub(crate) fn on_transaction_terminated(&mut self, key: &TransactionKey, role: Role) {
        if role == Role::Client {
            self.calls.clients.remove(key);
        }
    }

    // ---- requests from the caller or callee ----

    pub(crate) fn on_caller_cancel(&mut self, invite: &TransactionKey, now: Now) {
        let Some(&id) = self.calls.by_invite.get(invite) else { return };
        if self.layer.invite_server_state(invite) != Some(sip_core::transaction::InviteServerState::Proceeding) {
            return;
        }
        let Some(call) = self.calls.calls.get(&id) else { return };
        if !matches!(call.state, State::Allocating | State::Calling) {
            return;
        }
        let (key, request) = (call.invite_a_key.clone(), call.invite_a.clone());
        self.reply(&key, &request, 487, now);
        self.stats.calls_cancelled += 1;
        self.abandon(id, now);
    }

    /// The caller will not get this call: cancel B (now or on its first provisional), release
    /// media now, keep the call until B's final response.
    fn abandon(&mut self, id: u64, now: Now) {
        let Some(call) = self.calls.calls.get_mut(&id) else { return };
        let was = call.state;
        call.state = State::Cancelled;
        call.ring_deadline = None;
        if let Some(allocation) = call.media.take() {
            self.media_request(id, allocation.release());
        }
        match was {
            State::Allocating => {} // the allocation reply finishes the call
            _ => {
                let Some(call) = self.calls.calls.get_mut(&id) else { return };
                if call.b_provisional {
                    self.cancel_b(id, now);
                } else {
                    call.cancel_on_provisional = true;
                }
            }
        }
    }

    fn cancel_b(&mut self, id: u64, now: Now) {
        let Some(call) = self.calls.calls.get(&id) else { return };
        let Some(invite) = &call.invite_b else { return };
        let (cancel, peer) = (cancel_for(invite), call.b.peer);
        self.send_client(id, cancel, peer, Purpose::Cancel, now);
    }

    pub(crate) fn on_ack(&mut self, request: &Request, _now: Now) {
        let Some(&(id, side)) = call_id(&request.headers).and_then(|c| self.calls.by_call_id.get(c)) else { return };
        let Some(call) = self.calls.calls.get_mut(&id) else { return };
        if call.retransmit.as_ref().is_some_and(|r| r.side == side) {
            call.retransmit = None;
        }
        if side == Side::A && call.state == State::Answered {
            call.state = State::Confirmed;
        }
    }

    pub(crate) fn on_in_dialog(&mut self, key: TransactionKey, request: Request, now: Now) {
        let Some(&(id, side)) = call_id(&request.headers).and_then(|c| self.calls.by_call_id.get(c)) else {
            self.stats.no_dialog += 1;
            self.reply(&key, &request, 481, now);
            return;
        };
        let Some(call) = self.calls.calls.get(&id) else {
            self.reply(&key, &request, 481, now);
            return;
        };
        let established = matches!(call.state, State::Answered | State::Confirmed);
        let (state, reinvite_pending) = (call.state, call.reinvite_pending);
        let (invite_key, invite) = (call.invite_a_key.clone(), call.invite_a.clone());
        match request.method {
            Method::Bye => {
                self.reply(&key, &request, 200, now);
                if established {
                    self.stats.calls_completed += 1;
                    self.send_in_dialog(id, side.other(), "BYE", "", None, Purpose::Bye, now);
                    self.finish(id);
                } else if side == Side::B {
                    // The callee hung up before answering.
                    let key = invite_key;
                    if state != State::Cancelled {
                        self.reply(&key, &invite, 480, now);
                        self.stats.calls_failed += 1;
                    }
                    self.finish(id);
                }
            }
            _ if !established => self.reply(&key, &request, 491, now),
            Method::Invite if reinvite_pending => self.reply(&key, &request, 491, now),
            _ => {
                let has_sdp = is_sdp(&request.headers, &request.body);
                if request.method == Method::Invite && !has_sdp {
                    let response = response_for(&request, 488, Some("Offer Required"), None);
                    self.respond(&key, response, now);
                    return;
                }
                if has_sdp && Sdp::parse(&request.body).is_err() {
                    self.reply(&key, &request, 488, now);
                    return;
                }
                let body = if has_sdp {
                    None
                } else {
                    content_type(&request.headers).map(|c| (c, request.body.clone())).filter(|(_, b)| !b.is_empty())
                };
                let method = request.method.to_string();
                let mut extra = String::new();
                if request.method == Method::Invite {
                    if let Some(call) = self.calls.calls.get_mut(&id) {
                        call.reinvite_pending = true;
                        extra = format!("Contact: {}\r\n", our_contact(&self.config, &call.dialog(side.other()).peer));
                    }
                }
                for name in ["Event", "Subscription-State", "Info-Package", "Reason"] {
                    if let Some(v) = header(&request.headers, name) {
                        extra.push_str(&format!("{name}: {v}\r\n"));
                    }
                }
                if has_sdp {
                    // The offer goes through the media plane first; `on_offered` relays it.
                    let Some(call) = self.calls.calls.get_mut(&id) else { return };
                    let Some(legs) = call.media.as_ref().map(|m| m.legs(side == Side::A)) else {
                        self.reply(&key, &request, 488, now);
                        return;
                    };
                    if call.negotiating || call.relay_offer.is_some() {
                        self.reply(&key, &request, 491, now);
                        return;
                    }
                    call.offer_legs.clone_from(&legs);
                    call.negotiating = true;
                    let sdp = String::from_utf8_lossy(&request.body).into_owned();
                    call.relay_offer = Some(RelayOffer { key, from: side, request, extra });
                    let policy = self.config.codec_policy.clone();
                    self.media_request(id, MediaRequest::Offer { legs, sdp, policy });
                    return;
                }
                let purpose = Purpose::Relay { origin: key, from: side, request: Box::new(request), offer: false };
                self.send_in_dialog(
                    id,
                    side.other(),
                    &method,
                    &extra,
                    body.as_ref().map(|(c, b)| (c.as_str(), b.as_slice())),
                    purpose,
                    now,
                );
            }
        }
    }

    // ---- timers and teardown ----

    pub(crate) fn on_call_timers(&mut self, now: Now) {
        let t2 = self.layer.config().t2;
        let mut no_answer = Vec::new();
        let mut no_ack = Vec::new();
        for id in self.calls.due(now.instant) {
            let Some(call) = self.calls.calls.get_mut(&id) else { continue };
            if call.ring_deadline.is_some_and(|d| d <= now.instant) {
                call.ring_deadline = None;
                no_answer.push(id);
            }
            if let Some(r) = &mut call.retransmit {
                if r.next <= now.instant {
                    if now.instant >= r.until {
                        call.retransmit = None;
                        no_ack.push(id);
                    } else {
                        let peer = if r.side == Side::A { call.a.peer } else { call.b.peer };
                        self.transmits.push_back(Outgoing { destination: peer, payload: r.payload.clone(), retransmission: true });
                        r.interval = (r.interval * 2).min(t2);
                        r.next = now.instant + r.interval;
                        self.calls.timers.push(Reverse((r.next, id)));
                    }
                }
            }
        }
        for id in no_answer {
            let Some(call) = self.calls.calls.get(&id) else { continue };
            if call.state != State::Calling {
                continue;
            }
            let (key, invite) = (call.invite_a_key.clone(), call.invite_a.clone());
            self.reply(&key, &invite, 408, now);
            self.stats.calls_failed += 1;
            self.abandon(id, now);
        }
        for id in no_ack {
            // RFC 3261 §13.3.1.4: no ACK for our 2xx within 64·T1 — end the session on both sides.
            let Some(call) = self.calls.calls.get(&id) else { continue };
            if matches!(call.state, State::Answered | State::Confirmed) {
                self.send_in_dialog(id, Side::A, "BYE", "", None, Purpose::Bye, now);
                self.send_in_dialog(id, Side::B, "BYE", "", None, Purpose::Bye, now);
                self.finish(id);
            }
        }
    }

    /// Removes call `id`, releasing its media (once).
    fn finish(&mut self, id: u64) {
        let Some(mut call) = self.calls.calls.remove(&id) else { return };
        if let Some(allocation) = call.media.take() {
            self.media_request(id, allocation.release());
        }
        self.calls.by_call_id.remove(&call.a.call_id);
        self.calls.by_call_id.remove(&call.b.call_id);
        self.calls.by_invite.remove(&call.invite_a_key);
    }
}
