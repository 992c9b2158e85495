//! Errors of the queue layer.
//!
//! [`QueueError`] is what callers of [`super::Queue`] see; [`RecordError`]
//! says why one stored entry could not be decoded. Neither ever carries a
//! secret value: keys are rendered with [`super::keys::describe`], which shows
//! agent ids, destination names and credential ids only.

use std::path::PathBuf;

/// An error of the durable queue.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    /// The queue could not be opened for a reason that is not evidence of
    /// damage (errno, lock, permissions, or anything unclassified): the
    /// start is refused and nothing in the queue is changed.
    #[error(
        "cannot open the queue in {dir:?}: {what} ({cause}); {fix}; the start is refused and \
         nothing in the queue was changed"
    )]
    Unavailable {
        dir: PathBuf,
        what: String,
        cause: String,
        fix: String,
        /// An I/O error (errno): the environment, not the files, is at fault.
        io: bool,
    },

    /// An unreadable queue directory could not be moved aside.
    #[error(
        "cannot move the unreadable queue {dir:?} aside to {to:?}: {source}; make the data dir \
         writable or move the queue directory away yourself"
    )]
    SetAside {
        dir: PathBuf,
        to: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// The database was written by a different version of the queue format.
    #[error(
        "the queue in {dir:?} has format {found}, this build reads format version \
         {expected}; run the gateway version that wrote it; nothing in the queue was changed"
    )]
    Format {
        dir: PathBuf,
        found: String,
        expected: u32,
    },

    /// A read or write of the underlying database failed.
    #[error("queue storage error: {0}")]
    Sled(#[from] sled::Error),

    /// A segment file could not be written.
    #[error(
        "cannot write the queue's segment file {path:?}: {source}; check that the data dir is \
         writable and has free space"
    )]
    Files {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// A group commit (flush to disk) failed. Nothing written after the last
    /// successful flush may be acknowledged.
    #[error(
        "the queue could not flush to disk: {0}; nothing newer is acknowledged, check the disk \
         and restart the gateway"
    )]
    Flush(#[source] sled::Error),

    /// A segment file could not be read for a reason that is not evidence
    /// of damage (EMFILE, EIO, ...): the caller retries; nothing is set aside.
    #[error("cannot read the queue's segment file {path:?}: {reason}; retrying")]
    Read { path: PathBuf, reason: String },

    /// A stored entry could not be decoded.
    #[error("corrupt queue entry {key}: {reason}")]
    Corrupt {
        key: String,
        #[source]
        reason: RecordError,
    },

    /// The route was never stored with `put_route` (or was removed).
    #[error(
        "unknown route {route}: call Queue::put_route before appending, reading or committing"
    )]
    UnknownRoute { route: String },

    /// An append named a route of another agent.
    #[error(
        "route {route} belongs to another agent than the appended stream's agent {agent_id:?}"
    )]
    WrongAgent { route: String, agent_id: String },

    /// An append's sequence numbers are not valid.
    #[error(
        "batch with first_seq {first_seq} and {lines} lines is not a valid sequence: sequence \
         numbers start at 1 and must fit in 64 bits"
    )]
    InvalidSequence { first_seq: u64, lines: usize },

    /// The filesystem of the queue is below the free-space watermark.
    #[error(
        "the queue disk is full: {free} bytes free in {dir:?}, below the watermark of {min_free} \
         bytes; lines wait in the shims' buffers until delivery frees space; free disk space, \
         grow the volume or lower --disk-min-free-bytes / LOGDRAIN_DISK_MIN_FREE_BYTES"
    )]
    DiskFull {
        dir: PathBuf,
        free: u64,
        min_free: u64,
    },

    /// A write met ENOSPC; sled writes nothing more until restart.
    #[error(
        "the queue disk in {dir:?} filled up (no space left on device) and the queue storage \
         accepts no more writes until the gateway restarts; lines wait in the shims' buffers; free \
         disk space, restart the gateway, and keep --disk-min-free-bytes / \
         LOGDRAIN_DISK_MIN_FREE_BYTES above 0 so batches are refused before the disk fills"
    )]
    DiskWedged { dir: PathBuf },

    /// The free space of the queue's filesystem could not be measured.
    #[error("cannot measure the free space of {dir:?}: {source}; check that the data dir exists and is readable")]
    DiskSpace {
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// One batch is larger than the whole per-agent quota.
    #[error(
        "a batch of {batch_bytes} bytes for agent {agent_id:?} is larger than the per-agent quota of \
         {quota} bytes; raise --agent-quota-bytes / LOGDRAIN_AGENT_QUOTA_BYTES"
    )]
    OverQuota {
        agent_id: String,
        batch_bytes: u64,
        quota: u64,
    },

    /// A commit named a cursor past anything the queue ever handed out.
    #[error(
        "cannot commit route {route} through segment {segment}: no such segment was ever \
         written (newest is {newest}); commit only cursors returned by Queue::read"
    )]
    CursorAhead {
        route: String,
        segment: u64,
        newest: u64,
    },
}

impl QueueError {
    /// Whether the failure is a lack of space (watermark, quota or ENOSPC):
    /// the caller should refuse with RESOURCE_EXHAUSTED and the shim keep its
    /// lines, rather than report the queue broken.
    pub fn is_out_of_space(&self) -> bool {
        match self {
            QueueError::DiskFull { .. }
            | QueueError::DiskWedged { .. }
            | QueueError::OverQuota { .. } => true,
            QueueError::Sled(e) | QueueError::Flush(e) => is_enospc(e),
            QueueError::Files { source, .. } => source.kind() == std::io::ErrorKind::StorageFull,
            _ => false,
        }
    }
}

/// The errno name and the operator's fix for an I/O error met while opening
/// the queue.
pub(crate) fn io_cause(error: &std::io::Error) -> (String, &'static str) {
    let fix = match error.raw_os_error() {
        Some(libc::EMFILE) => "raise the open-file limit of the gateway (ulimit -n, LimitNOFILE=)",
        Some(libc::ENFILE) => "the system-wide open-file table is full: raise fs.file-max or stop what holds the files",
        Some(libc::ENOMEM) => "give the gateway more memory (or lower --queue-cache-bytes)",
        Some(libc::EROFS) => "the data dir is on a read-only filesystem: mount it read-write",
        Some(libc::EACCES) | Some(libc::EPERM) => {
            "give the gateway's user read and write access to the data dir and every file in it"
        }
        Some(libc::EIO) => "the disk reported an I/O error: check the device (dmesg), then start again",
        Some(libc::ENOSPC) | Some(libc::EDQUOT) => "free disk space in the data dir's filesystem",
        Some(libc::EAGAIN) => "another gateway process holds the queue's lock: stop it, or give this one another --data-dir",
        _ if error.to_string().contains("lock") => {
            "another gateway process holds the queue's lock: stop it, or give this one another --data-dir"
        }
        _ => "fix the cause and start again",
    };
    let name = match error.raw_os_error() {
        Some(code) => format!("{} (errno {code}): {error}", errno_name(code)),
        None => error.to_string(),
    };
    (name, fix)
}

fn errno_name(code: i32) -> &'static str {
    match code {
        libc::EMFILE => "EMFILE",
        libc::ENFILE => "ENFILE",
        libc::ENOMEM => "ENOMEM",
        libc::EROFS => "EROFS",
        libc::EACCES => "EACCES",
        libc::EPERM => "EPERM",
        libc::EIO => "EIO",
        libc::ENOSPC => "ENOSPC",
        libc::EDQUOT => "EDQUOT",
        libc::EAGAIN => "EAGAIN",
        libc::ENOENT => "ENOENT",
        libc::ENOTDIR => "ENOTDIR",
        _ => "errno",
    }
}

/// Whether sled failed because the disk is full.
pub(crate) fn is_enospc(error: &sled::Error) -> bool {
    matches!(error, sled::Error::Io(e) if e.kind() == std::io::ErrorKind::StorageFull)
}

/// Why one stored entry could not be decoded.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error("value is {found} bytes long, expected {expected}")]
    Length { found: usize, expected: usize },

    #[error("value is {found} bytes long, shorter than the {min}-byte header")]
    TooShort { found: usize, min: usize },

    #[error("unknown record format version {0}")]
    Version(u8),

    #[error("checksum mismatch (stored {stored:#010x}, computed {computed:#010x})")]
    Checksum { stored: u32, computed: u32 },

    #[error("header length {header} exceeds the {available} bytes that follow it")]
    HeaderLength { header: usize, available: usize },

    #[error("protobuf decoding failed: {0}")]
    Decode(#[from] prost::DecodeError),

    #[error("header says {header} lines, the segment holds {found}")]
    LineCount { header: u64, found: usize },

    #[error("a segment must hold 1 to 4294967295 lines, the header says {0}")]
    BadLineCount(u64),

    #[error("unknown destination {0:?}")]
    Destination(String),

    #[error("key does not match the queue's key layout")]
    Key,

    /// A segment's lines could not be read from its segment file;
    /// `transient`: an I/O error, not evidence of damage.
    #[error("its lines in {path:?} cannot be read: {reason}")]
    Lines {
        path: PathBuf,
        reason: String,
        transient: bool,
    },

    /// A sealed route record whose key id is not this gateway's.
    #[error(
        "the record was sealed under another key (key id {found:08x}; this gateway's is \
         {expected:08x}): the signing key changed; start the gateway with the signing key it had \
         when the route was stored (LOGDRAIN_SIGNING_KEY or signing.key in the data dir) to \
         deliver this route's lines"
    )]
    OtherKey { found: u32, expected: u32 },

    /// A sealed record with the right key id that does not authenticate.
    #[error("the sealed record does not authenticate (damaged, or moved from another key)")]
    Unauthentic,
}
