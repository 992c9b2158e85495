//! Capture: reads one of the agent's output pipes until EOF, passes every
//! byte through unchanged to the shim's own stdout/stderr, and pushes each
//! line (timestamped when read) into the buffer.
//!
//! Each pipe is captured on a thread of its own with plain blocking reads
//! and writes: a read chunk is split, its lines go into the buffer under
//! one lock with one wake-up of the stream, and the chunk is written
//! through whole. Nothing of this runs on the async runtime, so a chunk
//! costs no hand-offs between threads.
//!
//! It must never wait on the network: the buffer push is a short lock that
//! never blocks, so the pipe is always drained. The only thing it may wait
//! on is the shim's own stdout/stderr, exactly as the agent would without
//! the shim. If that passthrough fails (e.g. nobody reads the shim's
//! stdout any more), capturing and shipping go on.
//!
//! When the agent exits, an [`AgentPipe`] reads what is already in the pipe,
//! pushes its lines and then says it caught up, so the agent's exit line
//! follows its last line without waiting for processes it started that
//! still hold the pipe; their later lines are captured as before.

use std::io::{self, PipeReader, Read, Write};
use std::os::fd::AsFd;
use std::sync::Arc;

use tokio::sync::oneshot;

use crate::diag::diag;
use crate::outgoing::Outgoing;
use crate::splitter::LineSplitter;
use crate::sys;
use crate::time;

/// Bytes read from a pipe at a time.
pub const READ_CHUNK_BYTES: usize = 64 * 1024;

/// What one capture saw, for the shim's diagnostics and tests.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CaptureReport {
    /// Bytes read from the pipe (all passed through unless passthrough failed).
    pub bytes: u64,
    /// Lines (or pieces of long lines) pushed into the buffer.
    pub lines: u64,
    /// Whether writing to the shim's own output failed at some point.
    pub passthrough_failed: bool,
}

/// What [`capture`] reads: one of the agent's pipes, or any reader.
pub trait Source: Read {
    /// Called once the lines of the chunk read last are in the buffer.
    fn pushed(&mut self) {}
}

impl Source for &[u8] {}

/// One of the agent's pipes, told of the agent's exit by `exited` (the read
/// end of a pipe whose write end is closed when the agent has exited).
pub struct AgentPipe<P> {
    pipe: P,
    catch_up: CatchUp,
}

enum CatchUp {
    /// The agent runs: wait for the pipe or the agent's exit.
    Running {
        exited: Arc<PipeReader>,
        caught_up: oneshot::Sender<()>,
    },
    /// The agent exited; `left` bytes it wrote are still to read.
    Reading {
        left: usize,
        caught_up: oneshot::Sender<()>,
    },
    /// The agent's bytes are all pushed (or cannot be told apart).
    Done,
}

impl<P: Read + AsFd> AgentPipe<P> {
    /// `caught_up` is told (or dropped) once every byte in the pipe when
    /// the agent exited is pushed. Without `exited`, it is dropped at once.
    pub fn new(pipe: P, exited: Option<Arc<PipeReader>>, caught_up: oneshot::Sender<()>) -> Self {
        let catch_up = match exited {
            Some(exited) => CatchUp::Running { exited, caught_up },
            None => CatchUp::Done,
        };
        Self { pipe, catch_up }
    }

    /// Waits for the pipe or the agent's exit; on the exit, counts the
    /// bytes left to read.
    fn wait(&mut self) {
        let CatchUp::Running { exited, .. } = &self.catch_up else {
            return;
        };
        let left = match sys::poll_readable([self.pipe.as_fd(), exited.as_fd()]) {
            Ok([_, false]) => return,
            Ok([_, true]) => sys::bytes_readable(self.pipe.as_fd()).unwrap_or(0),
            Err(err) => {
                diag!("cannot watch the agent's output for its exit: {err}");
                0
            }
        };
        if let CatchUp::Running { caught_up, .. } =
            std::mem::replace(&mut self.catch_up, CatchUp::Done)
        {
            self.catch_up = CatchUp::Reading { left, caught_up };
        }
    }
}

impl<P: Read + AsFd> Read for AgentPipe<P> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.wait();
        if let CatchUp::Reading { left: 0, .. } = self.catch_up {
            self.pushed();
        }
        let CatchUp::Reading { left, .. } = &mut self.catch_up else {
            return self.pipe.read(buf);
        };
        let wanted = buf.len().min(*left);
        let read = self.pipe.read(&mut buf[..wanted])?;
        *left = if read == 0 { 0 } else { *left - read };
        Ok(read)
    }
}

impl<P: Read + AsFd> Source for AgentPipe<P> {
    fn pushed(&mut self) {
        if let CatchUp::Reading { left: 0, .. } = self.catch_up {
            if let CatchUp::Reading { caught_up, .. } =
                std::mem::replace(&mut self.catch_up, CatchUp::Done)
            {
                let _ = caught_up.send(());
            }
        }
    }
}

/// Captures `source` until EOF, blocking; see the module docs. Lines go
/// out through `outgoing`, which is ended at EOF.
pub fn capture<R, W>(
    mut source: R,
    mut passthrough: W,
    outgoing: &Outgoing,
    max_line_bytes: usize,
) -> CaptureReport
where
    R: Source,
    W: Write,
{
    let stream = outgoing.stream();
    let mut report = CaptureReport::default();
    let mut splitter = LineSplitter::new(max_line_bytes);
    let mut chunk = vec![0u8; READ_CHUNK_BYTES];
    let mut pieces = Vec::new();
    loop {
        let read = match source.read(&mut chunk) {
            Ok(0) => break,
            Ok(read) => read,
            Err(err) if err.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(err) => {
                diag!(
                    "cannot read the agent's {}: {err}; the rest of it is lost",
                    stream.name()
                );
                break;
            }
        };
        let timestamp_ns = time::now_ns();
        report.bytes += read as u64;
        splitter.push(&chunk[..read], &mut pieces);
        report.lines += pieces.len() as u64;
        outgoing.push(timestamp_ns, &mut pieces);
        source.pushed();
        if !report.passthrough_failed {
            let written = passthrough
                .write_all(&chunk[..read])
                .and_then(|()| passthrough.flush());
            if let Err(err) = written {
                diag!(
                    "cannot pass the agent's {0} through to the shim's {0}: {err}; \
                     its lines are still shipped",
                    stream.name()
                );
                report.passthrough_failed = true;
            }
        }
    }
    splitter.finish(&mut pieces);
    report.lines += pieces.len() as u64;
    outgoing.push(time::now_ns(), &mut pieces);
    outgoing.end();
    report
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::buffer::SharedBuffer;
    use crate::multiline::{Bounds, Mode};
    use crate::redact::Redactor;
    use logdrain::v1::{Line, Origin, StreamKind};

    fn plain(stream: StreamKind, buffer: &Arc<SharedBuffer>, max: usize) -> Outgoing {
        Outgoing::plain(stream, Arc::clone(buffer), max)
    }

    #[test]
    fn shipped_lines_are_masked_and_grouped_while_the_passthrough_stays_raw() {
        let input: &[u8] = b"key sk-live-0123456789\nError: boom\n    at f (a.js:1:1)\nnext\n";
        let buffer = Arc::new(SharedBuffer::new(1 << 20, usize::MAX));
        let redactor =
            Redactor::from_vars([("OPENAI_API_KEY".into(), "sk-live-0123456789".into())], []);
        let bounds = Bounds {
            max_lines: 100,
            max_bytes: 1024,
            flush: std::time::Duration::from_secs(3600),
        };
        let outgoing = Outgoing::new(
            StreamKind::Stderr,
            Arc::clone(&buffer),
            Arc::new(redactor),
            Mode::Auto,
            bounds,
        );
        let mut out = Vec::new();
        capture(input, &mut out, &outgoing, 1024);
        assert_eq!(out, input);
        let data: Vec<Vec<u8>> = buffered_lines(&buffer)
            .into_iter()
            .map(|l| l.data.to_vec())
            .collect();
        assert_eq!(
            data,
            [
                b"key [redacted:OPENAI_API_KEY]".to_vec(),
                b"Error: boom\n    at f (a.js:1:1)".to_vec(),
                b"next".to_vec()
            ]
        );
    }

    fn buffered_lines(buffer: &SharedBuffer) -> Vec<Line> {
        buffer
            .lock()
            .next_batch(usize::MAX, usize::MAX)
            .map(|batch| batch.lines)
            .unwrap_or_default()
    }

    #[test]
    fn bytes_pass_through_unchanged_and_lines_are_buffered() {
        let input: &[u8] = b"one\r\ntwo\n\xff\xfe\n\nlast";
        let buffer = Arc::new(SharedBuffer::new(1 << 20, usize::MAX));
        let mut out = Vec::new();
        let report = capture(
            input,
            &mut out,
            &plain(StreamKind::Stderr, &buffer, 1024),
            1024,
        );
        assert_eq!(out, input);
        assert_eq!(report.bytes, input.len() as u64);
        assert_eq!(report.lines, 5);
        let lines = buffered_lines(&buffer);
        let data: Vec<&[u8]> = lines.iter().map(|l| &l.data[..]).collect();
        assert_eq!(data, vec![&b"one"[..], b"two", b"\xff\xfe", b"", b"last"]);
        for line in &lines {
            assert_eq!(line.stream, StreamKind::Stderr as i32);
            assert_eq!(line.origin, Origin::Agent as i32);
            assert!(line.timestamp_ns > 0);
        }
    }

    #[test]
    fn long_lines_are_buffered_as_marked_pieces() {
        let input = vec![b'x'; 250];
        let buffer = Arc::new(SharedBuffer::new(1 << 20, usize::MAX));
        capture(
            &input[..],
            std::io::sink(),
            &plain(StreamKind::Stdout, &buffer, 100),
            100,
        );
        let marks: Vec<(usize, u32, bool)> = buffered_lines(&buffer)
            .iter()
            .map(|l| (l.data.len(), l.part, l.more_parts))
            .collect();
        assert_eq!(marks, vec![(100, 0, true), (100, 1, true), (50, 2, false)]);
    }

    /// A writer that always fails, like a closed stdout.
    struct BrokenPipe;

    impl Write for BrokenPipe {
        fn write(&mut self, _: &[u8]) -> std::io::Result<usize> {
            Err(std::io::ErrorKind::BrokenPipe.into())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// A reader handing out two bytes per read, like a slow pipe.
    struct Trickle<'a>(&'a [u8]);

    impl Source for Trickle<'_> {}

    impl Read for Trickle<'_> {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            let n = self.0.len().min(2).min(buf.len());
            buf[..n].copy_from_slice(&self.0[..n]);
            self.0 = &self.0[n..];
            Ok(n)
        }
    }

    #[test]
    fn at_the_agents_exit_the_bytes_in_its_pipe_are_pushed_before_caught_up_is_told() {
        let (pipe, mut writer) = std::io::pipe().unwrap();
        let (exited, exit) = std::io::pipe().unwrap();
        let (caught_up, told) = oneshot::channel();
        let buffer = Arc::new(SharedBuffer::new(1 << 20, usize::MAX));
        let capturing = {
            let buffer = Arc::clone(&buffer);
            let source = AgentPipe::new(pipe, Some(Arc::new(exited)), caught_up);
            std::thread::spawn(move || {
                capture(
                    source,
                    std::io::sink(),
                    &plain(StreamKind::Stdout, &buffer, 1024),
                    1024,
                )
            })
        };
        writer.write_all(b"one\ntwo\n").unwrap();
        drop(exit);
        // `writer` stays open, as if a process the agent started held it.
        told.blocking_recv().unwrap();
        let data = |lines: Vec<Line>| -> Vec<Vec<u8>> {
            lines.into_iter().map(|l| l.data.to_vec()).collect()
        };
        assert_eq!(
            data(buffered_lines(&buffer)),
            [b"one".to_vec(), b"two".to_vec()]
        );
        writer.write_all(b"later\n").unwrap();
        drop(writer);
        assert_eq!(capturing.join().unwrap().lines, 3);
        // The lines taken above are in flight; only the new one is unsent.
        assert_eq!(data(buffered_lines(&buffer)), [b"later".to_vec()]);
    }

    #[test]
    fn failing_passthrough_does_not_stop_capture() {
        let input: &[u8] = b"a\nb\nc\n";
        let buffer = Arc::new(SharedBuffer::new(1 << 20, usize::MAX));
        let report = capture(
            Trickle(input),
            BrokenPipe,
            &plain(StreamKind::Stdout, &buffer, 1024),
            1024,
        );
        assert!(report.passthrough_failed);
        assert_eq!(report.bytes, 6);
        assert_eq!(buffered_lines(&buffer).len(), 3);
    }
}
