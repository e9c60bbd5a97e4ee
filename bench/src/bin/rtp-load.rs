//! `rtp-load`: RTP load generator and sink for the media plane (see the `bench` crate docs).
//!
//! `--peer` picks the relay under test: `media-plane` (calls set up through its gRPC API) or
//! `rtpengine` (calls set up with ng offer/answer, torn down with delete). Only set-up and
//! tear-down differ; traffic and reporting are the same code for both.
//!
//! Fixed mode runs N calls; `--search` finds the largest N with 0 loss and p99 below
//! `--max-p99-us`. `--codec-a`/`--codec-b` make every call a transcoded one: side A sends 20 ms
//! frames of its codec (speech, encoded once at start), side B of its own; the media plane is
//! given each leg's codec, rtpengine is offered side A's codec with `codec-transcode` of B's and
//! answered with B's alone. Progress goes to stderr, results to stdout as one JSON line per run (search: one
//! per trial, then a summary line).

use std::net::{IpAddr, SocketAddr};
use std::process::ExitCode;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bench::ng::{NgClient, NgError};
use bench::traffic::{self, Call, Endpoints, Params, Report, TranscodeLoad};
use clap::{Parser, ValueEnum};
use media_codecs::{CodecKind, CodecParams};
use proto::v1::media_plane_client::MediaPlaneClient;
use proto::v1::{CreateBridgeRequest, CreateLegRequest, DeleteLegRequest, Endpoint};
use tonic::transport::Channel;

#[derive(Debug, Parser)]
#[command(version, about = "RTP load generator and sink driving the media plane's gRPC API or rtpengine's ng protocol")]
struct Args {
    /// Relay under test.
    #[arg(long, value_enum, default_value_t = PeerKind::MediaPlane)]
    peer: PeerKind,
    /// Media plane gRPC address (--peer media-plane).
    #[arg(long, default_value = "http://127.0.0.1:9090")]
    grpc: String,
    /// rtpengine ng control address, UDP (--peer rtpengine).
    #[arg(long, default_value = "127.0.0.1:2223")]
    ng: SocketAddr,
    /// Concurrent calls (two legs and a bridge each); in --search, the first size tried.
    #[arg(long, default_value_t = 100)]
    calls: usize,
    /// Measured seconds per run (after warm-up).
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Warm-up seconds, not measured.
    #[arg(long, default_value_t = 1.0)]
    warmup: f64,
    /// Packets per second per stream.
    #[arg(long, default_value_t = 50)]
    rate: u32,
    /// RTP packet size in bytes, header included (172 = G.711 20 ms: 12 + 160).
    #[arg(long, default_value_t = 172)]
    size: usize,
    /// Local address of the generator's sockets.
    #[arg(long, default_value = "127.0.0.1")]
    local_ip: IpAddr,
    /// Generator sockets (calls share them; each leg's remote is one of them).
    #[arg(long, default_value_t = 16)]
    sockets: usize,
    /// PID of the relay (media plane or rtpengine), for its CPU time.
    #[arg(long)]
    relay_pid: Option<u32>,
    /// CPU to pin the generator to.
    #[arg(long)]
    cpu: Option<usize>,
    /// Pacing tick in microseconds: the most the generator sleeps between two sends (at least 20).
    /// 0 = busy pacing: never sleep, send every packet as it falls due. Pacing is then exact and
    /// the generator's CPU never idles (its vCPU is never halted and woken late), at the price of
    /// a whole core, so its own CPU figure then says nothing.
    #[arg(long, default_value_t = 250)]
    tick_us: u64,
    /// Search for the largest call count with 0 loss and p99 under --max-p99-us.
    #[arg(long)]
    search: bool,
    #[arg(long, default_value_t = 1000.0)]
    max_p99_us: f64,
    /// Upper bound of the search.
    #[arg(long, default_value_t = 4000)]
    max_calls: usize,
    /// Stop the search once the bracket is narrower than this many calls.
    #[arg(long, default_value_t = 50)]
    resolution: usize,
    /// Label stored in the JSON output (e.g. the backend under test).
    #[arg(long, default_value = "")]
    label: String,
    /// Transcoded calls: the codec side A sends and receives (needs --codec-b).
    #[arg(long, value_enum, requires = "codec_b")]
    codec_a: Option<LoadCodec>,
    /// The codec side B sends and receives.
    #[arg(long, value_enum, requires = "codec_a")]
    codec_b: Option<LoadCodec>,
    /// Opus encoder complexity given to the media plane (0-10; 10 is libopus's default, what
    /// rtpengine's encoder runs with).
    #[arg(long, default_value_t = 10)]
    opus_complexity: u32,
    /// Conference load (media plane only): --calls members in one conference, in --codec-a,
    /// each sending and hearing the mix.
    #[arg(long, requires = "codec_a", conflicts_with = "codec_b")]
    conference: bool,
    /// Conference members that talk (send speech); the others send silence.
    #[arg(long, default_value_t = 3)]
    talkers: usize,
    /// The conference's mixing rate (8000, 16000, 48000; 0: the codec's).
    #[arg(long, default_value_t = 0)]
    conference_rate: u32,
}

/// Codecs of transcoded load.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum LoadCodec {
    Pcmu,
    Pcma,
    G722,
    Opus,
    /// Opus carrying 16 kHz audio (wideband), decoded and encoded at 16 kHz.
    Opus16,
}

impl LoadCodec {
    fn kind(self) -> CodecKind {
        match self {
            Self::Pcmu => CodecKind::Pcmu,
            Self::Pcma => CodecKind::Pcma,
            Self::G722 => CodecKind::G722,
            Self::Opus | Self::Opus16 => CodecKind::Opus,
        }
    }
    /// Payload type used for it (static ones, 111 for Opus as browsers do).
    fn payload_type(self) -> u8 {
        match self {
            Self::Pcmu => 0,
            Self::Pcma => 8,
            Self::G722 => 9,
            Self::Opus | Self::Opus16 => 111,
        }
    }
    /// `a=rtpmap` encoding (RFC 7587: opus/48000/2 whatever the channels).
    fn rtpmap(self) -> &'static str {
        match self {
            Self::Pcmu => "PCMU/8000",
            Self::Pcma => "PCMA/8000",
            Self::G722 => "G722/8000",
            Self::Opus | Self::Opus16 => "opus/48000/2",
        }
    }
    fn params(self) -> CodecParams {
        CodecParams::new(self.kind(), if self == Self::Opus16 { 16_000 } else { 48_000 })
    }
    /// One second of silence as 20 ms payloads.
    fn silence(self) -> Vec<Vec<u8>> {
        let params = self.params();
        let Ok(mut enc) = media_codecs::encoder(&params) else { return Vec::new() };
        let frame = vec![0i16; params.rate as usize / 50];
        (0..50)
            .filter_map(|_| {
                let mut out = Vec::new();
                enc.encode(&frame, &mut out).ok().map(|_| out)
            })
            .collect()
    }
    /// One second of speech as 20 ms payloads (cycled by the generator).
    fn payloads(self) -> Vec<Vec<u8>> {
        let params = self.params();
        let Ok(mut enc) = media_codecs::encoder(&params) else { return Vec::new() };
        let signal = media_codecs::signal::speech_like(params.rate, 1.0);
        signal
            .chunks_exact(params.rate as usize / 50)
            .filter_map(|frame| {
                let mut out = Vec::new();
                enc.encode(frame, &mut out).ok().map(|_| out)
            })
            .collect()
    }
    /// The leg codec for the media plane's API.
    fn api(self, complexity: u32) -> proto::v1::Codec {
        proto::v1::Codec {
            payload_type: u32::from(self.payload_type()),
            name: self.kind().name().into(),
            rate: self.params().rate,
            channels: 1,
            ptime_ms: 20,
            opus: (self.kind() == CodecKind::Opus).then_some(proto::v1::OpusSettings { complexity, ..Default::default() }),
            telephone_event: None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
enum LoadError {
    #[error("gRPC connect to {0}: {1}")]
    Connect(String, tonic::transport::Error),
    #[error("gRPC {0}: {1}")]
    Rpc(&'static str, tonic::Status),
    #[error("media plane returned no local address")]
    NoLocal,
    #[error("media plane returned a bad local address: {0}")]
    BadLocal(String),
    #[error("rtpengine ng at {0}: {1}")]
    Ng(SocketAddr, NgError),
    #[error("{0}: {1}")]
    Task(&'static str, String),
    #[error(transparent)]
    Traffic(#[from] traffic::TrafficError),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum PeerKind {
    MediaPlane,
    Rtpengine,
}

impl PeerKind {
    fn name(self) -> &'static str {
        match self {
            Self::MediaPlane => "media-plane",
            Self::Rtpengine => "rtpengine",
        }
    }
}

/// The relay under test: how calls are set up and torn down on it, and what is set up now.
enum Peer {
    MediaPlane {
        client: MediaPlaneClient<Channel>,
        legs: Vec<u64>,
        conferences: Vec<u64>,
    },
    /// The ng client blocks: batches of requests run on a blocking task (see [`on_ng`]).
    Rtpengine {
        ng: Arc<Mutex<NgClient>>,
        call_ids: Vec<String>,
    },
}

impl Peer {
    async fn connect(args: &Args) -> Result<Self, LoadError> {
        match args.peer {
            PeerKind::MediaPlane => {
                let client = MediaPlaneClient::connect(args.grpc.clone()).await.map_err(|e| LoadError::Connect(args.grpc.clone(), e))?;
                Ok(Self::MediaPlane { client, legs: Vec::new(), conferences: Vec::new() })
            }
            PeerKind::Rtpengine => {
                let ng = Arc::new(Mutex::new(NgClient::new(args.ng).map_err(|e| LoadError::Ng(args.ng, e))?));
                on_ng(&ng, NgClient::ping).await?.map_err(|e| LoadError::Ng(args.ng, e))?;
                Ok(Self::Rtpengine { ng, call_ids: Vec::new() })
            }
        }
    }

    /// Sets up `n` calls whose sides have their media on the generator's sockets (see
    /// [`Endpoints::remote`]); on failure, tears down what was set up.
    async fn setup(&mut self, ep: &Endpoints, n: usize, run_id: u64, codecs: Option<Codecs>) -> Result<Vec<Call>, LoadError> {
        let remotes = (0..n).map(|c| Ok((ep.remote(c, 0)?, ep.remote(c, 1)?))).collect::<Result<Remotes, traffic::TrafficError>>()?;
        let result = match self {
            Self::MediaPlane { client, legs, conferences } if codecs.is_some_and(|c| c.conference.is_some()) => {
                setup_conference(client, legs, conferences, remotes, run_id, codecs).await
            }
            Self::MediaPlane { client, legs, .. } => setup_media_plane(client, legs, remotes, run_id, codecs).await,
            Self::Rtpengine { ng, call_ids } => setup_rtpengine(ng, call_ids, remotes, run_id, codecs).await,
        };
        if result.is_err() {
            self.teardown().await;
        }
        result
    }

    /// Tears down every call set up so far (best effort: failures are reported, not returned).
    async fn teardown(&mut self) {
        match self {
            Self::MediaPlane { client, legs, conferences } => {
                for conference_id in std::mem::take(conferences) {
                    let _ = client.clone().delete_conference(proto::v1::DeleteConferenceRequest { conference_id }).await;
                }
                let mut tasks = tokio::task::JoinSet::new();
                let mut failed = 0;
                for chunk in std::mem::take(legs).chunks(64) {
                    for &leg_id in chunk {
                        let mut cl = client.clone();
                        tasks.spawn(async move { cl.delete_leg(DeleteLegRequest { leg_id }).await });
                    }
                    while let Some(r) = tasks.join_next().await {
                        failed += usize::from(!matches!(r, Ok(Ok(_))));
                    }
                }
                if failed > 0 {
                    eprintln!("rtp-load: {failed} legs could not be deleted");
                }
            }
            Self::Rtpengine { ng, call_ids } => {
                let ids = std::mem::take(call_ids);
                let server = ng_server(ng);
                let Ok((failed, first)) = on_ng(ng, move |ng| {
                    let mut failed = 0;
                    let mut first = None;
                    for (i, id) in ids.iter().enumerate() {
                        match ng.delete_call(id) {
                            Ok(()) => {}
                            // rtpengine is gone: do not wait out the timeout once per call.
                            Err(e @ NgError::Timeout { .. }) => {
                                failed += ids.len() - i;
                                first.get_or_insert(e);
                                break;
                            }
                            Err(e) => {
                                failed += 1;
                                first.get_or_insert(e);
                            }
                        }
                    }
                    (failed, first)
                })
                .await
                else {
                    eprintln!("rtp-load: rtpengine delete task failed");
                    return;
                };
                if let Some(e) = first {
                    eprintln!("rtp-load: {failed} calls could not be deleted from rtpengine at {server}; first: {e}");
                }
            }
        }
    }
}

/// Runs `f` with the (blocking) ng client on a blocking task, off the async runtime.
async fn on_ng<T: Send + 'static>(ng: &Arc<Mutex<NgClient>>, f: impl FnOnce(&mut NgClient) -> T + Send + 'static) -> Result<T, LoadError> {
    let ng = Arc::clone(ng);
    tokio::task::spawn_blocking(move || f(&mut ng.lock().unwrap_or_else(PoisonError::into_inner)))
        .await
        .map_err(|e| LoadError::Task("ng task", e.to_string()))
}

fn ng_server(ng: &Mutex<NgClient>) -> SocketAddr {
    ng.lock().unwrap_or_else(PoisonError::into_inner).server()
}

/// Each side's media address on the generator, per call.
type Remotes = Vec<(SocketAddr, SocketAddr)>;

/// Codecs of sides A and B, and the Opus complexity for the media plane; for a conference, its
/// mixing rate (the members all use codec A).
#[derive(Debug, Clone, Copy)]
struct Codecs {
    a: LoadCodec,
    b: LoadCodec,
    opus_complexity: u32,
    conference: Option<u32>,
}

/// One conference of `2 n` members (the sides of the `n` "calls"), each on its own leg in the
/// conference's group (the conference's core), all of codec A.
async fn setup_conference(
    client: &MediaPlaneClient<Channel>,
    legs: &mut Vec<u64>,
    conferences: &mut Vec<u64>,
    remotes: Remotes,
    run_id: u64,
    codecs: Option<Codecs>,
) -> Result<Vec<Call>, LoadError> {
    let Some(c) = codecs else { return Ok(Vec::new()) };
    let group = format!("rtp-load-conference-{}-{run_id}", std::process::id());
    let mut cl = client.clone();
    let rate = c.conference.unwrap_or(16_000);
    let conf = cl
        .create_conference(proto::v1::CreateConferenceRequest { group: group.clone(), rate })
        .await
        .map_err(|e| LoadError::Rpc("CreateConference", e))?
        .into_inner();
    conferences.push(conf.conference_id);
    let mut locals = Vec::with_capacity(2 * remotes.len());
    for (m, remote) in remotes.iter().flat_map(|(a, b)| [*a, *b]).enumerate() {
        let leg = CreateLegRequest {
            call_id: format!("{group}-{m}"),
            group: group.clone(),
            remote: Some(Endpoint { ip: remote.ip().to_string(), port: u32::from(remote.port()) }),
            codec: Some(c.a.api(c.opus_complexity)),
            ..Default::default()
        };
        let r = cl.create_leg(leg).await.map_err(|e| LoadError::Rpc("CreateLeg", e))?.into_inner();
        legs.push(r.leg_id);
        let member = proto::v1::ParticipantRequest { conference_id: conf.conference_id, leg_id: r.leg_id, muted: false, deaf: false };
        cl.add_participant(member).await.map_err(|e| LoadError::Rpc("AddParticipant", e))?;
        let e = r.local.ok_or(LoadError::NoLocal)?;
        let ip: IpAddr = e.ip.parse().map_err(|_| LoadError::BadLocal(e.ip.clone()))?;
        locals.push(SocketAddr::new(ip, u16::try_from(e.port).map_err(|_| LoadError::BadLocal(e.port.to_string()))?));
    }
    Ok(locals.chunks_exact(2).map(|p| Call { a_local: p[0], b_local: p[1] }).collect())
}

/// The media plane's conference mixing counters, summed over cores.
async fn mix_counters(peer: &Peer) -> Option<(u64, u64, u64)> {
    let Peer::MediaPlane { client, .. } = peer else { return None };
    let r = client.clone().get_stats(proto::v1::GetStatsRequest { leg_ids: Vec::new(), totals_only: true }).await.ok()?.into_inner();
    Some(r.cores.iter().fold((0, 0, 0), |(t, l, m), c| (t + c.mix_ticks, l + c.mix_ticks_late, m + c.mix_ticks_missed)))
}

async fn setup_media_plane(
    client: &MediaPlaneClient<Channel>,
    legs: &mut Vec<u64>,
    remotes: Remotes,
    run_id: u64,
    codecs: Option<Codecs>,
) -> Result<Vec<Call>, LoadError> {
    let n = remotes.len();
    let mut tasks = tokio::task::JoinSet::new();
    let chunk = 64;
    let mut calls = vec![None; n];
    legs.reserve(2 * n);
    let mut next = 0;
    while next < n || !tasks.is_empty() {
        while next < n && tasks.len() < chunk {
            let c = next;
            next += 1;
            let mut cl = client.clone();
            let (ra, rb) = remotes[c];
            tasks.spawn(async move {
                let call_id = format!("rtp-load-{run_id}-{c}");
                let leg = |r: SocketAddr, codec: Option<proto::v1::Codec>| CreateLegRequest {
                    call_id: call_id.clone(),
                    remote: Some(Endpoint { ip: r.ip().to_string(), port: u32::from(r.port()) }),
                    codec,
                    ..Default::default()
                };
                let (codec_a, codec_b) = match codecs {
                    Some(c) => (Some(c.a.api(c.opus_complexity)), Some(c.b.api(c.opus_complexity))),
                    None => (None, None),
                };
                let a = cl.create_leg(leg(ra, codec_a)).await.map_err(|e| LoadError::Rpc("CreateLeg", e))?.into_inner();
                let b = cl.create_leg(leg(rb, codec_b)).await.map_err(|e| LoadError::Rpc("CreateLeg", e))?.into_inner();
                cl.create_bridge(CreateBridgeRequest { leg_a: a.leg_id, leg_b: b.leg_id })
                    .await
                    .map_err(|e| LoadError::Rpc("CreateBridge", e))?;
                let addr = |e: Option<Endpoint>| -> Result<SocketAddr, LoadError> {
                    let e = e.ok_or(LoadError::NoLocal)?;
                    let ip: IpAddr = e.ip.parse().map_err(|_| LoadError::BadLocal(e.ip.clone()))?;
                    Ok(SocketAddr::new(ip, u16::try_from(e.port).map_err(|_| LoadError::BadLocal(e.port.to_string()))?))
                };
                Ok::<_, LoadError>((c, Call { a_local: addr(a.local)?, b_local: addr(b.local)? }, [a.leg_id, b.leg_id]))
            });
        }
        if let Some(done) = tasks.join_next().await {
            let (c, call, ids) = done.map_err(|e| LoadError::Task("gRPC task", e.to_string()))??;
            calls[c] = Some(call);
            legs.extend(ids);
        }
    }
    Ok(calls.into_iter().flatten().collect())
}

/// One offer and one answer per call, in sequence (a request takes well under a millisecond on
/// loopback). Call-IDs carry the process id, so calls left over from an earlier run never clash.
async fn setup_rtpengine(
    ng: &Arc<Mutex<NgClient>>,
    call_ids: &mut Vec<String>,
    remotes: Remotes,
    run_id: u64,
    codecs: Option<Codecs>,
) -> Result<Vec<Call>, LoadError> {
    let server = ng_server(ng);
    let prefix = format!("rtp-load-{}-{run_id}", std::process::id());
    let (calls, ids, err) = on_ng(ng, move |ng| {
        let mut calls = Vec::with_capacity(remotes.len());
        let mut ids = Vec::with_capacity(remotes.len());
        for (c, (a, b)) in remotes.into_iter().enumerate() {
            let id = format!("{prefix}-{c}");
            let r = match codecs {
                None => ng.setup_call(&id, a, b, c as u64),
                Some(cs) => ng.setup_transcoded_call(
                    &id,
                    (a, cs.a.payload_type(), cs.a.rtpmap()),
                    (b, cs.b.payload_type(), cs.b.rtpmap()),
                    c as u64,
                ),
            };
            // Recorded even on failure: the offer may have created the call.
            ids.push(id);
            match r {
                Ok(call) => calls.push(call),
                Err(e) => return (calls, ids, Some(e)),
            }
        }
        (calls, ids, None)
    })
    .await?;
    call_ids.extend(ids);
    match err {
        Some(e) => Err(LoadError::Ng(server, e)),
        None => Ok(calls),
    }
}

fn print_human(label: &str, peer: PeerKind, r: &Report) {
    let opt = |v: Option<f64>, unit: &str| v.map_or("n/a".to_string(), |x| format!("{x:.3}{unit}"));
    eprintln!(
        "{label}{}: {} calls: offered {:.0} pps, forwarded {:.0} pps, lost {} ({:.4}%), reordered {}, misrouted {}\n  latency µs p50 {:.1} p90 {:.1} p99 {:.1} p99.9 {:.1} max {:.1}\n  relay CPU {} ({} µs/pkt, {} of a core), generator CPU {}, steal {}, kernel rcvbuf drops {}",
        peer.name(), r.calls, r.offered_pps, r.forwarded_pps, r.lost, r.loss_pct, r.reordered, r.misrouted,
        r.latency_us.p50, r.latency_us.p90, r.latency_us.p99, r.latency_us.p999, r.latency_us.max,
        opt(r.relay_cpu_s, " s"), opt(r.relay_cpu_us_per_pkt, ""), opt(r.relay_cpu_pct, "%"),
        opt(r.gen_cpu_s, " s"), opt(r.steal_pct, "%"), r.kernel_rcvbuf_errors.map_or("n/a".into(), |v| v.to_string()),
    );
    if let Some(m) = &r.mixer {
        eprintln!("  conference mixing periods (whole run): {} run, {} more than 5 ms late, {} missed", m.ticks, m.late, m.missed);
    }
}

fn json_line(label: &str, peer: PeerKind, mode: &str, r: &Report) -> String {
    let mut v = serde_json::to_value(r).unwrap_or_default();
    if let Some(o) = v.as_object_mut() {
        o.insert("peer".into(), peer.name().into());
        o.insert("label".into(), label.into());
        o.insert("mode".into(), mode.into());
    }
    v.to_string()
}

async fn one_run(args: &Args, peer: &mut Peer, n: usize, run_id: u64) -> Result<Report, LoadError> {
    let mut ep = Endpoints::bind(args.local_ip, args.sockets)?;
    eprintln!("rtp-load: setting up {n} calls on {}…", args.peer.name());
    let t = std::time::Instant::now();
    let codecs = match (args.codec_a, args.codec_b) {
        (Some(a), Some(b)) => Some(Codecs { a, b, opus_complexity: args.opus_complexity, conference: None }),
        (Some(a), None) if args.conference => {
            let rate = match (args.conference_rate, a) {
                (0, LoadCodec::Pcmu | LoadCodec::Pcma) => 8000,
                (0, LoadCodec::Opus) => 48_000,
                (0, _) => 16_000,
                (r, _) => r,
            };
            Some(Codecs { a, b: a, opus_complexity: args.opus_complexity, conference: Some(rate) })
        }
        _ => None,
    };
    // A conference of n members is n/2 "calls" of two members (see traffic's module docs).
    let n = if args.conference { n.div_ceil(2) } else { n };
    let calls = peer.setup(&ep, n, run_id, codecs).await?;
    eprintln!("rtp-load: {n} calls set up in {:.2} s; running {:.0}+{:.0} s", t.elapsed().as_secs_f64(), args.warmup, args.duration);
    let params = Params {
        rate: args.rate,
        size: args.size,
        warmup: Duration::from_secs_f64(args.warmup),
        duration: Duration::from_secs_f64(args.duration),
        drain: Duration::from_millis(300),
        tick: match args.tick_us {
            0 => Duration::ZERO,
            t => Duration::from_micros(t.max(20)),
        },
        relay_pid: args.relay_pid,
        transcode: codecs.map(|c| match c.conference {
            Some(_) => TranscodeLoad {
                payloads: [c.a.payloads(), c.a.silence()],
                payload_types: [c.a.payload_type(); 2],
                talkers: Some(args.talkers),
            },
            None => TranscodeLoad {
                payloads: [c.a.payloads(), c.b.payloads()],
                payload_types: [c.a.payload_type(), c.b.payload_type()],
                talkers: None,
            },
        }),
    };
    let mix_before = mix_counters(peer).await;
    let cpu = args.cpu;
    let report = tokio::task::spawn_blocking(move || {
        if let Some(cpu) = cpu {
            if !core_affinity::set_for_current(core_affinity::CoreId { id: cpu }) {
                eprintln!("rtp-load: could not pin to CPU {cpu}");
            }
        }
        traffic::run(&mut ep, &calls, &params, |pr| {
            eprintln!("  {:>5.1} s  sent {:>9}  received {:>9}", pr.elapsed.as_secs_f64(), pr.sent, pr.received);
        })
    })
    .await
    .map_err(|e| LoadError::Task("traffic thread", e.to_string()));
    let mix_after = mix_counters(peer).await;
    peer.teardown().await;
    let mut report = report??;
    if let (true, Some(a), Some(b)) = (args.conference, mix_before, mix_after) {
        report.mixer = Some(traffic::MixerCounters { ticks: b.0 - a.0, late: b.1 - a.1, missed: b.2 - a.2 });
    }
    Ok(report)
}

async fn main_async(args: Args) -> Result<(), LoadError> {
    let mut peer = Peer::connect(&args).await?;
    let label = if args.label.is_empty() { String::new() } else { format!("[{}] ", args.label) };
    if !args.search {
        let r = one_run(&args, &mut peer, args.calls.max(1), 0).await?;
        print_human(&label, args.peer, &r);
        println!("{}", json_line(&args.label, args.peer, "fixed", &r));
        return Ok(());
    }
    // Search: double until a run fails (or the bound), then bisect.
    let pass = |r: &Report| r.lost == 0 && r.misrouted == 0 && r.latency_us.p99 < args.max_p99_us;
    let (mut good, mut bad): (Option<(usize, Report)>, Option<usize>) = (None, None);
    let mut n = args.calls.max(1);
    let mut run_id = 0;
    loop {
        run_id += 1;
        let r = one_run(&args, &mut peer, n, run_id).await?;
        let ok = pass(&r);
        eprintln!("rtp-load: search trial {n} calls: {}", if ok { "pass" } else { "FAIL" });
        print_human(&label, args.peer, &r);
        println!("{}", json_line(&args.label, args.peer, "search-trial", &r));
        if ok {
            good = Some((n, r));
        } else {
            bad = Some(n);
        }
        let lo = good.as_ref().map_or(0, |g| g.0);
        let next = match bad {
            None if n >= args.max_calls => break,
            None => (n * 2).min(args.max_calls),
            Some(b) if b.saturating_sub(lo) <= args.resolution => break,
            Some(b) => (lo + b) / 2,
        };
        if next == n || next == 0 {
            break;
        }
        n = next;
    }
    match good {
        Some((n, r)) => {
            eprintln!("rtp-load: largest passing size: {n} calls ({:.0} pps)", r.forwarded_pps);
            println!("{}", json_line(&args.label, args.peer, "search-best", &r));
        }
        None => eprintln!("rtp-load: no size passed (smallest tried: {n} calls)"),
    }
    Ok(())
}

fn main() -> ExitCode {
    let args = Args::parse();
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("rtp-load: tokio runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(main_async(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("rtp-load: {e}");
            ExitCode::FAILURE
        }
    }
}
