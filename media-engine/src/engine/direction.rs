//! [`Direction`]: which way an endpoint's media flows, as its SDP says (RFC 8866 §6.7). Shared
//! by the legs, which send and accept RTP by it, and the SDP offer/answer that sets it.

/// Media direction, as the endpoint states it in its SDP.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Direction {
    #[default]
    SendRecv,
    /// The endpoint sends; the media plane sends it no RTP.
    SendOnly,
    /// The endpoint only receives; RTP from it is dropped (muted).
    RecvOnly,
    Inactive,
}

impl Direction {
    pub fn endpoint_sends(self) -> bool {
        matches!(self, Self::SendRecv | Self::SendOnly)
    }
    pub fn endpoint_receives(self) -> bool {
        matches!(self, Self::SendRecv | Self::RecvOnly)
    }
}
