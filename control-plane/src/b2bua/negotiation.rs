//! Offer and answer through the media plane: the allocation, in-dialog offers relayed once
//! rewritten, and responses forwarded in order, each waiting for its answer.

use super::*;

impl B2bua {
    pub(super) fn on_allocated(&mut self, id: u64, result: Result<Allocation, MediaError>, now: Now) {
        match &result {
            Ok(_) => self.stats.media_allocations += 1,
            Err(error) => {
                self.stats.media_allocation_failures += 1;
                tracing::warn!(%error, media_planes = ?self.config.media_grpc, "media allocation failed");
            }
        }
        let Some(call) = self.calls.get_mut(&id) else {
            if let Ok(allocation) = result {
                self.media_request(id, allocation.release());
            }
            return;
        };
        if call.delayed {
            self.on_delayed_allocated(id, result, now);
            return;
        }
        match result {
            Err(error) => {
                if call.state == State::Allocating {
                    let (key, invite) = (call.invite_a_key.clone(), call.invite_a.clone());
                    // An offer the media plane cannot take (no usable codec or crypto) is the
                    // caller's to fix; anything else is ours.
                    let status = if matches!(error, MediaError::NotAcceptable(_)) { 488 } else { 503 };
                    self.reply(&key, &invite, status, now);
                    self.stats.calls_failed += 1;
                }
                self.finish(id);
            }
            Ok(allocation) if call.ivr => self.ivr_allocated(id, allocation, now),
            Ok(allocation) => {
                call.offer_legs = allocation.legs(true);
                call.media = Some(allocation);
                if call.state != State::Allocating {
                    // The caller gave up while the media plane was working.
                    self.finish(id);
                    return;
                }
                call.state = State::Calling;
                let announce = std::mem::take(&mut call.announce_first);
                if let Some(stage) = call.first_stage.take() {
                    if announce {
                        self.announce_forward(id, now);
                    }
                    self.ring(id, stage, now);
                }
            }
        }
    }

    /// Delayed offer: the legs exist and the callee's offer is rewritten for the caller, who gets
    /// the 2xx with it; the caller's ACK brings the answer.
    pub(super) fn on_delayed_allocated(&mut self, id: u64, result: Result<Allocation, MediaError>, now: Now) {
        let Some(call) = self.calls.get_mut(&id) else { return };
        let forward = call.delayed_answer.take();
        match (result, forward) {
            (Ok(allocation), Some(forward)) if call.state == State::Answered => {
                call.offer_legs = allocation.legs(false);
                let offer = allocation.offer.clone();
                call.media = Some(allocation);
                self.deliver(id, forward, Some(offer), now);
            }
            (result, forward) => {
                if let Ok(allocation) = result {
                    self.media_request(id, allocation.release());
                }
                if let (Some(forward), Some(call)) = (forward, self.calls.get(&id)) {
                    let out = response_for(&forward.request, 503, None, Some(call.a.local_tag()));
                    self.respond(&forward.origin, out);
                    self.stats.calls_failed += 1;
                }
                self.hang_up_winner(id, None);
                self.finish(id);
            }
        }
    }

    /// An in-dialog request from `side` for the other side: with an SDP offer, through the media
    /// plane's Offer first ([`on_offered`](Self::on_offered) relays it), else at once.
    pub(super) fn relay(&mut self, id: u64, side: Side, key: TransactionKey, request: Request, now: Now) {
        let has_sdp = is_sdp(&request.headers, &request.body);
        if request.method == Method::Invite && !has_sdp {
            if self.calls.get(&id).is_none_or(|c| c.media.is_none() || c.negotiating || c.relay_offer.is_some()) {
                let response = response_for(&request, 488, Some("Offer Required"), None);
                self.respond(&key, response);
                return;
            }
            // The other side's 2xx will make the offer (see `reoffer`).
            self.reoffer_start(id, side);
        }
        if has_sdp && Sdp::parse(&request.body).is_err() {
            self.reply(&key, &request, 488, now);
            return;
        }
        let body =
            if has_sdp { None } else { content_type(&request.headers).map(|c| (c, request.body.clone())).filter(|(_, b)| !b.is_empty()) };
        let method = request.method.to_string();
        let mut extra = String::new();
        if matches!(request.method, Method::Invite | Method::Update) {
            if let Some(call) = self.calls.get_mut(&id) {
                if request.method == Method::Invite {
                    call.reinvite_pending = true;
                }
                extra = format!("Contact: {}\r\n", our_contact(&self.config, &call.dialog(side.other()).peer));
            }
        }
        for name in ["Event", "Subscription-State", "Info-Package", "Reason"] {
            if let Some(v) = header(&request.headers, name) {
                extra.push_str(&format!("{name}: {v}\r\n"));
            }
        }
        if has_sdp {
            let Some(call) = self.calls.get_mut(&id) else { return };
            let Some(legs) = call.media.as_ref().map(|m| m.legs(side == Side::A)) else {
                self.reply(&key, &request, 488, now);
                return;
            };
            if call.negotiating || call.relay_offer.is_some() {
                self.reply(&key, &request, 491, now);
                return;
            }
            call.offer_legs.clone_from(&legs);
            call.negotiating = true;
            call.last_sdp[side as usize] = Some(String::from_utf8_lossy(&request.body).into_owned());
            if matches!(request.method, Method::Invite | Method::Update) {
                let holds = Sdp::parse(&request.body).is_ok_and(|s| s.holds());
                call.pending_hold = Some((side, holds));
            }
            let sdp = String::from_utf8_lossy(&request.body).into_owned();
            call.relay_offer = Some(RelayOffer { key, from: side, request, extra });
            let policy = self.config.codec_policy.clone();
            self.media_request(id, MediaRequest::Offer { legs, sdp, policy });
            return;
        }
        let purpose = Purpose::Relay { origin: key, from: side, request: Box::new(request), offer: false };
        self.send_in_dialog(id, side.other(), &method, &extra, body.as_ref().map(|(c, b)| (c.as_str(), b.as_slice())), purpose, now);
    }

    pub(super) fn on_relay_response(
        &mut self,
        id: u64,
        origin: &TransactionKey,
        from: Side,
        request: &Request,
        offer: bool,
        response: Response,
        now: Now,
    ) {
        let status = response.status_code.code();
        if status < 200 {
            return;
        }
        let to = from.other();
        let is_invite = request.method == Method::Invite;
        if let Some(call) = self.calls.get_mut(&id) {
            if matches!(request.method, Method::Invite | Method::Update) {
                // The dialog the request went in (an early UPDATE's fork may have lost the call
                // to another fork since).
                let cid = call_id(&response.headers).unwrap_or_default().to_owned();
                let early_fork =
                    (to == Side::B && cid != call.b.call_id).then(|| call.forks.iter().position(|f| f.dialog.call_id == cid)).flatten();
                match early_fork {
                    Some(f) => call.forks[f].dialog.target_refreshed(&response),
                    None => call.live_dialog_mut(to).target_refreshed(&response),
                }
            }
        }
        if is_invite && self.reoffer_waits(id, from) {
            self.reoffer_answered(id, origin, request, response, now);
            return;
        }
        if is_invite && status < 300 && self.reoffer_repeated(id, from, &response) {
            return;
        }
        if is_invite && status < 300 {
            let cseq = message::cseq(&response.headers).map(|c| c.seq).unwrap_or(1);
            if let Some((ack, peer)) = self.ack(id, to, cseq) {
                self.sip.push_back(SipOut::Transmit(Outgoing { destination: peer, payload: ack, retransmission: false }));
            }
        }
        let Some(call) = self.calls.get_mut(&id) else { return };
        if is_invite {
            call.reinvite_pending = false;
        }
        if offer && (200..300).contains(&status) && is_sdp(&response.headers, &response.body) {
            call.last_sdp[to as usize] = Some(String::from_utf8_lossy(&response.body).into_owned());
        }
        let forward = Forward { to: from, origin: origin.clone(), request: request.clone(), response, answers_offer: offer };
        self.forward(id, forward, now);
    }

    /// The media plane rewrote an in-dialog offer: relay the request with it.
    pub(super) fn on_offered(&mut self, id: u64, result: Result<String, MediaError>, now: Now) {
        if self.resume_waits(id) {
            self.resume_media(id, result, now);
            return;
        }
        let Some(call) = self.calls.get_mut(&id) else { return };
        if call.transfer_offer {
            self.transfer_offered(id, result, now);
            return;
        }
        if self.reoffer_offer_waits(id) {
            self.reoffer_offered(id, result, now);
            return;
        }
        let Some(call) = self.calls.get_mut(&id) else { return };
        call.negotiating = false;
        let Some(RelayOffer { key, from, request, extra }) = call.relay_offer.take() else { return };
        match result {
            Ok(sdp) => {
                let method = request.method.to_string();
                let purpose = Purpose::Relay { origin: key, from, request: Box::new(request), offer: true };
                self.send_in_dialog(id, from.other(), &method, &extra, Some(("application/sdp", sdp.as_bytes())), purpose, now);
            }
            Err(error) => {
                tracing::info!(%error, "an in-dialog offer was refused by the media plane");
                if let Some(call) = self.calls.get_mut(&id) {
                    call.reinvite_pending = false;
                }
                let status = if matches!(error, MediaError::NotAcceptable(_)) { 488 } else { 500 };
                self.reply(&key, &request, status, now);
            }
        }
        self.pump_forwards(id, now);
    }

    /// The media plane rewrote the answer at the head of the call's forwards (or, with a delayed
    /// offer, the caller's answer in its ACK).
    pub(super) fn on_answered(&mut self, id: u64, result: Result<String, MediaError>, now: Now) {
        if self.resume_waits(id) {
            self.resume_media(id, result, now);
            return;
        }
        let Some(call) = self.calls.get_mut(&id) else { return };
        if std::mem::take(&mut call.transfer_answer) {
            if let Err(error) = result {
                tracing::warn!(%error, "the transferee's answer was refused by the media plane");
            }
            return;
        }
        if std::mem::take(&mut call.ack_answer_pending) {
            match result {
                Ok(sdp) => {
                    let branch = self.random.branch();
                    let Some(f) = call.winner.and_then(|w| call.forks.get_mut(w)) else { return };
                    let cseq = message::cseq(&f.invite.headers).map(|c| c.seq).unwrap_or(1);
                    if let Some((ack, peer)) = Self::encode_ack(&self.config, &f.dialog, cseq, &branch, Some(&sdp)) {
                        self.sip.push_back(SipOut::Transmit(Outgoing { destination: peer, payload: ack.clone(), retransmission: false }));
                        f.ack = Some(ack);
                    }
                }
                Err(error) => {
                    tracing::info!(%error, "the caller's answer in its ACK was refused by the media plane");
                    self.end_both(id, now);
                }
            }
            return;
        }
        if self.reoffer_answer_waits(id) {
            self.reoffer_done(id, result, now);
            return;
        }
        let Some(call) = self.calls.get_mut(&id) else { return };
        call.negotiating = false;
        let Some(forward) = call.forwards.pop_front() else { return };
        let status = forward.response.status_code.code();
        match result {
            Ok(sdp) => self.deliver(id, forward, Some(sdp), now),
            Err(error) if status >= 200 => {
                // The answer cannot be used: the session the offerer asked for does not exist.
                tracing::info!(%error, "an answer was refused by the media plane");
                if forward.request.method == Method::Invite {
                    let out = response_for(&forward.request, 488, None, Some(call.dialog(forward.to).local_tag()));
                    let initial = call.invite_a_key == forward.origin;
                    self.respond(&forward.origin, out);
                    if initial {
                        // The callee answered the call itself: it is hung up.
                        self.stats.calls_failed += 1;
                        self.send_in_dialog(id, Side::B, "BYE", "", None, Purpose::Bye, now);
                        self.finish(id);
                        return;
                    }
                } else {
                    self.reply(&forward.origin, &forward.request, 488, now);
                }
            }
            // A provisional response goes on without its answer.
            Err(_) => self.deliver(id, forward, None, now),
        }
        self.pump_forwards(id, now);
    }

    /// Queues a response for the other side; it goes once the answers before it (and its own)
    /// are back from the media plane.
    pub(super) fn forward(&mut self, id: u64, forward: Forward, now: Now) {
        let Some(call) = self.calls.get_mut(&id) else { return };
        call.forwards.push_back(forward);
        self.pump_forwards(id, now);
    }

    pub(super) fn pump_forwards(&mut self, id: u64, now: Now) {
        loop {
            let Some(call) = self.calls.get_mut(&id) else { return };
            if call.negotiating {
                return;
            }
            let Some(head) = call.forwards.front() else { return };
            let status = head.response.status_code.code();
            if call.rel.waiting_for_prack() && head.origin == call.invite_a_key && status < 300 {
                // A reliable provisional response is out: what follows it waits for its PRACK.
                return;
            }
            let has_answer = head.answers_offer && status < 300 && is_sdp(&head.response.headers, &head.response.body);
            if has_answer && head.origin == call.invite_a_key && call.rel.answer_sent() {
                // The caller has its answer, reliably: SDP now would be a new offer (RFC 3262
                // §5), and an early UPDATE may have moved the offer legs since.
                let Some(forward) = call.forwards.pop_front() else { return };
                self.deliver(id, forward, None, now);
                continue;
            }
            if has_answer && call.media.is_some() {
                call.negotiating = true;
                let request =
                    MediaRequest::Answer { legs: call.offer_legs.clone(), sdp: String::from_utf8_lossy(&head.response.body).into_owned() };
                self.media_request(id, request);
                return;
            }
            let Some(forward) = call.forwards.pop_front() else { return };
            self.deliver(id, forward, None, now);
        }
    }

    /// Sends a forwarded response on, with `answer` as its body (else any non-SDP body it had);
    /// a 2xx to an INVITE over UDP is retransmitted until its ACK.
    pub(super) fn deliver(&mut self, id: u64, forward: Forward, answer: Option<String>, now: Now) {
        let Some(call) = self.calls.get_mut(&id) else { return };
        let status = forward.response.status_code.code();
        let is_invite_2xx = forward.request.method == Method::Invite && (200..300).contains(&status);
        if is_invite_2xx && forward.to == Side::A && call.a.state != DialogState::Confirmed {
            call.a.confirm();
        }
        if forward.to == Side::A && status < 200 && call.state == State::Calling && answer.is_some() {
            call.early_answer.clone_from(&answer);
        }
        let with_answer = answer.is_some();
        let mut out = response_to(&self.config, call, forward.to, &forward.request, &forward.response, status, answer);
        let retransmit = (is_invite_2xx && !call.dialog(forward.to).peer.is_reliable() && !self.originated.contains_key(&forward.origin))
            .then(|| message::encode(&SipMessage::Response(out.clone())));
        if (101..200).contains(&status) && forward.to == Side::A && forward.origin == call.invite_a_key {
            self.make_reliable(id, &mut out, with_answer, now);
        }
        self.respond(&forward.origin, out);
        if matches!(forward.request.method, Method::Invite | Method::Update) && status >= 200 {
            self.hold_answered(id, forward.to, status < 300);
        }
        if let (Some(payload), Some(call)) = (retransmit, self.calls.get_mut(&id)) {
            let t1 = self.timers.t1;
            call.retransmit.retain(|r| r.side != forward.to);
            call.retransmit.push(Retransmit {
                side: forward.to,
                payload,
                next: now.instant + t1,
                interval: t1,
                until: now.instant + 64 * t1,
            });
            self.schedule(now.instant + t1, id);
        }
    }
}

/// Our response `to` that side's `request`, from the other side's `response`, with `status`
/// and `answer` (the media plane's) as its SDP.
fn response_to(
    config: &Config,
    call: &Call,
    to: Side,
    request: &Request,
    response: &Response,
    status: u16,
    answer: Option<String>,
) -> Response {
    let dialog = call.dialog(to);
    let reason = reason_of(response);
    let mut out = response_for(request, status, Some(&reason), Some(dialog.local_tag()));
    if (101..300).contains(&status) {
        let contact = match call.room.as_deref().filter(|_| call.focus && to == Side::A) {
            // A conference room's party: the room's URI, which a REFER or INVITE may name to
            // bring others in (RFC 4579's focus).
            Some(room) => format!("{};isfocus", super::contact_as(config, &dialog.peer, room)),
            None => our_contact(config, &dialog.peer),
        };
        out.headers.push(Header::Contact(rsip::headers::Contact::new(contact)));
        // §12.1.1: the UAS copies the request's Record-Route into dialog-forming responses so
        // the proxies that asked stay on the path of the caller's in-dialog requests.
        if request.method == rsip::Method::Invite {
            for h in request.headers.iter() {
                if let Header::RecordRoute(rr) = h {
                    out.headers.push(Header::RecordRoute(rr.clone()));
                }
            }
        }
    }
    if let Some(body) = answer {
        out.headers.push(Header::ContentType(rsip::headers::ContentType::new("application/sdp")));
        out.body = body.into_bytes();
    } else if !response.body.is_empty() && !is_sdp(&response.headers, &response.body) {
        if let Some(ctype) = content_type(&response.headers) {
            out.headers.push(Header::ContentType(rsip::headers::ContentType::new(ctype)));
            out.body = response.body.clone();
        }
    }
    out
}

fn reason_of(response: &Response) -> String {
    match &response.status_code {
        rsip::StatusCode::Other(_, reason) => reason.clone(),
        other => message::default_reason_phrase(other.code()).to_owned(),
    }
}
