//! Prometheus metrics of the media plane: `GET /metrics` on `metrics_listen` (the OpenMetrics
//! text format, through the `prometheus-client` crate).
//!
//! Each scrape asks every core for its counters (the same command GetStats uses, without the
//! per-leg lists) and encodes them, labelled by core: packets in, forwarded, handed off and
//! consumed; drops by reason; legs, bridges, transcoders, conferences and their members, free
//! ports; the AF_XDP driver's own counters; the ng listener's requests, errors and calls; the gRPC
//! API's latency by method (a histogram, timed by a tower layer around the server). `docs/grafana/media-plane.json` is a dashboard of them.

use std::net::SocketAddr;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use crate::api::MediaService;
use crate::driver::CoreReport;
use crate::ng::NgService;

/// A per-core series: name, help, and how to read it from a core's report.
type Series = (&'static str, &'static str, fn(&CoreReport) -> u64);

/// The counters of every core at one scrape.
#[derive(Debug)]
struct Snapshot(Vec<CoreReport>);

fn family(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    kind: MetricType,
    values: impl Iterator<Item = (Vec<(&'static str, String)>, u64)>,
) -> Result<(), std::fmt::Error> {
    let mut metric = encoder.encode_descriptor(name, help, None, kind)?;
    for (labels, value) in values {
        let sample = metric.encode_family(&labels)?;
        match kind {
            MetricType::Counter => ConstCounter::new(value).encode(sample)?,
            _ => ConstGauge::new(i64::try_from(value).unwrap_or(i64::MAX)).encode(sample)?,
        }
    }
    Ok(())
}

impl Collector for Snapshot {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let core = |r: &CoreReport| vec![("core", r.core.to_string())];
        let per_core = |f: fn(&CoreReport) -> u64| self.0.iter().map(move |r| (core(r), f(r)));
        let counters: [Series; 8] = [
            ("media_packets_in", "Packets that reached a media core", |r| r.counters.packets_in),
            ("media_packets_forwarded", "Packets sent on: relayed in place, and hand-offs from other cores", |r| {
                r.counters.packets_forwarded
            }),
            ("media_packets_handed_off", "Packets passed to the core that owns their bridged leg", |r| r.counters.packets_handed_off),
            ("media_packets_consumed", "Packets taken in by transcoding, conferences or SRTP re-encryption", |r| {
                r.counters.packets_consumed
            }),
            ("media_recording_dropped", "Recorded media dropped because the recorder fell behind", |r| r.counters.taps_dropped),
            ("media_mix_ticks", "Conference mixing periods run", |r| r.counters.mix_ticks),
            ("media_mix_ticks_late", "Conference mixing periods run more than 5 ms late", |r| r.counters.mix_ticks_late),
            ("media_mix_ticks_missed", "Conference mixing periods skipped (the core fell behind)", |r| r.counters.mix_ticks_missed),
        ];
        for (name, help, f) in counters {
            family(&mut encoder, name, help, MetricType::Counter, per_core(f))?;
        }
        let gauges: [Series; 6] = [
            ("media_legs", "Legs", |r| r.leg_count as u64),
            ("media_bridges", "Bridges", |r| r.bridge_count as u64),
            ("media_transcoders", "Legs whose incoming media is transcoded or generated", |r| r.transcoders as u64),
            ("media_conferences", "Conferences", |r| r.conferences as u64),
            ("media_conference_members", "Legs in conferences", |r| r.conference_members as u64),
            ("media_free_ports", "Media ports free for new legs", |r| r.free_ports as u64),
        ];
        for (name, help, f) in gauges {
            family(&mut encoder, name, help, MetricType::Gauge, per_core(f))?;
        }
        let drops = self.0.iter().flat_map(|r| {
            let d = r.counters.drops;
            [
                ("malformed", d.malformed),
                ("wrong_source", d.wrong_source),
                ("no_route", d.no_route),
                ("muted", d.muted),
                ("send_failed", d.send_failed),
                ("queue_full", d.queue_full),
                ("unknown_payload_type", d.unknown_payload_type),
                ("undecodable", d.undecodable),
                ("late", d.late),
                ("srtp_auth", d.srtp_auth),
                ("srtp_replay", d.srtp_replay),
                ("srtp_other", d.srtp_other),
            ]
            .into_iter()
            .map(move |(reason, v)| (vec![("core", r.core.to_string()), ("reason", reason.to_string())], v))
        });
        family(&mut encoder, "media_drops", "Packets dropped, by reason", MetricType::Counter, drops)?;
        let driver = self.0.iter().flat_map(|r| {
            let d = r.driver;
            [
                ("not_udp", d.not_udp),
                ("not_ours", d.not_ours),
                ("no_neighbour", d.no_neighbour),
                ("tx_full", d.tx_full),
                ("rewrite_failed", d.rewrite_failed),
                ("handoff_out", d.handoff_out),
                ("handoff_full", d.handoff_full),
                ("handoff_in", d.handoff_in),
            ]
            .into_iter()
            .map(move |(what, v)| (vec![("core", r.core.to_string()), ("counter", what.to_string())], v))
        });
        family(&mut encoder, "media_driver", "The driver's own frame counters and cross-core hand-offs", MetricType::Counter, driver)
    }
}

/// The ng listener's counters at one scrape.
#[derive(Debug)]
struct NgSnapshot {
    counters: [(&'static str, u64); 9],
    calls: u64,
}

impl NgSnapshot {
    fn of(ng: &NgService) -> Self {
        let c = ng.counters();
        let get = |a: &std::sync::atomic::AtomicU64| a.load(std::sync::atomic::Ordering::Relaxed);
        Self {
            counters: [
                ("requests", get(&c.requests)),
                ("errors", get(&c.errors)),
                ("load_limited", get(&c.load_limited)),
                ("resent", get(&c.resent)),
                ("undecodable", get(&c.undecodable)),
                ("calls_created", get(&c.calls_created)),
                ("calls_timed_out", get(&c.calls_timed_out)),
                ("overloaded", get(&c.overloaded)),
                ("cache_full", ng.cache_full()),
            ],
            calls: ng.calls() as u64,
        }
    }
}

impl Collector for NgSnapshot {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let counters = self.counters.iter().map(|(what, v)| (vec![("counter", (*what).to_string())], *v));
        family(
            &mut encoder,
            "media_ng",
            "ng protocol: requests, errors, load-limited refusals, resent requests answered from the cache, undecodable datagrams, calls created and timed out, datagrams dropped while too many requests ran, requests the full reply cache could not keep",
            MetricType::Counter,
            counters,
        )?;
        family(
            &mut encoder,
            "media_ng_calls",
            "Calls set up over the ng protocol, open now",
            MetricType::Gauge,
            std::iter::once((Vec::new(), self.calls)),
        )
    }
}

/// The gRPC methods timed by name (any other path is timed as "other": a client cannot grow the
/// label set).
const METHODS: [&str; 19] = [
    "CreateLeg",
    "UpdateLeg",
    "DeleteLeg",
    "CreateBridge",
    "DeleteBridge",
    "Offer",
    "Answer",
    "InjectDtmf",
    "Play",
    "StopPlay",
    "CreateConference",
    "DeleteConference",
    "AddParticipant",
    "UpdateParticipant",
    "RemoveParticipant",
    "StartRecording",
    "StopRecording",
    "GetStats",
    "Events",
];

/// Label of the gRPC latency histogram.
#[derive(Debug, Clone, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
pub struct RpcLabels {
    /// The gRPC method (`CreateLeg`, …), or `other`.
    pub method: &'static str,
}

/// Time each gRPC request took to be answered, by method (for `Events`, until its stream opened).
pub type RpcLatency = Family<RpcLabels, Histogram>;

/// A new latency histogram family: 50 µs … ~6.6 s (past the control plane's 2 s deadline).
pub fn rpc_latency() -> RpcLatency {
    Family::new_with_constructor(|| Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(0.00005, 2.0, 18)))
}

/// Records a request's time when dropped: when it is answered, and also when the client gave up
/// and the request was dropped unanswered (the slowest ones).
struct Timing {
    latency: RpcLatency,
    method: &'static str,
    started: std::time::Instant,
}

impl Drop for Timing {
    fn drop(&mut self) {
        self.latency.get_or_create(&RpcLabels { method: self.method }).observe(self.started.elapsed().as_secs_f64());
    }
}

/// The tower layer that times the gRPC server's requests into `latency`.
pub fn timing_layer(latency: RpcLatency) -> impl tower::Layer<tonic::service::Routes, Service = Timed<tonic::service::Routes>> + Clone {
    tower::layer::layer_fn(move |inner| Timed { inner, latency: latency.clone() })
}

/// A gRPC service whose requests are timed (see [`timing_layer`]).
#[derive(Debug, Clone)]
pub struct Timed<S> {
    inner: S,
    latency: RpcLatency,
}

impl<S, B> tower::Service<axum::http::Request<B>> for Timed<S>
where
    S: tower::Service<axum::http::Request<B>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = std::pin::Pin<Box<dyn std::future::Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: axum::http::Request<B>) -> Self::Future {
        let name = request.uri().path().rsplit('/').next().unwrap_or_default();
        let method = METHODS.iter().find(|m| **m == name).copied().unwrap_or("other");
        let timing = Timing { latency: self.latency.clone(), method, started: std::time::Instant::now() };
        let response = self.inner.call(request);
        Box::pin(async move {
            let result = response.await;
            drop(timing);
            result
        })
    }
}

/// The metrics text of `service` (and of the ng listener, if there is one) now.
pub async fn render(service: &MediaService, ng: Option<&NgService>) -> Result<String, String> {
    let reports = service.core_reports().await.map_err(|s| s.message().to_owned())?;
    let mut registry = Registry::default();
    registry.register("grpc_request_duration_seconds", "Time the gRPC API took to answer each request, by method", service.rpc_latency());
    registry.register_collector(Box::new(Snapshot(reports)));
    if let Some(ng) = ng {
        registry.register_collector(Box::new(NgSnapshot::of(ng)));
    }
    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, &registry).map_err(|e| e.to_string())?;
    Ok(out)
}

/// Serves `GET /metrics` on `addr` until `shutdown` completes.
pub async fn serve(
    addr: SocketAddr,
    service: MediaService,
    ng: Option<NgService>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), String> {
    use axum::http::{header, StatusCode};
    use axum::response::IntoResponse;
    let listener = tokio::net::TcpListener::bind(addr).await.map_err(|e| format!("bind({addr}) for metrics failed: {e}"))?;
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let (service, ng) = (service.clone(), ng.clone());
            async move {
                match render(&service, ng.as_ref()).await {
                    Ok(text) => {
                        ([(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], text).into_response()
                    }
                    Err(e) => (StatusCode::SERVICE_UNAVAILABLE, e).into_response(),
                }
            }
        }),
    );
    axum::serve(listener, app).with_graceful_shutdown(shutdown).await.map_err(|e| format!("metrics server: {e}"))
}
