//! A timing harness for the intakes' cost per accepted line (test builds
//! only).
//!
//! Each vendor module has an ignored test that hands its handler realistic
//! request bodies, as the gateway's sinks build them, in a loop and prints
//! the time per accepted line: wall-clock and, where the platform reports
//! it, the CPU time of the measuring thread. Run them alone and in release
//! mode, one at a time:
//!
//! ```text
//! cargo test --release -p logdrain-test-intake --lib -- --ignored --nocapture --test-threads 1 ns_per_line
//! ```
//!
//! The figures compare versions of this crate on one machine; no test
//! asserts a time.

use std::future::Future;
use std::io::Write;
use std::time::Instant;

use flate2::write::GzEncoder;
use flate2::Compression;

use crate::IntakeConfig;

/// Lines of a Datadog or New Relic request in the timing tests.
pub(crate) const LINES: usize = 1_000;

/// The benchmark's lines: `seq -f %099g`, 100 bytes with the newline.
pub(crate) fn line(i: usize) -> String {
    format!("{i:099}")
}

/// Milliseconds since the epoch of the timing tests' lines (2024-05-01).
pub(crate) const STAMP_MS: i64 = 1_714_564_800_000;

pub(crate) fn gzip(data: &[u8]) -> Vec<u8> {
    let mut encoder = GzEncoder::new(Vec::new(), Compression::default());
    encoder.write_all(data).expect("writing to memory");
    encoder.finish().expect("writing to memory")
}

/// The benchmark's intake: counts and times lines, keeps none.
pub(crate) fn counting_config() -> IntakeConfig {
    IntakeConfig {
        max_recorded_entries: 0,
        ..IntakeConfig::default()
    }
}

/// CPU time of the calling thread in nanoseconds, where the platform
/// reports it (Linux: `/proc/thread-self/schedstat`).
fn thread_cpu_ns() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    text.split_whitespace().next()?.parse().ok()
}

/// Runs `request` (which accepts `lines` lines) for about two seconds after
/// a warm-up, and prints the time per line.
pub(crate) async fn ns_per_line<F, Fut>(label: &str, lines: usize, mut request: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = ()>,
{
    for _ in 0..20 {
        request().await;
    }
    let wall = Instant::now();
    let cpu = thread_cpu_ns();
    let mut calls = 0u64;
    while wall.elapsed().as_secs_f64() < 2.0 {
        for _ in 0..10 {
            request().await;
        }
        calls += 10;
    }
    let wall_ns = wall.elapsed().as_nanos() as f64;
    let per_line = |ns: f64| ns / (calls as f64 * lines as f64);
    let cpu = match (cpu, thread_cpu_ns()) {
        (Some(start), Some(end)) => format!("{:.0} ns/line CPU", per_line((end - start) as f64)),
        _ => "CPU time not reported".to_string(),
    };
    println!(
        "{label}: {:.0} ns/line wall, {cpu} ({calls} requests of {lines} lines)",
        per_line(wall_ns)
    );
}
