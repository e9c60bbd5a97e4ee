//! The I/O around [`ControlPlane`]: UDP sockets, TCP and TLS listeners and connections, the
//! clock, and the media-plane client, on a tokio runtime.
//!
//! TLS (rustls, ring provider) serves the connections clients open; responses and requests to a
//! TLS peer (a phone registered over TLS) go over its connection. Opening TLS connections
//! ourselves (trunks over TLS) is not done yet: such a send is counted as a send error.
//!
//! One task owns the core and the store and is the only one touching them; socket readers,
//! connection writers and media-plane calls are separate tasks talking to it over a channel.
//! The binary runs it on a current-thread runtime, so the whole SIP side uses one core.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::mpsc;

use crate::config::Config;
use crate::media::MediaReply;
use crate::media_pool::{LostPlane, MediaPool};
use crate::now::Now;
use crate::server::ControlPlane;
use crate::store::Store;
use sip_core::message::next_frame;
use sip_core::transaction::{Outgoing, Peer};

/// Largest SIP message read from a stream before the connection is closed.
const MAX_STREAM_BUFFER: usize = 256 * 1024;
/// How long a client has to finish the TLS handshake.
const TLS_HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

#[derive(Debug)]
enum Input {
    Datagram(Vec<u8>, Peer),
    Stream(Vec<u8>, Peer),
    Opened(SocketAddr, mpsc::Sender<Bytes>),
    Closed(Peer),
    Media(u64, MediaReply),
    /// A scrape of GET /metrics, answered with the text.
    Metrics(tokio::sync::oneshot::Sender<String>),
    /// A control.v1 API call.
    Api(crate::api::ApiRequest),
    /// A callback trigger over HTTP.
    Callback(crate::callback::http::Job),
    /// A DTMF digit the media plane heard on a leg.
    Dtmf(u64, char),
    /// RADIUS answered a call's authorisation.
    RadiusAuth(u64, crate::billing::radius::AuthAnswer),
    /// Media plane N's event stream was lost and followed again.
    MediaEventsLost(usize),
    /// A media plane restarted or stayed unreachable: its calls are to be ended.
    MediaPlaneLost(LostPlane),
    /// A play to a leg ended.
    PlayFinished(u64),
    /// The media plane deleted a leg that had no RTP for its media timeout.
    LegTimedOut(u64),
}

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// A socket could not be bound.
    #[error("bind {transport} {addr}: {source}")]
    Bind {
        /// udp/tcp.
        transport: &'static str,
        /// Address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// No UDP listener (needed to send over UDP).
    #[error("sip.listen needs at least one udp address")]
    NoUdp,
    /// The media client could not be built.
    #[error("{0}")]
    Media(String),
    /// The TLS certificate or key was refused.
    #[error("sip.tls: {0}")]
    Tls(String),
}

fn tls_acceptor(config: &Config) -> Result<tokio_rustls::TlsAcceptor, RunError> {
    let files = config.tls.as_ref().ok_or_else(|| RunError::Tls("no certificate and key configured".into()))?;
    let (certs, key) = files.load().map_err(|e| RunError::Tls(e.to_string()))?;
    // ring rather than aws-lc-rs (rustls' default, deprecated ring's provider for lacking
    // post-quantum key exchange): no cmake/aws-lc build, and SIP phones do not negotiate
    // post-quantum groups yet.
    #[allow(deprecated)]
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let server = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| RunError::Tls(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| RunError::Tls(e.to_string()))?;
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(server)))
}

fn bind_udp(addr: SocketAddr) -> std::io::Result<UdpSocket> {
    let socket = socket2::Socket::new(socket2::Domain::for_address(addr), socket2::Type::DGRAM, None)?;
    // Bursts of REGISTERs or INVITEs must queue in the kernel, not be dropped.
    let _ = socket.set_recv_buffer_size(8 << 20);
    let _ = socket.set_send_buffer_size(8 << 20);
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    UdpSocket::from_std(socket.into())
}

/// Runs the server until `shutdown` resolves; returns the final counters.
pub async fn run(
    config: Arc<Config>,
    mut core: ControlPlane,
    mut store: Box<dyn Store>,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<crate::server::Stats, RunError> {
    let (tx, mut rx) = mpsc::channel::<Input>(65_536);
    let mut udp: Option<Arc<UdpSocket>> = None;
    for listen in &config.listen {
        match listen.transport {
            rsip::Transport::Tcp => {
                let listener = TcpListener::bind(listen.addr).await.map_err(|source| RunError::Bind {
                    transport: "tcp",
                    addr: listen.addr,
                    source,
                })?;
                tokio::spawn(accept_loop(listener, None, tx.clone()));
            }
            rsip::Transport::Tls => {
                let acceptor = tls_acceptor(&config)?;
                let listener = TcpListener::bind(listen.addr).await.map_err(|source| RunError::Bind {
                    transport: "tls",
                    addr: listen.addr,
                    source,
                })?;
                tokio::spawn(accept_loop(listener, Some(acceptor), tx.clone()));
            }
            _ => {
                let socket =
                    Arc::new(bind_udp(listen.addr).map_err(|source| RunError::Bind { transport: "udp", addr: listen.addr, source })?);
                udp.get_or_insert_with(|| socket.clone());
                tokio::spawn(udp_loop(socket, tx.clone()));
            }
        }
        tracing::info!(transport = ?listen.transport, addr = %listen.addr, "listening");
    }
    let udp = udp.ok_or(RunError::NoUdp)?;
    let media = MediaPool::new(&config.media_grpc, config.media_timeout_ms, config.rpc_timeout, config.media_lost_after)
        .map_err(RunError::Media)?;
    if let Some(addr) = config.metrics_listen {
        // Without its metrics endpoint the server still serves calls: a bind failure is logged.
        match TcpListener::bind(addr).await {
            Ok(listener) => {
                tokio::spawn(serve_metrics(listener, tx.clone()));
                tracing::info!(%addr, "metrics at /metrics");
            }
            Err(e) => tracing::error!(%addr, error = %e, "metrics endpoint not started"),
        }
    }
    let (updates, _) = tokio::sync::broadcast::channel(crate::api::UPDATE_BUFFER);
    if let Some(addr) = config.api_listen {
        // Like metrics: without its API the server still serves calls.
        match TcpListener::bind(addr).await {
            Ok(listener) => {
                let (api_tx, mut api_rx) = mpsc::channel(1024);
                let forward = tx.clone();
                tokio::spawn(async move {
                    while let Some(request) = api_rx.recv().await {
                        if forward.send(Input::Api(request)).await.is_err() {
                            break;
                        }
                    }
                });
                tokio::spawn(crate::api::Api::new(api_tx, updates.clone()).serve(listener));
                tracing::info!(%addr, "control.v1 API");
            }
            Err(e) => tracing::error!(%addr, error = %e, "control.v1 API not started"),
        }
    }
    if let Some(addr) = config.callback.listen {
        match TcpListener::bind(addr).await {
            Ok(listener) => {
                let (http_tx, mut http_rx) = mpsc::channel(1024);
                let forward = tx.clone();
                tokio::spawn(async move {
                    while let Some(job) = http_rx.recv().await {
                        if forward.send(Input::Callback(job)).await.is_err() {
                            break;
                        }
                    }
                });
                tokio::spawn(crate::callback::http::serve(listener, config.callback.clone(), http_tx));
                tracing::info!(%addr, "callback API, webhook and web page");
            }
            Err(e) => tracing::error!(%addr, error = %e, "callback HTTP endpoint not started"),
        }
    }
    for plane in 0..media.len() {
        tokio::spawn(media_events(media.clone(), plane, tx.clone()));
    }
    tokio::spawn(media_health(media.clone(), tx.clone()));
    let radius_counters = Arc::new(RadiusCounters::default());
    let radius = config.radius.clone().filter(|r| !r.accounting.is_empty()).map(|radius| {
        let (radius_tx, radius_rx) = mpsc::channel::<crate::billing::radius::Record>(10_000);
        tokio::spawn(radius_client(radius, radius_rx, radius_counters.clone()));
        radius_tx
    });
    let mut connections: HashMap<SocketAddr, mpsc::Sender<Bytes>> = HashMap::new();
    // Click-to-dial REFERs whose phones have not answered yet, and the API calls waiting.
    let mut referrals: HashMap<u64, crate::api::ReferralReply> = HashMap::new();
    let mut auth_identifier = 0u8;
    let auth_slots = Arc::new(tokio::sync::Semaphore::new(RADIUS_AUTH_AT_ONCE));
    let mut send_errors = 0u64;
    tokio::pin!(shutdown);

    loop {
        // Flush everything the core produced.
        while let Some(out) = core.poll_transmit() {
            send(&udp, &mut connections, &tx, out, &mut send_errors);
        }
        while let Some(record) = core.poll_accounting() {
            if let Some(radius) = &radius {
                if radius.try_send(record).is_err() {
                    radius_counters.dropped.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        while let Some(request) = core.poll_radius_auth() {
            let (radius, tx, slots) = (config.radius.clone(), tx.clone(), auth_slots.clone());
            auth_identifier = auth_identifier.wrapping_add(1);
            let identifier = auth_identifier;
            tokio::spawn(async move {
                // At most RADIUS_AUTH_AT_ONCE sockets and requests at a time, and an answer (or
                // none) within RADIUS_AUTH_TIME, whatever the retries add up to.
                let answer = match (radius, slots.acquire().await) {
                    (Some(radius), Ok(_slot)) => tokio::time::timeout(RADIUS_AUTH_TIME, radius_authorise(&radius, &request, identifier))
                        .await
                        .unwrap_or(crate::billing::radius::AuthAnswer::NoAnswer),
                    _ => crate::billing::radius::AuthAnswer::NoAnswer,
                };
                let _ = tx.send(Input::RadiusAuth(request.id, answer)).await;
            });
        }
        while let Some((referral, status)) = core.poll_referral() {
            if let Some(reply) = referrals.remove(&referral) {
                let _ = reply.send(Ok(status));
            }
        }
        while let Some(update) = core.poll_update() {
            // No watcher: nobody to tell.
            let _ = updates.send(update);
        }
        while let Some((call, request)) = core.poll_media() {
            let (media, tx) = (media.clone(), tx.clone());
            tokio::spawn(async move {
                if let Some(reply) = media.execute(request).await {
                    let _ = tx.send(Input::Media(call, reply)).await;
                }
            });
        }
        let deadline = core.poll_timeout();
        let sleep = async {
            match deadline {
                Some(at) => tokio::time::sleep_until(at.into()).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = &mut shutdown => break,
            _ = sleep => core.handle_timeout(Now::system(), store.as_mut()),
            input = rx.recv() => {
                let Some(input) = input else { break };
                let now = Now::system();
                match input {
                    Input::Datagram(bytes, peer) => core.handle_datagram(&bytes, peer, now, store.as_mut()),
                    Input::Stream(bytes, peer) => core.handle_stream_message(&bytes, peer, now, store.as_mut()),
                    Input::Opened(addr, writer) => { connections.insert(addr, writer); }
                    Input::Closed(flow) => {
                        connections.remove(&flow.addr);
                        core.handle_flow_closed(flow, now, store.as_mut());
                    }
                    Input::Media(call, reply) => core.handle_media_reply(call, reply, now, store.as_mut()),
                    Input::Metrics(reply) => {
                        let _ = reply.send(crate::metrics::render(snapshot(&core, &media, &radius_counters)));
                    }
                    Input::Api(request) => {
                        if let Some((referral, reply)) = crate::api::execute(request, &mut core, store.as_mut(), now) {
                            referrals.insert(referral, reply);
                        }
                    }
                    Input::Callback((call, reply)) => {
                        let _ = reply.send(crate::callback::http::execute(call, &mut core, store.as_mut(), now));
                    }
                    Input::Dtmf(leg, digit) => core.handle_dtmf(leg, digit, now, store.as_mut()),
                    Input::RadiusAuth(id, answer) => core.handle_radius_auth(id, answer, now, store.as_mut()),
                    Input::MediaEventsLost(plane) => core.handle_media_events_lost(plane, now, store.as_mut()),
                    Input::MediaPlaneLost(lost) => core.handle_media_plane_lost(lost, now, store.as_mut()),
                    Input::PlayFinished(leg) => core.handle_play_finished(leg, now, store.as_mut()),
                    Input::LegTimedOut(leg) => core.handle_leg_timed_out(leg, now, store.as_mut()),
                }
            }
        }
    }
    let stats = core.stats();
    let counters = &media.counters();
    tracing::info!(
        ?stats,
        transactions = ?core.transaction_stats(),
        send_errors,
        media_allocations = counters.allocations.load(Ordering::Relaxed),
        media_allocation_failures = counters.allocation_failures.load(Ordering::Relaxed),
        media_releases = counters.releases.load(Ordering::Relaxed),
        media_release_failures = counters.release_failures.load(Ordering::Relaxed),
        "stopped"
    );
    Ok(stats)
}

/// Reads every media plane's health and load each [`crate::media_pool::HEALTH_INTERVAL`] and
/// reports the planes lost.
async fn media_health(media: MediaPool, tx: mpsc::Sender<Input>) {
    let mut tick = tokio::time::interval(crate::media_pool::HEALTH_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        for lost in media.check(std::time::Instant::now()).await {
            if tx.send(Input::MediaPlaneLost(lost)).await.is_err() {
                return;
            }
        }
        if tx.is_closed() {
            return;
        }
    }
}

/// Follows media plane `plane`'s events (DTMF for the callback IVR, the end of announcements,
/// legs timed out),
/// reconnecting after a second
/// when the stream ends or cannot start.
async fn media_events(media: MediaPool, plane: usize, tx: mpsc::Sender<Input>) {
    let mut followed = false;
    loop {
        match media.events(plane).await {
            Ok(mut stream) => {
                tracing::debug!("following the media plane's events");
                // Followed again: the media plane may have restarted, and its leg ids with it.
                if std::mem::replace(&mut followed, true) && tx.send(Input::MediaEventsLost(plane)).await.is_err() {
                    return;
                }
                loop {
                    match stream.message().await {
                        Ok(Some(event)) => {
                            let leg = media.tagged(plane, event.leg_id);
                            let input = match event.kind {
                                Some(proto::v1::event::Kind::Dtmf(d)) => Input::Dtmf(leg, d.digit.chars().next().unwrap_or(' ')),
                                Some(proto::v1::event::Kind::PlayFinished(_)) => Input::PlayFinished(leg),
                                Some(proto::v1::event::Kind::TimedOut(_)) => Input::LegTimedOut(leg),
                                _ => continue,
                            };
                            if tx.send(input).await.is_err() {
                                return;
                            }
                        }
                        Ok(None) => break,
                        Err(e) => {
                            tracing::debug!(error = %e, "media plane event stream ended");
                            break;
                        }
                    }
                }
            }
            Err(e) => tracing::debug!(error = %e, "media plane events not available"),
        }
        if tx.is_closed() {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    }
}

/// What a scrape shows, read from the core, the media client and the RADIUS client.
fn snapshot(core: &ControlPlane, media: &MediaPool, radius: &RadiusCounters) -> crate::metrics::Snapshot {
    let t = core.transaction_stats();
    let counters = media.counters();
    crate::metrics::Snapshot {
        stats: core.stats(),
        transactions_live: core.live_transactions(),
        server_transactions: t.server_transactions,
        client_transactions: t.client_transactions,
        retransmissions_sent: t.retransmissions_sent,
        registered_contacts: core.registered_contacts(),
        calls_active: core.active_calls(),
        media_negotiation_failures: counters.negotiation_failures.load(Ordering::Relaxed),
        media_release_failures: counters.release_failures.load(Ordering::Relaxed),
        media_planes: media.health(),
        media_refused: media.refused.load(Ordering::Relaxed),
        media_latency: media.latency.clone(),
        radius_acked: radius.acked.load(Ordering::Relaxed),
        radius_retries: radius.retries.load(Ordering::Relaxed),
        radius_deferred: radius.deferred.load(Ordering::Relaxed),
        radius_dropped: radius.dropped.load(Ordering::Relaxed),
    }
}

/// RADIUS authorisations in flight at once (each its own socket), and the longest one may take.
const RADIUS_AUTH_AT_ONCE: usize = 256;
const RADIUS_AUTH_TIME: std::time::Duration = std::time::Duration::from_secs(20);

/// Asks the authentication servers about one call: each in order, `retries` tries of
/// `timeout`, its own socket (calls are authorised at once, not one after another).
async fn radius_authorise(
    config: &crate::billing::radius::RadiusConfig,
    request: &crate::billing::radius::AuthRequest,
    identifier: u8,
) -> crate::billing::radius::AuthAnswer {
    use crate::billing::radius::{decode_access_answer, encode_access_request, AuthAnswer};
    let Ok(bytes) = encode_access_request(request, config, identifier) else { return AuthAnswer::NoAnswer };
    let bind = if config.authentication.first().is_some_and(|a| a.is_ipv6()) { "[::]:0" } else { "0.0.0.0:0" };
    let Ok(socket) = UdpSocket::bind(bind).await else { return AuthAnswer::NoAnswer };
    let mut buf = vec![0u8; 4096];
    for server in &config.authentication {
        for _ in 0..config.retries {
            if socket.send_to(&bytes, server).await.is_err() {
                continue;
            }
            let deadline = tokio::time::Instant::now() + config.timeout;
            while let Ok(Ok((got, from))) = tokio::time::timeout_at(deadline, socket.recv_from(&mut buf)).await {
                if from == *server {
                    if let Some(answer) = decode_access_answer(&buf[..got], &bytes, &config.secret, config.require_message_authenticator) {
                        return answer;
                    }
                }
            }
        }
    }
    tracing::warn!(user = %request.user, "no RADIUS authentication server answered");
    AuthAnswer::NoAnswer
}

/// The RADIUS client's counters.
#[derive(Debug, Default)]
struct RadiusCounters {
    /// Records a server acknowledged.
    acked: std::sync::atomic::AtomicU64,
    /// Tries after the first (a server that did not answer in time).
    retries: std::sync::atomic::AtomicU64,
    /// Records no server acknowledged, kept to be sent again later.
    deferred: std::sync::atomic::AtomicU64,
    /// Records lost: the queues were full.
    dropped: std::sync::atomic::AtomicU64,
}

/// Records kept while no accounting server answers.
const RADIUS_BACKLOG: usize = 100_000;

/// Sends the accounting records: each server in order, `retries` tries of `timeout`, the
/// Accounting-Response checked against the request; records no server acknowledged are kept
/// (bounded) and sent again, with Acct-Delay-Time, once a server answers again.
async fn radius_client(
    config: crate::billing::radius::RadiusConfig,
    mut rx: mpsc::Receiver<crate::billing::radius::Record>,
    counters: Arc<RadiusCounters>,
) {
    use crate::billing::radius::{encode, is_response};
    let bind = if config.accounting.first().is_some_and(|a| a.is_ipv6()) { "[::]:0" } else { "0.0.0.0:0" };
    let socket = match UdpSocket::bind(bind).await {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "RADIUS accounting: cannot bind a socket; records are not sent");
            return;
        }
    };
    let mut identifier = 0u8;
    let mut preferred = 0usize;
    let mut backlog: std::collections::VecDeque<crate::billing::radius::Record> = std::collections::VecDeque::new();
    let mut paused_until: Option<tokio::time::Instant> = None;
    let mut buf = vec![0u8; 4096];
    loop {
        let record = if paused_until.is_none_or(|t| t <= tokio::time::Instant::now()) && !backlog.is_empty() {
            backlog.pop_front()
        } else {
            let wake = paused_until.unwrap_or_else(|| tokio::time::Instant::now() + config.retry);
            tokio::select! {
                r = rx.recv() => match r {
                    Some(r) => Some(r),
                    None => return,
                },
                _ = tokio::time::sleep_until(wake) => None,
            }
        };
        let Some(record) = record else { continue };
        if paused_until.is_some_and(|t| t > tokio::time::Instant::now()) {
            if backlog.len() >= RADIUS_BACKLOG {
                counters.dropped.fetch_add(1, Ordering::Relaxed);
            } else {
                backlog.push_back(record);
            }
            continue;
        }
        let now_unix = Now::system().unix() as u32;
        let delay = now_unix.saturating_sub(record.event_unix);
        identifier = identifier.wrapping_add(1);
        let request = match encode(&record, &config, identifier, delay) {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(error = %e, session = %record.session_id, "RADIUS accounting record not encodable");
                counters.dropped.fetch_add(1, Ordering::Relaxed);
                continue;
            }
        };
        let mut acked = false;
        // The server that answered last goes first; the others follow in their order.
        let n = config.accounting.len();
        let mut first_try = true;
        'servers: for i in (0..n).map(|k| (preferred + k) % n) {
            let server = &config.accounting[i];
            for _ in 0..config.retries {
                if !std::mem::take(&mut first_try) {
                    counters.retries.fetch_add(1, Ordering::Relaxed);
                }
                if socket.send_to(&request, server).await.is_err() {
                    continue;
                }
                let deadline = tokio::time::Instant::now() + config.timeout;
                while let Ok(Ok((got, from))) = tokio::time::timeout_at(deadline, socket.recv_from(&mut buf)).await {
                    if from == *server && is_response(&buf[..got], &request, &config.secret) {
                        acked = true;
                        preferred = i;
                        break 'servers;
                    }
                }
            }
        }
        if acked {
            counters.acked.fetch_add(1, Ordering::Relaxed);
            paused_until = None;
        } else {
            tracing::warn!(session = %record.session_id, "no RADIUS accounting server answered; the record is kept and sent again later");
            counters.deferred.fetch_add(1, Ordering::Relaxed);
            paused_until = Some(tokio::time::Instant::now() + config.retry);
            if backlog.len() >= RADIUS_BACKLOG {
                counters.dropped.fetch_add(1, Ordering::Relaxed);
            } else {
                backlog.push_front(record);
            }
        }
    }
}

/// Serves GET /metrics: each scrape asks the core's loop for the text.
async fn serve_metrics(listener: TcpListener, tx: mpsc::Sender<Input>) {
    use axum::http::{header, StatusCode};
    use axum::response::IntoResponse;
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let tx = tx.clone();
            async move {
                let (reply, text) = tokio::sync::oneshot::channel();
                if tx.send(Input::Metrics(reply)).await.is_err() {
                    return (StatusCode::SERVICE_UNAVAILABLE, "stopping").into_response();
                }
                match text.await {
                    Ok(text) => {
                        ([(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], text).into_response()
                    }
                    Err(_) => (StatusCode::SERVICE_UNAVAILABLE, "stopping").into_response(),
                }
            }
        }),
    );
    if let Err(e) = axum::serve(listener, app).await {
        tracing::warn!(error = %e, "metrics endpoint stopped");
    }
}

fn send(
    udp: &UdpSocket,
    connections: &mut HashMap<SocketAddr, mpsc::Sender<Bytes>>,
    tx: &mpsc::Sender<Input>,
    out: Outgoing,
    errors: &mut u64,
) {
    match out.destination.transport {
        rsip::Transport::Tcp | rsip::Transport::Tls => match connections.get(&out.destination.addr) {
            Some(writer) => {
                if writer.try_send(out.payload).is_err() {
                    *errors += 1;
                }
            }
            None if out.destination.transport == rsip::Transport::Tcp => {
                tokio::spawn(connect(out.destination.addr, out.payload, tx.clone()));
            }
            None => {
                // Its connection is gone, and TLS connections are not opened from here.
                *errors += 1;
                tracing::debug!(peer = %out.destination.addr, "no TLS connection to send on");
            }
        },
        _ => {
            if udp.try_send_to(&out.payload, out.destination.addr).is_err() {
                *errors += 1;
            }
        }
    }
}

async fn udp_loop(socket: Arc<UdpSocket>, tx: mpsc::Sender<Input>) {
    let mut buf = vec![0u8; 65_535];
    loop {
        match socket.recv_from(&mut buf).await {
            Ok((n, from)) => {
                let bytes = buf.get(..n).unwrap_or_default().to_vec();
                if tx.send(Input::Datagram(bytes, Peer::udp(from))).await.is_err() {
                    return;
                }
            }
            // ICMP port unreachable and similar surface here on Linux; keep serving.
            Err(e) => tracing::debug!(error = %e, "udp recv"),
        }
    }
}

async fn accept_loop(listener: TcpListener, tls: Option<tokio_rustls::TlsAcceptor>, tx: mpsc::Sender<Input>) {
    loop {
        match listener.accept().await {
            Ok((stream, from)) => {
                let _ = stream.set_nodelay(true);
                match &tls {
                    None => {
                        serve_connection(stream, Peer::tcp(from), tx.clone());
                    }
                    Some(acceptor) => {
                        let (acceptor, tx) = (acceptor.clone(), tx.clone());
                        tokio::spawn(async move {
                            match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                                Ok(Ok(stream)) => {
                                    serve_connection(stream, Peer::tls(from), tx);
                                }
                                Ok(Err(e)) => tracing::debug!(%from, error = %e, "TLS handshake failed"),
                                Err(_) => tracing::debug!(%from, "TLS handshake timed out"),
                            }
                        });
                    }
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "tcp accept");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        }
    }
}

async fn connect(addr: SocketAddr, first: Bytes, tx: mpsc::Sender<Input>) {
    match tokio::time::timeout(std::time::Duration::from_secs(5), TcpStream::connect(addr)).await {
        Ok(Ok(stream)) => {
            let _ = stream.set_nodelay(true);
            if let Some(writer) = serve_connection(stream, Peer::tcp(addr), tx) {
                let _ = writer.send(first).await;
            }
        }
        _ => tracing::debug!(%addr, "tcp connect failed"),
    }
}

/// Starts the reader and writer tasks of a connection (TCP, or TLS once the handshake is done)
/// and registers it with the core.
fn serve_connection<S>(stream: S, peer: Peer, tx: mpsc::Sender<Input>) -> Option<mpsc::Sender<Bytes>>
where
    S: AsyncRead + AsyncWrite + Send + 'static,
{
    let (mut reader, mut writer) = tokio::io::split(stream);
    let (transport, peer) = (peer, peer.addr);
    let (out_tx, mut out_rx) = mpsc::channel::<Bytes>(1024);
    if tx.try_send(Input::Opened(peer, out_tx.clone())).is_err() {
        return None;
    }
    let pong = out_tx.clone();
    tokio::spawn(async move {
        while let Some(bytes) = out_rx.recv().await {
            // TLS buffers records until flushed; for TCP the flush is free.
            if writer.write_all(&bytes).await.is_err() || writer.flush().await.is_err() {
                break;
            }
        }
    });
    tokio::spawn(async move {
        let mut buf: Vec<u8> = Vec::with_capacity(8192);
        let mut chunk = vec![0u8; 16_384];
        'read: loop {
            let n = match reader.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            buf.extend_from_slice(chunk.get(..n).unwrap_or_default());
            // RFC 5626 §3.5.1: a double CRLF between messages is a ping, answered with a CRLF pong.
            while buf.starts_with(b"\r\n\r\n") {
                buf.drain(..4);
                let _ = pong.try_send(Bytes::from_static(b"\r\n"));
            }
            loop {
                match next_frame(&buf) {
                    Ok(Some((skip, len))) => {
                        let message = buf.get(skip..skip + len).unwrap_or_default().to_vec();
                        buf.drain(..skip + len);
                        if message.is_empty() {
                            continue;
                        }
                        if tx.send(Input::Stream(message, transport)).await.is_err() {
                            break 'read;
                        }
                    }
                    Ok(None) if buf.len() > MAX_STREAM_BUFFER => break 'read,
                    Ok(None) => break,
                    // A stream that cannot be framed cannot be resynchronised: close it.
                    Err(_) => break 'read,
                }
            }
        }
        let _ = tx.send(Input::Closed(transport)).await;
    });
    Some(out_tx)
}
