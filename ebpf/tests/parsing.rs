//! The program's header parsing, fed hand-built Ethernet frames from gen (an AF_PACKET socket,
//! through `python3`, so no frame is shaped by gen's own stack): VLAN tags, IPv4 options and
//! fragments, IPv6 extension headers, the port-range edges and truncated headers, each landing in
//! exactly one counter. Root only; without privileges it prints `skipped: …` and returns.

mod common;

use common::*;
use ebpf::{SteerStats, XdpMode};

/// Copies of each frame sent.
const K: u64 = 10;

const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const ETH_P_ARP: u16 = 0x0806;
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88a8;
const IPPROTO_TCP: u8 = 6;
const IPPROTO_UDP: u8 = 17;
const IPV6_HOP_BY_HOP: u8 = 0;
const IPV6_FRAGMENT: u8 = 44;

struct Frames {
    dst: [u8; 6],
    src: [u8; 6],
}

impl Frames {
    fn eth(&self, tags: &[u16], ethertype: u16, payload: &[u8]) -> Vec<u8> {
        let mut frame = Vec::new();
        frame.extend_from_slice(&self.dst);
        frame.extend_from_slice(&self.src);
        for &tpid in tags {
            frame.extend_from_slice(&tpid.to_be_bytes());
            frame.extend_from_slice(&7u16.to_be_bytes()); // VLAN 7
        }
        frame.extend_from_slice(&ethertype.to_be_bytes());
        frame.extend_from_slice(payload);
        frame
    }
}

/// An IPv4 packet from gen to dut: `options` (a multiple of 4 bytes) after the fixed header,
/// `frag` the flags-and-offset field, a valid header checksum.
fn ipv4(proto: u8, options: &[u8], frag: u16, payload: &[u8]) -> Vec<u8> {
    assert_eq!(options.len() % 4, 0);
    let header_len = 20 + options.len();
    let total = (header_len + payload.len()) as u16;
    let mut ip = vec![0x40 | (header_len / 4) as u8, 0];
    ip.extend_from_slice(&total.to_be_bytes());
    ip.extend_from_slice(&[0x12, 0x34]);
    ip.extend_from_slice(&frag.to_be_bytes());
    ip.extend_from_slice(&[64, proto, 0, 0]);
    ip.extend_from_slice(&[10, 77, 1, 1, 10, 77, 1, 2]);
    ip.extend_from_slice(options);
    let sum = checksum(&ip, 0);
    ip[10..12].copy_from_slice(&sum.to_be_bytes());
    ip.extend_from_slice(payload);
    ip
}

fn v6_addr(last: u8) -> [u8; 16] {
    let mut addr = [0u8; 16];
    addr[..4].copy_from_slice(&[0xfd, 0x77, 0, 1]);
    addr[15] = last;
    addr
}

/// An IPv6 packet from gen to dut.
fn ipv6(next: u8, payload: &[u8]) -> Vec<u8> {
    let mut ip = vec![0x60, 0, 0, 0];
    ip.extend_from_slice(&(payload.len() as u16).to_be_bytes());
    ip.extend_from_slice(&[next, 64]);
    ip.extend_from_slice(&v6_addr(1));
    ip.extend_from_slice(&v6_addr(2));
    ip.extend_from_slice(payload);
    ip
}

/// A UDP datagram with a 4-byte payload; checksum 0 (none) unless `v6` asks for the mandatory one.
fn udp(dport: u16, v6: bool) -> Vec<u8> {
    let mut udp = Vec::new();
    udp.extend_from_slice(&40000u16.to_be_bytes());
    udp.extend_from_slice(&dport.to_be_bytes());
    udp.extend_from_slice(&12u16.to_be_bytes());
    udp.extend_from_slice(&[0, 0, 0xde, 0xad, 0xbe, 0xef]);
    if v6 {
        let mut pseudo = Vec::new();
        pseudo.extend_from_slice(&v6_addr(1));
        pseudo.extend_from_slice(&v6_addr(2));
        pseudo.extend_from_slice(&(udp.len() as u32).to_be_bytes());
        pseudo.extend_from_slice(&[0, 0, 0, IPPROTO_UDP]);
        let sum = checksum(&udp, sum_words(&pseudo));
        udp[6..8].copy_from_slice(&sum.to_be_bytes());
    }
    udp
}

fn sum_words(bytes: &[u8]) -> u32 {
    bytes.chunks(2).map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]))).sum()
}

fn checksum(bytes: &[u8], initial: u32) -> u16 {
    let mut sum = initial + sum_words(bytes);
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Sends each frame `K` times from gen's interface, raw.
fn send_raw(topo: &Topology, frames: &[Vec<u8>]) {
    const SCRIPT: &str = "import socket, sys\n\
        s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)\n\
        s.bind((sys.argv[1], 0))\n\
        for _ in range(int(sys.argv[2])):\n\
        \x20   for h in sys.argv[3:]:\n\
        \x20       s.send(bytes.fromhex(h))\n";
    let count = K.to_string();
    let mut args = vec!["-c".to_owned(), SCRIPT.to_owned(), topo.gen_if(), count];
    args.extend(frames.iter().map(|f| hex(f)));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = topo.exec(&topo.gen(), "python3", &args);
    assert!(out.status.success(), "python3 AF_PACKET sender: {}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn each_kind_of_frame_lands_in_exactly_one_counter() {
    let Some(topo) = Topology::up("p") else {
        return;
    };
    // Nothing but the frames below may reach dut: gen's own IPv6 (router solicitations, MLD) is
    // switched off, and pinned neighbours spare dut's replies an ARP or ND exchange.
    topo.pin_neighbours();
    let off = topo.exec(&topo.gen(), "sysctl", &["-qw", &format!("net.ipv6.conf.{}.disable_ipv6=1", topo.gen_if())]);
    assert!(off.status.success(), "disable IPv6 on gen: {}", String::from_utf8_lossy(&off.stderr));
    let Some(steering) = attach(&topo, XdpMode::Auto) else {
        return;
    };
    let media4 = udp_socket(&topo.dut(), &format!("{DUT_V4}:{MEDIA_MIN}"));
    let media6 = udp_socket(&topo.dut(), &format!("[{DUT_V6}]:{MEDIA_MIN}"));
    let before = steering.stats().unwrap();

    let f = Frames { dst: topo.mac(&topo.dut(), &topo.dut_if()), src: topo.mac(&topo.gen(), &topo.gen_if()) };
    let nop_options = [1, 1, 1, 0]; // NOP NOP NOP EOL: IHL 6
    let no_xsk = vec![
        // IPv4 with options: the kernel socket must get these intact, proving the IHL skip.
        f.eth(&[], ETH_P_IP, &ipv4(IPPROTO_UDP, &nop_options, 0, &udp(MEDIA_MIN, false))),
        f.eth(&[], ETH_P_IP, &ipv4(IPPROTO_UDP, &[], 0x4000, &udp(MEDIA_MAX, false))), // DF is fine
        f.eth(&[ETH_P_8021Q], ETH_P_IP, &ipv4(IPPROTO_UDP, &[], 0, &udp(MEDIA_MIN, false))),
        f.eth(&[ETH_P_8021AD], ETH_P_IP, &ipv4(IPPROTO_UDP, &[], 0, &udp(MEDIA_MAX, false))),
        f.eth(&[], ETH_P_IPV6, &ipv6(IPPROTO_UDP, &udp(MEDIA_MIN, true))),
        f.eth(&[ETH_P_8021Q], ETH_P_IPV6, &ipv6(IPPROTO_UDP, &udp(MEDIA_MAX, true))),
    ];
    let other_port = vec![
        f.eth(&[], ETH_P_IP, &ipv4(IPPROTO_UDP, &[], 0, &udp(MEDIA_MIN - 1, false))),
        f.eth(&[], ETH_P_IP, &ipv4(IPPROTO_UDP, &nop_options, 0, &udp(MEDIA_MAX + 1, false))),
        f.eth(&[], ETH_P_IPV6, &ipv6(IPPROTO_UDP, &udp(SIP_PORT, true))),
    ];
    let fragment = vec![
        f.eth(&[], ETH_P_IP, &ipv4(IPPROTO_UDP, &[], 0x2000, &udp(MEDIA_MIN, false))), // MF
        f.eth(&[], ETH_P_IP, &ipv4(IPPROTO_UDP, &[], 185, &udp(MEDIA_MIN, false))),    // offset 1480
        f.eth(&[], ETH_P_IPV6, &ipv6(IPV6_FRAGMENT, &[IPPROTO_UDP, 0, 0, 1, 0, 0, 0, 1])),
    ];
    let not_udp = vec![
        f.eth(&[], ETH_P_IP, &ipv4(IPPROTO_TCP, &[], 0, &udp(MEDIA_MIN, false))),
        f.eth(&[], ETH_P_IPV6, &ipv6(IPV6_HOP_BY_HOP, &[IPPROTO_UDP, 0, 1, 4, 0, 0, 0, 0])),
        f.eth(&[], ETH_P_ARP, &[0, 1, 8, 0, 6, 4, 0, 1]), // an ARP header cut short: still not UDP
    ];
    let malformed = vec![
        f.eth(&[], ETH_P_IP, &ipv4(IPPROTO_UDP, &[], 0, &udp(MEDIA_MIN, false))[..24]), // UDP cut
        f.eth(&[], ETH_P_IP, &{
            let mut ip = ipv4(IPPROTO_UDP, &[], 0, &udp(MEDIA_MIN, false));
            ip[0] = 0x44; // IHL 4
            ip
        }),
        f.eth(&[], ETH_P_IP, &{
            let mut ip = ipv4(IPPROTO_UDP, &[], 0, &udp(MEDIA_MIN, false));
            ip[0] = 0x4f; // IHL 15: the UDP header would start past the frame's end
            ip
        }),
        f.eth(&[], ETH_P_IP, &[0x45, 0, 0, 20]),                         // IPv4 header cut
        f.eth(&[], ETH_P_IP, &ipv6(IPPROTO_UDP, &udp(MEDIA_MIN, true))), // IPv6 under IPv4's type
        f.eth(&[], ETH_P_IPV6, &{
            let mut ip = ipv6(IPPROTO_UDP, &udp(MEDIA_MIN, true));
            ip[0] = 0x40; // version 4
            ip
        }),
        f.eth(&[], ETH_P_IPV6, &ipv6(IPPROTO_UDP, &udp(MEDIA_MIN, true))[..44]), // UDP cut
        f.eth(&[], ETH_P_8021Q, &[0, 7]),                                        // VLAN tag cut
    ];
    let all: Vec<Vec<u8>> = [&no_xsk, &other_port, &fragment, &not_udp, &malformed].into_iter().flatten().cloned().collect();
    send_raw(&topo, &all);

    let expected = SteerStats {
        redirected: 0,
        passed_no_xsk: K * no_xsk.len() as u64,
        passed_not_udp: K * not_udp.len() as u64,
        passed_other_port: K * other_port.len() as u64,
        passed_fragment: K * fragment.len() as u64,
        malformed: K * malformed.len() as u64,
    };
    let target = before.total() + expected.total();
    let after = stats_when(&steering, |s| s.total() >= target);
    let delta = SteerStats {
        redirected: after.redirected - before.redirected,
        passed_no_xsk: after.passed_no_xsk - before.passed_no_xsk,
        passed_not_udp: after.passed_not_udp - before.passed_not_udp,
        passed_other_port: after.passed_other_port - before.passed_other_port,
        passed_fragment: after.passed_fragment - before.passed_fragment,
        malformed: after.malformed - before.malformed,
    };
    assert_eq!(delta, expected);

    // The untagged media datagrams went on to the kernel sockets: the option-bearing IPv4 one and
    // the DF one on port MEDIA_MIN / MEDIA_MAX (only MEDIA_MIN has a socket), the IPv6 one.
    assert_eq!(receive_up_to(&media4, K as usize).len(), K as usize, "IPv4 with options");
    assert_eq!(receive_up_to(&media6, K as usize).len(), K as usize, "IPv6");
}
