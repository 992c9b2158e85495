//! The gRPC stream to the gateway: opens `Drain.Ship`, sends `Open` then
//! batches, applies acks to the buffer, and reconnects (with backoff and
//! failover between gateways) whenever anything goes wrong.
//!
//! Which gateway: every round of attempts resolves the `--gateway` names
//! again (each address is a gateway; a name that fails keeps its last
//! addresses) and ranks them for this shim's agent-server id with
//! [`logdrain::fleet::rank`], so a fleet's shims spread evenly. A round
//! tries them best first, then backs off. A stream that delivered and then
//! broke starts a new round, first choice first. A shim streaming to
//! another gateway checks every `--rebalance-after` to twice that (at
//! random) whether its first choice answers again, and moves back at a
//! moment when no line is in flight, so nothing is sent twice and a gateway
//! that returns refills gradually, without a stampede.
//!
//! Per connection ("session"):
//! 1. connect, send `Open` (token, ids, boot id, secrets, protocol version);
//! 2. resend everything unacked from the oldest line, then new lines as they
//!    come, in batches of consecutive seqs, with at most the in-flight
//!    window ([`in_flight_window`]) of line cost sent and not acked (the
//!    buffer never drops those lines, so the window keeps room for new
//!    ones);
//! 3. on each `Ack`, drop the acked lines; the first ack after drops
//!    injects the drop notice, the first ack after failures resets the
//!    backoff.
//!
//! A session ends on an error status, a closed stream, an ack for a line
//! never sent, or no ack for [`ACK_TIMEOUT`] while lines are outstanding;
//! its unacked lines then go back to the buffer's unsent lines.
//! [`Shipper::run`] returns only once the capture is over (`closing`) and
//! every line is acked; the caller bounds that with the drain timeout.
//!
//! An ack for a line never sent means the gateway holds another writer's
//! lines under this boot id, so its acks for the boot cannot be believed;
//! `ABORTED` at the opening means another stream holds the boot (the
//! shim's own old stream, not yet seen dead, or another client). Either
//! way the shim starts a new boot id and resends every line it holds,
//! numbered from 1 ([`Shipper::start_new_boot`]). Nothing is lost and
//! nothing waits; what the gateway had stored of them arrives twice. The
//! boot id is never printed.
//!
//! A refusal no retry can heal (token, ids, protocol version:
//! [`StreamError::is_permanent`]) from every gateway is said once; the
//! shim then tries again only every [`REFUSED_RETRY`], and once closing
//! stops at once ([`Shipped::Refused`]).
//!
//! It must never block the capture: it only takes the buffer's lock for
//! short, non-blocking operations. It never prints the token or secrets.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use logdrain::backoff::Backoff;
use logdrain::client::{self, code_name, status_detail, tls_hint, ClientTls, TlsError};
use logdrain::error_chain;
use logdrain::fleet::{Resolved, Targets};
use logdrain::v1::{gateway_message, shim_message, GatewayMessage, Open, ShimMessage};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;
use tonic::codegen::http::uri::PathAndQuery;
use tonic::transport::{Endpoint, Uri};
use tonic::{Code, GrpcMethod, Request, Status, Streaming};

use crate::buffer::{AckAheadOfSent, SharedBuffer};
use crate::diag::{self, diag};
use crate::lifecycle;
use crate::redact::Redactor;
use crate::wire::{self, Encoded, ShipCodec};

/// Upper bound of a batch's line cost; a batch holds at least one line, and
/// lines are at most 4 MiB, so every message stays far below
/// `logdrain::MAX_MESSAGE_BYTES` (16 MiB).
pub const BATCH_MAX_BYTES: usize = 1024 * 1024;
/// Batches queued for the gRPC stream beyond the one being written.
const OUTBOUND_BATCHES: usize = 4;
/// Full batches sent and not acked, at most: enough to cover the outbound
/// queue, the gateway's pipeline of batches awaiting their group commit (8)
/// and the bytes on the wire, so acks never starve the stream.
pub const IN_FLIGHT_BATCHES: usize = 16;
/// Largest in-flight window: line cost sent on a connection and not acked
/// yet (16 MiB).
pub const IN_FLIGHT_MAX_BYTES: usize = IN_FLIGHT_BATCHES * BATCH_MAX_BYTES;

/// The in-flight window for a buffer of `buffer_bytes`: half of it, at most
/// [`IN_FLIGHT_MAX_BYTES`]. Lines in flight are never dropped, so this
/// leaves at least half the buffer to new lines and the buffer never
/// exceeds its bound (but for one line larger than the rest of it).
pub fn in_flight_window(buffer_bytes: usize) -> usize {
    (buffer_bytes / 2).min(IN_FLIGHT_MAX_BYTES)
}

/// Connecting and opening a stream must finish within this.
pub const CONNECT_TIMEOUT: Duration = client::CONNECT_TIMEOUT;
/// With lines outstanding, a gateway silent for this long is given up on.
pub const ACK_TIMEOUT: Duration = Duration::from_secs(30);
/// After the last ack, how long to wait for the gateway to end the stream.
const CLOSE_GRACE: Duration = Duration::from_secs(1);
/// Reconnect backoff floor and cap.
pub const BACKOFF_MIN: Duration = Duration::from_millis(100);
pub const BACKOFF_MAX: Duration = Duration::from_secs(10);
/// Between attempts while every gateway refuses the shim for good (a
/// gateway may be redeployed with the right key or version meanwhile).
pub const REFUSED_RETRY: Duration = Duration::from_secs(300);

/// Everything a [`Shipper`] needs; built by `run()` from the settings.
#[derive(Clone)]
pub struct StreamConfig {
    /// Gateway URLs; their names may resolve to several gateways.
    pub gateways: Vec<Uri>,
    /// Extra CA certificates and the client identity for `https://`
    /// gateways.
    pub tls: ClientTls,
    /// The `Open` sent first on every stream (holds the token and secrets:
    /// never print it).
    pub open: Open,
    pub batch_lines: usize,
    pub batch_max_bytes: usize,
    pub batch_linger: Duration,
    /// On a gateway other than the first-ranked, how often (to twice as
    /// often, at random) to check whether that one is back; zero: never.
    pub rebalance_after: Duration,
    pub backoff_min: Duration,
    pub backoff_max: Duration,
    pub ack_timeout: Duration,
    /// The buffer's bound, quoted in the drop notice.
    pub buffer_bytes: usize,
    /// Its masked counts travel in every batch.
    pub redactor: Arc<Redactor>,
}

/// Why a session ended (or could not start).
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error("cannot connect: {}{}", error_chain(.0), tls_hint(&error_chain(.0)))]
    Connect(tonic::transport::Error),
    #[error("no answer to the stream's opening within {0:?}")]
    OpenTimeout(Duration),
    #[error("{}", describe_status(.0))]
    Status(Status),
    /// The stream ended before the gateway answered its opening; `hint`
    /// is the likely fix when the status alone cannot tell.
    #[error("{}{hint}", describe_status(.status))]
    Refused { status: Status, hint: &'static str },
    #[error("the gateway closed the stream")]
    Closed,
    #[error(transparent)]
    AckAheadOfSent(#[from] AckAheadOfSent),
    #[error("no ack for {0:?} although lines are outstanding")]
    AckTimeout(Duration),
    /// Not a failure: the first-ranked gateway answers again and no line
    /// is in flight, so the stream moves back to it.
    #[error("moving to the first-ranked gateway, which answers again")]
    Rebalance,
}

impl StreamError {
    /// A refusal of the stream's opening that no retry can heal: the token,
    /// an id (or another opening field) or the protocol version.
    pub fn is_permanent(&self) -> bool {
        matches!(self, StreamError::Refused { status, .. } if matches!(
            status.code(),
            Code::Unauthenticated | Code::InvalidArgument | Code::FailedPrecondition
        ))
    }

    /// What makes two failures "the same" for logging: the status code for
    /// a gateway status (its message may carry changing figures), the whole
    /// text otherwise.
    fn repeat_key(&self) -> String {
        match self {
            StreamError::Status(status) => format!("status {}", code_name(status.code())),
            other => other.to_string(),
        }
    }
}

/// One resolved gateway, for one round of attempts.
struct Gateway {
    /// How the shim's messages name it (URL, and its address).
    shown: String,
    /// Its name in the fleet (`ip:port`), what the ranking hashes.
    name: String,
    addr: std::net::SocketAddr,
    endpoint: Endpoint,
    https: bool,
}

/// How [`Shipper::run`] ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Shipped {
    /// Every line was acked (or no gateway is configured).
    Drained,
    /// Closing while every gateway refuses the shim for good: the lines
    /// left are not delivered.
    Refused,
}

/// Ships the buffer to the gateways; see the module docs.
pub struct Shipper {
    targets: Targets,
    tls: ClientTls,
    open: Open,
    batch: BatchLimits,
    ack_timeout: Duration,
    rebalance_after: Duration,
    buffer_bytes: usize,
    buffer: Arc<SharedBuffer>,
    redactor: Arc<Redactor>,
    closing_rx: watch::Receiver<bool>,
    closing: bool,
    backoff: Backoff,
    rng: StdRng,
    /// Consecutive failed sessions; cleared (with a message) by an ack.
    failures: u64,
    /// True from a round in which every gateway refused for good until a
    /// stream opens.
    refused: watch::Sender<bool>,
    /// The last failure logged per gateway name, to log repeats sparsely
    /// (only names of the latest round are kept).
    last_logged: HashMap<String, String>,
    /// The resolution errors logged last, to log a change only.
    last_resolve_errors: String,
    /// An ack arrived in the current session.
    progressed: bool,
}

#[derive(Clone, Copy, Debug)]
struct BatchLimits {
    lines: usize,
    bytes: usize,
    linger: Duration,
}

impl Shipper {
    /// Prepares the endpoints (TLS settings are checked here).
    pub fn new(
        config: StreamConfig,
        buffer: Arc<SharedBuffer>,
        closing: watch::Receiver<bool>,
    ) -> Result<Self, StreamError> {
        for url in &config.gateways {
            client::endpoint(url, &config.tls)?;
        }
        Ok(Self {
            targets: Targets::new(config.gateways),
            tls: config.tls,
            open: config.open,
            batch: BatchLimits {
                lines: config.batch_lines.max(1),
                bytes: config.batch_max_bytes,
                linger: config.batch_linger,
            },
            ack_timeout: config.ack_timeout,
            rebalance_after: config.rebalance_after,
            buffer_bytes: config.buffer_bytes,
            buffer,
            redactor: config.redactor,
            closing_rx: closing,
            closing: false,
            backoff: Backoff::new(config.backoff_min, config.backoff_max),
            rng: StdRng::from_os_rng(),
            failures: 0,
            refused: watch::Sender::new(false),
            last_logged: HashMap::new(),
            last_resolve_errors: String::new(),
            progressed: false,
        })
    }

    /// Whether every gateway refuses the shim for good, as it changes.
    pub fn refused(&self) -> watch::Receiver<bool> {
        self.refused.subscribe()
    }

    /// Ships until closing and fully acked, or closing while refused for
    /// good; never returns otherwise.
    pub async fn run(mut self) -> Shipped {
        if self.targets.urls().is_empty() {
            diag!("no gateway configured; lines are not shipped");
            return Shipped::Drained;
        }
        'rounds: loop {
            if self.drained() {
                return Shipped::Drained;
            }
            let gateways = self.ranked_gateways().await;
            if gateways.is_empty() {
                // Nothing resolved yet (said by `ranked_gateways`).
                self.failures += 1;
                let delay = self.backoff.next_delay(&mut self.rng);
                self.sleep_unless_drained(delay).await;
                continue;
            }
            let mut refusals = 0;
            for (rank, gateway) in gateways.iter().enumerate() {
                self.progressed = false;
                let home = (rank > 0).then(|| &gateways[0]);
                let err = match self.session(gateway, home).await {
                    Ok(()) => return Shipped::Drained,
                    Err(err) => err,
                };
                // Whether the gateway stored what was in flight is unknown:
                // it is resent on the next connection, and evictable until
                // then.
                self.buffer.lock().requeue_in_flight();
                if needs_new_boot(&err) {
                    self.start_new_boot();
                }
                if self.drained() {
                    return Shipped::Drained;
                }
                if matches!(err, StreamError::Rebalance) {
                    diag!(
                        "gateway {}: moving back to {}, this shim's first-ranked gateway, which answers again",
                        gateway.shown,
                        gateways[0].shown
                    );
                    continue 'rounds;
                }
                self.failures += 1;
                refusals += usize::from(err.is_permanent());
                let failure = self.redacted(format!("gateway {}: {err}", gateway.shown));
                let kind = err.repeat_key();
                if self.progressed {
                    self.log_failure(
                        &gateway.name,
                        failure,
                        kind,
                        format_args!("reconnecting, first-ranked gateway first"),
                    );
                    continue 'rounds;
                }
                if let Some(next) = gateways.get(rank + 1) {
                    self.log_failure(
                        &gateway.name,
                        failure,
                        kind,
                        format_args!("trying {} next", next.shown),
                    );
                    continue;
                }
                if refusals == gateways.len() {
                    self.refused.send_replace(true);
                    self.log_refusal(&gateway.name, failure, kind);
                    if self.closing() || self.sleep_unless_closing(REFUSED_RETRY).await {
                        return Shipped::Refused;
                    }
                    continue 'rounds;
                }
                let delay = self.backoff.next_delay(&mut self.rng);
                self.log_failure(
                    &gateway.name,
                    failure,
                    kind,
                    format_args!("retrying in {delay:.1?}"),
                );
                self.sleep_unless_drained(delay).await;
            }
        }
    }

    /// Resolves the gateways again and ranks them for this shim's
    /// agent-server id, best first. Resolution errors are said when they
    /// change; a name that fails keeps its last good addresses.
    async fn ranked_gateways(&mut self) -> Vec<Gateway> {
        let (resolved, errors) = self.targets.resolve().await;
        let errors: Vec<String> = errors.iter().map(ToString::to_string).collect();
        let errors = errors.join("; ");
        if errors != self.last_resolve_errors {
            if errors.is_empty() {
                diag!("gateway names resolve again");
            } else if resolved.is_empty() {
                diag!("{errors}; no gateway address known yet, retrying");
            } else {
                diag!("{errors}; going on with the addresses resolved before");
            }
            self.last_resolve_errors = errors;
        }
        let names: Vec<String> = resolved.iter().map(Resolved::name).collect();
        self.last_logged.retain(|name, _| names.contains(name));
        let mut gateways = Vec::with_capacity(resolved.len());
        for index in logdrain::fleet::rank(&self.open.agent_server_id, &names) {
            let gateway = &resolved[index];
            // Checked for every URL in `new`.
            let Ok(endpoint) = client::endpoint(&gateway.url, &self.tls) else {
                continue;
            };
            gateways.push(Gateway {
                shown: gateway.describe(),
                name: names[index].clone(),
                addr: gateway.addr,
                endpoint,
                https: gateway.url.scheme_str() == Some("https"),
            });
        }
        gateways
    }

    /// Logs a refusal for good once per gateway, however often it repeats.
    fn log_refusal(&mut self, gateway: &str, failure: String, kind: String) {
        if self.last_logged.get(gateway) != Some(&kind) {
            let code = crate::EXIT_REFUSED;
            let next_step = if self.closing() {
                format!("the shim stops now (exit status {code} if the agent exited 0)")
            } else {
                format!(
                    "the agent keeps running and its lines wait in the buffer, the shim tries \
                     again every {REFUSED_RETRY:?}, and it exits with status {code} when the \
                     agent exits with 0"
                )
            };
            diag!("{failure}; retrying cannot help: {next_step}");
        }
        self.last_logged.insert(gateway.to_string(), kind);
    }

    /// `text` without the token, should a gateway's message echo it (a
    /// token too short to be one is left, or every message would be
    /// garbled).
    fn redacted(&self, text: String) -> String {
        if self.open.token.len() < crate::redact::MIN_SECRET_BYTES {
            return text;
        }
        text.replace(&self.open.token, "<token>")
    }

    /// Logs a failure when it differs from the last one logged, and repeats
    /// only after 2, 4, 8, ... consecutive failures, so an outage of hours
    /// costs a few lines on stderr, not thousands. Failures are compared by
    /// `kind` ([`StreamError::repeat_key`]), so a status whose message
    /// changes each time (free bytes on a full disk) is still a repeat.
    fn log_failure(
        &mut self,
        gateway: &str,
        failure: String,
        kind: String,
        next_step: std::fmt::Arguments<'_>,
    ) {
        let repeat = self.last_logged.get(gateway) == Some(&kind);
        if !repeat {
            diag!("{failure}; {next_step}");
        } else if self.failures.is_power_of_two() {
            diag!(
                "{failure}; {next_step} ({} failed attempts in a row)",
                self.failures
            );
        }
        self.last_logged.insert(gateway.to_string(), kind);
    }

    /// Goes on under a new boot id, every held line numbered from 1 again.
    fn start_new_boot(&mut self) {
        self.open.boot_id = crate::new_boot_id();
        let resent = self.buffer.lock().restart_seqs();
        diag!("going on under a new boot id, resending the {resent} lines not acked yet");
    }

    /// True once the capture is over and every line was acked (or dropped).
    fn drained(&mut self) -> bool {
        self.closing() && self.buffer.lock().is_empty()
    }

    /// True once the capture is over.
    fn closing(&mut self) -> bool {
        if !self.closing {
            self.closing = *self.closing_rx.borrow();
        }
        self.closing
    }

    /// Sleeps for `delay`; true if the capture ended meanwhile.
    async fn sleep_unless_closing(&mut self, delay: Duration) -> bool {
        tokio::select! {
            () = tokio::time::sleep(delay) => false,
            () = closed(&mut self.closing_rx) => {
                self.closing = true;
                true
            }
        }
    }

    async fn sleep_unless_drained(&mut self, delay: Duration) {
        let sleep = tokio::time::sleep(delay);
        tokio::pin!(sleep);
        loop {
            tokio::select! {
                () = &mut sleep => return,
                () = closed(&mut self.closing_rx), if !self.closing => {
                    self.closing = true;
                    if self.buffer.lock().is_empty() {
                        return;
                    }
                }
            }
        }
    }

    /// Resolves once closing with an empty buffer; never, if closing finds
    /// lines left (only acks remove lines, and none come before a stream).
    async fn closed_with_nothing_to_send(&mut self) {
        if !self.closing {
            closed(&mut self.closing_rx).await;
            self.closing = true;
        }
        if !self.buffer.lock().is_empty() {
            std::future::pending::<()>().await;
        }
    }

    /// One connection: returns `Ok` once drained, `Err` when it broke.
    /// `home` is the first-ranked gateway when `gateway` is not: the
    /// session ends ([`StreamError::Rebalance`]) once it answers again and
    /// no line is in flight.
    async fn session(
        &mut self,
        gateway: &Gateway,
        home: Option<&Gateway>,
    ) -> Result<(), StreamError> {
        let https = gateway.https;
        let has_identity = self.tls.identity.is_some();
        let (tx, rx) = mpsc::channel(OUTBOUND_BATCHES);
        tx.try_send(wire::encode_message(&ShimMessage {
            kind: Some(shim_message::Kind::Open(self.open.clone())),
        }))
        .map_err(|_| StreamError::Closed)?;
        let opening = async {
            let channel = gateway
                .endpoint
                .connect_with_connector(logdrain::fleet::dial(gateway.addr))
                .await
                .map_err(StreamError::Connect)?;
            ship(channel, rx).await.map_err(|status| {
                let hint = client::closed_at_opening_hint(&status, https, has_identity);
                StreamError::Refused { status, hint }
            })
        };
        let response = tokio::select! {
            opened = tokio::time::timeout(CONNECT_TIMEOUT, opening) => {
                opened.map_err(|_| StreamError::OpenTimeout(CONNECT_TIMEOUT))??
            }
            // Nothing left to send: do not wait for a slow connect.
            () = self.closed_with_nothing_to_send() => return Ok(()),
        };
        self.refused.send_replace(false);
        let mut inbound = response.into_inner();
        let mut sending = Box::pin(send_batches(
            Arc::clone(&self.buffer),
            tx,
            self.batch,
            Arc::clone(&self.redactor),
        ));
        let home_back = std::pin::pin!(home_answers(
            home,
            self.rebalance_after,
            StdRng::from_rng(&mut self.rng),
        ));
        let result = tokio::select! {
            // Acks and errors first: a broken stream is better explained by
            // the gateway's status than by the send side closing.
            biased;
            result = self.receive_acks(&mut inbound, &gateway.shown, home_back) => result,
            result = &mut sending => result,
        };
        if result.is_ok() {
            // Drained: end the request stream and give the gateway a moment
            // to end its side, so it sees a clean close, not a cancel.
            drop(sending);
            let _ = tokio::time::timeout(CLOSE_GRACE, inbound.message()).await;
        }
        result
    }

    /// Applies acks until the stream ends or everything is drained.
    async fn receive_acks(
        &mut self,
        inbound: &mut Streaming<GatewayMessage>,
        url: &str,
        mut home_back: std::pin::Pin<&mut impl std::future::Future<Output = ()>>,
    ) -> Result<(), StreamError> {
        // Granularity of the ack timeout check.
        let mut ticker = tokio::time::interval(self.ack_timeout / 10 + Duration::from_millis(1));
        let mut last_progress = Instant::now();
        let mut moving = false;
        loop {
            if self.drained() {
                return Ok(());
            }
            if moving && !self.buffer.lock().has_sent_unacked() {
                return Err(StreamError::Rebalance);
            }
            tokio::select! {
                () = &mut home_back, if !moving => moving = true,
                message = inbound.message() => match message {
                    Ok(Some(GatewayMessage { kind: Some(gateway_message::Kind::Ack(ack)) })) => {
                        self.on_ack(ack.acked_seq, url)?;
                        last_progress = Instant::now();
                    }
                    // A message kind from a newer gateway: nothing to do.
                    Ok(Some(_)) => {}
                    Ok(None) => return Err(StreamError::Closed),
                    Err(status) => return Err(StreamError::Status(status)),
                },
                () = closed(&mut self.closing_rx), if !self.closing => self.closing = true,
                _ = ticker.tick() => {
                    if !self.buffer.lock().has_sent_unacked() {
                        last_progress = Instant::now();
                    } else if last_progress.elapsed() >= self.ack_timeout {
                        return Err(StreamError::AckTimeout(self.ack_timeout));
                    }
                }
            }
        }
    }

    fn on_ack(&mut self, acked_seq: u64, url: &str) -> Result<(), StreamError> {
        let dropped = self.buffer.ack(acked_seq)?;
        self.progressed = true;
        if self.failures > 0 {
            diag!(
                "gateway {url}: delivering again after {} failed attempt{}",
                self.failures,
                if self.failures == 1 { "" } else { "s" }
            );
            self.failures = 0;
            self.last_logged.clear();
        }
        self.backoff.reset();
        if let Some(dropped) = dropped {
            let notice = lifecycle::drop_notice(&dropped, self.buffer_bytes);
            diag::emit_line(&notice);
            self.buffer
                .push_notice(lifecycle::shim_line(notice), dropped);
        }
        Ok(())
    }
}

/// Resolves once `home` accepts a connection, checked every `every` to
/// 2×`every` (at random, so shims that failed over together come back
/// spread out); never without a home or with `every` zero.
async fn home_answers(home: Option<&Gateway>, every: Duration, mut rng: StdRng) {
    let Some(home) = home.filter(|_| !every.is_zero()) else {
        return std::future::pending().await;
    };
    loop {
        let nanos = u64::try_from(every.as_nanos()).unwrap_or(u64::MAX);
        tokio::time::sleep(every + Duration::from_nanos(rng.random_range(0..=nanos))).await;
        let connect = home
            .endpoint
            .connect_with_connector(logdrain::fleet::dial(home.addr));
        if let Ok(Ok(_)) = tokio::time::timeout(CONNECT_TIMEOUT, connect).await {
            return;
        }
    }
}

/// Whether a failure means the gateway will not take this boot's lines as
/// this shim's (see the module docs).
fn needs_new_boot(err: &StreamError) -> bool {
    match err {
        StreamError::AckAheadOfSent(_) => true,
        StreamError::Refused { status, .. } => status.code() == Code::Aborted,
        _ => false,
    }
}

/// Calls `Drain.Ship` with the messages from `outbound`, sent as encoded
/// ([`ShipCodec`]); what the generated client does, but for the codec.
async fn ship(
    channel: tonic::transport::Channel,
    outbound: mpsc::Receiver<Encoded>,
) -> Result<tonic::Response<Streaming<GatewayMessage>>, Status> {
    let mut client = tonic::client::Grpc::new(channel)
        .max_decoding_message_size(logdrain::MAX_MESSAGE_BYTES)
        .max_encoding_message_size(logdrain::MAX_MESSAGE_BYTES);
    client
        .ready()
        .await
        .map_err(|err| Status::unknown(format!("Service was not ready: {err}")))?;
    let mut request = Request::new(ReceiverStream::new(outbound));
    request
        .extensions_mut()
        .insert(GrpcMethod::new("logdrain.v1.Drain", "Ship"));
    let path = PathAndQuery::from_static("/logdrain.v1.Drain/Ship");
    client.streaming(request, path, ShipCodec).await
}

/// Sends batches from the oldest unacked line on, keeping the lines in
/// flight within the buffer's window; runs until the stream closes. Never
/// cancelled mid-session: a session ends as a whole, its lines in flight
/// are requeued, and the next one starts again from the oldest unacked line.
/// A batch is encoded straight from the buffer, under its lock.
async fn send_batches(
    buffer: Arc<SharedBuffer>,
    tx: mpsc::Sender<Encoded>,
    limits: BatchLimits,
    redactor: Arc<Redactor>,
) -> Result<(), StreamError> {
    loop {
        let permit = tx.reserve().await.map_err(|_| StreamError::Closed)?;
        loop {
            let (unsent, room) = {
                let buffer = buffer.lock();
                (buffer.unsent_len(), buffer.has_room_for(limits.bytes))
            };
            if unsent == 0 {
                buffer.wait_for_lines().await;
            } else if !room {
                buffer.wait_for_room().await;
            } else {
                if unsent < limits.lines && !limits.linger.is_zero() {
                    tokio::time::sleep(limits.linger).await;
                }
                break;
            }
        }
        let redacted = redactor.counts();
        let encoded = {
            let mut buffer = buffer.lock();
            buffer.take_batch(limits.lines, limits.bytes).map(|taken| {
                wire::encode_batch(
                    taken.first_seq,
                    buffer.newest_in_flight(taken.lines),
                    taken.shim_dropped_total,
                    &redacted,
                )
            })
        };
        if let Some(encoded) = encoded {
            permit.send(encoded);
        }
    }
}

/// Resolves once `closing` is true (or its sender is gone).
async fn closed(closing: &mut watch::Receiver<bool>) {
    let _ = closing.wait_for(|&closing| closing).await;
}

/// What a gateway status means for the operator, with the fix.
fn describe_status(status: &Status) -> String {
    let message = status.message();
    match status.code() {
        Code::Unauthenticated => format!(
            "the gateway refused the token (UNAUTHENTICATED: {message}): the token does not \
             match the agent id; create one with `logdrain-gateway token --agent-id ID` and pass \
             it as --token or LOGDRAIN_TOKEN"
        ),
        Code::InvalidArgument => format!(
            "the gateway rejected the stream (INVALID_ARGUMENT: {message}); check --agent-id, \
             --agent-server-id and that shim and gateway versions match"
        ),
        Code::ResourceExhausted => format!(
            "the gateway is at a limit (RESOURCE_EXHAUSTED: {message}); lines wait in the buffer and the stream is retried"
        ),
        Code::Unavailable => format!(
            "the gateway is unavailable (UNAVAILABLE: {message}); lines wait in the buffer"
        ),
        code => {
            let detail = status_detail(status);
            format!(
                "the gateway ended the stream ({}: {detail}){}",
                code_name(code),
                tls_hint(&detail)
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_window_is_half_the_buffer_and_at_most_16_mib() {
        assert_eq!(in_flight_window(64 << 20), IN_FLIGHT_MAX_BYTES);
        assert_eq!(IN_FLIGHT_MAX_BYTES, 16 << 20);
        assert_eq!(in_flight_window(4 << 20), 2 << 20);
    }

    #[test]
    fn unauthenticated_explains_how_to_get_a_token() {
        let text = describe_status(&Status::unauthenticated("bad token"));
        assert!(text.contains("UNAUTHENTICATED: bad token"), "{text}");
        assert!(text.contains("does not match the agent id"), "{text}");
        assert!(text.contains("logdrain-gateway token --agent-id"), "{text}");
    }

    #[test]
    fn statuses_are_named_canonically() {
        assert!(describe_status(&Status::resource_exhausted("full")).contains("RESOURCE_EXHAUSTED"));
        assert!(describe_status(&Status::unavailable("restarting")).contains("UNAVAILABLE"));
        assert!(describe_status(&Status::invalid_argument("seq")).contains("INVALID_ARGUMENT"));
        assert!(describe_status(&Status::failed_precondition("v2")).contains("FAILED_PRECONDITION"));
    }

    #[test]
    fn only_a_refused_token_id_or_protocol_version_is_a_refusal_for_good() {
        let refused = |status| StreamError::Refused { status, hint: "" };
        assert!(refused(Status::unauthenticated("token")).is_permanent());
        assert!(refused(Status::invalid_argument("agent id")).is_permanent());
        assert!(refused(Status::failed_precondition("protocol version")).is_permanent());
        for transient in [
            Status::unavailable("shutting down"),
            Status::resource_exhausted("--max-streams"),
            Status::deadline_exceeded("no Open"),
            Status::cancelled("connection closed"),
        ] {
            assert!(!refused(transient).is_permanent());
        }
        // Once a stream is open, its errors are never refusals for good.
        assert!(!StreamError::Status(Status::invalid_argument("seq")).is_permanent());
    }

    #[test]
    fn statuses_repeat_by_code_whatever_their_message() {
        let full = |free: u64| {
            StreamError::Status(Status::resource_exhausted(format!("{free} bytes free")))
        };
        assert_eq!(full(10).repeat_key(), full(20).repeat_key());
        assert_ne!(
            full(10).repeat_key(),
            StreamError::Status(Status::unavailable("x")).repeat_key()
        );
    }
}
