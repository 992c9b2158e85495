//! One shim stream (`Ship`) and one tail stream (`Tail`), from admission to end.
//!
//! A ship stream: the opening message is checked (protocol version, ids,
//! token), its secrets become routes, and then every batch is appended to the
//! queue and acked with the stream's durable high-water mark. Nothing is acked
//! before the queue says it is on disk.

use std::sync::Arc;

use bytes::Bytes;
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

        let shutdown = self.ingest.shutdown.clone();
        loop {
            let message = tokio::select! {
                _ = shutdown.wait() => {
                    let _ = tx.send(Err(Status::unavailable("this gateway is shutting down; everything acked is on disk; reconnect to another gateway"))).await;
                    break;
                }
                _ = tx.closed() => break,
                message = inbound.message() => message,
            };
            let reply = match message {
                Ok(Some(ShimMessage {
                    kind: Some(shim_message::Kind::Batch(batch)),
                })) => self.batch(batch).await,
                Ok(Some(ShimMessage {
                    kind: Some(shim_message::Kind::Open(_)),
                })) => Err(Status::invalid_argument(
                    "a stream carries one Open, as its first message; open a new stream instead",
                )),
                Ok(Some(ShimMessage { kind: None })) => {
                    Err(Status::invalid_argument("empty message: send a Batch"))
                }
                Ok(None) => break,
                Err(status) => {
                    tracing::debug!(agent = %self.agent_id, agent_server = %self.agent_server_id, %status, "stream ended by the shim");
                    break;
                }
            };
            let fatal = reply.is_err();
            if tx.send(reply).await.is_err() || fatal {
                break;
            }
        }
        tracing::info!(agent = %self.agent_id, agent_server = %self.agent_server_id, "stream closed");
    }

    async fn batch(&self, batch: Batch) -> Result<GatewayMessage, Status> {
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
            // The stored high-water mark may still wait for its group commit.
            self.ingest.queue.flush().await.map_err(queue_status)?;
            let seq = self
                .ingest
                .queue
                .acked_seq(&self.agent_id, &self.agent_server_id, &self.boot_id)
                .map_err(queue_status)?;
            return Ok(ack(seq));
        }

        let tail_copy = self
            .ingest
            .tail
            .has_followers(&self.agent_id)
            .then(|| batch.lines.clone());
        let outcome = self
            .ingest
            .queue
            .append(Append {
                agent_id: &self.agent_id,
                agent_server_id: &self.agent_server_id,
                boot_id: &self.boot_id,
                first_seq: batch.first_seq,
                lines: batch.lines,
                routes: &self.routes,
            })
            .await
            .map_err(queue_status)?;

        let fresh = count - outcome.duplicates as u64;
        metrics::duplicates(&self.agent_id, outcome.duplicates as u64);
        metrics::acked(&self.agent_id, fresh);
        if self.routes.is_empty() {
            metrics::dropped(&self.agent_id, "no_destination", fresh);
        }
        if let Some(mut lines) = tail_copy {
            let lines = lines.split_off(outcome.duplicates.min(lines.len()));
            if !lines.is_empty() {
                self.ingest.tail.publish(
                    &self.agent_id,
                    TailBatch {
                        agent_server_id: self.agent_server_id.clone(),
                        lines,
                    },
                );
            }
        }
        Ok(ack(outcome.acked_seq))
    }
}

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
    if !line.more_parts && line.part == u32::MAX {
        return Err(Status::invalid_argument(format!(
            "line {index} of the batch has an impossible part number"
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
fn queue_status(e: QueueError) -> Status {
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
