//! New Relic configuration from a route's secrets: the license key, checked,
//! and the Log API endpoint it belongs to.
//!
//! [`Region::of_key`] and [`endpoint_url`] are the one place that decides
//! the endpoint: New Relic's infrastructure agent reads the region from the
//! key's leading letters (`^([a-z]{2,3})`, `pkg/license/license.go` in
//! <https://github.com/newrelic/infrastructure-agent>): `eu` → the EU Log
//! API, `gov` → FedRAMP, anything else the US endpoint; the gateway's
//! `--newrelic-url` override wins over all. The agent also knows `jp`, but
//! New Relic's own docs name no Japan Log API endpoint that we could
//! confirm: such keys go to the US endpoint unless `--newrelic-url` says
//! otherwise. The key's characters are checked by
//! the shared rule in [`logdrain::secrets`], which the shim also applies at
//! start. This module must never format a key: `Debug` of [`Endpoint`]
//! redacts it.

use std::fmt;

use reqwest::header::HeaderValue;
use url::Url;

use logdrain::secrets::{self as rules, NEW_RELIC};

use crate::route::Secrets;
use crate::sinks::SecretError;

/// The secret that enables New Relic.
pub use logdrain::secrets::NEW_RELIC_LICENSE_KEY as LICENSE_KEY_SECRET;
/// The path of the Log API on every endpoint.
pub const LOG_PATH: &str = "/log/v1";
/// The US Log API.
pub const US_URL: &str = "https://log-api.newrelic.com/log/v1";
/// The EU Log API.
pub const EU_URL: &str = "https://log-api.eu.newrelic.com/log/v1";
/// The FedRAMP Log API.
pub const GOV_URL: &str = "https://gov-log-api.newrelic.com/log/v1";
/// The prefix of EU license keys (for example `eu01xx…`).
pub const EU_KEY_PREFIX: &str = "eu";
/// The region of FedRAMP license keys.
pub const GOV_KEY_REGION: &str = "gov";

/// The New Relic data center of an account, as its license key tells it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Region {
    Us,
    Eu,
    Gov,
}

impl Region {
    /// EU license keys start with `eu` (`eu01xx…`). The check is
    /// case-sensitive, as in New Relic's own log shippers: keys are issued in
    /// lowercase, a US key is hex and so can never start with `eu`, and an
    /// upper-cased key would be refused by New Relic anyway.
    ///
    /// The region is the key's leading 2 or 3 lowercase letters, as in the
    /// infrastructure agent: `gov` (a hex US key cannot start with it) is
    /// FedRAMP.
    pub fn of_key(key: &str) -> Region {
        let letters = key.bytes().take_while(u8::is_ascii_lowercase).count();
        let region = &key[..letters.min(3)];
        if region.starts_with(EU_KEY_PREFIX) {
            Region::Eu
        } else if region == GOV_KEY_REGION {
            Region::Gov
        } else {
            Region::Us
        }
    }

    /// The Log API URL of the region.
    pub fn url(self) -> &'static str {
        match self {
            Region::Us => US_URL,
            Region::Eu => EU_URL,
            Region::Gov => GOV_URL,
        }
    }
}

/// The Log API URL of a route and its license key. `Debug` never shows the
/// key.
#[derive(Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub url: Url,
    /// The `X-License-Key` value, marked sensitive.
    pub license_key: HeaderValue,
}

impl fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Endpoint")
            .field("url", &self.url.as_str())
            .field("license_key", &format_args!("<redacted>"))
            .finish()
    }
}

impl Endpoint {
    /// The key's text, to redact it from anything echoed back.
    pub fn secret(&self) -> &str {
        // Built from visible ASCII only (see `check_key`).
        self.license_key.to_str().unwrap_or_default()
    }
}

/// Reads `NEW_RELIC_LICENSE_KEY` and decides the endpoint. Surrounding
/// whitespace (a pasted line break) is ignored.
pub fn from_secrets(
    secrets: &Secrets,
    base_override: Option<&Url>,
) -> Result<Endpoint, SecretError> {
    let key = rules::required(
        &NEW_RELIC,
        LICENSE_KEY_SECRET,
        secrets.get(LICENSE_KEY_SECRET),
    )?;
    let license_key = header_value(key)?;
    Ok(Endpoint {
        url: endpoint_url(Region::of_key(key), base_override),
        license_key,
    })
}

/// Where an agent's logs land in New Relic: the account's data center (from
/// the license key's form) and the Logs query (`service_name:<agent-id>`,
/// `hostname` = agent-server id).
pub fn location(
    agent_id: &str,
    secrets: &Secrets,
    base_override: Option<&Url>,
) -> Result<crate::sinks::Location, SecretError> {
    let endpoint = from_secrets(secrets, base_override)?;
    let region = match Region::of_key(endpoint.secret()) {
        Region::Us => "US",
        Region::Eu => "EU",
        Region::Gov => "FedRAMP",
    };
    let host = endpoint.url.host_str().unwrap_or_default().to_string();
    let query = format!("service_name:{agent_id}");
    Ok(crate::sinks::Location::new(
        format!(
            "New Relic {region} data center ({host}): Logs, query `{query}` (hostname = agent-server id)"
        ),
        &[("region", region), ("endpoint_host", &host), ("query", &query)],
    ))
}

/// Checks the key ([`rules::new_relic_license_key`]: visible ASCII, any
/// length and form) and makes it a sensitive header value.
fn header_value(key: &str) -> Result<HeaderValue, SecretError> {
    let key = rules::new_relic_license_key(key)?;
    // Visible ASCII is always a valid header value.
    let mut value = HeaderValue::from_str(key).map_err(|_| SecretError::Malformed {
        secret: LICENSE_KEY_SECRET,
        problem: "it cannot be sent in an HTTP header",
    })?;
    value.set_sensitive(true);
    Ok(value)
}

/// The one place that decides where a route's logs go.
///
/// * `base_override` (`--newrelic-url`) → its scheme, host and port with the
///   path [`LOG_PATH`], whatever the region (as `--datadog-url` does for
///   Datadog);
/// * otherwise the region's Log API: [`EU_URL`], [`GOV_URL`] or [`US_URL`].
pub fn endpoint_url(region: Region, base_override: Option<&Url>) -> Url {
    match base_override {
        Some(base) => {
            let mut url = base.clone();
            url.set_path(LOG_PATH);
            url.set_query(None);
            url.set_fragment(None);
            url
        }
        // Our own constants, pinned by the tests.
        None => Url::parse(region.url())
            .unwrap_or_else(|e| unreachable!("Log API URL {} does not parse: {e}", region.url())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const US_KEY: &str = "0123456789abcdef0123456789abcdef0123NRAL";
    const EU_KEY: &str = "eu01xx6789abcdef0123456789abcdef0123NRAL";

    fn secrets(key: &str) -> Secrets {
        Secrets([(LICENSE_KEY_SECRET.to_string(), key.to_string())].into())
    }

    #[test]
    fn a_us_key_goes_to_the_us_log_api() {
        let ep = from_secrets(&secrets(US_KEY), None).unwrap();
        assert_eq!(ep.url.as_str(), "https://log-api.newrelic.com/log/v1");
        assert_eq!(ep.license_key.to_str().unwrap(), US_KEY);
        assert!(ep.license_key.is_sensitive());
    }

    #[test]
    fn a_key_starting_with_eu_goes_to_the_eu_log_api() {
        let ep = from_secrets(&secrets(EU_KEY), None).unwrap();
        assert_eq!(ep.url.as_str(), "https://log-api.eu.newrelic.com/log/v1");
        assert_eq!(Region::of_key("eu"), Region::Eu);
    }

    #[test]
    fn a_key_whose_region_is_gov_goes_to_the_fedramp_log_api() {
        let key = "gov01x6789abcdef0123456789abcdef0123NRAL";
        let ep = from_secrets(&secrets(key), None).unwrap();
        assert_eq!(ep.url.as_str(), "https://gov-log-api.newrelic.com/log/v1");
        // The agent reads at most three letters: `govx…` is `gov`.
        assert_eq!(Region::of_key("govx01"), Region::Gov);
        assert_eq!(Region::of_key("go01"), Region::Us);
        assert_eq!(Region::of_key("jp01xx"), Region::Us, "unconfirmed endpoint");
        assert_eq!(Region::of_key(""), Region::Us);
    }

    #[test]
    fn the_eu_prefix_is_case_sensitive_like_new_relics_shippers() {
        assert_eq!(Region::of_key("EU01xx"), Region::Us);
        assert_eq!(Region::of_key("e0123"), Region::Us);
        assert_eq!(Region::of_key("xeu01"), Region::Us);
    }

    #[test]
    fn an_override_replaces_scheme_host_and_port_but_keeps_the_path() {
        let base = Url::parse("http://127.0.0.1:9123/ignored/path?x=1#f").unwrap();
        for key in [US_KEY, EU_KEY] {
            let ep = from_secrets(&secrets(key), Some(&base)).unwrap();
            assert_eq!(ep.url.as_str(), "http://127.0.0.1:9123/log/v1");
        }
    }

    #[test]
    fn surrounding_whitespace_is_ignored() {
        let ep = from_secrets(&secrets(&format!("  {EU_KEY}\n")), None).unwrap();
        assert_eq!(ep.secret(), EU_KEY);
        assert_eq!(ep.url.host_str(), Some("log-api.eu.newrelic.com"));
    }

    #[test]
    fn a_missing_or_blank_key_is_named() {
        for s in [Secrets::default(), secrets(""), secrets(" \n ")] {
            let err = from_secrets(&s, None).unwrap_err();
            assert_eq!(
                err.to_string(),
                "NEW_RELIC_LICENSE_KEY is required to deliver to newrelic but is missing or empty"
            );
        }
    }

    #[test]
    fn a_key_with_whitespace_or_control_characters_is_refused_without_showing_it() {
        for bad in [
            "abc def",
            "abc\ndef",
            "abc\u{7f}def",
            "abc\u{0}def",
            "abcédef",
        ] {
            let err = from_secrets(&secrets(bad), None).unwrap_err();
            let text = err.to_string();
            assert!(
                text.starts_with("NEW_RELIC_LICENSE_KEY cannot be used: it contains spaces"),
                "{text}"
            );
            assert!(!text.contains("abc"), "{text}");
        }
    }

    #[test]
    fn keys_of_any_length_and_form_are_accepted() {
        assert!(from_secrets(&secrets("short"), None).is_ok());
        assert!(from_secrets(&secrets(&"f".repeat(100)), None).is_ok());
    }

    #[test]
    fn debug_of_an_endpoint_never_shows_the_key() {
        let ep = from_secrets(&secrets(US_KEY), None).unwrap();
        let debug = format!("{ep:?}");
        assert!(!debug.contains(US_KEY), "{debug}");
        assert!(debug.contains("<redacted>"), "{debug}");
    }
}
