//! The contract of destination secrets: which variables the shim forwards
//! ([`SECRET_VARS`]), which destinations they enable ([`DESTINATIONS`]), and
//! which values are valid ([`check`] and one rule per secret).
//!
//! Both binaries apply these rules, so each exists once: the shim checks the
//! secrets it read at start and warns on its own stderr; the gateway's sinks
//! build their endpoints from the values these rules accept and park a route
//! whose secrets they refuse. Everything here is pure: no I/O, no network,
//! no URL, header or vendor client types (those belong to the gateway's
//! sinks).
//!
//! A [`SecretProblem`] names the secret and what it accepts, never its
//! value: not even a region's, since a key pasted into the wrong variable
//! would be shown.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, Ipv6Addr};

/// A Datadog client token or API key.
pub const DATADOG_TOKEN: &str = "DATADOG_TOKEN";
/// The Datadog region ([`DatadogRegion`]); optional.
pub const DATADOG_REGION: &str = "DATADOG_REGION";
/// The AWS access key id (CloudWatch Logs).
pub const AWS_ACCESS_KEY_ID: &str = "AWS_ACCESS_KEY_ID";
/// The AWS secret access key (CloudWatch Logs).
pub const AWS_SECRET_ACCESS_KEY: &str = "AWS_SECRET_ACCESS_KEY";
/// The AWS session token of temporary credentials; optional.
pub const AWS_SESSION_TOKEN: &str = "AWS_SESSION_TOKEN";
/// The AWS region of CloudWatch Logs; optional ([`AWS_DEFAULT_REGION`]).
pub const AWS_REGION: &str = "AWS_REGION";
/// The DSN of a Sentry project.
pub const SENTRY_DSN: &str = "SENTRY_DSN";
/// A New Relic license (ingest) key.
pub const NEW_RELIC_LICENSE_KEY: &str = "NEW_RELIC_LICENSE_KEY";

/// Environment variable names of the destination secrets the shim forwards.
pub const SECRET_VARS: &[&str] = &[
    DATADOG_TOKEN,
    DATADOG_REGION,
    AWS_ACCESS_KEY_ID,
    AWS_SECRET_ACCESS_KEY,
    AWS_SESSION_TOKEN,
    AWS_REGION,
    SENTRY_DSN,
    NEW_RELIC_LICENSE_KEY,
];

/// A destination and the secrets it takes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Destination {
    /// Stable lowercase name (metrics labels, the gateway's disk format).
    pub name: &'static str,
    /// Secrets that must all be set and not blank to enable it.
    pub required: &'static [&'static str],
    /// Secrets that are used when set.
    pub optional: &'static [&'static str],
}

pub const DATADOG: Destination = Destination {
    name: "datadog",
    required: &[DATADOG_TOKEN],
    optional: &[DATADOG_REGION],
};

pub const CLOUDWATCH: Destination = Destination {
    name: "cloudwatch",
    required: &[AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY],
    optional: &[AWS_REGION, AWS_SESSION_TOKEN],
};

pub const SENTRY: Destination = Destination {
    name: "sentry",
    required: &[SENTRY_DSN],
    optional: &[],
};

pub const NEW_RELIC: Destination = Destination {
    name: "newrelic",
    required: &[NEW_RELIC_LICENSE_KEY],
    optional: &[],
};

/// Every destination, in the gateway's order.
pub const DESTINATIONS: [Destination; 4] = [DATADOG, CLOUDWATCH, SENTRY, NEW_RELIC];

impl Destination {
    /// Its required secrets, then its optional ones.
    pub fn secrets(&self) -> impl Iterator<Item = &'static str> {
        self.required.iter().chain(self.optional).copied()
    }

    /// The destination that takes `secret`.
    pub fn of_secret(secret: &str) -> Option<&'static Destination> {
        let all: &'static [Destination] = &DESTINATIONS;
        all.iter().find(|d| d.secrets().any(|s| s == secret))
    }

    /// All its required secrets are set and not blank.
    pub fn is_enabled_by(&self, secrets: &BTreeMap<String, String>) -> bool {
        self.required
            .iter()
            .all(|name| value(secrets, name).is_some())
    }

    /// At least one of its required secrets is set and not blank: the
    /// deployment means to use it, so its other secrets are checked.
    fn is_meant_by(&self, secrets: &BTreeMap<String, String>) -> bool {
        self.required
            .iter()
            .any(|name| value(secrets, name).is_some())
    }
}

/// Why a secret's value cannot be used. The message names the secret and
/// what it accepts, never the value.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SecretProblem {
    /// A region is not one of the accepted values.
    #[error("{secret} is not a {what}; use one of {accepted}")]
    NotOneOf {
        secret: &'static str,
        what: &'static str,
        accepted: &'static str,
    },
    /// A region does not have the accepted form.
    #[error("{secret} is not {what}; use {accepted}")]
    NotOfForm {
        secret: &'static str,
        what: &'static str,
        accepted: &'static str,
    },
    /// A tenant-supplied endpoint is not a public address
    /// ([`crate::endpoint`]).
    #[error("{secret} cannot be used: its host is {}; {}", kind.describe(), crate::endpoint::RULE)]
    NotPublic {
        secret: &'static str,
        kind: crate::endpoint::NotPublic,
    },
    /// A confidential secret cannot be used as it is; its value is not shown.
    #[error("{secret} cannot be used: {problem}")]
    Malformed {
        secret: &'static str,
        problem: &'static str,
    },
    /// A required secret is missing or blank.
    #[error("{secret} is required to deliver to {destination} but is missing or empty")]
    Missing {
        secret: &'static str,
        /// [`Destination::name`].
        destination: &'static str,
    },
}

impl SecretProblem {
    /// The name of the secret at fault.
    pub fn secret(&self) -> &'static str {
        match self {
            SecretProblem::NotOneOf { secret, .. }
            | SecretProblem::NotOfForm { secret, .. }
            | SecretProblem::Malformed { secret, .. }
            | SecretProblem::NotPublic { secret, .. }
            | SecretProblem::Missing { secret, .. } => secret,
        }
    }
}

/// Every problem of `secrets`, by destination. A destination is checked when
/// one of its required secrets is set: then each of its missing required
/// secrets and each of its values that a rule refuses is a problem. Secrets
/// of destinations nobody means to use (for example an `AWS_REGION` the
/// agent uses for itself) are not judged.
pub fn check(secrets: &BTreeMap<String, String>) -> Vec<SecretProblem> {
    let mut problems = Vec::new();
    for destination in &DESTINATIONS {
        if !destination.is_meant_by(secrets) {
            continue;
        }
        for &secret in destination.required {
            if let Err(problem) = required(destination, secret, get(secrets, secret)) {
                problems.push(problem);
            }
        }
        for secret in destination.secrets() {
            if let Some(problem) = value(secrets, secret).and_then(|v| check_value(secret, v)) {
                problems.push(problem);
            }
        }
    }
    problems
}

/// The rule of one secret, applied to a value that is not blank.
fn check_value(secret: &'static str, value: &str) -> Option<SecretProblem> {
    match secret {
        DATADOG_TOKEN => datadog_token(value).err(),
        DATADOG_REGION => DatadogRegion::from_secret(Some(value)).err(),
        AWS_ACCESS_KEY_ID | AWS_SECRET_ACCESS_KEY | AWS_SESSION_TOKEN => {
            aws_key(secret, value).err()
        }
        AWS_REGION => aws_region(Some(value)).err(),
        SENTRY_DSN => sentry_dsn(value).err(),
        NEW_RELIC_LICENSE_KEY => new_relic_license_key(value).err(),
        // Pinned by `every_secret_has_a_rule`.
        _ => None,
    }
}

fn get<'a>(secrets: &'a BTreeMap<String, String>, name: &str) -> Option<&'a str> {
    secrets.get(name).map(String::as_str)
}

/// The value of `name` without surrounding whitespace, if it is set and not
/// blank.
pub fn value<'a>(secrets: &'a BTreeMap<String, String>, name: &str) -> Option<&'a str> {
    non_blank(get(secrets, name))
}

/// `value` without surrounding whitespace (a pasted line break), unless it
/// is absent or blank. Blank counts as absent everywhere.
pub fn non_blank(value: Option<&str>) -> Option<&str> {
    value.map(str::trim).filter(|v| !v.is_empty())
}

/// The required `secret` of `destination`, trimmed, or
/// [`SecretProblem::Missing`] when it is absent or blank.
pub fn required<'a>(
    destination: &Destination,
    secret: &'static str,
    value: Option<&'a str>,
) -> Result<&'a str, SecretProblem> {
    non_blank(value).ok_or(SecretProblem::Missing {
        secret,
        destination: destination.name,
    })
}

/// A confidential value that travels in a header, a query or a signature:
/// only visible ASCII can be right. Returns it trimmed.
fn visible_ascii<'a>(
    secret: &'static str,
    value: &'a str,
    problem: &'static str,
) -> Result<&'a str, SecretProblem> {
    let value = value.trim();
    if value.is_empty() {
        return Err(SecretProblem::Malformed {
            secret,
            problem: "it is empty",
        });
    }
    if value.bytes().all(|b| b.is_ascii_graphic()) {
        Ok(value)
    } else {
        Err(SecretProblem::Malformed { secret, problem })
    }
}

// ---- Datadog ----

/// A Datadog region, chosen by `DATADOG_REGION`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DatadogRegion {
    Us1,
    Us3,
    Us5,
    Us1Fed,
    Us2Fed,
    Eu,
    Ap1,
    Ap2,
    Uk1,
}

impl DatadogRegion {
    pub const ALL: [DatadogRegion; 9] = [
        DatadogRegion::Us1,
        DatadogRegion::Us3,
        DatadogRegion::Us5,
        DatadogRegion::Us1Fed,
        DatadogRegion::Us2Fed,
        DatadogRegion::Eu,
        DatadogRegion::Ap1,
        DatadogRegion::Ap2,
        DatadogRegion::Uk1,
    ];

    /// The accepted values of `DATADOG_REGION`, as problems list them
    /// (the names of [`DatadogRegion::ALL`], pinned by a test).
    pub const ACCEPTED: &'static str = "us1, us3, us5, us1-fed, us2-fed, eu, ap1, ap2, uk1";

    pub fn name(self) -> &'static str {
        match self {
            DatadogRegion::Us1 => "us1",
            DatadogRegion::Us3 => "us3",
            DatadogRegion::Us5 => "us5",
            DatadogRegion::Us1Fed => "us1-fed",
            DatadogRegion::Us2Fed => "us2-fed",
            DatadogRegion::Eu => "eu",
            DatadogRegion::Ap1 => "ap1",
            DatadogRegion::Ap2 => "ap2",
            DatadogRegion::Uk1 => "uk1",
        }
    }

    /// The Datadog site of the region.
    pub fn site(self) -> &'static str {
        match self {
            DatadogRegion::Us1 => "datadoghq.com",
            DatadogRegion::Us3 => "us3.datadoghq.com",
            DatadogRegion::Us5 => "us5.datadoghq.com",
            DatadogRegion::Us1Fed => "ddog-gov.com",
            DatadogRegion::Us2Fed => "us2.ddog-gov.com",
            DatadogRegion::Eu => "datadoghq.eu",
            DatadogRegion::Ap1 => "ap1.datadoghq.com",
            DatadogRegion::Ap2 => "ap2.datadoghq.com",
            DatadogRegion::Uk1 => "uk1.datadoghq.com",
        }
    }

    /// Parses `DATADOG_REGION`. Absent or blank means `us1`; case and
    /// surrounding spaces are ignored.
    pub fn from_secret(value: Option<&str>) -> Result<DatadogRegion, SecretProblem> {
        let Some(raw) = non_blank(value) else {
            return Ok(DatadogRegion::Us1);
        };
        let wanted = raw.to_ascii_lowercase();
        DatadogRegion::ALL
            .into_iter()
            .find(|r| r.name() == wanted)
            .ok_or(SecretProblem::NotOneOf {
                secret: DATADOG_REGION,
                what: "Datadog region",
                accepted: DatadogRegion::ACCEPTED,
            })
    }
}

/// Checks a `DATADOG_TOKEN` (client token or API key) and returns it
/// trimmed. Its form is not enforced beyond visible ASCII: Datadog answers
/// 403 for a wrong token, and the gateway reports it.
pub fn datadog_token(token: &str) -> Result<&str, SecretProblem> {
    visible_ascii(
        DATADOG_TOKEN,
        token,
        "it contains spaces, line breaks or non-ASCII characters; \
         paste the client token or API key exactly as Datadog shows it",
    )
}

// ---- AWS (CloudWatch Logs) ----

/// Region used when `AWS_REGION` is absent or blank.
pub const AWS_DEFAULT_REGION: &str = "us-west-2";

/// Checks an AWS key (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY` or
/// `AWS_SESSION_TOKEN`) and returns it trimmed. Keys are signed and sent in
/// headers: only visible ASCII can be right.
pub fn aws_key<'a>(secret: &'static str, value: &'a str) -> Result<&'a str, SecretProblem> {
    visible_ascii(
        secret,
        value,
        "it contains spaces, line breaks or non-ASCII characters; \
         paste the key exactly as AWS shows it",
    )
}

/// Parses `AWS_REGION`: absent or blank means [`AWS_DEFAULT_REGION`]; case
/// and surrounding spaces are ignored. The name must have the form of an AWS
/// region (`us-west-2`, `us-gov-west-1`, `cn-north-1`, `eusc-de-east-1`):
/// a 2–4 letter prefix, one or more words, and a number. Whether the region
/// exists is AWS's to say; the form alone catches typos and other values
/// pasted into the wrong secret.
pub fn aws_region(value: Option<&str>) -> Result<String, SecretProblem> {
    let Some(raw) = non_blank(value) else {
        return Ok(AWS_DEFAULT_REGION.to_string());
    };
    let wanted = raw.to_ascii_lowercase();
    if is_aws_region_name(&wanted) {
        Ok(wanted)
    } else {
        Err(SecretProblem::NotOfForm {
            secret: AWS_REGION,
            what: "an AWS region name",
            accepted: "a name like us-west-2 or eu-central-1",
        })
    }
}

/// `^[a-z]{2,4}(-[a-z]+)+-[0-9]+$`
fn is_aws_region_name(name: &str) -> bool {
    let parts: Vec<&str> = name.split('-').collect();
    let [prefix, words @ .., number] = parts.as_slice() else {
        return false;
    };
    let letters = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_lowercase());
    (2..=4).contains(&prefix.len())
        && letters(prefix)
        && !words.is_empty()
        && words.iter().all(|w| letters(w))
        && !number.is_empty()
        && number.bytes().all(|b| b.is_ascii_digit())
}

// ---- Sentry ----

/// Length of a Sentry public key (hexadecimal characters).
const SENTRY_PUBLIC_KEY_LEN: usize = 32;

/// A [`SecretProblem::Malformed`] problem of `SENTRY_DSN`: what is wrong,
/// then the form a DSN must have. A literal, so it can never carry the DSN.
macro_rules! dsn_problem {
    ($what:literal) => {
        concat!(
            $what,
            "; a DSN has the form {scheme}://{public_key}@{host}/{project_id} \
             (for example https://<32 hex characters>@o0.ingest.sentry.io/0), \
             as shown in the Sentry project's settings under Client Keys (DSN)"
        )
    };
}

const fn dsn_malformed(problem: &'static str) -> SecretProblem {
    SecretProblem::Malformed {
        secret: SENTRY_DSN,
        problem,
    }
}

/// For the gateway: a DSN that [`sentry_dsn`] accepted whose parts still do
/// not make an endpoint URL or an auth header.
pub const SENTRY_DSN_NOT_AN_ENDPOINT: SecretProblem =
    dsn_malformed(dsn_problem!("it cannot be turned into an endpoint URL"));

/// The parts of a Sentry DSN,
/// `{scheme}://{public_key}[:{secret}]@{host}[:{port}]{path}/{project_id}`.
/// The secret part is deprecated by Sentry and dropped. `Debug` never shows
/// the public key.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct SentryDsn<'a> {
    /// `http` or `https`, lowercase.
    pub scheme: &'static str,
    public_key: &'a str,
    /// A host name or an IPv4 address, as written; an IPv6 address keeps its
    /// brackets.
    pub host: &'a str,
    pub port: Option<u16>,
    /// What comes before the project id, without a trailing `/`: empty or
    /// a prefix like `/sentry/relay`.
    pub path: &'a str,
    pub project_id: u64,
}

impl std::fmt::Debug for SentryDsn<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SentryDsn")
            .field("scheme", &self.scheme)
            .field("public_key", &"<redacted>")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("path", &self.path)
            .field("project_id", &self.project_id)
            .finish()
    }
}

impl<'a> SentryDsn<'a> {
    /// The project's public key: 32 hexadecimal characters.
    pub fn public_key(&self) -> &'a str {
        self.public_key
    }
}

/// Parses a `SENTRY_DSN` (surrounding spaces ignored). A trailing `/` after
/// the project id, a query and a fragment are ignored, as Sentry's SDKs
/// ignore them. Problems never show the DSN.
pub fn sentry_dsn(dsn: &str) -> Result<SentryDsn<'_>, SecretProblem> {
    let dsn = dsn.trim();
    let not_a_url = dsn_malformed(dsn_problem!("it is not a URL"));
    let Some((scheme, rest)) = dsn.split_once("://") else {
        return Err(not_a_url);
    };
    let is_scheme = scheme.starts_with(|c: char| c.is_ascii_alphabetic())
        && scheme
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'-' | b'.'));
    if !is_scheme {
        return Err(not_a_url);
    }
    let scheme = if scheme.eq_ignore_ascii_case("https") {
        "https"
    } else if scheme.eq_ignore_ascii_case("http") {
        "http"
    } else {
        return Err(dsn_malformed(dsn_problem!(
            "its scheme is not http or https"
        )));
    };
    if dsn.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(dsn_malformed(dsn_problem!(
            "it contains spaces, line breaks or control characters"
        )));
    }
    // The authority ends at the path, the query or the fragment.
    let (authority, rest) = rest.split_at(rest.find(['/', '?', '#']).unwrap_or(rest.len()));
    let path = &rest[..rest.find(['?', '#']).unwrap_or(rest.len())];
    let (user_info, host_port) = match authority.rsplit_once('@') {
        Some((user_info, host_port)) => (user_info, host_port),
        None => ("", authority),
    };
    let (host, port) = split_host_port(host_port)?;

    let public_key = user_info.split_once(':').map_or(user_info, |(key, _)| key);
    if public_key.is_empty() {
        return Err(dsn_malformed(dsn_problem!(
            "it has no public key before the '@'"
        )));
    }
    if public_key.len() != SENTRY_PUBLIC_KEY_LEN
        || !public_key.bytes().all(|b| b.is_ascii_hexdigit())
    {
        return Err(dsn_malformed(dsn_problem!(
            "its public key (before the '@') is not 32 hexadecimal characters"
        )));
    }

    let path = path.strip_suffix('/').unwrap_or(path);
    let (prefix, project) = path.rsplit_once('/').unwrap_or(("", path));
    let project_id = Some(project)
        .filter(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|p| p.parse::<u64>().ok())
        .ok_or(dsn_malformed(dsn_problem!(
            "it does not end with a numeric project id"
        )))?;
    Ok(SentryDsn {
        scheme,
        public_key,
        host,
        port,
        path: prefix,
        project_id,
    })
}

/// The host of a valid `SENTRY_DSN` judged as written by the endpoint rule
/// ([`crate::endpoint::host_not_public`]): a literal internal address or
/// a well-known internal name. The gateway refuses such a host unless its
/// operator allowed that network; it also judges what a name resolves to,
/// which this cannot.
pub fn sentry_host_problem(secrets: &BTreeMap<String, String>) -> Option<SecretProblem> {
    let dsn = sentry_dsn(value(secrets, SENTRY_DSN)?).ok()?;
    crate::endpoint::host_not_public(dsn.host).map(|kind| SecretProblem::NotPublic {
        secret: SENTRY_DSN,
        kind,
    })
}

/// Splits `host[:port]` (`[v6]:port` for IPv6) and checks both.
fn split_host_port(host_port: &str) -> Result<(&str, Option<u16>), SecretProblem> {
    let bad_host = || dsn_malformed(dsn_problem!("its host is not a host name or an IP address"));
    let (host, port) = if let Some(inside) = host_port.strip_prefix('[') {
        let (address, after) = inside.split_once(']').ok_or_else(bad_host)?;
        address.parse::<Ipv6Addr>().map_err(|_| bad_host())?;
        let port = match after {
            "" => None,
            _ => Some(after.strip_prefix(':').ok_or_else(bad_host)?),
        };
        (&host_port[..address.len() + 2], port)
    } else {
        match host_port.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (host_port, None),
        }
    };
    if host.is_empty() {
        return Err(dsn_malformed(dsn_problem!("it has no host")));
    }
    if !host.starts_with('[') && !is_host_name(host) {
        return Err(bad_host());
    }
    let port = match port {
        None | Some("") => None,
        Some(port) => Some(
            Some(port)
                .filter(|p| p.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|p| p.parse::<u16>().ok())
                .ok_or(dsn_malformed(dsn_problem!(
                    "its port is not a number from 0 to 65535"
                )))?,
        ),
    };
    Ok((host, port))
}

/// Letters, digits, `-`, `_` and dots; a name whose last label is a number
/// (decimal, or hexadecimal after `0x`, as URL parsers read it) must be an
/// IPv4 address in dotted decimal, so `0x7f000001` or `127.1` never stands
/// for an address the endpoint rule would not recognise.
fn is_host_name(host: &str) -> bool {
    let chars_ok = host
        .chars()
        .all(|c| c.is_alphanumeric() || matches!(c, '-' | '_' | '.'));
    let last = host.strip_suffix('.').unwrap_or(host);
    let last = last.rsplit('.').next().unwrap_or(last);
    let hex = last
        .strip_prefix("0x")
        .or_else(|| last.strip_prefix("0X"))
        .is_some_and(|h| h.bytes().all(|b| b.is_ascii_hexdigit()));
    let numeric = hex || (!last.is_empty() && last.bytes().all(|b| b.is_ascii_digit()));
    chars_ok && (!numeric || host.parse::<Ipv4Addr>().is_ok())
}

// ---- New Relic ----

/// Checks a `NEW_RELIC_LICENSE_KEY` and returns it trimmed. Its length and
/// form (40 characters, `…NRAL` for ingest keys) are not enforced: New Relic
/// answers 403 for a wrong key, and the gateway reports it.
pub fn new_relic_license_key(key: &str) -> Result<&str, SecretProblem> {
    visible_ascii(
        NEW_RELIC_LICENSE_KEY,
        key,
        "it contains spaces, line breaks, control or non-ASCII characters; \
         paste the license key exactly as New Relic shows it",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "0123456789abcdef0123456789abcdef";

    fn secrets(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn texts(problems: &[SecretProblem]) -> Vec<String> {
        problems.iter().map(ToString::to_string).collect()
    }

    // ---- the table ----

    #[test]
    fn the_forwarded_variables_are_exactly_the_destinations_secrets() {
        let mut from_table: Vec<&str> = DESTINATIONS.iter().flat_map(|d| d.secrets()).collect();
        let mut forwarded = SECRET_VARS.to_vec();
        from_table.sort_unstable();
        forwarded.sort_unstable();
        assert_eq!(from_table, forwarded);
        let names: Vec<&str> = DESTINATIONS.iter().map(|d| d.name).collect();
        assert_eq!(names, ["datadog", "cloudwatch", "sentry", "newrelic"]);
    }

    #[test]
    fn every_secret_has_a_rule() {
        // A value no rule accepts: a line break inside.
        for &secret in SECRET_VARS {
            assert!(
                check_value(secret, "a\nb").is_some(),
                "{secret} has no rule in check_value"
            );
        }
    }

    #[test]
    fn every_secret_belongs_to_one_destination() {
        for &secret in SECRET_VARS {
            let owners = DESTINATIONS
                .iter()
                .filter(|d| d.secrets().any(|s| s == secret))
                .count();
            assert_eq!(owners, 1, "{secret}");
        }
        assert_eq!(Destination::of_secret(AWS_REGION), Some(&CLOUDWATCH));
        assert_eq!(Destination::of_secret(SENTRY_DSN), Some(&SENTRY));
        assert_eq!(Destination::of_secret("PATH"), None);
    }

    #[test]
    fn a_destination_is_enabled_only_by_all_its_required_secrets() {
        let partial = secrets(&[(AWS_ACCESS_KEY_ID, "AKIA"), (AWS_SECRET_ACCESS_KEY, " ")]);
        assert!(!CLOUDWATCH.is_enabled_by(&partial));
        let full = secrets(&[(AWS_ACCESS_KEY_ID, "AKIA"), (AWS_SECRET_ACCESS_KEY, "s")]);
        assert!(CLOUDWATCH.is_enabled_by(&full));
        assert!(!DATADOG.is_enabled_by(&secrets(&[(DATADOG_REGION, "eu")])));
    }

    #[test]
    fn blank_values_count_as_absent_and_values_are_trimmed() {
        assert_eq!(non_blank(None), None);
        assert_eq!(non_blank(Some(" \n\t")), None);
        assert_eq!(non_blank(Some(" v\n")), Some("v"));
        let err = required(&NEW_RELIC, NEW_RELIC_LICENSE_KEY, Some("  ")).unwrap_err();
        assert_eq!(
            err.to_string(),
            "NEW_RELIC_LICENSE_KEY is required to deliver to newrelic but is missing or empty"
        );
        assert_eq!(err.secret(), NEW_RELIC_LICENSE_KEY);
    }

    // ---- check ----

    #[test]
    fn valid_secrets_have_no_problem() {
        let all = secrets(&[
            (DATADOG_TOKEN, KEY),
            (DATADOG_REGION, "EU"),
            (AWS_ACCESS_KEY_ID, "AKIAEXAMPLE"),
            (AWS_SECRET_ACCESS_KEY, "s3cr3t/Key+"),
            (AWS_SESSION_TOKEN, ""),
            (AWS_REGION, "eu-west-1"),
            (SENTRY_DSN, &format!("https://{KEY}@o1.ingest.sentry.io/42")),
            (
                NEW_RELIC_LICENSE_KEY,
                "eu01xx6789abcdef0123456789abcdef0123NRAL",
            ),
        ]);
        assert_eq!(check(&all), []);
        assert_eq!(check(&BTreeMap::new()), []);
    }

    #[test]
    fn an_unknown_datadog_region_names_the_secret_and_the_accepted_values() {
        let problems = check(&secrets(&[(DATADOG_TOKEN, "x"), (DATADOG_REGION, "mars")]));
        assert_eq!(
            texts(&problems),
            [
                r#"DATADOG_REGION is not a Datadog region; use one of us1, us3, us5, us1-fed, us2-fed, eu, ap1, ap2, uk1"#
            ]
        );
        assert_eq!(problems[0].secret(), DATADOG_REGION);
    }

    #[test]
    fn secrets_of_a_destination_nobody_enables_are_not_judged() {
        // The agent's own AWS_REGION, a stray Datadog region: no
        // destination is meant, so nothing is reported.
        let problems = check(&secrets(&[(AWS_REGION, "local"), (DATADOG_REGION, "mars")]));
        assert_eq!(problems, []);
    }

    #[test]
    fn a_missing_half_of_a_key_pair_is_named_with_its_destination() {
        let problems = check(&secrets(&[(AWS_ACCESS_KEY_ID, "AKIAEXAMPLE")]));
        assert_eq!(
            texts(&problems),
            ["AWS_SECRET_ACCESS_KEY is required to deliver to cloudwatch but is missing or empty"]
        );
        let problems = check(&secrets(&[
            (AWS_ACCESS_KEY_ID, "   "),
            (AWS_SECRET_ACCESS_KEY, "s3cr3t"),
        ]));
        assert_eq!(problems[0].secret(), AWS_ACCESS_KEY_ID);
    }

    #[test]
    fn every_problem_of_every_destination_is_reported_without_confidential_values() {
        let dsn = "https://not-a-key@sentry.example.com/1";
        let problems = check(&secrets(&[
            (DATADOG_TOKEN, "dd tok"),
            (DATADOG_REGION, "mars"),
            (AWS_ACCESS_KEY_ID, "AKIA\nX"),
            (AWS_SECRET_ACCESS_KEY, "s3cr3t"),
            (AWS_REGION, "moon-1"),
            (SENTRY_DSN, dsn),
            (NEW_RELIC_LICENSE_KEY, "nrkey\u{0}value"),
        ]));
        let names: Vec<&str> = problems.iter().map(SecretProblem::secret).collect();
        assert_eq!(
            names,
            [
                DATADOG_TOKEN,
                DATADOG_REGION,
                AWS_ACCESS_KEY_ID,
                AWS_REGION,
                SENTRY_DSN,
                NEW_RELIC_LICENSE_KEY
            ]
        );
        let all = texts(&problems).join("\n");
        for secret in [
            "dd tok",
            "AKIA",
            "s3cr3t",
            "not-a-key",
            "sentry.example",
            "nrkey",
            // A key pasted into a region variable would be shown too.
            "mars",
            "moon-1",
        ] {
            assert!(!all.contains(secret), "{secret:?} shown in:\n{all}");
            assert!(!format!("{problems:?}").contains(secret), "{secret:?}");
        }
    }

    #[test]
    fn a_dsn_host_that_is_an_internal_address_is_named_with_the_rule() {
        let problem = |host: &str| {
            sentry_host_problem(&secrets(&[(SENTRY_DSN, &format!("http://{KEY}@{host}/1"))]))
                .map(|p| p.to_string())
        };
        assert_eq!(
            problem("127.0.0.1:9000").as_deref(),
            Some(
                "SENTRY_DSN cannot be used: its host is a loopback address; a tenant-supplied \
                 endpoint must be a public address; use the vendor's public host, or ask the \
                 gateway's operator to allow that network with --allow-endpoint-net"
            )
        );
        for host in [
            "[::1]",
            "localhost",
            "169.254.169.254",
            "metadata.google.internal",
        ] {
            assert!(problem(host).is_some(), "{host}");
        }
        assert_eq!(problem("o1.ingest.sentry.io"), None);
        // Hexadecimal and short IPv4 forms are not host names at all.
        for host in ["0x7f000001", "0x7f.1", "127.1"] {
            assert!(
                sentry_dsn(&format!("http://{KEY}@{host}/1")).is_err(),
                "{host}"
            );
        }
    }

    // ---- Datadog ----

    #[test]
    fn every_datadog_region_maps_to_its_site() {
        let expected = [
            ("us1", "datadoghq.com"),
            ("us3", "us3.datadoghq.com"),
            ("us5", "us5.datadoghq.com"),
            ("us1-fed", "ddog-gov.com"),
            ("us2-fed", "us2.ddog-gov.com"),
            ("eu", "datadoghq.eu"),
            ("ap1", "ap1.datadoghq.com"),
            ("ap2", "ap2.datadoghq.com"),
            ("uk1", "uk1.datadoghq.com"),
        ];
        for (name, site) in expected {
            let region = DatadogRegion::from_secret(Some(name)).unwrap();
            assert_eq!((region.name(), region.site()), (name, site));
        }
        assert_eq!(expected.len(), DatadogRegion::ALL.len());
    }

    #[test]
    fn the_accepted_datadog_regions_list_every_region() {
        let names: Vec<&str> = DatadogRegion::ALL.iter().map(|r| r.name()).collect();
        assert_eq!(DatadogRegion::ACCEPTED, names.join(", "));
    }

    #[test]
    fn a_missing_or_blank_datadog_region_means_us1_and_case_is_ignored() {
        assert_eq!(DatadogRegion::from_secret(None), Ok(DatadogRegion::Us1));
        assert_eq!(
            DatadogRegion::from_secret(Some(" ")),
            Ok(DatadogRegion::Us1)
        );
        assert_eq!(
            DatadogRegion::from_secret(Some(" US1-Fed\n")),
            Ok(DatadogRegion::Us1Fed)
        );
    }

    #[test]
    fn a_key_pasted_into_a_region_variable_is_named_never_echoed() {
        let key = "0123456789abcdef0123456789abcdef";
        let problems = [
            DatadogRegion::from_secret(Some(key)).unwrap_err(),
            aws_region(Some(key)).unwrap_err(),
        ];
        for problem in problems {
            let text = problem.to_string();
            assert!(text.contains("_REGION is not"), "{text}");
            assert!(!text.contains("0123456789"), "{text}");
            assert!(!format!("{problem:?}").contains("0123456789"));
        }
    }

    #[test]
    fn a_datadog_token_is_trimmed_and_must_be_visible_ascii() {
        assert_eq!(
            datadog_token(&format!(" pub{KEY}\n")),
            Ok(&*format!("pub{KEY}"))
        );
        for bad in ["abc def", "abc\ndef", "abcédef"] {
            let text = datadog_token(bad).unwrap_err().to_string();
            assert!(text.starts_with("DATADOG_TOKEN cannot be used: it contains spaces"));
            assert!(!text.contains("abc"), "{text}");
        }
        assert_eq!(
            datadog_token(" ").unwrap_err().to_string(),
            "DATADOG_TOKEN cannot be used: it is empty"
        );
    }

    // ---- AWS ----

    #[test]
    fn aws_region_names_of_every_partition_are_accepted() {
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
            assert_eq!(aws_region(Some(name)).as_deref(), Ok(name));
        }
    }

    #[test]
    fn a_missing_or_blank_aws_region_means_us_west_2_and_case_is_ignored() {
        assert_eq!(aws_region(None).as_deref(), Ok("us-west-2"));
        assert_eq!(aws_region(Some(" ")).as_deref(), Ok("us-west-2"));
        assert_eq!(aws_region(Some(" EU-West-1\n")).as_deref(), Ok("eu-west-1"));
    }

    #[test]
    fn a_value_that_is_not_an_aws_region_name_is_named_with_the_accepted_form() {
        assert_eq!(
            aws_region(Some("mars-1")).unwrap_err().to_string(),
            r#"AWS_REGION is not an AWS region name; use a name like us-west-2 or eu-central-1"#
        );
        for bad in [
            "us-west",
            "uswest2",
            "us-west-2a",
            "us_west_2",
            "us--west-2",
            "u-west-2",
            "abcde-west-2",
            "https://logs.us-west-2.amazonaws.com",
        ] {
            assert!(aws_region(Some(bad)).is_err(), "{bad:?} must be refused");
        }
    }

    #[test]
    fn an_aws_key_is_trimmed_and_must_be_visible_ascii() {
        assert_eq!(
            aws_key(AWS_ACCESS_KEY_ID, " AKIAEXAMPLE\n"),
            Ok("AKIAEXAMPLE")
        );
        let err = aws_key(AWS_SESSION_TOKEN, "abc\ndef").unwrap_err();
        assert!(err
            .to_string()
            .starts_with("AWS_SESSION_TOKEN cannot be used: it contains spaces"));
        assert!(!err.to_string().contains("abc"));
    }

    // ---- Sentry ----

    #[test]
    fn a_dsn_is_split_into_its_parts() {
        let text = format!(" https://{KEY}@o1.ingest.sentry.io/4507\n");
        let dsn = sentry_dsn(&text).unwrap();
        assert_eq!(
            (
                dsn.scheme,
                dsn.public_key(),
                dsn.host,
                dsn.port,
                dsn.path,
                dsn.project_id
            ),
            ("https", KEY, "o1.ingest.sentry.io", None, "", 4507)
        );
        let text = format!("HTTP://{KEY}:s3cr3t@127.0.0.1:9000/sentry/relay/7/?x#f");
        let dsn = sentry_dsn(&text).unwrap();
        assert_eq!(
            (dsn.scheme, dsn.host, dsn.port, dsn.path, dsn.project_id),
            ("http", "127.0.0.1", Some(9000), "/sentry/relay", 7)
        );
        let text = format!("http://{KEY}@[::1]:8000/3");
        let dsn = sentry_dsn(&text).unwrap();
        assert_eq!((dsn.host, dsn.port), ("[::1]", Some(8000)));
    }

    #[test]
    fn each_dsn_problem_is_named_with_the_form_and_never_the_dsn() {
        let cases = [
            ("nope".to_string(), "it is not a URL"),
            (format!("{KEY}@o1.ingest.sentry.io/1"), "it is not a URL"),
            (
                format!("ftp://{KEY}@o1.ingest.sentry.io/1"),
                "scheme is not http",
            ),
            (
                format!("https://{KEY}@o1.ingest.sentry.io /1"),
                "contains spaces",
            ),
            (format!("https://{KEY}@/1"), "it has no host"),
            (
                format!("https://{KEY}@o1.ingest.sentry.io:99999/1"),
                "its port",
            ),
            (format!("https://{KEY}@o1%2eingest/1"), "its host is not"),
            (format!("https://{KEY}@999.1.1.1/1"), "its host is not"),
            (format!("https://{KEY}@[zz]/1"), "its host is not"),
            ("https://o1.ingest.sentry.io/1".to_string(), "no public key"),
            (
                format!("https://{}@o1.ingest.sentry.io/1", &KEY[..20]),
                "32 hexadecimal",
            ),
            (
                format!("https://{}@o1.ingest.sentry.io/1", KEY.replace('a', "g")),
                "32 hexadecimal",
            ),
            (
                format!("https://{KEY}@o1.ingest.sentry.io"),
                "numeric project id",
            ),
            (
                format!("https://{KEY}@o1.ingest.sentry.io/"),
                "numeric project id",
            ),
            (
                format!("https://{KEY}@o1.ingest.sentry.io/project"),
                "numeric project id",
            ),
            (
                format!("https://{KEY}@o1.ingest.sentry.io/99999999999999999999999"),
                "numeric project id",
            ),
        ];
        for (dsn, problem) in cases {
            let err = match sentry_dsn(&dsn) {
                Err(err) => err,
                Ok(parsed) => panic!("{dsn:?} parsed as {parsed:?}"),
            };
            let text = err.to_string();
            assert!(text.starts_with("SENTRY_DSN cannot be used: "), "{text}");
            assert!(text.contains(problem), "{dsn:?}: {text}");
            assert!(
                text.contains("{scheme}://{public_key}@{host}/{project_id}"),
                "{text}"
            );
            assert!(!text.contains(&KEY[..20]), "{text}");
            assert!(
                !text.contains("o1.ingest"),
                "the DSN is never echoed: {text}"
            );
        }
    }

    #[test]
    fn debug_of_a_dsn_never_shows_the_key() {
        let text = format!("https://{KEY}@o1.ingest.sentry.io/1");
        let dsn = sentry_dsn(&text).unwrap();
        let debug = format!("{dsn:?}");
        assert!(!debug.contains(KEY), "{debug}");
        assert!(debug.contains("<redacted>"), "{debug}");
    }

    // ---- New Relic ----

    #[test]
    fn a_license_key_of_any_length_is_accepted_but_must_be_visible_ascii() {
        assert_eq!(new_relic_license_key(" short\n"), Ok("short"));
        for bad in ["abc def", "abc\u{7f}def", "abc\u{0}def", "abcédef"] {
            let text = new_relic_license_key(bad).unwrap_err().to_string();
            assert!(
                text.starts_with("NEW_RELIC_LICENSE_KEY cannot be used: it contains spaces"),
                "{text}"
            );
            assert!(!text.contains("abc"), "{text}");
        }
    }
}
