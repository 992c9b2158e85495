//! The Sentry intake over real HTTP: what it accepts, what it refuses and
//! how it answers, and a real client's envelope (sentry-sdk for Python,
//! `fixtures/sentry_sdk_logs_envelope.txt`) against its parser.

mod common;

use std::collections::BTreeSet;

use common::{gzip, json_body};
use logdrain_test_intake::sentry::{
    self, parse_envelope, EnvelopeError, ENVELOPE_CONTENT_TYPE, LOG_CONTENT_TYPE,
};
use logdrain_test_intake::{AuthForm, Fault, Intake, IntakeConfig, SentryLimits, Vendor};
use serde_json::{json, Value};

const KEY: &str = "0123456789abcdef0123456789abcdef";
const OTHER_KEY: &str = "fedcba9876543210fedcba9876543210";
const PROJECT: u64 = 42;
const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";

/// The envelope Sentry's Python SDK 2.75.0 sent (see fixtures/README.md).
const SDK_ENVELOPE: &[u8] = include_bytes!("../fixtures/sentry_sdk_logs_envelope.txt");

async fn start() -> Intake {
    let mut config = IntakeConfig::default();
    config.sentry.keys = vec![KEY.to_string()];
    Intake::start(config).await.unwrap()
}

fn url(intake: &Intake) -> String {
    format!("{}{}", intake.base_url(), sentry::envelope_path(PROJECT))
}

fn auth(key: &str) -> String {
    format!("Sentry sentry_version=7, sentry_client=test/1.0, sentry_key={key}")
}

/// `n` logs shaped as logdrain's Sentry sink builds them.
fn logs(n: usize) -> Vec<Value> {
    (0..n)
        .map(|i| {
            json!({
                "timestamp": 1_714_564_800.5 + i as f64,
                "trace_id": TRACE,
                "level": "info",
                "body": format!("line {i}"),
                "attributes": {
                    "logger": {"value": "agent-1", "type": "string"},
                    "server_name": {"value": "agent-server-1", "type": "string"},
                    "environment": {"value": "production", "type": "string"},
                    "sentry.environment": {"value": "production", "type": "string"},
                    "stream": {"value": "stdout", "type": "string"},
                },
            })
        })
        .collect()
}

fn envelope_with(item_header: Value, logs: &[Value]) -> Vec<u8> {
    envelope_sent_at(None, item_header, logs)
}

/// An envelope whose header carries `sent_at` when given.
fn envelope_sent_at(sent_at: Option<&str>, item_header: Value, logs: &[Value]) -> Vec<u8> {
    let header = match sent_at {
        Some(sent_at) => json!({ "sent_at": sent_at }),
        None => json!({}),
    };
    format!("{header}\n{item_header}\n{}\n", json!({ "items": logs })).into_bytes()
}

fn envelope(logs: &[Value]) -> Vec<u8> {
    let header = json!({"type": "log", "item_count": logs.len(), "content_type": LOG_CONTENT_TYPE});
    envelope_with(header, logs)
}

/// A request with the sink's headers and a gzip body, authenticated by the
/// header.
fn post(intake: &Intake, envelope: &[u8]) -> reqwest::RequestBuilder {
    post_bytes(intake, gzip(envelope))
        .header("Content-Encoding", "gzip")
        .header("X-Sentry-Auth", auth(KEY))
}

/// A request with the envelope content type and the given body, without
/// credentials or encoding.
fn post_bytes(intake: &Intake, body: Vec<u8>) -> reqwest::RequestBuilder {
    reqwest::Client::new()
        .post(url(intake))
        .header("Content-Type", ENVELOPE_CONTENT_TYPE)
        .body(body)
}

fn sentry_entries(intake: &Intake) -> Vec<Value> {
    intake
        .entries(Vendor::Sentry)
        .into_iter()
        .map(|e| e.value)
        .collect()
}

async fn detail(response: reqwest::Response) -> String {
    let body = json_body(response).await;
    body["detail"].as_str().unwrap_or_default().to_string()
}

#[tokio::test]
async fn an_envelope_of_logs_with_a_valid_key_is_accepted_and_each_log_recorded() {
    let intake = start().await;
    let sent = logs(3);
    let response = post(&intake, &envelope(&sent)).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(json_body(response).await, json!({}));

    assert_eq!(sentry_entries(&intake), sent);
    let request = &intake.requests()[0];
    assert_eq!(request.vendor, Vendor::Sentry);
    assert_eq!(request.auth, Some(AuthForm::Header("X-Sentry-Auth")));
    assert_eq!(request.key.as_deref(), Some(KEY));
    assert!(!request.headers.contains_key("x-sentry-auth"));
    assert_eq!(request.entries, 3);
    assert_eq!(request.decoded_bytes, Some(envelope(&sent).len()));
    assert!(intake.entries(Vendor::Datadog).is_empty());
}

#[tokio::test]
async fn an_uncompressed_envelope_and_a_key_in_the_query_are_accepted() {
    let intake = start().await;
    let response = post_bytes(&intake, envelope(&logs(1)))
        .query(&[("sentry_key", KEY), ("sentry_version", "7")])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let request = &intake.requests()[0];
    assert_eq!(request.auth, Some(AuthForm::Query("sentry_key")));
    assert_eq!(sentry_entries(&intake).len(), 1);
}

#[tokio::test]
async fn an_event_id_in_the_envelope_header_is_answered_as_the_id() {
    let intake = start().await;
    let body = format!(
        "{}\n{}",
        json!({"event_id": "9ec79c33-ec99-42ab-8353-589fcb2e04dc"}),
        String::from_utf8(envelope(&logs(1)))
            .unwrap()
            .split_once('\n')
            .unwrap()
            .1
    );
    let response = post(&intake, body.as_bytes()).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(
        json_body(response).await,
        json!({"id": "9ec79c33ec9942ab8353589fcb2e04dc"})
    );
}

#[tokio::test]
async fn a_missing_key_is_unauthorized() {
    let intake = start().await;
    let response = post_bytes(&intake, envelope(&logs(1)))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
    assert!(
        detail(response).await.contains("missing authorization"),
        "Relay's wording"
    );
    assert!(sentry_entries(&intake).is_empty());
    assert_eq!(intake.requests()[0].auth, None);
}

#[tokio::test]
async fn an_unreadable_auth_header_or_two_credentials_are_unauthorized() {
    let intake = start().await;
    let bearer = post_bytes(&intake, envelope(&logs(1)))
        .header("X-Sentry-Auth", format!("Bearer {KEY}"))
        .send()
        .await
        .unwrap();
    assert_eq!(bearer.status(), 401);
    let both = post_bytes(&intake, envelope(&logs(1)))
        .header("X-Sentry-Auth", auth(KEY))
        .query(&[("sentry_key", KEY)])
        .send()
        .await
        .unwrap();
    assert_eq!(both.status(), 401);
    assert!(detail(both).await.contains("multiple authorization"));
}

#[tokio::test]
async fn an_unknown_key_is_forbidden_and_never_recorded() {
    let intake = start().await;
    let response = post_bytes(&intake, gzip(&envelope(&logs(1))))
        .header("Content-Encoding", "gzip")
        .header("X-Sentry-Auth", auth(OTHER_KEY))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 403);
    assert!(detail(response)
        .await
        .starts_with("event submission rejected"));
    let request = &intake.requests()[0];
    assert_eq!(request.key, None);
    assert!(!format!("{request:?}").contains(OTHER_KEY));
    assert_eq!(intake.stats().vendor(Vendor::Sentry).status(403), 1);
}

#[tokio::test]
async fn a_key_that_is_not_32_characters_is_a_bad_request() {
    let intake = start().await;
    let response = post_bytes(&intake, envelope(&logs(1)))
        .header("X-Sentry-Auth", auth("short"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    assert!(detail(response).await.contains("public key"));
}

#[tokio::test]
async fn keys_can_be_replaced_while_running() {
    let intake = start().await;
    intake.set_keys(Vendor::Sentry, [OTHER_KEY]);
    let old = post(&intake, &envelope(&logs(1))).send().await.unwrap();
    assert_eq!(old.status(), 403);
    let new = post_bytes(&intake, envelope(&logs(1)))
        .header("X-Sentry-Auth", auth(OTHER_KEY))
        .send()
        .await
        .unwrap();
    assert_eq!(new.status(), 200);
}

#[tokio::test]
async fn malformed_framing_is_a_bad_request() {
    let intake = start().await;
    let not_json = post(&intake, b"{}\nnot an item header\n{}\n")
        .send()
        .await
        .unwrap();
    assert_eq!(not_json.status(), 400);
    assert!(detail(not_json).await.contains("invalid envelope"));

    let header = json!({"type": "log", "item_count": 1, "content_type": LOG_CONTENT_TYPE,
        "length": 10_000});
    let short = post(&intake, &envelope_with(header, &logs(1)))
        .send()
        .await
        .unwrap();
    assert_eq!(short.status(), 400);
    assert!(detail(short).await.contains("declares length"));

    let no_type = post(&intake, b"{}\n{\"item_count\":0}\n{}\n")
        .send()
        .await
        .unwrap();
    assert_eq!(no_type.status(), 400);
    assert!(sentry_entries(&intake).is_empty());
}

#[tokio::test]
async fn a_wrong_item_count_is_a_bad_request_and_nothing_is_recorded() {
    let intake = start().await;
    let header = json!({"type": "log", "item_count": 3, "content_type": LOG_CONTENT_TYPE});
    let response = post(&intake, &envelope_with(header, &logs(2)))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    assert!(
        detail(response)
            .await
            .contains("item_count is 3 but the payload holds 2 logs"),
        "the reason names both counts"
    );
    assert!(sentry_entries(&intake).is_empty());
}

#[tokio::test]
async fn a_trace_id_that_is_not_32_hex_characters_is_a_bad_request() {
    let intake = start().await;
    for bad in [
        json!("4bf92f3577b34da6"),
        json!("zzf92f3577b34da6a3ce929d0e0e4736"),
        json!(7),
    ] {
        let mut sent = logs(2);
        sent[1]["trace_id"] = bad.clone();
        let response = post(&intake, &envelope(&sent)).send().await.unwrap();
        assert_eq!(response.status(), 400, "{bad}");
        let detail = detail(response).await;
        assert!(
            detail.contains("log 1") && detail.contains("trace_id"),
            "{detail}"
        );
    }
    let mut missing = logs(1);
    missing[0].as_object_mut().unwrap().remove("trace_id");
    let response = post(&intake, &envelope(&missing)).send().await.unwrap();
    assert_eq!(response.status(), 400);
    assert!(sentry_entries(&intake).is_empty());
}

#[tokio::test]
async fn a_level_sentry_does_not_know_is_a_bad_request() {
    let intake = start().await;
    let mut sent = logs(1);
    sent[0]["level"] = json!("warning");
    let response = post(&intake, &envelope(&sent)).send().await.unwrap();
    assert_eq!(response.status(), 400);
    assert!(detail(response).await.contains("level"));
}

#[tokio::test]
async fn a_wrong_content_type_or_encoding_is_a_bad_request() {
    let intake = start().await;
    let json_type = reqwest::Client::new()
        .post(url(&intake))
        .header("X-Sentry-Auth", auth(KEY))
        .header("Content-Type", "application/json")
        .body(envelope(&logs(1)))
        .send()
        .await
        .unwrap();
    assert_eq!(json_type.status(), 400);
    let deflate = post_bytes(&intake, gzip(&envelope(&logs(1))))
        .header("X-Sentry-Auth", auth(KEY))
        .header("Content-Encoding", "deflate")
        .send()
        .await
        .unwrap();
    assert_eq!(deflate.status(), 400);
    let not_gzip = post_bytes(&intake, envelope(&logs(1)))
        .header("X-Sentry-Auth", auth(KEY))
        .header("Content-Encoding", "gzip")
        .send()
        .await
        .unwrap();
    assert_eq!(not_gzip.status(), 400);
}

#[tokio::test]
async fn envelopes_and_logs_over_the_limits_are_refused_as_sentry_refuses_them() {
    let mut config = IntakeConfig::default();
    config.sentry.keys = vec![KEY.to_string()];
    config.sentry.limits = SentryLimits {
        max_envelope_bytes: 4_000,
        max_log_item_bytes: 1_000,
        ..SentryLimits::default()
    };
    let intake = Intake::start(config).await.unwrap();

    let mut big_log = logs(1);
    big_log[0]["body"] = json!("x".repeat(1_000));
    let response = post(&intake, &envelope(&big_log)).send().await.unwrap();
    assert_eq!(response.status(), 400, "an oversized log is Relay's 400");
    assert!(detail(response)
        .await
        .contains("size limits for type 'log'"));

    let response = post(&intake, &envelope(&logs(20))).send().await.unwrap();
    assert_eq!(response.status(), 413, "an oversized envelope is 413");
    assert!(sentry_entries(&intake).is_empty());
}

#[tokio::test]
async fn a_log_container_over_the_limit_refuses_the_whole_envelope_with_413() {
    let mut config = IntakeConfig::default();
    config.sentry.keys = vec![KEY.to_string()];
    config.sentry.limits.max_log_container_bytes = 2_000;
    let intake = Intake::start(config).await.unwrap();

    let response = post(&intake, &envelope(&logs(3))).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let response = post(&intake, &envelope(&logs(20))).send().await.unwrap();
    assert_eq!(response.status(), 413);
    assert!(detail(response).await.contains("log container limit"));
    assert_eq!(sentry_entries(&intake).len(), 3);
}

#[tokio::test]
async fn a_sent_at_55_minutes_or_more_behind_the_arrival_shifts_every_log() {
    let mut config = IntakeConfig::default();
    config.sentry.keys = vec![KEY.to_string()];
    config.sentry.limits.clock_ahead = std::time::Duration::from_secs(3600);
    let intake = Intake::start(config).await.unwrap();
    let header = || json!({"type": "log", "item_count": 2, "content_type": LOG_CONTENT_TYPE});
    let sent = logs(2);

    // No sent_at: nothing to correct.
    let plain = envelope_sent_at(None, header(), &sent);
    assert_eq!(post(&intake, &plain).send().await.unwrap().status(), 200);
    assert_eq!(sentry_entries(&intake), sent);

    // Stamped an hour before it arrives: shifted by that hour (within the
    // time this test takes).
    intake.reset();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    let stamped = format_rfc3339(now);
    let late = envelope_sent_at(Some(&stamped), header(), &sent);
    assert_eq!(post(&intake, &late).send().await.unwrap().status(), 200);
    for (got, sent) in sentry_entries(&intake).iter().zip(&sent) {
        let shift = got["timestamp"].as_f64().unwrap() - sent["timestamp"].as_f64().unwrap();
        assert!(shift >= 3599.99, "shifted by {shift} s");
    }
}

/// `seconds` since the epoch as `YYYY-MM-DDTHH:MM:SS.mmmZ`.
fn format_rfc3339(seconds: f64) -> String {
    let ms = (seconds * 1e3) as i64;
    let (days, rest) = (ms.div_euclid(86_400_000), ms.rem_euclid(86_400_000));
    // Civil date from days (H. Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rest / 3_600_000,
        rest / 60_000 % 60,
        rest / 1000 % 60,
        rest % 1000
    )
}

#[tokio::test]
async fn an_injected_429_carries_the_rate_limit_headers() {
    let intake = start().await;
    intake
        .inject(
            Fault::next(1, 429)
                .for_vendor(Vendor::Sentry)
                .retry_after("60")
                .header("X-Sentry-Rate-Limits", "60:log_item:organization"),
        )
        .unwrap();
    let limited = post(&intake, &envelope(&logs(1))).send().await.unwrap();
    assert_eq!(limited.status(), 429);
    assert_eq!(
        limited.headers()["x-sentry-rate-limits"],
        "60:log_item:organization"
    );
    assert_eq!(limited.headers()["retry-after"], "60");
    assert!(json_body(limited).await["detail"].is_string());

    let next = post(&intake, &envelope(&logs(1))).send().await.unwrap();
    assert_eq!(next.status(), 200, "the fault was used up");
    let stats = intake.stats().vendor(Vendor::Sentry);
    assert_eq!(
        (stats.injected, stats.status(429), stats.entries),
        (1, 1, 1)
    );
}

#[tokio::test]
async fn the_control_api_knows_the_sentry_vendor() {
    let intake = start().await;
    post(&intake, &envelope(&logs(2))).send().await.unwrap();
    let entries: Value = reqwest::get(format!("{}/_intake/sentry/entries", intake.base_url()))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(entries, Value::Array(logs(2)));
}

#[tokio::test]
async fn a_project_id_that_is_not_a_number_is_not_found() {
    let intake = start().await;
    let response = reqwest::Client::new()
        .post(format!("{}/api/abc/envelope/", intake.base_url()))
        .header("X-Sentry-Auth", auth(KEY))
        .header("Content-Type", ENVELOPE_CONTENT_TYPE)
        .body(envelope(&logs(1)))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 404);
}

// ---- a real client's envelope ----

/// Field names of a log and of its attribute values.
fn shape(log: &Value) -> (BTreeSet<String>, BTreeSet<String>) {
    let fields = log.as_object().unwrap().keys().cloned().collect();
    let attribute_fields = log["attributes"]
        .as_object()
        .unwrap()
        .values()
        .flat_map(|a| a.as_object().unwrap().keys().cloned())
        .collect();
    (fields, attribute_fields)
}

#[test]
fn the_python_sdk_envelope_is_parsed_like_ours() {
    let sdk = parse_envelope(SDK_ENVELOPE, &SentryLimits::default()).unwrap();
    assert!(sdk.header.contains_key("sent_at"));
    assert_eq!(sdk.item_types, ["log"]);
    let bodies: Vec<&str> = sdk
        .logs
        .iter()
        .map(|l| l["body"].as_str().unwrap())
        .collect();
    assert_eq!(
        bodies,
        [
            "worker registered with id AW_123",
            "slow track publish took 812 ms",
            "connection reset: \"peer\" gone\tretrying é",
        ]
    );
    let levels: Vec<&str> = sdk
        .logs
        .iter()
        .map(|l| l["level"].as_str().unwrap())
        .collect();
    assert_eq!(levels, ["info", "warn", "error"]);
    for log in &sdk.logs {
        assert!(log["timestamp"].is_f64());
        assert_eq!(log["attributes"]["sentry.environment"]["type"], "string");
    }
    assert_eq!(
        sdk.logs[1]["attributes"]["sentry.message.parameter.ms"],
        json!({"value": 812, "type": "integer"})
    );

    // Ours: the same log fields, and attributes in the same typed form.
    let ours = parse_envelope(&envelope(&logs(1)), &SentryLimits::default()).unwrap();
    let (sdk_fields, sdk_attribute_fields) = shape(&sdk.logs[0]);
    let (our_fields, our_attribute_fields) = shape(&ours.logs[0]);
    assert_eq!(our_fields, sdk_fields);
    assert_eq!(our_attribute_fields, sdk_attribute_fields);
    assert_eq!(
        our_attribute_fields,
        ["type", "value"].map(String::from).into()
    );
}

#[tokio::test]
async fn the_python_sdk_request_is_accepted_over_http() {
    let intake = start().await;
    let response = reqwest::Client::new()
        .post(url(&intake))
        .header("Content-Type", "application/x-sentry-envelope")
        .header("Content-Encoding", "gzip")
        .header(
            "X-Sentry-Auth",
            format!(
                "Sentry sentry_key={KEY}, sentry_version=7, sentry_client=sentry.python/2.75.0"
            ),
        )
        .body(gzip(SDK_ENVELOPE))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(sentry_entries(&intake).len(), 3);
}

#[test]
fn changing_one_byte_of_the_sdk_envelope_breaks_its_declared_length() {
    // The fixture's item header declares its payload's length: one byte more
    // in the payload must be caught as broken framing.
    let text = String::from_utf8(SDK_ENVELOPE.to_vec()).unwrap();
    let longer = text.replacen("AW_123", "AW_1234", 1);
    let err = parse_envelope(longer.as_bytes(), &SentryLimits::default()).unwrap_err();
    assert!(matches!(err, EnvelopeError::Framing(_)), "{err}");
}
