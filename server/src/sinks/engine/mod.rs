//! The delivery engine: one worker per route, written once for every vendor.
//!
//! [`Engine`] owns the set of routes being delivered. [`Engine::ensure_route`]
//! starts a route's worker (idempotent); parked routes move onto newer
//! credentials (below); each worker runs in its own task
//! under a small supervisor that restarts it from the committed cursor if it
//! ever panics. Routes share nothing that is held across an `.await` (no
//! lock, no bounded channel), so a slow or failing vendor never delays
//! another route. [`Engine::statuses`] reports every route without secrets,
//! and [`Engine::shutdown`] stops taking new batches and lets in-flight sends
//! finish within a grace period.
//!
//! The pieces, one job each:
//! * [`source`]: the queue operations the engine uses (and their impl for
//!   [`crate::queue::Queue`]).
//! * [`batch`]: filling a batch by the sink's limits, with a maximum linger.
//! * [`retry`]: backoff with jitter, `Retry-After`, error class → action.
//! * [`status`]: what an operator sees per route.
//! * `worker`: the loop of one route.
//!
//! Behaviour of a route, whatever the vendor:
//!
//! | vendor answer | what the route does |
//! |---|---|
//! | accepted | commit through the last line, count `delivered`, sample latency of the oldest line |
//! | accepted, but hold off (`SendOutcome::hold_off`) | as accepted, then no send on this route until the hold-off (capped like `Retry-After`) has passed |
//! | retryable (network, 408, 429, 5xx) | count `retried`, wait `Retry-After` (at least the minimum backoff) or the jittered backoff, send the same lines again |
//! | payload rejected (400, 413) | split the batch in halves until one line is rejected alone; drop and count only that line |
//! | credentials refused (401, 403) | keep the lines, state `credentials_rejected`, try again after about `park_interval` (half to all of it), then slower, doubling up to 30 times it, each wait half random ([`RetryPolicy::parked`]) |
//! | sink misconfigured | keep the lines, state `invalid_secret`, try again like `credentials_rejected` |
//!
//! Credentials move forward only. Every route knows when the credentials it
//! delivers with were first seen (stored with the route). A parked route
//! (`credentials_rejected` or `invalid_secret`) adopts the credentials of another route of
//! the same agent and destination only when those were first seen later
//! than its own (a newer deployment) and have delivered since the gateway
//! started: it adopts when it parks, or when such newer credentials first
//! deliver (sink rebuilt, secrets and their first-seen time stored with the
//! route so a restart keeps them, worker restarted at once from its
//! committed cursor). A route whose own credentials are the newest stays
//! parked with its own error and keeps its lines; it never falls back to an
//! older deployment's credentials (another org or region). Routes that
//! deliver keep their own.
//!
//! Routes are bounded: [`Engine::check_route_limit`] refuses routes past
//! [`EngineSettings::max_routes_per_agent`], and [`Engine::expire_idle`]
//! removes routes that are parked or have delivered nothing once no stream
//! has carried them for [`EngineSettings::route_idle_expiry`] and their
//! lines are gone.
//!
//! Delivery is at least once: a line is committed only after its request
//! was accepted, so lines in flight at a crash are sent again.

pub mod batch;
pub mod late;
pub mod retry;
pub mod source;
pub mod status;
mod worker;

#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::task::JoinHandle;

pub use retry::RetryPolicy;
pub use source::Source;
pub use status::{RouteState, RouteStatus};

use crate::route::{RouteKey, Secrets};
use crate::shutdown::Shutdown;
use crate::sinks::{BuildSink, SecretError};
use status::StatusCell;
use worker::{Parts, Stop, Worker};

/// Engine knobs (same for every vendor).
#[derive(Clone, Debug)]
pub struct EngineSettings {
    /// Backoff after retryable failures.
    pub retry: RetryPolicy,
    /// First wait of a parked route (credentials refused or sink
    /// misconfigured); later waits grow ([`RetryPolicy::parked`]). Also the
    /// pause before restarting a worker that panicked.
    pub park_interval: Duration,
    /// Longest one send may take before it counts as a retryable failure.
    pub send_timeout: Duration,
    /// Most routes one agent may have (see [`Engine::check_route_limit`]).
    pub max_routes_per_agent: usize,
    /// How long a route that is parked or has delivered nothing stays
    /// after its last stream ended, once its lines are gone
    /// ([`Engine::expire_idle`]).
    pub route_idle_expiry: Duration,
}

/// Default of [`EngineSettings::route_idle_expiry`].
pub const DEFAULT_ROUTE_IDLE_EXPIRY: Duration = Duration::from_secs(60 * 60);

/// Default of [`EngineSettings::max_routes_per_agent`]: room for every
/// destination of a few overlapping deployments.
pub const DEFAULT_MAX_ROUTES_PER_AGENT: usize = 16;

impl Default for EngineSettings {
    fn default() -> Self {
        Self {
            retry: RetryPolicy::default(),
            park_interval: Duration::from_secs(60),
            send_timeout: Duration::from_secs(120),
            max_routes_per_agent: DEFAULT_MAX_ROUTES_PER_AGENT,
            route_idle_expiry: DEFAULT_ROUTE_IDLE_EXPIRY,
        }
    }
}

/// Why the engine refused something.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum EngineError {
    #[error("agent {agent_id} already has {known} routes and this stream would add {adding}, over the limit of {limit} routes per agent (--max-routes-per-agent / LOGDRAIN_MAX_ROUTES_PER_AGENT); each distinct set of destination credentials is a route: fix the refused or invalid credentials of this agent's deployments (a route parked or without deliveries expires an hour after its last stream ended, once its lines are gone) or raise the limit")]
    TooManyRoutes {
        agent_id: String,
        known: usize,
        adding: usize,
        limit: usize,
    },
}

/// What [`Engine::shutdown`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ShutdownReport {
    /// Workers that stopped on their own within the grace period.
    pub finished: usize,
    /// Workers still sending at the end of the grace period, aborted.
    /// Their unaccepted lines stay queued.
    pub aborted: usize,
}

struct RouteEntry {
    status: StatusCell,
    /// `None` when the route cannot deliver at all (its sink could not be
    /// built) or after shutdown took the task.
    task: Option<JoinHandle<()>>,
    /// Retires this route's current worker (when it adopts newer
    /// credentials).
    stop: Stop,
    /// The secrets the route delivers with: its own, or the newer ones it
    /// adopted. `Debug` of [`Secrets`] never shows values.
    secrets: Secrets,
    /// When `secrets` were first seen (Unix ms, 0 unknown): a route adopts
    /// only credentials first seen later.
    first_seen_ms: u64,
    /// The sink the worker sends with (`None` when it could not be built),
    /// lent to `test-send` so it uses the route's pooled connections.
    sink: Option<Arc<dyn crate::sinks::Sink>>,
    /// Live streams that carry this route ([`Engine::attach`]).
    streams: usize,
    /// Since when no stream carries it.
    idle_since: tokio::time::Instant,
}

struct Inner<S> {
    source: Arc<S>,
    settings: EngineSettings,
    sinks: Box<dyn BuildSink>,
    stop: Stop,
    routes: Mutex<HashMap<RouteKey, RouteEntry>>,
    /// The last first-seen time handed out (Unix ms), so routes opened in
    /// the same millisecond, or after the clock stepped back, still order.
    clock: AtomicU64,
    /// Held while routes are admitted or expired, so a stream's limit check
    /// and its routes, and an expiry, never interleave.
    admission: Mutex<()>,
    /// Lines each route sent with the time of sending since the last
    /// [`Engine::take_restamps`], with the route's window.
    restamps: Mutex<HashMap<RouteKey, (late::Restamps, Duration)>>,
}

impl<S: Source> Inner<S> {
    fn routes(&self) -> MutexGuard<'_, HashMap<RouteKey, RouteEntry>> {
        // Entries are inserted whole, so a panic elsewhere cannot leave the
        // map inconsistent.
        self.routes
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn add_restamps(&self, route: &RouteKey, restamps: late::Restamps, max_age: Duration) {
        // Counters only: a panic elsewhere cannot leave them inconsistent.
        let mut all = self
            .restamps
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let entry = all
            .entry(route.clone())
            .or_insert((late::Restamps::default(), max_age));
        entry.0.merge(restamps);
        entry.1 = max_age;
    }

    fn parts(
        self: &Arc<Self>,
        route: &RouteKey,
        sink: Arc<dyn crate::sinks::Sink>,
        status: &StatusCell,
        stop: &Stop,
    ) -> Parts<S> {
        Parts {
            route: route.clone(),
            source: Arc::clone(&self.source),
            sink,
            settings: self.settings.clone(),
            status: status.clone(),
            stop: stop.clone(),
            engine: Arc::downgrade(self),
        }
    }

    /// A first-seen time (Unix ms) later than every one handed out or
    /// restored before.
    fn next_first_seen(&self) -> u64 {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        let previous = self
            .clock
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |last| {
                Some(now.max(last.saturating_add(1)))
            })
            .unwrap_or_else(|last| last);
        now.max(previous.saturating_add(1))
    }

    /// `route` was just parked (credentials refused, or no sink): it adopts
    /// the credentials of the newest route of the same agent and destination
    /// that were first seen after its own and have delivered.
    fn parked(self: &Arc<Self>, route: &RouteKey) {
        if self.stop.is_triggered() {
            return;
        }
        let mut routes = self.routes();
        let Some((own, own_since)) = routes
            .get(route)
            .map(|entry| (entry.secrets.clone(), entry.first_seen_ms))
        else {
            return;
        };
        let newest = routes
            .iter()
            .filter(|(key, entry)| {
                *key != route
                    && key.agent_id == route.agent_id
                    && key.kind == route.kind
                    && entry.first_seen_ms > own_since
                    && entry.secrets != own
                    && delivers_with_own(entry)
            })
            .max_by_key(|(_, entry)| entry.first_seen_ms)
            .map(|(key, entry)| (key.clone(), entry.secrets.clone(), entry.first_seen_ms));
        if let Some((from, secrets, since)) = newest {
            if let Some(entry) = routes.get_mut(route) {
                self.adopt(route, entry, &from, &secrets, since);
            }
        }
    }

    /// `route` just delivered for the first time since its worker started:
    /// every parked route of the same agent and destination whose
    /// credentials were first seen before its own adopts them.
    fn delivered(self: &Arc<Self>, route: &RouteKey) {
        if self.stop.is_triggered() {
            return;
        }
        let mut routes = self.routes();
        let Some((secrets, since)) = routes
            .get(route)
            .filter(|entry| delivers_with_own(entry))
            .map(|entry| (entry.secrets.clone(), entry.first_seen_ms))
        else {
            return;
        };
        for (key, entry) in routes.iter_mut() {
            if key != route
                && key.agent_id == route.agent_id
                && key.kind == route.kind
                && entry.first_seen_ms < since
                && entry.secrets != secrets
                && entry.status.snapshot().state.is_parked()
            {
                self.adopt(key, entry, route, &secrets, since);
            }
        }
    }

    /// Moves a parked route onto the credentials of route `from` (see
    /// [`Engine::offer_credentials`]).
    fn adopt(
        self: &Arc<Self>,
        route: &RouteKey,
        entry: &mut RouteEntry,
        from: &RouteKey,
        secrets: &Secrets,
        first_seen_ms: u64,
    ) {
        let sink = match self.sinks.build(route, secrets) {
            Ok(sink) => sink,
            Err(error) => {
                tracing::warn!(route = %route, newer_cred_id = %from.cred_id, error = %error,
                    "the newer credentials build no sink either; the route stays parked with its lines");
                return;
            }
        };
        if let Err(error) = self.source.put_route(route, secrets, first_seen_ms) {
            // Delivery goes ahead in memory. After a restart the route parks
            // again and adopts again when the newer stream reconnects.
            tracing::warn!(route = %route, error = %error,
                "could not store the adopted credentials; they apply until the gateway restarts");
        }
        tracing::info!(route = %route, newer_cred_id = %from.cred_id,
            "route parked with refused credentials adopts a newer deployment's; replaying its backlog with them");
        entry.stop.route.trigger();
        let previous = entry.task.take();
        let stop = self.stop.for_route();
        let status = entry.status.clone();
        let parts = self.parts(route, Arc::clone(&sink), &status, &stop);
        entry.sink = Some(sink);
        entry.stop = stop;
        entry.secrets = secrets.clone();
        entry.first_seen_ms = first_seen_ms;
        let cred_id = from.cred_id.clone();
        entry.task = Some(tokio::spawn(async move {
            // The retired worker stops at its next wait; the new one starts
            // from the cursor it committed, so no line is skipped.
            if let Some(previous) = previous {
                let _ = previous.await;
            }
            status.update(|s| {
                s.consecutive_failures = 0;
                s.last_error = None;
            });
            mark_adopted(&status, &cred_id, first_seen_ms);
            status.set_state(RouteState::Starting);
            supervise(parts).await;
        }));
    }
}

/// Whether a route's own credentials have delivered since start and are
/// not refused now: only those may be handed to an older route.
fn delivers_with_own(entry: &RouteEntry) -> bool {
    let status = entry.status.snapshot();
    !status.state.is_parked()
        && status.adopted_cred_id.is_none()
        && status.last_success_unix.is_some()
}

/// Delivers every route's queued lines to its vendor. Cheap to clone.
pub struct Engine<S> {
    inner: Arc<Inner<S>>,
}

impl<S> Clone for Engine<S> {
    fn clone(&self) -> Self {
        Self {
            inner: Arc::clone(&self.inner),
        }
    }
}

impl<S: Source> Engine<S> {
    /// `sinks` builds each route's sink (normally a
    /// [`crate::sinks::SinkFactory`]). Workers stop taking new batches when
    /// `shutdown` triggers or [`Engine::shutdown`] is called.
    pub fn new(
        source: S,
        settings: EngineSettings,
        sinks: impl BuildSink,
        shutdown: Shutdown,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                source: Arc::new(source),
                settings,
                sinks: Box::new(sinks),
                stop: Stop {
                    process: shutdown,
                    engine: Shutdown::new(),
                    route: Shutdown::new(),
                },
                routes: Mutex::new(HashMap::new()),
                clock: AtomicU64::new(0),
                admission: Mutex::new(()),
                restamps: Mutex::new(HashMap::new()),
            }),
        }
    }

    fn routes(&self) -> MutexGuard<'_, HashMap<RouteKey, RouteEntry>> {
        self.inner.routes()
    }

    /// Starts delivering `route` if it is not already known. Must be called
    /// inside a Tokio runtime.
    ///
    /// If the route's sink cannot be built from `secrets` (an invalid region,
    /// an unsupported destination), the route is parked in state `invalid_secret`
    /// with the reason in its status, and its lines stay queued (until it
    /// adopts newer credentials, see the module docs). The secrets count as
    /// first seen now.
    pub fn ensure_route(&self, route: RouteKey, secrets: Secrets) {
        let first_seen_ms = self.first_seen(&route);
        self.ensure_route_since(route, secrets, first_seen_ms);
    }

    /// As [`Engine::ensure_route`], for secrets first seen at
    /// `first_seen_ms` (Unix ms, 0 unknown; as stored with the route).
    pub fn ensure_route_since(&self, route: RouteKey, secrets: Secrets, first_seen_ms: u64) {
        if self.inner.stop.is_triggered() {
            return;
        }
        self.inner.clock.fetch_max(first_seen_ms, Ordering::Relaxed);
        let mut routes = self.routes();
        if routes.contains_key(&route) {
            return;
        }
        let status = StatusCell::new(&route);
        let stop = self.inner.stop.for_route();
        let (task, sink) = match self.inner.sinks.build(&route, &secrets) {
            Ok(sink) => (
                Some(tokio::spawn(supervise(self.inner.parts(
                    &route,
                    Arc::clone(&sink),
                    &status,
                    &stop,
                )))),
                Some(sink),
            ),
            Err(error) => {
                tracing::warn!(route = %route, error = %error,
                    "route cannot deliver; its lines are kept");
                status.update(|s| s.last_error = Some(error.to_string()));
                status.set_state(RouteState::InvalidSecret);
                (None, None)
            }
        };
        let parked = task.is_none();
        routes.insert(
            route.clone(),
            RouteEntry {
                status,
                task,
                stop,
                secrets,
                first_seen_ms,
                sink,
                streams: 0,
                idle_since: tokio::time::Instant::now(),
            },
        );
        drop(routes);
        if parked {
            self.inner.parked(&route);
        }
    }

    /// The secrets a known route delivers with, which differ from the ones
    /// its credential id was made from once it adopted newer credentials.
    /// A stream reopening such a route must store these, not its own
    /// refused ones, so the adoption survives a restart.
    pub fn current_secrets(&self, route: &RouteKey) -> Option<Secrets> {
        self.routes().get(route).map(|entry| entry.secrets.clone())
    }

    /// Held while a stream checks its agent's route limit, stores its
    /// routes and attaches to them; [`Engine::expire_idle`] holds it too.
    pub fn admission(&self) -> MutexGuard<'_, ()> {
        // Guards no data of its own.
        self.inner
            .admission
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// A stream carrying `route` opened: the route does not expire while
    /// any does.
    pub fn attach(&self, route: &RouteKey) {
        if let Some(entry) = self.routes().get_mut(route) {
            entry.streams += 1;
        }
    }

    /// A stream carrying `route` ended.
    pub fn detach(&self, route: &RouteKey) {
        if let Some(entry) = self.routes().get_mut(route) {
            entry.streams = entry.streams.saturating_sub(1);
            if entry.streams == 0 {
                entry.idle_since = tokio::time::Instant::now();
            }
        }
    }

    /// Removes routes that are parked or have delivered nothing since
    /// start, that no stream has carried for
    /// [`EngineSettings::route_idle_expiry`], and whose lines are gone (none
    /// left to deliver, and no queued line tagged with them): the worker
    /// stops and the stored record goes. A stream that brings the same
    /// credentials again makes a new route. Returns the routes removed.
    pub fn expire_idle(&self) -> Vec<RouteKey> {
        let _admission = self.admission();
        let expiry = self.inner.settings.route_idle_expiry;
        let now = tokio::time::Instant::now();
        let candidates: Vec<RouteKey> = self
            .routes()
            .iter()
            .filter(|(_, entry)| {
                let status = entry.status.snapshot();
                entry.streams == 0
                    && now.saturating_duration_since(entry.idle_since) >= expiry
                    && (status.state.is_parked() || status.last_success_unix.is_none())
            })
            .map(|(key, _)| key.clone())
            .collect();
        let source = &self.inner.source;
        let mut removed = Vec::new();
        for key in candidates {
            let waiting = source
                .committed(&key)
                .and_then(|after| source.read(&key, after, 1, 1));
            match waiting {
                Ok(lines) if lines.is_empty() => {}
                Ok(_) => continue,
                Err(error) => {
                    tracing::debug!(route = %key, %error, "cannot tell whether an idle route has lines; kept");
                    continue;
                }
            }
            match source.remove_route(&key) {
                Ok(true) => {}
                Ok(false) => continue,
                Err(error) => {
                    tracing::warn!(route = %key, %error, "could not remove an expired route; kept");
                    continue;
                }
            }
            if let Some(entry) = self.routes().remove(&key) {
                entry.stop.route.trigger();
                entry.status.set_state(RouteState::Stopped);
                tracing::info!(route = %key, idle = ?expiry,
                    "route parked or without deliveries, idle and without lines: expired");
                removed.push(key);
            }
        }
        removed
    }

    /// Runs [`Engine::expire_idle`] every tenth of the idle expiry (at
    /// most every minute) until shutdown.
    pub fn spawn_expiry(&self) -> JoinHandle<()> {
        let engine = self.clone();
        let every = (self.inner.settings.route_idle_expiry / 10)
            .clamp(Duration::from_secs(1), Duration::from_secs(60));
        tokio::spawn(async move {
            while engine.inner.stop.sleep(every).await.is_ok() {
                engine.expire_idle();
            }
        })
    }

    /// Whether `agent_id` may have `routes` too: refused when the routes
    /// among them the engine does not know yet would take the agent over
    /// [`EngineSettings::max_routes_per_agent`]. Known routes always pass.
    /// The caller serialises the check with the [`Engine::ensure_route`]
    /// calls that follow it.
    pub fn check_route_limit(
        &self,
        agent_id: &str,
        routes: &[RouteKey],
    ) -> Result<(), EngineError> {
        let known_routes = self.routes();
        let known = known_routes
            .keys()
            .filter(|key| key.agent_id == agent_id)
            .count();
        let adding = routes
            .iter()
            .filter(|route| !known_routes.contains_key(*route))
            .count();
        let limit = self.inner.settings.max_routes_per_agent;
        if adding > 0 && known + adding > limit {
            return Err(EngineError::TooManyRoutes {
                agent_id: agent_id.to_string(),
                known,
                adding,
                limit,
            });
        }
        Ok(())
    }

    /// The sink a known route's worker sends with, `None` when its secrets
    /// build none. For single requests outside the queue (`test-send`),
    /// which then share the route's connections.
    pub fn route_sink(&self, route: &RouteKey) -> Option<Arc<dyn crate::sinks::Sink>> {
        self.routes()
            .get(route)
            .and_then(|entry| entry.sink.clone())
    }

    /// When the secrets a known route delivers with were first seen (Unix
    /// ms); for a new route, a time later than every route known so far.
    pub fn first_seen(&self, route: &RouteKey) -> u64 {
        match self.routes().get(route) {
            Some(entry) => entry.first_seen_ms,
            None => self.inner.next_first_seen(),
        }
    }

    /// A stream opened with `secrets` for `offered_by` (made known with
    /// [`Engine::ensure_route`] first). A route that already delivers with
    /// exactly these secrets (it adopted them before a restart) is marked
    /// as such in its status. Adoption itself happens when a route parks or
    /// newer credentials deliver (module docs), never because a stream
    /// opened: credentials that have not delivered are never adopted.
    pub fn offer_credentials(&self, offered_by: &RouteKey, secrets: &Secrets) {
        if self.inner.stop.is_triggered() {
            return;
        }
        let routes = self.routes();
        let Some(since) = routes.get(offered_by).map(|entry| entry.first_seen_ms) else {
            return;
        };
        for (key, entry) in routes.iter() {
            if key != offered_by
                && key.agent_id == offered_by.agent_id
                && key.kind == offered_by.kind
                && entry.secrets == *secrets
            {
                mark_adopted(&entry.status, &offered_by.cred_id, since);
            }
        }
    }

    /// Whether a route with `secrets` could deliver: builds its sink as
    /// [`Engine::ensure_route`] would, and drops it. Starts nothing and
    /// changes no state (for `agent-shim --check`).
    pub fn check_secrets(&self, route: &RouteKey, secrets: &Secrets) -> Result<(), SecretError> {
        self.inner.sinks.build(route, secrets).map(drop)
    }

    /// Every known route with its oldest undelivered line: when the shim
    /// read it (Unix ns), or `None` when nothing waits. A route with a
    /// worker reports what the worker last read
    /// ([`RouteStatus::oldest_undelivered_ns`]); a route parked without one
    /// (its sink could not be built) has one line read from the source,
    /// since nothing moves its cursor.
    pub fn oldest_undelivered(&self) -> Vec<(RouteKey, Option<i64>)> {
        let mut oldest = Vec::new();
        let mut parked = Vec::new();
        for (key, entry) in self.routes().iter() {
            let status = entry.status.snapshot();
            if entry.task.is_none() && status.state == RouteState::InvalidSecret {
                parked.push(key.clone());
            } else {
                oldest.push((key.clone(), status.oldest_undelivered_ns));
            }
        }
        let source = &self.inner.source;
        for key in parked {
            let head = source
                .committed(&key)
                .and_then(|after| source.read(&key, after, 1, 1));
            match head {
                Ok(lines) => {
                    let head = lines.first().map(|line| line.line.timestamp_ns);
                    oldest.push((key, head));
                }
                Err(error) => {
                    tracing::debug!(route = %key, %error, "cannot read a parked route's oldest line");
                    oldest.push((key, None));
                }
            }
        }
        oldest
    }

    /// Lines each route sent with the time of sending since the last call
    /// ([`late`]), with the route's window; for the routes' notices.
    pub fn take_restamps(&self) -> Vec<(RouteKey, late::Restamps, Duration)> {
        let mut all = self
            .inner
            .restamps
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let mut taken: Vec<_> = all
            .drain()
            .map(|(route, (restamps, max_age))| (route, restamps, max_age))
            .collect();
        taken.sort_by(|a, b| a.0.cmp(&b.0));
        taken
    }

    /// The status of every known route, sorted by route.
    pub fn statuses(&self) -> Vec<RouteStatus> {
        let routes = self.routes();
        let mut keyed: Vec<(&RouteKey, RouteStatus)> = routes
            .iter()
            .map(|(key, entry)| (key, entry.status.snapshot()))
            .collect();
        keyed.sort_by(|a, b| a.0.cmp(b.0));
        keyed.into_iter().map(|(_, status)| status).collect()
    }

    /// Stops taking new batches, waits up to `grace` for sends in flight to
    /// finish (and be committed), then aborts what is left.
    pub async fn shutdown(&self, grace: Duration) -> ShutdownReport {
        self.inner.stop.engine.trigger();
        let tasks: Vec<JoinHandle<()>> = self
            .routes()
            .values_mut()
            .filter_map(|entry| entry.task.take())
            .collect();
        let aborts: Vec<_> = tasks.iter().map(JoinHandle::abort_handle).collect();
        let total = tasks.len();
        let aborted = match tokio::time::timeout(grace, futures::future::join_all(tasks)).await {
            Ok(_) => 0,
            Err(_) => {
                let running: Vec<_> = aborts.iter().filter(|a| !a.is_finished()).collect();
                for task in &running {
                    task.abort();
                }
                tracing::warn!(
                    workers = running.len(),
                    "delivery workers still sending after the grace period were aborted; \
                     their lines stay queued"
                );
                running.len()
            }
        };
        for entry in self.routes().values() {
            entry.status.set_state(RouteState::Stopped);
        }
        ShutdownReport {
            finished: total - aborted,
            aborted,
        }
    }
}

/// Shows in `status` that the route delivers with the credentials of the
/// route `cred_id` (a hash, never a secret), first seen at `first_seen_ms`.
fn mark_adopted(status: &StatusCell, cred_id: &str, first_seen_ms: u64) {
    let seen = std::time::UNIX_EPOCH + Duration::from_millis(first_seen_ms);
    let seen = humantime::format_rfc3339_seconds(seen);
    status.update(|s| {
        s.adopted_cred_id = Some(cred_id.to_string());
        s.note = Some(format!(
            "delivering with a newer deployment's credentials (cred id {cred_id}, first seen {seen}); this route's own were refused or invalid"
        ));
    });
}

/// Aborts the task when dropped, so aborting a supervisor stops its worker.
struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Runs a route's worker, restarting it from the committed cursor if it
/// panics (after `park_interval`).
async fn supervise<S: Source>(parts: Parts<S>) {
    loop {
        let mut worker = AbortOnDrop(tokio::spawn(Worker::new(parts.clone()).run()));
        match (&mut worker.0).await {
            Ok(()) => return,
            Err(e) if e.is_panic() => {
                tracing::error!(route = %parts.route,
                    "delivery worker panicked; restarting it from the committed cursor");
                parts.status.update(|s| {
                    s.last_error = Some("delivery worker panicked; restarting".to_string())
                });
                if parts
                    .stop
                    .sleep(parts.settings.park_interval)
                    .await
                    .is_err()
                {
                    return;
                }
            }
            Err(_) => return,
        }
    }
}
