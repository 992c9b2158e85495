//! One shim stream (`Ship`) and one tail stream (`Tail`), from admission to end.
//!
//! A ship stream: the opening message is checked (protocol version, ids,
//! token), its secrets become routes, and then every batch is appended to the
//! queue and acked with the stream's durable high-water mark. Nothing is acked
//! before the queue says it is on disk.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use bytes::Bytes;
use futures::stream::{FuturesOrdered, StreamExt};
use logdrain::v1::{
    gateway_message, shim_message, Ack, Batch, GatewayMessage, Line, Open, Origin, ShimMessage,
    StreamKind, TailLine, TailRequest,
};
use tokio::sync::{broadcast, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Status, Streaming};

use super::tail::TailBatch;
use super::{BoxStream, Ingest};
use crate::config::ids;
use crate::metrics;
use crate::queue::{Append, QueueError};
use crate::route::{routes_for, RouteKey};

/// Longest boot id accepted.
const MAX_BOOT_ID: usize = 64;
/// Largest single secret value accepted.
const MAX_SECRET_BYTES: usize = 16 * 1024;
/// Acks buffered towards a slow shim.
const ACK_BUFFER: usize = 16;
/// Batches of one stream written to the queue but not yet durable. Bounds
/// the memory a stream holds while its writes share group commits.
const PIPELINE_DEPTH: usize = 8;

/// Admits a new ship stream and spawns its session.
pub(super) async fn accept(
    ingest: Arc<Ingest>,
    mut inbound: Streaming<ShimMessage>,
) -> Result<BoxStream<GatewayMessage>, Status> {
    if ingest.shutdown.is_triggered() {
        metrics::refused_streams("shutting_down");
        return Err(Status::unavailable(
            "this gateway is shutting down; connect to another gateway",
        ));
    }
    let first = match tokio::time::timeout(ingest.open_timeout, inbound.message()).await {
        Err(_) => {
            metrics::refused_streams("no_open");
            return Err(Status::deadline_exceeded(format!(
                "no opening message within {:?}; a stream must start with Open",
                ingest.open_timeout
            )));
        }
        Ok(Err(status)) => return Err(status),
        Ok(Ok(None)) => {
            metrics::refused_streams("no_open");
            return Err(Status::invalid_argument(
                "the stream ended before its opening message",
            ));
        }
        Ok(Ok(Some(message))) => message,
    };
    let open = match first.kind {
        Some(shim_message::Kind::Open(open)) => open,
        _ => {
            metrics::refused_streams("no_open");
            return Err(Status::invalid_argument(
                "the first message of a stream must be Open (agent id, agent-server id, boot id, token)",
            ));
        }
    };
    let session = Session::open(ingest, open)?;
    let (tx, rx) = mpsc::channel(ACK_BUFFER);
    tokio::spawn(session.run(inbound, tx));
    Ok(Box::pin(ReceiverStream::new(rx)))
}

/// An admitted stream.
struct Session {
    ingest: Arc<Ingest>,
    agent_id: String,
    agent_server_id: Arc<str>,
    boot_id: String,
    routes: Vec<RouteKey>,
}

impl Session {
    fn open(ingest: Arc<Ingest>, open: Open) -> Result<Self, Status> {
        if open.protocol_version != logdrain::PROTOCOL_VERSION {
            metrics::refused_streams("protocol_version");
            return Err(Status::failed_precondition(format!(
                "the shim speaks protocol version {}, this gateway speaks {}; run matching versions of agent-shim and logdrain-gateway",
                open.protocol_version,
                logdrain::PROTOCOL_VERSION
            )));
        }
        let invalid = |msg: String| {
            metrics::refused_streams("invalid_argument");
            Status::invalid_argument(msg)
        };
        ids::check_agent_id(&open.agent_id).map_err(invalid)?;
        ids::check_agent_server_id(&open.agent_server_id).map_err(invalid)?;
        if open.boot_id.is_empty()
            || open.boot_id.len() > MAX_BOOT_ID
            || !open.boot_id.bytes().all(|b| b.is_ascii_alphanumeric())
        {
            return Err(invalid(format!(
                "the boot id must be 1 to {MAX_BOOT_ID} letters or digits (the shim sends 32 hex digits)"
            )));
        }
        if !ingest.key.verify(&open.agent_id, &open.token) {
            metrics::refused_streams("unauthenticated");
            return Err(Status::unauthenticated(format!(
                "the token is not valid for agent id {:?}; get one with `logdrain-gateway token --agent-id {}` and pass it as LOGDRAIN_TOKEN",
                open.agent_id, open.agent_id
            )));
        }
        if let Some((name, _)) = open
            .secrets
            .iter()
            .find(|(_, value)| value.len() > MAX_SECRET_BYTES)
        {
            return Err(invalid(format!(
                "the secret {name} is longer than {MAX_SECRET_BYTES} bytes; check its value"
            )));
        }
        let secrets = open.secrets.into_iter().collect();
        let mut routes = Vec::new();
        for (route, secrets) in routes_for(&open.agent_id, &secrets, &ingest.credential_key) {
            ingest
                .queue
                .put_route(&route, &secrets)
                .map_err(queue_status)?;
            ingest.engine.ensure_route(route.clone(), secrets);
            routes.push(route);
        }
        if routes.is_empty() {
            tracing::warn!(
                agent = %open.agent_id,
                agent_server = %open.agent_server_id,
                "stream enables no destination (no vendor secrets); its lines go to live tail only"
            );
        }
        Ok(Self {
            ingest,
            agent_id: open.agent_id,
            agent_server_id: Arc::from(open.agent_server_id),
            boot_id: open.boot_id,
            routes,
        })
    }

    async fn run(
        self,
        mut inbound: Streaming<ShimMessage>,
        tx: mpsc::Sender<Result<GatewayMessage, Status>>,
    ) {
        metrics::active_streams(1.0);
        let _guard = ActiveStream;
        tracing::info!(agent = %self.agent_id, agent_server = %self.agent_server_id, boot = %self.boot_id, routes = self.routes.len(), "stream opened");

        // Batches written to the queue and waiting for their group commit,
        // acked in order as they become durable. Reading the next batch
        // while earlier ones wait lets them share one flush.
        let mut waiting: FuturesOrdered<Durable> = FuturesOrdered::new();
        let shutdown = self.ingest.shutdown.clone();
        let mut reading = true;
        let mut shutting_down = false;
        loop {
            if !reading && waiting.is_empty() {
                if shutting_down {
                    let _ = tx.send(Err(Status::unavailable("this gateway is shutting down; everything acked is on disk; reconnect to another gateway"))).await;
                }
                break;
            }
            tokio::select! {
                biased;
                Some(done) = waiting.next() => {
                    let reply = done.map(ack);
                    let failed = reply.is_err();
                    if tx.send(reply).await.is_err() || failed {
                        break;
                    }
                }
                _ = tx.closed() => break,
                _ = shutdown.wait(), if !shutting_down => {
                    // Stop reading; ack what is being made durable.
                    shutting_down = true;
                    reading = false;
                }
                message = inbound.message(), if reading && waiting.len() < PIPELINE_DEPTH => {
                    match message {
                        Ok(Some(ShimMessage {
                            kind: Some(shim_message::Kind::Batch(batch)),
                        })) => match self.write(batch) {
                            Ok(durable) => waiting.push_back(durable),
                            Err(status) => {
                                let _ = tx.send(Err(status)).await;
                                break;
                            }
                        },
                        Ok(Some(ShimMessage {
                            kind: Some(shim_message::Kind::Open(_)),
                        })) => {
                            let _ = tx.send(Err(Status::invalid_argument(
                                "a stream carries one Open, as its first message; open a new stream instead",
                            ))).await;
                            break;
                        }
                        Ok(Some(ShimMessage { kind: None })) => {
                            let _ = tx.send(Err(Status::invalid_argument("empty message: send a Batch"))).await;
                            break;
                        }
                        Ok(None) => reading = false,
                        Err(status) => {
                            tracing::debug!(agent = %self.agent_id, agent_server = %self.agent_server_id, %status, "stream ended by the shim");
                            reading = false;
                        }
                    }
                }
            }
        }
        tracing::info!(agent = %self.agent_id, agent_server = %self.agent_server_id, "stream closed");
    }

    /// Checks a batch and writes it to the queue; the returned future
    /// resolves to the stream's durable high-water mark once the write is on
    /// disk, and only then counts it as acked and shows it to live tail.
    fn write(&self, batch: Batch) -> Result<Durable, Status> {
        if batch.first_seq == 0 {
            return Err(Status::invalid_argument(
                "Batch.first_seq is 0; sequence numbers start at 1",
            ));
        }
        let count = batch.lines.len() as u64;
        if batch.first_seq.checked_add(count).is_none() {
            return Err(Status::invalid_argument(
                "Batch.first_seq plus the line count overflows u64",
            ));
        }
        for (i, line) in batch.lines.iter().enumerate() {
            check_line(i, line)?;
        }
        let bytes: u64 = batch.lines.iter().map(|l| l.data.len() as u64).sum();
        metrics::received(&self.agent_id, count, bytes);
        if batch.lines.is_empty() {
            // Nothing to write: answer with the stream's durable mark (the
            // stored one may still wait for its group commit).
            let queue = self.ingest.queue.clone();
            let (agent, server, boot) = (
                self.agent_id.clone(),
                Arc::clone(&self.agent_server_id),
                self.boot_id.clone(),
            );
            return Ok(Box::pin(async move {
                let seq = queue
                    .acked_seq(&agent, &server, &boot)
                    .map_err(queue_status)?;
                queue.flush().await.map_err(queue_status)?;
                Ok(seq)
            }));
        }
        let tail_copy = self
            .ingest
            .tail
            .has_followers(&self.agent_id)
            .then(|| batch.lines.clone());
        let written = self
            .ingest
            .queue
            .write(Append {
                agent_id: &self.agent_id,
                agent_server_id: &self.agent_server_id,
                boot_id: &self.boot_id,
                first_seq: batch.first_seq,
                lines: batch.lines,
                routes: &self.routes,
            })
            .map_err(queue_status)?;

        let ingest = Arc::clone(&self.ingest);
        let agent_id = self.agent_id.clone();
        let agent_server_id = Arc::clone(&self.agent_server_id);
        let no_destination = self.routes.is_empty();
        Ok(Box::pin(async move {
            let outcome = written.durable().await.map_err(queue_status)?;
            let fresh = count - outcome.duplicates as u64;
            metrics::duplicates(&agent_id, outcome.duplicates as u64);
            metrics::acked(&agent_id, fresh);
            if no_destination {
                metrics::dropped(&agent_id, "no_destination", fresh);
            }
            if let Some(mut lines) = tail_copy {
                let lines = lines.split_off(outcome.duplicates.min(lines.len()));
                if !lines.is_empty() {
                    ingest.tail.publish(
                        &agent_id,
                        TailBatch {
                            agent_server_id,
                            lines,
                        },
                    );
                }
            }
            Ok(outcome.acked_seq)
        }))
    }
}

/// A written batch on its way to disk; yields the ack to send.
type Durable = Pin<Box<dyn Future<Output = Result<u64, Status>> + Send>>;

fn check_line(index: usize, line: &Line) -> Result<(), Status> {
    if StreamKind::try_from(line.stream).map_or(true, |s| s == StreamKind::Unspecified) {
        return Err(Status::invalid_argument(format!(
            "line {index} of the batch has stream {}; use STDOUT (1) or STDERR (2)",
            line.stream
        )));
    }
    if Origin::try_from(line.origin).map_or(true, |o| o == Origin::Unspecified) {
        return Err(Status::invalid_argument(format!(
            "line {index} of the batch has origin {}; use AGENT (1) or SHIM (2)",
            line.origin
        )));
    }
    Ok(())
}

fn ack(seq: u64) -> GatewayMessage {
    GatewayMessage {
        kind: Some(gateway_message::Kind::Ack(Ack { acked_seq: seq })),
    }
}

/// How a queue failure looks to the shim: it keeps the lines and retries.
/// Lack of space (disk watermark, ENOSPC, quota) is RESOURCE_EXHAUSTED: the
/// gateway works and delivers, it only cannot take more now.
fn queue_status(e: QueueError) -> Status {
    if e.is_out_of_space() {
        tracing::warn!(error = %e, "batch refused for lack of queue space; the shim keeps its lines and retries");
        return Status::resource_exhausted(format!("{e}; keep the lines and retry later"));
    }
    tracing::error!(error = %e, "queue write failed; the shim keeps its lines and retries");
    Status::unavailable(format!(
        "the gateway queue failed ({e}); keep the lines and retry"
    ))
}

struct ActiveStream;

impl Drop for ActiveStream {
    fn drop(&mut self) {
        metrics::active_streams(-1.0);
    }
}

/// Opens a live tail of one agent.
pub(super) fn tail(
    ingest: Arc<Ingest>,
    request: TailRequest,
) -> Result<BoxStream<TailLine>, Status> {
    ids::check_agent_id(&request.agent_id).map_err(Status::invalid_argument)?;
    if !ingest.key.verify(&request.agent_id, &request.token) {
        metrics::refused_streams("unauthenticated");
        return Err(Status::unauthenticated(format!(
            "the token is not valid for agent id {:?}; tail needs that agent's own token",
            request.agent_id
        )));
    }
    let mut rx = ingest.tail.subscribe(&request.agent_id);
    let (tx, out) = mpsc::channel(256);
    let shutdown = ingest.shutdown.clone();
    tokio::spawn(async move {
        loop {
            let batch = tokio::select! {
                _ = shutdown.wait() => break,
                _ = tx.closed() => break,
                batch = rx.recv() => batch,
            };
            match batch {
                Ok(batch) => {
                    for line in &batch.lines {
                        let item = TailLine {
                            agent_server_id: batch.agent_server_id.to_string(),
                            line: Some(line.clone()),
                        };
                        if tx.send(Ok(item)).await.is_err() {
                            return;
                        }
                    }
                }
                Err(broadcast::error::RecvError::Lagged(missed)) => {
                    let notice = TailLine {
                        agent_server_id: "logdrain-gateway".to_string(),
                        line: Some(Line {
                            timestamp_ns: now_ns(),
                            stream: StreamKind::Stderr as i32,
                            data: Bytes::from(format!(
                                "logdrain-gateway: tail skipped {missed} batches because this client reads too slowly (delivery to vendors is not affected)"
                            )),
                            origin: Origin::Shim as i32,
                            part: 0,
                            more_parts: false,
                        }),
                    };
                    if tx.send(Ok(notice)).await.is_err() {
                        return;
                    }
                }
                Err(broadcast::error::RecvError::Closed) => break,
            }
        }
    });
    Ok(Box::pin(ReceiverStream::new(out)))
}

fn now_ns() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0)
}
