//! Conference rooms in the media plane, and three-way calls made of them (RFC 5359 §2.10, §2.11).
//!
//! ```text
//!  dial in:   P ──INVITE conf-sales── the media plane answers P on new legs, which join the
//!             room's conference (made by its first party) ─► P ◄── 200
//!  added:     A ──REFER (Refer-To: sip:conf-x@…) in its call with B── 202, NOTIFY 100 … 200:
//!             B's legs leave their bridge for the room, A's go (A dials conf-x itself: §2.10)
//!  joins:     C ──INVITE (Join: A–B's dialog, RFC 3911)── A's and B's legs and C's new ones
//!             make a room of three; when only one party is left it is hung up
//!  leaving:   a BYE from a party in a room ends only its side; a call ends with its last side,
//!             a room with its last party
//! ```
//!
//! A call's two sides are each in the room or not (`room_sides`); a side in the room is nobody's
//! peer, so requests other than BYE from it are answered here (re-offers 488).

use super::*;
use crate::media::{Conferenced, Newcomer, StreamLegs};

/// Parties a room takes at most.
pub const MAX_MEMBERS: usize = 32;
/// Rooms at most.
const MAX_ROOMS: usize = 10_000;

/// A conference room.
#[derive(Debug, Default)]
pub(super) struct Room {
    /// The media plane's conference, once made.
    conference: Option<u64>,
    /// A request that makes it is out: other calls' requests wait for its id.
    creating: bool,
    waiting: Vec<u64>,
    /// Requests for it in the media plane.
    pending: usize,
    /// Call sides in it.
    members: Vec<(u64, Side)>,
    /// Made for a three-way call: when one party is left, it is hung up; when the call it was
    /// made of is all that is left, it is a plain call again.
    adhoc: bool,
    /// An ad-hoc room whose call ended (or could not be moved in) before it was made: parties on
    /// their way in are refused.
    closed: bool,
}

impl Room {
    /// The media plane's conference, once made.
    pub(super) fn conference(&self) -> Option<u64> {
        self.conference
    }
}

/// What a call is waiting for the media plane to do in its room.
#[derive(Debug)]
pub(super) enum RoomOp {
    /// Its caller (side A) called the room: answered once its legs are in.
    Newcomer(Newcomer),
    /// A REFER to the room from `side.other()`: `side` goes in, the transferor's legs go.
    Referred { side: Side, release: Vec<u64> },
    /// Both sides of the answered call go in (a third party joins them).
    Both,
}

impl B2bua {
    /// Whether `uri` (a Refer-To) names a conference room of ours.
    pub(super) fn is_room_uri(&self, uri: &str) -> bool {
        sip_core::message::user_host(uri.split('?').next().unwrap_or(uri))
            .is_some_and(|(user, host)| self.config.is_ours(&host) && self.config.features.room(&user).is_some())
    }

    /// A new room's name.
    fn new_room(&mut self) -> String {
        let prefix = self.config.features.conference.clone().unwrap_or_else(|| "conf".into());
        loop {
            let name = format!("{prefix}-{}", self.random.tag().get(..8).unwrap_or("0").to_ascii_lowercase());
            if !self.rooms.contains_key(&name) {
                return name;
            }
        }
    }

    /// `request` (an INVITE with an offer the server checked) calls room `room` (`None`: a new
    /// one): the media plane answers it on new legs in the room. The call's id, unless refused.
    pub fn handle_conference_invite(
        &mut self,
        room: Option<String>,
        key: TransactionKey,
        request: Request,
        source: Peer,
        caller: Option<String>,
        now: Now,
    ) -> Option<u64> {
        self.clock = Some(now);
        let room = room.unwrap_or_else(|| self.new_room());
        let full = self.rooms.get(&room).is_some_and(|r| r.members.len() + r.waiting.len() >= MAX_MEMBERS);
        if full || (!self.rooms.contains_key(&room) && self.rooms.len() >= MAX_ROOMS) {
            self.reply(&key, &request, 486, now);
            return None;
        }
        let (id, offer, active) = self.answered_here(key, request, source, caller, "room", now)?;
        let policy = self.config.codec_policy.clone();
        let call = self.calls.get_mut(&id)?;
        let newcomer = Newcomer { call_id: call.a.call_id.clone(), offer, active, policy };
        call.focus = true;
        call.room = Some(room.clone());
        call.room_op = Some(RoomOp::Newcomer(newcomer));
        self.rooms.entry(room).or_default();
        self.room_request(id);
        Some(id)
    }

    /// The call a `Join` header (RFC 3911: `call-id;to-tag=…;from-tag=…`) names, by one of its
    /// dialogs (tags either way round): answered, not parked, not already in a room.
    /// `Err(481)`: no such call; `Err(486)`: not one that can be joined now.
    pub fn join_target(&self, value: &str) -> Result<u64, u16> {
        let named = transfer::Replaces::from_value(value).ok_or(400u16)?;
        let &(id, side) = self.by_call_id.get(&named.call_id).ok_or(481u16)?;
        let call = self.calls.get(&id).ok_or(481u16)?;
        let dialog = if side == Side::B {
            call.winner.and_then(|w| call.forks.get(w)).map(|f| &f.dialog).filter(|d| d.call_id == named.call_id).unwrap_or(&call.b)
        } else {
            &call.a
        };
        let (ours, theirs) = (dialog.local_tag(), tag_of(&dialog.remote).unwrap_or_default());
        let matches = (ours == named.to_tag && theirs == named.from_tag) || (ours == named.from_tag && theirs == named.to_tag);
        if dialog.call_id != named.call_id || !matches {
            return Err(481);
        }
        let joinable = matches!(call.state, State::Answered | State::Confirmed)
            && call.media.is_some()
            && call.parked.is_none()
            && call.room.is_none()
            && call.transfer.is_none()
            && !call.ivr
            && !call.negotiating
            && !call.reinvite_pending
            // A held party could not be taken off hold in a room (re-INVITEs there get 488).
            && call.held_by.is_none();
        if joinable {
            Ok(id)
        } else {
            Err(486)
        }
    }

    /// A third party (`request`, an INVITE with `Join`) joins answered call `target`: the call
    /// becomes a room of three. The new call's id, unless refused.
    #[allow(clippy::too_many_arguments)]
    pub fn handle_join(
        &mut self,
        target: u64,
        key: TransactionKey,
        request: Request,
        source: Peer,
        caller: Option<String>,
        now: Now,
    ) -> Option<u64> {
        self.clock = Some(now);
        // What would refuse the joiner is checked before the call is touched.
        if !is_sdp(&request.headers, &request.body) || Dialog::uas(&request, "check", source).is_err() {
            self.reply(&key, &request, 488, now);
            return None;
        }
        let room = self.new_room();
        let Some(call) = self.calls.get_mut(&target) else {
            self.reply(&key, &request, 481, now);
            return None;
        };
        call.room = Some(room.clone());
        call.room_op = Some(RoomOp::Both);
        self.rooms.insert(room.clone(), Room { adhoc: true, ..Room::default() });
        self.room_request(target);
        let id = self.handle_conference_invite(Some(room), key, request, source, caller, now);
        if id.is_some() {
            self.stats.conferences_joined += 1;
        }
        id
    }

    /// The server found that REFER of call `id` names room `room` (`None`: a new one;
    /// `Err(status)`: refused): the referred party goes into the room, the transferor is let go.
    pub fn handle_refer_to_room(&mut self, id: u64, room: Result<Option<String>, u16>, now: Now) {
        self.clock = Some(now);
        let can = |c: &Call| c.media.is_some() && !c.ivr && c.room.is_none();
        let Some((side, key, request, notify, room)) = self.pending_refer_for(id, room, can, now) else { return };
        let room = room.unwrap_or_else(|| self.new_room());
        if self.rooms.get(&room).is_some_and(|r| r.members.len() + r.waiting.len() >= MAX_MEMBERS) {
            self.reply(&key, &request, 486, now);
            return;
        }
        let Some(call) = self.calls.get_mut(&id) else { return };
        let accepted = transfer::accepted(&request, call.dialog(side).local_tag(), notify);
        self.respond(&key, accepted);
        self.stats.transfers += 1;
        // The transferor is told at once that it is under way, and of the end later; its
        // dialog is kept to answer its BYE.
        let tag = self.random.tag();
        let Some(call) = self.calls.get_mut(&id) else { return };
        call.transfer = Some(Transfer::in_place(side, notify));
        self.notify_transferor(id, "SIP/2.0 100 Trying", false, now);
        let Some(call) = self.calls.get_mut(&id) else { return };
        if side == Side::B {
            call.winner = None;
        }
        let empty = ivr::nobody(&format!("room-{id}"), &tag, call.dialog(side).remote.clone(), String::new());
        let gone = std::mem::replace(call.dialog_mut(side), empty);
        call.replaced.push(gone);
        call.room = Some(room.clone());
        self.rooms.entry(room).or_default();
        // A party the transferor held is taken off hold first, or it could not talk in the room.
        if !self.resume_then(id, side, resume::After::Room, now) {
            self.room_move(id);
        }
    }

    /// The referred party of call `id` goes into the call's room; the transferor's legs go.
    pub(super) fn room_move(&mut self, id: u64) {
        let Some(call) = self.calls.get_mut(&id) else { return };
        let Some(side) = call.transfer.as_ref().map(|t| t.transferor) else { return };
        let release = call.media.as_mut().map(|m| m.take_side(side == Side::A)).unwrap_or_default();
        // Music on hold (the transferor's) ends there: the conference makes a participant's
        // stream (the media plane ends what played into it).
        call.held_by = None;
        call.music = false;
        call.room_op = Some(RoomOp::Referred { side: side.other(), release });
        self.room_request(id);
    }

    /// Asks the media plane for call `id`'s room operation, or queues it while the room's
    /// conference is being made.
    fn room_request(&mut self, id: u64) {
        let Some(call) = self.calls.get(&id) else { return };
        let (Some(name), Some(op)) = (call.room.clone(), call.room_op.as_ref()) else { return };
        let (add, release, newcomer) = match op {
            RoomOp::Newcomer(n) => (Vec::new(), Vec::new(), Some(n.clone())),
            RoomOp::Referred { side, release } => {
                (call.media.as_ref().map(|m| m.facing(*side == Side::A)).unwrap_or_default(), release.clone(), None)
            }
            RoomOp::Both => {
                let media = call.media.as_ref();
                let mut legs = media.map(|m| m.facing(true)).unwrap_or_default();
                legs.extend(media.map(|m| m.facing(false)).unwrap_or_default());
                (legs, Vec::new(), None)
            }
        };
        let room = self.rooms.entry(name.clone()).or_default();
        if room.closed {
            self.room_refused(id, &name);
            return;
        }
        if room.conference.is_none() {
            if room.creating {
                room.waiting.push(id);
                return;
            }
            room.creating = true;
        }
        room.pending += 1;
        let conference = room.conference;
        self.room_ops.insert(id, name.clone());
        self.media_request(id, MediaRequest::Conference { room: name, conference, add, release, newcomer });
    }

    /// The media plane did (or did not do) call `id`'s room operation.
    pub(super) fn on_conferenced(&mut self, id: u64, result: Result<Conferenced, MediaError>, now: Now) {
        let Some(name) = self.room_ops.remove(&id) else { return };
        let op = self.calls.get_mut(&id).and_then(|c| c.room_op.take());
        let live = self.calls.get(&id).is_some_and(|c| c.state != State::Cancelled && c.room.as_deref() == Some(name.as_str()));
        // The room's conference exists (or its making failed): the calls waiting for it go on.
        let mut waiting = Vec::new();
        if let Some(room) = self.rooms.get_mut(&name) {
            room.pending = room.pending.saturating_sub(1);
            if room.creating {
                room.creating = false;
                if let Ok(done) = &result {
                    room.conference = Some(done.conference);
                }
                waiting = std::mem::take(&mut room.waiting);
            }
        }
        for w in waiting {
            self.room_request(w);
        }
        let op = match (op, &result) {
            (Some(op), _) if live => op,
            (_, Ok(done)) => {
                // The party hung up (or cancelled) meanwhile: what was made for it goes.
                if let Some((legs, _)) = &done.newcomer {
                    self.let_go(id, legs.clone());
                }
                self.after_leaving(id, &name, now);
                return;
            }
            (_, Err(_)) => {
                self.room_emptied(id, &name);
                return;
            }
        };
        match (op, result) {
            (RoomOp::Newcomer(_), Ok(done)) if self.rooms.get(&name).is_none_or(|r| r.closed) => {
                if let Some((legs, _)) = done.newcomer {
                    self.let_go(id, legs);
                }
                self.room_refused(id, &name);
            }
            (RoomOp::Newcomer(n), Ok(done)) => {
                let Some((legs, answer)) = done.newcomer else { return };
                let mut legs = legs.into_iter();
                let streams =
                    n.active.iter().map(|&on| if on { legs.next().map(|leg_a| StreamLegs { leg_a, leg_b: 0 }) } else { None }).collect();
                let Some(call) = self.calls.get_mut(&id) else { return };
                let group = call.a.call_id.clone();
                call.media = Some(Allocation { streams, offer: String::new(), local_answer: Some(answer.clone()), group });
                call.room_sides[Side::A as usize] = true;
                call.state = State::Answered;
                call.answered = Some(now);
                call.first_answered = Some(now);
                let response = response_for(&call.invite_a, 200, None, None);
                let forward = Forward {
                    to: Side::A,
                    origin: call.invite_a_key.clone(),
                    request: call.invite_a.clone(),
                    response,
                    answers_offer: true,
                };
                self.rooms.entry(name.clone()).or_default().members.push((id, Side::A));
                self.stats.calls_answered += 1;
                self.stats.media_allocations += 1;
                self.deliver(id, forward, Some(answer), now);
                self.update(id, UpdateKind::Answered { party: 2 });
                self.after_leaving(id, &name, now);
            }
            (RoomOp::Referred { side, .. }, Ok(_)) => {
                if let Some(call) = self.calls.get_mut(&id) {
                    call.room_sides[side as usize] = true;
                }
                self.rooms.entry(name).or_default().members.push((id, side));
                self.notify_replaced_transferor(id, "SIP/2.0 200 OK");
                self.stats.transfers_completed += 1;
            }
            (RoomOp::Both, Ok(_)) => {
                if let Some(call) = self.calls.get_mut(&id) {
                    call.room_sides = [true, true];
                }
                let room = self.rooms.entry(name.clone()).or_default();
                room.members.push((id, Side::A));
                room.members.push((id, Side::B));
                self.after_leaving(id, &name, now);
            }
            (op, Err(error)) => {
                tracing::info!(call = id, %error, "a conference room could not take a party");
                let refused = matches!(error, MediaError::NotAcceptable(_));
                match op {
                    RoomOp::Newcomer(_) => {
                        if let Some(call) = self.calls.get(&id) {
                            let (key, invite) = (call.invite_a_key.clone(), call.invite_a.clone());
                            self.reply(&key, &invite, if refused { 488 } else { 503 }, now);
                        }
                        self.stats.calls_failed += 1;
                        self.finish(id);
                    }
                    RoomOp::Referred { .. } => {
                        self.notify_replaced_transferor(id, "SIP/2.0 503 Service Unavailable");
                        self.end_both(id, now);
                    }
                    RoomOp::Both => {
                        self.close_room(&name);
                        self.end_both(id, now);
                    }
                }
                self.room_emptied(id, &name);
            }
        }
    }

    /// A BYE from `side` of call `id`, in a room: only that side leaves (the BYE is answered).
    pub(super) fn leave_room(&mut self, id: u64, side: Side, now: Now) {
        let Some(call) = self.calls.get_mut(&id) else { return };
        call.room_sides[side as usize] = false;
        let legs = call.media.as_mut().map(|m| m.take_side(side == Side::A)).unwrap_or_default();
        let left = call.room_sides.iter().any(|s| *s);
        let name = call.room.clone();
        if !left {
            call.cause = "completed";
            self.stats.calls_completed += 1;
        }
        self.let_go(id, legs);
        if let Some(room) = name.as_ref().and_then(|n| self.rooms.get_mut(n)) {
            room.members.retain(|m| *m != (id, side));
        }
        if !left {
            self.finish(id);
        }
        if let Some(name) = name {
            self.after_leaving(id, &name, now);
        }
    }

    /// A party left room `name`: a three-way call with one party left hangs it up; an empty
    /// room ends.
    fn after_leaving(&mut self, id: u64, name: &str, now: Now) {
        let Some(room) = self.rooms.get(name) else { return };
        let settled = room.adhoc && room.waiting.is_empty() && room.pending == 0;
        if settled && room.members.len() == 1 {
            let (last, side) = room.members[0];
            self.send_in_dialog(last, side, "BYE", "", None, Purpose::Bye, now);
            self.leave_room(last, side, now);
            return;
        }
        if settled && room.members.len() == 2 && room.members[0].0 == room.members[1].0 {
            // Only the call the room was made of is left: a plain call again.
            let call = room.members[0].0;
            self.unroom(call, name);
            return;
        }
        self.room_emptied(id, name);
    }

    /// Call `id`, both of whose sides are all that is left in ad-hoc room `name`, leaves it for
    /// a bridge of its own again.
    fn unroom(&mut self, id: u64, name: &str) {
        let Some(room) = self.rooms.remove(name) else { return };
        let Some(call) = self.calls.get_mut(&id) else { return };
        call.room = None;
        call.room_sides = [false, false];
        let pairs = call.media.as_ref().map(|m| m.streams.iter().flatten().map(|s| (s.leg_a, s.leg_b)).collect()).unwrap_or_default();
        if let Some(conference) = room.conference {
            self.media_request(id, MediaRequest::Unconference { conference, pairs });
        }
    }

    /// An ad-hoc room whose call is gone: whoever is on the way in is refused.
    fn close_room(&mut self, name: &str) {
        let waiting = match self.rooms.get_mut(name) {
            Some(room) if room.adhoc => {
                room.closed = true;
                std::mem::take(&mut room.waiting)
            }
            _ => return,
        };
        for w in waiting {
            self.room_refused(w, name);
        }
    }

    /// Call `id`'s room operation cannot be done (its room closed): a party calling in is
    /// refused (481); any other call is ended.
    fn room_refused(&mut self, id: u64, name: &str) {
        let Some(call) = self.calls.get_mut(&id) else { return };
        let op = call.room_op.take();
        let now = self.clock.unwrap_or(call.started);
        match op {
            Some(RoomOp::Newcomer(_)) => {
                let (key, invite) = (call.invite_a_key.clone(), call.invite_a.clone());
                self.reply(&key, &invite, 481, now);
                self.stats.calls_failed += 1;
                self.finish(id);
            }
            Some(RoomOp::Referred { release, .. }) => {
                self.let_go(id, release);
                self.end_both(id, now);
            }
            _ => self.end_both(id, now),
        }
        self.room_emptied(id, name);
    }

    /// Ends room `name` (for call `id`, the last to leave) if nobody is in it or on the way.
    fn room_emptied(&mut self, id: u64, name: &str) {
        let Some(room) = self.rooms.get(name) else { return };
        if !room.members.is_empty() || !room.waiting.is_empty() || room.pending > 0 {
            return;
        }
        let conference = room.conference;
        self.rooms.remove(name);
        if let Some(conference) = conference {
            self.media.push_back((id, MediaRequest::EndConference { conference }));
        }
    }

    /// A call that ends leaves its room (see [`Self::finish`]).
    pub(super) fn leave_room_at_end(&mut self, id: u64, call: &mut Call) {
        let Some(name) = call.room.as_ref() else { return };
        let queued = !self.room_ops.contains_key(&id);
        match call.room_op.take() {
            // Legs a queued move was to let go are the call's to let go now.
            Some(RoomOp::Referred { release, .. }) if queued => self.let_go(id, release),
            // The call an ad-hoc room was being made of ended: the room will not be.
            Some(RoomOp::Both) => self.close_room(name),
            _ => {}
        }
        if let Some(room) = self.rooms.get_mut(name) {
            room.members.retain(|(c, _)| *c != id);
            room.waiting.retain(|c| *c != id);
        }
        let name = name.clone();
        let now = self.clock.unwrap_or(call.started);
        self.after_leaving(id, &name, now);
    }
}
