//! INVITE server transaction (RFC 3261 §17.2.1, Figure 7, with RFC 6026's Accepted state).
//!
//! ```text
//!        INVITE → TU; 100 Trying after 200 ms unless the TU answered
//!             │
//!             ▼            INVITE retransmit → resend last provisional
//!      ┌────────────┐ ◄──┐ 1xx from TU → send
//!      │ Proceeding │────┘
//!      └──┬──────┬──┘
//!  300-699│      │ 2xx from TU → send
//!  → send │      ▼
//!         │  ┌──────────┐ 2xx from TU → send; INVITE retransmit absorbed;
//!         │  │ Accepted │ ACK → TU (RFC 6026)
//!         │  └────┬─────┘
//!         ▼       │ Timer L (64·T1)
//!   ┌───────────┐ │       Timer G: resend final, G = min(2G, T2)
//!   │ Completed │─┼──┐    INVITE retransmit → resend final
//!   └─────┬─────┘ │  │    Timer H (64·T1) → Timeout (no ACK)
//!     ACK │       │  │
//!         ▼       │  │
//!   ┌───────────┐ │  │
//!   │ Confirmed │ │  │    ACK retransmits absorbed
//!   └─────┬─────┘ │  │
//!         │ Timer I (T4; 0 reliable)
//!         ▼       ▼  ▼
//!         Terminated
//! ```

use std::time::Instant;

use bytes::Bytes;
use rsip::{Method, Request, Response};

use super::{
    due, encode_response, transaction_plumbing, Backoff, Outbox, Peer, TimerConfig, TransactionError, TransactionEvent, TransactionKey,
};
use crate::message::response_for;

/// States of [`InviteServer`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InviteServerState {
    /// Waiting for the TU's final response.
    Proceeding,
    /// A final response ≥ 300 was sent; retransmitting it until the ACK.
    Completed,
    /// The ACK arrived; absorbing its retransmissions.
    Confirmed,
    /// A 2xx was sent (RFC 6026); the TU retransmits it, ACKs pass to the TU.
    Accepted,
    /// Over.
    Terminated,
}

impl InviteServerState {
    fn name(self) -> &'static str {
        match self {
            InviteServerState::Proceeding => "Proceeding",
            InviteServerState::Completed => "Completed",
            InviteServerState::Confirmed => "Confirmed",
            InviteServerState::Accepted => "Accepted",
            InviteServerState::Terminated => "Terminated",
        }
    }
}

/// An INVITE server transaction.
#[derive(Debug)]
pub struct InviteServer {
    state: InviteServerState,
    key: TransactionKey,
    request: Request,
    destination: Peer,
    config: TimerConfig,
    last_provisional: Option<Bytes>,
    last_response: Option<Bytes>,
    timer_trying: Option<Instant>,
    timer_g: Option<Backoff>,
    timer_h: Option<Instant>,
    timer_i: Option<Instant>,
    timer_l: Option<Instant>,
    out: Outbox,
}

impl InviteServer {
    /// Creates the transaction for a received INVITE; the INVITE is reported to the TU as
    /// [`TransactionEvent::Request`]. `destination` is where responses go
    /// ([`response_destination`](super::response_destination)).
    pub fn new(request: Request, destination: Peer, config: TimerConfig, now: Instant) -> Result<Self, TransactionError> {
        if request.method != Method::Invite {
            return Err(TransactionError::WrongMethod { machine: "INVITE server", method: request.method });
        }
        let key = TransactionKey::for_request(&request)?;
        let mut out = Outbox::default();
        out.event(TransactionEvent::Request(request.clone()));
        Ok(InviteServer {
            state: InviteServerState::Proceeding,
            key,
            request,
            destination,
            config,
            last_provisional: None,
            last_response: None,
            timer_trying: Some(now + config.trying_delay),
            timer_g: None,
            timer_h: None,
            timer_i: None,
            timer_l: None,
            out,
        })
    }

    transaction_plumbing! {
        state: InviteServerState,
        request: "The INVITE that created the transaction.",
        timers: [timer_trying, timer_g, timer_h, timer_i, timer_l],
    }

    // ---- handle_* ----

    /// A request matching this transaction arrived: an INVITE retransmission or an ACK.
    pub fn handle_message(&mut self, request: Request, now: Instant) {
        match (request.method, self.state) {
            (Method::Invite, InviteServerState::Proceeding) => match &self.last_provisional {
                Some(provisional) => self.out.send(self.destination, provisional, true),
                None => self.send_trying(),
            },
            (Method::Invite, InviteServerState::Completed) => {
                if let Some(last) = &self.last_response {
                    self.out.send(self.destination, last, true);
                }
            }
            (Method::Ack, InviteServerState::Completed) => {
                self.state = InviteServerState::Confirmed;
                self.timer_g = None;
                self.timer_h = None;
                if self.destination.is_reliable() {
                    self.terminate();
                } else {
                    self.timer_i = Some(now + self.config.t4);
                }
            }
            (Method::Ack, InviteServerState::Accepted) => self.out.event(TransactionEvent::Ack(request)),
            // INVITE retransmissions while Confirmed/Accepted and ACK retransmissions while
            // Confirmed are absorbed; anything else here is stray and ignored.
            _ => {}
        }
    }

    /// The TU's response to the INVITE.
    pub fn send_response(&mut self, response: Response, now: Instant) -> Result<(), TransactionError> {
        let status = response.status_code.code();
        let invalid = TransactionError::InvalidState { status, state: self.state.name() };
        match (self.state, status) {
            (_, code) if !(100..=699).contains(&code) => return Err(TransactionError::BadStatus(code)),
            (InviteServerState::Proceeding, 100..=199) => {
                let encoded = encode_response(&response);
                self.out.send(self.destination, &encoded, false);
                self.last_provisional = Some(encoded);
                self.timer_trying = None;
            }
            (InviteServerState::Proceeding, 200..=299) => {
                let encoded = encode_response(&response);
                self.out.send(self.destination, &encoded, false);
                self.last_response = Some(encoded);
                self.state = InviteServerState::Accepted;
                self.timer_trying = None;
                self.timer_l = Some(now + self.config.timeout());
            }
            (InviteServerState::Proceeding, _) => {
                let encoded = encode_response(&response);
                self.out.send(self.destination, &encoded, false);
                self.last_response = Some(encoded);
                self.state = InviteServerState::Completed;
                self.timer_trying = None;
                if !self.destination.is_reliable() {
                    self.timer_g = Some(Backoff::every(self.config.t1, now));
                }
                self.timer_h = Some(now + self.config.timeout());
            }
            (InviteServerState::Accepted, 200..=299) => {
                // The TU's 2xx retransmission (§13.3.1.4) or a 2xx for another fork.
                let encoded = encode_response(&response);
                let repeat = self.last_response.as_ref() == Some(&encoded);
                self.out.send(self.destination, &encoded, repeat);
                self.last_response = Some(encoded);
            }
            _ => return Err(invalid),
        }
        Ok(())
    }

    /// Fires the timers that are due at `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.state == InviteServerState::Proceeding && due(self.timer_trying, now) {
            self.send_trying();
        }
        if self.state == InviteServerState::Completed && due(self.timer_h, now) {
            self.out.event(TransactionEvent::Timeout);
            self.terminate();
            return;
        }
        if let Some(g) = Backoff::due(self.timer_g, now) {
            if let Some(last) = &self.last_response {
                self.out.send(self.destination, last, true);
            }
            self.timer_g = Some(g.doubled(now, self.config.t2));
        }
        if due(self.timer_i, now) || due(self.timer_l, now) {
            self.terminate();
        }
    }

    fn send_trying(&mut self) {
        let trying = encode_response(&response_for(&self.request, 100, None, None));
        self.out.send(self.destination, &trying, false);
        self.last_provisional = Some(trying);
        self.timer_trying = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::tests::invite;
    use crate::transaction::{tests::alice, Outgoing};
    use std::time::Duration;

    fn ack() -> Request {
        let mut ack = invite();
        ack.method = Method::Ack;
        ack
    }

    fn sent(tx: &mut InviteServer) -> Vec<Outgoing> {
        std::iter::from_fn(|| tx.poll_transmit()).collect()
    }

    #[test]
    fn reports_the_invite_once_and_sends_100_trying_after_200_ms() {
        let t0 = Instant::now();
        let mut tx = InviteServer::new(invite(), alice(), TimerConfig::default(), t0).unwrap();
        assert!(matches!(tx.poll_event(), Some(TransactionEvent::Request(_))));
        assert_eq!(tx.poll_timeout(), Some(t0 + Duration::from_millis(200)));
        tx.handle_timeout(t0 + Duration::from_millis(200));
        let out = sent(&mut tx);
        assert_eq!(out.len(), 1);
        assert!(out[0].payload.starts_with(b"SIP/2.0 100 Trying\r\n"));
        tx.handle_message(invite(), t0 + Duration::from_millis(500));
        let out = sent(&mut tx);
        assert!(out[0].retransmission && out[0].payload.starts_with(b"SIP/2.0 100 Trying\r\n"));
        assert_eq!(tx.poll_event(), None, "retransmitted INVITE is absorbed");
    }

    #[test]
    fn no_100_trying_when_the_tu_answers_within_200_ms() {
        let t0 = Instant::now();
        let inv = invite();
        let mut tx = InviteServer::new(inv.clone(), alice(), TimerConfig::default(), t0).unwrap();
        tx.send_response(response_for(&inv, 180, None, Some("x")), t0 + Duration::from_millis(50)).unwrap();
        tx.handle_timeout(t0 + Duration::from_millis(200));
        let out = sent(&mut tx);
        assert_eq!(out.len(), 1);
        assert!(out[0].payload.starts_with(b"SIP/2.0 180 Ringing\r\n"));
    }

    #[test]
    fn timer_g_retransmits_final_capped_at_t2_until_timer_h() {
        let t0 = Instant::now();
        let inv = invite();
        let mut tx = InviteServer::new(inv.clone(), alice(), TimerConfig::default(), t0).unwrap();
        tx.send_response(response_for(&inv, 486, None, Some("x")), t0).unwrap();
        let _ = sent(&mut tx);
        let mut times = vec![];
        while let Some(at) = tx.poll_timeout() {
            tx.handle_timeout(at);
            times.extend(sent(&mut tx).iter().filter(|o| o.retransmission).map(|_| (at - t0).as_millis()));
        }
        assert_eq!(&times[..6], &[500, 1500, 3500, 7500, 11500, 15500]);
        assert_eq!(*times.last().unwrap(), 31500);
        let events: Vec<_> = std::iter::from_fn(|| tx.poll_event()).collect();
        assert_eq!(events[events.len() - 2..], [TransactionEvent::Timeout, TransactionEvent::Terminated]);
    }

    #[test]
    fn ack_confirms_stops_retransmissions_and_timer_i_absorbs_ack_retransmits() {
        let t0 = Instant::now();
        let inv = invite();
        let mut tx = InviteServer::new(inv.clone(), alice(), TimerConfig::default(), t0).unwrap();
        let _ = tx.poll_event();
        tx.send_response(response_for(&inv, 404, None, Some("x")), t0).unwrap();
        tx.handle_message(ack(), t0 + Duration::from_millis(100));
        assert_eq!(tx.state(), InviteServerState::Confirmed);
        assert_eq!(tx.poll_timeout(), Some(t0 + Duration::from_millis(100) + Duration::from_secs(5)));
        tx.handle_message(ack(), t0 + Duration::from_millis(200));
        tx.handle_message(invite(), t0 + Duration::from_millis(300));
        assert_eq!(sent(&mut tx).len(), 1, "only the original 404");
        assert_eq!(tx.poll_event(), None);
        tx.handle_timeout(t0 + Duration::from_millis(5100));
        assert!(tx.is_terminated());
    }

    #[test]
    fn invite_retransmission_in_completed_resends_the_final_response() {
        let t0 = Instant::now();
        let inv = invite();
        let mut tx = InviteServer::new(inv.clone(), alice(), TimerConfig::default(), t0).unwrap();
        tx.send_response(response_for(&inv, 486, None, Some("x")), t0).unwrap();
        let _ = sent(&mut tx);
        tx.handle_message(invite(), t0 + Duration::from_millis(10));
        let out = sent(&mut tx);
        assert!(out[0].retransmission && out[0].payload.starts_with(b"SIP/2.0 486 Busy Here"));
    }

    #[test]
    fn accepted_absorbs_invite_retransmits_passes_ack_and_tu_2xx_retransmits() {
        let t0 = Instant::now();
        let inv = invite();
        let mut tx = InviteServer::new(inv.clone(), alice(), TimerConfig::default(), t0).unwrap();
        let _ = tx.poll_event();
        let ok = response_for(&inv, 200, None, Some("x"));
        tx.send_response(ok.clone(), t0).unwrap();
        tx.handle_message(invite(), t0 + Duration::from_millis(10));
        tx.send_response(ok, t0 + Duration::from_millis(500)).unwrap();
        let out = sent(&mut tx);
        assert_eq!(out.len(), 2);
        assert!(!out[0].retransmission && out[1].retransmission);
        tx.handle_message(ack(), t0 + Duration::from_millis(600));
        assert!(matches!(tx.poll_event(), Some(TransactionEvent::Ack(_))));
        tx.handle_timeout(t0 + Duration::from_secs(32));
        assert!(tx.is_terminated());
    }

    #[test]
    fn second_final_response_is_refused() {
        let t0 = Instant::now();
        let inv = invite();
        let mut tx = InviteServer::new(inv.clone(), alice(), TimerConfig::default(), t0).unwrap();
        tx.send_response(response_for(&inv, 486, None, Some("x")), t0).unwrap();
        assert!(matches!(
            tx.send_response(response_for(&inv, 200, None, Some("x")), t0),
            Err(TransactionError::InvalidState { status: 200, state: "Completed" })
        ));
        assert!(matches!(tx.send_response(response_for(&inv, 99, None, None), t0), Err(TransactionError::BadStatus(99))));
    }

    #[test]
    fn reliable_transport_has_no_timer_g_and_ack_terminates_at_once() {
        let t0 = Instant::now();
        let inv = invite();
        let mut tx = InviteServer::new(inv.clone(), Peer::tcp("192.0.2.1:5060".parse().unwrap()), TimerConfig::default(), t0).unwrap();
        tx.send_response(response_for(&inv, 486, None, Some("x")), t0).unwrap();
        assert_eq!(tx.poll_timeout(), Some(t0 + Duration::from_secs(32)), "only Timer H");
        tx.handle_message(ack(), t0);
        assert!(tx.is_terminated());
    }
}
