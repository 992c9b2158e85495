//! `logdrain-gateway status`, `test-send` and the status page, tried as an
//! operator would, with each failure made on purpose: a revoked key (the
//! intake answers 403), a vendor that is down (500), a DSN typo, a missing
//! secret and a wrong AWS region. Every case asserts that the output names
//! the cause, in text and in JSON, and that no secret value appears.

mod common;
mod moto;

use std::process::Command;
use std::time::Duration;

use common::*;
use logdrain_gateway::status::{render_text, Report};
use logdrain_test_intake::{Fault, Intake, IntakeConfig, Vendor};
use serde_json::Value;

const ADMIN_TOKEN: &str = "admin-token-for-status-tests-0123";
const REVOKED_DD_KEY: &str = "revoked-datadog-key-0123456789";
const SENTRY_KEY: &str = "0123456789abcdef0123456789abcdef";
const AWS_SECRET: &str = "status-test-aws-secret-value";

async fn intake() -> Intake {
    let mut config = IntakeConfig::with_datadog_keys([DD_KEY]);
    config.sentry.keys = vec![SENTRY_KEY.to_string()];
    Intake::start(config).await.expect("start intakes")
}

fn gateway(dir: &tempfile::TempDir, intake: &Intake, extra: &[(&str, &str)]) -> Gateway {
    let mut env = vec![("LOGDRAIN_ADMIN_TOKEN".to_string(), ADMIN_TOKEN.to_string())];
    env.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    Gateway::start_with(
        &dir.path().join("gw"),
        &intake.base_url(),
        "127.0.0.1:0",
        "127.0.0.1:0",
        env,
    )
}

/// Runs `logdrain-gateway <args>` against the gateway's HTTP port with
/// `env`; returns (success, stdout, stderr).
fn cli(gateway: &Gateway, args: &[&str], env: &[(&str, &str)]) -> (bool, String, String) {
    let out = Command::new(bin("logdrain-gateway"))
        .args(args)
        .arg("--gateway-http")
        .arg(format!("http://{}", gateway.http))
        .env_remove("LOGDRAIN_TOKEN")
        .env_remove("LOGDRAIN_ADMIN_TOKEN")
        .envs(env.iter().copied())
        .output()
        .expect("run logdrain-gateway");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `status --agent-id --json`, with the agent's own token, and the text
/// `status` prints for that same report. One read: the route's state moves
/// on its own, so two reads need not agree.
fn status_of(gateway: &Gateway, agent: &str) -> (String, Value) {
    let token = token(agent);
    let env = [("LOGDRAIN_TOKEN", token.as_str())];
    let (ok, json, err) = cli(gateway, &["status", "--agent-id", agent, "--json"], &env);
    assert!(ok, "status --json failed: {err}");
    let report: Report = serde_json::from_str(&json).expect("status --json prints a report");
    let json: Value = serde_json::from_str(&json).expect("status --json prints JSON");
    assert_eq!(json["schema"], 1);
    (render_text(&report), json)
}

/// Polls `status` until the agent's only destination is in `state`.
async fn wait_for_state(gateway: &Gateway, agent: &str, state: &str) -> (String, Value) {
    let mut last = None;
    for _ in 0..300 {
        let (text, json) = status_of(gateway, agent);
        if json["agents"][0]["destinations"][0]["state"] == state {
            return (text, json);
        }
        last = Some(text);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!(
        "{agent} never reached {state}; last status:\n{}\n{}",
        last.unwrap_or_default(),
        gateway.log()
    );
}

fn assert_no_secret(outputs: &[&str], secrets: &[&str]) {
    for output in outputs {
        for secret in secrets {
            assert!(
                !output.contains(secret),
                "a secret value appears in the output:\n{output}"
            );
        }
    }
}

/// Runs a shim that prints `lines` lines and exits, and waits for it.
async fn ship(shim: ShimBuilder, lines: u32) {
    let mut child = shim.spawn_sh(&format!("seq -f 'status line %g' 1 {lines}"));
    let _pipes = capture(&mut child);
    let status = wait_exit(&mut child, Duration::from_secs(60)).await;
    assert!(status.success(), "the shim ends once its lines are queued");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_revoked_datadog_key_shows_credentials_rejected_with_the_403_and_where_to_look() {
    let intake = intake().await;
    let dir = tempfile::tempdir().unwrap();
    let gateway = gateway(&dir, &intake, &[]);
    let agent = "agent-revoked";
    ship(
        ShimBuilder::new(&gateway.url(), agent, "replica-1")
            .env("DATADOG_TOKEN", REVOKED_DD_KEY)
            .env("DATADOG_REGION", "eu"),
        5,
    )
    .await;

    let (text, json) = wait_for_state(&gateway, agent, "credentials_rejected").await;
    let d = &json["agents"][0]["destinations"][0];
    assert_eq!(d["destination"], "datadog");
    assert_eq!(d["health"], "failing");
    assert_eq!(
        d["enabled_by"],
        serde_json::json!(["DATADOG_REGION", "DATADOG_TOKEN"])
    );
    let error = d["last_error"].as_str().unwrap();
    assert!(
        error.contains("403") && error.contains("Forbidden"),
        "{error}"
    );
    assert_eq!(d["location"]["fields"]["site"], "datadoghq.eu");
    assert_eq!(d["location"]["fields"]["query"], format!("source:{agent}"));
    assert_eq!(d["queued_lines"], 5);
    for expected in [
        "credentials_rejected",
        "403",
        "datadoghq.eu",
        "source:agent-revoked",
        "DATADOG_TOKEN",
    ] {
        assert!(text.contains(expected), "{expected:?} missing in:\n{text}");
    }
    let replicas = &json["agents"][0]["replicas"];
    assert_eq!(replicas[0]["agent_server_id"], "replica-1");
    assert_eq!(replicas[0]["shim_dropped_total"], 0);

    // test-send gets the same answer from the vendor, with the stored key.
    let token = token(agent);
    let (ok, sent, err) = cli(
        &gateway,
        &["test-send", "--agent-id", agent],
        &[("LOGDRAIN_TOKEN", &token)],
    );
    assert!(ok, "test-send failed: {err}");
    assert!(
        sent.contains("datadog") && sent.contains("refused") && sent.contains("403"),
        "{sent}"
    );
    assert_no_secret(
        &[&text, &json.to_string(), &sent, &gateway.log()],
        &[REVOKED_DD_KEY],
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn test_send_delivers_one_marked_line_and_prints_accepted() {
    let intake = intake().await;
    let dir = tempfile::tempdir().unwrap();
    let gateway = gateway(&dir, &intake, &[]);
    let agent = "agent-test-send";
    ship(
        ShimBuilder::new(&gateway.url(), agent, "replica-1").env("DATADOG_TOKEN", DD_KEY),
        2,
    )
    .await;
    assert!(
        wait_until(Duration::from_secs(60), || dd_messages(
            &intake,
            "replica-1"
        )
        .len()
            == 2)
        .await,
        "the shim's lines are delivered first"
    );
    let (ok, sent, err) = cli(
        &gateway,
        &["test-send", "--agent-id", agent, "--json"],
        &[("LOGDRAIN_ADMIN_TOKEN", ADMIN_TOKEN)],
    );
    assert!(ok, "test-send failed: {err}");
    let answer: Value = serde_json::from_str(&sent).unwrap();
    assert_eq!(answer["results"][0]["outcome"], "accepted", "{answer}");
    let line = answer["line"].as_str().unwrap().to_string();
    assert!(
        line.starts_with("logdrain test line from logdrain-gateway test-send at "),
        "{line}"
    );
    let test_lines = dd_messages(&intake, "logdrain-test-send");
    assert_eq!(
        test_lines,
        vec![line],
        "exactly the marked line arrives, once"
    );
    // The route's own delivery was not disturbed: its counters are the shim's.
    let (_, json) = status_of(&gateway, agent);
    assert_eq!(json["agents"][0]["destinations"][0]["delivered_lines"], 2);
    assert_no_secret(&[&sent, &json.to_string()], &[DD_KEY]);

    // A second test-send within the interval is refused and sends nothing.
    let (ok, again, err) = cli(
        &gateway,
        &["test-send", "--agent-id", agent, "--json"],
        &[("LOGDRAIN_ADMIN_TOKEN", ADMIN_TOKEN)],
    );
    assert!(!ok, "{again}");
    assert!(
        err.contains("429") && err.contains("one per agent per 10s"),
        "{err}"
    );
    assert_eq!(dd_messages(&intake, "logdrain-test-send").len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_vendor_that_is_down_shows_retrying_with_a_growing_queue_and_an_old_line() {
    let intake = intake().await;
    intake
        .inject(Fault::until_cleared(500).for_vendor(Vendor::Sentry))
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let gateway = gateway(&dir, &intake, &[]);
    let agent = "agent-down";
    let dsn = logdrain_test_intake::sentry::dsn(&intake.base_url(), SENTRY_KEY, 42);
    ship(
        ShimBuilder::new(&gateway.url(), agent, "replica-1").env("SENTRY_DSN", &dsn),
        4,
    )
    .await;
    let (_, first) = wait_for_state(&gateway, agent, "retrying").await;
    assert_eq!(first["agents"][0]["destinations"][0]["queued_lines"], 4);
    ship(
        ShimBuilder::new(&gateway.url(), agent, "replica-2").env("SENTRY_DSN", &dsn),
        3,
    )
    .await;
    // The oldest line ages while the vendor stays down.
    let mut last = (String::new(), Value::Null);
    for _ in 0..300 {
        last = status_of(&gateway, agent);
        let d = &last.1["agents"][0]["destinations"][0];
        if d["queued_lines"] == 7 && d["oldest_undelivered_age_seconds"].as_u64() >= Some(1) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (text, json) = last;
    let d = &json["agents"][0]["destinations"][0];
    assert_eq!(d["queued_lines"], 7, "{text}");
    assert!(
        d["oldest_undelivered_age_seconds"].as_u64() >= Some(1),
        "{text}"
    );
    assert_eq!(d["state"], "retrying");
    assert_eq!(d["health"], "retrying");
    assert!(d["last_error"].as_str().unwrap().contains("500"), "{d}");
    assert_eq!(d["location"]["fields"]["project_id"], "42");
    assert!(
        text.contains("retrying") && text.contains("Sentry project 42"),
        "{text}"
    );
    let servers: Vec<&str> = json["agents"][0]["replicas"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["agent_server_id"].as_str().unwrap())
        .collect();
    assert_eq!(servers, ["replica-1", "replica-2"]);
    assert_no_secret(&[&text, &json.to_string()], &[SENTRY_KEY]);

    intake.clear_faults();
    let (_, json) = wait_for_state(&gateway, agent, "delivering").await;
    assert!(json["agents"][0]["destinations"][0]["last_success_unix"].is_u64());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_dsn_typo_shows_invalid_secret_naming_sentry_dsn() {
    let intake = intake().await;
    let dir = tempfile::tempdir().unwrap();
    let gateway = gateway(&dir, &intake, &[]);
    let agent = "agent-dsn-typo";
    // The project id is missing: a typo'd copy of a DSN.
    let typo = format!("http://{SENTRY_KEY}@{}/", intake.addr());
    ship(
        ShimBuilder::new(&gateway.url(), agent, "replica-1").env("SENTRY_DSN", &typo),
        2,
    )
    .await;
    let (text, json) = wait_for_state(&gateway, agent, "invalid_secret").await;
    let d = &json["agents"][0]["destinations"][0];
    assert_eq!(d["destination"], "sentry");
    assert_eq!(d["health"], "failing");
    assert!(
        d["last_error"].as_str().unwrap().contains("SENTRY_DSN"),
        "{d}"
    );
    assert!(d["location"].is_null());
    assert_eq!(d["queued_lines"], 2, "the lines are kept");
    assert!(
        text.contains("invalid_secret") && text.contains("SENTRY_DSN"),
        "{text}"
    );
    assert_no_secret(&[&text, &json.to_string()], &[SENTRY_KEY]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_missing_secret_leaves_the_destination_off_and_status_points_at_the_shim_check() {
    let intake = intake().await;
    let dir = tempfile::tempdir().unwrap();
    let gateway = gateway(&dir, &intake, &[]);
    let agent = "agent-half";
    // AWS_SECRET_ACCESS_KEY is missing.
    ship(
        ShimBuilder::new(&gateway.url(), agent, "replica-1")
            .env("AWS_ACCESS_KEY_ID", "AKIDSTATUSTEST"),
        1,
    )
    .await;
    let (_, json) = status_of(&gateway, agent);
    assert_eq!(json["agents"][0]["destinations"], serde_json::json!([]));
    // The text the CLI prints itself (nothing here changes between reads).
    let token = token(agent);
    let (ok, text, err) = cli(
        &gateway,
        &["status", "--agent-id", agent],
        &[("LOGDRAIN_TOKEN", &token)],
    );
    assert!(ok, "status failed: {err}");
    assert_eq!(
        json["agents"][0]["replicas"][0]["agent_server_id"],
        "replica-1"
    );
    assert!(
        text.contains("no destination is switched on") && text.contains("agent-shim --check"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_wrong_aws_region_is_named_in_where_to_look() {
    let Some(moto) = moto::MotoServer::shared() else {
        return;
    };
    let intake = intake().await;
    let dir = tempfile::tempdir().unwrap();
    let gateway = gateway(&dir, &intake, &[("LOGDRAIN_CLOUDWATCH_URL", &moto.url())]);
    let agent = "agent-region";
    ship(
        ShimBuilder::new(&gateway.url(), agent, "replica-1")
            .env("AWS_ACCESS_KEY_ID", "AKIDSTATUSTEST")
            .env("AWS_SECRET_ACCESS_KEY", AWS_SECRET)
            .env("AWS_REGION", "us-weast-1"),
        1,
    )
    .await;
    let (text, json) = status_of(&gateway, agent);
    let d = &json["agents"][0]["destinations"][0];
    assert_eq!(d["destination"], "cloudwatch");
    assert_eq!(
        d["location"]["fields"]["log_group"],
        format!("livekit/{agent}")
    );
    assert_eq!(d["location"]["fields"]["unknown_region"], "us-weast-1");
    assert!(
        text.contains("us-weast-1 is not an AWS region this gateway knows: check AWS_REGION"),
        "{text}"
    );
    assert_no_secret(&[&text, &json.to_string()], &[AWS_SECRET]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_agent_at_once_needs_the_admin_token_and_names_the_flag_when_unset() {
    let intake = intake().await;
    let dir = tempfile::tempdir().unwrap();
    let gateway = gateway(&dir, &intake, &[]);
    ship(
        ShimBuilder::new(&gateway.url(), "agent-one", "replica-1").env("DATADOG_TOKEN", DD_KEY),
        1,
    )
    .await;
    let (ok, text, err) = cli(
        &gateway,
        &["status"],
        &[("LOGDRAIN_ADMIN_TOKEN", ADMIN_TOKEN)],
    );
    assert!(ok, "{err}");
    assert!(text.contains("AGENT agent-one"), "{text}");
    let wrong = token("agent-one");
    let (ok, _, err) = cli(&gateway, &["status"], &[("LOGDRAIN_ADMIN_TOKEN", &wrong)]);
    assert!(!ok && err.contains("401"), "{err}");

    let other = tempfile::tempdir().unwrap();
    let plain = Gateway::start(&other.path().join("gw"), &intake.base_url());
    let (ok, _, err) = cli(
        &plain,
        &["status"],
        &[("LOGDRAIN_ADMIN_TOKEN", ADMIN_TOKEN)],
    );
    assert!(
        !ok && err.contains("403") && err.contains("--admin-token"),
        "{err}"
    );
    assert_no_secret(&[&err], &[ADMIN_TOKEN]);
}

/// Debian's chromium, or `None` (the test skips) without it.
fn chromium() -> Option<String> {
    for name in ["chromium", "chromium-browser"] {
        if Command::new(name)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
        {
            return Some(name.to_string());
        }
    }
    tool::missing(
        "chromium",
        "apt-get install -y --no-install-recommends chromium",
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_status_page_shows_a_failing_route_in_a_real_browser() {
    let Some(chromium) = chromium() else { return };
    let intake = intake().await;
    let dir = tempfile::tempdir().unwrap();
    let gateway = gateway(&dir, &intake, &[]);
    let agent = "agent-page";
    ship(
        ShimBuilder::new(&gateway.url(), agent, "replica-1").env("DATADOG_TOKEN", REVOKED_DD_KEY),
        3,
    )
    .await;
    wait_for_state(&gateway, agent, "credentials_rejected").await;

    // Without a token the page is refused.
    let refused = reqwest::get(format!("http://{}/?agent_id={agent}", gateway.http))
        .await
        .unwrap();
    assert_eq!(refused.status(), 401);

    let shot = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/status-page.png");
    let profile = tempfile::tempdir().unwrap();
    let url = format!(
        "http://{}/?agent_id={agent}&token={}",
        gateway.http,
        token(agent)
    );
    let run = |extra: &str| {
        Command::new(&chromium)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--window-size=1400,700",
                &format!("--user-data-dir={}", profile.path().display()),
                extra,
                &url,
            ])
            .output()
            .expect("run chromium")
    };
    let dom = run("--dump-dom");
    assert!(
        dom.status.success(),
        "{}",
        String::from_utf8_lossy(&dom.stderr)
    );
    let dom = String::from_utf8_lossy(&dom.stdout).into_owned();
    for expected in [
        "agent agent-page",
        "class=\"state failing\">credentials_rejected",
        "DATADOG_TOKEN",
        "403 Forbidden",
        "replica-1",
        "source:agent-page",
    ] {
        assert!(
            dom.contains(expected),
            "{expected:?} missing in the page:\n{dom}"
        );
    }
    assert_no_secret(&[&dom], &[REVOKED_DD_KEY]);
    let screenshot = run(&format!("--screenshot={}", shot.display()));
    assert!(
        screenshot.status.success(),
        "{}",
        String::from_utf8_lossy(&screenshot.stderr)
    );
    assert!(
        std::fs::metadata(&shot).is_ok_and(|m| m.len() > 0),
        "no screenshot at {}",
        shot.display()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_replicas_shim_dropped_count_is_shown_once_it_reconnects() {
    const LINES: usize = 5_000;
    let intake = intake().await;
    let dir = tempfile::tempdir().unwrap();
    let mut gateway = gateway(&dir, &intake, &[]);
    gateway.kill9();
    let stop = dir.path().join("stop");
    // 64 KiB holds under a thousand of these lines: the shim drops the rest.
    let script = format!(
        "seq -f 'line %g' 1 {LINES}; while [ ! -e '{}' ]; do sleep 0.1; done",
        stop.display()
    );
    let mut shim = ShimBuilder::new(&gateway.url(), "agent-drops", "replica-1")
        .env("DATADOG_TOKEN", DD_KEY)
        .env("LOGDRAIN_BUFFER_BYTES", "64KiB")
        .env("LOGDRAIN_MAX_LINE_BYTES", "1KiB")
        .spawn_sh(&script);
    let passthrough = Passthrough::start(&mut shim);
    assert!(
        wait_until(Duration::from_secs(60), || passthrough.count() == LINES).await,
        "the agent wrote everything while the gateway was down"
    );
    gateway.restart();
    std::fs::write(&stop, b"").unwrap();
    let exit = wait_exit(&mut shim, Duration::from_secs(60)).await;
    let (_, stderr) = passthrough.finish();
    assert!(exit.success(), "shim exit {exit}: {stderr}");

    let mut last = Value::Null;
    for _ in 0..300 {
        last = status_of(&gateway, "agent-drops").1;
        if last["agents"][0]["destinations"][0]["queued_lines"] == 0
            && last["agents"][0]["destinations"][0]["delivered_lines"].as_u64() > Some(0)
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let received = dd_messages(&intake, "replica-1")
        .iter()
        .filter(|m| m.starts_with("line "))
        .count();
    let replica = &last["agents"][0]["replicas"][0];
    assert_eq!(replica["agent_server_id"], "replica-1");
    let dropped = replica["shim_dropped_total"].as_u64().unwrap_or(0) as usize;
    assert!(dropped > 0, "the buffer overflowed: {last}");
    assert_eq!(
        dropped,
        LINES - received,
        "the count is exactly the lines that never arrived"
    );
}
