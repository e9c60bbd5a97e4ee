//! Every `unsafe` block of the media plane: batched UDP I/O with `recvmmsg(2)` / `sendmmsg(2)`,
//! and the AF_XDP socket of the `xdp` backend ([`Xsk`]: safe wrappers over the `xdp` crate's
//! `unsafe fn` ring operations, see the section "AF_XDP" below).
//!
//! Neither std, mio nor socket2 offers multi-message calls, and `quinn-udp` batches by GSO/GRO for
//! one peer, whereas a relay sends each packet of a batch to a different peer; `nix` wraps the calls
//! but allocates per call. So the two calls are wrapped here, once, over buffers a [`PacketBatch`]
//! owns, and everything else in the crate (and the load generator) uses the safe methods.

use std::io;
use std::mem::{size_of, MaybeUninit};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::RawFd;

/// Largest datagram a slot holds; longer ones are truncated by the kernel and dropped by us.
pub const SLOT_LEN: usize = 2048;
/// Ancillary data space per slot (u64 words, for alignment): room for one SCM_TIMESTAMPNS.
const CONTROL_WORDS: usize = 8;

/// A fixed set of packet buffers with their lengths and peer addresses, reused for every call.
pub struct PacketBatch {
    bufs: Vec<[u8; SLOT_LEN]>,
    lens: Vec<usize>,
    truncated: Vec<bool>,
    peers: Vec<libc::sockaddr_storage>,
    /// Kernel receive timestamps (CLOCK_REALTIME, ns), when enabled with [`enable_rx_timestamps`].
    stamps: Vec<Option<u64>>,
    control: Vec<[u64; CONTROL_WORDS]>,
    // Scratch for building the system call arguments; rebuilt on each call, so the batch may move.
    iov: Vec<libc::iovec>,
    hdrs: Vec<libc::mmsghdr>,
    dst: Vec<libc::sockaddr_storage>,
    /// Slot of each message built for `sendmmsg`.
    slot_of: Vec<usize>,
}

impl std::fmt::Debug for PacketBatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PacketBatch").field("capacity", &self.bufs.len()).finish()
    }
}

// SAFETY: the raw pointers inside `iov`/`hdrs` are scratch values rewritten before every system call
// and never dereferenced by Rust code; the batch owns all memory they point into.
unsafe impl Send for PacketBatch {}

fn zeroed_storage() -> libc::sockaddr_storage {
    // SAFETY: sockaddr_storage is plain old data; all-zero is a valid (AF_UNSPEC) value.
    unsafe { MaybeUninit::<libc::sockaddr_storage>::zeroed().assume_init() }
}

fn empty_hdr() -> libc::mmsghdr {
    // SAFETY: mmsghdr is plain old data (pointers and integers); all-zero is a valid value.
    unsafe { MaybeUninit::<libc::mmsghdr>::zeroed().assume_init() }
}

impl PacketBatch {
    pub fn new(capacity: usize) -> Self {
        let capacity = capacity.clamp(1, 1024);
        Self {
            bufs: vec![[0u8; SLOT_LEN]; capacity],
            lens: vec![0; capacity],
            truncated: vec![false; capacity],
            peers: vec![zeroed_storage(); capacity],
            stamps: vec![None; capacity],
            control: vec![[0u64; CONTROL_WORDS]; capacity],
            iov: vec![libc::iovec { iov_base: std::ptr::null_mut(), iov_len: 0 }; capacity],
            hdrs: vec![empty_hdr(); capacity],
            dst: vec![zeroed_storage(); capacity],
            slot_of: vec![0; capacity],
        }
    }

    pub fn capacity(&self) -> usize {
        self.bufs.len()
    }

    /// Received bytes of slot `i` (after [`PacketBatch::recv`]), or the bytes to send.
    pub fn packet(&self, i: usize) -> &[u8] {
        let len = self.lens.get(i).copied().unwrap_or(0);
        self.bufs.get(i).map_or(&[][..], |b| &b[..len.min(SLOT_LEN)])
    }

    /// Whether slot `i` held a datagram longer than [`SLOT_LEN`] (its tail was cut off).
    pub fn truncated(&self, i: usize) -> bool {
        self.truncated.get(i).copied().unwrap_or(false)
    }

    /// Kernel arrival time of received slot `i` in ns since the Unix epoch, if timestamps are on.
    pub fn rx_timestamp_ns(&self, i: usize) -> Option<u64> {
        self.stamps.get(i).copied().flatten()
    }

    /// Source address of received slot `i`.
    pub fn peer(&self, i: usize) -> Option<SocketAddr> {
        self.peers.get(i).and_then(storage_to_addr)
    }

    /// Fills slot `i` for sending: `fill` writes into the whole slot and returns the length used.
    pub fn fill(&mut self, i: usize, fill: impl FnOnce(&mut [u8]) -> usize) {
        if let (Some(buf), Some(len)) = (self.bufs.get_mut(i), self.lens.get_mut(i)) {
            *len = fill(&mut buf[..]).min(SLOT_LEN);
        }
    }

    /// Receives up to `capacity` datagrams from non-blocking socket `fd` in one `recvmmsg` call.
    /// Returns how many arrived; `Ok(0)` when none was waiting.
    pub fn recv(&mut self, fd: RawFd) -> io::Result<usize> {
        let n = self.bufs.len();
        for i in 0..n {
            self.iov[i] = libc::iovec { iov_base: self.bufs[i].as_mut_ptr().cast(), iov_len: SLOT_LEN };
            let h = &mut self.hdrs[i];
            *h = empty_hdr();
            h.msg_hdr.msg_iov = &mut self.iov[i];
            h.msg_hdr.msg_iovlen = 1;
            h.msg_hdr.msg_name = (&mut self.peers[i] as *mut libc::sockaddr_storage).cast();
            h.msg_hdr.msg_namelen = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
            h.msg_hdr.msg_control = self.control[i].as_mut_ptr().cast();
            h.msg_hdr.msg_controllen = CONTROL_WORDS * 8;
        }
        // SAFETY: `hdrs[..n]` point at `iov[i]`, `bufs[i]` (SLOT_LEN bytes), `control[i]` and `peers[i]`, all owned by
        // `self` and alive, unmoved, for the duration of the call; `fd` is a socket the caller owns.
        let r = unsafe { libc::recvmmsg(fd, self.hdrs.as_mut_ptr(), n as libc::c_uint, libc::MSG_DONTWAIT, std::ptr::null_mut()) };
        if r < 0 {
            let e = io::Error::last_os_error();
            return if e.kind() == io::ErrorKind::WouldBlock { Ok(0) } else { Err(e) };
        }
        let got = r as usize;
        for i in 0..got {
            self.lens[i] = self.hdrs[i].msg_len as usize;
            self.truncated[i] = self.hdrs[i].msg_hdr.msg_flags & libc::MSG_TRUNC != 0;
            self.stamps[i] = rx_timestamp(&self.hdrs[i].msg_hdr);
        }
        Ok(got)
    }

    /// Sends slots `items[k].0` to `items[k].1` from socket `fd` with `sendmmsg`, never blocking.
    /// Calls `on_fail(slot)` for each packet the kernel refused (full buffer, unreachable, bad
    /// address); those are dropped. Returns how many were refused.
    pub fn send(&mut self, fd: RawFd, items: &[(usize, SocketAddr)], mut on_fail: impl FnMut(usize)) -> usize {
        let items = &items[..items.len().min(self.bufs.len())];
        let mut failed = 0;
        // Slot of each message built, to report failures by slot.
        let mut built = 0;
        for &(slot, to) in items {
            let Some(buf) = self.bufs.get_mut(slot) else {
                failed += 1;
                on_fail(slot);
                continue;
            };
            let len = self.lens[slot].min(SLOT_LEN);
            self.iov[built] = libc::iovec { iov_base: buf.as_mut_ptr().cast(), iov_len: len };
            let name_len = addr_to_storage(to, &mut self.dst[built]);
            let h = &mut self.hdrs[built];
            *h = empty_hdr();
            h.msg_hdr.msg_iov = &mut self.iov[built];
            h.msg_hdr.msg_iovlen = 1;
            h.msg_hdr.msg_name = (&mut self.dst[built] as *mut libc::sockaddr_storage).cast();
            h.msg_hdr.msg_namelen = name_len;
            self.slot_of[built] = slot;
            built += 1;
        }
        let mut start = 0;
        while start < built {
            // SAFETY: `hdrs[start..built]` point at `iov`, `dst` and `bufs` entries owned by `self`,
            // alive and unmoved during the call; `fd` is a socket the caller owns.
            let r = unsafe { libc::sendmmsg(fd, self.hdrs[start..].as_mut_ptr(), (built - start) as libc::c_uint, libc::MSG_DONTWAIT) };
            if r <= 0 {
                // The first remaining message failed: drop it and go on with the rest.
                failed += 1;
                on_fail(self.slot_of[start]);
                start += 1;
            } else {
                start += r as usize;
            }
        }
        failed
    }
}

/// The SCM_TIMESTAMPNS control message of a received message header, if any.
fn rx_timestamp(h: &libc::msghdr) -> Option<u64> {
    if h.msg_controllen == 0 || h.msg_control.is_null() {
        return None;
    }
    // SAFETY: `h` was filled by recvmmsg: msg_control points at our control buffer and
    // msg_controllen is the length the kernel wrote; the CMSG_* macros stay within it.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(h);
        while !c.is_null() {
            if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SCM_TIMESTAMPNS {
                let ts = std::ptr::read_unaligned(libc::CMSG_DATA(c).cast::<libc::timespec>());
                return Some(ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64);
            }
            c = libc::CMSG_NXTHDR(h, c);
        }
    }
    None
}

/// Asks the kernel to stamp every datagram received on `fd` with its arrival time (SO_TIMESTAMPNS),
/// read back with [`PacketBatch::rx_timestamp_ns`]. Used by the load generator to measure latency
/// without counting its own scheduling delays.
pub fn enable_rx_timestamps(fd: RawFd) -> io::Result<()> {
    let on: libc::c_int = 1;
    // SAFETY: `on` is a live c_int and the length passed is its size; `fd` is a socket the caller owns.
    let r = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_TIMESTAMPNS,
            (&on as *const libc::c_int).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::other(format!("setsockopt(SO_TIMESTAMPNS): {}", io::Error::last_os_error())))
    }
}

fn addr_to_storage(a: SocketAddr, st: &mut libc::sockaddr_storage) -> libc::socklen_t {
    *st = zeroed_storage();
    match a {
        SocketAddr::V4(v4) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: v4.port().to_be(),
                sin_addr: libc::in_addr { s_addr: u32::from_ne_bytes(v4.ip().octets()) },
                sin_zero: [0; 8],
            };
            // SAFETY: sockaddr_storage is larger than and aligned for sockaddr_in.
            unsafe { std::ptr::write((st as *mut libc::sockaddr_storage).cast::<libc::sockaddr_in>(), sin) };
            size_of::<libc::sockaddr_in>() as libc::socklen_t
        }
        SocketAddr::V6(v6) => {
            let sin6 = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: v6.port().to_be(),
                sin6_flowinfo: v6.flowinfo(),
                sin6_addr: libc::in6_addr { s6_addr: v6.ip().octets() },
                sin6_scope_id: v6.scope_id(),
            };
            // SAFETY: sockaddr_storage is larger than and aligned for sockaddr_in6.
            unsafe { std::ptr::write((st as *mut libc::sockaddr_storage).cast::<libc::sockaddr_in6>(), sin6) };
            size_of::<libc::sockaddr_in6>() as libc::socklen_t
        }
    }
}

fn storage_to_addr(st: &libc::sockaddr_storage) -> Option<SocketAddr> {
    match i32::from(st.ss_family) {
        libc::AF_INET => {
            // SAFETY: the family says the storage holds a sockaddr_in; storage is aligned for it.
            let sin = unsafe { &*(st as *const libc::sockaddr_storage).cast::<libc::sockaddr_in>() };
            let ip = Ipv4Addr::from(sin.sin_addr.s_addr.to_ne_bytes());
            Some(SocketAddr::V4(SocketAddrV4::new(ip, u16::from_be(sin.sin_port))))
        }
        libc::AF_INET6 => {
            // SAFETY: the family says the storage holds a sockaddr_in6; storage is aligned for it.
            let sin6 = unsafe { &*(st as *const libc::sockaddr_storage).cast::<libc::sockaddr_in6>() };
            let ip = Ipv6Addr::from(sin6.sin6_addr.s6_addr);
            Some(SocketAddr::V6(SocketAddrV6::new(ip, u16::from_be(sin6.sin6_port), sin6.sin6_flowinfo, sin6.sin6_scope_id)))
        }
        _ => None,
    }
}

// ---------------------------------------------------------------------------------------------
// AF_XDP
// ---------------------------------------------------------------------------------------------
//
// The `xdp` crate (0.8) maps the UMEM and the four rings; its ring operations are `unsafe fn`
// because the packets they hand out are raw pointers into the UMEM and the kernel writes into the
// UMEM for as long as the socket is bound. [`Xsk`] owns all of it in one struct, and never lets a
// packet out of its methods (callers see `&mut [u8]` for the duration of a callback), so the two
// conditions the crate states -- "the Umem must outlive the AF_XDP socket" and "packets must not
// outlive the Umem" -- hold by construction.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd};

use xdp::slab::{HeapSlab, Slab as _};
use xdp::socket::{SocketError, XdpSocket, XdpSocketBuilder};
use xdp::umem::{FrameSize, UmemCfgBuilder};
use xdp::{CompletionRing, RingConfigBuilder, RxRing, Umem, WakableFillRing, WakableTxRing};

/// Sizes of one AF_XDP socket. Ring sizes must be powers of two.
#[derive(Debug, Clone, Copy)]
pub struct XskConfig {
    /// UMEM frames (2 KiB each; a frame holds one packet of up to 1792 bytes after the kernel's headroom).
    pub frames: u32,
    /// Entries of each of the fill, RX, TX and completion rings.
    pub ring: u32,
    /// Packets taken from the RX ring per batch.
    pub batch: usize,
    /// Bind in copy mode (`XDP_COPY`): the kernel copies frames; needed on drivers without
    /// zero-copy support such as veth. Otherwise the kernel picks (zero-copy where the driver has it).
    pub force_copy: bool,
}

/// Why an AF_XDP socket could not be set up or driven.
#[derive(Debug, thiserror::Error)]
pub enum XskError {
    // Our input.
    /// Ring or UMEM sizes the crate or the kernel refuses (not a power of two, zero, too large).
    #[error("invalid AF_XDP sizes: {0}")]
    Sizes(String),
    // The kernel refused.
    /// mmap of the UMEM failed (memory, RLIMIT_MEMLOCK without CAP_IPC_LOCK).
    #[error("mmap of the {bytes}-byte UMEM failed: {source}")]
    UmemMap { bytes: usize, source: io::Error },
    /// Registering the UMEM was refused for lack of lockable memory: it is charged to
    /// RLIMIT_MEMLOCK unless the process has CAP_IPC_LOCK.
    #[error(
        "setsockopt(SOL_XDP, XDP_UMEM_REG) of the {bytes}-byte UMEM failed: {source}; the UMEM is charged to \
         RLIMIT_MEMLOCK ({memlock}) unless the process has CAP_IPC_LOCK: raise it (`ulimit -l unlimited`, \
         systemd `LimitMEMLOCK=infinity`)"
    )]
    Memlock { bytes: usize, memlock: String, source: io::Error },
    /// A socket call failed; `call` names it.
    #[error("{call} failed: {source}")]
    Socket { call: String, source: io::Error },
    /// The ring set lacked an RX or TX ring although sizes were non-zero (a bug in us or the crate).
    #[error("internal error: AF_XDP {0} ring missing after setup")]
    MissingRing(&'static str),
}

fn socket_error(e: SocketError) -> XskError {
    match e {
        SocketError::SocketCreation(source) => XskError::Socket { call: "socket(AF_XDP)".into(), source },
        SocketError::SetSockOpt { inner, option } => XskError::Socket { call: format!("setsockopt(SOL_XDP, {option:?})"), source: inner },
        SocketError::GetSockOpt { inner, option } => XskError::Socket { call: format!("getsockopt(SOL_XDP, {option:?})"), source: inner },
        SocketError::RingMap { inner, ring } => XskError::Socket { call: format!("mmap({ring:?} ring)"), source: inner },
        SocketError::Bind(source) => XskError::Socket { call: "bind(AF_XDP)".into(), source },
    }
}

/// RLIMIT_MEMLOCK's soft limit, for error messages.
fn memlock_limit() -> String {
    match nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_MEMLOCK) {
        Ok((soft, _)) if soft == nix::sys::resource::RLIM_INFINITY => "unlimited".to_owned(),
        Ok((soft, _)) => format!("{} KiB", soft / 1024),
        Err(errno) => format!("unknown: getrlimit: {errno}"),
    }
}

/// What the kernel counted for one AF_XDP socket (`getsockopt(XDP_STATISTICS)`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct XskStats {
    pub rx_dropped: u64,
    pub rx_ring_full: u64,
    pub rx_fill_ring_empty: u64,
    pub rx_invalid_descs: u64,
    pub tx_invalid_descs: u64,
}

/// One bound AF_XDP socket with its UMEM and rings. See the section comment above.
pub struct Xsk {
    // Field order is drop order. Slabs and rings first (the slabs hold only addresses; the rings
    // are mmaps of the socket), then the socket -- closing it unbinds it, after which the kernel no
    // longer touches the UMEM -- and the UMEM last. This order is what makes the `xdp` crate's
    // "the Umem must outlive the AF_XDP socket" true for every use below.
    /// Packets taken from the RX ring, being handled; empty between calls.
    rx_slab: HeapSlab,
    /// Packets to put on the TX ring; empty between calls.
    tx_slab: HeapSlab,
    fill: WakableFillRing,
    rx: RxRing,
    tx: WakableTxRing,
    completion: CompletionRing,
    socket: XdpSocket,
    umem: Umem,
    ring_size: usize,
    /// Frames on the fill ring the kernel has not yet turned into RX descriptors.
    fill_outstanding: usize,
    /// Frames on the TX ring not yet returned on the completion ring.
    tx_in_flight: usize,
}

impl std::fmt::Debug for Xsk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Xsk")
            .field("fd", &self.socket.as_raw_fd())
            .field("fill_outstanding", &self.fill_outstanding)
            .field("tx_in_flight", &self.tx_in_flight)
            .finish()
    }
}

impl AsFd for Xsk {
    fn as_fd(&self) -> BorrowedFd<'_> {
        // SAFETY: the descriptor is owned by `self.socket` (an OwnedFd inside XdpSocket), which is
        // open for as long as `self` lives, and the returned borrow cannot outlive `&self`.
        unsafe { BorrowedFd::borrow_raw(self.socket.as_raw_fd()) }
    }
}

impl Xsk {
    /// Creates an AF_XDP socket with its own UMEM and binds it to receive queue `queue` of interface
    /// `ifindex` (in the calling thread's network namespace), with `XDP_USE_NEED_WAKEUP`. The fill
    /// ring is filled before this returns.
    pub fn open(ifindex: u32, queue: u32, cfg: &XskConfig) -> Result<Self, XskError> {
        let umem_cfg = UmemCfgBuilder { frame_size: FrameSize::TwoK, head_room: 0, frame_count: cfg.frames, ..Default::default() }
            .build()
            .map_err(|e| XskError::Sizes(e.to_string()))?;
        let bytes = cfg.frames as usize * 2048;
        let umem = Umem::map(umem_cfg).map_err(|source| XskError::UmemMap { bytes, source })?;
        let ring_cfg = RingConfigBuilder { rx_count: cfg.ring, tx_count: cfg.ring, fill_count: cfg.ring, completion_count: cfg.ring }
            .build()
            .map_err(|e| XskError::Sizes(e.to_string()))?;
        let mut builder = XdpSocketBuilder::new().map_err(socket_error)?;
        let (rings, mut flags) = builder.build_wakable_rings(&umem, ring_cfg).map_err(|e| match e {
            SocketError::SetSockOpt { inner, option: xdp::socket::OptName::UmemRegion }
                if matches!(inner.raw_os_error(), Some(libc::ENOBUFS | libc::EPERM | libc::ENOMEM)) =>
            {
                XskError::Memlock { bytes, memlock: memlock_limit(), source: inner }
            }
            other => socket_error(other),
        })?;
        if cfg.force_copy {
            flags.force_copy();
        }
        let socket = builder.bind(xdp::nic::NicIndex::new(ifindex), queue, flags).map_err(socket_error)?;
        let batch = cfg.batch.max(1);
        let mut xsk = Self {
            rx_slab: HeapSlab::with_capacity(batch),
            tx_slab: HeapSlab::with_capacity(batch),
            fill: rings.fill_ring,
            rx: rings.rx_ring.ok_or(XskError::MissingRing("RX"))?,
            tx: rings.tx_ring.ok_or(XskError::MissingRing("TX"))?,
            completion: rings.completion_ring,
            socket,
            umem,
            ring_size: cfg.ring as usize,
            fill_outstanding: 0,
            tx_in_flight: 0,
        };
        xsk.refill().map_err(|source| XskError::Socket { call: "recvfrom (fill ring wakeup)".into(), source })?;
        Ok(xsk)
    }

    /// Frames on the TX ring the kernel has not completed yet.
    pub fn tx_in_flight(&self) -> usize {
        self.tx_in_flight
    }

    /// Puts every free UMEM frame the fill ring has room for on the fill ring. Returns how many.
    pub fn refill(&mut self) -> io::Result<usize> {
        let room = self.ring_size.saturating_sub(self.fill_outstanding);
        let n = room.min(self.umem.allocatable());
        if n == 0 {
            return Ok(0);
        }
        // No wakeup (`recvfrom`) here: in copy mode the kernel reads the fill ring as packets
        // arrive, and in zero-copy mode the `poll()` the driver sleeps in wakes the driver when the
        // ring flags ask for it.
        // SAFETY: the frames come from `self.umem`, which outlives the socket (field order of `Xsk`).
        let queued = unsafe { self.fill.enqueue(&mut self.umem, n, false) }?;
        self.fill_outstanding += queued;
        Ok(queued)
    }

    /// Takes up to one batch of received frames off the RX ring and calls `handle` on each, in
    /// arrival order, with the frame's bytes (writable, for in-place rewriting). A frame for which
    /// `handle` returns `true` is queued, unchanged in length, for transmission by
    /// [`Xsk::flush_tx`]; the others go back to the UMEM's free frames. Returns how many frames
    /// were received.
    pub fn recv_batch(&mut self, mut handle: impl FnMut(&mut [u8]) -> bool) -> usize {
        // SAFETY: the packets point into `self.umem`. They are only ever held in `self.rx_slab`,
        // `self.tx_slab` (both dropped before `self.umem`, see the field order), the UMEM's free
        // list or the TX ring, and `handle` sees them only as a borrowed slice: none outlives the UMEM.
        let n = unsafe { self.rx.recv(&self.umem, &mut self.rx_slab) };
        self.fill_outstanding = self.fill_outstanding.saturating_sub(n);
        while let Some(mut packet) = self.rx_slab.pop_back() {
            if handle(&mut packet) {
                if let Some(refused) = self.tx_slab.push_front(packet) {
                    self.umem.free_packet(refused);
                }
            } else {
                self.umem.free_packet(packet);
            }
        }
        n
    }

    /// Queues a copy of `bytes` (a whole frame) for transmission by [`Xsk::flush_tx`], in a free
    /// UMEM frame: for packets that did not arrive on this socket (cross-core hand-off). `false`
    /// when no frame is free, `bytes` does not fit one, or a batch is already queued in full.
    pub fn queue_copy(&mut self, bytes: &[u8]) -> bool {
        // SAFETY: the frame comes from `self.umem`; it is only ever held in `self.tx_slab`, the TX
        // ring or the UMEM's free list, none of which outlives the UMEM (field order of `Xsk`).
        let Some(mut packet) = (unsafe { self.umem.alloc() }) else { return false };
        if packet.append(bytes).is_err() {
            self.umem.free_packet(packet);
            return false;
        }
        match self.tx_slab.push_front(packet) {
            None => true,
            Some(refused) => {
                self.umem.free_packet(refused);
                false
            }
        }
    }

    /// Puts the frames queued by [`Xsk::recv_batch`] on the TX ring and kicks the kernel. Frames
    /// the ring has no room for even after reaping completions are given to `on_fail` (for
    /// counting) and freed. Returns how many frames went on the ring.
    pub fn flush_tx(&mut self, mut on_fail: impl FnMut(&[u8])) -> io::Result<usize> {
        let mut sent = 0;
        let mut attempts = 0;
        let mut result = Ok(());
        while !self.tx_slab.is_empty() && attempts < 4 {
            // SAFETY: the queued packets are frames of `self.umem`, which outlives the socket.
            // Without a wakeup the call makes no system call and cannot fail.
            let n = unsafe { self.tx.send(&mut self.tx_slab, false) }.unwrap_or(0);
            self.tx_in_flight += n;
            sent += n;
            if n == 0 {
                // The ring reserves all or nothing: make room, then try again.
                attempts += 1;
                if let Err(e) = self.kick() {
                    result = Err(e);
                    break;
                }
                self.reap();
            }
        }
        while let Some(packet) = self.tx_slab.pop_back() {
            on_fail(&packet);
            self.umem.free_packet(packet);
        }
        if sent > 0 && result.is_ok() {
            result = self.kick();
        }
        result.map(|()| sent)
    }

    /// Asks the kernel to transmit what is on the TX ring (`sendto` with no data). In copy mode the
    /// kernel sends only on this call, a bounded number of frames per call; a busy or full device
    /// is not an error: the caller kicks again.
    pub fn kick(&mut self) -> io::Result<()> {
        if self.tx_in_flight == 0 {
            return Ok(());
        }
        // SAFETY: a zero-length send with null buffer and address is valid for sendto(2); the
        // descriptor is owned by `self.socket` and open.
        let r = unsafe { libc::sendto(self.socket.as_raw_fd(), std::ptr::null(), 0, libc::MSG_DONTWAIT, std::ptr::null(), 0) };
        if r >= 0 {
            return Ok(());
        }
        let e = io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::EAGAIN | libc::EBUSY | libc::ENOBUFS | libc::EINTR) => Ok(()),
            _ => Err(io::Error::new(e.kind(), format!("sendto (AF_XDP TX kick): {e}"))),
        }
    }

    /// Returns the frames the kernel finished sending to the UMEM. Returns how many.
    pub fn reap(&mut self) -> usize {
        let n = self.completion.dequeue(&mut self.umem, self.ring_size);
        self.tx_in_flight = self.tx_in_flight.saturating_sub(n);
        n
    }

    /// Kicks and reaps until the TX ring is empty or `max_kicks` kicks made no progress.
    pub fn drain_tx(&mut self, max_kicks: usize) -> io::Result<()> {
        let mut idle = 0;
        while self.tx_in_flight > 0 && idle < max_kicks {
            self.kick()?;
            if self.reap() == 0 {
                idle += 1;
                std::hint::spin_loop();
            } else {
                idle = 0;
            }
        }
        Ok(())
    }

    /// The kernel's counters for this socket.
    pub fn stats(&self) -> Result<XskStats, XskError> {
        let s = self.socket.statistics().map_err(socket_error)?;
        Ok(XskStats {
            rx_dropped: s.rx_dropped,
            rx_ring_full: s.rx_ring_full,
            rx_fill_ring_empty: s.rx_fill_ring_empty_descs,
            rx_invalid_descs: s.rx_invalid_descs,
            tx_invalid_descs: s.tx_invalid_descs,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::UdpSocket;
    use std::os::fd::AsRawFd;

    #[test]
    fn socket_addresses_round_trip_through_storage() {
        for a in ["127.0.0.1:30000", "[::1]:5004", "[fe80::1%3]:9"] {
            let a: SocketAddr = a.parse().unwrap();
            let mut st = zeroed_storage();
            addr_to_storage(a, &mut st);
            assert_eq!(storage_to_addr(&st), Some(a));
        }
    }

    #[test]
    fn batch_sends_to_many_peers_and_receives_them_in_one_call() {
        let rx = UdpSocket::bind("127.0.0.1:0").unwrap();
        let rx2 = UdpSocket::bind("127.0.0.1:0").unwrap();
        let tx = UdpSocket::bind("127.0.0.1:0").unwrap();
        let mut b = PacketBatch::new(8);
        for i in 0..4 {
            b.fill(i, |buf| {
                buf[..3].copy_from_slice(&[i as u8; 3]);
                3
            });
        }
        let to = [rx.local_addr().unwrap(), rx2.local_addr().unwrap()];
        let items: Vec<_> = (0..4).map(|i| (i, to[i % 2])).collect();
        assert_eq!(b.send(tx.as_raw_fd(), &items, |_| panic!("no send fails")), 0);
        rx.set_nonblocking(true).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(20));
        let mut r = PacketBatch::new(8);
        assert_eq!(r.recv(rx.as_raw_fd()).unwrap(), 2);
        assert_eq!((r.packet(0), r.packet(1)), (&[0u8, 0, 0][..], &[2u8, 2, 2][..]));
        assert_eq!(r.peer(0), Some(tx.local_addr().unwrap()));
        assert_eq!(r.recv(rx.as_raw_fd()).unwrap(), 0, "nothing more waiting");
        assert_eq!(r.rx_timestamp_ns(0), None, "timestamps are off by default");
    }

    #[test]
    fn kernel_receive_timestamps_are_reported_when_enabled() {
        let rx = UdpSocket::bind("127.0.0.1:0").unwrap();
        enable_rx_timestamps(rx.as_raw_fd()).unwrap();
        let tx = UdpSocket::bind("127.0.0.1:0").unwrap();
        let before = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64;
        tx.send_to(b"x", rx.local_addr().unwrap()).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(20));
        let mut r = PacketBatch::new(4);
        assert_eq!(r.recv(rx.as_raw_fd()).unwrap(), 1);
        let ts = r.rx_timestamp_ns(0).expect("timestamp present");
        assert!(ts >= before && ts < before + 1_000_000_000, "{ts} vs {before}");
    }
}
