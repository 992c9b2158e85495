//! Queued lines → Datadog request body: a JSON array of log objects, gzipped.
//!
//! Each line becomes exactly the fields of the contract (`host`, `ddsource`,
//! `service`, `stream`, `message`, `timestamp`, `status`), plus a `logdrain`
//! object only for pieces of a split line (`logdrain.part`,
//! `logdrain.more_parts`), for lines the shim wrote itself
//! (`logdrain.origin = "shim"`) and for lines the engine sent with the time
//! of sending (`logdrain.original_timestamp`, ms). The objects are written by hand through
//! [`JsonOut`], byte for byte as serde_json would write them: the fields
//! every line of a replica shares (`host`, `ddsource`, `service`) are
//! escaped once per run of that replica's lines, and a message that needs
//! no escaping is copied as it is. [`event_size`] counts a line's bytes in
//! the uncompressed array with the same layout (never less than [`encode`]
//! writes), so batches respect Datadog's 5 MB limit. This module must not
//! send anything.
//!
//! * `message` is the raw line converted to UTF-8 lossily: bytes that are
//!   not UTF-8 become U+FFFD, because JSON strings must be Unicode.
//! * A message whose JSON text exceeds the intake's budget
//!   ([`MAX_MESSAGE_JSON_BYTES`], [`MAX_BROWSER_MESSAGE_JSON_BYTES`] for the
//!   browser intake) is cut at a character boundary and ends with a visible
//!   marker (`…[truncated by logdrain: N bytes]`, [`text::json_text`]);
//!   Datadog would truncate a log over 1 MB anyway (the browser SDK
//!   discards one of 256 KiB), and cutting it here keeps every log within a
//!   request.

use std::io;

use crate::queue::QueuedLine;
use crate::sinks::http;
use crate::sinks::level::{self, Level};
use crate::sinks::text::{self, JsonOut};

/// Most log entries in one request.
pub const MAX_EVENTS: usize = 1_000;
/// Most log entries in one request to the browser intake (client tokens):
/// Datadog's browser SDK calls 50 messages per batch the "Logs intake
/// limit" (`batchMessagesLimit` in
/// `packages/core/src/domain/configuration/configuration.ts`,
/// <https://github.com/DataDog/browser-sdk>).
pub const MAX_BROWSER_EVENTS: usize = 50;
/// Most uncompressed bytes in one request (the whole JSON array).
pub const MAX_PAYLOAD_BYTES: usize = 5_000_000;
/// Most bytes of one log as Datadog counts it.
pub const MAX_LOG_BYTES: usize = 1_000_000;
/// Most bytes of a message's JSON text; the rest of the object fits in what
/// is left of [`MAX_LOG_BYTES`].
pub const MAX_MESSAGE_JSON_BYTES: usize = MAX_LOG_BYTES - 4_096;
/// Most bytes of one log to the browser intake (client tokens): Datadog's
/// browser SDK discards a message of 256 KiB or more, the "Logs intake
/// limit" (`messageBytesLimit` in
/// `packages/core/src/domain/configuration/configuration.ts`,
/// <https://github.com/DataDog/browser-sdk>).
pub const MAX_BROWSER_LOG_BYTES: usize = 256 * 1024;
/// [`MAX_MESSAGE_JSON_BYTES`] for the browser intake: the object stays
/// under [`MAX_BROWSER_LOG_BYTES`].
pub const MAX_BROWSER_MESSAGE_JSON_BYTES: usize = MAX_BROWSER_LOG_BYTES - 4_096;
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

/// The start of the log object of every line of replica `host`:
/// `{"host":…,"ddsource":…,"service":"cloud.livekit.io"`.
fn write_head(out: &mut impl JsonOut, agent_id: &str, host: &str) {
    out.raw(b"{\"host\":");
    out.string(host);
    out.raw(b",\"ddsource\":");
    out.string(agent_id);
    out.raw(b",\"service\":");
    out.string(SERVICE);
}

/// The rest of `queued`'s log object after [`write_head`], closing brace
/// included.
fn write_rest(
    out: &mut impl JsonOut,
    queued: &QueuedLine,
    level: Level,
    max_message_json: usize,
) -> io::Result<()> {
    let line = &queued.line;
    out.raw(b",\"stream\":");
    out.quoted(line.stream().name().as_bytes());
    out.raw(b",\"message\":");
    text::write_json_text(out, &line.data, max_message_json);
    out.raw(b",\"timestamp\":");
    out.int(line.timestamp_ns.div_euclid(1_000_000));
    out.raw(b",\"status\":");
    out.quoted(status(level).as_bytes());
    text::write_logdrain_member(out, queued)?;
    out.raw(b"}");
    Ok(())
}

/// Bytes `line` adds to the uncompressed JSON array: its object plus one
/// separator (a comma, or for the first object the closing bracket), counted
/// with the longest `status` ([`Level::WIDEST`]) so the line's level need
/// not be detected twice. A batch's sum plus one opening bracket is the body
/// length, or at most 4 bytes per line more. `max_message_json` is the
/// intake's message budget, as for [`encode`].
pub fn event_size(agent_id: &str, line: &QueuedLine, max_message_json: usize) -> usize {
    text::json_out_len(|out| {
        write_head(out, agent_id, &line.agent_server_id);
        write_rest(out, line, Level::WIDEST, max_message_json)
    }) + 1
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

/// Encodes `lines` as one gzipped JSON array, each message cut to
/// `max_message_json` bytes of JSON ([`MAX_MESSAGE_JSON_BYTES`] or
/// [`MAX_BROWSER_MESSAGE_JSON_BYTES`]).
pub fn encode(
    agent_id: &str,
    lines: &[QueuedLine],
    max_message_json: usize,
) -> io::Result<Encoded> {
    let estimate: usize = lines.iter().map(|l| l.line.data.len() + 160).sum();
    let mut json = Vec::with_capacity(estimate.min(MAX_PAYLOAD_BYTES));
    json.push(b'[');
    // Lines of one replica come in runs: their shared fields are escaped
    // once per run.
    let mut head = Vec::new();
    let mut head_of: Option<&str> = None;
    for (i, line) in lines.iter().enumerate() {
        if i > 0 {
            json.push(b',');
        }
        let host = &*line.agent_server_id;
        if head_of != Some(host) {
            head.clear();
            write_head(&mut head, agent_id, host);
            head_of = Some(host);
        }
        json.extend_from_slice(&head);
        let level = level::detect(&line.line.data, line.line.stream());
        write_rest(&mut json, line, level, max_message_json)?;
    }
    json.push(b']');
    let json_bytes = json.len();
    let body = http::gzip(&json)?;
    Ok(Encoded {
        body,
        json_bytes,
        events: lines.len(),
    })
}
