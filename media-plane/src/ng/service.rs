//! ng commands carried out through the media plane's own API (the code gRPC runs), so calls made
//! over ng and legs made over gRPC share the cores, the port pool and its limit, and show in
//! `GetStats` and the metrics alike.
//!
//! rtpengine's model, as its clients rely on it: a call (Call-ID) has a *monologue* per SIP party
//! (its tag). `offer` names the offerer by `from-tag`; the answerer is the `to-tag` if given
//! (a re-INVITE), else the party the offer goes to. Each monologue has one leg per `m=` line,
//! the leg facing that party; `offer` and `answer` are the media plane's Offer and Answer over
//! those pairs. `answer` names the offerer again by `from-tag` (Kamailio sends the From tag of the
//! reply) and the answerer by `to-tag`. `delete` ends the whole call (no delete delay).
//!
//! Commands of one call run one at a time (a lock per call); different calls run side by side.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

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
/// Replies remembered by cookie.
const CACHE_CAPACITY: usize = 100_000;

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
    counters: NgCounters,
}

#[derive(Debug, Default)]
struct Table {
    calls: HashMap<String, Arc<tokio::sync::Mutex<Call>>>,
    /// Each live leg's call, and each call's live legs: a call whose legs all timed out is gone.
    legs: HashMap<u64, String>,
    live: HashMap<String, usize>,
}

#[derive(Debug)]
struct Call {
    created: u64,
    last_signal: u64,
    monologues: Vec<Monologue>,
    /// The offer waiting for its answer: offerer, answerer, streams.
    pending: Option<(usize, usize, usize)>,
    /// The last answer (to-tag, SDP in, SDP out): a resent 200 OK is answered again.
    last_answer: Option<(String, String, String)>,
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
        Self { created: now, last_signal: now, monologues: Vec::new(), pending: None, last_answer: None, gone: false }
    }

    fn find(&self, tag: &str) -> Option<usize> {
        self.monologues.iter().position(|m| m.tag == tag)
    }

    fn find_or_add(&mut self, tag: &str, now: u64) -> usize {
        self.find(tag).unwrap_or_else(|| {
            self.monologues.push(Monologue { tag: tag.to_owned(), label: None, created: now, legs: Vec::new() });
            self.monologues.len() - 1
        })
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
    pub fn new(media: MediaService, max_sessions: usize) -> Self {
        Self {
            inner: Arc::new(Shared {
                media,
                table: Mutex::new(Table::default()),
                cache: Mutex::new(ReplyCache::new(CACHE_CAPACITY)),
                max_sessions,
                counters: NgCounters::default(),
            }),
        }
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
            Ok(x) => x,
            Err(FrameError::NoCookie) => {
                c.undecodable.fetch_add(1, Ordering::Relaxed);
                return None;
            }
            Err(FrameError::Bencode(e)) => {
                c.undecodable.fetch_add(1, Ordering::Relaxed);
                let cookie = datagram.split(|b| *b == b' ').next().unwrap_or_default();
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
        match req.command {
            Command::Ping => Ok(Value::dict([("result", Value::str("pong"))])),
            Command::Offer => self.offer(req).await,
            Command::Answer => self.answer(req).await,
            Command::Delete => self.delete(req).await,
            Command::Query => self.query(req).await,
            Command::List => Ok(self.list(req.limit)),
            Command::Statistics => self.statistics().await,
            Command::PlayMedia => self.play_media(req).await,
            Command::StopMedia => self.stop_media(req).await,
            Command::PlayDtmf => self.play_dtmf(req).await,
        }
    }

    /// The call of an offer, made if new (within the session limit).
    fn call_for_offer(&self, call_id: &str) -> Result<Arc<tokio::sync::Mutex<Call>>, Failure> {
        let mut t = self.table();
        if let Some(call) = t.calls.get(call_id) {
            return Ok(call.clone());
        }
        if self.inner.max_sessions > 0 && t.calls.len() >= self.inner.max_sessions {
            return Err(Failure::Load("Parallel session limit reached".into()));
        }
        let call = Arc::new(tokio::sync::Mutex::new(Call::new(unix_now())));
        t.calls.insert(call_id.to_owned(), call.clone());
        t.live.insert(call_id.to_owned(), 0);
        self.inner.counters.calls_created.fetch_add(1, Ordering::Relaxed);
        Ok(call)
    }

    fn existing(&self, call_id: &str) -> Result<Arc<tokio::sync::Mutex<Call>>, Failure> {
        self.table().calls.get(call_id).cloned().ok_or_else(|| Failure::Error("Unknown call-id".into()))
    }

    /// Forgets a call (and its legs) in the table; its legs are the caller's to delete.
    fn forget(&self, call_id: &str, call: &Call) {
        let mut t = self.table();
        t.calls.remove(call_id);
        t.live.remove(call_id);
        for leg in call.legs() {
            t.legs.remove(&leg);
        }
    }

    async fn create_leg(&self, call_id: &str, latch: bool) -> Result<u64, Failure> {
        let req = v1::CreateLegRequest { call_id: call_id.to_owned(), latch, ..Default::default() };
        let leg = self
            .inner
            .media
            .create_leg(tonic::Request::new(req))
            .await
            .map_err(|s| media_failure("creating a leg", &s))?
            .into_inner()
            .leg_id;
        let mut t = self.table();
        t.legs.insert(leg, call_id.to_owned());
        *t.live.entry(call_id.to_owned()).or_default() += 1;
        Ok(leg)
    }

    async fn delete_legs(&self, legs: impl IntoIterator<Item = u64>) -> Vec<v1::LegStats> {
        let mut stats = Vec::new();
        for leg in legs {
            {
                let mut t = self.table();
                if let Some(call) = t.legs.remove(&leg) {
                    if let Some(n) = t.live.get_mut(&call) {
                        *n = n.saturating_sub(1);
                    }
                }
            }
            // A leg that timed out is gone already.
            if let Ok(r) = self.inner.media.delete_leg(tonic::Request::new(v1::DeleteLegRequest { leg_id: leg })).await {
                stats.extend(r.into_inner().stats);
            }
        }
        stats
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
        let call_arc = self.call_for_offer(&req.call_id)?;
        let mut call = call_arc.lock().await;
        if call.gone {
            return Err(Failure::Error("Call-ID was deleted while this offer waited".into()));
        }
        let now = unix_now();
        let offerer = call.find_or_add(&req.from_tag, now);
        let answerer = match req.to_tag.as_deref() {
            Some(tag) if tag != req.from_tag => call.find_or_add(tag, now),
            _ => match (0..call.monologues.len()).find(|i| *i != offerer) {
                Some(i) => i,
                None => call.find_or_add("", now),
            },
        };
        if let Some(label) = &req.flags.label {
            if let Some(m) = call.monologues.get_mut(offerer) {
                m.label = Some(label.clone());
            }
        }
        // The legs this offer needs and does not have yet; undone if the offer fails.
        let mut made = Vec::new();
        let latch = !req.flags.asymmetric;
        for side in [offerer, answerer] {
            for i in 0..streams {
                if call.monologues.get(side).is_some_and(|m| m.legs.len() > i) {
                    continue;
                }
                match self.create_leg(&req.call_id, latch).await {
                    Ok(leg) => {
                        made.push(leg);
                        if let Some(m) = call.monologues.get_mut(side) {
                            m.legs.push(leg);
                        }
                    }
                    Err(f) => {
                        self.undo_offer(&req.call_id, &mut call, made).await;
                        return Err(f);
                    }
                }
            }
        }
        let pairs = pairs(&call, offerer, answerer, streams);
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
                call.pending = Some((offerer, answerer, streams));
                call.last_signal = now;
                let mut fields = vec![("sdp", Value::str(&r.into_inner().sdp))];
                if req.flags.record_call {
                    fields.push(("warning", Value::str("record-call is not supported: the call is not recorded")));
                }
                Ok(ok(fields))
            }
            Err(s) => {
                self.undo_offer(&req.call_id, &mut call, made).await;
                Err(media_failure("offer", &s))
            }
        }
    }

    /// After a failed offer: deletes the legs it made, and the call if it has no legs left.
    async fn undo_offer(&self, call_id: &str, call: &mut Call, made: Vec<u64>) {
        for m in &mut call.monologues {
            m.legs.retain(|l| !made.contains(l));
        }
        self.delete_legs(made).await;
        call.monologues.retain(|m| !m.legs.is_empty());
        call.pending = None;
        if call.monologues.is_empty() {
            call.gone = true;
            self.forget(call_id, call);
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
        let (answerer, streams) = match call.pending {
            Some((o, a, n)) if o == offerer => (a, n),
            _ => {
                // A resent 2xx: the same answer again.
                return match &call.last_answer {
                    Some((tag, sdp_was, out)) if tag == to_tag && *sdp_was == sdp => Ok(ok(vec![("sdp", Value::str(out))])),
                    _ => Err(Failure::Error("No offer from this from-tag is waiting for an answer".into())),
                };
            }
        };
        let pairs = pairs(&call, offerer, answerer, streams);
        let answer = v1::AnswerRequest { sdp: sdp.clone(), streams: pairs };
        let out = self.inner.media.answer(tonic::Request::new(answer)).await.map_err(|s| media_failure("answer", &s))?.into_inner().sdp;
        // The answerer is known by its tag from now on (a forked call: the branch that answered).
        if let Some(m) = call.monologues.get_mut(answerer) {
            m.tag = to_tag.to_owned();
        }
        if let Some(label) = &req.flags.label {
            if let Some(m) = call.monologues.get_mut(answerer) {
                m.label = Some(label.clone());
            }
        }
        call.pending = None;
        call.last_signal = unix_now();
        call.last_answer = Some((to_tag.to_owned(), sdp, out.clone()));
        Ok(ok(vec![("sdp", Value::str(&out))]))
    }

    async fn delete(&self, req: &Request) -> Result<Value, Failure> {
        let call_arc =
            self.table().calls.get(&req.call_id).cloned().ok_or_else(|| Failure::Error("Call-ID not found or tags didn't match".into()))?;
        let mut call = call_arc.lock().await;
        if call.gone {
            return Err(Failure::Error("Call-ID not found or tags didn't match".into()));
        }
        call.gone = true;
        self.forget(&req.call_id, &call);
        let legs: Vec<u64> = call.legs().collect();
        let stats = self.delete_legs(legs).await;
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
        ok(vec![("calls", Value::List(ids.into_iter().take(limit).map(|c| Value::str(c)).collect()))])
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

    /// A leg the media plane deleted for its media timeout: the call goes with its last leg (as
    /// rtpengine ends calls on media timeout).
    pub fn leg_timed_out(&self, leg: u64) {
        let mut t = self.table();
        let Some(call_id) = t.legs.remove(&leg) else { return };
        let left = t.live.get_mut(&call_id).map(|n| {
            *n = n.saturating_sub(1);
            *n
        });
        if left == Some(0) {
            t.calls.remove(&call_id);
            t.live.remove(&call_id);
            self.inner.counters.calls_timed_out.fetch_add(1, Ordering::Relaxed);
            tracing::info!(call_id = %call_id, "ng call ended: its media timed out");
        }
    }

    /// Follows the media plane's events (timeouts) until the channel closes.
    pub async fn follow_events(self, mut events: tokio::sync::broadcast::Receiver<crate::driver::CoreEvent>) {
        use tokio::sync::broadcast::error::RecvError;
        loop {
            match events.recv().await {
                Ok((_, Event::TimedOut { leg, .. })) => self.leg_timed_out(leg),
                Ok(_) => {}
                Err(RecvError::Lagged(_)) => self.sweep().await,
                Err(RecvError::Closed) => return,
            }
        }
    }

    /// Drops the table's legs the media plane no longer has (after missed events).
    async fn sweep(&self) {
        let known: Vec<u64> = self.table().legs.keys().copied().collect();
        let Ok(r) =
            self.inner.media.get_stats(tonic::Request::new(v1::GetStatsRequest { leg_ids: known.clone(), totals_only: false })).await
        else {
            return;
        };
        let alive: std::collections::HashSet<u64> = r.into_inner().legs.iter().map(|l| l.leg_id).collect();
        for leg in known.into_iter().filter(|l| !alive.contains(l)) {
            self.leg_timed_out(leg);
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
