//! The gateway's HTTP endpoints.
//!
//! | endpoint | auth | what |
//! |---|---|---|
//! | `GET /metrics` | none | Prometheus text; labels are agent ids, destinations and reasons, never secrets |
//! | `GET /healthz` | none | 200 while the process serves |
//! | `GET /readyz` | none | 200 when the queue is open, its disk above the free-space watermark and the gateway not shutting down, else 503 |
//! | `GET /v1/agents/{agent_id}/status` | `Authorization: Bearer <that agent's token or the admin token>` (the scheme in any case) | the agent's status report across the fleet (schema 1, [`crate::status`], with each `--peers` gateway's part) plus this gateway's engine's raw `routes` |
//! | `GET /v1/status` | `Authorization: Bearer <admin token>` | the status report of every agent, across the fleet |
//! | `POST /v1/agents/{agent_id}/test-send` | agent token or admin token | sends one marked test line through each destination, answers each vendor's reply |
//! | `GET /` | admin token, or `?agent_id=` with that agent's token | the status page (HTML) |
//!
//! The status page takes its token from the `Authorization` header or the
//! `logdrain_status` cookie. A browser can pass `?token=` once: the answer
//! is a redirect that stores it in an HttpOnly, SameSite=Strict cookie
//! (`Secure` when the gateway serves TLS) and
//! drops it from the address bar and history. The gateway logs no request
//! URLs, so the token is not written to its log.
//!
//! This module only renders state owned elsewhere; it must not change it
//! (measuring the queue's oldest-line ages into their gauges at each scrape
//! is rendering).

use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use metrics_exporter_prometheus::PrometheusHandle;

use crate::auth::ReadDenied;
use crate::queue::Queue;
use crate::shutdown::Shutdown;
use crate::sinks::engine::Engine;
use crate::sinks::SinkFactory;
use crate::status;
use crate::status::fleet::StatusSource;
use logdrain::ids;

#[derive(Clone)]
pub struct HttpState {
    pub metrics: PrometheusHandle,
    pub engine: Engine<Queue>,
    pub queue: Queue,
    pub shutdown: Shutdown,
    /// The reports, this gateway's and the fleet's.
    pub status: StatusSource,
    /// Builds `test-send`'s sink for a route that has none (same settings
    /// as delivery).
    pub sinks: SinkFactory,
    /// One `test-send` per agent per interval.
    pub test_sends: status::test_send::Limiter,
    /// The listener serves TLS: the status cookie is marked `Secure`.
    pub tls: bool,
}

pub fn router(state: HttpState) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/v1/agents/{agent_id}/status", get(agent_status))
        .route("/v1/status", get(all_status))
        .route("/v1/agents/{agent_id}/test-send", post(test_send))
        .route("/", get(page))
        .with_state(Arc::new(state))
}

async fn metrics(State(state): State<Arc<HttpState>>) -> impl IntoResponse {
    // Ages grow between events, so they are measured when scraped.
    let oldest = state.engine.oldest_undelivered();
    crate::metrics::queue_oldest_line_ages(
        oldest
            .iter()
            .map(|(route, head)| (route.agent_id.as_str(), route.kind.name(), *head)),
        std::time::SystemTime::now(),
    );
    (
        [("content-type", "text/plain; version=0.0.4")],
        state.metrics.render(),
    )
}

async fn readyz(State(state): State<Arc<HttpState>>) -> Response {
    if state.shutdown.is_triggered() {
        (StatusCode::SERVICE_UNAVAILABLE, "shutting down\n").into_response()
    } else if state.queue.disk_full() {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "queue disk full or below its free-space watermark; new batches are refused, delivery continues\n",
        )
            .into_response()
    } else {
        (StatusCode::OK, "ready\n").into_response()
    }
}

/// Name of the status page's cookie.
const COOKIE: &str = "logdrain_status";

/// The token of an `Authorization: Bearer <token>` header; the scheme's
/// case does not matter (RFC 9110, 11.1).
fn bearer(headers: &HeaderMap) -> Option<&str> {
    let (scheme, token) = headers
        .get("authorization")?
        .to_str()
        .ok()?
        .trim()
        .split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim_start())
}

fn cookie_token(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all("cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE)
        // Stored form-encoded (see `page`); a lone value decodes as a key.
        .and_then(|(_, value)| {
            url::form_urlencoded::parse(value.as_bytes())
                .next()
                .map(|(v, _)| v.into_owned())
        })
}

/// Why a status request is refused: the status and a message naming the fix.
struct Denied(StatusCode, String);

impl IntoResponse for Denied {
    fn into_response(self) -> Response {
        (self.0, format!("{}\n", self.1)).into_response()
    }
}

impl From<ReadDenied> for Denied {
    fn from(denied: ReadDenied) -> Self {
        let code = match denied {
            ReadDenied::BadAgentId(_) => StatusCode::BAD_REQUEST,
            ReadDenied::AllDisabled => StatusCode::FORBIDDEN,
            ReadDenied::NotThisAgent | ReadDenied::NotAdmin => StatusCode::UNAUTHORIZED,
        };
        Denied(code, denied.to_string())
    }
}

impl HttpState {
    /// The caller may read `agent_id` (its own token, or the admin token).
    fn may_read(&self, agent_id: &str, token: &str) -> Result<(), Denied> {
        Ok(self.status.access.may_read(agent_id, token)?)
    }

    /// The caller may read every agent (the admin token).
    fn may_read_all(&self, token: &str) -> Result<(), Denied> {
        Ok(self.status.access.may_read_all(token)?)
    }
}

async fn agent_status(
    State(state): State<Arc<HttpState>>,
    Path(agent_id): Path<String>,
    headers: HeaderMap,
) -> Response {
    let token = bearer(&headers).unwrap_or("");
    if let Err(refused) = state.may_read(&agent_id, token) {
        return refused.into_response();
    }
    let report = state.status.fleet_wide(Some(&agent_id), token).await;
    // The engine's own view of this gateway's routes.
    let routes: Vec<_> = state
        .engine
        .statuses()
        .into_iter()
        .filter(|s| s.agent_id == agent_id)
        .collect();
    let (queued_lines, queued_bytes) = report
        .agents
        .first()
        .map_or((0, 0), |a| (a.queued_lines, a.queued_bytes));
    Json(serde_json::json!({
        "schema": report.schema,
        "generated_unix": report.generated_unix,
        "agents": report.agents,
        "gateways": report.gateways,
        "missing_gateways": report.missing_gateways,
        "agent_id": agent_id,
        "queued_lines": queued_lines,
        "queued_bytes": queued_bytes,
        "routes": routes,
    }))
    .into_response()
}

async fn all_status(State(state): State<Arc<HttpState>>, headers: HeaderMap) -> Response {
    let token = bearer(&headers).unwrap_or("");
    if let Err(refused) = state.may_read_all(token) {
        return refused.into_response();
    }
    Json(state.status.fleet_wide(None, token).await).into_response()
}

async fn test_send(
    State(state): State<Arc<HttpState>>,
    Path(agent_id): Path<String>,
    headers: HeaderMap,
) -> Response {
    if let Err(refused) = state.may_read(&agent_id, bearer(&headers).unwrap_or("")) {
        return refused.into_response();
    }
    if let Err(wait) = state
        .test_sends
        .start(&agent_id, tokio::time::Instant::now())
    {
        let seconds = wait.as_secs().max(1);
        return (
            StatusCode::TOO_MANY_REQUESTS,
            [(header::RETRY_AFTER, seconds.to_string())],
            format!(
                "agent {agent_id} ran test-send less than {}s ago (one per agent per {}s); try again in {seconds}s\n",
                status::test_send::TEST_SEND_INTERVAL.as_secs(),
                status::test_send::TEST_SEND_INTERVAL.as_secs(),
            ),
        )
            .into_response();
    }
    Json(status::test_send::run(&state.engine, &state.sinks, &agent_id).await).into_response()
}

#[derive(Debug, serde::Deserialize)]
struct PageQuery {
    agent_id: Option<String>,
    token: Option<String>,
}

async fn page(
    State(state): State<Arc<HttpState>>,
    Query(query): Query<PageQuery>,
    headers: HeaderMap,
) -> Response {
    let back = match &query.agent_id {
        Some(agent) => {
            if let Err(e) = ids::check_agent_id(agent) {
                return (StatusCode::BAD_REQUEST, format!("{e}\n")).into_response();
            }
            format!("/?agent_id={agent}")
        }
        None => "/".to_string(),
    };
    if let Some(token) = &query.token {
        // Keep the token out of the address bar and history: store it in a
        // cookie and reload without it.
        let value: String = url::form_urlencoded::byte_serialize(token.trim().as_bytes()).collect();
        let secure = if state.tls { "; Secure" } else { "" };
        return (
            StatusCode::SEE_OTHER,
            [
                ("location", back),
                (
                    "set-cookie",
                    format!("{COOKIE}={value}; HttpOnly; SameSite=Strict; Path=/{secure}"),
                ),
                ("cache-control", "no-store".to_string()),
            ],
        )
            .into_response();
    }
    let token = bearer(&headers)
        .map(str::to_string)
        .or_else(|| cookie_token(&headers))
        .unwrap_or_default();
    let allowed = match &query.agent_id {
        Some(agent) => state.may_read(agent, &token),
        None => state.may_read_all(&token),
    };
    if let Err(refused) = allowed {
        return refused.into_response();
    }
    let report = state
        .status
        .fleet_wide(query.agent_id.as_deref(), &token)
        .await;
    (
        [
            ("content-type", "text/html; charset=utf-8"),
            ("cache-control", "no-store"),
        ],
        status::page::render(&report, 10),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_authorization(value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert("authorization", value.parse().unwrap());
        headers
    }

    #[test]
    fn the_bearer_scheme_is_accepted_in_any_case() {
        for value in ["Bearer tok", "bearer tok", "BEARER tok", "bEaReR  tok"] {
            assert_eq!(bearer(&with_authorization(value)), Some("tok"), "{value}");
        }
        assert_eq!(bearer(&with_authorization("Basic tok")), None);
        assert_eq!(bearer(&with_authorization("Bearertok")), None);
        assert_eq!(bearer(&HeaderMap::new()), None);
    }
}
