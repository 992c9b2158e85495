//! Queued lines → Datadog request body: a JSON array of log objects, gzipped.
//!
//! Each line becomes exactly the fields of the contract (`host`, `ddsource`,
//! `service`, `stream`, `message`, `timestamp`, `status`), plus a `logdrain`
//! object only for pieces of a split line (`logdrain.part`,
//! `logdrain.more_parts`) and for lines the shim wrote itself
//! (`logdrain.origin = "shim"`). [`event_size`] counts a line's bytes in the
//! uncompressed array exactly as [`encode`] writes them, so batches respect
//! Datadog's 5 MB limit. This module must not send anything.
//!
//! * `message` is the raw line converted to UTF-8 lossily: bytes that are
//!   not UTF-8 become U+FFFD, because JSON strings must be Unicode.
//! * A message whose JSON text exceeds [`MAX_MESSAGE_JSON_BYTES`] is cut at
//!   a character boundary and ends with a visible marker
//!   (`…[truncated by logdrain: N bytes]`); Datadog would truncate a log over
//!   1 MB anyway, and cutting it here keeps every log within a request.

use std::borrow::Cow;
use std::io::{self, Write};

use flate2::write::GzEncoder;
use flate2::Compression;
use logdrain::v1::Origin;
use serde::Serialize;

use crate::queue::QueuedLine;
use crate::sinks::level::{self, Level};

/// Most log entries in one request.
pub const MAX_EVENTS: usize = 1_000;
/// Most uncompressed bytes in one request (the whole JSON array).
pub const MAX_PAYLOAD_BYTES: usize = 5_000_000;
/// Most bytes of one log as Datadog counts it.
pub const MAX_LOG_BYTES: usize = 1_000_000;
/// Most bytes of a message's JSON text; the rest of the object fits in what
/// is left of [`MAX_LOG_BYTES`].
pub const MAX_MESSAGE_JSON_BYTES: usize = MAX_LOG_BYTES - 4_096;
/// The `service` of every log.
pub const SERVICE: &str = "cloud.livekit.io";

/// Datadog `status` of a detected level.
pub fn status(level: Level) -> &'static str {
    match level {
        Level::Trace | Level::Debug => "debug",
        Level::Info => "info",
        Level::Warn => "warn",
        Level::Error => "error",
        Level::Fatal => "critical",
    }
}

#[derive(Serialize)]
struct Entry<'a> {
    host: &'a str,
    ddsource: &'a str,
    service: &'static str,
    stream: &'static str,
    message: Cow<'a, str>,
    timestamp: i64,
    status: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    logdrain: Option<Attributes>,
}

/// Attributes under `logdrain.*`, present only when they say something.
#[derive(Serialize)]
struct Attributes {
    #[serde(skip_serializing_if = "Option::is_none")]
    part: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    more_parts: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    origin: Option<&'static str>,
}

fn entry<'a>(agent_id: &'a str, queued: &'a QueuedLine) -> Entry<'a> {
    let line = &queued.line;
    let stream = line.stream();
    let piece = line.part > 0 || line.more_parts;
    let shim = line.origin() == Origin::Shim;
    let logdrain = (piece || shim).then(|| Attributes {
        part: piece.then_some(line.part),
        more_parts: piece.then_some(line.more_parts),
        origin: shim.then_some("shim"),
    });
    Entry {
        host: &queued.agent_server_id,
        ddsource: agent_id,
        service: SERVICE,
        stream: stream.name(),
        message: message(&line.data),
        timestamp: line.timestamp_ns.div_euclid(1_000_000),
        status: status(level::detect(&line.data, stream)),
        logdrain,
    }
}

/// The line as UTF-8 (lossy), cut to [`MAX_MESSAGE_JSON_BYTES`] of JSON.
fn message(data: &[u8]) -> Cow<'_, str> {
    let text = String::from_utf8_lossy(data);
    // Lossy conversion at most triples a byte and JSON escaping at most
    // makes six bytes of one: short lines cannot need cutting.
    if data.len().saturating_mul(6) <= MAX_MESSAGE_JSON_BYTES {
        return text;
    }
    let marker = format!("…[truncated by logdrain: {} bytes]", data.len());
    let budget = MAX_MESSAGE_JSON_BYTES - 2 - marker.len(); // 2: the quotes
    let mut used = 0;
    for (at, c) in text.char_indices() {
        used += escaped_len(c);
        if used > budget {
            let mut cut = String::with_capacity(at + marker.len());
            cut.push_str(&text[..at]);
            cut.push_str(&marker);
            return Cow::Owned(cut);
        }
    }
    text
}

/// Bytes of `c` inside a JSON string as serde_json writes it.
fn escaped_len(c: char) -> usize {
    match c {
        '"' | '\\' | '\n' | '\r' | '\t' | '\u{8}' | '\u{c}' => 2,
        c if (c as u32) < 0x20 => 6,
        c => c.len_utf8(),
    }
}

/// Counts the bytes written through it.
struct Counting<W> {
    inner: W,
    count: usize,
}

impl<W: Write> Write for Counting<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.count += n;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Bytes `line` adds to the uncompressed JSON array: its object plus one
/// separator (a comma, or for the first object the closing bracket, so a
/// batch's sum plus one opening bracket is the exact body length).
pub fn event_size(agent_id: &str, line: &QueuedLine) -> usize {
    let mut counter = Counting {
        inner: io::sink(),
        count: 0,
    };
    // Strings and integers into a writer that cannot fail: serializing
    // cannot fail either; count whatever was written if it ever did.
    let _ = serde_json::to_writer(&mut counter, &entry(agent_id, line));
    counter.count + 1
}

/// A request body ready to send.
#[derive(Debug)]
pub struct Encoded {
    /// The gzipped JSON array.
    pub body: Vec<u8>,
    /// Length of the uncompressed JSON array.
    pub json_bytes: usize,
    pub events: usize,
}

/// Encodes `lines` as one gzipped JSON array.
pub fn encode(agent_id: &str, lines: &[QueuedLine]) -> io::Result<Encoded> {
    let estimate = lines.iter().map(|l| l.line.data.len() / 4 + 64).sum();
    let gzip = GzEncoder::new(Vec::with_capacity(estimate), Compression::default());
    let mut out = Counting {
        inner: gzip,
        count: 0,
    };
    out.write_all(b"[")?;
    for (i, line) in lines.iter().enumerate() {
        if i > 0 {
            out.write_all(b",")?;
        }
        serde_json::to_writer(&mut out, &entry(agent_id, line))?;
    }
    out.write_all(b"]")?;
    let json_bytes = out.count;
    let body = out.inner.finish()?;
    Ok(Encoded {
        body,
        json_bytes,
        events: lines.len(),
    })
}
