//! `media-plane`: starts the media cores and serves the gRPC API until SIGINT/SIGTERM.
#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use media_plane::api::MediaService;
use media_plane::config::{ConfigError, FileConfig};
use media_plane::driver;
use proto::v1::media_plane_server::MediaPlaneServer;

/// Kernel-bypass-ready RTP/RTCP relay, driven over gRPC. Flags override the config file.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// TOML configuration file.
    #[arg(long)]
    config: Option<PathBuf>,
    /// gRPC listen address, e.g. 127.0.0.1:9090.
    #[arg(long)]
    grpc_listen: Option<String>,
    /// Address media sockets bind to.
    #[arg(long)]
    media_ip: Option<String>,
    /// Address announced to clients (when media_ip is behind NAT or a wildcard).
    #[arg(long)]
    advertise_ip: Option<String>,
    /// Media port range, e.g. 30000-39999.
    #[arg(long)]
    ports: Option<String>,
    /// Number of media cores (threads).
    #[arg(long)]
    cores: Option<i64>,
    /// First CPU to pin media cores to.
    #[arg(long)]
    first_cpu: Option<i64>,
    /// Do not pin media cores to CPUs.
    #[arg(long)]
    no_pin: bool,
    /// Idle legs are deleted after this many seconds.
    #[arg(long)]
    media_timeout_secs: Option<i64>,
    /// After a packet, keep polling this many microseconds before sleeping (0: sleep at once).
    #[arg(long)]
    idle_spin_us: Option<i64>,
    /// Datapath: udp (kernel sockets), xdp (AF_XDP on --interface) or auto (xdp, else udp).
    #[arg(long)]
    backend: Option<String>,
    /// Network interface of the xdp backend.
    #[arg(long)]
    interface: Option<String>,
    /// Directory of the files Play may read.
    #[arg(long)]
    prompt_dir: Option<String>,
    /// Address of GET /metrics (Prometheus); "" turns it off.
    #[arg(long)]
    metrics_listen: Option<String>,
    /// Directory recordings are written under.
    #[arg(long)]
    recording_dir: Option<String>,
    /// Address of the rtpengine ng protocol (UDP), e.g. 127.0.0.1:22222; "" turns it off.
    #[arg(long)]
    ng_listen: Option<String>,
    /// Most calls over ng at once before answering "load limit" (0: the port range only).
    #[arg(long)]
    ng_max_sessions: Option<i64>,
}

/// How long in-flight gRPC requests may take to finish after SIGTERM/SIGINT.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

fn load(args: &Args) -> Result<media_plane::config::Config, ConfigError> {
    let file = match &args.config {
        Some(p) => FileConfig::load(p)?,
        None => FileConfig::default(),
    };
    let flags = FileConfig {
        grpc_listen: args.grpc_listen.clone(),
        media_ip: args.media_ip.clone(),
        advertise_ip: args.advertise_ip.clone(),
        ports: args.ports.clone(),
        cores: args.cores,
        pin_cores: args.no_pin.then_some(false),
        first_cpu: args.first_cpu,
        media_timeout_secs: args.media_timeout_secs,
        idle_spin_us: args.idle_spin_us,
        backend: args.backend.clone(),
        interface: args.interface.clone(),
        prompt_dir: args.prompt_dir.clone(),
        metrics_listen: args.metrics_listen.clone(),
        ng_listen: args.ng_listen.clone(),
        recording_dir: args.recording_dir.clone(),
        ng_max_sessions: args.ng_max_sessions,
        ..Default::default()
    };
    file.overlay(flags).validate()
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let config = match load(&args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("media-plane: configuration error: {e}");
            return ExitCode::from(2);
        }
    };
    match run(config) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("media-plane: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(config: media_plane::config::Config) -> Result<(), Box<dyn std::error::Error>> {
    let (events, _) = tokio::sync::broadcast::channel(16 * 1024);
    let started = driver::start(&config, events.clone()).map_err(|e| format!("starting media cores: {e}"))?;
    let backend = started.backend;
    // Held until the cores have stopped: dropping it detaches the XDP program.
    let steering = started.steering;
    let service = MediaService::new(
        started.cores,
        events,
        config.media_ip,
        config.advertise_ip,
        config.prompt_dir.clone(),
        config.recording_dir.clone(),
    )
    .map_err(|e| format!("starting the recorder: {e}"))?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("grpc")
        .enable_all()
        .build()
        .map_err(|e| format!("starting the gRPC runtime: {e}"))?;
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(proto::FILE_DESCRIPTOR_SET)
        .build_v1()
        .map_err(|e| format!("gRPC reflection: {e}"))?;
    let svc = service.clone();
    let result = rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(config.grpc_listen)
            .await
            .map_err(|e| format!("bind({}) for gRPC failed: {e}", config.grpc_listen))?;
        tracing::info!(
            grpc = %config.grpc_listen, media_ip = %config.media_ip, ports = %format!("{}-{}", config.port_min, config.port_max),
            cores = config.cores, backend, "media plane ready"
        );
        let stopping = std::sync::Arc::new(tokio::sync::Notify::new());
        let metrics_stop = std::sync::Arc::new(tokio::sync::Notify::new());
        let ng = config.ng_listen.map(|addr| {
            let timeouts = media_plane::ng::NgTimeouts::with_timeout(config.media_timeout);
            let ng = media_plane::ng::NgService::new(svc.clone(), config.ng_max_sessions, timeouts);
            tokio::spawn(ng.clone().follow_events(svc.subscribe_events()));
            let stop = metrics_stop.clone();
            tokio::spawn(ng.clone().sweep_calls(async move { stop.notified().await }));
            let (stop, listener) = (metrics_stop.clone(), ng.clone());
            tokio::spawn(async move {
                // Like the metrics endpoint: a port that cannot be bound is logged, and the media
                // plane serves gRPC without ng.
                if let Err(e) = media_plane::ng::server::serve(addr, listener, async move { stop.notified().await }).await {
                    tracing::error!(error = %e, ng = %addr, "ng listener stopped");
                }
            });
            ng
        });
        if let Some(addr) = config.metrics_listen {
            let (svc, stop) = (svc.clone(), metrics_stop.clone());
            tokio::spawn(async move {
                if let Err(e) = media_plane::metrics::serve(addr, svc, ng, async move { stop.notified().await }).await {
                    tracing::error!(error = %e, "metrics endpoint stopped");
                }
            });
            tracing::info!(metrics = %addr, "metrics at /metrics");
        }
        let on_signal = {
            let (svc, stopping, metrics_stop) = (svc.clone(), stopping.clone(), metrics_stop.clone());
            async move {
                shutdown_signal().await;
                tracing::info!("stopping: draining gRPC requests");
                svc.begin_shutdown();
                stopping.notify_one();
                metrics_stop.notify_waiters();
            }
        };
        let server = tonic::transport::Server::builder()
            .layer(media_plane::metrics::timing_layer(svc.rpc_latency()))
            .add_service(MediaPlaneServer::new(svc))
            .add_service(reflection)
            // TCP_NODELAY: a unary reply is several small HTTP/2 writes; with Nagle the later ones
            // wait for the client's delayed ACK (40 ms on Linux), which showed as 40-50 ms call
            // set-up through the control plane.
            .serve_with_incoming_shutdown(tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true)), on_signal);
        tokio::select! {
            r = server => r.map_err(|e| format!("gRPC server: {e}")),
            _ = async { stopping.notified().await; tokio::time::sleep(SHUTDOWN_GRACE).await } => {
                tracing::warn!("gRPC requests still open after {SHUTDOWN_GRACE:?}; stopping anyway");
                Ok(())
            }
        }
    });
    service.shutdown(Duration::from_secs(2));
    drop(steering);
    tracing::info!("media plane stopped");
    result.map_err(Into::into)
}

async fn shutdown_signal() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => return std::future::pending().await,
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
