//! INVITE client transaction (RFC 3261 §17.1.1, Figure 5, with RFC 6026's Accepted state).
//!
//! ```text
//!            start: send INVITE, Timer A (unreliable), Timer B
//!                 │
//!   Timer A: resend, A *= 2   ┌─────────┐  Timer B → Timeout
//!             ┌──────────────►│ Calling │──────────────────────────────┐
//!             └───────────────┴────┬────┘                              │
//!                       1xx → TU   │   2xx → TU         300-699 → ACK, TU
//!                  ┌───────────────┼──────────────────┐                │
//!                  ▼               │                  ▼                │
//!            ┌────────────┐ 2xx    │            ┌───────────┐          │
//!  1xx → TU  │ Proceeding │────────┼───────────►│ Accepted  │ 2xx → TU │
//!            └─────┬──────┘        │            └─────┬─────┘          │
//!   300-699 → ACK, TU              ▼                  │ Timer M        │
//!                  │         ┌───────────┐            │                │
//!                  └────────►│ Completed │ 300-699 → resend ACK        │
//!                            └─────┬─────┘            │                │
//!                                  │ Timer D          ▼                ▼
//!                                  └────────────► Terminated ◄─────────┘
//! ```

use std::time::{Duration, Instant};

use bytes::Bytes;
use rsip::{Method, Request, Response};

use super::{
    ack_for_non_2xx, due, encode_request, transaction_plumbing, Backoff, Outbox, Peer, TimerConfig, TransactionError, TransactionEvent,
    TransactionKey,
};

/// States of [`InviteClient`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InviteClientState {
    /// INVITE sent, no response yet; retransmitting on unreliable transports.
    Calling,
    /// A provisional response arrived; no retransmissions, no timeout (the TU cancels).
    Proceeding,
    /// A non-2xx final response arrived and was ACKed; absorbing its retransmissions.
    Completed,
    /// A 2xx arrived (RFC 6026); further 2xx pass to the TU, which ACKs them.
    Accepted,
    /// Over.
    Terminated,
}

/// An INVITE client transaction.
#[derive(Debug)]
pub struct InviteClient {
    state: InviteClientState,
    key: TransactionKey,
    request: Request,
    destination: Peer,
    config: TimerConfig,
    encoded: Bytes,
    ack: Option<Bytes>,
    timer_a: Option<Backoff>,
    timer_b: Option<Instant>,
    timer_d: Option<Instant>,
    timer_m: Option<Instant>,
    out: Outbox,
}

impl InviteClient {
    /// Starts the transaction: the INVITE is queued for transmission at once.
    pub fn new(request: Request, destination: Peer, config: TimerConfig, now: Instant) -> Result<Self, TransactionError> {
        if request.method != Method::Invite {
            return Err(TransactionError::WrongMethod { machine: "INVITE client", method: request.method });
        }
        let key = TransactionKey::for_request(&request)?;
        let encoded = encode_request(&request);
        let mut out = Outbox::default();
        out.send(destination, &encoded, false);
        let timer_a = (!destination.is_reliable()).then(|| Backoff::every(config.t1, now));
        Ok(InviteClient {
            state: InviteClientState::Calling,
            key,
            request,
            destination,
            config,
            encoded,
            ack: None,
            timer_a,
            timer_b: Some(now + config.timeout()),
            timer_d: None,
            timer_m: None,
            out,
        })
    }

    transaction_plumbing! {
        state: InviteClientState,
        request: "The INVITE this transaction sends.",
        timers: [timer_a, timer_b, timer_d, timer_m],
    }

    // ---- handle_* ----

    /// A response matching this transaction arrived.
    pub fn handle_message(&mut self, response: Response, now: Instant) {
        let code = response.status_code.code();
        match self.state {
            InviteClientState::Calling | InviteClientState::Proceeding => match code {
                100..=199 => {
                    self.state = InviteClientState::Proceeding;
                    self.timer_a = None;
                    self.timer_b = None;
                    self.out.event(TransactionEvent::Response(response));
                }
                200..=299 => {
                    self.state = InviteClientState::Accepted;
                    self.timer_a = None;
                    self.timer_b = None;
                    self.timer_m = Some(now + self.config.timeout());
                    self.out.event(TransactionEvent::Response(response));
                }
                300..=699 => {
                    self.state = InviteClientState::Completed;
                    self.timer_a = None;
                    self.timer_b = None;
                    let ack = encode_request(&ack_for_non_2xx(&self.request, &response));
                    self.out.send(self.destination, &ack, false);
                    self.ack = Some(ack);
                    self.out.event(TransactionEvent::Response(response));
                    if self.destination.is_reliable() {
                        self.terminate();
                    } else {
                        self.timer_d = Some(now + self.config.timer_d);
                    }
                }
                _ => {}
            },
            InviteClientState::Completed => {
                if (300..=699).contains(&code) {
                    if let Some(ack) = &self.ack {
                        self.out.send(self.destination, ack, true);
                    }
                }
            }
            InviteClientState::Accepted => {
                if (200..=299).contains(&code) {
                    self.out.event(TransactionEvent::Response(response));
                }
            }
            InviteClientState::Terminated => {}
        }
    }

    /// Fires the timers that are due at `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.state == InviteClientState::Calling && due(self.timer_b, now) {
            self.out.event(TransactionEvent::Timeout);
            self.terminate();
            return;
        }
        if let Some(a) = Backoff::due(self.timer_a, now) {
            self.out.send(self.destination, &self.encoded, true);
            self.timer_a = Some(a.doubled(now, Duration::MAX)); // A *= 2, uncapped
        }
        if due(self.timer_d, now) || due(self.timer_m, now) {
            self.terminate();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::{response_for, tests::invite};
    use crate::transaction::{tests::bob, Outgoing};

    fn drain(tx: &mut InviteClient) -> (Vec<Outgoing>, Vec<TransactionEvent>) {
        (std::iter::from_fn(|| tx.poll_transmit()).collect(), std::iter::from_fn(|| tx.poll_event()).collect())
    }

    #[test]
    fn timer_a_doubles_without_cap_until_timer_b_times_out() {
        let t0 = Instant::now();
        let mut tx = InviteClient::new(invite(), bob(), TimerConfig::default(), t0).unwrap();
        let mut sent = vec![];
        while let Some(at) = tx.poll_timeout() {
            tx.handle_timeout(at);
            let (out, _) = drain(&mut tx);
            sent.extend(out.iter().filter(|o| o.retransmission).map(|_| at - t0));
        }
        let ms: Vec<u128> = sent.iter().map(|d| d.as_millis()).collect();
        // T1 = 500 ms: retransmits 0.5, 1.5, 3.5, 7.5, 15.5, 31.5 s; the next (63.5 s) is after B.
        assert_eq!(ms, vec![500, 1500, 3500, 7500, 15500, 31500]);
        assert!(tx.is_terminated());
    }

    #[test]
    fn timer_b_reports_timeout_at_64_t1() {
        let t0 = Instant::now();
        let mut tx = InviteClient::new(invite(), bob(), TimerConfig::default(), t0).unwrap();
        let mut last = t0;
        while let Some(at) = tx.poll_timeout() {
            tx.handle_timeout(at);
            last = at;
        }
        assert_eq!(last - t0, Duration::from_secs(32));
        let (_, events) = drain(&mut tx);
        assert_eq!(events[events.len() - 2..], [TransactionEvent::Timeout, TransactionEvent::Terminated]);
    }

    #[test]
    fn non_2xx_is_acked_once_per_retransmission_and_reported_once() {
        let t0 = Instant::now();
        let inv = invite();
        let mut tx = InviteClient::new(inv.clone(), bob(), TimerConfig::default(), t0).unwrap();
        drain(&mut tx);
        let busy = response_for(&inv, 486, None, Some("x"));
        tx.handle_message(busy.clone(), t0);
        let (out, events) = drain(&mut tx);
        assert_eq!(out.len(), 1);
        assert!(out[0].payload.starts_with(b"ACK "));
        assert_eq!(events, vec![TransactionEvent::Response(busy.clone())]);
        tx.handle_message(busy, t0 + Duration::from_secs(1));
        let (out, events) = drain(&mut tx);
        assert_eq!(out.len(), 1);
        assert!(out[0].retransmission && out[0].payload.starts_with(b"ACK "));
        assert!(events.is_empty());
        assert_eq!(tx.poll_timeout(), Some(t0 + Duration::from_secs(32)), "Timer D");
    }

    #[test]
    fn provisional_stops_retransmissions_and_timer_b() {
        let t0 = Instant::now();
        let inv = invite();
        let mut tx = InviteClient::new(inv.clone(), bob(), TimerConfig::default(), t0).unwrap();
        tx.handle_message(response_for(&inv, 180, None, Some("x")), t0);
        assert_eq!(tx.state(), InviteClientState::Proceeding);
        assert_eq!(tx.poll_timeout(), None);
    }

    #[test]
    fn every_2xx_passes_up_while_accepted_and_no_ack_is_generated() {
        let t0 = Instant::now();
        let inv = invite();
        let mut tx = InviteClient::new(inv.clone(), bob(), TimerConfig::default(), t0).unwrap();
        drain(&mut tx);
        let ok = response_for(&inv, 200, None, Some("x"));
        tx.handle_message(ok.clone(), t0);
        tx.handle_message(ok.clone(), t0 + Duration::from_millis(500));
        let (out, events) = drain(&mut tx);
        assert!(out.is_empty(), "ACK for 2xx is the TU's");
        assert_eq!(events, vec![TransactionEvent::Response(ok.clone()), TransactionEvent::Response(ok)]);
        assert_eq!(tx.state(), InviteClientState::Accepted);
        tx.handle_timeout(t0 + Duration::from_secs(32));
        assert!(tx.is_terminated());
    }

    #[test]
    fn reliable_transport_never_retransmits_and_terminates_after_ack() {
        let t0 = Instant::now();
        let inv = invite();
        let mut tx = InviteClient::new(inv.clone(), Peer::tcp("192.0.2.2:5060".parse().unwrap()), TimerConfig::default(), t0).unwrap();
        assert_eq!(tx.poll_timeout(), Some(t0 + Duration::from_secs(32)), "only Timer B");
        tx.handle_message(response_for(&inv, 603, None, Some("x")), t0);
        let (out, _) = drain(&mut tx);
        assert_eq!(out.iter().filter(|o| o.retransmission).count(), 0);
        assert!(tx.is_terminated(), "Timer D is zero on reliable transports");
    }

    #[test]
    fn transport_error_is_reported_and_terminates() {
        let t0 = Instant::now();
        let mut tx = InviteClient::new(invite(), bob(), TimerConfig::default(), t0).unwrap();
        tx.handle_transport_error(t0);
        let (_, events) = drain(&mut tx);
        assert_eq!(events, vec![TransactionEvent::TransportError, TransactionEvent::Terminated]);
        assert_eq!(tx.poll_timeout(), None);
    }

    #[test]
    fn only_invite_starts_an_invite_client() {
        let mut req = invite();
        req.method = Method::Options;
        assert!(matches!(InviteClient::new(req, bob(), TimerConfig::default(), Instant::now()), Err(TransactionError::WrongMethod { .. })));
    }
}
