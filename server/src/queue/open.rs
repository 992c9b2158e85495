//! Opening the queue: one scan of the database rebuilds every agent's index.
//!
//! A segment whose lines are missing from its segment file (the file was
//! cut short by a crash of the machine before the group commit that would
//! have acknowledged it) is quarantined, and its stream's high-water mark
//! moves back before it, so the shim's resend of those unacknowledged lines
//! is accepted rather than taken for duplicates. Segment files no segment
//! points into are deleted once the open's own removals are durable.
//!
//! Keys sort by kind byte (`c`ursors, `h`igh-water marks, `m`eta, `r`outes,
//! `s`egments), so cursors and routes are known before the first segment is
//! indexed. Each segment's checksum and header are verified, its lines are
//! not decoded. An entry that cannot be decoded (or a key of no known
//! layout) is moved to the `quarantine` tree and counted; it never makes
//! open fail. Segments that no stored route holds any more are deleted.
//! Route records stored in plain text by older versions are re-sealed; a
//! route record sealed under another key is reported and keeps its
//! segments (the right key, restored, delivers them).
//! A database sled cannot open at all (damaged files, a panic inside sled)
//! is moved aside whole by [`open_or_set_aside`] and a fresh queue is
//! started, once: the gateway never loops and never refuses to start for
//! that. A lock held by another process, a permission problem or a queue
//! of another format version still refuse (moving those aside would hide
//! data that is fine). This module must not be used after open: the running
//! queue keeps its index up to date itself.

use std::collections::HashMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{SystemTime, UNIX_EPOCH};

use super::commit::GroupCommit;
use super::disk::DiskGuard;
use super::error::{QueueError, RecordError};
use super::files::{Existing, SegmentFiles};
use super::index::{AgentIndex, SegMeta};
use super::keys::{self, Parsed};
use super::seal::SealKey;
use super::{records, segment, Agent, Cursor, Inner, OpenReport, Queue, QueueLimits, STREAM_LOCKS};
use crate::metrics;
use crate::route::RouteKey;

/// Name of the tree that holds entries set aside as unreadable.
const QUARANTINE_TREE: &str = "quarantine";

/// Format version written under [`keys::FORMAT_KEY`].
const FORMAT_VERSION: u8 = 1;

/// A queue directory that could not be opened and was moved aside.
#[derive(Debug)]
pub struct SetAside {
    /// Where the unreadable directory is now (kept for inspection).
    pub moved_to: PathBuf,
    /// Why it could not be opened.
    pub reason: QueueError,
}

pub(super) fn open_or_set_aside(
    dir: &Path,
    seal: SealKey,
    limits: QueueLimits,
) -> Result<(Queue, OpenReport, Option<SetAside>), QueueError> {
    let reason = match catch_unwind(AssertUnwindSafe(|| open(dir, seal.clone(), limits))) {
        Ok(Ok((queue, report))) => return Ok((queue, report, None)),
        Ok(Err(error)) if !damaged(&error) => return Err(error),
        Ok(Err(error)) => error,
        // Not evidence of damage: refuse, change nothing.
        Err(panic) => {
            return Err(QueueError::Unavailable {
                dir: dir.to_path_buf(),
                what: "sled panicked while opening the database".to_string(),
                cause: panic_message(panic.as_ref()),
                fix: "keep the directory as it is and report the panic".to_string(),
            })
        }
    };
    let moved_to = aside_path(dir);
    std::fs::rename(dir, &moved_to).map_err(|source| QueueError::SetAside {
        dir: dir.to_path_buf(),
        to: moved_to.clone(),
        source,
    })?;
    // Once only: a fresh directory that cannot be opened is reported as is.
    let (queue, report) = open(dir, seal, limits)?;
    Ok((queue, report, Some(SetAside { moved_to, reason })))
}

/// Whether an open failure is positive evidence that the database is
/// damaged: sled itself reports it corrupt. Anything else (errno, lock,
/// permissions, an error not classified) refuses the start instead.
fn damaged(error: &QueueError) -> bool {
    matches!(
        error,
        QueueError::Sled(sled::Error::Corruption { .. })
            | QueueError::Flush(sled::Error::Corruption { .. })
    )
}

/// The refusal for a sled error met while opening.
fn unavailable(dir: &Path, what: &str, error: sled::Error) -> QueueError {
    let (cause, fix) = match &error {
        sled::Error::Io(io) => {
            let (cause, fix) = super::error::io_cause(io);
            (cause, fix.to_string())
        }
        sled::Error::Corruption { .. } => return QueueError::Sled(error),
        other => (
            other.to_string(),
            "fix the cause and start again".to_string(),
        ),
    };
    QueueError::Unavailable {
        dir: dir.to_path_buf(),
        what: what.to_string(),
        cause,
        fix,
    }
}

/// `<dir>.unreadable-<unix seconds>` next to `dir` (with a counter if taken).
fn aside_path(dir: &Path) -> PathBuf {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let name = dir
        .file_name()
        .map_or_else(|| "queue".into(), |n| n.to_string_lossy().into_owned());
    let base = dir.with_file_name(format!("{name}.unreadable-{secs}"));
    let mut candidate = base.clone();
    let mut n = 1;
    while candidate.exists() {
        candidate = PathBuf::from(format!("{}-{n}", base.display()));
        n += 1;
    }
    candidate
}

fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "sled panicked while opening".to_string())
}

/// sled's log segment size for new queues. sled writes a tree node larger
/// than a quarter of it as a separate blob, which its page cache never
/// evicts; sled's values are segment headers of about a hundred bytes (the
/// lines are in segment files), so leaves never are.
pub(crate) const SLED_SEGMENT_BYTES: usize = 2 * 1024 * 1024;

/// sled's default, which queues created by earlier versions use. sled
/// refuses to open a database with another segment size.
const LEGACY_SLED_SEGMENT_BYTES: usize = 512 * 1024;

/// Opens the database with [`SLED_SEGMENT_BYTES`], or with the legacy size
/// when the database was created with it.
pub(crate) fn open_sled(dir: &Path, cache_bytes: u64) -> sled::Result<sled::Db> {
    let config = |segment_size| {
        sled::Config::new()
            .path(dir)
            .cache_capacity(cache_bytes)
            .segment_size(segment_size)
    };
    match config(SLED_SEGMENT_BYTES).open() {
        Err(sled::Error::Unsupported(reason)) if reason.contains("io buffer size") => {
            tracing::warn!(
                queue = %dir.display(),
                "the queue was created by an earlier version with smaller sled segments; \
                 it keeps them (the page cache then bounds memory less tightly)"
            );
            config(LEGACY_SLED_SEGMENT_BYTES).open()
        }
        other => other,
    }
}

pub(super) fn open(
    dir: &Path,
    seal: SealKey,
    limits: QueueLimits,
) -> Result<(Queue, OpenReport), QueueError> {
    let db = open_sled(dir, limits.cache_bytes)
        .map_err(|e| unavailable(dir, "opening the sled database", e))?;
    let quarantine = db.open_tree(QUARANTINE_TREE)?;
    check_format(&db, dir)?;
    let (files, existing) = SegmentFiles::open(dir).map_err(|source| QueueError::Files {
        path: dir.join("lines"),
        source,
    })?;

    let files = Arc::new(files);
    let mut scan = Scan::new(seal.clone(), &files, &existing);
    for item in db.iter() {
        let (key, value) = item?;
        scan.visit(&key, &value);
    }
    for rollback in &scan.rollbacks {
        roll_back_hwm(&db, rollback)?;
    }

    for (key, value, reason) in &scan.bad {
        tracing::warn!(
            entry = %keys::describe(key),
            %reason,
            "queue entry cannot be decoded; moved to quarantine"
        );
        quarantine.insert(key, value.clone())?;
        db.remove(key)?;
    }
    for (key, value) in &scan.plain {
        db.insert(key, records::seal_secrets(&seal, key, value))?;
    }
    if !scan.plain.is_empty() {
        tracing::info!(
            routes = scan.plain.len(),
            "route records stored in plain text by an older version were encrypted"
        );
    }
    if scan.other_key > 0 {
        tracing::error!(
            routes = scan.other_key,
            key_id = format_args!("{:08x}", seal.id()),
            "route secrets were sealed under another key: the signing key changed; their lines \
             are kept but not delivered; start the gateway with the signing key it had before \
             (LOGDRAIN_SIGNING_KEY or signing.key in the data dir)"
        );
    }
    let quarantined = scan.bad.len() as u64;
    // Also when 0, so the series exists for alerts from the first scrape.
    metrics::quarantined(quarantined);

    let mut report = OpenReport {
        segments: 0,
        lines: 0,
        quarantined,
        routes: scan.routes,
        sealed_under_other_key: scan.other_key,
        resealed: scan.plain.len(),
    };
    let mut agents = HashMap::with_capacity(scan.agents.len());
    for (agent_id, mut index) in scan.agents {
        free_unheld(&db, &files, &agent_id, &mut index)?;
        let (lines, bytes) = index.depth();
        metrics::queue_depth(&agent_id, lines, bytes);
        report.segments += index.segment_count() as u64;
        report.lines += lines;
        agents.insert(agent_id.clone(), Agent::new(agent_id, index));
    }

    // Files go only once the removals above are durable.
    db.flush()?;
    files.delete(files.take_doomed());
    // A file no segment points into is kept: only a commit that freed its
    // last segment may delete it, never the database not knowing it.
    let unknown = files.unreferenced(&existing);
    if unknown > 0 {
        tracing::error!(
            files = unknown,
            "segment files no queued segment points into were kept"
        );
    }

    let inner = Inner {
        dir: dir.to_path_buf(),
        db: db.clone(),
        files: files.clone(),
        quarantine,
        agents: RwLock::new(agents),
        streams: (0..STREAM_LOCKS).map(|_| Mutex::new(())).collect(),
        stream_hasher: Default::default(),
        seal,
        next_segment: AtomicU64::new(scan.max_segment.saturating_add(1)),
        commit: GroupCommit::new(db, files.clone()),
        limits,
        disk: DiskGuard::new(dir, limits.min_free_bytes),
        quota_drops: Mutex::new(HashMap::new()),
        quota_notify: Default::default(),
    };
    tracing::info!(
        segments = report.segments,
        lines = report.lines,
        quarantined = report.quarantined,
        routes = report.routes,
        "queue opened"
    );
    Ok((
        Queue {
            inner: Arc::new(inner),
        },
        report,
    ))
}

fn check_format(db: &sled::Db, dir: &Path) -> Result<(), QueueError> {
    match db.get(keys::FORMAT_KEY)? {
        None => {
            db.insert(keys::FORMAT_KEY, &[FORMAT_VERSION][..])?;
            Ok(())
        }
        Some(value) if value.as_ref() == [FORMAT_VERSION] => Ok(()),
        Some(value) => Err(QueueError::Format {
            dir: dir.to_path_buf(),
            found: value.escape_ascii().to_string(),
            expected: FORMAT_VERSION,
        }),
    }
}

/// What one pass over the database found.
struct Scan<'a> {
    seal: SealKey,
    files: &'a SegmentFiles,
    /// Segment files on disk and their lengths.
    existing: &'a Existing,
    /// Streams whose high-water mark must move back before a segment whose
    /// lines are missing.
    rollbacks: Vec<Rollback>,
    agents: HashMap<Arc<str>, AgentIndex>,
    cursors: HashMap<RouteKey, Cursor>,
    routes: usize,
    /// Routes sealed under another key.
    other_key: usize,
    /// Plain-text route records (older versions) to re-seal.
    plain: Vec<(sled::IVec, crate::route::Secrets)>,
    /// Highest segment id referenced by a segment key or a cursor.
    max_segment: u64,
    bad: Vec<(sled::IVec, sled::IVec, RecordError)>,
}

/// A stream's high-water mark to lower to `seq`.
struct Rollback {
    agent_id: String,
    agent_server_id: String,
    boot_id: String,
    seq: u64,
}

impl<'a> Scan<'a> {
    fn new(seal: SealKey, files: &'a SegmentFiles, existing: &'a Existing) -> Self {
        Self {
            seal,
            files,
            existing,
            rollbacks: Vec::new(),
            agents: HashMap::new(),
            cursors: HashMap::new(),
            routes: 0,
            other_key: 0,
            plain: Vec::new(),
            max_segment: 0,
            bad: Vec::new(),
        }
    }

    fn visit(&mut self, key: &sled::IVec, value: &sled::IVec) {
        let result = match keys::parse(key) {
            Some(Parsed::Cursor(route)) => records::decode_cursor(value).map(|cursor| {
                self.max_segment = self.max_segment.max(cursor.segment);
                self.cursors.insert(route, cursor);
            }),
            Some(Parsed::Hwm) => records::decode_hwm(value).map(drop),
            Some(Parsed::Meta) => Ok(()),
            Some(Parsed::Route(route)) => {
                let held = match records::unseal_secrets(&self.seal, key, value) {
                    Ok(secrets) => {
                        if records::is_plain(value) {
                            self.plain.push((key.clone(), secrets));
                        }
                        Ok(())
                    }
                    Err(RecordError::OtherKey { .. }) => {
                        tracing::error!(
                            route = %keys::describe(key),
                            "route secrets sealed under another key; its lines are kept"
                        );
                        self.other_key += 1;
                        Ok(())
                    }
                    Err(e) => Err(e),
                };
                held.map(|()| {
                    let cursor = self.cursors.get(&route).copied();
                    self.agent(&route.agent_id).add_route(&route, cursor);
                    self.routes += 1;
                })
            }
            Some(Parsed::Segment { agent_id, segment }) => {
                self.max_segment = self.max_segment.max(segment);
                let checked = segment::decode_header(value).and_then(|checked| {
                    self.lines_present(&checked.header)?;
                    Ok(checked)
                });
                if let Err(RecordError::Lines { .. }) = &checked {
                    if let Ok(lost) = segment::decode_header(value) {
                        self.rollbacks.push(Rollback {
                            agent_id: agent_id.clone(),
                            agent_server_id: lost.header.agent_server_id,
                            boot_id: lost.header.boot_id,
                            seq: lost.header.first_seq.saturating_sub(1),
                        });
                    }
                }
                checked.map(|checked| {
                    if let Some(at) = checked.header.location() {
                        self.files.add_live(at.file);
                    }
                    let index = self.agent(&agent_id);
                    let tags = index.tags_for(checked.tags.iter().map(|(k, c)| (*k, c.as_str())));
                    index.insert_segment(
                        segment,
                        SegMeta {
                            lines: checked.lines,
                            bytes: checked.header.data_bytes,
                            span_ns: (
                                checked.header.oldest_timestamp_ns,
                                checked.header.newest_timestamp_ns,
                            ),
                            tags,
                            file: checked.header.location().map(|at| at.file),
                        },
                    );
                })
            }
            None => Err(RecordError::Key),
        };
        if let Err(reason) = result {
            self.bad.push((key.clone(), value.clone(), reason));
        }
    }

    /// Whether a segment's lines are within its segment file (their
    /// checksum is verified when they are read).
    fn lines_present(&self, header: &segment::Header) -> Result<(), RecordError> {
        let Some(at) = header.location() else {
            return Ok(());
        };
        let end = at.offset.saturating_add(u64::from(at.len));
        let reason = match self.existing.get(&at.file) {
            None => "the file is missing".to_string(),
            Some(&len) if len < end => {
                format!("the file ends at byte {len}, before the lines' end at byte {end}")
            }
            Some(_) => return Ok(()),
        };
        Err(RecordError::Lines {
            path: self.files.path(at.file),
            reason,
            transient: false,
        })
    }

    fn agent(&mut self, agent_id: &str) -> &mut AgentIndex {
        if !self.agents.contains_key(agent_id) {
            self.agents
                .insert(Arc::from(agent_id), AgentIndex::default());
        }
        // Inserted just above when missing.
        self.agents
            .get_mut(agent_id)
            .unwrap_or_else(|| unreachable!("agent index inserted above"))
    }
}

/// Lowers a stream's high-water mark to `rollback.seq` (never raises it).
fn roll_back_hwm(db: &sled::Db, rollback: &Rollback) -> Result<(), QueueError> {
    let key = keys::hwm(
        &rollback.agent_id,
        &rollback.agent_server_id,
        &rollback.boot_id,
    );
    let current = match db.get(&key)? {
        Some(value) => records::decode_hwm(&value).unwrap_or(u64::MAX),
        None => return Ok(()),
    };
    if rollback.seq < current {
        db.insert(&key, &records::encode_hwm(rollback.seq)[..])?;
        tracing::warn!(
            agent = rollback.agent_id,
            agent_server_id = rollback.agent_server_id,
            seq = rollback.seq,
            "lines of an unacknowledged batch were lost from a segment file (the machine \
             stopped before they were synced); the stream accepts them again from the next seq"
        );
    }
    Ok(())
}

/// Deletes segments no stored route holds (their routes were removed or
/// their route records were unreadable).
fn free_unheld(
    db: &sled::Db,
    files: &SegmentFiles,
    agent_id: &str,
    index: &mut AgentIndex,
) -> Result<(), QueueError> {
    let unheld = index.unheld();
    if unheld.is_empty() {
        return Ok(());
    }
    let mut batch = sled::Batch::default();
    for id in &unheld {
        batch.remove(keys::segment(agent_id, *id));
    }
    db.apply_batch(batch)?;
    let removed = index.remove_segments(&unheld);
    files.release(removed.files);
    tracing::info!(
        agent = agent_id,
        segments = unheld.len(),
        lines = removed.lines,
        "freed queued segments that no stored route holds"
    );
    Ok(())
}
