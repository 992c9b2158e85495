//! What every vendor sink does the same way to a line before it becomes
//! part of a request body: the line as UTF-8 text ([`lossy`]), a text cut
//! to a JSON budget with a visible marker ([`json_text`]), the `logdrain.*`
//! attribute values of shim-written lines and split pieces
//! ([`Attributes`]), byte counting of serialised JSON ([`Counting`],
//! [`json_len`]), and the writer request builders lay their per-line JSON
//! out with ([`JsonOut`]: into a body, or only counted, with strings that
//! need no escaping copied as they are).
//!
//! This module owns values, not layouts: where the text and the attributes
//! go in a request (a nested `logdrain` object, dotted names, typed
//! attributes) is each vendor's `request_builder`. It must not know any
//! vendor, and must not send anything.

use std::borrow::Cow;
use std::io::{self, Write};

use logdrain::v1::{Line, Origin};

use crate::queue::QueuedLine;
use serde::Serialize;

/// The `logdrain.origin` value of a line the shim wrote itself.
pub const SHIM_ORIGIN: &str = "shim";

/// The raw line as UTF-8: bytes that are not UTF-8 become U+FFFD, because
/// JSON strings (and every vendor) need Unicode.
pub fn lossy(data: &[u8]) -> Cow<'_, str> {
    // `from_utf8` checks ASCII a word at a time; the lossy path walks
    // character by character and is only needed for invalid input.
    match std::str::from_utf8(data) {
        Ok(text) => Cow::Borrowed(text),
        Err(_) => String::from_utf8_lossy(data),
    }
}

/// The marker that ends a cut text, `original_bytes` being the length of
/// the whole line.
pub fn truncation_marker(original_bytes: usize) -> String {
    format!("…[truncated by logdrain: {original_bytes} bytes]")
}

/// The line as UTF-8 ([`lossy`]), cut so that its JSON string, quotes
/// included, takes at most `budget` bytes as serde_json writes it.
///
/// A text whose JSON fits the budget with room to spare for the marker is
/// returned as it is. Any other text is cut at a character boundary where
/// the marker still fits, and then ends with [`truncation_marker`].
pub fn json_text(data: &[u8], budget: usize) -> Cow<'_, str> {
    let text = lossy(data);
    // Lossy conversion at most triples a byte and JSON escaping at most
    // makes six bytes of one: short lines cannot need cutting.
    if data.len().saturating_mul(6).saturating_add(2) <= budget {
        return text;
    }
    let marker = truncation_marker(data.len());
    let room = budget.saturating_sub(2 + marker.len()); // 2: the quotes
    let mut used = 0;
    for (at, c) in text.char_indices() {
        used += escaped_len(c);
        if used > room {
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

/// The `logdrain.*` attribute values of a line, each present only when it
/// says something: `part` and `more_parts` for pieces of a line the shim
/// split, `origin` ([`SHIM_ORIGIN`]) for lines the shim wrote itself,
/// `original_timestamp` (milliseconds since the epoch, as Datadog, New
/// Relic and CloudWatch stamp logs) for a line the engine sent with the time
/// of sending ([`crate::sinks::engine::late`]).
///
/// Serialised as is, it is the nested `logdrain` object (absent fields are
/// left out); vendors with flat or typed attributes read the fields.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Attributes {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub part: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub more_parts: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub origin: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub original_timestamp: Option<i64>,
}

impl Attributes {
    pub fn of(line: &Line) -> Self {
        let piece = line.part > 0 || line.more_parts;
        let shim = line.origin() == Origin::Shim;
        Self {
            part: piece.then_some(line.part),
            more_parts: piece.then_some(line.more_parts),
            origin: shim.then_some(SHIM_ORIGIN),
            original_timestamp: None,
        }
    }

    /// [`Attributes::of`] the line, with its own time when it was sent with
    /// the time of sending.
    pub fn of_queued(queued: &QueuedLine) -> Self {
        Self {
            original_timestamp: queued
                .original_timestamp_ns
                .map(|ns| ns.div_euclid(1_000_000)),
            ..Self::of(&queued.line)
        }
    }

    /// No attribute says anything: a vendor leaves the object out.
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }
}

/// Counts the bytes written through it.
#[derive(Debug)]
pub struct Counting<W> {
    inner: W,
    count: usize,
}

impl<W> Counting<W> {
    pub fn new(inner: W) -> Self {
        Self { inner, count: 0 }
    }

    /// Bytes written so far.
    pub fn count(&self) -> usize {
        self.count
    }

    pub fn into_inner(self) -> W {
        self.inner
    }
}

impl<W: Write> Write for Counting<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.count += n;
        Ok(n)
    }

    // serde_json writes every token with `write_all`: one call, not a loop.
    #[inline]
    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        self.inner.write_all(buf)?;
        self.count += buf.len();
        Ok(())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Bytes `write` writes, written nowhere.
pub fn counted(write: impl FnOnce(&mut Counting<io::Sink>) -> io::Result<()>) -> usize {
    let mut counter = Counting::new(io::sink());
    // Writing into a sink cannot fail, and neither can serialising the
    // strings, numbers and booleans of a log; count whatever was written
    // if it ever did.
    let _ = write(&mut counter);
    counter.count
}

/// Bytes of `value`'s JSON as serde_json writes it.
pub fn json_len(value: &impl Serialize) -> usize {
    counted(|w| serde_json::to_writer(w, value).map_err(io::Error::from))
}

/// Whether any byte of `bytes` is a `hit`. Checked a block at a time
/// without branching inside a block, which the compiler turns into a few
/// vector compares per block, so `hit` must not branch either: combine its
/// tests with `|`, not `||` (a branching test runs about ten times slower).
#[inline]
pub fn any_byte(bytes: &[u8], hit: impl Fn(u8) -> bool) -> bool {
    let mut blocks = bytes.chunks_exact(32);
    for block in &mut blocks {
        let mut found = false;
        for &b in block {
            found |= hit(b);
        }
        if found {
            return true;
        }
    }
    blocks.remainder().iter().any(|&b| hit(b))
}

/// A byte serde_json escapes in a string: a quote, a backslash, a control
/// character. It writes every other byte (UTF-8 included) unchanged.
#[inline]
fn escaped(b: u8) -> bool {
    (b < 0x20) | (b == b'"') | (b == b'\\')
}

/// Whether `bytes` go into a JSON string as they are ([`escaped`] none).
pub fn json_plain(bytes: &[u8]) -> bool {
    !any_byte(bytes, escaped)
}

/// Whether raw line bytes go into a JSON string as they are without even a
/// UTF-8 check: ASCII, none of it escaped.
pub fn plain_ascii(bytes: &[u8]) -> bool {
    !any_byte(bytes, |b| escaped(b) | !b.is_ascii())
}

/// Writes `,"logdrain":{...}`, the line's [`Attributes`], when they say
/// something; nothing otherwise.
pub fn write_logdrain_member(out: &mut impl JsonOut, queued: &QueuedLine) -> io::Result<()> {
    let attributes = Attributes::of_queued(queued);
    if !attributes.is_empty() {
        out.raw(b",\"logdrain\":");
        out.value(&attributes)?;
    }
    Ok(())
}

/// Writes line `data` as the JSON string of [`json_text`]`(data, budget)`.
/// A short line of [`plain_ascii`] bytes, the usual line, is copied as it
/// is in one pass; any other goes through [`json_text`].
pub fn write_json_text(out: &mut impl JsonOut, data: &[u8], budget: usize) {
    // The quick bound of `json_text`: such a line is never cut.
    let short = data.len().saturating_mul(6).saturating_add(2) <= budget;
    if short && plain_ascii(data) {
        out.quoted(data);
    } else {
        out.string(&json_text(data, budget));
    }
}

/// Where a request builder writes JSON it lays out by hand: a body
/// (`Vec<u8>`) or only its length ([`JsonLen`]). One function written
/// against it gives both a line's bytes and its size, so they cannot drift
/// apart. Output is byte for byte what serde_json writes for the same
/// values.
pub trait JsonOut {
    /// Bytes that are JSON already: punctuation, keys, text escaped before.
    fn raw(&mut self, json: &[u8]);
    /// `text` as a quoted JSON string. Text that needs no escaping
    /// ([`json_plain`]) is copied as it is; other text goes through
    /// serde_json.
    fn string(&mut self, text: &str);
    /// Bytes known to need no escaping (a fixed name, or bytes
    /// [`plain_ascii`] accepted), quoted.
    #[inline]
    fn quoted(&mut self, plain: &[u8]) {
        debug_assert!(json_plain(plain) && std::str::from_utf8(plain).is_ok());
        self.raw(b"\"");
        self.raw(plain);
        self.raw(b"\"");
    }
    /// An integer.
    fn int(&mut self, n: impl itoa::Integer);
    /// Any other value, through serde_json.
    fn value(&mut self, value: &impl Serialize) -> io::Result<()>;
}

impl JsonOut for Vec<u8> {
    #[inline]
    fn raw(&mut self, json: &[u8]) {
        self.extend_from_slice(json);
    }

    #[inline]
    fn string(&mut self, text: &str) {
        if json_plain(text.as_bytes()) {
            self.reserve(text.len() + 2);
            self.push(b'"');
            self.extend_from_slice(text.as_bytes());
            self.push(b'"');
        } else {
            // Serialising a string into memory cannot fail.
            let _ = serde_json::to_writer(&mut *self, text);
        }
    }

    #[inline]
    fn int(&mut self, n: impl itoa::Integer) {
        self.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
    }

    fn value(&mut self, value: &impl Serialize) -> io::Result<()> {
        serde_json::to_writer(&mut *self, value).map_err(io::Error::from)
    }
}

/// Counts the bytes a layout would write, writing nothing.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct JsonLen(usize);

impl JsonLen {
    /// Bytes counted so far.
    pub fn count(self) -> usize {
        self.0
    }
}

impl JsonOut for JsonLen {
    #[inline]
    fn raw(&mut self, json: &[u8]) {
        self.0 += json.len();
    }

    #[inline]
    fn string(&mut self, text: &str) {
        self.0 += if json_plain(text.as_bytes()) {
            text.len() + 2
        } else {
            json_len(&text)
        };
    }

    #[inline]
    fn int(&mut self, n: impl itoa::Integer) {
        self.0 += itoa::Buffer::new().format(n).len();
    }

    fn value(&mut self, value: &impl Serialize) -> io::Result<()> {
        self.0 += json_len(value);
        Ok(())
    }
}

/// Bytes `layout` writes.
pub fn json_out_len(layout: impl FnOnce(&mut JsonLen) -> io::Result<()>) -> usize {
    let mut len = JsonLen::default();
    // Counting cannot fail, and neither can serialising the strings,
    // numbers and booleans of a log.
    let _ = layout(&mut len);
    len.count()
}

/// Line data that takes the JSON writer's every path: escapes, every
/// control character, invalid UTF-8, ANSI colours, non-ASCII. Each vendor's
/// tests add the lines its own layout needs (lengths around its cuts).
#[cfg(test)]
pub(crate) fn awkward_texts() -> Vec<Vec<u8>> {
    vec![
        b"plain line".to_vec(),
        b"quote \" backslash \\ tab \t newline \n cr \r".to_vec(),
        (0u8..0x20).collect(),
        b"caf\xe9 \xff ok \xf0\x9f".to_vec(),
        b"\x1b[2m2024-05-01T12:00:00Z\x1b[0m \x1b[33m WARN\x1b[0m colours".to_vec(),
        "caf\u{e9} \u{2603} \u{1f600} \u{7f} \u{2028}"
            .as_bytes()
            .to_vec(),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn quoted_len(text: &str) -> usize {
        serde_json::to_string(text).unwrap().len()
    }

    #[test]
    fn bytes_that_are_not_utf8_become_replacement_characters() {
        assert_eq!(lossy(b"caf\xe9 \xff ok"), "caf\u{fffd} \u{fffd} ok");
    }

    #[test]
    fn a_text_that_fits_with_room_for_the_marker_is_returned_untouched() {
        let data = "tab\t \"quoted\" é".as_bytes();
        // Too close to the budget for the quick length bound: counted.
        let budget = quoted_len("tab\t \"quoted\" é") + truncation_marker(data.len()).len();
        assert!(data.len() * 6 + 2 > budget);
        assert!(matches!(json_text(data, budget), Cow::Borrowed(_)));
        assert_eq!(json_text(data, budget), "tab\t \"quoted\" é");
        let tight = json_text(data, budget - 1);
        assert!(tight.ends_with(&truncation_marker(data.len())), "{tight}");
    }

    #[test]
    fn an_over_long_text_is_cut_within_its_budget_and_ends_with_the_marker() {
        let budget = 10_000;
        let long = vec![b'a'; 50_000];
        let controls = vec![0x01u8; 5_000]; // six bytes each once escaped
        for data in [long, controls] {
            let text = json_text(&data, budget);
            assert!(text.ends_with(&truncation_marker(data.len())), "no marker");
            let size = quoted_len(&text);
            assert!(size <= budget, "{size}");
            assert!(size > budget - 10, "cut far too short: {size}");
        }
    }

    #[test]
    fn a_cut_never_splits_a_character() {
        // "é" is two bytes: any budget lands the cut on a boundary.
        let data = "é".repeat(5_000);
        for budget in [1_001, 1_002, 1_003] {
            let text = json_text(data.as_bytes(), budget);
            let kept = text.trim_end_matches(&truncation_marker(data.len()));
            assert!(kept.chars().all(|c| c == 'é'), "{kept}");
            assert!(quoted_len(&text) <= budget);
        }
    }

    #[test]
    fn the_marker_names_the_original_length() {
        assert_eq!(
            truncation_marker(2_500_000),
            "…[truncated by logdrain: 2500000 bytes]"
        );
    }

    fn line(part: u32, more_parts: bool, origin: Origin) -> Line {
        Line {
            part,
            more_parts,
            origin: origin as i32,
            ..Line::default()
        }
    }

    #[test]
    fn a_whole_agent_line_has_no_attributes() {
        let attributes = Attributes::of(&line(0, false, Origin::Agent));
        assert!(attributes.is_empty());
        assert_eq!(serde_json::to_string(&attributes).unwrap(), "{}");
    }

    #[test]
    fn pieces_carry_their_part_and_whether_more_follow() {
        let first = Attributes::of(&line(0, true, Origin::Agent));
        assert_eq!(
            serde_json::to_value(first).unwrap(),
            serde_json::json!({"part": 0, "more_parts": true})
        );
        let last = Attributes::of(&line(2, false, Origin::Agent));
        assert_eq!((last.part, last.more_parts), (Some(2), Some(false)));
        assert_eq!(last.origin, None);
    }

    #[test]
    fn only_shim_lines_carry_an_origin() {
        let shim = Attributes::of(&line(0, false, Origin::Shim));
        assert_eq!(
            serde_json::to_value(shim).unwrap(),
            serde_json::json!({"origin": "shim"})
        );
        assert!(!shim.is_empty());
    }

    #[test]
    fn counting_counts_what_reaches_the_inner_writer() {
        let mut out = Counting::new(Vec::new());
        out.write_all(b"[1,").unwrap();
        serde_json::to_writer(&mut out, &"é").unwrap();
        assert_eq!(out.count(), 3 + 4);
        assert_eq!(out.into_inner(), "[1,\"é\"".as_bytes());
    }

    /// Awkward texts: escapes, every control character, invalid UTF-8 made
    /// lossy, ANSI colours, non-ASCII, DEL, and long runs on both sides of
    /// the block size.
    fn awkward_texts() -> Vec<String> {
        let mut texts: Vec<String> = [
            "",
            "plain ascii text",
            "quote \" inside",
            "back\\slash",
            "tab\tnewline\ncr\r",
            "\u{1b}[31mred\u{1b}[0m and \u{1b}]0;title\u{7}",
            "caf\u{e9} \u{2603} \u{1f600} \u{7f} \u{80}",
            "</script> & 'single' \u{2028}",
        ]
        .iter()
        .map(|t| t.to_string())
        .collect();
        texts.push(lossy(b"caf\xe9 \xff ok").into_owned());
        texts.push((0u8..0x20).map(char::from).collect());
        for len in [31, 32, 33, 64, 100, 5_000] {
            texts.push("x".repeat(len));
            let mut late = "y".repeat(len - 1);
            late.push('"');
            texts.push(late);
            let mut early = String::from("\u{1}");
            early.push_str(&"z".repeat(len));
            texts.push(early);
        }
        texts
    }

    #[test]
    fn hand_written_strings_match_serde_json_on_awkward_text() {
        for text in awkward_texts() {
            let mut out = Vec::new();
            out.string(&text);
            let reference = serde_json::to_vec(&text).unwrap();
            assert_eq!(out, reference, "{text:?}");
            assert_eq!(
                json_out_len(|len| {
                    len.string(&text);
                    Ok(())
                }),
                reference.len(),
                "{text:?}"
            );
            let needs_escape = text.bytes().any(|b| b < 0x20 || b == b'"' || b == b'\\');
            assert_eq!(json_plain(text.as_bytes()), !needs_escape, "{text:?}");
        }
    }

    #[test]
    fn line_text_written_in_one_pass_matches_the_general_path() {
        let mut lines: Vec<Vec<u8>> = awkward_texts()
            .into_iter()
            .map(String::into_bytes)
            .collect();
        lines.push(b"caf\xe9 \xff ok".to_vec());
        lines.push(b"\x7f del".to_vec());
        lines.push(vec![b'a'; 2_000]);
        for data in &lines {
            for budget in [
                usize::MAX,
                10_000,
                data.len() * 6 + 2,
                data.len() * 6 + 1,
                60,
            ] {
                let mut out = Vec::new();
                write_json_text(&mut out, data, budget);
                let reference = serde_json::to_vec(&json_text(data, budget)).unwrap();
                assert!(out == reference, "{data:?} in {budget}");
                let counted = json_out_len(|len| {
                    write_json_text(len, data, budget);
                    Ok(())
                });
                assert_eq!(counted, reference.len());
            }
            let ascii_plain = data
                .iter()
                .all(|&b| (0x20..0x80).contains(&b) && b != b'"' && b != b'\\');
            assert_eq!(plain_ascii(data), ascii_plain, "{data:?}");
        }
    }

    #[test]
    fn every_byte_is_plain_exactly_when_serde_json_leaves_it_alone() {
        for b in 0..=0x7fu8 {
            let text = char::from(b).to_string();
            let reference = serde_json::to_string(&text).unwrap();
            let unchanged = reference.len() == 3;
            for at in [0, 31, 32, 40] {
                let mut bytes = vec![b'a'; 41];
                bytes[at] = b;
                assert_eq!(json_plain(&bytes), unchanged, "{b:#x} at {at}");
            }
        }
    }

    #[test]
    fn hand_written_numbers_and_values_match_serde_json() {
        for n in [0i64, 7, -1, -1_500, i64::MIN, i64::MAX, 1_700_000_000_123] {
            let mut out = Vec::new();
            out.int(n);
            assert_eq!(out, serde_json::to_vec(&n).unwrap());
            assert_eq!(
                json_out_len(|len| {
                    len.int(n);
                    Ok(())
                }),
                out.len()
            );
        }
        let attributes = Attributes::of(&line(2, true, Origin::Shim));
        let mut out = Vec::new();
        out.value(&attributes).unwrap();
        assert_eq!(out, serde_json::to_vec(&attributes).unwrap());
        assert_eq!(json_out_len(|len| len.value(&attributes)), out.len());
    }

    #[test]
    fn json_len_is_the_serialised_length() {
        let value = serde_json::json!({"message": "a \"b\"\n", "n": 12});
        assert_eq!(json_len(&value), serde_json::to_vec(&value).unwrap().len());
    }
}
