//! What the B2BUA reads of SDP (RFC 8866) before it hands a description to the media plane.
//!
//! The media plane does the offer/answer itself (its `Offer` and `Answer` RPCs rewrite every
//! description the endpoints get). The B2BUA only checks that a body is SDP with at least one
//! active stream (else 488 at once, without a media-plane round trip) and learns which `m=`
//! lines are active, to allocate a pair of legs for each. It parses with `sdp-types`, the parser
//! the media plane uses, so both planes agree on what is SDP. Nothing panics on any input
//! (fuzzed).

use std::net::IpAddr;

/// Longest SDP body accepted.
pub const MAX_SDP: usize = 16 * 1024;

/// Why a body is not usable SDP.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SdpError {
    /// Larger than [`MAX_SDP`].
    #[error("SDP body too large")]
    TooLarge,
    /// Not SDP (the parser's reason).
    #[error("not SDP: {0}")]
    Syntax(String),
    /// An active stream without a connection address that is an IP address.
    #[error("m= line {0} has no IP connection address")]
    NoConnection(usize),
}

/// An SDP body, as far as the B2BUA needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sdp {
    active: Vec<bool>,
    holds: bool,
}

impl Sdp {
    /// Parses `body`; every active stream (port not 0) must have an IP connection address (its
    /// own `c=` or the session's).
    pub fn parse(body: &[u8]) -> Result<Sdp, SdpError> {
        if body.len() > MAX_SDP {
            return Err(SdpError::TooLarge);
        }
        let session = sdp_types::Session::parse(body).map_err(|e| SdpError::Syntax(e.to_string()))?;
        let mut active = Vec::with_capacity(session.medias.len());
        let session_direction = direction(&session.attributes);
        let mut holds = true;
        for (index, media) in session.medias.iter().enumerate() {
            let on = media.port != 0;
            if on {
                let connection = media.connections.first().or(session.connection.as_ref());
                let ip = connection.and_then(|c| c.connection_address.split('/').next()?.parse::<IpAddr>().ok());
                let Some(ip) = ip else { return Err(SdpError::NoConnection(index)) };
                // RFC 6337 §5.3: on hold, the holder offers sendonly (or inactive); RFC 2543's
                // c=0.0.0.0 still comes from old phones.
                let held =
                    matches!(direction(&media.attributes).or(session_direction), Some("sendonly" | "inactive")) || ip.is_unspecified();
                holds &= held;
            }
            active.push(on);
        }
        let holds = holds && active.iter().any(|&a| a);
        Ok(Sdp { active, holds })
    }

    /// Per `m=` line, whether it is active (port not 0).
    pub fn active(&self) -> &[bool] {
        &self.active
    }

    /// Whether this offer puts the other side on hold: every active stream is sendonly or
    /// inactive (or has the connection address 0.0.0.0).
    pub fn holds(&self) -> bool {
        self.holds
    }

    /// Whether any stream is active.
    pub fn any_active(&self) -> bool {
        self.active.iter().any(|&a| a)
    }
}

/// The direction attribute among `attributes`, if any.
fn direction(attributes: &[sdp_types::Attribute]) -> Option<&'static str> {
    attributes.iter().rev().find_map(|a| match a.attribute.as_str() {
        "sendrecv" => Some("sendrecv"),
        "sendonly" => Some("sendonly"),
        "recvonly" => Some("recvonly"),
        "inactive" => Some("inactive"),
        _ => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const OFFER: &str = "v=0\r\no=alice 2890844526 2890844526 IN IP4 10.0.0.5\r\ns=-\r\nc=IN IP4 10.0.0.5\r\n\
t=0 0\r\nm=audio 49170 RTP/AVP 0 8 101\r\na=rtpmap:101 telephone-event/8000\r\na=rtcp:49171\r\n\
a=candidate:1 1 UDP 2130706431 10.0.0.5 49170 typ host\r\na=sendonly\r\nm=video 0 RTP/AVP 96\r\n";

    #[test]
    fn parse_reads_which_streams_are_active() {
        let sdp = Sdp::parse(OFFER.as_bytes()).expect("parses");
        assert_eq!(sdp.active(), &[true, false]);
        assert!(sdp.any_active());
    }

    #[test]
    fn media_level_connection_serves_without_a_session_one() {
        let body = "v=0\r\no=- 1 1 IN IP6 2001:db8::1\r\ns=-\r\nt=0 0\r\nm=audio 4000 RTP/AVP 0\r\nc=IN IP6 2001:db8::1\r\n";
        assert_eq!(Sdp::parse(body.as_bytes()).expect("parses").active(), &[true]);
    }

    #[test]
    fn sendonly_inactive_and_a_zero_address_are_holds_and_recvonly_is_not() {
        let holds = |body: &str| Sdp::parse(body.as_bytes()).expect("parses").holds();
        assert!(holds(OFFER), "the active stream is sendonly");
        assert!(holds(&OFFER.replace("a=sendonly", "a=inactive")));
        assert!(!holds(&OFFER.replace("a=sendonly", "a=recvonly")));
        assert!(!holds(&OFFER.replace("a=sendonly\r\n", "")));
        assert!(holds(&OFFER.replace("a=sendonly\r\n", "").replace("c=IN IP4 10.0.0.5", "c=IN IP4 0.0.0.0")));
        let session_level = OFFER.replace("a=sendonly\r\n", "").replace("t=0 0\r\n", "t=0 0\r\na=sendonly\r\n");
        assert!(holds(&session_level));
    }

    #[test]
    fn unusable_bodies_are_refused() {
        assert!(matches!(Sdp::parse(b"hello"), Err(SdpError::Syntax(_))));
        assert!(matches!(Sdp::parse(&[0xff, 0xfe]), Err(SdpError::Syntax(_))));
        let no_connection = "v=0\r\no=- 1 1 IN IP4 10.0.0.5\r\ns=-\r\nt=0 0\r\nm=audio 5 RTP/AVP 0\r\n";
        assert_eq!(Sdp::parse(no_connection.as_bytes()), Err(SdpError::NoConnection(0)));
        let fqdn = no_connection.replace("t=0 0", "c=IN IP4 media.example\r\nt=0 0");
        assert_eq!(Sdp::parse(fqdn.as_bytes()), Err(SdpError::NoConnection(0)));
        assert_eq!(Sdp::parse(&vec![b'a'; MAX_SDP + 1]), Err(SdpError::TooLarge));
    }
}
