//! The registrar and location service (RFC 3261 §10.3), sans-IO.
//!
//! [`Registrar::handle_register`] applies an (already authenticated) REGISTER to the in-memory
//! location table and returns the bindings to list in the 200 plus the [`LocationChange`]s for
//! the [`Store`](crate::store::Store) to persist. Time is UNIX seconds passed in, because
//! registrations outlive the process. Lookups ([`Registrar::lookup`]) are served from memory,
//! best q first; [`Registrar::sweep`] drops expired bindings.
//!
//! Edge proxies and phones behind NAT (RFC 3327 Path, RFC 5626 SIP outbound):
//! - The Path vector of a REGISTER is kept with its bindings, echoed in the 200 when the phone
//!   supports `path`, and becomes the Route set of requests sent to those contacts.
//! - With `Supported: outbound` and a Contact carrying `+sip.instance` and `reg-id`, the binding
//!   is keyed by (instance, reg-id) instead of the Contact URI, the 200 carries
//!   `Require: outbound`, only the most recently refreshed flow of an instance is used, and the
//!   binding ends when its TCP/TLS connection closes ([`Registrar::flow_closed`]). A REGISTER
//!   that came through a proxy not marked `ob` in Path gets 439.

use std::collections::HashMap;

use rsip::headers::{ToTypedHeader, UntypedHeader};
use rsip::{Header, Request};

use crate::config::RegistrarConfig;
use crate::store::{LocationChange, StoredBinding};
use sip_core::transaction::Peer;

/// One contact registered for an address-of-record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Binding {
    /// Contact URI (without header parameters).
    pub contact: String,
    /// q-value ×1000 (default 1000).
    pub q_milli: u16,
    /// Expiry, UNIX seconds.
    pub expires_unix: u64,
    /// Call-ID of the REGISTER that made it.
    pub call_id: String,
    /// Its CSeq.
    pub cseq: u32,
    /// The flow the REGISTER arrived on; requests for this contact are sent there, which is what
    /// lets phones behind NAT be reached (the contact's own address is often private). With a
    /// Path it is the connection to the edge proxy.
    pub flow: Peer,
    /// The REGISTER's Path header values, in order (RFC 3327): the Route set towards the contact.
    pub path: Vec<String>,
    /// Set when the binding was made under SIP outbound (RFC 5626).
    pub outbound: Option<Outbound>,
}

/// The key of a SIP outbound binding.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Outbound {
    /// `+sip.instance`, without its quotes (`<urn:uuid:…>`).
    pub instance: String,
    /// `reg-id` (1 or more).
    pub reg_id: u32,
}

/// Why a REGISTER is refused; each maps to a status code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RegisterError {
    /// 400: a Contact that does not parse, `*` with other contacts or non-zero expiry.
    #[error("bad Contact: {0}")]
    BadContact(String),
    /// 423 with Min-Expires.
    #[error("interval too brief (minimum {0} s)")]
    IntervalTooBrief(u32),
    /// 500 (§10.3 step 7): same Call-ID with a CSeq not above the stored one.
    #[error("out-of-order REGISTER")]
    OutOfOrder,
    /// 403: more contacts than allowed.
    #[error("too many contacts")]
    TooManyContacts,
    /// 439 (RFC 5626 §6): an outbound registration through a proxy that did not mark itself
    /// `ob` in Path, so the flow to the phone is not kept open by anyone.
    #[error("first hop lacks outbound support")]
    FirstHopLacksOutbound,
}

impl RegisterError {
    /// The response status.
    pub fn status(&self) -> u16 {
        match self {
            RegisterError::BadContact(_) => 400,
            RegisterError::IntervalTooBrief(_) => 423,
            RegisterError::OutOfOrder => 500,
            RegisterError::TooManyContacts => 403,
            RegisterError::FirstHopLacksOutbound => 439,
        }
    }
}

/// The result of an accepted REGISTER.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Registered {
    /// Every current binding of the AoR, for the 200's Contact headers.
    pub bindings: Vec<Binding>,
    /// What to persist.
    pub changes: Vec<LocationChange>,
    /// The REGISTER's Path, to echo in the 200 when the phone supports `path`.
    pub path: Vec<String>,
    /// Whether a binding was made under SIP outbound (the 200 then carries `Require: outbound`).
    pub outbound: bool,
}

/// The location table.
#[derive(Debug)]
pub struct Registrar {
    config: RegistrarConfig,
    location: HashMap<String, Vec<Binding>>,
    /// The AoRs with outbound bindings on each TCP/TLS flow, so that a closed connection costs a
    /// lookup, not a scan of every registration. Entries may outlive their bindings (expiry,
    /// unregister); they go when the connection closes.
    outbound_flows: HashMap<Peer, std::collections::HashSet<String>>,
}

struct RequestedContact {
    contact: String,
    expires: u32,
    q_milli: u16,
    outbound: Option<Outbound>,
}

impl RequestedContact {
    /// Whether `b` is the binding this contact refreshes or removes: same (instance, reg-id)
    /// under outbound, else the same Contact URI.
    fn matches(&self, b: &Binding) -> bool {
        match (&self.outbound, &b.outbound) {
            (Some(key), Some(existing)) => key == existing,
            _ => b.contact == self.contact,
        }
    }
}

/// Whether the request's Supported header (compact `k` is normalised by the parser) lists
/// `option`.
pub fn supports(request: &Request, option: &str) -> bool {
    request.headers.iter().any(|h| match h {
        Header::Supported(s) => sip_core::message::split_list(s.value()).any(|o| o.eq_ignore_ascii_case(option)),
        _ => false,
    })
}

/// Number of Via entries (headers and comma-separated values).
fn via_count(request: &Request) -> usize {
    request
        .headers
        .iter()
        .map(|h| match h {
            Header::Via(v) => sip_core::message::split_list(v.value()).count(),
            _ => 0,
        })
        .sum()
}

/// The Expires header of a request, if present and numeric.
pub fn expires_header(request: &Request) -> Option<u32> {
    request.headers.iter().find_map(|h| match h {
        Header::Expires(e) => e.value().trim().parse::<u32>().ok(),
        _ => None,
    })
}

fn parse_q(text: &str) -> Option<u16> {
    let value: f32 = text.trim().parse().ok()?;
    (0.0..=1.0).contains(&value).then(|| (value * 1000.0).round() as u16)
}

impl Registrar {
    /// An empty table.
    pub fn new(config: RegistrarConfig) -> Self {
        Registrar { config, location: HashMap::new(), outbound_flows: HashMap::new() }
    }

    /// Loads persisted bindings (at start), skipping expired ones, unparsable flows, and outbound
    /// bindings on TCP/TLS flows (their connections ended with the previous process; the phone
    /// registers again on a new one).
    pub fn restore(&mut self, stored: Vec<StoredBinding>, now_unix: u64) -> usize {
        let mut restored = 0;
        for b in stored {
            let aor = b.aor.clone();
            let Some(binding) = live_binding(b, now_unix) else { continue };
            if binding.outbound.is_some() && is_stream(binding.flow) {
                continue;
            }
            self.location.entry(aor).or_default().push(binding);
            restored += 1;
        }
        restored
    }

    /// `aor`'s bindings as a store several control planes share has them (`stored`, that AoR's
    /// rows), for a lookup or before a REGISTER changes them: bindings another node made or
    /// removed are taken as the store says. A binding on a TCP/TLS connection is kept only if it
    /// is one of ours (in this table with the same flow): another node's connection cannot be
    /// sent on from here.
    pub fn refresh(&mut self, aor: &str, stored: Vec<StoredBinding>, now_unix: u64) {
        let ours = self.location.remove(aor).unwrap_or_default();
        let fresh: Vec<Binding> = stored
            .into_iter()
            .filter(|b| b.aor == aor)
            .filter_map(|b| live_binding(b, now_unix))
            .filter(|b| !is_stream(b.flow) || ours.iter().any(|o| o.contact == b.contact && o.flow == b.flow))
            .collect();
        if !fresh.is_empty() {
            self.location.insert(aor.to_owned(), fresh);
        }
    }

    /// Registered addresses-of-record.
    pub fn aor_count(&self) -> usize {
        self.location.len()
    }

    /// Live bindings of `aor`, best q first, then most recently refreshed; of several outbound
    /// flows of one instance only the most recently refreshed (RFC 5626 §5.3: one flow at a time,
    /// the others are backups).
    /// Contacts held (expired ones included until the next sweep).
    pub fn binding_count(&self) -> usize {
        self.location.values().map(Vec::len).sum()
    }

    pub fn lookup(&self, aor: &str, now_unix: u64) -> Vec<Binding> {
        let out: Vec<Binding> =
            self.location.get(aor).map(|v| v.iter().filter(|b| b.expires_unix > now_unix).cloned().collect()).unwrap_or_default();
        best_first(out)
    }

    /// [`Registrar::lookup`] over `stored` (`aor`'s rows of a store shared with other control
    /// planes) instead of this table; TCP/TLS bindings only if they are this node's.
    pub fn lookup_in(&self, aor: &str, stored: Vec<StoredBinding>, now_unix: u64) -> Vec<Binding> {
        let ours = self.location.get(aor).map(Vec::as_slice).unwrap_or_default();
        let out = stored
            .into_iter()
            .filter(|b| b.aor == aor)
            .filter_map(|b| live_binding(b, now_unix))
            .filter(|b| !is_stream(b.flow) || ours.iter().any(|o| o.contact == b.contact && o.flow == b.flow))
            .collect();
        best_first(out)
    }
}

/// Bindings best q first, then most recently refreshed; of several outbound flows of one
/// instance only the most recently refreshed (RFC 5626 §5.3).
fn best_first(mut out: Vec<Binding>) -> Vec<Binding> {
    out.sort_by(|a, b| b.q_milli.cmp(&a.q_milli).then(b.expires_unix.cmp(&a.expires_unix)));
    let mut instances = std::collections::HashSet::new();
    out.retain(|b| b.outbound.as_ref().is_none_or(|o| instances.insert(o.instance.clone())));
    out
}

impl Registrar {
    /// A TCP/TLS connection closed: the outbound bindings that used it end (RFC 5626 §5.3; the
    /// phone registers again over a new flow). Returns what to delete from the store.
    pub fn flow_closed(&mut self, flow: Peer) -> Vec<LocationChange> {
        let mut changes = Vec::new();
        for aor in self.outbound_flows.remove(&flow).unwrap_or_default() {
            let Some(bindings) = self.location.get_mut(&aor) else { continue };
            bindings.retain(|b| {
                let gone = b.outbound.is_some() && b.flow == flow;
                if gone {
                    changes.push(remove_change(&aor, b));
                }
                !gone
            });
            if bindings.is_empty() {
                self.location.remove(&aor);
            }
        }
        changes
    }

    /// Applies a REGISTER for `aor` that arrived on `flow` (§10.3 steps 6–8).
    pub fn handle_register(&mut self, aor: &str, request: &Request, flow: Peer, now_unix: u64) -> Result<Registered, RegisterError> {
        let header_expires = expires_header(request);
        let call_id = sip_core::message::call_id(&request.headers).unwrap_or_default().to_owned();
        let cseq = sip_core::message::cseq(&request.headers).map(|c| c.seq).unwrap_or(0);

        let outbound_supported = supports(request, "outbound");
        let path: Vec<String> = sip_core::message::header_list(&request.headers, "Path").map(str::to_owned).collect();
        let mut wildcard = false;
        let mut requested = Vec::new();
        for header in request.headers.iter() {
            let Header::Contact(value) = header else { continue };
            for item in sip_core::message::split_list(value.value()) {
                if item == "*" {
                    wildcard = true;
                    continue;
                }
                // Header parameters are read here, not by the URI parser: `+sip.instance` carries
                // a quoted `<urn:…>` that the typed Contact parser refuses.
                let typed = rsip::headers::Contact::new(sip_core::message::without_header_params(item))
                    .typed()
                    .map_err(|_| RegisterError::BadContact(item.chars().take(80).collect()))?;
                let mut expires = header_expires;
                if let Some(e) = sip_core::message::header_param(item, "expires") {
                    expires = Some(e.parse().map_err(|_| RegisterError::BadContact("expires".into()))?);
                }
                let q_milli = match sip_core::message::header_param(item, "q") {
                    Some(q) => parse_q(q).ok_or_else(|| RegisterError::BadContact("q".into()))?,
                    None => 1000,
                };
                let expires = expires.unwrap_or(self.config.default_expires);
                let instance = sip_core::message::header_param(item, "+sip.instance")
                    .map(|i| i.trim_matches('"').to_owned())
                    .filter(|i| !i.is_empty());
                let reg_id = match sip_core::message::header_param(item, "reg-id") {
                    None => None,
                    Some(text) => match text.parse::<u32>() {
                        Ok(id) if id > 0 => Some(id),
                        _ => return Err(RegisterError::BadContact("reg-id".into())),
                    },
                };
                // reg-id counts only with an instance and a phone that supports outbound.
                let outbound = match (instance, reg_id) {
                    (Some(instance), Some(reg_id)) if outbound_supported => Some(Outbound { instance, reg_id }),
                    _ => None,
                };
                requested.push(RequestedContact { contact: typed.uri.to_string(), expires, q_milli, outbound });
            }
        }

        let existing = self.location.entry(aor.to_owned()).or_default();
        existing.retain(|b| b.expires_unix > now_unix);
        let mut changes = Vec::new();

        if wildcard {
            // §10.3 step 6: "*" only alone and with Expires: 0.
            if !requested.is_empty() || header_expires != Some(0) {
                return Err(RegisterError::BadContact("* needs Expires: 0 and no other Contact".into()));
            }
            if existing.iter().any(|b| b.call_id == call_id && cseq <= b.cseq) {
                return Err(RegisterError::OutOfOrder);
            }
            for b in existing.drain(..) {
                changes.push(remove_change(aor, &b));
            }
            self.location.remove(aor);
            return Ok(Registered { bindings: Vec::new(), changes, path, outbound: false });
        }

        // RFC 5626 §6: one outbound contact per REGISTER, and a proxy in between must be the
        // one keeping the flow (`ob` in its Path entry).
        let outbound = requested.iter().filter(|r| r.outbound.is_some() && r.expires != 0).count();
        if requested.iter().filter(|r| r.outbound.is_some()).count() > 1 {
            return Err(RegisterError::BadContact("more than one Contact with reg-id".into()));
        }
        if outbound > 0
            && via_count(request) > 1
            && path.first().is_none_or(|first| !sip_core::message::uri_of(first).split(';').any(|p| p.eq_ignore_ascii_case("ob")))
        {
            return Err(RegisterError::FirstHopLacksOutbound);
        }

        // Check everything before changing anything: a refused REGISTER changes nothing.
        for r in &requested {
            if r.expires != 0 && r.expires < self.config.min_expires {
                return Err(RegisterError::IntervalTooBrief(self.config.min_expires));
            }
            if let Some(b) = existing.iter().find(|b| r.matches(b)) {
                if b.call_id == call_id && cseq <= b.cseq {
                    return Err(RegisterError::OutOfOrder);
                }
            }
        }
        let added = requested.iter().filter(|r| r.expires != 0 && !existing.iter().any(|b| r.matches(b))).count();
        let removed = existing.iter().filter(|b| requested.iter().any(|r| r.expires == 0 && r.matches(b))).count();
        if existing.len() + added - removed > self.config.max_contacts {
            return Err(RegisterError::TooManyContacts);
        }

        for r in requested {
            if r.expires == 0 {
                existing.retain(|b| {
                    let remove = r.matches(b);
                    if remove {
                        changes.push(remove_change(aor, b));
                    }
                    !remove
                });
                continue;
            }
            let binding = Binding {
                contact: r.contact.clone(),
                q_milli: r.q_milli,
                expires_unix: now_unix + u64::from(r.expires.min(self.config.max_expires)),
                call_id: call_id.clone(),
                cseq,
                flow,
                path: path.clone(),
                outbound: r.outbound.clone(),
            };
            if binding.outbound.is_some() && is_stream(flow) {
                self.outbound_flows.entry(flow).or_default().insert(aor.to_owned());
            }
            match existing.iter_mut().find(|b| r.matches(b)) {
                Some(slot) => {
                    // The stored row is keyed by (contact, reg-id): a key change is a move.
                    if slot.contact != binding.contact
                        || slot.outbound.as_ref().map(|o| o.reg_id) != binding.outbound.as_ref().map(|o| o.reg_id)
                    {
                        changes.push(remove_change(aor, slot));
                    }
                    *slot = binding.clone();
                }
                None => existing.push(binding.clone()),
            }
            changes.push(LocationChange::Upsert(StoredBinding {
                aor: aor.to_owned(),
                contact: binding.contact,
                expires_unix: binding.expires_unix,
                q_milli: binding.q_milli,
                call_id: binding.call_id,
                cseq,
                flow: format_flow(&flow),
                path: path.join(", "),
                instance: binding.outbound.as_ref().map(|o| o.instance.clone()),
                reg_id: binding.outbound.as_ref().map_or(0, |o| o.reg_id),
            }));
        }
        let bindings = existing.clone();
        if existing.is_empty() {
            self.location.remove(aor);
        }
        Ok(Registered { bindings, changes, path, outbound: outbound > 0 })
    }

    /// Removes expired bindings; returns what to delete from the store.
    pub fn sweep(&mut self, now_unix: u64) -> Vec<LocationChange> {
        let mut changes = Vec::new();
        self.location.retain(|aor, bindings| {
            bindings.retain(|b| {
                let live = b.expires_unix > now_unix;
                if !live {
                    changes.push(remove_change(aor, b));
                }
                live
            });
            !bindings.is_empty()
        });
        changes
    }
}

/// Whether `flow` is a connection (TCP or TLS), which can close.
fn is_stream(flow: Peer) -> bool {
    matches!(flow.transport, rsip::Transport::Tcp | rsip::Transport::Tls)
}

/// The store change deleting `b`.
fn remove_change(aor: &str, b: &Binding) -> LocationChange {
    LocationChange::Remove { aor: aor.to_owned(), contact: b.contact.clone(), reg_id: b.outbound.as_ref().map_or(0, |o| o.reg_id) }
}

/// A stored binding as a live one, or `None` if it expired or its flow does not read.
fn live_binding(b: StoredBinding, now_unix: u64) -> Option<Binding> {
    if b.expires_unix <= now_unix {
        return None;
    }
    let flow = parse_flow(&b.flow)?;
    let outbound = match (b.instance, b.reg_id) {
        (Some(instance), reg_id) if reg_id > 0 => Some(Outbound { instance, reg_id }),
        _ => None,
    };
    Some(Binding {
        contact: b.contact,
        q_milli: b.q_milli,
        expires_unix: b.expires_unix,
        call_id: b.call_id,
        cseq: b.cseq,
        flow,
        path: sip_core::message::split_list(&b.path).map(str::to_owned).collect(),
        outbound,
    })
}

/// `udp:IP:PORT` / `tcp:IP:PORT` / `tls:IP:PORT`.
pub fn format_flow(flow: &Peer) -> String {
    let transport = match flow.transport {
        rsip::Transport::Tcp => "tcp",
        rsip::Transport::Tls => "tls",
        _ => "udp",
    };
    format!("{transport}:{}", flow.addr)
}

/// Parses [`format_flow`]'s text.
pub fn parse_flow(text: &str) -> Option<Peer> {
    let (transport, addr) = text.split_once(':')?;
    let addr = addr.parse().ok()?;
    match transport {
        "udp" => Some(Peer::udp(addr)),
        "tcp" => Some(Peer::tcp(addr)),
        "tls" => Some(Peer::tls(addr)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sip_core::message::{parse, Framing};

    fn register(contacts: &[&str], expires: Option<u32>, call_id: &str, cseq: u32) -> Request {
        let mut text = format!(
            "REGISTER sip:sip.test SIP/2.0\r\nVia: SIP/2.0/UDP 10.0.0.1:5070;branch=z9hG4bK{cseq}{call_id}\r\n\
             From: <sip:alice@sip.test>;tag=1\r\nTo: <sip:alice@sip.test>\r\nCall-ID: {call_id}\r\n\
             CSeq: {cseq} REGISTER\r\nMax-Forwards: 70\r\n"
        );
        for c in contacts {
            text.push_str(&format!("Contact: {c}\r\n"));
        }
        if let Some(e) = expires {
            text.push_str(&format!("Expires: {e}\r\n"));
        }
        text.push_str("Content-Length: 0\r\n\r\n");
        match parse(text.as_bytes(), Framing::Datagram).unwrap() {
            rsip::SipMessage::Request(r) => r,
            rsip::SipMessage::Response(_) => unreachable!(),
        }
    }

    fn flow() -> Peer {
        Peer::udp("192.0.2.7:40000".parse().unwrap())
    }

    fn registrar() -> Registrar {
        Registrar::new(RegistrarConfig { min_expires: 60, max_expires: 3600, default_expires: 600, max_contacts: 3 })
    }

    /// A REGISTER with extra header lines (`Supported`, `Path`, more `Via`s) inserted.
    fn register_with(contact: &str, extra: &str, call_id: &str, cseq: u32) -> Request {
        let text = format!(
            "REGISTER sip:sip.test SIP/2.0\r\n{extra}Via: SIP/2.0/TCP 10.0.0.1:5070;branch=z9hG4bK{cseq}{call_id}\r\n\
             From: <sip:alice@sip.test>;tag=1\r\nTo: <sip:alice@sip.test>\r\nCall-ID: {call_id}\r\n\
             CSeq: {cseq} REGISTER\r\nMax-Forwards: 70\r\nContact: {contact}\r\nExpires: 300\r\n\
             Content-Length: 0\r\n\r\n"
        );
        match parse(text.as_bytes(), Framing::Datagram).unwrap() {
            rsip::SipMessage::Request(r) => r,
            rsip::SipMessage::Response(_) => unreachable!(),
        }
    }

    const INSTANCE: &str = "<urn:uuid:f81d4fae-7dec-11d0-a765-00a0c91e6bf6>";

    fn tcp(port: u16) -> Peer {
        Peer::tcp(std::net::SocketAddr::from(([192, 0, 2, 7], port)))
    }

    #[test]
    fn outbound_flows_are_keyed_by_instance_and_reg_id_and_end_with_their_connection() {
        let mut r = registrar();
        let contact = |reg_id| format!("<sip:alice@10.0.0.1:5070;transport=tcp>;+sip.instance=\"{INSTANCE}\";reg-id={reg_id}");
        let supported = "Supported: path, outbound\r\n";
        let first = r.handle_register("alice@sip.test", &register_with(&contact(1), supported, "c", 1), tcp(1111), 0).unwrap();
        assert!(first.outbound, "the 200 must carry Require: outbound");
        let second = r.handle_register("alice@sip.test", &register_with(&contact(2), supported, "c", 2), tcp(2222), 10).unwrap();
        assert_eq!(second.bindings.len(), 2, "same Contact, two reg-ids: two flows");
        let found = r.lookup("alice@sip.test", 20);
        assert_eq!(found.len(), 1, "one flow per instance is used");
        assert_eq!(found[0].flow, tcp(2222), "the most recently refreshed flow");

        // A refresh of reg-id 1 over a new connection replaces that flow, not the other one.
        let refreshed = r.handle_register("alice@sip.test", &register_with(&contact(1), supported, "c", 3), tcp(3333), 30).unwrap();
        assert_eq!(refreshed.bindings.len(), 2);
        assert_eq!(r.lookup("alice@sip.test", 40)[0].flow, tcp(3333));

        let changes = r.flow_closed(tcp(3333));
        assert!(matches!(&changes[..], [LocationChange::Remove { reg_id: 1, .. }]), "{changes:?}");
        assert_eq!(r.lookup("alice@sip.test", 40)[0].flow, tcp(2222), "the backup flow takes over");
        assert!(r.flow_closed(tcp(9999)).is_empty());
    }

    #[test]
    fn outbound_bindings_on_connections_are_not_restored_after_a_restart() {
        let mut r = registrar();
        let contact = format!("<sip:alice@10.0.0.1:5070;transport=tcp>;+sip.instance=\"{INSTANCE}\";reg-id=1");
        let out = r.handle_register("alice@sip.test", &register_with(&contact, "Supported: outbound\r\n", "c", 1), tcp(1111), 0).unwrap();
        let LocationChange::Upsert(stored) = &out.changes[0] else { panic!("{:?}", out.changes) };
        let udp = StoredBinding { flow: "udp:192.0.2.7:40000".into(), ..stored.clone() };
        let mut restarted = registrar();
        assert_eq!(restarted.restore(vec![stored.clone(), udp], 1), 1, "the TCP flow died with the old process");
        assert_eq!(restarted.lookup("alice@sip.test", 1)[0].flow, flow(), "a UDP flow survives");
    }

    #[test]
    fn reg_id_without_outbound_support_is_an_ordinary_binding() {
        let mut r = registrar();
        let contact = format!("<sip:alice@10.0.0.1:5070>;+sip.instance=\"{INSTANCE}\";reg-id=1");
        let out = r.handle_register("alice@sip.test", &register_with(&contact, "", "c", 1), tcp(1111), 0).unwrap();
        assert!(!out.outbound);
        assert!(r.flow_closed(tcp(1111)).is_empty(), "a plain binding outlives its connection");
        assert_eq!(r.lookup("alice@sip.test", 1).len(), 1);
    }

    #[test]
    fn outbound_through_a_proxy_without_ob_gets_439() {
        let mut r = registrar();
        let contact = format!("<sip:alice@10.0.0.1:5070>;+sip.instance=\"{INSTANCE}\";reg-id=1");
        let proxied = "Supported: outbound\r\nVia: SIP/2.0/UDP 192.0.2.50;branch=z9hG4bKedge\r\n";
        let err = r.handle_register("alice@sip.test", &register_with(&contact, proxied, "c", 1), tcp(1), 0).unwrap_err();
        assert_eq!(err.status(), 439);
        let with_ob = format!("{proxied}Path: <sip:192.0.2.50;lr;ob>\r\n");
        assert!(r.handle_register("alice@sip.test", &register_with(&contact, &with_ob, "c", 2), tcp(1), 0).unwrap().outbound);
        let bad = format!("{contact}, <sip:alice@10.0.0.2>;+sip.instance=\"{INSTANCE}\";reg-id=2");
        let err = r.handle_register("alice@sip.test", &register_with(&bad, "Supported: outbound\r\n", "d", 1), tcp(1), 0);
        assert_eq!(err.unwrap_err().status(), 400, "one reg-id Contact per REGISTER");
    }

    #[test]
    fn path_is_kept_with_the_binding_persisted_and_restored() {
        let mut r = registrar();
        let extra = "Path: <sip:edge1.test;lr>, <sip:edge2.test;lr>\r\nPath: <sip:core.test;lr>\r\n";
        let out = r.handle_register("alice@sip.test", &register_with("<sip:alice@10.0.0.1>", extra, "c", 1), flow(), 0).unwrap();
        let expected = vec!["<sip:edge1.test;lr>".to_owned(), "<sip:edge2.test;lr>".to_owned(), "<sip:core.test;lr>".to_owned()];
        assert_eq!(out.path, expected);
        assert_eq!(r.lookup("alice@sip.test", 1)[0].path, expected);
        let LocationChange::Upsert(stored) = &out.changes[0] else { panic!("{:?}", out.changes) };
        let mut restarted = registrar();
        assert_eq!(restarted.restore(vec![stored.clone()], 1), 1);
        assert_eq!(restarted.lookup("alice@sip.test", 1)[0].path, expected, "Path survives a restart");
    }

    #[test]
    fn register_binds_contacts_with_q_and_clamped_expiry() {
        let mut r = registrar();
        let req = register(&["<sip:a@10.0.0.1:5070>;q=0.5, <sip:a@10.0.0.2>;expires=99999"], None, "c", 1);
        let out = r.handle_register("alice@sip.test", &req, flow(), 1000).unwrap();
        assert_eq!(out.bindings.len(), 2);
        assert_eq!(out.changes.len(), 2);
        let found = r.lookup("alice@sip.test", 1000);
        assert_eq!(found[0].contact, "sip:a@10.0.0.2", "q=1.0 sorts before q=0.5");
        assert_eq!(found[0].expires_unix, 1000 + 3600, "expiry clamped to max_expires");
        assert_eq!(found[1].q_milli, 500);
        assert_eq!(found[1].expires_unix, 1000 + 600, "default_expires when none is given");
        assert_eq!(found[1].flow, flow());
    }

    #[test]
    fn too_brief_expiry_gets_423_and_changes_nothing() {
        let mut r = registrar();
        let err = r.handle_register("alice@sip.test", &register(&["<sip:a@h>"], Some(10), "c", 1), flow(), 0);
        assert_eq!(err, Err(RegisterError::IntervalTooBrief(60)));
        assert_eq!(err.unwrap_err().status(), 423);
        assert!(r.lookup("alice@sip.test", 0).is_empty());
    }

    #[test]
    fn expires_zero_and_wildcard_unregister() {
        let mut r = registrar();
        r.handle_register("alice@sip.test", &register(&["<sip:a@1>", "<sip:a@2>"], Some(300), "c", 1), flow(), 0).unwrap();
        let out = r.handle_register("alice@sip.test", &register(&["<sip:a@1>"], Some(0), "c", 2), flow(), 0).unwrap();
        assert_eq!(out.bindings.len(), 1);
        assert!(matches!(&out.changes[..], [LocationChange::Remove { contact, .. }] if contact == "sip:a@1"));
        let err = r.handle_register("alice@sip.test", &register(&["*"], Some(300), "c", 3), flow(), 0).unwrap_err();
        assert_eq!(err.status(), 400, "* needs Expires: 0");
        let out = r.handle_register("alice@sip.test", &register(&["*"], Some(0), "c", 4), flow(), 0).unwrap();
        assert!(out.bindings.is_empty());
        assert_eq!(out.changes.len(), 1);
        assert_eq!(r.aor_count(), 0);
    }

    #[test]
    fn replayed_cseq_from_same_call_id_is_refused() {
        let mut r = registrar();
        r.handle_register("alice@sip.test", &register(&["<sip:a@1>"], None, "c", 5), flow(), 0).unwrap();
        let err = r.handle_register("alice@sip.test", &register(&["<sip:a@1>"], None, "c", 5), flow(), 0);
        assert_eq!(err, Err(RegisterError::OutOfOrder));
        assert!(r.handle_register("alice@sip.test", &register(&["<sip:a@1>"], None, "other", 1), flow(), 0).is_ok());
    }

    #[test]
    fn contact_limit_is_enforced() {
        let mut r = registrar();
        let req = register(&["<sip:a@1>", "<sip:a@2>", "<sip:a@3>", "<sip:a@4>"], None, "c", 1);
        assert_eq!(r.handle_register("alice@sip.test", &req, flow(), 0), Err(RegisterError::TooManyContacts));
    }

    #[test]
    fn query_without_contact_lists_bindings_and_sweep_expires_them() {
        let mut r = registrar();
        r.handle_register("alice@sip.test", &register(&["<sip:a@1>"], Some(60), "c", 1), flow(), 100).unwrap();
        let out = r.handle_register("alice@sip.test", &register(&[], None, "c", 2), flow(), 120).unwrap();
        assert_eq!(out.bindings.len(), 1);
        assert!(out.changes.is_empty());
        assert!(r.sweep(159).is_empty());
        assert_eq!(r.sweep(160).len(), 1);
        assert!(r.lookup("alice@sip.test", 160).is_empty());
    }

    #[test]
    fn restore_skips_expired_bindings() {
        let mut r = registrar();
        let b = |contact: &str, exp| StoredBinding {
            aor: "alice@sip.test".into(),
            contact: contact.into(),
            expires_unix: exp,
            q_milli: 1000,
            call_id: "c".into(),
            cseq: 1,
            flow: "tcp:127.0.0.1:9".into(),
            path: String::new(),
            instance: None,
            reg_id: 0,
        };
        assert_eq!(r.restore(vec![b("sip:a@1", 50), b("sip:a@2", 500)], 100), 1);
        assert_eq!(r.lookup("alice@sip.test", 100)[0].flow, Peer::tcp("127.0.0.1:9".parse().unwrap()));
    }

    #[test]
    fn a_shared_store_is_the_truth_for_lookups_and_registers_but_not_for_other_nodes_connections() {
        let stored = |contact: &str, flow: &str, exp| StoredBinding {
            aor: "alice@sip.test".into(),
            contact: contact.into(),
            expires_unix: exp,
            q_milli: 1000,
            call_id: "c".into(),
            cseq: 1,
            flow: flow.into(),
            path: "<sip:127.0.0.1:5064;lr>".into(),
            instance: None,
            reg_id: 0,
        };
        let mut r = registrar();
        // This node holds a binding another node has since removed from the store.
        r.handle_register("alice@sip.test", &register(&["<sip:alice@10.0.0.1:5070>"], Some(600), "old", 1), flow(), 0).unwrap();
        let in_store = vec![
            stored("sip:alice@10.0.0.2:5070", "udp:127.0.0.1:5064", 500),
            // Another node's TCP connection: not usable from here.
            stored("sip:alice@10.0.0.3:5070;transport=tcp", "tcp:192.0.2.9:4000", 500),
            stored("sip:alice@10.0.0.4:5070", "udp:127.0.0.1:5064", 50),
            StoredBinding { aor: "bob@sip.test".into(), ..stored("sip:bob@10.0.0.5:5070", "udp:127.0.0.1:5064", 500) },
        ];
        let found = r.lookup_in("alice@sip.test", in_store.clone(), 100);
        let contacts: Vec<&str> = found.iter().map(|b| b.contact.as_str()).collect();
        assert_eq!(contacts, ["sip:alice@10.0.0.2:5070"], "the store's live UDP binding only");
        assert_eq!(found[0].path, ["<sip:127.0.0.1:5064;lr>"]);
        // Before a REGISTER the table takes the store's bindings: the removed one is gone, so
        // max_contacts and the 200's list count what the store has.
        r.refresh("alice@sip.test", in_store, 100);
        let contacts: Vec<String> = r.lookup("alice@sip.test", 100).into_iter().map(|b| b.contact).collect();
        assert_eq!(contacts, ["sip:alice@10.0.0.2:5070"]);
        r.refresh("alice@sip.test", Vec::new(), 100);
        assert_eq!(r.aor_count(), 0, "an AoR the store has none of is dropped");
    }

    #[test]
    fn list_splitting_respects_quotes_and_brackets() {
        let items: Vec<&str> = sip_core::message::split_list("\"a, b\" <sip:x@y;p=1,2>, <sip:z>, ").collect();
        assert_eq!(items, vec!["\"a, b\" <sip:x@y;p=1,2>", "<sip:z>"]);
    }
}
