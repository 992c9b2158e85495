//! Live boots: which (agent, agent-server id, boot id) a ship stream is
//! writing now. A boot belongs to the stream that opened it until that
//! stream stops reading.
//!
//! A boot's sequence numbers have one writer. A second stream presenting a
//! live boot is refused (`ABORTED`) instead of writing into it: a forged
//! batch far ahead would otherwise lift the boot's high-water mark, and the
//! real shim's later lines would be acked as resends without being stored.
//!
//! The reconnect case: a stream lets go of its boot as soon as it stops
//! reading, and before it tells the shim why it ends; a connection that
//! died silently is found by HTTP/2 pings (unanswered for 20 s). A shim
//! refused meanwhile (its old stream half-dead) does not wait: it starts a
//! new boot id and resends what it holds from seq 1, so at worst lines the
//! old stream stored but never acked arrive twice. No take-over: a second
//! stream never writes into a live boot, whoever sent it. The boot id is a
//! secret of the shim and the gateway: logs show only a [`fingerprint`].
//!
//! Bounded: one entry per admitted ship stream (at most `--max-streams`).
//! In memory only. This module must not hold lines or secrets, nor decide
//! which sequence numbers are new (the queue does).

use std::collections::HashSet;
use std::sync::{Arc, Mutex, MutexGuard};

use sha2::{Digest, Sha256};

/// (agent id, agent-server id, boot id)
type Key = (String, String, String);

/// The live boots; cheap to clone.
#[derive(Clone, Debug, Default)]
pub(crate) struct LiveBoots(Arc<Mutex<HashSet<Key>>>);

impl LiveBoots {
    fn lock(&self) -> MutexGuard<'_, HashSet<Key>> {
        // A set of keys: a poisoned lock still holds a usable one.
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Binds a boot to the calling stream; `None` while another stream holds
    /// it.
    pub(crate) fn bind(&self, agent: &str, server: &str, boot: &str) -> Option<BootBinding> {
        let key = (agent.to_string(), server.to_string(), boot.to_string());
        self.lock().insert(key.clone()).then(|| BootBinding {
            boots: self.clone(),
            key,
        })
    }
}

/// A stream's hold on its boot; dropping it releases the boot.
#[derive(Debug)]
pub(crate) struct BootBinding {
    boots: LiveBoots,
    key: Key,
}

impl Drop for BootBinding {
    fn drop(&mut self) {
        self.boots.lock().remove(&self.key);
    }
}

/// What logs show of a boot id: 8 hex digits of its SHA-256, enough to
/// follow one boot through the log, useless for forging it.
pub(crate) fn fingerprint(boot_id: &str) -> String {
    hex::encode(&Sha256::digest(boot_id.as_bytes())[..4])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_live_boot_has_one_stream_until_that_stream_lets_go() {
        let boots = LiveBoots::default();
        let first = boots.bind("a", "r", "b1").expect("a free boot binds");
        assert!(boots.bind("a", "r", "b1").is_none(), "live: refused");
        let others = [("a", "r", "b2"), ("a", "r2", "b1"), ("a2", "r", "b1")];
        let held: Vec<_> = others
            .iter()
            .map(|(a, r, b)| boots.bind(a, r, b).expect("another boot binds"))
            .collect();
        drop(first);
        assert!(boots.bind("a", "r", "b1").is_some(), "released");
        drop(held);
        assert!(boots.lock().is_empty());
    }

    #[test]
    fn a_fingerprint_does_not_show_the_boot_id() {
        let boot = "0123456789abcdef0123456789abcdef";
        let print = fingerprint(boot);
        assert_eq!(print.len(), 8);
        assert!(!boot.contains(&print));
        assert_eq!(print, fingerprint(boot), "stable within and across runs");
        assert_ne!(print, fingerprint("0123456789abcdef0123456789abcdee"));
    }
}
