//! Click-to-dial by REFER (RFC 5359 §2.18, RFC 3515): a subscriber's phone is asked to place a
//! call itself. The control plane sends its best registered phone a REFER (out of any dialog)
//! whose Refer-To is the party to call; the phone answers 202 and calls through us as any call
//! of its user; its NOTIFYs of the call's progress are answered in the REFER's dialog.
//!
//! ```text
//!  API ClickToDial(alice, bob) ─► REFER sip:alice@<her phone> (Refer-To: <sip:bob@…>)
//!        ◄── 202 ─► the API's answer;  alice's phone ──INVITE bob── a call like any other
//!        ◄── NOTIFY (sipfrag 100 … 200) ─► 200, until terminated (or 64 s)
//! ```

use super::*;

/// How long a referral's dialog is kept for its NOTIFYs after the REFER or the last NOTIFY (the
/// call it reports on may ring for the server's whole no-answer time).
const REFERRAL_LIFETIME: Duration = Duration::from_secs(180);
/// The longest a referral's dialog lives, however many NOTIFYs keep it going.
const REFERRAL_MAX_LIFETIME: Duration = Duration::from_secs(3600);
/// Referrals at most at a time (more are refused with 503).
pub const MAX_REFERRALS: usize = 10_000;

/// A REFER of ours to a subscriber's phone.
#[derive(Debug)]
pub(super) struct Referral {
    /// Our REFER's transaction, until its final response (which the API waits for).
    key: Option<TransactionKey>,
    /// The dialog the REFER made (its key in `referral_dialogs`), until its last NOTIFY.
    dialog: Option<String>,
    /// When it is forgotten if nothing more comes, and at the latest.
    expires: Instant,
    until: Instant,
}

impl ControlPlane {
    /// The call-control API: asks `from`'s best registered phone to call `to`. The referral's
    /// id (its outcome comes from [`Self::poll_referral`]), or the field that has nowhere to go
    /// and its status.
    pub fn handle_click_to_dial(&mut self, from: &str, to: &str, now: Now, store: &mut dyn Store) -> Result<u64, (&'static str, u16)> {
        let (user, domain) = match from.split_once('@') {
            Some((u, d)) => (u.to_owned(), d.to_ascii_lowercase()),
            None => (from.to_owned(), self.config.domains.first().cloned().unwrap_or_default()),
        };
        if !self.config.is_local_domain(&domain) || store.subscriber(&user, &domain).map_err(|_| ("from", 500u16))?.is_none() {
            return Err(("from", 404));
        }
        if self.referrals.len() >= MAX_REFERRALS {
            return Err(("from", 503));
        }
        let aor = format!("{user}@{domain}");
        let contact = crate::routing::shared_lookup(&self.config, store, &self.registrar, &aor, now.unix())
            .into_iter()
            .next()
            .ok_or(("from", 480))?;
        let target = if to.contains('@') { format!("sip:{to}") } else { format!("sip:{to}@{domain}") };
        if to.is_empty() || to.contains(['<', '>', '"', '\r', '\n', ' ']) || rsip::Uri::try_from(target.as_str()).is_err() {
            return Err(("to", 400));
        }
        let id = self.next_referral;
        self.next_referral += 1;
        let (tag, branch) = (self.random.tag(), self.random.branch());
        let call_id = format!("{}-r", self.random.call_id());
        let service = format!("<sip:click-to-dial@{domain}>");
        let mut dialog = sip_core::dialog::Dialog::uac(
            call_id.clone(),
            format!("{service};tag={tag}"),
            format!("<sip:{aor}>"),
            contact.contact,
            contact.path,
            contact.flow,
        );
        let extra = format!(
            "Refer-To: <{target}>\r\nReferred-By: {service}\r\nContact: {}\r\n",
            crate::b2bua::our_contact(&self.config, &contact.flow)
        );
        let sent_by = self.config.advertise_for(contact.flow.transport);
        let request = dialog.request("REFER", &sent_by, &branch, &extra, None).map_err(|_| ("from", 500u16))?;
        let key = TransactionKey::for_request(&request).map_err(|_| ("from", 500u16))?;
        self.layer.start_client(request, contact.flow, now.instant).map_err(|_| ("from", 500u16))?;
        let dialog_key = format!("{call_id};{tag}");
        let expires = now.instant + REFERRAL_LIFETIME;
        self.referral_keys.insert(key.clone(), id);
        self.referral_dialogs.insert(dialog_key.clone(), id);
        let until = now.instant + REFERRAL_MAX_LIFETIME;
        self.referrals.insert(id, Referral { key: Some(key), dialog: Some(dialog_key), expires, until });
        self.referral_deadlines.push(std::cmp::Reverse((expires, id)));
        self.stats.click_to_dial_refers += 1;
        self.drain(now, store);
        Ok(id)
    }

    /// The outcome of a referral: its id and the phone's final status to the REFER (408: it did
    /// not answer).
    #[must_use]
    pub fn poll_referral(&mut self) -> Option<(u64, u16)> {
        self.referral_outcomes.pop_front()
    }

    /// A response to one of our REFERs; whether it was one.
    pub(super) fn referral_response(&mut self, key: &TransactionKey, status: u16) -> bool {
        let Some(&id) = self.referral_keys.get(key) else { return false };
        if status < 200 {
            return true;
        }
        self.referral_answered(id, key, status);
        if status >= 300 {
            self.forget_dialog(id);
        }
        true
    }

    /// One of our REFERs timed out (`status` 408) or could not be sent (503); whether it was one.
    pub(super) fn referral_failed(&mut self, key: &TransactionKey, status: u16) -> bool {
        let Some(&id) = self.referral_keys.get(key) else { return false };
        self.referral_answered(id, key, status);
        self.forget_dialog(id);
        true
    }

    /// Referral `id`'s REFER has its final `status`: the API is told.
    fn referral_answered(&mut self, id: u64, key: &TransactionKey, status: u16) {
        self.referral_keys.remove(key);
        self.referral_outcomes.push_back((id, status));
        if let Some(referral) = self.referrals.get_mut(&id) {
            referral.key = None;
        }
        self.forget_if_done(id);
    }

    /// Whether an in-dialog request belongs to one of our referrals (its Call-ID and our tag).
    pub(super) fn is_referral_request(&self, request: &Request) -> bool {
        call_id(&request.headers).is_some_and(|c| self.referral_dialogs.contains_key(&referral_dialog(c, request)))
    }

    /// A request in a referral's dialog: the phone's NOTIFYs of the call's progress (RFC 3515
    /// §2.4.4; one may come before the 202).
    pub(super) fn on_referral_request(&mut self, key: &TransactionKey, request: &Request, now: Now) {
        if request.method != Method::Notify {
            let mut response = self.response(request, 405, None);
            response.headers.push(Header::Allow(rsip::headers::Allow::new("NOTIFY")));
            self.respond(key, response, now);
            return;
        }
        let Some(state) = message::header(&request.headers, "Subscription-State").map(str::to_owned) else {
            let response = self.response(request, 400, Some("Missing Subscription-State"));
            self.respond(key, response, now);
            return;
        };
        let response = response_for(request, 200, None, None);
        self.respond(key, response, now);
        let dialog = call_id(&request.headers).map(|c| referral_dialog(c, request)).unwrap_or_default();
        let Some(id) = self.referral_dialogs.get(&dialog).copied() else { return };
        if state.trim_start().starts_with("terminated") {
            self.forget_dialog(id);
        } else if let Some(referral) = self.referrals.get_mut(&id) {
            // Still going: kept for its next NOTIFY (its deadline moves when it comes up).
            referral.expires = (now.instant + REFERRAL_LIFETIME).min(referral.until);
        }
    }

    /// Referrals whose time is over: a REFER still unanswered is reported as 408, and the
    /// dialog is forgotten (its phone's late NOTIFYs get 481).
    pub(super) fn referrals_due(&mut self, now: Now) {
        while let Some(&std::cmp::Reverse((at, id))) = self.referral_deadlines.peek() {
            if at > now.instant {
                break;
            }
            self.referral_deadlines.pop();
            let Some(referral) = self.referrals.get(&id) else { continue };
            if referral.expires > now.instant {
                // Extended by a NOTIFY since: its one deadline moves.
                self.referral_deadlines.push(std::cmp::Reverse((referral.expires, id)));
                continue;
            }
            if let Some(key) = referral.key.clone() {
                self.referral_answered(id, &key, 408);
            }
            self.forget_dialog(id);
        }
    }

    /// Referral `id`'s dialog is over (its last NOTIFY, a refused REFER, its time).
    fn forget_dialog(&mut self, id: u64) {
        if let Some(dialog) = self.referrals.get_mut(&id).and_then(|r| r.dialog.take()) {
            self.referral_dialogs.remove(&dialog);
        }
        self.forget_if_done(id);
    }

    /// A referral is forgotten once its REFER is answered and its dialog is over.
    fn forget_if_done(&mut self, id: u64) {
        if self.referrals.get(&id).is_some_and(|r| r.key.is_none() && r.dialog.is_none()) {
            self.referrals.remove(&id);
        }
    }
}

/// A referral dialog's key: the request's Call-ID and our tag (its To tag).
fn referral_dialog(call_id: &str, request: &Request) -> String {
    let tag = to_value(&request.headers).and_then(tag_of).unwrap_or_default();
    format!("{call_id};{tag}")
}
