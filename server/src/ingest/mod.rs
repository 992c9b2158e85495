//! Ingest: the gRPC `Drain` service that shims and `tail` clients talk to.
//!
//! Owns stream admission (token, ids, protocol version), turning an opening
//! message into routes, acking only what the queue made durable, and the
//! `Check` dry run of a shim's configuration. It must not deliver to vendors
//! (the sinks do) and must not decide how lines are stored (the queue does).

mod check;
pub mod replicas;
mod ship;
pub mod tail;

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures::Stream;
use logdrain::v1::drain_server::Drain;
use logdrain::v1::{CheckReply, CheckRequest, GatewayMessage, ShimMessage, TailLine, TailRequest};
use tonic::{Request, Response, Status, Streaming};

use crate::auth::SigningKey;
use crate::config::ids;
use crate::queue::Queue;
use crate::shutdown::Shutdown;
use crate::sinks::engine::Engine;
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
    pub(crate) shutdown: Shutdown,
    pub(crate) open_timeout: Duration,
}

/// Largest single secret value accepted.
const MAX_SECRET_BYTES: usize = 16 * 1024;

/// Why a caller was not admitted: a fixed reason (the `reason` label of
/// `logdrain_refused_streams_total`) and the status it gets.
pub(crate) struct Refused {
    pub reason: &'static str,
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
        if protocol_version != logdrain::PROTOCOL_VERSION {
            return Err(Refused {
                reason: "protocol_version",
                status: Status::failed_precondition(format!(
                    "the shim speaks protocol version {protocol_version}, this gateway speaks {}; run matching versions of agent-shim and logdrain-gateway",
                    logdrain::PROTOCOL_VERSION
                )),
            });
        }
        let invalid = |message: String| Refused {
            reason: "invalid_argument",
            status: Status::invalid_argument(message),
        };
        ids::check_agent_id(agent_id).map_err(invalid)?;
        ids::check_agent_server_id(agent_server_id).map_err(invalid)?;
        if !self.key.verify(agent_id, token) {
            return Err(Refused {
                reason: "unauthenticated",
                status: Status::unauthenticated(format!(
                    "the token is not valid for agent id {agent_id:?}; get one with `logdrain-gateway token --agent-id {agent_id}` and pass it as LOGDRAIN_TOKEN"
                )),
            });
        }
        Ok(())
    }
}

/// Refuses a secret value larger than any real credential (names the
/// secret, never shows the value).
fn check_secret_sizes(secrets: &HashMap<String, String>) -> Result<(), String> {
    match secrets
        .iter()
        .find(|(_, value)| value.len() > MAX_SECRET_BYTES)
    {
        Some((name, _)) => Err(format!(
            "the secret {name} is longer than {MAX_SECRET_BYTES} bytes; check its value"
        )),
        None => Ok(()),
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
    ) -> Self {
        let credential_key = key.credential_hash_key();
        Self(Arc::new(Ingest {
            queue,
            engine,
            key,
            credential_key,
            tail: TailHub::default(),
            replicas: Replicas::default(),
            shutdown,
            open_timeout,
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
}
