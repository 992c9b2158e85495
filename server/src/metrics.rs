//! Every metric the gateway exports, named in one place.
//!
//! Each metric's name is written once, as a constant; fixed label values are
//! enums with `as_str` ([`Dropped`], [`BatchRefused`], [`HttpRefused`],
//! [`RouteState`]). Hot paths hold handles registered once per agent or
//! route ([`Ingest`], [`Queued`], [`Delivery`]), so an increment allocates
//! nothing. This module must never receive a secret: labels are agent ids,
//! destination names and fixed reasons only.
//!
//! Queue depth is exported as the difference of two counters (pushed and
//! popped) and also as a gauge for convenience; counters do not miss fast
//! swings the way a sampled gauge does.
//!
//! Conventions (pinned by the test that runs `promtool check metrics` on a
//! live gateway): counters end in `_total`, units are base units in the name
//! (`_seconds`, `_bytes`), every metric has HELP text ([`describe`]), and
//! labels are bounded: agent ids × destinations × fixed reasons. Never a
//! replica id, a credential id or an error text: a fleet has unboundedly
//! many replicas over time, so replicas are counted per agent
//! ([`connected_replicas`]) instead of labelled.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use metrics::{
    counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram, Counter,
    Gauge, Histogram, SharedString,
};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::sinks::engine::{late, RouteState};

/// Defines each metric's name (a constant) and HELP text together, once.
macro_rules! metrics {
    ($($describe:ident $name:ident = $value:literal, $help:literal;)*) => {
        $(const $name: &str = $value;)*

        /// The HELP text of every metric, given to the installed recorder
        /// (the reference test in `tests/reference.rs` reads it from here).
        pub fn describe() {
            $($describe!($name, $help);)*
        }
    };
}

/// Installs the global Prometheus recorder, describes every metric, and
/// returns the handle that renders `/metrics`.
pub fn install() -> Result<PrometheusHandle, metrics_exporter_prometheus::BuildError> {
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(
            Matcher::Full(DELIVERY_LATENCY_SECONDS.to_string()),
            &[
                0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
                900.0, 3600.0,
            ],
        )?
        .install_recorder()?;
    describe();
    Ok(handle)
}

metrics! {
    describe_counter RECEIVED_LINES = "logdrain_received_lines_total",
        "Lines received from shim streams, before de-duplication.";
    describe_counter RECEIVED_BYTES = "logdrain_received_bytes_total",
        "Bytes of line data received from shim streams, before de-duplication.";
    describe_counter DUPLICATE_LINES = "logdrain_duplicate_lines_total",
        "Received lines already queued from an earlier send (resent after a reconnect).";
    describe_counter SKIPPED_SEQS = "logdrain_skipped_seqs_total",
        "Sequence numbers a shim's batch skipped: lines its buffer dropped, or lines another gateway acked before a failover. Acked past, never counted as acked lines.";
    describe_counter HANDOFF_LINES = "logdrain_handoff_lines_total",
        "Lines another gateway handed off (`logdrain-gateway handoff`): outcome queued (new here, acked) or duplicate (already queued from an earlier run). Also counted as received and acked lines.";
    describe_counter ACKED_LINES = "logdrain_acked_lines_total",
        "Lines acked to shims as durably queued.";
    describe_counter QUEUE_PUSHED_LINES = "logdrain_queue_pushed_lines_total",
        "Lines that entered the agent's queue.";
    describe_counter QUEUE_PUSHED_BYTES = "logdrain_queue_pushed_bytes_total",
        "Bytes of line data that entered the agent's queue.";
    describe_counter QUEUE_POPPED_LINES = "logdrain_queue_popped_lines_total",
        "Lines that left the agent's queue (every destination done with them).";
    describe_counter QUEUE_POPPED_BYTES = "logdrain_queue_popped_bytes_total",
        "Bytes of line data that left the agent's queue.";
    describe_gauge QUEUE_DEPTH_LINES = "logdrain_queue_depth_lines",
        "Lines queued for the agent and not yet delivered to every destination.";
    describe_gauge QUEUE_DEPTH_BYTES = "logdrain_queue_depth_bytes",
        "Bytes of line data queued for the agent and not yet delivered to every destination.";
    describe_gauge QUEUE_OLDEST_LINE_AGE_SECONDS = "logdrain_queue_oldest_line_age_seconds",
        "Age of the oldest line a destination has not yet accepted (from the shim reading it; \
         0 when nothing waits), computed at scrape time.";
    describe_counter DELIVERED_LINES = "logdrain_delivered_lines_total",
        "Lines a destination accepted.";
    describe_counter DELIVERED_REQUESTS = "logdrain_delivered_requests_total",
        "Requests a destination accepted.";
    describe_counter FAILED_LINES = "logdrain_failed_lines_total",
        "Lines in requests that failed, by class (retryable, permanent, credentials_rejected, \
         invalid_secret); they stay queued unless counted in logdrain_dropped_lines_total.";
    describe_counter FAILED_REQUESTS = "logdrain_failed_requests_total",
        "Requests to a destination that failed, by class (retryable, permanent, credentials_rejected, invalid_secret).";
    describe_counter RETRIED_LINES = "logdrain_retried_lines_total",
        "Lines in requests sent again after a retryable failure.";
    describe_counter RETRIED_REQUESTS = "logdrain_retried_requests_total",
        "Requests sent again after a retryable failure.";
    describe_histogram DELIVERY_LATENCY_SECONDS = "logdrain_delivery_latency_seconds",
        "Time from the shim reading a line to the destination accepting it (oldest line of each request).";
    describe_counter RESTAMPED_LINES = "logdrain_restamped_lines_total",
        "Lines sent with the time of sending because their own time was outside the \
         destination's window (reason: too_old, too_new; expired: refused by CloudWatch for the group's retention); each keeps its own time in \
         logdrain.original_timestamp.";
    describe_counter DROPPED_LINES = "logdrain_dropped_lines_total",
        "Lines dropped for good, by reason (rejected_by_vendor, no_destination, quota, damaged: \
         failed their checksum in the queue's segment files).";
    describe_gauge ROUTE_BLOCKED = "logdrain_route_blocked",
        "1 while a route cannot deliver, by reason (credentials_rejected: credentials refused, \
         invalid_secret: secrets or endpoint unusable, retrying: vendor failing); 0 otherwise.";
    describe_gauge ACTIVE_STREAMS = "logdrain_active_streams",
        "Shim streams connected to this gateway.";
    describe_gauge CONNECTED_REPLICAS = "logdrain_connected_replicas",
        "Shim streams of the agent connected to this gateway (one per running replica).";
    describe_gauge AGENT_LAST_SEEN_TIMESTAMP_SECONDS = "logdrain_agent_last_seen_timestamp_seconds",
        "Unix time a replica of the agent last opened, used or closed a stream on this gateway.";
    describe_counter REFUSED_STREAMS = "logdrain_refused_streams_total",
        "Shim streams refused at admission, by reason (unauthenticated, invalid_argument, ...).";
    describe_counter QUEUE_REBUILT_LINES = "logdrain_queue_rebuilt_lines_total",
        "Lines the queue restored from its segment files at start because its index (sled) did \
         not list them; a destination may receive them a second time.";
    describe_gauge QUEUE_DISK_FULL = "logdrain_queue_disk_full",
        "1 while free space on the queue's disk is below --disk-min-free-bytes or a queue write met a full disk (new batches are refused), else 0.";
    describe_counter REFUSED_BATCHES = "logdrain_refused_batches_total",
        "Batches the queue refused, by reason (disk_full, over_quota); the shim keeps their lines and retries.";
    describe_counter HTTP_REFUSED = "logdrain_http_refused_total",
        "HTTP connections and requests refused by the listener's limits, by reason \
         (connection_cap: every connection busy; idle_evicted: an idle or half-sent \
         connection closed to admit a new one; header_timeout: headers not sent in time; \
         too_large: headers or body over the size cap).";
    describe_counter QUEUE_SET_ASIDE = "logdrain_queue_set_aside_total",
        "Queue indexes (sled's files) that sled reported corrupt at start, set aside; the index \
         was rebuilt from the segment files.";
}

/// The `agent` label: shared by every handle of the agent, never copied.
fn agent_label(agent: &str) -> SharedString {
    SharedString::from(Arc::<str>::from(agent))
}

/// Defines an enum of fixed label values, each with its `as_str`.
macro_rules! label_values {
    ($(#[$doc:meta])* $name:ident { $($variant:ident => $value:literal),* $(,)? }) => {
        $(#[$doc])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
        pub enum $name {
            $($variant),*
        }

        impl $name {
            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $value),*
                }
            }
        }
    };
}

label_values! {
    /// Why lines were dropped for good (`logdrain_dropped_lines_total`).
    Dropped {
        RejectedByVendor => "rejected_by_vendor",
        NoDestination => "no_destination",
        Quota => "quota",
        Damaged => "damaged",
    }
}

label_values! {
    /// Why the queue refused a batch (`logdrain_refused_batches_total`).
    BatchRefused {
        DiskFull => "disk_full",
        OverQuota => "over_quota",
    }
}

label_values! {
    /// Why the HTTP listener refused a connection or request
    /// (`logdrain_http_refused_total`).
    HttpRefused {
        ConnectionCap => "connection_cap",
        IdleEvicted => "idle_evicted",
        HeaderTimeout => "header_timeout",
        TooLarge => "too_large",
    }
}

label_values! {
    /// Why a shim stream (or check, or tail) was refused at admission
    /// (`logdrain_refused_streams_total`).
    StreamRefused {
        Unauthenticated => "unauthenticated",
        InvalidArgument => "invalid_argument",
        ProtocolVersion => "protocol_version",
        NoOpen => "no_open",
        ShuttingDown => "shutting_down",
        ResourceExhausted => "resource_exhausted",
        BootLive => "boot_live",
        RouteLimit => "route_limit",
    }
}

impl StreamRefused {
    /// The reason for an id or protocol check's refusal `status`.
    pub fn invalid(status: &tonic::Status) -> Self {
        match status.code() {
            tonic::Code::FailedPrecondition => StreamRefused::ProtocolVersion,
            _ => StreamRefused::InvalidArgument,
        }
    }
}

/// The ingest metrics of one agent, registered when its stream opens so
/// that a batch allocates no label.
pub struct Ingest {
    received_lines: Counter,
    received_bytes: Counter,
    duplicates: Counter,
    skipped_seqs: Counter,
    acked: Counter,
    handoff_queued: Counter,
    handoff_duplicate: Counter,
    no_destination: Counter,
    last_seen: Gauge,
}

impl Ingest {
    pub fn new(agent: &str) -> Self {
        let agent = agent_label(agent);
        let counter = |name: &'static str| counter!(name, "agent" => agent.clone());
        let handoff = |outcome: &'static str| counter!(HANDOFF_LINES, "agent" => agent.clone(), "outcome" => outcome);
        Self {
            received_lines: counter(RECEIVED_LINES),
            received_bytes: counter(RECEIVED_BYTES),
            duplicates: counter(DUPLICATE_LINES),
            skipped_seqs: counter(SKIPPED_SEQS),
            acked: counter(ACKED_LINES),
            handoff_queued: handoff("queued"),
            handoff_duplicate: handoff("duplicate"),
            no_destination: counter!(DROPPED_LINES, "agent" => agent.clone(), "reason" => Dropped::NoDestination.as_str()),
            last_seen: gauge!(AGENT_LAST_SEEN_TIMESTAMP_SECONDS, "agent" => agent.clone()),
        }
    }

    /// A stream's lines arrived (before de-duplication).
    pub fn received(&self, lines: u64, bytes: u64) {
        self.received_lines.increment(lines);
        self.received_bytes.increment(bytes);
        self.seen();
    }

    /// A batch is durably queued: `fresh` lines acked, `duplicates` already
    /// queued from an earlier send. A handoff's lines are also counted by
    /// outcome (`queued` or `duplicate`).
    pub fn acked(&self, fresh: u64, duplicates: u64, handoff: bool) {
        self.duplicates.increment(duplicates);
        self.acked.increment(fresh);
        if handoff {
            self.handoff_queued.increment(fresh);
            self.handoff_duplicate.increment(duplicates);
        }
    }

    /// Seqs a shim's batch skipped (above the boot's mark + 1): lines its
    /// buffer dropped, or lines another gateway acked before a failover.
    pub fn skipped_seqs(&self, seqs: u64) {
        self.skipped_seqs.increment(seqs);
    }

    /// Lines acked for an agent without a destination, so dropped.
    pub fn no_destination(&self, lines: u64) {
        self.no_destination.increment(lines);
    }

    /// A replica of the agent opened, used or closed a stream just now.
    pub fn seen(&self) {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or(Duration::ZERO);
        self.last_seen.set(now.as_secs_f64());
    }
}

/// The queue metrics of one agent, registered with its queue. Depth is
/// exported both as pushed and popped counters and as a gauge.
pub struct Queued {
    pushed_lines: Counter,
    pushed_bytes: Counter,
    popped_lines: Counter,
    popped_bytes: Counter,
    depth_lines: Gauge,
    depth_bytes: Gauge,
}

impl Queued {
    pub fn new(agent: &str) -> Self {
        let agent = agent_label(agent);
        Self {
            pushed_lines: counter!(QUEUE_PUSHED_LINES, "agent" => agent.clone()),
            pushed_bytes: counter!(QUEUE_PUSHED_BYTES, "agent" => agent.clone()),
            popped_lines: counter!(QUEUE_POPPED_LINES, "agent" => agent.clone()),
            popped_bytes: counter!(QUEUE_POPPED_BYTES, "agent" => agent.clone()),
            depth_lines: gauge!(QUEUE_DEPTH_LINES, "agent" => agent.clone()),
            depth_bytes: gauge!(QUEUE_DEPTH_BYTES, "agent" => agent),
        }
    }

    /// Lines and bytes entered the agent's queue.
    pub fn pushed(&self, lines: u64, bytes: u64) {
        self.pushed_lines.increment(lines);
        self.pushed_bytes.increment(bytes);
    }

    /// Lines and bytes left the agent's queue (every destination done).
    pub fn popped(&self, lines: u64, bytes: u64) {
        self.popped_lines.increment(lines);
        self.popped_bytes.increment(bytes);
    }

    /// The agent's queue depth now.
    pub fn depth(&self, lines: u64, bytes: u64) {
        self.depth_lines.set(lines as f64);
        self.depth_bytes.set(bytes as f64);
    }
}

/// The delivery metrics of one route, registered when its worker starts.
pub struct Delivery {
    delivered_lines: Counter,
    delivered_requests: Counter,
    retried_lines: Counter,
    retried_requests: Counter,
    rejected_lines: Counter,
    latency: Histogram,
}

impl Delivery {
    pub fn new(agent: &str, destination: &'static str) -> Self {
        let agent = agent_label(agent);
        let counter = |name: &'static str| counter!(name, "agent" => agent.clone(), "destination" => destination);
        Self {
            delivered_lines: counter(DELIVERED_LINES),
            delivered_requests: counter(DELIVERED_REQUESTS),
            retried_lines: counter(RETRIED_LINES),
            retried_requests: counter(RETRIED_REQUESTS),
            rejected_lines: counter!(DROPPED_LINES, "agent" => agent.clone(), "reason" => Dropped::RejectedByVendor.as_str()),
            latency: histogram!(DELIVERY_LATENCY_SECONDS, "destination" => destination),
        }
    }

    /// A request the destination accepted, carrying `lines` lines.
    pub fn delivered(&self, lines: u64) {
        self.delivered_lines.increment(lines);
        self.delivered_requests.increment(1);
    }

    /// A request is sent again after a retryable failure.
    pub fn retried(&self, lines: u64) {
        self.retried_lines.increment(lines);
        self.retried_requests.increment(1);
    }

    /// Lines the vendor refused for good: dropped.
    pub fn rejected(&self, lines: u64) {
        self.rejected_lines.increment(lines);
    }

    /// Time from the shim reading a request's oldest line to the vendor
    /// accepting it.
    pub fn latency(&self, latency: Duration) {
        self.latency.record(latency.as_secs_f64());
    }
}

/// A request to a destination failed (`class`: [`crate::sinks::SinkError::class`]).
/// The lines are still queued unless [`dropped`] says otherwise.
pub fn failed(agent: &str, destination: &'static str, class: &'static str, lines: u64) {
    let agent = agent_label(agent);
    counter!(FAILED_LINES, "agent" => agent.clone(), "destination" => destination, "class" => class).increment(lines);
    counter!(FAILED_REQUESTS, "agent" => agent, "destination" => destination, "class" => class)
        .increment(1);
}

/// Lines sent with the time of sending because their own time is outside
/// the destination's window.
pub fn restamped(destination: &'static str, reason: late::Reason, lines: u64) {
    counter!(RESTAMPED_LINES, "destination" => destination, "reason" => reason.as_str())
        .increment(lines);
}

/// Lines dropped for good.
pub fn dropped(agent: &str, reason: Dropped, lines: u64) {
    counter!(DROPPED_LINES, "agent" => agent_label(agent), "reason" => reason.as_str())
        .increment(lines);
}

/// Whether a route is blocked (1) in `state` ([`RouteState::is_blocked`]),
/// or no longer (0).
pub fn route_state(agent: &str, destination: &'static str, state: RouteState, on: bool) {
    gauge!(ROUTE_BLOCKED, "agent" => agent_label(agent), "destination" => destination, "reason" => state.as_str())
        .set(f64::from(u8::from(on)));
}

/// Shim streams currently connected.
pub fn active_streams(delta: f64) {
    gauge!(ACTIVE_STREAMS).increment(delta);
}

/// A stream of `agent` opened (+1) or closed (-1): its replica count here.
pub fn connected_replicas(agent: &str, delta: f64) {
    gauge!(CONNECTED_REPLICAS, "agent" => agent_label(agent)).increment(delta);
}

/// Sets `logdrain_queue_oldest_line_age_seconds` from every route's oldest
/// undelivered line (see [`oldest_line_ages`]).
pub fn queue_oldest_line_ages<'a>(
    routes: impl IntoIterator<Item = (&'a str, &'static str, Option<i64>)>,
    now: SystemTime,
) {
    for ((agent, destination), age) in oldest_line_ages(routes, now) {
        gauge!(QUEUE_OLDEST_LINE_AGE_SECONDS, "agent" => agent_label(agent), "destination" => destination)
            .set(age);
    }
}

/// The age in seconds of the oldest undelivered line per (agent,
/// destination), from every route's `(agent, destination, shim timestamp in
/// Unix ns)`; `None` (nothing waiting) is 0. Routes of one agent and
/// destination with different credentials report the oldest of them. Ages
/// are measured at `now`; a timestamp ahead of the gateway's clock (replica
/// clock skew) counts as 0.
pub fn oldest_line_ages<'a>(
    routes: impl IntoIterator<Item = (&'a str, &'static str, Option<i64>)>,
    now: SystemTime,
) -> BTreeMap<(&'a str, &'static str), f64> {
    let now_ns = now
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_nanos();
    let mut ages = BTreeMap::new();
    for (agent, destination, oldest_ns) in routes {
        let age = oldest_ns.map_or(0.0, |ns| {
            let then = u128::try_from(ns).unwrap_or(0);
            Duration::from_nanos(u64::try_from(now_ns.saturating_sub(then)).unwrap_or(u64::MAX))
                .as_secs_f64()
        });
        let entry = ages.entry((agent, destination)).or_insert(0.0_f64);
        *entry = entry.max(age);
    }
    ages
}

/// An HTTP connection or request refused by the listener's limits, by
/// fixed reason (`connection_cap`, `idle_evicted`, `header_timeout`,
/// `too_large`).
pub fn http_refused(reason: HttpRefused) {
    counter!(HTTP_REFUSED, "reason" => reason.as_str()).increment(1);
}

/// Streams refused since start by reason, with the time of the last one:
/// the counts of `logdrain_refused_streams_total`, kept for the status
/// report (the recorder cannot be read back).
static REFUSED_SO_FAR: Mutex<BTreeMap<StreamRefused, (u64, SystemTime)>> =
    Mutex::new(BTreeMap::new());

/// Streams refused, by fixed reason (`unauthenticated`, `invalid_argument`,
/// `resource_exhausted`, ...).
pub fn refused_streams(reason: StreamRefused) {
    counter!(REFUSED_STREAMS, "reason" => reason.as_str()).increment(1);
    let mut refused = REFUSED_SO_FAR
        .lock()
        .unwrap_or_else(PoisonError::into_inner);
    let (count, last) = refused.entry(reason).or_insert((0, UNIX_EPOCH));
    *count += 1;
    *last = SystemTime::now();
}

/// Streams refused since start: (reason, count, last time), by reason.
pub fn refused_streams_so_far() -> Vec<(&'static str, u64, SystemTime)> {
    let refused = REFUSED_SO_FAR
        .lock()
        .unwrap_or_else(PoisonError::into_inner);
    refused
        .iter()
        .map(|(&reason, &(count, last))| (reason.as_str(), count, last))
        .collect()
}

/// Lines the queue restored from its segment files at start (possible
/// duplicates).
pub fn queue_rebuilt_lines(lines: u64) {
    counter!(QUEUE_REBUILT_LINES).increment(lines);
}

/// Whether the queue's disk is below its free-space watermark (1), so new
/// batches are refused.
pub fn queue_disk_full(full: bool) {
    gauge!(QUEUE_DISK_FULL).set(f64::from(u8::from(full)));
}

/// Batches refused by the queue, by fixed reason (`disk_full`,
/// `over_quota`); the shim keeps their lines and retries.
pub fn refused_batches(agent: &str, reason: BatchRefused) {
    counter!(REFUSED_BATCHES, "agent" => agent_label(agent), "reason" => reason.as_str())
        .increment(1);
}

/// sled reported the queue's index corrupt at start: its files were set
/// aside and the index rebuilt from the segment files.
pub fn queue_set_aside() {
    counter!(QUEUE_SET_ASIDE).increment(1);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn oldest_line_age_is_the_oldest_route_of_an_agent_and_destination() {
        let now = UNIX_EPOCH + Duration::from_secs(1_000);
        let secs = |s: i64| Some(s * 1_000_000_000);
        let ages = oldest_line_ages(
            [
                ("a1", "datadog", secs(990)),
                // The same agent and destination with other credentials.
                ("a1", "datadog", secs(400)),
                ("a1", "sentry", None),
                // A replica whose clock is ahead of the gateway's.
                ("a2", "datadog", secs(1_005)),
            ],
            now,
        );
        assert_eq!(ages[&("a1", "datadog")], 600.0);
        assert_eq!(ages[&("a1", "sentry")], 0.0);
        assert_eq!(ages[&("a2", "datadog")], 0.0);
        assert_eq!(ages.len(), 3);
    }
}
