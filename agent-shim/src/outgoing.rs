//! What the shim ships of one agent stream: the split lines, grouped into
//! events ([`multiline`](crate::multiline)), masked ([`redact`](crate::redact))
//! and pushed into the buffer, in the order they were read.
//!
//! The capture thread pushes; a task ([`Outgoing::flush_when_due`]) emits an
//! event held past its flush time. Both push under the grouper's lock, so
//! lines never change order. It must never block on anything but that short
//! lock and the buffer's, and never touch the passthrough.

use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;
use logdrain::v1::{Line, Origin, StreamKind};
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::buffer::SharedBuffer;
use crate::multiline::{Bounds, Grouper, Mode, Out};
use crate::redact::Redactor;
use crate::splitter::Piece;

/// One stream's way into the buffer.
pub struct Outgoing {
    stream: StreamKind,
    buffer: Arc<SharedBuffer>,
    redactor: Arc<Redactor>,
    grouper: Mutex<Grouping>,
    /// Told when an event starts being held, or the stream ends.
    held: Notify,
}

struct Grouping {
    grouper: Grouper,
    out: Vec<Out>,
    /// `out` masked, outside the buffer's lock.
    lines: Vec<Line>,
    /// The end of the last part shipped of a cut line that could begin a
    /// secret: it goes at the start of the line's next part.
    carry: Vec<u8>,
    ended: bool,
}

impl Outgoing {
    pub fn new(
        stream: StreamKind,
        buffer: Arc<SharedBuffer>,
        redactor: Arc<Redactor>,
        mode: Mode,
        bounds: Bounds,
    ) -> Self {
        Self {
            stream,
            buffer,
            redactor,
            grouper: Mutex::new(Grouping {
                grouper: Grouper::new(mode, bounds),
                out: Vec::new(),
                lines: Vec::new(),
                carry: Vec::new(),
                ended: false,
            }),
            held: Notify::new(),
        }
    }

    /// Every line as its own event, unmasked (for tests).
    pub fn plain(stream: StreamKind, buffer: Arc<SharedBuffer>, max_line_bytes: usize) -> Self {
        let bounds = Bounds {
            max_lines: 1,
            max_bytes: max_line_bytes,
            flush: std::time::Duration::ZERO,
        };
        Self::new(stream, buffer, Arc::new(Redactor::off()), Mode::Off, bounds)
    }

    pub fn stream(&self) -> StreamKind {
        self.stream
    }

    fn lock(&self) -> MutexGuard<'_, Grouping> {
        // A panic elsewhere while holding it leaves a usable grouper.
        self.grouper.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Takes (and empties) `pieces`, read at `timestamp_ns`.
    pub fn push(&self, timestamp_ns: i64, pieces: &mut Vec<Piece>) {
        if pieces.is_empty() {
            return;
        }
        let now = Instant::now();
        let mut guard = self.lock();
        let grouping = &mut *guard;
        let was_held = grouping.grouper.deadline().is_some();
        for piece in pieces.drain(..) {
            grouping
                .grouper
                .push(timestamp_ns, piece, now, &mut grouping.out);
        }
        self.ship(grouping);
        if !was_held && grouping.grouper.deadline().is_some() {
            self.held.notify_one();
        }
    }

    /// Ships the event held, if any (the agent exited, or its pipe closed).
    pub fn flush(&self) {
        let mut guard = self.lock();
        let grouping = &mut *guard;
        grouping.grouper.finish(&mut grouping.out);
        self.ship(grouping);
    }

    /// At the pipe's EOF: ships the event held and ends [`Self::flush_when_due`].
    pub fn end(&self) {
        self.flush();
        self.lock().ended = true;
        self.held.notify_one();
    }

    /// Ships each event held past its flush time, until [`Self::end`].
    pub async fn flush_when_due(self: Arc<Self>) {
        loop {
            let deadline = {
                let grouping = self.lock();
                if grouping.ended {
                    return;
                }
                grouping.grouper.deadline()
            };
            match deadline {
                None => self.held.notified().await,
                Some(deadline) => {
                    tokio::select! {
                        () = tokio::time::sleep_until(deadline) => {}
                        () = self.held.notified() => continue,
                    }
                    let mut guard = self.lock();
                    let grouping = &mut *guard;
                    grouping
                        .grouper
                        .flush_due(Instant::now(), &mut grouping.out);
                    self.ship(grouping);
                }
            }
        }
    }

    fn ship(&self, grouping: &mut Grouping) {
        if grouping.out.is_empty() {
            return;
        }
        let stream = self.stream as i32;
        for (timestamp_ns, piece) in grouping.out.drain(..) {
            let mut data = piece.data;
            // The pieces of a cut line come one after the other: the bytes
            // held back from the last one start this one.
            if !grouping.carry.is_empty() {
                let mut joined = std::mem::take(&mut grouping.carry);
                joined.extend_from_slice(&data);
                data = Bytes::from(joined);
            }
            if piece.more_parts {
                let held = self.redactor.held_back(&data);
                grouping.carry.extend_from_slice(&data[data.len() - held..]);
                data.truncate(data.len() - held);
            }
            grouping.lines.push(Line {
                timestamp_ns,
                stream,
                data: self.redactor.redact(data),
                origin: Origin::Agent as i32,
                part: piece.part,
                more_parts: piece.more_parts,
            });
        }
        self.buffer.push_all(grouping.lines.drain(..));
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::splitter::LineSplitter;

    fn piece(data: &'static [u8]) -> Piece {
        Piece {
            data: Bytes::from_static(data),
            part: 0,
            more_parts: false,
        }
    }

    fn shipped(buffer: &SharedBuffer) -> Vec<Bytes> {
        buffer
            .lock()
            .next_batch(usize::MAX, usize::MAX)
            .map(|batch| batch.lines.into_iter().map(|l| l.data).collect())
            .unwrap_or_default()
    }

    #[tokio::test(start_paused = true)]
    async fn a_held_event_is_shipped_by_the_flush_task_once_its_time_passes_and_the_task_ends_with_the_stream(
    ) {
        let buffer = Arc::new(SharedBuffer::new(1 << 20, usize::MAX));
        let bounds = Bounds {
            max_lines: 100,
            max_bytes: 1024,
            flush: Duration::from_millis(200),
        };
        let redactor = Redactor::from_vars([("A_TOKEN".into(), "secret-value".into())], []);
        let outgoing = Arc::new(Outgoing::new(
            StreamKind::Stderr,
            Arc::clone(&buffer),
            Arc::new(redactor),
            Mode::Auto,
            bounds,
        ));
        let flushing = tokio::spawn(Arc::clone(&outgoing).flush_when_due());
        outgoing.push(
            1,
            &mut vec![piece(b"Error: secret-value"), piece(b"    at f")],
        );
        tokio::time::sleep(Duration::from_millis(199)).await;
        assert!(shipped(&buffer).is_empty(), "held until its flush time");
        // Time moves on only once every task is idle: past 200 ms, the
        // flush task has run.
        tokio::time::sleep(Duration::from_millis(2)).await;
        assert_eq!(
            shipped(&buffer),
            [Bytes::from_static(b"Error: [redacted:A_TOKEN]\n    at f")]
        );
        outgoing.push(2, &mut vec![piece(b"last")]);
        outgoing.end();
        flushing.await.unwrap();
        assert_eq!(shipped(&buffer), [Bytes::from_static(b"last")]);
    }

    /// A secret cut by the split of an over-long line, at every offset:
    /// each shipped part holds no piece of it, and the parts joined are the
    /// line with the value masked once.
    #[tokio::test]
    async fn a_secret_straddling_the_cut_of_a_long_line_is_masked_whole_wherever_it_falls() {
        const SECRET: &str = "sk-proj-Zq8wX3vN7mK2pL9rT4yB";
        const MAX: usize = 16;
        for offset in 0..=2 * MAX {
            let buffer = Arc::new(SharedBuffer::new(1 << 20, usize::MAX));
            let redactor = Redactor::from_vars([("OPENAI_API_KEY".into(), SECRET.into())], []);
            let bounds = Bounds {
                max_lines: 1,
                max_bytes: MAX,
                flush: Duration::ZERO,
            };
            let outgoing = Outgoing::new(
                StreamKind::Stdout,
                Arc::clone(&buffer),
                Arc::new(redactor),
                Mode::Off,
                bounds,
            );
            let line = format!("{}{SECRET} and s", ".".repeat(offset));
            let mut splitter = LineSplitter::new(MAX);
            let mut pieces = Vec::new();
            // Each part is shipped as the agent writes it, before the next.
            for chunk in line.as_bytes().chunks(MAX) {
                splitter.push(chunk, &mut pieces);
                outgoing.push(1, &mut pieces);
            }
            splitter.push(b"\n", &mut pieces);
            outgoing.push(1, &mut pieces);
            let parts = shipped(&buffer);
            assert!(parts.len() > 1, "{offset}: the line is cut");
            for part in &parts {
                for piece in SECRET.as_bytes().windows(3) {
                    assert!(
                        !part.windows(3).any(|w| w == piece),
                        "{offset}: {part:?} holds part of the secret"
                    );
                }
            }
            let joined: Vec<u8> = parts.iter().flat_map(|p| p.to_vec()).collect();
            assert_eq!(
                String::from_utf8(joined).unwrap(),
                format!("{}[redacted:OPENAI_API_KEY] and s", ".".repeat(offset))
            );
        }
    }
}
