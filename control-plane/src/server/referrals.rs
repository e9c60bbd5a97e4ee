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

/// How long a referral's dialog is kept for its NOTIFYs.
const REFERRAL_LIFETIME: Duration = Duration::from_secs(64);
/// Referrals at most at a time (more are refused with 503).
pub const MAX_REFERRALS: usize = 10_000;

/// A REFER of ours to a subscriber's phone.
#[derive(Debug)]
pub(super) struct Referral {
    /// Our REFER's transaction, until its final response.
    key: Option<TransactionKey>,
    /// The dialog the REFER made (its key in `referral_dialogs`).
    dialog: String,
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
        let contact = self.registrar.lookup(&aor, now.unix()).into_iter().next().ok_or(("from", 480))?;
        let target = if to.starts_with("sip:") || to.starts_with("sips:") {
            to.to_owned()
        } else if to.contains('@') {
            format!("sip:{to}")
        } else {
            format!("sip:{to}@{domain}")
        };
        if to.is_empty() || rsip::Uri::try_from(target.as_str()).is_err() {
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
        self.layer.start_client(request, contact.flow, now.instant).map_err(|_| ("from", 503u16))?;
        let dialog_key = format!("{call_id};{tag}");
        self.referral_keys.insert(key.clone(), id);
        self.referral_dialogs.insert(dialog_key.clone(), id);
        self.referrals.insert(id, Referral { key: Some(key), dialog: dialog_key });
        self.referral_deadlines.push_back((now.instant + REFERRAL_LIFETIME, id));
        self.stats.click_to_dial_refers += 1;
        self.drain(now, store);
        Ok(id)
    }

    /// The outcome of a referral: its id and the phone's final status to the REFER.
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
        self.referral_keys.remove(key);
        self.referral_outcomes.push_back((id, status));
        if let Some(referral) = self.referrals.get_mut(&id) {
            referral.key = None;
        }
        if status >= 300 {
            self.end_referral(id);
        }
        true
    }

    /// One of our REFERs timed out or could not be sent; whether it was one.
    pub(super) fn referral_failed(&mut self, key: &TransactionKey) -> bool {
        let Some(id) = self.referral_keys.remove(key) else { return false };
        self.referral_outcomes.push_back((id, 408));
        self.end_referral(id);
        true
    }

    /// Whether an in-dialog request belongs to one of our referrals (its Call-ID and our tag).
    pub(super) fn is_referral_request(&self, request: &Request) -> bool {
        let tag = to_value(&request.headers).and_then(tag_of).unwrap_or_default();
        call_id(&request.headers).is_some_and(|c| self.referral_dialogs.contains_key(&format!("{c};{tag}")))
    }

    /// A request in a referral's dialog: the phone's NOTIFYs of the call's progress.
    pub(super) fn on_referral_request(&mut self, key: &TransactionKey, request: &Request, now: Now) {
        if request.method != Method::Notify {
            self.reply(key, request, 405, now);
            return;
        }
        let response = response_for(request, 200, None, None);
        self.respond(key, response, now);
        let over = message::header(&request.headers, "Subscription-State").is_some_and(|s| s.trim_start().starts_with("terminated"));
        if over {
            let tag = to_value(&request.headers).and_then(tag_of).unwrap_or_default();
            let dialog = call_id(&request.headers).map(|c| format!("{c};{tag}")).unwrap_or_default();
            if let Some(id) = self.referral_dialogs.get(&dialog).copied() {
                self.end_referral(id);
            }
        }
    }

    /// Referrals whose time is over are forgotten (their phones' late NOTIFYs get 481).
    pub(super) fn referrals_due(&mut self, now: Now) {
        while let Some(&(at, id)) = self.referral_deadlines.front() {
            if at > now.instant {
                break;
            }
            self.referral_deadlines.pop_front();
            if self.referrals.get(&id).is_some_and(|r| r.key.is_none()) {
                self.end_referral(id);
            }
        }
    }

    fn end_referral(&mut self, id: u64) {
        if let Some(referral) = self.referrals.remove(&id) {
            self.referral_dialogs.remove(&referral.dialog);
            if let Some(key) = referral.key {
                self.referral_keys.remove(&key);
            }
        }
    }
}
