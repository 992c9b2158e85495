//! Queued lines → New Relic Log API request body: the detailed JSON form,
//! gzipped.
//!
//! The body is one JSON array with one block per (agent-server id, stream)
//! present in the batch, in order of first appearance; lines keep their
//! queue order inside their block:
//!
//! ```json
//! [{"common":{"attributes":{"hostname":"<agent-server-id>","service_name":"<agent-id>",
//!                           "source":"cloud.livekit.io","stream":"stdout"}},
//!   "logs":[{"timestamp":1700000000123,"message":"<line>","attributes":{"level":"info"}}]}]
//! ```
//!
//! Per log, `attributes` holds `level` (from [`level::detect`]) and, only
//! when they say something, the attributes the Datadog sink puts under its
//! `logdrain` object, written here with the dotted names New Relic gives
//! nested attributes anyway: `logdrain.part` and `logdrain.more_parts` for
//! pieces of a line the shim split, `logdrain.origin = "shim"` for lines the
//! shim wrote itself, `logdrain.original_timestamp` (ms) for a line the
//! engine sent with the time of sending, and `logdrain.truncated_bytes` for
//! a cut message. The
//! JSON is written by hand through [`JsonOut`], byte for byte as serde_json
//! would write it (a message that needs no escaping is copied as it is), and
//! [`event_size`] counts with the same layout. This module must not send
//! anything.
//!
//! * `message` is the raw line converted to UTF-8 lossily (invalid bytes
//!   become U+FFFD): New Relic requires UTF-8.
//! * A message over [`MAX_MESSAGE_BYTES`] is cut at a character boundary and
//!   ends with a visible marker (`…[truncated by logdrain: cut N of M bytes]`,
//!   counted in bytes of the original line). New Relic keeps at most about
//!   128 KB of an attribute and would silently drop the rest; the marker
//!   itself lies past the first 4,094 searchable characters, so the cut is
//!   also in the searchable `logdrain.truncated_bytes` attribute.
//! * [`event_size`] bounds a line's share of the uncompressed body (see its
//!   docs), so the engine's batches stay within [`MAX_JSON_BYTES`], which in
//!   turn keeps the gzipped body within [`MAX_POST_BYTES`].

use std::borrow::Cow;
use std::collections::HashMap;
use std::io;

use crate::queue::QueuedLine;
use crate::sinks::http;
use crate::sinks::level::{self, Level};
use crate::sinks::text::{self, JsonOut};
use crate::sinks::SinkError;

/// New Relic's limit on one POST, applied (as New Relic's own shippers do)
/// to the gzipped body.
pub const MAX_POST_BYTES: usize = 1_000_000;
/// Most bytes of the uncompressed JSON body. Deflate's worst case on
/// incompressible input is a stored block: 5 bytes per 65,535, plus 18 bytes
/// of gzip header and trailer (zlib's `deflateBound` allows about 0.03%), so
/// 990,000 bytes never gzip to more than about 990,400, under
/// [`MAX_POST_BYTES`] with room to spare. Capping the uncompressed body is
/// exact before encoding, which no guess at the compression ratio is.
pub const MAX_JSON_BYTES: usize = 990_000;
/// Most lines in one request. New Relic sets no such limit; this keeps a
/// worker's pending batch bounded. Lines of at least the ~190 bytes
/// [`event_size`] counts reach [`MAX_JSON_BYTES`] first anyway.
pub const MAX_EVENTS: usize = 5_000;
/// Most bytes of one `message`, marker included. New Relic stores up to
/// about 128 KB of an attribute value and drops the rest.
pub const MAX_MESSAGE_BYTES: usize = 128_000;
/// The `source` of every log.
pub const SOURCE: &str = "cloud.livekit.io";

/// Opens the block of `queued`'s (agent-server id, stream) group:
/// `{"common":{"attributes":{…}},"logs":[`.
fn open_block(out: &mut impl JsonOut, agent_id: &str, queued: &QueuedLine) {
    out.raw(b"{\"common\":{\"attributes\":{\"hostname\":");
    out.string(&queued.agent_server_id);
    out.raw(b",\"service_name\":");
    out.string(agent_id);
    out.raw(b",\"source\":");
    out.string(SOURCE);
    out.raw(b",\"stream\":");
    out.string(queued.line.stream().name());
    out.raw(b"}},\"logs\":[");
}

/// One log object: `timestamp`, `message`, and `attributes` with `level`
/// and the `logdrain.*` ones that say something.
fn write_log(out: &mut impl JsonOut, queued: &QueuedLine, level: Level) {
    let line = &queued.line;
    let logdrain = text::Attributes::of_queued(queued);
    out.raw(b"{\"timestamp\":");
    out.int(line.timestamp_ns.div_euclid(1_000_000));
    out.raw(b",\"message\":");
    // The usual line is short plain ASCII: copied as it is, in one pass.
    let truncated_bytes = if line.data.len() <= MAX_MESSAGE_BYTES && text::plain_ascii(&line.data) {
        out.quoted(&line.data);
        None
    } else {
        let (message, truncated_bytes) = message(&line.data);
        out.string(&message);
        truncated_bytes
    };
    out.raw(b",\"attributes\":{\"level\":");
    out.quoted(level.as_str().as_bytes());
    if let Some(part) = logdrain.part {
        out.raw(b",\"logdrain.part\":");
        out.int(part);
    }
    if let Some(more_parts) = logdrain.more_parts {
        out.raw(b",\"logdrain.more_parts\":");
        out.raw(if more_parts { b"true" } else { b"false" });
    }
    if let Some(origin) = logdrain.origin {
        out.raw(b",\"logdrain.origin\":");
        out.string(origin);
    }
    if let Some(ms) = logdrain.original_timestamp {
        out.raw(b",\"logdrain.original_timestamp\":");
        out.int(ms);
    }
    if let Some(cut) = truncated_bytes {
        out.raw(b",\"logdrain.truncated_bytes\":");
        out.int(cut);
    }
    out.raw(b"}}");
}

/// The marker that ends a cut message.
fn marker(cut: usize, total: usize) -> String {
    format!("…[truncated by logdrain: cut {cut} of {total} bytes]")
}

/// The line as UTF-8 (lossy), cut to at most [`MAX_MESSAGE_BYTES`] with a
/// marker, and how many bytes of the original line were cut.
pub(super) fn message(data: &[u8]) -> (Cow<'_, str>, Option<usize>) {
    let whole = text::lossy(data);
    if whole.len() <= MAX_MESSAGE_BYTES {
        return (whole, None);
    }
    // The marker for "all of it cut" is at least as long as the real one.
    let budget = MAX_MESSAGE_BYTES - marker(data.len(), data.len()).len();
    let mut out = String::with_capacity(MAX_MESSAGE_BYTES);
    let mut kept = 0; // bytes of `data` represented in `out`
    for chunk in data.utf8_chunks() {
        let valid = chunk.valid();
        if out.len() + valid.len() > budget {
            let mut end = budget - out.len();
            while !valid.is_char_boundary(end) {
                end -= 1;
            }
            out.push_str(&valid[..end]);
            kept += end;
            break;
        }
        out.push_str(valid);
        kept += valid.len();
        if !chunk.invalid().is_empty() {
            if out.len() + char::REPLACEMENT_CHARACTER.len_utf8() > budget {
                break;
            }
            out.push(char::REPLACEMENT_CHARACTER);
            kept += chunk.invalid().len();
        }
    }
    let cut = data.len() - kept;
    out.push_str(&marker(cut, data.len()));
    (Cow::Owned(out), Some(cut))
}

/// Closes a block.
const CLOSE_BLOCK: &[u8] = b"]}";

/// Bytes `line` may add to the uncompressed body: its log object and a
/// comma, plus a whole block around it (opening with its `common`, closing,
/// and the comma between blocks).
///
/// Every block holds at least one line, so the sum over a batch is never
/// less than the body's length (the two commas counted for the batch's
/// first line pay for `[` and `]`): equal for a single line, and larger by
/// one block frame for every further line that shares a block. The engine can then cut batches by this size
/// without knowing how the lines group.
pub fn event_size(agent_id: &str, line: &QueuedLine) -> usize {
    text::json_out_len(|out| {
        write_log(out, line, Level::WIDEST);
        open_block(out, agent_id, line);
        Ok(())
    }) + 1
        + CLOSE_BLOCK.len()
        + 1
}

/// The lines of one (agent-server id, stream) group, in queue order.
struct Block<'a> {
    first: &'a QueuedLine,
    lines: Vec<&'a QueuedLine>,
}

/// Groups `lines` by (agent-server id, stream), in order of first
/// appearance.
fn blocks(lines: &[QueuedLine]) -> Vec<Block<'_>> {
    let mut index: HashMap<(&str, &'static str), usize> = HashMap::new();
    let mut blocks: Vec<Block<'_>> = Vec::new();
    for line in lines {
        let key = (&*line.agent_server_id, line.line.stream().name());
        let at = *index.entry(key).or_insert_with(|| {
            blocks.push(Block {
                first: line,
                lines: Vec::new(),
            });
            blocks.len() - 1
        });
        blocks[at].lines.push(line);
    }
    blocks
}

/// Writes the uncompressed JSON body of `lines`; returns how many blocks
/// it holds.
fn write_json(out: &mut Vec<u8>, agent_id: &str, lines: &[QueuedLine]) -> usize {
    let blocks = blocks(lines);
    out.push(b'[');
    for (i, block) in blocks.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        open_block(out, agent_id, block.first);
        for (j, line) in block.lines.iter().enumerate() {
            if j > 0 {
                out.push(b',');
            }
            let level = level::detect(&line.line.data, line.line.stream());
            write_log(out, line, level);
        }
        out.extend_from_slice(CLOSE_BLOCK);
    }
    out.push(b']');
    blocks.len()
}

/// A request body ready to send.
#[derive(Debug)]
pub struct Encoded {
    /// The gzipped JSON array.
    pub body: Vec<u8>,
    /// Length of the uncompressed JSON array.
    pub json_bytes: usize,
    pub events: usize,
    /// `{common, logs}` blocks in the body.
    pub blocks: usize,
}

/// Encodes `lines` as one gzipped detailed-form body.
pub fn encode(agent_id: &str, lines: &[QueuedLine]) -> io::Result<Encoded> {
    let estimate: usize = lines.iter().map(|l| l.line.data.len() + 96).sum();
    let mut json = Vec::with_capacity(estimate.min(MAX_JSON_BYTES));
    let blocks = write_json(&mut json, agent_id, lines);
    Ok(Encoded {
        body: http::gzip(&json)?,
        json_bytes: json.len(),
        events: lines.len(),
        blocks,
    })
}

/// Refuses a gzipped body over [`MAX_POST_BYTES`] as a payload New Relic
/// would reject, so the engine splits the batch. Batches cut by
/// [`event_size`] within [`MAX_JSON_BYTES`] never get here; this holds the
/// limit even if the compressor ever did worse than its bound.
pub fn check_post_size(encoded: &Encoded) -> Result<(), SinkError> {
    if encoded.body.len() > MAX_POST_BYTES {
        return Err(SinkError::PayloadRejected {
            reason: format!(
                "the gzipped request of {} lines is {} bytes, over New Relic's \
                 {MAX_POST_BYTES}-byte limit per POST",
                encoded.events,
                encoded.body.len()
            ),
        });
    }
    Ok(())
}
