//! The gateway is killed with SIGKILL mid-stream and restarted, or stopped
//! with SIGTERM under load: nothing that was acked is lost. A shim that
//! drained (no "not delivered" on its stderr) has had every line acked, so
//! every line must reach the vendor. The long crash loop is in
//! `crash_loop.rs`.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::*;
use logdrain_test_intake::{Fault, Vendor};

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
        counted(&dd_messages(&intake, "replica-1")).len() >= expected
    })
    .await;
    let messages = dd_messages(&intake, "replica-1");
    let counts = counted(&messages);
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

/// The gateway's shutdown promise: streams get `--shutdown-grace` to end,
/// deliveries in flight get `--shutdown-grace` to finish, then the queue is
/// flushed and the HTTP server gets 1 s.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigterm_under_load_ends_within_the_shutdown_bound_and_loses_nothing_acked() {
    const SHIMS: usize = 3;
    const CHUNKS: usize = 20;
    const LINES: usize = 500;
    let intake = intake().await;
    // Every send hangs past the grace period: deliveries are in flight at
    // SIGTERM and must be cut off, not waited for.
    intake
        .inject(Fault::until_cleared(503).delay(Duration::from_secs(30)))
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut gateway = Gateway::start_with(
        &dir.path().join("gw"),
        &intake.base_url(),
        "127.0.0.1:0",
        "127.0.0.1:0",
        vec![(
            "LOGDRAIN_SHUTDOWN_GRACE".into(),
            format!("{}s", SHUTDOWN_GRACE.as_secs()),
        )],
    );
    let mut shims = Vec::new();
    for n in 1..=SHIMS {
        let script = format!(
            "c=1; while [ $c -le {CHUNKS} ]; do seq -f \"shim{n} chunk$c line %g\" 1 {LINES}; c=$((c+1)); sleep 0.05; done"
        );
        let mut shim = ShimBuilder::new(&gateway.url(), "agent-term", &format!("replica-{n}"))
            .env("DATADOG_TOKEN", DD_KEY)
            .spawn_sh(&script);
        let passthrough = Passthrough::start(&mut shim);
        shims.push((shim, passthrough));
    }
    let streaming = wait_until(Duration::from_secs(60), || {
        intake.stats().vendor(Vendor::Datadog).requests >= 1
    })
    .await;
    assert!(streaming, "{}", gateway.log());

    let asked = Instant::now();
    let status = gateway.terminate();
    let took = asked.elapsed();
    let bound = 2 * SHUTDOWN_GRACE + Duration::from_secs(1) + Duration::from_secs(10);
    println!(
        "SIGTERM under load: stopped after {took:?} (grace {SHUTDOWN_GRACE:?}, bound {bound:?})"
    );
    assert!(
        status.success(),
        "SIGTERM exit: {status}\n{}",
        gateway.log()
    );
    assert!(
        took <= bound,
        "the gateway took {took:?} to stop; --shutdown-grace {SHUTDOWN_GRACE:?} promises at most {bound:?}"
    );

    intake.clear_faults();
    gateway.restart();
    let mut written = Vec::new();
    for (mut shim, passthrough) in shims {
        let status = wait_exit(&mut shim, Duration::from_secs(120)).await;
        let (lines, stderr) = passthrough.finish();
        assert!(status.success(), "shim exit {status}: {stderr}");
        assert_drained(&stderr);
        written.extend(lines);
    }
    assert_eq!(written.len(), SHIMS * CHUNKS * LINES);
    let at_vendor = || -> BTreeMap<String, usize> {
        counted(
            &(1..=SHIMS)
                .flat_map(|n| dd_messages(&intake, &format!("replica-{n}")))
                .collect::<Vec<_>>(),
        )
    };
    let arrived = wait_until(Duration::from_secs(120), || {
        let got = at_vendor();
        written.iter().all(|l| got.contains_key(l))
    })
    .await;
    let got = at_vendor();
    let lost = written.iter().filter(|l| !got.contains_key(*l)).count();
    assert!(arrived, "lost {lost} lines\n{}", gateway.log());
}
