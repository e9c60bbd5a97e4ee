//! The parts of SDP (RFC 8866) the B2BUA reads before it hands a description to the media plane.
//!
//! The media plane does the offer/answer itself (its `Offer` and `Answer` RPCs rewrite every
//! description the endpoints get). The B2BUA only checks that a body is SDP with at least one
//! active stream (else 488 at once, without a media-plane round trip) and learns which `m=`
//! lines are active, to allocate a pair of legs for each. [`Sdp::parse`] reads, per `m=`
//! section: media type, port, connection address (media-level `c=` or the session's),
//! direction attribute and `a=rtcp-mux`. Nothing panics on any input (fuzzed).

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

/// The streams of a parsed session description.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sdp {
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
        Ok(Sdp { streams })
    }

    /// The `m=` sections in order.
    pub fn streams(&self) -> &[Stream] {
        &self.streams
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
    fn session_level_connection_and_direction_apply_to_streams() {
        let sdp = Sdp::parse(b"v=0\nc=IN IP6 2001:db8::1\na=inactive\nm=audio 4000 RTP/AVP 0\n").unwrap();
        assert_eq!(sdp.streams()[0].address, Some("2001:db8::1".parse().unwrap()));
        assert_eq!(sdp.streams()[0].direction, Direction::Inactive);
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
