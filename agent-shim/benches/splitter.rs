//! Line splitting, the shim's first hot path: 1,000,000 lines of 100 bytes
//! fed in 64 KiB chunks (as a pipe read delivers them), and long lines cut
//! into pieces at the maximum line size.
//!
//! Run: `cargo bench -p agent-shim --bench splitter`. Criterion reports
//! time per iteration and throughput in bytes/s.

use std::hint::black_box;

use agent_shim::splitter::LineSplitter;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};

const CHUNK: usize = 64 * 1024;
/// The shim's default maximum line size (`--max-line-bytes`).
const MAX_LINE: usize = 256 * 1024;

/// `count` lines of `len` bytes (terminator included), like
/// `seq -f %0{len-1}g`.
fn lines(count: usize, len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(count * len);
    for i in 0..count {
        let digits = i.to_string();
        let keep = digits.len().min(len - 1);
        out.resize(out.len() + (len - 1 - keep), b'0');
        out.extend_from_slice(&digits.as_bytes()[digits.len() - keep..]);
        out.push(b'\n');
    }
    out
}

/// Splits `input` in `CHUNK`-sized pushes and returns the piece count.
fn split(input: &[u8], max_line: usize) -> usize {
    let mut splitter = LineSplitter::new(max_line);
    let mut out = Vec::with_capacity(1024);
    let mut pieces = 0;
    for chunk in input.chunks(CHUNK) {
        splitter.push(chunk, &mut out);
        pieces += out.len();
        out.clear();
    }
    splitter.finish(&mut out);
    pieces + out.len()
}

fn bench(c: &mut Criterion) {
    let short = lines(1_000_000, 100);
    assert_eq!(split(&short, MAX_LINE), 1_000_000, "100-byte lines");
    let mut group = c.benchmark_group("splitter");
    group.sample_size(10);
    group.throughput(Throughput::Bytes(short.len() as u64));
    group.bench_function("1M lines of 100 B in 64 KiB chunks", |b| {
        b.iter(|| split(black_box(&short), MAX_LINE))
    });

    // 64 lines of 1 MiB: each is cut into 4 pieces of the maximum.
    let long = lines(64, 1 << 20);
    assert_eq!(split(&long, MAX_LINE), 64 * 4, "1 MiB lines");
    group.throughput(Throughput::Bytes(long.len() as u64));
    group.bench_function("64 lines of 1 MiB cut at 256 KiB", |b| {
        b.iter(|| split(black_box(&long), MAX_LINE))
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
