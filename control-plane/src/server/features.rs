//! The server's side of call pickup and park ([`crate::features`], [`crate::b2bua`]'s `join`):
//! who may pick up which ringing call, which orbit a REFER parks its call in, and what music
//! the parked party hears.

use super::*;
use crate::b2bua::ReferTarget;
use crate::features::FeatureCall;

impl ControlPlane {
    /// An INVITE from subscriber `caller` (None: a trusted peer) that dialled a feature code or a
    /// park orbit of a local domain: taken here (`None`), else handed back for routing.
    pub(super) fn on_feature_invite(
        &mut self,
        key: &TransactionKey,
        request: Request,
        source: Peer,
        caller: Option<&str>,
        now: Now,
        store: &mut dyn Store,
    ) -> Option<Request> {
        if let Some(value) = message::header(&request.headers, "Join").map(str::to_owned) {
            // RFC 3911: a third party joins a call it learnt of (the dialog event package).
            self.on_join_invite(key, request, source, caller, &value, now, store);
            return None;
        }
        if let Some(value) = message::header(&request.headers, "Replaces").map(str::to_owned) {
            // RFC 3891: a phone that learnt a ringing call's dialog (the dialog event package)
            // takes it.
            self.on_replaces_invite(key, request, source, caller, &value, now, store);
            return None;
        }
        let Some(user) = request.uri.auth.as_ref().map(|a| a.user.clone()) else { return Some(request) };
        let domain = request.uri.host_with_port.host.to_string();
        let Some(feature) = self.config.features.dialled(&user).filter(|_| self.config.is_ours(&domain)) else {
            return Some(request);
        };
        if is_subscriber(&user, &domain, store) {
            // A subscriber's own number (an extension 701) is not taken for a feature.
            return Some(request);
        }
        let Some(caller) = caller else {
            // Features are for subscribers' phones, not for trunks.
            let response = self.response(&request, 403, Some("Features Are For Subscribers"));
            self.respond(key, response, now);
            return None;
        };
        let my_group = pickup_group(caller, store);
        let result = match feature {
            FeatureCall::GroupPickup => match my_group {
                None => Err((403, "No Pickup Group")),
                Some(group) => {
                    let ringing = self.b2bua.ringing();
                    let found = ringing
                        .into_iter()
                        .find(|r| r.callee != caller && pickup_group(&r.callee, store).as_deref() == Some(group.as_str()));
                    found.ok_or((404, "Nothing To Pick Up")).and_then(|r| self.pick_up(r.call, key, &request, source, caller, now))
                }
            },
            FeatureCall::DirectedPickup(user) => {
                let callee = format!("{}@{}", user, caller.split_once('@').map_or(domain.as_str(), |(_, d)| d));
                if !may_pick_up(caller, &callee, store) {
                    Err((403, "Not In The Pickup Group"))
                } else {
                    let found = self.b2bua.ringing().into_iter().find(|r| r.callee.eq_ignore_ascii_case(&callee));
                    found.ok_or((404, "Nothing To Pick Up")).and_then(|r| self.pick_up(r.call, key, &request, source, caller, now))
                }
            }
            FeatureCall::Conference(room) => {
                self.b2bua.handle_conference_invite(room, key.clone(), request.clone(), source, Some(caller.to_owned()), now);
                Ok(())
            }
            FeatureCall::Orbit(orbit) => match self.b2bua.parked_in(&orbit) {
                None => Err((404, "Nothing Parked")),
                Some(call) => self
                    .b2bua
                    .handle_retrieve(call, key.clone(), request.clone(), source, Some(caller.to_owned()), now)
                    .map_err(|s| (s, "Cannot Take It Back")),
            },
        };
        if let Err(refusal) = result {
            self.refuse_feature(key, &request, refusal, "a feature code", now);
        }
        None
    }

    /// An INVITE with `Replaces` naming a ringing fork's dialog: a pickup of that call, under
    /// the same rule as a pickup by name.
    #[allow(clippy::too_many_arguments)]
    fn on_replaces_invite(
        &mut self,
        key: &TransactionKey,
        request: Request,
        source: Peer,
        caller: Option<&str>,
        value: &str,
        now: Now,
        store: &mut dyn Store,
    ) {
        let result = match (caller, self.b2bua.replaces_ringing(value)) {
            (None, _) => Err((403, "Features Are For Subscribers")),
            (_, Err(status)) => Err((status, "No Such Ringing Call")),
            (Some(caller), Ok(call)) => {
                let callee = self.b2bua.ringing().into_iter().find(|r| r.call == call).map(|r| r.callee);
                if !callee.is_some_and(|callee| may_pick_up(caller, &callee, store)) {
                    Err((403, "Not In The Pickup Group"))
                } else {
                    self.pick_up(call, key, &request, source, caller, now)
                }
            }
        };
        if let Err(refusal) = result {
            self.refuse_feature(key, &request, refusal, "an INVITE with Replaces", now);
        }
    }

    /// The parker of call `call` is rung back (see [`crate::b2bua::CallEvent::ParkExpired`]):
    /// routed like a transfer target of its own.
    pub(super) fn ring_back(&mut self, call: u64, parker: &str, now: Now, store: &mut dyn Store) {
        let mut ctx = Ctx { config: &self.config, store, registrar: &self.registrar, now_unix: now.unix() };
        let route = crate::routing::refer(&format!("sip:{parker}"), "parked", Some(parker), &mut ctx).map_err(|r| r.status());
        let route = route
            .and_then(|(mut plan, state)| self.authorize_stage(call, Some(parker), &mut plan.stage, now, store).map(|()| (plan, state)));
        self.b2bua.handle_ring_back(call, route, now);
    }

    /// An INVITE with `Join` naming a dialog of an answered call: the call becomes a conference
    /// of three, when the joiner may pick up the calls of one of its subscribers.
    #[allow(clippy::too_many_arguments)]
    fn on_join_invite(
        &mut self,
        key: &TransactionKey,
        request: Request,
        source: Peer,
        caller: Option<&str>,
        value: &str,
        now: Now,
        store: &mut dyn Store,
    ) {
        let refused = match (caller, self.b2bua.join_target(value)) {
            (None, _) => Some((403, "Features Are For Subscribers")),
            (_, Err(status)) => Some((status, "No Call To Join")),
            (Some(caller), Ok(call)) => {
                let parties = self.b2bua.parties(call);
                if parties.iter().any(|p| may_pick_up(caller, p, store)) {
                    self.b2bua.handle_join(call, key.clone(), request.clone(), source, Some(caller.to_owned()), now);
                    None
                } else {
                    Some((403, "Not In The Pickup Group"))
                }
            }
        };
        if let Some(refusal) = refused {
            self.refuse_feature(key, &request, refusal, "an INVITE with Join", now);
        }
    }

    /// A REFER whose target is a conference room of ours: the referred party goes into it.
    /// Whether it was one (else it is routed as a transfer, or parks).
    pub(super) fn conference_refer(&mut self, refer: &ReferTarget, now: Now) -> bool {
        let target = refer.target.split('?').next().unwrap_or(&refer.target);
        let Some((user, domain)) = user_host(target) else { return false };
        let Some(room) = self.config.features.room(&user).filter(|_| self.config.is_ours(&domain)) else { return false };
        // Only a subscriber moves calls into rooms.
        let room = if refer.transferor.is_some() { Ok(room) } else { Err(403) };
        self.b2bua.handle_refer_to_room(refer.call, room, now);
        true
    }

    /// Answers a feature's INVITE with `status` and `reason` (logged as `what`).
    fn refuse_feature(&mut self, key: &TransactionKey, request: &Request, (status, reason): (u16, &str), what: &str, now: Now) {
        tracing::info!(status, reason, "{what} was refused");
        let response = self.response(request, status, Some(reason));
        self.respond(key, response, now);
    }

    fn pick_up(
        &mut self,
        call: u64,
        key: &TransactionKey,
        request: &Request,
        source: Peer,
        taker: &str,
        now: Now,
    ) -> Result<(), (u16, &'static str)> {
        self.b2bua.handle_pickup(call, key.clone(), request.clone(), source, Some(taker.to_owned()), now).map_err(|s| (s, "Cannot Pick Up"))
    }

    /// A REFER whose target is a park orbit of ours (or `park`): parks the call. Whether it was
    /// one (else it is routed as a transfer).
    pub(super) fn park_refer(&mut self, refer: &ReferTarget, now: Now, store: &mut dyn Store) -> bool {
        let Some((user, domain)) = user_host(&refer.target) else { return false };
        if !self.config.is_local_domain(&domain) {
            return false;
        }
        if is_subscriber(&user, &domain, store) {
            return false;
        }
        let b2bua = &self.b2bua;
        let Some(orbit) = self.config.features.park_target(&user, |o| b2bua.parked_in(o).is_some()) else { return false };
        let orbit = match (&refer.transferor, orbit) {
            // Only a subscriber parks calls.
            (None, _) => Err(403),
            (Some(_), Ok(orbit)) => Ok(orbit),
            (Some(_), Err(())) => Err(486),
        };
        let music = self.music_for(refer.transferor.as_deref(), store);
        let timeout = self.config.features.park_timeout;
        self.b2bua.handle_park(refer.call, orbit, refer.transferor.clone(), music, timeout, now);
        true
    }
}

/// Subscriber `aor`'s pickup group.
fn pickup_group(aor: &str, store: &mut dyn Store) -> Option<String> {
    aor.split_once('@').and_then(|(u, d)| store.settings(u, d).ok().flatten()).and_then(|s| s.pickup_group)
}

/// Whether `picker` may take a call ringing `callee` by naming it (`*8bob`, Replaces, Join), or
/// watch its dialogs: a callee with a pickup group only from inside it.
pub(super) fn may_pick_up(picker: &str, callee: &str, store: &mut dyn Store) -> bool {
    let theirs = pickup_group(callee, store);
    theirs.is_none() || theirs == pickup_group(picker, store)
}

/// Whether `user@domain` is a subscriber (a store error counts as not: the feature is tried).
fn is_subscriber(user: &str, domain: &str, store: &mut dyn Store) -> bool {
    store.subscriber(user, &domain.to_ascii_lowercase()).ok().flatten().is_some()
}
