//! Helpers shared by the tests that run the real `media-plane` binary: a guard that starts it and
//! kills it on drop, a gRPC client, bounded polling, and RTP/RTCP over plain `std` UDP sockets.
//!
//! Every test gets its own media port range from a "slot" number, so tests run in parallel. The
//! ranges start at [`PORT_BASE`], above Linux's default ephemeral range (32768-60999): sockets the
//! tests bind to port 0 never take a port a media plane wants, and the other way round.
#![allow(dead_code, reason = "each test binary uses a different subset of these helpers")]

use std::fs::File;
use std::future::Future;
use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use proto::v1;
use proto::v1::media_plane_client::MediaPlaneClient;
use tonic::transport::Channel;

/// The binary under test, built by cargo for this test target.
pub const BIN: &str = env!("CARGO_BIN_EXE_media-plane");
/// First media port of slot 0; slot `n` gets `PORT_BASE + 100 n ..= PORT_BASE + 100 n + 99`.
pub const PORT_BASE: u16 = 61_000;
/// Read timeout of every test UDP socket: no receive waits longer.
pub const IO_TIMEOUT: Duration = Duration::from_secs(2);
/// How long the binary gets to start serving gRPC.
pub const START_TIMEOUT: Duration = Duration::from_secs(10);
/// Default limit for [`eventually`].
pub const POLL_TIMEOUT: Duration = Duration::from_secs(5);

pub type Client = MediaPlaneClient<Channel>;

static NEXT_LOG: AtomicU32 = AtomicU32::new(0);

/// A fresh file name in the temp dir, unique to this process and call.
pub fn temp_path(what: &str) -> PathBuf {
    let n = NEXT_LOG.fetch_add(1, Ordering::Relaxed);
    std::env::temp_dir().join(format!("media-plane-test-{}-{n}-{what}", std::process::id()))
}

/// The media port range of test slot `slot`, as `(first, last)`.
pub fn port_range(slot: u16) -> (u16, u16) {
    let first = PORT_BASE + slot * 100;
    (first, first + 99)
}

/// A loopback TCP port that was free a moment ago (bound to port 0, then released).
pub fn free_tcp_addr() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0 to find a free port");
    l.local_addr().expect("local_addr of a bound listener")
}

/// A running `media-plane` process; killed (and reaped) on drop.
#[derive(Debug)]
pub struct MediaPlane {
    child: Child,
    /// Where its gRPC API listens.
    pub grpc: SocketAddr,
    /// Its media port range, inclusive.
    pub ports: (u16, u16),
    /// Its stderr (the tracing log).
    log: PathBuf,
}

impl MediaPlane {
    /// Starts the binary with `--cores 2 --no-pin` on slot `slot`'s port range and connects to it.
    pub async fn start(slot: u16) -> (Self, Client) {
        Self::start_with(slot, &[]).await
    }

    /// Like [`MediaPlane::start`], with extra command-line arguments.
    pub async fn start_with(slot: u16, extra: &[&str]) -> (Self, Client) {
        let mut mp = Self::spawn(slot, extra);
        let client = mp.connect().await;
        (mp, client)
    }

    /// Starts the process without waiting for it.
    pub fn spawn(slot: u16, extra: &[&str]) -> Self {
        let grpc = free_tcp_addr();
        let ports = port_range(slot);
        let log = temp_path("stderr.log");
        let stderr = File::create(&log).expect("create the media plane's log file");
        let child = Command::new(BIN)
            .args(["--grpc-listen", &grpc.to_string()])
            .args(["--ports", &format!("{}-{}", ports.0, ports.1)])
            .args(["--cores", "2", "--no-pin"])
            // Tests run many media planes at once: no metrics endpoint unless a test asks.
            .args(if extra.contains(&"--metrics-listen") { &[][..] } else { &["--metrics-listen", ""][..] })
            .args(if extra.contains(&"--ng-listen") { &[][..] } else { &["--ng-listen", ""][..] })
            .args(extra)
            .env("RUST_LOG", "info,media_plane=debug")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .expect("spawn the media-plane binary");
        Self { child, grpc, ports, log }
    }

    /// Connects a gRPC client, retrying for at most [`START_TIMEOUT`]; panics (with the log) if
    /// the process exits or never answers.
    pub async fn connect(&mut self) -> Client {
        let url = format!("http://{}", self.grpc);
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(status) = self.exited() {
                panic!("media-plane exited ({status}) before serving gRPC; its log:\n{}", self.log());
            }
            if let Ok(Ok(client)) = tokio::time::timeout(Duration::from_secs(1), Client::connect(url.clone())).await {
                return client;
            }
            if Instant::now() >= deadline {
                panic!("media-plane did not accept gRPC on {} within {START_TIMEOUT:?}; its log:\n{}", self.grpc, self.log());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The process's exit status, if it has exited.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// Sends the process SIGTERM (with `kill(1)`, keeping the tests free of `unsafe`).
    pub fn terminate(&self) {
        let status = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status().expect("run kill(1)");
        assert!(status.success(), "kill -TERM {} failed: {status}", self.child.id());
    }

    /// Waits at most `limit` for the process to exit; its status, or `None` if still running.
    /// Async so the test's gRPC connections keep being served (a graceful shutdown waits for them).
    pub async fn wait_exit(&mut self, limit: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(s) = self.exited() {
                return Some(s);
            }
            if Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Panics, with the log, unless the process is still running.
    pub fn assert_running(&mut self) {
        if let Some(status) = self.exited() {
            panic!("media-plane exited unexpectedly ({status}); its log:\n{}", self.log());
        }
    }

    /// What the process wrote to stderr so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_else(|e| format!("(cannot read {}: {e})", self.log.display()))
    }

    /// The first port of the range that can carry an RTP/RTCP pair.
    pub fn first_even_port(&self) -> u16 {
        self.ports.0 + self.ports.0 % 2
    }
}

impl Drop for MediaPlane {
    fn drop(&mut self) {
        reap(&mut self.child, &self.log);
    }
}

/// Kills and waits for a media-plane child, prints its stderr log if the test is failing, and
/// removes the log.
pub fn reap(child: &mut std::process::Child, log: &std::path::Path) {
    let _ = child.kill();
    let _ = child.wait();
    if std::thread::panicking() {
        let text = std::fs::read_to_string(log).unwrap_or_else(|e| format!("(cannot read {}: {e})", log.display()));
        eprintln!("media-plane log ({}):\n{text}", log.display());
    }
    let _ = std::fs::remove_file(log);
}

/// Runs the binary with `args` (nothing added) and waits at most 10 s for it to exit; returns its
/// exit code (`None` if killed by a signal) and stderr. Panics if it is still running then.
pub fn run_to_exit(args: &[&str]) -> (Option<i32>, String) {
    let log = temp_path("exit.log");
    let stderr = File::create(&log).expect("create a log file");
    let mut child = Command::new(BIN)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(stderr)
        .spawn()
        .expect("spawn the media-plane binary");
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait for media-plane") {
            break s;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            let _ = std::fs::remove_file(&log);
            panic!("media-plane {args:?} still running after 10 s; stderr:\n{text}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    let _ = std::fs::remove_file(&log);
    (status.code(), text)
}

/// Calls `probe` until it returns `Ok`, for at most `limit`; panics with `what` and the last
/// `Err` (the state that was seen) otherwise. Probes are 20 ms apart.
pub async fn eventually<T, F, Fut>(what: &str, limit: Duration, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, String>>,
{
    let deadline = Instant::now() + limit;
    loop {
        let last = match tokio::time::timeout(limit, probe()).await {
            Ok(Ok(v)) => return v,
            Ok(Err(state)) => state,
            Err(_) => "the probe itself did not finish".to_string(),
        };
        if Instant::now() >= deadline {
            panic!("{what}: not so after {limit:?}; last seen: {last}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

// ---- gRPC helpers ----

pub fn endpoint(a: SocketAddr) -> v1::Endpoint {
    v1::Endpoint { ip: a.ip().to_string(), port: u32::from(a.port()) }
}

/// The socket address of an API endpoint.
pub fn addr_of(e: Option<&v1::Endpoint>) -> SocketAddr {
    let e = e.expect("endpoint present");
    let port = u16::try_from(e.port).expect("endpoint port fits u16");
    SocketAddr::new(e.ip.parse().expect("endpoint ip parses"), port)
}

/// A created leg: its id, local RTP address and core.
#[derive(Debug, Clone, Copy)]
pub struct Leg {
    pub id: u64,
    pub local: SocketAddr,
    pub core: u32,
}

impl Leg {
    /// The leg's RTCP address when not rtcp-mux (RTP port + 1).
    pub fn local_rtcp(&self) -> SocketAddr {
        SocketAddr::new(self.local.ip(), self.local.port() + 1)
    }
}

pub async fn create_leg(client: &mut Client, req: v1::CreateLegRequest) -> Leg {
    let r = client.create_leg(req.clone()).await.unwrap_or_else(|e| panic!("CreateLeg {req:?}: {e}")).into_inner();
    Leg { id: r.leg_id, local: addr_of(r.local.as_ref()), core: r.core }
}

/// A leg of `call_id` with RTP sent to `remote` (strict), or latching when `remote` is `None`.
pub async fn simple_leg(client: &mut Client, call_id: &str, remote: Option<SocketAddr>) -> Leg {
    create_leg(client, v1::CreateLegRequest { call_id: call_id.into(), remote: remote.map(endpoint), ..Default::default() }).await
}

pub async fn bridge(client: &mut Client, a: &Leg, b: &Leg) -> u64 {
    client
        .create_bridge(v1::CreateBridgeRequest { leg_a: a.id, leg_b: b.id })
        .await
        .unwrap_or_else(|e| panic!("CreateBridge {} {}: {e}", a.id, b.id))
        .into_inner()
        .bridge_id
}

/// Stats of every leg and core.
pub async fn stats(client: &mut Client) -> v1::GetStatsResponse {
    client.get_stats(v1::GetStatsRequest::default()).await.expect("GetStats").into_inner()
}

/// Stats of one leg, `None` if the media plane does not list it.
pub async fn leg_stats(client: &mut Client, id: u64) -> Option<v1::LegStats> {
    let r = client.get_stats(v1::GetStatsRequest { leg_ids: vec![id], totals_only: false }).await.expect("GetStats").into_inner();
    r.legs.into_iter().find(|l| l.leg_id == id)
}

/// Per-core totals, indexed by core.
pub async fn core_stats(client: &mut Client) -> Vec<v1::CoreStats> {
    let mut c = client.get_stats(v1::GetStatsRequest { leg_ids: vec![], totals_only: true }).await.expect("GetStats").into_inner().cores;
    c.sort_by_key(|c| c.core);
    c
}

pub fn drops(l: &v1::LegStats) -> v1::Drops {
    l.drops.unwrap_or_default()
}

/// Polls one leg's stats until `cond` holds (bounded by [`POLL_TIMEOUT`]) and returns them.
pub async fn leg_until(client: &mut Client, id: u64, what: &str, cond: impl Fn(&v1::LegStats) -> bool) -> v1::LegStats {
    eventually(what, POLL_TIMEOUT, || {
        let mut c = client.clone();
        let cond = &cond;
        async move {
            match leg_stats(&mut c, id).await {
                Some(l) if cond(&l) => Ok(l),
                Some(l) => Err(format!("{l:?}")),
                None => Err(format!("leg {id} not listed")),
            }
        }
    })
    .await
}

// ---- UDP, RTP, RTCP ----

/// A loopback UDP socket on an ephemeral port with [`IO_TIMEOUT`] read timeout.
pub fn udp() -> UdpSocket {
    let s = UdpSocket::bind("127.0.0.1:0").expect("bind UDP 127.0.0.1:0");
    s.set_read_timeout(Some(IO_TIMEOUT)).expect("set_read_timeout");
    s
}

/// Two loopback UDP sockets on consecutive ports (an RTP socket and the RTCP socket above it).
pub fn udp_pair() -> (UdpSocket, UdpSocket) {
    for _ in 0..200 {
        let rtp = udp();
        let port = rtp.local_addr().expect("local_addr").port();
        if port == u16::MAX {
            continue;
        }
        if let Ok(rtcp) = UdpSocket::bind(("127.0.0.1", port + 1)) {
            rtcp.set_read_timeout(Some(IO_TIMEOUT)).expect("set_read_timeout");
            return (rtp, rtcp);
        }
    }
    panic!("no two consecutive free UDP ports in 200 tries");
}

pub fn local(s: &UdpSocket) -> SocketAddr {
    s.local_addr().expect("local_addr of a bound socket")
}

/// An RTP packet (PT 0) whose payload bytes are derived from `seq`, so any change shows.
pub fn rtp(seq: u16, ssrc: u32, payload_len: usize) -> Vec<u8> {
    let mut p = Vec::with_capacity(12 + payload_len);
    p.extend_from_slice(&[0x80, 0x00]);
    p.extend_from_slice(&seq.to_be_bytes());
    p.extend_from_slice(&(u32::from(seq).wrapping_mul(160)).to_be_bytes());
    p.extend_from_slice(&ssrc.to_be_bytes());
    p.extend((0..payload_len).map(|i| (i as u16).wrapping_mul(31).wrapping_add(seq) as u8));
    p
}

/// The sequence number of an RTP packet.
pub fn seq_of(p: &[u8]) -> u16 {
    assert!(p.len() >= 12, "not an RTP packet: {p:?}");
    u16::from_be_bytes([p[2], p[3]])
}

/// An RTCP sender report (28 bytes, PT 200) from `ssrc`, tagged with `tag` in its NTP timestamp.
pub fn rtcp_sr(ssrc: u32, tag: u32) -> Vec<u8> {
    let mut p = vec![0x80, 200, 0, 6];
    p.extend_from_slice(&ssrc.to_be_bytes());
    p.extend_from_slice(&tag.to_be_bytes());
    p.extend_from_slice(&[0; 16]);
    p
}

pub fn send(s: &UdpSocket, p: &[u8], to: SocketAddr) {
    let n = s.send_to(p, to).unwrap_or_else(|e| panic!("send_to {to}: {e}"));
    assert_eq!(n, p.len());
}

/// Receives one datagram, waiting at most [`IO_TIMEOUT`]; panics naming `what` on timeout.
pub fn recv(s: &UdpSocket, what: &str) -> (Vec<u8>, SocketAddr) {
    let mut buf = vec![0u8; 4096];
    match s.recv_from(&mut buf) {
        Ok((n, from)) => {
            buf.truncate(n);
            (buf, from)
        }
        Err(e) => panic!("{what}: nothing received on {} within {IO_TIMEOUT:?} ({e})", local(s)),
    }
}

/// 20 ms RTP packets (sequence from 0, timestamps at the codec's RTP clock) of `signal`, at
/// `params.rate`, encoded in `params`' codec with payload type `pt`.
pub fn rtp_packets(params: media_codecs::CodecParams, pt: u8, signal: &[i16], ssrc: u32) -> Vec<Vec<u8>> {
    let mut enc = media_codecs::encoder(&params).expect("encoder");
    let step = params.kind.rtp_clock(&params) / 50;
    signal
        .chunks_exact(params.rate as usize / 50)
        .enumerate()
        .map(|(i, chunk)| {
            let mut p = vec![0x80, pt];
            p.extend_from_slice(&(i as u16).to_be_bytes());
            p.extend_from_slice(&(i as u32 * step).to_be_bytes());
            p.extend_from_slice(&ssrc.to_be_bytes());
            enc.encode(chunk, &mut p).expect("encode");
            p
        })
        .collect()
}

/// Decodes RTP payloads of `params`' codec into PCM.
pub fn decode(params: media_codecs::CodecParams, payloads: &[Vec<u8>]) -> Vec<i16> {
    let mut dec = media_codecs::decoder(&params).expect("decoder");
    let mut pcm = Vec::new();
    for p in payloads {
        dec.decode(p, &mut pcm).expect("decodes");
    }
    pcm
}

/// `pcm` from `from` Hz to `to` Hz (mono).
pub fn resample(pcm: &[i16], from: u32, to: u32) -> Vec<i16> {
    let mut out = Vec::new();
    media_codecs::Resampler::new(from, to, 1).expect("resampler").process(pcm, &mut out).expect("resample");
    out
}

/// An RFC 4733 telephone-event packet: event `code` (0-9 digits, 10 `*`, 11 `#`), `end` bit,
/// volume 10, `duration` in RTP clock units.
pub fn telephone_event(pt: u8, seq: u16, ts: u32, ssrc: u32, code: u8, end: bool, duration: u16) -> Vec<u8> {
    let mut p = vec![0x80, pt];
    p.extend_from_slice(&seq.to_be_bytes());
    p.extend_from_slice(&ts.to_be_bytes());
    p.extend_from_slice(&ssrc.to_be_bytes());
    p.extend_from_slice(&[code, if end { 0x8a } else { 0x0a }]);
    p.extend_from_slice(&duration.to_be_bytes());
    p
}

/// A 16 kHz mono 16-bit WAV file of a `hz` tone lasting `seconds`.
pub fn tone_wav(hz: f64, seconds: f64) -> Vec<u8> {
    let samples = media_codecs::signal::sine(16_000, hz, seconds, 8000.0);
    let data: Vec<u8> = samples.iter().flat_map(|s| s.to_le_bytes()).collect();
    let mut w = b"RIFF".to_vec();
    w.extend_from_slice(&(36 + data.len() as u32).to_le_bytes());
    w.extend_from_slice(b"WAVEfmt \x10\0\0\0\x01\0\x01\0");
    w.extend_from_slice(&16_000u32.to_le_bytes());
    w.extend_from_slice(&32_000u32.to_le_bytes());
    w.extend_from_slice(b"\x02\0\x10\0data");
    w.extend_from_slice(&(data.len() as u32).to_le_bytes());
    w.extend_from_slice(&data);
    w
}

/// Whether the tests run as root (network namespaces, XDP, mounts).
pub fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find_map(|l| l.strip_prefix("Uid:")).map(|u| u.split_whitespace().next() == Some("0")))
        .unwrap_or(false)
}
