//! The dialog event package (RFC 4235; SUBSCRIBE/NOTIFY, RFC 6665) as a sans-IO notifier: a
//! phone subscribes to a subscriber's dialogs (busy-lamp field, the picker's view of a ringing
//! call, RFC 5359 §2.17's automatic redial waiting for a busy callee to be free) and is told,
//! with a full `application/dialog-info+xml` document, every time they change.
//!
//! ```text
//!  watcher ──SUBSCRIBE bob (Event: dialog)──► server: digest, 404/403/489 ─► handle_subscribe
//!          ◄── 200 (Expires) ; ◄── NOTIFY (bob's dialogs now, version 0)
//!  bob's calls ring, answer, end ─► server ─► changed(bob, dialogs) ─► NOTIFY (version n+1)
//!  refresh: SUBSCRIBE in the dialog ─► 200 + NOTIFY; Expires: 0 or expiry ─► NOTIFY terminated
//!  a NOTIFY answered 481 or not at all: the subscription ends (RFC 6665 §4.2.2)
//! ```
//!
//! What a dialog is made of is the B2BUA's business ([`DialogView`]); this module keeps the
//! subscriptions, their dialogs and timers, and writes the documents.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rsip::headers::UntypedHeader;
use rsip::{Header, Request, Response};
use sip_core::dialog::Dialog;
use sip_core::message::{call_id, header, response_for};
use sip_core::transaction::{Peer, TransactionKey};
use sip_core::Random;

use crate::b2bua::SipOut;
use crate::config::Config;

/// Shortest subscription accepted (RFC 6665 §4.2.1.1: shorter gets 423), longest granted, and
/// the default when the SUBSCRIBE has no Expires.
pub const MIN_EXPIRES: u32 = 60;
pub const MAX_EXPIRES: u32 = 3600;
pub const DEFAULT_EXPIRES: u32 = 3600;
/// Subscriptions at most, in all and per watched subscriber (more get 503 / 403).
pub const MAX_SUBSCRIPTIONS: usize = 100_000;
pub const MAX_PER_TARGET: usize = 100;

/// One dialog of a subscriber, as that subscriber's phone sees it (RFC 4235 §4.1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DialogView {
    /// The dialog's Call-ID and the phone's (local) and the other side's (remote) tags; the
    /// phone's tag is unknown until it answered with one.
    pub call_id: String,
    pub local_tag: Option<String>,
    pub remote_tag: String,
    /// The subscriber called (`initiator`) or is called (`recipient`).
    pub initiator: bool,
    /// `early` (ringing) or `confirmed` (answered).
    pub confirmed: bool,
    /// The other party's URI.
    pub remote: String,
}

/// Counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DialogEventStats {
    /// Subscriptions accepted, refused (any status), ended (unsubscribed, expired, failed).
    pub subscriptions: u64,
    pub refused: u64,
    pub ended: u64,
    /// NOTIFYs sent.
    pub notifies: u64,
}

#[derive(Debug)]
struct Subscription {
    /// Ours as notifier (we are its UAS).
    dialog: Dialog,
    /// The watched subscriber (AoR).
    target: String,
    /// The next document's version (RFC 4235 §4.1.1: +1 per NOTIFY).
    version: u32,
    expires: Instant,
}

/// The subscriptions to subscribers' dialogs.
#[derive(Debug)]
pub struct DialogEvents {
    config: Arc<Config>,
    random: Random,
    /// By the subscription dialog's Call-ID and our tag ([`key`]): a phone may reuse a call's
    /// Call-ID for a subscription, and the tag tells them apart.
    subs: HashMap<String, Subscription>,
    by_target: HashMap<String, Vec<String>>,
    /// Our NOTIFYs in flight: their subscription.
    notifies: HashMap<TransactionKey, String>,
    deadlines: BinaryHeap<Reverse<(Instant, String)>>,
    sip: std::collections::VecDeque<SipOut>,
    stats: DialogEventStats,
}

impl DialogEvents {
    /// A notifier for `config`, with its own randomness (tags, branches).
    pub fn new(config: Arc<Config>, random: Random) -> Self {
        DialogEvents {
            config,
            random,
            subs: HashMap::new(),
            by_target: HashMap::new(),
            notifies: HashMap::new(),
            deadlines: BinaryHeap::new(),
            sip: std::collections::VecDeque::new(),
            stats: DialogEventStats::default(),
        }
    }

    /// Counters.
    pub fn stats(&self) -> DialogEventStats {
        self.stats
    }

    /// Subscriptions in force.
    pub fn len(&self) -> usize {
        self.subs.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.subs.is_empty()
    }

    /// Whether `target` (an AoR) has watchers.
    pub fn watched(&self, target: &str) -> bool {
        self.by_target.contains_key(target)
    }

    /// Whether `call_id` with our tag `tag` (an in-dialog request's To tag) is one of our
    /// subscription dialogs.
    pub fn owns(&self, call_id: &str, tag: &str) -> bool {
        self.subs.contains_key(&key(call_id, tag))
    }

    /// A new SUBSCRIBE (out of any dialog; the server authenticated it and checked that
    /// `target` is a subscriber the watcher may watch) with `dialogs`, the target's now.
    pub fn handle_subscribe(
        &mut self,
        key: TransactionKey,
        request: &Request,
        source: Peer,
        target: &str,
        dialogs: &[DialogView],
        now: Instant,
    ) {
        if let Err(status) = acceptable(request) {
            self.refuse(key, request, status);
            return;
        }
        let expires = match requested_expires(request) {
            Ok(0) => {
                // A fetch (RFC 6665 §4.4.3): one NOTIFY, no subscription.
                0
            }
            Ok(e) => e,
            Err(status) => {
                self.refuse(key, request, status);
                return;
            }
        };
        let per_target = self.by_target.get(target).map_or(0, Vec::len);
        if expires > 0 && (self.subs.len() >= MAX_SUBSCRIPTIONS || per_target >= MAX_PER_TARGET) {
            let status = if per_target >= MAX_PER_TARGET { 403 } else { 503 };
            self.refuse(key, request, status);
            return;
        }
        let tag = self.random.tag();
        let Ok(mut dialog) = Dialog::uas(request, &tag, source) else {
            self.refuse(key, request, 400);
            return;
        };
        dialog.confirm();
        let call_id = self::key(&dialog.call_id, &tag);
        let mut ok = response_for(request, 200, None, Some(&tag));
        ok.headers.push(Header::Expires(rsip::headers::Expires::from(expires.to_string())));
        ok.headers.push(Header::Contact(rsip::headers::Contact::new(crate::b2bua::our_contact(&self.config, &source))));
        self.sip.push_back(SipOut::Respond(key, ok));
        self.stats.subscriptions += 1;
        let sub = Subscription { dialog, target: target.to_owned(), version: 0, expires: now + Duration::from_secs(u64::from(expires)) };
        self.subs.insert(call_id.clone(), sub);
        if expires == 0 {
            self.notify(&call_id, dialogs, Some("timeout"), now);
            return;
        }
        self.by_target.entry(target.to_owned()).or_default().push(call_id.clone());
        self.deadlines.push(Reverse((now + Duration::from_secs(u64::from(expires)), call_id.clone())));
        self.notify(&call_id, dialogs, None, now);
    }

    /// A SUBSCRIBE in one of our subscription dialogs: a refresh, or (Expires: 0) the end.
    pub fn handle_in_dialog(&mut self, key: TransactionKey, request: &Request, dialogs_of: impl Fn(&str) -> Vec<DialogView>, now: Instant) {
        let tag = sip_core::message::to_value(&request.headers).and_then(sip_core::message::tag_of).unwrap_or_default();
        let Some(id) = call_id(&request.headers).map(|c| self::key(c, tag)) else { return };
        let Some(sub) = self.subs.get_mut(&id) else {
            self.refuse(key, request, 481);
            return;
        };
        if sub.dialog.receive(request).is_err() {
            self.refuse(key, request, 500);
            return;
        }
        if request.method != rsip::Method::Subscribe {
            // NOTIFY is ours to send; anything else has no meaning here.
            self.refuse(key, request, 405);
            return;
        }
        if let Err(status) = acceptable(request) {
            self.refuse(key, request, status);
            return;
        }
        let expires = match requested_expires(request) {
            Ok(e) => e,
            Err(status) => {
                self.refuse(key, request, status);
                return;
            }
        };
        let tag = sub.dialog.local_tag().to_owned();
        let mut ok = response_for(request, 200, None, Some(&tag));
        ok.headers.push(Header::Expires(rsip::headers::Expires::from(expires.to_string())));
        self.sip.push_back(SipOut::Respond(key, ok));
        let target = sub.target.clone();
        sub.expires = now + Duration::from_secs(u64::from(expires));
        let dialogs = dialogs_of(&target);
        if expires == 0 {
            self.notify(&id, &dialogs, Some("timeout"), now);
        } else {
            self.deadlines.push(Reverse((sub.expires, id.clone())));
            self.notify(&id, &dialogs, None, now);
        }
    }

    /// `target`'s dialogs changed to `dialogs`: every watcher gets the new document.
    pub fn changed(&mut self, target: &str, dialogs: &[DialogView], now: Instant) {
        let Some(ids) = self.by_target.get(target).cloned() else { return };
        for id in ids {
            self.notify(&id, dialogs, None, now);
        }
    }

    /// A response to one of our NOTIFYs; whether it was one. A watcher that no longer has the
    /// subscription (481), or refuses it for good (other 4xx but 401, 407, 491; 6xx), ends it
    /// (RFC 6665 §4.2.2); a passing failure (5xx, 491, a challenge) does not.
    pub fn handle_response(&mut self, key: &TransactionKey, response: &Response) -> bool {
        let Some(id) = self.notifies.get(key).cloned() else { return false };
        let status = response.status_code.code();
        if status >= 200 {
            self.notifies.remove(key);
        }
        let for_good = (400..500).contains(&status) && !matches!(status, 401 | 407 | 491) || status >= 600;
        if for_good {
            tracing::info!(status, "a watcher refused our NOTIFY: its subscription ends");
            self.remove(&id);
        }
        true
    }

    /// One of our NOTIFYs timed out or could not be sent; whether it was one.
    pub fn handle_failed(&mut self, key: &TransactionKey) -> bool {
        let Some(id) = self.notifies.remove(key) else { return false };
        self.remove(&id);
        true
    }

    /// A client transaction ended; whether it was a NOTIFY of ours.
    pub fn handle_terminated(&mut self, key: &TransactionKey) -> bool {
        self.notifies.remove(key).is_some()
    }

    /// Subscriptions whose time ran out get their last NOTIFY (terminated;reason=timeout).
    pub fn handle_timeout(&mut self, dialogs_of: impl Fn(&str) -> Vec<DialogView>, now: Instant) {
        while let Some(Reverse((at, id))) = self.deadlines.peek().cloned() {
            if at > now {
                break;
            }
            self.deadlines.pop();
            let Some(sub) = self.subs.get(&id) else { continue };
            if sub.expires > now {
                // Refreshed since: a later deadline is queued.
                continue;
            }
            let dialogs = dialogs_of(&sub.target);
            self.notify(&id, &dialogs, Some("timeout"), now);
        }
    }

    /// When [`Self::handle_timeout`] must next run.
    pub fn poll_timeout(&mut self) -> Option<Instant> {
        while let Some(Reverse((at, id))) = self.deadlines.peek() {
            if self.subs.get(id).is_some_and(|s| s.expires == *at) {
                return Some(*at);
            }
            self.deadlines.pop();
        }
        None
    }

    /// Next SIP to send.
    pub fn poll_sip(&mut self) -> Option<SipOut> {
        self.sip.pop_front()
    }

    fn refuse(&mut self, key: TransactionKey, request: &Request, status: u16) {
        self.stats.refused += 1;
        let tag = self.random.tag();
        let mut response = response_for(request, status, None, Some(&tag));
        match status {
            489 => response.headers.push(Header::Other("Allow-Events".into(), "dialog".into())),
            423 => response.headers.push(Header::Other("Min-Expires".into(), MIN_EXPIRES.to_string())),
            406 => response.headers.push(Header::Accept(rsip::headers::Accept::new("application/dialog-info+xml"))),
            _ => {}
        }
        self.sip.push_back(SipOut::Respond(key, response));
    }

    /// Sends subscription `id` the document of `dialogs`; with `ended` (a reason), as its last.
    fn notify(&mut self, id: &str, dialogs: &[DialogView], ended: Option<&str>, now: Instant) {
        let branch = self.random.branch();
        let Some(sub) = self.subs.get_mut(id) else { return };
        let state = match ended {
            Some(reason) => format!("terminated;reason={reason}"),
            None => format!("active;expires={}", sub.expires.saturating_duration_since(now).as_secs()),
        };
        let body = document(&sub.target, sub.version, dialogs);
        sub.version = sub.version.wrapping_add(1);
        let extra = format!(
            "Event: dialog\r\nSubscription-State: {state}\r\nContact: {}\r\n",
            crate::b2bua::our_contact(&self.config, &sub.dialog.peer)
        );
        let sent_by = self.config.advertise_for(sub.dialog.peer.transport);
        match sub.dialog.request("NOTIFY", &sent_by, &branch, &extra, Some(("application/dialog-info+xml", body.as_bytes()))) {
            Ok(request) => {
                let peer = sub.dialog.peer;
                if let Ok(key) = TransactionKey::for_request(&request) {
                    self.notifies.insert(key, id.to_owned());
                }
                self.sip.push_back(SipOut::Request(request, peer));
                self.stats.notifies += 1;
            }
            Err(e) => tracing::error!(error = %e, "cannot build a NOTIFY"),
        }
        if ended.is_some() {
            self.remove(id);
        }
    }

    fn remove(&mut self, id: &str) {
        let Some(sub) = self.subs.remove(id) else { return };
        self.stats.ended += 1;
        if let Some(ids) = self.by_target.get_mut(&sub.target) {
            ids.retain(|i| i != id);
            if ids.is_empty() {
                self.by_target.remove(&sub.target);
            }
        }
    }
}

/// A subscription's key: its Call-ID and our tag.
fn key(call_id: &str, tag: &str) -> String {
    format!("{call_id};{tag}")
}

/// Whether a SUBSCRIBE asks for what this notifier gives: `Event: dialog` (else 489) and, if it
/// says what it accepts, dialog-info documents (else 406).
fn acceptable(request: &Request) -> Result<(), u16> {
    let typed = request.headers.iter().find_map(|h| match h {
        Header::Event(e) => Some(e.value().to_owned()),
        _ => None,
    });
    let event = typed.or_else(|| header(&request.headers, "o").map(str::to_owned)).unwrap_or_default();
    let package = event.split(';').next().unwrap_or_default().trim();
    if !package.eq_ignore_ascii_case("dialog") {
        return Err(489);
    }
    let accepts: Vec<String> = request
        .headers
        .iter()
        .filter_map(|h| match h {
            Header::Accept(a) => Some(a.value().to_ascii_lowercase()),
            _ => None,
        })
        .collect();
    let ok = accepts.is_empty()
        || accepts.iter().any(|v| {
            v.split(',').any(|t| {
                let t = t.split(';').next().unwrap_or_default().trim();
                t == "application/dialog-info+xml" || t == "application/*" || t == "*/*"
            })
        });
    if ok {
        Ok(())
    } else {
        Err(406)
    }
}

/// The subscription time a SUBSCRIBE asks for, cut to [`MAX_EXPIRES`]; below [`MIN_EXPIRES`]
/// (but not 0) is 423, unreadable 400.
fn requested_expires(request: &Request) -> Result<u32, u16> {
    let value = request.headers.iter().find_map(|h| match h {
        Header::Expires(e) => Some(e.value().trim().to_owned()),
        _ => None,
    });
    match value {
        None => Ok(DEFAULT_EXPIRES),
        Some(v) => match v.parse::<u32>() {
            Ok(0) => Ok(0),
            Ok(e) if e < MIN_EXPIRES => Err(423),
            Ok(e) => Ok(e.min(MAX_EXPIRES)),
            Err(_) => Err(400),
        },
    }
}

/// The dialog-info document (RFC 4235 §4) of `target` with `dialogs`, full state.
pub fn document(target: &str, version: u32, dialogs: &[DialogView]) -> String {
    let mut xml = format!(
        "<?xml version=\"1.0\"?>\r\n<dialog-info xmlns=\"urn:ietf:params:xml:ns:dialog-info\" version=\"{version}\" state=\"full\" entity=\"sip:{}\">\r\n",
        escape(target)
    );
    for d in dialogs {
        let local = d.local_tag.as_deref().map(|t| format!(" local-tag=\"{}\"", escape(t))).unwrap_or_default();
        xml.push_str(&format!(
            "<dialog id=\"{id}\" call-id=\"{id}\"{local} remote-tag=\"{remote_tag}\" direction=\"{direction}\">\
             <state>{state}</state><remote><identity>{remote}</identity><target uri=\"{remote}\"/></remote></dialog>\r\n",
            id = escape(&d.call_id),
            remote_tag = escape(&d.remote_tag),
            direction = if d.initiator { "initiator" } else { "recipient" },
            state = if d.confirmed { "confirmed" } else { "early" },
            remote = escape(&d.remote),
        ));
    }
    xml.push_str("</dialog-info>\r\n");
    xml
}

fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c if c.is_control() => {}
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_document_lists_each_dialog_with_its_tags_state_and_party_escaped() {
        let dialogs = [
            DialogView {
                call_id: "c1-b2b".into(),
                local_tag: None,
                remote_tag: "t9".into(),
                initiator: false,
                confirmed: false,
                remote: "sip:alice@sip.test".into(),
            },
            DialogView {
                call_id: "c<2>".into(),
                local_tag: Some("l\"1".into()),
                remote_tag: "r1".into(),
                initiator: true,
                confirmed: true,
                remote: "sip:+4930&1@sip.test".into(),
            },
        ];
        let xml = document("bob@sip.test", 7, &dialogs);
        assert!(xml.contains("version=\"7\" state=\"full\" entity=\"sip:bob@sip.test\""), "{xml}");
        assert!(
            xml.contains("<dialog id=\"c1-b2b\" call-id=\"c1-b2b\" remote-tag=\"t9\" direction=\"recipient\"><state>early</state>"),
            "{xml}"
        );
        assert!(
            xml.contains(
                "call-id=\"c&lt;2&gt;\" local-tag=\"l&quot;1\" remote-tag=\"r1\" direction=\"initiator\"><state>confirmed</state>"
            ),
            "{xml}"
        );
        assert!(xml.contains("<identity>sip:+4930&amp;1@sip.test</identity>"), "{xml}");
        assert_eq!(document("bob@sip.test", 0, &[]).matches("<dialog ").count(), 0);
    }
}
