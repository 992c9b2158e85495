//! The Datadog logs intake: `POST /api/v2/logs`.
//!
//! Plays `http-intake.logs.<site>` and `browser-intake-<site>` on one path
//! (API: <https://docs.datadoghq.com/api/latest/logs/#send-logs>):
//!
//! * Auth: an API key in the `DD-API-KEY` header, or a client token in the
//!   `dd-api-key` query parameter (the browser intake's form). Both forms
//!   are accepted for any configured key; the form used is recorded so
//!   tests can pin which one a sink chose. Missing or unknown key → 403
//!   `{"errors":["Forbidden"]}`.
//! * The browser intake (a client token in the query) takes what Datadog's
//!   browser SDK sends (`packages/core/src/domain/configuration/` in
//!   <https://github.com/DataDog/browser-sdk>): the query parameters of
//!   [`BROWSER_PARAMS`] (400 naming a missing one: stricter than Datadog,
//!   whose answer is unknown), at most 50 entries per request (413), and an
//!   entry of 256 KiB or more is marked `oversized` (the SDK discards such
//!   a message: the "Logs intake limit").
//! * Body: a gzip-compressed JSON array of objects.
//! * Limits: at most 1,000 entries and 5 MB uncompressed per request (413
//!   otherwise); an entry over 1 MB is accepted and marked `oversized`,
//!   because Datadog truncates it instead of rejecting it.
//! * Accepted → 202 with body `{}`.
//!
//! Stricter than Datadog, to catch sink bugs early (each answers 400 and
//! names the problem): `Content-Type` must be `application/json` (Datadog
//! would read other types as plain text), `Content-Encoding` must be `gzip`
//! (our sinks always compress), every entry needs a string `message`, and a
//! `timestamp`, when present, must be integer milliseconds between the years
//! 2000 and 2100 (seconds or nanoseconds would be placed at the wrong time).
//!
//! This module must not keep state of its own: recording and faults live in
//! the shared store.

use axum::body::Body;
use axum::extract::{RawQuery, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Extension, Json, Router};
use serde_json::{json, Value};

use crate::body::{self, BodyError};
use crate::handler::{self, json_kind, json_len, reject, Accepted, Entries, Rejection};
use crate::store::{AuthForm, Pending, Store};
use crate::Vendor;

/// The logs intake path.
pub const PATH: &str = "/api/v2/logs";
/// Header carrying an API key.
pub const API_KEY_HEADER: &str = "DD-API-KEY";
/// Query parameter carrying a client token (browser intake).
pub const CLIENT_TOKEN_PARAM: &str = "dd-api-key";
/// The other query parameters the browser SDK sends with every request
/// (`buildEndpointParameters` in `endpointBuilder.ts`).
pub const BROWSER_PARAMS: [&str; 4] = [
    "ddsource",
    "dd-evp-origin-version",
    "dd-evp-origin",
    "dd-request-id",
];

/// Earliest plausible `timestamp` (2000-01-01T00:00:00Z) in milliseconds.
const MIN_TIMESTAMP_MS: i64 = 946_684_800_000;
/// Latest plausible `timestamp` (2100-01-01T00:00:00Z) in milliseconds.
const MAX_TIMESTAMP_MS: i64 = 4_102_444_800_000;

/// Datadog's per-request limits.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DatadogLimits {
    /// Entries per request.
    pub max_entries: usize,
    /// Uncompressed bytes per request.
    pub max_payload_bytes: usize,
    /// Serialized bytes per entry before Datadog truncates it.
    pub max_entry_bytes: usize,
    /// Entries stamped longer ago than this are accepted (202) and silently
    /// dropped, as Datadog discards logs older than 18 h at ingestion
    /// (<https://docs.datadoghq.com/api/latest/logs/#send-logs>). `None`: no
    /// window.
    pub max_age: Option<std::time::Duration>,
    /// Entries per request to the browser intake (the SDK's
    /// `batchMessagesLimit`).
    pub browser_max_entries: usize,
    /// Serialized bytes per entry to the browser intake: the SDK discards a
    /// message of `messageBytesLimit` (256 KiB) or more.
    pub browser_max_entry_bytes: usize,
}

impl Default for DatadogLimits {
    fn default() -> Self {
        DatadogLimits {
            max_entries: 1_000,
            max_payload_bytes: 5_000_000,
            max_entry_bytes: 1_000_000,
            max_age: Some(std::time::Duration::from_secs(18 * 3600)),
            browser_max_entries: 50,
            browser_max_entry_bytes: 256 * 1024 - 1,
        }
    }
}

impl DatadogLimits {
    /// The limits of the browser intake: the smaller of each.
    fn browser(&self) -> DatadogLimits {
        DatadogLimits {
            max_entries: self.max_entries.min(self.browser_max_entries),
            max_entry_bytes: self.max_entry_bytes.min(self.browser_max_entry_bytes),
            ..self.clone()
        }
    }

    /// Largest compressed body read. Deflate never grows data by anything
    /// near 10%, so a larger body must decompress past the payload limit.
    fn max_body_bytes(&self) -> usize {
        self.max_payload_bytes
            .saturating_add(self.max_payload_bytes / 10)
            .saturating_add(1024)
    }
}

/// Configuration of the Datadog intake: accepted keys and limits.
pub type DatadogConfig = crate::VendorConfig<DatadogLimits>;

/// The Datadog routes.
pub(crate) fn routes(limits: DatadogLimits) -> Router<Store> {
    Router::new()
        .route(PATH, post(receive))
        .layer(Extension(limits))
}

async fn receive(
    State(store): State<Store>,
    Extension(limits): Extension<DatadogLimits>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Body,
) -> Response {
    handler::respond(
        &store,
        Vendor::Datadog,
        &headers,
        error_response,
        async |pending| {
            let entries = check(&store, &limits, query.as_deref(), &headers, body, pending)
                .await?
                .within(Vendor::Datadog, limits.max_age);
            Ok(Accepted {
                status: StatusCode::ACCEPTED,
                entries,
                body: json!({}),
            })
        },
    )
    .await
}

/// Runs every check in Datadog's order: credentials, headers, body, entries.
async fn check(
    store: &Store,
    limits: &DatadogLimits,
    query: Option<&str>,
    headers: &HeaderMap,
    body: Body,
    pending: &mut Pending,
) -> Result<Entries, Rejection> {
    let (form, presented) = credential(headers, query).ok_or_else(|| {
        reject(
            StatusCode::FORBIDDEN,
            format!(
                "no key: send an API key in the {API_KEY_HEADER} header, \
                 or a client token in the {CLIENT_TOKEN_PARAM} query parameter"
            ),
        )
    })?;
    let browser = matches!(form, AuthForm::Query(_));
    pending.auth = Some(form);
    let key = store
        .accepted_key(Vendor::Datadog, &presented)
        .ok_or_else(|| {
            reject(
                StatusCode::FORBIDDEN,
                "the key is not one of the intake's accepted keys",
            )
        })?;
    pending.key = Some(key);

    check_headers(headers)?;
    let browser_limits;
    let limits = if browser {
        check_browser_query(query.unwrap_or_default())?;
        browser_limits = limits.browser();
        &browser_limits
    } else {
        limits
    };

    let compressed = body::read(body, limits.max_body_bytes())
        .await
        .map_err(|e| match e {
            BodyError::TooLarge { limit } => reject(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!(
                    "the compressed body is over {limit} bytes, so it inflates past the \
                     {}-byte payload limit: send fewer entries per request",
                    limits.max_payload_bytes
                ),
            ),
            other => reject(StatusCode::BAD_REQUEST, other.to_string()),
        })?;
    pending.body_bytes = compressed.len();

    let decoded = body::gunzip(&compressed, limits.max_payload_bytes).map_err(|e| match e {
        BodyError::TooLarge { limit } => reject(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "the uncompressed payload is over {limit} bytes: send fewer entries per request"
            ),
        ),
        other => reject(StatusCode::BAD_REQUEST, other.to_string()),
    })?;
    pending.decoded_bytes = Some(decoded.len());

    parse_payload(&decoded, limits).map(Entries::Kept)
}

/// The credential and where it was: the header wins over the query.
fn credential(headers: &HeaderMap, query: Option<&str>) -> Option<(AuthForm, String)> {
    if let Some(value) = headers.get(API_KEY_HEADER) {
        let key = String::from_utf8_lossy(value.as_bytes()).into_owned();
        return Some((AuthForm::Header(API_KEY_HEADER), key));
    }
    let query = query?;
    url::form_urlencoded::parse(query.as_bytes())
        .find(|(name, _)| name == CLIENT_TOKEN_PARAM)
        .map(|(_, token)| (AuthForm::Query(CLIENT_TOKEN_PARAM), token.into_owned()))
}

/// The browser intake's query: every parameter of [`BROWSER_PARAMS`],
/// non-empty.
fn check_browser_query(query: &str) -> Result<(), Rejection> {
    let present: Vec<(String, String)> = url::form_urlencoded::parse(query.as_bytes())
        .into_owned()
        .collect();
    for name in BROWSER_PARAMS {
        if !present.iter().any(|(n, v)| n == name && !v.is_empty()) {
            return Err(reject(
                StatusCode::BAD_REQUEST,
                format!(
                    "the browser intake's query has no {name}: send the parameters Datadog's \
                     browser SDK sends ({})",
                    BROWSER_PARAMS.join(", ")
                ),
            ));
        }
    }
    Ok(())
}

fn check_headers(headers: &HeaderMap) -> Result<(), Rejection> {
    let value = |name| {
        headers
            .get(name)
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
    };
    let content_type = value(header::CONTENT_TYPE);
    let media_type = content_type
        .as_deref()
        .and_then(|v| v.split(';').next())
        .map(str::trim);
    if !media_type.is_some_and(|t| t.eq_ignore_ascii_case("application/json")) {
        return Err(reject(
            StatusCode::BAD_REQUEST,
            format!("Content-Type is {content_type:?}: send application/json"),
        ));
    }
    let encoding = value(header::CONTENT_ENCODING);
    if !encoding
        .as_deref()
        .is_some_and(|e| e.trim().eq_ignore_ascii_case("gzip"))
    {
        return Err(reject(
            StatusCode::BAD_REQUEST,
            format!(
                "Content-Encoding is {encoding:?}: send a gzip body with Content-Encoding: gzip"
            ),
        ));
    }
    Ok(())
}

/// Runs the payload's checks: JSON, an array, the entry count, then each
/// entry in order. Returns the entries with their `oversized` mark.
fn parse_payload(decoded: &[u8], limits: &DatadogLimits) -> Result<Vec<(Value, bool)>, Rejection> {
    let payload: Value = serde_json::from_slice(decoded).map_err(|e| {
        reject(
            StatusCode::BAD_REQUEST,
            format!("the payload is not JSON: {e}"),
        )
    })?;
    let Value::Array(entries) = payload else {
        return Err(reject(
            StatusCode::BAD_REQUEST,
            format!(
                "the payload is a JSON {}: send an array of log objects",
                json_kind(&payload)
            ),
        ));
    };
    if entries.len() > limits.max_entries {
        return Err(reject(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "{} entries in one request: send at most {}",
                entries.len(),
                limits.max_entries
            ),
        ));
    }
    for (index, entry) in entries.iter().enumerate() {
        check_entry(index, entry)?;
    }
    Ok(entries
        .into_iter()
        .map(|entry| {
            let oversized = json_len(&entry) > limits.max_entry_bytes;
            (entry, oversized)
        })
        .collect())
}

/// Checks one entry.
fn check_entry(index: usize, entry: &Value) -> Result<(), Rejection> {
    let bad = |what: String| reject(StatusCode::BAD_REQUEST, format!("entry {index}: {what}"));
    if !entry.is_object() {
        return Err(bad(format!(
            "is a JSON {}, expected an object",
            json_kind(entry)
        )));
    }
    match entry.get("message") {
        Some(Value::String(_)) => {}
        Some(other) => {
            return Err(bad(format!(
                "message is a JSON {}, expected a string",
                json_kind(other)
            )))
        }
        None => return Err(bad("has no message".to_string())),
    }
    let Some(timestamp) = entry.get("timestamp") else {
        return Ok(());
    };
    let ms = timestamp.as_i64().ok_or_else(|| {
        bad(format!(
            "timestamp is {timestamp}, expected integer milliseconds since the epoch"
        ))
    })?;
    if !(MIN_TIMESTAMP_MS..=MAX_TIMESTAMP_MS).contains(&ms) {
        return Err(bad(format!(
            "timestamp {ms} is not milliseconds between the years 2000 and 2100 \
             (seconds or nanoseconds?)"
        )));
    }
    Ok(())
}

/// When the shim read an accepted entry: its `timestamp` (integer
/// milliseconds), if it has one.
pub(crate) fn entry_time_ms(entry: &Value) -> Option<i64> {
    entry.get("timestamp").and_then(Value::as_i64)
}

/// Datadog's error body: `{"errors":["Forbidden"]}` for 403, otherwise the
/// v2 API's `{"errors":[{"status","title","detail"}]}`.
fn error_response(status: StatusCode, detail: &str) -> Response {
    let body = if status == StatusCode::FORBIDDEN {
        json!({ "errors": ["Forbidden"] })
    } else {
        json!({ "errors": [{
            "status": status.as_str(),
            "title": status.canonical_reason().unwrap_or("Error"),
            "detail": detail,
        }] })
    };
    (status, Json(body)).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> DatadogLimits {
        DatadogLimits::default()
    }

    fn parse(payload: &str) -> Result<Vec<(Value, bool)>, Rejection> {
        parse_payload(payload.as_bytes(), &limits())
    }

    fn status_of(payload: &str) -> StatusCode {
        parse(payload).unwrap_err().status
    }

    #[test]
    fn timestamps_must_be_integer_milliseconds() {
        assert_eq!(
            status_of(r#"[{"message":"a","timestamp":1714564800000.5}]"#),
            StatusCode::BAD_REQUEST
        );
        assert_eq!(
            status_of(r#"[{"message":"a","timestamp":"1714564800000"}]"#),
            StatusCode::BAD_REQUEST
        );
        let seconds = parse(r#"[{"message":"a","timestamp":1714564800}]"#).unwrap_err();
        assert!(
            seconds.reason.contains("seconds or nanoseconds"),
            "{}",
            seconds.reason
        );
        assert_eq!(
            status_of(r#"[{"message":"a","timestamp":1714564800000000000}]"#),
            StatusCode::BAD_REQUEST
        );
    }

    #[test]
    fn the_header_form_wins_over_the_query_form() {
        let mut headers = HeaderMap::new();
        assert_eq!(
            credential(&headers, Some("dd-api-key=pubabc&ddsource=x")),
            Some((AuthForm::Query(CLIENT_TOKEN_PARAM), "pubabc".to_string()))
        );
        headers.insert("dd-api-key", "apikey".parse().unwrap());
        assert_eq!(
            credential(&headers, Some("dd-api-key=pubabc")),
            Some((AuthForm::Header(API_KEY_HEADER), "apikey".to_string()))
        );
        assert_eq!(credential(&HeaderMap::new(), Some("other=1")), None);
    }

    #[test]
    fn debug_of_the_config_never_shows_keys() {
        let config = DatadogConfig {
            keys: vec!["very-secret".into()],
            limits: limits(),
        };
        assert!(!format!("{config:?}").contains("very-secret"));
    }
}
