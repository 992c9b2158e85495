//! Queued lines → one gzipped Sentry envelope holding one `log` item.
//!
//! The envelope is newline-separated JSON:
//!
//! ```text
//! {}
//! {"type":"log","item_count":2,"content_type":"application/vnd.sentry.items.log+json"}
//! {"items":[{...},{...}]}
//! ```
//!
//! The envelope header is empty. It has no `sent_at`: Relay shifts every
//! timestamp of an envelope whose `sent_at` is 55 minutes or more away from
//! its arrival (relay `relay-event-normalization/src/eap/time.rs`,
//! `MINIMUM_CLOCK_DRIFT`), and an envelope encoded early (the worker's
//! prefetch) can be sent long after, once an outage ends; the lines' times
//! come from the shim's clock anyway, not the gateway's. It never carries
//! the DSN, which holds the public key. The item header has no `length`:
//! the payload is one line (JSON escapes every newline), which the envelope
//! format allows.
//!
//! Each line becomes one log with `timestamp` (float seconds), `trace_id`,
//! `level` ([`level::detect`]), `body` (the raw line) and exactly the
//! contract's attributes (`logger`, `server_name`, `environment`,
//! `sentry.environment`, `stream`), all of type `string`, plus
//! `logger.name` (Sentry's own attribute for the logger, which its UI
//! groups by) with the same value as `logger`. As in the Datadog
//! sink, pieces of a split line add `logdrain.part` (integer) and
//! `logdrain.more_parts` (boolean), and lines the shim wrote itself add
//! `logdrain.origin = "shim"`.
//!
//! * `trace_id` is required by Sentry. It is derived from the agent id and
//!   the agent-server id ([`trace_id`]): every line of one replica shares one
//!   trace id, as every log of one process shares its propagation trace id in
//!   Sentry's SDKs, and a retried envelope carries the same ids.
//! * `body` is the line converted to UTF-8 lossily (bytes that are not UTF-8
//!   become U+FFFD). A log whose JSON would exceed [`MAX_LOG_ITEM_BYTES`] has
//!   its body cut at a character boundary, ending with a visible marker
//!   (`…[truncated by logdrain: N bytes]`).
//!
//! Logs are written by hand through [`JsonOut`], byte for byte as serde_json
//! would write them (a body that needs no escaping is copied as it is).
//! [`event_size`] counts a line's bytes in the payload with the same layout,
//! exactly as [`encode`] writes them. This module must not send anything.

use std::io::{self, Write};
use std::sync::Arc;

use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::queue::QueuedLine;
use crate::sinks::http;
use crate::sinks::level::{self, Level};
use crate::sinks::text::{self, JsonOut};

/// Most logs in one envelope (Sentry's SDKs flush at 100).
pub const MAX_ITEMS: usize = 100;
/// Most bytes of one log item's JSON (Sentry: 1 MiB per log).
pub const MAX_LOG_ITEM_BYTES: usize = 1024 * 1024;
/// Most bytes of one decompressed envelope: Relay's default limit for one
/// log container (the `log` item's payload) is 12 MiB, and over it the whole
/// envelope is refused with 413. The envelope is the container plus a few
/// bytes, so it is the tighter bound.
pub const MAX_ENVELOPE_BYTES: usize = 12 * 1024 * 1024;
/// Room for everything of an envelope but its logs: the envelope header,
/// the item header and the payload's `{"items":[` … `]}`.
pub const ENVELOPE_OVERHEAD_BYTES: usize = 1024;

// A log of the largest size always fits an envelope.
const _: () = assert!(MAX_LOG_ITEM_BYTES + 1 + ENVELOPE_OVERHEAD_BYTES <= MAX_ENVELOPE_BYTES);
/// `environment` and `sentry.environment` of every log.
pub const ENVIRONMENT: &str = "production";
/// Content type of the request.
pub const ENVELOPE_CONTENT_TYPE: &str = "application/x-sentry-envelope";
/// Item type of a batch of logs.
pub const ITEM_TYPE: &str = "log";
/// Content type of a batch of logs.
pub const ITEM_CONTENT_TYPE: &str = "application/vnd.sentry.items.log+json";

/// Upper bound of a log's JSON without its body and ids (escaped), so short
/// lines need no exact count before deciding they fit.
pub const LOG_OVERHEAD_BOUND: usize = 1024;

/// Stands in for a trace id where only the size counts.
const TRACE_ID_SIZED: &str = "00000000000000000000000000000000";

/// The trace id of every line of one replica: the first 16 bytes of
/// SHA-256 over the agent id and the agent-server id, as 32 lowercase hex
/// characters.
pub fn trace_id(agent_id: &str, agent_server_id: &str) -> String {
    let mut hash = Sha256::new();
    hash.update(b"logdrain sentry trace_id\0");
    hash.update((agent_id.len() as u64).to_be_bytes());
    hash.update(agent_id.as_bytes());
    hash.update((agent_server_id.len() as u64).to_be_bytes());
    hash.update(agent_server_id.as_bytes());
    hex::encode(&hash.finalize()[..16])
}

/// One log: `timestamp`, `trace_id`, `level`, `body` and its typed
/// attributes, the `logdrain.*` ones only when they say something.
fn write_log(
    out: &mut impl JsonOut,
    agent_id: &str,
    queued: &QueuedLine,
    level: Level,
    trace_id: &str,
    (body, budget): (&[u8], usize),
) -> io::Result<()> {
    let line = &queued.line;
    out.raw(b"{\"timestamp\":");
    // f64 keeps well under a microsecond for present-day times.
    out.value(&(line.timestamp_ns as f64 / 1e9))?;
    out.raw(b",\"trace_id\":");
    out.string(trace_id);
    out.raw(b",\"level\":");
    out.quoted(level.as_str().as_bytes());
    out.raw(b",\"body\":");
    text::write_json_text(out, body, budget);
    out.raw(b",\"attributes\":{\"logger\":");
    string_attribute(out, agent_id);
    out.raw(b",\"logger.name\":");
    string_attribute(out, agent_id);
    out.raw(b",\"server_name\":");
    string_attribute(out, &queued.agent_server_id);
    out.raw(b",\"environment\":");
    string_attribute(out, ENVIRONMENT);
    out.raw(b",\"sentry.environment\":");
    string_attribute(out, ENVIRONMENT);
    out.raw(b",\"stream\":{\"value\":");
    out.quoted(line.stream().name().as_bytes());
    out.raw(b",\"type\":\"string\"}");
    let logdrain = text::Attributes::of(line);
    if let Some(part) = logdrain.part {
        out.raw(b",\"logdrain.part\":{\"value\":");
        out.int(part);
        out.raw(b",\"type\":\"integer\"}");
    }
    if let Some(more_parts) = logdrain.more_parts {
        out.raw(b",\"logdrain.more_parts\":{\"value\":");
        out.raw(if more_parts { b"true" } else { b"false" });
        out.raw(b",\"type\":\"boolean\"}");
    }
    if let Some(origin) = logdrain.origin {
        out.raw(b",\"logdrain.origin\":");
        string_attribute(out, origin);
    }
    out.raw(b"}}");
    Ok(())
}

/// A typed attribute: `{"value":"…","type":"string"}`.
fn string_attribute(out: &mut impl JsonOut, value: &str) {
    out.raw(b"{\"value\":");
    out.string(value);
    out.raw(b",\"type\":\"string\"}");
}

/// The body of `queued`'s log and its JSON budget ([`text::json_text`]):
/// the line, cut so that the log's JSON stays within [`MAX_LOG_ITEM_BYTES`].
/// The budget is counted with the longest level name, so it does not depend
/// on the line's level.
fn body<'a>(agent_id: &str, queued: &'a QueuedLine, trace_id: &str) -> (&'a [u8], usize) {
    let line = &queued.line;
    let fits_easily = line
        .data
        .len()
        .saturating_mul(6)
        .saturating_add(
            agent_id
                .len()
                .saturating_add(queued.agent_server_id.len())
                .saturating_mul(6),
        )
        .saturating_add(LOG_OVERHEAD_BOUND)
        <= MAX_LOG_ITEM_BYTES;
    let budget = if fits_easily {
        usize::MAX
    } else {
        // Everything but the body's text, counted exactly (`""` included).
        let rest = text::json_out_len(|out| {
            write_log(
                out,
                agent_id,
                queued,
                Level::WIDEST,
                trace_id,
                (b"", usize::MAX),
            )
        });
        MAX_LOG_ITEM_BYTES.saturating_sub(rest.saturating_sub(2))
    };
    (&line.data, budget)
}

/// Bytes `line` adds to the envelope: its log's JSON plus one separator, so
/// a batch's sum plus [`ENVELOPE_OVERHEAD_BYTES`] bounds the envelope.
pub fn event_size(agent_id: &str, line: &QueuedLine) -> usize {
    // Every trace id is 32 hex digits: no need to hash for the size.
    let body = body(agent_id, line, TRACE_ID_SIZED);
    text::json_out_len(|out| write_log(out, agent_id, line, Level::WIDEST, TRACE_ID_SIZED, body))
        + 1
}

#[derive(Serialize)]
struct ItemHeader {
    #[serde(rename = "type")]
    kind: &'static str,
    item_count: usize,
    content_type: &'static str,
}

/// An envelope ready to send.
#[derive(Debug)]
pub struct Encoded {
    /// The gzipped envelope.
    pub body: Vec<u8>,
    /// Length of the decompressed envelope.
    pub envelope_bytes: usize,
    pub items: usize,
}

/// Encodes `lines` as one gzipped envelope with one `log` item.
pub fn encode(agent_id: &str, lines: &[QueuedLine]) -> io::Result<Encoded> {
    let estimate: usize = lines.iter().map(|l| l.line.data.len() + 512).sum();
    let mut out = Vec::with_capacity(estimate.min(MAX_ENVELOPE_BYTES));
    out.write_all(b"{}\n")?;
    let item = ItemHeader {
        kind: ITEM_TYPE,
        item_count: lines.len(),
        content_type: ITEM_CONTENT_TYPE,
    };
    serde_json::to_writer(&mut out, &item)?;
    out.write_all(b"\n{\"items\":[")?;
    let mut trace: Option<(Arc<str>, String)> = None;
    for (i, line) in lines.iter().enumerate() {
        if i > 0 {
            out.write_all(b",")?;
        }
        let level = level::detect(&line.line.data, line.line.stream());
        // Lines of one replica come in runs: hash once per run.
        if trace
            .as_ref()
            .is_none_or(|(server, _)| *server != line.agent_server_id)
        {
            let id = trace_id(agent_id, &line.agent_server_id);
            trace = Some((Arc::clone(&line.agent_server_id), id));
        }
        let id = trace.as_ref().map_or("", |(_, id)| id.as_str());
        write_log(
            &mut out,
            agent_id,
            line,
            level,
            id,
            body(agent_id, line, id),
        )?;
    }
    out.write_all(b"]}\n")?;
    let envelope_bytes = out.len();
    let body = http::gzip(&out)?;
    Ok(Encoded {
        body,
        envelope_bytes,
        items: lines.len(),
    })
}
