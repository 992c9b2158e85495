//! agent-shim: runs an agent as a child process, passes its output through
//! unchanged, and streams every line to logdrain-gateway.
//!
//! ```text
//!   agent stdout ─┐                    ┌──▶ shim stdout / stderr (unchanged bytes)
//!   agent stderr ─┴─▶ capture ─────────┤
//!                    (split lines,     └──▶ buffer ──▶ stream ══gRPC══▶ gateway
//!                     timestamp)           (bounded,   (Open, batches,   │
//!                                           seq, drop   resend unacked)  │
//!                                           oldest) ◀──── acks ──────────┘
//!   child: spawn, forward signals, reap (PID 1) ──▶ lifecycle lines ──▶ buffer
//! ```
//!
//! * [`capture`] drains the agent's pipes (a thread each), never waiting on
//!   the network.
//! * [`splitter`] is the pure line splitter (CRLF, long lines, bytes).
//! * [`outgoing`] takes one stream's lines to the buffer: grouped into
//!   events by [`multiline`], masked by [`redact`].
//! * [`buffer`] holds unacked lines within a byte bound, dropping the
//!   oldest (counted) when full.
//! * [`stream`] owns the gRPC connection: open, send, ack, reconnect with
//!   backoff, fail over; [`wire`] encodes its batches straight from
//!   the buffer.
//! * [`child`] starts the agent, forwards signals and reaps children;
//!   [`lifecycle`] maps exits to codes and words the shim's own lines.
//! * [`check`] is `--check`: a report on the configuration and the
//!   gateways' answers, without running the agent.
//! * [`config`] is the command line / environment; [`secrets`] the
//!   destination secrets forwarded in `Open`, checked at start with the
//!   gateway's rules (a warning on stderr; they are forwarded anyway).
//! * `sys` (private) is the one module with `unsafe` (a few libc calls).
//!
//! The binary only parses [`Config`] and calls [`run`]. Unsafe code is
//! denied (workspace lints) but in `sys`.

pub mod buffer;
pub mod capture;
pub mod check;
pub mod child;
pub mod config;
mod diag;
pub mod lifecycle;
pub mod multiline;
pub mod outgoing;
pub mod redact;
mod scrub;
pub mod secrets;
pub mod splitter;
pub mod stream;
mod sys;
pub mod time;
pub mod wire;

use std::io::Write;
use std::os::fd::AsFd;
use std::sync::Arc;
use std::time::Duration;

use logdrain::v1::{Open, StreamKind};
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

pub use config::{Config, ConfigError, Settings};
pub use secrets::Secrets;

use buffer::SharedBuffer;
use child::{ForwardedSignals, Reaper};
use diag::diag;
use lifecycle::AgentExit;
use outgoing::Outgoing;
use redact::{RedactMode, Redactor};
use stream::{Shipped, Shipper, StreamConfig, StreamError};

/// Exit code for a configuration error (as clap uses for usage errors).
pub const EXIT_CONFIG: i32 = 2;
/// Exit code when the shim itself fails before the agent could run
/// (like `env` and `timeout`).
pub const EXIT_SHIM_FAILURE: i32 = 125;
/// Exit code when the agent exited 0 but every gateway refused the shim for
/// good (token, ids or protocol version), so its lines were not delivered
/// (`EX_NOPERM`). A non-zero code of the agent is kept.
pub const EXIT_REFUSED: i32 = 77;

/// What keeps the shim from running at all. Anything that goes wrong with
/// the agent or the gateway is not an error: it becomes an exit code, a
/// lifecycle line or a diagnostic.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("cannot start the async runtime: {0}")]
    Runtime(std::io::Error),
    #[error("cannot install signal handlers: {0}")]
    Signals(std::io::Error),
    #[error(transparent)]
    Gateway(#[from] StreamError),
}

impl Error {
    /// The shim's exit code for this error.
    pub fn exit_code(&self) -> i32 {
        match self {
            Error::Config(_) => EXIT_CONFIG,
            _ => EXIT_SHIM_FAILURE,
        }
    }
}

/// Validates `config`, reads the secrets from the environment, runs the
/// agent to completion on a single-threaded runtime, drains, and returns
/// the exit code to exit with. With `--check`, runs [`check::run`] instead
/// and never starts the agent.
pub fn run(config: Config) -> Result<i32, Error> {
    if config.check {
        return Ok(check::run(config));
    }
    let settings = config.validate()?;
    let secrets = Secrets::from_env();
    let redactor = match settings.redact {
        RedactMode::Auto => Redactor::from_vars(
            std::env::vars_os(),
            [("LOGDRAIN_TOKEN".to_owned(), settings.token.clone())],
        ),
        RedactMode::Off => Redactor::off(),
    };
    // After the environment was read for the redactor: the scrub blanks the
    // token's value in place.
    if let Err(err) = scrub::hide_token() {
        diag!(
            "warning: cannot hide the ingest token from the agent ({err}); pass it in a file \
             with LOGDRAIN_TOKEN_FILE instead"
        );
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(Error::Runtime)?;
    let code = runtime.block_on(run_with(settings, secrets, Arc::new(redactor)));
    // Do not wait for blocked writes to our own stdout: the drain is over.
    runtime.shutdown_background();
    code
}

/// [`run`] with settings, secrets and what to mask given (for tests and
/// embedding).
pub async fn run_with(
    settings: Settings,
    secrets: Secrets,
    redactor: Arc<Redactor>,
) -> Result<i32, Error> {
    for name in secrets.ignored_not_utf8() {
        diag!("ignoring {name}: its value is not valid UTF-8");
    }
    // Only on our own stderr, never in the drain: the gateway reports a
    // wrong value again in its route's status.
    for warning in secrets.warnings() {
        diag!("warning: {warning}");
    }
    // Handlers first, so neither the agent's exit nor a signal is missed.
    let mut reaper = Reaper::new(reap_orphans(settings.subreaper)).map_err(Error::Signals)?;
    let mut signals = ForwardedSignals::register().map_err(Error::Signals)?;

    let buffer = Arc::new(SharedBuffer::new(
        settings.buffer_bytes,
        stream::in_flight_window(settings.buffer_bytes),
    ));
    let (closing_tx, closing_rx) = watch::channel(false);
    let shipper = Shipper::new(
        stream_config(&settings, &secrets, Arc::clone(&redactor)),
        Arc::clone(&buffer),
        closing_rx,
    )?;
    let refused = shipper.refused();
    let shipping = tokio::spawn(shipper.run());

    let (exit_code, deadline, capturing) = match child::spawn(&settings.command) {
        Err(err) => {
            let program = settings
                .command
                .first()
                .map(|p| p.as_os_str())
                .unwrap_or_default();
            event(&buffer, lifecycle::start_failure_message(program, &err));
            closing_tx.send_replace(true);
            (
                lifecycle::start_failure_exit_code(&err),
                Instant::now() + settings.drain_timeout,
                None,
            )
        }
        Ok(agent) => {
            let pid = agent.pid;
            let (exited_tx, exited_rx) = match std::io::pipe() {
                Ok((reader, writer)) => (Some(writer), Some(Arc::new(reader))),
                Err(err) => {
                    diag!(
                        "cannot watch the agent's pipes for its exit ({err}); its exit line \
                         may come before its last lines"
                    );
                    (None, None)
                }
            };
            let (stdout_caught_up, stdout_told) = oneshot::channel();
            let (stderr_caught_up, stderr_told) = oneshot::channel();
            let outgoing = [StreamKind::Stdout, StreamKind::Stderr].map(|stream| {
                let outgoing = Arc::new(Outgoing::new(
                    stream,
                    Arc::clone(&buffer),
                    Arc::clone(&redactor),
                    settings.multiline.clone(),
                    settings.multiline_bounds,
                ));
                tokio::spawn(Arc::clone(&outgoing).flush_when_due());
                outgoing
            });
            let captures = [
                spawn_capture(
                    capture::AgentPipe::new(agent.stdout, exited_rx.clone(), stdout_caught_up),
                    stdout_passthrough(),
                    Arc::clone(&outgoing[0]),
                    &settings,
                ),
                spawn_capture(
                    capture::AgentPipe::new(agent.stderr, exited_rx, stderr_caught_up),
                    Box::new(std::io::stderr()),
                    Arc::clone(&outgoing[1]),
                    &settings,
                ),
            ];
            let status = child::supervise(pid, &mut reaper, &mut signals).await;
            let deadline = Instant::now() + settings.drain_timeout;
            // The exit line comes after the agent's last line, and right
            // away: processes it started may hold its pipes for long.
            drop(exited_tx);
            let _ = tokio::time::timeout_at(deadline, async {
                let _ = stdout_told.await;
                let _ = stderr_told.await;
            })
            .await;
            // An event held for a continuation ends with the agent.
            for outgoing in &outgoing {
                outgoing.flush();
            }
            let exit = match status {
                Ok(status) => AgentExit::from_status(status),
                Err(err) => {
                    diag!("lost track of the agent (pid {pid}): {err}");
                    AgentExit::Code(1)
                }
            };
            if let Some(message) = exit.event_message() {
                event(&buffer, message);
            }
            // What they write is captured and shipped until the pipes close
            // or the drain ends.
            let capturing = tokio::spawn(async move {
                for capture in captures {
                    let _ = capture.await;
                }
                closing_tx.send_replace(true);
            });
            (exit.shim_exit_code(), deadline, Some(capturing))
        }
    };
    if reaper.reaps_orphans() {
        tokio::spawn(reaper.reap_orphans_forever());
    }
    drain(
        shipping,
        deadline,
        settings.drain_timeout,
        &buffer,
        &mut signals,
    )
    .await;
    if capturing.is_some_and(|capturing| !capturing.is_finished()) {
        diag!(
            "the agent's output pipes were still open when the shim exited (held by a process \
             it started); what was written to them until then was captured"
        );
    }
    let refused = *refused.borrow();
    Ok(if refused && exit_code == 0 {
        EXIT_REFUSED
    } else {
        exit_code
    })
}

/// A new boot id: 16 random bytes, hex encoded.
pub fn new_boot_id() -> String {
    hex::encode(rand::random::<[u8; 16]>())
}

/// Orphans are reaped as PID 1, or when asked and the kernel agrees to make
/// the shim a subreaper.
fn reap_orphans(subreaper: bool) -> bool {
    if std::process::id() == 1 {
        return true;
    }
    if !subreaper {
        return false;
    }
    match sys::set_child_subreaper() {
        Ok(()) => true,
        Err(err) => {
            diag!("cannot become a child subreaper ({err}); orphans are not reaped");
            false
        }
    }
}

fn stream_config(settings: &Settings, secrets: &Secrets, redactor: Arc<Redactor>) -> StreamConfig {
    StreamConfig {
        gateways: settings.gateways.clone(),
        tls: settings.tls.clone(),
        open: Open {
            token: settings.token.clone(),
            agent_id: settings.agent_id.clone(),
            agent_server_id: settings.agent_server_id.clone(),
            boot_id: new_boot_id(),
            secrets: secrets.to_open_map(),
            protocol_version: logdrain::PROTOCOL_VERSION,
            handoff: None,
        },
        batch_lines: settings.batch_lines,
        batch_max_bytes: stream::BATCH_MAX_BYTES,
        batch_linger: settings.batch_linger,
        rebalance_after: settings.rebalance_after,
        backoff_min: stream::BACKOFF_MIN,
        backoff_max: stream::BACKOFF_MAX,
        ack_timeout: stream::ACK_TIMEOUT,
        buffer_bytes: settings.buffer_bytes,
        redactor,
    }
}

/// Captures one pipe on a thread of its own (see [`capture`]).
fn spawn_capture<R>(
    source: R,
    passthrough: Box<dyn Write + Send>,
    outgoing: Arc<Outgoing>,
    settings: &Settings,
) -> JoinHandle<capture::CaptureReport>
where
    R: capture::Source + Send + 'static,
{
    let max_line_bytes = settings.max_line_bytes;
    tokio::task::spawn_blocking(move || {
        capture::capture(source, passthrough, &outgoing, max_line_bytes)
    })
}

/// The shim's stdout for the agent's: a duplicate of its descriptor, so a
/// chunk is one unbuffered write (std's `Stdout` buffers up to the last
/// newline); std's `Stdout` itself if the descriptor cannot be duplicated.
/// Its stderr is used as is: std's `Stderr` is unbuffered, and its lock
/// keeps a chunk and the shim's own diagnostics from interleaving.
fn stdout_passthrough() -> Box<dyn Write + Send> {
    match std::io::stdout().as_fd().try_clone_to_owned() {
        Ok(fd) => Box::new(std::fs::File::from(fd)),
        Err(_) => Box::new(std::io::stdout()),
    }
}

/// A lifecycle event: on the shim's stderr and into the drain.
fn event(buffer: &SharedBuffer, message: String) {
    diag::emit_line(&message);
    buffer.push(lifecycle::shim_line(message));
}

/// Waits for the shipper to deliver everything, at most until `deadline`;
/// SIGTERM, SIGINT or SIGQUIT received meanwhile end the wait at once.
async fn drain(
    shipping: JoinHandle<Shipped>,
    deadline: Instant,
    drain_timeout: Duration,
    buffer: &SharedBuffer,
    signals: &mut ForwardedSignals,
) {
    tokio::pin!(shipping);
    let deadline_sleep = tokio::time::sleep_until(deadline);
    tokio::pin!(deadline_sleep);
    let cut_short = loop {
        tokio::select! {
            result = &mut shipping => match result {
                Ok(Shipped::Drained) => break None,
                Ok(Shipped::Refused) => break Some("refused by every gateway for good".to_string()),
                Err(err) => {
                    diag!("the gateway stream stopped unexpectedly: {err}");
                    break None;
                }
            },
            () = &mut deadline_sleep => break Some(format!("drain timeout ({drain_timeout:?}) reached")),
            number = signals.recv() => {
                if matches!(number, libc::SIGTERM | libc::SIGINT | libc::SIGQUIT) {
                    break Some(format!(
                        "{} received while draining",
                        lifecycle::signal_display(number)
                    ));
                }
            }
        }
    };
    let Some(reason) = cut_short else { return };
    shipping.abort();
    let buffer = buffer.lock();
    if !buffer.is_empty() {
        diag!(
            "{reason}: {} line{} not delivered to the gateway",
            buffer.len(),
            if buffer.len() == 1 { " was" } else { "s were" }
        );
    }
    if let Some(dropped) = buffer.dropped_unreported() {
        diag!(
            "{} more line{} dropped earlier because the buffer was full",
            dropped.lines,
            if dropped.lines == 1 { " was" } else { "s were" }
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boot_ids_are_32_hex_chars_and_differ() {
        let a = new_boot_id();
        let b = new_boot_id();
        assert_eq!(a.len(), 32);
        assert!(a.bytes().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a, b);
    }
}
