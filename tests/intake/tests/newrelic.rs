//! The New Relic Log API intake over real HTTP: what it accepts, what it
//! refuses and how it answers.

mod common;

use common::{gzip, json_body};
use logdrain_test_intake::newrelic::PATH;
use logdrain_test_intake::{
    AuthForm, Fault, Intake, IntakeConfig, NewRelicConfig, NewRelicLimits, Vendor,
};
use serde_json::{json, Value};

const KEY: &str = "eu01xx0123456789abcdef0123456789abcdNRAL";

async fn start() -> Intake {
    let config = IntakeConfig {
        newrelic: NewRelicConfig {
            keys: vec![KEY.to_string()],
            limits: NewRelicLimits::default(),
        },
        ..IntakeConfig::default()
    };
    Intake::start(config).await.unwrap()
}

fn url(intake: &Intake) -> String {
    format!("{}{PATH}", intake.base_url())
}

/// The time of the payloads: now, once per test process (New Relic may
/// drop logs older than 48 h).
fn t0() -> i64 {
    static T0: std::sync::OnceLock<i64> = std::sync::OnceLock::new();
    *T0.get_or_init(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as i64
    })
}

/// A detailed-form payload as the New Relic sink builds it: one block per
/// (host, stream).
fn detailed() -> Value {
    json!([
        {
            "common": {"attributes": {
                "hostname": "replica-1", "service_name": "agent-1",
                "source": "cloud.livekit.io", "stream": "stdout"}},
            "logs": [
                {"timestamp": t0(), "message": "ready",
                 "attributes": {"level": "info"}},
                {"timestamp": t0() + 1, "message": "piece",
                 "attributes": {"level": "info", "logdrain.part": 1, "logdrain.more_parts": false}},
            ]
        },
        {
            "common": {"attributes": {
                "hostname": "replica-2", "service_name": "agent-1",
                "source": "cloud.livekit.io", "stream": "stderr"}},
            "logs": [
                {"timestamp": t0() + 2, "message": "Traceback",
                 "attributes": {"level": "error"}},
            ]
        }
    ])
}

/// A gzipped JSON request with the license key header.
fn post(intake: &Intake, body: &Value) -> reqwest::RequestBuilder {
    post_bytes(intake, gzip(body.to_string().as_bytes())).header("X-License-Key", KEY)
}

/// A gzipped JSON request with the given body and no credentials.
fn post_bytes(intake: &Intake, body: Vec<u8>) -> reqwest::RequestBuilder {
    reqwest::Client::new()
        .post(url(intake))
        .header("Content-Type", "application/json")
        .header("Content-Encoding", "gzip")
        .body(body)
}

#[tokio::test]
async fn a_gzipped_detailed_payload_is_accepted_and_recorded_with_merged_attributes() {
    let intake = start().await;
    let response = post(&intake, &detailed()).send().await.unwrap();
    assert_eq!(response.status(), 202);
    let answer = json_body(response).await;
    let request_id = answer["requestId"].as_str().unwrap();
    assert_eq!(request_id.len(), 36, "{answer}");

    let entries: Vec<Value> = intake
        .entries(Vendor::NewRelic)
        .into_iter()
        .map(|e| e.value)
        .collect();
    assert_eq!(
        entries,
        [
            json!({"hostname": "replica-1", "service_name": "agent-1",
                   "source": "cloud.livekit.io", "stream": "stdout", "level": "info",
                   "timestamp": t0(), "message": "ready"}),
            json!({"hostname": "replica-1", "service_name": "agent-1",
                   "source": "cloud.livekit.io", "stream": "stdout", "level": "info",
                   "logdrain.part": 1, "logdrain.more_parts": false,
                   "timestamp": t0() + 1, "message": "piece"}),
            json!({"hostname": "replica-2", "service_name": "agent-1",
                   "source": "cloud.livekit.io", "stream": "stderr", "level": "error",
                   "timestamp": t0() + 2, "message": "Traceback"}),
        ]
    );
    let request = &intake.requests()[0];
    assert_eq!(request.vendor, Vendor::NewRelic);
    assert_eq!(request.auth, Some(AuthForm::Header("X-License-Key")));
    assert_eq!(request.key.as_deref(), Some(KEY));
    assert!(!request.headers.contains_key("x-license-key"));
    assert_eq!(request.entries, 3);
    assert_eq!(request.decoded_bytes, Some(detailed().to_string().len()));
    assert!(
        intake.datadog_entries().is_empty(),
        "vendors are kept apart"
    );
}

#[tokio::test]
async fn an_api_key_header_or_query_parameter_is_accepted_and_its_form_recorded() {
    let intake = start().await;
    let by_header = post_bytes(&intake, gzip(detailed().to_string().as_bytes()))
        .header("Api-Key", KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(by_header.status(), 202);
    let by_query = post_bytes(&intake, gzip(detailed().to_string().as_bytes()))
        .query(&[("Api-Key", KEY)])
        .send()
        .await
        .unwrap();
    assert_eq!(by_query.status(), 202);
    let forms: Vec<_> = intake.requests().iter().map(|r| r.auth).collect();
    assert_eq!(
        forms,
        [
            Some(AuthForm::Header("Api-Key")),
            Some(AuthForm::Query("Api-Key"))
        ]
    );
}

#[tokio::test]
async fn an_uncompressed_simple_payload_is_accepted() {
    let intake = start().await;
    let response = reqwest::Client::new()
        .post(url(&intake))
        .header("X-License-Key", KEY)
        .header("Content-Type", "application/json")
        .body(json!({"message": "plain", "service": "x"}).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202);
    let entries = intake.entries(Vendor::NewRelic);
    assert_eq!(
        entries[0].value,
        json!({"message": "plain", "service": "x"})
    );
    assert_eq!(intake.requests()[0].decoded_bytes, None);
}

#[tokio::test]
async fn a_bad_key_is_forbidden_and_never_recorded() {
    let intake = start().await;
    let response = post_bytes(&intake, gzip(detailed().to_string().as_bytes()))
        .header("X-License-Key", "someone-elses-key")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 403);
    let request = &intake.requests()[0];
    assert_eq!(request.key, None);
    assert!(!format!("{request:?}").contains("someone-elses-key"));
    assert!(intake.entries(Vendor::NewRelic).is_empty());

    let missing = post_bytes(&intake, gzip(detailed().to_string().as_bytes()))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 403);
    assert_eq!(intake.requests()[1].auth, None);
    assert_eq!(intake.stats().vendor(Vendor::NewRelic).status(403), 2);
}

#[tokio::test]
async fn a_body_over_1_000_000_bytes_compressed_is_too_large() {
    let intake = start().await;
    // Random printable text: gzip saves under a fifth of it, so the body
    // stays over the limit.
    let mut state = 0x2545_f491_4f6c_dd1d_u64;
    let noise: String = (0..1_400_000)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            char::from(b'!' + (state % 90) as u8)
        })
        .collect();
    let body = gzip(json!([{ "message": noise }]).to_string().as_bytes());
    assert!(body.len() > 1_000_000, "{}", body.len());
    let response = post_bytes(&intake, body)
        .header("X-License-Key", KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 413);
    assert!(intake.entries(Vendor::NewRelic).is_empty());

    // The limit is on the body as sent: far more than 1 MB that gzips small
    // is accepted.
    let compressible = Value::Array(vec![json!({ "message": "x".repeat(100_000) }); 20]);
    let response = post(&intake, &compressible).send().await.unwrap();
    assert_eq!(response.status(), 202);
    assert_eq!(intake.entries(Vendor::NewRelic).len(), 20);
}

#[tokio::test]
async fn invalid_json_is_a_bad_request() {
    let intake = start().await;
    let response = post_bytes(&intake, gzip(b"[{\"message\": \"unterminated"))
        .header("X-License-Key", KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    let answer = json_body(response).await;
    assert!(
        answer["error"].as_str().unwrap().contains("not JSON"),
        "{answer}"
    );
    assert!(intake.entries(Vendor::NewRelic).is_empty());
}

#[tokio::test]
async fn an_injected_429_carries_retry_after_then_requests_pass() {
    let intake = start().await;
    intake
        .inject(
            Fault::next(1, 429)
                .retry_after("3")
                .for_vendor(Vendor::NewRelic),
        )
        .unwrap();
    let refused = post(&intake, &detailed()).send().await.unwrap();
    assert_eq!(refused.status(), 429);
    assert_eq!(refused.headers()["retry-after"], "3");
    assert!(intake.entries(Vendor::NewRelic).is_empty());

    let accepted = post(&intake, &detailed()).send().await.unwrap();
    assert_eq!(accepted.status(), 202);
    let stats = intake.stats().vendor(Vendor::NewRelic);
    assert_eq!((stats.status(429), stats.status(202)), (1, 1));
    assert_eq!(stats.injected, 1);
}

#[tokio::test]
async fn a_fault_for_datadog_leaves_new_relic_alone() {
    let intake = start().await;
    intake
        .inject(Fault::next(1, 500).for_vendor(Vendor::Datadog))
        .unwrap();
    assert_eq!(
        post(&intake, &detailed()).send().await.unwrap().status(),
        202
    );
}

#[tokio::test]
async fn an_over_long_message_is_kept_cut_to_128_kib_and_marked_oversized() {
    let intake = start().await;
    let payload = json!([{ "message": "y".repeat(200_000) }, { "message": "short" }]);
    assert_eq!(post(&intake, &payload).send().await.unwrap().status(), 202);
    let entries = intake.entries(Vendor::NewRelic);
    assert_eq!(
        entries[0].value["message"].as_str().unwrap().len(),
        128 * 1024
    );
    let oversized: Vec<bool> = entries.iter().map(|e| e.oversized).collect();
    assert_eq!(oversized, [true, false]);
}

#[tokio::test]
async fn keys_can_be_set_over_the_control_api() {
    let intake = start().await;
    let put = reqwest::Client::new()
        .put(format!("{}/_intake/newrelic/keys", intake.base_url()))
        .json(&json!(["rotated"]))
        .send()
        .await
        .unwrap();
    assert_eq!(put.status(), 200);
    assert_eq!(
        post(&intake, &detailed()).send().await.unwrap().status(),
        403
    );
    let rotated = post_bytes(&intake, gzip(detailed().to_string().as_bytes()))
        .header("X-License-Key", "rotated")
        .send()
        .await
        .unwrap();
    assert_eq!(rotated.status(), 202);
    let listed: Value = reqwest::get(format!("{}/_intake/newrelic/entries", intake.base_url()))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(listed.as_array().unwrap().len(), 3);
}

#[tokio::test]
async fn logs_older_than_48_hours_are_accepted_and_silently_dropped_like_new_relic() {
    let intake = start().await;
    let mut body = detailed();
    body[0]["logs"][0]["timestamp"] = json!(t0() - 50 * 3_600_000);
    body[0]["logs"][1]["timestamp"] = json!(t0() - 47 * 3_600_000);
    let response = post(&intake, &body).send().await.unwrap();
    assert_eq!(response.status(), 202);
    let messages: Vec<String> = intake
        .entries(Vendor::NewRelic)
        .into_iter()
        .map(|e| e.value["message"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(messages, ["piece", "Traceback"]);
}
