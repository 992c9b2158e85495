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

use std::io::{Read, Write};

use logdrain::v1::{Line, Origin, StreamKind};

use crate::buffer::SharedBuffer;
use crate::diag::diag;
use crate::splitter::{LineSplitter, Piece};
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

/// Captures `source` until EOF, blocking; see the module docs.
pub fn capture<R, W>(
    mut source: R,
    mut passthrough: W,
    stream: StreamKind,
    buffer: &SharedBuffer,
    max_line_bytes: usize,
) -> CaptureReport
where
    R: Read,
    W: Write,
{
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
        report.lines += push_pieces(buffer, timestamp_ns, stream, &mut pieces);
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
    report.lines += push_pieces(buffer, time::now_ns(), stream, &mut pieces);
    report
}

/// Pushes (and empties) `pieces` as lines, all at once; returns how many.
fn push_pieces(
    buffer: &SharedBuffer,
    timestamp_ns: i64,
    stream: StreamKind,
    pieces: &mut Vec<Piece>,
) -> u64 {
    let count = pieces.len() as u64;
    if count > 0 {
        buffer.push_all(
            pieces
                .drain(..)
                .map(|piece| agent_line(timestamp_ns, stream, piece)),
        );
    }
    count
}

fn agent_line(timestamp_ns: i64, stream: StreamKind, piece: Piece) -> Line {
    Line {
        timestamp_ns,
        stream: stream as i32,
        data: piece.data,
        origin: Origin::Agent as i32,
        part: piece.part,
        more_parts: piece.more_parts,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let buffer = SharedBuffer::new(1 << 20, usize::MAX);
        let mut out = Vec::new();
        let report = capture(input, &mut out, StreamKind::Stderr, &buffer, 1024);
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
        let buffer = SharedBuffer::new(1 << 20, usize::MAX);
        capture(
            &input[..],
            std::io::sink(),
            StreamKind::Stdout,
            &buffer,
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

    impl Read for Trickle<'_> {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            let n = self.0.len().min(2).min(buf.len());
            buf[..n].copy_from_slice(&self.0[..n]);
            self.0 = &self.0[n..];
            Ok(n)
        }
    }

    #[test]
    fn failing_passthrough_does_not_stop_capture() {
        let input: &[u8] = b"a\nb\nc\n";
        let buffer = SharedBuffer::new(1 << 20, usize::MAX);
        let report = capture(
            Trickle(input),
            BrokenPipe,
            StreamKind::Stdout,
            &buffer,
            1024,
        );
        assert!(report.passthrough_failed);
        assert_eq!(report.bytes, 6);
        assert_eq!(buffered_lines(&buffer).len(), 3);
    }
}
