//! Encryption at rest of route secrets: authenticated encryption
//! (ChaCha20-Poly1305, ring) under a key derived from the signing key.
//!
//! A sealed value is `[SEALED_VERSION][key id: 4][nonce: 12][ciphertext + tag: 16]`.
//! The nonce is random per record; the associated data is the version byte,
//! the key id and the record's sled key, so a sealed value copied under
//! another route's key does not open. The key id is an HKDF output of its
//! own (it reveals nothing about the key) and lets a record sealed under
//! another key be told apart from a damaged one.
//!
//! This module owns the cipher and the key id; it must not know what is
//! sealed (see `records.rs`) and must never format the key.

use std::fmt;

use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, CHACHA20_POLY1305, NONCE_LEN};
use ring::hkdf::{KeyType, Salt, HKDF_SHA256};

use super::error::RecordError;

/// Version byte of a sealed value.
pub(crate) const SEALED_VERSION: u8 = 2;
const KEY_ID_LEN: usize = 4;
const HEADER_LEN: usize = 1 + KEY_ID_LEN + NONCE_LEN;
const TAG_LEN: usize = 16;

/// HKDF info labels: one per use, so the derived keys are independent of
/// each other and of the ingest tokens made from the same signing key.
const CIPHER_LABEL: &[u8] = b"logdrain-secrets-at-rest-v1";
const KEY_ID_LABEL: &[u8] = b"logdrain-secrets-at-rest-key-id-v1";

/// The key that seals route secrets in the queue.
#[derive(Clone)]
pub struct SealKey {
    key: std::sync::Arc<LessSafeKey>,
    id: [u8; KEY_ID_LEN],
}

impl fmt::Debug for SealKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "SealKey(id {:08x}, <redacted>)",
            u32::from_be_bytes(self.id)
        )
    }
}

struct Len(usize);

impl KeyType for Len {
    fn len(&self) -> usize {
        self.0
    }
}

impl SealKey {
    /// Derives the sealing key from secret key material (the gateway's
    /// signing key) with HKDF-SHA256 under a label of its own.
    pub fn derive(material: &[u8]) -> Self {
        let prk = Salt::new(HKDF_SHA256, &[]).extract(material);
        let mut cipher_key = [0u8; 32];
        let mut id = [0u8; KEY_ID_LEN];
        // `expand` fails only when asked for more than 255 hash lengths;
        // 32 and 4 bytes are far below that.
        let filled = prk
            .expand(&[CIPHER_LABEL], Len(cipher_key.len()))
            .and_then(|okm| okm.fill(&mut cipher_key))
            .and_then(|()| prk.expand(&[KEY_ID_LABEL], Len(KEY_ID_LEN)))
            .and_then(|okm| okm.fill(&mut id));
        if filled.is_err() {
            unreachable!("HKDF-SHA256 can expand to 32 bytes");
        }
        let unbound = UnboundKey::new(&CHACHA20_POLY1305, &cipher_key)
            .unwrap_or_else(|_| unreachable!("ChaCha20-Poly1305 takes a 32-byte key"));
        Self {
            key: std::sync::Arc::new(LessSafeKey::new(unbound)),
            id,
        }
    }

    /// A short public fingerprint of the key, shown in errors.
    pub fn id(&self) -> u32 {
        u32::from_be_bytes(self.id)
    }

    /// Encrypts `plain`, bound to `context` (the record's sled key).
    pub(crate) fn seal(&self, context: &[u8], plain: &[u8]) -> Vec<u8> {
        let nonce_bytes: [u8; NONCE_LEN] = rand::random();
        let mut out = Vec::with_capacity(HEADER_LEN + plain.len() + TAG_LEN);
        out.push(SEALED_VERSION);
        out.extend_from_slice(&self.id);
        out.extend_from_slice(&nonce_bytes);
        let mut body = plain.to_vec();
        let aad = aad(&out[..1 + KEY_ID_LEN], context);
        if self
            .key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce_bytes),
                Aad::from(aad),
                &mut body,
            )
            .is_err()
        {
            unreachable!("ChaCha20-Poly1305 seals any record below 256 GiB");
        }
        out.extend_from_slice(&body);
        out
    }

    /// Decrypts a value made by [`SealKey::seal`] with the same `context`.
    pub(crate) fn open(&self, context: &[u8], sealed: &[u8]) -> Result<Vec<u8>, RecordError> {
        if sealed.len() < HEADER_LEN + TAG_LEN {
            return Err(RecordError::TooShort {
                found: sealed.len(),
                min: HEADER_LEN + TAG_LEN,
            });
        }
        if sealed[0] != SEALED_VERSION {
            return Err(RecordError::Version(sealed[0]));
        }
        let id = &sealed[1..1 + KEY_ID_LEN];
        if id != self.id {
            let mut found = [0u8; KEY_ID_LEN];
            found.copy_from_slice(id);
            return Err(RecordError::OtherKey {
                found: u32::from_be_bytes(found),
                expected: self.id(),
            });
        }
        let mut nonce = [0u8; NONCE_LEN];
        nonce.copy_from_slice(&sealed[1 + KEY_ID_LEN..HEADER_LEN]);
        let mut body = sealed[HEADER_LEN..].to_vec();
        let aad = aad(&sealed[..1 + KEY_ID_LEN], context);
        let plain_len = self
            .key
            .open_in_place(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(aad),
                &mut body,
            )
            .map_err(|_| RecordError::Unauthentic)?
            .len();
        body.truncate(plain_len);
        Ok(body)
    }
}

fn aad(header: &[u8], context: &[u8]) -> Vec<u8> {
    let mut aad = Vec::with_capacity(header.len() + context.len());
    aad.extend_from_slice(header);
    aad.extend_from_slice(context);
    aad
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_value_opens_with_the_same_key_and_context_only() {
        let key = SealKey::derive(b"0123456789abcdef0123");
        let sealed = key.seal(b"route-a", b"the secret");
        assert_eq!(key.open(b"route-a", &sealed).unwrap(), b"the secret");
        assert!(!sealed.windows(10).any(|w| w == b"the secret"));
        assert!(matches!(
            key.open(b"route-b", &sealed),
            Err(RecordError::Unauthentic)
        ));
        let other = SealKey::derive(b"fedcba9876543210fedc");
        assert!(matches!(
            other.open(b"route-a", &sealed),
            Err(RecordError::OtherKey { found, expected })
                if found == key.id() && expected == other.id()
        ));
    }

    #[test]
    fn each_seal_uses_a_fresh_nonce() {
        let key = SealKey::derive(b"0123456789abcdef0123");
        assert_ne!(key.seal(b"k", b"same"), key.seal(b"k", b"same"));
    }

    #[test]
    fn damaged_or_short_values_are_refused() {
        let key = SealKey::derive(b"0123456789abcdef0123");
        let mut sealed = key.seal(b"k", b"value");
        let last = sealed.len() - 1;
        sealed[last] ^= 1;
        assert!(matches!(
            key.open(b"k", &sealed),
            Err(RecordError::Unauthentic)
        ));
        assert!(matches!(
            key.open(b"k", &[SEALED_VERSION, 1, 2]),
            Err(RecordError::TooShort { .. })
        ));
    }

    #[test]
    fn debug_shows_the_key_id_only() {
        let key = SealKey::derive(b"0123456789abcdef0123");
        assert_eq!(
            format!("{key:?}"),
            format!("SealKey(id {:08x}, <redacted>)", key.id())
        );
    }
}
