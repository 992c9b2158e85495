//! A tenant's `SENTRY_DSN` may lead only to public addresses: a gateway
//! whose operator allowed no internal network refuses DSNs aimed at its own
//! loopback, as a hostile tenant would write them. The internal service
//! receives nothing, the route is parked with `invalid_secret` naming
//! `SENTRY_DSN` and the rule, `test-send` shows no answer of the internal
//! service, and `agent-shim --check` reports it.

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;

const SENTRY_KEY: &str = "0123456789abcdef0123456789abcdef";
/// Allowed instead of the tests' usual loopback network, so loopback is
/// refused like any internal address.
const NO_LOOPBACK: (&str, &str) = ("LOGDRAIN_ALLOW_ENDPOINT_NETS", "192.0.2.0/24");

/// An internal service on loopback that counts its connections and answers
/// every request with a body the tenant must never see.
async fn internal_service() -> (SocketAddr, Arc<AtomicUsize>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let connections = Arc::new(AtomicUsize::new(0));
    let counter = connections.clone();
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            counter.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = conn.read(&mut buf).await;
                let _ = conn
                    .write_all(
                        b"HTTP/1.1 200 OK\r\ncontent-length: 21\r\n\r\ninternal-admin-secret",
                    )
                    .await;
            });
        }
    });
    (addr, connections)
}

async fn ship(gateway: &Gateway, agent: &str, dsn: &str) {
    let mut child = ShimBuilder::new(&gateway.url(), agent, "replica-1")
        .env("SENTRY_DSN", dsn)
        .spawn_sh("echo one line");
    let _pipes = capture(&mut child);
    let status = wait_exit(&mut child, Duration::from_secs(60)).await;
    assert!(status.success(), "the shim ends once its line is queued");
}

/// The agent's only route once it is parked.
async fn parked_route(gateway: &Gateway, agent: &str) -> serde_json::Value {
    let mut last = serde_json::Value::Null;
    for _ in 0..600 {
        last = agent_status(gateway, agent).await["routes"][0].clone();
        if last["state"] == "invalid_secret" {
            return last;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("never parked: {last}\n{}", gateway.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn dsns_aimed_at_the_gateways_own_network_are_refused_and_reach_nothing() {
    let (internal, connections) = internal_service().await;
    let port = internal.port();
    let dir = tempfile::tempdir().unwrap();
    let gateway = Gateway::start_with(
        &dir.path().join("gw"),
        "http://127.0.0.1:9",
        "127.0.0.1:0",
        "127.0.0.1:0",
        vec![(NO_LOOPBACK.0.to_string(), NO_LOOPBACK.1.to_string())],
    );
    let hosts = [
        ("agent-v4", format!("127.0.0.1:{port}")),
        ("agent-name", format!("localhost:{port}")),
        ("agent-mapped", format!("[::ffff:127.0.0.1]:{port}")),
        ("agent-v6", format!("[::1]:{port}")),
        ("agent-metadata", "169.254.169.254".to_string()),
    ];
    for (agent, host) in &hosts {
        let dsn = format!("http://{SENTRY_KEY}@{host}/internal/admin/1");
        ship(&gateway, agent, &dsn).await;
        let route = parked_route(&gateway, agent).await;
        let error = route["last_error"].as_str().unwrap_or_default();
        assert!(
            error.starts_with("SENTRY_DSN cannot be used: its host is a")
                && error.contains("must be a public address"),
            "{agent}: {route}"
        );

        let answer: serde_json::Value = reqwest::Client::new()
            .post(format!(
                "http://{}/v1/agents/{agent}/test-send",
                gateway.http
            ))
            .bearer_auth(token(agent))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let result = &answer["results"][0];
        assert_eq!(result["outcome"], "invalid_secret", "{answer}");
        assert!(
            result["answer"].as_str().unwrap().contains("SENTRY_DSN"),
            "{answer}"
        );
        let shown = format!("{answer}{route}");
        assert!(!shown.contains("internal-admin-secret"), "{shown}");
        assert!(!shown.contains(SENTRY_KEY), "{shown}");
    }
    assert_eq!(
        connections.load(Ordering::SeqCst),
        0,
        "the internal service was reached"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shim_check_reports_a_dsn_aimed_at_loopback_and_exits_1() {
    let dir = tempfile::tempdir().unwrap();
    let gateway = Gateway::start_with(
        &dir.path().join("gw"),
        "http://127.0.0.1:9",
        "127.0.0.1:0",
        "127.0.0.1:0",
        vec![(NO_LOOPBACK.0.to_string(), NO_LOOPBACK.1.to_string())],
    );
    let mut child = ShimBuilder::new(&gateway.url(), "agent-a", "replica-1")
        .env("LOGDRAIN_CHECK", "true")
        .env(
            "SENTRY_DSN",
            &format!("http://{SENTRY_KEY}@127.0.0.1:9000/1"),
        )
        .spawn_args(&["true"]);
    let (out, _err) = capture(&mut child);
    let status = child.wait().unwrap();
    let text = String::from_utf8_lossy(&out.join().unwrap()).to_string();
    assert_eq!(status.code(), Some(1), "{text}");
    let sentry = text
        .lines()
        .find(|l| l.trim_start().starts_with("sentry "))
        .unwrap_or_else(|| panic!("{text}"));
    assert!(sentry.contains("its host is a loopback address"), "{text}");
    assert!(
        text.contains(
            "cannot deliver to sentry: SENTRY_DSN cannot be used: its host is a loopback address"
        ),
        "{text}"
    );
    assert!(!text.contains(SENTRY_KEY), "{text}");
}
