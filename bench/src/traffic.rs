//! The paced RTP sender and sink of `rtp-load`.
//!
//! Streams are spread evenly over the packet interval (stream `s` of `n` sends at `s/n` of each
//! 20 ms), so the offered load is smooth rather than a burst every 20 ms. Packets due in a tick go
//! out with one `sendmmsg` per generator socket. Each packet carries its stream (SSRC), a 32-bit
//! counter and its send time; the sink takes the kernel's receive timestamp (SO_TIMESTAMPNS), so
//! the measured latency is the relay's (plus loopback), not the generator's polling delay.
//!
//! **Transcoding** ([`Params::transcode`]): each side sends real codec frames (pre-encoded speech,
//! cycled), and what comes out is the relay's own stream (its SSRC, sequence numbers, codec), so
//! nothing can be carried in the packet. A stream is then known by the relay address it leaves
//! from; its packets are numbered by their sequence number from the first one received, which is
//! anchored to the last packet sent on that stream when it arrives (one packet in, one out when
//! both sides use the same ptime). The send times of the last 256 packets per stream are kept, so
//! latency is the transcoding relay's added delay as long as it stays under 256 packets.
//!
//! **Conferences** ([`TranscodeLoad::talkers`]): every member is a stream that sends (speech for
//! the talkers, silence for the others) and receives the mix. The members are paired as the two
//! sides of a "call", so the mix out of one member's leg is counted against its partner's stream:
//! a member's mix is its own RTP stream, so its loss is the gaps in its sequence numbers over the
//! measured window. Latency is not measured (the mix answers no one packet): the media plane's
//! own mixing-period counters say how late it mixes.

use std::net::{IpAddr, SocketAddr};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use hdrhistogram::Histogram;
use media_plane::sys::{enable_rx_timestamps, PacketBatch};
use media_plane::wire::{write_rtp_header, RtpPacket};
use mio::net::UdpSocket;
use mio::{Events, Interest, Poll, Token};
use serde::Serialize;

use crate::procstat;

/// Offset in the RTP packet of: send time (u64 ns since the epoch), counter (u32), measured flag (u8).
const SENT_AT: usize = 12;
const COUNTER: usize = 20;
const MEASURED: usize = 24;
/// Smallest packet that holds the fields above.
pub const MIN_SIZE: usize = 25;
const BATCH: usize = 64;

/// The relay addresses of one call.
#[derive(Debug, Clone, Copy)]
pub struct Call {
    pub a_local: SocketAddr,
    pub b_local: SocketAddr,
}

/// Load parameters.
#[derive(Debug, Clone)]
pub struct Params {
    /// Packets per second per stream (two streams per call).
    pub rate: u32,
    /// RTP packet size (header included), bytes.
    pub size: usize,
    pub warmup: Duration,
    pub duration: Duration,
    /// How long to keep receiving after the last packet was sent.
    pub drain: Duration,
    /// Pacing granularity: the longest sleep between sends; zero never sleeps (busy pacing).
    pub tick: Duration,
    /// Relay process to measure the CPU of.
    pub relay_pid: Option<u32>,
    /// Codec frames to send instead of marked packets, for transcoding relays.
    pub transcode: Option<TranscodeLoad>,
}

/// What each side of a transcoded call sends.
#[derive(Debug, Clone)]
pub struct TranscodeLoad {
    /// Payloads side A (index 0) and side B (1) send, cycled (20 ms frames of their codecs).
    pub payloads: [Vec<Vec<u8>>; 2],
    /// Their RTP payload types.
    pub payload_types: [u8; 2],
    /// Conference load: the first `talkers` streams send `payloads[0]` (speech), every other
    /// stream `payloads[1]` (silence), all in `payload_types[0]`.
    pub talkers: Option<usize>,
}

/// Send records kept per stream in transcoding mode.
const RING: usize = 256;

/// A sent packet, for matching the relay's output to it in transcoding mode.
#[derive(Debug, Default, Clone, Copy)]
struct SendRecord {
    counter: u32,
    sent_ns: u64,
    measured: bool,
}

/// Latency percentiles in microseconds.
#[derive(Debug, Clone, Serialize)]
pub struct Latency {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
}

impl Latency {
    /// The percentiles of a histogram of nanoseconds.
    pub fn from_ns(hist: &Histogram<u64>) -> Self {
        let us = |q: f64| hist.value_at_quantile(q) as f64 / 1000.0;
        Self { p50: us(0.5), p90: us(0.9), p99: us(0.99), p999: us(0.999), max: hist.max() as f64 / 1000.0 }
    }
}

/// What one run measured (the measured window only, after warm-up).
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub calls: usize,
    pub streams: usize,
    pub rate_per_stream: u32,
    pub packet_size: usize,
    pub duration_s: f64,
    pub offered_pps: f64,
    pub forwarded_pps: f64,
    pub sent: u64,
    pub received: u64,
    pub lost: u64,
    pub loss_pct: f64,
    pub reordered: u64,
    /// Packets that arrived from an unexpected relay port or with an unknown stream.
    pub misrouted: u64,
    pub latency_us: Latency,
    pub relay_cpu_s: Option<f64>,
    pub relay_cpu_us_per_pkt: Option<f64>,
    /// Relay CPU as a share of one core over the window, percent.
    pub relay_cpu_pct: Option<f64>,
    pub gen_cpu_s: Option<f64>,
    pub steal_pct: Option<f64>,
    /// Kernel UDP receive-buffer overflows during the run (any socket on the machine).
    pub kernel_rcvbuf_errors: Option<u64>,
    /// Conference load: the media plane's mixing periods over the whole run.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mixer: Option<MixerCounters>,
}

/// The media plane's conference mixing periods: run, run more than 5 ms late, skipped.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct MixerCounters {
    pub ticks: u64,
    pub late: u64,
    pub missed: u64,
}

/// Progress once a second.
#[derive(Debug, Clone, Copy)]
pub struct Progress {
    pub elapsed: Duration,
    pub sent: u64,
    pub received: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum TrafficError {
    #[error("socket set-up: {0}")]
    Socket(std::io::Error),
    #[error("packet size {0} is outside {MIN_SIZE}..=1500")]
    Size(usize),
    #[error("no calls to run")]
    NoCalls,
    #[error("histogram: {0}")]
    Histogram(String),
}

/// The generator's sockets: leg A of call `c` has remote `sockets[2c % k]`, leg B `sockets[(2c+1) % k]`.
#[derive(Debug)]
pub struct Endpoints {
    sockets: Vec<UdpSocket>,
}

impl Endpoints {
    pub fn bind(ip: IpAddr, count: usize) -> Result<Self, TrafficError> {
        let mut sockets = Vec::with_capacity(count);
        for _ in 0..count.max(2) {
            let addr = SocketAddr::new(ip, 0);
            let s = socket2::Socket::new(socket2::Domain::for_address(addr), socket2::Type::DGRAM, None).map_err(TrafficError::Socket)?;
            s.set_nonblocking(true).map_err(TrafficError::Socket)?;
            // Large buffers: loss must be the relay's, not the generator's.
            let _ = s.set_recv_buffer_size(8 << 20);
            let _ = s.set_send_buffer_size(8 << 20);
            s.bind(&addr.into()).map_err(TrafficError::Socket)?;
            enable_rx_timestamps(s.as_raw_fd()).map_err(TrafficError::Socket)?;
            sockets.push(UdpSocket::from_std(s.into()));
        }
        Ok(Self { sockets })
    }

    /// Remote address to give leg A (`side` 0) or leg B (`side` 1) of call `c`.
    pub fn remote(&self, call: usize, side: usize) -> Result<SocketAddr, TrafficError> {
        self.sockets[(2 * call + side) % self.sockets.len()].local_addr().map_err(TrafficError::Socket)
    }
}

#[derive(Debug, Default, Clone, Copy)]
struct Stream {
    next: u32,
    received: u64,
    last: Option<u32>,
    /// Transcoding mode: (first sequence number received, the counter it was anchored to).
    anchor: Option<(u16, u32)>,
}

impl Stream {
    /// Counts packet `counter` of this stream as received (and as reordered if it is not past
    /// the latest one).
    fn count(&mut self, counter: u32, received: &mut u64, reordered: &mut u64) {
        if self.last.is_some_and(|l| counter <= l) {
            *reordered += 1;
        } else {
            self.last = Some(counter);
        }
        self.received += 1;
        *received += 1;
    }
}

fn unix_ns() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64)
}

/// Runs the load on the calling thread (pin it first) and reports the measured window.
pub fn run(ep: &mut Endpoints, calls: &[Call], p: &Params, mut progress: impl FnMut(Progress)) -> Result<Report, TrafficError> {
    if calls.is_empty() {
        return Err(TrafficError::NoCalls);
    }
    if !(MIN_SIZE..=1500).contains(&p.size) {
        return Err(TrafficError::Size(p.size));
    }
    let k = ep.sockets.len();
    let n = calls.len() * 2;
    let mut poll = Poll::new().map_err(TrafficError::Socket)?;
    for (i, s) in ep.sockets.iter_mut().enumerate() {
        poll.registry().register(s, Token(i), Interest::READABLE).map_err(TrafficError::Socket)?;
    }
    let fds: Vec<_> = ep.sockets.iter().map(|s| s.as_raw_fd()).collect();
    let mut tx: Vec<PacketBatch> = (0..k).map(|_| PacketBatch::new(BATCH)).collect();
    let mut tx_items: Vec<Vec<(usize, SocketAddr)>> = vec![Vec::with_capacity(BATCH); k];
    let mut rx = PacketBatch::new(BATCH);
    let mut streams = vec![Stream::default(); n];
    // Transcoding mode: which stream leaves the relay from which address, and the send records.
    let by_source: std::collections::HashMap<SocketAddr, usize> =
        calls.iter().enumerate().flat_map(|(c, call)| [(call.b_local, 2 * c), (call.a_local, 2 * c + 1)]).collect();
    let mut rings = if p.transcode.is_some() { vec![[SendRecord::default(); RING]; n] } else { Vec::new() };
    let mut hist = Histogram::<u64>::new_with_bounds(1, 10_000_000_000, 3).map_err(|e| TrafficError::Histogram(e.to_string()))?;
    let (mut sent, mut received, mut reordered, mut misrouted) = (0u64, 0u64, 0u64, 0u64);
    let mut events = Events::with_capacity(256);
    let conference = p.transcode.as_ref().is_some_and(|t| t.talkers.is_some());

    let interval_ns = 1_000_000_000u128 / u128::from(p.rate.max(1));
    let start = Instant::now();
    let measure_from = start + p.warmup;
    let send_end = measure_from + p.duration;
    let mut k_next: u128 = 0;
    let mut measuring = false;
    let (mut cpu0, mut ticks0, mut gen0, mut rcvbuf0) = (None, None, None, None);
    let mut window = p.duration;
    let mut last_progress = start;
    let mut drain_until: Option<Instant> = None;

    loop {
        let now = Instant::now();
        if !measuring && now >= measure_from {
            measuring = true;
            cpu0 = p.relay_pid.and_then(procstat::process_cpu_seconds);
            gen0 = procstat::process_cpu_seconds(std::process::id());
            ticks0 = procstat::cpu_ticks();
            rcvbuf0 = procstat::udp_rcvbuf_errors();
        }
        if drain_until.is_none() && now >= send_end {
            window = now - measure_from;
            drain_until = Some(now + p.drain);
        }
        if drain_until.is_none() {
            // Queue every packet due by now.
            let elapsed = (now - start).as_nanos();
            while k_next * interval_ns / n as u128 <= elapsed {
                let s = (k_next % n as u128) as usize;
                k_next += 1;
                let sock = s % k;
                if tx_items[sock].len() == BATCH {
                    flush(&mut tx[sock], fds[sock], &mut tx_items[sock]);
                }
                let call = &calls[s / 2];
                let to = if s % 2 == 0 { call.a_local } else { call.b_local };
                let st = &mut streams[s];
                let counter = st.next;
                st.next = st.next.wrapping_add(1);
                let slot = tx_items[sock].len();
                let size = p.size;
                match &p.transcode {
                    Some(t) => {
                        let side = match t.talkers {
                            Some(k) => usize::from(s >= k),
                            None => s % 2,
                        };
                        let frames = &t.payloads[side];
                        let payload = frames.get(counter as usize % frames.len().max(1)).map_or(&[][..], |f| &f[..]);
                        let pt = if t.talkers.is_some() { t.payload_types[0] } else { t.payload_types[side] };
                        tx[sock].fill(slot, |buf| {
                            let _ = write_rtp_header(buf, pt, counter as u16, counter.wrapping_mul(160), s as u32);
                            let end = (12 + payload.len()).min(buf.len());
                            buf[12..end].copy_from_slice(&payload[..end - 12]);
                            end
                        });
                        rings[s][counter as usize % RING] = SendRecord { counter, sent_ns: unix_ns(), measured: measuring };
                    }
                    None => tx[sock].fill(slot, |buf| {
                        let _ = write_rtp_header(buf, 0, counter as u16, counter.wrapping_mul(160), s as u32);
                        buf[SENT_AT..COUNTER].copy_from_slice(&unix_ns().to_le_bytes());
                        buf[COUNTER..MEASURED].copy_from_slice(&counter.to_le_bytes());
                        buf[MEASURED] = u8::from(measuring);
                        buf[MEASURED + 1..size].fill(0xd5);
                        size
                    }),
                }
                tx_items[sock].push((slot, to));
                if measuring {
                    sent += 1;
                }
            }
            for sock in 0..k {
                flush(&mut tx[sock], fds[sock], &mut tx_items[sock]);
            }
        }

        // Receive whatever is waiting.
        poll.poll(&mut events, Some(Duration::ZERO)).map_err(TrafficError::Socket)?;
        for ev in events.iter() {
            let sock = ev.token().0;
            let Some(&fd) = fds.get(sock) else { continue };
            loop {
                let got = rx.recv(fd).map_err(TrafficError::Socket)?;
                for i in 0..got {
                    let pkt = rx.packet(i);
                    let Ok(rtp) = RtpPacket::new_checked(pkt) else {
                        misrouted += 1;
                        continue;
                    };
                    if conference {
                        // The mix to a member: its own stream from the media plane, numbered
                        // from its first packet in the window; gaps in it are loss.
                        let Some(&s) = rx.peer(i).and_then(|from| by_source.get(&from)) else {
                            misrouted += 1;
                            continue;
                        };
                        if !measuring {
                            continue;
                        }
                        let st = &mut streams[s];
                        let seq = rtp.sequence_number();
                        let (first, _) = *st.anchor.get_or_insert((seq, 0));
                        st.count(u32::from(seq.wrapping_sub(first)), &mut received, &mut reordered);
                        continue;
                    }
                    if p.transcode.is_some() {
                        let Some(&s) = rx.peer(i).and_then(|from| by_source.get(&from)) else {
                            misrouted += 1;
                            continue;
                        };
                        let st = &mut streams[s];
                        let seq = rtp.sequence_number();
                        let (first_seq, first_counter) = *st.anchor.get_or_insert((seq, st.next.wrapping_sub(1)));
                        let counter = first_counter.wrapping_add(u32::from(seq.wrapping_sub(first_seq)));
                        let record = rings[s][counter as usize % RING];
                        if record.counter != counter || !record.measured {
                            continue;
                        }
                        let arrived = rx.rx_timestamp_ns(i).unwrap_or_else(unix_ns);
                        st.count(counter, &mut received, &mut reordered);
                        let _ = hist.record(arrived.saturating_sub(record.sent_ns).max(1));
                        continue;
                    }
                    let s = rtp.ssrc() as usize;
                    if s >= n || pkt.len() < MIN_SIZE || (s ^ 1) % k != sock {
                        misrouted += 1;
                        continue;
                    }
                    let call = &calls[s / 2];
                    let expected_from = if s % 2 == 0 { call.b_local } else { call.a_local };
                    if rx.peer(i) != Some(expected_from) {
                        misrouted += 1;
                        continue;
                    }
                    if pkt[MEASURED] == 0 {
                        continue;
                    }
                    let mut b8 = [0u8; 8];
                    b8.copy_from_slice(&pkt[SENT_AT..COUNTER]);
                    let sent_at = u64::from_le_bytes(b8);
                    let mut b4 = [0u8; 4];
                    b4.copy_from_slice(&pkt[COUNTER..MEASURED]);
                    let counter = u32::from_le_bytes(b4);
                    let arrived = rx.rx_timestamp_ns(i).unwrap_or_else(unix_ns);
                    streams[s].count(counter, &mut received, &mut reordered);
                    let _ = hist.record(arrived.saturating_sub(sent_at).max(1));
                }
                if got < rx.capacity() {
                    break;
                }
            }
        }

        if now.duration_since(last_progress) >= Duration::from_secs(1) {
            last_progress = now;
            progress(Progress { elapsed: now - start, sent, received });
        }
        match drain_until {
            Some(t) if now >= t => break,
            Some(_) => std::thread::sleep(p.tick),
            None => {
                let next_due = start + Duration::from_nanos((k_next * interval_ns / n as u128) as u64);
                let wait = next_due.saturating_duration_since(Instant::now()).min(p.tick);
                if !wait.is_zero() {
                    std::thread::sleep(wait);
                }
            }
        }
    }

    let secs = window.as_secs_f64().max(1e-9);
    let relay_cpu = match (cpu0, p.relay_pid.and_then(procstat::process_cpu_seconds)) {
        (Some(a), Some(b)) => Some(b - a),
        _ => None,
    };
    let steal_pct = match (ticks0, procstat::cpu_ticks()) {
        (Some((t0, s0)), Some((t1, s1))) if t1 > t0 => Some((s1 - s0) as f64 * 100.0 / (t1 - t0) as f64),
        _ => None,
    };
    // A conference's loss is the gaps in each member's mix stream; a call's, what was sent and
    // never came back.
    let lost = if conference {
        streams.iter().filter_map(|st| st.last.map(|l| u64::from(l) + 1 - st.received.min(u64::from(l) + 1))).sum()
    } else {
        sent.saturating_sub(received)
    };
    Ok(Report {
        calls: calls.len(),
        streams: n,
        rate_per_stream: p.rate,
        packet_size: p.size,
        duration_s: secs,
        offered_pps: sent as f64 / secs,
        forwarded_pps: received as f64 / secs,
        sent,
        received,
        lost,
        loss_pct: match (conference, sent) {
            (_, 0) => 0.0,
            (true, _) => lost as f64 * 100.0 / (received + lost).max(1) as f64,
            (false, _) => lost as f64 * 100.0 / sent as f64,
        },
        reordered,
        misrouted,
        latency_us: Latency::from_ns(&hist),
        relay_cpu_s: relay_cpu,
        relay_cpu_us_per_pkt: relay_cpu.filter(|_| received > 0).map(|c| c * 1e6 / received as f64),
        relay_cpu_pct: relay_cpu.map(|c| c * 100.0 / secs),
        gen_cpu_s: gen0.and_then(|g| procstat::process_cpu_seconds(std::process::id()).map(|x| x - g)),
        steal_pct,
        kernel_rcvbuf_errors: rcvbuf0.and_then(|a| procstat::udp_rcvbuf_errors().map(|b| b - a)),
        mixer: None,
    })
}

fn flush(batch: &mut PacketBatch, fd: std::os::fd::RawFd, items: &mut Vec<(usize, SocketAddr)>) {
    if !items.is_empty() {
        // Refused sends show up as loss at the sink.
        let _ = batch.send(fd, items, |_| {});
        items.clear();
    }
}
