//! Service calls (callback, IVR): a first party the B2BUA calls and the media plane answers,
//! then, once the service knows where to, a second party joined to it.
//!
//! ```text
//!  handle_originate_ivr ─► INVITE A (no SDP) … 200 (A's offer)
//!     Allocate(local) ─► the media plane answers A's offer itself ─► ACK A (its answer)
//!     CallEvent::Ivr { legs facing A }: prompts play to A, A's DTMF comes back as media events
//!  handle_connect(route) ─► INVITE B (the media plane's offer) … 200 ─► ACK B
//!     like a blind transfer of the empty side: Offer(B's SDP) ─► re-INVITE A … 200 ─► Answer
//!     CallEvent::Connected(Ok) — or Err(status): B failed, A is still there
//! ```

use super::*;

/// The longest a screened caller's announcement may play before its call is hung up (a lost
/// end-of-play event, a long file).
pub const ANNOUNCEMENT_LIMIT: Duration = Duration::from_secs(60);

impl B2bua {
    /// Calls the first party of a service call (`first`, at `first_uri`): when it answers, the
    /// media plane answers its offer and [`CallEvent::Ivr`] tells the server. `shown_uri` is who
    /// the first party sees calling. Returns the call's id.
    pub fn handle_originate_ivr(&mut self, first: (Plan, RouteState), first_uri: String, shown_uri: String, now: Now) -> u64 {
        let id = self.originate(first, None, first_uri, shown_uri, now);
        if let Some(call) = self.calls.get_mut(&id) {
            call.ivr = true;
        }
        id
    }

    /// A call to a service (an IVR access number): `request` (an INVITE with an offer, the
    /// server checked it) is answered by the media plane; [`CallEvent::Ivr`] follows. `caller`
    /// as for [`Self::handle_invite`]. The call's id, unless it was refused at once.
    pub fn handle_invite_ivr(
        &mut self,
        key: TransactionKey,
        request: Request,
        source: Peer,
        caller: Option<String>,
        now: Now,
    ) -> Option<u64> {
        self.clock = Some(now);
        let (id, offer, active) = self.answered_here(key, request, source, caller, "service", now)?;
        if let Some(call) = self.calls.get_mut(&id) {
            call.ivr = true;
        }
        self.ivr_answered(id, offer, active);
        Some(id)
    }

    /// A caller the callee's screening refuses (`request`, an INVITE the server checked) hears
    /// `file` instead of a 403/603: the media plane answers it, plays the announcement once,
    /// and the call is hung up when it ends (at the latest [`ANNOUNCEMENT_LIMIT`] after the
    /// answer); CDR cause `screened`. The call's id, unless it was refused at once.
    pub fn handle_invite_announcement(
        &mut self,
        key: TransactionKey,
        request: Request,
        source: Peer,
        caller: Option<String>,
        file: String,
        now: Now,
    ) -> Option<u64> {
        self.clock = Some(now);
        let (id, offer, active) = self.answered_here(key, request, source, caller, "announcement", now)?;
        if let Some(call) = self.calls.get_mut(&id) {
            call.ivr = true;
            call.announcement = Some(file);
        }
        self.ivr_answered(id, offer, active);
        Some(id)
    }

    /// A play on `leg` ended (the media plane's event): a screened caller's announcement is
    /// over, and its call is hung up.
    pub fn handle_play_finished(&mut self, leg: u64, now: Now) {
        self.clock = Some(now);
        let found = self
            .calls
            .iter()
            .find(|(_, c)| c.announcement_until.is_some() && c.media.as_ref().is_some_and(|m| m.facing(true).contains(&leg)));
        if let Some(id) = found.map(|(&id, _)| id) {
            self.end_call(id, "screened", now);
        }
    }

    /// A screened caller's announcement ran out of time: hang up.
    pub(super) fn announcement_due(&mut self, id: u64, now: Now) {
        if self.calls.get(&id).and_then(|c| c.announcement_until).is_some_and(|until| until <= now.instant) {
            self.end_call(id, "screened", now);
        }
    }

    /// A call from `request` (an INVITE the server checked) that the media plane is to answer
    /// (a service, a conference room): admitted with side B standing for nobody (`label`-id).
    /// Its id, offer and active `m=` lines, unless refused (answered here).
    pub(super) fn answered_here(
        &mut self,
        key: TransactionKey,
        request: Request,
        source: Peer,
        caller: Option<String>,
        label: &str,
        now: Now,
    ) -> Option<(u64, String, Vec<bool>)> {
        if !is_sdp(&request.headers, &request.body) {
            // The media plane answers offers; it does not make them.
            self.reply(&key, &request, 488, now);
            return None;
        }
        let (tag_a, tag_b) = (self.random.tag(), self.random.tag());
        let Ok(a) = Dialog::uas(&request, &tag_a, source) else {
            self.reply(&key, &request, 400, now);
            return None;
        };
        let id = self.admit(&key, &request, &a);
        let b = nobody(&format!("{label}-{id}"), &tag_b, without_tag(&a.remote), String::new());
        let active = Sdp::parse(&request.body).map(|s| s.active().to_vec()).unwrap_or_default();
        let offer = String::from_utf8_lossy(&request.body).into_owned();
        let caller_uri = uri_of(&a.remote).to_owned();
        let callee_uri = request.uri.to_string();
        let mut call = Call::new(a, b, request, key, RouteState::default(), CallerIdPolicy::Passthrough, tag_b, now);
        call.caller = caller;
        call.caller_uri = caller_uri;
        call.callee_uri = callee_uri;
        call.last_sdp = [Some(offer.clone()), None];
        self.calls.insert(id, Box::new(call));
        Some((id, offer, active))
    }

    /// The media plane takes call `id`'s first party's offer `sdp` (`active` per `m=` line);
    /// with `local`, it answers it too ([`Allocation::local_answer`]).
    pub(super) fn allocate_offer(&mut self, id: u64, sdp: String, active: Vec<bool>, local: bool) {
        let Some(call) = self.calls.get(&id) else { return };
        let policy = self.config.codec_policy.clone();
        let request = MediaRequest::Allocate { call_id: call.a.call_id.clone(), offer: sdp, callee_offers: false, active, policy, local };
        self.media_request(id, request);
    }

    /// Plays to a call's legs for a service: [`MediaRequest::Prompt`], [`MediaRequest::Tone`] or
    /// [`MediaRequest::StopPlay`] (others are ignored). Whether the call exists.
    pub fn handle_play(&mut self, id: u64, request: MediaRequest) -> bool {
        if !self.calls.contains_key(&id) {
            return false;
        }
        if matches!(request, MediaRequest::Prompt { .. } | MediaRequest::Tone { .. } | MediaRequest::StopPlay { .. }) {
            self.media_request(id, request);
        }
        true
    }

    /// The first party of service call `id` answered with its offer: the media plane answers it.
    pub(super) fn ivr_answered(&mut self, id: u64, sdp: String, active: Vec<bool>) {
        let Some(call) = self.calls.get_mut(&id) else { return };
        call.state = State::Allocating;
        // Side B stands for nobody until a second party joins (it named the first party's
        // fork while that rang).
        if call.originated {
            call.b = nobody(&format!("service-{id}"), &call.tag_b, String::new(), String::new());
        }
        self.allocate_offer(id, sdp, active, true);
    }

    /// The media plane answered the first party's offer: ACK it with that answer.
    pub(super) fn ivr_allocated(&mut self, id: u64, allocation: Allocation, now: Now) {
        let branch = self.random.branch();
        let Some(call) = self.calls.get_mut(&id) else { return };
        let answer = allocation.local_answer.clone();
        let legs = allocation.facing(true);
        call.offer_legs = allocation.legs(true);
        call.media = Some(allocation);
        call.last_sdp[Side::A as usize] = answer.clone();
        let Some(answer) = answer.filter(|_| call.state == State::Allocating) else {
            // The first party gave up meanwhile, or the media plane had no answer for it.
            call.status = 502;
            call.cause = "failed";
            self.stats.calls_failed += 1;
            let (key, invite) = (call.invite_a_key.clone(), call.invite_a.clone());
            self.reply(&key, &invite, 502, now);
            self.finish(id);
            return;
        };
        if !call.originated {
            // A caller of ours: our 200 carries the answer (sent again until its ACK).
            call.state = State::Answered;
            call.answered = Some(now);
            call.first_answered = Some(now);
            self.stats.calls_answered += 1;
            let response = response_for(&call.invite_a, 200, None, None);
            let forward =
                Forward { to: Side::A, origin: call.invite_a_key.clone(), request: call.invite_a.clone(), response, answers_offer: true };
            self.deliver(id, forward, Some(answer), now);
            self.update(id, UpdateKind::Answered { party: 1 });
            let Some(call) = self.calls.get_mut(&id) else { return };
            if let Some(file) = call.announcement.clone() {
                // A screened caller: the announcement, then the hang-up.
                let until = now.instant + ANNOUNCEMENT_LIMIT;
                call.announcement_until = Some(until);
                self.schedule(until, id);
                self.stats.calls_announced += 1;
                self.media_request(id, MediaRequest::Prompt { legs, file });
                return;
            }
            self.events.push_back(CallEvent::Ivr { call: id, legs });
            return;
        }
        let Some(f) = call.a_fork.and_then(|i| call.forks.get_mut(i)) else { return };
        let cseq = message::cseq(&f.invite.headers).map(|c| c.seq).unwrap_or(1);
        if let Some((ack, peer)) = Self::encode_ack(&self.config, &f.dialog, cseq, &branch, Some(&answer)) {
            self.sip.push_back(SipOut::Transmit(Outgoing { destination: peer, payload: ack.clone(), retransmission: false }));
            f.ack = Some(ack);
        }
        call.state = State::Confirmed;
        call.answered = call.first_answered;
        self.events.push_back(CallEvent::Ivr { call: id, legs });
    }

    /// Joins a second party to service call `id`, routed by the server (`Err(status)`: nowhere
    /// to go, told at once as [`CallEvent::Connected`]). Whether the call can take one now.
    pub fn handle_connect(&mut self, id: u64, route: Result<(Plan, RouteState), u16>, now: Now) -> bool {
        self.clock = Some(now);
        let Some(call) = self.calls.get_mut(&id) else { return false };
        // Answered: our 2xx's ACK may still be on its way; the re-INVITE waits for the callee.
        if !call.ivr || !matches!(call.state, State::Answered | State::Confirmed) || call.transfer.is_some() || !self.ivr_alone(id) {
            return false;
        }
        let (plan, route) = match route {
            Ok(routed) => routed,
            Err(status) => {
                self.events.push_back(CallEvent::Connected { call: id, result: Err(status) });
                return true;
            }
        };
        let Some(call) = self.calls.get_mut(&id) else { return false };
        call.route = route;
        call.policy = plan.caller_id;
        let referred_by = format!("<{}>", call.caller_uri);
        call.transfer = Some(Transfer {
            transferor: Side::B,
            stage: call.stage + 1,
            notify: false,
            referred_by,
            answered: None,
            transferor_gone: false,
        });
        self.ring(id, plan.stage, now);
        true
    }

    /// The first party of originated call `id` was called out through a trunk.
    pub fn first_party_trunk(&self, id: u64) -> bool {
        self.calls.get(&id).is_some_and(|c| c.originated && c.a_fork.and_then(|i| c.forks.get(i)).is_some_and(|f| f.trunk))
    }

    /// Service call `id` has no second party yet (its side B stands for nobody).
    pub(super) fn ivr_alone(&self, id: u64) -> bool {
        self.calls.get(&id).is_some_and(|c| c.ivr && c.b.peer.addr.ip().is_unspecified())
    }

    /// A request from the first party of a service call with no second party: answered here
    /// (re-offers refused with 488, INFO taken, anything else 405).
    pub(super) fn ivr_in_dialog(&mut self, key: &TransactionKey, request: &Request, now: Now) {
        let status = match request.method {
            Method::Invite | Method::Update => 488,
            Method::Info | Method::Options => 200,
            _ => 405,
        };
        self.reply(key, request, status, now);
    }
}

/// A dialog standing for nobody (a side no party has joined yet): it sends nothing (see
/// `send_in_dialog`).
pub(super) fn nobody(call_id: &str, tag: &str, remote: String, target: String) -> Dialog {
    let nobody = Peer::udp(std::net::SocketAddr::from(([0, 0, 0, 0], 0)));
    Dialog::uac(call_id.to_owned(), format!("<sip:b2bua@0.0.0.0>;tag={tag}"), remote, target, Vec::new(), nobody)
}
