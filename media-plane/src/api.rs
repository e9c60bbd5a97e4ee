//! The `media.v1.MediaPlane` gRPC service: validates requests, sends them to the owning core and
//! maps the answers back. It runs on its own small tokio runtime, off the media cores.
//!
//! Leg and bridge ids carry their core in the top byte, so a request finds its core without a table.
//! A leg is placed by hashing its `group` (else its `call_id`). A bridge between legs of two
//! cores is made in two halves, one command to each core; if the second core refuses, the first
//! half is deleted again (which tells the second core, through the cores' own queues).

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use proto::v1;
use tokio::sync::{broadcast, oneshot};
use tokio_stream::wrappers::{BroadcastStream, WatchStream};
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status};

use crate::driver::{Command, CoreError, CoreEvent, CoreHandle, CoreReport, SettleStream, SubmitError};
use crate::engine::{CommandError, Direction, Drops, Event, LegCodec, LegMedia, LegSpec, LegStats, QualityAlarm, Remote};
use crate::recorder::RecorderHandle;
use crate::sdp;

const CORE_SHIFT: u32 = 56;

/// Active `m=` lines a CreateOffer makes legs for (two each, in one command to a core).
const MAX_OFFER_STREAMS: usize = 16;

/// The service. Cheap to clone.
#[derive(Debug, Clone)]
pub struct MediaService {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    cores: Vec<CoreHandle>,
    next_id: AtomicU64,
    round_robin: AtomicUsize,
    events: broadcast::Sender<CoreEvent>,
    advertise_ip: IpAddr,
    media_ip: IpAddr,
    /// Set on shutdown: ends every Events stream so graceful shutdown does not wait on them.
    stopping: tokio::sync::watch::Sender<bool>,
    /// Where Play's files are, and the prompts read so far, by (source, PCM rate).
    prompt_dir: std::path::PathBuf,
    prompts: std::sync::Mutex<PromptCache>,
    /// The recorder thread (WAV files under the recording directory).
    recorder: RecorderHandle,
    recorder_thread: std::sync::Mutex<Option<std::thread::JoinHandle<()>>>,
    /// This instance (GetStats' `boot_id`): drawn at start, so a client notices a restart.
    boot_id: u64,
    /// The gRPC API's latency by method (filled by the server's timing layer).
    rpc_latency: crate::metrics::RpcLatency,
}

/// Decoded prompts by (source, PCM rate).
type PromptCache = HashMap<(String, u32), Arc<[i16]>>;

/// Prompts kept decoded (a full cache is emptied: prompt sets are small, music on hold one file).
const PROMPT_CACHE: usize = 256;
/// Largest WAV file Play reads.
const MAX_PROMPT_BYTES: u64 = 32 * 1024 * 1024;

impl MediaService {
    /// The service over `cores`; Play reads its files from `prompt_dir` only, recordings are
    /// written under `recording_dir` only (by a recorder thread started here).
    pub fn new(
        cores: Vec<CoreHandle>,
        events: broadcast::Sender<CoreEvent>,
        media_ip: IpAddr,
        advertise_ip: IpAddr,
        prompt_dir: std::path::PathBuf,
        recording_dir: std::path::PathBuf,
    ) -> std::io::Result<Self> {
        let (stopping, _) = tokio::sync::watch::channel(false);
        // A recording that fails stops its taps on every core (the service is made after the
        // recorder, so the recorder finds it through this cell).
        let service: Arc<std::sync::OnceLock<std::sync::Weak<Inner>>> = Arc::default();
        let found = service.clone();
        let stop_taps = Box::new(move |recording: u64| {
            if let Some(inner) = found.get().and_then(std::sync::Weak::upgrade) {
                for c in &inner.cores {
                    let _ = c.submit(Command::StopRecording { recording, reply: None });
                }
            }
        });
        let (recorder, thread) = crate::recorder::spawn(recording_dir, events.clone(), stop_taps)?;
        let inner = Arc::new(Inner {
            cores,
            next_id: AtomicU64::new(1),
            round_robin: AtomicUsize::new(0),
            events,
            advertise_ip,
            media_ip,
            stopping,
            prompt_dir,
            prompts: std::sync::Mutex::new(HashMap::new()),
            recorder,
            recorder_thread: std::sync::Mutex::new(Some(thread)),
            boot_id: new_boot_id(),
            rpc_latency: crate::metrics::rpc_latency(),
        });
        let _ = service.set(Arc::downgrade(&inner));
        for c in &inner.cores {
            let _ = c.submit(Command::SetRecorder(inner.recorder.clone()));
        }
        Ok(Self { inner })
    }

    /// The PCM (mono, at `rate`) of a Play source, read and kept, and its source text; errors
    /// name the field.
    fn prompt(&self, source: &v1::play_request::Source, rate: u32) -> Result<Arc<[i16]>, Status> {
        let key = match source {
            v1::play_request::Source::File(f) => format!("file:{f}"),
            v1::play_request::Source::Tone(t) => format!("tone:{t}"),
        };
        if let Some(pcm) = self.inner.prompts.lock().ok().and_then(|c| c.get(&(key.clone(), rate)).cloned()) {
            return Ok(pcm);
        }
        let pcm: Vec<i16> = match source {
            v1::play_request::Source::Tone(t) => match (media_codecs::prompt::Tone::from_name(t), t.strip_prefix("dtmf:")) {
                (Some(tone), _) => tone.cycle(rate),
                (None, Some(digits))
                    if !digits.is_empty()
                        && digits.len() <= media_engine::engine::transcode::MAX_INJECTED
                        && digits.chars().all(|c| media_codecs::dtmf::frequencies(c).is_some()) =>
                {
                    media_codecs::prompt::dtmf_sequence(digits, rate)
                }
                _ => {
                    return Err(Status::invalid_argument(format!(
                        "tone: {t:?} is not ringback, busy, congestion (or -us), warning, or dtmf:<1-64 digits>"
                    )))
                }
            },
            v1::play_request::Source::File(f) => {
                let rel = std::path::Path::new(f);
                let inside = rel.components().all(|c| matches!(c, std::path::Component::Normal(_)));
                if f.is_empty() || !inside {
                    return Err(Status::invalid_argument(format!("file: {f:?} must be a relative path inside the prompt directory")));
                }
                let path = self.inner.prompt_dir.join(rel);
                let too_big = std::fs::metadata(&path).map(|m| m.len() > MAX_PROMPT_BYTES).unwrap_or(false);
                if too_big {
                    return Err(Status::invalid_argument(format!("file: {f:?} is larger than {MAX_PROMPT_BYTES} bytes")));
                }
                let bytes = std::fs::read(&path).map_err(|e| Status::not_found(format!("file: {}: {e}", path.display())))?;
                let (from, pcm) =
                    media_codecs::prompt::read_wav(&bytes).map_err(|e| Status::invalid_argument(format!("file: {f:?}: {e}")))?;
                if pcm.is_empty() {
                    return Err(Status::invalid_argument(format!("file: {f:?} has no audio")));
                }
                media_codecs::prompt::resample_all(&pcm, from, rate).map_err(|e| Status::invalid_argument(format!("file: {f:?}: {e}")))?
            }
        };
        let pcm: Arc<[i16]> = pcm.into();
        if let Ok(mut cache) = self.inner.prompts.lock() {
            if cache.len() >= PROMPT_CACHE {
                cache.clear();
            }
            cache.insert((key, rate), pcm.clone());
        }
        Ok(pcm)
    }

    /// The media plane's events (leg timeouts, latching, DTMF, ...), for in-process listeners.
    pub fn subscribe_events(&self) -> broadcast::Receiver<CoreEvent> {
        self.inner.events.subscribe()
    }

    /// Ends every open Events stream (and refuses new ones), so the server can drain and stop.
    pub fn begin_shutdown(&self) {
        self.inner.stopping.send_replace(true);
    }

    /// Stops every core (waiting at most `limit` for each), then finishes every recording's file.
    pub fn shutdown(&self, limit: Duration) {
        for c in &self.inner.cores {
            c.shutdown(limit);
        }
        let thread = self.inner.recorder_thread.lock().ok().and_then(|mut t| t.take());
        if let Some(thread) = thread {
            self.inner.recorder.shutdown(thread, limit);
        }
    }

    /// The gRPC API's latency histograms (the server's timing layer records into them).
    pub fn rpc_latency(&self) -> crate::metrics::RpcLatency {
        self.inner.rpc_latency.clone()
    }

    fn new_id(&self, core: usize) -> u64 {
        ((core as u64) << CORE_SHIFT) | (self.inner.next_id.fetch_add(1, Ordering::Relaxed) & ((1 << CORE_SHIFT) - 1))
    }

    fn core_of(&self, id: u64, what: &str) -> Result<&CoreHandle, Status> {
        self.inner.cores.get((id >> CORE_SHIFT) as usize).ok_or_else(|| Status::not_found(format!("{what} {id} does not exist")))
    }

    /// The core for a leg of placement key `key` (its group, else its call id); an empty key
    /// spreads legs round-robin.
    fn pick_core(&self, key: &str) -> usize {
        let n = self.inner.cores.len();
        if key.is_empty() {
            return self.inner.round_robin.fetch_add(1, Ordering::Relaxed) % n;
        }
        let mut h = std::collections::hash_map::DefaultHasher::new();
        key.hash(&mut h);
        (h.finish() % n as u64) as usize
    }

    /// Sends a command built around a fresh reply channel and waits for the answer.
    async fn ask<T>(&self, core: &CoreHandle, make: impl FnOnce(oneshot::Sender<Result<T, CoreError>>) -> Command) -> Result<T, Status> {
        let (tx, rx) = oneshot::channel();
        core.submit(make(tx)).map_err(submit_status)?;
        rx.await.map_err(|_| Status::unavailable(format!("core {} stopped", core.core)))?.map_err(core_status)
    }

    /// Every core's counters, without per-leg lists (for metrics).
    pub async fn core_reports(&self) -> Result<Vec<CoreReport>, Status> {
        self.reports(Some(Vec::new())).await
    }

    async fn reports(&self, legs: Option<Vec<u64>>) -> Result<Vec<CoreReport>, Status> {
        let mut out = Vec::with_capacity(self.inner.cores.len());
        for core in &self.inner.cores {
            let ids = legs.as_ref().map(|ids| ids.iter().copied().filter(|id| (id >> CORE_SHIFT) as usize == core.core).collect());
            let (tx, rx) = oneshot::channel();
            core.submit(Command::Stats { legs: ids, reply: tx }).map_err(submit_status)?;
            out.push(rx.await.map_err(|_| Status::unavailable(format!("core {} stopped", core.core)))?);
        }
        Ok(out)
    }

    /// Adds or updates a conference member. A leg on another core than the conference joins it
    /// across the cores' queues: its RTP goes to the conference's core, the mix comes back to be
    /// sent from the leg's ports.
    async fn participant(&self, r: v1::ParticipantRequest, add: bool) -> Result<Response<v1::ParticipantResponse>, Status> {
        let core = self.core_of(r.conference_id, "conference_id")?;
        let leg_core = self.core_of(r.leg_id, "leg_id")?;
        let (conference, leg, muted, deaf) = (r.conference_id, r.leg_id, r.muted, r.deaf);
        if !add || core.core == leg_core.core {
            self.ask(core, |reply| Command::Member { conference, leg, muted, deaf, add, reply }).await?;
            return Ok(Response::new(v1::ParticipantResponse {}));
        }
        // The leg's codec (no change yet), the member on the conference's core (its rate), then
        // the leg joined on its own core, which decodes it for the mix.
        let codec = self
            .ask(leg_core, |reply| Command::LegCodec { id: leg, reply })
            .await
            .map_err(|s| Status::new(s.code(), format!("leg_id: {}", s.message())))?
            .ok_or_else(|| Status::failed_precondition(format!("leg_id: leg {leg} has no codec: a conference decodes its members")))?;
        let (here, from) = (core.core, leg_core.core);
        let rate = self.ask(core, |reply| Command::AddRemoteMember { conference, leg, core: from, codec, muted, deaf, reply }).await?;
        if let Err(status) = self.ask(leg_core, |reply| Command::JoinRemote { leg, core: here, conference, rate, reply }).await {
            let _ = self.ask(core, |reply| Command::RemoveMember { conference, leg, reply }).await;
            return Err(Status::new(status.code(), format!("leg_id: {}", status.message())));
        }
        // The conference may have ended (or let the member go) while the leg joined; then the
        // leg leaves again rather than feed a conference that is gone.
        if let Err(status) = self.ask(core, |reply| Command::Member { conference, leg, muted, deaf, add: false, reply }).await {
            let _ = self.ask(leg_core, |reply| Command::LeaveRemote { leg, reply }).await;
            return Err(status);
        }
        Ok(Response::new(v1::ParticipantResponse {}))
    }

    /// See `CreateOffer`.
    async fn create_offer_now(&self, r: v1::CreateOfferRequest) -> Result<v1::CreateOfferResponse, Status> {
        let active = sdp::active_streams(r.sdp.as_bytes()).map_err(sdp_status)?;
        let streams = active.iter().filter(|on| **on).count();
        if streams == 0 {
            return Err(Status::invalid_argument("sdp: no active m= line (every port is 0)"));
        }
        if streams > MAX_OFFER_STREAMS {
            return Err(Status::invalid_argument(format!("sdp: {streams} active m= lines, at most {MAX_OFFER_STREAMS}")));
        }
        let core = self.pick_core(if r.group.is_empty() { &r.call_id } else { &r.group });
        let handle = &self.inner.cores[core];
        let spec = LegSpec {
            media_timeout: (r.media_timeout_ms > 0).then(|| Duration::from_millis(u64::from(r.media_timeout_ms))),
            ..LegSpec::default()
        };
        // Per active stream: the offerer's leg, then the answerer's.
        let made: Vec<(u64, LegSpec)> =
            active.iter().filter(|on| **on).flat_map(|_| [(self.new_id(core), spec), (self.new_id(core), spec)]).collect();
        let ids: Vec<u64> = made.iter().map(|(id, _)| *id).collect();
        let ports = self.ask(handle, |reply| Command::CreateLegs { legs: made, reply }).await?;
        let mut legs = Vec::with_capacity(active.len());
        let mut to_answerer = Vec::with_capacity(active.len());
        let mut next = ids.chunks_exact(2).zip(ports.chunks_exact(2));
        for on in &active {
            let made = if *on { next.next() } else { None };
            match made {
                Some((ids, ports)) => {
                    legs.push(Some((ids[0], ids[1])));
                    to_answerer.push(Some(ports[1]));
                }
                None => {
                    legs.push(None);
                    to_answerer.push(None);
                }
            }
        }
        let result = match self.rewrite_offer(&r.sdp, r.policy, &r.transport_protocol, to_answerer) {
            Ok(offer) => {
                let first_answerer = ids[1];
                let pending = Box::new(sdp::PendingOffer { legs: pairs(&legs), state: offer.state });
                self.ask(handle, |reply| Command::PutOffer { id: first_answerer, offer: Some(pending), reply }).await.map(|()| offer.sdp)
            }
            Err(status) => Err(status),
        };
        match result {
            Ok(sdp) => {
                tracing::debug!(legs = ?ids, core, "legs created for an offer");
                let streams =
                    pairs(&legs).into_iter().map(|(offerer_leg, answerer_leg)| v1::StreamLegs { offerer_leg, answerer_leg }).collect();
                Ok(v1::CreateOfferResponse { sdp, streams, core: core as u32 })
            }
            Err(status) => {
                if let Err(e) = self.ask(handle, |reply| Command::DeleteLegs { ids, reply }).await {
                    tracing::warn!(core, error = %e.message(), "the legs of a refused offer could not be deleted (their media timeout will)");
                }
                Err(status)
            }
        }
    }

    /// The offer `sdp` rewritten for the answerer, whose legs' ports are `to_answerer` (per `m=`
    /// line), per `policy` and the answerer's `transport`.
    fn rewrite_offer(
        &self,
        sdp: &str,
        policy: Option<v1::CodecPolicy>,
        transport: &str,
        to_answerer: Vec<Option<u16>>,
    ) -> Result<sdp::RewrittenOffer, Status> {
        let policy = policy.unwrap_or_default();
        let policy = sdp::CodecPolicy { strip: policy.strip, mask: policy.mask, transcode: policy.transcode, keep: policy.keep };
        let transport = sdp::Transport::from_protocol(transport).map_err(|_| {
            Status::invalid_argument(format!("transport_protocol: {transport:?} is not RTP/AVP, RTP/SAVP, RTP/AVPF or RTP/SAVPF"))
        })?;
        let anchor = sdp::Anchor { ip: self.inner.advertise_ip, ports: to_answerer };
        let mut no_entropy = None;
        let mut random = |buf: &mut [u8]| {
            if let Err(e) = getrandom::fill(buf) {
                no_entropy = Some(e);
            }
        };
        let offer = sdp::offer(sdp.as_bytes(), &policy, transport, &anchor, &mut random).map_err(sdp_status)?;
        if let Some(e) = no_entropy {
            return Err(Status::internal(format!("no random bytes for SRTP keys: {e}")));
        }
        Ok(offer)
    }

    /// An answer over legs that are all on `core` (the usual case: placed by one call or group),
    /// in two round trips to it: the offer and the legs, then what the answer settled.
    async fn answer_on_one_core(
        &self,
        core: &CoreHandle,
        first_answerer: u64,
        answer: &str,
        legs: &[Option<(u64, u64)>],
        ids: Vec<u64>,
    ) -> Result<v1::AnswerResponse, Status> {
        let (pending, stats) = self.ask(core, |reply| Command::OfferAndLegs { id: first_answerer, legs: ids, reply }).await?;
        // The errors of the general path: the offer's leg gone, no offer, then a stream's leg gone.
        let missing = |field: String, id: u64| Status::not_found(format!("{field}: leg {id} does not exist"));
        if let Some(i) = legs.iter().position(|pair| pair.is_some_and(|(_, b)| b == first_answerer)) {
            if stats.get(2 * legs[..i].iter().flatten().count() + 1).is_some_and(Option::is_none) {
                return Err(missing(format!("streams[{i}].answerer_leg"), first_answerer));
            }
        }
        let pending = pending
            .filter(|p| p.legs == pairs(legs))
            .ok_or_else(|| Status::failed_precondition("streams: no offer was made for these legs"))?;
        let mut leg_stats = stats.chunks_exact(2);
        let mut per_stream: Vec<Option<(&LegStats, &LegStats)>> = Vec::with_capacity(legs.len());
        for (i, pair) in legs.iter().enumerate() {
            let Some((a, b)) = pair else {
                per_stream.push(None);
                continue;
            };
            let Some([leg_a, leg_b]) = leg_stats.next() else {
                return Err(Status::internal(format!("streams[{i}]: the core answered for fewer legs than asked")));
            };
            let leg_a = leg_a.as_ref().ok_or_else(|| missing(format!("streams[{i}].offerer_leg"), *a))?;
            let leg_b = leg_b.as_ref().ok_or_else(|| missing(format!("streams[{i}].answerer_leg"), *b))?;
            per_stream.push(Some((leg_a, leg_b)));
        }
        let to_offerer = per_stream.iter().map(|s| s.map(|(offerer, _)| offerer.local_port)).collect();
        let anchor = sdp::Anchor { ip: self.inner.advertise_ip, ports: to_offerer };
        let answer = sdp::answer(&pending.state, answer.as_bytes(), &anchor).map_err(sdp_status)?;
        let mut settle = Vec::with_capacity(legs.len());
        let mut settled = Vec::with_capacity(legs.len());
        let mut streams = Vec::with_capacity(answer.streams.len());
        for (i, ((pair, stats), negotiated)) in legs.iter().zip(&per_stream).zip(&answer.streams).enumerate() {
            let (Some((a, b)), Some((leg_a, leg_b)), Some(n)) = (pair, stats, negotiated) else {
                streams.push(v1::NegotiatedStream::default());
                continue;
            };
            let bridge = match (leg_a.bridge, leg_b.bridge) {
                (Some(x), Some(y)) if x == y => Some(x),
                (None, None) => None,
                _ => return Err(Status::failed_precondition(format!("streams[{i}]: a leg is bridged to another leg"))),
            };
            settle.push(SettleStream {
                a: *a,
                // Where the offerer said it receives (latching corrects it behind NAT).
                media_a: leg_media(&n.offerer, n.offerer.rtp, n.offerer_codec),
                b: *b,
                media_b: leg_media(&n.answerer, n.answerer.rtp, n.answerer_codec),
                bridge,
                // The codecs changed (a new offer/answer mid-call): the bridge is made again for them.
                rebridge: bridge.is_some() && (leg_a.codec != n.offerer_codec || leg_b.codec != n.answerer_codec),
                new_bridge: self.new_id(core.core),
            });
            settled.push(streams.len());
            streams.push(v1::NegotiatedStream {
                offerer_codec: n.offerer_codec.as_ref().map(codec_msg),
                answerer_codec: n.answerer_codec.as_ref().map(codec_msg),
                transcoded: n.transcoded,
                bridge_id: 0,
            });
        }
        let bridges = self.ask(core, |reply| Command::Settle { streams: settle, reply }).await?;
        for (index, bridge_id) in settled.into_iter().zip(bridges) {
            if let Some(stream) = streams.get_mut(index) {
                stream.bridge_id = bridge_id;
            }
        }
        Ok(v1::AnswerResponse { sdp: answer.sdp, streams })
    }

    /// One leg's stats; `field` names it in the error.
    async fn leg(&self, id: u64, field: &str) -> Result<LegStats, Status> {
        let core = self.core_of(id, field)?;
        self.ask(core, |reply| Command::Leg { id, reply }).await.map_err(|s| Status::new(s.code(), format!("{field}: {}", s.message())))
    }

    /// Applies one side of an offer/answer to its leg (`remote`: `None` keeps the current one).
    async fn set_media(&self, id: u64, side: &sdp::Endpoint, remote: Option<SocketAddr>, codec: Option<LegCodec>) -> Result<(), Status> {
        let core = self.core_of(id, "leg")?;
        let media = leg_media(side, remote, codec);
        self.ask(core, |reply| Command::SetMedia { id, media, reply }).await
    }

    /// Bridges legs `a` and `b` (named `fields` in errors), on one core or across two.
    async fn bridge_legs(&self, a: u64, b: u64, fields: (&str, &str)) -> Result<u64, Status> {
        let core_a = self.core_of(a, fields.0)?;
        let core_b = self.core_of(b, fields.1)?;
        let id = self.new_id(core_a.core);
        if core_a.core == core_b.core {
            self.ask(core_a, |reply| Command::CreateBridge { id, a, b, reply }).await?;
            return Ok(id);
        }
        // Two halves: A's (primary, it holds the id's core) first, then B's; B refusing undoes A's.
        // Each core transcodes towards its own leg, so each is told the other leg's codec.
        let (ca, cb) = (core_a.core, core_b.core);
        let codec_a = self.ask(core_a, |reply| Command::LegCodec { id: a, reply }).await?;
        let codec_b = self.ask(core_b, |reply| Command::LegCodec { id: b, reply }).await?;
        self.ask(core_a, |reply| Command::LinkRemote { id, leg: a, peer_core: cb, peer_leg: b, peer_codec: codec_b, primary: true, reply })
            .await?;
        if let Err(status) = self
            .ask(core_b, |reply| Command::LinkRemote { id, leg: b, peer_core: ca, peer_leg: a, peer_codec: codec_a, primary: false, reply })
            .await
        {
            let _ = self.ask(core_a, |reply| Command::DeleteBridge { id, reply }).await;
            return Err(status);
        }
        tracing::debug!(bridge = id, leg_a = a, core_a = ca, leg_b = b, core_b = cb, "cross-core bridge created");
        Ok(id)
    }

    fn endpoint(&self, field: &str, e: &v1::Endpoint) -> Result<SocketAddr, Status> {
        let ip: IpAddr = e.ip.parse().map_err(|_| Status::invalid_argument(format!("{field}.ip: {:?} is not an IP address", e.ip)))?;
        let port = u16::try_from(e.port)
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| Status::invalid_argument(format!("{field}.port: {} is not a port", e.port)))?;
        if ip.is_ipv4() != self.inner.media_ip.is_ipv4() {
            return Err(Status::invalid_argument(format!("{field}.ip: {ip} is not of the media address family")));
        }
        Ok(SocketAddr::new(ip, port))
    }

    fn leg_stats(&self, core: usize, s: &LegStats) -> v1::LegStats {
        v1::LegStats {
            leg_id: s.id,
            local: Some(v1::Endpoint { ip: self.inner.advertise_ip.to_string(), port: u32::from(s.local_port) }),
            remote: s.remote.map(endpoint_msg),
            remote_rtcp: s.remote_rtcp.map(endpoint_msg),
            latched: s.latched,
            rtp_packets_in: s.counters.rtp_packets_in,
            rtp_bytes_in: s.counters.rtp_bytes_in,
            rtp_packets_out: s.counters.rtp_packets_out,
            rtp_bytes_out: s.counters.rtp_bytes_out,
            rtcp_packets_in: s.counters.rtcp_packets_in,
            rtcp_packets_out: s.counters.rtcp_packets_out,
            drops: Some(drops_msg(&s.counters.drops)),
            idle_ms: s.idle.map(|d| d.as_millis() as u64),
            core: core as u32,
            bridge_id: s.bridge.unwrap_or(0),
            direction: direction_msg(s.direction) as i32,
            codec: s.codec.as_ref().map(codec_msg),
            transcoded: s.transcoded.map(|t| v1::TranscodeStats {
                decoded: t.decoded,
                concealed: t.concealed,
                encoded: t.encoded,
                events: t.events,
                events_not_carried: t.events_not_carried,
                digits_to_tones: t.digits_to_tones,
                tones_to_digits: t.tones_to_digits,
                digits_injected: t.digits_injected,
            }),
            quality: Some(v1::RtpQuality {
                expected: s.quality.expected,
                lost: s.quality.lost,
                jitter_us: s.quality.jitter_us,
                remote_fraction_lost: s.quality.remote_fraction_lost.map(u32::from),
                remote_lost: s.quality.remote_lost,
                remote_jitter_us: s.quality.remote_jitter_us,
                rtt_us: s.quality.rtt_us,
            }),
        }
    }
}

/// A `Codec` from the API, validated: errors name the field.
fn codec_from(c: &v1::Codec) -> Result<LegCodec, Status> {
    use media_codecs::{CodecKind, CodecParams, OpusSettings};
    let bad = |field: &str, why: String| Status::invalid_argument(format!("codec.{field}: {why}"));
    let kind = CodecKind::from_name(&c.name).ok_or_else(|| bad("name", format!("{:?} is not PCMU, PCMA, L16, G722 or opus", c.name)))?;
    let payload_type = u8::try_from(c.payload_type)
        .ok()
        .filter(|pt| *pt < 128)
        .ok_or_else(|| bad("payload_type", format!("{} is not 0-127", c.payload_type)))?;
    let rate = if c.rate == 0 { 48_000 } else { c.rate };
    let mut params = CodecParams::new(kind, rate);
    params.channels = match c.channels {
        0 | 1 => 1,
        2 => 2,
        n => return Err(bad("channels", format!("{n} is not 1 or 2"))),
    };
    if let Some(o) = &c.opus {
        let small = |field: &str, v: u32| u8::try_from(v).map_err(|_| bad(field, format!("{v} is too large")));
        params.opus = OpusSettings {
            bitrate: (o.bitrate > 0).then_some(o.bitrate),
            fec: o.fec,
            expected_loss_pct: small("opus.expected_loss_pct", o.expected_loss_pct)?,
            dtx: o.dtx,
            complexity: if o.complexity == 0 { OpusSettings::default().complexity } else { small("opus.complexity", o.complexity)? },
        };
    }
    let ptime_ms = match c.ptime_ms {
        0 => 20,
        p @ (10 | 20 | 30 | 40 | 60) => p as u16,
        p => return Err(bad("ptime_ms", format!("{p} is not 10, 20, 30, 40 or 60"))),
    };
    let telephone_event = c
        .telephone_event
        .map(|pt| u8::try_from(pt).ok().filter(|pt| *pt < 128 && *pt != payload_type))
        .map(|pt| pt.ok_or_else(|| bad("telephone_event", "is not 0-127 or is the codec's own payload type".into())))
        .transpose()?;
    // Made once here so a bad combination (an Opus rate, a complexity) is refused at CreateLeg.
    media_codecs::decoder(&params).map_err(|e| bad("name", e.to_string()))?;
    Ok(LegCodec { payload_type, params, ptime_ms, telephone_event })
}

/// The legs of an Offer or Answer, validated: `None` for an `m=` line without legs (0 and 0).
fn stream_legs(streams: &[v1::StreamLegs]) -> Result<Vec<Option<(u64, u64)>>, Status> {
    if streams.is_empty() {
        return Err(Status::invalid_argument("streams: at least one is needed (one per m= line)"));
    }
    streams
        .iter()
        .enumerate()
        .map(|(i, s)| match (s.offerer_leg, s.answerer_leg) {
            (0, 0) => Ok(None),
            (a, b) if a == b || a == 0 || b == 0 => {
                Err(Status::invalid_argument(format!("streams[{i}]: two different legs are needed (or 0 and 0 for no stream)")))
            }
            (a, b) => Ok(Some((a, b))),
        })
        .collect()
}

/// The legs as kept with a pending offer (0 and 0 for no stream).
fn pairs(legs: &[Option<(u64, u64)>]) -> Vec<(u64, u64)> {
    legs.iter().map(|p| p.unwrap_or((0, 0))).collect()
}

/// The answerer leg of the first stream that has legs: it keeps the pending offer.
fn first_answerer(legs: &[Option<(u64, u64)>]) -> Result<u64, Status> {
    legs.iter().flatten().map(|(_, b)| *b).next().ok_or_else(|| Status::invalid_argument("streams: every stream is 0 and 0"))
}

/// One side of an offer/answer as its leg takes it (`remote`: `None` keeps the current one).
fn leg_media(side: &sdp::Endpoint, remote: Option<SocketAddr>, codec: Option<LegCodec>) -> LegMedia {
    LegMedia {
        remote,
        remote_rtcp: remote.and(side.rtcp),
        rtcp_mux: side.rtcp_mux,
        direction: side.direction,
        codec,
        srtp: side.srtp.clone(),
    }
}

/// An SDP or policy error as the API answers it.
fn sdp_status(e: sdp::SdpError) -> Status {
    match e {
        sdp::SdpError::Policy(why) => Status::invalid_argument(format!("policy: {why}")),
        other => Status::invalid_argument(format!("sdp: {other}")),
    }
}

fn recording_msg(s: &media_engine::record::RecordingSummary) -> v1::RecordingSummary {
    v1::RecordingSummary {
        recording_id: s.recording,
        file: s.file.clone(),
        channels: u32::from(s.channels),
        rate: s.rate,
        duration_ms: s.frames * 1000 / u64::from(s.rate.max(1)),
        bytes: s.bytes,
        packets: s.counters.packets,
        late: s.counters.late,
        reason: s.reason.clone(),
    }
}

/// A recording's file name, checked: relative, inside the recording directory, `.wav`.
fn recording_file(f: &str) -> Result<(), Status> {
    let rel = std::path::Path::new(f);
    let inside = rel.components().all(|c| matches!(c, std::path::Component::Normal(_)));
    if f.is_empty() || f.len() > 1024 || !inside || !f.ends_with(".wav") {
        return Err(Status::invalid_argument(format!("file: {f:?} must be a relative path inside the recording directory ending in .wav")));
    }
    Ok(())
}

/// The file rate for codecs of these rates: the widest, as one of the rates a file is written at.
fn recording_rate(rates: impl Iterator<Item = u32>) -> u32 {
    match rates.max().unwrap_or(8000) {
        0..=8000 => 8000,
        8001..=16_000 => 16_000,
        _ => 48_000,
    }
}

fn codec_msg(c: &LegCodec) -> v1::Codec {
    let p = &c.params;
    v1::Codec {
        payload_type: u32::from(c.payload_type),
        name: p.kind.name().to_owned(),
        rate: p.rate,
        channels: u32::from(p.channels),
        ptime_ms: u32::from(c.ptime_ms),
        opus: (p.kind == media_codecs::CodecKind::Opus).then(|| v1::OpusSettings {
            bitrate: p.opus.bitrate.unwrap_or(0),
            fec: p.opus.fec,
            expected_loss_pct: u32::from(p.opus.expected_loss_pct),
            dtx: p.opus.dtx,
            complexity: u32::from(p.opus.complexity),
        }),
        telephone_event: c.telephone_event.map(u32::from),
    }
}

fn endpoint_msg(a: SocketAddr) -> v1::Endpoint {
    v1::Endpoint { ip: a.ip().to_string(), port: u32::from(a.port()) }
}

fn drops_msg(d: &Drops) -> v1::Drops {
    v1::Drops {
        malformed: d.malformed,
        wrong_source: d.wrong_source,
        no_route: d.no_route,
        muted: d.muted,
        send_failed: d.send_failed,
        queue_full: d.queue_full,
        unknown_payload_type: d.unknown_payload_type,
        undecodable: d.undecodable,
        late: d.late,
        srtp_auth: d.srtp_auth,
        srtp_replay: d.srtp_replay,
        srtp_other: d.srtp_other,
    }
}

fn direction_msg(d: Direction) -> v1::Direction {
    match d {
        Direction::SendRecv => v1::Direction::Sendrecv,
        Direction::SendOnly => v1::Direction::Sendonly,
        Direction::RecvOnly => v1::Direction::Recvonly,
        Direction::Inactive => v1::Direction::Inactive,
    }
}

fn direction_from(raw: i32) -> Result<Option<Direction>, Status> {
    match v1::Direction::try_from(raw) {
        Ok(v1::Direction::Unspecified) => Ok(None),
        Ok(v1::Direction::Sendrecv) => Ok(Some(Direction::SendRecv)),
        Ok(v1::Direction::Sendonly) => Ok(Some(Direction::SendOnly)),
        Ok(v1::Direction::Recvonly) => Ok(Some(Direction::RecvOnly)),
        Ok(v1::Direction::Inactive) => Ok(Some(Direction::Inactive)),
        Err(_) => Err(Status::invalid_argument(format!("direction: {raw} is not a Direction"))),
    }
}

fn submit_status(e: SubmitError) -> Status {
    match e {
        SubmitError::QueueFull(_) => Status::resource_exhausted(e.to_string()),
        SubmitError::Stopped(_) => Status::unavailable(e.to_string()),
    }
}

fn core_status(e: CoreError) -> Status {
    match &e {
        CoreError::Command(CommandError::NoSuchLeg(_) | CommandError::NoSuchBridge(_)) => Status::not_found(e.to_string()),
        CoreError::Command(CommandError::LegExists(_) | CommandError::BridgeExists(_)) => Status::already_exists(e.to_string()),
        CoreError::Command(
            CommandError::AlreadyBridged(..) | CommandError::SelfBridge | CommandError::PortInUse(_) | CommandError::Transcode(_),
        ) => Status::failed_precondition(e.to_string()),
        CoreError::Command(CommandError::Srtp(_) | CommandError::NoDigits(_)) => Status::invalid_argument(e.to_string()),
        CoreError::Command(CommandError::NoCodec(_) | CommandError::InConference(..) | CommandError::NotMember(..)) => {
            Status::failed_precondition(e.to_string())
        }
        CoreError::Command(CommandError::NoSuchConference(_)) => Status::not_found(e.to_string()),
        CoreError::Command(CommandError::Recorded(..)) => Status::failed_precondition(e.to_string()),
        CoreError::Command(CommandError::ConferenceExists(_)) => Status::already_exists(e.to_string()),
        CoreError::Command(CommandError::ConferenceRate(_)) => Status::invalid_argument(e.to_string()),
        CoreError::PortsExhausted(_) | CoreError::Command(CommandError::DtmfQueueFull(_)) => Status::resource_exhausted(e.to_string()),
        CoreError::Bind(..) | CoreError::Register(..) => Status::internal(e.to_string()),
    }
}

type EventStream = Pin<Box<dyn Stream<Item = Result<v1::Event, Status>> + Send>>;

#[tonic::async_trait]
impl v1::media_plane_server::MediaPlane for MediaService {
    async fn create_leg(&self, req: Request<v1::CreateLegRequest>) -> Result<Response<v1::CreateLegResponse>, Status> {
        let r = req.into_inner();
        let remote = r.remote.as_ref().map(|e| self.endpoint("remote", e)).transpose()?;
        let remote_rtcp = r.remote_rtcp.as_ref().map(|e| self.endpoint("remote_rtcp", e)).transpose()?;
        let spec = LegSpec {
            remote: match (remote, r.latch) {
                (Some(a), false) => Remote::locked(a),
                (a, _) => Remote::latching(a),
            },
            remote_rtcp: match (remote_rtcp, r.latch) {
                (Some(a), false) => Remote::locked(a),
                (a, _) => Remote::latching(a),
            },
            rtcp_mux: r.rtcp_mux,
            direction: direction_from(r.direction)?.unwrap_or_default(),
            media_timeout: (r.media_timeout_ms > 0).then(|| Duration::from_millis(u64::from(r.media_timeout_ms))),
            codec: r.codec.as_ref().map(codec_from).transpose()?,
            alarm: r.quality_alarm.map_or_else(QualityAlarm::default, |q| QualityAlarm {
                loss_permille: (q.loss_permille > 0).then_some(q.loss_permille),
                jitter_us: (q.jitter_ms > 0).then(|| u64::from(q.jitter_ms) * 1000),
            }),
        };
        let core = self.pick_core(if r.group.is_empty() { &r.call_id } else { &r.group });
        let id = self.new_id(core);
        let handle = &self.inner.cores[core];
        let port = self.ask(handle, |reply| Command::CreateLeg { id, spec, reply }).await?;
        tracing::debug!(leg = id, core, port, "leg created");
        Ok(Response::new(v1::CreateLegResponse {
            leg_id: id,
            local: Some(v1::Endpoint { ip: self.inner.advertise_ip.to_string(), port: u32::from(port) }),
            core: core as u32,
        }))
    }

    async fn update_leg(&self, req: Request<v1::UpdateLegRequest>) -> Result<Response<v1::UpdateLegResponse>, Status> {
        let r = req.into_inner();
        let remote = r.remote.as_ref().map(|e| self.endpoint("remote", e)).transpose()?;
        let remote_rtcp = r.remote_rtcp.as_ref().map(|e| self.endpoint("remote_rtcp", e)).transpose()?;
        let direction = direction_from(r.direction)?;
        let core = self.core_of(r.leg_id, "leg")?;
        let (id, relatch) = (r.leg_id, r.relatch);
        self.ask(core, |reply| Command::UpdateLeg { id, remote, remote_rtcp, direction, relatch, reply }).await?;
        Ok(Response::new(v1::UpdateLegResponse {}))
    }

    async fn delete_leg(&self, req: Request<v1::DeleteLegRequest>) -> Result<Response<v1::DeleteLegResponse>, Status> {
        let id = req.into_inner().leg_id;
        let core = self.core_of(id, "leg")?;
        let stats = self.ask(core, |reply| Command::DeleteLeg { id, reply }).await?;
        Ok(Response::new(v1::DeleteLegResponse { stats: Some(self.leg_stats(core.core, &stats)) }))
    }

    async fn create_bridge(&self, req: Request<v1::CreateBridgeRequest>) -> Result<Response<v1::CreateBridgeResponse>, Status> {
        let r = req.into_inner();
        let bridge_id = self.bridge_legs(r.leg_a, r.leg_b, ("leg_a", "leg_b")).await?;
        Ok(Response::new(v1::CreateBridgeResponse { bridge_id }))
    }

    async fn offer(&self, req: Request<v1::OfferRequest>) -> Result<Response<v1::OfferResponse>, Status> {
        let r = req.into_inner();
        let legs = stream_legs(&r.streams)?;
        let mut to_answerer = Vec::with_capacity(legs.len());
        for (i, pair) in legs.iter().enumerate() {
            let Some((offerer, answerer)) = pair else {
                to_answerer.push(None);
                continue;
            };
            self.leg(*offerer, &format!("streams[{i}].offerer_leg")).await?;
            to_answerer.push(Some(self.leg(*answerer, &format!("streams[{i}].answerer_leg")).await?.local_port));
        }
        let offer = self.rewrite_offer(&r.sdp, r.policy, &r.transport_protocol, to_answerer)?;
        // The offerer's leg changes only with the answer: an offer may be refused (a failed
        // re-INVITE leaves the call as it was).
        let first_answerer = first_answerer(&legs)?;
        let pending = Box::new(sdp::PendingOffer { legs: pairs(&legs), state: offer.state });
        let core = self.core_of(first_answerer, "streams.answerer_leg")?;
        self.ask(core, |reply| Command::PutOffer { id: first_answerer, offer: Some(pending), reply }).await?;
        Ok(Response::new(v1::OfferResponse { sdp: offer.sdp }))
    }

    async fn create_offer(&self, req: Request<v1::CreateOfferRequest>) -> Result<Response<v1::CreateOfferResponse>, Status> {
        // In a task of its own: a client that goes away (its deadline) while the legs are made
        // neither stops the undo of a failure nor leaves legs it was never told of.
        let this = self.clone();
        let r = req.into_inner();
        tokio::spawn(async move { this.create_offer_now(r).await })
            .await
            .map_err(|e| Status::internal(format!("CreateOffer did not finish: {e}")))?
            .map(Response::new)
    }

    async fn delete_legs(&self, req: Request<v1::DeleteLegsRequest>) -> Result<Response<v1::DeleteLegsResponse>, Status> {
        let ids = req.into_inner().leg_ids;
        let mut by_core: Vec<Vec<u64>> = vec![Vec::new(); self.inner.cores.len()];
        let mut unknown = Vec::new();
        for &id in &ids {
            match by_core.get_mut((id >> CORE_SHIFT) as usize) {
                Some(core) => core.push(id),
                None => unknown.push(id),
            }
        }
        // Every core is asked even when one fails; the first failure is the answer then.
        let mut stats = Vec::with_capacity(ids.len());
        let mut failed = None;
        for (core, ids) in self.inner.cores.iter().zip(by_core).filter(|(_, ids)| !ids.is_empty()) {
            match self.ask(core, |reply| Command::DeleteLegs { ids: ids.clone(), reply }).await {
                Ok(deleted) => {
                    for (id, leg) in ids.into_iter().zip(deleted) {
                        match leg {
                            Some(leg) => stats.push(self.leg_stats(core.core, &leg)),
                            None => unknown.push(id),
                        }
                    }
                }
                Err(status) => failed = failed.or(Some(status)),
            }
        }
        match failed {
            Some(status) => Err(status),
            None => Ok(Response::new(v1::DeleteLegsResponse { stats, unknown })),
        }
    }

    async fn answer(&self, req: Request<v1::AnswerRequest>) -> Result<Response<v1::AnswerResponse>, Status> {
        let r = req.into_inner();
        let legs = stream_legs(&r.streams)?;
        let first_answerer = first_answerer(&legs)?;
        let core = self.core_of(first_answerer, "streams.answerer_leg")?;
        let ids: Vec<u64> = legs.iter().flatten().flat_map(|&(a, b)| [a, b]).collect();
        if ids.iter().all(|id| id >> CORE_SHIFT == first_answerer >> CORE_SHIFT) {
            return self.answer_on_one_core(core, first_answerer, &r.sdp, &legs, ids).await.map(Response::new);
        }
        let pending = self
            .ask(core, |reply| Command::GetOffer { id: first_answerer, reply })
            .await?
            .filter(|p| p.legs == pairs(&legs))
            .ok_or_else(|| Status::failed_precondition("streams: no offer was made for these legs"))?;
        let mut to_offerer = Vec::with_capacity(legs.len());
        for (i, pair) in legs.iter().enumerate() {
            to_offerer.push(match pair {
                Some((offerer, _)) => Some(self.leg(*offerer, &format!("streams[{i}].offerer_leg")).await?.local_port),
                None => None,
            });
        }
        let anchor = sdp::Anchor { ip: self.inner.advertise_ip, ports: to_offerer };
        let answer = sdp::answer(&pending.state, r.sdp.as_bytes(), &anchor).map_err(sdp_status)?;
        let mut streams = Vec::with_capacity(answer.streams.len());
        for (i, (pair, negotiated)) in legs.iter().zip(&answer.streams).enumerate() {
            let (Some((a, b)), Some(n)) = (pair, negotiated) else {
                streams.push(v1::NegotiatedStream::default());
                continue;
            };
            let (leg_a, leg_b) = (self.leg(*a, "offerer_leg").await?, self.leg(*b, "answerer_leg").await?);
            let mut bridge = match (leg_a.bridge, leg_b.bridge) {
                (Some(x), Some(y)) if x == y => Some(x),
                (None, None) => None,
                _ => return Err(Status::failed_precondition(format!("streams[{i}]: a leg is bridged to another leg"))),
            };
            if let Some(id) = bridge.filter(|_| leg_a.codec != n.offerer_codec || leg_b.codec != n.answerer_codec) {
                // The codecs changed (a new offer/answer mid-call): the bridge is made again for them.
                let core = self.core_of(id, "bridge")?;
                self.ask(core, |reply| Command::DeleteBridge { id, reply }).await?;
                bridge = None;
            }
            // Where the offerer said it receives (latching corrects it behind NAT).
            self.set_media(*a, &n.offerer, n.offerer.rtp, n.offerer_codec).await?;
            self.set_media(*b, &n.answerer, n.answerer.rtp, n.answerer_codec).await?;
            let bridge_id = match bridge {
                Some(id) => id,
                None => self.bridge_legs(*a, *b, ("offerer_leg", "answerer_leg")).await?,
            };
            streams.push(v1::NegotiatedStream {
                offerer_codec: n.offerer_codec.as_ref().map(codec_msg),
                answerer_codec: n.answerer_codec.as_ref().map(codec_msg),
                transcoded: n.transcoded,
                bridge_id,
            });
        }
        Ok(Response::new(v1::AnswerResponse { sdp: answer.sdp, streams }))
    }

    async fn create_conference(&self, req: Request<v1::CreateConferenceRequest>) -> Result<Response<v1::CreateConferenceResponse>, Status> {
        let r = req.into_inner();
        let rate = match r.rate {
            0 => 16_000,
            rate @ (8000 | 16_000 | 48_000) => rate,
            other => return Err(Status::invalid_argument(format!("rate: {other} is not 8000, 16000 or 48000"))),
        };
        if r.group.is_empty() {
            return Err(Status::invalid_argument("group: the conference's legs are placed by it; give one"));
        }
        let core = self.pick_core(&r.group);
        let id = self.new_id(core);
        self.ask(&self.inner.cores[core], |reply| Command::CreateConference { id, rate, reply }).await?;
        Ok(Response::new(v1::CreateConferenceResponse { conference_id: id, core: core as u32 }))
    }

    async fn delete_conference(&self, req: Request<v1::DeleteConferenceRequest>) -> Result<Response<v1::DeleteConferenceResponse>, Status> {
        let id = req.into_inner().conference_id;
        let core = self.core_of(id, "conference_id")?;
        let leg_ids = self.ask(core, |reply| Command::DeleteConference { id, reply }).await?;
        Ok(Response::new(v1::DeleteConferenceResponse { leg_ids }))
    }

    async fn add_participant(&self, req: Request<v1::ParticipantRequest>) -> Result<Response<v1::ParticipantResponse>, Status> {
        self.participant(req.into_inner(), true).await
    }

    async fn update_participant(&self, req: Request<v1::ParticipantRequest>) -> Result<Response<v1::ParticipantResponse>, Status> {
        self.participant(req.into_inner(), false).await
    }

    async fn remove_participant(&self, req: Request<v1::RemoveParticipantRequest>) -> Result<Response<v1::ParticipantResponse>, Status> {
        let r = req.into_inner();
        // The conference's core lets the member go (and tells the member's core, if another).
        let core = self.core_of(r.conference_id, "conference_id")?;
        self.core_of(r.leg_id, "leg_id")?;
        let (conference, leg) = (r.conference_id, r.leg_id);
        self.ask(core, |reply| Command::RemoveMember { conference, leg, reply }).await?;
        Ok(Response::new(v1::ParticipantResponse {}))
    }

    async fn play(&self, req: Request<v1::PlayRequest>) -> Result<Response<v1::PlayResponse>, Status> {
        let r = req.into_inner();
        let source = r.source.ok_or_else(|| Status::invalid_argument("source: a file or a tone is needed"))?;
        let core = self.core_of(r.leg_id, "leg_id")?;
        let id = r.leg_id;
        let named = |s: Status| Status::new(s.code(), format!("leg_id: {}", s.message()));
        let rate = self.ask(core, |reply| Command::PlayRate { id, reply }).await.map_err(named)?;
        // Reading and resampling a file is blocking work: off the async threads.
        let service = self.clone();
        let pcm = tokio::task::spawn_blocking(move || service.prompt(&source, rate))
            .await
            .map_err(|e| Status::internal(format!("reading the prompt: {e}")))??;
        let play = self.new_id(core.core);
        let duration_ms = (pcm.len() as u64 * 1000 / u64::from(rate.max(1))) as u32;
        let looped = r.r#loop;
        self.ask(core, |reply| Command::Play { id, play, pcm, looped, reply }).await.map_err(named)?;
        Ok(Response::new(v1::PlayResponse { play_id: play, duration_ms }))
    }

    async fn stop_play(&self, req: Request<v1::StopPlayRequest>) -> Result<Response<v1::StopPlayResponse>, Status> {
        let id = req.into_inner().leg_id;
        let core = self.core_of(id, "leg_id")?;
        let stopped = self.ask(core, |reply| Command::StopPlay { id, reply }).await?;
        Ok(Response::new(v1::StopPlayResponse { stopped }))
    }

    async fn inject_dtmf(&self, req: Request<v1::InjectDtmfRequest>) -> Result<Response<v1::InjectDtmfResponse>, Status> {
        let r = req.into_inner();
        let bad = |field: &str, why: String| Status::invalid_argument(format!("{field}: {why}"));
        let on = match r.duration_ms {
            0 => 100,
            d @ 40..=5000 => d,
            d => return Err(bad("duration_ms", format!("{d} is not 40-5000"))),
        };
        let pause = match r.pause_ms {
            0 => 60,
            p @ 1..=5000 => p,
            p => return Err(bad("pause_ms", format!("{p} is not 0-5000"))),
        };
        if let Some(c) = r.digits.chars().find(|c| media_codecs::dtmf::frequencies(*c).is_none()) {
            return Err(bad("digits", format!("{c:?} is not 0-9, *, #, A-D")));
        }
        if r.digits.is_empty() || r.digits.len() > media_engine::engine::transcode::MAX_INJECTED {
            return Err(bad("digits", format!("{} digits; 1-{} at a time", r.digits.len(), media_engine::engine::transcode::MAX_INJECTED)));
        }
        let core = self.core_of(r.leg_id, "leg_id")?;
        let (id, digits) = (r.leg_id, r.digits);
        let (on, pause) = (Duration::from_millis(u64::from(on)), Duration::from_millis(u64::from(pause)));
        let queued = self
            .ask(core, |reply| Command::InjectDtmf { id, digits, on, pause, reply })
            .await
            .map_err(|s| Status::new(s.code(), format!("leg_id: {}", s.message())))?;
        Ok(Response::new(v1::InjectDtmfResponse { queued: queued as u32 }))
    }

    async fn delete_bridge(&self, req: Request<v1::DeleteBridgeRequest>) -> Result<Response<v1::DeleteBridgeResponse>, Status> {
        let id = req.into_inner().bridge_id;
        let core = self.core_of(id, "bridge")?;
        self.ask(core, |reply| Command::DeleteBridge { id, reply }).await?;
        Ok(Response::new(v1::DeleteBridgeResponse {}))
    }

    async fn start_recording(&self, req: Request<v1::StartRecordingRequest>) -> Result<Response<v1::StartRecordingResponse>, Status> {
        let r = req.into_inner();
        recording_file(&r.file)?;
        let conference = r.conference_id != 0;
        if r.leg_ids.is_empty() != conference {
            return Err(Status::invalid_argument("leg_ids, conference_id: give 1 to 8 legs or one conference"));
        }
        if r.leg_ids.len() > 8 {
            return Err(Status::invalid_argument(format!("leg_ids: {} legs; a recording has at most 8 channels", r.leg_ids.len())));
        }
        if r.leg_ids.iter().enumerate().any(|(i, l)| r.leg_ids[..i].contains(l)) {
            return Err(Status::invalid_argument("leg_ids: a leg is named twice"));
        }
        if ![0, 8000, 16_000, 48_000].contains(&r.rate) {
            return Err(Status::invalid_argument(format!("rate: {} is not 8000, 16000 or 48000 (or 0)", r.rate)));
        }
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        // Taps first (they tell the codecs or the mix rate), then the file; media tapped before
        // the file is open is not in it (milliseconds).
        let mut rates = Vec::new();
        let mut tapped = Vec::new();
        let mut failure = None;
        if conference {
            let conference = r.conference_id;
            match self.core_of(conference, "conference_id") {
                Ok(core) => match self.ask(core, |reply| Command::RecordConference { id: conference, recording: id, reply }).await {
                    Ok(rate) => {
                        rates.push(rate);
                        tapped.push(core.core);
                    }
                    Err(e) => failure = Some(e),
                },
                Err(e) => failure = Some(e),
            }
        } else {
            for (channel, &leg) in r.leg_ids.iter().enumerate() {
                let field = format!("leg_ids[{channel}]");
                let tap = match self.core_of(leg, &field) {
                    Ok(core) => self
                        .ask(core, |reply| Command::RecordLeg { id: leg, recording: id, channel: channel as u8, reply })
                        .await
                        .map(|codec| (core.core, codec))
                        .map_err(|s| Status::new(s.code(), format!("{field}: {}", s.message()))),
                    Err(e) => Err(e),
                };
                match tap {
                    Ok((core, codec)) => {
                        rates.extend(codec.map(|c| c.params.rate));
                        tapped.push(core);
                    }
                    Err(e) => {
                        failure = Some(e);
                        break;
                    }
                }
            }
        }
        let channels = if conference { 1 } else { r.leg_ids.len() as u8 };
        let rate = if r.rate != 0 { r.rate } else { recording_rate(rates.into_iter()) };
        if failure.is_none() {
            if let Err(why) = self.inner.recorder.start(id, r.file.clone(), channels, rate, r.pcap && !conference).await {
                failure = Some(Status::failed_precondition(format!("file: {why}")));
            }
        }
        if let Some(status) = failure {
            for core in tapped {
                if let Some(c) = self.inner.cores.get(core) {
                    let _ = c.submit(Command::StopRecording { recording: id, reply: None });
                }
            }
            return Err(status);
        }
        tracing::info!(recording = id, file = %r.file, channels, rate, "recording started");
        Ok(Response::new(v1::StartRecordingResponse { recording_id: id, rate, channels: u32::from(channels) }))
    }

    async fn stop_recording(&self, req: Request<v1::StopRecordingRequest>) -> Result<Response<v1::StopRecordingResponse>, Status> {
        let id = req.into_inner().recording_id;
        // The file first (so the taps' ends that follow find nothing to end), then the taps.
        let summary = self.inner.recorder.stop(id).await;
        for c in &self.inner.cores {
            let _ = c.submit(Command::StopRecording { recording: id, reply: None });
        }
        let summary =
            summary.ok_or_else(|| Status::not_found(format!("recording_id: {id} is not recording (it ended, or never started)")))?;
        Ok(Response::new(v1::StopRecordingResponse { summary: Some(recording_msg(&summary)) }))
    }

    async fn get_stats(&self, req: Request<v1::GetStatsRequest>) -> Result<Response<v1::GetStatsResponse>, Status> {
        let r = req.into_inner();
        let filter = if r.totals_only {
            Some(Vec::new())
        } else if r.leg_ids.is_empty() {
            None
        } else {
            Some(r.leg_ids)
        };
        let reports = self.reports(filter).await?;
        let mut resp = v1::GetStatsResponse { boot_id: self.inner.boot_id, ..Default::default() };
        for rep in reports {
            resp.legs.extend(rep.legs.iter().map(|s| self.leg_stats(rep.core, s)));
            resp.cores.push(v1::CoreStats {
                core: rep.core as u32,
                legs: rep.leg_count as u32,
                bridges: rep.bridge_count as u32,
                packets_in: rep.counters.packets_in,
                packets_forwarded: rep.counters.packets_forwarded,
                packets_handed_off: rep.counters.packets_handed_off,
                packets_consumed: rep.counters.packets_consumed,
                mix_ticks: rep.counters.mix_ticks,
                mix_ticks_late: rep.counters.mix_ticks_late,
                mix_ticks_missed: rep.counters.mix_ticks_missed,
                recording_dropped: rep.counters.taps_dropped,
                drops: Some(drops_msg(&rep.counters.drops)),
                command_queue_full: self.inner.cores[rep.core].queue_full(),
                free_ports: rep.free_ports as u32,
                driver: Some(v1::DriverCounters {
                    not_udp: rep.driver.not_udp,
                    not_ours: rep.driver.not_ours,
                    no_neighbour: rep.driver.no_neighbour,
                    tx_full: rep.driver.tx_full,
                    rewrite_failed: rep.driver.rewrite_failed,
                    handoff_out: rep.driver.handoff_out,
                    handoff_full: rep.driver.handoff_full,
                    handoff_in: rep.driver.handoff_in,
                }),
            });
        }
        Ok(Response::new(resp))
    }

    type EventsStream = EventStream;

    async fn events(&self, _req: Request<v1::EventsRequest>) -> Result<Response<Self::EventsStream>, Status> {
        if *self.inner.stopping.borrow() {
            return Err(Status::unavailable("media plane is shutting down"));
        }
        let svc = self.clone();
        let events = BroadcastStream::new(self.inner.events.subscribe()).filter_map(move |item| match item {
            Ok((core, ev)) => Some(Some(Ok(svc.event_msg(core, ev)))),
            Err(tokio_stream::wrappers::errors::BroadcastStreamRecvError::Lagged(n)) => {
                tracing::warn!(missed = n, "event subscriber too slow; events dropped");
                None
            }
        });
        // The stream ends (None sentinel) when shutdown begins.
        let stop = WatchStream::new(self.inner.stopping.subscribe()).filter(|s| *s).map(|_| None);
        let stream = events.merge(stop).take_while(Option::is_some).filter_map(|x| x);
        Ok(Response::new(Box::pin(stream)))
    }
}

impl MediaService {
    fn event_msg(&self, core: usize, ev: Event) -> v1::Event {
        match ev {
            Event::Latched { leg, remote, rtcp } => {
                v1::Event { leg_id: leg, kind: Some(v1::event::Kind::Latched(v1::Latched { remote: Some(endpoint_msg(remote)), rtcp })) }
            }
            Event::Dtmf { leg, digit, duration_ms } => {
                v1::Event { leg_id: leg, kind: Some(v1::event::Kind::Dtmf(v1::Dtmf { digit: digit.to_string(), duration_ms })) }
            }
            Event::PlayFinished { leg, play, stopped } => {
                v1::Event { leg_id: leg, kind: Some(v1::event::Kind::PlayFinished(v1::PlayFinished { play_id: play, stopped })) }
            }
            Event::Talking { leg, conference, talking } => {
                v1::Event { leg_id: leg, kind: Some(v1::event::Kind::Talking(v1::Talking { conference_id: conference, talking })) }
            }
            Event::Member { leg, conference, joined } => {
                v1::Event { leg_id: leg, kind: Some(v1::event::Kind::Member(v1::ConferenceMember { conference_id: conference, joined })) }
            }
            Event::Quality { leg, alarm, loss_permille, jitter_us } => {
                v1::Event { leg_id: leg, kind: Some(v1::event::Kind::Quality(v1::Quality { alarm, loss_permille, jitter_us })) }
            }
            Event::RecordingStopped(summary) => {
                v1::Event { leg_id: 0, kind: Some(v1::event::Kind::RecordingStopped(recording_msg(&summary))) }
            }
            Event::TimedOut { leg, stats } => v1::Event {
                leg_id: leg,
                kind: Some(v1::event::Kind::TimedOut(v1::LegTimedOut { stats: Some(self.leg_stats(core, &stats)) })),
            },
        }
    }
}

/// A random, non-zero instance id (std's per-process random hash keys, the clock and the pid).
fn new_boot_id() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos()));
    h.write_u32(std::process::id());
    h.finish().max(1)
}
