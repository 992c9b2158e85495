//! A queue damaged while the gateway was down: the gateway starts anyway,
//! sets aside what it cannot read (saying so, with a count), serves every
//! other agent, and never loops.

mod common;

use std::path::Path;
use std::time::Duration;

use common::*;
use logdrain_test_intake::Fault;

/// The number in `line <n>`.
fn number(message: &str) -> u64 {
    message
        .strip_prefix("line ")
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("unexpected message {message:?}"))
}

/// Overwrites the value of the first queued segment of `agent_id` with
/// garbage (segment keys: `s`, u32 big-endian length, agent id, segment id).
fn damage_first_segment(queue_dir: &Path, agent_id: &str) {
    // The gateway's sled log segment size (server/src/queue/open.rs): sled
    // refuses to open a database with another one.
    let db = sled::Config::new()
        .path(queue_dir)
        .segment_size(2 * 1024 * 1024)
        .open()
        .expect("open the stopped gateway's queue");
    let mut prefix = vec![b's'];
    prefix.extend_from_slice(&(agent_id.len() as u32).to_be_bytes());
    prefix.extend_from_slice(agent_id.as_bytes());
    let (key, _) = db
        .scan_prefix(&prefix)
        .next()
        .expect("the agent has queued segments")
        .expect("readable");
    db.insert(key, &b"not a segment at all"[..]).unwrap();
    db.flush().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_corrupt_segment_of_one_agent_is_set_aside_with_a_count_and_every_other_line_is_delivered(
) {
    let intake = intake().await;
    intake.inject(Fault::until_cleared(500)).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("gw");
    let mut gateway = Gateway::start(&data_dir, &intake.base_url());
    let mut bad = ShimBuilder::new(&gateway.url(), "agent-damaged", "replica-bad")
        .env("DATADOG_TOKEN", DD_KEY)
        .spawn_sh("seq -f 'line %g' 1 3000");
    let mut good = ShimBuilder::new(&gateway.url(), "agent-intact", "replica-good")
        .env("DATADOG_TOKEN", DD_KEY)
        .spawn_sh("seq -f 'line %g' 1 1000");
    let _bad_pipes = capture(&mut bad);
    let _good_pipes = capture(&mut good);
    assert!(wait_exit(&mut bad, Duration::from_secs(60)).await.success());
    assert!(wait_exit(&mut good, Duration::from_secs(60))
        .await
        .success());
    assert!(gateway.terminate().success());

    damage_first_segment(&data_dir.join("queue"), "agent-damaged");
    intake.clear_faults();
    gateway.restart();

    let expected_good: Vec<String> = (1..=1000).map(|i| format!("line {i}")).collect();
    let delivered = wait_until(Duration::from_secs(120), || {
        dd_messages(&intake, "replica-good") == expected_good
            && dd_messages(&intake, "replica-bad")
                .last()
                .is_some_and(|m| m == "line 3000")
    })
    .await;
    assert!(delivered, "{}", gateway.log());

    // Agent damaged lost exactly one segment: one run of at most 1,024
    // lines; everything else arrived in order, once.
    let numbers: Vec<u64> = dd_messages(&intake, "replica-bad")
        .iter()
        .map(|m| number(m))
        .collect();
    assert!(
        numbers.windows(2).all(|w| w[0] < w[1]),
        "in order, each once"
    );
    let gaps: Vec<u64> = numbers
        .windows(2)
        .map(|w| w[1] - w[0] - 1)
        .chain(numbers.first().map(|first| first - 1))
        .filter(|gap| *gap > 0)
        .collect();
    assert_eq!(gaps.len(), 1, "one segment set aside: gaps {gaps:?}");
    assert!(gaps[0] <= 1024, "{gaps:?}");

    let metrics = gateway.metrics().await;
    assert_eq!(
        metric_value(&metrics, "logdrain_queue_quarantined_entries_total", &[]),
        1.0,
        "{metrics}"
    );
    let log = gateway.log();
    assert!(log.contains("moved to quarantine"), "{log}");
    assert!(log.contains("quarantined=1"), "the count is logged: {log}");
}

fn unreadable_dirs(data_dir: &Path) -> Vec<String> {
    std::fs::read_dir(data_dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|name| name.starts_with("queue.unreadable-"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_queue_sled_cannot_open_is_moved_aside_once_and_the_gateway_serves_from_a_fresh_one() {
    let intake = intake().await;
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("gw");
    let mut gateway = Gateway::start(&data_dir, &intake.base_url());
    let mut shim = ShimBuilder::new(&gateway.url(), "agent-x", "replica-before")
        .env("DATADOG_TOKEN", DD_KEY)
        .spawn_sh("seq -f 'line %g' 1 100");
    let _pipes = capture(&mut shim);
    assert!(wait_exit(&mut shim, Duration::from_secs(60))
        .await
        .success());
    assert!(gateway.terminate().success());

    // Damage sled's own files so that it cannot open the database.
    let queue_dir = data_dir.join("queue");
    for entry in std::fs::read_dir(&queue_dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_file() {
            std::fs::write(&path, vec![0xA5; 4096]).unwrap();
        }
    }
    gateway.restart();
    let log = gateway.log();
    assert!(
        log.contains("could not be opened; it was moved aside whole"),
        "{log}"
    );
    let aside = unreadable_dirs(&data_dir);
    assert_eq!(aside.len(), 1, "{aside:?}");
    assert!(
        log.contains(&aside[0]),
        "the log names where it went: {log}"
    );
    let metrics = gateway.metrics().await;
    assert_eq!(
        metric_value(&metrics, "logdrain_queue_set_aside_total", &[]),
        1.0
    );

    let mut shim = ShimBuilder::new(&gateway.url(), "agent-x", "replica-after")
        .env("DATADOG_TOKEN", DD_KEY)
        .spawn_sh("seq -f 'line %g' 1 100");
    let _pipes = capture(&mut shim);
    assert!(wait_exit(&mut shim, Duration::from_secs(60))
        .await
        .success());
    let expected: Vec<String> = (1..=100).map(|i| format!("line {i}")).collect();
    let served = wait_until(Duration::from_secs(60), || {
        dd_messages(&intake, "replica-after") == expected
    })
    .await;
    assert!(served, "{}", gateway.log());

    // The next start is clean: nothing more is moved aside.
    assert!(gateway.terminate().success());
    gateway.restart();
    assert_eq!(unreadable_dirs(&data_dir), aside);
    assert_eq!(
        gateway.log().matches("moved aside whole").count(),
        1,
        "{}",
        gateway.log()
    );
}
