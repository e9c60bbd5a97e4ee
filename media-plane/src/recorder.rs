//! The recorder: one thread that turns what the cores tap into WAV files, off the packet path.
//!
//! ```text
//!  core 0 ─┐ Tap (RTP of a recorded leg, a conference's mix, a channel's end), bounded queue
//!  core 1 ─┼──────────────────────────────────► recorder thread ─► Recording (media-engine: decode,
//!  api ────┘ Start / Stop / Shutdown                             resample, place by timestamp)
//!                                                                  └─► BufWriter ─► file.wav
//! ```
//!
//! A file is a 44-byte WAV header and 16-bit PCM frames. The header's sizes are brought up to
//! date every second and at the end, so the file plays after a clean stop, after its legs end,
//! after SIGTERM (the recorder finishes every open file before the process exits) and, up to the
//! last second, even after a crash. A write that fails (disk full) ends that recording with a
//! `RecordingStopped` event naming the error; its taps are stopped on the cores and the process
//! carries on. A full queue from the cores is counted (the cores' `taps_dropped`), never waited
//! on.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufWriter, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, TrySendError};
use media_engine::engine::{Event, Tap};
use media_engine::record::{Recording, RecordingSummary};
use tokio::sync::{broadcast, oneshot};

use crate::driver::CoreEvent;

/// Messages from the cores' taps waiting for the recorder; beyond this they are dropped.
pub const QUEUE: usize = 16 * 1024;
/// How often ready audio is written.
const WRITE_EVERY: Duration = Duration::from_millis(200);
/// How often the header's sizes are brought up to date (and the buffer flushed).
const HEADER_EVERY: Duration = Duration::from_secs(1);
/// The most audio a WAV file holds (its sizes are 32-bit), in bytes.
const MAX_DATA: u64 = u32::MAX as u64 - 36 - 64;
/// Core number given with the recorder's events (they come from no core).
pub const RECORDER_CORE: usize = usize::MAX;

/// What the recorder is asked.
#[derive(Debug)]
pub enum Message {
    Tap(Tap, Instant),
    Start {
        recording: u64,
        file: String,
        pcap: bool,
        channels: u8,
        rate: u32,
        reply: oneshot::Sender<Result<(), String>>,
    },
    Stop {
        recording: u64,
        reply: oneshot::Sender<Option<RecordingSummary>>,
    },
    /// Finish every open file, then end the thread.
    Shutdown,
}

/// A core's or the API's way to the recorder. Cheap to clone. Media goes on a bounded queue
/// (full: a counted drop); the ends of channels and Start/Stop/Shutdown on a control queue that
/// never drops or blocks (they are few).
#[derive(Debug, Clone)]
pub struct RecorderHandle {
    tx: Sender<Message>,
    ctl: Sender<Message>,
}

impl RecorderHandle {
    /// Passes a tap on; `false` if the recorder's queue is full (the caller counts it). The end
    /// of a channel is never dropped.
    pub fn tap(&self, tap: Tap, now: Instant) -> bool {
        if matches!(tap, Tap::Ended { .. }) {
            return self.ctl.send(Message::Tap(tap, now)).is_ok();
        }
        match self.tx.try_send(Message::Tap(tap, now)) {
            Ok(()) => true,
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => false,
        }
    }

    pub async fn start(&self, recording: u64, file: String, channels: u8, rate: u32, pcap: bool) -> Result<(), String> {
        let (reply, rx) = oneshot::channel();
        self.ctl
            .send(Message::Start { recording, file, channels, rate, pcap, reply })
            .map_err(|_| "the recorder has stopped".to_owned())?;
        rx.await.map_err(|_| "the recorder has stopped".to_owned())?
    }

    pub async fn stop(&self, recording: u64) -> Option<RecordingSummary> {
        let (reply, rx) = oneshot::channel();
        self.ctl.send(Message::Stop { recording, reply }).ok()?;
        rx.await.ok().flatten()
    }

    /// Finishes every open file and waits (at most `limit`) for the thread to end.
    pub fn shutdown(&self, thread: std::thread::JoinHandle<()>, limit: Duration) {
        let _ = self.ctl.send(Message::Shutdown);
        let deadline = Instant::now() + limit;
        while !thread.is_finished() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        if thread.is_finished() {
            let _ = thread.join();
        } else {
            tracing::warn!("the recorder did not finish its files within {limit:?}");
        }
    }
}

/// One file being written.
#[derive(Debug)]
struct Active {
    recording: Recording,
    /// As the client named it, and where it is.
    file: String,
    out: BufWriter<File>,
    started: Instant,
    /// Channels whose media is gone.
    ended: Vec<bool>,
    frames: u64,
    last_write: Instant,
    last_header: Instant,
    samples: Vec<i16>,
    /// The legs' RTP as pcap, if asked for.
    pcap: Option<BufWriter<File>>,
}

/// Starts the recorder thread, writing under `dir`; recordings that end are announced on
/// `events`; `stop_taps(recording)` is called when a recording fails so the cores stop tapping.
pub fn spawn(
    dir: PathBuf,
    events: broadcast::Sender<CoreEvent>,
    stop_taps: Box<dyn Fn(u64) + Send>,
) -> std::io::Result<(RecorderHandle, std::thread::JoinHandle<()>)> {
    let (tx, rx) = crossbeam_channel::bounded(QUEUE);
    let (ctl, ctl_rx) = crossbeam_channel::unbounded();
    let thread = std::thread::Builder::new().name("recorder".into()).spawn(move || run(&dir, &rx, &ctl_rx, &events, &*stop_taps))?;
    Ok((RecorderHandle { tx, ctl }, thread))
}

/// The ends of channels that came before their recording's Start (its leg went while the
/// recording was being set up), kept this long.
const EARLY_END: Duration = Duration::from_secs(30);
/// Messages taken in before ready audio is written (so a backlog is placed before it is judged
/// late).
const DRAIN: usize = 4096;

fn run(dir: &Path, rx: &Receiver<Message>, ctl: &Receiver<Message>, events: &broadcast::Sender<CoreEvent>, stop_taps: &dyn Fn(u64)) {
    let mut active: HashMap<u64, Active> = HashMap::new();
    let mut early: HashMap<u64, (Instant, Vec<u8>)> = HashMap::new();
    loop {
        // One message (waiting at most a write period), then whatever else is queued, control
        // first: a backlog is placed before ready audio is written.
        // Every handle gone (the service dropped): finish as on shutdown.
        let first = crossbeam_channel::select! {
            recv(ctl) -> m => Some(m.unwrap_or(Message::Shutdown)),
            recv(rx) -> m => Some(m.unwrap_or(Message::Shutdown)),
            default(WRITE_EVERY) => None,
        };
        let mut batch: Vec<Message> = first.into_iter().collect();
        while batch.len() < DRAIN {
            match ctl.try_recv().or_else(|_| rx.try_recv()) {
                Ok(m) => batch.push(m),
                Err(_) => break,
            }
        }
        let now = Instant::now();
        early.retain(|_, (at, _)| now.saturating_duration_since(*at) < EARLY_END);
        for msg in batch {
            match msg {
                Message::Tap(Tap::Ended { recording, channel }, _) if !active.contains_key(&recording) => {
                    if early.len() < 10_000 {
                        early.entry(recording).or_insert_with(|| (now, Vec::new())).1.push(channel);
                    }
                }
                Message::Tap(tap, at) => {
                    if let Some((id, e)) = on_tap(&mut active, tap, at, events) {
                        if let Some(a) = active.remove(&id) {
                            tracing::warn!(recording = id, file = %a.file, error = %e, "recording stopped: pcap write failed");
                            stop_taps(id);
                            announce(events, finish(id, a, format!("write failed: {e}")));
                        }
                    }
                }
                Message::Start { recording, file, channels, rate, pcap, reply } => {
                    let opened = open(dir, &file, channels, rate, pcap, now);
                    let _ = reply.send(opened.map(|mut a| {
                        // Channels whose leg went while the recording was set up.
                        for ch in early.remove(&recording).map(|(_, c)| c).unwrap_or_default() {
                            if let Some(e) = a.ended.get_mut(usize::from(ch)) {
                                *e = true;
                            }
                        }
                        if a.ended.iter().all(|e| *e) {
                            announce(events, finish(recording, a, "ended".into()));
                        } else {
                            active.insert(recording, a);
                        }
                    }));
                }
                Message::Stop { recording, reply } => {
                    let summary = active.remove(&recording).map(|a| finish(recording, a, "stopped".into()));
                    if let Some(s) = &summary {
                        announce(events, s.clone());
                    }
                    let _ = reply.send(summary);
                }
                Message::Shutdown => {
                    for (id, a) in active.drain() {
                        announce(events, finish(id, a, "shutdown".into()));
                    }
                    return;
                }
            }
        }
        // Write what is ready, and keep the headers current; a failed write ends the recording.
        let mut failed = Vec::new();
        for (id, a) in &mut active {
            if now.saturating_duration_since(a.last_write) >= WRITE_EVERY {
                a.last_write = now;
                a.samples.clear();
                let n = a.recording.take_ready(now.saturating_duration_since(a.started), &mut a.samples) as u64;
                if (a.frames + n) * u64::from(a.recording.channel_count()) * 2 > MAX_DATA {
                    failed.push((*id, "size limit: a WAV file holds at most 4 GiB of audio".to_owned()));
                    continue;
                }
                if let Err(e) = write_samples(&mut a.out, &a.samples) {
                    failed.push((*id, e));
                    continue;
                }
                a.frames += n;
            }
            if now.saturating_duration_since(a.last_header) >= HEADER_EVERY {
                a.last_header = now;
                if let Err(e) = update_header(a) {
                    failed.push((*id, e));
                }
            }
        }
        for (id, e) in failed {
            if let Some(a) = active.remove(&id) {
                tracing::warn!(recording = id, file = %a.file, error = %e, "recording stopped");
                stop_taps(id);
                let reason = if e.starts_with("size limit") { e } else { format!("write failed: {e}") };
                announce(events, finish(id, a, reason));
            }
        }
    }
}

/// Takes one tap in; a recording whose pcap could not be written is returned with the error.
fn on_tap(active: &mut HashMap<u64, Active>, tap: Tap, at: Instant, events: &broadcast::Sender<CoreEvent>) -> Option<(u64, String)> {
    match tap {
        Tap::Rtp { recording, channel, codec, packet } => {
            if let Some(a) = active.get_mut(&recording) {
                a.recording.push_rtp(channel, codec, &packet, at.saturating_duration_since(a.started));
                if let Some(p) = &mut a.pcap {
                    if let Err(e) = write_pcap_record(p, channel, &packet) {
                        return Some((recording, e.to_string()));
                    }
                }
            }
        }
        Tap::Pcm { recording, channel, rate, pcm } => {
            if let Some(a) = active.get_mut(&recording) {
                a.recording.push_pcm(channel, rate, &pcm, at.saturating_duration_since(a.started));
            }
        }
        Tap::Ended { recording, channel } => {
            let done = active.get_mut(&recording).is_some_and(|a| {
                if let Some(e) = a.ended.get_mut(usize::from(channel)) {
                    *e = true;
                }
                a.ended.iter().all(|e| *e)
            });
            if done {
                if let Some(a) = active.remove(&recording) {
                    announce(events, finish(recording, a, "ended".into()));
                }
            }
        }
    }
    None
}

/// The pcap file's global header: raw IPv4 packets (link type 101), microsecond times.
fn pcap_header() -> [u8; 24] {
    let mut h = [0u8; 24];
    h[0..4].copy_from_slice(&0xa1b2_c3d4u32.to_le_bytes());
    h[4..6].copy_from_slice(&2u16.to_le_bytes());
    h[6..8].copy_from_slice(&4u16.to_le_bytes());
    h[16..20].copy_from_slice(&65_535u32.to_le_bytes());
    h[20..24].copy_from_slice(&101u32.to_le_bytes());
    h
}

/// One RTP packet of `channel` as a pcap record: IPv4/UDP from 10.0.0.(channel+1):(5000+2
/// channel) to 10.0.0.254:6000, stamped with the wall clock.
fn write_pcap_record(out: &mut BufWriter<File>, channel: u8, rtp: &[u8]) -> std::io::Result<()> {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    let len = 28 + rtp.len();
    let Ok(total) = u16::try_from(len) else { return Ok(()) };
    let mut ip = [0u8; 20];
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&total.to_be_bytes());
    ip[8] = 64;
    ip[9] = 17;
    ip[12..16].copy_from_slice(&[10, 0, 0, channel.saturating_add(1)]);
    ip[16..20].copy_from_slice(&[10, 0, 0, 254]);
    let sum: u32 = ip.chunks_exact(2).map(|w| u32::from(u16::from_be_bytes([w[0], w[1]]))).sum();
    let folded = (sum & 0xffff) + (sum >> 16);
    let checksum = !(((folded & 0xffff) + (folded >> 16)) as u16);
    ip[10..12].copy_from_slice(&checksum.to_be_bytes());
    let mut udp = [0u8; 8];
    udp[0..2].copy_from_slice(&(5000 + 2 * u16::from(channel)).to_be_bytes());
    udp[2..4].copy_from_slice(&6000u16.to_be_bytes());
    udp[4..6].copy_from_slice(&(total - 20).to_be_bytes());
    let mut rec = [0u8; 16];
    rec[0..4].copy_from_slice(&(now.as_secs() as u32).to_le_bytes());
    rec[4..8].copy_from_slice(&now.subsec_micros().to_le_bytes());
    rec[8..12].copy_from_slice(&(len as u32).to_le_bytes());
    rec[12..16].copy_from_slice(&(len as u32).to_le_bytes());
    out.write_all(&rec)?;
    out.write_all(&ip)?;
    out.write_all(&udp)?;
    out.write_all(rtp)
}

fn announce(events: &broadcast::Sender<CoreEvent>, summary: RecordingSummary) {
    tracing::info!(recording = summary.recording, file = %summary.file, frames = summary.frames, reason = %summary.reason, "recording ended");
    let _ = events.send((RECORDER_CORE, Event::RecordingStopped(Box::new(summary))));
}

/// Opens a new file (never an existing one) with an empty header.
fn open(dir: &Path, file: &str, channels: u8, rate: u32, pcap: bool, now: Instant) -> Result<Active, String> {
    let recording = Recording::new(channels, rate).ok_or_else(|| format!("{channels} channels at {rate} Hz cannot be recorded"))?;
    let path = dir.join(file);
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(|e| format!("{}: {e}", parent.display()))?;
    }
    let f = File::options().write(true).create_new(true).open(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut out = BufWriter::with_capacity(64 * 1024, f);
    out.write_all(&header(channels, rate, 0)).map_err(|e| format!("{}: {e}", path.display()))?;
    let pcap = match pcap {
        false => None,
        true => {
            let path = path.with_extension("pcap");
            let f = File::options().write(true).create_new(true).open(&path).map_err(|e| format!("{}: {e}", path.display()))?;
            let mut p = BufWriter::with_capacity(64 * 1024, f);
            p.write_all(&pcap_header()).map_err(|e| format!("{}: {e}", path.display()))?;
            Some(p)
        }
    };
    Ok(Active {
        pcap,
        recording,
        file: file.to_owned(),
        out,
        started: now,
        ended: vec![false; usize::from(channels)],
        frames: 0,
        last_write: now,
        last_header: now,
        samples: Vec::new(),
    })
}

/// Writes what is left and the final header; the summary says how it went.
fn finish(id: u64, mut a: Active, mut reason: String) -> RecordingSummary {
    if !reason.starts_with("write failed") && !reason.starts_with("size limit") {
        a.samples.clear();
        let n = a.recording.finish(&mut a.samples) as u64;
        let written = write_samples(&mut a.out, &a.samples).map(|()| a.frames += n);
        if let Err(e) = written.and_then(|()| update_header(&mut a)) {
            reason = format!("write failed: {e}");
        }
    } else {
        // What was written stays playable.
        let _ = update_header(&mut a);
    }
    let channels = a.recording.channel_count();
    RecordingSummary {
        recording: id,
        file: a.file.clone(),
        channels,
        rate: a.recording.rate(),
        frames: a.frames,
        bytes: 44 + a.frames * u64::from(channels) * 2,
        counters: a.recording.counters,
        reason,
    }
}

fn write_samples(out: &mut BufWriter<File>, samples: &[i16]) -> Result<(), String> {
    let bytes: Vec<u8> = samples.iter().flat_map(|s| s.to_le_bytes()).collect();
    out.write_all(&bytes).map_err(|e| e.to_string())
}

/// Flushes and rewrites the header's sizes for the frames written so far (and flushes the pcap).
fn update_header(a: &mut Active) -> Result<(), String> {
    if let Some(p) = &mut a.pcap {
        p.flush().map_err(|e| e.to_string())?;
    }
    a.out.flush().map_err(|e| e.to_string())?;
    let f = a.out.get_mut();
    let h = header(a.recording.channel_count(), a.recording.rate(), a.frames);
    f.seek(SeekFrom::Start(0)).map_err(|e| e.to_string())?;
    f.write_all(&h).map_err(|e| e.to_string())?;
    f.seek(SeekFrom::End(0)).map_err(|e| e.to_string())?;
    Ok(())
}

/// A canonical 44-byte WAV header: 16-bit PCM, `channels`, `rate`, `frames` frames.
pub fn header(channels: u8, rate: u32, frames: u64) -> [u8; 44] {
    let block = u32::from(channels) * 2;
    let data = u32::try_from(frames * u64::from(block)).unwrap_or(u32::MAX - 36);
    let mut h = [0u8; 44];
    let fields: [(&[u8], usize); 13] = [
        (b"RIFF", 0),
        (&(36 + data).to_le_bytes(), 4),
        (b"WAVE", 8),
        (b"fmt ", 12),
        (&16u32.to_le_bytes(), 16),
        (&1u16.to_le_bytes(), 20),
        (&u16::from(channels).to_le_bytes(), 22),
        (&rate.to_le_bytes(), 24),
        (&(rate * block).to_le_bytes(), 28),
        (&(block as u16).to_le_bytes(), 32),
        (&16u16.to_le_bytes(), 34),
        (b"data", 36),
        (&data.to_le_bytes(), 40),
    ];
    for (bytes, at) in fields {
        h[at..at + bytes.len()].copy_from_slice(bytes);
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_header_reads_back_as_the_wav_it_describes() {
        let mut file = header(2, 16_000, 3).to_vec();
        file.extend(std::iter::repeat_n(0u8, 3 * 4));
        let (rate, pcm) = media_codecs::prompt::read_wav(&file).expect("a WAV file");
        assert_eq!((rate, pcm.len()), (16_000, 3), "three frames (read as mono)");
    }
}
