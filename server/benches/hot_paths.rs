//! Micro-benchmarks of the gateway's hot paths, one criterion group each:
//! level detection, protobuf encode/decode of a 1,000-line `Batch`, durable
//! queue append + read (a temp dir), batch building, and each vendor's
//! request body for a 1,000-line batch (JSON + gzip; CloudWatch: events
//! planned and chunked, since the AWS SDK serialises them). Level detection
//! and the Datadog body are also timed on lines of 99 digits, the shape of
//! the end-to-end delivery benchmark's load (no level word, nothing to
//! escape).
//!
//! Run: `cargo bench -p logdrain-gateway --bench hot_paths [-- <group>]`.
//! Every group reports throughput in lines (elements) per second. Each
//! group checks its output once before timing, so a bench that silently
//! does nothing fails instead.

use std::cell::Cell;
use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use logdrain::v1::{shim_message, Batch, Origin, ShimMessage, StreamKind};
use logdrain_gateway::queue::{Append, Cursor, Line, Queue, QueuedLine, SealKey};
use logdrain_gateway::route::{DestinationKind, RouteKey, Secrets};
use logdrain_gateway::sinks::engine::batch::Pending;
use logdrain_gateway::sinks::{cloudwatch, datadog, level, newrelic, sentry, BatchLimits};
use prost::Message;

const LINES: usize = 1_000;
const LINE_BYTES: usize = 100;
const AGENT: &str = "bench-agent";
/// 2024-05-01T12:00:00Z, in nanoseconds.
const T0_NS: i64 = 1_714_564_800_000_000_000;

/// A 100-byte log line that looks like an application's: a timestamp, a
/// level word at `level`, and a message.
fn text(i: usize, level: &str) -> Bytes {
    let mut line =
        format!("2024-05-01T12:00:00.{i:06}Z {level} request handled path=/api/v1/items/{i}");
    while line.len() < LINE_BYTES {
        line.push(' ');
    }
    line.truncate(LINE_BYTES);
    Bytes::from(line)
}

/// A line of the delivery benchmark's load (`seq -f %099g`): 99 digits,
/// no level word, nothing to escape.
fn digits(i: usize) -> Bytes {
    Bytes::from(format!("{i:099}"))
}

fn lines_of(data: impl Fn(usize) -> Bytes) -> Vec<Line> {
    (0..LINES)
        .map(|i| Line {
            timestamp_ns: T0_NS + i as i64,
            stream: StreamKind::Stdout as i32,
            origin: Origin::Agent as i32,
            data: data(i),
            ..Default::default()
        })
        .collect()
}

fn lines() -> Vec<Line> {
    let levels = ["INFO", "WARN", "ERROR", "DEBUG"];
    lines_of(|i| text(i, levels[i % levels.len()]))
}

/// The lines as a sink worker reads them (two replicas, so vendors that
/// group by replica see more than one group).
fn queued() -> Vec<QueuedLine> {
    queued_from(lines())
}

fn queued_from(lines: Vec<Line>) -> Vec<QueuedLine> {
    let replicas: [Arc<str>; 2] = [Arc::from("replica-0"), Arc::from("replica-1")];
    lines
        .into_iter()
        .enumerate()
        .map(|(i, line)| QueuedLine {
            cursor: Cursor {
                segment: (i / 100) as u64,
                index: (i % 100) as u32,
            },
            agent_server_id: replicas[i / 500].clone(),
            line,
            original_timestamp_ns: None,
        })
        .collect()
}

fn level_detection(c: &mut Criterion) {
    let samples: Vec<Bytes> = [
        "2024-05-01 12:00:00 INFO server started on port 8080",
        r#"{"level":"warn","msg":"slow request","ms":812}"#,
        "E0501 12:00:00.000000 1 main.go:42] connection refused",
        "no level word anywhere in this rather ordinary line of output text",
    ]
    .iter()
    .map(|s| Bytes::from_static(s.as_bytes()))
    .collect();
    assert_eq!(
        level::detect(&samples[3], StreamKind::Stderr),
        level::stream_default(StreamKind::Stderr)
    );
    let mut group = c.benchmark_group("level");
    group.throughput(Throughput::Elements(samples.len() as u64));
    group.bench_function("detect, 4 line shapes", |b| {
        b.iter(|| {
            for line in &samples {
                black_box(level::detect(black_box(line), StreamKind::Stdout));
            }
        })
    });
    let numbers: Vec<Bytes> = (0..samples.len()).map(digits).collect();
    assert_eq!(level::named(&numbers[0]), None);
    group.bench_function("detect, 4 lines of 99 digits", |b| {
        b.iter(|| {
            for line in &numbers {
                black_box(level::detect(black_box(line), StreamKind::Stdout));
            }
        })
    });
    group.finish();
}

fn protobuf(c: &mut Criterion) {
    let message = ShimMessage {
        kind: Some(shim_message::Kind::Batch(Batch {
            first_seq: 1,
            lines: lines(),
            ..Batch::default()
        })),
    };
    let encoded = message.encode_to_vec();
    assert_eq!(
        ShimMessage::decode(encoded.as_slice()).ok(),
        Some(message.clone())
    );
    let encoded = Bytes::from(encoded);
    let mut group = c.benchmark_group("protobuf");
    group.throughput(Throughput::Elements(LINES as u64));
    group.bench_function("encode Batch of 1,000 lines", |b| {
        b.iter(|| black_box(&message).encode_to_vec())
    });
    group.bench_function("decode Batch of 1,000 lines", |b| {
        // Decoding from `Bytes` lets prost slice line data without copying,
        // as tonic's decoder does.
        b.iter(|| ShimMessage::decode(black_box(encoded.clone())))
    });
    group.finish();
}

fn queue(c: &mut Criterion) {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => panic!("cannot start a tokio runtime for the queue bench: {e}"),
    };
    let dir = match tempfile::TempDir::new() {
        Ok(dir) => dir,
        Err(e) => panic!("cannot create a temp dir for the queue bench: {e}"),
    };
    let queue = match Queue::open(dir.path(), SealKey::derive(b"bench-signing-key")) {
        Ok((queue, _)) => queue,
        Err(e) => panic!("cannot open the queue in {}: {e}", dir.path().display()),
    };
    let route = RouteKey {
        agent_id: AGENT.to_string(),
        kind: DestinationKind::Datadog,
        cred_id: "bench".to_string(),
    };
    if let Err(e) = queue.put_route(&route, &Secrets::default()) {
        panic!("cannot store the bench route: {e}");
    }
    let routes = [route.clone()];
    let next_seq = Cell::new(1u64);
    let after: Cell<Option<Cursor>> = Cell::new(None);
    // One durable append of 1,000 lines (its own group commit), then the
    // route reads them back and commits past them.
    let round = |batch: Vec<Line>| {
        let first_seq = next_seq.get();
        next_seq.set(first_seq + LINES as u64);
        let outcome = runtime.block_on(queue.append(Append {
            agent_id: AGENT,
            agent_server_id: "replica-0",
            boot_id: "boot",
            first_seq,
            lines: batch,
            routes: &routes,
        }));
        let acked = match outcome {
            Ok(outcome) => outcome.acked_seq,
            Err(e) => panic!("append failed: {e}"),
        };
        let read = match queue.read(&route, after.get(), LINES, 1 << 20) {
            Ok(read) => read,
            Err(e) => panic!("read failed: {e}"),
        };
        if let Some(last) = read.last() {
            if let Err(e) = queue.commit(&route, last.cursor) {
                panic!("commit failed: {e}");
            }
            after.set(Some(last.cursor));
        }
        (acked, read.len())
    };
    assert_eq!(round(lines()), (LINES as u64, LINES), "one round trip");
    let mut group = c.benchmark_group("queue");
    group.sample_size(20);
    group.throughput(Throughput::Elements(LINES as u64));
    group.bench_function("durable append + read + commit of 1,000 lines", |b| {
        b.iter_batched(lines, &round, BatchSize::SmallInput)
    });
    group.finish();
}

fn batch_building(c: &mut Criterion) {
    let limits = BatchLimits {
        max_events: datadog::request_builder::MAX_EVENTS,
        max_bytes: datadog::request_builder::MAX_PAYLOAD_BYTES - 1,
        max_linger: Duration::from_secs(1),
    };
    let now = tokio::time::Instant::now();
    let fill = |lines: Vec<QueuedLine>| {
        let mut pending = Pending::new();
        for line in lines {
            let size = datadog::request_builder::event_size(
                AGENT,
                &line,
                datadog::request_builder::MAX_MESSAGE_JSON_BYTES,
            );
            pending.push(line, size, now);
        }
        let full = pending.is_full(&limits);
        (full, pending.take_batch(&limits).len())
    };
    assert_eq!(fill(queued()), (true, LINES), "a full Datadog batch");
    let mut group = c.benchmark_group("batch");
    group.throughput(Throughput::Elements(LINES as u64));
    group.bench_function("size + push + take 1,000 lines (Datadog limits)", |b| {
        b.iter_batched(queued, fill, BatchSize::SmallInput)
    });
    group.finish();
}

fn vendor_bodies(c: &mut Criterion) {
    let lines = queued();
    let datadog = |lines: &[QueuedLine]| {
        datadog::request_builder::encode(
            AGENT,
            lines,
            datadog::request_builder::MAX_MESSAGE_JSON_BYTES,
        )
    };
    let newrelic = |lines: &[QueuedLine]| newrelic::request_builder::encode(AGENT, lines);
    // Sentry takes at most 100 logs per envelope: 10 envelopes.
    let sentry = |lines: &[QueuedLine]| {
        lines
            .chunks(sentry::request_builder::MAX_ITEMS)
            .map(|chunk| sentry::request_builder::encode(AGENT, chunk))
            .collect::<Result<Vec<_>, _>>()
    };
    let cloudwatch = |lines: &[QueuedLine]| {
        cloudwatch::request_builder::plan(lines)
            .into_iter()
            .map(|stream| stream.puts.len())
            .sum::<usize>()
    };
    match (datadog(&lines), newrelic(&lines), sentry(&lines)) {
        (Ok(dd), Ok(nr), Ok(envelopes)) => {
            assert_eq!((dd.events, nr.events), (LINES, LINES));
            assert_eq!(envelopes.iter().map(|e| e.items).sum::<usize>(), LINES);
        }
        (dd, nr, se) => panic!(
            "a vendor body failed to encode: datadog {:?}, newrelic {:?}, sentry {:?}",
            dd.err(),
            nr.err(),
            se.err()
        ),
    }
    assert!(cloudwatch(&lines) >= 1, "CloudWatch plans at least one put");

    let mut group = c.benchmark_group("vendor body");
    group.throughput(Throughput::Elements(LINES as u64));
    group.bench_function("datadog: JSON + gzip of 1,000 lines", |b| {
        b.iter(|| datadog(black_box(&lines)))
    });
    let numeric = queued_from(lines_of(digits));
    group.bench_function("datadog: JSON + gzip of 1,000 lines of 99 digits", |b| {
        b.iter(|| datadog(black_box(&numeric)))
    });
    group.bench_function("newrelic: JSON + gzip of 1,000 lines", |b| {
        b.iter(|| newrelic(black_box(&lines)))
    });
    group.bench_function("sentry: 10 gzip envelopes of 100 lines", |b| {
        b.iter(|| sentry(black_box(&lines)))
    });
    group.bench_function("cloudwatch: plan + chunk 1,000 events", |b| {
        b.iter(|| cloudwatch(black_box(&lines)))
    });
    group.finish();
}

criterion_group!(
    benches,
    level_detection,
    protobuf,
    queue,
    batch_building,
    vendor_bodies
);
criterion_main!(benches);
