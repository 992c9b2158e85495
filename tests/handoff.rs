//! Retiring a gateway with `logdrain-gateway handoff`: its backlog reaches a
//! peer and the vendor whole, also when the handoff is killed midway; a
//! handoff that cannot start changes nothing.

mod common;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::*;
use logdrain_test_intake::{Fault, Vendor};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const AGENT: &str = "agent-retire";
const REPLICAS: [&str; 3] = ["replica-1", "replica-2", "replica-3"];
const LINES: usize = 3000;

fn handoff_command(data_dir: &std::path::Path, to: &str) -> Command {
    let mut command = Command::new(bin("logdrain-gateway"));
    command
        .args(["handoff", "--to", to])
        .env("LOGDRAIN_DATA_DIR", data_dir)
        .env("LOGDRAIN_SIGNING_KEY", SIGNING_KEY)
        .env("LOGDRAIN_LOG", "info");
    command
}

fn handoff(data_dir: &std::path::Path, to: &str) -> Output {
    handoff_command(data_dir, to)
        .output()
        .expect("run logdrain-gateway handoff")
}

fn text(output: &Output) -> String {
    format!(
        "status {}\nstdout:\n{}\nstderr:\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

fn expected(replica: &str) -> Vec<String> {
    (1..=LINES)
        .map(|i| format!("{replica} line {i} of a backlog that outlives its gateway"))
        .collect()
}

/// Runs the three replicas' shims against `gateway` until every line is
/// acked (the shims exit 0 only once drained).
async fn fill_backlog(gateway: &Gateway) {
    for replica in REPLICAS {
        let mut shim = ShimBuilder::new(&gateway.url(), AGENT, replica)
            .env("DATADOG_TOKEN", DD_KEY)
            .spawn_sh(&format!(
                "seq -f '{replica} line %g of a backlog that outlives its gateway' 1 {LINES}"
            ));
        let pipes = capture(&mut shim);
        let status = wait_exit(&mut shim, Duration::from_secs(120)).await;
        let stderr = String::from_utf8_lossy(&pipes.1.join().unwrap()).to_string();
        assert!(status.success(), "{stderr}");
        assert_drained(&stderr);
    }
}

/// A TCP relay to `to` that passes the first `limit` bytes each client
/// sends and then holds the rest (closing nothing), so a handoff through it
/// is stuck midway whatever the machine's speed. Dropping it closes every
/// connection.
struct Relay {
    addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Relay {
    async fn start(to: SocketAddr, limit: usize) -> Relay {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let budget = Arc::new(AtomicUsize::new(limit));
        let task = tokio::spawn(async move {
            let mut connections = tokio::task::JoinSet::new();
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = TcpStream::connect(to).await else {
                    continue;
                };
                let budget = Arc::clone(&budget);
                connections.spawn(async move {
                    let (mut client_rx, mut client_tx) = client.into_split();
                    let (mut server_rx, mut server_tx) = server.into_split();
                    let down = tokio::io::copy(&mut server_rx, &mut client_tx);
                    let up = async {
                        let mut buf = vec![0u8; 16 * 1024];
                        loop {
                            let left = budget.load(Ordering::SeqCst);
                            if left == 0 {
                                std::future::pending::<()>().await;
                            }
                            let n = match client_rx.read(&mut buf[..left.min(16 * 1024)]).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => n,
                            };
                            budget.fetch_sub(n, Ordering::SeqCst);
                            if server_tx.write_all(&buf[..n]).await.is_err() {
                                return;
                            }
                        }
                    };
                    tokio::select! { _ = down => {}, _ = up => {} }
                });
            }
        });
        Relay { addr, task }
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn summary_count(stdout: &str, what: &str) -> u64 {
    stdout
        .lines()
        .filter(|l| l.contains("logdrain-gateway: handoff ") && l.contains(what))
        .filter_map(|l| {
            let before = l.split(what).next()?;
            before
                .rsplit(|c: char| !c.is_ascii_digit())
                .next()?
                .parse::<u64>()
                .ok()
        })
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_retired_gateways_backlog_handed_off_through_a_kill_reaches_the_vendor_whole() {
    let intake = intake().await;
    intake.inject(Fault::until_cleared(500)).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut a = Gateway::start(&dir.path().join("a"), &intake.base_url());
    fill_backlog(&a).await;
    let queued = metric_value(
        &a.metrics().await,
        "logdrain_queue_depth_lines",
        &[("agent", AGENT)],
    ) as u64;
    assert!(queued >= (REPLICAS.len() * LINES) as u64, "{}", a.log());
    assert!(a.terminate().success());
    let retired_at_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;

    let b = Gateway::start(&dir.path().join("b"), &intake.base_url());
    // First run: through a relay that passes 256 KiB of about 1 MiB, killed
    // once the peer has acked some lines.
    let relay = Relay::start(b.grpc, 256 * 1024).await;
    let mut first: Child = handoff_command(&a.data_dir, &format!("http://{}", relay.addr))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut partial = 0.0;
    let some = wait_until(Duration::from_secs(120), || {
        let metrics = futures_lite_block(b.metrics());
        partial = metric_value(
            &metrics,
            "logdrain_handoff_lines_total",
            &[("agent", AGENT), ("outcome", "queued")],
        );
        partial > 0.0
    })
    .await;
    assert!(some, "the peer acks the first lines\n{}", b.log());
    assert!(
        first.try_wait().unwrap().is_none(),
        "held midway by the relay"
    );
    first.kill().unwrap();
    first.wait().unwrap();
    drop(relay);
    assert!(partial < queued as f64, "midway: {partial} of {queued}");
    println!("handoff killed after the peer acked {partial} of {queued} lines");

    // Second run, straight to the peer: goes on where the first stopped.
    let second = handoff(&a.data_dir, &b.url());
    assert!(second.status.success(), "{}", text(&second));
    let stdout = String::from_utf8_lossy(&second.stdout).to_string();
    assert!(stdout.contains("handoff complete"), "{}", text(&second));
    let shipped = summary_count(&stdout, " lines shipped");
    let already = summary_count(&stdout, " already at the peer");
    println!("second run: {shipped} shipped, {already} already at the peer");

    let metrics = b.metrics().await;
    let on_b = metric_value(
        &metrics,
        "logdrain_handoff_lines_total",
        &[("agent", AGENT), ("outcome", "queued")],
    );
    let duplicates = metric_value(
        &metrics,
        "logdrain_handoff_lines_total",
        &[("agent", AGENT), ("outcome", "duplicate")],
    );
    assert_eq!(on_b as u64, queued, "every queued line once on the peer");
    assert_eq!(duplicates, 0.0, "a re-run sends only what the peer lacks");
    // What the first run left on the peer: at least what was seen acked;
    // the lines the second run found there are some of those.
    let by_first = on_b as u64 - shipped;
    assert!(by_first >= partial as u64, "{by_first} < {partial}");
    assert!(already <= by_first, "{already} > {by_first}");
    // The retired queue is empty.
    let third = handoff(&a.data_dir, &b.url());
    assert!(third.status.success(), "{}", text(&third));
    assert!(
        String::from_utf8_lossy(&third.stdout).contains("holds no line to hand off"),
        "{}",
        text(&third)
    );

    intake.clear_faults();
    let total = REPLICAS.len() * LINES;
    let arrived = wait_until(Duration::from_secs(180), || {
        REPLICAS
            .iter()
            .map(|r| dd_messages(&intake, r).len())
            .sum::<usize>()
            >= total
    })
    .await;
    assert!(arrived, "{}", b.log());
    let entries = intake.datadog_entries();
    for replica in REPLICAS {
        let agent_lines: Vec<String> = dd_messages(&intake, replica)
            .into_iter()
            .filter(|m| m.starts_with(replica))
            .collect();
        let unique: BTreeSet<&String> = agent_lines.iter().collect();
        let want = expected(replica);
        let lost = want.iter().filter(|l| !unique.contains(l)).count();
        let duplicated = agent_lines.len() - unique.len();
        println!("{replica}: lost {lost}, duplicated {duplicated}");
        assert_eq!(lost, 0);
        assert_eq!(
            agent_lines, want,
            "in order, each once, under its own agent-server id"
        );
        // The times the shim read them, not the handoff's.
        for entry in entries.iter().filter(|e| e["host"] == replica) {
            let at = Vendor::Datadog.entry_time_ms(entry).expect("timestamp");
            assert!(at <= retired_at_ms, "{entry}");
        }
    }
}

async fn depth(gateway: &Gateway) -> f64 {
    metric_value(
        &gateway.metrics().await,
        "logdrain_queue_depth_lines",
        &[("agent", AGENT)],
    )
}

/// Blocks on a future from inside `wait_until`'s check (a multi-thread
/// runtime, so the rest keeps running).
fn futures_lite_block<F: std::future::Future>(future: F) -> F::Output {
    tokio::task::block_in_place(|| tokio::runtime::Handle::current().block_on(future))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_handoff_that_cannot_start_says_why_and_leaves_the_queue_untouched() {
    let intake = intake().await;
    intake.inject(Fault::until_cleared(500)).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut a = Gateway::start(&dir.path().join("a"), &intake.base_url());
    let mut shim = ShimBuilder::new(&a.url(), AGENT, "replica-1")
        .env("DATADOG_TOKEN", DD_KEY)
        .spawn_sh("seq -f 'line %g' 1 500");
    let pipes = capture(&mut shim);
    assert!(wait_exit(&mut shim, Duration::from_secs(60))
        .await
        .success());
    assert_drained(&String::from_utf8_lossy(&pipes.1.join().unwrap()));
    let before = depth(&a).await;
    assert!(before >= 500.0);

    // Handing off a running gateway's queue (to itself, or anywhere).
    let running = handoff(&a.data_dir, &a.url());
    assert!(!running.status.success(), "{}", text(&running));
    assert!(text(&running).contains("lock"), "{}", text(&running));

    assert!(a.terminate().success());
    // A peer nobody listens on.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let down = handoff(&a.data_dir, &format!("http://127.0.0.1:{port}"));
    assert!(!down.status.success(), "{}", text(&down));
    let said = text(&down);
    assert!(said.contains("cannot reach the peer gateway"), "{said}");
    assert!(said.contains("queue is unchanged"), "{said}");

    // Without the signing key: none is made up.
    let keyless = handoff_command(&a.data_dir, &a.url())
        .env_remove("LOGDRAIN_SIGNING_KEY")
        .output()
        .unwrap();
    assert!(!keyless.status.success(), "{}", text(&keyless));
    assert!(
        text(&keyless).contains("LOGDRAIN_SIGNING_KEY is unset"),
        "{}",
        text(&keyless)
    );
    assert!(!a.data_dir.join("signing.key").exists());

    // A peer with another signing key.
    let other = Gateway::start_with(
        &dir.path().join("other"),
        &intake.base_url(),
        "127.0.0.1:0",
        "127.0.0.1:0",
        vec![(
            "LOGDRAIN_SIGNING_KEY".to_string(),
            "another-signing-key-0123456789abcdef".to_string(),
        )],
    );
    let refused = handoff(&a.data_dir, &other.url());
    assert!(!refused.status.success(), "{}", text(&refused));
    assert!(
        text(&refused).contains("share LOGDRAIN_SIGNING_KEY"),
        "{}",
        text(&refused)
    );
    assert!(
        !text(&refused).contains(SIGNING_KEY) && !text(&refused).contains(DD_KEY),
        "no secret in the output"
    );

    a.restart();
    assert_eq!(depth(&a).await, before, "every line still queued");
}

/// A port nobody listens on.
fn closed_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn handed_off_lines_go_out_with_their_own_credentials_and_never_move_the_peers_newer_route_back(
) {
    const NEWER: &str = "dd-key-of-the-next-deployment-not-enabled-yet";
    let intake = intake().await; // accepts DD_KEY only: NEWER gets 403
    let dir = tempfile::tempdir().unwrap();
    // A cannot reach the vendor at all, so its lines wait.
    let mut a = Gateway::start(
        &dir.path().join("a"),
        &format!("http://127.0.0.1:{}", closed_port()),
    );
    let mut old = ShimBuilder::new(&a.url(), AGENT, "replica-old")
        .env("DATADOG_TOKEN", DD_KEY)
        .spawn_sh("seq -f 'old %g' 1 1000");
    let pipes = capture(&mut old);
    assert!(wait_exit(&mut old, Duration::from_secs(60)).await.success());
    assert_drained(&String::from_utf8_lossy(&pipes.1.join().unwrap()));
    assert!(a.terminate().success());

    // On B the agent's newer deployment runs with a key the vendor refuses
    // for now: its route parks, first seen after A's credentials.
    let b = Gateway::start_with(
        &dir.path().join("b"),
        &intake.base_url(),
        "127.0.0.1:0",
        "127.0.0.1:0",
        vec![("LOGDRAIN_AUTH_RETRY_INTERVAL".into(), "1h".into())],
    );
    let mut new = ShimBuilder::new(&b.url(), AGENT, "replica-new")
        .env("DATADOG_TOKEN", NEWER)
        .spawn_sh("seq -f 'new %g' 1 100");
    let pipes = capture(&mut new);
    assert!(wait_exit(&mut new, Duration::from_secs(60)).await.success());
    assert_drained(&String::from_utf8_lossy(&pipes.1.join().unwrap()));
    let parked = wait_until(Duration::from_secs(60), || {
        let status = futures_lite_block(agent_status(&b, AGENT));
        status["routes"][0]["state"] == "credentials_rejected"
    })
    .await;
    assert!(parked, "{}", b.log());

    let run = handoff(&a.data_dir, &b.url());
    assert!(run.status.success(), "{}", text(&run));
    assert!(!text(&run).contains(DD_KEY), "no secret in the output");

    let delivered = wait_until(Duration::from_secs(60), || {
        dd_messages(&intake, "replica-old").len() >= 1000
    })
    .await;
    assert!(delivered, "{}", b.log());
    let want: Vec<String> = (1..=1000).map(|i| format!("old {i}")).collect();
    assert_eq!(dd_messages(&intake, "replica-old"), want);
    assert!(
        intake
            .entries(Vendor::Datadog)
            .iter()
            .all(|e| e.key.as_deref() == Some(DD_KEY)),
        "delivered with the credentials they were queued with"
    );
    // Once the handed-off credentials delivered, a parked route would adopt
    // them if they passed for newer: the newer deployment stays parked.
    let status = agent_status(&b, AGENT).await;
    let routes = status["routes"].as_array().unwrap();
    assert_eq!(routes.len(), 2, "{status}");
    assert!(
        routes.iter().all(|r| r["adopted_cred_id"].is_null()),
        "{status}"
    );
    assert!(dd_messages(&intake, "replica-new").is_empty());
    let text = status.to_string();
    assert!(
        !text.contains("replica-old"),
        "a handoff is no replica: {text}"
    );
    assert!(!text.contains(DD_KEY) && !text.contains(NEWER), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_peer_that_fails_midway_stops_the_handoff_with_what_it_acked_handed_off_and_the_rest_kept(
) {
    let intake = intake().await;
    intake.inject(Fault::until_cleared(500)).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut a = Gateway::start(&dir.path().join("a"), &intake.base_url());
    fill_backlog(&a).await;
    let queued = depth(&a).await as u64;
    assert!(a.terminate().success());

    // A peer whose disk is below its watermark refuses every line.
    let full = Gateway::start_with(
        &dir.path().join("full"),
        &intake.base_url(),
        "127.0.0.1:0",
        "127.0.0.1:0",
        vec![("LOGDRAIN_DISK_MIN_FREE_BYTES".into(), "1000000GiB".into())],
    );
    let refused = handoff(&a.data_dir, &full.url());
    assert!(!refused.status.success(), "{}", text(&refused));
    let said = text(&refused);
    assert!(said.contains("disk"), "{said}");
    assert!(said.contains("run handoff again"), "{said}");
    drop(full);

    // A peer killed while the handoff is held midway.
    let mut b = Gateway::start(&dir.path().join("b"), &intake.base_url());
    let relay = Relay::start(b.grpc, 256 * 1024).await;
    let mut held: Child = handoff_command(&a.data_dir, &format!("http://{}", relay.addr))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pipes = capture(&mut held);
    let some = wait_until(Duration::from_secs(120), || {
        let metrics = futures_lite_block(b.metrics());
        metric_value(
            &metrics,
            "logdrain_handoff_lines_total",
            &[("agent", AGENT), ("outcome", "queued")],
        ) > 0.0
    })
    .await;
    assert!(some, "{}", b.log());
    b.kill9();
    drop(relay);
    let status = wait_exit(&mut held, Duration::from_secs(60)).await;
    let stderr = String::from_utf8_lossy(&pipes.1.join().unwrap()).to_string();
    let stdout = String::from_utf8_lossy(&pipes.0.join().unwrap()).to_string();
    assert!(!status.success(), "{stdout}{stderr}");
    assert!(stderr.contains("run handoff again"), "{stderr}");
    println!("the peer died midway; the handoff said:\n{stdout}{stderr}");

    b.restart();
    let rest = handoff(&a.data_dir, &b.url());
    assert!(rest.status.success(), "{}", text(&rest));
    let on_b = metric_value(
        &b.metrics().await,
        "logdrain_handoff_lines_total",
        &[("agent", AGENT), ("outcome", "queued")],
    );
    let stdout = String::from_utf8_lossy(&rest.stdout).to_string();
    let shipped = summary_count(&stdout, " lines shipped");
    let already = summary_count(&stdout, " already at the peer");
    println!("after the restart: {shipped} shipped, {already} already at the peer");
    assert_eq!(on_b as u64, shipped, "counted by the restarted peer");

    intake.clear_faults();
    let total = REPLICAS.len() * LINES;
    let arrived = wait_until(Duration::from_secs(180), || {
        REPLICAS
            .iter()
            .map(|r| dd_messages(&intake, r).len())
            .sum::<usize>()
            >= total
    })
    .await;
    assert!(arrived, "{}", b.log());
    let mut duplicated = 0;
    for replica in REPLICAS {
        let got = dd_messages(&intake, replica);
        let unique: BTreeSet<&String> = got.iter().collect();
        assert!(
            expected(replica).iter().all(|l| unique.contains(l)),
            "lost lines of {replica}"
        );
        duplicated += got.len() - unique.len();
    }
    println!("{queued} lines: lost 0, duplicated {duplicated}");
    assert_eq!(duplicated, 0, "the peer's queue had every line once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_tenant_cannot_open_a_handoff_stream_without_the_gateways_proof() {
    use logdrain::v1::drain_client::DrainClient;
    use logdrain::v1::{shim_message, Batch, Handoff, Line, Open, Origin, ShimMessage, StreamKind};

    let intake = intake().await;
    let dir = tempfile::tempdir().unwrap();
    let gateway = Gateway::start(&dir.path().join("gw"), &intake.base_url());
    let mut client = DrainClient::connect(gateway.url()).await.unwrap();
    // The agent's own token, a made-up proof, and credentials first seen
    // "long ago" that would pass for older than any deployment's.
    let messages = vec![
        ShimMessage {
            kind: Some(shim_message::Kind::Open(Open {
                token: token(AGENT),
                agent_id: AGENT.into(),
                agent_server_id: "replica-1".into(),
                boot_id: "0123456789abcdef0123456789abcdef".into(),
                secrets: [("DATADOG_TOKEN".to_string(), DD_KEY.to_string())].into(),
                protocol_version: logdrain::PROTOCOL_VERSION,
                handoff: Some(Handoff {
                    proof: token(AGENT),
                    first_seen_ms: 1,
                }),
            })),
        },
        ShimMessage {
            kind: Some(shim_message::Kind::Batch(Batch {
                first_seq: 1,
                lines: vec![Line {
                    timestamp_ns: 1,
                    stream: StreamKind::Stdout as i32,
                    data: "forged".into(),
                    origin: Origin::Agent as i32,
                    part: 0,
                    more_parts: false,
                }],
                ..Batch::default()
            })),
        },
    ];
    let status = client
        .ship(tokio_stream::iter(messages))
        .await
        .expect_err("stream refused");
    assert_eq!(status.code(), tonic::Code::Unauthenticated);
    assert!(
        status.message().contains("handoff proof"),
        "{}",
        status.message()
    );
    assert!(!status.message().contains(DD_KEY));
    let metrics = gateway.metrics().await;
    assert_eq!(
        metric_value(
            &metrics,
            "logdrain_received_lines_total",
            &[("agent", AGENT)]
        ),
        0.0,
        "nothing of it stored"
    );
    assert_eq!(
        metric_value(
            &metrics,
            "logdrain_refused_streams_total",
            &[("reason", "unauthenticated")]
        ),
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn only_the_lines_each_route_has_not_delivered_are_handed_off_and_none_counts_as_skipped() {
    const NR_KEY: &str = "nr-license-key-for-handoff-tests";
    let mut config = logdrain_test_intake::IntakeConfig::with_datadog_keys([DD_KEY]);
    config.newrelic.keys = vec![NR_KEY.to_string()];
    let intake = logdrain_test_intake::Intake::start(config).await.unwrap();
    let newrelic = vec![("LOGDRAIN_NEWRELIC_URL".to_string(), intake.base_url())];
    let dir = tempfile::tempdir().unwrap();
    let mut a = Gateway::start_with(
        &dir.path().join("a"),
        &intake.base_url(),
        "127.0.0.1:0",
        "127.0.0.1:0",
        newrelic.clone(),
    );
    // One boot: Datadog takes its first 1,000 lines, then goes down; New
    // Relic takes all 2,000.
    let go_on = dir.path().join("go-on");
    let mut shim = ShimBuilder::new(&a.url(), AGENT, "replica-1")
        .env("DATADOG_TOKEN", DD_KEY)
        .env("NEW_RELIC_LICENSE_KEY", NR_KEY)
        .spawn_sh(&format!(
            "seq -f 'both %g' 1 1000; while [ ! -e '{0}' ]; do sleep 0.1; done; seq -f 'both %g' 1001 2000",
            go_on.display()
        ));
    let pipes = capture(&mut shim);
    let first_half = wait_until(Duration::from_secs(60), || {
        dd_messages(&intake, "replica-1").len() >= 1000
    })
    .await;
    assert!(first_half, "{}", a.log());
    intake
        .inject(Fault::until_cleared(500).for_vendor(Vendor::Datadog))
        .unwrap();
    std::fs::write(&go_on, b"").unwrap();
    assert!(wait_exit(&mut shim, Duration::from_secs(60))
        .await
        .success());
    assert_drained(&String::from_utf8_lossy(&pipes.1.join().unwrap()));
    let nr_done = wait_until(Duration::from_secs(60), || {
        intake.entries(Vendor::NewRelic).len() >= 2000
    })
    .await;
    assert!(nr_done, "{}", a.log());
    // Stopped with SIGTERM: New Relic's cursor is on disk.
    assert!(a.terminate().success());

    let b = Gateway::start_with(
        &dir.path().join("b"),
        &intake.base_url(),
        "127.0.0.1:0",
        "127.0.0.1:0",
        newrelic,
    );
    let run = handoff(&a.data_dir, &b.url());
    assert!(run.status.success(), "{}", text(&run));
    let stdout = String::from_utf8_lossy(&run.stdout).to_string();
    assert_eq!(summary_count(&stdout, " lines shipped"), 1000, "{stdout}");
    let metrics = b.metrics().await;
    assert_eq!(
        metric_value(
            &metrics,
            "logdrain_handoff_lines_total",
            &[("agent", AGENT), ("outcome", "queued")]
        ),
        1000.0
    );
    assert_eq!(
        metric_value(&metrics, "logdrain_skipped_seqs_total", &[("agent", AGENT)]),
        0.0,
        "seqs 1 to 1000 were delivered by A, not skipped"
    );
    let status = agent_status(&b, AGENT).await;
    let routes = status["routes"].as_array().unwrap();
    assert_eq!(
        routes.len(),
        1,
        "only Datadog had lines to hand off: {status}"
    );
    let again = handoff(&a.data_dir, &b.url());
    assert!(
        String::from_utf8_lossy(&again.stdout).contains("holds no line to hand off"),
        "{}",
        text(&again)
    );

    intake.clear_faults();
    let arrived = wait_until(Duration::from_secs(60), || {
        dd_messages(&intake, "replica-1").len() >= 2000
    })
    .await;
    assert!(arrived, "{}", b.log());
    let want: Vec<String> = (1..=2000).map(|i| format!("both {i}")).collect();
    assert_eq!(
        dd_messages(&intake, "replica-1"),
        want,
        "the first half from A, the rest from B, each once"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_handoff_reaches_a_peer_that_requires_mutual_tls_only_with_a_client_certificate() {
    let intake = intake().await;
    intake.inject(Fault::until_cleared(500)).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut a = Gateway::start(&dir.path().join("a"), &intake.base_url());
    let mut shim = ShimBuilder::new(&a.url(), AGENT, "replica-1")
        .env("DATADOG_TOKEN", DD_KEY)
        .spawn_sh("seq -f 'tls %g' 1 300");
    let pipes = capture(&mut shim);
    assert!(wait_exit(&mut shim, Duration::from_secs(60))
        .await
        .success());
    assert_drained(&String::from_utf8_lossy(&pipes.1.join().unwrap()));
    assert!(a.terminate().success());

    let pki = common::pki::Pki::generate(&dir.path().join("pki"));
    let b = Gateway::start_with(
        &dir.path().join("b"),
        &intake.base_url(),
        "127.0.0.1:0",
        "127.0.0.1:0",
        pki.gateway_env(true),
    );
    let ca = common::pki::path(&pki.ca);
    let without = handoff_command(&a.data_dir, &b.https_url())
        .args(["--gateway-ca-file", &ca])
        .output()
        .unwrap();
    assert!(!without.status.success(), "{}", text(&without));
    println!("without a client certificate: {}", text(&without));
    let said = text(&without);
    assert!(said.contains("queue is unchanged"), "{said}");
    assert!(said.contains("--client-cert"), "names the fix: {said}");

    let with = handoff_command(&a.data_dir, &b.https_url())
        .args(["--gateway-ca-file", &ca])
        .args(["--client-cert", &common::pki::path(&pki.client_cert)])
        .args(["--client-key", &common::pki::path(&pki.client_key)])
        .output()
        .unwrap();
    assert!(with.status.success(), "{}", text(&with));
    intake.clear_faults();
    let arrived = wait_until(Duration::from_secs(60), || {
        dd_messages(&intake, "replica-1").len() >= 300
    })
    .await;
    assert!(arrived, "{}", b.log());
    let want: Vec<String> = (1..=300).map(|i| format!("tls {i}")).collect();
    assert_eq!(dd_messages(&intake, "replica-1"), want);
}
