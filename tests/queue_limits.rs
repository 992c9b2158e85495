//! The gateway's queue at its limits, on the real binaries: an agent over
//! its quota, a full disk, and a queue damaged before start. Each test
//! fails if a line is lost without being counted.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use logdrain_test_intake::Fault;

/// Pads each line to about 100 bytes.
const PAD: &str =
    "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx";

/// The number in `line <n> ...`.
fn number(message: &str) -> u64 {
    message
        .split_whitespace()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("unexpected message {message:?}"))
}

/// The line count a drop notice states ("dropped 12,345 lines").
fn notice_count(notice: &str) -> u64 {
    notice
        .split("dropped ")
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .and_then(|n| n.replace(',', "").parse().ok())
        .unwrap_or_else(|| panic!("not a drop notice: {notice:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_agent_over_its_quota_loses_only_its_oldest_lines_counted_and_announced_and_others_lose_nothing(
) {
    const A_LINES: u64 = 240_000;
    let intake = intake().await;
    intake.inject(Fault::until_cleared(500)).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let gateway = Gateway::start_with(
        &dir.path().join("gw"),
        &intake.base_url(),
        "127.0.0.1:0",
        "127.0.0.1:0",
        vec![
            ("LOGDRAIN_AGENT_QUOTA_BYTES".into(), "16MiB".into()),
            ("LOGDRAIN_QUOTA_NOTICE_INTERVAL".into(), "2s".into()),
        ],
    );
    // About 23 MiB for agent a, far below the quota for agent b.
    let mut a = ShimBuilder::new(&gateway.url(), "agent-quota-a", "replica-a")
        .env("DATADOG_TOKEN", DD_KEY)
        .spawn_sh(&format!("seq -f 'line %07g {PAD}' 1 {A_LINES}"));
    let mut b = ShimBuilder::new(&gateway.url(), "agent-quota-b", "replica-b")
        .env("DATADOG_TOKEN", DD_KEY)
        .spawn_sh("seq -f 'line %g' 1 1000");
    let _a_pipes = capture(&mut a);
    let _b_pipes = capture(&mut b);
    assert!(
        wait_exit(&mut a, Duration::from_secs(180)).await.success(),
        "{}",
        gateway.log()
    );
    assert!(wait_exit(&mut b, Duration::from_secs(60)).await.success());

    let metrics = gateway.metrics().await;
    let dropped = |agent: &str, metrics: &str| {
        metric_value(
            metrics,
            "logdrain_dropped_lines_total",
            &[("agent", agent), ("reason", "quota")],
        ) as u64
    };
    assert!(
        dropped("agent-quota-a", &metrics) > 0,
        "the quota dropped lines:\n{metrics}"
    );
    assert_eq!(dropped("agent-quota-b", &metrics), 0, "{metrics}");

    intake.clear_faults();
    let delivered = wait_until(Duration::from_secs(240), || {
        let a = dd_messages(&intake, "replica-a");
        a.last().is_some_and(|m| number(m) == A_LINES)
            && dd_messages(&intake, "replica-b").len() >= 1000
    })
    .await;
    assert!(delivered, "{}", gateway.log());

    // Agent a: what arrived is in order, once each, and ends with the
    // newest line; every line that did not arrive was counted as dropped.
    let a_numbers: Vec<u64> = dd_messages(&intake, "replica-a")
        .iter()
        .map(|m| number(m))
        .collect();
    assert!(
        a_numbers.windows(2).all(|w| w[0] < w[1]),
        "in order, each once"
    );
    let missing = A_LINES - a_numbers.len() as u64;
    let dropped_a = dropped("agent-quota-a", &gateway.metrics().await);
    println!(
        "quota 16 MiB: agent a wrote {A_LINES} lines, {} delivered, {missing} missing, {dropped_a} counted as dropped; agent b lost 0",
        a_numbers.len()
    );
    assert!(missing > 0, "over the quota some lines are gone");
    assert!(
        missing <= dropped_a,
        "{missing} lines missing but only {dropped_a} counted as dropped"
    );
    // Agent b: every line, in order.
    let b_expected: Vec<String> = (1..=1000).map(|i| format!("line {i}")).collect();
    assert_eq!(dd_messages(&intake, "replica-b"), b_expected);

    // The newest notice states the whole count, the quota and the cause.
    let (announced, notices) = {
        let start = Instant::now();
        loop {
            let dropped_now = dropped("agent-quota-a", &gateway.metrics().await);
            let notices = dd_messages(&intake, "logdrain-gateway");
            if notices.iter().any(|n| notice_count(n) == dropped_now) {
                break (true, notices);
            }
            if start.elapsed() > Duration::from_secs(120) {
                break (false, notices);
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    };
    assert!(announced, "no notice with the full count: {notices:#?}");
    for notice in &notices {
        assert!(notice.starts_with("logdrain-gateway: dropped "), "{notice}");
        assert!(notice.contains("for agent agent-quota-a because its queue reached its quota of 16.0 MiB while datadog has been failing"), "{notice}");
        assert!(
            notice.contains("500"),
            "the vendor's error is named: {notice}"
        );
        assert!(
            !notice.contains(DD_KEY),
            "no secret in the notice: {notice}"
        );
    }
}

/// Polls `/metrics` until `check` holds or `limit` passes.
async fn wait_for_metrics(
    gateway: &Gateway,
    limit: Duration,
    check: impl Fn(&str) -> bool,
) -> bool {
    let start = Instant::now();
    loop {
        if check(&gateway.metrics().await) {
            return true;
        }
        if start.elapsed() > limit {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Free bytes of the filesystem holding `path` (`stat -f`).
fn free_bytes(path: &Path) -> u64 {
    let out = Command::new("stat")
        .args(["-f", "--format=%a %S"])
        .arg(path)
        .output()
        .expect("run stat -f");
    let text = String::from_utf8_lossy(&out.stdout);
    let mut parts = text
        .split_whitespace()
        .map(|p| p.parse::<u64>().unwrap_or(0));
    parts.next().unwrap_or(0) * parts.next().unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_full_disk_refuses_batches_the_shim_keeps_them_and_all_arrive_once_space_returns() {
    let intake = intake().await;
    let dir = tempfile::tempdir().unwrap();
    let mount = dir.path().join("mnt");
    let Some(mut gateway) = Gateway::start_on_tmpfs(
        &mount,
        64,
        &intake.base_url(),
        vec![("LOGDRAIN_DISK_MIN_FREE_BYTES".into(), "16MiB".into())],
    ) else {
        eprintln!("skipped: cannot mount a tmpfs in a user namespace with unshare here");
        return;
    };
    let go = dir.path().join("go");
    let mut shim = ShimBuilder::new(&gateway.url(), "agent-disk", "replica-1")
        .env("DATADOG_TOKEN", DD_KEY)
        .spawn_sh(&format!(
            "seq -f 'line %g' 1 1000; while [ ! -e '{}' ]; do sleep 0.1; done; seq -f 'line %g' 1001 5000",
            go.display()
        ));
    let (_out, err) = capture(&mut shim);
    let first = wait_until(Duration::from_secs(60), || {
        dd_messages(&intake, "replica-1").len() >= 1000
    })
    .await;
    assert!(first, "{}", gateway.log());

    // Fill the gateway's filesystem to 8 MiB below its 16 MiB watermark.
    let inside = gateway.in_namespace(&mount);
    let filler = inside.join("filler");
    let free = free_bytes(&inside);
    assert!(free > 8 << 20, "tmpfs free space {free}");
    let status = Command::new("dd")
        .args(["if=/dev/zero", "bs=1M", "status=none"])
        .arg(format!("of={}", filler.display()))
        .arg(format!("count={}", (free - (8 << 20)) >> 20))
        .status()
        .expect("run dd");
    assert!(status.success());
    std::fs::write(&go, b"").unwrap();

    let refused = wait_for_metrics(&gateway, Duration::from_secs(60), |metrics| {
        metric_value(
            metrics,
            "logdrain_refused_batches_total",
            &[("reason", "disk_full")],
        ) >= 1.0
            && metric_value(metrics, "logdrain_queue_disk_full", &[]) == 1.0
    })
    .await;
    assert!(refused, "{}", gateway.log());
    assert!(
        gateway.child.try_wait().unwrap().is_none(),
        "the gateway keeps running"
    );
    let ready = http_get(&format!("http://{}/readyz", gateway.http)).await;
    assert!(ready.contains("watermark"), "{ready}");
    assert_eq!(
        dd_messages(&intake, "replica-1").len(),
        1000,
        "nothing beyond the watermark was accepted"
    );

    // Space returns: every held line arrives, in order, once.
    std::fs::remove_file(&filler).unwrap();
    let status = wait_exit(&mut shim, Duration::from_secs(120)).await;
    assert!(status.success(), "{}", gateway.log());
    let all = wait_until(Duration::from_secs(60), || {
        dd_messages(&intake, "replica-1").len() >= 5000
    })
    .await;
    assert!(all, "{}", gateway.log());
    let expected: Vec<String> = (1..=5000).map(|i| format!("line {i}")).collect();
    assert_eq!(dd_messages(&intake, "replica-1"), expected);
    let stderr = String::from_utf8_lossy(&err.join().unwrap()).into_owned();
    assert!(
        stderr.contains("RESOURCE_EXHAUSTED") && stderr.contains("lines wait in the buffer"),
        "the shim says why it holds its lines:\n{stderr}"
    );
    assert!(gateway
        .log()
        .contains("disk is below its free-space watermark"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_disk_filled_to_the_last_byte_refuses_batches_without_crashing_and_still_stops_on_sigterm(
) {
    let intake = intake().await;
    intake.inject(Fault::until_cleared(500)).unwrap();
    let dir = tempfile::tempdir().unwrap();
    // Watermark off: the queue grows until a write meets ENOSPC (a segment
    // file's, or sled's, after which sled writes nothing more until restart,
    // see queue/disk.rs); the gateway must stay up, refuse with
    // RESOURCE_EXHAUSTED at once, and still stop.
    let Some(mut gateway) = Gateway::start_on_tmpfs(
        &dir.path().join("mnt"),
        24,
        &intake.base_url(),
        vec![
            ("LOGDRAIN_DISK_MIN_FREE_BYTES".into(), "0".into()),
            ("LOGDRAIN_SHUTDOWN_GRACE".into(), "3s".into()),
        ],
    ) else {
        eprintln!("skipped: cannot mount a tmpfs in a user namespace with unshare here");
        return;
    };
    let mut shim = ShimBuilder::new(&gateway.url(), "agent-enospc", "replica-1")
        .env("DATADOG_TOKEN", DD_KEY)
        .env("LOGDRAIN_DRAIN_TIMEOUT", "10s")
        .spawn_sh(&format!("seq -f 'line %07g {PAD}' 1 400000"));
    let (_out, err) = capture(&mut shim);
    let refused = wait_for_metrics(&gateway, Duration::from_secs(60), |metrics| {
        metric_value(metrics, "logdrain_queue_disk_full", &[]) == 1.0
    })
    .await;
    assert!(refused, "{}", gateway.log());
    let _ = wait_exit(&mut shim, Duration::from_secs(120)).await;
    let stderr = String::from_utf8_lossy(&err.join().unwrap()).into_owned();
    assert!(stderr.contains("RESOURCE_EXHAUSTED"), "{stderr}");
    assert!(
        gateway.child.try_wait().unwrap().is_none(),
        "the gateway keeps running"
    );
    let ready = http_get(&format!("http://{}/readyz", gateway.http)).await;
    assert!(ready.contains("watermark"), "{ready}");

    // SIGTERM still ends the process.
    signal(gateway.child.id(), libc::SIGTERM);
    let status = wait_exit(&mut gateway.child, Duration::from_secs(60)).await;
    assert!(status.success(), "{}", gateway.log());
}
