//! [`TransactionLayer`]: owns every transaction of one SIP endpoint and routes messages to them.
//!
//! Requests are matched to server transactions by (top-Via branch, method with ACK → INVITE,
//! top-Via sent-by) as RFC 3261 §17.2.3 says; responses to client transactions by (branch, CSeq
//! method) as §17.1.3 says. A request that matches nothing starts a server transaction; an ACK
//! or a response that matches nothing is handed to the TU as [`LayerEvent::Stray`] (ACKs for
//! 2xx, 2xx retransmissions after the client transaction ended). Timers live in one binary heap
//! with lazy deletion, so `handle_timeout` costs O(log n) per due timer.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::time::Instant;

use rsip::{Method, Request, Response, SipMessage};

use super::{
    method_index, response_destination, InviteClient, InviteServer, InviteServerState, NonInviteClient, NonInviteServer, Outgoing, Peer,
    Role, TimerConfig, TransactionError, TransactionEvent, TransactionKey,
};
use crate::message;

/// What the layer reports to the TU.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LayerEvent {
    /// A new request started a server transaction; answer with
    /// [`TransactionLayer::send_response`]. Its top Via already carries `received`/`rport`
    /// (RFC 3581). For a CANCEL, `cancels` is the INVITE server transaction it matches (§9.2),
    /// if one exists.
    Request {
        /// The server transaction.
        key: TransactionKey,
        /// The request.
        request: Request,
        /// Where it came from.
        source: Peer,
        /// For CANCEL: the matching INVITE server transaction.
        cancels: Option<TransactionKey>,
    },
    /// An ACK matched an INVITE server transaction that sent a 2xx (RFC 6026 Accepted state).
    Ack {
        /// The INVITE server transaction.
        key: TransactionKey,
        /// The ACK.
        request: Request,
    },
    /// A response for a client transaction.
    Response {
        /// The client transaction.
        key: TransactionKey,
        /// The response.
        response: Response,
    },
    /// Timer B, F or H fired, or a non-INVITE request went unanswered for 64·T1.
    Timeout {
        /// The transaction.
        key: TransactionKey,
        /// Client or server.
        role: Role,
    },
    /// The driver reported a transport failure for the transaction.
    TransportError {
        /// The transaction.
        key: TransactionKey,
        /// Client or server.
        role: Role,
    },
    /// The transaction ended and was removed.
    Terminated {
        /// The transaction.
        key: TransactionKey,
        /// Client or server.
        role: Role,
    },
    /// An ACK or response that matches no transaction (ACK for a 2xx, late 2xx retransmission).
    Stray {
        /// The message.
        message: SipMessage,
        /// Where it came from.
        source: Peer,
    },
}

/// Counters, for metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LayerStats {
    /// Server transactions created (one per distinct request).
    pub server_transactions: u64,
    /// Client transactions started.
    pub client_transactions: u64,
    /// Requests that matched a live server transaction (retransmissions; ACKs excluded).
    pub request_retransmissions_received: u64,
    /// Messages sent again by a transaction (requests by Timers A/E, responses by Timer G or
    /// in answer to a retransmitted request, ACKs for retransmitted final responses).
    pub retransmissions_sent: u64,
    /// ACKs that matched no transaction.
    pub stray_acks: u64,
    /// Responses that matched no transaction, or matched a branch but not our sent-by
    /// (§18.1.2; those are discarded without an event).
    pub stray_responses: u64,
    /// Messages without a usable top Via branch or CSeq (the parser normally refuses them).
    pub unidentifiable: u64,
    /// Transactions that ended with a Timeout event.
    pub timeouts: u64,
    /// Responses the TU sent through server transactions, by class (1xx … 6xx).
    pub responses_sent: [u64; 6],
}

#[derive(Debug)]
enum Machine {
    InviteClient(InviteClient),
    NonInviteClient(NonInviteClient),
    InviteServer(InviteServer),
    NonInviteServer(NonInviteServer),
}

impl Machine {
    fn poll_timeout(&self) -> Option<Instant> {
        match self {
            Machine::InviteClient(m) => m.poll_timeout(),
            Machine::NonInviteClient(m) => m.poll_timeout(),
            Machine::InviteServer(m) => m.poll_timeout(),
            Machine::NonInviteServer(m) => m.poll_timeout(),
        }
    }

    fn poll_transmit(&mut self) -> Option<Outgoing> {
        match self {
            Machine::InviteClient(m) => m.poll_transmit(),
            Machine::NonInviteClient(m) => m.poll_transmit(),
            Machine::InviteServer(m) => m.poll_transmit(),
            Machine::NonInviteServer(m) => m.poll_transmit(),
        }
    }

    fn poll_event(&mut self) -> Option<TransactionEvent> {
        match self {
            Machine::InviteClient(m) => m.poll_event(),
            Machine::NonInviteClient(m) => m.poll_event(),
            Machine::InviteServer(m) => m.poll_event(),
            Machine::NonInviteServer(m) => m.poll_event(),
        }
    }

    fn handle_timeout(&mut self, now: Instant) {
        match self {
            Machine::InviteClient(m) => m.handle_timeout(now),
            Machine::NonInviteClient(m) => m.handle_timeout(now),
            Machine::InviteServer(m) => m.handle_timeout(now),
            Machine::NonInviteServer(m) => m.handle_timeout(now),
        }
    }

    fn handle_transport_error(&mut self, now: Instant) {
        match self {
            Machine::InviteClient(m) => m.handle_transport_error(now),
            Machine::NonInviteClient(m) => m.handle_transport_error(now),
            Machine::InviteServer(m) => m.handle_transport_error(now),
            Machine::NonInviteServer(m) => m.handle_transport_error(now),
        }
    }

    fn is_terminated(&self) -> bool {
        match self {
            Machine::InviteClient(m) => m.is_terminated(),
            Machine::NonInviteClient(m) => m.is_terminated(),
            Machine::InviteServer(m) => m.is_terminated(),
            Machine::NonInviteServer(m) => m.is_terminated(),
        }
    }
}

#[derive(Debug)]
struct Entry {
    key: TransactionKey,
    role: Role,
    machine: Machine,
    /// Server: where the request came from. Client: where the request goes.
    peer: Peer,
    /// CANCEL server transactions: the INVITE server transaction matched at creation.
    cancels: Option<TransactionKey>,
    /// The deadline pushed to the heap for this entry (others in the heap are stale).
    scheduled: Option<Instant>,
}

type ClientIndex = (String, u8);

/// Live transactions the tables are sized for at start, with room to churn (see `new`): 800
/// requests a second keep about 26,000 alive through Timer J (64·T1).
const PRESIZED: usize = 1 << 15;

/// All transactions of one endpoint (see the module documentation).
#[derive(Debug)]
pub struct TransactionLayer {
    config: TimerConfig,
    /// Boxed: a transaction holds its request and timers (hundreds of bytes), and at thousands of
    /// requests a second Timer J keeps ~64·T1 worth of them alive; growing a table of inline
    /// entries copied tens of megabytes into fresh pages and stalled the loop for tens of ms.
    entries: HashMap<u64, Box<Entry>>,
    servers: HashMap<TransactionKey, u64>,
    clients: HashMap<ClientIndex, u64>,
    timers: BinaryHeap<Reverse<(Instant, u64)>>,
    next_id: u64,
    transmits: VecDeque<Outgoing>,
    events: VecDeque<LayerEvent>,
    stats: LayerStats,
    /// Answer UDP requests at their source port even without `rport` (see
    /// [`response_destination`]).
    symmetric_responses: bool,
}

impl TransactionLayer {
    /// An empty layer using `config` for every transaction (validate it first).
    pub fn new(config: TimerConfig) -> Self {
        TransactionLayer {
            config,
            // Sized once, twice PRESIZED (about 15 MB once in use): the tables churn (every
            // request adds one, Timer J/K removes it), and a hash table whose removals left
            // tombstones doubles when it is over half full, minutes into a steady load: a step
            // in the server's memory the soak saw. Up to PRESIZED live transactions (and some)
            // they only rehash in place; beyond, they grow as any table.
            entries: HashMap::with_capacity(2 * PRESIZED),
            servers: HashMap::with_capacity(2 * PRESIZED),
            clients: HashMap::new(),
            timers: BinaryHeap::new(),
            next_id: 0,
            transmits: VecDeque::new(),
            events: VecDeque::new(),
            stats: LayerStats::default(),
            symmetric_responses: false,
        }
    }

    /// Sends UDP responses to the request's source port even when its Via has no `rport`, as
    /// an SBC does for phones behind NAT (off: RFC 3261 §18.2.2 to the letter).
    pub fn set_symmetric_responses(&mut self, on: bool) {
        self.symmetric_responses = on;
    }

    // ---- getters ----

    /// Timer values in use.
    pub fn config(&self) -> &TimerConfig {
        &self.config
    }

    /// Live transactions.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether no transaction is live.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Counters.
    pub fn stats(&self) -> LayerStats {
        self.stats
    }

    /// State of an INVITE server transaction, e.g. to decide whether a CANCEL can still stop it
    /// (only in Proceeding).
    pub fn invite_server_state(&self, key: &TransactionKey) -> Option<InviteServerState> {
        let id = self.servers.get(key)?;
        match &self.entries.get(id)?.machine {
            Machine::InviteServer(m) => Some(m.state()),
            _ => None,
        }
    }

    // ---- handle_* ----

    /// A parsed message arrived from `source`.
    pub fn handle_message(&mut self, message: SipMessage, source: Peer, now: Instant) {
        match message {
            SipMessage::Request(request) => self.handle_request(request, source, now),
            SipMessage::Response(response) => self.handle_response(response, source, now),
        }
    }

    fn handle_request(&mut self, mut request: Request, source: Peer, now: Instant) {
        let Ok(key) = TransactionKey::for_request(&request) else {
            self.stats.unidentifiable += 1;
            return;
        };
        if let Some(&id) = self.servers.get(&key) {
            if request.method != Method::Ack {
                self.stats.request_retransmissions_received += 1;
            }
            if let Some(entry) = self.entries.get_mut(&id) {
                match &mut entry.machine {
                    Machine::InviteServer(m) => m.handle_message(request, now),
                    Machine::NonInviteServer(m) => m.handle_message(request, now),
                    Machine::InviteClient(_) | Machine::NonInviteClient(_) => {}
                }
            }
            self.drain(id);
            return;
        }
        if request.method == Method::Ack {
            self.stats.stray_acks += 1;
            self.events.push_back(LayerEvent::Stray { message: SipMessage::Request(request), source });
            return;
        }
        // RFC 3261 §18.2.1 / RFC 3581: record where the request really came from, so responses
        // built from it echo `received` and `rport`.
        let _ = message::stamp_received(&mut request, source.addr);
        let destination = if self.symmetric_responses { source } else { response_destination(&request, source) };
        let cancels = key.cancelled_invite().filter(|k| self.servers.contains_key(k));
        let machine = if request.method == Method::Invite {
            InviteServer::new(request, destination, self.config, now).map(Machine::InviteServer)
        } else {
            NonInviteServer::new(request, destination, self.config, now).map(Machine::NonInviteServer)
        };
        let Ok(machine) = machine else {
            self.stats.unidentifiable += 1;
            return;
        };
        self.stats.server_transactions += 1;
        let id = self.insert(Entry { key: key.clone(), role: Role::Server, machine, peer: source, cancels, scheduled: None });
        self.servers.insert(key, id);
        self.drain(id);
    }

    fn handle_response(&mut self, response: Response, source: Peer, now: Instant) {
        let Ok(key) = TransactionKey::for_response(&response) else {
            self.stats.unidentifiable += 1;
            return;
        };
        let Some(&id) = self.clients.get(&(key.branch.clone(), method_index(key.method))) else {
            self.stats.stray_responses += 1;
            self.events.push_back(LayerEvent::Stray { message: SipMessage::Response(response), source });
            return;
        };
        if let Some(entry) = self.entries.get_mut(&id) {
            // §18.1.2: a response whose top Via sent-by is not the one we wrote is discarded.
            if entry.key.sent_by != key.sent_by {
                self.stats.stray_responses += 1;
                return;
            }
            match &mut entry.machine {
                Machine::InviteClient(m) => m.handle_message(response, now),
                Machine::NonInviteClient(m) => m.handle_message(response, now),
                Machine::InviteServer(_) | Machine::NonInviteServer(_) => {}
            }
        }
        self.drain(id);
    }

    /// Fires every transaction timer due at `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        let mut due = Vec::new();
        while let Some(&Reverse((at, id))) = self.timers.peek() {
            if at > now {
                break;
            }
            self.timers.pop();
            if let Some(entry) = self.entries.get_mut(&id) {
                if entry.scheduled == Some(at) {
                    entry.scheduled = None;
                    due.push(id);
                }
            }
        }
        for id in due {
            if let Some(entry) = self.entries.get_mut(&id) {
                entry.machine.handle_timeout(now);
            }
            self.drain(id);
        }
    }

    /// The driver could not deliver a message of the transaction `key` (ICMP error, connection
    /// reset, TLS failure).
    pub fn handle_transport_error(&mut self, role: Role, key: &TransactionKey, now: Instant) -> Result<(), TransactionError> {
        let id = self.find(role, key)?;
        if let Some(entry) = self.entries.get_mut(&id) {
            entry.machine.handle_transport_error(now);
        }
        self.drain(id);
        Ok(())
    }

    // ---- commands ----

    /// Starts a client transaction sending `request` to `destination`. The request must carry a
    /// fresh branch ([`Random::branch`](crate::random::Random::branch)).
    pub fn start_client(&mut self, request: Request, destination: Peer, now: Instant) -> Result<TransactionKey, TransactionError> {
        if request.method == Method::Ack {
            return Err(TransactionError::AckNeedsNoTransaction);
        }
        let key = TransactionKey::for_request(&request)?;
        let index = (key.branch.clone(), method_index(key.method));
        if self.clients.contains_key(&index) {
            return Err(TransactionError::DuplicateBranch);
        }
        let machine = if request.method == Method::Invite {
            Machine::InviteClient(InviteClient::new(request, destination, self.config, now)?)
        } else {
            Machine::NonInviteClient(NonInviteClient::new(request, destination, self.config, now)?)
        };
        self.stats.client_transactions += 1;
        let id = self.insert(Entry { key: key.clone(), role: Role::Client, machine, peer: destination, cancels: None, scheduled: None });
        self.clients.insert(index, id);
        self.drain(id);
        Ok(key)
    }

    /// Sends the TU's response through the server transaction `key`.
    pub fn send_response(&mut self, key: &TransactionKey, response: Response, now: Instant) -> Result<(), TransactionError> {
        let id = self.find(Role::Server, key)?;
        let class = usize::from(response.status_code.code() / 100).saturating_sub(1);
        if let Some(count) = self.stats.responses_sent.get_mut(class) {
            *count += 1;
        }
        let result = match self.entries.get_mut(&id).map(|e| &mut e.machine) {
            Some(Machine::InviteServer(m)) => m.send_response(response, now),
            Some(Machine::NonInviteServer(m)) => m.send_response(response, now),
            _ => Err(TransactionError::UnknownTransaction),
        };
        self.drain(id);
        result
    }

    /// Sends a message outside any transaction: the TU's ACK for a 2xx (§13.2.2.4), its 2xx
    /// retransmissions after the server transaction ended, or a stateless 400.
    pub fn send_stateless(&mut self, message: &SipMessage, destination: Peer) {
        self.transmits.push_back(Outgoing { destination, payload: message::encode(message), retransmission: false });
    }

    /// Sends bytes the TU encoded and keeps (its ACK for a retransmitted 2xx, its own 2xx
    /// retransmissions), outside any transaction.
    pub fn transmit(&mut self, outgoing: Outgoing) {
        self.transmits.push_back(outgoing);
    }

    // ---- poll_* ----

    /// Next message to send.
    #[must_use]
    pub fn poll_transmit(&mut self) -> Option<Outgoing> {
        self.transmits.pop_front()
    }

    /// When [`handle_timeout`](Self::handle_timeout) must next be called.
    #[must_use]
    pub fn poll_timeout(&mut self) -> Option<Instant> {
        while let Some(&Reverse((at, id))) = self.timers.peek() {
            if self.entries.get(&id).is_some_and(|e| e.scheduled == Some(at)) {
                return Some(at);
            }
            self.timers.pop();
        }
        None
    }

    /// Next event for the TU.
    #[must_use]
    pub fn poll_event(&mut self) -> Option<LayerEvent> {
        self.events.pop_front()
    }

    // ---- internals ----

    fn insert(&mut self, entry: Entry) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        self.entries.insert(id, Box::new(entry));
        id
    }

    fn find(&self, role: Role, key: &TransactionKey) -> Result<u64, TransactionError> {
        let id = match role {
            Role::Server => self.servers.get(key),
            Role::Client => self.clients.get(&(key.branch.clone(), method_index(key.method))),
        };
        id.copied().ok_or(TransactionError::UnknownTransaction)
    }

    /// Moves a transaction's outputs to the layer's queues, reschedules its timer and removes
    /// it once terminated.
    fn drain(&mut self, id: u64) {
        let Some(entry) = self.entries.get_mut(&id) else { return };
        while let Some(outgoing) = entry.machine.poll_transmit() {
            if outgoing.retransmission {
                self.stats.retransmissions_sent += 1;
            }
            self.transmits.push_back(outgoing);
        }
        while let Some(event) = entry.machine.poll_event() {
            let key = entry.key.clone();
            let role = entry.role;
            self.events.push_back(match event {
                TransactionEvent::Request(request) => {
                    LayerEvent::Request { key, request, source: entry.peer, cancels: entry.cancels.clone() }
                }
                TransactionEvent::Ack(request) => LayerEvent::Ack { key, request },
                TransactionEvent::Response(response) => LayerEvent::Response { key, response },
                TransactionEvent::Timeout => {
                    self.stats.timeouts += 1;
                    LayerEvent::Timeout { key, role }
                }
                TransactionEvent::TransportError => LayerEvent::TransportError { key, role },
                TransactionEvent::Terminated => LayerEvent::Terminated { key, role },
            });
        }
        if entry.machine.is_terminated() {
            let (key, role) = (entry.key.clone(), entry.role);
            self.entries.remove(&id);
            match role {
                Role::Server => {
                    self.servers.remove(&key);
                }
                Role::Client => {
                    self.clients.remove(&(key.branch, method_index(key.method)));
                }
            }
            return;
        }
        let next = entry.machine.poll_timeout();
        if next != entry.scheduled {
            entry.scheduled = next;
            if let Some(at) = next {
                self.timers.push(Reverse((at, id)));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::tests::{invite, parse_request, INVITE};
    use crate::message::{parse, response_for, Framing};
    use crate::transaction::cancel_for;
    use crate::transaction::tests::{alice, bob};
    use rsip::headers::UntypedHeader;
    use std::time::Duration;

    fn events(layer: &mut TransactionLayer) -> Vec<LayerEvent> {
        std::iter::from_fn(|| layer.poll_event()).collect()
    }

    #[test]
    fn a_retransmitted_request_reaches_the_tu_once() {
        let t0 = Instant::now();
        let mut layer = TransactionLayer::new(TimerConfig::default());
        layer.handle_message(SipMessage::Request(invite()), alice(), t0);
        layer.handle_message(SipMessage::Request(invite()), alice(), t0 + Duration::from_millis(500));
        let requests = events(&mut layer).into_iter().filter(|e| matches!(e, LayerEvent::Request { .. })).count();
        assert_eq!(requests, 1);
        assert_eq!(layer.stats().request_retransmissions_received, 1);
        assert_eq!(layer.len(), 1);
    }

    #[test]
    fn same_branch_from_another_sent_by_is_another_transaction() {
        let t0 = Instant::now();
        let mut layer = TransactionLayer::new(TimerConfig::default());
        layer.handle_message(SipMessage::Request(invite()), alice(), t0);
        let other = INVITE.replace("pc33.atlanta.example.com;branch", "elsewhere.example.com;branch");
        layer.handle_message(parse(other.as_bytes(), Framing::Datagram).unwrap(), alice(), t0);
        assert_eq!(layer.len(), 2);
    }

    #[test]
    fn cancel_gets_its_own_transaction_and_names_the_invite_it_cancels() {
        let t0 = Instant::now();
        let mut layer = TransactionLayer::new(TimerConfig::default());
        let inv = invite();
        layer.handle_message(SipMessage::Request(inv.clone()), alice(), t0);
        let invite_key = TransactionKey::for_request(&inv).unwrap();
        layer.handle_message(SipMessage::Request(cancel_for(&inv)), alice(), t0);
        let cancel_event =
            events(&mut layer).into_iter().find(|e| matches!(e, LayerEvent::Request { request, .. } if request.method == Method::Cancel));
        let Some(LayerEvent::Request { key, cancels, .. }) = cancel_event else { panic!("no CANCEL event") };
        assert_eq!(cancels, Some(invite_key.clone()));
        assert_eq!(key.method, Method::Cancel);
        assert_eq!(layer.invite_server_state(&invite_key), Some(InviteServerState::Proceeding));
        assert_eq!(layer.len(), 2);
    }

    #[test]
    fn cancel_without_invite_names_none() {
        let t0 = Instant::now();
        let mut layer = TransactionLayer::new(TimerConfig::default());
        layer.handle_message(SipMessage::Request(cancel_for(&invite())), alice(), t0);
        assert!(matches!(events(&mut layer).as_slice(), [LayerEvent::Request { cancels: None, .. }]));
    }

    #[test]
    fn ack_matching_nothing_is_stray_and_creates_no_transaction() {
        let mut layer = TransactionLayer::new(TimerConfig::default());
        let mut ack = invite();
        ack.method = Method::Ack;
        layer.handle_message(SipMessage::Request(ack), alice(), Instant::now());
        assert!(matches!(events(&mut layer).as_slice(), [LayerEvent::Stray { .. }]));
        assert!(layer.is_empty());
        assert_eq!(layer.stats().stray_acks, 1);
    }

    #[test]
    fn new_request_top_via_gets_received_and_rport() {
        let mut layer = TransactionLayer::new(TimerConfig::default());
        let raw = INVITE.replace("branch=z9hG4bK776asdhds", "branch=z9hG4bK776asdhds;rport");
        let source = Peer::udp("198.51.100.9:33333".parse().unwrap());
        layer.handle_message(parse(raw.as_bytes(), Framing::Datagram).unwrap(), source, Instant::now());
        let Some(LayerEvent::Request { key, request, .. }) = layer.poll_event() else { panic!() };
        let via = message::top_via(&request.headers).unwrap().to_string();
        assert!(via.contains("received=198.51.100.9") && via.contains("rport=33333"), "{via}");
        layer.send_response(&key, response_for(&request, 180, None, Some("t")), Instant::now()).unwrap();
        assert_eq!(layer.poll_transmit().unwrap().destination, source, "rport: answer the source port");
    }

    #[test]
    fn responses_route_by_branch_and_cseq_method_and_strays_are_reported() {
        let t0 = Instant::now();
        let mut layer = TransactionLayer::new(TimerConfig::default());
        let inv = invite();
        let key = layer.start_client(inv.clone(), bob(), t0).unwrap();
        assert!(layer.poll_transmit().unwrap().payload.starts_with(b"INVITE "));
        let ringing = response_for(&inv, 180, None, Some("b"));
        layer.handle_message(SipMessage::Response(ringing.clone()), alice(), t0);
        assert_eq!(layer.poll_event(), Some(LayerEvent::Response { key, response: ringing }));
        let mut other = response_for(&cancel_for(&inv), 200, None, Some("b"));
        other.headers.retain(|h| !matches!(h, rsip::Header::CSeq(_)));
        other.headers.push(rsip::Header::CSeq(rsip::headers::CSeq::new("314159 BYE")));
        layer.handle_message(SipMessage::Response(other), alice(), t0);
        assert!(matches!(layer.poll_event(), Some(LayerEvent::Stray { .. })));
    }

    #[test]
    fn response_with_our_branch_but_another_sent_by_is_discarded() {
        let t0 = Instant::now();
        let mut layer = TransactionLayer::new(TimerConfig::default());
        let inv = invite();
        layer.start_client(inv.clone(), bob(), t0).unwrap();
        let mut forged = response_for(&inv, 200, None, Some("b"));
        for h in forged.headers.iter_mut() {
            if let rsip::Header::Via(v) = h {
                *v = rsip::headers::Via::new(v.value().replace("pc33.atlanta.example.com", "attacker.example.net"));
            }
        }
        layer.handle_message(SipMessage::Response(forged), alice(), t0);
        assert_eq!(layer.poll_event(), None);
        assert_eq!(layer.stats().stray_responses, 1);
    }

    #[test]
    fn duplicate_branch_and_ack_are_refused_by_start_client() {
        let t0 = Instant::now();
        let mut layer = TransactionLayer::new(TimerConfig::default());
        let dest = bob();
        layer.start_client(invite(), dest, t0).unwrap();
        assert_eq!(layer.start_client(invite(), dest, t0), Err(TransactionError::DuplicateBranch));
        let mut ack = invite();
        ack.method = Method::Ack;
        assert_eq!(layer.start_client(ack, dest, t0), Err(TransactionError::AckNeedsNoTransaction));
    }

    #[test]
    fn send_response_to_unknown_transaction_is_an_error() {
        let mut layer = TransactionLayer::new(TimerConfig::default());
        let key = TransactionKey::for_request(&invite()).unwrap();
        let resp = response_for(&invite(), 200, None, Some("x"));
        assert_eq!(layer.send_response(&key, resp, Instant::now()), Err(TransactionError::UnknownTransaction));
    }

    #[test]
    fn transport_error_reaches_the_tu_and_removes_the_transaction() {
        let t0 = Instant::now();
        let mut layer = TransactionLayer::new(TimerConfig::default());
        let key = layer.start_client(invite(), bob(), t0).unwrap();
        layer.handle_transport_error(Role::Client, &key, t0).unwrap();
        let ev = events(&mut layer);
        assert!(ev.contains(&LayerEvent::TransportError { key: key.clone(), role: Role::Client }));
        assert!(ev.contains(&LayerEvent::Terminated { key, role: Role::Client }));
        assert!(layer.is_empty());
        assert_eq!(layer.poll_timeout(), None, "stale timers are dropped");
    }

    #[test]
    fn many_transactions_each_time_out_once_at_64_t1() {
        let t0 = Instant::now();
        let mut layer = TransactionLayer::new(TimerConfig::default());
        for i in 0..50 {
            let raw = INVITE.replace("z9hG4bK776asdhds", &format!("z9hG4bKmany{i}"));
            let req = parse_request(raw.as_bytes());
            layer.start_client(req, bob(), t0 + Duration::from_millis(i)).unwrap();
        }
        while let Some(at) = layer.poll_timeout() {
            layer.handle_timeout(at);
        }
        let timeouts = events(&mut layer).into_iter().filter(|e| matches!(e, LayerEvent::Timeout { .. })).count();
        assert_eq!(timeouts, 50);
        assert!(layer.is_empty());
        assert_eq!(layer.stats().retransmissions_sent, 50 * 6);
    }
}
