//! The HTTP call to the New Relic Log API and the classification of its
//! answer.
//!
//! [`classify`] is the one decision about what a New Relic status means for
//! the engine (accepted, retry, split, credentials, misconfiguration).
//! Reasons carry the status and a short, redacted excerpt of New Relic's
//! answer, never the license key. This module must not retry or wait: the
//! engine does.

use std::time::Duration;

use reqwest::header::{CONTENT_ENCODING, CONTENT_TYPE};
use reqwest::StatusCode;

use super::config::Endpoint;
use crate::sinks::http;
use crate::sinks::SinkError;

/// The vendor's name in reasons.
const VENDOR: &str = "New Relic";

/// Header carrying the license key.
pub const LICENSE_KEY_HEADER: &str = "X-License-Key";

/// Posts one gzipped JSON body.
pub async fn post(
    client: &reqwest::Client,
    endpoint: &Endpoint,
    body: Vec<u8>,
) -> Result<(), SinkError> {
    let secret = endpoint.secret();
    let request = client
        .post(endpoint.url.clone())
        .header(LICENSE_KEY_HEADER, endpoint.license_key.clone())
        .header(CONTENT_TYPE, "application/json")
        .header(CONTENT_ENCODING, "gzip")
        .body(body);
    let reply = http::send(VENDOR, request, secret, http::Origin::Vendor).await?;
    classify(
        reply.status,
        http::retry_after(&reply.headers),
        &reply.detail,
    )
}

/// What a New Relic status means: the one place this is decided.
///
/// | status | result |
/// |---|---|
/// | 2xx (202 documented) | accepted |
/// | 408, 429, 5xx | [`SinkError::Retryable`], with `Retry-After` |
/// | 400, 413 | [`SinkError::PayloadRejected`] (split, never loop) |
/// | 401, 403 | [`SinkError::Unauthorized`] (keep the data) |
/// | anything else (3xx, 404, …) | [`SinkError::Config`]: the endpoint is wrong |
pub fn classify(
    status: StatusCode,
    retry_after: Option<Duration>,
    detail: &str,
) -> Result<(), SinkError> {
    http::usual_meaning(
        VENDOR,
        status,
        retry_after,
        detail,
        "check NEW_RELIC_LICENSE_KEY: an ingest license key",
        "is the New Relic URL right?",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outcome(code: u16, retry_after: Option<Duration>) -> Result<(), SinkError> {
        classify(StatusCode::from_u16(code).unwrap(), retry_after, "")
    }

    #[test]
    fn accepted_202_and_any_other_2xx_succeed() {
        for code in [202, 200, 204] {
            assert_eq!(outcome(code, None), Ok(()), "{code}");
        }
    }

    #[test]
    fn timeouts_throttling_and_server_errors_are_retried_with_retry_after() {
        let after = Some(Duration::from_secs(9));
        for code in [408, 429, 500, 502, 503, 504, 599] {
            match outcome(code, after) {
                Err(SinkError::Retryable {
                    retry_after,
                    reason,
                }) => {
                    assert_eq!(retry_after, after, "{code}");
                    assert!(reason.contains(&code.to_string()), "{reason}");
                }
                other => panic!("{code} gave {other:?}"),
            }
        }
    }

    #[test]
    fn bad_request_and_too_large_are_permanent_for_the_payload() {
        for code in [400, 413] {
            assert!(
                matches!(outcome(code, None), Err(SinkError::PayloadRejected { .. })),
                "{code}"
            );
        }
    }

    #[test]
    fn unauthorized_and_forbidden_mean_bad_credentials_and_name_the_secret() {
        for code in [401, 403] {
            match outcome(code, None) {
                Err(SinkError::Unauthorized { reason }) => {
                    assert!(reason.contains("NEW_RELIC_LICENSE_KEY"), "{reason}")
                }
                other => panic!("{code} gave {other:?}"),
            }
        }
    }

    #[test]
    fn other_answers_mean_the_endpoint_is_wrong() {
        for code in [301, 404, 405, 415] {
            assert!(
                matches!(outcome(code, None), Err(SinkError::Config { .. })),
                "{code}"
            );
        }
    }

    #[test]
    fn the_answer_is_quoted_in_the_reason() {
        let err = classify(StatusCode::BAD_REQUEST, None, "bad json").unwrap_err();
        assert_eq!(
            err.to_string(),
            "the vendor rejected the payload: New Relic answered 400 Bad Request: bad json"
        );
    }
}
