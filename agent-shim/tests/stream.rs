//! The agent-shim binary against a tiny recording gateway (a real tonic
//! server implementing `logdrain.v1.Drain` in this file): what arrives,
//! in which order, with which `Open`, across dropped streams and a gateway
//! that starts late.
//!
//! Time limits below are upper bounds that turn a hang into a failure; no
//! test asserts how fast anything happens.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::pin::Pin;
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use logdrain::v1::drain_server::{Drain, DrainServer};
use logdrain::v1::{
    gateway_message, shim_message, Ack, Batch, CheckReply, CheckRequest, GatewayMessage, Open,
    Origin, ShimMessage, StatusReply, StatusRequest, StreamKind, TailLine, TailRequest,
};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio::net::TcpListener;
use tokio::process::{Child, Command};
use tokio::sync::{mpsc, oneshot, watch};
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tokio_stream::Stream;
use tonic::{Request, Response, Status, Streaming};

const SHIM: &str = env!("CARGO_BIN_EXE_agent-shim");
/// Bound on anything a test waits for.
const LIMIT: Duration = Duration::from_secs(120);

/// What the recording gateway does with a stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Behavior {
    /// Ack every batch with its last seq.
    AckAll,
    /// On the first stream: take the first batch without acking it, then
    /// fail the stream with UNAVAILABLE. Later streams: ack everything.
    DropFirstStream,
    /// Read each stream's `Open`, then refuse it with UNAUTHENTICATED,
    /// echoing the token (as a careless or hostile gateway might).
    Unauthenticated,
    /// Until [`Gateway::release`]: record batches and ack none; then fail
    /// those streams with UNAVAILABLE and ack everything on later ones.
    HoldUntilReleased,
    /// Like the real gateway after another client wrote [`FORGED_SEQ`] into
    /// the first boot it sees: every batch of that boot is acked with that
    /// seq and nothing of it is stored. Other boots: stored and acked.
    ForgedFirstBoot,
    /// Refuses every stream of the first boot it sees with ABORTED, as the
    /// real gateway does while another stream holds that boot; stores and
    /// acks the streams of other boots.
    FirstBootLive,
}

/// The seq a forger wrote into the first boot (see [`Behavior::ForgedFirstBoot`]).
const FORGED_SEQ: u64 = 1_000_000_000_000_000;

/// Everything the gateway received, per stream, in arrival order.
#[derive(Debug, Default)]
struct Recorded {
    opens: Vec<Open>,
    /// (stream index, batch)
    batches: Vec<(usize, Batch)>,
    /// Every line acked, by seq.
    acked: BTreeMap<u64, logdrain::v1::Line>,
    /// Streams held by [`Behavior::HoldUntilReleased`] (nothing acked).
    held_streams: Vec<usize>,
    /// [`Behavior::ForgedFirstBoot`]: the stored lines, in order, and each
    /// boot's high-water mark.
    stored: Vec<logdrain::v1::Line>,
    marks: BTreeMap<String, u64>,
}

#[derive(Clone)]
struct Recorder {
    behavior: Behavior,
    recorded: Arc<Mutex<Recorded>>,
    released: watch::Receiver<bool>,
}

type GatewayStream = Pin<Box<dyn Stream<Item = Result<GatewayMessage, Status>> + Send>>;

#[tonic::async_trait]
impl Drain for Recorder {
    type ShipStream = GatewayStream;
    type TailStream = Pin<Box<dyn Stream<Item = Result<TailLine, Status>> + Send>>;

    async fn ship(
        &self,
        request: Request<Streaming<ShimMessage>>,
    ) -> Result<Response<Self::ShipStream>, Status> {
        if self.behavior == Behavior::Unauthenticated {
            let mut inbound = request.into_inner();
            let token = match inbound.message().await {
                Ok(Some(ShimMessage {
                    kind: Some(shim_message::Kind::Open(open)),
                })) => {
                    let token = open.token.clone();
                    self.recorded.lock().unwrap().opens.push(open);
                    token
                }
                _ => String::new(),
            };
            return Err(Status::unauthenticated(format!(
                "token {token:?} does not match agent id"
            )));
        }
        let mut inbound = request.into_inner();
        let recorded = Arc::clone(&self.recorded);
        let behavior = self.behavior;
        let mut released = self.released.clone();
        let held = behavior == Behavior::HoldUntilReleased && !*released.borrow();
        let (tx, rx) = mpsc::channel(64);
        if behavior == Behavior::ForgedFirstBoot {
            tokio::spawn(serve_deduplicating(inbound, recorded, tx));
            return Ok(Response::new(Box::pin(ReceiverStream::new(rx))));
        }
        if behavior == Behavior::FirstBootLive {
            let Ok(Some(ShimMessage {
                kind: Some(shim_message::Kind::Open(open)),
            })) = inbound.message().await
            else {
                return Err(Status::invalid_argument("Open first"));
            };
            {
                let mut recorded = recorded.lock().unwrap();
                let live = recorded.opens.first().map(|o| o.boot_id.clone());
                recorded.opens.push(open.clone());
                if live.is_none_or(|live| live == open.boot_id) {
                    return Err(Status::aborted(
                        "this boot id is being written by another stream",
                    ));
                }
            }
            tokio::spawn(serve_deduplicating(inbound, recorded, tx));
            return Ok(Response::new(Box::pin(ReceiverStream::new(rx))));
        }
        if held {
            tokio::spawn(async move {
                let stream_index = {
                    let mut recorded = recorded.lock().unwrap();
                    let index = recorded.opens.len();
                    recorded.held_streams.push(index);
                    index
                };
                loop {
                    tokio::select! {
                        message = inbound.message() => match message {
                            Ok(Some(ShimMessage { kind: Some(shim_message::Kind::Open(open)) })) => {
                                recorded.lock().unwrap().opens.push(open)
                            }
                            Ok(Some(ShimMessage { kind: Some(shim_message::Kind::Batch(batch)) })) => {
                                recorded.lock().unwrap().batches.push((stream_index, batch))
                            }
                            Ok(Some(_)) => {}
                            Ok(None) | Err(_) => return,
                        },
                        () = async { let _ = released.wait_for(|&released| released).await; } => {
                            let _ = tx.send(Err(Status::unavailable("test releases the stream"))).await;
                            return;
                        }
                    }
                }
            });
            return Ok(Response::new(Box::pin(ReceiverStream::new(rx))));
        }
        tokio::spawn(async move {
            let stream_index = {
                let recorded = recorded.lock().unwrap();
                recorded.opens.len()
            };
            while let Ok(Some(message)) = inbound.message().await {
                match message.kind {
                    Some(shim_message::Kind::Open(open)) => {
                        recorded.lock().unwrap().opens.push(open)
                    }
                    Some(shim_message::Kind::Batch(batch)) => {
                        let last = batch.first_seq + batch.lines.len() as u64 - 1;
                        let drop_it = behavior == Behavior::DropFirstStream && stream_index == 0;
                        {
                            let mut recorded = recorded.lock().unwrap();
                            if !drop_it {
                                for (i, line) in batch.lines.iter().enumerate() {
                                    recorded
                                        .acked
                                        .insert(batch.first_seq + i as u64, line.clone());
                                }
                            }
                            recorded.batches.push((stream_index, batch));
                        }
                        if drop_it {
                            let _ = tx
                                .send(Err(Status::unavailable("test drops the stream")))
                                .await;
                            return;
                        }
                        let ack = GatewayMessage {
                            kind: Some(gateway_message::Kind::Ack(Ack { acked_seq: last })),
                        };
                        if tx.send(Ok(ack)).await.is_err() {
                            return;
                        }
                    }
                    None => {}
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn tail(
        &self,
        _request: Request<TailRequest>,
    ) -> Result<Response<Self::TailStream>, Status> {
        Err(Status::unimplemented("not part of these tests"))
    }

    /// Answers like a gateway older than `Drain.Check`.
    async fn check(&self, _request: Request<CheckRequest>) -> Result<Response<CheckReply>, Status> {
        Err(Status::unimplemented("unknown method Check"))
    }

    async fn status(
        &self,
        _request: Request<StatusRequest>,
    ) -> Result<Response<StatusReply>, Status> {
        Err(Status::unimplemented("not part of these tests"))
    }
}

/// One stream of [`Behavior::ForgedFirstBoot`] (or, after its `Open`, of
/// [`Behavior::FirstBootLive`]): de-duplicates by boot and seq against a
/// high-water mark, as the real gateway does.
async fn serve_deduplicating(
    mut inbound: Streaming<ShimMessage>,
    recorded: Arc<Mutex<Recorded>>,
    tx: mpsc::Sender<Result<GatewayMessage, Status>>,
) {
    let mut boot = recorded
        .lock()
        .unwrap()
        .opens
        .last()
        .map(|o| o.boot_id.clone())
        .unwrap_or_default();
    while let Ok(Some(message)) = inbound.message().await {
        let acked_seq = {
            let mut recorded = recorded.lock().unwrap();
            match message.kind {
                Some(shim_message::Kind::Open(open)) => {
                    boot = open.boot_id.clone();
                    if recorded.marks.is_empty() {
                        recorded.marks.insert(boot.clone(), FORGED_SEQ);
                    }
                    recorded.opens.push(open);
                    continue;
                }
                Some(shim_message::Kind::Batch(batch)) => {
                    let mark = recorded.marks.get(&boot).copied().unwrap_or(0);
                    let fresh = batch
                        .lines
                        .iter()
                        .enumerate()
                        .filter(|(i, _)| batch.first_seq + *i as u64 > mark);
                    let fresh: Vec<_> = fresh.map(|(_, line)| line.clone()).collect();
                    recorded.stored.extend(fresh);
                    let last = batch.first_seq + batch.lines.len() as u64 - 1;
                    let index = recorded.opens.len().saturating_sub(1);
                    recorded.batches.push((index, batch));
                    let mark = mark.max(last);
                    recorded.marks.insert(boot.clone(), mark);
                    mark
                }
                None => continue,
            }
        };
        let ack = GatewayMessage {
            kind: Some(gateway_message::Kind::Ack(Ack { acked_seq })),
        };
        if tx.send(Ok(ack)).await.is_err() {
            return;
        }
    }
}

struct Gateway {
    addr: SocketAddr,
    recorded: Arc<Mutex<Recorded>>,
    release: watch::Sender<bool>,
    _stop: oneshot::Sender<()>,
}

impl Gateway {
    async fn start(behavior: Behavior) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        Self::serve(listener, behavior)
    }

    fn serve(listener: TcpListener, behavior: Behavior) -> Self {
        let addr = listener.local_addr().unwrap();
        let recorded = Arc::new(Mutex::new(Recorded::default()));
        let (release, released) = watch::channel(false);
        let service = DrainServer::new(Recorder {
            behavior,
            recorded: Arc::clone(&recorded),
            released,
        });
        let (stop, stopped) = oneshot::channel::<()>();
        tokio::spawn(async move {
            tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming_shutdown(TcpListenerStream::new(listener), async {
                    let _ = stopped.await;
                })
                .await
                .unwrap();
        });
        Self {
            addr,
            recorded,
            release,
            _stop: stop,
        }
    }

    /// Ends the hold of [`Behavior::HoldUntilReleased`].
    fn release(&self) {
        self.release.send_replace(true);
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Every line received, by seq (the last copy of a resent seq wins),
    /// after checking each batch holds consecutive seqs.
    fn lines_by_seq(&self) -> BTreeMap<u64, logdrain::v1::Line> {
        let recorded = self.recorded.lock().unwrap();
        let mut lines = BTreeMap::new();
        for (_, batch) in &recorded.batches {
            assert!(!batch.lines.is_empty(), "empty batch");
            for (i, line) in batch.lines.iter().enumerate() {
                lines.insert(batch.first_seq + i as u64, line.clone());
            }
        }
        lines
    }
}

/// The shim with a clean environment (no secrets unless a test adds them),
/// `options` before `--`, and `sh -c script` as the agent.
fn shim(gateway_url: &str, options: &[&str], script: &str) -> Command {
    let mut command = Command::new(SHIM);
    command
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("LOGDRAIN_GATEWAY", gateway_url)
        .env("LOGDRAIN_TOKEN", "ingest-token-1")
        .env("LOGDRAIN_AGENT_ID", "agent-1")
        .env("LOGDRAIN_AGENT_SERVER_ID", "replica-1")
        .env("LOGDRAIN_DRAIN_TIMEOUT", "100s")
        .args(options)
        .args(["--", "sh", "-c", script])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    command
}

struct Finished {
    status: ExitStatus,
    stdout: Vec<u8>,
    stderr: String,
}

async fn finish(mut child: Child) -> Finished {
    let mut stdout = Vec::new();
    let mut stderr = Vec::new();
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let run = async {
        let (a, b, status) = tokio::join!(
            out.read_to_end(&mut stdout),
            err.read_to_end(&mut stderr),
            child.wait()
        );
        a.unwrap();
        b.unwrap();
        status.unwrap()
    };
    let status = tokio::time::timeout(LIMIT, run)
        .await
        .expect("the shim did not finish");
    Finished {
        status,
        stdout,
        stderr: String::from_utf8_lossy(&stderr).into_owned(),
    }
}

/// A script printing `line 1` .. `line N` on stdout.
fn count_script(n: u32) -> String {
    format!("i=1; while [ $i -le {n} ]; do echo \"line $i\"; i=$((i+1)); done")
}

fn stdout_texts(lines: &BTreeMap<u64, logdrain::v1::Line>) -> Vec<String> {
    lines
        .values()
        .filter(|l| l.stream == StreamKind::Stdout as i32)
        .map(|l| String::from_utf8_lossy(&l.data).into_owned())
        .collect()
}

#[tokio::test]
async fn lines_arrive_in_order_with_consecutive_seqs_and_open_carries_token_and_secrets() {
    let gateway = Gateway::start(Behavior::AckAll).await;
    let script = format!("{}; echo oops >&2", count_script(300));
    let child = shim(&gateway.url(), &[], &script)
        .env("DATADOG_TOKEN", "dd-secret")
        .env("SENTRY_DSN", "https://key@sentry.example/1")
        .env("UNRELATED", "not-a-secret")
        .spawn()
        .unwrap();
    let done = finish(child).await;
    assert_eq!(done.status.code(), Some(0), "{}", done.stderr);
    assert!(!done.stderr.contains("dd-secret") && !done.stderr.contains("ingest-token-1"));

    let recorded = gateway.recorded.lock().unwrap();
    assert_eq!(recorded.opens.len(), 1, "one stream suffices");
    let open = &recorded.opens[0];
    assert_eq!(open.token, "ingest-token-1");
    assert_eq!(open.agent_id, "agent-1");
    assert_eq!(open.agent_server_id, "replica-1");
    assert_eq!(open.protocol_version, logdrain::PROTOCOL_VERSION);
    assert_eq!(open.boot_id.len(), 32);
    assert!(open.boot_id.bytes().all(|b| b.is_ascii_hexdigit()));
    let secrets: BTreeMap<_, _> = open.secrets.clone().into_iter().collect();
    assert_eq!(
        secrets,
        BTreeMap::from([
            ("DATADOG_TOKEN".to_owned(), "dd-secret".to_owned()),
            (
                "SENTRY_DSN".to_owned(),
                "https://key@sentry.example/1".to_owned()
            ),
        ])
    );
    // Batches follow each other with no gap and no overlap.
    let mut next = 1;
    for (_, batch) in &recorded.batches {
        assert_eq!(batch.first_seq, next, "batch out of order");
        next += batch.lines.len() as u64;
    }
    drop(recorded);

    let lines = gateway.lines_by_seq();
    assert_eq!(lines.len(), 301);
    let expected: Vec<String> = (1..=300).map(|i| format!("line {i}")).collect();
    assert_eq!(stdout_texts(&lines), expected);
    let stderr_lines: Vec<&logdrain::v1::Line> = lines
        .values()
        .filter(|l| l.stream == StreamKind::Stderr as i32)
        .collect();
    assert_eq!(stderr_lines.len(), 1);
    assert_eq!(&stderr_lines[0].data[..], b"oops");
    for line in lines.values() {
        assert_eq!(line.origin, Origin::Agent as i32);
        assert!(line.timestamp_ns > 0);
    }
    // Passthrough is unaffected by shipping.
    let passthrough: String = expected.iter().map(|l| format!("{l}\n")).collect();
    assert_eq!(String::from_utf8_lossy(&done.stdout), passthrough);
}

#[tokio::test]
async fn dropped_stream_is_reopened_and_unacked_lines_are_resent() {
    let gateway = Gateway::start(Behavior::DropFirstStream).await;
    let child = shim(&gateway.url(), &[], &count_script(200))
        .spawn()
        .unwrap();
    let done = finish(child).await;
    assert_eq!(done.status.code(), Some(0), "{}", done.stderr);
    assert!(done.stderr.contains("UNAVAILABLE"), "{}", done.stderr);

    let recorded = gateway.recorded.lock().unwrap();
    assert!(recorded.opens.len() >= 2, "the shim did not reconnect");
    assert!(
        recorded
            .opens
            .iter()
            .all(|o| o.boot_id == recorded.opens[0].boot_id),
        "a reconnect is the same boot"
    );
    // Nothing was acked on the first stream, so the second starts over.
    let second = recorded
        .batches
        .iter()
        .find(|(stream, _)| *stream == 1)
        .map(|(_, batch)| batch.first_seq);
    assert_eq!(second, Some(1));
    drop(recorded);

    let lines = gateway.lines_by_seq();
    assert_eq!(
        lines.keys().copied().collect::<Vec<_>>(),
        (1..=200).collect::<Vec<_>>()
    );
    let expected: Vec<String> = (1..=200).map(|i| format!("line {i}")).collect();
    assert_eq!(stdout_texts(&lines), expected);
}

/// Binds a port and releases it, for a gateway that starts later.
async fn free_addr() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    listener.local_addr().unwrap()
}

/// Waits until the shim reports a failed connection on its stderr, then
/// keeps draining stderr; returns what was read until then.
async fn wait_for_connect_failure(child: &mut Child) -> String {
    let stderr = child.stderr.take().unwrap();
    let mut reader = BufReader::new(stderr).lines();
    let mut seen = String::new();
    tokio::time::timeout(LIMIT, async {
        while let Some(line) = reader.next_line().await.unwrap() {
            seen.push_str(&line);
            seen.push('\n');
            if line.contains("cannot connect") {
                return;
            }
        }
        panic!("stderr ended without a connection failure: {seen}");
    })
    .await
    .expect("no connection failure reported");
    // Keep draining stderr so the shim never blocks on it.
    tokio::spawn(async move { while let Ok(Some(_)) = reader.next_line().await {} });
    seen
}

/// Waits until the shim's stdout shows `want`, then keeps draining it.
async fn wait_for_stdout_line(child: &mut Child, want: &str) {
    let stdout = child.stdout.take().unwrap();
    let mut reader = BufReader::new(stdout).lines();
    tokio::time::timeout(LIMIT, async {
        while let Some(line) = reader.next_line().await.unwrap() {
            if line == want {
                return;
            }
        }
        panic!("stdout ended before {want:?}");
    })
    .await
    .expect("the line never showed up on stdout");
    tokio::spawn(async move { while let Ok(Some(_)) = reader.next_line().await {} });
}

#[tokio::test]
async fn shim_started_before_the_gateway_delivers_once_it_appears() {
    let addr = free_addr().await;
    let mut child = shim(&format!("http://{addr}"), &[], "echo hello; echo world")
        .spawn()
        .unwrap();
    wait_for_connect_failure(&mut child).await;

    let gateway = Gateway::serve(TcpListener::bind(addr).await.unwrap(), Behavior::AckAll);
    let status = tokio::time::timeout(LIMIT, child.wait())
        .await
        .expect("the shim did not finish")
        .unwrap();
    assert_eq!(status.code(), Some(0));
    let lines = gateway.lines_by_seq();
    assert_eq!(lines.keys().copied().collect::<Vec<_>>(), vec![1, 2]);
    assert_eq!(stdout_texts(&lines), vec!["hello", "world"]);
}

#[tokio::test]
async fn lines_dropped_while_the_gateway_was_away_are_counted_in_a_notice() {
    let addr = free_addr().await;
    // Room for about a dozen short lines; the agent writes 200.
    let options = ["--max-line-bytes", "64", "--buffer-bytes", "1KiB"];
    let mut child = shim(&format!("http://{addr}"), &options, &count_script(200))
        .spawn()
        .unwrap();
    wait_for_connect_failure(&mut child).await;
    // Passthrough follows the buffer push: once the last line is on the
    // shim's stdout, every line went through the full buffer.
    wait_for_stdout_line(&mut child, "line 200").await;

    let gateway = Gateway::serve(TcpListener::bind(addr).await.unwrap(), Behavior::AckAll);
    let status = tokio::time::timeout(LIMIT, child.wait())
        .await
        .expect("the shim did not finish")
        .unwrap();
    assert_eq!(status.code(), Some(0));

    let lines = gateway.lines_by_seq();
    let agent: Vec<String> = stdout_texts(&lines);
    let notices: Vec<(u64, String, &logdrain::v1::Line)> = lines
        .iter()
        .filter(|(_, l)| l.origin == Origin::Shim as i32)
        .map(|(seq, l)| (*seq, String::from_utf8_lossy(&l.data).into_owned(), l))
        .collect();
    assert_eq!(notices.len(), 1, "{notices:?}");
    let (notice_seq, text, line) = &notices[0];
    assert_eq!(line.stream, StreamKind::Stderr as i32);
    // The newest lines survive, oldest first; the notice counts the rest.
    let kept = agent.len() as u32;
    assert!(kept > 0 && kept < 200, "kept {kept}");
    let expected: Vec<String> = (200 - kept + 1..=200)
        .map(|i| format!("line {i}"))
        .collect();
    assert_eq!(agent, expected);
    let dropped = 200 - kept;
    assert!(
        text.starts_with(&format!(
            "agent-shim: dropped {dropped} lines written between "
        )),
        "{text}"
    );
    assert!(
        text.matches('Z').count() >= 2 && text.contains('T'),
        "RFC 3339 times: {text}"
    );
    // Seqs of the kept lines continue after the dropped ones; the notice
    // comes after them.
    let first_kept = *lines.keys().next().unwrap();
    assert_eq!(first_kept, u64::from(dropped) + 1);
    assert_eq!(*notice_seq, 201);
}

#[tokio::test]
async fn unauthenticated_gateway_says_how_to_get_a_token() {
    let gateway = Gateway::start(Behavior::Unauthenticated).await;
    let child = shim(&gateway.url(), &[], "echo hello")
        .env("LOGDRAIN_DRAIN_TIMEOUT", "2s")
        .spawn()
        .unwrap();
    let done = finish(child).await;
    assert_eq!(done.status.code(), Some(77));
    assert!(done.stderr.contains("UNAUTHENTICATED"), "{}", done.stderr);
    assert!(
        done.stderr.contains("does not match the agent id"),
        "{}",
        done.stderr
    );
    assert!(
        done.stderr.contains("logdrain-gateway token --agent-id"),
        "{}",
        done.stderr
    );
    assert!(
        !done.stderr.contains("ingest-token-1"),
        "the token is never printed"
    );
}

#[tokio::test]
async fn a_refusal_for_good_is_said_once_never_retried_and_the_shim_exits_77_after_the_agent() {
    let gateway = Gateway::start(Behavior::Unauthenticated).await;
    let mut child = shim(
        &gateway.url(),
        &[],
        "echo started; read _; echo still-running",
    )
    .stdin(Stdio::piped())
    .spawn()
    .unwrap();
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let mut said = String::new();
    let refusal = read_until(&mut stderr, "UNAUTHENTICATED", &mut said).await;
    // The agent still runs and is still passed through.
    let mut stdin = child.stdin.take().unwrap();
    tokio::io::AsyncWriteExt::write_all(&mut stdin, b"go\n")
        .await
        .unwrap();
    drop(stdin);
    let mut stdout = Vec::new();
    let mut rest = String::new();
    let mut out = child.stdout.take().unwrap();
    let (a, b, status) = tokio::time::timeout(LIMIT, async {
        tokio::join!(
            out.read_to_end(&mut stdout),
            stderr.read_to_string(&mut rest),
            child.wait()
        )
    })
    .await
    .expect("the shim exits after the agent");
    a.unwrap();
    b.unwrap();
    said.push_str(&rest);
    assert_eq!(status.unwrap().code(), Some(77), "{said}");
    assert_eq!(String::from_utf8_lossy(&stdout), "started\nstill-running\n");
    assert!(
        refusal.contains("logdrain-gateway token --agent-id") && refusal.contains("77"),
        "the cause, the fix and the exit status: {refusal}"
    );
    assert_eq!(
        said.matches("UNAUTHENTICATED").count(),
        1,
        "said once: {said}"
    );
    assert!(
        !said.contains("ingest-token-1"),
        "the token is never printed: {said}"
    );
    assert!(said.contains("not delivered"), "{said}");
    assert_eq!(
        gateway.recorded.lock().unwrap().opens.len(),
        1,
        "never retried"
    );
}

/// Reads lines into `said` until one contains `want`; returns that line.
async fn read_until(
    reader: &mut BufReader<tokio::process::ChildStderr>,
    want: &str,
    said: &mut String,
) -> String {
    let read = async {
        loop {
            let mut line = String::new();
            let read = reader.read_line(&mut line).await.unwrap();
            assert!(read > 0, "ended before {want:?}: {said}");
            said.push_str(&line);
            if line.contains(want) {
                return line;
            }
        }
    };
    tokio::time::timeout(LIMIT, read)
        .await
        .unwrap_or_else(|_| panic!("{want:?} never came"))
}

#[tokio::test]
async fn refused_for_good_while_a_process_the_agent_started_holds_its_pipes_still_exits_77() {
    let gateway = Gateway::start(Behavior::Unauthenticated).await;
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("release");
    let made = std::process::Command::new("mkfifo").arg(&fifo).status();
    assert!(made.unwrap().success());
    // The grandchild holds the pipes until the test writes to the FIFO; the
    // agent exits 0 once the test writes a line to its stdin.
    let script = format!("(read _ < '{}') & read _; exit 0", fifo.display());
    let mut child = shim(&gateway.url(), &[], &script)
        .env("LOGDRAIN_DRAIN_TIMEOUT", "1s")
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let mut said = String::new();
    read_until(&mut stderr, "UNAUTHENTICATED", &mut said).await;
    let mut stdin = child.stdin.take().unwrap();
    tokio::io::AsyncWriteExt::write_all(&mut stdin, b"go\n")
        .await
        .unwrap();
    read_until(&mut stderr, "still open", &mut said).await;
    let status = tokio::time::timeout(LIMIT, child.wait()).await;
    std::fs::write(&fifo, "go\n").unwrap();
    assert_eq!(status.unwrap().unwrap().code(), Some(77), "{said}");
}

#[tokio::test]
async fn second_gateway_takes_over_when_the_first_is_down() {
    let down = free_addr().await;
    let gateway = Gateway::start(Behavior::AckAll).await;
    let urls = format!("http://{down},{}", gateway.url());
    let child = shim(&urls, &[], "echo via-failover").spawn().unwrap();
    let done = finish(child).await;
    assert_eq!(done.status.code(), Some(0), "{}", done.stderr);
    assert_eq!(stdout_texts(&gateway.lines_by_seq()), vec!["via-failover"]);
}

#[tokio::test]
async fn the_shim_ships_to_its_first_ranked_gateway_and_fails_over_in_rank_order() {
    let gateways = [
        Gateway::start(Behavior::AckAll).await,
        Gateway::start(Behavior::AckAll).await,
        Gateway::start(Behavior::AckAll).await,
    ];
    let names: Vec<String> = gateways.iter().map(|g| g.addr.to_string()).collect();
    let order = logdrain::fleet::rank("replica-1", &names);
    let urls: Vec<String> = gateways.iter().map(Gateway::url).collect();
    // Listed worst first: the list's order does not decide.
    let listed: Vec<&str> = order.iter().rev().map(|&i| urls[i].as_str()).collect();
    let done = finish(shim(&listed.join(","), &[], "echo first").spawn().unwrap()).await;
    assert_eq!(done.status.code(), Some(0), "{}", done.stderr);
    let texts: Vec<Vec<String>> = gateways
        .iter()
        .map(|g| stdout_texts(&g.lines_by_seq()))
        .collect();
    assert_eq!(texts[order[0]], ["first"], "the first-ranked gateway");
    assert!(texts[order[1]].is_empty() && texts[order[2]].is_empty());

    // With the first-ranked one down, the second-ranked one.
    let [a, b, c] = gateways;
    let mut gateways = [Some(a), Some(b), Some(c)];
    drop(gateways[order[0]].take());
    let down = names[order[0]].clone();
    let done = finish(shim(&listed.join(","), &[], "echo second").spawn().unwrap()).await;
    assert_eq!(done.status.code(), Some(0), "{}", done.stderr);
    assert!(done.stderr.contains(&down), "{}", done.stderr);
    let second = gateways[order[1]].as_ref().unwrap();
    assert_eq!(stdout_texts(&second.lines_by_seq()), ["second"]);
    let third = gateways[order[2]].as_ref().unwrap();
    assert!(stdout_texts(&third.lines_by_seq()).is_empty());
}

#[tokio::test]
async fn a_shim_moves_back_to_its_first_ranked_gateway_once_it_answers_and_sends_no_line_twice() {
    let addrs = [free_addr().await, free_addr().await];
    let names: Vec<String> = addrs.iter().map(ToString::to_string).collect();
    let order = logdrain::fleet::rank("replica-1", &names);
    let (home, other) = (addrs[order[0]], addrs[order[1]]);
    let fallback = Gateway::serve(TcpListener::bind(other).await.unwrap(), Behavior::AckAll);
    let list = format!("http://{home},http://{other}");
    let script = "i=1; while [ $i -le 300 ]; do echo \"line $i\"; i=$((i+1)); sleep 0.02; done";
    let child = shim(&list, &["--rebalance-after", "100ms"], script)
        .spawn()
        .unwrap();
    // The first-ranked gateway starts once the shim streams elsewhere.
    let deadline = tokio::time::Instant::now() + LIMIT;
    while fallback.lines_by_seq().is_empty() {
        assert!(tokio::time::Instant::now() < deadline, "nothing arrived");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let first = Gateway::serve(TcpListener::bind(home).await.unwrap(), Behavior::AckAll);
    let done = finish(child).await;
    assert_eq!(done.status.code(), Some(0), "{}", done.stderr);
    assert!(done.stderr.contains("moving back to"), "{}", done.stderr);
    let on_home = stdout_texts(&first.lines_by_seq());
    assert!(!on_home.is_empty(), "the shim moved back");
    let mut all = stdout_texts(&fallback.lines_by_seq());
    all.extend(on_home);
    let expected: Vec<String> = (1..=300).map(|i| format!("line {i}")).collect();
    assert_eq!(all, expected, "every line once, in order");
}

#[tokio::test]
async fn long_lines_arrive_as_marked_pieces_and_exit_events_as_shim_lines() {
    let gateway = Gateway::start(Behavior::AckAll).await;
    let script = "head -c 300 /dev/zero | tr '\\0' x; echo; exit 7";
    let child = shim(&gateway.url(), &["--max-line-bytes", "128"], script)
        .spawn()
        .unwrap();
    let done = finish(child).await;
    assert_eq!(done.status.code(), Some(7), "{}", done.stderr);
    let lines: Vec<logdrain::v1::Line> = gateway.lines_by_seq().into_values().collect();
    let pieces: Vec<(usize, u32, bool, i32)> = lines
        .iter()
        .map(|l| (l.data.len(), l.part, l.more_parts, l.origin))
        .collect();
    let agent = Origin::Agent as i32;
    assert_eq!(
        pieces[..3],
        [
            (128, 0, true, agent),
            (128, 1, true, agent),
            (44, 2, false, agent)
        ]
    );
    assert_eq!(lines.len(), 4);
    let event = &lines[3];
    assert_eq!(event.origin, Origin::Shim as i32);
    assert_eq!(event.stream, StreamKind::Stderr as i32);
    assert_eq!(&event.data[..], b"agent-shim: agent exited with code 7");
}

#[tokio::test]
async fn check_against_a_gateway_without_the_check_rpc_says_to_upgrade_it() {
    let gateway = Gateway::start(Behavior::AckAll).await;
    let mut command = shim(&gateway.url(), &["--check"], "echo must-not-run");
    command.env("DATADOG_TOKEN", "0123456789abcdef0123456789abcdef");
    let finished = finish(command.spawn().unwrap()).await;
    let report = String::from_utf8_lossy(&finished.stdout);
    assert_eq!(finished.status.code(), Some(1), "{report}");
    assert!(
        report.contains("does not answer checks (UNIMPLEMENTED")
            && report.contains("upgrade logdrain-gateway"),
        "{report}"
    );
    assert!(!report.contains("must-not-run"), "{report}");
    let recorded = gateway.recorded.lock().unwrap();
    assert!(
        recorded.opens.is_empty(),
        "a check opens no stream: {recorded:?}"
    );
}

#[tokio::test]
async fn a_gateway_that_does_not_ack_gets_at_most_the_window_and_drops_are_counted_exactly() {
    use agent_shim::buffer::{line_cost, LINE_OVERHEAD_BYTES};
    use agent_shim::stream::{in_flight_window, BATCH_MAX_BYTES};

    const BUFFER_BYTES: usize = 4 << 20;
    let window = in_flight_window(BUFFER_BYTES);
    const LINES: usize = 30_000;
    const LINE_BYTES: usize = 999;
    let gateway = Gateway::start(Behavior::HoldUntilReleased).await;
    let dir = tempfile::tempdir().unwrap();
    let go = dir.path().join("go");
    // About 30 MiB of lines, far more than the buffer and the window hold;
    // then the agent stays until the test lets it exit.
    let script = format!(
        "yes \"$(printf '%0{LINE_BYTES}d' 0)\" | head -n {LINES}; echo written; \
         while [ ! -e '{}' ]; do sleep 0.1; done",
        go.display()
    );
    let options = ["--buffer-bytes", "4MiB"];
    let mut child = shim(&gateway.url(), &options, &script).spawn().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let stderr = tokio::spawn(async move {
        let mut text = Vec::new();
        let _ = stderr.read_to_end(&mut text).await;
        String::from_utf8_lossy(&text).into_owned()
    });
    // Every line is in the buffer once it is on the shim's stdout.
    wait_for_stdout_line(&mut child, "written").await;
    let stream_cost = |recorded: &Recorded| {
        let mut cost = BTreeMap::<usize, usize>::new();
        let held = recorded
            .batches
            .iter()
            .filter(|(stream, _)| recorded.held_streams.contains(stream));
        for (stream, batch) in held {
            *cost.entry(*stream).or_default() += batch.lines.iter().map(line_cost).sum::<usize>();
        }
        cost
    };
    // The shim fills the window of a held stream, then waits for acks.
    tokio::time::timeout(LIMIT, async {
        loop {
            let filled = {
                let recorded = gateway.recorded.lock().unwrap();
                stream_cost(&recorded)
                    .values()
                    .any(|&cost| cost > window - BATCH_MAX_BYTES.min(window))
            };
            if filled {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("the shim never filled its in-flight window");
    gateway.release();
    std::fs::write(&go, b"").unwrap();
    let status = tokio::time::timeout(LIMIT, child.wait())
        .await
        .expect("the shim did not finish")
        .unwrap();
    let stderr = stderr.await.unwrap();
    assert_eq!(status.code(), Some(0), "{stderr}");

    let recorded = gateway.recorded.lock().unwrap();
    for (stream, cost) in stream_cost(&recorded) {
        assert!(
            cost <= window,
            "stream {stream} got {cost} bytes of lines without an ack"
        );
    }
    let delivered: Vec<&logdrain::v1::Line> = recorded
        .acked
        .values()
        .filter(|l| l.origin == Origin::Agent as i32)
        .collect();
    let dropped: usize = recorded
        .acked
        .values()
        .filter(|l| l.origin == Origin::Shim as i32)
        .filter_map(|l| {
            let text = String::from_utf8_lossy(&l.data).into_owned();
            text.strip_prefix("agent-shim: dropped ")?
                .split(' ')
                .next()?
                .parse::<usize>()
                .ok()
        })
        .sum();
    // Nothing was acked before the agent finished writing, so at most the
    // buffer's bound of its lines survived.
    let per_line = LINE_BYTES + LINE_OVERHEAD_BYTES;
    let delivered_long = delivered
        .iter()
        .filter(|l| l.data.len() == LINE_BYTES)
        .count();
    assert!(
        delivered_long * per_line <= BUFFER_BYTES,
        "{delivered_long} lines delivered"
    );
    // The notices count exactly the lines that never arrived.
    assert_eq!(
        delivered.len() + dropped,
        LINES + 1,
        "delivered {} + dropped {dropped}",
        delivered.len()
    );
}

#[tokio::test]
async fn an_ack_of_lines_never_sent_makes_the_shim_resend_everything_under_a_new_boot() {
    let gateway = Gateway::start(Behavior::ForgedFirstBoot).await;
    let child = shim(&gateway.url(), &[], &count_script(300))
        .spawn()
        .unwrap();
    let done = finish(child).await;
    assert_eq!(done.status.code(), Some(0), "{}", done.stderr);
    assert!(done.stderr.contains("new boot id"), "{}", done.stderr);

    let recorded = gateway.recorded.lock().unwrap();
    let boots: Vec<&str> = recorded.opens.iter().map(|o| o.boot_id.as_str()).collect();
    assert!(
        boots.len() >= 2 && boots[boots.len() - 1] != boots[0],
        "the shim went on under a new boot id: {boots:?}"
    );
    let stored = recorded
        .stored
        .iter()
        .filter(|l| l.stream == StreamKind::Stdout as i32)
        .map(|l| String::from_utf8_lossy(&l.data).into_owned())
        .collect::<Vec<_>>();
    let expected: Vec<String> = (1..=300).map(|i| format!("line {i}")).collect();
    assert_eq!(stored, expected, "every line stored once, in order");
    assert!(
        !done.stderr.contains(&recorded.opens[0].boot_id),
        "the shim never prints its boot id"
    );
}

#[tokio::test]
async fn a_boot_refused_as_live_on_another_stream_is_left_for_a_new_one_and_every_line_arrives() {
    let gateway = Gateway::start(Behavior::FirstBootLive).await;
    let child = shim(&gateway.url(), &[], &count_script(300))
        .spawn()
        .unwrap();
    let done = finish(child).await;
    assert_eq!(done.status.code(), Some(0), "{}", done.stderr);
    assert!(done.stderr.contains("ABORTED"), "{}", done.stderr);

    let recorded = gateway.recorded.lock().unwrap();
    let boots: Vec<&str> = recorded.opens.iter().map(|o| o.boot_id.as_str()).collect();
    assert!(
        boots.len() >= 2 && boots[boots.len() - 1] != boots[0],
        "the shim went on under a new boot id: {boots:?}"
    );
    let stored = recorded
        .stored
        .iter()
        .filter(|l| l.stream == StreamKind::Stdout as i32)
        .map(|l| String::from_utf8_lossy(&l.data).into_owned())
        .collect::<Vec<_>>();
    let expected: Vec<String> = (1..=300).map(|i| format!("line {i}")).collect();
    assert_eq!(stored, expected, "every line stored once, in order");
}
