//! Queued lines → CloudWatch Logs events, grouped into valid PutLogEvents
//! requests.
//!
//! Each line becomes one event whose `message` is a JSON object (see the
//! encoding table in [`super`]) and whose `timestamp` is the line's time in
//! milliseconds. [`plan`] groups a batch by log stream (agent-server id),
//! sorts each stream's events by time (stable, so lines of the same
//! millisecond keep queue order), and cuts them into puts that obey every
//! PutLogEvents rule: at most [`MAX_EVENTS`] events, at most
//! [`MAX_BATCH_BYTES`] counted as message bytes plus [`EVENT_OVERHEAD`] per
//! event, and a time span under [`MAX_SPAN_MS`]. The message object is
//! written by hand through [`JsonOut`], byte for byte as serde_json would
//! write it, and [`event_size`] counts a line with the same layout, exactly
//! as [`plan`] encodes it. This module must not send anything.

use std::borrow::Cow;
use std::collections::HashMap;
use std::io;
use std::sync::Arc;

use crate::queue::{Cursor, QueuedLine};
use crate::sinks::text::{self, JsonOut};

/// Most events in one PutLogEvents request.
pub const MAX_EVENTS: usize = 10_000;
/// Most bytes in one PutLogEvents request, as CloudWatch counts them.
pub const MAX_BATCH_BYTES: usize = 1_048_576;
/// Bytes CloudWatch adds to every event's message when counting a request.
pub const EVENT_OVERHEAD: usize = 26;
/// Most bytes of one event, counted like a request (message + overhead).
/// CloudWatch documents 1 MB today (256 KB in older docs): this is the one
/// place to lower it.
pub const MAX_EVENT_BYTES: usize = 1_048_576;
/// Longest span of timestamps in one request: strictly less than 24 h.
pub const MAX_SPAN_MS: i64 = 24 * 60 * 60 * 1_000;
/// Most bytes of the line's text in a message's JSON; the rest of the
/// object (`stream`, the `logdrain` attributes, punctuation) fits in what
/// is left of [`MAX_EVENT_BYTES`].
pub const MAX_LINE_JSON_BYTES: usize = MAX_EVENT_BYTES - EVENT_OVERHEAD - 256;

/// The JSON object that is an event's message.
/// The message object of `queued`: `message`, `stream`, and a `logdrain`
/// object only when its attributes say something.
fn write_message(out: &mut impl JsonOut, queued: &QueuedLine) -> io::Result<()> {
    let line = &queued.line;
    out.raw(b"{\"message\":");
    text::write_json_text(out, &line.data, MAX_LINE_JSON_BYTES);
    out.raw(b",\"stream\":");
    out.quoted(line.stream().name().as_bytes());
    text::write_logdrain_member(out, queued)?;
    out.raw(b"}");
    Ok(())
}

/// The line as UTF-8 (lossy: bytes that are not UTF-8 become U+FFFD), cut
/// to [`MAX_LINE_JSON_BYTES`] of JSON with a visible marker
/// (`…[truncated by logdrain: N bytes]`, N the line's original length).
pub fn line_text(data: &[u8]) -> Cow<'_, str> {
    text::json_text(data, MAX_LINE_JSON_BYTES)
}

/// The event message of `line`: its JSON object as text.
pub fn message(line: &QueuedLine) -> String {
    let mut json = Vec::with_capacity(line.line.data.len() + 32);
    // Strings and integers cannot fail to serialize.
    let _ = write_message(&mut json, line);
    // JSON written from strings is UTF-8.
    String::from_utf8(json).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
}

/// Bytes `line` adds to a request as CloudWatch counts them: its message's
/// UTF-8 bytes plus [`EVENT_OVERHEAD`]. Never more than [`MAX_EVENT_BYTES`].
pub fn event_size(line: &QueuedLine) -> usize {
    text::json_out_len(|out| write_message(out, line)) + EVENT_OVERHEAD
}

/// The event's timestamp: the line's time in whole milliseconds.
pub fn timestamp_ms(line: &QueuedLine) -> i64 {
    line.line.timestamp_ns.div_euclid(1_000_000)
}

/// One event, ready for a put.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    /// The line it came from, to remember what CloudWatch took.
    pub cursor: Cursor,
    pub timestamp_ms: i64,
    pub message: String,
}

impl Event {
    pub fn of(line: &QueuedLine) -> Event {
        Event {
            cursor: line.cursor,
            timestamp_ms: timestamp_ms(line),
            message: message(line),
        }
    }

    /// Bytes it adds to a request, as CloudWatch counts them.
    pub fn size(&self) -> usize {
        self.message.len() + EVENT_OVERHEAD
    }
}

/// The puts of one log stream, in chronological order.
#[derive(Debug)]
pub struct StreamPuts {
    /// The log stream: the lines' agent-server id.
    pub stream: Arc<str>,
    /// Each put is a valid PutLogEvents request (sorted, within every limit).
    pub puts: Vec<Vec<Event>>,
}

/// Groups `lines` by log stream (in order of first appearance) and cuts
/// each stream's events into valid puts.
pub fn plan<'a>(lines: impl IntoIterator<Item = &'a QueuedLine>) -> Vec<StreamPuts> {
    let mut order: Vec<(Arc<str>, Vec<Event>)> = Vec::new();
    let mut index: HashMap<Arc<str>, usize> = HashMap::new();
    for line in lines {
        let at = *index
            .entry(Arc::clone(&line.agent_server_id))
            .or_insert_with(|| {
                order.push((Arc::clone(&line.agent_server_id), Vec::new()));
                order.len() - 1
            });
        order[at].1.push(Event::of(line));
    }
    order
        .into_iter()
        .map(|(stream, events)| StreamPuts {
            stream,
            puts: chunk(events),
        })
        .collect()
}

/// Sorts one stream's events by time (stable) and cuts them into puts of at
/// most [`MAX_EVENTS`] events and [`MAX_BATCH_BYTES`] bytes, each spanning
/// less than [`MAX_SPAN_MS`].
pub fn chunk(mut events: Vec<Event>) -> Vec<Vec<Event>> {
    events.sort_by_key(|e| e.timestamp_ms);
    let mut puts: Vec<Vec<Event>> = Vec::new();
    let mut current: Vec<Event> = Vec::new();
    let mut bytes = 0usize;
    for event in events {
        let size = event.size();
        let full = current.len() >= MAX_EVENTS || bytes.saturating_add(size) > MAX_BATCH_BYTES;
        let too_long = current
            .first()
            .is_some_and(|first| event.timestamp_ms - first.timestamp_ms >= MAX_SPAN_MS);
        if !current.is_empty() && (full || too_long) {
            puts.push(std::mem::take(&mut current));
            bytes = 0;
        }
        bytes = bytes.saturating_add(size);
        current.push(event);
    }
    if !current.is_empty() {
        puts.push(current);
    }
    puts
}
