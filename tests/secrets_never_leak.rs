//! Known, unique secret values for all four destinations go through a
//! gateway whose vendors fail in several ways; afterwards no byte of the
//! gateway's data dir, no log line of gateway or shim, no HTTP endpoint and
//! no gRPC error holds any of them, raw or base64-encoded.

mod common;

use std::path::Path;
use std::time::Duration;

use base64::engine::general_purpose::{STANDARD_NO_PAD, URL_SAFE_NO_PAD};
use base64::Engine as _;
use common::*;
use logdrain::v1::drain_client::DrainClient;
use logdrain::v1::{shim_message, Open, ShimMessage, TailRequest};
use logdrain_test_intake::{Fault, Vendor};
use serde_json::Value;

const AGENT: &str = "agent-leak";
const DD_SECRET: &str = "dd-secret-Q7vX2mK9pL4wR8tYc3Nz";
const AWS_ACCESS_KEY: &str = "AKIASECRETSCAN4242QZ";
const AWS_SECRET: &str = "aws-secret-Z3nB6cV1xM5qW0eR/tY+uI8o";
const AWS_SESSION: &str = "aws-session-K8dF3gH6jL9zX2cV5bN0mQ1wE4rT7y";
const SENTRY_KEY: &str = "5ec7e75ec7e75ec7e75ec7e75ec7e7a1";
const NR_SECRET: &str = "nr-secret-H4jK7lP0oI9uY6tT5rE2wQNRAL";
/// A line the agent writes: stored in plain text in the queue, so finding
/// it proves the scan reads the queue's files.
const MARKER: &str = "plain-marker-line-8d1f";

fn secrets(sentry_dsn: &str) -> Vec<(&'static str, String)> {
    vec![
        ("DATADOG_TOKEN", DD_SECRET.to_string()),
        ("AWS_ACCESS_KEY_ID", AWS_ACCESS_KEY.to_string()),
        ("AWS_SECRET_ACCESS_KEY", AWS_SECRET.to_string()),
        ("AWS_SESSION_TOKEN", AWS_SESSION.to_string()),
        // Signed and sent to the intake, which knows no CloudWatch: the
        // route fails on its configuration after the AWS SDK used the keys.
        ("AWS_REGION", "us-west-2".to_string()),
        ("SENTRY_DSN", sentry_dsn.to_string()),
        ("NEW_RELIC_LICENSE_KEY", NR_SECRET.to_string()),
    ]
}

/// The forms a secret could leak in: raw, and base64 (standard and URL
/// alphabet) at each of the three alignments, as the part of the encoding
/// that depends on the secret's bytes only.
fn forms(secret: &str) -> Vec<(String, Vec<u8>)> {
    let mut out = vec![("raw".to_string(), secret.as_bytes().to_vec())];
    for offset in 0..3usize {
        let mut input = vec![b'.'; offset];
        input.extend_from_slice(secret.as_bytes());
        let start = offset.div_ceil(3) * 4;
        let end = (input.len() / 3) * 4;
        for (name, engine) in [("base64", STANDARD_NO_PAD), ("base64url", URL_SAFE_NO_PAD)] {
            let encoded = engine.encode(&input);
            out.push((
                format!("{name}+{offset}"),
                encoded.as_bytes()[start..end].to_vec(),
            ));
        }
    }
    out
}

/// Every (secret, form) found in `haystack`.
fn leaks(haystack: &[u8], secrets: &[&str]) -> Vec<String> {
    let mut found = Vec::new();
    for secret in secrets {
        for (form, needle) in forms(secret) {
            if haystack
                .windows(needle.len())
                .any(|w| w == needle.as_slice())
            {
                found.push(format!("{secret} ({form})"));
            }
        }
    }
    found
}

/// Every file under `dir` (recursively) with what it leaks.
fn leaks_in_dir(dir: &Path, secrets: &[&str]) -> Vec<String> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            found.extend(leaks_in_dir(&path, secrets));
        } else {
            let bytes = std::fs::read(&path).unwrap();
            for leak in leaks(&bytes, secrets) {
                found.push(format!("{}: {leak}", path.display()));
            }
        }
    }
    found
}

fn found_in_dir(dir: &Path, needle: &[u8]) -> bool {
    std::fs::read_dir(dir).unwrap().any(|entry| {
        let path = entry.unwrap().path();
        if path.is_dir() {
            found_in_dir(&path, needle)
        } else {
            let bytes = std::fs::read(&path).unwrap();
            bytes.windows(needle.len()).any(|w| w == needle)
        }
    })
}

#[test]
fn the_scanner_finds_each_secret_raw_and_base64_encoded() {
    let all = [DD_SECRET, AWS_SECRET, SENTRY_KEY, NR_SECRET];
    for secret in all {
        for offset in 0..3 {
            let mut input = "x".repeat(offset);
            input.push_str(secret);
            input.push_str("tail");
            for encoded in [
                STANDARD_NO_PAD.encode(&input),
                URL_SAFE_NO_PAD.encode(&input),
            ] {
                let control = format!("header {encoded} trailer");
                assert!(
                    !leaks(control.as_bytes(), &[secret]).is_empty(),
                    "{secret} at offset {offset} not found in {control}"
                );
            }
        }
        let control = format!("{{\"key\":\"{secret}\"}}");
        assert!(!leaks(control.as_bytes(), &[secret]).is_empty());
    }
    assert!(leaks(b"nothing to see", &all).is_empty());
}

async fn grpc_errors(gateway: &Gateway, dsn: &str) -> Vec<String> {
    let mut messages = Vec::new();
    let secret_map = secrets(dsn)
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect::<std::collections::HashMap<_, _>>();
    let opens = [
        // Another agent's token.
        (token("agent-other"), AGENT.to_string()),
        // An agent id the gateway refuses.
        (token(AGENT), "bad/agent id".to_string()),
    ];
    for (token, agent_id) in opens {
        let mut client = DrainClient::connect(gateway.url()).await.unwrap();
        let open = ShimMessage {
            kind: Some(shim_message::Kind::Open(Open {
                token,
                agent_id,
                agent_server_id: "replica-grpc".into(),
                boot_id: "0123456789abcdef0123456789abcdef".into(),
                secrets: secret_map.clone().into_iter().collect(),
                protocol_version: logdrain::PROTOCOL_VERSION,
                handoff: None,
            })),
        };
        let status = client
            .ship(tokio_stream::iter(vec![open]))
            .await
            .expect_err("stream refused");
        messages.push(format!("{:?}", status));
    }
    let mut client = DrainClient::connect(gateway.url()).await.unwrap();
    let status = client
        .tail(TailRequest {
            token: DD_SECRET.into(),
            agent_id: AGENT.into(),
            local_only: false,
        })
        .await
        .expect_err("tail refused");
    messages.push(format!("{status:?}"));
    messages
}

fn route_states(status: &Value) -> Vec<(String, String)> {
    let mut states: Vec<(String, String)> = status["routes"]
        .as_array()
        .map(|routes| {
            routes
                .iter()
                .map(|r| {
                    (
                        r["destination"].as_str().unwrap_or("").to_string(),
                        r["state"].as_str().unwrap_or("").to_string(),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    states.sort();
    states
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn secrets_never_leak_at_debug() {
    secrets_never_leak("debug").await;
}

/// The AWS SDK logs the access key id at debug and echoed credentials at
/// trace; nothing at any level may show a secret.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn secrets_never_leak_at_trace() {
    secrets_never_leak("trace").await;
}

async fn secrets_never_leak(level: &str) {
    // No vendor accepts these credentials; Datadog first answers 500 with
    // the request headers (the API key) echoed in its body, Sentry 401.
    let intake = intake().await;
    intake
        .inject(
            Fault::next(2, 500)
                .for_vendor(Vendor::Datadog)
                .echo_headers(),
        )
        .unwrap();
    intake
        .inject(
            Fault::until_cleared(401)
                .for_vendor(Vendor::Sentry)
                .echo_headers(),
        )
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("gw");
    let mut gateway = Gateway::start_with(
        &data_dir,
        &intake.base_url(),
        "127.0.0.1:0",
        "127.0.0.1:0",
        vec![
            ("LOGDRAIN_NEWRELIC_URL".into(), intake.base_url()),
            ("LOGDRAIN_CLOUDWATCH_URL".into(), intake.base_url()),
            ("LOGDRAIN_LOG".into(), level.into()),
        ],
    );
    let dsn = logdrain_test_intake::sentry::dsn(&intake.base_url(), SENTRY_KEY, 7);
    let ingest_token = token(AGENT);
    let all = [
        DD_SECRET,
        AWS_ACCESS_KEY,
        AWS_SECRET,
        AWS_SESSION,
        SENTRY_KEY,
        dsn.as_str(),
        NR_SECRET,
        ingest_token.as_str(),
    ];

    let mut shim = ShimBuilder::new(&gateway.url(), AGENT, "replica-1");
    for (name, value) in secrets(&dsn) {
        shim = shim.env(name, &value);
    }
    let mut shim = shim.spawn_sh(&format!("echo {MARKER}; echo second line >&2"));
    let (out, err) = capture(&mut shim);
    let status = wait_exit(&mut shim, Duration::from_secs(60)).await;
    assert!(status.success());
    let shim_output = [out.join().unwrap(), err.join().unwrap()].concat();

    // Every route has met its failure: credentials refused, or invalid.
    let status_url = format!("http://{}/v1/agents/{AGENT}/status", gateway.http);
    let client = reqwest::Client::new();
    let mut status_text;
    let settled = {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            status_text = client
                .get(&status_url)
                .bearer_auth(token(AGENT))
                .send()
                .await
                .unwrap()
                .text()
                .await
                .unwrap();
            let states = route_states(&serde_json::from_str(&status_text).unwrap_or(Value::Null));
            let expected = [
                ("cloudwatch", "invalid_secret"),
                ("datadog", "credentials_rejected"),
                ("newrelic", "credentials_rejected"),
                ("sentry", "credentials_rejected"),
            ]
            .map(|(d, s)| (d.to_string(), s.to_string()));
            if states == expected {
                break true;
            }
            if tokio::time::Instant::now() > deadline {
                break false;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    };
    assert!(settled, "{status_text}\n{}", gateway.log());
    assert!(
        intake.stats().vendor(Vendor::Datadog).status(500) >= 2,
        "the echoing 500s were answered"
    );
    assert!(
        status_text.contains("CloudWatch Logs CreateLogStream to")
            && status_text.contains("answered"),
        "the AWS SDK signed and sent a request with the keys: {status_text}"
    );

    let mut endpoints = vec![("status".to_string(), status_text)];
    for endpoint in ["/metrics", "/healthz", "/readyz"] {
        let body = http_get(&format!("http://{}{endpoint}", gateway.http)).await;
        endpoints.push((endpoint.to_string(), body));
    }
    let refused = client
        .get(&status_url)
        .bearer_auth(DD_SECRET)
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 401);
    endpoints.push(("refused status".into(), refused.text().await.unwrap()));
    let grpc = grpc_errors(&gateway, &dsn).await;

    // Stop the gateway so everything it holds is on disk.
    assert!(gateway.terminate().success());
    let gateway_output = gateway.log();

    assert!(
        found_in_dir(&data_dir, MARKER.as_bytes()),
        "the scan reads the queue's files, where plain text would be found"
    );
    assert!(
        gateway_output.contains("logdrain-gateway: listening")
            && gateway_output.contains(&level.to_uppercase()),
        "the scan reads the gateway's stdout and its log at {level}"
    );
    let mut found = leaks_in_dir(&data_dir, &all);
    for leak in leaks(gateway_output.as_bytes(), &all) {
        found.push(format!("gateway output: {leak}"));
    }
    for leak in leaks(&shim_output, &all) {
        found.push(format!("shim output: {leak}"));
    }
    for (name, body) in &endpoints {
        for leak in leaks(body.as_bytes(), &all) {
            found.push(format!("{name}: {leak}"));
        }
    }
    for message in &grpc {
        for leak in leaks(message.as_bytes(), &all) {
            found.push(format!("gRPC error {message}: {leak}"));
        }
    }
    assert!(found.is_empty(), "secrets leaked:\n{}", found.join("\n"));
}
