//! What a test does when an outside tool it needs (chromium, promtool,
//! moto) is missing: by default it skips, saying so in one loud line on
//! stderr that the test harness does not swallow; with
//! `LOGDRAIN_TEST_REQUIRE_ALL=1` (set by `tests/run.sh`, which installs the
//! tools) it fails, naming the tool and how to install it.
//!
//! Uses only the standard library, so every test crate can include it
//! (`mod common;`, or by `#[path]` like `tests/moto/mod.rs`).

use std::io::Write;

/// Set to 1 to make a missing tool fail its test instead of skipping it.
pub const REQUIRE_ALL: &str = "LOGDRAIN_TEST_REQUIRE_ALL";

/// Called when `tool` is missing: `None` after the skip line, or a panic
/// when every tool is required. `install` says how to get it.
pub fn missing<T>(tool: &str, install: &str) -> Option<T> {
    let test = std::thread::current()
        .name()
        .unwrap_or("this test")
        .to_string();
    if std::env::var(REQUIRE_ALL).is_ok_and(|v| v == "1") {
        panic!("{tool} is missing and {REQUIRE_ALL}=1 requires it; install it: {install}");
    }
    // Straight to the process's stderr: `eprintln!` is captured, and shown
    // only for failing tests.
    let _ = writeln!(
        std::io::stderr(),
        "SKIPPED {test}: {tool} is missing (install it: {install}; {REQUIRE_ALL}=1 makes this a failure)"
    );
    None
}
