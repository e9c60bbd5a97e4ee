//! The callee side of a call: stages of forks (one INVITE each), their responses, the winner,
//! CANCELs, late answers, trunk authentication and redirects collected for routing.

use super::*;

impl B2bua {
    /// Sends a request in fork `fork`'s dialog (a BYE to a fork that answered late).
    pub(super) fn send_in_fork(&mut self, id: u64, fork: usize, method: &str, purpose: Purpose) {
        self.send_in_fork_with(id, fork, method, "", purpose);
    }

    /// A request in fork `fork`'s dialog with `extra` header lines (each ending in CRLF).
    pub(super) fn send_in_fork_with(&mut self, id: u64, fork: usize, method: &str, extra: &str, purpose: Purpose) {
        let branch = self.random.branch();
        let Some(fork) = self.calls.get_mut(&id).and_then(|c| c.forks.get_mut(fork)) else { return };
        let sent_by = self.config.advertise_for(fork.dialog.peer.transport);
        match fork.dialog.request(method, &sent_by, &branch, extra, None) {
            Ok(request) => {
                let peer = fork.dialog.peer;
                self.send_client(id, request, peer, purpose);
            }
            Err(e) => tracing::error!(error = %e, "cannot build a request to a fork"),
        }
    }

    /// Our From towards the callee side, without tag.
    pub(super) fn b_from(a: &Dialog, policy: CallerIdPolicy) -> String {
        match policy {
            CallerIdPolicy::Strip => "\"Anonymous\" <sip:anonymous@anonymous.invalid>".to_owned(),
            _ => without_tag(&a.remote),
        }
    }

    /// Rings `stage`: one INVITE per branch, each its own Call-ID and dialog, all with the
    /// media plane's offer; the stage ends at its timeout if nobody answers.
    pub(super) fn ring(&mut self, id: u64, stage: Stage, now: Now) {
        let Some(call) = self.calls.get_mut(&id) else { return };
        let sdp = match (&call.media, call.delayed) {
            (Some(m), false) => Some(m.offer.clone()),
            (None, true) => None,
            _ => return,
        };
        call.stage += 1;
        call.stage_open = true;
        let deadline = now.instant + stage.timeout;
        call.stage_deadline = Some(deadline);
        let mut common = String::new();
        // The caller's Max-Forwards minus one, so a route that loops back to us runs out of hops
        // (483) instead of ringing forever.
        let hops = message::max_forwards(&call.invite_a.headers).unwrap_or(70).saturating_sub(1);
        common.push_str(&format!("Max-Forwards: {hops}\r\n"));
        common.push_str(&format!("Allow: {ALLOW}\r\n"));
        if call.rel.offer_to_callee() && !call.delayed {
            // The caller takes reliable provisional responses: the callee may send them (we
            // PRACK them), so an early answer can be followed by UPDATEs (see `reliable`).
            common.push_str("Supported: 100rel\r\n");
        }
        // A target rung for a transfer (or a parker rung back) from the caller's side sees the
        // transferee; the caller's own identity headers are not the transferee's.
        let callers_own = !call.transfer.as_ref().is_some_and(|t| t.transferor == Side::A);
        match call.policy {
            CallerIdPolicy::Passthrough if !callers_own => {}
            CallerIdPolicy::Assert if !callers_own => {
                common.push_str(&format!("P-Asserted-Identity: {}\r\n", without_tag(&call.b.remote)));
            }
            CallerIdPolicy::Passthrough => {
                for name in ["P-Asserted-Identity", "Remote-Party-ID", "Privacy"] {
                    if let Some(v) = header(&call.invite_a.headers, name) {
                        common.push_str(&format!("{name}: {v}\r\n"));
                    }
                }
            }
            CallerIdPolicy::Assert => {
                for name in ["Remote-Party-ID", "Privacy"] {
                    if let Some(v) = header(&call.invite_a.headers, name) {
                        common.push_str(&format!("{name}: {v}\r\n"));
                    }
                }
                let asserted = match &call.caller {
                    Some(aor) => format!("<sip:{aor}>"),
                    None => format!("<{}>", uri_of(&call.a.remote)),
                };
                common.push_str(&format!("P-Asserted-Identity: {asserted}\r\n"));
            }
            CallerIdPolicy::Strip => {}
        }
        // An originated call shows the first party's address-of-record to the second.
        let identity = if let Some(t) = &call.transfer {
            // A transfer's target sees the transferee (as its dialog names it).
            without_tag(&call.dialog(t.transferor.other()).remote)
        } else if call.originated && call.state != State::Originating && call.policy != CallerIdPolicy::Strip {
            format!("<{}>", call.caller_uri)
        } else {
            Self::b_from(&call.a, call.policy)
        };
        let from = format!("{identity};tag={}", call.tag_b);
        let stage_number = call.stage;
        let mut sent = 0;
        for branch in stage.branches {
            let peer = branch.peer;
            let call_id = format!("{}-b2b", self.random.call_id());
            let via_branch = self.random.branch();
            let mut dialog =
                Dialog::uac(call_id.clone(), from.clone(), format!("<{}>", branch.target), branch.target, branch.route, branch.peer);
            let extra = format!("{common}{}Contact: {}\r\n", stage.headers, our_contact(&self.config, &dialog.peer));
            let sent_by = self.config.advertise_for(dialog.peer.transport);
            let body = sdp.as_deref().map(|sdp| ("application/sdp", sdp.as_bytes()));
            let request = match dialog.request("INVITE", &sent_by, &via_branch, &extra, body) {
                Ok(r) => r,
                Err(e) => {
                    tracing::error!(error = %e, "cannot build a callee's INVITE");
                    continue;
                }
            };
            let Some(call) = self.calls.get_mut(&id) else { return };
            // (A service call's side B stays nobody until its second party has joined.)
            if call.forks.is_empty() && !call.ivr {
                call.b = dialog.clone();
            }
            let fork = call.forks.len();
            call.forks.push(Fork {
                stage: stage_number,
                dialog,
                invite: request.clone(),
                state: ForkState::Ringing,
                provisional: false,
                cancel_on_provisional: false,
                ack: None,
                credentials: branch.credentials,
                auth_tried: false,
                redirects: Vec::new(),
                trunk: branch.trunk,
                rseq: None,
            });
            // (A transfer's target is filed under the callee's side while it rings, whichever side
            // it replaces: its requests are a fork's until it is joined.)
            let side = if call.state == State::Originating { Side::A } else { Side::B };
            self.by_call_id.insert(call_id, (id, side));
            self.stats.forks += 1;
            sent += 1;
            self.send_client(id, request, peer, Purpose::Invite { fork });
        }
        self.schedule(deadline, id);
        if sent == 0 {
            if self.calls.get(&id).is_some_and(|c| c.transfer.is_some()) {
                self.transfer_failed(id, 500, now);
            } else {
                self.end_stage(id, Outcome::Failed(500));
            }
        }
    }

    pub(super) fn on_invite_response(&mut self, id: u64, fork: usize, response: Response, now: Now) {
        let status = response.status_code.code();
        let transfer_target = self.is_transfer_fork(id, fork);
        let Some(call) = self.calls.get_mut(&id) else { return };
        let current = call.forks.get(fork).is_some_and(|f| f.stage == call.stage && f.state == ForkState::Ringing);
        let Some(f) = call.forks.get_mut(fork) else { return };
        match status {
            100 => {}
            101..=199 => {
                f.provisional = true;
                take_into_dialog(&mut f.dialog, &response);
                if std::mem::take(&mut f.cancel_on_provisional) {
                    self.cancel_fork(id, fork);
                    return;
                }
                if !self.prack_fork(id, fork, &response) {
                    // A reliable provisional response again (our PRACK crossed it): passed on once.
                    return;
                }
                let Some(call) = self.calls.get_mut(&id) else { return };
                let party = if call.state == State::Originating { 1 } else { 2 };
                if matches!(call.state, State::Calling | State::Originating) && current && !call.ringing_told[party - 1] {
                    call.ringing_told[party - 1] = true;
                    self.update(id, UpdateKind::Ringing { party: party as u8 });
                }
                let Some(call) = self.calls.get_mut(&id) else { return };
                if call.state != State::Calling || !current {
                    return;
                }
                // Early media from one fork only: the first that sends SDP.
                let has_sdp = is_sdp(&response.headers, &response.body);
                let answers_offer = match call.early_from {
                    None if has_sdp => {
                        call.early_from = Some(fork);
                        true
                    }
                    Some(from) => from == fork,
                    None => true,
                };
                let forward =
                    Forward { to: Side::A, origin: call.invite_a_key.clone(), request: call.invite_a.clone(), response, answers_offer };
                self.forward(id, forward, now);
            }
            200..=299 => {
                if matches!(f.state, ForkState::Done(s) if (200..300).contains(&s)) {
                    // The fork retransmitted its 2xx: our ACK was lost (or, with a delayed
                    // offer, is not sent yet).
                    if let Some(ack) = f.ack.clone() {
                        self.sip.push_back(SipOut::Transmit(Outgoing { destination: f.dialog.peer, payload: ack, retransmission: true }));
                    }
                    return;
                }
                take_into_dialog(&mut f.dialog, &response);
                f.state = ForkState::Done(status);
                let cseq = message::cseq(&response.headers).map(|c| c.seq).unwrap_or(1);
                let transfer_answers = transfer_target && call.transfer.as_ref().is_some_and(|t| t.answered.is_none());
                // A fork of a stage that ended unanswered (cancelled, a 200 crossing the CANCEL)
                // no longer wins: routing has moved on, and its credit was let go.
                let current_stage = f.stage == call.stage;
                let wins = transfer_answers
                    || (matches!(call.state, State::Calling | State::Originating) && call.winner.is_none() && current_stage);
                // A delayed-offer 2xx carries the callee's offer: its ACK waits for the caller's
                // answer. Any other 2xx is ACKed now.
                if !(wins && call.delayed) {
                    let branch = self.random.branch();
                    if let Some((ack, peer)) = Self::encode_ack(&self.config, &f.dialog, cseq, &branch, None) {
                        self.sip.push_back(SipOut::Transmit(Outgoing { destination: peer, payload: ack.clone(), retransmission: false }));
                        f.ack = Some(ack);
                    }
                }
                if !wins {
                    // Answered after the caller gave up, or after another fork won: hang it up.
                    self.stats.late_answers += 1;
                    self.send_in_fork(id, fork, "BYE", Purpose::Bye);
                    self.settle(id);
                    return;
                }
                if transfer_answers {
                    self.transfer_answered(id, fork, &response);
                    return;
                }
                if call.state == State::Originating {
                    self.first_party_answered(id, fork, &response, now);
                    return;
                }
                call.winner = Some(fork);
                call.b = f.dialog.clone();
                if is_sdp(&response.headers, &response.body) {
                    call.last_sdp[Side::B as usize] = Some(String::from_utf8_lossy(&response.body).into_owned());
                }
                call.state = State::Answered;
                call.answered = Some(now);
                call.stage_open = false;
                call.stage_deadline = None;
                self.stats.calls_answered += 1;
                if call.forks.get(fork).is_some_and(|f| f.trunk) {
                    self.start_limit(id, now.instant);
                }
                self.cancel_forks(id, Some(fork));
                self.update(id, UpdateKind::Answered { party: 2 });
                let Some(call) = self.calls.get_mut(&id) else { return };
                let delayed = call.delayed;
                let forward = Forward {
                    to: Side::A,
                    origin: call.invite_a_key.clone(),
                    request: call.invite_a.clone(),
                    response,
                    answers_offer: !delayed,
                };
                if delayed {
                    self.delayed_offer(id, forward, now);
                } else {
                    self.forward(id, forward, now);
                }
            }
            401 | 407 if f.credentials.is_some() && !f.auth_tried && f.state == ForkState::Ringing => {
                self.authenticate_fork(id, fork, &response, now)
            }
            _ => self.fork_final(id, fork, status, Some(response), now),
        }
    }

    /// A trunk challenged fork `fork`'s INVITE: the same INVITE again, with a new branch, the
    /// next CSeq and the route's credentials (RFC 3261 §22.2); a second challenge fails the fork.
    pub(super) fn authenticate_fork(&mut self, id: u64, fork: usize, response: &Response, now: Now) {
        use sip_core::digest::{authorization, ha1, parse_challenge};
        let status = response.status_code.code();
        let value = response.headers.iter().find_map(|h| match h {
            Header::WwwAuthenticate(v) if status == 401 => Some(v.value().to_owned()),
            Header::ProxyAuthenticate(v) if status == 407 => Some(v.value().to_owned()),
            _ => None,
        });
        let challenge = value.as_deref().and_then(|v| parse_challenge(v).ok());
        let (branch, cnonce) = (self.random.branch(), self.random.tag());
        let Some(f) = self.calls.get_mut(&id).and_then(|c| c.forks.get_mut(fork)) else { return };
        f.auth_tried = true;
        let (Some(challenge), Some(credentials)) = (challenge, f.credentials.clone()) else {
            self.fork_final(id, fork, status, None, now);
            return;
        };
        let secret = ha1(challenge.algorithm.hash(), &credentials.username, &challenge.realm, &credentials.password);
        let uri = f.invite.uri.to_string();
        let answer = authorization(&challenge, &credentials.username, &secret, "INVITE", &uri, &cnonce, 1);
        let seq = message::cseq(&f.invite.headers).map(|c| c.seq).unwrap_or(1) + 1;
        let sent_by = self.config.advertise_for(f.dialog.peer.transport);
        let transport = match f.dialog.peer.transport {
            rsip::Transport::Tcp => "TCP",
            rsip::Transport::Tls => "TLS",
            _ => "UDP",
        };
        let mut invite = f.invite.clone();
        for h in invite.headers.iter_mut() {
            match h {
                Header::Via(_) => *h = Header::Via(rsip::headers::Via::new(format!("SIP/2.0/{transport} {sent_by};branch={branch};rport"))),
                Header::CSeq(_) => *h = Header::CSeq(rsip::headers::CSeq::new(format!("{seq} INVITE"))),
                _ => {}
            }
        }
        invite.headers.push(if status == 401 {
            Header::Authorization(rsip::headers::Authorization::new(answer))
        } else {
            Header::ProxyAuthorization(rsip::headers::ProxyAuthorization::new(answer))
        });
        f.dialog.local_cseq = seq;
        f.invite = invite.clone();
        let peer = f.dialog.peer;
        self.send_client(id, invite, peer, Purpose::Invite { fork });
    }

    /// Delayed offer: the callee's 2xx made the offer. The media plane allocates the legs with
    /// it and rewrites it for the caller; the 2xx goes on when it is back
    /// ([`on_allocated`](Self::on_allocated)).
    pub(super) fn delayed_offer(&mut self, id: u64, forward: Forward, now: Now) {
        let Some(call) = self.calls.get_mut(&id) else { return };
        let sdp =
            is_sdp(&forward.response.headers, &forward.response.body).then(|| String::from_utf8_lossy(&forward.response.body).into_owned());
        let Some(sdp) = sdp.filter(|s| Sdp::parse(s.as_bytes()).is_ok_and(|s| s.any_active())) else {
            // No usable offer where RFC 3261 §13.2.1 requires one: end both sides.
            let (key, invite) = (call.invite_a_key.clone(), call.invite_a.clone());
            tracing::info!("a delayed-offer 2xx without a usable offer");
            self.reply(&key, &invite, 502, now);
            self.stats.calls_failed += 1;
            self.hang_up_winner(id, None);
            self.finish(id);
            return;
        };
        let active = Sdp::parse(sdp.as_bytes()).map(|s| s.active().to_vec()).unwrap_or_default();
        call.delayed_answer = Some(forward);
        let request = MediaRequest::Allocate {
            call_id: call.a.call_id.clone(),
            offer: sdp,
            callee_offers: true,
            active,
            policy: self.config.codec_policy.clone(),
            local: false,
        };
        self.media_request(id, request);
    }

    /// ACKs the answering fork's 2xx (with `answer` when it made the offer) if not done yet, then
    /// hangs it up.
    pub(super) fn hang_up_winner(&mut self, id: u64, answer: Option<&str>) {
        let branch = self.random.branch();
        let Some(call) = self.calls.get_mut(&id) else { return };
        let Some(fork) = call.winner else {
            // The callee side is no fork of ours (an attended transfer brought in a caller of
            // the other call): a BYE in its dialog.
            let now = self.clock.unwrap_or(call.started);
            self.send_in_dialog(id, Side::B, "BYE", "", None, Purpose::Bye, now);
            return;
        };
        let Some(f) = call.forks.get_mut(fork) else { return };
        if f.ack.is_none() {
            let cseq = message::cseq(&f.invite.headers).map(|c| c.seq).unwrap_or(1);
            if let Some((ack, peer)) = Self::encode_ack(&self.config, &f.dialog, cseq, &branch, answer) {
                self.sip.push_back(SipOut::Transmit(Outgoing { destination: peer, payload: ack.clone(), retransmission: false }));
                f.ack = Some(ack);
            }
        }
        let in_call = matches!(call.state, State::Answered | State::Confirmed) && call.b.call_id == f.dialog.call_id;
        if in_call {
            // The call's own dialog: re-INVITEs since the answer moved its CSeq and target on.
            let now = self.clock.unwrap_or(call.started);
            self.send_in_dialog(id, Side::B, "BYE", "", None, Purpose::Bye, now);
        } else {
            self.send_in_fork(id, fork, "BYE", Purpose::Bye);
        }
    }

    /// Fork `fork` ended without an answer (`status`, or 408 for a timeout). When it was the
    /// current stage's last, the stage ends with the best of its forks' statuses; a 6xx other
    /// than 600 ends it at once (RFC 3261 §16.7.5).
    pub(super) fn fork_final(&mut self, id: u64, fork: usize, status: u16, response: Option<Response>, now: Now) {
        let Some(call) = self.calls.get_mut(&id) else { return };
        let Some(f) = call.forks.get_mut(fork) else { return };
        if !f.outstanding() {
            return;
        }
        f.state = ForkState::Done(status);
        self.events.push_back(CallEvent::DialogsChanged { call: id });
        let Some(call) = self.calls.get_mut(&id) else { return };
        let Some(f) = call.forks.get_mut(fork) else { return };
        if let (300..=399, Some(response)) = (status, &response) {
            f.redirects = response
                .headers
                .iter()
                .filter_map(|h| match h {
                    Header::Contact(c) => Some(c.value().to_owned()),
                    _ => None,
                })
                .flat_map(|v| message::split_list(&v).map(|c| uri_of(c).to_owned()).collect::<Vec<_>>())
                .filter(|c| !c.is_empty() && c != "*")
                .collect();
        }
        if call.transfer.as_ref().is_some_and(|t| t.stage == f.stage && t.answered.is_none()) {
            let stage = f.stage;
            if !call.forks.iter().any(|f| f.stage == stage && f.outstanding()) {
                let status = match outcome_of(&call.stage_statuses(stage), &[]) {
                    Outcome::Busy(s) | Outcome::Failed(s) => s,
                    _ => 480,
                };
                self.transfer_failed(id, status, now);
            }
            return;
        }
        let Some(call) = self.calls.get_mut(&id) else { return };
        let Some(f) = call.forks.get(fork) else { return };
        let (stage, open) = (call.stage, call.stage_open && matches!(call.state, State::Calling | State::Originating));
        if open && f.stage == stage {
            let decline = (601..700).contains(&status);
            let ringing = call.forks.iter().any(|f| f.stage == stage && f.outstanding());
            if decline || !ringing {
                self.stage_ended(id, stage, decline.then_some(status));
            }
        }
        self.settle(id);
    }

    /// Stage `stage` of call `id` is over: it ends with its forks' best outcome, or with
    /// `decline` (a 6xx other than 600, which ends it at once, the others cancelled).
    pub(super) fn stage_ended(&mut self, id: u64, stage: u32, decline: Option<u16>) {
        let Some(call) = self.calls.get(&id) else { return };
        let statuses = call.stage_statuses(stage);
        let redirects: Vec<String> = call.forks.iter().filter(|f| f.stage == stage).flat_map(|f| f.redirects.iter().cloned()).collect();
        if decline.is_some() {
            self.cancel_forks(id, None);
        }
        let outcome = match decline {
            Some(status) => Outcome::Failed(status),
            None => outcome_of(&statuses, &redirects),
        };
        self.end_stage(id, outcome);
    }

    /// The current stage is over without an answer: routing decides what follows.
    pub(super) fn end_stage(&mut self, id: u64, outcome: Outcome) {
        let Some(call) = self.calls.get_mut(&id) else { return };
        call.stage_open = false;
        call.stage_deadline = None;
        self.events.push_back(CallEvent::Unanswered { call: id, outcome });
    }

    /// CANCELs every fork still ringing but `except` (now if it sent a provisional response,
    /// else on its first one).
    pub(super) fn cancel_forks(&mut self, id: u64, except: Option<usize>) {
        let Some(call) = self.calls.get(&id) else { return };
        let ringing: Vec<usize> =
            (0..call.forks.len()).filter(|&i| Some(i) != except && call.forks[i].state == ForkState::Ringing).collect();
        for fork in ringing {
            self.cancel_fork(id, fork);
        }
    }

    pub(super) fn cancel_fork(&mut self, id: u64, fork: usize) {
        let Some(f) = self.calls.get_mut(&id).and_then(|c| c.forks.get_mut(fork)) else { return };
        if matches!(f.state, ForkState::Done(_)) {
            return;
        }
        f.state = ForkState::Cancelling;
        if f.provisional {
            let (cancel, peer) = (cancel_for(&f.invite), f.dialog.peer);
            self.send_client(id, cancel, peer, Purpose::Cancel);
        } else {
            f.cancel_on_provisional = true;
        }
    }
}

/// B's response to our INVITE, taken into B's dialog: the first with a To tag makes the dialog
/// (early or confirmed), later ones of the same dialog update it; a 2xx from another fork
/// replaces it (forking is not used yet: one branch is rung).
fn take_into_dialog(dialog: &mut Dialog, response: &Response) {
    let tag = sip_core::message::to_value(&response.headers).and_then(tag_of).map(str::to_owned);
    let Some(tag) = tag else { return };
    if dialog.state == DialogState::Trying || tag_of(&dialog.remote) != Some(tag.as_str()) {
        if let Ok(made) = dialog.fork(response) {
            *dialog = made;
        }
    } else {
        dialog.update(response);
    }
}
