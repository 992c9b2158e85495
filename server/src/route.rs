//! Routes: which destinations a stream's secrets enable.
//!
//! A route is one (agent, destination, credentials) triple. Each route has its
//! own queue cursor and its own delivery worker, so a failing vendor or a bad
//! credential never delays another route. This module owns the route
//! identity and the split of a stream's secrets into per-destination sets.
//! Which secrets each destination takes is the shared table in
//! [`logdrain::secrets`] (the shim checks against the same table). This
//! module must not validate values (the shared rules and each sink's config
//! do) and must never format a secret value.

use std::collections::BTreeMap;
use std::fmt;

use hmac::{Hmac, Mac};
use logdrain::secrets::{self as contract, Destination};
use sha2::Sha256;

/// Every destination logdrain can deliver to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DestinationKind {
    Datadog,
    CloudWatch,
    Sentry,
    NewRelic,
}

impl DestinationKind {
    pub const ALL: [DestinationKind; 4] = [
        DestinationKind::Datadog,
        DestinationKind::CloudWatch,
        DestinationKind::Sentry,
        DestinationKind::NewRelic,
    ];

    /// Its entry in the shared table: name and secrets.
    pub fn contract(self) -> &'static Destination {
        match self {
            DestinationKind::Datadog => &contract::DATADOG,
            DestinationKind::CloudWatch => &contract::CLOUDWATCH,
            DestinationKind::Sentry => &contract::SENTRY,
            DestinationKind::NewRelic => &contract::NEW_RELIC,
        }
    }

    /// Stable lowercase name, used in metrics labels and on disk.
    pub fn name(self) -> &'static str {
        self.contract().name
    }

    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.name() == name)
    }

    /// Secrets that must all be present (and non-empty) to enable it.
    pub fn required_secrets(self) -> &'static [&'static str] {
        self.contract().required
    }

    /// Secrets that are used when present.
    pub fn optional_secrets(self) -> &'static [&'static str] {
        self.contract().optional
    }
}

impl fmt::Display for DestinationKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The secrets of one destination, by environment variable name.
///
/// `Debug` never shows values.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct Secrets(pub BTreeMap<String, String>);

impl Secrets {
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0.get(name).map(String::as_str)
    }
}

impl fmt::Debug for Secrets {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries(self.0.keys().map(|k| format!("{k}=<redacted>")))
            .finish()
    }
}

/// Identity of a route: (agent, destination, credentials).
///
/// `cred_id` is a keyed hash of the destination's secrets: it tells two
/// credentials apart without revealing them.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RouteKey {
    pub agent_id: String,
    pub kind: DestinationKind,
    pub cred_id: String,
}

impl fmt::Display for RouteKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}/{}", self.agent_id, self.kind, self.cred_id)
    }
}

/// Splits the secrets of an opening message into one set per destination
/// whose required secrets are all present and non-empty.
///
/// `key` keys the credential hash (the gateway's signing key).
pub fn routes_for(
    agent_id: &str,
    secrets: &BTreeMap<String, String>,
    key: &[u8],
) -> Vec<(RouteKey, Secrets)> {
    DestinationKind::ALL
        .into_iter()
        .filter(|kind| kind.contract().is_enabled_by(secrets))
        .map(|kind| {
            let subset: BTreeMap<String, String> = kind
                .contract()
                .secrets()
                .filter_map(|name| secrets.get(name).map(|v| (name.to_string(), v.clone())))
                .collect();
            let cred_id = credential_id(key, kind, &subset);
            (
                RouteKey {
                    agent_id: agent_id.to_string(),
                    kind,
                    cred_id,
                },
                Secrets(subset),
            )
        })
        .collect()
}

fn credential_id(key: &[u8], kind: DestinationKind, secrets: &BTreeMap<String, String>) -> String {
    // HMAC accepts keys of any length, so this cannot fail.
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key)
        .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
    mac.update(kind.name().as_bytes());
    for (k, v) in secrets {
        mac.update(&(k.len() as u64).to_be_bytes());
        mac.update(k.as_bytes());
        mac.update(&(v.len() as u64).to_be_bytes());
        mac.update(v.as_bytes());
    }
    hex::encode(&mac.finalize().into_bytes()[..8])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secrets(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn a_destination_is_enabled_only_when_all_required_secrets_are_present() {
        let s = secrets(&[("DATADOG_TOKEN", "abc"), ("AWS_ACCESS_KEY_ID", "AKIA")]);
        let routes = routes_for("a1", &s, b"k");
        assert_eq!(routes.len(), 1);
        assert_eq!(routes[0].0.kind, DestinationKind::Datadog);
    }

    #[test]
    fn empty_secret_does_not_enable_a_destination() {
        let s = secrets(&[("DATADOG_TOKEN", "  ")]);
        assert!(routes_for("a1", &s, b"k").is_empty());
    }

    #[test]
    fn different_credentials_make_different_routes() {
        let a = routes_for("a1", &secrets(&[("DATADOG_TOKEN", "one")]), b"k");
        let b = routes_for("a1", &secrets(&[("DATADOG_TOKEN", "two")]), b"k");
        assert_ne!(a[0].0, b[0].0);
        let again = routes_for("a1", &secrets(&[("DATADOG_TOKEN", "one")]), b"k");
        assert_eq!(a[0].0, again[0].0);
    }

    #[test]
    fn every_destination_of_the_shared_table_is_a_kind_with_its_stable_name() {
        let names: Vec<&str> = DestinationKind::ALL.iter().map(|k| k.name()).collect();
        // On disk and in metrics: these must never change.
        assert_eq!(names, ["datadog", "cloudwatch", "sentry", "newrelic"]);
        for destination in contract::DESTINATIONS {
            let kind = DestinationKind::from_name(destination.name).unwrap();
            assert_eq!(kind.contract(), &destination);
        }
        assert_eq!(DestinationKind::ALL.len(), contract::DESTINATIONS.len());
    }

    #[test]
    fn debug_of_secrets_never_shows_values() {
        let s = Secrets(secrets(&[("DATADOG_TOKEN", "supersecret")]));
        assert!(!format!("{s:?}").contains("supersecret"));
    }
}
