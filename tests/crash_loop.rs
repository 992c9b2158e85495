//! Gateway crash loop: three shims stream continuously while the gateway is
//! killed with SIGKILL at random moments, at least 20 times, and restarted
//! on the same data dir and ports each time. When the agents stop, the
//! shims drain, and every line the agents wrote must be at the vendor:
//! the count lost is 0. Duplicates (at-least-once delivery around a crash)
//! are counted and printed, not forbidden.
//!
//! The kill moments come from a seeded generator; the seed is printed, and
//! `LOGDRAIN_TEST_SEED=<seed>` replays the same schedule.

mod common;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::*;

const SHIMS: usize = 3;
const KILLS: usize = 22;

/// xorshift64*: a small seeded generator, enough for a kill schedule.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed.max(1))
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// A duration in `[lo, hi]` milliseconds.
    fn millis(&mut self, lo: u64, hi: u64) -> Duration {
        Duration::from_millis(lo + self.next() % (hi - lo + 1))
    }
}

fn seed() -> u64 {
    match std::env::var("LOGDRAIN_TEST_SEED") {
        Ok(v) => v
            .parse()
            .unwrap_or_else(|_| panic!("LOGDRAIN_TEST_SEED={v:?} is not a number")),
        Err(_) => SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn acked_lines_survive_a_gateway_crash_loop_with_three_streaming_shims() {
    let seed = seed();
    println!("crash loop: seed {seed} (replay with LOGDRAIN_TEST_SEED={seed})");
    let mut rng = Rng::new(seed);

    let intake = intake().await;
    let dir = tempfile::tempdir().unwrap();
    let stop = dir.path().join("stop");
    let mut gateway = Gateway::start(&dir.path().join("gw"), &intake.base_url());

    // Each agent writes 20 numbered lines every 50 ms until told to stop.
    let mut shims = Vec::new();
    for n in 1..=SHIMS {
        let script = format!(
            "c=1; while [ ! -e '{stop}' ]; do seq -f \"shim{n} chunk$c line %g\" 1 20; c=$((c+1)); sleep 0.05; done",
            stop = stop.display()
        );
        let mut shim = ShimBuilder::new(&gateway.url(), "agent-loop", &format!("replica-{n}"))
            .env("DATADOG_TOKEN", DD_KEY)
            .env("LOGDRAIN_DRAIN_TIMEOUT", "180s")
            .spawn_sh(&script);
        let passthrough = Passthrough::start(&mut shim);
        shims.push((shim, passthrough));
    }

    for _ in 0..KILLS {
        tokio::time::sleep(rng.millis(100, 900)).await;
        gateway.kill9();
        tokio::time::sleep(rng.millis(0, 300)).await;
        gateway.restart();
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    std::fs::write(&stop, b"").unwrap();

    let mut written = Vec::new();
    for (n, (mut shim, passthrough)) in shims.into_iter().enumerate() {
        let status = wait_exit(&mut shim, Duration::from_secs(240)).await;
        let (lines, stderr) = passthrough.finish();
        assert!(status.success(), "shim {} exited {status}: {stderr}", n + 1);
        assert_drained(&stderr);
        assert!(!lines.is_empty(), "shim {} passed nothing through", n + 1);
        written.extend(lines);
    }

    let at_vendor = || -> Vec<String> {
        (1..=SHIMS)
            .flat_map(|n| dd_messages(&intake, &format!("replica-{n}")))
            .collect()
    };
    let expected = counted(&written);
    let complete = wait_until(Duration::from_secs(240), || {
        let got = counted(&at_vendor());
        expected.keys().all(|line| got.contains_key(line))
    })
    .await;
    let messages = at_vendor();
    let got = counted(&messages);
    let lost: Vec<&String> = expected.keys().filter(|l| !got.contains_key(*l)).collect();
    let duplicates = messages.len() - got.len();
    println!(
        "crash loop: {KILLS} SIGKILLs, {} lines written by {SHIMS} agents, {} delivered, lost {}, duplicates {duplicates}",
        written.len(),
        got.len(),
        lost.len()
    );
    assert_eq!(expected.len(), written.len(), "agent lines are unique");
    assert!(
        complete,
        "first lost lines: {:?}\ngateway log:\n{}",
        &lost[..lost.len().min(5)],
        gateway.log()
    );
    assert!(lost.is_empty());
    assert!(
        got.keys().all(|line| expected.contains_key(line)),
        "the vendor received lines no agent wrote"
    );
}
