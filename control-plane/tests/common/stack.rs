//! A control plane (and a media plane) started for a test, and sipp run against it.

use std::net::{SocketAddr, UdpSocket};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use proto::v1;

use super::{media_plane_bin, repo_root, start_control_plane, temp_dir, terminate, Proc, BIN, IO_TIMEOUT};

pub struct Stack {
    pub cp: Option<Proc>,
    pub _mp: Option<Proc>,
    pub sip: SocketAddr,
    pub grpc: SocketAddr,
    pub dir: PathBuf,
    pub config: PathBuf,
}

impl Stack {
    /// Starts a control plane on SIP port 21000+10·slot (UDP and TCP), with alice, bob, carol
    /// (password `secret`), and a media plane when `media` is set.
    pub fn start(slot: u16, media: bool) -> Stack {
        Stack::start_with(slot, media, "")
    }

    /// [`Stack::start`] with `extra` appended to the configuration file.
    pub fn start_with(slot: u16, media: bool, extra: &str) -> Stack {
        Stack::start_config(slot, media, "", extra)
    }

    /// [`Stack::start_with`], with `sip_extra` lines in the `[sip]` section (e.g. `trusted`).
    pub fn start_config(slot: u16, media: bool, sip_extra: &str, extra: &str) -> Stack {
        let dir = temp_dir(&slot.to_string());
        let sip: SocketAddr = format!("127.0.0.1:{}", 21_000 + slot * 10).parse().expect("addr");
        let grpc: SocketAddr = format!("127.0.0.1:{}", 21_005 + slot * 10).parse().expect("addr");
        let config = dir.join("cp.toml");
        std::fs::write(
            &config,
            format!(
                "[sip]\nlisten = [\"udp:{sip}\", \"tcp:{sip}\"]\ndomains = [\"sip.test\"]\nno_answer_timeout_s = 30\n{sip_extra}\
                 [media]\ngrpc = \"http://{grpc}\"\n\
                 [store]\npath = \"{}\"\n{extra}",
                dir.join("cp.db").display()
            ),
        )
        .expect("write config");
        super::add_subscribers(&config, &["alice", "bob", "carol"]);
        let mp = media.then(|| {
            let first = 22_000 + slot * 100;
            let child = Command::new(media_plane_bin())
                .args(["--grpc-listen", &grpc.to_string(), "--ports", &format!("{first}-{}", first + 99), "--no-pin", "--ng-listen", ""])
                .args(["--prompt-dir", repo_root().join("prompts").to_str().expect("utf8 path")])
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(dir.join("mp.log")).expect("log file"))
                .spawn()
                .expect("start media-plane");
            Proc { child, name: "media-plane" }
        });
        let stack = Stack { cp: Some(start_control_plane(&dir, &config)), _mp: mp, sip, grpc, dir, config };
        stack.wait_ready();
        stack
    }

    pub fn wait_ready(&self) {
        let socket = udp_socket();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            let options = request("OPTIONS", "sip:sip.test", &socket, "ready", 1, "");
            socket.send_to(options.as_bytes(), self.sip).expect("send OPTIONS");
            socket.set_read_timeout(Some(Duration::from_millis(200))).expect("timeout");
            let mut buf = [0u8; 4096];
            if let Ok((n, _)) = socket.recv_from(&mut buf) {
                if String::from_utf8_lossy(&buf[..n]).starts_with("SIP/2.0 200") {
                    return;
                }
            }
        }
        panic!("control-plane did not answer OPTIONS within 10 s; log: {}", self.log());
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("cp.log")).unwrap_or_default()
    }

    /// Stops the control plane with SIGTERM and returns its final counters line.
    pub fn stop(&mut self) -> String {
        if let Some(mut p) = self.cp.take() {
            terminate(&mut p);
        }
        std::fs::read_to_string(self.dir.join("cp.out")).unwrap_or_default()
    }

    /// The media plane's totals: (legs, packets forwarded), summed over cores.
    pub fn media_totals(&self) -> (u32, u64) {
        super::media_totals(&self.grpc.to_string())
    }
}

impl Stack {
    /// Every leg of the media plane: (RTP packets in, RTP packets out).
    pub fn media_legs(&self) -> Vec<(u64, u64)> {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        rt.block_on(async {
            let mut client =
                v1::media_plane_client::MediaPlaneClient::connect(format!("http://{}", self.grpc)).await.expect("connect to media plane");
            let stats = client.get_stats(v1::GetStatsRequest { leg_ids: vec![], totals_only: false }).await.expect("GetStats").into_inner();
            stats.legs.iter().map(|l| (l.rtp_packets_in, l.rtp_packets_out)).collect()
        })
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        self.cp.take();
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

pub fn udp_socket() -> UdpSocket {
    let s = UdpSocket::bind("127.0.0.1:0").expect("bind");
    s.set_read_timeout(Some(IO_TIMEOUT)).expect("timeout");
    s
}

pub fn request(method: &str, uri: &str, socket: &UdpSocket, call_id: &str, cseq: u32, extra: &str) -> String {
    let local = socket.local_addr().expect("local addr");
    format!(
        "{method} {uri} SIP/2.0\r\nVia: SIP/2.0/UDP {local};branch=z9hG4bK{call_id}{cseq};rport\r\n\
         Max-Forwards: 70\r\nFrom: <sip:alice@sip.test>;tag=t{call_id}\r\nTo: <sip:alice@sip.test>\r\n\
         Call-ID: {call_id}\r\nCSeq: {cseq} {method}\r\n{extra}Content-Length: 0\r\n\r\n"
    )
}

/// Sends `message` and returns the first final response.
pub fn exchange(socket: &UdpSocket, to: SocketAddr, message: &str) -> String {
    socket.send_to(message.as_bytes(), to).expect("send");
    let mut buf = vec![0u8; 65_535];
    loop {
        let (n, _) = socket.recv_from(&mut buf).expect("no SIP response within the timeout");
        let text = String::from_utf8_lossy(&buf[..n]).into_owned();
        if !text.starts_with("SIP/2.0 1") {
            return text;
        }
    }
}

pub fn sipp_available() -> bool {
    let found = Command::new("sipp").arg("-v").stdout(Stdio::null()).stderr(Stdio::null()).status().is_ok();
    if !found {
        assert!(std::env::var("REQUIRE_SIPP").as_deref() != Ok("1"), "REQUIRE_SIPP=1 but sipp is not installed");
        eprintln!("SKIP: sipp is not installed (apt-get install sip-tester, or bash scripts/setup.sh)");
    }
    found
}

/// Runs sipp from scripts/sipp against the stack; returns its exit status.
pub fn sipp(stack: &Stack, args: &[&str], limit: Duration) -> std::process::ExitStatus {
    let mut child = spawn_sipp(stack, args);
    wait_bounded(&mut child, limit)
}

pub fn spawn_sipp(stack: &Stack, args: &[&str]) -> Child {
    Command::new("sipp")
        .arg(stack.sip.to_string())
        .args(args)
        .args(["-nostdin", "-timeout", "40s", "-timeout_error"])
        .current_dir(repo_root().join("scripts/sipp"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start sipp")
}

pub fn wait_bounded(child: &mut Child, limit: Duration) -> std::process::ExitStatus {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().expect("wait sipp") {
            return status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("sipp did not finish within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `user@sip.test`'s call settings set through the CLI.
pub fn settings(stack: &Stack, user: &str, pairs: &[&str]) {
    let out = Command::new(BIN)
        .args(["--config", stack.config.to_str().expect("utf8"), "settings", "set", &format!("{user}@sip.test")])
        .args(pairs)
        .output()
        .expect("run settings set");
    assert!(out.status.success(), "settings set {pairs:?}: {}", String::from_utf8_lossy(&out.stderr));
}

pub fn register_callee(stack: &Stack, csv: &str, port: u16) {
    let port = port.to_string();
    let status =
        sipp(stack, &["-sf", "register.xml", "-inf", csv, "-auth_uri", "sip.test", "-p", &port, "-m", "1"], Duration::from_secs(20));
    assert!(status.success(), "sipp register.xml {csv} failed: {status:?}");
}
