//! The I/O around [`ControlPlane`]: UDP sockets, TCP listeners and connections, the clock, and
//! the media-plane client, on a tokio runtime.
//!
//! One task owns the core and the store and is the only one touching them; socket readers,
//! connection writers and media-plane calls are separate tasks talking to it over a channel.
//! The binary runs it on a current-thread runtime, so the whole SIP side uses one core.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::mpsc;

use crate::config::Config;
use crate::media::{MediaClient, MediaReply};
use crate::service::{ControlPlane, Now};
use crate::sip::message::next_frame;
use crate::sip::transaction::{Outgoing, Peer};
use crate::store::Store;

/// Largest SIP message read from a stream before the connection is closed.
const MAX_STREAM_BUFFER: usize = 256 * 1024;

#[derive(Debug)]
enum Input {
    Datagram(Vec<u8>, Peer),
    Stream(Vec<u8>, Peer),
    Opened(SocketAddr, mpsc::Sender<Bytes>),
    Closed(SocketAddr),
    Media(u64, MediaReply),
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
) -> Result<crate::service::Stats, RunError> {
    let (tx, mut rx) = mpsc::channel::<Input>(65_536);
    let mut udp: Option<Arc<UdpSocket>> = None;
    for listen in &config.listen {
        match listen.transport {
            rsip::Transport::Tcp => {
                let listener = TcpListener::bind(listen.addr)
                    .await
                    .map_err(|source| RunError::Bind { transport: "tcp", addr: listen.addr, source })?;
                tokio::spawn(accept_loop(listener, tx.clone()));
            }
            _ => {
                let socket = Arc::new(
                    bind_udp(listen.addr).map_err(|source| RunError::Bind { transport: "udp", addr: listen.addr, source })?,
                );
                udp.get_or_insert_with(|| socket.clone());
                tokio::spawn(udp_loop(socket, tx.clone()));
            }
        }
        tracing::info!(transport = ?listen.transport, addr = %listen.addr, "listening");
    }
    let udp = udp.ok_or(RunError::NoUdp)?;
    let media = MediaClient::new(&config.media_grpc, config.media_timeout_ms, config.rpc_timeout).map_err(RunError::Media)?;
    let mut connections: HashMap<SocketAddr, mpsc::Sender<Bytes>> = HashMap::new();
    let mut send_errors = 0u64;
    tokio::pin!(shutdown);

    loop {
        // Flush everything the core produced.
        while let Some(out) = core.poll_transmit() {
            send(&udp, &mut connections, &tx, out, &mut send_errors);
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
                    Input::Closed(addr) => { connections.remove(&addr); }
                    Input::Media(call, reply) => core.handle_media_reply(call, reply, now, store.as_mut()),
                }
            }
        }
    }
    let stats = core.stats();
    let counters = &media.counters;
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

fn send(
    udp: &UdpSocket,
    connections: &mut HashMap<SocketAddr, mpsc::Sender<Bytes>>,
    tx: &mpsc::Sender<Input>,
    out: Outgoing,
    errors: &mut u64,
) {
    match out.destination.transport {
        rsip::Transport::Tcp => match connections.get(&out.destination.addr) {
            Some(writer) => {
                if writer.try_send(out.payload).is_err() {
                    *errors += 1;
                }
            }
            None => {
                tokio::spawn(connect(out.destination.addr, out.payload, tx.clone()));
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

async fn accept_loop(listener: TcpListener, tx: mpsc::Sender<Input>) {
    loop {
        match listener.accept().await {
            Ok((stream, from)) => {
                let _ = stream.set_nodelay(true);
                serve_connection(stream, from, tx.clone());
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
            if let Some(writer) = serve_connection(stream, addr, tx) {
                let _ = writer.send(first).await;
            }
        }
        _ => tracing::debug!(%addr, "tcp connect failed"),
    }
}

/// Starts the reader and writer tasks of a connection and registers it with the core.
fn serve_connection(stream: TcpStream, peer: SocketAddr, tx: mpsc::Sender<Input>) -> Option<mpsc::Sender<Bytes>> {
    let (mut reader, mut writer) = stream.into_split();
    let (out_tx, mut out_rx) = mpsc::channel::<Bytes>(1024);
    if tx.try_send(Input::Opened(peer, out_tx.clone())).is_err() {
        return None;
    }
    tokio::spawn(async move {
        while let Some(bytes) = out_rx.recv().await {
            if writer.write_all(&bytes).await.is_err() {
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
            loop {
                match next_frame(&buf) {
                    Ok(Some((skip, len))) => {
                        let message = buf.get(skip..skip + len).unwrap_or_default().to_vec();
                        buf.drain(..skip + len);
                        if message.is_empty() {
                            continue;
                        }
                        if tx.send(Input::Stream(message, Peer::tcp(peer))).await.is_err() {
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
        let _ = tx.send(Input::Closed(peer)).await;
    });
    Some(out_tx)
}
