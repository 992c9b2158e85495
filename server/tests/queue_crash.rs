//! Crash test of the durable queue, after sled's `test_crash_recovery.rs`:
//! this test binary re-runs itself as a child process that appends to a
//! queue as fast as it can and prints every acknowledgement; the parent
//! kills it with SIGKILL at a random moment, reopens the queue and checks
//! that every acknowledged line is there, once, in order, and that only
//! delivered lines were deleted. Several rounds reuse the same directory.

use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};

use bytes::Bytes;
use logdrain_gateway::queue::{Append, Cursor, Line, Queue, SealKey};
use logdrain_gateway::route::{DestinationKind, RouteKey, Secrets};
use rand::Rng;

/// Set in the child: the queue directory.
const CHILD_DIR_ENV: &str = "LOGDRAIN_QUEUE_CRASH_CHILD_DIR";
/// Set in the child: the round number (used as the boot id).
const CHILD_ROUND_ENV: &str = "LOGDRAIN_QUEUE_CRASH_CHILD_ROUND";

const AGENT: &str = "crash-agent";
const ROUNDS: u32 = 4;
/// Streams 0 and 1 are tagged for both routes, 2 and 3 for route A only.
const STREAMS: u32 = 4;
const TEST_NAME: &str = "acked_lines_survive_sigkill_and_only_delivered_lines_are_freed";

fn route(cred: &str) -> RouteKey {
    RouteKey {
        agent_id: AGENT.to_string(),
        kind: DestinationKind::Datadog,
        cred_id: cred.to_string(),
    }
}

/// Route A is delivered (read and committed) by the child; route B never
/// commits, so it holds every segment of streams 0 and 1.
fn routes_of(stream: u32) -> Vec<RouteKey> {
    if stream < 2 {
        vec![route("a"), route("b")]
    } else {
        vec![route("a")]
    }
}

fn server(stream: u32) -> String {
    format!("replica-{stream}")
}

fn line_data(round: u32, stream: u32, seq: u64) -> String {
    format!("{round} {stream} {seq} {}", "x".repeat(80))
}

fn parse_data(data: &[u8]) -> (u32, u32, u64) {
    let text = std::str::from_utf8(data).expect("test data is UTF-8");
    let mut parts = text.split(' ');
    let mut next = || parts.next().expect("three numbers").to_string();
    (
        next().parse().unwrap(),
        next().parse().unwrap(),
        next().parse().unwrap(),
    )
}

#[test]
fn acked_lines_survive_sigkill_and_only_delivered_lines_are_freed() {
    if let Ok(dir) = std::env::var(CHILD_DIR_ENV) {
        let round = std::env::var(CHILD_ROUND_ENV)
            .expect("round is set")
            .parse()
            .expect("round is a number");
        child(Path::new(&dir), round);
        return;
    }

    let dir = tempfile::TempDir::new().unwrap();
    // (round, stream) -> highest acked seq / highest delivered seq.
    let mut acked: HashMap<(u32, u32), u64> = HashMap::new();
    let mut delivered: HashMap<(u32, u32), u64> = HashMap::new();
    for round in 0..ROUNDS {
        let kill_after = rand::rng().random_range(10..300);
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args([TEST_NAME, "--exact", "--nocapture", "--test-threads=1"])
            .env(CHILD_DIR_ENV, dir.path())
            .env(CHILD_ROUND_ENV, round.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let mut reader = BufReader::new(child.stdout.take().unwrap());
        let mut record = |line: &str| -> bool {
            // The child's test harness prints `test <name> ... ` without a
            // newline before the test starts, so the first record of a
            // round shares its line: read from the record's keyword on.
            let words: Vec<&str> = line.split_whitespace().collect();
            let start = words
                .iter()
                .position(|w| *w == "ack" || *w == "deliver")
                .unwrap_or(words.len());
            let (map, r, stream, seq) = match &words[start..] {
                ["ack", stream, seq] => (&mut acked, round, stream, seq),
                ["deliver", r, stream, seq] => (&mut delivered, r.parse().unwrap(), stream, seq),
                _ => return false,
            };
            let entry = map.entry((r, stream.parse().unwrap())).or_insert(0);
            *entry = (*entry).max(seq.parse().unwrap());
            true
        };
        let mut acks = 0;
        let mut line = String::new();
        while acks < kill_after {
            line.clear();
            if reader.read_line(&mut line).unwrap() == 0 {
                panic!("child exited on its own: {:?}", child.wait());
            }
            if record(&line) && line.split_whitespace().any(|w| w == "ack") {
                acks += 1;
            }
        }
        child.kill().unwrap();
        child.wait().unwrap();
        // Everything the child printed before it died was acknowledged.
        for line in reader.lines() {
            record(&line.unwrap());
        }

        verify(dir.path(), round, &acked, &delivered);
    }
}

/// Checks the queue after round `round` was killed.
fn verify(
    dir: &Path,
    round: u32,
    acked: &HashMap<(u32, u32), u64>,
    delivered: &HashMap<(u32, u32), u64>,
) {
    let (queue, report) = Queue::open(dir, SealKey::derive(b"crash-test-signing-key")).unwrap();
    assert_eq!(report.damaged_regions, 0, "a crash must not damage records");
    assert_eq!(report.routes, 2);

    // Everything queued for route A, from the start.
    let mut present: BTreeMap<(u32, u32), Vec<u64>> = BTreeMap::new();
    // Where each stream's first surviving line is, to tell "freed by a
    // commit" (at or before route A's cursor) from "lost".
    let mut first_at: BTreeMap<(u32, u32), Cursor> = BTreeMap::new();
    let committed = queue.committed(&route("a")).unwrap();
    let mut after: Option<Cursor> = None;
    let mut total = 0;
    loop {
        let lines = queue.read(&route("a"), after, 1000, usize::MAX).unwrap();
        let Some(last) = lines.last() else { break };
        after = Some(last.cursor);
        total += lines.len() as u64;
        for queued in lines {
            let (r, stream, seq) = parse_data(&queued.line.data);
            assert_eq!(*queued.agent_server_id, server(stream));
            present.entry((r, stream)).or_default().push(seq);
            first_at.entry((r, stream)).or_insert(queued.cursor);
        }
    }
    assert_eq!(queue.depth(AGENT).0, total, "depth counts what is queued");

    for r in 0..=round {
        for stream in 0..STREAMS {
            let acked = acked.get(&(r, stream)).copied().unwrap_or(0);
            let seqs = present.get(&(r, stream)).cloned().unwrap_or_default();
            let stored = queue
                .acked_seq(AGENT, &server(stream), &r.to_string())
                .unwrap();
            assert!(
                stored >= acked,
                "round {r} stream {stream}: mark {stored} < acked {acked}"
            );
            // Once, in order, without holes.
            assert!(
                seqs.windows(2).all(|w| w[1] == w[0] + 1),
                "round {r} stream {stream}: not contiguous: {seqs:?}"
            );
            let (first, last) = match (seqs.first(), seqs.last()) {
                (Some(first), Some(last)) => (*first, *last),
                _ => (acked + 1, acked),
            };
            assert!(
                last >= acked,
                "round {r} stream {stream}: acked {acked}, only {last} survived"
            );
            // Lines before `first` were freed: only allowed once delivered
            // (and never for streams route B holds).
            let freed_through = first - 1;
            let allowed = if stream < 2 {
                0
            } else {
                delivered.get(&(r, stream)).copied().unwrap_or(0)
            };
            assert!(
                freed_through <= allowed,
                "round {r} stream {stream}: lines 1..={freed_through} freed, delivered only {allowed}; \
                 route A committed through {committed:?}, first surviving line at {:?}",
                first_at.get(&(r, stream))
            );
        }
    }
}

/// The child: appends from four streams and delivers route A until killed.
fn child(dir: &Path, round: u32) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async move {
        let (queue, _) = Queue::open(dir, SealKey::derive(b"crash-test-signing-key")).unwrap();
        let secrets = Secrets(BTreeMap::from([(
            "DATADOG_TOKEN".to_string(),
            "token".to_string(),
        )]));
        queue.put_route(&route("a"), &secrets).unwrap();
        queue.put_route(&route("b"), &secrets).unwrap();

        let mut tasks = Vec::new();
        for stream in 0..STREAMS {
            let queue = queue.clone();
            tasks.push(tokio::spawn(append_forever(queue, round, stream)));
        }
        tasks.push(tokio::spawn(deliver_forever(queue.clone())));
        for task in tasks {
            task.await.unwrap();
        }
    });
}

async fn append_forever(queue: Queue, round: u32, stream: u32) {
    let boot = round.to_string();
    let server = server(stream);
    let routes = routes_of(stream);
    let mut next = 1u64;
    // Bounded so a child that is never killed still ends.
    for batch in 0..100_000u64 {
        let len = rand::rng().random_range(1..200u64);
        // Now and then resend the previous lines too, as after a reconnect.
        let first = if batch % 7 == 3 {
            next.saturating_sub(len / 2).max(1)
        } else {
            next
        };
        let lines = (first..first + len)
            .map(|seq| Line {
                data: Bytes::from(line_data(round, stream, seq)),
                ..Default::default()
            })
            .collect();
        let outcome = queue
            .append(Append {
                agent_id: AGENT,
                agent_server_id: &server,
                boot_id: &boot,
                first_seq: first,
                lines,
                routes: &routes,
            })
            .await
            .unwrap();
        next = outcome.acked_seq + 1;
        println!("ack {stream} {}", outcome.acked_seq);
    }
}

async fn deliver_forever(queue: Queue) {
    let a = route("a");
    let mut wake = queue.subscribe(AGENT);
    let mut after = queue.committed(&a).unwrap();
    loop {
        let lines = queue.read(&a, after, 500, usize::MAX).unwrap();
        let Some(last) = lines.last() else {
            if wake.changed().await.is_err() {
                return;
            }
            continue;
        };
        let last = last.cursor;
        // "The vendor accepted": report the highest seq per stream first.
        let mut highest: BTreeMap<(u32, u32), u64> = BTreeMap::new();
        for queued in &lines {
            let (round, stream, seq) = parse_data(&queued.line.data);
            let entry = highest.entry((round, stream)).or_insert(0);
            *entry = (*entry).max(seq);
        }
        for ((round, stream), seq) in highest {
            println!("deliver {round} {stream} {seq}");
        }
        queue.commit(&a, last).unwrap();
        after = Some(last);
    }
}
