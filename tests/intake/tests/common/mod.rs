//! Helpers shared by the intake's integration tests: a Datadog client that
//! sends what a sink would send.

#![allow(dead_code)]

use std::io::Write;

use flate2::write::GzEncoder;
use flate2::Compression;
use logdrain_test_intake::{Intake, IntakeConfig};
use serde_json::{json, Value};

pub const KEY: &str = "test-api-key";
pub const CLIENT_TOKEN: &str = "pub0123456789abcdef";

pub fn gzip(data: &[u8]) -> Vec<u8> {
    let mut encoder = GzEncoder::new(Vec::new(), Compression::fast());
    encoder.write_all(data).unwrap();
    encoder.finish().unwrap()
}

pub async fn start() -> Intake {
    Intake::start(IntakeConfig::with_datadog_keys([KEY, CLIENT_TOKEN]))
        .await
        .unwrap()
}

/// `n` log objects as a Datadog sink builds them, stamped now (Datadog
/// drops logs older than 18 h).
pub fn logs(n: usize) -> Value {
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    Value::Array(
        (0..n)
            .map(|i| {
                json!({
                    "message": format!("line {i}"),
                    "timestamp": now_ms + i as i64,
                    "host": "agent-server-1",
                    "ddsource": "agent-1",
                    "service": "cloud.livekit.io",
                    "stream": "stdout",
                    "status": "info",
                })
            })
            .collect(),
    )
}

/// A request with the right headers and a gzip body, authenticated by the
/// API key header.
pub fn post(intake: &Intake, body: &Value) -> reqwest::RequestBuilder {
    post_bytes(intake, gzip(body.to_string().as_bytes())).header("DD-API-KEY", KEY)
}

/// A request with the right headers and the given (already encoded) body,
/// without credentials.
pub fn post_bytes(intake: &Intake, body: Vec<u8>) -> reqwest::RequestBuilder {
    reqwest::Client::new()
        .post(intake.datadog_url())
        .header("Content-Type", "application/json")
        .header("Content-Encoding", "gzip")
        .body(body)
}

pub async fn json_body(response: reqwest::Response) -> Value {
    response.json().await.unwrap()
}
