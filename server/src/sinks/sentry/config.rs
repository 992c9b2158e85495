//! Sentry configuration from a route's secrets: `SENTRY_DSN` → the envelope
//! endpoint and the `X-Sentry-Auth` header.
//!
//! [`parse_dsn`] is the one place that reads a DSN,
//! `{scheme}://{public_key}[:{secret}]@{host}{path}/{project_id}`, and builds
//! `{scheme}://{host}{path}/api/{project_id}/envelope/`. The DSN's secret part
//! is deprecated by Sentry and never sent. This module must never format the
//! DSN or its key: errors name the problem without the value, and `Debug` of
//! [`Endpoint`] redacts the key.

use std::fmt;

use reqwest::header::HeaderValue;
use url::Url;

use crate::route::{DestinationKind, Secrets};
use crate::sinks::SecretError;

/// The secret that enables Sentry.
pub const SECRET: &str = "SENTRY_DSN";
/// Header carrying the public key.
pub const AUTH_HEADER: &str = "X-Sentry-Auth";
/// `sentry_client` of the auth header.
pub const CLIENT: &str = concat!("logdrain/", env!("CARGO_PKG_VERSION"));
/// Sentry protocol version of the auth header.
pub const PROTOCOL_VERSION: u32 = 7;

/// Length of a Sentry public key (hexadecimal characters).
const PUBLIC_KEY_LEN: usize = 32;

/// A [`SecretError::Malformed`] problem: what is wrong, then the form a DSN
/// must have. A literal, so it can never carry the DSN itself.
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

/// The envelope endpoint of a DSN and its credential. `Debug` never shows
/// the key.
#[derive(Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// `{scheme}://{host}{path}/api/{project_id}/envelope/`, without the key.
    pub url: Url,
    pub project_id: u64,
    public_key: String,
    auth: HeaderValue,
}

impl fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Endpoint")
            .field("url", &self.url.as_str())
            .field("project_id", &self.project_id)
            .field("public_key", &"<redacted>")
            .finish()
    }
}

impl Endpoint {
    /// The `X-Sentry-Auth` value (marked sensitive):
    /// `Sentry sentry_version=7, sentry_client=logdrain/<version>, sentry_key=<public_key>`.
    pub fn auth_header(&self) -> &HeaderValue {
        &self.auth
    }

    /// The public key's text, to redact it from anything echoed back.
    pub fn secret(&self) -> &str {
        &self.public_key
    }
}

/// Reads `SENTRY_DSN` (surrounding spaces ignored) and builds the endpoint.
pub fn from_secrets(secrets: &Secrets) -> Result<Endpoint, SecretError> {
    let dsn = secrets
        .get(SECRET)
        .map(str::trim)
        .filter(|d| !d.is_empty())
        .ok_or(SecretError::Missing {
            secret: SECRET,
            destination: DestinationKind::Sentry,
        })?;
    parse_dsn(dsn)
}

fn malformed(problem: &'static str) -> SecretError {
    SecretError::Malformed {
        secret: SECRET,
        problem,
    }
}

/// Parses a DSN. A trailing `/` after the project id, a query and a
/// fragment are ignored, as Sentry's SDKs ignore them.
pub fn parse_dsn(dsn: &str) -> Result<Endpoint, SecretError> {
    // `url`'s error names what is wrong without echoing the input, but it
    // is dropped anyway: the DSN carries the key.
    let parsed = Url::parse(dsn).map_err(|_| malformed(dsn_problem!("it is not a URL")))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(malformed(dsn_problem!("its scheme is not http or https")));
    }
    if parsed.host_str().is_none_or(str::is_empty) {
        return Err(malformed(dsn_problem!("it has no host")));
    }
    let public_key = parsed.username();
    if public_key.is_empty() {
        return Err(malformed(dsn_problem!(
            "it has no public key before the '@'"
        )));
    }
    if public_key.len() != PUBLIC_KEY_LEN || !public_key.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(malformed(dsn_problem!(
            "its public key (before the '@') is not 32 hexadecimal characters"
        )));
    }
    let path = parsed.path();
    let path = path.strip_suffix('/').unwrap_or(path);
    let (prefix, project) = path.rsplit_once('/').unwrap_or(("", path));
    let project_id = Some(project)
        .filter(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|p| p.parse::<u64>().ok())
        .ok_or_else(|| malformed(dsn_problem!("it does not end with a numeric project id")))?;

    let mut url = parsed.clone();
    // http(s) URLs with a host can always lose their credentials.
    url.set_username("")
        .and_then(|()| url.set_password(None))
        .map_err(|()| malformed(dsn_problem!("it cannot be turned into an endpoint URL")))?;
    url.set_path(&format!("{prefix}/api/{project_id}/envelope/"));
    url.set_query(None);
    url.set_fragment(None);

    // 32 hex characters and our own constants: always a valid header value.
    let mut auth = HeaderValue::from_str(&format!(
        "Sentry sentry_version={PROTOCOL_VERSION}, sentry_client={CLIENT}, sentry_key={public_key}"
    ))
    .map_err(|_| malformed(dsn_problem!("its public key cannot be sent in a header")))?;
    auth.set_sensitive(true);
    Ok(Endpoint {
        url,
        project_id,
        public_key: public_key.to_string(),
        auth,
    })
}
