//! The parts of SDP (RFC 8866) the B2BUA reads and rewrites to anchor media.
//!
//! [`Sdp::parse`] reads, per `m=` section: media type, port, connection address (media-level
//! `c=` or the session's), direction attribute (media-level or session-level) and `a=rtcp-mux`.
//! [`Sdp::anchor`] writes the description back with every `c=` and the origin address replaced by
//! the media plane's address, each `m=` port replaced by the media plane's port for that stream,
//! `a=rtcp:` pointed at port+1, and ICE attributes removed (the media plane is the only
//! candidate). Every other line passes through untouched, in order, so codecs, ptime, DTMF and
//! unknown attributes reach the other side as sent. Nothing panics on any input (fuzzed).

use std::net::IpAddr;

/// Longest SDP body accepted.
pub const MAX_SDP: usize = 16 * 1024;

/// Why a body is not usable SDP.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SdpError {
    /// Larger than [`MAX_SDP`].
    #[error("SDP body too large")]
    TooLarge,
    /// Not UTF-8.
    #[error("SDP is not UTF-8")]
    NotText,
    /// No `v=0` first line.
    #[error("SDP does not start with v=0")]
    NoVersion,
    /// An `m=` line that does not parse.
    #[error("bad m= line")]
    BadMedia,
    /// A `c=` line that does not parse or is not IN IP4/IP6.
    #[error("bad c= line")]
    BadConnection,
    /// An active stream without any connection address.
    #[error("stream without a connection address")]
    NoConnection,
}

/// Media direction attribute (RFC 8866 §6.7).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Direction {
    /// `a=sendrecv` (default).
    #[default]
    SendRecv,
    /// `a=sendonly`.
    SendOnly,
    /// `a=recvonly`.
    RecvOnly,
    /// `a=inactive`.
    Inactive,
}

impl Direction {
    fn from_attribute(line: &str) -> Option<Self> {
        match line {
            "a=sendrecv" => Some(Direction::SendRecv),
            "a=sendonly" => Some(Direction::SendOnly),
            "a=recvonly" => Some(Direction::RecvOnly),
            "a=inactive" => Some(Direction::Inactive),
            _ => None,
        }
    }
}

/// One `m=` section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stream {
    /// `audio`, `video`, …
    pub media: String,
    /// Port; 0 means the stream is rejected or disabled.
    pub port: u16,
    /// Where the endpoint wants to receive (media-level `c=`, else session-level).
    pub address: Option<IpAddr>,
    /// Direction as the endpoint states it.
    pub direction: Direction,
    /// `a=rtcp-mux` present.
    pub rtcp_mux: bool,
}

impl Stream {
    /// Whether the stream carries media (port not 0).
    pub fn is_active(&self) -> bool {
        self.port != 0
    }
}

/// A parsed session description that keeps its text for rewriting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sdp {
    lines: Vec<String>,
    streams: Vec<Stream>,
}

fn parse_connection(line: &str) -> Result<IpAddr, SdpError> {
    // c=IN IP4 192.0.2.1[/ttl]
    let mut parts = line.get(2..).unwrap_or_default().split_ascii_whitespace();
    let (Some("IN"), Some(kind), Some(addr)) = (parts.next(), parts.next(), parts.next()) else {
        return Err(SdpError::BadConnection);
    };
    let addr = addr.split('/').next().unwrap_or_default();
    let ip: IpAddr = addr.parse().map_err(|_| SdpError::BadConnection)?;
    match (kind, ip) {
        ("IP4", IpAddr::V4(_)) | ("IP6", IpAddr::V6(_)) => Ok(ip),
        _ => Err(SdpError::BadConnection),
    }
}

fn ip_kind(ip: IpAddr) -> &'static str {
    if ip.is_ipv4() {
        "IP4"
    } else {
        "IP6"
    }
}

fn is_ice(line: &str) -> bool {
    ["a=candidate:", "a=ice-", "a=end-of-candidates", "a=remote-candidates"].iter().any(|p| line.starts_with(p))
}

impl Sdp {
    /// Parses a body.
    pub fn parse(body: &[u8]) -> Result<Sdp, SdpError> {
        if body.len() > MAX_SDP {
            return Err(SdpError::TooLarge);
        }
        let text = std::str::from_utf8(body).map_err(|_| SdpError::NotText)?;
        let lines: Vec<String> =
            text.split('\n').map(|l| l.trim_end_matches('\r').to_owned()).filter(|l| !l.is_empty()).collect();
        if lines.first().map(String::as_str) != Some("v=0") {
            return Err(SdpError::NoVersion);
        }
        let mut session_address = None;
        let mut session_direction = None;
        let mut streams: Vec<Stream> = Vec::new();
        let mut media_direction: Vec<Option<Direction>> = Vec::new();
        for line in &lines {
            if let Some(rest) = line.strip_prefix("m=") {
                let mut parts = rest.split_ascii_whitespace();
                let media = parts.next().ok_or(SdpError::BadMedia)?;
                let port = parts.next().ok_or(SdpError::BadMedia)?;
                let port: u16 = port.split('/').next().unwrap_or_default().parse().map_err(|_| SdpError::BadMedia)?;
                parts.next().ok_or(SdpError::BadMedia)?;
                streams.push(Stream {
                    media: media.to_owned(),
                    port,
                    address: None,
                    direction: Direction::SendRecv,
                    rtcp_mux: false,
                });
                media_direction.push(None);
            } else if line.starts_with("c=") {
                let ip = parse_connection(line)?;
                match streams.last_mut() {
                    Some(s) => s.address = Some(ip),
                    None => session_address = Some(ip),
                }
            } else if let Some(d) = Direction::from_attribute(line) {
                match media_direction.last_mut() {
                    Some(slot) => *slot = Some(d),
                    None => session_direction = Some(d),
                }
            } else if line == "a=rtcp-mux" {
                if let Some(s) = streams.last_mut() {
                    s.rtcp_mux = true;
                }
            }
        }
        for (stream, direction) in streams.iter_mut().zip(media_direction) {
            stream.address = stream.address.or(session_address);
            stream.direction = direction.or(session_direction).unwrap_or_default();
            if stream.is_active() && stream.address.is_none() {
                return Err(SdpError::NoConnection);
            }
        }
        Ok(Sdp { lines, streams })
    }

    /// The `m=` sections in order.
    pub fn streams(&self) -> &[Stream] {
        &self.streams
    }

    /// The description with media anchored at `address`: `ports[i]` replaces the port of the i-th
    /// `m=` line (`None` keeps it, e.g. a rejected stream's 0). See the module documentation.
    pub fn anchor(&self, address: IpAddr, ports: &[Option<u16>]) -> String {
        let mut out = String::with_capacity(self.lines.iter().map(|l| l.len() + 2).sum::<usize>() + 32);
        let mut index: Option<usize> = None;
        for line in &self.lines {
            if is_ice(line) {
                continue;
            }
            if let Some(rest) = line.strip_prefix("m=") {
                let i = index.map_or(0, |i| i + 1);
                index = Some(i);
                // Tokenised as `parse` does, so the port replaced is the port that was read.
                let mut parts: Vec<&str> = rest.split_ascii_whitespace().collect();
                let port = ports.get(i).copied().flatten();
                let rendered;
                if let (Some(port), Some(slot)) = (port, parts.get_mut(1)) {
                    rendered = port.to_string();
                    *slot = &rendered;
                    out.push_str("m=");
                    out.push_str(&parts.join(" "));
                } else {
                    out.push_str(line);
                }
            } else if line.starts_with("c=") {
                out.push_str(&format!("c=IN {} {address}", ip_kind(address)));
            } else if let Some(rest) = line.strip_prefix("o=") {
                // o=<user> <sess-id> <sess-version> IN IP4 <address>
                let parts: Vec<&str> = rest.split_ascii_whitespace().collect();
                match parts.get(..3) {
                    Some(head) if parts.len() == 6 => {
                        out.push_str(&format!("o={} IN {} {address}", head.join(" "), ip_kind(address)))
                    }
                    _ => out.push_str(line),
                }
            } else if line.starts_with("a=rtcp:") {
                match index.and_then(|i| ports.get(i).copied().flatten()) {
                    Some(port) => out.push_str(&format!("a=rtcp:{}", u32::from(port) + 1)),
                    None => out.push_str(line),
                }
            } else {
                out.push_str(line);
            }
            out.push_str("\r\n");
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const OFFER: &str = "v=0\r\no=alice 2890844526 2890844526 IN IP4 10.0.0.5\r\ns=-\r\nc=IN IP4 10.0.0.5\r\n\
t=0 0\r\nm=audio 49170 RTP/AVP 0 8 101\r\na=rtpmap:101 telephone-event/8000\r\na=rtcp:49171\r\n\
a=candidate:1 1 UDP 2130706431 10.0.0.5 49170 typ host\r\na=sendonly\r\nm=video 0 RTP/AVP 96\r\n";

    #[test]
    fn parse_reads_ports_addresses_and_direction() {
        let sdp = Sdp::parse(OFFER.as_bytes()).unwrap();
        let s = sdp.streams();
        assert_eq!(s.len(), 2);
        assert_eq!(s[0].port, 49170);
        assert_eq!(s[0].address, Some("10.0.0.5".parse().unwrap()));
        assert_eq!(s[0].direction, Direction::SendOnly);
        assert!(!s[1].is_active());
    }

    #[test]
    fn anchor_rewrites_addresses_ports_and_rtcp_and_drops_ice() {
        let sdp = Sdp::parse(OFFER.as_bytes()).unwrap();
        let out = sdp.anchor("203.0.113.9".parse().unwrap(), &[Some(30000), None]);
        assert!(out.contains("c=IN IP4 203.0.113.9\r\n"));
        assert!(out.contains("o=alice 2890844526 2890844526 IN IP4 203.0.113.9\r\n"));
        assert!(out.contains("m=audio 30000 RTP/AVP 0 8 101\r\n"));
        assert!(out.contains("a=rtcp:30001\r\n"));
        assert!(out.contains("m=video 0 RTP/AVP 96\r\n"));
        assert!(out.contains("a=rtpmap:101 telephone-event/8000\r\n"), "codec lines pass through");
        assert!(out.contains("a=sendonly"), "direction passes through");
        assert!(!out.contains("candidate"));
        assert!(!out.contains("10.0.0.5"));
        let again = Sdp::parse(out.as_bytes()).unwrap();
        assert_eq!(again.streams()[0].port, 30000);
    }

    #[test]
    fn session_level_connection_and_direction_apply_to_streams() {
        let sdp = Sdp::parse(b"v=0\nc=IN IP6 2001:db8::1\na=inactive\nm=audio 4000 RTP/AVP 0\n").unwrap();
        assert_eq!(sdp.streams()[0].address, Some("2001:db8::1".parse().unwrap()));
        assert_eq!(sdp.streams()[0].direction, Direction::Inactive);
        let out = sdp.anchor("2001:db8::9".parse().unwrap(), &[Some(5000)]);
        assert!(out.contains("c=IN IP6 2001:db8::9"));
    }

    #[test]
    fn unusable_bodies_are_refused() {
        assert_eq!(Sdp::parse(b"hello"), Err(SdpError::NoVersion));
        assert_eq!(Sdp::parse(b"v=0\r\nm=audio x RTP/AVP 0\r\n"), Err(SdpError::BadMedia));
        assert_eq!(Sdp::parse(b"v=0\r\nm=audio 5 RTP/AVP 0\r\n"), Err(SdpError::NoConnection));
        assert_eq!(Sdp::parse(b"v=0\r\nc=IN IP4 ::1\r\n"), Err(SdpError::BadConnection));
        assert_eq!(Sdp::parse(&[0xff, 0xfe]), Err(SdpError::NotText));
        assert_eq!(Sdp::parse(&vec![b'a'; MAX_SDP + 1]), Err(SdpError::TooLarge));
    }
}
