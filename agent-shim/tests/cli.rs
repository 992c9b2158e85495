//! The agent-shim binary without a gateway: the gateway URL points at a
//! closed port, so these pin what the agent and its operator see no matter
//! what happens to delivery. `--drain-timeout` is short only so the tests
//! end quickly; nothing here asserts on timing.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

const SHIM: &str = env!("CARGO_BIN_EXE_agent-shim");

/// A port nothing listens on: bound, then released.
fn closed_port_url() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    drop(listener);
    format!("http://127.0.0.1:{port}")
}

/// The shim with a clean environment, a closed gateway and a short drain.
fn shim() -> Command {
    let mut command = Command::new(SHIM);
    command
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("LOGDRAIN_GATEWAY", closed_port_url())
        .env("LOGDRAIN_TOKEN", "test-token")
        .env("LOGDRAIN_AGENT_ID", "agent-1")
        .env("LOGDRAIN_DRAIN_TIMEOUT", "200ms")
        .stdin(Stdio::null());
    command
}

fn run_shim(args: &[&str]) -> Output {
    shim().args(args).output().unwrap()
}

/// The shim's stderr without its own `agent-shim: ` diagnostics.
fn agent_stderr(output: &Output) -> Vec<u8> {
    output
        .stderr
        .split_inclusive(|&b| b == b'\n')
        .filter(|line| !line.starts_with(b"agent-shim: "))
        .flatten()
        .copied()
        .collect()
}

#[test]
fn stdout_passes_through_byte_for_byte() {
    let dir = tempfile::tempdir().unwrap();
    // Every byte value, CRLF, NUL, invalid UTF-8, a long line, and no
    // trailing newline.
    let mut content: Vec<u8> = (0..=255u8).cycle().take(300_000).collect();
    content.extend_from_slice(b"\r\nplain\n\xff\xfe\0tail without newline");
    let path = dir.path().join("out.bin");
    std::fs::write(&path, &content).unwrap();
    let output = run_shim(&["--", "cat", path.to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(0), "{output:?}");
    assert!(
        output.stdout == content,
        "stdout differs from the agent's output"
    );
}

#[test]
fn stderr_passes_through_unchanged() {
    let output = run_shim(&["--", "sh", "-c", r"printf 'warn\r\n\377bad\n' >&2"]);
    assert_eq!(output.status.code(), Some(0));
    assert_eq!(agent_stderr(&output), b"warn\r\n\xffbad\n");
    assert!(output.stdout.is_empty());
}

#[test]
fn exit_code_propagates() {
    let output = run_shim(&["--", "sh", "-c", "exit 3"]);
    assert_eq!(output.status.code(), Some(3));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("agent-shim: agent exited with code 3"),
        "{stderr}"
    );
}

#[test]
fn agent_killed_by_sigkill_exits_137_and_names_the_signal() {
    let output = run_shim(&["--", "sh", "-c", "kill -KILL $$"]);
    assert_eq!(output.status.code(), Some(137));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("killed by signal SIGKILL (9)"), "{stderr}");
}

#[test]
fn missing_command_exits_127() {
    let output = run_shim(&["--", "agent-shim-test-no-such-command"]);
    assert_eq!(output.status.code(), Some(127));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains(
            "agent-shim: cannot start \"agent-shim-test-no-such-command\": No such file or directory"
        ),
        "{stderr}"
    );
}

#[test]
fn non_executable_command_exits_126() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("agent");
    std::fs::write(&path, "#!/bin/sh\necho never\n").unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    let output = run_shim(&["--", path.to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(126));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("agent-shim: cannot start"), "{stderr}");
    assert!(stderr.contains("Permission denied"), "{stderr}");
    assert!(output.stdout.is_empty());
}

#[test]
fn help_mentions_every_environment_variable() {
    let output = Command::new(SHIM).arg("--help").output().unwrap();
    assert_eq!(output.status.code(), Some(0));
    let help = String::from_utf8(output.stdout).unwrap();
    for var in [
        "LOGDRAIN_GATEWAY",
        "LOGDRAIN_TOKEN",
        "LOGDRAIN_AGENT_ID",
        "LOGDRAIN_AGENT_SERVER_ID",
        "LOGDRAIN_BUFFER_BYTES",
        "LOGDRAIN_DRAIN_TIMEOUT",
        "LOGDRAIN_MAX_LINE_BYTES",
        "LOGDRAIN_BATCH_LINES",
        "LOGDRAIN_BATCH_LINGER",
        "LOGDRAIN_GATEWAY_CA_FILE",
        "LOGDRAIN_CLIENT_CERT",
        "LOGDRAIN_CLIENT_KEY",
        "LOGDRAIN_SUBREAPER",
    ]
    .iter()
    .chain(logdrain::SECRET_VARS)
    {
        assert!(help.contains(var), "--help does not mention {var}");
    }
}

#[test]
fn help_documents_the_exit_status_of_a_refusal_for_good() {
    let output = Command::new(SHIM).arg("--help").output().unwrap();
    let help = String::from_utf8(output.stdout).unwrap();
    // Clap wraps the text to the terminal's width.
    let help = help.split_whitespace().collect::<Vec<_>>().join(" ");
    assert!(
        help.contains("77 if the agent exited 0 but every gateway refused"),
        "{help}"
    );
}

#[test]
fn help_never_shows_the_token_value() {
    let output = Command::new(SHIM)
        .arg("--help")
        .env("LOGDRAIN_TOKEN", "super-secret-token")
        .output()
        .unwrap();
    assert!(!String::from_utf8_lossy(&output.stdout).contains("super-secret-token"));
}

#[test]
fn agent_does_not_see_the_ingest_token_but_sees_everything_else() {
    let output = shim()
        .env("OTHER_SETTING", "kept")
        .env("DATADOG_TOKEN", "dd")
        .args([
            "--",
            "sh",
            "-c",
            "echo \"token=${LOGDRAIN_TOKEN-unset} other=$OTHER_SETTING dd=$DATADOG_TOKEN id=$LOGDRAIN_AGENT_ID\"",
        ])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(0));
    assert_eq!(
        String::from_utf8_lossy(&output.stdout),
        "token=unset other=kept dd=dd id=agent-1\n"
    );
}

#[test]
fn token_given_as_an_option_is_also_kept_from_the_agent() {
    let output = shim()
        .env_remove("LOGDRAIN_TOKEN")
        .args([
            "--token",
            "from-flag",
            "--",
            "sh",
            "-c",
            "echo ${LOGDRAIN_TOKEN-unset}",
        ])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&output.stdout), "unset\n");
}

#[test]
fn missing_agent_id_is_a_clear_error_and_the_agent_does_not_run() {
    let output = shim()
        .env_remove("LOGDRAIN_AGENT_ID")
        .args(["--", "sh", "-c", "echo ran"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("--agent-id") && stderr.contains("LOGDRAIN_AGENT_ID"),
        "{stderr}"
    );
    assert!(output.stdout.is_empty(), "the agent must not run");
}

#[test]
fn an_agent_id_the_gateway_would_refuse_exits_2_naming_the_allowed_characters() {
    for bad in ["my/agent", "café"] {
        let output = shim()
            .env("LOGDRAIN_AGENT_ID", bad)
            .args(["--", "sh", "-c", "echo ran"])
            .output()
            .unwrap();
        assert_eq!(output.status.code(), Some(2), "{bad}: {output:?}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            stderr.contains("--agent-id") && stderr.contains("A-Z a-z 0-9 . _ -"),
            "{stderr}"
        );
        assert!(output.stdout.is_empty(), "the agent must not run");
    }
}

#[test]
fn bad_option_values_are_named_with_the_fix() {
    let output = run_shim(&["--buffer-bytes", "lots", "--", "true"]);
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("\"lots\"") && stderr.contains("64MiB"),
        "{stderr}"
    );

    let output = shim()
        .env("LOGDRAIN_GATEWAY", "localhost:4317")
        .args(["--", "true"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("\"localhost:4317\"") && stderr.contains("http://HOST:PORT"),
        "{stderr}"
    );
}

#[test]
fn wrong_secrets_are_warned_about_at_start_and_the_agent_still_runs() {
    let dsn = "https://leakykey@sentry.example.com/1";
    // An API key pasted into the region variable: named, never echoed.
    let pasted = "pastedkey0123456789abcdef01234567";
    let output = shim()
        .env("DATADOG_TOKEN", "x")
        .env("DATADOG_REGION", pasted)
        .env("SENTRY_DSN", dsn)
        .args(["--", "sh", "-c", "echo ran; exit 3"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(3), "{output:?}");
    assert_eq!(output.stdout, b"ran\n");
    let stderr = String::from_utf8_lossy(&output.stderr);
    let warning = |secret: &str| {
        let prefix = format!("agent-shim: warning: {secret} ");
        let found = stderr.lines().find(|line| line.starts_with(&prefix));
        found.unwrap_or_else(|| panic!("no warning about {secret} in:\n{stderr}"))
    };
    assert_eq!(
        warning("DATADOG_REGION"),
        "agent-shim: warning: DATADOG_REGION is not a Datadog region; \
         use one of us1, us3, us5, us1-fed, us2-fed, eu, ap1, ap2, uk1; \
         lines are still sent and kept by the gateway until a deployment brings valid secrets"
    );
    assert!(
        warning("SENTRY_DSN").starts_with("agent-shim: warning: SENTRY_DSN cannot be used: "),
        "{stderr}"
    );
    assert!(!stderr.contains("leakykey"), "{stderr}");
    assert!(!stderr.contains(pasted), "{stderr}");
    assert!(!stderr.contains("sentry.example.com"), "{stderr}");
    // The agent's own stderr is untouched by the warnings.
    assert!(agent_stderr(&output).is_empty(), "{stderr}");
}

#[test]
fn valid_secrets_give_no_warning() {
    let output = shim()
        .env("DATADOG_TOKEN", "0123456789abcdef0123456789abcdef")
        .env("DATADOG_REGION", "eu")
        .args(["--", "true"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(0));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!stderr.contains("agent-shim: warning:"), "{stderr}");
}

#[test]
fn unreachable_gateway_is_reported_on_stderr_only() {
    let output = run_shim(&["--", "sh", "-c", "echo hello"]);
    assert_eq!(output.status.code(), Some(0));
    assert_eq!(output.stdout, b"hello\n");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("cannot connect"), "{stderr}");
    assert!(stderr.contains("not delivered"), "{stderr}");
    assert!(
        !stderr.contains("test-token"),
        "the token must never be printed"
    );
}

/// Reads the child's stdout line by line until `want` shows up.
fn wait_for_line(reader: &mut impl BufRead, want: &str) -> String {
    let mut line = String::new();
    loop {
        line.clear();
        let read = reader.read_line(&mut line).unwrap();
        assert!(read > 0, "stdout ended before {want:?}");
        if line.contains(want) {
            return line;
        }
    }
}

#[test]
fn sigterm_is_forwarded_to_the_agent() {
    let mut child = shim()
        .args([
            "--",
            "sh",
            "-c",
            "trap 'echo got TERM; exit 0' TERM; echo ready; while :; do sleep 0.05; done",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    wait_for_line(&mut stdout, "ready");
    let pid = child.id() as i32;
    assert_eq!(send_signal(pid, "TERM"), 0);
    wait_for_line(&mut stdout, "got TERM");
    assert_eq!(child.wait().unwrap().code(), Some(0));
}

#[test]
fn agent_killed_by_forwarded_sigterm_exits_143() {
    let mut child = shim()
        .args(["--", "sh", "-c", "echo ready; exec sleep 30"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    wait_for_line(&mut stdout, "ready");
    assert_eq!(send_signal(child.id() as i32, "TERM"), 0);
    let output = child.wait_with_output().unwrap();
    assert_eq!(output.status.code(), Some(143));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("killed by signal SIGTERM (15)"), "{stderr}");
}

/// Sends a signal with the `kill` utility (keeps this test crate free of
/// unsafe code); returns its exit code.
fn send_signal(pid: i32, signal: &str) -> i32 {
    Command::new("kill")
        .args([format!("-{signal}"), pid.to_string()])
        .status()
        .unwrap()
        .code()
        .unwrap_or(-1)
}

#[test]
fn an_agent_that_ignores_sigterm_dies_with_its_sigkilled_shim() {
    // The agent inherits the shim's stdin: here the write end of a pipe, so
    // the test's read end ends once the shim and the agent are both gone.
    let (mut held, stdin) = std::io::pipe().unwrap();
    let mut child = shim()
        .args([
            "--",
            "sh",
            "-c",
            "trap '' TERM INT HUP; echo $$; exec sleep 600",
        ])
        .stdin(stdin)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let agent = wait_for_line(&mut stdout, "").trim().to_string();
    child.kill().unwrap();
    child.wait().unwrap();
    let (gone, ended) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = std::io::Read::read_to_end(&mut held, &mut Vec::new());
        let _ = gone.send(());
    });
    // A bound that turns a surviving agent into a failure, not a timing.
    let died = ended.recv_timeout(Duration::from_secs(60)).is_ok();
    if let (false, Ok(pid @ 1..)) = (died, agent.parse::<i32>()) {
        send_signal(pid, "KILL");
    }
    assert!(died, "the agent (pid {agent}) outlived its SIGKILLed shim");
}

#[test]
fn subreaper_reaps_orphans_without_stealing_the_agents_status() {
    // The orphan outlives its parent subshell, so it is re-parented to the
    // shim; it prints its pid and its new parent, then exits. The agent
    // waits for a line on stdin, so the shim is alive while we look.
    let script = r#"( sh -c 'sleep 0.3; read -r _ _ _ ppid _ < /proc/$$/stat; echo "orphan $$ parent $ppid"' & )
read -r _
exit 4"#;
    let mut child = shim()
        .args(["--subreaper", "--", "sh", "-c", script])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let shim_pid = child.id();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let line = wait_for_line(&mut stdout, "orphan ");
    let fields: Vec<&str> = line.split_whitespace().collect();
    let (orphan, parent) = (fields[1], fields[3]);
    assert_eq!(
        parent,
        shim_pid.to_string(),
        "the orphan was not re-parented to the shim"
    );

    // A zombie keeps its /proc entry until its parent reaps it.
    let limit = Instant::now() + Duration::from_secs(30);
    while std::path::Path::new(&format!("/proc/{orphan}")).exists() {
        assert!(Instant::now() < limit, "orphan {orphan} was never reaped");
        std::thread::sleep(Duration::from_millis(10));
    }

    child.stdin.take().unwrap().write_all(b"done\n").unwrap();
    assert_eq!(child.wait().unwrap().code(), Some(4));
}

#[test]
fn as_pid_1_orphans_are_reaped_and_the_agents_code_is_kept() {
    // Needs a new PID namespace (root or user namespaces); where `unshare`
    // cannot make one, there is no way to be PID 1 and nothing to test.
    let probe = Command::new("unshare")
        .args(["--pid", "--fork", "--mount-proc", "true"])
        .stderr(Stdio::null())
        .status();
    if !probe.is_ok_and(|status| status.success()) {
        eprintln!("skipped: cannot create a PID namespace with unshare here");
        return;
    }
    // The orphan exits at once; its zombie is re-parented to PID 1 (the
    // shim). The agent looks for up to 30 s whether it is reaped.
    let script = r#"d=$(mktemp -d)
( sh -c 'exit 0' & echo $! > "$d/orphan" )
o=$(cat "$d/orphan"); rm -r "$d"
i=0
while [ -e "/proc/$o" ] && [ $i -lt 300 ]; do sleep 0.1; i=$((i+1)); done
if [ -e "/proc/$o" ]; then echo "orphan $o not reaped"; else echo "orphan reaped"; fi
echo "agent pid $$"
exit 5"#;
    let gateway = closed_port_url();
    let output = Command::new("unshare")
        .args(["--pid", "--fork", "--mount-proc", SHIM])
        .args(["--gateway", &gateway, "--token", "t", "--agent-id", "a"])
        .args(["--drain-timeout", "200ms", "--", "sh", "-c", script])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&output.stdout),
        "orphan reaped\nagent pid 2\n"
    );
    assert_eq!(output.status.code(), Some(5));
}

#[test]
fn check_with_the_gateway_down_names_its_address_and_exits_1() {
    let gateway = closed_port_url();
    let dir = tempfile::tempdir().unwrap();
    let mark = dir.path().join("agent-ran");
    let output = shim()
        .env("LOGDRAIN_GATEWAY", &gateway)
        .env("DATADOG_TOKEN", "0123456789abcdef0123456789abcdef")
        .args(["--check", "--", "touch", mark.to_str().unwrap()])
        .output()
        .unwrap();
    let report = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(1), "{report}\n{output:?}");
    let line = report
        .lines()
        .find(|l| l.contains(&gateway))
        .unwrap_or_else(|| panic!("the gateway's address is not named:\n{report}"));
    assert!(line.contains("unreachable"), "{line}");
    assert!(line.contains("Connection refused"), "{line}");
    assert!(report.contains("datadog     on"), "{report}");
    assert!(!mark.exists(), "--check must not run the agent");
}

#[test]
fn check_without_any_secret_says_nothing_will_be_delivered_and_exits_1() {
    let output = run_shim(&["--check"]);
    let report = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(1), "{report}");
    for destination in ["datadog", "cloudwatch", "sentry", "newrelic"] {
        assert!(
            report
                .lines()
                .any(|l| l.trim() == format!("{destination:<11} off").trim_end()),
            "{destination} is not reported off:\n{report}"
        );
    }
    assert!(
        report.contains("nothing will be delivered: no destination is on"),
        "{report}"
    );
}

#[test]
fn check_reports_a_configuration_error_instead_of_contacting_gateways() {
    let output = shim()
        .env_remove("LOGDRAIN_TOKEN")
        .env(
            "SENTRY_DSN",
            "https://0123456789abcdef0123456789abcdef@o1.ingest.sentry.io/5",
        )
        .arg("--check")
        .output()
        .unwrap();
    let report = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(1), "{report}");
    assert!(
        report.contains("sentry      on, switched on by SENTRY_DSN"),
        "{report}"
    );
    assert!(
        report.contains("configuration: no ingest token given"),
        "{report}"
    );
    assert!(report.contains("gateways: not contacted"), "{report}");
}

#[test]
fn the_agent_cannot_read_the_token_in_the_shims_proc_files() {
    let token = "proc-visible-token-0123456789abcdef";
    let read = "cat /proc/$PPID/environ; echo; cat /proc/$PPID/cmdline | tr '\\0' ' '; echo; echo read-done";
    for via_option in [false, true] {
        let mut command = shim();
        command.env_remove("LOGDRAIN_TOKEN");
        if via_option {
            command.args(["--token", token]);
        } else {
            command.env("LOGDRAIN_TOKEN", token);
        }
        let output = command.args(["--", "sh", "-c", read]).output().unwrap();
        let stdout = String::from_utf8_lossy(&output.stdout);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stdout.contains("read-done"), "{output:?}");
        // The command line was read (it is readable), without the value.
        assert!(
            stdout.contains("--drain-timeout") || stdout.contains("agent-shim"),
            "{stdout}"
        );
        assert!(
            !stdout.contains(token),
            "via option: {via_option}\n{stdout}"
        );
        assert!(!stderr.contains(token), "{stderr}");
    }
}

#[test]
fn check_lists_the_names_it_would_mask_never_their_values() {
    let output = shim()
        .env("OPENAI_API_KEY", "sk-never-printed-0123")
        .env("DEEPGRAM_API_KEY", "short")
        .env("HOME_DIR", "/not/a/secret/value")
        .arg("--check")
        .output()
        .unwrap();
    let report = String::from_utf8_lossy(&output.stdout);
    let line = report
        .lines()
        .find(|l| l.starts_with("redaction: "))
        .unwrap_or_else(|| panic!("{report}"));
    assert_eq!(
        line,
        "redaction: auto; the values of LOGDRAIN_TOKEN, OPENAI_API_KEY are masked in what is shipped"
    );
    assert!(!report.contains("sk-never-printed-0123") && !report.contains("test-token"));
}

#[test]
fn a_multiline_pattern_that_does_not_compile_is_refused_with_exit_2_and_the_fix() {
    let output = shim()
        .env("LOGDRAIN_MULTILINE", "pattern:^(unclosed")
        .args(["--", "sh", "-c", "echo never"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert!(output.stdout.is_empty(), "the agent must not run");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("LOGDRAIN_MULTILINE")
            && stderr.contains("regex")
            && stderr.contains("use off, auto or pattern:REGEX"),
        "{stderr}"
    );
}
