//! The vendor's intake fails for a while and then recovers: everything that
//! was queued meanwhile is delivered, and the failures are visible in metrics.

mod common;

use std::time::Duration;

use common::*;
use logdrain_test_intake::{Fault, Vendor};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn lines_queued_during_an_intake_outage_are_delivered_after_it() {
    let intake = intake().await;
    intake.inject(Fault::until_cleared(500)).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let gateway = Gateway::start(&dir.path().join("gw"), &intake.base_url());

    let mut shim = ShimBuilder::new(&gateway.url(), "agent-outage", "replica-1")
        .env("DATADOG_TOKEN", DD_KEY)
        .spawn_sh("seq -f 'line %g' 1 3000");
    let _pipes = capture(&mut shim);
    let status = wait_exit(&mut shim, Duration::from_secs(60)).await;
    assert!(
        status.success(),
        "the shim finishes while the vendor is down: lines are acked once queued"
    );

    let failing = wait_until(Duration::from_secs(30), || {
        intake.stats().vendor(Vendor::Datadog).status(500) >= 2
    })
    .await;
    assert!(failing, "the gateway keeps retrying during the outage");
    assert!(dd_messages(&intake, "replica-1").is_empty());
    let metrics = gateway.metrics().await;
    assert!(
        metric_value(
            &metrics,
            "logdrain_retried_requests_total",
            &[("agent", "agent-outage")]
        ) >= 1.0,
        "retries are counted:\n{metrics}"
    );
    assert_eq!(
        metric_value(
            &metrics,
            "logdrain_queue_depth_lines",
            &[("agent", "agent-outage")]
        ),
        3000.0,
        "the lines wait in the queue"
    );

    intake.clear_faults();
    let delivered = wait_until(Duration::from_secs(120), || {
        dd_messages(&intake, "replica-1").len() >= 3000
    })
    .await;
    assert!(delivered, "{}", gateway.log());
    let messages = dd_messages(&intake, "replica-1");
    let expected: Vec<String> = (1..=3000).map(|i| format!("line {i}")).collect();
    assert_eq!(messages, expected, "in order, each once");
}
