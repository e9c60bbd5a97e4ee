//! Reliable provisional responses (RFC 3262, `100rel`) and offers in early dialogs (RFC 3311
//! UPDATE), hop by hop on each side of the B2BUA.
//!
//! - **Towards the caller** (we are its UAS): when its INVITE supports `100rel`, a provisional
//!   response with the media plane's early answer (any provisional when it requires `100rel`)
//!   goes reliably: `Require: 100rel` and an `RSeq`, sent again at T1, 2·T1, 4·T1 … until its
//!   PRACK, which we answer. One is out at a time; the responses after it (the 2xx too, RFC
//!   3262 §3, since the 1xx carried an answer) wait for that PRACK. None within 64·T1: the
//!   caller gets 500 and the call ends (§3).
//! - **Towards the callee** (we are its UAC): our INVITE says `Supported: 100rel` when the
//!   caller's did (and it carries our offer); a reliable provisional response from a fork is
//!   PRACKed in that fork's early dialog, once per `RSeq` (a retransmission is not passed on).
//! - **UPDATE in the early dialog**: once the caller has PRACKed a reliable provisional response
//!   with the answer, the offer/answer exchange is complete on both sides and either side may
//!   send an UPDATE with a new offer (third-party call control does): it is relayed through the
//!   media plane like a re-INVITE's, to the fork that sent the early answer or to the caller.
//!
//! Not supported: an offer in a PRACK (answered 488; the reliable response it acknowledges is
//! acknowledged all the same), and reliable provisional responses in delayed-offer calls (the
//! offer would be in them; such calls do not advertise `100rel` to the callee).

use super::*;

/// How far the caller goes with `100rel`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(super) enum Support {
    #[default]
    None,
    Supported,
    Required,
}

/// The `100rel` state of one call, caller side.
#[derive(Debug, Default)]
pub(super) struct Reliable {
    caller: Support,
    /// The RSeq of our last reliable provisional response to the caller.
    rseq: u32,
    /// The one out, sent again until its PRACK.
    unacked: Option<Unacked>,
    /// The caller PRACKed a reliable provisional response with the answer: the early
    /// offer/answer exchange is complete, UPDATEs may follow.
    early_answered: bool,
    /// A reliable provisional response carried the answer to the caller's offer: later
    /// responses to its INVITE carry no SDP (one in them would be a new offer, RFC 3262 §5).
    answer_sent: bool,
}

#[derive(Debug)]
struct Unacked {
    rseq: u32,
    payload: Bytes,
    with_answer: bool,
    next: Instant,
    interval: Duration,
    until: Instant,
}

/// What a call's reliable provisional response needs at a timer.
pub(super) enum Due {
    Nothing,
    Retransmit(Bytes),
    GiveUp,
}

impl Reliable {
    /// The caller's support, from its INVITE's `Supported` and `Require`.
    pub(super) fn for_invite(invite: &Request) -> Reliable {
        let caller = if has_option(&invite.headers, "Require", "100rel") {
            Support::Required
        } else if has_option(&invite.headers, "Supported", "100rel") {
            Support::Supported
        } else {
            Support::None
        };
        Reliable { caller, ..Reliable::default() }
    }

    /// Our INVITE to the callee may say `Supported: 100rel`.
    pub(super) fn offer_to_callee(&self) -> bool {
        self.caller != Support::None
    }

    pub(super) fn waiting_for_prack(&self) -> bool {
        self.unacked.is_some()
    }

    pub(super) fn early_answered(&self) -> bool {
        self.early_answered
    }

    pub(super) fn answer_sent(&self) -> bool {
        self.answer_sent
    }

    pub(super) fn holds(&self, at: Instant) -> bool {
        self.unacked.as_ref().is_some_and(|u| u.next == at)
    }

    /// The final response to the INVITE went: nothing more to send again.
    pub(super) fn finished(&mut self) {
        self.unacked = None;
    }

    pub(super) fn due(&mut self, now: Instant) -> Due {
        let Some(u) = self.unacked.as_mut() else { return Due::Nothing };
        if u.next > now {
            return Due::Nothing;
        }
        if now >= u.until {
            self.unacked = None;
            return Due::GiveUp;
        }
        u.interval *= 2;
        // The last wait ends at the give-up time, not a doubled interval after it.
        u.next = (now + u.interval).min(u.until);
        Due::Retransmit(u.payload.clone())
    }
}

/// Whether header `name` (every instance, comma-separated) lists option tag `tag`.
pub(crate) fn has_option(headers: &rsip::Headers, name: &str, tag: &str) -> bool {
    headers
        .iter()
        .filter_map(|h| match h {
            Header::Require(r) if name == "Require" => Some(r.value().to_owned()),
            Header::Supported(s) if name == "Supported" => Some(s.value().to_owned()),
            Header::Other(n, v) if n.eq_ignore_ascii_case(name) => Some(v.clone()),
            _ => None,
        })
        .any(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(tag)))
}

/// The `RSeq` of a reliable provisional response (one with `Require: 100rel`).
fn rseq_of(response: &Response) -> Option<u32> {
    if !has_option(&response.headers, "Require", "100rel") {
        return None;
    }
    header(&response.headers, "RSeq").and_then(|v| v.trim().parse().ok())
}

/// `RAck: rseq cseq method` of a PRACK.
fn rack_of(request: &Request) -> Option<(u32, u32, String)> {
    let value = header(&request.headers, "RAck")?;
    let mut parts = value.split_whitespace();
    let rseq = parts.next()?.parse().ok()?;
    let cseq = parts.next()?.parse().ok()?;
    let method = parts.next()?.to_owned();
    Some((rseq, cseq, method))
}

impl B2bua {
    /// A fork's provisional response: a reliable one is PRACKed (once per RSeq). Whether it is
    /// new (to be passed on): a retransmission of one already PRACKed is not.
    pub(super) fn prack_fork(&mut self, id: u64, fork: usize, response: &Response) -> bool {
        let Some(rseq) = rseq_of(response) else { return true };
        let Some(f) = self.calls.get_mut(&id).and_then(|c| c.forks.get_mut(fork)) else { return false };
        // RSeq numbers are per early dialog: a proxy beyond may fork, each phone numbering its own.
        let tag = message::to_value(&response.headers).and_then(tag_of).unwrap_or_default().to_owned();
        if f.rseq.as_ref().is_some_and(|(t, last)| *t == tag && rseq <= *last) {
            return false;
        }
        f.rseq = Some((tag, rseq));
        let cseq = message::cseq(&f.invite.headers).map(|c| c.seq).unwrap_or(1);
        let extra = format!("RAck: {rseq} {cseq} INVITE\r\n");
        self.send_in_fork_with(id, fork, "PRACK", &extra, Purpose::Prack);
        true
    }

    /// Makes `out`, a provisional response to the caller's INVITE, reliable when the caller
    /// wants it so; its first sending is the caller's. Whether it was made reliable.
    pub(super) fn make_reliable(&mut self, id: u64, out: &mut Response, with_answer: bool, now: Now) -> bool {
        let t1 = self.timers.t1;
        let first_rseq = {
            let bytes: [u8; 4] = self.random.bytes();
            (u32::from_be_bytes(bytes) & 0x7fff_ffff).max(1)
        };
        let Some(call) = self.calls.get_mut(&id) else { return false };
        let reliable = match call.rel.caller {
            Support::None => false,
            Support::Supported => with_answer,
            Support::Required => true,
        };
        if !reliable || call.rel.unacked.is_some() {
            return false;
        }
        call.rel.rseq = if call.rel.rseq == 0 { first_rseq } else { call.rel.rseq.wrapping_add(1).max(1) };
        let rseq = call.rel.rseq;
        out.headers.push(Header::Other("Require".into(), "100rel".into()));
        out.headers.push(Header::Other("RSeq".into(), rseq.to_string()));
        let payload = message::encode(&SipMessage::Response(out.clone()));
        call.rel.answer_sent |= with_answer;
        call.rel.unacked = Some(Unacked { rseq, payload, with_answer, next: now.instant + t1, interval: t1, until: now.instant + 64 * t1 });
        self.schedule(now.instant + t1, id);
        true
    }

    /// The caller's reliable provisional response is due again, or given up.
    pub(super) fn reliable_due(&mut self, id: u64, now: Now) {
        let Some(call) = self.calls.get_mut(&id) else { return };
        match call.rel.due(now.instant) {
            Due::Nothing => {}
            Due::Retransmit(payload) => {
                let (peer, next) = (call.a.peer, call.rel.unacked.as_ref().map(|u| u.next));
                self.sip.push_back(SipOut::Transmit(Outgoing { destination: peer, payload, retransmission: true }));
                if let Some(next) = next {
                    self.schedule(next, id);
                }
            }
            Due::GiveUp => {
                // RFC 3262 §3: no PRACK within 64·T1: the INVITE is refused with a 5xx.
                tracing::info!("no PRACK for a reliable provisional response: the call ends");
                let (key, invite, answered) = (call.invite_a_key.clone(), call.invite_a.clone(), call.winner.is_some());
                call.cause = "no-prack";
                self.reply(&key, &invite, 500, now);
                self.stats.calls_failed += 1;
                if answered {
                    self.hang_up_winner(id, None);
                    self.finish(id);
                } else {
                    self.abandon(id, now);
                }
            }
        }
    }

    /// A PRACK from `side`: the caller's for our reliable provisional response.
    pub(super) fn on_prack(&mut self, id: u64, side: Side, key: TransactionKey, request: Request, now: Now) {
        let Some(call) = self.calls.get_mut(&id) else { return };
        let invite_cseq = message::cseq(&call.invite_a.headers).map(|c| c.seq).unwrap_or(0);
        let matches = side == Side::A
            && rack_of(&request).is_some_and(|(rseq, cseq, method)| {
                call.rel.unacked.as_ref().is_some_and(|u| u.rseq == rseq) && cseq == invite_cseq && method.eq_ignore_ascii_case("INVITE")
            });
        if !matches {
            // RFC 3262 §3: a PRACK that matches no unacknowledged reliable response.
            self.reply(&key, &request, 481, now);
            return;
        }
        if let Some(u) = call.rel.unacked.take() {
            call.rel.early_answered |= u.with_answer;
        }
        let status = if is_sdp(&request.headers, &request.body) { 488 } else { 200 };
        self.reply(&key, &request, status, now);
        self.pump_forwards(id, now);
    }

    /// Whether an UPDATE from `side` may go into the other side's early dialog now.
    pub(super) fn early_update_allowed(&self, id: u64, side: Side) -> bool {
        self.calls.get(&id).is_some_and(|c| {
            c.state == State::Calling
                && c.rel.early_answered()
                && !c.rel.waiting_for_prack()
                && c.early_from.and_then(|f| c.forks.get(f)).is_some_and(|f| {
                    // The fork that answered early still rings, and (for the caller's UPDATE) its
                    // own early exchange with us was reliable (RFC 3311 §5.1).
                    f.state == ForkState::Ringing && (side == Side::B || f.rseq.is_some())
                })
        })
    }
}
