//! Live tail: fan-out of freshly queued lines to `tail` clients.
//!
//! Owns one broadcast channel per agent that has tail clients. Publishing
//! never blocks ingest: a slow tail client lags and is told how much it
//! missed. This module must not touch the queue; tail is live only.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use logdrain::v1::Line;
use tokio::sync::broadcast;

/// Batches buffered per agent for slow tail clients before they lag.
const TAIL_CAPACITY: usize = 1024;

/// Lines of one batch from one replica.
#[derive(Debug)]
pub struct TailBatch {
    pub agent_server_id: Arc<str>,
    pub lines: Vec<Line>,
}

#[derive(Default, Clone)]
pub struct TailHub {
    agents: Arc<Mutex<HashMap<String, broadcast::Sender<Arc<TailBatch>>>>>,
}

impl TailHub {
    /// Follows `agent_id` from now on.
    pub fn subscribe(&self, agent_id: &str) -> broadcast::Receiver<Arc<TailBatch>> {
        let mut agents = self.agents.lock().unwrap_or_else(|p| p.into_inner());
        agents
            .entry(agent_id.to_string())
            .or_insert_with(|| broadcast::channel(TAIL_CAPACITY).0)
            .subscribe()
    }

    /// Whether anyone follows `agent_id` (lets ingest skip building batches).
    pub fn has_followers(&self, agent_id: &str) -> bool {
        let agents = self.agents.lock().unwrap_or_else(|p| p.into_inner());
        agents
            .get(agent_id)
            .is_some_and(|tx| tx.receiver_count() > 0)
    }

    /// Hands a batch to the agent's followers, if any. Never blocks.
    pub fn publish(&self, agent_id: &str, batch: TailBatch) {
        let mut agents = self.agents.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(tx) = agents.get(agent_id) {
            if tx.send(Arc::new(batch)).is_err() {
                // Every follower has gone.
                agents.remove(agent_id);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(server: &str, text: &str) -> TailBatch {
        TailBatch {
            agent_server_id: Arc::from(server),
            lines: vec![Line {
                data: bytes::Bytes::from(text.to_string()),
                ..Default::default()
            }],
        }
    }

    #[tokio::test]
    async fn followers_of_one_agent_never_see_another_agents_lines() {
        let hub = TailHub::default();
        let mut a = hub.subscribe("agent-a");
        let mut b = hub.subscribe("agent-b");
        hub.publish("agent-a", batch("r1", "for a"));
        assert_eq!(&a.recv().await.unwrap().lines[0].data[..], b"for a");
        assert!(b.try_recv().is_err());
    }

    #[test]
    fn publishing_without_followers_keeps_nothing() {
        let hub = TailHub::default();
        hub.publish("agent-a", batch("r1", "x"));
        assert!(!hub.has_followers("agent-a"));
        drop(hub.subscribe("agent-a"));
        hub.publish("agent-a", batch("r1", "x"));
        assert!(hub.agents.lock().unwrap().is_empty());
    }
}
