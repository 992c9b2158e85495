//! Queue throughput: 1,000,000 lines of 100 bytes appended durably in
//! batches of 1,000 from 4 concurrent tasks (4 replicas of one agent), then
//! read back and committed by one route.
//!
//! Run with `cargo bench -p logdrain-gateway --bench queue`. Prints lines/s
//! for each phase and how many appends shared one flush.

use std::error::Error;
use std::time::Instant;

use bytes::Bytes;
use logdrain_gateway::queue::{Append, Cursor, Line, Queue, SealKey};
use logdrain_gateway::route::{DestinationKind, RouteKey, Secrets};

const TOTAL_LINES: u64 = 1_000_000;
const BATCH_LINES: u64 = 1_000;
const TASKS: u64 = 4;
const LINE_BYTES: usize = 100;

fn main() -> Result<(), Box<dyn Error>> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(run())
}

async fn run() -> Result<(), Box<dyn Error>> {
    let dir = tempfile::TempDir::new()?;
    let (queue, _) = Queue::open(dir.path(), SealKey::derive(b"bench-signing-key"))?;
    let route = RouteKey {
        agent_id: "bench-agent".to_string(),
        kind: DestinationKind::Datadog,
        cred_id: "bench".to_string(),
    };
    queue.put_route(&route, &Secrets::default())?;
    let payload = Bytes::from(vec![b'x'; LINE_BYTES]);

    let start = Instant::now();
    let mut tasks = Vec::new();
    for task in 0..TASKS {
        let queue = queue.clone();
        let route = route.clone();
        let payload = payload.clone();
        tasks.push(tokio::spawn(async move {
            let server = format!("replica-{task}");
            let routes = [route];
            for batch in 0..TOTAL_LINES / TASKS / BATCH_LINES {
                let lines = (0..BATCH_LINES)
                    .map(|i| Line {
                        timestamp_ns: i as i64,
                        data: payload.clone(),
                        ..Default::default()
                    })
                    .collect();
                queue
                    .append(Append {
                        agent_id: "bench-agent",
                        agent_server_id: &server,
                        boot_id: "boot",
                        first_seq: batch * BATCH_LINES + 1,
                        lines,
                        routes: &routes,
                    })
                    .await?;
            }
            Ok::<_, logdrain_gateway::queue::QueueError>(())
        }));
    }
    for task in tasks {
        task.await??;
    }
    let append_secs = start.elapsed().as_secs_f64();
    let flushes = queue.flush_count();
    let appends = TOTAL_LINES / BATCH_LINES;
    println!(
        "append (durable): {:>10.0} lines/s  ({} lines in {:.2} s, {} appends, {} flushes, {:.1} appends/flush)",
        TOTAL_LINES as f64 / append_secs,
        TOTAL_LINES,
        append_secs,
        appends,
        flushes,
        appends as f64 / flushes.max(1) as f64
    );

    let start = Instant::now();
    let mut after: Option<Cursor> = None;
    let mut read = 0u64;
    loop {
        let lines = queue.read(&route, after, BATCH_LINES as usize, 1 << 20)?;
        let Some(last) = lines.last() else { break };
        read += lines.len() as u64;
        queue.commit(&route, last.cursor)?;
        after = Some(last.cursor);
    }
    queue.flush().await?;
    let read_secs = start.elapsed().as_secs_f64();
    println!(
        "read + commit:    {:>10.0} lines/s  ({} lines in {:.2} s)",
        read as f64 / read_secs,
        read,
        read_secs
    );
    if read != TOTAL_LINES || queue.depth("bench-agent") != (0, 0) {
        return Err(format!(
            "read {read} lines, expected {TOTAL_LINES}; depth left {:?}",
            queue.depth("bench-agent")
        )
        .into());
    }
    Ok(())
}
