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
//! event, and a time span under [`MAX_SPAN_MS`]. [`event_size`] counts a
//! line exactly as [`plan`] encodes it. This module must not send anything.

use std::borrow::Cow;
use std::collections::HashMap;
use std::io::{self, Write};
use std::sync::Arc;

use logdrain::v1::Origin;
use serde::Serialize;

use crate::queue::{Cursor, QueuedLine};

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
#[derive(Serialize)]
struct Message<'a> {
    message: Cow<'a, str>,
    stream: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    logdrain: Option<Attributes>,
}

/// Attributes under `logdrain.*`, present only when they say something
/// (the same ones the Datadog sink sends).
#[derive(Serialize)]
struct Attributes {
    #[serde(skip_serializing_if = "Option::is_none")]
    part: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    more_parts: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    origin: Option<&'static str>,
}

fn message_of(queued: &QueuedLine) -> Message<'_> {
    let line = &queued.line;
    let piece = line.part > 0 || line.more_parts;
    let shim = line.origin() == Origin::Shim;
    let logdrain = (piece || shim).then(|| Attributes {
        part: piece.then_some(line.part),
        more_parts: piece.then_some(line.more_parts),
        origin: shim.then_some("shim"),
    });
    Message {
        message: line_text(&line.data),
        stream: line.stream().name(),
        logdrain,
    }
}

/// The line as UTF-8 (lossy: bytes that are not UTF-8 become U+FFFD), cut
/// to [`MAX_LINE_JSON_BYTES`] of JSON with a visible marker
/// (`…[truncated by logdrain: N bytes]`, N the line's original length).
pub fn line_text(data: &[u8]) -> Cow<'_, str> {
    let text = String::from_utf8_lossy(data);
    // Lossy conversion at most triples a byte and JSON escaping at most
    // makes six bytes of one: short lines cannot need cutting.
    if data.len().saturating_mul(6) <= MAX_LINE_JSON_BYTES {
        return text;
    }
    let marker = format!("…[truncated by logdrain: {} bytes]", data.len());
    let budget = MAX_LINE_JSON_BYTES - 2 - marker.len(); // 2: the quotes
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

/// The event message of `line`: its JSON object as text.
pub fn message(line: &QueuedLine) -> String {
    // Strings and integers cannot fail to serialize.
    serde_json::to_string(&message_of(line)).unwrap_or_default()
}

/// Counts the bytes written through it.
struct Counting(usize);

impl Write for Counting {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0 += buf.len();
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Bytes `line` adds to a request as CloudWatch counts them: its message's
/// UTF-8 bytes plus [`EVENT_OVERHEAD`]. Never more than [`MAX_EVENT_BYTES`].
pub fn event_size(line: &QueuedLine) -> usize {
    let mut counter = Counting(0);
    // Writing into a counter cannot fail.
    let _ = serde_json::to_writer(&mut counter, &message_of(line));
    counter.0 + EVENT_OVERHEAD
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
