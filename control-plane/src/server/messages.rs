//! Page-mode instant messages (RFC 3428 MESSAGE) between subscribers, RFC 5359 §2.6's transfer
//! by instant message among them: a subscriber's MESSAGE to another is sent on to each of the
//! other's registered contacts, each a request of ours, and the sender gets the first 2xx (else
//! the best failure, RFC 3261 §16.7).
//!
//! ```text
//!  alice ──MESSAGE bob── digest, 404/480/513, 482 (it came back to us) ─► MESSAGE to each of
//!        bob's contacts ◄── 200 (the first 2xx) … or the best final response; after 30 s the
//!        best so far (408 if none), before the sender's own transaction gives up
//! ```

use super::*;

/// Largest body relayed (RFC 3428 §8: a MESSAGE over UDP stays under 1300 bytes).
pub const MAX_MESSAGE_BODY: usize = 1300;
/// Messages waiting for their recipients' answers at most (more get 503).
pub const MAX_PENDING: usize = 10_000;
/// How long the sender waits for an answer before it gets the best one so far.
const ANSWER_WITHIN: std::time::Duration = std::time::Duration::from_secs(30);

/// A MESSAGE sent on to a subscriber's contacts.
#[derive(Debug)]
pub(super) struct Relayed {
    origin: TransactionKey,
    request: Request,
    /// Our requests not answered finally yet, and the final failures so far.
    keys: Vec<TransactionKey>,
    failures: Vec<u16>,
}

impl ControlPlane {
    /// An out-of-dialog MESSAGE.
    pub(super) fn on_message(&mut self, key: &TransactionKey, request: &Request, source: Peer, now: Now, store: &mut dyn Store) {
        let hops = match message::max_forwards(&request.headers) {
            Ok(hops) => hops,
            Err(sip_core::message::ParseError::MissingHeader(_)) => 70,
            Err(_) => {
                self.reply(key, request, 400, now);
                return;
            }
        };
        if hops == 0 {
            self.reply(key, request, 483, now);
            return;
        }
        // One of ours, come back (a contact that routes to us): a Via with our sent-by on any
        // transport (RFC 3261 §16.3's loop; we never spiral a MESSAGE).
        let ours: Vec<String> = [rsip::Transport::Udp, rsip::Transport::Tcp, rsip::Transport::Tls]
            .into_iter()
            .map(|t| self.config.advertise_for(t).to_ascii_lowercase())
            .collect();
        let looped = request.headers.iter().any(|h| match h {
            Header::Via(v) => v.value().split(',').any(|via| {
                let sent_by = via.split_whitespace().nth(1).unwrap_or_default();
                let sent_by = sent_by.split(';').next().unwrap_or_default().to_ascii_lowercase();
                ours.contains(&sent_by)
            }),
            _ => false,
        });
        if looped {
            self.reply(key, request, 482, now);
            return;
        }
        let Some(sender) = self.requester(key, request, source, now, store) else { return };
        let Some(target) = self.subscriber_addressed(key, request, now, store) else { return };
        if request.body.len() > MAX_MESSAGE_BODY {
            self.reply(key, request, 513, now);
            return;
        }
        let content_type = request.headers.iter().find_map(|h| match h {
            Header::ContentType(c) => Some(c.value().to_owned()),
            _ => None,
        });
        if content_type.is_none() && !request.body.is_empty() {
            let response = self.response(request, 400, Some("Content-Type Missing"));
            self.respond(key, response, now);
            return;
        }
        if self.messages.len() >= MAX_PENDING {
            self.reply(key, request, 503, now);
            return;
        }
        let contacts = crate::routing::shared_lookup(&self.config, store, &self.registrar, &target, now.unix());
        if contacts.is_empty() {
            self.reply(key, request, 480, now);
            return;
        }
        let (Some(from), Some(to)) = (from_value(&request.headers), to_value(&request.headers)) else {
            self.reply(key, request, 400, now);
            return;
        };
        let mut extra = format!("Max-Forwards: {}\r\n", hops - 1);
        if let Some(aor) = &sender {
            extra.push_str(&format!("P-Asserted-Identity: <sip:{aor}>\r\n"));
        }
        for name in ["Date", "Subject", "Priority"] {
            if let Some(v) = message::header(&request.headers, name) {
                extra.push_str(&format!("{name}: {v}\r\n"));
            }
        }
        let id = self.next_message;
        self.next_message += 1;
        let mut keys = Vec::new();
        for contact in contacts {
            let call_id = format!("{}-m", self.random.call_id());
            let branch = self.random.branch();
            let mut dialog =
                sip_core::dialog::Dialog::uac(call_id, from.to_owned(), to.to_owned(), contact.contact, contact.path, contact.flow);
            let sent_by = self.config.advertise_for(contact.flow.transport);
            let body = content_type.as_deref().map(|c| (c, request.body.as_slice()));
            let Ok(out) = dialog.request("MESSAGE", &sent_by, &branch, &extra, body) else { continue };
            let Ok(client) = TransactionKey::for_request(&out) else { continue };
            if let Err(e) = self.layer.start_client(out, contact.flow, now.instant) {
                tracing::debug!(error = %e, "a MESSAGE could not be sent on");
                continue;
            }
            self.message_keys.insert(client.clone(), id);
            keys.push(client);
        }
        if keys.is_empty() {
            self.reply(key, request, 480, now);
            return;
        }
        self.stats.messages_relayed += 1;
        self.messages.insert(id, Relayed { origin: key.clone(), request: request.clone(), keys, failures: Vec::new() });
        self.message_deadlines.push_back((now.instant + ANSWER_WITHIN, id));
    }

    /// Messages whose recipients took too long: their senders get the best answer so far.
    pub(super) fn messages_due(&mut self, now: Now) {
        while let Some(&(at, id)) = self.message_deadlines.front() {
            if at > now.instant {
                break;
            }
            self.message_deadlines.pop_front();
            if self.messages.contains_key(&id) {
                self.message_answer(id, None, now);
            }
        }
    }

    /// A response to a MESSAGE of ours; whether it was one.
    pub(super) fn message_response(&mut self, key: &TransactionKey, status: u16, now: Now) -> bool {
        let Some(&id) = self.message_keys.get(key) else { return false };
        if status < 200 {
            return true;
        }
        self.message_keys.remove(key);
        self.message_final(id, key, status, now);
        true
    }

    /// A MESSAGE of ours timed out or could not be sent; whether it was one.
    pub(super) fn message_failed(&mut self, key: &TransactionKey, now: Now) -> bool {
        let Some(id) = self.message_keys.remove(key) else { return false };
        self.message_final(id, key, 408, now);
        true
    }

    fn message_final(&mut self, id: u64, key: &TransactionKey, status: u16, now: Now) {
        let Some(relayed) = self.messages.get_mut(&id) else { return };
        relayed.keys.retain(|k| k != key);
        if (200..300).contains(&status) {
            // The first 2xx is the sender's; the other contacts' answers are not awaited.
            self.message_answer(id, Some(status), now);
            return;
        }
        relayed.failures.push(status);
        if relayed.keys.is_empty() {
            self.message_answer(id, None, now);
        }
    }

    /// Answers message `id`'s sender with `status`, else the best of its failures (408 if none).
    fn message_answer(&mut self, id: u64, status: Option<u16>, now: Now) {
        let Some(relayed) = self.messages.remove(&id) else { return };
        for key in &relayed.keys {
            self.message_keys.remove(key);
        }
        let status = status.unwrap_or_else(|| match crate::routing::outcome_of(&relayed.failures, &[]) {
            _ if relayed.failures.is_empty() => 408,
            crate::routing::Outcome::Busy(s) | crate::routing::Outcome::Failed(s) => match s {
                // A contact's redirect or challenge is not the sender's to follow.
                300..=399 => 480,
                401 | 407 => 403,
                s => s,
            },
            _ => 480,
        });
        self.reply(&relayed.origin, &relayed.request, status, now);
    }
}
