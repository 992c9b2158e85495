//! Destination secrets forwarded to the gateway in `Open.secrets`.
//!
//! The shim reads the variables named in [`logdrain::SECRET_VARS`] from its
//! environment once, at start ([`Secrets::from_env`]); tests pass their own
//! variables to [`Secrets::from_vars`]. Values never appear in `Debug`
//! output, logs or errors: only the variable names do.

use std::collections::{BTreeMap, HashMap};
use std::ffi::OsString;
use std::fmt;

/// The secrets present in the environment, by variable name.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Secrets {
    values: BTreeMap<String, String>,
    /// Secret variables that were set but not valid UTF-8 (names only).
    not_utf8: Vec<String>,
}

impl Secrets {
    /// Reads the secret variables from the process environment.
    pub fn from_env() -> Self {
        Self::from_vars(std::env::vars_os())
    }

    /// Keeps the variables named in [`logdrain::SECRET_VARS`] that are set
    /// to a non-empty value. Other variables are ignored.
    pub fn from_vars(vars: impl IntoIterator<Item = (OsString, OsString)>) -> Self {
        let mut secrets = Self::default();
        for (name, value) in vars {
            let Some(name) = name.to_str() else { continue };
            if !logdrain::SECRET_VARS.contains(&name) {
                continue;
            }
            match value.into_string() {
                Ok(value) if value.is_empty() => {}
                Ok(value) => {
                    secrets.values.insert(name.to_owned(), value);
                }
                Err(_) => secrets.not_utf8.push(name.to_owned()),
            }
        }
        secrets
    }

    /// Names of the secrets present, sorted.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.values.keys().map(String::as_str)
    }

    /// Names of secret variables ignored because they are not UTF-8.
    pub fn ignored_not_utf8(&self) -> &[String] {
        &self.not_utf8
    }

    /// The map sent in `Open.secrets`.
    pub fn to_open_map(&self) -> HashMap<String, String> {
        self.values
            .iter()
            .map(|(name, value)| (name.clone(), value.clone()))
            .collect()
    }
}

impl fmt::Debug for Secrets {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Secrets")
            .field("names", &self.values.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::ffi::OsStringExt;

    fn vars(pairs: &[(&str, &str)]) -> Vec<(OsString, OsString)> {
        pairs
            .iter()
            .map(|(k, v)| (OsString::from(k), OsString::from(v)))
            .collect()
    }

    #[test]
    fn keeps_only_known_secret_variables() {
        let secrets = Secrets::from_vars(vars(&[
            ("DATADOG_TOKEN", "dd-secret"),
            ("AWS_REGION", "eu-west-1"),
            ("PATH", "/bin"),
            ("LOGDRAIN_TOKEN", "ingest"),
        ]));
        let map = secrets.to_open_map();
        assert_eq!(map.len(), 2);
        assert_eq!(map["DATADOG_TOKEN"], "dd-secret");
        assert_eq!(map["AWS_REGION"], "eu-west-1");
    }

    #[test]
    fn empty_values_count_as_absent() {
        let secrets = Secrets::from_vars(vars(&[("SENTRY_DSN", "")]));
        assert!(secrets.to_open_map().is_empty());
    }

    #[test]
    fn non_utf8_values_are_ignored_by_name() {
        let secrets = Secrets::from_vars(vec![(
            OsString::from("NEW_RELIC_LICENSE_KEY"),
            OsString::from_vec(vec![0xff, 0xfe]),
        )]);
        assert!(secrets.to_open_map().is_empty());
        assert_eq!(secrets.ignored_not_utf8(), ["NEW_RELIC_LICENSE_KEY"]);
    }

    #[test]
    fn debug_shows_names_but_never_values() {
        let secrets = Secrets::from_vars(vars(&[("AWS_SECRET_ACCESS_KEY", "very-secret-value")]));
        let debug = format!("{secrets:?}");
        assert!(debug.contains("AWS_SECRET_ACCESS_KEY"));
        assert!(!debug.contains("very-secret-value"));
    }
}
