//! Delivery to the tenant's vendors.
//!
//! This module owns the contract between the delivery engine and the vendors:
//! the [`Sink`] trait, the error a send can end with ([`SinkError`]), the
//! error a route's secrets can be rejected with ([`SecretError`], the shared
//! `logdrain::secrets` rules), and [`SinkFactory`], which builds the sink for
//! one route from its secrets.
//!
//! * [`engine`] does everything that is the same for every vendor, once:
//!   one worker per route, batching with a maximum linger, retries with
//!   backoff and `Retry-After`, splitting rejected payloads, parking routes
//!   whose credentials are refused, and per-route status.
//! * Each vendor folder ([`datadog`], [`cloudwatch`], [`sentry`],
//!   [`newrelic`]) describes its request and classifies its responses, and
//!   nothing else. Every folder has the same files: `config.rs` (secrets →
//!   endpoint), `request_builder.rs` (lines → request body), `service.rs`
//!   (the call, and `classify`, the one place that decides what an answer
//!   means), `tests.rs`; CloudWatch adds `outcome.rs` (per-line verdicts).
//! * [`text`] does what every vendor does the same way to a line: UTF-8
//!   text, cutting an over-long line with a visible marker, the
//!   `logdrain.*` attributes, counting serialised bytes.
//! * [`http`] holds the HTTP pieces the vendors share: the usual meaning of
//!   a status, `Retry-After`, error-answer excerpts, transport errors
//!   without URLs, and redaction of secrets.
//! * [`level`] detects a line's level for vendors that show one.
//! * [`endpoint`] keeps tenant-supplied endpoints (a Sentry DSN's host) to
//!   public addresses, with the HTTP client that connects to them.
//!
//! A sink must never retry, sleep or touch the queue itself: it answers one
//! send with one [`SinkError`] class, and the engine decides what to do.
//! Nothing in here may put a secret into an error, a log line or `Debug`
//! output.

pub mod cloudwatch;
pub mod datadog;
pub mod endpoint;
pub mod engine;
pub mod http;
pub mod level;
pub mod newrelic;
pub mod sentry;
pub mod text;

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use url::Url;

use crate::queue::QueuedLine;
use crate::route::{DestinationKind, RouteKey, Secrets};

/// How a sink wants its lines batched.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BatchLimits {
    /// Most lines in one request.
    pub max_events: usize,
    /// Most bytes in one request, as the vendor counts them; the sum of
    /// [`Sink::event_size`] over a batch never exceeds it (except for a
    /// batch of a single line, which the sink must shape to fit).
    pub max_bytes: usize,
    /// Longest time a line waits at the worker for its batch to fill.
    pub max_linger: Duration,
}

/// What a vendor answered to a request it accepted.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SendOutcome {
    /// Lines the vendor refused while accepting the rest of the request
    /// (for example events outside a time window). They are counted as
    /// dropped and never retried.
    pub rejected: u64,
    /// Why they were refused; never contains a secret.
    pub rejected_reason: Option<String>,
    /// The vendor accepted the request but asked for no further request for
    /// this long (for example Sentry's `X-Sentry-Rate-Limits` on a 200). The
    /// engine waits this long (bounded like `Retry-After`) before the route's
    /// next send; it is not a failure.
    pub hold_off: Option<Duration>,
    /// Lines the vendor refused for their time that the sink sent again
    /// with the time of sending (their own kept in
    /// `logdrain.original_timestamp`); counted like the engine's own
    /// re-stamps ([`engine::late`]), not as dropped.
    pub restamped: engine::late::Restamps,
}

impl SendOutcome {
    /// Every line of the request was accepted.
    pub fn accepted() -> Self {
        Self::default()
    }
}

/// Why a send failed, classified for the engine. `reason` never contains a
/// secret (no credentials, no URLs carrying credentials).
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum SinkError {
    /// Worth trying again later (network errors, 408, 429, 5xx).
    #[error("{reason}")]
    Retryable {
        reason: String,
        /// How long the vendor asked us to wait (`Retry-After`).
        retry_after: Option<Duration>,
    },
    /// Permanent for this payload (400, 413): the engine splits the batch
    /// until the offending line is alone, then drops it.
    #[error("the vendor rejected the payload: {reason}")]
    PayloadRejected { reason: String },
    /// The vendor refused the credentials (401, 403): the data is kept and
    /// the route retries slowly.
    #[error("the vendor refused the credentials: {reason}")]
    Unauthorized { reason: String },
    /// The sink cannot work as configured (bad endpoint override, an answer
    /// that says the endpoint is wrong): the data is kept and the route
    /// retries slowly.
    #[error("{reason}")]
    Config { reason: String },
}

impl SinkError {
    /// The fixed class used in metrics (`metrics::failed`).
    pub fn class(&self) -> &'static str {
        match self {
            SinkError::Retryable { .. } => "retryable",
            SinkError::PayloadRejected { .. } => "permanent",
            SinkError::Unauthorized { .. } => "credentials_rejected",
            SinkError::Config { .. } => "invalid_secret",
        }
    }
}

/// A route's secrets cannot make a working sink: the shared
/// [`logdrain::secrets::SecretProblem`], so the gateway reports exactly what
/// the shim warned about at start. Names the secret and what it accepts,
/// and never shows a confidential value.
pub use logdrain::secrets::SecretProblem as SecretError;

/// One vendor endpoint for one route. Built per route by [`SinkFactory`], so
/// it knows its agent and credentials.
#[async_trait]
pub trait Sink: Send + Sync + 'static {
    fn kind(&self) -> DestinationKind;

    /// Batch limits of this vendor.
    fn limits(&self) -> BatchLimits;

    /// Bytes `line` adds to a request, counted the way the vendor counts its
    /// request limit. Never more than `limits().max_bytes`.
    fn event_size(&self, line: &QueuedLine) -> usize;

    /// How old a line may be for the vendor to keep it at its own time;
    /// older lines, and lines more than [`engine::late::MAX_AHEAD`] ahead,
    /// are sent with the time of sending ([`engine::late`]). `None`: the
    /// vendor places every line itself.
    fn max_age(&self) -> Option<Duration> {
        None
    }

    /// Encodes the request for `lines` (JSON, compression: CPU work only, no
    /// I/O) without sending it. The engine runs it on the blocking pool, for
    /// the next batch while the previous request is in flight, so encoding
    /// overlaps the vendor's round trip (small batches, and every batch of
    /// a sink that [`Sink::prepares`] nothing, are encoded in place). An
    /// error is classified like a send's
    /// (a request over a vendor limit is [`SinkError::PayloadRejected`]).
    /// Default: nothing to prepare; the sink builds its request in
    /// [`Sink::send_prepared`].
    fn prepare(&self, lines: &[QueuedLine]) -> Result<Prepared, SinkError> {
        let _ = lines;
        Ok(Prepared::default())
    }

    /// Whether [`Sink::prepare`] does work worth moving off the route's
    /// task (encoding, compression). When it does not, the engine calls it
    /// in place instead of handing every batch to the blocking pool; it
    /// does so too for batches too small for the hand-off to pay. A sink
    /// that overrides `prepare` says `true`.
    fn prepares(&self) -> bool {
        false
    }

    /// Sends `lines` (never empty, in queue order) as one request, with what
    /// [`Sink::prepare`] made of exactly these lines.
    async fn send_prepared(
        &self,
        lines: &[QueuedLine],
        prepared: Prepared,
    ) -> Result<SendOutcome, SinkError>;

    /// Prepares and sends `lines` at once, encoding on the calling thread:
    /// for single requests outside the engine (`test-send`, tests).
    async fn send(&self, lines: &[QueuedLine]) -> Result<SendOutcome, SinkError> {
        let prepared = self.prepare(lines)?;
        self.send_prepared(lines, prepared).await
    }
}

/// What [`Sink::prepare`] made of a batch: the encoded request body of an
/// HTTP vendor, empty for a sink that builds its request while sending.
#[derive(Debug, Default)]
pub struct Prepared {
    pub body: Vec<u8>,
}

impl Prepared {
    pub fn body(body: Vec<u8>) -> Self {
        Self { body }
    }
}

/// The error of an encoder that failed (it writes to memory, so this is a
/// bug rather than bad input); the route parks with it in its status.
pub fn encoding_failed(vendor: &str, error: &dyn fmt::Display) -> SinkError {
    SinkError::Config {
        reason: format!("encoding the {vendor} request failed: {error}"),
    }
}

/// Settings shared by every sink, from the gateway's configuration.
#[derive(Clone, Debug)]
pub struct SinkSettings {
    /// Replaces the scheme, host and port of every Datadog endpoint (the path
    /// stays `/api/v2/logs`). For tests and proxies.
    pub datadog_url: Option<Url>,
    /// Replaces the scheme, host and port of every New Relic endpoint (the
    /// path stays `/log/v1`; the EU choice by license key no longer applies).
    /// For tests and proxies.
    pub newrelic_url: Option<Url>,
    /// Replaces the CloudWatch Logs endpoint of every CloudWatch sink (from
    /// `--cloudwatch-url` or the gateway's `AWS_ENDPOINT_URL*`, see
    /// [`cloudwatch::config::endpoint_override`]). For tests and proxies.
    pub cloudwatch_url: Option<Url>,
    /// Whole-request timeout of every HTTP request to a vendor.
    pub request_timeout: Duration,
    /// Timeout for opening a connection to a vendor.
    pub connect_timeout: Duration,
    /// Longest time a line waits for its batch to fill.
    pub max_linger: Duration,
    /// Where tenant-supplied endpoints may lead (`--allow-endpoint-net`).
    pub endpoint_policy: endpoint::EndpointPolicy,
}

impl Default for SinkSettings {
    fn default() -> Self {
        Self {
            datadog_url: None,
            newrelic_url: None,
            cloudwatch_url: None,
            request_timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(10),
            max_linger: Duration::from_secs(1),
            endpoint_policy: endpoint::EndpointPolicy::default(),
        }
    }
}

/// Where a route's lines land at its vendor, for an operator to look:
/// a sentence and the same facts as named fields. Never contains a secret
/// (no keys, no DSN; a Sentry project id and host are not secret).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Location {
    /// For example "CloudWatch Logs group livekit/a1 in region us-west-2".
    pub summary: String,
    /// The same facts by name (`site`, `query`, `region`, `log_group`,
    /// `project_id`, `host`, ...), for scripts.
    pub fields: BTreeMap<String, String>,
}

impl Location {
    pub(crate) fn new(summary: String, fields: &[(&str, &str)]) -> Self {
        Self {
            summary,
            fields: fields
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        }
    }
}

/// Where `route`'s lines land, from its `secrets` as its sink would read
/// them (each vendor's `config::location`). Fails like building the sink
/// would, naming the secret.
pub fn locate(
    route: &RouteKey,
    secrets: &Secrets,
    settings: &SinkSettings,
) -> Result<Location, SecretError> {
    let agent = route.agent_id.as_str();
    match route.kind {
        DestinationKind::Datadog => {
            datadog::config::location(agent, secrets, settings.datadog_url.as_ref())
        }
        DestinationKind::NewRelic => {
            newrelic::config::location(agent, secrets, settings.newrelic_url.as_ref())
        }
        DestinationKind::CloudWatch => {
            cloudwatch::config::location(agent, secrets, settings.cloudwatch_url.as_ref())
        }
        DestinationKind::Sentry => sentry::config::location(secrets, &settings.endpoint_policy),
    }
}

/// Builds the sink of a route from its secrets.
pub trait BuildSink: Send + Sync + 'static {
    fn build(&self, route: &RouteKey, secrets: &Secrets) -> Result<Arc<dyn Sink>, SecretError>;
}

impl<F> BuildSink for F
where
    F: Fn(&RouteKey, &Secrets) -> Result<Arc<dyn Sink>, SecretError> + Send + Sync + 'static,
{
    fn build(&self, route: &RouteKey, secrets: &Secrets) -> Result<Arc<dyn Sink>, SecretError> {
        self(route, secrets)
    }
}

/// The HTTP clients the sinks share (each with its connection pool):
/// `vendor` for the vendors' own endpoints and the operator's overrides,
/// `tenant` for endpoints a tenant supplied, which connects only to
/// addresses [`endpoint::EndpointPolicy`] allows.
#[derive(Clone, Debug)]
pub struct HttpClients {
    pub vendor: reqwest::Client,
    pub tenant: reqwest::Client,
}

impl HttpClients {
    /// Both clients, with the timeouts of `settings`.
    pub fn new(settings: &SinkSettings) -> Result<Self, SinkError> {
        let builder = || {
            reqwest::Client::builder()
                .user_agent(concat!("logdrain-gateway/", env!("CARGO_PKG_VERSION")))
                .timeout(settings.request_timeout)
                .connect_timeout(settings.connect_timeout)
                // A redirected POST loses its body; a vendor never redirects
                // its intake, so a redirect means the endpoint is wrong.
                .redirect(reqwest::redirect::Policy::none())
        };
        let failed = |e: reqwest::Error| SinkError::Config {
            reason: format!("cannot set up the HTTP client: {}", e.without_url()),
        };
        Ok(Self {
            vendor: builder().build().map_err(failed)?,
            tenant: endpoint::tenant_client(builder(), &settings.endpoint_policy)
                .map_err(failed)?,
        })
    }
}

/// Builds real vendor sinks; holds the HTTP clients (and their connection
/// pools) that every HTTP sink shares. Credentials are per request.
#[derive(Clone)]
pub struct SinkFactory {
    settings: SinkSettings,
    http: HttpClients,
}

impl fmt::Debug for SinkFactory {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SinkFactory")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl SinkFactory {
    /// Checks the settings and builds the shared HTTP clients.
    pub fn new(settings: SinkSettings) -> Result<Self, SinkError> {
        if let Some(url) = &settings.datadog_url {
            check_base_url("--datadog-url", url)?;
        }
        if let Some(url) = &settings.newrelic_url {
            check_base_url("--newrelic-url", url)?;
        }
        let http = HttpClients::new(&settings)?;
        Ok(Self { settings, http })
    }

    pub fn settings(&self) -> &SinkSettings {
        &self.settings
    }
}

impl BuildSink for SinkFactory {
    fn build(&self, route: &RouteKey, secrets: &Secrets) -> Result<Arc<dyn Sink>, SecretError> {
        build_sink(route, secrets, &self.settings, &self.http)
    }
}

/// Builds the sink of `route` from its `secrets`. A [`SecretError`] parks
/// the route (its lines stay queued) until a deployment brings valid secrets.
pub fn build_sink(
    route: &RouteKey,
    secrets: &Secrets,
    settings: &SinkSettings,
    http: &HttpClients,
) -> Result<Arc<dyn Sink>, SecretError> {
    match route.kind {
        DestinationKind::Datadog => Ok(Arc::new(datadog::DatadogSink::new(
            route,
            secrets,
            settings,
            &http.vendor,
        )?)),
        DestinationKind::NewRelic => Ok(Arc::new(newrelic::NewRelicSink::new(
            route,
            secrets,
            settings,
            &http.vendor,
        )?)),
        DestinationKind::CloudWatch => Ok(Arc::new(cloudwatch::CloudWatchSink::new(
            route, secrets, settings,
        )?)),
        DestinationKind::Sentry => Ok(Arc::new(sentry::SentrySink::new(
            route,
            secrets,
            settings,
            &http.tenant,
        )?)),
    }
}

fn check_base_url(flag: &str, url: &Url) -> Result<(), SinkError> {
    let http = matches!(url.scheme(), "http" | "https");
    if !http || url.host_str().is_none() || url.cannot_be_a_base() {
        return Err(SinkError::Config {
            reason: format!(
                "{flag} {url} is not usable: give an http:// or https:// URL with a host, \
                 for example http://127.0.0.1:8080"
            ),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_datadog_url_override_without_a_host_is_refused() {
        let settings = SinkSettings {
            datadog_url: Some(Url::parse("mailto:ops@example.com").unwrap()),
            ..SinkSettings::default()
        };
        let err = SinkFactory::new(settings).unwrap_err();
        assert!(err.to_string().contains("--datadog-url"), "{err}");
    }

    fn secrets(pairs: &[(&str, &str)]) -> Secrets {
        Secrets(
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        )
    }

    fn located(kind: DestinationKind, pairs: &[(&str, &str)]) -> Location {
        let route = RouteKey {
            agent_id: "a1".into(),
            kind,
            cred_id: "00".into(),
        };
        let location = locate(&route, &secrets(pairs), &SinkSettings::default()).unwrap();
        let shown = format!("{location:?}");
        for (name, value) in pairs {
            // Regions are shown on purpose; every other value is a secret.
            if !name.ends_with("_REGION") {
                assert!(!shown.contains(value), "a secret in {shown}");
            }
        }
        location
    }

    #[test]
    fn where_to_look_names_the_vendors_place_and_never_a_secret() {
        let dd = located(
            DestinationKind::Datadog,
            &[
                ("DATADOG_TOKEN", "0123456789abcdef0123456789abcdef"),
                ("DATADOG_REGION", "eu"),
            ],
        );
        assert_eq!(dd.fields["site"], "datadoghq.eu");
        assert_eq!(dd.fields["query"], "source:a1");
        let cw = located(
            DestinationKind::CloudWatch,
            &[
                ("AWS_ACCESS_KEY_ID", "AKIAEXAMPLEKEY123456"),
                ("AWS_SECRET_ACCESS_KEY", "secret-access-key-value"),
                ("AWS_REGION", "us-west-2"),
            ],
        );
        assert_eq!(
            cw.summary,
            "CloudWatch Logs group livekit/a1 in region us-west-2 (log stream = agent-server id)"
        );
        let sentry = located(
            DestinationKind::Sentry,
            &[(
                "SENTRY_DSN",
                "https://0123456789abcdef0123456789abcdef@o7.ingest.sentry.io/4242",
            )],
        );
        assert_eq!(sentry.fields["project_id"], "4242");
        assert_eq!(sentry.fields["host"], "o7.ingest.sentry.io");
        let nr = located(
            DestinationKind::NewRelic,
            &[(
                "NEW_RELIC_LICENSE_KEY",
                "eu01xx0123456789abcdef0123456789abNRAL",
            )],
        );
        assert_eq!(nr.fields["region"], "EU");
        assert_eq!(nr.fields["query"], "service_name:a1");
    }

    #[test]
    fn an_unknown_aws_region_is_pointed_out_in_where_to_look() {
        let cw = located(
            DestinationKind::CloudWatch,
            &[
                ("AWS_ACCESS_KEY_ID", "AKIAEXAMPLEKEY123456"),
                ("AWS_SECRET_ACCESS_KEY", "secret-access-key-value"),
                ("AWS_REGION", "us-weast-1"),
            ],
        );
        assert_eq!(cw.fields["unknown_region"], "us-weast-1");
        assert!(cw.summary.contains("check AWS_REGION"), "{}", cw.summary);
    }

    #[test]
    fn payload_and_credential_errors_have_distinct_metric_classes() {
        let classes = [
            SinkError::Retryable {
                reason: String::new(),
                retry_after: None,
            }
            .class(),
            SinkError::PayloadRejected {
                reason: String::new(),
            }
            .class(),
            SinkError::Unauthorized {
                reason: String::new(),
            }
            .class(),
            SinkError::Config {
                reason: String::new(),
            }
            .class(),
        ];
        assert_eq!(
            classes,
            [
                "retryable",
                "permanent",
                "credentials_rejected",
                "invalid_secret"
            ]
        );
    }
}
