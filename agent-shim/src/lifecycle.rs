//! Lifecycle events: how the agent ended, what exit code the shim returns,
//! and the wording of the lines the shim itself writes into the drain.
//!
//! The only lines with origin SHIM are made here: start failures, abnormal
//! exits and the drop notice. They go to the STDERR stream. The shim's other
//! diagnostics (connection trouble, drain timeouts) are not events and never
//! enter the drain: see `diag.rs`.
//!
//! It must not spawn, wait for or signal processes (`child.rs` does).

use std::ffi::OsStr;
use std::io;
use std::os::unix::process::ExitStatusExt;
use std::process::ExitStatus;

use bytes::Bytes;
use logdrain::v1::{Line, Origin, StreamKind};

use crate::buffer::Dropped;
use crate::time;

/// Exit code when the agent's program does not exist.
pub const EXIT_NOT_FOUND: i32 = 127;
/// Exit code when the agent's program exists but cannot be executed.
pub const EXIT_CANNOT_EXECUTE: i32 = 126;

/// How the agent ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AgentExit {
    /// It called `exit(code)`.
    Code(i32),
    /// A signal killed it.
    Signal { signal: i32, core_dumped: bool },
}

impl AgentExit {
    /// Decodes a wait status.
    pub fn from_status(status: ExitStatus) -> Self {
        match (status.code(), status.signal()) {
            (Some(code), _) => AgentExit::Code(code),
            (None, Some(signal)) => AgentExit::Signal {
                signal,
                core_dumped: status.core_dumped(),
            },
            // A stopped/continued status is never returned by a wait without
            // WUNTRACED/WCONTINUED; report it as a failure rather than success.
            (None, None) => AgentExit::Code(1),
        }
    }

    /// The shim's own exit code: the agent's code, or 128+N for signal N.
    pub fn shim_exit_code(self) -> i32 {
        match self {
            AgentExit::Code(code) => code,
            AgentExit::Signal { signal, .. } => 128 + signal,
        }
    }

    /// The event line for the drain, or `None` for a clean exit (code 0).
    pub fn event_message(self) -> Option<String> {
        match self {
            AgentExit::Code(0) => None,
            AgentExit::Code(code) => Some(format!("agent-shim: agent exited with code {code}")),
            AgentExit::Signal {
                signal,
                core_dumped,
            } => {
                let core = if core_dumped {
                    " (core dumped)"
                } else {
                    " (no core dump)"
                };
                Some(format!(
                    "agent-shim: agent killed by signal {}{core}",
                    signal_display(signal)
                ))
            }
        }
    }
}

/// Exit code when the agent cannot be started: 127 when the program does
/// not exist, 126 when it cannot be executed (permissions, not a program).
pub fn start_failure_exit_code(err: &io::Error) -> i32 {
    if err.kind() == io::ErrorKind::NotFound {
        EXIT_NOT_FOUND
    } else {
        EXIT_CANNOT_EXECUTE
    }
}

/// `agent-shim: cannot start "foo": No such file or directory (os error 2)`.
pub fn start_failure_message(program: &OsStr, err: &io::Error) -> String {
    format!("agent-shim: cannot start {program:?}: {err}")
}

/// The notice injected once delivery resumes after the buffer dropped lines.
pub fn drop_notice(dropped: &Dropped, buffer_bytes: usize) -> String {
    format!(
        "agent-shim: dropped {} line{} written between {} and {}: the buffer ({} bytes) was full \
         while the gateway was unreachable or slow",
        dropped.lines,
        if dropped.lines == 1 { "" } else { "s" },
        time::rfc3339(dropped.first_timestamp_ns),
        time::rfc3339(dropped.last_timestamp_ns),
        buffer_bytes,
    )
}

/// A line written by the shim itself (origin SHIM, stream STDERR, now).
pub fn shim_line(text: String) -> Line {
    Line {
        timestamp_ns: time::now_ns(),
        stream: StreamKind::Stderr as i32,
        data: Bytes::from(text),
        origin: Origin::Shim as i32,
        part: 0,
        more_parts: false,
    }
}

/// `SIGKILL (9)`, or `signal 40` for one without a name.
pub fn signal_display(signal: i32) -> String {
    match signal_name(signal) {
        Some(name) => format!("{name} ({signal})"),
        None => format!("signal {signal}"),
    }
}

/// The conventional name of a signal number on this platform.
pub fn signal_name(signal: i32) -> Option<&'static str> {
    let name = match signal {
        libc::SIGHUP => "SIGHUP",
        libc::SIGINT => "SIGINT",
        libc::SIGQUIT => "SIGQUIT",
        libc::SIGILL => "SIGILL",
        libc::SIGTRAP => "SIGTRAP",
        libc::SIGABRT => "SIGABRT",
        libc::SIGBUS => "SIGBUS",
        libc::SIGFPE => "SIGFPE",
        libc::SIGKILL => "SIGKILL",
        libc::SIGUSR1 => "SIGUSR1",
        libc::SIGSEGV => "SIGSEGV",
        libc::SIGUSR2 => "SIGUSR2",
        libc::SIGPIPE => "SIGPIPE",
        libc::SIGALRM => "SIGALRM",
        libc::SIGTERM => "SIGTERM",
        libc::SIGCHLD => "SIGCHLD",
        libc::SIGCONT => "SIGCONT",
        libc::SIGSTOP => "SIGSTOP",
        libc::SIGTSTP => "SIGTSTP",
        libc::SIGTTIN => "SIGTTIN",
        libc::SIGTTOU => "SIGTTOU",
        libc::SIGURG => "SIGURG",
        libc::SIGXCPU => "SIGXCPU",
        libc::SIGXFSZ => "SIGXFSZ",
        libc::SIGVTALRM => "SIGVTALRM",
        libc::SIGPROF => "SIGPROF",
        libc::SIGWINCH => "SIGWINCH",
        libc::SIGIO => "SIGIO",
        libc::SIGSYS => "SIGSYS",
        _ => return None,
    };
    Some(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Builds a raw wait status (Linux/BSD encoding).
    fn exited(code: i32) -> ExitStatus {
        ExitStatus::from_raw((code & 0xff) << 8)
    }

    fn signaled(signal: i32, core: bool) -> ExitStatus {
        ExitStatus::from_raw(signal | if core { 0x80 } else { 0 })
    }

    #[test]
    fn exit_code_passes_through() {
        let exit = AgentExit::from_status(exited(3));
        assert_eq!(exit, AgentExit::Code(3));
        assert_eq!(exit.shim_exit_code(), 3);
        assert_eq!(
            exit.event_message().as_deref(),
            Some("agent-shim: agent exited with code 3")
        );
    }

    #[test]
    fn clean_exit_has_no_event() {
        let exit = AgentExit::from_status(exited(0));
        assert_eq!(exit.shim_exit_code(), 0);
        assert_eq!(exit.event_message(), None);
    }

    #[test]
    fn signal_maps_to_128_plus_n() {
        let kill = AgentExit::from_status(signaled(libc::SIGKILL, false));
        assert_eq!(kill.shim_exit_code(), 137);
        let term = AgentExit::from_status(signaled(libc::SIGTERM, false));
        assert_eq!(term.shim_exit_code(), 143);
    }

    #[test]
    fn signal_event_names_the_signal_and_core_dump() {
        let segv = AgentExit::from_status(signaled(libc::SIGSEGV, true));
        assert_eq!(
            segv,
            AgentExit::Signal {
                signal: libc::SIGSEGV,
                core_dumped: true
            }
        );
        assert_eq!(
            segv.event_message().as_deref(),
            Some("agent-shim: agent killed by signal SIGSEGV (11) (core dumped)")
        );
        let kill = AgentExit::from_status(signaled(libc::SIGKILL, false));
        assert_eq!(
            kill.event_message().as_deref(),
            Some("agent-shim: agent killed by signal SIGKILL (9) (no core dump)")
        );
    }

    #[test]
    fn signal_names_cover_the_common_signals() {
        assert_eq!(signal_name(libc::SIGTERM), Some("SIGTERM"));
        assert_eq!(signal_name(libc::SIGABRT), Some("SIGABRT"));
        assert_eq!(signal_name(0), None);
        assert_eq!(signal_display(99), "signal 99");
    }

    #[test]
    fn start_failures_map_to_127_and_126() {
        let not_found = io::Error::from_raw_os_error(libc::ENOENT);
        let denied = io::Error::from_raw_os_error(libc::EACCES);
        let not_exec = io::Error::from_raw_os_error(libc::ENOEXEC);
        assert_eq!(start_failure_exit_code(&not_found), 127);
        assert_eq!(start_failure_exit_code(&denied), 126);
        assert_eq!(start_failure_exit_code(&not_exec), 126);
        assert_eq!(
            start_failure_message(OsStr::new("foo"), &not_found),
            "agent-shim: cannot start \"foo\": No such file or directory (os error 2)"
        );
    }

    #[test]
    fn drop_notice_gives_count_and_utc_times() {
        let notice = drop_notice(
            &Dropped {
                lines: 42,
                first_timestamp_ns: 0,
                last_timestamp_ns: 1_500_000_000,
            },
            1024,
        );
        assert_eq!(
            notice,
            "agent-shim: dropped 42 lines written between 1970-01-01T00:00:00.000000000Z and \
             1970-01-01T00:00:01.500000000Z: the buffer (1024 bytes) was full while the gateway \
             was unreachable or slow"
        );
    }

    #[test]
    fn shim_lines_are_stderr_with_origin_shim() {
        let line = shim_line("agent-shim: x".into());
        assert_eq!(line.origin, Origin::Shim as i32);
        assert_eq!(line.stream, StreamKind::Stderr as i32);
        assert_eq!(&line.data[..], b"agent-shim: x");
        assert!(line.timestamp_ns > 0);
    }
}
