//! Delays between attempts, for the shim's reconnects and the gateway's
//! vendor retries: exponential backoff with a floor, a cap and jitter.
//!
//! The n-th consecutive failure (from 0) waits a random delay in
//! `[base × (1 − jitter), base]` where `base = min(max, min × 2^n)`: delays
//! grow, never exceed the cap, and clients that failed together do not retry
//! together. The default jitter, one half, is "equal jitter".
//!
//! It must not sleep: callers sleep for the delay it returns. Randomness is
//! passed in so tests can make it deterministic.

use std::time::Duration;

use rand::Rng;

/// Exponential backoff state; see the module docs.
#[derive(Clone, Debug)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    jitter: f64,
    failures: u32,
}

impl Backoff {
    /// Backoff starting around `min` and never above `max` (`max >= min`),
    /// half of each delay random.
    pub fn new(min: Duration, max: Duration) -> Self {
        Self {
            min,
            max: max.max(min),
            jitter: 0.5,
            failures: 0,
        }
    }

    /// The random fraction of each delay, clamped to `0.0..=1.0` (0: no
    /// jitter).
    pub fn with_jitter(mut self, jitter: f64) -> Self {
        self.jitter = jitter.clamp(0.0, 1.0);
        self
    }

    /// Starts as if `failures` attempts had already failed.
    pub fn after(mut self, failures: u32) -> Self {
        self.failures = failures;
        self
    }

    /// The delay before the next attempt; counts one more failure.
    pub fn next_delay(&mut self, rng: &mut impl Rng) -> Duration {
        let base = self.base();
        self.failures = self.failures.saturating_add(1);
        let low = base.mul_f64(1.0 - self.jitter);
        let jitter_nanos = u64::try_from((base - low).as_nanos()).unwrap_or(u64::MAX);
        low + Duration::from_nanos(rng.random_range(0..=jitter_nanos))
    }

    /// Forgets past failures (call once delivery works again).
    pub fn reset(&mut self) {
        self.failures = 0;
    }

    /// Consecutive failures so far.
    pub fn failures(&self) -> u32 {
        self.failures
    }

    /// The un-jittered delay for the current failure count.
    fn base(&self) -> Duration {
        // 2^31 * min overflows any sane cap long before; checked_mul keeps
        // huge counts at the cap.
        let factor = 1u32.checked_shl(self.failures.min(31)).unwrap_or(u32::MAX);
        self.min
            .checked_mul(factor)
            .map_or(self.max, |delay| delay.min(self.max))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    /// Always yields the largest value: random ranges return their top.
    struct TopRng;

    impl rand::RngCore for TopRng {
        fn next_u32(&mut self) -> u32 {
            u32::MAX
        }
        fn next_u64(&mut self) -> u64 {
            u64::MAX
        }
        fn fill_bytes(&mut self, dest: &mut [u8]) {
            dest.fill(0xff);
        }
    }

    const MIN: Duration = Duration::from_millis(100);
    const MAX: Duration = Duration::from_secs(10);

    #[test]
    fn delays_stay_between_half_base_and_base() {
        let mut rng = StdRng::seed_from_u64(7);
        let mut backoff = Backoff::new(MIN, MAX);
        for n in 0..40u32 {
            let base = MIN.saturating_mul(2u32.saturating_pow(n)).min(MAX);
            let delay = backoff.next_delay(&mut rng);
            assert!(
                delay >= base / 2 && delay <= base,
                "failure {n}: {delay:?} vs base {base:?}"
            );
        }
    }

    #[test]
    fn delays_grow_until_the_cap() {
        // With the jitter pinned to its top, delays are exactly the bases.
        let mut rng = TopRng;
        let mut backoff = Backoff::new(MIN, MAX);
        let delays: Vec<Duration> = (0..10).map(|_| backoff.next_delay(&mut rng)).collect();
        let ms: Vec<u128> = delays.iter().map(Duration::as_millis).collect();
        assert_eq!(
            ms,
            vec![100, 200, 400, 800, 1600, 3200, 6400, 10_000, 10_000, 10_000]
        );
    }

    #[test]
    fn jitter_spreads_delays_of_the_same_failure() {
        let mut rng = StdRng::seed_from_u64(1);
        let delays: std::collections::BTreeSet<Duration> = (0..50)
            .map(|_| Backoff::new(MIN, MAX).next_delay(&mut rng))
            .collect();
        assert!(delays.len() > 40, "only {} distinct delays", delays.len());
    }

    #[test]
    fn many_failures_never_overflow_and_stay_capped() {
        let mut rng = StdRng::seed_from_u64(3);
        let mut backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(60));
        for _ in 0..10_000 {
            assert!(backoff.next_delay(&mut rng) <= Duration::from_secs(60));
        }
        assert_eq!(backoff.failures(), 10_000);
    }

    #[test]
    fn without_jitter_delays_are_the_bases_and_after_skips_ahead() {
        let mut rng = StdRng::seed_from_u64(9);
        let mut backoff = Backoff::new(MIN, MAX).with_jitter(0.0).after(2);
        assert_eq!(backoff.next_delay(&mut rng), MIN * 4);
        assert_eq!(backoff.next_delay(&mut rng), MIN * 8);
        assert_eq!(backoff.failures(), 4);
    }

    #[test]
    fn a_jitter_fraction_bounds_the_delay_from_below() {
        let mut rng = StdRng::seed_from_u64(11);
        for n in 0..20u32 {
            let mut backoff = Backoff::new(MIN, MAX).with_jitter(0.25).after(n);
            let base = MIN.saturating_mul(2u32.saturating_pow(n)).min(MAX);
            let delay = backoff.next_delay(&mut rng);
            assert!(
                delay >= base.mul_f64(0.75) && delay <= base,
                "{n}: {delay:?}"
            );
        }
    }

    #[test]
    fn reset_starts_again_from_the_minimum() {
        let mut rng = StdRng::seed_from_u64(5);
        let mut backoff = Backoff::new(MIN, MAX);
        for _ in 0..8 {
            backoff.next_delay(&mut rng);
        }
        backoff.reset();
        assert!(backoff.next_delay(&mut rng) <= MIN);
    }
}
