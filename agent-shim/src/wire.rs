//! What the shim puts on the wire, encoded straight from the buffer's lines:
//! a batch becomes the protobuf bytes of its `ShimMessage` in one pass over
//! the lines, without building a `Batch` (no per-line copies, allocations or
//! reference counts), and [`ShipCodec`] sends such bytes as they are.
//!
//! The bytes are exactly what prost makes of the same message (fields in
//! tag order, proto3 defaults left out), so the gateway cannot tell the
//! difference; the tests pin that.
//!
//! It must not decide what goes into a batch (the buffer does) or when it
//! is sent (the stream does).

use bytes::{BufMut, Bytes, BytesMut};
use logdrain::v1::{GatewayMessage, Line, ShimMessage};
use prost::encoding::{encode_varint, encoded_len_varint};
use prost::Message;
use tonic::codec::{Codec, EncodeBuf, Encoder};
use tonic::Status;

/// Protobuf wire type of varint fields.
const VARINT: u8 = 0;
/// Protobuf wire type of length-delimited fields (bytes, messages).
const LEN: u8 = 2;

const fn key(tag: u8, wire_type: u8) -> u8 {
    (tag << 3) | wire_type
}

/// `ShimMessage.batch` (tag 2).
const SHIM_MESSAGE_BATCH: u8 = key(2, LEN);
const BATCH_FIRST_SEQ: u8 = key(1, VARINT);
const BATCH_LINES: u8 = key(2, LEN);
const BATCH_SHIM_DROPPED_TOTAL: u8 = key(3, VARINT);
const BATCH_SHIM_REDACTED_TOTAL: u8 = key(4, LEN);
const MAP_KEY: u8 = key(1, LEN);
const MAP_VALUE: u8 = key(2, VARINT);
const LINE_TIMESTAMP_NS: u8 = key(1, VARINT);
const LINE_STREAM: u8 = key(2, VARINT);
const LINE_DATA: u8 = key(3, LEN);
const LINE_ORIGIN: u8 = key(4, VARINT);
const LINE_PART: u8 = key(5, VARINT);
const LINE_MORE_PARTS: u8 = key(6, VARINT);

/// An encoded `ShimMessage`, ready for [`ShipCodec`].
pub type Encoded = Bytes;

/// `ShimMessage { open }` (or any message) encoded by prost.
pub fn encode_message(message: &ShimMessage) -> Encoded {
    Bytes::from(message.encode_to_vec())
}

/// `ShimMessage { batch: Batch { first_seq, lines, shim_dropped_total,
/// shim_redacted_total } }`; `redacted` holds names with counts above 0.
pub fn encode_batch<'a, I>(
    first_seq: u64,
    lines: I,
    shim_dropped_total: u64,
    redacted: &[(String, u64)],
) -> Encoded
where
    I: Iterator<Item = &'a Line> + Clone,
{
    let lines_len: usize = lines
        .clone()
        .map(|line| {
            let len = line_len(line);
            1 + encoded_len_varint(len as u64) + len
        })
        .sum();
    let redacted_len: usize = redacted
        .iter()
        .map(|(name, count)| {
            let len = entry_len(name, *count);
            1 + encoded_len_varint(len as u64) + len
        })
        .sum();
    let batch_len = varint_field_len(first_seq)
        + lines_len
        + varint_field_len(shim_dropped_total)
        + redacted_len;
    let mut out = BytesMut::with_capacity(1 + encoded_len_varint(batch_len as u64) + batch_len);
    out.put_u8(SHIM_MESSAGE_BATCH);
    encode_varint(batch_len as u64, &mut out);
    put_varint_field(&mut out, BATCH_FIRST_SEQ, first_seq);
    for line in lines {
        out.put_u8(BATCH_LINES);
        encode_varint(line_len(line) as u64, &mut out);
        // As prost encodes `int64` and `int32` (enums): two's complement,
        // sign-extended to 64 bits.
        put_varint_field(&mut out, LINE_TIMESTAMP_NS, line.timestamp_ns as u64);
        put_varint_field(&mut out, LINE_STREAM, i64::from(line.stream) as u64);
        if !line.data.is_empty() {
            out.put_u8(LINE_DATA);
            encode_varint(line.data.len() as u64, &mut out);
            out.put_slice(&line.data);
        }
        put_varint_field(&mut out, LINE_ORIGIN, i64::from(line.origin) as u64);
        put_varint_field(&mut out, LINE_PART, u64::from(line.part));
        put_varint_field(&mut out, LINE_MORE_PARTS, u64::from(line.more_parts));
    }
    put_varint_field(&mut out, BATCH_SHIM_DROPPED_TOTAL, shim_dropped_total);
    for (name, count) in redacted {
        out.put_u8(BATCH_SHIM_REDACTED_TOTAL);
        encode_varint(entry_len(name, *count) as u64, &mut out);
        out.put_u8(MAP_KEY);
        encode_varint(name.len() as u64, &mut out);
        out.put_slice(name.as_bytes());
        put_varint_field(&mut out, MAP_VALUE, *count);
    }
    out.freeze()
}

/// Encoded length of a map entry (a name is never empty).
fn entry_len(name: &str, count: u64) -> usize {
    1 + encoded_len_varint(name.len() as u64) + name.len() + varint_field_len(count)
}

/// Encoded length of a `Line`'s fields.
fn line_len(line: &Line) -> usize {
    let data = if line.data.is_empty() {
        0
    } else {
        1 + encoded_len_varint(line.data.len() as u64) + line.data.len()
    };
    varint_field_len(line.timestamp_ns as u64)
        + varint_field_len(i64::from(line.stream) as u64)
        + data
        + varint_field_len(i64::from(line.origin) as u64)
        + varint_field_len(u64::from(line.part))
        + varint_field_len(u64::from(line.more_parts))
}

/// Length of a varint field with a one-byte key; 0 for the default value.
fn varint_field_len(value: u64) -> usize {
    if value == 0 {
        0
    } else {
        1 + encoded_len_varint(value)
    }
}

fn put_varint_field(out: &mut BytesMut, key: u8, value: u64) {
    if value != 0 {
        out.put_u8(key);
        encode_varint(value, out);
    }
}

/// The `Drain.Ship` codec: sends [`Encoded`] messages as they are and
/// decodes the gateway's messages with prost.
#[derive(Clone, Copy, Debug, Default)]
pub struct ShipCodec;

impl Codec for ShipCodec {
    type Encode = Encoded;
    type Decode = GatewayMessage;
    type Encoder = PreEncoded;
    type Decoder = tonic_prost::ProstDecoder<GatewayMessage>;

    fn encoder(&mut self) -> Self::Encoder {
        PreEncoded
    }

    fn decoder(&mut self) -> Self::Decoder {
        tonic_prost::ProstDecoder::default()
    }
}

/// Copies an [`Encoded`] message into the gRPC frame.
#[derive(Clone, Copy, Debug, Default)]
pub struct PreEncoded;

impl Encoder for PreEncoded {
    type Item = Encoded;
    type Error = Status;

    fn encode(&mut self, item: Encoded, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.reserve(item.len());
        dst.put_slice(&item);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use logdrain::v1::{shim_message, Batch, Open, Origin, StreamKind};

    fn prost_batch(first_seq: u64, lines: &[Line], dropped: u64) -> Vec<u8> {
        ShimMessage {
            kind: Some(shim_message::Kind::Batch(Batch {
                first_seq,
                lines: lines.to_vec(),
                shim_dropped_total: dropped,
                ..Batch::default()
            })),
        }
        .encode_to_vec()
    }

    fn line(timestamp_ns: i64, data: &[u8], part: u32, more_parts: bool) -> Line {
        Line {
            timestamp_ns,
            stream: StreamKind::Stderr as i32,
            data: Bytes::copy_from_slice(data),
            origin: Origin::Agent as i32,
            part,
            more_parts,
        }
    }

    #[test]
    fn a_batch_is_encoded_exactly_as_prost_encodes_it() {
        let lines = vec![
            line(1_700_000_000_123_456_789, b"hello", 0, false),
            line(1, b"", 0, false),
            line(2, &[b'x'; 300], 0, true),
            line(2, b"tail\xff\0", 1, false),
            Line::default(),
            line(-5, b"before 1970", u32::MAX, false),
            Line {
                stream: -1,
                origin: 7,
                ..line(3, b"unknown enum values", 0, false)
            },
        ];
        for (first_seq, dropped) in [(1, 0), (0, 0), (u64::MAX, u64::MAX), (300, 12)] {
            assert_eq!(
                &encode_batch(first_seq, lines.iter(), dropped, &[])[..],
                &prost_batch(first_seq, &lines, dropped)[..],
                "first_seq {first_seq}, dropped {dropped}"
            );
        }
    }

    #[test]
    fn an_empty_batch_is_encoded_as_prost_encodes_it() {
        assert_eq!(
            &encode_batch(0, [].iter(), 0, &[])[..],
            &prost_batch(0, &[], 0)[..]
        );
    }

    #[test]
    fn an_encoded_batch_decodes_to_the_same_lines() {
        let lines: Vec<Line> = (0..1000)
            .map(|i| line(i, format!("line {i}").as_bytes(), 0, false))
            .collect();
        let decoded = ShimMessage::decode(encode_batch(41, lines.iter(), 3, &[])).unwrap();
        let Some(shim_message::Kind::Batch(batch)) = decoded.kind else {
            unreachable!()
        };
        assert_eq!((batch.first_seq, batch.shim_dropped_total), (41, 3));
        assert_eq!(batch.lines, lines);
    }

    #[test]
    fn masked_counts_are_encoded_as_prost_encodes_the_map() {
        let lines = [line(1, b"x", 0, false)];
        let redacted = [("OPENAI_API_KEY".to_owned(), 300)];
        let prost = ShimMessage {
            kind: Some(shim_message::Kind::Batch(Batch {
                first_seq: 5,
                lines: lines.to_vec(),
                shim_dropped_total: 2,
                shim_redacted_total: redacted.iter().cloned().collect(),
            })),
        };
        assert_eq!(
            &encode_batch(5, lines.iter(), 2, &redacted)[..],
            &prost.encode_to_vec()[..]
        );
        let two = [("A_KEY".to_owned(), 1), ("B_TOKEN".to_owned(), u64::MAX)];
        let decoded = ShimMessage::decode(encode_batch(5, lines.iter(), 0, &two)).unwrap();
        let Some(shim_message::Kind::Batch(batch)) = decoded.kind else {
            unreachable!()
        };
        assert_eq!(batch.shim_redacted_total, two.into_iter().collect());
    }

    #[test]
    fn the_open_is_encoded_by_prost() {
        let open = ShimMessage {
            kind: Some(shim_message::Kind::Open(Open {
                agent_id: "a".into(),
                ..Open::default()
            })),
        };
        assert_eq!(&encode_message(&open)[..], &open.encode_to_vec()[..]);
    }
}
