//! The shipped monitoring files stay valid against a live gateway:
//! `promtool check metrics` accepts its `/metrics` (counters end in `_total`,
//! every metric has HELP text), `promtool check rules` accepts
//! `deploy/prometheus/alerts.yml`, and every metric the alerts and the
//! Grafana dashboard use exists in the live output, so renaming a metric
//! cannot silently break them.
//!
//! Needs `promtool` (Debian's `prometheus` package); `tests/run.sh` installs
//! it on a fresh machine.

mod common;

use std::collections::BTreeSet;
use std::io::Write;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use common::*;
use logdrain::v1::drain_client::DrainClient;
use logdrain::v1::{shim_message, Open, ShimMessage};
use logdrain_test_intake::{Fault, Vendor};

const ALERTS: &str = "deploy/prometheus/alerts.yml";
const DASHBOARD: &str = "deploy/grafana/logdrain.json";

/// Runs promtool with `args` (and `stdin`); `None` (the test skips) when it
/// is missing.
fn promtool(args: &[&str], stdin: Option<&str>) -> Option<Output> {
    let mut child = match Command::new("promtool")
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
    {
        Ok(child) => child,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
            return tool::missing(
                "promtool",
                "apt-get install -y --no-install-recommends prometheus (Debian's package)",
            )
        }
        Err(err) => panic!("cannot run promtool: {err}"),
    };
    let mut input = child.stdin.take().expect("promtool stdin");
    if let Some(text) = stdin {
        input.write_all(text.as_bytes()).expect("write to promtool");
    }
    drop(input);
    Some(child.wait_with_output().expect("wait for promtool"))
}

fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// Every `logdrain_*` metric name written in a file.
fn metric_names_in(path: &str) -> BTreeSet<String> {
    let content = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(path))
        .unwrap_or_else(|e| panic!("read {path}: {e}"));
    let mut names = BTreeSet::new();
    let mut rest = content.as_str();
    while let Some(start) = rest.find("logdrain_") {
        let tail = &rest[start..];
        let end = tail
            .find(|c: char| !(c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'))
            .unwrap_or(tail.len());
        names.insert(tail[..end].to_string());
        rest = &tail[end..];
    }
    names
}

/// Names of the samples in a Prometheus text exposition.
fn sample_names(exposition: &str) -> BTreeSet<String> {
    exposition
        .lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .filter_map(|l| l.split(['{', ' ']).next())
        .map(str::to_string)
        .collect()
}

#[test]
fn the_alert_rules_pass_promtool() {
    let Some(output) = promtool(&["check", "rules", ALERTS], None) else {
        return;
    };
    assert!(output.status.success(), "{}", text(&output));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn live_metrics_pass_promtool_and_hold_every_metric_the_alerts_and_dashboard_use() {
    if promtool(&["--version"], None).is_none() {
        return;
    }
    let intake = intake().await;
    // The first Datadog request fails once: retries and failures exist too.
    intake
        .inject(Fault::next(1, 503).for_vendor(Vendor::Datadog))
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let gateway = Gateway::start(&dir.path().join("gw"), &intake.base_url());

    // Delivered lines (after one retry), and lines of an agent without any
    // destination (dropped as no_destination).
    let mut delivering = ShimBuilder::new(&gateway.url(), "agent-ok", "replica-1")
        .env("DATADOG_TOKEN", DD_KEY)
        .spawn_sh("echo one; echo two; echo three");
    let mut nowhere =
        ShimBuilder::new(&gateway.url(), "agent-none", "replica-1").spawn_sh("echo lost");
    for shim in [&mut delivering, &mut nowhere] {
        let status = wait_exit(shim, Duration::from_secs(120)).await;
        assert!(status.success(), "{}", stderr_of(shim));
    }
    // A stream with another agent's token (refused as unauthenticated).
    let mut client = DrainClient::connect(gateway.url()).await.unwrap();
    let open = ShimMessage {
        kind: Some(shim_message::Kind::Open(Open {
            token: token("agent-other"),
            agent_id: "agent-ok".into(),
            agent_server_id: "replica-2".into(),
            boot_id: "0123456789abcdef0123456789abcdef".into(),
            secrets: Default::default(),
            protocol_version: logdrain::PROTOCOL_VERSION,
            handoff: None,
        })),
    };
    let refused = client.ship(tokio_stream::iter(vec![open])).await;
    assert_eq!(
        refused.expect_err("wrong token").code(),
        tonic::Code::Unauthenticated
    );

    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    let metrics = loop {
        let metrics = gateway.metrics().await;
        let settled = metric_value(
            &metrics,
            "logdrain_delivered_lines_total",
            &[("agent", "agent-ok")],
        ) == 3.0
            && metric_value(
                &metrics,
                "logdrain_dropped_lines_total",
                &[("agent", "agent-none"), ("reason", "no_destination")],
            ) >= 1.0;
        if settled {
            break metrics;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "traffic did not settle:\n{metrics}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };

    let output = promtool(&["check", "metrics"], Some(&metrics)).expect("promtool ran before");
    assert!(
        output.status.success(),
        "promtool check metrics: {}\n{metrics}",
        text(&output)
    );

    let live = sample_names(&metrics);
    for file in [ALERTS, DASHBOARD] {
        let used = metric_names_in(file);
        assert!(!used.is_empty(), "{file} names no logdrain metric");
        let missing: Vec<&String> = used.iter().filter(|name| !live.contains(*name)).collect();
        assert!(
            missing.is_empty(),
            "{file} uses metrics the gateway does not export: {missing:?}\nexported: {live:?}"
        );
    }

    // Bounded labels: agent ids, destinations and fixed reasons only, never
    // a replica id.
    assert!(!metrics.contains("replica-1"), "{metrics}");
    assert_eq!(
        metric_value(
            &metrics,
            "logdrain_connected_replicas",
            &[("agent", "agent-ok")]
        ),
        0.0,
        "the replica has disconnected"
    );
}
