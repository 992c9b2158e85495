//! The bounded in-memory buffer of lines the gateway has not acked yet.
//!
//! * A line gets its sequence number when it enters (per boot, from 1,
//!   consecutive). Each line keeps its seq: after evictions the buffer may
//!   hold several runs of consecutive seqs, always sorted.
//! * Lines are either *in flight* (put in a batch on the current connection
//!   and waiting for its ack) or *unsent* (not sent on the current
//!   connection: new, or to be resent after a connection loss). In-flight
//!   lines are all older than unsent ones.
//! * Pushing never blocks and never fails: when the byte bound would be
//!   exceeded, the OLDEST UNSENT lines are dropped and counted (count and
//!   first/last timestamps) until the new line fits. In-flight lines are
//!   never dropped: the gateway usually stores them, so counting them as
//!   dropped would overstate the loss. The drop count is therefore exact,
//!   but for a line sent on a connection that broke before its ack and
//!   dropped before its resend (the old gateway may have stored it).
//! * A drop notice is a line in the buffer too ([`Buffer::push_notice`]); if
//!   it is dropped before it is sent, the drops it reported are counted
//!   again for the next notice instead of being lost with it.
//! * In-flight lines are bounded by the in-flight window (`window_bytes`,
//!   see [`Buffer::take_batch`]), so the buffer holds at most its byte bound
//!   plus the window. The stream sets the window to at most half the bound
//!   (`stream::in_flight_window`); then the bound itself always holds, but
//!   for a single line larger than the room the lines in flight leave.
//! * On a connection loss ([`Buffer::requeue_in_flight`]) the in-flight
//!   lines become unsent again, to be resent first, and are evictable.
//! * A batch holds consecutive seqs only (a `Batch` states just its
//!   `first_seq`), so it ends at a seq gap; the gateway accepts a batch that
//!   starts above its high-water mark.
//! * Lines leave only when acked (`acked_seq` covers every seq <= it) or
//!   dropped.
//! * An ack beyond what was sent ([`AckAheadOfSent`]) means the gateway holds
//!   lines of another writer under this boot; its acks for the boot cannot
//!   be believed. The stream then starts a new boot and
//!   [`Buffer::restart_seqs`] numbers the lines still held from 1 again.
//!
//! It must not do I/O, read clocks or format messages: the stream decides
//! when to send and the lifecycle module words the drop notice.

use std::collections::VecDeque;
use std::sync::{Mutex, MutexGuard, PoisonError};

use logdrain::v1::{Batch, Line};
use tokio::sync::Notify;

/// Bytes charged per line on top of its data: its seq and the `Line`
/// struct in their queue slot, rounded up (the data's allocation header is
/// shared by the lines read together). It keeps a flood of empty lines
/// bounded too.
pub const LINE_OVERHEAD_BYTES: usize = 64;

// The charge must cover what a buffered line really takes besides its data.
const _: () = assert!(std::mem::size_of::<(u64, Line)>() <= LINE_OVERHEAD_BYTES);

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

/// A batch moved to the lines in flight by [`Buffer::take_batch`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TakenBatch {
    /// Seq of its first line; the others follow consecutively.
    pub first_seq: u64,
    /// How many lines it holds (the newest this many in flight).
    pub lines: usize,
    /// Lines dropped since start, as the batch reports them.
    pub shim_dropped_total: u64,
}

/// The gateway acked a line the shim never sent: another client wrote into
/// this boot, or a gateway bug. The stream starts a new boot instead of
/// believing it.
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
    /// Lines sent on the current connection, not acked yet, oldest first.
    in_flight: VecDeque<(u64, Line)>,
    /// Lines not sent on the current connection, oldest first; every seq
    /// here is above every seq in `in_flight`.
    unsent: VecDeque<(u64, Line)>,
    /// The seq the next pushed line gets.
    next_seq: u64,
    /// Line cost of both queues.
    bytes: usize,
    /// Line cost of `in_flight`.
    in_flight_bytes: usize,
    max_bytes: usize,
    window_bytes: usize,
    /// Highest seq ever put in a batch (0 = none).
    sent_up_to: u64,
    dropped: Option<Dropped>,
    dropped_total: u64,
    /// Drop notices in the buffer (seq and the drops it reports), by seq.
    notices: VecDeque<(u64, Dropped)>,
}

impl Buffer {
    /// An empty buffer holding at most `max_bytes` of line cost beyond the
    /// lines in flight, of which there are at most `window_bytes` (or one
    /// line, if it is larger).
    pub fn new(max_bytes: usize, window_bytes: usize) -> Self {
        Self {
            in_flight: VecDeque::new(),
            unsent: VecDeque::new(),
            next_seq: 1,
            bytes: 0,
            in_flight_bytes: 0,
            max_bytes,
            window_bytes,
            sent_up_to: 0,
            dropped: None,
            dropped_total: 0,
            notices: VecDeque::new(),
        }
    }

    /// Adds a line, dropping the oldest unsent lines if needed; returns its
    /// seq.
    ///
    /// A single line costing more than the whole bound is still kept (the
    /// configuration keeps lines far below the bound), and so are the lines
    /// in flight.
    pub fn push(&mut self, line: Line) -> u64 {
        let cost = line_cost(&line);
        while self.bytes + cost > self.max_bytes {
            let Some((seq, old)) = self.unsent.pop_front() else {
                break;
            };
            self.bytes -= line_cost(&old);
            if let Ok(index) = self.notices.binary_search_by_key(&seq, |(seq, _)| *seq) {
                // A notice never sent: the next one reports its drops.
                if let Some((_, reported)) = self.notices.remove(index) {
                    self.count_dropped(reported);
                }
                continue;
            }
            self.dropped_total += 1;
            self.count_dropped(Dropped {
                lines: 1,
                first_timestamp_ns: old.timestamp_ns,
                last_timestamp_ns: old.timestamp_ns,
            });
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        self.bytes += cost;
        self.unsent.push_back((seq, line));
        seq
    }

    /// Adds a drop notice (worded by the caller from the [`Dropped`] it got
    /// from [`Buffer::take_dropped`]); if it is dropped unsent, `reports`
    /// counts as not reported yet. Returns its seq.
    pub fn push_notice(&mut self, line: Line, reports: Dropped) -> u64 {
        let seq = self.push(line);
        self.notices.push_back((seq, reports));
        seq
    }

    /// Adds drops to those not reported yet.
    fn count_dropped(&mut self, more: Dropped) {
        let dropped = self.dropped.get_or_insert(Dropped { lines: 0, ..more });
        dropped.lines += more.lines;
        dropped.first_timestamp_ns = dropped.first_timestamp_ns.min(more.first_timestamp_ns);
        dropped.last_timestamp_ns = dropped.last_timestamp_ns.max(more.last_timestamp_ns);
    }

    /// Removes every line with seq <= `acked_seq` (in flight or not: a
    /// gateway that already stored resent lines acks them at once); returns
    /// how many left.
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
        while let Some((_, line)) = self.in_flight.pop_front_if(|entry| entry.0 <= acked_seq) {
            let cost = line_cost(&line);
            self.bytes -= cost;
            self.in_flight_bytes -= cost;
            removed += 1;
        }
        while let Some((_, line)) = self.unsent.pop_front_if(|entry| entry.0 <= acked_seq) {
            self.bytes -= line_cost(&line);
            removed += 1;
        }
        while self
            .notices
            .pop_front_if(|notice| notice.0 <= acked_seq)
            .is_some()
        {}
        Ok(removed)
    }

    /// Whether a batch of up to `batch_bytes` (at most the whole window)
    /// fits in the in-flight window now (always, when nothing is in
    /// flight). The stream waits for acks until it does, so batches stay
    /// full-sized.
    pub fn has_room_for(&self, batch_bytes: usize) -> bool {
        self.in_flight.is_empty()
            || self.in_flight_bytes + batch_bytes.min(self.window_bytes) <= self.window_bytes
    }

    /// Takes the next batch to send, moving it from the oldest unsent lines
    /// to the lines in flight (it is then the newest `lines` of them, see
    /// [`Buffer::newest_in_flight`]): consecutive seqs only (it ends at a
    /// seq gap), at most `max_lines` lines and, except for a single
    /// oversized line, at most `max_bytes` of line cost, and no line that
    /// would take the lines in flight past the window (unless nothing is in
    /// flight). `None` when nothing is unsent or the window is full.
    pub fn take_batch(&mut self, max_lines: usize, max_bytes: usize) -> Option<TakenBatch> {
        let first_seq = self.unsent.front()?.0;
        let mut count = 0;
        let mut bytes = 0;
        while let Some((seq, line)) = self.unsent.front() {
            let cost = line_cost(line);
            let first = count == 0;
            let gap = *seq != first_seq + count as u64;
            let batch_full = count >= max_lines.max(1) || (!first && bytes + cost > max_bytes);
            let window_full = !(first && self.in_flight.is_empty())
                && self.in_flight_bytes + cost > self.window_bytes;
            if gap || batch_full || window_full {
                break;
            }
            let Some(entry) = self.unsent.pop_front() else {
                break;
            };
            bytes += cost;
            self.in_flight_bytes += cost;
            self.in_flight.push_back(entry);
            count += 1;
        }
        if count == 0 {
            return None;
        }
        let last_seq = first_seq + count as u64 - 1;
        self.sent_up_to = self.sent_up_to.max(last_seq);
        Some(TakenBatch {
            first_seq,
            lines: count,
            shim_dropped_total: self.dropped_total,
        })
    }

    /// The newest `count` lines in flight, oldest first: after
    /// [`Buffer::take_batch`], the batch it took.
    pub fn newest_in_flight(
        &self,
        count: usize,
    ) -> impl ExactSizeIterator<Item = &Line> + Clone + '_ {
        let start = self.in_flight.len().saturating_sub(count);
        self.in_flight.range(start..).map(|(_, line)| line)
    }

    /// [`Buffer::take_batch`] as a protobuf `Batch` (its lines copied; it
    /// carries the total dropped so far, `shim_dropped_total`).
    pub fn next_batch(&mut self, max_lines: usize, max_bytes: usize) -> Option<Batch> {
        let taken = self.take_batch(max_lines, max_bytes)?;
        Some(Batch {
            first_seq: taken.first_seq,
            lines: self.newest_in_flight(taken.lines).cloned().collect(),
            shim_dropped_total: taken.shim_dropped_total,
            ..Batch::default()
        })
    }

    /// The connection the lines in flight were sent on is gone: they become
    /// unsent again (to be resent first, and evictable like any unsent
    /// line), since whether the gateway stored them cannot be known.
    pub fn requeue_in_flight(&mut self) {
        while let Some(entry) = self.in_flight.pop_back() {
            self.unsent.push_front(entry);
        }
        self.in_flight_bytes = 0;
    }

    /// For a new boot: every line held becomes unsent and is numbered from
    /// 1, consecutively, in order; returns how many there are. Whatever the
    /// old boot's gateway stored of them is sent again (duplicates, no loss).
    pub fn restart_seqs(&mut self) -> usize {
        self.requeue_in_flight();
        let mut notices = self.notices.iter_mut().peekable();
        for (seq, new) in self.unsent.iter_mut().map(|(seq, _)| seq).zip(1..) {
            while notices.next_if(|notice| notice.0 < *seq).is_some() {}
            if let Some(notice) = notices.next_if(|notice| notice.0 == *seq) {
                notice.0 = new;
            }
            *seq = new;
        }
        self.next_seq = self.unsent.len() as u64 + 1;
        self.sent_up_to = 0;
        self.unsent.len()
    }

    /// Lines not sent on the current connection yet.
    pub fn unsent_len(&self) -> usize {
        self.unsent.len()
    }

    /// Lines sent on the current connection and not acked yet.
    pub fn in_flight_len(&self) -> usize {
        self.in_flight.len()
    }

    /// Line cost of the lines in flight.
    pub fn in_flight_bytes(&self) -> usize {
        self.in_flight_bytes
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
        self.in_flight
            .front()
            .or(self.unsent.front())
            .map_or(self.next_seq, |(seq, _)| *seq)
    }

    /// The seq the next pushed line will get.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// Whether some line was sent on the current connection but is not
    /// acked yet.
    pub fn has_sent_unacked(&self) -> bool {
        !self.in_flight.is_empty()
    }

    /// Lines waiting for an ack.
    pub fn len(&self) -> usize {
        self.in_flight.len() + self.unsent.len()
    }

    /// True when every line was acked (or dropped).
    pub fn is_empty(&self) -> bool {
        self.in_flight.is_empty() && self.unsent.is_empty()
    }

    /// Line cost currently held.
    pub fn bytes(&self) -> usize {
        self.bytes
    }
}

/// A [`Buffer`] shared by the capture tasks and the stream, plus the
/// wake-ups the stream waits on: new lines, and room in the in-flight
/// window after an ack.
#[derive(Debug)]
pub struct SharedBuffer {
    inner: Mutex<Buffer>,
    ready: Notify,
    room: Notify,
}

impl SharedBuffer {
    /// An empty shared buffer; see [`Buffer::new`].
    pub fn new(max_bytes: usize, window_bytes: usize) -> Self {
        Self {
            inner: Mutex::new(Buffer::new(max_bytes, window_bytes)),
            ready: Notify::new(),
            room: Notify::new(),
        }
    }

    /// Pushes a line and wakes the stream. Never blocks on the network.
    pub fn push(&self, line: Line) -> u64 {
        let seq = self.lock().push(line);
        self.ready.notify_one();
        seq
    }

    /// Pushes lines in order under one lock and wakes the stream once.
    /// Never blocks on the network.
    pub fn push_all(&self, lines: impl IntoIterator<Item = Line>) {
        {
            let mut buffer = self.lock();
            for line in lines {
                buffer.push(line);
            }
        }
        self.ready.notify_one();
    }

    /// Pushes a drop notice ([`Buffer::push_notice`]) and wakes the stream.
    pub fn push_notice(&self, line: Line, reports: Dropped) -> u64 {
        let seq = self.lock().push_notice(line, reports);
        self.ready.notify_one();
        seq
    }

    /// Applies an ack ([`Buffer::ack`]), wakes the stream if it waits for
    /// room in the window, and returns the drops to report.
    pub fn ack(&self, acked_seq: u64) -> Result<Option<Dropped>, AckAheadOfSent> {
        let dropped = {
            let mut buffer = self.lock();
            buffer.ack(acked_seq)?;
            buffer.take_dropped()
        };
        self.room.notify_one();
        Ok(dropped)
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

    /// Resolves after the next ack (or at once if one happened since the
    /// last wait).
    pub async fn wait_for_room(&self) {
        self.room.notified().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    /// A window no test reaches unless it means to.
    const WIDE: usize = 1 << 30;

    fn line(ts: i64, data: &'static [u8]) -> Line {
        Line {
            timestamp_ns: ts,
            data: Bytes::from_static(data),
            ..Line::default()
        }
    }

    fn stamps(batch: &Batch) -> Vec<i64> {
        batch.lines.iter().map(|l| l.timestamp_ns).collect()
    }

    #[test]
    fn seqs_start_at_one_and_are_consecutive() {
        let mut buffer = Buffer::new(1 << 20, WIDE);
        let seqs: Vec<u64> = (0..5).map(|i| buffer.push(line(i, b"x"))).collect();
        assert_eq!(seqs, vec![1, 2, 3, 4, 5]);
        let batch = buffer.next_batch(100, 1 << 20).unwrap();
        assert_eq!(batch.first_seq, 1);
        assert_eq!(batch.lines.len(), 5);
    }

    #[test]
    fn full_buffer_drops_oldest_lines_and_counts_them() {
        // Room for exactly three empty-data lines.
        let mut buffer = Buffer::new(3 * LINE_OVERHEAD_BYTES, WIDE);
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
        let batch = buffer.next_batch(100, usize::MAX).unwrap();
        assert_eq!(batch.first_seq, 3);
        assert_eq!(
            batch.shim_dropped_total, 2,
            "every batch reports the total dropped, for the gateway's status"
        );
        assert_eq!(stamps(&batch), vec![300, 400, 500]);
    }

    #[test]
    fn byte_bound_is_never_exceeded_while_nothing_is_in_flight() {
        let max = 10 * (LINE_OVERHEAD_BYTES + 7);
        let mut buffer = Buffer::new(max, WIDE);
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
    fn lines_in_flight_are_never_evicted() {
        let cost = LINE_OVERHEAD_BYTES;
        let mut buffer = Buffer::new(4 * cost, WIDE);
        for ts in 1..=4 {
            buffer.push(line(ts, b""));
        }
        let sent = buffer.next_batch(100, usize::MAX).unwrap();
        assert_eq!((sent.first_seq, sent.lines.len()), (1, 4));
        // The bound is reached by lines in flight alone: a new line is kept
        // beyond it, and each further one evicts the unsent line before it.
        buffer.push(line(5, b""));
        assert_eq!((buffer.dropped_total(), buffer.bytes()), (0, 5 * cost));
        buffer.push(line(6, b""));
        buffer.push(line(7, b""));
        assert_eq!(
            buffer.take_dropped(),
            Some(Dropped {
                lines: 2,
                first_timestamp_ns: 5,
                last_timestamp_ns: 6,
            })
        );
        assert_eq!((buffer.in_flight_len(), buffer.unsent_len()), (4, 1));
        assert_eq!(buffer.oldest_seq(), 1);
        assert_eq!(
            buffer.ack(4),
            Ok(4),
            "all four in-flight lines are still there"
        );
        let next = buffer.next_batch(100, usize::MAX).unwrap();
        assert_eq!((next.first_seq, stamps(&next)), (7, vec![7]));
    }

    #[test]
    fn eviction_takes_the_oldest_unsent_line() {
        let mut buffer = Buffer::new(5 * LINE_OVERHEAD_BYTES, WIDE);
        for ts in 1..=5 {
            buffer.push(line(ts * 10, b""));
        }
        buffer.next_batch(2, usize::MAX).unwrap();
        buffer.push(line(60, b""));
        buffer.push(line(70, b""));
        assert_eq!(
            buffer.take_dropped(),
            Some(Dropped {
                lines: 2,
                first_timestamp_ns: 30,
                last_timestamp_ns: 40,
            }),
            "seqs 3 and 4 are the oldest not in flight"
        );
        assert_eq!(buffer.bytes(), 5 * LINE_OVERHEAD_BYTES);
        assert_eq!(buffer.unsent_len(), 3);
        let next = buffer.next_batch(100, usize::MAX).unwrap();
        assert_eq!((next.first_seq, stamps(&next)), (5, vec![50, 60, 70]));
    }

    #[test]
    fn after_a_reconnect_the_former_in_flight_lines_are_evictable() {
        let mut buffer = Buffer::new(3 * LINE_OVERHEAD_BYTES, WIDE);
        for ts in 1..=3 {
            buffer.push(line(ts, b""));
        }
        buffer.next_batch(100, usize::MAX).unwrap();
        buffer.requeue_in_flight();
        assert_eq!((buffer.in_flight_len(), buffer.in_flight_bytes()), (0, 0));
        assert!(
            !buffer.has_sent_unacked(),
            "nothing is sent on the new connection"
        );
        buffer.push(line(4, b""));
        assert_eq!(
            buffer.take_dropped(),
            Some(Dropped {
                lines: 1,
                first_timestamp_ns: 1,
                last_timestamp_ns: 1,
            })
        );
        let resent = buffer.next_batch(100, usize::MAX).unwrap();
        assert_eq!((resent.first_seq, stamps(&resent)), (2, vec![2, 3, 4]));
    }

    #[test]
    fn a_batch_never_spans_a_seq_gap() {
        let mut buffer = Buffer::new(4 * LINE_OVERHEAD_BYTES, WIDE);
        for ts in 1..=4 {
            buffer.push(line(ts, b""));
        }
        buffer.next_batch(2, usize::MAX).unwrap();
        // Seqs 3 and 4 are evicted while 1 and 2 are in flight.
        buffer.push(line(5, b""));
        buffer.push(line(6, b""));
        buffer.requeue_in_flight();
        let first = buffer.next_batch(100, usize::MAX).unwrap();
        assert_eq!((first.first_seq, stamps(&first)), (1, vec![1, 2]));
        let second = buffer.next_batch(100, usize::MAX).unwrap();
        assert_eq!((second.first_seq, stamps(&second)), (5, vec![5, 6]));
        assert_eq!(buffer.next_batch(100, usize::MAX), None);
        assert_eq!(buffer.ack(6), Ok(4), "one ack covers lines across the gap");
        assert!(buffer.is_empty());
    }

    #[test]
    fn the_dropped_count_equals_exactly_the_lines_never_sent() {
        // A producer outpacing a slow gateway: per round, 7 lines in, one
        // batch of 3 out, and the previous batch acked.
        let cost = LINE_OVERHEAD_BYTES + 1;
        let mut buffer = Buffer::new(8 * cost, 6 * cost);
        let mut sent = std::collections::BTreeSet::new();
        let mut acked_up_to = 0;
        let mut ts = 0;
        for _ in 0..200 {
            for _ in 0..7 {
                ts += 1;
                buffer.push(line(ts, b"x"));
            }
            if let Some(batch) = buffer.next_batch(3, usize::MAX) {
                for (i, l) in batch.lines.iter().enumerate() {
                    assert_eq!(l.timestamp_ns as u64, batch.first_seq + i as u64);
                    assert!(
                        sent.insert(l.timestamp_ns),
                        "line {} sent twice",
                        l.timestamp_ns
                    );
                }
                if acked_up_to > 0 {
                    buffer.ack(acked_up_to).unwrap();
                }
                acked_up_to = batch.first_seq + batch.lines.len() as u64 - 1;
            }
        }
        buffer.ack(acked_up_to).unwrap();
        while let Some(batch) = buffer.next_batch(3, usize::MAX) {
            sent.extend(batch.lines.iter().map(|l| l.timestamp_ns));
            buffer
                .ack(batch.first_seq + batch.lines.len() as u64 - 1)
                .unwrap();
        }
        assert!(buffer.is_empty());
        assert!(
            buffer.dropped_total() > 0,
            "the test must make the buffer drop"
        );
        assert_eq!(sent.len() as u64 + buffer.dropped_total(), ts as u64);
    }

    #[test]
    fn a_drop_notice_dropped_unsent_is_folded_into_the_next_one() {
        let mut buffer = Buffer::new(2 * LINE_OVERHEAD_BYTES, WIDE);
        for ts in 1..=3 {
            buffer.push(line(ts, b""));
        }
        let first = buffer.take_dropped().unwrap();
        assert_eq!(first.lines, 1);
        buffer.push_notice(line(10, b""), first);
        // Seq 3 and the notice (seq 4) go; the next notice must tell both
        // agent lines dropped, not only seq 3.
        buffer.push(line(11, b""));
        buffer.push(line(12, b""));
        assert_eq!(
            buffer.take_dropped(),
            Some(Dropped {
                lines: 3,
                first_timestamp_ns: 1,
                last_timestamp_ns: 3,
            })
        );
        assert_eq!(buffer.dropped_total(), 3, "a notice is not an agent line");
    }

    #[test]
    fn a_drop_notice_acked_is_reported_for_good() {
        let mut buffer = Buffer::new(2 * LINE_OVERHEAD_BYTES, WIDE);
        for ts in 1..=3 {
            buffer.push(line(ts, b""));
        }
        let first = buffer.take_dropped().unwrap();
        let notice = buffer.push_notice(line(10, b""), first);
        assert_eq!(
            buffer.take_dropped().map(|d| d.lines),
            Some(1),
            "seq 2 made room"
        );
        let batch = buffer.next_batch(100, usize::MAX).unwrap();
        assert_eq!(batch.first_seq + batch.lines.len() as u64 - 1, notice);
        buffer.ack(notice).unwrap();
        buffer.push(line(11, b""));
        buffer.push(line(12, b""));
        buffer.push(line(13, b""));
        assert_eq!(
            buffer.take_dropped().map(|d| d.lines),
            Some(1),
            "only seq 5: the acked notice's drops are not counted again"
        );
    }

    #[test]
    fn memory_stays_within_the_bound_when_the_window_is_at_most_half_of_it() {
        let cost = LINE_OVERHEAD_BYTES + 1;
        let (max, window) = (10 * cost, 4 * cost);
        let mut buffer = Buffer::new(max, window);
        for ts in 0..100 {
            buffer.push(line(ts, b"x"));
            if ts % 5 == 0 {
                // Nothing is acked: batches fill the window and then stop.
                let _ = buffer.next_batch(3, usize::MAX);
            }
            assert!(buffer.in_flight_bytes() <= window, "window exceeded");
            assert!(buffer.bytes() <= max, "{} > {max}", buffer.bytes());
        }
        assert_eq!(buffer.in_flight_len(), 4, "the window is filled");
        assert!(!buffer.has_room_for(cost));
        assert_eq!(buffer.next_batch(3, usize::MAX), None, "the window is full");
        buffer.ack(2).unwrap();
        assert!(buffer.has_room_for(2 * cost));
        assert!(!buffer.has_room_for(3 * cost));
        assert!(
            !buffer.has_room_for(usize::MAX),
            "a batch larger than the window"
        );
        assert_eq!(buffer.next_batch(3, usize::MAX).unwrap().lines.len(), 2);
    }

    #[test]
    fn an_oversized_line_is_sent_when_nothing_is_in_flight() {
        let mut buffer = Buffer::new(1 << 20, LINE_OVERHEAD_BYTES);
        buffer.push(line(1, b"longer than the window"));
        assert!(buffer.has_room_for(usize::MAX));
        assert_eq!(buffer.next_batch(100, 1).unwrap().lines.len(), 1);
    }

    #[test]
    fn ack_removes_every_line_up_to_the_acked_seq() {
        let mut buffer = Buffer::new(1 << 20, WIDE);
        for i in 0..10 {
            buffer.push(line(i, b"abc"));
        }
        buffer.next_batch(100, usize::MAX).unwrap();
        assert_eq!(buffer.ack(4), Ok(4));
        assert_eq!(buffer.oldest_seq(), 5);
        assert_eq!(buffer.bytes(), 6 * (3 + LINE_OVERHEAD_BYTES));
        assert_eq!(buffer.ack(2), Ok(0), "an older ack is a no-op");
        assert_eq!(buffer.ack(10), Ok(6));
        assert!(buffer.is_empty());
        assert_eq!((buffer.bytes(), buffer.in_flight_bytes()), (0, 0));
        assert_eq!(buffer.push(line(11, b"")), 11, "seqs go on after acks");
    }

    #[test]
    fn an_ack_covers_resent_lines_not_yet_in_flight_again() {
        let mut buffer = Buffer::new(1 << 20, WIDE);
        for i in 0..4 {
            buffer.push(line(i, b""));
        }
        buffer.next_batch(100, usize::MAX).unwrap();
        buffer.requeue_in_flight();
        buffer.next_batch(1, usize::MAX).unwrap();
        // The new gateway had stored all four: it acks its high-water mark.
        assert_eq!(buffer.ack(4), Ok(4));
        assert!(buffer.is_empty());
    }

    #[test]
    fn a_new_boot_numbers_the_held_lines_from_one_and_keeps_their_notices() {
        let mut buffer = Buffer::new(3 * LINE_OVERHEAD_BYTES, WIDE);
        for ts in 1..=3 {
            buffer.push(line(ts, b""));
        }
        buffer.next_batch(1, usize::MAX).unwrap();
        buffer.push(line(4, b""));
        let dropped = buffer.take_dropped().unwrap();
        buffer.push_notice(line(10, b""), dropped);
        // Held: seq 1 in flight, 4, and the notice (5); 2 and 3 dropped.
        assert_eq!(buffer.ack(6), Err(AckAheadOfSent { acked: 6, sent: 1 }));

        assert_eq!(buffer.restart_seqs(), 3);
        assert_eq!((buffer.oldest_seq(), buffer.next_seq()), (1, 4));
        let resent = buffer.next_batch(100, usize::MAX).unwrap();
        assert_eq!(resent.first_seq, 1);
        assert_eq!(stamps(&resent), vec![1, 4, 10], "no gap, order kept");
        assert_eq!(buffer.ack(3), Ok(3));
        assert!(
            buffer.notices.is_empty(),
            "the notice, now seq 3, is acked: its drops are reported for good"
        );
        assert_eq!(buffer.push(line(11, b"")), 4);
    }

    #[test]
    fn ack_beyond_what_was_sent_is_refused() {
        let mut buffer = Buffer::new(1 << 20, WIDE);
        for i in 0..3 {
            buffer.push(line(i, b"x"));
        }
        buffer.next_batch(2, usize::MAX).unwrap();
        assert_eq!(buffer.ack(3), Err(AckAheadOfSent { acked: 3, sent: 2 }));
        assert_eq!(buffer.len(), 3, "a refused ack removes nothing");
    }

    #[test]
    fn batches_respect_line_and_byte_limits() {
        let mut buffer = Buffer::new(1 << 20, WIDE);
        for i in 0..10 {
            buffer.push(line(i, b"0123456789"));
        }
        let cost = 10 + LINE_OVERHEAD_BYTES;
        let first = buffer.next_batch(4, usize::MAX).unwrap();
        assert_eq!((first.first_seq, first.lines.len()), (1, 4));
        let second = buffer.next_batch(100, 3 * cost).unwrap();
        assert_eq!((second.first_seq, second.lines.len()), (5, 3));
        assert_eq!(buffer.unsent_len(), 3);
        let oversized = buffer.next_batch(100, 1).unwrap();
        assert_eq!(oversized.lines.len(), 1, "one line always fits");
        assert_eq!(buffer.unsent_len(), 2);
    }

    #[test]
    fn a_taken_batch_is_the_newest_lines_in_flight() {
        let mut buffer = Buffer::new(1 << 20, WIDE);
        for ts in 1..=5 {
            buffer.push(line(ts, b"x"));
        }
        let first = buffer.take_batch(2, usize::MAX).unwrap();
        let second = buffer.take_batch(2, usize::MAX).unwrap();
        assert_eq!(
            second,
            TakenBatch {
                first_seq: 3,
                lines: 2,
                shim_dropped_total: 0
            }
        );
        let taken: Vec<i64> = buffer
            .newest_in_flight(second.lines)
            .map(|l| l.timestamp_ns)
            .collect();
        assert_eq!(taken, vec![3, 4], "not the older batch still in flight");
        assert_eq!((first.first_seq, buffer.in_flight_len()), (1, 4));
    }

    #[test]
    fn sent_unacked_tracks_batches_and_acks() {
        let mut buffer = Buffer::new(1 << 20, WIDE);
        buffer.push(line(0, b"a"));
        assert!(!buffer.has_sent_unacked());
        buffer.next_batch(10, usize::MAX).unwrap();
        assert!(buffer.has_sent_unacked());
        buffer.ack(1).unwrap();
        assert!(!buffer.has_sent_unacked());
        buffer.push(line(1, b"b"));
        assert!(!buffer.has_sent_unacked(), "a new line is not sent yet");
    }
}
