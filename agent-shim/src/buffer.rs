//! The bounded in-memory buffer of lines the gateway has not acked yet.
//!
//! * A line gets its sequence number when it enters (per boot, from 1,
//!   consecutive), so the buffer always holds one run of consecutive seqs.
//! * Pushing never blocks and never fails: when the byte bound would be
//!   exceeded, the OLDEST lines are dropped and counted (count and first/last
//!   timestamps) until the new line fits.
//! * Lines leave only when acked (`acked_seq` covers every seq <= it) or
//!   dropped.
//!
//! It must not do I/O, read clocks or format messages: the stream decides
//! what to send and the lifecycle module words the drop notice.

use std::collections::VecDeque;
use std::sync::{Mutex, MutexGuard, PoisonError};

use logdrain::v1::{Batch, Line};
use tokio::sync::Notify;

/// Bytes charged per line on top of its data: the `Line` struct, its slot in
/// the queue and the shared allocation header, rounded up. It keeps a flood
/// of empty lines bounded too.
pub const LINE_OVERHEAD_BYTES: usize = 64;

/// Bytes a line costs against the buffer bound.
pub fn line_cost(line: &Line) -> usize {
    line.data.len() + LINE_OVERHEAD_BYTES
}

/// Lines the buffer had to drop since the last [`Buffer::take_dropped`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Dropped {
    /// How many lines were dropped.
    pub lines: u64,
    /// Timestamp (Unix ns) of the first dropped line.
    pub first_timestamp_ns: i64,
    /// Timestamp (Unix ns) of the last dropped line.
    pub last_timestamp_ns: i64,
}

/// The gateway acked a line the shim never sent: a gateway bug, or a
/// gateway confusing two boots. The stream reconnects instead of believing it.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("gateway acked seq {acked} but the shim has only sent up to seq {sent}")]
pub struct AckAheadOfSent {
    /// The seq the gateway acked.
    pub acked: u64,
    /// The highest seq handed to any connection so far.
    pub sent: u64,
}

/// The buffer itself; see the module docs. Wrapped in [`SharedBuffer`] to be
/// shared between the capture tasks and the stream.
#[derive(Debug)]
pub struct Buffer {
    lines: VecDeque<Line>,
    /// Seq of `lines[0]`; when empty, the seq the next line will get.
    front_seq: u64,
    bytes: usize,
    max_bytes: usize,
    /// Highest seq ever put in a batch (0 = none).
    sent_up_to: u64,
    dropped: Option<Dropped>,
    dropped_total: u64,
}

impl Buffer {
    /// An empty buffer holding at most `max_bytes` of line cost.
    pub fn new(max_bytes: usize) -> Self {
        Self {
            lines: VecDeque::new(),
            front_seq: 1,
            bytes: 0,
            max_bytes,
            sent_up_to: 0,
            dropped: None,
            dropped_total: 0,
        }
    }

    /// Adds a line, dropping the oldest lines if needed; returns its seq.
    ///
    /// A single line costing more than the whole bound is still kept (the
    /// configuration keeps lines far below the bound).
    pub fn push(&mut self, line: Line) -> u64 {
        let cost = line_cost(&line);
        while self.bytes + cost > self.max_bytes {
            let Some(old) = self.lines.pop_front() else {
                break;
            };
            self.bytes -= line_cost(&old);
            self.front_seq += 1;
            self.dropped_total += 1;
            let dropped = self.dropped.get_or_insert(Dropped {
                lines: 0,
                first_timestamp_ns: old.timestamp_ns,
                last_timestamp_ns: old.timestamp_ns,
            });
            dropped.lines += 1;
            dropped.last_timestamp_ns = old.timestamp_ns;
        }
        let seq = self.next_seq();
        self.bytes += cost;
        self.lines.push_back(line);
        seq
    }

    /// Removes every line with seq <= `acked_seq`; returns how many left.
    ///
    /// An ack below what is already gone is a no-op (a gateway after a
    /// failover may know less than the previous one).
    pub fn ack(&mut self, acked_seq: u64) -> Result<usize, AckAheadOfSent> {
        if acked_seq > self.sent_up_to {
            return Err(AckAheadOfSent {
                acked: acked_seq,
                sent: self.sent_up_to,
            });
        }
        let mut removed = 0;
        while self.front_seq <= acked_seq {
            let Some(line) = self.lines.pop_front() else {
                break;
            };
            self.bytes -= line_cost(&line);
            self.front_seq += 1;
            removed += 1;
        }
        Ok(removed)
    }

    /// The next batch to send, starting at `cursor` (or at the oldest line if
    /// `cursor` was dropped meanwhile): at most `max_lines` lines and, except
    /// for a single oversized line, at most `max_bytes` of line cost, with
    /// the total dropped so far (`shim_dropped_total`). `None` when nothing
    /// at or after `cursor` is buffered.
    pub fn batch_from(&mut self, cursor: u64, max_lines: usize, max_bytes: usize) -> Option<Batch> {
        let first_seq = cursor.max(self.front_seq);
        let start = usize::try_from(first_seq - self.front_seq).ok()?;
        if start >= self.lines.len() {
            return None;
        }
        let mut lines = Vec::new();
        let mut bytes = 0;
        for line in self.lines.range(start..) {
            let cost = line_cost(line);
            if lines.len() >= max_lines.max(1) || (!lines.is_empty() && bytes + cost > max_bytes) {
                break;
            }
            bytes += cost;
            // Cheap: `data` is reference-counted `Bytes`.
            lines.push(line.clone());
        }
        let last_seq = first_seq + lines.len() as u64 - 1;
        self.sent_up_to = self.sent_up_to.max(last_seq);
        Some(Batch {
            first_seq,
            lines,
            shim_dropped_total: self.dropped_total,
        })
    }

    /// Lines buffered at or after `cursor`.
    pub fn pending_from(&self, cursor: u64) -> usize {
        let skip = cursor.saturating_sub(self.front_seq);
        self.lines
            .len()
            .saturating_sub(usize::try_from(skip).unwrap_or(usize::MAX))
    }

    /// Drops counted since the last call, resetting the count.
    pub fn take_dropped(&mut self) -> Option<Dropped> {
        self.dropped.take()
    }

    /// Drops not yet reported by [`Buffer::take_dropped`].
    pub fn dropped_unreported(&self) -> Option<Dropped> {
        self.dropped
    }

    /// Every line dropped since start.
    pub fn dropped_total(&self) -> u64 {
        self.dropped_total
    }

    /// Seq of the oldest buffered line (or of the next line, when empty).
    pub fn oldest_seq(&self) -> u64 {
        self.front_seq
    }

    /// The seq the next pushed line will get.
    pub fn next_seq(&self) -> u64 {
        self.front_seq + self.lines.len() as u64
    }

    /// Whether some line was sent but is not acked yet.
    pub fn has_sent_unacked(&self) -> bool {
        !self.lines.is_empty() && self.sent_up_to >= self.front_seq
    }

    /// Lines waiting for an ack.
    pub fn len(&self) -> usize {
        self.lines.len()
    }

    /// True when every line was acked (or dropped).
    pub fn is_empty(&self) -> bool {
        self.lines.is_empty()
    }

    /// Line cost currently held.
    pub fn bytes(&self) -> usize {
        self.bytes
    }
}

/// A [`Buffer`] shared by the capture tasks and the stream, plus the wake-up
/// the stream waits on for new lines.
#[derive(Debug)]
pub struct SharedBuffer {
    inner: Mutex<Buffer>,
    ready: Notify,
}

impl SharedBuffer {
    /// An empty shared buffer; see [`Buffer::new`].
    pub fn new(max_bytes: usize) -> Self {
        Self {
            inner: Mutex::new(Buffer::new(max_bytes)),
            ready: Notify::new(),
        }
    }

    /// Pushes a line and wakes the stream. Never blocks on the network.
    pub fn push(&self, line: Line) -> u64 {
        let seq = self.lock().push(line);
        self.ready.notify_one();
        seq
    }

    /// Locks the buffer for a short, non-blocking operation.
    pub fn lock(&self) -> MutexGuard<'_, Buffer> {
        // A panic while holding the lock cannot leave the buffer half
        // updated in a way that matters more than losing the shim's output,
        // so a poisoned lock is used as is.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Resolves after the next push (or at once if one happened since the
    /// last wait).
    pub async fn wait_for_lines(&self) {
        self.ready.notified().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn line(ts: i64, data: &'static [u8]) -> Line {
        Line {
            timestamp_ns: ts,
            data: Bytes::from_static(data),
            ..Line::default()
        }
    }

    #[test]
    fn seqs_start_at_one_and_are_consecutive() {
        let mut buffer = Buffer::new(1 << 20);
        let seqs: Vec<u64> = (0..5).map(|i| buffer.push(line(i, b"x"))).collect();
        assert_eq!(seqs, vec![1, 2, 3, 4, 5]);
        let batch = buffer.batch_from(0, 100, 1 << 20).unwrap();
        assert_eq!(batch.first_seq, 1);
        assert_eq!(batch.lines.len(), 5);
    }

    #[test]
    fn full_buffer_drops_oldest_lines_and_counts_them() {
        // Room for exactly three empty-data lines.
        let mut buffer = Buffer::new(3 * LINE_OVERHEAD_BYTES);
        for ts in 1..=5 {
            buffer.push(line(ts * 100, b""));
        }
        assert_eq!(buffer.len(), 3);
        assert_eq!(buffer.oldest_seq(), 3);
        assert_eq!(buffer.next_seq(), 6);
        assert_eq!(
            buffer.take_dropped(),
            Some(Dropped {
                lines: 2,
                first_timestamp_ns: 100,
                last_timestamp_ns: 200,
            })
        );
        assert_eq!(buffer.take_dropped(), None, "taking resets the count");
        assert_eq!(buffer.dropped_total(), 2);
        let batch = buffer.batch_from(0, 100, usize::MAX).unwrap();
        assert_eq!(batch.first_seq, 3);
        assert_eq!(
            batch.shim_dropped_total, 2,
            "every batch reports the total dropped, for the gateway's status"
        );
        let stamps: Vec<i64> = batch.lines.iter().map(|l| l.timestamp_ns).collect();
        assert_eq!(stamps, vec![300, 400, 500]);
    }

    #[test]
    fn byte_bound_is_never_exceeded() {
        let max = 10 * (LINE_OVERHEAD_BYTES + 7);
        let mut buffer = Buffer::new(max);
        for i in 0..1000 {
            let data: &'static [u8] = if i % 3 == 0 { b"1234567" } else { b"1" };
            buffer.push(line(i, data));
            assert!(buffer.bytes() <= max, "{} > {max}", buffer.bytes());
        }
        let held: usize = (buffer.oldest_seq()..buffer.next_seq()).count();
        assert_eq!(held, buffer.len());
        assert_eq!(buffer.dropped_total() + buffer.len() as u64, 1000);
    }

    #[test]
    fn ack_removes_every_line_up_to_the_acked_seq() {
        let mut buffer = Buffer::new(1 << 20);
        for i in 0..10 {
            buffer.push(line(i, b"abc"));
        }
        buffer.batch_from(0, 100, usize::MAX).unwrap();
        assert_eq!(buffer.ack(4), Ok(4));
        assert_eq!(buffer.oldest_seq(), 5);
        assert_eq!(buffer.bytes(), 6 * (3 + LINE_OVERHEAD_BYTES));
        assert_eq!(buffer.ack(2), Ok(0), "an older ack is a no-op");
        assert_eq!(buffer.ack(10), Ok(6));
        assert!(buffer.is_empty());
        assert_eq!(buffer.bytes(), 0);
        assert_eq!(buffer.push(line(11, b"")), 11, "seqs go on after acks");
    }

    #[test]
    fn ack_beyond_what_was_sent_is_refused() {
        let mut buffer = Buffer::new(1 << 20);
        for i in 0..3 {
            buffer.push(line(i, b"x"));
        }
        buffer.batch_from(0, 2, usize::MAX).unwrap();
        assert_eq!(buffer.ack(3), Err(AckAheadOfSent { acked: 3, sent: 2 }));
        assert_eq!(buffer.len(), 3, "a refused ack removes nothing");
    }

    #[test]
    fn batches_respect_line_and_byte_limits() {
        let mut buffer = Buffer::new(1 << 20);
        for i in 0..10 {
            buffer.push(line(i, b"0123456789"));
        }
        let cost = 10 + LINE_OVERHEAD_BYTES;
        let first = buffer.batch_from(0, 4, usize::MAX).unwrap();
        assert_eq!((first.first_seq, first.lines.len()), (1, 4));
        let second = buffer.batch_from(5, 100, 3 * cost).unwrap();
        assert_eq!((second.first_seq, second.lines.len()), (5, 3));
        let oversized = buffer.batch_from(8, 100, 1).unwrap();
        assert_eq!(oversized.lines.len(), 1, "one line always fits");
        assert_eq!(buffer.batch_from(11, 100, usize::MAX), None);
        assert_eq!(buffer.pending_from(8), 3);
    }

    #[test]
    fn cursor_behind_dropped_lines_restarts_at_the_oldest() {
        let mut buffer = Buffer::new(2 * LINE_OVERHEAD_BYTES);
        for i in 0..5 {
            buffer.push(line(i, b""));
        }
        let batch = buffer.batch_from(2, 100, usize::MAX).unwrap();
        assert_eq!(batch.first_seq, 4);
        assert_eq!(batch.lines.len(), 2);
    }

    #[test]
    fn sent_unacked_tracks_batches_and_acks() {
        let mut buffer = Buffer::new(1 << 20);
        buffer.push(line(0, b"a"));
        assert!(!buffer.has_sent_unacked());
        buffer.batch_from(0, 10, usize::MAX).unwrap();
        assert!(buffer.has_sent_unacked());
        buffer.ack(1).unwrap();
        assert!(!buffer.has_sent_unacked());
        buffer.push(line(1, b"b"));
        assert!(!buffer.has_sent_unacked(), "a new line is not sent yet");
    }
}
