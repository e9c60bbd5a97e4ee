//! Calls the API places (RFC 3725 flow I), ends and lists.

use super::*;

impl B2bua {
    /// A call placed by the API (RFC 3725 flow I): `first` rings the first party with an INVITE
    /// without SDP; when it answers, its offer is anchored and `second` rings with it; the
    /// second party's answer reaches the first in our ACK. Returns the call's id.
    ///
    /// The first party's 2xx waits for that ACK while the second rings; it retransmits for 64·T1
    /// (32 s) and then gives up, so the second party rings at most 30 s.
    pub fn handle_originate(
        &mut self,
        first: (Plan, RouteState),
        second: (Plan, RouteState),
        from_uri: String,
        to_uri: String,
        now: Now,
    ) -> u64 {
        self.originate(first, Some(second), from_uri, to_uri, now)
    }

    /// An originated call; without `second`, a service call ([`Self::handle_originate_ivr`]).
    pub(super) fn originate(
        &mut self,
        first: (Plan, RouteState),
        second: Option<(Plan, RouteState)>,
        from_uri: String,
        to_uri: String,
        now: Now,
    ) -> u64 {
        self.clock = Some(now);
        let (first_plan, first_route) = first;
        let id = self.next_id;
        self.next_id += 1;
        self.stats.calls_started += 1;
        let tag = self.random.tag();
        // Until the first party answers, `a` only names who it is connected to (the From of its
        // INVITE) and `b` stands for nobody.
        let target = first_plan.stage.branches.first().map(|b| b.target.clone()).unwrap_or_default();
        let placeholder = |remote: &str| ivr::nobody(&format!("originate-{id}"), &tag, format!("<{remote}>"), target.clone());
        let (a, b) = (placeholder(&to_uri), placeholder(&from_uri));
        let invite_a = match a.clone().request("INVITE", "0.0.0.0", "z9hG4bKoriginate", "", None) {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(error = %e, "cannot build the placeholder of an originated call");
                return id;
            }
        };
        let key = TransactionKey::for_request(&invite_a).unwrap_or_else(|_| TransactionKey {
            branch: format!("originate-{id}"),
            method: Method::Invite,
            sent_by: sip_core::transaction::SentBy { host: "0.0.0.0".into(), port: 0 },
        });
        let mut call = Call::new(a, b, invite_a, key, first_route, first_plan.caller_id, tag, now);
        call.state = State::Originating;
        call.delayed = true;
        call.originated = true;
        call.second = second.map(|(mut plan, route)| {
            plan.stage.timeout = plan.stage.timeout.min(Duration::from_secs(30));
            SecondParty { stage: plan.stage, caller_id: plan.caller_id, route }
        });
        // The first party (a subscriber) is the caller the second party is told of.
        call.caller = from_uri.strip_prefix("sip:").map(str::to_owned);
        call.caller_uri = from_uri;
        call.callee_uri = to_uri;
        self.calls.insert(id, Box::new(call));
        self.ring(id, first_plan.stage, now);
        id
    }

    /// The first party of an originated call answered with its offer: anchor it and ring the
    /// second party with it.
    pub(super) fn first_party_answered(&mut self, id: u64, fork: usize, response: &Response, now: Now) {
        let Some(call) = self.calls.get_mut(&id) else { return };
        let Some(f) = call.forks.get(fork) else { return };
        call.a = f.dialog.clone();
        call.invite_a = f.invite.clone();
        call.a_fork = Some(fork);
        call.delayed = false;
        call.stage_open = false;
        call.stage_deadline = None;
        if let Ok(key) = TransactionKey::for_request(&call.invite_a) {
            call.invite_a_key = key.clone();
            self.originated.insert(key, id);
        }
        let sdp = is_sdp(&response.headers, &response.body).then(|| String::from_utf8_lossy(&response.body).into_owned());
        let active = sdp.as_deref().and_then(|s| Sdp::parse(s.as_bytes()).ok()).filter(Sdp::any_active).map(|s| s.active().to_vec());
        call.first_answered = Some(now);
        self.cancel_forks(id, Some(fork));
        self.start_limit(id, now.instant);
        self.update(id, UpdateKind::Answered { party: 1 });
        let Some(call) = self.calls.get_mut(&id) else { return };
        if call.ivr {
            if let (Some(sdp), Some(active)) = (sdp.clone(), active.clone()) {
                self.ivr_answered(id, sdp, active);
                return;
            }
        }
        let Some(call) = self.calls.get_mut(&id) else { return };
        let (Some(sdp), Some(active), Some(second)) = (sdp, active, call.second.take()) else {
            tracing::info!("the first party of an originated call answered without a usable offer");
            call.status = 502;
            call.cause = "failed";
            self.stats.calls_failed += 1;
            let (key, invite) = (call.invite_a_key.clone(), call.invite_a.clone());
            self.reply(&key, &invite, 502, now);
            self.abandon(id, now);
            return;
        };
        call.route = second.route;
        call.policy = second.caller_id;
        call.first_stage = Some(second.stage);
        call.state = State::Allocating;
        self.allocate_offer(id, sdp, active, false);
    }

    /// Ends call `id` for the API: an answered call with BYE on both sides, one being set up
    /// by cancelling it (its caller gets 487). Whether the call existed.
    pub fn handle_hangup(&mut self, id: u64, now: Now) -> bool {
        self.end_call(id, "hangup", now)
    }

    /// Ends every call with a leg or conference for which `lost` holds (their media plane is
    /// gone), as a hang-up with cause `cause`; returns how many.
    pub fn end_calls_with_media(&mut self, lost: &dyn Fn(u64) -> bool, cause: &'static str, now: Now) -> usize {
        let rooms: Vec<&str> =
            self.rooms.iter().filter(|(_, room)| room.conference().is_some_and(lost)).map(|(name, _)| name.as_str()).collect();
        let mut ids: Vec<u64> = self
            .calls
            .iter()
            .filter(|(_, c)| {
                let legs = c.media.iter().flat_map(|m| m.streams.iter().flatten()).any(|s| lost(s.leg_a) || lost(s.leg_b));
                legs || c.room.as_deref().is_some_and(|r| rooms.contains(&r))
            })
            .map(|(&id, _)| id)
            .collect();
        ids.sort_unstable();
        for &id in &ids {
            self.end_call(id, cause, now);
        }
        ids.len()
    }

    /// The media plane deleted `leg` after its media timeout (no RTP from its endpoint): the call
    /// it belongs to has lost its media — a phone that vanished without a BYE, a network gone —
    /// and is ended (cause `media-timeout`), rather than kept until someone hangs up. A service
    /// call's side that nobody has joined yet is not a party: its legs' timeout ends nothing.
    /// Whether a call was ended.
    pub fn handle_leg_timed_out(&mut self, leg: u64, now: Now) -> bool {
        let found = self
            .calls
            .iter()
            .find(|(_, c)| c.media.as_ref().is_some_and(|m| m.streams.iter().flatten().any(|s| s.leg_a == leg || s.leg_b == leg)));
        let Some(id) = found.map(|(&id, _)| id) else { return false };
        // Legs count idle time from their creation: a call still ringing has had no RTP to send
        // (a long ring, a find-me list, a fallback after minutes) and is not ended for it.
        if !self.calls.get(&id).is_some_and(|c| matches!(c.state, State::Answered | State::Confirmed)) {
            return false;
        }
        if self.ivr_alone(id) && !self.calls.get(&id).is_some_and(|c| c.media.as_ref().is_some_and(|m| m.facing(true).contains(&leg))) {
            return false;
        }
        tracing::info!(call = id, leg, "a leg of the call timed out in the media plane: ending the call");
        self.end_call(id, "media-timeout", now)
    }

    /// Ends call `id` whatever its state, with cause `cause`: BYE both sides of an answered
    /// call, a ringing one cancelled (its caller gets 487). Whether it exists.
    pub(super) fn end_call(&mut self, id: u64, cause: &'static str, now: Now) -> bool {
        self.clock = Some(now);
        let Some(call) = self.calls.get_mut(&id) else { return false };
        call.cause = cause;
        match call.state {
            State::Answered | State::Confirmed => {
                self.stats.calls_completed += 1;
                self.send_in_dialog(id, Side::A, "BYE", "", None, Purpose::Bye, now);
                self.hang_up_winner(id, None);
                self.finish(id);
            }
            State::Originating | State::Allocating | State::Calling => {
                let (key, invite) = (call.invite_a_key.clone(), call.invite_a.clone());
                if call.state != State::Originating {
                    self.reply(&key, &invite, 487, now);
                }
                self.stats.calls_cancelled += 1;
                self.abandon(id, now);
            }
            State::Cancelled => {}
        }
        true
    }

    /// Call `id` as the API lists it.
    pub fn call_info(&self, id: u64) -> Option<CallInfo> {
        self.calls.get(&id).map(|c| info(id, c))
    }

    /// The calls in progress.
    pub fn calls(&self) -> Vec<CallInfo> {
        let mut out: Vec<CallInfo> = self.calls.iter().map(|(&id, c)| info(id, c)).collect();
        out.sort_by_key(|c| c.call);
        out
    }

    /// An originated call's "response" to its first party, who answered our INVITE: a 2xx (the
    /// second party's answer) becomes our ACK with the answer; a failure, an ACK and a BYE.
    /// Provisional responses are not for it.
    pub(super) fn tell_first_party(&mut self, id: u64, response: Response) {
        let status = response.status_code.code();
        if status < 200 {
            return;
        }
        let branch = self.random.branch();
        let Some(call) = self.calls.get_mut(&id) else { return };
        let Some(f) = call.a_fork.and_then(|i| call.forks.get_mut(i)) else { return };
        if f.ack.is_some() {
            return;
        }
        let answer = ((200..300).contains(&status) && is_sdp(&response.headers, &response.body))
            .then(|| String::from_utf8_lossy(&response.body).into_owned());
        let cseq = message::cseq(&f.invite.headers).map(|c| c.seq).unwrap_or(1);
        if let Some((ack, peer)) = Self::encode_ack(&self.config, &f.dialog, cseq, &branch, answer.as_deref()) {
            self.sip.push_back(SipOut::Transmit(Outgoing { destination: peer, payload: ack.clone(), retransmission: false }));
            f.ack = Some(ack);
        }
        if (200..300).contains(&status) {
            call.state = State::Confirmed;
        } else {
            let now = self.clock.unwrap_or(call.started);
            self.send_in_dialog(id, Side::A, "BYE", "", None, Purpose::Bye, now);
        }
    }
}

/// Call `id` for the API.
fn info(id: u64, c: &Call) -> CallInfo {
    let ms = |n: &Now| n.wall.duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
    CallInfo {
        call: id,
        caller: c.caller_uri.clone(),
        callee: c.callee_uri.clone(),
        phase: match c.state {
            State::Answered | State::Confirmed => Phase::Answered,
            State::Cancelled => Phase::Ending,
            _ => Phase::Ringing,
        },
        started_unix_ms: ms(&c.started),
        answered_unix_ms: c.answered.as_ref().map_or(0, ms),
        originated: c.originated,
    }
}
