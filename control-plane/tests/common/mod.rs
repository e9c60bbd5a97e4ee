//! What the integration tests of the real binaries share: the binaries, child processes that
//! are killed when dropped, temporary directories.
#![allow(dead_code)] // each test file uses its own subset

pub mod pg;
pub mod stack;

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::Duration;

pub const BIN: &str = env!("CARGO_BIN_EXE_control-plane");
pub const IO_TIMEOUT: Duration = Duration::from_secs(3);

/// A child process, killed and reaped when dropped.
pub struct Proc {
    pub child: Child,
    pub name: &'static str,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A daemon that forks workers (Kamailio), started in a process group of its own so that the
/// whole group is killed when dropped: killing only its main process would orphan the workers.
pub struct ProcGroup {
    pub child: Child,
}

impl ProcGroup {
    /// Starts `cmd` as the leader of a new process group.
    pub fn spawn(cmd: &mut Command) -> std::io::Result<ProcGroup> {
        use std::os::unix::process::CommandExt;
        Ok(ProcGroup { child: cmd.process_group(0).spawn()? })
    }
}

impl Drop for ProcGroup {
    fn drop(&mut self) {
        let _ = Command::new("kill").args(["-KILL", "--", &format!("-{}", self.child.id())]).status();
        let _ = self.child.wait();
    }
}

/// The number after `"key":` in a one-line JSON counters text (0 when absent).
pub fn counter(text: &str, key: &str) -> u64 {
    text.split(&format!("\"{key}\":"))
        .nth(1)
        .and_then(|rest| rest.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// Whether `program` runs (`program arg`); when it does not, the test skips with a message
/// saying how to install it, unless `require` (an environment variable) is 1, when it fails.
pub fn tool_available(program: &str, arg: &str, require: &str, install: &str) -> bool {
    let found = Command::new(program).arg(arg).stdout(std::process::Stdio::null()).stderr(std::process::Stdio::null()).status().is_ok();
    if !found {
        assert!(std::env::var(require).as_deref() != Ok("1"), "{require}=1 but {program} is not installed");
        eprintln!("SKIP: {program} is not installed ({install})");
    }
    found
}

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("workspace root").to_path_buf()
}

/// The media-plane binary next to ours (cargo builds it for the workspace's tests); built here
/// if a single-package test run left it out.
pub fn media_plane_bin() -> PathBuf {
    let path = Path::new(BIN).with_file_name("media-plane");
    if !path.exists() {
        let status = Command::new(env!("CARGO"))
            .args(["build", "-p", "media-plane", "--bin", "media-plane"])
            .current_dir(repo_root())
            .status()
            .expect("run cargo build -p media-plane");
        assert!(status.success(), "building media-plane failed");
    }
    path
}

/// A fresh directory for one test, named by `tag`.
pub fn temp_dir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("cp-test-{}-{tag}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create temp dir");
    dir
}

/// Stops `p` with SIGTERM, waiting up to 5 s; panics if it does not exit.
pub fn terminate(p: &mut Proc) {
    let _ = Command::new("kill").args(["-TERM", &p.child.id().to_string()]).status();
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while std::time::Instant::now() < deadline {
        if p.child.try_wait().ok().flatten().is_some() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("{} did not stop on SIGTERM", p.name);
}

/// A self-signed certificate for 127.0.0.1 (openssl), written into `dir`: (cert, key) paths.
pub fn self_signed(dir: &Path) -> (PathBuf, PathBuf) {
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    let out = Command::new("openssl")
        .args(["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-days", "1"])
        .args(["-subj", "/CN=sip.test", "-addext", "subjectAltName=IP:127.0.0.1,DNS:sip.test"])
        // An end-entity certificate (not a CA), for a server: what a client's verifier accepts.
        .args(["-addext", "basicConstraints=critical,CA:FALSE", "-addext", "extendedKeyUsage=serverAuth"])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("run openssl");
    assert!(out.status.success(), "openssl: {}", String::from_utf8_lossy(&out.stderr));
    (cert, key)
}

/// GET /metrics from `addr`: the body, if it answered 200.
pub fn scrape(addr: &str) -> Option<String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).ok()?;
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n").ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    let (head, body) = text.split_once("\r\n\r\n")?;
    head.starts_with("HTTP/1.1 200").then(|| body.to_owned())
}

/// The value of the first series of `body` (metrics text) that starts with `series`.
pub fn metric(body: &str, series: &str) -> Option<u64> {
    body.lines().find(|l| l.starts_with(series)).and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

/// Starts the control plane with `config`, its counters to dir/cp.out and its log to dir/cp.log.
pub fn start_control_plane(dir: &Path, config: &Path) -> Proc {
    Proc {
        child: Command::new(BIN)
            .args(["--config", config.to_str().expect("utf8 path")])
            .stdout(std::fs::File::create(dir.join("cp.out")).expect("log"))
            .stderr(std::fs::File::create(dir.join("cp.log")).expect("log"))
            .spawn()
            .expect("start control-plane"),
        name: "control-plane",
    }
}

/// Adds `users` (password `secret`, domain sip.test) to the store of `config` with the CLI.
pub fn add_subscribers(config: &Path, users: &[&str]) {
    for &user in users {
        let out = Command::new(BIN)
            .args(["--config", config.to_str().expect("utf8 path"), "subscriber", "add", "--user", user])
            .args(["--domain", "sip.test", "--password", "secret"])
            .output()
            .expect("subscriber add");
        assert!(out.status.success(), "subscriber add {user}: {}", String::from_utf8_lossy(&out.stderr));
    }
}

/// The media plane at `grpc`'s totals: (legs, packets forwarded), summed over cores.
pub fn media_totals(grpc: &str) -> (u32, u64) {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    rt.block_on(async {
        let mut client =
            proto::v1::media_plane_client::MediaPlaneClient::connect(format!("http://{grpc}")).await.expect("connect to media plane");
        let request = proto::v1::GetStatsRequest { leg_ids: vec![], totals_only: true };
        let stats = client.get_stats(request).await.expect("GetStats").into_inner();
        stats.cores.iter().fold((0, 0), |(l, p), c| (l + c.legs, p + c.packets_forwarded))
    })
}
