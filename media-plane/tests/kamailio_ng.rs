//! Kamailio 5.6 (Debian) with its rtpengine module pointed at the media plane's ng listener
//! (`scripts/kamailio/ng-proxy.cfg`): sipp calls through it, the media plane anchors and relays
//! the RTP both ways, and every call's legs are gone after its BYE.
//!
//! Needs kamailio and sipp: skips with a message without them, unless `REQUIRE_KAMAILIO=1` /
//! `REQUIRE_SIPP=1` (the README's test command), in which case it fails.

use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use media_codecs::signal::tone_power;
use media_codecs::{CodecKind, CodecParams};

mod common;
use common::*;

const SLOT_KAMAILIO_RELAY: u16 = 32;
const SLOT_KAMAILIO_TRANSCODE: u16 = 33;

fn available(tool: &str, arg: &str, require: &str, install: &str) -> bool {
    let found = Command::new(tool).arg(arg).stdout(Stdio::null()).stderr(Stdio::null()).status().is_ok();
    if !found {
        assert!(std::env::var(require).as_deref() != Ok("1"), "{require}=1 but {tool} is not installed");
        eprintln!("SKIP: {tool} is not installed ({install}, or bash scripts/setup.sh)");
    }
    found
}

fn peers_available() -> bool {
    available("kamailio", "-v", "REQUIRE_KAMAILIO", "apt-get install kamailio")
        && available("sipp", "-v", "REQUIRE_SIPP", "apt-get install sip-tester")
}

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("workspace root").to_path_buf()
}

/// A child process in a process group of its own, the whole group killed (and the child reaped)
/// on drop: Kamailio forks workers that killing its main process alone would orphan.
struct Proc(Child);

impl Proc {
    fn spawn(cmd: &mut Command) -> Self {
        use std::os::unix::process::CommandExt;
        Self(cmd.process_group(0).spawn().unwrap_or_else(|e| panic!("start {cmd:?}: {e}")))
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = Command::new("kill").args(["-KILL", "--", &format!("-{}", self.0.id())]).status();
        let _ = self.0.wait();
    }
}

/// Waits at most `limit` for `child` to exit; its success.
fn wait_bounded(child: &mut Child, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(s) = child.try_wait().expect("try_wait") {
            return s.success();
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Kamailio with the ng proxy config, relaying INVITEs to `callee`, once its rtpengine module has
/// found the media plane (it pings the ng socket at start).
fn start_kamailio(dir: &Path, sip: SocketAddr, ng: SocketAddr, callee: SocketAddr, flags: &str) -> Proc {
    let log = dir.join("kamailio.log");
    let mut k = Proc::spawn(
        Command::new("kamailio")
            .args(["-f", repo_root().join("scripts/kamailio/ng-proxy.cfg").to_str().expect("utf8"), "-DD", "-E", "-m", "32", "-M", "8"])
            .args(["-Y", dir.to_str().expect("utf8"), "-P", dir.join("kamailio.pid").to_str().expect("utf8")])
            .arg("-A")
            .arg(format!("LISTEN_UDP=udp:{sip}"))
            .arg("-A")
            .arg(format!("RTPENGINE_SOCK=\"udp:{ng}\""))
            .arg("-A")
            .arg(format!("CALLEE=\"sip:{callee}\""))
            .arg("-A")
            .arg(format!("RTPE_FLAGS=\"{flags}\""))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log")),
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if text.contains("found, support for it enabled") {
            return k;
        }
        assert!(k.0.try_wait().expect("wait").is_none(), "kamailio exited: {text}");
        assert!(Instant::now() < deadline, "kamailio's rtpengine module did not find the media plane at {ng} within 10 s: {text}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A UDP port free on loopback now.
fn free_port() -> SocketAddr {
    local(&udp())
}

/// sipp from scripts/sipp (the scenarios read pcmu-1s.raw relative to it).
fn sipp(target: SocketAddr, args: &[&str], dir: &Path, name: &str) -> Proc {
    Proc::spawn(
        Command::new("sipp")
            .current_dir(repo_root().join("scripts/sipp"))
            .arg(target.to_string())
            .args(["-i", "127.0.0.1", "-nostdin", "-trace_err", "-error_file"])
            .arg(dir.join(format!("{name}.err")))
            .args(args)
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(dir.join(format!("{name}.out"))).expect("log"))
            .stderr(Stdio::null()),
    )
}

fn read(path: PathBuf) -> String {
    std::fs::read_to_string(&path).unwrap_or_else(|e| format!("({}: {e})", path.display()))
}

fn test_dir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("mp-kamailio-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("test dir");
    dir
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kamailio_calls_through_the_media_plane_relay_rtp_both_ways_and_leave_no_leg() {
    if !peers_available() {
        return;
    }
    let dir = test_dir("relay");
    let ng = free_port();
    let (mut mp, c) = MediaPlane::start_with(SLOT_KAMAILIO_RELAY, &["--ng-listen", &ng.to_string()]).await;
    let (sip, uas_at) = (free_port(), free_port());
    let _kamailio = start_kamailio(&dir, sip, ng, uas_at, "replace-origin replace-session-connection");

    // Three calls at once, each streaming RTP both ways for 3 s.
    let port = uas_at.port().to_string();
    let mut uas = sipp(sip, &["-sf", "uas-answer-stream.xml", "-p", &port, "-m", "3"], &dir, "uas");
    std::thread::sleep(Duration::from_millis(300));
    let mut uac = sipp(
        sip,
        &["-sf", "uac-call-noauth.xml", "-inf", "csv/alice-calls-bob.csv", "-m", "3", "-l", "3", "-r", "10", "-d", "3000"],
        &dir,
        "uac",
    );

    // Mid-call: six legs (two per call), each receiving and sending.
    let what = format!("RTP both ways on six legs (logs in {})", dir.display());
    eventually(&what, Duration::from_secs(8), || {
        let mut c = c.clone();
        async move {
            let legs = stats(&mut c).await.legs;
            let both_ways = legs.len() == 6 && legs.iter().all(|l| l.rtp_packets_in > 10 && l.rtp_packets_out > 10);
            if both_ways {
                Ok(())
            } else {
                Err(format!("{legs:?}"))
            }
        }
    })
    .await;

    assert!(
        wait_bounded(&mut uac.0, Duration::from_secs(30)),
        "sipp caller failed: {}\n{}",
        read(dir.join("uac.out")),
        read(dir.join("uac.err"))
    );
    assert!(wait_bounded(&mut uas.0, Duration::from_secs(10)), "sipp callee failed: {}", read(dir.join("uas.out")));
    no_legs_left(&c, &dir).await;
    mp.assert_running();
    let _ = std::fs::remove_dir_all(&dir);
}

/// Waits (bounded) until the media plane has no leg: every call's BYE deleted its legs.
async fn no_legs_left(c: &Client, dir: &Path) {
    let what = format!("no leg left after the BYEs (logs in {})", dir.display());
    eventually(&what, Duration::from_secs(5), || {
        let mut c = c.clone();
        async move {
            let legs = stats(&mut c).await.legs;
            if legs.is_empty() {
                Ok(())
            } else {
                Err(format!("{legs:?}"))
            }
        }
    })
    .await;
}

/// One header's value (first occurrence, case-insensitive name).
fn header<'a>(msg: &'a str, name: &str) -> &'a str {
    msg.lines()
        .find_map(|l| l.split_once(':').filter(|(n, _)| n.trim().eq_ignore_ascii_case(name)).map(|(_, v)| v.trim()))
        .unwrap_or_else(|| panic!("no {name} in {msg}"))
}

/// The headers a response copies from its request: every Via and Record-Route, From, To (with
/// `to_tag` added if it has none), Call-ID, CSeq.
fn response(req: &str, status: &str, to_tag: &str, extra: &str, body: &str) -> String {
    let mut out = format!("SIP/2.0 {status}\r\n");
    for l in req.lines() {
        let name = l.split(':').next().unwrap_or_default().trim().to_ascii_lowercase();
        if matches!(name.as_str(), "via" | "v" | "record-route" | "from" | "f" | "call-id" | "i" | "cseq") {
            out.push_str(l.trim_end());
            out.push_str("\r\n");
        }
    }
    let to = header(req, "To");
    if to.contains(";tag=") {
        out.push_str(&format!("To: {to}\r\n"));
    } else {
        out.push_str(&format!("To: {to};tag={to_tag}\r\n"));
    }
    out.push_str(extra);
    out.push_str(&format!("Content-Length: {}\r\n\r\n{body}", body.len()));
    out
}

/// Receives SIP requests on `sock` until one of `method` comes.
fn next_request(sock: &UdpSocket, method: &str) -> (String, SocketAddr) {
    let mut buf = vec![0u8; 65_535];
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        assert!(Instant::now() < deadline, "no {method} within 10 s");
        let Ok((n, from)) = sock.recv_from(&mut buf) else { continue };
        let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
        if msg.starts_with(&format!("{method} ")) {
            return (msg, from);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kamailios_codec_flags_transcode_a_pcmu_caller_to_an_opus_only_callee() {
    if !peers_available() {
        return;
    }
    let dir = test_dir("transcode");
    let ng = free_port();
    let (mut mp, mut c) = MediaPlane::start_with(SLOT_KAMAILIO_TRANSCODE, &["--ng-listen", &ng.to_string()]).await;
    // The callee: a SIP UAS here, taking Opus only.
    let (callee_sip, callee_rtp) = (udp(), udp());
    let sip = free_port();
    let flags = "replace-origin replace-session-connection codec-mask=PCMU codec-transcode=opus";
    let _kamailio = start_kamailio(&dir, sip, ng, local(&callee_sip), flags);
    let mut uac = sipp(sip, &["-sf", "uac-call-noauth.xml", "-inf", "csv/alice-calls-bob.csv", "-m", "1", "-d", "3000"], &dir, "uac");

    let (invite, proxy) = next_request(&callee_sip, "INVITE");
    let offer = invite.split("\r\n\r\n").nth(1).unwrap_or_default();
    let m = offer.lines().find(|l| l.starts_with("m=audio ")).unwrap_or_else(|| panic!("no m=audio in {invite}"));
    let opus_pt: u8 = offer
        .lines()
        .find_map(|l| l.strip_prefix("a=rtpmap:").filter(|r| r.contains("opus/48000")).and_then(|r| r.split(' ').next()?.parse().ok()))
        .unwrap_or_else(|| panic!("Kamailio's codec-transcode=opus puts Opus in the offer: {offer}"));
    assert!(!m.split(' ').skip(3).any(|pt| pt == "0"), "codec-mask=PCMU hides PCMU from the callee: {m}");
    let to_media_plane: SocketAddr = {
        let ip = offer.lines().find_map(|l| l.strip_prefix("c=IN IP4 ")).expect("c=");
        let port = m.split(' ').nth(1).expect("port");
        format!("{ip}:{port}").parse().expect("address")
    };
    let rtp_at = local(&callee_rtp);
    let answer = format!(
        "v=0\r\no=callee 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio {} RTP/AVP {opus_pt}\r\na=rtpmap:{opus_pt} opus/48000/2\r\n",
        rtp_at.port()
    );
    let contact = format!("Contact: <sip:callee@{}>\r\nContent-Type: application/sdp\r\n", local(&callee_sip));
    callee_sip.send_to(response(&invite, "200 OK", "callee1", &contact, &answer).as_bytes(), proxy).expect("send 200");
    let _ack = next_request(&callee_sip, "ACK");

    // The caller's 440 Hz PCMU reaches the callee as Opus, and the callee's Opus goes back.
    let opus = CodecParams::new(CodecKind::Opus, 48_000);
    let mut dec = media_codecs::decoder(&opus).expect("decoder");
    let mut enc = media_codecs::encoder(&opus).expect("encoder");
    let tone = media_codecs::signal::sine(48_000, 1000.0, 1.0, 8000.0);
    let mut pcm = Vec::new();
    for i in 0..75u16 {
        let (p, _) = recv(&callee_rtp, "transcoded RTP at the callee");
        assert_eq!(p[1] & 0x7f, opus_pt, "the callee gets its Opus");
        dec.decode(&p[12..], &mut pcm).expect("decodes");
        let chunk = &tone[(usize::from(i) % 50) * 960..][..960];
        let mut out = vec![0x80, opus_pt];
        out.extend_from_slice(&i.to_be_bytes());
        out.extend_from_slice(&(u32::from(i) * 960).to_be_bytes());
        out.extend_from_slice(&0x00CA_11EE_u32.to_be_bytes());
        enc.encode(chunk, &mut out).expect("encode");
        callee_rtp.send_to(&out, to_media_plane).expect("send RTP");
    }
    let heard = &pcm[pcm.len() / 3..];
    let (at_440, at_1000) = (tone_power(heard, 48_000, 440.0), tone_power(heard, 48_000, 1000.0));
    assert!(at_440 > 20.0 * at_1000.max(1.0), "the callee hears the caller's 440 Hz: power {at_440:.0} vs {at_1000:.0} at 1 kHz");

    let legs = stats(&mut c).await.legs;
    let codecs: Vec<&str> = legs.iter().filter_map(|l| l.codec.as_ref().map(|c| c.name.as_str())).collect();
    assert!(codecs.contains(&"PCMU") && codecs.contains(&"opus"), "a PCMU leg and an Opus leg: {legs:?}");
    let caller_leg = legs.iter().find(|l| l.codec.as_ref().is_some_and(|c| c.name == "PCMU")).expect("PCMU leg");
    assert!(
        caller_leg.transcoded.as_ref().is_some_and(|t| t.encoded > 20),
        "the callee's Opus is encoded to PCMU for the caller: {caller_leg:?}"
    );

    // The caller hangs up: BYE through Kamailio, answered here; the media plane lets go.
    let (bye, proxy) = next_request(&callee_sip, "BYE");
    callee_sip.send_to(response(&bye, "200 OK", "callee1", "", "").as_bytes(), proxy).expect("send 200 to BYE");
    assert!(
        wait_bounded(&mut uac.0, Duration::from_secs(20)),
        "sipp caller failed: {}\n{}",
        read(dir.join("uac.out")),
        read(dir.join("uac.err"))
    );
    no_legs_left(&c, &dir).await;
    mp.assert_running();
    let _ = std::fs::remove_dir_all(&dir);
}
