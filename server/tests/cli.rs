//! The `logdrain-gateway` command line, run as a user runs it.

use std::process::Command;

fn gateway() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_logdrain-gateway"));
    cmd.env_clear();
    cmd
}

#[test]
fn serve_help_documents_every_environment_variable() {
    let out = gateway().args(["serve", "--help"]).output().unwrap();
    assert!(out.status.success());
    let help = String::from_utf8(out.stdout).unwrap();
    for var in [
        "LOGDRAIN_GRPC_LISTEN",
        "LOGDRAIN_HTTP_LISTEN",
        "LOGDRAIN_DATA_DIR",
        "LOGDRAIN_SIGNING_KEY",
        "LOGDRAIN_DATADOG_URL",
        "LOGDRAIN_SHUTDOWN_GRACE",
        "LOGDRAIN_TLS_CERT",
        "LOGDRAIN_TLS_KEY",
        "LOGDRAIN_TLS_CLIENT_CA",
    ] {
        assert!(
            help.contains(var),
            "serve --help does not mention {var}:\n{help}"
        );
    }
}

#[test]
fn token_is_stable_for_the_same_key_and_differs_per_agent() {
    let run = |agent: &str| {
        let out = gateway()
            .args(["token", "--agent-id", agent])
            .env("LOGDRAIN_SIGNING_KEY", "a-signing-key-of-enough-length")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap().trim().to_string()
    };
    assert_eq!(run("agent-a"), run("agent-a"));
    assert_ne!(run("agent-a"), run("agent-b"));
}

#[test]
fn token_key_is_generated_into_the_data_dir_when_unset() {
    let dir = tempfile::tempdir().unwrap();
    let run = || {
        let out = gateway()
            .args(["token", "--agent-id", "agent-a", "--data-dir"])
            .arg(dir.path())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    assert_eq!(run(), run());
    assert!(dir.path().join("signing.key").exists());
}

#[test]
fn token_for_an_invalid_agent_id_names_the_problem() {
    let out = gateway()
        .args(["token", "--agent-id", "../etc"])
        .env("LOGDRAIN_SIGNING_KEY", "a-signing-key-of-enough-length")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("agent id") && err.contains("A-Z a-z 0-9"),
        "{err}"
    );
}

#[test]
fn a_bad_duration_is_refused_with_the_expected_form() {
    let out = gateway()
        .args(["serve", "--shutdown-grace", "soon"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("\"soon\"") && err.contains("10s"), "{err}");
}

#[test]
fn a_busy_listen_address_is_reported_with_the_flag_to_change() {
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = busy.local_addr().unwrap().to_string();
    let dir = tempfile::tempdir().unwrap();
    let out = gateway()
        .args([
            "serve",
            "--grpc-listen",
            &addr,
            "--http-listen",
            "127.0.0.1:0",
            "--data-dir",
        ])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&addr) && err.contains("LOGDRAIN_GRPC_LISTEN"),
        "{err}"
    );
}

#[test]
fn serve_refuses_to_start_with_an_unreadable_tls_certificate_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing-cert.pem");
    let key = dir.path().join("key.pem");
    std::fs::write(&key, "not a key").unwrap();
    let out = gateway()
        .args([
            "serve",
            "--grpc-listen",
            "127.0.0.1:0",
            "--http-listen",
            "127.0.0.1:0",
        ])
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .arg("--tls-cert")
        .arg(&missing)
        .arg("--tls-key")
        .arg(&key)
        .env("LOGDRAIN_SIGNING_KEY", "a-signing-key-of-enough-length")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--tls-cert") && err.contains("missing-cert.pem"),
        "{err}"
    );
    assert!(out.stdout.is_empty(), "nothing was served");
}
