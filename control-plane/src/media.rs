//! What the call logic asks of the media plane ([`MediaRequest`]) and what comes back
//! ([`MediaReply`]), plus [`MediaClient`], the tonic driver that turns requests into gRPC calls.
//!
//! The call logic is sans-IO: it queues `(call, MediaRequest)` pairs and is told the outcome of an
//! allocation later with [`MediaReply`]. Updates and releases need no answer: the client counts
//! their failures. An allocation that fails half-way deletes what it created before it answers,
//! so nothing leaks on either side.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use proto::v1;
use proto::v1::media_plane_client::MediaPlaneClient;
use tonic::transport::Channel;

use crate::sdp::Direction;

/// One stream to anchor: the caller side is known from its offer, the callee side is not yet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamRequest {
    /// Where the caller wants RTP (its SDP; latching corrects it behind NAT).
    pub caller: SocketAddr,
    /// The caller's direction.
    pub direction: Direction,
    /// RTCP multiplexed on the RTP port (both sides).
    pub rtcp_mux: bool,
}

/// One anchored stream: a leg facing each side and the bridge between them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AnchoredStream {
    /// Leg facing the caller (A).
    pub leg_a: u64,
    /// Its media-plane port, written in the SDP sent to A.
    pub port_a: u16,
    /// Leg facing the callee (B).
    pub leg_b: u64,
    /// Its port, written in the SDP sent to B.
    pub port_b: u16,
    /// The bridge.
    pub bridge: u64,
}

/// A call's media in the media plane.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Allocation {
    /// The address to advertise in SDP.
    pub ip: IpAddr,
    /// One per active stream of the offer, in order.
    pub streams: Vec<AnchoredStream>,
}

impl Allocation {
    /// Every leg, for [`MediaRequest::Release`] (the media plane deletes a leg's bridge with it).
    pub fn release(&self) -> MediaRequest {
        MediaRequest::Release { legs: self.streams.iter().flat_map(|s| [s.leg_a, s.leg_b]).collect() }
    }
}

/// A request for the media plane.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MediaRequest {
    /// Create both legs of each stream and bridge them; answered with [`MediaReply::Allocated`].
    Allocate {
        /// The SIP Call-ID (the media plane keeps a call's legs on one core).
        call_id: String,
        /// The streams.
        streams: Vec<StreamRequest>,
    },
    /// Point a leg at a new remote and/or direction (answer SDP, re-INVITE, hold).
    Update {
        /// The leg.
        leg: u64,
        /// The endpoint's RTP address, when its SDP gave one.
        remote: Option<SocketAddr>,
        /// The endpoint's direction.
        direction: Direction,
    },
    /// Delete legs; DeleteLeg also deletes the leg's bridge, so one call per leg is all it takes.
    Release {
        /// Legs.
        legs: Vec<u64>,
    },
}

/// The answer to [`MediaRequest::Allocate`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MediaReply {
    /// The allocation, or why it failed.
    Allocated(Result<Allocation, String>),
}

/// Counters of the media client.
#[derive(Debug, Default)]
pub struct MediaCounters {
    /// Allocations that succeeded.
    pub allocations: AtomicU64,
    /// Allocations that failed.
    pub allocation_failures: AtomicU64,
    /// Updates that failed.
    pub update_failures: AtomicU64,
    /// Releases done.
    pub releases: AtomicU64,
    /// Deletes that failed (the media plane's media timeout reclaims those legs).
    pub release_failures: AtomicU64,
}

fn direction(d: Direction) -> i32 {
    let d = match d {
        Direction::SendRecv => v1::Direction::Sendrecv,
        Direction::SendOnly => v1::Direction::Sendonly,
        Direction::RecvOnly => v1::Direction::Recvonly,
        Direction::Inactive => v1::Direction::Inactive,
    };
    d as i32
}

fn endpoint(addr: SocketAddr) -> v1::Endpoint {
    v1::Endpoint { ip: addr.ip().to_string(), port: u32::from(addr.port()) }
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

    /// Executes `request`; allocations return their reply.
    pub async fn execute(&self, request: MediaRequest) -> Option<MediaReply> {
        match request {
            MediaRequest::Allocate { call_id, streams } => {
                let result =
                    self.allocate(&call_id, &streams).await.map_err(|e| format!("media plane {}: {e}", self.uri));
                let counter =
                    if result.is_ok() { &self.counters.allocations } else { &self.counters.allocation_failures };
                counter.fetch_add(1, Ordering::Relaxed);
                Some(MediaReply::Allocated(result))
            }
            MediaRequest::Update { leg, remote, direction: d } => {
                let request = v1::UpdateLegRequest {
                    leg_id: leg,
                    remote: remote.map(endpoint),
                    remote_rtcp: None,
                    direction: direction(d),
                    relatch: remote.is_some(),
                };
                if self.client.clone().update_leg(request).await.is_err() {
                    self.counters.update_failures.fetch_add(1, Ordering::Relaxed);
                }
                None
            }
            MediaRequest::Release { legs } => {
                self.release(&legs).await;
                None
            }
        }
    }

    async fn release(&self, legs: &[u64]) {
        // All deletes in flight at once (tonic sends a request when its task first runs).
        let deletes: Vec<_> = legs
            .iter()
            .map(|&leg_id| {
                let mut client = self.client.clone();
                tokio::spawn(async move { client.delete_leg(v1::DeleteLegRequest { leg_id }).await.is_err() })
            })
            .collect();
        let mut failed = false;
        for delete in deletes {
            failed |= delete.await.unwrap_or(true);
        }
        let counter = if failed { &self.counters.release_failures } else { &self.counters.releases };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    async fn create_leg(&self, request: v1::CreateLegRequest) -> Result<(u64, u16, IpAddr), String> {
        let response = self.client.clone().create_leg(request).await.map_err(|s| format!("CreateLeg: {}", s.message()))?;
        let r = response.into_inner();
        let local = r.local.ok_or("CreateLeg: no local endpoint")?;
        let ip: IpAddr = local.ip.parse().map_err(|_| format!("CreateLeg: bad local ip {:?}", local.ip))?;
        let port = u16::try_from(local.port).map_err(|_| "CreateLeg: bad local port".to_owned())?;
        Ok((r.leg_id, port, ip))
    }

    async fn allocate(&self, call_id: &str, streams: &[StreamRequest]) -> Result<Allocation, String> {
        let mut done = Allocation { ip: IpAddr::from([0, 0, 0, 0]), streams: Vec::new() };
        let mut partial_legs = Vec::new();
        let result: Result<(), String> = async {
            for s in streams {
                // Both legs at once: one round trip instead of two.
                let leg_a = self.create_leg(v1::CreateLegRequest {
                    call_id: call_id.to_owned(),
                    remote: Some(endpoint(s.caller)),
                    remote_rtcp: None,
                    rtcp_mux: s.rtcp_mux,
                    direction: direction(s.direction),
                    media_timeout_ms: self.media_timeout_ms,
                    latch: true,
                    // Placed by the SIP Call-ID: both legs of a call relay on one core.
                    group: String::new(),
                    // SDP is rewritten by the control plane for now; the media plane relays.
                    codec: None,
                });
                let leg_b = self.create_leg(v1::CreateLegRequest {
                    call_id: call_id.to_owned(),
                    remote: None,
                    remote_rtcp: None,
                    rtcp_mux: s.rtcp_mux,
                    direction: direction(Direction::SendRecv),
                    media_timeout_ms: self.media_timeout_ms,
                    latch: true,
                    // Placed by the SIP Call-ID: both legs of a call relay on one core.
                    group: String::new(),
                    // SDP is rewritten by the control plane for now; the media plane relays.
                    codec: None,
                });
                let (a, b) = tokio::join!(leg_a, leg_b);
                if let Ok((leg, _, _)) = &a {
                    partial_legs.push(*leg);
                }
                if let Ok((leg, _, _)) = &b {
                    partial_legs.push(*leg);
                }
                let ((leg_a, port_a, ip), (leg_b, port_b, _)) = (a?, b?);
                let bridge = self
                    .client
                    .clone()
                    .create_bridge(v1::CreateBridgeRequest { leg_a, leg_b })
                    .await
                    .map_err(|s| format!("CreateBridge: {}", s.message()))?
                    .into_inner()
                    .bridge_id;
                partial_legs.clear();
                done.ip = ip;
                done.streams.push(AnchoredStream { leg_a, port_a, leg_b, port_b, bridge });
            }
            Ok(())
        }
        .await;
        match result {
            Ok(()) => Ok(done),
            Err(e) => {
                let MediaRequest::Release { mut legs } = done.release() else { return Err(e) };
                legs.extend(partial_legs);
                self.release(&legs).await;
                Err(e)
            }
        }
    }

    /// The RPC deadline in use.
    pub fn rpc_timeout(&self) -> Duration {
        self.rpc_timeout
    }
}
