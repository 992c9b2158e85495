//! Wall-clock helpers: line timestamps (Unix nanoseconds) and their RFC 3339
//! rendering for the messages the shim writes into the drain.
//!
//! It must not read any clock other than the system wall clock.

use std::time::{SystemTime, UNIX_EPOCH};

/// Now, in nanoseconds since the Unix epoch (negative before 1970, saturating).
pub fn now_ns() -> i64 {
    match SystemTime::now().duration_since(UNIX_EPOCH) {
        Ok(after) => i64::try_from(after.as_nanos()).unwrap_or(i64::MAX),
        Err(before) => i64::try_from(before.duration().as_nanos())
            .map(|ns| -ns)
            .unwrap_or(i64::MIN),
    }
}

/// Formats Unix nanoseconds as RFC 3339 UTC with nanoseconds, e.g.
/// `2024-05-01T12:00:00.123456789Z`.
pub fn rfc3339(ns: i64) -> String {
    let secs = ns.div_euclid(1_000_000_000);
    let nanos = ns.rem_euclid(1_000_000_000);
    let days = secs.div_euclid(86_400);
    let second_of_day = secs.rem_euclid(86_400);
    let (year, month, day) = civil_from_days(days);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{nanos:09}Z",
        second_of_day / 3600,
        second_of_day % 3600 / 60,
        second_of_day % 60,
    )
}

/// Days since 1970-01-01 to a proleptic Gregorian (year, month, day).
/// Howard Hinnant's `civil_from_days` algorithm.
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn epoch_is_formatted() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000000000Z");
    }

    #[test]
    fn known_instants_are_formatted() {
        // 2000-02-29 (leap day) 12:34:56.5
        assert_eq!(
            rfc3339(951_827_696_500_000_000),
            "2000-02-29T12:34:56.500000000Z"
        );
        // 2024-12-31T23:59:59.999999999Z
        assert_eq!(
            rfc3339(1_735_689_599_999_999_999),
            "2024-12-31T23:59:59.999999999Z"
        );
        assert_eq!(
            rfc3339(1_735_689_600_000_000_000),
            "2025-01-01T00:00:00.000000000Z"
        );
    }

    #[test]
    fn instants_before_the_epoch_are_formatted() {
        assert_eq!(rfc3339(-1), "1969-12-31T23:59:59.999999999Z");
    }

    #[test]
    fn now_is_after_2020() {
        assert!(now_ns() > 1_577_836_800_000_000_000);
    }
}
