//! The agent process: starting it, forwarding signals to it, and waiting for
//! it — reaping orphaned processes too when the shim is PID 1 (or a
//! subreaper).
//!
//! The shim is the only one that waits for its children: it does not use
//! tokio's child handling, so an orphan reaper can never steal the agent's
//! exit status. With orphan reaping on, `waitpid(-1)` reaps everything and
//! the agent's status is picked out by pid; otherwise only the agent's pid is
//! waited for. Signals are sent only while the agent is not yet reaped, so a
//! recycled pid is never signalled.
//!
//! The agent dies with the shim: it gets SIGKILL when the shim's thread that
//! started it ends (the runtime's thread, which lives as long as the shim), so
//! a SIGKILLed shim never leaves it running unsupervised with broken pipes.
//! Processes the agent starts are not covered.
//!
//! It must not decide exit codes or word events (`lifecycle.rs` does).

use std::ffi::OsString;
use std::future::poll_fn;
use std::io;
use std::process::{ChildStderr, ChildStdout, Command, ExitStatus, Stdio};
use std::task::Poll;

use tokio::signal::unix::{signal, Signal, SignalKind};

use crate::diag::diag;
use crate::lifecycle;
use crate::sys::{self, WaitFor};

/// Signals the shim forwards to the agent.
pub const FORWARDED_SIGNALS: [i32; 6] = [
    libc::SIGTERM,
    libc::SIGINT,
    libc::SIGHUP,
    libc::SIGQUIT,
    libc::SIGUSR1,
    libc::SIGUSR2,
];

/// Environment variables removed from the agent's environment.
pub const REMOVED_ENV_VARS: [&str; 2] = ["LOGDRAIN_TOKEN", "LOGDRAIN_TOKEN_FILE"];

/// A started agent: its pid and the read ends of its output pipes (blocking:
/// each is read by a capture thread of its own).
#[derive(Debug)]
pub struct Agent {
    pub pid: i32,
    pub stdout: ChildStdout,
    pub stderr: ChildStderr,
}

/// Starts `command` (program and arguments) with stdin inherited, stdout and
/// stderr piped, the environment unchanged except [`REMOVED_ENV_VARS`], and
/// SIGKILL as its parent-death signal (see the module docs).
///
/// Register the [`Reaper`] first, so the agent's exit cannot be missed.
pub fn spawn(command: &[OsString]) -> io::Result<Agent> {
    let Some((program, args)) = command.split_first() else {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "no command given to run",
        ));
    };
    let mut builder = Command::new(program);
    builder
        .args(args)
        .stdin(Stdio::inherit())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for name in REMOVED_ENV_VARS {
        builder.env_remove(name);
    }
    sys::kill_when_parent_dies(&mut builder);
    let mut child = builder.spawn()?;
    let pid = i32::try_from(child.id())
        .map_err(|_| io::Error::other(format!("pid {} does not fit a pid_t", child.id())))?;
    let (Some(stdout), Some(stderr)) = (child.stdout.take(), child.stderr.take()) else {
        // Both were configured as pipes just above.
        return Err(io::Error::other("the agent's output pipes are missing"));
    };
    // `child` is dropped here without waiting: the Reaper waits for `pid`.
    Ok(Agent {
        pid,
        stdout,
        stderr,
    })
}

/// Waits for children on SIGCHLD; see the module docs.
#[derive(Debug)]
pub struct Reaper {
    sigchld: Signal,
    reap_orphans: bool,
}

impl Reaper {
    /// Listens for SIGCHLD. `reap_orphans`: also reap every other child
    /// (only meaningful as PID 1 or a subreaper).
    pub fn new(reap_orphans: bool) -> io::Result<Self> {
        Ok(Self {
            sigchld: signal(SignalKind::child())?,
            reap_orphans,
        })
    }

    /// Whether this reaper also reaps orphans.
    pub fn reaps_orphans(&self) -> bool {
        self.reap_orphans
    }

    /// Waits until the child `pid` exits and returns its status.
    pub async fn wait_for(&mut self, pid: i32) -> io::Result<ExitStatus> {
        loop {
            if let Some(status) = self.reap(Some(pid))? {
                return Ok(status);
            }
            self.sigchld.recv().await;
        }
    }

    /// Reaps orphans forever (run as a task after the agent exited, when
    /// orphan reaping is on).
    pub async fn reap_orphans_forever(mut self) {
        loop {
            if let Err(err) = self.reap(None) {
                diag!("cannot reap orphaned processes: {err}");
                return;
            }
            self.sigchld.recv().await;
        }
    }

    /// One non-blocking pass: reaps whatever has exited; returns `main`'s
    /// status if it was among them.
    fn reap(&mut self, main: Option<i32>) -> io::Result<Option<ExitStatus>> {
        if !self.reap_orphans {
            let Some(pid) = main else { return Ok(None) };
            return Ok(sys::waitpid_nohang(WaitFor::Pid(pid))?.map(|(_, status)| status));
        }
        let mut main_status = None;
        loop {
            match sys::waitpid_nohang(WaitFor::AnyChild) {
                Ok(Some((pid, status))) if Some(pid) == main => main_status = Some(status),
                Ok(Some(_orphan)) => {}
                Ok(None) => break,
                Err(err) if err.raw_os_error() == Some(libc::ECHILD) => {
                    if main.is_some() && main_status.is_none() {
                        // Nobody else waits for our children, so this
                        // cannot happen; refuse to wait forever if it does.
                        return Err(err);
                    }
                    break;
                }
                Err(err) => return Err(err),
            }
        }
        Ok(main_status)
    }
}

/// The signals the shim catches in order to forward them.
#[derive(Debug)]
pub struct ForwardedSignals {
    signals: Vec<(i32, Signal)>,
}

impl ForwardedSignals {
    /// Installs handlers for [`FORWARDED_SIGNALS`].
    pub fn register() -> io::Result<Self> {
        let signals = FORWARDED_SIGNALS
            .iter()
            .map(|&number| Ok((number, signal(SignalKind::from_raw(number))?)))
            .collect::<io::Result<_>>()?;
        Ok(Self { signals })
    }

    /// The number of the next signal received.
    pub async fn recv(&mut self) -> i32 {
        poll_fn(|cx| {
            for (number, signal) in &mut self.signals {
                if signal.poll_recv(cx).is_ready() {
                    return Poll::Ready(*number);
                }
            }
            Poll::Pending
        })
        .await
    }
}

/// Forwards signals to the agent until it exits; returns its exit status.
pub async fn supervise(
    pid: i32,
    reaper: &mut Reaper,
    signals: &mut ForwardedSignals,
) -> io::Result<ExitStatus> {
    let exited = reaper.wait_for(pid);
    tokio::pin!(exited);
    loop {
        tokio::select! {
            // The agent's exit wins over a signal arriving in the same poll:
            // once reaped, its pid must not be signalled.
            biased;
            status = &mut exited => return status,
            number = signals.recv() => {
                if let Err(err) = sys::kill(pid, number) {
                    diag!(
                        "cannot forward {} to the agent (pid {pid}): {err}",
                        lifecycle::signal_display(number)
                    );
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    #[tokio::test]
    async fn spawned_agent_output_is_piped_and_exit_status_is_reaped() {
        let mut reaper = Reaper::new(false).unwrap();
        let command: Vec<OsString> = ["sh", "-c", "printf out; printf err >&2; exit 5"]
            .iter()
            .map(OsString::from)
            .collect();
        let mut agent = spawn(&command).unwrap();
        let mut out = Vec::new();
        agent.stdout.read_to_end(&mut out).unwrap();
        let mut err = Vec::new();
        agent.stderr.read_to_end(&mut err).unwrap();
        let status = reaper.wait_for(agent.pid).await.unwrap();
        assert_eq!((out.as_slice(), err.as_slice()), (&b"out"[..], &b"err"[..]));
        assert_eq!(status.code(), Some(5));
    }

    #[tokio::test]
    async fn missing_program_is_a_not_found_error() {
        let err = spawn(&[OsString::from("/nonexistent/agent-shim-test")]).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::NotFound);
    }

    #[tokio::test]
    async fn empty_command_is_refused() {
        assert_eq!(spawn(&[]).unwrap_err().kind(), io::ErrorKind::InvalidInput);
    }
}
