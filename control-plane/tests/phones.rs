//! Real phones against the shipped defaults: two baresip instances (Debian's baresip 1.0) register
//! with the control plane and call each other; the audio flows through the media plane.
//!
//! Both binaries run with no settings but the required ones (the control plane's `sip.domains`
//! and store file; the media plane with none at all), so this proves the defaults fit together:
//! SIP on 127.0.0.1:5060, the media plane's gRPC API on 127.0.0.1:9090, media ports
//! 30000-39999, one MD5 challenge per 401/407. Nothing else in the test suite uses those ports.
//!
//! baresip is driven through its `ctrl_tcp` module (netstring-framed JSON commands and events).
//! Its audio source is a sine tone (`ausine`); its `sndfile` module writes what it decoded from
//! the far end to a WAV file, which the test checks for the other phone's tone.
//!
//! Skips with a message when baresip is not installed, unless `REQUIRE_BARESIP=1` (the README's
//! test command sets it after installing baresip-core), in which case it fails.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use proto::v1;

mod common;
use common::{media_plane_bin, self_signed, start_control_plane, temp_dir, terminate, Proc};

const SIP: &str = "127.0.0.1:5060";
const GRPC: &str = "http://127.0.0.1:9090";

fn baresip_available() -> bool {
    let found = Command::new("baresip").arg("-h").stdout(Stdio::null()).stderr(Stdio::null()).status().is_ok();
    if !found {
        assert!(std::env::var("REQUIRE_BARESIP").as_deref() != Ok("1"), "REQUIRE_BARESIP=1 but baresip is not installed");
        eprintln!("SKIP: baresip is not installed (apt-get install baresip-core, or SETUP_PHONES=1 bash scripts/setup.sh)");
    }
    found
}

/// One baresip instance with its control connection.
struct Phone {
    _proc: Proc,
    ctrl: TcpStream,
    buffer: Vec<u8>,
    /// Messages received and not yet waited for.
    events: Vec<serde_json::Value>,
    dir: PathBuf,
    name: &'static str,
}

impl Phone {
    /// Starts `user`'s phone: SIP on `sip_port`, control on `ctrl_port`, sending a `tone_hz` sine,
    /// registering through `server` (an outbound proxy URI: `sip:127.0.0.1:5060`, or with
    /// `;transport=tls` and the CA file to trust), with `account_extra` (`;sipnat=outbound`,
    /// `;audio_codecs=opus`, `;mediaenc=srtp-mand`) appended to its account line; its codec is
    /// PCMU unless `account_extra` names others.
    #[allow(clippy::too_many_arguments)]
    fn start(
        root: &Path,
        user: &'static str,
        sip_port: u16,
        ctrl_port: u16,
        rtp_ports: &str,
        tone_hz: u32,
        server: &str,
        cafile: Option<&Path>,
        account_extra: &str,
    ) -> Phone {
        let dir = root.join(user);
        std::fs::create_dir_all(&dir).expect("phone dir");
        let config = format!(
            "poll_method epoll\nsip_listen 127.0.0.1:{sip_port}\n{}\
             call_local_timeout 120\ncall_max_calls 4\n\
             audio_player aubridge,nowhere\naudio_source ausine,{tone_hz}\naudio_alert aubridge,nowhere\n\
             ausrc_srate 48000\nausrc_channels 2\nauplay_srate 8000\nauplay_channels 1\nrtp_ports {rtp_ports}\nrtcp_mux no\njitter_buffer_delay 2-10\n\
             module_path /usr/lib/baresip/modules\nmodule g711.so\nmodule opus.so\nmodule srtp.so\nmodule ausine.so\nmodule aubridge.so\n\
             module sndfile.so\nsnd_path {}\n\
             module_tmp uuid.so\nmodule_app account.so\nmodule_app menu.so\nmodule_app ctrl_tcp.so\nctrl_tcp_listen 127.0.0.1:{ctrl_port}\n",
            cafile.map_or(String::new(), |ca| format!("sip_cafile {}\n", ca.display())),
            dir.display()
        );
        std::fs::write(dir.join("config"), config).expect("write config");
        // The phone's own domain is the server's; the outbound proxy is the server's address.
        std::fs::write(
            dir.join("accounts"),
            format!(
                "<sip:{user}@sip.test>;auth_pass=secret;outbound=\"{server}\";regint=600;answermode=auto{}{account_extra}\n",
                if account_extra.contains("audio_codecs=") { "" } else { ";audio_codecs=PCMU" }
            ),
        )
        .expect("write accounts");
        std::fs::write(dir.join("contacts"), "").expect("write contacts");
        let child = Command::new("baresip")
            .args(["-f", dir.to_str().expect("utf8 path")])
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(dir.join("baresip.log")).expect("log"))
            .stderr(std::fs::File::create(dir.join("baresip.err")).expect("log"))
            .spawn()
            .expect("start baresip");
        let proc = Proc { child, name: user };
        let deadline = Instant::now() + Duration::from_secs(10);
        let ctrl = loop {
            match TcpStream::connect(("127.0.0.1", ctrl_port)) {
                Ok(s) => break s,
                Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(50)),
                Err(e) => panic!("{user}'s baresip control port: {e}; log: {}", read(&dir.join("baresip.log"))),
            }
        };
        ctrl.set_read_timeout(Some(Duration::from_millis(200))).expect("timeout");
        Phone { _proc: proc, ctrl, buffer: Vec::new(), events: Vec::new(), dir, name: user }
    }

    /// Sends a command (`dial`, `hangup`, …).
    fn command(&mut self, command: &str, params: &str) {
        let json = serde_json::json!({ "command": command, "params": params, "token": command }).to_string();
        self.ctrl.write_all(format!("{}:{json},", json.len()).as_bytes()).expect("send command");
    }

    /// Waits for an event of `kind` (`CALL_ESTABLISHED`, …), seen before or after this call.
    fn wait_event(&mut self, kind: &str, limit: Duration) -> serde_json::Value {
        let is_it = |m: &serde_json::Value| {
            m.get("event").and_then(|e| e.as_bool()) == Some(true) && m.get("type").and_then(|t| t.as_str()) == Some(kind)
        };
        self.wait_for(is_it, kind, limit)
    }

    /// Sends `command` and returns its response's `data`.
    fn request(&mut self, command: &str) -> String {
        self.command(command, "");
        let is_it = |m: &serde_json::Value| {
            m.get("response").and_then(|e| e.as_bool()) == Some(true) && m.get("token").and_then(|t| t.as_str()) == Some(command)
        };
        let response = self.wait_for(is_it, command, Duration::from_secs(5));
        response.get("data").and_then(|d| d.as_str()).unwrap_or_default().to_owned()
    }

    /// Waits until registered (baresip registers at start, possibly before the control
    /// connection is up, so its REGISTER_OK event may have been missed: ask instead).
    fn wait_registered(&mut self, limit: Duration) {
        let deadline = Instant::now() + limit;
        loop {
            let info = self.request("reginfo");
            if info.contains("200 OK") || info.contains("OK") && !info.contains("ERR") {
                return;
            }
            assert!(Instant::now() < deadline, "{} did not register within {limit:?}: {info}", self.name);
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// The first message (kept or new) that `matches`, removed from those kept.
    fn wait_for(&mut self, matches: impl Fn(&serde_json::Value) -> bool, what: &str, limit: Duration) -> serde_json::Value {
        let deadline = Instant::now() + limit;
        loop {
            while let Some(message) = self.next_message() {
                self.events.push(message);
            }
            if let Some(i) = self.events.iter().position(&matches) {
                return self.events.remove(i);
            }
            assert!(
                Instant::now() < deadline,
                "{}: no {what} within {limit:?}; messages {:?}; log: {}",
                self.name,
                self.events,
                read(&self.dir.join("baresip.log"))
            );
            let mut chunk = [0u8; 4096];
            match self.ctrl.read(&mut chunk) {
                Ok(0) => panic!("{}: baresip closed its control connection; log: {}", self.name, read(&self.dir.join("baresip.log"))),
                Ok(n) => self.buffer.extend_from_slice(&chunk[..n]),
                Err(_) => {}
            }
        }
    }

    /// The next complete netstring in the buffer, parsed.
    fn next_message(&mut self) -> Option<serde_json::Value> {
        let colon = self.buffer.iter().position(|&b| b == b':')?;
        let len: usize = std::str::from_utf8(&self.buffer[..colon]).ok()?.parse().ok()?;
        if self.buffer.len() < colon + 1 + len + 1 {
            return None;
        }
        let body = self.buffer[colon + 1..colon + 1 + len].to_vec();
        self.buffer.drain(..colon + 1 + len + 1);
        serde_json::from_slice(&body).ok()
    }

    /// The WAV file of audio this phone decoded from the far end.
    fn decoded_wav(&self) -> Option<PathBuf> {
        // One file per decoder baresip started (a renegotiated stream may start another): the
        // largest is the call's audio.
        std::fs::read_dir(&self.dir)
            .ok()?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("dump-") && n.ends_with("-dec.wav")))
            .max_by_key(|p| std::fs::metadata(p).map_or(0, |m| m.len()))
    }
}

/// Waits until both phones are registered, then alice calls bob (who answers automatically)
/// and both see the call established.
fn registered_call(alice: &mut Phone, bob: &mut Phone) {
    alice.wait_registered(Duration::from_secs(10));
    bob.wait_registered(Duration::from_secs(10));
    alice.command("dial", "sip:bob@sip.test");
    bob.wait_event("CALL_ESTABLISHED", Duration::from_secs(10));
    alice.wait_event("CALL_ESTABLISHED", Duration::from_secs(10));
}

/// A control plane's configuration in `dir`: SIP on UDP and TCP `127.0.0.1:sip_port`, the media
/// plane's gRPC on `127.0.0.1:grpc_port`, its store in `dir`.
fn write_config(dir: &Path, sip_port: u16, grpc_port: u16) -> PathBuf {
    let config = dir.join("cp.toml");
    std::fs::write(
        &config,
        format!(
            "[sip]\nlisten = [\"udp:127.0.0.1:{sip_port}\", \"tcp:127.0.0.1:{sip_port}\"]\ndomains = [\"sip.test\"]\n\
             [media]\ngrpc = \"http://127.0.0.1:{grpc_port}\"\n[store]\npath = \"{}\"\n",
            dir.join("cp.db").display()
        ),
    )
    .expect("write config");
    config
}

/// Adds alice and bob (password `secret`, domain sip.test) to the store of `config`.
fn add_phones(config: &Path) {
    add_users(config, &["alice", "bob"]);
}

fn add_users(config: &Path, users: &[&str]) {
    common::add_subscribers(config, users);
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

/// Starts the media plane with `args`, its log to dir/mp.log.
fn start_media_plane(dir: &Path, args: &[&str]) -> Proc {
    Proc {
        child: Command::new(media_plane_bin())
            .args(args)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("mp.log")).expect("log"))
            .spawn()
            .expect("start media-plane"),
        name: "media-plane",
    }
}

/// Asserts each phone decoded the far end's tone (`far_hz`), skipping the first half second
/// (set-up, jitter buffer fill).
fn assert_hears(phones: [(&Phone, u32); 2]) {
    for (phone, far_hz) in phones {
        let wav = phone.decoded_wav().unwrap_or_else(|| panic!("{}: no decoded-audio file in {}", phone.name, phone.dir.display()));
        let (rate, samples) = wav_mono(&wav);
        let second = rate as usize;
        assert!(samples.len() >= 2 * second, "{}: only {} samples at {rate} Hz decoded", phone.name, samples.len());
        let heard = dominant_hz(rate, &samples[second / 2..]);
        assert!(heard.abs_diff(far_hz) <= 20, "{} heard {heard} Hz, expected the far end's {far_hz} Hz", phone.name);
    }
}

/// A 16-bit PCM WAV file: its sample rate and its samples mixed down to mono.
fn wav_mono(path: &Path) -> (u32, Vec<i16>) {
    let bytes = std::fs::read(path).expect("read wav");
    let (mut rate, mut channels) = (8000u32, 1usize);
    let mut at = 12;
    while at + 8 <= bytes.len() {
        let id = &bytes[at..at + 4];
        let len = u32::from_le_bytes([bytes[at + 4], bytes[at + 5], bytes[at + 6], bytes[at + 7]]) as usize;
        let start = at + 8;
        if id == b"fmt " && start + 8 <= bytes.len() {
            channels = usize::from(u16::from_le_bytes([bytes[start + 2], bytes[start + 3]])).max(1);
            rate = u32::from_le_bytes([bytes[start + 4], bytes[start + 5], bytes[start + 6], bytes[start + 7]]);
        }
        if id == b"data" {
            let end = (start + len).min(bytes.len());
            let samples: Vec<i16> = bytes[start..end].chunks_exact(2).map(|c| i16::from_le_bytes([c[0], c[1]])).collect();
            let mono = samples
                .chunks_exact(channels)
                .map(|frame| (frame.iter().map(|&x| i32::from(x)).sum::<i32>() / channels as i32) as i16)
                .collect();
            return (rate, mono);
        }
        at = start + len + (len & 1);
    }
    (rate, Vec::new())
}

/// The strongest frequency of `samples` at `rate` among 100..=3000 Hz in 10 Hz steps (Goertzel).
fn dominant_hz(rate: u32, samples: &[i16]) -> u32 {
    let power = |hz: u32| {
        let w = 2.0 * std::f64::consts::PI * f64::from(hz) / f64::from(rate);
        let (mut s1, mut s2) = (0.0f64, 0.0f64);
        for &x in samples {
            let s = f64::from(x) + 2.0 * w.cos() * s1 - s2;
            s2 = s1;
            s1 = s;
        }
        s1 * s1 + s2 * s2 - 2.0 * w.cos() * s1 * s2
    };
    (10..=300).map(|i| i * 10).max_by(|&a, &b| power(a).total_cmp(&power(b))).unwrap_or(0)
}

/// The media plane's per-leg counters: (leg id, packets in, packets out), and the legs as text.
fn leg_packets(grpc: &'static str) -> Vec<(u64, u64, u64)> {
    leg_stats(grpc).iter().map(|l| (l.leg_id, l.rtp_packets_in, l.rtp_packets_out)).collect()
}

fn leg_stats(grpc: &'static str) -> Vec<v1::LegStats> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    rt.block_on(async {
        let mut client = v1::media_plane_client::MediaPlaneClient::connect(grpc).await.expect("connect to the media plane");
        let stats = client.get_stats(v1::GetStatsRequest { leg_ids: vec![], totals_only: false }).await.expect("GetStats").into_inner();
        stats.legs
    })
}

#[test]
fn baresip_phones_register_and_talk_through_both_planes_with_the_shipped_defaults() {
    if !baresip_available() {
        return;
    }
    let dir = temp_dir("phones");
    let config = dir.join("cp.toml");
    std::fs::write(&config, format!("[sip]\ndomains = [\"sip.test\"]\n[store]\npath = \"{}\"\n", dir.join("cp.db").display()))
        .expect("write config");
    add_phones(&config);
    let _media = start_media_plane(&dir, &[]);
    let mut cp = start_control_plane(&dir, &config);
    let cp_log = || read(&dir.join("cp.log"));
    wait_listening(SIP, &dir);

    let server = format!("sip:{SIP}");
    let mut alice = Phone::start(&dir, "alice", 25_060, 25_090, "25100-25199", 440, &server, None, "");
    let mut bob = Phone::start(&dir, "bob", 25_070, 25_091, "25200-25299", 1000, &server, None, "");
    registered_call(&mut alice, &mut bob);
    std::thread::sleep(Duration::from_secs(3));

    let legs = leg_stats(GRPC);
    assert_eq!(legs.len(), 2, "one leg facing each phone: {legs:?}; log: {}", cp_log());
    for leg in &legs {
        // 50 packets/s each way; allow for call set-up within the 3 s.
        assert!(leg.rtp_packets_in >= 100 && leg.rtp_packets_out >= 100, "{leg:?}");
    }

    alice.command("hangup", "");
    bob.wait_event("CALL_CLOSED", Duration::from_secs(10));
    alice.wait_event("CALL_CLOSED", Duration::from_secs(10));

    // Each phone decoded the other's tone, relayed by the media plane.
    assert_hears([(&alice, 1000), (&bob, 440)]);

    let deadline = Instant::now() + Duration::from_secs(5);
    while !leg_packets(GRPC).is_empty() {
        assert!(Instant::now() < deadline, "legs left in the media plane after the call: {:?}", leg_packets(GRPC));
        std::thread::sleep(Duration::from_millis(100));
    }
    terminate(&mut cp);
    let counters = read(&dir.join("cp.out"));
    for expected in [
        "\"registrations\":2",
        "\"calls_answered\":1",
        "\"calls_completed\":1",
        "\"media_allocations\":1,\"media_allocation_failures\":0,\"media_releases\":1",
        "\"auth_failures\":0",
    ] {
        assert!(counters.contains(expected), "{expected} not in {counters}");
    }
    drop((alice, bob));
    let _ = std::fs::remove_dir_all(&dir);
}

/// Waits until the control plane accepts TCP connections on `addr` (its listeners are bound
/// together, UDP first). A phone whose first REGISTER is refused (ICMP or RST) waits long before
/// retrying, so the phones start only then.
fn wait_listening(addr: &str, dir: &Path) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect_timeout(&addr.parse().expect("addr"), Duration::from_millis(200)).is_err() {
        assert!(Instant::now() < deadline, "control plane not listening on {addr}: {}", read(&dir.join("cp.log")));
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn baresip_phones_register_and_call_over_tls() {
    if !baresip_available() {
        return;
    }
    const TLS_GRPC: &str = "http://127.0.0.1:25390";
    let dir = temp_dir("phones-tls");
    let (cert, key) = self_signed(&dir);
    let config = dir.join("cp.toml");
    std::fs::write(
        &config,
        format!(
            "[sip]\nlisten = [\"udp:127.0.0.1:25360\", \"tls:127.0.0.1:25361\"]\ndomains = [\"sip.test\"]\n\
             [sip.tls]\ncertificate = \"{}\"\nkey = \"{}\"\n[media]\ngrpc = \"{TLS_GRPC}\"\n[store]\npath = \"{}\"\n",
            cert.display(),
            key.display(),
            dir.join("cp.db").display()
        ),
    )
    .expect("write config");
    add_phones(&config);
    let _media = start_media_plane(&dir, &["--grpc-listen", "127.0.0.1:25390", "--ports", "25400-25499", "--no-pin"]);
    let mut cp = start_control_plane(&dir, &config);
    wait_listening("127.0.0.1:25361", &dir);
    let server = "sip:127.0.0.1:25361;transport=tls";
    let mut alice = Phone::start(&dir, "alice", 25_560, 25_590, "25600-25699", 440, server, Some(&cert), "");
    let mut bob = Phone::start(&dir, "bob", 25_570, 25_591, "25700-25799", 1000, server, Some(&cert), "");
    registered_call(&mut alice, &mut bob);
    std::thread::sleep(Duration::from_secs(2));
    let legs = leg_stats(TLS_GRPC);
    assert_eq!(legs.len(), 2, "{legs:?}; log: {}", read(&dir.join("cp.log")));
    for leg in &legs {
        assert!(leg.rtp_packets_in >= 50 && leg.rtp_packets_out >= 50, "{leg:?}");
    }
    alice.command("hangup", "");
    bob.wait_event("CALL_CLOSED", Duration::from_secs(10));
    terminate(&mut cp);
    let counters = read(&dir.join("cp.out"));
    assert!(counters.contains("\"calls_completed\":1"), "{counters}");
    drop((alice, bob));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn baresip_outbound_registration_ends_when_its_tcp_connection_closes() {
    if !baresip_available() {
        return;
    }
    let dir = temp_dir("phones-outbound");
    // No media plane: the only call here must be refused before media is set up.
    let config = write_config(&dir, 25860, 25890);
    add_phones(&config);
    let mut cp = start_control_plane(&dir, &config);
    wait_listening("127.0.0.1:25860", &dir);
    let server = "sip:127.0.0.1:25860;transport=tcp";
    let mut alice = Phone::start(&dir, "alice", 25_870, 25_891, "25900-25949", 440, server, None, "");
    // bob's phone uses SIP outbound (RFC 5626): +sip.instance and reg-id on a TCP flow.
    let mut bob = Phone::start(&dir, "bob", 25_880, 25_892, "25950-25999", 1000, server, None, ";sipnat=outbound");
    alice.wait_registered(Duration::from_secs(10));
    bob.wait_registered(Duration::from_secs(10));
    drop(bob);

    // bob's connection closed with his phone: his binding is gone, so alice's call is refused
    // at once (480) instead of being sent to a dead address until the transaction times out.
    std::thread::sleep(Duration::from_millis(500));
    let started = Instant::now();
    alice.command("dial", "sip:bob@sip.test");
    let closed = alice.wait_event("CALL_CLOSED", Duration::from_secs(10));
    let reason = closed.get("param").and_then(|p| p.as_str()).unwrap_or_default().to_owned();
    assert!(reason.contains("480"), "alice's call to a phone that went away: {closed}");
    assert!(started.elapsed() < Duration::from_secs(5), "refused only after {:?}", started.elapsed());
    terminate(&mut cp);
    let counters = read(&dir.join("cp.out"));
    assert!(counters.contains("\"outbound_flows_closed\":1"), "{counters}; log: {}", read(&dir.join("cp.log")));
    assert!(counters.contains("\"registrations\":2"), "{counters}");
    drop(alice);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn baresip_phones_without_a_common_codec_or_transport_talk_through_the_media_plane() {
    if !baresip_available() {
        return;
    }
    // alice: PCMU and SDES-SRTP only. bob: Opus over plain RTP only. The control plane's policy
    // has the media plane add Opus to offers and end SRTP towards callees.
    const MIX_GRPC: &str = "http://127.0.0.1:26090";
    let dir = temp_dir("phones-mix");
    let config = dir.join("cp.toml");
    std::fs::write(
        &config,
        format!(
            "[sip]\nlisten = [\"udp:127.0.0.1:26060\", \"tcp:127.0.0.1:26060\"]\ndomains = [\"sip.test\"]\n\
             [media]\ngrpc = \"{MIX_GRPC}\"\ntranscode = [\"opus\"]\ntransport = \"RTP/AVP\"\n[store]\npath = \"{}\"\n",
            dir.join("cp.db").display()
        ),
    )
    .expect("write config");
    add_phones(&config);
    let _media = start_media_plane(&dir, &["--grpc-listen", "127.0.0.1:26090", "--ports", "26400-26499", "--no-pin"]);
    let mut cp = start_control_plane(&dir, &config);
    wait_listening("127.0.0.1:26060", &dir);
    let server = "sip:127.0.0.1:26060";
    let mut alice = Phone::start(&dir, "alice", 26_160, 26_190, "26600-26699", 440, server, None, ";audio_codecs=PCMU;mediaenc=srtp-mand");
    let mut bob = Phone::start(&dir, "bob", 26_170, 26_191, "26700-26799", 1000, server, None, ";audio_codecs=opus/48000/2");
    registered_call(&mut alice, &mut bob);
    std::thread::sleep(Duration::from_secs(3));

    let legs = leg_stats(MIX_GRPC);
    assert_eq!(legs.len(), 2, "{legs:?}; log: {}", read(&dir.join("cp.log")));
    let codecs: Vec<String> = legs.iter().filter_map(|l| l.codec.as_ref().map(|c| c.name.clone())).collect();
    assert!(codecs.contains(&"PCMU".to_owned()) && codecs.contains(&"opus".to_owned()), "a PCMU leg and an Opus leg: {legs:?}");
    for leg in &legs {
        assert!(leg.rtp_packets_in >= 100 && leg.rtp_packets_out >= 100, "{leg:?}");
        let drops = leg.drops.unwrap_or_default();
        assert_eq!((drops.srtp_auth, drops.srtp_replay, drops.undecodable), (0, 0, 0), "{leg:?}");
    }
    alice.command("hangup", "");
    bob.wait_event("CALL_CLOSED", Duration::from_secs(10));
    alice.wait_event("CALL_CLOSED", Duration::from_secs(10));
    // Each phone decoded the other's tone: alice's SRTP was ended, both ways transcoded.
    assert_hears([(&alice, 1000), (&bob, 440)]);
    terminate(&mut cp);
    let counters = read(&dir.join("cp.out"));
    assert!(counters.contains("\"calls_completed\":1"), "{counters}");
    drop((alice, bob));
    let _ = std::fs::remove_dir_all(&dir);
}

/// G.711 μ-law to linear (ITU-T G.711).
fn ulaw(byte: u8) -> i16 {
    let b = !byte;
    let exponent = (b >> 4) & 0x07;
    let magnitude = ((i32::from(b & 0x0F) << 3) + 0x84) << exponent;
    (if b & 0x80 != 0 { 0x84 - magnitude } else { magnitude - 0x84 }) as i16
}

/// The RMS of `samples` and the share of their energy at `hz` (Goertzel).
fn tone_share(samples: &[i16], hz: f64) -> (f64, f64) {
    let w = 2.0 * std::f64::consts::PI * hz / 8000.0;
    let (mut s1, mut s2, mut energy) = (0.0f64, 0.0f64, 0.0f64);
    for &x in samples {
        let x = f64::from(x);
        energy += x * x;
        let s = x + 2.0 * w.cos() * s1 - s2;
        s2 = s1;
        s1 = s;
    }
    let n = samples.len().max(1) as f64;
    let power = (s1 * s1 + s2 * s2 - 2.0 * w.cos() * s1 * s2) * 2.0 / n;
    ((energy / n).sqrt(), if energy > 0.0 { power / energy } else { 0.0 })
}

#[test]
fn a_phone_on_hold_hears_music_in_the_same_rtp_stream_and_the_caller_again_after_resume() {
    if !baresip_available() {
        return;
    }
    let prompts = common::repo_root().join("prompts");
    if !prompts.join("music-on-hold.wav").exists() {
        assert!(std::env::var("REQUIRE_PROMPTS").as_deref() != Ok("1"), "REQUIRE_PROMPTS=1 but prompts/ has no music-on-hold.wav");
        eprintln!("SKIP: prompts/music-on-hold.wav is missing (bash scripts/make-prompts.sh)");
        return;
    }
    if Command::new("sipp").arg("-v").stdout(Stdio::null()).stderr(Stdio::null()).status().is_err() {
        assert!(std::env::var("REQUIRE_SIPP").as_deref() != Ok("1"), "REQUIRE_SIPP=1 but sipp is not installed");
        eprintln!("SKIP: sipp is not installed");
        return;
    }
    let dir = temp_dir("phones-hold");
    let config = write_config(&dir, 26960, 26990);
    add_phones(&config);
    let prompt_dir = prompts.to_str().expect("utf8").to_owned();
    let _media =
        start_media_plane(&dir, &["--grpc-listen", "127.0.0.1:26990", "--ports", "27200-27299", "--no-pin", "--prompt-dir", &prompt_dir]);
    let mut cp = start_control_plane(&dir, &config);
    wait_listening("127.0.0.1:26960", &dir);
    // bob is sipp; what the media plane sends him arrives on this socket.
    let media = std::net::UdpSocket::bind("127.0.0.1:27500").expect("bind bob's media port");
    media.set_read_timeout(Some(Duration::from_millis(50))).expect("timeout");
    let sipp = |args: &[&str]| {
        let mut command = Command::new("sipp");
        command
            .arg("127.0.0.1:26960")
            .args(args)
            .args(["-nostdin", "-timeout", "60s", "-timeout_error"])
            .current_dir(common::repo_root().join("scripts/sipp"))
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        command
    };
    let registered =
        sipp(&["-sf", "register.xml", "-inf", "csv/bob.csv", "-auth_uri", "sip.test", "-p", "27510", "-m", "1"]).status().expect("sipp");
    assert!(registered.success(), "bob's registration");
    let mut bob = Proc {
        child: sipp(&["-sf", "uas-answer-hold.xml", "-p", "27510", "-mp", "27520", "-set", "rtp_port", "27500", "-m", "1"])
            .spawn()
            .expect("sipp"),
        name: "sipp",
    };
    let mut alice = Phone::start(&dir, "alice", 27_360, 27_390, "27400-27449", 440, "sip:127.0.0.1:26960", None, "");
    alice.wait_registered(Duration::from_secs(10));
    alice.command("dial", "sip:bob@sip.test");
    alice.wait_event("CALL_ESTABLISHED", Duration::from_secs(10));

    // (arrival, SSRC, sequence number, samples) of what bob gets, for `seconds`.
    let listen = |seconds: u64| {
        let mut got = Vec::new();
        let until = Instant::now() + Duration::from_secs(seconds);
        let mut buf = [0u8; 2048];
        while Instant::now() < until {
            if let Ok((n, _)) = media.recv_from(&mut buf) {
                if n > 12 {
                    let ssrc = u32::from_be_bytes([buf[8], buf[9], buf[10], buf[11]]);
                    let seq = u16::from_be_bytes([buf[2], buf[3]]);
                    got.push((ssrc, seq, buf[12..n].iter().map(|&b| ulaw(b)).collect::<Vec<i16>>()));
                }
            }
        }
        got
    };
    let before = listen(2);
    alice.command("hold", "");
    let holding = listen(1);
    let on_hold = listen(3);
    alice.command("resume", "");
    let resuming = listen(1);
    let after = listen(2);
    alice.command("hangup", "");
    let bob_done = common::stack::wait_bounded(&mut bob.child, Duration::from_secs(20));
    let log = || read(&dir.join("cp.log"));
    assert!(bob_done.success(), "bob's scenario (hold, resume, BYE); log: {}", log());

    let audio = |packets: &[(u32, u16, Vec<i16>)]| packets.iter().flat_map(|p| p.2.iter().copied()).collect::<Vec<i16>>();
    let (_, share) = tone_share(&audio(&before), 440.0);
    assert!(before.len() >= 80 && share > 0.5, "before the hold bob gets alice's tone: {} packets, share {share:.2}", before.len());
    let (rms, share) = tone_share(&audio(&on_hold), 440.0);
    assert!(on_hold.len() >= 120, "music flows while held: {} packets in 3 s; log: {}", on_hold.len(), log());
    assert!(rms > 300.0 && share < 0.2, "on hold bob hears music (rms {rms:.0}), not alice (share {share:.2})");
    let (_, share) = tone_share(&audio(&after), 440.0);
    assert!(after.len() >= 80 && share > 0.5, "after resume bob hears alice again: {} packets, share {share:.2}", after.len());
    // One stream throughout (RFC 3550): the SSRC never changes and sequence numbers only step.
    let all: Vec<&(u32, u16, Vec<i16>)> = before.iter().chain(&holding).chain(&on_hold).chain(&resuming).chain(&after).collect();
    assert!(all.iter().all(|p| p.0 == all[0].0), "the SSRC changed");
    let jumps = all.windows(2).filter(|w| w[1].1.wrapping_sub(w[0].1) != 1).count();
    assert!(jumps <= 2, "{jumps} breaks in the sequence numbers");
    terminate(&mut cp);
    drop(alice);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_baresip_phone_transfers_its_caller_to_a_third_phone_and_the_two_talk() {
    if !baresip_available() {
        return;
    }
    let dir = temp_dir("phones-transfer");
    let config = write_config(&dir, 28060, 28090);
    add_users(&config, &["alice", "bob", "carol"]);
    let _media = start_media_plane(&dir, &["--grpc-listen", "127.0.0.1:28090", "--ports", "28100-28199", "--no-pin"]);
    let mut cp = start_control_plane(&dir, &config);
    wait_listening("127.0.0.1:28060", &dir);
    let server = "sip:127.0.0.1:28060";
    let mut alice = Phone::start(&dir, "alice", 28_260, 28_290, "28300-28349", 440, server, None, "");
    let mut bob = Phone::start(&dir, "bob", 28_360, 28_391, "28400-28449", 1000, server, None, "");
    let mut carol = Phone::start(&dir, "carol", 28_460, 28_492, "28500-28549", 700, server, None, "");
    carol.wait_registered(Duration::from_secs(10));
    registered_call(&mut alice, &mut bob);
    std::thread::sleep(Duration::from_secs(1));
    // Bob transfers alice to carol (REFER, RFC 5359 §2.4): the control plane calls carol,
    // re-INVITEs alice with carol's media and lets bob go.
    bob.command("transfer", "sip:carol@sip.test");
    carol.wait_event("CALL_ESTABLISHED", Duration::from_secs(10));
    bob.wait_event("CALL_CLOSED", Duration::from_secs(10));
    std::thread::sleep(Duration::from_secs(3));
    let legs = leg_stats("http://127.0.0.1:28090");
    assert_eq!(legs.len(), 2, "alice's and carol's legs, bob's gone: {legs:?}; log: {}", read(&dir.join("cp.log")));
    for leg in &legs {
        assert!(leg.rtp_packets_in >= 50 && leg.rtp_packets_out >= 50, "audio both ways after the transfer: {leg:?}");
    }
    alice.command("hangup", "");
    carol.wait_event("CALL_CLOSED", Duration::from_secs(10));
    // Carol heard only alice; alice heard bob, then carol.
    // (The last two seconds of each: the first moments are alice's re-INVITE's.)
    let (rate, samples) = wav_mono(&carol.decoded_wav().expect("carol's decoded audio"));
    let last = &samples[samples.len().saturating_sub(2 * rate as usize)..];
    let heard = dominant_hz(rate, last);
    assert!(heard.abs_diff(440) <= 20, "carol heard {heard} Hz, not alice's 440 Hz ({} samples); legs {legs:#?}", samples.len());
    let (rate, samples) = wav_mono(&alice.decoded_wav().expect("alice's decoded audio"));
    let last = &samples[samples.len().saturating_sub(2 * rate as usize)..];
    let heard = dominant_hz(rate, last);
    assert!(heard.abs_diff(700) <= 20, "at the end alice heard {heard} Hz, not carol's 700 Hz");
    let deadline = Instant::now() + Duration::from_secs(5);
    while !leg_packets("http://127.0.0.1:28090").is_empty() {
        assert!(Instant::now() < deadline, "legs left in the media plane after the call");
        std::thread::sleep(Duration::from_millis(100));
    }
    terminate(&mut cp);
    drop((alice, bob, carol));
    let _ = std::fs::remove_dir_all(&dir);
}
