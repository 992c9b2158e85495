//! The gateway is unreachable for the shim: the agent runs normally and is
//! never held up, its output passes through, and its lines arrive once the
//! gateway is up. Past `--buffer-bytes` the oldest lines are dropped, and
//! the drain gets one notice saying how many and between which times.

mod common;

use std::path::Path;
use std::time::Duration;

use common::*;

/// Starts a gateway to learn free ports, then stops it: the returned
/// gateway is down until `restart`.
fn stopped_gateway(dir: &Path, intake_url: &str) -> Gateway {
    let mut gateway = Gateway::start(&dir.join("gw"), intake_url);
    gateway.kill9();
    gateway
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn agent_runs_normally_while_the_gateway_is_down_and_its_lines_arrive_later() {
    let intake = intake().await;
    let dir = tempfile::tempdir().unwrap();
    let mut gateway = stopped_gateway(dir.path(), &intake.base_url());

    let mut shim = ShimBuilder::new(&gateway.url(), "agent-late", "replica-1")
        .env("DATADOG_TOKEN", DD_KEY)
        .spawn_sh(
            "seq -f 'early %g' 1 500; echo started > /dev/stderr; sleep 2; seq -f 'late %g' 1 500",
        );
    let (out, _err) = capture(&mut shim);

    // The agent produces all of its output while no gateway listens.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    gateway.restart();

    let status = wait_exit(&mut shim, Duration::from_secs(60)).await;
    assert!(status.success(), "shim exit {status}");
    let passthrough = String::from_utf8(out.join().unwrap()).unwrap();
    assert_eq!(
        passthrough.lines().count(),
        1000,
        "stdout passed through unchanged"
    );

    let arrived = wait_until(Duration::from_secs(60), || {
        dd_messages(&intake, "replica-1").len() >= 1001
    })
    .await;
    assert!(arrived, "{}", gateway.log());
    let messages = dd_messages(&intake, "replica-1");
    assert!(messages.contains(&"early 1".to_string()));
    assert!(messages.contains(&"late 500".to_string()));
    assert!(messages.contains(&"started".to_string()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_agents_writes_are_not_held_up_while_the_gateway_is_down() {
    const LINES: usize = 20_000;
    let intake = intake().await;
    let dir = tempfile::tempdir().unwrap();
    let mut gateway = stopped_gateway(dir.path(), &intake.base_url());
    let writer = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/agents/timed_writer.py");
    let report = dir.path().join("latency");

    let mut shim = ShimBuilder::new(&gateway.url(), "agent-timed", "replica-1")
        .env("DATADOG_TOKEN", DD_KEY)
        .spawn_args(&[
            "python3",
            &writer.display().to_string(),
            &LINES.to_string(),
            &report.display().to_string(),
        ]);
    let passthrough = Passthrough::start(&mut shim);
    let finished = wait_until(Duration::from_secs(120), || report.exists()).await;
    assert!(
        finished,
        "the agent finished writing while the gateway was down"
    );
    assert!(dd_messages(&intake, "replica-1").is_empty());
    let figures = std::fs::read_to_string(&report).unwrap();
    let [p50, p99, max]: [u64; 3] = figures
        .split_whitespace()
        .map(|v| v.parse().unwrap())
        .collect::<Vec<_>>()
        .try_into()
        .unwrap();
    let us = |ns: u64| ns as f64 / 1000.0;
    println!(
        "write latency while the gateway is down ({LINES} lines): p50 {:.1} µs, p99 {:.1} µs, max {:.1} µs",
        us(p50),
        us(p99),
        us(max)
    );

    gateway.restart();
    let status = wait_exit(&mut shim, Duration::from_secs(60)).await;
    let (lines, stderr) = passthrough.finish();
    assert!(status.success(), "shim exit {status}: {stderr}");
    assert_drained(&stderr);
    let expected: Vec<String> = (1..=LINES).map(|i| format!("timed {i}")).collect();
    assert_eq!(lines, expected, "every line passed through, in order");
    let arrived = wait_until(Duration::from_secs(60), || {
        dd_messages(&intake, "replica-1").len() >= LINES
    })
    .await;
    assert!(arrived, "{}", gateway.log());
    assert_eq!(dd_messages(&intake, "replica-1"), expected);
}

/// A drop notice's count and time range, if `message` is one.
fn parse_drop_notice(message: &str) -> Option<(u64, String, String)> {
    let rest = message.strip_prefix("agent-shim: dropped ")?;
    let (count, rest) = rest.split_once(' ')?;
    let rest = rest
        .strip_prefix("lines written between ")
        .or_else(|| rest.strip_prefix("line written between "))?;
    let (first, rest) = rest.split_once(" and ")?;
    let (last, _) = rest.split_once(": ")?;
    Some((count.parse().ok()?, first.to_string(), last.to_string()))
}

/// `2026-01-02T03:04:05.123456789Z`: RFC 3339 in UTC, nanoseconds.
fn is_utc_rfc3339_nanos(t: &str) -> bool {
    let b = t.as_bytes();
    b.len() == 30
        && b[4] == b'-'
        && b[7] == b'-'
        && b[10] == b'T'
        && b[13] == b':'
        && b[16] == b':'
        && b[19] == b'.'
        && b[29] == b'Z'
        && b.iter()
            .enumerate()
            .all(|(i, c)| [4, 7, 10, 13, 16, 19, 29].contains(&i) || c.is_ascii_digit())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn past_the_buffer_bound_the_oldest_lines_are_dropped_and_reported_exactly() {
    const LINES: usize = 5_000;
    let intake = intake().await;
    let dir = tempfile::tempdir().unwrap();
    let stop = dir.path().join("stop");
    let mut gateway = stopped_gateway(dir.path(), &intake.base_url());

    // 64 KiB holds under a thousand of these lines.
    let script = format!(
        "seq -f 'line %g' 1 {LINES}; while [ ! -e '{}' ]; do sleep 0.1; done",
        stop.display()
    );
    let mut shim = ShimBuilder::new(&gateway.url(), "agent-overflow", "replica-1")
        .env("DATADOG_TOKEN", DD_KEY)
        .env("LOGDRAIN_BUFFER_BYTES", "64KiB")
        .env("LOGDRAIN_MAX_LINE_BYTES", "1KiB")
        .spawn_sh(&script);
    let passthrough = Passthrough::start(&mut shim);
    let written = wait_until(Duration::from_secs(60), || passthrough.count() == LINES).await;
    assert!(
        written,
        "the agent wrote everything while the gateway was down"
    );

    gateway.restart();
    std::fs::write(&stop, b"").unwrap();
    let status = wait_exit(&mut shim, Duration::from_secs(60)).await;
    let (_, stderr) = passthrough.finish();
    assert!(status.success(), "shim exit {status}: {stderr}");

    let notice_arrived = wait_until(Duration::from_secs(60), || {
        dd_messages(&intake, "replica-1")
            .iter()
            .any(|m| parse_drop_notice(m).is_some())
    })
    .await;
    assert!(notice_arrived, "{}", gateway.log());
    let messages = dd_messages(&intake, "replica-1");
    let notices: Vec<(u64, String, String)> = messages
        .iter()
        .filter_map(|m| parse_drop_notice(m))
        .collect();
    let received: Vec<&String> = messages.iter().filter(|m| m.starts_with("line ")).collect();
    assert_eq!(notices.len(), 1, "one notice for one outage: {notices:?}");
    let (dropped, first, last) = &notices[0];
    println!(
        "buffer overflow: {LINES} written, {} received, notice says {dropped} dropped between {first} and {last}",
        received.len()
    );
    assert!(*dropped > 0, "the buffer overflowed");
    assert_eq!(
        metric_value(
            &gateway.metrics().await,
            "logdrain_skipped_seqs_total",
            &[("agent", "agent-overflow")]
        ),
        *dropped as f64,
        "the gateway counts the seqs the shim skipped, never acking them as stored"
    );
    assert_eq!(
        *dropped as usize,
        LINES - received.len(),
        "the notice accounts for exactly the lines that never arrived"
    );
    let newest: Vec<String> = (*dropped as usize + 1..=LINES)
        .map(|i| format!("line {i}"))
        .collect();
    assert_eq!(
        received,
        newest.iter().collect::<Vec<_>>(),
        "the newest lines, in order"
    );
    assert!(
        is_utc_rfc3339_nanos(first) && is_utc_rfc3339_nanos(last),
        "{first} {last}"
    );
    assert!(first <= last, "the range runs forwards: {first} .. {last}");
}
