//! Sentry configuration from a route's secrets: `SENTRY_DSN` → the envelope
//! endpoint and the `X-Sentry-Auth` header.
//!
//! The DSN is read by the shared rule [`logdrain::secrets::sentry_dsn`]
//! (`{scheme}://{public_key}[:{secret}]@{host}{path}/{project_id}`), which
//! the shim also applies at start; [`parse_dsn`] builds
//! `{scheme}://{host}{path}/api/{project_id}/envelope/` from its parts. The
//! DSN's secret part is deprecated by Sentry and never sent. This module must
//! never format the DSN or its key: errors name the problem without the
//! value, and `Debug` of [`Endpoint`] redacts the key.

use std::fmt;

use logdrain::secrets::{self as rules, SENTRY, SENTRY_DSN_NOT_AN_ENDPOINT};
use reqwest::header::HeaderValue;
use url::Url;

use crate::route::Secrets;
use crate::sinks::endpoint::EndpointPolicy;
use crate::sinks::http::Origin;
use crate::sinks::SecretError;

/// The secret that enables Sentry.
pub use logdrain::secrets::SENTRY_DSN as SECRET;
/// Header carrying the public key.
pub const AUTH_HEADER: &str = "X-Sentry-Auth";
/// `sentry_client` of the auth header.
pub const CLIENT: &str = concat!("logdrain/", env!("CARGO_PKG_VERSION"));
/// Sentry protocol version of the auth header.
pub const PROTOCOL_VERSION: u32 = 7;

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

    /// The DSN's host is the tenant's choice: Sentry's answers and
    /// connection failures are quoted only from Sentry's own hosts.
    pub fn origin(&self) -> Origin {
        Origin::Tenant {
            secret: SECRET,
            quoted: self.url.host_str().is_some_and(is_sentry_host),
        }
    }
}

/// `sentry.io` and its subdomains (`o1.ingest.us.sentry.io`).
fn is_sentry_host(host: &str) -> bool {
    let host = host.strip_suffix('.').unwrap_or(host);
    host == "sentry.io" || host.ends_with(".sentry.io")
}

/// Reads `SENTRY_DSN` (surrounding spaces ignored) and builds the endpoint,
/// whose host must pass `policy` as written (a literal address, a
/// well-known internal name); names are judged again when resolved.
pub fn from_secrets(secrets: &Secrets, policy: &EndpointPolicy) -> Result<Endpoint, SecretError> {
    let endpoint = parse_dsn(rules::required(&SENTRY, SECRET, secrets.get(SECRET))?)?;
    policy
        .check_url(&endpoint.url)
        .map_err(|kind| SecretError::NotPublic {
            secret: SECRET,
            kind,
        })?;
    Ok(endpoint)
}

/// Parses a DSN ([`rules::sentry_dsn`]) and builds its envelope endpoint and
/// auth header. A trailing `/` after the project id, a query and a fragment
/// are ignored, as Sentry's SDKs ignore them.
pub fn parse_dsn(dsn: &str) -> Result<Endpoint, SecretError> {
    let dsn = rules::sentry_dsn(dsn)?;
    let port = dsn.port.map(|p| format!(":{p}")).unwrap_or_default();
    // Built from the parts, so the key and the DSN's secret part are never
    // in the URL.
    let url = Url::parse(&format!(
        "{}://{}{port}{}/api/{}/envelope/",
        dsn.scheme, dsn.host, dsn.path, dsn.project_id
    ))
    .map_err(|_| SENTRY_DSN_NOT_AN_ENDPOINT)?;
    // 32 hex characters and our own constants: always a valid header value.
    let mut auth = HeaderValue::from_str(&format!(
        "Sentry sentry_version={PROTOCOL_VERSION}, sentry_client={CLIENT}, sentry_key={}",
        dsn.public_key()
    ))
    .map_err(|_| SENTRY_DSN_NOT_AN_ENDPOINT)?;
    auth.set_sensitive(true);
    Ok(Endpoint {
        url,
        project_id: dsn.project_id,
        public_key: dsn.public_key().to_string(),
        auth,
    })
}

/// Where an agent's lines land in Sentry: the project id and host of the
/// DSN (neither is secret; the DSN's public key is, and is never shown).
pub fn location(
    secrets: &Secrets,
    policy: &EndpointPolicy,
) -> Result<crate::sinks::Location, SecretError> {
    let endpoint = from_secrets(secrets, policy)?;
    let host = match (endpoint.url.host_str(), endpoint.url.port()) {
        (Some(host), Some(port)) => format!("{host}:{port}"),
        (Some(host), None) => host.to_string(),
        (None, _) => String::new(),
    };
    let project = endpoint.project_id.to_string();
    Ok(crate::sinks::Location::new(
        format!(
            "Sentry project {project} at {host}: Logs of that project (one trace per agent-server id)"
        ),
        &[("project_id", &project), ("host", &host)],
    ))
}
