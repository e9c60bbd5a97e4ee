//! What the call logic asks of the media plane ([`MediaRequest`]) and what comes back
//! ([`MediaReply`]), plus [`MediaClient`], the tonic driver that turns requests into gRPC calls.
//!
//! The media plane does the SDP: the B2BUA hands it each offer and answer as the endpoints sent
//! them (`Offer`/`Answer` RPCs) and sends on what comes back, with the media plane's address and
//! ports, the codecs of the call's [`CodecPolicy`] (so endpoints without a common codec are
//! transcoded) and SRTP ended or begun per side.
//!
//! The call logic is sans-IO: it queues `(call, MediaRequest)` pairs and is told the outcome
//! later with [`MediaReply`]. Releases need no answer: the client counts their failures. An
//! allocation that fails half-way deletes what it created before it answers, so nothing leaks
//! on either side.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use proto::v1;
use proto::v1::media_plane_client::MediaPlaneClient;
use tonic::transport::Channel;

/// What the media plane does to the codecs and transport of offers (see `media.v1.CodecPolicy`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CodecPolicy {
    /// Codecs removed from offers.
    pub strip: Vec<String>,
    /// Codecs hidden from the answerer (the offerer may still send them: transcoded).
    pub mask: Vec<String>,
    /// Codecs added to offers; an answerer that takes one is transcoded to.
    pub transcode: Vec<String>,
    /// Transport offered to the answerer: `RTP/AVP`, `RTP/SAVP` or empty (the offerer's).
    pub transport: String,
}

/// The two legs of one `m=` line: facing the caller (A) and the callee (B).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamLegs {
    pub leg_a: u64,
    pub leg_b: u64,
}

/// A call's media in the media plane.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Allocation {
    /// Per `m=` line of the caller's offer: its legs, or `None` for a disabled line.
    pub streams: Vec<Option<StreamLegs>>,
    /// The offer as the media plane rewrote it for the answerer: the caller's for the callee,
    /// or (delayed offer) the callee's for the caller.
    pub offer: String,
    /// With [`MediaRequest::Allocate`]'s `local`: the media plane's own answer to the offer (its
    /// address and the offerer-facing legs' ports), for an offerer that talks to the media plane
    /// alone (prompts, DTMF) until a callee is connected.
    pub local_answer: Option<String>,
    /// The Call-ID its legs were placed by (legs added later go with them).
    pub group: String,
}

impl Allocation {
    /// The legs facing the caller (`caller` true) or the callee, one per active stream; none
    /// for a side whose legs were let go (0: a parked call's empty side).
    pub fn facing(&self, caller: bool) -> Vec<u64> {
        self.streams.iter().flatten().map(|s| if caller { s.leg_a } else { s.leg_b }).filter(|&l| l != 0).collect()
    }

    /// Takes the legs facing the caller (`caller`) or the callee out of the allocation (0 there
    /// from now on: a side nobody is on) and returns them.
    pub fn take_side(&mut self, caller: bool) -> Vec<u64> {
        self.streams
            .iter_mut()
            .flatten()
            .map(|s| std::mem::take(if caller { &mut s.leg_a } else { &mut s.leg_b }))
            .filter(|&l| l != 0)
            .collect()
    }

    /// Puts `legs` on the caller's (`caller`) or the callee's side, stream by stream.
    pub fn set_side(&mut self, caller: bool, legs: impl IntoIterator<Item = u64>) {
        for (stream, leg) in self.streams.iter_mut().flatten().zip(legs) {
            if caller {
                stream.leg_a = leg;
            } else {
                stream.leg_b = leg;
            }
        }
    }

    /// Every leg, for [`MediaRequest::Release`] (the media plane deletes a leg's bridge with it).
    pub fn release(&self) -> MediaRequest {
        MediaRequest::Release { legs: self.release_legs() }
    }

    fn release_legs(&self) -> Vec<u64> {
        self.streams.iter().flatten().flat_map(|s| [s.leg_a, s.leg_b]).filter(|&l| l != 0).collect()
    }

    /// The (offerer, answerer) legs per `m=` line for an offer from `caller_offers` side.
    pub fn legs(&self, caller_offers: bool) -> Vec<(u64, u64)> {
        self.streams
            .iter()
            .map(|s| match s {
                Some(s) if caller_offers => (s.leg_a, s.leg_b),
                Some(s) => (s.leg_b, s.leg_a),
                None => (0, 0),
            })
            .collect()
    }
}

/// A request for the media plane.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MediaRequest {
    /// Create both legs of each active `m=` line and have the media plane rewrite the offer for
    /// the other side; answered with [`MediaReply::Allocated`].
    Allocate {
        /// The SIP Call-ID (the media plane keeps a call's legs on one core).
        call_id: String,
        /// The offer, as its sender sent it: the caller's, or with `callee_offers` the callee's
        /// (a delayed-offer call, whose INVITE had no SDP).
        offer: String,
        /// The callee made the offer.
        callee_offers: bool,
        /// Per `m=` line: whether it is active (port not 0).
        active: Vec<bool>,
        policy: CodecPolicy,
        /// Answer the offer in the media plane ([`Allocation::local_answer`]): no callee yet.
        local: bool,
    },
    /// A new offer mid-call (re-INVITE, UPDATE) over legs `legs` ((offerer, answerer) per `m=`
    /// line, `(0, 0)` for a disabled one); answered with [`MediaReply::Offered`].
    Offer { legs: Vec<(u64, u64)>, sdp: String, policy: CodecPolicy },
    /// The answer to the last offer over `legs`; answered with [`MediaReply::Answered`].
    Answer { legs: Vec<(u64, u64)>, sdp: String },
    /// Attended transfer: delete `release` (the transferor's legs, and their bridges), then an
    /// Offer over `legs` like [`MediaRequest::Offer`], in that order; answered with
    /// [`MediaReply::Offered`].
    Rejoin {
        /// Legs deleted first.
        release: Vec<u64>,
        /// (offerer, answerer) legs per `m=` line.
        legs: Vec<(u64, u64)>,
        /// The offerer's description.
        sdp: String,
        policy: CodecPolicy,
    },
    /// Play `file` (a WAV under the media plane's prompt_dir) into each of `legs`, looped until
    /// stopped: music on hold. No reply; failures are counted.
    Play {
        /// Legs.
        legs: Vec<u64>,
        /// File name.
        file: String,
    },
    /// Play prompt `file` (a WAV under the media plane's prompt_dir) once into each of `legs`.
    /// No reply; failures are counted.
    Prompt {
        /// Legs.
        legs: Vec<u64>,
        /// File name.
        file: String,
    },
    /// Play call-progress tone `tone` (`warning`, `ringback`, …) into each of `legs`, once or
    /// `looped` until stopped; their bridge takes over again at its end. No reply; failures
    /// are counted.
    Tone {
        /// Legs.
        legs: Vec<u64>,
        /// The media plane's tone name.
        tone: String,
        looped: bool,
    },
    /// Stop what plays into `legs`; their bridge takes over again in the same stream.
    StopPlay {
        /// Legs.
        legs: Vec<u64>,
    },
    /// A party that called in joins a call's legs (call pickup, a parked call taken back): the
    /// media plane answers its `offer` itself on new legs (as [`MediaRequest::Allocate`] with
    /// `local`), deletes `release` and the new legs facing nobody, and bridges each of `with`
    /// to the new leg of the same active stream (transcoding where their codecs differ). With
    /// `answer_first` ((offerer, answerer) legs, the offer made over them), that offer is first
    /// answered by the media plane itself: a caller still waiting for its answer. Answered with
    /// [`MediaReply::Joined`].
    Join {
        /// The joining party's SIP Call-ID (placement of its legs).
        call_id: String,
        /// Its offer.
        offer: String,
        /// Per `m=` line of its offer: active.
        active: Vec<bool>,
        policy: CodecPolicy,
        /// The call's legs the new ones are bridged to, one per active stream, in order.
        with: Vec<u64>,
        /// Legs deleted (those facing whoever the joining party replaces).
        release: Vec<u64>,
        answer_first: Option<(Vec<(u64, u64)>, String)>,
    },
    /// Conference room `room`: made (a media-plane conference placed by the room's name) unless
    /// `conference` names it; `release` deleted; each of `add` (legs of calls already answered)
    /// taken out of its bridge and made a participant; and a party calling in (`newcomer`) answered
    /// by the media plane on new legs (as [`MediaRequest::Join`]) that join it too. Answered with
    /// [`MediaReply::Conferenced`].
    Conference { room: String, conference: Option<u64>, add: Vec<u64>, release: Vec<u64>, newcomer: Option<Newcomer> },
    /// Ends conference `conference` (its legs are the calls'). No reply.
    EndConference { conference: u64 },
    /// New legs for a side that has none (a parked call's, to ring its parker back): one per
    /// stream, created by `call_id`, and an offer over (`with`, new leg) made from `sdp` (the
    /// remaining party's last description) for whoever is rung. Answered with
    /// [`MediaReply::Extended`].
    Extend { call_id: String, with: Vec<u64>, sdp: String, policy: CodecPolicy },
    /// Takes each pair of legs out of conference `conference`, bridges them again, and ends the
    /// conference (a three-way call back to two). No reply; failures are counted.
    Unconference { conference: u64, pairs: Vec<(u64, u64)> },
    /// Delete legs (one DeleteLegs request per media plane; a leg's bridge goes with it).
    Release {
        /// Legs.
        legs: Vec<u64>,
    },
}

/// Why the media plane did not do an offer or answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MediaError {
    /// The description (or the policy) is not usable: the endpoint gets 488.
    NotAcceptable(String),
    /// The media plane failed or is unreachable: the call gets 503.
    Unavailable(String),
}

impl MediaError {
    /// The same error, naming the media plane it came from.
    fn naming_plane(self, uri: &str) -> Self {
        match self {
            MediaError::NotAcceptable(why) => MediaError::NotAcceptable(format!("media plane {uri}: {why}")),
            MediaError::Unavailable(why) => MediaError::Unavailable(format!("media plane {uri}: {why}")),
        }
    }
}

impl std::fmt::Display for MediaError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            MediaError::NotAcceptable(why) | MediaError::Unavailable(why) => f.write_str(why),
        }
    }
}

/// The answers to [`MediaRequest`]s.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MediaReply {
    /// The allocation, or why it failed.
    Allocated(Result<Allocation, MediaError>),
    /// The offer for the other side.
    Offered(Result<String, MediaError>),
    /// The answer for the offerer.
    Answered(Result<String, MediaError>),
    /// A [`MediaRequest::Join`] done. A `NotAcceptable` error means the joining party's offer
    /// was refused and the call's legs are as they were.
    Joined(Result<Joined, MediaError>),
    /// A [`MediaRequest::Conference`] done: the conference, and the newcomer's legs and answer.
    /// A `NotAcceptable` error is the newcomer's offer refused, with nothing else done.
    Conferenced(Result<Conferenced, MediaError>),
    /// A [`MediaRequest::Extend`] done: the new legs (one per stream of `with`) and the offer.
    Extended(Result<(Vec<u64>, String), MediaError>),
}

/// A party calling in, whose offer the media plane answers itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Newcomer {
    /// Its SIP Call-ID (placement), its offer and which of its `m=` lines are active.
    pub call_id: String,
    pub offer: String,
    pub active: Vec<bool>,
    pub policy: CodecPolicy,
}

/// What a [`MediaRequest::Conference`] made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conferenced {
    /// The media plane's conference.
    pub conference: u64,
    /// The newcomer's legs (one per active stream) and the answer to its offer.
    pub newcomer: Option<(Vec<u64>, String)>,
}

/// What a [`MediaRequest::Join`] made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Joined {
    /// The new legs facing the joining party, one per active stream, in order.
    pub legs: Vec<u64>,
    /// The media plane's answer to its offer.
    pub answer: String,
    /// With `answer_first`: the answer for the waiting caller.
    pub first_answer: Option<String>,
}

/// Counters of the media client.
#[derive(Debug, Default)]
pub struct MediaCounters {
    /// Allocations that succeeded.
    pub allocations: AtomicU64,
    /// Allocations that failed.
    pub allocation_failures: AtomicU64,
    /// Offers and answers the media plane refused or failed.
    pub negotiation_failures: AtomicU64,
    /// Releases done.
    pub releases: AtomicU64,
    /// Deletes that failed (the media plane's media timeout reclaims those legs). A leg the media
    /// plane no longer had (its media timed out) is no failure.
    pub release_failures: AtomicU64,
    /// Plays (music on hold) started and stopped, and those that failed.
    pub plays: AtomicU64,
    pub play_failures: AtomicU64,
}

impl MediaCounters {
    /// Adds these counters to `sum` (several media planes' totals).
    pub fn add_to(&self, sum: &MediaCounters) {
        let pairs = [
            (&self.allocations, &sum.allocations),
            (&self.allocation_failures, &sum.allocation_failures),
            (&self.negotiation_failures, &sum.negotiation_failures),
            (&self.releases, &sum.releases),
            (&self.release_failures, &sum.release_failures),
            (&self.plays, &sum.plays),
            (&self.play_failures, &sum.play_failures),
        ];
        for (from, to) in pairs {
            to.fetch_add(from.load(Ordering::Relaxed), Ordering::Relaxed);
        }
    }
}

fn media_error(rpc: &str, s: &tonic::Status) -> MediaError {
    let why = format!("{rpc}: {}", s.message());
    if s.code() == tonic::Code::InvalidArgument {
        MediaError::NotAcceptable(why)
    } else {
        MediaError::Unavailable(why)
    }
}

fn policy_msg(p: &CodecPolicy) -> v1::CodecPolicy {
    v1::CodecPolicy { strip: p.strip.clone(), mask: p.mask.clone(), transcode: p.transcode.clone(), keep: Vec::new() }
}

fn stream_legs(legs: &[(u64, u64)]) -> Vec<v1::StreamLegs> {
    legs.iter().map(|&(offerer_leg, answerer_leg)| v1::StreamLegs { offerer_leg, answerer_leg }).collect()
}

/// The gRPC driver.
#[derive(Debug, Clone)]
pub struct MediaClient {
    client: MediaPlaneClient<Channel>,
    uri: String,
    media_timeout_ms: u32,
    rpc_timeout: Duration,
    /// Counters.
    pub counters: Arc<MediaCounters>,
}

impl MediaClient {
    /// A client for `uri` (connects lazily and reconnects by itself).
    pub fn new(uri: &str, media_timeout_ms: u32, rpc_timeout: Duration) -> Result<Self, String> {
        let channel = Channel::from_shared(uri.to_owned())
            .map_err(|e| format!("media.grpc {uri:?}: {e}"))?
            .timeout(rpc_timeout)
            .connect_timeout(rpc_timeout)
            .tcp_nodelay(true)
            .connect_lazy();
        Ok(MediaClient {
            client: MediaPlaneClient::new(channel),
            uri: uri.to_owned(),
            media_timeout_ms,
            rpc_timeout,
            counters: Arc::new(MediaCounters::default()),
        })
    }

    /// Executes `request`; all but releases return their reply.
    pub async fn execute(&self, request: MediaRequest) -> Option<MediaReply> {
        match request {
            MediaRequest::Allocate { call_id, offer, callee_offers, active, policy, local } => {
                let result =
                    self.allocate(&call_id, &offer, callee_offers, &active, &policy, local).await.map_err(|e| e.naming_plane(&self.uri));
                let counter = if result.is_ok() { &self.counters.allocations } else { &self.counters.allocation_failures };
                counter.fetch_add(1, Ordering::Relaxed);
                Some(MediaReply::Allocated(result))
            }
            MediaRequest::Offer { legs, sdp, policy } => Some(MediaReply::Offered(self.offer(&legs, sdp, &policy).await)),
            MediaRequest::Rejoin { release, legs, sdp, policy } => {
                self.release(&release).await;
                Some(MediaReply::Offered(self.offer(&legs, sdp, &policy).await))
            }
            MediaRequest::Answer { legs, sdp } => {
                let request = v1::AnswerRequest { sdp, streams: stream_legs(&legs) };
                let result = self.client.clone().answer(request).await.map(|r| r.into_inner().sdp).map_err(|s| media_error("Answer", &s));
                if result.is_err() {
                    self.counters.negotiation_failures.fetch_add(1, Ordering::Relaxed);
                }
                Some(MediaReply::Answered(result))
            }
            MediaRequest::Join { call_id, offer, active, policy, with, release, answer_first } => {
                let result = self.join(&call_id, &offer, &active, &policy, &with, release, answer_first).await;
                Some(MediaReply::Joined(result.map_err(|e| e.naming_plane(&self.uri))))
            }
            MediaRequest::Conference { room, conference, add, release, newcomer } => {
                let result = self.conference(&room, conference, &add, release, newcomer).await;
                Some(MediaReply::Conferenced(result.map_err(|e| e.naming_plane(&self.uri))))
            }
            MediaRequest::Extend { call_id, with, sdp, policy } => {
                let mut legs = Vec::with_capacity(with.len());
                let mut result = Ok(());
                for _ in &with {
                    match self.create_leg(&call_id).await {
                        Ok(leg) => legs.push(leg),
                        Err(e) => {
                            result = Err(e);
                            break;
                        }
                    }
                }
                let result = match result {
                    Ok(()) => {
                        let pairs: Vec<(u64, u64)> = with.iter().copied().zip(legs.iter().copied()).collect();
                        self.offer(&pairs, sdp, &policy).await.map(|offer| (legs.clone(), offer))
                    }
                    Err(e) => Err(e),
                };
                if result.is_err() {
                    self.release(&legs).await;
                }
                Some(MediaReply::Extended(result.map_err(|e| e.naming_plane(&self.uri))))
            }
            MediaRequest::EndConference { conference } => {
                let request = v1::DeleteConferenceRequest { conference_id: conference };
                if let Err(status) = self.client.clone().delete_conference(request).await {
                    tracing::warn!(conference, error = %status.message(), "a conference could not be deleted");
                    self.counters.release_failures.fetch_add(1, Ordering::Relaxed);
                }
                None
            }
            MediaRequest::Unconference { conference, pairs } => {
                let mut failed = false;
                for &(a, b) in &pairs {
                    for leg_id in [a, b] {
                        let request = v1::RemoveParticipantRequest { conference_id: conference, leg_id };
                        failed |= self.client.clone().remove_participant(request).await.is_err();
                    }
                    failed |= self.client.clone().create_bridge(v1::CreateBridgeRequest { leg_a: a, leg_b: b }).await.is_err();
                }
                failed |= self.client.clone().delete_conference(v1::DeleteConferenceRequest { conference_id: conference }).await.is_err();
                if failed {
                    tracing::warn!(conference, "a three-way call could not be made a plain call again");
                    self.counters.negotiation_failures.fetch_add(1, Ordering::Relaxed);
                }
                None
            }
            MediaRequest::Release { legs } => {
                self.release(&legs).await;
                None
            }
            MediaRequest::Play { legs, file } => {
                for leg_id in legs {
                    let request = v1::PlayRequest { leg_id, source: Some(v1::play_request::Source::File(file.clone())), r#loop: true };
                    self.count_play(self.client.clone().play(request).await.map(|_| ()), &file);
                }
                None
            }
            MediaRequest::Prompt { legs, file } => {
                for leg_id in legs {
                    let request = v1::PlayRequest { leg_id, source: Some(v1::play_request::Source::File(file.clone())), r#loop: false };
                    self.count_play(self.client.clone().play(request).await.map(|_| ()), &file);
                }
                None
            }
            MediaRequest::Tone { legs, tone, looped } => {
                for leg_id in legs {
                    let request = v1::PlayRequest { leg_id, source: Some(v1::play_request::Source::Tone(tone.clone())), r#loop: looped };
                    self.count_play(self.client.clone().play(request).await.map(|_| ()), &tone);
                }
                None
            }
            MediaRequest::StopPlay { legs } => {
                for leg_id in legs {
                    self.count_play(self.client.clone().stop_play(v1::StopPlayRequest { leg_id }).await.map(|_| ()), "stop");
                }
                None
            }
        }
    }

    fn count_play(&self, result: Result<(), tonic::Status>, what: &str) {
        match result {
            Ok(()) => self.counters.plays.fetch_add(1, Ordering::Relaxed),
            Err(status) => {
                tracing::warn!(what, error = %status.message(), "music on hold: the media plane refused");
                self.counters.play_failures.fetch_add(1, Ordering::Relaxed)
            }
        };
    }

    async fn offer(&self, legs: &[(u64, u64)], sdp: String, policy: &CodecPolicy) -> Result<String, MediaError> {
        let request = v1::OfferRequest {
            sdp,
            streams: stream_legs(legs),
            policy: Some(policy_msg(policy)),
            transport_protocol: policy.transport.clone(),
        };
        let result = self.client.clone().offer(request).await.map(|r| r.into_inner().sdp).map_err(|s| media_error("Offer", &s));
        if result.is_err() {
            self.counters.negotiation_failures.fetch_add(1, Ordering::Relaxed);
        }
        result
    }

    async fn release(&self, legs: &[u64]) {
        if legs.is_empty() {
            return;
        }
        // One round trip for them all; a leg already gone (its media timed out) is no failure.
        let request = v1::DeleteLegsRequest { leg_ids: legs.to_vec() };
        let failed = self.client.clone().delete_legs(request).await.is_err();
        let counter = if failed { &self.counters.release_failures } else { &self.counters.releases };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    async fn create_leg(&self, call_id: &str) -> Result<u64, MediaError> {
        let request = v1::CreateLegRequest {
            call_id: call_id.to_owned(),
            media_timeout_ms: self.media_timeout_ms,
            // The offer and answer give the remotes; latching corrects them behind NAT.
            latch: true,
            // Placed by the SIP Call-ID: both legs of a call relay on one core.
            ..Default::default()
        };
        let response = self.client.clone().create_leg(request).await.map_err(|s| media_error("CreateLeg", &s))?;
        Ok(response.into_inner().leg_id)
    }

    async fn allocate(
        &self,
        call_id: &str,
        offer: &str,
        callee_offers: bool,
        active: &[bool],
        policy: &CodecPolicy,
        local: bool,
    ) -> Result<Allocation, MediaError> {
        // The legs and the offer in one round trip.
        let request = v1::CreateOfferRequest {
            call_id: call_id.to_owned(),
            group: String::new(),
            sdp: offer.to_owned(),
            policy: Some(policy_msg(policy)),
            transport_protocol: policy.transport.clone(),
            media_timeout_ms: self.media_timeout_ms,
        };
        let made = match self.client.clone().create_offer(request).await {
            Ok(made) => made.into_inner(),
            Err(status) => {
                // A refused offer is a failed negotiation; no ports or no media plane is not.
                if status.code() == tonic::Code::InvalidArgument {
                    self.counters.negotiation_failures.fetch_add(1, Ordering::Relaxed);
                }
                return Err(media_error("CreateOffer", &status));
            }
        };
        let streams = made
            .streams
            .iter()
            .map(|s| match (s.offerer_leg, s.answerer_leg) {
                (0, 0) => None,
                // The offerer's legs face the caller, unless the callee made the offer.
                (offerer, answerer) if callee_offers => Some(StreamLegs { leg_a: answerer, leg_b: offerer }),
                (offerer, answerer) => Some(StreamLegs { leg_a: offerer, leg_b: answerer }),
            })
            .collect();
        let mut done = Allocation { streams, offer: made.sdp, local_answer: None, group: call_id.to_owned() };
        if done.streams.iter().map(Option::is_some).ne(active.iter().copied()) {
            self.release(&done.release_legs()).await;
            return Err(MediaError::NotAcceptable(format!(
                "the media plane made legs for {} of {} streams where {} are active",
                done.streams.iter().flatten().count(),
                done.streams.len(),
                active.iter().filter(|a| **a).count()
            )));
        }
        if local {
            // Nobody answers yet: the callee-facing legs get an answer with no address (they
            // send nothing) and the offerer gets the media plane's own answer.
            let request = v1::AnswerRequest { sdp: unaddressed_answer(&done.offer), streams: stream_legs(&done.legs(!callee_offers)) };
            match self.client.clone().answer(request).await {
                Ok(answer) => done.local_answer = Some(answer.into_inner().sdp),
                Err(status) => {
                    self.release(&done.release_legs()).await;
                    return Err(media_error("Answer", &status));
                }
            }
        }
        Ok(done)
    }

    /// See [`MediaRequest::Join`]. The joining party's offer is taken first: refused, nothing
    /// of the call has changed (`NotAcceptable`); a later failure leaves the call's legs
    /// unbridged (`Unavailable`: the caller ends the call).
    #[allow(clippy::too_many_arguments)]
    async fn join(
        &self,
        call_id: &str,
        offer: &str,
        active: &[bool],
        policy: &CodecPolicy,
        with: &[u64],
        release: Vec<u64>,
        answer_first: Option<(Vec<(u64, u64)>, String)>,
    ) -> Result<Joined, MediaError> {
        let allocation = self.allocate(call_id, offer, false, active, policy, true).await?;
        let legs = allocation.facing(true);
        let answer = allocation.local_answer.clone().unwrap_or_default();
        let unavailable = |e: MediaError| match e {
            MediaError::NotAcceptable(why) | MediaError::Unavailable(why) => MediaError::Unavailable(why),
        };
        let mut far_released = false;
        let released = release.clone();
        let result: Result<Option<String>, MediaError> = async {
            if legs.len() != with.len() {
                return Err(MediaError::NotAcceptable(format!("{} active streams where the call has {}", legs.len(), with.len())));
            }
            let first_answer = match answer_first {
                Some((pairs, sdp)) => {
                    let request = v1::AnswerRequest { sdp: unaddressed_answer(&sdp), streams: stream_legs(&pairs) };
                    let answer = self.client.clone().answer(request).await.map_err(|s| media_error("Answer", &s)).map_err(unavailable)?;
                    Some(answer.into_inner().sdp)
                }
                None => None,
            };
            let mut gone = release;
            gone.extend(allocation.facing(false));
            self.release(&gone).await;
            far_released = true;
            for (&leg_a, &leg_b) in with.iter().zip(&legs) {
                let request = v1::CreateBridgeRequest { leg_a, leg_b };
                self.client.clone().create_bridge(request).await.map_err(|s| media_error("CreateBridge", &s)).map_err(unavailable)?;
            }
            Ok(first_answer)
        }
        .await;
        match result {
            Ok(first_answer) => Ok(Joined { legs, answer, first_answer }),
            Err(e) => {
                let mut legs = allocation.facing(true);
                if !far_released {
                    legs.extend(allocation.facing(false));
                    if matches!(e, MediaError::Unavailable(_)) {
                        // The caller ends the call: the legs it handed over go as they would have.
                        legs.extend(released);
                    }
                }
                self.release(&legs).await;
                Err(e)
            }
        }
    }

    /// See [`MediaRequest::Conference`]. The newcomer's offer is taken first: refused, nothing
    /// else is done (`NotAcceptable`); a later failure is `Unavailable` (the caller ends what it
    /// moved).
    async fn conference(
        &self,
        room: &str,
        conference: Option<u64>,
        add: &[u64],
        release: Vec<u64>,
        newcomer: Option<Newcomer>,
    ) -> Result<Conferenced, MediaError> {
        let unavailable = |rpc: &str, s: &tonic::Status| match media_error(rpc, s) {
            MediaError::NotAcceptable(why) | MediaError::Unavailable(why) => MediaError::Unavailable(why),
        };
        let allocation = match &newcomer {
            Some(n) => Some(self.allocate(&n.call_id, &n.offer, false, &n.active, &n.policy, true).await?),
            None => None,
        };
        let (mut created, mut far_released) = (None, false);
        let handed = release.clone();
        let result: Result<u64, MediaError> = async {
            let id = match conference {
                Some(id) => id,
                None => {
                    let request = v1::CreateConferenceRequest { group: room.to_owned(), rate: 0 };
                    let id = self.client.clone().create_conference(request).await.map_err(|s| unavailable("CreateConference", &s))?;
                    let id = id.into_inner().conference_id;
                    created = Some(id);
                    id
                }
            };
            let mut gone = release;
            if let Some(a) = &allocation {
                gone.extend(a.facing(false));
            }
            self.release(&gone).await;
            far_released = true;
            let mut members = add.to_vec();
            for &leg in add {
                // Out of its bridge first: a participant is in none.
                let stats = self.client.clone().get_stats(v1::GetStatsRequest { leg_ids: vec![leg], totals_only: false }).await;
                let bridge = stats.map_err(|s| unavailable("GetStats", &s))?.into_inner().legs.first().map_or(0, |l| l.bridge_id);
                if bridge != 0 {
                    // Its peer may have let the bridge go already.
                    let _ = self.client.clone().delete_bridge(v1::DeleteBridgeRequest { bridge_id: bridge }).await;
                }
            }
            if let Some(a) = &allocation {
                members.extend(a.facing(true));
            }
            for leg_id in members {
                let request = v1::ParticipantRequest { conference_id: id, leg_id, muted: false, deaf: false };
                self.client.clone().add_participant(request).await.map_err(|s| unavailable("AddParticipant", &s))?;
            }
            Ok(id)
        }
        .await;
        match result {
            Ok(conference) => {
                let newcomer = allocation.map(|a| (a.facing(true), a.local_answer.clone().unwrap_or_default()));
                Ok(Conferenced { conference, newcomer })
            }
            Err(e) => {
                let mut legs = Vec::new();
                if let Some(a) = &allocation {
                    legs.extend(a.facing(true));
                    if !far_released {
                        legs.extend(a.facing(false));
                    }
                }
                if !far_released {
                    // The caller ends what it moved: the legs it handed over go as they would have.
                    legs.extend(handed);
                }
                if !legs.is_empty() {
                    self.release(&legs).await;
                }
                if let Some(id) = created {
                    let _ = self.client.clone().delete_conference(v1::DeleteConferenceRequest { conference_id: id }).await;
                }
                Err(e)
            }
        }
    }

    /// The media plane's events (DTMF from endpoints), as they happen, until the stream ends.
    /// (Its own channel: the requests' deadline would end the stream.)
    pub async fn events(&self) -> Result<tonic::Streaming<v1::Event>, tonic::Status> {
        let channel = Channel::from_shared(self.uri.clone())
            .map_err(|e| tonic::Status::invalid_argument(e.to_string()))?
            .connect_timeout(self.rpc_timeout)
            .tcp_nodelay(true)
            .connect_lazy();
        let mut client = MediaPlaneClient::new(channel);
        Ok(client.events(v1::EventsRequest::default()).await?.into_inner())
    }

    /// The RPC deadline in use.
    pub fn rpc_timeout(&self) -> Duration {
        self.rpc_timeout
    }

    /// The media plane's address.
    pub fn uri(&self) -> &str {
        &self.uri
    }

    /// The media plane's leg count (all cores) and instance id, or why it did not answer.
    pub async fn totals(&self) -> Result<(u64, u64), String> {
        let request = v1::GetStatsRequest { leg_ids: Vec::new(), totals_only: true };
        let stats = self.client.clone().get_stats(request).await.map_err(|s| s.message().to_owned())?.into_inner();
        Ok((stats.cores.iter().map(|c| u64::from(c.legs)).sum(), stats.boot_id))
    }
}

/// `offer` as its own answerer's answer, with no address to send to (`c=` 0.0.0.0, RFC 3264
/// §8.4): what the media plane answers for a callee that is not there yet.
pub fn unaddressed_answer(offer: &str) -> String {
    offer
        .split_inclusive('\n')
        .map(|line| {
            let end = if line.ends_with("\r\n") {
                "\r\n"
            } else if line.ends_with('\n') {
                "\n"
            } else {
                ""
            };
            if line.starts_with("c=IN IP6 ") {
                format!("c=IN IP6 ::{end}")
            } else if line.starts_with("c=") {
                format!("c=IN IP4 0.0.0.0{end}")
            } else {
                line.to_owned()
            }
        })
        .collect()
}
