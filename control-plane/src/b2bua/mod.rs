//! [`B2bua`]: calls with media anchored in the media plane, as a sans-IO state machine of its
//! own. The server hands it the requests and responses that belong to calls (after loop checks,
//! authentication and routing) and the media plane's replies; it answers with SIP to send
//! ([`poll_sip`](B2bua::poll_sip)) and media-plane requests ([`poll_media`](B2bua::poll_media)).
//!
//! ```text
//!  A ──INVITE(offer)──► server: 483, 407, content checks, routing ─► handle_invite(route)
//!        Allocate (2 legs per stream + Offer: the media plane rewrites A's offer for B)
//!                                                                                │
//!  A ◄─1xx/2xx(answer for A)── Answer ◄─1xx/2xx(answer)── B ◄──INVITE(offer for B)──┘
//!  A ──ACK──► (B was ACKed on its 2xx)     BYE either side ─► 200, BYE other side, Release
//! ```
//!
//! Each call has two dialogs (RFC 3261 §12, [`sip_core::dialog`]): A's, which the caller's INVITE
//! made (its Call-ID, our To tag), and B's, ours towards the callee (our Call-ID and From tag).
//! In-dialog requests are checked against their dialog (CSeq order: 500; target refresh) and
//! relayed to the other side; an SDP offer in one (re-INVITE, UPDATE: hold, resume, a codec
//! change) goes through the media plane's Offer first, and the answer in its response through
//! Answer. The media plane writes every description the endpoints get (its address and ports, the
//! codecs of the configured policy, SRTP per side) and bridges the legs, transcoding where the two
//! sides share no codec. Responses carrying an answer wait for it in order: a 200 never
//! overtakes the 183 whose answer is still in the media plane.
//!
//! Every call that got an allocation releases it exactly once, whichever way it ends (answered and
//! hung up, refused, cancelled, timed out, allocation answered after the caller gave up); the
//! counters `media_allocations`/`media_releases` and the media plane's leg count prove it in tests.
//!
//! The callee side is rung in **stages** that routing ([`crate::routing`]) plans: each stage's
//! branches (forks) are INVITEd in parallel, each with its own Call-ID and dialog. The first 2xx
//! wins: it is ACKed, the other forks are CANCELled (or ACKed and sent BYE if they answer too,
//! RFC 3261 §13.2.2.4). Early media is taken from the first fork that sends SDP in a provisional
//! response; the others' provisional responses reach the caller without it. A stage that ends
//! unanswered (every fork failed, or its timeout) is reported as a [`CallEvent::Unanswered`] with
//! its [`Outcome`]; the server asks routing what follows and hands it back with
//! [`B2bua::handle_next`]: another stage, or the caller's final status.
//!
//! A caller's INVITE without SDP (delayed offer) gets the callee's offer in our 2xx and answers
//! in its ACK; a re-INVITE without SDP is relayed so too ([`reoffer`]). Reliable provisional
//! responses and UPDATEs in the early dialog are handled hop by hop ([`reliable`]).

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use rsip::headers::UntypedHeader;
use rsip::{Header, Method, Request, Response, SipMessage};
use sip_core::dialog::{Dialog, DialogError, DialogState};
use sip_core::message::{self, call_id, header, response_for, tag_of, uri_of};
use sip_core::transaction::{cancel_for, Outgoing, Peer, Role, TimerConfig, TransactionKey};
use sip_core::Random;

use crate::config::{CallerIdPolicy, Config, TrunkCredentials};
use crate::media::{Allocation, MediaError, MediaReply, MediaRequest};
use crate::now::Now;
use crate::routing::{outcome_of, Next, Outcome, Plan, RouteState, Stage};
use crate::sdp::Sdp;

/// Methods the server answers (the Allow header of OPTIONS, 405s and the calls it places).
pub const ALLOW: &str = "INVITE, ACK, CANCEL, BYE, OPTIONS, REGISTER, INFO, UPDATE, PRACK, REFER, NOTIFY, SUBSCRIBE, MESSAGE";

/// SIP the B2BUA wants sent; the server applies it to its transaction layer.
#[derive(Debug)]
pub enum SipOut {
    /// A response through the server transaction `key`.
    Respond(TransactionKey, Response),
    /// A request through a new client transaction (its key is the request's, which the B2BUA
    /// indexed; [`B2bua::handle_transaction_failed`] if it cannot start).
    Request(Request, Peer),
    /// Bytes outside any transaction: ACKs for 2xx, 2xx retransmissions.
    Transmit(Outgoing),
}

/// What the B2BUA tells the server about its calls.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CallEvent {
    /// A stage of `call` ended without an answer; the server must answer with
    /// [`B2bua::handle_next`] (routing's decision).
    Unanswered {
        /// The call.
        call: u64,
        /// How the stage ended.
        outcome: Outcome,
    },
    /// A call's progress, for the call-control API's watchers.
    Update(CallUpdate),
    /// A REFER asks to transfer `call` (RFC 3515): the server routes its target and answers
    /// with [`B2bua::handle_refer`].
    Refer(ReferTarget),
    /// A call ended: what its detail records are made of.
    Ended(Box<CallRecord>),
    /// One side of `call` put the other on hold (RFC 6337 §5.3); `holder` is its AoR when a
    /// subscriber. The server answers with [`B2bua::handle_music`] (the music to play).
    Held {
        /// The call.
        call: u64,
        /// The holder's address-of-record.
        holder: Option<String>,
    },
    /// The first party of a service call ([`B2bua::handle_originate_ivr`]) answered and talks
    /// to the media plane: `legs` face it (play prompts to them; their DTMF is its).
    Ivr {
        /// The call.
        call: u64,
        /// The legs facing the first party.
        legs: Vec<u64>,
    },
    /// Parked call `call` was not taken back in time: the server routes `parker` (its
    /// address-of-record) and answers with [`B2bua::handle_ring_back`].
    ParkExpired {
        /// The call.
        call: u64,
        /// Who parked it.
        parker: String,
    },
    /// The dialogs of call `id`'s subscribers changed in a way no [`CallEvent::Update`] tells
    /// (parked, taken back, a fork ended): their watchers are told.
    DialogsChanged {
        /// The call.
        call: u64,
    },
    /// [`B2bua::handle_connect`]'s second party answered and talks to the first (`Ok`), or
    /// could not be reached (`Err(status)`: the first party is still there).
    Connected {
        /// The call.
        call: u64,
        /// The outcome.
        result: Result<(), u16>,
    },
}

/// A step in a call's life.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallUpdate {
    /// The call.
    pub call: u64,
    /// When, UNIX milliseconds.
    pub unix_ms: u64,
    /// What happened.
    pub kind: UpdateKind,
}

/// What happened to a call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UpdateKind {
    /// The called side rings: party 1 (the first party of an originated call) or 2.
    Ringing {
        /// Which party.
        party: u8,
    },
    /// Forwarded or redirected.
    Forwarded,
    /// Answered by party 1 (originated calls) or 2.
    Answered {
        /// Which party.
        party: u8,
    },
    /// Over.
    Ended {
        /// The final status of its setup (200 once answered).
        status: u16,
        /// completed, failed, cancelled, hangup, no-ack.
        cause: &'static str,
        /// How long it was answered.
        duration_ms: u64,
    },
}

/// An ended call, for its detail records (CDRs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallRecord {
    /// Its id, and the caller's Call-ID.
    pub call: u64,
    pub sip_call_id: String,
    /// The caller's URI and the URI it called (an originated call: its first and second party).
    pub caller: String,
    pub callee: String,
    /// Where the answering fork's INVITE went (a phone's contact, a trunk), if one answered.
    pub answered_by: Option<String>,
    /// The number dialled out through a trunk, when the answering (or last) fork went out
    /// through one: what the call is rated by. Calls between phones are not rated.
    pub trunk_number: Option<String>,
    /// Originated calls: the number the first party was called at through a trunk, and when
    /// it answered (UNIX ms, 0: never): a callback's first leg is rated by them.
    pub first_trunk_number: Option<String>,
    pub first_answered_ms: u64,
    /// UNIX milliseconds: set up, answered (0: never), ended.
    pub started_ms: u64,
    pub answered_ms: u64,
    pub ended_ms: u64,
    /// How long it was answered.
    pub duration_ms: u64,
    /// The final status of its setup (200 once answered), and why it ended.
    pub status: u16,
    pub cause: &'static str,
    pub originated: bool,
}

/// A call in progress, as the call-control API lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallInfo {
    /// Its id.
    pub call: u64,
    /// The caller's URI (an originated call: its first party).
    pub caller: String,
    /// The called URI.
    pub callee: String,
    /// Ringing, answered or ending.
    pub phase: Phase,
    /// Started, UNIX milliseconds.
    pub started_unix_ms: u64,
    /// Answered, UNIX milliseconds (0: not yet).
    pub answered_unix_ms: u64,
    /// Placed by the call-control API.
    pub originated: bool,
}

/// Where a call stands, for [`CallInfo`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Being set up.
    Ringing,
    /// Answered.
    Answered,
    /// Its last forks are finishing.
    Ending,
}

/// The second party of an originated call, rung once the first answers.
#[derive(Debug)]
struct SecondParty {
    stage: Stage,
    caller_id: CallerIdPolicy,
    route: RouteState,
}

/// Counters of calls and their media.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CallStats {
    /// INVITEs that started a call.
    pub calls_started: u64,
    /// Calls answered (2xx relayed to the caller).
    pub calls_answered: u64,
    /// Calls that ended with an error response to the caller.
    pub calls_failed: u64,
    /// Calls cancelled by the caller.
    pub calls_cancelled: u64,
    /// Calls that ended after being answered.
    pub calls_completed: u64,
    /// Media allocations the media plane completed.
    pub media_allocations: u64,
    /// Media allocations that failed (the call got 503; nothing stays allocated).
    pub media_allocation_failures: u64,
    /// Media releases asked for (each allocation is released exactly once).
    pub media_releases: u64,
    /// In-dialog requests for no call (481).
    pub no_dialog: u64,
    /// In-dialog requests with a CSeq lower than one already received (500).
    pub cseq_out_of_order: u64,
    /// INVITEs sent to callees (one per fork).
    pub forks: u64,
    /// Forks that answered after another had won (ACKed and sent BYE).
    pub late_answers: u64,
    /// REFERs accepted (202), and transfers that connected the transferee to the target.
    pub transfers: u64,
    pub transfers_completed: u64,
    /// Calls ended because their credit ran out.
    pub calls_cut_off: u64,
    /// Callers screening refused that heard the callee's announcement instead of a 403/603.
    pub calls_announced: u64,
    /// Ringing calls picked up by another phone (RFC 5359 §2.16).
    pub pickups: u64,
    /// Calls parked, taken back from their orbit, and hung up after the park timeout (§2.15).
    pub parks: u64,
    pub retrievals: u64,
    pub park_timeouts: u64,
    /// Parked calls rung back to their parker at the park timeout and answered there.
    pub park_ring_backs: u64,
    /// Third parties that joined a call (RFC 3911 Join), making it a conference.
    pub conferences_joined: u64,
}

/// What is wrong with an initial INVITE's body for a call (RFC 3261 §8.2.3, §21.4.7): the answer
/// (or, for an INVITE without a body, the offer) will be SDP, so the caller must accept it; a
/// body must be SDP with an active stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OfferProblem {
    /// The caller does not accept application/sdp (406).
    NotAcceptable,
    /// The body is not SDP (415, with Accept).
    UnsupportedMediaType,
    /// SDP without an active stream, or unreadable (488).
    BadOffer,
}

impl OfferProblem {
    /// The problem with `request`'s offer, if any.
    pub fn of(request: &Request) -> Option<OfferProblem> {
        if !accepts_sdp(&request.headers) {
            return Some(OfferProblem::NotAcceptable);
        }
        if !request.body.is_empty() && !is_sdp(&request.headers, &request.body) {
            return Some(OfferProblem::UnsupportedMediaType);
        }
        if request.body.is_empty() {
            // Delayed offer (RFC 3261 §13.2.1): the offer comes in the callee's 2xx.
            return None;
        }
        match Sdp::parse(&request.body) {
            Ok(sdp) if sdp.any_active() => None,
            _ => Some(OfferProblem::BadOffer),
        }
    }

    /// The status and reason phrase for the caller.
    pub fn status(self) -> (u16, Option<&'static str>) {
        match self {
            OfferProblem::NotAcceptable => (406, None),
            OfferProblem::UnsupportedMediaType => (415, None),
            OfferProblem::BadOffer => (488, None),
        }
    }
}

/// Which side of a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Side {
    /// The caller.
    A,
    /// The callee.
    B,
}

impl Side {
    fn other(self) -> Side {
        match self {
            Side::A => Side::B,
            Side::B => Side::A,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// An originated call rings its first party (no media yet).
    Originating,
    /// Waiting for the media plane.
    Allocating,
    /// INVITE sent to B.
    Calling,
    /// B answered; 2xx sent to A, waiting for A's ACK.
    Answered,
    /// A ACKed.
    Confirmed,
    /// A cancelled (or the no-answer timer fired); waiting for B's final response.
    Cancelled,
}

#[derive(Debug)]
struct Retransmit {
    side: Side,
    payload: Bytes,
    next: Instant,
    interval: Duration,
    until: Instant,
}

#[derive(Debug)]
struct Call {
    state: State,
    /// The caller's dialog (we are its UAS).
    a: Dialog,
    /// The callee's dialog (we are its UAC): the answering fork's; before an answer, the first
    /// fork's (not used for requests until then).
    b: Dialog,
    invite_a: Request,
    invite_a_key: TransactionKey,
    /// Every INVITE sent to the callee side, in all stages.
    forks: Vec<Fork>,
    /// The stage being rung (forks of older stages no longer decide anything).
    stage: u32,
    /// The current stage's forks may still decide its outcome.
    stage_open: bool,
    /// The stage to ring once the media plane has allocated.
    first_stage: Option<Stage>,
    /// The first stage is a forward: 181 to the caller with it.
    announce_first: bool,
    /// The fork that answered.
    winner: Option<usize>,
    /// The fork whose early SDP the caller got.
    early_from: Option<usize>,
    /// Routing's state for this call (what follows an unanswered stage).
    route: RouteState,
    /// Delayed offer: the caller's INVITE had no SDP, the callee's 2xx makes the offer and the
    /// caller's ACK the answer.
    delayed: bool,
    /// Delayed offer: the callee's 2xx, sent on to the caller once the media plane has rewritten
    /// its offer.
    delayed_answer: Option<Forward>,
    /// Delayed offer: the caller's ACK brought the answer, which is in the media plane; the
    /// callee's ACK carries it when it is back.
    ack_answer_pending: bool,
    /// Placed by the API: side A is the first party, whom we called (our INVITE is `invite_a`).
    originated: bool,
    /// Originated: the fork of the first party that answered.
    a_fork: Option<usize>,
    /// Originated: the second party, rung once the first answers.
    second: Option<SecondParty>,
    /// For the API: URIs, times, the setup's final status and why it ended.
    caller_uri: String,
    callee_uri: String,
    started: Now,
    answered: Option<Now>,
    status: u16,
    cause: &'static str,
    ringing_told: [bool; 2],
    /// The side whose in-dialog offer is out, and whether it holds.
    pending_hold: Option<(Side, bool)>,
    /// The side that holds the other, and whether music plays to the held side.
    held_by: Option<Side>,
    music: bool,
    /// A blind transfer in progress, a REFER waiting for its target's route, the media plane
    /// working on the target's SDP or the transferee's answer, and the dialogs transfers replaced.
    transfer: Option<Transfer>,
    pending_refer: Option<(Side, TransactionKey, Request, bool, String)>,
    transfer_offer: bool,
    transfer_answer: bool,
    replaced: Vec<Dialog>,
    /// Attended transfer: the other call (with the target) and the target's side in it.
    attended_with: Option<(u64, Side)>,
    /// The last SDP each side (A, B) sent, for an attended transfer's re-offer.
    last_sdp: [Option<String>; 2],
    /// From tag towards the callee side (the same in every fork).
    tag_b: String,
    media: Option<Allocation>,
    /// The (offerer, answerer) legs of the last offer, which its answer goes over.
    offer_legs: Vec<(u64, u64)>,
    /// An Offer or Answer is in the media plane: responses wait in `forwards`.
    negotiating: bool,
    /// Responses to pass to the other side, in order (the head may wait for its answer).
    forwards: VecDeque<Forward>,
    /// An in-dialog request with an offer, waiting for the media plane's rewrite of it.
    relay_offer: Option<RelayOffer>,
    policy: CallerIdPolicy,
    caller: Option<String>,
    /// When the current stage stops ringing.
    stage_deadline: Option<Instant>,
    /// Our 2xx to an INVITE, sent again until its ACK: one per side at most (a picked-up call
    /// answers both).
    retransmit: Vec<Retransmit>,
    reinvite_pending: bool,
    /// A re-INVITE without SDP: the other side's 2xx makes the offer (see `reoffer`).
    reoffer: Option<reoffer::Reoffer>,
    /// Our last ACK of an offerless re-INVITE's 2xx (the side, its CSeq), sent again if the
    /// 2xx is.
    reoffer_ack: Option<(Side, u32, Bytes, Peer)>,
    /// Reliable provisional responses to the caller (RFC 3262, see `reliable`).
    rel: reliable::Reliable,
    /// The longest it may last (prepaid credit).
    limit: limit::Limit,
    /// Originated for a service (callback): the first party talks to the media plane alone
    /// until [`B2bua::handle_connect`] brings a second party.
    ivr: bool,
    /// A caller screening refused, answered by the media plane to hear this announcement (a
    /// WAV in its prompt_dir), then hung up: when it ends, or at the deadline.
    announcement: Option<String>,
    announcement_until: Option<Instant>,
    /// Originated: when the first party answered.
    first_answered: Option<Now>,
    /// A party that called in to take this call (pickup, a parked call taken back), while the
    /// media plane joins it.
    joining: Option<join::Joining>,
    /// Parked: in which orbit, by whom, until when.
    parked: Option<join::Parked>,
    /// The conference room its sides (A, B) are in, and what the media plane is doing there.
    room: Option<String>,
    room_sides: [bool; 2],
    room_op: Option<conference::RoomOp>,
    /// A party that called a conference room (its 200's Contact names the room, `isfocus`).
    focus: bool,
    /// The answer the caller got with early media (the one it keeps, RFC 3261 §13.2.1).
    early_answer: Option<String>,
    /// The subscriber that picked the call up or took it back, and its side.
    taker: Option<(String, Side)>,
    /// A held party being taken off hold before it is parked or moved to a room.
    resuming: Option<resume::Resuming>,
    /// A parked call's parker, routed, while the media plane makes the legs to ring it with.
    ring_back: Option<(Plan, RouteState)>,
}

/// One INVITE to the callee side.
#[derive(Debug)]
struct Fork {
    stage: u32,
    dialog: Dialog,
    invite: Request,
    state: ForkState,
    provisional: bool,
    /// CANCEL once a provisional response arrives (RFC 3261 §9.1: not before).
    cancel_on_provisional: bool,
    /// The ACK sent for its 2xx, sent again when the 2xx is.
    ack: Option<Bytes>,
    /// What to answer its digest challenge with (trunks), and whether it was answered once.
    credentials: Option<TrunkCredentials>,
    auth_tried: bool,
    /// The Contacts of its 3xx.
    redirects: Vec<String>,
    /// Sent out through a trunk (the call is rated by its number).
    trunk: bool,
    /// The To tag and RSeq of its last reliable provisional response, PRACKed (RFC 3262).
    rseq: Option<(String, u32)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ForkState {
    /// No final response yet.
    Ringing,
    /// CANCELled (or to be, on its first provisional); no final response yet.
    Cancelling,
    /// Its final response (or 408 for a timeout).
    Done(u16),
}

impl Fork {
    fn outstanding(&self) -> bool {
        matches!(self.state, ForkState::Ringing | ForkState::Cancelling)
    }
}

impl Call {
    /// A call between dialogs `a` and `b`, set up by `invite_a` (the caller's INVITE, or ours to
    /// an originated call's first party), in its first moments: nothing rung, nothing allocated.
    #[allow(clippy::too_many_arguments)]
    fn new(
        a: Dialog,
        b: Dialog,
        invite_a: Request,
        invite_a_key: TransactionKey,
        route: RouteState,
        policy: CallerIdPolicy,
        tag_b: String,
        now: Now,
    ) -> Call {
        Call {
            state: State::Allocating,
            a,
            b,
            invite_a_key,
            forks: Vec::new(),
            stage: 0,
            stage_open: false,
            first_stage: None,
            announce_first: false,
            winner: None,
            early_from: None,
            route,
            delayed: false,
            delayed_answer: None,
            ack_answer_pending: false,
            originated: false,
            a_fork: None,
            second: None,
            caller_uri: String::new(),
            callee_uri: String::new(),
            started: now,
            answered: None,
            status: 0,
            cause: "",
            ringing_told: [false; 2],
            pending_hold: None,
            held_by: None,
            music: false,
            transfer: None,
            pending_refer: None,
            transfer_offer: false,
            transfer_answer: false,
            replaced: Vec::new(),
            attended_with: None,
            last_sdp: [None, None],
            tag_b,
            media: None,
            offer_legs: Vec::new(),
            negotiating: false,
            forwards: VecDeque::new(),
            relay_offer: None,
            policy,
            caller: None,
            stage_deadline: None,
            retransmit: Vec::new(),
            reinvite_pending: false,
            reoffer: None,
            reoffer_ack: None,
            rel: reliable::Reliable::for_invite(&invite_a),
            invite_a,
            limit: limit::Limit::default(),
            ivr: false,
            announcement: None,
            announcement_until: None,
            first_answered: None,
            joining: None,
            parked: None,
            room: None,
            room_sides: [false, false],
            room_op: None,
            focus: false,
            early_answer: None,
            taker: None,
            resuming: None,
            ring_back: None,
        }
    }

    /// The final statuses of stage `stage`'s forks.
    fn stage_statuses(&self, stage: u32) -> Vec<u16> {
        self.forks
            .iter()
            .filter(|f| f.stage == stage)
            .filter_map(|f| match f.state {
                ForkState::Done(s) => Some(s),
                _ => None,
            })
            .collect()
    }

    fn holds_deadline(&self, at: Instant) -> bool {
        self.stage_deadline == Some(at)
            || self.retransmit.iter().any(|r| r.next == at)
            || self.limit.holds(at)
            || self.parked.as_ref().is_some_and(|p| p.until == Some(at))
            || self.resuming.as_ref().is_some_and(|r| r.holds(at))
            || self.announcement_until == Some(at)
            || self.rel.holds(at)
    }

    fn dialog(&self, side: Side) -> &Dialog {
        match side {
            Side::A => &self.a,
            Side::B => &self.b,
        }
    }

    fn dialog_mut(&mut self, side: Side) -> &mut Dialog {
        match side {
            Side::A => &mut self.a,
            Side::B => &mut self.b,
        }
    }

    /// The dialog requests to and from `side` are in now: while the call rings, the callee's
    /// is the early dialog of the fork whose early answer the caller got (an UPDATE goes
    /// there, RFC 3311), else [`dialog_mut`](Self::dialog_mut)'s.
    fn live_dialog_mut(&mut self, side: Side) -> &mut Dialog {
        let early = (side == Side::B && self.state == State::Calling && self.winner.is_none())
            .then_some(self.early_from)
            .flatten()
            .filter(|&f| f < self.forks.len());
        match early {
            Some(f) => &mut self.forks[f].dialog,
            None => self.dialog_mut(side),
        }
    }
}

/// A response from one side for the other (to a request we relayed, or the callee's to the
/// caller's INVITE).
#[derive(Debug)]
struct Forward {
    to: Side,
    origin: TransactionKey,
    /// The request being answered, as the `to` side sent it.
    request: Request,
    response: Response,
    /// The request carried an offer: an SDP body in this response is its answer.
    answers_offer: bool,
}

/// An in-dialog request with an SDP offer, relayed once the media plane has rewritten it.
#[derive(Debug)]
struct RelayOffer {
    key: TransactionKey,
    from: Side,
    request: Request,
    extra: String,
}

#[derive(Debug, Clone)]
enum Purpose {
    /// The INVITE of fork `fork`.
    Invite {
        fork: usize,
    },
    Cancel,
    Bye,
    /// An in-dialog request relayed from `from`; its answer goes back through `origin`. `offer`:
    /// it carried an SDP offer (the media plane answers the response's SDP).
    Relay {
        origin: TransactionKey,
        from: Side,
        request: Box<Request>,
        offer: bool,
    },
    /// Our re-INVITE of a transferee with the transfer target's media.
    Renegotiate,
    /// Our re-INVITE taking a held party (on `side`) off hold (see `resume`).
    Resume {
        side: Side,
    },
    /// Our PRACK of a fork's reliable provisional response (see `reliable`).
    Prack,
}

/// The B2BUA: its calls, their dialogs and media, and what it wants sent.
#[derive(Debug)]
pub struct B2bua {
    config: Arc<Config>,
    timers: TimerConfig,
    random: Random,
    /// Boxed: a call is kilobytes, and a table of inline calls that churns doubles (its removals'
    /// tombstones use up its room) and is first touched page by page as calls land in new slots,
    /// a slow climb of the server's memory the soak saw.
    calls: HashMap<u64, Box<Call>>,
    by_call_id: HashMap<String, (u64, Side)>,
    by_invite: HashMap<TransactionKey, u64>,
    clients: HashMap<TransactionKey, (u64, Purpose)>,
    /// Call timers (ring deadline, 2xx retransmission), lazily deleted: an entry is live only
    /// while the call still holds that deadline.
    deadlines: BinaryHeap<Reverse<(Instant, u64)>>,
    next_id: u64,
    sip: VecDeque<SipOut>,
    media: VecDeque<(u64, MediaRequest)>,
    events: VecDeque<CallEvent>,
    /// Originated calls by the key of the INVITE to their first party.
    originated: HashMap<TransactionKey, u64>,
    /// Parked calls by orbit.
    orbits: HashMap<String, u64>,
    /// The legs a pickup's Join deletes, by call, until the media plane answers it (put back, or
    /// let go if the call ended meanwhile, when the newcomer's offer is refused).
    join_released: HashMap<u64, Vec<u64>>,
    /// Conference rooms by name, and the room of each call whose room request is out.
    rooms: HashMap<String, conference::Room>,
    room_ops: HashMap<u64, String>,
    /// The latest time handed in (for the end of calls that finish inside a handler without one).
    clock: Option<Now>,
    stats: CallStats,
}

mod conference;
mod forks;
mod ivr;
pub use ivr::ANNOUNCEMENT_LIMIT;
mod join;
mod limit;
mod negotiation;
mod originate;
mod reliable;
pub(crate) use reliable::has_option;
mod reoffer;
mod resume;
mod transfer;

pub use transfer::ReferTarget;
use transfer::Transfer;

impl B2bua {
    /// A B2BUA for `config`, with the transaction timers' T1/T2 (2xx retransmission) and its own
    /// randomness (tags, Call-IDs, branches).
    pub fn new(config: Arc<Config>, timers: TimerConfig, random: Random) -> Self {
        B2bua {
            config,
            timers,
            random,
            calls: HashMap::new(),
            by_call_id: HashMap::new(),
            by_invite: HashMap::new(),
            clients: HashMap::new(),
            deadlines: BinaryHeap::new(),
            next_id: 0,
            sip: VecDeque::new(),
            media: VecDeque::new(),
            events: VecDeque::new(),
            originated: HashMap::new(),
            orbits: HashMap::new(),
            rooms: HashMap::new(),
            room_ops: HashMap::new(),
            join_released: HashMap::new(),
            clock: None,
            stats: CallStats::default(),
        }
    }

    /// Calls in progress.
    pub fn len(&self) -> usize {
        self.calls.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.calls.is_empty()
    }

    /// Counters.
    pub fn stats(&self) -> CallStats {
        self.stats
    }

    /// Call-IDs of dialogs the B2BUA answers to (0 when no call is left: a test of leaks).
    pub fn dialogs(&self) -> usize {
        self.by_call_id.len()
    }

    /// Whether the server transaction `key` is a call's INVITE.
    pub fn has_invite(&self, key: &TransactionKey) -> bool {
        self.by_invite.contains_key(key)
    }

    /// A new call: `request` (an INVITE the server authenticated, `caller` the AoR it
    /// authenticated as, `None` from a trusted peer; its offer checked by [`OfferProblem`])
    /// arrived over `source`; routing planned `plan` and keeps `route`. The call's id, unless
    /// it was refused at once.
    pub fn handle_invite(
        &mut self,
        key: TransactionKey,
        request: Request,
        source: Peer,
        caller: Option<String>,
        plan: Plan,
        route: RouteState,
        now: Now,
    ) -> Option<u64> {
        let Some(first) = plan.stage.branches.first().cloned() else {
            self.reply(&key, &request, 480, now);
            return None;
        };
        let (tag_a, tag_b) = (self.random.tag(), self.random.tag());
        let Ok(a) = Dialog::uas(&request, &tag_a, source) else {
            self.reply(&key, &request, 400, now);
            return None;
        };
        // Until a fork answers, `b` stands for the callee side (its From is every fork's).
        let b = Dialog::uac(
            String::new(),
            format!("{};tag={tag_b}", Self::b_from(&a, plan.caller_id)),
            format!("<{}>", first.target),
            first.target,
            first.route,
            first.peer,
        );
        let delayed = request.body.is_empty();
        let active = Sdp::parse(&request.body).map(|s| s.active().to_vec()).unwrap_or_default();
        let offer_text = String::from_utf8_lossy(&request.body).into_owned();
        let a_sdp = (!delayed).then(|| offer_text.clone());

        let id = self.admit(&key, &request, &a);
        if !delayed {
            let policy = self.config.codec_policy.clone();
            self.media_request(
                id,
                MediaRequest::Allocate {
                    call_id: a.call_id.clone(),
                    offer: offer_text,
                    callee_offers: false,
                    active,
                    policy,
                    local: false,
                },
            );
        }
        self.clock = Some(now);
        let caller_uri = uri_of(&a.remote).to_owned();
        let callee_uri = request.uri.to_string();
        let mut call = Call::new(a, b, request, key, route, plan.caller_id, tag_b, now);
        call.state = if delayed { State::Calling } else { State::Allocating };
        call.first_stage = Some(plan.stage);
        call.announce_first = plan.forwarded;
        call.delayed = delayed;
        call.caller_uri = caller_uri;
        call.callee_uri = callee_uri;
        call.last_sdp = [a_sdp, None];
        call.caller = caller;
        self.calls.insert(id, Box::new(call));
        if delayed {
            // Nothing to allocate before the callee's offer: ring now, without a body.
            if let Some(stage) = self.calls.get_mut(&id).and_then(|c| c.first_stage.take()) {
                if plan.forwarded {
                    self.announce_forward(id, now);
                }
                self.ring(id, stage, now);
            }
        }
        Some(id)
    }

    /// A new call's id for `request` (its server transaction `key`, its dialog `a`): counted,
    /// 100 Trying sent, indexed by Call-ID and transaction.
    fn admit(&mut self, key: &TransactionKey, request: &Request, a: &Dialog) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        self.stats.calls_started += 1;
        self.sip.push_back(SipOut::Respond(key.clone(), response_for(request, 100, None, None)));
        self.by_call_id.insert(a.call_id.clone(), (id, Side::A));
        self.by_invite.insert(key.clone(), id);
        id
    }

    /// The subscriber (AoR) who placed call `id`, if a subscriber did.
    pub fn caller(&self, id: u64) -> Option<&str> {
        self.calls.get(&id).and_then(|c| c.caller.as_deref())
    }

    /// Routing's decision after a [`CallEvent::Unanswered`] of call `id`.
    pub fn handle_next(&mut self, id: u64, next: Next, now: Now) {
        self.clock = Some(now);
        let Some(call) = self.calls.get_mut(&id) else { return };
        if !matches!(call.state, State::Calling | State::Originating) || call.stage_open {
            return;
        }
        match next {
            Next::Ring(plan) => {
                if call.state == State::Calling {
                    call.policy = plan.caller_id;
                }
                if plan.forwarded {
                    self.announce_forward(id, now);
                }
                self.ring(id, plan.stage, now);
            }
            Next::Fail(status) if call.state == State::Originating => {
                // The first party of an originated call did not answer: there is nobody to tell.
                call.status = status;
                call.cause = "failed";
                self.stats.calls_failed += 1;
                self.abandon(id, now);
            }
            Next::Fail(status) => {
                let (key, invite) = (call.invite_a_key.clone(), call.invite_a.clone());
                let out = response_for(&invite, status, None, Some(call.a.local_tag()));
                self.respond(&key, out);
                self.stats.calls_failed += 1;
                self.abandon(id, now);
            }
        }
    }

    /// 181 Call Is Being Forwarded to the caller (RFC 5359 §2.7–2.9), in order with the
    /// responses already on their way.
    fn announce_forward(&mut self, id: u64, now: Now) {
        self.update(id, UpdateKind::Forwarded);
        let Some(call) = self.calls.get(&id) else { return };
        let response = response_for(&call.invite_a, 181, None, None);
        let forward =
            Forward { to: Side::A, origin: call.invite_a_key.clone(), request: call.invite_a.clone(), response, answers_offer: false };
        self.forward(id, forward, now);
    }

    /// Music on hold for call `id`, held since a [`CallEvent::Held`]: `file` plays, looped, into
    /// the held side's legs until the holder resumes.
    pub fn handle_music(&mut self, id: u64, file: &str) {
        let Some(call) = self.calls.get_mut(&id) else { return };
        let (Some(holder), false) = (call.held_by, call.music) else { return };
        let Some(legs) = call.media.as_ref().map(|m| m.facing(holder.other() == Side::A)) else { return };
        call.music = true;
        self.media_request(id, MediaRequest::Play { legs, file: file.to_owned() });
    }

    /// The in-dialog offer of `side` was answered (`accepted`: with a 2xx): a hold starts or ends.
    fn hold_answered(&mut self, id: u64, side: Side, accepted: bool) {
        let Some(call) = self.calls.get_mut(&id) else { return };
        let Some((offerer, holds)) = call.pending_hold.take_if(|(s, _)| *s == side) else { return };
        if !accepted {
            return;
        }
        match (holds, call.held_by) {
            (true, None) => {
                call.held_by = Some(offerer);
                let holder = match offerer {
                    Side::A => {
                        call.caller.clone().or_else(|| call.originated.then(|| call.caller_uri.trim_start_matches("sip:").to_owned()))
                    }
                    Side::B => call.route.subscriber().map(str::to_owned),
                };
                self.events.push_back(CallEvent::Held { call: id, holder });
            }
            (false, Some(holder)) if holder == offerer => {
                call.held_by = None;
                if std::mem::take(&mut call.music) {
                    if let Some(legs) = call.media.as_ref().map(|m| m.facing(holder.other() == Side::A)) {
                        self.media_request(id, MediaRequest::StopPlay { legs });
                    }
                }
            }
            _ => {}
        }
    }

    /// Routing's state of call `id`, for [`routing::next`](crate::routing::next).
    pub fn route_state(&mut self, id: u64) -> Option<&mut RouteState> {
        self.calls.get_mut(&id).map(|c| &mut c.route)
    }

    /// The media plane answered call `id`'s request.
    pub fn handle_media_reply(&mut self, id: u64, reply: MediaReply, now: Now) {
        self.clock = Some(now);
        match reply {
            MediaReply::Allocated(result) => self.on_allocated(id, result, now),
            MediaReply::Offered(result) => self.on_offered(id, result, now),
            MediaReply::Answered(result) => self.on_answered(id, result, now),
            MediaReply::Joined(result) => self.on_joined(id, result, now),
            MediaReply::Conferenced(result) => self.on_conferenced(id, result, now),
            MediaReply::Extended(result) => self.on_extended(id, result, now),
        }
    }

    /// A request inside a dialog (To tag present), other than ACK and CANCEL.
    pub fn handle_in_dialog(&mut self, key: TransactionKey, request: Request, now: Now) {
        self.clock = Some(now);
        let Some(&(id, side)) = call_id(&request.headers).and_then(|c| self.by_call_id.get(c)) else {
            self.stats.no_dialog += 1;
            self.reply(&key, &request, 481, now);
            return;
        };
        let Some(call) = self.calls.get_mut(&id) else {
            self.reply(&key, &request, 481, now);
            return;
        };
        if call_id(&request.headers).is_some_and(|c| call.replaced.iter().any(|d| d.call_id == c)) {
            // A transferor whose place the target took: its BYE ends only its own dialog.
            let status = if request.method == Method::Bye { 200 } else { 481 };
            self.reply(&key, &request, status, now);
            return;
        }
        let early_update = request.method == Method::Update && self.early_update_allowed(id, side);
        let Some(call) = self.calls.get_mut(&id) else { return };
        if side == Side::B {
            let fork = call_id(&request.headers).and_then(|c| call.forks.iter().position(|f| f.dialog.call_id == c));
            if fork.is_some() && fork != call.winner && !(early_update && fork == call.early_from) {
                // A fork that has not (or not first) answered: its BYE ends it, nothing else
                // is relayed from it.
                let answered_target = call.transfer.as_ref().is_some_and(|t| t.answered.is_some() && t.answered == fork);
                let reinviting = call.reinvite_pending;
                let ringing = fork.and_then(|f| call.forks.get(f)).is_some_and(|f| f.state == ForkState::Ringing);
                let status = match request.method {
                    Method::Bye => 200,
                    // Its early dialog exists; the offer just cannot be taken yet (RFC 3311 §5.2).
                    Method::Update if ringing => 491,
                    _ => 481,
                };
                self.reply(&key, &request, status, now);
                if let (Method::Bye, Some(fork)) = (&request.method, fork) {
                    if answered_target && reinviting {
                        // The transfer's target hung up while the transferee is being re-INVITEd
                        // towards it: nobody is left to join; the call ends.
                        self.end_both(id, now);
                    } else if answered_target {
                        // The transfer's target hung up before it was joined.
                        self.transfer_failed(id, 480, now);
                    } else {
                        self.fork_final(id, fork, 480, None, now);
                    }
                }
                return;
            }
        }
        let Some(call) = self.calls.get_mut(&id) else { return };
        if let Err(DialogError::CSeqOutOfOrder { .. }) = call.live_dialog_mut(side).receive(&request) {
            // RFC 3261 §12.2.2.
            self.stats.cseq_out_of_order += 1;
            self.reply(&key, &request, 500, now);
            return;
        }
        let established = matches!(call.state, State::Answered | State::Confirmed);
        let reinvite_pending = call.reinvite_pending;
        let in_room = self.calls.get(&id).is_some_and(|c| c.room_sides[side as usize]);
        if in_room && request.method == Method::Bye {
            // A party of a conference room leaves it; the others stay.
            self.reply(&key, &request, 200, now);
            self.leave_room(id, side, now);
            return;
        }
        let nobody_there = self.calls.get(&id).is_some_and(|c| c.dialog(side.other()).peer.addr.ip().is_unspecified());
        if request.method != Method::Bye && (in_room || nobody_there || self.calls.get(&id).is_some_and(|c| c.parked.is_some())) {
            // Nobody on the other side to relay it to: a service call's first party alone, a
            // parked party.
            self.ivr_in_dialog(&key, &request, now);
            return;
        }
        match request.method {
            Method::Bye => {
                self.reply(&key, &request, 200, now);
                let transferor_leaves = self.calls.get_mut(&id).and_then(|c| c.transfer.as_mut()).filter(|t| t.transferor == side);
                if let Some(t) = transferor_leaves {
                    // The transferor hangs up after its REFER: the transferee waits for the target.
                    t.transferor_gone = true;
                    return;
                }
                if established {
                    self.stats.calls_completed += 1;
                    let mut ringing = false;
                    if let Some(call) = self.calls.get_mut(&id) {
                        call.cause = "completed";
                        ringing = call.transfer.is_some() && call.forks.iter().any(Fork::outstanding);
                    }
                    self.send_in_dialog(id, side.other(), "BYE", "", None, Purpose::Bye, now);
                    if ringing {
                        // A transfer's (or a service call's) target still rings: cancelled, and
                        // the call kept until it answers the CANCEL (a 200 that crosses it is
                        // ACKed and hung up). The transfer is over: its forks end the call.
                        if let Some(call) = self.calls.get_mut(&id) {
                            call.transfer = None;
                        }
                        self.abandon(id, now);
                    } else {
                        self.finish(id);
                    }
                } else if side == Side::A {
                    // The first party of an originated call hung up while the second rang.
                    if let Some(call) = self.calls.get_mut(&id) {
                        call.cause = "cancelled";
                        call.status = 487;
                    }
                    self.stats.calls_cancelled += 1;
                    self.abandon(id, now);
                }
            }
            Method::PRack => self.on_prack(id, side, key, request, now),
            // An offer in the early dialog (RFC 3311 §5.1), once its first exchange is complete.
            Method::Update if !established && early_update => self.relay(id, side, key, request, now),
            _ if !established => self.reply(&key, &request, 491, now),
            Method::Invite if reinvite_pending => self.reply(&key, &request, 491, now),
            Method::Refer => self.on_refer(id, side, key, request, now),
            _ => self.relay(id, side, key, request, now),
        }
    }

    /// The caller cancelled its INVITE `invite` (the server answered the CANCEL, and the INVITE
    /// had no final response yet).
    pub fn handle_cancel(&mut self, invite: &TransactionKey, now: Now) {
        self.clock = Some(now);
        let Some(&id) = self.by_invite.get(invite) else { return };
        let Some(call) = self.calls.get(&id) else { return };
        if call.state == State::Answered && call.status == 0 && call.rel.waiting_for_prack() {
            // The callee answered, but its 2xx waits for the PRACK of our reliable 183: the
            // caller has no final response yet and may still cancel (the callee is hung up).
            let (key, request) = (call.invite_a_key.clone(), call.invite_a.clone());
            if let Some(call) = self.calls.get_mut(&id) {
                call.cause = "cancelled";
                call.forwards.clear();
            }
            self.reply(&key, &request, 487, now);
            self.stats.calls_cancelled += 1;
            self.hang_up_winner(id, None);
            self.finish(id);
            return;
        }
        if !matches!(call.state, State::Allocating | State::Calling) {
            return;
        }
        let (key, request) = (call.invite_a_key.clone(), call.invite_a.clone());
        self.reply(&key, &request, 487, now);
        self.stats.calls_cancelled += 1;
        self.abandon(id, now);
    }

    /// An ACK (to a 2xx: it has no transaction).
    pub fn handle_ack(&mut self, request: &Request, now: Now) {
        self.clock = Some(now);
        let Some(&(id, side)) = call_id(&request.headers).and_then(|c| self.by_call_id.get(c)) else { return };
        let Some(call) = self.calls.get_mut(&id) else { return };
        call.retransmit.retain(|r| r.side != side);
        if self.reoffer_ack_waits(id, side) {
            self.reoffer_acked(id, request, now);
            return;
        }
        let Some(call) = self.calls.get_mut(&id) else { return };
        if side != Side::A || call.state != State::Answered {
            return;
        }
        call.state = State::Confirmed;
        if !call.delayed {
            return;
        }
        // Delayed offer: this ACK carries the caller's answer, for the callee's ACK. After it the
        // call negotiates like any other (re-INVITEs, transfers).
        call.delayed = false;
        if is_sdp(&request.headers, &request.body) {
            call.ack_answer_pending = true;
            let answer = MediaRequest::Answer { legs: call.offer_legs.clone(), sdp: String::from_utf8_lossy(&request.body).into_owned() };
            self.media_request(id, answer);
        } else {
            tracing::info!("a delayed-offer ACK without the answer: the call ends");
            self.end_both(id, now);
        }
    }

    /// A response to one of our client transactions.
    pub fn handle_response(&mut self, key: &TransactionKey, response: Response, now: Now) {
        self.clock = Some(now);
        let Some((id, purpose)) = self.clients.get(key).cloned() else { return };
        if !self.calls.contains_key(&id) {
            // The call is over.
            return;
        }
        match purpose {
            Purpose::Invite { fork } => self.on_invite_response(id, fork, response, now),
            Purpose::Relay { origin, from, request, offer } => self.on_relay_response(id, &origin, from, &request, offer, response, now),
            Purpose::Renegotiate => self.renegotiated(id, response, now),
            Purpose::Resume { side } => self.resume_answered(id, side, response, now),
            Purpose::Cancel | Purpose::Bye | Purpose::Prack => {}
        }
    }

    /// A response that matched no transaction: a 2xx retransmission after our INVITE
    /// transaction ended gets the ACK again.
    pub fn handle_stray_response(&mut self, response: &Response) {
        if !(200..300).contains(&response.status_code.code()) {
            return;
        }
        let Some(call_id) = call_id(&response.headers) else { return };
        let Some(&(id, Side::B)) = self.by_call_id.get(call_id) else { return };
        let Some(call) = self.calls.get(&id) else { return };
        if let Some(fork) = call.forks.iter().find(|f| f.dialog.call_id == call_id) {
            if let Some(ack) = fork.ack.clone() {
                self.sip.push_back(SipOut::Transmit(Outgoing { destination: fork.dialog.peer, payload: ack, retransmission: true }));
            }
        }
    }

    /// A transaction timed out, failed to send, or (client) could not start.
    pub fn handle_transaction_failed(&mut self, key: &TransactionKey, role: Role, now: Now) {
        self.clock = Some(now);
        if role != Role::Client {
            return;
        }
        // Failed is final: a client transaction that could not even start has no Terminated
        // to come, so its entry goes now.
        let Some((id, purpose)) = self.clients.remove(key) else { return };
        match purpose {
            Purpose::Invite { fork } => self.fork_final(id, fork, 408, None, now),
            Purpose::Relay { origin, request, .. } => {
                if request.method == Method::Invite {
                    if let Some(call) = self.calls.get_mut(&id) {
                        call.reinvite_pending = false;
                    }
                    self.reoffer_clear(id);
                }
                self.reply(&origin, &request, 408, now);
            }
            Purpose::Resume { .. } => {
                if let Some(call) = self.calls.get_mut(&id) {
                    call.reinvite_pending = false;
                }
                self.resumed(id);
            }
            Purpose::Renegotiate => {
                if let Some(call) = self.calls.get_mut(&id) {
                    call.reinvite_pending = false;
                }
                self.transfer_failed(id, 408, now);
            }
            Purpose::Cancel | Purpose::Bye | Purpose::Prack => {}
        }
    }

    /// A transaction ended.
    pub fn handle_transaction_terminated(&mut self, key: &TransactionKey, role: Role) {
        if role == Role::Client {
            self.clients.remove(key);
        }
    }

    /// Runs the call timers due at `now`: ring (no answer: 408), 2xx retransmission, no ACK.
    pub fn handle_timeout(&mut self, now: Now) {
        self.clock = Some(now);
        let t2 = self.timers.t2;
        let mut no_answer = Vec::new();
        let mut no_ack = Vec::new();
        let mut parked_out = Vec::new();
        let due = self.due(now.instant);
        for &id in &due {
            self.limit_due(id, now);
            self.resume_due(id, now);
            self.announcement_due(id, now);
            self.reliable_due(id, now);
        }
        for id in due {
            let Some(call) = self.calls.get_mut(&id) else { continue };
            if call.stage_deadline.is_some_and(|d| d <= now.instant) {
                call.stage_deadline = None;
                no_answer.push(id);
            }
            let (peer_a, peer_b) = (call.a.peer, call.b.peer);
            let mut unacknowledged = false;
            call.retransmit.retain_mut(|r| {
                if r.next > now.instant {
                    return true;
                }
                if now.instant >= r.until {
                    unacknowledged = true;
                    return false;
                }
                let peer = if r.side == Side::A { peer_a } else { peer_b };
                self.sip.push_back(SipOut::Transmit(Outgoing { destination: peer, payload: r.payload.clone(), retransmission: true }));
                r.interval = (r.interval * 2).min(t2);
                r.next = now.instant + r.interval;
                self.deadlines.push(Reverse((r.next, id)));
                true
            });
            if unacknowledged {
                no_ack.push(id);
            }
            if call.parked.as_ref().is_some_and(|p| p.until.is_some_and(|u| u <= now.instant)) {
                parked_out.push(id);
            }
        }
        for id in no_answer {
            let Some(call) = self.calls.get(&id) else { continue };
            if call.transfer.is_some() && call.stage_open {
                self.transfer_failed(id, 408, now);
                continue;
            }
            if !matches!(call.state, State::Calling | State::Originating) || !call.stage_open {
                continue;
            }
            self.cancel_forks(id, None);
            self.end_stage(id, Outcome::NoAnswer);
        }
        for id in parked_out {
            self.park_expired(id, now);
        }
        for id in no_ack {
            // RFC 3261 §13.3.1.4: no ACK for our 2xx within 64·T1: end the session on both sides.
            let Some(call) = self.calls.get(&id) else { continue };
            if matches!(call.state, State::Answered | State::Confirmed) {
                self.send_in_dialog(id, Side::A, "BYE", "", None, Purpose::Bye, now);
                self.send_in_dialog(id, Side::B, "BYE", "", None, Purpose::Bye, now);
                self.finish(id);
            }
        }
    }

    /// Next SIP output.
    #[must_use]
    pub fn poll_sip(&mut self) -> Option<SipOut> {
        self.sip.pop_front()
    }

    /// Next event for the server.
    #[must_use]
    pub fn poll_event(&mut self) -> Option<CallEvent> {
        self.events.pop_front()
    }

    /// Next media-plane request, with the call it belongs to.
    #[must_use]
    pub fn poll_media(&mut self) -> Option<(u64, MediaRequest)> {
        self.media.pop_front()
    }

    /// Earliest call timer.
    #[must_use]
    pub fn poll_timeout(&mut self) -> Option<Instant> {
        while let Some(&Reverse((at, id))) = self.deadlines.peek() {
            if self.calls.get(&id).is_some_and(|c| c.holds_deadline(at)) {
                return Some(at);
            }
            self.deadlines.pop();
        }
        None
    }

    /// Sends `response` through server transaction `key`. The final response to a call's own
    /// INVITE is its status; for an originated call there is no server transaction: the first
    /// party is told by ACK and BYE instead ([`tell_first_party`](Self::tell_first_party)).
    fn respond(&mut self, key: &TransactionKey, response: Response) {
        let status = response.status_code.code();
        let call = self.by_invite.get(key).or_else(|| self.originated.get(key)).copied();
        if let Some(call) = call.and_then(|id| self.calls.get_mut(&id)) {
            if status >= 200 && call.status == 0 {
                call.status = status;
            }
            if status >= 200 && call.invite_a_key == *key {
                call.rel.finished();
            }
        }
        if let Some(&id) = self.originated.get(key) {
            self.tell_first_party(id, response);
            return;
        }
        self.sip.push_back(SipOut::Respond(key.clone(), response));
    }

    /// Queues a [`CallUpdate`] of call `id`.
    fn update(&mut self, id: u64, kind: UpdateKind) {
        let unix_ms = self.clock.map_or(0, |n| n.wall.duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64));
        self.events.push_back(CallEvent::Update(CallUpdate { call: id, unix_ms, kind }));
    }

    /// A bodiless `status` response to `request` (To tag added for non-100).
    fn reply(&mut self, key: &TransactionKey, request: &Request, status: u16, _now: Now) {
        let response = if status == 100 {
            response_for(request, 100, None, None)
        } else {
            let tag = self.random.tag();
            response_for(request, status, None, Some(&tag))
        };
        self.respond(key, response);
    }

    fn media_request(&mut self, call: u64, request: MediaRequest) {
        if let MediaRequest::Release { legs } = &request {
            self.stats.media_releases += 1;
            if legs.is_empty() {
                // Its legs went already (a party that left a room): nothing to ask for.
                return;
            }
        }
        self.media.push_back((call, request));
    }

    fn schedule(&mut self, at: Instant, id: u64) {
        self.deadlines.push(Reverse((at, id)));
    }

    /// Calls with a timer due at `now`, each once.
    fn due(&mut self, now: Instant) -> Vec<u64> {
        let mut due = Vec::new();
        while let Some(&Reverse((at, id))) = self.deadlines.peek() {
            if at > now {
                break;
            }
            self.deadlines.pop();
            if !due.contains(&id) {
                due.push(id);
            }
        }
        due
    }

    /// Sends `request` to `peer` through a client transaction indexed for call `id`.
    fn send_client(&mut self, id: u64, request: Request, peer: Peer, purpose: Purpose) {
        match sip_core::transaction::TransactionKey::for_request(&request) {
            Ok(key) => {
                self.clients.insert(key, (id, purpose));
                self.sip.push_back(SipOut::Request(request, peer));
            }
            Err(e) => tracing::error!(error = %e, "a request of ours has no transaction key"),
        }
    }

    /// Sends a request in `side`'s dialog of call `id`.
    fn send_in_dialog(&mut self, id: u64, side: Side, method: &str, extra: &str, body: Option<(&str, &[u8])>, purpose: Purpose, _now: Now) {
        let branch = self.random.branch();
        let Some(call) = self.calls.get_mut(&id) else { return };
        let dialog = call.live_dialog_mut(side);
        if dialog.peer.addr.ip().is_unspecified() {
            // The side of a service call that nobody has joined yet.
            return;
        }
        let sent_by = self.config.advertise_for(dialog.peer.transport);
        match dialog.request(method, &sent_by, &branch, extra, body) {
            Ok(request) => {
                let peer = dialog.peer;
                self.send_client(id, request, peer, purpose);
            }
            Err(e) => tracing::error!(error = %e, "cannot build an in-dialog request"),
        }
    }

    /// The ACK for a 2xx from `side` to our INVITE with CSeq `cseq`, encoded.
    fn ack(&mut self, id: u64, side: Side, cseq: u32) -> Option<(Bytes, Peer)> {
        let branch = self.random.branch();
        let dialog = self.calls.get(&id)?.dialog(side);
        Self::encode_ack(&self.config, dialog, cseq, &branch, None)
    }

    fn encode_ack(config: &Config, dialog: &Dialog, cseq: u32, branch: &str, answer: Option<&str>) -> Option<(Bytes, Peer)> {
        let sent_by = config.advertise_for(dialog.peer.transport);
        match dialog.ack(cseq, &sent_by, branch, answer.map(|sdp| ("application/sdp", sdp.as_bytes()))) {
            Ok(ack) => Some((message::encode(&SipMessage::Request(ack)), dialog.peer)),
            Err(e) => {
                tracing::error!(error = %e, "cannot build an ACK");
                None
            }
        }
    }

    /// Ends an answered call on both sides: BYE to the caller, the callee ACKed (if it was not)
    /// and sent BYE.
    fn end_both(&mut self, id: u64, now: Now) {
        self.send_in_dialog(id, Side::A, "BYE", "", None, Purpose::Bye, now);
        self.hang_up_winner(id, None);
        self.finish(id);
    }

    /// The caller will not get this call: cancel every fork still ringing, release media now,
    /// keep the call until every fork has its final response.
    fn abandon(&mut self, id: u64, _now: Now) {
        let Some(call) = self.calls.get_mut(&id) else { return };
        call.state = State::Cancelled;
        call.stage_open = false;
        call.stage_deadline = None;
        let allocation = call.media.take();
        if let Some(allocation) = allocation {
            self.media_request(id, allocation.release());
        }
        self.cancel_forks(id, None);
        self.settle(id);
    }

    /// A call the caller no longer waits for ends once no fork is outstanding.
    fn settle(&mut self, id: u64) {
        let Some(call) = self.calls.get(&id) else { return };
        if call.state == State::Cancelled && !call.forks.iter().any(Fork::outstanding) {
            self.finish(id);
        }
    }

    /// Removes call `id`, releasing its media (once).
    fn finish(&mut self, id: u64) {
        // A fork still ringing (a transfer's target) is cancelled, not left ringing; one that
        // answered a transfer that did not complete is hung up.
        self.cancel_forks(id, None);
        if let Some(fork) = self.calls.get(&id).and_then(|c| c.transfer.as_ref()).and_then(|t| t.answered) {
            self.send_in_fork(id, fork, "BYE", Purpose::Bye);
        }
        // A caller whose INVITE has no final response yet (its 2xx was waiting for the media
        // plane) gets one: its transaction must end.
        if let Some(call) = self.calls.get(&id).filter(|c| !c.originated && c.status == 0) {
            let (key, invite) = (call.invite_a_key.clone(), call.invite_a.clone());
            let tag = call.a.local_tag().to_owned();
            self.respond(&key, response_for(&invite, 487, None, Some(&tag)));
        }
        if self.calls.get(&id).is_some_and(|c| matches!(c.room_op, Some(conference::RoomOp::Referred { .. }))) {
            // The referred party left before it was in the room: the transferor is told.
            self.notify_replaced_transferor(id, "SIP/2.0 487 Request Terminated");
        }
        let Some(mut call) = self.calls.remove(&id) else { return };
        let now = self.clock.unwrap_or(call.started);
        // A service call that never joined a second party: nobody talked to anybody (the first
        // party's own time is in its record).
        let talked = call.answered.filter(|_| !(call.ivr && call.winner.is_none()));
        let duration_ms = talked.map_or(0, |a| now.instant.saturating_duration_since(a.instant).as_millis() as u64);
        let status = if call.answered.is_some() {
            200
        } else if call.status == 0 {
            500
        } else {
            call.status
        };
        let cause = match (call.cause, call.answered) {
            ("", Some(_)) => "completed",
            ("", None) => "failed",
            (cause, _) => cause,
        };
        self.originated.remove(&call.invite_a_key);
        if let Some(parked) = &call.parked {
            self.orbits.remove(&parked.orbit);
        }
        if let Some(joining) = call.joining.take() {
            // A party calling in to take this call: there is nothing left to take.
            self.refuse_joining(joining, 481);
        }
        self.leave_room_at_end(id, &mut call);
        if let Some(allocation) = call.media.take() {
            self.media_request(id, allocation.release());
        }
        // Every Call-ID the call answered to: both sides, every fork, every dialog a transfer
        // replaced (the original caller's, a consultation call's).
        let dialogs = [&call.a, &call.b].into_iter().chain(call.forks.iter().map(|f| &f.dialog)).chain(&call.replaced);
        for dialog in dialogs {
            if self.by_call_id.get(&dialog.call_id).is_some_and(|&(owner, _)| owner == id) {
                self.by_call_id.remove(&dialog.call_id);
            }
        }
        self.by_invite.remove(&call.invite_a_key);
        let record = call_record(id, &call, &now, status, cause, duration_ms);
        self.events.push_back(CallEvent::Ended(Box::new(record)));
        self.update(id, UpdateKind::Ended { status, cause, duration_ms });
    }
}

/// The detail record of call `id`, ended at `now`.
fn call_record(id: u64, call: &Call, now: &Now, status: u16, cause: &'static str, duration_ms: u64) -> CallRecord {
    let ms = |n: &Now| n.wall.duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
    // The fork that answered, else the last one tried (an unanswered call out through a trunk
    // is recorded as such, at no cost).
    let fork = call
        .winner
        .and_then(|w| call.forks.get(w))
        .or_else(|| call.forks.iter().enumerate().rev().find(|(i, _)| Some(*i) != call.a_fork).map(|(_, f)| f));
    let number = |f: &Fork| f.invite.uri.auth.as_ref().map(|a| a.user.clone()).unwrap_or_default();
    let trunk_number = fork.filter(|f| f.trunk).map(number);
    let first = call.a_fork.and_then(|i| call.forks.get(i)).filter(|f| call.originated && f.trunk);
    CallRecord {
        first_trunk_number: first.map(number),
        first_answered_ms: call.first_answered.as_ref().map_or(0, ms),
        call: id,
        sip_call_id: call.a.call_id.clone(),
        caller: call.caller_uri.clone(),
        callee: call.callee_uri.clone(),
        answered_by: call.winner.and_then(|w| call.forks.get(w)).map(|f| f.invite.uri.to_string()),
        trunk_number,
        started_ms: ms(&call.started),
        answered_ms: call.answered.as_ref().map_or(0, ms),
        ended_ms: ms(now),
        duration_ms,
        status,
        cause,
        originated: call.originated,
    }
}

fn content_type(headers: &rsip::Headers) -> Option<String> {
    headers.iter().find_map(|h| match h {
        Header::ContentType(c) => Some(c.value().trim().to_owned()),
        _ => None,
    })
}

fn is_sdp(headers: &rsip::Headers, body: &[u8]) -> bool {
    !body.is_empty() && content_type(headers).is_some_and(|c| c.to_ascii_lowercase().starts_with("application/sdp"))
}

/// Whether the request's `Accept` (if any) admits `application/sdp` (RFC 3261 §20.1: absent
/// means application/sdp).
fn accepts_sdp(headers: &rsip::Headers) -> bool {
    let mut values = headers
        .iter()
        .filter_map(|h| match h {
            Header::Accept(a) => Some(a.value().to_owned()),
            _ => None,
        })
        .peekable();
    if values.peek().is_none() {
        return true;
    }
    values.any(|v| {
        v.split(',').any(|range| {
            let media = range.split(';').next().unwrap_or_default().trim().to_ascii_lowercase();
            media.is_empty() || media == "application/sdp" || media == "application/*" || media == "*/*"
        })
    })
}

/// Our Contact towards `peer` (its transport).
pub(crate) fn our_contact(config: &Config, peer: &Peer) -> String {
    contact_as(config, peer, "b2bua")
}

/// Our Contact towards `peer`, with `user` as its user part (a conference room's name).
pub(crate) fn contact_as(config: &Config, peer: &Peer, user: &str) -> String {
    let advertise = config.advertise_for(peer.transport);
    match peer.transport {
        rsip::Transport::Tcp => format!("<sip:{user}@{advertise};transport=tcp>"),
        rsip::Transport::Tls => format!("<sip:{user}@{advertise};transport=tls>"),
        _ => format!("<sip:{user}@{advertise}>"),
    }
}

fn without_tag(value: &str) -> String {
    match value.rfind('>') {
        Some(end) => value.get(..=end).unwrap_or(value).to_owned(),
        None => value.split(';').next().unwrap_or(value).to_owned(),
    }
}
