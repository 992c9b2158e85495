//! The delivery loop of one route.
//!
//! A [`Worker`] starts at the route's committed cursor, reads lines into a
//! batch ([`Pending`]), waits up to the sink's linger for a batch to fill,
//! sends it, and commits only after the vendor accepted. With a backlog, the
//! next full batch is encoded on the blocking pool while the current request
//! is in flight (in place when the sink has nothing to encode or the batch is
//! too small for the hand-off to pay); requests still go out one at a time,
//! in queue order. Failures follow
//! [`action_for`]: back off and retry, split a rejected payload down to the
//! offending line, or park the route while credentials are refused. A vendor
//! that accepted a request but asked to hold off ([`SendOutcome::hold_off`])
//! gets no further request from the route until that time has passed. It owns
//! no lock that another route uses, so a slow or failing route never delays
//! another. It must not know any vendor's request format.

use std::ops::Range;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use logdrain::backoff::Backoff;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::{sleep, sleep_until, Instant};

use super::batch::Pending;
use super::late::{self, Restamps};
use super::retry::{action_for, Action, RetryPolicy};
use super::source::Source;
use super::status::{RouteState, StatusCell};
use super::{EngineSettings, Inner};
use crate::metrics;
use crate::queue::{Cursor, QueuedLine};
use crate::route::RouteKey;
use crate::shutdown::Shutdown;
use crate::sinks::{encoding_failed, BatchLimits, Prepared, SendOutcome, Sink, SinkError};

/// How often a worker looks for lines when the queue's change signal is gone.
const POLL_INTERVAL: Duration = Duration::from_secs(1);

/// A batch whose lines hold fewer bytes than this is encoded on the worker's
/// own task: handing it to the blocking pool and back (two thread wake-ups)
/// costs more than encoding it.
const INLINE_PREPARE_BYTES: usize = 16 * 1024;

/// The worker stopped because shutdown began.
#[derive(Debug)]
pub(super) struct Stopped;

/// Shutdown of the whole process, of the engine alone, or of one route's
/// worker (retired when the route adopts newer credentials).
#[derive(Clone, Debug)]
pub(super) struct Stop {
    pub process: Shutdown,
    pub engine: Shutdown,
    pub route: Shutdown,
}

impl Stop {
    /// The same process and engine signals with a fresh signal for one
    /// route's worker.
    pub fn for_route(&self) -> Stop {
        Stop {
            process: self.process.clone(),
            engine: self.engine.clone(),
            route: Shutdown::new(),
        }
    }

    pub fn is_triggered(&self) -> bool {
        self.process.is_triggered() || self.engine.is_triggered() || self.route.is_triggered()
    }

    pub async fn wait(&self) {
        tokio::select! {
            _ = self.process.wait() => {}
            _ = self.engine.wait() => {}
            _ = self.route.wait() => {}
        }
    }

    /// Sleeps for `delay`, or returns early with [`Stopped`].
    pub async fn sleep(&self, delay: Duration) -> Result<(), Stopped> {
        tokio::select! {
            biased;
            _ = self.wait() => Err(Stopped),
            _ = sleep(delay) => Ok(()),
        }
    }
}

/// Everything a route's worker is made from; cloned to restart it.
pub(super) struct Parts<S> {
    pub route: RouteKey,
    pub source: Arc<S>,
    pub sink: Arc<dyn Sink>,
    pub settings: EngineSettings,
    pub status: StatusCell,
    pub stop: Stop,
    /// The engine, told when the route parks or first delivers, so routes
    /// can adopt newer credentials. Weak: workers must not keep a stopped engine alive.
    pub engine: Weak<Inner<S>>,
}

impl<S> Clone for Parts<S> {
    fn clone(&self) -> Self {
        Self {
            route: self.route.clone(),
            source: Arc::clone(&self.source),
            sink: Arc::clone(&self.sink),
            settings: self.settings.clone(),
            status: self.status.clone(),
            stop: self.stop.clone(),
            engine: Weak::clone(&self.engine),
        }
    }
}

enum Woke {
    Changed,
    Deadline,
}

/// A request on its own task; dropping it (the worker stopped) cancels the
/// request, as dropping the future would.
struct Sending(JoinHandle<Result<SendOutcome, SinkError>>);

impl Sending {
    async fn finish(mut self, vendor: &str) -> Result<SendOutcome, SinkError> {
        (&mut self.0).await.unwrap_or_else(|e| {
            Err(SinkError::Config {
                reason: format!("sending the {vendor} request failed: {e}"),
            })
        })
    }
}

impl Drop for Sending {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A batch cut from [`Pending`], with its request being encoded
/// ([`Sink::prepare`]).
struct Ready {
    lines: Arc<Vec<QueuedLine>>,
    prepared: Preparing,
}

/// A request being encoded: on the blocking pool, or already in place.
enum Preparing {
    Done(Result<Prepared, SinkError>),
    Pool(JoinHandle<Result<Prepared, SinkError>>),
}

pub(super) struct Worker<S> {
    parts: Parts<S>,
    limits: BatchLimits,
    /// Failures of the vendor (backoff between attempts).
    backoff: Backoff,
    /// Failures of the queue itself.
    source_backoff: Backoff,
    /// Attempts while parked: slower each time, jittered.
    park_backoff: Backoff,
    pending: Pending,
    /// The next full batch, cut while the current one is sent, so that its
    /// encoding overlaps the vendor's round trip. Requests still go out one
    /// at a time, in queue order.
    ahead: Option<Ready>,
    /// Cursor of the last line read into `pending` (or committed at start).
    position: Option<Cursor>,
    /// No request before this instant: the vendor accepted the last one but
    /// asked to hold off.
    hold_until: Option<Instant>,
    metrics: metrics::Delivery,
}

impl<S: Source> Worker<S> {
    pub fn new(parts: Parts<S>) -> Self {
        let limits = parts.sink.limits();
        let policy = parts.settings.retry;
        let parts_park_interval = parts.settings.park_interval;
        let metrics = metrics::Delivery::new(&parts.route.agent_id, parts.route.kind.name());
        Self {
            parts,
            limits,
            backoff: policy.backoff(0),
            source_backoff: policy.backoff(0),
            park_backoff: parked_backoff(parts_park_interval),
            pending: Pending::new(),
            ahead: None,
            position: None,
            hold_until: None,
            metrics,
        }
    }

    /// Runs until shutdown. Lines not yet accepted stay queued.
    pub async fn run(mut self) {
        let Err(Stopped) = self.deliver_forever().await;
        self.parts.status.update(|s| {
            s.pending_lines = 0;
            s.oldest_undelivered_ns = None;
        });
        self.parts.status.set_state(RouteState::Stopped);
    }

    async fn deliver_forever(&mut self) -> Result<std::convert::Infallible, Stopped> {
        self.position = self.committed_position().await?;
        let mut changes = self.parts.source.subscribe(&self.parts.route.agent_id);
        loop {
            if self.parts.stop.is_triggered() {
                return Err(Stopped);
            }
            // Mark the signal seen before reading, so an append that races
            // with the read wakes the wait below.
            changes.borrow_and_update();
            self.fill().await?;
            let batch = match self.ahead.take() {
                Some(ready) => ready,
                None => {
                    self.report_pending(0);
                    self.report_oldest(self.pending.first());
                    if self.pending.is_empty() {
                        self.parts.status.set_state(RouteState::Idle);
                        self.wait_for_lines(&mut changes, None).await?;
                        continue;
                    }
                    self.parts.status.set_state(RouteState::Delivering);
                    if !self.pending.is_full(&self.limits) {
                        if let Some(deadline) = self.pending.deadline(&self.limits) {
                            if Instant::now() < deadline {
                                match self.wait_for_lines(&mut changes, Some(deadline)).await? {
                                    Woke::Changed => continue,
                                    Woke::Deadline => {}
                                }
                            }
                        }
                    }
                    let lines = self.pending.take_batch(&self.limits);
                    self.start(lines)
                }
            };
            self.prefetch().await?;
            self.deliver(batch).await?;
        }
    }

    /// With a backlog, the next batch is full already: it is cut and encoded
    /// while the current one is on its way. A partial batch still lingers.
    async fn prefetch(&mut self) -> Result<(), Stopped> {
        self.fill().await?;
        if self.ahead.is_none() && self.pending.is_full(&self.limits) {
            let next = self.pending.take_batch(&self.limits);
            self.ahead = Some(self.start(next));
        }
        Ok(())
    }

    /// Starts encoding `lines` as one request.
    fn start(&self, lines: Vec<QueuedLine>) -> Ready {
        let lines = Arc::new(lines);
        let prepared = self.begin_prepare(Arc::clone(&lines), 0..lines.len());
        Ready { lines, prepared }
    }

    /// Encodes `lines[range]` on the blocking pool, or in place when the
    /// sink has nothing to encode or the lines are few bytes.
    fn begin_prepare(&self, lines: Arc<Vec<QueuedLine>>, range: Range<usize>) -> Preparing {
        let sink = Arc::clone(&self.parts.sink);
        let small = || {
            let mut bytes = 0usize;
            lines[range.clone()].iter().all(|line| {
                bytes = bytes.saturating_add(line.line.data.len());
                bytes < INLINE_PREPARE_BYTES
            })
        };
        if !sink.prepares() || small() {
            // A panic is the encoder's bug, reported as the pool's would be.
            let prepared =
                std::panic::catch_unwind(AssertUnwindSafe(|| sink.prepare(&lines[range])))
                    .unwrap_or_else(|_| {
                        Err(encoding_failed(
                            self.parts.route.kind.name(),
                            &"the encoder panicked",
                        ))
                    });
            return Preparing::Done(prepared);
        }
        Preparing::Pool(tokio::task::spawn_blocking(move || {
            sink.prepare(&lines[range])
        }))
    }

    /// The encoded request, or [`Stopped`] if shutdown comes first.
    async fn prepared(&self, task: Preparing) -> Result<Result<Prepared, SinkError>, Stopped> {
        let task = match task {
            Preparing::Done(_) if self.parts.stop.is_triggered() => return Err(Stopped),
            Preparing::Done(prepared) => return Ok(prepared),
            Preparing::Pool(task) => task,
        };
        tokio::select! {
            biased;
            _ = self.parts.stop.wait() => Err(Stopped),
            joined = task => Ok(joined.unwrap_or_else(|e| {
                Err(encoding_failed(self.parts.route.kind.name(), &e))
            })),
        }
    }

    /// The committed cursor, retrying while the queue fails.
    async fn committed_position(&mut self) -> Result<Option<Cursor>, Stopped> {
        loop {
            match self.parts.source.committed(&self.parts.route) {
                Ok(position) => {
                    self.source_backoff.reset();
                    return Ok(position);
                }
                Err(e) => {
                    self.source_failed("reading the committed cursor", e.to_string())
                        .await?
                }
            }
        }
    }

    /// Reads lines after `position` until a batch is full or nothing more is
    /// queued.
    async fn fill(&mut self) -> Result<(), Stopped> {
        while !self.pending.is_full(&self.limits) {
            let (max_lines, max_bytes) = self.pending.room(&self.limits);
            let read =
                self.parts
                    .source
                    .read(&self.parts.route, self.position, max_lines, max_bytes);
            match read {
                Ok(lines) if lines.is_empty() => break,
                Ok(lines) => {
                    self.source_backoff.reset();
                    let now = Instant::now();
                    let before = self.pending.len();
                    let window = self.parts.sink.max_age();
                    let now_ns = late::unix_nanos(SystemTime::now());
                    let mut restamps = Restamps::default();
                    for mut line in lines {
                        if self.position.is_some_and(|p| line.cursor <= p) {
                            continue; // already read; the source repeated it
                        }
                        self.position = Some(line.cursor);
                        if let Some(max_age) = window {
                            if let Some(reason) = late::restamp(&mut line, max_age, now_ns) {
                                restamps.add(reason);
                            }
                        }
                        let size = self.parts.sink.event_size(&line);
                        self.pending.push(line, size, now);
                    }
                    if let (Some(max_age), false) = (window, restamps.is_empty()) {
                        self.restamped(restamps, max_age);
                    }
                    if self.pending.len() == before {
                        break; // nothing new: do not spin on a repeating source
                    }
                }
                Err(e) => self.source_failed("reading lines", e.to_string()).await?,
            }
        }
        Ok(())
    }

    /// Counts lines given the time of sending, and keeps them for the
    /// route's next notice.
    fn restamped(&self, restamps: Restamps, max_age: Duration) {
        let dest = self.parts.route.kind.name();
        for (reason, lines) in restamps.by_reason() {
            if lines > 0 {
                metrics::restamped(dest, reason, lines);
            }
        }
        if let Some(engine) = self.parts.engine.upgrade() {
            engine.add_restamps(&self.parts.route, restamps, max_age);
        }
    }

    async fn source_failed(&mut self, doing: &'static str, error: String) -> Result<(), Stopped> {
        let delay = self.source_backoff.next_delay(&mut rand::rng());
        tracing::warn!(route = %self.parts.route, error = %error, retry_in = ?delay,
            "queue failed while {doing}; retrying");
        self.parts
            .status
            .update(|s| s.last_error = Some(format!("queue failed while {doing}: {error}")));
        self.parts.stop.sleep(delay).await
    }

    /// Waits for appended lines, the linger `deadline`, or shutdown.
    async fn wait_for_lines(
        &self,
        changes: &mut watch::Receiver<u64>,
        deadline: Option<Instant>,
    ) -> Result<Woke, Stopped> {
        let changed = async {
            if changes.changed().await.is_err() {
                // The signal is gone (queue shutting down or replaced): poll.
                sleep(POLL_INTERVAL).await;
            }
        };
        let lingered = async {
            match deadline {
                Some(at) => sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            biased;
            _ = self.parts.stop.wait() => Err(Stopped),
            _ = lingered => Ok(Woke::Deadline),
            _ = changed => Ok(Woke::Changed),
        }
    }

    /// Delivers `batch`, splitting rejected payloads, until every line is
    /// accepted or dropped. Returns early only on shutdown; whatever was not
    /// committed then stays queued.
    async fn deliver(&mut self, ready: Ready) -> Result<(), Stopped> {
        let Ready {
            lines: batch,
            prepared,
        } = ready;
        // Encoded ahead for the whole batch, the first range sent; splits and
        // retries are encoded again (a send consumes its body).
        let mut early = Some(prepared);
        // Ranges still to send, the next one last; left halves go first so
        // commits stay in queue order.
        let mut todo: Vec<Range<usize>> = Vec::with_capacity(16);
        todo.push(0..batch.len());
        while let Some(range) = todo.pop() {
            self.report_pending(todo.iter().map(|r| r.len()).sum::<usize>() + range.len());
            let lines = &batch[range.clone()];
            // Earlier ranges are committed: this one starts at the oldest
            // undelivered line.
            self.report_oldest(lines.first());
            loop {
                if self.parts.stop.is_triggered() {
                    return Err(Stopped);
                }
                self.hold_off().await?;
                let task = match early.take() {
                    Some(task) => task,
                    None => self.begin_prepare(Arc::clone(&batch), range.clone()),
                };
                let sent = match self.prepared(task).await? {
                    Ok(prepared) => {
                        let sending = self.send(Arc::clone(&batch), range.clone(), prepared);
                        // Reads the lines after the next batch from the
                        // queue while this request is on its way.
                        self.prefetch().await?;
                        sending.finish(self.parts.route.kind.name()).await
                    }
                    Err(error) => Err(error),
                };
                let error = match sent {
                    Ok(outcome) => {
                        self.accepted(lines, outcome);
                        break;
                    }
                    Err(error) => error,
                };
                self.failed(&error, lines.len());
                match action_for(&error, lines.len()) {
                    Action::Retry { retry_after } => {
                        self.metrics.retried(lines.len() as u64);
                        let retry = &self.parts.settings.retry;
                        let delay = retry.next_wait(&mut self.backoff, retry_after);
                        self.parts.status.set_state(RouteState::Retrying);
                        self.parts.stop.sleep(delay).await?;
                    }
                    Action::Split => {
                        let mid = range.start + range.len() / 2;
                        todo.push(mid..range.end);
                        todo.push(range.start..mid);
                        break;
                    }
                    Action::Drop => {
                        self.drop_rejected(lines, &error);
                        break;
                    }
                    Action::ParkUnauthorized | Action::ParkConfig => {
                        self.backoff.next_delay(&mut rand::rng());
                        let state = if matches!(error, SinkError::Unauthorized { .. }) {
                            RouteState::CredentialsRejected
                        } else {
                            RouteState::InvalidSecret
                        };
                        self.parts.status.set_state(state);
                        if let Some(engine) = self.parts.engine.upgrade() {
                            // May retire this worker for one with newer
                            // credentials: the sleep below then ends at once.
                            engine.parked(&self.parts.route);
                        }
                        let delay = self.park_backoff.next_delay(&mut rand::rng());
                        self.parts.stop.sleep(delay).await?;
                    }
                }
            }
        }
        self.report_pending(0);
        Ok(())
    }

    /// Waits out a hold-off the vendor asked for with its last acceptance.
    async fn hold_off(&mut self) -> Result<(), Stopped> {
        let Some(until) = self.hold_until.take() else {
            return Ok(());
        };
        let now = Instant::now();
        if until > now {
            tracing::debug!(route = %self.parts.route, wait = ?(until - now),
                "vendor asked to hold off after accepting; waiting before the next send");
            self.parts.stop.sleep(until - now).await?;
        }
        Ok(())
    }

    /// One attempt, bounded by the engine's send timeout so a hung vendor
    /// cannot hold its route forever.
    /// Starts the request on its own task, so the worker can read ahead
    /// while it is in flight.
    fn send(
        &self,
        batch: Arc<Vec<QueuedLine>>,
        range: Range<usize>,
        prepared: Prepared,
    ) -> Sending {
        let limit = self.parts.settings.send_timeout;
        let sink = Arc::clone(&self.parts.sink);
        Sending(tokio::spawn(async move {
            let sending = sink.send_prepared(&batch[range], prepared);
            match tokio::time::timeout(limit, sending).await {
                Ok(result) => result,
                Err(_) => Err(SinkError::Retryable {
                    reason: format!("no answer within {}s", limit.as_secs()),
                    retry_after: None,
                }),
            }
        }))
    }

    fn accepted(&mut self, lines: &[QueuedLine], outcome: SendOutcome) {
        let route = &self.parts.route;
        let sent = lines.len() as u64;
        if let Some(last) = lines.last() {
            self.commit(last.cursor);
        }
        self.metrics.delivered(sent);
        // One latency sample per request, from its oldest line: the worst
        // latency of the request, without one histogram sample per line.
        let own_time = |l: &QueuedLine| l.original_timestamp_ns.unwrap_or(l.line.timestamp_ns);
        if let Some(oldest) = lines.iter().map(own_time).min() {
            self.metrics.latency(since_unix_nanos(oldest));
        }
        let rejected = outcome.rejected.min(sent);
        if rejected > 0 {
            self.metrics.rejected(rejected);
            tracing::warn!(route = %route, lines = rejected,
                reason = outcome.rejected_reason.as_deref().unwrap_or("not given"),
                "vendor refused lines of an accepted request; they are dropped");
        }
        if !outcome.restamped.is_empty() {
            let window = self.parts.sink.max_age().unwrap_or_default();
            self.restamped(outcome.restamped, window);
        }
        // A wrong header must not park the route for days: bounded like
        // `Retry-After`.
        self.hold_until = outcome
            .hold_off
            .map(|wait| Instant::now() + wait.min(self.parts.settings.retry.retry_after_cap));
        self.backoff.reset();
        self.park_backoff = parked_backoff(self.parts.settings.park_interval);
        let mut first = false;
        self.parts.status.update(|s| {
            // First success since start, or since it was parked.
            first = s.last_success_unix.is_none() || s.state.is_parked();
            s.delivered_lines += sent - rejected;
            s.delivered_requests += 1;
            s.dropped_lines += rejected;
            s.consecutive_failures = 0;
            s.last_success_unix = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .ok()
                .map(|d| d.as_secs());
        });
        self.parts.status.set_state(RouteState::Delivering);
        if first {
            if let Some(engine) = self.parts.engine.upgrade() {
                // Older parked routes may now adopt these credentials.
                engine.delivered(&self.parts.route);
            }
        }
    }

    fn failed(&self, error: &SinkError, lines: usize) {
        let route = &self.parts.route;
        metrics::failed(
            &route.agent_id,
            route.kind.name(),
            error.class(),
            lines as u64,
        );
        let splitting = matches!(error, SinkError::PayloadRejected { .. });
        let mut failures = 0;
        self.parts.status.update(|s| {
            s.failed_requests += 1;
            s.last_error = Some(error.to_string());
            if !splitting {
                s.consecutive_failures = s.consecutive_failures.saturating_add(1);
            }
            failures = s.consecutive_failures;
        });
        // Log the 1st, 2nd, 4th, 8th ... consecutive failure: a route that
        // stays down is visible without flooding the log.
        if !splitting && failures.is_power_of_two() {
            tracing::warn!(route = %route, class = error.class(), consecutive_failures = failures,
                error = %error, "delivery failed; lines are kept and retried");
        }
    }

    fn drop_rejected(&mut self, lines: &[QueuedLine], error: &SinkError) {
        let route = &self.parts.route;
        let count = lines.len() as u64;
        self.metrics.rejected(count);
        if let Some(line) = lines.first() {
            tracing::warn!(route = %route, segment = line.cursor.segment, index = line.cursor.index,
                bytes = line.line.data.len(), error = %error,
                "vendor rejected a line for good; it is dropped");
        }
        if let Some(last) = lines.last() {
            self.commit(last.cursor);
        }
        self.parts.status.update(|s| s.dropped_lines += count);
    }

    fn commit(&self, through: Cursor) {
        if let Err(e) = self.parts.source.commit(&self.parts.route, through) {
            // The lines were delivered; the next commit covers them. If the
            // gateway stops first they are delivered again (at least once).
            tracing::warn!(route = %self.parts.route, error = %e,
                "could not commit delivered lines; they may be delivered again");
            self.parts
                .status
                .update(|s| s.last_error = Some(format!("queue failed while committing: {e}")));
        }
    }

    /// Records the route's oldest undelivered line (`None`: nothing to send).
    fn report_oldest(&self, oldest: Option<&QueuedLine>) {
        let oldest = oldest.map(|line| line.line.timestamp_ns);
        self.parts
            .status
            .update(|s| s.oldest_undelivered_ns = oldest);
    }

    fn report_pending(&self, in_flight: usize) {
        let ahead = self.ahead.as_ref().map_or(0, |ready| ready.lines.len());
        let pending = (self.pending.len() + ahead + in_flight) as u64;
        self.parts.status.update(|s| s.pending_lines = pending);
    }
}

/// The first wait is drawn from `[interval / 2, interval]`.
fn parked_backoff(interval: Duration) -> Backoff {
    RetryPolicy::parked(interval).backoff(1)
}

/// Time since a Unix timestamp in nanoseconds; zero if it is in the future
/// (clock skew between replica and gateway).
fn since_unix_nanos(timestamp_ns: i64) -> Duration {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_nanos();
    let then = u128::try_from(timestamp_ns).unwrap_or(0);
    Duration::from_nanos(u64::try_from(now.saturating_sub(then)).unwrap_or(u64::MAX))
}
