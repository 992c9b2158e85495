//! A backlog stamped 20 hours ago, sent over the wire to the real gateway,
//! reaches Datadog, New Relic and CloudWatch (moto) with nothing silently
//! dropped: each line is placed at its own time where the vendor keeps it
//! (New Relic's 48 h, CloudWatch's 14 days), or sent with the time of
//! sending, its own time kept in `logdrain.original_timestamp` and counted
//! (Datadog's 18 h), and the route gets the in-band notice saying so. The
//! test intakes drop what Datadog and New Relic drop outside their windows.

mod common;
mod moto;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::*;
use logdrain::v1::drain_client::DrainClient;
use logdrain::v1::{shim_message, Batch, Line, Open, Origin, ShimMessage, StreamKind};
use logdrain_test_intake::{Intake, IntakeConfig, Vendor};
use prost::bytes::Bytes;
use serde_json::{json, Value};

const AGENT: &str = "agent-late";
const NR_KEY: &str = "0123456789abcdef0123456789abcdef0123NRAL";
const OLD_LINES: i64 = 50;
const HOUR_MS: i64 = 3_600_000;

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

fn line(text: String, at_ms: i64) -> Line {
    Line {
        timestamp_ns: at_ms * 1_000_000,
        stream: StreamKind::Stdout as i32,
        data: Bytes::from(text),
        origin: Origin::Agent as i32,
        part: 0,
        more_parts: false,
    }
}

/// Sends `lines` as replica-1 of [`AGENT`], with the secrets of all three
/// vendors, and waits for the gateway's durable ack.
async fn ship(gateway: &Gateway, lines: Vec<Line>) {
    let secrets = [
        ("DATADOG_TOKEN", DD_KEY),
        ("NEW_RELIC_LICENSE_KEY", NR_KEY),
        ("AWS_ACCESS_KEY_ID", "AKIDLOGDRAINTEST"),
        ("AWS_SECRET_ACCESS_KEY", "logdrain-test-secret"),
        ("AWS_REGION", "us-west-2"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    let open = ShimMessage {
        kind: Some(shim_message::Kind::Open(Open {
            token: token(AGENT),
            agent_id: AGENT.to_string(),
            agent_server_id: "replica-1".to_string(),
            boot_id: "0123456789abcdef0123456789abcdef".to_string(),
            secrets,
            protocol_version: logdrain::PROTOCOL_VERSION,
            ..Default::default()
        })),
    };
    let count = lines.len() as u64;
    let batch = ShimMessage {
        kind: Some(shim_message::Kind::Batch(Batch {
            first_seq: 1,
            lines,
            ..Batch::default()
        })),
    };
    let mut client = DrainClient::connect(gateway.url()).await.unwrap();
    let mut acks = client
        .ship(tokio_stream::iter(vec![open, batch]))
        .await
        .unwrap()
        .into_inner();
    let mut acked = 0;
    while let Some(message) = acks.message().await.unwrap() {
        if let Some(logdrain::v1::gateway_message::Kind::Ack(ack)) = message.kind {
            acked = ack.acked_seq;
        }
    }
    assert_eq!(acked, count, "every line is durably acked");
}

/// CloudWatch's events of replica-1: (timestamp ms, message object).
async fn cloudwatch_events(moto: &str) -> Vec<(i64, Value)> {
    let page: Value = reqwest::Client::new()
        .post(moto)
        .header("X-Amz-Target", "Logs_20140328.GetLogEvents")
        .header("Content-Type", "application/x-amz-json-1.1")
        .header(
            "Authorization",
            "AWS4-HMAC-SHA256 Credential=AKIDLOGDRAINTEST/20260101/us-west-2/logs/aws4_request, \
             SignedHeaders=host, Signature=0",
        )
        .body(
            json!({
                "logGroupName": format!("livekit/{AGENT}"),
                "logStreamName": "replica-1",
                "startFromHead": true,
                "limit": 10_000,
            })
            .to_string(),
        )
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap_or_default();
    page["events"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .map(|e| {
            let message = serde_json::from_str(e["message"].as_str().unwrap_or("{}")).unwrap();
            (e["timestamp"].as_i64().unwrap_or_default(), message)
        })
        .collect()
}

/// The lines each re-stamp notice at Datadog counts, summed.
fn noticed(entries: &[Value]) -> i64 {
    entries
        .iter()
        .filter(|e| e["host"] == "logdrain-gateway")
        .filter_map(|e| {
            let text = e["message"].as_str()?;
            if !text.contains("older than datadog's 18h window") {
                return None;
            }
            text.strip_prefix("logdrain: ")?
                .split(' ')
                .next()?
                .parse::<i64>()
                .ok()
        })
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_20_hour_old_backlog_reaches_every_vendor_at_its_own_time_or_restamped_and_counted() {
    let mut config = IntakeConfig::with_datadog_keys([DD_KEY]);
    config.newrelic.keys = vec![NR_KEY.to_string()];
    let intake = Intake::start(config).await.unwrap();
    let Some(moto) = moto::MotoServer::shared() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let gateway = Gateway::start_with(
        &dir.path().join("gw"),
        &intake.base_url(),
        "127.0.0.1:0",
        "127.0.0.1:0",
        vec![
            ("LOGDRAIN_NEWRELIC_URL".into(), intake.base_url()),
            ("LOGDRAIN_CLOUDWATCH_URL".into(), moto.url()),
            ("LOGDRAIN_QUOTA_NOTICE_INTERVAL".into(), "1s".into()),
        ],
    );

    let start_ms = now_ms();
    let old_ms = |i: i64| start_ms - 20 * HOUR_MS + i;
    let mut lines: Vec<Line> = (0..OLD_LINES)
        .map(|i| line(format!("old {i}"), old_ms(i)))
        .collect();
    let fresh_ms = start_ms - 1_000;
    lines.push(line("fresh".into(), fresh_ms));
    ship(&gateway, lines).await;
    let own_ms = |message: &str| match message.strip_prefix("old ") {
        Some(i) => old_ms(i.parse().unwrap()),
        None => fresh_ms,
    };

    // Datadog: the old lines at the time of sending, their own time kept,
    // and the notice counting them.
    let agent_lines = |entries: &[Value]| -> Vec<Value> {
        entries
            .iter()
            .filter(|e| e["host"] == "replica-1")
            .cloned()
            .collect()
    };
    let arrived = wait_until(Duration::from_secs(60), || {
        let entries = intake.datadog_entries();
        agent_lines(&entries).len() as i64 == OLD_LINES + 1 && noticed(&entries) == OLD_LINES
    })
    .await;
    let entries = intake.datadog_entries();
    assert!(arrived, "{entries:#?}\n{}", gateway.log());
    for entry in agent_lines(&entries) {
        let message = entry["message"].as_str().unwrap();
        let timestamp = entry["timestamp"].as_i64().unwrap();
        if message == "fresh" {
            assert_eq!(timestamp, fresh_ms);
            assert!(entry.get("logdrain").is_none(), "{entry}");
        } else {
            assert!(timestamp >= start_ms, "{entry}");
            assert_eq!(entry["logdrain"]["original_timestamp"], own_ms(message));
        }
    }
    assert_eq!(noticed(&entries), OLD_LINES);

    // New Relic (48 h) and CloudWatch (14 days): every line at its own time.
    let arrived = wait_until(Duration::from_secs(60), || {
        intake
            .entries(Vendor::NewRelic)
            .iter()
            .filter(|e| e.value["hostname"] == "replica-1")
            .count() as i64
            == OLD_LINES + 1
    })
    .await;
    assert!(arrived, "{}", gateway.log());
    for entry in intake.entries(Vendor::NewRelic) {
        if entry.value["hostname"] == "replica-1" {
            let message = entry.value["message"].as_str().unwrap();
            assert_eq!(
                entry.value["timestamp"],
                own_ms(message),
                "{:?}",
                entry.value
            );
        }
    }
    let url = moto.url();
    let arrived = wait_until(Duration::from_secs(60), || {
        let events = tokio::task::block_in_place(|| {
            tokio::runtime::Handle::current().block_on(cloudwatch_events(&url))
        });
        events.len() as i64 == OLD_LINES + 1
    })
    .await;
    let events = cloudwatch_events(&url).await;
    assert!(arrived, "{events:#?}\n{}", gateway.log());
    for (timestamp, message) in &events {
        let own = own_ms(message["message"].as_str().unwrap());
        assert_eq!(*timestamp, own, "{message}");
    }

    let metrics = gateway.metrics().await;
    let restamped = |destination: &str| {
        metric_value(
            &metrics,
            "logdrain_restamped_lines_total",
            &[("destination", destination)],
        )
    };
    assert_eq!(restamped("datadog"), OLD_LINES as f64);
    assert_eq!(restamped("newrelic"), 0.0);
    assert_eq!(restamped("cloudwatch"), 0.0);
    assert_eq!(
        metric_value(
            &metrics,
            "logdrain_dropped_lines_total",
            &[("agent_id", AGENT)]
        ),
        0.0
    );
}
