//! The gateway's HTTP endpoints.
//!
//! | endpoint | auth | what |
//! |---|---|---|
//! | `GET /metrics` | none | Prometheus text; labels are agent ids, destinations and reasons, never secrets |
//! | `GET /healthz` | none | 200 while the process serves |
//! | `GET /readyz` | none | 200 when the queue is open, its disk above the free-space watermark and the gateway not shutting down, else 503 |
//! | `GET /v1/agents/{agent_id}/status` | `Authorization: Bearer <that agent's token>` | queue depth and delivery status of the agent's routes |
//!
//! This module only renders state owned elsewhere; it must not change it.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use metrics_exporter_prometheus::PrometheusHandle;

use crate::auth::SigningKey;
use crate::queue::Queue;
use crate::shutdown::Shutdown;
use crate::sinks::engine::Engine;

#[derive(Clone)]
pub struct HttpState {
    pub metrics: PrometheusHandle,
    pub engine: Engine<Queue>,
    pub queue: Queue,
    pub key: SigningKey,
    pub shutdown: Shutdown,
}

pub fn router(state: HttpState) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/v1/agents/{agent_id}/status", get(status))
        .with_state(Arc::new(state))
}

async fn metrics(State(state): State<Arc<HttpState>>) -> impl IntoResponse {
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
            "queue disk below its free-space watermark; new batches are refused, delivery continues\n",
        )
            .into_response()
    } else {
        (StatusCode::OK, "ready\n").into_response()
    }
}

async fn status(
    State(state): State<Arc<HttpState>>,
    Path(agent_id): Path<String>,
    headers: HeaderMap,
) -> Response {
    let token = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    if !state.key.verify(&agent_id, token) {
        return (
            StatusCode::UNAUTHORIZED,
            "send `Authorization: Bearer <token>` with this agent's own token\n",
        )
            .into_response();
    }
    let routes: Vec<_> = state
        .engine
        .statuses()
        .into_iter()
        .filter(|s| s.agent_id == agent_id)
        .collect();
    let (queued_lines, queued_bytes) = state.queue.depth(&agent_id);
    Json(serde_json::json!({
        "agent_id": agent_id,
        "queued_lines": queued_lines,
        "queued_bytes": queued_bytes,
        "routes": routes,
    }))
    .into_response()
}
