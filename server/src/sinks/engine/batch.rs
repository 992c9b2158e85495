//! Filling a batch by a sink's limits, written once for every vendor.
//!
//! [`Pending`] holds the lines a worker has read but not yet sent, each with
//! its size as the vendor counts it and the time it reached the worker. It
//! says when a full batch is ready, when the oldest line has lingered long
//! enough, and cuts the next batch without breaking a limit. It must not read
//! the queue, send, or wait: the worker does that.

use std::collections::VecDeque;

use tokio::time::Instant;

use crate::queue::QueuedLine;
use crate::sinks::BatchLimits;

struct Entry {
    line: QueuedLine,
    size: usize,
    arrived: Instant,
}

/// Lines read by a worker and not yet handed to its sink, in queue order.
///
/// Bounded: the worker reads only while [`Pending::is_full`] is false and asks
/// for at most [`Pending::room`], so it holds about one batch.
#[derive(Default)]
pub struct Pending {
    entries: VecDeque<Entry>,
    bytes: usize,
}

impl Pending {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a line read from the queue; `size` is [`crate::sinks::Sink::event_size`].
    pub fn push(&mut self, line: QueuedLine, size: usize, arrived: Instant) {
        self.bytes = self.bytes.saturating_add(size);
        self.entries.push_back(Entry {
            line,
            size,
            arrived,
        });
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The first line in queue order (the route's oldest undelivered one
    /// when nothing is in flight).
    pub fn first(&self) -> Option<&QueuedLine> {
        self.entries.front().map(|entry| &entry.line)
    }

    /// Whether a batch at one of the limits can be cut now.
    pub fn is_full(&self, limits: &BatchLimits) -> bool {
        self.entries.len() >= limits.max_events || self.bytes >= limits.max_bytes
    }

    /// How many more lines and (raw) bytes to read to fill a batch.
    pub fn room(&self, limits: &BatchLimits) -> (usize, usize) {
        (
            limits.max_events.saturating_sub(self.entries.len()),
            limits.max_bytes.saturating_sub(self.bytes).max(1),
        )
    }

    /// When the oldest pending line has waited `max_linger`.
    pub fn deadline(&self, limits: &BatchLimits) -> Option<Instant> {
        self.entries.front().map(|e| e.arrived + limits.max_linger)
    }

    /// Takes the next batch from the front: as many lines as fit both
    /// `max_events` and `max_bytes`, and always at least one line (a line the
    /// sink could not shape below `max_bytes` goes alone, and the vendor
    /// decides).
    pub fn take_batch(&mut self, limits: &BatchLimits) -> Vec<QueuedLine> {
        let mut batch = Vec::with_capacity(self.entries.len().min(limits.max_events));
        let mut bytes = 0usize;
        while let Some(front) = self.entries.front() {
            let fits = batch.len() < limits.max_events
                && bytes.saturating_add(front.size) <= limits.max_bytes;
            if !fits && !batch.is_empty() {
                break;
            }
            let Some(entry) = self.entries.pop_front() else {
                break;
            };
            bytes = bytes.saturating_add(entry.size);
            self.bytes = self.bytes.saturating_sub(entry.size);
            batch.push(entry.line);
            if !fits {
                // An oversized first line goes alone.
                break;
            }
        }
        batch
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use logdrain::v1::Line;

    use super::*;
    use crate::queue::Cursor;

    fn line(index: u32) -> QueuedLine {
        QueuedLine {
            cursor: Cursor { segment: 0, index },
            agent_server_id: Arc::from("r"),
            line: Line::default(),
            original_timestamp_ns: None,
        }
    }

    fn limits(max_events: usize, max_bytes: usize) -> BatchLimits {
        BatchLimits {
            max_events,
            max_bytes,
            max_linger: Duration::from_secs(1),
        }
    }

    fn indexes(batch: &[QueuedLine]) -> Vec<u32> {
        batch.iter().map(|l| l.cursor.index).collect()
    }

    #[test]
    fn a_batch_stops_at_max_events_and_keeps_the_rest_in_order() {
        let l = limits(3, 1_000);
        let mut p = Pending::new();
        let now = Instant::now();
        for i in 0..7 {
            p.push(line(i), 10, now);
        }
        assert!(p.is_full(&l));
        assert_eq!(indexes(&p.take_batch(&l)), [0, 1, 2]);
        assert_eq!(indexes(&p.take_batch(&l)), [3, 4, 5]);
        assert!(!p.is_full(&l));
        assert_eq!(indexes(&p.take_batch(&l)), [6]);
        assert!(p.is_empty());
    }

    #[test]
    fn a_batch_never_exceeds_max_bytes() {
        let l = limits(100, 100);
        let mut p = Pending::new();
        let now = Instant::now();
        for (i, size) in [40, 40, 30, 100, 1].into_iter().enumerate() {
            p.push(line(i as u32), size, now);
        }
        assert_eq!(indexes(&p.take_batch(&l)), [0, 1]);
        assert_eq!(indexes(&p.take_batch(&l)), [2]);
        assert_eq!(indexes(&p.take_batch(&l)), [3]);
        assert_eq!(indexes(&p.take_batch(&l)), [4]);
    }

    #[test]
    fn an_oversized_line_goes_alone_instead_of_blocking_the_route() {
        let l = limits(100, 100);
        let mut p = Pending::new();
        let now = Instant::now();
        p.push(line(0), 500, now);
        p.push(line(1), 5, now);
        assert_eq!(indexes(&p.take_batch(&l)), [0]);
        assert_eq!(indexes(&p.take_batch(&l)), [1]);
    }

    #[test]
    fn room_and_fullness_follow_both_limits() {
        let l = limits(10, 100);
        let mut p = Pending::new();
        let now = Instant::now();
        assert_eq!(p.room(&l), (10, 100));
        p.push(line(0), 60, now);
        assert_eq!(p.room(&l), (9, 40));
        assert!(!p.is_full(&l));
        p.push(line(1), 60, now);
        assert!(p.is_full(&l));
        assert_eq!(p.room(&l).1, 1);
    }

    #[test]
    fn linger_deadline_follows_the_oldest_pending_line() {
        let l = limits(2, 1_000);
        let mut p = Pending::new();
        let t0 = Instant::now();
        assert_eq!(p.deadline(&l), None);
        p.push(line(0), 1, t0);
        p.push(line(1), 1, t0);
        p.push(line(2), 1, t0 + Duration::from_millis(500));
        assert_eq!(p.deadline(&l), Some(t0 + Duration::from_secs(1)));
        p.take_batch(&l);
        assert_eq!(p.deadline(&l), Some(t0 + Duration::from_millis(1_500)));
    }
}
