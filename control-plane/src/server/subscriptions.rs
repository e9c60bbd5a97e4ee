//! The server's side of the dialog event package ([`crate::dialog_events`]): SUBSCRIBEs
//! authenticated and checked here, the B2BUA's calls turned into each watched subscriber's
//! dialogs, and every change of them notified.

use super::*;

impl ControlPlane {
    /// An out-of-dialog SUBSCRIBE: the watcher's identity (trusted peer or digest, as for an
    /// INVITE), a subscriber of ours to watch, then the notifier.
    pub(super) fn on_subscribe(&mut self, key: &TransactionKey, request: &Request, source: Peer, now: Now, store: &mut dyn Store) {
        let Some(watcher) = self.requester(key, request, source, now, store) else { return };
        let Some(target) = self.subscriber_addressed(key, request, now, store) else { return };
        if watcher.is_some_and(|w| !super::features::may_pick_up(&w, &target, store)) {
            // A subscriber in a pickup group is watched from inside it only.
            self.reply(key, request, 403, now);
            return;
        }
        let dialogs = self.b2bua.dialogs_of(&target);
        self.dialog_events.handle_subscribe(key.clone(), request, source, &target, &dialogs, now.instant);
        if self.dialog_events.watched(&target) {
            // Its calls now: their end is news too.
            for call in self.b2bua.calls_of(&target) {
                let parties = self.watched_calls.entry(call).or_default();
                if !parties.contains(&target) {
                    parties.push(target.clone());
                }
            }
        }
    }

    /// Whether an in-dialog request belongs to one of our subscription dialogs (its Call-ID and
    /// our tag in its To).
    pub(super) fn is_subscription_request(&self, request: &Request) -> bool {
        let tag = to_value(&request.headers).and_then(tag_of).unwrap_or_default();
        call_id(&request.headers).is_some_and(|c| self.dialog_events.owns(c, tag))
    }

    /// A request in one of our subscription dialogs.
    pub(super) fn on_subscription_request(&mut self, key: TransactionKey, request: &Request, now: Now) {
        let b2bua = &self.b2bua;
        self.dialog_events.handle_in_dialog(key, request, |aor| b2bua.dialogs_of(aor), now.instant);
    }

    /// Who sent an out-of-dialog request that needs a subscriber's rights (INVITE, SUBSCRIBE,
    /// MESSAGE): a trusted peer (`Some(None)`), or a subscriber that proved it with digest
    /// (`Some(Some(aor))`, its From); `None` when it was challenged or refused (answered here).
    pub(super) fn requester(
        &mut self,
        key: &TransactionKey,
        request: &Request,
        source: Peer,
        now: Now,
        store: &mut dyn Store,
    ) -> Option<Option<String>> {
        let Some((from_user, from_domain)) = from_value(&request.headers).map(uri_of).and_then(user_host) else {
            self.reply(key, request, 400, now);
            return None;
        };
        if self.config.trusted.contains(&source.addr.ip()) {
            return Some(None);
        }
        let user = self.authenticate(key, request, source.addr.ip(), &from_user, &from_domain, true, now, store)?;
        if user != from_user || !self.config.is_local_domain(&from_domain) {
            self.stats.auth_failures += 1;
            self.reply(key, request, 403, now);
            return None;
        }
        Some(Some(format!("{user}@{}", from_domain.to_ascii_lowercase())))
    }

    /// The subscriber (AoR) a request's URI names; `None` when it names none (answered 404, or
    /// 500 when the store failed).
    pub(super) fn subscriber_addressed(
        &mut self,
        key: &TransactionKey,
        request: &Request,
        now: Now,
        store: &mut dyn Store,
    ) -> Option<String> {
        let user = request.uri.auth.as_ref().map(|a| a.user.clone()).unwrap_or_default();
        let domain = request.uri.host_with_port.host.to_string().to_ascii_lowercase();
        if !self.config.is_local_domain(&domain) {
            self.reply(key, request, 404, now);
            return None;
        }
        match store.subscriber(&user, &domain) {
            Ok(Some(_)) => Some(format!("{user}@{domain}")),
            Ok(None) => {
                self.reply(key, request, 404, now);
                None
            }
            Err(e) => {
                tracing::warn!(error = %e, "store: cannot look up a subscriber");
                self.stats.store_errors += 1;
                self.reply(key, request, 500, now);
                None
            }
        }
    }

    /// Call `call` changed (or, `ended`, is over): the watchers of its subscribers are told.
    pub(super) fn dialogs_changed(&mut self, call: u64, ended: bool, now: Now) {
        if self.dialog_events.is_empty() && self.watched_calls.is_empty() {
            return;
        }
        let parties = if ended {
            self.watched_calls.remove(&call).unwrap_or_default()
        } else {
            let parties: Vec<String> = self.b2bua.parties(call).into_iter().filter(|p| self.dialog_events.watched(p)).collect();
            let known = self.watched_calls.entry(call).or_default();
            for p in &parties {
                if !known.contains(p) {
                    known.push(p.clone());
                }
            }
            if known.is_empty() {
                self.watched_calls.remove(&call);
            }
            parties
        };
        for aor in parties {
            let dialogs = self.b2bua.dialogs_of(&aor);
            self.dialog_events.changed(&aor, &dialogs, now.instant);
        }
    }
}
