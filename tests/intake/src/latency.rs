//! Read → accepted latency of the lines an intake accepted, for the
//! benchmark suite: how long after the shim read a line (its timestamp) the
//! intake accepted the request carrying it.
//!
//! [`Latency`] is a bounded histogram (about 1,900 buckets at most, whatever
//! the run length): values below 64 ms are exact, larger ones fall in
//! buckets 1/32 of their power of two wide (≤ 3.2% error). Percentiles report
//! a bucket's upper bound, so they never understate. It must not read
//! requests or know a vendor's format: each vendor module says where its
//! entries carry their timestamp.

use serde::{Serialize, Serializer};

/// Values below this are their own bucket.
const EXACT: u64 = 64;
/// Buckets per power of two above [`EXACT`].
const PER_OCTAVE: u64 = 32;

fn bucket(ms: u64) -> u64 {
    if ms < EXACT {
        return ms;
    }
    let exponent = u64::from(63 - ms.leading_zeros()); // ≥ 6
    let mantissa = ms >> (exponent - 5); // 32..=63
    EXACT + (exponent - 6) * PER_OCTAVE + (mantissa - PER_OCTAVE)
}

/// The largest value that falls in `bucket`.
fn upper_bound(bucket: u64) -> u64 {
    if bucket < EXACT {
        return bucket;
    }
    let exponent = (bucket - EXACT) / PER_OCTAVE + 6;
    let mantissa = (bucket - EXACT) % PER_OCTAVE + PER_OCTAVE;
    ((mantissa + 1) << (exponent - 5)).wrapping_sub(1)
}

/// Histogram of read → accepted latency, in milliseconds.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Latency {
    /// Count per bucket, indexed by bucket; as long as the largest bucket
    /// used (recording a line is an index, not a map insert).
    buckets: Vec<u64>,
    count: u64,
    max_ms: u64,
    /// Accepted entries without a usable timestamp.
    unstamped: u64,
    /// Entries stamped after they arrived (clocks disagree), counted as 0.
    future: u64,
}

/// What [`Latency`] reports (and how it appears in `/_intake/stats`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct LatencySummary {
    /// Entries measured.
    pub count: u64,
    pub p50_ms: u64,
    pub p99_ms: u64,
    pub p999_ms: u64,
    pub max_ms: u64,
    /// Accepted entries without a usable timestamp (not measured).
    pub unstamped: u64,
    /// Entries whose timestamp was later than their arrival (counted as 0 ms).
    pub future: u64,
}

impl Latency {
    /// Records one entry stamped `stamped_ms` that arrived at `arrived_ms`
    /// (both milliseconds since the epoch); `None` = the entry had no
    /// usable timestamp.
    pub fn record(&mut self, stamped_ms: Option<i64>, arrived_ms: u64) {
        let Some(stamped_ms) = stamped_ms else {
            self.unstamped += 1;
            return;
        };
        let arrived_ms = i64::try_from(arrived_ms).unwrap_or(i64::MAX);
        let waited = arrived_ms.saturating_sub(stamped_ms);
        if waited < 0 {
            self.future += 1;
        }
        let waited = u64::try_from(waited).unwrap_or(0);
        // At most about 1,900 buckets, whatever the value.
        let at = usize::try_from(bucket(waited)).unwrap_or(usize::MAX);
        if at >= self.buckets.len() {
            self.buckets.resize(at + 1, 0);
        }
        self.buckets[at] += 1;
        self.count += 1;
        self.max_ms = self.max_ms.max(waited);
    }

    /// The smallest bucket bound that at least `quantile` (0..=1) of the
    /// measured entries are at or below; 0 when nothing was measured.
    pub fn quantile_ms(&self, quantile: f64) -> u64 {
        if self.count == 0 {
            return 0;
        }
        let rank = ((quantile.clamp(0.0, 1.0) * self.count as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (bucket, &n) in (0u64..).zip(&self.buckets) {
            seen += n;
            if seen >= rank {
                return upper_bound(bucket).min(self.max_ms);
            }
        }
        self.max_ms
    }

    pub fn summary(&self) -> LatencySummary {
        LatencySummary {
            count: self.count,
            p50_ms: self.quantile_ms(0.5),
            p99_ms: self.quantile_ms(0.99),
            p999_ms: self.quantile_ms(0.999),
            max_ms: self.max_ms,
            unstamped: self.unstamped,
            future: self.future,
        }
    }
}

impl Serialize for Latency {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.summary().serialize(serializer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_value_falls_in_a_bucket_whose_bound_is_at_most_3_percent_above_it() {
        let mut previous = 0;
        for ms in (0..5_000).chain([65_535, 65_536, 1 << 40, u64::MAX / 2]) {
            let b = bucket(ms);
            assert!(b >= previous, "buckets grow with the value ({ms})");
            previous = b;
            let bound = upper_bound(b);
            assert!(bound >= ms, "{ms} is within its bucket's bound {bound}");
            assert!(
                (bound - ms) as f64 <= ms as f64 / 32.0,
                "{ms}: bound {bound}"
            );
        }
        assert_eq!(bucket(63), 63);
        assert_eq!(upper_bound(bucket(64)), 65);
    }

    #[test]
    fn percentiles_of_known_latencies() {
        let mut latency = Latency::default();
        for ms in 1..=1_000i64 {
            latency.record(Some(10_000 - ms), 10_000);
        }
        let summary = latency.summary();
        assert_eq!(summary.count, 1_000);
        assert_eq!(summary.max_ms, 1_000);
        assert!((500..=516).contains(&summary.p50_ms), "{summary:?}");
        assert!((990..=1_000).contains(&summary.p99_ms), "{summary:?}");
        assert_eq!(summary.p999_ms, 1_000);
    }

    #[test]
    fn unstamped_and_future_entries_are_counted_apart() {
        let mut latency = Latency::default();
        latency.record(None, 5);
        latency.record(Some(10), 5);
        latency.record(Some(3), 5);
        let summary = latency.summary();
        assert_eq!(
            (summary.count, summary.unstamped, summary.future),
            (2, 1, 1)
        );
        assert_eq!((summary.p50_ms, summary.max_ms), (0, 2));
    }

    #[test]
    fn nothing_measured_reports_zeros() {
        assert_eq!(Latency::default().summary(), LatencySummary::default());
    }
}
