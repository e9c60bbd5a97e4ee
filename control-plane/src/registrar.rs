//! The registrar and location service (RFC 3261 §10.3), sans-IO.
//!
//! [`Registrar::handle_register`] applies an (already authenticated) REGISTER to the in-memory
//! location table and returns the bindings to list in the 200 plus the [`LocationChange`]s for
//! the [`Store`](crate::store::Store) to persist. Time is UNIX seconds passed in, because
//! registrations outlive the process. Lookups ([`Registrar::lookup`]) are served from memory,
//! best q first; [`Registrar::sweep`] drops expired bindings.

use std::collections::HashMap;

use rsip::headers::{ToTypedHeader, UntypedHeader};
use rsip::{Header, Request};

use crate::config::RegistrarConfig;
use crate::sip::transaction::Peer;
use crate::store::{LocationChange, StoredBinding};

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
    /// lets phones behind NAT be reached (the contact's own address is often private).
    pub flow: Peer,
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
}

impl RegisterError {
    /// The response status.
    pub fn status(&self) -> u16 {
        match self {
            RegisterError::BadContact(_) => 400,
            RegisterError::IntervalTooBrief(_) => 423,
            RegisterError::OutOfOrder => 500,
            RegisterError::TooManyContacts => 403,
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
}

/// The location table.
#[derive(Debug)]
pub struct Registrar {
    config: RegistrarConfig,
    location: HashMap<String, Vec<Binding>>,
}

struct RequestedContact {
    contact: String,
    expires: u32,
    q_milli: u16,
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
        Registrar { config, location: HashMap::new() }
    }

    /// Loads persisted bindings (at start), skipping expired ones and unparsable flows.
    pub fn restore(&mut self, stored: Vec<StoredBinding>, now_unix: u64) -> usize {
        let mut restored = 0;
        for b in stored {
            if b.expires_unix <= now_unix {
                continue;
            }
            let Some(flow) = parse_flow(&b.flow) else { continue };
            self.location.entry(b.aor).or_default().push(Binding {
                contact: b.contact,
                q_milli: b.q_milli,
                expires_unix: b.expires_unix,
                call_id: b.call_id,
                cseq: b.cseq,
                flow,
            });
            restored += 1;
        }
        restored
    }

    /// Registered addresses-of-record.
    pub fn aor_count(&self) -> usize {
        self.location.len()
    }

    /// Live bindings of `aor`, best q first, then most recently refreshed.
    pub fn lookup(&self, aor: &str, now_unix: u64) -> Vec<Binding> {
        let mut out: Vec<Binding> = self
            .location
            .get(aor)
            .map(|v| v.iter().filter(|b| b.expires_unix > now_unix).cloned().collect())
            .unwrap_or_default();
        out.sort_by(|a, b| b.q_milli.cmp(&a.q_milli).then(b.expires_unix.cmp(&a.expires_unix)));
        out
    }

    /// Applies a REGISTER for `aor` that arrived on `flow` (§10.3 steps 6–8).
    pub fn handle_register(
        &mut self,
        aor: &str,
        request: &Request,
        flow: Peer,
        now_unix: u64,
    ) -> Result<Registered, RegisterError> {
        let header_expires = expires_header(request);
        let call_id = crate::sip::message::call_id(&request.headers).unwrap_or_default().to_owned();
        let cseq = crate::sip::message::cseq(&request.headers).map(|c| c.seq).unwrap_or(0);

        let mut wildcard = false;
        let mut requested = Vec::new();
        for header in request.headers.iter() {
            let Header::Contact(value) = header else { continue };
            for item in crate::sip::message::split_list(value.value()) {
                if item == "*" {
                    wildcard = true;
                    continue;
                }
                let typed = rsip::headers::Contact::new(item)
                    .typed()
                    .map_err(|_| RegisterError::BadContact(item.chars().take(80).collect()))?;
                let mut expires = header_expires;
                let mut q_milli = 1000;
                for param in &typed.params {
                    match param {
                        rsip::Param::Expires(e) => {
                            expires = Some(
                                e.value().trim().parse().map_err(|_| RegisterError::BadContact("expires".into()))?,
                            )
                        }
                        rsip::Param::Q(q) => {
                            q_milli = parse_q(q.value()).ok_or_else(|| RegisterError::BadContact("q".into()))?
                        }
                        _ => {}
                    }
                }
                let expires = expires.unwrap_or(self.config.default_expires);
                requested.push(RequestedContact { contact: typed.uri.to_string(), expires, q_milli });
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
                changes.push(LocationChange::Remove { aor: aor.to_owned(), contact: b.contact });
            }
            self.location.remove(aor);
            return Ok(Registered { bindings: Vec::new(), changes });
        }

        // Check everything before changing anything: a refused REGISTER changes nothing.
        for r in &requested {
            if r.expires != 0 && r.expires < self.config.min_expires {
                return Err(RegisterError::IntervalTooBrief(self.config.min_expires));
            }
            if let Some(b) = existing.iter().find(|b| b.contact == r.contact) {
                if b.call_id == call_id && cseq <= b.cseq {
                    return Err(RegisterError::OutOfOrder);
                }
            }
        }
        let added = requested
            .iter()
            .filter(|r| r.expires != 0 && !existing.iter().any(|b| b.contact == r.contact))
            .count();
        let removed = requested.iter().filter(|r| r.expires == 0 && existing.iter().any(|b| b.contact == r.contact)).count();
        if existing.len() + added - removed > self.config.max_contacts {
            return Err(RegisterError::TooManyContacts);
        }

        for r in requested {
            if r.expires == 0 {
                if let Some(pos) = existing.iter().position(|b| b.contact == r.contact) {
                    existing.remove(pos);
                    changes.push(LocationChange::Remove { aor: aor.to_owned(), contact: r.contact });
                }
                continue;
            }
            let binding = Binding {
                contact: r.contact,
                q_milli: r.q_milli,
                expires_unix: now_unix + u64::from(r.expires.min(self.config.max_expires)),
                call_id: call_id.clone(),
                cseq,
                flow,
            };
            changes.push(LocationChange::Upsert(StoredBinding {
                aor: aor.to_owned(),
                contact: binding.contact.clone(),
                expires_unix: binding.expires_unix,
                q_milli: binding.q_milli,
                call_id: binding.call_id.clone(),
                cseq,
                flow: format_flow(&flow),
            }));
            match existing.iter_mut().find(|b| b.contact == binding.contact) {
                Some(slot) => *slot = binding,
                None => existing.push(binding),
            }
        }
        let bindings = existing.clone();
        if existing.is_empty() {
            self.location.remove(aor);
        }
        Ok(Registered { bindings, changes })
    }

    /// Removes expired bindings; returns what to delete from the store.
    pub fn sweep(&mut self, now_unix: u64) -> Vec<LocationChange> {
        let mut changes = Vec::new();
        self.location.retain(|aor, bindings| {
            bindings.retain(|b| {
                let live = b.expires_unix > now_unix;
                if !live {
                    changes.push(LocationChange::Remove { aor: aor.clone(), contact: b.contact.clone() });
                }
                live
            });
            !bindings.is_empty()
        });
        changes
    }
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
    use crate::sip::message::{parse, Framing};

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
        r.handle_register("alice@sip.test", &register(&["<sip:a@1>", "<sip:a@2>"], Some(300), "c", 1), flow(), 0)
            .unwrap();
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
        };
        assert_eq!(r.restore(vec![b("sip:a@1", 50), b("sip:a@2", 500)], 100), 1);
        assert_eq!(r.lookup("alice@sip.test", 100)[0].flow, Peer::tcp("127.0.0.1:9".parse().unwrap()));
    }

    #[test]
    fn list_splitting_respects_quotes_and_brackets() {
        let items: Vec<&str> = crate::sip::message::split_list("\"a, b\" <sip:x@y;p=1,2>, <sip:z>, ").collect();
        assert_eq!(items, vec!["\"a, b\" <sip:x@y;p=1,2>", "<sip:z>"]);
    }
}
