//! The Sentry envelope intake: `POST /api/{project_id}/envelope/`.
//!
//! Plays Sentry's ingestion (Relay) for the Logs product (envelopes:
//! <https://develop.sentry.dev/sdk/envelopes/>, logs:
//! <https://develop.sentry.dev/sdk/telemetry/logs/>):
//!
//! * Auth, as Relay checks it: the public key in the `X-Sentry-Auth` header
//!   (`Sentry sentry_key=<key>, sentry_version=7, ...`) or in the
//!   `sentry_key` query parameter. No credential, an unreadable header, or
//!   both forms at once → 401; a key that is not 32 characters → 400 (`bad
//!   sentry DSN public key`); a well-formed key that is not one of the
//!   configured keys → 403 (`event submission rejected with_reason:
//!   ProjectId`). Every error body is Relay's `{"detail":"..."}`. The
//!   project id must be digits (Relay's route), any project is accepted.
//! * Body: gzip (`Content-Encoding: gzip`) or uncompressed. A body over
//!   [`SentryLimits::max_envelope_bytes`] (compressed or not) → 413, and so
//!   is a `log` item whose payload is over
//!   [`SentryLimits::max_log_container_bytes`] (Relay's default log
//!   container limit, 12 MiB: the whole envelope is refused).
//! * Clock drift, as Relay corrects it (relay
//!   `relay-event-normalization/src/eap/time.rs` with
//!   `MINIMUM_CLOCK_DRIFT` of 55 minutes): when the envelope header's
//!   `sent_at` is 55 minutes or more away from the time the envelope
//!   arrives, every log's timestamp is shifted by the difference. The
//!   arrival time is this machine's clock plus
//!   [`SentryLimits::clock_ahead`], so a test can play an envelope that
//!   arrives long after it was stamped.
//! * Envelope framing ([`parse_envelope`]): a JSON object header line, then
//!   per item a JSON object header line with a string `type` and the
//!   payload: exactly `length` bytes when the header has `length`, else up
//!   to the next newline. Broken framing → 400.
//! * `log` items: `content_type` `application/vnd.sentry.items.log+json`,
//!   `item_count` equal to the number of logs, payload `{"items":[...]}`;
//!   each log has a number `timestamp`, a 32-hex `trace_id`, a `level` of
//!   trace/debug/info/warn/error/fatal, a string `body`, and `attributes`
//!   of the form `{name: {"value": v, "type": t}}` with `t` one of string,
//!   boolean, integer, double, array and `v` of that type. A log over
//!   [`SentryLimits::max_log_item_bytes`] → 400, as Relay answers an
//!   oversized item (`envelope exceeded size limits for type 'log'`).
//!   Items of other types are framed and ignored.
//! * Accepted → 200 with `{"id":"<32 hex>"}` when the envelope header has an
//!   `event_id`, else `{}` (Relay's answer to an envelope of logs). Every
//!   log of every `log` item is recorded as one entry.
//!
//! Stricter than Sentry, to catch sink bugs early (each answers 400 and
//! names the problem): Relay accepts the request and drops an invalid log
//! later (visible only in its stats); here a malformed log, an `item_count`
//! that does not match, or a `timestamp` that is not seconds between the
//! years 2000 and 2100 rejects the request. `Content-Type` must be
//! `application/x-sentry-envelope` and `Content-Encoding` gzip or absent
//! (Relay also takes no type and other encodings; our sinks never send
//! those).
//!
//! This module must not keep state of its own: recording and faults live in
//! the shared store.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::body::Body;
use axum::extract::{Path, RawQuery, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Extension, Json, Router};
use serde_json::{json, Map, Value};

use crate::body::{self, BodyError};
use crate::handler::{self, json_kind, reject, Accepted, Entries, Rejection};
use crate::store::{AuthForm, Pending, Store};
use crate::Vendor;

/// Header carrying the public key.
pub const AUTH_HEADER: &str = "X-Sentry-Auth";
/// Query parameter carrying the public key.
pub const KEY_PARAM: &str = "sentry_key";
/// Content type of an envelope request.
pub const ENVELOPE_CONTENT_TYPE: &str = "application/x-sentry-envelope";
/// Content type of a `log` item.
pub const LOG_CONTENT_TYPE: &str = "application/vnd.sentry.items.log+json";
/// The levels a log may have.
pub const LEVELS: [&str; 6] = ["trace", "debug", "info", "warn", "error", "fatal"];
/// The types an attribute may have.
pub const ATTRIBUTE_TYPES: [&str; 5] = ["string", "boolean", "integer", "double", "array"];

/// Length of a Sentry public key.
const PUBLIC_KEY_LEN: usize = 32;
/// Earliest plausible `timestamp` (2000-01-01T00:00:00Z) in seconds.
const MIN_TIMESTAMP_S: f64 = 946_684_800.0;
/// Latest plausible `timestamp` (2100-01-01T00:00:00Z) in seconds.
const MAX_TIMESTAMP_S: f64 = 4_102_444_800.0;
/// Relay shifts timestamps only for a drift of at least this many ms.
const MINIMUM_CLOCK_DRIFT_MS: i64 = 55 * 60 * 1000;

/// The envelope path of a project.
pub fn envelope_path(project_id: u64) -> String {
    format!("/api/{project_id}/envelope/")
}

/// A DSN pointing at an intake at `base_url` (`http://host:port`), as a
/// test gives it to a sink: `http://<public_key>@host:port/<project_id>`.
pub fn dsn(base_url: &str, public_key: &str, project_id: u64) -> String {
    let host = base_url
        .strip_prefix("http://")
        .or_else(|| base_url.strip_prefix("https://"))
        .unwrap_or(base_url)
        .trim_end_matches('/');
    let scheme = if base_url.starts_with("https://") {
        "https"
    } else {
        "http"
    };
    format!("{scheme}://{public_key}@{host}/{project_id}")
}

/// Sentry's size limits.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SentryLimits {
    /// Bytes of one envelope, compressed or decompressed (Sentry: 200 MiB).
    pub max_envelope_bytes: usize,
    /// Bytes of one log's JSON (Sentry: 1 MiB).
    pub max_log_item_bytes: usize,
    /// Bytes of one `log` item's payload (Relay's default: 12 MiB).
    pub max_log_container_bytes: usize,
    /// How far the intake's clock is ahead of the sender's: an envelope
    /// arrives this long after its `sent_at` was stamped.
    pub clock_ahead: Duration,
}

impl Default for SentryLimits {
    fn default() -> Self {
        SentryLimits {
            max_envelope_bytes: 200 * 1024 * 1024,
            max_log_item_bytes: 1024 * 1024,
            max_log_container_bytes: 12 * 1024 * 1024,
            clock_ahead: Duration::ZERO,
        }
    }
}

/// Configuration of the Sentry intake: accepted keys and limits.
pub type SentryConfig = crate::VendorConfig<SentryLimits>;

/// The Sentry routes (with and without the trailing slash, as Relay).
pub(crate) fn routes(limits: SentryLimits) -> Router<Store> {
    Router::new()
        .route("/api/{project_id}/envelope/", post(receive))
        .route("/api/{project_id}/envelope", post(receive))
        .layer(Extension(limits))
}

/// A parsed envelope.
#[derive(Clone, Debug, PartialEq)]
pub struct Envelope {
    /// The envelope header (first line).
    pub header: Map<String, Value>,
    /// Every item's `type`, in order.
    pub item_types: Vec<String>,
    /// The logs of every `log` item, in order.
    pub logs: Vec<Value>,
}

/// Why an envelope is refused. Sentry answers 400 to each.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum EnvelopeError {
    /// The newline-separated framing is broken.
    #[error("invalid envelope: {0}")]
    Framing(String),
    /// A `log` item's header or payload is not what Sentry expects.
    #[error("log item {item}: {problem}")]
    LogItem { item: usize, problem: String },
    /// One log is malformed.
    #[error("log item {item}, log {index}: {problem}")]
    Log {
        item: usize,
        index: usize,
        problem: String,
    },
    /// A `log` item's payload is over the log container limit (413).
    #[error(
        "envelope exceeded size limits for type 'log': item {item} is {bytes} bytes, over the \
         log container limit of {limit}; send fewer or smaller logs per envelope"
    )]
    Container {
        item: usize,
        bytes: usize,
        limit: usize,
    },
    /// One log is over the per-log limit.
    #[error(
        "envelope exceeded size limits for type 'log': log {index} of item {item} is {bytes} \
         bytes, over {limit}; cut long lines before sending"
    )]
    Overflow {
        item: usize,
        index: usize,
        bytes: usize,
        limit: usize,
    },
}

async fn receive(
    State(store): State<Store>,
    Extension(limits): Extension<SentryLimits>,
    Path(project_id): Path<String>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Body,
) -> Response {
    handler::respond(
        &store,
        Vendor::Sentry,
        &headers,
        error_response,
        async |pending| {
            let envelope = check(
                &store,
                &limits,
                &project_id,
                query.as_deref(),
                &headers,
                body,
                pending,
            )
            .await?;
            let answer = match envelope.header.get("event_id").and_then(Value::as_str) {
                Some(id) => json!({ "id": id.replace('-', "").to_ascii_lowercase() }),
                None => json!({}),
            };
            let entries =
                Entries::Kept(envelope.logs.into_iter().map(|log| (log, false)).collect());
            Ok(Accepted {
                status: StatusCode::OK,
                entries,
                body: answer,
            })
        },
    )
    .await
}

/// Runs every check in Relay's order: credentials, project, headers, body,
/// envelope.
async fn check(
    store: &Store,
    limits: &SentryLimits,
    project_id: &str,
    query: Option<&str>,
    headers: &HeaderMap,
    body: Body,
    pending: &mut Pending,
) -> Result<Envelope, Rejection> {
    let (form, presented) = credential(headers, query)?;
    pending.auth = Some(form);
    if presented.len() != PUBLIC_KEY_LEN || !presented.is_ascii() {
        return Err(reject(
            StatusCode::BAD_REQUEST,
            "bad sentry DSN public key: a public key is 32 characters",
        ));
    }
    let key = store
        .accepted_key(Vendor::Sentry, &presented)
        .ok_or_else(|| {
            reject(
                StatusCode::FORBIDDEN,
                "event submission rejected with_reason: ProjectId \
                 (the key is not one of the intake's accepted keys)",
            )
        })?;
    pending.key = Some(key);

    if project_id.is_empty() || !project_id.bytes().all(|b| b.is_ascii_digit()) {
        return Err(reject(
            StatusCode::NOT_FOUND,
            format!(
                "project id {project_id:?} is not a number: the path is /api/<digits>/envelope/"
            ),
        ));
    }

    let gzip = check_headers(headers)?;

    let too_large = |limit: usize| {
        reject(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("the envelope is over {limit} bytes: send fewer logs per envelope"),
        )
    };
    let read_limit = if gzip {
        // Deflate never grows data by anything near 10%, so a larger body
        // must decompress past the envelope limit.
        limits
            .max_envelope_bytes
            .saturating_add(limits.max_envelope_bytes / 10)
            .saturating_add(1024)
    } else {
        limits.max_envelope_bytes
    };
    let received = body::read(body, read_limit).await.map_err(|e| match e {
        BodyError::TooLarge { .. } => too_large(limits.max_envelope_bytes),
        other => reject(StatusCode::BAD_REQUEST, other.to_string()),
    })?;
    pending.body_bytes = received.len();
    if received.is_empty() {
        return Err(reject(StatusCode::BAD_REQUEST, "empty request body"));
    }
    let decoded = if gzip {
        body::gunzip(&received, limits.max_envelope_bytes).map_err(|e| match e {
            BodyError::TooLarge { limit } => too_large(limit),
            other => reject(StatusCode::BAD_REQUEST, other.to_string()),
        })?
    } else {
        received.to_vec()
    };
    pending.decoded_bytes = Some(decoded.len());

    let mut checked = parse_envelope(&decoded, limits).map_err(|e| {
        let status = match e {
            EnvelopeError::Container { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            _ => StatusCode::BAD_REQUEST,
        };
        reject(status, e.to_string())
    })?;
    correct_clock_drift(&mut checked, limits.clock_ahead);
    Ok(checked)
}

/// Relay's clock-drift correction (see the module docs): shifts every log
/// by the time between `sent_at` and the arrival, when that is 55 minutes
/// or more either way.
fn correct_clock_drift(checked: &mut Envelope, clock_ahead: Duration) {
    let Some(sent_ms) = checked
        .header
        .get("sent_at")
        .and_then(Value::as_str)
        .and_then(rfc3339_ms)
    else {
        return;
    };
    let now_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .saturating_add(clock_ahead)
        .as_millis();
    let drift = i64::try_from(now_ms)
        .unwrap_or(i64::MAX)
        .saturating_sub(sent_ms);
    if drift.saturating_abs() < MINIMUM_CLOCK_DRIFT_MS {
        return;
    }
    for log in &mut checked.logs {
        if let Some(seconds) = log.get("timestamp").and_then(Value::as_f64) {
            log["timestamp"] = json!(seconds + drift as f64 / 1e3);
        }
    }
}

/// Milliseconds since the epoch of an RFC 3339 time,
/// `YYYY-MM-DDTHH:MM:SS[.fraction](Z|±HH:MM)`; `None` for anything else.
fn rfc3339_ms(text: &str) -> Option<i64> {
    let b = text.as_bytes();
    let num = |at: usize, len: usize| -> Option<i64> {
        let digits = b.get(at..at + len)?;
        digits
            .iter()
            .all(u8::is_ascii_digit)
            .then(|| digits.iter().fold(0, |n, d| n * 10 + i64::from(d - b'0')))
    };
    let sep = |at: usize, any: &[u8]| b.get(at).is_some_and(|c| any.contains(c));
    if !(sep(4, b"-") && sep(7, b"-") && sep(10, b"Tt") && sep(13, b":") && sep(16, b":")) {
        return None;
    }
    let (year, month, day) = (num(0, 4)?, num(5, 2)?, num(8, 2)?);
    let (hour, minute, second) = (num(11, 2)?, num(14, 2)?, num(17, 2)?);
    let (mut at, mut ms) = (19, 0);
    if sep(at, b".") {
        let digits = b[at + 1..]
            .iter()
            .take_while(|d| d.is_ascii_digit())
            .count();
        if digits == 0 {
            return None;
        }
        ms = (0..3).fold(0, |n, k| {
            n * 10
                + if k < digits {
                    i64::from(b[at + 1 + k] - b'0')
                } else {
                    0
                }
        });
        at += 1 + digits;
    }
    let offset_s = match b.get(at)? {
        b'Z' | b'z' if at + 1 == b.len() => 0,
        sign @ (b'+' | b'-') if sep(at + 3, b":") && at + 6 == b.len() => {
            let offset = num(at + 1, 2)? * 3600 + num(at + 4, 2)? * 60;
            if *sign == b'-' {
                -offset
            } else {
                offset
            }
        }
        _ => return None,
    };
    // Days from the civil date (H. Hinnant's algorithm).
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * ((month + 9) % 12) + 2) / 5 + day - 1;
    let days = era * 146_097 + yoe * 365 + yoe / 4 - yoe / 100 + doy - 719_468;
    Some((days * 86_400 + hour * 3600 + minute * 60 + second - offset_s) * 1000 + ms)
}

/// The public key and where it was. Exactly one form must be present.
fn credential(headers: &HeaderMap, query: Option<&str>) -> Result<(AuthForm, String), Rejection> {
    let unauthorized = |reason: &str| reject(StatusCode::UNAUTHORIZED, reason);
    let from_header = match headers.get(AUTH_HEADER) {
        Some(value) => {
            let text = std::str::from_utf8(value.as_bytes())
                .map_err(|_| unauthorized("bad x-sentry-auth header: not UTF-8"))?;
            let key = auth_header_key(text).ok_or_else(|| {
                unauthorized(
                    "bad x-sentry-auth header: expected \
                     `Sentry sentry_key=<public key>, sentry_version=7, sentry_client=<name>/<version>`",
                )
            })?;
            Some(key)
        }
        None => None,
    };
    let from_query = query.and_then(|q| {
        url::form_urlencoded::parse(q.as_bytes())
            .find(|(name, _)| name == KEY_PARAM)
            .map(|(_, key)| key.into_owned())
    });
    match (from_header, from_query) {
        (Some(_), Some(_)) => Err(unauthorized(
            "multiple authorization payloads detected: send the key in the header or the query, \
             not both",
        )),
        (Some(key), None) => Ok((AuthForm::Header(AUTH_HEADER), key)),
        (None, Some(key)) => Ok((AuthForm::Query(KEY_PARAM), key)),
        (None, None) => Err(unauthorized(
            "missing authorization information: send the public key in the X-Sentry-Auth header",
        )),
    }
}

/// The `sentry_key` of an `X-Sentry-Auth` value (`Sentry k=v, k=v, ...`;
/// the `sentry_` prefix of each name is optional, as in Relay).
fn auth_header_key(value: &str) -> Option<String> {
    let value = value.trim();
    let (scheme, params) = value.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("sentry") {
        return None;
    }
    params.split(',').find_map(|pair| {
        let (name, value) = pair.trim().split_once('=')?;
        let name = name.trim();
        let name = name.strip_prefix("sentry_").unwrap_or(name);
        (name == "key" && !value.trim().is_empty()).then(|| value.trim().to_string())
    })
}

/// Checks `Content-Type` and `Content-Encoding`; returns whether the body
/// is gzipped.
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
        .map(str::trim);
    if !media_type.is_some_and(|t| t.eq_ignore_ascii_case(ENVELOPE_CONTENT_TYPE)) {
        return Err(reject(
            StatusCode::BAD_REQUEST,
            format!("Content-Type is {content_type:?}: send {ENVELOPE_CONTENT_TYPE}"),
        ));
    }
    match value(header::CONTENT_ENCODING).as_deref().map(str::trim) {
        None | Some("") => Ok(false),
        Some(e) if e.eq_ignore_ascii_case("identity") => Ok(false),
        Some(e) if e.eq_ignore_ascii_case("gzip") => Ok(true),
        Some(other) => Err(reject(
            StatusCode::BAD_REQUEST,
            format!("Content-Encoding {other:?} is not supported here: send gzip or no encoding"),
        )),
    }
}

/// Splits off the next line (without its `\n`); the rest starts after it.
fn take_line<'a>(rest: &mut &'a [u8]) -> &'a [u8] {
    match rest.iter().position(|&b| b == b'\n') {
        Some(at) => {
            let line = &rest[..at];
            *rest = &rest[at + 1..];
            line
        }
        None => std::mem::take(rest),
    }
}

fn json_object(
    line: &[u8],
    what: impl Fn() -> String,
) -> Result<Map<String, Value>, EnvelopeError> {
    match serde_json::from_slice::<Value>(line) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(other) => Err(EnvelopeError::Framing(format!(
            "{} is a JSON {}, expected an object",
            what(),
            json_kind(&other)
        ))),
        Err(e) => Err(EnvelopeError::Framing(format!(
            "{} is not JSON: {e}",
            what()
        ))),
    }
}

/// Parses and checks a decompressed envelope (see the module docs): the
/// header line, then each item's header line and payload, in order, so an
/// error names the first bad item.
pub fn parse_envelope(bytes: &[u8], limits: &SentryLimits) -> Result<Envelope, EnvelopeError> {
    let framing = |problem: String| Err(EnvelopeError::Framing(problem));
    let mut rest = bytes;
    let header = json_object(take_line(&mut rest), || {
        "the envelope header (first line)".to_string()
    })?;
    check_envelope_header(&header)?;
    let mut item_types = Vec::new();
    let mut logs = Vec::new();
    for item in 0.. {
        let line = take_line(&mut rest);
        if line.is_empty() {
            if rest.is_empty() {
                break; // the end, or a trailing newline
            }
            return framing(format!(
                "an empty line where the header of item {item} was expected"
            ));
        }
        let item_header = json_object(line, || format!("the header of item {item}"))?;
        let Some(kind) = item_header.get("type").and_then(Value::as_str) else {
            return framing(format!("the header of item {item} has no string \"type\""));
        };
        let payload = match item_header.get("length") {
            None => take_line(&mut rest),
            Some(length) => {
                let Some(length) = length.as_u64().and_then(|n| usize::try_from(n).ok()) else {
                    return framing(format!("item {item}: length {length} is not a byte count"));
                };
                if length > rest.len() {
                    return framing(format!(
                        "item {item} declares length {length} but only {} bytes follow",
                        rest.len()
                    ));
                }
                let (payload, after) = rest.split_at(length);
                rest = match after.split_first() {
                    None => after,
                    Some((b'\n', after)) => after,
                    Some(_) => {
                        return framing(format!(
                            "item {item}: its {length}-byte payload is not followed by a newline"
                        ))
                    }
                };
                payload
            }
        };
        if kind == "log" {
            if payload.len() > limits.max_log_container_bytes {
                return Err(EnvelopeError::Container {
                    item,
                    bytes: payload.len(),
                    limit: limits.max_log_container_bytes,
                });
            }
            logs.extend(check_log_item(item, &item_header, payload, limits)?);
        }
        item_types.push(kind.to_string());
    }
    Ok(Envelope {
        header,
        item_types,
        logs,
    })
}

fn check_envelope_header(header: &Map<String, Value>) -> Result<(), EnvelopeError> {
    if let Some(sent_at) = header.get("sent_at") {
        if sent_at.as_str().and_then(rfc3339_ms).is_none() {
            return Err(EnvelopeError::Framing(format!(
                "the envelope header's sent_at {sent_at} is not an RFC 3339 time \
                 such as \"2024-05-01T12:00:00.123456Z\""
            )));
        }
    }
    if let Some(event_id) = header.get("event_id") {
        let hex = event_id.as_str().map(|id| id.replace('-', ""));
        if !hex.is_some_and(|h| is_hex(&h, 32)) {
            return Err(EnvelopeError::Framing(format!(
                "the envelope header's event_id {event_id} is not a UUID"
            )));
        }
    }
    Ok(())
}

/// Checks one `log` item and returns its logs.
fn check_log_item(
    item: usize,
    header: &Map<String, Value>,
    payload: &[u8],
    limits: &SentryLimits,
) -> Result<Vec<Value>, EnvelopeError> {
    let bad = |problem: String| EnvelopeError::LogItem { item, problem };
    match header.get("content_type") {
        Some(Value::String(t)) if t == LOG_CONTENT_TYPE => {}
        other => {
            return Err(bad(format!(
                "content_type is {}, expected {LOG_CONTENT_TYPE:?}",
                other.map_or_else(|| "missing".to_string(), Value::to_string)
            )))
        }
    }
    let item_count = header
        .get("item_count")
        .and_then(Value::as_u64)
        .ok_or_else(|| bad("item_count is missing or not a count of logs".to_string()))?;
    let mut payload: Value = serde_json::from_slice(payload)
        .map_err(|e| bad(format!("the payload is not JSON: {e}")))?;
    let Some(Value::Array(logs)) = payload.get_mut("items").map(Value::take) else {
        return Err(bad(
            "the payload has no \"items\" array: send {\"items\":[...]}".to_string(),
        ));
    };
    if item_count != logs.len() as u64 {
        return Err(bad(format!(
            "item_count is {item_count} but the payload holds {} logs",
            logs.len()
        )));
    }
    for (index, log) in logs.iter().enumerate() {
        check_log(log).map_err(|problem| EnvelopeError::Log {
            item,
            index,
            problem,
        })?;
        let bytes = serde_json::to_string(log).map_or(0, |text| text.len());
        if bytes > limits.max_log_item_bytes {
            return Err(EnvelopeError::Overflow {
                item,
                index,
                bytes,
                limit: limits.max_log_item_bytes,
            });
        }
    }
    Ok(logs)
}

/// Checks one log; the problem names the field.
fn check_log(log: &Value) -> Result<(), String> {
    let Value::Object(fields) = log else {
        return Err(format!("is a JSON {}, expected an object", json_kind(log)));
    };
    let timestamp = fields
        .get("timestamp")
        .ok_or("has no timestamp")?
        .as_f64()
        .ok_or("timestamp is not a number of seconds")?;
    if !(MIN_TIMESTAMP_S..=MAX_TIMESTAMP_S).contains(&timestamp) {
        return Err(format!(
            "timestamp {timestamp} is not seconds between the years 2000 and 2100 \
             (milliseconds or nanoseconds?)"
        ));
    }
    match fields.get("trace_id") {
        Some(Value::String(id)) if is_hex(id, 32) => {}
        Some(other) => return Err(format!("trace_id {other} is not 32 hexadecimal characters")),
        None => return Err("has no trace_id (required)".to_string()),
    }
    if let Some(span_id) = fields.get("span_id") {
        if !span_id.as_str().is_some_and(|id| is_hex(id, 16)) {
            return Err(format!(
                "span_id {span_id} is not 16 hexadecimal characters"
            ));
        }
    }
    match fields.get("level") {
        Some(Value::String(level)) if LEVELS.contains(&level.as_str()) => {}
        Some(other) => return Err(format!("level {other} is not one of {}", LEVELS.join(", "))),
        None => return Err("has no level".to_string()),
    }
    match fields.get("body") {
        Some(Value::String(_)) => {}
        Some(other) => {
            return Err(format!(
                "body is a JSON {}, expected a string",
                json_kind(other)
            ))
        }
        None => return Err("has no body".to_string()),
    }
    if let Some(attributes) = fields.get("attributes") {
        let Value::Object(attributes) = attributes else {
            return Err("attributes is not an object".to_string());
        };
        for (name, attribute) in attributes {
            check_attribute(attribute)
                .map_err(|problem| format!("attribute {name:?}: {problem}"))?;
        }
    }
    Ok(())
}

/// Checks `{"value": v, "type": t}`.
fn check_attribute(attribute: &Value) -> Result<(), String> {
    let kind = attribute
        .get("type")
        .and_then(Value::as_str)
        .ok_or_else(|| {
            format!("{attribute} is not of the form {{\"value\": v, \"type\": \"string\"}}")
        })?;
    let value = attribute
        .get("value")
        .ok_or_else(|| format!("{attribute} has no value"))?;
    let fits = match kind {
        "string" => value.is_string(),
        "boolean" => value.is_boolean(),
        "integer" => value.is_i64() || value.is_u64(),
        "double" => value.is_number(),
        "array" => value.is_array(),
        other => {
            return Err(format!(
                "type {other:?} is not one of {}",
                ATTRIBUTE_TYPES.join(", ")
            ))
        }
    };
    if fits {
        Ok(())
    } else {
        Err(format!("value {value} is not of type {kind}"))
    }
}

/// Whether `text` is `len` hex digits.
fn is_hex(text: &str, len: usize) -> bool {
    text.len() == len && text.bytes().all(|b| b.is_ascii_hexdigit())
}

/// When the shim read an accepted log: its `timestamp` (float seconds),
/// rounded down to milliseconds.
pub(crate) fn entry_time_ms(entry: &Value) -> Option<i64> {
    entry
        .get("timestamp")
        .and_then(Value::as_f64)
        .and_then(seconds_to_ms)
}

/// Seconds since the epoch, rounded down to milliseconds.
fn seconds_to_ms(seconds: f64) -> Option<i64> {
    seconds
        .is_finite()
        .then(|| (seconds * 1_000.0).floor() as i64)
}

/// Relay's error body: `{"detail": "..."}`.
fn error_response(status: StatusCode, detail: &str) -> Response {
    (status, Json(json!({ "detail": detail }))).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> SentryLimits {
        SentryLimits::default()
    }

    fn log(trace_id: &str) -> Value {
        json!({
            "timestamp": 1_714_564_800.25,
            "trace_id": trace_id,
            "level": "info",
            "body": "hello",
            "attributes": {"stream": {"value": "stdout", "type": "string"}},
        })
    }

    fn envelope(item_header: &str, payload: &str) -> Vec<u8> {
        format!("{{}}\n{item_header}\n{payload}\n").into_bytes()
    }

    fn log_envelope(logs: &[Value]) -> Vec<u8> {
        envelope(
            &json!({"type": "log", "item_count": logs.len(), "content_type": LOG_CONTENT_TYPE})
                .to_string(),
            &json!({ "items": logs }).to_string(),
        )
    }

    const TRACE: &str = "0123456789abcdef0123456789abcdef";

    #[test]
    fn a_log_item_without_length_is_read_up_to_the_newline() {
        let parsed = parse_envelope(&log_envelope(&[log(TRACE), log(TRACE)]), &limits()).unwrap();
        assert_eq!(parsed.logs.len(), 2);
        assert_eq!(parsed.item_types, ["log"]);
    }

    #[test]
    fn a_declared_length_is_honoured_even_across_newlines() {
        let payload = format!("{{\"items\":\n[{}]}}", log(TRACE));
        let header = json!({"type": "log", "item_count": 1, "content_type": LOG_CONTENT_TYPE,
            "length": payload.len()});
        let bytes = format!("{{}}\n{header}\n{payload}").into_bytes(); // no final newline
        let parsed = parse_envelope(&bytes, &limits()).unwrap();
        assert_eq!(parsed.logs.len(), 1);
    }

    #[test]
    fn items_of_other_types_are_framed_and_ignored() {
        let mut bytes = b"{}\n{\"type\":\"client_report\"}\n{\"discarded_events\":[]}\n".to_vec();
        bytes.extend_from_slice(&log_envelope(&[log(TRACE)])[3..]);
        let parsed = parse_envelope(&bytes, &limits()).unwrap();
        assert_eq!(parsed.item_types, ["client_report", "log"]);
        assert_eq!(parsed.logs.len(), 1);
    }

    #[test]
    fn attribute_values_must_match_their_type() {
        let mut bad = log(TRACE);
        bad["attributes"]["n"] = json!({"value": "7", "type": "integer"});
        let err = parse_envelope(&log_envelope(&[bad]), &limits()).unwrap_err();
        assert!(err.to_string().contains("attribute \"n\""), "{err}");
        let mut plain = log(TRACE);
        plain["attributes"]["n"] = json!(7);
        assert!(parse_envelope(&log_envelope(&[plain]), &limits()).is_err());
        let mut ok = log(TRACE);
        ok["attributes"]["n"] = json!({"value": 7, "type": "integer"});
        ok["attributes"]["d"] = json!({"value": 0.5, "type": "double"});
        ok["attributes"]["b"] = json!({"value": true, "type": "boolean"});
        ok["attributes"]["a"] = json!({"value": [1, 2], "type": "array"});
        assert!(parse_envelope(&log_envelope(&[ok]), &limits()).is_ok());
    }

    #[test]
    fn milliseconds_are_not_seconds() {
        let mut ms = log(TRACE);
        ms["timestamp"] = json!(1_714_564_800_000_i64);
        let err = parse_envelope(&log_envelope(&[ms]), &limits()).unwrap_err();
        assert!(err.to_string().contains("milliseconds"), "{err}");
    }

    #[test]
    fn rfc3339_times_are_read_as_epoch_milliseconds() {
        assert_eq!(
            rfc3339_ms("2024-05-01T12:00:00.123456Z"),
            Some(1_714_564_800_123)
        );
        assert_eq!(rfc3339_ms("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(
            rfc3339_ms("2024-05-01T14:00:00.5+02:00"),
            Some(1_714_564_800_500)
        );
        assert_eq!(rfc3339_ms("2024-02-29T00:00:00Z"), Some(1_709_164_800_000));
        assert_eq!(rfc3339_ms("yesterday"), None);
    }

    #[test]
    fn sent_at_must_be_rfc3339() {
        for good in [
            "2024-05-01T12:00:00Z",
            "2024-05-01T12:00:00.123456Z",
            "2024-05-01T12:00:00+02:00",
        ] {
            assert!(rfc3339_ms(good).is_some(), "{good}");
        }
        for bad in [
            "2024-05-01",
            "2024-05-01 12:00:00Z",
            "1714564800",
            "2024-05-01T12:00:00.Z",
        ] {
            assert!(rfc3339_ms(bad).is_none(), "{bad}");
        }
        let bytes = b"{\"sent_at\":\"yesterday\"}\n";
        assert!(parse_envelope(bytes, &limits()).is_err());
    }

    #[test]
    fn the_auth_header_key_is_found_with_or_without_the_prefix() {
        assert_eq!(
            auth_header_key("Sentry sentry_version=7, sentry_client=x/1, sentry_key=abc"),
            Some("abc".to_string())
        );
        assert_eq!(
            auth_header_key("sentry key=abc,version=7"),
            Some("abc".to_string())
        );
        assert_eq!(auth_header_key("Bearer sentry_key=abc"), None);
        assert_eq!(auth_header_key("Sentry sentry_version=7"), None);
        assert_eq!(auth_header_key("Sentry"), None);
    }

    #[test]
    fn a_dsn_points_at_the_intake() {
        assert_eq!(
            dsn("http://127.0.0.1:9000", "k", 42),
            "http://k@127.0.0.1:9000/42"
        );
        assert_eq!(envelope_path(42), "/api/42/envelope/");
    }
}
