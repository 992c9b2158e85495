//! logdrain-test-intake: vendor test intakes for vendors that have no local
//! peer.
//!
//! A test intake checks what the vendor checks and answers the way the
//! vendor answers, errors included. It records what it accepted, and tests
//! can script faults (a 500 for the next two requests, a 429 with
//! `Retry-After`). All intakes share one HTTP server:
//!
//! | vendor | route | module |
//! |---|---|---|
//! | Datadog | `POST /api/v2/logs` | [`datadog`] |
//! | New Relic | `POST /log/v1` | [`newrelic`] |
//! | Sentry | `POST /api/{project_id}/envelope/` | [`sentry`] |
//! | control | `/_intake/...` | [`control`] |
//!
//! Every accepted entry's read → accepted latency (its timestamp against
//! the request's arrival) goes into a bounded histogram per vendor
//! ([`latency`]), reported in `GET /_intake/stats` with the times each
//! vendor first and last accepted an entry. For benchmarks,
//! [`IntakeConfig::count_only`] serves the counting intake (`count`) on the
//! same paths instead of the fake vendors: it counts and times lines and
//! checks nothing.
//!
//! Use it in-process with [`Intake::start`], or as the
//! `logdrain-test-intake` binary (for `docker compose`), which serves the
//! same routes. Shared recording lives in [`store`] and fault injection in
//! [`control`]. A vendor module only checks its requests (read into
//! `serde_json::Value`s) and shapes its answers, so a new vendor is one more
//! module of the same shape.
//!
//! This crate must not be used to deliver real logs: it keeps everything in
//! memory (capped, see [`IntakeConfig`]) and forgets it on exit.
#![forbid(unsafe_code)]

mod body;
pub mod control;
mod count;
pub mod datadog;
mod handler;
pub mod latency;
pub mod newrelic;
pub mod sentry;
pub mod store;

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use axum::Router;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub use control::{Fault, FaultError};
pub use datadog::{DatadogConfig, DatadogLimits};
pub use latency::{Latency, LatencySummary};
pub use newrelic::{NewRelicConfig, NewRelicLimits};
pub use sentry::{SentryConfig, SentryLimits};
pub use store::{AuthForm, Entry, Records, RequestRecord, Stats, VendorStats};

use store::Store;

/// A vendor that has a test intake.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Vendor {
    Datadog,
    Sentry,
    NewRelic,
}

impl Vendor {
    pub const ALL: [Vendor; 3] = [Vendor::Datadog, Vendor::Sentry, Vendor::NewRelic];

    /// Lowercase name, as used in the control API's paths.
    pub fn name(self) -> &'static str {
        match self {
            Vendor::Datadog => "datadog",
            Vendor::NewRelic => "newrelic",
            Vendor::Sentry => "sentry",
        }
    }

    /// When the shim read `entry` (its timestamp), in milliseconds since
    /// the epoch; `None` when the entry carries no usable timestamp.
    pub fn entry_time_ms(self, entry: &Value) -> Option<i64> {
        match self {
            Vendor::Datadog => datadog::entry_time_ms(entry),
            Vendor::NewRelic => newrelic::entry_time_ms(entry),
            Vendor::Sentry => sentry::entry_time_ms(entry),
        }
    }

    pub fn from_name(name: &str) -> Option<Vendor> {
        Vendor::ALL.into_iter().find(|v| v.name() == name)
    }
}

/// Configuration of one vendor's intake.
#[derive(Clone, Default)]
pub struct VendorConfig<L> {
    /// Accepted keys (API keys, client tokens, public keys, license keys).
    /// None accepted = every request with a credential gets 403.
    pub keys: Vec<String>,
    pub limits: L,
}

impl<L: std::fmt::Debug> std::fmt::Debug for VendorConfig<L> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VendorConfig")
            .field("keys", &format_args!("<{} redacted>", self.keys.len()))
            .field("limits", &self.limits)
            .finish()
    }
}

/// Configuration of all intakes.
#[derive(Clone, Debug)]
pub struct IntakeConfig {
    pub datadog: DatadogConfig,
    pub newrelic: NewRelicConfig,
    pub sentry: SentryConfig,
    /// Accepted entries kept (all vendors); later ones are counted in
    /// [`Stats::dropped_entries`].
    pub max_recorded_entries: usize,
    /// Answered requests kept; later ones are counted in
    /// [`Stats::dropped_requests`].
    pub max_recorded_requests: usize,
    /// Serve the counting intake instead of the fake vendors (benchmarks):
    /// lines are counted and timed, never checked or kept.
    pub count_only: bool,
}

impl Default for IntakeConfig {
    fn default() -> Self {
        IntakeConfig {
            datadog: DatadogConfig::default(),
            newrelic: NewRelicConfig::default(),
            sentry: SentryConfig::default(),
            max_recorded_entries: 10_000_000,
            max_recorded_requests: 1_000_000,
            count_only: false,
        }
    }
}

impl IntakeConfig {
    /// Default limits, accepting these Datadog API keys / client tokens.
    pub fn with_datadog_keys<I, K>(keys: I) -> Self
    where
        I: IntoIterator<Item = K>,
        K: Into<String>,
    {
        let mut config = IntakeConfig::default();
        config.datadog.keys = keys.into_iter().map(Into::into).collect();
        config
    }
}

/// Errors of starting, stopping or waiting on an intake.
#[derive(Debug, thiserror::Error)]
pub enum IntakeError {
    #[error("cannot listen on {addr}: {source} (choose a free address, or port 0)")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: io::Error,
    },
    #[error("the intake server stopped with an error: {0}")]
    Serve(#[source] io::Error),
    #[error("the intake server task did not finish cleanly: {0}")]
    Task(#[source] tokio::task::JoinError),
    #[error("waited {waited:?} for {what}")]
    WaitTimedOut { waited: Duration, what: String },
}

/// The router serving every intake and the control API over `store`.
fn router(store: Store, config: &IntakeConfig) -> Router {
    let vendors = if config.count_only {
        count::routes()
    } else {
        Router::new()
            .merge(datadog::routes(config.datadog.limits.clone()))
            .merge(newrelic::routes(config.newrelic.limits.clone()))
            .merge(sentry::routes(config.sentry.limits.clone()))
    };
    vendors.merge(control::routes()).with_state(store)
}

/// A running intake server. Dropping it stops the server (gracefully, in
/// the background); [`Intake::shutdown`] stops it and waits.
pub struct Intake {
    store: Store,
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<io::Result<()>>>,
}

impl Intake {
    /// Starts all intakes on an ephemeral port of 127.0.0.1.
    pub async fn start(config: IntakeConfig) -> Result<Intake, IntakeError> {
        Intake::start_on(SocketAddr::from(([127, 0, 0, 1], 0)), config).await
    }

    /// Starts all intakes on `addr`.
    pub async fn start_on(addr: SocketAddr, config: IntakeConfig) -> Result<Intake, IntakeError> {
        let bind_error = |source| IntakeError::Bind { addr, source };
        let listener = TcpListener::bind(addr).await.map_err(bind_error)?;
        let addr = listener.local_addr().map_err(bind_error)?;
        let store = Store::new(&config);
        store.set_keys(Vendor::NewRelic, &config.newrelic.keys);
        let app = router(store.clone(), &config);
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(serve(listener, app, async {
            // A dropped sender also means stop.
            let _ = stopped.await;
        }));
        Ok(Intake {
            store,
            addr,
            stop: Some(stop),
            task: Some(task),
        })
    }

    /// The address the intakes listen on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://<addr>`, the base URL of every intake.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The Datadog logs intake URL (`<base>/api/v2/logs`).
    pub fn datadog_url(&self) -> String {
        format!("{}{}", self.base_url(), datadog::PATH)
    }

    /// Scripts a fault after the ones already injected.
    pub fn inject(&self, fault: Fault) -> Result<(), FaultError> {
        fault.validate()?;
        self.store.inject(fault);
        Ok(())
    }

    /// Removes every scripted fault.
    pub fn clear_faults(&self) {
        self.store.clear_faults();
    }

    /// Replaces the accepted keys of `vendor`.
    pub fn set_keys<I, K>(&self, vendor: Vendor, keys: I)
    where
        I: IntoIterator<Item = K>,
        K: Into<String>,
    {
        let keys: Vec<String> = keys.into_iter().map(Into::into).collect();
        self.store.set_keys(vendor, &keys);
    }

    /// Accepted entries of `vendor` with their request metadata.
    pub fn entries(&self, vendor: Vendor) -> Vec<Entry> {
        self.store
            .read(|records| records.entries(vendor).cloned().collect())
    }

    /// The accepted Datadog log objects, in arrival order.
    pub fn datadog_entries(&self) -> Vec<Value> {
        self.store.read(|records| {
            records
                .entries(Vendor::Datadog)
                .map(|e| e.value.clone())
                .collect()
        })
    }

    /// Every answered request, in arrival order.
    pub fn requests(&self) -> Vec<RequestRecord> {
        self.store.read(|records| records.requests().to_vec())
    }

    /// Counters per vendor and status.
    pub fn stats(&self) -> Stats {
        self.store.read(|records| records.stats().clone())
    }

    /// Runs `f` on the records without copying them.
    pub fn read<T>(&self, f: impl FnOnce(&Records) -> T) -> T {
        self.store.read(f)
    }

    /// Forgets requests, entries, counters and faults; keeps the keys.
    pub fn reset(&self) {
        self.store.reset();
    }

    /// Waits until `done` holds for the records, re-checking after every
    /// answered request, for at most `timeout` (on tokio's clock).
    pub async fn wait_for<F>(&self, timeout: Duration, done: F) -> Result<(), IntakeError>
    where
        F: FnMut(&Records) -> bool,
    {
        self.wait_until(timeout, done, || "the condition to hold".to_string())
            .await
    }

    /// Waits until at least `count` entries of `vendor` arrived, and returns
    /// all of them.
    pub async fn wait_for_entries(
        &self,
        vendor: Vendor,
        count: usize,
        timeout: Duration,
    ) -> Result<Vec<Entry>, IntakeError> {
        let enough = |records: &Records| records.entry_count(vendor) >= count;
        let describe = || {
            let arrived = self.store.read(|r| r.entry_count(vendor));
            format!("{count} {} entries ({arrived} arrived)", vendor.name())
        };
        self.wait_until(timeout, enough, describe).await?;
        Ok(self.entries(vendor))
    }

    async fn wait_until<F, D>(
        &self,
        timeout: Duration,
        mut done: F,
        describe: D,
    ) -> Result<(), IntakeError>
    where
        F: FnMut(&Records) -> bool,
        D: FnOnce() -> String,
    {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut changed = self.store.subscribe();
        loop {
            // Mark the current version seen before checking, so a request
            // recorded after the check wakes the wait below.
            changed.borrow_and_update();
            if self.store.read(&mut done) {
                return Ok(());
            }
            match tokio::time::timeout_at(deadline, changed.changed()).await {
                Ok(Ok(())) => {}
                // The store (and its sender) lives as long as `self`.
                Ok(Err(_)) | Err(_) => {
                    return Err(IntakeError::WaitTimedOut {
                        waited: timeout,
                        what: describe(),
                    })
                }
            }
        }
    }

    /// Stops the server and waits until it has closed its connections.
    pub async fn shutdown(mut self) -> Result<(), IntakeError> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        match self.task.take() {
            Some(task) => task
                .await
                .map_err(IntakeError::Task)?
                .map_err(IntakeError::Serve),
            None => Ok(()),
        }
    }
}

impl Drop for Intake {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// Serves `app` on `listener` until `shutdown` completes.
async fn serve(
    listener: TcpListener,
    app: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
}
