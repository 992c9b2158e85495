//! Group commit: many writers, one flush.
//!
//! A flush first syncs the segment files written since the last one, then
//! flushes sled, so a durable segment header always has durable lines; files
//! that became empty before the flush began are deleted after it.
//!
//! A writer that needs its sled writes durable calls
//! [`GroupCommit::wait_durable`] after writing. It registers for the next
//! flush to *begin* (its generation); one flusher task at a time runs
//! `flush_async` for every generation that has waiters, so all writers that
//! registered before a flush began share it. Writers never hold a lock
//! across the flush. A failed flush fails its waiters and every later one
//! (sled stops accepting writes after an I/O error, so nothing newer could
//! become durable anyway).
//!
//! This module must not know what was written; it only makes it durable.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::watch;

use super::files::SegmentFiles;
use super::lock;

/// Shared handle to the group commit of one database.
#[derive(Clone)]
pub(crate) struct GroupCommit {
    shared: Arc<Shared>,
}

struct Shared {
    db: sled::Db,
    files: Arc<SegmentFiles>,
    state: Mutex<State>,
    progress: watch::Sender<Progress>,
    flushes: AtomicU64,
}

struct State {
    /// Generation of the next flush to begin.
    next: u64,
    /// Someone registered for `next`.
    pending: bool,
    /// A flusher task is running.
    running: bool,
}

#[derive(Default)]
struct Progress {
    /// Highest generation whose flush completed.
    durable: u64,
    /// The first flush that failed.
    failed: Option<sled::Error>,
}

impl GroupCommit {
    pub(crate) fn new(db: sled::Db, files: Arc<SegmentFiles>) -> Self {
        GroupCommit {
            shared: Arc::new(Shared {
                db,
                files,
                state: Mutex::new(State {
                    next: 1,
                    pending: false,
                    running: false,
                }),
                progress: watch::Sender::new(Progress::default()),
                flushes: AtomicU64::new(0),
            }),
        }
    }

    /// Flushes performed so far.
    pub(crate) fn flushes(&self) -> u64 {
        self.shared.flushes.load(Ordering::Relaxed)
    }

    /// Returns once everything written before this call is on disk.
    ///
    /// Must be called inside a Tokio runtime (the flusher is a task).
    pub(crate) async fn wait_durable(&self) -> Result<(), sled::Error> {
        let mut progress = self.shared.progress.subscribe();
        if let Some(error) = &progress.borrow_and_update().failed {
            return Err(error.clone());
        }
        let generation = {
            let mut state = lock(&self.shared.state);
            state.pending = true;
            self.start_if_idle(&mut state);
            state.next
        };
        loop {
            {
                let now = progress.borrow_and_update();
                // Flushes run one after another, so a failed later flush
                // does not undo an earlier success.
                if now.durable >= generation {
                    return Ok(());
                }
                if let Some(error) = &now.failed {
                    return Err(error.clone());
                }
            }
            // A flusher task dropped with its runtime leaves no one to
            // flush: take over.
            self.start_if_idle(&mut lock(&self.shared.state));
            if progress.changed().await.is_err() {
                // The sender lives in `shared`, which `self` keeps alive.
                return Err(sled::Error::ReportableBug(
                    "group commit progress channel closed".to_string(),
                ));
            }
        }
    }

    /// Asks for a flush soon without waiting for it (nothing happens outside
    /// a Tokio runtime: the next flush then covers it).
    pub(crate) fn request(&self) {
        if tokio::runtime::Handle::try_current().is_err() {
            return;
        }
        let mut state = lock(&self.shared.state);
        state.pending = true;
        self.start_if_idle(&mut state);
    }

    fn start_if_idle(&self, state: &mut State) {
        if !state.running {
            state.running = true;
            state.pending = true;
            tokio::spawn(run(self.shared.clone()));
        }
    }
}

/// The flusher: flushes while anyone is waiting, then exits.
async fn run(shared: Arc<Shared>) {
    let mut guard = Running {
        shared: &shared,
        armed: true,
    };
    loop {
        let generation = {
            let mut state = lock(&shared.state);
            if !state.pending {
                state.running = false;
                guard.armed = false;
                return;
            }
            state.pending = false;
            state.next += 1;
            state.next - 1
        };
        let result = flush(&shared).await;
        shared.flushes.fetch_add(1, Ordering::Relaxed);
        shared.progress.send_modify(|p| match result {
            Ok(_) => p.durable = p.durable.max(generation),
            Err(error) => {
                tracing::error!(%error, "queue flush failed; no further appends are acknowledged");
                p.failed.get_or_insert(error);
            }
        });
    }
}

/// One flush: segment files synced (on the blocking pool), then sled;
/// files doomed before it began are deleted once it succeeded.
async fn flush(shared: &Arc<Shared>) -> Result<(), sled::Error> {
    let doomed = shared.files.take_doomed();
    if shared.files.is_dirty() {
        let files = shared.files.clone();
        match tokio::task::spawn_blocking(move || files.sync()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(sled::Error::Io(e)),
            Err(join) => {
                return Err(sled::Error::ReportableBug(format!(
                    "syncing the segment files failed: {join}"
                )))
            }
        }
    }
    shared.db.flush_async().await?;
    if !doomed.is_empty() {
        let files = shared.files.clone();
        // Done before the flush counts as complete, so a caller that awaited
        // it sees the files gone (one file per 16 MiB of lines: rare).
        if let Err(join) = tokio::task::spawn_blocking(move || files.delete(doomed)).await {
            tracing::warn!(%join, "deleting delivered segment files failed; retried at the next open");
        }
    }
    Ok(())
}

/// Marks the flusher stopped if its task is dropped mid-flush, and wakes
/// the waiters so one of them starts a new flusher.
struct Running<'a> {
    shared: &'a Shared,
    armed: bool,
}

impl Drop for Running<'_> {
    fn drop(&mut self) {
        if self.armed {
            lock(&self.shared.state).running = false;
            self.shared.progress.send_modify(|_| {});
        }
    }
}
