//! Segment encoding: a run of consecutive lines of one stream, and the
//! routes they are tagged with, as a record of a segment file (`files.rs`
//! frames records; this module encodes what is inside them).
//!
//! A segment record's header ([`Header`], protobuf) is self-describing:
//! agent, agent-server id, boot id, segment id, first sequence number, line
//! count, data bytes, time span, route tags and each line's length. Its
//! body is the lines, each as `crc32 (4, big-endian) | Line (protobuf)`, so
//! one damaged byte loses only the line it is in. The route records a
//! segment's tags need (credentials sealed with the queue's [`SealKey`])
//! are written into the same file first ([`RouteRecord`]), so a file alone
//! is enough to deliver its lines.
//!
//! sled keeps a copy of each header without the line lengths, framed with a
//! checksum, plus where the record is ([`Header::location`]): the index
//! entry that open cross-checks against the files.
//!
//! Decoding checks every length and checksum and never panics on bad
//! bytes. This module must not touch the database or files.
//!
//! [`SealKey`]: super::SealKey

use bytes::{Buf, Bytes};
use logdrain::v1::Line;
use prost::Message;

use super::error::RecordError;
use super::files::Location;
use super::records::{frame_finish, frame_start, unframe};
use crate::route::{DestinationKind, RouteKey};

/// Most lines in one segment. A received batch with more is split into
/// several segments, so one read never decodes a huge record to hand out a
/// few lines.
pub(crate) const MAX_SEGMENT_LINES: usize = 1024;

/// Most line data bytes in one segment (a single longer line gets a segment
/// of its own).
pub(crate) const MAX_SEGMENT_DATA_BYTES: usize = 256 * 1024;

/// Bytes before each line in a segment body: its CRC-32.
const LINE_CRC_LEN: usize = 4;

/// What a segment says about itself, readable without decoding its lines.
#[derive(Clone, PartialEq, Message)]
pub(crate) struct Header {
    #[prost(string, tag = "1")]
    pub agent_server_id: String,
    #[prost(string, tag = "2")]
    pub boot_id: String,
    /// Sequence number of the first line (the stream's numbering).
    #[prost(uint64, tag = "3")]
    pub first_seq: u64,
    #[prost(uint64, tag = "4")]
    pub line_count: u64,
    /// Sum of the lines' data lengths.
    #[prost(uint64, tag = "5")]
    pub data_bytes: u64,
    #[prost(message, repeated, tag = "6")]
    pub routes: Vec<StoredTag>,
    /// Earliest and latest line timestamp (ns since the epoch, as the shim
    /// read them).
    #[prost(int64, tag = "7")]
    pub oldest_timestamp_ns: i64,
    #[prost(int64, tag = "8")]
    pub newest_timestamp_ns: i64,
    /// Where the record is (in sled's copy only).
    #[prost(uint64, tag = "9")]
    pub file: u64,
    #[prost(uint64, tag = "10")]
    pub offset: u64,
    #[prost(uint32, tag = "11")]
    pub length: u32,
    #[prost(string, tag = "13")]
    pub agent_id: String,
    #[prost(uint64, tag = "14")]
    pub segment: u64,
    /// Encoded length of each line (in the file's copy only).
    #[prost(uint32, repeated, tag = "15")]
    pub line_lens: Vec<u32>,
}

impl Header {
    /// Where the record is, as sled's copy says.
    pub(crate) fn location(&self) -> Location {
        Location {
            file: self.file,
            offset: self.offset,
            len: self.length,
        }
    }

    /// The last sequence number of the segment.
    pub(crate) fn last_seq(&self) -> u64 {
        self.first_seq
            .saturating_add(self.line_count.saturating_sub(1))
    }
}

/// One route a segment is tagged with (its agent is the segment's agent).
#[derive(Clone, PartialEq, Message)]
pub(crate) struct StoredTag {
    #[prost(string, tag = "1")]
    pub kind: String,
    #[prost(string, tag = "2")]
    pub cred_id: String,
}

impl StoredTag {
    pub(crate) fn of(route: &RouteKey) -> Self {
        StoredTag {
            kind: route.kind.name().to_string(),
            cred_id: route.cred_id.clone(),
        }
    }
}

/// A route and its sealed secrets, as written into a segment file.
/// Deliberately without `Debug`.
#[derive(Clone, PartialEq, Message)]
#[prost(skip_debug)]
pub(crate) struct RouteRecord {
    #[prost(string, tag = "1")]
    pub agent_id: String,
    #[prost(string, tag = "2")]
    pub kind: String,
    #[prost(string, tag = "3")]
    pub cred_id: String,
    /// Exactly the bytes of the sled route record (sealed).
    #[prost(bytes = "vec", tag = "4")]
    pub sealed: Vec<u8>,
}

impl RouteRecord {
    pub(crate) fn route(&self) -> Option<RouteKey> {
        Some(RouteKey {
            agent_id: self.agent_id.clone(),
            kind: DestinationKind::from_name(&self.kind)?,
            cred_id: self.cred_id.clone(),
        })
    }
}

/// A route record's bytes for a segment file.
pub(crate) fn encode_route(route: &RouteKey, sealed: &[u8]) -> Vec<u8> {
    RouteRecord {
        agent_id: route.agent_id.clone(),
        kind: route.kind.name().to_string(),
        cred_id: route.cred_id.clone(),
        sealed: sealed.to_vec(),
    }
    .encode_to_vec()
}

pub(crate) fn decode_route(bytes: &[u8]) -> Result<RouteRecord, RecordError> {
    Ok(RouteRecord::decode(bytes)?)
}

/// A header checked for sense: tags name known destinations and the line
/// count fits a cursor index.
pub(crate) struct CheckedHeader {
    pub header: Header,
    pub tags: Vec<(DestinationKind, String)>,
    pub lines: u32,
}

/// One encoded segment, with the sizes the index keeps.
pub(crate) struct Encoded {
    pub lines: u32,
    pub bytes: u64,
    /// Earliest and latest line timestamp (ns).
    pub span_ns: (i64, i64),
    /// With the segment id and line lengths set.
    pub header: Header,
    /// The lines, each after its CRC.
    pub body: Vec<u8>,
}

impl Encoded {
    /// The header as the segment file stores it.
    pub(crate) fn file_header(&self) -> Vec<u8> {
        self.header.encode_to_vec()
    }

    /// sled's copy of the header, for the record stored `at`.
    pub(crate) fn sled_value(&self, at: Location) -> Vec<u8> {
        sled_value(&self.header, at)
    }
}

/// sled's copy of `header` (line lengths left out) for a record stored `at`.
pub(crate) fn sled_value(header: &Header, at: Location) -> Vec<u8> {
    let header = Header {
        file: at.file,
        offset: at.offset,
        length: at.len,
        line_lens: Vec::new(),
        ..header.clone()
    };
    let mut out = frame_start(header.encoded_len());
    header.encode_raw(&mut out);
    frame_finish(out)
}

/// Encodes a received batch (whose first line has `first_seq`) as one or
/// more segments that share `header`'s stream identity and tags; segment
/// ids are taken from `next_id`.
pub(crate) fn encode_batch(
    header: Header,
    first_seq: u64,
    lines: Vec<Line>,
    mut next_id: impl FnMut() -> u64,
) -> Vec<Encoded> {
    let mut seq = first_seq;
    split(lines)
        .into_iter()
        .map(|chunk| {
            let header = Header {
                first_seq: seq,
                segment: next_id(),
                ..header.clone()
            };
            seq += chunk.len() as u64;
            encode(header, chunk)
        })
        .collect()
}

/// Splits a batch into runs that each fit one segment, keeping order.
pub(crate) fn split(mut lines: Vec<Line>) -> Vec<Vec<Line>> {
    let mut chunks = Vec::new();
    while !lines.is_empty() {
        let mut bytes = 0;
        let mut take = 0;
        for line in lines.iter().take(MAX_SEGMENT_LINES) {
            if take > 0 && bytes + line.data.len() > MAX_SEGMENT_DATA_BYTES {
                break;
            }
            bytes += line.data.len();
            take += 1;
        }
        let rest = lines.split_off(take);
        chunks.push(std::mem::replace(&mut lines, rest));
    }
    chunks
}

/// Encodes a segment of at most [`MAX_SEGMENT_LINES`] lines. Counts, span
/// and line lengths are set from `lines`.
pub(crate) fn encode(mut header: Header, lines: Vec<Line>) -> Encoded {
    header.line_count = lines.len() as u64;
    header.data_bytes = lines.iter().map(|l| l.data.len() as u64).sum();
    header.oldest_timestamp_ns = lines.iter().map(|l| l.timestamp_ns).min().unwrap_or(0);
    header.newest_timestamp_ns = lines.iter().map(|l| l.timestamp_ns).max().unwrap_or(0);
    let mut body = Vec::with_capacity(
        lines
            .iter()
            .map(|l| LINE_CRC_LEN + l.encoded_len())
            .sum::<usize>(),
    );
    header.line_lens = Vec::with_capacity(lines.len());
    for line in &lines {
        let start = body.len();
        body.extend_from_slice(&[0; LINE_CRC_LEN]);
        line.encode_raw(&mut body);
        let crc = crc32fast::hash(&body[start + LINE_CRC_LEN..]);
        body[start..start + LINE_CRC_LEN].copy_from_slice(&crc.to_be_bytes());
        // A line is at most the 16 MiB message limit.
        let len = u32::try_from(body.len() - start - LINE_CRC_LEN).unwrap_or(u32::MAX);
        header.line_lens.push(len);
    }
    Encoded {
        // Callers pass at most MAX_SEGMENT_LINES lines (see `split`).
        lines: u32::try_from(header.line_count).unwrap_or(u32::MAX),
        bytes: header.data_bytes,
        span_ns: (header.oldest_timestamp_ns, header.newest_timestamp_ns),
        header,
        body,
    }
}

/// Checks sled's copy of a header (frame version, checksum) and decodes it.
pub(crate) fn decode_sled_value(value: &[u8]) -> Result<CheckedHeader, RecordError> {
    let start = unframe(value)?;
    check(Header::decode(&value[start..])?)
}

/// Decodes the header of a segment record of a file; its line lengths must
/// match its line count.
pub(crate) fn decode_file_header(bytes: &[u8]) -> Result<CheckedHeader, RecordError> {
    let checked = check(Header::decode(bytes)?)?;
    if checked.header.line_lens.len() as u64 != checked.header.line_count {
        return Err(RecordError::LineCount {
            header: checked.header.line_count,
            found: checked.header.line_lens.len(),
        });
    }
    Ok(checked)
}

fn check(header: Header) -> Result<CheckedHeader, RecordError> {
    let lines = u32::try_from(header.line_count)
        .ok()
        .filter(|n| *n > 0)
        .ok_or(RecordError::BadLineCount(header.line_count))?;
    let tags = header
        .routes
        .iter()
        .map(|t| {
            DestinationKind::from_name(&t.kind)
                .map(|kind| (kind, t.cred_id.clone()))
                .ok_or_else(|| RecordError::Destination(t.kind.clone()))
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(CheckedHeader {
        header,
        tags,
        lines,
    })
}

/// The lines of a segment body that passed their checksum, each with its
/// index in the segment, and how many did not.
pub(crate) struct Decoded {
    pub lines: Vec<(u32, Line)>,
    pub damaged: u32,
}

/// Decodes a segment body with the line lengths of its header. Line data
/// are slices of `body` (no copy). A line whose checksum fails, or that
/// does not decode, or that the body is too short to hold, is counted in
/// [`Decoded::damaged`] and left out.
pub(crate) fn decode_lines(header: &Header, mut body: Bytes) -> Decoded {
    let mut out = Decoded {
        lines: Vec::with_capacity(header.line_lens.len()),
        damaged: 0,
    };
    for (index, &len) in header.line_lens.iter().enumerate() {
        let len = len as usize;
        if body.len() < LINE_CRC_LEN + len {
            out.damaged += 1;
            body.clear();
            continue;
        }
        let stored = body.get_u32();
        let encoded = body.split_to(len);
        let line = (crc32fast::hash(&encoded) == stored)
            .then(|| Line::decode(encoded).ok())
            .flatten();
        match line {
            // A segment holds at most MAX_SEGMENT_LINES lines.
            Some(line) => out
                .lines
                .push((u32::try_from(index).unwrap_or(u32::MAX), line)),
            None => out.damaged += 1,
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(data: &str) -> Line {
        Line {
            data: Bytes::copy_from_slice(data.as_bytes()),
            ..Default::default()
        }
    }

    fn header() -> Header {
        Header {
            agent_id: "agent".into(),
            agent_server_id: "srv".into(),
            boot_id: "boot".into(),
            first_seq: 5,
            segment: 9,
            routes: vec![StoredTag {
                kind: "datadog".into(),
                cred_id: "c1".into(),
            }],
            ..Default::default()
        }
    }

    fn data(decoded: &Decoded) -> Vec<(u32, String)> {
        decoded
            .lines
            .iter()
            .map(|(i, l)| (*i, String::from_utf8_lossy(&l.data).into_owned()))
            .collect()
    }

    #[test]
    fn a_segment_record_round_trips_and_describes_itself() {
        let encoded = encode(header(), vec![line("a"), line("bc")]);
        let checked = decode_file_header(&encoded.file_header()).expect("decodes");
        assert_eq!(checked.lines, 2);
        assert_eq!(checked.header.data_bytes, 3);
        assert_eq!(
            (checked.header.first_seq, checked.header.last_seq()),
            (5, 6)
        );
        assert_eq!(
            (&*checked.header.agent_id, checked.header.segment),
            ("agent", 9)
        );
        assert_eq!(
            checked.tags,
            vec![(DestinationKind::Datadog, "c1".to_string())]
        );
        let decoded = decode_lines(&checked.header, Bytes::from(encoded.body));
        assert_eq!(decoded.damaged, 0);
        assert_eq!(data(&decoded), vec![(0, "a".into()), (1, "bc".into())]);
    }

    #[test]
    fn a_flipped_byte_loses_only_the_line_it_is_in() {
        let lines: Vec<Line> = (0..10).map(|i| line(&format!("line {i}"))).collect();
        let encoded = encode(header(), lines);
        let body = encoded.body.clone();
        for at in 0..body.len() {
            let mut bad = body.clone();
            bad[at] ^= 0x01;
            let decoded = decode_lines(&encoded.header, Bytes::from(bad));
            assert_eq!(decoded.damaged, 1, "flip at byte {at}");
            assert_eq!(decoded.lines.len(), 9, "flip at byte {at}");
        }
        // Cut short: the lines past the end are damaged, those before kept.
        let cut = decode_lines(
            &encoded.header,
            Bytes::from(body[..body.len() / 2].to_vec()),
        );
        assert_eq!(cut.lines.len() + cut.damaged as usize, 10);
        assert!(cut.damaged > 0 && !cut.lines.is_empty());
    }

    #[test]
    fn sleds_copy_holds_the_location_and_no_line_lengths_and_every_flip_is_caught() {
        let encoded = encode(header(), vec![line("hello"), line("world")]);
        let at = Location {
            file: 3,
            offset: 100,
            len: 77,
        };
        let value = encoded.sled_value(at);
        let checked = decode_sled_value(&value).expect("decodes");
        assert_eq!(checked.header.location(), at);
        assert!(checked.header.line_lens.is_empty());
        for i in 0..value.len() {
            let mut bad = value.clone();
            bad[i] ^= 0x01;
            assert!(decode_sled_value(&bad).is_err(), "flip at byte {i}");
            assert!(decode_sled_value(&value[..i]).is_err());
        }
    }

    #[test]
    fn a_header_whose_line_lengths_disagree_with_its_count_is_rejected() {
        let mut encoded = encode(header(), vec![line("a"), line("b")]);
        encoded.header.line_lens.pop();
        assert!(decode_file_header(&encoded.file_header()).is_err());
        let mut zero = header();
        zero.line_count = 0;
        assert!(matches!(
            decode_file_header(&zero.encode_to_vec()),
            Err(RecordError::BadLineCount(0))
        ));
    }

    #[test]
    fn each_segment_of_a_split_batch_knows_its_first_seq_and_id() {
        let lines: Vec<Line> = (0..2500).map(|i| line(&i.to_string())).collect();
        let mut id = 40;
        let encoded = encode_batch(header(), 10, lines, || {
            id += 1;
            id
        });
        let firsts: Vec<(u64, u64, u32)> = encoded
            .iter()
            .map(|e| (e.header.segment, e.header.first_seq, e.lines))
            .collect();
        assert_eq!(
            firsts,
            vec![(41, 10, 1024), (42, 1034, 1024), (43, 2058, 452)]
        );
    }

    #[test]
    fn big_batches_are_split_by_lines_and_bytes_in_order() {
        let lines: Vec<Line> = (0..2500).map(|i| line(&i.to_string())).collect();
        let chunks = split(lines.clone());
        assert_eq!(
            chunks.iter().map(Vec::len).collect::<Vec<_>>(),
            vec![1024, 1024, 452]
        );
        assert_eq!(chunks.concat(), lines);

        let big = "x".repeat(MAX_SEGMENT_DATA_BYTES);
        let chunks = split(vec![line("a"), line(&big), line("b")]);
        assert_eq!(
            chunks.iter().map(Vec::len).collect::<Vec<_>>(),
            vec![1, 1, 1]
        );
    }

    #[test]
    fn a_route_record_round_trips() {
        let route = RouteKey {
            agent_id: "agent".into(),
            kind: DestinationKind::Sentry,
            cred_id: "c2".into(),
        };
        let record = decode_route(&encode_route(&route, b"sealed")).expect("decodes");
        assert_eq!(record.route(), Some(route));
        assert_eq!(record.sealed, b"sealed");
    }
}
