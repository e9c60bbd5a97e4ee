//! Non-INVITE server transaction (RFC 3261 §17.2.2, Figure 8).
//!
//! ```text
//!        request → TU
//!             │
//!             ▼         retransmits absorbed
//!       ┌────────┐ ◄──┐
//!       │ Trying │────┘
//!       └─┬────┬─┘
//!    1xx  │    │ 200-699 from TU → send
//!  → send ▼    │
//!   ┌────────────┐      retransmit → resend last provisional
//!   │ Proceeding │──┐
//!   └────────────┘  │ 200-699 from TU → send
//!                   ▼
//!             ┌───────────┐ retransmit → resend final
//!             │ Completed │ further finals from the TU refused
//!             └─────┬─────┘
//!                   │ Timer J (64·T1; 0 reliable)
//!                   ▼
//!               Terminated
//! ```
//!
//! Beyond the RFC: if the TU has not sent a final response 64·T1 after the request arrived (the
//! client's Timer F has fired by then), the transaction reports Timeout and ends rather than
//! living forever.

use std::time::Instant;

use bytes::Bytes;
use rsip::{Method, Request, Response};

use super::{due, encode_response, transaction_plumbing, Outbox, Peer, TimerConfig, TransactionError, TransactionEvent, TransactionKey};

/// States of [`NonInviteServer`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NonInviteServerState {
    /// Request passed to the TU, nothing sent yet.
    Trying,
    /// A provisional response was sent.
    Proceeding,
    /// The final response was sent; answering retransmissions with it.
    Completed,
    /// Over.
    Terminated,
}

impl NonInviteServerState {
    fn name(self) -> &'static str {
        match self {
            NonInviteServerState::Trying => "Trying",
            NonInviteServerState::Proceeding => "Proceeding",
            NonInviteServerState::Completed => "Completed",
            NonInviteServerState::Terminated => "Terminated",
        }
    }
}

/// A non-INVITE server transaction.
#[derive(Debug)]
pub struct NonInviteServer {
    state: NonInviteServerState,
    key: TransactionKey,
    request: Request,
    destination: Peer,
    config: TimerConfig,
    last_response: Option<Bytes>,
    answer_deadline: Option<Instant>,
    timer_j: Option<Instant>,
    out: Outbox,
}

impl NonInviteServer {
    /// Creates the transaction for a received request; it is reported to the TU as
    /// [`TransactionEvent::Request`].
    pub fn new(request: Request, destination: Peer, config: TimerConfig, now: Instant) -> Result<Self, TransactionError> {
        if matches!(request.method, Method::Invite | Method::Ack) {
            return Err(TransactionError::WrongMethod { machine: "non-INVITE server", method: request.method });
        }
        let key = TransactionKey::for_request(&request)?;
        let mut out = Outbox::default();
        out.event(TransactionEvent::Request(request.clone()));
        Ok(NonInviteServer {
            state: NonInviteServerState::Trying,
            key,
            request,
            destination,
            config,
            last_response: None,
            answer_deadline: Some(now + config.timeout()),
            timer_j: None,
            out,
        })
    }

    transaction_plumbing! {
        state: NonInviteServerState,
        request: "The request that created the transaction.",
        timers: [answer_deadline, timer_j],
    }

    // ---- handle_* ----

    /// A retransmission of the request arrived.
    pub fn handle_message(&mut self, _request: Request, _now: Instant) {
        match self.state {
            NonInviteServerState::Proceeding | NonInviteServerState::Completed => {
                if let Some(last) = &self.last_response {
                    self.out.send(self.destination, last, true);
                }
            }
            NonInviteServerState::Trying | NonInviteServerState::Terminated => {}
        }
    }

    /// The TU's response to the request.
    pub fn send_response(&mut self, response: Response, now: Instant) -> Result<(), TransactionError> {
        let status = response.status_code.code();
        if !(100..=699).contains(&status) {
            return Err(TransactionError::BadStatus(status));
        }
        match self.state {
            NonInviteServerState::Trying | NonInviteServerState::Proceeding => {
                let encoded = encode_response(&response);
                self.out.send(self.destination, &encoded, false);
                self.last_response = Some(encoded);
                if status < 200 {
                    self.state = NonInviteServerState::Proceeding;
                } else {
                    self.state = NonInviteServerState::Completed;
                    self.answer_deadline = None;
                    if self.destination.is_reliable() {
                        self.terminate();
                    } else {
                        self.timer_j = Some(now + self.config.timeout());
                    }
                }
                Ok(())
            }
            NonInviteServerState::Completed | NonInviteServerState::Terminated => {
                Err(TransactionError::InvalidState { status, state: self.state.name() })
            }
        }
    }

    /// Fires the timers that are due at `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        if due(self.answer_deadline, now) {
            self.out.event(TransactionEvent::Timeout);
            self.terminate();
        } else if due(self.timer_j, now) {
            self.terminate();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::{response_for, tests::parse_request};
    use crate::transaction::tests::alice;
    use std::time::Duration;

    const OPTIONS: &str = "OPTIONS sip:example.com SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bKopt1\r\nMax-Forwards: 70\r\nFrom: <sip:alice@example.com>;tag=a\r\nTo: <sip:example.com>\r\nCall-ID: opt-1\r\nCSeq: 7 OPTIONS\r\nContent-Length: 0\r\n\r\n";

    fn options() -> Request {
        parse_request(OPTIONS.as_bytes())
    }

    #[test]
    fn retransmissions_are_absorbed_in_trying_and_answered_with_the_last_response_later() {
        let t0 = Instant::now();
        let req = options();
        let mut tx = NonInviteServer::new(req.clone(), alice(), TimerConfig::default(), t0).unwrap();
        assert!(matches!(tx.poll_event(), Some(TransactionEvent::Request(_))));
        tx.handle_message(req.clone(), t0);
        assert_eq!(tx.poll_transmit(), None);
        tx.send_response(response_for(&req, 200, None, Some("x")), t0).unwrap();
        let first = tx.poll_transmit().unwrap();
        tx.handle_message(req.clone(), t0 + Duration::from_secs(1));
        let again = tx.poll_transmit().unwrap();
        assert!(again.retransmission);
        assert_eq!(again.payload, first.payload);
        assert_eq!(tx.poll_event(), None, "TU sees the request once");
    }

    #[test]
    fn timer_j_keeps_the_final_response_for_64_t1_on_alice() {
        let t0 = Instant::now();
        let req = options();
        let mut tx = NonInviteServer::new(req.clone(), alice(), TimerConfig::default(), t0).unwrap();
        tx.send_response(response_for(&req, 200, None, Some("x")), t0).unwrap();
        assert_eq!(tx.poll_timeout(), Some(t0 + Duration::from_secs(32)));
        tx.handle_timeout(t0 + Duration::from_secs(32));
        assert!(tx.is_terminated());
    }

    #[test]
    fn timer_j_is_zero_on_reliable_transports() {
        let t0 = Instant::now();
        let req = options();
        let mut tx = NonInviteServer::new(req.clone(), Peer::tcp("192.0.2.1:5060".parse().unwrap()), TimerConfig::default(), t0).unwrap();
        tx.send_response(response_for(&req, 200, None, Some("x")), t0).unwrap();
        assert!(tx.is_terminated());
    }

    #[test]
    fn a_second_final_response_is_refused() {
        let t0 = Instant::now();
        let req = options();
        let mut tx = NonInviteServer::new(req.clone(), alice(), TimerConfig::default(), t0).unwrap();
        tx.send_response(response_for(&req, 200, None, Some("x")), t0).unwrap();
        assert!(matches!(
            tx.send_response(response_for(&req, 500, None, Some("x")), t0),
            Err(TransactionError::InvalidState { status: 500, state: "Completed" })
        ));
    }

    #[test]
    fn provisional_is_resent_for_retransmissions_while_proceeding() {
        let t0 = Instant::now();
        let req = options();
        let mut tx = NonInviteServer::new(req.clone(), alice(), TimerConfig::default(), t0).unwrap();
        tx.send_response(response_for(&req, 100, None, None), t0).unwrap();
        let _ = tx.poll_transmit();
        tx.handle_message(req, t0);
        assert!(tx.poll_transmit().unwrap().payload.starts_with(b"SIP/2.0 100 Trying"));
    }

    #[test]
    fn an_unanswered_request_times_out_after_64_t1() {
        let t0 = Instant::now();
        let mut tx = NonInviteServer::new(options(), alice(), TimerConfig::default(), t0).unwrap();
        let _ = tx.poll_event();
        tx.handle_timeout(t0 + Duration::from_secs(32));
        assert_eq!(tx.poll_event(), Some(TransactionEvent::Timeout));
        assert!(tx.is_terminated());
    }
}
