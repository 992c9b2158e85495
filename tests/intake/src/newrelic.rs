//! The New Relic Log API intake: `POST /log/v1`.
//!
//! Plays `log-api.newrelic.com` and `log-api.eu.newrelic.com` on one path
//! (API: <https://docs.newrelic.com/docs/logs/log-api/introduction-log-api/>,
//! event limits: <https://docs.newrelic.com/docs/logs/log-api/log-event-data/>):
//!
//! * Auth: a license key in the `X-License-Key` header, or in `Api-Key`, or
//!   in an `X-License-Key` / `Api-Key` query parameter (New Relic's
//!   "headerless" form), checked in that order. The form used is recorded.
//!   Missing or unknown key → 403.
//! * Body: gzip (`Content-Encoding: gzip`, or a `gzip` content type) or
//!   plain; at most 1,000,000 bytes as sent (gzipped when gzipped) → 413
//!   otherwise. It must decode to UTF-8 JSON in either of New Relic's forms:
//!   the detailed form (an array of `{"common": {"attributes": {…}}, "logs":
//!   [...]}` blocks) or the simple form (an array of log objects, or one log
//!   object).
//! * Each log becomes one recorded entry, merged the way New Relic stores it:
//!   the block's common attributes, then the log's `attributes`, then the
//!   log's own top-level fields (`message`, `timestamp`, …), later ones
//!   winning; nested objects are flattened to dotted names
//!   (`{"a":{"b":1}}` → `"a.b": 1`). So tests can assert `hostname`,
//!   `service_name`, `source`, `stream`, `level` and `message` on each entry.
//! * Attribute values: an entry with a string value over 4,094 characters is
//!   marked `oversized` (New Relic moves it into unsearchable blob storage);
//!   a value over 128 KiB is recorded cut to 128 KiB, as New Relic stores it.
//! * Accepted → 202 with `{"requestId":"<uuid-like>"}`.
//!
//! Stricter than New Relic, to catch sink bugs early (each answers 400 and
//! names the problem; New Relic would accept and drop or misplace data):
//! `Content-Type` must be one New Relic documents (`application/json`,
//! `json`, `application/gzip`, `gzip`), an encoding other than gzip or
//! identity is refused, every log needs a string `message`, a `timestamp`
//! must be integer milliseconds between the years 2000 and 2100, and an
//! event may not have more than 255 attributes. The decompressed body is
//! bounded by [`NewRelicLimits::max_decoded_bytes`] (413 past it), a bound
//! of this intake, not a New Relic limit.
//!
//! This module must not keep state of its own: recording and faults live in
//! the shared store.

use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use axum::body::Body;
use axum::extract::{RawQuery, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Extension, Json, Router};
use serde_json::{json, Map, Value};

use crate::body::{self, BodyError};
use crate::handler::{self, json_kind, reject, Accepted, Entries, Rejection};
use crate::store::{AuthForm, Pending, Store};
use crate::Vendor;

/// The Log API path.
pub const PATH: &str = "/log/v1";
/// Header carrying a license key.
pub const LICENSE_KEY_HEADER: &str = "X-License-Key";
/// Header carrying a license or API key (the docs' other form).
pub const API_KEY_HEADER: &str = "Api-Key";

/// Content types New Relic documents for the Log API.
const CONTENT_TYPES: [&str; 4] = ["application/json", "json", "application/gzip", "gzip"];

/// Earliest plausible `timestamp` (2000-01-01T00:00:00Z) in milliseconds.
const MIN_TIMESTAMP_MS: i64 = 946_684_800_000;
/// Latest plausible `timestamp` (2100-01-01T00:00:00Z) in milliseconds.
const MAX_TIMESTAMP_MS: i64 = 4_102_444_800_000;

/// New Relic's Log API limits.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewRelicLimits {
    /// Bytes of one POST body as sent (gzipped when gzipped).
    pub max_body_bytes: usize,
    /// Bytes of a body after decompression. A bound of this intake (New
    /// Relic documents none) so a small gzip bomb cannot exhaust memory.
    pub max_decoded_bytes: usize,
    /// Attributes per event.
    pub max_attributes: usize,
    /// Characters of an attribute value that stay searchable.
    pub max_searchable_chars: usize,
    /// Bytes of an attribute value that are kept at all.
    pub max_value_bytes: usize,
    /// Entries stamped longer ago than this are accepted (202) and silently
    /// dropped, as New Relic may drop payloads older than 48 h
    /// (<https://docs.newrelic.com/docs/logs/log-api/introduction-log-api/>).
    /// `None`: no window.
    pub max_age: Option<std::time::Duration>,
}

impl Default for NewRelicLimits {
    fn default() -> Self {
        NewRelicLimits {
            max_body_bytes: 1_000_000,
            max_decoded_bytes: 50_000_000,
            max_attributes: 255,
            max_searchable_chars: 4_094,
            max_value_bytes: 128 * 1024,
            max_age: Some(std::time::Duration::from_secs(48 * 3600)),
        }
    }
}

/// Configuration of the New Relic intake: accepted keys and limits.
pub type NewRelicConfig = crate::VendorConfig<NewRelicLimits>;

/// The New Relic routes.
pub(crate) fn routes(limits: NewRelicLimits) -> Router<Store> {
    Router::new()
        .route(PATH, post(receive))
        .layer(Extension(limits))
}

async fn receive(
    State(store): State<Store>,
    Extension(limits): Extension<NewRelicLimits>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Body,
) -> Response {
    handler::respond(
        &store,
        Vendor::NewRelic,
        &headers,
        error_response,
        async |pending| {
            let entries = check(&store, &limits, query.as_deref(), &headers, body, pending)
                .await?
                .within(Vendor::NewRelic, limits.max_age);
            Ok(Accepted {
                status: StatusCode::ACCEPTED,
                entries,
                body: json!({ "requestId": request_id() }),
            })
        },
    )
    .await
}

/// Runs every check in order: credentials, headers, size, encoding, events.
async fn check(
    store: &Store,
    limits: &NewRelicLimits,
    query: Option<&str>,
    headers: &HeaderMap,
    body: Body,
    pending: &mut Pending,
) -> Result<Entries, Rejection> {
    let (form, presented) = credential(headers, query).ok_or_else(|| {
        reject(
            StatusCode::FORBIDDEN,
            format!(
                "no key: send a license key in the {LICENSE_KEY_HEADER} or {API_KEY_HEADER} \
                 header, or in an {LICENSE_KEY_HEADER} or {API_KEY_HEADER} query parameter"
            ),
        )
    })?;
    pending.auth = Some(form);
    let key = store
        .accepted_key(Vendor::NewRelic, &presented)
        .ok_or_else(|| {
            reject(
                StatusCode::FORBIDDEN,
                "the key is not one of the intake's accepted keys",
            )
        })?;
    pending.key = Some(key);

    let gzipped = check_headers(headers)?;

    let sent = body::read(body, limits.max_body_bytes)
        .await
        .map_err(|e| match e {
            BodyError::TooLarge { limit } => reject(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!(
                    "the body is over {limit} bytes as sent (gzipped when gzipped): \
                     send fewer logs per request"
                ),
            ),
            other => reject(StatusCode::BAD_REQUEST, other.to_string()),
        })?;
    pending.body_bytes = sent.len();

    let decoded = if gzipped {
        let decoded = body::gunzip(&sent, limits.max_decoded_bytes).map_err(|e| match e {
            BodyError::TooLarge { limit } => reject(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("the body inflates past this intake's bound of {limit} bytes"),
            ),
            other => reject(StatusCode::BAD_REQUEST, other.to_string()),
        })?;
        pending.decoded_bytes = Some(decoded.len());
        decoded
    } else {
        sent.to_vec()
    };

    parse_payload(&decoded, limits).map(Entries::Kept)
}

/// The credential and where it was, in New Relic's order of preference.
fn credential(headers: &HeaderMap, query: Option<&str>) -> Option<(AuthForm, String)> {
    for name in [LICENSE_KEY_HEADER, API_KEY_HEADER] {
        if let Some(value) = headers.get(name) {
            let key = String::from_utf8_lossy(value.as_bytes()).into_owned();
            return Some((AuthForm::Header(name), key));
        }
    }
    let pairs: Vec<(String, String)> = url::form_urlencoded::parse(query?.as_bytes())
        .into_owned()
        .collect();
    for name in [LICENSE_KEY_HEADER, API_KEY_HEADER] {
        if let Some((_, key)) = pairs.iter().find(|(n, _)| n == name) {
            return Some((AuthForm::Query(name), key.clone()));
        }
    }
    None
}

/// Checks `Content-Type` and `Content-Encoding`; returns whether the body is
/// gzipped.
fn check_headers(headers: &HeaderMap) -> Result<bool, Rejection> {
    let value = |name| {
        headers
            .get(name)
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
    };
    let content_type = value(header::CONTENT_TYPE);
    let media_type = content_type
        .as_deref()
        .and_then(|v| v.split(';').next())
        .map(|t| t.trim().to_ascii_lowercase());
    let Some(media_type) = media_type.filter(|t| CONTENT_TYPES.contains(&t.as_str())) else {
        return Err(reject(
            StatusCode::BAD_REQUEST,
            format!(
                "Content-Type is {content_type:?}: send one of {}",
                CONTENT_TYPES.join(", ")
            ),
        ));
    };
    let encoding = value(header::CONTENT_ENCODING);
    let gzipped = match encoding.as_deref().map(|e| e.trim().to_ascii_lowercase()) {
        Some(e) if e == "gzip" => true,
        None => media_type.ends_with("gzip"),
        Some(e) if e == "identity" => media_type.ends_with("gzip"),
        Some(_) => {
            return Err(reject(
                StatusCode::BAD_REQUEST,
                format!("Content-Encoding is {encoding:?}: send gzip, or no encoding"),
            ))
        }
    };
    Ok(gzipped)
}

/// Checks the decoded payload and returns one merged entry per log with its
/// `oversized` mark.
fn parse_payload(decoded: &[u8], limits: &NewRelicLimits) -> Result<Vec<(Value, bool)>, Rejection> {
    let text = std::str::from_utf8(decoded).map_err(|e| {
        reject(
            StatusCode::BAD_REQUEST,
            format!("the payload is not UTF-8 ({e}): New Relic requires UTF-8"),
        )
    })?;
    let payload: Value = serde_json::from_str(text).map_err(|e| {
        reject(
            StatusCode::BAD_REQUEST,
            format!("the payload is not JSON: {e}"),
        )
    })?;
    let mut events = Vec::new();
    match payload {
        Value::Array(items) => {
            for (index, item) in items.into_iter().enumerate() {
                match item {
                    Value::Object(object) => read_item(index, object, &mut events)?,
                    other => {
                        return Err(reject(
                            StatusCode::BAD_REQUEST,
                            format!(
                                "item {index} is a JSON {}: send objects (logs, or \
                                 {{common, logs}} blocks)",
                                json_kind(&other)
                            ),
                        ))
                    }
                }
            }
        }
        Value::Object(object) => read_item(0, object, &mut events)?,
        other => {
            return Err(reject(
                StatusCode::BAD_REQUEST,
                format!(
                    "the payload is a JSON {}: send an array of blocks or logs, or one log object",
                    json_kind(&other)
                ),
            ))
        }
    }
    events
        .into_iter()
        .enumerate()
        .map(|(index, event)| finish_event(index, event, limits))
        .collect()
}

/// Reads one top-level item: a `{common, logs}` block, or a simple-form log.
fn read_item(
    index: usize,
    mut object: Map<String, Value>,
    events: &mut Vec<Map<String, Value>>,
) -> Result<(), Rejection> {
    let bad = |what: String| reject(StatusCode::BAD_REQUEST, format!("item {index}: {what}"));
    let Some(logs) = object.remove("logs") else {
        events.push(merge(None, object).map_err(bad)?);
        return Ok(());
    };
    let Value::Array(logs) = logs else {
        return Err(bad(format!(
            "logs is a JSON {}, expected an array",
            json_kind(&logs)
        )));
    };
    let common = match object.remove("common") {
        None => None,
        Some(Value::Object(mut common)) => match common.remove("attributes") {
            None => None,
            Some(Value::Object(attributes)) => Some(attributes),
            Some(other) => {
                return Err(bad(format!(
                    "common.attributes is a JSON {}, expected an object",
                    json_kind(&other)
                )))
            }
        },
        Some(other) => {
            return Err(bad(format!(
                "common is a JSON {}, expected an object",
                json_kind(&other)
            )))
        }
    };
    for (at, log) in logs.into_iter().enumerate() {
        let Value::Object(log) = log else {
            return Err(bad(format!(
                "logs[{at}] is a JSON {}, expected an object",
                json_kind(&log)
            )));
        };
        events
            .push(merge(common.as_ref(), log).map_err(|what| bad(format!("logs[{at}]: {what}")))?);
    }
    Ok(())
}

/// Merges common attributes, the log's `attributes` and its top-level
/// fields, flattened, later ones winning.
fn merge(
    common: Option<&Map<String, Value>>,
    mut log: Map<String, Value>,
) -> Result<Map<String, Value>, String> {
    let mut event = Map::new();
    if let Some(common) = common {
        for (name, value) in common {
            flatten_into(&mut event, name.clone(), value.clone());
        }
    }
    match log.remove("attributes") {
        None => {}
        Some(Value::Object(attributes)) => {
            for (name, value) in attributes {
                flatten_into(&mut event, name, value);
            }
        }
        Some(other) => {
            return Err(format!(
                "attributes is a JSON {}, expected an object",
                json_kind(&other)
            ))
        }
    }
    for (name, value) in log {
        flatten_into(&mut event, name, value);
    }
    Ok(event)
}

/// Inserts `value` under `name`, nested objects as `name.inner`.
fn flatten_into(event: &mut Map<String, Value>, name: String, value: Value) {
    match value {
        Value::Object(inner) => {
            for (key, value) in inner {
                flatten_into(event, format!("{name}.{key}"), value);
            }
        }
        value => {
            event.insert(name, value);
        }
    }
}

/// Checks a merged event and stores it as New Relic would: over-long
/// values cut, `oversized` when a value is past the searchable length.
fn finish_event(
    index: usize,
    mut event: Map<String, Value>,
    limits: &NewRelicLimits,
) -> Result<(Value, bool), Rejection> {
    let bad = |what: String| reject(StatusCode::BAD_REQUEST, format!("log {index}: {what}"));
    match event.get("message") {
        Some(Value::String(_)) => {}
        Some(other) => {
            return Err(bad(format!(
                "message is a JSON {}, expected a string",
                json_kind(other)
            )))
        }
        None => return Err(bad("has no message".to_string())),
    }
    if let Some(timestamp) = event.get("timestamp") {
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
    }
    if event.len() > limits.max_attributes {
        return Err(bad(format!(
            "{} attributes: New Relic keeps at most {}",
            event.len(),
            limits.max_attributes
        )));
    }
    let mut oversized = false;
    for value in event.values_mut() {
        if let Value::String(text) = value {
            oversized |= text.chars().count() > limits.max_searchable_chars;
            cut_to(text, limits.max_value_bytes);
        }
    }
    Ok((Value::Object(event), oversized))
}

/// Cuts `text` to at most `max` bytes at a character boundary.
fn cut_to(text: &mut String, max: usize) {
    if text.len() > max {
        let mut end = max;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
    }
}

/// A request id shaped like a version-4 UUID, unique per answer. Not meant
/// to be parsed.
fn request_id() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let state = RandomState::new();
    let high = state.hash_one((n, nanos));
    let low = state.hash_one((high, n));
    format!(
        "{:08x}-{:04x}-4{:03x}-{:04x}-{:012x}",
        high >> 32,
        (high >> 16) & 0xffff,
        high & 0x0fff,
        0x8000 | ((low >> 48) & 0x3fff),
        low & 0xffff_ffff_ffff
    )
}

/// When the shim read an accepted entry: its `timestamp` (integer
/// milliseconds; the recorded entry is the log merged with its common
/// attributes), if it has one.
pub(crate) fn entry_time_ms(entry: &Value) -> Option<i64> {
    entry.get("timestamp").and_then(Value::as_i64)
}

/// The intake's error body: `{"error": "<reason>"}`. Reasons never carry a
/// key.
fn error_response(status: StatusCode, reason: &str) -> Response {
    (status, Json(json!({ "error": reason }))).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(payload: &str) -> Result<Vec<(Value, bool)>, Rejection> {
        parse_payload(payload.as_bytes(), &NewRelicLimits::default())
    }

    fn status_of(payload: &str) -> StatusCode {
        parse(payload).unwrap_err().status
    }

    #[test]
    fn nested_attributes_are_flattened_with_dots() {
        let entries =
            parse(r#"[{"message":"m","attributes":{"logdrain":{"part":1,"more":true}}}]"#).unwrap();
        assert_eq!(
            entries[0].0,
            json!({"message":"m","logdrain.part":1,"logdrain.more":true})
        );
    }

    #[test]
    fn the_simple_form_is_an_array_of_logs_or_one_log() {
        assert_eq!(
            parse(r#"[{"message":"a"},{"message":"b"}]"#).unwrap().len(),
            2
        );
        assert_eq!(parse(r#"{"message":"one"}"#).unwrap().len(), 1);
        let mixed = parse(r#"[{"message":"a"},{"logs":[{"message":"b"}]}]"#).unwrap();
        assert_eq!(mixed.len(), 2);
    }

    #[test]
    fn malformed_payloads_are_bad_requests_naming_the_item() {
        assert_eq!(status_of("not json"), StatusCode::BAD_REQUEST);
        assert_eq!(status_of(r#""text""#), StatusCode::BAD_REQUEST);
        assert_eq!(status_of(r#"[1]"#), StatusCode::BAD_REQUEST);
        assert_eq!(status_of(r#"[{"logs":{}}]"#), StatusCode::BAD_REQUEST);
        assert_eq!(
            status_of(r#"[{"common":[],"logs":[]}]"#),
            StatusCode::BAD_REQUEST
        );
        let err = parse(r#"[{"logs":[{"message":"a"},"b"]}]"#).unwrap_err();
        assert!(err.reason.contains("item 0: logs[1]"), "{}", err.reason);
        let err = parse(r#"[{"message":"a"},{"msg":"b"}]"#).unwrap_err();
        assert!(
            err.reason.contains("log 1: has no message"),
            "{}",
            err.reason
        );
    }

    #[test]
    fn invalid_utf8_is_a_bad_request() {
        let err =
            parse_payload(b"[{\"message\":\"caf\xe9\"}]", &NewRelicLimits::default()).unwrap_err();
        assert_eq!(err.status, StatusCode::BAD_REQUEST);
        assert!(err.reason.contains("UTF-8"), "{}", err.reason);
    }

    #[test]
    fn timestamps_must_be_integer_milliseconds() {
        assert_eq!(
            status_of(r#"[{"message":"a","timestamp":1714564800}]"#),
            StatusCode::BAD_REQUEST
        );
        assert_eq!(
            status_of(r#"[{"message":"a","timestamp":"1714564800000"}]"#),
            StatusCode::BAD_REQUEST
        );
        assert!(parse(r#"[{"message":"a","timestamp":1714564800000}]"#).is_ok());
    }

    #[test]
    fn more_than_255_attributes_are_refused() {
        let attributes = |n: usize| {
            let map: Map<String, Value> = (0..n).map(|i| (format!("a{i}"), json!(i))).collect();
            json!([{ "message": "m", "attributes": map }]).to_string()
        };
        assert!(parse(&attributes(254)).is_ok(), "254 + message = 255");
        let err = parse(&attributes(255)).unwrap_err();
        assert_eq!(err.status, StatusCode::BAD_REQUEST);
        assert!(err.reason.contains("256 attributes"), "{}", err.reason);
    }

    #[test]
    fn credentials_are_found_in_headers_then_query_in_new_relics_order() {
        let mut headers = HeaderMap::new();
        assert_eq!(
            credential(&headers, Some("Api-Key=q1&X-License-Key=q2")),
            Some((AuthForm::Query(LICENSE_KEY_HEADER), "q2".to_string()))
        );
        assert_eq!(
            credential(&headers, Some("Api-Key=q1")),
            Some((AuthForm::Query(API_KEY_HEADER), "q1".to_string()))
        );
        headers.insert("api-key", "h1".parse().unwrap());
        assert_eq!(
            credential(&headers, Some("X-License-Key=q2")),
            Some((AuthForm::Header(API_KEY_HEADER), "h1".to_string()))
        );
        headers.insert("x-license-key", "h2".parse().unwrap());
        assert_eq!(
            credential(&headers, None),
            Some((AuthForm::Header(LICENSE_KEY_HEADER), "h2".to_string()))
        );
        assert_eq!(credential(&HeaderMap::new(), Some("other=1")), None);
    }

    #[test]
    fn gzip_is_chosen_by_encoding_or_content_type() {
        let headers = |pairs: &[(&'static str, &'static str)]| {
            let mut h = HeaderMap::new();
            for (name, value) in pairs {
                h.insert(*name, value.parse().unwrap());
            }
            h
        };
        let ok = |pairs| check_headers(&headers(pairs)).map_err(|r| r.status);
        assert_eq!(
            ok(&[
                ("content-type", "application/json"),
                ("content-encoding", "gzip")
            ]),
            Ok(true)
        );
        assert_eq!(ok(&[("content-type", "application/json")]), Ok(false));
        assert_eq!(ok(&[("content-type", "application/gzip")]), Ok(true));
        assert_eq!(
            ok(&[("content-type", "application/json; charset=utf-8")]),
            Ok(false)
        );
        assert_eq!(
            ok(&[("content-type", "text/plain")]),
            Err(StatusCode::BAD_REQUEST)
        );
        assert_eq!(
            ok(&[
                ("content-type", "application/json"),
                ("content-encoding", "br")
            ]),
            Err(StatusCode::BAD_REQUEST)
        );
    }

    #[test]
    fn request_ids_look_like_uuids_and_differ() {
        let a = request_id();
        let b = request_id();
        assert_ne!(a, b);
        let groups: Vec<usize> = a.split('-').map(str::len).collect();
        assert_eq!(groups, [8, 4, 4, 4, 12], "{a}");
        assert!(a.chars().all(|c| c == '-' || c.is_ascii_hexdigit()), "{a}");
        assert_eq!(&a[14..15], "4");
    }
}
