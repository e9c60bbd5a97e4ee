//! Re-INVITEs without an offer (RFC 3261 §14.1, RFC 6337 §5; third-party call control, RFC 3725,
//! asks for a fresh offer so): the re-INVITE goes to the other side without a body, that side's
//! 2xx makes the offer, the media plane rewrites it for the side that asked, whose ACK brings the
//! answer; rewritten for the other side, it goes in our ACK of its 2xx.
//!
//! ```text
//!  X ──re-INVITE (no SDP)──► B2BUA ──re-INVITE (no SDP)──► Y
//!  X ◄──200 (offer for X)── Offer ◄──200 (Y's offer)─────── Y     (Y's 2xx not ACKed yet)
//!  X ──ACK (X's answer)──► Answer ──ACK (answer for Y)─────► Y
//! ```
//!
//! An offer or answer the media plane cannot take, or an ACK without the answer, leaves the
//! session undefined on one side (RFC 3261 §13.2.2.4, §13.3.1.4): the other side's 2xx is ACKed
//! and the call ends with BYE on both sides. A 2xx without an offer is ACKed and the asking side
//! gets a 500; the session stays as it was.

use super::*;

/// An offerless re-INVITE in progress.
#[derive(Debug)]
pub(super) struct Reoffer {
    /// The side whose re-INVITE had no SDP.
    from: Side,
    /// The CSeq of our re-INVITE to the other side, for its ACK.
    cseq: u32,
    step: Step,
}

#[derive(Debug)]
enum Step {
    /// Our re-INVITE is out to the other side.
    Invited,
    /// Its 2xx, waiting for the media plane's rewrite of the offer in it.
    Offer(Box<Forward>),
    /// The 2xx with the offer went to `from`: waiting for its ACK.
    Ack,
    /// `from`'s answer is in the media plane.
    Answer,
}

impl B2bua {
    /// `side`'s re-INVITE without SDP is about to be relayed: expect an offer in the answer.
    pub(super) fn reoffer_start(&mut self, id: u64, side: Side) {
        if let Some(call) = self.calls.get_mut(&id) {
            call.reoffer = Some(Reoffer { from: side, cseq: 0, step: Step::Invited });
        }
    }

    /// Whether the response to `from`'s relayed INVITE belongs to an offerless re-INVITE.
    pub(super) fn reoffer_waits(&self, id: u64, from: Side) -> bool {
        self.calls.get(&id).and_then(|c| c.reoffer.as_ref()).is_some_and(|r| r.from == from && matches!(r.step, Step::Invited))
    }

    /// A 2xx to `from`'s relayed offerless re-INVITE again (the other side did not have our
    /// ACK yet, RFC 6026): while the answer is being made it is dropped; after, our ACK with the
    /// answer goes again. Whether it was one.
    pub(super) fn reoffer_repeated(&mut self, id: u64, from: Side, response: &Response) -> bool {
        let Some(call) = self.calls.get(&id) else { return false };
        let cseq = message::cseq(&response.headers).map(|c| c.seq).ok();
        if call.reoffer.as_ref().is_some_and(|r| r.from == from && !matches!(r.step, Step::Invited)) {
            return true;
        }
        let Some((side, acked, ack, peer)) = call.reoffer_ack.clone() else { return false };
        if side != from.other() || Some(acked) != cseq {
            return false;
        }
        self.sip.push_back(SipOut::Transmit(Outgoing { destination: peer, payload: ack, retransmission: true }));
        true
    }

    /// The other side answered the offerless re-INVITE (`response` final).
    pub(super) fn reoffer_answered(&mut self, id: u64, origin: &TransactionKey, request: &Request, response: Response, now: Now) {
        let Some(call) = self.calls.get_mut(&id) else { return };
        let Some(reoffer) = call.reoffer.as_mut() else { return };
        let (from, to) = (reoffer.from, reoffer.from.other());
        let status = response.status_code.code();
        if status >= 300 {
            // Refused: the session is as it was; the refusal goes back as any relayed response.
            call.reoffer = None;
            call.reinvite_pending = false;
            let forward = Forward { to: from, origin: origin.clone(), request: request.clone(), response, answers_offer: false };
            self.forward(id, forward, now);
            return;
        }
        reoffer.cseq = message::cseq(&response.headers).map(|c| c.seq).unwrap_or(1);
        let offer = is_sdp(&response.headers, &response.body).then(|| String::from_utf8_lossy(&response.body).into_owned());
        let usable = offer.as_deref().filter(|sdp| Sdp::parse(sdp.as_bytes()).is_ok());
        let legs = call.media.as_ref().map(|m| m.legs(to == Side::A));
        let (Some(sdp), Some(legs)) = (usable, legs) else {
            tracing::info!(status, "a 2xx to a re-INVITE without SDP brought no usable offer");
            self.reoffer_ack(id, None);
            if let Some(call) = self.calls.get_mut(&id) {
                call.reoffer = None;
                call.reinvite_pending = false;
            }
            self.reply(origin, request, 500, now);
            return;
        };
        let sdp = sdp.to_owned();
        call.last_sdp[to as usize] = Some(sdp.clone());
        call.offer_legs.clone_from(&legs);
        call.negotiating = true;
        let forward = Forward { to: from, origin: origin.clone(), request: request.clone(), response, answers_offer: false };
        reoffer.step = Step::Offer(Box::new(forward));
        let policy = self.config.codec_policy.clone();
        self.media_request(id, MediaRequest::Offer { legs, sdp, policy });
    }

    /// Whether the media plane's Offer reply is the offerless re-INVITE's.
    pub(super) fn reoffer_offer_waits(&self, id: u64) -> bool {
        self.calls.get(&id).and_then(|c| c.reoffer.as_ref()).is_some_and(|r| matches!(r.step, Step::Offer(_)))
    }

    /// The media plane rewrote the other side's offer: the 2xx goes on with it.
    pub(super) fn reoffer_offered(&mut self, id: u64, result: Result<String, MediaError>, now: Now) {
        let Some(call) = self.calls.get_mut(&id) else { return };
        call.negotiating = false;
        let Some(reoffer) = call.reoffer.as_mut() else { return };
        let Step::Offer(forward) = std::mem::replace(&mut reoffer.step, Step::Ack) else { return };
        match result {
            Ok(sdp) => self.deliver(id, *forward, Some(sdp), now),
            Err(error) => {
                tracing::info!(%error, "the offer in a 2xx to a re-INVITE without SDP was refused by the media plane");
                self.reply(&forward.origin, &forward.request, 488, now);
                self.reoffer_fail(id, now);
            }
        }
        self.pump_forwards(id, now);
    }

    /// Whether `side`'s ACK is the one that brings the answer.
    pub(super) fn reoffer_ack_waits(&self, id: u64, side: Side) -> bool {
        self.calls.get(&id).and_then(|c| c.reoffer.as_ref()).is_some_and(|r| r.from == side && matches!(r.step, Step::Ack))
    }

    /// The asking side's ACK: its answer goes through the media plane.
    pub(super) fn reoffer_acked(&mut self, id: u64, ack: &Request, now: Now) {
        let Some(call) = self.calls.get_mut(&id) else { return };
        let Some(reoffer) = call.reoffer.as_mut() else { return };
        let from = reoffer.from;
        let answer = is_sdp(&ack.headers, &ack.body).then(|| String::from_utf8_lossy(&ack.body).into_owned());
        let Some(sdp) = answer.filter(|sdp| Sdp::parse(sdp.as_bytes()).is_ok()) else {
            tracing::info!("the ACK of an offer made for a re-INVITE without SDP has no usable answer: the call ends");
            self.reoffer_fail(id, now);
            return;
        };
        reoffer.step = Step::Answer;
        // Whether the asker holds is in its answer (a phone that resumes, or holds, with a
        // re-INVITE without SDP says so there).
        let holds = Sdp::parse(sdp.as_bytes()).is_ok_and(|s| s.holds());
        call.pending_hold = Some((from, holds));
        call.last_sdp[from as usize] = Some(sdp.clone());
        call.negotiating = true;
        let legs = call.offer_legs.clone();
        self.media_request(id, MediaRequest::Answer { legs, sdp });
    }

    /// Whether the media plane's Answer reply is the offerless re-INVITE's.
    pub(super) fn reoffer_answer_waits(&self, id: u64) -> bool {
        self.calls.get(&id).and_then(|c| c.reoffer.as_ref()).is_some_and(|r| matches!(r.step, Step::Answer))
    }

    /// The media plane rewrote the answer: our ACK of the other side's 2xx carries it.
    pub(super) fn reoffer_done(&mut self, id: u64, result: Result<String, MediaError>, now: Now) {
        let Some(call) = self.calls.get_mut(&id) else { return };
        call.negotiating = false;
        match result {
            Ok(sdp) => {
                let Some(from) = call.reoffer.as_ref().map(|r| r.from) else { return };
                self.reoffer_ack(id, Some(&sdp));
                if let Some(call) = self.calls.get_mut(&id) {
                    call.reoffer = None;
                    call.reinvite_pending = false;
                }
                self.hold_answered(id, from, true);
                self.pump_forwards(id, now);
            }
            Err(error) => {
                tracing::info!(%error, "the answer to an offer made for a re-INVITE without SDP was refused by the media plane");
                self.reoffer_fail(id, now);
            }
        }
    }

    /// Our ACK of the other side's 2xx, with `answer` (or none).
    fn reoffer_ack(&mut self, id: u64, answer: Option<&str>) {
        let branch = self.random.branch();
        let Some(call) = self.calls.get(&id) else { return };
        let Some(reoffer) = call.reoffer.as_ref() else { return };
        let (to, cseq) = (reoffer.from.other(), reoffer.cseq);
        let Some((ack, peer)) = Self::encode_ack(&self.config, call.dialog(to), cseq, &branch, answer) else { return };
        self.sip.push_back(SipOut::Transmit(Outgoing { destination: peer, payload: ack.clone(), retransmission: false }));
        if let Some(call) = self.calls.get_mut(&id) {
            call.reoffer_ack = Some((to, cseq, ack, peer));
        }
    }

    /// The renegotiation cannot complete: the other side's 2xx is ACKed and the call ends.
    fn reoffer_fail(&mut self, id: u64, now: Now) {
        self.reoffer_ack(id, None);
        if let Some(call) = self.calls.get_mut(&id) {
            call.reoffer = None;
            call.negotiating = false;
            call.reinvite_pending = false;
            call.pending_hold = None;
            call.cause = "media";
        }
        self.end_both(id, now);
    }

    /// An offerless re-INVITE's transaction failed (timeout, transport): nothing is pending.
    pub(super) fn reoffer_clear(&mut self, id: u64) {
        if let Some(call) = self.calls.get_mut(&id) {
            call.reoffer = None;
        }
    }
}
