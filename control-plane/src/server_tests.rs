//! Virtual-time tests of the B2BUA inside [`ControlPlane`]: the caller and callee are byte
//! strings, the media plane is a test double (allocations answered by hand; offers and answers
//! rewritten at once by the media plane's own SDP code, unless a test holds them), and time only
//! moves when a test moves it, so timers (2xx retransmission, no-answer) run in microseconds.

use std::sync::Arc;
use std::time::Duration;

use rsip::headers::UntypedHeader;
use rsip::{Header, SipMessage};

use crate::config::Config;
use std::collections::HashMap;

use media_engine::sdp::{self, Anchor, OfferState, Transport};

use crate::media::{Allocation, CodecPolicy, MediaError, MediaReply, MediaRequest, StreamLegs};
use crate::now::Now;
use crate::server::ControlPlane;
use crate::store::{MemoryStore, Store, StoredBinding, Subscriber};
use sip_core::message::{encode, parse, response_for, Framing};
use sip_core::transaction::Peer;

pub(crate) const CALLER: &str = "192.0.2.1:5060";
pub(crate) const CALLEE: &str = "192.0.2.2:5062";

pub(crate) struct World {
    pub(crate) core: ControlPlane,
    pub(crate) store: MemoryStore,
    pub(crate) now: Now,
    pub(crate) sent: Vec<(Peer, String)>,
    pub(crate) media: Vec<MediaRequest>,
    /// Offers and answers the media plane double has not answered yet (all of them while
    /// `hold_media` is set).
    held: Vec<(u64, MediaRequest)>,
    hold_media: bool,
    /// The call of the last Allocate.
    allocating: u64,
    /// The media plane double's pending offers, by their legs.
    offers: HashMap<Vec<(u64, u64)>, OfferState>,
    /// Allocations answered so far (each gets its own leg numbers).
    allocations: u64,
    /// The call of the last Join.
    joining: u64,
    /// The calls of the Conference requests not answered yet, in order; newcomers answered.
    pub(crate) conferencing: Vec<u64>,
    newcomers: u64,
}

/// The media plane double's address and the ports of its legs (caller side 11, callee side 12).
pub(crate) const MEDIA_IP: &str = "198.51.100.9";

fn port_of(leg: u64) -> Option<u16> {
    match leg {
        11 => Some(30000),
        12 => Some(30002),
        // Legs of joining parties.
        91..=99 => Some(31000 + 2 * leg as u16),
        _ => None,
    }
}

fn engine_policy(p: &CodecPolicy) -> (sdp::CodecPolicy, Transport) {
    let policy = sdp::CodecPolicy { strip: p.strip.clone(), mask: p.mask.clone(), transcode: p.transcode.clone(), keep: Vec::new() };
    (policy, Transport::from_protocol(&p.transport).expect("transport"))
}

fn peer(addr: &str) -> Peer {
    Peer::udp(addr.parse().expect("addr"))
}

pub(crate) fn offer(port: u16, direction: &str) -> String {
    format!("v=0\r\no=a 1 1 IN IP4 192.0.2.1\r\ns=-\r\nc=IN IP4 192.0.2.1\r\nt=0 0\r\nm=audio {port} RTP/AVP 0\r\na={direction}\r\n")
}

impl World {
    pub(crate) fn new() -> World {
        World::with_routes("")
    }

    fn with_routes(routes: &str) -> World {
        World::with_config(&format!("[auth]\nalgorithms = [\"MD5\"]\n{routes}"))
    }

    /// A world whose configuration ends with `rest` (sections after `[sip]`).
    pub(crate) fn with_config(rest: &str) -> World {
        let config = Config::parse(&format!(
            "[sip]\nlisten = [\"udp:192.0.2.100:5060\"]\ndomains = [\"sip.test\"]\ntrusted = [\"192.0.2.1\", \"192.0.2.2\"]\n\
             no_answer_timeout_s = 30\n{rest}"
        ))
        .expect("config");
        let mut core = ControlPlane::new(Arc::new(config), Some([7; 32]), [11; 32]).expect("core");
        let mut store = MemoryStore::default();
        store.add_subscriber(&Subscriber::with_password("bob", "sip.test", "sip.test", "pw")).expect("add");
        let now = Now::system();
        core.registrar_mut().restore(
            vec![StoredBinding {
                aor: "bob@sip.test".into(),
                contact: format!("sip:bob@{CALLEE}"),
                expires_unix: now.unix() + 3600,
                q_milli: 1000,
                call_id: "r".into(),
                cseq: 1,
                flow: format!("udp:{CALLEE}"),
                path: String::new(),
                instance: None,
                reg_id: 0,
            }],
            now.unix(),
        );
        World {
            core,
            store,
            now,
            sent: Vec::new(),
            media: Vec::new(),
            held: Vec::new(),
            hold_media: false,
            allocating: 0,
            offers: HashMap::new(),
            allocations: 0,
            joining: 0,
            conferencing: Vec::new(),
            newcomers: 0,
        }
    }

    pub(crate) fn pump(&mut self) {
        loop {
            while let Some(out) = self.core.poll_transmit() {
                self.sent.push((out.destination, String::from_utf8_lossy(&out.payload).into_owned()));
            }
            while let Some((call, request)) = self.core.poll_media() {
                match request {
                    MediaRequest::Offer { .. } | MediaRequest::Answer { .. } => self.held.push((call, request.clone())),
                    MediaRequest::Rejoin { ref legs, ref sdp, ref policy, .. } => {
                        self.held.push((call, MediaRequest::Offer { legs: legs.clone(), sdp: sdp.clone(), policy: policy.clone() }))
                    }
                    MediaRequest::Allocate { .. } => self.allocating = call,
                    MediaRequest::Join { .. } => self.joining = call,
                    MediaRequest::Conference { .. } => self.conferencing.push(call),
                    MediaRequest::Extend { .. } => self.joining = call,
                    MediaRequest::EndConference { .. } | MediaRequest::Unconference { .. } => {}
                    MediaRequest::Release { .. }
                    | MediaRequest::Play { .. }
                    | MediaRequest::Prompt { .. }
                    | MediaRequest::Tone { .. }
                    | MediaRequest::StopPlay { .. } => {}
                }
                self.media.push(request);
            }
            if self.hold_media || self.held.is_empty() {
                return;
            }
            self.release_media();
        }
    }

    /// Answers the held offers and answers, in order.
    fn release_media(&mut self) {
        for (call, request) in std::mem::take(&mut self.held) {
            let reply = self.negotiate(&request);
            self.core.handle_media_reply(call, reply, self.now, &mut self.store);
        }
    }

    /// What the media plane answers to an Offer or Answer.
    fn negotiate(&mut self, request: &MediaRequest) -> MediaReply {
        let anchor = |legs: &[(u64, u64)], offerer: bool| Anchor {
            ip: MEDIA_IP.parse().expect("ip"),
            ports: legs.iter().map(|(o, a)| port_of(if offerer { *o } else { *a })).collect(),
        };
        let refused = |e: sdp::SdpError| MediaError::NotAcceptable(e.to_string());
        match request {
            MediaRequest::Offer { legs, sdp: body, policy } => {
                let (policy, transport) = engine_policy(policy);
                let result = sdp::offer(body.as_bytes(), &policy, transport, &anchor(legs, false), &mut |b| b.fill(7)).map(|o| {
                    self.offers.insert(legs.clone(), o.state);
                    o.sdp
                });
                MediaReply::Offered(result.map_err(refused))
            }
            MediaRequest::Answer { legs, sdp: body } => {
                let Some(state) = self.offers.get(legs) else {
                    return MediaReply::Answered(Err(MediaError::NotAcceptable("no offer".into())));
                };
                MediaReply::Answered(sdp::answer(state, body.as_bytes(), &anchor(legs, true)).map(|a| a.sdp).map_err(refused))
            }
            other => panic!("not an offer or answer: {other:?}"),
        }
    }

    pub(crate) fn receive(&mut self, from: &str, text: &str) {
        self.receive_bytes(from, text.as_bytes());
    }

    pub(crate) fn receive_bytes(&mut self, from: &str, bytes: &[u8]) {
        self.core.handle_datagram(bytes, peer(from), self.now, &mut self.store);
        self.pump();
    }

    pub(crate) fn advance(&mut self, d: Duration) {
        let end = self.now.plus(d);
        while let Some(at) = self.core.poll_timeout() {
            if at > end.instant {
                break;
            }
            self.now = Now { instant: at, wall: end.wall };
            self.core.handle_timeout(self.now, &mut self.store);
            self.pump();
        }
        self.now = end;
    }

    /// Answers the Allocate: legs 11 and 12 for the first `m=` line, the offer rewritten by the
    /// media plane's SDP code.
    pub(crate) fn allocate(&mut self) {
        let Some(MediaRequest::Allocate { offer, callee_offers, active, policy, local, .. }) = self.media.last().cloned() else {
            panic!("no Allocate last: {:?}", self.media)
        };
        // Legs 11 and 12 for the first call, 21 and 22 for the second, …
        let base = 11 + 10 * self.allocations;
        self.allocations += 1;
        let streams: Vec<Option<StreamLegs>> =
            active.iter().enumerate().map(|(i, on)| (*on && i == 0).then_some(StreamLegs { leg_a: base, leg_b: base + 1 })).collect();
        let mut allocation = Allocation { streams, offer: String::new(), local_answer: None, group: "test".into() };
        let legs = allocation.legs(!callee_offers);
        match self.negotiate(&MediaRequest::Offer { legs: legs.clone(), sdp: offer, policy }) {
            MediaReply::Offered(Ok(sdp)) => allocation.offer = sdp,
            other => panic!("the offer was refused: {other:?}"),
        }
        if local {
            let sdp = crate::media::unaddressed_answer(&allocation.offer);
            match self.negotiate(&MediaRequest::Answer { legs, sdp }) {
                MediaReply::Answered(Ok(sdp)) => allocation.local_answer = Some(sdp),
                other => panic!("the local answer was refused: {other:?}"),
            }
        }
        self.core.handle_media_reply(self.allocating, MediaReply::Allocated(Ok(allocation)), self.now, &mut self.store);
        self.pump();
    }

    /// Answers the last Join as the media plane does: the joining party's offer answered on
    /// legs 91 (facing it) and 96 (deleted), the waiting caller's offer answered first if asked.
    pub(crate) fn join(&mut self) {
        let Some(MediaRequest::Join { offer, policy, with, answer_first, .. }) =
            self.media.iter().rev().find(|m| matches!(m, MediaRequest::Join { .. })).cloned()
        else {
            panic!("no Join: {:?}", self.media)
        };
        assert_eq!(with.len(), 1, "one stream in these tests");
        let legs = vec![(91, 96)];
        let far = match self.negotiate(&MediaRequest::Offer { legs: legs.clone(), sdp: offer, policy }) {
            MediaReply::Offered(Ok(sdp)) => sdp,
            other => panic!("the joining party's offer was refused: {other:?}"),
        };
        let answer = match self.negotiate(&MediaRequest::Answer { legs, sdp: crate::media::unaddressed_answer(&far) }) {
            MediaReply::Answered(Ok(sdp)) => sdp,
            other => panic!("{other:?}"),
        };
        let first_answer = answer_first.map(|(legs, sdp)| {
            match self.negotiate(&MediaRequest::Answer { legs, sdp: crate::media::unaddressed_answer(&sdp) }) {
                MediaReply::Answered(Ok(sdp)) => sdp,
                other => panic!("{other:?}"),
            }
        });
        let joined = crate::media::Joined { legs: vec![91], answer, first_answer };
        self.core.handle_media_reply(self.joining, MediaReply::Joined(Ok(joined)), self.now, &mut self.store);
        self.pump();
    }

    /// Answers the last Extend as the media plane does: leg 97 (one stream), and the offer made
    /// over (the remaining party's leg, 97) from its description.
    pub(crate) fn extend(&mut self) {
        let Some(MediaRequest::Extend { with, sdp, policy, .. }) =
            self.media.iter().rev().find(|m| matches!(m, MediaRequest::Extend { .. })).cloned()
        else {
            panic!("no Extend: {:?}", self.media)
        };
        let legs = vec![(with[0], 97)];
        let offer = match self.negotiate(&MediaRequest::Offer { legs, sdp, policy }) {
            MediaReply::Offered(Ok(sdp)) => sdp,
            other => panic!("{other:?}"),
        };
        self.core.handle_media_reply(self.joining, MediaReply::Extended(Ok((vec![97], offer))), self.now, &mut self.store);
        self.pump();
    }

    /// Answers the oldest Conference request not answered yet as the media plane does: the
    /// conference is `conference` (made now unless named), a newcomer's offer answered on leg
    /// 91, 92, … Returns the request.
    pub(crate) fn conference(&mut self, conference: u64) -> MediaRequest {
        assert!(!self.conferencing.is_empty(), "no Conference request: {:?}", self.media);
        let call = self.conferencing.remove(0);
        let position = self.media.iter().filter(|m| matches!(m, MediaRequest::Conference { .. })).count() - self.conferencing.len() - 1;
        let request = self.media.iter().filter(|m| matches!(m, MediaRequest::Conference { .. })).nth(position).cloned().expect("request");
        let MediaRequest::Conference { newcomer, .. } = &request else { unreachable!() };
        let newcomer = newcomer.clone().map(|n| {
            let leg = 91 + self.newcomers;
            self.newcomers += 1;
            let legs = vec![(leg, leg + 5)];
            let far = match self.negotiate(&MediaRequest::Offer { legs: legs.clone(), sdp: n.offer, policy: n.policy }) {
                MediaReply::Offered(Ok(sdp)) => sdp,
                other => panic!("the newcomer's offer was refused: {other:?}"),
            };
            match self.negotiate(&MediaRequest::Answer { legs, sdp: crate::media::unaddressed_answer(&far) }) {
                MediaReply::Answered(Ok(answer)) => (vec![leg], answer),
                other => panic!("{other:?}"),
            }
        });
        let done = crate::media::Conferenced { conference, newcomer };
        self.core.handle_media_reply(call, MediaReply::Conferenced(Ok(done)), self.now, &mut self.store);
        self.pump();
        request
    }

    /// Messages sent to `to` whose first line starts with `start`, consumed.
    pub(crate) fn take(&mut self, to: &str, start: &str) -> Vec<String> {
        let to = peer(to);
        let (hit, rest): (Vec<_>, Vec<_>) = self.sent.drain(..).partition(|(p, m)| *p == to && m.starts_with(start));
        self.sent = rest;
        hit.into_iter().map(|(_, m)| m).collect()
    }

    pub(crate) fn take_one(&mut self, to: &str, start: &str) -> String {
        let mut hits = self.take(to, start);
        assert_eq!(hits.len(), 1, "expected one {start:?} to {to}, got {hits:?}; other traffic {:?}", self.sent);
        hits.remove(0)
    }

    /// Adds subscriber `user` (password `pw`), registered at `contact` if given.
    pub(crate) fn subscriber(&mut self, user: &str, contact: Option<&str>) {
        self.store.add_subscriber(&Subscriber::with_password(user, "sip.test", "sip.test", "pw")).expect("add");
        if let Some(addr) = contact {
            self.add_contact_for(user, addr, 1000);
        }
    }

    /// Sets `user`'s call settings.
    pub(crate) fn settings(&mut self, user: &str, pairs: &[(&str, &str)]) {
        let mut settings = self.store.settings(user, "sip.test").expect("store").expect("subscriber");
        for (key, value) in pairs {
            settings.set(key, value).expect("setting");
        }
        assert!(self.store.set_settings(user, "sip.test", &settings).expect("store"));
    }

    /// Registers another contact for bob at `addr` with q-value `q_milli`/1000.
    fn add_contact(&mut self, addr: &str, q_milli: u16) {
        self.add_contact_for("bob", addr, q_milli);
    }

    pub(crate) fn add_contact_for(&mut self, user: &str, addr: &str, q_milli: u16) {
        let now = self.now.unix();
        self.core.registrar_mut().restore(
            vec![StoredBinding {
                aor: format!("{user}@sip.test"),
                contact: format!("sip:{user}@{addr}"),
                expires_unix: now + 3600,
                q_milli,
                call_id: format!("r{addr}"),
                cseq: 1,
                flow: format!("udp:{addr}"),
                path: String::new(),
                instance: None,
                reg_id: 0,
            }],
            now,
        );
    }

    /// Like `take_one`, for a message that timers may have sent again: every copy identical.
    pub(crate) fn take_sent(&mut self, to: &str, start: &str) -> String {
        let hits = self.take(to, start);
        assert!(!hits.is_empty() && hits.iter().all(|h| *h == hits[0]), "expected {start:?} to {to} (copies allowed), got {hits:?}");
        hits[0].clone()
    }

    pub(crate) fn releases(&self) -> usize {
        self.media.iter().filter(|m| matches!(m, MediaRequest::Release { .. })).count()
    }
}

pub(crate) fn invite(call_id: &str, body: &str) -> String {
    format!(
        "INVITE sip:bob@sip.test SIP/2.0\r\nVia: SIP/2.0/UDP {CALLER};branch=z9hG4bK{call_id}i\r\nMax-Forwards: 70\r\n\
         From: \"Alice\" <sip:alice@sip.test>;tag=a1\r\nTo: <sip:bob@sip.test>\r\nCall-ID: {call_id}\r\nCSeq: 1 INVITE\r\n\
         Contact: <sip:alice@{CALLER}>\r\nP-Asserted-Identity: <sip:+4930123@sip.test>\r\n\
         Content-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
}

/// The caller's CANCEL of `invite(call_id, …)`: same branch, CSeq number and headers, no body.
fn cancel(call_id: &str) -> String {
    let head = invite(call_id, "").replace("INVITE sip:bob", "CANCEL sip:bob").replace("CSeq: 1 INVITE", "CSeq: 1 CANCEL");
    head.split("Content-Type").next().expect("head").to_owned() + "Content-Length: 0\r\n\r\n"
}

pub(crate) fn in_dialog(method: &str, call_id: &str, cseq: u32, to_tag: &str, body: Option<&str>) -> String {
    let (ctype, body) = match body {
        Some(b) => ("Content-Type: application/sdp\r\n", b),
        None => ("", ""),
    };
    format!(
        "{method} sip:b2bua@192.0.2.100:5060 SIP/2.0\r\nVia: SIP/2.0/UDP {CALLER};branch=z9hG4bK{call_id}{method}{cseq}\r\n\
         Max-Forwards: 70\r\nFrom: \"Alice\" <sip:alice@sip.test>;tag=a1\r\nTo: <sip:bob@sip.test>;tag={to_tag}\r\n\
         Call-ID: {call_id}\r\nCSeq: {cseq} {method}\r\n{ctype}Content-Length: {}\r\n\r\n{body}",
        body.len()
    )
}

/// The callee's response to a request we sent it.
pub(crate) fn answer(request: &str, status: u16, body: Option<&str>) -> String {
    answer_at(CALLEE, request, status, body)
}

/// The response of the callee at `contact` to a request we sent it.
pub(crate) fn answer_at(contact: &str, request: &str, status: u16, body: Option<&str>) -> String {
    let Ok(SipMessage::Request(request)) = parse(request.as_bytes(), Framing::Datagram) else { panic!("not a request") };
    let mut response = response_for(&request, status, None, Some("b1"));
    response.headers.push(Header::Contact(rsip::headers::Contact::new(format!("<sip:bob@{contact}>"))));
    if let Some(body) = body {
        response.headers.push(Header::ContentType(rsip::headers::ContentType::new("application/sdp")));
        response.body = body.as_bytes().to_vec();
    }
    String::from_utf8_lossy(&encode(&SipMessage::Response(response))).into_owned()
}

pub(crate) fn to_tag(response: &str) -> String {
    response.lines().find(|l| l.starts_with("To:")).and_then(|l| l.split(";tag=").nth(1)).expect("To tag").trim().to_owned()
}

/// Runs a call up to the caller's 200; returns the INVITE the callee got and the 200 A got.
pub(crate) fn answered_call(w: &mut World) -> (String, String) {
    w.receive(CALLER, &invite("call1", &offer(4000, "sendrecv")));
    assert_eq!(w.take(CALLER, "SIP/2.0 100").len(), 1);
    w.allocate();
    let invite_b = w.take_one(CALLEE, "INVITE sip:bob@192.0.2.2:5062");
    w.receive(CALLEE, &answer(&invite_b, 180, None));
    w.take_one(CALLER, "SIP/2.0 180");
    w.receive(CALLEE, &answer(&invite_b, 200, Some(&offer(5000, "sendrecv").replace("192.0.2.1", "192.0.2.2"))));
    w.take_one(CALLEE, "ACK sip:bob@192.0.2.2:5062");
    let ok = w.take_one(CALLER, "SIP/2.0 200");
    (invite_b, ok)
}

/// A call answered and ACKed: the INVITE the callee got, our To tag towards the caller, and
/// the callee's tag.
pub(crate) fn confirmed_call(w: &mut World) -> (String, String, String) {
    let (invite_b, ok) = answered_call(w);
    let tag = to_tag(&ok);
    w.receive(CALLER, &in_dialog("ACK", "call1", 1, &tag, None).replace("call1ACK1", "ack1"));
    let b_tag = to_tag(&answer(&invite_b, 200, None));
    (invite_b, tag, b_tag)
}

#[test]
fn answered_call_is_anchored_on_both_sides_and_2xx_is_retransmitted_until_ack() {
    let mut w = World::new();
    let (invite_b, ok) = answered_call(&mut w);
    assert!(invite_b.contains("c=IN IP4 198.51.100.9") && invite_b.contains("m=audio 30002 "), "{invite_b}");
    assert!(invite_b.contains("From: \"Alice\" <sip:alice@sip.test>;tag="), "display name passes through");
    assert!(invite_b.contains("P-Asserted-Identity: <sip:+4930123@sip.test>"), "PAI passes through");
    assert!(!invite_b.contains("Call-ID: call1"), "the callee's dialog has its own Call-ID");
    assert!(invite_b.contains("Max-Forwards: 69\r\n"), "one hop spent: {invite_b}");
    assert!(ok.contains("c=IN IP4 198.51.100.9") && ok.contains("m=audio 30000 "), "{ok}");
    assert!(
        w.media.iter().any(|m| matches!(m, MediaRequest::Answer { legs, sdp } if legs == &[(11, 12)] && sdp.contains("192.0.2.2"))),
        "the callee's answer went to the media plane: {:?}",
        w.media
    );
    // No ACK yet: the 200 goes again at T1, 2·T1, …
    w.advance(Duration::from_millis(1600));
    assert_eq!(w.take(CALLER, "SIP/2.0 200").len(), 2, "retransmitted at T1 and 3·T1 (0.5 s, 1.5 s)");
    let tag = to_tag(&ok);
    w.receive(CALLER, &in_dialog("ACK", "call1", 1, &tag, None).replace("branch=z9hG4bKcall1ACK1", "branch=z9hG4bKack"));
    w.advance(Duration::from_secs(10));
    assert!(w.take(CALLER, "SIP/2.0 200").is_empty(), "the ACK stops retransmissions");

    w.receive(CALLER, &in_dialog("BYE", "call1", 2, &tag, None));
    w.take_one(CALLER, "SIP/2.0 200");
    w.take_one(CALLEE, "BYE sip:bob@192.0.2.2:5062");
    assert_eq!(w.releases(), 1);
    assert!(w.media.contains(&MediaRequest::Release { legs: vec![11, 12] }));
    assert_eq!(w.core.active_calls(), 0);
    let stats = w.core.stats();
    assert_eq!((stats.calls.calls_answered, stats.calls.calls_completed, stats.calls.media_releases), (1, 1, 1));
}

#[test]
fn hold_reinvite_updates_the_callers_leg_and_is_relayed_with_anchored_sdp() {
    let mut w = World::new();
    let (_, tag, _) = confirmed_call(&mut w);
    w.receive(CALLER, &in_dialog("INVITE", "call1", 2, &tag, Some(&offer(4000, "sendonly"))));
    assert!(
        w.media.iter().any(|m| matches!(m, MediaRequest::Offer { legs, sdp, .. } if legs == &[(11, 12)] && sdp.contains("a=sendonly"))),
        "the caller's new offer went to the media plane: {:?}",
        w.media
    );
    let reinvite = w.take_one(CALLEE, "INVITE sip:bob@192.0.2.2:5062");
    assert!(reinvite.contains("a=sendonly") && reinvite.contains("m=audio 30002 "), "{reinvite}");
    assert!(reinvite.contains("CSeq: 2 INVITE"), "{reinvite}");
    w.receive(CALLEE, &answer(&reinvite, 200, Some(&offer(5000, "recvonly").replace("192.0.2.1", "192.0.2.2"))));
    w.take_one(CALLEE, "ACK");
    let relayed = w.take_one(CALLER, "SIP/2.0 200");
    assert!(relayed.contains("a=recvonly") && relayed.contains("m=audio 30000 "), "{relayed}");
}

#[test]
fn cancel_while_the_media_plane_is_allocating_releases_the_late_allocation() {
    let mut w = World::new();
    w.receive(CALLER, &invite("call2", &offer(4000, "sendrecv")));
    w.receive(CALLER, &cancel("call2"));
    w.take_one(CALLER, "SIP/2.0 487");
    w.allocate();
    assert!(w.take(CALLEE, "INVITE").is_empty(), "the callee is never called");
    assert_eq!(w.releases(), 1);
    assert_eq!(w.core.active_calls(), 0);
}

#[test]
fn callee_answering_after_cancel_is_acked_and_hung_up() {
    let mut w = World::new();
    w.receive(CALLER, &invite("call3", &offer(4000, "sendrecv")));
    w.allocate();
    let invite_b = w.take_one(CALLEE, "INVITE");
    w.receive(CALLEE, &answer(&invite_b, 180, None));
    w.receive(CALLER, &cancel("call3"));
    w.take_one(CALLER, "SIP/2.0 487");
    w.take_one(CALLEE, "CANCEL");
    assert_eq!(w.releases(), 1, "media released as soon as the caller gave up");
    w.receive(CALLEE, &answer(&invite_b, 200, Some(&offer(5000, "sendrecv"))));
    w.take_one(CALLEE, "ACK");
    w.take_one(CALLEE, "BYE");
    assert_eq!(w.releases(), 1, "released exactly once");
    assert_eq!(w.core.active_calls(), 0);
}

#[test]
fn unanswered_callee_is_cancelled_after_the_no_answer_timeout_and_caller_gets_408() {
    let mut w = World::new();
    w.receive(CALLER, &invite("call4", &offer(4000, "sendrecv")));
    w.allocate();
    let invite_b = w.take_one(CALLEE, "INVITE");
    w.receive(CALLEE, &answer(&invite_b, 180, None));
    w.advance(Duration::from_secs(29));
    assert!(w.take(CALLEE, "CANCEL").is_empty());
    w.advance(Duration::from_secs(2));
    assert!(!w.take(CALLER, "SIP/2.0 408").is_empty(), "408 to the caller (retransmitted until its ACK)");
    assert!(!w.take(CALLEE, "CANCEL").is_empty(), "CANCEL to the callee");
    w.receive(CALLEE, &answer(&invite_b, 487, None));
    assert_eq!(w.core.active_calls(), 0);
    assert_eq!(w.releases(), 1);
}

#[test]
fn callee_that_never_responds_gets_the_caller_a_408_and_is_dropped_after_timer_b() {
    let mut w = World::new();
    w.receive(CALLER, &invite("call5", &offer(4000, "sendrecv")));
    w.allocate();
    w.advance(Duration::from_secs(33));
    assert!(!w.take(CALLER, "SIP/2.0 408").is_empty(), "408 after Timer B (64·T1)");
    assert_eq!(w.core.active_calls(), 0);
    assert_eq!(w.releases(), 1);
}

#[test]
fn failed_allocation_answers_503_and_untrusted_callers_are_challenged() {
    let mut w = World::new();
    w.receive(CALLER, &invite("call6", &offer(4000, "sendrecv")));
    w.core.handle_media_reply(0, MediaReply::Allocated(Err(MediaError::Unavailable("no ports".into()))), w.now, &mut w.store);
    w.pump();
    w.take_one(CALLER, "SIP/2.0 503");
    assert_eq!(w.core.active_calls(), 0);
    assert_eq!(w.releases(), 0, "nothing was allocated");
    let stats = w.core.stats();
    assert_eq!((stats.calls.media_allocations, stats.calls.media_allocation_failures), (0, 1), "a failure is not an allocation");

    let untrusted = invite("call7", &offer(4000, "sendrecv")).replace(CALLER, "192.0.2.50:5060");
    w.receive("192.0.2.50:5060", &untrusted);
    let challenge = w.take_one("192.0.2.50:5060", "SIP/2.0 407");
    assert!(challenge.contains("Proxy-Authenticate: Digest realm=\"sip.test\""), "{challenge}");
}

#[test]
fn in_dialog_request_for_an_unknown_dialog_gets_481() {
    let mut w = World::new();
    w.receive(CALLER, &in_dialog("BYE", "nosuchcall", 2, "x", None));
    w.take_one(CALLER, "SIP/2.0 481");
}

#[test]
fn dialled_prefix_routes_to_the_trunk_with_caller_id_stripped() {
    let mut w = World::with_routes(
        "[[route]]\nprefix = \"00\"\ndestination = \"sip:192.0.2.30:5070\"\nstrip = 2\nprepend = \"+\"\ncaller_id = \"strip\"\n",
    );
    w.receive(CALLER, &invite("call8", &offer(4000, "sendrecv")).replace("sip:bob@sip.test SIP/2.0", "sip:0049301234@sip.test SIP/2.0"));
    w.allocate();
    let trunk = w.take_one("192.0.2.30:5070", "INVITE sip:+49301234@192.0.2.30:5070 SIP/2.0");
    assert!(trunk.contains("From: \"Anonymous\" <sip:anonymous@anonymous.invalid>;tag="), "{trunk}");
    assert!(!trunk.contains("P-Asserted-Identity") && !trunk.contains("Alice"), "{trunk}");
}

#[test]
fn assert_policy_sets_p_asserted_identity_and_unrouted_numbers_get_404() {
    let mut w = World::with_routes("[[route]]\nprefix = \"9\"\ndestination = \"sip:192.0.2.31\"\ncaller_id = \"assert\"\n");
    w.receive(CALLER, &invite("call9", &offer(4000, "sendrecv")).replace("sip:bob@sip.test SIP/2.0", "sip:9123@sip.test SIP/2.0"));
    w.allocate();
    let trunk = w.take_one("192.0.2.31:5060", "INVITE sip:9123@192.0.2.31:5060");
    assert!(trunk.contains("P-Asserted-Identity: <sip:alice@sip.test>"), "trusted caller: its From is asserted; {trunk}");
    assert!(!trunk.contains("+4930123"), "the caller's own PAI is replaced");
    w.receive(CALLER, &invite("call10", &offer(4000, "sendrecv")).replace("sip:bob@sip.test SIP/2.0", "sip:555@sip.test SIP/2.0"));
    w.take_one(CALLER, "SIP/2.0 404");
}

// ---- digest authentication of REGISTER: what real phones need ----

const PHONE: &str = "192.0.2.7:5060";

fn register(cseq: u32, authorization: Option<&str>) -> String {
    let auth = authorization.map(|a| format!("Authorization: {a}\r\n")).unwrap_or_default();
    format!(
        "REGISTER sip:sip.test SIP/2.0\r\nVia: SIP/2.0/UDP {PHONE};branch=z9hG4bKreg{cseq}\r\nMax-Forwards: 70\r\n\
         From: <sip:bob@sip.test>;tag=r1\r\nTo: <sip:bob@sip.test>\r\nCall-ID: reg-1\r\nCSeq: {cseq} REGISTER\r\n\
         Contact: <sip:bob@{PHONE}>\r\nExpires: 600\r\n{auth}Content-Length: 0\r\n\r\n"
    )
}

/// The `WWW-Authenticate` values of a 401.
fn challenges_of(response: &str) -> Vec<sip_core::digest::Challenge> {
    response
        .lines()
        .filter_map(|l| l.strip_prefix("WWW-Authenticate: "))
        .map(|v| sip_core::digest::parse_challenge(v).expect("challenge parses"))
        .collect()
}

/// Bob's credentials (password `pw`) answering `challenge` with `algorithm` and nonce count `nc`.
fn bob_answers(challenge: &sip_core::digest::Challenge, algorithm: sip_core::digest::Algorithm, nc: u32) -> String {
    use sip_core::digest::{authorization, ha1};
    let mut challenge = challenge.clone();
    challenge.algorithm = algorithm;
    authorization(&challenge, "bob", &ha1(algorithm.hash(), "bob", "sip.test", "pw"), "REGISTER", "sip:sip.test", "c0ffee", nc)
}

#[test]
fn default_challenge_is_a_single_md5_digest_with_qop_auth() {
    use sip_core::digest::Algorithm;
    let mut w = World::with_config("");
    w.receive(PHONE, &register(1, None));
    let challenges = challenges_of(&w.take_one(PHONE, "SIP/2.0 401"));
    assert_eq!(challenges.len(), 1, "one challenge per response: {challenges:?}");
    assert_eq!(challenges[0].algorithm, Algorithm::Md5);
    assert!(challenges[0].qop_auth && !challenges[0].stale);
    w.receive(PHONE, &register(2, Some(&bob_answers(&challenges[0], Algorithm::Md5, 1))));
    w.take_one(PHONE, "SIP/2.0 200");
    assert_eq!(w.core.stats().registrations, 1);
}

#[test]
fn replayed_nonce_count_is_rechallenged_and_a_higher_one_passes() {
    use sip_core::digest::Algorithm;
    let mut w = World::with_config("");
    w.receive(PHONE, &register(1, None));
    let challenge = challenges_of(&w.take_one(PHONE, "SIP/2.0 401")).remove(0);
    let first = bob_answers(&challenge, Algorithm::Md5, 1);
    w.receive(PHONE, &register(2, Some(&first)));
    w.take_one(PHONE, "SIP/2.0 200");
    // The same credentials again (a captured REGISTER replayed by someone else).
    w.receive(PHONE, &register(3, Some(&first)));
    w.take_one(PHONE, "SIP/2.0 401");
    assert_eq!((w.core.stats().registrations, w.core.stats().auth_replays), (1, 1));
    w.receive(PHONE, &register(4, Some(&bob_answers(&challenge, Algorithm::Md5, 2))));
    w.take_one(PHONE, "SIP/2.0 200");
    assert_eq!(w.core.stats().registrations, 2);
}

#[test]
fn client_answering_sha256_is_rechallenged_in_sha256_with_stale_after_the_nonce_expires() {
    use sip_core::digest::Algorithm;
    let mut w = World::with_config("[auth]\nnonce_ttl_s = 30\n");
    w.receive(PHONE, &register(1, None));
    let challenge = challenges_of(&w.take_one(PHONE, "SIP/2.0 401")).remove(0);
    // A client that can do SHA-256 answers the nonce in SHA-256 (as if it had registered before).
    w.receive(PHONE, &register(2, Some(&bob_answers(&challenge, Algorithm::Sha256, 1))));
    w.take_one(PHONE, "SIP/2.0 200");
    w.advance(Duration::from_secs(31));
    w.receive(PHONE, &register(3, Some(&bob_answers(&challenge, Algorithm::Sha256, 2))));
    let again = challenges_of(&w.take_one(PHONE, "SIP/2.0 401"));
    assert_eq!(again.len(), 1);
    assert!(again[0].stale, "right password on an expired nonce: stale=true, no prompt for the password");
    assert_eq!(again[0].algorithm, Algorithm::Sha256, "the client showed it does SHA-256");
    assert_eq!((w.core.stats().auth_stale, w.core.stats().auth_failures), (1, 0));
    w.receive(PHONE, &register(4, Some(&bob_answers(&again[0], Algorithm::Sha256, 1))));
    w.take_one(PHONE, "SIP/2.0 200");
}

#[test]
fn subscriber_pinned_to_sha256_is_challenged_in_sha256_and_cannot_downgrade_to_md5() {
    use sip_core::digest::Algorithm;
    let mut w = World::with_config("");
    assert!(w.store.set_auth_algorithm("bob", "sip.test", Some(Algorithm::Sha256)).expect("store"));
    w.receive(PHONE, &register(1, None));
    let challenges = challenges_of(&w.take_one(PHONE, "SIP/2.0 401"));
    assert_eq!(challenges.iter().map(|c| c.algorithm).collect::<Vec<_>>(), vec![Algorithm::Sha256]);
    // The right password in MD5 is not enough for this subscriber.
    w.receive(PHONE, &register(2, Some(&bob_answers(&challenges[0], Algorithm::Md5, 1))));
    let again = challenges_of(&w.take_one(PHONE, "SIP/2.0 401"));
    assert_eq!(again[0].algorithm, Algorithm::Sha256);
    assert_eq!((w.core.stats().registrations, w.core.stats().auth_wrong_algorithm), (0, 1));
    w.receive(PHONE, &register(3, Some(&bob_answers(&again[0], Algorithm::Sha256, 1))));
    w.take_one(PHONE, "SIP/2.0 200");
}

#[test]
fn domain_setting_and_challenge_all_shape_the_challenge() {
    use sip_core::digest::Algorithm;
    let mut w = World::with_config("[auth.domains]\n\"sip.test\" = \"SHA-512-256\"\n");
    w.receive(PHONE, &register(1, None));
    let challenges = challenges_of(&w.take_one(PHONE, "SIP/2.0 401"));
    assert_eq!(challenges.iter().map(|c| c.algorithm).collect::<Vec<_>>(), vec![Algorithm::Sha512_256]);

    let mut w = World::with_config("[auth]\nalgorithms = [\"SHA-256\", \"MD5\"]\nchallenge = \"all\"\n");
    w.receive(PHONE, &register(1, None));
    let challenges = challenges_of(&w.take_one(PHONE, "SIP/2.0 401"));
    assert_eq!(challenges.iter().map(|c| c.algorithm).collect::<Vec<_>>(), vec![Algorithm::Sha256, Algorithm::Md5]);
    assert_eq!(challenges[0].nonce, challenges[1].nonce, "one nonce shared by the challenges");
}

#[test]
fn stun_binding_keepalive_is_answered_and_crlf_keepalive_is_ignored() {
    let mut w = World::with_config("");
    let mut stun = vec![0x00, 0x01, 0x00, 0x00, 0x21, 0x12, 0xa4, 0x42];
    stun.extend_from_slice(&[9; 12]);
    w.receive_bytes(PHONE, &stun);
    let sent: Vec<_> = w.sent.drain(..).collect();
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].0, peer(PHONE));
    let answer = sent[0].1.as_bytes();
    assert_eq!(&answer[..2], &[0x01, 0x01], "Binding success");
    w.receive(PHONE, "\r\n\r\n");
    assert!(w.sent.is_empty());
    let stats = w.core.stats();
    assert_eq!((stats.keepalives, stats.malformed), (2, 0));
}

// ---- edge proxies and SIP outbound (RFC 3327, RFC 5626) ----

const EDGE: &str = "192.0.2.7:5060";

/// Carol's REGISTER relayed by an edge proxy that keeps her TCP flow (`ob` in its Path entry).
fn register_via_edge(cseq: u32, authorization: Option<&str>) -> String {
    let auth = authorization.map(|a| format!("Authorization: {a}\r\n")).unwrap_or_default();
    format!(
        "REGISTER sip:sip.test SIP/2.0\r\nVia: SIP/2.0/TCP {EDGE};branch=z9hG4bKedge{cseq}\r\n\
         Via: SIP/2.0/TCP 10.1.1.5:5060;branch=z9hG4bKphone{cseq}\r\nMax-Forwards: 69\r\n\
         From: <sip:carol@sip.test>;tag=r1\r\nTo: <sip:carol@sip.test>\r\nCall-ID: reg-carol\r\nCSeq: {cseq} REGISTER\r\n\
         Supported: path, outbound\r\nPath: <sip:{EDGE};transport=tcp;lr;ob>\r\n\
         Contact: <sip:carol@10.1.1.5:5060;transport=tcp>;+sip.instance=\"<urn:uuid:f81d4fae-7dec-11d0-a765-00a0c91e6bf6>\";reg-id=1\r\n\
         Expires: 3600\r\n{auth}Content-Length: 0\r\n\r\n"
    )
}

#[test]
fn phone_behind_an_edge_proxy_is_reached_through_its_path_until_its_outbound_flow_closes() {
    use sip_core::digest::{authorization, ha1, Algorithm};
    let mut w = World::with_config("");
    w.store.add_subscriber(&Subscriber::with_password("carol", "sip.test", "sip.test", "pw")).expect("add");
    let edge = Peer::tcp(EDGE.parse().expect("addr"));
    let from_edge = |w: &mut World, text: &str| {
        w.core.handle_stream_message(text.as_bytes(), edge, w.now, &mut w.store);
        w.pump();
        let (to_edge, rest): (Vec<_>, Vec<_>) = w.sent.drain(..).partition(|(p, _)| *p == edge);
        w.sent = rest;
        to_edge.into_iter().map(|(_, m)| m).collect::<Vec<_>>()
    };
    let challenge = challenges_of(&from_edge(&mut w, &register_via_edge(1, None))[0]).remove(0);
    let credentials =
        authorization(&challenge, "carol", &ha1(Algorithm::Md5.hash(), "carol", "sip.test", "pw"), "REGISTER", "sip:sip.test", "c0ffee", 1);
    let ok = from_edge(&mut w, &register_via_edge(2, Some(&credentials))).remove(0);
    assert!(ok.starts_with("SIP/2.0 200"), "{ok}");
    assert!(ok.contains("Require: outbound\r\n"), "{ok}");
    assert!(ok.contains(&format!("Path: <sip:{EDGE};transport=tcp;lr;ob>\r\n")), "Path echoed: {ok}");
    assert!(ok.contains(";reg-id=1"), "{ok}");

    // A call to Carol goes down the edge proxy's flow with the Path as its Route.
    w.receive(CALLER, &invite("call-carol", &offer(4000, "sendrecv")).replace("bob@sip.test", "carol@sip.test"));
    w.allocate();
    let invites = from_edge(&mut w, "");
    assert_eq!(invites.len(), 1, "{invites:?} / {:?}", w.sent);
    assert!(invites[0].to_ascii_lowercase().starts_with("invite sip:carol@10.1.1.5:5060;transport=tcp sip/2.0"), "{}", invites[0]);
    assert!(invites[0].contains(&format!("Route: <sip:{EDGE};transport=tcp;lr;ob>\r\n")), "{}", invites[0]);

    // The edge's connection drops: Carol's outbound registration ends with it.
    w.core.handle_flow_closed(edge, w.now, &mut w.store);
    assert_eq!(w.core.stats().outbound_flows_closed, 1);
    assert!(w.store.bindings().expect("bindings").iter().all(|b| !b.aor.starts_with("carol")), "store updated");
    w.receive(CALLER, &invite("call-carol-2", &offer(4002, "sendrecv")).replace("bob@sip.test", "carol@sip.test"));
    w.take_one(CALLER, "SIP/2.0 480");
}

#[test]
fn record_route_of_the_caller_is_echoed_and_routes_our_bye() {
    let mut w = World::new();
    let with_rr = invite("call-rr", &offer(4000, "sendrecv")).replace("Contact: ", "Record-Route: <sip:192.0.2.1;lr;ftag=a1>\r\nContact: ");
    w.receive(CALLER, &with_rr);
    w.allocate();
    let invite_b = w.take_one(CALLEE, "INVITE sip:bob@192.0.2.2:5062");
    assert!(!invite_b.contains("Route:"), "no route set towards a directly registered phone");
    let ok_b = answer(&invite_b, 200, Some(&offer(5000, "sendrecv").replace("192.0.2.1", "192.0.2.2")))
        .replace("Contact: ", "Record-Route: <sip:192.0.2.60;lr>, <sip:192.0.2.61;lr>\r\nContact: ");
    w.receive(CALLEE, &ok_b);
    let ack = w.take_one(CALLEE, "ACK sip:bob@192.0.2.2:5062");
    assert!(ack.contains("Route: <sip:192.0.2.61;lr>\r\nRoute: <sip:192.0.2.60;lr>\r\n"), "reversed Record-Route: {ack}");
    let ok_a = w.take_one(CALLER, "SIP/2.0 200");
    assert!(ok_a.contains("Record-Route: <sip:192.0.2.1;lr;ftag=a1>\r\n"), "{ok_a}");
    // The callee hangs up: our BYE to the caller follows the caller's Record-Route.
    let tag = to_tag(&ok_b);
    let bye = format!(
        "BYE sip:b2bua@192.0.2.100:5060 SIP/2.0\r\nVia: SIP/2.0/UDP {CALLEE};branch=z9hG4bKbyeb\r\nMax-Forwards: 70\r\n\
         From: <sip:bob@192.0.2.2:5062>;tag={tag}\r\n{to}\r\nCall-ID: {call_id}\r\nCSeq: 2 BYE\r\nContent-Length: 0\r\n\r\n",
        to = invite_b.lines().find(|l| l.starts_with("From:")).expect("from").replacen("From:", "To:", 1),
        call_id = invite_b.lines().find_map(|l| l.strip_prefix("Call-ID: ")).expect("call-id"),
    );
    w.receive(CALLEE, &bye);
    let bye_a = w.take_one(CALLER, "BYE sip:alice@192.0.2.1:5060");
    assert!(bye_a.contains("Route: <sip:192.0.2.1;lr;ftag=a1>\r\n"), "{bye_a}");
}

/// The callee's in-dialog `method` with CSeq `cseq` in the call whose INVITE it got was `invite_b`.
pub(crate) fn callee_request(method: &str, invite_b: &str, b_tag: &str, cseq: u32) -> String {
    format!(
        "{method} sip:b2bua@192.0.2.100:5060 SIP/2.0\r\nVia: SIP/2.0/UDP {CALLEE};branch=z9hG4bKb{method}{cseq}\r\nMax-Forwards: 70\r\n\
         From: <sip:bob@192.0.2.2:5062>;tag={b_tag}\r\n{to}\r\nCall-ID: {call_id}\r\nCSeq: {cseq} {method}\r\nContent-Length: 0\r\n\r\n",
        to = invite_b.lines().find(|l| l.starts_with("From:")).expect("from").replacen("From:", "To:", 1),
        call_id = invite_b.lines().find_map(|l| l.strip_prefix("Call-ID: ")).expect("call-id"),
    )
}

#[test]
fn an_in_dialog_request_with_a_lower_cseq_gets_500_and_is_not_relayed() {
    let mut w = World::new();
    let (_, tag, _) = confirmed_call(&mut w);
    w.receive(CALLER, &in_dialog("INFO", "call1", 5, &tag, None));
    w.take_one(CALLEE, "INFO sip:bob@192.0.2.2:5062");
    w.receive(CALLER, &in_dialog("INFO", "call1", 4, &tag, None));
    w.take_one(CALLER, "SIP/2.0 500");
    assert!(w.take(CALLEE, "INFO").is_empty(), "an out-of-order request goes no further");
    assert_eq!(w.core.stats().calls.cseq_out_of_order, 1);
}

#[test]
fn a_reinvite_with_a_new_contact_is_where_the_next_request_in_the_dialog_goes() {
    let mut w = World::new();
    let (invite_b, tag, _) = confirmed_call(&mut w);
    let moved = in_dialog("INVITE", "call1", 2, &tag, Some(&offer(4000, "sendrecv")))
        .replace("Call-ID: call1\r\n", "Call-ID: call1\r\nContact: <sip:alice@192.0.2.1:5999>\r\n");
    w.receive(CALLER, &moved);
    let reinvite = w.take_one(CALLEE, "INVITE sip:bob@192.0.2.2:5062");
    w.receive(CALLEE, &answer(&reinvite, 200, Some(&offer(5000, "sendrecv").replace("192.0.2.1", "192.0.2.2"))));
    w.take_one(CALLER, "SIP/2.0 200");
    // The callee hangs up: the BYE to the caller has the caller's new Contact as Request-URI.
    let b_tag = to_tag(&answer(&invite_b, 200, None));
    w.receive(CALLEE, &callee_request("BYE", &invite_b, &b_tag, 2));
    w.take_one(CALLER, "BYE sip:alice@192.0.2.1:5999");
    assert_eq!(w.core.active_calls(), 0);
}

// ---- forking ----

pub(crate) const CALLEE2: &str = "192.0.2.3:5064";

fn call_id_of(message: &str) -> String {
    message.lines().find_map(|l| l.strip_prefix("Call-ID: ")).expect("Call-ID").trim().to_owned()
}

#[test]
fn parallel_forking_rings_every_contact_and_cancels_the_others_when_one_answers() {
    let mut w = World::new();
    w.add_contact(CALLEE2, 500);
    w.receive(CALLER, &invite("fork1", &offer(4000, "sendrecv")));
    w.allocate();
    let to_1 = w.take_one(CALLEE, "INVITE sip:bob@192.0.2.2:5062");
    let to_2 = w.take_one(CALLEE2, "INVITE sip:bob@192.0.2.3:5064");
    assert_ne!(call_id_of(&to_1), call_id_of(&to_2), "each fork is its own dialog");
    w.receive(CALLEE, &answer(&to_1, 180, None));
    w.receive(CALLEE2, &answer_at(CALLEE2, &to_2, 180, None));
    assert_eq!(w.take(CALLER, "SIP/2.0 180").len(), 2);
    w.receive(CALLEE2, &answer_at(CALLEE2, &to_2, 200, Some(&offer(5002, "sendrecv").replace("192.0.2.1", "192.0.2.3"))));
    w.take_one(CALLEE2, "ACK sip:bob@192.0.2.3:5064");
    let cancel = w.take_one(CALLEE, "CANCEL sip:bob@192.0.2.2:5062");
    assert_eq!(call_id_of(&cancel), call_id_of(&to_1));
    w.take_one(CALLER, "SIP/2.0 200");
    w.receive(CALLEE, &answer(&cancel, 200, None));
    w.receive(CALLEE, &answer(&to_1, 487, None));
    w.take_one(CALLEE, "ACK sip:bob@192.0.2.2:5062");
    assert!(w.take(CALLER, "SIP/2.0 487").is_empty(), "the losing fork's 487 is not the caller's");
    assert_eq!(w.core.active_calls(), 1);
}

#[test]
fn a_second_fork_that_answers_too_is_acked_and_hung_up() {
    let mut w = World::new();
    w.add_contact(CALLEE2, 500);
    w.receive(CALLER, &invite("fork2", &offer(4000, "sendrecv")));
    w.allocate();
    let to_1 = w.take_one(CALLEE, "INVITE");
    let to_2 = w.take_one(CALLEE2, "INVITE");
    w.receive(CALLEE, &answer(&to_1, 200, Some(&offer(5000, "sendrecv").replace("192.0.2.1", "192.0.2.2"))));
    let ok = w.take_one(CALLER, "SIP/2.0 200");
    w.take_one(CALLEE, "ACK");
    assert!(w.take(CALLEE2, "CANCEL").is_empty(), "no CANCEL before a provisional response (RFC 3261 §9.1)");
    w.receive(CALLEE2, &answer_at(CALLEE2, &to_2, 180, None));
    w.take_one(CALLEE2, "CANCEL");
    // Its 200 crossed our CANCEL (RFC 3261 §13.2.2.4): ACK it, then BYE.
    w.receive(CALLEE2, &answer_at(CALLEE2, &to_2, 200, Some(&offer(5002, "sendrecv").replace("192.0.2.1", "192.0.2.3"))));
    w.take_one(CALLEE2, "ACK sip:bob@192.0.2.3:5064");
    let bye = w.take_one(CALLEE2, "BYE sip:bob@192.0.2.3:5064");
    assert_eq!(call_id_of(&bye), call_id_of(&to_2));
    assert!(w.take(CALLER, "SIP/2.0 200").is_empty(), "the caller gets one answer");
    assert_eq!(w.core.stats().calls.late_answers, 1);
    let tag = to_tag(&ok);
    w.receive(CALLER, &in_dialog("ACK", "fork2", 1, &tag, None).replace("fork2ACK1", "ackf2"));
    w.receive(CALLER, &in_dialog("BYE", "fork2", 2, &tag, None));
    w.take_one(CALLEE, "BYE sip:bob@192.0.2.2:5062");
    assert!(w.take(CALLEE2, "BYE").is_empty());
    assert_eq!((w.core.active_calls(), w.releases()), (0, 1));
}

#[test]
fn when_every_fork_is_busy_the_caller_gets_486() {
    let mut w = World::new();
    w.add_contact(CALLEE2, 500);
    w.receive(CALLER, &invite("fork3", &offer(4000, "sendrecv")));
    w.allocate();
    let to_1 = w.take_one(CALLEE, "INVITE");
    let to_2 = w.take_one(CALLEE2, "INVITE");
    w.receive(CALLEE, &answer(&to_1, 486, None));
    assert!(w.take(CALLER, "SIP/2.0 4").is_empty(), "one fork still rings");
    w.receive(CALLEE2, &answer(&to_2, 480, None));
    w.take_one(CALLER, "SIP/2.0 486");
    assert_eq!((w.core.active_calls(), w.releases()), (0, 1));
}

#[test]
fn sequential_forking_moves_on_after_a_busy_contact_and_after_the_branch_timeout() {
    let mut w = World::with_config("[auth]\nalgorithms = [\"MD5\"]\n[routing]\nfork = \"sequential\"\nbranch_timeout_s = 5\n");
    w.add_contact(CALLEE2, 500);
    w.add_contact("192.0.2.4:5066", 200);
    w.receive(CALLER, &invite("seq1", &offer(4000, "sendrecv")));
    w.allocate();
    let to_1 = w.take_one(CALLEE, "INVITE");
    assert!(w.take(CALLEE2, "INVITE").is_empty(), "best q first, one at a time");
    w.receive(CALLEE, &answer(&to_1, 486, None));
    let to_2 = w.take_one(CALLEE2, "INVITE");
    w.receive(CALLEE2, &answer_at(CALLEE2, &to_2, 180, None));
    w.advance(Duration::from_secs(4));
    assert!(w.take("192.0.2.4:5066", "INVITE").is_empty());
    w.advance(Duration::from_secs(2));
    w.take_sent(CALLEE2, "CANCEL");
    let to_3 = w.take_sent("192.0.2.4:5066", "INVITE");
    w.receive(CALLEE2, &answer(&to_2, 487, None));
    assert!(w.take(CALLER, "SIP/2.0 4").is_empty(), "the last contact still rings");
    w.receive("192.0.2.4:5066", &answer(&to_3, 200, Some(&offer(5004, "sendrecv").replace("192.0.2.1", "192.0.2.4"))));
    w.take_one(CALLER, "SIP/2.0 200");
    assert_eq!(w.core.stats().calls.forks, 3);
}

// ---- routing services: forwarding, find-me, screening, PSTN fallback ----

const TRUNK: &str = "192.0.2.30:5070";
const TRUNK_ROUTE: &str = "[[route]]\nprefix = \"+\"\ndestination = \"sip:192.0.2.30:5070\"\n";

#[test]
fn unconditional_forwarding_rings_the_target_with_181_diversion_and_history_info() {
    let mut w = World::new();
    w.subscriber("carol", Some(CALLEE2));
    w.settings("bob", &[("forward.always", "carol")]);
    w.receive(CALLER, &invite("fwd1", &offer(4000, "sendrecv")));
    w.allocate();
    assert!(w.take(CALLEE, "INVITE").is_empty(), "bob's phone does not ring");
    let to_carol = w.take_one(CALLEE2, "INVITE sip:carol@192.0.2.3:5064");
    assert!(to_carol.contains("Diversion: <sip:bob@sip.test>;reason=unconditional;counter=1\r\n"), "{to_carol}");
    assert!(to_carol.contains("History-Info: <sip:bob@sip.test>;index=1, <sip:carol@sip.test;cause=302>;index=1.1;mp=1\r\n"), "{to_carol}");
    w.take_one(CALLER, "SIP/2.0 181 Call Is Being Forwarded");
    w.receive(CALLEE2, &answer_at(CALLEE2, &to_carol, 200, Some(&offer(5002, "sendrecv").replace("192.0.2.1", "192.0.2.3"))));
    w.take_one(CALLER, "SIP/2.0 200");
}

#[test]
fn forwarding_on_busy_follows_the_callees_486() {
    let mut w = World::new();
    w.subscriber("carol", Some(CALLEE2));
    w.settings("bob", &[("forward.busy", "carol")]);
    w.receive(CALLER, &invite("fwd2", &offer(4000, "sendrecv")));
    w.allocate();
    let to_bob = w.take_one(CALLEE, "INVITE");
    w.receive(CALLEE, &answer(&to_bob, 486, None));
    w.take_one(CALLEE, "ACK");
    w.take_one(CALLER, "SIP/2.0 181");
    assert!(w.take(CALLER, "SIP/2.0 486").is_empty(), "the busy is not the caller's");
    let to_carol = w.take_one(CALLEE2, "INVITE sip:carol@192.0.2.3:5064");
    assert!(to_carol.contains("reason=user-busy") && to_carol.contains(";cause=486>"), "{to_carol}");
    w.receive(CALLEE2, &answer_at(CALLEE2, &to_carol, 486, None));
    w.take_one(CALLER, "SIP/2.0 486");
    assert_eq!((w.core.active_calls(), w.releases()), (0, 1));
}

#[test]
fn forwarding_on_no_answer_cancels_the_callee_after_its_ring_time() {
    let mut w = World::new();
    w.subscriber("carol", Some(CALLEE2));
    w.settings("bob", &[("forward.no_answer", "sip:carol@sip.test"), ("forward.no_answer_s", "8")]);
    w.receive(CALLER, &invite("fwd3", &offer(4000, "sendrecv")));
    w.allocate();
    let to_bob = w.take_one(CALLEE, "INVITE");
    w.receive(CALLEE, &answer(&to_bob, 180, None));
    w.advance(Duration::from_secs(7));
    assert!(w.take(CALLEE2, "INVITE").is_empty());
    w.advance(Duration::from_secs(2));
    w.take_sent(CALLEE, "CANCEL");
    let to_carol = w.take_sent(CALLEE2, "INVITE sip:carol@192.0.2.3:5064");
    assert!(to_carol.contains("reason=no-answer") && to_carol.contains(";cause=408>"), "{to_carol}");
    assert!(!w.take(CALLER, "SIP/2.0 181").is_empty());
    w.receive(CALLEE, &answer(&to_bob, 487, None));
    assert!(w.take(CALLER, "SIP/2.0 487").is_empty());
    w.receive(CALLEE2, &answer_at(CALLEE2, &to_carol, 200, Some(&offer(5002, "sendrecv").replace("192.0.2.1", "192.0.2.3"))));
    w.take_one(CALLER, "SIP/2.0 200");
}

#[test]
fn an_unregistered_subscriber_forwards_to_its_unreachable_target_or_gets_480() {
    let mut w = World::new();
    w.subscriber("dave", None);
    w.subscriber("carol", Some(CALLEE2));
    let to_dave = |id: &str| invite(id, &offer(4000, "sendrecv")).replace("sip:bob@sip.test SIP/2.0", "sip:dave@sip.test SIP/2.0");
    w.receive(CALLER, &to_dave("fwd4"));
    w.take_one(CALLER, "SIP/2.0 480");
    w.settings("dave", &[("forward.unreachable", "carol")]);
    w.receive(CALLER, &to_dave("fwd5"));
    w.allocate();
    let to_carol = w.take_one(CALLEE2, "INVITE sip:carol@192.0.2.3:5064");
    assert!(to_carol.contains("Diversion: <sip:dave@sip.test>;reason=unavailable"), "{to_carol}");
}

#[test]
fn forwarding_loops_end_with_482_and_long_chains_with_483() {
    let mut w = World::with_config("[auth]\nalgorithms = [\"MD5\"]\n[routing]\nmax_forwards = 2\n");
    w.subscriber("carol", None);
    w.subscriber("dave", None);
    w.settings("bob", &[("forward.always", "carol")]);
    w.settings("carol", &[("forward.always", "bob")]);
    w.receive(CALLER, &invite("loop1", &offer(4000, "sendrecv")));
    w.take_one(CALLER, "SIP/2.0 482");
    w.settings("carol", &[("forward.always", "dave")]);
    w.settings("dave", &[("forward.always", "+4930999")]);
    w.receive(CALLER, &invite("loop2", &offer(4000, "sendrecv")));
    w.take_one(CALLER, "SIP/2.0 483");
    assert_eq!(w.core.active_calls(), 0);
    assert!(w.media.is_empty(), "nothing was allocated for calls that go nowhere");
}

#[test]
fn incoming_screening_refuses_listed_callers_and_lets_others_through() {
    let mut w = World::new();
    w.settings("bob", &[("screen.reject", "+4930*"), ("screen.status", "403")]);
    // The caller's P-Asserted-Identity is +4930123.
    w.receive(CALLER, &invite("scr1", &offer(4000, "sendrecv")));
    w.take_one(CALLER, "SIP/2.0 403");
    w.settings("bob", &[("screen.reject", "anonymous"), ("screen.status", "")]);
    w.receive(CALLER, &invite("scr2", &offer(4000, "sendrecv")));
    w.allocate();
    w.take_one(CALLEE, "INVITE");
    let anonymous = invite("scr3", &offer(4000, "sendrecv"))
        .replace("From: \"Alice\" <sip:alice@sip.test>", "From: \"Anonymous\" <sip:anonymous@anonymous.invalid>")
        .replace("P-Asserted-Identity: <sip:+4930123@sip.test>\r\n", "");
    w.receive(CALLER, &anonymous);
    w.take_one(CALLER, "SIP/2.0 603");
}

#[test]
fn a_screened_caller_hears_the_announcement_then_is_hung_up_at_its_end_or_the_limit() {
    use crate::b2bua::UpdateKind;
    let mut w = World::new();
    w.settings("bob", &[("screen.reject", "+4930*"), ("screen.announcement", "not-available.wav")]);
    // Answered by the media plane (its local answer), the announcement played to the caller.
    w.receive(CALLER, &invite("ann1", &offer(4000, "sendrecv")));
    w.allocate();
    w.take_one(CALLER, "SIP/2.0 200");
    assert!(w.take(CALLEE, "INVITE").is_empty(), "bob is not rung");
    let Some(MediaRequest::Prompt { legs, file }) = w.media.last().cloned() else { panic!("{:?}", w.media) };
    assert_eq!((legs.as_slice(), file.as_str()), ([11].as_slice(), "not-available.wav"));
    // Its end (the media plane's event on another leg is not it).
    w.core.handle_play_finished(99, w.now, &mut w.store);
    w.pump();
    assert_eq!(w.core.active_calls(), 1);
    let _ = updates(&mut w);
    w.core.handle_play_finished(11, w.now, &mut w.store);
    w.pump();
    let bye = w.take_one(CALLER, "BYE");
    w.receive(CALLER, &answer_at(CALLER, &bye, 200, None));
    assert_eq!((w.core.active_calls(), w.releases()), (0, 1));
    assert!(updates(&mut w).iter().any(|u| matches!(u, UpdateKind::Ended { status: 200, cause: "screened", duration_ms: 0 })));
    // No end-of-play event: hung up at the limit.
    w.receive(CALLER, &invite("ann2", &offer(4000, "sendrecv")).replace("tag=a1", "tag=a2"));
    w.allocate();
    let ok = w.take_one(CALLER, "SIP/2.0 200");
    let ack = in_dialog("ACK", "ann2", 1, &to_tag(&ok), None).replace("ann2ACK1", "ack2").replace("tag=a1", "tag=a2");
    w.receive(CALLER, &ack);
    w.advance(crate::b2bua::ANNOUNCEMENT_LIMIT - Duration::from_secs(1));
    let early = w.take(CALLER, "BYE");
    assert!(early.is_empty(), "{early:?}");
    w.advance(Duration::from_secs(2));
    let byes = w.take(CALLER, "BYE");
    assert!(!byes.is_empty() && byes.iter().all(|b| b.contains("Call-ID: ann2")), "{byes:?}");
    // A caller without an offer (the media plane answers offers) gets the refusal itself.
    w.receive(CALLER, &invite("ann3", "").replace("Content-Type: application/sdp\r\n", "").replace("tag=a1", "tag=a3"));
    w.take_one(CALLER, "SIP/2.0 603");
}

/// Subscriber `user` (password `pw`) at `phone` sends `request(cseq, credentials)` (a `method`
/// to `uri`): challenged with 407, then sent again with its credentials (CSeq 2). Returns the
/// request it sent last.
pub(crate) fn with_credentials(
    w: &mut World,
    phone: &str,
    user: &str,
    method: &str,
    uri: &str,
    request: impl Fn(u32, &str) -> String,
) -> String {
    use sip_core::digest::{authorization, ha1, parse_challenge, Algorithm};
    w.receive(phone, &request(1, ""));
    let challenge = w.take_one(phone, "SIP/2.0 407");
    let value = challenge.lines().find_map(|l| l.strip_prefix("Proxy-Authenticate: ")).expect("challenge");
    let challenge = parse_challenge(value).expect("parses");
    let credentials = authorization(&challenge, user, &ha1(Algorithm::Md5.hash(), user, "sip.test", "pw"), method, uri, "c0ffee", 1);
    let text = request(2, &format!("Proxy-Authorization: {credentials}\r\n"));
    w.receive(phone, &text);
    text
}

/// Subscriber `user` at `phone` calls `dialled` with `body` (Call-ID `id`; see
/// [`with_credentials`]; branch `z9hG4bK{id}i2`). Returns the INVITE it sent last.
pub(crate) fn subscriber_calls(w: &mut World, phone: &str, user: &str, id: &str, dialled: &str, body: &str) -> String {
    let call = |cseq: u32, auth: &str| {
        invite(id, body)
            .replace(CALLER, phone)
            .replace("\"Alice\" <sip:alice@", &format!("<sip:{user}@"))
            .replace("sip:bob@sip.test SIP/2.0", &format!("sip:{dialled}@sip.test SIP/2.0"))
            .replace("To: <sip:bob@", &format!("To: <sip:{dialled}@"))
            .replace("CSeq: 1 INVITE", &format!("CSeq: {cseq} INVITE"))
            .replace(&format!("branch=z9hG4bK{id}i"), &format!("branch=z9hG4bK{id}i{cseq}"))
            .replace("Contact:", &format!("{auth}Contact:"))
    };
    with_credentials(w, phone, user, "INVITE", &format!("sip:{dialled}@sip.test"), call)
}

#[test]
fn outgoing_screening_refuses_a_subscriber_dialling_a_blocked_prefix() {
    let mut w = World::with_routes("[[route]]\nprefix = \"00\"\ndestination = \"sip:192.0.2.30:5070\"\n");
    w.subscriber("alice", None);
    w.settings("alice", &[("block", "0090,00882")]);
    let phone = "192.0.2.50:5060";
    for (id, number, blocked) in [("out1", "0090555", true), ("out2", "0049301", false)] {
        subscriber_calls(&mut w, phone, "alice", id, number, &offer(4000, "sendrecv"));
        if blocked {
            w.take_one(phone, "SIP/2.0 403");
        } else {
            w.allocate();
            w.take_one(TRUNK, "INVITE sip:0049301@192.0.2.30:5070");
        }
    }
}

#[test]
fn sequential_find_me_rings_the_list_after_the_contacts() {
    let mut w = World::with_routes(TRUNK_ROUTE);
    w.subscriber("carol", Some(CALLEE2));
    w.settings(
        "bob",
        &[("find_me", "carol,+4930555"), ("find_me.branch_s", "5"), ("forward.no_answer", "carol"), ("forward.no_answer_s", "10")],
    );
    w.settings("bob", &[("forward.no_answer", "")]);
    w.receive(CALLER, &invite("fm1", &offer(4000, "sendrecv")));
    w.allocate();
    let to_bob = w.take_one(CALLEE, "INVITE");
    w.receive(CALLEE, &answer(&to_bob, 480, None));
    let to_carol = w.take_one(CALLEE2, "INVITE sip:carol@192.0.2.3:5064");
    assert!(!to_carol.contains("Diversion"), "find-me is not forwarding");
    w.receive(CALLEE2, &answer_at(CALLEE2, &to_carol, 180, None));
    w.advance(Duration::from_secs(6));
    w.take_sent(CALLEE2, "CANCEL");
    let to_pstn = w.take_sent(TRUNK, "INVITE sip:+4930555@192.0.2.30:5070");
    w.receive(TRUNK, &answer_at(TRUNK, &to_pstn, 200, Some(&offer(5006, "sendrecv").replace("192.0.2.1", "192.0.2.30"))));
    w.take_one(CALLER, "SIP/2.0 200");
}

#[test]
fn parallel_find_me_rings_the_list_with_the_contacts() {
    let mut w = World::new();
    w.subscriber("carol", Some(CALLEE2));
    w.settings("bob", &[("find_me", "carol"), ("find_me.mode", "parallel")]);
    w.receive(CALLER, &invite("fm2", &offer(4000, "sendrecv")));
    w.allocate();
    w.take_one(CALLEE, "INVITE");
    w.take_one(CALLEE2, "INVITE sip:carol@192.0.2.3:5064");
}

#[test]
fn app_else_pstn_goes_out_to_the_number_when_unregistered_busy_or_unanswered() {
    let mut w = World::with_routes(TRUNK_ROUTE);
    w.subscriber("erin", None);
    w.settings("erin", &[("e164", "+4930777"), ("pstn_fallback", "true")]);
    w.settings("bob", &[("e164", "+4930888"), ("pstn_fallback", "true"), ("pstn_fallback.after_s", "6")]);
    // Not registered: straight to the trunk.
    w.receive(CALLER, &invite("pstn1", &offer(4000, "sendrecv")).replace("sip:bob@sip.test SIP/2.0", "sip:erin@sip.test SIP/2.0"));
    w.allocate();
    let out = w.take_one(TRUNK, "INVITE sip:+4930777@192.0.2.30:5070");
    assert!(out.contains("Diversion: <sip:erin@sip.test>;reason=unavailable"), "{out}");
    w.receive(TRUNK, &answer_at(TRUNK, &out, 180, None));
    // Registered but busy: the trunk.
    w.receive(CALLER, &invite("pstn2", &offer(4000, "sendrecv")));
    w.allocate();
    let to_bob = w.take_one(CALLEE, "INVITE");
    w.receive(CALLEE, &answer(&to_bob, 486, None));
    let out = w.take_one(TRUNK, "INVITE sip:+4930888@192.0.2.30:5070");
    w.receive(TRUNK, &answer_at(TRUNK, &out, 180, None));
    // Registered, no answer within the app's ring time: the trunk.
    w.receive(CALLER, &invite("pstn3", &offer(4000, "sendrecv")));
    w.allocate();
    let to_bob = w.take_one(CALLEE, "INVITE");
    w.receive(CALLEE, &answer(&to_bob, 180, None));
    w.advance(Duration::from_secs(5));
    assert!(w.take(TRUNK, "INVITE").is_empty());
    w.advance(Duration::from_secs(2));
    let out = w.take_sent(TRUNK, "INVITE sip:+4930888@192.0.2.30:5070");
    assert!(out.contains("reason=no-answer"), "{out}");
}

#[test]
fn a_redirect_is_followed_to_its_contacts_with_a_hop_limit() {
    let mut w = World::with_config("[auth]\nalgorithms = [\"MD5\"]\n[routing]\nmax_forwards = 1\n");
    w.subscriber("carol", Some(CALLEE2));
    w.receive(CALLER, &invite("rdr1", &offer(4000, "sendrecv")));
    w.allocate();
    let to_bob = w.take_one(CALLEE, "INVITE");
    let moved =
        answer(&to_bob, 302, None).replace("Contact: <sip:bob@192.0.2.2:5062>", "Contact: <sip:carol@sip.test>, <sip:vm@192.0.2.40:5080>");
    w.receive(CALLEE, &moved);
    w.take_one(CALLEE, "ACK");
    let to_carol = w.take_one(CALLEE2, "INVITE sip:carol@192.0.2.3:5064");
    assert!(to_carol.contains("Diversion: <sip:bob@sip.test>;reason=deflection;counter=1"), "{to_carol}");
    let to_vm = w.take_one("192.0.2.40:5080", "INVITE sip:vm@192.0.2.40:5080");
    // Both redirect again: one redirect was allowed.
    w.receive(CALLEE2, &answer_at(CALLEE2, &to_carol, 302, None));
    w.receive("192.0.2.40:5080", &answer_at("192.0.2.40:5080", &to_vm, 480, None));
    w.take_one(CALLER, "SIP/2.0 483");
    assert_eq!(w.core.active_calls(), 0);
}

#[test]
fn a_trunk_that_challenges_gets_the_routes_credentials_once() {
    use sip_core::digest::{compute_response, ha1, parse_credentials, Algorithm};
    let mut w = World::with_routes(
        "[[route]]\nprefix = \"+\"\ndestination = \"sip:192.0.2.30:5070\"\nusername = \"acct1\"\npassword = \"s3cret\"\n",
    );
    let to_number = |id: &str| invite(id, &offer(4000, "sendrecv")).replace("sip:bob@sip.test SIP/2.0", "sip:+4930111@sip.test SIP/2.0");
    w.receive(CALLER, &to_number("tr1"));
    w.allocate();
    let first = w.take_one(TRUNK, "INVITE sip:+4930111@192.0.2.30:5070");
    let challenge = answer_at(TRUNK, &first, 407, None).replace(
        "Content-Length: 0",
        "Proxy-Authenticate: Digest realm=\"trunk.example\", nonce=\"n0nce\", qop=\"auth\"\r\nContent-Length: 0",
    );
    w.receive(TRUNK, &challenge);
    w.take_one(TRUNK, "ACK");
    let second = w.take_one(TRUNK, "INVITE sip:+4930111@192.0.2.30:5070");
    assert_eq!(call_id_of(&second), call_id_of(&first), "the same dialog-to-be");
    assert!(second.contains("CSeq: 2 INVITE"), "{second}");
    let value = second.lines().find_map(|l| l.strip_prefix("Proxy-Authorization: ")).expect("credentials");
    let c = parse_credentials(value).expect("parses");
    assert_eq!((c.username.as_str(), c.realm.as_str(), c.uri.as_str()), ("acct1", "trunk.example", "sip:+4930111@192.0.2.30:5070"));
    let expected = compute_response(
        Algorithm::Md5,
        &ha1(Algorithm::Md5.hash(), "acct1", "trunk.example", "s3cret"),
        "n0nce",
        c.nc.expect("nc"),
        c.cnonce.as_deref().expect("cnonce"),
        "INVITE",
        &c.uri,
    );
    assert_eq!(c.response, expected);
    // Refused again: no third try; the caller gets 403.
    w.receive(TRUNK, &challenge.replace("CSeq: 1 INVITE", "CSeq: 2 INVITE").replace(&branch_of(&first), &branch_of(&second)));
    w.take_one(CALLER, "SIP/2.0 403");
    assert!(w.take(TRUNK, "INVITE").is_empty());
}

fn branch_of(message: &str) -> String {
    message
        .lines()
        .find(|l| l.starts_with("Via:"))
        .and_then(|l| l.split("branch=").nth(1))
        .and_then(|b| b.split(';').next())
        .expect("branch")
        .trim()
        .to_owned()
}

#[test]
fn delayed_offer_takes_the_offer_from_the_callees_200_and_the_answer_from_the_callers_ack() {
    let mut w = World::new();
    let bodiless = invite("late1", "").replace("Content-Type: application/sdp\r\n", "");
    w.receive(CALLER, &bodiless);
    assert!(!w.media.iter().any(|m| matches!(m, MediaRequest::Allocate { .. })), "nothing to allocate before the offer");
    let to_bob = w.take_one(CALLEE, "INVITE sip:bob@192.0.2.2:5062");
    assert!(to_bob.ends_with("Content-Length: 0\r\n\r\n") && !to_bob.contains("application/sdp"), "{to_bob}");
    w.receive(CALLEE, &answer(&to_bob, 200, Some(&offer(5000, "sendrecv").replace("192.0.2.1", "192.0.2.2"))));
    assert!(w.take(CALLEE, "ACK").is_empty(), "the callee's ACK waits for the caller's answer");
    assert!(matches!(w.media.last(), Some(MediaRequest::Allocate { callee_offers: true, .. })), "{:?}", w.media);
    w.allocate();
    let ok = w.take_one(CALLER, "SIP/2.0 200");
    assert!(ok.contains("c=IN IP4 198.51.100.9") && ok.contains("m=audio 30000 "), "the callee's offer, anchored: {ok}");
    // The callee retransmits its 200 meanwhile: still no ACK without an answer.
    w.receive(CALLEE, &answer(&to_bob, 200, Some(&offer(5000, "sendrecv").replace("192.0.2.1", "192.0.2.2"))));
    assert!(w.take(CALLEE, "ACK").is_empty());
    let tag = to_tag(&ok);
    w.receive(CALLER, &in_dialog("ACK", "late1", 1, &tag, Some(&offer(4000, "sendrecv"))).replace("late1ACK1", "ackl1"));
    let ack = w.take_one(CALLEE, "ACK sip:bob@192.0.2.2:5062");
    assert!(
        ack.contains("application/sdp") && ack.contains("c=IN IP4 198.51.100.9") && ack.contains("m=audio 30002 "),
        "the caller's answer, anchored: {ack}"
    );
    w.receive(CALLER, &in_dialog("BYE", "late1", 2, &tag, None));
    w.take_one(CALLEE, "BYE");
    assert_eq!((w.core.active_calls(), w.releases()), (0, 1));
}

#[test]
fn a_delayed_offer_ack_without_the_answer_ends_the_call_on_both_sides() {
    let mut w = World::new();
    w.receive(CALLER, &invite("late2", "").replace("Content-Type: application/sdp\r\n", ""));
    let to_bob = w.take_one(CALLEE, "INVITE");
    w.receive(CALLEE, &answer(&to_bob, 200, Some(&offer(5000, "sendrecv").replace("192.0.2.1", "192.0.2.2"))));
    w.allocate();
    let ok = w.take_one(CALLER, "SIP/2.0 200");
    w.receive(CALLER, &in_dialog("ACK", "late2", 1, &to_tag(&ok), None).replace("late2ACK1", "ackl2"));
    w.take_one(CALLER, "BYE");
    w.take_one(CALLEE, "ACK");
    w.take_one(CALLEE, "BYE");
    assert_eq!((w.core.active_calls(), w.releases()), (0, 1));
}

// ---- call control: originate, hang up, list, updates ----

const ALICE_PHONE: &str = "192.0.2.9:5070";

fn updates(w: &mut World) -> Vec<crate::b2bua::UpdateKind> {
    std::iter::from_fn(|| w.core.poll_update()).map(|u| u.kind).collect()
}

#[test]
fn originate_calls_the_first_party_then_the_second_and_acks_the_first_with_the_answer() {
    use crate::b2bua::{Phase, UpdateKind};
    let mut w = World::new();
    w.subscriber("alice", Some(ALICE_PHONE));
    let id = w.core.handle_originate("alice", "bob", w.now, &mut w.store).expect("originate");
    w.pump();
    let to_alice = w.take_one(ALICE_PHONE, "INVITE sip:alice@192.0.2.9:5070");
    assert!(to_alice.contains("From: <sip:bob@sip.test>;tag=") && to_alice.contains("Content-Length: 0\r\n\r\n"), "{to_alice}");
    w.receive(ALICE_PHONE, &answer_at(ALICE_PHONE, &to_alice, 180, None));
    w.receive(ALICE_PHONE, &answer_at(ALICE_PHONE, &to_alice, 200, Some(&offer(4000, "sendrecv").replace("192.0.2.1", "192.0.2.9"))));
    assert!(w.take(ALICE_PHONE, "ACK").is_empty(), "the first party's ACK carries the second's answer");
    w.allocate();
    let to_bob = w.take_one(CALLEE, "INVITE sip:bob@192.0.2.2:5062");
    assert!(to_bob.contains("From: <sip:alice@sip.test>;tag=") && to_bob.contains("c=IN IP4 198.51.100.9"), "{to_bob}");
    assert_eq!(w.core.calls()[0].phase, Phase::Ringing);
    w.receive(CALLEE, &answer(&to_bob, 180, None));
    w.receive(CALLEE, &answer(&to_bob, 200, Some(&offer(5000, "sendrecv").replace("192.0.2.1", "192.0.2.2"))));
    w.take_one(CALLEE, "ACK sip:bob@192.0.2.2:5062");
    // (The test phones' Contact user is bob's.)
    let ack = w.take_one(ALICE_PHONE, "ACK sip:bob@192.0.2.9:5070");
    assert!(ack.contains("application/sdp") && ack.contains("c=IN IP4 198.51.100.9") && ack.contains("m=audio 30000 "), "{ack}");
    let calls = w.core.calls();
    assert_eq!((calls.len(), calls[0].phase, calls[0].originated), (1, Phase::Answered, true));
    assert_eq!((calls[0].caller.as_str(), calls[0].callee.as_str()), ("sip:alice@sip.test", "sip:bob@sip.test"));
    assert!(w.core.handle_hangup(id, w.now, &mut w.store));
    w.pump();
    w.take_one(ALICE_PHONE, "BYE sip:bob@192.0.2.9:5070");
    w.take_one(CALLEE, "BYE sip:bob@192.0.2.2:5062");
    assert_eq!((w.core.active_calls(), w.releases()), (0, 1));
    assert!(!w.core.handle_hangup(id, w.now, &mut w.store), "gone");
    assert_eq!(
        updates(&mut w),
        vec![
            UpdateKind::Ringing { party: 1 },
            UpdateKind::Answered { party: 1 },
            UpdateKind::Ringing { party: 2 },
            UpdateKind::Answered { party: 2 },
            UpdateKind::Ended { status: 200, cause: "hangup", duration_ms: 0 },
        ]
    );
}

#[test]
fn an_originated_call_whose_second_party_is_busy_hangs_up_the_first() {
    use crate::b2bua::UpdateKind;
    let mut w = World::new();
    w.subscriber("alice", Some(ALICE_PHONE));
    w.core.handle_originate("alice", "bob", w.now, &mut w.store).expect("originate");
    w.pump();
    let to_alice = w.take_one(ALICE_PHONE, "INVITE");
    w.receive(ALICE_PHONE, &answer_at(ALICE_PHONE, &to_alice, 200, Some(&offer(4000, "sendrecv").replace("192.0.2.1", "192.0.2.9"))));
    w.allocate();
    let to_bob = w.take_one(CALLEE, "INVITE");
    w.receive(CALLEE, &answer(&to_bob, 486, None));
    let ack = w.take_one(ALICE_PHONE, "ACK");
    assert!(!ack.contains("application/sdp"), "{ack}");
    w.take_one(ALICE_PHONE, "BYE");
    assert_eq!((w.core.active_calls(), w.releases()), (0, 1));
    assert!(updates(&mut w).contains(&UpdateKind::Ended { status: 486, cause: "failed", duration_ms: 0 }));
}

#[test]
fn originate_names_the_party_that_cannot_be_reached() {
    let mut w = World::new();
    w.subscriber("alice", None);
    assert_eq!(w.core.handle_originate("alice", "bob", w.now, &mut w.store), Err(("from", 480)));
    w.subscriber("carol", Some(CALLEE2));
    assert_eq!(w.core.handle_originate("carol", "nobody", w.now, &mut w.store), Err(("to", 404)));
    assert_eq!(w.core.handle_originate("carol", "bob@elsewhere.example", w.now, &mut w.store), Err(("to", 404)));
    assert_eq!(w.core.active_calls(), 0);
}

#[test]
fn an_answered_call_is_listed_and_ends_with_its_duration() {
    use crate::b2bua::UpdateKind;
    let mut w = World::new();
    let (_, tag, _) = confirmed_call(&mut w);
    w.advance(Duration::from_secs(5));
    w.receive(CALLER, &in_dialog("BYE", "call1", 2, &tag, None));
    let kinds = updates(&mut w);
    assert_eq!(kinds.first(), Some(&UpdateKind::Ringing { party: 2 }));
    assert_eq!(kinds.last(), Some(&UpdateKind::Ended { status: 200, cause: "completed", duration_ms: 5000 }));
}

// ---- hold and music on hold ----

#[test]
fn holding_plays_music_to_the_held_party_until_the_holder_resumes() {
    let mut w = World::new();
    let (_, tag, _) = confirmed_call(&mut w);
    w.receive(CALLER, &in_dialog("INVITE", "call1", 2, &tag, Some(&offer(4000, "sendonly"))));
    let reinvite = w.take_one(CALLEE, "INVITE");
    assert!(!w.media.iter().any(|m| matches!(m, MediaRequest::Play { .. })), "not before the hold is answered");
    w.receive(CALLEE, &answer(&reinvite, 200, Some(&offer(5000, "recvonly").replace("192.0.2.1", "192.0.2.2"))));
    w.take_one(CALLER, "SIP/2.0 200");
    assert_eq!(
        w.media.iter().filter(|m| matches!(m, MediaRequest::Play { .. })).collect::<Vec<_>>(),
        vec![&MediaRequest::Play { legs: vec![12], file: "music-on-hold.wav".into() }],
        "the callee's leg plays the server's music"
    );
    w.receive(CALLER, &in_dialog("INVITE", "call1", 3, &tag, Some(&offer(4000, "sendrecv"))));
    let resume = w.take_one(CALLEE, "INVITE");
    w.receive(CALLEE, &answer(&resume, 200, Some(&offer(5000, "sendrecv").replace("192.0.2.1", "192.0.2.2"))));
    assert!(w.media.contains(&MediaRequest::StopPlay { legs: vec![12] }), "{:?}", w.media);
}

#[test]
fn a_subscriber_holding_the_caller_plays_its_own_music_and_a_refused_hold_plays_none() {
    let mut w = World::new();
    w.settings("bob", &[("music_on_hold", "bobs-jazz.wav")]);
    let (invite_b, _, b_tag) = confirmed_call(&mut w);
    let sdp = offer(5000, "inactive").replace("192.0.2.1", "192.0.2.2");
    let hold = callee_request("INVITE", &invite_b, &b_tag, 2)
        .replace("Content-Length: 0\r\n\r\n", &format!("Content-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{sdp}", sdp.len()));
    w.receive(CALLEE, &hold);
    let to_caller = w.take_one(CALLER, "INVITE");
    w.receive(CALLER, &answer_at(CALLER, &to_caller, 200, Some(&offer(4000, "inactive"))));
    assert!(w.media.contains(&MediaRequest::Play { legs: vec![11], file: "bobs-jazz.wav".into() }), "{:?}", w.media);
    // Resumed, but the caller refuses the re-INVITE: the hold stays, and so does the music.
    let sdp = offer(5000, "sendrecv").replace("192.0.2.1", "192.0.2.2");
    let resume = callee_request("INVITE", &invite_b, &b_tag, 3)
        .replace("Content-Length: 0\r\n\r\n", &format!("Content-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{sdp}", sdp.len()));
    w.receive(CALLEE, &resume);
    let to_caller = w.take_one(CALLER, "INVITE");
    w.receive(CALLER, &answer_at(CALLER, &to_caller, 488, None));
    assert!(!w.media.iter().any(|m| matches!(m, MediaRequest::StopPlay { .. })));
}

// ---- blind transfer (REFER) ----

/// The callee's REFER to `target` in call1, with `extra` headers.
pub(crate) fn callee_refer(invite_b: &str, b_tag: &str, cseq: u32, target: &str, extra: &str) -> String {
    callee_request("REFER", invite_b, b_tag, cseq)
        .replace("Content-Length: 0", &format!("Refer-To: <{target}>\r\n{extra}Content-Length: 0"))
}

#[test]
fn a_blind_transfer_connects_the_transferee_to_the_target_with_media_re_anchored() {
    let mut w = World::new();
    w.subscriber("carol", Some(CALLEE2));
    let (invite_b, tag, b_tag) = confirmed_call(&mut w);
    w.receive(CALLEE, &callee_refer(&invite_b, &b_tag, 2, "sip:carol@sip.test", "Referred-By: <sip:bob@sip.test>\r\n"));
    w.take_one(CALLEE, "SIP/2.0 202");
    let trying = w.take_one(CALLEE, "NOTIFY");
    assert!(trying.contains("Event: refer") && trying.contains("SIP/2.0 100 Trying") && trying.contains("message/sipfrag"), "{trying}");
    let to_carol = w.take_one(CALLEE2, "INVITE sip:carol@192.0.2.3:5064");
    assert!(
        to_carol.contains("Referred-By: <sip:bob@sip.test>") && to_carol.contains("From: \"Alice\" <sip:alice@sip.test>"),
        "{to_carol}"
    );
    assert!(to_carol.contains("c=IN IP4 198.51.100.9"), "the media plane's address: {to_carol}");
    w.receive(CALLEE2, &answer_at(CALLEE2, &to_carol, 200, Some(&offer(5002, "sendrecv").replace("192.0.2.1", "192.0.2.3"))));
    w.take_one(CALLEE2, "ACK sip:bob@192.0.2.3:5064");
    let reinvite = w.take_one(CALLER, "INVITE sip:alice@192.0.2.1:5060");
    assert!(reinvite.contains("c=IN IP4 198.51.100.9") && reinvite.contains("a=sendrecv"), "the transferee's new offer: {reinvite}");
    assert!(
        w.media.iter().any(|m| matches!(m, MediaRequest::Offer { legs, sdp, .. } if legs == &[(12, 11)] && sdp.contains("5002"))),
        "{:?}",
        w.media
    );
    w.receive(CALLER, &answer_at(CALLER, &reinvite, 200, Some(&offer(4000, "sendrecv"))));
    w.take_one(CALLER, "ACK");
    assert!(w.media.iter().any(|m| matches!(m, MediaRequest::Answer { legs, .. } if legs == &[(12, 11)])), "{:?}", w.media);
    let done = w.take_one(CALLEE, "NOTIFY");
    assert!(done.contains("SIP/2.0 200 OK") && done.contains("Subscription-State: terminated"), "{done}");
    // The transferor hangs up: only its own dialog ends.
    w.receive(CALLEE, &callee_request("BYE", &invite_b, &b_tag, 3));
    w.take_one(CALLEE, "SIP/2.0 200");
    assert!(w.take(CALLER, "BYE").is_empty() && w.take(CALLEE2, "BYE").is_empty());
    assert_eq!(w.core.active_calls(), 1);
    // The transferee hangs up: the target gets the BYE.
    w.receive(CALLER, &in_dialog("BYE", "call1", 2, &tag, None));
    w.take_one(CALLEE2, "BYE");
    assert_eq!((w.core.active_calls(), w.releases()), (0, 1));
    assert_eq!((w.core.stats().calls.transfers, w.core.stats().calls.transfers_completed), (1, 1));
    assert_eq!(w.core.dialogs(), 0);
}

#[test]
fn a_refer_to_nowhere_is_refused_and_a_busy_target_is_notified_while_the_call_goes_on() {
    let mut w = World::new();
    w.subscriber("carol", Some(CALLEE2));
    let (invite_b, tag, b_tag) = confirmed_call(&mut w);
    w.receive(CALLEE, &callee_refer(&invite_b, &b_tag, 2, "sip:nobody@sip.test", ""));
    w.take_one(CALLEE, "SIP/2.0 404");
    w.receive(CALLEE, &callee_refer(&invite_b, &b_tag, 3, "sip:carol@sip.test", "Refer-Sub: false\r\n"));
    let accepted = w.take_one(CALLEE, "SIP/2.0 202");
    assert!(accepted.contains("Refer-Sub: false"), "{accepted}");
    assert!(w.take(CALLEE, "NOTIFY").is_empty(), "no subscription was asked for");
    let to_carol = w.take_one(CALLEE2, "INVITE");
    w.receive(CALLEE2, &answer_at(CALLEE2, &to_carol, 486, None));
    assert!(w.take(CALLER, "INVITE").is_empty(), "the transferee is left as it was");
    w.receive(CALLEE, &callee_refer(&invite_b, &b_tag, 4, "sip:carol@sip.test", ""));
    w.take_one(CALLEE, "SIP/2.0 202");
    w.take_one(CALLEE, "NOTIFY");
    let to_carol = w.take_one(CALLEE2, "INVITE");
    w.receive(CALLEE2, &answer_at(CALLEE2, &to_carol, 486, None));
    let failed = w.take_one(CALLEE, "NOTIFY");
    assert!(failed.contains("SIP/2.0 486 Busy Here") && failed.contains("terminated"), "{failed}");
    // The original call still works.
    w.receive(CALLER, &in_dialog("BYE", "call1", 2, &tag, None));
    w.take_one(CALLEE, "BYE sip:bob@192.0.2.2:5062");
    assert_eq!((w.core.active_calls(), w.releases()), (0, 1));
}

#[test]
fn an_attended_transfer_joins_the_held_caller_to_the_consulted_party_and_folds_the_calls() {
    let mut w = World::new();
    w.subscriber("carol", Some(CALLEE2));
    // Call 1: alice → bob.
    let (invite_b, tag, b_tag) = confirmed_call(&mut w);
    // Call 2: bob (his phone at CALLEE) consults carol.
    let consult = invite("call2", &offer(6000, "sendrecv").replace("192.0.2.1", "192.0.2.2"))
        .replace(CALLER, CALLEE)
        .replace("INVITE sip:bob@sip.test", "INVITE sip:carol@sip.test")
        .replace("From: \"Alice\" <sip:alice@sip.test>;tag=a1", "From: <sip:bob@sip.test>;tag=bob2")
        .replace("To: <sip:bob@sip.test>", "To: <sip:carol@sip.test>");
    w.receive(CALLEE, &consult);
    w.allocate();
    let to_carol = w.take_one(CALLEE2, "INVITE sip:carol@192.0.2.3:5064");
    w.receive(CALLEE2, &answer_at(CALLEE2, &to_carol, 200, Some(&offer(5002, "sendrecv").replace("192.0.2.1", "192.0.2.3"))));
    w.take_one(CALLEE2, "ACK");
    let ok2 = w.take_one(CALLEE, "SIP/2.0 200");
    let our_tag2 = to_tag(&ok2);
    assert_eq!(w.core.active_calls(), 2);
    // bob transfers alice to carol, replacing his dialog of call 2.
    let target = format!("sip:carol@sip.test?Replaces=call2%3Bto-tag%3D{our_tag2}%3Bfrom-tag%3Dbob2");
    w.receive(CALLEE, &callee_refer(&invite_b, &b_tag, 2, &target, ""));
    w.take_one(CALLEE, "SIP/2.0 202");
    w.take_one(CALLEE, "NOTIFY");
    assert!(w.take(CALLEE2, "INVITE").is_empty(), "carol is not called again: her legs are joined");
    assert!(
        w.media
            .iter()
            .any(|m| matches!(m, MediaRequest::Rejoin { release, legs, .. } if release == &vec![12, 21] && legs == &vec![(22, 11)])),
        "{:?}",
        w.media
    );
    let reinvite = w.take_one(CALLER, "INVITE");
    assert!(reinvite.contains("a=sendrecv") && reinvite.contains("c=IN IP4 198.51.100.9"), "{reinvite}");
    w.receive(CALLER, &answer_at(CALLER, &reinvite, 200, Some(&offer(4000, "sendrecv"))));
    w.take_one(CALLER, "ACK");
    let done = w.take_one(CALLEE, "NOTIFY");
    assert!(
        done.contains("SIP/2.0 200 OK") && done.contains("Call-ID: ") && !done.contains("Call-ID: call2"),
        "in call 1's dialog: {done}"
    );
    assert_eq!(w.core.active_calls(), 1, "the two calls are one");
    // bob hangs up both of his dialogs: each gets 200, nobody else hears of it.
    w.receive(CALLEE, &callee_request("BYE", &invite_b, &b_tag, 3));
    w.take_one(CALLEE, "SIP/2.0 200");
    w.receive(CALLEE, &in_dialog("BYE", "call2", 2, &our_tag2, None).replace(CALLER, CALLEE).replace("tag=a1", "tag=bob2"));
    w.take_one(CALLEE, "SIP/2.0 200");
    assert!(w.take(CALLER, "BYE").is_empty() && w.take(CALLEE2, "BYE").is_empty());
    // alice and carol talk; alice hangs up: carol gets the BYE, and every leg left goes.
    w.receive(CALLER, &in_dialog("BYE", "call1", 2, &tag, None));
    w.take_one(CALLEE2, "BYE");
    assert_eq!(w.core.active_calls(), 0);
    assert!(w.media.contains(&MediaRequest::Release { legs: vec![11, 22] }), "{:?}", w.media);
    assert_eq!(w.core.dialogs(), 0, "no Call-ID of either call is left behind");
    // Both calls left their detail records: the consultation call as transferred, the joined
    // call as completed.
    let cdrs = w.store.cdrs(0).expect("cdrs");
    let causes: Vec<(&str, &str)> = cdrs.iter().filter(|c| c.leg == "call").map(|c| (c.sip_call_id.as_str(), c.cause.as_str())).collect();
    assert_eq!(causes, [("call2", "transferred"), ("call1", "completed")], "{cdrs:?}");
}

#[test]
fn a_refer_whose_replaces_names_no_dialog_gets_481() {
    let mut w = World::new();
    let (invite_b, _, b_tag) = confirmed_call(&mut w);
    w.receive(CALLEE, &callee_refer(&invite_b, &b_tag, 2, "sip:carol@sip.test?Replaces=nosuch%3Bto-tag%3Dx%3Bfrom-tag%3Dy", ""));
    w.take_one(CALLEE, "SIP/2.0 481");
    assert_eq!(w.core.active_calls(), 1);
}

#[test]
fn a_callee_that_hangs_up_while_its_answer_is_in_the_media_plane_leaves_the_caller_a_final_response() {
    let mut w = World::new();
    w.hold_media = true;
    w.receive(CALLER, &invite("race1", &offer(4000, "sendrecv")));
    w.allocate();
    let invite_b = w.take_one(CALLEE, "INVITE");
    w.receive(CALLEE, &answer(&invite_b, 200, Some(&offer(5000, "sendrecv").replace("192.0.2.1", "192.0.2.2"))));
    w.take_one(CALLEE, "ACK");
    assert!(w.take(CALLER, "SIP/2.0 200").is_empty(), "the answer is still in the media plane");
    let b_tag = to_tag(&answer(&invite_b, 200, None));
    w.receive(CALLEE, &callee_request("BYE", &invite_b, &b_tag, 2));
    w.take_one(CALLEE, "SIP/2.0 200");
    w.take_one(CALLER, "SIP/2.0 487");
    assert_eq!((w.core.active_calls(), w.releases()), (0, 1));
}

#[test]
fn a_transferor_that_hangs_up_at_once_leaves_the_transferee_to_the_target() {
    let mut w = World::new();
    w.subscriber("carol", Some(CALLEE2));
    let (invite_b, tag, b_tag) = confirmed_call(&mut w);
    w.receive(CALLEE, &callee_refer(&invite_b, &b_tag, 2, "sip:carol@sip.test", ""));
    w.take_one(CALLEE, "SIP/2.0 202");
    w.take_one(CALLEE, "NOTIFY");
    // The transferor's BYE right after the 202: answered, not relayed.
    w.receive(CALLEE, &callee_request("BYE", &invite_b, &b_tag, 3));
    w.take_one(CALLEE, "SIP/2.0 200");
    assert!(w.take(CALLER, "BYE").is_empty(), "the transferee stays for the target");
    let to_carol = w.take_one(CALLEE2, "INVITE");
    w.receive(CALLEE2, &answer_at(CALLEE2, &to_carol, 200, Some(&offer(5002, "sendrecv").replace("192.0.2.1", "192.0.2.3"))));
    let reinvite = w.take_one(CALLER, "INVITE");
    w.receive(CALLER, &answer_at(CALLER, &reinvite, 200, Some(&offer(4000, "sendrecv"))));
    assert!(w.take(CALLEE, "NOTIFY").is_empty(), "no NOTIFY to a transferor that left");
    w.receive(CALLER, &in_dialog("BYE", "call1", 2, &tag, None));
    w.take_one(CALLEE2, "BYE");
    assert_eq!((w.core.active_calls(), w.releases(), w.core.dialogs()), (0, 1, 0));
}

#[test]
fn a_refer_from_a_non_subscriber_or_to_a_blocked_number_is_refused() {
    let mut w = World::with_routes(TRUNK_ROUTE);
    let (invite_b, tag, b_tag) = confirmed_call(&mut w);
    // The caller is a trusted peer (a trunk), not a subscriber: it may not transfer.
    let refer =
        in_dialog("REFER", "call1", 2, &tag, None).replace("Content-Length: 0", "Refer-To: <sip:+4930555@sip.test>\r\nContent-Length: 0");
    w.receive(CALLER, &refer);
    w.take_one(CALLER, "SIP/2.0 403");
    // bob is a subscriber, but his outgoing screening blocks +4930.
    w.settings("bob", &[("block", "+4930")]);
    w.receive(CALLEE, &callee_refer(&invite_b, &b_tag, 2, "sip:+4930555@sip.test", ""));
    w.take_one(CALLEE, "SIP/2.0 403");
    assert!(w.take(TRUNK, "INVITE").is_empty());
    assert_eq!(w.core.active_calls(), 1);
}

#[test]
fn an_attended_transfer_to_the_caller_of_the_other_call_is_hung_up_in_that_callers_dialog() {
    let mut w = World::new();
    // Call 1: alice → bob. Call 2: carol (from the same trusted address) → bob.
    let (invite_b, _tag, b_tag) = confirmed_call(&mut w);
    let from_carol = invite("call2", &offer(6000, "sendrecv"))
        .replace("From: \"Alice\" <sip:alice@sip.test>;tag=a1", "From: <sip:carol@sip.test>;tag=c2");
    w.receive(CALLER, &from_carol);
    w.allocate();
    let invite_b2 = w.take_one(CALLEE, "INVITE");
    w.receive(CALLEE, &answer(&invite_b2, 200, Some(&offer(5000, "sendrecv").replace("192.0.2.1", "192.0.2.2"))));
    w.take_one(CALLEE, "ACK");
    let ok2 = w.take_one(CALLER, "SIP/2.0 200");
    w.receive(CALLER, &in_dialog("ACK", "call2", 1, &to_tag(&ok2), None).replace("call2ACK1", "ack2").replace("tag=a1", "tag=c2"));
    // bob refers alice to carol, replacing his dialog of call 2 (as bob sees it).
    let our_tag = invite_b2.lines().find(|l| l.starts_with("From:")).and_then(|l| l.split(";tag=").nth(1)).expect("tag").trim().to_owned();
    let bob_call_id = call_id_of(&invite_b2);
    let target = format!("sip:carol@sip.test?Replaces={bob_call_id}%3Bto-tag%3D{our_tag}%3Bfrom-tag%3Db1");
    w.receive(CALLEE, &callee_refer(&invite_b, &b_tag, 2, &target, ""));
    w.take_one(CALLEE, "SIP/2.0 202");
    let reinvite = w.take_one(CALLER, "INVITE");
    w.receive(CALLER, &answer_at(CALLER, &reinvite, 200, Some(&offer(4000, "sendrecv"))));
    assert_eq!(w.core.active_calls(), 1);
    w.sent.clear();
    // Hung up over the API: the BYEs go to alice and to carol, in their own dialogs.
    let id = w.core.calls()[0].call;
    assert!(w.core.handle_hangup(id, w.now, &mut w.store));
    w.pump();
    let byes = w.take(CALLER, "BYE");
    let mut call_ids: Vec<String> = byes.iter().map(|b| call_id_of(b)).collect();
    call_ids.sort();
    assert_eq!(call_ids, vec!["call1".to_owned(), "call2".to_owned()], "{byes:?}");
    assert!(w.take(CALLEE, "BYE").is_empty(), "bob left both calls");
    assert_eq!((w.core.active_calls(), w.core.dialogs()), (0, 0));
}

// ---- media timeouts ----

#[test]
fn a_leg_timed_out_in_the_media_plane_ends_its_call_on_both_sides() {
    use crate::b2bua::UpdateKind;
    let mut w = World::new();
    confirmed_call(&mut w);
    w.sent.clear();
    let _ = updates(&mut w);
    // A leg of no call: nothing.
    w.core.handle_leg_timed_out(77, w.now, &mut w.store);
    w.pump();
    assert_eq!((w.core.active_calls(), w.sent.len()), (1, 0));
    // The callee's phone vanished: its leg (12) timed out.
    w.core.handle_leg_timed_out(12, w.now, &mut w.store);
    w.pump();
    w.take_one(CALLER, "BYE");
    w.take_one(CALLEE, "BYE");
    assert_eq!((w.core.active_calls(), w.releases()), (0, 1));
    assert!(updates(&mut w).iter().any(|u| matches!(u, UpdateKind::Ended { cause: "media-timeout", .. })));
}

#[test]
fn a_ringing_calls_leg_timing_out_does_not_end_it() {
    let mut w = World::new();
    w.receive(CALLER, &invite("ring1", &offer(4000, "sendrecv")));
    w.allocate();
    let invite_b = w.take_one(CALLEE, "INVITE");
    w.receive(CALLEE, &answer(&invite_b, 180, None));
    w.sent.clear();
    // A long ring: nobody sent RTP yet, the media plane timed the legs out.
    w.core.handle_leg_timed_out(11, w.now, &mut w.store);
    w.pump();
    assert_eq!((w.core.active_calls(), w.sent.len()), (1, 0), "{:?}", w.sent);
}

// ---- media plane lost ----

#[test]
fn a_lost_media_plane_ends_its_calls_on_both_sides_and_only_its_own() {
    use crate::b2bua::UpdateKind;
    use crate::media_pool::{Lost, LostPlane};
    let mut w = World::new();
    confirmed_call(&mut w);
    // A second call, still ringing bob.
    w.receive(CALLER, &invite("call2", &offer(4100, "sendrecv")).replace("tag=a1", "tag=a2"));
    w.allocate();
    let invite2 = w.take_one(CALLEE, "INVITE");
    w.receive(CALLEE, &answer(&invite2, 180, None));
    w.sent.clear();
    let _ = updates(&mut w);
    // Another plane (the test's legs are plane 0's), or another epoch of plane 0: nothing ends.
    for (plane, epoch) in [(1, 0), (0, 1)] {
        w.core.handle_media_plane_lost(LostPlane { plane, why: Lost::Restarted, epoch }, w.now, &mut w.store);
        assert_eq!((w.core.active_calls(), w.sent.len()), (2, 0), "plane {plane} epoch {epoch}: {:?}", w.sent);
    }
    w.core.handle_media_plane_lost(LostPlane { plane: 0, why: Lost::Restarted, epoch: 0 }, w.now, &mut w.store);
    w.pump();
    // The answered call: BYE to both sides. The ringing one: 487 to its caller, CANCEL to bob.
    w.take_one(CALLER, "BYE");
    w.take_one(CALLER, "SIP/2.0 487");
    w.take_one(CALLEE, "BYE");
    let cancel = w.take_one(CALLEE, "CANCEL");
    w.receive(CALLEE, &answer(&cancel, 200, None));
    let ended: Vec<_> = updates(&mut w).into_iter().filter(|u| matches!(u, UpdateKind::Ended { .. })).collect();
    assert!(ended.iter().any(|u| matches!(u, UpdateKind::Ended { status: 200, cause: "media", .. })), "{ended:?}");
    assert_eq!(w.core.calls().iter().filter(|c| c.phase == crate::b2bua::Phase::Answered).count(), 0);
}

// ---- abuse limits ----

#[test]
fn scanner_user_agents_are_dropped_unanswered_before_any_transaction() {
    let mut w = World::with_config("");
    let options = "OPTIONS sip:100@sip.test SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.66:5060;branch=z9hG4bKscan\r\n\
                   Max-Forwards: 70\r\nFrom: <sip:100@sip.test>;tag=s\r\nTo: <sip:100@sip.test>\r\nCall-ID: scan\r\n\
                   CSeq: 1 OPTIONS\r\nUser-Agent: friendly-scanner\r\nContent-Length: 0\r\n\r\n";
    w.receive("192.0.2.66:5060", options);
    assert!(w.take("192.0.2.66:5060", "").is_empty(), "no answer to a scanner");
    assert_eq!(w.core.stats().limits.scanners_dropped, 1);
    assert_eq!(w.core.transaction_stats().server_transactions, 0, "{:?}", w.core.transaction_stats());
    w.receive("192.0.2.66:5060", &options.replace("friendly-scanner", "Acme Phone 1.0"));
    w.take_one("192.0.2.66:5060", "SIP/2.0 200");
}

#[test]
fn password_guessing_bans_the_source_while_other_phones_still_register() {
    use sip_core::digest::Algorithm;
    let mut w = World::with_config("[limits]\nauth_failures_per_source = 3\n");
    let wrong = |w: &mut World, cseq: u32| {
        w.receive(PHONE, &register(cseq, None));
        let challenge = challenges_of(&w.take_one(PHONE, "SIP/2.0 401")).remove(0);
        let mut guess = bob_answers(&challenge, Algorithm::Md5, 1);
        guess = guess.replacen("response=\"", "response=\"0", 1);
        w.receive(PHONE, &register(cseq + 1, Some(&guess)));
    };
    for i in 0..3 {
        wrong(&mut w, 10 * i + 1);
        w.take_one(PHONE, "SIP/2.0 403");
    }
    // Banned: even a correct REGISTER from there is not answered now.
    w.receive(PHONE, &register(100, None));
    assert!(w.take(PHONE, "").is_empty(), "a banned source gets no answer");
    assert_eq!((w.core.stats().limits.sources_banned, w.core.stats().limits.rate_limited), (1, 1));
    // Another phone of the same user, elsewhere, registers.
    let other = "192.0.2.8:5060";
    w.receive(other, &register(200, None).replace(PHONE, other));
    let challenge = challenges_of(&w.take_one(other, "SIP/2.0 401")).remove(0);
    w.receive(other, &register(201, Some(&bob_answers(&challenge, Algorithm::Md5, 1))).replace(PHONE, other));
    w.take_one(other, "SIP/2.0 200");
}

#[test]
fn a_user_locked_by_guessing_from_many_addresses_is_refused_even_with_the_right_password() {
    use sip_core::digest::Algorithm;
    let mut w = World::with_config("[limits]\nauth_failures_per_source = 0\nauth_failures_per_user = 4\n");
    for i in 0..4u8 {
        let from = format!("192.0.2.{}:5060", 70 + i);
        w.receive(&from, &register(1, None).replace(PHONE, &from));
        let challenge = challenges_of(&w.take_one(&from, "SIP/2.0 401")).remove(0);
        let guess = bob_answers(&challenge, Algorithm::Md5, 1).replacen("response=\"", "response=\"0", 1);
        w.receive(&from, &register(2, Some(&guess)).replace(PHONE, &from));
        w.take_one(&from, "SIP/2.0 403");
    }
    assert_eq!(w.core.stats().limits.users_locked, 1);
    w.receive(PHONE, &register(3, None));
    let challenge = challenges_of(&w.take_one(PHONE, "SIP/2.0 401")).remove(0);
    w.receive(PHONE, &register(4, Some(&bob_answers(&challenge, Algorithm::Md5, 1))));
    w.take_one(PHONE, "SIP/2.0 403");
    assert_eq!(w.core.stats().registrations, 0);
    // After the lockout the right password works again.
    w.advance(Duration::from_secs(301));
    w.receive(PHONE, &register(5, None));
    let challenge = challenges_of(&w.take_one(PHONE, "SIP/2.0 401")).remove(0);
    w.receive(PHONE, &register(6, Some(&bob_answers(&challenge, Algorithm::Md5, 1))));
    w.take_one(PHONE, "SIP/2.0 200");
}

#[test]
fn register_requiring_path_or_outbound_is_accepted_and_other_options_get_420() {
    use sip_core::digest::Algorithm;
    let mut w = World::with_config("");
    let requiring = |cseq, auth: Option<&str>, tags: &str| {
        register(cseq, auth).replace("Expires: 600\r\n", &format!("Expires: 600\r\nRequire: {tags}\r\n"))
    };
    w.receive(PHONE, &requiring(1, None, "timer"));
    assert!(w.take_one(PHONE, "SIP/2.0 420").contains("Unsupported: timer"));
    w.receive(PHONE, &requiring(2, None, "path, outbound"));
    let challenge = challenges_of(&w.take_one(PHONE, "SIP/2.0 401")).remove(0);
    w.receive(PHONE, &requiring(3, Some(&bob_answers(&challenge, Algorithm::Md5, 1)), "path, outbound"));
    w.take_one(PHONE, "SIP/2.0 200");
}

#[test]
fn a_200_waits_for_the_media_planes_answer_to_the_183_before_it() {
    let mut w = World::new();
    w.hold_media = true;
    w.receive(CALLER, &invite("order", &offer(4000, "sendrecv")));
    w.allocate();
    let invite_b = w.take_one(CALLEE, "INVITE");
    let callee_sdp = offer(5000, "sendrecv").replace("192.0.2.1", "192.0.2.2");
    w.receive(CALLEE, &answer(&invite_b, 183, Some(&callee_sdp)));
    w.receive(CALLEE, &answer(&invite_b, 200, Some(&callee_sdp)));
    w.take_one(CALLEE, "ACK");
    assert!(w.take(CALLER, "SIP/2.0 1").len() <= 1 && w.take(CALLER, "SIP/2.0 2").is_empty(), "nothing overtakes the 183's answer");
    assert_eq!(w.held.len(), 1, "one answer at a time in the media plane");
    w.release_media();
    w.pump();
    let early = w.take_one(CALLER, "SIP/2.0 183");
    assert!(early.contains("m=audio 30000 "), "{early}");
    assert!(w.take(CALLER, "SIP/2.0 200").is_empty(), "the 200's own answer is still in the media plane");
    w.release_media();
    w.pump();
    let ok = w.take_one(CALLER, "SIP/2.0 200");
    assert!(ok.contains("m=audio 30000 ") && ok.contains("c=IN IP4 198.51.100.9"), "{ok}");
}

#[test]
fn an_offer_the_media_plane_cannot_take_gets_488_and_so_does_an_unusable_answer() {
    let mut w = World::new();
    w.receive(CALLER, &invite("bad-offer", &offer(4000, "sendrecv")));
    let refused = MediaError::NotAcceptable("sdp: stream 0: no codec left".into());
    w.core.handle_media_reply(0, MediaReply::Allocated(Err(refused)), w.now, &mut w.store);
    w.pump();
    w.take_one(CALLER, "SIP/2.0 488");
    assert_eq!(w.core.active_calls(), 0);

    // The callee answers with a codec it was never offered: the caller gets 488, the callee a BYE.
    w.receive(CALLER, &invite("bad-answer", &offer(4000, "sendrecv")));
    w.allocate();
    let invite_b = w.take_one(CALLEE, "INVITE");
    let wrong = offer(5000, "sendrecv").replace("192.0.2.1", "192.0.2.2").replace("RTP/AVP 0", "RTP/AVP 18");
    w.receive(CALLEE, &answer(&invite_b, 200, Some(&wrong)));
    w.take_one(CALLEE, "ACK");
    w.take_one(CALLER, "SIP/2.0 488");
    w.take_one(CALLEE, "BYE");
    assert_eq!(w.core.active_calls(), 0);
    assert_eq!(w.releases(), 1, "the call's legs are released");
}

#[test]
fn the_configured_codec_policy_reaches_the_media_plane() {
    let mut w = World::with_config(
        "[auth]\nalgorithms = [\"MD5\"]\n[media]\ntranscode = [\"opus\"]\nstrip = [\"PCMA\"]\ntransport = \"RTP/SAVP\"\n",
    );
    w.receive(CALLER, &invite("policy", &offer(4000, "sendrecv")));
    let Some(MediaRequest::Allocate { policy, active, .. }) = w.media.last().cloned() else { panic!("{:?}", w.media) };
    assert_eq!(active, [true]);
    assert_eq!((policy.transcode, policy.strip, policy.transport.as_str()), (vec!["opus".to_owned()], vec!["PCMA".to_owned()], "RTP/SAVP"));
    w.allocate();
    let invite_b = w.take_one(CALLEE, "INVITE");
    assert!(
        invite_b.contains("RTP/SAVP 0 96")
            && invite_b.contains("opus/48000/2")
            && invite_b.contains("a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:"),
        "{invite_b}"
    );
}

// ---- re-INVITEs without SDP (RFC 3261 §14.1): the other side's 2xx makes the offer ----

/// The caller's offerless re-INVITE relayed and the callee's 2xx with its offer: returns the
/// re-INVITE the callee got and the 200 the caller got.
fn offerless_reinvite(w: &mut World, tag: &str) -> (String, String) {
    w.receive(CALLER, &in_dialog("INVITE", "call1", 2, tag, None));
    let reinvite = w.take_one(CALLEE, "INVITE sip:bob@192.0.2.2:5062");
    assert!(!reinvite.contains("application/sdp") && reinvite.contains("Content-Length: 0"), "no offer on: {reinvite}");
    w.receive(CALLEE, &answer(&reinvite, 200, Some(&offer(5004, "sendrecv").replace("192.0.2.1", "192.0.2.2"))));
    assert!(w.take(CALLEE, "ACK").is_empty(), "the callee's 2xx waits for the caller's answer");
    let ok = w.take_one(CALLER, "SIP/2.0 200");
    (reinvite, ok)
}

#[test]
fn a_reinvite_without_sdp_gets_the_other_sides_offer_in_the_200_and_its_answer_in_the_ack() {
    let mut w = World::new();
    let (_, tag, _) = confirmed_call(&mut w);
    let (_, ok) = offerless_reinvite(&mut w, &tag);
    assert!(
        w.media.iter().any(|m| matches!(m, MediaRequest::Offer { sdp, .. } if sdp.contains("m=audio 5004 "))),
        "the callee's offer went to the media plane: {:?}",
        w.media
    );
    assert!(ok.contains("c=IN IP4 198.51.100.9") && ok.contains("m=audio 30000 "), "the caller gets the anchored offer: {ok}");
    assert!(!ok.contains("192.0.2.2"), "the callee's address stays hidden: {ok}");
    // The 200 is retransmitted until the ACK, which brings the answer.
    w.advance(Duration::from_millis(600));
    assert_eq!(w.take(CALLER, "SIP/2.0 200").len(), 1, "retransmitted at T1");
    w.receive(CALLER, &in_dialog("ACK", "call1", 2, &tag, Some(&offer(4002, "sendrecv"))));
    assert!(
        w.media.iter().any(|m| matches!(m, MediaRequest::Answer { sdp, .. } if sdp.contains("m=audio 4002 "))),
        "the caller's answer went to the media plane: {:?}",
        w.media
    );
    let ack = w.take_one(CALLEE, "ACK sip:bob@192.0.2.2:5062");
    assert!(ack.contains("CSeq: 2 ACK") || ack.contains(" ACK\r\n"), "{ack}");
    assert!(ack.contains("m=audio 30002 ") && ack.contains("c=IN IP4 198.51.100.9"), "the callee's ACK carries the anchored answer: {ack}");
    w.advance(Duration::from_secs(5));
    assert!(w.take(CALLER, "SIP/2.0 200").is_empty(), "the ACK stopped the 200's retransmissions");
    // Nothing is left pending: the next re-INVITE (with an offer) is relayed, not refused with 491.
    w.receive(CALLER, &in_dialog("INVITE", "call1", 3, &tag, Some(&offer(4000, "sendonly"))));
    let hold = w.take_one(CALLEE, "INVITE sip:bob@192.0.2.2:5062");
    assert!(hold.contains("a=sendonly"), "{hold}");
    assert_eq!(w.core.active_calls(), 1);
}

#[test]
fn an_ack_without_the_answer_to_an_offer_made_for_a_reinvite_ends_the_call_on_both_sides() {
    let mut w = World::new();
    let (_, tag, _) = confirmed_call(&mut w);
    offerless_reinvite(&mut w, &tag);
    w.receive(CALLER, &in_dialog("ACK", "call1", 2, &tag, None));
    let ack = w.take_one(CALLEE, "ACK sip:bob@192.0.2.2:5062");
    assert!(!ack.contains("application/sdp"), "{ack}");
    w.take_one(CALLEE, "BYE sip:bob@192.0.2.2:5062");
    w.take_one(CALLER, "BYE sip:");
    assert_eq!(w.releases(), 1, "the legs are released once");
    assert_eq!(w.core.active_calls(), 0);
}

#[test]
fn a_refused_reinvite_without_sdp_is_relayed_and_leaves_the_session_as_it_was() {
    let mut w = World::new();
    let (_, tag, _) = confirmed_call(&mut w);
    w.receive(CALLER, &in_dialog("INVITE", "call1", 2, &tag, None));
    let reinvite = w.take_one(CALLEE, "INVITE sip:bob@192.0.2.2:5062");
    w.receive(CALLEE, &answer(&reinvite, 488, None));
    w.take_one(CALLER, "SIP/2.0 488");
    w.receive(CALLER, &in_dialog("INVITE", "call1", 3, &tag, Some(&offer(4000, "sendonly"))));
    w.take_one(CALLEE, "INVITE sip:bob@192.0.2.2:5062");
    assert_eq!((w.core.active_calls(), w.releases()), (1, 0));
}

#[test]
fn a_2xx_without_an_offer_to_a_reinvite_without_sdp_is_acked_and_the_asking_side_gets_500() {
    let mut w = World::new();
    let (_, tag, _) = confirmed_call(&mut w);
    w.receive(CALLER, &in_dialog("INVITE", "call1", 2, &tag, None));
    let reinvite = w.take_one(CALLEE, "INVITE sip:bob@192.0.2.2:5062");
    w.receive(CALLEE, &answer(&reinvite, 200, None));
    w.take_one(CALLEE, "ACK sip:bob@192.0.2.2:5062");
    w.take_one(CALLER, "SIP/2.0 500");
    assert_eq!((w.core.active_calls(), w.releases()), (1, 0), "the call goes on as it was");
}

// ---- reliable provisional responses (RFC 3262) and UPDATE in the early dialog (RFC 3311) ----

/// `message` with header lines `extra` (each ending in CRLF) before its Content-Length.
fn with_headers(message: &str, extra: &str) -> String {
    message.replacen("Content-Length:", &format!("{extra}Content-Length:"), 1)
}

fn rseq_in(response: &str) -> u32 {
    let line = response.lines().find(|l| l.starts_with("RSeq:")).unwrap_or_else(|| panic!("no RSeq in {response}"));
    line["RSeq:".len()..].trim().parse().expect("RSeq number")
}

/// A caller that supports 100rel, a callee whose 183 with SDP is reliable (RSeq 7), and the
/// caller's PRACK of the reliable 183 we sent it: the callee's INVITE and the caller's To tag.
fn early_answered_call(w: &mut World, call_id: &str) -> (String, String) {
    w.receive(CALLER, &with_headers(&invite(call_id, &offer(4000, "sendrecv")), "Supported: 100rel, replaces\r\n"));
    w.allocate();
    let invite_b = w.take_one(CALLEE, "INVITE");
    assert!(invite_b.contains("Supported: 100rel"), "the callee may send reliable provisional responses: {invite_b}");
    let early = offer(5000, "sendrecv").replace("192.0.2.1", "192.0.2.2");
    w.receive(CALLEE, &with_headers(&answer(&invite_b, 183, Some(&early)), "Require: 100rel\r\nRSeq: 7\r\n"));
    let prack = w.take_one(CALLEE, "PRACK sip:bob@192.0.2.2:5062");
    assert!(prack.contains("RAck: 7 1 INVITE") && prack.contains("CSeq: 2 PRACK"), "{prack}");
    w.receive(CALLEE, &answer(&prack, 200, None));
    let ringing = w.take_one(CALLER, "SIP/2.0 183");
    assert!(ringing.contains("Require: 100rel") && ringing.contains("m=audio 30000 "), "reliable, with the early answer: {ringing}");
    let tag = to_tag(&ringing);
    let rseq = rseq_in(&ringing);
    w.receive(CALLER, &with_headers(&in_dialog("PRACK", call_id, 2, &tag, None), &format!("RAck: {rseq} 1 INVITE\r\n")));
    assert!(w.take_one(CALLER, "SIP/2.0 200").contains("CSeq: 2 PRACK"));
    (invite_b, tag)
}

#[test]
fn a_reliable_183_is_pracked_towards_the_callee_and_sent_to_the_caller_again_until_its_prack() {
    let mut w = World::new();
    w.receive(CALLER, &with_headers(&invite("rel1", &offer(4000, "sendrecv")), "Supported: 100rel\r\n"));
    w.allocate();
    let invite_b = w.take_one(CALLEE, "INVITE");
    let early = offer(5000, "sendrecv").replace("192.0.2.1", "192.0.2.2");
    let reliable_183 = with_headers(&answer(&invite_b, 183, Some(&early)), "Require: 100rel\r\nRSeq: 7\r\n");
    w.receive(CALLEE, &reliable_183);
    let prack = w.take_one(CALLEE, "PRACK");
    assert!(prack.contains("RAck: 7 1 INVITE"), "{prack}");
    w.receive(CALLEE, &answer(&prack, 200, None));
    let ringing = w.take_one(CALLER, "SIP/2.0 183");
    let rseq = rseq_in(&ringing);
    assert!((1..1 << 31).contains(&rseq), "RSeq starts between 1 and 2^31 - 1: {rseq}");
    // Not PRACKed: sent again at T1 and 2·T1 later (0.5 s, 1.5 s).
    w.advance(Duration::from_millis(1600));
    let again = w.take(CALLER, "SIP/2.0 183");
    assert_eq!(again.len(), 2, "{again:?}");
    assert!(again.iter().all(|r| rseq_in(r) == rseq));
    // The callee's 183 again (our PRACK crossed it): neither PRACKed nor passed on twice.
    w.receive(CALLEE, &reliable_183);
    assert!(w.take(CALLEE, "PRACK").is_empty() && w.take(CALLER, "SIP/2.0 183").is_empty());
    // A PRACK naming another response matches nothing; the right one stops the retransmissions.
    let tag = to_tag(&ringing);
    w.receive(CALLER, &with_headers(&in_dialog("PRACK", "rel1", 2, &tag, None), &format!("RAck: {} 1 INVITE\r\n", rseq + 1)));
    w.take_one(CALLER, "SIP/2.0 481");
    w.receive(CALLER, &with_headers(&in_dialog("PRACK", "rel1", 3, &tag, None), &format!("RAck: {rseq} 1 INVITE\r\n")));
    w.take_one(CALLER, "SIP/2.0 200");
    w.advance(Duration::from_secs(10));
    assert!(w.take(CALLER, "SIP/2.0 183").is_empty(), "PRACKed: no more retransmissions");
    w.receive(CALLEE, &answer(&invite_b, 200, Some(&early)));
    w.take_one(CALLEE, "ACK");
    assert!(w.take_one(CALLER, "SIP/2.0 200").contains("CSeq: 1 INVITE"));
}

#[test]
fn an_update_in_the_early_dialog_reaches_the_fork_that_answered_early_through_the_media_plane() {
    let mut w = World::new();
    let (invite_b, tag) = early_answered_call(&mut w, "rel2");
    w.receive(CALLER, &in_dialog("UPDATE", "rel2", 3, &tag, Some(&offer(4002, "sendrecv"))));
    assert!(
        w.media.iter().any(|m| matches!(m, MediaRequest::Offer { sdp, .. } if sdp.contains("m=audio 4002 "))),
        "the caller's new offer went to the media plane: {:?}",
        w.media
    );
    let update = w.take_one(CALLEE, "UPDATE sip:bob@192.0.2.2:5062");
    assert!(update.contains("CSeq: 3 UPDATE") && update.contains("m=audio 30002 "), "in the fork's early dialog, anchored: {update}");
    w.receive(CALLEE, &answer(&update, 200, Some(&offer(5002, "sendrecv").replace("192.0.2.1", "192.0.2.2"))));
    let ok = w.take_one(CALLER, "SIP/2.0 200");
    assert!(ok.contains("CSeq: 3 UPDATE") && ok.contains("m=audio 30000 "), "{ok}");
    assert!(
        w.media.iter().any(|m| matches!(m, MediaRequest::Answer { sdp, .. } if sdp.contains("m=audio 5002 "))),
        "the callee's answer went to the media plane: {:?}",
        w.media
    );
    // The call is answered; the callee's dialog goes on from the early one's CSeq.
    w.receive(CALLEE, &answer(&invite_b, 200, Some(&offer(5002, "sendrecv").replace("192.0.2.1", "192.0.2.2"))));
    w.take_one(CALLEE, "ACK");
    w.take_one(CALLER, "SIP/2.0 200");
    w.receive(CALLER, &in_dialog("ACK", "rel2", 1, &tag, None).replace("rel2ACK1", "rel2ack"));
    w.receive(CALLER, &in_dialog("BYE", "rel2", 4, &tag, None));
    w.take_one(CALLER, "SIP/2.0 200");
    assert!(w.take_one(CALLEE, "BYE").contains("CSeq: 4 BYE"), "after INVITE 1, PRACK 2, UPDATE 3");
    assert_eq!((w.core.active_calls(), w.releases()), (0, 1));
}

#[test]
fn the_callees_update_in_the_early_dialog_reaches_the_caller_through_the_media_plane() {
    let mut w = World::new();
    let (invite_b, tag) = early_answered_call(&mut w, "rel3");
    let body = offer(5004, "sendonly").replace("192.0.2.1", "192.0.2.2");
    let update = callee_request("UPDATE", &invite_b, "b1", 10)
        .replace("Content-Length: 0\r\n\r\n", &format!("Content-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{body}", body.len()));
    w.receive(CALLEE, &update);
    let relayed = w.take_one(CALLER, "UPDATE sip:alice@192.0.2.1:5060");
    assert!(relayed.contains(&format!("tag={tag}")) && relayed.contains("a=sendonly") && relayed.contains("m=audio 30000 "), "{relayed}");
    w.receive(CALLER, &answer_at(CALLER, &relayed, 200, Some(&offer(4000, "recvonly"))));
    let ok = w.take_one(CALLEE, "SIP/2.0 200");
    assert!(ok.contains("CSeq: 10 UPDATE") && ok.contains("m=audio 30002 ") && ok.contains("a=recvonly"), "{ok}");
}

#[test]
fn a_2xx_waits_for_the_prack_of_a_reliable_183_and_without_one_the_call_ends_with_500() {
    let mut w = World::new();
    w.receive(CALLER, &with_headers(&invite("rel4", &offer(4000, "sendrecv")), "Supported: 100rel\r\n"));
    w.allocate();
    let invite_b = w.take_one(CALLEE, "INVITE");
    let early = offer(5000, "sendrecv").replace("192.0.2.1", "192.0.2.2");
    w.receive(CALLEE, &answer(&invite_b, 183, Some(&early)));
    assert!(w.take_one(CALLER, "SIP/2.0 183").contains("RSeq:"), "an early answer to a caller with 100rel goes reliably");
    w.receive(CALLEE, &answer(&invite_b, 200, Some(&early)));
    w.take_one(CALLEE, "ACK");
    assert!(w.take(CALLER, "SIP/2.0 200").is_empty(), "RFC 3262 §3: no 2xx before the PRACK of a 1xx with an answer");
    w.advance(Duration::from_secs(33));
    assert!(!w.take(CALLER, "SIP/2.0 500").is_empty(), "no PRACK within 64·T1: 500");
    assert!(!w.take(CALLEE, "BYE").is_empty(), "the callee that answered is hung up");
    assert!(w.take(CALLER, "SIP/2.0 200").is_empty());
    assert_eq!((w.core.active_calls(), w.releases()), (0, 1));
}

#[test]
fn a_caller_without_100rel_gets_provisional_responses_as_before_and_its_early_update_491() {
    let mut w = World::new();
    w.receive(CALLER, &invite("rel5", &offer(4000, "sendrecv")));
    w.allocate();
    let invite_b = w.take_one(CALLEE, "INVITE");
    assert!(!invite_b.contains("100rel"), "{invite_b}");
    w.receive(CALLEE, &answer(&invite_b, 183, Some(&offer(5000, "sendrecv").replace("192.0.2.1", "192.0.2.2"))));
    let ringing = w.take_one(CALLER, "SIP/2.0 183");
    assert!(!ringing.contains("RSeq") && !ringing.contains("Require:"), "{ringing}");
    w.receive(CALLER, &in_dialog("UPDATE", "rel5", 2, &to_tag(&ringing), Some(&offer(4002, "sendrecv"))));
    w.take_one(CALLER, "SIP/2.0 491");
    assert!(w.take(CALLEE, "UPDATE").is_empty());
}

#[test]
fn a_caller_requiring_100rel_gets_its_180_reliably_too() {
    let mut w = World::new();
    w.receive(CALLER, &with_headers(&invite("rel6", &offer(4000, "sendrecv")), "Require: 100rel\r\n"));
    w.allocate();
    let invite_b = w.take_one(CALLEE, "INVITE");
    w.receive(CALLEE, &answer(&invite_b, 180, None));
    let ringing = w.take_one(CALLER, "SIP/2.0 180");
    assert!(ringing.contains("Require: 100rel") && ringing.contains("RSeq: "), "{ringing}");
}

#[test]
fn a_repeated_2xx_to_a_reinvite_without_sdp_is_absorbed_then_gets_the_same_ack_with_the_answer() {
    let mut w = World::new();
    let (_, tag, _) = confirmed_call(&mut w);
    let (reinvite, _) = offerless_reinvite(&mut w, &tag);
    let callee_ok = answer(&reinvite, 200, Some(&offer(5004, "sendrecv").replace("192.0.2.1", "192.0.2.2")));
    // The callee sends its 2xx again before the caller's ACK: no ACK yet, nothing new to the caller.
    w.receive(CALLEE, &callee_ok);
    assert!(w.take(CALLEE, "ACK").is_empty(), "no ACK without the answer");
    assert!(w.take(CALLER, "SIP/2.0 200").is_empty());
    w.receive(CALLER, &in_dialog("ACK", "call1", 2, &tag, Some(&offer(4002, "sendrecv"))));
    let ack = w.take_one(CALLEE, "ACK");
    assert!(ack.contains("m=audio 30002 "), "{ack}");
    // Our ACK was lost: the 2xx again gets the same ACK, answer included.
    w.receive(CALLEE, &callee_ok);
    assert_eq!(w.take_one(CALLEE, "ACK"), ack);
    assert_eq!(w.core.active_calls(), 1);
}

#[test]
fn a_caller_cancelling_while_the_answered_callees_2xx_waits_for_its_prack_gets_487() {
    let mut w = World::new();
    w.receive(CALLER, &with_headers(&invite("rel7", &offer(4000, "sendrecv")), "Supported: 100rel\r\n"));
    w.allocate();
    let invite_b = w.take_one(CALLEE, "INVITE");
    let early = offer(5000, "sendrecv").replace("192.0.2.1", "192.0.2.2");
    w.receive(CALLEE, &answer(&invite_b, 183, Some(&early)));
    w.take_one(CALLER, "SIP/2.0 183");
    w.receive(CALLEE, &answer(&invite_b, 200, Some(&early)));
    w.take_one(CALLEE, "ACK");
    w.receive(CALLER, &cancel("rel7"));
    assert!(!w.take(CALLER, "SIP/2.0 487").is_empty(), "the caller had no final response: 487");
    assert!(!w.take(CALLEE, "BYE").is_empty(), "the callee that answered is hung up");
    assert_eq!((w.core.active_calls(), w.releases()), (0, 1));
}

#[test]
fn after_a_reliable_early_answer_later_provisional_responses_reach_the_caller_without_sdp() {
    let mut w = World::new();
    let (invite_b, _) = early_answered_call(&mut w, "rel8");
    let early = offer(5000, "sendrecv").replace("192.0.2.1", "192.0.2.2");
    w.receive(CALLEE, &answer(&invite_b, 180, Some(&early)));
    let ringing = w.take_one(CALLER, "SIP/2.0 180");
    assert!(!ringing.contains("application/sdp") && !ringing.contains("RSeq"), "no second offer: {ringing}");
    w.receive(CALLEE, &answer(&invite_b, 200, Some(&early)));
    w.take_one(CALLEE, "ACK");
    let ok = w.take_one(CALLER, "SIP/2.0 200");
    assert!(!ok.contains("application/sdp"), "the answer was given reliably already: {ok}");
}

#[test]
fn a_delayed_offer_requiring_100rel_gets_420() {
    let mut w = World::new();
    let delayed = invite("rel9", "").replace("Content-Type: application/sdp\r\n", "");
    w.receive(CALLER, &with_headers(&delayed, "Require: 100rel\r\n"));
    assert!(w.take_one(CALLER, "SIP/2.0 420").contains("Unsupported: 100rel"));
}
