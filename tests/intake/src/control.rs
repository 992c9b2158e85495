//! Fault injection and the HTTP control API, shared by every vendor intake.
//!
//! A [`Fault`] scripts how the next requests to an intake are answered
//! ("the next 2 requests get 500", "every request gets 503 until cleared",
//! "429 with `Retry-After: 3`"). Tests in the same process script faults
//! through [`Intake::inject`](crate::Intake::inject); anything else (a test
//! driving `docker compose`) uses the HTTP routes below, served on the same
//! port as the intakes:
//!
//! | route | body / answer |
//! |---|---|
//! | `POST /_intake/faults` | a [`Fault`] as JSON, e.g. `{"status":500,"times":2}`; `times` omitted = until cleared |
//! | `DELETE /_intake/faults` | removes every scripted fault |
//! | `PUT /_intake/{vendor}/keys` | JSON array of accepted keys, replacing the old ones |
//! | `GET /_intake/{vendor}/entries` | JSON array of accepted entries; `?detail=true` adds request id, key, oversized |
//! | `GET /_intake/requests` | every answered request with its status and reason |
//! | `GET /_intake/stats` | counters per vendor and status, each vendor's read → accepted latency (`read_to_accepted`: count, p50/p99/p999/max ms) and when it first and last accepted an entry (`first_accepted_unix_ms`, `last_accepted_unix_ms`) |
//! | `POST /_intake/reset` | forgets requests, entries, counters and faults (keeps keys) |
//!
//! This module must not check vendor requests; vendor modules do, and call
//! [`Fault::answer`] to shape an injected answer.

use std::collections::BTreeMap;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::store::Store;
use crate::Vendor;

/// How to answer upcoming requests instead of checking them.
///
/// Faults are used in the order they were injected; the first one that
/// applies to the request's vendor answers it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Fault {
    /// Only requests to this vendor; `None` = every vendor.
    #[serde(default)]
    pub vendor: Option<Vendor>,
    /// HTTP status of the answer.
    pub status: u16,
    /// How many requests to answer; `None` = every request until cleared.
    #[serde(default)]
    pub times: Option<u32>,
    /// Value of the `Retry-After` header (seconds or an HTTP date).
    #[serde(default)]
    pub retry_after: Option<String>,
    /// Further response headers (for example `X-Sentry-Rate-Limits`).
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// Wait this long before answering (for client timeouts).
    #[serde(default)]
    pub delay_ms: u64,
    /// Put the request's headers, credentials included, into the answer's
    /// error detail, as a careless proxy or vendor might (for redaction
    /// tests).
    #[serde(default)]
    pub echo_headers: bool,
}

/// A fault that cannot be answered.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FaultError {
    #[error("fault status {0} is not an HTTP status code: use 100..=999")]
    Status(u16),
    #[error("fault times is 0: use at least 1, or omit it to answer every request until cleared")]
    ZeroTimes,
    #[error("fault header {0:?} is not a valid header name")]
    HeaderName(String),
    #[error("the value of fault header {0:?} is not a valid header value (visible ASCII only)")]
    HeaderValue(String),
}

impl Fault {
    /// Answer the next `times` requests with `status`.
    pub fn next(times: u32, status: u16) -> Self {
        Fault {
            vendor: None,
            status,
            times: Some(times),
            retry_after: None,
            headers: BTreeMap::new(),
            delay_ms: 0,
            echo_headers: false,
        }
    }

    /// Answer every request with `status` until faults are cleared.
    pub fn until_cleared(status: u16) -> Self {
        Fault {
            times: None,
            ..Fault::next(1, status)
        }
    }

    /// Only requests to `vendor`.
    pub fn for_vendor(mut self, vendor: Vendor) -> Self {
        self.vendor = Some(vendor);
        self
    }

    /// Adds `Retry-After: <value>`.
    pub fn retry_after(mut self, value: impl Into<String>) -> Self {
        self.retry_after = Some(value.into());
        self
    }

    /// Adds a response header.
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.insert(name.into(), value.into());
        self
    }

    /// Echoes the request's headers in the answer's body.
    pub fn echo_headers(mut self) -> Self {
        self.echo_headers = true;
        self
    }

    /// Answers only after `delay`.
    pub fn delay(mut self, delay: Duration) -> Self {
        self.delay_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX);
        self
    }

    /// Checks that the fault can be answered as scripted.
    pub fn validate(&self) -> Result<(), FaultError> {
        StatusCode::from_u16(self.status).map_err(|_| FaultError::Status(self.status))?;
        if self.times == Some(0) {
            return Err(FaultError::ZeroTimes);
        }
        let retry_after = self.retry_after.iter().map(|v| ("retry-after", v));
        for (name, value) in retry_after.chain(self.headers.iter().map(|(n, v)| (n.as_str(), v))) {
            HeaderName::from_bytes(name.as_bytes())
                .map_err(|_| FaultError::HeaderName(name.to_string()))?;
            HeaderValue::from_str(value).map_err(|_| FaultError::HeaderValue(name.to_string()))?;
        }
        Ok(())
    }

    pub(crate) fn applies_to(&self, vendor: Vendor) -> bool {
        self.vendor.is_none_or(|v| v == vendor)
    }

    /// The status to answer with (validated on injection).
    pub(crate) fn status_code(&self) -> StatusCode {
        StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
    }

    /// Waits for the delay, then returns the vendor's error `response`
    /// with the fault's headers added.
    pub(crate) async fn answer(&self, mut response: Response) -> Response {
        if self.delay_ms > 0 {
            tokio::time::sleep(Duration::from_millis(self.delay_ms)).await;
        }
        let headers = response.headers_mut();
        let retry_after = self.retry_after.iter().map(|v| ("retry-after", v));
        for (name, value) in retry_after.chain(self.headers.iter().map(|(n, v)| (n.as_str(), v))) {
            // Validated on injection; a header that fails here is skipped.
            if let (Ok(name), Ok(value)) = (
                HeaderName::from_bytes(name.as_bytes()),
                HeaderValue::from_str(value),
            ) {
                headers.insert(name, value);
            }
        }
        response
    }
}

/// The control routes (see the module docs).
pub(crate) fn routes() -> Router<Store> {
    Router::new()
        .route("/_intake/faults", post(inject).delete(clear_faults))
        .route("/_intake/stats", get(stats))
        .route("/_intake/requests", get(requests))
        .route("/_intake/reset", post(reset))
        .route("/_intake/{vendor}/entries", get(entries))
        .route("/_intake/{vendor}/keys", put(set_keys))
}

/// An answer of the control API that says what was wrong.
fn control_error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, Json(json!({ "error": message.into() }))).into_response()
}

fn ok() -> Response {
    Json(json!({})).into_response()
}

fn unknown_vendor(name: &str) -> Response {
    let known: Vec<_> = Vendor::ALL.iter().map(|v| v.name()).collect();
    control_error(
        StatusCode::NOT_FOUND,
        format!("unknown vendor {name:?}: use one of {}", known.join(", ")),
    )
}

async fn inject(State(store): State<Store>, body: Bytes) -> Response {
    let fault: Fault = match serde_json::from_slice(&body) {
        Ok(fault) => fault,
        Err(e) => {
            return control_error(
                StatusCode::BAD_REQUEST,
                format!(
                    "the body is not a fault ({e}); send e.g. \
                     {{\"status\":429,\"times\":1,\"retry_after\":\"2\",\"vendor\":\"datadog\"}}"
                ),
            )
        }
    };
    if let Err(e) = fault.validate() {
        return control_error(StatusCode::BAD_REQUEST, e.to_string());
    }
    store.inject(fault);
    ok()
}

async fn clear_faults(State(store): State<Store>) -> Response {
    store.clear_faults();
    ok()
}

async fn set_keys(State(store): State<Store>, Path(name): Path<String>, body: Bytes) -> Response {
    let Some(vendor) = Vendor::from_name(&name) else {
        return unknown_vendor(&name);
    };
    match serde_json::from_slice::<Vec<String>>(&body) {
        Ok(keys) => {
            store.set_keys(vendor, &keys);
            ok()
        }
        Err(e) => control_error(
            StatusCode::BAD_REQUEST,
            format!("the body is not a JSON array of keys ({e}); send e.g. [\"key-1\"]"),
        ),
    }
}

#[derive(Deserialize)]
struct EntriesQuery {
    #[serde(default)]
    detail: bool,
}

async fn entries(
    State(store): State<Store>,
    Path(name): Path<String>,
    Query(query): Query<EntriesQuery>,
) -> Response {
    let Some(vendor) = Vendor::from_name(&name) else {
        return unknown_vendor(&name);
    };
    let body = store.read(|records| {
        let entries = records.entries(vendor);
        if query.detail {
            serde_json::to_value(entries.collect::<Vec<_>>())
        } else {
            serde_json::to_value(entries.map(|e| &e.value).collect::<Vec<_>>())
        }
    });
    match body {
        Ok(body) => Json(body).into_response(),
        Err(e) => control_error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

async fn requests(State(store): State<Store>) -> Response {
    match store.read(|records| serde_json::to_value(records.requests())) {
        Ok(body) => Json(body).into_response(),
        Err(e) => control_error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

async fn stats(State(store): State<Store>) -> Response {
    match store.read(|records| serde_json::to_value(records.stats())) {
        Ok(body) => Json(body).into_response(),
        Err(e) => control_error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

async fn reset(State(store): State<Store>) -> Response {
    store.reset();
    ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn faults_parse_from_json_with_times_omitted_meaning_until_cleared() {
        let fault: Fault = serde_json::from_str(r#"{"status":503}"#).unwrap();
        assert_eq!(fault, Fault::until_cleared(503));
        let fault: Fault = serde_json::from_str(
            r#"{"status":429,"times":1,"retry_after":"2","vendor":"datadog"}"#,
        )
        .unwrap();
        assert_eq!(
            fault,
            Fault::next(1, 429)
                .retry_after("2")
                .for_vendor(Vendor::Datadog)
        );
    }

    #[test]
    fn misspelled_fault_fields_are_rejected() {
        let err = serde_json::from_str::<Fault>(r#"{"status":500,"time":2}"#).unwrap_err();
        assert!(err.to_string().contains("time"), "{err}");
        assert!(serde_json::from_str::<Fault>(r#"{"status":500,"vendor":"nope"}"#).is_err());
    }

    #[test]
    fn invalid_faults_name_what_is_wrong() {
        assert_eq!(Fault::next(1, 42).validate(), Err(FaultError::Status(42)));
        assert_eq!(Fault::next(0, 500).validate(), Err(FaultError::ZeroTimes));
        assert_eq!(
            Fault::next(1, 500).header("bad name", "x").validate(),
            Err(FaultError::HeaderName("bad name".into()))
        );
        assert_eq!(
            Fault::next(1, 429).retry_after("1\n2").validate(),
            Err(FaultError::HeaderValue("retry-after".into()))
        );
        assert_eq!(Fault::next(1, 429).retry_after("3").validate(), Ok(()));
    }

    #[tokio::test]
    async fn an_answered_fault_carries_its_headers() {
        let fault = Fault::next(1, 429)
            .retry_after("7")
            .header("X-Sentry-Rate-Limits", "60:log_item");
        let response = fault
            .answer((fault.status_code(), "slow down").into_response())
            .await;
        assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(response.headers()["retry-after"], "7");
        assert_eq!(response.headers()["x-sentry-rate-limits"], "60:log_item");
    }
}
