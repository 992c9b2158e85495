//! Crashes and start-up failures of the agent are server-level events that
//! must reach the vendor, as lines from the shim.

mod common;

use std::time::Duration;

use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_crash_exit_code_reaches_datadog() {
    let intake = intake().await;
    let dir = tempfile::tempdir().unwrap();
    let gateway = Gateway::start(&dir.path().join("gw"), &intake.base_url());

    let mut shim = ShimBuilder::new(&gateway.url(), "agent-crashy", "replica-1")
        .env("DATADOG_TOKEN", DD_KEY)
        .spawn_sh("echo 'about to fail' >&2; exit 3");
    let _pipes = capture(&mut shim);
    let status = wait_exit(&mut shim, Duration::from_secs(60)).await;
    assert_eq!(
        status.code(),
        Some(3),
        "the shim exits with the agent's code"
    );

    let arrived = wait_until(Duration::from_secs(60), || {
        dd_messages(&intake, "replica-1")
            .iter()
            .any(|m| m.contains("exit") && m.contains('3'))
    })
    .await;
    assert!(
        arrived,
        "no exit event arrived: {:?}",
        dd_messages(&intake, "replica-1")
    );
    let event = intake
        .datadog_entries()
        .into_iter()
        .find(|e| {
            e["message"]
                .as_str()
                .is_some_and(|m| m.contains("exit") && m.contains('3'))
        })
        .unwrap();
    assert_eq!(event["stream"], "stderr");
    assert_eq!(event["logdrain"]["origin"], "shim", "{event}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_signal_death_reaches_datadog_with_the_signal_name() {
    let intake = intake().await;
    let dir = tempfile::tempdir().unwrap();
    let gateway = Gateway::start(&dir.path().join("gw"), &intake.base_url());

    let mut shim = ShimBuilder::new(&gateway.url(), "agent-killed", "replica-1")
        .env("DATADOG_TOKEN", DD_KEY)
        .spawn_sh("kill -KILL $$");
    let _pipes = capture(&mut shim);
    let status = wait_exit(&mut shim, Duration::from_secs(60)).await;
    assert_eq!(status.code(), Some(137), "128 + SIGKILL");
    let arrived = wait_until(Duration::from_secs(60), || {
        dd_messages(&intake, "replica-1")
            .iter()
            .any(|m| m.contains("SIGKILL"))
    })
    .await;
    assert!(arrived, "{:?}", dd_messages(&intake, "replica-1"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_start_failure_reaches_datadog_and_exits_127() {
    let intake = intake().await;
    let dir = tempfile::tempdir().unwrap();
    let gateway = Gateway::start(&dir.path().join("gw"), &intake.base_url());

    let mut shim = ShimBuilder::new(&gateway.url(), "agent-missing", "replica-1")
        .env("DATADOG_TOKEN", DD_KEY)
        .spawn_args(&["/nonexistent/agent-binary", "--serve"]);
    let _pipes = capture(&mut shim);
    let status = wait_exit(&mut shim, Duration::from_secs(60)).await;
    assert_eq!(status.code(), Some(127));
    let arrived = wait_until(Duration::from_secs(60), || {
        dd_messages(&intake, "replica-1")
            .iter()
            .any(|m| m.contains("/nonexistent/agent-binary"))
    })
    .await;
    assert!(arrived, "{:?}", dd_messages(&intake, "replica-1"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_crash_line_arrives_while_a_process_the_agent_started_still_holds_its_pipes() {
    let intake = intake().await;
    let dir = tempfile::tempdir().unwrap();
    let gateway = Gateway::start(&dir.path().join("gw"), &intake.base_url());
    // The grandchild inherits the agent's stdout and stderr and waits on a
    // FIFO only the test writes to: it cannot exit before the test says so.
    let fifo = dir.path().join("release");
    let made = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap();
    assert!(made.success());
    let script = format!(
        "(read _ < '{}'; echo grandchild-done) & echo agent-says-hi; kill -SEGV $$",
        fifo.display()
    );
    let mut shim = ShimBuilder::new(&gateway.url(), "agent-forks", "replica-1")
        .env("DATADOG_TOKEN", DD_KEY)
        // Far beyond this test: the crash line must not wait for the drain.
        .env("LOGDRAIN_DRAIN_TIMEOUT", "1h")
        .spawn_sh(&script);
    let pipes = capture(&mut shim);

    let crashed = wait_until(Duration::from_secs(60), || {
        dd_messages(&intake, "replica-1")
            .iter()
            .any(|m| m.contains("SIGSEGV"))
    })
    .await;
    if !crashed {
        let _ = shim.kill();
        std::fs::write(&fifo, "go\n").unwrap();
    }
    assert!(
        crashed,
        "no crash line while the grandchild holds the pipes: {:?}",
        dd_messages(&intake, "replica-1")
    );
    assert_eq!(
        shim.try_wait().unwrap(),
        None,
        "the shim keeps capturing the pipes"
    );

    std::fs::write(&fifo, "go\n").unwrap();
    let status = wait_exit(&mut shim, Duration::from_secs(60)).await;
    assert_eq!(status.code(), Some(139), "128 + SIGSEGV");
    let (_, err) = pipes;
    assert_drained(&String::from_utf8_lossy(&err.join().unwrap()));
    let all = wait_until(Duration::from_secs(60), || {
        dd_messages(&intake, "replica-1").len() >= 3
    })
    .await;
    let messages = dd_messages(&intake, "replica-1");
    assert!(all, "{messages:?}");
    let crash = messages.iter().position(|m| m.contains("SIGSEGV"));
    assert_eq!(messages.len(), 3, "{messages:?}");
    assert_eq!(messages[0], "agent-says-hi");
    assert_eq!(crash, Some(1), "{messages:?}");
    assert_eq!(messages[2], "grandchild-done");
}
