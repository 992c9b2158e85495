//! Where the engine reads lines from and commits delivery to.
//!
//! [`Source`] is the small slice of the queue the engine uses (read after a
//! cursor, the committed cursor, commit, a change signal, and storing the
//! secrets a route delivers with), implemented
//! here for [`crate::queue::Queue`] and, in tests, for an in-memory source.
//! This module must not batch, retry or know about vendors.

use tokio::sync::watch;

use crate::queue::{Cursor, Queue, QueueError, QueuedLine};
use crate::route::{RouteKey, Secrets};

/// The queue operations the delivery engine needs.
///
/// Every method is quick (no waiting on the network); none may hold a lock
/// that another route's worker needs for long.
pub trait Source: Send + Sync + 'static {
    type Error: std::error::Error + Send + Sync + 'static;

    /// Up to `max_lines` lines (about `max_bytes` of data; at least one line
    /// when any is available) strictly after `after`, in order, for `route`.
    /// `None` reads from the start.
    fn read(
        &self,
        route: &RouteKey,
        after: Option<Cursor>,
        max_lines: usize,
        max_bytes: usize,
    ) -> Result<Vec<QueuedLine>, Self::Error>;

    /// The last cursor `route` committed, if any.
    fn committed(&self, route: &RouteKey) -> Result<Option<Cursor>, Self::Error>;

    /// Marks every line of `route` up to and including `through` as delivered.
    fn commit(&self, route: &RouteKey, through: Cursor) -> Result<(), Self::Error>;

    /// A signal that changes whenever lines are appended for `agent_id`.
    fn subscribe(&self, agent_id: &str) -> watch::Receiver<u64>;

    /// Stores the secrets `route` delivers with and when they were first
    /// seen (Unix ms), so they survive a restart (used when a parked route
    /// adopts newer credentials).
    fn put_route(
        &self,
        route: &RouteKey,
        secrets: &Secrets,
        first_seen_ms: u64,
    ) -> Result<(), Self::Error>;

    /// Removes an expired route once no queued line is tagged with it;
    /// says whether it did.
    fn remove_route(&self, route: &RouteKey) -> Result<bool, Self::Error>;
}

impl Source for Queue {
    type Error = QueueError;

    fn read(
        &self,
        route: &RouteKey,
        after: Option<Cursor>,
        max_lines: usize,
        max_bytes: usize,
    ) -> Result<Vec<QueuedLine>, QueueError> {
        Queue::read(self, route, after, max_lines, max_bytes)
    }

    fn committed(&self, route: &RouteKey) -> Result<Option<Cursor>, QueueError> {
        Queue::committed(self, route)
    }

    fn commit(&self, route: &RouteKey, through: Cursor) -> Result<(), QueueError> {
        Queue::commit(self, route, through)
    }

    fn subscribe(&self, agent_id: &str) -> watch::Receiver<u64> {
        Queue::subscribe(self, agent_id)
    }

    fn put_route(
        &self,
        route: &RouteKey,
        secrets: &Secrets,
        first_seen_ms: u64,
    ) -> Result<(), QueueError> {
        Queue::put_route_since(self, route, secrets, first_seen_ms)
    }

    fn remove_route(&self, route: &RouteKey) -> Result<bool, QueueError> {
        Queue::remove_route(self, route)
    }
}

/// An in-memory [`Source`] for engine tests: every agent's lines in one
/// vector, one committed cursor per route.
#[cfg(test)]
pub(crate) mod memory {
    use std::collections::HashMap;
    use std::sync::{Arc, Mutex};

    use bytes::Bytes;
    use logdrain::v1::{Line, StreamKind};

    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("in-memory source failure (injected)")]
    pub(crate) struct MemoryError;

    #[derive(Default)]
    struct State {
        lines: HashMap<String, Vec<QueuedLine>>,
        committed: HashMap<RouteKey, Cursor>,
        signals: HashMap<String, watch::Sender<u64>>,
        stored: HashMap<RouteKey, Secrets>,
        removed: Vec<RouteKey>,
        fail_reads: u32,
    }

    #[derive(Clone, Default)]
    pub(crate) struct MemorySource {
        state: Arc<Mutex<State>>,
    }

    impl MemorySource {
        /// Appends lines with the given payloads for `agent` and signals it.
        pub(crate) fn push(&self, agent: &str, payloads: &[&str]) {
            let stamped: Vec<(&str, i64)> = payloads
                .iter()
                .map(|p| (*p, 1_700_000_000_000_000_000))
                .collect();
            self.push_stamped(agent, &stamped);
        }

        /// Appends lines (payload, time in ns) for `agent` and signals it.
        pub(crate) fn push_stamped(&self, agent: &str, lines_at: &[(&str, i64)]) {
            let mut state = self.state.lock().unwrap();
            let lines = state.lines.entry(agent.to_string()).or_default();
            for &(payload, timestamp_ns) in lines_at {
                let index = lines.len() as u32;
                lines.push(QueuedLine {
                    cursor: Cursor { segment: 1, index },
                    agent_server_id: Arc::from("replica-1"),
                    line: Line {
                        timestamp_ns,
                        stream: StreamKind::Stdout as i32,
                        data: Bytes::from(payload.to_string()),
                        origin: 1,
                        part: 0,
                        more_parts: false,
                    },
                    original_timestamp_ns: None,
                });
            }
            let signal = state
                .signals
                .entry(agent.to_string())
                .or_insert_with(|| watch::channel(0).0);
            signal.send_modify(|v| *v += 1);
        }

        /// Makes the next `n` reads fail.
        pub(crate) fn fail_next_reads(&self, n: u32) {
            self.state.lock().unwrap().fail_reads = n;
        }

        pub(crate) fn committed_cursor(&self, route: &RouteKey) -> Option<Cursor> {
            self.state.lock().unwrap().committed.get(route).copied()
        }

        /// The secrets last stored for `route` with `put_route`.
        pub(crate) fn stored_secrets(&self, route: &RouteKey) -> Option<Secrets> {
            self.state.lock().unwrap().stored.get(route).cloned()
        }

        /// Routes removed with `remove_route`, in order.
        pub(crate) fn removed(&self) -> Vec<RouteKey> {
            self.state.lock().unwrap().removed.clone()
        }

        /// The cursor of the last line pushed for `agent`.
        pub(crate) fn last_cursor(&self, agent: &str) -> Option<Cursor> {
            let state = self.state.lock().unwrap();
            state.lines.get(agent)?.last().map(|l| l.cursor)
        }
    }

    impl Source for MemorySource {
        type Error = MemoryError;

        fn read(
            &self,
            route: &RouteKey,
            after: Option<Cursor>,
            max_lines: usize,
            max_bytes: usize,
        ) -> Result<Vec<QueuedLine>, MemoryError> {
            let mut state = self.state.lock().unwrap();
            if state.fail_reads > 0 {
                state.fail_reads -= 1;
                return Err(MemoryError);
            }
            let Some(lines) = state.lines.get(&route.agent_id) else {
                return Ok(Vec::new());
            };
            let mut out = Vec::new();
            let mut bytes = 0;
            for line in lines.iter().filter(|l| after.is_none_or(|a| l.cursor > a)) {
                if out.len() >= max_lines || (!out.is_empty() && bytes >= max_bytes) {
                    break;
                }
                bytes += line.line.data.len();
                out.push(line.clone());
            }
            Ok(out)
        }

        fn committed(&self, route: &RouteKey) -> Result<Option<Cursor>, MemoryError> {
            Ok(self.committed_cursor(route))
        }

        fn commit(&self, route: &RouteKey, through: Cursor) -> Result<(), MemoryError> {
            let mut state = self.state.lock().unwrap();
            let entry = state.committed.entry(route.clone()).or_insert(through);
            assert!(through >= *entry, "commits must never go backwards");
            *entry = through;
            Ok(())
        }

        fn subscribe(&self, agent_id: &str) -> watch::Receiver<u64> {
            let mut state = self.state.lock().unwrap();
            state
                .signals
                .entry(agent_id.to_string())
                .or_insert_with(|| watch::channel(0).0)
                .subscribe()
        }

        fn put_route(
            &self,
            route: &RouteKey,
            secrets: &Secrets,
            _first_seen_ms: u64,
        ) -> Result<(), MemoryError> {
            let mut state = self.state.lock().unwrap();
            state.stored.insert(route.clone(), secrets.clone());
            Ok(())
        }

        fn remove_route(&self, route: &RouteKey) -> Result<bool, MemoryError> {
            let mut state = self.state.lock().unwrap();
            state.stored.remove(route);
            state.committed.remove(route);
            state.removed.push(route.clone());
            Ok(true)
        }
    }
}
