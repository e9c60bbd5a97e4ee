//! The RFC 3261 §17 transaction layer, as sans-IO state machines.
//!
//! ```text
//!   TU (registrar, B2BUA)
//!     │ start_client(req, dest)      ▲ poll_event(): Request / Ack / Response / Timeout /
//!     │ send_response(key, resp)     │               TransportError / Terminated / Stray
//!     ▼                              │
//!   TransactionLayer ── routes by (branch, method, sent-by) ──┐
//!     ├─ InviteClient      Calling → Proceeding → Completed / Accepted → Terminated
//!     ├─ NonInviteClient   Trying → Proceeding → Completed → Terminated
//!     ├─ InviteServer      Proceeding → Completed → Confirmed / Accepted → Terminated
//!     └─ NonInviteServer   Trying → Proceeding → Completed → Terminated
//!     ▲ handle_message(msg, source, now)          │ poll_transmit() → Outgoing { destination, payload }
//!     │ handle_timeout(now)                       ▼ poll_timeout() → next deadline
//!   driver (UDP/TCP sockets, a clock) or the virtual-time harness
//! ```
//!
//! Nothing here reads a clock or touches a socket: every input carries `now`, every output is
//! pulled with a `poll_*` method (quinn-proto's shape). Each state machine can be driven on its
//! own; [`TransactionLayer`] owns many and routes messages to them.
//!
//! Timers (defaults: T1 = 500 ms, T2 = 4 s, T4 = 5 s; [`TimerConfig`]):
//!
//! | timer | machine | value | on a reliable transport |
//! | --- | --- | --- | --- |
//! | A | INVITE client | retransmit at T1, 2·T1, 4·T1, … (doubling, uncapped) | not used |
//! | B | INVITE client | 64·T1 in Calling → Timeout | same |
//! | D | INVITE client | 32 s in Completed (absorbs final-response retransmits) | 0 |
//! | E | non-INVITE client | retransmit at T1, 2·T1, … capped at T2; T2 once Proceeding | not used |
//! | F | non-INVITE client | 64·T1 → Timeout | same |
//! | K | non-INVITE client | T4 in Completed | 0 |
//! | G | INVITE server | retransmit final ≥ 300 at T1, 2·T1, … capped at T2 | not used |
//! | H | INVITE server | 64·T1 waiting for ACK → Timeout | same |
//! | I | INVITE server | T4 in Confirmed (absorbs ACK retransmits) | 0 |
//! | J | non-INVITE server | 64·T1 in Completed (answers request retransmits) | 0 |
//! | L, M | INVITE server / client | 64·T1 in Accepted (RFC 6026) | same |
//! | 100 | INVITE server | 100 Trying if the TU has not answered in 200 ms | same |
//!
//! Choices beyond RFC 3261:
//! - **RFC 6026 "Accepted" state** on both INVITE machines: a 2xx no longer destroys the
//!   transaction at once. The server absorbs INVITE retransmissions for 64·T1 (so the TU never
//!   sees a retransmitted INVITE as a new request) and passes 2xx retransmissions from the TU and
//!   matching ACKs; the client passes every 2xx up (forked 2xx, retransmissions) for 64·T1.
//! - **A retransmitted INVITE before the TU answered** gets a 100 Trying at once instead of waiting
//!   for the 200 ms timer (§17.2.1 only says to resend the last provisional, of which there is none).
//! - **A non-INVITE server transaction the TU never answers** gives up after 64·T1 with a
//!   Timeout event, by when the client's Timer F has fired; RFC 3261 would keep it forever.
//! - ACKs for 2xx and responses matching no transaction are not dropped but reported as
//!   [`LayerEvent::Stray`]: the TU needs them (§13.3.1.4, §13.2.2.4).
//! - Requests whose top `Via` branch lacks the `z9hG4bK` cookie are refused by the parser, so the
//!   RFC 2543 matching of §17.2.3 is not implemented.

mod client_invite;
mod client_non_invite;
mod layer;
mod server_invite;
mod server_non_invite;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use rsip::headers::{self, Header, UntypedHeader};
use rsip::{Method, Request, Response, SipMessage};

use crate::message::{self, ParseError};

pub use client_invite::{InviteClient, InviteClientState};
pub use client_non_invite::{NonInviteClient, NonInviteClientState};
pub use layer::{LayerEvent, LayerStats, TransactionLayer};
pub use server_invite::{InviteServer, InviteServerState};
pub use server_non_invite::{NonInviteServer, NonInviteServerState};

/// The RFC 3261 timer base values, validated once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimerConfig {
    /// RTT estimate (`t1`, default 500 ms): first retransmission interval; 64·T1 is the
    /// transaction timeout (Timers B, F, H, J, L, M).
    pub t1: Duration,
    /// Cap on non-INVITE and final-response retransmission intervals (`t2`, default 4 s).
    pub t2: Duration,
    /// How long the network may hold a message (`t4`, default 5 s): Timers I and K.
    pub t4: Duration,
    /// Timer D on unreliable transports (`timer_d`, default 32 s; RFC 3261 asks for at least 32 s).
    pub timer_d: Duration,
    /// How long an INVITE server transaction waits for the TU before sending 100 Trying
    /// (`trying_delay`, default 200 ms, §17.2.1).
    pub trying_delay: Duration,
}

impl Default for TimerConfig {
    fn default() -> Self {
        TimerConfig {
            t1: Duration::from_millis(500),
            t2: Duration::from_secs(4),
            t4: Duration::from_secs(5),
            timer_d: Duration::from_secs(32),
            trying_delay: Duration::from_millis(200),
        }
    }
}

/// A [`TimerConfig`] value that cannot work; names the key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// `t1` must be positive: every retransmission interval is a multiple of it.
    #[error("t1 must be greater than zero")]
    ZeroT1,
    /// `t2` below `t1` would shrink retransmission intervals.
    #[error("t2 ({t2:?}) must not be less than t1 ({t1:?})")]
    T2BelowT1 {
        /// Configured T1.
        t1: Duration,
        /// Configured T2.
        t2: Duration,
    },
    /// `t1` so large that 64·T1 overflows.
    #[error("t1 ({0:?}) is too large")]
    T1TooLarge(Duration),
}

impl TimerConfig {
    /// Checks the values; call once when loading configuration.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.t1.is_zero() {
            return Err(ConfigError::ZeroT1);
        }
        if self.t2 < self.t1 {
            return Err(ConfigError::T2BelowT1 { t1: self.t1, t2: self.t2 });
        }
        if self.t1 > Duration::from_secs(3600) {
            return Err(ConfigError::T1TooLarge(self.t1));
        }
        Ok(())
    }

    /// 64·T1: Timers B, F, H, J (unreliable), L and M.
    pub fn timeout(&self) -> Duration {
        self.t1.saturating_mul(64)
    }
}

/// Where a message goes or came from: a transport and a socket address (for a stream transport,
/// the address identifies the connection).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Peer {
    /// UDP, TCP, TLS, …
    pub transport: rsip::Transport,
    /// Remote address.
    pub addr: SocketAddr,
}

impl Peer {
    /// A UDP peer.
    pub fn udp(addr: SocketAddr) -> Self {
        Peer { transport: rsip::Transport::Udp, addr }
    }

    /// A TCP peer.
    pub fn tcp(addr: SocketAddr) -> Self {
        Peer { transport: rsip::Transport::Tcp, addr }
    }

    /// A TLS peer.
    pub fn tls(addr: SocketAddr) -> Self {
        Peer { transport: rsip::Transport::Tls, addr }
    }

    /// Whether the transport delivers reliably, which turns retransmissions off and Timers D, I,
    /// J and K to zero.
    pub fn is_reliable(&self) -> bool {
        !matches!(self.transport, rsip::Transport::Udp)
    }
}

/// A message for the driver to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outgoing {
    /// Where to send it.
    pub destination: Peer,
    /// The encoded message (cheap to clone: retransmissions share it).
    pub payload: Bytes,
    /// Whether this is a retransmission of something already sent (for counters).
    pub retransmission: bool,
}

/// What a single transaction reports to its TU.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TransactionEvent {
    /// Server: the request that created the transaction (reported once).
    Request(Request),
    /// INVITE server in Accepted state: an ACK that matched the transaction.
    Ack(Request),
    /// Client: a response the TU must see (provisional, final, and every 2xx while Accepted).
    Response(Response),
    /// Timer B or F (no final response), Timer H (no ACK), or the TU never answered.
    Timeout,
    /// The transport reported it could not deliver.
    TransportError,
    /// The transaction is over; nothing more comes from it.
    Terminated,
}

/// Which side of a transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// Created by sending a request.
    Client,
    /// Created by receiving one.
    Server,
}

/// Misuse of the transaction API by the TU, or a TU-built message the layer cannot use.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TransactionError {
    // ---- the TU's message ----
    /// The request or response lacks what matching needs (top Via branch with cookie, CSeq).
    #[error("message cannot identify a transaction: {0}")]
    Unidentifiable(#[from] ParseError),
    /// ACK never creates a client transaction (§17.1.1.3: the INVITE client transaction sends
    /// ACK for non-2xx; the TU sends ACK for 2xx statelessly).
    #[error("ACK is not sent through a client transaction")]
    AckNeedsNoTransaction,
    /// The machine was built for another method.
    #[error("{machine} transaction cannot carry {method}")]
    WrongMethod {
        /// Which state machine.
        machine: &'static str,
        /// The request's method.
        method: Method,
    },
    /// A status code outside 100–699.
    #[error("status code {0} is not 100-699")]
    BadStatus(u16),

    // ---- the TU's timing ----
    /// The response is not allowed in the transaction's state (e.g. a second final response).
    #[error("cannot send a {status} response in state {state}")]
    InvalidState {
        /// The status the TU tried to send.
        status: u16,
        /// The state the transaction is in.
        state: &'static str,
    },

    // ---- the TU's bookkeeping ----
    /// No live transaction has that key.
    #[error("no such transaction")]
    UnknownTransaction,
    /// A client transaction with that branch and method exists already.
    #[error("a client transaction with this branch and method already exists")]
    DuplicateBranch,
}

/// The host and port of a `Via` sent-by, normalised for comparison (host lower-cased, default
/// port filled in).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SentBy {
    /// Host name or address, lower case.
    pub host: String,
    /// Port, defaulted to 5060 (5061 for TLS) when the Via omits it.
    pub port: u16,
}

/// Identifies a transaction (RFC 3261 §17.1.3, §17.2.3): top-Via branch, method (an ACK maps to
/// the INVITE it acknowledges) and top-Via sent-by.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransactionKey {
    /// The top Via's branch parameter.
    pub branch: String,
    /// INVITE for INVITE and ACK, otherwise the method itself.
    pub method: Method,
    /// The top Via's sent-by.
    pub sent_by: SentBy,
}

impl std::hash::Hash for TransactionKey {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.branch.hash(state);
        method_index(self.method).hash(state);
        self.sent_by.hash(state);
    }
}

/// A stable small number per method (rsip's `Method` does not implement `Hash`).
pub(crate) fn method_index(method: Method) -> u8 {
    match method {
        Method::Ack => 0,
        Method::Bye => 1,
        Method::Cancel => 2,
        Method::Info => 3,
        Method::Invite => 4,
        Method::Message => 5,
        Method::Notify => 6,
        Method::Options => 7,
        Method::PRack => 8,
        Method::Publish => 9,
        Method::Refer => 10,
        Method::Register => 11,
        Method::Subscribe => 12,
        Method::Update => 13,
    }
}

impl TransactionKey {
    /// The key of the server transaction a request belongs to (ACK → its INVITE's).
    ///
    /// A request whose top Via branch lacks the magic cookie (or is only the cookie) comes from
    /// an RFC 2543 peer: its key's branch is made from what RFC 3261 §17.2.3 matches such
    /// requests by: Request-URI, From tag, Call-ID, CSeq number, top Via, and the To tag except
    /// for INVITE/ACK/CANCEL (an ACK carries the To tag of our response, which its INVITE had
    /// not). Such branches start with `2543;`, which no cookie branch can.
    pub fn for_request(request: &Request) -> Result<Self, ParseError> {
        let method = match request.method {
            Method::Ack => Method::Invite,
            other => other,
        };
        match Self::from_via(&request.headers, method) {
            Err(ParseError::BranchWithoutCookie) => {
                let mut key = Self::from_via_with_branch(&request.headers, method, String::new())?;
                let headers = &request.headers;
                let via = headers
                    .iter()
                    .find_map(|h| match h {
                        rsip::Header::Via(v) => Some(message::split_list(v.value()).next().unwrap_or_default()),
                        _ => None,
                    })
                    .unwrap_or_default();
                let from_tag = message::from_value(headers).and_then(message::tag_of).unwrap_or_default();
                let to_tag = match method {
                    Method::Invite | Method::Cancel => "",
                    _ => message::to_value(headers).and_then(message::tag_of).unwrap_or_default(),
                };
                let seq = message::cseq(headers)?.seq;
                let call_id = message::call_id(headers).unwrap_or_default();
                key.branch = format!("2543;{};{from_tag};{to_tag};{call_id};{seq};{via}", request.uri);
                Ok(key)
            }
            other => other,
        }
    }

    /// The key of the client transaction a response belongs to (method from CSeq).
    pub fn for_response(response: &Response) -> Result<Self, ParseError> {
        let method = message::cseq(&response.headers)?.method;
        Self::from_via(&response.headers, method)
    }

    fn from_via(headers: &rsip::Headers, method: Method) -> Result<Self, ParseError> {
        let via = message::top_via(headers)?;
        let branch = via
            .branch()
            .map(|b| b.value().to_owned())
            .filter(|b| b.starts_with(message::BRANCH_COOKIE) && b.len() > message::BRANCH_COOKIE.len())
            .ok_or(ParseError::BranchWithoutCookie)?;
        Self::from_via_with_branch(headers, method, branch)
    }

    fn from_via_with_branch(headers: &rsip::Headers, method: Method, branch: String) -> Result<Self, ParseError> {
        let via = message::top_via(headers)?;
        let hp = &via.uri.host_with_port;
        let default_port = match via.transport {
            rsip::Transport::Tls | rsip::Transport::TlsSctp | rsip::Transport::Wss => 5061,
            _ => 5060,
        };
        let sent_by = SentBy { host: hp.host.to_string().to_ascii_lowercase(), port: hp.port.map(|p| *p.value()).unwrap_or(default_port) };
        Ok(TransactionKey { branch, method, sent_by })
    }

    /// For a CANCEL's key, the key of the INVITE server transaction it cancels (§9.2).
    pub fn cancelled_invite(&self) -> Option<TransactionKey> {
        (self.method == Method::Cancel).then(|| TransactionKey { method: Method::Invite, ..self.clone() })
    }
}

/// Where a server transaction sends its responses (RFC 3261 §18.2.2 with RFC 3581 §4): back over
/// the connection on reliable transports; on UDP to the packet's source address, at the source
/// port if the top Via asked for `rport`, else at the sent-by port (default 5060).
pub fn response_destination(request: &Request, source: Peer) -> Peer {
    if source.is_reliable() {
        return source;
    }
    let Ok(via) = message::top_via(&request.headers) else { return source };
    let rport = via.params.iter().any(|p| matches!(p, rsip::Param::Other(name, _) if name.value().eq_ignore_ascii_case("rport")));
    if rport {
        return source;
    }
    let port = via.uri.host_with_port.port.map(|p| *p.value()).unwrap_or(5060);
    Peer { transport: source.transport, addr: SocketAddr::new(source.addr.ip(), port) }
}

/// The ACK an INVITE client transaction sends for a non-2xx final response (§17.1.1.3): the
/// INVITE's Request-URI, top Via, Route, From and Call-ID, and the response's To (with its tag).
pub fn ack_for_non_2xx(invite: &Request, response: &Response) -> Request {
    let to = response.headers.iter().find(|h| matches!(h, Header::To(_)));
    like_invite(invite, Method::Ack, |h| matches!(h, Header::Route(_) | Header::From(_) | Header::CallId(_)), to)
}

/// The CANCEL for an INVITE (§9.1): same Request-URI, Call-ID, From, To, CSeq number and top Via
/// (so the same branch), and the INVITE's Route headers. Send it through its own client
/// transaction, and only once a provisional response has arrived.
pub fn cancel_for(invite: &Request) -> Request {
    let copied = |h: &Header| matches!(h, Header::Route(_) | Header::From(_) | Header::To(_) | Header::CallId(_));
    like_invite(invite, Method::Cancel, copied, None)
}

/// A bodiless `method` request built like `invite` (§9.1, §17.1.1.3): its Request-URI and top Via
/// (so the same branch), the INVITE headers `copied` picks (in the INVITE's order), then `extra`,
/// a CSeq with the INVITE's number and `method`, and Max-Forwards 70.
fn like_invite(invite: &Request, method: Method, copied: impl Fn(&Header) -> bool, extra: Option<&Header>) -> Request {
    let mut out: Vec<Header> = Vec::new();
    if let Some(via) = invite.headers.iter().find_map(|h| match h {
        Header::Via(v) => Some(v),
        _ => None,
    }) {
        out.push(Header::Via(headers::Via::new(top_list_value(via.value()))));
    }
    out.extend(invite.headers.iter().filter(|h| copied(h)).cloned());
    out.extend(extra.cloned());
    let seq = message::cseq(&invite.headers).map(|c| c.seq).unwrap_or(0);
    out.push(Header::CSeq(headers::CSeq::new(format!("{seq} {method}"))));
    out.push(Header::MaxForwards(headers::MaxForwards::new("70")));
    Request { method, uri: invite.uri.clone(), version: rsip::Version::V2, headers: out.into(), body: Vec::new() }
}

/// The first element of a comma-separated header value.
fn top_list_value(value: &str) -> String {
    // Via values contain no quoted commas in practice, but reuse the parser's careful split.
    let probe = headers::Via::new(value);
    let mut h = rsip::Headers::default();
    h.push(Header::Via(probe));
    match message::top_via(&h) {
        Ok(via) => via.to_string(),
        Err(_) => value.to_owned(),
    }
}

/// Encodes a request for the wire.
fn encode_request(request: &Request) -> Bytes {
    message::encode(&SipMessage::Request(request.clone()))
}

/// Encodes a response for the wire.
fn encode_response(response: &Response) -> Bytes {
    message::encode(&SipMessage::Response(response.clone()))
}

/// Queued outputs of one state machine, pulled by its `poll_transmit` and `poll_event`.
///
/// A queue gives its buffer back once it has been drained: a transaction lives on after its
/// last output (Timer J: 32 s), and thousands of them alive at once each kept a buffer of four
/// event slots (~200 bytes each) and four transmit slots long after they left. The price is one
/// allocation per later output (a retransmission, a response), small next to encoding it.
#[derive(Debug, Default)]
struct Outbox {
    transmits: std::collections::VecDeque<Outgoing>,
    events: std::collections::VecDeque<TransactionEvent>,
}

impl Outbox {
    fn send(&mut self, destination: Peer, payload: &Bytes, retransmission: bool) {
        self.transmits.push_back(Outgoing { destination, payload: payload.clone(), retransmission });
    }

    fn event(&mut self, event: TransactionEvent) {
        self.events.push_back(event);
    }

    fn poll_transmit(&mut self) -> Option<Outgoing> {
        let next = self.transmits.pop_front();
        if next.is_none() && self.transmits.capacity() > 0 {
            self.transmits = std::collections::VecDeque::new();
        }
        next
    }

    fn poll_event(&mut self) -> Option<TransactionEvent> {
        let next = self.events.pop_front();
        if next.is_none() && self.events.capacity() > 0 {
            self.events = std::collections::VecDeque::new();
        }
        next
    }
}

/// A retransmission timer (A, E, G): next deadline and the interval that produced it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Backoff {
    at: Instant,
    interval: Duration,
}

impl Backoff {
    /// Fires `interval` after `now`, and keeps that interval.
    fn every(interval: Duration, now: Instant) -> Self {
        Backoff { at: now + interval, interval }
    }

    /// The timer, if it is due at `now`.
    fn due(timer: Option<Backoff>, now: Instant) -> Option<Backoff> {
        timer.filter(|t| t.at <= now)
    }

    /// The timer after it fired at `now`: the interval doubled, but not beyond `cap`.
    fn doubled(self, now: Instant, cap: Duration) -> Self {
        Backoff::every(self.interval.saturating_mul(2).min(cap), now)
    }
}

/// A timer field of a state machine: a one-shot deadline, or a retransmission [`Backoff`].
trait Timer {
    fn deadline(&self) -> Option<Instant>;
}

impl Timer for Option<Instant> {
    fn deadline(&self) -> Option<Instant> {
        *self
    }
}

impl Timer for Option<Backoff> {
    fn deadline(&self) -> Option<Instant> {
        self.map(|b| b.at)
    }
}

/// The plumbing shared by the four state machines, which is the same whatever the RFC figure:
/// the getters, `handle_transport_error` (report, then end), `poll_transmit`, `poll_event`,
/// `poll_timeout` (the earliest of `timers`) and `terminate` (cancel all `timers`, report
/// Terminated). The machine's struct needs the fields `state`, `key`, `request`, `out: Outbox`
/// and each of `timers` (an `Option<Instant>` or `Option<Backoff>`). Its figure — `new`,
/// `handle_message`, `send_response`, `handle_timeout` — stays written out in its own file.
macro_rules! transaction_plumbing {
    (state: $state:ident, request: $request_doc:literal, timers: [$($timer:ident),+ $(,)?] $(,)?) => {
        // ---- getters ----

        /// Current state.
        pub fn state(&self) -> $state {
            self.state
        }

        /// The transaction's key.
        pub fn key(&self) -> &$crate::transaction::TransactionKey {
            &self.key
        }

        #[doc = $request_doc]
        pub fn request(&self) -> &rsip::Request {
            &self.request
        }

        /// Whether the transaction is over.
        pub fn is_terminated(&self) -> bool {
            self.state == $state::Terminated
        }

        /// The transport could not deliver a message of this transaction: reported, and the
        /// transaction ends.
        pub fn handle_transport_error(&mut self, _now: std::time::Instant) {
            if self.state != $state::Terminated {
                self.out.event($crate::transaction::TransactionEvent::TransportError);
                self.terminate();
            }
        }

        // ---- poll_* ----

        /// Next message to send.
        #[must_use]
        pub fn poll_transmit(&mut self) -> Option<$crate::transaction::Outgoing> {
            self.out.poll_transmit()
        }

        /// When [`handle_timeout`](Self::handle_timeout) must next be called.
        #[must_use]
        pub fn poll_timeout(&self) -> Option<std::time::Instant> {
            use $crate::transaction::Timer as _;
            $crate::transaction::earliest(&[$(self.$timer.deadline()),+])
        }

        /// Next event for the TU.
        #[must_use]
        pub fn poll_event(&mut self) -> Option<$crate::transaction::TransactionEvent> {
            self.out.poll_event()
        }

        /// Ends the transaction: every timer cancelled, Terminated reported.
        fn terminate(&mut self) {
            self.state = $state::Terminated;
            $(self.$timer = None;)+
            self.out.event($crate::transaction::TransactionEvent::Terminated);
        }
    };
}
use transaction_plumbing;

/// The earliest of some optional deadlines.
fn earliest(deadlines: &[Option<Instant>]) -> Option<Instant> {
    deadlines.iter().flatten().min().copied()
}

/// Whether an optional deadline has passed.
fn due(deadline: Option<Instant>, now: Instant) -> bool {
    deadline.is_some_and(|at| at <= now)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::tests::invite;
    use crate::message::{parse, Framing};

    /// Alice over UDP: where the test requests come from, so where server transactions answer.
    pub(super) fn alice() -> Peer {
        Peer::udp("192.0.2.1:5060".parse().unwrap())
    }

    /// Bob over UDP: where client transactions send.
    pub(super) fn bob() -> Peer {
        Peer::udp("192.0.2.2:5060".parse().unwrap())
    }

    #[test]
    fn an_outbox_gives_its_buffers_back_once_drained() {
        let mut out = Outbox::default();
        out.event(TransactionEvent::Timeout);
        out.event(TransactionEvent::Terminated);
        out.send(bob(), &Bytes::from_static(b"x"), false);
        assert!(out.events.capacity() > 0 && out.transmits.capacity() > 0);
        assert_eq!(out.poll_event(), Some(TransactionEvent::Timeout));
        assert!(out.events.capacity() > 0, "not yet drained");
        assert_eq!(out.poll_event(), Some(TransactionEvent::Terminated));
        assert_eq!(out.poll_event(), None);
        assert!(out.poll_transmit().is_some());
        assert!(out.poll_transmit().is_none());
        assert_eq!((out.events.capacity(), out.transmits.capacity()), (0, 0), "a drained outbox holds no memory");
        // And it takes more afterwards (a retransmission, a late event).
        out.send(bob(), &Bytes::from_static(b"y"), true);
        assert_eq!(out.poll_transmit().map(|o| o.retransmission), Some(true));
    }

    #[test]
    fn default_timers_are_those_of_rfc_3261() {
        let c = TimerConfig::default();
        assert_eq!((c.t1, c.t2, c.t4), (Duration::from_millis(500), Duration::from_secs(4), Duration::from_secs(5)));
        assert_eq!(c.timeout(), Duration::from_secs(32));
        assert_eq!(c.validate(), Ok(()));
    }

    #[test]
    fn invalid_timer_config_names_the_problem() {
        let zero = TimerConfig { t1: Duration::ZERO, ..TimerConfig::default() };
        assert_eq!(zero.validate(), Err(ConfigError::ZeroT1));
        let inverted = TimerConfig { t2: Duration::from_millis(100), ..TimerConfig::default() };
        assert!(matches!(inverted.validate(), Err(ConfigError::T2BelowT1 { .. })));
    }

    #[test]
    fn ack_and_invite_share_a_server_key_and_cancel_points_at_it() {
        let inv = invite();
        let key = TransactionKey::for_request(&inv).unwrap();
        assert_eq!(key.method, Method::Invite);
        assert_eq!(key.sent_by, SentBy { host: "pc33.atlanta.example.com".into(), port: 5060 });
        let cancel = cancel_for(&inv);
        let cancel_key = TransactionKey::for_request(&cancel).unwrap();
        assert_eq!(cancel_key.method, Method::Cancel);
        assert_eq!(cancel_key.cancelled_invite(), Some(key.clone()));
        let mut ack = inv.clone();
        ack.method = Method::Ack;
        assert_eq!(TransactionKey::for_request(&ack).unwrap(), key);
    }

    #[test]
    fn ack_for_non_2xx_uses_the_invite_via_and_the_response_to() {
        let inv = invite();
        let mut response = message::response_for(&inv, 486, None, Some("t1"));
        response.headers.push(Header::Via(headers::Via::new("SIP/2.0/UDP extra;branch=z9hG4bKother")));
        let ack = ack_for_non_2xx(&inv, &response);
        let wire = encode_request(&ack);
        let SipMessage::Request(parsed) = parse(&wire, Framing::Stream).unwrap() else { panic!() };
        assert_eq!(parsed.method, Method::Ack);
        assert_eq!(parsed.headers.iter().filter(|h| matches!(h, Header::Via(_))).count(), 1);
        assert_eq!(TransactionKey::for_request(&parsed).unwrap(), TransactionKey::for_request(&inv).unwrap());
        let text = String::from_utf8_lossy(&wire);
        assert!(text.contains(";tag=t1"), "{text}");
        assert!(text.contains("CSeq: 314159 ACK"), "{text}");
    }

    #[test]
    fn rport_sends_responses_to_the_source_port_and_plain_via_to_sent_by_port() {
        let mut inv = invite();
        let source = Peer::udp("192.0.2.1:40000".parse().unwrap());
        assert_eq!(response_destination(&inv, source).addr, "192.0.2.1:5060".parse().unwrap());
        for h in inv.headers.iter_mut() {
            if let Header::Via(v) = h {
                *v = headers::Via::new(format!("{};rport", v.value()));
            }
        }
        assert_eq!(response_destination(&inv, source).addr, source.addr);
        let tcp = Peer::tcp("192.0.2.1:40001".parse().unwrap());
        assert_eq!(response_destination(&inv, tcp), tcp);
    }
}
