//! Segment files: where the lines of segments live.
//!
//! sled keeps each segment's header and a [`Location`] (file, offset,
//! length, CRC of the bytes); the encoded lines themselves are appended to
//! plain files `lines/<number>.lines` in the queue directory. sled then
//! holds only small values: its page cache bounds its memory (large values
//! are written by sled as blobs its cache never evicts), and it does not
//! rewrite line data as its leaves fill.
//!
//! * Each agent appends to its own active file, so one agent's backlog never
//!   keeps another agent's delivered lines on disk. A file is closed for
//!   writing at [`FILE_BYTES`], at open (a restart always starts new files),
//!   and when nothing in it is queued any more.
//! * A file is deleted once no segment points into it, and only after the
//!   removal of its last pointer is durable ([`SegmentFiles::take_doomed`]
//!   before a group commit, [`SegmentFiles::delete`] after it): a crash can
//!   never leave a stored pointer to a deleted file.
//! * [`SegmentFiles::sync`] makes every file written since the last sync
//!   durable; the group commit runs it before it flushes sled, so a durable
//!   pointer has durable bytes.
//! * Read handles are cached, at most [`MAX_OPEN_FILES`] at a time.
//!
//! This module owns files only: it must not touch sled or know what a
//! segment holds.

use std::collections::{HashMap, HashSet};
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use super::{lock, QueueError};

/// A file is closed for writing once it holds this many bytes.
pub(crate) const FILE_BYTES: u64 = 16 * 1024 * 1024;

/// Most read handles kept open at once (each file is reopened on demand).
pub(crate) const MAX_OPEN_FILES: usize = 128;

/// Directory of the segment files inside the queue directory.
const SUBDIR: &str = "lines";
const SUFFIX: &str = ".lines";

/// Where a segment's encoded lines are stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Location {
    pub file: u64,
    pub offset: u64,
    pub len: u32,
    /// CRC-32 of the stored bytes.
    pub crc: u32,
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
}

/// Files found in the directory at open: number → length.
pub(crate) type Existing = HashMap<u64, u64>;

impl SegmentFiles {
    /// Opens (creating) the segment directory of the queue in `queue_dir`
    /// and lists the files in it. New appends go to new files.
    pub(crate) fn open(queue_dir: &Path) -> io::Result<(SegmentFiles, Existing)> {
        let dir = queue_dir.join(SUBDIR);
        fs::create_dir_all(&dir)?;
        let mut existing = Existing::new();
        for entry in fs::read_dir(&dir)? {
            let entry = entry?;
            let name = entry.file_name();
            let Some(number) = name
                .to_str()
                .and_then(|n| n.strip_suffix(SUFFIX))
                .and_then(|n| u64::from_str_radix(n, 16).ok())
            else {
                continue;
            };
            existing.insert(number, entry.metadata()?.len());
        }
        let state = State {
            next_number: existing.keys().max().map_or(1, |n| n + 1),
            ..State::default()
        };
        let files = SegmentFiles {
            dir,
            state: Mutex::new(state),
        };
        Ok((files, existing))
    }

    /// The path of file `number` (for errors and logs).
    pub(crate) fn path(&self, number: u64) -> PathBuf {
        self.dir.join(format!("{number:016x}{SUFFIX}"))
    }

    /// Counts a segment found at open as pointing into `file`.
    pub(crate) fn add_live(&self, file: u64) {
        *lock(&self.state).live.entry(file).or_insert(0) += 1;
    }

    /// How many files found at open no segment points into (they are kept).
    pub(crate) fn unreferenced(&self, existing: &Existing) -> usize {
        let state = lock(&self.state);
        existing
            .keys()
            .filter(|n| !state.live.contains_key(n))
            .count()
    }

    /// Appends `data` to the agent's active file and counts one segment in
    /// it. Nothing is durable before [`Self::sync`].
    pub(crate) fn append(&self, agent_id: &Arc<str>, data: &[u8]) -> Result<Location, QueueError> {
        // A segment holds at most 256 KiB of line data, or one line of at
        // most the 16 MiB message limit.
        let len = u32::try_from(data.len()).unwrap_or(u32::MAX);
        let crc = crc32fast::hash(data);
        let mut state = lock(&self.state);
        let current = state.active.get(agent_id).copied();
        let (number, offset) = match current {
            Some((number, used)) if used == 0 || used + u64::from(len) <= FILE_BYTES => {
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
        let written = self
            .handle(&mut state, number, Open::Write { new: offset == 0 })
            .and_then(|file| file.write_all_at(data, offset).map(|()| file));
        let file = written.map_err(|source| QueueError::Files {
            path: self.path(number),
            source,
        })?;
        state
            .active
            .insert(agent_id.clone(), (number, offset + u64::from(len)));
        *state.live.entry(number).or_insert(0) += 1;
        state.dirty.insert(number, file);
        Ok(Location {
            file: number,
            offset,
            len,
            crc,
        })
    }

    /// Reads a segment's bytes and checks their CRC.
    pub(crate) fn read(&self, at: Location) -> Result<Vec<u8>, ReadError> {
        let file = {
            let mut state = lock(&self.state);
            self.handle(&mut state, at.file, Open::Read)
                .map_err(ReadError::Io)?
        };
        let mut out = vec![0; at.len as usize];
        file.read_exact_at(&mut out, at.offset)
            .map_err(ReadError::Io)?;
        let computed = crc32fast::hash(&out);
        if computed != at.crc {
            return Err(ReadError::Checksum {
                stored: at.crc,
                computed,
            });
        }
        Ok(out)
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
            lock(&self.state).handles.remove(&number);
            if let Err(error) = remove(&self.path(number)) {
                // The space is reclaimed at the next open at the latest.
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
        if !self.live.contains_key(&number) {
            self.doomed.push(number);
        }
    }
}

/// Why a segment's bytes could not be read.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ReadError {
    #[error("{0}")]
    Io(#[source] io::Error),
    #[error("the stored lines' checksum {computed:08x} does not match the recorded {stored:08x}")]
    Checksum { stored: u32, computed: u32 },
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

    #[test]
    fn appended_bytes_read_back_and_a_flipped_byte_is_caught() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (files, existing) = SegmentFiles::open(dir.path()).expect("open");
        assert!(existing.is_empty());
        let a = files.append(&agent("a"), b"hello").expect("append");
        let b = files.append(&agent("a"), b"world!").expect("append");
        assert_eq!((a.file, a.offset, b.file, b.offset), (1, 0, 1, 5));
        files.sync().expect("sync");
        assert_eq!(files.read(b).expect("read"), b"world!");
        let bad = Location {
            crc: b.crc ^ 1,
            ..b
        };
        assert!(matches!(files.read(bad), Err(ReadError::Checksum { .. })));
        let beyond = Location { offset: 100, ..b };
        assert!(matches!(files.read(beyond), Err(ReadError::Io(_))));
    }

    #[test]
    fn appends_continue_after_the_active_file_was_reopened_by_a_read() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (files, _) = SegmentFiles::open(dir.path()).expect("open");
        let first = files.append(&agent("a"), b"one").expect("append");
        // Its handle left the cache; a read opens it again.
        lock(&files.state).handles.clear();
        assert_eq!(files.read(first).expect("read"), b"one");
        let second = files.append(&agent("a"), b"two").expect("append");
        assert_eq!(second.file, first.file);
        assert_eq!(files.read(second).expect("read"), b"two");
    }

    #[test]
    fn each_agent_appends_to_its_own_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (files, _) = SegmentFiles::open(dir.path()).expect("open");
        let a = files.append(&agent("a"), b"1").expect("append");
        let b = files.append(&agent("b"), b"2").expect("append");
        let a2 = files.append(&agent("a"), b"3").expect("append");
        assert_ne!(a.file, b.file);
        assert_eq!(a.file, a2.file);
    }

    #[test]
    fn a_file_is_deleted_only_when_released_and_taken_for_deletion() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (files, _) = SegmentFiles::open(dir.path()).expect("open");
        let a = files.append(&agent("a"), b"1").expect("append");
        let _ = files.append(&agent("a"), b"2").expect("append");
        files.release([a.file]);
        assert!(!files.has_doomed(), "one segment still points into it");
        files.release([a.file]);
        let doomed = files.take_doomed();
        assert_eq!(doomed, vec![a.file]);
        assert!(files.path(a.file).exists(), "kept until the caller deletes");
        files.delete(doomed);
        assert!(!files.path(a.file).exists());
        // The agent's next append starts a new file.
        let next = files.append(&agent("a"), b"3").expect("append");
        assert_ne!(next.file, a.file);
    }

    #[test]
    fn a_full_file_is_closed_and_a_reopened_queue_starts_a_new_one() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (files, _) = SegmentFiles::open(dir.path()).expect("open");
        let big = vec![7u8; (FILE_BYTES / 2 + 1) as usize];
        let first = files.append(&agent("a"), &big).expect("append");
        let second = files.append(&agent("a"), &big).expect("append");
        assert_ne!(first.file, second.file);
        files.sync().expect("sync");
        drop(files);
        let (files, existing) = SegmentFiles::open(dir.path()).expect("reopen");
        assert_eq!(existing.len(), 2);
        let third = files.append(&agent("a"), b"x").expect("append");
        assert!(third.file > second.file);
        files.add_live(first.file);
        assert_eq!(files.unreferenced(&existing), 1);
    }
}
