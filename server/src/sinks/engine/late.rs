//! Lines outside a vendor's time window: the one policy, for every vendor.
//!
//! Vendors lose or misplace lines stamped too long ago (Datadog discards
//! logs older than 18 h at ingestion, New Relic may drop those older than
//! 48 h, CloudWatch refuses events older than 14 days) or too far ahead (a
//! bad clock: more than [`MAX_AHEAD`]). A sink states its window once
//! ([`crate::sinks::Sink::max_age`]); when a line enters a batch, the worker
//! gives such a line the time of sending and keeps its own time in
//! [`QueuedLine::original_timestamp_ns`], which the sink writes as
//! `logdrain.original_timestamp` in the vendor's form. Nothing is dropped
//! for its time and nothing is placed at the wrong time silently: the
//! lines are counted (`logdrain_restamped_lines_total`) and the route's
//! status says so (see [`Restamps`]). A sink whose vendor still refuses a
//! line for its time (CloudWatch, for a group whose retention is shorter
//! than its 14 days) re-stamps it with [`restamp_now`] and reports it in
//! [`crate::sinks::SendOutcome::restamped`], counted the same way.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::queue::QueuedLine;

/// Lines stamped further ahead of the gateway's clock than this are sent
/// with the time of sending (Datadog and CloudWatch do not place them at
/// their own time).
pub const MAX_AHEAD: Duration = Duration::from_secs(2 * 3600);

/// Why a line was sent with the time of sending.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reason {
    TooOld,
    TooNew,
    /// Refused by the vendor as older than what the destination keeps
    /// (CloudWatch: the log group's retention).
    Expired,
}

impl Reason {
    /// The `reason` label of `logdrain_restamped_lines_total`.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::TooOld => "too_old",
            Reason::TooNew => "too_new",
            Reason::Expired => "expired",
        }
    }
}

/// Gives `line` the time `now_ns` if it is older than `max_age` or more
/// than [`MAX_AHEAD`] ahead of it, keeping its own time; says why.
pub fn restamp(line: &mut QueuedLine, max_age: Duration, now_ns: i64) -> Option<Reason> {
    let nanos = |d: Duration| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX);
    let own = line.line.timestamp_ns;
    let reason = if own < now_ns.saturating_sub(nanos(max_age)) {
        Reason::TooOld
    } else if own > now_ns.saturating_add(nanos(MAX_AHEAD)) {
        Reason::TooNew
    } else {
        return None;
    };
    restamp_now(line, now_ns);
    Some(reason)
}

/// Gives `line` the time `now_ns`, keeping its own time (a line re-stamped
/// before keeps its first own time).
pub fn restamp_now(line: &mut QueuedLine, now_ns: i64) {
    line.original_timestamp_ns
        .get_or_insert(line.line.timestamp_ns);
    line.line.timestamp_ns = now_ns;
}

/// The gateway's clock in nanoseconds since the Unix epoch (0 before it,
/// saturating far after).
pub fn unix_nanos(time: SystemTime) -> i64 {
    time.duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
}

/// Lines re-stamped since the route's last report, by reason.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Restamps {
    pub too_old: u64,
    pub too_new: u64,
    pub expired: u64,
}

impl Restamps {
    pub fn add(&mut self, reason: Reason) {
        match reason {
            Reason::TooOld => self.too_old += 1,
            Reason::TooNew => self.too_new += 1,
            Reason::Expired => self.expired += 1,
        }
    }

    /// Adds `other`'s counts.
    pub fn merge(&mut self, other: Restamps) {
        self.too_old += other.too_old;
        self.too_new += other.too_new;
        self.expired += other.expired;
    }

    /// Each reason with its count.
    pub fn by_reason(&self) -> [(Reason, u64); 3] {
        [
            (Reason::TooOld, self.too_old),
            (Reason::TooNew, self.too_new),
            (Reason::Expired, self.expired),
        ]
    }

    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }

    /// The notice for these lines: what happened and where their own time
    /// is.
    pub fn notice(&self, vendor: &str, max_age: Duration) -> String {
        let mut parts = Vec::new();
        if self.too_old > 0 {
            parts.push(format!(
                "{} older than {vendor}'s {} window",
                self.too_old,
                humantime::format_duration(max_age)
            ));
        }
        if self.too_new > 0 {
            parts.push(format!(
                "{} more than {} in the future",
                self.too_new,
                humantime::format_duration(MAX_AHEAD)
            ));
        }
        if self.expired > 0 {
            parts.push(format!(
                "{} refused by {vendor} as older than what the destination keeps",
                self.expired
            ));
        }
        format!(
            "logdrain: {} lines were sent with the time of sending ({}); each keeps its own time in \
             logdrain.original_timestamp",
            self.too_old + self.too_new + self.expired,
            parts.join(", ")
        )
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use bytes::Bytes;
    use logdrain::v1::Line;

    use super::*;
    use crate::queue::Cursor;

    const HOUR_NS: i64 = 3_600_000_000_000;
    const NOW_NS: i64 = 1_800_000_000_000_000_000;

    fn at(timestamp_ns: i64) -> QueuedLine {
        QueuedLine {
            cursor: Cursor {
                segment: 1,
                index: 0,
            },
            agent_server_id: Arc::from("replica-1"),
            line: Line {
                timestamp_ns,
                data: Bytes::from_static(b"x"),
                ..Line::default()
            },
            original_timestamp_ns: None,
        }
    }

    #[test]
    fn lines_past_the_window_or_two_hours_ahead_get_the_time_of_sending_and_keep_their_own() {
        let window = Duration::from_secs(18 * 3600);
        let cases = [
            (NOW_NS - 20 * HOUR_NS, Some(Reason::TooOld)),
            (NOW_NS - 18 * HOUR_NS - 1, Some(Reason::TooOld)),
            (NOW_NS - 18 * HOUR_NS, None),
            (NOW_NS, None),
            (NOW_NS + 2 * HOUR_NS, None),
            (NOW_NS + 2 * HOUR_NS + 1, Some(Reason::TooNew)),
            (i64::MIN, Some(Reason::TooOld)),
            (i64::MAX, Some(Reason::TooNew)),
        ];
        for (own, expected) in cases {
            let mut line = at(own);
            assert_eq!(restamp(&mut line, window, NOW_NS), expected, "{own}");
            if expected.is_some() {
                assert_eq!(line.line.timestamp_ns, NOW_NS);
                assert_eq!(line.original_timestamp_ns, Some(own));
            } else {
                assert_eq!(line.line.timestamp_ns, own);
                assert_eq!(line.original_timestamp_ns, None);
            }
        }
    }

    #[test]
    fn the_notice_counts_each_reason_and_names_the_window() {
        let mut restamps = Restamps::default();
        assert!(restamps.is_empty());
        restamps.add(Reason::TooOld);
        restamps.add(Reason::TooOld);
        restamps.add(Reason::TooNew);
        assert_eq!(
            restamps.notice("datadog", Duration::from_secs(18 * 3600)),
            "logdrain: 3 lines were sent with the time of sending (2 older than datadog's 18h \
             window, 1 more than 2h in the future); each keeps its own time in \
             logdrain.original_timestamp"
        );
    }
}
