//! The replica registry: for each agent, which agent-server replicas this
//! gateway has heard from, when it last did, how many of their streams are
//! open, how many lines their shims say they dropped, and how many secret
//! values they masked, per variable name.
//!
//! It is bounded: at most [`MAX_REPLICAS_PER_AGENT`] replicas are remembered
//! per agent; a new replica beyond that replaces the one seen longest ago
//! (one without an open stream first). Agents themselves need a token signed
//! by the gateway's key to appear here. It lives in memory only: after a
//! restart it fills again as shims reconnect. It is written by ingest and
//! only read by the status reports; it must not hold lines or secrets.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

/// Most replicas remembered per agent (the most recently seen ones).
pub const MAX_REPLICAS_PER_AGENT: usize = 1_000;
/// Most variable names whose masked counts are kept per replica.
pub const MAX_REDACTED_NAMES: usize = 64;
/// Longest variable name kept with a masked count.
pub const MAX_REDACTED_NAME_BYTES: usize = 128;

/// What the gateway knows about one replica of an agent.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicaInfo {
    pub agent_server_id: String,
    /// Open `Ship` streams from it now (0: disconnected).
    pub connected_streams: u32,
    /// Last stream opened or closed, or batch received (Unix seconds).
    pub last_seen_unix: u64,
    /// Lines its shim's buffer dropped since the shim started, as the shim
    /// last reported it.
    pub shim_dropped_total: u64,
    /// Secret values its shim masked since it started, by variable name,
    /// as the shim last reported them (names only, never values).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub shim_redacted_total: BTreeMap<String, u64>,
    /// The gateway holding the replica's streams (its name in the fleet).
    #[serde(default)]
    pub gateway: String,
}

#[derive(Debug)]
struct Entry {
    connected_streams: u32,
    last_seen: SystemTime,
    shim_dropped_total: u64,
    shim_redacted_total: BTreeMap<String, u64>,
}

/// Shared registry; cheap to clone.
#[derive(Clone, Debug, Default)]
pub struct Replicas(Arc<Mutex<HashMap<String, HashMap<String, Entry>>>>);

impl Replicas {
    fn lock(&self) -> MutexGuard<'_, HashMap<String, HashMap<String, Entry>>> {
        // Plain counters: a poisoned lock still holds usable values.
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// A stream of `server` opened.
    pub fn stream_opened(&self, agent: &str, server: &str) {
        self.touch(agent, server, |e| {
            e.connected_streams = e.connected_streams.saturating_add(1)
        });
    }

    /// A stream of `server` closed.
    pub fn stream_closed(&self, agent: &str, server: &str) {
        self.touch(agent, server, |e| {
            e.connected_streams = e.connected_streams.saturating_sub(1)
        });
    }

    /// A batch arrived from `server`, whose shim reports `dropped_total`
    /// and the masked counts `redacted_total` (bounded in names kept).
    pub fn batch_received(
        &self,
        agent: &str,
        server: &str,
        dropped_total: u64,
        redacted_total: &HashMap<String, u64>,
    ) {
        self.touch(agent, server, |e| {
            e.shim_dropped_total = e.shim_dropped_total.max(dropped_total);
            for (name, &count) in redacted_total {
                if name.len() > MAX_REDACTED_NAME_BYTES {
                    continue;
                }
                let room = e.shim_redacted_total.len() < MAX_REDACTED_NAMES;
                match e.shim_redacted_total.get_mut(name) {
                    Some(kept) => *kept = (*kept).max(count),
                    None if room => {
                        e.shim_redacted_total.insert(name.clone(), count);
                    }
                    None => {}
                }
            }
        });
    }

    fn touch(&self, agent: &str, server: &str, f: impl FnOnce(&mut Entry)) {
        let now = SystemTime::now();
        let mut agents = self.lock();
        let replicas = agents.entry(agent.to_string()).or_default();
        if !replicas.contains_key(server) && replicas.len() >= MAX_REPLICAS_PER_AGENT {
            evict_one(replicas);
        }
        let entry = replicas.entry(server.to_string()).or_insert(Entry {
            connected_streams: 0,
            last_seen: now,
            shim_dropped_total: 0,
            shim_redacted_total: BTreeMap::new(),
        });
        entry.last_seen = now;
        f(entry);
    }

    /// The agents that have replicas on record, sorted.
    pub fn agents(&self) -> Vec<String> {
        let mut agents: Vec<String> = self.lock().keys().cloned().collect();
        agents.sort();
        agents
    }

    /// The replicas of `agent`, sorted by agent-server id.
    pub fn of(&self, agent: &str) -> Vec<ReplicaInfo> {
        let agents = self.lock();
        let mut list: Vec<ReplicaInfo> = agents
            .get(agent)
            .into_iter()
            .flatten()
            .map(|(id, e)| ReplicaInfo {
                agent_server_id: id.clone(),
                connected_streams: e.connected_streams,
                last_seen_unix: e
                    .last_seen
                    .duration_since(SystemTime::UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs()),
                shim_dropped_total: e.shim_dropped_total,
                shim_redacted_total: e.shim_redacted_total.clone(),
                gateway: String::new(),
            })
            .collect();
        list.sort_by(|a, b| a.agent_server_id.cmp(&b.agent_server_id));
        list
    }
}

/// Forgets the replica seen longest ago, preferring one with no open stream.
fn evict_one(replicas: &mut HashMap<String, Entry>) {
    let victim = replicas
        .iter()
        .min_by_key(|(_, e)| (e.connected_streams > 0, e.last_seen))
        .map(|(id, _)| id.clone());
    if let Some(id) = victim {
        replicas.remove(&id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_replica_counts_its_open_streams_and_its_shims_drops() {
        let replicas = Replicas::default();
        replicas.stream_opened("a1", "r1");
        replicas.stream_opened("a1", "r1");
        replicas.batch_received("a1", "r1", 7, &HashMap::new());
        replicas.batch_received("a1", "r1", 3, &HashMap::new());
        replicas.stream_closed("a1", "r1");
        let list = replicas.of("a1");
        assert_eq!(list.len(), 1);
        assert_eq!(list[0].connected_streams, 1);
        assert_eq!(list[0].shim_dropped_total, 7);
        replicas.stream_closed("a1", "r1");
        assert_eq!(replicas.of("a1")[0].connected_streams, 0);
        assert!(replicas.of("a2").is_empty());
    }

    #[test]
    fn the_registry_keeps_at_most_the_limit_and_keeps_connected_replicas() {
        let replicas = Replicas::default();
        replicas.stream_opened("a1", "connected");
        for i in 0..MAX_REPLICAS_PER_AGENT + 5 {
            replicas.batch_received("a1", &format!("r{i}"), 0, &HashMap::new());
        }
        let list = replicas.of("a1");
        assert_eq!(list.len(), MAX_REPLICAS_PER_AGENT);
        assert!(list.iter().any(|r| r.agent_server_id == "connected"));
        let newest = format!("r{}", MAX_REPLICAS_PER_AGENT + 4);
        assert!(list.iter().any(|r| r.agent_server_id == newest));
    }

    #[test]
    fn masked_counts_are_kept_per_name_as_last_reported_within_bounds() {
        let replicas = Replicas::default();
        let report = |pairs: &[(&str, u64)]| -> HashMap<String, u64> {
            pairs.iter().map(|(n, c)| (n.to_string(), *c)).collect()
        };
        replicas.batch_received("a1", "r1", 0, &report(&[("OPENAI_API_KEY", 3)]));
        replicas.batch_received(
            "a1",
            "r1",
            0,
            &report(&[("OPENAI_API_KEY", 2), ("DB_PASSWORD", 1)]),
        );
        let long = "X".repeat(MAX_REDACTED_NAME_BYTES + 1);
        replicas.batch_received("a1", "r1", 0, &report(&[(&long, 1)]));
        let many: Vec<(String, u64)> = (0..2 * MAX_REDACTED_NAMES)
            .map(|i| (format!("N{i}_KEY"), 1))
            .collect();
        replicas.batch_received("a1", "r1", 0, &many.into_iter().collect());
        let kept = &replicas.of("a1")[0].shim_redacted_total;
        assert_eq!(kept.get("OPENAI_API_KEY"), Some(&3));
        assert_eq!(kept.get("DB_PASSWORD"), Some(&1));
        assert!(!kept.contains_key(&long));
        assert_eq!(kept.len(), MAX_REDACTED_NAMES);
    }
}
