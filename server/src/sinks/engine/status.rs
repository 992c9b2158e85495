//! Per-route delivery status, for reporting.
//!
//! Owns [`RouteStatus`] (what an operator sees for one route) and the cell a
//! worker updates it through, which also keeps the `route_state` metric in
//! step with the state. It holds no secrets: the route's credential id is a
//! keyed hash, and error reasons are redacted by the sinks. The lock is never
//! held across an `.await`.

use std::sync::{Arc, Mutex, MutexGuard};

use serde::{Deserialize, Serialize};

use crate::metrics;
use crate::route::{DestinationKind, RouteKey};

/// What a route is doing: the one vocabulary of the engine's JSON, the
/// status report and page, and the `logdrain_route_blocked` metric.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RouteState {
    /// Reading its committed position (reported as `delivering`).
    Starting,
    /// Nothing to send; waiting for lines (reported as `delivering`).
    Idle,
    /// Filling a batch or sending.
    Delivering,
    /// The last request failed in a way worth retrying (vendor down, 429,
    /// 5xx, network); lines wait and are retried with a delay that grows
    /// with each consecutive failure (the route's circuit breaker).
    Retrying,
    /// The vendor refused the credentials (401/403); lines are kept and
    /// retried slowly until the key works or a newer one arrives.
    CredentialsRejected,
    /// The secrets cannot work as given (malformed value, wrong region
    /// form, DSN typo) or the vendor said the endpoint is wrong; lines are
    /// kept until a deployment brings valid secrets.
    InvalidSecret,
    /// The worker has stopped (shutdown).
    Stopped,
}

impl RouteState {
    pub fn as_str(self) -> &'static str {
        match self {
            RouteState::Starting => "starting",
            RouteState::Idle => "idle",
            RouteState::Delivering => "delivering",
            RouteState::Retrying => "retrying",
            RouteState::CredentialsRejected => "credentials_rejected",
            RouteState::InvalidSecret => "invalid_secret",
            RouteState::Stopped => "stopped",
        }
    }

    /// Kept from delivering until its credentials change: only a new
    /// deployment's secrets (or a slow retry) can unblock it.
    pub fn is_parked(self) -> bool {
        matches!(
            self,
            RouteState::CredentialsRejected | RouteState::InvalidSecret
        )
    }

    /// Cannot deliver now: `logdrain_route_blocked` is 1 for this state.
    pub fn is_blocked(self) -> bool {
        self == RouteState::Retrying || self.is_parked()
    }

    /// The state an operator is shown: starting and idle are delivering.
    pub fn reported(self) -> RouteState {
        match self {
            RouteState::Starting | RouteState::Idle => RouteState::Delivering,
            state => state,
        }
    }
}

/// One route's status. Never contains a secret.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct RouteStatus {
    pub agent_id: String,
    #[serde(serialize_with = "destination_name")]
    pub destination: DestinationKind,
    /// Keyed hash of the credentials; tells routes apart, reveals nothing.
    pub cred_id: String,
    pub state: RouteState,
    /// The latest failure, kept after recovery for diagnosis.
    pub last_error: Option<String>,
    /// Failed attempts since the last success.
    pub consecutive_failures: u32,
    pub delivered_lines: u64,
    pub delivered_requests: u64,
    pub failed_requests: u64,
    /// Lines the vendor refused for good (dropped and counted).
    pub dropped_lines: u64,
    /// When the vendor last accepted a request of this route (Unix
    /// seconds, the gateway's clock); `None` before the first success
    /// since the gateway started.
    pub last_success_unix: Option<u64>,
    /// Lines the worker holds in memory, read but not yet accepted.
    pub pending_lines: u64,
    /// When the shim read the route's oldest line not yet accepted (Unix
    /// nanoseconds, the shim's clock), as the worker last saw it; `None`
    /// while it has nothing to send, and for a route without a worker
    /// (state `invalid_secret`: [`super::Engine::oldest_undelivered`] reads those
    /// from the queue). Feeds `logdrain_queue_oldest_line_age_seconds`.
    pub oldest_undelivered_ns: Option<i64>,
    /// Set when this route's credentials were refused and it adopted the
    /// newer credentials of another route for the same agent and
    /// destination: that route's credential id (a hash, never a secret).
    pub adopted_cred_id: Option<String>,
    /// What an operator should know beyond the state, e.g. "delivering with
    /// a newer deployment's credentials (cred id …, first seen …)". Never contains a secret.
    pub note: Option<String>,
}

fn destination_name<S: serde::Serializer>(d: &DestinationKind, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(d.name())
}

/// Shared handle to one route's status.
#[derive(Clone, Debug)]
pub struct StatusCell(Arc<Mutex<RouteStatus>>);

impl StatusCell {
    pub fn new(route: &RouteKey) -> Self {
        Self(Arc::new(Mutex::new(RouteStatus {
            agent_id: route.agent_id.clone(),
            destination: route.kind,
            cred_id: route.cred_id.clone(),
            state: RouteState::Starting,
            last_error: None,
            consecutive_failures: 0,
            delivered_lines: 0,
            delivered_requests: 0,
            failed_requests: 0,
            dropped_lines: 0,
            last_success_unix: None,
            pending_lines: 0,
            oldest_undelivered_ns: None,
            adopted_cred_id: None,
            note: None,
        })))
    }

    fn lock(&self) -> MutexGuard<'_, RouteStatus> {
        // A panicking worker cannot leave a status half-written in a way
        // that matters for reporting, so a poisoned lock is still usable.
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub fn snapshot(&self) -> RouteStatus {
        self.lock().clone()
    }

    pub fn update(&self, f: impl FnOnce(&mut RouteStatus)) {
        f(&mut self.lock());
    }

    /// Moves to `state`, switching the `route_state` metric off for the old
    /// blocking reason and on for the new one.
    pub fn set_state(&self, state: RouteState) {
        let mut status = self.lock();
        let old = status.state;
        status.state = state;
        if old != state {
            let dest = status.destination.name();
            if old.is_blocked() {
                metrics::route_state(&status.agent_id, dest, old, false);
            }
            if state.is_blocked() {
                metrics::route_state(&status.agent_id, dest, state, true);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_shows_the_credential_hash_and_no_secret() {
        let route = RouteKey {
            agent_id: "a1".into(),
            kind: DestinationKind::Datadog,
            cred_id: "0011aabb".into(),
        };
        let cell = StatusCell::new(&route);
        cell.set_state(RouteState::CredentialsRejected);
        let json = serde_json::to_value(cell.snapshot()).unwrap();
        assert_eq!(json["destination"], "datadog");
        assert_eq!(json["state"], "credentials_rejected");
        assert_eq!(json["cred_id"], "0011aabb");
        assert_eq!(json["adopted_cred_id"], serde_json::Value::Null);
    }
}
