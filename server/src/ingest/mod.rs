//! Ingest: the gRPC `Drain` service that shims and `tail` clients talk to.
//!
//! Owns stream admission (token, ids, protocol version), turning an opening
//! message into routes, and acking only what the queue made durable. It must
//! not deliver to vendors (the sinks do) and must not decide how lines are
//! stored (the queue does).

pub mod notice;
mod ship;
pub mod tail;

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures::Stream;
use logdrain::v1::drain_server::Drain;
use logdrain::v1::{GatewayMessage, ShimMessage, TailLine, TailRequest};
use tonic::{Request, Response, Status, Streaming};

use crate::auth::SigningKey;
use crate::queue::Queue;
use crate::shutdown::Shutdown;
use crate::sinks::engine::Engine;
use tail::TailHub;

/// Shared state of the ingest service.
pub struct Ingest {
    pub(crate) queue: Queue,
    pub(crate) engine: Engine<Queue>,
    pub(crate) key: SigningKey,
    pub(crate) credential_key: Vec<u8>,
    pub(crate) tail: TailHub,
    pub(crate) shutdown: Shutdown,
    pub(crate) open_timeout: Duration,
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
            shutdown,
            open_timeout,
        }))
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
}
