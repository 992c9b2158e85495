//! End-to-end throughput: agent-shim → logdrain-gateway (sled, group commit)
//! → Datadog test intake, with the real release binaries.
//!
//! Run: `cargo build --release --workspace && cargo bench -p logdrain --bench pipeline`
//! Optional: `LOGDRAIN_BENCH_LINES` (default 1,000,000), `LOGDRAIN_BENCH_REPLICAS` (default 1).
//!
//! Prints, for 100-byte lines:
//! * acked lines/s: from the agent's first write until every shim exited
//!   (a shim exits only after the gateway acked every line as durable);
//! * delivered lines/s: until the intake accepted every line.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use logdrain_test_intake::{Intake, IntakeConfig, Vendor};

const KEY: &str = "bench-signing-key-0123456789abcdef";
const DD_KEY: &str = "dd-bench-key";

fn release_bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("bench executable path");
    let dir = exe.parent().and_then(Path::parent).expect("target dir");
    let path = dir.join(name);
    if !path.exists() {
        eprintln!(
            "{} is missing: run `cargo build --release --workspace` first",
            path.display()
        );
        std::process::exit(2);
    }
    path
}

fn env_usize(name: &str, default: usize) -> usize {
    match std::env::var(name) {
        Ok(v) => v.parse().unwrap_or_else(|_| {
            eprintln!("{name}={v:?} is not a whole number");
            std::process::exit(2)
        }),
        Err(_) => default,
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let lines = env_usize("LOGDRAIN_BENCH_LINES", 1_000_000);
    let replicas = env_usize("LOGDRAIN_BENCH_REPLICAS", 1);
    let mut config = IntakeConfig::with_datadog_keys([DD_KEY]);
    config.count_only = true;
    config.max_recorded_requests = 0;
    let intake = Intake::start(config).await.expect("start intake");
    let dir = tempfile::tempdir().expect("temp dir");

    let mut gateway = Command::new(release_bin("logdrain-gateway"))
        .arg("serve")
        .env("LOGDRAIN_DATA_DIR", dir.path().join("gw"))
        .env("LOGDRAIN_SIGNING_KEY", KEY)
        .env("LOGDRAIN_GRPC_LISTEN", "127.0.0.1:0")
        .env("LOGDRAIN_HTTP_LISTEN", "127.0.0.1:0")
        .env("LOGDRAIN_DATADOG_URL", intake.base_url())
        .env("LOGDRAIN_LOG", "warn")
        .stdout(Stdio::piped())
        .spawn()
        .expect("start gateway");
    let mut first = String::new();
    {
        use std::io::BufRead;
        let mut reader = std::io::BufReader::new(gateway.stdout.take().expect("stdout"));
        reader.read_line(&mut first).expect("gateway address line");
    }
    let grpc = first
        .split_whitespace()
        .find_map(|p| p.strip_prefix("grpc="))
        .expect("grpc address")
        .to_string();
    let token = String::from_utf8(
        Command::new(release_bin("logdrain-gateway"))
            .args(["token", "--agent-id", "bench"])
            .env("LOGDRAIN_SIGNING_KEY", KEY)
            .output()
            .expect("token")
            .stdout,
    )
    .expect("utf-8 token");

    let per_replica = lines / replicas;
    let start = Instant::now();
    let mut shims: Vec<_> = (0..replicas)
        .map(|r| {
            Command::new(release_bin("agent-shim"))
                .args(["--gateway", &format!("http://{grpc}")])
                .args([
                    "--agent-id",
                    "bench",
                    "--agent-server-id",
                    &format!("replica-{r}"),
                ])
                .env("LOGDRAIN_TOKEN", token.trim())
                .env("DATADOG_TOKEN", DD_KEY)
                .env("LOGDRAIN_DRAIN_TIMEOUT", "600s")
                // Large enough that no line is dropped: this measures
                // throughput, not overload (seq writes faster than any drain).
                .env("LOGDRAIN_BUFFER_BYTES", "2GiB")
                .args(["--", "seq", "-f", "%0100g", "1", &per_replica.to_string()])
                .stdout(Stdio::null())
                .spawn()
                .expect("start shim")
        })
        .collect();
    for shim in &mut shims {
        let status = shim.wait().expect("shim exit");
        assert!(status.success(), "shim failed: {status}");
    }
    let acked = start.elapsed();
    let total = per_replica * replicas;
    loop {
        let accepted = intake.stats().vendor(Vendor::Datadog).entries as usize;
        if accepted >= total {
            break;
        }
        if start.elapsed() > Duration::from_secs(1800) {
            eprintln!("only {accepted} of {total} delivered after 30 minutes");
            std::process::exit(1);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let delivered = start.elapsed();
    let _ = gateway.kill();
    let _ = gateway.wait();
    println!("pipeline: {total} lines of 100 B from {replicas} replica(s)");
    println!(
        "  acked (durable at the gateway): {:>10.0} lines/s ({:.2} s)",
        total as f64 / acked.as_secs_f64(),
        acked.as_secs_f64()
    );
    println!(
        "  delivered (accepted by intake): {:>10.0} lines/s ({:.2} s)",
        total as f64 / delivered.as_secs_f64(),
        delivered.as_secs_f64()
    );
}
