//! The request-handling skeleton every vendor intake shares: answer with an
//! injected fault if one is scripted, otherwise run the vendor's checks and
//! record the outcome.
//!
//! A vendor module hands [`respond`] its checks and its error body shape;
//! this module must not know any vendor's wire format, credentials or
//! answer bodies.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::Value;

use crate::store::{Line, Outcome, Pending, Store};
use crate::Vendor;

/// The JSON type's name, for messages.
pub(crate) fn json_kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// Length of `value` as compact JSON.
pub(crate) fn json_len(value: &Value) -> usize {
    value.to_string().len()
}

/// Why a request is refused: its status and a reason naming the problem.
#[derive(Debug)]
pub(crate) struct Rejection {
    pub status: StatusCode,
    pub reason: String,
}

pub(crate) fn reject(status: StatusCode, reason: impl Into<String>) -> Rejection {
    Rejection {
        status,
        reason: reason.into(),
    }
}

/// The entries of an accepted request.
#[derive(Debug)]
pub(crate) enum Entries {
    /// Every entry as (value, oversized), from a fake vendor.
    Kept(Vec<(Value, bool)>),
    /// Only what the counters need of each entry, from the counting intake.
    Counted(Vec<Line>),
}

impl Entries {
    /// Drops entries stamped more than `max_age` before now, as Datadog and
    /// New Relic do after answering 202: the request is accepted, the
    /// entries never show up. Entries without a time are kept (the vendor
    /// uses the time of arrival).
    pub(crate) fn within(self, vendor: Vendor, max_age: Option<Duration>) -> Self {
        let Some(max_age) = max_age else {
            return self;
        };
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        let oldest_ms = i64::try_from(now.saturating_sub(max_age).as_millis()).unwrap_or(i64::MAX);
        let fresh = |time_ms: Option<i64>| time_ms.is_none_or(|t| t >= oldest_ms);
        match self {
            Entries::Kept(mut entries) => {
                entries.retain(|(value, _)| fresh(vendor.entry_time_ms(value)));
                Entries::Kept(entries)
            }
            Entries::Counted(mut lines) => {
                lines.retain(|line| fresh(line.time_ms));
                Entries::Counted(lines)
            }
        }
    }
}

/// A request that passed the vendor's checks: the vendor's success status,
/// the entries to record, and the answer body.
#[derive(Debug)]
pub(crate) struct Accepted {
    pub status: StatusCode,
    pub entries: Entries,
    pub body: Value,
}

/// Answers one request to `vendor`: with the next injected fault if there is
/// one (`check` is then not run), otherwise with what `check` decides.
/// Rejections and faults are answered with the vendor's `error_response`;
/// every answer is recorded in `store`.
pub(crate) async fn respond(
    store: &Store,
    vendor: Vendor,
    headers: &HeaderMap,
    error_response: fn(StatusCode, &str) -> Response,
    check: impl AsyncFnOnce(&mut Pending) -> Result<Accepted, Rejection>,
) -> Response {
    let mut pending = Pending::arrived(vendor, headers);
    if let Some(fault) = store.take_fault(vendor) {
        let status = fault.status_code();
        store.record(
            pending,
            Outcome::Injected {
                status: status.as_u16(),
            },
        );
        let detail = if fault.echo_headers {
            format!("answered by a fault injected into the test intake; you sent {headers:?}")
        } else {
            "answered by a fault injected into the test intake".to_string()
        };
        let response = error_response(status, &detail);
        return fault.answer(response).await;
    }
    match check(&mut pending).await {
        Ok(Accepted {
            status,
            entries,
            body,
        }) => {
            let status_code = status.as_u16();
            let outcome = match entries {
                Entries::Kept(entries) => Outcome::Accepted {
                    status: status_code,
                    entries,
                },
                Entries::Counted(lines) => Outcome::Counted {
                    status: status_code,
                    lines,
                },
            };
            store.record(pending, outcome);
            (status, Json(body)).into_response()
        }
        Err(Rejection { status, reason }) => {
            tracing::info!(
                status = status.as_u16(),
                %reason,
                "{} intake rejected a request",
                vendor.name()
            );
            let response = error_response(status, &reason);
            store.record(
                pending,
                Outcome::Rejected {
                    status: status.as_u16(),
                    reason,
                },
            );
            response
        }
    }
}
