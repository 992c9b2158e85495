//! The key layout of the queue's sled tree.
//!
//! Every key starts with one kind byte. Variable-length parts (agent ids,
//! server ids, boot ids, destination names, credential ids) are
//! length-prefixed (u32 big-endian), so an id may contain any byte, `/`
//! included, and one agent's keys can never be a prefix of another's.
//! Segment ids are big-endian so sled's key order is queue order per agent.
//!
//! | kind | key                                            | value                   |
//! |------|------------------------------------------------|-------------------------|
//! | `c`  | `c` agent kind cred                            | committed cursor        |
//! | `h`  | `h` agent server boot                          | high-water mark (u64)   |
//! | `m`  | `m` name                                       | metadata (format)       |
//! | `r`  | `r` agent kind cred                            | route record + secrets  |
//! | `s`  | `s` agent segment-id(u64)                      | segment header + where its lines are |
//!
//! This module only builds and parses keys; it must not touch the database.

use crate::route::{DestinationKind, RouteKey};

const CURSOR: u8 = b'c';
const HWM: u8 = b'h';
const META: u8 = b'm';
const ROUTE: u8 = b'r';
const SEGMENT: u8 = b's';

/// Key of the format marker.
pub(crate) const FORMAT_KEY: &[u8] = b"mformat";

/// What a key of the tree addresses.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Parsed {
    Segment { agent_id: String, segment: u64 },
    Route(RouteKey),
    Cursor(RouteKey),
    Hwm,
    Meta,
}

pub(crate) fn segment(agent_id: &str, segment: u64) -> Vec<u8> {
    let mut key = Vec::with_capacity(1 + 4 + agent_id.len() + 8);
    key.push(SEGMENT);
    push_part(&mut key, agent_id.as_bytes());
    key.extend_from_slice(&segment.to_be_bytes());
    key
}

pub(crate) fn route(route: &RouteKey) -> Vec<u8> {
    route_like(ROUTE, route)
}

pub(crate) fn cursor(route: &RouteKey) -> Vec<u8> {
    route_like(CURSOR, route)
}

/// Prefix shared by every route record.
pub(crate) fn route_prefix() -> [u8; 1] {
    [ROUTE]
}

pub(crate) fn hwm(agent_id: &str, agent_server_id: &str, boot_id: &str) -> Vec<u8> {
    let mut key =
        Vec::with_capacity(1 + 12 + agent_id.len() + agent_server_id.len() + boot_id.len());
    key.push(HWM);
    push_part(&mut key, agent_id.as_bytes());
    push_part(&mut key, agent_server_id.as_bytes());
    push_part(&mut key, boot_id.as_bytes());
    key
}

fn route_like(kind_byte: u8, route: &RouteKey) -> Vec<u8> {
    let kind = route.kind.name().as_bytes();
    let mut key =
        Vec::with_capacity(1 + 12 + route.agent_id.len() + kind.len() + route.cred_id.len());
    key.push(kind_byte);
    push_part(&mut key, route.agent_id.as_bytes());
    push_part(&mut key, kind);
    push_part(&mut key, route.cred_id.as_bytes());
    key
}

fn push_part(key: &mut Vec<u8>, part: &[u8]) {
    // Parts are ids of at most a few hundred bytes (the ingest bounds them);
    // a part over 4 GiB cannot reach this point through a 16 MiB message.
    let len = u32::try_from(part.len()).unwrap_or(u32::MAX);
    key.extend_from_slice(&len.to_be_bytes());
    key.extend_from_slice(part);
}

/// Parses a key of the tree; `None` if it matches no known layout.
pub(crate) fn parse(key: &[u8]) -> Option<Parsed> {
    let (&kind_byte, rest) = key.split_first()?;
    let mut reader = Reader(rest);
    let parsed = match kind_byte {
        SEGMENT => {
            let agent_id = reader.string()?;
            let segment = reader.u64()?;
            Parsed::Segment { agent_id, segment }
        }
        ROUTE | CURSOR => {
            let agent_id = reader.string()?;
            let kind = DestinationKind::from_name(&reader.string()?)?;
            let cred_id = reader.string()?;
            let route = RouteKey {
                agent_id,
                kind,
                cred_id,
            };
            if kind_byte == ROUTE {
                Parsed::Route(route)
            } else {
                Parsed::Cursor(route)
            }
        }
        HWM => {
            reader.part()?;
            reader.part()?;
            reader.part()?;
            Parsed::Hwm
        }
        META => {
            reader.0 = &[];
            Parsed::Meta
        }
        _ => return None,
    };
    reader.0.is_empty().then_some(parsed)
}

/// A printable description of a key for errors and logs (never holds a
/// secret: keys contain ids only).
pub(crate) fn describe(key: &[u8]) -> String {
    match parse(key) {
        Some(Parsed::Segment { agent_id, segment }) => {
            format!("segment {segment} of agent {agent_id:?}")
        }
        Some(Parsed::Route(route)) => format!("route record {route}"),
        Some(Parsed::Cursor(route)) => format!("cursor of route {route}"),
        _ => format!("\"{}\"", key.escape_ascii()),
    }
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        Some(head)
    }

    fn part(&mut self) -> Option<&'a [u8]> {
        let len = u32::from_be_bytes(self.take(4)?.try_into().ok()?);
        self.take(usize::try_from(len).ok()?)
    }

    fn string(&mut self) -> Option<String> {
        String::from_utf8(self.part()?.to_vec()).ok()
    }

    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_be_bytes(self.take(8)?.try_into().ok()?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route_key(agent: &str) -> RouteKey {
        RouteKey {
            agent_id: agent.to_string(),
            kind: DestinationKind::Datadog,
            cred_id: "c0ffee".to_string(),
        }
    }

    #[test]
    fn keys_round_trip_through_parse() {
        assert_eq!(
            parse(&segment("a/b", 7)),
            Some(Parsed::Segment {
                agent_id: "a/b".to_string(),
                segment: 7
            })
        );
        assert_eq!(
            parse(&route(&route_key("x"))),
            Some(Parsed::Route(route_key("x")))
        );
        assert_eq!(
            parse(&cursor(&route_key("x"))),
            Some(Parsed::Cursor(route_key("x")))
        );
        assert_eq!(parse(&hwm("a", "s", "b")), Some(Parsed::Hwm));
        assert_eq!(parse(FORMAT_KEY), Some(Parsed::Meta));
        assert_eq!(parse(b"zzz"), None);
        assert_eq!(parse(&segment("a", 7)[..5]), None);
    }

    #[test]
    fn agent_ids_that_prefix_each_other_get_disjoint_key_ranges() {
        // "a" must not sort inside "ab"'s range, whatever bytes follow.
        let a = segment("a", u64::MAX);
        let ab_first = segment("ab", 0);
        assert!(!ab_first.starts_with(&a[..a.len() - 8]));
    }

    #[test]
    fn segment_keys_sort_in_segment_order() {
        assert!(segment("a", 255) < segment("a", 256));
        assert!(segment("a", 1) < segment("a", u64::MAX));
    }
}
