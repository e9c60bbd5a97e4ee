//! Prometheus metrics of the control plane: `GET /metrics` on `[metrics] listen` (the
//! OpenMetrics text format, through the `prometheus-client` crate).
//!
//! The HTTP side asks the driver's loop for the text over its input channel, so the counters
//! are read where the core lives, with no lock and no shared copy: SIP requests received by
//! method and responses sent by class, transactions, registrations, calls, authentication, abuse
//! limits, billing (holds, refusals by reason, calls cut off), the media client's outcomes, each
//! media plane's health and load, and media requests' latency (a histogram by request). `docs/grafana/control-plane.json` is a dashboard of
//! them.

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;

use crate::media_pool::RequestLabels;
use crate::server::{Stats, METHODS};

/// What one scrape shows.
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub stats: Stats,
    pub transactions_live: usize,
    pub server_transactions: u64,
    pub client_transactions: u64,
    pub retransmissions_sent: u64,
    pub registered_contacts: usize,
    pub calls_active: usize,
    pub media_negotiation_failures: u64,
    pub media_release_failures: u64,
    pub radius_acked: u64,
    pub radius_retries: u64,
    pub radius_deferred: u64,
    pub radius_dropped: u64,
    /// Each media plane's address and health.
    pub media_planes: Vec<(String, crate::media_pool::Health)>,
    /// Media requests refused by the pool (legs on two planes, or on a lost plane).
    pub media_refused: u64,
    /// Media requests' latency by request.
    pub media_latency: Family<RequestLabels, Histogram>,
}

fn one(encoder: &mut DescriptorEncoder, name: &str, help: &str, kind: MetricType, value: u64) -> Result<(), std::fmt::Error> {
    let metric = encoder.encode_descriptor(name, help, None, kind)?;
    match kind {
        MetricType::Counter => ConstCounter::new(value).encode(metric),
        _ => ConstGauge::new(i64::try_from(value).unwrap_or(i64::MAX)).encode(metric),
    }
}

impl Collector for Snapshot {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let s = &self.stats;
        let mut requests = encoder.encode_descriptor(
            "sip_requests_received",
            "SIP requests received (new transactions and ACKs), by method",
            None,
            MetricType::Counter,
        )?;
        for (i, count) in s.requests.iter().enumerate() {
            let method = METHODS.get(i).copied().unwrap_or("other");
            ConstCounter::new(*count).encode(requests.encode_family(&[("method", method)])?)?;
        }
        let mut responses = encoder.encode_descriptor("sip_responses_sent", "SIP responses sent, by class", None, MetricType::Counter)?;
        for (i, count) in s.responses.iter().enumerate() {
            let class = format!("{}xx", i + 1);
            ConstCounter::new(*count).encode(responses.encode_family(&[("class", class.as_str())])?)?;
        }
        let mut denied = encoder.encode_descriptor(
            "billing_calls_denied",
            "Calls (or their trunk branches) refused by billing, by reason",
            None,
            MetricType::Counter,
        )?;
        for (reason, count) in crate::billing::DENIALS.iter().zip(s.billing.denied) {
            ConstCounter::new(count).encode(denied.encode_family(&[("reason", *reason)])?)?;
        }
        let counters: [(&str, &str, u64); 47] = [
            ("sip_malformed", "Messages that did not parse", s.malformed),
            ("sip_server_transactions", "Server transactions created", self.server_transactions),
            ("sip_client_transactions", "Client transactions started", self.client_transactions),
            ("sip_retransmissions_sent", "Requests and responses sent again by transactions", self.retransmissions_sent),
            ("sip_registrations", "REGISTERs accepted", s.registrations),
            ("sip_registrations_refused", "REGISTERs refused after authentication", s.registrations_refused),
            ("sip_challenges", "Digest challenges sent (401/407)", s.challenges),
            ("sip_auth_failures", "Credentials refused (403)", s.auth_failures),
            ("sip_calls_started", "INVITEs that started a call", s.calls.calls_started),
            ("sip_calls_answered", "Calls answered", s.calls.calls_answered),
            ("sip_calls_failed", "Calls that ended with an error response to the caller", s.calls.calls_failed),
            ("sip_calls_cancelled", "Calls cancelled by the caller", s.calls.calls_cancelled),
            ("sip_calls_completed", "Calls that ended after being answered", s.calls.calls_completed),
            ("sip_media_allocations", "Media allocations the media plane completed", s.calls.media_allocations),
            ("sip_media_allocation_failures", "Media allocations that failed", s.calls.media_allocation_failures),
            ("sip_media_negotiation_failures", "Offers and answers the media plane refused or failed", self.media_negotiation_failures),
            (
                "sip_media_release_failures",
                "Media releases that failed (the media plane's timeout reclaims them)",
                self.media_release_failures,
            ),
            ("sip_rate_limited", "Messages dropped by the per-source rate limit", s.limits.rate_limited),
            ("sip_sources_banned", "Sources banned (rate or refused passwords)", s.limits.sources_banned),
            ("sip_scanners_dropped", "Requests from known scanners dropped unanswered", s.limits.scanners_dropped),
            ("sip_users_locked", "Users locked after refused passwords", s.limits.users_locked),
            ("sip_cdr_failures", "Calls whose detail records the store refused", s.cdr_failures),
            ("billing_holds", "Credit held for calls out through trunks", s.billing.holds),
            ("billing_settled", "Holds settled at their calls' end", s.billing.settled),
            ("billing_recovered", "Holds settled after a restart or their expiry", s.billing.recovered),
            ("billing_store_errors", "Ledger operations the store failed", s.billing.store_errors),
            ("sip_calls_cut_off", "Calls ended because their credit ran out", s.calls.calls_cut_off),
            ("sip_calls_announced", "Callers screening refused that heard the callee's announcement instead", s.calls.calls_announced),
            ("sip_transfers", "REFERs accepted (blind and attended transfers)", s.calls.transfers),
            ("sip_transfers_completed", "Transfers that joined the transferee to the target", s.calls.transfers_completed),
            ("sip_pickups", "Ringing calls picked up by another phone", s.calls.pickups),
            ("sip_parks", "Calls parked in an orbit", s.calls.parks),
            ("sip_park_retrievals", "Parked calls taken back from their orbit", s.calls.retrievals),
            ("sip_park_timeouts", "Parked calls nobody took back within the park timeout", s.calls.park_timeouts),
            ("sip_park_ring_backs", "Parked calls rung back to their parker and answered there", s.calls.park_ring_backs),
            ("sip_messages_relayed", "Instant messages (MESSAGE) sent on to a subscriber's phones", s.messages_relayed),
            ("sip_conferences_joined", "Calls a third party joined (Join), making them conferences", s.calls.conferences_joined),
            ("radius_acked", "RADIUS accounting records a server acknowledged", self.radius_acked),
            ("radius_retries", "RADIUS accounting tries after the first", self.radius_retries),
            ("radius_deferred", "RADIUS accounting records no server acknowledged (kept, sent again later)", self.radius_deferred),
            ("radius_dropped", "RADIUS accounting records lost to full queues", self.radius_dropped + s.radius_dropped),
            ("radius_rejected", "Calls out through trunks RADIUS refused (403)", s.radius_rejected),
            ("radius_unanswered", "Calls out through trunks no RADIUS server answered for (503)", s.radius_unanswered),
            ("callback_requests", "Callback requests", s.callbacks.requests),
            ("callback_refused", "Callback requests refused (account busy, rate, full)", s.callbacks.refused),
            ("callback_connected", "Callbacks whose two parties were joined", s.callbacks.connected),
            ("callback_failed", "Callbacks that ended without completing", s.callbacks.failed),
        ];
        for (name, help, value) in counters {
            one(&mut encoder, name, help, MetricType::Counter, value)?;
        }
        one(
            &mut encoder,
            "media_requests_refused",
            "Media requests refused: legs on two media planes, or on a lost one",
            MetricType::Counter,
            self.media_refused,
        )?;
        let mut up =
            encoder.encode_descriptor("media_plane_up", "1 if the media plane answered its last health check", None, MetricType::Gauge)?;
        for (uri, h) in &self.media_planes {
            ConstGauge::new(i64::from(h.up)).encode(up.encode_family(&[("media_plane", uri.as_str())])?)?;
        }
        let mut legs = encoder.encode_descriptor(
            "media_plane_legs",
            "Legs on the media plane (last health check, plus allocations since)",
            None,
            MetricType::Gauge,
        )?;
        for (uri, h) in &self.media_planes {
            ConstGauge::new(i64::try_from(h.legs).unwrap_or(i64::MAX)).encode(legs.encode_family(&[("media_plane", uri.as_str())])?)?;
        }
        let mut lost = encoder.encode_descriptor(
            "media_plane_lost",
            "Times the media plane was lost (restarted, or unreachable past media.lost_after_s): its calls were ended",
            None,
            MetricType::Counter,
        )?;
        for (uri, h) in &self.media_planes {
            ConstCounter::new(h.lost).encode(lost.encode_family(&[("media_plane", uri.as_str())])?)?;
        }
        one(&mut encoder, "sip_transactions_live", "Live SIP transactions", MetricType::Gauge, self.transactions_live as u64)?;
        one(&mut encoder, "sip_registered_contacts", "Registered contacts", MetricType::Gauge, self.registered_contacts as u64)?;
        one(&mut encoder, "sip_calls_active", "Calls in progress", MetricType::Gauge, self.calls_active as u64)
    }
}

/// The metrics text of `snapshot`.
pub fn render(snapshot: Snapshot) -> String {
    let mut registry = Registry::default();
    registry.register(
        "media_request_duration_seconds",
        "Time from a media request to its outcome (gRPC round trips to the media plane included), by request",
        snapshot.media_latency.clone(),
    );
    registry.register_collector(Box::new(snapshot));
    let mut out = String::new();
    match prometheus_client::encoding::text::encode(&mut out, &registry) {
        Ok(()) => out,
        Err(e) => format!("# encoding failed: {e}\n"),
    }
}
