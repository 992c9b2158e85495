//! Segment encoding: a run of consecutive lines of one stream, and the
//! routes they are tagged with.
//!
//! A segment is one sled value (all integers big-endian):
//!
//! ```text
//! version (1) | crc32 of the rest (4) | header length (4) | Header (protobuf) | Lines (protobuf)?
//! ```
//!
//! The encoded `Lines` live in a segment file (`files.rs`) and the header
//! records where ([`Header::location`]); segments written by earlier
//! versions carry their lines inline after the header, and are still read.
//! The header (stream identity, first sequence number, line and byte
//! counts, route tags, location) decodes without touching the lines, so
//! opening the queue reads tags and sizes cheaply. Decoding checks the
//! version, the checksums, the header length and the line count, and never
//! panics on bad bytes. This module must not touch the database or files.

use bytes::Bytes;
use logdrain::v1::Line;
use prost::Message;

use super::error::RecordError;
use super::files::Location;
use super::records::{frame_finish, frame_start, unframe};
use crate::route::{DestinationKind, RouteKey};

/// Most lines in one segment. A received batch with more is split into
/// several segments (written in the same atomic batch), so one read never
/// decodes a huge value to hand out a few lines.
pub(crate) const MAX_SEGMENT_LINES: usize = 1024;

/// Most line data bytes in one segment (a single longer line gets a segment
/// of its own).
pub(crate) const MAX_SEGMENT_DATA_BYTES: usize = 256 * 1024;

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
    /// read them); 0 in segments written before they were recorded.
    #[prost(int64, tag = "7")]
    pub oldest_timestamp_ns: i64,
    #[prost(int64, tag = "8")]
    pub newest_timestamp_ns: i64,
    /// Where the encoded lines are stored; unset (length 0) in segments
    /// that carry their lines inline (written by earlier versions).
    #[prost(uint64, tag = "9")]
    pub file: u64,
    #[prost(uint64, tag = "10")]
    pub offset: u64,
    #[prost(uint32, tag = "11")]
    pub length: u32,
    #[prost(fixed32, tag = "12")]
    pub lines_crc: u32,
}

impl Header {
    /// Where the lines are stored; `None` when they are inline.
    pub(crate) fn location(&self) -> Option<Location> {
        (self.length > 0).then_some(Location {
            file: self.file,
            offset: self.offset,
            len: self.length,
            crc: self.lines_crc,
        })
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

#[derive(Clone, PartialEq, Message)]
struct Lines {
    #[prost(message, repeated, tag = "1")]
    lines: Vec<Line>,
}

/// A header checked for sense: tags name known destinations and the line
/// count fits a cursor index.
pub(crate) struct CheckedHeader {
    pub header: Header,
    pub tags: Vec<(DestinationKind, String)>,
    pub lines: u32,
    /// Offset of the encoded lines in the value.
    lines_offset: usize,
}

/// One encoded segment, with the sizes the index keeps: its encoded lines
/// go to a segment file, then [`Encoded::value`] makes the sled value that
/// points to them.
pub(crate) struct Encoded {
    pub lines: u32,
    pub bytes: u64,
    /// Earliest and latest line timestamp (ns).
    pub span_ns: (i64, i64),
    pub header: Header,
    /// The encoded `Lines` message.
    pub encoded_lines: Vec<u8>,
}

impl Encoded {
    /// The sled value of the segment whose lines are stored `at`.
    pub(crate) fn value(&self, at: Location) -> Vec<u8> {
        let header = Header {
            file: at.file,
            offset: at.offset,
            length: at.len,
            lines_crc: at.crc,
            ..self.header.clone()
        };
        framed(&header, &[])
    }

    /// The segment as earlier versions stored it: lines inline.
    #[cfg(test)]
    pub(crate) fn inline_value(&self) -> Vec<u8> {
        framed(&self.header, &self.encoded_lines)
    }
}

fn framed(header: &Header, encoded_lines: &[u8]) -> Vec<u8> {
    let header_len = header.encoded_len();
    let mut out = frame_start(4 + header_len + encoded_lines.len());
    // A header holds a few ids and tags: far below 4 GiB.
    let header_len_u32 = u32::try_from(header_len).unwrap_or(u32::MAX);
    out.extend_from_slice(&header_len_u32.to_be_bytes());
    header.encode_raw(&mut out);
    out.extend_from_slice(encoded_lines);
    frame_finish(out)
}

/// Encodes a received batch (whose first line has `first_seq`) as one or
/// more segments that share `header`'s stream identity and tags.
pub(crate) fn encode_batch(header: Header, first_seq: u64, lines: Vec<Line>) -> Vec<Encoded> {
    let mut seq = first_seq;
    split(lines)
        .into_iter()
        .map(|chunk| {
            let header = Header {
                first_seq: seq,
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

/// Encodes a segment of at most [`MAX_SEGMENT_LINES`] lines.
/// `header.line_count` and `header.data_bytes` are set from `lines`.
pub(crate) fn encode(mut header: Header, lines: Vec<Line>) -> Encoded {
    header.line_count = lines.len() as u64;
    header.data_bytes = lines.iter().map(|l| l.data.len() as u64).sum();
    header.oldest_timestamp_ns = lines.iter().map(|l| l.timestamp_ns).min().unwrap_or(0);
    header.newest_timestamp_ns = lines.iter().map(|l| l.timestamp_ns).max().unwrap_or(0);
    let encoded_lines = Lines { lines }.encode_to_vec();
    Encoded {
        // Callers pass at most MAX_SEGMENT_LINES lines (see `split`).
        lines: u32::try_from(header.line_count).unwrap_or(u32::MAX),
        bytes: header.data_bytes,
        span_ns: (header.oldest_timestamp_ns, header.newest_timestamp_ns),
        header,
        encoded_lines,
    }
}

/// Checks the frame (version, checksum) and decodes only the header.
pub(crate) fn decode_header(value: &[u8]) -> Result<CheckedHeader, RecordError> {
    let start = unframe(value)?;
    let body = &value[start..];
    let Some((len, rest)) = body.split_first_chunk::<4>() else {
        return Err(RecordError::TooShort {
            found: value.len(),
            min: start + 4,
        });
    };
    let header_len = u32::from_be_bytes(*len) as usize;
    if header_len > rest.len() {
        return Err(RecordError::HeaderLength {
            header: header_len,
            available: rest.len(),
        });
    }
    let header = Header::decode(&rest[..header_len])?;
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
        lines_offset: start + 4 + header_len,
    })
}

/// Decodes a segment whose lines are inline. Line data are slices of
/// `value` (no copy).
#[cfg(test)]
pub(crate) fn decode(value: Bytes) -> Result<(CheckedHeader, Vec<Line>), RecordError> {
    let checked = decode_header(&value)?;
    let lines = decode_lines(&checked, value.slice(checked.lines_offset..))?;
    Ok((checked, lines))
}

/// The inline lines of a checked segment value (empty when its lines are
/// in a segment file).
pub(crate) fn inline_lines(checked: &CheckedHeader, value: Bytes) -> Bytes {
    value.slice(checked.lines_offset.min(value.len())..)
}

/// Decodes a segment's encoded lines (inline, or read from its file) and
/// checks their count against the header. Line data are slices of
/// `encoded` (no copy).
pub(crate) fn decode_lines(
    checked: &CheckedHeader,
    encoded: Bytes,
) -> Result<Vec<Line>, RecordError> {
    let lines = Lines::decode(encoded)?.lines;
    if lines.len() as u64 != checked.header.line_count {
        return Err(RecordError::LineCount {
            header: checked.header.line_count,
            found: lines.len(),
        });
    }
    Ok(lines)
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
            agent_server_id: "srv".into(),
            boot_id: "boot".into(),
            first_seq: 5,
            routes: vec![StoredTag {
                kind: "datadog".into(),
                cred_id: "c1".into(),
            }],
            ..Default::default()
        }
    }

    #[test]
    fn segment_round_trips() {
        let value = encode(header(), vec![line("a"), line("bc")]).inline_value();
        let (checked, lines) = decode(Bytes::from(value)).expect("decodes");
        assert_eq!(checked.lines, 2);
        assert_eq!(checked.header.data_bytes, 3);
        assert_eq!(checked.header.first_seq, 5);
        assert_eq!(
            checked.tags,
            vec![(DestinationKind::Datadog, "c1".to_string())]
        );
        assert_eq!(lines, vec![line("a"), line("bc")]);
    }

    #[test]
    fn every_single_byte_flip_and_truncation_is_detected_without_panic() {
        let value = encode(header(), vec![line("hello"), line("world")]).inline_value();
        for i in 0..value.len() {
            let mut bad = value.clone();
            bad[i] ^= 0x01;
            assert!(decode(Bytes::from(bad)).is_err(), "flip at byte {i}");
            assert!(decode(Bytes::copy_from_slice(&value[..i])).is_err());
        }
    }

    #[test]
    fn garbage_with_a_valid_checksum_is_still_rejected() {
        // A frame whose checksum matches but whose header length lies.
        let mut out = frame_start(8);
        out.extend_from_slice(&u32::MAX.to_be_bytes());
        out.extend_from_slice(b"junk");
        assert!(matches!(
            decode(Bytes::from(frame_finish(out))),
            Err(RecordError::HeaderLength { .. })
        ));
        // A header that claims zero lines.
        let mut zero = header();
        zero.line_count = 0;
        let mut out = frame_start(64);
        out.extend_from_slice(&(zero.encoded_len() as u32).to_be_bytes());
        zero.encode_raw(&mut out);
        assert!(matches!(
            decode(Bytes::from(frame_finish(out))),
            Err(RecordError::BadLineCount(0))
        ));
    }

    #[test]
    fn each_segment_of_a_split_batch_knows_its_first_seq() {
        let lines: Vec<Line> = (0..2500).map(|i| line(&i.to_string())).collect();
        let encoded = encode_batch(header(), 10, lines);
        let firsts: Vec<(u64, u32)> = encoded
            .into_iter()
            .map(|e| {
                let checked = decode_header(&e.inline_value()).expect("decodes");
                (checked.header.first_seq, e.lines)
            })
            .collect();
        let expected: Vec<(u64, u32)> = (0..3)
            .map(|i| (10 + 1024 * i, if i < 2 { 1024 } else { 452 }))
            .collect();
        assert_eq!(firsts, expected);
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
}
