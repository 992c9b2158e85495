//! The HTTP call to Sentry and the classification of its answer.
//!
//! [`classify`] is the one decision about what a Sentry answer means for the
//! engine, rate limits included; [`rate_limit`] reads `X-Sentry-Rate-Limits`.
//! Reasons carry the status and a short, redacted excerpt of Sentry's answer,
//! never the public key. This module must not retry or wait: the engine does.

use std::error::Error as _;
use std::time::{Duration, SystemTime};

use reqwest::header::{CONTENT_ENCODING, CONTENT_TYPE, RETRY_AFTER};
use reqwest::StatusCode;

use super::config::{Endpoint, AUTH_HEADER};
use super::request_builder::ENVELOPE_CONTENT_TYPE;
use crate::sinks::engine::retry::parse_retry_after;
use crate::sinks::{SendOutcome, SinkError};

/// Header of Sentry's rate limits, on any status.
pub const RATE_LIMITS_HEADER: &str = "X-Sentry-Rate-Limits";
/// The wait after a 429 that says nothing about how long.
pub const DEFAULT_RATE_LIMIT_WAIT: Duration = Duration::from_secs(60);
/// Rate-limit categories that stop log items: their count and their bytes.
/// A limit with no category stops everything.
pub const LOG_CATEGORIES: &[&str] = &["log_item", "log_byte"];

/// Most bytes of an error answer kept in a reason.
const DETAIL_BYTES: usize = 300;

/// Posts one gzipped envelope.
pub async fn post(
    http: &reqwest::Client,
    endpoint: &Endpoint,
    body: Vec<u8>,
) -> Result<SendOutcome, SinkError> {
    let secret = endpoint.secret();
    let response = http
        .post(endpoint.url.clone())
        .header(AUTH_HEADER, endpoint.auth_header().clone())
        .header(CONTENT_TYPE, ENVELOPE_CONTENT_TYPE)
        .header(CONTENT_ENCODING, "gzip")
        .body(body)
        .send()
        .await
        .map_err(|e| transport_error(e, secret))?;
    let status = response.status();
    let header = |name| {
        response
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let retry_after =
        header(RETRY_AFTER.as_str()).and_then(|v| parse_retry_after(&v, SystemTime::now()));
    let rate_limit = header(RATE_LIMITS_HEADER).and_then(|v| rate_limit(&v));
    // Read the (small) answer, also so the connection can be reused.
    let detail = redact(&read_detail(response).await, secret);
    classify(&Answer {
        status,
        retry_after,
        rate_limit,
        detail: &detail,
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
    let reason = if answer.detail.is_empty() {
        format!("Sentry answered {status}")
    } else {
        format!("Sentry answered {status}: {}", answer.detail)
    };
    let wait = answer.retry_after.max(answer.rate_limit);
    match status.as_u16() {
        200..=299 => Ok(SendOutcome {
            hold_off: answer.rate_limit,
            ..SendOutcome::accepted()
        }),
        429 => Err(SinkError::Retryable {
            reason,
            retry_after: Some(wait.unwrap_or(DEFAULT_RATE_LIMIT_WAIT)),
        }),
        408 | 500..=599 => Err(SinkError::Retryable {
            reason,
            retry_after: wait,
        }),
        400 | 413 => Err(SinkError::PayloadRejected { reason }),
        401 | 403 => Err(SinkError::Unauthorized { reason }),
        _ => Err(SinkError::Config {
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

/// A request that got no answer: the network is worth retrying; a request
/// that could not even be built is a configuration problem.
fn transport_error(error: reqwest::Error, secret: &str) -> SinkError {
    let building = error.is_builder();
    let timeout = error.is_timeout();
    let error = error.without_url();
    let mut reason = format!("request to Sentry failed: {error}");
    let mut source = error.source();
    while let Some(cause) = source {
        reason.push_str(": ");
        reason.push_str(&cause.to_string());
        source = cause.source();
    }
    if timeout {
        reason.push_str(" (timed out)");
    }
    let reason = redact(&reason, secret);
    if building {
        SinkError::Config { reason }
    } else {
        SinkError::Retryable {
            reason,
            retry_after: None,
        }
    }
}

/// Up to [`DETAIL_BYTES`] of the answer's body, on one line.
async fn read_detail(mut response: reqwest::Response) -> String {
    let mut kept = Vec::new();
    while kept.len() < DETAIL_BYTES {
        match response.chunk().await {
            Ok(Some(chunk)) => kept.extend_from_slice(&chunk),
            Ok(None) | Err(_) => break,
        }
    }
    kept.truncate(DETAIL_BYTES);
    let text = String::from_utf8_lossy(&kept);
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Replaces every occurrence of `secret` in `text`.
fn redact(text: &str, secret: &str) -> String {
    if secret.is_empty() {
        text.to_string()
    } else {
        text.replace(secret, "<redacted>")
    }
}
