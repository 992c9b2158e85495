//! Groups the lines of one stream into multi-line events (`--multiline`):
//! a traceback or a stack trace becomes one event, its lines joined by `\n`.
//! Pure: no I/O, and the clock is passed in.
//!
//! A line that may begin an event is held until the next line says whether
//! it continues it, or until the flush time passes without one
//! ([`Grouper::deadline`]). An event is bounded by a number of lines and of
//! bytes; one that reaches a bound is cut, and its pieces are marked as the
//! pieces of a long line are (`part`, `more_parts`). Nothing is dropped.
//! Pieces of a line longer than the maximum are never grouped.
//!
//! It must not know about streams, the buffer or secrets; it never reorders
//! lines.

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use regex::bytes::Regex;
use tokio::time::Instant;

use crate::splitter::Piece;

/// `--multiline`: how lines are grouped.
#[derive(Clone, Debug)]
pub enum Mode {
    /// Every line is its own event.
    Off,
    /// Tracebacks and stack traces of the usual languages, and lines that
    /// continue with leading whitespace.
    Auto,
    /// A line matching the regex begins an event; the lines that do not
    /// match continue it.
    Pattern(Regex),
}

/// Why a `--multiline` value is refused.
#[derive(Debug, thiserror::Error)]
pub enum ModeError {
    #[error("{0:?} is not a mode")]
    Unknown(String),
    #[error("the regex after \"pattern:\" is invalid: {0}")]
    BadRegex(String),
}

impl Mode {
    /// Parses `off`, `auto` or `pattern:<regex>`.
    pub fn parse(value: &str) -> Result<Self, ModeError> {
        match value.trim() {
            "off" => Ok(Mode::Off),
            "auto" => Ok(Mode::Auto),
            other => match other.strip_prefix("pattern:") {
                Some(pattern) => regex::bytes::RegexBuilder::new(pattern)
                    .size_limit(1 << 20)
                    .build()
                    .map(Mode::Pattern)
                    .map_err(|err| ModeError::BadRegex(err.to_string())),
                None => Err(ModeError::Unknown(value.to_owned())),
            },
        }
    }
}

/// Bounds of one event.
#[derive(Clone, Copy, Debug)]
pub struct Bounds {
    pub max_lines: usize,
    pub max_bytes: usize,
    /// How long a held event waits for its next line.
    pub flush: Duration,
}

/// What the event held so far is, in `auto`: which lines may continue it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    /// An ordinary line, maybe with indented continuations.
    Plain,
    /// Inside a Python traceback's frames: the first unindented line is
    /// the exception.
    PyFrames,
    /// After a Python exception line: a chained traceback may follow.
    PyException,
    /// After "During handling of the above exception..." or "The above
    /// exception was the direct cause...".
    PyChain,
    /// A Go panic or fatal error with its goroutine dump.
    GoPanic,
    /// A Rust panic: its message follows the header.
    RustPanic,
}

/// The event held, not yet emitted.
struct Held {
    timestamp_ns: i64,
    /// The event while it is one line, not copied (most lines stay alone).
    first: Option<Bytes>,
    /// The event's lines joined, once a second line came.
    data: BytesMut,
    lines: usize,
    kind: Kind,
    /// Where the trailing blank lines that only a chained traceback would
    /// continue begin (in `data`).
    tentative: Option<usize>,
    /// Index of this piece of an event cut at a bound.
    part: u32,
    last_line_at: Instant,
}

impl Held {
    fn len(&self) -> usize {
        self.first.as_ref().map_or(self.data.len(), Bytes::len)
    }

    fn ends_with(&self, suffix: &[u8]) -> bool {
        self.first
            .as_ref()
            .map_or(self.data.ends_with(suffix), |first| first.ends_with(suffix))
    }

    /// Moves the single line into `data`, to append to it.
    fn join(&mut self) {
        if let Some(first) = self.first.take() {
            self.data.reserve(first.len() + 256);
            self.data.extend_from_slice(&first);
        }
    }

    fn take(&mut self) -> Bytes {
        match self.first.take() {
            Some(first) => first,
            None => std::mem::take(&mut self.data).freeze(),
        }
    }
}

/// Groups one stream's lines; see the module docs.
pub struct Grouper {
    mode: Mode,
    bounds: Bounds,
    held: Option<Held>,
}

/// One event or line to ship, with the timestamp of its first line.
pub type Out = (i64, Piece);

impl Grouper {
    pub fn new(mode: Mode, bounds: Bounds) -> Self {
        Self {
            mode,
            bounds: Bounds {
                max_lines: bounds.max_lines.max(1),
                max_bytes: bounds.max_bytes.max(1),
                flush: bounds.flush,
            },
            held: None,
        }
    }

    /// When the event held must be emitted if no line continues it.
    pub fn deadline(&self) -> Option<Instant> {
        self.held
            .as_ref()
            .map(|h| h.last_line_at + self.bounds.flush)
    }

    /// Takes one piece read at `now`; appends what is complete to `out`.
    pub fn push(&mut self, timestamp_ns: i64, piece: Piece, now: Instant, out: &mut Vec<Out>) {
        if matches!(self.mode, Mode::Off) {
            out.push((timestamp_ns, piece));
            return;
        }
        // Pieces of a long line are shipped as they are.
        if piece.part > 0 || piece.more_parts {
            self.finish(out);
            out.push((timestamp_ns, piece));
            return;
        }
        let line = piece.data;
        if let Some(held) = &mut self.held {
            if let Some(kind) = continues(&self.mode, held, &line) {
                self.append(kind, line, now, out);
                return;
            }
        }
        self.finish(out);
        if may_begin(&self.mode, &line) {
            self.held = Some(Held {
                timestamp_ns,
                kind: begins(&line),
                first: Some(line),
                data: BytesMut::new(),
                lines: 1,
                tentative: None,
                part: 0,
                last_line_at: now,
            });
        } else {
            out.push((timestamp_ns, whole(line)));
        }
    }

    /// Emits the held event if its flush time has passed at `now`.
    pub fn flush_due(&mut self, now: Instant, out: &mut Vec<Out>) {
        if self.deadline().is_some_and(|deadline| deadline <= now) {
            self.finish(out);
        }
    }

    /// Emits the held event, if any.
    pub fn finish(&mut self, out: &mut Vec<Out>) {
        let Some(mut held) = self.held.take() else {
            return;
        };
        // Blank lines no chained traceback followed are lines of their own.
        let rest = held.tentative.map(|at| held.data.split_off(at));
        out.push((
            held.timestamp_ns,
            Piece {
                data: held.take(),
                part: held.part,
                more_parts: false,
            },
        ));
        if let Some(rest) = rest {
            for blank in rest[..].split(|&b| b == b'\n').skip(1) {
                out.push((held.timestamp_ns, whole(Bytes::copy_from_slice(blank))));
            }
        }
    }

    /// Appends `line` to the held event, cutting the event first if the
    /// line would take it over a bound.
    fn append(&mut self, kind: (Kind, bool), line: Bytes, now: Instant, out: &mut Vec<Out>) {
        let Some(held) = &mut self.held else { return };
        let (kind, tentative) = kind;
        if held.lines >= self.bounds.max_lines
            || held.len() + 1 + line.len() > self.bounds.max_bytes
        {
            let cut = held.take();
            out.push((
                held.timestamp_ns,
                Piece {
                    data: cut,
                    part: held.part,
                    more_parts: true,
                },
            ));
            held.part = held.part.saturating_add(1);
            held.lines = 1;
            held.tentative = None;
            held.first = Some(line);
        } else {
            held.join();
            if tentative && held.tentative.is_none() {
                held.tentative = Some(held.data.len());
            } else if !tentative {
                held.tentative = None;
            }
            held.data.extend_from_slice(b"\n");
            held.data.extend_from_slice(&line);
            held.lines += 1;
        }
        held.kind = kind;
        held.last_line_at = now;
    }
}

fn whole(data: Bytes) -> Piece {
    Piece {
        data,
        part: 0,
        more_parts: false,
    }
}

/// Whether `line` may begin an event (else it is emitted at once).
fn may_begin(mode: &Mode, line: &[u8]) -> bool {
    match mode {
        Mode::Off => false,
        Mode::Auto => !line.is_empty(),
        Mode::Pattern(regex) => regex.is_match(line),
    }
}

/// The kind of event `line` begins, in `auto`.
fn begins(line: &[u8]) -> Kind {
    if line.starts_with(PY_TRACEBACK) {
        Kind::PyFrames
    } else if line.starts_with(b"panic: ") || line.starts_with(b"fatal error: ") {
        Kind::GoPanic
    } else if line.starts_with(b"thread '") && contains(line, b"' panicked at") {
        Kind::RustPanic
    } else {
        Kind::Plain
    }
}

const PY_TRACEBACK: &[u8] = b"Traceback (most recent call last):";

fn indented(line: &[u8]) -> bool {
    matches!(line.first(), Some(b' ' | b'\t'))
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    memchr::memmem::find(haystack, needle).is_some()
}

/// If `line` continues the held event: the event's kind after it, and
/// whether the line is only tentatively part of it (a blank line that a
/// chained traceback may follow).
fn continues(mode: &Mode, held: &Held, line: &[u8]) -> Option<(Kind, bool)> {
    let kind = held.kind;
    let keep = Some((kind, false));
    match mode {
        Mode::Off => None,
        Mode::Pattern(regex) => (!regex.is_match(line)).then_some((kind, false)),
        Mode::Auto => {
            if line.is_empty() {
                return match kind {
                    Kind::PyException => Some((kind, true)),
                    Kind::PyChain | Kind::GoPanic => keep,
                    _ => None,
                };
            }
            if line.starts_with(PY_TRACEBACK) {
                // After a log message, an asyncio notice or a chain header;
                // not after a traceback that had no chain header.
                return (kind != Kind::PyException).then_some((Kind::PyFrames, false));
            }
            match kind {
                Kind::PyFrames if !indented(line) => return Some((Kind::PyException, false)),
                Kind::PyException
                    if line.starts_with(b"During handling of the above exception")
                        || line.starts_with(b"The above exception was the direct cause") =>
                {
                    return Some((Kind::PyChain, false))
                }
                Kind::GoPanic
                    if line.starts_with(b"goroutine ")
                        || line.starts_with(b"[signal ")
                        || line.starts_with(b"created by ")
                        || line.ends_with(b")") =>
                {
                    return keep
                }
                Kind::RustPanic if held.lines == 1 => return keep,
                Kind::RustPanic
                    if line.starts_with(b"note: ") || line.starts_with(b"stack backtrace:") =>
                {
                    return keep
                }
                _ => {}
            }
            if indented(line)
                || (held.lines > 1 && line.starts_with(b"Caused by: "))
                || (line.starts_with(b"future: <Task")
                    && held.ends_with(b"exception was never retrieved"))
            {
                return Some((
                    if kind == Kind::PyChain {
                        Kind::Plain
                    } else {
                        kind
                    },
                    false,
                ));
            }
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bounds() -> Bounds {
        Bounds {
            max_lines: 1000,
            max_bytes: 1 << 20,
            flush: Duration::from_millis(100),
        }
    }

    /// Groups `text`'s lines read all at once, then flushes.
    fn group(mode: Mode, bounds: Bounds, text: &str) -> Vec<Piece> {
        let mut grouper = Grouper::new(mode, bounds);
        let now = Instant::now();
        let mut out = Vec::new();
        for line in text.lines() {
            grouper.push(
                1,
                whole(Bytes::copy_from_slice(line.as_bytes())),
                now,
                &mut out,
            );
        }
        grouper.finish(&mut out);
        out.into_iter().map(|(_, piece)| piece).collect()
    }

    fn events(mode: Mode, text: &str) -> Vec<String> {
        group(mode, bounds(), text)
            .into_iter()
            .map(|p| String::from_utf8(p.data.to_vec()).unwrap())
            .collect()
    }

    const PY_CHAINED: &str = "\
before
Traceback (most recent call last):
  File \"/app/agent.py\", line 3, in load
    return json.loads(raw)
json.decoder.JSONDecodeError: Expecting value: line 1 column 1 (char 0)

During handling of the above exception, another exception occurred:

Traceback (most recent call last):
  File \"/app/agent.py\", line 9, in <module>
    load()
RuntimeError: config unreadable";

    #[test]
    fn a_chained_python_traceback_is_one_event_after_the_line_it_follows() {
        let got = events(Mode::Auto, &format!("{PY_CHAINED}\n\nafter\n"));
        let traceback = PY_CHAINED.split_once('\n').unwrap().1;
        assert_eq!(
            got,
            vec!["before\n".to_owned() + traceback, "".into(), "after".into()]
        );
    }

    #[test]
    fn the_direct_cause_chain_and_an_asyncio_task_exception_are_one_event() {
        let text = "\
Task exception was never retrieved
future: <Task finished name='Task-2' coro=<worker() done> exception=KeyError('x')>
Traceback (most recent call last):
  File \"/app/a.py\", line 5, in worker
KeyError: 'x'

The above exception was the direct cause of the following exception:

Traceback (most recent call last):
  File \"/app/a.py\", line 9, in main
ValueError: bad";
        assert_eq!(events(Mode::Auto, text), vec![text.to_owned()]);
    }

    #[test]
    fn two_python_tracebacks_without_a_chain_header_are_two_events() {
        let one = "Traceback (most recent call last):\n  File \"a.py\", line 1\nKeyError: 'a'";
        assert_eq!(
            events(Mode::Auto, &format!("{one}\n{one}\n")),
            vec![one.to_owned(), one.to_owned()]
        );
    }

    #[test]
    fn a_go_panic_with_its_goroutine_dump_is_one_event() {
        let text = "\
panic: runtime error: index out of range [5] with length 3

goroutine 1 [running]:
main.handle({0x4b8f20, 0x3})
\t/app/main.go:12 +0x1d
main.main()
\t/app/main.go:20 +0x25

goroutine 6 [chan receive]:
main.worker()
\t/app/main.go:30 +0x40
created by main.main in goroutine 1
\t/app/main.go:18 +0x1f";
        assert_eq!(
            events(Mode::Auto, &format!("{text}\nnext line")),
            vec![text, "next line"]
        );
    }

    #[test]
    fn a_java_trace_with_causes_and_more_is_one_event() {
        let text = "\
Exception in thread \"main\" java.lang.IllegalStateException: boom
\tat com.example.Main.run(Main.java:10)
\tat com.example.Main.main(Main.java:5)
Caused by: java.io.IOException: disk full
\tat com.example.Store.write(Store.kt:42)
\t... 1 more";
        assert_eq!(
            events(Mode::Auto, &format!("{text}\nnext")),
            vec![text, "next"]
        );
    }

    #[test]
    fn a_node_error_and_a_rust_panic_are_one_event_each() {
        let node = "TypeError: Cannot read properties of undefined (reading 'id')\n    at handler (/app/index.js:7:19)\n    at process.processTicksAndRejections (node:internal/process/task_queues:95:5)";
        let rust = "thread 'main' panicked at src/main.rs:4:5:\nexplicit panic\nstack backtrace:\n   0: rust_begin_unwind\n             at /rustc/library/std/src/panicking.rs:645:5\nnote: Some details are omitted, run with `RUST_BACKTRACE=full` for a verbose backtrace.";
        assert_eq!(
            events(Mode::Auto, &format!("{node}\n{rust}\nnext")),
            vec![node, rust, "next"]
        );
    }

    #[test]
    fn ordinary_lines_stay_lines() {
        let text = "one\ntwo\n\nthree: four\n{\"level\":\"info\"}";
        assert_eq!(
            events(Mode::Auto, text),
            text.split('\n').collect::<Vec<_>>()
        );
    }

    #[test]
    fn with_a_pattern_lines_not_matching_continue_the_event() {
        let mode = Mode::parse(r"pattern:^\d{4}-").unwrap();
        let text = "2026-01-01 first\ndetail a\ndetail b\n2026-01-01 second\nstray";
        assert_eq!(
            events(mode, text),
            vec![
                "2026-01-01 first\ndetail a\ndetail b",
                "2026-01-01 second\nstray"
            ]
        );
        let lone = Mode::parse(r"pattern:^\d{4}-").unwrap();
        assert_eq!(
            events(lone, "no event yet\n2026 x"),
            vec!["no event yet", "2026 x"]
        );
    }

    #[test]
    fn bad_modes_are_refused() {
        assert!(matches!(
            Mode::parse("pattern:(unclosed"),
            Err(ModeError::BadRegex(_))
        ));
        assert!(matches!(Mode::parse("python"), Err(ModeError::Unknown(_))));
        assert!(matches!(Mode::parse("off"), Ok(Mode::Off)));
    }

    #[test]
    fn an_event_over_the_line_bound_is_cut_into_marked_pieces_and_nothing_is_lost() {
        let mut text = String::from("Traceback (most recent call last):\n");
        for i in 0..10_000 {
            text.push_str(&format!("  File \"f.py\", line {i}\n"));
        }
        text.push_str("RecursionError: too deep\nnext ordinary line\n");
        let bounds = Bounds {
            max_lines: 1000,
            ..bounds()
        };
        let pieces = group(Mode::Auto, bounds, &text);
        let (last, event) = pieces.split_last().unwrap();
        assert_eq!(&last.data[..], b"next ordinary line");
        assert_eq!(event.len(), 11);
        for (i, piece) in event.iter().enumerate() {
            assert_eq!(
                (piece.part, piece.more_parts),
                (i as u32, i + 1 < event.len())
            );
            assert!(piece.data.split(|&b| b == b'\n').count() <= 1000);
        }
        let joined: Vec<&[u8]> = event.iter().map(|p| &p.data[..]).collect();
        assert_eq!(
            joined.join(&b'\n'),
            text.trim_end().rsplit_once('\n').unwrap().0.as_bytes()
        );
    }

    #[test]
    fn an_event_over_the_byte_bound_is_cut() {
        let bounds = Bounds {
            max_bytes: 21,
            ..bounds()
        };
        let pieces = group(Mode::Auto, bounds, "0123456789\n  abcdefgh\n  ijklmnop\n");
        let marks: Vec<(&[u8], u32, bool)> = pieces
            .iter()
            .map(|p| (&p.data[..], p.part, p.more_parts))
            .collect();
        assert_eq!(
            marks,
            vec![
                (&b"0123456789\n  abcdefgh"[..], 0, true),
                (b"  ijklmnop", 1, false)
            ]
        );
    }

    #[test]
    fn pieces_of_a_long_line_end_the_event_and_pass_unchanged() {
        let mut grouper = Grouper::new(Mode::Auto, bounds());
        let now = Instant::now();
        let mut out = Vec::new();
        grouper.push(1, whole(Bytes::from_static(b"head")), now, &mut out);
        let piece = Piece {
            data: Bytes::from_static(b"  long"),
            part: 0,
            more_parts: true,
        };
        grouper.push(2, piece.clone(), now, &mut out);
        assert_eq!(
            out,
            vec![(1, whole(Bytes::from_static(b"head"))), (2, piece)]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_held_line_is_emitted_once_the_flush_time_passes_without_a_continuation() {
        let mut grouper = Grouper::new(Mode::Auto, bounds());
        let mut out = Vec::new();
        grouper.push(
            1,
            whole(Bytes::from_static(b"Error: x")),
            Instant::now(),
            &mut out,
        );
        tokio::time::advance(Duration::from_millis(60)).await;
        grouper.push(
            2,
            whole(Bytes::from_static(b"    at f")),
            Instant::now(),
            &mut out,
        );
        tokio::time::advance(Duration::from_millis(60)).await;
        grouper.flush_due(Instant::now(), &mut out);
        assert!(out.is_empty(), "the continuation restarted the flush time");
        assert_eq!(
            grouper.deadline(),
            Some(Instant::now() + Duration::from_millis(40))
        );
        tokio::time::advance(Duration::from_millis(40)).await;
        grouper.flush_due(Instant::now(), &mut out);
        assert_eq!(
            out,
            vec![(1, whole(Bytes::from_static(b"Error: x\n    at f")))]
        );
        assert_eq!(grouper.deadline(), None);
    }
}
