//! A PostgreSQL server (Debian `postgresql`) started by a test in a directory of its own.
//! PostgreSQL is required when `REQUIRE_POSTGRES=1` (CI); without it tests skip with a message.
//! As root, the server runs as the `postgres` user (it refuses root).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use control_plane::store::PgStore;

use super::Proc;

pub fn bin_dir() -> Option<PathBuf> {
    let found = std::fs::read_dir("/usr/lib/postgresql")
        .ok()
        .and_then(|d| d.flatten().map(|e| e.path().join("bin")).filter(|b| b.join("initdb").exists()).max());
    if found.is_none() {
        assert!(std::env::var("REQUIRE_POSTGRES").as_deref() != Ok("1"), "REQUIRE_POSTGRES=1 but PostgreSQL is not installed");
        eprintln!("SKIP: PostgreSQL is not installed (apt-get install postgresql, or SETUP_POSTGRES=1 bash scripts/setup.sh)");
    }
    found
}

pub fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find_map(|l| l.strip_prefix("Uid:")).map(|u| u.split_whitespace().next() == Some("0")))
        .unwrap_or(false)
}

/// `program args` as the postgres user when we are root.
pub fn as_postgres(program: &Path) -> Command {
    if is_root() {
        let mut c = Command::new("setpriv");
        c.args(["--reuid=postgres", "--regid=postgres", "--init-groups"]).arg(program);
        c
    } else {
        Command::new(program)
    }
}

/// A PostgreSQL server of the test's own in `dir`, on 127.0.0.1:`port`, trusting local users.
pub fn start_postgres(bin: &Path, dir: &Path, port: u16) -> Proc {
    let data = dir.join("data");
    if is_root() {
        let status = Command::new("chown").args(["-R", "postgres:postgres"]).arg(dir).status().expect("chown");
        assert!(status.success());
    }
    let out = as_postgres(&bin.join("initdb"))
        .args(["-D", data.to_str().expect("utf8"), "-A", "trust", "-U", "postgres", "--no-sync", "-E", "UTF8"])
        .output()
        .expect("initdb");
    assert!(out.status.success(), "initdb: {}", String::from_utf8_lossy(&out.stderr));
    let log = std::fs::File::create(dir.join("postgres.log")).expect("log");
    if is_root() {
        let _ = Command::new("chown").args(["postgres:postgres"]).arg(dir.join("postgres.log")).status();
    }
    let child = as_postgres(&bin.join("postgres"))
        .args(["-D", data.to_str().expect("utf8"), "-p", &port.to_string(), "-k", dir.to_str().expect("utf8")])
        .args(["-c", "listen_addresses=127.0.0.1", "-c", "fsync=off", "-c", "max_connections=40"])
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("start postgres");
    let p = Proc { child, name: "postgres" };
    let deadline = Instant::now() + Duration::from_secs(20);
    while PgStore::open(&params(port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "PostgreSQL did not start: {}",
            std::fs::read_to_string(dir.join("postgres.log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    p
}

/// Connection parameters of the server on `port`.
pub fn params(port: u16) -> String {
    format!("host=127.0.0.1 port={port} user=postgres dbname=postgres connect_timeout=2")
}
