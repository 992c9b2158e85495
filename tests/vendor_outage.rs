//! The vendor's intake fails and then recovers: everything that was queued
//! meanwhile is delivered, retries back off (500) or wait as told (429 with
//! `Retry-After`), and a backlog refused for its credentials (403) is
//! delivered once a new deployment of the agent brings good ones.

mod common;

use std::time::Duration;

use common::*;
use logdrain_test_intake::{Fault, RequestRecord, Vendor};

/// Gaps between the arrivals of consecutive Datadog requests.
fn gaps(requests: &[RequestRecord]) -> Vec<Duration> {
    requests
        .windows(2)
        .map(|w| w[1].arrived.duration_since(w[0].arrived))
        .collect()
}

fn datadog_requests(intake: &logdrain_test_intake::Intake) -> Vec<RequestRecord> {
    intake
        .requests()
        .into_iter()
        .filter(|r| r.vendor == Vendor::Datadog)
        .collect()
}

/// Waits until the agent's only route is parked with refused credentials.
async fn wait_parked(gateway: &Gateway, agent_id: &str) {
    for _ in 0..600 {
        let status = agent_status(gateway, agent_id).await;
        if status["routes"][0]["state"] == "credentials_rejected" {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the route never parked on 403:\n{}", gateway.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn lines_queued_during_a_long_intake_outage_are_delivered_after_it() {
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

    // Seven failed attempts: the backoff has doubled six times.
    const FAILURES: usize = 7;
    let failing = wait_until(Duration::from_secs(120), || {
        intake.stats().vendor(Vendor::Datadog).status(500) >= FAILURES as u64
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
        ) >= (FAILURES - 1) as f64,
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
    // The backoff grows: after the k-th consecutive failure the route waits
    // at least half (the jitter) of 100 ms × 2^(k-1) before the next try.
    let spacing = gaps(&datadog_requests(&intake)[..FAILURES]);
    println!("500 outage: spacing of retries {spacing:?}");
    for (k, gap) in spacing.iter().enumerate() {
        let floor = Duration::from_millis(50 << k);
        assert!(
            *gap >= floor,
            "retry {} came after {gap:?}, before the backoff floor {floor:?}",
            k + 1
        );
    }

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

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_429_with_retry_after_is_never_retried_earlier_than_asked() {
    const RETRY_AFTER_S: u64 = 2;
    let intake = intake().await;
    intake
        .inject(Fault::next(3, 429).retry_after(RETRY_AFTER_S.to_string()))
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let gateway = Gateway::start(&dir.path().join("gw"), &intake.base_url());

    let mut shim = ShimBuilder::new(&gateway.url(), "agent-429", "replica-1")
        .env("DATADOG_TOKEN", DD_KEY)
        .spawn_sh("seq -f 'line %g' 1 200");
    let _pipes = capture(&mut shim);
    assert!(wait_exit(&mut shim, Duration::from_secs(60))
        .await
        .success());

    let delivered = wait_until(Duration::from_secs(60), || {
        dd_messages(&intake, "replica-1").len() >= 200
    })
    .await;
    assert!(delivered, "{}", gateway.log());
    let requests = datadog_requests(&intake);
    let statuses: Vec<u16> = requests.iter().map(|r| r.status).collect();
    assert_eq!(
        &statuses[..4],
        [429, 429, 429, 202],
        "three 429s, then accepted"
    );
    let spacing = gaps(&requests[..4]);
    println!("429 Retry-After: {RETRY_AFTER_S}s: spacing of retries {spacing:?}");
    for gap in &spacing {
        assert!(
            *gap >= Duration::from_secs(RETRY_AFTER_S),
            "a retry came {gap:?} after a 429 asking for {RETRY_AFTER_S}s"
        );
    }
    let expected: Vec<String> = (1..=200).map(|i| format!("line {i}")).collect();
    assert_eq!(dd_messages(&intake, "replica-1"), expected);
    let metrics = gateway.metrics().await;
    assert!(
        metric_value(
            &metrics,
            "logdrain_retried_requests_total",
            &[("agent", "agent-429")]
        ) >= 3.0,
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_backlog_refused_with_403_is_delivered_with_the_next_deployments_key() {
    const REVOKED: &str = "dd-key-revoked-by-the-tenant";
    let intake = intake().await; // accepts DD_KEY only: REVOKED gets 403
    let dir = tempfile::tempdir().unwrap();
    // A long auth retry interval: without the replay the backlog would wait.
    let gateway = Gateway::start_with(
        &dir.path().join("gw"),
        &intake.base_url(),
        "127.0.0.1:0",
        "127.0.0.1:0",
        vec![("LOGDRAIN_AUTH_RETRY_INTERVAL".into(), "1h".into())],
    );

    // The old deployment runs with the revoked key.
    let mut old = ShimBuilder::new(&gateway.url(), "agent-rekey", "replica-old")
        .env("DATADOG_TOKEN", REVOKED)
        .spawn_sh("seq -f 'old %g' 1 1500");
    let _old_pipes = capture(&mut old);
    assert!(wait_exit(&mut old, Duration::from_secs(60)).await.success());
    wait_parked(&gateway, "agent-rekey").await;
    assert!(intake.stats().vendor(Vendor::Datadog).status(403) >= 1);
    assert!(dd_messages(&intake, "replica-old").is_empty());

    // The new deployment brings a key the vendor accepts.
    let mut new = ShimBuilder::new(&gateway.url(), "agent-rekey", "replica-new")
        .env("DATADOG_TOKEN", DD_KEY)
        .spawn_sh("seq -f 'new %g' 1 500");
    let _new_pipes = capture(&mut new);
    assert!(wait_exit(&mut new, Duration::from_secs(60)).await.success());

    let delivered = wait_until(Duration::from_secs(60), || {
        dd_messages(&intake, "replica-old").len() >= 1500
            && dd_messages(&intake, "replica-new").len() >= 500
    })
    .await;
    assert!(delivered, "{}", gateway.log());
    let old_lines: Vec<String> = (1..=1500).map(|i| format!("old {i}")).collect();
    let new_lines: Vec<String> = (1..=500).map(|i| format!("new {i}")).collect();
    assert_eq!(
        dd_messages(&intake, "replica-old"),
        old_lines,
        "all, in order, once"
    );
    assert_eq!(dd_messages(&intake, "replica-new"), new_lines);
    assert!(
        intake
            .entries(Vendor::Datadog)
            .iter()
            .all(|e| e.key.as_deref() == Some(DD_KEY)),
        "every accepted line carried the newer key"
    );

    let status = agent_status(&gateway, "agent-rekey").await;
    let routes = status["routes"].as_array().unwrap();
    assert_eq!(routes.len(), 2, "{status}");
    let replaying: Vec<_> = routes
        .iter()
        .filter(|r| !r["adopted_cred_id"].is_null())
        .collect();
    assert_eq!(replaying.len(), 1, "{status}");
    let newer = routes
        .iter()
        .find(|r| r["adopted_cred_id"].is_null())
        .unwrap();
    assert_eq!(replaying[0]["adopted_cred_id"], newer["cred_id"]);
    let note = replaying[0]["note"].as_str().unwrap_or_default();
    assert!(
        note.starts_with(&format!(
            "delivering with a newer deployment's credentials (cred id {}, first seen ",
            newer["cred_id"].as_str().unwrap()
        )),
        "{note}"
    );
    let text = status.to_string();
    assert!(!text.contains(REVOKED) && !text.contains(DD_KEY), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_adopted_key_survives_a_gateway_restart() {
    const REVOKED: &str = "dd-key-revoked-by-the-tenant";
    let intake = intake().await;
    let dir = tempfile::tempdir().unwrap();
    let mut gateway = Gateway::start_with(
        &dir.path().join("gw"),
        &intake.base_url(),
        "127.0.0.1:0",
        "127.0.0.1:0",
        vec![("LOGDRAIN_AUTH_RETRY_INTERVAL".into(), "1h".into())],
    );
    let mut old = ShimBuilder::new(&gateway.url(), "agent-restart", "replica-old")
        .env("DATADOG_TOKEN", REVOKED)
        .spawn_sh("seq -f 'old %g' 1 1000");
    let _old_pipes = capture(&mut old);
    assert!(wait_exit(&mut old, Duration::from_secs(60)).await.success());
    wait_parked(&gateway, "agent-restart").await;

    // The vendor goes down before the adopted backlog can be delivered.
    intake.inject(Fault::until_cleared(503)).unwrap();
    let mut new = ShimBuilder::new(&gateway.url(), "agent-restart", "replica-new")
        .env("DATADOG_TOKEN", DD_KEY)
        .spawn_sh("seq -f 'new %g' 1 100");
    let _new_pipes = capture(&mut new);
    assert!(wait_exit(&mut new, Duration::from_secs(60)).await.success());
    let retried_with_new_key = wait_until(Duration::from_secs(30), || {
        intake.stats().vendor(Vendor::Datadog).status(503) >= 2
    })
    .await;
    assert!(retried_with_new_key, "{}", gateway.log());

    // No shim reconnects after the restart: only what is stored tells the
    // old route which key to use.
    gateway.kill9();
    gateway.restart();
    intake.clear_faults();
    let delivered = wait_until(Duration::from_secs(60), || {
        counted(&dd_messages(&intake, "replica-old")).len() >= 1000
            && counted(&dd_messages(&intake, "replica-new")).len() >= 100
    })
    .await;
    assert!(delivered, "{}", gateway.log());
    assert!(intake
        .entries(Vendor::Datadog)
        .iter()
        .all(|e| e.key.as_deref() == Some(DD_KEY)));
}
