//! Level detection: which severity a raw log line names, shared by every sink.
//!
//! Datadog `status`, Sentry `level` and the New Relic `level` attribute all
//! come from [`detect`]. The level is taken from the line itself when the line
//! names one — a JSON object's `level`/`severity` field, a `level=` logfmt
//! pair, or a level token in the line's header (the timestamp, logger name
//! and bracketed fields that come before the message text). Only when the line
//! names no level does the stream decide: stdout → info, stderr → error. Many
//! programs (Python's `logging` by default) write every line to stderr, so a
//! stderr line is never called an error before its own text was looked at.
//!
//! This module must never panic on any bytes and must bound its work per
//! line: text is inspected in its first [`TEXT_PREFIX_BYTES`] bytes only, and
//! JSON is parsed only up to [`MAX_JSON_BYTES`] (longer or broken JSON is
//! scanned in a prefix for a level key). It knows nothing about vendors.

use std::fmt;
use std::ops::ControlFlow;

use logdrain::v1::StreamKind;
use serde::Deserialize;

/// How many leading bytes of a text line are inspected for a level token.
pub const TEXT_PREFIX_BYTES: usize = 512;

/// JSON object lines up to this size are parsed; longer ones are scanned.
pub const MAX_JSON_BYTES: usize = 64 * 1024;

/// How many leading bytes of an unparsed JSON line are scanned for a level key.
const JSON_SCAN_BYTES: usize = 4096;

/// How many plain words (logger names, host names, ...) may come before the
/// level token. The third plain word is taken as the start of the message, so
/// a level word later in the message text is never mistaken for the level.
const MAX_WORDS_BEFORE_LEVEL: usize = 2;

/// Keys of a `key=value` pair (logfmt, Go slog text) that carry the level.
const LOGFMT_LEVEL_KEYS: &[&[u8]] = &[
    b"level",
    b"lvl",
    b"severity",
    b"loglevel",
    b"log.level",
    b"levelname",
];

/// Keys scanned for in a JSON line too long or too broken to parse, in order
/// of preference.
const JSON_SCAN_KEYS: &[&[u8]] = &[
    b"\"level\"",
    b"\"severity\"",
    b"\"lvl\"",
    b"\"levelname\"",
    b"\"log.level\"",
];

/// Severity of one log line, from least to most severe.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Level {
    Trace,
    Debug,
    Info,
    Warn,
    Error,
    Fatal,
}

impl Level {
    /// The level whose name is the longest in every vendor's vocabulary
    /// (`fatal`; Datadog's `critical`): a size counted with it is never
    /// below the size with the line's real level, so sinks can count a
    /// line's bytes without detecting its level.
    pub const WIDEST: Level = Level::Fatal;

    pub const ALL: [Level; 6] = [
        Level::Trace,
        Level::Debug,
        Level::Info,
        Level::Warn,
        Level::Error,
        Level::Fatal,
    ];

    /// The lowercase name vendors receive.
    pub fn as_str(self) -> &'static str {
        match self {
            Level::Trace => "trace",
            Level::Debug => "debug",
            Level::Info => "info",
            Level::Warn => "warn",
            Level::Error => "error",
            Level::Fatal => "fatal",
        }
    }

    /// Parses a level name as logging libraries write it, in any case:
    /// `WARNING`, `warn`, `Error`, `CRITICAL` (fatal), `panic` (fatal),
    /// zerolog's `WRN`, logrus' `ERRO`, Go slog's `WARN+2`.
    pub fn from_name(name: &str) -> Option<Level> {
        level_word(name.trim().as_bytes())
    }

    /// Maps the numeric levels of pino and bunyan (10 trace … 60 fatal).
    /// Other numbers are not levels.
    pub fn from_number(n: f64) -> Option<Level> {
        if n.fract() != 0.0 {
            return None;
        }
        Some(match n as i64 {
            10 => Level::Trace,
            20 => Level::Debug,
            30 => Level::Info,
            40 => Level::Warn,
            50 => Level::Error,
            60 => Level::Fatal,
            _ => return None,
        })
    }
}

impl fmt::Display for Level {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The level of one line: the level the line names, else the stream default.
/// A multi-line event (a traceback the shim grouped) is read in its first
/// line and its last, where an exception names itself.
pub fn detect(line: &[u8], stream: StreamKind) -> Level {
    let newline = |b: &u8| *b == b'\n';
    let (Some(first), Some(last)) = (
        line.iter().position(newline),
        line.iter().rposition(newline),
    ) else {
        return named(line).unwrap_or_else(|| stream_default(stream));
    };
    let (first, last) = (&line[..first], &line[last + 1..]);
    named(first)
        .or_else(|| named(last))
        .or_else(|| {
            [first, last]
                .into_iter()
                .any(names_exception)
                .then_some(Level::Error)
        })
        .unwrap_or_else(|| stream_default(stream))
}

/// `ValueError: ...`, `java.io.IOException: ...`, `Exception in thread ...`:
/// a dotted name ending in `Error` or `Exception`, then `:`, a space or the end.
fn names_exception(line: &[u8]) -> bool {
    let line = line.trim_ascii();
    let end = line
        .iter()
        .position(|&b| !(b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'$')))
        .unwrap_or(line.len());
    let (name, rest) = line.split_at(end);
    (name.ends_with(b"Error") || name.ends_with(b"Exception"))
        && matches!(rest.first(), None | Some(b':' | b' '))
}

/// The level used for a line that names none: stderr → error, otherwise info.
pub fn stream_default(stream: StreamKind) -> Level {
    match stream {
        StreamKind::Stderr => Level::Error,
        StreamKind::Stdout | StreamKind::Unspecified => Level::Info,
    }
}

/// The level the line itself names, if any.
pub fn named(line: &[u8]) -> Option<Level> {
    let line = line.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(line);
    let trimmed = line.trim_ascii_start();
    if trimmed.first() == Some(&b'{') {
        if let Some(parsed) = parse_json(trimmed) {
            return parsed;
        }
        // Not a complete JSON object: a long line, a piece of a split line,
        // or text that merely starts with a brace.
        if let Some(level) = scan_json_prefix(trimmed) {
            return Some(level);
        }
    }
    text_level(line)
}

// ---------------------------------------------------------------------------
// JSON lines
// ---------------------------------------------------------------------------

/// The level fields of a JSON log line, most preferred first. Unknown fields
/// are skipped without being built.
#[derive(Deserialize)]
struct JsonFields {
    #[serde(alias = "Level", alias = "LEVEL", alias = "lvl", alias = "loglevel")]
    level: Option<JsonValue>,
    #[serde(
        alias = "Severity",
        alias = "SEVERITY",
        alias = "severity_text",
        alias = "SeverityText"
    )]
    severity: Option<JsonValue>,
    #[serde(alias = "levelName", alias = "level_name")]
    levelname: Option<JsonValue>,
    /// Elastic Common Schema, dotted form.
    #[serde(rename = "log.level")]
    log_level: Option<JsonValue>,
    /// Elastic Common Schema, nested form; Docker's `log` string also lands here.
    log: Option<JsonLog>,
    /// Serilog compact JSON.
    #[serde(rename = "@l")]
    serilog: Option<JsonValue>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum JsonValue {
    Text(String),
    Number(f64),
    Other(serde::de::IgnoredAny),
}

impl JsonValue {
    fn level(&self) -> Option<Level> {
        match self {
            JsonValue::Text(name) => Level::from_name(name),
            JsonValue::Number(n) => Level::from_number(*n),
            JsonValue::Other(_) => None,
        }
    }
}

#[derive(Deserialize)]
#[serde(untagged)]
enum JsonLog {
    Object { level: Option<JsonValue> },
    Other(serde::de::IgnoredAny),
}

/// `Some(level)` when the line is a JSON object (with or without a level),
/// `None` when it is not parseable JSON or too long to parse.
fn parse_json(line: &[u8]) -> Option<Option<Level>> {
    if line.len() > MAX_JSON_BYTES {
        return None;
    }
    let fields: JsonFields = serde_json::from_slice(line).ok()?;
    let nested = match &fields.log {
        Some(JsonLog::Object { level }) => level.as_ref(),
        _ => None,
    };
    let candidates = [
        fields.level.as_ref(),
        fields.severity.as_ref(),
        fields.levelname.as_ref(),
        fields.log_level.as_ref(),
        nested,
        fields.serilog.as_ref(),
    ];
    let level = candidates.into_iter().flatten().find_map(JsonValue::level);
    Some(level)
}

/// Finds `"level": "warn"` (or a numeric level) in the first bytes of a JSON
/// line that could not be parsed.
fn scan_json_prefix(line: &[u8]) -> Option<Level> {
    let prefix = &line[..line.len().min(JSON_SCAN_BYTES)];
    JSON_SCAN_KEYS
        .iter()
        .find_map(|key| json_key_value(prefix, key))
}

fn json_key_value(prefix: &[u8], key: &[u8]) -> Option<Level> {
    let mut from = 0;
    while let Some(at) = find(&prefix[from..], key).map(|i| i + from) {
        from = at + key.len();
        // `\"level\"` inside a string value is text, not a key.
        if at > 0 && prefix[at - 1] == b'\\' {
            continue;
        }
        let rest = prefix[from..].trim_ascii_start();
        let Some(rest) = rest.strip_prefix(b":") else {
            continue;
        };
        let rest = rest.trim_ascii_start();
        if let Some(quoted) = rest.strip_prefix(b"\"") {
            let end = quoted.iter().position(|&b| b == b'"')?;
            return level_word(&quoted[..end]);
        }
        let end = rest
            .iter()
            .position(|b| !b.is_ascii_digit())
            .unwrap_or(rest.len());
        let number = std::str::from_utf8(&rest[..end])
            .ok()?
            .parse::<f64>()
            .ok()?;
        return Level::from_number(number);
    }
    None
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack
        .windows(needle.len())
        .position(|window| window == needle)
}

// ---------------------------------------------------------------------------
// Text lines
// ---------------------------------------------------------------------------

/// What one piece of a line's header is.
enum Piece {
    /// A level token.
    Level(Level),
    /// Timestamps, numbers, separators, bracketed fields, `key=value` pairs.
    Header,
    /// A plain word: a logger or host name, or the message itself.
    Word,
}

fn text_level(line: &[u8]) -> Option<Level> {
    let prefix = &line[..line.len().min(TEXT_PREFIX_BYTES)];
    // Every way a text line names its level spells a word (a level name,
    // a `level=` key, glog's tag letter): a head without a single ASCII
    // letter names none, and its numbers need not be walked token by token.
    if !has_ascii_letter(prefix) {
        return None;
    }
    let mut buf = [0u8; TEXT_PREFIX_BYTES];
    // Most lines have no colours: no copy then.
    let text = if prefix.contains(&0x1b) {
        strip_ansi(prefix, &mut buf)
    } else {
        prefix
    };
    if let Some(level) = glog_level(text) {
        return Some(level);
    }
    let mut header = Header { words: 0 };
    for token in Tokens(text) {
        if token.first().is_some_and(u8::is_ascii_digit) && !token.contains(&b':') {
            // A number or date: header, whatever else it holds (a key
            // starting with a digit is never a level key). The quick path
            // for long numeric tokens.
            continue;
        }
        if let Some(pair) = key_value(token) {
            if let ControlFlow::Break(found) = header.feed(pair) {
                return found;
            }
        } else {
            // `WARNING:root:msg`, `12:00:00,123:ERROR:msg`: each part counts.
            let mut parts = token.split(|&b| b == b':').peekable();
            while let Some(part) = parts.next() {
                let colon = parts.peek().is_some();
                let piece = classify(part, colon, header.words);
                if let ControlFlow::Break(found) = header.feed(piece) {
                    return found;
                }
            }
        }
    }
    None
}

/// Whether `bytes` hold an ASCII letter, many bytes per step.
fn has_ascii_letter(bytes: &[u8]) -> bool {
    crate::sinks::text::any_byte(bytes, |b| (b | 0x20).wrapping_sub(b'a') < 26)
}

/// Progress through a line's header.
struct Header {
    /// Plain words seen so far.
    words: usize,
}

impl Header {
    /// Takes the next piece; breaks with the level once it is found, or with
    /// `None` once the message text has begun.
    fn feed(&mut self, piece: Piece) -> ControlFlow<Option<Level>> {
        match piece {
            Piece::Level(level) => ControlFlow::Break(Some(level)),
            Piece::Header => ControlFlow::Continue(()),
            Piece::Word => {
                self.words += 1;
                if self.words > MAX_WORDS_BEFORE_LEVEL {
                    ControlFlow::Break(None)
                } else {
                    ControlFlow::Continue(())
                }
            }
        }
    }
}

/// Classifies one colon-separated part of a whitespace-separated token.
///
/// A level word counts when it is written in capitals (`ERROR ...`,
/// `2024-05-01 12:00:00 WARN ...`), bracketed (`[error]`, `<warn>`), or
/// followed by a colon before any plain word (`error: ...`,
/// `(node:1) Warning: ...`). A lowercase word without a colon is prose:
/// `Alert sent to the user` is not a fatal line.
fn classify(part: &[u8], colon: bool, words: usize) -> Piece {
    const OPENERS: &[u8] = b"[(<{|";
    const CLOSERS: &[u8] = b"])>}|,;";
    let mut core = part;
    let mut bracketed = false;
    while let [b, rest @ ..] = core {
        if !OPENERS.contains(b) {
            break;
        }
        bracketed = true;
        core = rest;
    }
    while let [rest @ .., b] = core {
        if !CLOSERS.contains(b) {
            break;
        }
        bracketed = true;
        core = rest;
    }
    // `ERRO[0000]` (logrus), `prog[123]` (syslog tag): the name ends at `[`.
    let name = match core.iter().position(|&b| b == b'[') {
        Some(at) => {
            bracketed = true;
            &core[..at]
        }
        None => core,
    };
    if name.iter().all(|b| !b.is_ascii_alphanumeric()) {
        return Piece::Header;
    }
    if name[0].is_ascii_digit() || is_month(name) {
        return Piece::Header;
    }
    if let Some(level) = level_word(name) {
        let capitals = name
            .iter()
            .take_while(|b| b.is_ascii_alphabetic())
            .all(u8::is_ascii_uppercase);
        if capitals || bracketed || (colon && words == 0) {
            return Piece::Level(level);
        }
    }
    if bracketed {
        Piece::Header
    } else {
        Piece::Word
    }
}

/// A `key=value` token: a level when the key names one, a header otherwise.
fn key_value(token: &[u8]) -> Option<Piece> {
    let eq = token.iter().position(|&b| b == b'=')?;
    let key = &token[..eq];
    let is_key = !key.is_empty()
        && key
            .iter()
            .all(|&b| b.is_ascii_alphanumeric() || b"_.-@".contains(&b));
    if !is_key {
        return None;
    }
    if !LOGFMT_LEVEL_KEYS
        .iter()
        .any(|k| k.eq_ignore_ascii_case(key))
    {
        return Some(Piece::Header);
    }
    let value = &token[eq + 1..];
    let value = value
        .strip_prefix(b"\"")
        .and_then(|v| v.strip_suffix(b"\""))
        .unwrap_or(value);
    let level = level_word(value).or_else(|| {
        let number = std::str::from_utf8(value).ok()?.parse::<f64>().ok()?;
        Level::from_number(number)
    });
    Some(level.map_or(Piece::Header, Piece::Level))
}

/// glog/klog: `E0501 12:00:00.123456 1234 file.go:42] msg`.
fn glog_level(text: &[u8]) -> Option<Level> {
    let [tag, m1, m2, d1, d2, b' ', rest @ ..] = text else {
        return None;
    };
    if ![m1, m2, d1, d2].iter().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let time = rest.trim_ascii_start();
    let [h1, h2, b':', n1, n2, b':', s1, s2, ..] = time else {
        return None;
    };
    if ![h1, h2, n1, n2, s1, s2].iter().all(|b| b.is_ascii_digit()) {
        return None;
    }
    match tag {
        b'I' => Some(Level::Info),
        b'W' => Some(Level::Warn),
        b'E' => Some(Level::Error),
        b'F' => Some(Level::Fatal),
        _ => None,
    }
}

/// A level name in any case, optionally with Go slog's `+N`/`-N` offset.
fn level_word(word: &[u8]) -> Option<Level> {
    let alpha = word
        .iter()
        .position(|b| !b.is_ascii_alphabetic())
        .unwrap_or(word.len());
    let (name, offset) = word.split_at(alpha);
    let offset_ok = match offset {
        [] => true,
        [b'+' | b'-', digits @ ..] => !digits.is_empty() && digits.iter().all(u8::is_ascii_digit),
        _ => false,
    };
    if name.is_empty() || name.len() > 13 || !offset_ok {
        return None;
    }
    let mut lower = [0u8; 13];
    let lower = &mut lower[..name.len()];
    lower.copy_from_slice(name);
    lower.make_ascii_lowercase();
    Some(match &*lower {
        b"trace" | b"trc" | b"trac" | b"verbose" => Level::Trace,
        b"debug" | b"dbg" | b"debu" => Level::Debug,
        b"info" | b"inf" | b"information" | b"informational" | b"notice" => Level::Info,
        b"warn" | b"warning" | b"wrn" => Level::Warn,
        b"error" | b"err" | b"erro" | b"severe" => Level::Error,
        b"fatal" | b"ftl" | b"fata" | b"critical" | b"crit" | b"panic" | b"pnc" | b"pani"
        | b"dpanic" | b"alert" | b"emerg" | b"emergency" => Level::Fatal,
        _ => return None,
    })
}

fn is_month(word: &[u8]) -> bool {
    const MONTHS: &[&[u8]] = &[
        b"jan", b"feb", b"mar", b"apr", b"may", b"jun", b"jul", b"aug", b"sep", b"oct", b"nov",
        b"dec",
    ];
    MONTHS.iter().any(|m| m.eq_ignore_ascii_case(word))
}

/// Copies `input` into `buf` without ANSI escape sequences (colours).
fn strip_ansi<'a>(input: &[u8], buf: &'a mut [u8; TEXT_PREFIX_BYTES]) -> &'a [u8] {
    let mut len = 0;
    let mut i = 0;
    while i < input.len() {
        if input[i] != 0x1b {
            buf[len] = input[i];
            len += 1;
            i += 1;
            continue;
        }
        match input.get(i + 1) {
            // CSI: ESC [ parameters... final byte in 0x40..=0x7E.
            Some(b'[') => {
                i += 2;
                while i < input.len() && !(0x40..=0x7e).contains(&input[i]) {
                    i += 1;
                }
                i += 1;
            }
            // OSC: ESC ] ... terminated by BEL or ESC \.
            Some(b']') => {
                i += 2;
                while i < input.len() && input[i] != 0x07 && input[i] != 0x1b {
                    i += 1;
                }
                i += if input.get(i) == Some(&0x1b) { 2 } else { 1 };
            }
            _ => i += 2,
        }
    }
    &buf[..len]
}

/// Whitespace-separated tokens; a double-quoted run (`msg="a b"`) stays in
/// one token.
struct Tokens<'a>(&'a [u8]);

impl<'a> Iterator for Tokens<'a> {
    type Item = &'a [u8];

    fn next(&mut self) -> Option<&'a [u8]> {
        let text = self.0.trim_ascii_start();
        if text.is_empty() {
            self.0 = text;
            return None;
        }
        let mut i = 0;
        let mut quoted = false;
        while i < text.len() {
            match text[i] {
                b'\\' if quoted => i += 1,
                b'"' => quoted = !quoted,
                b if b.is_ascii_whitespace() && !quoted => break,
                _ => {}
            }
            i += 1;
        }
        let end = i.min(text.len());
        self.0 = &text[end..];
        Some(&text[..end])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn out(line: &str) -> Level {
        detect(line.as_bytes(), StreamKind::Stdout)
    }

    fn err(line: &str) -> Level {
        detect(line.as_bytes(), StreamKind::Stderr)
    }

    #[test]
    fn a_multi_line_event_is_read_in_its_first_and_last_line() {
        let traceback = "Traceback (most recent call last):\n  File \"a.py\", line 1, in <module>\njson.decoder.JSONDecodeError: Expecting value";
        assert_eq!(out(traceback), Level::Error);
        assert_eq!(
            out("Exception in thread \"main\" java.lang.X: y\n\tat A.b(A.java:1)"),
            Level::Error
        );
        assert_eq!(out("WARNING retrying\n  attempt 2"), Level::Warn);
        assert_eq!(out("listening\n  on port 80"), Level::Info);
        assert_eq!(err("starting\n  details"), Level::Error);
        // A single line is read as before.
        assert_eq!(out("ValueError: x"), Level::Info);
    }

    #[test]
    fn level_names_are_lowercase_and_ordered_by_severity() {
        let names: Vec<_> = Level::ALL.iter().map(|l| l.as_str()).collect();
        assert_eq!(names, ["trace", "debug", "info", "warn", "error", "fatal"]);
        assert!(Level::Warn < Level::Error && Level::Error < Level::Fatal);
        assert_eq!(Level::Warn.to_string(), "warn");
    }

    #[test]
    fn level_names_parse_in_any_case_and_common_spellings() {
        assert_eq!(Level::from_name("WARNING"), Some(Level::Warn));
        assert_eq!(Level::from_name("warn"), Some(Level::Warn));
        assert_eq!(Level::from_name("Error"), Some(Level::Error));
        assert_eq!(Level::from_name("CRITICAL"), Some(Level::Fatal));
        assert_eq!(Level::from_name("panic"), Some(Level::Fatal));
        assert_eq!(Level::from_name("WARN+2"), Some(Level::Warn));
        assert_eq!(Level::from_name("DEBUG-4"), Some(Level::Debug));
        assert_eq!(Level::from_name("default"), None);
        assert_eq!(Level::from_name("warnings"), None);
        assert_eq!(Level::from_name(""), None);
    }

    #[test]
    fn plain_lines_default_by_stream() {
        assert_eq!(out("listening on port 8080"), Level::Info);
        assert_eq!(err("listening on port 8080"), Level::Error);
        assert_eq!(
            detect(b"listening", StreamKind::Unspecified),
            Level::Info,
            "an unspecified stream is treated like stdout"
        );
    }

    #[test]
    fn empty_and_blank_lines_default_by_stream() {
        assert_eq!(out(""), Level::Info);
        assert_eq!(err(""), Level::Error);
        assert_eq!(err("   \t"), Level::Error);
    }

    #[test]
    fn python_logging_default_format_names_the_level_on_stderr() {
        assert_eq!(err("WARNING:root:disk almost full"), Level::Warn);
        assert_eq!(err("INFO:livekit.agents:starting worker"), Level::Info);
        assert_eq!(
            err("DEBUG:asyncio:Using selector: EpollSelector"),
            Level::Debug
        );
        assert_eq!(err("ERROR:root:boom"), Level::Error);
        assert_eq!(err("CRITICAL:root:out of memory"), Level::Fatal);
    }

    #[test]
    fn python_basic_config_formats_name_the_level() {
        assert_eq!(
            err("2024-05-01 12:00:00,123 - myapp - ERROR - could not connect"),
            Level::Error
        );
        assert_eq!(
            err("2024-05-01 12:00:00,123 - livekit.agents - INFO - registered worker"),
            Level::Info
        );
        assert_eq!(
            err("2024-05-01 12:00:00,123 WARNING  myapp.db  slow query took 3s"),
            Level::Warn
        );
        assert_eq!(
            err("2024-05-01 12:00:00,123:DEBUG:myapp:tick"),
            Level::Debug
        );
        assert_eq!(
            err("2024-05-01 12:00:00,123 - INFO livekit.agents - starting worker"),
            Level::Info
        );
        // uvicorn's default format.
        assert_eq!(err("INFO:     Started server process [42]"), Level::Info);
    }

    #[test]
    fn python_traceback_on_stderr_is_error() {
        let traceback = [
            "Traceback (most recent call last):",
            "  File \"/app/main.py\", line 3, in <module>",
            "    raise ValueError(\"boom\")",
            "ValueError: boom",
        ];
        for line in traceback {
            assert_eq!(err(line), Level::Error, "{line}");
        }
    }

    #[test]
    fn info_line_on_stderr_is_info() {
        assert_eq!(err("INFO connected to room"), Level::Info);
        assert_eq!(err("[INFO] connected to room"), Level::Info);
    }

    #[test]
    fn bracketed_and_bare_leading_tokens_name_the_level() {
        assert_eq!(out("[ERROR] failed to publish track"), Level::Error);
        assert_eq!(out("ERROR failed to publish track"), Level::Error);
        assert_eq!(out("error: failed to publish track"), Level::Error);
        assert_eq!(out("Warning: deprecated option"), Level::Warn);
        assert_eq!(
            out("info: server started"),
            Level::Info,
            "winston's default format"
        );
        assert_eq!(out("<warn> slow"), Level::Warn);
        // gunicorn
        assert_eq!(
            err("[2024-05-01 12:00:00 +0000] [1] [INFO] Starting gunicorn 21.2.0"),
            Level::Info
        );
        // nginx error log
        assert_eq!(
            out("2024/05/01 12:00:00 [error] 7#7: *1 open() failed"),
            Level::Error
        );
        // log4j / logback
        assert_eq!(
            out("2024-05-01 12:00:00,123 [main] WARN  com.example.App - retrying"),
            Level::Warn
        );
        // Node.js process warnings
        assert_eq!(
            err("(node:1234) Warning: Accessing non-existent property"),
            Level::Warn
        );
    }

    #[test]
    fn timestamp_then_level_names_the_level() {
        assert_eq!(out("2024-05-01T12:00:00Z INFO ready"), Level::Info);
        assert_eq!(err("2024/05/01 12:00:00 ERROR: dial failed"), Level::Error);
        assert_eq!(
            err("May  1 12:00:00 host app[123]: WARNING low disk"),
            Level::Warn
        );
    }

    #[test]
    fn rust_tracing_lines_name_the_level_with_or_without_colours() {
        assert_eq!(
            err("2024-05-01T12:00:00.123456Z  WARN my_crate: queue is filling up"),
            Level::Warn
        );
        assert_eq!(
            err("2024-05-01T12:00:00.123456Z  INFO my_crate::server: listening addr=0.0.0.0:80"),
            Level::Info
        );
        let coloured = "\x1b[2m2024-05-01T12:00:00.123456Z\x1b[0m \x1b[33m WARN\x1b[0m \
                        \x1b[2mmy_crate\x1b[0m\x1b[2m:\x1b[0m queue is filling up";
        assert_eq!(err(coloured), Level::Warn);
        let coloured_info = "\x1b[2m2024-05-01T12:00:00.123456Z\x1b[0m \x1b[32m INFO\x1b[0m \
                             \x1b[2mmy_crate\x1b[0m\x1b[2m:\x1b[0m error count is zero";
        assert_eq!(err(coloured_info), Level::Info);
        // env_logger
        assert_eq!(
            err("[2024-05-01T12:00:00Z ERROR my_crate] connection reset"),
            Level::Error
        );
    }

    #[test]
    fn go_slog_text_and_logfmt_name_the_level() {
        assert_eq!(
            err("time=2024-05-01T12:00:00.000Z level=WARN msg=\"disk almost full\" free=1GB"),
            Level::Warn
        );
        assert_eq!(
            out("time=2024-05-01T12:00:00.000Z level=ERROR+2 msg=boom"),
            Level::Error
        );
        assert_eq!(
            out("level=error ts=2024-05-01T12:00:00Z msg=boom"),
            Level::Error
        );
        assert_eq!(
            err("time=\"2024-05-01 12:00:00\" level=info msg=\"user typed level=error\""),
            Level::Info,
            "a level inside a quoted value is message text"
        );
        assert_eq!(
            err("ts=2024-05-01T12:00:00Z caller=main.go:42 level=debug msg=tick"),
            Level::Debug
        );
    }

    #[test]
    fn glog_lines_name_the_level() {
        assert_eq!(
            out("E0501 12:00:00.123456    1234 main.go:42] dial failed"),
            Level::Error
        );
        assert_eq!(
            err("I0501 12:00:00.123456    1234 main.go:42] started"),
            Level::Info
        );
        assert_eq!(
            out("E0432 is a rustc error code"),
            Level::Info,
            "a glog tag needs a time after it"
        );
    }

    #[test]
    fn zerolog_and_logrus_console_lines_name_the_level() {
        assert_eq!(out("12:00PM WRN slow request"), Level::Warn);
        assert_eq!(out("ERRO[0003] failed to pull image"), Level::Error);
    }

    #[test]
    fn go_panic_is_fatal() {
        assert_eq!(
            err("panic: runtime error: index out of range [1] with length 0"),
            Level::Fatal
        );
        assert_eq!(err("goroutine 1 [running]:"), Level::Error);
    }

    #[test]
    fn level_words_later_in_the_message_are_not_the_level() {
        assert_eq!(out("INFO user typed error"), Level::Info);
        assert_eq!(err("INFO user typed error"), Level::Info);
        assert_eq!(out("user typed error in the form"), Level::Info);
        assert_eq!(
            out("the request failed with an error: timeout"),
            Level::Info
        );
        assert_eq!(out("retrying after a Warning from the server"), Level::Info);
        assert_eq!(out("Alert sent to the user"), Level::Info);
        assert_eq!(
            err("Error handling is enabled"),
            Level::Error,
            "stderr default"
        );
        assert_eq!(out("Error handling is enabled"), Level::Info);
        assert_eq!(
            out("2024-05-01 12:00:00 connected to the room after one more [ERROR] retry"),
            Level::Info
        );
        assert_eq!(
            err("2024-05-01T12:00:00Z  INFO my_crate: ERROR count 0"),
            Level::Info
        );
    }

    #[test]
    fn json_lines_name_the_level_in_level_or_severity() {
        assert_eq!(
            err(r#"{"message":"registered worker","level":"INFO","name":"livekit.agents"}"#),
            Level::Info
        );
        assert_eq!(
            out(r#"{"severity":"WARNING","message":"slow"}"#),
            Level::Warn
        );
        assert_eq!(
            out(r#"{"severity":"CRITICAL","message":"down"}"#),
            Level::Fatal
        );
        assert_eq!(
            out(r#"{"levelname":"ERROR","message":"boom"}"#),
            Level::Error
        );
        assert_eq!(out(r#"{"log.level":"warn","message":"ecs"}"#), Level::Warn);
        assert_eq!(
            out(r#"{"log":{"level":"error"},"message":"ecs"}"#),
            Level::Error
        );
        assert_eq!(out(r#"{"@l":"Warning","@mt":"serilog"}"#), Level::Warn);
        assert_eq!(
            out(r#"{"level":"info","severity":"ERROR"}"#),
            Level::Info,
            "level is preferred over severity"
        );
    }

    #[test]
    fn go_slog_json_lines_name_the_level() {
        assert_eq!(
            out(r#"{"time":"2024-05-01T12:00:00Z","level":"WARN","msg":"disk almost full"}"#),
            Level::Warn
        );
        assert_eq!(
            out(r#"{"time":"2024-05-01T12:00:00Z","level":"ERROR+4","msg":"boom"}"#),
            Level::Error
        );
    }

    #[test]
    fn pino_numeric_levels_are_understood() {
        assert_eq!(
            out(r#"{"level":50,"time":1714564800000,"msg":"boom"}"#),
            Level::Error
        );
        assert_eq!(err(r#"{"level":30,"msg":"hello"}"#), Level::Info);
        assert_eq!(out(r#"{"level":60,"msg":"bye"}"#), Level::Fatal);
        assert_eq!(
            err(r#"{"level":3,"msg":"player reached level 3"}"#),
            Level::Error,
            "a number that is no pino level falls back to the stream"
        );
    }

    #[test]
    fn json_lines_without_a_level_default_by_stream() {
        assert_eq!(out(r#"{"msg":"error in the text"}"#), Level::Info);
        assert_eq!(err(r#"{"msg":"hello"}"#), Level::Error);
        assert_eq!(
            err(r#"{"log":"docker line","stream":"stderr"}"#),
            Level::Error
        );
        assert_eq!(out(r#"{"level":{"nested":true}}"#), Level::Info);
    }

    #[test]
    fn broken_or_huge_json_is_scanned_for_a_level_key() {
        // The first piece of a line the shim split.
        assert_eq!(
            err(r#"{"level":"info","msg":"aaaaaaaaaaaaaaa"#),
            Level::Info
        );
        let huge = format!(
            r#"{{"level": "warn", "msg": "{}"}}"#,
            "x".repeat(MAX_JSON_BYTES * 2)
        );
        assert_eq!(err(&huge), Level::Warn);
        let huge_pino = format!(r#"{{"level":40,"msg":"{}"}}"#, "x".repeat(MAX_JSON_BYTES));
        assert_eq!(err(&huge_pino), Level::Warn);
        let escaped = format!(
            r#"{{"msg":"quote \"level\": \"info\" {}"#,
            "x".repeat(MAX_JSON_BYTES)
        );
        assert_eq!(
            err(&escaped),
            Level::Error,
            "an escaped key is message text"
        );
    }

    #[test]
    fn text_starting_with_a_brace_falls_back_to_tokens() {
        assert_eq!(out("{worker-1} ERROR crashed"), Level::Error);
    }

    #[test]
    fn invalid_utf8_never_panics_and_still_finds_the_level() {
        assert_eq!(
            detect(b"ERROR \xff\xfe\xfd bad bytes", StreamKind::Stdout),
            Level::Error
        );
        assert_eq!(detect(b"\xff\xfe\xfd\x80", StreamKind::Stdout), Level::Info);
        assert_eq!(
            detect(b"{\"level\":\"\xff\"}", StreamKind::Stderr),
            Level::Error
        );
        assert_eq!(detect(b"\x1b", StreamKind::Stdout), Level::Info);
        assert_eq!(detect(b"\x1b[", StreamKind::Stdout), Level::Info);
        assert_eq!(detect(b"\x1b]0;title", StreamKind::Stderr), Level::Error);
        assert_eq!(detect(b"level=\"", StreamKind::Stderr), Level::Error);
        assert_eq!(
            detect(b"\"unterminated ERROR", StreamKind::Stdout),
            Level::Info
        );
    }

    #[test]
    fn arbitrary_bytes_never_panic() {
        // Every short byte string over an alphabet of the characters the
        // parser treats specially.
        let alphabet = b"{}[]\"\\:= \x1b]E0W1ae";
        let mut line = Vec::new();
        for a in alphabet {
            for b in alphabet {
                for c in alphabet {
                    for d in alphabet {
                        line.clear();
                        line.extend_from_slice(&[*a, *b, *c, *d]);
                        let _ = detect(&line, StreamKind::Stderr);
                    }
                }
            }
        }
    }

    #[test]
    fn lines_of_digits_and_punctuation_name_no_level() {
        for line in [
            "0".repeat(99),
            "000000000000000000000000000000000000000000000000001e+99".to_string(),
            "12:00:00 [42] (7) <3> 1.5 -- 2024/05/01".to_string(),
            "\x1b[31m12345\x1b[0m".to_string(),
        ] {
            assert_eq!(named(line.as_bytes()), None, "{line}");
        }
        // A letter anywhere in the head is still read for a level.
        assert_eq!(out(&format!("{} ERROR boom", "1".repeat(99))), Level::Error);
        assert_eq!(out("12:00:00 [42] W slow"), Level::Info);
    }

    #[test]
    fn the_letter_check_agrees_with_a_byte_by_byte_look() {
        for b in 0..=255u8 {
            let expected = b.is_ascii_alphabetic();
            for len in [1, 31, 32, 33, 64, 70] {
                let mut bytes = vec![b'0'; len];
                bytes[len - 1] = b;
                assert_eq!(has_ascii_letter(&bytes), expected, "{b:#x} at {}", len - 1);
                bytes[len - 1] = b'0';
                bytes[0] = b;
                assert_eq!(has_ascii_letter(&bytes), expected, "{b:#x} at 0");
            }
        }
    }

    #[test]
    fn only_the_first_bytes_of_a_text_line_are_inspected() {
        let late = format!("{} ERROR", " ".repeat(TEXT_PREFIX_BYTES));
        assert_eq!(out(&late), Level::Info);
        let long = format!("WARN {}", "y".repeat(10 * 1024 * 1024));
        assert_eq!(out(&long), Level::Warn);
    }
}
