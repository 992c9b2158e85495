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
//! The payload is read into a tree that borrows from the body (`json`), and
//! each log is merged into borrowed values; entries become
//! `serde_json::Value`s only when the store keeps entries, otherwise only
//! each log's time and `oversized` mark are handed on, and a payload of the
//! detailed form that plainly passes is read without building anything
//! (`scan`).
//!
//! This module must not keep state of its own: recording and faults live in
//! the shared store.

use std::borrow::Cow;
use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use std::fmt;

use axum::body::Body;
use axum::extract::{RawQuery, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Extension, Json, Router};
use serde::de::{DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{json, Map, Value};

use crate::body::{self, BodyError};
use crate::handler::{self, reject, Accepted, Entries, Rejection};
use crate::json::Tree;
use crate::scan;
use crate::store::{AuthForm, Line, Pending, Store};
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

    if store.keeps_entries() {
        parse_payload(&decoded, limits).map(Entries::Kept)
    } else {
        count_payload(&decoded, limits).map(Entries::Counted)
    }
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
    check_payload(decoded, limits, |event, line| {
        (event_value(event, limits), line.oversized)
    })
}

/// Checks the decoded payload like [`parse_payload`], and returns only
/// what the counters need of each merged entry.
fn count_payload(decoded: &[u8], limits: &NewRelicLimits) -> Result<Vec<Line>, Rejection> {
    let mut plain = Plain {
        limits,
        lines: Vec::new(),
        common: Vec::new(),
        attributes: Vec::new(),
        top: Vec::new(),
        event: Vec::new(),
    };
    match scan::read(decoded, PlainItems(&mut plain)) {
        Some(()) => Ok(plain.lines),
        None => check_payload(decoded, limits, |_, line| line),
    }
}

/// The fast path of [`count_payload`] (see `scan`), for the detailed form as
/// our sink writes it: an array of `{common, logs}` blocks whose common
/// attributes come before their logs, and logs and attributes without nested
/// objects, repeated or escaped names, or more than [`PLAIN_FIELDS`] fields
/// to an object. A log passes when its merged fields have a string
/// `message`, at most `max_attributes` names and, if any, a `timestamp` of
/// integer milliseconds of the years 2000 to 2100. Gives up on anything
/// else.
struct Plain<'l, 'de> {
    limits: &'l NewRelicLimits,
    lines: Vec<Line>,
    /// The current block's common attributes.
    common: Vec<PlainField<'de>>,
    /// The current log's `attributes`.
    attributes: Vec<PlainField<'de>>,
    /// The current log's top-level fields.
    top: Vec<PlainField<'de>>,
    /// The current log, merged.
    event: Vec<PlainField<'de>>,
}

/// Most fields of one object the fast path merges (by comparing names,
/// pair by pair); larger objects are left to the full checks.
const PLAIN_FIELDS: usize = 32;

/// A field of a plain log: its name and what the checks need of its value.
#[derive(Clone, Copy)]
struct PlainField<'de> {
    name: &'de str,
    value: PlainValue,
}

/// What the checks need of a plain field's value.
#[derive(Clone, Copy, PartialEq)]
enum PlainValue {
    /// A string, and whether it is past the searchable length.
    String { long: bool },
    /// An integer that fits `i64`.
    Integer(i64),
    /// Anything else but an object.
    Other,
}

impl<'de> Plain<'_, 'de> {
    /// Merges the current log (common attributes, then its `attributes`,
    /// then its top-level fields, later ones winning), checks it, and keeps
    /// its line.
    fn finish_log(&mut self) -> bool {
        self.event.clear();
        self.event.extend_from_slice(&self.common);
        for field in self.attributes.iter().chain(&self.top) {
            match self.event.iter_mut().find(|f| f.name == field.name) {
                Some(earlier) => earlier.value = field.value,
                None => self.event.push(*field),
            }
        }
        let get = |name| self.event.iter().find(|f| f.name == name).map(|f| f.value);
        if !matches!(get("message"), Some(PlainValue::String { .. })) {
            return false;
        }
        let time_ms = match get("timestamp") {
            None => None,
            Some(PlainValue::Integer(ms))
                if (MIN_TIMESTAMP_MS..=MAX_TIMESTAMP_MS).contains(&ms) =>
            {
                Some(ms)
            }
            Some(_) => return false,
        };
        if self.event.len() > self.limits.max_attributes {
            return false;
        }
        let oversized = self
            .event
            .iter()
            .any(|f| f.value == PlainValue::String { long: true });
        self.lines.push(Line { time_ms, oversized });
        true
    }
}

/// Reads the top-level array of a [`Plain`] payload.
struct PlainItems<'p, 'l, 'de>(&'p mut Plain<'l, 'de>);

impl<'de> DeserializeSeed<'de> for PlainItems<'_, '_, 'de> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for PlainItems<'_, '_, 'de> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an array of blocks")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while seq.next_element_seed(PlainBlock(&mut *self.0))?.is_some() {}
        Ok(())
    }
}

/// Reads one `{common, logs}` block of a [`Plain`] payload.
struct PlainBlock<'p, 'l, 'de>(&'p mut Plain<'l, 'de>);

impl<'de> DeserializeSeed<'de> for PlainBlock<'_, '_, 'de> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for PlainBlock<'_, '_, 'de> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a block")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let plain = self.0;
        plain.common.clear();
        let (mut common, mut logs) = (false, false);
        while let Some((field, _)) = map.next_key_seed(scan::Key(&["common", "logs"]))? {
            match field {
                // Common attributes after the logs would change them.
                Some(0) if !common && !logs => {
                    common = true;
                    map.next_value_seed(PlainCommon {
                        fields: &mut plain.common,
                        max_chars: plain.limits.max_searchable_chars,
                    })?;
                }
                Some(1) if !logs => {
                    logs = true;
                    map.next_value_seed(PlainLogs(&mut *plain))?;
                }
                Some(_) => return Err(scan::give_up()),
                None => {
                    map.next_value_seed(scan::Any)?;
                }
            }
        }
        // Without `logs`, the item is a log of the simple form.
        if logs {
            Ok(())
        } else {
            Err(scan::give_up())
        }
    }
}

/// Reads a block's `common` into its flat fields.
struct PlainCommon<'p, 'de> {
    fields: &'p mut Vec<PlainField<'de>>,
    max_chars: usize,
}

impl<'de> DeserializeSeed<'de> for PlainCommon<'_, 'de> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for PlainCommon<'_, 'de> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a block's common")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let mut attributes = false;
        while let Some((field, _)) = map.next_key_seed(scan::Key(&["attributes"]))? {
            match field {
                Some(_) if !attributes => {
                    attributes = true;
                    map.next_value_seed(PlainFields {
                        fields: &mut *self.fields,
                        attributes: None,
                        max_chars: self.max_chars,
                    })?;
                }
                Some(_) => return Err(scan::give_up()),
                None => {
                    map.next_value_seed(scan::Any)?;
                }
            }
        }
        Ok(())
    }
}

/// Reads a block's `logs`, keeping each log's line.
struct PlainLogs<'p, 'l, 'de>(&'p mut Plain<'l, 'de>);

impl<'de> DeserializeSeed<'de> for PlainLogs<'_, '_, 'de> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for PlainLogs<'_, '_, 'de> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an array of logs")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let plain = self.0;
        while let Some(()) = seq.next_element_seed(PlainLog(&mut *plain))? {
            if !plain.finish_log() {
                return Err(scan::give_up());
            }
        }
        Ok(())
    }
}

/// Reads one log of [`PlainLogs`] into its `attributes` and top-level
/// fields.
struct PlainLog<'p, 'l, 'de>(&'p mut Plain<'l, 'de>);

impl<'de> DeserializeSeed<'de> for PlainLog<'_, '_, 'de> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for PlainLog<'_, '_, 'de> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a log")
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<(), A::Error> {
        let plain = self.0;
        plain.attributes.clear();
        plain.top.clear();
        let fields = PlainFields {
            fields: &mut plain.top,
            attributes: Some(&mut plain.attributes),
            max_chars: plain.limits.max_searchable_chars,
        };
        fields.visit_map(map)
    }
}

/// Reads a flat object into fields, giving up on nested objects and on
/// repeated or escaped names.
struct PlainFields<'p, 'de> {
    fields: &'p mut Vec<PlainField<'de>>,
    /// For a log's top level: where its `attributes` go.
    attributes: Option<&'p mut Vec<PlainField<'de>>>,
    /// The searchable length of a string value.
    max_chars: usize,
}

impl<'de> DeserializeSeed<'de> for PlainFields<'_, 'de> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for PlainFields<'_, 'de> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an object of attributes")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let PlainFields {
            fields,
            mut attributes,
            max_chars,
        } = self;
        let mut attributes_read = false;
        while let Some(name) = map.next_key_seed(scan::Name)? {
            if name == "attributes" {
                if let Some(into) = attributes.as_deref_mut() {
                    if std::mem::replace(&mut attributes_read, true) {
                        return Err(scan::give_up()); // a repeated field
                    }
                    map.next_value_seed(PlainFields {
                        fields: into,
                        attributes: None,
                        max_chars,
                    })?;
                    continue;
                }
            }
            if fields.len() == PLAIN_FIELDS || fields.iter().any(|f| f.name == name) {
                return Err(scan::give_up()); // many fields, or a repeated one
            }
            let value = map.next_value_seed(PlainScalar(max_chars))?;
            fields.push(PlainField { name, value });
        }
        Ok(())
    }
}

/// A field's value that is not an object (else give up); the number is the
/// searchable length of a string.
struct PlainScalar(usize);

impl<'de> DeserializeSeed<'de> for PlainScalar {
    type Value = PlainValue;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<PlainValue, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for PlainScalar {
    type Value = PlainValue;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a value that is not an object")
    }

    fn visit_str<E>(self, value: &str) -> Result<PlainValue, E> {
        let max = self.0;
        // No more characters than bytes: count only long values.
        let long = value.len() > max && value.chars().count() > max;
        Ok(PlainValue::String { long })
    }

    fn visit_i64<E>(self, value: i64) -> Result<PlainValue, E> {
        Ok(PlainValue::Integer(value))
    }

    fn visit_u64<E>(self, value: u64) -> Result<PlainValue, E> {
        Ok(i64::try_from(value).map_or(PlainValue::Other, PlainValue::Integer))
    }

    fn visit_f64<E>(self, _: f64) -> Result<PlainValue, E> {
        Ok(PlainValue::Other)
    }

    fn visit_bool<E>(self, _: bool) -> Result<PlainValue, E> {
        Ok(PlainValue::Other)
    }

    fn visit_unit<E>(self) -> Result<PlainValue, E> {
        Ok(PlainValue::Other)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<PlainValue, A::Error> {
        while seq.next_element_seed(scan::Any)?.is_some() {}
        Ok(PlainValue::Other)
    }
}

/// Runs every check of the payload and returns `accept(event, line)` for
/// each merged log. The payload's shape is checked to its end before any
/// log's content: the first problem of shape wins over the first problem of
/// a log.
fn check_payload<T>(
    decoded: &[u8],
    limits: &NewRelicLimits,
    mut accept: impl FnMut(&Event<'_, '_>, Line) -> T,
) -> Result<Vec<T>, Rejection> {
    let text = std::str::from_utf8(decoded).map_err(|e| {
        reject(
            StatusCode::BAD_REQUEST,
            format!("the payload is not UTF-8 ({e}): New Relic requires UTF-8"),
        )
    })?;
    let payload = Tree::parse_str(text).map_err(|e| {
        reject(
            StatusCode::BAD_REQUEST,
            format!("the payload is not JSON: {e}"),
        )
    })?;
    let mut accepted = Vec::new();
    let mut problem = None;
    let mut index = 0;
    for_each_event(&payload, |event| {
        if problem.is_none() {
            match check_event(index, event, limits) {
                Ok(line) => accepted.push(accept(event, line)),
                Err(rejection) => problem = Some(rejection),
            }
        }
        index += 1;
    })?;
    match problem {
        Some(rejection) => Err(rejection),
        None => Ok(accepted),
    }
}

/// Members of an object in the payload's tree.
type Members<'a> = [(Cow<'a, str>, Tree<'a>)];

/// Merges every log of the payload (either form) and hands it to `each`, in
/// order; fails at the first item or log of the wrong shape.
fn for_each_event<'t, 'a>(
    payload: &'t Tree<'a>,
    mut each: impl FnMut(&Event<'t, 'a>),
) -> Result<(), Rejection> {
    // One event, filled again for every log.
    let mut event = Event::default();
    match payload {
        Tree::Array(items) => {
            for (index, item) in items.iter().enumerate() {
                match item {
                    Tree::Object(members) => read_item(index, members, &mut event, &mut each)?,
                    other => {
                        return Err(reject(
                            StatusCode::BAD_REQUEST,
                            format!(
                                "item {index} is a JSON {}: send objects (logs, or \
                                 {{common, logs}} blocks)",
                                other.kind()
                            ),
                        ))
                    }
                }
            }
        }
        Tree::Object(members) => read_item(0, members, &mut event, &mut each)?,
        other => {
            return Err(reject(
                StatusCode::BAD_REQUEST,
                format!(
                    "the payload is a JSON {}: send an array of blocks or logs, or one log object",
                    other.kind()
                ),
            ))
        }
    }
    Ok(())
}

/// The member `name` of an object.
fn member<'t, 'a>(members: &'t Members<'a>, name: &str) -> Option<&'t Tree<'a>> {
    members.iter().find(|(n, _)| n == name).map(|(_, v)| v)
}

/// Reads one top-level item, a `{common, logs}` block or a simple-form log,
/// and hands each of its logs, merged, to `each`.
fn read_item<'t, 'a>(
    index: usize,
    object: &'t Members<'a>,
    event: &mut Event<'t, 'a>,
    each: &mut impl FnMut(&Event<'t, 'a>),
) -> Result<(), Rejection> {
    let bad = |what: String| reject(StatusCode::BAD_REQUEST, format!("item {index}: {what}"));
    let Some(logs) = member(object, "logs") else {
        event.merge(&Event::default(), object).map_err(bad)?;
        each(event);
        return Ok(());
    };
    let Tree::Array(logs) = logs else {
        return Err(bad(format!(
            "logs is a JSON {}, expected an array",
            logs.kind()
        )));
    };
    let common = match member(object, "common") {
        None => None,
        Some(Tree::Object(common)) => match member(common, "attributes") {
            None => None,
            Some(Tree::Object(attributes)) => Some(attributes),
            Some(other) => {
                return Err(bad(format!(
                    "common.attributes is a JSON {}, expected an object",
                    other.kind()
                )))
            }
        },
        Some(other) => {
            return Err(bad(format!(
                "common is a JSON {}, expected an object",
                other.kind()
            )))
        }
    };
    // Flattened once for the block, then copied into each of its logs.
    let mut common_flat = Event::default();
    if let Some(attributes) = common {
        common_flat.flatten(None, attributes, None);
        common_flat.finish();
    }
    for (at, log) in logs.iter().enumerate() {
        let Tree::Object(log) = log else {
            return Err(bad(format!(
                "logs[{at}] is a JSON {}, expected an object",
                log.kind()
            )));
        };
        event
            .merge(&common_flat, log)
            .map_err(|what| bad(format!("logs[{at}]: {what}")))?;
        each(event);
    }
    Ok(())
}

/// One log merged as New Relic stores it: flattened names, each once, with
/// the value written last. Values borrow from the payload's tree.
#[derive(Default)]
struct Event<'t, 'a> {
    fields: Vec<(Cow<'t, str>, &'t Tree<'a>)>,
    /// Names were written without looking for earlier ones (many fields):
    /// [`finish`](Event::finish) keeps the last of each.
    repeats: bool,
}

impl<'t, 'a> Event<'t, 'a> {
    /// Up to this many fields, a write replaces an equal name's value in
    /// place; past it, repeated names are resolved once at the end.
    const SCAN: usize = 32;

    /// Fills the event with the (flattened) common attributes, the log's
    /// `attributes` and its top-level fields, flattened, later ones winning.
    fn merge(&mut self, common: &Event<'t, 'a>, log: &'t Members<'a>) -> Result<(), String> {
        self.fields.clear();
        self.fields.extend_from_slice(&common.fields);
        self.repeats = false;
        match member(log, "attributes") {
            None => {}
            Some(Tree::Object(attributes)) => self.flatten(None, attributes, None),
            Some(other) => {
                return Err(format!(
                    "attributes is a JSON {}, expected an object",
                    other.kind()
                ))
            }
        }
        self.flatten(None, log, Some("attributes"));
        self.finish();
        Ok(())
    }

    /// Writes `value` under `name`, as inserting it into a map would.
    fn write(&mut self, name: Cow<'t, str>, value: &'t Tree<'a>) {
        if !self.repeats && self.fields.len() < Self::SCAN {
            if let Some(field) = self.fields.iter_mut().find(|(n, _)| *n == name) {
                field.1 = value;
                return;
            }
        } else {
            self.repeats = true;
        }
        self.fields.push((name, value));
    }

    /// Writes the members of an object (but `skip`), nested objects as
    /// `name.inner`, in the order a map holding them yields them (by name,
    /// depth first), so that of two members flattened to one name the same
    /// one is written last.
    fn flatten(&mut self, prefix: Option<&str>, members: &'t Members<'a>, skip: Option<&str>) {
        let name = |key: &'t str| match prefix {
            None => Cow::Borrowed(key),
            Some(prefix) => Cow::Owned(format!("{prefix}.{key}")),
        };
        let kept = members.iter().filter(|(key, _)| Some(key.as_ref()) != skip);
        if !members
            .iter()
            .any(|(_, value)| matches!(value, Tree::Object(_)))
        {
            // Flat: no two members share a name, so their order cannot matter.
            for (key, value) in kept {
                self.write(name(key), value);
            }
            return;
        }
        let mut sorted: Vec<_> = kept.collect();
        sorted.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        for (key, value) in sorted {
            match value {
                Tree::Object(inner) => self.flatten(Some(&name(key)), inner, None),
                value => self.write(name(key), value),
            }
        }
    }

    /// Keeps the last value of each name written more than once.
    fn finish(&mut self) {
        if !self.repeats {
            return;
        }
        // Stable: the writes of one name stay in order, the last one last.
        self.fields.sort_by(|a, b| a.0.cmp(&b.0));
        self.fields.dedup_by(|later, kept| {
            let same = later.0 == kept.0;
            if same {
                kept.1 = later.1;
            }
            same
        });
        self.repeats = false;
    }

    fn get(&self, name: &str) -> Option<&'t Tree<'a>> {
        self.fields.iter().find(|(n, _)| n == name).map(|(_, v)| *v)
    }
}

/// Checks a merged event; returns its time and whether a value is past the
/// searchable length (New Relic then moves it to blob storage).
fn check_event(
    index: usize,
    event: &Event<'_, '_>,
    limits: &NewRelicLimits,
) -> Result<Line, Rejection> {
    let bad = |what: String| reject(StatusCode::BAD_REQUEST, format!("log {index}: {what}"));
    match event.get("message") {
        Some(Tree::String(_)) => {}
        Some(other) => {
            return Err(bad(format!(
                "message is a JSON {}, expected a string",
                other.kind()
            )))
        }
        None => return Err(bad("has no message".to_string())),
    }
    let mut time_ms = None;
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
        time_ms = Some(ms);
    }
    let fields = &event.fields;
    if fields.len() > limits.max_attributes {
        return Err(bad(format!(
            "{} attributes: New Relic keeps at most {}",
            fields.len(),
            limits.max_attributes
        )));
    }
    let max = limits.max_searchable_chars;
    let oversized = fields.iter().any(|(_, value)| match value {
        // No more characters than bytes: count only long values.
        Tree::String(text) => text.len() > max && text.chars().count() > max,
        _ => false,
    });
    Ok(Line { time_ms, oversized })
}

/// A checked event as New Relic stores it: over-long values cut.
fn event_value(event: &Event<'_, '_>, limits: &NewRelicLimits) -> Value {
    let fields = event.fields.iter().map(|(name, value)| {
        let mut value = value.to_value();
        if let Value::String(text) = &mut value {
            cut_to(text, limits.max_value_bytes);
        }
        (name.to_string(), value)
    });
    Value::Object(fields.collect::<Map<String, Value>>())
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
    use crate::timing;

    fn parse(payload: &str) -> Result<Vec<(Value, bool)>, Rejection> {
        parse_payload(payload.as_bytes(), &NewRelicLimits::default())
    }

    fn status_of(payload: &str) -> StatusCode {
        parse(payload).unwrap_err().status
    }

    #[test]
    fn detailed_blocks_merge_common_log_attributes_and_top_level_fields() {
        let entries = parse(
            r#"[{"common":{"attributes":{"hostname":"h","stream":"stdout","level":"info"}},
                 "logs":[{"timestamp":1714564800000,"message":"a","attributes":{"level":"warn"}},
                         {"message":"b","hostname":"top"}]}]"#,
        )
        .unwrap();
        let values: Vec<Value> = entries.into_iter().map(|(v, _)| v).collect();
        assert_eq!(
            values,
            [
                json!({"hostname":"h","stream":"stdout","level":"warn",
                       "timestamp":1714564800000i64,"message":"a"}),
                json!({"hostname":"top","stream":"stdout","level":"info","message":"b"}),
            ]
        );
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
    fn long_values_are_marked_unsearchable_and_cut_at_128_kib() {
        let searchable = "é".repeat(4_094);
        let entries = parse(&json!([{ "message": searchable }]).to_string()).unwrap();
        assert!(!entries[0].1, "4,094 characters stay searchable");

        let unsearchable = "x".repeat(4_095);
        assert!(parse(&json!([{ "message": unsearchable }]).to_string()).unwrap()[0].1);

        let huge = "é".repeat(100_000); // 200,000 bytes
        let entries = parse(&json!([{ "message": huge }]).to_string()).unwrap();
        let kept = entries[0].0["message"].as_str().unwrap();
        assert!(entries[0].1);
        assert_eq!(kept.len(), 128 * 1024);
        assert!(kept.chars().all(|c| c == 'é'));
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

    /// The checks as they were made on `serde_json::Value`s, before logs
    /// were read into a borrowed tree: what the intake must still answer,
    /// to the byte.
    mod reference {
        use super::super::*;

        /// Checks the decoded payload and returns one merged entry per log with its
        /// `oversized` mark.
        pub(super) fn parse_payload(
            decoded: &[u8],
            limits: &NewRelicLimits,
        ) -> Result<Vec<(Value, bool)>, Rejection> {
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
                                        kind(&other)
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
                            kind(&other)
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
            let bad =
                |what: String| reject(StatusCode::BAD_REQUEST, format!("item {index}: {what}"));
            let Some(logs) = object.remove("logs") else {
                events.push(merge(None, object).map_err(bad)?);
                return Ok(());
            };
            let Value::Array(logs) = logs else {
                return Err(bad(format!(
                    "logs is a JSON {}, expected an array",
                    kind(&logs)
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
                            kind(&other)
                        )))
                    }
                },
                Some(other) => {
                    return Err(bad(format!(
                        "common is a JSON {}, expected an object",
                        kind(&other)
                    )))
                }
            };
            for (at, log) in logs.into_iter().enumerate() {
                let Value::Object(log) = log else {
                    return Err(bad(format!(
                        "logs[{at}] is a JSON {}, expected an object",
                        kind(&log)
                    )));
                };
                events.push(
                    merge(common.as_ref(), log)
                        .map_err(|what| bad(format!("logs[{at}]: {what}")))?,
                );
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
                        kind(&other)
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
            let bad =
                |what: String| reject(StatusCode::BAD_REQUEST, format!("log {index}: {what}"));
            match event.get("message") {
                Some(Value::String(_)) => {}
                Some(other) => {
                    return Err(bad(format!(
                        "message is a JSON {}, expected a string",
                        kind(other)
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

        fn kind(value: &Value) -> &'static str {
            match value {
                Value::Null => "null",
                Value::Bool(_) => "boolean",
                Value::Number(_) => "number",
                Value::String(_) => "string",
                Value::Array(_) => "array",
                Value::Object(_) => "object",
            }
        }
    }

    /// Payloads that pass and fail every check, in every place a check can
    /// look: both forms, merging and flattening (collisions included),
    /// types, duplicates, escapes, UTF-8 and limits.
    fn tricky_payloads() -> Vec<Vec<u8>> {
        let mut payloads: Vec<Vec<u8>> = [
            "", "not json", "[", "[] x", "7", "null", "\"text\"", "[]", "{}", "[1]", "[[]]",
            r#"{"message":"one"}"#,
            r#"[{"message":"a"},{"message":"b"}]"#,
            r#"[{"message":"a"},{"logs":[{"message":"b"}]}]"#,
            r#"[{"logs":{}}]"#, r#"[{"logs":"x"}]"#, r#"[{"logs":[]}]"#,
            r#"[{"common":[],"logs":[]}]"#, r#"[{"common":{},"logs":[{"message":"a"}]}]"#,
            r#"[{"common":{"attributes":7},"logs":[{"message":"a"}]}]"#,
            r#"[{"common":{"attributes":{}},"logs":[{"message":"a"}]}]"#,
            r#"[{"logs":[{"message":"a"},"b"]}]"#,
            r#"[{"logs":[{"message":"a","attributes":[]}]}]"#,
            r#"[{"message":"a","attributes":"x"}]"#,
            r#"[{"logs":[{"message":"a"}],"common":{"attributes":{"hostname":"h"}},"other":1}]"#,
            r#"[{"common":{"attributes":{"hostname":"h","stream":"stdout","level":"info"}},
                "logs":[{"timestamp":1714564800000,"message":"a","attributes":{"level":"warn"}},
                        {"message":"b","hostname":"top"}]}]"#,
            r#"[{"message":"m","attributes":{"logdrain":{"part":1,"more":true}}}]"#,
            r#"[{"message":"m","a.b":1,"a":{"b":2}}]"#,
            r#"[{"message":"m","a":{"b":2},"a.b":1}]"#,
            r#"[{"message":"m","attributes":{"a":{"b":2},"a.b":1},"a":{"b":3}}]"#,
            r#"[{"message":"m","attributes":{"a":{"b":{"c":1},"b.c":2}},"a.b":{"c":3}}]"#,
            r#"[{"message":"m","e":{},"attributes":{"e":{"x":{}}}}]"#,
            r#"[{"common":{"attributes":{"message":"common","n":{"x":1},"n.x":2}},"logs":[{"attributes":{"message":7}},{"message":"own"}]}]"#,
            r#"[{"common":{"attributes":{"message":"common"}},"logs":[{}]}]"#,
            r#"[{"message":"a","message":7}]"#, r#"[{"message":7,"message":"a"}]"#,
            r#"[{"message":"a","attributes":{"message":7}}]"#,
            r#"[{"attributes":{"message":"a"},"message":7}]"#,
            r#"[{"message":"a","timestamp":1714564800000}]"#,
            r#"[{"message":"a","timestamp":1714564800}]"#,
            r#"[{"message":"a","timestamp":"1714564800000"}]"#,
            r#"[{"message":"a","timestamp":1714564800000.0}]"#,
            r#"[{"message":"a","timestamp":{"b":1,"a":2}}]"#,
            r#"[{"message":"a","attributes":{"timestamp":1}},{"message":"b","timestamp":[1]}]"#,
            r#"[{"message":null}]"#, r#"[{"message":{}}]"#, r#"[{"msg":"a"}]"#,
            r#"[{"message":"a\"b\\c\n\u0001é\u00e9","k\u0065y":"v","key":"w"}]"#,
            r#"[{"message":"a","n":1e5,"m":-0,"big":123456789012345678901234567890,"l":[1,{"x":"y"}]}]"#,
            r#"[{"msg":"b"},{"logs":[{"message": }]}]"#,
            r#"[{"msg":"b"},{"logs":{}}]"#,
        ]
        .iter()
        .map(|text| text.as_bytes().to_vec())
        .collect();
        for text in [
            r#"[{"common":{"attributes":{"message":"c","timestamp":1714564800000}},
                "logs":[{"message":"a"},{"attributes":{"timestamp":"x"},"message":"b"},
                        {"timestamp":1714564800001,"attributes":{"timestamp":7}}]}]"#,
            r#"[{"common":{"attributes":{"message":"c","timestamp":1714564800000}},
                "logs":[{"attributes":{"message":7}},{"timestamp":1714564800001}]}]"#,
            r#"[{"common":{"attributes":{"hostname":"h","long":"a long common value"}},
                "logs":[{"message":"a","long":"short"},{"message":"b"},
                        {"message":"c","attributes":{"long":"short"}}]}]"#,
            r#"[{"common":{"attributes":{"a":1,"b":2,"c":3}},
                "logs":[{"message":"m"},{"message":"m","attributes":{"d":4}},
                        {"message":"m","a":"top","attributes":{"b":"attr"}}]}]"#,
            r#"[{"logs":[{"message":"a"}],"common":{"attributes":{"x":1}}}]"#,
            r#"[{"logs":[{"message":"a"}],"common":{"attributes":{"timestamp":1714564800000,"a":1,"b":2,"c":3}}}]"#,
            r#"[{"common":{"attributes":{"x":1},"other":2},"extra":{"q":1},
                "logs":[{"message":"a","attributes":{"y":[1,{"z":1}]}}]}]"#,
            r#"[{"common":{"attributes":{"x":1}},"logs":[{"message":"a"}]},
                {"common":{"attributes":{"y":2}},"logs":[{"message":"b","x":3}]},
                {"logs":[{"message":"c","timestamp":1714564800002}]}]"#,
            r#"[{"common":{"attributes":{"x":1}}}]"#,
            r#"[{"common":{"attributes":{"x":1}},"logs":[{"message":"a","attributes":{"attributes":1}}]}]"#,
            r#"[{"common":{"attributes":{"attributes":{"x":1}}},"logs":[{"message":"a"}]}]"#,
            r#"[{"common":{"attributes":{"x":1},"attributes":{"y":1}},"logs":[{"message":"a"}]}]"#,
            r#"[{"common":{"attributes":{"x":1}},"logs":[{"message":"a"}],"logs":[{"message":"b"}]}]"#,
            r#"[{"logs":[{"message":"a","attributes":{"k":1},"attributes":{"j":2}}]}]"#,
            r#"[{"logs":[{"message":"a","timestamp":9223372036854775808}]}]"#,
            r#"[{"logs":[{"message":"a","timestamp":1714564800000.0}]}]"#,
            r#"[{"logs":[{"message":"a","n":null,"b":true,"f":1.5,"l":[]}]}]"#,
            r#"[{"logs":[{"attributes":{"message":"a"},"message":7}]}]"#,
            r#"[{"logs":[{"message":"m","attributes":{"timestamp":1714564800000},"timestamp":"x"}]}]"#,
            r#"[{"common":{"attributes":{"message":"a"}},"logs":[{"attributes":{"message":7}}]}]"#,
        ] {
            payloads.push(text.as_bytes().to_vec());
        }
        payloads.push(b"[{\"message\":\"caf\xe9\"}]".to_vec());
        payloads.push(b"[{\"message\":\"a\"}]\xff".to_vec());
        for count in [250, 253, 254, 255, 256] {
            let attributes: Vec<String> = (0..count).map(|i| format!(r#""a{i}":{i}"#)).collect();
            payloads.push(
                format!(
                    r#"[{{"message":"m","attributes":{{{}}}}}]"#,
                    attributes.join(",")
                )
                .into_bytes(),
            );
            let nested: Vec<String> = (0..count).map(|i| format!(r#""{i}":{{"x":1}}"#)).collect();
            payloads
                .push(format!(r#"{{"message":"m","n":{{{}}}}}"#, nested.join(",")).into_bytes());
        }
        let many = |value: &str| {
            let fields: Vec<String> = (0..40).map(|i| format!(r#""a{i}":"{value}""#)).collect();
            fields.join(",")
        };
        payloads.push(
            format!(
                r#"[{{"common":{{"attributes":{{{}}}}},"logs":[{{"message":"m","attributes":{{"a5":"attr","a39":{{"x":1}}}},"a5":"top","a7":"top"}}]}}]"#,
                many("common")
            )
            .into_bytes(),
        );
        payloads.push(
            format!(
                r#"[{{"message":"m","attributes":{{{},"a3.x":"late"}},"a3":{{"x":"nested"}},"a1":"top"}}]"#,
                many("attr")
            )
            .into_bytes(),
        );
        for len in [0, 1, 9, 10, 11, 15, 16, 17] {
            for text in ["x".repeat(len), "é".repeat(len), "\\n".repeat(len)] {
                payloads.push(
                    format!(r#"[{{"message":"{text}","attributes":{{"other":"{text}"}}}}]"#)
                        .into_bytes(),
                );
                payloads.push(
                    format!(
                        r#"[{{"common":{{"attributes":{{"c":"{text}"}}}},"logs":[{{"message":"{text}"}},{{"message":"m","c":"m"}}]}}]"#
                    )
                    .into_bytes(),
                );
            }
        }
        payloads
    }

    #[test]
    fn every_payload_is_answered_as_the_value_based_checks_answered_it() {
        let small = NewRelicLimits {
            max_attributes: 4,
            max_searchable_chars: 10,
            max_value_bytes: 16,
            ..NewRelicLimits::default()
        };
        for limits in [NewRelicLimits::default(), small] {
            for payload in tricky_payloads() {
                let text = String::from_utf8_lossy(&payload);
                let verdict = |r: Result<Vec<(Value, bool)>, Rejection>| {
                    r.map_err(|rejection| (rejection.status, rejection.reason))
                };
                let expected = verdict(reference::parse_payload(&payload, &limits));
                assert_eq!(
                    verdict(parse_payload(&payload, &limits)),
                    expected,
                    "{text}"
                );
                let counted = count_payload(&payload, &limits)
                    .map_err(|rejection| (rejection.status, rejection.reason));
                let expected_lines = expected.map(|entries| {
                    entries
                        .iter()
                        .map(|(value, oversized)| Line {
                            time_ms: entry_time_ms(value),
                            oversized: *oversized,
                        })
                        .collect::<Vec<_>>()
                });
                assert_eq!(counted, expected_lines, "{text}");
            }
        }
    }

    #[test]
    fn the_fast_path_passes_only_what_the_full_checks_pass_with_the_same_lines() {
        let small = NewRelicLimits {
            max_attributes: 4,
            max_searchable_chars: 10,
            max_value_bytes: 16,
            ..NewRelicLimits::default()
        };
        let mut passed = 0;
        for limits in [NewRelicLimits::default(), small] {
            for payload in tricky_payloads() {
                let mut plain = Plain {
                    limits: &limits,
                    lines: Vec::new(),
                    common: Vec::new(),
                    attributes: Vec::new(),
                    top: Vec::new(),
                    event: Vec::new(),
                };
                if scan::read(&payload, PlainItems(&mut plain)).is_some() {
                    let full = check_payload(&payload, &limits, |_, line| line);
                    let text = String::from_utf8_lossy(&payload);
                    assert_eq!(full.map_err(|r| r.reason), Ok(plain.lines), "{text}");
                    passed += 1;
                }
            }
        }
        assert!(passed > 30, "the fast path takes plain payloads ({passed})");
    }

    #[test]
    fn the_fast_path_takes_the_sinks_payloads() {
        let limits = NewRelicLimits::default();
        let payload = sink_payload(1_000);
        let mut plain = Plain {
            limits: &limits,
            lines: Vec::new(),
            common: Vec::new(),
            attributes: Vec::new(),
            top: Vec::new(),
            event: Vec::new(),
        };
        assert_eq!(scan::read(&payload, PlainItems(&mut plain)), Some(()));
        assert_eq!(
            plain.lines,
            check_payload(&payload, &limits, |_, line| line).unwrap()
        );
    }

    /// A request body of `lines` lines as the gateway's New Relic sink
    /// writes them (one block for one replica and stream), uncompressed.
    fn sink_payload(lines: usize) -> Vec<u8> {
        let logs: Vec<String> = (0..lines)
            .map(|i| {
                format!(
                    r#"{{"timestamp":{},"message":"{}","attributes":{{"level":"info"}}}}"#,
                    timing::STAMP_MS + i as i64,
                    timing::line(i)
                )
            })
            .collect();
        format!(
            r#"[{{"common":{{"attributes":{{"hostname":"replica-1","service_name":"bench","source":"cloud.livekit.io","stream":"stdout"}}}},"logs":[{}]}}]"#,
            logs.join(",")
        )
        .into_bytes()
    }

    #[tokio::test(flavor = "current_thread")]
    #[ignore = "timing harness: run alone, in release mode (see the timing module)"]
    async fn ns_per_line_of_a_gzipped_1000_line_request() {
        let body = bytes::Bytes::from(timing::gzip(&sink_payload(timing::LINES)));
        let mut headers = HeaderMap::new();
        headers.insert(LICENSE_KEY_HEADER, "k".parse().unwrap());
        headers.insert(header::CONTENT_TYPE, "application/json".parse().unwrap());
        headers.insert(header::CONTENT_ENCODING, "gzip".parse().unwrap());
        for (mode, mut config) in [
            ("counting", timing::counting_config()),
            ("recording", crate::IntakeConfig::default()),
        ] {
            config.newrelic.keys = vec!["k".to_string()];
            let store = Store::new(&config);
            store.set_keys(Vendor::NewRelic, &config.newrelic.keys);
            let mut requests = 0;
            timing::ns_per_line(&format!("newrelic, {mode}"), timing::LINES, || {
                requests += 1;
                if requests % 50 == 0 {
                    store.reset(); // bounds the memory of the recording run
                }
                let answer = receive(
                    State(store.clone()),
                    Extension(config.newrelic.limits.clone()),
                    RawQuery(None),
                    headers.clone(),
                    Body::from(body.clone()),
                );
                async move { assert_eq!(answer.await.status(), StatusCode::ACCEPTED) }
            })
            .await;
        }
    }

    #[test]
    fn debug_of_the_config_never_shows_keys() {
        let config = NewRelicConfig {
            keys: vec!["very-secret".into()],
            limits: NewRelicLimits::default(),
        };
        assert!(!format!("{config:?}").contains("very-secret"));
    }
}
