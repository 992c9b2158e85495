//! Only an agent's own token can write its lines or tail them.

mod common;

use std::time::Duration;

use common::*;
use logdrain::v1::drain_client::DrainClient;
use logdrain::v1::{shim_message, Open, ShimMessage, TailRequest};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_wrong_token_is_refused_and_nothing_is_queued() {
    let intake = intake().await;
    let dir = tempfile::tempdir().unwrap();
    let gateway = Gateway::start(&dir.path().join("gw"), &intake.base_url());

    let mut shim = ShimBuilder::new(&gateway.url(), "agent-a", "replica-1")
        .env("DATADOG_TOKEN", DD_KEY)
        .env("LOGDRAIN_TOKEN", &token("agent-b"))
        .env("LOGDRAIN_DRAIN_TIMEOUT", "2s")
        .spawn_sh("echo hello");
    let (out, err) = capture(&mut shim);
    let status = wait_exit(&mut shim, Duration::from_secs(60)).await;
    assert_eq!(
        status.code(),
        Some(77),
        "refused for good, although the agent exited 0"
    );
    assert_eq!(String::from_utf8(out.join().unwrap()).unwrap(), "hello\n");
    let err = String::from_utf8_lossy(&err.join().unwrap()).to_string();
    assert!(
        err.contains("agent-shim:") && err.contains("token"),
        "the shim says why: {err}"
    );

    let metrics = gateway.metrics().await;
    assert!(
        metric_value(
            &metrics,
            "logdrain_refused_streams_total",
            &[("reason", "unauthenticated")]
        ) >= 1.0
    );
    assert_eq!(
        metric_value(
            &metrics,
            "logdrain_received_lines_total",
            &[("agent", "agent-a")]
        ),
        0.0
    );
    assert!(intake.datadog_entries().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_refused_token_is_said_once_never_retried_and_counted_by_reason_in_status_and_metrics() {
    const ADMIN_TOKEN: &str = "admin-token-for-auth-tests-0123456";
    let intake = intake().await;
    let dir = tempfile::tempdir().unwrap();
    let gateway = Gateway::start_with(
        &dir.path().join("gw"),
        &intake.base_url(),
        "127.0.0.1:0",
        "127.0.0.1:0",
        vec![("LOGDRAIN_ADMIN_TOKEN".into(), ADMIN_TOKEN.into())],
    );
    // The agent runs until the test writes to this FIFO.
    let fifo = dir.path().join("release");
    let made = std::process::Command::new("mkfifo").arg(&fifo).status();
    assert!(made.unwrap().success());
    // Another agent's token: the shim cannot tell, the gateway refuses it.
    // (An id the gateway would refuse never gets this far: the shim checks
    // it at start with the same rule.)
    let secret_token = token("agent-other");
    let mut shim = ShimBuilder::new(&gateway.url(), "agent-ok", "replica-1")
        .env("DATADOG_TOKEN", DD_KEY)
        .env("LOGDRAIN_TOKEN", &secret_token)
        .spawn_sh(&format!(
            "echo started; read _ < '{}'; echo still-running",
            fifo.display()
        ));
    let stdout = shim.stdout.take().unwrap();
    let out = std::thread::spawn(move || std::io::read_to_string(stdout).unwrap_or_default());
    let (lines, said) = std::sync::mpsc::channel();
    let stderr = shim.stderr.take().unwrap();
    std::thread::spawn(move || {
        for line in std::io::BufRead::lines(std::io::BufReader::new(stderr)).map_while(Result::ok) {
            let _ = lines.send(line);
        }
    });
    let mut stderr = Vec::new();
    let refusal = loop {
        let line = said
            .recv_timeout(Duration::from_secs(60))
            .unwrap_or_else(|_| panic!("no refusal on the shim's stderr: {stderr:?}"));
        stderr.push(line.clone());
        if line.contains("UNAUTHENTICATED") {
            break line;
        }
    };
    assert!(
        refusal.contains("logdrain-gateway token --agent-id"),
        "the cause and the fix: {refusal}"
    );
    let refused = |metrics: &str| {
        metric_value(
            metrics,
            "logdrain_refused_streams_total",
            &[("reason", "unauthenticated")],
        )
    };
    assert_eq!(refused(&gateway.metrics().await), 1.0);
    let status: serde_json::Value = reqwest::Client::new()
        .get(format!("http://{}/v1/status", gateway.http))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let by_reason = status["refused_streams"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert!(
        by_reason
            .iter()
            .any(|r| r["reason"] == "unauthenticated" && r["count"] == 1),
        "{status}"
    );

    std::fs::write(&fifo, "go\n").unwrap();
    let code = wait_exit(&mut shim, Duration::from_secs(60)).await.code();
    stderr.extend(said.iter());
    assert_eq!(code, Some(77), "{stderr:#?}");
    assert_eq!(
        out.join().unwrap(),
        "started\nstill-running\n",
        "the agent ran on"
    );
    let said_refusal = stderr.iter().filter(|l| l.contains("UNAUTHENTICATED"));
    assert_eq!(said_refusal.count(), 1, "said once: {stderr:#?}");
    assert!(
        !stderr.iter().any(|l| l.contains(&secret_token)),
        "{stderr:#?}"
    );
    assert_eq!(refused(&gateway.metrics().await), 1.0, "never retried");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn another_agents_token_cannot_open_a_stream_or_tail() {
    let intake = intake().await;
    let dir = tempfile::tempdir().unwrap();
    let gateway = Gateway::start(&dir.path().join("gw"), &intake.base_url());
    let mut client = DrainClient::connect(gateway.url()).await.unwrap();

    let open = ShimMessage {
        kind: Some(shim_message::Kind::Open(Open {
            token: token("agent-b"),
            agent_id: "agent-a".into(),
            agent_server_id: "replica-1".into(),
            boot_id: "0123456789abcdef0123456789abcdef".into(),
            secrets: Default::default(),
            protocol_version: logdrain::PROTOCOL_VERSION,
            handoff: None,
        })),
    };
    let status = client
        .ship(tokio_stream::iter(vec![open]))
        .await
        .expect_err("stream refused");
    assert_eq!(status.code(), tonic::Code::Unauthenticated);
    assert!(status.message().contains("agent-a"), "{}", status.message());

    let status = client
        .tail(TailRequest {
            token: token("agent-b"),
            agent_id: "agent-a".into(),
            local_only: false,
        })
        .await
        .expect_err("tail refused");
    assert_eq!(status.code(), tonic::Code::Unauthenticated);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stream_without_an_opening_message_is_refused() {
    let intake = intake().await;
    let dir = tempfile::tempdir().unwrap();
    let gateway = Gateway::start(&dir.path().join("gw"), &intake.base_url());
    let mut client = DrainClient::connect(gateway.url()).await.unwrap();
    let batch = ShimMessage {
        kind: Some(shim_message::Kind::Batch(Default::default())),
    };
    let status = client
        .ship(tokio_stream::iter(vec![batch]))
        .await
        .expect_err("stream refused");
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert!(status.message().contains("Open"), "{}", status.message());
}

/// Status of `agent` as seen with `token`: (HTTP status, body).
async fn status_with(gateway: &Gateway, agent: &str, token: Option<&str>) -> (u16, String) {
    let mut request =
        reqwest::Client::new().get(format!("http://{}/v1/agents/{agent}/status", gateway.http));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request.send().await.unwrap();
    (response.status().as_u16(), response.text().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_agents_token_reads_only_its_own_status() {
    let intake = intake().await;
    let dir = tempfile::tempdir().unwrap();
    let gateway = Gateway::start(&dir.path().join("gw"), &intake.base_url());
    for agent in ["agent-a", "agent-b"] {
        let mut shim = ShimBuilder::new(&gateway.url(), agent, "replica-1")
            .env("DATADOG_TOKEN", DD_KEY)
            .spawn_sh(&format!("echo from {agent}"));
        let _pipes = capture(&mut shim);
        assert!(wait_exit(&mut shim, Duration::from_secs(60))
            .await
            .success());
    }
    let token_a = token("agent-a");

    for (agent, token) in [
        ("agent-b", Some(token_a.as_str())),
        ("agent-b", None),
        ("agent-a", Some("ld1_not-a-token")),
    ] {
        let (code, body) = status_with(&gateway, agent, token).await;
        assert_eq!(code, 401, "{agent} with {token:?}: {body}");
        assert!(!body.contains("routes"), "{body}");
    }

    let (code, body) = status_with(&gateway, "agent-a", Some(&token_a)).await;
    assert_eq!(code, 200, "{body}");
    let status: serde_json::Value = serde_json::from_str(&body).unwrap();
    let routes = status["routes"].as_array().expect("routes");
    assert_eq!(routes.len(), 1, "{body}");
    assert_eq!(routes[0]["agent_id"], "agent-a");
    assert!(!body.contains("agent-b"), "nothing of agent-b: {body}");
    let (_, body_b) = status_with(&gateway, "agent-b", Some(&token("agent-b"))).await;
    let status_b: serde_json::Value = serde_json::from_str(&body_b).unwrap();
    assert_eq!(
        status_b["routes"].as_array().map(Vec::len),
        Some(1),
        "{body_b}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn streams_claiming_another_agent_leave_that_agent_untouched() {
    let intake = intake().await;
    let dir = tempfile::tempdir().unwrap();
    let gateway = Gateway::start(&dir.path().join("gw"), &intake.base_url());
    let mut shim = ShimBuilder::new(&gateway.url(), "agent-b", "replica-b")
        .env("DATADOG_TOKEN", DD_KEY)
        .spawn_sh("echo b-one; echo b-two");
    let pipes = capture(&mut shim);
    assert!(wait_exit(&mut shim, Duration::from_secs(60))
        .await
        .success());
    drop(pipes);
    let delivered = wait_until(Duration::from_secs(60), || {
        dd_messages(&intake, "replica-b").len() >= 2
    })
    .await;
    assert!(delivered, "{}", gateway.log());
    let received = |metrics: &str| {
        metric_value(
            metrics,
            "logdrain_received_lines_total",
            &[("agent", "agent-b")],
        )
    };
    let before = received(&gateway.metrics().await);

    let mut client = DrainClient::connect(gateway.url()).await.unwrap();
    // Same agent-server and boot id as a real replica might use: a refused
    // stream must not touch its sequence numbers or routes either.
    for token in [
        token("agent-a"),
        "ld1.not-a-token".to_string(),
        String::new(),
    ] {
        let mut secrets = std::collections::HashMap::new();
        secrets.insert("DATADOG_TOKEN".to_string(), "attacker-key".to_string());
        let open = ShimMessage {
            kind: Some(shim_message::Kind::Open(Open {
                token,
                agent_id: "agent-b".into(),
                agent_server_id: "replica-b".into(),
                boot_id: "0123456789abcdef0123456789abcdef".into(),
                secrets,
                protocol_version: logdrain::PROTOCOL_VERSION,
                handoff: None,
            })),
        };
        let batch = ShimMessage {
            kind: Some(shim_message::Kind::Batch(logdrain::v1::Batch {
                first_seq: 1,
                lines: vec![logdrain::v1::Line {
                    timestamp_ns: 1,
                    stream: 1,
                    data: "forged".into(),
                    origin: 1,
                    part: 0,
                    more_parts: false,
                }],
                ..Default::default()
            })),
        };
        let status = client
            .ship(tokio_stream::iter(vec![open, batch]))
            .await
            .expect_err("stream refused");
        assert_eq!(status.code(), tonic::Code::Unauthenticated);
        assert!(status.message().contains("agent-b"), "{}", status.message());
        assert!(!status.message().contains("attacker-key"));
    }

    let metrics = gateway.metrics().await;
    assert_eq!(
        received(&metrics),
        before,
        "nothing was received for agent-b"
    );
    assert_eq!(
        metric_value(
            &metrics,
            "logdrain_refused_streams_total",
            &[("reason", "unauthenticated")]
        ),
        3.0
    );
    // Its status lists only the route its real shim opened.
    let status = reqwest::Client::new()
        .get(format!("http://{}/v1/agents/agent-b/status", gateway.http))
        .bearer_auth(token("agent-b"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let status: serde_json::Value = serde_json::from_str(&status).unwrap();
    assert_eq!(
        status["routes"].as_array().map(Vec::len),
        Some(1),
        "{status}"
    );
    assert_eq!(dd_messages(&intake, "replica-b"), vec!["b-one", "b-two"]);
}
