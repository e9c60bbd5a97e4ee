//! Unattended (blind) transfer, RFC 5359 §2.4, with REFER (RFC 3515), Referred-By (RFC 3892) and
//! Refer-Sub (RFC 4488), handled by the B2BUA: media stays anchored and is re-pointed, nothing
//! is passed through to the transferee.
//!
//! ```text
//!  transferor ──REFER (Refer-To: C)──► B2BUA ── CallEvent::Refer ─► server routes C
//!             ◄── 202 (or 403/404/480 …) ── handle_refer(route) ◄──┘
//!             ◄── NOTIFY 100 Trying                INVITE C (the media plane's offer of the
//!                                                  transferor's legs) ──► C … 200 ─► ACK
//!  media plane: Offer(C's SDP, transferor's legs → transferee's) ─► re-INVITE transferee with it
//!               … 200 (answer) ─► Answer ─► ACK: the transferee and C talk; music on hold stops
//!             ◄── NOTIFY 200 OK (terminated)        the transferor's BYE gets 200, alone
//!  C fails: NOTIFY with C's status; the call stays as it was (the transferor may resume)
//! ```

use super::*;

/// Dialogs one call keeps for the transferors it replaced (two per attended transfer, one per
/// blind one); a REFER beyond gets 403.
const MAX_REPLACED: usize = 16;

/// A transfer in progress.
#[derive(Debug)]
pub(super) struct Transfer {
    /// Who sent the REFER (and is replaced by the target).
    pub(super) transferor: Side,
    /// The stage of forks ringing the target.
    pub(super) stage: u32,
    /// NOTIFYs of the transfer's progress are wanted (not `Refer-Sub: false`).
    pub(super) notify: bool,
    /// Referred-By for the target's INVITE.
    pub(super) referred_by: String,
    /// The transferor hung up after its REFER (many phones do, at once): its BYE was answered,
    /// the transferee stays for the target.
    pub(super) transferor_gone: bool,
    /// The target answered: its fork, and the renegotiation with the transferee is under way.
    pub(super) answered: Option<usize>,
}

impl Transfer {
    /// A transfer whose target is already there (attended: the other call's party; a room):
    /// nothing is rung for it.
    pub(super) fn in_place(transferor: Side, notify: bool) -> Transfer {
        Transfer { transferor, stage: u32::MAX, notify, referred_by: String::new(), answered: None, transferor_gone: false }
    }
}

/// What the server needs to route a REFER's target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReferTarget {
    /// The call.
    pub call: u64,
    /// The Refer-To URI.
    pub target: String,
    /// The transferee's identity (user part), for the target's screening.
    pub transferee: String,
    /// The transferor's address-of-record when it is a subscriber of ours (its outgoing
    /// screening applies to the target; `[routing] refer` may require one).
    pub transferor: Option<String>,
}

impl B2bua {
    /// A REFER in an established call from `side`: checked here, routed by the server
    /// ([`CallEvent::Refer`]), answered in [`handle_refer`](Self::handle_refer).
    pub(super) fn on_refer(&mut self, id: u64, side: Side, key: TransactionKey, request: Request, now: Now) {
        let refer_to = header(&request.headers, "Refer-To").or_else(|| header(&request.headers, "r")).map(str::to_owned);
        // A conference room's URI may carry Replaces (RFC 5359 §2.10): still a move to the room.
        let to_room = refer_to.as_deref().is_some_and(|t| self.is_room_uri(uri_of(t)));
        let Some(call) = self.calls.get_mut(&id) else { return };
        let Some(refer_to) = refer_to else {
            let response = response_for(&request, 400, Some("Missing Refer-To"), None);
            self.respond(&key, response);
            return;
        };
        let target = uri_of(&refer_to).to_owned();
        if call.transfer.is_some() || call.pending_refer.is_some() || call.negotiating || call.reinvite_pending || call.room.is_some() {
            self.reply(&key, &request, 491, now);
            return;
        }
        if call.limit.is_running() {
            // Its credit was held for the parties it has: a transfer would take the call out
            // of what was held (and of its cut-off).
            let response = response_for(&request, 403, Some("Prepaid Call Not Transferable"), None);
            self.respond(&key, response);
            return;
        }
        if call.replaced.len() >= MAX_REPLACED {
            // Each transfer keeps the dialogs it replaced until the call ends: a bound on them.
            let response = response_for(&request, 403, Some("Too Many Transfers"), None);
            self.respond(&key, response);
            return;
        }
        if target.to_ascii_lowercase().contains("replaces=") && !to_room {
            match Replaces::from_refer_to(&target) {
                Some(replaces) => self.attended(id, side, key, request, replaces, now),
                None => {
                    let response = response_for(&request, 400, Some("Bad Replaces"), None);
                    self.respond(&key, response);
                }
            }
            return;
        }
        if !target.starts_with("sip:") && !target.starts_with("sips:") {
            let response = response_for(&request, 416, None, None);
            self.respond(&key, response);
            return;
        }
        let transferee = uri_of(&call.dialog(side.other()).remote).to_owned();
        let transferee = sip_core::message::user_host(&transferee).map(|(user, _)| user).unwrap_or_default();
        let notify = wants_notify(&request);
        let referred_by = header(&request.headers, "Referred-By")
            .or_else(|| header(&request.headers, "b"))
            .map_or_else(|| call.dialog(side).remote.clone(), str::to_owned);
        let transferor = match side {
            Side::A => call.caller.clone(),
            Side::B => call.route.subscriber().map(str::to_owned),
        };
        call.pending_refer = Some((side, key, request, notify, referred_by));
        self.events.push_back(CallEvent::Refer(ReferTarget { call: id, target, transferee, transferor }));
    }

    /// Call `id`'s REFER waiting for the server, with what the server found for its target
    /// (`Err(status)`: refused with it; a call `can` refuses gets 488): handed back as (the
    /// transferor's side, its transaction, the REFER, NOTIFYs wanted, what was found), or
    /// answered here.
    pub(super) fn pending_refer_for<T>(
        &mut self,
        id: u64,
        found: Result<T, u16>,
        can: impl Fn(&Call) -> bool,
        now: Now,
    ) -> Option<(Side, TransactionKey, Request, bool, T)> {
        let call = self.calls.get_mut(&id)?;
        let (side, key, request, notify, _) = call.pending_refer.take()?;
        let status = match found {
            Ok(found) if can(call) => return Some((side, key, request, notify, found)),
            Ok(_) => 488,
            Err(status) => status,
        };
        self.reply(&key, &request, status, now);
        None
    }

    /// The server routed a REFER's target: `Ok` rings it, `Err(status)` refuses the REFER.
    pub fn handle_refer(&mut self, id: u64, route: Result<(Plan, RouteState), u16>, now: Now) {
        self.clock = Some(now);
        let Some(call) = self.calls.get_mut(&id) else { return };
        let Some((side, key, request, notify, referred_by)) = call.pending_refer.take() else { return };
        let (plan, route) = match route {
            Ok(routed) => routed,
            Err(status) => {
                self.reply(&key, &request, status, now);
                return;
            }
        };
        let accepted = accepted(&request, call.dialog(side).local_tag(), notify);
        self.respond(&key, accepted);
        self.stats.transfers += 1;
        let Some(call) = self.calls.get_mut(&id) else { return };
        call.route = route;
        call.transfer =
            Some(Transfer { transferor: side, stage: call.stage + 1, notify, referred_by, answered: None, transferor_gone: false });
        self.notify_transferor(id, "SIP/2.0 100 Trying", false, now);
        let mut stage = plan.stage;
        if let Some(t) = self.calls.get(&id).and_then(|c| c.transfer.as_ref()) {
            stage.headers.push_str(&format!("Referred-By: {}\r\n", t.referred_by));
        }
        self.ring(id, stage, now);
    }

    /// A NOTIFY of the transfer's progress (`message/sipfrag` with `status_line`) to the transferor.
    pub(super) fn notify_transferor(&mut self, id: u64, status_line: &str, last: bool, now: Now) {
        let Some(t) = self.calls.get(&id).and_then(|c| c.transfer.as_ref()) else { return };
        if !t.notify || t.transferor_gone {
            return;
        }
        let state = if last { "terminated;reason=noresource" } else { "active;expires=60" };
        let extra = format!("Event: refer\r\nSubscription-State: {state}\r\n");
        let body = format!("{status_line}\r\n");
        self.send_in_dialog(id, t.transferor, "NOTIFY", &extra, Some(("message/sipfrag;version=2.0", body.as_bytes())), Purpose::Bye, now);
    }

    /// Whether fork `fork` rings a transfer's target.
    pub(super) fn is_transfer_fork(&self, id: u64, fork: usize) -> bool {
        self.calls.get(&id).is_some_and(|c| c.transfer.as_ref().is_some_and(|t| c.forks.get(fork).is_some_and(|f| f.stage == t.stage)))
    }

    /// The target answered (its 2xx is ACKed): its SDP, offered to the transferee through the
    /// media plane over the transferor's legs, re-points the media; the re-INVITE follows.
    pub(super) fn transfer_answered(&mut self, id: u64, fork: usize, response: &Response) {
        let Some(call) = self.calls.get_mut(&id) else { return };
        let Some(t) = call.transfer.as_mut() else { return };
        t.answered = Some(fork);
        let transferor = t.transferor;
        call.stage_open = false;
        call.stage_deadline = None;
        let sdp = is_sdp(&response.headers, &response.body).then(|| String::from_utf8_lossy(&response.body).into_owned());
        let (Some(legs), Some(sdp)) = (call.media.as_ref().map(|m| m.legs(transferor == Side::A)), sdp) else {
            let now = self.clock.unwrap_or(call.started);
            self.transfer_failed(id, 488, now);
            return;
        };
        call.last_sdp[transferor as usize] = Some(sdp.clone());
        call.negotiating = true;
        call.transfer_offer = true;
        self.cancel_forks(id, Some(fork));
        let policy = self.config.codec_policy.clone();
        self.media_request(id, MediaRequest::Offer { legs, sdp, policy });
    }

    /// The media plane rewrote the target's SDP as an offer for the transferee: re-INVITE it.
    pub(super) fn transfer_offered(&mut self, id: u64, result: Result<String, MediaError>, now: Now) {
        let Some(call) = self.calls.get_mut(&id) else { return };
        call.negotiating = false;
        call.transfer_offer = false;
        let Some(transferor) = call.transfer.as_ref().map(|t| t.transferor) else { return };
        match result {
            Ok(sdp) => {
                call.reinvite_pending = true;
                let transferee = transferor.other();
                let extra = format!("Contact: {}\r\n", our_contact(&self.config, &call.dialog(transferee).peer));
                self.send_in_dialog(id, transferee, "INVITE", &extra, Some(("application/sdp", sdp.as_bytes())), Purpose::Renegotiate, now);
            }
            Err(error) => {
                tracing::info!(%error, "a transfer target's SDP was refused by the media plane");
                self.transfer_failed(id, 488, now);
            }
        }
    }

    /// The transferee answered the re-INVITE: ACK it, hand its answer to the media plane, and
    /// make the target the transferor's side of the call.
    pub(super) fn renegotiated(&mut self, id: u64, response: Response, now: Now) {
        let status = response.status_code.code();
        if status < 200 {
            return;
        }
        let Some(call) = self.calls.get_mut(&id) else { return };
        call.reinvite_pending = false;
        if let Some((other, target_side)) = call.attended_with {
            self.attended_renegotiated(id, other, target_side, response, now);
            return;
        }
        let Some((transferor, fork)) = call.transfer.as_ref().and_then(|t| Some((t.transferor, t.answered?))) else { return };
        let transferee = transferor.other();
        if !(200..300).contains(&status) {
            tracing::info!(status, "the transferee refused the transfer's re-INVITE");
            self.transfer_failed(id, status, now);
            return;
        }
        self.ack_renegotiated(id, transferee, &response);
        let Some(call) = self.calls.get_mut(&id) else { return };
        if is_sdp(&response.headers, &response.body) {
            if let Some(legs) = call.media.as_ref().map(|m| m.legs(transferor == Side::A)) {
                call.transfer_answer = true;
                let sdp = String::from_utf8_lossy(&response.body).into_owned();
                call.last_sdp[transferee as usize] = Some(sdp.clone());
                self.media_request(id, MediaRequest::Answer { legs, sdp });
            }
        }
        // The target takes the transferor's place; music on hold (the transferor's) stops.
        let Some(call) = self.calls.get_mut(&id) else { return };
        let Some(f) = call.forks.get(fork) else { return };
        let dialog = f.dialog.clone();
        let replaced = std::mem::replace(call.dialog_mut(transferor), dialog);
        call.replaced.push(replaced);
        if transferor == Side::B {
            call.winner = Some(fork);
        } else {
            call.a_fork = Some(fork);
        }
        // Music on hold plays to the held side, whichever side that is.
        if let Some(holder) = call.held_by.take().filter(|_| std::mem::take(&mut call.music)) {
            if let Some(legs) = call.media.as_ref().map(|m| m.facing(holder.other() == Side::A)) {
                self.media_request(id, MediaRequest::StopPlay { legs });
            }
        }
        // A parked call whose parker answered its ring-back: parked no more, its music stops.
        let Some(call) = self.calls.get_mut(&id) else { return };
        let ring_back = call.parked.is_some();
        if let Some(parked) = call.parked.take() {
            self.orbits.remove(&parked.orbit);
            self.stats.park_ring_backs += 1;
            if let Some(legs) = self.calls.get(&id).and_then(|c| c.media.as_ref()).map(|m| m.facing(transferor == Side::B)) {
                self.media_request(id, MediaRequest::StopPlay { legs });
            }
        }
        if let Some(call_id) = self.calls.get(&id).map(|c| c.dialog(transferor).call_id.clone()) {
            self.by_call_id.insert(call_id, (id, transferor));
        }
        // A target out through a trunk: the credit held for it runs from now.
        if self.calls.get(&id).and_then(|c| c.forks.get(fork)).is_some_and(|f| f.trunk) {
            self.start_limit(id, now.instant);
        }
        self.notify_transferor_replaced(id, now);
        if !ring_back {
            self.stats.transfers_completed += 1;
        }
        if let Some(call) = self.calls.get_mut(&id).filter(|c| c.ivr) {
            // A service call's second party joined: what played to the first stops; the
            // call's duration counts from here (the first party's, from its own answer).
            call.answered = Some(now);
            if let Some(legs) = self.calls.get(&id).and_then(|c| c.media.as_ref()).map(|m| m.facing(true)) {
                self.media_request(id, MediaRequest::StopPlay { legs });
            }
            self.update(id, UpdateKind::Answered { party: 2 });
            self.events.push_back(CallEvent::Connected { call: id, result: Ok(()) });
        }
    }

    /// ACKs the transferee's 2xx to our re-INVITE and takes its Contact as the new target.
    pub(super) fn ack_renegotiated(&mut self, id: u64, transferee: Side, response: &Response) {
        let cseq = message::cseq(&response.headers).map(|c| c.seq).unwrap_or(1);
        if let Some((ack, peer)) = self.ack(id, transferee, cseq) {
            self.sip.push_back(SipOut::Transmit(Outgoing { destination: peer, payload: ack, retransmission: false }));
        }
        if let Some(call) = self.calls.get_mut(&id) {
            call.dialog_mut(transferee).target_refreshed(response);
        }
    }

    /// Attended transfer: the transferee answered the re-INVITE with the target's media.
    fn attended_renegotiated(&mut self, id: u64, other: u64, target_side: Side, response: Response, now: Now) {
        let status = response.status_code.code();
        let Some(transferor) = self.calls.get(&id).and_then(|c| c.transfer.as_ref()).map(|t| t.transferor) else { return };
        let transferee = transferor.other();
        if !(200..300).contains(&status) {
            // The transferor's legs are gone: the two calls cannot go back. End both.
            tracing::info!(status, "the transferee refused the attended transfer's re-INVITE");
            self.transfer_failed(id, status, now);
            self.end_both(id, now);
            if self.calls.contains_key(&other) {
                self.end_both(other, now);
            }
            return;
        }
        self.ack_renegotiated(id, transferee, &response);
        let Some(call) = self.calls.get_mut(&id) else { return };
        call.attended_with = None;
        let legs = call.offer_legs.clone();
        if is_sdp(&response.headers, &response.body) {
            call.last_sdp[transferee as usize] = Some(String::from_utf8_lossy(&response.body).into_owned());
            call.transfer_answer = true;
            let sdp = String::from_utf8_lossy(&response.body).into_owned();
            self.media_request(id, MediaRequest::Answer { legs, sdp });
        }
        let Some(call) = self.calls.get_mut(&id) else { return };
        if let Some(holder) = call.held_by.take().filter(|_| std::mem::take(&mut call.music)) {
            if let Some(legs) = call.media.as_ref().map(|m| m.facing(holder.other() == Side::A)) {
                self.media_request(id, MediaRequest::StopPlay { legs });
            }
        }
        self.merge(id, other, target_side);
        self.notify_transferor_replaced(id, now);
        self.stats.transfers_completed += 1;
    }

    /// The final NOTIFY goes in the transferor's old dialog (the call's side is the target now).
    fn notify_transferor_replaced(&mut self, id: u64, _now: Now) {
        self.notify_replaced_transferor(id, "SIP/2.0 200 OK");
    }

    /// The final NOTIFY (`status_line`) to a transferor whose dialog the call no longer has (the
    /// last one it replaced); the transfer is over.
    pub(super) fn notify_replaced_transferor(&mut self, id: u64, status_line: &str) {
        let branch = self.random.branch();
        let Some(call) = self.calls.get_mut(&id) else { return };
        let Some(t) = call.transfer.take() else { return };
        let Some(dialog) = call.replaced.last_mut().filter(|_| t.notify && !t.transferor_gone) else { return };
        let sent_by = self.config.advertise_for(dialog.peer.transport);
        let extra = "Event: refer\r\nSubscription-State: terminated;reason=noresource\r\n";
        let body = format!("{status_line}\r\n");
        if let Ok(request) = dialog.request("NOTIFY", &sent_by, &branch, extra, Some(("message/sipfrag;version=2.0", body.as_bytes()))) {
            let peer = dialog.peer;
            self.send_client(id, request, peer, Purpose::Bye);
        }
    }

    /// The transfer failed with `status`: the transferor is told, the call stays as it was.
    pub(super) fn transfer_failed(&mut self, id: u64, status: u16, now: Now) {
        let line = format!("SIP/2.0 {status} {}", message::default_reason_phrase(status));
        self.notify_transferor(id, &line, true, now);
        let Some(call) = self.calls.get_mut(&id) else { return };
        if call.ivr && call.transfer.is_some() {
            self.events.push_back(CallEvent::Connected { call: id, result: Err(status) });
        }
        let Some(call) = self.calls.get_mut(&id) else { return };
        let transfer = call.transfer.take();
        let attended = call.attended_with.take();
        call.negotiating = false;
        call.transfer_offer = false;
        call.stage_open = false;
        call.stage_deadline = None;
        self.cancel_forks(id, None);
        // A target that answered is not left in a silent dialog.
        if let Some(fork) = transfer.as_ref().and_then(|t| t.answered) {
            self.send_in_fork(id, fork, "BYE", Purpose::Bye);
        }
        if let Some((other, _)) = attended {
            // The transferor's legs of both calls are gone: neither call can go back.
            self.end_both(id, now);
            if self.calls.contains_key(&other) {
                self.end_both(other, now);
            }
            return;
        }
        // The transferor left while the target rang (its BYE was kept for the outcome): the
        // call cannot go on without it. Nor can a parked call whose parker did not answer its
        // ring-back (its time in the orbit is over).
        let parked = self.calls.get(&id).and_then(|c| c.parked.as_ref()).map(|p| p.side);
        if let Some(side) = parked {
            // The parked party is hung up; the call stays until the parker's forks have their
            // final responses (a 200 crossing our CANCEL is ACKed and hung up).
            if let Some(call) = self.calls.get_mut(&id) {
                call.cause = "park-timeout";
            }
            self.send_in_dialog(id, side.other(), "BYE", "", None, Purpose::Bye, now);
            self.abandon(id, now);
            return;
        }
        if transfer.is_some_and(|t| t.transferor_gone) {
            self.end_both(id, now);
        }
    }
}

/// Whether a REFER asks for the NOTIFYs of its progress (RFC 4488: not with `Refer-Sub: false`).
fn wants_notify(request: &Request) -> bool {
    !header(&request.headers, "Refer-Sub").is_some_and(|v| v.trim().eq_ignore_ascii_case("false"))
}

/// The 202 Accepted for a REFER, saying `Refer-Sub: false` when no NOTIFY will follow.
pub(super) fn accepted(request: &Request, local_tag: &str, notify: bool) -> Response {
    let mut accepted = response_for(request, 202, None, Some(local_tag));
    if !notify {
        accepted.headers.push(Header::Other("Refer-Sub".into(), "false".into()));
    }
    accepted
}

/// The dialog a `Replaces` value names (RFC 3891): Call-ID, to-tag and from-tag, as its sender
/// (the transferor) sees them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Replaces {
    pub(super) call_id: String,
    pub(super) to_tag: String,
    pub(super) from_tag: String,
}

impl Replaces {
    /// From a Refer-To URI's `?Replaces=` header (percent-encoded).
    pub(super) fn from_refer_to(target: &str) -> Option<Replaces> {
        let query = target.split_once('?')?.1;
        let value = query.split('&').find_map(|h| {
            let (name, value) = h.split_once('=')?;
            name.eq_ignore_ascii_case("Replaces").then_some(value)
        })?;
        Replaces::from_value(&percent_decode(value))
    }

    /// From a `Replaces` header's value (`call-id;to-tag=…;from-tag=…[;early-only]`).
    pub(super) fn from_value(value: &str) -> Option<Replaces> {
        let mut parts = value.split(';');
        let call_id = parts.next()?.trim().to_owned();
        let (mut to_tag, mut from_tag) = (None, None);
        for p in parts {
            match p.trim().split_once('=') {
                Some((k, v)) if k.eq_ignore_ascii_case("to-tag") => to_tag = Some(v.to_owned()),
                Some((k, v)) if k.eq_ignore_ascii_case("from-tag") => from_tag = Some(v.to_owned()),
                _ => {}
            }
        }
        Some(Replaces { call_id, to_tag: to_tag?, from_tag: from_tag? })
    }
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        match (bytes[i], bytes.get(i + 1).and_then(|&b| hex(b)), bytes.get(i + 2).and_then(|&b| hex(b))) {
            (b'%', Some(h), Some(l)) => {
                out.push((h * 16 + l) as u8);
                i += 3;
            }
            (b, _, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

impl B2bua {
    /// Attended transfer (RFC 5359 §2.5): the transferor refers its peer in call `id` to the
    /// party it talks to in the call `replaces` names. The media plane drops the transferor's
    /// legs in both calls and joins the other two; the transferee is re-INVITEd with the target's
    /// media, and the two calls become one.
    pub(super) fn attended(&mut self, id: u64, side: Side, key: TransactionKey, request: Request, replaces: Replaces, now: Now) {
        let found = self.by_call_id.get(&replaces.call_id).copied().filter(|&(other, _)| other != id);
        let matches = found.and_then(|(other, other_side)| {
            let call = self.calls.get(&other)?;
            let d = call.dialog(other_side);
            let established = matches!(call.state, State::Answered | State::Confirmed) && call.transfer.is_none();
            (established && d.local_tag() == replaces.to_tag && tag_of(&d.remote) == Some(replaces.from_tag.as_str()))
                .then_some((other, other_side))
        });
        let Some((other, transferor_there)) = matches else {
            // RFC 3891 §3: no such dialog.
            self.reply(&key, &request, 481, now);
            return;
        };
        let target_side = transferor_there.other();
        let (Some(call), Some(other_call)) = (self.calls.get(&id), self.calls.get(&other)) else { return };
        let (Some(here), Some(there)) = (call.media.as_ref(), other_call.media.as_ref()) else {
            self.reply(&key, &request, 488, now);
            return;
        };
        let Some(target_sdp) = other_call.last_sdp[target_side as usize].clone() else {
            self.reply(&key, &request, 488, now);
            return;
        };
        // The two calls' m= lines must pair one to one (the same lines active in both), and the
        // other call must not be negotiating.
        let layout = |a: &Allocation| a.streams.iter().map(Option::is_some).collect::<Vec<_>>();
        if layout(here) != layout(there) {
            self.reply(&key, &request, 488, now);
            return;
        }
        if other_call.negotiating || other_call.reinvite_pending || other_call.relay_offer.is_some() {
            self.reply(&key, &request, 491, now);
            return;
        }
        let mut release = here.facing(side == Side::A);
        release.extend(there.facing(transferor_there == Side::A));
        let transferee_legs = here.facing(side.other() == Side::A);
        let target_legs = there.facing(target_side == Side::A);
        let legs: Vec<(u64, u64)> = target_legs.into_iter().zip(transferee_legs).collect();
        if legs.iter().any(|&(a, b)| crate::media_pool::plane_of(a) != crate::media_pool::plane_of(b)) {
            // The two calls' media are on two media planes, which cannot bridge them: refused
            // before anything changes (both calls go on as they were).
            self.reply(&key, &request, 488, now);
            return;
        }
        let notify = wants_notify(&request);
        let accepted = accepted(&request, call.dialog(side).local_tag(), notify);
        self.respond(&key, accepted);
        self.stats.transfers += 1;
        let Some(call) = self.calls.get_mut(&id) else { return };
        call.transfer = Some(Transfer::in_place(side, notify));
        call.attended_with = Some((other, target_side));
        call.offer_legs.clone_from(&legs);
        call.negotiating = true;
        call.transfer_offer = true;
        self.notify_transferor(id, "SIP/2.0 100 Trying", false, now);
        let policy = self.config.codec_policy.clone();
        self.media_request(id, MediaRequest::Rejoin { release, legs, sdp: target_sdp, policy });
    }

    /// The transferee took the target's media: call `other` (the transferor's call with the
    /// target) is folded into call `id`, the target in the transferor's place.
    pub(super) fn merge(&mut self, id: u64, other: u64, target_side: Side) {
        let Some(mut second) = self.calls.remove(&other) else { return };
        let transferor_there = target_side.other();
        self.by_invite.remove(&second.invite_a_key);
        self.originated.remove(&second.invite_a_key);
        let Some(call) = self.calls.get_mut(&id) else { return };
        let Some(transferor) = call.transfer.as_ref().map(|t| t.transferor) else { return };
        // The media: the target's legs take the transferor's place, stream by stream.
        if let (Some(mine), Some(theirs)) = (call.media.as_mut(), second.media.as_ref()) {
            for (m, t) in mine.streams.iter_mut().zip(&theirs.streams) {
                if let (Some(m), Some(t)) = (m.as_mut(), t) {
                    let leg = if target_side == Side::A { t.leg_a } else { t.leg_b };
                    if transferor == Side::A {
                        m.leg_a = leg;
                    } else {
                        m.leg_b = leg;
                    }
                }
            }
        }
        // The dialogs: the target's in the transferor's place; both of the transferor's kept to
        // answer its BYEs.
        let target = second.dialog(target_side).clone();
        let old = std::mem::replace(call.dialog_mut(transferor), target);
        // The REFER's dialog last: the final NOTIFY goes there.
        call.replaced.push(second.dialog(transferor_there).clone());
        call.replaced.push(old);
        call.last_sdp[transferor as usize] = second.last_sdp[target_side as usize].take();
        if target_side == Side::B {
            if let Some(fork) = second.winner.and_then(|w| second.forks.get(w)) {
                call.forks.push(Fork {
                    stage: u32::MAX - 1,
                    dialog: fork.dialog.clone(),
                    invite: fork.invite.clone(),
                    state: fork.state,
                    provisional: fork.provisional,
                    cancel_on_provisional: false,
                    ack: fork.ack.clone(),
                    credentials: None,
                    auth_tried: true,
                    redirects: Vec::new(),
                    trunk: fork.trunk,
                    rseq: fork.rseq.clone(),
                });
                if transferor == Side::B {
                    call.winner = Some(call.forks.len() - 1);
                }
            }
        } else if transferor == Side::B {
            // The target called the transferor (it is the caller of the other call): the callee
            // side is its dialog, no fork of ours.
            call.winner = None;
        }
        let (target_call_id, transferor_call_id) =
            (call.dialog(transferor).call_id.clone(), second.dialog(transferor_there).call_id.clone());
        for key in [&second.a.call_id, &second.b.call_id] {
            self.by_call_id.remove(key);
        }
        for fork in &second.forks {
            self.by_call_id.remove(&fork.dialog.call_id);
        }
        self.by_call_id.insert(target_call_id, (id, transferor));
        self.by_call_id.insert(transferor_call_id, (id, transferor));
        // The consultation call ends here, folded into this one: its own records (the target's
        // talk time from now on is this call's).
        let now = self.clock.unwrap_or(second.started);
        let duration_ms = second.answered.map_or(0, |a| now.instant.saturating_duration_since(a.instant).as_millis() as u64);
        let record = super::call_record(other, &second, &now, 200, "transferred", duration_ms);
        self.events.push_back(CallEvent::Ended(Box::new(record)));
        self.update(other, UpdateKind::Ended { status: 200, cause: "transferred", duration_ms });
    }
}
