//! CloudWatch Logs configuration: a route's secrets → the AWS SDK client
//! config, and the gateway's endpoint override.
//!
//! Every route gets a client built only from its own secrets:
//! `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, optional `AWS_SESSION_TOKEN`
//! and `AWS_REGION` (default [`DEFAULT_REGION`]). The config is built
//! explicitly ([`client_config`]) with static credentials: there is no
//! default credential chain, no instance metadata, no profile file, and
//! nothing here reads the process environment for credentials. The only
//! environment the gateway itself contributes is the endpoint override
//! ([`endpoint_override`]), which is an address, never a credential.
//!
//! The values are checked by the shared rules in [`logdrain::secrets`] (the
//! keys' characters, the form of a region name), which the shim also applies
//! at start. This module must never format a secret: `Debug` of
//! [`RouteCredentials`] redacts every key.

use std::fmt;

use aws_sdk_cloudwatchlogs::config::retry::RetryConfig;
use aws_sdk_cloudwatchlogs::config::timeout::TimeoutConfig;
use aws_sdk_cloudwatchlogs::config::{
    BehaviorVersion, Credentials, Region, SharedCredentialsProvider, SharedHttpClient,
};
use logdrain::secrets::{
    self as rules, AWS_ACCESS_KEY_ID, AWS_REGION, AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN,
    CLOUDWATCH,
};
use url::Url;

use crate::route::Secrets;
use crate::sinks::{SecretError, SinkError, SinkSettings};

/// `AWS_REGION` → region name, absent or blank meaning [`DEFAULT_REGION`]
/// (the shared rule).
pub use logdrain::secrets::aws_region as parse_region;
/// Region used when `AWS_REGION` is absent or blank.
pub use logdrain::secrets::AWS_DEFAULT_REGION as DEFAULT_REGION;

/// Environment variables of the gateway (not of the agents) that override
/// the endpoint, most specific first, as in the AWS SDKs.
pub const ENDPOINT_ENV: [&str; 2] = ["AWS_ENDPOINT_URL_CLOUDWATCH_LOGS", "AWS_ENDPOINT_URL"];

/// When set to `true` in the gateway's environment, [`ENDPOINT_ENV`] is
/// ignored, as in the AWS SDKs. `--cloudwatch-url` still applies.
pub const IGNORE_ENDPOINT_ENV: &str = "AWS_IGNORE_CONFIGURED_ENDPOINT_URLS";

/// Name the credentials are registered under in the SDK (shows in SDK
/// debug logs; it says where they came from, not what they are).
const PROVIDER_NAME: &str = "logdrain-route-secrets";

/// The log group of an agent: `livekit/<agent-id>`.
pub fn log_group_name(agent_id: &str) -> String {
    format!("livekit/{agent_id}")
}

/// One route's AWS credentials and region. `Debug` never shows a key.
#[derive(Clone, PartialEq, Eq)]
pub struct RouteCredentials {
    access_key_id: String,
    secret_access_key: String,
    session_token: Option<String>,
    region: String,
}

impl fmt::Debug for RouteCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RouteCredentials")
            .field("access_key_id", &"<redacted>")
            .field("secret_access_key", &"<redacted>")
            .field(
                "session_token",
                &self.session_token.as_ref().map(|_| "<redacted>"),
            )
            .field("region", &self.region)
            .finish()
    }
}

impl RouteCredentials {
    /// The validated region name.
    pub fn region(&self) -> &str {
        &self.region
    }

    /// Every confidential value, to redact them from anything AWS echoes.
    pub fn secret_values(&self) -> Vec<&str> {
        let mut values = vec![self.access_key_id.as_str(), &self.secret_access_key];
        values.extend(self.session_token.as_deref());
        values
    }

    fn credentials(&self) -> Credentials {
        Credentials::new(
            self.access_key_id.clone(),
            self.secret_access_key.clone(),
            self.session_token.clone(),
            None,
            PROVIDER_NAME,
        )
    }
}

/// Reads a route's AWS secrets. Keys are trimmed; an empty
/// `AWS_SESSION_TOKEN` counts as absent.
pub fn from_secrets(secrets: &Secrets) -> Result<RouteCredentials, SecretError> {
    let access_key_id = required_key(secrets, AWS_ACCESS_KEY_ID)?;
    let secret_access_key = required_key(secrets, AWS_SECRET_ACCESS_KEY)?;
    let session_token = match rules::non_blank(secrets.get(AWS_SESSION_TOKEN)) {
        None => None,
        Some(token) => Some(rules::aws_key(AWS_SESSION_TOKEN, token)?.to_string()),
    };
    let region = parse_region(secrets.get(AWS_REGION))?;
    Ok(RouteCredentials {
        access_key_id,
        secret_access_key,
        session_token,
        region,
    })
}

/// AWS regions this gateway knows by name. Only advisory: a region not
/// listed is still used (AWS adds regions), but `status` points at it,
/// because a typo such as `us-weast-1` has the right form and fails only as
/// an unreachable endpoint.
pub const KNOWN_REGIONS: &[&str] = &[
    "af-south-1",
    "ap-east-1",
    "ap-east-2",
    "ap-northeast-1",
    "ap-northeast-2",
    "ap-northeast-3",
    "ap-south-1",
    "ap-south-2",
    "ap-southeast-1",
    "ap-southeast-2",
    "ap-southeast-3",
    "ap-southeast-4",
    "ap-southeast-5",
    "ap-southeast-6",
    "ap-southeast-7",
    "ca-central-1",
    "ca-west-1",
    "cn-north-1",
    "cn-northwest-1",
    "eu-central-1",
    "eu-central-2",
    "eu-north-1",
    "eu-south-1",
    "eu-south-2",
    "eu-west-1",
    "eu-west-2",
    "eu-west-3",
    "il-central-1",
    "me-central-1",
    "me-south-1",
    "mx-central-1",
    "sa-east-1",
    "us-east-1",
    "us-east-2",
    "us-gov-east-1",
    "us-gov-west-1",
    "us-west-1",
    "us-west-2",
];

/// Where an agent's lines land in CloudWatch Logs: the group
/// `livekit/<agent-id>` in the route's `AWS_REGION`, one log stream per
/// agent-server id.
pub fn location(
    agent_id: &str,
    secrets: &Secrets,
    endpoint_override: Option<&Url>,
) -> Result<crate::sinks::Location, SecretError> {
    let credentials = from_secrets(secrets)?;
    let group = log_group_name(agent_id);
    let region = credentials.region();
    let mut summary =
        format!("CloudWatch Logs group {group} in region {region} (log stream = agent-server id)");
    let mut fields = vec![("log_group", group.as_str()), ("region", region)];
    if !KNOWN_REGIONS.contains(&region) {
        summary.push_str(&format!(
            "; WARNING: {region} is not an AWS region this gateway knows: check AWS_REGION for a typo"
        ));
        fields.push(("unknown_region", region));
    }
    let endpoint = endpoint_override.map(|url| url.as_str().trim_end_matches('/').to_string());
    if let Some(endpoint) = &endpoint {
        summary.push_str(&format!("; sent to the override {endpoint}"));
        fields.push(("endpoint", endpoint));
    }
    Ok(crate::sinks::Location::new(summary, &fields))
}

fn required_key(secrets: &Secrets, name: &'static str) -> Result<String, SecretError> {
    let value = rules::required(&CLOUDWATCH, name, secrets.get(name))?;
    Ok(rules::aws_key(name, value)?.to_string())
}

/// The endpoint every CloudWatch sink uses instead of AWS's, if any:
/// `--cloudwatch-url` / `LOGDRAIN_CLOUDWATCH_URL` (`flag`) wins; otherwise
/// `AWS_ENDPOINT_URL_CLOUDWATCH_LOGS`, then `AWS_ENDPOINT_URL`, read through
/// `env` from the gateway's environment (ignored when
/// `AWS_IGNORE_CONFIGURED_ENDPOINT_URLS=true`). Empty variables count as
/// unset. Only an address is taken from the environment, never credentials.
pub fn endpoint_override(
    flag: Option<&Url>,
    env: impl Fn(&str) -> Option<String>,
) -> Result<Option<Url>, SinkError> {
    if let Some(url) = flag {
        check_endpoint("--cloudwatch-url", url)?;
        return Ok(Some(url.clone()));
    }
    let ignore = env(IGNORE_ENDPOINT_ENV).is_some_and(|v| v.trim().eq_ignore_ascii_case("true"));
    if ignore {
        return Ok(None);
    }
    for name in ENDPOINT_ENV {
        let Some(value) = env(name).filter(|v| !v.trim().is_empty()) else {
            continue;
        };
        let url = Url::parse(value.trim()).map_err(|e| SinkError::Config {
            reason: format!(
                "{name} {value:?} is not a URL ({e}); give an http:// or https:// URL, \
                 for example http://127.0.0.1:5000"
            ),
        })?;
        check_endpoint(name, &url)?;
        return Ok(Some(url));
    }
    Ok(None)
}

fn check_endpoint(source: &str, url: &Url) -> Result<(), SinkError> {
    let http = matches!(url.scheme(), "http" | "https");
    if !http || url.host_str().is_none() || url.cannot_be_a_base() {
        return Err(SinkError::Config {
            reason: format!(
                "{source} {url} is not usable: give an http:// or https:// URL with a host, \
                 for example http://127.0.0.1:5000"
            ),
        });
    }
    if !url.username().is_empty() || url.password().is_some() || url.query().is_some() {
        return Err(SinkError::Config {
            reason: format!(
                "{source} must not carry credentials or a query; \
                 give only scheme, host, port and path"
            ),
        });
    }
    Ok(())
}

/// The SDK config of one route: its static credentials and region, the
/// endpoint override, the SDK's own retries disabled (the delivery engine
/// is the one retry mechanism), and the gateway's timeouts.
pub fn client_config(
    route: &RouteCredentials,
    settings: &SinkSettings,
    http: SharedHttpClient,
) -> aws_sdk_cloudwatchlogs::Config {
    let mut builder = aws_sdk_cloudwatchlogs::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .credentials_provider(SharedCredentialsProvider::new(route.credentials()))
        .region(Region::new(route.region.clone()))
        .retry_config(RetryConfig::disabled())
        .timeout_config(
            TimeoutConfig::builder()
                .connect_timeout(settings.connect_timeout)
                .operation_timeout(settings.request_timeout)
                .build(),
        )
        .http_client(http);
    if let Some(url) = &settings.cloudwatch_url {
        // The SDK appends the operation's path ("/") itself.
        builder = builder.endpoint_url(url.as_str().trim_end_matches('/'));
    }
    builder.build()
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn secrets(pairs: &[(&str, &str)]) -> Secrets {
        Secrets(
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        )
    }

    #[test]
    fn region_names_of_every_partition_are_accepted() {
        for name in [
            "us-west-2",
            "eu-central-1",
            "ap-southeast-5",
            "us-gov-west-1",
            "cn-north-1",
            "il-central-1",
            "us-iso-east-1",
            "eusc-de-east-1",
        ] {
            assert_eq!(parse_region(Some(name)).unwrap(), name);
        }
    }

    #[test]
    fn a_missing_or_blank_region_means_us_west_2_and_case_is_ignored() {
        assert_eq!(parse_region(None).unwrap(), "us-west-2");
        assert_eq!(parse_region(Some(" ")).unwrap(), "us-west-2");
        assert_eq!(parse_region(Some(" EU-West-1\n")).unwrap(), "eu-west-1");
    }

    #[test]
    fn a_value_that_is_not_a_region_name_is_named_with_the_accepted_form() {
        let err = parse_region(Some("mars-1")).unwrap_err();
        assert_eq!(
            err.to_string(),
            r#"AWS_REGION is not an AWS region name; use a name like us-west-2 or eu-central-1"#
        );
        for bad in [
            "us-west",
            "uswest2",
            "us-west-2a",
            "us_west_2",
            "us--west-2",
            "u-west-2",
            "https://logs.us-west-2.amazonaws.com",
        ] {
            assert!(parse_region(Some(bad)).is_err(), "{bad:?} must be refused");
        }
    }

    #[test]
    fn an_empty_key_is_named_without_any_value() {
        let err = from_secrets(&secrets(&[
            ("AWS_ACCESS_KEY_ID", "  "),
            ("AWS_SECRET_ACCESS_KEY", "s3cr3t"),
        ]))
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "AWS_ACCESS_KEY_ID is required to deliver to cloudwatch but is missing or empty"
        );
        let err = from_secrets(&secrets(&[("AWS_ACCESS_KEY_ID", "AKIAEXAMPLE")])).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("AWS_SECRET_ACCESS_KEY is required"),
            "{err}"
        );
    }

    #[test]
    fn a_key_with_a_line_break_is_refused_without_showing_it() {
        let err = from_secrets(&secrets(&[
            ("AWS_ACCESS_KEY_ID", "AKIAEXAMPLE"),
            ("AWS_SECRET_ACCESS_KEY", "abc\ndef"),
        ]))
        .unwrap_err();
        let text = err.to_string();
        assert!(
            text.starts_with("AWS_SECRET_ACCESS_KEY cannot be used"),
            "{text}"
        );
        assert!(!text.contains("abc"), "{text}");
    }

    #[test]
    fn keys_are_trimmed_and_an_empty_session_token_is_absent() {
        let route = from_secrets(&secrets(&[
            ("AWS_ACCESS_KEY_ID", " AKIAEXAMPLE\n"),
            ("AWS_SECRET_ACCESS_KEY", "s3cr3t"),
            ("AWS_SESSION_TOKEN", ""),
            ("AWS_REGION", "eu-west-3"),
        ]))
        .unwrap();
        assert_eq!(route.secret_values(), ["AKIAEXAMPLE", "s3cr3t"]);
        assert_eq!(route.region(), "eu-west-3");
    }

    #[test]
    fn debug_never_shows_a_key() {
        let route = from_secrets(&secrets(&[
            ("AWS_ACCESS_KEY_ID", "AKIAEXAMPLEKEYID"),
            ("AWS_SECRET_ACCESS_KEY", "s3cr3tAccessKey"),
            ("AWS_SESSION_TOKEN", "SessionTokenValue"),
        ]))
        .unwrap();
        let debug = format!("{route:?}");
        for value in route.secret_values() {
            assert!(!debug.contains(value), "{debug}");
        }
        assert!(debug.contains("us-west-2"), "{debug}");
    }

    #[test]
    fn the_client_config_has_the_routes_region_no_sdk_retries_and_our_timeouts() {
        let route = from_secrets(&secrets(&[
            ("AWS_ACCESS_KEY_ID", "AKIAROUTEKEY"),
            ("AWS_SECRET_ACCESS_KEY", "routeSecret"),
            ("AWS_REGION", "ap-south-1"),
        ]))
        .unwrap();
        let settings = SinkSettings {
            request_timeout: std::time::Duration::from_secs(7),
            connect_timeout: std::time::Duration::from_secs(3),
            ..SinkSettings::default()
        };
        let config = client_config(&route, &settings, super::super::http_client());
        assert_eq!(config.region().map(|r| r.as_ref()), Some("ap-south-1"));
        assert_eq!(config.retry_config().map(|r| r.max_attempts()), Some(1));
        let timeouts = config.timeout_config().unwrap();
        assert_eq!(
            timeouts.operation_timeout(),
            Some(std::time::Duration::from_secs(7))
        );
        assert_eq!(
            timeouts.connect_timeout(),
            Some(std::time::Duration::from_secs(3))
        );
        // The SDK's config has no getter for its credentials: the requests
        // signed with the route's key are checked in the sink's tests.
        // Building a client from it must not panic (sleep and time sources
        // are present).
        let _client = aws_sdk_cloudwatchlogs::Client::from_conf(config);
    }

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |name| map.get(name).cloned()
    }

    #[test]
    fn the_flag_wins_over_the_aws_endpoint_variables() {
        let flag = Url::parse("http://127.0.0.1:4000").unwrap();
        let vars = env(&[
            ("AWS_ENDPOINT_URL_CLOUDWATCH_LOGS", "http://127.0.0.1:5000"),
            ("AWS_ENDPOINT_URL", "http://127.0.0.1:6000"),
        ]);
        assert_eq!(
            endpoint_override(Some(&flag), &vars).unwrap(),
            Some(flag.clone())
        );
        assert_eq!(
            endpoint_override(None, &vars).unwrap().unwrap().as_str(),
            "http://127.0.0.1:5000/"
        );
        let general = env(&[("AWS_ENDPOINT_URL", "http://127.0.0.1:6000")]);
        assert_eq!(
            endpoint_override(None, general).unwrap().unwrap().as_str(),
            "http://127.0.0.1:6000/"
        );
        assert_eq!(endpoint_override(None, env(&[])).unwrap(), None);
    }

    #[test]
    fn configured_endpoints_can_be_ignored_as_in_the_aws_sdks() {
        let vars = env(&[
            ("AWS_ENDPOINT_URL", "http://127.0.0.1:6000"),
            ("AWS_IGNORE_CONFIGURED_ENDPOINT_URLS", "true"),
        ]);
        assert_eq!(endpoint_override(None, vars).unwrap(), None);
    }

    #[test]
    fn an_unusable_endpoint_names_its_source() {
        let err = endpoint_override(None, env(&[("AWS_ENDPOINT_URL", "not a url")])).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("AWS_ENDPOINT_URL \"not a url\""),
            "{err}"
        );
        let flag = Url::parse("mailto:ops@example.com").unwrap();
        let err = endpoint_override(Some(&flag), env(&[])).unwrap_err();
        assert!(err.to_string().starts_with("--cloudwatch-url"), "{err}");
        let with_user = Url::parse("http://user:pw@127.0.0.1:1").unwrap();
        let err = endpoint_override(Some(&with_user), env(&[])).unwrap_err();
        assert!(!err.to_string().contains("pw"), "{err}");
    }
}
