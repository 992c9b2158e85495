//! CloudWatch sink: the event encoding, the PutLogEvents rules (26-byte
//! rule, 10,000 events, order, 24 h span, over-size events), and real SDK
//! requests against a small local fake that answers like CloudWatch
//! (errors, rejected events, partial failures).
//!
//! The tests against moto (`server/tests/cloudwatch_moto.rs`) cover the
//! group/stream creation protocol against a real implementation.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use axum::body::Bytes as Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use bytes::Bytes;
use logdrain::v1::{Line, Origin, StreamKind};
use serde_json::{json, Value};
use tokio::time::Instant;
use url::Url;

use super::outcome::{Tally, Verdict};
use super::request_builder::{
    self, Event, EVENT_OVERHEAD, MAX_BATCH_BYTES, MAX_EVENTS, MAX_EVENT_BYTES, MAX_SPAN_MS,
};
use super::*;
use crate::queue::Cursor;
use crate::sinks::engine::batch::Pending;
use crate::sinks::engine::late;
use crate::sinks::{build_sink, HttpClients, SinkSettings};

const KEY_ID: &str = "AKIAROUTEKEYID123456";
const SECRET: &str = "routeSecretAccessKey/abc+def";
const HOUR_NS: i64 = 3_600_000_000_000;
const T0_NS: i64 = 1_700_000_000_123_456_789;

fn queued(index: u32, server: &str, timestamp_ns: i64, data: &[u8]) -> QueuedLine {
    QueuedLine {
        cursor: Cursor { segment: 3, index },
        agent_server_id: Arc::from(server),
        line: Line {
            timestamp_ns,
            stream: StreamKind::Stdout as i32,
            data: Bytes::copy_from_slice(data),
            origin: Origin::Agent as i32,
            part: 0,
            more_parts: false,
        },
        original_timestamp_ns: None,
    }
}

fn line(index: u32, data: &[u8]) -> QueuedLine {
    queued(index, "replica-7", T0_NS, data)
}

fn route() -> RouteKey {
    RouteKey {
        agent_id: "agent-42".into(),
        kind: DestinationKind::CloudWatch,
        cred_id: "c".into(),
    }
}

fn secrets() -> Secrets {
    Secrets(
        [
            ("AWS_ACCESS_KEY_ID".to_string(), KEY_ID.to_string()),
            ("AWS_SECRET_ACCESS_KEY".to_string(), SECRET.to_string()),
        ]
        .into(),
    )
}

fn sink(endpoint: Option<Url>) -> CloudWatchSink {
    let settings = SinkSettings {
        cloudwatch_url: endpoint,
        ..SinkSettings::default()
    };
    CloudWatchSink::new(&route(), &secrets(), &settings).unwrap()
}

fn message_json(line: &QueuedLine) -> Value {
    serde_json::from_str(&request_builder::message(line)).unwrap()
}

// ---- encoding ----

#[test]
fn a_message_is_a_json_object_with_the_line_and_its_stream() {
    let out = line(0, b"hello \"world\"");
    assert_eq!(
        request_builder::message(&out),
        r#"{"message":"hello \"world\"","stream":"stdout"}"#
    );
    let mut err = line(1, b"Traceback (most recent call last):");
    err.line.stream = StreamKind::Stderr as i32;
    assert_eq!(
        message_json(&err),
        json!({"message": "Traceback (most recent call last):", "stream": "stderr"})
    );
    // An empty line still makes a non-empty message (CloudWatch refuses
    // empty ones).
    assert_eq!(
        request_builder::message(&line(2, b"")),
        r#"{"message":"","stream":"stdout"}"#
    );
}

/// The general path the hand-written message must match byte for byte.
#[derive(serde::Serialize)]
struct ReferenceMessage<'a> {
    message: std::borrow::Cow<'a, str>,
    stream: &'static str,
    #[serde(skip_serializing_if = "crate::sinks::text::Attributes::is_empty")]
    logdrain: crate::sinks::text::Attributes,
}

#[test]
fn the_hand_written_message_is_byte_for_byte_what_serde_json_writes() {
    let mut data = crate::sinks::text::awkward_texts();
    data.extend([
        vec![b'a'; 5_000],
        vec![b'b'; 1_100_000],
        vec![0x01u8; 200_000],
        Vec::new(),
    ]);
    for (i, data) in data.iter().enumerate() {
        let mut l = line(i as u32, data);
        match i % 4 {
            1 => l.line.more_parts = true,
            2 => l.line.origin = Origin::Shim as i32,
            3 => l.line.stream = StreamKind::Stderr as i32,
            _ => {}
        }
        let reference = serde_json::to_string(&ReferenceMessage {
            message: request_builder::line_text(&l.line.data),
            stream: l.line.stream().name(),
            logdrain: crate::sinks::text::Attributes::of(&l.line),
        })
        .unwrap();
        let message = request_builder::message(&l);
        assert!(message == reference, "line {i} differs");
        assert_eq!(
            request_builder::event_size(&l),
            reference.len() + EVENT_OVERHEAD
        );
    }
}

#[test]
fn pieces_of_split_lines_and_shim_lines_say_so_under_logdrain() {
    let mut piece = line(0, b"abc");
    piece.line.part = 2;
    piece.line.more_parts = true;
    assert_eq!(
        message_json(&piece),
        json!({"message": "abc", "stream": "stdout",
               "logdrain": {"part": 2, "more_parts": true}})
    );
    let mut shim = line(1, b"agent exited with code 1");
    shim.line.origin = Origin::Shim as i32;
    assert_eq!(message_json(&shim)["logdrain"], json!({"origin": "shim"}));
}

#[test]
fn a_line_sent_with_the_time_of_sending_keeps_its_own_time_in_milliseconds() {
    let mut late = line(0, b"from the backlog");
    late.original_timestamp_ns = Some(T0_NS - 15 * 24 * HOUR_NS);
    let own_ms = (T0_NS - 15 * 24 * HOUR_NS) / 1_000_000;
    assert_eq!(
        message_json(&late),
        json!({"message": "from the backlog", "stream": "stdout",
               "logdrain": {"original_timestamp": own_ms}})
    );
    assert_eq!(
        request_builder::event_size(&late),
        request_builder::message(&late).len() + EVENT_OVERHEAD
    );
}

#[test]
fn bytes_that_are_not_utf8_become_replacement_characters() {
    let v = message_json(&line(0, b"caf\xe9 ok"));
    assert_eq!(v["message"], "caf\u{fffd} ok");
}

#[test]
fn timestamps_are_milliseconds_of_the_line() {
    let event = Event::of(&line(0, b"x"));
    assert_eq!(event.timestamp_ms, 1_700_000_000_123);
    let before_epoch = queued(1, "r", -1_500_000, b"x");
    assert_eq!(Event::of(&before_epoch).timestamp_ms, -2);
}

#[test]
fn event_size_is_the_message_bytes_plus_26() {
    for data in [&b"x"[..], b"", "é\t\"\\ é".as_bytes(), b"\x01\x02"] {
        let l = line(0, data);
        assert_eq!(
            request_builder::event_size(&l),
            request_builder::message(&l).len() + EVENT_OVERHEAD
        );
        assert_eq!(request_builder::event_size(&l), Event::of(&l).size());
    }
}

#[test]
fn an_over_size_line_is_cut_with_a_visible_marker_never_dropped() {
    let long = vec![b'a'; 2_500_000];
    let controls = vec![0x01u8; 400_000]; // six bytes each once escaped
    for data in [long, controls] {
        let l = line(0, &data);
        let size = request_builder::event_size(&l);
        assert!(size <= MAX_EVENT_BYTES, "{size}");
        assert!(size > MAX_EVENT_BYTES - 10_000, "cut far too short: {size}");
        let v = message_json(&l);
        let text = v["message"].as_str().unwrap();
        let marker = format!("…[truncated by logdrain: {} bytes]", data.len());
        assert!(text.ends_with(&marker), "no marker");
        assert_eq!(v["stream"], "stdout");
    }
}

// ---- batching by the engine with this sink's limits ----

/// Cuts every batch a worker would cut from `lines` with the sink's limits.
fn batches(sink: &CloudWatchSink, lines: Vec<QueuedLine>) -> Vec<usize> {
    let limits = sink.limits();
    let mut pending = Pending::new();
    let now = Instant::now();
    for l in lines {
        let size = sink.event_size(&l);
        pending.push(l, size, now);
    }
    let mut out = Vec::new();
    while !pending.is_empty() {
        out.push(pending.take_batch(&limits).len());
    }
    out
}

#[test]
fn batches_count_26_bytes_per_event_against_1_mib() {
    let s = sink(None);
    // `{"message":"` + k bytes + `","stream":"stdout"}` is k + 32 bytes;
    // plus 26 makes 65,536: exactly 16 events fill 1,048,576 bytes.
    let k = 65_536 - 32 - EVENT_OVERHEAD;
    let fits: Vec<QueuedLine> = (0..40).map(|i| line(i, &vec![b'x'; k])).collect();
    assert_eq!(s.event_size(&fits[0]), 65_536);
    assert_eq!(batches(&s, fits), [16, 16, 8]);
    // One byte more per line and only 15 fit.
    let over: Vec<QueuedLine> = (0..40).map(|i| line(i, &vec![b'x'; k + 1])).collect();
    assert_eq!(batches(&s, over), [15, 15, 10]);
}

#[test]
fn batches_hold_at_most_10000_events() {
    let s = sink(None);
    let lines = (0..25_000).map(|i| line(i, b"short")).collect();
    assert_eq!(batches(&s, lines), [10_000, 10_000, 5_000]);
}

#[test]
fn truncated_events_fit_a_request_but_never_two_share_one() {
    let s = sink(None);
    let big = |i| line(i, &vec![b'y'; 3_000_000]);
    assert!(s.event_size(&big(0)) <= s.limits().max_bytes);
    assert_eq!(batches(&s, vec![big(0), big(1), big(2)]), [1, 1, 1]);
}

// ---- puts: streams, order, span ----

fn stamps(put: &[Event]) -> Vec<i64> {
    put.iter().map(|e| e.timestamp_ms).collect()
}

#[test]
fn each_log_stream_gets_its_own_puts_in_order_of_first_appearance() {
    let lines = [
        queued(0, "server-b", T0_NS, b"b0"),
        queued(1, "server-a", T0_NS, b"a0"),
        queued(2, "server-b", T0_NS, b"b1"),
    ];
    let plans = request_builder::plan(&lines);
    let streams: Vec<&str> = plans.iter().map(|p| &*p.stream).collect();
    assert_eq!(streams, ["server-b", "server-a"]);
    let cursors: Vec<u32> = plans[0].puts[0].iter().map(|e| e.cursor.index).collect();
    assert_eq!(cursors, [0, 2]);
}

#[test]
fn events_are_sorted_by_time_and_ties_keep_queue_order() {
    let ms = 1_000_000;
    let lines = [
        queued(0, "r", T0_NS + 5 * ms, b"late"),
        queued(1, "r", T0_NS, b"first"),
        queued(2, "r", T0_NS + 5 * ms, b"late too"),
        queued(3, "r", T0_NS - 3 * ms, b"earliest"),
    ];
    let plans = request_builder::plan(&lines);
    let put = &plans[0].puts[0];
    let order: Vec<u32> = put.iter().map(|e| e.cursor.index).collect();
    assert_eq!(order, [3, 1, 0, 2]);
    assert!(stamps(put).windows(2).all(|w| w[0] <= w[1]));
}

#[test]
fn a_batch_spanning_24_hours_or_more_is_split() {
    let lines = [
        queued(0, "r", T0_NS, b"t0"),
        queued(1, "r", T0_NS + 23 * HOUR_NS, b"t0+23h"),
        queued(2, "r", T0_NS + 24 * HOUR_NS, b"t0+24h"),
        queued(3, "r", T0_NS + 30 * HOUR_NS, b"t0+30h"),
        queued(4, "r", T0_NS + 49 * HOUR_NS, b"t0+49h"),
    ];
    let plans = request_builder::plan(&lines);
    let sizes: Vec<usize> = plans[0].puts.iter().map(Vec::len).collect();
    assert_eq!(sizes, [2, 2, 1]);
    for put in &plans[0].puts {
        let span = put.last().unwrap().timestamp_ms - put[0].timestamp_ms;
        assert!(span < MAX_SPAN_MS, "{span}");
    }
}

#[test]
fn puts_never_break_the_count_or_byte_limits_even_for_oversized_input() {
    let events: Vec<Event> = (0..25_000).map(|i| Event::of(&line(i, b"tiny"))).collect();
    let puts = request_builder::chunk(events);
    assert_eq!(
        puts.iter().map(Vec::len).collect::<Vec<_>>(),
        [MAX_EVENTS, MAX_EVENTS, 5_000]
    );
    let big: Vec<Event> = (0..5)
        .map(|i| Event::of(&line(i, &vec![b'z'; 400_000])))
        .collect();
    for put in request_builder::chunk(big) {
        let bytes: usize = put.iter().map(Event::size).sum();
        assert!(bytes <= MAX_BATCH_BYTES, "{bytes}");
    }
}

// ---- outcome and memo ----

#[test]
fn refused_events_are_counted_with_their_reasons() {
    let mut tally = Tally::default();
    for v in [
        Verdict::Stored,
        Verdict::TooNew,
        Verdict::TooOld,
        Verdict::TooOld,
        Verdict::Expired,
    ] {
        tally.add(v);
    }
    let outcome = tally.outcome();
    assert_eq!(outcome.rejected, 4);
    assert_eq!(
        outcome.rejected_reason.as_deref(),
        Some(
            "CloudWatch Logs refused events for their timestamps: 1 more than 2 h in the future, \
             2 more than 14 days old, 1 older than the log group's retention"
        )
    );
    assert_eq!(Tally::default().outcome(), SendOutcome::accepted());
}

#[test]
fn lines_already_taken_are_skipped_until_their_send_succeeds() {
    let memo = Accepted::new();
    let lines = [line(0, b"a"), line(1, b"b"), line(2, b"c")];
    memo.remember(&[
        (lines[0].cursor, Verdict::Stored),
        (lines[1].cursor, Verdict::TooOld),
        (lines[2].cursor, Verdict::Restamped(late::Reason::Expired)),
    ]);
    // A refused event is not remembered: the resend sends it again.
    let (to_send, tally) = memo.split(&lines);
    assert_eq!(to_send.len(), 1);
    assert_eq!(to_send[0].cursor, lines[1].cursor);
    assert_eq!((tally.stored, tally.restamped.expired), (2, 1));
    memo.forget(&lines);
    assert!(memo.is_empty());
}

#[test]
fn the_memo_is_bounded_and_overflow_only_forgets() {
    let memo = Accepted::new();
    let taken: Vec<(Cursor, Verdict)> = (0..outcome::MEMO_MAX_LINES as u32)
        .map(|index| (Cursor { segment: 1, index }, Verdict::Stored))
        .collect();
    memo.remember(&taken);
    assert_eq!(memo.len(), outcome::MEMO_MAX_LINES);
    memo.remember(&[(
        Cursor {
            segment: 2,
            index: 0,
        },
        Verdict::Stored,
    )]);
    assert_eq!(memo.len(), 1);
}

// ---- the sink as built by the factory ----

#[test]
fn the_factory_builds_a_sink_with_the_routes_group_and_the_vendors_limits() {
    let settings = SinkSettings::default();
    let built = build_sink(
        &route(),
        &secrets(),
        &settings,
        &HttpClients::new(&SinkSettings::default()).unwrap(),
    )
    .unwrap();
    assert_eq!(built.kind(), DestinationKind::CloudWatch);
    assert_eq!(built.limits().max_events, 10_000);
    assert_eq!(built.limits().max_bytes, 1_048_576);
    let s = sink(None);
    assert_eq!(s.log_group(), "livekit/agent-42");
    assert_eq!(s.region(), "us-west-2");
}

#[test]
fn an_invalid_region_keeps_the_route_from_building() {
    let mut bad = secrets();
    bad.0.insert("AWS_REGION".into(), "mars-1".into());
    let settings = SinkSettings::default();
    let err = match build_sink(
        &route(),
        &bad,
        &settings,
        &HttpClients::new(&SinkSettings::default()).unwrap(),
    ) {
        Err(e) => e,
        Ok(_) => panic!("mars-1 must be refused"),
    };
    assert!(
        err.to_string()
            .starts_with("AWS_REGION is not an AWS region name"),
        "{err}"
    );
}

#[test]
fn debug_of_the_sink_never_shows_a_key() {
    let debug = format!("{:?}", sink(None));
    assert!(!debug.contains(KEY_ID), "{debug}");
    assert!(!debug.contains(SECRET), "{debug}");
    assert!(debug.contains("livekit/agent-42"), "{debug}");
}

#[tokio::test]
async fn an_unreachable_endpoint_is_retryable_and_the_reason_shows_no_key() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let s = sink(Some(Url::parse(&format!("http://{addr}")).unwrap()));
    match s.send(&[line(0, b"x")]).await {
        Err(SinkError::Retryable { reason, .. }) => {
            assert!(!reason.contains(KEY_ID), "{reason}");
            assert!(!reason.contains(SECRET), "{reason}");
            assert!(reason.starts_with("CloudWatch Logs"), "{reason}");
        }
        other => panic!("{other:?}"),
    }
}

// ---- real SDK requests against a fake CloudWatch ----

/// One request the fake received: the operation and its JSON body.
#[derive(Clone, Debug)]
struct Call {
    operation: String,
    body: Value,
    authorization: String,
    security_token: Option<String>,
}

/// How the fake answers one call: status and JSON body.
type Answer = (StatusCode, Value);

/// Decides the answer to a call, given how many calls of its operation
/// were received so far (this one included).
type Answerer = Arc<dyn Fn(&Call, usize) -> Answer + Send + Sync>;

#[derive(Clone)]
struct Fake {
    calls: Arc<Mutex<Vec<Call>>>,
    answer: Answerer,
}

async fn handle(State(fake): State<Fake>, headers: HeaderMap, body: Body) -> impl IntoResponse {
    let target = headers
        .get("x-amz-target")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let call = Call {
        operation: target.rsplit('.').next().unwrap_or_default().to_string(),
        body: serde_json::from_slice(&body).unwrap_or(Value::Null),
        authorization: header("authorization").unwrap_or_default(),
        security_token: header("x-amz-security-token"),
    };
    let seen = {
        let mut calls = fake.calls.lock().unwrap();
        calls.push(call.clone());
        calls
            .iter()
            .filter(|c| c.operation == call.operation)
            .count()
    };
    let (status, body) = (fake.answer)(&call, seen);
    (
        status,
        [("content-type", "application/x-amz-json-1.1")],
        body.to_string(),
    )
}

fn error(code: &str, message: &str) -> Answer {
    (
        StatusCode::BAD_REQUEST,
        json!({"__type": code, "message": message}),
    )
}

/// Starts a fake CloudWatch on port 0; `answer` gets each call and how many
/// calls of its operation were received so far (this one included).
async fn fake(
    answer: impl Fn(&Call, usize) -> Answer + Send + Sync + 'static,
) -> (Url, Arc<Mutex<Vec<Call>>>) {
    let calls = Arc::new(Mutex::new(Vec::new()));
    let state = Fake {
        calls: Arc::clone(&calls),
        answer: Arc::new(answer),
    };
    let app = axum::Router::new().fallback(handle).with_state(state);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr: SocketAddr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (Url::parse(&format!("http://{addr}")).unwrap(), calls)
}

fn ok() -> Answer {
    (StatusCode::OK, json!({}))
}

fn operations(calls: &Mutex<Vec<Call>>) -> Vec<String> {
    calls
        .lock()
        .unwrap()
        .iter()
        .map(|c| c.operation.clone())
        .collect()
}

#[tokio::test]
async fn each_named_exception_is_classified_from_a_real_sdk_answer() {
    let cases = [
        ("ThrottlingException", "retryable"),
        ("ServiceUnavailableException", "retryable"),
        ("AccessDeniedException", "credentials_rejected"),
        ("UnrecognizedClientException", "credentials_rejected"),
        ("InvalidSignatureException", "credentials_rejected"),
        ("ExpiredTokenException", "credentials_rejected"),
        ("InvalidParameterException", "permanent"),
    ];
    for (code, class) in cases {
        let (url, _) = fake(move |call, _| match call.operation.as_str() {
            "PutLogEvents" => error(code, "answered by the fake"),
            _ => ok(),
        })
        .await;
        let result = sink(Some(url)).send(&[line(0, b"x")]).await;
        match result {
            Err(e) => {
                assert_eq!(e.class(), class, "{code}: {e}");
                assert!(e.to_string().contains(code), "{e}");
            }
            Ok(o) => panic!("{code} was accepted: {o:?}"),
        }
    }
}

#[tokio::test]
async fn a_new_stream_is_created_once_then_only_put_to() {
    let (url, calls) = fake(|_, _| ok()).await;
    let s = sink(Some(url));
    s.send(&[line(0, b"one")]).await.unwrap();
    s.send(&[line(1, b"two")]).await.unwrap();
    assert_eq!(
        operations(&calls),
        ["CreateLogStream", "PutLogEvents", "PutLogEvents"]
    );
    let calls = calls.lock().unwrap();
    assert_eq!(calls[1].body["logGroupName"], "livekit/agent-42");
    assert_eq!(calls[1].body["logStreamName"], "replica-7");
    let events = &calls[1].body["logEvents"];
    assert_eq!(events[0]["timestamp"], 1_700_000_000_123i64);
    assert_eq!(
        events[0]["message"],
        r#"{"message":"one","stream":"stdout"}"#
    );
}

#[tokio::test]
async fn a_missing_group_is_created_before_the_stream() {
    let (url, calls) = fake(|call, seen| match (call.operation.as_str(), seen) {
        ("CreateLogStream", 1) => error("ResourceNotFoundException", "group missing"),
        ("CreateLogGroup", _) => error("ResourceAlreadyExistsException", "raced"),
        _ => ok(),
    })
    .await;
    sink(Some(url)).send(&[line(0, b"x")]).await.unwrap();
    assert_eq!(
        operations(&calls),
        [
            "CreateLogStream",
            "CreateLogGroup",
            "CreateLogStream",
            "PutLogEvents"
        ]
    );
}

#[tokio::test]
async fn a_put_to_a_deleted_stream_recreates_it_and_puts_once_more() {
    let (url, calls) = fake(|call, seen| match (call.operation.as_str(), seen) {
        ("PutLogEvents", 2) => error("ResourceNotFoundException", "stream deleted"),
        ("CreateLogStream", 2) => ok(),
        _ => ok(),
    })
    .await;
    let s = sink(Some(url));
    s.send(&[line(0, b"one")]).await.unwrap();
    s.send(&[line(1, b"two")]).await.unwrap();
    assert_eq!(
        operations(&calls),
        [
            "CreateLogStream",
            "PutLogEvents",
            "PutLogEvents",
            "CreateLogStream",
            "PutLogEvents"
        ]
    );
}

#[tokio::test]
async fn a_stream_still_missing_after_creation_is_retryable_not_a_loop() {
    let (url, calls) = fake(|call, _| match call.operation.as_str() {
        "PutLogEvents" => error("ResourceNotFoundException", "still missing"),
        _ => ok(),
    })
    .await;
    let result = sink(Some(url)).send(&[line(0, b"x")]).await;
    assert!(
        matches!(result, Err(SinkError::Retryable { .. })),
        "{result:?}"
    );
    let puts = operations(&calls)
        .iter()
        .filter(|o| *o == "PutLogEvents")
        .count();
    assert_eq!(puts, 2);
}

/// The events of the `n`th PutLogEvents call: (timestamp ms, message).
fn put_events(calls: &Mutex<Vec<Call>>, n: usize) -> Vec<(i64, Value)> {
    let calls = calls.lock().unwrap();
    let put = calls
        .iter()
        .filter(|c| c.operation == "PutLogEvents")
        .nth(n)
        .unwrap_or_else(|| panic!("no PutLogEvents call {n}"));
    put.body["logEvents"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            let message = serde_json::from_str(e["message"].as_str().unwrap()).unwrap();
            (e["timestamp"].as_i64().unwrap(), message)
        })
        .collect()
}

/// A canned PutLogEvents answer read by the real SDK: the end indexes are
/// exclusive and the too-new start inclusive, as AWS documents (moto reads
/// the ends as inclusive, so its tests cannot pin this). The refused events
/// are sent once more with the time of sending and counted as re-stamped.
#[tokio::test]
async fn refused_events_are_found_by_aws_documented_index_semantics_and_sent_again_restamped() {
    let (url, calls) = fake(|call, n| match call.operation.as_str() {
        "PutLogEvents" if n == 1 => (
            StatusCode::OK,
            json!({
                "nextSequenceToken": "49039859",
                "rejectedLogEventsInfo": {
                    "expiredLogEventEndIndex": 1,
                    "tooOldLogEventEndIndex": 2,
                    "tooNewLogEventStartIndex": 4
                }
            }),
        ),
        _ => ok(),
    })
    .await;
    let lines: Vec<QueuedLine> = (0..6u8)
        .map(|i| queued(u32::from(i), "replica-7", T0_NS + i64::from(i), &[b'a' + i]))
        .collect();
    let before_ms = late::unix_nanos(std::time::SystemTime::now()) / 1_000_000;
    let outcome = sink(Some(url)).send(&lines).await.unwrap();
    // 0 expired, 1 too old, 2 and 3 stored, 4 and 5 too new: none dropped.
    assert_eq!(outcome.rejected, 0, "{outcome:?}");
    assert_eq!(
        outcome.restamped,
        late::Restamps {
            too_old: 1,
            too_new: 2,
            expired: 1
        }
    );
    let again = put_events(&calls, 1);
    let messages: Vec<&str> = again
        .iter()
        .map(|(_, m)| m["message"].as_str().unwrap())
        .collect();
    assert_eq!(messages, ["a", "b", "e", "f"]);
    for ((timestamp, message), own) in again.iter().zip([0, 1, 4, 5]) {
        assert!(*timestamp >= before_ms, "{timestamp} < {before_ms}");
        assert_eq!(
            message["logdrain"]["original_timestamp"],
            (T0_NS + own) / 1_000_000,
            "{message}"
        );
    }
}

/// A group whose retention (say 3 days) is shorter than CloudWatch's 14
/// days refuses a 5-day-old line as expired: it arrives with the time of
/// sending, its own time kept, and is counted as re-stamped, not dropped.
#[tokio::test]
async fn lines_older_than_the_groups_retention_arrive_restamped_not_dropped() {
    let (url, calls) = fake(|call, _| match call.operation.as_str() {
        // Each put's events are older than the group keeps until re-stamped.
        "PutLogEvents"
            if call.body["logEvents"][0]["timestamp"].as_i64() < Some(T0_NS / 1_000_000 + 1) =>
        {
            (
                StatusCode::OK,
                json!({"rejectedLogEventsInfo": {"expiredLogEventEndIndex": 2}}),
            )
        }
        _ => ok(),
    })
    .await;
    let lines = [line(0, b"old-0"), line(1, b"old-1")];
    let outcome = sink(Some(url)).send(&lines).await.unwrap();
    assert_eq!((outcome.rejected, outcome.restamped.expired), (0, 2));
    assert_eq!(put_events(&calls, 1).len(), 2);
    assert_eq!(
        late::Restamps {
            expired: 2,
            ..late::Restamps::default()
        }
        .notice("cloudwatch", MAX_AGE),
        "logdrain: 2 lines were sent with the time of sending (2 refused by cloudwatch as older \
         than what the destination keeps); each keeps its own time in logdrain.original_timestamp"
    );
}

/// Refused again at the time of sending (the clock is far off), an event is
/// counted as dropped with CloudWatch's reason: never silently lost, never
/// sent in a loop.
#[tokio::test]
async fn events_refused_again_after_restamping_are_counted_as_dropped() {
    let (url, calls) = fake(|call, _| match call.operation.as_str() {
        "PutLogEvents" => (
            StatusCode::OK,
            json!({"rejectedLogEventsInfo": {"tooNewLogEventStartIndex": 0}}),
        ),
        _ => ok(),
    })
    .await;
    let outcome = sink(Some(url)).send(&[line(0, b"x")]).await.unwrap();
    assert_eq!(outcome.rejected, 1);
    assert!(outcome.restamped.is_empty());
    assert_eq!(
        outcome.rejected_reason.as_deref(),
        Some("CloudWatch Logs refused events for their timestamps: 1 more than 2 h in the future")
    );
    assert_eq!(
        operations(&calls)
            .iter()
            .filter(|o| *o == "PutLogEvents")
            .count(),
        2
    );
}

#[tokio::test]
async fn after_a_partial_failure_the_resend_skips_streams_already_taken() {
    // server-b's first put is throttled; everything else is accepted.
    let throttled = Arc::new(AtomicBool::new(false));
    let (url, calls) = fake(move |call, _| {
        let to_b = call.operation == "PutLogEvents" && call.body["logStreamName"] == "server-b";
        if to_b && !throttled.swap(true, Ordering::SeqCst) {
            return error("ThrottlingException", "Rate exceeded");
        }
        ok()
    })
    .await;
    let s = sink(Some(url));
    let batch = [
        queued(0, "server-a", T0_NS, b"a0"),
        queued(1, "server-b", T0_NS, b"b0"),
        queued(2, "server-a", T0_NS, b"a1"),
    ];
    let first = s.send(&batch).await;
    assert!(
        matches!(first, Err(SinkError::Retryable { .. })),
        "{first:?}"
    );
    // The engine sends the same lines again.
    s.send(&batch).await.unwrap();

    let calls = calls.lock().unwrap();
    let puts: Vec<(String, usize)> = calls
        .iter()
        .filter(|c| c.operation == "PutLogEvents")
        .map(|c| {
            (
                c.body["logStreamName"].as_str().unwrap().to_string(),
                c.body["logEvents"].as_array().unwrap().len(),
            )
        })
        .collect();
    let to_a: usize = puts
        .iter()
        .filter(|(s, _)| s == "server-a")
        .map(|(_, n)| n)
        .sum();
    let to_b: Vec<usize> = puts
        .iter()
        .filter(|(s, _)| s == "server-b")
        .map(|(_, n)| *n)
        .collect();
    assert_eq!(to_a, 2, "server-a's lines were sent twice: {puts:?}");
    assert_eq!(to_b, [1, 1], "{puts:?}");
    assert!(s.accepted.is_empty());
}

#[tokio::test]
async fn refused_credentials_outrank_other_failures_of_a_send() {
    let (url, _) = fake(|call, _| match call.operation.as_str() {
        "PutLogEvents" if call.body["logStreamName"] == "server-a" => {
            error("ThrottlingException", "slow down")
        }
        "PutLogEvents" => error("AccessDeniedException", "not authorized"),
        _ => ok(),
    })
    .await;
    let batch = [
        queued(0, "server-a", T0_NS, b"a0"),
        queued(1, "server-b", T0_NS, b"b0"),
    ];
    let result = sink(Some(url)).send(&batch).await;
    assert!(
        matches!(result, Err(SinkError::Unauthorized { .. })),
        "{result:?}"
    );
}

#[tokio::test]
async fn requests_are_signed_with_the_routes_key_region_and_session_token() {
    let (url, calls) = fake(|_, _| ok()).await;
    let mut route_secrets = secrets();
    route_secrets
        .0
        .insert("AWS_SESSION_TOKEN".into(), "routeSessionToken".into());
    route_secrets
        .0
        .insert("AWS_REGION".into(), "eu-central-1".into());
    let settings = SinkSettings {
        cloudwatch_url: Some(url),
        ..SinkSettings::default()
    };
    let built = build_sink(
        &route(),
        &route_secrets,
        &settings,
        &HttpClients::new(&SinkSettings::default()).unwrap(),
    )
    .unwrap();
    built.send(&[line(0, b"x")]).await.unwrap();

    let calls = calls.lock().unwrap();
    assert!(!calls.is_empty());
    for call in calls.iter() {
        // AWS4-HMAC-SHA256 Credential=<key id>/<date>/<region>/logs/aws4_request, ...
        let credential = call
            .authorization
            .split("Credential=")
            .nth(1)
            .and_then(|rest| rest.split(',').next())
            .unwrap_or_else(|| panic!("not signed: {:?}", call.authorization));
        let scope: Vec<&str> = credential.split('/').collect();
        assert_eq!(scope[0], KEY_ID, "{credential}");
        assert_eq!(scope[2..], ["eu-central-1", "logs", "aws4_request"]);
        assert_eq!(call.security_token.as_deref(), Some("routeSessionToken"));
        assert!(!call.authorization.contains(SECRET));
    }
}
