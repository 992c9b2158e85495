//! Ingest: the gRPC `Drain` service that shims and `tail` clients talk to.
//!
//! Owns stream admission (token, ids, protocol version, one stream per live
//! boot), turning an opening message into routes, acking only what the queue
//! made durable (or what the boot's own stream skipped, counted), and the
//! `Check` dry run of a shim's configuration. It must not deliver to vendors
//! (the sinks do) and must not decide how lines are stored (the queue does).

mod boots;
mod check;
mod fleet_tail;
pub mod notice;
pub mod replicas;
mod ship;
pub mod tail;
pub mod validate;

use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::Stream;
use logdrain::v1::drain_server::Drain;
use logdrain::v1::{
    CheckReply, CheckRequest, GatewayMessage, ShimMessage, StatusReply, StatusRequest, TailLine,
    TailRequest,
};
use tonic::{Request, Response, Status, Streaming};

use crate::auth::SigningKey;
use crate::metrics::StreamRefused;
use crate::queue::Queue;
use crate::shutdown::Shutdown;
use crate::sinks::engine::Engine;
use crate::status::fleet::StatusSource;
use boots::LiveBoots;
use replicas::Replicas;
use tail::TailHub;

/// Shared state of the ingest service.
pub struct Ingest {
    pub(crate) queue: Queue,
    pub(crate) engine: Engine<Queue>,
    pub(crate) key: SigningKey,
    pub(crate) credential_key: Vec<u8>,
    pub(crate) tail: TailHub,
    pub(crate) replicas: Replicas,
    /// Boots bound to the stream writing them.
    pub(crate) boots: LiveBoots,
    pub(crate) shutdown: Shutdown,
    pub(crate) open_timeout: Duration,
    /// Most ship streams served at once, counted from their first byte
    /// (waiting for `Open` included).
    pub(crate) max_streams: usize,
    streams: AtomicUsize,
    /// Fleet-wide tails being served (each holds one tail on every peer).
    fleet_tails: AtomicUsize,
    /// Reports for the peers' `Status`, and the fleet a tail follows.
    pub(crate) status: StatusSource,
}

/// One of the `max_streams` places, held by a ship stream until it ends.
pub(crate) struct StreamSlot(Arc<Ingest>);

impl StreamSlot {
    /// A place for a new stream, if the gateway is below its limit.
    pub(crate) fn take(ingest: &Arc<Ingest>) -> Option<Self> {
        ingest
            .streams
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < ingest.max_streams).then_some(n + 1)
            })
            .ok()
            .map(|_| Self(Arc::clone(ingest)))
    }
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        self.0.streams.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Most fleet-wide tails served at once: each holds a tail on every peer.
pub const MAX_FLEET_TAILS: usize = 256;

/// One of the [`MAX_FLEET_TAILS`] places, held until the tail ends.
pub(crate) struct FleetTailSlot(Arc<Ingest>);

impl FleetTailSlot {
    pub(crate) fn take(ingest: &Arc<Ingest>) -> Option<Self> {
        ingest
            .fleet_tails
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < MAX_FLEET_TAILS).then_some(n + 1)
            })
            .ok()
            .map(|_| Self(Arc::clone(ingest)))
    }
}

impl Drop for FleetTailSlot {
    fn drop(&mut self) {
        self.0.fleet_tails.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Why a caller was not admitted: a fixed reason (the `reason` label of
/// `logdrain_refused_streams_total`) and the status it gets.
pub(crate) struct Refused {
    pub reason: StreamRefused,
    pub status: Status,
}

impl Ingest {
    /// Checks what every shim presents, for a stream or a check: the
    /// protocol version, the ids, and that the token belongs to the agent id.
    pub(crate) fn admit(
        &self,
        protocol_version: u32,
        agent_id: &str,
        agent_server_id: &str,
        token: &str,
    ) -> Result<(), Refused> {
        validate::check_identity(protocol_version, agent_id, agent_server_id).map_err(
            |status| Refused {
                reason: StreamRefused::invalid(&status),
                status,
            },
        )?;
        self.authenticate(agent_id, token)
    }

    /// Checks that the token belongs to the agent id.
    pub(crate) fn authenticate(&self, agent_id: &str, token: &str) -> Result<(), Refused> {
        if !self.key.verify(agent_id, token) {
            return Err(Refused {
                reason: StreamRefused::Unauthenticated,
                status: Status::unauthenticated(format!(
                    "the token is not valid for agent id {agent_id:?}; get one with `logdrain-gateway token --agent-id {agent_id}` and pass it as LOGDRAIN_TOKEN"
                )),
            });
        }
        Ok(())
    }
}

/// The tonic service; cheap to clone.
#[derive(Clone)]
pub struct IngestService(Arc<Ingest>);

impl IngestService {
    pub fn new(
        queue: Queue,
        engine: Engine<Queue>,
        key: SigningKey,
        shutdown: Shutdown,
        open_timeout: Duration,
        max_streams: usize,
        status: StatusSource,
    ) -> Self {
        let credential_key = key.credential_hash_key();
        Self(Arc::new(Ingest {
            queue,
            engine,
            key,
            credential_key,
            tail: TailHub::default(),
            replicas: status.replicas.clone(),
            boots: LiveBoots::default(),
            shutdown,
            open_timeout,
            max_streams,
            streams: AtomicUsize::new(0),
            fleet_tails: AtomicUsize::new(0),
            status,
        }))
    }

    /// The registry of replicas this service admits (for status reports).
    pub fn replicas(&self) -> Replicas {
        self.0.replicas.clone()
    }

    /// The tonic server wrapper, with the protocol's message size limits.
    pub fn into_server(self) -> logdrain::v1::drain_server::DrainServer<Self> {
        logdrain::v1::drain_server::DrainServer::new(self)
            .max_decoding_message_size(logdrain::MAX_MESSAGE_BYTES)
            .max_encoding_message_size(logdrain::MAX_MESSAGE_BYTES)
    }
}

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl Drain for IngestService {
    type ShipStream = BoxStream<GatewayMessage>;
    type TailStream = BoxStream<TailLine>;

    async fn ship(
        &self,
        request: Request<Streaming<ShimMessage>>,
    ) -> Result<Response<Self::ShipStream>, Status> {
        let stream = ship::accept(self.0.clone(), request.into_inner()).await?;
        Ok(Response::new(stream))
    }

    async fn tail(
        &self,
        request: Request<TailRequest>,
    ) -> Result<Response<Self::TailStream>, Status> {
        let stream = ship::tail(self.0.clone(), request.into_inner())?;
        Ok(Response::new(stream))
    }

    async fn check(&self, request: Request<CheckRequest>) -> Result<Response<CheckReply>, Status> {
        let reply = check::check(&self.0, request.into_inner())?;
        Ok(Response::new(reply))
    }

    async fn status(
        &self,
        request: Request<StatusRequest>,
    ) -> Result<Response<StatusReply>, Status> {
        let request = request.into_inner();
        let access = &self.0.status.access;
        let denied = |denied: crate::auth::ReadDenied| match denied {
            crate::auth::ReadDenied::BadAgentId(e) => Status::invalid_argument(e.to_string()),
            crate::auth::ReadDenied::AllDisabled => Status::permission_denied(denied.to_string()),
            other => Status::unauthenticated(other.to_string()),
        };
        let agents = if request.agent_id.is_empty() {
            access.may_read_all(&request.token).map_err(denied)?;
            None
        } else {
            access
                .may_read(&request.agent_id, &request.token)
                .map_err(denied)?;
            Some(vec![request.agent_id])
        };
        // This gateway's own part only: a peer's call never fans out.
        let report = self.0.status.local(agents.as_deref());
        let report_json = serde_json::to_string(&report)
            .map_err(|e| Status::internal(format!("cannot encode the status report: {e}")))?;
        Ok(Response::new(StatusReply { report_json }))
    }
}
