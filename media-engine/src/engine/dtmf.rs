//! DTMF as RFC 4733 telephone-events: the payload view, the digit it names, and the detector that
//! turns a leg's event packets into one digit report each.
//!
//! An event is sent as a series of packets sharing one RTP timestamp (the event's start), with a
//! growing duration, the last three (retransmissions) carrying the End bit. The detector reports
//! a digit once, at the first End packet of a timestamp it has not reported yet, with the
//! duration that packet gives.

/// An RFC 4733 §2.3 event payload: event code, End bit, volume, duration (in RTP clock units).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TelephoneEvent {
    pub event: u8,
    pub end: bool,
    pub volume: u8,
    pub duration: u16,
}

impl TelephoneEvent {
    /// Parses the first four bytes of a payload (more may follow in a redundant packet; only the
    /// first event is read).
    pub fn parse(payload: &[u8]) -> Option<Self> {
        let b = payload.get(..4)?;
        Some(TelephoneEvent { event: b[0], end: b[1] & 0x80 != 0, volume: b[1] & 0x3f, duration: u16::from_be_bytes([b[2], b[3]]) })
    }

    /// The four payload bytes.
    pub fn to_bytes(self) -> [u8; 4] {
        let d = self.duration.to_be_bytes();
        [self.event, (u8::from(self.end) << 7) | (self.volume & 0x3f), d[0], d[1]]
    }

    /// The event code of a DTMF digit (the inverse of [`digit`](Self::digit)).
    pub fn code_of(digit: char) -> Option<u8> {
        match digit.to_ascii_uppercase() {
            d @ '0'..='9' => d.to_digit(10).map(|n| n as u8),
            '*' => Some(10),
            '#' => Some(11),
            d @ 'A'..='D' => Some(12 + (d as u8 - b'A')),
            _ => None,
        }
    }

    /// The DTMF digit of the event code (RFC 4733 §3.2: 0-9, *, #, A-D), if it is one.
    pub fn digit(self) -> Option<char> {
        match self.event {
            0..=9 => char::from_digit(u32::from(self.event), 10),
            10 => Some('*'),
            11 => Some('#'),
            12..=15 => Some(char::from(b'A' + self.event - 12)),
            _ => None,
        }
    }
}

/// Reports each digit of a leg once (see the module documentation).
#[derive(Debug, Default, Clone, Copy)]
pub struct KeyPressTracker {
    last_reported: Option<(u32, u32)>,
}

impl KeyPressTracker {
    /// Feeds an event packet of stream `ssrc` with RTP timestamp `ts`; returns the digit and its
    /// duration in clock units when this packet completes a new one.
    pub fn push(&mut self, ssrc: u32, ts: u32, event: TelephoneEvent) -> Option<(char, u16)> {
        if !event.end || self.last_reported == Some((ssrc, ts)) {
            return None;
        }
        self.last_reported = Some((ssrc, ts));
        event.digit().map(|d| (d, event.duration))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_payload_round_trips_and_names_its_digit() {
        let e = TelephoneEvent { event: 11, end: true, volume: 10, duration: 1600 };
        assert_eq!(TelephoneEvent::parse(&e.to_bytes()), Some(e));
        assert_eq!(e.digit(), Some('#'));
        assert_eq!(TelephoneEvent { event: 14, ..e }.digit(), Some('C'));
        assert_eq!(TelephoneEvent { event: 16, ..e }.digit(), None, "flash is not a digit");
        assert_eq!(TelephoneEvent::parse(&[1, 2, 3]), None);
    }

    #[test]
    fn a_digit_is_reported_once_at_its_first_end_packet() {
        let mut d = KeyPressTracker::default();
        let e = |end, duration| TelephoneEvent { event: 5, end, volume: 10, duration };
        assert_eq!(d.push(1, 800, e(false, 160)), None);
        assert_eq!(d.push(1, 800, e(false, 320)), None);
        assert_eq!(d.push(1, 800, e(true, 800)), Some(('5', 800)));
        assert_eq!(d.push(1, 800, e(true, 800)), None, "the End retransmissions are not new digits");
        assert_eq!(d.push(1, 2400, e(true, 480)), Some(('5', 480)), "the same key again is a new event");
    }
}
