//! `test-send`: one clearly marked line through each destination of an
//! agent, with the credentials the gateway holds for it, and each vendor's
//! answer.
//!
//! Each route's own sink (its worker's, with its pooled connections) makes
//! one [`crate::sinks::Sink::send`], outside the queue: the line is not
//! queued, no cursor moves and the route's worker and status are not
//! touched. A route whose secrets build no sink answers why. Answers are the
//! sinks' redacted errors; never a secret. [`Limiter`] allows one test-send
//! per agent per [`TEST_SEND_INTERVAL`].

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::time::Instant;

use bytes::Bytes;
use logdrain::v1::{Line, Origin, StreamKind};
use serde::{Deserialize, Serialize};

use crate::queue::{Cursor, Queue, QueuedLine};
use crate::route::RouteKey;
use crate::sinks::engine::Engine;
use crate::sinks::{locate, BuildSink, Location, SinkFactory};

/// The agent-server id the test line is sent as (the CloudWatch log stream,
/// the Datadog host, ...).
pub const TEST_SENDER: &str = "logdrain-test-send";

/// The answer of `POST /v1/agents/{id}/test-send`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TestSendReport {
    pub schema: u32,
    pub agent_id: String,
    /// The line that was sent.
    pub line: String,
    pub results: Vec<TestSendResult>,
}

/// One destination's answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TestSendResult {
    pub destination: String,
    pub cred_id: String,
    pub location: Option<Location>,
    /// `accepted`, `refused` (the vendor answered with an error) or
    /// `invalid_secret` (no request could be made).
    pub outcome: String,
    /// For a refusal: `retryable`, `permanent`, `credentials_rejected` or `invalid_secret`.
    pub class: Option<String>,
    /// What the vendor answered (status code and excerpt, redacted) or why
    /// nothing was sent.
    pub answer: String,
}

/// Sends the test line through every route of `agent_id`.
pub async fn run(engine: &Engine<Queue>, sinks: &SinkFactory, agent_id: &str) -> TestSendReport {
    let now = SystemTime::now();
    let text = format!(
        "logdrain test line from logdrain-gateway test-send at {} (id {:016x})",
        humantime::format_rfc3339_seconds(now),
        rand::random::<u64>()
    );
    let line = QueuedLine {
        cursor: Cursor {
            segment: 0,
            index: 0,
        },
        agent_server_id: Arc::from(TEST_SENDER),
        line: Line {
            timestamp_ns: now
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX)),
            stream: StreamKind::Stdout as i32,
            data: Bytes::from(text.clone()),
            origin: Origin::Shim as i32,
            part: 0,
            more_parts: false,
        },
        original_timestamp_ns: None,
    };
    let routes: Vec<RouteKey> = engine
        .statuses()
        .into_iter()
        .filter(|s| s.agent_id == agent_id)
        .map(|s| RouteKey {
            agent_id: s.agent_id,
            kind: s.destination,
            cred_id: s.cred_id,
        })
        .collect();
    let sends = routes.into_iter().map(|route| {
        let line = line.clone();
        async move {
            let mut result = TestSendResult {
                destination: route.kind.name().to_string(),
                cred_id: route.cred_id.clone(),
                location: None,
                outcome: "invalid_secret".to_string(),
                class: None,
                answer: String::new(),
            };
            let Some(secrets) = engine.current_secrets(&route) else {
                result.answer = "the route disappeared while testing".to_string();
                return result;
            };
            result.location = locate(&route, &secrets, sinks.settings()).ok();
            let sink = match engine.route_sink(&route) {
                Some(sink) => Ok(sink),
                None => sinks.build(&route, &secrets),
            };
            match sink {
                Err(e) => result.answer = e.to_string(),
                Ok(sink) => match sink.send(std::slice::from_ref(&line)).await {
                    Ok(outcome) if outcome.rejected > 0 => {
                        result.outcome = "refused".to_string();
                        result.class = Some("permanent".to_string());
                        result.answer = format!(
                            "accepted the request but refused the line: {}",
                            outcome
                                .rejected_reason
                                .as_deref()
                                .unwrap_or("no reason given")
                        );
                    }
                    Ok(_) => {
                        result.outcome = "accepted".to_string();
                        result.answer = "accepted".to_string();
                    }
                    Err(e) => {
                        result.outcome = "refused".to_string();
                        result.class = Some(e.class().to_string());
                        result.answer = e.to_string();
                    }
                },
            }
            result
        }
    });
    TestSendReport {
        schema: super::SCHEMA,
        agent_id: agent_id.to_string(),
        line: text,
        results: futures::future::join_all(sends).await,
    }
}

/// Shortest time between two test-sends of one agent: each sends one
/// request per route.
pub const TEST_SEND_INTERVAL: Duration = Duration::from_secs(10);

/// When each agent last ran a test-send. Holds only agents within
/// [`TEST_SEND_INTERVAL`] of their last one.
#[derive(Clone, Default)]
pub struct Limiter(Arc<Mutex<HashMap<String, Instant>>>);

impl Limiter {
    /// Starts a test-send of `agent_id` at `now`, or says how long until
    /// the agent may run the next one.
    pub fn start(&self, agent_id: &str, now: Instant) -> Result<(), Duration> {
        // Times only: a panic elsewhere cannot leave them inconsistent.
        let mut last = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        last.retain(|_, at| now.saturating_duration_since(*at) < TEST_SEND_INTERVAL);
        if let Some(at) = last.get(agent_id) {
            return Err(TEST_SEND_INTERVAL.saturating_sub(now.saturating_duration_since(*at)));
        }
        last.insert(agent_id.to_string(), now);
        Ok(())
    }
}

/// The answer as text, one block per destination.
pub fn render_text(report: &TestSendReport) -> String {
    let mut out = format!("sent to agent {}: {}\n", report.agent_id, report.line);
    if report.results.is_empty() {
        out.push_str(super::NO_DESTINATION);
        out.push('\n');
    }
    for r in &report.results {
        out.push_str(&format!(
            "\n{} (cred id {}): {}\n  answer: {}\n",
            r.destination, r.cred_id, r.outcome, r.answer
        ));
        if let Some(location) = &r.location {
            out.push_str(&format!("  where to look: {}\n", location.summary));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_agent_may_test_send_once_per_interval_and_others_are_not_held_back() {
        let limiter = Limiter::default();
        let t0 = Instant::now();
        assert_eq!(limiter.start("a1", t0), Ok(()));
        let soon = t0 + Duration::from_secs(3);
        assert_eq!(
            limiter.start("a1", soon),
            Err(TEST_SEND_INTERVAL - Duration::from_secs(3))
        );
        assert_eq!(limiter.start("a2", soon), Ok(()));
        assert_eq!(limiter.start("a1", t0 + TEST_SEND_INTERVAL), Ok(()));
        // Only agents within the interval are remembered.
        let later = t0 + TEST_SEND_INTERVAL * 3;
        assert_eq!(limiter.start("a3", later), Ok(()));
        assert_eq!(limiter.0.lock().unwrap().len(), 1);
    }
}
