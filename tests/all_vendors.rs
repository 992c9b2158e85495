//! One agent whose secrets enable all four destinations, with three replicas:
//! Datadog, Sentry and New Relic are played by the test intakes, CloudWatch
//! Logs by `moto_server` (real AWS API calls).

mod common;
mod moto;

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use common::*;
use logdrain_test_intake::{Fault, Intake, IntakeConfig, Vendor};
use serde_json::{json, Value};

const SENTRY_KEY: &str = "0123456789abcdef0123456789abcdef";
const NR_KEY: &str = "0123456789abcdef0123456789abcdef0123NRAL";
const AGENT: &str = "agent-all";
const REPLICAS: [&str; 3] = ["replica-1", "replica-2", "replica-3"];

async fn all_intakes() -> Intake {
    let mut config = IntakeConfig::with_datadog_keys([DD_KEY]);
    config.sentry.keys = vec![SENTRY_KEY.to_string()];
    config.newrelic.keys = vec![NR_KEY.to_string()];
    Intake::start(config).await.expect("start intakes")
}

struct Fleet {
    intake: Intake,
    moto: std::sync::Arc<moto::MotoServer>,
    gateway: Gateway,
    _dir: tempfile::TempDir,
}

/// The fleet, or `None` (the test skips) without moto.
async fn fleet() -> Option<Fleet> {
    let moto = moto::MotoServer::shared()?;
    let intake = all_intakes().await;
    let dir = tempfile::tempdir().unwrap();
    let gateway = Gateway::start_with(
        &dir.path().join("gw"),
        &intake.base_url(),
        "127.0.0.1:0",
        "127.0.0.1:0",
        vec![
            ("LOGDRAIN_NEWRELIC_URL".into(), intake.base_url()),
            ("LOGDRAIN_CLOUDWATCH_URL".into(), moto.url()),
        ],
    );
    Some(Fleet {
        intake,
        moto,
        gateway,
        _dir: dir,
    })
}

impl Fleet {
    fn shim(&self, replica: &str) -> ShimBuilder {
        ShimBuilder::new(&self.gateway.url(), AGENT, replica)
            .env("DATADOG_TOKEN", DD_KEY)
            .env(
                "SENTRY_DSN",
                &logdrain_test_intake::sentry::dsn(&self.intake.base_url(), SENTRY_KEY, 42),
            )
            .env("NEW_RELIC_LICENSE_KEY", NR_KEY)
            .env("AWS_ACCESS_KEY_ID", "AKIDLOGDRAINTEST")
            .env("AWS_SECRET_ACCESS_KEY", "logdrain-test-secret")
            .env("AWS_REGION", "us-west-2")
    }

    /// (replica, stream, message) as each vendor received them.
    async fn received(&self) -> BTreeMap<&'static str, Vec<(String, String, String)>> {
        let mut out = BTreeMap::new();
        out.insert(
            "datadog",
            self.intake
                .datadog_entries()
                .iter()
                .map(|e| (s(&e["host"]), s(&e["stream"]), s(&e["message"])))
                .collect(),
        );
        out.insert(
            "sentry",
            self.intake
                .entries(Vendor::Sentry)
                .iter()
                .map(|e| {
                    let a = &e.value["attributes"];
                    (
                        s(&a["server_name"]["value"]),
                        s(&a["stream"]["value"]),
                        s(&e.value["body"]),
                    )
                })
                .collect(),
        );
        out.insert(
            "newrelic",
            self.intake
                .entries(Vendor::NewRelic)
                .iter()
                .map(|e| {
                    (
                        s(&e.value["hostname"]),
                        s(&e.value["stream"]),
                        s(&e.value["message"]),
                    )
                })
                .collect(),
        );
        out.insert("cloudwatch", cloudwatch_events(&self.moto.url()).await);
        out
    }
}

fn s(v: &Value) -> String {
    v.as_str().unwrap_or_default().to_string()
}

/// Every event of log group `livekit/agent-all`, read back through the
/// CloudWatch Logs API of moto: (logStreamName, stream, message).
async fn cloudwatch_events(moto: &str) -> Vec<(String, String, String)> {
    let client = reqwest::Client::new();
    let call = |target: &'static str, body: Value| {
        client
            .post(moto)
            .header("X-Amz-Target", format!("Logs_20140328.{target}"))
            .header("Content-Type", "application/x-amz-json-1.1")
            .header(
                "Authorization",
                "AWS4-HMAC-SHA256 Credential=AKIDLOGDRAINTEST/20260101/us-west-2/logs/aws4_request, SignedHeaders=host, Signature=0",
            )
            .body(body.to_string())
            .send()
    };
    let group = format!("livekit/{AGENT}");
    let Ok(resp) = call("DescribeLogStreams", json!({ "logGroupName": group })).await else {
        return Vec::new();
    };
    let streams: Value = resp.json().await.unwrap_or_default();
    let mut events = Vec::new();
    for stream in streams["logStreams"]
        .as_array()
        .cloned()
        .unwrap_or_default()
    {
        let name = s(&stream["logStreamName"]);
        let mut token: Option<String> = None;
        loop {
            let mut body =
                json!({ "logGroupName": group, "logStreamName": name, "startFromHead": true });
            if let Some(t) = &token {
                body["nextToken"] = json!(t);
            }
            let page: Value = call("GetLogEvents", body)
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            for event in page["events"].as_array().cloned().unwrap_or_default() {
                let message: Value =
                    serde_json::from_str(event["message"].as_str().unwrap()).unwrap();
                events.push((name.clone(), s(&message["stream"]), s(&message["message"])));
            }
            let next = page["nextForwardToken"].as_str().map(str::to_string);
            if next.is_none()
                || next == token
                || page["events"].as_array().is_none_or(|e| e.is_empty())
            {
                break;
            }
            token = next;
        }
    }
    events
}

/// Realistic output of one round: Python logging on stderr, JSON, tracing,
/// slog, plain stdout, and a traceback.
fn script(round: &str, lines: usize) -> String {
    format!(
        "i=1; while [ $i -le {lines} ]; do \
           echo \"{round} plain $i\"; \
           echo \"INFO:agent:{round} python info $i\" >&2; \
           echo '{{\"level\":\"warn\",\"msg\":\"{round} json '$i'\"}}'; \
           i=$((i+1)); \
         done; \
         echo 'Traceback (most recent call last):' >&2; \
         echo '  File \"agent.py\", line 3, in <module>' >&2; \
         echo 'ValueError: {round} boom' >&2"
    )
}

/// Lines of a round that carry its tag (the traceback's first two lines
/// do not).
fn expected_count(lines: usize) -> usize {
    REPLICAS.len() * (lines * 3 + 1)
}

async fn run_round(fleet: &Fleet, round: &str, lines: usize) {
    let mut shims = Vec::new();
    for replica in REPLICAS {
        let mut shim = fleet.shim(replica).spawn_sh(&script(round, lines));
        let pipes = capture(&mut shim);
        shims.push((shim, pipes));
    }
    for (shim, _) in &mut shims {
        let status = wait_exit(shim, Duration::from_secs(120)).await;
        assert!(status.success(), "shim exit {status}");
    }
}

fn of_round<'a>(
    got: &'a [(String, String, String)],
    round: &str,
) -> Vec<&'a (String, String, String)> {
    got.iter()
        .filter(|(_, _, m)| m.contains(&format!("{round} ")))
        .collect()
}

async fn wait_for_round(
    fleet: &Fleet,
    vendors: &[&str],
    round: &str,
    count: usize,
    limit: Duration,
) -> bool {
    let start = Instant::now();
    loop {
        let got = fleet.received().await;
        if vendors
            .iter()
            .all(|v| of_round(&got[v], round).len() >= count)
        {
            return true;
        }
        if start.elapsed() > limit {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_line_reaches_every_vendor_exactly_once_with_the_exact_fields() {
    let Some(fleet) = fleet().await else { return };
    let lines = 100;
    run_round(&fleet, "r1", lines).await;
    let all = ["datadog", "sentry", "newrelic", "cloudwatch"];
    let arrived = wait_for_round(
        &fleet,
        &all,
        "r1",
        expected_count(lines),
        Duration::from_secs(120),
    )
    .await;
    let got = fleet.received().await;
    for vendor in all {
        let round = of_round(&got[vendor], "r1");
        assert!(
            arrived,
            "{vendor}: {} of {}\n{}",
            round.len(),
            expected_count(lines),
            fleet.gateway.log()
        );
        let mut counts: HashMap<&(String, String, String), usize> = HashMap::new();
        for line in &round {
            *counts.entry(line).or_default() += 1;
        }
        assert_eq!(round.len(), expected_count(lines), "{vendor}: exactly once");
        assert!(
            counts.values().all(|&c| c == 1),
            "{vendor}: a line arrived twice"
        );
        let hosts: std::collections::BTreeSet<_> =
            round.iter().map(|(h, _, _)| h.as_str()).collect();
        assert_eq!(
            hosts.into_iter().collect::<Vec<_>>(),
            REPLICAS,
            "{vendor}: one host per replica"
        );
        for replica in REPLICAS {
            for i in [1, lines] {
                assert!(
                    counts.contains_key(&(
                        replica.into(),
                        "stdout".into(),
                        format!("r1 plain {i}")
                    )),
                    "{vendor}"
                );
                assert!(
                    counts.contains_key(&(
                        replica.into(),
                        "stderr".into(),
                        format!("INFO:agent:r1 python info {i}")
                    )),
                    "{vendor}"
                );
            }
        }
    }

    // The exact fields of each vendor, on one stderr line that names INFO.
    let dd = fleet.intake.datadog_entries();
    let e = dd
        .iter()
        .find(|e| e["message"] == "INFO:agent:r1 python info 7" && e["host"] == "replica-2")
        .unwrap();
    assert_eq!(
        (
            e["ddsource"].as_str(),
            e["service"].as_str(),
            e["stream"].as_str(),
            e["status"].as_str()
        ),
        (
            Some(AGENT),
            Some("cloud.livekit.io"),
            Some("stderr"),
            Some("info")
        )
    );

    let sentry = fleet.intake.entries(Vendor::Sentry);
    let e = &sentry
        .iter()
        .find(|e| {
            e.value["body"] == "INFO:agent:r1 python info 7"
                && e.value["attributes"]["server_name"]["value"] == "replica-2"
        })
        .unwrap()
        .value;
    let attr = |n: &str| e["attributes"][n]["value"].as_str().map(str::to_string);
    assert_eq!(attr("logger").as_deref(), Some(AGENT));
    assert_eq!(attr("environment").as_deref(), Some("production"));
    assert_eq!(attr("sentry.environment").as_deref(), Some("production"));
    assert_eq!(attr("stream").as_deref(), Some("stderr"));
    assert_eq!(e["level"], "info");
    assert_eq!(e["trace_id"].as_str().map(str::len), Some(32));

    let nr = fleet.intake.entries(Vendor::NewRelic);
    let e = &nr
        .iter()
        .find(|e| {
            e.value["message"] == "INFO:agent:r1 python info 7"
                && e.value["hostname"] == "replica-2"
        })
        .unwrap()
        .value;
    assert_eq!(
        (
            e["service_name"].as_str(),
            e["source"].as_str(),
            e["stream"].as_str(),
            e["level"].as_str()
        ),
        (
            Some(AGENT),
            Some("cloud.livekit.io"),
            Some("stderr"),
            Some("info")
        )
    );

    // Levels from the line: JSON warn on stdout, traceback on stderr.
    let e = dd
        .iter()
        .find(|e| {
            e["message"]
                .as_str()
                .is_some_and(|m| m.contains("r1 json 3"))
        })
        .unwrap();
    assert_eq!(e["status"], "warn");
    let e = dd
        .iter()
        .find(|e| e["message"] == "ValueError: r1 boom")
        .unwrap();
    assert_eq!(e["status"], "error");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_failing_vendor_does_not_hold_back_the_others_and_a_restart_loses_nothing() {
    let Some(mut fleet) = fleet().await else {
        return;
    };
    let lines = 100;
    let count = expected_count(lines);
    let others = ["sentry", "newrelic", "cloudwatch"];

    // Datadog answers 500 to everything while round r2 is shipped.
    fleet
        .intake
        .inject(Fault::until_cleared(500).for_vendor(Vendor::Datadog))
        .unwrap();
    let start = Instant::now();
    run_round(&fleet, "r2", lines).await;
    let others_done = wait_for_round(&fleet, &others, "r2", count, Duration::from_secs(120)).await;
    let latency = start.elapsed();
    let got = fleet.received().await;
    assert!(
        others_done,
        "the other vendors got their lines while Datadog failed: {:?}",
        others
            .iter()
            .map(|v| of_round(&got[v], "r2").len())
            .collect::<Vec<_>>()
    );
    assert!(
        of_round(&got["datadog"], "r2").is_empty(),
        "Datadog is still failing"
    );
    println!("while Datadog answered 500: {count} lines reached sentry, newrelic and cloudwatch in {latency:?} (from the first write)");

    // Round r3 is shipped across a SIGKILL and restart of the gateway.
    let mut shims = Vec::new();
    for replica in REPLICAS {
        let mut shim = fleet
            .shim(replica)
            .spawn_sh(&format!("sleep 0.3; {}", script("r3", lines)));
        let pipes = capture(&mut shim);
        shims.push((shim, pipes));
    }
    tokio::time::sleep(Duration::from_millis(400)).await;
    fleet.gateway.kill9();
    fleet.gateway.restart();
    for (shim, _) in &mut shims {
        assert!(wait_exit(shim, Duration::from_secs(120)).await.success());
    }
    fleet.intake.clear_faults();

    let all = ["datadog", "sentry", "newrelic", "cloudwatch"];
    for round in ["r2", "r3"] {
        let arrived = wait_for_round(&fleet, &all, round, count, Duration::from_secs(180)).await;
        let got = fleet.received().await;
        for vendor in all {
            let received = of_round(&got[vendor], round);
            let unique: std::collections::HashSet<_> = received.iter().collect();
            println!(
                "{round} {vendor}: sent {count}, delivered {}, duplicates {}",
                unique.len(),
                received.len() - unique.len()
            );
            assert!(
                arrived,
                "{round}: {vendor} has {} of {count}\n{}",
                unique.len(),
                fleet.gateway.log()
            );
            assert_eq!(unique.len(), count, "{round}: {vendor} lost lines");
        }
    }
}
