//! Bad input from the agent's side: odd bytes on the child's stdout go
//! through the real shim and gateway to the Datadog test intake. In every
//! case the shim's own stdout is byte-for-byte what the child wrote, and the
//! vendor receives every line by the documented rules (docs/reliability.md,
//! "Bad input"): invalid UTF-8 as U+FFFD, NUL kept, `\r` alone is data,
//! long lines as marked pieces of --max-line-bytes, nothing lost unaccounted.

mod common;

use std::collections::HashSet;
use std::time::Duration;

use common::*;
use logdrain_test_intake::Intake;
use serde_json::Value;

/// What the child wrote, what the shim passed through, and the Datadog
/// entries of the run's agent lines and shim notices.
struct Run {
    stdout: Vec<u8>,
    agent: Vec<Value>,
    shim: Vec<Value>,
    received_bytes: f64,
    _gateway: Gateway,
    _intake: Intake,
}

/// Runs `cat payload` under the shim and waits until the gateway delivered
/// every line it acked.
async fn run_agent(agent_id: &str, payload: &[u8], env: &[(&str, &str)]) -> Run {
    let intake = intake().await;
    let dir = tempfile::tempdir().unwrap();
    let gateway = Gateway::start(&dir.path().join("gw"), &intake.base_url());
    let file = dir.path().join("payload");
    std::fs::write(&file, payload).unwrap();

    let mut builder = ShimBuilder::new(&gateway.url(), agent_id, "replica-1")
        .env("DATADOG_TOKEN", DD_KEY)
        .env("LOGDRAIN_DRAIN_TIMEOUT", "300s");
    for (k, v) in env {
        builder = builder.env(k, v);
    }
    let mut shim = builder.spawn_args(&["cat", file.to_str().unwrap()]);
    let (out, err) = capture(&mut shim);
    let status = wait_exit(&mut shim, Duration::from_secs(600)).await;
    let stderr = String::from_utf8_lossy(&err.join().unwrap()).to_string();
    assert!(status.success(), "shim exited {status}: {stderr}");
    let stdout = out.join().unwrap();

    // Everything acked is delivered: the acked and delivered counters meet.
    let deadline = std::time::Instant::now() + Duration::from_secs(600);
    let metrics = loop {
        let metrics = gateway.metrics().await;
        let acked = metric_value(
            &metrics,
            "logdrain_acked_lines_total",
            &[("agent", agent_id)],
        );
        let delivered = metric_value(
            &metrics,
            "logdrain_delivered_lines_total",
            &[("agent", agent_id)],
        );
        if acked > 0.0 && acked == delivered {
            break metrics;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "acked {acked}, delivered {delivered}\n{stderr}\n{}",
            gateway.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let received_bytes = metric_value(
        &metrics,
        "logdrain_received_bytes_total",
        &[("agent", agent_id)],
    );

    let (shim_lines, agent_lines): (Vec<Value>, Vec<Value>) = intake
        .datadog_entries()
        .into_iter()
        .filter(|e| e["ddsource"] == agent_id)
        .partition(|e| e["logdrain"]["origin"] == "shim");
    Run {
        stdout,
        agent: agent_lines,
        shim: shim_lines,
        received_bytes,
        _gateway: gateway,
        _intake: intake,
    }
}

/// The pieces the documented rule makes of `payload`: split at `\n`, one
/// `\r` before it removed, an unterminated last line kept, lines cut into
/// pieces of `max` bytes. Each piece: (bytes, part, more_parts).
fn expected_pieces(payload: &[u8], max: usize) -> Vec<(Vec<u8>, u32, bool)> {
    let mut lines: Vec<&[u8]> = Vec::new();
    let mut rest = payload;
    while let Some(at) = rest.iter().position(|&b| b == b'\n') {
        let line = &rest[..at];
        lines.push(line.strip_suffix(b"\r").unwrap_or(line));
        rest = &rest[at + 1..];
    }
    if !rest.is_empty() {
        lines.push(rest);
    }
    let mut pieces = Vec::new();
    for line in lines {
        if line.is_empty() {
            pieces.push((Vec::new(), 0, false));
            continue;
        }
        let count = line.len().div_ceil(max);
        for (i, chunk) in line.chunks(max).enumerate() {
            pieces.push((chunk.to_vec(), i as u32, i + 1 < count));
        }
    }
    pieces
}

fn messages(entries: &[Value]) -> Vec<String> {
    entries
        .iter()
        .map(|e| {
            e["message"]
                .as_str()
                .expect("message is a string")
                .to_string()
        })
        .collect()
}

/// Asserts that the entries are exactly the expected pieces, in order, as
/// lossy UTF-8 text with their part marks.
fn assert_delivered_as_pieces(run: &Run, payload: &[u8], max: usize) {
    let expected = expected_pieces(payload, max);
    assert_eq!(run.agent.len(), expected.len(), "one entry per piece");
    for (i, (entry, (data, part, more))) in run.agent.iter().zip(&expected).enumerate() {
        assert_eq!(
            entry["message"].as_str().unwrap(),
            String::from_utf8_lossy(data),
            "entry {i}"
        );
        if *part > 0 || *more {
            assert_eq!(entry["logdrain"]["part"], *part, "entry {i}");
            assert_eq!(entry["logdrain"]["more_parts"], *more, "entry {i}");
        } else {
            assert!(entry.get("logdrain").is_none(), "entry {i}: {entry}");
        }
    }
    let bytes: usize = expected.iter().map(|(d, _, _)| d.len()).sum();
    assert_eq!(
        run.received_bytes, bytes as f64,
        "the gateway received every byte"
    );
}

const DEFAULT_MAX_LINE: usize = 256 * 1024;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn invalid_utf8_passes_through_untouched_and_arrives_with_replacement_characters() {
    let payload: &[u8] = b"ok \xff\xfe end\n\xc3\x28 half\n\xe2\x82 cut\nlast \xf0\x9f\x98";
    let run = run_agent("agent-utf8", payload, &[]).await;
    assert_eq!(run.stdout, payload);
    assert_eq!(
        messages(&run.agent),
        vec![
            "ok \u{fffd}\u{fffd} end",
            "\u{fffd}( half",
            "\u{fffd} cut",
            "last \u{fffd}"
        ]
    );
    assert_delivered_as_pieces(&run, payload, DEFAULT_MAX_LINE);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn nul_bytes_are_kept_in_the_line() {
    let payload: &[u8] = b"a\0b\n\0\0\n\0";
    let run = run_agent("agent-nul", payload, &[]).await;
    assert_eq!(run.stdout, payload);
    assert_eq!(messages(&run.agent), vec!["a\0b", "\0\0", "\0"]);
    assert_delivered_as_pieces(&run, payload, DEFAULT_MAX_LINE);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cr_only_line_ends_stay_in_the_line_and_a_progress_bar_is_cut_at_the_maximum() {
    let mut payload = b"10%\r20%\r100%\rdone\n".to_vec();
    // A progress bar that never writes `\n`: about 200 KB of `\r` updates.
    let mut n = 0u64;
    while payload.len() < 200_000 {
        payload.extend_from_slice(format!("progress {}%\r", n % 101).as_bytes());
        n += 1;
    }
    let max = 64 * 1024;
    let run = run_agent(
        "agent-cr",
        &payload,
        &[("LOGDRAIN_MAX_LINE_BYTES", "64KiB")],
    )
    .await;
    assert_eq!(run.stdout, payload);
    assert_eq!(run.agent[0]["message"], "10%\r20%\r100%\rdone");
    assert!(
        run.agent.len() >= 4,
        "the progress bar arrives as several pieces"
    );
    assert_delivered_as_pieces(&run, &payload, max);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_ten_megabyte_line_arrives_as_ordered_marked_pieces_with_every_byte() {
    let mut line = Vec::with_capacity(10 * 1024 * 1024);
    let mut i = 0u64;
    while line.len() < 10 * 1024 * 1024 {
        line.extend_from_slice(format!("{i:012} ").as_bytes());
        i += 1;
    }
    line.truncate(10 * 1024 * 1024);
    let mut payload = line.clone();
    payload.extend_from_slice(b"\nafter\n");
    let run = run_agent("agent-long", &payload, &[]).await;
    assert_eq!(run.stdout, payload);

    let pieces = &run.agent[..run.agent.len() - 1];
    assert_eq!(pieces.len(), line.len().div_ceil(DEFAULT_MAX_LINE));
    let mut joined = Vec::with_capacity(line.len());
    for (i, piece) in pieces.iter().enumerate() {
        assert_eq!(
            piece["logdrain"]["part"], i as u64,
            "pieces arrive in order"
        );
        assert_eq!(piece["logdrain"]["more_parts"], i + 1 < pieces.len());
        let text = piece["message"].as_str().unwrap();
        assert!(text.len() <= DEFAULT_MAX_LINE);
        joined.extend_from_slice(text.as_bytes());
    }
    assert_eq!(joined.len(), line.len(), "byte count");
    assert!(joined == line, "the pieces rebuild the line");
    assert_eq!(run.agent.last().unwrap()["message"], "after");
    assert_delivered_as_pieces(&run, &payload, DEFAULT_MAX_LINE);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn random_binary_garbage_is_delivered_with_every_byte_accounted() {
    // xorshift64*, seeded: the same garbage on every run.
    let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
    let payload: Vec<u8> = (0..2 * 1024 * 1024)
        .map(|_| {
            state ^= state >> 12;
            state ^= state << 25;
            state ^= state >> 27;
            (state.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 56) as u8
        })
        .collect();
    let run = run_agent(
        "agent-binary",
        &payload,
        &[("LOGDRAIN_MAX_LINE_BYTES", "4KiB")],
    )
    .await;
    assert!(run.stdout == payload, "stdout is byte-for-byte the child's");
    assert!(
        run.shim.is_empty(),
        "no drops, no failures: {:?}",
        messages(&run.shim)
    );
    assert_delivered_as_pieces(&run, &payload, 4096);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_burst_of_a_million_lines_is_delivered_once_or_accounted_as_dropped() {
    let (delivered, dropped) = burst_of_a_million_lines("agent-burst", &[]).await;
    println!("burst: {delivered} delivered, {dropped} dropped and reported");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_burst_through_a_small_buffer_reports_exactly_the_lines_never_sent() {
    // A buffer far below the burst (and below the in-flight window) makes
    // the shim drop while batches are in flight; those are never dropped,
    // so the notices still add up to exactly the missing lines.
    let (delivered, dropped) =
        burst_of_a_million_lines("agent-burst-small", &[("LOGDRAIN_BUFFER_BYTES", "2MiB")]).await;
    println!("burst through 2 MiB: {delivered} delivered, {dropped} dropped and reported");
}

/// Runs `cat` of a million numbered lines through the shim; asserts each
/// arrives at most once and in order, and that the shim's drop notices
/// account for every missing one. Returns (delivered, dropped).
async fn burst_of_a_million_lines(agent_id: &str, env: &[(&str, &str)]) -> (u64, u64) {
    const LINES: u64 = 1_000_000;
    let payload: Vec<u8> = (1..=LINES)
        .flat_map(|i| format!("burst {i}\n").into_bytes())
        .collect();
    let run = run_agent(agent_id, &payload, env).await;
    assert!(run.stdout == payload, "stdout is byte-for-byte the child's");

    let mut seen = HashSet::with_capacity(LINES as usize);
    let mut last = 0;
    for message in messages(&run.agent) {
        let seq: u64 = message
            .strip_prefix("burst ")
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("unexpected line {message:?}"));
        assert!(seen.insert(seq), "line {seq} arrived twice");
        assert!(seq > last, "lines arrive in order ({seq} after {last})");
        last = seq;
    }
    // The buffer drops the oldest unsent lines when full; each drop notice
    // says how many, and together they account for every missing line.
    let dropped: u64 = messages(&run.shim)
        .iter()
        .filter_map(|m| m.strip_prefix("agent-shim: dropped "))
        .filter_map(|rest| rest.split(' ').next()?.parse::<u64>().ok())
        .sum();
    assert_eq!(
        seen.len() as u64 + dropped,
        LINES,
        "delivered {} + dropped {dropped}",
        seen.len()
    );
    (seen.len() as u64, dropped)
}
