//! One shim stream (`Ship`) and one tail stream (`Tail`), from admission to end.
//!
//! A ship stream: the opening message is checked (protocol version, ids,
//! token), its boot is bound to it (`boots.rs`: one stream per live boot),
//! its secrets become routes, and then every batch is appended to the queue
//! and acked with the stream's durable high-water mark. Nothing is acked
//! before the queue says it is on disk.
//!
//! A handoff stream (`Open.handoff`, sent by `logdrain-gateway handoff` for
//! a retired gateway) is admitted only with a proof made with the signing
//! key. Its lines are stored as a shim's, but it offers its credentials to
//! no other route, keeps a route's current credentials and first-seen time
//! (a new route takes the retired gateway's), and is neither a replica in
//! `status` nor shown on live tail.
//!
//! Seqs a batch skips (it starts above the mark + 1: the shim's buffer
//! dropped them, or another gateway acked them before a failover) are
//! counted (`logdrain_skipped_seqs_total`), never as acked lines. Only the
//! boot's own stream can skip, so an ack never covers a line another client
//! meant to write. The boot id is never logged, only its fingerprint.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use futures::stream::{FuturesOrdered, StreamExt};
use logdrain::v1::{
    gateway_message, shim_message, Ack, Batch, GatewayMessage, Open, ShimMessage, TailLine,
    TailRequest,
};
use tokio::sync::{broadcast, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Code, Status, Streaming};

use super::boots::{self, BootBinding};
use super::tail::TailBatch;
use super::validate;
use super::{BoxStream, Ingest, StreamSlot};
use crate::metrics::{self, StreamRefused};
use crate::queue::{Append, QueueError};
use crate::route::{routes_for, RouteKey};
use logdrain::ids;

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
        metrics::refused_streams(StreamRefused::ShuttingDown);
        return Err(Status::unavailable(
            "this gateway is shutting down; connect to another gateway",
        ));
    }
    let Some(slot) = StreamSlot::take(&ingest) else {
        metrics::refused_streams(StreamRefused::ResourceExhausted);
        return Err(Status::resource_exhausted(format!(
            "this gateway already serves its limit of {} streams (--max-streams); retry later or connect to another gateway",
            ingest.max_streams
        )));
    };
    let first = match tokio::time::timeout(ingest.open_timeout, inbound.message()).await {
        Err(_) => {
            metrics::refused_streams(StreamRefused::NoOpen);
            return Err(Status::deadline_exceeded(format!(
                "no opening message within {:?}; a stream must start with Open",
                ingest.open_timeout
            )));
        }
        Ok(Err(status)) => {
            let status = inbound_error(status);
            if status.code() == Code::ResourceExhausted {
                metrics::refused_streams(StreamRefused::ResourceExhausted);
            }
            return Err(status);
        }
        Ok(Ok(None)) => {
            metrics::refused_streams(StreamRefused::NoOpen);
            return Err(Status::invalid_argument(
                "the stream ended before its opening message",
            ));
        }
        Ok(Ok(Some(message))) => message,
    };
    let open = validate::opening(first)
        .inspect_err(|_| metrics::refused_streams(StreamRefused::NoOpen))?;
    let session = Session::open(ingest, open)?;
    let (tx, rx) = mpsc::channel(ACK_BUFFER);
    tokio::spawn(session.run(inbound, tx, slot));
    Ok(Box::pin(ReceiverStream::new(rx)))
}

/// An admitted stream.
struct Session {
    ingest: Arc<Ingest>,
    agent_id: String,
    metrics: Arc<metrics::Ingest>,
    agent_server_id: Arc<str>,
    boot_id: String,
    /// Held while the stream reads; released when it stops.
    boot: Option<BootBinding>,
    routes: Vec<RouteKey>,
    /// Lines another gateway handed off, not a shim's.
    handoff: bool,
}

impl Session {
    fn open(ingest: Arc<Ingest>, open: Open) -> Result<Self, Status> {
        validate::check_open(&open)
            .inspect_err(|status| metrics::refused_streams(StreamRefused::invalid(status)))?;
        ingest
            .authenticate(&open.agent_id, &open.token)
            .map_err(|refused| {
                metrics::refused_streams(refused.reason);
                refused.status
            })?;
        let handoff_first_seen = match &open.handoff {
            None => None,
            Some(handoff) => {
                let proven = ingest.key.verify_handoff(
                    &open.agent_id,
                    &open.agent_server_id,
                    &open.boot_id,
                    &handoff.proof,
                );
                if !proven {
                    metrics::refused_streams(StreamRefused::Unauthenticated);
                    return Err(Status::unauthenticated(format!(
                        "the handoff proof is not valid for agent id {:?}: only a gateway with this gateway's signing key can hand off lines; run `logdrain-gateway handoff` with the LOGDRAIN_SIGNING_KEY this gateway uses",
                        open.agent_id
                    )));
                }
                Some(handoff.first_seen_ms)
            }
        };
        let boot = ingest
            .boots
            .bind(&open.agent_id, &open.agent_server_id, &open.boot_id)
            .ok_or_else(|| {
                metrics::refused_streams(StreamRefused::BootLive);
                Status::aborted(
                    "this boot id is being written by another stream; go on under a new boot id (agent-shim does), or retry once that stream has ended",
                )
            })?;
        let secrets = open.secrets.into_iter().collect();
        let wanted = routes_for(&open.agent_id, &secrets, &ingest.credential_key);
        // Check, add and attach under one lock, so concurrent opens cannot
        // both pass and no route expires in between.
        let admission = ingest.engine.admission();
        let keys: Vec<RouteKey> = wanted.iter().map(|(route, _)| route.clone()).collect();
        ingest
            .engine
            .check_route_limit(&open.agent_id, &keys)
            .map_err(|error| {
                metrics::refused_streams(StreamRefused::RouteLimit);
                Status::resource_exhausted(error.to_string())
            })?;
        let mut routes = Vec::new();
        for (route, offered) in wanted {
            // A route that adopted newer credentials keeps them.
            let current = ingest.engine.current_secrets(&route);
            // Handed-off credentials are as old as the retired gateway saw
            // them (0, unknown, is oldest), so they never pass for a newer
            // deployment's.
            let first_seen_ms = match (handoff_first_seen, &current) {
                (Some(theirs), None) => theirs,
                _ => ingest.engine.first_seen(&route),
            };
            let secrets = current.unwrap_or_else(|| offered.clone());
            ingest
                .queue
                .put_route_since(&route, &secrets, first_seen_ms)
                .map_err(queue_status)?;
            ingest
                .engine
                .ensure_route_since(route.clone(), secrets, first_seen_ms);
            if handoff_first_seen.is_none() {
                ingest.engine.offer_credentials(&route, &offered);
            }
            routes.push(route);
        }
        // Detached when the session drops; attached only once it exists.
        for route in &routes {
            ingest.engine.attach(route);
        }
        drop(admission);
        if routes.is_empty() {
            tracing::warn!(
                agent = %open.agent_id,
                agent_server = %open.agent_server_id,
                "stream enables no destination (no vendor secrets); its lines go to live tail only"
            );
        }
        Ok(Self {
            ingest,
            metrics: Arc::new(metrics::Ingest::new(&open.agent_id)),
            agent_id: open.agent_id,
            agent_server_id: Arc::from(open.agent_server_id),
            boot_id: open.boot_id,
            boot: Some(boot),
            routes,
            handoff: handoff_first_seen.is_some(),
        })
    }

    async fn run(
        mut self,
        mut inbound: Streaming<ShimMessage>,
        tx: mpsc::Sender<Result<GatewayMessage, Status>>,
        _slot: StreamSlot,
    ) {
        metrics::active_streams(1.0);
        self.metrics.seen();
        let replica = (!self.handoff).then(|| self.ingest.replicas.clone());
        if let Some(replicas) = &replica {
            metrics::connected_replicas(&self.agent_id, 1.0);
            replicas.stream_opened(&self.agent_id, &self.agent_server_id);
        }
        let _guard = ActiveStream {
            agent_id: self.agent_id.clone(),
            metrics: Arc::clone(&self.metrics),
            agent_server_id: Arc::clone(&self.agent_server_id),
            replica,
        };
        tracing::info!(agent = %self.agent_id, agent_server = %self.agent_server_id, boot = %boots::fingerprint(&self.boot_id), routes = self.routes.len(), handoff = self.handoff, "stream opened");

        // Batches written to the queue and waiting for their group commit,
        // acked in order as they become durable. Reading the next batch
        // while earlier ones wait lets them share one flush.
        let mut waiting: FuturesOrdered<Durable> = FuturesOrdered::new();
        let shutdown = self.ingest.shutdown.clone();
        let mut reading = true;
        let mut shutting_down = false;
        // Why the stream ends, told to the shim after the batches already
        // written are acked.
        let mut ending: Option<Status> = None;
        loop {
            if !reading {
                // This stream writes no more: a new stream of its boot (the
                // shim reconnecting) may write after it.
                self.boot = None;
            }
            if !reading && waiting.is_empty() {
                if shutting_down {
                    ending = Some(Status::unavailable("this gateway is shutting down; everything acked is on disk; reconnect to another gateway"));
                }
                if let Some(status) = ending {
                    let _ = tx.send(Err(status)).await;
                }
                break;
            }
            tokio::select! {
                biased;
                Some(done) = waiting.next() => {
                    let reply = done.map(ack);
                    let failed = reply.is_err();
                    if failed {
                        // Released before the shim hears of it, so that
                        // its reconnect is admitted.
                        self.boot = None;
                    }
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
                    let refusal = match message {
                        Ok(Some(ShimMessage {
                            kind: Some(shim_message::Kind::Batch(batch)),
                        })) => match self.write(batch) {
                            Ok(durable) => {
                                waiting.push_back(durable);
                                None
                            }
                            Err(status) => Some(status),
                        },
                        Ok(Some(ShimMessage {
                            kind: Some(shim_message::Kind::Open(_)),
                        })) => Some(Status::invalid_argument(
                            "a stream carries one Open, as its first message; open a new stream instead",
                        )),
                        Ok(Some(ShimMessage { kind: None })) => {
                            Some(Status::invalid_argument("empty message: send a Batch"))
                        }
                        Ok(None) => {
                            reading = false;
                            None
                        }
                        Err(status) => {
                            tracing::debug!(agent = %self.agent_id, agent_server = %self.agent_server_id, %status, "stream ended by the shim");
                            reading = false;
                            // A shim that hung up does not read it; one
                            // that sent something undecodable learns why.
                            ending = Some(inbound_error(status));
                            None
                        }
                    };
                    if let Some(status) = refusal {
                        // Released before the shim hears of it, so that its
                        // reconnect is admitted.
                        self.boot = None;
                        let _ = tx.send(Err(status)).await;
                        break;
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
        validate::check_batch(&batch)?;
        let count = batch.lines.len() as u64;
        let bytes: u64 = batch.lines.iter().map(|l| l.data.len() as u64).sum();
        self.metrics.received(count, bytes);
        if !self.handoff {
            self.ingest.replicas.batch_received(
                &self.agent_id,
                &self.agent_server_id,
                batch.shim_dropped_total,
                &batch.shim_redacted_total,
            );
        }
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
        // Handed-off lines are old: live tail shows only lines as they come.
        let tail_copy = (!self.handoff && self.ingest.tail.has_followers(&self.agent_id))
            .then(|| batch.lines.clone());
        // This stream alone writes its boot, so the mark it reads is the one
        // the batch is written against.
        let mark = self
            .ingest
            .queue
            .acked_seq(&self.agent_id, &self.agent_server_id, &self.boot_id)
            .map_err(queue_status)?;
        let skipped = batch.first_seq.saturating_sub(mark.saturating_add(1));
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
        let metrics = Arc::clone(&self.metrics);
        let agent_server_id = Arc::clone(&self.agent_server_id);
        let no_destination = self.routes.is_empty();
        let handoff = self.handoff;
        Ok(Box::pin(async move {
            let outcome = written.durable().await.map_err(queue_status)?;
            let fresh = count - outcome.duplicates as u64;
            metrics.acked(fresh, outcome.duplicates as u64, handoff);
            // A handoff's gaps are lines the retired gateway had delivered.
            if !handoff && skipped > 0 {
                metrics.skipped_seqs(skipped);
                tracing::debug!(agent = %agent_id, agent_server = %agent_server_id, skipped, "batch skipped seqs (dropped by the shim or acked by another gateway)");
            }
            if no_destination {
                metrics.no_destination(fresh);
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

/// What the shim is told when reading its stream failed: a message over the
/// size limit is RESOURCE_EXHAUSTED naming the limit; anything else as tonic
/// reported it.
fn inbound_error(status: Status) -> Status {
    if status.code() == Code::OutOfRange {
        return Status::resource_exhausted(format!(
            "a message is larger than the gateway's limit of {} bytes ({}); send smaller batches (agent-shim keeps a batch under 1 MiB plus one line)",
            logdrain::MAX_MESSAGE_BYTES,
            status.message()
        ));
    }
    status
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

/// Counts a stream (and its agent's replica, unless it is a handoff) as
/// connected while it lives.
struct ActiveStream {
    agent_id: String,
    metrics: Arc<metrics::Ingest>,
    agent_server_id: Arc<str>,
    replica: Option<super::Replicas>,
}

impl Drop for ActiveStream {
    fn drop(&mut self) {
        metrics::active_streams(-1.0);
        self.metrics.seen();
        if let Some(replicas) = &self.replica {
            metrics::connected_replicas(&self.agent_id, -1.0);
            replicas.stream_closed(&self.agent_id, &self.agent_server_id);
        }
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        for route in &self.routes {
            self.ingest.engine.detach(route);
        }
    }
}

/// Opens a live tail of one agent.
pub(super) fn tail(
    ingest: Arc<Ingest>,
    request: TailRequest,
) -> Result<BoxStream<TailLine>, Status> {
    ids::check_agent_id(&request.agent_id).map_err(validate::refused)?;
    if !ingest.key.verify(&request.agent_id, &request.token) {
        metrics::refused_streams(StreamRefused::Unauthenticated);
        return Err(Status::unauthenticated(format!(
            "the token is not valid for agent id {:?}; tail needs that agent's own token",
            request.agent_id
        )));
    }
    let fleet = &ingest.status.fleet;
    let fan_out = !request.local_only && fleet.is_configured();
    let slot = match fan_out {
        true => Some(super::FleetTailSlot::take(&ingest).ok_or_else(|| {
            Status::resource_exhausted(format!(
                "this gateway serves at most {} fleet-wide tails at once; try again later",
                super::MAX_FLEET_TAILS
            ))
        })?),
        false => None,
    };
    let mut rx = ingest.tail.subscribe(&request.agent_id);
    let (tx, out) = mpsc::channel(256);
    let shutdown = ingest.shutdown.clone();
    let own = fleet.view().own_name.clone();
    if let Some(slot) = slot {
        super::fleet_tail::spawn(
            fleet.clone(),
            request,
            tx.clone(),
            ingest.status.peer_timeout,
            shutdown.clone(),
            slot,
        );
    }
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
                            gateway: own.clone(),
                        };
                        if tx.send(Ok(item)).await.is_err() {
                            return;
                        }
                    }
                }
                Err(broadcast::error::RecvError::Lagged(missed)) => {
                    let notice = super::fleet_tail::notice(
                        format!("tail skipped {missed} batches because this client reads too slowly (delivery to vendors is not affected)"),
                        &own,
                    );
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
