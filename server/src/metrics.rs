//! Every metric the gateway exports, named in one place.
//!
//! Other modules call these functions instead of writing metric names, so the
//! names and labels stay consistent. This module must never receive a secret:
//! labels are agent ids, destination names and fixed reasons only.
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
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use metrics::{counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

/// Installs the global Prometheus recorder, describes every metric, and
/// returns the handle that renders `/metrics`.
pub fn install() -> Result<PrometheusHandle, metrics_exporter_prometheus::BuildError> {
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(
            Matcher::Full("logdrain_delivery_latency_seconds".to_string()),
            &[
                0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
                900.0, 3600.0,
            ],
        )?
        .install_recorder()?;
    describe();
    Ok(handle)
}

/// The HELP text of every metric, given to the installed recorder (the
/// reference test in `tests/reference.rs` reads it from here).
pub fn describe() {
    describe_counter!(
        "logdrain_received_lines_total",
        "Lines received from shim streams, before de-duplication."
    );
    describe_counter!(
        "logdrain_received_bytes_total",
        "Bytes of line data received from shim streams, before de-duplication."
    );
    describe_counter!(
        "logdrain_duplicate_lines_total",
        "Received lines already queued from an earlier send (resent after a reconnect)."
    );
    describe_counter!(
        "logdrain_skipped_seqs_total",
        "Sequence numbers a shim's batch skipped: lines its buffer dropped, or lines another gateway acked before a failover. Acked past, never counted as acked lines."
    );
    describe_counter!(
        "logdrain_handoff_lines_total",
        "Lines another gateway handed off (`logdrain-gateway handoff`): outcome queued (new here, acked) or duplicate (already queued from an earlier run). Also counted as received and acked lines."
    );
    describe_counter!(
        "logdrain_acked_lines_total",
        "Lines acked to shims as durably queued."
    );
    describe_counter!(
        "logdrain_queue_pushed_lines_total",
        "Lines that entered the agent's queue."
    );
    describe_counter!(
        "logdrain_queue_pushed_bytes_total",
        "Bytes of line data that entered the agent's queue."
    );
    describe_counter!(
        "logdrain_queue_popped_lines_total",
        "Lines that left the agent's queue (every destination done with them)."
    );
    describe_counter!(
        "logdrain_queue_popped_bytes_total",
        "Bytes of line data that left the agent's queue."
    );
    describe_gauge!(
        "logdrain_queue_depth_lines",
        "Lines queued for the agent and not yet delivered to every destination."
    );
    describe_gauge!(
        "logdrain_queue_depth_bytes",
        "Bytes of line data queued for the agent and not yet delivered to every destination."
    );
    describe_gauge!(
        "logdrain_queue_oldest_line_age_seconds",
        "Age of the oldest line a destination has not yet accepted (from the shim reading it; \
         0 when nothing waits), computed at scrape time."
    );
    describe_counter!(
        "logdrain_delivered_lines_total",
        "Lines a destination accepted."
    );
    describe_counter!(
        "logdrain_delivered_requests_total",
        "Requests a destination accepted."
    );
    describe_counter!(
        "logdrain_failed_lines_total",
        "Lines in requests that failed, by class (retryable, permanent, credentials_rejected, \
         invalid_secret); they stay queued unless counted in logdrain_dropped_lines_total."
    );
    describe_counter!(
        "logdrain_failed_requests_total",
        "Requests to a destination that failed, by class (retryable, permanent, credentials_rejected, invalid_secret)."
    );
    describe_counter!(
        "logdrain_retried_lines_total",
        "Lines in requests sent again after a retryable failure."
    );
    describe_counter!(
        "logdrain_retried_requests_total",
        "Requests sent again after a retryable failure."
    );
    describe_histogram!(
        "logdrain_delivery_latency_seconds",
        "Time from the shim reading a line to the destination accepting it (oldest line of each request)."
    );
    describe_counter!(
        "logdrain_restamped_lines_total",
        "Lines sent with the time of sending because their own time was outside the \
         destination's window (reason: too_old, too_new; expired: refused by CloudWatch for the group's retention); each keeps its own time in \
         logdrain.original_timestamp."
    );
    describe_counter!(
        "logdrain_dropped_lines_total",
        "Lines dropped for good, by reason (rejected_by_vendor, no_destination, quota, damaged: \
         failed their checksum in the queue's segment files)."
    );
    describe_gauge!(
        "logdrain_route_blocked",
        "1 while a route cannot deliver, by reason (credentials_rejected: credentials refused, \
         invalid_secret: secrets or endpoint unusable, retrying: vendor failing); 0 otherwise."
    );
    describe_gauge!(
        "logdrain_active_streams",
        "Shim streams connected to this gateway."
    );
    describe_gauge!(
        "logdrain_connected_replicas",
        "Shim streams of the agent connected to this gateway (one per running replica)."
    );
    describe_gauge!(
        "logdrain_agent_last_seen_timestamp_seconds",
        "Unix time a replica of the agent last opened, used or closed a stream on this gateway."
    );
    describe_counter!(
        "logdrain_refused_streams_total",
        "Shim streams refused at admission, by reason (unauthenticated, invalid_argument, ...)."
    );
    describe_counter!(
        "logdrain_queue_rebuilt_lines_total",
        "Lines the queue restored from its segment files at start because its index (sled) did \
         not list them; a destination may receive them a second time."
    );
    describe_gauge!(
        "logdrain_queue_disk_full",
        "1 while free space on the queue's disk is below --disk-min-free-bytes or a queue write met a full disk (new batches are refused), else 0."
    );
    describe_counter!(
        "logdrain_refused_batches_total",
        "Batches the queue refused, by reason (disk_full, over_quota); the shim keeps their lines and retries."
    );
    describe_counter!(
        "logdrain_http_refused_total",
        "HTTP connections and requests refused by the listener's limits, by reason \
         (connection_cap: every connection busy; idle_evicted: an idle or half-sent \
         connection closed to admit a new one; header_timeout: headers not sent in time; \
         too_large: headers or body over the size cap)."
    );
    describe_counter!(
        "logdrain_queue_set_aside_total",
        "Queue indexes (sled's files) that sled reported corrupt at start, set aside; the index \
         was rebuilt from the segment files."
    );
}

/// A shim stream's lines arrived (before de-duplication).
pub fn received(agent: &str, lines: u64, bytes: u64) {
    counter!("logdrain_received_lines_total", "agent" => agent.to_string()).increment(lines);
    counter!("logdrain_received_bytes_total", "agent" => agent.to_string()).increment(bytes);
}

/// Lines de-duplicated away (already queued from an earlier send).
pub fn duplicates(agent: &str, lines: u64) {
    counter!("logdrain_duplicate_lines_total", "agent" => agent.to_string()).increment(lines);
}

/// Seqs a shim's batch skipped (above the boot's mark + 1): lines its
/// buffer dropped, or lines another gateway acked before a failover.
pub fn skipped_seqs(agent: &str, seqs: u64) {
    counter!("logdrain_skipped_seqs_total", "agent" => agent.to_string()).increment(seqs);
}

/// Lines of a handoff stream acked: `queued` new here, `duplicate`
/// already queued by an earlier run of the handoff.
pub fn handoff_lines(agent: &str, queued: u64, duplicate: u64) {
    counter!("logdrain_handoff_lines_total", "agent" => agent.to_string(), "outcome" => "queued")
        .increment(queued);
    counter!("logdrain_handoff_lines_total", "agent" => agent.to_string(), "outcome" => "duplicate")
        .increment(duplicate);
}

/// Lines acked to a shim as durably queued.
pub fn acked(agent: &str, lines: u64) {
    counter!("logdrain_acked_lines_total", "agent" => agent.to_string()).increment(lines);
}

/// Lines and bytes entered the queue of an agent.
pub fn queue_pushed(agent: &str, lines: u64, bytes: u64) {
    counter!("logdrain_queue_pushed_lines_total", "agent" => agent.to_string()).increment(lines);
    counter!("logdrain_queue_pushed_bytes_total", "agent" => agent.to_string()).increment(bytes);
}

/// Lines and bytes left the queue of an agent (every destination done).
pub fn queue_popped(agent: &str, lines: u64, bytes: u64) {
    counter!("logdrain_queue_popped_lines_total", "agent" => agent.to_string()).increment(lines);
    counter!("logdrain_queue_popped_bytes_total", "agent" => agent.to_string()).increment(bytes);
}

/// Current queue depth of an agent.
pub fn queue_depth(agent: &str, lines: u64, bytes: u64) {
    gauge!("logdrain_queue_depth_lines", "agent" => agent.to_string()).set(lines as f64);
    gauge!("logdrain_queue_depth_bytes", "agent" => agent.to_string()).set(bytes as f64);
}

/// A request to a destination succeeded, carrying `lines` lines.
pub fn delivered(agent: &str, destination: &str, lines: u64) {
    counter!("logdrain_delivered_lines_total", "agent" => agent.to_string(), "destination" => destination.to_string()).increment(lines);
    counter!("logdrain_delivered_requests_total", "agent" => agent.to_string(), "destination" => destination.to_string()).increment(1);
}

/// A request to a destination failed (`class`: retryable, permanent,
/// credentials_rejected, invalid_secret). The lines are still queued unless [`dropped`] says otherwise.
pub fn failed(agent: &str, destination: &str, class: &'static str, lines: u64) {
    counter!("logdrain_failed_lines_total", "agent" => agent.to_string(), "destination" => destination.to_string(), "class" => class).increment(lines);
    counter!("logdrain_failed_requests_total", "agent" => agent.to_string(), "destination" => destination.to_string(), "class" => class).increment(1);
}

/// A request to a destination is being retried.
pub fn retried(agent: &str, destination: &str, lines: u64) {
    counter!("logdrain_retried_lines_total", "agent" => agent.to_string(), "destination" => destination.to_string()).increment(lines);
    counter!("logdrain_retried_requests_total", "agent" => agent.to_string(), "destination" => destination.to_string()).increment(1);
}

/// Time from the shim reading a line to the vendor accepting it.
pub fn delivery_latency(destination: &str, latency: Duration) {
    histogram!("logdrain_delivery_latency_seconds", "destination" => destination.to_string())
        .record(latency.as_secs_f64());
}

/// Lines sent with the time of sending because their own time is outside
/// the destination's window (`reason`: `too_old`, `too_new`, `expired`).
pub fn restamped(destination: &str, reason: &'static str, lines: u64) {
    counter!("logdrain_restamped_lines_total", "destination" => destination.to_string(), "reason" => reason)
        .increment(lines);
}

/// Lines dropped, by fixed reason (for example `rejected_by_vendor`,
/// `no_destination`).
pub fn dropped(agent: &str, reason: &'static str, lines: u64) {
    counter!("logdrain_dropped_lines_total", "agent" => agent.to_string(), "reason" => reason)
        .increment(lines);
}

/// Whether a route is currently blocked (1) and why (`retrying`,
/// `credentials_rejected`, `invalid_secret`), or delivering normally (0 for every reason).
pub fn route_state(agent: &str, destination: &str, state: &'static str, on: bool) {
    gauge!("logdrain_route_blocked", "agent" => agent.to_string(), "destination" => destination.to_string(), "reason" => state)
        .set(if on { 1.0 } else { 0.0 });
}

/// Shim streams currently connected.
pub fn active_streams(delta: f64) {
    gauge!("logdrain_active_streams").increment(delta);
}

/// A stream of `agent` opened (+1) or closed (-1): its replica count here.
pub fn connected_replicas(agent: &str, delta: f64) {
    gauge!("logdrain_connected_replicas", "agent" => agent.to_string()).increment(delta);
}

/// A replica of `agent` opened, used or closed a stream just now.
pub fn agent_seen(agent: &str) {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_secs_f64();
    gauge!("logdrain_agent_last_seen_timestamp_seconds", "agent" => agent.to_string()).set(now);
}

/// Sets `logdrain_queue_oldest_line_age_seconds` from every route's oldest
/// undelivered line (see [`oldest_line_ages`]).
pub fn queue_oldest_line_ages<'a>(
    routes: impl IntoIterator<Item = (&'a str, &'static str, Option<i64>)>,
    now: SystemTime,
) {
    for ((agent, destination), age) in oldest_line_ages(routes, now) {
        gauge!("logdrain_queue_oldest_line_age_seconds", "agent" => agent.to_string(), "destination" => destination)
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
pub fn http_refused(reason: &'static str) {
    counter!("logdrain_http_refused_total", "reason" => reason).increment(1);
}

/// Streams refused since start by reason, with the time of the last one:
/// the counts of `logdrain_refused_streams_total`, kept for the status
/// report (the recorder cannot be read back).
static REFUSED_STREAMS: Mutex<BTreeMap<&str, (u64, SystemTime)>> = Mutex::new(BTreeMap::new());

/// Streams refused, by fixed reason (`unauthenticated`, `invalid_argument`,
/// `resource_exhausted`, ...).
pub fn refused_streams(reason: &'static str) {
    counter!("logdrain_refused_streams_total", "reason" => reason).increment(1);
    let mut refused = REFUSED_STREAMS
        .lock()
        .unwrap_or_else(PoisonError::into_inner);
    let (count, last) = refused.entry(reason).or_insert((0, UNIX_EPOCH));
    *count += 1;
    *last = SystemTime::now();
}

/// Streams refused since start: (reason, count, last time), by reason.
pub fn refused_streams_so_far() -> Vec<(&'static str, u64, SystemTime)> {
    let refused = REFUSED_STREAMS
        .lock()
        .unwrap_or_else(PoisonError::into_inner);
    refused
        .iter()
        .map(|(&reason, &(count, last))| (reason, count, last))
        .collect()
}

/// Lines the queue restored from its segment files at start (possible
/// duplicates).
pub fn queue_rebuilt_lines(lines: u64) {
    counter!("logdrain_queue_rebuilt_lines_total").increment(lines);
}

/// Whether the queue's disk is below its free-space watermark (1), so new
/// batches are refused.
pub fn queue_disk_full(full: bool) {
    gauge!("logdrain_queue_disk_full").set(if full { 1.0 } else { 0.0 });
}

/// Batches refused by the queue, by fixed reason (`disk_full`,
/// `over_quota`); the shim keeps their lines and retries.
pub fn refused_batches(agent: &str, reason: &'static str) {
    counter!("logdrain_refused_batches_total", "agent" => agent.to_string(), "reason" => reason)
        .increment(1);
}

/// sled reported the queue's index corrupt at start: its files were set
/// aside and the index rebuilt from the segment files.
pub fn queue_set_aside() {
    counter!("logdrain_queue_set_aside_total").increment(1);
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
