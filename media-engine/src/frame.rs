//! Ethernet/IPv4/IPv6/UDP frames as the AF_XDP backend sees them: parsed in place, and rewritten in
//! place for forwarding (addresses, ports, MACs, hop limit, IPv4 header checksum, full UDP checksum)
//! so the received frame is transmitted as is — the RTP payload is neither copied nor changed.
//!
//! ```text
//!  | dst MAC | src MAC | [802.1Q] | type | IPv4 (ihl·4) or IPv6 (40) | UDP (8) | RTP/RTCP payload … |
//!  └──────────────── rewritten ─────────────────────────────────────────────┘ └── untouched ──┘
//! ```
//!
//! Parsing is checked (a short or odd frame is an error, never a panic). IPv4 fragments and IPv6
//! extension headers are refused: the XDP program passes those to the kernel before they get here.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

const ETH_LEN: usize = 14;
const VLAN_LEN: usize = 4;
const ETHERTYPE_IPV4: u16 = 0x0800;
const ETHERTYPE_IPV6: u16 = 0x86dd;
const ETHERTYPE_VLAN: u16 = 0x8100;
const IPPROTO_UDP: u8 = 17;
const UDP_LEN: usize = 8;
/// Hop limit for forwarded packets: the relay is the packet's new source, as a socket send would be.
pub const TTL: u8 = 64;

/// Why a frame is not a UDP datagram the relay handles.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("frame truncated")]
    Truncated,
    #[error("not IPv4 or IPv6")]
    NotIp,
    #[error("not UDP")]
    NotUdp,
    #[error("IP fragment")]
    Fragment,
    #[error("length fields disagree with the frame")]
    BadLength,
    #[error("addresses of different IP families")]
    FamilyMismatch,
}

/// Where the parts of a UDP frame are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UdpFrame {
    /// Offset of the IP header.
    pub l3: usize,
    /// Offset of the UDP header.
    pub l4: usize,
    /// Offset and length of the UDP payload.
    pub payload: usize,
    pub payload_len: usize,
    pub src: SocketAddr,
    pub dst: SocketAddr,
}

fn be16(b: &[u8], at: usize) -> Result<u16, FrameError> {
    let s = b.get(at..at + 2).ok_or(FrameError::Truncated)?;
    Ok(u16::from_be_bytes([s[0], s[1]]))
}

/// Parses an Ethernet frame carrying IPv4 or IPv6 UDP (one optional VLAN tag).
pub fn parse(frame: &[u8]) -> Result<UdpFrame, FrameError> {
    let mut l3 = ETH_LEN;
    let mut ethertype = be16(frame, 12)?;
    if ethertype == ETHERTYPE_VLAN {
        ethertype = be16(frame, 16)?;
        l3 += VLAN_LEN;
    }
    let (l4, src_ip, dst_ip, ip_payload_end) = match ethertype {
        ETHERTYPE_IPV4 => {
            let h = frame.get(l3..l3 + 20).ok_or(FrameError::Truncated)?;
            if h[0] >> 4 != 4 {
                return Err(FrameError::NotIp);
            }
            let ihl = usize::from(h[0] & 0x0f) * 4;
            if ihl < 20 {
                return Err(FrameError::BadLength);
            }
            let flags_frag = u16::from_be_bytes([h[6], h[7]]);
            if flags_frag & 0x3fff != 0 {
                return Err(FrameError::Fragment);
            }
            if h[9] != IPPROTO_UDP {
                return Err(FrameError::NotUdp);
            }
            let total = usize::from(u16::from_be_bytes([h[2], h[3]]));
            if total < ihl || l3 + total > frame.len() {
                return Err(FrameError::BadLength);
            }
            let src = Ipv4Addr::new(h[12], h[13], h[14], h[15]);
            let dst = Ipv4Addr::new(h[16], h[17], h[18], h[19]);
            (l3 + ihl, IpAddr::V4(src), IpAddr::V4(dst), l3 + total)
        }
        ETHERTYPE_IPV6 => {
            let h = frame.get(l3..l3 + 40).ok_or(FrameError::Truncated)?;
            if h[0] >> 4 != 6 {
                return Err(FrameError::NotIp);
            }
            if h[6] != IPPROTO_UDP {
                return Err(FrameError::NotUdp);
            }
            let plen = usize::from(u16::from_be_bytes([h[4], h[5]]));
            if l3 + 40 + plen > frame.len() {
                return Err(FrameError::BadLength);
            }
            let mut s = [0u8; 16];
            s.copy_from_slice(&h[8..24]);
            let mut d = [0u8; 16];
            d.copy_from_slice(&h[24..40]);
            (l3 + 40, IpAddr::V6(Ipv6Addr::from(s)), IpAddr::V6(Ipv6Addr::from(d)), l3 + 40 + plen)
        }
        _ => return Err(FrameError::NotIp),
    };
    let sport = be16(frame, l4)?;
    let dport = be16(frame, l4 + 2)?;
    let ulen = usize::from(be16(frame, l4 + 4)?);
    if ulen < UDP_LEN || l4 + ulen > ip_payload_end {
        return Err(FrameError::BadLength);
    }
    Ok(UdpFrame {
        l3,
        l4,
        payload: l4 + UDP_LEN,
        payload_len: ulen - UDP_LEN,
        src: SocketAddr::new(src_ip, sport),
        dst: SocketAddr::new(dst_ip, dport),
    })
}

/// Ones'-complement sum of `data` added to `sum` (RFC 1071), not yet folded.
fn sum16(mut sum: u32, data: &[u8]) -> u32 {
    let mut chunks = data.chunks_exact(2);
    for c in &mut chunks {
        sum += u32::from(u16::from_be_bytes([c[0], c[1]]));
    }
    if let [last] = chunks.remainder() {
        sum += u32::from(*last) << 8;
    }
    sum
}

fn fold(mut sum: u32) -> u16 {
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// The UDP checksum of `udp` (header with its checksum field zeroed, and payload) for the pseudo
/// header of `src`/`dst`. A computed zero is sent as 0xffff (RFC 768).
pub fn udp_checksum(src: IpAddr, dst: IpAddr, udp: &[u8]) -> u16 {
    let mut sum = 0u32;
    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            sum = sum16(sum, &s.octets());
            sum = sum16(sum, &d.octets());
            sum += u32::from(IPPROTO_UDP);
            sum += udp.len() as u32;
        }
        (s, d) => {
            let v6 = |a: IpAddr| match a {
                IpAddr::V6(a) => a.octets(),
                IpAddr::V4(a) => a.to_ipv6_mapped().octets(),
            };
            sum = sum16(sum, &v6(s));
            sum = sum16(sum, &v6(d));
            sum += udp.len() as u32;
            sum += u32::from(IPPROTO_UDP);
        }
    }
    let c = fold(sum16(sum, udp));
    if c == 0 {
        0xffff
    } else {
        c
    }
}

/// IPv4 header checksum of `header` (its checksum field must be zero).
pub fn ipv4_checksum(header: &[u8]) -> u16 {
    fold(sum16(0, header))
}

/// New addressing for a forwarded frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rewrite {
    pub src_mac: [u8; 6],
    pub dst_mac: [u8; 6],
    pub src: SocketAddr,
    pub dst: SocketAddr,
}

/// Rewrites a parsed UDP frame in place for forwarding: MACs, IP addresses, ports, TTL / hop limit
/// (reset to [`TTL`]), IPv4 header checksum and the full UDP checksum. The payload is not touched.
pub fn rewrite(frame: &mut [u8], parsed: &UdpFrame, r: &Rewrite) -> Result<(), FrameError> {
    if r.src.is_ipv4() != r.dst.is_ipv4() || r.src.is_ipv4() != parsed.src.is_ipv4() {
        return Err(FrameError::FamilyMismatch);
    }
    let udp_end = parsed.payload + parsed.payload_len;
    if udp_end > frame.len() {
        return Err(FrameError::Truncated);
    }
    frame[0..6].copy_from_slice(&r.dst_mac);
    frame[6..12].copy_from_slice(&r.src_mac);
    let l3 = parsed.l3;
    match (r.src.ip(), r.dst.ip()) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            let ihl = parsed.l4 - l3;
            let h = &mut frame[l3..l3 + ihl];
            h[8] = TTL;
            h[12..16].copy_from_slice(&s.octets());
            h[16..20].copy_from_slice(&d.octets());
            h[10..12].fill(0);
            let c = ipv4_checksum(h);
            h[10..12].copy_from_slice(&c.to_be_bytes());
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            let h = &mut frame[l3..l3 + 40];
            h[7] = TTL;
            h[8..24].copy_from_slice(&s.octets());
            h[24..40].copy_from_slice(&d.octets());
        }
        _ => return Err(FrameError::FamilyMismatch),
    }
    let udp = &mut frame[parsed.l4..udp_end];
    udp[0..2].copy_from_slice(&r.src.port().to_be_bytes());
    udp[2..4].copy_from_slice(&r.dst.port().to_be_bytes());
    udp[6..8].fill(0);
    let c = udp_checksum(r.src.ip(), r.dst.ip(), udp);
    udp[6..8].copy_from_slice(&c.to_be_bytes());
    Ok(())
}

/// Builds an Ethernet/IP/UDP frame around `payload` into `buf` (tests and generated media); returns
/// its length.
pub fn build(buf: &mut [u8], r: &Rewrite, payload: &[u8]) -> Result<usize, FrameError> {
    let ip_len = if r.src.is_ipv4() { 20 } else { 40 };
    let total = ETH_LEN + ip_len + UDP_LEN + payload.len();
    let out = buf.get_mut(..total).ok_or(FrameError::Truncated)?;
    out.fill(0);
    let udp_len = (UDP_LEN + payload.len()) as u16;
    if r.src.is_ipv4() {
        out[12..14].copy_from_slice(&ETHERTYPE_IPV4.to_be_bytes());
        let h = &mut out[ETH_LEN..ETH_LEN + 20];
        h[0] = 0x45;
        h[2..4].copy_from_slice(&(20 + udp_len).to_be_bytes());
        h[6] = 0x40; // don't fragment
        h[9] = IPPROTO_UDP;
    } else {
        out[12..14].copy_from_slice(&ETHERTYPE_IPV6.to_be_bytes());
        let h = &mut out[ETH_LEN..ETH_LEN + 40];
        h[0] = 0x60;
        h[4..6].copy_from_slice(&udp_len.to_be_bytes());
        h[6] = IPPROTO_UDP;
    }
    let l4 = ETH_LEN + ip_len;
    out[l4 + 4..l4 + 6].copy_from_slice(&udp_len.to_be_bytes());
    out[l4 + UDP_LEN..].copy_from_slice(payload);
    let parsed = UdpFrame { l3: ETH_LEN, l4, payload: l4 + UDP_LEN, payload_len: payload.len(), src: r.src, dst: r.dst };
    rewrite(out, &parsed, r)?;
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }
    const MAC_A: [u8; 6] = [2, 0, 0, 0, 0, 0xa];
    const MAC_B: [u8; 6] = [2, 0, 0, 0, 0, 0xb];

    /// Independent check: a received UDP datagram's checksum over the pseudo header, including the
    /// checksum field itself, sums to 0xffff (RFC 1071), i.e. folds to zero.
    fn checksum_verifies(frame: &[u8]) -> bool {
        let p = parse(frame).unwrap();
        let udp = &frame[p.l4..p.payload + p.payload_len];
        let mut sum = 0u32;
        match (p.src.ip(), p.dst.ip()) {
            (IpAddr::V4(s), IpAddr::V4(d)) => {
                sum = sum16(sum16(sum, &s.octets()), &d.octets()) + 17 + udp.len() as u32;
                let ip = &frame[p.l3..p.l4];
                if fold(sum16(0, ip)) != 0 {
                    return false;
                }
            }
            (IpAddr::V6(s), IpAddr::V6(d)) => {
                sum = sum16(sum16(sum, &s.octets()), &d.octets()) + 17 + udp.len() as u32;
            }
            _ => return false,
        }
        fold(sum16(sum, udp)) == 0
    }

    #[test]
    fn ipv4_header_checksum_matches_the_rfc_1071_example_header() {
        // A textbook IPv4 header (checksum 0xb861 when the field is zero).
        let h = [0x45, 0x00, 0x00, 0x73, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11, 0, 0, 0xc0, 0xa8, 0x00, 0x01, 0xc0, 0xa8, 0x00, 0xc7];
        assert_eq!(ipv4_checksum(&h), 0xb861);
    }

    #[test]
    fn built_frames_parse_back_with_valid_checksums() {
        let payload: Vec<u8> = (0..172u8).collect();
        for (s, d) in [("10.0.0.1:30000", "10.0.0.2:4000"), ("[fd00::1]:30000", "[fd00::2]:4000")] {
            let r = Rewrite { src_mac: MAC_A, dst_mac: MAC_B, src: addr(s), dst: addr(d) };
            let mut buf = [0u8; 2048];
            let n = build(&mut buf, &r, &payload).unwrap();
            let p = parse(&buf[..n]).unwrap();
            assert_eq!((p.src, p.dst, p.payload_len), (r.src, r.dst, 172));
            assert_eq!(&buf[p.payload..p.payload + 172], &payload[..]);
            assert!(checksum_verifies(&buf[..n]), "{s} -> {d}");
        }
    }

    #[test]
    fn forwarding_rewrite_changes_headers_only_and_keeps_checksums_valid() {
        let payload = b"\x80\x00\x12\x34rtp payload bytes";
        let inbound = Rewrite { src_mac: MAC_B, dst_mac: MAC_A, src: addr("192.0.2.7:4000"), dst: addr("10.0.0.1:30000") };
        let mut buf = [0u8; 256];
        let n = build(&mut buf, &inbound, payload).unwrap();
        buf[ETH_LEN + 8] = 3; // a TTL the network decremented
        let p = parse(&buf[..n]).unwrap();
        let out = Rewrite { src_mac: MAC_A, dst_mac: [2, 0, 0, 0, 0, 0xc], src: addr("10.0.0.1:30002"), dst: addr("198.51.100.9:5000") };
        rewrite(&mut buf[..n], &p, &out).unwrap();
        let q = parse(&buf[..n]).unwrap();
        assert_eq!((q.src, q.dst), (out.src, out.dst));
        assert_eq!(&buf[0..6], &out.dst_mac);
        assert_eq!(&buf[6..12], &MAC_A);
        assert_eq!(buf[ETH_LEN + 8], TTL);
        assert_eq!(&buf[q.payload..q.payload + payload.len()], payload);
        assert!(checksum_verifies(&buf[..n]));
    }

    #[test]
    fn vlan_tagged_frames_are_parsed() {
        let r = Rewrite { src_mac: MAC_A, dst_mac: MAC_B, src: addr("10.0.0.1:1"), dst: addr("10.0.0.2:2") };
        let mut plain = [0u8; 128];
        let n = build(&mut plain, &r, b"hello").unwrap();
        let mut tagged = vec![0u8; n + 4];
        tagged[..12].copy_from_slice(&plain[..12]);
        tagged[12..14].copy_from_slice(&ETHERTYPE_VLAN.to_be_bytes());
        tagged[14..16].copy_from_slice(&7u16.to_be_bytes());
        tagged[16..].copy_from_slice(&plain[12..n]);
        let p = parse(&tagged).unwrap();
        assert_eq!((p.l3, p.src, p.dst, p.payload_len), (18, r.src, r.dst, 5));
    }

    #[test]
    fn fragments_non_udp_and_bad_lengths_are_refused() {
        let r = Rewrite { src_mac: MAC_A, dst_mac: MAC_B, src: addr("10.0.0.1:1"), dst: addr("10.0.0.2:2") };
        let mut buf = [0u8; 128];
        let n = build(&mut buf, &r, b"hello").unwrap();
        let mut f = buf;
        f[ETH_LEN + 6] = 0x20; // more fragments
        assert_eq!(parse(&f[..n]), Err(FrameError::Fragment));
        let mut f = buf;
        f[ETH_LEN + 9] = 6; // TCP
        assert_eq!(parse(&f[..n]), Err(FrameError::NotUdp));
        let mut f = buf;
        f[ETH_LEN + 3] = 0xff; // total length beyond the frame
        assert_eq!(parse(&f[..n]), Err(FrameError::BadLength));
        assert_eq!(parse(&buf[..n - 1]), Err(FrameError::BadLength));
        assert_eq!(parse(&buf[..20]), Err(FrameError::Truncated));
        let mut f = buf;
        f[12] = 0x08;
        f[13] = 0x06; // ARP
        assert_eq!(parse(&f[..n]), Err(FrameError::NotIp));
        let v6 = Rewrite { src: addr("[::1]:1"), dst: addr("[::2]:2"), ..r };
        let mut g = [0u8; 128];
        let p = parse(&buf[..n]).unwrap();
        assert_eq!(rewrite(&mut g, &p, &v6), Err(FrameError::FamilyMismatch));
    }

    proptest! {
        #[test]
        fn parse_never_panics_and_rewrite_keeps_parsed_frames_valid(bytes in proptest::collection::vec(any::<u8>(), 0..200), v6 in any::<bool>()) {
            let _ = parse(&bytes);
            // Structured: a valid frame with random payload stays valid after rewriting.
            let (s, d) = if v6 { ("[fd00::1]:30000", "[fd00::9]:4") } else { ("10.0.0.1:30000", "10.0.0.9:4") };
            let r = Rewrite { src_mac: MAC_A, dst_mac: MAC_B, src: addr(s), dst: addr(d) };
            let mut buf = [0u8; 512];
            let n = build(&mut buf, &r, &bytes).unwrap();
            prop_assert!(checksum_verifies(&buf[..n]));
        }
    }
}
