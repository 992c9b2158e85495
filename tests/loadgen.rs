//! `logdrain-loadgen` against a real gateway: every line it sends is acked
//! and delivered, its report counts them, and the counting intake times each
//! one from read to accepted.

mod common;

use std::collections::BTreeMap;
use std::io::Read;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;
use logdrain_test_intake::Vendor;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_loadgen_line_is_acked_reported_delivered_and_timed() {
    let intake = intake().await;
    let dir = tempfile::tempdir().unwrap();
    let gateway = Gateway::start(&dir.path().join("gw"), &intake.base_url());
    let mut loadgen = Command::new(bin("logdrain-loadgen"))
        .args(["--gateway", &gateway.url(), "--agent-id", "agent-load"])
        .args(["--streams", "3", "--lines", "2500", "--line-bytes", "40"])
        .args(["--batch-lines", "100", "--window", "4"])
        .env("LOGDRAIN_SIGNING_KEY", SIGNING_KEY)
        .env("DATADOG_TOKEN", DD_KEY)
        .env_remove("LOGDRAIN_TOKEN")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start logdrain-loadgen");
    let status = wait_exit(&mut loadgen, Duration::from_secs(180)).await;
    let mut stdout = String::new();
    loadgen
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut stdout)
        .unwrap();
    assert!(status.success(), "{status}: {}", stderr_of(&mut loadgen));

    let report: serde_json::Value =
        serde_json::from_str(stdout.lines().last().expect("a JSON line")).expect("JSON report");
    assert_eq!(report["lines"], 2500, "{stdout}");
    assert_eq!(report["streams"], 3);
    // 834 + 833 + 833 lines in batches of 100: 9 batches per stream.
    assert_eq!(report["ack_latency_ms"]["batches"], 27);
    assert!(!stdout.contains(DD_KEY) && !stdout.contains(SIGNING_KEY));

    let entries = intake
        .wait_for_entries(Vendor::Datadog, 2500, Duration::from_secs(180))
        .await
        .expect("every line delivered");
    let mut per_stream = BTreeMap::new();
    for entry in &entries {
        let host = entry.value["host"].as_str().unwrap_or_default().to_string();
        *per_stream.entry(host).or_insert(0) += 1;
        assert_eq!(entry.value["message"].as_str().map(str::len), Some(40));
    }
    let expected: BTreeMap<String, usize> =
        [("loadgen-0", 834), ("loadgen-1", 833), ("loadgen-2", 833)]
            .into_iter()
            .map(|(host, n)| (host.to_string(), n))
            .collect();
    assert_eq!(per_stream, expected);
    let latency = intake
        .stats()
        .vendor(Vendor::Datadog)
        .read_to_accepted
        .summary();
    assert_eq!((latency.count, latency.unstamped), (2500, 0));
}

#[test]
fn loadgen_without_a_token_or_signing_key_names_both() {
    let out = Command::new(bin("logdrain-loadgen"))
        .args(["--gateway", "http://127.0.0.1:1"])
        .env_remove("LOGDRAIN_TOKEN")
        .env_remove("LOGDRAIN_SIGNING_KEY")
        .output()
        .expect("run logdrain-loadgen");
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--token"), "{stderr}");
    assert!(stderr.contains("--signing-key"), "{stderr}");
}
