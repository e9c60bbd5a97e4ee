//! A party that calls in to take over a call: call pickup (RFC 5359 §2.16) and call park and
//! retrieve (§2.15). The media plane answers the newcomer's offer on new legs and bridges them
//! to the legs of the party already there, so nobody is re-INVITEd.
//!
//! ```text
//!  pickup:   X ──INVITE bob── B2BUA ──INVITE── bob's phones (ringing)
//!            P ──INVITE *8── server: P's group has a call ringing ─► handle_pickup
//!            Join(P's offer, answer X's offer too) ─► bob's phones get CANCEL
//!            X ◄── 200 (the media plane's answer)    P ◄── 200 (its answer); X and P talk
//!  park:     T ──REFER (Refer-To: sip:701@…)── 202, NOTIFY 200: X hears music on hold, T's legs go
//!  retrieve: R ──INVITE 701── Join(R's offer) ─► R ◄── 200; the music stops, X and R talk
//!            nobody within park_timeout_s: X gets BYE
//! ```

use super::*;

/// A party calling in to take a call, while the media plane joins it.
#[derive(Debug)]
pub(super) struct Joining {
    key: TransactionKey,
    request: Request,
    /// Its dialog (we are its UAS).
    dialog: Dialog,
    /// A pickup (else a parked call taken back), and the ring deadline it suspended.
    pickup: bool,
    deadline: Option<Instant>,
    /// The subscriber calling in.
    taker: Option<String>,
}

/// A parked call.
#[derive(Debug)]
pub(super) struct Parked {
    pub(super) orbit: String,
    /// The side nobody is on (the parker's), which whoever takes the call back takes.
    pub(super) side: Side,
    /// When it is rung back to its parker (or hung up) if nobody took it back.
    pub(super) until: Option<Instant>,
    /// Who parked it (a subscriber's address-of-record).
    parker: Option<String>,
}

/// A call that can be picked up: it rings a subscriber.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ringing {
    /// The call.
    pub call: u64,
    /// The subscriber (AoR) it rings.
    pub callee: String,
    /// The caller's URI.
    pub caller: String,
}

impl B2bua {
    /// Calls ringing a subscriber's phones that a pickup could take, oldest first.
    pub fn ringing(&self) -> Vec<Ringing> {
        let mut calls: Vec<Ringing> = self
            .calls
            .iter()
            .filter(|(_, c)| Self::can_pick_up(c))
            .filter_map(|(&call, c)| Some(Ringing { call, callee: c.route.subscriber()?.to_owned(), caller: c.caller_uri.clone() }))
            .collect();
        calls.sort_by_key(|r| r.call);
        calls
    }

    fn can_pick_up(c: &Call) -> bool {
        c.state == State::Calling
            && c.stage_open
            && !c.negotiating
            && !c.delayed
            && !c.originated
            && !c.ivr
            && c.media.is_some()
            && c.transfer.is_none()
            && c.joining.is_none()
            && !c.rel.waiting_for_prack()
    }

    /// The call parked in `orbit`, if any.
    pub fn parked_in(&self, orbit: &str) -> Option<u64> {
        self.orbits.get(orbit).copied()
    }

    /// `request` (an INVITE with an offer, from `source`, checked and authorised by the server)
    /// picks up ringing call `target`: its phones stop ringing, and the caller and the picker
    /// are answered by the media plane and joined. `Err(status)`: refused, nothing changed.
    pub fn handle_pickup(
        &mut self,
        target: u64,
        key: TransactionKey,
        request: Request,
        source: Peer,
        taker: Option<String>,
        now: Now,
    ) -> Result<(), u16> {
        self.clock = Some(now);
        let call = self.calls.get(&target).filter(|c| Self::can_pick_up(c)).ok_or(481u16)?;
        let media = call.media.as_ref().ok_or(481u16)?;
        let (with, release) = (media.facing(true), media.facing(false));
        // A caller that had early media keeps the answer it got then (RFC 3261 §13.2.1: it
        // ignores any later one); else the media plane answers its offer now.
        let answer_first = call.early_answer.is_none().then(|| (media.legs(true), media.offer.clone()));
        self.start_join(target, key, request, source, with, release, answer_first, true, taker)
    }

    /// `request` takes back the call parked in `target` (see [`Self::handle_pickup`]).
    pub fn handle_retrieve(
        &mut self,
        target: u64,
        key: TransactionKey,
        request: Request,
        source: Peer,
        taker: Option<String>,
        now: Now,
    ) -> Result<(), u16> {
        self.clock = Some(now);
        let call = self.calls.get(&target).ok_or(481u16)?;
        if call.joining.is_some() || call.resuming.is_some() || call.transfer.is_some() || call.ring_back.is_some() {
            // Someone else is taking it, it is being taken off hold, or its parker is rung: not now.
            return Err(486);
        }
        let parked = call.parked.as_ref().ok_or(481u16)?;
        let with = call.media.as_ref().map(|m| m.facing(parked.side.other() == Side::A)).ok_or(481u16)?;
        self.start_join(target, key, request, source, with, Vec::new(), None, false, taker)
    }

    #[allow(clippy::too_many_arguments)]
    fn start_join(
        &mut self,
        target: u64,
        key: TransactionKey,
        request: Request,
        source: Peer,
        with: Vec<u64>,
        release: Vec<u64>,
        answer_first: Option<(Vec<(u64, u64)>, String)>,
        pickup: bool,
        taker: Option<String>,
    ) -> Result<(), u16> {
        if !is_sdp(&request.headers, &request.body) {
            // The media plane answers offers; an INVITE without one cannot join.
            return Err(488);
        }
        let active = Sdp::parse(&request.body).map(|s| s.active().to_vec()).map_err(|_| 488u16)?;
        if active.iter().filter(|a| **a).count() != with.len() {
            // Each of its streams joins one of the call's.
            return Err(488);
        }
        let tag = self.random.tag();
        let mut dialog = Dialog::uas(&request, &tag, source).map_err(|_| 400u16)?;
        dialog.confirm();
        self.sip.push_back(SipOut::Respond(key.clone(), response_for(&request, 100, None, None)));
        let Some(call) = self.calls.get_mut(&target) else { return Err(481) };
        let mut deadline = None;
        if pickup {
            // The phones ringing no longer decide anything: a 2xx from one now is ACKed and
            // hung up (a later stage than theirs is current).
            call.stage_open = false;
            call.stage += 1;
            deadline = call.stage_deadline.take();
            // The legs the Join deletes are the media plane's business from now on.
            if let Some(media) = call.media.as_mut() {
                media.take_side(false);
            }
        }
        let request_media = MediaRequest::Join {
            call_id: dialog.call_id.clone(),
            offer: String::from_utf8_lossy(&request.body).into_owned(),
            active,
            policy: self.config.codec_policy.clone(),
            with,
            release: release.clone(),
            answer_first,
        };
        call.joining = Some(Joining { key, request, dialog, pickup, deadline, taker });
        if pickup {
            self.join_released.insert(target, release);
        }
        self.media_request(target, request_media);
        Ok(())
    }

    /// The media plane joined (or did not join) the party calling in to call `id`.
    pub(super) fn on_joined(&mut self, id: u64, result: Result<crate::media::Joined, MediaError>, now: Now) {
        let joining = self.calls.get_mut(&id).and_then(|c| c.joining.take());
        let live = self.calls.get(&id).is_some_and(|c| c.state != State::Cancelled);
        // The ringing side's legs: deleted by the Join, unless the newcomer's offer was refused.
        let released = self.join_released.remove(&id).unwrap_or_default();
        let joining = match (joining, live) {
            (Some(joining), true) => joining,
            (joining, _) => {
                // The call ended meanwhile (its caller gave up, its party hung up): the new legs
                // go, and the party calling in is told (unless the call's end told it already).
                match &result {
                    Ok(joined) => self.let_go(id, joined.legs.clone()),
                    Err(MediaError::NotAcceptable(_)) => self.let_go(id, released),
                    Err(_) => {}
                }
                if let Some(joining) = joining {
                    self.refuse_joining(joining, 481);
                }
                return;
            }
        };
        let joined = match result {
            Ok(joined) => joined,
            Err(error) => {
                self.join_failed(id, joining, error, released, now);
                return;
            }
        };
        let Some(call) = self.calls.get_mut(&id) else { return };
        // The side the newcomer takes: the callee's for a pickup, the parker's for a retrieval.
        let side = if joining.pickup { Side::B } else { call.parked.as_ref().map_or(Side::B, |p| p.side) };
        let newcomer_call_id = joining.dialog.call_id.clone();
        call.taker = joining.taker.clone().map(|t| (t, side));
        *call.dialog_mut(side) = joining.dialog;
        if side == Side::B {
            call.winner = None;
        }
        if let Some(media) = call.media.as_mut() {
            media.set_side(side == Side::A, joined.legs.iter().copied());
            call.offer_legs = media.legs(true);
        }
        call.last_sdp[side as usize] = Some(String::from_utf8_lossy(&joining.request.body).into_owned());
        self.by_call_id.insert(newcomer_call_id, (id, side));
        let to_newcomer = Forward {
            to: side,
            origin: joining.key,
            response: response_for(&joining.request, 200, None, None),
            request: joining.request,
            answers_offer: true,
        };
        self.deliver(id, to_newcomer, Some(joined.answer), now);
        let Some(call) = self.calls.get_mut(&id) else { return };
        if joining.pickup {
            self.cancel_forks(id, None);
            let Some(call) = self.calls.get_mut(&id) else { return };
            call.state = State::Answered;
            call.answered = Some(now);
            call.cause = "picked-up";
            let response = response_for(&call.invite_a, 200, None, None);
            let answer = joined.first_answer.or_else(|| call.early_answer.clone());
            let to_caller =
                Forward { to: Side::A, origin: call.invite_a_key.clone(), request: call.invite_a.clone(), response, answers_offer: true };
            self.deliver(id, to_caller, answer, now);
            self.stats.calls_answered += 1;
            self.stats.pickups += 1;
            self.update(id, UpdateKind::Answered { party: 2 });
            tracing::info!(call = id, "a ringing call was picked up");
        } else {
            if let Some(parked) = call.parked.take() {
                self.orbits.remove(&parked.orbit);
            }
            let Some(legs) = self.calls.get(&id).and_then(|c| c.media.as_ref()).map(|m| m.facing(side.other() == Side::A)) else { return };
            self.media_request(id, MediaRequest::StopPlay { legs });
            self.events.push_back(CallEvent::DialogsChanged { call: id });
            self.stats.retrievals += 1;
            tracing::info!(call = id, "a parked call was taken back");
        }
    }

    /// The media plane could not join the party calling in: it is refused; a refused offer
    /// leaves the call as it was, anything else ends it (its legs are unbridged).
    fn join_failed(&mut self, id: u64, joining: Joining, error: MediaError, released: Vec<u64>, now: Now) {
        let refused = matches!(error, MediaError::NotAcceptable(_));
        tracing::info!(call = id, %error, "a party calling in to take a call could not be joined");
        let (pickup, deadline) = (joining.pickup, joining.deadline);
        self.refuse_joining(joining, if refused { 488 } else { 503 });
        let Some(call) = self.calls.get_mut(&id) else { return };
        match (pickup, refused) {
            (true, true) => {
                // Its phones ring on, until the stage's own deadline, with their legs back; a
                // stage whose forks all ended meanwhile ends now.
                if let Some(media) = call.media.as_mut() {
                    media.set_side(false, released);
                }
                call.stage -= 1;
                call.stage_open = true;
                call.stage_deadline = deadline;
                let stage = call.stage;
                let decline = call.forks.iter().filter(|f| f.stage == stage).find_map(|f| match f.state {
                    ForkState::Done(s) if (601..700).contains(&s) => Some(s),
                    _ => None,
                });
                let ringing = call.forks.iter().any(|f| f.stage == stage && f.outstanding());
                if let Some(at) = deadline {
                    self.schedule(at, id);
                }
                if decline.is_some() || !ringing {
                    self.stage_ended(id, stage, decline);
                }
            }
            (true, false) => {
                let (key, invite) = (call.invite_a_key.clone(), call.invite_a.clone());
                self.reply(&key, &invite, 503, now);
                self.stats.calls_failed += 1;
                self.abandon(id, now);
            }
            (false, true) => {
                // Still parked: its timeout (which waited for the join) runs again.
                match call.parked.as_ref().and_then(|p| p.until) {
                    Some(at) if at <= now.instant => self.park_expired(id, now),
                    Some(at) => self.schedule(at, id),
                    None => {}
                }
            }
            (false, false) => self.end_both(id, now),
        }
    }

    /// Answers the party calling in with `status` (the join is over without it).
    pub(super) fn refuse_joining(&mut self, joining: Joining, status: u16) {
        let response = response_for(&joining.request, status, None, Some(joining.dialog.local_tag()));
        self.sip.push_back(SipOut::Respond(joining.key, response));
    }

    /// The server found `orbit` for a REFER of call `id` (`Err(status)`: no orbit for it): the
    /// referred party is parked there and hears `music`; the transferor is let go.
    pub fn handle_park(
        &mut self,
        id: u64,
        orbit: Result<String, u16>,
        parker: Option<String>,
        music: Option<String>,
        timeout: Option<Duration>,
        now: Now,
    ) {
        self.clock = Some(now);
        let orbit = orbit.and_then(|o| if self.orbits.contains_key(&o) { Err(486) } else { Ok(o) });
        let can = |c: &Call| c.media.is_some() && !c.ivr;
        let Some((side, key, request, notify, orbit)) = self.pending_refer_for(id, orbit, can, now) else { return };
        let Some(call) = self.calls.get_mut(&id) else { return };
        let accepted = transfer::accepted(&request, call.dialog(side).local_tag(), notify);
        self.respond(&key, accepted);
        if notify {
            // The transfer's progress (RFC 3515 §2.4.5), at once: trying, then done.
            let sipfrag = "message/sipfrag;version=2.0";
            for (state, line) in [("active;expires=60", "SIP/2.0 100 Trying\r\n"), ("terminated;reason=noresource", "SIP/2.0 200 OK\r\n")] {
                let extra = format!("Event: refer\r\nSubscription-State: {state}\r\n");
                self.send_in_dialog(id, side, "NOTIFY", &extra, Some((sipfrag, line.as_bytes())), Purpose::Bye, now);
            }
        }
        let tag = self.random.tag();
        let Some(call) = self.calls.get_mut(&id) else { return };
        // The transferor's dialog is kept to answer its BYE; nobody takes its place until the
        // call is taken back.
        let empty = ivr::nobody(&format!("parked-{id}"), &tag, call.dialog(side).remote.clone(), String::new());
        let gone = std::mem::replace(call.dialog_mut(side), empty);
        call.replaced.push(gone);
        if side == Side::B {
            call.winner = None;
        }
        let until = timeout.map(|t| now.instant + t);
        call.parked = Some(Parked { orbit: orbit.clone(), side, until, parker });
        self.orbits.insert(orbit.clone(), id);
        self.stats.parks += 1;
        self.events.push_back(CallEvent::DialogsChanged { call: id });
        tracing::info!(call = id, %orbit, "a call was parked");
        // A party the parker held is taken off hold first, or it could not talk to whoever
        // takes it back.
        if !self.resume_then(id, side, resume::After::Park { music: music.clone() }, now) {
            self.park_media(id, music);
        }
    }

    /// Parked call `id`'s media: the parker's legs go, the parked party hears `music`, and the
    /// park timeout runs.
    pub(super) fn park_media(&mut self, id: u64, music: Option<String>) {
        let Some(call) = self.calls.get_mut(&id) else { return };
        let Some((side, until)) = call.parked.as_ref().map(|p| (p.side, p.until)) else { return };
        let release = call.media.as_mut().map(|m| m.take_side(side == Side::A)).unwrap_or_default();
        call.held_by = None;
        call.music = false;
        let parked_legs = call.media.as_ref().map(|m| m.facing(side.other() == Side::A)).unwrap_or_default();
        self.let_go(id, release);
        if let Some(file) = music {
            self.media_request(id, MediaRequest::Play { legs: parked_legs, file });
        }
        if let Some(at) = until {
            self.schedule(at, id);
        }
    }

    /// Deletes some of call `id`'s legs (not its allocation: that is released once, at its end).
    pub(super) fn let_go(&mut self, id: u64, legs: Vec<u64>) {
        if !legs.is_empty() {
            self.media.push_back((id, MediaRequest::Release { legs }));
        }
    }

    /// Nobody took parked call `id` back in time: its parker is rung back
    /// ([`CallEvent::ParkExpired`]), or with none known it ends.
    pub(super) fn park_expired(&mut self, id: u64, now: Now) {
        let Some(call) = self.calls.get_mut(&id) else { return };
        if call.parked.as_ref().is_none_or(|p| p.until.is_none()) || call.joining.is_some() || call.resuming.is_some() {
            return;
        }
        self.stats.park_timeouts += 1;
        let Some(parked) = call.parked.as_mut() else { return };
        parked.until = None;
        match parked.parker.clone() {
            Some(parker) => self.events.push_back(CallEvent::ParkExpired { call: id, parker }),
            None => {
                call.cause = "park-timeout";
                self.end_both(id, now);
            }
        }
    }

    /// The server routed the parker of call `id` for its ring-back (`Err`: nowhere to ring,
    /// the call ends): the media plane makes the parker's legs, then it rings.
    pub fn handle_ring_back(&mut self, id: u64, route: Result<(Plan, RouteState), u16>, now: Now) {
        self.clock = Some(now);
        let Some(call) = self.calls.get_mut(&id) else { return };
        let Some(side) = call.parked.as_ref().map(|p| p.side) else { return };
        let remaining = side.other();
        let with = call.media.as_ref().map(|m| m.facing(remaining == Side::A)).unwrap_or_default();
        let sdp = call.last_sdp[remaining as usize].clone();
        match (route, sdp) {
            (Ok(routed), Some(sdp)) if !with.is_empty() && call.joining.is_none() && call.transfer.is_none() => {
                call.ring_back = Some(routed);
                let group = call.media.as_ref().map_or_else(|| call.a.call_id.clone(), |m| m.group.clone());
                let request = MediaRequest::Extend { call_id: group, with, sdp, policy: self.config.codec_policy.clone() };
                self.media_request(id, request);
            }
            _ => {
                call.cause = "park-timeout";
                self.end_both(id, now);
            }
        }
    }

    /// The media plane made the legs to ring a parked call's parker back with.
    pub(super) fn on_extended(&mut self, id: u64, result: Result<(Vec<u64>, String), MediaError>, now: Now) {
        let Some(call) = self.calls.get_mut(&id) else {
            if let Ok((legs, _)) = result {
                self.let_go(id, legs);
            }
            return;
        };
        let routed = call.ring_back.take();
        let side = call.parked.as_ref().map(|p| p.side);
        let (legs, offer, (plan, route), side) = match (result, routed, side) {
            (Ok((legs, offer)), Some(routed), Some(side)) => (legs, offer, routed, side),
            (result, _, _) => {
                if let Ok((legs, _)) = result {
                    self.let_go(id, legs);
                }
                tracing::info!(call = id, "a parked call's parker could not be rung back: it ends");
                if let Some(call) = self.calls.get_mut(&id) {
                    call.cause = "park-timeout";
                }
                self.end_both(id, now);
                return;
            }
        };
        let Some(call) = self.calls.get_mut(&id) else { return };
        let parker = call.parked.as_ref().and_then(|p| p.parker.clone()).unwrap_or_default();
        if let Some(media) = call.media.as_mut() {
            media.set_side(side == Side::A, legs);
            media.offer = offer;
        }
        call.route = route;
        call.policy = plan.caller_id;
        // Rung like a transfer's target in the parker's place: when it answers, the parked
        // party is re-INVITEd with its media and the music stops; if it does not, the call ends.
        call.transfer = Some(Transfer {
            transferor: side,
            stage: call.stage + 1,
            notify: false,
            referred_by: format!("<sip:{parker}>"),
            answered: None,
            transferor_gone: false,
        });
        self.ring(id, plan.stage, now);
    }
}

impl B2bua {
    /// The dialogs subscriber `aor` is in, as its phones see them (the dialog event package):
    /// the calls it placed, and the forks ringing (or answered by) its phones.
    pub fn dialogs_of(&self, aor: &str) -> Vec<crate::dialog_events::DialogView> {
        let mut views = Vec::new();
        let mut ids: Vec<&u64> = self.calls.keys().collect();
        ids.sort();
        for id in ids {
            let Some(c) = self.calls.get(id) else { continue };
            if c.state == State::Cancelled {
                continue;
            }
            let confirmed = matches!(c.state, State::Answered | State::Confirmed);
            if let Some((_, side)) = c.taker.as_ref().filter(|(t, _)| t.eq_ignore_ascii_case(aor)) {
                // The phone that picked the call up (or took it back): it called in.
                let d = c.dialog(*side);
                views.push(crate::dialog_events::DialogView {
                    call_id: d.call_id.clone(),
                    local_tag: tag_of(&d.remote).map(str::to_owned),
                    remote_tag: d.local_tag().to_owned(),
                    initiator: true,
                    confirmed,
                    remote: uri_of(&c.dialog(side.other()).remote).to_owned(),
                });
            }
            if c.caller.as_deref().is_some_and(|a| a.eq_ignore_ascii_case(aor)) && !c.originated {
                views.push(crate::dialog_events::DialogView {
                    call_id: c.a.call_id.clone(),
                    local_tag: tag_of(&c.a.remote).map(str::to_owned),
                    remote_tag: c.a.local_tag().to_owned(),
                    initiator: true,
                    confirmed,
                    remote: c.callee_uri.clone(),
                });
            }
            if !c.route.subscriber().is_some_and(|s| s.eq_ignore_ascii_case(aor)) {
                continue;
            }
            // Its phones: the forks of the current stage still ringing, or the one that answered.
            let forks = c.forks.iter().enumerate().filter(|(i, f)| {
                if confirmed {
                    c.winner == Some(*i)
                } else {
                    c.stage_open && f.stage == c.stage && f.state == ForkState::Ringing
                }
            });
            for (_, f) in forks {
                views.push(crate::dialog_events::DialogView {
                    call_id: f.dialog.call_id.clone(),
                    local_tag: tag_of(&f.dialog.remote).map(str::to_owned),
                    remote_tag: f.dialog.local_tag().to_owned(),
                    initiator: false,
                    confirmed,
                    // A caller whose identity is withheld from the callee is withheld here too.
                    remote: if c.policy == CallerIdPolicy::Strip { "sip:anonymous@anonymous.invalid".into() } else { c.caller_uri.clone() },
                });
            }
        }
        views
    }

    /// The calls subscriber `aor` is a party of (see [`Self::parties`]).
    pub fn calls_of(&self, aor: &str) -> Vec<u64> {
        self.calls.keys().copied().filter(|&id| self.parties(id).iter().any(|p| p.eq_ignore_ascii_case(aor))).collect()
    }

    /// The subscribers (AoRs) call `id` is about: its caller and the subscriber it rings.
    pub fn parties(&self, id: u64) -> Vec<String> {
        let Some(c) = self.calls.get(&id) else { return Vec::new() };
        c.caller.iter().chain(c.route.subscriber().map(str::to_owned).as_ref()).chain(c.taker.as_ref().map(|(t, _)| t)).cloned().collect()
    }

    /// The ringing call a `Replaces` (RFC 3891) of an INVITE names: a fork's dialog, by its
    /// Call-ID and tags (either way round: phones differ on which is which). `Err(486)` for a
    /// call that was answered meanwhile when the Replaces is `early-only`, `Err(481)` for none,
    /// `Err(403)` for an answered call (replacing an answered dialog by INVITE is not offered).
    pub fn replaces_ringing(&self, value: &str) -> Result<u64, u16> {
        let replaces = transfer::Replaces::from_value(value).ok_or(400u16)?;
        let early_only = value.split(';').any(|p| p.trim().eq_ignore_ascii_case("early-only"));
        let (call_id, tag1, tag2) = (replaces.call_id.as_str(), replaces.to_tag.as_str(), replaces.from_tag.as_str());
        let &(id, side) = self.by_call_id.get(call_id).ok_or(481u16)?;
        let c = self.calls.get(&id).ok_or(481u16)?;
        let f = c.forks.iter().find(|f| f.dialog.call_id == call_id).filter(|_| side == Side::B).ok_or(481u16)?;
        let ours = f.dialog.local_tag();
        let theirs = tag_of(&f.dialog.remote).unwrap_or_default();
        let tags_match = (ours == tag1 && (theirs == tag2 || theirs.is_empty())) || (ours == tag2 && (theirs == tag1 || theirs.is_empty()));
        if !tags_match {
            return Err(481);
        }
        if Self::can_pick_up(c) {
            Ok(id)
        } else if matches!(c.state, State::Answered | State::Confirmed) {
            Err(if early_only { 486 } else { 403 })
        } else {
            Err(481)
        }
    }
}
