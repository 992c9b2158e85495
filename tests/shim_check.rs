//! `agent-shim --check` against a real gateway: the report names what is on,
//! half-configured or invalid, the gateway's answer to the token, and the
//! exit status says whether anything is wrong. A check never runs the agent
//! and never counts as a replica's stream.

mod common;

use std::process::Output;

use common::*;

/// A Datadog API key the shared rules accept.
const DD_TOKEN: &str = "0123456789abcdef0123456789abcdef";

/// Runs `agent-shim --check` (as `LOGDRAIN_CHECK=true`, the way a
/// deployment's own command line is checked) for `agent-a` against
/// `gateway` with `env`, and a command after `--` that would leave a mark if
/// it ran.
fn check(gateway: &str, env: &[(&str, &str)], mark: &std::path::Path) -> Output {
    let mut shim = ShimBuilder::new(gateway, "agent-a", "replica-1").env("LOGDRAIN_CHECK", "true");
    for (k, v) in env {
        shim = shim.env(k, v);
    }
    let mut child = shim.spawn_args(&["touch", mark.to_str().unwrap()]);
    let (out, err) = capture(&mut child);
    let status = child.wait().expect("wait for agent-shim --check");
    Output {
        status,
        stdout: out.join().unwrap(),
        stderr: err.join().unwrap(),
    }
}

fn report(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).to_string()
}

/// The report line of one destination.
fn destination_line<'a>(report: &'a str, name: &str) -> &'a str {
    report
        .lines()
        .find(|l| l.trim_start().starts_with(&format!("{name} ")))
        .unwrap_or_else(|| panic!("no line for {name} in:\n{report}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_good_configuration_exits_0_lists_destinations_and_opens_no_stream() {
    let dir = tempfile::tempdir().unwrap();
    let gateway = Gateway::start(&dir.path().join("gw"), "http://127.0.0.1:9");
    let mark = dir.path().join("agent-ran");
    let output = check(
        &gateway.url(),
        &[
            ("DATADOG_TOKEN", DD_TOKEN),
            ("DATADOG_REGION", "eu"),
            (
                "NEW_RELIC_LICENSE_KEY",
                "eu01xx0123456789abcdef0123456789abcdNRAL",
            ),
        ],
        &mark,
    );
    let text = report(&output);
    assert_eq!(output.status.code(), Some(0), "{text}\n{output:?}");
    assert_eq!(
        destination_line(&text, "datadog").trim(),
        "datadog     on, switched on by DATADOG_TOKEN, DATADOG_REGION"
    );
    assert!(
        destination_line(&text, "newrelic").contains("on, switched on by NEW_RELIC_LICENSE_KEY")
    );
    assert_eq!(
        destination_line(&text, "cloudwatch").trim(),
        "cloudwatch  off"
    );
    assert!(
        text.contains(&format!(
            "{}  ok: token accepted; the gateway makes routes to datadog, newrelic",
            gateway.url()
        )),
        "{text}"
    );
    assert!(
        text.ends_with("result: ok, everything checked is usable\n"),
        "{text}"
    );
    assert!(
        !text.contains(DD_TOKEN),
        "a secret value was printed:\n{text}"
    );
    assert!(!mark.exists(), "--check must not run the agent");

    let metrics = gateway.metrics().await;
    assert_eq!(metric_value(&metrics, "logdrain_active_streams", &[]), 0.0);
    let status = http_get_with_token(&gateway, "agent-a").await;
    assert_eq!(
        status["routes"],
        serde_json::json!([]),
        "a check creates no route: {status}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_aws_key_id_without_its_secret_is_half_configured_and_exits_1() {
    let dir = tempfile::tempdir().unwrap();
    let gateway = Gateway::start(&dir.path().join("gw"), "http://127.0.0.1:9");
    let output = check(
        &gateway.url(),
        &[
            ("DATADOG_TOKEN", DD_TOKEN),
            ("AWS_ACCESS_KEY_ID", "AKIAIOSFODNN7EXAMPLE"),
        ],
        &dir.path().join("mark"),
    );
    let text = report(&output);
    assert_eq!(output.status.code(), Some(1), "{text}");
    let line = destination_line(&text, "cloudwatch");
    assert!(
        line.contains("half-configured: AWS_ACCESS_KEY_ID set but AWS_SECRET_ACCESS_KEY missing"),
        "{line}"
    );
    assert!(!text.contains("AKIAIOSFODNN7EXAMPLE"), "{text}");
    // The gateway agrees: only Datadog makes a route.
    assert!(
        text.contains("the gateway makes routes to datadog\n"),
        "{text}"
    );
    assert!(text.contains("result: 1 problem"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dsn_typo_is_invalid_at_the_shim_and_the_gateway_and_its_value_is_not_printed() {
    let dir = tempfile::tempdir().unwrap();
    let gateway = Gateway::start(&dir.path().join("gw"), "http://127.0.0.1:9");
    let dsn = "htps://f00dfeedpublickey@o1.ingest.sentry.io/42";
    let output = check(
        &gateway.url(),
        &[("SENTRY_DSN", dsn)],
        &dir.path().join("mark"),
    );
    let text = report(&output);
    assert_eq!(output.status.code(), Some(1), "{text}");
    let line = destination_line(&text, "sentry");
    assert!(
        line.contains("invalid: SENTRY_DSN cannot be used"),
        "{line}"
    );
    assert!(
        text.contains(&format!(
            "{}  cannot deliver to sentry: SENTRY_DSN",
            gateway.url()
        )),
        "the gateway's own verdict is shown: {text}"
    );
    for secret_part in ["f00dfeedpublickey", "htps://", "o1.ingest.sentry.io/42"] {
        assert!(
            !text.contains(secret_part),
            "{secret_part} printed:\n{text}"
        );
        assert!(!String::from_utf8_lossy(&output.stderr).contains(secret_part));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_token_is_reported_as_the_gateways_unauthenticated_answer() {
    let dir = tempfile::tempdir().unwrap();
    let gateway = Gateway::start(&dir.path().join("gw"), "http://127.0.0.1:9");
    let wrong = token("agent-b");
    let output = check(
        &gateway.url(),
        &[("DATADOG_TOKEN", DD_TOKEN), ("LOGDRAIN_TOKEN", &wrong)],
        &dir.path().join("mark"),
    );
    let text = report(&output);
    assert_eq!(output.status.code(), Some(1), "{text}");
    assert!(
        text.contains(&format!(
            "{}  refused (UNAUTHENTICATED): the token is not valid for agent id \"agent-a\"",
            gateway.url()
        )),
        "{text}"
    );
    assert!(
        text.contains("logdrain-gateway token --agent-id agent-a"),
        "{text}"
    );
    assert!(!text.contains(&wrong), "the token was printed:\n{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_to_a_plaintext_gateway_is_reported_as_a_tls_failure() {
    let dir = tempfile::tempdir().unwrap();
    let gateway = Gateway::start(&dir.path().join("gw"), "http://127.0.0.1:9");
    let url = format!("https://{}", gateway.grpc);
    let output = check(
        &url,
        &[("DATADOG_TOKEN", DD_TOKEN)],
        &dir.path().join("mark"),
    );
    let text = report(&output);
    assert_eq!(output.status.code(), Some(1), "{text}");
    assert!(
        text.contains(&format!("{url}  TLS handshake failed: ")),
        "{text}"
    );
}

/// The agent's status from the gateway's HTTP endpoint, with its token.
async fn http_get_with_token(gateway: &Gateway, agent: &str) -> serde_json::Value {
    let url = format!("http://{}/v1/agents/{agent}/status", gateway.http);
    reqwest::Client::new()
        .get(&url)
        .bearer_auth(token(agent))
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET {url}: {e}"))
        .json()
        .await
        .unwrap_or_else(|e| panic!("GET {url} as JSON: {e}"))
}
