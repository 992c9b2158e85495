//! The one parser of sizes and the one parser of durations, used by every
//! size and duration option of both binaries, so a value one accepts the
//! other accepts too.
//!
//! It must not know any option: callers add their own bounds.

use std::time::Duration;

/// A size or duration that cannot be read; names the value and the form.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UnitError {
    #[error("{0:?} is not a size; write a whole number of bytes with an optional unit, like 1048576, 512KiB, 64MiB (also 64m) or 100MB")]
    NotASize(String),
    #[error("the size {0:?} is too large; sizes must fit in 64 bits")]
    SizeTooLarge(String),
    #[error("{value:?} is not a duration ({reason}); write it like 10s, 500ms, 1.5s, 2m or 1h (a bare number is seconds)")]
    NotADuration { value: String, reason: String },
}

/// Parses a size: a whole number with an optional unit, any case, blanks
/// allowed between them. `K`, `M`, `G`, `T` and `KiB`, `MiB`, `GiB`, `TiB`
/// are powers of 1024; `KB`, `MB`, `GB`, `TB` powers of 1000; `B` or no unit
/// is bytes. `T` is `usize` or `u64` (a size beyond it is refused).
pub fn parse_size<T: TryFrom<u64>>(value: &str) -> Result<T, UnitError> {
    let text = value.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let bad = || UnitError::NotASize(value.to_string());
    let number: u64 = number.parse().map_err(|_| bad())?;
    let multiplier: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kib" => 1 << 10,
        "m" | "mib" => 1 << 20,
        "g" | "gib" => 1 << 30,
        "t" | "tib" => 1 << 40,
        "kb" => 1_000,
        "mb" => 1_000_000,
        "gb" => 1_000_000_000,
        "tb" => 1_000_000_000_000,
        _ => return Err(bad()),
    };
    number
        .checked_mul(multiplier)
        .and_then(|bytes| T::try_from(bytes).ok())
        .ok_or_else(|| UnitError::SizeTooLarge(value.to_string()))
}

/// Parses a duration: a bare number is seconds (`10`, `1.5`); otherwise
/// humantime's form (`500ms`, `10s`, `1.5s`, `2m`, `1h 30m`).
pub fn parse_duration(value: &str) -> Result<Duration, UnitError> {
    let text = value.trim();
    let bare = !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit() || b == b'.');
    let parsed = if bare {
        humantime::parse_duration(&format!("{text}s"))
    } else {
        humantime::parse_duration(text)
    };
    parsed.map_err(|e| UnitError::NotADuration {
        value: value.to_string(),
        reason: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_accept_binary_and_decimal_units_in_any_case() {
        let cases: [(&str, u64); 10] = [
            ("1048576", 1 << 20),
            ("512KiB", 512 << 10),
            ("64m", 64 << 20),
            ("64MiB", 64 << 20),
            ("1 GiB", 1 << 30),
            ("2gb", 2_000_000_000),
            ("100MB", 100_000_000),
            ("1t", 1 << 40),
            (" 7b ", 7),
            ("0", 0),
        ];
        for (text, bytes) in cases {
            assert_eq!(parse_size::<u64>(text), Ok(bytes), "{text}");
        }
    }

    #[test]
    fn bad_sizes_name_the_value_and_the_form() {
        for bad in ["", "ten", "1.5GiB", "12 parsecs", "-1", "MiB", "64XB"] {
            let err = parse_size::<u64>(bad).unwrap_err().to_string();
            assert!(
                err.contains(&format!("{bad:?}")) && err.contains("64MiB"),
                "{err}"
            );
        }
        let err = parse_size::<u64>("99999999999TiB").unwrap_err();
        assert!(err.to_string().contains("too large"), "{err}");
    }

    #[test]
    fn a_size_beyond_the_callers_type_is_too_large() {
        assert!(matches!(
            parse_size::<u16>("64KiB"),
            Err(UnitError::SizeTooLarge(_))
        ));
        assert_eq!(parse_size::<u16>("63KiB"), Ok(63 << 10));
    }

    #[test]
    fn durations_take_units_and_bare_numbers_are_seconds() {
        let cases = [
            ("10", Duration::from_secs(10)),
            ("1.5", Duration::from_millis(1500)),
            ("0", Duration::ZERO),
            ("500ms", Duration::from_millis(500)),
            ("10s", Duration::from_secs(10)),
            ("1.5s", Duration::from_millis(1500)),
            ("2m", Duration::from_secs(120)),
            ("2min", Duration::from_secs(120)),
            ("1h 30m", Duration::from_secs(5400)),
            (" 60s ", Duration::from_secs(60)),
        ];
        for (text, duration) in cases {
            assert_eq!(parse_duration(text), Ok(duration), "{text}");
        }
    }

    #[test]
    fn bad_durations_name_the_value_and_the_form() {
        for bad in ["", "ten", "10x", "s", "-1s", "1..5s", "."] {
            let err = parse_duration(bad).unwrap_err().to_string();
            assert!(
                err.contains(&format!("{bad:?}")) && err.contains("500ms"),
                "{err}"
            );
        }
    }
}
