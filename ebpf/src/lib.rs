//! # ebpf
//!
//! The XDP program of the media plane's AF_XDP backend, and the safe handle that loads and attaches
//! it. The program (`src/bpf/media_steer.bpf.c`, C compiled by clang with `-target bpf`, skeleton by
//! libbpf-cargo, loaded by libbpf-rs) sends UDP datagrams for the media port range to the AF_XDP
//! socket of the queue they arrived on, and passes everything else to the kernel:
//!
//! ```text
//!   NIC queue q ──► media_steer (XDP) ──┬─ UDP, dst port in `config` range, xsks[q] set ──► AF_XDP socket q
//!                                       │                                                  (media core)
//!                                       ├─ same, but xsks[q] empty ─────────────────┐
//!                                       ├─ ARP, ICMP, TCP (SIP, gRPC), other UDP ───┼──► kernel stack
//!                                       ├─ IPv4 fragment, IPv6 fragment/ext header ─┤
//!                                       └─ malformed: truncated, bad version or IHL ┘
//!                      every outcome counted once in the per-CPU `stats` array ──► Steering::stats
//! ```
//!
//! * **Maps.** `config` (ARRAY, one entry: the port range, written before attach), `xsks` (XSKMAP,
//!   [`MAX_QUEUES`] entries, keyed by `rx_queue_index`), `stats` (PERCPU_ARRAY of counters, no
//!   atomics on the packet path; [`Steering::stats`] sums the CPUs).
//! * **Parsing.** Ethernet with at most one 802.1Q/802.1ad tag; IPv4 with options (skipped by IHL);
//!   IPv6's fixed header only (any extension header, and so every IPv6 fragment, goes to the
//!   kernel, which reassembles). Every read is bounds-checked against `data_end` for the verifier.
//! * **Fallback is the kernel.** An empty `xsks` slot makes `bpf_redirect_map` return XDP_PASS, so
//!   until the backend registers a queue's socket, that queue's media traffic reaches whatever
//!   kernel socket is bound to the port: attaching the program alone never black-holes traffic.
//! * **bpf_link, not netlink.** [`Steering::attach`] attaches through a bpf_link that only the
//!   [`Steering`] holds: dropping it, or the process dying, detaches the program, so a crashed media
//!   plane leaves no program behind. Nothing is pinned, so bpffs is not needed. XDP links need
//!   Linux 5.9 or later. A program already on the interface is never replaced
//!   ([`SteerError::AlreadyAttached`]).
//! * **Mode.** [`XdpMode::Auto`] asks for native (driver) XDP and falls back to generic (SKB) XDP
//!   when the driver refuses, keeping the refusal ([`Steering::fallback_reason`]) for the caller to
//!   log; this crate does not log.
//! * **Privileges.** Loading needs CAP_BPF (or CAP_SYS_ADMIN) and attaching CAP_NET_ADMIN; a refusal
//!   names what is missing. Map memory is charged to the memory cgroup on kernels since 5.11; on
//!   older ones libbpf raises RLIMIT_MEMLOCK itself, and if it cannot, the error says so.
//! * **Namespaces.** Interface names and indices are those of the calling thread's network
//!   namespace, which is where the link is created.
//!
//! All `unsafe` code (the generated skeleton and one libbpf call) is in `skel`.

use std::fmt;
use std::io;
use std::mem::MaybeUninit;
use std::ops::RangeInclusive;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};

use libbpf_rs::skel::{OpenSkel as _, SkelBuilder as _};
use libbpf_rs::{ErrorKind, MapCore as _, MapFlags, MapHandle, OpenObject};
use nix::errno::Errno;

mod skel;

use skel::generated::MediaSteerSkelBuilder;

/// Entries of the `xsks` map: receive queues `0..MAX_QUEUES` can be steered to a socket; packets of
/// higher queues always go to the kernel.
pub const MAX_QUEUES: u32 = 64;

/// The `stats` indices, in the order of `enum steer_stat` in `media_steer.bpf.c`.
const STAT_COUNT: u32 = 6;

/// How to attach the program, as asked by the caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum XdpMode {
    /// Native if the driver accepts it, generic otherwise (the reason kept for the log).
    Auto,
    /// Native (driver) mode only: `XDP_FLAGS_DRV_MODE`.
    Native,
    /// Generic (SKB) mode only: `XDP_FLAGS_SKB_MODE`; works on any interface, after the skb is built.
    Generic,
}

/// The mode the program runs in once attached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttachedMode {
    /// In the driver, before an skb exists (`ip link` shows `xdp`).
    Native,
    /// In the kernel's receive path after the skb is built (`ip link` shows `xdpgeneric`).
    Generic,
}

impl AttachedMode {
    fn flags(self) -> u32 {
        match self {
            Self::Native => libbpf_rs::libbpf_sys::XDP_FLAGS_DRV_MODE,
            Self::Generic => libbpf_rs::libbpf_sys::XDP_FLAGS_SKB_MODE,
        }
    }
}

impl fmt::Display for AttachedMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Native => "native (XDP_FLAGS_DRV_MODE)",
            Self::Generic => "generic (XDP_FLAGS_SKB_MODE)",
        })
    }
}

/// The program's counters, summed over CPUs. Each packet the program sees is counted in exactly one
/// field.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct SteerStats {
    /// Media-port UDP redirected to the receiving queue's AF_XDP socket (whether the socket had room
    /// for it is counted by the socket: `XDP_STATISTICS`).
    pub redirected: u64,
    /// Media-port UDP passed to the kernel because no socket is registered for the queue.
    pub passed_no_xsk: u64,
    /// Not IPv4/IPv6, not UDP, or an IPv6 packet with an extension header (ARP, ICMP, TCP, …).
    pub passed_not_udp: u64,
    /// UDP outside the media port range.
    pub passed_other_port: u64,
    /// IPv4 fragments (MF set or offset ≠ 0) and IPv6 packets whose next header is Fragment.
    pub passed_fragment: u64,
    /// Frames too short for the headers they announce, an IP version that does not match the
    /// EtherType, or an IPv4 IHL below 5; passed to the kernel, which drops them.
    pub malformed: u64,
}

impl SteerStats {
    /// Every packet the program has seen.
    pub fn total(&self) -> u64 {
        self.redirected + self.passed_no_xsk + self.passed_not_udp + self.passed_other_port + self.passed_fragment + self.malformed
    }

    fn slot(&mut self, index: u32) -> Option<&mut u64> {
        Some(match index {
            0 => &mut self.redirected,
            1 => &mut self.passed_no_xsk,
            2 => &mut self.passed_not_udp,
            3 => &mut self.passed_other_port,
            4 => &mut self.passed_fragment,
            5 => &mut self.malformed,
            _ => return None,
        })
    }
}

/// Why loading, attaching or driving the program failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SteerError {
    // The caller's input.
    /// The media port range is empty or starts at port 0.
    #[error("media port range {min}-{max} is invalid: need 1 <= min <= max")]
    InvalidPortRange { min: u16, max: u16 },
    /// A queue the `xsks` map has no entry for.
    #[error("receive queue {queue} cannot be steered: the XSK map holds queues 0..{MAX_QUEUES}")]
    QueueOutOfRange { queue: u32 },

    // The host: interface, privileges, limits.
    /// The interface does not exist in the calling thread's network namespace.
    #[error("no network interface {interface} in this network namespace ({call}: {source})")]
    NoSuchInterface { interface: String, call: &'static str, source: io::Error },
    /// The process lacks the capabilities; `missing` names them when they could be read.
    #[error(
        "{call} was refused: loading and attaching XDP needs CAP_BPF (or CAP_SYS_ADMIN) and \
         CAP_NET_ADMIN (root has them){}: {source}",
        missing.as_ref().map(|m| format!("; this process lacks {m}")).unwrap_or_default()
    )]
    Permission { call: &'static str, missing: Option<String>, source: Box<dyn std::error::Error + Send + Sync> },
    /// The kernel refused the object although the capabilities are there: the verifier, or the
    /// memlock limit on kernels before 5.11.
    #[error(
        "the kernel refused the XDP program (bpf_object__load: {source}); with the capabilities \
         present, either the verifier rejected it (libbpf printed its log above) or, on kernels \
         before 5.11, RLIMIT_MEMLOCK ({memlock}) is too low for its maps and libbpf could not \
         raise it: raise it (`ulimit -l unlimited`, systemd `LimitMEMLOCK=infinity`)"
    )]
    LoadRefused { memlock: String, source: libbpf_rs::Error },

    // The kernel or the driver refused.
    /// Another XDP program (or link) is attached to the interface; it is never replaced.
    #[error(
        "another XDP program is already attached to {interface} \
         (bpf_link_create(BPF_XDP) in {mode} mode: {source}); it is not replaced: \
         detach it first (`ip link set dev IF xdp off` for one attached through netlink)"
    )]
    AlreadyAttached { interface: String, mode: AttachedMode, source: io::Error },

    /// Opening or loading the embedded object failed for another reason.
    #[error("{call} failed for the XDP program: {source}")]
    Load { call: &'static str, source: libbpf_rs::Error },
    /// The attach call failed; `native_refused` says why native mode was given up first, if it was.
    #[error(
        "attaching XDP to {interface} in {mode} mode failed \
         (bpf_link_create(BPF_XDP)): {source}{}",
        native_refused.as_ref().map(|r| format!(" (after native mode was refused: {r})")).unwrap_or_default()
    )]
    Attach { interface: String, mode: AttachedMode, native_refused: Option<String>, source: io::Error },
    /// A map operation failed.
    #[error("{call} on map `{map}` failed: {source}")]
    Map { call: &'static str, map: &'static str, source: libbpf_rs::Error },

    // Our own bug.
    /// The kernel returned a per-CPU value of unexpected size: the C and Rust sides disagree.
    #[error("internal error: stats value of {len} bytes, expected 8 (C and Rust out of step)")]
    StatsLayout { len: usize },
}

/// The XDP program loaded and attached to one interface. Dropping it detaches the program.
#[derive(Debug)]
pub struct Steering {
    /// The only reference to the bpf_link: closing it detaches the program.
    #[allow(dead_code, reason = "held only so that dropping the Steering closes it")]
    link: OwnedFd,
    xsks: MapHandle,
    stats: MapHandle,
    interface: String,
    ifindex: u32,
    ports: RangeInclusive<u16>,
    mode: AttachedMode,
    fallback_reason: Option<String>,
}

impl Steering {
    /// Loads the program, sets the media `ports` range and attaches it to the interface named
    /// `ifname` (in the calling thread's network namespace) in `mode`.
    pub fn attach(ifname: &str, ports: RangeInclusive<u16>, mode: XdpMode) -> Result<Self, SteerError> {
        check_ports(&ports)?;
        let ifindex = nix::net::if_::if_nametoindex(ifname).map_err(|errno| SteerError::NoSuchInterface {
            interface: ifname.to_owned(),
            call: "if_nametoindex",
            source: errno.into(),
        })?;
        Self::attach_inner(ifname.to_owned(), ifindex, ports, mode)
    }

    /// As [`Steering::attach`], for an interface given by index.
    pub fn attach_ifindex(ifindex: u32, ports: RangeInclusive<u16>, mode: XdpMode) -> Result<Self, SteerError> {
        check_ports(&ports)?;
        Self::attach_inner(format!("ifindex {ifindex}"), ifindex, ports, mode)
    }

    fn attach_inner(interface: String, ifindex: u32, ports: RangeInclusive<u16>, mode: XdpMode) -> Result<Self, SteerError> {
        // The skeleton borrows this storage; everything it hands out that outlives this function is
        // a descriptor of our own (the map handles are dups, the link holds the program).
        let mut storage = MaybeUninit::<OpenObject>::uninit();
        let open = MediaSteerSkelBuilder::default()
            .open(&mut storage)
            .map_err(|source| SteerError::Load { call: "bpf_object__open_skeleton", source })?;
        let skel = open.load().map_err(load_error)?;

        let mut config = [0u8; 4];
        config[..2].copy_from_slice(&ports.start().to_ne_bytes());
        config[2..].copy_from_slice(&ports.end().to_ne_bytes());
        skel.maps.config.update(&0u32.to_ne_bytes(), &config, MapFlags::ANY).map_err(|source| SteerError::Map {
            call: "bpf_map_update_elem",
            map: "config",
            source,
        })?;
        let dup = |map, result: libbpf_rs::Result<MapHandle>| result.map_err(|source| SteerError::Map { call: "dup", map, source });
        let xsks = dup("xsks", MapHandle::try_from(&skel.maps.xsks))?;
        let stats = dup("stats", MapHandle::try_from(&skel.maps.stats))?;

        let prog = skel.progs.media_steer.as_fd();
        let attach = |mode: AttachedMode| skel::xdp_link_create(prog, ifindex, mode.flags());
        let (link, mode, fallback_reason) = match mode {
            XdpMode::Native => (attach(AttachedMode::Native), AttachedMode::Native, None),
            XdpMode::Generic => (attach(AttachedMode::Generic), AttachedMode::Generic, None),
            XdpMode::Auto => match attach(AttachedMode::Native) {
                Ok(link) => (Ok(link), AttachedMode::Native, None),
                Err(err) if native_refusal_allows_fallback(&err) => {
                    let reason = native_refusal_reason(&err);
                    (attach(AttachedMode::Generic), AttachedMode::Generic, Some(reason))
                }
                Err(err) => (Err(err), AttachedMode::Native, None),
            },
        };
        let link = link.map_err(|source| attach_error(&interface, mode, fallback_reason.clone(), source))?;
        Ok(Self { link, xsks, stats, interface, ifindex, ports, mode, fallback_reason })
    }

    // Getters.

    /// The mode the program runs in.
    pub fn mode(&self) -> AttachedMode {
        self.mode
    }

    /// Under [`XdpMode::Auto`], why native mode was refused and generic used instead; for the log.
    pub fn fallback_reason(&self) -> Option<&str> {
        self.fallback_reason.as_deref()
    }

    /// The interface as given (a name, or `ifindex N`).
    pub fn interface(&self) -> &str {
        &self.interface
    }

    /// The interface's index in the namespace it was attached in.
    pub fn ifindex(&self) -> u32 {
        self.ifindex
    }

    /// The media port range the program steers.
    pub fn ports(&self) -> RangeInclusive<u16> {
        self.ports.clone()
    }

    /// The program's counters, summed over all CPUs.
    pub fn stats(&self) -> Result<SteerStats, SteerError> {
        let mut sum = SteerStats::default();
        for index in 0..STAT_COUNT {
            let per_cpu = self
                .stats
                .lookup_percpu(&index.to_ne_bytes(), MapFlags::ANY)
                .map_err(|source| SteerError::Map { call: "bpf_map_lookup_elem", map: "stats", source })?
                .unwrap_or_default();
            let mut total = 0u64;
            for value in per_cpu {
                let bytes: [u8; 8] = value.get(..8).and_then(|b| b.try_into().ok()).ok_or(SteerError::StatsLayout { len: value.len() })?;
                total = total.wrapping_add(u64::from_ne_bytes(bytes));
            }
            if let Some(slot) = sum.slot(index) {
                *slot = total;
            }
        }
        Ok(sum)
    }

    // Commands.

    /// Steers media packets arriving on receive queue `queue` to the AF_XDP socket `xsk`, replacing
    /// any socket registered for that queue. The kernel keeps its own reference to the socket: the
    /// caller may close its descriptor, and a socket that is released leaves the map by itself.
    pub fn register_xsk(&self, queue: u32, xsk: impl AsFd) -> Result<(), SteerError> {
        check_queue(queue)?;
        // A borrowed descriptor is never negative; u32::MAX would be refused (EBADF) anyway.
        let fd = u32::try_from(xsk.as_fd().as_raw_fd()).unwrap_or(u32::MAX);
        self.xsks.update(&queue.to_ne_bytes(), &fd.to_ne_bytes(), MapFlags::ANY).map_err(|source| SteerError::Map {
            call: "bpf_map_update_elem",
            map: "xsks",
            source,
        })
    }

    /// Stops steering queue `queue`: its media packets go to the kernel again. Removing an empty
    /// entry is not an error.
    pub fn unregister_xsk(&self, queue: u32) -> Result<(), SteerError> {
        check_queue(queue)?;
        match self.xsks.delete(&queue.to_ne_bytes()) {
            Ok(()) => Ok(()),
            Err(err) if err.kind() == ErrorKind::NotFound => Ok(()),
            Err(source) => Err(SteerError::Map { call: "bpf_map_delete_elem", map: "xsks", source }),
        }
    }
}

fn check_ports(ports: &RangeInclusive<u16>) -> Result<(), SteerError> {
    let (min, max) = (*ports.start(), *ports.end());
    if min == 0 || min > max {
        return Err(SteerError::InvalidPortRange { min, max });
    }
    Ok(())
}

fn check_queue(queue: u32) -> Result<(), SteerError> {
    if queue >= MAX_QUEUES {
        return Err(SteerError::QueueOutOfRange { queue });
    }
    Ok(())
}

/// Native-mode refusals after which generic mode is worth trying: the driver lacks native XDP
/// (EOPNOTSUPP) or refuses it in its current configuration (MTU too large for a single buffer:
/// ERANGE; queue counts, LRO and the like: EINVAL, ENOSPC, ENOMEM). Not for missing privileges, a
/// missing interface, or a program already attached (EBUSY, EEXIST): generic mode would fail the
/// same way, or would run beside a program we must not disturb.
fn native_refusal_allows_fallback(err: &io::Error) -> bool {
    let errno = err.raw_os_error().map(Errno::from_raw);
    !matches!(errno, Some(Errno::EPERM | Errno::EACCES | Errno::ENODEV | Errno::EBUSY | Errno::EEXIST))
}

fn native_refusal_reason(err: &io::Error) -> String {
    let why = match err.raw_os_error().map(Errno::from_raw) {
        Some(Errno::EOPNOTSUPP) => "the driver has no native XDP",
        Some(Errno::ERANGE) => "the MTU is too large for native XDP on this driver",
        Some(Errno::EINVAL) => "the driver refused native XDP in its current configuration",
        _ => "native XDP refused",
    };
    format!("{why} (bpf_link_create(BPF_XDP, XDP_FLAGS_DRV_MODE): {err})")
}

fn attach_error(interface: &str, mode: AttachedMode, native_refused: Option<String>, source: io::Error) -> SteerError {
    match source.raw_os_error().map(Errno::from_raw) {
        Some(Errno::EPERM | Errno::EACCES) => {
            SteerError::Permission { call: "bpf_link_create(BPF_XDP)", missing: missing_capabilities(), source: Box::new(source) }
        }
        Some(Errno::EBUSY | Errno::EEXIST) => SteerError::AlreadyAttached { interface: interface.to_owned(), mode, source },
        Some(Errno::ENODEV) => SteerError::NoSuchInterface { interface: interface.to_owned(), call: "bpf_link_create(BPF_XDP)", source },
        _ => SteerError::Attach { interface: interface.to_owned(), mode, native_refused, source },
    }
}

fn load_error(source: libbpf_rs::Error) -> SteerError {
    if source.kind() != ErrorKind::PermissionDenied {
        return SteerError::Load { call: "bpf_object__load", source };
    }
    match missing_capabilities() {
        Some(missing) => SteerError::Permission { call: "bpf_object__load", missing: Some(missing), source: Box::new(source) },
        None => SteerError::LoadRefused { memlock: memlock_limit(), source },
    }
}

const CAP_NET_ADMIN: u32 = 12;
const CAP_SYS_ADMIN: u32 = 21;
const CAP_BPF: u32 = 39;

/// The capabilities loading and attaching need that the calling thread's effective set lacks, or
/// `None` if it has them (or they could not be read).
fn missing_capabilities() -> Option<String> {
    let status = std::fs::read_to_string("/proc/thread-self/status").ok()?;
    let effective = status.lines().find_map(|line| line.strip_prefix("CapEff:"))?;
    let effective = u64::from_str_radix(effective.trim(), 16).ok()?;
    let has = |cap: u32| effective & (1u64 << cap) != 0;
    let mut missing = Vec::new();
    if !has(CAP_BPF) && !has(CAP_SYS_ADMIN) {
        missing.push("CAP_BPF");
    }
    if !has(CAP_NET_ADMIN) {
        missing.push("CAP_NET_ADMIN");
    }
    (!missing.is_empty()).then(|| missing.join(" and "))
}

/// RLIMIT_MEMLOCK's soft limit, for the message.
fn memlock_limit() -> String {
    match nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_MEMLOCK) {
        Ok((soft, _)) if soft == nix::sys::resource::RLIM_INFINITY => "unlimited".to_owned(),
        Ok((soft, _)) => format!("{} KiB", soft / 1024),
        Err(errno) => format!("unknown: getrlimit: {errno}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_range_must_be_non_empty_and_start_above_zero() {
        assert!(check_ports(&(30000..=39999)).is_ok());
        assert!(check_ports(&(5004..=5004)).is_ok());
        assert!(matches!(check_ports(&(0..=100)), Err(SteerError::InvalidPortRange { min: 0, max: 100 })));
        #[allow(clippy::reversed_empty_ranges, reason = "the empty range is the input under test")]
        let reversed = 40000..=30000;
        assert!(matches!(check_ports(&reversed), Err(SteerError::InvalidPortRange { .. })));
    }

    #[test]
    fn attach_rejects_a_bad_port_range_before_touching_the_kernel() {
        // No privileges needed: validation comes first.
        let err = Steering::attach("lo", 0..=10, XdpMode::Auto).unwrap_err();
        assert!(matches!(err, SteerError::InvalidPortRange { .. }), "{err}");
    }

    #[test]
    fn queues_beyond_the_xsk_map_are_refused() {
        assert!(check_queue(0).is_ok());
        assert!(check_queue(MAX_QUEUES - 1).is_ok());
        assert!(matches!(check_queue(MAX_QUEUES), Err(SteerError::QueueOutOfRange { queue: 64 })));
    }

    #[test]
    fn an_unknown_interface_name_is_reported_as_such() {
        let err = Steering::attach("mp-no-such-if0", 30000..=39999, XdpMode::Auto).unwrap_err();
        assert!(matches!(err, SteerError::NoSuchInterface { .. }), "{err}");
        assert!(err.to_string().contains("mp-no-such-if0"), "{err}");
    }

    #[test]
    fn auto_mode_falls_back_only_when_generic_could_succeed() {
        let refused = |errno: Errno| io::Error::from_raw_os_error(errno as i32);
        assert!(native_refusal_allows_fallback(&refused(Errno::EOPNOTSUPP)));
        assert!(native_refusal_allows_fallback(&refused(Errno::ERANGE)));
        assert!(native_refusal_allows_fallback(&refused(Errno::EINVAL)));
        assert!(!native_refusal_allows_fallback(&refused(Errno::EPERM)));
        assert!(!native_refusal_allows_fallback(&refused(Errno::ENODEV)));
        assert!(!native_refusal_allows_fallback(&refused(Errno::EEXIST)));
        assert!(!native_refusal_allows_fallback(&refused(Errno::EBUSY)));
        let reason = native_refusal_reason(&refused(Errno::EOPNOTSUPP));
        assert!(reason.contains("no native XDP") && reason.contains("XDP_FLAGS_DRV_MODE"), "{reason}");
    }

    #[test]
    fn a_permission_error_names_the_call_and_the_capabilities() {
        let err = attach_error("eth0", AttachedMode::Native, None, io::Error::from_raw_os_error(Errno::EPERM as i32));
        let text = err.to_string();
        assert!(text.contains("bpf_link_create(BPF_XDP)"), "{text}");
        assert!(text.contains("CAP_BPF") && text.contains("CAP_NET_ADMIN"), "{text}");
    }

    #[test]
    fn every_stats_index_has_one_field() {
        let mut stats = SteerStats::default();
        for index in 0..STAT_COUNT {
            *stats.slot(index).unwrap() = u64::from(index) + 1;
        }
        assert!(stats.slot(STAT_COUNT).is_none());
        assert_eq!(stats.total(), (1..=u64::from(STAT_COUNT)).sum::<u64>());
        assert_eq!(stats.malformed, 6);
    }
}
