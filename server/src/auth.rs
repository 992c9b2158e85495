//! Ingest tokens: who may write or tail an agent's lines.
//!
//! A token is an HMAC-SHA256 of the agent id under the gateway's signing key,
//! so a token is bound to exactly one agent id and the gateway needs no token
//! database. The signing key comes from `LOGDRAIN_SIGNING_KEY`, or is
//! generated into the data dir on first start. Gateways that share a key
//! accept each other's tokens (needed for failover).
//!
//! This module owns the key and token format. It must never log the key or a
//! token.

use std::fmt;
use std::io::Write;
use std::path::{Path, PathBuf};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::queue::SealKey;

const TOKEN_PREFIX: &str = "ld1_";
/// The generated signing key's file in the data dir.
pub const KEY_FILE: &str = "signing.key";
/// Shortest signing key accepted from the environment, in bytes.
pub const MIN_KEY_BYTES: usize = 16;

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("LOGDRAIN_SIGNING_KEY is {len} bytes long; use at least {MIN_KEY_BYTES} random bytes (for example the output of `openssl rand -hex 32`)")]
    KeyTooShort { len: usize },
    #[error("cannot read the signing key file {path}: {source}; fix its permissions, or set LOGDRAIN_SIGNING_KEY")]
    ReadKey {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot create the signing key file {path}: {source}; make the data dir writable, or set LOGDRAIN_SIGNING_KEY")]
    WriteKey {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the signing key file {path} is empty or shorter than {MIN_KEY_BYTES} bytes; delete it to generate a new one (this invalidates issued tokens), or set LOGDRAIN_SIGNING_KEY")]
    KeyFileInvalid { path: PathBuf },
}

/// The gateway's secret signing key.
#[derive(Clone)]
pub struct SigningKey(Vec<u8>);

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SigningKey(<redacted>)")
    }
}

impl SigningKey {
    /// Uses `from_env` when given; otherwise reads `<data_dir>/signing.key`,
    /// generating it (32 random bytes, mode 0600) if it does not exist.
    pub fn load(from_env: Option<&str>, data_dir: &Path) -> Result<Self, AuthError> {
        if let Some(value) = from_env {
            let bytes = value.trim().as_bytes().to_vec();
            if bytes.len() < MIN_KEY_BYTES {
                return Err(AuthError::KeyTooShort { len: bytes.len() });
            }
            return Ok(Self(bytes));
        }
        let path = data_dir.join(KEY_FILE);
        match std::fs::read(&path) {
            Ok(bytes) => {
                let trimmed = String::from_utf8_lossy(&bytes).trim().as_bytes().to_vec();
                if trimmed.len() < MIN_KEY_BYTES {
                    return Err(AuthError::KeyFileInvalid { path });
                }
                Ok(Self(trimmed))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Self::generate(&path),
            Err(source) => Err(AuthError::ReadKey { path, source }),
        }
    }

    fn generate(path: &Path) -> Result<Self, AuthError> {
        let write_err = |source| AuthError::WriteKey {
            path: path.to_path_buf(),
            source,
        };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(write_err)?;
        }
        let key = hex::encode(rand::random::<[u8; 32]>());
        let opened = {
            use std::os::unix::fs::OpenOptionsExt;
            std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(path)
        };
        let mut file = match opened {
            Ok(file) => file,
            // Another process created it first: use theirs.
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                return Self::load(None, path.parent().unwrap_or(Path::new(".")));
            }
            Err(e) => return Err(write_err(e)),
        };
        file.write_all(key.as_bytes()).map_err(write_err)?;
        file.sync_all().map_err(write_err)?;
        Ok(Self(key.into_bytes()))
    }

    #[cfg(test)]
    pub fn for_tests(bytes: &[u8]) -> Self {
        Self(bytes.to_vec())
    }

    fn mac(&self, domain: &str) -> Hmac<Sha256> {
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.0)
            .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
        mac.update(domain.as_bytes());
        mac.update(&[0]);
        mac
    }

    /// The ingest token for `agent_id`.
    pub fn token(&self, agent_id: &str) -> String {
        let mut mac = self.mac("logdrain-ingest-token-v1");
        mac.update(agent_id.as_bytes());
        format!(
            "{TOKEN_PREFIX}{}",
            URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes())
        )
    }

    /// Whether `token` was issued for `agent_id` (constant-time compare).
    pub fn verify(&self, agent_id: &str, token: &str) -> bool {
        let Some(encoded) = token.trim().strip_prefix(TOKEN_PREFIX) else {
            return false;
        };
        let Ok(tag) = URL_SAFE_NO_PAD.decode(encoded) else {
            return false;
        };
        let mut mac = self.mac("logdrain-ingest-token-v1");
        mac.update(agent_id.as_bytes());
        mac.verify_slice(&tag).is_ok()
    }

    /// The boot id under which `logdrain-gateway handoff` ships the lines of
    /// one original boot for one route: 32 hex digits, the same on every
    /// run (so a peer de-duplicates a re-run), never a shim's (those are
    /// random) and unknown to anyone without the key.
    pub fn handoff_boot_id(
        &self,
        agent_id: &str,
        agent_server_id: &str,
        boot_id: &str,
        route: &str,
    ) -> String {
        let mut mac = self.mac("logdrain-handoff-boot-v1");
        for part in [agent_id, agent_server_id, boot_id, route] {
            mac.update(&(part.len() as u64).to_be_bytes());
            mac.update(part.as_bytes());
        }
        hex::encode(&mac.finalize().into_bytes()[..16])
    }

    /// What a handoff stream presents to show a gateway of the fleet opened
    /// it (`Open.handoff.proof`).
    pub fn handoff_proof(&self, agent_id: &str, agent_server_id: &str, boot_id: &str) -> String {
        URL_SAFE_NO_PAD.encode(
            self.handoff_mac(agent_id, agent_server_id, boot_id)
                .finalize()
                .into_bytes(),
        )
    }

    /// Whether `proof` is [`SigningKey::handoff_proof`] of these ids
    /// (constant-time compare).
    pub fn verify_handoff(
        &self,
        agent_id: &str,
        agent_server_id: &str,
        boot_id: &str,
        proof: &str,
    ) -> bool {
        let Ok(tag) = URL_SAFE_NO_PAD.decode(proof.trim()) else {
            return false;
        };
        self.handoff_mac(agent_id, agent_server_id, boot_id)
            .verify_slice(&tag)
            .is_ok()
    }

    fn handoff_mac(&self, agent_id: &str, agent_server_id: &str, boot_id: &str) -> Hmac<Sha256> {
        let mut mac = self.mac("logdrain-handoff-proof-v1");
        for part in [agent_id, agent_server_id, boot_id] {
            mac.update(&(part.len() as u64).to_be_bytes());
            mac.update(part.as_bytes());
        }
        mac
    }

    /// The key that encrypts route secrets at rest, derived from this key
    /// with HKDF-SHA256 under a label of its own.
    pub fn seal_key(&self) -> SealKey {
        SealKey::derive(&self.0)
    }

    /// A key derived for hashing destination credentials into route ids, so
    /// ids are stable per gateway fleet but reveal nothing about secrets.
    pub fn credential_hash_key(&self) -> Vec<u8> {
        self.mac("logdrain-credential-id-v1")
            .finalize()
            .into_bytes()
            .to_vec()
    }
}

/// Who may read status: an agent's own token reads that agent, the admin
/// token reads every agent. One rule for the HTTP API, the status page and
/// the peers' `Status` calls.
#[derive(Clone, Debug)]
pub struct ReadAccess {
    pub key: SigningKey,
    pub admin_token: Option<crate::config::AdminToken>,
}

/// Why a status read is refused; each message names the fix.
#[derive(Debug, thiserror::Error)]
pub enum ReadDenied {
    #[error(transparent)]
    BadAgentId(#[from] logdrain::ids::IdError),
    #[error("send `Authorization: Bearer <token>` with this agent's own token (`logdrain-gateway token --agent-id <id>`) or the gateway's admin token")]
    NotThisAgent,
    #[error("the all-agents status is disabled: start the gateway with --admin-token / LOGDRAIN_ADMIN_TOKEN, or ask for one agent with its own token (GET /v1/agents/<id>/status, or `status --agent-id <id> --token <token>`)")]
    AllDisabled,
    #[error("send `Authorization: Bearer <admin token>` with the gateway's --admin-token")]
    NotAdmin,
}

impl ReadAccess {
    fn is_admin(&self, token: &str) -> bool {
        use sha2::Digest;
        // Compared as digests: the time taken says nothing about the token.
        self.admin_token.as_ref().is_some_and(|admin| {
            Sha256::digest(admin.as_str().as_bytes()) == Sha256::digest(token.trim().as_bytes())
        })
    }

    /// The caller may read `agent_id` (its own token, or the admin token).
    pub fn may_read(&self, agent_id: &str, token: &str) -> Result<(), ReadDenied> {
        logdrain::ids::check_agent_id(agent_id)?;
        if self.key.verify(agent_id, token) || self.is_admin(token) {
            return Ok(());
        }
        Err(ReadDenied::NotThisAgent)
    }

    /// The caller may read every agent (the admin token).
    pub fn may_read_all(&self, token: &str) -> Result<(), ReadDenied> {
        match &self.admin_token {
            None => Err(ReadDenied::AllDisabled),
            Some(_) if self.is_admin(token) => Ok(()),
            Some(_) => Err(ReadDenied::NotAdmin),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_verifies_only_for_its_own_agent() {
        let key = SigningKey::for_tests(b"0123456789abcdef0123");
        let token = key.token("agent-a");
        assert!(key.verify("agent-a", &token));
        assert!(!key.verify("agent-b", &token));
        assert!(!key.verify("agent-a", "ld1_garbage"));
        assert!(!key.verify("agent-a", ""));
    }

    #[test]
    fn token_from_another_key_is_refused() {
        let a = SigningKey::for_tests(b"0123456789abcdef0123");
        let b = SigningKey::for_tests(b"fedcba9876543210fedc");
        assert!(!b.verify("agent-a", &a.token("agent-a")));
    }

    #[test]
    fn generated_key_is_reused_on_next_start() {
        let dir = tempfile::tempdir().unwrap();
        let first = SigningKey::load(None, dir.path()).unwrap();
        let second = SigningKey::load(None, dir.path()).unwrap();
        assert_eq!(first.token("x"), second.token("x"));
    }

    #[test]
    fn short_key_from_env_is_refused_with_the_fix() {
        let err = SigningKey::load(Some("short"), Path::new("/nonexistent")).unwrap_err();
        assert!(err.to_string().contains("at least 16"));
    }

    #[test]
    fn a_handoff_boot_is_stable_per_boot_and_route_and_its_proof_binds_the_ids() {
        let key = SigningKey::for_tests(b"0123456789abcdef0123");
        let boot = key.handoff_boot_id("a", "r", "b1", "datadog/c1");
        assert_eq!(boot, key.handoff_boot_id("a", "r", "b1", "datadog/c1"));
        assert_eq!(boot.len(), 32);
        assert!(boot.bytes().all(|b| b.is_ascii_hexdigit()));
        for other in [
            key.handoff_boot_id("a", "r", "b1", "datadog/c2"),
            key.handoff_boot_id("a", "r", "b2", "datadog/c1"),
            key.handoff_boot_id("a", "r2", "b1", "datadog/c1"),
            SigningKey::for_tests(b"fedcba9876543210fedc").handoff_boot_id(
                "a",
                "r",
                "b1",
                "datadog/c1",
            ),
        ] {
            assert_ne!(boot, other);
        }
        let proof = key.handoff_proof("a", "r", &boot);
        assert!(key.verify_handoff("a", "r", &boot, &proof));
        assert!(!key.verify_handoff("b", "r", &boot, &proof));
        assert!(!key.verify_handoff("a", "r", "b1", &proof));
        assert!(!key.verify_handoff("a", "r", &boot, &key.token("a")));
        let other = SigningKey::for_tests(b"fedcba9876543210fedc");
        assert!(!other.verify_handoff("a", "r", &boot, &proof));
    }

    #[test]
    fn debug_never_shows_the_key() {
        let key = SigningKey::for_tests(b"0123456789abcdef0123");
        assert!(!format!("{key:?}").contains("0123"));
    }
}
