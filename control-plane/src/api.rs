//! The control.v1 gRPC API (`proto/proto/control/v1/control.proto`): call control (originate,
//! hang up, list and watch calls) and subscriber settings, served on `[api] listen`.
//!
//! ```text
//!  client ─gRPC─► CallControl / Admin (tonic, on the driver's runtime)
//!                     │ ApiRequest + oneshot reply             ▲ broadcast of CallUpdates
//!                     ▼                                        │ (WatchCalls streams)
//!                 the core's loop (driver.rs): ControlPlane + Store ─┘
//! ```
//!
//! The services own no state: each RPC becomes an [`ApiRequest`] executed on the core's loop,
//! the only place that touches the core and the store, and answered through a oneshot channel.
//! Errors name the field at fault (INVALID_ARGUMENT) or what was not found (NOT_FOUND).

use std::pin::Pin;

use proto::control::v1 as pb;
use tokio::sync::{broadcast, mpsc, oneshot};
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status};

use crate::b2bua::{CallInfo, CallUpdate, Phase, UpdateKind};
use crate::settings::Settings;

/// Watchers that fall this far behind lose the oldest updates (their stream says how many).
pub const UPDATE_BUFFER: usize = 4096;

/// An API call for the core's loop.
#[derive(Debug)]
pub enum ApiRequest {
    /// Place a call from `from` to `to`.
    Originate {
        /// First party.
        from: String,
        /// Second party.
        to: String,
        /// The call's id, or the field with nowhere to go and its SIP status.
        reply: oneshot::Sender<Result<u64, (&'static str, u16)>>,
    },
    /// Ask `from`'s phone to call `to` (REFER).
    ClickToDial {
        /// The subscriber whose phone calls.
        from: String,
        /// Whom it calls.
        to: String,
        /// The phone's answer to the REFER, or the field with nowhere to go and its status.
        reply: oneshot::Sender<Result<u16, (&'static str, u16)>>,
    },
    /// End a call.
    Hangup {
        /// Its id.
        call: u64,
        /// Whether it existed.
        reply: oneshot::Sender<bool>,
    },
    /// The calls in progress.
    List {
        /// The calls.
        reply: oneshot::Sender<Vec<CallInfo>>,
    },
    /// A subscriber's settings (`None`: no such subscriber).
    GetSettings {
        /// user
        user: String,
        /// domain
        domain: String,
        /// The settings.
        reply: oneshot::Sender<Result<Option<Settings>, String>>,
    },
    /// Change a subscriber's settings.
    SetSettings {
        /// user
        user: String,
        /// domain
        domain: String,
        /// Start from no settings.
        clear: bool,
        /// key, value pairs.
        set: Vec<(String, String)>,
        /// The new settings, or why not.
        reply: oneshot::Sender<Result<Settings, SetError>>,
    },
}

/// Why settings were not changed.
#[derive(Debug)]
pub enum SetError {
    /// No such subscriber.
    NotFound,
    /// A key or value refused.
    Invalid(crate::settings::SettingError),
    /// The store failed.
    Store(String),
}

/// The services, talking to the core's loop.
#[derive(Debug, Clone)]
pub struct Api {
    core: mpsc::Sender<ApiRequest>,
    updates: broadcast::Sender<CallUpdate>,
}

impl Api {
    /// Services sending their requests to `core` and streaming `updates`.
    pub fn new(core: mpsc::Sender<ApiRequest>, updates: broadcast::Sender<CallUpdate>) -> Self {
        Api { core, updates }
    }

    async fn ask<T>(&self, make: impl FnOnce(oneshot::Sender<T>) -> ApiRequest) -> Result<T, Status> {
        let (reply, answer) = oneshot::channel();
        self.core.send(make(reply)).await.map_err(|_| Status::unavailable("the control plane is stopping"))?;
        answer.await.map_err(|_| Status::unavailable("the control plane is stopping"))
    }

    /// Serves both services on `listener` until the runtime ends.
    pub async fn serve(self, listener: tokio::net::TcpListener) {
        let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
        let result = tonic::transport::Server::builder()
            .add_service(pb::call_control_server::CallControlServer::new(self.clone()))
            .add_service(pb::admin_server::AdminServer::new(self))
            .serve_with_incoming(incoming)
            .await;
        if let Err(e) = result {
            tracing::error!(error = %e, "control.v1 API stopped");
        }
    }
}

fn subscriber(field: &str, text: &str) -> Result<(String, String), Status> {
    match text.split_once('@') {
        Some((user, domain)) if !user.is_empty() && !domain.is_empty() => Ok((user.to_owned(), domain.to_ascii_lowercase())),
        _ => Err(Status::invalid_argument(format!("{field}: {text:?} is not user@domain"))),
    }
}

fn party(field: &str, text: &str) -> Result<String, Status> {
    let ok = !text.is_empty() && text.len() <= 128 && text.bytes().all(|b| b.is_ascii_alphanumeric() || b"+-._@".contains(&b));
    if ok {
        Ok(text.to_owned())
    } else {
        Err(Status::invalid_argument(format!("{field}: {text:?} is not a user, user@domain or number")))
    }
}

fn call_msg(c: CallInfo) -> pb::Call {
    let state = match c.phase {
        Phase::Ringing => pb::CallState::Ringing,
        Phase::Answered => pb::CallState::Answered,
        Phase::Ending => pb::CallState::Ending,
    };
    pb::Call {
        call_id: c.call,
        caller: c.caller,
        callee: c.callee,
        state: state.into(),
        started_unix_ms: c.started_unix_ms,
        answered_unix_ms: c.answered_unix_ms,
        originated: c.originated,
    }
}

fn event_msg(u: CallUpdate) -> pb::CallEvent {
    use pb::call_event::Event;
    let event = match u.kind {
        UpdateKind::Ringing { party } => Event::Ringing(pb::Ringing { party: party.into() }),
        UpdateKind::Forwarded => Event::Forwarded(pb::Forwarded {}),
        UpdateKind::Answered { party } => Event::Answered(pb::Answered { party: party.into() }),
        UpdateKind::Ended { status, cause, duration_ms } => {
            Event::Ended(pb::Ended { status: status.into(), cause: cause.to_owned(), duration_ms })
        }
    };
    pb::CallEvent { call_id: u.call, unix_ms: u.unix_ms, event: Some(event) }
}

type EventStream = Pin<Box<dyn Stream<Item = Result<pb::CallEvent, Status>> + Send>>;

#[tonic::async_trait]
impl pb::call_control_server::CallControl for Api {
    async fn originate(&self, request: Request<pb::OriginateRequest>) -> Result<Response<pb::OriginateResponse>, Status> {
        let r = request.into_inner();
        let (from, to) = (party("from", &r.from)?, party("to", &r.to)?);
        match self.ask(|reply| ApiRequest::Originate { from, to, reply }).await? {
            Ok(call_id) => Ok(Response::new(pb::OriginateResponse { call_id })),
            Err((field, status)) => Err(Status::not_found(format!("{field}: nowhere to call (SIP {status})"))),
        }
    }

    async fn click_to_dial(&self, request: Request<pb::ClickToDialRequest>) -> Result<Response<pb::ClickToDialResponse>, Status> {
        let r = request.into_inner();
        let (from, to) = (party("from", &r.from)?, party("to", &r.to)?);
        match self.ask(|reply| ApiRequest::ClickToDial { from, to, reply }).await? {
            Ok(status @ 200..=299) => Ok(Response::new(pb::ClickToDialResponse { status: status.into() })),
            Ok(408) => Err(Status::deadline_exceeded("from: the phone did not answer the REFER")),
            Ok(503) => Err(Status::unavailable("from: the REFER could not be sent to the phone")),
            Ok(status) => Err(Status::failed_precondition(format!("from: the phone answered the REFER with {status}"))),
            Err(("from", 404)) => Err(Status::not_found(format!("from: no subscriber {}", r.from))),
            Err(("from", 480)) => Err(Status::failed_precondition("from: no phone registered (SIP 480)")),
            Err((field, 400)) => Err(Status::invalid_argument(format!("{field}: not a party that can be called"))),
            Err((field, 503)) => Err(Status::resource_exhausted(format!("{field}: too many click-to-dial requests at once"))),
            Err((field, status)) => Err(Status::internal(format!("{field}: SIP {status}"))),
        }
    }

    async fn hangup(&self, request: Request<pb::HangupRequest>) -> Result<Response<pb::HangupResponse>, Status> {
        let call = request.into_inner().call_id;
        if self.ask(|reply| ApiRequest::Hangup { call, reply }).await? {
            Ok(Response::new(pb::HangupResponse {}))
        } else {
            Err(Status::not_found(format!("call_id: no call {call}")))
        }
    }

    async fn list_calls(&self, _request: Request<pb::ListCallsRequest>) -> Result<Response<pb::ListCallsResponse>, Status> {
        let calls = self.ask(|reply| ApiRequest::List { reply }).await?;
        Ok(Response::new(pb::ListCallsResponse { calls: calls.into_iter().map(call_msg).collect() }))
    }

    type WatchCallsStream = EventStream;

    async fn watch_calls(&self, _request: Request<pb::WatchCallsRequest>) -> Result<Response<Self::WatchCallsStream>, Status> {
        let stream = tokio_stream::wrappers::BroadcastStream::new(self.updates.subscribe()).map(|item| match item {
            Ok(update) => Ok(event_msg(update)),
            Err(tokio_stream::wrappers::errors::BroadcastStreamRecvError::Lagged(n)) => {
                Err(Status::resource_exhausted(format!("the watcher fell behind: {n} events lost")))
            }
        });
        Ok(Response::new(Box::pin(stream)))
    }
}

#[tonic::async_trait]
impl pb::admin_server::Admin for Api {
    async fn get_settings(&self, request: Request<pb::GetSettingsRequest>) -> Result<Response<pb::SubscriberSettings>, Status> {
        let who = request.into_inner().subscriber;
        let (user, domain) = subscriber("subscriber", &who)?;
        match self.ask(|reply| ApiRequest::GetSettings { user, domain, reply }).await? {
            Ok(Some(settings)) => Ok(Response::new(pb::SubscriberSettings { subscriber: who, json: settings.to_json() })),
            Ok(None) => Err(Status::not_found(format!("subscriber: no subscriber {who}"))),
            Err(e) => Err(Status::internal(e)),
        }
    }

    async fn set_settings(&self, request: Request<pb::SetSettingsRequest>) -> Result<Response<pb::SubscriberSettings>, Status> {
        let r = request.into_inner();
        let (user, domain) = subscriber("subscriber", &r.subscriber)?;
        let mut set: Vec<(String, String)> = r.set.into_iter().collect();
        set.sort();
        match self.ask(|reply| ApiRequest::SetSettings { user, domain, clear: r.clear, set, reply }).await? {
            Ok(settings) => Ok(Response::new(pb::SubscriberSettings { subscriber: r.subscriber, json: settings.to_json() })),
            Err(SetError::NotFound) => Err(Status::not_found(format!("subscriber: no subscriber {}", r.subscriber))),
            Err(SetError::Invalid(e)) => Err(Status::invalid_argument(format!("set[{}]: {}", e.key, e.message))),
            Err(SetError::Store(e)) => Err(Status::internal(e)),
        }
    }
}

/// The API's reply to a click-to-dial: the phone's answer, or the field with nowhere to go.
pub type ReferralReply = oneshot::Sender<Result<u16, (&'static str, u16)>>;

/// A click-to-dial REFER whose phone has not answered yet: its referral id and the API's reply.
pub type PendingReferral = (u64, ReferralReply);

/// Executes `request` on the core's loop. A click-to-dial whose answer comes later is returned,
/// for the loop to answer once [`poll_referral`](crate::server::ControlPlane::poll_referral)
/// has it.
pub fn execute(
    request: ApiRequest,
    core: &mut crate::server::ControlPlane,
    store: &mut dyn crate::store::Store,
    now: crate::now::Now,
) -> Option<PendingReferral> {
    match request {
        ApiRequest::Originate { from, to, reply } => {
            let _ = reply.send(core.handle_originate(&from, &to, now, store));
        }
        ApiRequest::ClickToDial { from, to, reply } => match core.handle_click_to_dial(&from, &to, now, store) {
            Ok(referral) => return Some((referral, reply)),
            Err(refusal) => {
                let _ = reply.send(Err(refusal));
            }
        },
        ApiRequest::Hangup { call, reply } => {
            let _ = reply.send(core.handle_hangup(call, now, store));
        }
        ApiRequest::List { reply } => {
            let _ = reply.send(core.calls());
        }
        ApiRequest::GetSettings { user, domain, reply } => {
            let _ = reply.send(store.settings(&user, &domain).map_err(|e| e.to_string()));
        }
        ApiRequest::SetSettings { user, domain, clear, set, reply } => {
            let result = match store.settings(&user, &domain) {
                Err(e) => Err(SetError::Store(e.to_string())),
                Ok(None) => Err(SetError::NotFound),
                Ok(Some(current)) => {
                    let mut next = if clear { Settings::default() } else { current };
                    match set.iter().try_for_each(|(k, v)| next.set(k, v)) {
                        Err(e) => Err(SetError::Invalid(e)),
                        Ok(()) => store.set_settings(&user, &domain, &next).map(|_| next).map_err(|e| SetError::Store(e.to_string())),
                    }
                }
            };
            let _ = reply.send(result);
        }
    }
    None
}
