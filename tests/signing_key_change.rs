//! A gateway started on a data dir with another signing key cannot decrypt
//! the stored destination secrets: it starts anyway, says why, and keeps the
//! lines, which the original key then delivers.

mod common;

use std::time::Duration;

use common::*;
use logdrain_test_intake::{Fault, Vendor};

const AGENT: &str = "agent-rekey";

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn routes_sealed_under_another_signing_key_are_reported_and_kept_until_it_returns() {
    let intake = intake().await;
    // Datadog is down, so the acked lines stay queued.
    intake
        .inject(Fault::until_cleared(503).for_vendor(Vendor::Datadog))
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("gw");
    let mut gateway = Gateway::start(&data_dir, &intake.base_url());
    let mut shim = ShimBuilder::new(&gateway.url(), AGENT, "replica-1")
        .env("DATADOG_TOKEN", DD_KEY)
        .spawn_sh("echo kept 1; echo kept 2; echo kept 3");
    let (_out, err) = capture(&mut shim);
    let status = wait_exit(&mut shim, Duration::from_secs(60)).await;
    let err = String::from_utf8_lossy(&err.join().unwrap()).into_owned();
    assert!(status.success() && !err.contains("not delivered"), "{err}");
    assert!(gateway.terminate().success());

    let mut rekeyed = Gateway::start_with(
        &data_dir,
        &intake.base_url(),
        "127.0.0.1:0",
        "127.0.0.1:0",
        vec![(
            "LOGDRAIN_SIGNING_KEY".into(),
            "another-signing-key-0123456789".into(),
        )],
    );
    assert_eq!(
        http_get(&format!("http://{}/readyz", rekeyed.http)).await,
        "ready\n"
    );
    let metrics = rekeyed.metrics().await;
    assert_eq!(
        metric_value(&metrics, "logdrain_queue_depth_lines", &[("agent", AGENT)]),
        3.0,
        "the lines are kept"
    );
    assert!(rekeyed.terminate().success());
    let log = rekeyed.log();
    assert!(
        log.contains("sealed under another key") && log.contains("signing key changed"),
        "{log}"
    );

    intake.clear_faults();
    let gateway = Gateway::start(&data_dir, &intake.base_url());
    let delivered = wait_until(Duration::from_secs(60), || {
        dd_messages(&intake, "replica-1").len() >= 3
    })
    .await;
    assert!(delivered, "{}", gateway.log());
    assert_eq!(
        dd_messages(&intake, "replica-1"),
        ["kept 1", "kept 2", "kept 3"]
    );
}
