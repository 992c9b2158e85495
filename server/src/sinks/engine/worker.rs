//! The delivery loop of one route.
//!
//! A [`Worker`] starts at the route's committed cursor, reads lines into a
//! batch ([`Pending`]), waits up to the sink's linger for a batch to fill,
//! and sends it. Up to [`BatchLimits::max_in_flight`] batches are out at
//! once (the window), so encoding and sending of one batch overlap the
//! round trip of the others; commits stay in queue order: the cursor only
//! moves over the contiguous prefix of the window that the vendor accepted
//! (or that was dropped), and a batch accepted early is held, not sent
//! again, until the ones before it are accepted. Failures follow
//! [`action_for`]: back off and retry, split a rejected payload down to the
//! offending line, or park the route while credentials are refused. After a
//! failure that earns a wait, the route sends nothing until the wait is over
//! and then one request at a time until one is accepted. A vendor that
//! accepted a request but asked to hold off ([`SendOutcome::hold_off`])
//! gets no further request from the route until that time has passed. It
//! owns no lock that another route uses, so a slow or failing route never
//! delays another. It must not know any vendor's request format.

use std::collections::VecDeque;
use std::ops::Range;
use std::sync::{Arc, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures::future::BoxFuture;
use futures::stream::{FuturesUnordered, StreamExt};
use tokio::sync::watch;
use tokio::time::{sleep, sleep_until, Instant};

use super::batch::Pending;
use super::retry::{action_for, Action, Backoff};
use super::source::Source;
use super::status::{RouteState, StatusCell};
use super::{EngineSettings, Inner};
use crate::metrics;
use crate::queue::{Cursor, QueuedLine};
use crate::route::RouteKey;
use crate::shutdown::Shutdown;
use crate::sinks::{BatchLimits, SendOutcome, Sink, SinkError};

/// How often a worker looks for lines when the queue's change signal is gone.
const POLL_INTERVAL: Duration = Duration::from_secs(1);

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
    /// The engine, told when the route parks so it can adopt newer
    /// credentials. Weak: workers must not keep a stopped engine alive.
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

/// One batch of the in-flight window: lines cut from [`Pending`], sent as
/// one request or, after a rejected payload, as smaller pieces one after
/// another (left pieces first, so a batch's progress is always a prefix).
struct Slot {
    /// Order of the batch in the route (the window is sorted by it).
    seq: u64,
    lines: Arc<Vec<QueuedLine>>,
    /// Pieces still to send, the next one last.
    todo: Vec<Range<usize>>,
    /// Lines `..done` were accepted or dropped.
    done: usize,
    /// A piece of this batch is in flight.
    sending: bool,
}

impl Slot {
    fn finished(&self) -> bool {
        self.done == self.lines.len()
    }
}

/// The answer to one request of the window.
struct Answer {
    seq: u64,
    range: Range<usize>,
    /// The failure epoch the request was sent in: an answer from before the
    /// route's last failure does not grow the backoff again, nor clear it.
    epoch: u64,
    result: Result<SendOutcome, SinkError>,
}

pub(super) struct Worker<S> {
    parts: Parts<S>,
    limits: BatchLimits,
    /// Most requests (and batches held) at once: [`BatchLimits::max_in_flight`].
    max_in_flight: usize,
    /// Failures of the vendor (backoff between attempts).
    backoff: Backoff,
    /// Failures of the queue itself.
    source_backoff: Backoff,
    /// Lines read but not yet cut into a batch (at most about one batch).
    pending: Pending,
    /// Batches cut and not yet committed, in queue order.
    window: VecDeque<Slot>,
    next_seq: u64,
    /// The requests of `window` waiting for an answer.
    in_flight: FuturesUnordered<BoxFuture<'static, Answer>>,
    /// Cursor of the last line read into `pending` (or committed at start).
    position: Option<Cursor>,
    /// The last cursor this worker committed (or found committed).
    committed: Option<Cursor>,
    /// No request before this instant: backoff after a failure, a parked
    /// route's interval, or a hold-off the vendor asked for.
    not_before: Option<Instant>,
    /// No queue read before this instant (the queue failed).
    read_not_before: Option<Instant>,
    /// Bumped by every failure that earns a backoff or parks the route.
    epoch: u64,
    /// After such a failure, one request at a time until one is accepted:
    /// a failing vendor gets one probe, not a window of requests.
    probing: bool,
    /// Shutdown of the engine or process began: no new request; answers
    /// to requests in flight are still taken (within the grace period).
    stopping: bool,
}

impl<S: Source> Worker<S> {
    pub fn new(parts: Parts<S>) -> Self {
        let limits = parts.sink.limits();
        let policy = parts.settings.retry;
        Self {
            parts,
            limits,
            max_in_flight: limits.max_in_flight.max(1),
            backoff: Backoff::new(policy),
            source_backoff: Backoff::new(policy),
            pending: Pending::new(),
            window: VecDeque::new(),
            next_seq: 0,
            in_flight: FuturesUnordered::new(),
            position: None,
            committed: None,
            not_before: None,
            read_not_before: None,
            epoch: 0,
            probing: false,
            stopping: false,
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
        self.committed = self.position;
        let mut changes = self.parts.source.subscribe(&self.parts.route.agent_id);
        loop {
            if self.parts.stop.route.is_triggered() {
                // Retired for a worker with newer credentials: requests
                // still out use the refused ones. Dropping them leaves
                // their lines uncommitted, so the new worker sends them.
                return Err(Stopped);
            }
            if !self.stopping && self.parts.stop.is_triggered() {
                self.stopping = true;
            }
            if self.stopping && self.in_flight.is_empty() {
                return Err(Stopped);
            }
            // Mark the signal seen before reading, so an append that races
            // with the read wakes the wait below.
            changes.borrow_and_update();
            if !self.stopping {
                loop {
                    self.fill();
                    if !self.launch() {
                        break;
                    }
                }
            }
            self.report();
            let wake = self.next_wake();
            let want_lines = !self.stopping
                && !self.pending.is_full(&self.limits)
                && self.read_not_before.is_none();
            tokio::select! {
                biased;
                Some(answer) = self.in_flight.next(), if !self.in_flight.is_empty() => {
                    self.settle(answer);
                }
                _ = self.parts.stop.wait(), if !self.stopping => self.stopping = true,
                _ = sleep_until_some(wake) => {}
                _ = changed(&mut changes), if want_lines => {}
            }
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
                    let delay = self.source_failed("reading the committed cursor", e.to_string());
                    self.parts.stop.sleep(delay).await?;
                }
            }
        }
    }

    /// Reads lines after `position` until a batch is full or nothing more is
    /// queued. A failing queue is read again after a backoff.
    fn fill(&mut self) {
        let now = Instant::now();
        if self.read_not_before.is_some_and(|at| now < at) {
            return;
        }
        self.read_not_before = None;
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
                    let before = self.pending.len();
                    for line in lines {
                        if self.position.is_some_and(|p| line.cursor <= p) {
                            continue; // already read; the source repeated it
                        }
                        self.position = Some(line.cursor);
                        let size = self.parts.sink.event_size(&line);
                        self.pending.push(line, size, now);
                    }
                    if self.pending.len() == before {
                        break; // nothing new: do not spin on a repeating source
                    }
                }
                Err(e) => {
                    let delay = self.source_failed("reading lines", e.to_string());
                    self.read_not_before = Some(now + delay);
                    break;
                }
            }
        }
    }

    /// Reports a queue failure; returns how long to wait before trying again.
    fn source_failed(&mut self, doing: &'static str, error: String) -> Duration {
        let delay = self.source_backoff.fail(None);
        tracing::warn!(route = %self.parts.route, error = %error, retry_in = ?delay,
            "queue failed while {doing}; retrying");
        self.parts
            .status
            .update(|s| s.last_error = Some(format!("queue failed while {doing}: {error}")));
        delay
    }

    /// Starts one request if the window allows it: first a piece of a batch
    /// already in the window (a retry or a split half, oldest batch first),
    /// else a new batch once one is full or its oldest line has lingered
    /// long enough. Returns whether it started one.
    fn launch(&mut self) -> bool {
        let now = Instant::now();
        if self.not_before.is_some_and(|at| now < at) {
            return false;
        }
        let limit = if self.probing { 1 } else { self.max_in_flight };
        if self.in_flight.len() >= limit {
            return false;
        }
        let index = match self
            .window
            .iter()
            .position(|slot| !slot.sending && !slot.todo.is_empty())
        {
            Some(index) => index,
            None => {
                if self.window.len() >= self.max_in_flight || !self.batch_ready(now) {
                    return false;
                }
                let lines = self.pending.take_batch(&self.limits);
                let seq = self.next_seq;
                self.next_seq += 1;
                let mut todo = Vec::with_capacity(8);
                todo.push(0..lines.len());
                self.window.push_back(Slot {
                    seq,
                    todo,
                    lines: Arc::new(lines),
                    done: 0,
                    sending: false,
                });
                self.window.len() - 1
            }
        };
        self.start(index);
        true
    }

    /// Whether `pending` holds a batch to cut now: full, or lingered enough.
    fn batch_ready(&self, now: Instant) -> bool {
        if self.pending.is_empty() {
            return false;
        }
        self.pending.is_full(&self.limits)
            || self
                .pending
                .deadline(&self.limits)
                .is_some_and(|deadline| deadline <= now)
    }

    /// Sends the next piece of `window[index]`. The request owns what it
    /// needs, so encoding and sending run while the worker reads, cuts and
    /// sends the next batches.
    fn start(&mut self, index: usize) {
        let Some(slot) = self.window.get_mut(index) else {
            return;
        };
        let Some(range) = slot.todo.pop() else {
            return;
        };
        slot.sending = true;
        let seq = slot.seq;
        let lines = Arc::clone(&slot.lines);
        let sink = Arc::clone(&self.parts.sink);
        let timeout = self.parts.settings.send_timeout;
        let epoch = self.epoch;
        self.in_flight.push(Box::pin(async move {
            let result = send(sink.as_ref(), &lines[range.clone()], timeout).await;
            Answer {
                seq,
                range,
                epoch,
                result,
            }
        }));
    }

    /// When the loop must look again without an answer, an append or
    /// shutdown: a backoff or hold-off ends while something waits to be
    /// sent, a batch's linger ends while the window has room, or a failed
    /// queue may be read again.
    fn next_wake(&self) -> Option<Instant> {
        if self.stopping {
            return None;
        }
        let now = Instant::now();
        let window_room = self.window.len() < self.max_in_flight;
        let waiting = self
            .window
            .iter()
            .any(|slot| !slot.sending && !slot.todo.is_empty())
            || (window_room && !self.pending.is_empty());
        let gate = self.not_before.filter(|at| *at > now && waiting);
        let linger = if window_room && !self.pending.is_full(&self.limits) {
            self.pending.deadline(&self.limits).filter(|at| *at > now)
        } else {
            None
        };
        let read = self.read_not_before.filter(|at| *at > now);
        [gate, linger, read].into_iter().flatten().min()
    }

    /// Takes the answer to one request: counts it, decides what the piece
    /// needs next, and commits the contiguous prefix of the window that is
    /// accepted or dropped.
    fn settle(&mut self, answer: Answer) {
        let Some(index) = self.window.iter().position(|slot| slot.seq == answer.seq) else {
            return;
        };
        let current = answer.epoch == self.epoch;
        let lines = Arc::clone(&self.window[index].lines);
        let piece = &lines[answer.range.clone()];
        let mut done = false;
        match answer.result {
            Ok(outcome) => {
                self.accepted(piece, outcome, current);
                done = true;
            }
            Err(error) => {
                self.failed(&error, piece.len());
                match action_for(&error, piece.len()) {
                    Action::Retry { retry_after } => {
                        let route = &self.parts.route;
                        metrics::retried(&route.agent_id, route.kind.name(), piece.len() as u64);
                        self.window[index].todo.push(answer.range.clone());
                        if current {
                            let delay = self.backoff.fail(retry_after);
                            self.fail_route(delay);
                            self.parts.status.set_state(RouteState::Retrying);
                        } else if let Some(after) = retry_after {
                            let delay = self.parts.settings.retry.honour(after);
                            self.hold(Instant::now() + delay);
                        }
                    }
                    Action::Split => {
                        let range = answer.range.clone();
                        let mid = range.start + range.len() / 2;
                        let todo = &mut self.window[index].todo;
                        todo.push(mid..range.end);
                        todo.push(range.start..mid);
                    }
                    Action::Drop => {
                        self.drop_rejected(piece, &error);
                        done = true;
                    }
                    Action::ParkUnauthorized | Action::ParkConfig => {
                        self.window[index].todo.push(answer.range.clone());
                        if current {
                            self.backoff.fail(None);
                            self.fail_route(self.parts.settings.park_interval);
                            let state = if matches!(error, SinkError::Unauthorized { .. }) {
                                RouteState::Unauthorized
                            } else {
                                RouteState::Config
                            };
                            self.parts.status.set_state(state);
                            if let Some(engine) = self.parts.engine.upgrade() {
                                // May retire this worker for one with newer
                                // credentials: it stops at its next look.
                                engine.parked(&self.parts.route);
                            }
                        }
                    }
                }
            }
        }
        let slot = &mut self.window[index];
        slot.sending = false;
        if done {
            slot.done = answer.range.end;
        }
        self.commit_prefix();
    }

    /// A failure that earns a wait: no request before `delay` has passed,
    /// then one probe at a time until one is accepted.
    fn fail_route(&mut self, delay: Duration) {
        self.epoch += 1;
        self.probing = true;
        self.hold(Instant::now() + delay);
    }

    /// No request before `until` (a later hold already set stays).
    fn hold(&mut self, until: Instant) {
        self.not_before = Some(match self.not_before {
            Some(at) if at > until => at,
            _ => until,
        });
    }

    /// Commits through the last line of the window's contiguous prefix that
    /// was accepted or dropped, and releases the finished batches. A batch
    /// accepted before an earlier one is held here until the earlier one is.
    fn commit_prefix(&mut self) {
        let mut through = None;
        while let Some(front) = self.window.front() {
            if let Some(last) = front.done.checked_sub(1).and_then(|i| front.lines.get(i)) {
                through = Some(last.cursor);
            }
            if !front.finished() {
                break;
            }
            self.window.pop_front();
        }
        if let Some(through) = through {
            if self.committed.is_none_or(|c| through > c) {
                self.commit(through);
                self.committed = Some(through);
            }
        }
    }

    fn accepted(&mut self, lines: &[QueuedLine], outcome: SendOutcome, current: bool) {
        let route = &self.parts.route;
        let dest = route.kind.name();
        let sent = lines.len() as u64;
        metrics::delivered(&route.agent_id, dest, sent);
        // One latency sample per request, from its oldest line: the worst
        // latency of the request, without one histogram sample per line.
        if let Some(oldest) = lines.iter().map(|l| l.line.timestamp_ns).min() {
            metrics::delivery_latency(dest, since_unix_nanos(oldest));
        }
        let rejected = outcome.rejected.min(sent);
        if rejected > 0 {
            metrics::dropped(&route.agent_id, "rejected_by_vendor", rejected);
            tracing::warn!(route = %route, lines = rejected,
                reason = outcome.rejected_reason.as_deref().unwrap_or("not given"),
                "vendor refused lines of an accepted request; they are dropped");
        }
        // A wrong header must not park the route for days: bounded like
        // `Retry-After`. It holds every request of the route, not only the
        // next one.
        if let Some(wait) = outcome.hold_off {
            let wait = wait.min(self.parts.settings.retry.retry_after_cap);
            self.hold(Instant::now() + wait);
        }
        self.parts.status.update(|s| {
            s.delivered_lines += sent - rejected;
            s.delivered_requests += 1;
            s.dropped_lines += rejected;
            if current {
                s.consecutive_failures = 0;
            }
            s.last_success_unix = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .ok()
                .map(|d| d.as_secs());
        });
        // An answer to a request sent before the route's last failure says
        // nothing about the vendor now: only a current one ends the backoff.
        if current {
            self.backoff.reset();
            self.probing = false;
            self.parts.status.set_state(RouteState::Delivering);
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
        metrics::dropped(&route.agent_id, "rejected_by_vendor", count);
        if let Some(line) = lines.first() {
            tracing::warn!(route = %route, segment = line.cursor.segment, index = line.cursor.index,
                bytes = line.line.data.len(), error = %error,
                "vendor rejected a line for good; it is dropped");
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

    /// Records the lines not yet accepted, the route's oldest undelivered
    /// line, and whether it is idle.
    fn report(&self) {
        let in_window: usize = self
            .window
            .iter()
            .map(|slot| slot.lines.len() - slot.done)
            .sum();
        let pending = (self.pending.len() + in_window) as u64;
        let oldest = self
            .window
            .iter()
            .find(|slot| !slot.finished())
            .and_then(|slot| slot.lines.get(slot.done))
            .or_else(|| self.pending.first())
            .map(|line| line.line.timestamp_ns);
        self.parts.status.update(|s| {
            s.pending_lines = pending;
            s.oldest_undelivered_ns = oldest;
        });
        if self.stopping {
            return;
        }
        if self.window.is_empty() && self.pending.is_empty() {
            self.parts.status.set_state(RouteState::Idle);
        } else if !self.probing {
            self.parts.status.set_state(RouteState::Delivering);
        }
    }
}

/// One attempt, bounded by the engine's send timeout so a hung vendor
/// cannot hold its route forever.
async fn send(
    sink: &dyn Sink,
    lines: &[QueuedLine],
    limit: Duration,
) -> Result<SendOutcome, SinkError> {
    match tokio::time::timeout(limit, sink.send(lines)).await {
        Ok(result) => result,
        Err(_) => Err(SinkError::Retryable {
            reason: format!("no answer within {}s", limit.as_secs()),
            retry_after: None,
        }),
    }
}

/// Sleeps until `at`, or forever when there is nothing to wake for.
async fn sleep_until_some(at: Option<Instant>) {
    match at {
        Some(at) => sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Waits for lines appended to the route's agent.
async fn changed(changes: &mut watch::Receiver<u64>) {
    if changes.changed().await.is_err() {
        // The signal is gone (queue shutting down or replaced): poll.
        sleep(POLL_INTERVAL).await;
    }
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
