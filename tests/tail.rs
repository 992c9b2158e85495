//! `logdrain-gateway tail` shows an agent's lines live from every replica.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tail_shows_lines_from_every_replica() {
    let intake = intake().await;
    let dir = tempfile::tempdir().unwrap();
    let gateway = Gateway::start(&dir.path().join("gw"), &intake.base_url());

    let mut tail = Command::new(bin("logdrain-gateway"))
        .args([
            "tail",
            "--agent-id",
            "agent-tail",
            "--gateway",
            &gateway.url(),
        ])
        .env("LOGDRAIN_TOKEN", token("agent-tail"))
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let stdout = tail.stdout.take().unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    // Tail follows from now on: give it a moment to subscribe.
    tokio::time::sleep(Duration::from_millis(500)).await;

    let mut shims = Vec::new();
    for replica in ["replica-1", "replica-2", "replica-3"] {
        let mut shim = ShimBuilder::new(&gateway.url(), "agent-tail", replica)
            .env("DATADOG_TOKEN", DD_KEY)
            .spawn_sh(&format!(
                "echo 'hello from {replica}'; echo 'oops {replica}' >&2"
            ));
        let pipes = capture(&mut shim);
        shims.push((shim, pipes));
    }
    for (shim, _) in &mut shims {
        assert!(wait_exit(shim, Duration::from_secs(60)).await.success());
    }

    let mut seen = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while seen.len() < 6 {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some(line)) => seen.push(line),
            _ => break,
        }
    }
    let _ = tail.kill();
    let _ = tail.wait();
    for replica in ["replica-1", "replica-2", "replica-3"] {
        assert!(
            seen.contains(&format!("{replica} stdout hello from {replica}")),
            "{seen:?}"
        );
        assert!(
            seen.contains(&format!("{replica} stderr oops {replica}")),
            "{seen:?}"
        );
    }
}
