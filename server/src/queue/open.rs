//! Opening the queue: the segment files are the source of truth, sled an
//! index rebuilt from them wherever it is missing, short or wrong.
//!
//! 1. Every record header of every segment file is read ([`files::scan`];
//!    bodies are not). Nothing is written before every check passed.
//! 2. sled's index is read and cross-checked against the files:
//!    * a segment in the files that sled lists elsewhere, or not at all, is
//!      indexed again, unless every route tagged on it has a durable cursor
//!      past it (a commit freed it). Lines restored that way may be
//!      delivered twice: counted ([`OpenReport::rebuilt_lines`]) and logged;
//!    * a route sled lacks is taken from the newest route record in the
//!      files (its credentials sealed as sled stores them);
//!    * a cursor sled lacks starts at the oldest line still in the files;
//!    * a stream's high-water mark is at least the highest seq in the files,
//!      and moves back before a record cut short by the machine stopping
//!      before its sync (never acked), so the shim's resend is accepted;
//!    * a segment sled lists whose record header is damaged stays indexed:
//!      reading it counts its lines as damaged.
//! 3. Segment files are deleted only when every segment in them was freed
//!    by a durable commit; never because sled does not know them.
//!
//! Refuse on doubt: an I/O error (EMFILE, ENFILE, ENOMEM, EROFS, EACCES,
//! EIO, ...), a held lock, a panic inside sled, another format version, or
//! any error not classified stops the start with the errno and the fix, and
//! nothing is moved. Only sled reporting its own files corrupt sets them
//! aside (into `sled.corrupt-<unix time>/` inside the queue directory); the
//! index is then rebuilt from the segment files. [`recover`] does the same
//! on the operator's command for a sled database that cannot be opened.
//! This module must not be used after open: the running queue keeps its
//! index up to date itself.

use std::collections::{BTreeMap, HashMap};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{SystemTime, UNIX_EPOCH};

use super::commit::GroupCommit;
use super::disk::DiskGuard;
use super::error::{io_cause, QueueError, RecordError};
use super::files::{self, Location, ScanError, SegmentFiles};
use super::index::{AgentIndex, SegMeta};
use super::keys::{self, Parsed};
use super::seal::SealKey;
use super::segment::{self, CheckedHeader};
use super::{records, Agent, Cursor, Inner, OpenReport, Queue, QueueLimits, STREAM_LOCKS};
use crate::metrics;
use crate::route::RouteKey;

/// sled's files set aside because sled reported them corrupt.
#[derive(Debug)]
pub struct SetAside {
    /// Where sled's files are now (kept for inspection).
    pub moved_to: PathBuf,
    /// What sled reported.
    pub reason: QueueError,
}

pub(super) fn open_or_set_aside(
    dir: &Path,
    seal: SealKey,
    limits: QueueLimits,
) -> Result<(Queue, OpenReport, Option<SetAside>), QueueError> {
    let reason = match catch_unwind(AssertUnwindSafe(|| open(dir, seal.clone(), limits))) {
        Ok(Ok((queue, report))) => return Ok((queue, report, None)),
        Ok(Err(error @ QueueError::Sled(sled::Error::Corruption { .. }))) => error,
        Ok(Err(error)) => return Err(error),
        // Not evidence of damage: refuse, change nothing.
        Err(panic) => return Err(panicked(dir, panic.as_ref())),
    };
    let moved_to = set_aside_sled(dir)?;
    let (queue, report) = open(dir, seal, limits)?;
    Ok((queue, report, Some(SetAside { moved_to, reason })))
}

/// `logdrain-gateway recover <dir>`: brings back a queue whose sled database
/// cannot be opened (a start refused it). If it opens, nothing is changed;
/// otherwise sled's files are set aside and the index is rebuilt from the
/// segment files, so the next start delivers everything they hold. An
/// I/O error or a held lock is reported as at start and changes nothing.
pub fn recover(dir: &Path, seal: SealKey) -> Result<(OpenReport, Option<PathBuf>), QueueError> {
    let limits = QueueLimits::default();
    let reason = match catch_unwind(AssertUnwindSafe(|| open(dir, seal.clone(), limits))) {
        Ok(Ok((_queue, report))) => return Ok((report, None)),
        Ok(Err(error @ QueueError::Unavailable { io: true, .. })) => return Err(error),
        Ok(Err(error @ QueueError::Format { .. })) => return Err(error),
        Ok(Err(error)) => error.to_string(),
        Err(panic) => panicked(dir, panic.as_ref()).to_string(),
    };
    if !dir.join(files::SUBDIR).is_dir() {
        return Err(QueueError::Unavailable {
            dir: dir.to_path_buf(),
            what: "looking for segment files".to_string(),
            cause: format!("{dir:?} has no `{}` directory", files::SUBDIR),
            fix: "name the queue directory (<data dir>/queue)".to_string(),
            io: false,
        });
    }
    tracing::warn!(queue = %dir.display(), %reason, "setting the sled database aside");
    let moved_to = set_aside_sled(dir)?;
    let (_queue, report) = open(dir, seal, limits)?;
    Ok((report, Some(moved_to)))
}

fn panicked(dir: &Path, panic: &(dyn std::any::Any + Send)) -> QueueError {
    let cause = panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "sled panicked".to_string());
    QueueError::Unavailable {
        dir: dir.to_path_buf(),
        what: "sled panicked while opening its database".to_string(),
        cause,
        fix: format!(
            "run `logdrain-gateway recover {}` with the gateway stopped: it sets sled's files \
             aside and rebuilds the index from the segment files",
            dir.display()
        ),
        io: false,
    }
}

/// Moves sled's own files (everything but the segment files and earlier
/// set-asides) into `sled.corrupt-<unix time>` in `dir`.
fn set_aside_sled(dir: &Path) -> Result<PathBuf, QueueError> {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let mut aside = dir.join(format!("sled.corrupt-{secs}"));
    let mut n = 1;
    while aside.exists() {
        aside = dir.join(format!("sled.corrupt-{secs}-{n}"));
        n += 1;
    }
    let failed = |source| QueueError::SetAside {
        dir: dir.to_path_buf(),
        to: aside.clone(),
        source,
    };
    let entries: Vec<_> = std::fs::read_dir(dir)
        .map_err(failed)?
        .collect::<Result<_, _>>()
        .map_err(failed)?;
    std::fs::create_dir(&aside).map_err(failed)?;
    for entry in entries {
        let name = entry.file_name();
        let keep = name == files::SUBDIR || name.to_string_lossy().starts_with("sled.");
        if !keep {
            std::fs::rename(entry.path(), aside.join(&name)).map_err(failed)?;
        }
    }
    Ok(aside)
}

/// The refusal for a sled error met while opening (sled reporting
/// corruption is passed on as is: it is evidence).
fn unavailable(dir: &Path, what: &str, error: sled::Error) -> QueueError {
    let (cause, fix, io) = match &error {
        sled::Error::Io(e) => {
            let (cause, fix) = io_cause(e);
            (cause, fix.to_string(), true)
        }
        sled::Error::Corruption { .. } => return QueueError::Sled(error),
        other => (
            other.to_string(),
            format!(
                "if sled cannot open its database, run `logdrain-gateway recover {}` with the \
                 gateway stopped: it sets sled's files aside and rebuilds the index from the \
                 segment files",
                dir.display()
            ),
            false,
        ),
    };
    QueueError::Unavailable {
        dir: dir.to_path_buf(),
        what: what.to_string(),
        cause,
        fix,
        io,
    }
}

/// sled's log segment size. sled writes a tree node larger than a quarter
/// of it as a separate blob, which its page cache never evicts; sled's
/// values are index entries of about a hundred bytes, so leaves never are.
pub(crate) const SLED_SEGMENT_BYTES: usize = 2 * 1024 * 1024;

pub(crate) fn open_sled(dir: &Path, cache_bytes: u64) -> sled::Result<sled::Db> {
    sled::Config::new()
        .path(dir)
        .cache_capacity(cache_bytes)
        .segment_size(SLED_SEGMENT_BYTES)
        .open()
}

/// File handles opened (and closed) before sled opens: sled writes to its
/// files while it recovers, before it has opened every file it needs, so a
/// lack of descriptors must be found before it starts.
const PREFLIGHT_HANDLES: usize = 64;

/// Refuses, before anything is written, a start that could not open the
/// files it needs (EMFILE, ENFILE).
fn preflight(dir: &Path) -> Result<(), QueueError> {
    let mut handles = Vec::with_capacity(PREFLIGHT_HANDLES);
    for _ in 0..PREFLIGHT_HANDLES {
        match std::fs::File::open(dir) {
            Ok(handle) => handles.push(handle),
            // A queue not created yet has nothing to protect.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => {
                let (cause, fix) = io_cause(&e);
                return Err(QueueError::Unavailable {
                    dir: dir.to_path_buf(),
                    what: format!("opening {PREFLIGHT_HANDLES} files"),
                    cause,
                    fix: fix.to_string(),
                    io: true,
                });
            }
        }
    }
    Ok(())
}

/// A segment found in the files.
struct FileSegment {
    checked: CheckedHeader,
    at: Location,
}

/// A stream: (agent, agent-server id, boot id).
type Stream = (String, String, String);

pub(super) fn open(
    dir: &Path,
    seal: SealKey,
    limits: QueueLimits,
) -> Result<(Queue, OpenReport), QueueError> {
    let scan = files::scan(dir).map_err(|e| match e {
        ScanError::Io { path, source } => {
            let (cause, fix) = io_cause(&source);
            QueueError::Unavailable {
                dir: dir.to_path_buf(),
                what: format!("reading the segment file {}", path.display()),
                cause,
                fix: fix.to_string(),
                io: true,
            }
        }
        ScanError::Format { path, found } => QueueError::Format {
            dir: path,
            found,
            expected: files::FORMAT_VERSION,
        },
    })?;
    preflight(dir)?;
    let db = open_sled(dir, limits.cache_bytes)
        .map_err(|e| unavailable(dir, "opening the sled database", e))?;
    let reading = |e| unavailable(dir, "reading the sled database", e);
    match db.get(keys::FORMAT_KEY).map_err(reading)? {
        Some(value) if value.as_ref() != [FORMAT_VERSION] => {
            return Err(QueueError::Format {
                dir: dir.to_path_buf(),
                found: format!("version {}", value.escape_ascii()),
                expected: files::FORMAT_VERSION,
            })
        }
        _ => {}
    }
    let mut stored = Stored::read(&db, &seal).map_err(reading)?;
    let mut report = OpenReport::default();
    let mut batch = sled::Batch::default();

    // What the files hold.
    let mut file_routes: HashMap<RouteKey, Vec<u8>> = HashMap::new();
    let mut file_segments: Vec<FileSegment> = Vec::new();
    let mut cut_short: Vec<(Stream, u64)> = Vec::new();
    let mut damaged: HashMap<u64, Vec<(u64, u64)>> = HashMap::new();
    let mut file_lens: HashMap<u64, u64> = HashMap::new();
    for file in &scan.files {
        file_lens.insert(file.number, file.len);
        for &(start, end) in &file.damaged {
            tracing::error!(
                file = %file.path.display(),
                start,
                end,
                "a segment file's bytes fail their checksum; skipped to the next record"
            );
        }
        report.damaged_regions += file.damaged.len() as u64;
        damaged.insert(file.number, file.damaged.clone());
        for record in &file.records {
            match record.kind {
                files::ROUTE if record.complete => {
                    if let Some(route) = segment::decode_route(&record.header)
                        .ok()
                        .and_then(|r| Some((r.route()?, r.sealed)))
                    {
                        // Later records are newer.
                        file_routes.insert(route.0, route.1);
                    }
                }
                files::SEGMENT => match segment::decode_file_header(&record.header) {
                    Ok(checked) if record.complete => file_segments.push(FileSegment {
                        checked,
                        at: record.at,
                    }),
                    // Cut short by the machine stopping before its sync:
                    // never acked.
                    Ok(checked) => cut_short
                        .push((stream(&checked), checked.header.first_seq.saturating_sub(1))),
                    Err(reason) => {
                        tracing::error!(file = %file.path.display(), offset = record.at.offset,
                            %reason, "a segment record's header cannot be decoded; skipped");
                        report.damaged_regions += 1;
                        damaged
                            .entry(file.number)
                            .or_default()
                            .push((record.at.offset, record.at.offset + 1));
                    }
                },
                _ => {}
            }
        }
    }
    file_segments.sort_by_key(|s| s.checked.header.segment);

    // Cross-check sled against the files.
    let mut segments = std::mem::take(&mut stored.segments);
    let mut live: BTreeMap<(String, u64), (CheckedHeader, Location)> = BTreeMap::new();
    let mut files_hwm: HashMap<Stream, u64> = HashMap::new();
    let mut max_segment = stored.max_cursor_segment;
    for FileSegment { checked, at } in file_segments {
        let header = &checked.header;
        max_segment = max_segment.max(header.segment);
        let seq = files_hwm.entry(stream(&checked)).or_insert(0);
        *seq = (*seq).max(header.last_seq());
        let key = keys::segment(&header.agent_id, header.segment);
        // Whether to keep it, and whether sled's entry must be written.
        let (keep, write) = match segments.remove(&key) {
            Some(Some(listed))
                if listed.header.location() == at && listed.lines == checked.lines =>
            {
                (true, false)
            }
            Some(_) => (true, true),
            None if passed(&checked, &stored.cursors) => (false, false),
            None => {
                report.rebuilt_lines += u64::from(checked.lines);
                (true, true)
            }
        };
        if write {
            report.rebuilt += 1;
            batch.insert(key, segment::sled_value(header, at));
        }
        if keep {
            live.insert((header.agent_id.clone(), header.segment), (checked, at));
        }
    }
    // Segments sled lists that the files do not hold.
    let mut rollbacks = cut_short;
    for (key, listed) in segments {
        let Some(Parsed::Segment { agent_id, segment }) = keys::parse(&key) else {
            continue;
        };
        max_segment = max_segment.max(segment);
        let Some(listed) = listed else {
            batch.remove(key);
            report.rebuilt += 1;
            continue;
        };
        let at = listed.header.location();
        let end = at.offset + u64::from(at.len);
        let cut_short = file_lens.get(&at.file).is_none_or(|&len| len < end);
        let in_damage = damaged
            .get(&at.file)
            .is_some_and(|spans| spans.iter().any(|&(s, e)| s <= at.offset && at.offset < e));
        if in_damage && !cut_short {
            // Its record header is damaged: reading it counts its lines.
            live.insert((agent_id, segment), (listed, at));
            continue;
        }
        batch.remove(key);
        report.rebuilt += 1;
        if cut_short {
            // The file ends before the record does: the machine stopped
            // before its sync, so it was never acked.
            rollbacks.push((stream(&listed), listed.header.first_seq.saturating_sub(1)));
        }
    }

    // Routes the live segments need that sled lacks come from the files.
    let mut routes = std::mem::take(&mut stored.routes);
    for (checked, _) in live.values() {
        for (kind, cred_id) in &checked.tags {
            let route = RouteKey {
                agent_id: checked.header.agent_id.clone(),
                kind: *kind,
                cred_id: cred_id.clone(),
            };
            if routes.contains_key(&route) {
                continue;
            }
            match file_routes.get(&route) {
                Some(sealed) => {
                    let key = keys::route(&route);
                    let state = match records::unseal_secrets(&seal, &key, sealed) {
                        Ok(_) => RouteState::Ok,
                        Err(RecordError::OtherKey { .. }) => RouteState::OtherKey,
                        Err(_) => RouteState::Bad,
                    };
                    batch.insert(key, sealed.as_slice());
                    report.rebuilt += 1;
                    routes.insert(route, state);
                }
                None => {
                    tracing::error!(route = %route, "queued segments are tagged with a route \
                        whose record is nowhere (sled or segment files); they are kept, not delivered");
                    routes.insert(route, RouteState::Bad);
                }
            }
        }
    }
    // A damaged route record no queued segment needs holds no line: it goes
    // (the agent's next stream stores it again).
    for route in &stored.bad_routes {
        if !routes.contains_key(route) {
            tracing::warn!(route = %route, "a stored route record does not authenticate \
                (damaged) and no queued line needs it; removed, the next stream stores it again");
            batch.remove(keys::route(route));
            report.rebuilt += 1;
        }
    }
    report.routes = routes.len();
    report.sealed_under_other_key = routes
        .values()
        .filter(|s| **s == RouteState::OtherKey)
        .count();
    if report.sealed_under_other_key > 0 {
        tracing::error!(
            routes = report.sealed_under_other_key,
            key_id = format_args!("{:08x}", seal.id()),
            "route secrets were sealed under another key: the signing key changed; their lines \
             are kept but not delivered; start the gateway with the signing key it had before \
             (LOGDRAIN_SIGNING_KEY or signing.key in the data dir)"
        );
    }

    // High-water marks: at least what the files hold, back before records
    // cut short.
    let mut hwms: HashMap<Stream, u64> = HashMap::new();
    for (stream, seq) in files_hwm {
        let current = stored.hwm(&stream);
        if seq > current {
            report.rebuilt += 1;
            hwms.insert(stream, seq);
        }
    }
    for (stream, seq) in rollbacks {
        let current = hwms
            .get(&stream)
            .copied()
            .unwrap_or_else(|| stored.hwm(&stream));
        if seq < current {
            tracing::warn!(
                agent = stream.0,
                agent_server_id = stream.1,
                seq,
                "lines of an unacknowledged batch were lost from a segment file (the machine \
                 stopped before they were synced); the stream accepts them again from the next seq"
            );
            hwms.insert(stream, seq);
        }
    }
    for ((agent, server, boot), seq) in &hwms {
        batch.insert(
            keys::hwm(agent, server, boot),
            &records::encode_hwm(*seq)[..],
        );
    }

    // The index, and the files every segment of which a commit freed.
    let mut indexes: HashMap<Arc<str>, AgentIndex> = HashMap::new();
    for (route, state) in &routes {
        if *state != RouteState::Bad {
            let index = indexes
                .entry(Arc::from(route.agent_id.as_str()))
                .or_default();
            index.add_route(route, stored.cursors.get(route).copied());
        }
    }
    let seg_files =
        SegmentFiles::create(dir, scan.files.last().map_or(0, |f| f.number)).map_err(|source| {
            let (cause, fix) = io_cause(&source);
            QueueError::Unavailable {
                dir: dir.to_path_buf(),
                what: "creating the segment directory".to_string(),
                cause,
                fix: fix.to_string(),
                io: true,
            }
        })?;
    for ((agent_id, id), (checked, at)) in live {
        let index = indexes.entry(Arc::from(agent_id.as_str())).or_default();
        let tags = index.tags_for(checked.tags.iter().map(|(k, c)| (*k, c.as_str())));
        index.insert_segment(
            id,
            SegMeta {
                lines: checked.lines,
                bytes: checked.header.data_bytes,
                span_ns: (
                    checked.header.oldest_timestamp_ns,
                    checked.header.newest_timestamp_ns,
                ),
                tags,
                at,
                damage_counted: false,
            },
        );
        seg_files.add_live(at.file);
    }
    for file in &scan.files {
        // Damage running to the end of the file is a write the machine cut
        // short (never acked) unless sled lists a segment there (then the
        // file is live); damage before it is kept for inspection.
        let clean = damaged
            .get(&file.number)
            .is_none_or(|spans| spans.iter().all(|&(_, end)| end == file.len));
        if !seg_files.is_live(file.number) && clean {
            seg_files.doom(file.number);
        }
    }

    batch.insert(keys::FORMAT_KEY, &[FORMAT_VERSION][..]);
    db.apply_batch(batch)?;
    // Files go only once the cursors that freed them are durable.
    db.flush()?;
    seg_files.delete(seg_files.take_doomed());
    if report.rebuilt > 0 {
        tracing::warn!(
            entries = report.rebuilt,
            lines = report.rebuilt_lines,
            "the queue's index (sled) was missing or wrong and was rebuilt from the segment \
             files; the lines restored may be delivered a second time"
        );
    }
    metrics::queue_rebuilt_lines(report.rebuilt_lines);

    let mut agents = HashMap::with_capacity(indexes.len());
    for (agent_id, index) in indexes {
        let (lines, bytes) = index.depth();
        report.segments += index.segment_count() as u64;
        report.lines += lines;
        let agent = Agent::new(agent_id.clone(), index);
        agent.metrics.depth(lines, bytes);
        agents.insert(agent_id, agent);
    }
    let files = Arc::new(seg_files);
    let inner = Inner {
        dir: dir.to_path_buf(),
        db: db.clone(),
        files: files.clone(),
        agents: RwLock::new(agents),
        streams: (0..STREAM_LOCKS).map(|_| Mutex::new(())).collect(),
        stream_hasher: Default::default(),
        seal,
        next_segment: AtomicU64::new(max_segment.saturating_add(1)),
        commit: GroupCommit::new(db, files),
        limits,
        disk: DiskGuard::new(dir, limits.min_free_bytes),
        quota_drops: Mutex::new(HashMap::new()),
        quota_notify: Default::default(),
        damage_drops: Mutex::new(HashMap::new()),
        damage_notify: Default::default(),
    };
    tracing::info!(
        segments = report.segments,
        lines = report.lines,
        rebuilt = report.rebuilt,
        rebuilt_lines = report.rebuilt_lines,
        damaged_regions = report.damaged_regions,
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

/// Format version written under [`keys::FORMAT_KEY`].
const FORMAT_VERSION: u8 = 1;

fn stream(checked: &CheckedHeader) -> Stream {
    let h = &checked.header;
    (
        h.agent_id.clone(),
        h.agent_server_id.clone(),
        h.boot_id.clone(),
    )
}

/// Whether every route tagged on a segment has a durable cursor past it.
fn passed(checked: &CheckedHeader, cursors: &HashMap<RouteKey, Cursor>) -> bool {
    let last = Cursor {
        segment: checked.header.segment,
        index: checked.lines.saturating_sub(1),
    };
    checked.tags.iter().all(|(kind, cred_id)| {
        let route = RouteKey {
            agent_id: checked.header.agent_id.clone(),
            kind: *kind,
            cred_id: cred_id.clone(),
        };
        cursors.get(&route).is_some_and(|c| *c >= last)
    })
}

/// Whether a route's stored secrets can be used.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum RouteState {
    Ok,
    /// Sealed under another key: kept, not delivered.
    OtherKey,
    /// Its record cannot be read anywhere: its segments are kept.
    Bad,
}

/// What sled holds, decoded; entries that do not decode are left for the
/// files to replace.
struct Stored {
    routes: HashMap<RouteKey, RouteState>,
    cursors: HashMap<RouteKey, Cursor>,
    hwms: HashMap<Vec<u8>, u64>,
    /// Segment key → its header (`None`: does not decode).
    segments: HashMap<Vec<u8>, Option<CheckedHeader>>,
    max_cursor_segment: u64,
    /// Route records that fail to authenticate (damaged).
    bad_routes: Vec<RouteKey>,
}

impl Stored {
    fn read(db: &sled::Db, seal: &SealKey) -> sled::Result<Stored> {
        let mut stored = Stored {
            routes: HashMap::new(),
            cursors: HashMap::new(),
            hwms: HashMap::new(),
            segments: HashMap::new(),
            max_cursor_segment: 0,
            bad_routes: Vec::new(),
        };
        for item in db.iter() {
            let (key, value) = item?;
            match keys::parse(&key) {
                Some(Parsed::Cursor(route)) => {
                    if let Ok(cursor) = records::decode_cursor(&value) {
                        stored.max_cursor_segment = stored.max_cursor_segment.max(cursor.segment);
                        stored.cursors.insert(route, cursor);
                    }
                }
                Some(Parsed::Hwm) => {
                    if let Ok(seq) = records::decode_hwm(&value) {
                        stored.hwms.insert(key.to_vec(), seq);
                    }
                }
                Some(Parsed::Route(route)) => {
                    match records::unseal_secrets(seal, &key, &value) {
                        Ok(_) => {
                            stored.routes.insert(route, RouteState::Ok);
                        }
                        Err(RecordError::OtherKey { .. }) => {
                            stored.routes.insert(route, RouteState::OtherKey);
                        }
                        // The files' copy replaces it, if they have one.
                        Err(_) => stored.bad_routes.push(route),
                    }
                }
                Some(Parsed::Segment { .. }) => {
                    let header = segment::decode_sled_value(&value).ok();
                    stored.segments.insert(key.to_vec(), header);
                }
                Some(Parsed::Meta) | None => {}
            }
        }
        Ok(stored)
    }

    fn hwm(&self, (agent, server, boot): &Stream) -> u64 {
        self.hwms
            .get(&keys::hwm(agent, server, boot))
            .copied()
            .unwrap_or(0)
    }
}
