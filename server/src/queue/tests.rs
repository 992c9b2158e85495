//! Behaviour of the queue through its public API, on real sled databases in
//! temporary directories.

use std::collections::BTreeMap;

use bytes::Bytes;
use tempfile::TempDir;

use super::*;
use crate::route::DestinationKind;

fn route(agent: &str, cred: &str) -> RouteKey {
    RouteKey {
        agent_id: agent.to_string(),
        kind: DestinationKind::Datadog,
        cred_id: cred.to_string(),
    }
}

fn secrets(token: &str) -> Secrets {
    Secrets(BTreeMap::from([(
        "DATADOG_TOKEN".to_string(),
        token.to_string(),
    )]))
}

fn line(data: &str) -> Line {
    Line {
        timestamp_ns: 1,
        data: Bytes::copy_from_slice(data.as_bytes()),
        ..Default::default()
    }
}

/// Lines `tag-first` ..= `tag-last`.
fn lines(tag: &str, first: u64, last: u64) -> Vec<Line> {
    (first..=last)
        .map(|i| line(&format!("{tag}-{i}")))
        .collect()
}

fn one(route: &RouteKey) -> &[RouteKey] {
    std::slice::from_ref(route)
}

fn open(dir: &TempDir) -> Queue {
    reopen(dir).0
}

/// Retries `f` while the database lock is still held: a dropped queue's
/// group-commit task may be finishing its last loop turn (it holds the
/// database until it exits, a moment after the last append returned).
fn when_unlocked<T, E: std::fmt::Debug>(mut f: impl FnMut() -> Result<T, E>) -> T {
    for _ in 0..100 {
        match f() {
            Ok(value) => return value,
            Err(e) if format!("{e:?}").contains("could not acquire lock") => {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            Err(e) => panic!("open failed: {e:?}"),
        }
    }
    f().expect("database lock released")
}

/// The error of an open that must be refused, once a dropped queue released
/// the database lock (see [`when_unlocked`]).
fn refused<T>(mut open: impl FnMut() -> Result<T, QueueError>) -> QueueError {
    match when_unlocked(|| match open() {
        Ok(_) => Ok(None),
        Err(e) if e.to_string().contains("could not acquire lock") => Err(e),
        Err(e) => Ok(Some(e)),
    }) {
        Some(error) => error,
        None => panic!("the open must be refused"),
    }
}

/// The key the tests seal route secrets with.
fn seal_key() -> SealKey {
    SealKey::derive(b"queue-tests-signing-key")
}

/// Reopens the queue after a previous instance was dropped.
fn reopen(dir: &TempDir) -> (Queue, OpenReport) {
    reopen_with(dir, seal_key())
}

/// Reopens the queue with a given sealing key.
fn reopen_with(dir: &TempDir, seal: SealKey) -> (Queue, OpenReport) {
    when_unlocked(|| Queue::open(dir.path(), seal.clone()))
}

/// Whether `needle` occurs anywhere in the files under `dir`.
fn found_in_files(dir: &std::path::Path, needle: &[u8]) -> bool {
    std::fs::read_dir(dir).unwrap().any(|entry| {
        let path = entry.unwrap().path();
        if path.is_dir() {
            found_in_files(&path, needle)
        } else {
            let bytes = std::fs::read(&path).unwrap();
            bytes.windows(needle.len()).any(|w| w == needle)
        }
    })
}

async fn append(
    queue: &Queue,
    agent: &str,
    server: &str,
    first_seq: u64,
    lines: Vec<Line>,
    routes: &[RouteKey],
) -> AppendOutcome {
    queue
        .append(Append {
            agent_id: agent,
            agent_server_id: server,
            boot_id: "boot-1",
            first_seq,
            lines,
            routes,
        })
        .await
        .expect("append succeeds")
}

/// Reads everything tagged for `route` from the start, a few lines at a
/// time so paging across segments is exercised.
fn read_all(queue: &Queue, route: &RouteKey) -> Vec<QueuedLine> {
    let mut out: Vec<QueuedLine> = Vec::new();
    loop {
        let after = out.last().map(|l| l.cursor);
        let batch = queue.read(route, after, 7, usize::MAX).expect("read");
        if batch.is_empty() {
            return out;
        }
        out.extend(batch);
    }
}

fn data(lines: &[QueuedLine]) -> Vec<String> {
    lines
        .iter()
        .map(|l| String::from_utf8_lossy(&l.line.data).into_owned())
        .collect()
}

fn names(tag: &str, first: u64, last: u64) -> Vec<String> {
    (first..=last).map(|i| format!("{tag}-{i}")).collect()
}

#[tokio::test]
async fn appended_lines_are_read_back_in_order_per_route() {
    let dir = TempDir::new().unwrap();
    let queue = open(&dir);
    let r = route("agent", "c1");
    queue.put_route(&r, &secrets("t")).unwrap();

    let first = append(&queue, "agent", "srv-a", 1, lines("a", 1, 10), one(&r)).await;
    assert_eq!(
        first,
        AppendOutcome {
            acked_seq: 10,
            queued: 10,
            duplicates: 0
        }
    );
    append(&queue, "agent", "srv-b", 1, lines("b", 1, 5), one(&r)).await;
    append(&queue, "agent", "srv-a", 11, lines("a", 11, 20), one(&r)).await;

    let read = read_all(&queue, &r);
    let mut expected = names("a", 1, 10);
    expected.extend(names("b", 1, 5));
    expected.extend(names("a", 11, 20));
    assert_eq!(data(&read), expected);
    assert!(read.windows(2).all(|w| w[0].cursor < w[1].cursor));
    assert_eq!(&*read[10].agent_server_id, "srv-b");
    assert_eq!(read[0].line.timestamp_ns, 1);
    assert_eq!(
        queue.depth("agent"),
        (25, read.iter().map(|l| l.line.data.len() as u64).sum())
    );
}

#[tokio::test]
async fn duplicate_batch_after_reconnect_is_not_queued_twice() {
    let dir = TempDir::new().unwrap();
    let queue = open(&dir);
    let r = route("agent", "c1");
    queue.put_route(&r, &secrets("t")).unwrap();
    append(&queue, "agent", "srv", 1, lines("l", 1, 10), one(&r)).await;

    // The same batch again (the ack was lost before the reconnect).
    let again = append(&queue, "agent", "srv", 1, lines("l", 1, 10), one(&r)).await;
    assert_eq!(
        again,
        AppendOutcome {
            acked_seq: 10,
            queued: 0,
            duplicates: 10
        }
    );
    // Partial overlap: 6..=15, of which 6..=10 are already queued.
    let overlap = append(&queue, "agent", "srv", 6, lines("l", 6, 15), one(&r)).await;
    assert_eq!(
        overlap,
        AppendOutcome {
            acked_seq: 15,
            queued: 5,
            duplicates: 5
        }
    );
    // An older batch wholly below the mark acks the mark.
    let old = append(&queue, "agent", "srv", 2, lines("l", 2, 3), one(&r)).await;
    assert_eq!(old.acked_seq, 15);
    assert_eq!(old.queued, 0);

    assert_eq!(data(&read_all(&queue, &r)), names("l", 1, 15));
    assert_eq!(queue.acked_seq("agent", "srv", "boot-1").unwrap(), 15);
    // Another boot of the same server is another stream.
    assert_eq!(queue.acked_seq("agent", "srv", "boot-2").unwrap(), 0);
}

#[tokio::test]
async fn read_segments_gives_each_segment_its_stream_and_seqs_from_the_cursor_on() {
    let dir = TempDir::new().unwrap();
    let queue = open(&dir);
    let (r, other) = (route("agent", "c1"), route("agent", "c2"));
    queue.put_route(&r, &secrets("t")).unwrap();
    queue.put_route(&other, &secrets("u")).unwrap();
    append(&queue, "agent", "srv-a", 5, lines("a", 5, 9), one(&r)).await;
    append(&queue, "agent", "srv-b", 1, lines("b", 1, 3), one(&other)).await;
    append(&queue, "agent", "srv-a", 10, lines("a", 10, 11), one(&r)).await;

    let all = queue.read_segments(&r, None, 100, usize::MAX).unwrap();
    let seen: Vec<(&str, &str, u64, u32, Vec<u32>)> = all
        .iter()
        .map(|s| {
            (
                &*s.agent_server_id,
                &*s.boot_id,
                s.first_seq,
                s.last_index,
                s.lines.iter().map(|(i, _)| *i).collect(),
            )
        })
        .collect();
    assert_eq!(
        seen,
        [
            ("srv-a", "boot-1", 5, 4, vec![0, 1, 2, 3, 4]),
            ("srv-a", "boot-1", 10, 1, vec![0, 1]),
        ],
        "only the route's own segments"
    );
    // From inside the first segment: its later lines, then the next.
    let after = Some(Cursor {
        segment: all[0].segment,
        index: 2,
    });
    let rest = queue.read_segments(&r, after, 100, usize::MAX).unwrap();
    let indexes: Vec<Vec<u32>> = rest
        .iter()
        .map(|s| s.lines.iter().map(|(i, _)| *i).collect())
        .collect();
    assert_eq!(indexes, [vec![3, 4], vec![0, 1]]);
    assert_eq!(
        String::from_utf8_lossy(&rest[0].lines[0].1.data),
        "a-8",
        "index 3 of a segment starting at seq 5"
    );
    // At least one segment, however small the limit.
    assert_eq!(queue.read_segments(&r, None, 1, 1).unwrap().len(), 1);
    let end = Some(Cursor {
        segment: all[1].segment,
        index: 1,
    });
    assert!(queue
        .read_segments(&r, end, 100, usize::MAX)
        .unwrap()
        .is_empty());
}

#[tokio::test]
async fn gap_in_sequence_is_accepted() {
    let dir = TempDir::new().unwrap();
    let queue = open(&dir);
    let r = route("agent", "c1");
    queue.put_route(&r, &secrets("t")).unwrap();
    append(&queue, "agent", "srv", 1, lines("l", 1, 3), one(&r)).await;
    // The shim dropped 4..=9.
    let outcome = append(&queue, "agent", "srv", 10, lines("l", 10, 12), one(&r)).await;
    assert_eq!(
        outcome,
        AppendOutcome {
            acked_seq: 12,
            queued: 3,
            duplicates: 0
        }
    );
    let mut expected = names("l", 1, 3);
    expected.extend(names("l", 10, 12));
    assert_eq!(data(&read_all(&queue, &r)), expected);
}

#[tokio::test]
async fn batch_without_routes_advances_the_mark_but_stores_nothing() {
    let dir = TempDir::new().unwrap();
    let queue = open(&dir);
    let outcome = append(&queue, "agent", "srv", 1, lines("l", 1, 4), &[]).await;
    assert_eq!(
        outcome,
        AppendOutcome {
            acked_seq: 4,
            queued: 0,
            duplicates: 0
        }
    );
    assert_eq!(queue.depth("agent"), (0, 0));
    drop(queue);
    let queue = open(&dir);
    assert_eq!(queue.acked_seq("agent", "srv", "boot-1").unwrap(), 4);
}

#[tokio::test]
async fn invalid_appends_are_rejected_before_anything_is_written() {
    let dir = TempDir::new().unwrap();
    let queue = open(&dir);
    let known = route("agent", "c1");
    queue.put_route(&known, &secrets("t")).unwrap();
    let attempt = |first_seq: u64, routes: Vec<RouteKey>| {
        let queue = queue.clone();
        async move {
            queue
                .append(Append {
                    agent_id: "agent",
                    agent_server_id: "srv",
                    boot_id: "boot-1",
                    first_seq,
                    lines: lines("l", 1, 2),
                    routes: &routes,
                })
                .await
        }
    };
    assert!(matches!(
        attempt(1, vec![route("agent", "never-put")]).await,
        Err(QueueError::UnknownRoute { .. })
    ));
    assert!(matches!(
        attempt(1, vec![route("other-agent", "c1")]).await,
        Err(QueueError::WrongAgent { .. })
    ));
    assert!(matches!(
        attempt(0, vec![known.clone()]).await,
        Err(QueueError::InvalidSequence { .. })
    ));
    assert!(matches!(
        attempt(u64::MAX, vec![known.clone()]).await,
        Err(QueueError::InvalidSequence { .. })
    ));
    assert_eq!(queue.acked_seq("agent", "srv", "boot-1").unwrap(), 0);
    assert!(read_all(&queue, &known).is_empty());
}

#[tokio::test]
async fn acked_lines_survive_reopen() {
    let dir = TempDir::new().unwrap();
    let r = route("agent", "c1");
    {
        let queue = open(&dir);
        queue.put_route(&r, &secrets("t")).unwrap();
        append(&queue, "agent", "srv", 1, lines("l", 1, 2000), one(&r)).await;
        append(
            &queue,
            "agent",
            "srv",
            2001,
            lines("l", 2001, 2010),
            one(&r),
        )
        .await;
    }
    let (queue, report) = reopen(&dir);
    assert_eq!(report.lines, 2010);
    // 2000 lines are more than one segment holds (1,024): 2 + 1.
    assert_eq!(report.segments, 3);
    assert_eq!(report.rebuilt, 0, "sled agreed with the files");
    assert_eq!(report.routes, 1);
    assert_eq!(data(&read_all(&queue, &r)), names("l", 1, 2010));
    assert_eq!(queue.acked_seq("agent", "srv", "boot-1").unwrap(), 2010);
    assert_eq!(queue.depth("agent").0, 2010);
}

#[tokio::test]
async fn segment_is_freed_only_when_every_tagged_route_committed() {
    let dir = TempDir::new().unwrap();
    let queue = open(&dir);
    let (x, y) = (route("agent", "x"), route("agent", "y"));
    queue.put_route(&x, &secrets("tx")).unwrap();
    queue.put_route(&y, &secrets("ty")).unwrap();
    append(
        &queue,
        "agent",
        "srv",
        1,
        lines("l", 1, 4),
        &[x.clone(), y.clone()],
    )
    .await;
    let read = read_all(&queue, &x);
    let last = read.last().unwrap().cursor;
    let key = keys::segment("agent", last.segment);

    queue.commit(&x, last).unwrap();
    assert_eq!(queue.committed(&x).unwrap(), Some(last));
    assert!(
        queue.inner.db.get(&key).unwrap().is_some(),
        "y still holds it"
    );
    assert_eq!(queue.depth("agent").0, 4);

    // y commits only part of the segment: still held.
    queue.commit(&y, read[1].cursor).unwrap();
    assert!(queue.inner.db.get(&key).unwrap().is_some());
    assert_eq!(
        data(
            &queue
                .read(&y, Some(read[1].cursor), 10, usize::MAX)
                .unwrap()
        ),
        names("l", 3, 4)
    );

    queue.commit(&y, last).unwrap();
    assert!(queue.inner.db.get(&key).unwrap().is_none());
    assert_eq!(queue.depth("agent"), (0, 0));

    // A cursor never moves back, and the freed data stays freed after reopen.
    queue.commit(&y, read[0].cursor).unwrap();
    assert_eq!(queue.committed(&y).unwrap(), Some(last));
    // The segment file goes with the group commit that made its last
    // segment's removal durable.
    queue.flush().await.unwrap();
    assert_eq!(segment_files(&dir), 0);
    drop(queue);
    let (queue, report) = reopen(&dir);
    assert_eq!(report.lines, 0);
    assert_eq!(queue.committed(&y).unwrap(), Some(last));
}

/// The path of the queue's one segment file.
fn only_segment_file(dir: &TempDir) -> std::path::PathBuf {
    let mut files = std::fs::read_dir(dir.path().join("lines")).unwrap();
    let file = files.next().unwrap().unwrap().path();
    assert!(files.next().is_none(), "one segment file");
    file
}

/// Number of segment files in the queue directory.
fn segment_files(dir: &TempDir) -> usize {
    std::fs::read_dir(dir.path().join("lines"))
        .map(|entries| entries.count())
        .unwrap_or(0)
}

#[tokio::test]
async fn route_only_sees_segments_tagged_for_it() {
    let dir = TempDir::new().unwrap();
    let queue = open(&dir);
    let (x, y) = (route("agent", "x"), route("agent", "y"));
    queue.put_route(&x, &secrets("tx")).unwrap();
    queue.put_route(&y, &secrets("ty")).unwrap();
    append(&queue, "agent", "s1", 1, lines("x", 1, 3), one(&x)).await;
    append(&queue, "agent", "s2", 1, lines("y", 1, 3), one(&y)).await;
    append(
        &queue,
        "agent",
        "s3",
        1,
        lines("xy", 1, 3),
        &[x.clone(), y.clone()],
    )
    .await;
    append(&queue, "agent", "s1", 4, lines("x", 4, 5), one(&x)).await;

    let mut expected_x = names("x", 1, 3);
    expected_x.extend(names("xy", 1, 3));
    expected_x.extend(names("x", 4, 5));
    assert_eq!(data(&read_all(&queue, &x)), expected_x);
    let mut expected_y = names("y", 1, 3);
    expected_y.extend(names("xy", 1, 3));
    assert_eq!(data(&read_all(&queue, &y)), expected_y);

    // Another agent's route sees nothing of this agent.
    let other = route("agent-2", "x");
    queue.put_route(&other, &secrets("tx")).unwrap();
    assert!(read_all(&queue, &other).is_empty());
}

#[tokio::test]
async fn read_respects_max_lines_and_max_bytes_but_returns_at_least_one_line() {
    let dir = TempDir::new().unwrap();
    let queue = open(&dir);
    let r = route("agent", "c1");
    queue.put_route(&r, &secrets("t")).unwrap();
    // Each line is 4 bytes ("l-1".."l-9" are 3, so use two digits).
    append(&queue, "agent", "srv", 10, lines("l", 10, 29), one(&r)).await;
    assert_eq!(queue.read(&r, None, 3, usize::MAX).unwrap().len(), 3);
    assert_eq!(queue.read(&r, None, 100, 8).unwrap().len(), 2);
    assert_eq!(queue.read(&r, None, 100, 1).unwrap().len(), 1);
    assert_eq!(queue.read(&r, None, 0, 0).unwrap().len(), 1);
}

#[tokio::test]
async fn routes_and_secrets_survive_reopen() {
    let dir = TempDir::new().unwrap();
    let (x, y) = (route("agent/with/slashes", "x"), route("agent", "y"));
    {
        let queue = open(&dir);
        queue.put_route(&x, &secrets("token-x")).unwrap();
        queue.put_route(&y, &secrets("token-y")).unwrap();
        // Idempotent, and an update replaces the secrets.
        queue.put_route(&y, &secrets("token-y2")).unwrap();
        queue.flush().await.unwrap();
    }
    let (queue, report) = reopen(&dir);
    assert_eq!(report.routes, 2);
    let mut routes = queue.routes().unwrap();
    routes.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(
        routes,
        vec![
            (y.clone(), secrets("token-y2")),
            (x.clone(), secrets("token-x"))
        ]
    );
    assert_eq!(queue.committed(&x).unwrap(), None);
}

#[tokio::test]
async fn secrets_never_in_debug_output() {
    let dir = TempDir::new().unwrap();
    let r = route("agent", "c1");
    let secret = "very-secret-token-value";
    {
        let queue = open(&dir);
        queue.put_route(&r, &secrets(secret)).unwrap();
        append(&queue, "agent", "srv", 1, lines("l", 1, 2), one(&r)).await;
        let shown = format!(
            "{queue:?} {:?} {:?}",
            queue.routes().unwrap(),
            queue.read(&r, None, 10, usize::MAX).unwrap()
        );
        assert!(!shown.contains(secret), "{shown}");
        let error = queue
            .commit(
                &r,
                Cursor {
                    segment: u64::MAX,
                    index: 0,
                },
            )
            .unwrap_err();
        assert!(!format!("{error} {error:?}").contains(secret));
    }
    // A corrupt route record: the error and the report do not show it.
    {
        let db = when_unlocked(|| super::open::open_sled(dir.path(), super::DEFAULT_CACHE_BYTES));
        let key = keys::route(&r);
        let mut value = db.get(&key).unwrap().unwrap().to_vec();
        let last = value.len() - 1;
        value[last] ^= 0x55;
        db.insert(&key, value.clone()).unwrap();
        let error = QueueError::Corrupt {
            key: keys::describe(&key),
            reason: records::unseal_secrets(&seal_key(), &key, &value).unwrap_err(),
        };
        assert!(!format!("{error} {error:?}").contains(secret));
        db.flush().unwrap();
    }
    let (queue, report) = reopen(&dir);
    assert_eq!(
        report.rebuilt, 1,
        "the route record came back from the files"
    );
    assert!(!format!("{queue:?} {report:?}").contains(secret));
}

#[tokio::test]
async fn garbled_index_entries_are_rebuilt_from_the_segment_files_and_nothing_is_lost() {
    let dir = TempDir::new().unwrap();
    let r = route("agent", "c1");
    let bad_segment;
    {
        let queue = open(&dir);
        queue.put_route(&r, &secrets("t")).unwrap();
        append(&queue, "agent", "srv", 1, lines("a", 1, 3), one(&r)).await;
        append(&queue, "agent", "srv", 4, lines("b", 4, 6), one(&r)).await;
        append(&queue, "agent", "srv", 7, lines("c", 7, 9), one(&r)).await;
        bad_segment = read_all(&queue, &r)[3].cursor.segment;
    }
    {
        let db = when_unlocked(|| super::open::open_sled(dir.path(), super::DEFAULT_CACHE_BYTES));
        db.insert(
            keys::segment("agent", bad_segment),
            &b"\x01garbage bytes"[..],
        )
        .unwrap();
        db.insert(b"zz unknown key", &b"?"[..]).unwrap();
        db.insert(keys::hwm("agent", "srv", "boot-1"), &b"short"[..])
            .unwrap();
        db.flush().unwrap();
    }
    let (queue, report) = reopen(&dir);
    assert_eq!((report.segments, report.lines), (3, 9));
    assert_eq!(report.rebuilt, 2, "the segment entry and the mark");
    assert_eq!(
        data(&read_all(&queue, &r)),
        [names("a", 1, 3), names("b", 4, 6), names("c", 7, 9)].concat()
    );
    assert_eq!(queue.acked_seq("agent", "srv", "boot-1").unwrap(), 9);
    drop(queue);
    let (_, report) = reopen(&dir);
    assert_eq!(report.rebuilt, 0, "rebuilt once");
}

#[tokio::test]
async fn a_flipped_byte_in_a_segment_file_loses_only_its_line_counted_and_reported_once() {
    let dir = TempDir::new().unwrap();
    let queue = open(&dir);
    let (x, y) = (route("agent", "x"), route("agent", "y"));
    queue.put_route(&x, &secrets("tx")).unwrap();
    queue.put_route(&y, &secrets("ty")).unwrap();
    append(
        &queue,
        "agent",
        "srv",
        1,
        lines("l", 1, 1000),
        &[x.clone(), y.clone()],
    )
    .await;
    // One byte in the middle of the lines rots while the queue runs.
    let file = only_segment_file(&dir);
    let mut bytes = std::fs::read(&file).unwrap();
    let at = bytes.len() / 2;
    bytes[at] ^= 0x01;
    std::fs::write(&file, bytes).unwrap();

    for r in [&x, &y] {
        let read = data(&read_all(&queue, r));
        assert_eq!(read.len(), 999, "only the touched line is lost");
        let all = names("l", 1, 1000);
        assert!(read.iter().all(|l| all.contains(l)));
        assert_eq!(queue.route_damaged(r), 1);
    }
    let mut drops = queue.take_damage_drops();
    drops.sort_by(|a, b| a.route.cred_id.cmp(&b.route.cred_id));
    let lost: Vec<(&str, u64)> = drops
        .iter()
        .map(|d| (d.route.cred_id.as_str(), d.lines))
        .collect();
    assert_eq!(
        lost,
        vec![("x", 1), ("y", 1)],
        "once per route, not per read"
    );
    assert!(queue.take_damage_drops().is_empty());
}

#[tokio::test]
async fn a_segment_file_of_another_format_refuses_the_start_and_changes_nothing() {
    let dir = TempDir::new().unwrap();
    {
        let queue = open(&dir);
        let r = route("agent", "c1");
        queue.put_route(&r, &secrets("t")).unwrap();
        append(&queue, "agent", "srv", 1, lines("l", 1, 3), one(&r)).await;
    }
    let file = only_segment_file(&dir);
    let mut bytes = std::fs::read(&file).unwrap();
    bytes[11] = 7; // the format version
    std::fs::write(&file, bytes).unwrap();
    let before = snapshot(dir.path());
    let error = refused(|| Queue::open(dir.path(), seal_key()));
    let shown = error.to_string();
    assert!(
        shown.contains("version 7") && shown.contains("format version 1"),
        "{shown}"
    );
    assert_eq!(snapshot(dir.path()), before);
}

#[tokio::test]
async fn lines_appended_after_reopen_come_after_the_committed_cursor() {
    let dir = TempDir::new().unwrap();
    let r = route("agent", "c1");
    let committed;
    {
        let queue = open(&dir);
        queue.put_route(&r, &secrets("t")).unwrap();
        append(&queue, "agent", "srv", 1, lines("l", 1, 5), one(&r)).await;
        committed = read_all(&queue, &r).last().unwrap().cursor;
        queue.commit(&r, committed).unwrap();
        queue.flush().await.unwrap();
    }
    // Every segment was freed; new ids must still sort after the cursor.
    let queue = open(&dir);
    append(&queue, "agent", "srv", 6, lines("l", 6, 8), one(&r)).await;
    let after = queue.committed(&r).unwrap();
    assert_eq!(after, Some(committed));
    assert_eq!(
        data(&queue.read(&r, after, 100, usize::MAX).unwrap()),
        names("l", 6, 8)
    );
}

#[tokio::test]
async fn commit_past_anything_written_is_rejected() {
    let dir = TempDir::new().unwrap();
    let queue = open(&dir);
    let r = route("agent", "c1");
    queue.put_route(&r, &secrets("t")).unwrap();
    append(&queue, "agent", "srv", 1, lines("l", 1, 1), one(&r)).await;
    let ahead = Cursor {
        segment: 1_000_000,
        index: 0,
    };
    assert!(matches!(
        queue.commit(&r, ahead),
        Err(QueueError::CursorAhead { .. })
    ));
    assert_eq!(queue.committed(&r).unwrap(), None);
}

#[tokio::test]
async fn subscribe_wakes_when_lines_are_appended() {
    let dir = TempDir::new().unwrap();
    let queue = open(&dir);
    let r = route("agent", "c1");
    queue.put_route(&r, &secrets("t")).unwrap();
    let mut rx = queue.subscribe("agent");
    let before = *rx.borrow_and_update();
    append(&queue, "agent", "srv", 1, lines("l", 1, 1), one(&r)).await;
    assert!(rx.has_changed().unwrap());
    let newest = *rx.borrow_and_update();
    assert!(newest > before);
    assert_eq!(
        queue.read(&r, None, 1, 1).unwrap()[0].cursor.segment,
        newest
    );
    // A duplicate stores nothing and wakes no one.
    append(&queue, "agent", "srv", 1, lines("l", 1, 1), one(&r)).await;
    assert!(!rx.has_changed().unwrap());
}

#[tokio::test]
async fn concurrent_appends_share_flushes() {
    let dir = TempDir::new().unwrap();
    let queue = open(&dir);
    let r = route("agent", "c1");
    queue.put_route(&r, &secrets("t")).unwrap();
    queue.flush().await.unwrap();
    let flushes_before = queue.flush_count();

    // 32 streams (plus 8 repeats of stream 0, racing as on a reconnect)
    // append at once. The test runtime is single-threaded and `join_all`
    // polls every append before the flusher task can run, so all of them
    // register for the same flush.
    let routes = [r.clone()];
    let appends = (0..40u64).map(|i| {
        let queue = queue.clone();
        let routes = routes.clone();
        async move {
            let server = format!("srv-{}", if i < 32 { i } else { 0 });
            let outcome = queue
                .append(Append {
                    agent_id: "agent",
                    agent_server_id: &server,
                    boot_id: "boot-1",
                    first_seq: 1,
                    lines: lines(&server, 1, 10),
                    routes: &routes,
                })
                .await;
            (server, outcome)
        }
    });
    let results = futures::future::join_all(appends).await;

    assert_eq!(queue.flush_count() - flushes_before, 1);
    let mut queued = BTreeMap::new();
    for (server, outcome) in results {
        let outcome = outcome.expect("append succeeds");
        assert_eq!(outcome.acked_seq, 10);
        assert_eq!(outcome.queued + outcome.duplicates, 10);
        *queued.entry(server).or_insert(0) += outcome.queued;
    }
    assert!(queued.values().all(|n| *n == 10), "{queued:?}");
    let read = read_all(&queue, &r);
    assert_eq!(read.len(), 320);
    for i in 0..32 {
        let server = format!("srv-{i}");
        let mine: Vec<_> = read
            .iter()
            .filter(|l| *l.agent_server_id == *server)
            .cloned()
            .collect();
        assert_eq!(data(&mine), names(&server, 1, 10));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_appends_from_many_tasks_are_all_durable_and_read_once() {
    let dir = TempDir::new().unwrap();
    let r = route("agent", "c1");
    let queue = open(&dir);
    queue.put_route(&r, &secrets("t")).unwrap();
    let mut tasks = Vec::new();
    for t in 0..4 {
        let queue = queue.clone();
        let routes = vec![r.clone()];
        tasks.push(tokio::spawn(async move {
            let server = format!("srv-{t}");
            for b in 0..25u64 {
                let first = b * 40 + 1;
                let outcome = queue
                    .append(Append {
                        agent_id: "agent",
                        agent_server_id: &server,
                        boot_id: "boot-1",
                        first_seq: first,
                        lines: lines(&server, first, first + 39),
                        routes: &routes,
                    })
                    .await
                    .expect("append");
                assert_eq!(outcome.acked_seq, first + 39);
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let flushes = queue.flush_count();
    drop(queue);
    let queue = open(&dir);
    let read = read_all(&queue, &r);
    assert_eq!(read.len(), 4000);
    for t in 0..4 {
        let server = format!("srv-{t}");
        let mine: Vec<_> = read
            .iter()
            .filter(|l| *l.agent_server_id == *server)
            .cloned()
            .collect();
        assert_eq!(data(&mine), names(&server, 1, 1000));
    }
    assert!(
        flushes <= 100,
        "one flush per append at most, got {flushes}"
    );
}

#[tokio::test]
async fn route_secrets_are_encrypted_in_the_database_files() {
    let dir = TempDir::new().unwrap();
    let secret = "plain-secret-on-disk-7f3a9c";
    {
        let queue = open(&dir);
        queue
            .put_route(&route("agent", "c1"), &secrets(secret))
            .unwrap();
        queue.flush().await.unwrap();
    }
    // The scanner works: the same bytes are found in a plain file.
    std::fs::write(dir.path().join("control"), secret).unwrap();
    assert!(found_in_files(dir.path(), secret.as_bytes()));
    std::fs::remove_file(dir.path().join("control")).unwrap();
    assert!(!found_in_files(dir.path(), secret.as_bytes()));
    let (queue, _) = reopen(&dir);
    assert_eq!(
        queue.routes().unwrap(),
        vec![(route("agent", "c1"), secrets(secret))]
    );
}

#[tokio::test]
async fn routes_sealed_under_another_key_keep_their_lines_until_the_key_returns() {
    let dir = TempDir::new().unwrap();
    let r = route("agent", "c1");
    {
        let queue = open(&dir);
        queue.put_route(&r, &secrets("token")).unwrap();
        append(&queue, "agent", "srv", 1, lines("l", 1, 4), one(&r)).await;
        queue.flush().await.unwrap();
    }
    {
        let (queue, report) = reopen_with(&dir, SealKey::derive(b"another-signing-key"));
        assert_eq!(report.sealed_under_other_key, 1);
        assert_eq!((report.rebuilt, report.lines), (0, 4));
        assert!(queue.routes().unwrap().is_empty(), "not delivered");
        queue.flush().await.unwrap();
    }
    let (queue, report) = reopen(&dir);
    assert_eq!(report.sealed_under_other_key, 0);
    assert_eq!(queue.routes().unwrap(), vec![(r.clone(), secrets("token"))]);
    assert_eq!(data(&read_all(&queue, &r)), names("l", 1, 4));
}

fn open_limited(dir: &TempDir, agent_quota_bytes: u64) -> Queue {
    let limits = QueueLimits {
        agent_quota_bytes,
        min_free_bytes: 0,
        ..QueueLimits::default()
    };
    when_unlocked(|| Queue::open_with(dir.path(), seal_key(), limits)).0
}

/// `count` lines of exactly 10 data bytes, numbered from `first`.
fn ten_byte_lines(first: u64, count: u64) -> Vec<Line> {
    (first..first + count)
        .map(|i| Line {
            timestamp_ns: i64::try_from(i).unwrap() * 1_000,
            data: Bytes::from(format!("line-{i:05}")),
            ..Default::default()
        })
        .collect()
}

#[tokio::test]
async fn over_quota_drops_the_oldest_segments_counts_them_and_keeps_the_new_batch() {
    let dir = TempDir::new().unwrap();
    // Room for three batches of 10 lines of 10 bytes.
    let queue = open_limited(&dir, 300);
    let r = route("agent", "c1");
    queue.put_route(&r, &secrets("t")).unwrap();
    for batch in 0..3 {
        append(
            &queue,
            "agent",
            "srv",
            batch * 10 + 1,
            ten_byte_lines(batch * 10 + 1, 10),
            one(&r),
        )
        .await;
    }
    assert_eq!(queue.depth("agent"), (30, 300));
    assert!(
        queue.take_quota_drops().is_empty(),
        "nothing dropped while within the quota"
    );

    let fourth = append(&queue, "agent", "srv", 31, ten_byte_lines(31, 10), one(&r)).await;
    assert_eq!(fourth.queued, 10, "the batch being appended is kept");
    assert_eq!(queue.depth("agent"), (30, 300));
    let read = read_all(&queue, &r);
    assert_eq!(
        read.first().map(|l| l.line.data.clone()),
        Some(Bytes::from("line-00011"))
    );
    assert_eq!(read.len(), 30);
    assert_eq!(
        queue.take_quota_drops(),
        vec![QuotaDrop {
            route: r.clone(),
            lines: 10,
            bytes: 100,
            oldest_ns: 1_000,
            newest_ns: 10_000,
        }]
    );
    assert!(queue.take_quota_drops().is_empty(), "drops are taken once");
}

#[tokio::test]
async fn quota_drop_moves_cursors_past_the_dropped_segments_and_counts_only_undelivered_lines() {
    let dir = TempDir::new().unwrap();
    let queue = open_limited(&dir, 200);
    let (x, y) = (route("agent", "x"), route("agent", "y"));
    queue.put_route(&x, &secrets("t")).unwrap();
    queue.put_route(&y, &secrets("u")).unwrap();
    let both = [x.clone(), y.clone()];
    append(&queue, "agent", "srv", 1, ten_byte_lines(1, 10), &both).await;
    append(&queue, "agent", "srv", 11, ten_byte_lines(11, 10), &both).await;
    // x delivered 4 lines of the first segment, y nothing.
    let x_read = queue.read(&x, None, 4, usize::MAX).unwrap();
    queue.commit(&x, x_read[3].cursor).unwrap();

    append(&queue, "agent", "srv", 21, ten_byte_lines(21, 10), &both).await;
    let mut drops = queue.take_quota_drops();
    drops.sort_by(|a, b| a.route.cmp(&b.route));
    let lost: Vec<(String, u64)> = drops
        .iter()
        .map(|d| (d.route.cred_id.clone(), d.lines))
        .collect();
    assert_eq!(lost, vec![("x".to_string(), 6), ("y".to_string(), 10)]);
    // Both routes continue after the dropped segment, from its next line.
    for r in [&x, &y] {
        let read = queue
            .read(r, queue.committed(r).unwrap(), 100, usize::MAX)
            .unwrap();
        assert_eq!(
            data(&read).first().map(String::as_str),
            Some("line-00011"),
            "{r}"
        );
        assert_eq!(read.len(), 20);
    }
    // A late commit of a cursor inside the dropped segment changes nothing.
    queue.commit(&x, x_read[0].cursor).unwrap();
    assert_eq!(queue.depth("agent"), (20, 200));

    // The moved cursors are durable: a reopen reads the same.
    queue.flush().await.unwrap();
    drop(queue);
    let queue = open_limited(&dir, 200);
    let read = queue
        .read(&y, queue.committed(&y).unwrap(), 100, usize::MAX)
        .unwrap();
    assert_eq!(read.len(), 20);
}

#[tokio::test]
async fn one_agent_over_quota_leaves_other_agents_untouched() {
    let dir = TempDir::new().unwrap();
    let queue = open_limited(&dir, 100);
    let (a, b) = (route("a", "c1"), route("b", "c1"));
    queue.put_route(&a, &secrets("t")).unwrap();
    queue.put_route(&b, &secrets("t")).unwrap();
    append(&queue, "b", "srv", 1, ten_byte_lines(1, 10), one(&b)).await;
    for batch in 0..5 {
        append(
            &queue,
            "a",
            "srv",
            batch * 10 + 1,
            ten_byte_lines(batch * 10 + 1, 10),
            one(&a),
        )
        .await;
    }
    assert_eq!(queue.depth("a"), (10, 100));
    assert_eq!(queue.depth("b"), (10, 100));
    let drops = queue.take_quota_drops();
    assert!(drops.iter().all(|d| d.route == a), "{drops:?}");
    assert_eq!(drops.iter().map(|d| d.lines).sum::<u64>(), 40);
}

#[tokio::test]
async fn a_batch_larger_than_the_whole_quota_is_refused_and_nothing_is_dropped() {
    let dir = TempDir::new().unwrap();
    let queue = open_limited(&dir, 50);
    let r = route("agent", "c1");
    queue.put_route(&r, &secrets("t")).unwrap();
    append(&queue, "agent", "srv", 1, ten_byte_lines(1, 5), one(&r)).await;
    let err = queue
        .append(Append {
            agent_id: "agent",
            agent_server_id: "srv",
            boot_id: "boot-1",
            first_seq: 6,
            lines: ten_byte_lines(6, 6),
            routes: one(&r),
        })
        .await
        .unwrap_err();
    assert!(err.is_out_of_space(), "{err}");
    assert!(err.to_string().contains("--agent-quota-bytes"), "{err}");
    assert_eq!(queue.depth("agent"), (5, 50));
    assert_eq!(
        queue.acked_seq("agent", "srv", "boot-1").unwrap(),
        5,
        "not acked"
    );
}

#[tokio::test]
async fn appends_are_refused_below_the_disk_watermark_naming_the_dir_and_the_fix() {
    let dir = TempDir::new().unwrap();
    let limits = QueueLimits {
        agent_quota_bytes: u64::MAX,
        // More than any disk has free.
        min_free_bytes: u64::MAX,
        ..QueueLimits::default()
    };
    let (queue, _) = when_unlocked(|| Queue::open_with(dir.path(), seal_key(), limits));
    let r = route("agent", "c1");
    queue.put_route(&r, &secrets("t")).unwrap();
    let err = queue
        .append(Append {
            agent_id: "agent",
            agent_server_id: "srv",
            boot_id: "boot-1",
            first_seq: 1,
            lines: lines("l", 1, 3),
            routes: one(&r),
        })
        .await
        .unwrap_err();
    assert!(err.is_out_of_space(), "{err}");
    let text = err.to_string();
    assert!(text.contains(&format!("{:?}", dir.path())), "{text}");
    assert!(text.contains("LOGDRAIN_DISK_MIN_FREE_BYTES"), "{text}");
    assert!(queue.disk_full());
    assert_eq!(queue.depth("agent"), (0, 0));
}

/// Every file under `dir` with its bytes (to check that nothing changed).
fn snapshot(dir: &std::path::Path) -> BTreeMap<std::path::PathBuf, Vec<u8>> {
    let mut files = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(next) = stack.pop() {
        for entry in std::fs::read_dir(&next).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else {
                let bytes = std::fs::read(&path).unwrap();
                files.insert(path, bytes);
            }
        }
    }
    files
}

#[tokio::test]
async fn a_database_sled_cannot_open_refuses_the_start_and_changes_nothing() {
    let dir = TempDir::new().unwrap();
    let qdir = dir.path().join("queue");
    {
        let (queue, _) = Queue::open(&qdir, seal_key()).unwrap();
        let r = route("agent", "c1");
        queue.put_route(&r, &secrets("t")).unwrap();
        append(&queue, "agent", "srv", 1, lines("l", 1, 100), one(&r)).await;
    }
    // Garbage over sled's config and data file: sled cannot say it is
    // damaged (it reports an unsupported version), so this is doubt.
    for entry in std::fs::read_dir(&qdir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_file() {
            std::fs::write(&path, vec![0xA5; 4096]).unwrap();
        }
    }
    let before = snapshot(dir.path());
    let error = refused(|| Queue::open_or_set_aside(&qdir, seal_key(), QueueLimits::default()));
    let shown = error.to_string();
    assert!(shown.contains("the start is refused"), "{shown}");
    assert_eq!(snapshot(dir.path()), before, "not a byte moved");
}

#[tokio::test]
async fn sled_holds_segment_headers_and_the_lines_live_in_segment_files() {
    let dir = TempDir::new().unwrap();
    let queue = open(&dir);
    let r = route("agent", "c1");
    queue.put_route(&r, &secrets("t")).unwrap();
    let long: Vec<Line> = (1..=1000).map(|i| line(&format!("{i:0100}"))).collect();
    append(&queue, "agent", "srv", 1, long, one(&r)).await;
    let segment = queue.read(&r, None, 1, usize::MAX).unwrap()[0]
        .cursor
        .segment;
    let value = queue
        .inner
        .db
        .get(keys::segment("agent", segment))
        .unwrap()
        .unwrap();
    // 100 KB of lines; sled's value is their header and location only.
    assert!(value.len() < 200, "sled value of {} bytes", value.len());
    assert_eq!(segment_files(&dir), 1);
    assert_eq!(read_all(&queue, &r).len(), 1000);
}

#[tokio::test]
async fn lines_cut_from_a_segment_file_by_a_crash_are_accepted_again() {
    let dir = TempDir::new().unwrap();
    let r = route("agent", "c1");
    {
        let queue = open(&dir);
        queue.put_route(&r, &secrets("t")).unwrap();
        append(&queue, "agent", "srv", 1, lines("a", 1, 3), one(&r)).await;
        append(&queue, "agent", "srv", 4, lines("b", 4, 6), one(&r)).await;
    }
    // The machine stopped before the second batch's lines reached the disk
    // but after sled wrote its header and high-water mark.
    let file = only_segment_file(&dir);
    let len = std::fs::metadata(&file).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&file)
        .unwrap()
        .set_len(len - 5)
        .unwrap();

    let (queue, report) = reopen(&dir);
    assert_eq!(report.rebuilt, 1, "its index entry went");
    assert_eq!(report.lines, 3);
    assert_eq!(queue.acked_seq("agent", "srv", "boot-1").unwrap(), 3);
    // The shim never got an ack for 4..=6 and sends them again.
    let again = append(&queue, "agent", "srv", 4, lines("b", 4, 6), one(&r)).await;
    assert_eq!((again.queued, again.duplicates), (3, 0));
    assert_eq!(
        data(&read_all(&queue, &r)),
        [names("a", 1, 3), names("b", 4, 6)].concat()
    );
}

#[tokio::test]
async fn a_damaged_record_header_loses_its_segment_counted_and_the_next_is_delivered() {
    let dir = TempDir::new().unwrap();
    let queue = open(&dir);
    let r = route("agent", "c1");
    queue.put_route(&r, &secrets("t")).unwrap();
    append(&queue, "agent", "srv", 1, lines("a", 1, 2), one(&r)).await;
    append(&queue, "agent", "srv", 3, lines("b", 3, 4), one(&r)).await;
    let first = queue.read(&r, None, 1, usize::MAX).unwrap()[0]
        .cursor
        .segment;
    let at = lock(&queue.inner.agents.read().unwrap()["agent"].index)
        .segment(first)
        .unwrap()
        .at;
    let file = only_segment_file(&dir);
    let mut bytes = std::fs::read(&file).unwrap();
    bytes[at.offset as usize + 20] ^= 0xff; // inside its record header
    std::fs::write(&file, bytes).unwrap();

    assert_eq!(data(&read_all(&queue, &r)), names("b", 3, 4));
    assert_eq!(queue.route_damaged(&r), 2);
    drop(queue);
    // At the next open the scan skips to the next record; sled still lists
    // the damaged segment, so reading it counts its lines again there.
    let (queue, report) = reopen(&dir);
    assert_eq!(report.damaged_regions, 1);
    assert_eq!(data(&read_all(&queue, &r)), names("b", 3, 4));
    assert_eq!(queue.route_damaged(&r), 2);
}

/// How the store-damage tests damage sled's data file.
#[derive(Clone, Copy, Debug)]
enum StoreDamage {
    TruncatedToHalf,
    TruncatedToZero,
    OverwrittenInTheMiddle,
    Deleted,
}

fn damage_store(dir: &std::path::Path, damage: StoreDamage) {
    use std::os::unix::fs::FileExt;
    let db = dir.join("db");
    let len = std::fs::metadata(&db).unwrap().len();
    let file = || std::fs::OpenOptions::new().write(true).open(&db).unwrap();
    match damage {
        StoreDamage::TruncatedToHalf => file().set_len(len / 2).unwrap(),
        StoreDamage::TruncatedToZero => file().set_len(0).unwrap(),
        StoreDamage::OverwrittenInTheMiddle => {
            file().write_all_at(&vec![0xA5; 4096], len / 2).unwrap()
        }
        StoreDamage::Deleted => std::fs::remove_file(&db).unwrap(),
    }
}

#[tokio::test]
async fn a_damaged_or_lost_sled_database_is_rebuilt_from_the_segment_files_and_loses_no_line() {
    for damage in [
        StoreDamage::TruncatedToHalf,
        StoreDamage::TruncatedToZero,
        StoreDamage::OverwrittenInTheMiddle,
        StoreDamage::Deleted,
    ] {
        let dir = TempDir::new().unwrap();
        let (x, y) = (route("agent", "x"), route("agent", "y"));
        {
            let queue = open(&dir);
            queue.put_route(&x, &secrets("tx")).unwrap();
            queue.put_route(&y, &secrets("ty")).unwrap();
            for first in (1..=3000).step_by(500) {
                let batch = lines("l", first, first + 499);
                append(
                    &queue,
                    "agent",
                    "srv",
                    first,
                    batch,
                    &[x.clone(), y.clone()],
                )
                .await;
            }
            // x delivered its first 1,000 lines; y nothing.
            let read = queue.read(&x, None, 1000, usize::MAX).unwrap();
            queue.commit(&x, read[999].cursor).unwrap();
            queue.flush().await.unwrap();
        }
        damage_store(dir.path(), damage);

        let (queue, report) = reopen(&dir);
        let mut routes = queue.routes().unwrap();
        routes.sort_by(|a, b| a.0.cred_id.cmp(&b.0.cred_id));
        assert_eq!(
            routes,
            vec![(x.clone(), secrets("tx")), (y.clone(), secrets("ty"))],
            "{damage:?}: credentials come back from the files"
        );
        assert_eq!(
            data(&read_all(&queue, &y)),
            names("l", 1, 3000),
            "{damage:?}"
        );
        let for_x = data(&read_all(&queue, &x));
        assert!(
            for_x.ends_with(&names("l", 1001, 3000)),
            "{damage:?}: x lost nothing undelivered"
        );
        assert_eq!(
            for_x.len() as u64 - 2000,
            report.rebuilt_lines.min(for_x.len() as u64 - 2000),
            "{damage:?}: lines x gets again are counted as rebuilt"
        );
        assert!(
            queue.acked_seq("agent", "srv", "boot-1").unwrap() >= 3000,
            "{damage:?}: resends stay duplicates"
        );
        assert_eq!(segment_files(&dir), 1, "{damage:?}: no file deleted");
    }
}

#[tokio::test]
async fn recover_rebuilds_a_queue_whose_sled_database_cannot_be_opened() {
    let dir = TempDir::new().unwrap();
    let r = route("agent", "c1");
    {
        let queue = open(&dir);
        queue.put_route(&r, &secrets("t")).unwrap();
        append(&queue, "agent", "srv", 1, lines("l", 1, 100), one(&r)).await;
    }
    std::fs::write(dir.path().join("conf"), vec![0xA5; 4096]).unwrap();
    assert!(Queue::open(dir.path(), seal_key()).is_err(), "refused");

    let (report, aside) = when_unlocked(|| recover(dir.path(), seal_key()));
    let aside = aside.expect("sled's files were set aside");
    assert!(aside.join("conf").exists(), "kept for inspection");
    assert_eq!(report.lines, 100);
    let (queue, _) = reopen(&dir);
    assert_eq!(data(&read_all(&queue, &r)), names("l", 1, 100));
    drop(queue);
    // A queue that opens is left alone.
    let (_, aside) = when_unlocked(|| recover(dir.path(), seal_key()));
    assert!(aside.is_none());
}

#[tokio::test]
async fn a_read_that_meets_an_io_error_is_retried_and_sets_nothing_aside() {
    let dir = TempDir::new().unwrap();
    let queue = open(&dir);
    let r = route("agent", "c1");
    queue.put_route(&r, &secrets("t")).unwrap();
    append(&queue, "agent", "srv", 1, lines("l", 1, 500), one(&r)).await;
    // The file cannot be opened for a while (as under EMFILE or EACCES).
    let file = only_segment_file(&dir);
    let away = file.with_extension("away");
    std::fs::rename(&file, &away).unwrap();
    queue.inner.files.forget_handles();
    let error = queue.read(&r, None, 1000, usize::MAX).unwrap_err();
    assert!(matches!(error, QueueError::Read { .. }), "{error}");
    assert!(error.to_string().contains("retrying"), "{error}");
    assert_eq!(queue.depth("agent").0, 500, "nothing set aside");

    std::fs::rename(&away, &file).unwrap();
    assert_eq!(data(&read_all(&queue, &r)), names("l", 1, 500));
    assert_eq!(queue.route_damaged(&r), 0);
    assert!(queue.take_damage_drops().is_empty());
}

#[tokio::test]
async fn a_damaged_route_record_no_line_needs_is_dropped_and_the_queue_still_opens() {
    let dir = TempDir::new().unwrap();
    let r = route("agent", "c1");
    {
        let queue = open(&dir);
        queue.put_route(&r, &secrets("t")).unwrap();
        queue.flush().await.unwrap();
        let key = keys::route(&r);
        let mut value = queue.inner.db.get(&key).unwrap().unwrap().to_vec();
        let last = value.len() - 1;
        value[last] ^= 0x55;
        queue.inner.db.insert(&key, value).unwrap();
        queue.flush().await.unwrap();
    }
    let (queue, report) = reopen(&dir);
    assert_eq!((report.rebuilt, report.routes), (1, 0));
    assert!(queue.routes().unwrap().is_empty());
}

#[tokio::test]
async fn a_file_holding_only_a_record_cut_short_by_the_machine_stopping_is_deleted_at_open() {
    let dir = TempDir::new().unwrap();
    let r = route("agent", "c1");
    {
        let queue = open(&dir);
        queue.put_route(&r, &secrets("t")).unwrap();
        append(&queue, "agent", "srv", 1, lines("a", 1, 3), one(&r)).await;
    }
    // The machine stopped inside the first record's header (never acked).
    let file = only_segment_file(&dir);
    let len = std::fs::metadata(&file).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&file)
        .unwrap()
        .set_len(len - 40)
        .unwrap();
    let (queue, report) = reopen(&dir);
    assert_eq!(report.lines, 0, "{report:?} {len}");
    assert_eq!(queue.acked_seq("agent", "srv", "boot-1").unwrap(), 0);
    assert_eq!(segment_files(&dir), 0, "nothing in it was ever acked");
}

fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

#[tokio::test]
async fn any_single_flipped_byte_of_a_segment_file_loses_at_most_its_segment_and_every_loss_is_counted(
) {
    let pristine = TempDir::new().unwrap();
    let r = route("agent", "c1");
    {
        let queue = open(&pristine);
        queue.put_route(&r, &secrets("t")).unwrap();
        append(&queue, "agent", "srv", 1, lines("l", 1, 10), one(&r)).await;
        append(&queue, "agent", "srv", 11, lines("m", 11, 20), one(&r)).await;
    }
    let name = only_segment_file(&pristine)
        .strip_prefix(pristine.path())
        .unwrap()
        .to_path_buf();
    let len = std::fs::metadata(pristine.path().join(&name))
        .unwrap()
        .len() as usize;
    for at in 0..len {
        let dir = TempDir::new().unwrap();
        copy_dir(pristine.path(), dir.path());
        let file = dir.path().join(&name);
        let mut bytes = std::fs::read(&file).unwrap();
        bytes[at] ^= 0x10;
        std::fs::write(&file, bytes).unwrap();
        let (queue, _) = reopen(&dir);
        let read = read_all(&queue, &r);
        let lost = queue.route_damaged(&r);
        assert_eq!(
            read.len() as u64 + lost,
            20,
            "byte {at}: every line is delivered or counted"
        );
        assert!(lost <= 10, "byte {at}: at most one segment lost");
    }
}

#[tokio::test]
async fn when_a_routes_secrets_were_first_seen_survives_a_restart_and_an_update() {
    let dir = TempDir::new().unwrap();
    let r = route("a1", "c1");
    {
        let queue = open(&dir);
        queue.put_route_since(&r, &secrets("token"), 1_000).unwrap();
        // Adopting newer secrets stores their own first-seen time.
        queue.put_route_since(&r, &secrets("newer"), 2_000).unwrap();
        queue.flush().await.unwrap();
    }
    let (queue, _) = reopen(&dir);
    assert_eq!(
        queue.stored_routes().unwrap(),
        vec![(r.clone(), secrets("newer"), 2_000)]
    );
}

#[tokio::test]
async fn a_route_is_removed_only_once_no_queued_segment_is_tagged_with_it() {
    let dir = TempDir::new().unwrap();
    let r1 = route("a1", "c1");
    let r2 = route("a1", "c2");
    {
        let queue = open(&dir);
        queue.put_route(&r1, &secrets("one")).unwrap();
        queue.put_route(&r2, &secrets("two")).unwrap();
        append(
            &queue,
            "a1",
            "srv",
            1,
            lines("l", 1, 3),
            &[r1.clone(), r2.clone()],
        )
        .await;
        let last = read_all(&queue, &r1).last().unwrap().cursor;
        queue.commit(&r1, last).unwrap();
        assert!(
            !queue.remove_route(&r1).unwrap(),
            "r2 still needs the segment tagged with r1"
        );
        queue.commit(&r2, last).unwrap();
        queue.flush().await.unwrap();
        assert_eq!(queue.depth("a1"), (0, 0), "the segment is deleted");
        assert!(queue.remove_route(&r1).unwrap());
        assert!(!queue.remove_route(&r1).unwrap(), "already gone");
        queue.flush().await.unwrap();
    }
    let (queue, _) = reopen(&dir);
    let stored: Vec<RouteKey> = queue
        .routes()
        .unwrap()
        .into_iter()
        .map(|(r, _)| r)
        .collect();
    assert_eq!(stored, vec![r2.clone()]);
}
