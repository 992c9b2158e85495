//! The shim's capture path (split → group → mask → buffer) on 1,000,000
//! lines, with `--multiline` and `--redact` off and on: CPU seconds per
//! million lines, and each ratio to both off. The gRPC send and the
//! passthrough's writes are not in it, so the ratios are upper bounds of
//! the whole shim's.
//!
//! Run: `cargo bench -p agent-shim --bench outgoing`. Input: 100-byte
//! ordinary lines, every 200th line starting a 20-line Python traceback (a
//! tenth of the lines); 64 KiB chunks as a pipe read delivers them.

use std::ffi::OsString;
use std::sync::Arc;
use std::time::Duration;

use agent_shim::buffer::SharedBuffer;
use agent_shim::capture::capture;
use agent_shim::multiline::{Bounds, Mode};
use agent_shim::outgoing::Outgoing;
use agent_shim::redact::Redactor;
use logdrain::v1::StreamKind;

const LINES: usize = 1_000_000;
const RUNS: usize = 9;

fn input() -> Vec<u8> {
    let mut out = Vec::with_capacity(LINES * 100);
    let mut i = 0;
    while i < LINES {
        if i % 200 == 0 {
            out.extend_from_slice(b"Traceback (most recent call last):\n");
            for frame in 0..18 {
                out.extend_from_slice(
                    format!("  File \"/app/agent/module_{frame}.py\", line {i}, in handler\n")
                        .as_bytes(),
                );
            }
            out.extend_from_slice(b"ValueError: invalid literal for int() with base 10: 'x'\n");
            i += 20;
        } else {
            let line = format!("2026-01-01T00:00:00Z INFO request handled path=/v1/items/{i:08} status=200 ms=12 user=u-123");
            let mut line = line.into_bytes();
            line.resize(99, b'.');
            out.extend_from_slice(&line);
            out.push(b'\n');
            i += 1;
        }
    }
    out
}

/// 50 secret values of 32 bytes, none of which occurs in the input.
fn secrets() -> Vec<(OsString, OsString)> {
    (0..50)
        .map(|i| {
            (
                format!("VENDOR_{i}_API_KEY").into(),
                format!("sk-live-{i:04}-abcdefghijklmnopqrstu").into(),
            )
        })
        .collect()
}

#[allow(unsafe_code)]
fn cpu_seconds() -> f64 {
    let mut usage = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: getrusage writes a `rusage` into the pointer it is given.
    let usage = unsafe {
        libc::getrusage(libc::RUSAGE_SELF, usage.as_mut_ptr());
        usage.assume_init()
    };
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    tv(usage.ru_utime) + tv(usage.ru_stime)
}

/// CPU seconds of one pass over `input`.
fn measure(input: &[u8], mode: &Mode, redactor: &Arc<Redactor>) -> f64 {
    let buffer = Arc::new(SharedBuffer::new(1 << 30, usize::MAX));
    let bounds = Bounds {
        max_lines: 1000,
        max_bytes: 256 * 1024,
        flush: Duration::from_millis(200),
    };
    let outgoing = Outgoing::new(
        StreamKind::Stderr,
        Arc::clone(&buffer),
        Arc::clone(redactor),
        mode.clone(),
        bounds,
    );
    let start = cpu_seconds();
    let report = capture(input, std::io::sink(), &outgoing, 256 * 1024);
    let spent = cpu_seconds() - start;
    assert_eq!(report.lines, LINES as u64);
    spent
}

fn main() {
    let input = input();
    let none = Arc::new(Redactor::off());
    let fifty = Arc::new(Redactor::from_vars(secrets(), []));
    assert_eq!(fifty.names().len(), 50);
    let configs = [
        ("off, redact off:", Mode::Off, &none),
        ("multiline auto:", Mode::Auto, &none),
        ("redact, 50 secrets:", Mode::Off, &fifty),
        ("both:", Mode::Auto, &fifty),
    ];
    // Alternated, so a busy moment of the machine is shared by all; medians.
    let mut runs = vec![Vec::new(); configs.len()];
    for _ in 0..RUNS {
        for (i, (_, mode, redactor)) in configs.iter().enumerate() {
            runs[i].push(measure(&input, mode, redactor));
        }
    }
    let medians: Vec<f64> = runs
        .iter_mut()
        .map(|runs| {
            runs.sort_by(f64::total_cmp);
            runs[RUNS / 2]
        })
        .collect();
    for ((name, _, _), median) in configs.iter().zip(&medians) {
        println!(
            "{name:<20} {median:.3} CPU-s per million lines, {:.2}x",
            median / medians[0]
        );
    }
}
