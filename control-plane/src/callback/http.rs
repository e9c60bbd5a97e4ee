//! The callback triggers over HTTP (`[callback] listen`): a JSON API for integrators, a web
//! page for customers and a webhook for SMS and e-mail gateways.
//!
//! ```text
//!  POST /api/callback   Bearer token   {"account","a","b"?}            → 202 {"id"}
//!  GET  /api/callback/N Bearer token                                   → 200 {status}
//!  POST /api/webhook    Bearer token   {"from","text"|"subject"}       → 202 {"id"}
//!  GET  /api/cdr?since=MS&limit=N    Bearer token                      → 200 {"cdrs":[…],"more"}
//!  GET  /api/account/ID              Bearer token                      → 200 {balance, held, …}
//!  POST /api/account/ID/credit       Bearer token  {"amount","debit"?} → 200 {balance, …}
//!         text "acme 1234 +4930111 +4930222"  (account PIN customer destination), or
//!         text "4930555000#4930222"           (access number # destination; from: the customer)
//!  GET  /                the web page: account, PIN, your number, their number; progress
//!                        (a link's fragment may fill it: /#account=acme&a=+4930111&go=1)
//!  POST /web/callback    {"account","pin","a","b"?}                    → 202 {"id"}
//!  POST /web/status      {"account","pin","id"}                        → 200 {status}
//! ```
//!
//! Errors are JSON `{"error": "...", "field": "..."}`: 400 names the field, 401 a missing or
//! wrong token, 403 an unknown account or wrong PIN, 429 too many requests (per account, and
//! per source address here), 503 too many callbacks going. Handlers parse and check what they
//! can alone, then hand the request to the core's loop (which owns the store and the calls) and
//! wait for its answer.

use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::sync::{mpsc, oneshot};

use super::{CallbackConfig, Request, Status, Trigger};
use crate::now::Now;
use crate::server::{CallbackError, ControlPlane};
use crate::store::Store;

/// A request for the core's loop.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HttpCall {
    /// From the API (token checked).
    Api(Request),
    /// From the web page: checked against the account's PIN.
    Web { request: Request, pin: String },
    /// A job's status: for the API (token checked), or for the web page with the PIN.
    Status { id: u64, pin: Option<(String, String)> },
    /// A webhook message (token checked).
    Webhook { from: String, text: String },
    /// Detail records of calls that ended at or after `since_ms`, at most `limit` (token checked).
    Cdrs { since_ms: u64, limit: usize },
    /// An account, its balance and what its calls hold (token checked).
    Account { id: String },
    /// Adds (or with `debit`, takes) `amount` (a decimal) to an account (token checked).
    Credit { id: String, amount: String, debit: bool },
}

/// Most detail records one request returns.
pub const MAX_CDRS: usize = 10_000;

/// The answer: HTTP status and JSON body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpReply {
    pub status: u16,
    pub body: Value,
}

fn error(status: u16, field: Option<&str>, message: &str) -> HttpReply {
    let mut body = json!({ "error": message });
    if let Some(f) = field {
        body["field"] = json!(f);
    }
    HttpReply { status, body }
}

fn from_callback_error(e: CallbackError) -> HttpReply {
    match &e {
        CallbackError::Invalid(field, why) => error(400, Some(field), why),
        other => error(other.status(), None, &other.to_string()),
    }
}

fn status_json(s: &Status) -> Value {
    json!({
        "id": s.id,
        "account": s.account,
        "a": s.a,
        "b": s.b,
        "trigger": s.trigger.as_str(),
        "phase": s.phase.as_str(),
        "attempts": s.attempts,
        "result": s.result,
    })
}

/// Runs `call` on the core (the driver's loop calls this).
pub fn execute(call: HttpCall, core: &mut ControlPlane, store: &mut dyn Store, now: Now) -> HttpReply {
    let accepted = |id: u64| HttpReply { status: 202, body: json!({ "id": id, "status": format!("/api/callback/{id}") }) };
    match call {
        HttpCall::Api(request) => core.handle_callback(request, None, now, store).map_or_else(from_callback_error, accepted),
        HttpCall::Web { request, pin } => core.handle_callback(request, Some(&pin), now, store).map_or_else(from_callback_error, accepted),
        HttpCall::Status { id, pin } => {
            let status = core.callback_status(id);
            if let Some((account, pin)) = pin {
                let owner = status.as_ref().is_some_and(|s| s.account == account);
                let known = match store.account(&account, now.unix_ms()).ok().flatten() {
                    Some((a, _)) => core.check_pin(&a, &pin, now).is_ok(),
                    None => false,
                };
                if !owner || !known {
                    return error(403, None, "unknown account, PIN or callback");
                }
            }
            match status {
                Some(s) => HttpReply { status: 200, body: status_json(&s) },
                None => error(404, Some("id"), "no such callback (or it ended more than 10 minutes ago)"),
            }
        }
        HttpCall::Webhook { from, text } => webhook(core, store, &from, &text, now),
        HttpCall::Cdrs { since_ms, limit } => match store.cdrs(since_ms) {
            Ok(cdrs) => {
                let rows: Vec<Value> = cdrs.iter().take(limit.min(MAX_CDRS)).map(cdr_json).collect();
                HttpReply { status: 200, body: json!({ "cdrs": rows, "more": cdrs.len() > limit.min(MAX_CDRS) }) }
            }
            Err(e) => error(500, None, &format!("store: {e}")),
        },
        HttpCall::Account { id } => match store.account(&id, now.unix_ms()) {
            Ok(Some((a, usage))) => HttpReply { status: 200, body: account_json(&a, &usage) },
            Ok(None) => error(404, Some("id"), "no such account"),
            Err(e) => error(500, None, &format!("store: {e}")),
        },
        HttpCall::Credit { id, amount, debit } => {
            let command = crate::billing::accounts::Command::Credit { id: id.clone(), amount, debit };
            match crate::billing::accounts::run(store, command, now.unix_ms()) {
                Ok(_) => match store.account(&id, now.unix_ms()) {
                    Ok(Some((a, usage))) => HttpReply { status: 200, body: account_json(&a, &usage) },
                    _ => error(500, None, "the account went away"),
                },
                Err(crate::billing::accounts::Error::Invalid(e)) => error(400, Some(&e.key), &e.why),
                Err(crate::billing::accounts::Error::NotFound(_)) => error(404, Some("id"), "no such account"),
                Err(e) => error(500, None, &e.to_string()),
            }
        }
    }
}

fn cdr_json(c: &crate::store::Cdr) -> Value {
    json!({
        "call": c.call, "sip_call_id": c.sip_call_id, "leg": c.leg, "caller": c.caller, "callee": c.callee,
        "destination": c.destination, "answered_by": c.answered_by, "start_ms": c.start_ms, "answer_ms": c.answer_ms,
        "end_ms": c.end_ms, "duration_ms": c.duration_ms, "billed_s": c.billed_s,
        "cost": crate::billing::rating::format_amount(c.cost), "currency": c.currency, "rate_prefix": c.rate_prefix,
        "status": c.status, "cause": c.cause,
    })
}

fn account_json(a: &crate::billing::prepaid::Account, usage: &crate::billing::prepaid::Usage) -> Value {
    use crate::billing::rating::format_amount;
    json!({
        "id": a.id, "kind": a.kind.as_str(), "balance": format_amount(a.balance), "currency": a.currency,
        "held": format_amount(usage.held), "calls": usage.open, "calls_last_minute": usage.last_minute,
        "credit_limit": format_amount(a.credit_limit), "available": format_amount(a.available(usage)),
        "max_concurrent": a.max_concurrent, "max_per_minute": a.max_per_minute, "max_call_cost": format_amount(a.max_call_cost),
        "blocked": a.blocked, "ani": a.ani, "enabled": a.enabled,
    })
}

/// `since=MS&limit=N` of `GET /api/cdr`.
pub fn parse_cdr_query(query: Option<&str>) -> Result<HttpCall, HttpReply> {
    let (mut since_ms, mut limit) = (0u64, 1000usize);
    for pair in query.unwrap_or_default().split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        match key {
            "since" => since_ms = value.parse().map_err(|_| error(400, Some("since"), "not UNIX milliseconds"))?,
            "limit" => {
                limit = value.parse().ok().filter(|n| (1..=MAX_CDRS).contains(n)).ok_or_else(|| error(400, Some("limit"), "not 1-10000"))?
            }
            _ => return Err(error(400, Some("query"), &format!("unknown parameter {key:?} (since, limit)"))),
        }
    }
    Ok(HttpCall::Cdrs { since_ms, limit })
}

/// A webhook message: `account pin customer destination`, or `access-number#destination` from
/// the customer's number.
fn webhook(core: &mut ControlPlane, store: &mut dyn Store, from: &str, text: &str, now: Now) -> HttpReply {
    let words: Vec<&str> = text.split_whitespace().collect();
    let (request, pin) = match words.as_slice() {
        [account, pin, a, b] => (
            Request {
                account: (*account).to_owned(),
                a: (*a).to_owned(),
                b: Some((*b).to_owned()),
                trigger: Trigger::Webhook,
                delay: Duration::ZERO,
            },
            Some((*pin).to_owned()),
        ),
        [one] if one.contains('#') => {
            let (did, b) = one.split_once('#').unwrap_or_default();
            if core.callback_did(did.trim_start_matches('+')).is_none() {
                return error(400, Some("text"), "the number before # is not an access number of ours");
            }
            let account = match store.account_by_ani(from) {
                Ok(Some(a)) if a.enabled => a.id,
                Ok(_) => return error(403, Some("from"), "this number is no customer's"),
                Err(e) => return error(500, None, &format!("store: {e}")),
            };
            (Request { account, a: from.to_owned(), b: Some(b.to_owned()), trigger: Trigger::Webhook, delay: Duration::ZERO }, None)
        }
        _ => return error(400, Some("text"), "expected \"account pin customer destination\" or \"access-number#destination\""),
    };
    let accepted = |id: u64| HttpReply { status: 202, body: json!({ "id": id, "status": format!("/api/callback/{id}") }) };
    core.handle_callback(request, pin.as_deref(), now, store).map_or_else(from_callback_error, accepted)
}

/// A string field of a JSON object: `Err` names it.
fn field(body: &Value, name: &'static str, required: bool) -> Result<Option<String>, HttpReply> {
    match body.get(name) {
        None | Some(Value::Null) if !required => Ok(None),
        Some(Value::String(s)) if s.is_empty() && !required => Ok(None),
        Some(Value::String(s)) if !s.is_empty() && s.len() <= 256 => Ok(Some(s.clone())),
        None | Some(Value::Null) => Err(error(400, Some(name), "missing")),
        Some(Value::Number(n)) => Ok(Some(n.to_string())),
        _ => Err(error(400, Some(name), "must be a string of 1-256 characters")),
    }
}

fn parse_json(bytes: &[u8]) -> Result<Value, HttpReply> {
    match serde_json::from_slice::<Value>(bytes) {
        Ok(v @ Value::Object(_)) => Ok(v),
        Ok(_) => Err(error(400, Some("body"), "must be a JSON object")),
        Err(e) => Err(error(400, Some("body"), &format!("not JSON: {e}"))),
    }
}

/// A callback request from a JSON body (`a`, `b`; `account` unless given).
fn request_of(body: &Value, trigger: Trigger) -> Result<Request, HttpReply> {
    let account = field(body, "account", true)?.unwrap_or_default();
    let a = field(body, "a", true)?.unwrap_or_default();
    let b = field(body, "b", false)?;
    Ok(Request { account, a, b, trigger, delay: Duration::ZERO })
}

/// The body of `POST /web/callback`: the request and the PIN.
pub fn parse_web(body: &[u8]) -> Result<(Request, String), HttpReply> {
    let b = parse_json(body)?;
    Ok((request_of(&b, Trigger::Web)?, field(&b, "pin", true)?.unwrap_or_default()))
}

/// The body of `POST /api/callback`.
pub fn parse_api(body: &[u8]) -> Result<Request, HttpReply> {
    request_of(&parse_json(body)?, Trigger::Api)
}

/// The body of `POST /api/webhook`: the sender and the text (its subject when it has one).
pub fn parse_webhook(body: &[u8]) -> Result<(String, String), HttpReply> {
    let b = parse_json(body)?;
    let from = field(&b, "from", true)?.unwrap_or_default();
    let text = match field(&b, "subject", false)? {
        Some(s) => s,
        None => field(&b, "text", true)?.unwrap_or_default(),
    };
    Ok((from, text))
}

/// The body of `POST /web/status`: the callback it asks about, with the account and PIN.
pub fn parse_status(body: &[u8]) -> Result<HttpCall, HttpReply> {
    let b = parse_json(body)?;
    let account = field(&b, "account", true)?.unwrap_or_default();
    let pin = field(&b, "pin", true)?.unwrap_or_default();
    let id = field(&b, "id", true)?.unwrap_or_default().parse::<u64>().map_err(|_| error(400, Some("id"), "not a callback id"))?;
    Ok(HttpCall::Status { id, pin: Some((account, pin)) })
}

/// Requests per source address a minute.
#[derive(Debug, Default)]
struct Sources {
    seen: HashMap<IpAddr, VecDeque<Instant>>,
    swept: Option<Instant>,
}

impl Sources {
    /// Whether `ip` may make another request at `now` (IPv6 addresses count by /64).
    fn allow(&mut self, ip: IpAddr, per_minute: u32, now: Instant) -> bool {
        let key = match ip {
            IpAddr::V6(v6) => {
                let s = v6.segments();
                IpAddr::V6(std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
            v4 => v4,
        };
        if !self.seen.contains_key(&key) && self.seen.len() >= MAX_SOURCES {
            // Full: the idle go, at most once a second; a new source waits until there is room.
            if self.swept.is_none_or(|t| now.saturating_duration_since(t) >= Duration::from_secs(1)) {
                self.swept = Some(now);
                self.seen.retain(|_, q| q.back().is_some_and(|t| now.saturating_duration_since(*t) < Duration::from_secs(60)));
            }
            if self.seen.len() >= MAX_SOURCES {
                return false;
            }
        }
        let q = self.seen.entry(key).or_default();
        while q.front().is_some_and(|t| now.saturating_duration_since(*t) >= Duration::from_secs(60)) {
            q.pop_front();
        }
        if q.len() >= per_minute as usize {
            return false;
        }
        q.push_back(now);
        true
    }
}

/// Sources remembered by the per-source limit.
const MAX_SOURCES: usize = 100_000;

/// What the core's loop receives.
pub type Job = (HttpCall, oneshot::Sender<HttpReply>);

#[derive(Clone)]
struct State {
    config: Arc<CallbackConfig>,
    tx: mpsc::Sender<Job>,
    sources: Arc<Mutex<Sources>>,
}

impl State {
    async fn run(&self, call: HttpCall) -> HttpReply {
        let (reply, answer) = oneshot::channel();
        if self.tx.send((call, reply)).await.is_err() {
            return error(503, None, "stopping");
        }
        answer.await.unwrap_or_else(|_| error(503, None, "stopping"))
    }

    /// 401 unless the request carries one of the API tokens.
    fn deny(&self, headers: &axum::http::HeaderMap) -> Option<axum::response::Response> {
        (!self.token_ok(headers)).then(|| respond(error(401, Some("Authorization"), "a Bearer token of [callback] api_tokens is needed")))
    }

    fn token_ok(&self, headers: &axum::http::HeaderMap) -> bool {
        let given = headers.get(axum::http::header::AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer "));
        given.is_some_and(|g| self.config.api_tokens.iter().any(|t| constant_time_eq(t.as_bytes(), g.trim().as_bytes())))
    }

    /// 429 for a source over its rate.
    fn guard(&self, addr: SocketAddr) -> Option<HttpReply> {
        (!self.source_ok(addr.ip())).then(|| error(429, None, "too many requests from this address"))
    }

    fn source_ok(&self, ip: IpAddr) -> bool {
        // Several customers may share an address (NAT): ten times an account's allowance.
        let per_minute = self.config.requests_per_minute.saturating_mul(10);
        self.sources.lock().map(|mut s| s.allow(ip, per_minute, Instant::now())).unwrap_or(true)
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn respond(reply: HttpReply) -> axum::response::Response {
    use axum::response::IntoResponse;
    let status = axum::http::StatusCode::from_u16(reply.status).unwrap_or(axum::http::StatusCode::INTERNAL_SERVER_ERROR);
    (status, axum::Json(reply.body)).into_response()
}

/// Serves the triggers on `listener` until the process stops; requests go to `tx`.
pub async fn serve(listener: tokio::net::TcpListener, config: CallbackConfig, tx: mpsc::Sender<Job>) {
    use axum::extract::{ConnectInfo, Path, State as S};
    use axum::http::HeaderMap;
    use axum::routing::{get, post};
    let state = State { config: Arc::new(config), tx, sources: Arc::default() };
    type Parse = fn(&[u8]) -> Result<HttpCall, HttpReply>;
    // A POST trigger: the token (API and webhook), the source's rate, the body, the core.
    async fn trigger(
        state: State,
        addr: SocketAddr,
        headers: HeaderMap,
        token: bool,
        body: axum::body::Bytes,
        parse: Parse,
    ) -> axum::response::Response {
        if let Some(denied) = state.deny(&headers).filter(|_| token) {
            return denied;
        }
        if let Some(e) = state.guard(addr) {
            return respond(e);
        }
        match parse(&body) {
            Ok(call) => respond(state.run(call).await),
            Err(e) => respond(e),
        }
    }
    let post_trigger = |token: bool, parse: Parse| {
        post(move |S(state): S<State>, ConnectInfo(addr): ConnectInfo<SocketAddr>, headers: HeaderMap, body: axum::body::Bytes| {
            trigger(state, addr, headers, token, body, parse)
        })
    };
    let app = axum::Router::new()
        .route("/", get(|| async { axum::response::Html(PAGE) }))
        .route("/api/callback", post_trigger(true, |b| parse_api(b).map(HttpCall::Api)))
        .route(
            "/api/callback/{id}",
            get(|S(state): S<State>, headers: HeaderMap, Path(id): Path<String>| async move {
                if let Some(denied) = state.deny(&headers) {
                    return denied;
                }
                match id.parse::<u64>() {
                    Ok(id) => respond(state.run(HttpCall::Status { id, pin: None }).await),
                    Err(_) => respond(error(400, Some("id"), "not a callback id")),
                }
            }),
        )
        .route(
            "/api/cdr",
            get(|S(state): S<State>, headers: HeaderMap, axum::extract::RawQuery(query): axum::extract::RawQuery| async move {
                if let Some(denied) = state.deny(&headers) {
                    return denied;
                }
                match parse_cdr_query(query.as_deref()) {
                    Ok(call) => respond(state.run(call).await),
                    Err(e) => respond(e),
                }
            }),
        )
        .route(
            "/api/account/{id}",
            get(|S(state): S<State>, headers: HeaderMap, Path(id): Path<String>| async move {
                if let Some(denied) = state.deny(&headers) {
                    return denied;
                }
                respond(state.run(HttpCall::Account { id }).await)
            }),
        )
        .route(
            "/api/account/{id}/credit",
            post(|S(state): S<State>, headers: HeaderMap, Path(id): Path<String>, body: axum::body::Bytes| async move {
                if let Some(denied) = state.deny(&headers) {
                    return denied;
                }
                let parsed = parse_json(&body).and_then(|b| {
                    let amount = field(&b, "amount", true)?.unwrap_or_default();
                    let debit = matches!(b.get("debit"), Some(Value::Bool(true)));
                    Ok(HttpCall::Credit { id, amount, debit })
                });
                match parsed {
                    Ok(call) => respond(state.run(call).await),
                    Err(e) => respond(e),
                }
            }),
        )
        .route("/api/webhook", post_trigger(true, |b| parse_webhook(b).map(|(from, text)| HttpCall::Webhook { from, text })))
        .route("/web/callback", post_trigger(false, |b| parse_web(b).map(|(request, pin)| HttpCall::Web { request, pin })))
        .route("/web/status", post_trigger(false, parse_status))
        .layer(axum::extract::DefaultBodyLimit::max(16 * 1024))
        .with_state(state);
    if let Err(e) = axum::serve(listener, app.into_make_service_with_connect_info::<SocketAddr>()).await {
        tracing::warn!(error = %e, "callback HTTP endpoint stopped");
    }
}

/// The customer's page: the form, then the callback's progress (polled every second).
const PAGE: &str = r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width,initial-scale=1">
<title>Call me back</title>
<style>
body{font-family:system-ui,sans-serif;max-width:28rem;margin:2rem auto;padding:0 1rem;color:#1b2430}
h1{font-size:1.5rem}label{display:block;margin:.8rem 0 .2rem;font-weight:600}
input{width:100%;padding:.5rem;font-size:1rem;box-sizing:border-box;border:1px solid #9aa5b1;border-radius:4px}
button{margin-top:1rem;padding:.6rem 1.2rem;font-size:1rem;background:#1f6feb;color:#fff;border:0;border-radius:4px}
#progress{margin-top:1.5rem;padding:.8rem;border-radius:4px;background:#eef2f6;min-height:1.5rem}
.done{background:#e6f4ea!important}.failed{background:#fce8e6!important}
</style></head><body>
<h1>Call me back</h1>
<p>We call you first, then the number you want, and join you. Calls are paid from your account.</p>
<form id="f">
<label for="account">Account</label><input id="account" name="account" required autocomplete="username">
<label for="pin">PIN</label><input id="pin" name="pin" type="password" required autocomplete="current-password">
<label for="a">Your number</label><input id="a" name="a" required placeholder="+4930123456" inputmode="tel">
<label for="b">Their number</label><input id="b" name="b" placeholder="+4420712345 (or key it in when we call)" inputmode="tel">
<button type="submit">Call me back</button>
</form>
<div id="progress" role="status">Fill in the form.</div>
<script>
const words={"queued":"Waiting to call you…","calling-customer":"Calling you…","collecting-destination":"Key in the number, then #",
"calling-destination":"Calling the other party…","connected":"Connected: talk now.","ending":"Ending…","done":"Done"};
const f=document.getElementById('f'),p=document.getElementById('progress');
f.addEventListener('submit',async e=>{e.preventDefault();
 const body={account:f.account.value,pin:f.pin.value,a:f.a.value,b:f.b.value||null};
 p.className='';p.textContent='Sending…';
 const r=await fetch('/web/callback',{method:'POST',headers:{'content-type':'application/json'},body:JSON.stringify(body)});
 const j=await r.json();
 if(r.status!==202){p.className='failed';p.textContent='Refused: '+j.error+(j.field?' ('+j.field+')':'');return;}
 const poll=async()=>{const s=await fetch('/web/status',{method:'POST',headers:{'content-type':'application/json'},
   body:JSON.stringify({account:body.account,pin:body.pin,id:String(j.id)})});const st=await s.json();
  if(s.status!==200){p.className='failed';p.textContent=st.error;return;}
  p.textContent='Callback '+st.id+': '+(words[st.phase]||st.phase)+(st.result?' — '+st.result:'')+' (attempt '+st.attempts+')';
  if(st.phase==='done'){p.className=st.result==='completed'?'done':'failed';return;}
  setTimeout(poll,1000);};
 poll();});
// A link may fill the form (#account=…&a=…&b=…; the fragment never reaches a server), and
// with go=1 send it.
const h=new URLSearchParams(location.hash.slice(1));
for(const k of ['account','pin','a','b']){if(h.get(k))f[k].value=h.get(k);}
if(h.get('go')==='1')f.requestSubmit();
</script></body></html>
"#;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_name_the_field_that_is_wrong() {
        let reply = |bytes: &[u8]| parse_json(bytes).and_then(|b| request_of(&b, Trigger::Api)).unwrap_err();
        assert_eq!(reply(b"[1]").body["field"], "body");
        assert_eq!(reply(b"{").body["field"], "body");
        assert_eq!(reply(br#"{"a":"1"}"#).body["field"], "account");
        assert_eq!(reply(br#"{"account":"acme"}"#).body["field"], "a");
        assert_eq!(reply(br#"{"account":"acme","a":"1","b":[]}"#).body["field"], "b");
        let ok = parse_json(br#"{"account":"acme","a":"+4930111","b":""}"#).and_then(|b| request_of(&b, Trigger::Api)).unwrap();
        assert_eq!((ok.account.as_str(), ok.a.as_str(), ok.b), ("acme", "+4930111", None));
    }

    #[test]
    fn a_source_over_its_rate_is_refused_for_the_rest_of_the_minute() {
        let mut s = Sources::default();
        let ip: IpAddr = "192.0.2.7".parse().unwrap();
        let t0 = Instant::now();
        assert!((0..3).all(|_| s.allow(ip, 3, t0)));
        assert!(!s.allow(ip, 3, t0 + Duration::from_secs(59)));
        assert!(s.allow(ip, 3, t0 + Duration::from_secs(60)));
    }
}
