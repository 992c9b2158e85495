//! Encoding of the small stored values: high-water marks, cursors, route
//! records, and the checksummed frame that segments and route records share.
//!
//! Route secrets become bytes in exactly one function pair,
//! [`seal_secrets`] / [`unseal_secrets`], which encrypts them (`seal.rs`).
//! Nothing here formats a secret: the stored-route message has no `Debug`.
//! Decoding never panics on bad bytes; it returns a [`RecordError`].

use std::collections::BTreeMap;

use super::error::RecordError;
use super::seal::SealKey;
use super::Cursor;
use crate::route::Secrets;

/// Version byte of framed values (segments and route records).
pub(crate) const FRAME_VERSION: u8 = 1;

/// Bytes before a framed value's body: version (1) and CRC-32 (4).
pub(crate) const FRAME_HEADER_LEN: usize = 5;

/// Starts a framed value: version byte and room for the checksum. Append
/// the body, then call [`frame_finish`].
pub(crate) fn frame_start(body_capacity: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(FRAME_HEADER_LEN + body_capacity);
    out.extend_from_slice(&[FRAME_VERSION, 0, 0, 0, 0]);
    out
}

/// Writes the CRC-32 (big-endian) of the body into a value begun with
/// [`frame_start`].
pub(crate) fn frame_finish(mut out: Vec<u8>) -> Vec<u8> {
    let crc = crc32fast::hash(&out[FRAME_HEADER_LEN..]);
    out[1..FRAME_HEADER_LEN].copy_from_slice(&crc.to_be_bytes());
    out
}

/// Checks a framed value's version and checksum; returns the offset of its
/// body.
pub(crate) fn unframe(value: &[u8]) -> Result<usize, RecordError> {
    if value.len() < FRAME_HEADER_LEN {
        return Err(RecordError::TooShort {
            found: value.len(),
            min: FRAME_HEADER_LEN,
        });
    }
    if value[0] != FRAME_VERSION {
        return Err(RecordError::Version(value[0]));
    }
    let stored = u32::from_be_bytes([value[1], value[2], value[3], value[4]]);
    let computed = crc32fast::hash(&value[FRAME_HEADER_LEN..]);
    if stored != computed {
        return Err(RecordError::Checksum { stored, computed });
    }
    Ok(FRAME_HEADER_LEN)
}

pub(crate) fn encode_hwm(seq: u64) -> [u8; 8] {
    seq.to_be_bytes()
}

pub(crate) fn decode_hwm(value: &[u8]) -> Result<u64, RecordError> {
    let bytes: [u8; 8] = value.try_into().map_err(|_| RecordError::Length {
        found: value.len(),
        expected: 8,
    })?;
    Ok(u64::from_be_bytes(bytes))
}

pub(crate) fn encode_cursor(cursor: Cursor) -> [u8; 12] {
    let mut out = [0; 12];
    out[..8].copy_from_slice(&cursor.segment.to_be_bytes());
    out[8..].copy_from_slice(&cursor.index.to_be_bytes());
    out
}

pub(crate) fn decode_cursor(value: &[u8]) -> Result<Cursor, RecordError> {
    let bytes: [u8; 12] = value.try_into().map_err(|_| RecordError::Length {
        found: value.len(),
        expected: 12,
    })?;
    let mut segment = [0; 8];
    let mut index = [0; 4];
    segment.copy_from_slice(&bytes[..8]);
    index.copy_from_slice(&bytes[8..]);
    Ok(Cursor {
        segment: u64::from_be_bytes(segment),
        index: u32::from_be_bytes(index),
    })
}

/// A route record as stored. Deliberately without `Debug`.
#[derive(Clone, PartialEq, prost::Message)]
#[prost(skip_debug)]
struct StoredSecrets {
    #[prost(btree_map = "string, string", tag = "1")]
    secrets: BTreeMap<String, String>,
    /// When the gateway first saw these credentials (Unix ms; 0 unknown).
    #[prost(uint64, tag = "2")]
    first_seen_ms: u64,
}

/// Turns a route's secrets into the bytes stored on disk: the protobuf
/// record, encrypted under `key` and bound to `context` (the route's sled
/// key).
///
/// With [`unseal_secrets`], the only place secrets cross the storage
/// boundary.
pub(crate) fn seal_secrets(
    key: &SealKey,
    context: &[u8],
    secrets: &Secrets,
    first_seen_ms: u64,
) -> Vec<u8> {
    let stored = StoredSecrets {
        secrets: secrets.0.clone(),
        first_seen_ms,
    };
    key.seal(context, &prost::Message::encode_to_vec(&stored))
}

/// Reads secrets stored by [`seal_secrets`], with when they were first seen.
pub(crate) fn unseal_secrets(
    key: &SealKey,
    context: &[u8],
    value: &[u8],
) -> Result<(Secrets, u64), RecordError> {
    let stored: StoredSecrets = prost::Message::decode(key.open(context, value)?.as_slice())?;
    Ok((Secrets(stored.secrets), stored.first_seen_ms))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secrets() -> Secrets {
        Secrets(BTreeMap::from([(
            "DATADOG_TOKEN".to_string(),
            "tok-visible-in-plain".to_string(),
        )]))
    }

    #[test]
    fn sealed_secrets_round_trip_and_are_not_readable_on_disk() {
        let key = SealKey::derive(b"0123456789abcdef0123");
        let mut sealed = seal_secrets(&key, b"r/route", &secrets(), 7);
        assert!(!sealed.windows(20).any(|w| w == b"tok-visible-in-plain"));
        assert_eq!(
            unseal_secrets(&key, b"r/route", &sealed).ok(),
            Some((secrets(), 7))
        );
        let last = sealed.len() - 1;
        sealed[last] ^= 0xff;
        assert!(matches!(
            unseal_secrets(&key, b"r/route", &sealed),
            Err(RecordError::Unauthentic)
        ));
        assert!(unseal_secrets(&key, b"r/route", &[]).is_err());
        assert!(matches!(
            unseal_secrets(&key, b"r/route", &[9; 40]),
            Err(RecordError::Version(9))
        ));
    }

    #[test]
    fn a_record_sealed_under_another_key_names_the_signing_key_as_the_fix() {
        let old = SealKey::derive(b"0123456789abcdef0123");
        let new = SealKey::derive(b"fedcba9876543210fedc");
        let sealed = seal_secrets(&old, b"r/route", &secrets(), 0);
        let err = unseal_secrets(&new, b"r/route", &sealed).unwrap_err();
        assert!(matches!(err, RecordError::OtherKey { .. }));
        let shown = err.to_string();
        assert!(shown.contains("signing key changed"), "{shown}");
        assert!(!shown.contains("tok-visible-in-plain"));
    }

    #[test]
    fn cursor_and_hwm_round_trip_and_reject_bad_lengths() {
        let cursor = Cursor {
            segment: 1 << 40,
            index: 7,
        };
        assert_eq!(decode_cursor(&encode_cursor(cursor)).ok(), Some(cursor));
        assert!(decode_cursor(&[1, 2, 3]).is_err());
        assert_eq!(decode_hwm(&encode_hwm(42)).ok(), Some(42));
        assert!(decode_hwm(&[0; 9]).is_err());
    }
}
