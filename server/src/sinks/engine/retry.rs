//! Retry policy, written once for every vendor.
//!
//! Owns the policy of the shared backoff ([`Backoff`]: a minimum, a maximum
//! and jitter); parsing of
//! `Retry-After` (delta-seconds and HTTP-date); and the mapping from a
//! [`SinkError`] class to what the worker does next ([`Action`]). Consecutive
//! failures grow the backoff up to its maximum: that growth is the route's
//! circuit breaker. This module must not sleep, send or touch the queue.

use std::time::{Duration, SystemTime};

use logdrain::backoff::Backoff;

use crate::sinks::SinkError;

/// How a route backs off after failures.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RetryPolicy {
    /// Delay after the first failure.
    pub min: Duration,
    /// Largest delay; reached after about log2(max/min) consecutive failures.
    pub max: Duration,
    /// Fraction of each delay that is random, in `0.0..=1.0`: the delay is
    /// drawn from `[base × (1 − jitter), base]`.
    pub jitter: f64,
    /// Longest `Retry-After` honoured; a larger value is cut to this, so a
    /// wrong header cannot park a route for days.
    pub retry_after_cap: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            min: Duration::from_millis(100),
            max: Duration::from_secs(60),
            jitter: 0.5,
            retry_after_cap: Duration::from_secs(15 * 60),
        }
    }
}

impl RetryPolicy {
    /// Waits of a parked route (credentials refused, sink misconfigured)
    /// that first waited about `interval`: half of it to 30 times it, half
    /// of each wait random, so routes parked together drift apart and
    /// long-refused credentials cost few vendor requests.
    pub fn parked(interval: Duration) -> Self {
        Self {
            min: interval / 2,
            max: interval.saturating_mul(30),
            jitter: 0.5,
            retry_after_cap: interval.saturating_mul(30),
        }
    }

    /// A backoff of this policy with `failures` failures behind it.
    pub fn backoff(&self, failures: u32) -> Backoff {
        Backoff::new(self.min, self.max)
            .with_jitter(self.jitter)
            .after(failures)
    }

    /// Counts one more failure and returns how long to wait: the vendor's
    /// `Retry-After` when given (bounded by the policy), otherwise the
    /// backoff's jittered delay.
    pub fn next_wait(&self, backoff: &mut Backoff, retry_after: Option<Duration>) -> Duration {
        let delay = backoff.next_delay(&mut rand::rng());
        retry_after.map_or(delay, |after| self.honour(after))
    }

    /// The delay the vendor asked for, bounded by `min` and
    /// `retry_after_cap`.
    pub fn honour(&self, retry_after: Duration) -> Duration {
        retry_after.min(self.retry_after_cap).max(self.min)
    }
}

/// Parses a `Retry-After` value: delta-seconds (`120`) or an HTTP-date
/// (`Wed, 21 Oct 2015 07:28:00 GMT`), relative to `now`. A date in the past
/// means "now" (zero). Anything else is `None`.
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) {
        // More digits than a u64 holds is still "a very long time".
        return Some(Duration::from_secs(value.parse().unwrap_or(u64::MAX)));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

/// What the worker does after a failed send.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// Wait (backoff or `Retry-After`), then send the same lines again.
    Retry { retry_after: Option<Duration> },
    /// Send each half of the lines on its own.
    Split,
    /// The single line is refused for good: count it, drop it, move on.
    Drop,
    /// Keep the lines and try again slowly: the credentials were refused.
    ParkUnauthorized,
    /// Keep the lines and try again slowly: the sink is misconfigured.
    ParkConfig,
}

/// The one place where an error class becomes an action.
pub fn action_for(error: &SinkError, lines: usize) -> Action {
    match error {
        SinkError::Retryable { retry_after, .. } => Action::Retry {
            retry_after: *retry_after,
        },
        SinkError::PayloadRejected { .. } if lines > 1 => Action::Split,
        SinkError::PayloadRejected { .. } => Action::Drop,
        SinkError::Unauthorized { .. } => Action::ParkUnauthorized,
        SinkError::Config { .. } => Action::ParkConfig,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(jitter: f64) -> RetryPolicy {
        RetryPolicy {
            jitter,
            ..RetryPolicy::default()
        }
    }

    #[test]
    fn backoff_doubles_from_min_and_stops_at_max() {
        let mut b = policy(0.0).backoff(0);
        let delays: Vec<_> = (0..12)
            .map(|_| policy(0.0).next_wait(&mut b, None))
            .collect();
        assert_eq!(delays[0], Duration::from_millis(100));
        assert_eq!(delays[1], Duration::from_millis(200));
        assert_eq!(delays[9], Duration::from_millis(51_200));
        assert_eq!(delays[10], Duration::from_secs(60));
        assert_eq!(delays[11], Duration::from_secs(60));
        assert_eq!(b.failures(), 12);
    }

    #[test]
    fn a_parked_route_first_waits_half_to_all_of_its_interval() {
        let interval = Duration::from_secs(60);
        let parked = RetryPolicy::parked(interval);
        for _ in 0..50 {
            let wait = parked.next_wait(&mut parked.backoff(1), None);
            assert!(wait >= interval / 2 && wait <= interval, "{wait:?}");
        }
    }

    #[test]
    fn retry_after_is_honoured_within_min_and_cap_and_counts_a_failure() {
        let p = policy(0.0);
        let mut b = p.backoff(0);
        assert_eq!(
            p.next_wait(&mut b, Some(Duration::from_secs(30))),
            Duration::from_secs(30)
        );
        assert_eq!(
            p.next_wait(&mut b, Some(Duration::ZERO)),
            Duration::from_millis(100)
        );
        assert_eq!(
            p.next_wait(&mut b, Some(Duration::from_secs(86_400))),
            Duration::from_secs(15 * 60)
        );
        assert_eq!(b.failures(), 3);
    }

    #[test]
    fn retry_after_parses_seconds_and_http_dates() {
        let now = httpdate::parse_http_date("Wed, 21 Oct 2015 07:28:00 GMT").unwrap();
        assert_eq!(
            parse_retry_after("120", now),
            Some(Duration::from_secs(120))
        );
        assert_eq!(parse_retry_after(" 0 ", now), Some(Duration::ZERO));
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:29:30 GMT", now),
            Some(Duration::from_secs(90))
        );
        // A date already past means retry now.
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:00:00 GMT", now),
            Some(Duration::ZERO)
        );
        assert_eq!(
            parse_retry_after("99999999999999999999999", now),
            Some(Duration::from_secs(u64::MAX))
        );
        for garbage in ["", "-5", "1.5", "soon", "Wed, 21 Oct 2015"] {
            assert_eq!(parse_retry_after(garbage, now), None, "{garbage:?}");
        }
    }

    #[test]
    fn each_error_class_maps_to_one_action() {
        let retry = SinkError::Retryable {
            reason: "503".into(),
            retry_after: Some(Duration::from_secs(3)),
        };
        let rejected = SinkError::PayloadRejected {
            reason: "400".into(),
        };
        let auth = SinkError::Unauthorized {
            reason: "403".into(),
        };
        let config = SinkError::Config {
            reason: "404".into(),
        };
        assert_eq!(
            action_for(&retry, 10),
            Action::Retry {
                retry_after: Some(Duration::from_secs(3))
            }
        );
        assert_eq!(action_for(&rejected, 2), Action::Split);
        assert_eq!(action_for(&rejected, 1), Action::Drop);
        assert_eq!(action_for(&auth, 1), Action::ParkUnauthorized);
        assert_eq!(action_for(&config, 5), Action::ParkConfig);
    }
}
