//! The counting intake, for benchmarks: serves the vendors' paths, counts
//! and times every line it is sent, and keeps nothing.
//!
//! It checks nothing a vendor checks (keys, headers, limits, fields): a body
//! that is not gzip or JSON of the expected shape gets a 400, anything else
//! a 202 (200 for Sentry). Each line is timed from its `timestamp` (
//! milliseconds; seconds for Sentry) to the request's arrival. Faults
//! scripted through the control API answer as in the fake vendors.

use std::io::Read;

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use flate2::read::MultiGzDecoder;
use serde::Deserialize;
use serde_json::json;

use crate::handler::{self, reject, Accepted, Entries, Rejection};
use crate::store::{Line, Store};
use crate::{body, datadog, newrelic, Vendor};

/// Largest body read, compressed or not.
const MAX_BYTES: usize = 256 << 20;

/// The counting routes, on the vendors' paths.
pub(crate) fn routes() -> Router<Store> {
    let at = |vendor| {
        post(
            move |State(store): State<Store>, headers: HeaderMap, body: Body| {
                receive(store, vendor, headers, body)
            },
        )
    };
    Router::new()
        .route(datadog::PATH, at(Vendor::Datadog))
        .route(newrelic::PATH, at(Vendor::NewRelic))
        .route("/api/{project_id}/envelope/", at(Vendor::Sentry))
        .route("/api/{project_id}/envelope", at(Vendor::Sentry))
}

async fn receive(store: Store, vendor: Vendor, headers: HeaderMap, body: Body) -> Response {
    handler::respond(&store, vendor, &headers, error_response, async |pending| {
        let bad = |e: String| reject(StatusCode::BAD_REQUEST, e);
        let sent = body::read(body, MAX_BYTES)
            .await
            .map_err(|e| bad(e.to_string()))?;
        pending.body_bytes = sent.len();
        let mut decoded = Vec::new();
        let bytes: &[u8] = if sent.starts_with(&[0x1f, 0x8b]) {
            MultiGzDecoder::new(&sent[..])
                .take(MAX_BYTES as u64)
                .read_to_end(&mut decoded)
                .map_err(|e| bad(format!("body is not valid gzip: {e}")))?;
            pending.decoded_bytes = Some(decoded.len());
            &decoded
        } else {
            &sent
        };
        let lines = count(vendor, bytes).map_err(|e| bad(e.to_string()))?;
        let status = match vendor {
            Vendor::Sentry => StatusCode::OK,
            _ => StatusCode::ACCEPTED,
        };
        Ok::<_, Rejection>(Accepted {
            status,
            entries: Entries::Counted(lines),
            body: json!({}),
        })
    })
    .await
}

/// A line with its time in milliseconds (Datadog, New Relic).
#[derive(Deserialize)]
struct Ms {
    timestamp: Option<i64>,
}

/// A line with its time in seconds (Sentry).
#[derive(Deserialize)]
struct Seconds {
    timestamp: Option<f64>,
}

/// A New Relic block of the detailed form, as the sink writes it.
#[derive(Deserialize)]
struct Block {
    logs: Vec<Ms>,
}

/// A Sentry `log` item's payload.
#[derive(Deserialize)]
struct LogItem {
    items: Vec<Seconds>,
}

/// A Sentry item header.
#[derive(Deserialize)]
struct ItemHeader {
    #[serde(rename = "type")]
    kind: String,
    length: Option<usize>,
}

fn line(time_ms: Option<i64>) -> Line {
    Line {
        time_ms,
        oversized: false,
    }
}

/// The lines of one decoded body.
fn count(vendor: Vendor, bytes: &[u8]) -> serde_json::Result<Vec<Line>> {
    let ms = |logs: Vec<Ms>| logs.into_iter().map(|l| line(l.timestamp));
    Ok(match vendor {
        Vendor::Datadog => ms(serde_json::from_slice(bytes)?).collect(),
        Vendor::NewRelic => serde_json::from_slice::<Vec<Block>>(bytes)?
            .into_iter()
            .flat_map(|block| ms(block.logs))
            .collect(),
        Vendor::Sentry => {
            let mut lines = Vec::new();
            let mut rest = bytes.splitn(2, |&b| b == b'\n').nth(1).unwrap_or_default();
            while let Some(at) = rest.iter().position(|&b| b == b'\n') {
                let header: ItemHeader = serde_json::from_slice(&rest[..at])?;
                rest = &rest[at + 1..];
                let end = header
                    .length
                    .or_else(|| rest.iter().position(|&b| b == b'\n'))
                    .unwrap_or(rest.len())
                    .min(rest.len());
                if header.kind == "log" {
                    let item: LogItem = serde_json::from_slice(&rest[..end])?;
                    lines.extend(
                        item.items
                            .into_iter()
                            .map(|log| line(log.timestamp.map(|s| (s * 1_000.0).floor() as i64))),
                    );
                }
                rest = rest.get(end + 1..).unwrap_or_default();
            }
            lines
        }
    })
}

fn error_response(status: StatusCode, detail: &str) -> Response {
    (status, Json(json!({ "error": detail }))).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn times(vendor: Vendor, body: &str) -> Vec<Option<i64>> {
        let lines = count(vendor, body.as_bytes()).unwrap();
        lines.into_iter().map(|l| l.time_ms).collect()
    }

    #[test]
    fn lines_are_counted_with_their_times_for_every_vendor() {
        let datadog = r#"[{"message":"a","timestamp":5},{"message":"b"}]"#;
        assert_eq!(times(Vendor::Datadog, datadog), [Some(5), None]);
        let newrelic = r#"[{"common":{},"logs":[{"message":"a","timestamp":7}]},{"logs":[{}]}]"#;
        assert_eq!(times(Vendor::NewRelic, newrelic), [Some(7), None]);
        let payload = r#"{"items":[{"timestamp":1.5,"body":"a\nb"},{"body":"c"}]}"#;
        let sentry = format!(
            "{{}}\n{{\"type\":\"log\",\"length\":{}}}\n{payload}\n{{\"type\":\"log\"}}\n{payload}\n",
            payload.len()
        );
        assert_eq!(
            times(Vendor::Sentry, &sentry),
            [Some(1_500), None, Some(1_500), None]
        );
        assert!(count(Vendor::Datadog, b"{}").is_err());
    }
}
