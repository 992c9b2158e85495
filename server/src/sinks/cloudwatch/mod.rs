//! CloudWatch Logs sink.
//!
//! API: <https://docs.aws.amazon.com/AmazonCloudWatchLogs/latest/APIReference/API_PutLogEvents.html>;
//! quotas: <https://docs.aws.amazon.com/AmazonCloudWatch/latest/logs/cloudwatch_limits_cwl.html>;
//! errors: <https://docs.aws.amazon.com/AmazonCloudWatchLogs/latest/APIReference/CommonErrors.html>;
//! endpoint variables: <https://docs.aws.amazon.com/sdkref/latest/guide/feature-ss-endpoints.html>.
//!
//! Where each line goes and what it carries:
//!
//! | field | value |
//! |---|---|
//! | log group | `livekit/<agent-id>` ([`config::log_group_name`]) |
//! | log stream | `<agent-server-id>` |
//! | event `timestamp` | the line's time in milliseconds |
//! | event `message` | a JSON object, `{"message":"<line>","stream":"stdout"}` |
//!
//! The message is JSON so that Logs Insights discovers `message` and
//! `stream` as fields (`fields message, stream | filter stream = "stderr"`).
//! `message` is the raw line as UTF-8 (bytes that are not UTF-8 become
//! U+FFFD); `stream` is `stdout` or `stderr`. Only for pieces of a split line,
//! for lines the shim wrote itself and for lines sent with the time of
//! sending, a `logdrain` object is added (`logdrain.part`,
//! `logdrain.more_parts`, `logdrain.origin = "shim"`,
//! `logdrain.original_timestamp`), the same attributes the Datadog sink
//! sends.
//!
//! CloudWatch's limits, as this sink applies them:
//!
//! | limit | value | where |
//! |---|---|---|
//! | events per request | 10,000 | [`request_builder::MAX_EVENTS`], engine batches and [`request_builder::chunk`] |
//! | request size | 1,048,576 bytes, counted as UTF-8 message bytes + 26 per event | [`request_builder::MAX_BATCH_BYTES`], [`request_builder::event_size`] |
//! | one event | 1 MB counted the same way; longer lines are cut with a visible marker `…[truncated by logdrain: N bytes]` | [`request_builder::MAX_EVENT_BYTES`], [`request_builder::line_text`] |
//! | order | chronological within a request: sorted by time, stable | [`request_builder::chunk`] |
//! | time span | under 24 h per request: split | [`request_builder::MAX_SPAN_MS`] |
//! | streams | one request per log stream: a batch is grouped by agent-server id | [`request_builder::plan`] |
//! | window | 14 days back, 2 h ahead (<https://docs.aws.amazon.com/AmazonCloudWatchLogs/latest/APIReference/API_PutLogEvents.html>): the engine sends lines outside it with the time of sending, their own time in `logdrain.original_timestamp` (ms) | [`MAX_AGE`], [`crate::sinks::engine::late`] |
//! | too new (> 2 h ahead), too old (> 14 days), expired (the group's retention, which may be shorter) | accepted requests report them in `rejectedLogEventsInfo` (end indexes exclusive, the too-new start inclusive): sent once more with the time of sending, their own in `logdrain.original_timestamp`, counted in `logdrain_restamped_lines_total` (reason `too_old`, `too_new`, `expired`); refused again, they are counted as dropped | [`outcome::Tally`], [`service::verdicts`], [`CloudWatchSink::send_prepared`] |
//! | errors | throttling/unavailable/network → retry; access denied and bad keys → credentials; invalid parameter → payload; quotas → config | [`service::classify`] |
//! | group and stream | created on first write; `ResourceAlreadyExistsException` is success; a put answered `ResourceNotFoundException` creates them and is sent once more | [`service::Service`] |
//!
//! IAM permissions the tenant's key needs: `logs:CreateLogGroup`,
//! `logs:CreateLogStream`, `logs:PutLogEvents`.
//!
//! One send may put to several streams (up to [`PARALLEL_STREAMS`] at a
//! time). If any put fails, the whole send fails and the engine sends the
//! same lines again: nothing is lost. Lines of the puts that succeeded are
//! remembered by cursor ([`outcome::Accepted`]) and skipped by the resend,
//! also when the engine splits the batch. Duplicates at CloudWatch remain
//! possible when a put's answer was lost (a timeout after CloudWatch stored
//! it), when the send was cut off by the engine's send timeout, when the
//! gateway restarted in between, or when the memo overflowed; delivery is at
//! least once.
//!
//! Credentials are the route's own, and only those: the client is built
//! explicitly from the route's secrets ([`config`]); the AWS SDK's default
//! credential chain (environment, profile files, instance metadata) is not
//! even compiled in. The SDK's own retries are off: the engine retries.
//!
//! Files: [`config`] (secrets → client config, endpoint override),
//! [`request_builder`] (lines → events → puts), [`service`] (SDK calls →
//! classification), [`outcome`] (per-line verdicts and the memo of what
//! CloudWatch took). Retry, batching and backoff are the engine's
//! ([`crate::sinks::engine`]), not this module's.

pub mod config;
pub mod outcome;
pub mod request_builder;
pub mod service;

#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::fmt;
use std::sync::OnceLock;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use aws_sdk_cloudwatchlogs::config::SharedHttpClient;
use aws_smithy_http_client::tls::{self, rustls_provider::CryptoMode};
use futures::StreamExt;

use crate::queue::{Cursor, QueuedLine};
use crate::route::{DestinationKind, RouteKey, Secrets};
use crate::sinks::engine::late;
use crate::sinks::{
    BatchLimits, Prepared, SecretError, SendOutcome, Sink, SinkError, SinkSettings,
};
use outcome::{Accepted, Verdict};
use service::Service;

/// Most log streams one send writes to at the same time.
pub const PARALLEL_STREAMS: usize = 4;

/// Oldest event CloudWatch Logs takes at its own time (older ones come back
/// in `rejectedLogEventsInfo`); the group's retention may be shorter, and
/// events it refuses as expired are sent again with the time of sending.
pub const MAX_AGE: Duration = Duration::from_secs(14 * 24 * 3600);

/// The HTTPS client every CloudWatch sink shares (one connection pool, one
/// load of the trusted roots); rustls with ring, like the gateway's other
/// clients. It also speaks plain HTTP for an `http://` endpoint override.
/// Credentials are per client config, never per connection.
///
/// Pooled connections run on the Tokio runtime that opened them: code that
/// talks to one endpoint from several runtimes at once (tests) must share
/// one runtime, or a request can ride a connection whose runtime is gone.
pub fn http_client() -> SharedHttpClient {
    static CLIENT: OnceLock<SharedHttpClient> = OnceLock::new();
    CLIENT
        .get_or_init(|| {
            aws_smithy_http_client::Builder::new()
                .tls_provider(tls::Provider::Rustls(CryptoMode::Ring))
                .build_https()
        })
        .clone()
}

/// Delivers one route's lines to CloudWatch Logs. `Debug` shows no key.
pub struct CloudWatchSink {
    service: Service,
    accepted: Accepted,
    region: String,
    limits: BatchLimits,
}

impl fmt::Debug for CloudWatchSink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CloudWatchSink")
            .field("group", &self.service.group())
            .field("region", &self.region)
            .finish_non_exhaustive()
    }
}

impl CloudWatchSink {
    /// Builds the sink of `route` from `AWS_ACCESS_KEY_ID`,
    /// `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN` and `AWS_REGION`.
    pub fn new(
        route: &RouteKey,
        secrets: &Secrets,
        settings: &SinkSettings,
    ) -> Result<Self, SecretError> {
        let credentials = config::from_secrets(secrets)?;
        let client_config = config::client_config(&credentials, settings, http_client());
        let client = aws_sdk_cloudwatchlogs::Client::from_conf(client_config);
        let secret_values = credentials
            .secret_values()
            .into_iter()
            .map(str::to_string)
            .collect();
        Ok(Self {
            service: Service::new(
                client,
                config::log_group_name(&route.agent_id),
                secret_values,
            ),
            accepted: Accepted::new(),
            region: credentials.region().to_string(),
            limits: BatchLimits {
                max_events: request_builder::MAX_EVENTS,
                max_bytes: request_builder::MAX_BATCH_BYTES,
                max_linger: settings.max_linger,
            },
        })
    }

    /// The log group: `livekit/<agent-id>`.
    pub fn log_group(&self) -> &str {
        self.service.group()
    }

    pub fn region(&self) -> &str {
        &self.region
    }
}

#[async_trait]
impl Sink for CloudWatchSink {
    fn kind(&self) -> DestinationKind {
        DestinationKind::CloudWatch
    }

    fn limits(&self) -> BatchLimits {
        self.limits
    }

    fn max_age(&self) -> Option<Duration> {
        Some(MAX_AGE)
    }

    fn event_size(&self, line: &QueuedLine) -> usize {
        request_builder::event_size(line)
    }

    /// The SDK builds the requests: nothing to prepare ahead. Events
    /// CloudWatch refuses for their time (a group whose retention is
    /// shorter than [`MAX_AGE`], or a clock that moved) are sent once more
    /// with the time of sending, their own kept in
    /// `logdrain.original_timestamp`, and reported as re-stamped; only those
    /// refused again are counted as dropped.
    async fn send_prepared(
        &self,
        lines: &[QueuedLine],
        _prepared: Prepared,
    ) -> Result<SendOutcome, SinkError> {
        let (to_send, mut tally) = self.accepted.split(lines);
        let (mut taken, mut failure) = self.deliver(to_send).await;
        let refused: HashMap<Cursor, late::Reason> = taken
            .iter()
            .filter_map(|(cursor, v)| Some((*cursor, v.restamp_reason()?)))
            .collect();
        if failure.is_none() && !refused.is_empty() {
            taken.retain(|(cursor, _)| !refused.contains_key(cursor));
            let now_ns = late::unix_nanos(SystemTime::now());
            let again: Vec<QueuedLine> = lines
                .iter()
                .filter(|l| refused.contains_key(&l.cursor))
                .map(|l| {
                    let mut l = l.clone();
                    late::restamp_now(&mut l, now_ns);
                    l
                })
                .collect();
            let (retaken, error) = self.deliver(again.iter().collect()).await;
            taken.extend(retaken.into_iter().map(|(cursor, v)| match v {
                Verdict::Stored => (cursor, Verdict::Restamped(refused[&cursor])),
                refused_again => (cursor, refused_again),
            }));
            failure = error;
        }
        match failure {
            Some(error) => {
                self.accepted.remember(&taken);
                Err(error)
            }
            None => {
                for (_, verdict) in &taken {
                    tally.add(*verdict);
                }
                self.accepted.forget(lines);
                Ok(tally.outcome())
            }
        }
    }
}

impl CloudWatchSink {
    /// Puts `lines` to their streams, a few streams at a time: what
    /// CloudWatch took, and the most severe failure, if any.
    async fn deliver(
        &self,
        lines: Vec<&QueuedLine>,
    ) -> (Vec<(Cursor, Verdict)>, Option<SinkError>) {
        let mut failure: Option<SinkError> = None;
        let mut taken = Vec::new();
        if lines.is_empty() {
            return (taken, failure);
        }
        let plans = request_builder::plan(lines);
        let mut results = futures::stream::iter(plans)
            .map(|plan| self.service.deliver_stream(plan.stream, plan.puts))
            .buffer_unordered(PARALLEL_STREAMS);
        while let Some(result) = results.next().await {
            taken.extend(result.taken);
            if let Some(error) = result.error {
                failure = Some(match failure {
                    Some(worst) => service::most_severe(worst, error),
                    None => error,
                });
            }
        }
        (taken, failure)
    }
}
