//! Masks secret values in what the shim ships (`--redact`).
//!
//! At start, [`Redactor::from_vars`] takes the values of the environment
//! variables whose names say they are secrets ([`is_secret_name`]) and the
//! drain's own secrets, and builds one multi-pattern matcher. Each shipped
//! line (or multi-line event) is then masked as a whole: every occurrence of
//! a value, at any position, becomes `[redacted:<NAME>]`. Occurrences are
//! counted per name. Where a long line is cut into parts, the bytes at a
//! part's end that could begin a value move to the next part
//! ([`Redactor::held_back`]), so a value straddling the cut is masked whole.
//!
//! It owns the values and must never print, log or return one: only names
//! and counts leave this module. It never touches the passthrough.

use std::ffi::OsString;
use std::sync::atomic::{AtomicU64, Ordering};

use aho_corasick::{AhoCorasick, MatchKind};
use bytes::Bytes;

/// Values shorter than this are left alone: they would mask common words.
pub const MIN_SECRET_BYTES: usize = 8;
/// How many bytes the marks may add to a line; past it, an occurrence is
/// masked with `*` of its own length, so a line of many short secrets under
/// long names cannot grow past what a batch can carry.
pub const MAX_GROWTH_BYTES: usize = 4096;

/// `--redact`: whether shipped lines are masked.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum RedactMode {
    /// Mask the values of secret-named variables and the drain's secrets.
    #[default]
    Auto,
    /// Ship lines as the agent wrote them.
    Off,
}

/// Whether a variable's name says it holds a secret: `*_KEY`, `*_SECRET`,
/// `*_TOKEN`, `*_PASSWORD`, `*_DSN` or `*API_KEY*` (in any case), or one of
/// the drain's own secrets.
pub fn is_secret_name(name: &str) -> bool {
    let upper = name.to_ascii_uppercase();
    ["_KEY", "_SECRET", "_TOKEN", "_PASSWORD", "_DSN"]
        .iter()
        .any(|suffix| upper.ends_with(suffix))
        || upper.contains("API_KEY")
        || upper == "LOGDRAIN_TOKEN"
        || (logdrain::SECRET_VARS.contains(&name) && !upper.ends_with("_REGION"))
}

/// The matcher over the secret values, and the count of masked occurrences
/// per name. Shared by both streams.
#[derive(Default)]
pub struct Redactor {
    /// `None` when there is nothing to mask.
    matcher: Option<AhoCorasick>,
    /// Pattern `i`'s replacement, `[redacted:<NAME>]`.
    marks: Vec<Bytes>,
    /// Pattern `i`'s variable name.
    names: Vec<String>,
    /// Occurrences of pattern `i` masked so far.
    counts: Vec<AtomicU64>,
    /// The values, to find one begun at the end of a cut part.
    values: Vec<Vec<u8>>,
}

impl std::fmt::Debug for Redactor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Redactor")
            .field("names", &self.names)
            .finish_non_exhaustive()
    }
}

impl Redactor {
    /// A redactor that masks nothing (`--redact off`).
    pub fn off() -> Self {
        Self::default()
    }

    /// Masks the values (at least [`MIN_SECRET_BYTES`] long) of the
    /// variables in `vars` with a secret's name, and `extra` (name, value)
    /// pairs such as the ingest token. A value set under several names is
    /// masked under the first name in sorted order. Values that are not
    /// UTF-8 are masked as their bytes.
    pub fn from_vars(
        vars: impl IntoIterator<Item = (OsString, OsString)>,
        extra: impl IntoIterator<Item = (String, String)>,
    ) -> Self {
        use std::os::unix::ffi::OsStringExt;
        let mut secrets: Vec<(String, Vec<u8>)> = vars
            .into_iter()
            .filter_map(|(name, value)| {
                let name = name.into_string().ok()?;
                is_secret_name(&name).then(|| (name, value.into_vec()))
            })
            .chain(extra.into_iter().map(|(n, v)| (n, v.into_bytes())))
            .filter(|(_, value)| value.len() >= MIN_SECRET_BYTES)
            .collect();
        secrets.sort();
        let mut seen = std::collections::HashSet::new();
        secrets.retain(|(_, value)| seen.insert(value.clone()));
        if secrets.is_empty() {
            return Self::off();
        }
        // Leftmost-longest: a value that contains another is masked whole.
        let matcher = AhoCorasick::builder()
            .match_kind(MatchKind::LeftmostLongest)
            .build(secrets.iter().map(|(_, value)| value));
        let Ok(matcher) = matcher else {
            // Only a pattern set too large for any automaton fails; mask
            // under one name rather than ship the values.
            return Self::off();
        };
        Self {
            matcher: Some(matcher),
            marks: secrets
                .iter()
                .map(|(name, _)| Bytes::from(format!("[redacted:{name}]")))
                .collect(),
            counts: secrets.iter().map(|_| AtomicU64::new(0)).collect(),
            values: secrets.iter().map(|(_, value)| value.clone()).collect(),
            names: secrets.into_iter().map(|(name, _)| name).collect(),
        }
    }

    /// How many bytes at the end of `data` could begin a secret value (the
    /// longest end that is a proper start of one). A line cut there is
    /// masked only once those bytes are joined to the next part, so no part
    /// of a value leaves in either piece.
    pub fn held_back(&self, data: &[u8]) -> usize {
        self.values
            .iter()
            .filter_map(|value| {
                (1..value.len().min(data.len() + 1))
                    .rev()
                    .find(|&n| data.ends_with(&value[..n]))
            })
            .max()
            .unwrap_or(0)
    }

    /// The names whose values are masked (sorted; never the values).
    pub fn names(&self) -> &[String] {
        &self.names
    }

    /// `data` with every secret value replaced by its mark; `data` itself
    /// (no copy) when it holds none.
    pub fn redact(&self, data: Bytes) -> Bytes {
        let Some(matcher) = &self.matcher else {
            return data;
        };
        let mut matches = matcher.find_iter(&data[..]).peekable();
        if matches.peek().is_none() {
            return data;
        }
        let mut out = Vec::with_capacity(data.len() + 32);
        let mut last = 0;
        for found in matches {
            let i = found.pattern().as_usize();
            out.extend_from_slice(&data[last..found.start()]);
            let mark = &self.marks[i];
            let grown = (out.len() + mark.len()).saturating_sub(found.end());
            if grown <= MAX_GROWTH_BYTES {
                out.extend_from_slice(mark);
            } else {
                out.resize(out.len() + found.len(), b'*');
            }
            self.counts[i].fetch_add(1, Ordering::Relaxed);
            last = found.end();
        }
        out.extend_from_slice(&data[last..]);
        Bytes::from(out)
    }

    /// Occurrences masked so far, per name, for names masked at least once.
    pub fn counts(&self) -> Vec<(String, u64)> {
        self.names
            .iter()
            .zip(&self.counts)
            .map(|(name, count)| (name.clone(), count.load(Ordering::Relaxed)))
            .filter(|(_, count)| *count > 0)
            .collect()
    }
}

/// `agent-shim --check`'s line on redaction: the names masked, never values.
pub fn check_line(mode: RedactMode, redactor: &Redactor) -> String {
    match (mode, redactor.names()) {
        (RedactMode::Off, _) => {
            "redaction: off (--redact off); lines are shipped as written".into()
        }
        (RedactMode::Auto, []) => {
            "redaction: auto; no secret-named variable of 8 bytes or more is set".into()
        }
        (RedactMode::Auto, names) => format!(
            "redaction: auto; the values of {} are masked in what is shipped",
            names.join(", ")
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn redactor(vars: &[(&str, &str)]) -> Redactor {
        Redactor::from_vars(
            vars.iter()
                .map(|(n, v)| (OsString::from(n), OsString::from(v))),
            [],
        )
    }

    fn masked(redactor: &Redactor, line: &str) -> String {
        String::from_utf8(redactor.redact(Bytes::from(line.to_owned())).to_vec()).unwrap()
    }

    #[test]
    fn secret_names_are_recognised_by_their_suffix_or_api_key() {
        for name in [
            "OPENAI_API_KEY",
            "DEEPGRAM_API_KEY",
            "LIVEKIT_API_SECRET",
            "GITHUB_TOKEN",
            "DB_PASSWORD",
            "SENTRY_DSN",
            "my_api_key_v2",
            "AWS_ACCESS_KEY_ID",
            "LOGDRAIN_TOKEN",
        ] {
            assert!(is_secret_name(name), "{name}");
        }
        for name in [
            "PATH",
            "HOME",
            "KEYBOARD",
            "AWS_REGION",
            "DATADOG_REGION",
            "TOKENS",
        ] {
            assert!(!is_secret_name(name), "{name}");
        }
    }

    #[test]
    fn every_occurrence_at_any_position_is_masked_and_counted() {
        let r = redactor(&[
            ("OPENAI_API_KEY", "sk-proj-abcdef123456"),
            ("DATADOG_TOKEN", "dd-0123456789"),
            ("PATH", "/usr/bin:/bin"),
        ]);
        assert_eq!(
            masked(
                &r,
                r#"{"openai":"sk-proj-abcdef123456","dd":"dd-0123456789"}sk-proj-abcdef123456"#
            ),
            r#"{"openai":"[redacted:OPENAI_API_KEY]","dd":"[redacted:DATADOG_TOKEN]"}[redacted:OPENAI_API_KEY]"#
        );
        assert_eq!(masked(&r, "PATH=/usr/bin:/bin"), "PATH=/usr/bin:/bin");
        assert_eq!(
            r.counts(),
            vec![("DATADOG_TOKEN".into(), 1), ("OPENAI_API_KEY".into(), 2)]
        );
    }

    #[test]
    fn short_values_and_other_variables_are_left_alone() {
        let r = redactor(&[("SHORT_KEY", "1234567"), ("NAME", "long-enough-value")]);
        assert!(r.names().is_empty());
        assert_eq!(
            masked(&r, "1234567 long-enough-value"),
            "1234567 long-enough-value"
        );
    }

    #[test]
    fn a_value_containing_another_is_masked_whole() {
        let r = redactor(&[("A_KEY", "abcdefgh"), ("B_KEY", "xxabcdefghyy")]);
        assert_eq!(
            masked(&r, "1 xxabcdefghyy 2 abcdefgh"),
            "1 [redacted:B_KEY] 2 [redacted:A_KEY]"
        );
    }

    #[test]
    fn marks_grow_a_line_by_a_bounded_amount_and_every_occurrence_is_still_masked() {
        let name = format!("{}_KEY", "N".repeat(200));
        let r = redactor(&[(&name, "abcdefgh")]);
        let line = "abcdefgh ".repeat(10_000);
        let masked = masked(&r, &line);
        assert!(
            masked.len() <= line.len() + MAX_GROWTH_BYTES,
            "{}",
            masked.len()
        );
        assert!(!masked.contains("abcdefgh"));
        assert_eq!(r.counts(), vec![(name, 10_000)]);
    }

    #[test]
    fn a_line_without_secrets_is_shipped_without_a_copy() {
        let r = redactor(&[("A_KEY", "abcdefgh")]);
        let line = Bytes::from_static(b"nothing secret here");
        assert_eq!(r.redact(line.clone()).as_ptr(), line.as_ptr());
    }

    #[test]
    fn debug_shows_names_never_values() {
        let r = redactor(&[("A_KEY", "value-never-shown")]);
        let shown = format!("{r:?}");
        assert!(shown.contains("A_KEY") && !shown.contains("value-never-shown"));
    }
}
