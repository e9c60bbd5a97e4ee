//! RADIUS accounting (RFC 2866) of calls to the operator's billing system: Start when a call is
//! answered, Interim-Update every `interim_s` while it lasts, Stop when it ends, one session per
//! call. Packets are built and checked here (the `radius` crate's dictionaries and
//! authenticators); the driver sends them ([`crate::driver`]): each server in order, `retries`
//! times with `timeout_ms`, then, if none answered, again later with Acct-Delay-Time, from a
//! bounded queue. CDRs are written to the store whatever RADIUS does.
//!
//! ```toml
//! [radius]
//! accounting = ["127.0.0.1:1813"]   # accounting servers, tried in order (none: off)
//! secret = "testing123"             # the shared secret
//! nas_identifier = "cp1"            # NAS-Identifier (default: [billing] node)
//! timeout_ms = 1000                 # per try (default 1000)
//! retries = 3                       # tries per server (default 3)
//! interim_s = 300                   # Interim-Update period (default 0: none)
//! authentication = ["127.0.0.1:1812"]   # optional: calls out through trunks are authorised by
//!                                   # these (Access-Request, Service-Type Call-Check; Accept's
//!                                   # Session-Timeout is the call's longest) instead of the
//!                                   # local accounts
//! require_message_authenticator = false  # refuse answers without one (RFC 3579; true with
//!                                   # servers that send it: FreeRADIUS 3.2.5 and later)
//! retry_s = 30                      # no server answered: records wait this long, then go
//!                                   # again (kept meanwhile, up to 100,000)
//! ```
//!
//! Attributes: Acct-Status-Type, Acct-Session-Id (`<node>-<call>-<answer ms>`), User-Name (the
//! caller), Calling-Station-Id, Called-Station-Id (the number dialled out, else the callee),
//! NAS-Identifier, Event-Timestamp, Acct-Delay-Time when sent late; Stop and Interim-Update add
//! Acct-Session-Time, Stop adds Acct-Terminate-Cause (User-Request; Session-Timeout for a call
//! whose credit ran out; Lost-Service for one that failed).

use std::net::SocketAddr;
use std::time::Duration;

use radius::core::avp::AVP;
use radius::core::code::Code;
use radius::core::packet::Packet;
use radius::core::{rfc2865, rfc2866};
use serde::Deserialize;

/// `[radius]` settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RadiusConfig {
    pub accounting: Vec<SocketAddr>,
    pub secret: String,
    pub nas_identifier: String,
    pub timeout: Duration,
    pub retries: u32,
    pub interim: Option<Duration>,
    /// After every server failed, records wait this long before they are sent again.
    pub retry: Duration,
    /// Authorisation servers (RFC 2865): when set, a call out through a trunk goes only if one
    /// accepts it (Session-Timeout: its longest duration), instead of the local accounts.
    pub authentication: Vec<SocketAddr>,
    /// Answers without a Message-Authenticator are refused (RFC 3579; CVE-2024-3596). Servers
    /// before FreeRADIUS 3.2.5 (Debian 12 has 3.2.1) do not send one.
    pub require_message_authenticator: bool,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawRadius {
    accounting: Option<Vec<String>>,
    secret: Option<String>,
    nas_identifier: Option<String>,
    timeout_ms: Option<u64>,
    retries: Option<u32>,
    interim_s: Option<u64>,
    retry_s: Option<u64>,
    authentication: Option<Vec<String>>,
    require_message_authenticator: Option<bool>,
}

impl RawRadius {
    /// The settings (`None`: no accounting servers), or the key that is wrong and why.
    pub(crate) fn build(self, node: &str) -> Result<Option<RadiusConfig>, (&'static str, String)> {
        let addresses = |key: &'static str, list: Option<Vec<String>>| {
            list.unwrap_or_default()
                .iter()
                .map(|s| s.parse::<SocketAddr>().map_err(|_| (key, format!("{s:?} is not an address like 127.0.0.1:1812"))))
                .collect::<Result<Vec<_>, _>>()
        };
        let accounting = addresses("radius.accounting", self.accounting)?;
        let authentication = addresses("radius.authentication", self.authentication)?;
        if accounting.is_empty() && authentication.is_empty() {
            return Ok(None);
        }
        let secret = self.secret.unwrap_or_default();
        if secret.is_empty() || secret.len() > 128 {
            return Err(("radius.secret", "must be 1-128 characters".into()));
        }
        let timeout_ms = self.timeout_ms.unwrap_or(1000);
        if !(10..=30_000).contains(&timeout_ms) {
            return Err(("radius.timeout_ms", format!("{timeout_ms} is not 10-30000")));
        }
        let retries = self.retries.unwrap_or(3);
        if !(1..=10).contains(&retries) {
            return Err(("radius.retries", format!("{retries} is not 1-10")));
        }
        let interim = match self.interim_s.unwrap_or(0) {
            0 => None,
            s if (60..=86_400).contains(&s) => Some(Duration::from_secs(s)),
            s => return Err(("radius.interim_s", format!("{s} is not 0 or 60-86400"))),
        };
        let retry_s = self.retry_s.unwrap_or(30);
        if !(1..=3600).contains(&retry_s) {
            return Err(("radius.retry_s", format!("{retry_s} is not 1-3600")));
        }
        let nas_identifier = self.nas_identifier.unwrap_or_else(|| node.to_owned());
        if nas_identifier.is_empty() || nas_identifier.len() > 253 {
            return Err(("radius.nas_identifier", "must be 1-253 bytes".into()));
        }
        Ok(Some(RadiusConfig {
            require_message_authenticator: self.require_message_authenticator.unwrap_or(false),
            authentication,
            retry: Duration::from_secs(retry_s),
            accounting,
            secret,
            nas_identifier,
            timeout: Duration::from_millis(timeout_ms),
            retries,
            interim,
        }))
    }
}

/// Which accounting record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Start,
    Interim,
    Stop,
}

/// One accounting record to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub status: Status,
    pub session_id: String,
    pub user: String,
    pub calling: String,
    pub called: String,
    /// Seconds answered so far (Interim, Stop).
    pub session_time_s: u32,
    /// Why it ended (Stop): the call's cause (`completed`, `hangup`, `credit`, …).
    pub cause: String,
    /// When it happened, UNIX seconds.
    pub event_unix: u32,
}

/// Event-Timestamp (RFC 2869).
const EVENT_TIMESTAMP: u8 = 55;

fn terminate_cause(cause: &str) -> u32 {
    match cause {
        "credit" => rfc2866::ACCT_TERMINATE_CAUSE_SESSION_TIMEOUT,
        "failed" | "no-ack" => rfc2866::ACCT_TERMINATE_CAUSE_LOST_SERVICE,
        "hangup" => rfc2866::ACCT_TERMINATE_CAUSE_ADMIN_RESET,
        _ => rfc2866::ACCT_TERMINATE_CAUSE_USER_REQUEST,
    }
}

/// The Accounting-Request for `record` (`identifier`; `delay_s`: how late it is sent).
pub fn encode(record: &Record, config: &RadiusConfig, identifier: u8, delay_s: u32) -> Result<Vec<u8>, String> {
    let mut p = Packet::new_with_identifier(Code::AccountingRequest, config.secret.as_bytes(), identifier);
    let status = match record.status {
        Status::Start => rfc2866::ACCT_STATUS_TYPE_START,
        Status::Interim => rfc2866::ACCT_STATUS_TYPE_INTERIM_UPDATE,
        Status::Stop => rfc2866::ACCT_STATUS_TYPE_STOP,
    };
    rfc2866::add_acct_status_type(&mut p, status);
    rfc2866::add_acct_session_id(&mut p, &record.session_id);
    // Attribute values are at most 253 bytes: cut on a character boundary.
    let text = |s: &str| {
        let mut end = s.len().min(253);
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s[..end].to_owned()
    };
    if !record.user.is_empty() {
        rfc2865::add_user_name(&mut p, &text(&record.user));
    }
    if !record.calling.is_empty() {
        rfc2865::add_calling_station_id(&mut p, &text(&record.calling));
    }
    if !record.called.is_empty() {
        rfc2865::add_called_station_id(&mut p, &text(&record.called));
    }
    rfc2865::add_nas_identifier(&mut p, &config.nas_identifier);
    p.add(AVP::from_u32(EVENT_TIMESTAMP, record.event_unix));
    if delay_s > 0 {
        rfc2866::add_acct_delay_time(&mut p, delay_s);
    }
    if record.status != Status::Start {
        rfc2866::add_acct_session_time(&mut p, record.session_time_s);
    }
    if record.status == Status::Stop {
        rfc2866::add_acct_terminate_cause(&mut p, terminate_cause(&record.cause));
    }
    p.encode().map_err(|e| e.to_string())
}

/// A call to authorise (RFC 2865): who pays, the caller, the number dialled out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthRequest {
    /// Names the call's setup until the answer comes back.
    pub id: u64,
    pub user: String,
    pub calling: String,
    pub called: String,
}

/// The server's answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthAnswer {
    /// Access-Accept, with the call's longest duration if the server gave one.
    Accept { session_timeout: Option<u32> },
    /// Access-Reject.
    Reject,
    /// No server answered.
    NoAnswer,
}

/// Session-Timeout (RFC 2865, 27).
const SESSION_TIMEOUT: u8 = 27;
/// Service-Type Call-Check (RFC 2865 §5.6): authorise a call, no password.
const CALL_CHECK: u32 = 10;

/// The Access-Request for `request` (a random Request Authenticator, as RFC 2865 §3 wants).
pub fn encode_access_request(request: &AuthRequest, config: &RadiusConfig, identifier: u8) -> Result<Vec<u8>, String> {
    let mut p = Packet::new_with_identifier(Code::AccessRequest, config.secret.as_bytes(), identifier);
    let text = |s: &str| {
        let mut end = s.len().min(253);
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s[..end].to_owned()
    };
    rfc2865::add_user_name(&mut p, &text(&request.user));
    rfc2865::add_service_type(&mut p, CALL_CHECK);
    if !request.calling.is_empty() {
        rfc2865::add_calling_station_id(&mut p, &text(&request.calling));
    }
    rfc2865::add_called_station_id(&mut p, &text(&request.called));
    rfc2865::add_nas_identifier(&mut p, &config.nas_identifier);
    p.add(AVP::from_bytes(MESSAGE_AUTHENTICATOR, &[0; 16]));
    let mut bytes = p.encode().map_err(|e| e.to_string())?;
    sign(&mut bytes, None, &config.secret);
    Ok(bytes)
}

/// Message-Authenticator (RFC 3579 §3.2, 80).
const MESSAGE_AUTHENTICATOR: u8 = 80;

/// Where `packet`'s Message-Authenticator value is (its 16 bytes), if it has one.
fn message_authenticator_at(packet: &[u8]) -> Option<usize> {
    let len = usize::from(u16::from_be_bytes([*packet.get(2)?, *packet.get(3)?])).min(packet.len());
    let mut i = 20;
    while i + 2 <= len {
        let (kind, size) = (packet[i], usize::from(packet[i + 1]));
        if size < 2 || i + size > len {
            return None;
        }
        if kind == MESSAGE_AUTHENTICATOR && size == 18 {
            return Some(i + 2);
        }
        i += size;
    }
    None
}

/// HMAC-MD5 over `packet` with its Message-Authenticator zeroed and, for a response, the
/// request's authenticator in place of its own (RFC 3579 §3.2).
fn message_authenticator(packet: &[u8], at: usize, request_authenticator: Option<&[u8]>, secret: &str) -> [u8; 16] {
    use hmac::{Hmac, KeyInit, Mac};
    let mut copy = packet.to_vec();
    copy[at..at + 16].fill(0);
    if let Some(ra) = request_authenticator {
        copy[4..20].copy_from_slice(ra);
    }
    let mut mac = <Hmac<md5::Md5> as KeyInit>::new_from_slice(secret.as_bytes()).expect("HMAC takes any key length");
    mac.update(&copy);
    mac.finalize().into_bytes().into()
}

/// Fills in `packet`'s Message-Authenticator (a request: `request_authenticator` None).
fn sign(packet: &mut [u8], request_authenticator: Option<&[u8]>, secret: &str) {
    if let Some(at) = message_authenticator_at(packet) {
        let value = message_authenticator(packet, at, request_authenticator, secret);
        packet[at..at + 16].copy_from_slice(&value);
    }
}

/// The server's answer to `request`, if `response` is one (checked by its authenticator).
/// A Message-Authenticator in it must check; with `require`, it must have one (CVE-2024-3596,
/// "BlastRADIUS": an answer without one could be forged by someone on the path).
pub fn decode_access_answer(response: &[u8], request: &[u8], secret: &str, require: bool) -> Option<AuthAnswer> {
    if response.len() < 20 || request.len() < 20 || response.get(1) != request.get(1) {
        return None;
    }
    if !Packet::is_authentic_response(response, request, secret.as_bytes()) {
        return None;
    }
    match message_authenticator_at(response) {
        Some(at) => {
            let expected = message_authenticator(response, at, Some(&request[4..20]), secret);
            if !subtle_eq(&expected, &response[at..at + 16]) {
                return None;
            }
        }
        None if require => return None,
        None => {}
    }
    match Code::from(*response.first()?) {
        Code::AccessAccept => {
            let p = Packet::decode(response, secret.as_bytes()).ok()?;
            let session_timeout = p.lookup(SESSION_TIMEOUT).and_then(|a| a.encode_u32().ok());
            Some(AuthAnswer::Accept { session_timeout })
        }
        Code::AccessReject => Some(AuthAnswer::Reject),
        _ => None,
    }
}

fn subtle_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Whether `response` is the server's Accounting-Response to `request`.
pub fn is_response(response: &[u8], request: &[u8], secret: &str) -> bool {
    response.first() == Some(&(Code::AccountingResponse as u8))
        && response.get(1) == request.get(1)
        && Packet::is_authentic_response(response, request, secret.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> RadiusConfig {
        RawRadius { accounting: Some(vec!["127.0.0.1:1813".into()]), secret: Some("testing123".into()), ..RawRadius::default() }
            .build("cp1")
            .unwrap()
            .unwrap()
    }

    fn record(status: Status) -> Record {
        Record {
            status,
            session_id: "cp1-7-1800000000000".into(),
            user: "alice@sip.test".into(),
            calling: "sip:alice@sip.test".into(),
            called: "00441611234567".into(),
            session_time_s: 65,
            cause: "credit".into(),
            event_unix: 1_800_000_065,
        }
    }

    #[test]
    fn an_accounting_request_carries_its_attributes_and_an_authenticator_the_server_can_check() {
        let c = config();
        let bytes = encode(&record(Status::Stop), &c, 9, 30).unwrap();
        assert!(Packet::is_authentic_request(&bytes, b"testing123"), "RFC 2866 request authenticator");
        assert!(!Packet::is_authentic_request(&bytes, b"wrong"));
        let p = Packet::decode(&bytes, b"testing123").unwrap();
        assert_eq!((p.get_code(), p.get_identifier()), (Code::AccountingRequest, 9));
        assert_eq!(rfc2866::lookup_acct_status_type(&p).unwrap().unwrap(), rfc2866::ACCT_STATUS_TYPE_STOP);
        assert_eq!(rfc2866::lookup_acct_session_id(&p).unwrap().unwrap(), "cp1-7-1800000000000");
        assert_eq!(rfc2866::lookup_acct_session_time(&p).unwrap().unwrap(), 65);
        assert_eq!(rfc2866::lookup_acct_delay_time(&p).unwrap().unwrap(), 30);
        assert_eq!(rfc2866::lookup_acct_terminate_cause(&p).unwrap().unwrap(), rfc2866::ACCT_TERMINATE_CAUSE_SESSION_TIMEOUT);
        assert_eq!(rfc2865::lookup_called_station_id(&p).unwrap().unwrap(), "00441611234567");
        assert_eq!(rfc2865::lookup_nas_identifier(&p).unwrap().unwrap(), "cp1");
        let start = Packet::decode(&encode(&record(Status::Start), &c, 10, 0).unwrap(), b"testing123").unwrap();
        assert!(rfc2866::lookup_acct_session_time(&start).is_none() && rfc2866::lookup_acct_delay_time(&start).is_none());
        // The server's answer is recognised by its authenticator, not by its identifier alone.
        let request = encode(&record(Status::Start), &c, 11, 0).unwrap();
        let answer = Packet::decode(&request, b"testing123").unwrap().make_response_packet(Code::AccountingResponse);
        let mut answer_bytes = answer.encode().unwrap();
        // make_response_packet keeps the request's authenticator; the response's is over it.
        assert!(is_response(&answer_bytes, &request, "testing123"));
        assert!(!is_response(&answer_bytes, &request, "other-secret"));
        answer_bytes[1] = 12;
        assert!(!is_response(&answer_bytes, &request, "testing123"));
    }

    #[test]
    fn an_access_request_checks_a_call_and_the_answer_is_read_with_its_session_timeout() {
        let c = config();
        let request =
            AuthRequest { id: 1, user: "alice@sip.test".into(), calling: "sip:alice@sip.test".into(), called: "00441611234567".into() };
        let bytes = encode_access_request(&request, &c, 5).unwrap();
        let p = Packet::decode(&bytes, b"testing123").unwrap();
        assert_eq!(p.get_code(), Code::AccessRequest);
        assert_eq!(rfc2865::lookup_service_type(&p).unwrap().unwrap(), CALL_CHECK);
        assert_eq!(rfc2865::lookup_called_station_id(&p).unwrap().unwrap(), "00441611234567");
        let at = message_authenticator_at(&bytes).expect("the request carries a Message-Authenticator");
        assert_eq!(message_authenticator(&bytes, at, None, "testing123"), bytes[at..at + 16], "and it checks");
        // Answers as a server makes them: Message-Authenticator over the request's
        // authenticator, then the Response Authenticator over the whole.
        let answer = |code: Code, timeout: Option<u32>, with_ma: bool| {
            let mut r = Packet::new_with_identifier(code, b"testing123", 5);
            if let Some(t) = timeout {
                r.add(AVP::from_u32(SESSION_TIMEOUT, t));
            }
            if with_ma {
                r.add(AVP::from_bytes(MESSAGE_AUTHENTICATOR, &[0; 16]));
            }
            let mut out = r.encode().unwrap();
            out[4..20].copy_from_slice(&bytes[4..20]);
            sign(&mut out, Some(&bytes[4..20]), "testing123");
            let mut hashed = out.clone();
            hashed.extend_from_slice(b"testing123");
            let digest = <md5::Md5 as md5::Digest>::digest(&hashed);
            out[4..20].copy_from_slice(&digest);
            out
        };
        let accept = answer(Code::AccessAccept, Some(90), true);
        assert_eq!(decode_access_answer(&accept, &bytes, "testing123", true), Some(AuthAnswer::Accept { session_timeout: Some(90) }));
        assert_eq!(decode_access_answer(&accept, &bytes, "wrong", false), None, "not authentic");
        let without = answer(Code::AccessAccept, Some(90), false);
        assert_eq!(decode_access_answer(&without, &bytes, "testing123", true), None, "no Message-Authenticator, one required");
        assert_eq!(decode_access_answer(&without, &bytes, "testing123", false), Some(AuthAnswer::Accept { session_timeout: Some(90) }));
        let mut forged = accept.clone();
        let at = message_authenticator_at(&forged).unwrap();
        forged[at] ^= 1;
        assert_eq!(decode_access_answer(&forged, &bytes, "testing123", false), None, "a wrong one is refused even when not required");
        let reject = answer(Code::AccessReject, None, true);
        assert_eq!(decode_access_answer(&reject, &bytes, "testing123", true), Some(AuthAnswer::Reject));
        assert_eq!(decode_access_answer(&bytes, &bytes, "testing123", false), None, "a request is no answer");
        assert_eq!(decode_access_answer(&[], &bytes, "testing123", false), None);
    }

    #[test]
    fn settings_are_checked_naming_their_key() {
        assert_eq!(RawRadius::default().build("cp").unwrap(), None, "no servers: off");
        let bad = |r: RawRadius| r.build("cp").unwrap_err().0;
        let with = |secret: &str| RawRadius {
            accounting: Some(vec!["127.0.0.1:1813".into()]),
            secret: Some(secret.into()),
            ..RawRadius::default()
        };
        assert_eq!(bad(RawRadius { accounting: Some(vec!["radius.example".into()]), ..with("s") }), "radius.accounting");
        assert_eq!(bad(with("")), "radius.secret");
        assert_eq!(bad(RawRadius { interim_s: Some(5), ..with("s") }), "radius.interim_s");
        assert_eq!(bad(RawRadius { retries: Some(0), ..with("s") }), "radius.retries");
        assert_eq!(with("s").build("node-7").unwrap().unwrap().nas_identifier, "node-7");
    }
}
