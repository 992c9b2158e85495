//! The gateway is killed with SIGKILL mid-stream and restarted: nothing that
//! was acked is lost. A shim that exits 0 has had every line acked (it drains
//! its buffer before exiting), so every line must reach the vendor.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::*;

const CHUNKS: usize = 40;
const PER_CHUNK: usize = 250;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn acked_lines_survive_gateway_sigkill_and_restart() {
    let intake = intake().await;
    let dir = tempfile::tempdir().unwrap();
    let mut gateway = Gateway::start(&dir.path().join("gw"), &intake.base_url());

    // 10,000 lines over a few seconds, so the kills land mid-stream.
    let script = format!(
        "c=1; while [ $c -le {CHUNKS} ]; do seq -f \"chunk$c line %g\" 1 {PER_CHUNK}; c=$((c+1)); sleep 0.1; done"
    );
    let mut shim = ShimBuilder::new(&gateway.url(), "agent-crash", "replica-1")
        .env("DATADOG_TOKEN", DD_KEY)
        .spawn_sh(&script);
    let (_out, err) = capture(&mut shim);

    for delay_ms in [300u64, 700, 500] {
        tokio::time::sleep(Duration::from_millis(delay_ms)).await;
        gateway.kill9();
        tokio::time::sleep(Duration::from_millis(200)).await;
        gateway.restart();
    }

    let status = wait_exit(&mut shim, Duration::from_secs(120)).await;
    let shim_err = String::from_utf8_lossy(&err.join().unwrap()).to_string();
    assert!(status.success(), "shim exited {status}: {shim_err}");

    let expected = CHUNKS * PER_CHUNK;
    let delivered = wait_until(Duration::from_secs(120), || {
        unique(&dd_messages(&intake, "replica-1")).len() >= expected
    })
    .await;
    let messages = dd_messages(&intake, "replica-1");
    let counts = unique(&messages);
    let lost = (1..=CHUNKS)
        .flat_map(|c| (1..=PER_CHUNK).map(move |l| format!("chunk{c} line {l}")))
        .filter(|m| !counts.contains_key(m))
        .count();
    let duplicates = messages.len() - counts.len();
    println!(
        "crash recovery: sent {expected}, delivered {}, lost {lost}, duplicates {duplicates}",
        counts.len()
    );
    assert!(delivered, "gateway log:\n{}", gateway.log());
    assert_eq!(lost, 0, "acked lines were lost");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigterm_under_load_exits_cleanly_and_loses_nothing_acked() {
    let intake = intake().await;
    let dir = tempfile::tempdir().unwrap();
    let mut gateway = Gateway::start(&dir.path().join("gw"), &intake.base_url());
    let script = format!(
        "c=1; while [ $c -le 20 ]; do seq -f \"chunk$c line %g\" 1 {PER_CHUNK}; c=$((c+1)); sleep 0.05; done"
    );
    let mut shim = ShimBuilder::new(&gateway.url(), "agent-term", "replica-1")
        .env("DATADOG_TOKEN", DD_KEY)
        .spawn_sh(&script);
    let _pipes = capture(&mut shim);
    tokio::time::sleep(Duration::from_millis(400)).await;
    let status = gateway.terminate();
    assert!(
        status.success(),
        "SIGTERM exit: {status}\n{}",
        gateway.log()
    );
    gateway.restart();

    let status = wait_exit(&mut shim, Duration::from_secs(120)).await;
    assert!(status.success());
    let expected = 20 * PER_CHUNK;
    let arrived = wait_until(Duration::from_secs(120), || {
        unique(&dd_messages(&intake, "replica-1")).len() >= expected
    })
    .await;
    assert!(
        arrived,
        "lost {} lines",
        expected - unique(&dd_messages(&intake, "replica-1")).len()
    );
}

fn unique(messages: &[String]) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for m in messages {
        *counts.entry(m.clone()).or_insert(0) += 1;
    }
    counts
}
