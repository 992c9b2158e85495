//! Sentry sink: DSN parsing, the envelope per the contract, rate limits, and
//! real HTTP requests against the test intake and a small recording server.

use std::io::Read;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes as Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::IntoResponse;
use bytes::Bytes;
use flate2::read::GzDecoder;
use logdrain::v1::{Line, Origin, StreamKind};
use logdrain_test_intake::sentry::{dsn, parse_envelope};
use logdrain_test_intake::{Fault, Intake, IntakeConfig, SentryLimits, Vendor};
use serde_json::{json, Value};
use tokio::time::Instant;

use super::config::{self, parse_dsn};
use super::request_builder::{self, MAX_ITEMS, MAX_LOG_ITEM_BYTES};
use super::service::{classify, rate_limit, Answer, DEFAULT_RATE_LIMIT_WAIT};
use super::*;
use crate::queue::Cursor;
use crate::sinks::endpoint::{parse_net, EndpointPolicy};
use crate::sinks::engine::batch::Pending;
use crate::sinks::HttpClients;

const KEY: &str = "0123456789abcdef0123456789abcdef";
const OTHER_KEY: &str = "fedcba9876543210fedcba9876543210";
const AGENT: &str = "agent-42";

/// The envelope Sentry's Python SDK 2.75.0 sent (see the fixture's README).
const SDK_ENVELOPE: &[u8] = include_bytes!(concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../tests/intake/fixtures/sentry_sdk_logs_envelope.txt"
));

fn queued(index: u32, data: &[u8]) -> QueuedLine {
    QueuedLine {
        cursor: Cursor { segment: 7, index },
        agent_server_id: Arc::from("replica-7"),
        line: Line {
            timestamp_ns: 1_700_000_000_123_456_000,
            stream: StreamKind::Stdout as i32,
            data: Bytes::copy_from_slice(data),
            origin: Origin::Agent as i32,
            part: 0,
            more_parts: false,
        },
        original_timestamp_ns: None,
    }
}

fn stderr(index: u32, data: &[u8]) -> QueuedLine {
    let mut line = queued(index, data);
    line.line.stream = StreamKind::Stderr as i32;
    line
}

fn route() -> RouteKey {
    RouteKey {
        agent_id: AGENT.into(),
        kind: DestinationKind::Sentry,
        cred_id: "c".into(),
    }
}

fn secrets(dsn: &str) -> Secrets {
    Secrets([("SENTRY_DSN".to_string(), dsn.to_string())].into())
}

/// Settings whose endpoint rule lets the tests' loopback intakes through.
fn loopback_allowed() -> SinkSettings {
    SinkSettings {
        endpoint_policy: EndpointPolicy::new(vec![parse_net("127.0.0.0/8").unwrap()]),
        ..SinkSettings::default()
    }
}

fn sink(dsn: &str) -> SentrySink {
    let settings = loopback_allowed();
    let http = HttpClients::new(&settings).unwrap();
    SentrySink::new(&route(), &secrets(dsn), &settings, &http.tenant).unwrap()
}

fn gunzip(body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    GzDecoder::new(body).read_to_end(&mut out).unwrap();
    out
}

/// The decompressed envelope of `lines`, split into its lines.
fn envelope_lines(lines: &[QueuedLine]) -> Vec<String> {
    let encoded = request_builder::encode(AGENT, lines).unwrap();
    let text = String::from_utf8(gunzip(&encoded.body)).unwrap();
    assert_eq!(text.len(), encoded.envelope_bytes);
    assert_eq!(encoded.items, lines.len());
    text.split('\n').map(str::to_string).collect()
}

/// The logs our envelope carries.
fn logs(lines: &[QueuedLine]) -> Vec<Value> {
    let text = &envelope_lines(lines)[2];
    let payload: Value = serde_json::from_str(text).unwrap();
    payload["items"].as_array().unwrap().clone()
}

// ---- DSN ----

#[test]
fn https_and_http_dsns_map_to_the_envelope_endpoint() {
    let https = parse_dsn(&format!("https://{KEY}@o1.ingest.sentry.io/4507")).unwrap();
    assert_eq!(
        https.url.as_str(),
        "https://o1.ingest.sentry.io/api/4507/envelope/"
    );
    assert_eq!(https.project_id, 4507);
    let http = parse_dsn(&format!("http://{KEY}@127.0.0.1:9000/42")).unwrap();
    assert_eq!(http.url.as_str(), "http://127.0.0.1:9000/api/42/envelope/");
}

#[test]
fn a_path_prefix_stays_before_the_api_path() {
    let ep = parse_dsn(&format!("https://{KEY}@sentry.example.com/sentry/relay/7")).unwrap();
    assert_eq!(
        ep.url.as_str(),
        "https://sentry.example.com/sentry/relay/api/7/envelope/"
    );
}

#[test]
fn a_secret_in_the_dsn_is_accepted_and_never_sent() {
    let ep = parse_dsn(&format!("https://{KEY}:s3cr3tpart@sentry.example.com/7")).unwrap();
    assert_eq!(
        ep.url.as_str(),
        "https://sentry.example.com/api/7/envelope/"
    );
    let auth = ep.auth_header().to_str().unwrap();
    assert!(!auth.contains("s3cr3tpart"), "{auth}");
    assert!(!ep.url.as_str().contains("s3cr3tpart"));
}

#[test]
fn the_auth_header_names_version_client_and_key_and_is_sensitive() {
    let ep = parse_dsn(&format!("https://{KEY}@o1.ingest.sentry.io/1")).unwrap();
    assert_eq!(
        ep.auth_header().to_str().unwrap(),
        format!(
            "Sentry sentry_version=7, sentry_client=logdrain/{}, sentry_key={KEY}",
            env!("CARGO_PKG_VERSION")
        )
    );
    assert!(ep.auth_header().is_sensitive());
    assert!(!ep.url.as_str().contains(KEY), "the key is not in the URL");
}

#[test]
fn spaces_a_trailing_slash_a_query_and_a_fragment_are_ignored() {
    let ep = config::from_secrets(
        &secrets(&format!("  https://{KEY}@o1.ingest.sentry.io/42/?x=1#f\n")),
        &EndpointPolicy::default(),
    )
    .unwrap();
    assert_eq!(
        ep.url.as_str(),
        "https://o1.ingest.sentry.io/api/42/envelope/"
    );
}

#[test]
fn a_dsn_that_does_not_parse_names_the_secret_and_the_form_but_never_the_key() {
    let bad = [
        "not a dsn".to_string(),
        format!("ftp://{KEY}@o1.ingest.sentry.io/1"),
        "https://o1.ingest.sentry.io/1".to_string(),
        format!("https://{}@o1.ingest.sentry.io/1", &KEY[..20]),
        format!("https://{}@o1.ingest.sentry.io/1", KEY.replace('a', "g")),
        format!("https://{KEY}@o1.ingest.sentry.io"),
        format!("https://{KEY}@o1.ingest.sentry.io/"),
        format!("https://{KEY}@o1.ingest.sentry.io/project"),
        format!("https://{KEY}@o1.ingest.sentry.io/99999999999999999999999"),
        format!("https://{KEY}@/1"),
        format!("{KEY}@o1.ingest.sentry.io/1"),
    ];
    for dsn in &bad {
        let err = match parse_dsn(dsn) {
            Err(err) => err,
            Ok(ep) => panic!("{dsn:?} parsed as {ep:?}"),
        };
        let text = err.to_string();
        assert!(text.starts_with("SENTRY_DSN cannot be used: "), "{text}");
        assert!(
            text.contains("{scheme}://{public_key}@{host}/{project_id}"),
            "{text}"
        );
        assert!(!text.contains(&KEY[..20]), "{text}");
        assert!(
            !text.contains("o1.ingest"),
            "the DSN is never echoed: {text}"
        );
        assert!(!format!("{err:?}").contains(&KEY[..20]));
    }
}

#[test]
fn each_dsn_problem_is_named() {
    let problem = |dsn: String| parse_dsn(&dsn).unwrap_err().to_string();
    assert!(problem("nope".into()).contains("not a URL"));
    assert!(problem(format!("ftp://{KEY}@h/1")).contains("scheme"));
    assert!(problem("https://h/1".into()).contains("no public key"));
    assert!(problem("https://abc@h/1".into()).contains("32 hexadecimal"));
    assert!(problem(format!("https://{KEY}@h/x")).contains("numeric project id"));
}

#[test]
fn a_missing_dsn_is_named() {
    let err = config::from_secrets(&Secrets::default(), &EndpointPolicy::default()).unwrap_err();
    assert_eq!(
        err.to_string(),
        "SENTRY_DSN is required to deliver to sentry but is missing or empty"
    );
    assert!(config::from_secrets(&secrets("   "), &EndpointPolicy::default()).is_err());
}

#[test]
fn debug_of_the_endpoint_and_the_sink_never_shows_the_key() {
    let dsn = format!("https://{KEY}@o1.ingest.sentry.io/1");
    let ep = parse_dsn(&dsn).unwrap();
    assert!(!format!("{ep:?}").contains(KEY));
    assert!(format!("{ep:?}").contains("<redacted>"));
    assert!(!format!("{:?}", sink(&dsn)).contains(KEY));
}

#[test]
fn the_factory_builds_a_sentry_sink_and_reports_a_bad_dsn() {
    use crate::sinks::{BuildSink, SinkFactory};
    let factory = SinkFactory::new(SinkSettings::default()).unwrap();
    let built = factory
        .build(
            &route(),
            &secrets(&format!("https://{KEY}@o1.ingest.sentry.io/1")),
        )
        .map(|sink| sink.kind());
    assert_eq!(built, Ok(DestinationKind::Sentry));
    let err = match factory.build(&route(), &secrets("https://o1.ingest.sentry.io/1")) {
        Err(err) => err,
        Ok(_) => panic!("a DSN without a key must not build"),
    };
    assert!(err.to_string().starts_with("SENTRY_DSN cannot be used"));
}

// ---- the envelope ----

#[test]
fn the_envelope_is_an_empty_header_one_log_item_header_and_one_payload_line() {
    let lines = envelope_lines(&[queued(0, b"one"), queued(1, b"two")]);
    assert_eq!(lines.len(), 4, "{lines:?}");
    assert_eq!(lines[0], "{}", "no sent_at for Relay to shift the logs by");
    assert_eq!(
        lines[1],
        r#"{"type":"log","item_count":2,"content_type":"application/vnd.sentry.items.log+json"}"#
    );
    let payload: Value = serde_json::from_str(&lines[2]).unwrap();
    let items = payload.as_object().unwrap();
    assert_eq!(items.keys().collect::<Vec<_>>(), ["items"]);
    assert_eq!(payload["items"].as_array().unwrap().len(), 2);
    assert_eq!(lines[3], "", "the envelope ends with a newline");
}

#[test]
fn each_line_carries_exactly_the_contract_fields_and_attributes() {
    let entry = &logs(&[queued(0, b"hello world")])[0];
    assert_eq!(
        entry,
        &json!({
            "timestamp": 1_700_000_000.123456,
            "trace_id": request_builder::trace_id(AGENT, "replica-7"),
            "level": "info",
            "body": "hello world",
            "attributes": {
                "logger": {"value": "agent-42", "type": "string"},
                "logger.name": {"value": "agent-42", "type": "string"},
                "server_name": {"value": "replica-7", "type": "string"},
                "environment": {"value": "production", "type": "string"},
                "sentry.environment": {"value": "production", "type": "string"},
                "stream": {"value": "stdout", "type": "string"},
            },
        })
    );
}

#[test]
fn the_level_comes_from_the_line_before_the_stream() {
    let lines = [
        stderr(0, b"INFO connected to room"),
        stderr(1, b"Traceback (most recent call last):"),
        queued(2, b"[WARN] slow track"),
        queued(3, br#"{"level":"debug","msg":"tick"}"#),
        stderr(4, b"panic: runtime error"),
        queued(5, b"TRACE entering loop"),
        queued(6, b"plain stdout line"),
    ];
    let levels: Vec<Value> = logs(&lines).iter().map(|l| l["level"].clone()).collect();
    assert_eq!(
        levels,
        ["info", "error", "warn", "debug", "fatal", "trace", "info"]
    );
    assert_eq!(
        logs(&lines[..1])[0]["attributes"]["stream"]["value"],
        "stderr"
    );
}

#[test]
fn pieces_of_a_split_line_carry_typed_part_attributes() {
    let mut first = queued(0, b"aaaa");
    first.line.more_parts = true;
    let mut last = queued(1, b"bbbb");
    last.line.part = 1;
    let entries = logs(&[first, last]);
    assert_eq!(entries[0]["body"], "aaaa");
    assert_eq!(
        entries[0]["attributes"]["logdrain.part"],
        json!({"value": 0, "type": "integer"})
    );
    assert_eq!(
        entries[0]["attributes"]["logdrain.more_parts"],
        json!({"value": true, "type": "boolean"})
    );
    assert_eq!(
        entries[1]["attributes"]["logdrain.part"],
        json!({"value": 1, "type": "integer"})
    );
    assert_eq!(
        entries[1]["attributes"]["logdrain.more_parts"],
        json!({"value": false, "type": "boolean"})
    );
    assert!(entries[1]["attributes"].get("logdrain.origin").is_none());
}

#[test]
fn only_shim_lines_carry_an_origin() {
    let mut shim = queued(0, b"agent exited with status 1");
    shim.line.origin = Origin::Shim as i32;
    let entries = logs(&[shim, queued(1, b"agent line")]);
    assert_eq!(
        entries[0]["attributes"]["logdrain.origin"],
        json!({"value": "shim", "type": "string"})
    );
    assert!(entries[0]["attributes"].get("logdrain.part").is_none());
    let names: Vec<&String> = entries[1]["attributes"]
        .as_object()
        .unwrap()
        .keys()
        .collect();
    assert_eq!(
        names,
        [
            "environment",
            "logger",
            "logger.name",
            "sentry.environment",
            "server_name",
            "stream"
        ]
    );
}

#[test]
fn trace_ids_are_32_lowercase_hex_and_one_per_replica() {
    let id = request_builder::trace_id(AGENT, "replica-7");
    assert_eq!(id.len(), 32);
    assert!(id
        .bytes()
        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)));
    assert_eq!(id, request_builder::trace_id(AGENT, "replica-7"));
    assert_ne!(id, request_builder::trace_id(AGENT, "replica-8"));
    assert_ne!(id, request_builder::trace_id("agent-43", "replica-7"));
    // Length-prefixed: moving a character between the ids changes the hash.
    assert_ne!(
        request_builder::trace_id("ab", "c"),
        request_builder::trace_id("a", "bc")
    );
    let mut other = queued(1, b"y");
    other.agent_server_id = Arc::from("replica-8");
    let entries = logs(&[queued(0, b"x"), other, queued(2, b"z")]);
    assert_eq!(entries[0]["trace_id"], entries[2]["trace_id"]);
    assert_ne!(entries[0]["trace_id"], entries[1]["trace_id"]);
}

#[test]
fn bytes_that_are_not_utf8_become_replacement_characters() {
    let entries = logs(&[queued(0, b"caf\xe9 \xff ok")]);
    assert_eq!(entries[0]["body"], "caf\u{fffd} \u{fffd} ok");
}

#[test]
fn an_over_long_line_is_cut_with_a_visible_marker_within_one_log_item() {
    let long = vec![b'a'; 3_000_000];
    let controls = vec![0x01u8; 400_000]; // six bytes each once escaped
    let mut long_ids = queued(0, &[b'q'; 2_000_000]);
    long_ids.agent_server_id = Arc::from("r".repeat(5_000).as_str());
    for line in [queued(0, &long), queued(0, &controls), long_ids] {
        let entry = &logs(std::slice::from_ref(&line))[0];
        let body = entry["body"].as_str().unwrap();
        let marker = format!("…[truncated by logdrain: {} bytes]", line.line.data.len());
        assert!(body.ends_with(&marker), "no marker");
        let size = request_builder::event_size(AGENT, &line) - 1;
        // Counted with `"fatal"`, written with `"info"`.
        assert_eq!(size, serde_json::to_string(entry).unwrap().len() + 1);
        assert!(size <= MAX_LOG_ITEM_BYTES, "{size}");
        assert!(size > MAX_LOG_ITEM_BYTES - 16, "cut far too short: {size}");
    }
    // A line just under the limit is sent whole.
    let fits = queued(0, &vec![b'b'; MAX_LOG_ITEM_BYTES - 2_000]);
    assert_eq!(
        logs(std::slice::from_ref(&fits))[0]["body"]
            .as_str()
            .unwrap()
            .len(),
        MAX_LOG_ITEM_BYTES - 2_000
    );
}

#[test]
fn a_log_without_body_and_ids_stays_within_the_overhead_bound() {
    // The largest log around an empty body: every optional attribute, the
    // longest timestamp, the longest level.
    let mut line = stderr(0, b"");
    line.agent_server_id = Arc::from("");
    line.line.timestamp_ns = i64::MIN;
    line.line.part = u32::MAX;
    line.line.more_parts = true;
    line.line.origin = Origin::Shim as i32;
    let size = request_builder::event_size("", &line) - 1;
    assert!(size <= request_builder::LOG_OVERHEAD_BOUND, "{size}");
}

#[test]
fn event_sizes_add_up_to_the_envelope_within_the_fixed_overhead() {
    let mut lines: Vec<QueuedLine> = (0..50)
        .map(|i| queued(i, format!("line {i} \"quoted\" \\ tab\t é").as_bytes()))
        .collect();
    lines[3].line.more_parts = true;
    lines[4].line.origin = Origin::Shim as i32;
    lines[5].line.timestamp_ns = -1_500_000; // before the epoch still encodes
    let envelope = envelope_lines(&lines);
    let sum: usize = lines
        .iter()
        .map(|l| request_builder::event_size(AGENT, l))
        .sum();
    // Header lines, `{"items":[`, `]}` and the newlines; the last log has
    // no separator.
    let fixed = envelope[0].len() + 1 + envelope[1].len() + 1 + 10 + 2 + 1;
    let total: usize = envelope.iter().map(|l| l.len() + 1).sum::<usize>() - 1;
    // Sizes count the level `"fatal"`; these lines are `"info"`.
    assert_eq!(total + lines.len(), sum - 1 + fixed);
    assert!(fixed <= request_builder::ENVELOPE_OVERHEAD_BYTES);
}

/// Cuts every batch a worker would cut from `lines` with this sink's limits.
fn batches(sink: &SentrySink, lines: Vec<QueuedLine>) -> Vec<Vec<QueuedLine>> {
    let limits = sink.limits();
    let mut pending = Pending::new();
    let now = Instant::now();
    for line in lines {
        let size = sink.event_size(&line);
        pending.push(line, size, now);
    }
    let mut out = Vec::new();
    while !pending.is_empty() {
        out.push(pending.take_batch(&limits));
    }
    out
}

#[test]
fn envelopes_hold_at_most_100_logs_like_sentrys_sdks() {
    let s = sink(&format!("https://{KEY}@o1.ingest.sentry.io/1"));
    let lines = (0..250).map(|i| queued(i, b"short line")).collect();
    let sizes: Vec<usize> = batches(&s, lines).iter().map(Vec::len).collect();
    assert_eq!(sizes, [MAX_ITEMS, MAX_ITEMS, 50]);
}

#[test]
fn our_envelope_passes_the_intake_and_has_the_fields_of_the_python_sdks() {
    let limits = SentryLimits::default();
    let encoded =
        request_builder::encode(AGENT, &[queued(0, b"one"), stderr(1, b"ERROR two")]).unwrap();
    let ours = parse_envelope(&gunzip(&encoded.body), &limits).unwrap();
    let sdk = parse_envelope(SDK_ENVELOPE, &limits).unwrap();
    assert_eq!(ours.item_types, sdk.item_types);
    let keys = |v: &Value| v.as_object().unwrap().keys().cloned().collect::<Vec<_>>();
    // The SDK stamps sent_at; we leave it out (see request_builder).
    assert!(ours.header.is_empty());
    assert!(sdk.header.contains_key("sent_at"));
    for (mine, theirs) in ours.logs.iter().zip(&sdk.logs) {
        assert_eq!(keys(mine), keys(theirs), "same log fields");
        for attribute in mine["attributes"].as_object().unwrap().values() {
            assert_eq!(keys(attribute), ["type", "value"]);
        }
        assert_eq!(
            mine["attributes"]["sentry.environment"],
            theirs["attributes"]["sentry.environment"]
        );
        assert!(mine["timestamp"].is_f64() && theirs["timestamp"].is_f64());
    }
}

// ---- rate limits and classification ----

#[test]
fn rate_limits_for_log_items_or_every_category_apply() {
    let secs = |v: &str| rate_limit(v).map(|d| d.as_secs());
    assert_eq!(secs("60:log_item:organization"), Some(60));
    assert_eq!(secs("120::project"), Some(120), "no category means all");
    assert_eq!(secs("45:log_byte:key"), Some(45));
    assert_eq!(
        secs("60:error;transaction:organization, 30:log_item;span:project"),
        Some(30)
    );
    assert_eq!(secs("10:log_item:key,90::organization:quota"), Some(90));
    assert_eq!(
        secs("2700:default;error;security:organization:quota_exceeded:ns"),
        None
    );
}

#[test]
fn rate_limits_for_other_categories_and_malformed_entries_are_ignored() {
    assert_eq!(rate_limit("600:error:organization"), None);
    assert_eq!(rate_limit("600:logs:organization"), None, "not a category");
    assert_eq!(rate_limit(""), None);
    assert_eq!(rate_limit("60"), None, "no categories field");
    assert_eq!(rate_limit("soon:log_item:org, -5:log_item:org"), None);
    assert_eq!(
        rate_limit("x:log_item, 7:log_item:org").map(|d| d.as_secs()),
        Some(7)
    );
    assert_eq!(
        rate_limit("99999999999999999999999:log_item:org"),
        Some(Duration::from_secs(u64::MAX))
    );
}

fn answer(code: u16, retry_after: Option<u64>, rate_limit: Option<u64>) -> Answer<'static> {
    Answer {
        status: StatusCode::from_u16(code).unwrap(),
        retry_after: retry_after.map(Duration::from_secs),
        rate_limit: rate_limit.map(Duration::from_secs),
        detail: "",
    }
}

fn retry_after(result: Result<SendOutcome, SinkError>) -> Option<Duration> {
    match result {
        Err(SinkError::Retryable { retry_after, .. }) => retry_after,
        other => panic!("not retryable: {other:?}"),
    }
}

#[test]
fn a_429_waits_for_the_longer_signal_or_60_seconds() {
    assert_eq!(
        retry_after(classify(&answer(429, None, None))),
        Some(DEFAULT_RATE_LIMIT_WAIT)
    );
    assert_eq!(DEFAULT_RATE_LIMIT_WAIT, Duration::from_secs(60));
    assert_eq!(
        retry_after(classify(&answer(429, Some(7), None))),
        Some(Duration::from_secs(7))
    );
    assert_eq!(
        retry_after(classify(&answer(429, None, Some(120)))),
        Some(Duration::from_secs(120))
    );
    assert_eq!(
        retry_after(classify(&answer(429, Some(30), Some(10)))),
        Some(Duration::from_secs(30))
    );
}

#[test]
fn an_accepted_answer_with_a_rate_limit_asks_the_engine_to_hold_off() {
    assert_eq!(
        classify(&answer(200, None, Some(30))),
        Ok(SendOutcome {
            hold_off: Some(Duration::from_secs(30)),
            ..SendOutcome::default()
        })
    );
    assert_eq!(
        classify(&answer(200, Some(30), None)),
        Ok(SendOutcome::accepted())
    );
}

#[test]
fn timeouts_and_server_errors_are_retried_with_any_wait_given() {
    for code in [408, 500, 502, 503, 504] {
        assert_eq!(
            retry_after(classify(&answer(code, None, None))),
            None,
            "{code}"
        );
        assert_eq!(
            retry_after(classify(&answer(code, Some(5), None))),
            Some(Duration::from_secs(5))
        );
    }
}

#[test]
fn payload_credential_and_endpoint_errors_have_their_classes() {
    for code in [400, 413] {
        assert!(
            matches!(
                classify(&answer(code, None, None)),
                Err(SinkError::PayloadRejected { .. })
            ),
            "{code}"
        );
    }
    for code in [401, 403] {
        assert!(
            matches!(
                classify(&answer(code, None, None)),
                Err(SinkError::Unauthorized { .. })
            ),
            "{code}"
        );
    }
    for code in [301, 404, 405] {
        match classify(&answer(code, None, None)) {
            Err(SinkError::Config { reason }) => assert!(reason.contains("SENTRY_DSN")),
            other => panic!("{code} gave {other:?}"),
        }
    }
}

// ---- real HTTP against the test intake ----

async fn intake() -> Intake {
    let mut config = IntakeConfig::default();
    config.sentry.keys = vec![KEY.to_string()];
    Intake::start(config).await.unwrap()
}

fn intake_sink(intake: &Intake, key: &str) -> SentrySink {
    sink(&dsn(&intake.base_url(), key, 42))
}

#[tokio::test]
async fn an_envelope_is_accepted_by_the_intake_with_every_log_recorded() {
    let intake = intake().await;
    let s = intake_sink(&intake, KEY);
    let lines = [queued(0, b"one"), stderr(1, b"WARNING: two")];
    assert_eq!(s.send(&lines).await, Ok(SendOutcome::accepted()));

    let entries: Vec<Value> = intake
        .entries(Vendor::Sentry)
        .into_iter()
        .map(|e| e.value)
        .collect();
    assert_eq!(entries.len(), 2);
    assert_eq!(entries[0]["body"], "one");
    assert_eq!(entries[1]["body"], "WARNING: two");
    assert_eq!(entries[1]["level"], "warn");
    assert_eq!(entries[1]["attributes"]["stream"]["value"], "stderr");
    let request = &intake.requests()[0];
    assert_eq!(request.status, 200);
    assert_eq!(request.key.as_deref(), Some(KEY));
    assert_eq!(
        request.headers["content-type"],
        "application/x-sentry-envelope"
    );
    assert_eq!(request.headers["content-encoding"], "gzip");
}

#[tokio::test]
async fn a_throttled_envelope_waits_as_long_as_the_rate_limit_says() {
    let intake = intake().await;
    intake
        .inject(
            Fault::next(1, 429)
                .for_vendor(Vendor::Sentry)
                .header("X-Sentry-Rate-Limits", "75:log_item:organization"),
        )
        .unwrap();
    intake
        .inject(Fault::next(1, 429).for_vendor(Vendor::Sentry))
        .unwrap();
    let s = intake_sink(&intake, KEY);
    match s.send(&[queued(0, b"x")]).await {
        Err(SinkError::Retryable {
            retry_after,
            reason,
        }) => {
            assert_eq!(retry_after, Some(Duration::from_secs(75)));
            assert!(
                reason.starts_with("Sentry answered 429 Too Many Requests"),
                "{reason}"
            );
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        retry_after(s.send(&[queued(0, b"x")]).await),
        Some(Duration::from_secs(60)),
        "a bare 429 means a minute"
    );
}

#[tokio::test]
async fn a_rate_limit_on_an_accepted_envelope_becomes_a_hold_off() {
    let intake = intake().await;
    intake
        .inject(
            Fault::next(1, 200)
                .for_vendor(Vendor::Sentry)
                .header("X-Sentry-Rate-Limits", "30:log_item:organization"),
        )
        .unwrap();
    let s = intake_sink(&intake, KEY);
    let outcome = s.send(&[queued(0, b"x")]).await.unwrap();
    assert_eq!(outcome.hold_off, Some(Duration::from_secs(30)));
    let next = s.send(&[queued(0, b"x")]).await.unwrap();
    assert_eq!(next.hold_off, None);
}

#[tokio::test]
async fn an_unknown_key_means_refused_credentials_without_the_key_in_the_reason() {
    let intake = intake().await;
    let s = intake_sink(&intake, OTHER_KEY);
    match s.send(&[queued(0, b"x")]).await {
        Err(error @ SinkError::Unauthorized { .. }) => {
            let text = error.to_string();
            assert!(text.contains("403"), "{text}");
            assert!(!text.contains(OTHER_KEY), "{text}");
        }
        other => panic!("{other:?}"),
    }
    assert!(intake.entries(Vendor::Sentry).is_empty());
}

/// The worker encodes the next batch early and may send it long after (an
/// outage): Relay would shift every log by the time between a `sent_at`
/// stamped then and the arrival.
#[tokio::test]
async fn an_envelope_sent_an_hour_after_it_was_prepared_keeps_each_lines_time() {
    let mut config = IntakeConfig::default();
    config.sentry.keys = vec![KEY.to_string()];
    config.sentry.limits.clock_ahead = Duration::from_secs(3600);
    let intake = Intake::start(config).await.unwrap();
    let s = intake_sink(&intake, KEY);
    let lines = [queued(0, b"one"), queued(1, b"two")];
    let prepared = s.prepare(&lines).unwrap();
    s.send_prepared(&lines, prepared).await.unwrap();
    let times: Vec<Value> = intake
        .entries(Vendor::Sentry)
        .into_iter()
        .map(|e| e.value["timestamp"].clone())
        .collect();
    assert_eq!(
        times,
        [json!(1_700_000_000.123456), json!(1_700_000_000.123456)]
    );
}

/// Relay refuses a whole envelope whose log container is over 12 MiB.
#[tokio::test]
async fn batches_of_long_lines_fit_relays_12_mib_log_container() {
    let intake = intake().await;
    let s = intake_sink(&intake, KEY);
    let long = vec![b'x'; 1_000_000];
    let lines: Vec<QueuedLine> = (0..13).map(|i| queued(i, &long)).collect();
    let batches = batches(&s, lines);
    assert!(batches.len() > 1, "13 MB of lines need two envelopes");
    for batch in &batches {
        assert_eq!(s.send(batch).await, Ok(SendOutcome::accepted()));
    }
    assert_eq!(intake.entries(Vendor::Sentry).len(), 13);
}

#[tokio::test]
async fn a_payload_the_intake_refuses_is_rejected_for_splitting() {
    let mut config = IntakeConfig::default();
    config.sentry.keys = vec![KEY.to_string()];
    config.sentry.limits.max_envelope_bytes = 2_000;
    let intake = Intake::start(config).await.unwrap();
    let s = intake_sink(&intake, KEY);
    let lines: Vec<QueuedLine> = (0..20).map(|i| queued(i, b"a line of text")).collect();
    assert!(matches!(
        s.send(&lines).await,
        Err(SinkError::PayloadRejected { .. })
    ));
}

// ---- real HTTP against a recording server ----

struct Received {
    path: String,
    headers: HeaderMap,
    body: Vec<u8>,
}

#[derive(Clone)]
struct Recorder {
    answer: (StatusCode, String),
    received: Arc<Mutex<Vec<Received>>>,
}

async fn record(
    State(recorder): State<Recorder>,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> impl IntoResponse {
    recorder.received.lock().unwrap().push(Received {
        path: uri.path().to_string(),
        headers,
        body: body.to_vec(),
    });
    recorder.answer.clone()
}

async fn recorder(status: StatusCode, body: &str) -> (SocketAddr, Arc<Mutex<Vec<Received>>>) {
    let received = Arc::new(Mutex::new(Vec::new()));
    let state = Recorder {
        answer: (status, body.to_string()),
        received: Arc::clone(&received),
    };
    let app = axum::Router::new().fallback(record).with_state(state);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (addr, received)
}

#[tokio::test]
async fn the_request_has_the_auth_header_the_prefixed_path_and_a_gzipped_envelope() {
    let (addr, received) = recorder(StatusCode::OK, "{}").await;
    let s = sink(&format!("http://{KEY}:old-secret@{addr}/relay/42"));
    assert_eq!(s.url().path(), "/relay/api/42/envelope/");
    s.send(&[queued(0, b"one")]).await.unwrap();

    let received = received.lock().unwrap();
    assert_eq!(received.len(), 1);
    let r = &received[0];
    assert_eq!(r.path, "/relay/api/42/envelope/");
    assert_eq!(
        r.headers["x-sentry-auth"],
        format!(
            "Sentry sentry_version=7, sentry_client=logdrain/{}, sentry_key={KEY}",
            env!("CARGO_PKG_VERSION")
        )
    );
    assert_eq!(r.headers["content-type"], "application/x-sentry-envelope");
    assert_eq!(r.headers["content-encoding"], "gzip");
    assert!(r.headers.get("authorization").is_none());
    let text = String::from_utf8(gunzip(&r.body)).unwrap();
    assert!(!text.contains("old-secret") && !text.contains(KEY));
    assert_eq!(text.lines().count(), 3);
}

#[tokio::test]
async fn a_self_hosted_endpoints_answer_shows_its_status_never_its_body() {
    let body = format!(r#"{{"detail":"internal admin page, key {KEY}"}}"#);
    let (addr, _) = recorder(StatusCode::UNAUTHORIZED, &body).await;
    let s = sink(&format!("http://{KEY}@{addr}/1"));
    match s.send(&[queued(0, b"x")]).await {
        Err(error @ SinkError::Unauthorized { .. }) => assert_eq!(
            error.to_string(),
            "the vendor refused the credentials: Sentry answered 401 Unauthorized"
        ),
        other => panic!("{other:?}"),
    }
}

#[test]
fn only_sentrys_own_hosts_have_their_answers_quoted() {
    let quoted = |dsn: &str| match parse_dsn(dsn).unwrap().origin() {
        crate::sinks::http::Origin::Tenant { secret, quoted } => {
            assert_eq!(secret, "SENTRY_DSN");
            quoted
        }
        other => panic!("{other:?}"),
    };
    assert!(quoted(&format!("https://{KEY}@o1.ingest.us.sentry.io/1")));
    assert!(quoted(&format!("https://{KEY}@sentry.io/1")));
    assert!(!quoted(&format!("https://{KEY}@sentry.io.example.com/1")));
    assert!(!quoted(&format!("https://{KEY}@notsentry.io/1")));
    assert!(!quoted(&format!("http://{KEY}@127.0.0.1:9000/1")));
}

#[tokio::test]
async fn an_unreachable_self_hosted_sentry_is_retryable_and_says_only_could_not_connect() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let s = sink(&format!("http://{KEY}@{addr}/1"));
    match s.send(&[queued(0, b"x")]).await {
        Err(SinkError::Retryable { reason, .. }) => assert_eq!(
            reason,
            "request to Sentry failed: could not connect or got no answer"
        ),
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_dsn_whose_host_is_an_internal_address_parks_the_route_naming_sentry_dsn_and_the_rule() {
    let settings = SinkSettings::default();
    let http = HttpClients::new(&settings).unwrap();
    for host in [
        "127.0.0.1:9000",
        "[::1]",
        "[::ffff:127.0.0.1]",
        "169.254.169.254",
        "10.0.0.8",
        "localhost:8080",
        "metadata.google.internal",
        "0.0.0.0",
    ] {
        let dsn = format!("http://{KEY}@{host}/internal/admin/1");
        let err = SentrySink::new(&route(), &secrets(&dsn), &settings, &http.tenant).unwrap_err();
        let text = err.to_string();
        assert!(
            text.starts_with("SENTRY_DSN cannot be used: its host is a"),
            "{text}"
        );
        assert!(text.contains("must be a public address"), "{text}");
        assert!(text.contains("--allow-endpoint-net"), "{text}");
        assert!(!text.contains(KEY), "{text}");
    }
    // A hexadecimal IPv4 host is not a host name the rule would judge
    // differently from the URL parser: the DSN rule refuses it.
    let dsn = format!("http://{KEY}@0x7f000001/1");
    assert!(SentrySink::new(&route(), &secrets(&dsn), &settings, &http.tenant).is_err());
}

/// Answers every lookup with one address.
struct ResolvesTo(std::net::IpAddr);

impl crate::sinks::endpoint::Lookup for ResolvesTo {
    fn lookup(&self, _name: String) -> reqwest::dns::Resolving {
        let addrs = vec![SocketAddr::new(self.0, 0)];
        Box::pin(async move { Ok(Box::new(addrs.into_iter()) as reqwest::dns::Addrs) })
    }
}

#[tokio::test]
async fn a_dsn_name_that_resolves_to_loopback_parks_the_route_and_the_listener_gets_nothing() {
    let (addr, received) = recorder(StatusCode::OK, "internal answer").await;
    let settings = SinkSettings::default();
    let client = crate::sinks::endpoint::with_lookup(
        reqwest::Client::builder(),
        &settings.endpoint_policy,
        ResolvesTo(addr.ip()),
    )
    .unwrap();
    let dsn = format!("http://{KEY}@sentry.internal.example:{}/1", addr.port());
    let s = SentrySink::new(&route(), &secrets(&dsn), &settings, &client).unwrap();
    match s.send(&[queued(0, b"x")]).await {
        Err(SinkError::Config { reason }) => assert_eq!(
            reason,
            format!(
                "SENTRY_DSN cannot be used: its host is a loopback address; {}",
                logdrain::endpoint::RULE
            )
        ),
        other => panic!("{other:?}"),
    }
    assert!(received.lock().unwrap().is_empty());
}

// ---- the hand-written layout against serde_json ----

/// The general path the hand-written layout must match byte for byte: each
/// log as serde_json writes its structs.
mod reference {
    use std::borrow::Cow;

    use serde::Serialize;

    use super::request_builder::{ENVIRONMENT, MAX_LOG_ITEM_BYTES};
    use crate::queue::QueuedLine;
    use crate::sinks::level::Level;
    use crate::sinks::text::{self, json_len};

    #[derive(Serialize)]
    struct Log<'a> {
        timestamp: f64,
        trace_id: &'a str,
        level: &'static str,
        body: Cow<'a, str>,
        attributes: Attributes<'a>,
    }

    #[derive(Serialize)]
    struct Attr<T> {
        value: T,
        #[serde(rename = "type")]
        kind: &'static str,
    }

    fn string(value: &str) -> Attr<&str> {
        Attr {
            value,
            kind: "string",
        }
    }

    #[derive(Serialize)]
    struct Attributes<'a> {
        logger: Attr<&'a str>,
        #[serde(rename = "logger.name")]
        logger_name: Attr<&'a str>,
        server_name: Attr<&'a str>,
        environment: Attr<&'static str>,
        #[serde(rename = "sentry.environment")]
        sentry_environment: Attr<&'static str>,
        stream: Attr<&'static str>,
        #[serde(rename = "logdrain.part", skip_serializing_if = "Option::is_none")]
        part: Option<Attr<u32>>,
        #[serde(
            rename = "logdrain.more_parts",
            skip_serializing_if = "Option::is_none"
        )]
        more_parts: Option<Attr<bool>>,
        #[serde(rename = "logdrain.origin", skip_serializing_if = "Option::is_none")]
        origin: Option<Attr<&'static str>>,
    }

    /// The JSON of `queued`'s log, its body cut to what is left of the
    /// item limit once everything else is counted.
    pub fn log(agent_id: &str, queued: &QueuedLine, level: Level, trace_id: &str) -> Vec<u8> {
        let line = &queued.line;
        let logdrain = text::Attributes::of(line);
        let mut log = Log {
            timestamp: line.timestamp_ns as f64 / 1e9,
            trace_id,
            level: Level::WIDEST.as_str(),
            body: Cow::Borrowed(""),
            attributes: Attributes {
                logger: string(agent_id),
                logger_name: string(agent_id),
                server_name: string(&queued.agent_server_id),
                environment: string(ENVIRONMENT),
                sentry_environment: string(ENVIRONMENT),
                stream: string(line.stream().name()),
                part: logdrain.part.map(|value| Attr {
                    value,
                    kind: "integer",
                }),
                more_parts: logdrain.more_parts.map(|value| Attr {
                    value,
                    kind: "boolean",
                }),
                origin: logdrain.origin.map(string),
            },
        };
        let budget = MAX_LOG_ITEM_BYTES.saturating_sub(json_len(&log) - 2);
        log.body = text::json_text(&line.data, budget);
        log.level = level.as_str();
        serde_json::to_vec(&log).unwrap()
    }
}

/// Lines that take every path of the layout: escapes, control characters,
/// invalid UTF-8, ANSI colours, non-ASCII, lines long enough to be cut,
/// pieces, shim lines, timestamps before the epoch, replica ids that need
/// escaping.
fn awkward_lines() -> Vec<QueuedLine> {
    let mut data = crate::sinks::text::awkward_texts();
    data.extend([
        br#"{"level":"error","msg":"json \"inside\""}"#.to_vec(),
        vec![b'a'; 5_000],
        vec![b'b'; 1_100_000],
        vec![0x01u8; 200_000],
        Vec::new(),
    ]);
    let replicas: [Arc<str>; 2] = [Arc::from("replica-7"), Arc::from("r\u{e9}plica \"8\"\n")];
    data.iter()
        .enumerate()
        .map(|(i, data)| {
            let mut line = queued(i as u32, data);
            line.agent_server_id = Arc::clone(&replicas[(i / 3) % 2]);
            match i % 5 {
                1 => line.line.more_parts = true,
                2 => line.line.part = 3,
                3 => line.line.origin = Origin::Shim as i32,
                4 => line.line.stream = StreamKind::Stderr as i32,
                _ => line.line.timestamp_ns = -1_500_000,
            }
            line
        })
        .collect()
}

#[test]
fn the_hand_written_logs_are_byte_for_byte_what_serde_json_writes() {
    for agent in [AGENT, "agent \"q\" \\ \u{7}"] {
        let lines = awkward_lines();
        let mut expected = b"{\"items\":[".to_vec();
        for (i, line) in lines.iter().enumerate() {
            if i > 0 {
                expected.push(b',');
            }
            let level = crate::sinks::level::detect(&line.line.data, line.line.stream());
            let trace = request_builder::trace_id(agent, &line.agent_server_id);
            expected.extend(reference::log(agent, line, level, &trace));
        }
        expected.extend_from_slice(b"]}");
        let encoded = request_builder::encode(agent, &lines).unwrap();
        let envelope = gunzip(&encoded.body);
        let payload = envelope.split(|&b| b == b'\n').nth(2).unwrap();
        assert!(payload == expected.as_slice(), "payloads differ");
        for line in &lines {
            let widest = reference::log(
                agent,
                line,
                crate::sinks::level::Level::WIDEST,
                &"0".repeat(32),
            );
            assert_eq!(
                request_builder::event_size(agent, line),
                widest.len() + 1,
                "{:?}",
                line.cursor
            );
        }
    }
}
