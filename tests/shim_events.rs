//! What the shim ships of an agent's output, end to end (shim → gateway →
//! intakes, and `tail`): secrets the agent prints are masked before they
//! leave (`--redact auto`, the default) while its own terminal shows them,
//! and with `--multiline auto` a traceback arrives as one event at level
//! error.

mod common;
mod moto;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use logdrain_test_intake::{Fault, Vendor};
use serde_json::Value;

const OPENAI_KEY: &str = "sk-proj-Zq8wX3vN7mK2pL9rT4yBvalue";

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|w| w == needle.as_bytes())
}

/// Every file under `dir` holding `needle`.
fn files_holding(dir: &Path, needle: &str) -> Vec<String> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            found.extend(files_holding(&path, needle));
        } else if contains(&std::fs::read(&path).unwrap(), needle) {
            found.push(path.display().to_string());
        }
    }
    found
}

/// The agent's entries (not the shim's own lines) on `stream`, in order.
fn agent_entries(entries: &[Value], stream: &str) -> Vec<Value> {
    entries
        .iter()
        .filter(|e| e["stream"] == stream && e["logdrain"]["origin"] != "shim")
        .cloned()
        .collect()
}

fn messages(entries: &[Value]) -> Vec<String> {
    entries
        .iter()
        .map(|e| e["message"].as_str().unwrap_or_default().to_owned())
        .collect()
}

/// Waits until the intake holds an agent entry on `stream` whose message
/// satisfies `done`; returns every entry.
async fn wait_for_message(
    intake: &logdrain_test_intake::Intake,
    gateway: &Gateway,
    stream: &str,
    done: impl Fn(&str) -> bool,
) -> Vec<Value> {
    let arrived = wait_until(Duration::from_secs(60), || {
        messages(&agent_entries(&intake.datadog_entries(), stream))
            .iter()
            .any(|m| done(m))
    })
    .await;
    let entries = intake.datadog_entries();
    assert!(arrived, "{entries:#?}\n{}", gateway.log());
    entries
}

/// `logdrain-gateway tail` of `agent_id`, its output lines kept as they
/// come; killed on drop.
struct Tail {
    child: std::process::Child,
    lines: Arc<Mutex<Vec<String>>>,
}

impl Tail {
    fn start(gateway: &Gateway, agent_id: &str) -> Tail {
        let mut child = Command::new(bin("logdrain-gateway"))
            .args(["tail", "--agent-id", agent_id, "--gateway", &gateway.url()])
            .env("LOGDRAIN_TOKEN", token(agent_id))
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let kept = Arc::clone(&lines);
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                kept.lock().unwrap().push(line);
            }
        });
        Tail { child, lines }
    }

    fn output(&self) -> Vec<String> {
        self.lines.lock().unwrap().clone()
    }

    async fn wait_for(&self, line: &str) -> Vec<String> {
        let seen = wait_until(Duration::from_secs(60), || {
            self.output().iter().any(|l| l == line)
        })
        .await;
        assert!(seen, "tail never showed {line:?}: {:?}", self.output());
        self.output()
    }
}

impl Drop for Tail {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_the_agent_prints_reach_no_intake_queue_tail_or_log_but_its_own_stdout_shows_them_and_status_counts_them(
) {
    let intake = intake().await;
    // New Relic refuses the key, so the queue keeps every line on disk.
    intake
        .inject(Fault::until_cleared(401).for_vendor(Vendor::NewRelic))
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("gw");
    let mut gateway = Gateway::start_with(
        &data_dir,
        &intake.base_url(),
        "127.0.0.1:0",
        "127.0.0.1:0",
        vec![
            ("LOGDRAIN_LOG".into(), "debug".into()),
            ("LOGDRAIN_NEWRELIC_URL".into(), intake.base_url()),
        ],
    );
    // The agent prints its secrets only once `tail` has shown its first
    // line, so tail sees everything that is shipped.
    let tail = Tail::start(&gateway, "agent-redact");
    let go = dir.path().join("go");
    let script = format!(
        r#"echo waiting; while [ ! -e {go:?} ]; do sleep 0.05; done
echo "$OPENAI_API_KEY"; echo "$DATADOG_TOKEN" >&2
echo "{{\"openai\":\"$OPENAI_API_KEY\",\"dd\":\"key=$DATADOG_TOKEN;\"}}"
echo "done""#,
        go = go.to_str().unwrap()
    );
    let mut shim = ShimBuilder::new(&gateway.url(), "agent-redact", "replica-1")
        .env("DATADOG_TOKEN", DD_KEY)
        .env("OPENAI_API_KEY", OPENAI_KEY)
        .env(
            "NEW_RELIC_LICENSE_KEY",
            "nr-secret-H4jK7lP0oI9uY6tT5rE2wQNRAL",
        )
        .spawn_sh(&script);
    let (out, err) = capture(&mut shim);
    tail.wait_for("replica-1 stdout waiting").await;
    std::fs::write(&go, b"").unwrap();
    assert!(wait_exit(&mut shim, Duration::from_secs(60))
        .await
        .success());
    let stdout = out.join().unwrap();
    let stderr = err.join().unwrap();
    assert!(contains(&stdout, OPENAI_KEY) && contains(&stdout, DD_KEY));
    assert!(
        contains(&stderr, DD_KEY),
        "the agent's stderr passes through"
    );

    let entries = wait_for_message(&intake, &gateway, "stdout", |m| m == "done").await;
    assert_eq!(
        messages(&agent_entries(&entries, "stdout")),
        [
            "waiting",
            "[redacted:OPENAI_API_KEY]",
            r#"{"openai":"[redacted:OPENAI_API_KEY]","dd":"key=[redacted:DATADOG_TOKEN];"}"#,
            "done",
        ]
    );
    let entries = wait_for_message(&intake, &gateway, "stderr", |_| true).await;
    assert_eq!(
        messages(&agent_entries(&entries, "stderr")),
        ["[redacted:DATADOG_TOKEN]"]
    );

    let tailed = tail.wait_for("replica-1 stdout done").await;
    assert!(
        tailed.contains(&"replica-1 stdout [redacted:OPENAI_API_KEY]".to_string()),
        "{tailed:?}"
    );
    drop(tail);

    // The masked counts reach the status, by name, in JSON and on the page.
    let status = agent_status(&gateway, "agent-redact").await;
    assert_eq!(
        status["agents"][0]["replicas"][0]["shim_redacted_total"],
        serde_json::json!({"DATADOG_TOKEN": 2, "OPENAI_API_KEY": 2}),
        "{status}"
    );
    let page = reqwest::Client::new()
        .get(format!("http://{}/?agent_id=agent-redact", gateway.http))
        .bearer_auth(token("agent-redact"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        page.contains("<td>DATADOG_TOKEN 2, OPENAI_API_KEY 2</td>"),
        "{page}"
    );

    assert!(gateway.terminate().success());
    let intake_text = format!("{entries:?}");
    for secret in [OPENAI_KEY, DD_KEY] {
        assert!(!intake_text.contains(secret), "intake: {secret}");
        assert!(!tailed.iter().any(|l| l.contains(secret)), "tail: {secret}");
        assert!(!page.contains(secret), "status page: {secret}");
        assert!(!gateway.log().contains(secret), "gateway log: {secret}");
        let files = files_holding(&data_dir, secret);
        assert!(files.is_empty(), "{secret} in {files:?}");
    }
    assert!(
        !files_holding(&data_dir, "[redacted:OPENAI_API_KEY]").is_empty(),
        "the scan reads the queue's files"
    );
}

const PYTHON_CHAINED: &str = r#"
import sys, traceback, json

def load():
    return json.loads("not json")

def main():
    try:
        load()
    except ValueError as err:
        raise RuntimeError("config unreadable") from err

try:
    main()
except RuntimeError:
    traceback.print_exc(file=sys.stdout)
print("after on stdout", flush=True)
main()
"#;

const SENTRY_KEY: &str = "0123456789abcdef0123456789abcdef";
const NR_KEY: &str = "0123456789abcdef0123456789abcdef0123NRAL";

/// CloudWatch's events of `agent_id`'s replica `replica` as moto stores
/// them, the shim's own lines left out: (stream, message), read through the
/// CloudWatch Logs API.
async fn cloudwatch_events(moto: &str, agent_id: &str, replica: &str) -> Vec<(String, String)> {
    let page: Value = reqwest::Client::new()
        .post(moto)
        .header("X-Amz-Target", "Logs_20140328.GetLogEvents")
        .header("Content-Type", "application/x-amz-json-1.1")
        .header(
            "Authorization",
            "AWS4-HMAC-SHA256 Credential=AKIDLOGDRAINTEST/20260101/us-west-2/logs/aws4_request, \
             SignedHeaders=host, Signature=0",
        )
        .body(
            serde_json::json!({
                "logGroupName": format!("livekit/{agent_id}"),
                "logStreamName": replica,
                "startFromHead": true,
            })
            .to_string(),
        )
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap_or_default();
    page["events"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .map(|event| serde_json::from_str(event["message"].as_str().unwrap_or("{}")).unwrap())
        .filter(|message: &Value| message["logdrain"]["origin"] != "shim")
        .map(|message| {
            let text = |v: &Value| v.as_str().unwrap_or_default().to_owned();
            (text(&message["stream"]), text(&message["message"]))
        })
        .collect()
}

/// Each vendor receives the traceback the agent printed on stderr as one
/// event at level error (CloudWatch has no level field), and the one it
/// printed on stdout whole, before the line that followed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_python_chained_exception_arrives_at_every_vendor_as_one_event_at_level_error() {
    let mut config = logdrain_test_intake::IntakeConfig::with_datadog_keys([DD_KEY]);
    config.sentry.keys = vec![SENTRY_KEY.to_string()];
    config.newrelic.keys = vec![NR_KEY.to_string()];
    let intake = logdrain_test_intake::Intake::start(config).await.unwrap();
    let Some(moto) = moto::MotoServer::shared() else {
        return;
    };
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
    let mut shim = ShimBuilder::new(&gateway.url(), "agent-py", "replica-1")
        .env("DATADOG_TOKEN", DD_KEY)
        .env(
            "SENTRY_DSN",
            &logdrain_test_intake::sentry::dsn(&intake.base_url(), SENTRY_KEY, 42),
        )
        .env("NEW_RELIC_LICENSE_KEY", NR_KEY)
        .env("AWS_ACCESS_KEY_ID", "AKIDLOGDRAINTEST")
        .env("AWS_SECRET_ACCESS_KEY", "logdrain-test-secret")
        .env("AWS_REGION", "us-west-2")
        .env("LOGDRAIN_MULTILINE", "auto")
        // Events end with the agent, however slow the machine.
        .env("LOGDRAIN_MULTILINE_FLUSH", "10s")
        .spawn_args(&["python3", "-c", PYTHON_CHAINED]);
    let (out, err) = capture(&mut shim);
    assert_eq!(
        wait_exit(&mut shim, Duration::from_secs(60)).await.code(),
        Some(1)
    );
    let stdout = String::from_utf8(out.join().unwrap()).unwrap();
    let stderr = String::from_utf8(err.join().unwrap()).unwrap();
    let traceback = stdout.strip_suffix("after on stdout\n").unwrap().trim_end();
    let on_stderr = stderr
        .lines()
        .filter(|l| !l.starts_with("agent-shim: "))
        .collect::<Vec<_>>()
        .join("\n");
    assert!(on_stderr.starts_with("Traceback (most recent call last):"));
    assert!(on_stderr.contains("The above exception was the direct cause"));

    // Datadog.
    let entries = wait_for_message(&intake, &gateway, "stderr", |m| {
        m.ends_with("config unreadable")
    })
    .await;
    let dd_stdout = agent_entries(&entries, "stdout");
    assert_eq!(messages(&dd_stdout), [traceback, "after on stdout"]);
    // On stdout, the level comes from the exception line, the last.
    assert_eq!(dd_stdout[0]["status"], "error");
    let dd_stderr = agent_entries(&entries, "stderr");
    assert_eq!(messages(&dd_stderr), [on_stderr.as_str()]);
    assert_eq!(dd_stderr[0]["status"], "error");

    // Sentry and New Relic: (stream, message, level) of the agent's lines.
    let sentry = || -> Vec<(String, String, String)> {
        intake
            .entries(Vendor::Sentry)
            .iter()
            .filter(|e| e.value["attributes"]["logdrain.origin"]["value"] != "shim")
            .map(|e| {
                let text = |v: &Value| v.as_str().unwrap_or_default().to_owned();
                let v = &e.value;
                (
                    text(&v["attributes"]["stream"]["value"]),
                    text(&v["body"]),
                    text(&v["level"]),
                )
            })
            .collect()
    };
    let newrelic = || -> Vec<(String, String, String)> {
        intake
            .entries(Vendor::NewRelic)
            .iter()
            .filter(|e| e.value["logdrain.origin"] != "shim")
            .map(|e| {
                let text = |v: &Value| v.as_str().unwrap_or_default().to_owned();
                let v = &e.value;
                (text(&v["stream"]), text(&v["message"]), text(&v["level"]))
            })
            .collect()
    };
    for (vendor, received) in [
        ("sentry", &sentry as &dyn Fn() -> _),
        ("newrelic", &newrelic),
    ] {
        let arrived = wait_until(Duration::from_secs(60), || {
            received()
                .iter()
                .any(|(_, m, _)| m.ends_with("config unreadable"))
        })
        .await;
        let got = received();
        assert!(arrived, "{vendor}: {got:#?}\n{}", gateway.log());
        let stderr_events: Vec<_> = got.iter().filter(|(s, _, _)| s == "stderr").collect();
        assert_eq!(stderr_events.len(), 1, "{vendor}: {got:#?}");
        assert_eq!(stderr_events[0].1, on_stderr, "{vendor}");
        assert_eq!(stderr_events[0].2, "error", "{vendor}");
        let stdout_events: Vec<_> = got.iter().filter(|(s, _, _)| s == "stdout").collect();
        assert_eq!(stdout_events[0].1, traceback, "{vendor}");
        assert_eq!(stdout_events[0].2, "error", "{vendor}");
    }

    // CloudWatch (moto).
    let arrived = wait_until(Duration::from_secs(60), || {
        let url = moto.url();
        tokio::task::block_in_place(|| {
            tokio::runtime::Handle::current().block_on(cloudwatch_events(
                &url,
                "agent-py",
                "replica-1",
            ))
        })
        .iter()
        .any(|(_, m)| m.ends_with("config unreadable"))
    })
    .await;
    let events = cloudwatch_events(&moto.url(), "agent-py", "replica-1").await;
    assert!(arrived, "cloudwatch: {events:#?}\n{}", gateway.log());
    let cw_stderr: Vec<&String> = events
        .iter()
        .filter(|(s, _)| s == "stderr")
        .map(|(_, m)| m)
        .collect();
    assert_eq!(cw_stderr, [&on_stderr]);
    assert!(events.contains(&("stdout".to_string(), traceback.to_string())));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn java_go_and_node_traces_are_grouped_and_stdout_never_mixes_with_stderr() {
    let intake = intake().await;
    let dir = tempfile::tempdir().unwrap();
    let gateway = Gateway::start(&dir.path().join("gw"), &intake.base_url());
    // stderr and stdout alternate line by line; stdout's lines are indented
    // like continuations, so mixing would show.
    let script = r#"
e() { printf '%s\n' "$1" >&2; }
o() { printf '%s\n' "$1"; }
e 'Exception in thread "main" java.lang.IllegalStateException: boom'
o '  out 1'
e '	at com.example.Main.run(Main.java:10)'
o '  out 2'
e 'Caused by: java.io.IOException: disk full'
e '	... 1 more'
e 'panic: runtime error: index out of range [5] with length 3'
o '  out 3'
e ''
e 'goroutine 1 [running]:'
e 'main.main()'
e '	/app/main.go:20 +0x25'
e 'TypeError: Cannot read properties of undefined'
o 'out 4'
e '    at handler (/app/index.js:7:19)'
e 'last line'
"#;
    let mut shim = ShimBuilder::new(&gateway.url(), "agent-traces", "replica-1")
        .env("DATADOG_TOKEN", DD_KEY)
        .env("LOGDRAIN_MULTILINE", "auto")
        // Events end with the agent, however slow the machine.
        .env("LOGDRAIN_MULTILINE_FLUSH", "10s")
        .spawn_sh(script);
    let (out, err) = capture(&mut shim);
    assert!(wait_exit(&mut shim, Duration::from_secs(60))
        .await
        .success());
    let _ = (out.join(), err.join());
    wait_for_message(&intake, &gateway, "stderr", |m| m == "last line").await;
    let entries = wait_for_message(&intake, &gateway, "stdout", |m| m == "out 4").await;
    assert_eq!(
        messages(&agent_entries(&entries, "stderr")),
        [
            "Exception in thread \"main\" java.lang.IllegalStateException: boom\n\tat com.example.Main.run(Main.java:10)\nCaused by: java.io.IOException: disk full\n\t... 1 more",
            "panic: runtime error: index out of range [5] with length 3\n\ngoroutine 1 [running]:\nmain.main()\n\t/app/main.go:20 +0x25",
            "TypeError: Cannot read properties of undefined\n    at handler (/app/index.js:7:19)",
            "last line",
        ]
    );
    assert_eq!(
        messages(&agent_entries(&entries, "stdout")),
        ["  out 1\n  out 2\n  out 3", "out 4"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_10000_line_traceback_is_cut_into_marked_parts_and_the_next_line_arrives_while_the_agent_runs(
) {
    let intake = intake().await;
    let dir = tempfile::tempdir().unwrap();
    let gateway = Gateway::start(&dir.path().join("gw"), &intake.base_url());
    let stop = dir.path().join("stop");
    // The agent keeps running after its last line until the test has seen
    // that line at the intake: only the flush time can have shipped it.
    let script = format!(
        r#"import os, sys, time
lines = ["Traceback (most recent call last):"]
lines += ['  File "deep.py", line %d, in f' % i for i in range(10000)]
lines += ["RecursionError: maximum recursion depth exceeded", "next ordinary line"]
sys.stderr.write("\n".join(lines) + "\n")
sys.stderr.flush()
while not os.path.exists({stop:?}):
    time.sleep(0.05)
"#,
        stop = stop.to_str().unwrap()
    );
    let mut shim = ShimBuilder::new(&gateway.url(), "agent-deep", "replica-1")
        .env("DATADOG_TOKEN", DD_KEY)
        .env("LOGDRAIN_MULTILINE", "auto")
        // Far longer than a stall between two reads of the traceback, which
        // is written at once; the next line can only arrive by this flush.
        .env("LOGDRAIN_MULTILINE_FLUSH", "5s")
        .spawn_args(&["python3", "-c", &script]);
    let (out, err) = capture(&mut shim);
    let entries =
        wait_for_message(&intake, &gateway, "stderr", |m| m == "next ordinary line").await;
    std::fs::write(&stop, b"").unwrap();
    assert!(wait_exit(&mut shim, Duration::from_secs(60))
        .await
        .success());
    let stderr = String::from_utf8(err.join().unwrap()).unwrap();
    let _ = out.join();

    let on_stderr = agent_entries(&entries, "stderr");
    let (next, parts) = on_stderr.split_last().unwrap();
    assert_eq!(next["message"], "next ordinary line");
    assert_eq!(parts.len(), 11, "10,002 lines in parts of at most 1,000");
    for (i, part) in parts.iter().enumerate() {
        assert_eq!(part["logdrain"]["part"], i, "{part}");
        assert_eq!(
            part["logdrain"]["more_parts"],
            i + 1 < parts.len(),
            "{part}"
        );
    }
    let joined = messages(parts).join("\n");
    assert_eq!(
        format!("{joined}\nnext ordinary line\n"),
        stderr
            .lines()
            .filter(|l| !l.starts_with("agent-shim: "))
            .map(|l| format!("{l}\n"))
            .collect::<String>()
    );
}
