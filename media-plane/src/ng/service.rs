//! ng commands carried out through the media plane's own API (the code gRPC runs), so calls made
//! over ng and legs made over gRPC share the cores, the port pool and its limit, and show in
//! `GetStats` and the metrics alike.
//!
//! rtpengine's model, as its clients rely on it: a call (Call-ID) has a *monologue* per SIP party
//! (its tag). `offer` names the offerer by `from-tag`; the answerer is the `to-tag` if given
//! (a re-INVITE), else the party the offer goes to. Each monologue has one leg per `m=` line,
//! the leg facing that party; `offer` and `answer` are the media plane's Offer and Answer over
//! those pairs. `answer` names the offerer again by `from-tag` (Kamailio sends the From tag of the
//! reply) and the answerer by `to-tag`; a later answer to the same offer (a 200 after a 183, or
//! another fork's) answers it again. `delete` ends the whole call (no delete delay).
//!
//! Calls end on their own as rtpengine's do: after [`NgTimeouts::timeout`] without media on any
//! of their legs (the media plane's `media_timeout_secs`), [`NgTimeouts::silent`] when a leg is
//! on hold (not send-receive), [`NgTimeouts::offer`] while the first offer waits for its answer.
//! A sweep (every [`NgTimeouts::sweep_every`]) checks; the legs themselves are created with a
//! media timeout beyond all three, so the media plane never deletes an ng leg under its call.
//!
//! Commands of one call run one at a time (a lock per call); different calls run side by side.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use proto::v1;
use proto::v1::media_plane_server::MediaPlane as _;
use tonic::{Code, Status};

use super::bencode::{unframe, FrameError, Value};
use super::cache::{Lookup, ReplyCache};
use super::request::{Command, Request, RequestError};
use crate::api::MediaService;
use crate::engine::Event;

/// Most `m=` lines of one description the media plane anchors.
const MAX_STREAMS: usize = 16;
/// Most parties (tags) in one call.
const MAX_PARTIES: usize = 8;
/// Longest cookie answered (rtpengine's clients use short ones).
pub const MAX_COOKIE: usize = 128;
/// A reply larger than this would not fit a UDP datagram: `list` stops short of it.
const MAX_REPLY: usize = 60_000;

/// When calls end without a `delete`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NgTimeouts {
    /// No media on any leg of an answered call (rtpengine's `timeout`).
    pub timeout: Duration,
    /// No media on a call with a leg on hold (rtpengine's `silent-timeout`).
    pub silent: Duration,
    /// No answer to the call's first offer (rtpengine's `offer-timeout`).
    pub offer: Duration,
}

impl NgTimeouts {
    /// rtpengine's defaults, with `timeout` the media plane's media timeout.
    pub fn with_timeout(timeout: Duration) -> Self {
        Self { timeout, silent: Duration::from_secs(3600), offer: Duration::from_secs(3600) }
    }

    /// How often calls are checked.
    pub fn sweep_every(&self) -> Duration {
        (self.timeout / 4).clamp(Duration::from_millis(250), Duration::from_secs(5))
    }

    /// The media timeout of the legs: beyond every call timeout, so the sweep ends calls whole.
    fn leg_timeout(&self) -> Duration {
        self.timeout.max(self.silent).max(self.offer) + Duration::from_secs(60)
    }
}
/// Replies remembered by cookie: how many, and how many bytes.
const CACHE_CAPACITY: usize = 100_000;
const CACHE_BYTES: usize = 64 << 20;

/// How a command failed: an error (`result: error`) or load (`result: load limit` for clients
/// that support it, so they try another media plane).
#[derive(Debug, Clone, PartialEq, Eq)]
enum Failure {
    Error(String),
    Load(String),
}

impl From<RequestError> for Failure {
    fn from(e: RequestError) -> Self {
        Self::Error(e.to_string())
    }
}

impl Failure {
    /// The same failure as an error: `load limit` makes the client try another media plane,
    /// which helps only an offer that makes a new call.
    fn into_error(self) -> Self {
        match self {
            Self::Load(why) => Self::Error(why),
            e => e,
        }
    }
}

/// A media-plane refusal: port exhaustion and full queues are load, the rest errors.
fn media_failure(what: &str, s: &Status) -> Failure {
    match s.code() {
        Code::ResourceExhausted | Code::Unavailable => Failure::Load(format!("Ran out of ports or capacity ({what}: {})", s.message())),
        _ => Failure::Error(format!("{what}: {}", s.message())),
    }
}

/// Counters of the ng listener (for `statistics` and the metrics).
#[derive(Debug, Default)]
pub struct NgCounters {
    pub requests: AtomicU64,
    pub errors: AtomicU64,
    pub load_limited: AtomicU64,
    pub resent: AtomicU64,
    pub undecodable: AtomicU64,
    pub calls_created: AtomicU64,
    pub calls_timed_out: AtomicU64,
    /// Datagrams dropped because too many requests were running (the client resends).
    pub overloaded: AtomicU64,
}

/// The ng side of the media plane. Cheap to clone.
#[derive(Debug, Clone)]
pub struct NgService {
    inner: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    media: MediaService,
    table: Mutex<Table>,
    cache: Mutex<ReplyCache>,
    /// Most ng calls at once (0: only the port pool limits).
    max_sessions: usize,
    timeouts: NgTimeouts,
    counters: NgCounters,
}

type CallRef = Arc<tokio::sync::Mutex<Call>>;

#[derive(Debug, Default)]
struct Table {
    calls: HashMap<String, CallRef>,
    /// Each ng leg's call-id (a leg id is never reused; a call-id may be, by a later call).
    legs: HashMap<u64, String>,
}

#[derive(Debug)]
struct Call {
    created: u64,
    last_signal: u64,
    /// `last_signal` on the monotonic clock, for the timeouts.
    signalled: Instant,
    monologues: Vec<Monologue>,
    /// The offer and its parties (offerer, answerer, streams); `answered` once an answer came
    /// (a later answer to the same offer answers it again).
    offered: Option<(usize, usize, usize)>,
    answered: bool,
    /// Recording asked for (`record-call`, `start recording`), and the recording once it runs.
    record: bool,
    recording: Option<u64>,
    /// Deleted (a command that waited on the lock finds it so).
    gone: bool,
}

#[derive(Debug)]
struct Monologue {
    /// The party's tag; empty until the answer names the answerer.
    tag: String,
    label: Option<String>,
    created: u64,
    /// The leg facing this party, per `m=` line.
    legs: Vec<u64>,
}

fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

fn int(n: u64) -> Value {
    Value::Int(i64::try_from(n).unwrap_or(i64::MAX))
}

impl Call {
    fn new(now: u64) -> Self {
        Self {
            created: now,
            last_signal: now,
            signalled: Instant::now(),
            monologues: Vec::new(),
            offered: None,
            answered: false,
            record: false,
            recording: None,
            gone: false,
        }
    }

    fn find(&self, tag: &str) -> Option<usize> {
        self.monologues.iter().position(|m| m.tag == tag)
    }

    fn find_or_add(&mut self, tag: &str, now: u64) -> Result<usize, Failure> {
        if let Some(i) = self.find(tag) {
            return Ok(i);
        }
        if self.monologues.len() >= MAX_PARTIES {
            return Err(Failure::Error(format!("Too many parties in this call (at most {MAX_PARTIES} tags)")));
        }
        self.monologues.push(Monologue { tag: tag.to_owned(), label: None, created: now, legs: Vec::new() });
        Ok(self.monologues.len() - 1)
    }

    fn signal(&mut self) {
        self.last_signal = unix_now();
        self.signalled = Instant::now();
    }

    fn legs(&self) -> impl Iterator<Item = u64> + '_ {
        self.monologues.iter().flat_map(|m| m.legs.iter().copied())
    }
}

/// `sdp` with every `c=` address but a hold address (0.0.0.0, ::) replaced by `ip`: the
/// `SIP-source-address` flag, for phones behind NAT that write their private address.
pub fn replace_connection(sdp: &str, ip: IpAddr) -> String {
    let family = if ip.is_ipv4() { "IP4" } else { "IP6" };
    let mut out = String::with_capacity(sdp.len() + 16);
    for line in sdp.split_inclusive('\n') {
        let body = line.trim_end_matches(['\r', '\n']);
        let eol = &line[body.len()..];
        let addr = body.strip_prefix("c=IN ").and_then(|r| r.split_whitespace().nth(1));
        match addr.map(|a| a.split('/').next().unwrap_or(a)) {
            Some(a) if a.parse::<IpAddr>().is_ok_and(|a| !a.is_unspecified()) => {
                out.push_str("c=IN ");
                out.push_str(family);
                out.push(' ');
                out.push_str(&ip.to_string());
                out.push_str(eol);
            }
            _ => out.push_str(line),
        }
    }
    out
}

/// `m=` lines in a description.
fn count_streams(sdp: &str) -> usize {
    sdp.lines().filter(|l| l.starts_with("m=")).count()
}

fn ok(mut fields: Vec<(&str, Value)>) -> Value {
    fields.push(("result", Value::str("ok")));
    Value::dict(fields)
}

impl NgService {
    pub fn new(media: MediaService, max_sessions: usize, timeouts: NgTimeouts) -> Self {
        Self {
            inner: Arc::new(Shared {
                media,
                table: Mutex::new(Table::default()),
                cache: Mutex::new(ReplyCache::new(CACHE_CAPACITY, CACHE_BYTES)),
                max_sessions,
                timeouts,
                counters: NgCounters::default(),
            }),
        }
    }

    pub fn timeouts(&self) -> NgTimeouts {
        self.inner.timeouts
    }

    /// Requests the reply cache could not keep (it was full).
    pub fn cache_full(&self) -> u64 {
        self.cache().full
    }

    /// Counts a datagram dropped before it was read (too many requests running).
    pub fn count_overloaded(&self) {
        self.inner.counters.overloaded.fetch_add(1, Ordering::Relaxed);
    }

    pub fn counters(&self) -> &NgCounters {
        &self.inner.counters
    }

    /// Calls open now.
    pub fn calls(&self) -> usize {
        self.table().calls.len()
    }

    fn table(&self) -> std::sync::MutexGuard<'_, Table> {
        // A panic while holding the lock cannot leave the table half-changed in a way that
        // matters more than losing the process's calls: carry on with it.
        self.inner.table.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn cache(&self) -> std::sync::MutexGuard<'_, ReplyCache> {
        self.inner.cache.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// One datagram in, the reply datagram out (`None`: nothing to send, e.g. no cookie to
    /// answer under, or a resend of a request still running).
    pub async fn handle(&self, datagram: &[u8], peer: SocketAddr, now: Instant) -> Option<Arc<[u8]>> {
        let c = &self.inner.counters;
        let (cookie, msg) = match unframe(datagram) {
            Ok((cookie, _)) if cookie.len() > MAX_COOKIE => {
                c.undecodable.fetch_add(1, Ordering::Relaxed);
                return None;
            }
            Ok(x) => x,
            Err(FrameError::NoCookie) => {
                c.undecodable.fetch_add(1, Ordering::Relaxed);
                return None;
            }
            Err(FrameError::Bencode(e)) => {
                c.undecodable.fetch_add(1, Ordering::Relaxed);
                let cookie = datagram.split(|b| *b == b' ').next().unwrap_or_default();
                if cookie.len() > MAX_COOKIE {
                    return None;
                }
                let reply = error_reply(&format!("Could not decode dictionary: {e}"));
                return Some(framed(cookie, &reply));
            }
        };
        match self.cache().begin(peer, cookie, now) {
            Lookup::Done(reply) => {
                c.resent.fetch_add(1, Ordering::Relaxed);
                return Some(reply);
            }
            Lookup::Running => {
                c.resent.fetch_add(1, Ordering::Relaxed);
                return None;
            }
            Lookup::New => {}
        }
        c.requests.fetch_add(1, Ordering::Relaxed);
        let reply = match Request::parse(&msg) {
            Err(e) => {
                c.errors.fetch_add(1, Ordering::Relaxed);
                error_reply(&e.to_string())
            }
            Ok(req) => match self.run(&req).await {
                Ok(v) => v,
                Err(Failure::Load(why)) if req.load_limit => {
                    c.load_limited.fetch_add(1, Ordering::Relaxed);
                    Value::dict([("result", Value::str("load limit")), ("message", Value::str(&why))])
                }
                Err(Failure::Load(why) | Failure::Error(why)) => {
                    c.errors.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(command = req.command.name(), call_id = %req.call_id, error = %why, "ng command refused");
                    error_reply(&why)
                }
            },
        };
        let out = framed(cookie, &reply);
        self.cache().finish(peer, cookie, out.clone());
        Some(out)
    }

    async fn run(&self, req: &Request) -> Result<Value, Failure> {
        let other = match req.command {
            Command::Ping => return Ok(Value::dict([("result", Value::str("pong"))])),
            Command::Offer => return self.offer(req).await,
            _ => self.other(req).await,
        };
        other.map_err(Failure::into_error)
    }

    async fn other(&self, req: &Request) -> Result<Value, Failure> {
        match req.command {
            Command::Ping | Command::Offer => Err(Failure::Error("internal: not another command".into())),
            Command::Answer => self.answer(req).await,
            Command::Delete => self.delete(req).await,
            Command::Query => self.query(req).await,
            Command::List => Ok(self.list(req.limit)),
            Command::Statistics => self.statistics().await,
            Command::PlayMedia => self.play_media(req).await,
            Command::StopMedia => self.stop_media(req).await,
            Command::PlayDtmf => self.play_dtmf(req).await,
            Command::StartRecording => self.start_recording(req).await,
            Command::StopRecording => self.stop_recording(req).await,
        }
    }

    /// The call of an offer, made if new (within the session limit), and whether it is new.
    fn call_for_offer(&self, call_id: &str) -> Result<(CallRef, bool), Failure> {
        let mut t = self.table();
        if let Some(call) = t.calls.get(call_id) {
            return Ok((call.clone(), false));
        }
        if self.inner.max_sessions > 0 && t.calls.len() >= self.inner.max_sessions {
            return Err(Failure::Load("Parallel session limit reached".into()));
        }
        let call = Arc::new(tokio::sync::Mutex::new(Call::new(unix_now())));
        t.calls.insert(call_id.to_owned(), call.clone());
        self.inner.counters.calls_created.fetch_add(1, Ordering::Relaxed);
        Ok((call, true))
    }

    fn existing(&self, call_id: &str) -> Result<CallRef, Failure> {
        self.table().calls.get(call_id).cloned().ok_or_else(|| Failure::Error("Unknown call-id".into()))
    }

    /// Forgets call `arc` (and its legs) in the table, if the call-id still names it; its legs
    /// are the caller's to delete.
    fn forget(&self, call_id: &str, arc: &CallRef, call: &Call) {
        let mut t = self.table();
        if t.calls.get(call_id).is_some_and(|c| Arc::ptr_eq(c, arc)) {
            t.calls.remove(call_id);
        }
        for leg in call.legs() {
            t.legs.remove(&leg);
        }
    }

    /// Ends a call: deleted (`gone`), out of the table, its legs deleted; their final stats.
    async fn end(&self, call_id: &str, arc: &CallRef, call: &mut Call) -> Vec<v1::LegStats> {
        call.gone = true;
        self.forget(call_id, arc, call);
        let legs: Vec<u64> = call.legs().collect();
        self.delete_legs(legs).await
    }

    async fn create_leg(&self, call_id: &str) -> Result<u64, Failure> {
        let media_timeout_ms = u32::try_from(self.inner.timeouts.leg_timeout().as_millis()).unwrap_or(u32::MAX);
        // Legs latch (rtpengine's symmetric RTP): media goes back where it comes from.
        let req = v1::CreateLegRequest { call_id: call_id.to_owned(), latch: true, media_timeout_ms, ..Default::default() };
        let leg = self
            .inner
            .media
            .create_leg(tonic::Request::new(req))
            .await
            .map_err(|s| media_failure("creating a leg", &s))?
            .into_inner()
            .leg_id;
        self.table().legs.insert(leg, call_id.to_owned());
        Ok(leg)
    }

    async fn delete_legs(&self, legs: impl IntoIterator<Item = u64>) -> Vec<v1::LegStats> {
        let leg_ids: Vec<u64> = legs.into_iter().collect();
        {
            let mut table = self.table();
            for leg in &leg_ids {
                table.legs.remove(leg);
            }
        }
        // A leg that timed out is gone already (listed as unknown).
        match self.inner.media.delete_legs(tonic::Request::new(v1::DeleteLegsRequest { leg_ids })).await {
            Ok(r) => r.into_inner().stats,
            Err(_) => Vec::new(),
        }
    }

    async fn offer(&self, req: &Request) -> Result<Value, Failure> {
        let sdp_in = req.sdp.as_deref().unwrap_or_default();
        if req.flags.ice_force {
            return Err(Failure::Error("ICE: force is not supported: the media plane does not do ICE (use ICE=remove)".into()));
        }
        let sdp = match (req.flags.sip_source_address, req.received_from) {
            (true, Some(ip)) => replace_connection(sdp_in, ip),
            _ => sdp_in.to_owned(),
        };
        let streams = count_streams(&sdp);
        if streams == 0 || streams > MAX_STREAMS {
            return Err(Failure::Error(format!("sdp: {streams} m= lines (1 to {MAX_STREAMS} are anchored)")));
        }
        let (call_arc, new_call) = self.call_for_offer(&req.call_id)?;
        let mut call = call_arc.lock().await;
        // Only an offer that makes a call can go to another media plane: for the rest, load is
        // an error.
        let outcome = self.offer_locked(req, sdp, streams, &call_arc, &mut call).await;
        outcome.map_err(|f| if new_call { f } else { f.into_error() })
    }

    async fn offer_locked(&self, req: &Request, sdp: String, streams: usize, arc: &CallRef, call: &mut Call) -> Result<Value, Failure> {
        if call.gone {
            return Err(Failure::Error("Call-ID was deleted while this offer waited".into()));
        }
        let now = unix_now();
        let parties = call.monologues.len();
        let sides = (|| {
            let offerer = call.find_or_add(&req.from_tag, now)?;
            let answerer = match req.to_tag.as_deref() {
                Some(tag) if tag != req.from_tag => call.find_or_add(tag, now)?,
                _ => match (0..call.monologues.len()).find(|i| *i != offerer) {
                    Some(i) => i,
                    None => call.find_or_add("", now)?,
                },
            };
            Ok((offerer, answerer))
        })();
        let (offerer, answerer) = match sides {
            Ok(x) => x,
            Err(f) => {
                self.undo_offer(&req.call_id, arc, call, Vec::new(), parties).await;
                return Err(f);
            }
        };
        if let Some(label) = &req.flags.label {
            if let Some(m) = call.monologues.get_mut(offerer) {
                m.label = Some(label.clone());
            }
        }
        // The legs this offer needs and does not have yet; undone if the offer fails.
        let mut made = Vec::new();
        for side in [offerer, answerer] {
            for i in 0..streams {
                if call.monologues.get(side).is_some_and(|m| m.legs.len() > i) {
                    continue;
                }
                match self.create_leg(&req.call_id).await {
                    Ok(leg) => {
                        made.push(leg);
                        if let Some(m) = call.monologues.get_mut(side) {
                            m.legs.push(leg);
                        }
                    }
                    Err(f) => {
                        self.undo_offer(&req.call_id, arc, call, made, parties).await;
                        return Err(f);
                    }
                }
            }
        }
        let pairs = pairs(call, offerer, answerer, streams);
        let codec = &req.flags.codec;
        let offer = v1::OfferRequest {
            sdp,
            streams: pairs,
            policy: Some(v1::CodecPolicy {
                strip: codec.strip.clone(),
                mask: codec.mask.clone(),
                transcode: codec.transcode.clone(),
                keep: codec.keep.clone(),
            }),
            transport_protocol: req.flags.transport_protocol.clone(),
        };
        match self.inner.media.offer(tonic::Request::new(offer)).await {
            Ok(r) => {
                call.offered = Some((offerer, answerer, streams));
                call.answered = false;
                call.record |= req.flags.record_call;
                call.signal();
                Ok(ok(vec![("sdp", Value::str(&r.into_inner().sdp))]))
            }
            Err(st) => {
                self.undo_offer(&req.call_id, arc, call, made, parties).await;
                Err(media_failure("offer", &st))
            }
        }
    }

    /// After a failed offer: deletes the legs it made and the parties it added (the call had
    /// `parties`), and the call if nothing is left of it.
    async fn undo_offer(&self, call_id: &str, arc: &CallRef, call: &mut Call, made: Vec<u64>, parties: usize) {
        for m in &mut call.monologues {
            m.legs.retain(|l| !made.contains(l));
        }
        self.delete_legs(made).await;
        call.monologues.truncate(parties);
        if call.monologues.iter().all(|m| m.legs.is_empty()) {
            call.gone = true;
            self.forget(call_id, arc, call);
        }
    }

    async fn answer(&self, req: &Request) -> Result<Value, Failure> {
        let sdp_in = req.sdp.as_deref().unwrap_or_default();
        let to_tag = req.to_tag.as_deref().unwrap_or_default();
        let sdp = match (req.flags.sip_source_address, req.received_from) {
            (true, Some(ip)) => replace_connection(sdp_in, ip),
            _ => sdp_in.to_owned(),
        };
        let call_arc = self.existing(&req.call_id)?;
        let mut call = call_arc.lock().await;
        if call.gone {
            return Err(Failure::Error("Unknown call-id".into()));
        }
        let offerer = call.find(&req.from_tag).ok_or_else(|| Failure::Error("Unknown from-tag".into()))?;
        // The offer this answers; a second answer to it (a 200 after a 183, another fork's, a
        // resent 200) answers it again.
        let (answerer, streams) = match call.offered {
            Some((o, a, n)) if o == offerer => (a, n),
            _ => return Err(Failure::Error("No offer from this from-tag to answer".into())),
        };
        let pairs = pairs(&call, offerer, answerer, streams);
        let answer = v1::AnswerRequest { sdp, streams: pairs };
        let out = self.inner.media.answer(tonic::Request::new(answer)).await.map_err(|s| media_failure("answer", &s))?.into_inner().sdp;
        // The answerer is known by its tag from now on (a forked call: the branch that answered).
        if let Some(m) = call.monologues.get_mut(answerer) {
            m.tag = to_tag.to_owned();
            if let Some(label) = &req.flags.label {
                m.label = Some(label.clone());
            }
        }
        call.answered = true;
        call.record |= req.flags.record_call;
        call.signal();
        let mut fields = vec![("sdp", Value::str(&out))];
        if let Err(why) = self.record_if_asked(&req.call_id, &mut call).await {
            fields.push(("warning", Value::str(&format!("the call is not recorded: {why}"))));
        }
        Ok(ok(fields))
    }

    async fn delete(&self, req: &Request) -> Result<Value, Failure> {
        // As rtpengine: an unknown call is deleted already (a late or resent BYE); an error only
        // with the `fatal` flag.
        let missing = || {
            if req.fatal {
                Err(Failure::Error("Call-ID not found or tags didn't match".into()))
            } else {
                Ok(ok(vec![("warning", Value::str("Call-ID not found or tags didn't match"))]))
            }
        };
        let Some(call_arc) = self.table().calls.get(&req.call_id).cloned() else { return missing() };
        let mut call = call_arc.lock().await;
        if call.gone {
            return missing();
        }
        let stats = self.end(&req.call_id, &call_arc, &mut call).await;
        Ok(ok(vec![("created", int(call.created)), ("last signal", int(call.last_signal)), ("totals", totals(stats.iter()))]))
    }

    async fn query(&self, req: &Request) -> Result<Value, Failure> {
        let call_arc = self.existing(&req.call_id)?;
        let call = call_arc.lock().await;
        if call.gone {
            return Err(Failure::Error("Unknown call-id".into()));
        }
        let legs: Vec<u64> = call.legs().collect();
        let stats = self
            .inner
            .media
            .get_stats(tonic::Request::new(v1::GetStatsRequest { leg_ids: legs, totals_only: false }))
            .await
            .map_err(|s| media_failure("stats", &s))?
            .into_inner()
            .legs;
        let by_leg: HashMap<u64, &v1::LegStats> = stats.iter().map(|s| (s.leg_id, s)).collect();
        let mut tags = Vec::new();
        for (i, m) in call.monologues.iter().enumerate() {
            let other = call.monologues.iter().enumerate().find(|(j, _)| *j != i).map(|(_, o)| o.tag.clone()).unwrap_or_default();
            let medias: Vec<Value> = m
                .legs
                .iter()
                .enumerate()
                .map(|(index, leg)| {
                    let s = by_leg.get(leg);
                    let mut stream = vec![("local port", int(u64::from(s.and_then(|s| s.local.as_ref()).map_or(0, |e| e.port))))];
                    if let Some(r) = s.and_then(|s| s.remote.as_ref()) {
                        let family = if r.ip.contains(':') { "IPv6" } else { "IPv4" };
                        stream.push((
                            "endpoint",
                            Value::dict([("family", Value::str(family)), ("address", Value::str(&r.ip)), ("port", int(u64::from(r.port)))]),
                        ));
                    }
                    stream.push(("stats", packet_stats(s.map_or((0, 0, 0), |s| (s.rtp_packets_in, s.rtp_bytes_in, drops(s))))));
                    let mut media = vec![
                        ("index", int(index as u64 + 1)),
                        ("type", Value::str("audio")),
                        ("streams", Value::List(vec![Value::dict(stream)])),
                    ];
                    if let Some(c) = s.and_then(|s| s.codec.as_ref()) {
                        media.push(("codec", Value::str(&format!("{}/{}", c.name, c.rate))));
                    }
                    Value::dict(media)
                })
                .collect();
            let mut fields = vec![
                ("tag", Value::str(&m.tag)),
                ("created", int(m.created)),
                ("in dialogue with", Value::str(&other)),
                ("medias", Value::List(medias)),
            ];
            if let Some(l) = &m.label {
                fields.push(("label", Value::str(l)));
            }
            tags.push((m.tag.as_bytes().to_vec(), Value::dict(fields)));
        }
        Ok(ok(vec![
            ("created", int(call.created)),
            ("last signal", int(call.last_signal)),
            ("tags", Value::Dict(tags.into_iter().collect())),
            ("totals", totals(stats.iter())),
        ]))
    }

    fn list(&self, limit: usize) -> Value {
        let t = self.table();
        let mut ids: Vec<&String> = t.calls.keys().collect();
        ids.sort();
        // At most `limit`, and no more than fits one datagram.
        let mut size = 0;
        let calls = ids
            .into_iter()
            .take(limit)
            .take_while(|c| {
                size += c.len() + 6;
                size < MAX_REPLY
            })
            .map(|c| Value::str(c))
            .collect();
        ok(vec![("calls", Value::List(calls))])
    }

    async fn statistics(&self) -> Result<Value, Failure> {
        let reports = self.inner.media.core_reports().await.map_err(|s| media_failure("stats", &s))?;
        let legs: u64 = reports.iter().map(|r| r.leg_count as u64).sum();
        let free_ports: u64 = reports.iter().map(|r| r.free_ports as u64).sum();
        let packets: u64 = reports.iter().map(|r| r.counters.packets_in).sum();
        let calls = self.calls() as u64;
        let c = &self.inner.counters;
        Ok(ok(vec![(
            "statistics",
            Value::dict([
                (
                    "currentstatistics",
                    Value::dict([
                        ("sessionsown", int(calls)),
                        ("sessionsforeign", int(0)),
                        ("sessionstotal", int(calls)),
                        // Every leg of the media plane, made over ng or gRPC: one port pool.
                        ("legs", int(legs)),
                        ("freeports", int(free_ports)),
                    ]),
                ),
                (
                    "totalstatistics",
                    Value::dict([
                        ("totalsessions", int(c.calls_created.load(Ordering::Relaxed))),
                        ("timeoutsessions", int(c.calls_timed_out.load(Ordering::Relaxed))),
                        ("packetsin", int(packets)),
                        ("requests", int(c.requests.load(Ordering::Relaxed))),
                        ("errors", int(c.errors.load(Ordering::Relaxed))),
                        ("loadlimited", int(c.load_limited.load(Ordering::Relaxed))),
                    ]),
                ),
            ]),
        )]))
    }

    /// The first leg (first `m=` line) of each party `req` selects: the one `from-tag` names, or
    /// every party with the `all` flag; with `peers`, the parties facing the selected one instead
    /// (DTMF is played *from* the selected party, so into the streams towards the others).
    async fn participants(&self, req: &Request, peers: bool) -> Result<Vec<u64>, Failure> {
        let call_arc = self.existing(&req.call_id)?;
        let call = call_arc.lock().await;
        let chosen: Vec<&Monologue> = if req.all {
            call.monologues.iter().collect()
        } else {
            let i = call.find(&req.from_tag).ok_or_else(|| Failure::Error("No participant with this from-tag".into()))?;
            call.monologues.iter().enumerate().filter(|(j, _)| (*j == i) != peers).map(|(_, m)| m).collect()
        };
        let legs: Vec<u64> = chosen.iter().filter_map(|m| m.legs.first().copied()).collect();
        if legs.is_empty() {
            return Err(Failure::Error("No media stream for this participant yet".into()));
        }
        Ok(legs)
    }

    /// Starts the recording of an answered call that asked for one: its first stream, the
    /// offerer in channel 0 and the answerer in channel 1, to `ng/<created>-<call-id>.wav` under
    /// the recording directory.
    async fn record_if_asked(&self, call_id: &str, call: &mut Call) -> Result<(), String> {
        let Some((offerer, answerer, _)) = call.offered.filter(|_| call.record && call.answered && call.recording.is_none()) else {
            return Ok(());
        };
        let leg = |side: usize| call.monologues.get(side).and_then(|m| m.legs.first()).copied();
        let (Some(a), Some(b)) = (leg(offerer), leg(answerer)) else { return Err("no stream".into()) };
        let name: String =
            call_id.chars().take(100).map(|c| if c.is_ascii_alphanumeric() || "._-".contains(c) { c } else { '_' }).collect();
        let file = format!("ng/{}-{name}.wav", call.created);
        let r = v1::StartRecordingRequest { leg_ids: vec![a, b], file, ..Default::default() };
        let started = self.inner.media.start_recording(tonic::Request::new(r)).await.map_err(|s| s.message().to_owned())?;
        call.recording = Some(started.into_inner().recording_id);
        Ok(())
    }

    async fn start_recording(&self, req: &Request) -> Result<Value, Failure> {
        let call_arc = self.existing(&req.call_id)?;
        let mut call = call_arc.lock().await;
        if call.gone {
            return Err(Failure::Error("Unknown call-id".into()));
        }
        call.record = true;
        self.record_if_asked(&req.call_id, &mut call).await.map_err(|why| Failure::Error(format!("start recording: {why}")))?;
        Ok(ok(Vec::new()))
    }

    async fn stop_recording(&self, req: &Request) -> Result<Value, Failure> {
        let call_arc = self.existing(&req.call_id)?;
        let mut call = call_arc.lock().await;
        call.record = false;
        if let Some(id) = call.recording.take() {
            // Already ended (its legs went) is fine.
            let _ = self.inner.media.stop_recording(tonic::Request::new(v1::StopRecordingRequest { recording_id: id })).await;
        }
        Ok(ok(Vec::new()))
    }

    async fn play_media(&self, req: &Request) -> Result<Value, Failure> {
        let file = req.file.clone().ok_or_else(|| Failure::Error("No media file specified (file= under the prompt directory)".into()))?;
        if req.repeat_times != 1 {
            return Err(Failure::Error("repeat-times: only 1 is supported (gRPC Play loops music on hold)".into()));
        }
        let mut duration = 0;
        for leg in self.participants(req, false).await? {
            let play = v1::PlayRequest { leg_id: leg, source: Some(v1::play_request::Source::File(file.clone())), r#loop: false };
            let r = self.inner.media.play(tonic::Request::new(play)).await.map_err(|s| media_failure("play media", &s))?;
            duration = duration.max(r.into_inner().duration_ms);
        }
        Ok(ok(vec![("duration", int(u64::from(duration)))]))
    }

    async fn stop_media(&self, req: &Request) -> Result<Value, Failure> {
        for leg in self.participants(req, false).await? {
            self.inner
                .media
                .stop_play(tonic::Request::new(v1::StopPlayRequest { leg_id: leg }))
                .await
                .map_err(|s| media_failure("stop media", &s))?;
        }
        Ok(ok(Vec::new()))
    }

    async fn play_dtmf(&self, req: &Request) -> Result<Value, Failure> {
        let digit = req.digit.map(String::from).unwrap_or_default();
        for leg in self.participants(req, !req.all).await? {
            let dtmf = v1::InjectDtmfRequest { leg_id: leg, digits: digit.clone(), duration_ms: req.duration_ms, pause_ms: req.pause_ms };
            self.inner.media.inject_dtmf(tonic::Request::new(dtmf)).await.map_err(|s| media_failure("play DTMF", &s))?;
        }
        Ok(ok(Vec::new()))
    }

    /// A leg the media plane deleted for its media timeout (ng legs have one beyond every call
    /// timeout, so this is a leg the sweep missed): its call ends.
    async fn leg_timed_out(&self, leg: u64) {
        let Some(call_id) = self.table().legs.remove(&leg) else { return };
        let Some(arc) = self.table().calls.get(&call_id).cloned() else { return };
        let mut call = arc.lock().await;
        if !call.gone && call.legs().any(|l| l == leg) {
            self.end(&call_id, &arc, &mut call).await;
            self.inner.counters.calls_timed_out.fetch_add(1, Ordering::Relaxed);
            tracing::info!(call_id = %call_id, "ng call ended: a leg timed out in the media plane");
        }
    }

    /// Follows the media plane's events (leg timeouts) until the channel closes.
    pub async fn follow_events(self, mut events: tokio::sync::broadcast::Receiver<crate::driver::CoreEvent>) {
        use tokio::sync::broadcast::error::RecvError;
        loop {
            match events.recv().await {
                Ok((_, Event::TimedOut { leg, .. })) => self.leg_timed_out(leg).await,
                Ok(_) | Err(RecvError::Lagged(_)) => {}
                Err(RecvError::Closed) => return,
            }
        }
    }

    /// Ends calls their timeouts have passed for, every [`NgTimeouts::sweep_every`], until
    /// `stop` completes.
    pub async fn sweep_calls(self, stop: impl std::future::Future<Output = ()>) {
        let mut tick = tokio::time::interval(self.inner.timeouts.sweep_every());
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tokio::pin!(stop);
        loop {
            tokio::select! {
                _ = tick.tick() => self.sweep(Instant::now()).await,
                () = &mut stop => return,
            }
        }
    }

    /// One sweep: a call ends when none of its legs has had media for its timeout and it has
    /// not been signalled for as long (a leg the media plane no longer has counts as idle).
    pub async fn sweep(&self, now: Instant) {
        let (calls, legs): (Vec<(String, CallRef)>, Vec<u64>) = {
            let t = self.table();
            (t.calls.iter().map(|(id, c)| (id.clone(), c.clone())).collect(), t.legs.keys().copied().collect())
        };
        if calls.is_empty() {
            return;
        }
        let Ok(r) = self.inner.media.get_stats(tonic::Request::new(v1::GetStatsRequest { leg_ids: legs, totals_only: false })).await else {
            return;
        };
        let stats: HashMap<u64, v1::LegStats> = r.into_inner().legs.into_iter().map(|l| (l.leg_id, l)).collect();
        let t = self.inner.timeouts;
        for (id, arc) in calls {
            let mut call = arc.lock().await;
            if call.gone {
                continue;
            }
            let quiet = now.saturating_duration_since(call.signalled);
            let held = call.legs().any(|l| stats.get(&l).is_some_and(|s| s.direction != v1::Direction::Sendrecv as i32));
            let limit = if !call.answered && call.offered.is_some() {
                t.offer
            } else if held {
                t.silent
            } else {
                t.timeout
            };
            let idle = call
                .legs()
                .map(|l| match stats.get(&l) {
                    Some(s) => s.idle_ms.map_or(quiet, Duration::from_millis),
                    None => Duration::MAX,
                })
                .min()
                .unwrap_or(quiet);
            if idle >= limit && quiet >= limit {
                self.end(&id, &arc, &mut call).await;
                self.inner.counters.calls_timed_out.fetch_add(1, Ordering::Relaxed);
                tracing::info!(call_id = %id, after = ?limit, "ng call ended: no media");
            }
        }
    }
}

/// The leg pairs (offerer's, answerer's) of the first `streams` streams.
fn pairs(call: &Call, offerer: usize, answerer: usize, streams: usize) -> Vec<v1::StreamLegs> {
    let legs = |side: usize, i: usize| call.monologues.get(side).and_then(|m| m.legs.get(i)).copied().unwrap_or(0);
    (0..streams).map(|i| v1::StreamLegs { offerer_leg: legs(offerer, i), answerer_leg: legs(answerer, i) }).collect()
}

fn drops(s: &v1::LegStats) -> u64 {
    s.drops.as_ref().map_or(0, |d| {
        d.malformed
            + d.wrong_source
            + d.no_route
            + d.send_failed
            + d.queue_full
            + d.unknown_payload_type
            + d.undecodable
            + d.srtp_auth
            + d.srtp_replay
            + d.srtp_other
    })
}

fn packet_stats((packets, bytes, errors): (u64, u64, u64)) -> Value {
    Value::dict([("packets", int(packets)), ("bytes", int(bytes)), ("errors", int(errors))])
}

/// rtpengine's `totals`: RTP and RTCP received over the call's legs.
fn totals<'a>(stats: impl Iterator<Item = &'a v1::LegStats>) -> Value {
    let (mut rtp, mut rtcp) = ((0, 0, 0), (0, 0, 0));
    for s in stats {
        rtp = (rtp.0 + s.rtp_packets_in, rtp.1 + s.rtp_bytes_in, rtp.2 + drops(s));
        rtcp.0 += s.rtcp_packets_in;
    }
    Value::dict([("RTP", packet_stats(rtp)), ("RTCP", packet_stats(rtcp))])
}

fn error_reply(why: &str) -> Value {
    Value::dict([("result", Value::str("error")), ("error-reason", Value::str(why))])
}

fn framed(cookie: &[u8], reply: &Value) -> Arc<[u8]> {
    let mut out = Vec::with_capacity(cookie.len() + 256);
    out.extend_from_slice(cookie);
    out.push(b' ');
    reply.encode_into(&mut out);
    out.into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sip_source_address_replaces_connection_addresses_but_not_hold() {
        let sdp = "v=0\r\no=- 1 1 IN IP4 10.0.0.5\r\nc=IN IP4 10.0.0.5\r\nt=0 0\r\nm=audio 4000 RTP/AVP 0\r\nc=IN IP4 10.0.0.6/127\r\n\
                   m=audio 4002 RTP/AVP 0\r\nc=IN IP4 0.0.0.0\r\n";
        let out = replace_connection(sdp, "192.0.2.1".parse().unwrap());
        assert_eq!(
            out,
            "v=0\r\no=- 1 1 IN IP4 10.0.0.5\r\nc=IN IP4 192.0.2.1\r\nt=0 0\r\nm=audio 4000 RTP/AVP 0\r\nc=IN IP4 192.0.2.1\r\n\
             m=audio 4002 RTP/AVP 0\r\nc=IN IP4 0.0.0.0\r\n"
        );
        assert_eq!(replace_connection("c=IN IP4 10.0.0.1\n", "::1".parse().unwrap()), "c=IN IP6 ::1\n");
        assert_eq!(replace_connection("c=IN IP4 bogus\nc=IN\n", "::1".parse().unwrap()), "c=IN IP4 bogus\nc=IN\n");
        assert_eq!(count_streams(sdp), 2);
    }
}
