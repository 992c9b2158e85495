//! The global disk watermark: appends are refused while the filesystem of
//! the queue has less free space than `--disk-min-free-bytes`.
//!
//! sled stops accepting writes after an I/O error (ENOSPC included), so the
//! watermark must keep the queue from ever filling the disk. Delivery
//! deletes segment files, but space it frees inside sled's own files is
//! reused by sled and may never show up as free space on the filesystem; so
//! while the filesystem stays below the
//! watermark, appends resume once delivery has freed at least the watermark
//! inside the queue since it tripped (sled reuses that room first).
//!
//! Measured (sled 0.34 on a full tmpfs): after ENOSPC the write fails, and
//! from then on flushes never complete. So once a write met ENOSPC the
//! queue is "wedged": every later append is refused at once
//! (RESOURCE_EXHAUSTED naming the fix: free space and restart) instead of
//! waiting on a flush that never ends, and cursor commits skip sled.
//!
//! This module only measures and decides; it must not write to the database.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use super::{lock, QueueError};
use crate::metrics;

pub(super) struct DiskGuard {
    dir: PathBuf,
    min_free: u64,
    /// Bytes queued (all agents) when the watermark tripped.
    tripped_at: Mutex<Option<u64>>,
    full: AtomicBool,
    /// The last segment file write met ENOSPC (cleared by the next one that
    /// succeeds; sled is not affected).
    files_full: AtomicBool,
    /// A write met ENOSPC: sled writes nothing more until restart.
    wedged: AtomicBool,
}

impl DiskGuard {
    pub(super) fn new(dir: &Path, min_free: u64) -> Self {
        metrics::queue_disk_full(false);
        DiskGuard {
            dir: dir.to_path_buf(),
            min_free,
            tripped_at: Mutex::new(None),
            full: AtomicBool::new(false),
            files_full: AtomicBool::new(false),
            wedged: AtomicBool::new(false),
        }
    }

    /// Whether an append may write now. `queued` gives the bytes queued for
    /// every agent; it is only called while the filesystem is below the
    /// watermark.
    pub(super) fn check(&self, queued: impl FnOnce() -> u64) -> Result<(), QueueError> {
        if self.wedged.load(Ordering::Relaxed) {
            return Err(QueueError::DiskWedged {
                dir: self.dir.clone(),
            });
        }
        if self.min_free == 0 {
            return Ok(());
        }
        let free = fs2::available_space(&self.dir).map_err(|source| QueueError::DiskSpace {
            dir: self.dir.clone(),
            source,
        })?;
        let mut tripped = lock(&self.tripped_at);
        if free >= self.min_free {
            if tripped.take().is_some() {
                tracing::info!(dir = %self.dir.display(), free, "queue disk has free space again; appends resume");
            }
            self.set_full(false);
            return Ok(());
        }
        let queued = queued();
        let at = *tripped.get_or_insert_with(|| {
            tracing::error!(dir = %self.dir.display(), free, min_free = self.min_free,
                "queue disk is below its free-space watermark; new batches are refused until delivery or the operator frees space");
            queued
        });
        if queued.saturating_add(self.min_free) <= at {
            // Delivery freed room inside sled's files, which it reuses.
            self.set_full(false);
            return Ok(());
        }
        self.set_full(true);
        Err(QueueError::DiskFull {
            dir: self.dir.clone(),
            free,
            min_free: self.min_free,
        })
    }

    /// Records that a write failed because the disk is full.
    pub(super) fn write_failed(&self) {
        if !self.wedged.swap(true, Ordering::Relaxed) {
            tracing::error!(dir = %self.dir.display(),
                "the queue disk is full (ENOSPC); the queue accepts no more batches until the gateway restarts; delivery continues");
        }
        self.set_full(true);
    }

    /// Records that a segment file write failed because the disk is full:
    /// that batch is refused, and the next append tries again.
    pub(super) fn file_write_failed(&self) {
        if !self.files_full.swap(true, Ordering::Relaxed) {
            tracing::error!(dir = %self.dir.display(),
                "the queue disk is full (ENOSPC); new batches are refused until space is freed; delivery continues");
            self.publish();
        }
    }

    /// Records that a segment file write succeeded.
    pub(super) fn file_write_succeeded(&self) {
        if self.files_full.load(Ordering::Relaxed) && self.files_full.swap(false, Ordering::Relaxed)
        {
            tracing::info!(dir = %self.dir.display(), "the queue disk has room again; appends resume");
            self.publish();
        }
    }

    pub(super) fn is_wedged(&self) -> bool {
        self.wedged.load(Ordering::Relaxed)
    }

    pub(super) fn is_full(&self) -> bool {
        self.full.load(Ordering::Relaxed) || self.files_full.load(Ordering::Relaxed)
    }

    fn set_full(&self, full: bool) {
        if self.full.swap(full, Ordering::Relaxed) != full {
            self.publish();
        }
    }

    fn publish(&self) {
        metrics::queue_disk_full(self.is_full());
    }
}
