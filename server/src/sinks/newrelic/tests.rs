//! New Relic sink: endpoint choice, the request body per the contract,
//! batching within the gzipped POST limit, and real HTTP requests against
//! the test intake.

use std::io::Read;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use flate2::read::GzDecoder;
use logdrain::v1::{Line, Origin, StreamKind};
use logdrain_test_intake::{
    AuthForm, Fault, Intake, IntakeConfig, NewRelicConfig, NewRelicLimits, Vendor,
};
use serde_json::{json, Value};
use tokio::time::Instant;
use url::Url;

use super::request_builder::{self, Encoded, MAX_JSON_BYTES, MAX_MESSAGE_BYTES, MAX_POST_BYTES};
use super::*;
use crate::queue::Cursor;
use crate::sinks::engine::batch::Pending;
use crate::sinks::{build_sink, HttpClients, SinkFactory};

const US_KEY: &str = "0123456789abcdef0123456789abcdef0123NRAL";
const EU_KEY: &str = "eu01xx6789abcdef0123456789abcdef0123NRAL";
const AGENT: &str = "agent-42";

fn queued(index: u32, data: &[u8]) -> QueuedLine {
    on("replica-7", StreamKind::Stdout, index, data)
}

fn on(host: &str, stream: StreamKind, index: u32, data: &[u8]) -> QueuedLine {
    QueuedLine {
        cursor: Cursor { segment: 7, index },
        agent_server_id: Arc::from(host),
        line: Line {
            timestamp_ns: 1_700_000_000_123_456_789 + i64::from(index) * 1_000_000,
            stream: stream as i32,
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
        agent_id: AGENT.into(),
        kind: DestinationKind::NewRelic,
        cred_id: "c".into(),
    }
}

fn secrets(key: &str) -> Secrets {
    Secrets([("NEW_RELIC_LICENSE_KEY".to_string(), key.to_string())].into())
}

fn sink(key: &str, base: Option<Url>) -> NewRelicSink {
    let settings = SinkSettings {
        newrelic_url: base,
        ..SinkSettings::default()
    };
    NewRelicSink::new(&route(), &secrets(key), &settings, &reqwest::Client::new()).unwrap()
}

fn gunzip(body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    GzDecoder::new(body).read_to_end(&mut out).unwrap();
    out
}

fn encode(lines: &[QueuedLine]) -> Encoded {
    request_builder::encode(AGENT, lines).unwrap()
}

/// The body of `lines`, gunzipped and parsed.
fn decode(lines: &[QueuedLine]) -> Value {
    let encoded = encode(lines);
    let json = gunzip(&encoded.body);
    assert_eq!(json.len(), encoded.json_bytes);
    serde_json::from_slice(&json).unwrap()
}

/// The one log object of a one-line body.
fn only_log(line: QueuedLine) -> Value {
    decode(&[line])[0]["logs"][0].clone()
}

/// Printable ASCII that gzip can barely compress (xorshift, fixed seed).
fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed | 1;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            b'!' + (state % 90) as u8
        })
        .collect()
}

// ---- endpoint ----

#[test]
fn a_us_license_key_goes_to_the_us_log_api() {
    assert_eq!(
        sink(US_KEY, None).url().as_str(),
        "https://log-api.newrelic.com/log/v1"
    );
}

#[test]
fn an_eu_license_key_goes_to_the_eu_log_api() {
    assert_eq!(
        sink(EU_KEY, None).url().as_str(),
        "https://log-api.eu.newrelic.com/log/v1"
    );
}

#[test]
fn the_url_override_wins_over_the_keys_region_and_keeps_the_path() {
    let base = Url::parse("http://127.0.0.1:8123/other").unwrap();
    for key in [US_KEY, EU_KEY] {
        assert_eq!(
            sink(key, Some(base.clone())).url().as_str(),
            "http://127.0.0.1:8123/log/v1"
        );
    }
}

#[test]
fn a_newrelic_url_override_without_a_host_is_refused() {
    let settings = SinkSettings {
        newrelic_url: Some(Url::parse("mailto:ops@example.com").unwrap()),
        ..SinkSettings::default()
    };
    let err = SinkFactory::new(settings).unwrap_err();
    assert!(err.to_string().contains("--newrelic-url"), "{err}");
}

#[test]
fn a_new_relic_route_builds_a_new_relic_sink_with_its_limits() {
    let built = build_sink(
        &route(),
        &secrets(US_KEY),
        &SinkSettings::default(),
        &HttpClients::new(&SinkSettings::default()).unwrap(),
    )
    .unwrap();
    assert_eq!(built.kind(), DestinationKind::NewRelic);
    assert_eq!(built.limits().max_bytes, MAX_JSON_BYTES);
}

#[test]
fn an_invalid_license_key_is_a_secret_error_that_never_shows_it() {
    let err = NewRelicSink::new(
        &route(),
        &secrets("abc def-secret"),
        &SinkSettings::default(),
        &reqwest::Client::new(),
    )
    .unwrap_err();
    let text = err.to_string();
    assert!(
        text.starts_with("NEW_RELIC_LICENSE_KEY cannot be used"),
        "{text}"
    );
    assert!(!text.contains("def-secret"), "{text}");
}

#[test]
fn debug_of_the_sink_never_shows_the_license_key() {
    for key in [US_KEY, EU_KEY] {
        let debug = format!("{:?}", sink(key, None));
        assert!(!debug.contains(key), "{debug}");
    }
}

// ---- body ----

#[test]
fn the_body_is_the_detailed_form_with_exactly_the_contract_fields() {
    let body = decode(&[
        queued(0, b"hello world"),
        queued(1, b"WARN disk almost full"),
    ]);
    assert_eq!(
        body,
        json!([{
            "common": {"attributes": {
                "hostname": "replica-7",
                "service_name": "agent-42",
                "source": "cloud.livekit.io",
                "stream": "stdout",
            }},
            "logs": [
                {"timestamp": 1_700_000_000_123_i64, "message": "hello world",
                 "attributes": {"level": "info"}},
                {"timestamp": 1_700_000_000_124_i64, "message": "WARN disk almost full",
                 "attributes": {"level": "warn"}},
            ],
        }])
    );
}

#[test]
fn lines_are_grouped_by_host_and_stream_in_order_of_first_appearance() {
    let lines = [
        on("r1", StreamKind::Stdout, 0, b"a"),
        on("r2", StreamKind::Stdout, 1, b"b"),
        on("r1", StreamKind::Stderr, 2, b"c"),
        on("r1", StreamKind::Stdout, 3, b"d"),
        on("r2", StreamKind::Stdout, 4, b"e"),
        on("r1", StreamKind::Unspecified, 5, b"f"),
    ];
    let body = decode(&lines);
    let blocks: Vec<(String, String, Vec<String>)> = body
        .as_array()
        .unwrap()
        .iter()
        .map(|block| {
            let common = &block["common"]["attributes"];
            assert_eq!(common["service_name"], AGENT);
            assert_eq!(common["source"], "cloud.livekit.io");
            let messages = block["logs"]
                .as_array()
                .unwrap()
                .iter()
                .map(|log| log["message"].as_str().unwrap().to_string())
                .collect();
            (
                common["hostname"].as_str().unwrap().to_string(),
                common["stream"].as_str().unwrap().to_string(),
                messages,
            )
        })
        .collect();
    let expected = |host: &str, stream: &str, messages: &[&str]| {
        (
            host.to_string(),
            stream.to_string(),
            messages.iter().map(|m| m.to_string()).collect::<Vec<_>>(),
        )
    };
    assert_eq!(
        blocks,
        [
            expected("r1", "stdout", &["a", "d", "f"]),
            expected("r2", "stdout", &["b", "e"]),
            expected("r1", "stderr", &["c"]),
        ]
    );
    assert_eq!(encode(&lines).blocks, 3);
}

#[test]
fn stderr_lines_are_errors_only_when_the_line_names_no_level() {
    let named = on("r", StreamKind::Stderr, 0, b"INFO connected to room");
    let unnamed = on(
        "r",
        StreamKind::Stderr,
        1,
        b"Traceback (most recent call last):",
    );
    let body = decode(&[named, unnamed]);
    let logs = &body[0]["logs"];
    assert_eq!(body[0]["common"]["attributes"]["stream"], "stderr");
    assert_eq!(logs[0]["attributes"]["level"], "info");
    assert_eq!(logs[1]["attributes"]["level"], "error");
}

#[test]
fn pieces_of_a_split_line_carry_their_part_and_nothing_is_added_to_the_message() {
    let mut first = queued(0, b"aaaa");
    first.line.more_parts = true;
    let mut last = queued(1, b"bbbb");
    last.line.part = 1;
    let body = decode(&[first, last]);
    let logs = &body[0]["logs"];
    assert_eq!(logs[0]["message"], "aaaa");
    assert_eq!(
        logs[0]["attributes"],
        json!({"level": "info", "logdrain.part": 0, "logdrain.more_parts": true})
    );
    assert_eq!(logs[1]["message"], "bbbb");
    assert_eq!(
        logs[1]["attributes"],
        json!({"level": "info", "logdrain.part": 1, "logdrain.more_parts": false})
    );
}

#[test]
fn only_shim_lines_carry_an_origin() {
    let mut shim = queued(0, b"agent exited with status 1");
    shim.line.origin = Origin::Shim as i32;
    let body = decode(&[shim, queued(1, b"agent line")]);
    let logs = &body[0]["logs"];
    assert_eq!(
        logs[0]["attributes"],
        json!({"level": "info", "logdrain.origin": "shim"})
    );
    assert_eq!(logs[1]["attributes"], json!({"level": "info"}));
}

#[test]
fn bytes_that_are_not_utf8_become_replacement_characters() {
    let log = only_log(queued(0, b"caf\xe9 \xff ok"));
    assert_eq!(log["message"], "caf\u{fffd} \u{fffd} ok");
}

#[test]
fn timestamps_are_milliseconds_rounded_down_even_before_the_epoch() {
    let mut line = queued(0, b"x");
    line.line.timestamp_ns = -1_500_000;
    assert_eq!(only_log(line)["timestamp"], -2);
}

// ---- truncation ----

#[test]
fn a_line_over_128_kb_is_cut_with_a_marker_saying_how_much_was_cut() {
    let data: Vec<u8> = b"0123456789"
        .iter()
        .copied()
        .cycle()
        .take(300_000)
        .collect();
    let log = only_log(queued(0, &data));
    let message = log["message"].as_str().unwrap();
    assert!(message.len() <= MAX_MESSAGE_BYTES, "{}", message.len());
    let (kept, marker) = message.split_once('…').unwrap();
    let cut = data.len() - kept.len();
    assert_eq!(
        marker,
        format!("[truncated by logdrain: cut {cut} of 300000 bytes]")
    );
    assert!(data.starts_with(kept.as_bytes()));
    assert!(kept.len() > MAX_MESSAGE_BYTES - 100, "cut far too short");
    assert_eq!(log["attributes"]["logdrain.truncated_bytes"], cut);
}

#[test]
fn a_cut_never_splits_a_character_and_counts_original_bytes() {
    // Three-byte characters and invalid bytes that become three-byte U+FFFD.
    let mut data = Vec::new();
    while data.len() < 200_000 {
        data.extend_from_slice("€".as_bytes());
        data.push(0xff);
    }
    let log = only_log(queued(0, &data));
    let message = log["message"].as_str().unwrap();
    assert!(message.len() <= MAX_MESSAGE_BYTES);
    let kept = message.split_once('…').unwrap().0;
    assert!(kept.chars().all(|c| c == '€' || c == '\u{fffd}'));
    // Each "€\u{fffd}" pair (6 bytes) stands for 4 bytes of the line.
    let pairs = kept.len() / 6;
    let original = pairs * 4 + if kept.len() % 6 == 3 { 3 } else { 0 };
    let cut = log["attributes"]["logdrain.truncated_bytes"]
        .as_u64()
        .unwrap() as usize;
    assert_eq!(cut, data.len() - original);
}

#[test]
fn lines_up_to_the_limit_are_sent_whole() {
    let data = vec![b'z'; MAX_MESSAGE_BYTES];
    let log = only_log(queued(0, &data));
    assert_eq!(log["message"].as_str().unwrap().len(), MAX_MESSAGE_BYTES);
    assert!(log["attributes"].get("logdrain.truncated_bytes").is_none());
}

// ---- sizes and batches ----

#[test]
fn a_single_lines_event_size_is_its_body_length_with_the_longest_level() {
    for data in [&b"x"[..], b"tab\t\"quoted\" \\ \x01 \xff", &[b'q'; 500_000]] {
        let line = queued(0, data);
        assert_eq!(
            request_builder::event_size(AGENT, &line),
            encode(std::slice::from_ref(&line)).json_bytes + LEVEL_SLACK
        );
    }
    let fatal = queued(0, b"FATAL out of memory");
    assert_eq!(
        request_builder::event_size(AGENT, &fatal),
        encode(std::slice::from_ref(&fatal)).json_bytes
    );
}

/// Sizes count the level `"fatal"`; lines without a level are `"info"`.
const LEVEL_SLACK: usize = 1;

#[test]
fn event_sizes_bound_the_body_however_lines_group() {
    let lines: Vec<QueuedLine> = (0..60)
        .map(|i| {
            let host = ["r1", "replica-long-name-2", "r3"][i as usize % 3];
            let stream = [StreamKind::Stdout, StreamKind::Stderr][i as usize % 2];
            on(host, stream, i, format!("line {i} é \"q\"").as_bytes())
        })
        .collect();
    let sum: usize = lines
        .iter()
        .map(|l| request_builder::event_size(AGENT, l))
        .sum();
    let encoded = encode(&lines);
    assert_eq!(encoded.blocks, 6);
    assert!(encoded.json_bytes <= sum, "{} > {sum}", encoded.json_bytes);

    // In one block, the bound is above the body by one frame per extra line.
    let same: Vec<QueuedLine> = (0..10).map(|i| queued(i, b"same block")).collect();
    let frame = request_builder::event_size(AGENT, &same[0]) - {
        let json = serde_json::to_vec(&decode(&same[..1])[0]["logs"][0]).unwrap();
        json.len() + 1 + LEVEL_SLACK
    };
    let sum: usize = same
        .iter()
        .map(|l| request_builder::event_size(AGENT, l))
        .sum();
    assert_eq!(sum - encode(&same).json_bytes, 9 * frame + 10 * LEVEL_SLACK);
}

/// The general path the hand-written layout must match byte for byte: the
/// body's structs as serde_json writes them.
mod reference {
    use std::borrow::Cow;

    use serde::Serialize;

    use super::super::request_builder::{message, SOURCE};
    use crate::queue::QueuedLine;
    use crate::sinks::level::Level;
    use crate::sinks::text::Attributes;

    #[derive(Serialize)]
    struct Common<'a> {
        attributes: CommonAttributes<'a>,
    }

    #[derive(Serialize)]
    struct CommonAttributes<'a> {
        hostname: &'a str,
        service_name: &'a str,
        source: &'static str,
        stream: &'static str,
    }

    #[derive(Serialize)]
    struct Log<'a> {
        timestamp: i64,
        message: Cow<'a, str>,
        attributes: LogAttributes,
    }

    #[derive(Serialize)]
    struct LogAttributes {
        level: &'static str,
        #[serde(rename = "logdrain.part", skip_serializing_if = "Option::is_none")]
        part: Option<u32>,
        #[serde(
            rename = "logdrain.more_parts",
            skip_serializing_if = "Option::is_none"
        )]
        more_parts: Option<bool>,
        #[serde(rename = "logdrain.origin", skip_serializing_if = "Option::is_none")]
        origin: Option<&'static str>,
        #[serde(
            rename = "logdrain.truncated_bytes",
            skip_serializing_if = "Option::is_none"
        )]
        truncated_bytes: Option<usize>,
    }

    /// The body of `lines`, all of one (agent-server id, stream) group.
    pub fn body(
        agent_id: &str,
        lines: &[QueuedLine],
        level: impl Fn(&QueuedLine) -> Level,
    ) -> Vec<u8> {
        let first = &lines[0];
        let common = Common {
            attributes: CommonAttributes {
                hostname: &first.agent_server_id,
                service_name: agent_id,
                source: SOURCE,
                stream: first.line.stream().name(),
            },
        };
        let mut out = b"[{\"common\":".to_vec();
        serde_json::to_writer(&mut out, &common).unwrap();
        out.extend_from_slice(b",\"logs\":[");
        for (i, queued) in lines.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            let line = &queued.line;
            let logdrain = Attributes::of(line);
            let (message, truncated_bytes) = message(&line.data);
            let log = Log {
                timestamp: line.timestamp_ns.div_euclid(1_000_000),
                message,
                attributes: LogAttributes {
                    level: level(queued).as_str(),
                    part: logdrain.part,
                    more_parts: logdrain.more_parts,
                    origin: logdrain.origin,
                    truncated_bytes,
                },
            };
            serde_json::to_writer(&mut out, &log).unwrap();
        }
        out.extend_from_slice(b"]}]");
        out
    }
}

/// Lines that take every path of the layout: escapes, control characters,
/// invalid UTF-8, ANSI colours, non-ASCII, lines long enough to be cut,
/// pieces, shim lines, timestamps before the epoch.
fn awkward_lines(host: &str, stream: StreamKind) -> Vec<QueuedLine> {
    let mut data = crate::sinks::text::awkward_texts();
    data.extend([
        br#"{"level":"error","msg":"json \"inside\""}"#.to_vec(),
        vec![b'a'; 5_000],
        vec![b'b'; 200_000],
        [b"\"\xff".as_slice(); 70_000].concat(),
        Vec::new(),
    ]);
    data.iter()
        .enumerate()
        .map(|(i, data)| {
            let mut line = on(host, stream, i as u32, data);
            match i % 4 {
                1 => line.line.more_parts = true,
                2 => line.line.part = 3,
                3 => line.line.origin = Origin::Shim as i32,
                _ => line.line.timestamp_ns = -1_500_000,
            }
            line
        })
        .collect()
}

#[test]
fn the_hand_written_body_is_byte_for_byte_what_serde_json_writes() {
    let detected = |l: &QueuedLine| crate::sinks::level::detect(&l.line.data, l.line.stream());
    for (agent, host, stream) in [
        (AGENT, "replica-7", StreamKind::Stdout),
        (
            "agent \"q\" \\ \u{7}",
            "r\u{e9}plica \"8\"\n",
            StreamKind::Stderr,
        ),
    ] {
        let lines = awkward_lines(host, stream);
        let encoded = request_builder::encode(agent, &lines).unwrap();
        assert!(
            gunzip(&encoded.body) == reference::body(agent, &lines, detected),
            "bodies differ"
        );
        for line in &lines {
            let one = std::slice::from_ref(line);
            let widest = reference::body(agent, one, |_| crate::sinks::level::Level::WIDEST);
            assert_eq!(
                request_builder::event_size(agent, line),
                widest.len(),
                "{:?}",
                line.cursor
            );
        }
    }
}

/// Cuts every batch a worker would cut from `lines` with this sink's limits.
fn batches(sink: &NewRelicSink, lines: Vec<QueuedLine>) -> Vec<Vec<QueuedLine>> {
    let limits = sink.limits();
    let mut pending = Pending::new();
    let now = Instant::now();
    for line in lines {
        let size = sink.event_size(&line);
        assert!(size <= limits.max_bytes, "a line over the batch limit");
        pending.push(line, size, now);
    }
    let mut out = Vec::new();
    while !pending.is_empty() {
        out.push(pending.take_batch(&limits));
    }
    out
}

#[test]
fn batches_of_incompressible_lines_stay_within_the_gzipped_post_limit() {
    let s = sink(US_KEY, None);
    let lines: Vec<QueuedLine> = (0..400)
        .map(|i| {
            let host = if i % 2 == 0 { "r1" } else { "r2" };
            on(host, StreamKind::Stdout, i, &noise(9_000, u64::from(i)))
        })
        .collect();
    let cut = batches(&s, lines);
    assert!(cut.len() >= 4, "{} batches", cut.len());
    for batch in &cut {
        let encoded = encode(batch);
        assert!(
            encoded.json_bytes <= MAX_JSON_BYTES,
            "{}",
            encoded.json_bytes
        );
        assert!(
            encoded.body.len() <= MAX_POST_BYTES,
            "{}",
            encoded.body.len()
        );
        assert_eq!(request_builder::check_post_size(&encoded), Ok(()));
    }
}

#[test]
fn the_longest_escaped_line_still_fits_one_request() {
    // Control characters take six bytes each once escaped in JSON.
    let s = sink(US_KEY, None);
    let line = on(&"h".repeat(255), StreamKind::Stderr, 0, &[0x01; 400_000]);
    let size = s.event_size(&line);
    assert!(size <= MAX_JSON_BYTES, "{size}");
    let encoded = encode(&[line]);
    assert_eq!(encoded.json_bytes, size);
    assert!(encoded.body.len() <= MAX_POST_BYTES);
}

#[test]
fn gzip_of_the_largest_incompressible_body_stays_under_the_post_limit() {
    let mut state = 0x9e37_79b9_7f4a_7c15_u64;
    let random: Vec<u8> = (0..MAX_JSON_BYTES)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 24) as u8
        })
        .collect();
    let gzipped = crate::sinks::http::gzip(&random).unwrap();
    assert!(gzipped.len() > MAX_JSON_BYTES, "the data must not compress");
    assert!(gzipped.len() <= MAX_POST_BYTES, "{}", gzipped.len());
}

#[test]
fn a_gzipped_body_over_the_post_limit_is_rejected_for_splitting() {
    let over = Encoded {
        body: vec![0; MAX_POST_BYTES + 1],
        json_bytes: MAX_POST_BYTES,
        events: 2,
        blocks: 1,
    };
    match request_builder::check_post_size(&over) {
        Err(SinkError::PayloadRejected { reason }) => {
            assert!(reason.contains("1000001 bytes"), "{reason}")
        }
        other => panic!("{other:?}"),
    }
    let at = Encoded {
        body: vec![0; MAX_POST_BYTES],
        ..over
    };
    assert_eq!(request_builder::check_post_size(&at), Ok(()));
}

// ---- real HTTP against the test intake ----

/// An intake without New Relic's 48 h window: these lines carry a fixed
/// 2023 time, sent by the sink alone (the engine re-stamps late lines).
async fn intake() -> Intake {
    let config = IntakeConfig {
        newrelic: NewRelicConfig {
            keys: vec![EU_KEY.to_string()],
            limits: NewRelicLimits {
                max_age: None,
                ..NewRelicLimits::default()
            },
        },
        ..IntakeConfig::default()
    };
    Intake::start(config).await.unwrap()
}

fn sink_for(intake: &Intake, key: &str) -> NewRelicSink {
    sink(key, Some(Url::parse(&intake.base_url()).unwrap()))
}

#[tokio::test]
async fn the_intake_accepts_a_batch_and_records_every_contract_field() {
    let intake = intake().await;
    let s = sink_for(&intake, EU_KEY);
    let lines = [
        on("r1", StreamKind::Stdout, 0, b"hello"),
        on(
            "r2",
            StreamKind::Stderr,
            1,
            b"Traceback (most recent call last):",
        ),
        on(
            "r1",
            StreamKind::Stderr,
            2,
            b"INFO:livekit.agents:registered worker",
        ),
    ];
    assert_eq!(s.send(&lines).await, Ok(SendOutcome::accepted()));

    let entries: Vec<Value> = intake
        .entries(Vendor::NewRelic)
        .into_iter()
        .map(|e| e.value)
        .collect();
    let entry = |host: &str, stream: &str, level: &str, message: &str, ms: i64| {
        json!({
            "hostname": host, "service_name": AGENT, "source": "cloud.livekit.io",
            "stream": stream, "level": level, "message": message, "timestamp": ms,
        })
    };
    assert_eq!(
        entries,
        [
            entry("r1", "stdout", "info", "hello", 1_700_000_000_123),
            entry(
                "r2",
                "stderr",
                "error",
                "Traceback (most recent call last):",
                1_700_000_000_124
            ),
            entry(
                "r1",
                "stderr",
                "info",
                "INFO:livekit.agents:registered worker",
                1_700_000_000_125
            ),
        ]
    );
    let request = &intake.requests()[0];
    assert_eq!(request.status, 202);
    assert_eq!(request.auth, Some(AuthForm::Header("X-License-Key")));
    assert_eq!(request.key.as_deref(), Some(EU_KEY));
    assert_eq!(request.headers["content-type"], "application/json");
    assert_eq!(request.headers["content-encoding"], "gzip");
}

#[tokio::test]
async fn a_cut_line_reaches_the_intake_whole_within_new_relics_value_limit() {
    let intake = intake().await;
    let s = sink_for(&intake, EU_KEY);
    let data = vec![b'a'; 1_000_000];
    s.send(&[queued(0, &data)]).await.unwrap();
    let entries = intake.entries(Vendor::NewRelic);
    let message = entries[0].value["message"].as_str().unwrap();
    assert!(message.ends_with("bytes]"), "the marker survived storage");
    assert!(message.contains("of 1000000 bytes"));
    assert!(
        entries[0].value["logdrain.truncated_bytes"]
            .as_u64()
            .unwrap()
            > 870_000
    );
}

#[tokio::test]
async fn a_license_key_the_intake_does_not_know_is_unauthorized() {
    let intake = intake().await;
    let s = sink_for(&intake, US_KEY);
    match s.send(&[queued(0, b"x")]).await {
        Err(error @ SinkError::Unauthorized { .. }) => {
            let text = error.to_string();
            assert!(text.contains("403"), "{text}");
            assert!(!text.contains(US_KEY), "{text}");
        }
        other => panic!("{other:?}"),
    }
    assert!(intake.entries(Vendor::NewRelic).is_empty());
}

#[tokio::test]
async fn intake_answers_are_classified_for_the_engine() {
    let intake = intake().await;
    let s = sink_for(&intake, EU_KEY);
    for status in [400, 413, 408, 429, 500, 503] {
        let mut fault = Fault::next(1, status).for_vendor(Vendor::NewRelic);
        if status == 429 {
            fault = fault.retry_after("7");
        }
        intake.inject(fault).unwrap();
        let result = s.send(&[queued(0, b"x")]).await;
        match (status, result) {
            (400 | 413, Err(SinkError::PayloadRejected { reason })) => {
                assert!(reason.contains(&status.to_string()), "{reason}")
            }
            (429, Err(SinkError::Retryable { retry_after, .. })) => {
                assert_eq!(retry_after, Some(Duration::from_secs(7)))
            }
            (408 | 500 | 503, Err(SinkError::Retryable { retry_after, .. })) => {
                assert_eq!(retry_after, None)
            }
            (status, other) => panic!("{status} gave {other:?}"),
        }
    }
    assert_eq!(
        s.send(&[queued(0, b"x")]).await,
        Ok(SendOutcome::accepted())
    );
    assert_eq!(intake.entries(Vendor::NewRelic).len(), 1);
}

#[tokio::test]
async fn an_unreachable_endpoint_is_retryable_and_the_reason_has_no_key() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let s = sink(US_KEY, Some(Url::parse(&format!("http://{addr}")).unwrap()));
    match s.send(&[queued(0, b"x")]).await {
        Err(SinkError::Retryable { reason, .. }) => {
            assert!(!reason.contains(US_KEY), "{reason}");
            assert!(
                reason.starts_with("request to New Relic failed"),
                "{reason}"
            );
        }
        other => panic!("{other:?}"),
    }
}
