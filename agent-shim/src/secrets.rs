//! Destination secrets forwarded to the gateway in `Open.secrets`.
//!
//! The shim reads the variables named in [`logdrain::SECRET_VARS`] from its
//! environment once, at start ([`Secrets::from_env`]); tests pass their own
//! variables to [`Secrets::from_vars`]. At start it also checks them with the
//! gateway's own rules ([`logdrain::secrets::check`]) so a wrong secret is
//! seen at once ([`Secrets::warnings`]); it forwards them all the same. It
//! must not judge values itself. Values never appear in `Debug` output, logs,
//! warnings or errors: only the variable names do.
//! [`Secrets::destinations`] sorts the same findings by destination for
//! `agent-shim --check`.

use std::collections::{BTreeMap, HashMap};
use std::ffi::OsString;
use std::fmt;

use logdrain::secrets::{Destination, SecretProblem, DESTINATIONS};

/// What the secrets present make of one destination (names and problems
/// only, never a value).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DestinationState {
    /// Every required secret is set and every value is usable: lines are
    /// delivered there. `names`: the secrets set for it.
    On { names: Vec<&'static str> },
    /// Some required secrets are set, others are missing: nothing is
    /// delivered there. `problems`: wrong values among those set.
    HalfConfigured {
        present: Vec<&'static str>,
        missing: Vec<&'static str>,
        problems: Vec<String>,
    },
    /// Every required secret is set but a value cannot be used: the gateway
    /// keeps the lines until a deployment brings valid secrets.
    Invalid { problems: Vec<String> },
    /// No required secret is set. `unused`: its optional secrets that are
    /// set anyway (for example the agent's own `AWS_REGION`).
    Off { unused: Vec<&'static str> },
}

impl DestinationState {
    /// Whether this state is a mistake of the deployment (`on` and `off`
    /// are not).
    pub fn is_problem(&self) -> bool {
        matches!(
            self,
            DestinationState::HalfConfigured { .. } | DestinationState::Invalid { .. }
        )
    }
}

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

    /// One warning per problem the shared rules find in the secrets read,
    /// each saying what happens to the lines. Never shows a confidential
    /// value.
    pub fn warnings(&self) -> Vec<String> {
        logdrain::secrets::check(&self.values)
            .iter()
            .map(|problem| warning(problem, &self.values))
            .collect()
    }

    /// Every destination, in the gateway's order, with what these secrets
    /// make of it (the findings of [`Secrets::warnings`], by destination).
    pub fn destinations(&self) -> Vec<(&'static Destination, DestinationState)> {
        let problems = logdrain::secrets::check(&self.values);
        DESTINATIONS
            .iter()
            .map(|destination| {
                let set =
                    |name: &&'static str| logdrain::secrets::value(&self.values, name).is_some();
                let (present, missing): (Vec<&'static str>, Vec<&'static str>) =
                    destination.required.iter().copied().partition(set);
                let wrong: Vec<String> = problems
                    .iter()
                    .filter(|p| !matches!(p, SecretProblem::Missing { .. }))
                    .filter(|p| destination.secrets().any(|name| name == p.secret()))
                    .map(ToString::to_string)
                    .collect();
                let state = if present.is_empty() {
                    DestinationState::Off {
                        unused: destination.optional.iter().copied().filter(set).collect(),
                    }
                } else if !missing.is_empty() {
                    DestinationState::HalfConfigured {
                        present,
                        missing,
                        problems: wrong,
                    }
                } else if !wrong.is_empty() {
                    DestinationState::Invalid { problems: wrong }
                } else {
                    DestinationState::On {
                        names: destination.secrets().filter(set).collect(),
                    }
                };
                (destination, state)
            })
            .collect()
    }

    /// Why the endpoint `destination` would reach is not public, judged
    /// from the secrets as written (a Sentry DSN whose host is an internal
    /// address); the gateway may still allow it.
    pub fn endpoint_problem(&self, destination: &Destination) -> Option<SecretProblem> {
        (destination.name == logdrain::secrets::SENTRY.name)
            .then(|| logdrain::secrets::sentry_host_problem(&self.values))
            .flatten()
    }

    /// The map sent in `Open.secrets`.
    pub fn to_open_map(&self) -> HashMap<String, String> {
        self.values
            .iter()
            .map(|(name, value)| (name.clone(), value.clone()))
            .collect()
    }
}

/// A problem and what it means for the lines. A destination whose required
/// secrets are all set makes a route at the gateway, which keeps the lines
/// while a value is wrong; one that misses a required secret makes none.
fn warning(problem: &SecretProblem, values: &BTreeMap<String, String>) -> String {
    match Destination::of_secret(problem.secret()) {
        Some(destination) if !destination.is_enabled_by(values) => format!(
            "{problem}; nothing is delivered to {} and no lines are kept for it until a \
             deployment brings {}",
            destination.name,
            destination.required.join(" and ")
        ),
        _ => format!(
            "{problem}; lines are still sent and kept by the gateway until a deployment \
             brings valid secrets"
        ),
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
    fn valid_or_unused_secrets_give_no_warning() {
        let secrets = Secrets::from_vars(vars(&[
            ("DATADOG_TOKEN", "0123456789abcdef0123456789abcdef"),
            ("DATADOG_REGION", "eu"),
            // The agent's own AWS region, with no CloudWatch key.
            ("AWS_REGION", "somewhere"),
        ]));
        assert_eq!(secrets.warnings(), Vec::<String>::new());
    }

    #[test]
    fn a_wrong_value_warns_that_the_gateway_keeps_the_lines() {
        let secrets =
            Secrets::from_vars(vars(&[("DATADOG_TOKEN", "x"), ("DATADOG_REGION", "mars")]));
        assert_eq!(
            secrets.warnings(),
            [
                r#"DATADOG_REGION is not a Datadog region; use one of us1, us3, us5, us1-fed, us2-fed, eu, ap1, ap2, uk1; lines are still sent and kept by the gateway until a deployment brings valid secrets"#
            ]
        );
        // Forwarded all the same: the gateway keeps the data.
        assert_eq!(secrets.to_open_map()["DATADOG_REGION"], "mars");
    }

    #[test]
    fn an_empty_half_of_a_key_pair_warns_that_nothing_is_delivered() {
        let secrets = Secrets::from_vars(vars(&[
            ("AWS_ACCESS_KEY_ID", "AKIAEXAMPLE"),
            ("AWS_SECRET_ACCESS_KEY", ""),
        ]));
        assert_eq!(
            secrets.warnings(),
            ["AWS_SECRET_ACCESS_KEY is required to deliver to cloudwatch but is missing or empty; \
              nothing is delivered to cloudwatch and no lines are kept for it until a deployment \
              brings AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"]
        );
    }

    #[test]
    fn a_wrong_value_of_an_incomplete_destination_does_not_promise_kept_lines() {
        let secrets = Secrets::from_vars(vars(&[
            ("AWS_ACCESS_KEY_ID", "AKIAEXAMPLE"),
            ("AWS_REGION", "moon"),
        ]));
        let warnings = secrets.warnings();
        assert_eq!(warnings.len(), 2, "{warnings:?}");
        assert!(
            warnings[1].starts_with("AWS_REGION is not an AWS region name"),
            "{warnings:?}"
        );
        for warning in &warnings {
            assert!(
                warning.contains("nothing is delivered to cloudwatch"),
                "{warning}"
            );
        }
    }

    #[test]
    fn warnings_never_show_a_confidential_value() {
        let secrets = Secrets::from_vars(vars(&[
            ("SENTRY_DSN", "https://leaky-key@sentry.example.com/1"),
            ("NEW_RELIC_LICENSE_KEY", "leaky key"),
        ]));
        let warnings = secrets.warnings();
        assert_eq!(warnings.len(), 2, "{warnings:?}");
        for warning in &warnings {
            assert!(!warning.contains("leaky"), "{warning}");
            assert!(!warning.contains("sentry.example"), "{warning}");
        }
    }

    fn state_of(secrets: &Secrets, name: &str) -> DestinationState {
        secrets
            .destinations()
            .into_iter()
            .find(|(d, _)| d.name == name)
            .map(|(_, state)| state)
            .unwrap()
    }

    #[test]
    fn destinations_are_on_half_configured_invalid_or_off() {
        let secrets = Secrets::from_vars(vars(&[
            ("DATADOG_TOKEN", "0123456789abcdef0123456789abcdef"),
            ("DATADOG_REGION", "eu"),
            ("AWS_ACCESS_KEY_ID", "AKIAEXAMPLE"),
            ("SENTRY_DSN", "htps://leaky@o1.ingest.sentry.io/2"),
        ]));
        assert_eq!(
            state_of(&secrets, "datadog"),
            DestinationState::On {
                names: vec!["DATADOG_TOKEN", "DATADOG_REGION"]
            }
        );
        assert_eq!(
            state_of(&secrets, "cloudwatch"),
            DestinationState::HalfConfigured {
                present: vec!["AWS_ACCESS_KEY_ID"],
                missing: vec!["AWS_SECRET_ACCESS_KEY"],
                problems: vec![],
            }
        );
        let DestinationState::Invalid { problems } = state_of(&secrets, "sentry") else {
            panic!("a DSN that does not parse makes sentry invalid");
        };
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(problems[0].starts_with("SENTRY_DSN"), "{problems:?}");
        assert!(!problems[0].contains("leaky"), "{problems:?}");
        assert_eq!(
            state_of(&secrets, "newrelic"),
            DestinationState::Off { unused: vec![] }
        );
    }

    #[test]
    fn an_optional_secret_alone_leaves_its_destination_off_and_named() {
        let secrets = Secrets::from_vars(vars(&[("AWS_REGION", "eu-west-1")]));
        let state = state_of(&secrets, "cloudwatch");
        assert_eq!(
            state,
            DestinationState::Off {
                unused: vec!["AWS_REGION"]
            }
        );
        assert!(!state.is_problem());
    }

    #[test]
    fn debug_shows_names_but_never_values() {
        let secrets = Secrets::from_vars(vars(&[("AWS_SECRET_ACCESS_KEY", "very-secret-value")]));
        let debug = format!("{secrets:?}");
        assert!(debug.contains("AWS_SECRET_ACCESS_KEY"));
        assert!(!debug.contains("very-secret-value"));
    }
}
