//! Datadog sink: the request body per the contract, batching by Datadog's
//! limits, and real HTTP requests against a small local intake.

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
use serde_json::{json, Value};
use tokio::time::Instant;
use url::Url;

use super::request_builder::{self, MAX_LOG_BYTES, MAX_MESSAGE_JSON_BYTES, MAX_PAYLOAD_BYTES};
use super::*;
use crate::queue::Cursor;
use crate::sinks::engine::batch::Pending;
use crate::sinks::level::Level;

const API_KEY: &str = "0123456789abcdef0123456789abcdef";
const CLIENT_TOKEN: &str = "pubfedcba9876543210fedcba9876543210";

fn queued(index: u32, data: &[u8]) -> QueuedLine {
    QueuedLine {
        cursor: Cursor { segment: 7, index },
        agent_server_id: Arc::from("replica-7"),
        line: Line {
            timestamp_ns: 1_700_000_000_123_456_789,
            stream: StreamKind::Stdout as i32,
            data: Bytes::copy_from_slice(data),
            origin: Origin::Agent as i32,
            part: 0,
            more_parts: false,
        },
        original_timestamp_ns: None,
    }
}

fn route() -> RouteKey {
    RouteKey {
        agent_id: "agent-42".into(),
        kind: DestinationKind::Datadog,
        cred_id: "c".into(),
    }
}

fn sink(token: &str, base: Option<Url>) -> DatadogSink {
    let secrets = Secrets([("DATADOG_TOKEN".to_string(), token.to_string())].into());
    let settings = SinkSettings {
        datadog_url: base,
        ..SinkSettings::default()
    };
    DatadogSink::new(&route(), &secrets, &settings, &reqwest::Client::new()).unwrap()
}

fn gunzip(body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    GzDecoder::new(body).read_to_end(&mut out).unwrap();
    out
}

fn decode(lines: &[QueuedLine]) -> Vec<Value> {
    let encoded = request_builder::encode("agent-42", lines, MAX_MESSAGE_JSON_BYTES).unwrap();
    let json = gunzip(&encoded.body);
    assert_eq!(json.len(), encoded.json_bytes);
    match serde_json::from_slice(&json).unwrap() {
        Value::Array(entries) => entries,
        other => panic!("body is not an array: {other}"),
    }
}

#[test]
fn each_line_carries_exactly_the_contract_fields() {
    let entries = decode(&[queued(0, b"hello world")]);
    assert_eq!(
        entries,
        [json!({
            "host": "replica-7",
            "ddsource": "agent-42",
            "service": "cloud.livekit.io",
            "stream": "stdout",
            "message": "hello world",
            "timestamp": 1_700_000_000_123i64,
            "status": "info",
        })]
    );
}

#[test]
fn stderr_lines_are_errors_only_when_the_line_names_no_level() {
    let mut named = queued(0, b"INFO connected to room");
    named.line.stream = StreamKind::Stderr as i32;
    let mut unnamed = queued(1, b"Traceback (most recent call last):");
    unnamed.line.stream = StreamKind::Stderr as i32;
    let entries = decode(&[named, unnamed]);
    assert_eq!(entries[0]["stream"], "stderr");
    assert_eq!(entries[0]["status"], "info");
    assert_eq!(entries[1]["status"], "error");
}

#[test]
fn levels_map_to_datadog_statuses() {
    let statuses = [
        Level::Trace,
        Level::Debug,
        Level::Info,
        Level::Warn,
        Level::Error,
        Level::Fatal,
    ]
    .map(request_builder::status);
    assert_eq!(
        statuses,
        ["debug", "debug", "info", "warn", "error", "critical"]
    );
}

#[test]
fn pieces_of_a_split_line_carry_their_part_and_nothing_is_added_to_the_message() {
    let mut first = queued(0, b"aaaa");
    first.line.more_parts = true;
    let mut last = queued(1, b"bbbb");
    last.line.part = 1;
    let entries = decode(&[first, last]);
    assert_eq!(entries[0]["message"], "aaaa");
    assert_eq!(
        entries[0]["logdrain"],
        json!({"part": 0, "more_parts": true})
    );
    assert_eq!(entries[1]["message"], "bbbb");
    assert_eq!(
        entries[1]["logdrain"],
        json!({"part": 1, "more_parts": false})
    );
}

#[test]
fn only_shim_lines_carry_an_origin() {
    let mut shim = queued(0, b"agent exited with status 1");
    shim.line.origin = Origin::Shim as i32;
    let entries = decode(&[shim, queued(1, b"agent line")]);
    assert_eq!(entries[0]["logdrain"], json!({"origin": "shim"}));
    assert!(entries[1].get("logdrain").is_none());
}

#[test]
fn bytes_that_are_not_utf8_become_replacement_characters() {
    let entries = decode(&[queued(0, b"caf\xe9 \xff ok")]);
    assert_eq!(entries[0]["message"], "caf\u{fffd} \u{fffd} ok");
}

#[test]
fn an_over_long_line_is_cut_with_a_visible_marker_within_one_log() {
    let long = vec![b'a'; 2_500_000];
    let controls = vec![0x01u8; 400_000]; // six bytes each once escaped
    for data in [long, controls] {
        let line = queued(0, &data);
        let entry = &decode(std::slice::from_ref(&line))[0];
        let message = entry["message"].as_str().unwrap();
        let marker = format!("…[truncated by logdrain: {} bytes]", data.len());
        assert!(message.ends_with(&marker), "no marker");
        let size = request_builder::event_size("agent-42", &line, MAX_MESSAGE_JSON_BYTES);
        assert!(size <= MAX_LOG_BYTES, "{size}");
        assert!(size > MAX_LOG_BYTES - 10_000, "cut far too short: {size}");
    }
}

#[test]
fn event_sizes_add_up_to_the_body_length_counted_with_the_longest_status() {
    let mut lines: Vec<QueuedLine> = (0..50)
        .map(|i| queued(i, format!("line {i} \"quoted\" \\ tab\t é").as_bytes()))
        .collect();
    lines[3].line.more_parts = true;
    lines[4].line.origin = Origin::Shim as i32;
    lines[5].line.timestamp_ns = -1_500_000; // before the epoch still encodes
    let encoded = request_builder::encode("agent-42", &lines, MAX_MESSAGE_JSON_BYTES).unwrap();
    let sum: usize = lines
        .iter()
        .map(|l| request_builder::event_size("agent-42", l, MAX_MESSAGE_JSON_BYTES))
        .sum();
    // Sizes count `"critical"`; these lines are `"info"`: 4 bytes each.
    assert_eq!(sum + 1, encoded.json_bytes + 4 * lines.len());
    let critical: Vec<QueuedLine> = (0..5).map(|i| queued(i, b"CRITICAL boom")).collect();
    let sum: usize = critical
        .iter()
        .map(|l| request_builder::event_size("agent-42", l, MAX_MESSAGE_JSON_BYTES))
        .sum();
    assert_eq!(
        sum + 1,
        request_builder::encode("agent-42", &critical, MAX_MESSAGE_JSON_BYTES)
            .unwrap()
            .json_bytes
    );
}

/// The general path the hand-written layout must match byte for byte: each
/// log object as serde_json writes it.
#[derive(serde::Serialize)]
struct Reference<'a> {
    host: &'a str,
    ddsource: &'a str,
    service: &'static str,
    stream: &'static str,
    message: std::borrow::Cow<'a, str>,
    timestamp: i64,
    status: &'static str,
    #[serde(skip_serializing_if = "crate::sinks::text::Attributes::is_empty")]
    logdrain: crate::sinks::text::Attributes,
}

fn reference<'a>(agent_id: &'a str, queued: &'a QueuedLine, level: Level) -> Reference<'a> {
    let line = &queued.line;
    Reference {
        host: &queued.agent_server_id,
        ddsource: agent_id,
        service: request_builder::SERVICE,
        stream: line.stream().name(),
        message: crate::sinks::text::json_text(&line.data, request_builder::MAX_MESSAGE_JSON_BYTES),
        timestamp: line.timestamp_ns.div_euclid(1_000_000),
        status: request_builder::status(level),
        logdrain: crate::sinks::text::Attributes::of(line),
    }
}

/// Lines that take every path of the layout: escapes, control characters,
/// invalid UTF-8, ANSI colours, non-ASCII, JSON text, lines long enough to
/// be cut, pieces, shim lines, stderr, replicas alternating and replica ids
/// that need escaping themselves.
fn awkward_lines() -> Vec<QueuedLine> {
    let mut data = crate::sinks::text::awkward_texts();
    data.extend([
        br#"{"level":"error","msg":"json \"inside\""}"#.to_vec(),
        format!("{:099}", 7).into_bytes(),
        vec![b'a'; 5_000],
        vec![b'b'; 1_200_000],
        vec![0x01u8; 200_000],
        Vec::new(),
    ]);
    let replicas: [Arc<str>; 3] = [
        Arc::from("replica-7"),
        Arc::from("replica \"8\" \\ \u{1}"),
        Arc::from("r\u{e9}plica-9"),
    ];
    let mut lines = Vec::new();
    for (i, data) in data.iter().enumerate() {
        let mut line = queued(i as u32, data);
        line.agent_server_id = Arc::clone(&replicas[(i / 2) % replicas.len()]);
        match i % 5 {
            1 => line.line.stream = StreamKind::Stderr as i32,
            2 => line.line.more_parts = true,
            3 => line.line.origin = Origin::Shim as i32,
            4 => line.line.timestamp_ns = -1_500_000,
            _ => {}
        }
        lines.push(line);
    }
    lines
}

#[test]
fn the_hand_written_body_is_byte_for_byte_what_serde_json_writes() {
    for agent in ["agent-42", "agent \"quoted\" \\ \u{7}"] {
        let lines = awkward_lines();
        let mut expected = b"[".to_vec();
        for (i, line) in lines.iter().enumerate() {
            if i > 0 {
                expected.push(b',');
            }
            let level = crate::sinks::level::detect(&line.line.data, line.line.stream());
            serde_json::to_writer(&mut expected, &reference(agent, line, level)).unwrap();
        }
        expected.push(b']');
        let encoded = request_builder::encode(agent, &lines, MAX_MESSAGE_JSON_BYTES).unwrap();
        assert!(gunzip(&encoded.body) == expected, "bodies differ");
        for line in &lines {
            let widest = serde_json::to_vec(&reference(agent, line, Level::WIDEST)).unwrap();
            assert_eq!(
                request_builder::event_size(agent, line, MAX_MESSAGE_JSON_BYTES),
                widest.len() + 1,
                "{:?}",
                line.cursor
            );
        }
    }
}

/// Cuts every batch a worker would cut from `lines` with this sink's limits.
fn batches(sink: &DatadogSink, lines: Vec<QueuedLine>) -> Vec<Vec<QueuedLine>> {
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
fn batches_to_the_browser_intake_hold_at_most_50_entries() {
    let s = sink(CLIENT_TOKEN, None);
    let lines = (0..120).map(|i| queued(i, b"short line")).collect();
    let sizes: Vec<usize> = batches(&s, lines).iter().map(Vec::len).collect();
    assert_eq!(sizes, [50, 50, 20]);
}

#[test]
fn batches_hold_at_most_1000_entries() {
    let s = sink(API_KEY, None);
    let lines = (0..2_500).map(|i| queued(i, b"short line")).collect();
    let sizes: Vec<usize> = batches(&s, lines).iter().map(Vec::len).collect();
    assert_eq!(sizes, [1_000, 1_000, 500]);
}

#[test]
fn batches_stay_within_5_mb_uncompressed() {
    let s = sink(API_KEY, None);
    // 1,000 lines of 5,200 bytes would be 5.2 MB: fewer must go per request.
    let lines: Vec<QueuedLine> = (0..1_000).map(|i| queued(i, &[b'x'; 5_200])).collect();
    let cut = batches(&s, lines);
    assert!(cut.len() >= 2);
    for batch in &cut {
        let encoded = request_builder::encode("agent-42", batch, MAX_MESSAGE_JSON_BYTES).unwrap();
        assert!(
            encoded.json_bytes <= MAX_PAYLOAD_BYTES,
            "{}",
            encoded.json_bytes
        );
    }
    // Lines near the per-log limit: still whole logs, still under 5 MB.
    let big: Vec<QueuedLine> = (0..12).map(|i| queued(i, &[b'y'; 900_000])).collect();
    let cut = batches(&s, big);
    assert_eq!(cut.iter().map(Vec::len).collect::<Vec<_>>(), [5, 5, 2]);
    for batch in &cut {
        let encoded = request_builder::encode("agent-42", batch, MAX_MESSAGE_JSON_BYTES).unwrap();
        assert!(encoded.json_bytes <= MAX_PAYLOAD_BYTES);
    }
}

// ---- real HTTP against a local intake ----

struct Received {
    path: String,
    query: Option<String>,
    headers: HeaderMap,
    body: Vec<u8>,
}

#[derive(Clone)]
struct Intake {
    answer: (StatusCode, Vec<(&'static str, String)>, String),
    received: Arc<Mutex<Vec<Received>>>,
}

async fn record(
    State(intake): State<Intake>,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> impl IntoResponse {
    intake.received.lock().unwrap().push(Received {
        path: uri.path().to_string(),
        query: uri.query().map(str::to_string),
        headers,
        body: body.to_vec(),
    });
    let (status, extra, text) = intake.answer.clone();
    let mut headers = HeaderMap::new();
    for (name, value) in extra {
        headers.insert(name, value.parse().unwrap());
    }
    (status, headers, text)
}

/// Starts an intake on port 0 answering every request with `answer`.
async fn intake(
    status: StatusCode,
    headers: Vec<(&'static str, String)>,
    body: &str,
) -> (Url, Arc<Mutex<Vec<Received>>>) {
    let received = Arc::new(Mutex::new(Vec::new()));
    let state = Intake {
        answer: (status, headers, body.to_string()),
        received: Arc::clone(&received),
    };
    let app = axum::Router::new().fallback(record).with_state(state);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr: SocketAddr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (Url::parse(&format!("http://{addr}")).unwrap(), received)
}

#[tokio::test]
async fn an_api_key_request_has_the_header_and_a_gzipped_json_array() {
    let (base, received) = intake(StatusCode::ACCEPTED, vec![], "{}").await;
    let s = sink(API_KEY, Some(base));
    let outcome = s.send(&[queued(0, b"one"), queued(1, b"two")]).await;
    assert_eq!(outcome, Ok(SendOutcome::accepted()));

    let received = received.lock().unwrap();
    assert_eq!(received.len(), 1);
    let r = &received[0];
    assert_eq!(r.path, "/api/v2/logs");
    assert_eq!(r.query, None);
    assert_eq!(r.headers["dd-api-key"], API_KEY);
    assert_eq!(r.headers["content-type"], "application/json");
    assert_eq!(r.headers["content-encoding"], "gzip");
    let entries: Value = serde_json::from_slice(&gunzip(&r.body)).unwrap();
    assert_eq!(entries[0]["message"], "one");
    assert_eq!(entries[1]["message"], "two");
    assert_eq!(entries.as_array().unwrap().len(), 2);
}

#[tokio::test]
async fn a_client_token_request_carries_what_the_browser_sdk_sends_in_the_query() {
    let (base, received) = intake(StatusCode::ACCEPTED, vec![], "").await;
    let s = sink(CLIENT_TOKEN, Some(base));
    s.send(&[queued(0, b"one")]).await.unwrap();
    s.send(&[queued(1, b"two")]).await.unwrap();

    let received = received.lock().unwrap();
    let queries: Vec<Vec<(String, String)>> = received
        .iter()
        .map(|r| {
            url::form_urlencoded::parse(r.query.as_deref().unwrap_or_default().as_bytes())
                .into_owned()
                .collect()
        })
        .collect();
    for (r, query) in received.iter().zip(&queries) {
        assert_eq!(r.path, "/api/v2/logs");
        let names: Vec<&str> = query.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            [
                "ddsource",
                "dd-api-key",
                "dd-evp-origin-version",
                "dd-evp-origin",
                "dd-request-id"
            ]
        );
        assert_eq!(query[0].1, "agent-42", "the body's ddsource");
        assert_eq!(query[1].1, CLIENT_TOKEN);
        assert_eq!(query[2].1, env!("CARGO_PKG_VERSION"));
        assert_eq!(query[3].1, "browser");
        assert!(r.headers.get("dd-api-key").is_none());
        assert_eq!(r.headers["content-encoding"], "gzip");
    }
    assert_ne!(queries[0][4], queries[1][4], "a new request id per request");
}

#[tokio::test]
async fn a_line_over_the_browser_intakes_256_kib_is_cut_with_the_marker_only_for_client_tokens() {
    let data = vec![b'q'; 300 * 1024];
    for (token, cut) in [(CLIENT_TOKEN, true), (API_KEY, false)] {
        let (base, received) = intake(StatusCode::ACCEPTED, vec![], "").await;
        let s = sink(token, Some(base));
        let line = queued(0, &data);
        assert!(
            s.event_size(&line)
                < if cut {
                    request_builder::MAX_BROWSER_LOG_BYTES
                } else {
                    MAX_LOG_BYTES
                }
        );
        s.send(&[line]).await.unwrap();
        let received = received.lock().unwrap();
        let entries: Value = serde_json::from_slice(&gunzip(&received[0].body)).unwrap();
        let entry = &entries[0];
        let message = entry["message"].as_str().unwrap();
        let marker = format!("…[truncated by logdrain: {} bytes]", data.len());
        assert_eq!(message.ends_with(&marker), cut, "{token}");
        if cut {
            let object = serde_json::to_vec(entry).unwrap();
            assert!(
                object.len() < request_builder::MAX_BROWSER_LOG_BYTES,
                "{}",
                object.len()
            );
        } else {
            assert_eq!(message.len(), data.len());
        }
    }
}

#[tokio::test]
async fn throttling_is_retryable_with_the_intakes_retry_after() {
    let (base, _) = intake(
        StatusCode::TOO_MANY_REQUESTS,
        vec![("retry-after", "7".to_string())],
        "slow down",
    )
    .await;
    let s = sink(API_KEY, Some(base));
    match s.send(&[queued(0, b"x")]).await {
        Err(SinkError::Retryable {
            retry_after,
            reason,
        }) => {
            assert_eq!(retry_after, Some(Duration::from_secs(7)));
            assert_eq!(reason, "Datadog answered 429 Too Many Requests: slow down");
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn a_too_large_payload_is_rejected_for_splitting() {
    let (base, _) = intake(StatusCode::PAYLOAD_TOO_LARGE, vec![], "").await;
    let s = sink(API_KEY, Some(base));
    assert!(matches!(
        s.send(&[queued(0, b"x")]).await,
        Err(SinkError::PayloadRejected { .. })
    ));
}

#[tokio::test]
async fn refused_credentials_never_show_the_token_even_if_echoed() {
    let echo = format!(r#"{{"errors":["Forbidden: bad key {CLIENT_TOKEN}"]}}"#);
    let (base, _) = intake(StatusCode::FORBIDDEN, vec![], &echo).await;
    let s = sink(CLIENT_TOKEN, Some(base));
    match s.send(&[queued(0, b"x")]).await {
        Err(error @ SinkError::Unauthorized { .. }) => {
            let text = error.to_string();
            assert!(text.contains("403"), "{text}");
            assert!(text.contains("<redacted>"), "{text}");
            assert!(!text.contains(CLIENT_TOKEN), "{text}");
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn an_unreachable_intake_is_retryable_and_the_reason_has_no_url_or_token() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let s = sink(
        CLIENT_TOKEN,
        Some(Url::parse(&format!("http://{addr}")).unwrap()),
    );
    match s.send(&[queued(0, b"x")]).await {
        Err(SinkError::Retryable { reason, .. }) => {
            assert!(!reason.contains(CLIENT_TOKEN), "{reason}");
            assert!(!reason.contains("dd-api-key"), "{reason}");
            assert!(reason.starts_with("request to Datadog failed"), "{reason}");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn debug_of_the_sink_never_shows_the_credential() {
    for token in [API_KEY, CLIENT_TOKEN] {
        let debug = format!("{:?}", sink(token, None));
        assert!(!debug.contains(token), "{debug}");
    }
}

/// Against the test intake's model of the browser intake: its query, its
/// 50 entries and its 256 KiB per message, nothing marked oversized.
#[tokio::test]
async fn the_browser_intake_takes_a_client_token_batch_with_a_long_line_whole_and_marked() {
    use logdrain_test_intake::{Intake, IntakeConfig, Vendor};
    let intake = Intake::start(IntakeConfig::with_datadog_keys([CLIENT_TOKEN]))
        .await
        .unwrap();
    let s = sink(CLIENT_TOKEN, Some(Url::parse(&intake.base_url()).unwrap()));
    let now_ns = i64::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos(),
    )
    .unwrap();
    let mut lines: Vec<QueuedLine> = (0..request_builder::MAX_BROWSER_EVENTS as u32)
        .map(|i| queued(i, format!("line {i}").as_bytes()))
        .collect();
    lines[7] = queued(7, &vec![b'q'; 300 * 1024]);
    for line in &mut lines {
        line.line.timestamp_ns = now_ns;
    }
    assert_eq!(s.send(&lines).await, Ok(SendOutcome::accepted()));
    let entries = intake.entries(Vendor::Datadog);
    assert_eq!(entries.len(), lines.len());
    assert!(entries.iter().all(|e| !e.oversized));
    let long = entries[7].value["message"].as_str().unwrap();
    assert!(long.ends_with("…[truncated by logdrain: 307200 bytes]"));
}

/// A pino line carries its own `hostname`, `service`, `level` and `time`.
/// Datadog does not expand JSON inside a JSON log's `message` (its docs;
/// the test intake reads `message` as Datadog does), so the log keeps the
/// contract's host, service and source, and the line whole as its message.
#[tokio::test]
async fn a_json_line_with_its_own_host_and_service_keeps_the_contracts() {
    use logdrain_test_intake::{Intake, IntakeConfig};
    let intake = Intake::start(IntakeConfig::with_datadog_keys([API_KEY]))
        .await
        .unwrap();
    let s = sink(API_KEY, Some(Url::parse(&intake.base_url()).unwrap()));
    let pino = br#"{"level":50,"time":1700000000000,"pid":7,"hostname":"pod-xyz","service":"their-svc","host":"their-host","msg":"boom"}"#;
    let mut line = queued(0, pino);
    line.line.timestamp_ns = i64::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos(),
    )
    .unwrap();
    assert_eq!(s.send(&[line]).await, Ok(SendOutcome::accepted()));
    let entries = intake.datadog_entries();
    assert_eq!(entries.len(), 1);
    let entry = &entries[0];
    assert_eq!(entry["host"], "replica-7");
    assert_eq!(entry["service"], request_builder::SERVICE);
    assert_eq!(entry["ddsource"], "agent-42");
    assert_eq!(entry["message"], std::str::from_utf8(pino).unwrap());
    assert!(entry.get("hostname").is_none(), "{entry}");
}
