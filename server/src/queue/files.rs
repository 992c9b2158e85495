//! Segment files: the queue's source of truth.
//!
//! The lines of segments are appended to plain files `lines/<number>.lines`
//! in the queue directory, as self-describing records; sled holds only an
//! index of them that open rebuilds from these files when it is missing,
//! short or wrong. A file is:
//!
//! ```text
//! "LDQUEUE\0" | format version (u32, big-endian) = 1 | record*
//! record = "LDQr" | kind (1) | header length (u32) | body length (u32)
//!        | crc32 of kind, both lengths and the header (u32) | header | body
//! ```
//!
//! Kind `R` is a route record (its credentials sealed), written into a file
//! once before the first segment tagged with it, so a file alone suffices
//! to deliver its lines; kind `S` is a segment (`segment.rs` encodes both;
//! the lines in a segment's body carry checksums of their own). A reader
//! that meets a damaged record header finds the next record by its magic
//! and a valid checksum ([`scan`]).
//!
//! * Each agent appends to its own active file, so one agent's backlog never
//!   keeps another agent's delivered lines on disk. A file is closed for
//!   writing at [`FILE_BYTES`], at open (a restart always starts new files),
//!   and when nothing in it is queued any more.
//! * A file is deleted only once every segment in it was freed by a commit,
//!   and after that commit is durable ([`SegmentFiles::take_doomed`] before
//!   a group commit, [`SegmentFiles::delete`] after it). Never because the
//!   database does not know it.
//! * [`SegmentFiles::sync`] makes every file written since the last sync
//!   durable; the group commit runs it before it flushes sled.
//! * Read handles are cached, at most [`MAX_OPEN_FILES`] at a time.
//!
//! This module owns bytes in files only: it must not touch sled or know
//! what a record holds.

use std::collections::{HashMap, HashSet};
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use bytes::Bytes;

use super::{lock, QueueError};

/// A file is closed for writing once it holds this many bytes.
pub(crate) const FILE_BYTES: u64 = 16 * 1024 * 1024;

/// Most read handles kept open at once (each file is reopened on demand).
pub(crate) const MAX_OPEN_FILES: usize = 128;

/// Directory of the segment files inside the queue directory.
pub(crate) const SUBDIR: &str = "lines";
const SUFFIX: &str = ".lines";

/// The on-disk format version this build reads and writes.
pub(crate) const FORMAT_VERSION: u32 = 1;
const FILE_MAGIC: &[u8; 8] = b"LDQUEUE\0";
const FILE_HEADER_LEN: u64 = 12;
const RECORD_MAGIC: &[u8; 4] = b"LDQr";
const PREFIX_LEN: usize = 17;
/// A record header longer than this is taken for damage.
const MAX_HEADER_LEN: u32 = 1 << 20;

/// Record kinds.
pub(crate) const ROUTE: u8 = b'R';
pub(crate) const SEGMENT: u8 = b'S';

/// Where a record is stored: file, offset and length of the whole record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Location {
    pub file: u64,
    pub offset: u64,
    pub len: u32,
}

/// A segment record read back: its header and body (checksum of the
/// header verified; the lines check their own).
pub(crate) struct Record {
    pub header: Bytes,
    pub body: Bytes,
}

/// The segment files of one queue.
pub(crate) struct SegmentFiles {
    dir: PathBuf,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    next_number: u64,
    /// Each agent's file open for appending: (number, length so far).
    active: HashMap<Arc<str>, (u64, u64)>,
    /// Segments pointing into each file.
    live: HashMap<u64, u64>,
    /// Cached handles (read and write).
    handles: HashMap<u64, Arc<File>>,
    /// Files written since the last sync.
    dirty: HashMap<u64, Arc<File>>,
    /// Files nothing points into, to delete after the next group commit.
    doomed: Vec<u64>,
    /// Route records written into each active file (by route id).
    routes_in: HashMap<u64, HashSet<Vec<u8>>>,
}

impl SegmentFiles {
    /// Creates the segment directory of the queue in `queue_dir` if needed.
    /// New appends go to new files, numbered after `after`.
    pub(crate) fn create(queue_dir: &Path, after: u64) -> io::Result<SegmentFiles> {
        let dir = queue_dir.join(SUBDIR);
        fs::create_dir_all(&dir)?;
        let state = State {
            next_number: after + 1,
            ..State::default()
        };
        Ok(SegmentFiles {
            dir,
            state: Mutex::new(state),
        })
    }

    /// The path of file `number` (for errors and logs).
    pub(crate) fn path(&self, number: u64) -> PathBuf {
        path(&self.dir, number)
    }

    /// Counts a segment found at open as pointing into `file`.
    pub(crate) fn add_live(&self, file: u64) {
        *lock(&self.state).live.entry(file).or_insert(0) += 1;
    }

    /// Whether any segment points into `file`.
    pub(crate) fn is_live(&self, file: u64) -> bool {
        lock(&self.state).live.contains_key(&file)
    }

    /// Dooms a file found at open whose every segment a durable commit
    /// freed (deleted after the next group commit).
    pub(crate) fn doom(&self, file: u64) {
        lock(&self.state).doomed.push(file);
    }

    /// A route's record changed: it is written again into every file before
    /// the next segment tagged with it.
    pub(crate) fn forget_route(&self, route_id: &[u8]) {
        for written in lock(&self.state).routes_in.values_mut() {
            written.remove(route_id);
        }
    }

    /// Appends a segment record (`header`, `body`) to the agent's active
    /// file, preceded by each of `routes` (route id, record) not yet in that
    /// file, and counts one segment in it. Returns where the segment record
    /// is. Nothing is durable before [`Self::sync`].
    pub(crate) fn append(
        &self,
        agent_id: &Arc<str>,
        routes: &[(Vec<u8>, Vec<u8>)],
        header: &[u8],
        body: &[u8],
    ) -> Result<Location, QueueError> {
        let segment_len = PREFIX_LEN + header.len() + body.len();
        // A segment holds at most 256 KiB of line data, or one line of at
        // most the 16 MiB message limit.
        let len = u32::try_from(segment_len).unwrap_or(u32::MAX);
        let routes_len: usize = routes.iter().map(|(_, r)| PREFIX_LEN + r.len()).sum();
        let mut state = lock(&self.state);
        let current = state.active.get(agent_id).copied();
        let needed = (segment_len + routes_len) as u64;
        let (number, offset) = match current {
            Some((number, used)) if used == FILE_HEADER_LEN || used + needed <= FILE_BYTES => {
                (number, used)
            }
            _ => {
                if let Some((old, _)) = current {
                    state.close(agent_id, old);
                }
                let number = state.next_number;
                state.next_number += 1;
                (number, 0)
            }
        };
        let mut out = Vec::with_capacity(FILE_HEADER_LEN as usize + routes_len + segment_len);
        if offset == 0 {
            out.extend_from_slice(FILE_MAGIC);
            out.extend_from_slice(&FORMAT_VERSION.to_be_bytes());
        }
        let written = state.routes_in.get(&number);
        let new_routes: Vec<&Vec<u8>> = routes
            .iter()
            .filter(|(id, _)| written.is_none_or(|w| !w.contains(id)))
            .map(|(id, record)| {
                push_record(&mut out, ROUTE, record, &[]);
                id
            })
            .collect();
        let at = offset + out.len() as u64;
        push_record(&mut out, SEGMENT, header, body);
        let written = self
            .handle(&mut state, number, Open::Write { new: offset == 0 })
            .and_then(|file| file.write_all_at(&out, offset).map(|()| file));
        let file = written.map_err(|source| QueueError::Files {
            path: self.path(number),
            source,
        })?;
        let routes_in = state.routes_in.entry(number).or_default();
        routes_in.extend(new_routes.into_iter().cloned());
        state
            .active
            .insert(agent_id.clone(), (number, offset + out.len() as u64));
        *state.live.entry(number).or_insert(0) += 1;
        state.dirty.insert(number, file);
        Ok(Location {
            file: number,
            offset: at,
            len,
        })
    }

    /// Closes every cached handle (tests: the next read reopens its file).
    #[cfg(test)]
    pub(crate) fn forget_handles(&self) {
        lock(&self.state).handles.clear();
    }

    /// Reads a segment record and checks its header's checksum.
    pub(crate) fn read(&self, at: Location) -> Result<Record, ReadError> {
        let file = {
            let mut state = lock(&self.state);
            self.handle(&mut state, at.file, Open::Read)
                .map_err(ReadError::Io)?
        };
        let mut bytes = vec![0; at.len as usize];
        file.read_exact_at(&mut bytes, at.offset)
            .map_err(ReadError::Io)?;
        let prefix = parse_prefix(&bytes).ok_or(ReadError::Damaged("its record header"))?;
        let header_end = PREFIX_LEN + prefix.header_len as usize;
        if prefix.kind != SEGMENT
            || header_end + prefix.body_len as usize != bytes.len()
            || !prefix.checks(&bytes[PREFIX_LEN..header_end])
        {
            return Err(ReadError::Damaged("its record header"));
        }
        let mut bytes = Bytes::from(bytes);
        let body = bytes.split_off(header_end);
        Ok(Record {
            header: bytes.slice(PREFIX_LEN..),
            body,
        })
    }

    /// Segments no longer point into these files (one entry per segment).
    /// Files left with none are closed for writing and doomed.
    pub(crate) fn release(&self, files: impl IntoIterator<Item = u64>) {
        let mut state = lock(&self.state);
        for file in files {
            let Some(count) = state.live.get_mut(&file) else {
                continue;
            };
            *count = count.saturating_sub(1);
            if *count == 0 {
                state.live.remove(&file);
                state.active.retain(|_, (number, _)| *number != file);
                state.doomed.push(file);
            }
        }
    }

    /// Whether files wait to be deleted after the next group commit.
    pub(crate) fn has_doomed(&self) -> bool {
        !lock(&self.state).doomed.is_empty()
    }

    /// Takes the doomed files; the caller deletes them with [`Self::delete`]
    /// once a flush that began after this call completed.
    pub(crate) fn take_doomed(&self) -> Vec<u64> {
        std::mem::take(&mut lock(&self.state).doomed)
    }

    /// Deletes files taken with [`Self::take_doomed`].
    pub(crate) fn delete(&self, files: Vec<u64>) {
        for number in files {
            {
                let mut state = lock(&self.state);
                state.handles.remove(&number);
                state.routes_in.remove(&number);
            }
            if let Err(error) = remove(&self.path(number)) {
                // Its segments are freed: the next open dooms it again.
                tracing::warn!(file = %self.path(number).display(), %error, "cannot delete a delivered segment file");
            }
        }
    }

    /// Whether files were written since the last sync.
    pub(crate) fn is_dirty(&self) -> bool {
        !lock(&self.state).dirty.is_empty()
    }

    /// Makes every file written since the last sync durable.
    pub(crate) fn sync(&self) -> io::Result<()> {
        let dirty = std::mem::take(&mut lock(&self.state).dirty);
        let mut result = Ok(());
        for (number, file) in dirty {
            if let Err(error) = file.sync_data() {
                // Keep it dirty: the next flush tries again.
                lock(&self.state).dirty.entry(number).or_insert(file);
                result = Err(error);
            }
        }
        result
    }

    /// A cached handle of `number`, opened if needed.
    fn handle(&self, state: &mut State, number: u64, how: Open) -> io::Result<Arc<File>> {
        if let Some(file) = state.handles.get(&number) {
            return Ok(file.clone());
        }
        let path = self.path(number);
        // Read handles are writable too: a cached handle may serve the
        // agent's next append.
        let new = matches!(how, Open::Write { new: true });
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(new)
            .open(&path)?;
        if new {
            // The new name must survive a crash as well as its bytes.
            File::open(&self.dir)?.sync_all()?;
        }
        let file = Arc::new(file);
        if state.handles.len() >= MAX_OPEN_FILES {
            let active: HashSet<u64> = state.active.values().map(|(n, _)| *n).collect();
            let evict: Vec<u64> = state
                .handles
                .keys()
                .copied()
                .filter(|n| !active.contains(n))
                .take(MAX_OPEN_FILES / 4)
                .collect();
            for n in evict {
                state.handles.remove(&n);
            }
        }
        state.handles.insert(number, file.clone());
        Ok(file)
    }
}

/// How [`SegmentFiles::handle`] opens a file it has no handle for.
#[derive(Clone, Copy)]
enum Open {
    Read,
    /// For appending; `new`: the first append, which creates the file.
    Write {
        new: bool,
    },
}

impl State {
    /// Closes an agent's active file for writing; dooms it if empty.
    fn close(&mut self, agent_id: &Arc<str>, number: u64) {
        self.active.remove(agent_id);
        self.routes_in.remove(&number);
        if !self.live.contains_key(&number) {
            self.doomed.push(number);
        }
    }
}

fn path(dir: &Path, number: u64) -> PathBuf {
    dir.join(format!("{number:016x}{SUFFIX}"))
}

fn push_record(out: &mut Vec<u8>, kind: u8, header: &[u8], body: &[u8]) {
    // Headers are bounded by MAX_HEADER_LEN in practice (ids, tags and one
    // length per line); bodies by the 16 MiB message limit.
    let header_len = u32::try_from(header.len()).unwrap_or(u32::MAX);
    let body_len = u32::try_from(body.len()).unwrap_or(u32::MAX);
    out.extend_from_slice(RECORD_MAGIC);
    out.push(kind);
    out.extend_from_slice(&header_len.to_be_bytes());
    out.extend_from_slice(&body_len.to_be_bytes());
    let crc = prefix_crc(kind, header_len, body_len, header);
    out.extend_from_slice(&crc.to_be_bytes());
    out.extend_from_slice(header);
    out.extend_from_slice(body);
}

fn prefix_crc(kind: u8, header_len: u32, body_len: u32, header: &[u8]) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&[kind]);
    hasher.update(&header_len.to_be_bytes());
    hasher.update(&body_len.to_be_bytes());
    hasher.update(header);
    hasher.finalize()
}

/// The fixed part of a record.
struct Prefix {
    kind: u8,
    header_len: u32,
    body_len: u32,
    crc: u32,
}

impl Prefix {
    fn checks(&self, header: &[u8]) -> bool {
        prefix_crc(self.kind, self.header_len, self.body_len, header) == self.crc
    }
}

fn parse_prefix(bytes: &[u8]) -> Option<Prefix> {
    let prefix: &[u8; PREFIX_LEN] = bytes.get(..PREFIX_LEN)?.try_into().ok()?;
    let u32_at = |at: usize| {
        u32::from_be_bytes([prefix[at], prefix[at + 1], prefix[at + 2], prefix[at + 3]])
    };
    (prefix[..4] == RECORD_MAGIC[..] && u32_at(5) <= MAX_HEADER_LEN).then(|| Prefix {
        kind: prefix[4],
        header_len: u32_at(5),
        body_len: u32_at(9),
        crc: u32_at(13),
    })
}

/// Why a segment record could not be read.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ReadError {
    /// Not evidence of damage (EMFILE, EIO, a file cut short, ...).
    #[error("{0}")]
    Io(#[source] io::Error),
    /// A checksum failed.
    #[error("{0} fails its checksum")]
    Damaged(&'static str),
}

/// What [`scan`] found in the segment files, read-only.
#[derive(Default)]
pub(crate) struct Scan {
    pub files: Vec<ScannedFile>,
}

/// One segment file as [`scan`] found it.
pub(crate) struct ScannedFile {
    pub number: u64,
    pub path: PathBuf,
    pub len: u64,
    /// Records whose header checksum holds, in file order.
    pub records: Vec<Scanned>,
    /// Byte ranges whose record headers fail their checksum (skipped to the
    /// next valid record).
    pub damaged: Vec<(u64, u64)>,
}

/// A record found by [`scan`].
pub(crate) struct Scanned {
    pub kind: u8,
    pub header: Vec<u8>,
    pub at: Location,
    /// Whether the whole record is in the file (a record cut short by the
    /// machine stopping before its sync is not).
    pub complete: bool,
}

/// Why [`scan`] failed: never evidence of damage.
#[derive(Debug)]
pub(crate) enum ScanError {
    Io { path: PathBuf, source: io::Error },
    Format { path: PathBuf, found: String },
}

/// Reads the header of every record of every segment file of the queue in
/// `queue_dir` (bodies are not read). Changes nothing on disk.
pub(crate) fn scan(queue_dir: &Path) -> Result<Scan, ScanError> {
    let dir = queue_dir.join(SUBDIR);
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| ScanError::Io { path, source }
    };
    let entries = match fs::read_dir(&dir) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Scan::default()),
        other => other.map_err(io(&dir))?,
    };
    let mut numbers = Vec::new();
    for entry in entries {
        let entry = entry.map_err(io(&dir))?;
        let name = entry.file_name();
        if let Some(number) = name
            .to_str()
            .and_then(|n| n.strip_suffix(SUFFIX))
            .and_then(|n| u64::from_str_radix(n, 16).ok())
        {
            numbers.push(number);
        }
    }
    numbers.sort_unstable();
    let mut out = Scan::default();
    for number in numbers {
        let path = path(&dir, number);
        let file = File::open(&path).map_err(io(&path))?;
        out.files
            .push(scan_file(number, &path, &file).map_err(|e| match e {
                ScanFileError::Io(source) => ScanError::Io {
                    path: path.clone(),
                    source,
                },
                ScanFileError::Format(found) => ScanError::Format {
                    path: path.clone(),
                    found,
                },
            })?);
    }
    Ok(out)
}

enum ScanFileError {
    Io(io::Error),
    Format(String),
}

fn scan_file(number: u64, path: &Path, file: &File) -> Result<ScannedFile, ScanFileError> {
    let len = file.metadata().map_err(ScanFileError::Io)?.len();
    let mut out = ScannedFile {
        number,
        path: path.to_path_buf(),
        len,
        records: Vec::new(),
        damaged: Vec::new(),
    };
    // Shorter than its header: created, then cut by a crash before a sync.
    if len < FILE_HEADER_LEN {
        return Ok(out);
    }
    let mut head = [0u8; FILE_HEADER_LEN as usize];
    file.read_exact_at(&mut head, 0)
        .map_err(ScanFileError::Io)?;
    let version = u32::from_be_bytes([head[8], head[9], head[10], head[11]]);
    let magic = head[..8] == FILE_MAGIC[..];
    if !magic || version != FORMAT_VERSION {
        // A damaged file header (a bad magic, or a version one bit off) is
        // told from another format by a valid record right after it.
        let damage = (magic || version == FORMAT_VERSION)
            && (!magic || (version ^ FORMAT_VERSION).count_ones() == 1)
            && next_record(file, FILE_HEADER_LEN, len)? == Some(FILE_HEADER_LEN);
        if !damage {
            return Err(ScanFileError::Format(if magic {
                format!("version {version}")
            } else {
                "no logdrain segment file header".to_string()
            }));
        }
        out.damaged.push((0, FILE_HEADER_LEN));
    }
    let read_at = |offset: u64, n: usize| -> Result<Vec<u8>, ScanFileError> {
        let mut bytes = vec![0; n];
        file.read_exact_at(&mut bytes, offset)
            .map_err(ScanFileError::Io)?;
        Ok(bytes)
    };
    let mut offset = FILE_HEADER_LEN;
    while offset < len {
        let valid = if len - offset < PREFIX_LEN as u64 {
            None
        } else {
            let prefix = read_at(offset, PREFIX_LEN)?;
            match parse_prefix(&prefix) {
                Some(p) if offset + (PREFIX_LEN as u64) + u64::from(p.header_len) <= len => {
                    let header = read_at(offset + PREFIX_LEN as u64, p.header_len as usize)?;
                    p.checks(&header).then_some((p, header))
                }
                _ => None,
            }
        };
        let Some((prefix, header)) = valid else {
            // A damaged record header, or the tail of a write cut short:
            // look for the next valid record.
            match next_record(file, offset + 1, len)? {
                Some(next) => {
                    out.damaged.push((offset, next));
                    offset = next;
                    continue;
                }
                None => {
                    out.damaged.push((offset, len));
                    break;
                }
            }
        };
        let record_len =
            PREFIX_LEN as u64 + u64::from(prefix.header_len) + u64::from(prefix.body_len);
        let complete = offset + record_len <= len;
        out.records.push(Scanned {
            kind: prefix.kind,
            header,
            at: Location {
                file: number,
                offset,
                len: u32::try_from(record_len).unwrap_or(u32::MAX),
            },
            complete,
        });
        if !complete {
            break;
        }
        offset += record_len;
    }
    Ok(out)
}

/// The offset of the first valid record at or after `from`.
fn next_record(file: &File, from: u64, len: u64) -> Result<Option<u64>, ScanFileError> {
    if from >= len {
        return Ok(None);
    }
    // A file this queue wrote holds at most FILE_BYTES plus one record (a
    // line is at most 16 MiB); a longer one is searched that far only.
    const MAX_SEARCH: u64 = 4 * FILE_BYTES;
    let searched = (len - from).min(MAX_SEARCH);
    let mut rest = vec![0; usize::try_from(searched).unwrap_or(0)];
    file.read_exact_at(&mut rest, from)
        .map_err(ScanFileError::Io)?;
    let mut at = 0;
    while let Some(found) = memchr::memmem::find(&rest[at..], RECORD_MAGIC) {
        let start = at + found;
        if let Some(prefix) = parse_prefix(&rest[start..]) {
            let end = start + PREFIX_LEN + prefix.header_len as usize;
            if rest
                .get(start + PREFIX_LEN..end)
                .is_some_and(|header| prefix.checks(header))
            {
                return Ok(Some(from + start as u64));
            }
        }
        at = start + 1;
    }
    Ok(None)
}

fn remove(path: &Path) -> io::Result<()> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn agent(id: &str) -> Arc<str> {
        Arc::from(id)
    }

    fn body(record: &Record) -> &[u8] {
        &record.body
    }

    #[test]
    fn appended_records_read_back_and_scan_finds_them_with_their_routes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let files = SegmentFiles::create(dir.path(), 0).expect("create");
        let route = (b"r1".to_vec(), b"route one".to_vec());
        let a = files
            .append(&agent("a"), std::slice::from_ref(&route), b"h1", b"hello")
            .expect("append");
        let b = files
            .append(&agent("a"), std::slice::from_ref(&route), b"h2", b"world!")
            .expect("append");
        assert_eq!(a.file, b.file);
        files.sync().expect("sync");
        assert_eq!(body(&files.read(b).expect("read")), b"world!");
        assert_eq!(&files.read(a).expect("read").header[..], b"h1");

        let scan = scan(dir.path()).map_err(|_| "scan").expect("scan");
        let kinds: Vec<(u8, Vec<u8>)> = scan.files[0]
            .records
            .iter()
            .map(|r| (r.kind, r.header.clone()))
            .collect();
        // The route record is written once per file, before its segment.
        assert_eq!(
            kinds,
            vec![
                (ROUTE, b"route one".to_vec()),
                (SEGMENT, b"h1".to_vec()),
                (SEGMENT, b"h2".to_vec())
            ]
        );
        assert_eq!(scan.files[0].records[2].at, b);
    }

    #[test]
    fn a_damaged_record_header_is_skipped_to_the_next_record_and_reads_say_damaged() {
        let dir = tempfile::tempdir().expect("tempdir");
        let files = SegmentFiles::create(dir.path(), 0).expect("create");
        let a = files
            .append(&agent("a"), &[], b"h1", b"one")
            .expect("append");
        let b = files
            .append(&agent("a"), &[], b"h2", b"two")
            .expect("append");
        files.sync().expect("sync");
        let path = files.path(a.file);
        let mut bytes = fs::read(&path).expect("read");
        bytes[a.offset as usize + PREFIX_LEN] ^= 1; // the first header
        fs::write(&path, &bytes).expect("write");
        let scan = scan(dir.path()).map_err(|_| "scan").expect("scan");
        let file = &scan.files[0];
        assert_eq!(file.damaged, vec![(a.offset, b.offset)]);
        assert_eq!(file.records.len(), 1);
        assert_eq!(file.records[0].at, b);
        drop(files);
        let files = SegmentFiles::create(dir.path(), 1).expect("create");
        assert!(matches!(files.read(a), Err(ReadError::Damaged(_))));
        assert_eq!(body(&files.read(b).expect("read")), b"two");
    }

    #[test]
    fn a_record_cut_short_is_found_incomplete_and_a_file_of_another_version_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let files = SegmentFiles::create(dir.path(), 0).expect("create");
        let a = files
            .append(&agent("a"), &[], b"h1", b"one")
            .expect("append");
        files.sync().expect("sync");
        let path = files.path(a.file);
        let len = fs::metadata(&path).expect("meta").len();
        OpenOptions::new()
            .write(true)
            .open(&path)
            .and_then(|f| f.set_len(len - 1))
            .expect("cut");
        let found = scan(dir.path()).map_err(|_| "scan").expect("scan");
        assert!(!found.files[0].records[0].complete);
        assert!(matches!(files.read(a), Err(ReadError::Io(_))));

        let mut bytes = fs::read(&path).expect("read");
        bytes[11] = 2;
        fs::write(&path, &bytes).expect("write");
        assert!(matches!(
            scan(dir.path()),
            Err(ScanError::Format { found, .. }) if found == "version 2"
        ));
    }

    #[test]
    fn a_damaged_file_header_before_valid_records_is_damage_not_another_format() {
        let dir = tempfile::tempdir().expect("tempdir");
        let files = SegmentFiles::create(dir.path(), 0).expect("create");
        let a = files
            .append(&agent("a"), &[], b"h1", b"one")
            .expect("append");
        files.sync().expect("sync");
        let path = files.path(a.file);
        let mut bytes = fs::read(&path).expect("read");
        bytes[2] ^= 1;
        fs::write(&path, &bytes).expect("write");
        let found = scan(dir.path()).map_err(|_| "scan").expect("scan");
        assert_eq!(found.files[0].damaged, vec![(0, FILE_HEADER_LEN)]);
        assert_eq!(found.files[0].records[0].at, a);
        fs::write(&path, b"some other file entirely").expect("write");
        assert!(matches!(scan(dir.path()), Err(ScanError::Format { .. })));
    }

    #[test]
    fn a_file_is_deleted_only_when_released_and_taken_for_deletion() {
        let dir = tempfile::tempdir().expect("tempdir");
        let files = SegmentFiles::create(dir.path(), 0).expect("create");
        let a = files.append(&agent("a"), &[], b"h", b"1").expect("append");
        let _ = files.append(&agent("a"), &[], b"h", b"2").expect("append");
        files.release([a.file]);
        assert!(!files.has_doomed(), "one segment still points into it");
        files.release([a.file]);
        let doomed = files.take_doomed();
        assert_eq!(doomed, vec![a.file]);
        assert!(files.path(a.file).exists(), "kept until the caller deletes");
        files.delete(doomed);
        assert!(!files.path(a.file).exists());
        // The agent's next append starts a new file.
        let next = files.append(&agent("a"), &[], b"h", b"3").expect("append");
        assert_ne!(next.file, a.file);
    }

    #[test]
    fn each_agent_appends_to_its_own_file_and_a_full_file_is_closed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let files = SegmentFiles::create(dir.path(), 0).expect("create");
        let a = files.append(&agent("a"), &[], b"h", b"1").expect("append");
        let b = files.append(&agent("b"), &[], b"h", b"2").expect("append");
        assert_ne!(a.file, b.file);
        let big = vec![7u8; (FILE_BYTES / 2 + 1) as usize];
        let first = files.append(&agent("a"), &[], b"h", &big).expect("append");
        let second = files.append(&agent("a"), &[], b"h", &big).expect("append");
        assert_eq!(first.file, a.file);
        assert_ne!(first.file, second.file);
    }
}
