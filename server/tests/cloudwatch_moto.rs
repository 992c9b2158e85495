//! The CloudWatch sink against `moto_server`, a real implementation of the
//! CloudWatch Logs API: the sink is built by `build_sink` for a route with
//! static test credentials pointing at moto, and what arrived is read back
//! with the AWS SDK.
//!
//! moto checks the order of events in a put (it refuses unsorted ones) and
//! the existence of groups and streams; it does not check the size limits or
//! the 24 h span, which the unit tests pin. Needs moto installed (see
//! `tests/moto/mod.rs`); without it these tests skip with one loud line, or
//! fail saying how to install it under `LOGDRAIN_TEST_REQUIRE_ALL=1`. The tests share one moto (`MotoServer::shared`), each with its own
//! agent id and so its own log group.

#[path = "../../tests/moto/mod.rs"]
mod moto;

use std::sync::{Arc, OnceLock};
use std::time::{SystemTime, UNIX_EPOCH};

use aws_sdk_cloudwatchlogs::config::{BehaviorVersion, Credentials, Region};
use aws_sdk_cloudwatchlogs::error::ProvideErrorMetadata;
use aws_sdk_cloudwatchlogs::types::InputLogEvent;
use aws_sdk_cloudwatchlogs::Client;
use bytes::Bytes;
use logdrain::v1::{Line, Origin, StreamKind};
use logdrain_gateway::queue::{Cursor, QueuedLine};
use logdrain_gateway::route::{DestinationKind, RouteKey, Secrets};
use logdrain_gateway::sinks::engine::late;
use logdrain_gateway::sinks::{
    build_sink, cloudwatch, HttpClients, SendOutcome, Sink, SinkSettings,
};
use moto::MotoServer;
use serde_json::{json, Value};
use tokio::runtime::Runtime;
use url::Url;

const HOUR_NS: i64 = 3_600_000_000_000;

/// Runs a test on the one runtime every test of this file shares. The
/// CloudWatch sinks share one pooled HTTP client per process (see
/// `cloudwatch::http_client`), and these tests share one moto: with a
/// runtime per test, one test could pick up a pooled connection whose task
/// lives on another test's runtime, and lose it when that test ends.
fn on_shared_runtime<F: std::future::Future<Output = ()>>(test: F) {
    static RUNTIME: OnceLock<Runtime> = OnceLock::new();
    RUNTIME
        .get_or_init(|| {
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .expect("a Tokio runtime for the tests")
        })
        .block_on(test)
}

fn now_ns() -> i64 {
    let since = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
    i64::try_from(since.as_nanos()).unwrap()
}

fn line(index: u32, server: &str, timestamp_ns: i64, stream: StreamKind, data: &str) -> QueuedLine {
    QueuedLine {
        cursor: Cursor { segment: 1, index },
        agent_server_id: Arc::from(server),
        line: Line {
            timestamp_ns,
            stream: stream as i32,
            data: Bytes::copy_from_slice(data.as_bytes()),
            origin: Origin::Agent as i32,
            part: 0,
            more_parts: false,
        },
        original_timestamp_ns: None,
    }
}

fn stdout(index: u32, server: &str, timestamp_ns: i64, data: &str) -> QueuedLine {
    line(index, server, timestamp_ns, StreamKind::Stdout, data)
}

/// The sink of agent `agent`'s CloudWatch route, as the engine gets it.
fn sink(moto: &MotoServer, agent: &str) -> Arc<dyn Sink> {
    let route = RouteKey {
        agent_id: agent.to_string(),
        kind: DestinationKind::CloudWatch,
        cred_id: "test".into(),
    };
    let secrets = Secrets(
        [
            ("AWS_ACCESS_KEY_ID", "AKIAMOTOTESTKEY"),
            ("AWS_SECRET_ACCESS_KEY", "motoTestSecret"),
            ("AWS_REGION", "eu-west-1"),
        ]
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .into(),
    );
    let settings = SinkSettings {
        cloudwatch_url: Some(Url::parse(&moto.url()).unwrap()),
        ..SinkSettings::default()
    };
    build_sink(
        &route,
        &secrets,
        &settings,
        &HttpClients::new(&SinkSettings::default()).unwrap(),
    )
    .unwrap_or_else(|e| panic!("the CloudWatch sink must build: {e}"))
}

/// A plain SDK client on moto, to read back and to change things behind the
/// sink's back.
fn reader(moto: &MotoServer) -> Client {
    let config = aws_sdk_cloudwatchlogs::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .credentials_provider(Credentials::new("AKIAREADER", "reader", None, None, "test"))
        .region(Region::new("eu-west-1"))
        .endpoint_url(moto.url())
        .http_client(cloudwatch::http_client())
        .build();
    Client::from_conf(config)
}

/// Every event of a stream, oldest first: (timestamp ms, message as JSON).
async fn events(client: &Client, group: &str, stream: &str) -> Vec<(i64, Value)> {
    let answer = client
        .get_log_events()
        .log_group_name(group)
        .log_stream_name(stream)
        .start_from_head(true)
        .send()
        .await
        .unwrap_or_else(|e| panic!("GetLogEvents {group}/{stream}: {e:?}"));
    answer
        .events()
        .iter()
        .map(|e| {
            let message = e.message().unwrap_or_default();
            let parsed = serde_json::from_str(message)
                .unwrap_or_else(|_| panic!("message is not JSON: {message}"));
            (e.timestamp().unwrap_or_default(), parsed)
        })
        .collect()
}

async fn stream_names(client: &Client, group: &str) -> Vec<String> {
    let answer = client
        .describe_log_streams()
        .log_group_name(group)
        .send()
        .await
        .unwrap_or_else(|e| panic!("DescribeLogStreams {group}: {e:?}"));
    let mut names: Vec<String> = answer
        .log_streams()
        .iter()
        .filter_map(|s| s.log_stream_name().map(str::to_string))
        .collect();
    names.sort();
    names
}

fn texts(events: &[(i64, Value)]) -> Vec<&str> {
    events
        .iter()
        .map(|(_, v)| v["message"].as_str().unwrap_or_default())
        .collect()
}

#[test]
fn the_group_and_stream_are_created_on_first_write_and_events_arrive_sorted_as_json() {
    on_shared_runtime(async {
        let Some(moto) = MotoServer::shared() else {
            return;
        };
        let sink = sink(&moto, "agent-a");
        let t = now_ns();
        let ms = 1_000_000;
        // Queue order is not time order: moto refuses unsorted puts, so this
        // passes only because the sink sorts.
        let batch = [
            stdout(0, "server-1", t + 30 * ms, "third"),
            stdout(1, "server-1", t, "first"),
            line(2, "server-1", t + 10 * ms, StreamKind::Stderr, "second"),
        ];
        let outcome = sink.send(&batch).await.unwrap();
        assert_eq!(outcome, SendOutcome::accepted());

        let client = reader(&moto);
        assert_eq!(stream_names(&client, "livekit/agent-a").await, ["server-1"]);
        let got = events(&client, "livekit/agent-a", "server-1").await;
        assert_eq!(
            got,
            [
                (t / ms, json!({"message": "first", "stream": "stdout"})),
                (
                    t / ms + 10,
                    json!({"message": "second", "stream": "stderr"})
                ),
                (t / ms + 30, json!({"message": "third", "stream": "stdout"})),
            ]
        );
    });
}

#[test]
fn moto_refuses_unsorted_events_so_the_order_test_can_fail() {
    on_shared_runtime(async {
        let Some(moto) = MotoServer::shared() else {
            return;
        };
        let client = reader(&moto);
        client
            .create_log_group()
            .log_group_name("order-check")
            .send()
            .await
            .unwrap();
        client
            .create_log_stream()
            .log_group_name("order-check")
            .log_stream_name("s")
            .send()
            .await
            .unwrap();
        let t = now_ns() / 1_000_000;
        let event = |ts: i64| {
            InputLogEvent::builder()
                .timestamp(ts)
                .message("x")
                .build()
                .unwrap()
        };
        let err = client
            .put_log_events()
            .log_group_name("order-check")
            .log_stream_name("s")
            .log_events(event(t + 5))
            .log_events(event(t))
            .send()
            .await
            .unwrap_err();
        assert_eq!(err.code(), Some("InvalidParameterException"));
    });
}

#[test]
fn sends_to_an_existing_stream_work_from_the_same_and_from_a_new_sink() {
    on_shared_runtime(async {
        let Some(moto) = MotoServer::shared() else {
            return;
        };
        let t = now_ns();
        let first = sink(&moto, "agent-b");
        first
            .send(&[stdout(0, "server-1", t, "one")])
            .await
            .unwrap();
        first
            .send(&[stdout(1, "server-1", t + 1_000_000, "two")])
            .await
            .unwrap();
        // A new sink (a gateway restart) does not know the stream exists: its
        // creation is answered ResourceAlreadyExistsException, which is success.
        let restarted = sink(&moto, "agent-b");
        restarted
            .send(&[stdout(2, "server-1", t + 2_000_000, "three")])
            .await
            .unwrap();

        let client = reader(&moto);
        let got = events(&client, "livekit/agent-b", "server-1").await;
        assert_eq!(texts(&got), ["one", "two", "three"]);
    });
}

#[test]
fn a_deleted_stream_or_group_is_recreated_by_the_next_send() {
    on_shared_runtime(async {
        let Some(moto) = MotoServer::shared() else {
            return;
        };
        let client = reader(&moto);
        let sink = sink(&moto, "agent-c");
        let t = now_ns();
        sink.send(&[stdout(0, "server-1", t, "before")])
            .await
            .unwrap();

        client
            .delete_log_stream()
            .log_group_name("livekit/agent-c")
            .log_stream_name("server-1")
            .send()
            .await
            .unwrap();
        sink.send(&[stdout(1, "server-1", t + 1_000_000, "after stream deleted")])
            .await
            .unwrap();
        let got = events(&client, "livekit/agent-c", "server-1").await;
        assert_eq!(texts(&got), ["after stream deleted"]);

        client
            .delete_log_group()
            .log_group_name("livekit/agent-c")
            .send()
            .await
            .unwrap();
        sink.send(&[stdout(2, "server-1", t + 2_000_000, "after group deleted")])
            .await
            .unwrap();
        let got = events(&client, "livekit/agent-c", "server-1").await;
        assert_eq!(texts(&got), ["after group deleted"]);
    });
}

#[test]
fn lines_of_two_agent_servers_go_to_two_streams() {
    on_shared_runtime(async {
        let Some(moto) = MotoServer::shared() else {
            return;
        };
        let sink = sink(&moto, "agent-d");
        let t = now_ns();
        let batch = [
            stdout(0, "server-1", t, "from 1"),
            stdout(1, "server-2", t + 1_000_000, "from 2"),
            stdout(2, "server-1", t + 2_000_000, "from 1 again"),
        ];
        sink.send(&batch).await.unwrap();

        let client = reader(&moto);
        assert_eq!(
            stream_names(&client, "livekit/agent-d").await,
            ["server-1", "server-2"]
        );
        let one = events(&client, "livekit/agent-d", "server-1").await;
        assert_eq!(texts(&one), ["from 1", "from 1 again"]);
        let two = events(&client, "livekit/agent-d", "server-2").await;
        assert_eq!(texts(&two), ["from 2"]);
    });
}

/// The engine gives lines outside CloudWatch's 14 days the time of sending
/// (`engine::late`); CloudWatch then stores them, each keeping its own time.
#[test]
fn events_too_old_for_cloudwatch_are_stored_at_the_time_of_sending_with_their_own_time() {
    on_shared_runtime(async {
        let Some(moto) = MotoServer::shared() else {
            return;
        };
        let sink = sink(&moto, "agent-e");
        let t = now_ns();
        let mut batch = [
            stdout(0, "server-1", t, "fresh"),
            stdout(1, "server-1", t - 20 * 24 * HOUR_NS, "twenty days old"),
        ];
        let max_age = sink.max_age().unwrap();
        for line in &mut batch {
            late::restamp(line, max_age, t);
        }
        let outcome = sink.send(&batch).await.unwrap();
        assert_eq!(outcome, SendOutcome::accepted());

        let client = reader(&moto);
        let got = events(&client, "livekit/agent-e", "server-1").await;
        assert_eq!(texts(&got), ["fresh", "twenty days old"]);
        assert_eq!(got[1].0, t / 1_000_000);
        assert_eq!(
            got[1].1["logdrain"]["original_timestamp"],
            (t - 20 * 24 * HOUR_NS) / 1_000_000
        );
    });
}

#[test]
fn a_batch_spanning_days_is_stored_whole_through_several_puts() {
    on_shared_runtime(async {
        let Some(moto) = MotoServer::shared() else {
            return;
        };
        let sink = sink(&moto, "agent-f");
        let t = now_ns();
        let batch = [
            stdout(0, "server-1", t, "now"),
            stdout(1, "server-1", t - 72 * HOUR_NS, "three days ago"),
            stdout(2, "server-1", t - 25 * HOUR_NS, "yesterday"),
        ];
        let outcome = sink.send(&batch).await.unwrap();
        assert_eq!(outcome, SendOutcome::accepted());

        let client = reader(&moto);
        let got = events(&client, "livekit/agent-f", "server-1").await;
        assert_eq!(texts(&got), ["three days ago", "yesterday", "now"]);
    });
}
