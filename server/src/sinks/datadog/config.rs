//! Datadog configuration from a route's secrets: which intake and credential
//! placement a token needs, on the site of its region.
//!
//! The secrets themselves are checked by the shared rules in
//! [`logdrain::secrets`] (region names → site, the token's characters); this
//! module only turns accepted values into a request target.
//!
//! [`endpoint`] is the one place that decides, from the token's form, between
//! the browser intake (client token in the query) and the HTTP intake (API
//! key in the `DD-API-KEY` header). Whether the HTTP intake accepts client
//! tokens is unconfirmed, so this is the only function to change if it does.
//! This module must never format a token: `Debug` of [`Endpoint`] redacts it.

use std::fmt;

use reqwest::header::HeaderValue;
use url::Url;

use logdrain::secrets::{self as rules, DATADOG, DATADOG_REGION, DATADOG_TOKEN};

use crate::route::Secrets;
use crate::sinks::SecretError;

/// The path of the logs intake on every site.
pub const LOGS_PATH: &str = "/api/v2/logs";

/// A Datadog region and its site, chosen by `DATADOG_REGION` (the shared
/// rule, which the shim also applies at start).
pub use logdrain::secrets::DatadogRegion as Region;

/// What a `DATADOG_TOKEN` is, by its form.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TokenKind {
    /// A client token (`pub…`), made for the browser intake.
    ClientToken,
    /// An API key (32 hex characters).
    ApiKey,
}

impl TokenKind {
    pub fn of(token: &str) -> TokenKind {
        if token.starts_with("pub") {
            TokenKind::ClientToken
        } else {
            TokenKind::ApiKey
        }
    }
}

/// Where a credential goes in the request. `Debug` never shows it.
#[derive(Clone, PartialEq, Eq)]
pub enum Credential {
    /// `DD-API-KEY: <key>` header (marked sensitive).
    Header(HeaderValue),
    /// `?dd-api-key=<token>` query parameter.
    Query(String),
}

/// The intake URL of a route and its credential. `Debug` never shows the
/// credential.
#[derive(Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// The intake URL, without the credential.
    pub url: Url,
    pub credential: Credential,
}

impl fmt::Debug for Credential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Credential::Header(_) => f.write_str("<redacted> in DD-API-KEY header"),
            Credential::Query(_) => f.write_str("<redacted> in dd-api-key query"),
        }
    }
}

impl fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Endpoint")
            .field("url", &self.url.as_str())
            .field("credential", &self.credential)
            .finish()
    }
}

impl Endpoint {
    /// The credential's text, to redact it from anything echoed back.
    pub fn secret(&self) -> &str {
        match &self.credential {
            Credential::Header(value) => value.to_str().unwrap_or_default(),
            Credential::Query(token) => token,
        }
    }
}

/// Reads `DATADOG_TOKEN` and `DATADOG_REGION` and decides the endpoint.
pub fn from_secrets(
    secrets: &Secrets,
    base_override: Option<&Url>,
) -> Result<Endpoint, SecretError> {
    let token = rules::required(&DATADOG, DATADOG_TOKEN, secrets.get(DATADOG_TOKEN))?;
    let region = Region::from_secret(secrets.get(DATADOG_REGION))?;
    endpoint(token, region, base_override)
}

/// Where an agent's logs land in Datadog: the site of `DATADOG_REGION`, and
/// the Log Explorer query (`source:<agent-id>`, one `host` per replica).
pub fn location(
    agent_id: &str,
    secrets: &Secrets,
    base_override: Option<&Url>,
) -> Result<crate::sinks::Location, SecretError> {
    let endpoint = from_secrets(secrets, base_override)?;
    let region = Region::from_secret(secrets.get(DATADOG_REGION))?;
    let site = region.site();
    let query = format!("source:{agent_id}");
    let intake = match (endpoint.url.host_str(), endpoint.url.port()) {
        (Some(host), Some(port)) => format!("{host}:{port}"),
        (host, None) => host.unwrap_or_default().to_string(),
        (None, Some(_)) => String::new(),
    };
    let mut summary = format!(
        "Datadog site {site}: Logs, search `{query}` (service {}, host = agent-server id)",
        super::request_builder::SERVICE
    );
    if base_override.is_some() {
        summary.push_str(&format!("; sent to the override {intake}"));
    }
    Ok(crate::sinks::Location::new(
        summary,
        &[("site", site), ("query", &query), ("intake_host", &intake)],
    ))
}

/// `browser-intake-` + the site with every dot but the last as a dash
/// (`us3.datadoghq.com` → `browser-intake-us3-datadoghq.com`), as Datadog's
/// browser SDK builds it.
fn browser_intake_host(site: &str) -> String {
    match site.rsplit_once('.') {
        Some((name, tld)) => format!("browser-intake-{}.{tld}", name.replace('.', "-")),
        None => format!("browser-intake-{site}"),
    }
}

/// The one place that decides the intake and the credential placement from
/// the token's form.
///
/// * client token (`pub…`) → `https://browser-intake-<site with dashes>/api/v2/logs?dd-api-key=<token>`
///   (see [`browser_intake_host`])
/// * otherwise (API key) → `https://http-intake.logs.<site>/api/v2/logs` with `DD-API-KEY`
///
/// `base_override` replaces scheme, host and port (the path stays
/// [`LOGS_PATH`]); the credential placement still follows the token.
pub fn endpoint(
    token: &str,
    region: Region,
    base_override: Option<&Url>,
) -> Result<Endpoint, SecretError> {
    // Tokens go into a header or a URL: only visible ASCII can.
    let token = rules::datadog_token(token)?;
    let kind = TokenKind::of(token);
    let mut url = match base_override {
        Some(base) => base.clone(),
        None => {
            let host = match kind {
                TokenKind::ClientToken => browser_intake_host(region.site()),
                TokenKind::ApiKey => format!("http-intake.logs.{}", region.site()),
            };
            // The host is built from our own constants, so it always parses
            // (pinned by the region tests).
            Url::parse(&format!("https://{host}"))
                .unwrap_or_else(|e| unreachable!("intake host {host} does not parse: {e}"))
        }
    };
    url.set_path(LOGS_PATH);
    url.set_query(None);
    url.set_fragment(None);
    let credential = match kind {
        TokenKind::ClientToken => Credential::Query(token.to_string()),
        TokenKind::ApiKey => {
            // Visible ASCII was checked above, which is always a valid
            // header value.
            let mut value = HeaderValue::from_str(token).map_err(|_| SecretError::Malformed {
                secret: DATADOG_TOKEN,
                problem: "it cannot be sent in an HTTP header",
            })?;
            value.set_sensitive(true);
            Credential::Header(value)
        }
    };
    Ok(Endpoint { url, credential })
}

#[cfg(test)]
mod tests {
    use super::*;

    const API_KEY: &str = "0123456789abcdef0123456789abcdef";
    const CLIENT_TOKEN: &str = "pub0123456789abcdef0123456789abcdef";

    #[test]
    fn an_api_key_goes_to_the_http_intake_in_the_header() {
        for region in Region::ALL {
            let ep = endpoint(API_KEY, region, None).unwrap();
            assert_eq!(
                ep.url.as_str(),
                format!("https://http-intake.logs.{}/api/v2/logs", region.site())
            );
            match &ep.credential {
                Credential::Header(v) => {
                    assert_eq!(v.to_str().unwrap(), API_KEY);
                    assert!(v.is_sensitive());
                }
                Credential::Query(_) => panic!("API key must go in the header"),
            }
        }
    }

    #[test]
    fn a_client_token_goes_to_the_browser_intake_in_the_query() {
        let ep = endpoint(CLIENT_TOKEN, Region::Us1, None).unwrap();
        assert_eq!(
            ep.url.as_str(),
            "https://browser-intake-datadoghq.com/api/v2/logs"
        );
        assert_eq!(ep.credential, Credential::Query(CLIENT_TOKEN.to_string()));
        let hosts: Vec<String> = Region::ALL
            .into_iter()
            .map(|r| {
                let ep = endpoint(CLIENT_TOKEN, r, None).unwrap();
                ep.url.host_str().unwrap().to_string()
            })
            .collect();
        assert_eq!(
            hosts,
            [
                "browser-intake-datadoghq.com",
                "browser-intake-us3-datadoghq.com",
                "browser-intake-us5-datadoghq.com",
                "browser-intake-ddog-gov.com",
                "browser-intake-us2-ddog-gov.com",
                "browser-intake-datadoghq.eu",
                "browser-intake-ap1-datadoghq.com",
                "browser-intake-ap2-datadoghq.com",
                "browser-intake-uk1-datadoghq.com",
            ]
        );
    }

    #[test]
    fn an_override_replaces_scheme_host_and_port_but_keeps_the_path() {
        let base = Url::parse("http://127.0.0.1:9123/ignored/path?x=1").unwrap();
        let api = endpoint(API_KEY, Region::Eu, Some(&base)).unwrap();
        assert_eq!(api.url.as_str(), "http://127.0.0.1:9123/api/v2/logs");
        assert!(matches!(api.credential, Credential::Header(_)));
        let client = endpoint(CLIENT_TOKEN, Region::Eu, Some(&base)).unwrap();
        assert_eq!(client.url.as_str(), "http://127.0.0.1:9123/api/v2/logs");
        assert!(matches!(client.credential, Credential::Query(_)));
    }

    #[test]
    fn a_token_with_a_line_break_is_refused_without_showing_it() {
        let err = endpoint("abc\ndef", Region::Us1, None).unwrap_err();
        let text = err.to_string();
        assert!(text.starts_with("DATADOG_TOKEN cannot be used"), "{text}");
        assert!(!text.contains("abc"));
    }

    #[test]
    fn secrets_are_trimmed_and_a_missing_token_is_named() {
        let secrets = Secrets(
            [
                ("DATADOG_TOKEN".to_string(), format!("  {API_KEY}\n")),
                ("DATADOG_REGION".to_string(), "us5".to_string()),
            ]
            .into(),
        );
        let ep = from_secrets(&secrets, None).unwrap();
        assert_eq!(
            ep.url.host_str(),
            Some("http-intake.logs.us5.datadoghq.com")
        );
        assert_eq!(ep.secret(), API_KEY);
        let err = from_secrets(&Secrets::default(), None).unwrap_err();
        assert!(err.to_string().starts_with("DATADOG_TOKEN is required"));
    }

    #[test]
    fn debug_of_an_endpoint_never_shows_the_token() {
        for token in [API_KEY, CLIENT_TOKEN] {
            let ep = endpoint(token, Region::Us1, None).unwrap();
            let debug = format!("{ep:?}");
            assert!(!debug.contains(token), "{debug}");
            assert!(debug.contains("<redacted>"));
        }
    }
}
