//! The HTTP call to Sentry and the classification of its answer.
//!
//! [`classify`] is the one decision about what a Sentry answer means for the
//! engine, rate limits included; [`rate_limit`] reads `X-Sentry-Rate-Limits`.
//! Reasons carry the status and a short, redacted excerpt of Sentry's answer,
//! never the public key. This module must not retry or wait: the engine does.

use std::time::Duration;

use reqwest::header::{CONTENT_ENCODING, CONTENT_TYPE};
use reqwest::StatusCode;

use super::config::{Endpoint, AUTH_HEADER};
use super::request_builder::ENVELOPE_CONTENT_TYPE;
use crate::sinks::http::{self, StatusClass};
use crate::sinks::{SendOutcome, SinkError};

/// The vendor's name in reasons.
const VENDOR: &str = "Sentry";

/// Header of Sentry's rate limits, on any status.
pub const RATE_LIMITS_HEADER: &str = "X-Sentry-Rate-Limits";
/// The wait after a 429 that says nothing about how long.
pub const DEFAULT_RATE_LIMIT_WAIT: Duration = Duration::from_secs(60);
/// Rate-limit categories that stop log items: their count and their bytes.
/// A limit with no category stops everything.
pub const LOG_CATEGORIES: &[&str] = &["log_item", "log_byte"];

/// Posts one gzipped envelope.
pub async fn post(
    client: &reqwest::Client,
    endpoint: &Endpoint,
    body: Vec<u8>,
) -> Result<SendOutcome, SinkError> {
    let secret = endpoint.secret();
    let request = client
        .post(endpoint.url.clone())
        .header(AUTH_HEADER, endpoint.auth_header().clone())
        .header(CONTENT_TYPE, ENVELOPE_CONTENT_TYPE)
        .header(CONTENT_ENCODING, "gzip")
        .body(body);
    let reply = http::send(VENDOR, request, secret, endpoint.origin()).await?;
    classify(&Answer {
        status: reply.status,
        retry_after: http::retry_after(&reply.headers),
        rate_limit: reply
            .headers
            .get(RATE_LIMITS_HEADER)
            .and_then(|v| v.to_str().ok())
            .and_then(rate_limit),
        detail: &reply.detail,
    })
}

/// What Sentry answered, as far as [`classify`] needs it.
#[derive(Clone, Copy, Debug)]
pub struct Answer<'a> {
    pub status: StatusCode,
    /// `Retry-After`, parsed.
    pub retry_after: Option<Duration>,
    /// The longest limit of `X-Sentry-Rate-Limits` that applies to logs
    /// ([`rate_limit`]).
    pub rate_limit: Option<Duration>,
    /// A redacted excerpt of the body.
    pub detail: &'a str,
}

/// What a Sentry answer means: the one place this is decided.
///
/// | status | result |
/// |---|---|
/// | 2xx | accepted; a rate limit for logs becomes [`SendOutcome::hold_off`] |
/// | 429 | [`SinkError::Retryable`] after the longer of `Retry-After` and the rate limit, or 60 s when neither is given |
/// | 408, 5xx | [`SinkError::Retryable`], with the longer of `Retry-After` and the rate limit if given |
/// | 400, 413 | [`SinkError::PayloadRejected`] (split, never loop) |
/// | 401, 403 | [`SinkError::Unauthorized`] (keep the data) |
/// | anything else (3xx, 404, …) | [`SinkError::Config`]: the DSN's host or path is wrong |
pub fn classify(answer: &Answer<'_>) -> Result<SendOutcome, SinkError> {
    let status = answer.status;
    let reason = http::answered(VENDOR, status, answer.detail);
    let wait = answer.retry_after.max(answer.rate_limit);
    match http::status_class(status.as_u16()) {
        StatusClass::Accepted => Ok(SendOutcome {
            hold_off: answer.rate_limit,
            ..SendOutcome::accepted()
        }),
        StatusClass::Retryable if status == StatusCode::TOO_MANY_REQUESTS => {
            Err(SinkError::Retryable {
                reason,
                retry_after: Some(wait.unwrap_or(DEFAULT_RATE_LIMIT_WAIT)),
            })
        }
        StatusClass::Retryable => Err(SinkError::Retryable {
            reason,
            retry_after: wait,
        }),
        StatusClass::PayloadRejected => Err(SinkError::PayloadRejected { reason }),
        StatusClass::Unauthorized => Err(SinkError::Unauthorized { reason }),
        StatusClass::Other => Err(SinkError::Config {
            reason: format!("{reason} (is the host and path of SENTRY_DSN right?)"),
        }),
    }
}

/// The longest wait of an `X-Sentry-Rate-Limits` value that applies to
/// logs, or `None` if no entry does.
///
/// The value is a comma-separated list of
/// `<seconds>:<categories>:<scope>[:<reason>[:<namespaces>]]`, with
/// categories separated by `;`. An entry applies when its categories are
/// empty (everything) or include one of [`LOG_CATEGORIES`]. Malformed
/// entries are skipped, as Sentry's SDKs skip them; the scope does not
/// matter, since a route sends to one project with one key.
pub fn rate_limit(value: &str) -> Option<Duration> {
    value
        .split(',')
        .filter_map(|entry| {
            let mut fields = entry.trim().split(':');
            let seconds = fields.next()?.trim();
            let categories = fields.next()?.trim();
            if seconds.is_empty() || !seconds.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            let applies = categories.is_empty()
                || categories
                    .split(';')
                    .any(|c| LOG_CATEGORIES.contains(&c.trim()));
            // More digits than a u64 holds is still "a very long time".
            applies.then(|| Duration::from_secs(seconds.parse().unwrap_or(u64::MAX)))
        })
        .max()
}
