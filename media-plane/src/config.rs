//! Configuration: a TOML file, overridden by command-line flags, validated once at start.
//!
//! ```toml
//! grpc_listen = "127.0.0.1:9090"   # gRPC API address (default 127.0.0.1:9090)
//! metrics_listen = "127.0.0.1:9091"  # GET /metrics (Prometheus) address; "" turns it off (default 127.0.0.1:9091)
//! recording_dir = "/var/lib/media-plane/recordings"  # where StartRecording writes (default
//!                                  # "recordings"); nothing is written outside it
//! ng_listen = "127.0.0.1:22222"    # rtpengine ng protocol (UDP) for Kamailio/OpenSIPS; "" turns it off
//!                                  # (default 127.0.0.1:22222)
//! ng_max_sessions = 0              # most calls over ng at once, then "load limit" (default 0: only
//!                                  # the port range limits, for ng and gRPC alike)
//! media_ip = "127.0.0.1"           # address media sockets bind to (default 127.0.0.1)
//! advertise_ip = "203.0.113.7"     # address given to clients in CreateLeg (default: media_ip)
//! ports = "30000-39999"            # media port range, inclusive (default 30000-39999)
//! cores = 2                        # media cores (default: 1)
//! pin_cores = true                 # pin core i to CPU first_cpu + i (default true)
//! first_cpu = 0                    # first CPU to pin to (default 0)
//! media_timeout_secs = 60          # idle legs are deleted after this (default 60)
//! batch = 32                       # datagrams per recvmmsg/sendmmsg (default 32)
//! socket_buffer_kb = 1024          # SO_RCVBUF/SO_SNDBUF per media socket (default 1024; kernel caps apply)
//! idle_spin_us = 0                 # keep polling this long after a packet before sleeping (default 0)
//! backend = "udp"                  # "udp" (kernel sockets), "xdp" (AF_XDP, needs root) or "auto" (default "udp")
//! interface = "eth0"               # the NIC AF_XDP binds to; required by "xdp" and "auto" (default: none)
//! prompt_dir = "/usr/share/media-plane/prompts"  # where Play's files are (default "prompts"); Play
//!                                  # reads nothing outside it
//! ```
//!
//! `auto` tries AF_XDP and, when it cannot be used (no privileges, no such interface, media_ip not on
//! it, attach refused), logs why and runs the UDP backend.

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::time::Duration;

use serde::Deserialize;

/// A configuration problem, naming the key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("config file {path}: {message}")]
    Parse { path: String, message: String },
    #[error("{key}: {problem}")]
    Invalid { key: &'static str, problem: String },
}

fn invalid(key: &'static str, problem: impl Into<String>) -> ConfigError {
    ConfigError::Invalid { key, problem: problem.into() }
}

/// The file as written; every field optional so flags can fill the gaps.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub grpc_listen: Option<String>,
    pub media_ip: Option<String>,
    pub advertise_ip: Option<String>,
    pub ports: Option<String>,
    pub cores: Option<i64>,
    pub pin_cores: Option<bool>,
    pub first_cpu: Option<i64>,
    pub media_timeout_secs: Option<i64>,
    pub batch: Option<i64>,
    pub socket_buffer_kb: Option<i64>,
    pub idle_spin_us: Option<i64>,
    pub backend: Option<String>,
    pub interface: Option<String>,
    pub prompt_dir: Option<String>,
    pub metrics_listen: Option<String>,
    pub ng_listen: Option<String>,
    pub ng_max_sessions: Option<i64>,
    pub recording_dir: Option<String>,
}

impl FileConfig {
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.display().to_string(), source })?;
        Self::parse(&text).map_err(|message| ConfigError::Parse { path: path.display().to_string(), message })
    }

    pub fn parse(text: &str) -> Result<Self, String> {
        toml::from_str(text).map_err(|e| e.to_string().trim_end().to_string())
    }

    /// Fields of `over` that are set replace ours.
    pub fn overlay(self, over: FileConfig) -> Self {
        Self {
            grpc_listen: over.grpc_listen.or(self.grpc_listen),
            media_ip: over.media_ip.or(self.media_ip),
            advertise_ip: over.advertise_ip.or(self.advertise_ip),
            ports: over.ports.or(self.ports),
            cores: over.cores.or(self.cores),
            pin_cores: over.pin_cores.or(self.pin_cores),
            first_cpu: over.first_cpu.or(self.first_cpu),
            media_timeout_secs: over.media_timeout_secs.or(self.media_timeout_secs),
            batch: over.batch.or(self.batch),
            socket_buffer_kb: over.socket_buffer_kb.or(self.socket_buffer_kb),
            idle_spin_us: over.idle_spin_us.or(self.idle_spin_us),
            backend: over.backend.or(self.backend),
            interface: over.interface.or(self.interface),
            prompt_dir: over.prompt_dir.or(self.prompt_dir),
            metrics_listen: over.metrics_listen.or(self.metrics_listen),
            ng_listen: over.ng_listen.or(self.ng_listen),
            ng_max_sessions: over.ng_max_sessions.or(self.ng_max_sessions),
            recording_dir: over.recording_dir.or(self.recording_dir),
        }
    }

    /// Validates and fills defaults.
    pub fn validate(self) -> Result<Config, ConfigError> {
        let grpc_listen: SocketAddr = self
            .grpc_listen
            .as_deref()
            .unwrap_or("127.0.0.1:9090")
            .parse()
            .map_err(|_| invalid("grpc_listen", "expected IP:port, e.g. 127.0.0.1:9090"))?;
        let media_ip: IpAddr =
            self.media_ip.as_deref().unwrap_or("127.0.0.1").parse().map_err(|_| invalid("media_ip", "expected an IPv4 or IPv6 address"))?;
        if media_ip.is_unspecified() && self.advertise_ip.is_none() {
            return Err(invalid("advertise_ip", "required when media_ip is a wildcard address: clients need a routable address"));
        }
        let advertise_ip: IpAddr = match self.advertise_ip.as_deref() {
            None => media_ip,
            Some(s) => s.parse().map_err(|_| invalid("advertise_ip", "expected an IPv4 or IPv6 address"))?,
        };
        if advertise_ip.is_ipv4() != media_ip.is_ipv4() {
            return Err(invalid("advertise_ip", "must be of the same family as media_ip"));
        }
        let (port_min, port_max) = parse_port_range(self.ports.as_deref().unwrap_or("30000-39999"))?;
        let available = std::thread::available_parallelism().map_or(1, |n| n.get());
        let cores = self.cores.unwrap_or(1);
        if !(1..=256).contains(&cores) {
            return Err(invalid("cores", format!("{cores} is out of range 1..=256")));
        }
        let cores = cores as usize;
        let first_cpu = self.first_cpu.unwrap_or(0);
        if first_cpu < 0 || first_cpu as usize >= available {
            return Err(invalid("first_cpu", format!("{first_cpu} is not a CPU of this machine (0..{available})")));
        }
        let pairs = (usize::from(port_max) - usize::from(port_min)).div_ceil(2);
        if pairs < cores {
            return Err(invalid("ports", format!("{pairs} port pairs cannot be shared by {cores} cores")));
        }
        let timeout = self.media_timeout_secs.unwrap_or(60);
        if !(1..=86_400).contains(&timeout) {
            return Err(invalid("media_timeout_secs", format!("{timeout} is out of range 1..=86400")));
        }
        let batch = self.batch.unwrap_or(32);
        if !(1..=1024).contains(&batch) {
            return Err(invalid("batch", format!("{batch} is out of range 1..=1024")));
        }
        let buf = self.socket_buffer_kb.unwrap_or(1024);
        if !(16..=65_536).contains(&buf) {
            return Err(invalid("socket_buffer_kb", format!("{buf} is out of range 16..=65536")));
        }
        let spin = self.idle_spin_us.unwrap_or(0);
        if !(0..=10_000).contains(&spin) {
            return Err(invalid("idle_spin_us", format!("{spin} is out of range 0..=10000")));
        }
        let backend = match self.backend.as_deref().unwrap_or("udp") {
            "udp" => Backend::Udp,
            "xdp" => Backend::Xdp,
            "auto" => Backend::Auto,
            other => return Err(invalid("backend", format!("{other:?} is not one of \"udp\", \"xdp\", \"auto\""))),
        };
        let interface = match (backend, self.interface) {
            (Backend::Udp, Some(_)) => {
                return Err(invalid("interface", "only used by backend \"xdp\" or \"auto\"; set backend or remove interface"))
            }
            (Backend::Xdp | Backend::Auto, None) => {
                return Err(invalid("interface", "required when backend is \"xdp\" or \"auto\": the NIC to bind AF_XDP sockets to"))
            }
            (_, Some(i)) if i.is_empty() || i.len() > 15 || i.contains(['/', ' ', '\0']) => {
                return Err(invalid("interface", format!("{i:?} is not an interface name (1-15 characters, no '/' or spaces)")))
            }
            (_, i) => i,
        };
        let metrics_listen = match self.metrics_listen.as_deref().unwrap_or("127.0.0.1:9091") {
            "" => None,
            a => Some(
                a.parse::<SocketAddr>()
                    .map_err(|_| invalid("metrics_listen", "expected IP:port, e.g. 127.0.0.1:9091, or \"\" for none"))?,
            ),
        };
        let ng_listen = match self.ng_listen.as_deref().unwrap_or("127.0.0.1:22222") {
            "" => None,
            a => Some(
                a.parse::<SocketAddr>().map_err(|_| invalid("ng_listen", "expected IP:port, e.g. 127.0.0.1:22222, or \"\" for none"))?,
            ),
        };
        let ng_max_sessions = self.ng_max_sessions.unwrap_or(0);
        if !(0..=10_000_000).contains(&ng_max_sessions) {
            return Err(invalid("ng_max_sessions", format!("{ng_max_sessions} is out of range 0..=10000000")));
        }
        let prompt_dir = std::path::PathBuf::from(self.prompt_dir.unwrap_or_else(|| "prompts".into()));
        if prompt_dir.as_os_str().is_empty() {
            return Err(invalid("prompt_dir", "is empty"));
        }
        let recording_dir = std::path::PathBuf::from(self.recording_dir.unwrap_or_else(|| "recordings".into()));
        if recording_dir.as_os_str().is_empty() {
            return Err(invalid("recording_dir", "is empty"));
        }
        Ok(Config {
            backend,
            interface,
            prompt_dir,
            metrics_listen,
            ng_listen,
            ng_max_sessions: ng_max_sessions as usize,
            recording_dir,
            grpc_listen,
            media_ip,
            advertise_ip,
            port_min,
            port_max,
            cores,
            pin_cores: self.pin_cores.unwrap_or(true),
            first_cpu: first_cpu as usize,
            media_timeout: Duration::from_secs(timeout as u64),
            batch: batch as usize,
            socket_buffer: buf as usize * 1024,
            idle_spin: Duration::from_micros(spin as u64),
        })
    }
}

/// Which datapath the media cores run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// Kernel UDP sockets (`driver::udp`).
    Udp,
    /// AF_XDP sockets on `interface` (`driver::xdp`); failing to start is an error.
    Xdp,
    /// AF_XDP if it can be started, else UDP, with the reason logged.
    Auto,
}

/// Validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub backend: Backend,
    /// Interface of the AF_XDP backend (set exactly when `backend` is not `Udp`).
    pub interface: Option<String>,
    /// The directory Play reads its files from (and nothing outside it).
    pub prompt_dir: std::path::PathBuf,
    /// Where GET /metrics is served, if anywhere.
    pub metrics_listen: Option<SocketAddr>,
    /// Where the ng protocol is served (UDP), if anywhere.
    pub ng_listen: Option<SocketAddr>,
    /// Most ng calls at once (0: no limit but the port range).
    pub ng_max_sessions: usize,
    /// The directory recordings are written under (and nothing outside it).
    pub recording_dir: std::path::PathBuf,
    pub grpc_listen: SocketAddr,
    pub media_ip: IpAddr,
    pub advertise_ip: IpAddr,
    /// First even port of the range.
    pub port_min: u16,
    /// Last port of the range (RTCP of the last pair).
    pub port_max: u16,
    pub cores: usize,
    pub pin_cores: bool,
    pub first_cpu: usize,
    pub media_timeout: Duration,
    pub batch: usize,
    pub socket_buffer: usize,
    pub idle_spin: Duration,
}

/// `"30000-39999"` → (30000, 39999); the start is rounded up to even, the end down to odd.
fn parse_port_range(s: &str) -> Result<(u16, u16), ConfigError> {
    let bad = || invalid("ports", format!("{s:?} is not a range like 30000-39999"));
    let (a, b) = s.split_once('-').ok_or_else(bad)?;
    let a: u16 = a.trim().parse().map_err(|_| bad())?;
    let b: u16 = b.trim().parse().map_err(|_| bad())?;
    if a < 1024 {
        return Err(invalid("ports", format!("range starts at {a}; ports below 1024 are reserved")));
    }
    // Align to whole pairs: start up to even, end down to odd (checked: ends of u16 are inputs too).
    let a = a.checked_add(a % 2).ok_or_else(|| invalid("ports", format!("{s:?} holds no RTP/RTCP port pair")))?;
    let b = if b % 2 == 0 { b.saturating_sub(1) } else { b };
    if b <= a {
        return Err(invalid("ports", format!("{s:?} holds no RTP/RTCP port pair")));
    }
    Ok((a, b))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(toml: &str) -> String {
        FileConfig::parse(toml).and_then(|f| f.validate().map_err(|e| e.to_string())).unwrap_err()
    }

    #[test]
    fn defaults_are_valid() {
        let c = FileConfig::default().validate().unwrap();
        assert_eq!((c.port_min, c.port_max, c.cores), (30000, 39999, 1));
        assert_eq!(c.media_timeout, Duration::from_secs(60));
    }

    #[test]
    fn port_range_is_aligned_to_pairs() {
        let c = FileConfig::parse("ports = \"30001-30010\"").unwrap().validate().unwrap();
        assert_eq!((c.port_min, c.port_max), (30002, 30009));
    }

    #[test]
    fn each_bad_key_is_named_in_the_error() {
        assert!(err("ports = \"40000-30000\"").starts_with("ports:"));
        assert!(err("ports = \"abc\"").starts_with("ports:"));
        assert!(err("ports = \"80-90\"").contains("below 1024"));
        assert!(err("ports = \"2000-0\"").starts_with("ports:"));
        assert!(err("ports = \"65535-65535\"").starts_with("ports:"));
        assert!(err("cores = 0").starts_with("cores:"));
        assert!(err("ports = \"30000-30003\"\ncores = 4").starts_with("ports:"));
        assert!(err("media_ip = \"nope\"").starts_with("media_ip:"));
        assert!(err("media_ip = \"0.0.0.0\"").starts_with("advertise_ip:"));
        assert!(err("media_ip = \"127.0.0.1\"\nadvertise_ip = \"::1\"").starts_with("advertise_ip:"));
        assert!(err("grpc_listen = \"localhost\"").starts_with("grpc_listen:"));
        assert!(err("media_timeout_secs = 0").starts_with("media_timeout_secs:"));
        assert!(err("batch = 5000").starts_with("batch:"));
        assert!(err("idle_spin_us = -1").starts_with("idle_spin_us:"));
        assert!(err("first_cpu = 100000").starts_with("first_cpu:"));
        assert!(err("backend = \"dpdk\"").starts_with("backend:"));
        assert!(err("backend = \"xdp\"").starts_with("interface:"));
        assert!(err("backend = \"auto\"").starts_with("interface:"));
        assert!(err("interface = \"eth0\"").starts_with("interface:"));
        assert!(err("backend = \"xdp\"\ninterface = \"a/b\"").starts_with("interface:"));
        assert!(err("ng_listen = \"22222\"").starts_with("ng_listen:"));
        assert!(err("ng_max_sessions = -1").starts_with("ng_max_sessions:"));
    }

    #[test]
    fn unknown_keys_and_wrong_types_are_rejected_by_name() {
        assert!(err("port = \"1-2\"").contains("unknown field `port`"));
        let e = err("cores = \"two\"");
        assert!(e.contains("cores") && e.contains("invalid type"), "{e}");
    }

    #[test]
    fn xdp_backend_takes_its_interface() {
        let c = FileConfig::parse("backend = \"auto\"\ninterface = \"eth0\"").unwrap().validate().unwrap();
        assert_eq!((c.backend, c.interface.as_deref()), (Backend::Auto, Some("eth0")));
        assert_eq!(FileConfig::default().validate().unwrap().backend, Backend::Udp);
    }

    #[test]
    fn flags_override_the_file() {
        let file = FileConfig::parse("cores = 2\nports = \"30000-31000\"").unwrap();
        let flags = FileConfig { cores: Some(1), ..Default::default() };
        let c = file.overlay(flags).validate().unwrap();
        assert_eq!((c.cores, c.port_max), (1, 30999));
    }
}
