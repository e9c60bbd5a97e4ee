//! Next-hop MAC addresses for the AF_XDP backend, which writes Ethernet headers itself.
//!
//! ```text
//!   lookup(dst) ─► route (/proc/net/route, this interface) ─► next hop = gateway or dst
//!               ─► cache hit (younger than CACHE_TTL) ─────────► MAC
//!               ─► miss: re-read /proc/net/arp (at most every REREAD_INTERVAL) ─► MAC
//!               ─► still unknown: prompt the kernel to resolve it (an empty UDP datagram to the
//!                  next hop's discard port through an ordinary socket, at most once per
//!                  PROMPT_INTERVAL per address) and report `Unresolved`: the caller drops the
//!                  packet and counts it as no route; a later packet finds the MAC.
//! ```
//!
//! The tables read are those of the network namespace the process runs in. Only complete entries
//! (`ATF_COM`) on the AF_XDP interface count. Reads happen on misses only and are rate-limited, so
//! the fast path is one hash lookup. IPv6 (the kernel's ND table, not in procfs) is not supported
//! yet: such lookups fail with [`NeighbourError::Ipv6Unsupported`]. rtnetlink would serve both and
//! report changes as they happen; procfs was chosen for a first version without a netlink client.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

/// How long a MAC read from the ARP table is used before it is read again.
pub const CACHE_TTL: Duration = Duration::from_secs(5);
/// Least time between two reads of the kernel tables on misses.
pub const REREAD_INTERVAL: Duration = Duration::from_millis(20);
/// Least time between two resolution prompts for one address.
pub const PROMPT_INTERVAL: Duration = Duration::from_secs(1);
/// Port the resolution prompt is sent to (discard, RFC 863).
const PROMPT_PORT: u16 = 9;
/// `ATF_COM`: the entry is complete (the MAC is known).
const ATF_COM: u32 = 0x2;

/// Why no MAC address is known for a destination.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum NeighbourError {
    /// The kernel does not (yet) know the next hop's MAC; resolution was prompted.
    #[error("next hop {0} not resolved yet (ARP)")]
    Unresolved(Ipv4Addr),
    /// No route through the AF_XDP interface reaches the destination.
    #[error("no route to {0} through the AF_XDP interface")]
    NoRoute(IpAddr),
    /// IPv6 next hops are not looked up yet.
    #[error("IPv6 next hop {0}: neighbour discovery lookup is not supported yet")]
    Ipv6Unsupported(IpAddr),
}

/// One IPv4 route of the interface, from /proc/net/route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Route {
    dest: u32,
    mask: u32,
    gateway: Option<Ipv4Addr>,
}

/// The neighbour cache of one interface. See the module documentation.
#[derive(Debug)]
pub struct Neighbours {
    interface: String,
    macs: HashMap<Ipv4Addr, ([u8; 6], Instant)>,
    routes: Vec<Route>,
    last_read: Option<Instant>,
    prompted: HashMap<Ipv4Addr, Instant>,
    prompt_socket: Option<UdpSocket>,
    /// Prompts sent (datagrams handed to the kernel).
    pub prompts: u64,
}

impl Neighbours {
    pub fn new(interface: &str) -> Self {
        Self {
            interface: interface.to_owned(),
            macs: HashMap::new(),
            routes: Vec::new(),
            last_read: None,
            prompted: HashMap::new(),
            prompt_socket: None,
            prompts: 0,
        }
    }

    /// Test support: a complete entry for on-link `ip`, as if read from the ARP table at `now`, and
    /// an on-link route for it.
    #[cfg(test)]
    pub(crate) fn insert_for_test(&mut self, ip: Ipv4Addr, mac: [u8; 6], now: Instant) {
        self.routes.push(Route { dest: u32::from(ip), mask: u32::MAX, gateway: None });
        self.macs.insert(ip, (mac, now));
        self.last_read = Some(now);
    }

    /// The MAC address to send a packet for `dst` to.
    pub fn lookup(&mut self, dst: IpAddr, now: Instant) -> Result<[u8; 6], NeighbourError> {
        let IpAddr::V4(dst4) = dst else { return Err(NeighbourError::Ipv6Unsupported(dst)) };
        if let Some(hop) = self.next_hop(dst4) {
            if let Some(&(mac, at)) = self.macs.get(&hop) {
                if now.saturating_duration_since(at) < CACHE_TTL {
                    return Ok(mac);
                }
            }
        }
        if self.last_read.is_none_or(|t| now.saturating_duration_since(t) >= REREAD_INTERVAL) {
            self.reread(now);
        }
        let hop = self.next_hop(dst4).ok_or(NeighbourError::NoRoute(dst))?;
        if let Some(&(mac, _)) = self.macs.get(&hop) {
            return Ok(mac);
        }
        self.prompt(hop, now);
        Err(NeighbourError::Unresolved(hop))
    }

    fn next_hop(&self, dst: Ipv4Addr) -> Option<Ipv4Addr> {
        let d = u32::from(dst);
        self.routes.iter().filter(|r| d & r.mask == r.dest).max_by_key(|r| r.mask.count_ones()).map(|r| r.gateway.unwrap_or(dst))
    }

    fn reread(&mut self, now: Instant) {
        self.last_read = Some(now);
        if let Ok(text) = std::fs::read_to_string("/proc/net/route") {
            self.routes = parse_routes(&text, &self.interface);
        }
        if let Ok(text) = std::fs::read_to_string("/proc/net/arp") {
            self.macs = parse_arp(&text, &self.interface).into_iter().map(|(ip, mac)| (ip, (mac, now))).collect();
        }
    }

    fn prompt(&mut self, hop: Ipv4Addr, now: Instant) {
        if self.prompted.get(&hop).is_some_and(|t| now.saturating_duration_since(*t) < PROMPT_INTERVAL) {
            return;
        }
        self.prompted.insert(hop, now);
        if self.prompted.len() > 4096 {
            self.prompted.retain(|_, t| now.saturating_duration_since(*t) < PROMPT_INTERVAL);
        }
        if self.prompt_socket.is_none() {
            self.prompt_socket = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)).ok();
            if let Some(s) = &self.prompt_socket {
                let _ = s.set_nonblocking(true);
            }
        }
        if let Some(s) = &self.prompt_socket {
            if s.send_to(&[], SocketAddr::new(IpAddr::V4(hop), PROMPT_PORT)).is_ok() {
                self.prompts += 1;
            }
        }
    }
}

/// Complete IPv4 entries of `interface` in /proc/net/arp:
/// `IP address  HW type  Flags  HW address  Mask  Device`.
fn parse_arp(text: &str, interface: &str) -> Vec<(Ipv4Addr, [u8; 6])> {
    text.lines()
        .skip(1)
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            let [ip, _hw, flags, mac, _mask, dev] = f.as_slice() else { return None };
            if *dev != interface {
                return None;
            }
            let flags = u32::from_str_radix(flags.trim_start_matches("0x"), 16).ok()?;
            if flags & ATF_COM == 0 {
                return None;
            }
            Some((ip.parse().ok()?, parse_mac(mac)?))
        })
        .collect()
}

fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let mut mac = [0u8; 6];
    let mut parts = s.split(':');
    for b in &mut mac {
        *b = u8::from_str_radix(parts.next()?, 16).ok()?;
    }
    if parts.next().is_some() || mac == [0; 6] {
        return None;
    }
    Some(mac)
}

/// Up routes of `interface` in /proc/net/route (fields in host-order hex of network-order words):
/// `Iface Destination Gateway Flags RefCnt Use Metric Mask MTU Window IRTT`.
fn parse_routes(text: &str, interface: &str) -> Vec<Route> {
    const RTF_UP: u32 = 0x1;
    const RTF_GATEWAY: u32 = 0x2;
    let word = |s: &str| u32::from_str_radix(s, 16).ok().map(|v| u32::from_be_bytes(v.to_ne_bytes()));
    text.lines()
        .skip(1)
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() < 8 || f[0] != interface {
                return None;
            }
            let flags = u32::from_str_radix(f[3], 16).ok()?;
            if flags & RTF_UP == 0 {
                return None;
            }
            let (dest, gw, mask) = (word(f[1])?, word(f[2])?, word(f[7])?);
            let gateway = (flags & RTF_GATEWAY != 0).then(|| Ipv4Addr::from(gw));
            Some(Route { dest: dest & mask, mask, gateway })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const ARP: &str = "IP address       HW type     Flags       HW address            Mask     Device
10.77.1.1        0x1         0x2         0a:1b:2c:3d:4e:5f     *        mpdut0
10.77.1.3        0x1         0x0         00:00:00:00:00:00     *        mpdut0
10.77.1.9        0x1         0x2         02:00:00:00:00:09     *        other0
";
    // 10.77.1.0/24 on-link and a default route via 10.77.1.254 on mpdut0, as a little-endian host prints them.
    const ROUTE: &str = "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT
mpdut0\t00000000\tFE014D0A\t0003\t0\t0\t0\t00000000\t0\t0\t0
mpdut0\t00014D0A\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0
other0\t0000A8C0\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0
";

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    #[test]
    fn only_complete_arp_entries_of_the_interface_are_used() {
        assert_eq!(parse_arp(ARP, "mpdut0"), vec![(ip("10.77.1.1"), [0x0a, 0x1b, 0x2c, 0x3d, 0x4e, 0x5f])]);
        assert_eq!(parse_arp("garbage\nnot an entry\n", "mpdut0"), vec![]);
    }

    #[test]
    fn next_hop_is_the_longest_matching_route_of_the_interface() {
        let n = Neighbours { routes: parse_routes(ROUTE, "mpdut0"), ..Neighbours::new("mpdut0") };
        assert_eq!(n.routes.len(), 2);
        assert_eq!(n.next_hop(ip("10.77.1.3")), Some(ip("10.77.1.3")), "on-link");
        assert_eq!(n.next_hop(ip("192.0.2.1")), Some(ip("10.77.1.254")), "default route");
        let other = Neighbours { routes: parse_routes(ROUTE, "other0"), ..Neighbours::new("other0") };
        assert_eq!(other.next_hop(ip("10.77.1.3")), None);
    }

    #[test]
    fn an_ipv6_next_hop_is_reported_unsupported() {
        let mut n = Neighbours::new("mpdut0");
        let dst: IpAddr = "fd00::1".parse().unwrap();
        assert_eq!(n.lookup(dst, Instant::now()), Err(NeighbourError::Ipv6Unsupported(dst)));
    }

    #[test]
    fn macs_are_parsed_strictly() {
        assert_eq!(parse_mac("02:00:00:00:00:0a"), Some([2, 0, 0, 0, 0, 10]));
        assert_eq!(parse_mac("02:00:00:00:00"), None);
        assert_eq!(parse_mac("02:00:00:00:00:0a:0b"), None);
        assert_eq!(parse_mac("00:00:00:00:00:00"), None);
    }
}
