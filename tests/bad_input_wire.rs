//! Bad input on the wire: raw gRPC clients (the generated `logdrain::v1`
//! client, no shim) against the real gateway. Each bad stream gets a clear
//! refusal naming the field or limit, and the gateway keeps serving a good
//! shim running beside it.

mod common;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use logdrain::v1::drain_client::DrainClient;
use logdrain::v1::{
    gateway_message, shim_message, Batch, GatewayMessage, Line, Open, Origin, ShimMessage,
    StreamKind,
};
use logdrain_test_intake::Vendor;
use prost::bytes::Bytes;
use tokio::io::AsyncReadExt;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;
use tonic::{Code, Status, Streaming};

const BOOT: &str = "0123456789abcdef0123456789abcdef";

fn open_as(agent_id: &str, server_id: &str, token: &str) -> ShimMessage {
    let mut secrets = std::collections::HashMap::new();
    secrets.insert("DATADOG_TOKEN".to_string(), DD_KEY.to_string());
    ShimMessage {
        kind: Some(shim_message::Kind::Open(Open {
            token: token.to_string(),
            agent_id: agent_id.to_string(),
            agent_server_id: server_id.to_string(),
            boot_id: BOOT.to_string(),
            secrets,
            protocol_version: logdrain::PROTOCOL_VERSION,
            handoff: None,
        })),
    }
}

fn line(text: &str) -> Line {
    Line {
        timestamp_ns: 1_700_000_000_000_000_000,
        stream: StreamKind::Stdout as i32,
        data: Bytes::copy_from_slice(text.as_bytes()),
        origin: Origin::Agent as i32,
        part: 0,
        more_parts: false,
    }
}

fn batch(first_seq: u64, lines: Vec<Line>) -> ShimMessage {
    ShimMessage {
        kind: Some(shim_message::Kind::Batch(Batch {
            first_seq,
            lines,
            ..Batch::default()
        })),
    }
}

async fn client(gateway: &Gateway) -> DrainClient<Channel> {
    DrainClient::connect(gateway.url())
        .await
        .expect("connect to the gateway")
        .max_encoding_message_size(64 * 1024 * 1024)
}

/// Sends `messages`, half-closes, and returns the acks until the stream
/// ends, or the status it ended with.
async fn ship(
    client: &mut DrainClient<Channel>,
    messages: Vec<ShimMessage>,
) -> Result<Vec<u64>, Status> {
    let mut inbound = client
        .ship(tokio_stream::iter(messages))
        .await?
        .into_inner();
    let mut acks = Vec::new();
    while let Some(message) = inbound.message().await? {
        acks.push(acked(message));
    }
    Ok(acks)
}

fn acked(message: GatewayMessage) -> u64 {
    match message.kind {
        Some(gateway_message::Kind::Ack(ack)) => ack.acked_seq,
        None => panic!("a gateway message without a kind"),
    }
}

/// A stream whose messages the test sends one by one.
async fn open_stream(
    client: &mut DrainClient<Channel>,
) -> (
    mpsc::Sender<ShimMessage>,
    tokio::task::JoinHandle<Result<Streaming<GatewayMessage>, Status>>,
) {
    let (tx, rx) = mpsc::channel(4);
    let mut client = client.clone();
    let response = tokio::spawn(async move {
        client
            .ship(ReceiverStream::new(rx))
            .await
            .map(tonic::Response::into_inner)
    });
    (tx, response)
}

/// Runs a good shim printing `lines` lines as `good-replica`.
fn good_shim(gateway: &Gateway, lines: usize) -> std::process::Child {
    ShimBuilder::new(&gateway.url(), "agent-good", "good-replica")
        .env("DATADOG_TOKEN", DD_KEY)
        .spawn_sh(&format!(
            "i=1; while [ $i -le {lines} ]; do echo \"good $i\"; i=$((i+1)); done"
        ))
}

/// Waits for the good shim and checks that each of its lines arrived once.
async fn assert_good_shim_delivered(
    intake: &logdrain_test_intake::Intake,
    gateway: &Gateway,
    mut shim: std::process::Child,
    lines: usize,
) {
    let pipes = capture(&mut shim);
    let status = wait_exit(&mut shim, Duration::from_secs(180)).await;
    assert!(status.success(), "the good shim exited {status}");
    drop(pipes);
    let delivered = wait_until(Duration::from_secs(180), || {
        dd_messages(intake, "good-replica").len() >= lines
    })
    .await;
    let messages = dd_messages(intake, "good-replica");
    assert!(
        delivered,
        "good shim: {} of {lines} lines\n{}",
        messages.len(),
        gateway.log()
    );
    let expected: Vec<String> = (1..=lines).map(|i| format!("good {i}")).collect();
    assert_eq!(messages, expected, "every good line once, in order");
}

fn start(
    dir: &tempfile::TempDir,
    intake: &logdrain_test_intake::Intake,
    env: &[(&str, &str)],
) -> Gateway {
    Gateway::start_with(
        &dir.path().join("gw"),
        &intake.base_url(),
        "127.0.0.1:0",
        "127.0.0.1:0",
        env.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_message_over_the_size_limit_ends_the_stream_naming_the_limit_after_acking_the_rest() {
    let intake = intake().await;
    let dir = tempfile::tempdir().unwrap();
    let gateway = Gateway::start(&dir.path().join("gw"), &intake.base_url());
    let mut client = client(&gateway).await;
    let token = token("agent-big");

    let (tx, response) = open_stream(&mut client).await;
    tx.send(open_as("agent-big", "replica-1", &token))
        .await
        .unwrap();
    tx.send(batch(1, vec![line("before the big one")]))
        .await
        .unwrap();
    let mut inbound = response.await.unwrap().expect("stream admitted");
    let first = inbound.message().await.expect("ack").expect("ack");
    assert_eq!(acked(first), 1);

    let huge = "x".repeat(logdrain::MAX_MESSAGE_BYTES + 1);
    // The gateway may close the stream while this is still being sent.
    let _ = tx.send(batch(2, vec![line(&huge)])).await;
    let status = match inbound.message().await {
        Err(status) => status,
        Ok(Some(message)) => panic!("no ack for an oversized batch: {message:?}"),
        Ok(None) => panic!("the stream ended without saying why"),
    };
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(
        status
            .message()
            .contains(&logdrain::MAX_MESSAGE_BYTES.to_string()),
        "names the limit: {}",
        status.message()
    );
    drop(tx);

    // An opening message over the limit is refused the same way.
    let mut big_open = open_as("agent-big", "replica-2", &token);
    if let Some(shim_message::Kind::Open(open)) = &mut big_open.kind {
        open.agent_server_id = "r".repeat(logdrain::MAX_MESSAGE_BYTES + 1);
    }
    let status = ship(&mut client, vec![big_open])
        .await
        .expect_err("refused");
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(status
        .message()
        .contains(&logdrain::MAX_MESSAGE_BYTES.to_string()));

    // The gateway serves the next stream of the same agent as before.
    let acks = ship(
        &mut client,
        vec![
            open_as("agent-big", "replica-1", &token),
            batch(2, vec![line("after")]),
        ],
    )
    .await
    .expect("a new stream works");
    assert_eq!(acks, vec![2]);
    let arrived = wait_until(Duration::from_secs(60), || {
        dd_messages(&intake, "replica-1").len() >= 2
    })
    .await;
    assert!(arrived, "{}", gateway.log());
    assert_eq!(
        dd_messages(&intake, "replica-1"),
        vec!["before the big one", "after"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn missing_and_contradictory_fields_are_refused_naming_the_field_while_a_good_shim_delivers()
{
    let intake = intake().await;
    let dir = tempfile::tempdir().unwrap();
    let gateway = Gateway::start(&dir.path().join("gw"), &intake.base_url());
    let shim = good_shim(&gateway, 500);
    let mut client = client(&gateway).await;
    let token = token("agent-bad");
    let open = || open_as("agent-bad", "replica-1", &token);
    let with = |f: &dyn Fn(&mut Line)| {
        let mut l = line("x");
        f(&mut l);
        l
    };
    let mut old_version = open();
    if let Some(shim_message::Kind::Open(o)) = &mut old_version.kind {
        o.protocol_version = 0;
    }

    let cases: Vec<(&str, Vec<ShimMessage>, Code, &str)> = vec![
        (
            "empty agent id",
            vec![open_as("", "replica-1", &token)],
            Code::InvalidArgument,
            "agent id is empty",
        ),
        (
            "empty agent-server id",
            vec![open_as("agent-bad", "", &token)],
            Code::InvalidArgument,
            "agent-server id is empty",
        ),
        (
            "Batch before Open",
            vec![batch(1, vec![line("x")])],
            Code::InvalidArgument,
            "must be Open",
        ),
        (
            "no kind at all",
            vec![ShimMessage { kind: None }],
            Code::InvalidArgument,
            "must be Open",
        ),
        (
            "protocol version 0",
            vec![old_version],
            Code::FailedPrecondition,
            "protocol version 0",
        ),
        (
            "second Open",
            vec![open(), open()],
            Code::InvalidArgument,
            "one Open",
        ),
        (
            "message without kind after Open",
            vec![open(), ShimMessage { kind: None }],
            Code::InvalidArgument,
            "empty message",
        ),
        (
            "first_seq 0",
            vec![open(), batch(0, vec![line("x")])],
            Code::InvalidArgument,
            "first_seq is 0",
        ),
        (
            "seq overflow",
            vec![open(), batch(u64::MAX, vec![line("x"), line("y")])],
            Code::InvalidArgument,
            "overflows u64",
        ),
        (
            "stream kind 0",
            vec![open(), batch(1, vec![with(&|l| l.stream = 0)])],
            Code::InvalidArgument,
            "stream 0",
        ),
        (
            "stream kind 99",
            vec![open(), batch(1, vec![with(&|l| l.stream = 99)])],
            Code::InvalidArgument,
            "stream 99",
        ),
        (
            "origin 0",
            vec![open(), batch(1, vec![with(&|l| l.origin = 0)])],
            Code::InvalidArgument,
            "origin 0",
        ),
    ];
    for (what, messages, code, says) in cases {
        let status = ship(&mut client, messages)
            .await
            .expect_err(&format!("{what} must be refused"));
        assert_eq!(status.code(), code, "{what}: {status:?}");
        assert!(
            status.message().contains(says),
            "{what}: {}",
            status.message()
        );
    }
    let received = metric_value(
        &gateway.metrics().await,
        "logdrain_received_lines_total",
        &[("agent", "agent-bad")],
    );
    assert_eq!(received, 0.0, "no refused line was counted as received");

    // Deliberately accepted (docs/reliability.md): an empty batch is
    // answered with the durable mark; a resend below the mark is acked
    // again and not stored twice; piece marks are forwarded as sent.
    let acks = ship(
        &mut client,
        vec![
            open(),
            batch(1, vec![]),
            batch(1, vec![line("one"), line("two")]),
            batch(1, vec![line("one"), line("two")]),
            batch(
                3,
                vec![with(&|l| {
                    l.data = Bytes::from_static(b"piece");
                    l.part = 0;
                    l.more_parts = true;
                })],
            ),
            batch(
                4,
                vec![with(&|l| {
                    l.data = Bytes::from_static(b"orphan");
                    l.part = 7;
                })],
            ),
        ],
    )
    .await
    .expect("accepted");
    assert_eq!(acks, vec![0, 2, 2, 3, 4]);
    let arrived = wait_until(Duration::from_secs(60), || {
        dd_messages(&intake, "replica-1").len() >= 4
    })
    .await;
    assert!(arrived, "{}", gateway.log());
    assert_eq!(
        dd_messages(&intake, "replica-1"),
        vec!["one", "two", "piece", "orphan"]
    );
    let entries = intake.datadog_entries();
    let piece = entries.iter().find(|e| e["message"] == "piece").unwrap();
    assert_eq!(piece["logdrain"]["more_parts"], true);
    let orphan = entries.iter().find(|e| e["message"] == "orphan").unwrap();
    assert_eq!(orphan["logdrain"]["part"], 7);

    assert_good_shim_delivered(&intake, &gateway, shim, 500).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn agent_ids_breaking_the_naming_rule_are_refused_and_leave_nothing_on_disk() {
    let intake = intake().await;
    let dir = tempfile::tempdir().unwrap();
    let gateway = Gateway::start(&dir.path().join("gw"), &intake.base_url());
    let mut client = client(&gateway).await;
    let before = files_under(&gateway.data_dir);
    let long = "a".repeat(300);

    for (id, says) in [
        (
            "a/b",
            "contains '/'; an agent id is 1 to 128 characters of A-Z a-z 0-9 . _ -",
        ),
        ("..", "starts with '.'"),
        (
            "a\nb",
            "contains '\\n'; an agent id is 1 to 128 characters of A-Z a-z 0-9 . _ -",
        ),
        (long.as_str(), "an agent id is 1 to 128 characters"),
    ] {
        let status = ship(
            &mut client,
            vec![
                open_as(id, "replica-1", "ld1.anything"),
                batch(1, vec![line("x")]),
            ],
        )
        .await
        .expect_err("refused");
        assert_eq!(status.code(), Code::InvalidArgument, "{id:?}");
        assert!(
            status.message().contains(says),
            "{id:?}: {}",
            status.message()
        );
        assert!(
            !status.message().contains('\n'),
            "control characters are escaped: {}",
            status.message()
        );
    }
    let metrics = gateway.metrics().await;
    assert_eq!(
        metric_value(
            &metrics,
            "logdrain_refused_streams_total",
            &[("reason", "invalid_argument")]
        ),
        4.0
    );
    assert_eq!(
        metric_value(&metrics, "logdrain_received_lines_total", &[]),
        0.0
    );
    let after = files_under(&gateway.data_dir);
    let new: Vec<_> = after.difference(&before).collect();
    assert!(
        new.iter()
            .all(|p| !p.contains("a/b") && !p.contains("..") && !p.contains(&long[..20])),
        "no path named after a refused id: {new:?}"
    );
    for parent in [
        dir.path().join("a"),
        dir.path().join("b"),
        gateway.data_dir.join("a"),
    ] {
        assert!(!parent.exists(), "{} was created", parent.display());
    }
}

fn files_under(root: &std::path::Path) -> HashSet<String> {
    let mut found = HashSet::new();
    let mut todo = vec![root.to_path_buf()];
    while let Some(dir) = todo.pop() {
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                todo.push(path.clone());
            }
            found.insert(path.strip_prefix(root).unwrap().display().to_string());
        }
    }
    found
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stream_that_never_opens_gets_deadline_exceeded_after_the_open_timeout() {
    let intake = intake().await;
    let dir = tempfile::tempdir().unwrap();
    let gateway = start(&dir, &intake, &[("LOGDRAIN_OPEN_TIMEOUT", "1s")]);
    let mut client = client(&gateway).await;

    let (tx, response) = open_stream(&mut client).await;
    let status = tokio::time::timeout(Duration::from_secs(60), response)
        .await
        .expect("the gateway answers within its open timeout plus slack")
        .unwrap()
        .expect_err("refused");
    drop(tx);
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    assert!(status.message().contains("Open"), "{}", status.message());
    let metrics = gateway.metrics().await;
    assert_eq!(
        metric_value(
            &metrics,
            "logdrain_refused_streams_total",
            &[("reason", "no_open")]
        ),
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn silent_streams_and_connections_without_a_handshake_are_closed_and_a_good_shim_still_delivers(
) {
    let intake = intake().await;
    let dir = tempfile::tempdir().unwrap();
    let gateway = start(&dir, &intake, &[("LOGDRAIN_OPEN_TIMEOUT", "2s")]);
    let mut client = client(&gateway).await;

    // (a) 200 streams that never send Open, on one connection.
    let mut silent = Vec::new();
    for _ in 0..200 {
        silent.push(open_stream(&mut client).await);
    }
    // (b) 50 TCP connections that never finish the HTTP/2 preface: half of
    // them send nothing, half send a few bytes of it.
    let mut raw = Vec::new();
    for i in 0..50 {
        let mut conn = tokio::net::TcpStream::connect(gateway.grpc).await.unwrap();
        if i % 2 == 1 {
            use tokio::io::AsyncWriteExt;
            conn.write_all(b"PRI * HTTP/2.0").await.unwrap();
        }
        raw.push(conn);
    }

    let shim = good_shim(&gateway, 300);
    assert_good_shim_delivered(&intake, &gateway, shim, 300).await;

    for (tx, response) in silent {
        let status = tokio::time::timeout(Duration::from_secs(60), response)
            .await
            .expect("a silent stream is answered")
            .unwrap()
            .expect_err("refused");
        assert_eq!(status.code(), Code::DeadlineExceeded);
        drop(tx);
    }
    for mut conn in raw {
        let mut buf = [0u8; 256];
        // The gateway closes the connection: reads end (EOF or reset)
        // after at most a few bytes of its own preface.
        let closed = tokio::time::timeout(Duration::from_secs(60), async {
            loop {
                match conn.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(_) => continue,
                }
            }
        })
        .await;
        assert!(closed.is_ok(), "a connection without a handshake is closed");
    }
    let metrics = gateway.metrics().await;
    assert_eq!(
        metric_value(
            &metrics,
            "logdrain_refused_streams_total",
            &[("reason", "no_open")]
        ),
        200.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn streams_beyond_max_streams_are_refused_until_a_place_frees() {
    let intake = intake().await;
    let dir = tempfile::tempdir().unwrap();
    let gateway = start(
        &dir,
        &intake,
        &[
            ("LOGDRAIN_MAX_STREAMS", "3"),
            ("LOGDRAIN_OPEN_TIMEOUT", "3s"),
        ],
    );
    let mut client = client(&gateway).await;
    let mut silent = Vec::new();
    for _ in 0..3 {
        silent.push(open_stream(&mut client).await);
    }
    let token = token("agent-cap");
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let status = loop {
        let result = ship(
            &mut client,
            vec![
                open_as("agent-cap", "replica-1", &token),
                batch(1, vec![line("x")]),
            ],
        )
        .await;
        match result {
            Err(status) if status.code() == Code::ResourceExhausted => break status,
            // A silent stream has not reached the gateway yet.
            other => {
                assert!(
                    std::time::Instant::now() < deadline,
                    "never refused: {other:?}"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    assert!(
        status.message().contains("--max-streams"),
        "{}",
        status.message()
    );
    assert!(status.message().contains('3'), "{}", status.message());

    for (tx, response) in silent {
        let status = response
            .await
            .unwrap()
            .expect_err("silent streams time out");
        assert_eq!(status.code(), Code::DeadlineExceeded);
        drop(tx);
    }
    let acks = ship(
        &mut client,
        vec![
            open_as("agent-cap", "replica-1", &token),
            batch(1, vec![line("admitted")]),
        ],
    )
    .await
    .expect("a place is free again");
    assert_eq!(acks, vec![1]);
    let metrics = gateway.metrics().await;
    assert!(
        metric_value(
            &metrics,
            "logdrain_refused_streams_total",
            &[("reason", "resource_exhausted")]
        ) >= 1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn five_thousand_concurrent_streams_are_all_acked_and_delivered() {
    const STREAMS: usize = 5_000;
    const CONNECTIONS: usize = 10;
    const LINES: usize = 3;
    let intake = intake().await;
    let dir = tempfile::tempdir().unwrap();
    let gateway = Gateway::start(&dir.path().join("gw"), &intake.base_url());
    let token = token("agent-many");
    let mut clients = Vec::new();
    for _ in 0..CONNECTIONS {
        clients.push(client(&gateway).await);
    }
    // Every stream stays open until all of them have their ack, so the
    // gateway really holds 5,000 at once.
    let all_acked = Arc::new(tokio::sync::Barrier::new(STREAMS + 1));
    let (release, released) = tokio::sync::watch::channel(false);
    let mut tasks = Vec::new();
    for i in 0..STREAMS {
        let mut client = clients[i % CONNECTIONS].clone();
        let token = token.clone();
        let all_acked = Arc::clone(&all_acked);
        let mut released = released.clone();
        tasks.push(tokio::spawn(async move {
            let (tx, rx) = mpsc::channel(2);
            tx.send(open_as("agent-many", &format!("r-{i}"), &token))
                .await
                .unwrap();
            let lines = (1..=LINES).map(|n| line(&format!("s{i} l{n}"))).collect();
            tx.send(batch(1, lines)).await.unwrap();
            let mut inbound = client.ship(ReceiverStream::new(rx)).await?.into_inner();
            let ack = inbound.message().await?.map(acked);
            all_acked.wait().await;
            let _ = released.wait_for(|go| *go).await;
            drop(tx);
            while inbound.message().await?.is_some() {}
            Ok::<_, Status>(ack)
        }));
    }
    let all_open = tokio::time::timeout(Duration::from_secs(600), all_acked.wait()).await;
    assert!(
        all_open.is_ok(),
        "every stream gets its ack\n{}",
        gateway.log()
    );
    let metrics = gateway.metrics().await;
    assert_eq!(
        metric_value(&metrics, "logdrain_active_streams", &[]),
        STREAMS as f64,
        "all streams are open at once"
    );
    let rss_peak_kib = peak_rss_kib(gateway.child.id());
    release.send_replace(true);
    for task in tasks {
        let ack = task.await.unwrap().expect("stream ends cleanly");
        assert_eq!(ack, Some(LINES as u64));
    }
    let expected = STREAMS * LINES;
    intake
        .wait_for_entries(Vendor::Datadog, expected, Duration::from_secs(600))
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", gateway.log()));
    let entries = intake.datadog_entries();
    let distinct: HashSet<(String, String)> = entries
        .iter()
        .map(|e| {
            (
                e["host"].as_str().unwrap().to_string(),
                e["message"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(entries.len(), expected, "no line twice");
    assert_eq!(distinct.len(), expected, "every line once");
    assert!(
        gateway.metrics().await.contains("logdrain_active_streams"),
        "the gateway is alive"
    );
    println!("gateway peak RSS with {STREAMS} concurrent streams: {rss_peak_kib} KiB");
}

/// VmHWM of a process, in KiB (0 if /proc does not say).
fn peak_rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// The next ack of a stream the test reads one message at a time.
async fn next_ack(inbound: &mut Streaming<GatewayMessage>) -> u64 {
    match inbound.message().await {
        Ok(Some(message)) => acked(message),
        other => panic!("expected an ack, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_batch_that_skips_ahead_is_acked_with_the_skipped_seqs_counted_never_as_stored_lines() {
    let intake = intake().await;
    let dir = tempfile::tempdir().unwrap();
    let gateway = Gateway::start(&dir.path().join("gw"), &intake.base_url());
    let mut client = client(&gateway).await;
    let token = token("agent-skip");

    let acks = ship(
        &mut client,
        vec![
            open_as("agent-skip", "replica-1", &token),
            batch(1, vec![line("one"), line("two")]),
            batch(5, vec![line("five"), line("six")]),
        ],
    )
    .await
    .expect("accepted");
    assert_eq!(acks, vec![2, 6]);
    let metrics = gateway.metrics().await;
    let agent = [("agent", "agent-skip")];
    assert_eq!(
        metric_value(&metrics, "logdrain_skipped_seqs_total", &agent),
        2.0,
        "seqs 3 and 4 are counted as skipped by the shim"
    );
    assert_eq!(
        metric_value(&metrics, "logdrain_acked_lines_total", &agent),
        4.0,
        "only the stored lines count as acked"
    );
    let arrived = wait_until(Duration::from_secs(60), || {
        dd_messages(&intake, "replica-1").len() >= 4
    })
    .await;
    assert!(arrived, "{}", gateway.log());
    assert_eq!(
        dd_messages(&intake, "replica-1"),
        vec!["one", "two", "five", "six"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_second_stream_cannot_write_into_a_live_boot_so_a_forged_high_seq_is_never_acked() {
    const FORGED: u64 = 1_000_000_000_000_000;
    let intake = intake().await;
    let dir = tempfile::tempdir().unwrap();
    let gateway = Gateway::start(&dir.path().join("gw"), &intake.base_url());
    let mut client = client(&gateway).await;
    let token = token("agent-victim");
    let open = || open_as("agent-victim", "replica-1", &token);

    let (victim, response) = open_stream(&mut client).await;
    victim.send(open()).await.unwrap();
    victim
        .send(batch(1, vec![line("v1"), line("v2")]))
        .await
        .unwrap();
    let mut acks = response.await.unwrap().expect("the victim is admitted");
    assert_eq!(next_ack(&mut acks).await, 2);

    // Another client of the same agent knows the victim's boot id.
    let status = ship(
        &mut client,
        vec![open(), batch(FORGED, vec![line("forged")])],
    )
    .await
    .expect_err("a second stream of a live boot is refused");
    assert_eq!(status.code(), Code::Aborted, "{status:?}");
    assert!(
        status.message().contains("another stream"),
        "{}",
        status.message()
    );
    assert!(
        !gateway.log().contains(BOOT),
        "the boot id is never logged:\n{}",
        gateway.log()
    );

    victim
        .send(batch(3, vec![line("v3"), line("v4")]))
        .await
        .unwrap();
    assert_eq!(
        next_ack(&mut acks).await,
        4,
        "the victim's lines are its own"
    );
    drop(victim);
    assert!(acks.message().await.expect("a clean end").is_none());

    // Once its stream ended, the boot is free again: the shim reconnects.
    let resent = ship(
        &mut client,
        vec![
            open(),
            batch(3, vec![line("v3"), line("v4")]),
            batch(5, vec![line("v5")]),
        ],
    )
    .await
    .expect("the reconnect is admitted");
    assert_eq!(resent, vec![4, 5]);
    let arrived = wait_until(Duration::from_secs(60), || {
        dd_messages(&intake, "replica-1").len() >= 5
    })
    .await;
    assert!(arrived, "{}", gateway.log());
    assert_eq!(
        dd_messages(&intake, "replica-1"),
        vec!["v1", "v2", "v3", "v4", "v5"]
    );
    let metrics = gateway.metrics().await;
    assert_eq!(
        metric_value(
            &metrics,
            "logdrain_refused_streams_total",
            &[("reason", "boot_live")]
        ),
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn racing_streams_overlapping_batches_and_extreme_seqs_never_get_an_ack_beyond_what_is_stored(
) {
    let intake = intake().await;
    let dir = tempfile::tempdir().unwrap();
    let gateway = Gateway::start(&dir.path().join("gw"), &intake.base_url());
    let mut client = client(&gateway).await;
    let token = token("agent-race");
    let open = || open_as("agent-race", "replica-1", &token);

    // Two streams open the same boot at once: exactly one is admitted.
    let (first, first_response) = open_stream(&mut client).await;
    let (second, second_response) = open_stream(&mut client).await;
    first.send(open()).await.unwrap();
    second.send(open()).await.unwrap();
    let (first_result, second_result) = (
        first_response.await.unwrap(),
        second_response.await.unwrap(),
    );
    let (tx, mut acks, refused) = match (first_result, second_result) {
        (Ok(acks), Err(refused)) => (first, acks, refused),
        (Err(refused), Ok(acks)) => (second, acks, refused),
        other => panic!("exactly one stream of a boot is admitted: {other:?}"),
    };
    assert_eq!(refused.code(), Code::Aborted, "{refused:?}");

    // Overlapping batches: each line is stored once, acks never go back.
    tx.send(batch(1, vec![line("a"), line("b"), line("c")]))
        .await
        .unwrap();
    assert_eq!(next_ack(&mut acks).await, 3);
    tx.send(batch(2, vec![line("b"), line("c"), line("d"), line("e")]))
        .await
        .unwrap();
    assert_eq!(next_ack(&mut acks).await, 5);
    // The last storable seq: accepted, the skip counted.
    tx.send(batch(u64::MAX - 1, vec![line("max")]))
        .await
        .unwrap();
    assert_eq!(next_ack(&mut acks).await, u64::MAX - 1);
    // Beyond it: refused, nothing more stored.
    tx.send(batch(u64::MAX, vec![line("overflow")]))
        .await
        .unwrap();
    let status = acks.message().await.expect_err("refused");
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    drop(tx);
    // The refused stream let go of its boot before saying so: the shim's
    // reconnect is admitted at once, and its resend acked with the mark.
    let resent = ship(&mut client, vec![open(), batch(1, vec![line("a")])])
        .await
        .expect("the reconnect is admitted");
    assert_eq!(resent, vec![u64::MAX - 1]);

    let arrived = wait_until(Duration::from_secs(60), || {
        dd_messages(&intake, "replica-1").len() >= 6
    })
    .await;
    assert!(arrived, "{}", gateway.log());
    assert_eq!(
        dd_messages(&intake, "replica-1"),
        vec!["a", "b", "c", "d", "e", "max"]
    );
    let metrics = gateway.metrics().await;
    let agent = [("agent", "agent-race")];
    assert_eq!(
        metric_value(&metrics, "logdrain_acked_lines_total", &agent),
        6.0
    );
    assert_eq!(
        metric_value(&metrics, "logdrain_duplicate_lines_total", &agent),
        3.0
    );
    assert!(
        metric_value(&metrics, "logdrain_skipped_seqs_total", &agent) > 1e18,
        "the jump to u64::MAX - 1 is counted"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_flood_of_distinct_credentials_is_refused_past_the_route_limit_naming_it() {
    let intake = intake().await;
    let dir = tempfile::tempdir().unwrap();
    let gateway = start(&dir, &intake, &[("LOGDRAIN_MAX_ROUTES_PER_AGENT", "3")]);
    let mut client = client(&gateway).await;
    let token = token("agent-flood");
    let open_with_key = |replica: &str, key: &str| {
        let mut open = open_as("agent-flood", replica, &token);
        if let Some(shim_message::Kind::Open(o)) = open.kind.as_mut() {
            o.secrets
                .insert("DATADOG_TOKEN".to_string(), key.to_string());
        }
        open
    };
    let mut refused = Vec::new();
    for i in 0..10 {
        let replica = format!("replica-{i}");
        let key = format!("bogus-key-number-{i:04}");
        match ship(
            &mut client,
            vec![open_with_key(&replica, &key), batch(1, vec![line("x")])],
        )
        .await
        {
            Ok(acks) => assert_eq!(acks, vec![1], "{replica}"),
            Err(status) => refused.push(status),
        }
    }
    assert_eq!(refused.len(), 7, "{refused:?}");
    for status in &refused {
        assert_eq!(status.code(), Code::ResourceExhausted);
        let message = status.message();
        assert!(
            message.contains("limit of 3 routes per agent")
                && message.contains("--max-routes-per-agent")
                && message.contains("LOGDRAIN_MAX_ROUTES_PER_AGENT"),
            "{message}"
        );
        assert!(!message.contains("bogus-key"), "{message}");
    }
    // A known route's credentials are still admitted.
    let acks = ship(
        &mut client,
        vec![
            open_with_key("replica-again", "bogus-key-number-0000"),
            batch(1, vec![line("y")]),
        ],
    )
    .await
    .expect("known credentials pass");
    assert_eq!(acks, vec![1]);
    let metrics = gateway.metrics().await;
    assert_eq!(
        metric_value(
            &metrics,
            "logdrain_refused_streams_total",
            &[("reason", "route_limit")]
        ),
        7.0
    );
}
