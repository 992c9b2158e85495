//! The shim's own diagnostics: one line on the shim's stderr, prefixed
//! `agent-shim: `, written with a single `write` so it does not tear.
//!
//! Diagnostics never enter the drain, and callers must never pass secrets
//! (tokens, secret values) into them.

use std::io::Write;

/// Writes `agent-shim: {message}` and a newline to stderr. Errors writing to
/// stderr are ignored: there is nowhere left to report them.
pub fn emit(message: std::fmt::Arguments<'_>) {
    let line = format!("agent-shim: {message}\n");
    let _ = std::io::stderr().lock().write_all(line.as_bytes());
}

/// Writes an already formatted line (with its `agent-shim: ` prefix), as
/// used for lifecycle events that also go to the drain.
pub fn emit_line(line: &str) {
    let mut text = String::with_capacity(line.len() + 1);
    text.push_str(line);
    text.push('\n');
    let _ = std::io::stderr().lock().write_all(text.as_bytes());
}

/// `diag!("cannot reach {url}")` writes `agent-shim: cannot reach ...`.
macro_rules! diag {
    ($($arg:tt)*) => {
        $crate::diag::emit(format_args!($($arg)*))
    };
}
pub(crate) use diag;
