//! In-band drop notices: when the per-agent quota drops an agent's oldest
//! lines, a line saying how many, queued when, and why enters the drain of
//! every route that lost them (like Heroku's L10, but naming the cause).
//!
//! The queue only reports what each route lost ([`Queue::take_quota_drops`]);
//! the cause comes from the delivery engine's route status (already
//! redacted: no secret ever reaches a status). Notices are coalesced: at most
//! one per route per [`NOTICE_INTERVAL`], summing the counts in between, so a
//! long outage costs a few lines, not one per batch. Notices are appended as
//! a stream of their own (agent-server id [`NOTICE_SERVER_ID`], one boot id
//! per gateway run). This module must not drop or count lines itself.

use std::collections::HashMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use logdrain::v1::{Line, Origin, StreamKind};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::queue::{Append, Queue, QuotaDrop};
use crate::route::RouteKey;
use crate::shutdown::Shutdown;
use crate::sinks::engine::status::{RouteState, RouteStatus};
use crate::sinks::engine::Engine;

/// At most one notice per route in this interval.
pub const NOTICE_INTERVAL: Duration = Duration::from_secs(60);
/// The agent-server id notices are queued under (the "host" vendors show).
pub const NOTICE_SERVER_ID: &str = "logdrain-gateway";

/// Starts the task that turns quota drops into notices; it ends on shutdown.
pub fn spawn(
    queue: Queue,
    engine: Engine<Queue>,
    quota_bytes: u64,
    shutdown: Shutdown,
) -> JoinHandle<()> {
    tokio::spawn(run(queue, engine, quota_bytes, shutdown))
}

async fn run(queue: Queue, engine: Engine<Queue>, quota_bytes: u64, shutdown: Shutdown) {
    let boot_id = format!("{:032x}", rand::random::<u128>());
    let mut seq = 1u64;
    // Both maps hold at most one entry per route.
    let mut pending: HashMap<RouteKey, QuotaDrop> = HashMap::new();
    let mut last_sent: HashMap<RouteKey, Instant> = HashMap::new();
    loop {
        let next_due = pending
            .keys()
            .filter_map(|route| last_sent.get(route))
            .map(|sent| *sent + NOTICE_INTERVAL)
            .min();
        tokio::select! {
            () = shutdown.wait() => return,
            () = queue.quota_dropped() => {}
            () = sleep_until(next_due), if next_due.is_some() => {}
        }
        for drop in queue.take_quota_drops() {
            merge(&mut pending, drop);
        }
        let now = Instant::now();
        last_sent.retain(|_, sent| now < *sent + NOTICE_INTERVAL);
        let due: Vec<RouteKey> = pending
            .keys()
            .filter(|route| !last_sent.contains_key(*route))
            .cloned()
            .collect();
        let statuses = engine.statuses();
        for route in due {
            let Some(drop) = pending.remove(&route) else {
                continue;
            };
            let status = statuses.iter().find(|s| {
                s.agent_id == route.agent_id
                    && s.destination == route.kind
                    && s.cred_id == route.cred_id
            });
            let text = notice_text(&drop, quota_bytes, status);
            let written = queue
                .append(Append {
                    agent_id: &route.agent_id,
                    agent_server_id: NOTICE_SERVER_ID,
                    boot_id: &boot_id,
                    first_seq: seq,
                    lines: vec![notice_line(text)],
                    routes: std::slice::from_ref(&route),
                })
                .await;
            seq += 1;
            last_sent.insert(route.clone(), now);
            if let Err(error) = written {
                // Kept and summed into the next attempt.
                tracing::warn!(route = %route, %error, "cannot queue the drop notice; trying again later");
                merge(&mut pending, drop);
            }
        }
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    if let Some(deadline) = deadline {
        tokio::time::sleep_until(deadline).await;
    }
}

fn merge(pending: &mut HashMap<RouteKey, QuotaDrop>, drop: QuotaDrop) {
    match pending.get_mut(&drop.route) {
        Some(entry) => {
            entry.lines += drop.lines;
            entry.bytes += drop.bytes;
            entry.oldest_ns = earliest(entry.oldest_ns, drop.oldest_ns);
            entry.newest_ns = entry.newest_ns.max(drop.newest_ns);
        }
        None => {
            pending.insert(drop.route.clone(), drop);
        }
    }
}

fn earliest(a: i64, b: i64) -> i64 {
    match (a, b) {
        (0, v) | (v, 0) => v,
        (a, b) => a.min(b),
    }
}

fn notice_line(text: String) -> Line {
    Line {
        timestamp_ns: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX)),
        stream: StreamKind::Stderr as i32,
        data: Bytes::from(text),
        origin: Origin::Shim as i32,
        part: 0,
        more_parts: false,
    }
}

/// The notice for one route: count, size, time range, quota and cause.
pub(crate) fn notice_text(drop: &QuotaDrop, quota_bytes: u64, status: Option<&RouteStatus>) -> String {
    let destination = drop.route.kind.name();
    let cause = match status {
        Some(s) if s.consecutive_failures > 0 || blocked(s.state) => {
            let last = s.last_error.as_deref().unwrap_or("no error recorded");
            format!(
                "{destination} has been failing ({} failed attempts in a row, last error: {last})",
                s.consecutive_failures
            )
        }
        Some(_) => format!("{destination} accepted lines more slowly than they arrived"),
        None => format!("{destination} was not being delivered to"),
    };
    format!(
        "logdrain-gateway: dropped {} lines ({}) queued between {} and {} for agent {} because its queue reached its quota of {} while {cause}",
        group_digits(drop.lines),
        human_bytes(drop.bytes),
        timestamp(drop.oldest_ns),
        timestamp(drop.newest_ns),
        drop.route.agent_id,
        human_bytes(quota_bytes),
    )
}

fn blocked(state: RouteState) -> bool {
    matches!(
        state,
        RouteState::Retrying | RouteState::Unauthorized | RouteState::Config
    )
}

fn timestamp(ns: i64) -> String {
    match u64::try_from(ns) {
        Ok(ns) if ns > 0 => {
            humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_nanos(ns)).to_string()
        }
        _ => "an unknown time".to_string(),
    }
}

/// 12345 → "12,345".
fn group_digits(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// Bytes in binary units with one decimal: "3.2 MiB", "1.0 GiB", "512 B".
fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut value = bytes as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::route::DestinationKind;

    fn drop_of(lines: u64, bytes: u64) -> QuotaDrop {
        QuotaDrop {
            route: RouteKey {
                agent_id: "agent-1".into(),
                kind: DestinationKind::Datadog,
                cred_id: "c1".into(),
            },
            lines,
            bytes,
            oldest_ns: 1_700_000_000_000_000_000,
            newest_ns: 1_700_000_060_000_000_000,
        }
    }

    fn failing_status() -> RouteStatus {
        RouteStatus {
            agent_id: "agent-1".into(),
            destination: DestinationKind::Datadog,
            cred_id: "c1".into(),
            state: RouteState::Retrying,
            last_error: Some("HTTP 500 Internal Server Error".into()),
            consecutive_failures: 7,
            delivered_lines: 0,
            delivered_requests: 0,
            failed_requests: 7,
            dropped_lines: 0,
            pending_lines: 0,
        }
    }

    #[test]
    fn notice_names_count_size_time_range_quota_and_the_vendor_error() {
        let text = notice_text(
            &drop_of(12_345, 3_355_443),
            1 << 30,
            Some(&failing_status()),
        );
        assert_eq!(
            text,
            "logdrain-gateway: dropped 12,345 lines (3.2 MiB) queued between 2023-11-14T22:13:20Z \
             and 2023-11-14T22:14:20Z for agent agent-1 because its queue reached its quota of \
             1.0 GiB while datadog has been failing (7 failed attempts in a row, last error: \
             HTTP 500 Internal Server Error)"
        );
    }

    #[test]
    fn a_healthy_route_is_described_as_too_slow_and_unknown_times_say_so() {
        let mut status = failing_status();
        status.state = RouteState::Delivering;
        status.consecutive_failures = 0;
        let mut drop = drop_of(1, 10);
        drop.oldest_ns = 0;
        let text = notice_text(&drop, 16 << 20, Some(&status));
        assert!(text.contains("dropped 1 lines (10 B) queued between an unknown time"), "{text}");
        assert!(text.contains("quota of 16.0 MiB while datadog accepted lines more slowly"), "{text}");
    }

    #[test]
    fn drops_of_one_route_are_summed_over_the_widest_time_range() {
        let mut pending = HashMap::new();
        merge(&mut pending, drop_of(10, 100));
        let mut later = drop_of(5, 50);
        later.oldest_ns = 1_800_000_000_000_000_000;
        later.newest_ns = 1_800_000_000_000_000_001;
        merge(&mut pending, later);
        let total = &pending[&drop_of(0, 0).route];
        assert_eq!((total.lines, total.bytes), (15, 150));
        assert_eq!(total.oldest_ns, 1_700_000_000_000_000_000);
        assert_eq!(total.newest_ns, 1_800_000_000_000_000_001);
        assert_eq!(group_digits(1_234_567), "1,234,567");
        assert_eq!(group_digits(999), "999");
    }
}
