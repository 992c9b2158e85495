//! In-band drop notices: when the per-agent quota drops an agent's oldest
//! lines, a line saying how many, queued when, and why enters the drain of
//! every route that lost them (like Heroku's L10, but naming the cause).
//!
//! The queue only reports what each route lost ([`Queue::take_quota_drops`]);
//! the cause comes from the delivery engine's route status (already
//! redacted: no secret ever reaches a status). Notices are coalesced: at most
//! one per route per interval. Drops of a route belong to one **episode**
//! until none happened for two intervals, and every notice states the
//! episode's totals so far: while the vendor stays down, older notices are
//! themselves dropped by the quota, and the newest one still tells the
//! whole story. Notices are appended as a stream of their own (agent-server
//! id [`NOTICE_SERVER_ID`], one boot id per gateway run). Lines the queue
//! found damaged on disk get a notice too ([`damage_text`]), one per route
//! each time damage is found. This module must not drop or count lines
//! itself.
//!
//! The same task tells each route, at most once per interval, how many of
//! its lines the engine sent with the time of sending because their own
//! time was outside the vendor's window ([`crate::sinks::engine::late`]),
//! from the counts the engine keeps ([`Engine::take_restamps`]).

use std::collections::HashMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use logdrain::v1::{Line, Origin, StreamKind};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::queue::{Append, Queue, QueueError, QuotaDrop};
use crate::route::RouteKey;
use crate::shutdown::Shutdown;
use crate::sinks::engine::status::RouteStatus;
use crate::sinks::engine::Engine;

/// The agent-server id notices are queued under (the "host" vendors show).
pub const NOTICE_SERVER_ID: &str = "logdrain-gateway";

/// How notices are written.
#[derive(Clone, Copy, Debug)]
pub struct NoticeSettings {
    /// The quota quoted in the notice.
    pub quota_bytes: u64,
    /// At most one notice per route in this interval.
    pub interval: Duration,
}

/// Starts the task that turns quota drops into notices; it ends on shutdown.
pub fn spawn(
    queue: Queue,
    engine: Engine<Queue>,
    settings: NoticeSettings,
    shutdown: Shutdown,
) -> JoinHandle<()> {
    tokio::spawn(run(queue, engine, settings, shutdown))
}

/// The drops of one route since its episode began.
struct Episode {
    total: QuotaDrop,
    /// Why, as the route's status said when lines were dropped (a failing
    /// status wins over a healthy one seen later).
    cause: Cause,
    /// Lines covered by the last notice written.
    reported: u64,
    last_drop: Instant,
    last_sent: Option<Instant>,
}

impl Episode {
    fn unreported(&self) -> bool {
        self.total.lines > self.reported
    }
}

/// The notice stream of this gateway run: one boot id, the next seq.
struct NoticeStream {
    boot_id: String,
    seq: u64,
}

impl NoticeStream {
    /// Queues `text` as one line for `route` only.
    async fn write(
        &mut self,
        queue: &Queue,
        route: &RouteKey,
        text: String,
    ) -> Result<(), QueueError> {
        let written = queue
            .append(Append {
                agent_id: &route.agent_id,
                agent_server_id: NOTICE_SERVER_ID,
                boot_id: &self.boot_id,
                first_seq: self.seq,
                lines: vec![notice_line(text)],
                routes: std::slice::from_ref(route),
            })
            .await;
        self.seq += 1;
        written.map(|_| ())
    }
}

async fn run(queue: Queue, engine: Engine<Queue>, settings: NoticeSettings, shutdown: Shutdown) {
    let interval = settings.interval;
    let mut notices = NoticeStream {
        boot_id: format!("{:032x}", rand::random::<u128>()),
        seq: 1,
    };
    // One entry per route at most.
    let mut episodes: HashMap<RouteKey, Episode> = HashMap::new();
    let mut restamps_due = tokio::time::interval(interval);
    restamps_due.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let next_due = episodes
            .values()
            .filter(|e| e.unreported())
            .filter_map(|e| e.last_sent.map(|sent| sent + interval))
            .min();
        let restamps = tokio::select! {
            () = shutdown.wait() => return,
            () = queue.quota_dropped() => Vec::new(),
            () = queue.damage_found() => Vec::new(),
            () = sleep_until(next_due), if next_due.is_some() => Vec::new(),
            _ = restamps_due.tick() => engine.take_restamps(),
        };
        for (route, restamps, max_age) in restamps {
            let text = restamps.notice(route.kind.name(), max_age);
            if let Err(error) = notices.write(&queue, &route, text).await {
                tracing::warn!(route = %route, %error, "cannot queue the re-stamp notice");
            }
        }
        for drop in queue.take_damage_drops() {
            let text = damage_text(&drop);
            if let Err(error) = notices.write(&queue, &drop.route, text).await {
                tracing::warn!(route = %drop.route, %error, "cannot queue the damage notice");
            }
        }
        let now = Instant::now();
        let drops = queue.take_quota_drops();
        let statuses = if drops.is_empty() {
            Vec::new()
        } else {
            engine.statuses()
        };
        for drop in drops {
            let status = statuses.iter().find(|s| {
                s.agent_id == drop.route.agent_id
                    && s.destination == drop.route.kind
                    && s.cred_id == drop.route.cred_id
            });
            let cause = Cause::of(drop.route.kind.name(), status);
            match episodes.get_mut(&drop.route) {
                Some(episode)
                    if now.duration_since(episode.last_drop) < 2 * interval
                        || episode.unreported() =>
                {
                    merge(&mut episode.total, &drop);
                    episode.last_drop = now;
                    if cause.failing || !episode.cause.failing {
                        episode.cause = cause;
                    }
                }
                _ => {
                    let route = drop.route.clone();
                    let episode = Episode {
                        total: drop,
                        cause,
                        reported: 0,
                        last_drop: now,
                        last_sent: None,
                    };
                    episodes.insert(route, episode);
                }
            }
        }
        for (route, episode) in &mut episodes {
            let due =
                episode.unreported() && episode.last_sent.is_none_or(|sent| now >= sent + interval);
            if !due {
                continue;
            }
            let text = notice_text(&episode.total, settings.quota_bytes, &episode.cause.text);
            let written = notices.write(&queue, route, text).await;
            episode.last_sent = Some(now);
            match written {
                Ok(()) => episode.reported = episode.total.lines,
                // Tried again after the interval, with the totals then.
                Err(error) => tracing::warn!(route = %route, %error,
                    "cannot queue the drop notice; trying again later"),
            }
        }
        episodes.retain(|_, e| now.duration_since(e.last_drop) < 2 * interval || e.unreported());
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    if let Some(deadline) = deadline {
        tokio::time::sleep_until(deadline).await;
    }
}

fn merge(total: &mut QuotaDrop, drop: &QuotaDrop) {
    total.lines += drop.lines;
    total.bytes += drop.bytes;
    total.oldest_ns = earliest(total.oldest_ns, drop.oldest_ns);
    total.newest_ns = total.newest_ns.max(drop.newest_ns);
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

/// Why a route's queue filled up, from its status.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Cause {
    text: String,
    failing: bool,
}

impl Cause {
    pub(crate) fn of(destination: &str, status: Option<&RouteStatus>) -> Cause {
        match status {
            Some(s) if s.consecutive_failures > 0 || s.state.is_blocked() => {
                let last = s.last_error.as_deref().unwrap_or("no error recorded");
                Cause {
                    text: format!(
                        "{destination} has been failing ({} failed attempts in a row, last error: {last})",
                        s.consecutive_failures
                    ),
                    failing: true,
                }
            }
            Some(_) => Cause {
                text: format!("{destination} accepted lines more slowly than they arrived"),
                failing: false,
            },
            None => Cause {
                text: format!("{destination} was not being delivered to"),
                failing: false,
            },
        }
    }
}

/// The notice for one route: count, size, time range, quota and cause.
pub(crate) fn notice_text(drop: &QuotaDrop, quota_bytes: u64, cause: &str) -> String {
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

/// The notice for lines of one route lost to damage on the gateway's disk.
pub(crate) fn damage_text(drop: &QuotaDrop) -> String {
    format!(
        "logdrain-gateway: dropped {} lines queued between {} and {} for agent {} because they \
         were damaged on the gateway's disk (a checksum mismatch in its queue's segment files); \
         the other lines were delivered",
        group_digits(drop.lines),
        timestamp(drop.oldest_ns),
        timestamp(drop.newest_ns),
        drop.route.agent_id,
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
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
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
    use crate::sinks::engine::status::RouteState;

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
            last_success_unix: None,
            pending_lines: 0,
            oldest_undelivered_ns: None,
            adopted_cred_id: None,
            note: None,
        }
    }

    #[test]
    fn notice_names_count_size_time_range_quota_and_the_vendor_error() {
        let cause = Cause::of("datadog", Some(&failing_status()));
        let text = notice_text(&drop_of(12_345, 3_355_443), 1 << 30, &cause.text);
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
        let text = notice_text(&drop, 16 << 20, &Cause::of("datadog", Some(&status)).text);
        assert!(
            text.contains("dropped 1 lines (10 B) queued between an unknown time"),
            "{text}"
        );
        assert!(
            text.contains("quota of 16.0 MiB while datadog accepted lines more slowly"),
            "{text}"
        );
    }

    #[test]
    fn a_damage_notice_names_count_time_range_agent_and_cause() {
        let text = damage_text(&drop_of(1, 10));
        assert_eq!(
            text,
            "logdrain-gateway: dropped 1 lines queued between 2023-11-14T22:13:20Z and \
             2023-11-14T22:14:20Z for agent agent-1 because they were damaged on the gateway's \
             disk (a checksum mismatch in its queue's segment files); the other lines were \
             delivered"
        );
    }

    #[test]
    fn drops_of_one_route_are_summed_over_the_widest_time_range() {
        let mut total = drop_of(10, 100);
        let mut later = drop_of(5, 50);
        later.oldest_ns = 1_800_000_000_000_000_000;
        later.newest_ns = 1_800_000_000_000_000_001;
        merge(&mut total, &later);
        assert_eq!((total.lines, total.bytes), (15, 150));
        assert_eq!(total.oldest_ns, 1_700_000_000_000_000_000);
        assert_eq!(total.newest_ns, 1_800_000_000_000_000_001);
        assert_eq!(group_digits(1_234_567), "1,234,567");
        assert_eq!(group_digits(999), "999");
    }
}
