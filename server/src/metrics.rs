//! Every metric the gateway exports, named in one place.
//!
//! Other modules call these functions instead of writing metric names, so the
//! names and labels stay consistent. This module must never receive a secret:
//! labels are agent ids, destination names and fixed reasons only.
//!
//! Queue depth is exported as the difference of two counters (pushed and
//! popped) and also as a gauge for convenience; counters do not miss fast
//! swings the way a sampled gauge does.

use std::time::Duration;

use metrics::{counter, gauge, histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

/// Installs the global Prometheus recorder and returns the handle that renders
/// `/metrics`.
pub fn install() -> Result<PrometheusHandle, metrics_exporter_prometheus::BuildError> {
    PrometheusBuilder::new()
        .set_buckets_for_metric(
            Matcher::Full("logdrain_delivery_latency_seconds".to_string()),
            &[
                0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
                900.0, 3600.0,
            ],
        )?
        .install_recorder()
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

/// A request to a destination failed (`class`: retryable, permanent, auth,
/// config). The lines are still queued unless [`dropped`] says otherwise.
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

/// Lines dropped, by fixed reason (for example `rejected_by_vendor`,
/// `no_destination`).
pub fn dropped(agent: &str, reason: &'static str, lines: u64) {
    counter!("logdrain_dropped_lines_total", "agent" => agent.to_string(), "reason" => reason)
        .increment(lines);
}

/// Whether a route is currently blocked (1) and why (`auth`, `config`,
/// `retrying`), or delivering normally (0 for every reason).
pub fn route_state(agent: &str, destination: &str, state: &'static str, on: bool) {
    gauge!("logdrain_route_blocked", "agent" => agent.to_string(), "destination" => destination.to_string(), "reason" => state)
        .set(if on { 1.0 } else { 0.0 });
}

/// Shim streams currently connected.
pub fn active_streams(delta: f64) {
    gauge!("logdrain_active_streams").increment(delta);
}

/// Streams refused, by fixed reason (`unauthenticated`, `invalid_argument`,
/// `resource_exhausted`, ...).
pub fn refused_streams(reason: &'static str) {
    counter!("logdrain_refused_streams_total", "reason" => reason).increment(1);
}

/// Queue entries set aside at start because they could not be read.
pub fn quarantined(entries: u64) {
    counter!("logdrain_queue_quarantined_entries_total").increment(entries);
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

/// A queue database that could not be opened at all was moved aside whole
/// at start (a fresh queue serves).
pub fn queue_set_aside() {
    counter!("logdrain_queue_set_aside_total").increment(1);
}
