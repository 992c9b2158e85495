//! `logdrain-gateway handoff --to <peer>`: retire a gateway without stranding
//! its backlog.
//!
//! Run on a stopped gateway's data dir (the queue's lock keeps a running
//! gateway, or a second handoff, out). For each route still holding lines it
//! reads the route's segments from its committed cursor, in queue order, and
//! ships them to the peer over `Drain.Ship` with the route's stored
//! credentials: one stream per (agent-server id, original boot), under a boot
//! id derived from that boot and the route with the signing key
//! ([`SigningKey::handoff_boot_id`]), with the original seqs, fields and
//! times, and a proof that a gateway of the fleet opened it. The derived boot
//! never meets a shim's boot, and a re-run numbers the same lines the same
//! way: each stream first asks the peer's mark (an empty batch) and sends
//! only what lies above it, so lines the peer already has are counted, not
//! sent again.
//!
//! A route's cursor moves past a segment only once the peer acked every line
//! of it that was sent (and every earlier segment of the route), with the
//! queue's own commit, which deletes a segment once every route is past it.
//! On any error what the peer acked is committed, the rest stays queued, and
//! the error says how to go on. Memory is bounded by the read size, the
//! window of unacked batches and the number of streams open at once.
//!
//! This module must not change what the queue stores other than through its
//! cursor commits, and must never print a secret.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::io::Write;
use std::sync::Arc;
use std::time::Duration;

use logdrain::client::{self, ClientTls, PemError};
use logdrain::v1::drain_client::DrainClient;
use logdrain::v1::{
    gateway_message, shim_message, Batch, CheckRequest, Handoff, Line, Open, ShimMessage,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;
use tonic::{Code, Status};

use crate::auth::{AuthError, SigningKey};
use crate::config::HandoffConfig;
use crate::queue::{Cursor, Queue, QueueError, QueuedSegment};
use crate::route::{RouteKey, Secrets};

/// Lines (about) read from the queue at a time.
const READ_LINES: usize = 4096;
/// Line data bytes (about) read from the queue at a time.
const READ_BYTES: usize = 4 * 1024 * 1024;
/// Line data bytes sent and not yet acked (with their segment's earlier
/// ones) before the handoff waits for acks.
const WINDOW_BYTES: u64 = 16 * 1024 * 1024;
/// Segments sent and not yet committed before the handoff waits for acks.
const WINDOW_SEGMENTS: usize = 4096;
/// Streams open to the peer at once (one per original boot of a route).
const MAX_STREAMS: usize = 16;
/// How long a stream whose boot the peer still holds (the stream of a run
/// that was killed, until the peer sees its connection gone) is retried.
const BOOT_HELD_PATIENCE: Duration = Duration::from_secs(120);
/// Connecting to the peer, and its answer to the first request.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum HandoffError {
    #[error(transparent)]
    Key(#[from] AuthError),
    #[error("{dir} holds no signing key file and LOGDRAIN_SIGNING_KEY is unset; set it to the retired gateway's signing key (the one its peers share)")]
    NoKey { dir: String },
    #[error("there is no queue in {dir}; point --data-dir (LOGDRAIN_DATA_DIR) at the retired gateway's data dir, or --queue at its queue")]
    NoQueue { dir: String },
    #[error("cannot open the queue in {dir}: {source}; nothing was handed off")]
    Open {
        dir: String,
        source: Box<QueueError>,
    },
    #[error("cannot read the queue in {dir}: {source}; what the peer acked is handed off, the rest stays queued: fix the cause and run handoff again")]
    Read {
        dir: String,
        source: Box<QueueError>,
    },
    #[error("the peer URL {url} is not usable: {reason}")]
    BadUrl { url: String, reason: String },
    #[error(transparent)]
    Pem(#[from] PemError),
    #[error("cannot reach the peer gateway at {url}: {reason}; nothing was handed off and the queue is unchanged: check --to and that the peer runs")]
    Connect { url: String, reason: String },
    #[error("the peer gateway at {url} refused the handoff: {reason}; nothing was handed off and the queue is unchanged")]
    Refused { url: String, reason: String },
    #[error("the peer gateway at {url} does not take handoffs (it predates them); upgrade it first. Nothing was handed off and the queue is unchanged")]
    PeerTooOld { url: String },
    #[error("the handoff of {route} to {url} stopped: {reason}. What the peer acked left this queue; the rest is still queued: fix the cause and run handoff again (lines the peer has are not sent twice)")]
    Stopped {
        url: String,
        route: String,
        reason: String,
    },
    #[error("lines are still queued in {dir}: {why}")]
    Incomplete { dir: String, why: String },
}

/// What the handoff did for one route.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RouteReport {
    /// Lines sent and acked by the peer.
    pub shipped: u64,
    /// Lines the peer already had (from an earlier run).
    pub already_there: u64,
    /// Lines found damaged while reading (left out, counted by the queue).
    pub damaged: u64,
}

/// Ships everything queued in the configured data dir to the peer and
/// prints what it did per route.
pub async fn run(config: &HandoffConfig, out: &mut dyn Write) -> Result<(), HandoffError> {
    let data_dir = &config.key.data_dir;
    // A key generated now would seal nothing in this queue and be no
    // peer's: the retired gateway's own key is needed.
    if config.key.signing_key.is_none() && !data_dir.join(crate::auth::KEY_FILE).is_file() {
        return Err(HandoffError::NoKey {
            dir: data_dir.display().to_string(),
        });
    }
    let key = SigningKey::load(config.key.signing_key.as_deref(), data_dir)?;
    let dir = config
        .queue
        .clone()
        .unwrap_or_else(|| data_dir.join("queue"));
    let shown = dir.display().to_string();
    if !dir.is_dir() {
        return Err(HandoffError::NoQueue { dir: shown });
    }
    let (queue, report) =
        Queue::open(&dir, key.seal_key()).map_err(|source| HandoffError::Open {
            dir: shown.clone(),
            source: Box::new(source),
        })?;
    let routes = queue.stored_routes().map_err(|source| HandoffError::Open {
        dir: shown.clone(),
        source: Box::new(source),
    })?;
    let mut agents: Vec<String> = routes.iter().map(|(r, _, _)| r.agent_id.clone()).collect();
    agents.sort();
    agents.dedup();
    let queued: u64 = agents.iter().map(|agent| queue.depth(agent).0).sum();
    let url = config.to.to_string();
    if queued == 0 && report.sealed_under_other_key == 0 {
        let _ = writeln!(
            out,
            "logdrain-gateway: the queue in {shown} holds no line to hand off"
        );
        return Ok(());
    }
    let mut peer = Peer::connect(config).await?;
    if let Some(agent) = agents.first() {
        peer.probe(agent, &key).await?;
    }
    let _ = writeln!(
        out,
        "logdrain-gateway: handing off {queued} queued lines (agents: {}) from {shown} to {url}",
        agents.len()
    );
    let mut reports: BTreeMap<RouteKey, RouteReport> = BTreeMap::new();
    let mut outcome = Ok(());
    for (route, secrets, first_seen_ms) in routes {
        let mut handoff = RouteHandoff::new(&queue, &key, &route, &secrets, first_seen_ms);
        let result = handoff.run(&mut peer).await;
        reports.insert(route.clone(), handoff.report);
        if let Err(reason) = result {
            outcome = Err(match reason {
                Failure::Queue(source) => HandoffError::Read {
                    dir: shown.clone(),
                    source: Box::new(source),
                },
                Failure::Peer(reason) => HandoffError::Stopped {
                    url: url.clone(),
                    route: route.to_string(),
                    reason,
                },
            });
            break;
        }
    }
    // Cursors become durable here; a crash before it only resends.
    let flushed = queue.flush().await;
    for drop in queue.take_damage_drops() {
        reports.entry(drop.route).or_default().damaged += drop.lines;
    }
    for (route, report) in &reports {
        let _ = writeln!(
            out,
            "logdrain-gateway: handoff {route}: {} lines shipped, {} already at the peer, {} damaged (left out)",
            report.shipped, report.already_there, report.damaged
        );
    }
    outcome?;
    flushed.map_err(|source| HandoffError::Read {
        dir: shown.clone(),
        source: Box::new(source),
    })?;
    let left: u64 = agents.iter().map(|agent| queue.depth(agent).0).sum();
    if report.sealed_under_other_key > 0 {
        return Err(HandoffError::Incomplete {
            dir: shown,
            why: format!(
                "{} routes' credentials are sealed under another signing key, so their lines cannot be delivered from here ({left} lines of the other routes are still queued too); they are kept: run handoff with LOGDRAIN_SIGNING_KEY set to the key they were sealed under",
                report.sealed_under_other_key
            ),
        });
    }
    if left > 0 {
        return Err(HandoffError::Incomplete {
            dir: shown,
            why: format!(
                "{left} lines that no route could read (segments damaged past their last readable line, counted as damaged, or tagged with a route whose record is gone); they are kept"
            ),
        });
    }
    let _ = writeln!(
        out,
        "logdrain-gateway: handoff complete: every queued line is at {url}; this data dir holds no backlog"
    );
    Ok(())
}

/// Why a route's handoff stopped.
enum Failure {
    Queue(QueueError),
    Peer(String),
}

/// The connection to the peer.
struct Peer {
    url: String,
    /// `https://` without a client certificate.
    tls_without_identity: bool,
    client: DrainClient<Channel>,
    /// Stream events from every open stream, tagged with its number.
    events_tx: mpsc::UnboundedSender<(usize, Event)>,
    events: mpsc::UnboundedReceiver<(usize, Event)>,
    next_stream: usize,
}

enum Event {
    Ack(u64),
    End(Result<(), Status>),
}

impl Peer {
    async fn connect(config: &HandoffConfig) -> Result<Peer, HandoffError> {
        let url = config.to.to_string();
        let bad_url = |reason: String| HandoffError::BadUrl {
            url: url.clone(),
            reason,
        };
        let uri: tonic::transport::Uri = url.parse().map_err(|e| bad_url(format!("{e}")))?;
        let tls = ClientTls::load(
            config.gateway_ca_file.as_deref(),
            config.client_cert.as_deref(),
            config.client_key.as_deref(),
        )?;
        let channel = client::endpoint(&uri, &tls)
            .map_err(|e| bad_url(logdrain::error_chain(&e)))?
            .connect()
            .await
            .map_err(|e| HandoffError::Connect {
                url: url.clone(),
                reason: client::connect_failure(&uri, &e),
            })?;
        let client = DrainClient::new(channel)
            .max_decoding_message_size(logdrain::MAX_MESSAGE_BYTES)
            .max_encoding_message_size(logdrain::MAX_MESSAGE_BYTES);
        let (events_tx, events) = mpsc::unbounded_channel();
        Ok(Peer {
            tls_without_identity: config.to.scheme() == "https" && config.client_cert.is_none(),
            url,
            client,
            events_tx,
            events,
            next_stream: 0,
        })
    }

    /// Asks the peer, before anything is sent, whether it takes this
    /// gateway's tokens and handoff streams.
    async fn probe(&mut self, agent_id: &str, key: &SigningKey) -> Result<(), HandoffError> {
        let request = CheckRequest {
            token: key.token(agent_id),
            agent_id: agent_id.to_string(),
            agent_server_id: "logdrain-handoff".to_string(),
            secrets: HashMap::new(),
            protocol_version: logdrain::PROTOCOL_VERSION,
        };
        let reply = tokio::time::timeout(CONNECT_TIMEOUT, self.client.check(request))
            .await
            .map_err(|_| HandoffError::Connect {
                url: self.url.clone(),
                reason: format!("no answer within {CONNECT_TIMEOUT:?}"),
            })?;
        match reply {
            Ok(reply) if reply.get_ref().accepts_handoff => Ok(()),
            Ok(_) => Err(HandoffError::PeerTooOld {
                url: self.url.clone(),
            }),
            Err(status) if status.code() == Code::Unauthenticated => Err(HandoffError::Refused {
                url: self.url.clone(),
                reason: format!(
                    "it does not accept this gateway's tokens ({}); the two gateways must share LOGDRAIN_SIGNING_KEY",
                    status.message()
                ),
            }),
            Err(status) if matches!(status.code(), Code::Unavailable) => {
                Err(HandoffError::Connect {
                    url: self.url.clone(),
                    reason: self.with_tls_hint(&status),
                })
            }
            Err(status) => Err(HandoffError::Refused {
                url: self.url.clone(),
                reason: self.with_tls_hint(&status),
            }),
        }
    }

    /// The status, and the fix when it may be a refused (missing) client
    /// certificate: the peer's alert is often lost with the connection.
    fn with_tls_hint(&self, status: &Status) -> String {
        let detail = client::status_detail(status);
        let dropped = matches!(
            status.code(),
            Code::Cancelled | Code::Unknown | Code::Unavailable
        );
        let hint = match client::tls_hint(&detail) {
            "" if self.tls_without_identity && dropped => {
                "; if the peer requires client certificates (mutual TLS), pass --client-cert and --client-key"
            }
            hint => hint,
        };
        format!("{detail}{hint}")
    }
}

/// One stream to the peer: one original boot of one route.
struct PeerStream {
    /// `None` once closed (the peer then acks what it holds and ends).
    tx: Option<mpsc::Sender<ShimMessage>>,
    /// The peer's mark when the stream opened: lines at or below it are
    /// already there.
    mark: u64,
    /// Highest ack received.
    acked: u64,
    /// Highest seq sent.
    sent: u64,
    ended: bool,
    /// Last use, for closing the least recently used stream.
    used: u64,
}

/// A segment sent (or found already there) and not yet committed.
struct Pending {
    /// The stream and the seq it must ack; `None` when nothing was sent.
    needs: Option<(usize, u64)>,
    /// Where the route's cursor may go once this and every earlier segment
    /// is acked: the segment's last line.
    cursor: Cursor,
    /// Lines and line data bytes sent.
    lines: u64,
    bytes: u64,
}

/// The handoff of one route.
struct RouteHandoff<'a> {
    queue: &'a Queue,
    key: &'a SigningKey,
    route: &'a RouteKey,
    secrets: &'a Secrets,
    first_seen_ms: u64,
    streams: HashMap<usize, PeerStream>,
    /// (agent-server id, boot id) → open stream.
    by_boot: HashMap<(Arc<str>, Arc<str>), usize>,
    pending: VecDeque<Pending>,
    in_flight_bytes: u64,
    clock: u64,
    report: RouteReport,
}

impl<'a> RouteHandoff<'a> {
    fn new(
        queue: &'a Queue,
        key: &'a SigningKey,
        route: &'a RouteKey,
        secrets: &'a Secrets,
        first_seen_ms: u64,
    ) -> Self {
        RouteHandoff {
            queue,
            key,
            route,
            secrets,
            first_seen_ms,
            streams: HashMap::new(),
            by_boot: HashMap::new(),
            pending: VecDeque::new(),
            in_flight_bytes: 0,
            clock: 0,
            report: RouteReport::default(),
        }
    }

    async fn run(&mut self, peer: &mut Peer) -> Result<(), Failure> {
        let result = self.ship(peer).await;
        if result.is_err() {
            self.settle(peer);
        }
        result
    }

    async fn ship(&mut self, peer: &mut Peer) -> Result<(), Failure> {
        let mut after = self.queue.committed(self.route).map_err(Failure::Queue)?;
        loop {
            let segments = self
                .queue
                .read_segments(self.route, after, READ_LINES, READ_BYTES)
                .map_err(Failure::Queue)?;
            let Some(last) = segments.last() else {
                break;
            };
            after = Some(Cursor {
                segment: last.segment,
                index: last.last_index,
            });
            for segment in segments {
                self.send_segment(peer, segment).await?;
            }
        }
        // Close every stream; each acks what it holds, then ends.
        for stream in self.streams.values_mut() {
            stream.tx = None;
        }
        while self.streams.values().any(|s| !s.ended) {
            self.next_event(peer).await?;
        }
        self.commit_acked()?;
        if let Some(left) = self.pending.front() {
            return Err(Failure::Peer(format!(
                "the peer ended its streams without acking segment {}",
                left.cursor.segment
            )));
        }
        Ok(())
    }

    async fn send_segment(
        &mut self,
        peer: &mut Peer,
        segment: QueuedSegment,
    ) -> Result<(), Failure> {
        self.ready_events(peer)?;
        while self.in_flight_bytes >= WINDOW_BYTES || self.pending.len() >= WINDOW_SEGMENTS {
            self.next_event(peer).await?;
        }
        let cursor = Cursor {
            segment: segment.segment,
            index: segment.last_index,
        };
        if segment.lines.is_empty() {
            self.pending.push_back(Pending {
                needs: None,
                cursor,
                lines: 0,
                bytes: 0,
            });
            return self.commit_acked();
        }
        let id = self.stream_for(peer, &segment).await?;
        let mark = self.streams.get(&id).map_or(0, |s| s.mark);
        let mut needs = None;
        let (mut sent, mut bytes) = (0, 0);
        for run in runs(segment.first_seq, segment.lines) {
            let (first_seq, lines) = run;
            let (there, fresh): (Vec<_>, Vec<_>) = lines
                .into_iter()
                .enumerate()
                .partition(|(i, _)| first_seq + *i as u64 <= mark);
            self.report.already_there += there.len() as u64;
            let Some(&(skip, _)) = fresh.first() else {
                continue;
            };
            let first = first_seq + skip as u64;
            let lines: Vec<Line> = fresh.into_iter().map(|(_, line)| line).collect();
            let last = first + lines.len() as u64 - 1;
            sent += lines.len() as u64;
            bytes += lines.iter().map(|l| l.data.len() as u64).sum::<u64>();
            let batch = ShimMessage {
                kind: Some(shim_message::Kind::Batch(Batch {
                    first_seq: first,
                    lines,
                    ..Batch::default()
                })),
            };
            let stream = self.streams.get_mut(&id).ok_or_else(|| lost_stream(id))?;
            let Some(tx) = &stream.tx else {
                return Err(lost_stream(id));
            };
            if tx.send(batch).await.is_err() {
                // The stream ended; its event says why.
                while !self.streams.get(&id).is_none_or(|s| s.ended) {
                    self.next_event(peer).await?;
                }
                return Err(lost_stream(id));
            }
            stream.sent = last;
            needs = Some((id, last));
        }
        self.in_flight_bytes += bytes;
        self.pending.push_back(Pending {
            needs,
            cursor,
            lines: sent,
            bytes,
        });
        self.commit_acked()
    }

    /// The open stream for the segment's boot, opening one (and closing
    /// the least recently used one beyond [`MAX_STREAMS`]) if needed.
    async fn stream_for(
        &mut self,
        peer: &mut Peer,
        segment: &QueuedSegment,
    ) -> Result<usize, Failure> {
        self.clock += 1;
        let boot = (
            Arc::clone(&segment.agent_server_id),
            Arc::clone(&segment.boot_id),
        );
        if let Some(&id) = self.by_boot.get(&boot) {
            if let Some(stream) = self.streams.get_mut(&id) {
                stream.used = self.clock;
                return Ok(id);
            }
        }
        let open: Vec<(usize, u64)> = self
            .streams
            .iter()
            .filter(|(_, s)| s.tx.is_some())
            .map(|(id, s)| (*id, s.used))
            .collect();
        if open.len() >= MAX_STREAMS {
            if let Some(&(oldest, _)) = open.iter().min_by_key(|(_, used)| *used) {
                self.close(peer, oldest).await?;
            }
        }
        let id = self
            .open(peer, &segment.agent_server_id, &segment.boot_id)
            .await?;
        self.by_boot.insert(boot, id);
        Ok(id)
    }

    /// Closes a stream and waits for its end (its boot is then free on the
    /// peer).
    async fn close(&mut self, peer: &mut Peer, id: usize) -> Result<(), Failure> {
        if let Some(stream) = self.streams.get_mut(&id) {
            stream.tx = None;
        }
        self.by_boot.retain(|_, open| *open != id);
        while !self.streams.get(&id).is_none_or(|s| s.ended) {
            self.next_event(peer).await?;
        }
        Ok(())
    }

    async fn open(&mut self, peer: &mut Peer, server: &str, boot: &str) -> Result<usize, Failure> {
        let agent = &self.route.agent_id;
        let derived = self
            .key
            .handoff_boot_id(agent, server, boot, &self.route.to_string());
        let open = Open {
            token: self.key.token(agent),
            agent_id: agent.clone(),
            agent_server_id: server.to_string(),
            boot_id: derived.clone(),
            secrets: self.secrets.0.clone().into_iter().collect(),
            protocol_version: logdrain::PROTOCOL_VERSION,
            handoff: Some(Handoff {
                proof: self.key.handoff_proof(agent, server, &derived),
                first_seen_ms: self.first_seen_ms,
            }),
        };
        let mut wait = Duration::from_millis(100);
        let started = tokio::time::Instant::now();
        let (tx, mut inbound, mark) = loop {
            let (tx, rx) = mpsc::channel(4);
            let first = [
                ShimMessage {
                    kind: Some(shim_message::Kind::Open(open.clone())),
                },
                // Answered with the peer's mark for this boot.
                ShimMessage {
                    kind: Some(shim_message::Kind::Batch(Batch {
                        first_seq: 1,
                        ..Batch::default()
                    })),
                },
            ];
            for message in first {
                // Capacity 4: these cannot wait.
                let _ = tx.try_send(message);
            }
            let answer = match peer.client.ship(ReceiverStream::new(rx)).await {
                Ok(response) => {
                    let mut inbound = response.into_inner();
                    match inbound.message().await {
                        Ok(Some(message)) => match message.kind {
                            Some(gateway_message::Kind::Ack(ack)) => Ok((inbound, ack.acked_seq)),
                            None => Err(Status::internal("the peer answered without an ack")),
                        },
                        Ok(None) => Err(Status::internal(
                            "the peer ended the stream before answering",
                        )),
                        Err(status) => Err(status),
                    }
                }
                Err(status) => Err(status),
            };
            match answer {
                Ok((inbound, mark)) => break (tx, inbound, mark),
                // A killed run's stream of this boot, not yet seen gone.
                Err(status)
                    if status.code() == Code::Aborted && started.elapsed() < BOOT_HELD_PATIENCE =>
                {
                    tracing::info!(route = %self.route, "the peer still holds this boot's stream of an earlier run; retrying");
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(Duration::from_secs(5));
                }
                Err(status) => {
                    return Err(Failure::Peer(format!(
                        "opening a stream of agent-server id {server:?} failed: {}",
                        client::status_detail(&status)
                    )))
                }
            }
        };
        let id = peer.next_stream;
        peer.next_stream += 1;
        let events = peer.events_tx.clone();
        tokio::spawn(async move {
            loop {
                let event = match inbound.message().await {
                    Ok(Some(message)) => match message.kind {
                        Some(gateway_message::Kind::Ack(ack)) => Event::Ack(ack.acked_seq),
                        None => continue,
                    },
                    Ok(None) => Event::End(Ok(())),
                    Err(status) => Event::End(Err(status)),
                };
                let end = matches!(event, Event::End(_));
                if events.send((id, event)).is_err() || end {
                    return;
                }
            }
        });
        self.streams.insert(
            id,
            PeerStream {
                tx: Some(tx),
                mark,
                acked: mark,
                sent: mark,
                ended: false,
                used: self.clock,
            },
        );
        Ok(id)
    }

    /// Waits for the next ack or end of any stream and commits what became
    /// acked.
    async fn next_event(&mut self, peer: &mut Peer) -> Result<(), Failure> {
        let Some((id, event)) = peer.events.recv().await else {
            return Err(Failure::Peer(
                "the connection to the peer closed".to_string(),
            ));
        };
        self.apply(id, event)
    }

    /// Applies the acks and ends that have arrived, without waiting.
    fn ready_events(&mut self, peer: &mut Peer) -> Result<(), Failure> {
        while let Ok((id, event)) = peer.events.try_recv() {
            self.apply(id, event)?;
        }
        Ok(())
    }

    /// After a failure: commits what the peer acked before it, so a re-run
    /// does not read it again. Errors of other streams add nothing.
    fn settle(&mut self, peer: &mut Peer) {
        while let Ok((id, event)) = peer.events.try_recv() {
            if let Event::Ack(seq) = event {
                if let Some(stream) = self.streams.get_mut(&id) {
                    stream.acked = stream.acked.max(seq);
                }
            }
        }
        if let Err(Failure::Queue(error)) = self.commit_acked() {
            tracing::warn!(route = %self.route, %error, "cannot record what the peer acked; a re-run finds those lines at the peer");
        }
    }

    fn apply(&mut self, id: usize, event: Event) -> Result<(), Failure> {
        let Some(stream) = self.streams.get_mut(&id) else {
            return Ok(());
        };
        match event {
            Event::Ack(seq) => stream.acked = stream.acked.max(seq),
            Event::End(result) => {
                stream.ended = true;
                stream.tx = None;
                let unacked = stream.acked < stream.sent;
                self.commit_acked()?;
                match result {
                    Err(status) => return Err(Failure::Peer(client::status_detail(&status))),
                    Ok(()) if unacked => {
                        return Err(Failure::Peer(
                            "the peer ended a stream before acking every line sent".to_string(),
                        ))
                    }
                    Ok(()) => {}
                }
            }
        }
        self.commit_acked()
    }

    /// Moves the route's cursor past every leading segment the peer acked.
    fn commit_acked(&mut self) -> Result<(), Failure> {
        let mut through = None;
        while let Some(front) = self.pending.front() {
            let acked = match front.needs {
                None => true,
                Some((id, seq)) => self.streams.get(&id).is_some_and(|s| s.acked >= seq),
            };
            if !acked {
                break;
            }
            if let Some(done) = self.pending.pop_front() {
                self.in_flight_bytes = self.in_flight_bytes.saturating_sub(done.bytes);
                self.report.shipped += done.lines;
                through = Some(done.cursor);
            }
        }
        if let Some(cursor) = through {
            self.queue
                .commit(self.route, cursor)
                .map_err(Failure::Queue)?;
        }
        Ok(())
    }
}

/// Splits a segment's lines (with their index) into runs of consecutive
/// seqs: damaged lines leave gaps, and a batch's seqs are consecutive.
fn runs(first_seq: u64, lines: Vec<(u32, Line)>) -> Vec<(u64, Vec<Line>)> {
    let mut out: Vec<(u64, Vec<Line>)> = Vec::new();
    let mut next = None;
    for (index, line) in lines {
        let seq = first_seq + u64::from(index);
        match out.last_mut() {
            Some((_, run)) if next == Some(seq) => run.push(line),
            _ => out.push((seq, vec![line])),
        }
        next = Some(seq + 1);
    }
    out
}

fn lost_stream(id: usize) -> Failure {
    Failure::Peer(format!("stream {id} to the peer ended unexpectedly"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(n: u8) -> Line {
        Line {
            data: bytes::Bytes::from(vec![n]),
            ..Line::default()
        }
    }

    #[test]
    fn damaged_lines_split_a_segment_into_runs_of_consecutive_seqs() {
        let lines = vec![
            (0, line(0)),
            (1, line(1)),
            (3, line(3)),
            (5, line(5)),
            (6, line(6)),
        ];
        let runs: Vec<(u64, usize)> = runs(10, lines)
            .into_iter()
            .map(|(first, lines)| (first, lines.len()))
            .collect();
        assert_eq!(runs, [(10, 2), (13, 1), (15, 2)]);
    }
}
