//! What CloudWatch did with each line: stored it, refused it for its time,
//! or stored it once re-stamped with the time of sending ([`Verdict`]),
//! the count of a send ([`Tally`] → [`SendOutcome`]), and the
//! lines it already took during a send that failed as a whole
//! ([`Accepted`]).
//!
//! A send puts to several log streams. When one put fails (throttled, say)
//! after others succeeded, the whole send fails and the engine sends the same
//! lines again. [`Accepted`] remembers, by queue cursor, the lines of the
//! puts that succeeded, so the resend skips them instead of duplicating them
//! at CloudWatch. This is not a retry policy: the engine still decides when
//! and whether to send again; the memo only keeps the answer CloudWatch
//! already gave for a line. It is bounded ([`MEMO_MAX_LINES`]); when full it
//! is cleared, which can only cause duplicates, never loss.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};

use crate::queue::{Cursor, QueuedLine};
use crate::sinks::engine::late::{self, Restamps};
use crate::sinks::SendOutcome;

/// Most lines remembered: two full requests.
pub const MEMO_MAX_LINES: usize = 2 * super::request_builder::MAX_EVENTS;

/// CloudWatch's answer for one event of an accepted put.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Stored,
    /// More than 2 h in the future.
    TooNew,
    /// More than 14 days old.
    TooOld,
    /// Older than the log group's retention.
    Expired,
    /// Refused for its time (the reason), then stored with the time of
    /// sending.
    Restamped(late::Reason),
}

impl Verdict {
    /// Refused for its time: worth sending again with the time of sending.
    pub fn is_refused(self) -> bool {
        matches!(self, Verdict::TooNew | Verdict::TooOld | Verdict::Expired)
    }

    /// Why a refused event is sent again with the time of sending.
    pub fn restamp_reason(self) -> Option<late::Reason> {
        match self {
            Verdict::TooNew => Some(late::Reason::TooNew),
            Verdict::TooOld => Some(late::Reason::TooOld),
            Verdict::Expired => Some(late::Reason::Expired),
            Verdict::Stored | Verdict::Restamped(_) => None,
        }
    }
}

/// Counts of a send's verdicts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Tally {
    pub stored: u64,
    pub too_new: u64,
    pub too_old: u64,
    pub expired: u64,
    pub restamped: Restamps,
}

impl Tally {
    pub fn add(&mut self, verdict: Verdict) {
        match verdict {
            Verdict::Stored => self.stored += 1,
            Verdict::TooNew => self.too_new += 1,
            Verdict::TooOld => self.too_old += 1,
            Verdict::Expired => self.expired += 1,
            Verdict::Restamped(reason) => {
                self.stored += 1;
                self.restamped.add(reason);
            }
        }
    }

    pub fn rejected(&self) -> u64 {
        self.too_new + self.too_old + self.expired
    }

    /// The engine's outcome: refused events are counted and never retried.
    pub fn outcome(&self) -> SendOutcome {
        let mut parts = Vec::new();
        if self.too_new > 0 {
            parts.push(format!("{} more than 2 h in the future", self.too_new));
        }
        if self.too_old > 0 {
            parts.push(format!("{} more than 14 days old", self.too_old));
        }
        if self.expired > 0 {
            parts.push(format!(
                "{} older than the log group's retention",
                self.expired
            ));
        }
        SendOutcome {
            rejected: self.rejected(),
            rejected_reason: (!parts.is_empty()).then(|| {
                format!(
                    "CloudWatch Logs refused events for their timestamps: {}",
                    parts.join(", ")
                )
            }),
            hold_off: None,
            restamped: self.restamped,
        }
    }
}

/// Lines CloudWatch took during sends that failed as a whole, by cursor.
#[derive(Debug, Default)]
pub struct Accepted {
    lines: Mutex<HashMap<Cursor, Verdict>>,
}

impl Accepted {
    pub fn new() -> Self {
        Self::default()
    }

    fn lines(&self) -> MutexGuard<'_, HashMap<Cursor, Verdict>> {
        // The map is only inserted into and removed from whole entries, so a
        // panic elsewhere cannot leave it inconsistent.
        self.lines
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Splits `lines` into those still to send and the tally of those
    /// CloudWatch already took.
    pub fn split<'a>(&self, lines: &'a [QueuedLine]) -> (Vec<&'a QueuedLine>, Tally) {
        let known = self.lines();
        let mut tally = Tally::default();
        let mut to_send = Vec::with_capacity(lines.len());
        for line in lines {
            match known.get(&line.cursor) {
                Some(verdict) => tally.add(*verdict),
                None => to_send.push(line),
            }
        }
        (to_send, tally)
    }

    /// After a send that failed: remembers what CloudWatch stored. Events
    /// it refused are not remembered: the resend sends them again.
    pub fn remember(&self, taken: &[(Cursor, Verdict)]) {
        let taken: Vec<(Cursor, Verdict)> = taken
            .iter()
            .copied()
            .filter(|(_, v)| !v.is_refused())
            .collect();
        let mut known = self.lines();
        if known.len() + taken.len() > MEMO_MAX_LINES {
            known.clear();
        }
        if taken.len() <= MEMO_MAX_LINES {
            known.extend(taken.iter().copied());
        }
    }

    /// After a send that succeeded: its lines are committed now.
    pub fn forget(&self, lines: &[QueuedLine]) {
        let mut known = self.lines();
        if known.is_empty() {
            return;
        }
        for line in lines {
            known.remove(&line.cursor);
        }
    }

    pub fn len(&self) -> usize {
        self.lines().len()
    }

    pub fn is_empty(&self) -> bool {
        self.lines().is_empty()
    }
}
