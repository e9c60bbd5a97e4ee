//! Non-INVITE client transaction (RFC 3261 §17.1.2, Figure 6; RFC 4320 unchanged here).
//!
//! ```text
//!       start: send request, Timer E (unreliable), Timer F
//!            │
//!            ▼           Timer E: resend, E = min(2E, T2)
//!       ┌────────┐ ◄───┐
//!       │ Trying │─────┘        Timer F → Timeout ──────────────┐
//!       └───┬────┘                                             │
//!   1xx → TU│      200-699 → TU                                │
//!           ▼     ┌──────────────────┐                         │
//!     ┌────────────┐ Timer E: resend, E = T2                   │
//!     │ Proceeding │──────┐           │                        │
//!     └────────────┘ 200-699 → TU     ▼                        │
//!                         └──────►┌───────────┐ absorbs        │
//!                                 │ Completed │ retransmitted  │
//!                                 └─────┬─────┘ responses      │
//!                                       │ Timer K (T4; 0 reliable)
//!                                       ▼                      ▼
//!                                   Terminated ◄───────────────┘
//! ```

use std::time::Instant;

use bytes::Bytes;
use rsip::{Method, Request, Response};

use super::{
    due, encode_request, transaction_plumbing, Backoff, Outbox, Peer, TimerConfig, TransactionError, TransactionEvent, TransactionKey,
};

/// States of [`NonInviteClient`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NonInviteClientState {
    /// Request sent, no response yet.
    Trying,
    /// A provisional response arrived; still retransmitting (every T2) until a final one.
    Proceeding,
    /// A final response arrived; absorbing its retransmissions.
    Completed,
    /// Over.
    Terminated,
}

/// A non-INVITE client transaction (REGISTER, OPTIONS, BYE, CANCEL, …).
#[derive(Debug)]
pub struct NonInviteClient {
    state: NonInviteClientState,
    key: TransactionKey,
    request: Request,
    destination: Peer,
    config: TimerConfig,
    encoded: Bytes,
    timer_e: Option<Backoff>,
    timer_f: Option<Instant>,
    timer_k: Option<Instant>,
    out: Outbox,
}

impl NonInviteClient {
    /// Starts the transaction: the request is queued for transmission at once.
    pub fn new(request: Request, destination: Peer, config: TimerConfig, now: Instant) -> Result<Self, TransactionError> {
        if matches!(request.method, Method::Invite | Method::Ack) {
            return Err(TransactionError::WrongMethod { machine: "non-INVITE client", method: request.method });
        }
        let key = TransactionKey::for_request(&request)?;
        let encoded = encode_request(&request);
        let mut out = Outbox::default();
        out.send(destination, &encoded, false);
        let timer_e = (!destination.is_reliable()).then(|| Backoff::every(config.t1, now));
        Ok(NonInviteClient {
            state: NonInviteClientState::Trying,
            key,
            request,
            destination,
            config,
            encoded,
            timer_e,
            timer_f: Some(now + config.timeout()),
            timer_k: None,
            out,
        })
    }

    transaction_plumbing! {
        state: NonInviteClientState,
        request: "The request this transaction sends.",
        timers: [timer_e, timer_f, timer_k],
    }

    // ---- handle_* ----

    /// A response matching this transaction arrived.
    pub fn handle_message(&mut self, response: Response, now: Instant) {
        let code = response.status_code.code();
        match self.state {
            NonInviteClientState::Trying | NonInviteClientState::Proceeding => match code {
                100..=199 => {
                    self.state = NonInviteClientState::Proceeding;
                    self.out.event(TransactionEvent::Response(response));
                }
                200..=699 => {
                    self.state = NonInviteClientState::Completed;
                    self.timer_e = None;
                    self.timer_f = None;
                    self.out.event(TransactionEvent::Response(response));
                    if self.destination.is_reliable() {
                        self.terminate();
                    } else {
                        self.timer_k = Some(now + self.config.t4);
                    }
                }
                _ => {}
            },
            NonInviteClientState::Completed | NonInviteClientState::Terminated => {}
        }
    }

    /// Fires the timers that are due at `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        if matches!(self.state, NonInviteClientState::Trying | NonInviteClientState::Proceeding) && due(self.timer_f, now) {
            self.out.event(TransactionEvent::Timeout);
            self.terminate();
            return;
        }
        if let Some(e) = Backoff::due(self.timer_e, now) {
            self.out.send(self.destination, &self.encoded, true);
            self.timer_e = Some(match self.state {
                NonInviteClientState::Proceeding => Backoff::every(self.config.t2, now),
                _ => e.doubled(now, self.config.t2),
            });
        }
        if due(self.timer_k, now) {
            self.terminate();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::{response_for, tests::parse_request};
    use crate::transaction::tests::bob;
    use std::time::Duration;

    const REGISTER: &str = "REGISTER sip:example.com SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bKreg1\r\nMax-Forwards: 70\r\nFrom: <sip:alice@example.com>;tag=a\r\nTo: <sip:alice@example.com>\r\nCall-ID: reg-1\r\nCSeq: 1 REGISTER\r\nContent-Length: 0\r\n\r\n";

    fn register() -> Request {
        parse_request(REGISTER.as_bytes())
    }

    fn retransmit_times(tx: &mut NonInviteClient, t0: Instant, until: Duration) -> Vec<u128> {
        let mut times = vec![];
        while let Some(at) = tx.poll_timeout().filter(|&at| at - t0 <= until) {
            tx.handle_timeout(at);
            while let Some(o) = tx.poll_transmit() {
                if o.retransmission {
                    times.push((at - t0).as_millis());
                }
            }
        }
        times
    }

    #[test]
    fn timer_e_doubles_from_t1_and_caps_at_t2() {
        let t0 = Instant::now();
        let mut tx = NonInviteClient::new(register(), bob(), TimerConfig::default(), t0).unwrap();
        let times = retransmit_times(&mut tx, t0, Duration::from_secs(20));
        // Intervals 0.5, 1, 2, 4, 4, 4 … s.
        assert_eq!(times, vec![500, 1500, 3500, 7500, 11500, 15500, 19500]);
    }

    #[test]
    fn proceeding_retransmits_every_t2() {
        let t0 = Instant::now();
        let req = register();
        let mut tx = NonInviteClient::new(req.clone(), bob(), TimerConfig::default(), t0).unwrap();
        tx.handle_message(response_for(&req, 100, None, None), t0 + Duration::from_millis(100));
        let times = retransmit_times(&mut tx, t0, Duration::from_secs(13));
        // The pending 500 ms timer fires, then every T2.
        assert_eq!(times, vec![500, 4500, 8500, 12500]);
    }

    #[test]
    fn timer_f_times_out_at_64_t1() {
        let t0 = Instant::now();
        let mut tx = NonInviteClient::new(register(), bob(), TimerConfig::default(), t0).unwrap();
        let mut last = t0;
        while let Some(at) = tx.poll_timeout() {
            tx.handle_timeout(at);
            last = at;
        }
        assert_eq!(last - t0, Duration::from_secs(32));
        let events: Vec<_> = std::iter::from_fn(|| tx.poll_event()).collect();
        assert_eq!(events, vec![TransactionEvent::Timeout, TransactionEvent::Terminated]);
    }

    #[test]
    fn final_response_is_reported_once_and_timer_k_ends_it() {
        let t0 = Instant::now();
        let req = register();
        let mut tx = NonInviteClient::new(req.clone(), bob(), TimerConfig::default(), t0).unwrap();
        let ok = response_for(&req, 200, None, Some("x"));
        tx.handle_message(ok.clone(), t0);
        tx.handle_message(ok.clone(), t0 + Duration::from_millis(10));
        assert_eq!(tx.poll_event(), Some(TransactionEvent::Response(ok)));
        assert_eq!(tx.poll_event(), None);
        assert_eq!(tx.poll_timeout(), Some(t0 + Duration::from_secs(5)), "Timer K = T4");
        tx.handle_timeout(t0 + Duration::from_secs(5));
        assert!(tx.is_terminated());
    }

    #[test]
    fn reliable_transport_has_no_timer_e_and_zero_timer_k() {
        let t0 = Instant::now();
        let req = register();
        let mut tx = NonInviteClient::new(req.clone(), Peer::tcp("192.0.2.2:5060".parse().unwrap()), TimerConfig::default(), t0).unwrap();
        assert_eq!(tx.poll_timeout(), Some(t0 + Duration::from_secs(32)), "only Timer F");
        tx.handle_message(response_for(&req, 200, None, Some("x")), t0);
        assert!(tx.is_terminated());
    }

    #[test]
    fn invite_and_ack_are_refused() {
        let mut req = register();
        req.method = Method::Invite;
        assert!(NonInviteClient::new(req, bob(), TimerConfig::default(), Instant::now()).is_err());
    }
}
