//! The durable queue: segment files as the source of truth, sled as their
//! index.
//!
//! Lines are stored in **segments**, one per received batch (split above
//! 1,024 lines or 256 KiB), because one key per line is about 30 times
//! slower. A segment is a self-describing record of a segment file
//! (`files.rs`, `segment.rs`): agent, stream, first seq, route tags, and
//! each line with its own checksum; the route records (credentials sealed)
//! its tags need are in the same file. sled holds the index: each segment's
//! header and where its record is, the routes and their committed
//! [`Cursor`]s, and each stream's high-water mark. A segment is freed once
//! every route tagged on it has committed past its last line.
//!
//! * [`Queue::append`] de-duplicates by (agent-server id, boot id, seq)
//!   against the stream's high-water mark, appends the new segments to the
//!   agent's segment file, writes their index entries and the new mark in
//!   one atomic sled batch, and returns only after a group commit
//!   (`commit.rs`: segment files synced, then sled flushed) made them
//!   durable.
//! * [`Queue::read`] finds the next segments of a route from an in-memory
//!   index (`index.rs`). A line whose checksum fails is left out, counted
//!   (`dropped{reason="damaged"}`, the route's damaged count in `status`)
//!   and reported once per route ([`Queue::take_damage_drops`]); the rest of
//!   its segment is delivered. An I/O error (EMFILE, EIO, ...) is returned
//!   for the caller to retry: it never sets anything aside.
//! * [`Queue::commit`] writes a cursor and removes the index entries of the
//!   segments it frees in the same atomic batch; a segment file is deleted
//!   after the group commit that made the freeing of its last segment
//!   durable, and never because sled does not know it.
//! * [`Queue::open`] (`open.rs`) rebuilds the index from the segment files
//!   wherever sled is missing, short or wrong, and refuses to start on any
//!   error that is not positive evidence of damage.
//! * Limits ([`QueueLimits`]): an append that would take an agent over its
//!   quota first drops that agent's oldest segments (whole, for every route)
//!   in the same atomic batch that moves the affected cursors past them, and
//!   reports what each route lost ([`Queue::take_quota_drops`]); an append
//!   is refused while the disk is below its free-space watermark (`disk.rs`).
//!
//! Route secrets are stored encrypted with a [`SealKey`] (one function pair
//! in `records.rs`, the cipher in `seal.rs`), and never appear in `Debug`,
//! errors or logs. A route record sealed under another key (the signing key
//! changed) is reported at open and keeps its lines, but is not delivered.
//! This module must not know about gRPC, vendors or delivery policy.

mod append;
mod commit;
mod disk;
mod error;
mod files;
mod index;
mod keys;
mod open;
mod records;
mod seal;
mod segment;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::fmt;
use std::hash::RandomState;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};

use tokio::sync::{watch, Notify};

pub use error::{QueueError, RecordError};
pub use logdrain::v1::Line;
pub use open::{recover, SetAside};
pub use seal::SealKey;

use crate::metrics;
use crate::route::{RouteKey, Secrets};
use append::Stored;
use commit::GroupCommit;
use disk::DiskGuard;
use files::{Location, ReadError, SegmentFiles};
use index::{AgentIndex, Removed};

/// Position of one line in an agent's queue: segment id, index in segment.
/// Ordered.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Cursor {
    pub segment: u64,
    pub index: u32,
}

/// A line read back from the queue, with its position.
#[derive(Clone, Debug)]
pub struct QueuedLine {
    pub cursor: Cursor,
    pub agent_server_id: Arc<str>,
    pub line: Line,
    /// The line's own time when the delivery engine sends it with the time
    /// of sending instead (outside the vendor's window:
    /// `sinks::engine::late`); `None` as read from the queue.
    pub original_timestamp_ns: Option<i64>,
}

/// The lines of one segment a route has not delivered yet, with the stream
/// they came in on (for `logdrain-gateway handoff`).
#[derive(Clone, Debug)]
pub struct QueuedSegment {
    pub segment: u64,
    pub agent_server_id: Arc<str>,
    pub boot_id: Arc<str>,
    /// Sequence number of the segment's line 0.
    pub first_seq: u64,
    /// Index of the segment's last line (its lines may be fewer: damaged
    /// ones are left out, counted).
    pub last_index: u32,
    /// The lines that passed their checksum, with their index.
    pub lines: Vec<(u32, Line)>,
}

/// One received batch of a shim stream.
pub struct Append<'a> {
    pub agent_id: &'a str,
    pub agent_server_id: &'a str,
    pub boot_id: &'a str,
    /// Sequence number of `lines[0]`; `lines[i]` has `first_seq + i`.
    pub first_seq: u64,
    pub lines: Vec<Line>,
    /// Routes this stream enabled (same agent id); may be empty.
    pub routes: &'a [RouteKey],
}

/// What [`Queue::append`] made durable.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AppendOutcome {
    /// Every line of the stream with `seq <= acked_seq` is durable (or was
    /// dropped for lack of a route).
    pub acked_seq: u64,
    /// Lines stored by this call.
    pub queued: usize,
    /// Lines already received earlier (at or below the high-water mark).
    pub duplicates: usize,
}

/// What [`Queue::open`] found on disk.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OpenReport {
    /// Segments queued.
    pub segments: u64,
    /// Lines in those segments.
    pub lines: u64,
    /// Index entries (segments, routes, marks) sled was missing or had wrong,
    /// rebuilt from the segment files.
    pub rebuilt: u64,
    /// Lines restored from the segment files that sled did not list: a
    /// route may deliver some of them a second time (duplicates by rebuild).
    pub rebuilt_lines: u64,
    /// Byte ranges of segment files whose record headers fail their
    /// checksum (skipped; their lines cannot be counted unless sled lists
    /// their segment).
    pub damaged_regions: u64,
    /// Routes stored.
    pub routes: usize,
    /// Of those, routes whose secrets were sealed under another key (the
    /// signing key changed): their lines are kept but not delivered.
    pub sealed_under_other_key: usize,
}

/// Limits the queue enforces on appends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QueueLimits {
    /// Most line data bytes one agent may have queued. Going over it drops
    /// the agent's oldest segments.
    pub agent_quota_bytes: u64,
    /// Appends are refused while the queue's filesystem has less free space
    /// than this (0: never).
    pub min_free_bytes: u64,
    /// Memory sled may use to cache the queue's pages. The backlog itself
    /// lives on disk: this bounds how much of it stays in memory.
    pub cache_bytes: u64,
}

/// sled's page cache when nothing else is configured (sled's own default is
/// 1 GiB, which a long backlog fills).
pub const DEFAULT_CACHE_BYTES: u64 = 64 * 1024 * 1024;

impl Default for QueueLimits {
    fn default() -> Self {
        QueueLimits {
            agent_quota_bytes: u64::MAX,
            min_free_bytes: 0,
            cache_bytes: DEFAULT_CACHE_BYTES,
        }
    }
}

/// Undelivered lines of one route dropped by the quota (or lost to damage)
/// since the last [`Queue::take_quota_drops`] (or
/// [`Queue::take_damage_drops`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QuotaDrop {
    pub route: RouteKey,
    pub lines: u64,
    /// Line data bytes.
    pub bytes: u64,
    /// Earliest and latest timestamp of the dropped lines (ns since the
    /// epoch; 0 when unknown).
    pub oldest_ns: i64,
    pub newest_ns: i64,
}

/// Appends of one stream are serialized by one of this many locks (picked
/// by hashing the stream), so memory stays bounded however many boots are
/// seen.
const STREAM_LOCKS: usize = 64;

/// A batch written by [`Queue::write`] that may not be on disk yet.
#[must_use = "a written batch may be acknowledged only once `durable` resolves"]
pub struct Written {
    inner: Arc<Inner>,
    stored: Stored,
}

impl Written {
    /// Resolves once a group commit made the write durable.
    pub async fn durable(self) -> Result<AppendOutcome, QueueError> {
        let Stored { outcome, notify } = self.stored;
        self.inner.commit.wait_durable().await.map_err(|e| {
            if error::is_enospc(&e) {
                self.inner.disk.write_failed();
            }
            QueueError::Flush(e)
        })?;
        if let Some((agent, newest)) = notify {
            agent.newest.send_if_modified(|current| {
                let newer = newest > *current;
                if newer {
                    *current = newest;
                }
                newer
            });
        }
        Ok(outcome)
    }
}

/// The durable queue. Cheap to clone.
#[derive(Clone)]
pub struct Queue {
    inner: Arc<Inner>,
}

struct Inner {
    dir: PathBuf,
    db: sled::Db,
    /// Where the segments are.
    files: Arc<SegmentFiles>,
    agents: RwLock<HashMap<Arc<str>, Arc<Agent>>>,
    streams: Box<[Mutex<()>]>,
    stream_hasher: RandomState,
    /// Seals route secrets at rest.
    seal: SealKey,
    /// Next segment id; segment ids are never reused.
    next_segment: AtomicU64,
    commit: GroupCommit,
    limits: QueueLimits,
    disk: DiskGuard,
    /// Quota drops not yet taken, one entry per route (bounded by routes).
    quota_drops: Mutex<HashMap<RouteKey, QuotaDrop>>,
    quota_notify: Notify,
    /// Lines lost to damage not yet taken, one entry per route.
    damage_drops: Mutex<HashMap<RouteKey, QuotaDrop>>,
    damage_notify: Notify,
}

struct Agent {
    id: Arc<str>,
    metrics: metrics::Queued,
    index: Mutex<AgentIndex>,
    newest: watch::Sender<u64>,
}

impl fmt::Debug for Queue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Queue")
            .field("dir", &self.inner.dir)
            .field("agents", &read_lock(&self.inner.agents).len())
            .field(
                "next_segment",
                &self.inner.next_segment.load(Ordering::Relaxed),
            )
            .finish_non_exhaustive()
    }
}

impl Queue {
    /// Opens (creating if needed) the queue in `dir`; route secrets are
    /// sealed with `seal`.
    ///
    /// Reads every record header of the segment files, cross-checks sled's
    /// index against them and rebuilds what is missing or wrong, and sets
    /// the depth metrics. Refuses (changing nothing) on any error that is
    /// not evidence of damage.
    pub fn open(dir: &Path, seal: SealKey) -> Result<(Queue, OpenReport), QueueError> {
        open::open(dir, seal, QueueLimits::default())
    }

    /// [`Queue::open_with`], but a sled database that sled reports corrupt
    /// is set aside (sled's own files, moved into
    /// `<dir>/sled.corrupt-<unix time>`) and the index rebuilt from the
    /// segment files; [`SetAside`] says where it went and why.
    pub fn open_or_set_aside(
        dir: &Path,
        seal: SealKey,
        limits: QueueLimits,
    ) -> Result<(Queue, OpenReport, Option<SetAside>), QueueError> {
        open::open_or_set_aside(dir, seal, limits)
    }

    /// [`Queue::open`] with limits on appends.
    pub fn open_with(
        dir: &Path,
        seal: SealKey,
        limits: QueueLimits,
    ) -> Result<(Queue, OpenReport), QueueError> {
        open::open(dir, seal, limits)
    }

    /// Takes the quota drops recorded since the last call (one entry per
    /// route, counts summed).
    pub fn take_quota_drops(&self) -> Vec<QuotaDrop> {
        lock(&self.inner.quota_drops)
            .drain()
            .map(|(_, drop)| drop)
            .collect()
    }

    /// Resolves when quota drops were recorded since it last resolved.
    pub async fn quota_dropped(&self) {
        self.inner.quota_notify.notified().await;
    }

    /// Takes the lines lost to damage found since the last call (one entry
    /// per route, counts summed).
    pub fn take_damage_drops(&self) -> Vec<QuotaDrop> {
        lock(&self.inner.damage_drops)
            .drain()
            .map(|(_, drop)| drop)
            .collect()
    }

    /// Resolves when damage was found since it last resolved.
    pub async fn damage_found(&self) {
        self.inner.damage_notify.notified().await;
    }

    /// Lines of `route` lost to damage since open.
    pub fn route_damaged(&self, route: &RouteKey) -> u64 {
        match read_lock(&self.inner.agents).get(route.agent_id.as_str()) {
            Some(agent) => lock(&agent.index).route_damaged(route),
            None => 0,
        }
    }

    /// Whether a write met a full disk (ENOSPC): sled then writes nothing
    /// more, and its flushes (including the one when its last handle drops)
    /// never complete, until the process restarts.
    pub fn storage_wedged(&self) -> bool {
        self.inner.disk.is_wedged()
    }

    /// Whether appends are refused now because the disk is below its
    /// free-space watermark (measured afresh).
    pub fn disk_full(&self) -> bool {
        let inner = &self.inner;
        inner.disk.check(|| inner.queued_bytes()).is_err() || inner.disk.is_full()
    }

    /// Appends a batch of a stream and returns once it is durable.
    ///
    /// Lines at or below the stream's high-water mark are duplicates and
    /// dropped; gaps above it are accepted. The segment(s) and the new
    /// high-water mark are written in one atomic batch; the call returns
    /// after a group commit covering that write. If `routes` is empty,
    /// nothing is stored but the high-water mark (the caller counts the
    /// drop). Every route must have been stored with [`Queue::put_route`].
    pub async fn append(&self, append: Append<'_>) -> Result<AppendOutcome, QueueError> {
        self.write(append)?.durable().await
    }

    /// The first half of [`Queue::append`]: writes the batch now (same
    /// de-duplication and atomicity) and returns without waiting for the
    /// disk. A stream can then write its next batch while this one waits,
    /// so both share one group commit. Nothing may be acknowledged before
    /// [`Written::durable`] resolves.
    pub fn write(&self, append: Append<'_>) -> Result<Written, QueueError> {
        let stored = self.inner.store(append)?;
        Ok(Written {
            inner: Arc::clone(&self.inner),
            stored,
        })
    }

    /// The stored high-water mark of a stream (0 if unknown).
    ///
    /// It is durable unless an append of the same stream is still waiting for
    /// its group commit; await [`Queue::flush`] before acknowledging it.
    pub fn acked_seq(
        &self,
        agent_id: &str,
        agent_server_id: &str,
        boot_id: &str,
    ) -> Result<u64, QueueError> {
        let key = keys::hwm(agent_id, agent_server_id, boot_id);
        self.inner.get_hwm(&key)
    }

    /// Stores or updates a route and its secrets (idempotent), first seen
    /// at an unknown time (see [`Queue::put_route_since`]).
    pub fn put_route(&self, route: &RouteKey, secrets: &Secrets) -> Result<(), QueueError> {
        self.put_route_since(route, secrets, 0)
    }

    /// Stores or updates a route and the secrets it delivers with, first
    /// seen at `first_seen_ms` (Unix ms, 0 unknown: the delivery engine
    /// lets a route adopt only credentials first seen after its own).
    /// Idempotent. Becomes durable with the next group commit; call before
    /// appending for it.
    pub fn put_route_since(
        &self,
        route: &RouteKey,
        secrets: &Secrets,
        first_seen_ms: u64,
    ) -> Result<(), QueueError> {
        let inner = &self.inner;
        let agent = inner.agent(&route.agent_id);
        let mut index = lock(&agent.index);
        let key = keys::route(route);
        let unchanged = match inner.db.get(&key)? {
            Some(stored) => records::unseal_secrets(&inner.seal, &key, &stored)
                .is_ok_and(|stored| stored == (secrets.clone(), first_seen_ms)),
            None => false,
        };
        if !unchanged {
            let sealed = records::seal_secrets(&inner.seal, &key, secrets, first_seen_ms);
            inner.db.insert(key.as_slice(), sealed)?;
            // Segment files get the new record before their next segment.
            inner.files.forget_route(&key);
        }
        if !index.has_route(route) {
            // A cursor is stored apart from its route record.
            let cursor = match inner.db.get(keys::cursor(route))? {
                Some(value) => records::decode_cursor(&value).ok(),
                None => None,
            };
            index.add_route(route, cursor);
        }
        Ok(())
    }

    /// Removes a route (record, cursor, index entry) once no queued
    /// segment is tagged with it; says whether it did. A stream that brings
    /// the route again stores it again.
    pub fn remove_route(&self, route: &RouteKey) -> Result<bool, QueueError> {
        let inner = &self.inner;
        let Some(agent) = read_lock(&inner.agents)
            .get(route.agent_id.as_str())
            .cloned()
        else {
            return Ok(false);
        };
        let mut index = lock(&agent.index);
        if !index.remove_route(route) {
            return Ok(false);
        }
        let mut batch = sled::Batch::default();
        batch.remove(keys::route(route));
        batch.remove(keys::cursor(route));
        inner.db.apply_batch(batch)?;
        inner.files.forget_route(&keys::route(route));
        Ok(true)
    }

    /// Every stored route with its secrets, except routes sealed under
    /// another key (counted in [`OpenReport::sealed_under_other_key`]).
    pub fn routes(&self) -> Result<Vec<(RouteKey, Secrets)>, QueueError> {
        Ok(self
            .stored_routes()?
            .into_iter()
            .map(|(route, secrets, _)| (route, secrets))
            .collect())
    }

    /// As [`Queue::routes`], with when each route's secrets were first
    /// seen (Unix ms, 0 unknown).
    pub fn stored_routes(&self) -> Result<Vec<(RouteKey, Secrets, u64)>, QueueError> {
        let mut routes = Vec::new();
        for item in self.inner.db.scan_prefix(keys::route_prefix()) {
            let (key, value) = item?;
            let Some(keys::Parsed::Route(route)) = keys::parse(&key) else {
                return Err(corrupt(&key, RecordError::Key));
            };
            match records::unseal_secrets(&self.inner.seal, &key, &value) {
                Ok((secrets, first_seen_ms)) => routes.push((route, secrets, first_seen_ms)),
                Err(RecordError::OtherKey { .. }) => {}
                Err(e) => return Err(corrupt(&key, e)),
            }
        }
        Ok(routes)
    }

    /// Up to `max_lines` lines / about `max_bytes` data bytes tagged for
    /// `route`, strictly after `after` (`None`: from the start of the agent's
    /// queue), in queue order. Returns at least one line if any is available.
    ///
    /// Lines whose checksum fails are left out and counted; an I/O error is
    /// returned (retry later), never taken for damage.
    pub fn read(
        &self,
        route: &RouteKey,
        after: Option<Cursor>,
        max_lines: usize,
        max_bytes: usize,
    ) -> Result<Vec<QueuedLine>, QueueError> {
        let agent = self.inner.known_agent(route)?;
        let max_lines = max_lines.max(1);
        let mut out: Vec<QueuedLine> = Vec::new();
        let mut bytes = 0usize;
        let mut after = after;
        loop {
            let plan = {
                let index = lock(&agent.index);
                if !index.has_route(route) {
                    return Err(unknown(route));
                }
                index.plan_read(route, after, max_lines, max_bytes)
            };
            let Some(last) = plan.last().copied() else {
                return Ok(out);
            };
            for planned in plan {
                let Some(Loaded { server, lines, .. }) =
                    self.inner.load_segment(&agent, planned.segment)?
                else {
                    continue;
                };
                for (index, line) in lines {
                    if index < planned.from_index {
                        continue;
                    }
                    let len = line.data.len();
                    let full = out.len() >= max_lines
                        || (!out.is_empty() && bytes.saturating_add(len) > max_bytes);
                    if full {
                        return Ok(out);
                    }
                    bytes += len;
                    out.push(QueuedLine {
                        cursor: Cursor {
                            segment: planned.segment,
                            index,
                        },
                        agent_server_id: server.clone(),
                        line,
                        original_timestamp_ns: None,
                    });
                }
            }
            if !out.is_empty() {
                return Ok(out);
            }
            // Every planned segment was gone or damaged: look further.
            after = Some(Cursor {
                segment: last.segment,
                index: u32::MAX,
            });
        }
    }

    /// As [`Queue::read`], but whole segments with the stream each came in
    /// on: the segments tagged for `route` strictly after `after`, trimmed
    /// to the lines after it, until about `max_lines` lines or `max_bytes`
    /// data bytes (at least one segment if any is left). Damaged lines are
    /// left out and counted as [`Queue::read`] counts them.
    pub fn read_segments(
        &self,
        route: &RouteKey,
        after: Option<Cursor>,
        max_lines: usize,
        max_bytes: usize,
    ) -> Result<Vec<QueuedSegment>, QueueError> {
        let agent = self.inner.known_agent(route)?;
        let mut after = after;
        loop {
            let plan = {
                let index = lock(&agent.index);
                if !index.has_route(route) {
                    return Err(unknown(route));
                }
                index.plan_read(route, after, max_lines.max(1), max_bytes)
            };
            let Some(last) = plan.last().copied() else {
                return Ok(Vec::new());
            };
            let mut out = Vec::with_capacity(plan.len());
            for planned in plan {
                let Some(loaded) = self.inner.load_segment(&agent, planned.segment)? else {
                    continue;
                };
                out.push(QueuedSegment {
                    segment: planned.segment,
                    agent_server_id: loaded.server,
                    boot_id: loaded.boot,
                    first_seq: loaded.first_seq,
                    last_index: loaded.last_index,
                    lines: loaded
                        .lines
                        .into_iter()
                        .filter(|(index, _)| *index >= planned.from_index)
                        .collect(),
                });
            }
            if !out.is_empty() {
                return Ok(out);
            }
            // Every planned segment was gone or wholly damaged.
            after = Some(Cursor {
                segment: last.segment,
                index: u32::MAX,
            });
        }
    }

    /// The route's committed cursor (`None` if nothing committed yet).
    pub fn committed(&self, route: &RouteKey) -> Result<Option<Cursor>, QueueError> {
        let agent = self.inner.known_agent(route)?;
        let index = lock(&agent.index);
        index.cursor(route).ok_or_else(|| unknown(route))
    }

    /// Records that every line of `route` at or before `through` was accepted
    /// by the vendor, and deletes the segments every tagged route has passed
    /// in the same atomic batch. A cursor at or before the committed one is
    /// ignored. The cursor becomes durable with the next group commit (a lost
    /// cursor only re-delivers).
    pub fn commit(&self, route: &RouteKey, through: Cursor) -> Result<(), QueueError> {
        let inner = &self.inner;
        let agent = inner.known_agent(route)?;
        let mut index = lock(&agent.index);
        let current = index.cursor(route).ok_or_else(|| unknown(route))?;
        if current.is_some_and(|c| through <= c) {
            return Ok(());
        }
        let next = inner.next_segment.load(Ordering::Acquire);
        if through.segment >= next {
            return Err(QueueError::CursorAhead {
                route: route.to_string(),
                segment: through.segment,
                newest: next.saturating_sub(1),
            });
        }
        let freed = index.freed_by_commit(route, through);
        // After a full disk sled's writes never finish: keep delivering from
        // memory; the lines are delivered again after the restart (at least
        // once), nothing is lost.
        if !inner.disk.is_wedged() {
            let mut batch = sled::Batch::default();
            batch.insert(keys::cursor(route), &records::encode_cursor(through)[..]);
            for id in &freed {
                batch.remove(keys::segment(&agent.id, *id));
            }
            inner.db.apply_batch(batch).inspect_err(|e| {
                if error::is_enospc(e) {
                    inner.disk.write_failed();
                }
            })?;
        }
        index.set_cursor(route, through);
        let removed = index.remove_segments(&freed);
        report_popped(&agent, &index, &removed);
        drop(index);
        inner.release(removed.files);
        Ok(())
    }

    /// Wakes when new lines are durably appended for this agent (value = the
    /// newest segment id).
    pub fn subscribe(&self, agent_id: &str) -> watch::Receiver<u64> {
        self.inner.agent(agent_id).newest.subscribe()
    }

    /// (lines, bytes) queued for the agent and not yet freed.
    pub fn depth(&self, agent_id: &str) -> (u64, u64) {
        match read_lock(&self.inner.agents).get(agent_id) {
            Some(agent) => lock(&agent.index).depth(),
            None => (0, 0),
        }
    }

    /// (lines, bytes) queued for `route` and not yet delivered by it.
    pub fn route_depth(&self, route: &RouteKey) -> (u64, u64) {
        match read_lock(&self.inner.agents).get(route.agent_id.as_str()) {
            Some(agent) => lock(&agent.index).route_depth(route),
            None => (0, 0),
        }
    }

    /// Flushes everything written so far to disk (shares a group commit).
    pub async fn flush(&self) -> Result<(), QueueError> {
        self.inner
            .commit
            .wait_durable()
            .await
            .map_err(QueueError::Flush)
    }

    /// Number of disk flushes the group commit performed since open (for
    /// tests and benchmarks: appends per flush shows the grouping).
    pub fn flush_count(&self) -> u64 {
        self.inner.commit.flushes()
    }
}

impl Inner {
    fn agent(&self, agent_id: &str) -> Arc<Agent> {
        if let Some(agent) = read_lock(&self.agents).get(agent_id) {
            return agent.clone();
        }
        let mut agents = self.agents.write().unwrap_or_else(|e| e.into_inner());
        agents
            .entry(Arc::from(agent_id))
            .or_insert_with_key(|id| Agent::new(id.clone(), AgentIndex::default()))
            .clone()
    }

    /// Line data bytes queued for every agent.
    fn queued_bytes(&self) -> u64 {
        read_lock(&self.agents)
            .values()
            .map(|agent| lock(&agent.index).depth().1)
            .sum()
    }

    /// Adds what each route lost to the quota to the pending drops.
    fn record_quota_drops(&self, agent_id: &str, losses: &[index::RouteLoss]) {
        let mut drops = lock(&self.quota_drops);
        for loss in losses {
            let route = RouteKey {
                agent_id: agent_id.to_string(),
                kind: loss.tag.kind,
                cred_id: loss.tag.cred_id.to_string(),
            };
            let entry = drops.entry(route.clone()).or_insert(QuotaDrop {
                route,
                lines: 0,
                bytes: 0,
                oldest_ns: 0,
                newest_ns: 0,
            });
            entry.lines += loss.lines;
            entry.bytes += loss.bytes;
            (entry.oldest_ns, entry.newest_ns) =
                index::widen((entry.oldest_ns, entry.newest_ns), loss.span_ns);
        }
        drop(drops);
        self.quota_notify.notify_one();
    }

    fn known_agent(&self, route: &RouteKey) -> Result<Arc<Agent>, QueueError> {
        read_lock(&self.agents)
            .get(route.agent_id.as_str())
            .cloned()
            .ok_or_else(|| unknown(route))
    }

    fn get_hwm(&self, key: &[u8]) -> Result<u64, QueueError> {
        match self.db.get(key)? {
            Some(value) => records::decode_hwm(&value).map_err(|e| corrupt(key, e)),
            None => Ok(0),
        }
    }

    /// Loads and decodes one segment: its server id and the lines that pass
    /// their checksum, with their indexes. `None` if it is gone (freed
    /// after a commit passed it) or wholly damaged. Damage is counted once
    /// per segment; an I/O error is returned, never taken for damage.
    fn load_segment(&self, agent: &Agent, id: u64) -> Result<Option<Loaded>, QueueError> {
        let Some((at, lines)) = lock(&agent.index)
            .segment(id)
            .map(|meta| (meta.at, meta.lines))
        else {
            return Ok(None);
        };
        let record = match self.files.read(at) {
            Ok(record) => record,
            // Freed (and its file deleted) while it was being read.
            Err(ReadError::Io(_)) if !lock(&agent.index).contains(id) => return Ok(None),
            Err(ReadError::Io(error)) => {
                return Err(QueueError::Read {
                    path: self.files.path(at.file),
                    reason: error.to_string(),
                })
            }
            Err(damaged @ ReadError::Damaged(_)) => {
                self.count_damage(agent, id, u64::from(lines), at, &damaged.to_string());
                return Ok(None);
            }
        };
        let checked = match segment::decode_file_header(&record.header) {
            Ok(checked)
                if checked.header.segment == id && *checked.header.agent_id == *agent.id =>
            {
                checked
            }
            Ok(_) => {
                let reason = "its record belongs to another segment";
                self.count_damage(agent, id, u64::from(lines), at, reason);
                return Ok(None);
            }
            Err(reason) => {
                self.count_damage(agent, id, u64::from(lines), at, &reason.to_string());
                return Ok(None);
            }
        };
        let decoded = segment::decode_lines(&checked.header, record.body);
        if decoded.damaged > 0 {
            let reason = "line checksum mismatch";
            self.count_damage(agent, id, u64::from(decoded.damaged), at, reason);
        }
        Ok(Some(Loaded {
            server: Arc::from(checked.header.agent_server_id.as_str()),
            boot: Arc::from(checked.header.boot_id.as_str()),
            first_seq: checked.header.first_seq,
            last_index: checked.lines.saturating_sub(1),
            lines: decoded.lines,
        }))
    }

    /// Counts `lines` lines of a segment lost to damage (once per segment):
    /// logged, `dropped{reason="damaged"}`, and a drop for every route that
    /// had not delivered them.
    fn count_damage(&self, agent: &Agent, id: u64, lines: u64, at: Location, reason: &str) {
        let Some((routes, span_ns)) = lock(&agent.index).count_damage(id, lines) else {
            return;
        };
        tracing::error!(
            agent = %agent.id,
            segment = id,
            file = %self.files.path(at.file).display(),
            offset = at.offset,
            lines,
            reason,
            "queued lines are damaged on disk and cannot be delivered; the rest of the segment is"
        );
        metrics::dropped(&agent.id, metrics::Dropped::Damaged, lines);
        let mut drops = lock(&self.damage_drops);
        for tag in routes {
            let route = RouteKey {
                agent_id: agent.id.to_string(),
                kind: tag.kind,
                cred_id: tag.cred_id.to_string(),
            };
            let entry = drops.entry(route.clone()).or_insert(QuotaDrop {
                route,
                lines: 0,
                bytes: 0,
                oldest_ns: 0,
                newest_ns: 0,
            });
            entry.lines += lines;
            (entry.oldest_ns, entry.newest_ns) =
                index::widen((entry.oldest_ns, entry.newest_ns), span_ns);
        }
        drop(drops);
        self.damage_notify.notify_one();
    }

    /// Segments no longer point into these files. Files left empty are
    /// deleted after the next group commit, which is started now if none
    /// is under way (a removal must be durable before its file goes).
    fn release(&self, files: Vec<u64>) {
        if files.is_empty() {
            return;
        }
        self.files.release(files);
        if self.files.has_doomed() {
            self.commit.request();
        }
    }
}

/// A decoded segment: its lines that passed their checksum, with their
/// indexes.
struct Loaded {
    server: Arc<str>,
    boot: Arc<str>,
    first_seq: u64,
    last_index: u32,
    lines: Vec<(u32, Line)>,
}

impl Agent {
    fn new(id: Arc<str>, index: AgentIndex) -> Arc<Agent> {
        let newest = index.newest_segment().unwrap_or(0);
        Arc::new(Agent {
            metrics: metrics::Queued::new(&id),
            id,
            index: Mutex::new(index),
            newest: watch::Sender::new(newest),
        })
    }
}

fn report_popped(agent: &Agent, index: &AgentIndex, removed: &Removed) {
    if removed.lines > 0 {
        agent.metrics.popped(removed.lines, removed.bytes);
        let (lines, bytes) = index.depth();
        agent.metrics.depth(lines, bytes);
    }
}

fn unknown(route: &RouteKey) -> QueueError {
    QueueError::UnknownRoute {
        route: route.to_string(),
    }
}

fn corrupt(key: &[u8], reason: RecordError) -> QueueError {
    QueueError::Corrupt {
        key: keys::describe(key),
        reason,
    }
}

/// Locks a mutex. A panic while it was held cannot leave the guarded state
/// behind the database (state changes only after a successful write), so a
/// poisoned lock is used as is.
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

fn read_lock<T>(lock: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(|e| e.into_inner())
}
