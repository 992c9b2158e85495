//! The HTTP call to Datadog and the classification of its answer.
//!
//! [`classify`] is the one decision about what a Datadog status means for the
//! engine (accepted, retry, split, credentials, misconfiguration). Reasons
//! carry the status and a short, redacted excerpt of Datadog's answer; they
//! never carry the URL (it may hold a client token) or the credential. This
//! module must not retry or wait: the engine does.

use std::time::Duration;

use reqwest::header::{CONTENT_ENCODING, CONTENT_TYPE};
use reqwest::StatusCode;

use super::config::{Credential, Endpoint};
use crate::sinks::http;
use crate::sinks::SinkError;

/// The vendor's name in reasons.
const VENDOR: &str = "Datadog";

/// Header carrying an API key.
pub const API_KEY_HEADER: &str = "DD-API-KEY";
/// Query parameter carrying a client token.
pub const CLIENT_TOKEN_PARAM: &str = "dd-api-key";

/// The query of a browser-intake request, in the browser SDK's order
/// (`buildEndpointParameters` in
/// `packages/core/src/domain/configuration/endpointBuilder.ts`,
/// <https://github.com/DataDog/browser-sdk>): `ddsource` (the agent id, the
/// body's `ddsource`, so either reading gives the contract's), the token,
/// the sender's version, `dd-evp-origin=browser` and a new request id. The
/// SDK's `dd-evp-encoding` is left out: it names the SDK's own compression,
/// and this body says gzip in `Content-Encoding`.
fn browser_query(url: &mut url::Url, agent_id: &str, token: &str) {
    url.query_pairs_mut()
        .append_pair("ddsource", agent_id)
        .append_pair(CLIENT_TOKEN_PARAM, token)
        .append_pair("dd-evp-origin-version", env!("CARGO_PKG_VERSION"))
        .append_pair("dd-evp-origin", "browser")
        .append_pair("dd-request-id", &request_id());
}

/// A random (version 4) UUID, as the browser SDK's `generateUUID` makes
/// one for `dd-request-id`.
fn request_id() -> String {
    let mut bytes: [u8; 16] = rand::random();
    bytes[6] = (bytes[6] & 0x0f) | 0x40;
    bytes[8] = (bytes[8] & 0x3f) | 0x80;
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &hex[..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..]
    )
}

/// Posts one gzipped JSON array of `agent_id`'s lines.
pub async fn post(
    client: &reqwest::Client,
    endpoint: &Endpoint,
    agent_id: &str,
    body: Vec<u8>,
) -> Result<(), SinkError> {
    let secret = endpoint.secret();
    let request = match &endpoint.credential {
        Credential::Header(key) => client
            .post(endpoint.url.clone())
            .header(API_KEY_HEADER, key.clone()),
        Credential::Query(token) => {
            let mut url = endpoint.url.clone();
            browser_query(&mut url, agent_id, token);
            client.post(url)
        }
    };
    // The reason of a transport error never holds the URL: it may carry a
    // client token.
    let request = request
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

/// What a Datadog status means: the one place this is decided.
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
        "",
        "is the Datadog URL right?",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids_are_fresh_version_4_uuids() {
        let (a, b) = (request_id(), request_id());
        assert_ne!(a, b);
        for id in [a, b] {
            let uuid = uuid_parts(&id);
            assert_eq!(
                uuid.iter().map(|p| p.len()).collect::<Vec<_>>(),
                [8, 4, 4, 4, 12],
                "{id}"
            );
            assert!(uuid[2].starts_with('4'), "{id}");
            assert!(matches!(&uuid[3][..1], "8" | "9" | "a" | "b"), "{id}");
        }
    }

    fn uuid_parts(id: &str) -> Vec<&str> {
        let parts: Vec<&str> = id.split('-').collect();
        assert!(
            id.bytes().all(|b| b == b'-' || b.is_ascii_hexdigit()),
            "{id}"
        );
        parts
    }

    fn outcome(code: u16, retry_after: Option<Duration>) -> Result<(), SinkError> {
        classify(StatusCode::from_u16(code).unwrap(), retry_after, "")
    }

    #[test]
    fn any_2xx_is_accepted() {
        for code in [200, 202, 204] {
            assert_eq!(outcome(code, None), Ok(()), "{code}");
        }
    }

    #[test]
    fn timeouts_throttling_and_server_errors_are_retried_with_retry_after() {
        let after = Some(Duration::from_secs(7));
        for code in [408, 429, 500, 502, 503, 504] {
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
    fn unauthorized_and_forbidden_mean_bad_credentials() {
        for code in [401, 403] {
            assert!(
                matches!(outcome(code, None), Err(SinkError::Unauthorized { .. })),
                "{code}"
            );
        }
    }

    #[test]
    fn other_answers_mean_the_endpoint_is_wrong() {
        for code in [301, 404, 405] {
            assert!(
                matches!(outcome(code, None), Err(SinkError::Config { .. })),
                "{code}"
            );
        }
    }
}
