//! The gateway is down when the shim starts: the agent runs normally, its
//! output passes through, and its lines arrive once the gateway is up.

mod common;

use std::time::Duration;

use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn agent_runs_normally_while_the_gateway_is_down_and_its_lines_arrive_later() {
    let intake = intake().await;
    let dir = tempfile::tempdir().unwrap();
    // Learn a free port for the gateway, then stop it before the shim starts.
    let mut gateway = Gateway::start(&dir.path().join("gw"), &intake.base_url());
    let url = gateway.url();
    gateway.kill9();

    let mut shim = ShimBuilder::new(&url, "agent-late", "replica-1")
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
