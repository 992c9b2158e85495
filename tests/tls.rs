//! TLS between shim, tail and gateway, with and without client certificates;
//! the gateway's HTTP endpoints over HTTPS.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::pki::{path, Pki};
use common::*;
use logdrain::v1::drain_client::DrainClient;
use logdrain::v1::TailRequest;

struct Setup {
    intake: logdrain_test_intake::Intake,
    pki: Pki,
    gateway: Gateway,
    _dir: tempfile::TempDir,
}

async fn setup(mutual: bool) -> Setup {
    let intake = intake().await;
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::generate(&dir.path().join("pki"));
    let gateway = Gateway::start_with(
        &dir.path().join("gw"),
        &intake.base_url(),
        "127.0.0.1:0",
        "127.0.0.1:0",
        pki.gateway_env(mutual),
    );
    Setup {
        intake,
        pki,
        gateway,
        _dir: dir,
    }
}

impl Setup {
    fn shim(&self, agent: &str, ca: &std::path::Path) -> ShimBuilder {
        ShimBuilder::new(&self.gateway.https_url(), agent, "replica-1")
            .env("DATADOG_TOKEN", DD_KEY)
            .env("LOGDRAIN_GATEWAY_CA_FILE", &path(ca))
    }

    async fn get(&self, endpoint: &str) -> reqwest::Response {
        let url = format!("{}{endpoint}", self.gateway.https_base());
        self.pki
            .http_client()
            .get(&url)
            .send()
            .await
            .unwrap_or_else(|e| panic!("GET {url}: {e:?}"))
    }

    async fn metrics(&self) -> String {
        self.get("/metrics").await.text().await.unwrap()
    }
}

/// Runs a shim whose agent writes two lines: (exit status, stderr).
async fn run_shim(shim: ShimBuilder, tag: &str) -> (std::process::ExitStatus, String) {
    let mut child = shim.spawn_sh(&format!("echo '{tag} 1'; echo '{tag} 2'"));
    let (_out, err) = capture(&mut child);
    let status = wait_exit(&mut child, Duration::from_secs(60)).await;
    (
        status,
        String::from_utf8_lossy(&err.join().unwrap()).into_owned(),
    )
}

/// A shim that will be refused gives up after a short drain (the default,
/// long drain is for shims expected to deliver).
fn refused(shim: ShimBuilder) -> ShimBuilder {
    shim.env("LOGDRAIN_DRAIN_TIMEOUT", "3s")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_shim_ships_over_tls_to_a_gateway_it_verifies_against_its_ca() {
    let s = setup(false).await;
    let (status, err) = run_shim(s.shim("agent-tls", &s.pki.ca), "over tls").await;
    assert!(status.success(), "{err}");
    assert!(!err.contains("not delivered"), "{err}");
    let arrived = wait_until(Duration::from_secs(60), || {
        dd_messages(&s.intake, "replica-1").len() >= 2
    })
    .await;
    assert!(arrived, "{}", s.gateway.log());
    assert_eq!(
        dd_messages(&s.intake, "replica-1"),
        ["over tls 1", "over tls 2"]
    );

    let metrics = s.metrics().await;
    assert_eq!(
        metric_value(
            &metrics,
            "logdrain_received_lines_total",
            &[("agent", "agent-tls")]
        ),
        2.0
    );
    assert_eq!(s.get("/readyz").await.text().await.unwrap(), "ready\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn plain_text_clients_are_refused_on_the_tls_ports() {
    let s = setup(false).await;
    let plain_http = reqwest::get(format!("http://{}/metrics", s.gateway.http)).await;
    assert!(
        plain_http.is_err(),
        "plain HTTP must not get an answer: {plain_http:?}"
    );

    let tail = TailRequest {
        token: token("agent-tls"),
        agent_id: "agent-tls".into(),
        local_only: false,
    };
    match DrainClient::connect(s.gateway.url()).await {
        Err(_) => {}
        Ok(mut client) => {
            let refused = client.tail(tail).await;
            assert!(refused.is_err(), "plain gRPC must not be served");
        }
    }
    assert_eq!(s.get("/healthz").await.status(), 200, "TLS still works");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_shim_that_does_not_trust_the_gateways_certificate_says_so_and_keeps_its_lines() {
    let s = setup(false).await;
    let (status, err) = run_shim(refused(s.shim("agent-tls", &s.pki.other_ca)), "untrusted").await;
    assert!(status.success(), "the agent's own exit code is kept: {err}");
    assert!(
        err.contains("invalid peer certificate: UnknownIssuer")
            && err.contains("--gateway-ca-file"),
        "the shim names the certificate problem and the fix: {err}"
    );
    assert!(
        err.contains("2 lines were not delivered"),
        "nothing was acked: {err}"
    );
    let metrics = s.metrics().await;
    assert_eq!(
        metric_value(&metrics, "logdrain_received_lines_total", &[]),
        0.0
    );
    assert!(s.intake.datadog_entries().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn with_client_certificates_required_only_shims_with_a_certificate_of_the_ca_deliver() {
    let s = setup(true).await;

    let (_, err) = run_shim(refused(s.shim("agent-mtls", &s.pki.ca)), "no cert").await;
    assert!(err.contains("2 lines were not delivered"), "{err}");
    assert!(
        err.contains("--client-cert"),
        "the refusal names the fix: {err}"
    );

    let stranger = s
        .shim("agent-mtls", &s.pki.ca)
        .env("LOGDRAIN_CLIENT_CERT", &path(&s.pki.stranger_cert))
        .env("LOGDRAIN_CLIENT_KEY", &path(&s.pki.stranger_key));
    let (_, err) = run_shim(refused(stranger), "stranger cert").await;
    assert!(err.contains("2 lines were not delivered"), "{err}");
    assert!(err.contains("--tls-client-ca"), "{err}");

    let trusted = s
        .shim("agent-mtls", &s.pki.ca)
        .env("LOGDRAIN_CLIENT_CERT", &path(&s.pki.client_cert))
        .env("LOGDRAIN_CLIENT_KEY", &path(&s.pki.client_key));
    let (status, err) = run_shim(trusted, "with cert").await;
    assert!(status.success() && !err.contains("not delivered"), "{err}");
    let arrived = wait_until(Duration::from_secs(60), || {
        dd_messages(&s.intake, "replica-1").len() >= 2
    })
    .await;
    assert!(arrived, "{}", s.gateway.log());
    assert_eq!(
        dd_messages(&s.intake, "replica-1"),
        ["with cert 1", "with cert 2"],
        "only the shim with the CA's certificate delivered"
    );
    // The HTTP listener asks for no client certificate.
    assert_eq!(s.get("/healthz").await.status(), 200);
}

fn tail(s: &Setup, client_cert: bool) -> Child {
    let mut cmd = Command::new(bin("logdrain-gateway"));
    cmd.args(["tail", "--agent-id", "agent-mtls", "--gateway"])
        .arg(s.gateway.https_url())
        .arg("--gateway-ca-file")
        .arg(&s.pki.ca)
        .env("LOGDRAIN_TOKEN", token("agent-mtls"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if client_cert {
        cmd.arg("--client-cert")
            .arg(&s.pki.client_cert)
            .arg("--client-key")
            .arg(&s.pki.client_key);
    }
    cmd.spawn().expect("spawn tail")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tail_follows_over_mutual_tls_with_its_client_certificate() {
    let s = setup(true).await;

    let mut refused = tail(&s, false);
    let status = wait_exit(&mut refused, Duration::from_secs(60)).await;
    assert!(!status.success(), "a tail without a certificate is refused");
    let err = stderr_of(&mut refused);
    assert!(
        err.contains("refused the tail") && err.contains("--client-cert"),
        "{err}"
    );

    let mut follower = tail(&s, true);
    let stdout = follower.stdout.take().unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    // Tail follows live lines: keep writing until it has seen one.
    let mut shim = s
        .shim("agent-mtls", &s.pki.ca)
        .env("LOGDRAIN_CLIENT_CERT", &path(&s.pki.client_cert))
        .env("LOGDRAIN_CLIENT_KEY", &path(&s.pki.client_key))
        .spawn_sh("i=0; while [ $i -lt 600 ]; do echo tick; i=$((i+1)); sleep 0.1; done");
    let _pipes = capture(&mut shim);
    let seen = tokio::time::timeout(Duration::from_secs(60), rx.recv()).await;
    let _ = shim.kill();
    let _ = shim.wait();
    let _ = follower.kill();
    let _ = follower.wait();
    assert_eq!(
        seen.ok().flatten().as_deref(),
        Some("replica-1 stdout tick"),
        "{}",
        s.gateway.log()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn status_reads_an_https_gateway_it_verifies_against_its_ca() {
    let s = setup(false).await;
    let (status, err) = run_shim(s.shim("agent-tls", &s.pki.ca), "status over tls").await;
    assert!(status.success(), "{err}");
    let status_cmd = |ca: &std::path::Path| {
        Command::new(bin("logdrain-gateway"))
            .args(["status", "--agent-id", "agent-tls", "--json"])
            .env("LOGDRAIN_GATEWAY_HTTP", s.gateway.https_base())
            .env("LOGDRAIN_TOKEN", token("agent-tls"))
            .env("LOGDRAIN_GATEWAY_CA_FILE", path(ca))
            .output()
            .unwrap()
    };
    let trusted = status_cmd(&s.pki.ca);
    let out = String::from_utf8_lossy(&trusted.stdout);
    assert!(
        trusted.status.success(),
        "{out}{}",
        String::from_utf8_lossy(&trusted.stderr)
    );
    assert!(
        out.contains("\"agent-tls\"") && out.contains("datadog"),
        "{out}"
    );

    let untrusted = status_cmd(&s.pki.other_ca);
    let err = String::from_utf8_lossy(&untrusted.stderr);
    assert!(!untrusted.status.success(), "{err}");
    assert!(
        err.contains("cannot reach the gateway") && err.contains("UnknownIssuer"),
        "names the certificate problem: {err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_status_pages_cookie_is_secure_under_tls() {
    let s = setup(false).await;
    let pem = std::fs::read(&s.pki.ca).unwrap();
    let client = reqwest::Client::builder()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(&pem).unwrap())
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let answer = client
        .get(format!("{}/?token=any-token-value", s.gateway.https_base()))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 303);
    let cookie = answer.headers()["set-cookie"].to_str().unwrap();
    let attributes: Vec<&str> = cookie.split(';').map(str::trim).collect();
    for wanted in ["HttpOnly", "SameSite=Strict", "Secure"] {
        assert!(attributes.contains(&wanted), "{cookie}");
    }
}
