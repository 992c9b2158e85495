//! Three replicas of one agent stream at once; Datadog receives every line
//! exactly once, with the contract's fields, in order within each stream.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::*;

const LINES: usize = 2_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_line_from_three_replicas_arrives_exactly_once_with_the_right_fields() {
    let intake = intake().await;
    let dir = tempfile::tempdir().unwrap();
    let gateway = Gateway::start(&dir.path().join("gw"), &intake.base_url());

    let script = format!(
        "i=1; while [ $i -le {LINES} ]; do echo \"out $i\"; echo \"err $i\" >&2; i=$((i+1)); done"
    );
    let mut shims = Vec::new();
    for replica in ["replica-1", "replica-2", "replica-3"] {
        let mut child = ShimBuilder::new(&gateway.url(), "agent-fleet", replica)
            .env("DATADOG_TOKEN", DD_KEY)
            .spawn_sh(&script);
        let pipes = capture(&mut child);
        shims.push((replica, child, Some(pipes)));
    }
    for (replica, child, pipes) in &mut shims {
        let status = wait_exit(child, Duration::from_secs(120)).await;
        assert!(status.success(), "{replica} shim exited {status}");
        let (out, _err) = pipes.take().unwrap();
        let passthrough = String::from_utf8(out.join().unwrap()).unwrap();
        assert_eq!(
            passthrough.lines().count(),
            LINES,
            "stdout passes through unchanged"
        );
    }

    let expected = 3 * 2 * LINES;
    intake
        .wait_for_entries(
            logdrain_test_intake::Vendor::Datadog,
            expected,
            Duration::from_secs(120),
        )
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", gateway.log()));
    let entries = intake.datadog_entries();
    assert_eq!(entries.len(), expected, "no line arrives twice");

    let mut per_stream: HashMap<(String, String), Vec<usize>> = HashMap::new();
    for e in &entries {
        assert_eq!(e["ddsource"], "agent-fleet");
        assert_eq!(e["service"], "cloud.livekit.io");
        assert!(e["timestamp"].is_u64(), "timestamp is integer ms: {e}");
        let host = e["host"].as_str().unwrap().to_string();
        let stream = e["stream"].as_str().unwrap().to_string();
        let message = e["message"].as_str().unwrap();
        let (prefix, n) = message.split_once(' ').unwrap();
        assert_eq!(
            prefix,
            if stream == "stdout" { "out" } else { "err" },
            "{e}"
        );
        let level = e["status"].as_str().unwrap();
        assert_eq!(
            level,
            if stream == "stdout" { "info" } else { "error" },
            "{e}"
        );
        per_stream
            .entry((host, stream))
            .or_default()
            .push(n.parse().unwrap());
    }
    assert_eq!(
        per_stream.len(),
        6,
        "3 hosts x 2 streams: {:?}",
        per_stream.keys()
    );
    for (key, seqs) in per_stream {
        assert_eq!(
            seqs,
            (1..=LINES).collect::<Vec<_>>(),
            "{key:?} in order, complete"
        );
    }

    let metrics = gateway.metrics().await;
    assert_eq!(
        metric_value(
            &metrics,
            "logdrain_delivered_lines_total",
            &[("agent", "agent-fleet"), ("destination", "datadog")]
        ),
        expected as f64
    );
    assert_eq!(
        metric_value(
            &metrics,
            "logdrain_acked_lines_total",
            &[("agent", "agent-fleet")]
        ),
        expected as f64
    );
}
