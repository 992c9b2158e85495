//! `logdrain-loadgen`: a load generator for benchmarks. It plays N shims:
//! each stream opens like `agent-shim` (token, ids, a fresh boot id, the
//! destination secrets found in its environment), sends batches of
//! generated lines pipelined (a window of unacked batches), and times each
//! batch from send to the gateway's durable ack.
//!
//! It prints acked lines/s, MB/s and ack latency percentiles, then one JSON
//! line for scripts. It is a benchmark tool: it must not be used to ship
//! real logs, and it never prints a token or a secret.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use bytes::Bytes;
use clap::{ArgGroup, Parser};
use logdrain::v1::drain_client::DrainClient;
use logdrain::v1::{
    gateway_message, shim_message, Batch, Line, Open, Origin, ShimMessage, StreamKind,
};
use logdrain_gateway::auth::SigningKey;
use tokio::sync::{mpsc, oneshot, Semaphore};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Endpoint;

/// Load generator: N concurrent ingest streams to a gateway, measuring
/// durable-ack throughput and latency. Destination secrets
/// (`DATADOG_TOKEN`, `NEW_RELIC_LICENSE_KEY`, ...) set in its environment
/// are sent in every stream's Open, as the shim does; with none, lines are
/// only queued.
#[derive(Parser, Debug)]
#[command(version, group(ArgGroup::new("auth").required(true).args(["token", "signing_key"])))]
struct Args {
    /// The gateway's gRPC address, `http://host:port`.
    #[arg(long, env = "LOGDRAIN_GATEWAY")]
    gateway: String,

    /// The agent's ingest token (`logdrain-gateway token --agent-id ID`).
    #[arg(long, env = "LOGDRAIN_TOKEN", hide_env_values = true)]
    token: Option<String>,

    /// The gateway's signing key, to mint the token instead of `--token`.
    #[arg(long, env = "LOGDRAIN_SIGNING_KEY", hide_env_values = true)]
    signing_key: Option<String>,

    /// Agent id of every stream (stream i is agent-server `loadgen-<i>`).
    #[arg(long, env = "LOGDRAIN_AGENT_ID", default_value = "loadgen")]
    agent_id: String,

    /// Concurrent streams (each its own connection, like one shim).
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    streams: u32,

    /// Lines to send in total, spread evenly over the streams.
    #[arg(long, default_value_t = 1_000_000, value_parser = clap::value_parser!(u64).range(1..))]
    lines: u64,

    /// Bytes per line.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=1_048_576))]
    line_bytes: u32,

    /// Lines per second in total; 0 = as fast as the gateway acks.
    #[arg(long, default_value_t = 0)]
    rate: u64,

    /// Lines per batch (the shim sends up to 1,000).
    #[arg(long, default_value_t = 1_000, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    batch_lines: u32,

    /// Batches a stream may have sent but not yet acked.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..=1_024))]
    window: u32,
}

/// Why a stream failed.
#[derive(Debug, thiserror::Error)]
enum LoadError {
    #[error("{0:?} is not a gateway address: {1}; use http://host:port")]
    Address(String, #[source] tonic::transport::Error),
    #[error("stream {stream}: cannot connect to the gateway: {source}")]
    Connect {
        stream: u32,
        #[source]
        source: tonic::transport::Error,
    },
    #[error("stream {stream}: the gateway refused or ended the stream: {status}")]
    Refused { stream: u32, status: tonic::Status },
    #[error("stream {stream}: the gateway closed the stream with {acked} of {sent} lines acked")]
    Closed { stream: u32, acked: u64, sent: u64 },
    #[error("stream {stream}: the gateway acked seq {acked}, beyond the {sent} lines sent")]
    AckBeyondSent { stream: u32, acked: u64, sent: u64 },
}

/// What one stream measured.
struct StreamReport {
    lines: u64,
    /// Send → durable ack of every batch.
    latencies: Vec<Duration>,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let token = match (&args.token, &args.signing_key) {
        (Some(token), _) => token.trim().to_string(),
        (None, Some(key)) => SigningKey::load(Some(key), std::path::Path::new("."))
            .context("cannot use --signing-key")?
            .token(&args.agent_id),
        (None, None) => anyhow::bail!("give --token or --signing-key"),
    };
    let secrets: HashMap<String, String> = logdrain::SECRET_VARS
        .iter()
        .filter_map(|name| std::env::var(name).ok().map(|v| (name.to_string(), v)))
        .collect();
    let endpoint = Endpoint::from_shared(args.gateway.clone())
        .map_err(|e| LoadError::Address(args.gateway.clone(), e))?;
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the tokio runtime")?
        .block_on(run(args, endpoint, token, secrets))
}

async fn run(
    args: Args,
    endpoint: Endpoint,
    token: String,
    secrets: HashMap<String, String>,
) -> anyhow::Result<()> {
    let pool = Arc::new(line_pool(args.line_bytes as usize));
    let boot = format!("{:016x}", rand::random::<u64>());
    let per_stream = args.lines / u64::from(args.streams);
    let extra = args.lines % u64::from(args.streams);
    // Each stream's share of the rate (0 = unlimited).
    let stream_rate = args.rate as f64 / f64::from(args.streams);
    let start = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for stream in 0..args.streams {
        let lines = per_stream + u64::from(u64::from(stream) < extra);
        let plan = StreamPlan {
            stream,
            lines,
            batch_lines: u64::from(args.batch_lines),
            window: args.window as usize,
            rate: stream_rate,
            start,
            open: Open {
                token: token.clone(),
                agent_id: args.agent_id.clone(),
                agent_server_id: format!("loadgen-{stream}"),
                boot_id: boot.clone(),
                secrets: secrets.clone(),
                protocol_version: logdrain::PROTOCOL_VERSION,
                handoff: None,
            },
        };
        tasks.spawn(run_stream(endpoint.clone(), plan, pool.clone()));
    }
    let mut latencies = Vec::new();
    let mut acked = 0u64;
    while let Some(joined) = tasks.join_next().await {
        let report = joined.context("a stream task panicked")??;
        acked += report.lines;
        latencies.extend(report.latencies);
    }
    let seconds = start.elapsed().as_secs_f64();
    latencies.sort_unstable();
    let pct = |q: f64| -> f64 {
        if latencies.is_empty() {
            return 0.0;
        }
        let rank = ((q * latencies.len() as f64).ceil() as usize).clamp(1, latencies.len());
        latencies[rank - 1].as_secs_f64() * 1e3
    };
    let lines_per_s = acked as f64 / seconds;
    let mb_per_s = lines_per_s * f64::from(args.line_bytes) / 1e6;
    println!(
        "loadgen: {acked} lines of {} B over {} streams (batches of {}, window {}, rate {})",
        args.line_bytes,
        args.streams,
        args.batch_lines,
        args.window,
        if args.rate == 0 {
            "unlimited".to_string()
        } else {
            format!("{} lines/s", args.rate)
        }
    );
    println!(
        "  acked (durable): {lines_per_s:>12.0} lines/s  {mb_per_s:>8.1} MB/s  ({seconds:.2} s)"
    );
    println!(
        "  ack latency ms: p50 {:.2}  p99 {:.2}  p999 {:.2}  max {:.2}  ({} batches)",
        pct(0.5),
        pct(0.99),
        pct(0.999),
        pct(1.0),
        latencies.len()
    );
    println!(
        "{}",
        serde_json::json!({
            "streams": args.streams,
            "lines": acked,
            "line_bytes": args.line_bytes,
            "batch_lines": args.batch_lines,
            "window": args.window,
            "rate": args.rate,
            "seconds": seconds,
            "acked_lines_per_s": lines_per_s,
            "acked_mb_per_s": mb_per_s,
            "ack_latency_ms": {
                "p50": pct(0.5), "p99": pct(0.99), "p999": pct(0.999), "max": pct(1.0),
                "batches": latencies.len(),
            },
        })
    );
    Ok(())
}

/// 1,024 distinct lines of `len` bytes (a counter, zero-padded like
/// `seq -f %0100g`), so vendor bodies compress like real output rather than
/// like one repeated line.
fn line_pool(len: usize) -> Vec<Bytes> {
    (0..1_024u32)
        .map(|i| {
            let digits = u64::from(i).wrapping_mul(2_654_435_761).to_string();
            let keep = digits.len().min(len);
            let mut line = vec![b'0'; len - keep];
            line.extend_from_slice(&digits.as_bytes()[digits.len() - keep..]);
            Bytes::from(line)
        })
        .collect()
}

struct StreamPlan {
    stream: u32,
    lines: u64,
    batch_lines: u64,
    window: usize,
    /// Lines per second for this stream; 0 = unlimited.
    rate: f64,
    start: Instant,
    open: Open,
}

fn now_ns() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
}

/// Opens one stream, sends its lines and waits until the gateway acked all.
async fn run_stream(
    endpoint: Endpoint,
    plan: StreamPlan,
    pool: Arc<Vec<Bytes>>,
) -> Result<StreamReport, LoadError> {
    let stream = plan.stream;
    let channel = endpoint
        .connect()
        .await
        .map_err(|source| LoadError::Connect { stream, source })?;
    let mut client = DrainClient::new(channel)
        .max_encoding_message_size(logdrain::MAX_MESSAGE_BYTES)
        .max_decoding_message_size(logdrain::MAX_MESSAGE_BYTES);
    let (tx, rx) = mpsc::channel::<ShimMessage>(plan.window + 1);
    let open = ShimMessage {
        kind: Some(shim_message::Kind::Open(plan.open)),
    };
    // The receiver is alive until `ship` returns; a failed send means the
    // call already failed, which `ship` reports.
    let _ = tx.send(open).await;
    let mut acks = client
        .ship(ReceiverStream::new(rx))
        .await
        .map_err(|status| LoadError::Refused { stream, status })?
        .into_inner();

    // Batches in flight: (last seq, sent at). The sender holds a window
    // permit per batch; the ack reader returns them.
    let window = Arc::new(Semaphore::new(plan.window));
    let (sent_tx, mut sent_rx) = mpsc::unbounded_channel::<(u64, Instant)>();
    let total = plan.lines;
    let (done_tx, done_rx) = oneshot::channel::<()>();
    let sender = {
        let window = window.clone();
        tokio::spawn(async move {
            let mut next_seq = 1u64;
            while next_seq <= total {
                let Ok(permit) = window.acquire().await else {
                    return;
                };
                permit.forget();
                if plan.rate > 0.0 {
                    let due =
                        plan.start + Duration::from_secs_f64((next_seq - 1) as f64 / plan.rate);
                    tokio::time::sleep_until(due.into()).await;
                }
                let count = plan.batch_lines.min(total - next_seq + 1);
                let timestamp_ns = now_ns();
                let lines = (0..count)
                    .map(|i| Line {
                        timestamp_ns,
                        stream: StreamKind::Stdout as i32,
                        origin: Origin::Agent as i32,
                        data: pool[((next_seq + i) % pool.len() as u64) as usize].clone(),
                        ..Default::default()
                    })
                    .collect();
                let batch = ShimMessage {
                    kind: Some(shim_message::Kind::Batch(Batch {
                        first_seq: next_seq,
                        lines,
                        ..Batch::default()
                    })),
                };
                let last = next_seq + count - 1;
                if sent_tx.send((last, Instant::now())).is_err() || tx.send(batch).await.is_err() {
                    return;
                }
                next_seq = last + 1;
            }
            // Keep the request stream open until every ack arrived: closing
            // it early would end the stream before the last acks.
            let _ = done_rx.await;
            drop(tx);
        })
    };

    let mut in_flight: VecDeque<(u64, Instant)> = VecDeque::new();
    let mut latencies = Vec::with_capacity(total.div_ceil(plan.batch_lines) as usize);
    let mut acked = 0u64;
    let result = loop {
        if acked >= total {
            break Ok(());
        }
        let message = match acks.message().await {
            Ok(Some(message)) => message,
            Ok(None) => {
                break Err(LoadError::Closed {
                    stream,
                    acked,
                    sent: total,
                })
            }
            Err(status) => break Err(LoadError::Refused { stream, status }),
        };
        let Some(gateway_message::Kind::Ack(ack)) = message.kind else {
            continue;
        };
        if ack.acked_seq > total {
            break Err(LoadError::AckBeyondSent {
                stream,
                acked: ack.acked_seq,
                sent: total,
            });
        }
        acked = acked.max(ack.acked_seq);
        while let Ok(sent) = sent_rx.try_recv() {
            in_flight.push_back(sent);
        }
        let now = Instant::now();
        while let Some(&(last, sent_at)) = in_flight.front() {
            if last > acked {
                break;
            }
            in_flight.pop_front();
            latencies.push(now - sent_at);
            window.add_permits(1);
        }
    };
    window.close();
    let _ = done_tx.send(());
    let _ = sender.await;
    result.map(|()| StreamReport {
        lines: acked,
        latencies,
    })
}
