//! Several media planes behind the one interface the call logic uses ([`MediaRequest`] in,
//! [`MediaReply`] out): [`MediaPool`] picks a media plane for each new call by load, sends every
//! later request for the call's legs to the plane that has them, watches each plane's health and
//! notices a plane that restarted (its legs are gone) or stays unreachable.
//!
//! Leg and conference ids are the media plane's own with the plane's index (bits 48–55) and its
//! *epoch* (bits 40–47, bumped each time the plane is lost) set on top, so the call logic keeps
//! treating ids as opaque numbers. A media plane numbers its legs with a core in the top byte and
//! a counter below: a counter that reaches bit 40 (10¹² legs) is refused rather than confused.
//! An id of an earlier epoch names a leg that went with the plane's restart: releasing it is a
//! no-op (a new leg with the same number may be another call's), anything else with it fails.
//!
//! A call's legs all live on one media plane: a request that would bridge or offer across two
//! (a conference room joining calls placed on different planes) fails `Unavailable` with both
//! planes named; the call logic answers it as any media failure. (Blind transfers, pickups and
//! parks make their new legs on the call's plane; the B2BUA refuses an attended transfer across
//! planes itself, with [`plane_of`], before anything changes.)

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use proto::v1;

use crate::media::{MediaClient, MediaCounters, MediaError, MediaReply, MediaRequest};

const PLANE_SHIFT: u32 = 48;
const EPOCH_SHIFT: u32 = 40;
/// Bits the pool owns in an id (plane and epoch).
const POOL_BITS: u64 = 0xFFFF << EPOCH_SHIFT;
/// How often each media plane's health and load are read.
pub const HEALTH_INTERVAL: Duration = Duration::from_secs(1);

/// The plane index of a pool id.
pub fn plane_of(id: u64) -> usize {
    ((id >> PLANE_SHIFT) & 0xFF) as usize
}

fn epoch_of(id: u64) -> u8 {
    ((id >> EPOCH_SHIFT) & 0xFF) as u8
}

fn local(id: u64) -> u64 {
    id & !POOL_BITS
}

/// What the health watch last saw of a media plane.
#[derive(Debug, Clone, Default)]
pub struct Health {
    /// It answered its last health check.
    pub up: bool,
    /// Legs it reported then, plus the legs allocated on it since (so that calls arriving
    /// between two checks spread instead of all going to the plane that looked emptiest).
    pub legs: u64,
    /// Its instance: a media plane draws a new one each time it starts.
    pub boot_id: u64,
    /// The current epoch of its ids.
    pub epoch: u8,
    /// Since when it has not answered (while down).
    pub down_since: Option<Instant>,
    /// Its calls were ended for this outage already.
    pub lost_reported: bool,
    /// Times it was lost (restarted, or unreachable past the limit).
    pub lost: u64,
}

/// A media plane of the pool.
#[derive(Debug)]
struct Plane {
    client: MediaClient,
    health: Mutex<Health>,
}

/// Why a media plane's calls were ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lost {
    /// It answers with another instance id: its legs are gone.
    Restarted,
    /// It has not answered for the configured limit.
    Unreachable,
}

impl Lost {
    pub fn as_str(self) -> &'static str {
        match self {
            Lost::Restarted => "restarted",
            Lost::Unreachable => "unreachable",
        }
    }
}

/// A media plane lost: every id for which `matches` holds is gone with it.
#[derive(Debug, Clone, Copy)]
pub struct LostPlane {
    pub plane: usize,
    pub why: Lost,
    /// The epoch its ended calls' ids carry.
    pub(crate) epoch: u8,
}

impl LostPlane {
    /// `id` (a leg or conference of the pool) was on the lost plane instance.
    pub fn matches(&self, id: u64) -> bool {
        id != 0 && plane_of(id) == self.plane && epoch_of(id) == self.epoch
    }
}

/// Labels of the request-latency histogram.
#[derive(Debug, Clone, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
pub struct RequestLabels {
    /// The media request (allocate, offer, answer, join, …).
    pub request: &'static str,
}

/// The pool: one or more media planes.
#[derive(Debug, Clone)]
pub struct MediaPool {
    planes: Arc<Vec<Plane>>,
    /// How long a plane may stay unreachable before its calls are ended (`None`: never; its
    /// calls are ended if it comes back as another instance).
    lost_after: Option<Duration>,
    /// Latency of each media request as the call logic waits for it (gRPC round trips
    /// included), by request.
    pub latency: Family<RequestLabels, Histogram>,
    /// Requests refused because their legs are on two planes, or on a plane lost since.
    pub refused: Arc<AtomicU64>,
}

fn latency_histogram() -> Histogram {
    // 100 µs … ~3.3 s.
    Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(0.0001, 2.0, 16))
}

impl MediaPool {
    /// A pool of the media planes at `uris` (each connects lazily and reconnects by itself).
    pub fn new(uris: &[String], media_timeout_ms: u32, rpc_timeout: Duration, lost_after: Option<Duration>) -> Result<Self, String> {
        if uris.is_empty() || uris.len() > 256 {
            return Err(format!("media.grpc: {} media planes (1 to 256)", uris.len()));
        }
        let planes = uris
            .iter()
            .map(|uri| Ok(Plane { client: MediaClient::new(uri, media_timeout_ms, rpc_timeout)?, health: Mutex::new(Health::default()) }))
            .collect::<Result<Vec<_>, String>>()?;
        Ok(MediaPool {
            planes: Arc::new(planes),
            lost_after,
            latency: Family::new_with_constructor(latency_histogram),
            refused: Arc::new(AtomicU64::new(0)),
        })
    }

    /// How many media planes.
    pub fn len(&self) -> usize {
        self.planes.len()
    }

    /// Never: a pool has at least one media plane.
    pub fn is_empty(&self) -> bool {
        self.planes.is_empty()
    }

    /// Each media plane's address and health.
    pub fn health(&self) -> Vec<(String, Health)> {
        self.planes.iter().map(|p| (p.client.uri().to_owned(), lock(&p.health).clone())).collect()
    }

    /// The media planes' counters, summed.
    pub fn counters(&self) -> MediaCounters {
        let sum = MediaCounters::default();
        for p in self.planes.iter() {
            p.client.counters.add_to(&sum);
        }
        sum
    }

    /// The media plane for a new call: the least loaded of those up (the first on a tie); if
    /// none is up, the least loaded of all (it may be back: the request says).
    fn choose(&self) -> usize {
        let loads: Vec<(bool, u64)> = self.planes.iter().map(|p| lock(&p.health)).map(|h| (h.up, h.legs)).collect();
        let any_up = loads.iter().any(|&(up, _)| up);
        loads.iter().enumerate().filter(|(_, &(up, _))| up || !any_up).min_by_key(|(_, &(_, legs))| legs).map_or(0, |(i, _)| i)
    }

    /// Executes `request` on the media plane its legs are on (a new call's on the least
    /// loaded); all but releases return their reply.
    pub async fn execute(&self, request: MediaRequest) -> Option<MediaReply> {
        let name = request_name(&request);
        let started = Instant::now();
        let reply = self.route(request).await;
        self.latency.get_or_create(&RequestLabels { request: name }).observe(started.elapsed().as_secs_f64());
        reply
    }

    async fn route(&self, request: MediaRequest) -> Option<MediaReply> {
        // Requests made of independent per-leg operations go to each leg's plane.
        if let MediaRequest::Release { legs } = &request {
            for (plane, legs) in self.split(legs) {
                self.planes[plane].client.execute(MediaRequest::Release { legs }).await;
            }
            return None;
        }
        if let MediaRequest::Rejoin { release, legs, sdp, policy } = request {
            for (plane, legs) in self.split(&release) {
                self.planes[plane].client.execute(MediaRequest::Release { legs }).await;
            }
            return Box::pin(self.route(MediaRequest::Offer { legs, sdp, policy })).await;
        }
        let mut ids = Vec::new();
        request_ids(&request, &mut |id| ids.push(id));
        let plane = match self.plane_of_ids(&ids) {
            Ok(Some(plane)) => plane,
            Ok(None) => self.choose(),
            Err(why) => {
                self.refused.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(%why, "a media request refused");
                return failure(&request, MediaError::Unavailable(why));
            }
        };
        let epoch = lock(&self.planes[plane].health).epoch;
        let is_allocate = matches!(request, MediaRequest::Allocate { .. });
        let mut request = request;
        map_request(&mut request, &mut |id| if id == 0 { 0 } else { local(id) });
        let mut reply = self.planes[plane].client.execute(request).await?;
        let tag = ((plane as u64) << PLANE_SHIFT) | (u64::from(epoch) << EPOCH_SHIFT);
        let mut out_of_range = None;
        map_reply(&mut reply, &mut |id| {
            if id == 0 {
                0
            } else if id & POOL_BITS != 0 {
                out_of_range = Some(id);
                0
            } else {
                id | tag
            }
        });
        if let Some(id) = out_of_range {
            // Numbers that reach the pool's bits: the media plane has made 10¹² legs since it
            // started. Refused (what it made is released) rather than confused with another's.
            let mut made = Vec::new();
            map_reply(&mut reply, &mut |id| {
                made.push(id);
                id
            });
            self.planes[plane].client.execute(MediaRequest::Release { legs: made.iter().map(|&id| local(id)).collect() }).await;
            let why = format!("media plane {} numbered a leg {id} beyond the pool's range: restart it", self.planes[plane].client.uri());
            return failure_reply(&reply, MediaError::Unavailable(why));
        }
        if is_allocate {
            if let MediaReply::Allocated(Ok(a)) = &reply {
                let legs = a.streams.iter().flatten().count() as u64 * 2;
                lock(&self.planes[plane].health).legs += legs;
            }
        }
        Some(reply)
    }

    /// Legs grouped by plane, those of an earlier epoch (gone with a restart) left out.
    fn split(&self, legs: &[u64]) -> BTreeMap<usize, Vec<u64>> {
        let mut by_plane: BTreeMap<usize, Vec<u64>> = BTreeMap::new();
        for &leg in legs.iter().filter(|&&l| l != 0) {
            let plane = plane_of(leg);
            let Some(p) = self.planes.get(plane) else { continue };
            if lock(&p.health).epoch == epoch_of(leg) {
                by_plane.entry(plane).or_default().push(local(leg));
            }
        }
        by_plane
    }

    /// The one plane of `ids` (`None` if there are none), or why they cannot be served.
    fn plane_of_ids(&self, ids: &[u64]) -> Result<Option<usize>, String> {
        let mut found: Option<usize> = None;
        for &id in ids.iter().filter(|&&id| id != 0) {
            let plane = plane_of(id);
            let Some(p) = self.planes.get(plane) else { return Err(format!("id {id} names no media plane")) };
            if lock(&p.health).epoch != epoch_of(id) {
                return Err(format!("media plane {} lost id {} (it restarted or was unreachable)", p.client.uri(), local(id)));
            }
            match found {
                Some(other) if other != plane => {
                    return Err(format!(
                        "the legs are on two media planes ({} and {}): they cannot be joined",
                        self.planes[other].client.uri(),
                        p.client.uri()
                    ))
                }
                _ => found = Some(plane),
            }
        }
        Ok(found)
    }

    /// Reads every plane's health and load once; returns the planes lost since the last check
    /// (their calls are to be ended), their epoch bumped.
    pub async fn check(&self, now: Instant) -> Vec<LostPlane> {
        let answers = futures_util::future::join_all(self.planes.iter().map(|p| p.client.totals())).await;
        let mut lost = Vec::new();
        for (index, (plane, answer)) in self.planes.iter().zip(answers).enumerate() {
            let mut h = lock(&plane.health);
            let why = match answer {
                Ok((legs, boot_id)) => {
                    let restarted = h.boot_id != 0 && boot_id != h.boot_id;
                    if !h.up {
                        tracing::info!(media_plane = plane.client.uri(), legs, "media plane up");
                    }
                    h.up = true;
                    h.legs = legs;
                    h.down_since = None;
                    h.lost_reported = false;
                    h.boot_id = boot_id;
                    // A new instance: whatever was made on the old one is gone, including calls
                    // placed on it after an outage had ended the earlier ones.
                    restarted.then_some(Lost::Restarted)
                }
                Err(e) => {
                    if h.up || h.down_since.is_none() {
                        tracing::warn!(media_plane = plane.client.uri(), error = %e, "media plane not answering: no new calls go to it");
                    }
                    h.up = false;
                    let since = *h.down_since.get_or_insert(now);
                    let past = self.lost_after.is_some_and(|limit| now.saturating_duration_since(since) >= limit);
                    (past && !h.lost_reported).then_some(Lost::Unreachable)
                }
            };
            if let Some(why) = why {
                tracing::warn!(media_plane = plane.client.uri(), why = why.as_str(), "media plane lost: its calls are ended");
                lost.push(LostPlane { plane: index, why, epoch: h.epoch });
                h.epoch = h.epoch.wrapping_add(1);
                h.lost += 1;
                h.lost_reported = why == Lost::Unreachable;
            }
        }
        lost
    }

    /// Plane `plane`'s events (DTMF from endpoints, plays ended, legs timed out) until the stream
    /// ends; [`MediaPool::tagged`] makes their leg ids the pool's.
    pub async fn events(&self, plane: usize) -> Result<tonic::Streaming<v1::Event>, tonic::Status> {
        let p = self.planes.get(plane).ok_or_else(|| tonic::Status::not_found("no such media plane"))?;
        p.client.events().await
    }

    /// The pool id of plane `plane`'s leg `local` (an event's), with the plane's epoch now: a
    /// stream that outlived an epoch bump (the plane was lost while its stream stayed open)
    /// names the legs of the calls made since.
    pub fn tagged(&self, plane: usize, local: u64) -> u64 {
        let Some(p) = self.planes.get(plane) else { return 0 };
        let epoch = lock(&p.health).epoch;
        tagged(local, ((plane as u64) << PLANE_SHIFT) | (u64::from(epoch) << EPOCH_SHIFT))
    }
}

/// A pool id from a media plane's `local` id and a plane-and-epoch `tag`.
fn tagged(local: u64, tag: u64) -> u64 {
    if local == 0 || local & POOL_BITS != 0 {
        0
    } else {
        local | tag
    }
}

fn lock(m: &Mutex<Health>) -> std::sync::MutexGuard<'_, Health> {
    // A panic while holding it cannot leave a Health half-written in a way that matters.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn request_name(request: &MediaRequest) -> &'static str {
    match request {
        MediaRequest::Allocate { .. } => "allocate",
        MediaRequest::Offer { .. } => "offer",
        MediaRequest::Answer { .. } => "answer",
        MediaRequest::Rejoin { .. } => "rejoin",
        MediaRequest::Play { .. } => "play",
        MediaRequest::Prompt { .. } => "prompt",
        MediaRequest::Tone { .. } => "tone",
        MediaRequest::StopPlay { .. } => "stop_play",
        MediaRequest::Join { .. } => "join",
        MediaRequest::Conference { .. } => "conference",
        MediaRequest::EndConference { .. } => "end_conference",
        MediaRequest::Extend { .. } => "extend",
        MediaRequest::Unconference { .. } => "unconference",
        MediaRequest::Release { .. } => "release",
    }
}

/// The reply a request gets when it is not sent (`None` for those that get none).
fn failure(request: &MediaRequest, e: MediaError) -> Option<MediaReply> {
    Some(match request {
        MediaRequest::Allocate { .. } => MediaReply::Allocated(Err(e)),
        MediaRequest::Offer { .. } | MediaRequest::Rejoin { .. } => MediaReply::Offered(Err(e)),
        MediaRequest::Answer { .. } => MediaReply::Answered(Err(e)),
        MediaRequest::Join { .. } => MediaReply::Joined(Err(e)),
        MediaRequest::Conference { .. } => MediaReply::Conferenced(Err(e)),
        MediaRequest::Extend { .. } => MediaReply::Extended(Err(e)),
        MediaRequest::Play { .. }
        | MediaRequest::Prompt { .. }
        | MediaRequest::Tone { .. }
        | MediaRequest::StopPlay { .. }
        | MediaRequest::EndConference { .. }
        | MediaRequest::Unconference { .. }
        | MediaRequest::Release { .. } => return None,
    })
}

/// A failed reply of the same kind as `reply`.
fn failure_reply(reply: &MediaReply, e: MediaError) -> Option<MediaReply> {
    Some(match reply {
        MediaReply::Allocated(_) => MediaReply::Allocated(Err(e)),
        MediaReply::Offered(_) => MediaReply::Offered(Err(e)),
        MediaReply::Answered(_) => MediaReply::Answered(Err(e)),
        MediaReply::Joined(_) => MediaReply::Joined(Err(e)),
        MediaReply::Conferenced(_) => MediaReply::Conferenced(Err(e)),
        MediaReply::Extended(_) => MediaReply::Extended(Err(e)),
    })
}

/// Calls `f` with every leg and conference id of `request`.
fn request_ids(request: &MediaRequest, f: &mut dyn FnMut(u64)) {
    let mut copy = request.clone();
    map_request(&mut copy, &mut |id| {
        f(id);
        id
    });
}

fn map_pairs(pairs: &mut [(u64, u64)], f: &mut dyn FnMut(u64) -> u64) {
    for (a, b) in pairs {
        *a = f(*a);
        *b = f(*b);
    }
}

fn map_all(ids: &mut [u64], f: &mut dyn FnMut(u64) -> u64) {
    for id in ids {
        *id = f(*id);
    }
}

/// Rewrites every leg and conference id of `request` with `f`.
fn map_request(request: &mut MediaRequest, f: &mut dyn FnMut(u64) -> u64) {
    match request {
        MediaRequest::Allocate { .. } => {}
        MediaRequest::Offer { legs, .. } | MediaRequest::Answer { legs, .. } => map_pairs(legs, f),
        MediaRequest::Rejoin { release, legs, .. } => {
            map_all(release, f);
            map_pairs(legs, f);
        }
        MediaRequest::Play { legs, .. }
        | MediaRequest::Prompt { legs, .. }
        | MediaRequest::Tone { legs, .. }
        | MediaRequest::StopPlay { legs }
        | MediaRequest::Release { legs } => map_all(legs, f),
        MediaRequest::Join { with, release, answer_first, .. } => {
            map_all(with, f);
            map_all(release, f);
            if let Some((pairs, _)) = answer_first {
                map_pairs(pairs, f);
            }
        }
        MediaRequest::Conference { conference, add, release, .. } => {
            if let Some(c) = conference {
                *c = f(*c);
            }
            map_all(add, f);
            map_all(release, f);
        }
        MediaRequest::EndConference { conference } => *conference = f(*conference),
        MediaRequest::Extend { with, .. } => map_all(with, f),
        MediaRequest::Unconference { conference, pairs } => {
            *conference = f(*conference);
            map_pairs(pairs, f);
        }
    }
}

/// Rewrites every leg and conference id of `reply` with `f`.
fn map_reply(reply: &mut MediaReply, f: &mut dyn FnMut(u64) -> u64) {
    match reply {
        MediaReply::Allocated(Ok(a)) => {
            for s in a.streams.iter_mut().flatten() {
                s.leg_a = f(s.leg_a);
                s.leg_b = f(s.leg_b);
            }
        }
        MediaReply::Joined(Ok(j)) => map_all(&mut j.legs, f),
        MediaReply::Conferenced(Ok(c)) => {
            c.conference = f(c.conference);
            if let Some((legs, _)) = &mut c.newcomer {
                map_all(legs, f);
            }
        }
        MediaReply::Extended(Ok((legs, _))) => map_all(legs, f),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::media::{Allocation, CodecPolicy, StreamLegs};

    fn pool(n: usize) -> MediaPool {
        let uris: Vec<String> = (0..n).map(|i| format!("http://127.0.0.1:{}", 1 + i)).collect();
        MediaPool::new(&uris, 1000, Duration::from_millis(100), Some(Duration::from_secs(10))).unwrap()
    }

    fn id(plane: u64, epoch: u64, local: u64) -> u64 {
        (plane << PLANE_SHIFT) | (epoch << EPOCH_SHIFT) | local
    }

    #[test]
    fn pool_ids_keep_the_media_planes_core_byte_and_counter() {
        let leg = (3u64 << 56) | 12345;
        let pooled = leg | id(7, 2, 0);
        assert_eq!(plane_of(pooled), 7);
        assert_eq!(epoch_of(pooled), 2);
        assert_eq!(local(pooled), leg);
        assert_eq!(tagged(leg, id(7, 2, 0)), pooled);
        // A local id reaching the pool's bits is not tagged.
        assert_eq!(tagged(1 << 45, id(1, 0, 0)), 0);
    }

    #[tokio::test]
    async fn a_new_call_goes_to_the_least_loaded_plane_that_is_up() {
        let p = pool(3);
        for (i, (up, legs)) in [(true, 40), (false, 0), (true, 10)].into_iter().enumerate() {
            let mut h = lock(&p.planes[i].health);
            h.up = up;
            h.legs = legs;
        }
        assert_eq!(p.choose(), 2);
        lock(&p.planes[2].health).up = false;
        assert_eq!(p.choose(), 0);
        // None up: the least loaded of all is tried.
        lock(&p.planes[0].health).up = false;
        assert_eq!(p.choose(), 1);
    }

    #[tokio::test]
    async fn requests_spanning_two_planes_are_refused_naming_both() {
        let p = pool(2);
        let err = p.plane_of_ids(&[id(0, 0, 5), 0, id(1, 0, 9)]).unwrap_err();
        assert!(err.contains("127.0.0.1:1") && err.contains("127.0.0.1:2"), "{err}");
        assert_eq!(p.plane_of_ids(&[0, id(1, 0, 9)]), Ok(Some(1)));
        assert_eq!(p.plane_of_ids(&[0]), Ok(None));
        assert!(p.plane_of_ids(&[id(9, 0, 1)]).unwrap_err().contains("no media plane"));
    }

    #[tokio::test]
    async fn ids_of_a_lost_epoch_are_refused_and_not_released() {
        let p = pool(2);
        lock(&p.planes[1].health).epoch = 1;
        assert!(p.plane_of_ids(&[id(1, 0, 4)]).unwrap_err().contains("lost id 4"));
        let split = p.split(&[id(1, 0, 4), id(1, 1, 5), id(0, 0, 6), 0]);
        assert_eq!(split.get(&1), Some(&vec![5]));
        assert_eq!(split.get(&0), Some(&vec![6]));
        let lost = LostPlane { plane: 1, why: Lost::Restarted, epoch: 0 };
        assert!(lost.matches(id(1, 0, 4)));
        assert!(!lost.matches(id(1, 1, 4)) && !lost.matches(id(0, 0, 4)) && !lost.matches(0));
    }

    #[test]
    fn every_id_of_requests_and_replies_is_rewritten() {
        let policy = CodecPolicy::default();
        let mut request = MediaRequest::Join {
            call_id: "c".into(),
            offer: String::new(),
            active: vec![true],
            policy,
            with: vec![1],
            release: vec![2],
            answer_first: Some((vec![(3, 0)], String::new())),
        };
        let mut seen = Vec::new();
        request_ids(&request, &mut |id| seen.push(id));
        assert_eq!(seen, [1, 2, 3, 0]);
        map_request(&mut request, &mut |id| id * 10);
        let mut after = Vec::new();
        request_ids(&request, &mut |id| after.push(id));
        assert_eq!(after, [10, 20, 30, 0]);
        let allocation = Allocation {
            streams: vec![Some(StreamLegs { leg_a: 1, leg_b: 2 }), None],
            offer: String::new(),
            local_answer: None,
            group: String::new(),
        };
        let mut reply = MediaReply::Allocated(Ok(allocation));
        map_reply(&mut reply, &mut |id| id + 100);
        let MediaReply::Allocated(Ok(a)) = reply else { panic!() };
        assert_eq!(a.streams[0], Some(StreamLegs { leg_a: 101, leg_b: 102 }));
    }

    #[tokio::test]
    async fn an_unreachable_plane_is_lost_once_after_the_limit() {
        // Nothing listens on port 1: every check fails at once.
        let p = pool(1);
        let t0 = Instant::now();
        assert!(p.check(t0).await.is_empty());
        assert!(!p.health()[0].1.up);
        assert!(p.check(t0 + Duration::from_secs(5)).await.is_empty());
        let lost = p.check(t0 + Duration::from_secs(10)).await;
        assert_eq!(lost.len(), 1);
        assert_eq!(lost[0].why, Lost::Unreachable);
        assert!(lost[0].matches(id(0, 0, 7)));
        // Reported once per outage; its ids now carry the next epoch.
        assert!(p.check(t0 + Duration::from_secs(20)).await.is_empty());
        assert_eq!(p.health()[0].1.epoch, 1);
        // A request with an id of the lost epoch is refused without a round trip.
        let reply = p.execute(MediaRequest::Answer { legs: vec![(id(0, 0, 7), id(0, 0, 8))], sdp: String::new() }).await;
        let Some(MediaReply::Answered(Err(MediaError::Unavailable(why)))) = reply else { panic!("{reply:?}") };
        assert!(why.contains("lost"), "{why}");
    }
}
